//! Task figures (DESIGN §10), through the library with the defaults a user gets: a scheduler
//! (`SchedulerOptions::default()`) and an executor (`ExecutorOptions::default()`, 32 slots)
//! started by `service::serve` on a fresh database, every command run as the executor runs it,
//! under the release `triggerer` binary as its shim (`<shim> task-shim --parent PID -- argv`).
//!
//! - throughput: N manual runs of a DAG of M independent `true` tasks, created up front; timed
//!   from starting the service until every run is `success`, with the executor's busy slots and
//!   how long a queued run waited for a place under `max_active_runs` — and, for comparison,
//!   the same number of tries run by the executor's own process launcher alone (no database);
//! - latency: runs of `up` (`true`) → `down` (`date +%s.%N`) triggered at a fixed rate; from
//!   the upstream's recorded `end_date` to the downstream's own clock reading;
//! - an idle scheduling pass with 1,000,000 finished task instances (and their runs) in the
//!   tables, filled in bulk with SQL.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use chrono::{DateTime, Utc};
use sqlx::Connection;
use triggerer::definitions::load_str;
use triggerer::executor::{process, ExecutorOptions};
use triggerer::registry::ProviderRegistry;
use triggerer::scheduler::{self, SchedulerOptions};
use triggerer::service::{self, ServiceOptions};
use triggerer::store::{ManualRun, Store};

use crate::{percentile, progress, Args, Engine, FreshDb};

/// A time column that may be NULL.
type Moment = Option<DateTime<Utc>>;

/// Runs and task instances by state, as one poll saw them.
struct Counts {
    runs_succeeded: i64,
    runs_failed: i64,
    tasks_succeeded: i64,
    /// Waiting for an executor slot.
    scheduled: i64,
    /// Claimed by the executor: its busy slots.
    in_flight: i64,
}

/// What the polls saw while the runs went on.
#[derive(Default)]
struct Occupancy {
    polls: usize,
    busy_slots: i64,
    /// Polls that found nothing scheduled and free slots: the executor was waiting for work.
    starved: usize,
}

impl Occupancy {
    fn describe(&self, parallelism: usize) -> String {
        let polls = self.polls.max(1) as f64;
        format!(
            "slots busy {:.1} of {parallelism} on average, nothing scheduled with slots free in {:.0} % of {} polls",
            self.busy_slots as f64 / polls,
            self.starved as f64 * 100.0 / polls,
            self.polls
        )
    }
}

/// A connection of its own beside the store's pool: polling and bulk fills must not take the
/// service's connections (SQLite's pool has 4).
enum Raw {
    Sqlite(sqlx::SqliteConnection),
    Postgres(sqlx::PgConnection),
}

/// Runs `$body` with `$conn` bound to the concrete connection of a [`Raw`].
macro_rules! on_raw {
    ($raw:expr, $conn:ident => $body:expr) => {
        match $raw {
            Raw::Sqlite($conn) => $body,
            Raw::Postgres($conn) => $body,
        }
    };
}

impl Raw {
    async fn connect(engine: Engine, url: &str) -> Result<Self> {
        Ok(match engine {
            Engine::Sqlite => Raw::Sqlite(sqlx::SqliteConnection::connect(url).await?),
            Engine::Postgres => Raw::Postgres(sqlx::PgConnection::connect(url).await?),
        })
    }

    /// Where the runs and task instances are now.
    async fn progress(&mut self) -> Result<Counts> {
        const SQL: &str = "SELECT (SELECT count(*) FROM dag_run WHERE state = 'success'), \
             (SELECT count(*) FROM dag_run WHERE state = 'failed'), \
             (SELECT count(*) FROM task_instance WHERE state = 'success'), \
             (SELECT count(*) FROM task_instance WHERE state = 'scheduled'), \
             (SELECT count(*) FROM task_instance WHERE state IN ('queued', 'running'))";
        let (runs_succeeded, runs_failed, tasks_succeeded, scheduled, in_flight): (
            i64,
            i64,
            i64,
            i64,
            i64,
        ) = on_raw!(self, c => sqlx::query_as(SQL).fetch_one(&mut *c).await?);
        Ok(Counts {
            runs_succeeded,
            runs_failed,
            tasks_succeeded,
            scheduled,
            in_flight,
        })
    }

    /// The start and end of every run of `dag_id`.
    async fn run_times(&mut self, dag_id: &str) -> Result<Vec<(DateTime<Utc>, DateTime<Utc>)>> {
        const SQL: &str = "SELECT start_date, end_date FROM dag_run WHERE dag_id = $1";
        on_raw!(self, c => Ok(sqlx::query_as(SQL).bind(dag_id).fetch_all(&mut *c).await?))
    }

    /// Per run of `chain`: its run id, the upstream's end, the downstream's claim and start.
    async fn chain_moments(&mut self) -> Result<Vec<(String, Moment, Moment, Moment)>> {
        const SQL: &str = "SELECT up.run_id, up.end_date, down.queued_dttm, down.start_date \
             FROM task_instance up JOIN task_instance down \
             ON down.dag_run_id = up.dag_run_id AND down.task_id = 'down' \
             WHERE up.dag_id = 'chain' AND up.task_id = 'up' ORDER BY up.dag_run_id";
        on_raw!(self, c => Ok(sqlx::query_as(SQL).fetch_all(&mut *c).await?))
    }

    /// The dag and run id of one failed task instance, if any.
    async fn a_failed_task(&mut self) -> Result<Option<(String, String, String)>> {
        const SQL: &str = "SELECT dag_id, run_id, task_id FROM task_instance \
             WHERE state IN ('failed', 'upstream_failed') ORDER BY id LIMIT 1";
        on_raw!(self, c => Ok(sqlx::query_as(SQL).fetch_optional(&mut *c).await?))
    }

    async fn close(self) -> Result<()> {
        on_raw!(self, c => Ok(c.close().await?))
    }
}

/// One DAG `dag_id` of `tasks` (`task_id`, argv, upstream task ids), without a schedule, with
/// the default `max_active_runs` unless one is given.
async fn define_dag(
    store: &Store,
    dag_id: &str,
    tasks: &[(String, &[&str], Vec<String>)],
    max_active_runs: Option<i64>,
) -> Result<()> {
    let quoted = |items: &[&str]| {
        items
            .iter()
            .map(|s| format!("{s:?}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut text = format!("[[dag]]\ndag_id = \"{dag_id}\"\n");
    if let Some(n) = max_active_runs {
        text.push_str(&format!("max_active_runs = {n}\n"));
    }
    for (task_id, argv, upstream) in tasks {
        let upstream: Vec<&str> = upstream.iter().map(String::as_str).collect();
        text.push_str(&format!(
            "\n[[dag.task]]\ntask_id = \"{task_id}\"\ncommand = [{}]\ndepends_on = [{}]\n",
            quoted(argv),
            quoted(&upstream)
        ));
    }
    let plan = load_str("bench-tasks.toml", &text, &ProviderRegistry::default())
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    store.apply_definitions(&plan).await?;
    Ok(())
}

/// `count` independent `true` tasks.
fn true_tasks(count: usize) -> Vec<(String, &'static [&'static str], Vec<String>)> {
    (0..count)
        .map(|i| (format!("t{i:02}"), &["true"][..], Vec::new()))
        .collect()
}

fn manual_run(dag_id: &str, run_id: String) -> ManualRun {
    ManualRun {
        dag_id: dag_id.into(),
        run_id: Some(run_id),
        conf: serde_json::json!({}),
        logical_date: None,
        data_interval: None,
    }
}

/// A scheduler and an executor with their defaults, the executor's shim being `shim`.
fn service_options(shim: std::path::PathBuf) -> ServiceOptions {
    ServiceOptions {
        scheduler: Some(SchedulerOptions::default()),
        executor: Some(ExecutorOptions {
            shim,
            ..ExecutorOptions::default()
        }),
        ..ServiceOptions::default()
    }
}

/// A service running in this process until [`Running::stop`].
struct Running {
    shutdown: triggerer_sdk::CancellationToken,
    handle: tokio::task::JoinHandle<Result<(), service::ServiceError>>,
}

impl Running {
    /// Starts the service on `store`; returns once it is ready.
    async fn start(store: &Store, options: ServiceOptions) -> Result<Self> {
        let (controls, steering) = service::controls();
        let store = store.clone();
        let handle = tokio::spawn(async move {
            service::serve(&store, &ProviderRegistry::default(), options, steering).await
        });
        controls
            .ready
            .await
            .context("the service ended before it was ready")?;
        Ok(Self {
            shutdown: controls.shutdown,
            handle,
        })
    }

    async fn stop(self) -> Result<()> {
        self.shutdown.cancel();
        self.handle.await??;
        Ok(())
    }
}

/// The machine's CPU time so far: busy and in all, in clock ticks (`/proc/stat`, every core).
fn machine_cpu() -> Result<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let ticks: Vec<u64> = stat
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("cpu "))
        .context("no cpu line in /proc/stat")?
        .split_whitespace()
        .filter_map(|v| v.parse().ok())
        .collect();
    let total: u64 = ticks.iter().take(8).sum();
    // user nice system idle iowait irq softirq steal: idle and iowait are not busy.
    let idle = ticks.get(3).copied().unwrap_or(0) + ticks.get(4).copied().unwrap_or(0);
    Ok((total - idle, total))
}

/// Waits until `runs` runs succeeded, polling every 50 ms; fails on a failed run, naming a
/// failed task and its log.
async fn wait_for_runs(
    store: &Store,
    raw: &mut Raw,
    runs: usize,
    tasks: usize,
    label: &str,
) -> Result<Occupancy> {
    let parallelism = ExecutorOptions::default().parallelism as i64;
    let deadline = Instant::now() + Duration::from_secs(900);
    let mut seen = Occupancy::default();
    loop {
        let counts = raw.progress().await?;
        progress(&format!(
            "  {label}: runs {}/{runs} success, tasks {}/{tasks}",
            counts.runs_succeeded, counts.tasks_succeeded
        ));
        if counts.runs_failed > 0 {
            let detail = match raw.a_failed_task().await? {
                Some((dag, run, task)) => match store.task_log(&dag, &run, &task, None).await {
                    Ok(log) => format!(
                        "{dag} {run} {task}: {}\n{}",
                        log.outcome,
                        String::from_utf8_lossy(&log.content)
                    ),
                    Err(e) => format!("{dag} {run} {task}: {e}"),
                },
                None => "no failed task instance".into(),
            };
            anyhow::bail!("{} run(s) failed; {detail}", counts.runs_failed);
        }
        if counts.runs_succeeded as usize >= runs {
            return Ok(seen);
        }
        seen.polls += 1;
        seen.busy_slots += counts.in_flight;
        if counts.scheduled == 0 && counts.in_flight < parallelism {
            seen.starved += 1;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "only {} of {runs} runs succeeded within 900 s",
            counts.runs_succeeded
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// N runs × M independent `true` tasks, end to end; then the same number of tries through the
/// executor's process launcher alone, 32 at a time.
pub async fn bench_throughput(engine: Engine, args: &Args) -> Result<()> {
    let name = format!("{engine:?}").to_lowercase();
    let shim = crate::density::triggerer_binary()?;
    let (runs, per_run) = (args.task_runs, args.tasks_per_run);
    let total = runs * per_run;
    let parallelism = ExecutorOptions::default().parallelism;
    let db = FreshDb::create(engine, &args.postgres_url, "tasks").await?;
    let max_active_runs = args
        .task_max_active_runs
        .unwrap_or(triggerer::definitions::DEFAULT_MAX_ACTIVE_RUNS);
    define_dag(
        &db.store,
        "many",
        &true_tasks(per_run),
        args.task_max_active_runs,
    )
    .await?;
    let setup = Instant::now();
    for i in 0..runs {
        db.store
            .create_manual_run(&manual_run("many", format!("r{i:06}")))
            .await?;
        if i % 100 == 0 {
            progress(&format!("{name}: tasks: creating runs {i}/{runs}"));
        }
    }
    let setup = setup.elapsed();
    let mut raw = Raw::connect(engine, &db.url).await?;

    let (own_before, children_before) = crate::density::cpu_times("/proc/self/stat")?;
    let machine_before = machine_cpu()?;
    let started = Instant::now();
    let service = Running::start(&db.store, service_options(shim.clone())).await?;
    let seen = wait_for_runs(&db.store, &mut raw, runs, total, "throughput").await?;
    let elapsed = started.elapsed();
    let (own_after, children_after) = crate::density::cpu_times("/proc/self/stat")?;
    let machine_after = machine_cpu()?;
    service.stop().await?;
    // A run ending frees a place under max_active_runs: the i-th run to start waited for the
    // (i - max_active_runs)-th to end.
    let (mut starts, mut ends): (Vec<_>, Vec<_>) = raw.run_times("many").await?.into_iter().unzip();
    starts.sort_unstable();
    ends.sort_unstable();
    let limit = usize::try_from(max_active_runs).unwrap_or(usize::MAX);
    let mut gaps: Vec<f64> = (limit..starts.len())
        .map(|i| ms(starts[i] - ends[i - limit]))
        .collect();
    let waits = if gaps.is_empty() {
        "no run waited for a place under max_active_runs".to_string()
    } else {
        let (g50, g99, gmax) = quantiles(&mut gaps);
        format!("a run ending → the next queued run started p50 {g50:.0} / p99 {g99:.0} / max {gmax:.0} ms")
    };
    raw.close().await?;
    progress("");
    println!(
        "{name}: tasks: {total} `true` tasks ({runs} runs × {per_run} independent, one DAG, max_active_runs {max_active_runs}) at parallelism {parallelism}: all runs success in {:.2} s ({:.0} tasks/s; runs created in {:.1} s); CPU of this process {:.2} cores, of the shims and commands {:.2} cores, the whole machine busy {:.0} %; {}; {waits}",
        elapsed.as_secs_f64(),
        total as f64 / elapsed.as_secs_f64(),
        setup.as_secs_f64(),
        cores_over(own_after.saturating_sub(own_before), elapsed),
        cores_over(children_after.saturating_sub(children_before), elapsed),
        busy_share(machine_before, machine_after),
        seen.describe(parallelism),
    );
    db.remove().await?;

    // The processes alone: what the executor's launcher costs without database or log work.
    let log_dir = tempfile::tempdir()?;
    let argv = vec!["true".to_string()];
    let cancel = triggerer_sdk::CancellationToken::new();
    let (own_before, children_before) = crate::density::cpu_times("/proc/self/stat")?;
    let machine_before = machine_cpu()?;
    let started = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    let mut launched = 0;
    let mut done = 0;
    while done < total {
        while launched < total && set.len() < parallelism {
            let log = std::fs::File::create(log_dir.path().join(format!("{launched}.log")))?;
            let (argv, shim, cancel) = (argv.clone(), shim.clone(), cancel.clone());
            set.spawn(async move {
                let launch = process::Launch {
                    argv: &argv,
                    env: &[],
                    log,
                    shim: &shim,
                };
                process::run(launch, None, &cancel, |_| {}).await
            });
            launched += 1;
        }
        let end = set
            .join_next()
            .await
            .context("no process running")??
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        anyhow::ensure!(
            end == process::ProcessEnd::Exited(0),
            "`true` under the shim ended {end:?}"
        );
        done += 1;
    }
    let elapsed = started.elapsed();
    let (own_after, children_after) = crate::density::cpu_times("/proc/self/stat")?;
    let machine_after = machine_cpu()?;
    println!(
        "{name}: tasks: the same {total} tries through the executor's process launcher alone (shim + `true`, {parallelism} at a time, no database): {:.2} s ({:.0} tries/s); CPU of this process {:.2} cores, of the shims and commands {:.2} cores, the whole machine busy {:.0} %",
        elapsed.as_secs_f64(),
        total as f64 / elapsed.as_secs_f64(),
        cores_over(own_after.saturating_sub(own_before), elapsed),
        cores_over(children_after.saturating_sub(children_before), elapsed),
        busy_share(machine_before, machine_after),
    );
    Ok(())
}

/// The share (%) of the machine's CPU time between two [`machine_cpu`] readings that was busy.
fn busy_share((busy0, total0): (u64, u64), (busy1, total1): (u64, u64)) -> f64 {
    (busy1 - busy0) as f64 * 100.0 / (total1 - total0).max(1) as f64
}

fn cores_over(cpu: Duration, wall: Duration) -> f64 {
    cpu.as_secs_f64() / wall.as_secs_f64()
}

/// The wall-clock time `date +%s.%N` printed into a try's log (a line of digits, a dot and
/// nine digits).
fn clock_reading(log: &[u8]) -> Option<DateTime<Utc>> {
    String::from_utf8_lossy(log).lines().find_map(|line| {
        let (secs, nanos) = line.trim().split_once('.')?;
        if nanos.len() != 9 {
            return None;
        }
        DateTime::from_timestamp(secs.parse().ok()?, nanos.parse().ok()?)
    })
}

fn ms(d: chrono::Duration) -> f64 {
    d.num_microseconds().unwrap_or(i64::MAX) as f64 / 1e3
}

/// p50 / p99 / max of `samples` (ms), sorted in place.
fn quantiles(samples: &mut [f64]) -> (f64, f64, f64) {
    samples.sort_by(f64::total_cmp);
    (
        percentile(samples, 0.5),
        percentile(samples, 0.99),
        samples.last().copied().unwrap_or(0.0),
    )
}

/// Runs of `up` (`true`) → `down` (`date +%s.%N`) triggered at `task_rate` runs/s: from the
/// upstream's `end_date` (the executor saw it end) to the downstream's own clock reading (its
/// process running), split at the downstream's `queued_dttm` (the claim began) and
/// `start_date` (its shim was spawned).
pub async fn bench_latency(engine: Engine, args: &Args) -> Result<()> {
    let name = format!("{engine:?}").to_lowercase();
    let shim = crate::density::triggerer_binary()?;
    let db = FreshDb::create(engine, &args.postgres_url, "tasklatency").await?;
    define_dag(
        &db.store,
        "chain",
        &[
            ("up".into(), &["true"][..], Vec::new()),
            ("down".into(), &["date", "+%s.%N"][..], vec!["up".into()]),
        ],
        None,
    )
    .await?;
    let mut raw = Raw::connect(engine, &db.url).await?;
    let service = Running::start(&db.store, service_options(shim)).await?;

    let runs = (args.task_rate * args.task_latency_seconds) as usize;
    let mut every = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(args.task_rate)));
    let triggering = Instant::now();
    for i in 0..runs {
        every.tick().await;
        db.store
            .create_manual_run(&manual_run("chain", format!("r{i:06}")))
            .await?;
        if i % 25 == 0 {
            progress(&format!("{name}: tasks: latency: triggered {i}/{runs}"));
        }
    }
    let triggered_in = triggering.elapsed();
    wait_for_runs(&db.store, &mut raw, runs, runs * 2, "latency").await?;
    service.stop().await?;
    let moments = raw.chain_moments().await?;
    raw.close().await?;
    anyhow::ensure!(moments.len() == runs, "{} runs, not {runs}", moments.len());

    // Per run: the upstream's end_date → the downstream claimed (queued_dttm) → its shim
    // spawned (start_date) → the command's own clock reading.
    let mut segments: [Vec<f64>; 4] = Default::default();
    for (run_id, up_end, down_claimed, down_spawned) in moments {
        let log = db.store.task_log("chain", &run_id, "down", None).await?;
        let ran = clock_reading(&log.content).with_context(|| {
            format!(
                "no clock reading in the downstream's log: {}",
                String::from_utf8_lossy(&log.content)
            )
        })?;
        let missing = || format!("run {run_id}: a task instance lacks a time");
        let up_end = up_end.with_context(missing)?;
        let claimed = down_claimed.with_context(missing)?;
        let spawned = down_spawned.with_context(missing)?;
        for (i, d) in [
            ran - up_end,
            claimed - up_end,
            spawned - claimed,
            ran - spawned,
        ]
        .into_iter()
        .enumerate()
        {
            segments[i].push(ms(d));
        }
    }
    progress("");
    let [total, claim, spawn, exec] = segments.each_mut().map(|s| quantiles(s));
    println!(
        "{name}: tasks: upstream success → downstream process running, {runs} runs of `true` → `date` at {} runs/s ({} tasks/s, triggered over {:.1} s): p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        args.task_rate,
        args.task_rate * 2,
        triggered_in.as_secs_f64(),
        total.0,
        total.1,
        total.2,
    );
    println!(
        "{name}: tasks: … of which upstream end → downstream claimed p50 {:.1} / p99 {:.1} ms; claimed → shim spawned p50 {:.1} / p99 {:.1} ms; spawned → command running p50 {:.1} / p99 {:.1} ms",
        claim.0, claim.1, spawn.0, spawn.1, exec.0, exec.1,
    );
    db.remove().await
}

/// Fills `dag_run` with `runs` finished runs of `dag_id` and `task_instance` with one finished
/// task instance per run and task of the DAG, in two `INSERT … SELECT`s.
async fn fill_history(raw: &mut Raw, dag_id: &str, runs: i64) -> Result<()> {
    let end = triggerer::time::now() - chrono::Duration::days(1);
    let start = end - chrono::Duration::seconds(1);
    let task_instances = "INSERT INTO task_instance (dag_run_id, dag_id, run_id, task_id, operator, state, \
         try_number, max_tries, start_date, end_date, duration, hostname, pid, queued_dttm, updated_at) \
         SELECT r.id, r.dag_id, r.run_id, t.task_id, t.operator, 'success', 1, t.retries, $1, $2, 1.0, \
         'bench', 1, $1, $2 FROM dag_run r JOIN dag_task t ON t.dag_id = r.dag_id WHERE r.dag_id = $3";
    match raw {
        Raw::Sqlite(c) => {
            let mut tx = c.begin().await?;
            sqlx::query(
                "WITH RECURSIVE seq(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM seq WHERE n < $1) \
                 INSERT INTO dag_run (dag_id, run_id, run_type, state, run_after, conf, queued_at, \
                 start_date, end_date) \
                 SELECT $2, 'history_' || n, 'manual', 'success', $3, '{}', $3, $3, $4 FROM seq",
            )
            .bind(runs)
            .bind(dag_id)
            .bind(start)
            .bind(end)
            .execute(&mut *tx)
            .await?;
            sqlx::query(task_instances)
                .bind(start)
                .bind(end)
                .bind(dag_id)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
        }
        Raw::Postgres(c) => {
            let mut tx = c.begin().await?;
            sqlx::query(
                "INSERT INTO dag_run (dag_id, run_id, run_type, state, run_after, conf, queued_at, \
                 start_date, end_date) \
                 SELECT $2, 'history_' || n, 'manual', 'success', $3, '{}'::jsonb, $3, $3, $4 \
                 FROM generate_series(1, $1::bigint) AS n",
            )
            .bind(runs)
            .bind(dag_id)
            .bind(start)
            .bind(end)
            .execute(&mut *tx)
            .await?;
            sqlx::query(task_instances)
                .bind(start)
                .bind(end)
                .bind(dag_id)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
        }
    }
    Ok(())
}

/// `passes` idle passes at now: their durations.
async fn time_idle_passes(store: &Store, passes: usize, label: &str) -> Result<Vec<Duration>> {
    let max_scheduled = SchedulerOptions::default().max_scheduled_per_pass;
    let mut samples = Vec::with_capacity(passes);
    for i in 0..passes {
        let started = Instant::now();
        let report = scheduler::pass(store, triggerer::time::now(), None, max_scheduled).await?;
        samples.push(started.elapsed());
        anyhow::ensure!(!report.did_work(), "an idle pass did work: {report:?}");
        progress(&format!("  {label}: idle passes {}/{passes}", i + 1));
    }
    samples.sort_unstable();
    Ok(samples)
}

fn summary(samples: &[Duration]) -> String {
    let at = |i: usize| samples.get(i).copied().unwrap_or_default().as_secs_f64() * 1e3;
    format!(
        "median {:.2} ms (min {:.2}, max {:.2})",
        at(samples.len() / 2),
        at(0),
        at(samples.len().saturating_sub(1))
    )
}

/// One idle scheduling pass with `finished_task_instances` finished task instances in the
/// table (10 a run, so a tenth as many finished runs).
pub async fn bench_idle_pass(engine: Engine, args: &Args) -> Result<()> {
    let name = format!("{engine:?}").to_lowercase();
    const PER_RUN: usize = 10;
    let db = FreshDb::create(engine, &args.postgres_url, "taskhistory").await?;
    define_dag(&db.store, "history", &true_tasks(PER_RUN), None).await?;
    let runs = args.finished_task_instances.div_ceil(PER_RUN);
    let mut raw = Raw::connect(engine, &db.url).await?;
    progress(&format!(
        "{name}: tasks: filling {} task instances",
        runs * PER_RUN
    ));
    let fill = Instant::now();
    fill_history(&mut raw, "history", i64::try_from(runs)?).await?;
    let fill = fill.elapsed();
    let done = raw.progress().await?.tasks_succeeded;
    anyhow::ensure!(
        done as usize == runs * PER_RUN,
        "filled {done} task instances, not {}",
        runs * PER_RUN
    );

    let samples = time_idle_passes(&db.store, args.idle_passes, "history").await?;
    let mut line = format!(
        "{name}: tasks: idle pass with {} finished task instances ({runs} finished runs): {}; filled in {:.1} s",
        runs * PER_RUN,
        summary(&samples),
        fill.as_secs_f64()
    );
    if let Raw::Postgres(c) = &mut raw {
        // What autovacuum does by itself within about a minute (its naptime) of such a load.
        sqlx::query("ANALYZE").execute(&mut *c).await?;
        let analyzed = time_idle_passes(&db.store, args.idle_passes, "history").await?;
        line.push_str(&format!("; after ANALYZE {}", summary(&analyzed)));
    }
    progress("");
    println!("{line}");
    raw.close().await?;
    db.remove().await
}

//! Deferred-task figures (DESIGN §11):
//!
//! - density: N deferred `wait` tasks, half on `time.DateTimeTrigger` (a moment far away), half
//!   on `file.FileTrigger` (a file that never comes), held by one `triggerer run` process next
//!   to an `executor` with its default 32 slots: how long until the triggerer holds every task
//!   trigger, its resident memory and idle CPU, and the executor's open slots meanwhile. The
//!   deferred state is filled in bulk with SQL (runs, task instances and their trigger rows, as
//!   a deferral leaves them): N deferrals through the executor would measure the executor.
//! - resume latency: runs of a `shell` task that defers itself on a 1 s `TimeDeltaTrigger`,
//!   triggered at a fixed rate under one service (triggerer, scheduler and executor with their
//!   defaults); from the moment the trigger fires (its event's `moment`) to the resumed
//!   command's own clock reading.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use chrono::{DateTime, Utc};
use sqlx::Connection;
use triggerer::definitions::load_str;
use triggerer::executor::ExecutorOptions;
use triggerer::scheduler::SchedulerOptions;
use triggerer::service::{self, ServiceOptions};
use triggerer::store::ManualRun;
use triggerer::triggerer::TriggererOptions;

use crate::density::{rss_and_cpu, triggerer_binary};
use crate::{percentile, progress, Args, Engine, FreshDb};

/// A child process killed when dropped.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn definitions(files: &std::path::Path) -> String {
    format!(
        "[[dag]]\ndag_id = \"waits\"\n[[dag.task]]\ntask_id = \"w\"\n\
         wait = {{ classpath = \"time.DateTimeTrigger\", kwargs = {{ moment = \"2100-01-01T00:00:00Z\" }} }}\n\
         [[dag]]\ndag_id = \"files\"\n[[dag.task]]\ntask_id = \"w\"\n\
         wait = {{ classpath = \"file.FileTrigger\", kwargs = {{ filepath = \"{}/never/*.x\" }} }}\n",
        files.display()
    )
}

/// Fills the database with `n` deferred task instances and their trigger rows.
async fn fill_deferred(engine: Engine, url: &str, n: i64, files: &std::path::Path) -> Result<()> {
    let now = triggerer::time::now();
    let file_kwargs =
        serde_json::json!({ "filepath": format!("{}/never/*.x", files.display()) }).to_string();
    let time_kwargs = r#"{"moment":"2100-01-01T00:00:00Z"}"#;
    let triggers =
        "SELECT CASE WHEN n % 2 = 0 THEN 'time.DateTimeTrigger' ELSE 'file.FileTrigger' END, \
         CASE WHEN n % 2 = 0 THEN $2 ELSE $3 END, 'bench-' || n, $4 FROM seq";
    let runs = "SELECT CASE WHEN n % 2 = 0 THEN 'waits' ELSE 'files' END, 'r' || n, 'manual', \
         'running', $2, CONF, $2, $2 FROM seq";
    let task_instances = "INSERT INTO task_instance (dag_run_id, dag_id, run_id, task_id, operator, state, \
         try_number, max_tries, trigger_id, next_method, start_date, hostname, updated_at) \
         SELECT r.id, r.dag_id, r.run_id, 'w', 'wait', 'deferred', 1, 0, t.id, 'execute_complete', $1, \
         'bench', $1 FROM dag_run r JOIN trigger t ON t.hash = 'bench-' || substr(r.run_id, 2)";
    macro_rules! fill {
        ($conn:expr, $seq:expr, $conf:expr) => {{
            let mut tx = $conn.begin().await?;
            sqlx::query(&format!(
                "{} INSERT INTO trigger (classpath, kwargs, hash, created_date) {triggers}",
                $seq
            ))
            .bind(n)
            .bind(time_kwargs)
            .bind(&file_kwargs)
            .bind(now)
            .execute(&mut *tx)
            .await?;
            sqlx::query(&format!(
                "{} INSERT INTO dag_run (dag_id, run_id, run_type, state, run_after, conf, queued_at, start_date) {}",
                $seq,
                runs.replace("CONF", $conf)
            ))
            .bind(n)
            .bind(now)
            .execute(&mut *tx)
            .await?;
            sqlx::query(task_instances).bind(now).execute(&mut *tx).await?;
            tx.commit().await?;
        }};
    }
    match engine {
        Engine::Sqlite => {
            let mut c = sqlx::SqliteConnection::connect(url).await?;
            fill!(
                c,
                "WITH RECURSIVE seq(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM seq WHERE n < $1)",
                "'{}'"
            );
        }
        Engine::Postgres => {
            let mut c = sqlx::PgConnection::connect(url).await?;
            fill!(
                c,
                "WITH seq(n) AS (SELECT generate_series(1, $1::bigint))",
                "'{}'::jsonb"
            );
        }
    }
    Ok(())
}

pub async fn bench_deferred_density(engine: Engine, args: &Args) -> Result<()> {
    let name = format!("{engine:?}").to_lowercase();
    let n = args.deferred;
    let binary = triggerer_binary()?;
    let db = FreshDb::create(engine, &args.postgres_url, &format!("deferred{n}")).await?;
    let files = tempfile::tempdir()?;
    std::fs::create_dir_all(files.path().join("never"))?;
    let registry = triggerer::registry::builtin_providers();
    let plan = load_str("deferred.toml", &definitions(files.path()), &registry)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    db.store.apply_definitions(&plan).await?;
    fill_deferred(engine, &db.url, n as i64, files.path()).await?;

    let log = std::fs::File::create(files.path().join("triggerer.log"))?;
    let executor_log = std::fs::File::create(files.path().join("executor.log"))?;
    let started = Instant::now();
    // Capacity for all of them in one process: the default (1,000, Airflow's) would spread
    // them over 100 triggerers.
    let triggerer = Child(
        std::process::Command::new(&binary)
            .args(["--database-url", &db.url, "run"])
            .args(["--capacity", &n.to_string()])
            .args(["--max-triggers-per-loop", &n.to_string()])
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start {}", binary.display()))?,
    );
    let _executor = Child(
        std::process::Command::new(&binary)
            .args(["--database-url", &db.url, "executor"])
            .stdout(executor_log.try_clone()?)
            .stderr(executor_log)
            .spawn()?,
    );
    let pid = triggerer.0.id();
    let deadline = started + Duration::from_secs(900);
    let alive_since = || triggerer::time::now() - chrono::Duration::seconds(30);
    loop {
        let status = db.store.status(alive_since()).await?;
        let held: i64 = status.triggerers.iter().map(|t| t.triggers_running).sum();
        progress(&format!("{name}: {n} deferred tasks: {held} triggers held"));
        if held as usize >= n {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "only {held} of {n} task triggers held within 900 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let all_held = started.elapsed();
    // The supervisor starts what it holds in its next loops: let it settle before idling.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let (_, cpu_before) = rss_and_cpu(pid)?;
    let idle = Instant::now();
    tokio::time::sleep(Duration::from_secs(args.idle_seconds)).await;
    let (rss, cpu_after) = rss_and_cpu(pid)?;
    let idle_cpu = (cpu_after - cpu_before).as_secs_f64() / idle.elapsed().as_secs_f64();
    let status = db.store.status(alive_since()).await?;
    let open: Vec<String> = status
        .executors
        .iter()
        .map(|e| e.open_slots.unwrap_or(0).to_string())
        .collect();
    progress("");
    println!(
        "{name}: deferred: {n} deferred wait tasks (half time, half file triggers) held by one `triggerer run` in {:.1} s; resident {:.0} MiB; idle CPU {:.1} % of one core; deferred_tasks {}, executor open slots {} of 32",
        all_held.as_secs_f64(),
        rss as f64 / 1048576.0,
        idle_cpu * 100.0,
        status.deferred_tasks,
        open.join(", "),
    );
    drop(triggerer);
    db.remove().await
}

/// The first `moment` in the trigger event a resumed try logged, and the clock reading its
/// command printed (`clock=<epoch seconds>`).
fn fired_and_resumed(log: &str) -> Option<(DateTime<Utc>, DateTime<Utc>)> {
    let moment = log
        .split("\"moment\":\"")
        .nth(1)?
        .split('"')
        .next()
        .and_then(|m| DateTime::parse_from_rfc3339(m).ok())?
        .with_timezone(&Utc);
    let clock: f64 = log
        .split("clock=")
        .nth(1)?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    let resumed = DateTime::from_timestamp_micros((clock * 1e6) as i64)?;
    Some((moment, resumed))
}

pub async fn bench_resume_latency(engine: Engine, args: &Args) -> Result<()> {
    let name = format!("{engine:?}").to_lowercase();
    let runs = args.resume_runs;
    let db = FreshDb::create(engine, &args.postgres_url, "resume").await?;
    let text = "[[dag]]\ndag_id = \"resume\"\nmax_active_runs = 100000\n[[dag.task]]\ntask_id = \"t\"\n\
        shell = '''if [ -z \"$TRIGGERER_TRIGGER_EVENT\" ]; then echo '{\"classpath\": \"time.TimeDeltaTrigger\", \"kwargs\": {\"delta\": \"1s\"}}' > \"$TRIGGERER_DEFER_FILE\"; else echo \"clock=$(date +%s.%N)\"; fi'''\n";
    let registry = triggerer::registry::builtin_providers();
    let plan = load_str("resume.toml", text, &registry).map_err(|e| anyhow::anyhow!("{e}"))?;
    db.store.apply_definitions(&plan).await?;
    let options = ServiceOptions {
        triggerer: Some(TriggererOptions::default()),
        scheduler: Some(SchedulerOptions::default()),
        executor: Some(ExecutorOptions {
            shim: triggerer_binary()?,
            ..ExecutorOptions::default()
        }),
        ..ServiceOptions::default()
    };
    let (controls, steering) = service::controls();
    let store = db.store.clone();
    let serving =
        tokio::spawn(async move { service::serve(&store, &registry, options, steering).await });
    // At 20 runs a second, as a steady stream of deferring tasks.
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    for i in 0..runs {
        tick.tick().await;
        db.store
            .create_manual_run(&ManualRun {
                dag_id: "resume".into(),
                run_id: Some(format!("r{i:05}")),
                conf: serde_json::json!({}),
                logical_date: None,
                data_interval: None,
            })
            .await?;
    }
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let done = db
            .store
            .list_runs(
                Some("resume"),
                Some(triggerer::dag_run::DagRunState::Success),
                0,
            )
            .await?
            .len();
        progress(&format!("{name}: resume latency: {done}/{runs} runs done"));
        if done >= runs {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "only {done} of {runs} runs ended within 300 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut samples = Vec::with_capacity(runs);
    for i in 0..runs {
        let log = db
            .store
            .task_log("resume", &format!("r{i:05}"), "t", None)
            .await?;
        if let Some((fired, resumed)) = fired_and_resumed(&String::from_utf8_lossy(&log.content)) {
            samples.push((resumed - fired).num_microseconds().unwrap_or(0) as f64 / 1000.0);
        }
    }
    samples.sort_by(|a, b| a.total_cmp(b));
    controls.shutdown.cancel();
    let _ = serving.await;
    progress("");
    println!(
        "{name}: resume: trigger fired (its moment) → resumed command running, {} deferrals at 20/s: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        samples.len(),
        percentile(&samples, 0.5),
        percentile(&samples, 0.99),
        samples.last().copied().unwrap_or(0.0),
    );
    db.remove().await
}

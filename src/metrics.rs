//! Prometheus metrics (DESIGN §12.1): one registry per process, which `/metrics` encodes
//! ([`encode`], [`CONTENT_TYPE`]). Every service in the process records into it, so tests that
//! run several services in one process see their sum: a scrape sees the process.
//!
//! Labels are bounded: `provider` (a provider's short name, or `http` for pushed events) and
//! `run_type`; never a trigger, a DAG or an asset. Gauges a service owns for itself (triggers
//! running, executor slots) are held as a [`GaugeShare`], so two triggerers in one process
//! add up and one that stops takes its share back; counts of the whole database (task
//! instances executable, starving, deferred) are set as they are. A labelled family shows
//! only once it has a series: a provider's when one of its triggers starts
//! ([`provider_started`]), `http`'s at the first push, the run types' when a scheduler starts.
//!
//! A leaf: it knows nothing of the store or the services, which call it.

use std::sync::LazyLock;
use std::time::{Duration, SystemTime};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// The content type of [`encode`]'s text: the OpenMetrics text format, which Prometheus
/// scrapes. (In it a counter's family is named without `_total`, its sample with it:
/// `# TYPE triggerer_events_committed counter`, `triggerer_events_committed_total{…} 3`.)
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The process's metrics as OpenMetrics text, ending in `# EOF`.
pub fn encode() -> String {
    METRICS.encode()
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// Events per batch: a batch of one is a quiet writer, of
/// [`MAX_BATCH`](crate::triggerer::writer::MAX_BATCH) (1,000) a busy one.
const BATCH_BUCKETS: [f64; 10] = [1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0];
/// Seconds a transaction or a pass takes: half a millisecond to ten seconds.
const DURATION_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Seconds from the source's timestamp to the commit: milliseconds for a live source, hours
/// for a backlog (or the start-up scan of old files).
const AGE_BUCKETS: [f64; 18] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0,
    3600.0, 21600.0, 86400.0,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProviderLabel {
    provider: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RunTypeLabel {
    run_type: &'static str,
}

/// Every metric, and the registry that encodes them. One per process ([`METRICS`]); tests
/// make their own.
#[derive(Debug)]
struct Metrics {
    registry: Registry,
    triggers_running: Gauge,
    capacity_left: Gauge,
    triggers_failing: Gauge,
    events_committed: Family<ProviderLabel, Counter>,
    event_age: Histogram,
    batch_size: Histogram,
    commit_seconds: Histogram,
    dag_runs_created: Family<RunTypeLabel, Counter>,
    pass_seconds: Histogram,
    tasks_starving: Gauge,
    tasks_executable: Gauge,
    open_slots: Gauge,
    queued_tasks: Gauge,
    running_tasks: Gauge,
    deferred_tasks: Gauge,
}

impl Metrics {
    fn new() -> Self {
        let mut m = Self {
            registry: Registry::default(),
            triggers_running: Gauge::default(),
            capacity_left: Gauge::default(),
            triggers_failing: Gauge::default(),
            events_committed: Family::default(),
            event_age: Histogram::new(AGE_BUCKETS),
            batch_size: Histogram::new(BATCH_BUCKETS),
            commit_seconds: Histogram::new(DURATION_BUCKETS),
            dag_runs_created: Family::default(),
            pass_seconds: Histogram::new(DURATION_BUCKETS),
            tasks_starving: Gauge::default(),
            tasks_executable: Gauge::default(),
            open_slots: Gauge::default(),
            queued_tasks: Gauge::default(),
            running_tasks: Gauge::default(),
            deferred_tasks: Gauge::default(),
        };
        let mut registry = Registry::default();
        // The registry appends a full stop to each help text.
        registry.register(
            "triggerer_triggers_running",
            "Triggers this process's triggerers run now (Airflow's triggers.running)",
            m.triggers_running.clone(),
        );
        registry.register(
            "triggerer_capacity_left",
            "Triggers this process's triggerers could still take: capacity minus triggers \
             running (Airflow's triggerer.capacity_left)",
            m.capacity_left.clone(),
        );
        registry.register(
            "triggerer_triggers_failing",
            "Triggers of this process's triggerers now waiting out a restart backoff after \
             failing",
            m.triggers_failing.clone(),
        );
        registry.register(
            "triggerer_events_committed",
            "Events committed by this process's event writers, by the provider of the trigger \
             that emitted them (http: pushed through the API or a webhook); duplicates of \
             events already stored count too",
            m.events_committed.clone(),
        );
        registry.register(
            "triggerer_event_age_at_commit_seconds",
            "Seconds from the time the source gives an event (Kafka message timestamp, SQS \
             SentTimestamp, file mtime) to its commit; events without a source time are not \
             counted",
            m.event_age.clone(),
        );
        registry.register(
            "triggerer_write_batch_size",
            "Events in each batch the event writer committed (one transaction per batch)",
            m.batch_size.clone(),
        );
        registry.register(
            "triggerer_commit_seconds",
            "Seconds each event-writer transaction that committed took, from its start to \
             COMMIT; attempts that failed and the waits between retries are not included",
            m.commit_seconds.clone(),
        );
        registry.register(
            "scheduler_dag_runs_created",
            "DAG runs the scheduling passes of this process created, by run type",
            m.dag_runs_created.clone(),
        );
        registry.register(
            "scheduler_pass_seconds",
            "Seconds each scheduling pass took, failed passes included",
            m.pass_seconds.clone(),
        );
        registry.register(
            "scheduler_tasks_starving",
            "Scheduled task instances no alive executor has a free slot for, as the scheduler \
             last counted them in the database, every few seconds (Airflow's \
             scheduler.tasks.starving)",
            m.tasks_starving.clone(),
        );
        registry.register(
            "scheduler_tasks_executable",
            "Task instances scheduled and waiting for an executor slot, as the scheduler last \
             counted them in the database, every few seconds (Airflow's \
             scheduler.tasks.executable)",
            m.tasks_executable.clone(),
        );
        registry.register(
            "executor_open_slots",
            "Free slots of this process's executors: parallelism minus the tries they hold \
             (Airflow's executor.open_slots)",
            m.open_slots.clone(),
        );
        registry.register(
            "executor_queued_tasks",
            "Tries this process's executors claimed that have not started yet (Airflow's \
             executor.queued_tasks)",
            m.queued_tasks.clone(),
        );
        registry.register(
            "executor_running_tasks",
            "Tries this process's executors are running (Airflow's executor.running_tasks)",
            m.running_tasks.clone(),
        );
        registry.register(
            "executor_deferred_tasks",
            "Task instances deferred, waiting for their trigger, as an executor last counted \
             them in the database, every heartbeat interval",
            m.deferred_tasks.clone(),
        );
        m.registry = registry;
        m
    }

    fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail, and every metric here encodes.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    fn provider_started(&self, provider: &'static str) {
        drop(
            self.events_committed
                .get_or_create(&ProviderLabel { provider }),
        );
    }

    fn record_batch(&self, size: usize) {
        self.batch_size.observe(size as f64);
    }

    fn record_commit(&self, took: Duration) {
        self.commit_seconds.observe(took.as_secs_f64());
    }

    fn record_committed<I>(&self, events: I, now: SystemTime)
    where
        I: IntoIterator<Item = (&'static str, Option<SystemTime>)>,
    {
        // A batch comes from a few providers: count them first, touch each series once.
        let mut per_provider: Vec<(&'static str, u64)> = Vec::new();
        for (provider, source_time) in events {
            match per_provider.iter_mut().find(|(p, _)| *p == provider) {
                Some((_, n)) => *n += 1,
                None => per_provider.push((provider, 1)),
            }
            if let Some(at) = source_time {
                // A source clock ahead of ours is an age of zero, not a negative one.
                let age = now.duration_since(at).unwrap_or(Duration::ZERO);
                self.event_age.observe(age.as_secs_f64());
            }
        }
        for (provider, n) in per_provider {
            self.events_committed
                .get_or_create(&ProviderLabel { provider })
                .inc_by(n);
        }
    }

    fn record_dag_runs_created(&self, run_type: &'static str, n: usize) {
        self.dag_runs_created
            .get_or_create(&RunTypeLabel { run_type })
            .inc_by(n as u64);
    }
}

/// One service's part of a gauge the services of a process add up to (two triggerers in one
/// test process run the sum of their triggers). Dropping it takes its part back.
#[derive(Debug)]
pub struct GaugeShare {
    gauge: Gauge,
    part: i64,
}

impl GaugeShare {
    fn new(gauge: &Gauge) -> Self {
        Self {
            gauge: gauge.clone(),
            part: 0,
        }
    }

    /// Makes this service's part `value`.
    pub fn set(&mut self, value: usize) {
        let value = i64::try_from(value).unwrap_or(i64::MAX);
        self.gauge.inc_by(value - self.part);
        self.part = value;
    }
}

impl Drop for GaugeShare {
    fn drop(&mut self) {
        self.gauge.dec_by(self.part);
    }
}

/// A triggerer's parts of `triggerer_triggers_running`, `triggerer_capacity_left` and
/// `triggerer_triggers_failing`.
#[derive(Debug)]
pub struct TriggererGauges {
    running: GaugeShare,
    capacity_left: GaugeShare,
    failing: GaugeShare,
}

impl TriggererGauges {
    pub fn new() -> Self {
        Self::of(&METRICS)
    }

    fn of(m: &Metrics) -> Self {
        Self {
            running: GaugeShare::new(&m.triggers_running),
            capacity_left: GaugeShare::new(&m.capacity_left),
            failing: GaugeShare::new(&m.triggers_failing),
        }
    }

    /// The triggerer runs `running` triggers of at most `capacity`; `failing` more wait out
    /// a restart backoff.
    pub fn set(&mut self, running: usize, capacity: usize, failing: usize) {
        self.running.set(running);
        self.capacity_left.set(capacity.saturating_sub(running));
        self.failing.set(failing);
    }
}

impl Default for TriggererGauges {
    fn default() -> Self {
        Self::new()
    }
}

/// An executor's parts of `executor_open_slots`, `executor_queued_tasks` and
/// `executor_running_tasks`.
#[derive(Debug)]
pub struct ExecutorGauges {
    open_slots: GaugeShare,
    queued: GaugeShare,
    running: GaugeShare,
}

impl ExecutorGauges {
    pub fn new() -> Self {
        Self::of(&METRICS)
    }

    fn of(m: &Metrics) -> Self {
        Self {
            open_slots: GaugeShare::new(&m.open_slots),
            queued: GaugeShare::new(&m.queued_tasks),
            running: GaugeShare::new(&m.running_tasks),
        }
    }

    /// The executor has `open_slots` free slots and holds `queued` claimed tries not yet
    /// started and `running` started ones.
    pub fn set(&mut self, open_slots: usize, queued: usize, running: usize) {
        self.open_slots.set(open_slots);
        self.queued.set(queued);
        self.running.set(running);
    }
}

impl Default for ExecutorGauges {
    fn default() -> Self {
        Self::new()
    }
}

/// A trigger of `provider` started: its `triggerer_events_committed_total` series exists from
/// now on, at 0 until its first event commits (so `rate()` sees the first events too).
pub fn provider_started(provider: &'static str) {
    METRICS.provider_started(provider);
}

/// The event writer committed a batch of `size` events.
pub fn record_batch(size: usize) {
    METRICS.record_batch(size);
}

/// An event-writer transaction committed after `took`.
pub fn record_commit(took: Duration) {
    METRICS.record_commit(took);
}

/// Events committed at `now`: each one's provider, and its source time if it has one.
pub fn record_committed<I>(events: I, now: SystemTime)
where
    I: IntoIterator<Item = (&'static str, Option<SystemTime>)>,
{
    METRICS.record_committed(events, now);
}

/// A scheduling pass created `n` runs of `run_type` (`DagRunType::as_str`).
pub fn record_dag_runs_created(run_type: &'static str, n: usize) {
    METRICS.record_dag_runs_created(run_type, n);
}

/// A scheduling pass took `took`.
pub fn record_pass(took: Duration) {
    METRICS.pass_seconds.observe(took.as_secs_f64());
}

/// Scheduled task instances waiting for a slot (`executable`), and how many of them no alive
/// executor has a free slot for (`starving`), as counted in the database.
pub fn set_task_queue(executable: i64, starving: i64) {
    METRICS.tasks_executable.set(executable);
    METRICS.tasks_starving.set(starving);
}

/// Task instances deferred now, as counted in the database.
pub fn set_deferred_tasks(deferred: i64) {
    METRICS.deferred_tasks.set(deferred);
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::time::UNIX_EPOCH;

    use super::*;

    /// Every metric of DESIGN §12.1, with its OpenMetrics type. Counters are named here as
    /// their family (the samples add `_total`).
    const ALL: [(&str, &str); 15] = [
        ("triggerer_triggers_running", "gauge"),
        ("triggerer_capacity_left", "gauge"),
        ("triggerer_triggers_failing", "gauge"),
        ("triggerer_events_committed", "counter"),
        ("triggerer_event_age_at_commit_seconds", "histogram"),
        ("triggerer_write_batch_size", "histogram"),
        ("triggerer_commit_seconds", "histogram"),
        ("scheduler_dag_runs_created", "counter"),
        ("scheduler_pass_seconds", "histogram"),
        ("scheduler_tasks_starving", "gauge"),
        ("scheduler_tasks_executable", "gauge"),
        ("executor_open_slots", "gauge"),
        ("executor_queued_tasks", "gauge"),
        ("executor_running_tasks", "gauge"),
        ("executor_deferred_tasks", "gauge"),
    ];

    /// The samples of an exposition: `name{labels}` → value.
    fn samples(text: &str) -> HashMap<String, f64> {
        text.lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .map(|l| {
                let (series, value) = l.rsplit_once(' ').expect("`series value`");
                (series.to_string(), value.parse().expect("a number"))
            })
            .collect()
    }

    fn sample(text: &str, series: &str) -> f64 {
        samples(text)
            .get(series)
            .copied()
            .unwrap_or_else(|| panic!("no sample {series} in\n{text}"))
    }

    #[test]
    fn every_metric_is_exposed_with_its_help_and_type() {
        // A labelled family without a series is not exposed at all: its series are made at 0
        // when a trigger of the provider starts and when a scheduler starts (as here).
        provider_started("metrics-test");
        record_dag_runs_created("scheduled", 0);
        let text = encode();
        assert!(text.ends_with("# EOF\n"), "{text}");
        for (name, kind) in ALL {
            let help = format!("# HELP {name} ");
            let help_line = text
                .lines()
                .find(|l| l.starts_with(&help))
                .unwrap_or_else(|| panic!("no HELP for {name} in\n{text}"));
            assert!(
                help_line.len() > help.len() + 20,
                "{name}: the help says what it counts: {help_line}"
            );
            assert!(
                text.lines().any(|l| l == format!("# TYPE {name} {kind}")),
                "no `# TYPE {name} {kind}` in\n{text}"
            );
        }
        // Gauges and histograms have a sample from the start; a histogram its buckets.
        let all = samples(&text);
        for (name, kind) in ALL {
            match kind {
                "gauge" => assert!(all.contains_key(name), "{name}"),
                "histogram" => {
                    for suffix in ["_count", "_sum", "_bucket{le=\"+Inf\"}"] {
                        assert!(
                            all.contains_key(&format!("{name}{suffix}")),
                            "{name}{suffix}"
                        );
                    }
                }
                _ => {
                    assert!(
                        all.keys()
                            .any(|k| k.starts_with(&format!("{name}_total{{"))),
                        "{name}_total"
                    );
                }
            }
        }
    }

    #[test]
    fn a_committed_batch_moves_the_counter_and_the_histograms() {
        let m = Metrics::new();
        m.provider_started("kafka");
        let before = m.encode();
        assert_eq!(
            sample(
                &before,
                "triggerer_events_committed_total{provider=\"kafka\"}"
            ),
            0.0
        );
        assert_eq!(sample(&before, "triggerer_write_batch_size_count"), 0.0);

        let now = UNIX_EPOCH + Duration::from_secs(1_000_000);
        m.record_batch(7);
        m.record_commit(Duration::from_millis(3));
        m.record_committed(
            [
                ("kafka", Some(now - Duration::from_secs(2))),
                ("kafka", Some(now - Duration::from_millis(40))),
                ("http", None),
                // A source clock ahead of ours.
                ("sqs", Some(now + Duration::from_secs(1))),
            ],
            now,
        );
        let text = m.encode();
        let s = |series: &str| sample(&text, series);
        assert_eq!(
            s("triggerer_events_committed_total{provider=\"kafka\"}"),
            2.0
        );
        assert_eq!(
            s("triggerer_events_committed_total{provider=\"http\"}"),
            1.0
        );
        assert_eq!(s("triggerer_events_committed_total{provider=\"sqs\"}"), 1.0);

        assert_eq!(s("triggerer_write_batch_size_count"), 1.0);
        assert_eq!(s("triggerer_write_batch_size_sum"), 7.0);
        assert_eq!(s("triggerer_write_batch_size_bucket{le=\"5.0\"}"), 0.0);
        assert_eq!(s("triggerer_write_batch_size_bucket{le=\"10.0\"}"), 1.0);
        assert_eq!(s("triggerer_write_batch_size_bucket{le=\"1000.0\"}"), 1.0);

        assert_eq!(s("triggerer_commit_seconds_count"), 1.0);
        assert!((s("triggerer_commit_seconds_sum") - 0.003).abs() < 1e-9);
        assert_eq!(s("triggerer_commit_seconds_bucket{le=\"0.0025\"}"), 0.0);
        assert_eq!(s("triggerer_commit_seconds_bucket{le=\"0.005\"}"), 1.0);

        // Three events had a source time: 2 s, 40 ms and (clamped) 0 s old.
        assert_eq!(s("triggerer_event_age_at_commit_seconds_count"), 3.0);
        assert!((s("triggerer_event_age_at_commit_seconds_sum") - 2.04).abs() < 1e-9);
        assert_eq!(
            s("triggerer_event_age_at_commit_seconds_bucket{le=\"0.005\"}"),
            1.0
        );
        assert_eq!(
            s("triggerer_event_age_at_commit_seconds_bucket{le=\"0.05\"}"),
            2.0
        );
        assert_eq!(
            s("triggerer_event_age_at_commit_seconds_bucket{le=\"2.5\"}"),
            3.0
        );
    }

    #[test]
    fn the_process_registry_records_what_the_services_report() {
        // A provider name no other test uses: tests share the process's registry.
        let series = "triggerer_events_committed_total{provider=\"metrics-test\"}";
        provider_started("metrics-test");
        assert_eq!(sample(&encode(), series), 0.0);
        record_committed(
            [("metrics-test", None), ("metrics-test", None)],
            SystemTime::now(),
        );
        assert_eq!(sample(&encode(), series), 2.0);
    }

    #[test]
    fn scheduler_metrics_count_runs_by_type_and_passes() {
        let m = Metrics::new();
        m.record_dag_runs_created("scheduled", 3);
        m.record_dag_runs_created("asset_triggered", 1);
        m.record_dag_runs_created("scheduled", 2);
        m.pass_seconds.observe(0.02);
        let text = m.encode();
        let s = |series: &str| sample(&text, series);
        assert_eq!(
            s("scheduler_dag_runs_created_total{run_type=\"scheduled\"}"),
            5.0
        );
        assert_eq!(
            s("scheduler_dag_runs_created_total{run_type=\"asset_triggered\"}"),
            1.0
        );
        assert_eq!(s("scheduler_pass_seconds_count"), 1.0);
    }

    #[test]
    fn services_in_one_process_add_up_and_take_their_part_back() {
        let m = Metrics::new();
        let mut a = TriggererGauges::of(&m);
        let mut b = TriggererGauges::of(&m);
        a.set(3, 10, 1);
        b.set(5, 5, 0);
        let text = m.encode();
        assert_eq!(sample(&text, "triggerer_triggers_running"), 8.0);
        assert_eq!(sample(&text, "triggerer_capacity_left"), 7.0);
        assert_eq!(sample(&text, "triggerer_triggers_failing"), 1.0);
        a.set(2, 10, 0);
        drop(b);
        let text = m.encode();
        assert_eq!(sample(&text, "triggerer_triggers_running"), 2.0);
        assert_eq!(sample(&text, "triggerer_capacity_left"), 8.0);
        assert_eq!(sample(&text, "triggerer_triggers_failing"), 0.0);

        let mut e = ExecutorGauges::of(&m);
        e.set(30, 1, 1);
        assert_eq!(sample(&m.encode(), "executor_open_slots"), 30.0);
        e.set(32, 0, 0);
        assert_eq!(sample(&m.encode(), "executor_queued_tasks"), 0.0);
        e.set(29, 1, 2);
        let text = m.encode();
        assert_eq!(sample(&text, "executor_queued_tasks"), 1.0);
        assert_eq!(sample(&text, "executor_running_tasks"), 2.0);
        drop(e);
        assert_eq!(sample(&m.encode(), "executor_open_slots"), 0.0);
    }
}

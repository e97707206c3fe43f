//! The triggerer process in-process, with test providers: failure isolation, restart with
//! backoff, cancellation on removal, and a clean shutdown that releases triggers.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::{json, Value};
use tokio::sync::Notify;
use triggerer::definitions::load_str;
use triggerer::registry::ProviderRegistry;
use triggerer::store::Store;
use triggerer::triggerer::{run, TriggererOptions};
use triggerer_sdk::{
    CancellationToken, Event, EventTrigger, KwargsError, Provider, TriggerContext, TriggerError,
};

/// Emits an event every 20 ms until cancelled; records when it stops, however it stops.
struct TickProvider {
    cancelled: Arc<AtomicBool>,
}

struct Tick {
    cancelled: Arc<AtomicBool>,
}

impl Provider for TickProvider {
    fn name(&self) -> &'static str {
        "tick"
    }
    fn classpaths(&self) -> &'static [&'static str] {
        &["test.Tick"]
    }
    fn validate(&self, _: &Value) -> Result<(), KwargsError> {
        Ok(())
    }
    fn build(&self, _: &Value) -> Result<Box<dyn EventTrigger>, KwargsError> {
        Ok(Box::new(Tick {
            cancelled: self.cancelled.clone(),
        }))
    }
}

#[async_trait]
impl EventTrigger for Tick {
    async fn run(self: Box<Self>, ctx: TriggerContext) -> Result<(), TriggerError> {
        struct Stopped(Arc<AtomicBool>);
        impl Drop for Stopped {
            fn drop(&mut self) {
                self.0.store(true, Ordering::SeqCst);
            }
        }
        let _stopped = Stopped(self.cancelled.clone());
        let mut n: u64 = ctx
            .checkpoint
            .get("n")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        loop {
            tokio::select! {
                _ = ctx.cancel.cancelled() => return Ok(()),
                _ = tokio::time::sleep(Duration::from_millis(20)) => {
                    n += 1;
                    let event = Event::new(json!({"n": n}), format!("tick:{n}")).with_checkpoint("n", n.to_string());
                    ctx.sink.emit(event).await?;
                }
            }
        }
    }
}

/// Panics as soon as it starts.
struct PanicProvider {
    starts: Arc<AtomicUsize>,
}

struct Panics;

impl Provider for PanicProvider {
    fn name(&self) -> &'static str {
        "panic"
    }
    fn classpaths(&self) -> &'static [&'static str] {
        &["test.Panic"]
    }
    fn validate(&self, _: &Value) -> Result<(), KwargsError> {
        Ok(())
    }
    fn build(&self, _: &Value) -> Result<Box<dyn EventTrigger>, KwargsError> {
        self.starts.fetch_add(1, Ordering::SeqCst);
        Ok(Box::new(Panics))
    }
}

#[async_trait]
impl EventTrigger for Panics {
    async fn run(self: Box<Self>, _: TriggerContext) -> Result<(), TriggerError> {
        panic!("boom from a test trigger");
    }
}

const DEFS: &str = r#"
[[asset]]
name = "ticks"
[[asset.watcher]]
name = "tick"
classpath = "test.Tick"
[[asset]]
name = "broken"
[[asset.watcher]]
name = "panics"
classpath = "test.Panic"
[[dag]]
dag_id = "on_ticks"
schedule = { assets = "ticks" }
"#;

async fn wait_until<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    while tokio::time::Instant::now() < deadline {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for: {what}");
}

async fn failure_count(store: &Store, classpath: &str) -> (i64, Option<String>) {
    let t = store
        .list_triggers(std::time::Duration::from_secs(30))
        .await
        .unwrap()
        .into_iter()
        .find(|t| t.classpath == classpath)
        .expect("trigger");
    (t.failure_count, t.last_error)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_trigger_is_isolated_and_restarted_while_others_go_on() {
    let (store, _guard) = common::sqlite_store().await;
    let cancelled = Arc::new(AtomicBool::new(false));
    let starts = Arc::new(AtomicUsize::new(0));
    let mut registry = ProviderRegistry::default();
    registry
        .register(TickProvider {
            cancelled: cancelled.clone(),
        })
        .unwrap();
    registry
        .register(PanicProvider {
            starts: starts.clone(),
        })
        .unwrap();
    store
        .apply_definitions(&load_str("defs.toml", DEFS, &registry).unwrap())
        .await
        .unwrap();

    let shutdown = CancellationToken::new();
    let options = TriggererOptions {
        loop_interval: Duration::from_millis(100),
        ..TriggererOptions::default()
    };
    let process = tokio::spawn(run(
        store.clone(),
        registry.clone(),
        options,
        shutdown.clone(),
        Arc::new(Notify::new()),
        Arc::new(Notify::new()),
    ));

    // The panicking trigger fails, is recorded, and is started again after its backoff.
    wait_until(
        "two starts of the panicking trigger",
        Duration::from_secs(15),
        || {
            let starts = starts.clone();
            async move { starts.load(Ordering::SeqCst) >= 2 }
        },
    )
    .await;
    let (failures, last_error) = failure_count(&store, "test.Panic").await;
    assert!(failures >= 1);
    assert!(last_error
        .unwrap_or_default()
        .contains("boom from a test trigger"));

    // Meanwhile the healthy trigger keeps emitting and never failed.
    let ticks = store.list_events(Some("ticks"), 0).await.unwrap().len();
    assert!(ticks > 0, "healthy trigger emitted nothing");
    wait_until("more ticks", Duration::from_secs(10), || {
        let store = store.clone();
        async move { store.list_events(Some("ticks"), 0).await.unwrap().len() > ticks }
    })
    .await;
    assert_eq!(failure_count(&store, "test.Tick").await.0, 0);
    assert!(
        !store.queued_dags().await.unwrap().is_empty(),
        "tick events are queued for on_ticks"
    );

    // Removing the watcher stops its trigger within a loop (cancelled, or fenced at its next
    // emit, whichever comes first).
    let without_ticks = DEFS.replace(
        "[[asset.watcher]]\nname = \"tick\"\nclasspath = \"test.Tick\"\n",
        "",
    );
    store
        .apply_definitions(&load_str("defs.toml", &without_ticks, &registry).unwrap())
        .await
        .unwrap();
    wait_until("tick trigger stopped", Duration::from_secs(10), || {
        let cancelled = cancelled.clone();
        async move { cancelled.load(Ordering::SeqCst) }
    })
    .await;

    // Shutdown: clean exit, job ended, triggers handed back.
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(20), process)
        .await
        .expect("stops in time")
        .unwrap()
        .unwrap();
    assert!(store
        .list_triggers(std::time::Duration::from_secs(30))
        .await
        .unwrap()
        .iter()
        .all(|t| t.triggerer_id.is_none()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_trigger_resumes_from_its_committed_checkpoint() {
    let (store, _guard) = common::sqlite_store().await;
    let mut registry = ProviderRegistry::default();
    registry
        .register(TickProvider {
            cancelled: Arc::new(AtomicBool::new(false)),
        })
        .unwrap();
    let defs = "[[asset]]\nname = \"ticks\"\n[[asset.watcher]]\nname = \"tick\"\nclasspath = \"test.Tick\"\n";
    store
        .apply_definitions(&load_str("defs.toml", defs, &registry).unwrap())
        .await
        .unwrap();
    for _ in 0..2 {
        let shutdown = CancellationToken::new();
        let options = TriggererOptions {
            loop_interval: Duration::from_millis(100),
            ..TriggererOptions::default()
        };
        let process = tokio::spawn(run(
            store.clone(),
            registry.clone(),
            options,
            shutdown.clone(),
            Arc::new(Notify::new()),
            Arc::new(Notify::new()),
        ));
        let before = store.list_events(None, 0).await.unwrap().len();
        wait_until("ticks", Duration::from_secs(10), || {
            let store = store.clone();
            async move { store.list_events(None, 0).await.unwrap().len() >= before + 5 }
        })
        .await;
        shutdown.cancel();
        process.await.unwrap().unwrap();
    }
    // Keys continue from the checkpoint, so the second run never re-emits the first run's keys.
    let events = store.list_events(None, 0).await.unwrap();
    let keys: std::collections::BTreeSet<_> =
        events.iter().filter_map(|e| e.dedup_key.clone()).collect();
    assert_eq!(keys.len(), events.len());
    let max: u64 = keys
        .iter()
        .filter_map(|k| k.strip_prefix("tick:")?.parse().ok())
        .max()
        .unwrap();
    assert_eq!(
        max as usize,
        events.len(),
        "numbering is contiguous across the restart"
    );
}

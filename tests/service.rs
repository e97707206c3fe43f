//! A whole `standalone` service in-process, through `service::serve`: started against a
//! definitions directory, awaited until ready (no fixed sleep), fed a file, steered with a
//! reload, and stopped; its trigger is handed back. On SQLite.

mod common;

use std::time::Duration;

use triggerer::registry::builtin_providers;
use triggerer::scheduler::SchedulerOptions;
use triggerer::service::{self, ServiceOptions};
use triggerer::store::Store;
use triggerer::triggerer::TriggererOptions;

async fn wait_for<F, Fut>(what: &str, mut done: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !done().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_runs_in_process_until_told_to_stop() {
    let (store, dir) = common::sqlite_store().await;
    let incoming = dir.path().join("incoming");
    let dags = dir.path().join("dags");
    std::fs::create_dir_all(&incoming).unwrap();
    std::fs::create_dir_all(&dags).unwrap();
    let defs = format!(
        "[[asset]]\nname = \"landing\"\n[[asset.watcher]]\nname = \"files\"\n\
         classpath = \"file.FileTrigger\"\nkwargs = {{ filepath = \"{}/*.csv\" }}\n\
         [[dag]]\ndag_id = \"ingest\"\nschedule = {{ assets = \"landing\" }}\n",
        incoming.display()
    );
    common::write_file(&dags, "dags.toml", &defs);

    let options = ServiceOptions {
        dags: Some(dags.clone()),
        triggerer: Some(TriggererOptions {
            heartbeat_interval: Duration::from_millis(200),
            ..TriggererOptions::default()
        }),
        scheduler: Some(SchedulerOptions::default()),
        ..ServiceOptions::default()
    };
    let (controls, steering) = service::controls();
    let registry = builtin_providers();
    let served = tokio::spawn({
        let store = store.clone();
        async move { service::serve(&store, &registry, options, steering).await }
    });
    controls.ready.await.expect("the service becomes ready");
    // Ready means synced: the definitions are in the database already.
    assert_eq!(store.list_dags().await.unwrap().len(), 1);

    let owned = |store: &Store| {
        let store = store.clone();
        async move {
            store.list_triggers(Duration::from_secs(30)).await.unwrap()[0]
                .triggerer_id
                .is_some()
        }
    };
    wait_for("the trigger to be claimed", || owned(&store)).await;
    std::fs::write(incoming.join("orders-1.csv"), "id\n1\n").unwrap();
    wait_for("the asset-triggered run", || {
        let store = store.clone();
        async move {
            store
                .list_runs(Some("ingest"), None, 0)
                .await
                .unwrap()
                .len()
                == 1
        }
    })
    .await;

    controls
        .reload
        .send(())
        .expect("the definitions watch listens");
    controls.shutdown.cancel();
    served
        .await
        .expect("the service task")
        .expect("a clean stop");
    assert!(!owned(&store).await, "the trigger is handed back");
}

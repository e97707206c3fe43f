//! The store suite: the same tests on SQLite and (with `--features integration`) PostgreSQL.

mod common;

use std::collections::BTreeSet;
use std::path::PathBuf;

use chrono::Duration;
use serde_json::json;
use triggerer::dag_run::DagRunType;
use triggerer::definitions;
use triggerer::registry::builtin_providers;
use triggerer::scheduler;
use triggerer::store::{Claim, ManualRun, NewEvent, Origin, Store, StoreError, TRIGGERER_JOB};
use triggerer::sync::{self, SyncOptions};
use triggerer_sdk::{Checkpoint, NotCommitted};

async fn sync(store: &Store, text: &str) {
    let plan =
        definitions::load_str("defs.toml", text, &builtin_providers()).expect("valid definitions");
    store
        .apply_definitions(&plan)
        .await
        .expect("apply definitions");
}

/// [`sync`] as `--allow-empty` does it: removing everything is accepted.
async fn sync_allowing_empty(store: &Store, text: &str) {
    let mut plan =
        definitions::load_str("defs.toml", text, &builtin_providers()).expect("valid definitions");
    plan.allow_removing_everything = true;
    store
        .apply_definitions(&plan)
        .await
        .expect("apply definitions");
}

async fn emit(store: &Store, asset: &str, key: &str) -> u32 {
    let asset_id = store.asset_id(asset).await.expect("asset exists");
    let event = NewEvent {
        origin: Origin::Manual { asset_id },
        extra: json!({"k": key}),
        dedup_key: Some(key.into()),
        checkpoint: None,
    };
    store.write_events(&[event], None).await.expect("write")[0]
        .clone()
        .expect("committed")
}

/// Runs one scheduling pass now and returns how many asset-triggered runs it created.
async fn runs_created(store: &Store) -> usize {
    scheduler::pass(store, triggerer::time::now(), None, 100)
        .await
        .expect("scheduling pass")
        .asset_triggered_created
}

fn event_ids_of(store_events: &[triggerer::store::EventRow], keys: &[&str]) -> Vec<i64> {
    let mut ids: Vec<i64> = store_events
        .iter()
        .filter(|e| e.dedup_key.as_deref().is_some_and(|k| keys.contains(&k)))
        .map(|e| e.id)
        .collect();
    ids.sort_unstable();
    ids
}

const SHARED: &str = r#"
[[asset]]
name = "a"
[[asset.watcher]]
name = "wa"
classpath = "file.FileTrigger"
kwargs = { filepath = "/tmp/in", recursive = false }

[[asset]]
name = "b"
[[asset.watcher]]
name = "wb"
classpath = "airflow.providers.standard.triggers.file.FileTrigger"
kwargs = { recursive = false, filepath = "/tmp/in" }
"#;

store_test!(identical_watchers_share_one_trigger, |store| {
    sync(&store, SHARED).await;
    let triggers = store
        .list_triggers(std::time::Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(triggers.len(), 1, "{triggers:?}");
    assert_eq!(triggers[0].classpath, "file.FileTrigger");
    assert_eq!(triggers[0].assets, vec!["a".to_string(), "b".to_string()]);
    // Syncing again changes nothing.
    sync(&store, SHARED).await;
    assert_eq!(
        store
            .list_triggers(std::time::Duration::from_secs(30))
            .await
            .unwrap(),
        triggers
    );
});

store_test!(sync_is_a_reconciliation, |store| {
    sync(
        &store,
        &format!("{SHARED}\n[[dag]]\ndag_id = \"d\"\nschedule = {{ assets = \"a\" }}\n"),
    )
    .await;
    assert_eq!(store.list_dags().await.unwrap().len(), 1);
    // b's watcher changes kwargs: a new trigger appears, a keeps the old one.
    sync(
        &store,
        r#"
[[asset]]
name = "a"
[[asset.watcher]]
name = "wa"
classpath = "file.FileTrigger"
kwargs = { filepath = "/tmp/in", recursive = false }
[[asset]]
name = "b"
[[asset.watcher]]
name = "wb"
classpath = "file.FileTrigger"
kwargs = { filepath = "/tmp/other" }
"#,
    )
    .await;
    let triggers = store
        .list_triggers(std::time::Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(triggers.len(), 2);
    assert!(
        store.list_dags().await.unwrap().is_empty(),
        "removed DAG is no longer listed"
    );
    // Removing everything is refused unless asked for, and then changes nothing.
    let plan = definitions::load_str("defs.toml", "", &builtin_providers()).unwrap();
    let err = store.apply_definitions(&plan).await.unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::WouldRemoveEverything { assets: 2, dags: 0 }
        ),
        "{err}"
    );
    assert_eq!(store.list_assets().await.unwrap().len(), 2);
    // Everything removed: no triggers, no assets, no DAGs.
    sync_allowing_empty(&store, "").await;
    assert!(store
        .list_triggers(std::time::Duration::from_secs(30))
        .await
        .unwrap()
        .is_empty());
    assert!(store.list_assets().await.unwrap().is_empty());
    assert!(matches!(
        store.asset_id("a").await,
        Err(StoreError::NotFound(_))
    ));
});

store_test!(events_dedup_and_queue_only_for_unpaused_dags, |store| {
    sync(
        &store,
        r#"
[[asset]]
name = "a"
[[dag]]
dag_id = "live"
schedule = { assets = "a" }
[[dag]]
dag_id = "paused"
schedule = { assets = "a" }
"#,
    )
    .await;
    store.set_paused("paused", true).await.unwrap();
    assert_eq!(emit(&store, "a", "k1").await, 1);
    assert_eq!(
        emit(&store, "a", "k1").await,
        0,
        "same dedup key inserts nothing"
    );
    assert_eq!(emit(&store, "a", "k2").await, 1);
    assert_eq!(store.list_events(Some("a"), 0).await.unwrap().len(), 2);
    let queued = store.queued_dags().await.unwrap();
    assert_eq!(queued.len(), 1);
    assert_eq!(queued[0].dag_id, "live");
    // The paused DAG never sees these events, even once unpaused (Airflow behaviour).
    store.set_paused("paused", false).await.unwrap();
    let report = scheduler::pass(&store, triggerer::time::now(), None, 100)
        .await
        .unwrap();
    assert_eq!(report.asset_triggered_created, 1);
    assert!(store
        .list_runs(Some("paused"), None, 0)
        .await
        .unwrap()
        .is_empty());
});

store_test!(fencing_and_checkpoints, |store| {
    sync(&store, SHARED).await;
    let owner = store.create_job(TRIGGERER_JOB, "h1", None).await.unwrap();
    let other = store.create_job(TRIGGERER_JOB, "h2", None).await.unwrap();
    let alive_since = triggerer::time::now() - Duration::seconds(30);
    assert_eq!(
        store
            .assign_unassigned(owner, 10, 50, alive_since, &[])
            .await
            .unwrap(),
        Claim {
            claimed: 1,
            owned: 1
        }
    );
    assert_eq!(
        store
            .assign_unassigned(other, 10, 50, alive_since, &[])
            .await
            .unwrap(),
        Claim {
            claimed: 0,
            owned: 0
        },
        "owner is alive"
    );
    let trigger = store.triggers_for(owner).await.unwrap().remove(0);
    let event = NewEvent {
        origin: Origin::Trigger(trigger.id),
        extra: json!({"from_trigger": true, "payload": 1}),
        dedup_key: Some("f1".into()),
        checkpoint: Some(Checkpoint {
            key: "/tmp/in/f1".into(),
            value: "1:2".into(),
        }),
    };
    let fenced = store
        .write_events(std::slice::from_ref(&event), Some(other))
        .await
        .unwrap();
    assert_eq!(fenced, vec![Err(NotCommitted::Fenced)]);
    assert!(
        store.list_events(None, 0).await.unwrap().is_empty(),
        "a fenced event writes nothing"
    );
    assert!(store
        .load_checkpoints(&[trigger.id])
        .await
        .unwrap()
        .is_empty());
    let written = store.write_events(&[event], Some(owner)).await.unwrap();
    assert_eq!(written, vec![Ok(2)], "one asset event per watched asset");
    let checkpoints = store.load_checkpoints(&[trigger.id]).await.unwrap();
    assert_eq!(checkpoints[&trigger.id]["/tmp/in/f1"], "1:2");
    // The owner ends: its trigger is released and the other triggerer claims it.
    store.end_job(owner).await.unwrap();
    assert_eq!(
        store
            .assign_unassigned(other, 10, 50, alive_since, &[])
            .await
            .unwrap(),
        Claim {
            claimed: 1,
            owned: 1
        }
    );
});

store_test!(
    dead_triggerers_lose_their_triggers_and_claims_are_bounded,
    |store| {
        let mut text = String::new();
        for i in 0..5 {
            text.push_str(&format!("[[asset]]\nname = \"a{i}\"\n[[asset.watcher]]\nname = \"w\"\nclasspath = \"file.FileTrigger\"\nkwargs = {{ filepath = \"/tmp/in{i}\" }}\n"));
        }
        sync(&store, &text).await;
        let dead = store.create_job(TRIGGERER_JOB, "h1", None).await.unwrap();
        let now = triggerer::time::now();
        assert_eq!(
            store
                .assign_unassigned(dead, 3, 2, now - Duration::seconds(30), &[])
                .await
                .unwrap(),
            Claim {
                claimed: 2,
                owned: 2
            },
            "per-loop limit"
        );
        assert_eq!(
            store
                .assign_unassigned(dead, 3, 2, now - Duration::seconds(30), &[])
                .await
                .unwrap(),
            Claim {
                claimed: 1,
                owned: 3
            },
            "capacity"
        );
        assert_eq!(
            store
                .assign_unassigned(dead, 3, 2, now - Duration::seconds(30), &[])
                .await
                .unwrap(),
            Claim {
                claimed: 0,
                owned: 3
            }
        );
        let live = store.create_job(TRIGGERER_JOB, "h2", None).await.unwrap();
        // With a threshold in the future, `dead`'s heartbeat counts as too old.
        let claimed = store
            .assign_unassigned(live, 10, 50, now + Duration::seconds(1), &[])
            .await
            .unwrap();
        assert_eq!(
            claimed,
            Claim {
                claimed: 5,
                owned: 5
            },
            "unowned and dead-owned triggers are claimed"
        );
    }
);

store_test!(
    a_and_b_or_c_runs_only_when_ready_and_consumes_exactly_its_events,
    |store| {
        sync(
            &store,
            r#"
[[asset]]
name = "a"
[[asset]]
name = "b"
[[asset]]
name = "c"
[[dag]]
dag_id = "d"
schedule = { assets = "a & (b | c)" }
"#,
        )
        .await;
        emit(&store, "a", "a1").await;
        assert_eq!(runs_created(&store).await, 0, "a alone");
        emit(&store, "c", "c1").await;
        emit(&store, "a", "a2").await;
        assert_eq!(runs_created(&store).await, 1);
        emit(&store, "b", "b1").await;
        emit(&store, "c", "c2").await;
        assert_eq!(runs_created(&store).await, 0, "b, c without a");
        emit(&store, "a", "a3").await;
        assert_eq!(runs_created(&store).await, 1);

        let events = store.list_events(None, 0).await.unwrap();
        let runs = store.list_runs(Some("d"), None, 0).await.unwrap();
        assert_eq!(runs.len(), 2);
        assert!(runs.iter().all(|r| r.run_type == DagRunType::AssetTriggered
            && r.run_id.starts_with("asset_triggered__")));
        assert_eq!(
            runs[0].consumed_events,
            event_ids_of(&events, &["a1", "c1", "a2"])
        );
        assert_eq!(
            runs[1].consumed_events,
            event_ids_of(&events, &["b1", "c2", "a3"])
        );
        assert!(
            store.queued_dags().await.unwrap().is_empty(),
            "no event left behind"
        );
    }
);

store_test!(queued_runs_start_under_max_active_runs, |store| {
    sync(&store, "[[dag]]\ndag_id = \"m\"\nmax_active_runs = 2\n").await;
    let t0 = triggerer::time::parse_rfc3339("2024-01-01T00:00:00Z").unwrap();
    for day in 0..3 {
        store
            .create_manual_run(&ManualRun {
                dag_id: "m".into(),
                run_id: None,
                conf: json!({"day": day}),
                logical_date: Some(t0 + Duration::days(day)),
                data_interval: None,
            })
            .await
            .unwrap();
    }
    let now = triggerer::time::now();
    assert_eq!(store.start_queued_runs(now).await.unwrap(), 2);
    assert_eq!(store.start_queued_runs(now).await.unwrap(), 0);
    let runs = store.list_runs(Some("m"), None, 0).await.unwrap();
    let states: Vec<&str> = runs.iter().map(|r| r.state.as_str()).collect();
    assert_eq!(
        states,
        ["running", "running", "queued"],
        "oldest logical dates start first"
    );
    assert_eq!(runs[0].run_id, "manual__2024-01-01T00:00:00+00:00");
    assert_eq!(runs[2].conf, json!({"day": 2}));
});

store_test!(manual_run_errors_are_clear, |store| {
    sync(&store, "[[dag]]\ndag_id = \"m\"\n").await;
    let run = ManualRun {
        dag_id: "m".into(),
        run_id: Some("r1".into()),
        conf: json!({}),
        logical_date: None,
        data_interval: None,
    };
    store.create_manual_run(&run).await.unwrap();
    let err = store.create_manual_run(&run).await.unwrap_err().to_string();
    assert!(err.contains("r1") && err.contains("already"), "{err}");
    let t = triggerer::time::parse_rfc3339("2024-05-01T00:00:00Z").unwrap();
    store
        .create_manual_run(&ManualRun {
            run_id: Some("r2".into()),
            logical_date: Some(t),
            data_interval: None,
            ..run.clone()
        })
        .await
        .unwrap();
    let err = store
        .create_manual_run(&ManualRun {
            run_id: Some("r3".into()),
            logical_date: Some(t),
            data_interval: None,
            ..run.clone()
        })
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("logical date") && err.contains("r2"), "{err}");
    let err = store
        .create_manual_run(&ManualRun {
            dag_id: "nope".into(),
            ..run
        })
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("nope") && err.contains("not found"), "{err}");
});

store_test!(a_failed_sync_writes_nothing, |store| {
    sync(&store, SHARED).await;
    let before = (
        store
            .list_triggers(std::time::Duration::from_secs(30))
            .await
            .unwrap(),
        store.list_assets().await.unwrap(),
    );
    let dir = tempfile::tempdir().unwrap();
    let good = common::write_file(dir.path(), "a.toml", "[[asset]]\nname = \"x\"\n");
    let bad = common::write_file(
        dir.path(),
        "b.toml",
        "[[dag]]\ndag_id = \"d\"\nschedule = { assets = \"x & missing\" }\n",
    );
    let paths: Vec<PathBuf> = vec![good, bad];
    let err = sync::sync(&store, &paths, &builtin_providers(), SyncOptions::default())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("b.toml:3:") && err.contains("missing"),
        "{err}"
    );
    let after = (
        store
            .list_triggers(std::time::Duration::from_secs(30))
            .await
            .unwrap(),
        store.list_assets().await.unwrap(),
    );
    assert_eq!(before, after);
    let names: BTreeSet<String> = after.1.into_iter().map(|a| a.name).collect();
    assert!(!names.contains("x"));
});

store_test!(
    a_dag_removed_and_defined_again_keeps_its_queued_events,
    |store| {
        let with_dag =
            "[[asset]]\nname = \"a\"\n[[dag]]\ndag_id = \"d\"\nschedule = { assets = \"a\" }\n";
        sync(&store, with_dag).await;
        emit(&store, "a", "e1").await;
        // The DAG goes (its file half-written, say) while the asset stays.
        sync(&store, "[[asset]]\nname = \"a\"\n").await;
        assert_eq!(runs_created(&store).await, 0, "a removed DAG gets no run");
        sync(&store, with_dag).await;
        assert_eq!(
            runs_created(&store).await,
            1,
            "defined again, its queued event gives it its run"
        );
        let runs = store.list_runs(Some("d"), None, 0).await.unwrap();
        let events = store.list_events(Some("a"), 0).await.unwrap();
        assert_eq!(runs[0].consumed_events, event_ids_of(&events, &["e1"]));
    }
);

store_test!(concurrent_syncs_leave_exactly_one_plan_active, |store| {
    // Disjoint plans of new names each round: no row both touch, so nothing but the sync
    // itself orders the two transactions.
    let plan_of = |only: &str| {
        let mut plan = definitions::load_str(
            "defs.toml",
            &format!("[[asset]]\nname = \"{only}\"\n[[dag]]\ndag_id = \"d_{only}\"\n"),
            &builtin_providers(),
        )
        .expect("valid");
        // Each removes all the other defined.
        plan.allow_removing_everything = true;
        plan
    };
    for round in 0..30 {
        let (xn, yn) = (format!("x{round}"), format!("y{round}"));
        let (x, y) = (plan_of(&xn), plan_of(&yn));
        let (a, b) = (store.clone(), store.clone());
        let (px, py) = (x.clone(), y.clone());
        let (rx, ry) = tokio::join!(
            tokio::spawn(async move { a.apply_definitions(&px).await }),
            tokio::spawn(async move { b.apply_definitions(&py).await })
        );
        rx.unwrap().expect("sync x");
        ry.unwrap().expect("sync y");
        let active: BTreeSet<String> = store
            .list_assets()
            .await
            .unwrap()
            .into_iter()
            .map(|a| a.name)
            .collect();
        let dags: BTreeSet<String> = store
            .list_dags()
            .await
            .unwrap()
            .into_iter()
            .map(|d| d.dag_id)
            .collect();
        let plan = |n: &str| {
            (
                BTreeSet::from([n.to_string()]),
                BTreeSet::from([format!("d_{n}")]),
            )
        };
        assert!(
            (active.clone(), dags.clone()) == plan(&xn)
                || (active.clone(), dags.clone()) == plan(&yn),
            "round {round}: active assets {active:?} and DAGs {dags:?} are no one sync's plan"
        );
    }
});

store_test!(manual_run_ids_are_checked, |store| {
    sync(&store, "[[dag]]\ndag_id = \"m\"\n").await;
    for bad in [
        "scheduled__2025-01-01T00:00:00+00:00",
        "backfill__x",
        "asset_triggered__y",
        "",
        "a\nb",
    ] {
        let run = ManualRun {
            dag_id: "m".into(),
            run_id: Some(bad.into()),
            conf: json!({}),
            logical_date: None,
            data_interval: None,
        };
        let err = store.create_manual_run(&run).await.unwrap_err();
        assert!(matches!(err, StoreError::Invalid(_)), "{bad:?}: {err}");
    }
    assert!(store
        .list_runs(Some("m"), None, 0)
        .await
        .unwrap()
        .is_empty());
});

store_test!(listing_an_unknown_asset_or_dag_is_an_error, |store| {
    sync(&store, SHARED).await;
    let err = store.list_events(Some("nosuch"), 0).await.unwrap_err();
    assert!(
        err.to_string().contains("asset `nosuch` not found"),
        "{err}"
    );
    let err = store.list_runs(Some("nosuch"), None, 0).await.unwrap_err();
    assert!(err.to_string().contains("DAG `nosuch` not found"), "{err}");
    assert!(store.list_events(Some("a"), 0).await.unwrap().is_empty());
});

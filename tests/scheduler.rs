//! The scheduler core on SQLite and (with `--features integration`) PostgreSQL: fairness
//! between time-due and asset-ready DAGs, asset-and-time gating, catchup for asset DAGs,
//! backfill and manual runs.

mod common;

use chrono::{DateTime, Utc};
use serde_json::json;
use triggerer::dag_run::{DagRunState, DagRunType};
use triggerer::definitions;
use triggerer::registry::builtin_providers;
use triggerer::scheduler;
use triggerer::store::{ManualRun, NewEvent, Origin, Store};
use triggerer::timetable::DataInterval;

fn t(s: &str) -> DateTime<Utc> {
    triggerer::time::parse_rfc3339(s).unwrap()
}

async fn sync_at(store: &Store, text: &str, now: &str) {
    let plan =
        definitions::load_str("defs.toml", text, &builtin_providers()).expect("valid definitions");
    store.apply_definitions(&plan).await.expect("apply");
    scheduler::refresh_next_dagruns(store, t(now))
        .await
        .expect("refresh");
}

async fn emit(store: &Store, asset: &str, key: &str) {
    let asset_id = store.asset_id(asset).await.expect("asset");
    let event = NewEvent {
        origin: Origin::Manual { asset_id },
        extra: json!({}),
        dedup_key: Some(key.into()),
        checkpoint: None,
    };
    store.write_events(&[event], None).await.expect("write")[0]
        .clone()
        .expect("committed");
}

async fn pass(store: &Store, now: &str) -> scheduler::PassReport {
    scheduler::pass(store, t(now), None, 100)
        .await
        .expect("pass")
}

store_test!(asset_dags_are_not_starved_by_busy_time_dags, |store| {
    let mut text = String::new();
    for i in 0..10 {
        text.push_str(&format!("[[asset]]\nname = \"a{i}\"\n[[dag]]\ndag_id = \"on_asset_{i}\"\nschedule = {{ assets = \"a{i}\" }}\n"));
    }
    for i in 0..200 {
        text.push_str(&format!("[[dag]]\ndag_id = \"hourly_{i:03}\"\nschedule = \"@hourly\"\nstart_date = 2025-01-01T00:00:00Z\ncatchup = true\n"));
    }
    sync_at(&store, &text, "2025-01-02T00:00:00Z").await;
    for i in 0..10 {
        emit(&store, &format!("a{i}"), "e1").await;
    }
    let report = pass(&store, "2025-01-02T00:00:00Z").await;
    assert_eq!(
        report.asset_triggered_created, 10,
        "every asset-ready DAG gets its run in one pass"
    );
    assert_eq!(
        report.scheduled_created, 100,
        "time-due DAGs are capped per pass, not the asset ones"
    );
});

const AND_TIME: &str = r#"
[[asset]]
name = "orders"
[[dag]]
dag_id = "morning_report"
schedule = { cron = "0 6 * * *", assets = "orders", combine = "and" }
start_date = 2025-01-02T00:00:00Z
"#;

store_test!(
    asset_and_time_waits_for_its_assets_and_never_skips_the_slot,
    |store| {
        sync_at(&store, AND_TIME, "2025-01-02T05:00:00Z").await;
        let dag = store.dag_timing("morning_report").await.unwrap();
        assert_eq!(dag.next.unwrap().run_after, t("2025-01-02T06:00:00Z"));
        // 06:00: the slot is due but nothing has arrived: no run.
        assert_eq!(
            pass(&store, "2025-01-02T06:00:00Z").await.scheduled_created,
            0
        );
        assert!(store
            .list_runs(Some("morning_report"), None, 0)
            .await
            .unwrap()
            .is_empty());
        // A sync later in the morning keeps the waiting slot.
        sync_at(&store, AND_TIME, "2025-01-02T08:00:00Z").await;
        // 09:00: the event arrives; exactly one SCHEDULED run for the 06:00 slot consumes it.
        emit(&store, "orders", "o1").await;
        let report = pass(&store, "2025-01-02T09:00:00Z").await;
        assert_eq!(
            (report.scheduled_created, report.asset_triggered_created),
            (1, 0)
        );
        let runs = store
            .list_runs(Some("morning_report"), None, 0)
            .await
            .unwrap();
        assert_eq!(runs.len(), 1);
        assert_eq!(runs[0].run_type, DagRunType::Scheduled);
        assert_eq!(runs[0].logical_date, Some(t("2025-01-02T06:00:00Z")));
        assert_eq!(runs[0].run_id, "scheduled__2025-01-02T06:00:00+00:00");
        let events = store.list_events(Some("orders"), 0).await.unwrap();
        assert_eq!(runs[0].consumed_events, vec![events[0].id]);
        // Nothing more at 09:00; the next slot is tomorrow 06:00 and waits again.
        assert_eq!(
            pass(&store, "2025-01-02T09:00:01Z").await.scheduled_created,
            0
        );
        let dag = store.dag_timing("morning_report").await.unwrap();
        assert_eq!(dag.next.unwrap().run_after, t("2025-01-03T06:00:00Z"));
    }
);

store_test!(asset_or_time_runs_on_either_path, |store| {
    sync_at(
        &store,
        r#"
[[asset]]
name = "orders"
[[dag]]
dag_id = "either"
schedule = { cron = "0 6 * * *", assets = "orders", combine = "or" }
start_date = 2025-01-02T00:00:00Z
"#,
        "2025-01-02T05:00:00Z",
    )
    .await;
    emit(&store, "orders", "o1").await;
    let report = pass(&store, "2025-01-02T05:00:00Z").await;
    assert_eq!(
        (report.scheduled_created, report.asset_triggered_created),
        (0, 1)
    );
    let report = pass(&store, "2025-01-02T06:00:00Z").await;
    assert_eq!(
        (report.scheduled_created, report.asset_triggered_created),
        (1, 0)
    );
    let types: Vec<DagRunType> = store
        .list_runs(Some("either"), None, 0)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.run_type)
        .collect();
    assert_eq!(types, [DagRunType::AssetTriggered, DagRunType::Scheduled]);
});

store_test!(
    new_asset_dags_see_earlier_events_only_with_catchup,
    |store| {
        let assets = "[[asset]]\nname = \"a\"\n";
        sync_at(&store, assets, "2025-01-01T00:00:00Z").await;
        emit(&store, "a", "before").await;
        let dags = format!("{assets}[[dag]]\ndag_id = \"fresh\"\nschedule = {{ assets = \"a\" }}\n[[dag]]\ndag_id = \"catching_up\"\nschedule = {{ assets = \"a\" }}\ncatchup = true\n");
        sync_at(&store, &dags, "2025-01-01T00:00:00Z").await;
        assert_eq!(
            pass(&store, "2025-01-01T00:00:00Z")
                .await
                .asset_triggered_created,
            1
        );
        assert!(store
            .list_runs(Some("fresh"), None, 0)
            .await
            .unwrap()
            .is_empty());
        assert_eq!(
            store.list_runs(Some("catching_up"), None, 0).await.unwrap()[0]
                .consumed_events
                .len(),
            1
        );
        emit(&store, "a", "after").await;
        assert_eq!(
            pass(&store, "2025-01-01T00:00:00Z")
                .await
                .asset_triggered_created,
            2
        );
    }
);

store_test!(
    backfill_creates_each_slot_once_and_respects_max_active_runs,
    |store| {
        sync_at(&store, "[[dag]]\ndag_id = \"daily\"\nschedule = { cron = \"0 0 * * *\", data_interval = true }\nstart_date = 2025-01-01T00:00:00Z\nmax_active_runs = 2\n", "2025-01-10T12:00:00Z").await;
        let timetable = scheduler::timetable_for(&store.dag_timing("daily").await.unwrap());
        let slots = scheduler::backfill_slots(
            &timetable,
            t("2025-01-01T00:00:00Z"),
            t("2025-01-05T00:00:00Z"),
            1000,
        )
        .unwrap();
        assert_eq!(slots.len(), 5);
        assert_eq!(
            slots[0].data_interval,
            DataInterval {
                start: t("2025-01-01T00:00:00Z"),
                end: t("2025-01-02T00:00:00Z")
            }
        );
        let report = store
            .create_backfill_runs("daily", &slots, false, |_| {})
            .await
            .unwrap();
        assert_eq!((report.created, report.skipped), (5, 0));
        let again = store
            .create_backfill_runs("daily", &slots, false, |_| {})
            .await
            .unwrap();
        assert_eq!(
            (again.created, again.skipped),
            (0, 5),
            "existing slots are skipped"
        );
        assert_eq!(
            store
                .start_queued_runs(t("2025-01-10T12:00:00Z"))
                .await
                .unwrap(),
            2
        );
        let runs = store
            .list_runs(Some("daily"), Some(DagRunState::Running), 0)
            .await
            .unwrap();
        let started: Vec<_> = runs.iter().map(|r| r.logical_date.unwrap()).collect();
        assert_eq!(
            started,
            [t("2025-01-01T00:00:00Z"), t("2025-01-02T00:00:00Z")],
            "oldest first"
        );
        assert!(runs
            .iter()
            .all(|r| r.run_id.starts_with("backfill__") && r.run_type == DagRunType::Backfill));
        assert!(scheduler::backfill_slots(
            &scheduler::timetable_for(&store.dag_timing("daily").await.unwrap()),
            t("2025-01-05T00:00:00Z"),
            t("2025-01-01T00:00:00Z"),
            10
        )
        .is_err());
    }
);

store_test!(manual_runs_get_the_timetable_data_interval, |store| {
    sync_at(&store, "[[dag]]\ndag_id = \"daily\"\nschedule = { cron = \"0 0 * * *\", data_interval = true }\nstart_date = 2025-01-01T00:00:00Z\n", "2025-01-10T12:00:00Z").await;
    let timetable = scheduler::timetable_for(&store.dag_timing("daily").await.unwrap());
    let logical = t("2025-01-03T10:00:00Z");
    let run = ManualRun {
        dag_id: "daily".into(),
        run_id: None,
        conf: json!({"source": "test"}),
        logical_date: Some(logical),
        data_interval: Some(timetable.infer_manual_data_interval(logical)),
    };
    let run_id = store.create_manual_run(&run).await.unwrap();
    assert_eq!(run_id, "manual__2025-01-03T10:00:00+00:00");
    let runs = store.list_runs(Some("daily"), None, 0).await.unwrap();
    assert_eq!(runs[0].data_interval_start, Some(t("2025-01-02T00:00:00Z")));
    assert_eq!(runs[0].data_interval_end, Some(t("2025-01-03T00:00:00Z")));
    assert_eq!(runs[0].conf, json!({"source": "test"}));
    // Manual runs are not automated runs: the next scheduled slot is the same with or without one.
    let before = store.dag_timing("daily").await.unwrap().next;
    assert!(before.is_some());
    scheduler::refresh_next_dagruns(&store, t("2025-01-10T12:00:00Z"))
        .await
        .unwrap();
    assert_eq!(store.dag_timing("daily").await.unwrap().next, before);
});

store_test!(paused_dags_get_no_scheduled_runs, |store| {
    sync_at(&store, "[[dag]]\ndag_id = \"daily\"\nschedule = \"@daily\"\nstart_date = 2025-01-01T00:00:00Z\ncatchup = true\n", "2025-01-03T00:00:00Z").await;
    store.set_paused("daily", true).await.unwrap();
    assert_eq!(
        pass(&store, "2025-01-03T00:00:00Z").await.scheduled_created,
        0
    );
    store.set_paused("daily", false).await.unwrap();
    assert_eq!(
        pass(&store, "2025-01-03T00:00:00Z").await.scheduled_created,
        1
    );
});

store_test!(
    events_a_dag_consumed_are_not_queued_again_when_its_reference_returns,
    |store| {
        let with_ref = "[[asset]]\nname = \"a\"\n[[asset]]\nname = \"b\"\n[[dag]]\ndag_id = \"d\"\nschedule = { assets = \"a\" }\ncatchup = true\n";
        let without = "[[asset]]\nname = \"a\"\n[[asset]]\nname = \"b\"\n[[dag]]\ndag_id = \"d\"\nschedule = { assets = \"b\" }\ncatchup = true\n";
        sync_at(&store, with_ref, "2025-01-01T00:00:00Z").await;
        emit(&store, "a", "a1").await;
        assert_eq!(
            pass(&store, "2025-01-01T00:00:00Z")
                .await
                .asset_triggered_created,
            1
        );
        sync_at(&store, without, "2025-01-01T00:00:00Z").await;
        sync_at(&store, with_ref, "2025-01-01T00:00:00Z").await;
        assert_eq!(
            pass(&store, "2025-01-01T00:00:00Z")
                .await
                .asset_triggered_created,
            0,
            "a1 was consumed already"
        );
        emit(&store, "a", "a2").await;
        assert_eq!(
            pass(&store, "2025-01-01T00:00:00Z")
                .await
                .asset_triggered_created,
            1
        );
        let runs = store.list_runs(Some("d"), None, 0).await.unwrap();
        assert_eq!(runs[1].consumed_events.len(), 1, "only the new event");
    }
);

store_test!(
    a_slot_another_scheduler_already_took_is_skipped_not_run_early,
    |store| {
        sync_at(&store, "[[dag]]\ndag_id = \"h\"\nschedule = \"@hourly\"\nstart_date = 2025-01-01T00:00:00Z\ncatchup = true\n", "2025-01-01T00:30:00Z").await;
        // Two schedulers read the same due slot; the first creates it and moves on to 01:00.
        let seen = store.due_dags(t("2025-01-01T00:30:00Z"), 10).await.unwrap();
        assert_eq!(
            pass(&store, "2025-01-01T00:30:00Z").await.scheduled_created,
            1
        );
        let timetable = scheduler::timetable_for(&seen[0]);
        let now = t("2025-01-01T00:30:00Z");
        let next_after = |i| timetable.next_dagrun_info(Some(i), seen[0].restriction, now);
        let policy = triggerer::store::SlotPolicy {
            next_after: &next_after,
            gate: None,
            max_active_runs: 16,
        };
        let late = store
            .create_scheduled_run("h", seen[0].next.unwrap(), &policy, None)
            .await
            .unwrap();
        assert_eq!(
            late,
            triggerer::store::SlotOutcome::Skipped,
            "the 01:00 slot is not created at 00:30"
        );
        assert_eq!(store.list_runs(Some("h"), None, 0).await.unwrap().len(), 1);
    }
);

store_test!(
    a_dag_full_of_queued_runs_does_not_keep_others_from_starting,
    |store| {
        sync_at(&store, "[[dag]]\ndag_id = \"a_busy\"\nschedule = \"@hourly\"\nstart_date = 2024-01-01T00:00:00Z\nmax_active_runs = 2\n[[dag]]\ndag_id = \"z_quiet\"\n", "2025-01-01T00:00:00Z").await;
        let timetable = scheduler::timetable_for(&store.dag_timing("a_busy").await.unwrap());
        let slots = scheduler::backfill_slots(
            &timetable,
            t("2024-01-01T00:00:00Z"),
            t("2024-02-20T00:00:00Z"),
            10_000,
        )
        .unwrap();
        assert!(slots.len() > 1000);
        store
            .create_backfill_runs("a_busy", &slots, false, |_| {})
            .await
            .unwrap();
        store
            .create_manual_run(&ManualRun {
                dag_id: "z_quiet".into(),
                run_id: None,
                conf: json!({}),
                logical_date: Some(t("2024-06-01T00:00:00Z")),
                data_interval: None,
            })
            .await
            .unwrap();
        assert_eq!(
            store
                .start_queued_runs(t("2025-01-01T00:00:00Z"))
                .await
                .unwrap(),
            3
        );
        assert_eq!(
            store
                .start_queued_runs(t("2025-01-01T00:00:00Z"))
                .await
                .unwrap(),
            0
        );
        assert_eq!(
            store
                .list_runs(Some("z_quiet"), Some(DagRunState::Running), 0)
                .await
                .unwrap()
                .len(),
            1
        );
    }
);

store_test!(
    backfill_runs_are_budgeted_apart_from_scheduled_ones,
    |store| {
        sync_at(&store, "[[dag]]\ndag_id = \"d\"\nschedule = \"@daily\"\nstart_date = 2025-01-01T00:00:00Z\nmax_active_runs = 1\n", "2025-01-10T00:00:00Z").await;
        let timetable = scheduler::timetable_for(&store.dag_timing("d").await.unwrap());
        let slots = scheduler::backfill_slots(
            &timetable,
            t("2024-12-01T00:00:00Z"),
            t("2024-12-03T00:00:00Z"),
            100,
        )
        .unwrap();
        store
            .create_backfill_runs("d", &slots, false, |_| {})
            .await
            .unwrap();
        let report = pass(&store, "2025-01-10T00:00:00Z").await;
        assert_eq!(
            (report.scheduled_created, report.started),
            (1, 2),
            "one backfill and the scheduled run"
        );
    }
);

store_test!(
    without_catchup_a_stale_slot_is_replaced_by_the_latest,
    |store| {
        sync_at(
            &store,
            "[[dag]]\ndag_id = \"h\"\nschedule = \"@hourly\"\nstart_date = 2025-01-01T00:00:00Z\n",
            "2025-01-01T10:30:00Z",
        )
        .await;
        assert_eq!(
            store.dag_timing("h").await.unwrap().next.unwrap().run_after,
            t("2025-01-01T10:00:00Z")
        );
        // Four days later (the DAG was paused, or the scheduler down), one run: the latest tick.
        let report = pass(&store, "2025-01-05T15:20:00Z").await;
        assert_eq!(report.scheduled_created, 1);
        let runs = store.list_runs(Some("h"), None, 0).await.unwrap();
        assert_eq!(runs[0].logical_date, Some(t("2025-01-05T15:00:00Z")));
        assert_eq!(
            pass(&store, "2025-01-05T15:20:00Z").await.scheduled_created,
            0
        );
    }
);

store_test!(
    finishing_a_run_frees_its_place_under_max_active_runs,
    |store| {
        sync_at(&store, "[[asset]]\nname = \"a\"\n[[dag]]\ndag_id = \"d\"\nschedule = { assets = \"a\" }\nmax_active_runs = 1\n", "2025-01-01T00:00:00Z").await;
        emit(&store, "a", "e1").await;
        assert_eq!(
            pass(&store, "2025-01-01T00:00:00Z")
                .await
                .asset_triggered_created,
            1
        );
        emit(&store, "a", "e2").await;
        assert_eq!(
            pass(&store, "2025-01-01T00:00:00Z")
                .await
                .asset_triggered_created,
            0,
            "at max_active_runs"
        );
        let first = store.list_runs(Some("d"), None, 0).await.unwrap().remove(0);
        store
            .finish_run("d", &first.run_id, DagRunState::Success)
            .await
            .unwrap();
        let again = store
            .finish_run("d", &first.run_id, DagRunState::Failed)
            .await
            .unwrap_err()
            .to_string();
        assert!(again.contains("already ended (success)"), "{again}");
        assert!(store
            .finish_run("d", "nope", DagRunState::Success)
            .await
            .unwrap_err()
            .to_string()
            .contains("no run `nope`"));
        assert_eq!(
            pass(&store, "2025-01-01T00:00:00Z")
                .await
                .asset_triggered_created,
            1,
            "e2 gets its run"
        );
    }
);

/// A run made by hand with the id the scheduler will give a DAG's due slot (older versions
/// accepted such manual run ids; the API never did): the scheduler skips that slot and moves
/// on instead of failing on it every pass, and the pass's other DAGs get their runs (the batch
/// it was in falls back to one DAG at a time). `insert` writes that run behind the store's back.
async fn a_taken_slot_run_id_is_skipped<F, Fut>(store: Store, insert: F)
where
    F: FnOnce(String, DateTime<Utc>) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    sync_at(
        &store,
        "[[dag]]\ndag_id = \"a\"\nschedule = \"@hourly\"\nstart_date = 2025-01-01T00:00:00Z\n\
         [[dag]]\ndag_id = \"b\"\nschedule = \"@hourly\"\nstart_date = 2025-01-01T00:00:00Z\n",
        "2025-01-02T00:30:00Z",
    )
    .await;
    let slot = store
        .dag_timing("a")
        .await
        .unwrap()
        .next
        .expect("a next slot");
    insert(DagRunType::Scheduled.run_id(slot.run_after), slot.run_after).await;
    let report = pass(&store, "2025-01-02T00:30:00Z").await;
    assert_eq!(report.slots_advanced, 1, "{report:?}");
    assert_eq!(report.scheduled_created, 1, "b's run: {report:?}");
    let next = store
        .dag_timing("a")
        .await
        .unwrap()
        .next
        .expect("next slot");
    assert!(
        next.run_after > slot.run_after,
        "a's schedule moved past the taken slot"
    );
    assert_eq!(
        store.list_runs(Some("a"), None, 0).await.unwrap().len(),
        1,
        "only the blocking run"
    );
    // The next slot gets its run as usual.
    let report = pass(&store, "2025-01-02T01:30:00Z").await;
    assert_eq!(report.scheduled_created, 2, "{report:?}");
}

const BLOCKING_RUN: &str =
    "INSERT INTO dag_run (dag_id, run_id, run_type, state, run_after, conf, queued_at) \
     VALUES ('a', $1, 'manual', 'queued', $2, '{}', $2)";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_taken_slot_run_id_is_skipped_sqlite() {
    let (store, dir) = common::sqlite_store().await;
    let url = format!("sqlite://{}", dir.path().join("test.db").display());
    a_taken_slot_run_id_is_skipped(store, |run_id, at| async move {
        let raw = sqlx::SqlitePool::connect(&url).await.unwrap();
        sqlx::query(BLOCKING_RUN)
            .bind(run_id)
            .bind(at)
            .execute(&raw)
            .await
            .expect("insert the blocking run");
    })
    .await;
}

#[cfg(feature = "integration-postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_taken_slot_run_id_is_skipped_postgres() {
    let (store, url) = common::postgres_store().await;
    a_taken_slot_run_id_is_skipped(store, |run_id, at| async move {
        let raw = sqlx::PgPool::connect(&url).await.unwrap();
        sqlx::query(BLOCKING_RUN)
            .bind(run_id)
            .bind(at)
            .execute(&raw)
            .await
            .expect("insert the blocking run");
    })
    .await;
}

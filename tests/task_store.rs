//! The store's task statements on both engines: task instances made with their run, the
//! scheduler's and the executor's advance by trigger rule, claims, fencing of a try's end,
//! failover, clearing and marking.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use triggerer::dag_run::DagRunState;
use triggerer::definitions;
use triggerer::registry::builtin_providers;
use triggerer::store::{
    ClaimedTry, EndedTry, ManualRun, Store, StoreError, TryEnd, TryUpdate, EXECUTOR_JOB,
};

const CHAIN: &str = r#"
[[dag]]
dag_id = "chain"

[[dag.task]]
task_id = "a"
shell = "true"
retries = 1
retry_delay = "1s"

[[dag.task]]
task_id = "b"
depends_on = ["a"]
shell = "true"

[[dag.task]]
task_id = "c"
depends_on = ["b"]
shell = "true"

[[dag.task]]
task_id = "on_fail"
depends_on = ["a"]
trigger_rule = "one_failed"
shell = "true"
"#;

async fn sync(store: &Store, text: &str) {
    let plan =
        definitions::load_str("defs.toml", text, &builtin_providers()).expect("valid definitions");
    store.apply_definitions(&plan).await.expect("apply");
}

async fn trigger(store: &Store, dag_id: &str, run_id: &str) {
    store
        .create_manual_run(&ManualRun {
            dag_id: dag_id.into(),
            run_id: Some(run_id.into()),
            conf: serde_json::json!({"k": 1}),
            logical_date: None,
            data_interval: None,
        })
        .await
        .expect("manual run");
}

async fn pass(store: &Store) {
    triggerer::scheduler::pass(store, triggerer::time::now(), None, 100)
        .await
        .expect("pass");
}

async fn states(store: &Store, dag_id: &str, run_id: &str) -> Vec<(String, String)> {
    store
        .list_task_instances(dag_id, run_id)
        .await
        .expect("list")
        .into_iter()
        .map(|r| (r.task_id, r.state))
        .collect()
}

fn pairs(expected: &[(&str, &str)]) -> Vec<(String, String)> {
    expected
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

async fn run_state(store: &Store, dag_id: &str, run_id: &str) -> DagRunState {
    store
        .list_runs(Some(dag_id), None, 0)
        .await
        .expect("runs")
        .into_iter()
        .find(|r| r.run_id == run_id)
        .expect("the run")
        .state
}

fn end(t: &ClaimedTry, end: TryEnd) -> TryUpdate {
    let now = triggerer::time::now();
    TryUpdate::Ended(EndedTry {
        id: t.id,
        dag_run_id: t.dag_run_id,
        try_number: t.try_number,
        end,
        started_at: now,
        ended_at: now,
        outcome: "test".into(),
        log: format!("output of try {}", t.try_number).into_bytes(),
    })
}

fn failed() -> TryEnd {
    TryEnd::Failed {
        retry_delay: Duration::ZERO,
        retryable: true,
    }
}

store_test!(a_run_is_driven_by_its_tasks, |store| {
    sync(&store, CHAIN).await;
    trigger(&store, "chain", "r1").await;
    assert_eq!(
        states(&store, "chain", "r1").await,
        pairs(&[
            ("a", "none"),
            ("b", "none"),
            ("c", "none"),
            ("on_fail", "none")
        ])
    );
    pass(&store).await;
    assert_eq!(
        states(&store, "chain", "r1").await[0],
        pairs(&[("a", "scheduled")])[0]
    );
    let job = store.create_job(EXECUTOR_JOB, "h", Some(4)).await.unwrap();
    let claimed = store.claim_task_instances(job, "h", 4).await.unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(
        (claimed[0].task_id.as_str(), claimed[0].try_number),
        ("a", 1)
    );
    assert_eq!(claimed[0].tries_allowed, 2);
    assert_eq!(claimed[0].conf, serde_json::json!({"k": 1}));
    assert!(claimed[0].spec.is_some());
    // Nothing more is claimable until `a` ends; its success schedules `b` in the same commit.
    assert!(store
        .claim_task_instances(job, "h", 4)
        .await
        .unwrap()
        .is_empty());
    let recorded = store
        .record_tries(job, "h", &[end(&claimed[0], TryEnd::Success)])
        .await
        .unwrap();
    assert_eq!((recorded.applied, recorded.scheduled), (vec![true], 1));
    assert_eq!(
        states(&store, "chain", "r1").await,
        pairs(&[
            ("a", "success"),
            ("b", "scheduled"),
            ("c", "none"),
            ("on_fail", "skipped")
        ])
    );
    for task in ["b", "c"] {
        let claimed = store.claim_task_instances(job, "h", 4).await.unwrap();
        assert_eq!(claimed.len(), 1, "{task}");
        assert_eq!(claimed[0].task_id, task);
        store
            .record_tries(job, "h", &[end(&claimed[0], TryEnd::Success)])
            .await
            .unwrap();
    }
    assert_eq!(run_state(&store, "chain", "r1").await, DagRunState::Success);
    let log = store.task_log("chain", "r1", "c", None).await.unwrap();
    assert_eq!(log.content, b"output of try 1");
});

store_test!(a_failure_is_retried_then_propagates, |store| {
    sync(&store, CHAIN).await;
    trigger(&store, "chain", "r1").await;
    pass(&store).await;
    let job = store.create_job(EXECUTOR_JOB, "h", Some(4)).await.unwrap();
    let first = store.claim_task_instances(job, "h", 4).await.unwrap();
    store
        .record_tries(job, "h", &[end(&first[0], failed())])
        .await
        .unwrap();
    assert_eq!(states(&store, "chain", "r1").await[0].1, "up_for_retry");
    pass(&store).await;
    let second = store.claim_task_instances(job, "h", 4).await.unwrap();
    assert_eq!(second[0].try_number, 2);
    store
        .record_tries(job, "h", &[end(&second[0], failed())])
        .await
        .unwrap();
    assert_eq!(
        states(&store, "chain", "r1").await,
        pairs(&[
            ("a", "failed"),
            ("b", "upstream_failed"),
            ("c", "upstream_failed"),
            ("on_fail", "scheduled")
        ])
    );
    let cleanup = store.claim_task_instances(job, "h", 4).await.unwrap();
    store
        .record_tries(job, "h", &[end(&cleanup[0], TryEnd::Success)])
        .await
        .unwrap();
    // `c` is a failed leaf: the run fails although the cleanup ran.
    assert_eq!(run_state(&store, "chain", "r1").await, DagRunState::Failed);
    // Each try keeps its own log.
    for n in [1, 2] {
        let log = store.task_log("chain", "r1", "a", Some(n)).await.unwrap();
        assert_eq!(log.content, format!("output of try {n}").into_bytes());
    }
    let missing = store
        .task_log("chain", "r1", "a", Some(9))
        .await
        .unwrap_err();
    assert!(missing.to_string().contains("tries 1, 2"), "{missing}");
});

store_test!(
    a_tries_end_is_recorded_once_and_dead_executors_are_failed_over,
    |store| {
        sync(&store, CHAIN).await;
        trigger(&store, "chain", "r1").await;
        pass(&store).await;
        let dead = store.create_job(EXECUTOR_JOB, "h1", Some(4)).await.unwrap();
        let taken = store.claim_task_instances(dead, "h1", 4).await.unwrap();
        // A heartbeat threshold in the future makes every executor dead, `dead` included.
        let failed_over = store
            .fail_over_task_instances(triggerer::time::now() + chrono::Duration::seconds(60))
            .await
            .unwrap();
        assert_eq!(failed_over, 1);
        assert_eq!(states(&store, "chain", "r1").await[0].1, "up_for_retry");
        let note = store.task_log("chain", "r1", "a", Some(1)).await.unwrap();
        assert!(String::from_utf8_lossy(&note.content).contains("stopped heartbeating"));
        // `a` waits its retry_delay of 1 s.
        tokio::time::sleep(Duration::from_millis(1100)).await;
        pass(&store).await;
        let live = store.create_job(EXECUTOR_JOB, "h2", Some(4)).await.unwrap();
        let retry = store.claim_task_instances(live, "h2", 4).await.unwrap();
        assert_eq!(retry[0].try_number, 2);
        // The dead executor's late report of its try changes nothing; the live one's counts.
        let late = store
            .record_tries(dead, "h1", &[end(&taken[0], TryEnd::Success)])
            .await
            .unwrap();
        assert_eq!(late.applied, vec![false]);
        assert_eq!(states(&store, "chain", "r1").await[0].1, "queued");
        let twice = store
            .record_tries(
                live,
                "h2",
                &[
                    end(&retry[0], TryEnd::Success),
                    end(&retry[0], TryEnd::Success),
                ],
            )
            .await
            .unwrap();
        assert_eq!(twice.applied, vec![true, false]);
        assert_eq!(states(&store, "chain", "r1").await[0].1, "success");
    }
);

store_test!(a_handed_back_try_does_not_count_against_retries, |store| {
    sync(&store, CHAIN).await;
    trigger(&store, "chain", "r1").await;
    pass(&store).await;
    let job = store.create_job(EXECUTOR_JOB, "h", Some(4)).await.unwrap();
    let first = store.claim_task_instances(job, "h", 4).await.unwrap();
    store
        .record_tries(job, "h", &[end(&first[0], TryEnd::HandedBack)])
        .await
        .unwrap();
    let rows = store.list_task_instances("chain", "r1").await.unwrap();
    assert_eq!(
        (rows[0].state.as_str(), rows[0].max_tries),
        ("scheduled", 2)
    );
    let again = store.claim_task_instances(job, "h", 4).await.unwrap();
    assert_eq!((again[0].try_number, again[0].tries_allowed), (2, 3));
});

store_test!(clearing_reruns_a_task_and_what_follows, |store| {
    sync(&store, CHAIN).await;
    trigger(&store, "chain", "r1").await;
    pass(&store).await;
    let job = store.create_job(EXECUTOR_JOB, "h", Some(4)).await.unwrap();
    loop {
        let claimed = store.claim_task_instances(job, "h", 4).await.unwrap();
        if claimed.is_empty() {
            break;
        }
        let ends: Vec<TryUpdate> = claimed.iter().map(|c| end(c, TryEnd::Success)).collect();
        store.record_tries(job, "h", &ends).await.unwrap();
    }
    assert_eq!(run_state(&store, "chain", "r1").await, DagRunState::Success);
    let unknown = store
        .clear_task_instances("chain", "r1", &["nope".into()], false)
        .await
        .unwrap_err();
    assert!(matches!(unknown, StoreError::NotFound(_)), "{unknown}");
    assert!(
        unknown.to_string().contains("a, b, c, on_fail"),
        "{unknown}"
    );
    let cleared = store
        .clear_task_instances("chain", "r1", &["b".into()], true)
        .await
        .unwrap();
    assert_eq!(cleared, vec!["b", "c"]);
    assert_eq!(run_state(&store, "chain", "r1").await, DagRunState::Running);
    pass(&store).await;
    let claimed = store.claim_task_instances(job, "h", 4).await.unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(
        (claimed[0].task_id.as_str(), claimed[0].try_number),
        ("b", 2)
    );
    // A task in flight is not cleared.
    let busy = store
        .clear_task_instances("chain", "r1", &["b".into()], false)
        .await
        .unwrap_err();
    assert!(matches!(busy, StoreError::Conflict(_)), "{busy}");
});

store_test!(marking_a_task_reevaluates_its_run, |store| {
    sync(&store, CHAIN).await;
    trigger(&store, "chain", "r1").await;
    pass(&store).await;
    for task in ["a", "b", "c"] {
        store
            .set_task_instance_state(
                "chain",
                "r1",
                task,
                triggerer::task::TaskInstanceState::Success,
            )
            .await
            .unwrap();
    }
    store
        .set_task_instance_state(
            "chain",
            "r1",
            "on_fail",
            triggerer::task::TaskInstanceState::Failed,
        )
        .await
        .unwrap();
    pass(&store).await;
    assert_eq!(run_state(&store, "chain", "r1").await, DagRunState::Failed);
    store
        .set_task_instance_state(
            "chain",
            "r1",
            "on_fail",
            triggerer::task::TaskInstanceState::Success,
        )
        .await
        .unwrap();
    pass(&store).await;
    assert_eq!(run_state(&store, "chain", "r1").await, DagRunState::Success);
    let bogus = store
        .set_task_instance_state(
            "chain",
            "r9",
            "a",
            triggerer::task::TaskInstanceState::Success,
        )
        .await
        .unwrap_err();
    assert!(bogus.to_string().contains("no run `r9`"), "{bogus}");
});

store_test!(a_dag_without_tasks_keeps_its_run_running, |store| {
    sync(&store, "[[dag]]\ndag_id = \"plain\"\n").await;
    trigger(&store, "plain", "r1").await;
    pass(&store).await;
    pass(&store).await;
    assert_eq!(run_state(&store, "plain", "r1").await, DagRunState::Running);
    let err = store.list_task_instances("plain", "r1").await.unwrap();
    assert!(err.is_empty());
});

store_test!(concurrent_claims_never_share_a_task_instance, |store| {
    let mut text = String::from("[[dag]]\ndag_id = \"wide\"\n");
    for i in 0..50 {
        text.push_str(&format!(
            "[[dag.task]]\ntask_id = \"t{i}\"\nshell = \"true\"\n"
        ));
    }
    sync(&store, &text).await;
    for r in 0..4 {
        trigger(&store, "wide", &format!("r{r}")).await;
    }
    pass(&store).await;
    let mut claimers = Vec::new();
    for h in 0..3 {
        let store = store.clone();
        claimers.push(tokio::spawn(async move {
            let job = store.create_job(EXECUTOR_JOB, "h", Some(7)).await.unwrap();
            let mut mine = Vec::new();
            loop {
                let claimed = store
                    .claim_task_instances(job, &format!("h{h}"), 7)
                    .await
                    .unwrap();
                if claimed.is_empty() {
                    return mine;
                }
                mine.extend(claimed.iter().map(|c| c.id));
            }
        }));
    }
    let mut all = Vec::new();
    for c in claimers {
        all.extend(c.await.unwrap());
    }
    let distinct: HashSet<_> = all.iter().collect();
    assert_eq!((all.len(), distinct.len()), (200, 200));
});

const WAITING: &str = r#"
[[dag]]
dag_id = "waits"

[[dag.task]]
task_id = "w"
wait = { classpath = "time.DateTimeTrigger", kwargs = { moment = "2100-01-01T00:00:00Z" } }
execution_timeout = "1h"
"#;

/// Defers the one task of `waits` run `r1` (its try having run 2 s) and returns its trigger id.
async fn defer_the_wait(store: &Store) -> (triggerer::store::JobId, i64) {
    sync(store, WAITING).await;
    trigger(store, "waits", "r1").await;
    pass(store).await;
    let job = store.create_job(EXECUTOR_JOB, "h", Some(4)).await.unwrap();
    let claimed = store.claim_task_instances(job, "h", 4).await.unwrap();
    let now = triggerer::time::now();
    let deferral = triggerer::store::Deferral {
        classpath: "time.DateTimeTrigger".into(),
        kwargs: r#"{"moment":"2100-01-01T00:00:00Z"}"#.into(),
        hash: "a deferral of the test".into(),
        timeout_at: None,
    };
    let recorded = store
        .record_tries(
            job,
            "h",
            &[TryUpdate::Ended(EndedTry {
                id: claimed[0].id,
                dag_run_id: claimed[0].dag_run_id,
                try_number: 1,
                end: TryEnd::Deferred(deferral),
                started_at: now - chrono::Duration::seconds(2),
                ended_at: now,
                outcome: "deferred".into(),
                log: b"first part\n".to_vec(),
            })],
        )
        .await
        .unwrap();
    assert_eq!(recorded.applied, vec![true]);
    let row = &store.list_task_instances("waits", "r1").await.unwrap()[0];
    assert_eq!(row.state, "deferred");
    (job, row.trigger_id.expect("a trigger row"))
}

store_test!(
    a_fired_trigger_resumes_the_same_try_with_its_running_time,
    |store| {
        let (job, trigger_id) = defer_the_wait(&store).await;
        // The deferred task holds no slot: nothing is claimable while it waits.
        assert!(store
            .claim_task_instances(job, "h", 4)
            .await
            .unwrap()
            .is_empty());
        let fire = |key: &str| triggerer::store::NewEvent {
            origin: triggerer::store::Origin::Trigger(triggerer_sdk::TriggerId::new(trigger_id)),
            extra: serde_json::json!({"from_trigger": true, "payload": {"moment": "now"}}),
            dedup_key: Some(key.into()),
            checkpoint: None,
        };
        // Two events in one batch: the first resumes the task, the second is not acknowledged.
        let outcome = store
            .write_events(&[fire("a"), fire("b")], None)
            .await
            .unwrap();
        assert!(outcome[0].is_ok());
        assert!(outcome[1].is_err(), "{outcome:?}");
        let resumed = store.claim_task_instances(job, "h", 4).await.unwrap();
        assert_eq!(resumed.len(), 1);
        assert_eq!(resumed[0].try_number, 1, "a resumed try is the same try");
        assert_eq!(
            resumed[0].trigger_event,
            Some(serde_json::json!({"moment": "now"}))
        );
        assert!(
            resumed[0].ran_before >= Duration::from_millis(1900),
            "{:?}",
            resumed[0].ran_before
        );
        // The trigger is gone: a second firing finds nothing.
        let again = store.write_events(&[fire("c")], None).await.unwrap();
        assert!(again[0].is_err(), "{again:?}");
        let done = store
            .record_tries(job, "h", &[end(&resumed[0], TryEnd::Success)])
            .await
            .unwrap();
        assert_eq!(done.applied, vec![true]);
        assert_eq!(run_state(&store, "waits", "r1").await, DagRunState::Success);
        let log = store.task_log("waits", "r1", "w", Some(1)).await.unwrap();
        assert_eq!(log.content, b"first part\noutput of try 1");
    }
);

store_test!(a_task_trigger_that_keeps_failing_fails_its_task, |store| {
    let (_, trigger_id) = defer_the_wait(&store).await;
    let id = triggerer_sdk::TriggerId::new(trigger_id);
    for n in 1..triggerer::store::TASK_TRIGGER_FAILURES {
        store
            .record_trigger_failure(id, &format!("boom {n}"))
            .await
            .unwrap();
        assert_eq!(
            store.list_task_instances("waits", "r1").await.unwrap()[0].state,
            "deferred"
        );
    }
    store
        .record_trigger_failure(id, "boom at last")
        .await
        .unwrap();
    let row = &store.list_task_instances("waits", "r1").await.unwrap()[0];
    assert_eq!((row.state.as_str(), row.trigger_id), ("failed", None));
    let log = store.task_log("waits", "r1", "w", Some(1)).await.unwrap();
    let text = String::from_utf8_lossy(&log.content);
    assert!(
        text.contains("failed 5 times") && text.contains("boom at last"),
        "{text}"
    );
    assert_eq!(run_state(&store, "waits", "r1").await, DagRunState::Failed);
});

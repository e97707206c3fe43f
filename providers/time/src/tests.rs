//! Behaviour tests through the SDK's testkit: the real clock, generous bounds (the machine may
//! be busy), one event per run, and kwargs errors that name their field.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use chrono::{TimeZone, Utc};
use serde_json::{json, Value};
use triggerer_sdk::testkit::TestRun;
use triggerer_sdk::{is_sensitive_key, Event, Provider, TriggerKind};

use crate::{
    format_moment, moment_kwargs, DateTimeProvider, TimeDeltaProvider, DATE_TIME_CLASSPATHS,
    TIME_DELTA_CLASSPATHS,
};

/// How long to wait for an event that must come.
const WAIT: Duration = Duration::from_secs(10);
/// How long nothing must arrive to conclude that no further event is coming.
const QUIET: Duration = Duration::from_millis(700);

fn start(provider: &dyn Provider, kwargs: Value) -> TestRun {
    provider.validate(&kwargs).expect("valid kwargs");
    let trigger = provider.build(&kwargs).expect("build");
    TestRun::start(trigger, HashMap::new(), 4)
}

fn error(provider: &dyn Provider, kwargs: Value) -> (String, String) {
    let e = provider
        .validate(&kwargs)
        .expect_err("kwargs must be refused");
    let built = provider.build(&kwargs).err().expect("build refuses too");
    assert_eq!(built, e, "validation and build agree");
    (e.field.clone(), e.to_string())
}

/// Commits the one event, checks that no second one follows and that the trigger waits to be
/// removed rather than ending by itself, then stops it.
async fn exactly_one(mut run: TestRun, event: Event) {
    assert!(
        run.commit_next(QUIET).await.is_none(),
        "a one-shot trigger fires once"
    );
    assert!(
        !run.is_finished(),
        "a fired trigger waits for its removal (its cancel)"
    );
    assert_eq!(run.committed, vec![event]);
    run.stop_within(Duration::from_secs(5))
        .await
        .expect("stops when cancelled")
        .expect("and returns Ok");
}

#[test]
fn classpaths_and_kind() {
    assert_eq!(DateTimeProvider.classpaths(), DATE_TIME_CLASSPATHS);
    assert_eq!(DateTimeProvider.classpaths()[0], "time.DateTimeTrigger");
    assert!(DateTimeProvider
        .classpaths()
        .contains(&"airflow.providers.standard.triggers.temporal.DateTimeTrigger"));
    assert_eq!(TimeDeltaProvider.classpaths(), TIME_DELTA_CLASSPATHS);
    assert_eq!(TimeDeltaProvider.classpaths()[0], "time.TimeDeltaTrigger");
    assert!(TimeDeltaProvider
        .classpaths()
        .contains(&"airflow.triggers.temporal.TimeDeltaTrigger"));
    assert_eq!(DateTimeProvider.kind(), TriggerKind::OneShot);
    assert_eq!(TimeDeltaProvider.kind(), TriggerKind::OneShot);
    assert!(!is_sensitive_key("moment") && !is_sensitive_key("delta"));
}

#[tokio::test]
async fn a_past_moment_fires_at_once() {
    let started = Instant::now();
    let mut run = start(
        &DateTimeProvider,
        json!({ "moment": "2020-01-01T02:00:00+02:00" }),
    );
    let event = run.commit_next(WAIT).await.expect("fires");
    assert!(started.elapsed() < Duration::from_secs(2), "at once");
    assert_eq!(event.payload, json!({ "moment": "2020-01-01T00:00:00Z" }));
    assert_eq!(event.dedup_key, "moment:2020-01-01T00:00:00Z");
    exactly_one(run, event).await;
}

#[tokio::test]
async fn a_moment_ahead_fires_when_reached() {
    let moment = Utc::now() + Duration::from_millis(300);
    let started = Instant::now();
    let mut run = start(&DateTimeProvider, json!({ "moment": moment.to_rfc3339() }));
    let event = run.commit_next(WAIT).await.expect("fires");
    assert!(Utc::now() >= moment, "not before the moment");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_secs(5),
        "{took:?}"
    );
    let shown = format_moment(moment);
    assert_eq!(event.payload, json!({ "moment": shown }));
    assert_eq!(event.dedup_key, format!("moment:{shown}"));
    exactly_one(run, event).await;
}

#[tokio::test]
async fn a_delta_fires_that_long_after_the_start() {
    let before = Utc::now();
    let started = Instant::now();
    let mut run = start(&TimeDeltaProvider, json!({ "delta": "300ms" }));
    let event = run.commit_next(WAIT).await.expect("fires");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_secs(5),
        "{took:?}"
    );
    let moment = event.payload["moment"]
        .as_str()
        .and_then(|m| chrono::DateTime::parse_from_rfc3339(m).ok())
        .expect("payload.moment is RFC 3339");
    assert!(moment >= before + Duration::from_millis(300), "{moment}");
    assert_eq!(
        event.dedup_key,
        format!("moment:{}", event.payload["moment"].as_str().unwrap_or(""))
    );
    exactly_one(run, event).await;
}

#[tokio::test]
async fn a_cancel_ends_the_wait_promptly_without_an_event() {
    for (provider, kwargs) in [
        (
            &DateTimeProvider as &dyn Provider,
            json!({ "moment": "2999-01-01T00:00:00Z" }),
        ),
        (&TimeDeltaProvider, json!({ "delta": "1h" })),
    ] {
        let mut run = start(provider, kwargs);
        assert!(run.commit_next(Duration::from_millis(200)).await.is_none());
        let started = Instant::now();
        run.stop_within(Duration::from_secs(5))
            .await
            .expect("stops when cancelled")
            .expect("and returns Ok");
        assert!(started.elapsed() < Duration::from_secs(1));
    }
}

#[test]
fn kwargs_errors_name_the_field() {
    let (field, text) = error(&DateTimeProvider, json!({ "moment": "next tuesday" }));
    assert_eq!(field, "moment");
    assert!(
        text.starts_with("kwargs.moment: `next tuesday` is not an RFC 3339 date and time"),
        "{text}"
    );
    let (field, text) = error(
        &DateTimeProvider,
        json!({ "moment": "2025-06-01T12:00:00" }),
    );
    assert_eq!(field, "moment");
    assert!(text.contains("no UTC offset"), "{text}");
    let (field, text) = error(&DateTimeProvider, json!({ "moment": 1_700_000_000 }));
    assert_eq!(field, "moment");
    assert!(
        text.contains("expected an RFC 3339 date and time, got 1700000000"),
        "{text}"
    );
    let (field, text) = error(&DateTimeProvider, json!({}));
    assert_eq!(field, "moment");
    assert!(text.contains("required: an RFC 3339"), "{text}");
    let (field, text) = error(
        &DateTimeProvider,
        json!({ "moment": "2025-06-01T12:00:00Z", "end_from_trigger": true }),
    );
    assert_eq!(field, "end_from_trigger");
    assert!(
        text.contains("unknown kwarg; expected one of: moment"),
        "{text}"
    );

    let (field, text) = error(&TimeDeltaProvider, json!({ "delta": "a while" }));
    assert_eq!(field, "delta");
    assert!(
        text.starts_with("kwargs.delta: `a while` is not a duration"),
        "{text}"
    );
    let (field, text) = error(&TimeDeltaProvider, json!({ "delta": 30 }));
    assert_eq!(field, "delta");
    assert!(text.contains("expected a duration, got 30"), "{text}");
    let (field, text) = error(&TimeDeltaProvider, json!({ "delta": "30s", "moment": "x" }));
    assert_eq!(field, "moment");
    assert!(
        text.contains("unknown kwarg; expected one of: delta"),
        "{text}"
    );
    let (field, _) = error(&TimeDeltaProvider, json!({ "delta": "500y" }));
    assert_eq!(field, "delta");
    let (field, text) = error(&TimeDeltaProvider, json!("30s"));
    assert_eq!(field, "");
    assert!(text.contains("a table with `delta`"), "{text}");
}

#[test]
fn a_delta_stands_for_the_moment_it_ends() {
    let now = Utc
        .with_ymd_and_hms(2025, 6, 1, 12, 0, 0)
        .single()
        .expect("moment");
    assert_eq!(
        moment_kwargs(&json!({ "delta": "1h30m" }), now),
        Ok(json!({ "moment": "2025-06-01T13:30:00Z" }))
    );
    let kwargs = moment_kwargs(&json!({ "delta": "250ms" }), now).expect("kwargs");
    assert_eq!(kwargs, json!({ "moment": "2025-06-01T12:00:00.250Z" }));
    DateTimeProvider
        .validate(&kwargs)
        .expect("a valid DateTimeTrigger");
    let e = moment_kwargs(&json!({ "delta": "soon" }), now).expect_err("not a duration");
    assert_eq!(e.field, "delta");
}

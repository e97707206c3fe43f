//! The vocabulary of tasks (DESIGN §10): a task's definition ([`TaskSpec`] with its
//! [`Operator`]), Airflow's task-instance states and trigger rules, and the retry delay. Pure:
//! no I/O and no SQL beyond the names. [`graph`] decides, from the states of a run's task
//! instances, which tasks may run next and how the run ends.
//!
//! A definition is validated by [`crate::definitions`], stored as JSON in `dag_task` by
//! [`crate::store`], and run by [`crate::executor`]; this module must not do any of those.

pub mod graph;

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::dag_run::UnknownName;

/// Airflow's `retry_delay` default: five minutes.
pub const DEFAULT_RETRY_DELAY: Duration = Duration::from_secs(300);
/// The longest a retry waits, however often exponential backoff doubled it (Airflow's
/// `max_retry_delay` has no default; a day keeps a doubling delay from overflowing).
pub const MAX_RETRY_DELAY: Duration = Duration::from_secs(24 * 3600);
/// An HTTP operator's default `timeout`.
pub const DEFAULT_HTTP_TIMEOUT: Duration = Duration::from_secs(60);

/// One `[[dag.task]]`, validated.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskSpec {
    pub task_id: String,
    pub operator: Operator,
    /// Upstream task ids, in the order written.
    #[serde(default)]
    pub depends_on: Vec<String>,
    #[serde(default)]
    pub trigger_rule: TriggerRule,
    #[serde(default)]
    pub retries: u32,
    #[serde(with = "millis", default = "default_retry_delay")]
    pub retry_delay: Duration,
    #[serde(default)]
    pub retry_exponential_backoff: bool,
    #[serde(with = "opt_millis", default)]
    pub execution_timeout: Option<Duration>,
    /// How long a deferral may wait for its trigger before the task fails with `trigger
    /// timeout` (a `wait`'s, an `airflow` run's, a command's own deferral without a timeout).
    #[serde(with = "opt_millis", default)]
    pub timeout: Option<Duration>,
    /// What a command or shell task runs when it resumes after a deferral (default: itself
    /// again, with `TRIGGERER_TRIGGER_EVENT` set).
    #[serde(default)]
    pub resume: Option<Vec<String>>,
}

fn default_retry_delay() -> Duration {
    DEFAULT_RETRY_DELAY
}

impl TaskSpec {
    /// How long to wait before the try after `try_number` failed: `retry_delay`, doubled for
    /// every earlier try with `retry_exponential_backoff`, never above [`MAX_RETRY_DELAY`].
    pub fn retry_delay_after(&self, try_number: u32) -> Duration {
        if !self.retry_exponential_backoff {
            return self.retry_delay.min(MAX_RETRY_DELAY);
        }
        let doublings = try_number.saturating_sub(1).min(32);
        self.retry_delay
            .checked_mul(1u32 << doublings.min(31))
            .unwrap_or(MAX_RETRY_DELAY)
            .min(MAX_RETRY_DELAY)
    }
}

/// What a task does: exactly one operator per task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Operator {
    /// An argv, run without a shell.
    Command { argv: Vec<String> },
    /// A script run by `/bin/sh -c`.
    Shell { script: String },
    /// One HTTP request.
    Http(HttpCall),
    /// A deferrable sensor: waits, holding no executor slot, until the trigger fires.
    Wait(TriggerSpec),
    /// A DAG run in an Apache Airflow 3, waited for without holding a slot.
    Airflow(AirflowCall),
}

impl Operator {
    /// The operator's name as `tasks list` shows it and `task_instance.operator` stores it.
    pub fn name(&self) -> OperatorName {
        match self {
            Operator::Command { .. } => OperatorName::Command,
            Operator::Shell { .. } => OperatorName::Shell,
            Operator::Http(_) => OperatorName::Http,
            Operator::Wait(_) => OperatorName::Wait,
            Operator::Airflow(_) => OperatorName::Airflow,
        }
    }
}

/// The operators, by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OperatorName {
    Command,
    Shell,
    Http,
    Wait,
    Airflow,
}

impl OperatorName {
    pub const fn as_str(self) -> &'static str {
        match self {
            OperatorName::Command => "command",
            OperatorName::Shell => "shell",
            OperatorName::Http => "http",
            OperatorName::Wait => "wait",
            OperatorName::Airflow => "airflow",
        }
    }
}

/// A trigger a task defers on: a provider's canonical classpath and its kwargs, `{ env =
/// "NAME" }` references kept (the triggerer resolves them).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TriggerSpec {
    pub classpath: String,
    pub kwargs: Value,
}

/// An `airflow = { … }` operator (DESIGN §11).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AirflowCall {
    /// The Airflow API server, e.g. `http://airflow:8080`.
    pub base_url: String,
    pub dag_id: String,
    /// Strings or `{ env = "NAME" }`.
    pub username: Value,
    pub password: Value,
    /// Sent as the Airflow run's conf, with the consumed asset events added under
    /// `triggering_asset_events`.
    #[serde(default)]
    pub conf: Value,
    /// How often the deferred trigger asks Airflow for the run's state.
    #[serde(with = "millis", default = "default_poll_interval")]
    pub poll_interval: Duration,
}

fn default_poll_interval() -> Duration {
    Duration::from_secs(5)
}

/// An `http = { … }` operator.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HttpCall {
    /// Upper case (`GET`, `POST`, …).
    pub method: String,
    pub url: String,
    /// Header values are strings or `{ env = "NAME" }`, resolved by the executor when it calls.
    #[serde(default)]
    pub headers: BTreeMap<String, Value>,
    #[serde(default)]
    pub body: HttpBody,
    /// Statuses that count as success; empty: any 2xx.
    #[serde(default)]
    pub expect_status: Vec<u16>,
    #[serde(with = "millis", default = "default_http_timeout")]
    pub timeout: Duration,
}

fn default_http_timeout() -> Duration {
    DEFAULT_HTTP_TIMEOUT
}

impl HttpCall {
    /// Whether `status` counts as success.
    pub fn accepts(&self, status: u16) -> bool {
        if self.expect_status.is_empty() {
            (200..300).contains(&status)
        } else {
            self.expect_status.contains(&status)
        }
    }
}

/// What an HTTP operator sends.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "value", rename_all = "snake_case")]
pub enum HttpBody {
    #[default]
    Empty,
    /// `json = …`: sent as `application/json`.
    Json(Value),
    /// `body = "…"`: sent as written.
    Text(String),
}

/// When a task runs, given its upstream tasks' states (Airflow's trigger rules).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TriggerRule {
    #[default]
    AllSuccess,
    AllDone,
    OneSuccess,
    OneFailed,
    NoneFailed,
}

impl TriggerRule {
    pub const ALL: [TriggerRule; 5] = [
        TriggerRule::AllSuccess,
        TriggerRule::AllDone,
        TriggerRule::OneSuccess,
        TriggerRule::OneFailed,
        TriggerRule::NoneFailed,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            TriggerRule::AllSuccess => "all_success",
            TriggerRule::AllDone => "all_done",
            TriggerRule::OneSuccess => "one_success",
            TriggerRule::OneFailed => "one_failed",
            TriggerRule::NoneFailed => "none_failed",
        }
    }
}

/// A task instance's state (Airflow's `TaskInstanceState`); a task instance with no state yet
/// (Airflow's `None`) is `Option::None`, shown as `none`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskInstanceState {
    Scheduled,
    Queued,
    Running,
    Deferred,
    UpForRetry,
    Success,
    Failed,
    UpstreamFailed,
    Skipped,
}

impl TaskInstanceState {
    pub const ALL: [TaskInstanceState; 9] = [
        TaskInstanceState::Scheduled,
        TaskInstanceState::Queued,
        TaskInstanceState::Running,
        TaskInstanceState::Deferred,
        TaskInstanceState::UpForRetry,
        TaskInstanceState::Success,
        TaskInstanceState::Failed,
        TaskInstanceState::UpstreamFailed,
        TaskInstanceState::Skipped,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            TaskInstanceState::Scheduled => "scheduled",
            TaskInstanceState::Queued => "queued",
            TaskInstanceState::Running => "running",
            TaskInstanceState::Deferred => "deferred",
            TaskInstanceState::UpForRetry => "up_for_retry",
            TaskInstanceState::Success => "success",
            TaskInstanceState::Failed => "failed",
            TaskInstanceState::UpstreamFailed => "upstream_failed",
            TaskInstanceState::Skipped => "skipped",
        }
    }

    /// Ended for good (until cleared): Airflow's `finished` states.
    pub const fn is_finished(self) -> bool {
        matches!(
            self,
            TaskInstanceState::Success
                | TaskInstanceState::Failed
                | TaskInstanceState::UpstreamFailed
                | TaskInstanceState::Skipped
        )
    }

    /// Failed itself or because an upstream did: what `all_success` and `none_failed` refuse.
    pub const fn is_failure(self) -> bool {
        matches!(
            self,
            TaskInstanceState::Failed | TaskInstanceState::UpstreamFailed
        )
    }

    /// The state's text, `none` for no state.
    pub fn name(state: Option<Self>) -> &'static str {
        state.map_or("none", Self::as_str)
    }
}

macro_rules! text_enum {
    ($ty:ident, $what:literal) => {
        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $ty {
            type Err = UnknownName;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                $ty::ALL
                    .into_iter()
                    .find(|v| v.as_str() == s)
                    .ok_or_else(|| UnknownName::new($what, s))
            }
        }
    };
}

text_enum!(TaskInstanceState, "task_instance state");
text_enum!(TriggerRule, "trigger rule");

impl OperatorName {
    pub const ALL: [OperatorName; 5] = [
        OperatorName::Command,
        OperatorName::Shell,
        OperatorName::Http,
        OperatorName::Wait,
        OperatorName::Airflow,
    ];
}
text_enum!(OperatorName, "operator");

/// Parses a duration as definitions write it: `30s`, `5m`, `1h`, `2d`, `1h30m`, `500ms`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err("must be a duration such as `30s`, `5m`, `1h` or `2d`".into());
    }
    humantime::parse_duration(trimmed).map_err(|e| {
        format!("`{text}` is not a duration ({e}); write one such as `30s`, `5m`, `1h` or `2d`")
    })
}

/// Durations as whole milliseconds in the stored JSON.
mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_millis)
    }
}

mod opt_millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_some(&u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        Option::<u64>::deserialize(d).map(|m| m.map(Duration::from_millis))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(delay: u64, exponential: bool) -> TaskSpec {
        TaskSpec {
            task_id: "t".into(),
            operator: Operator::Shell {
                script: "true".into(),
            },
            depends_on: vec![],
            trigger_rule: TriggerRule::AllSuccess,
            retries: 3,
            retry_delay: Duration::from_secs(delay),
            retry_exponential_backoff: exponential,
            execution_timeout: None,
            timeout: None,
            resume: None,
        }
    }

    #[test]
    fn retry_delay_doubles_only_with_backoff_and_is_capped() {
        assert_eq!(
            spec(30, false).retry_delay_after(3),
            Duration::from_secs(30)
        );
        assert_eq!(spec(30, true).retry_delay_after(1), Duration::from_secs(30));
        assert_eq!(
            spec(30, true).retry_delay_after(3),
            Duration::from_secs(120)
        );
        assert_eq!(spec(30, true).retry_delay_after(400), MAX_RETRY_DELAY);
    }

    #[test]
    fn states_and_rules_round_trip_with_airflow_names() {
        for state in TaskInstanceState::ALL {
            assert_eq!(state.as_str().parse::<TaskInstanceState>(), Ok(state));
            assert_eq!(serde_json::to_value(state).unwrap(), state.as_str());
        }
        assert_eq!(TaskInstanceState::UpForRetry.as_str(), "up_for_retry");
        assert_eq!(TaskInstanceState::name(None), "none");
        for rule in TriggerRule::ALL {
            assert_eq!(rule.as_str().parse::<TriggerRule>(), Ok(rule));
        }
        assert!("all_failed".parse::<TriggerRule>().is_err());
    }

    #[test]
    fn a_spec_survives_its_stored_json() {
        let mut s = spec(30, true);
        s.execution_timeout = Some(Duration::from_millis(1500));
        s.operator = Operator::Http(HttpCall {
            method: "POST".into(),
            url: "http://localhost:1/x".into(),
            headers: [(
                "Authorization".to_string(),
                serde_json::json!({"env": "TOKEN"}),
            )]
            .into(),
            body: HttpBody::Json(serde_json::json!({"a": 1})),
            expect_status: vec![201],
            timeout: Duration::from_secs(5),
        });
        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(serde_json::from_value::<TaskSpec>(json).unwrap(), s);
    }

    #[test]
    fn durations_read_as_written() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("2d"), Ok(Duration::from_secs(2 * 86400)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert!(parse_duration("soon").unwrap_err().contains("`soon`"));
        assert!(parse_duration("").is_err());
    }
}

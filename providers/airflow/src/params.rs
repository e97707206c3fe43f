//! The kwargs of `airflow.DagRunStateTrigger`, parsed without I/O (validation runs at
//! `dags sync`, with environment references still `${env:NAME}` placeholders). It owns their
//! rules and must never show the password: not in an error, not in `Debug`.

use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;
use triggerer_sdk::de::{non_blank, Trimmed};
use triggerer_sdk::KwargsError;

use crate::client::parse_base_url;

/// `poll_interval` when not given.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(5);
/// The shortest `poll_interval`: each poll is a request to Airflow's API server.
pub const MIN_POLL_INTERVAL: Duration = Duration::from_secs(1);

/// Starts a placeholder that stands for an environment reference during validation.
const PLACEHOLDER: &str = "${env:";

pub(crate) const HINTS: &[(&str, &str)] = &[
    (
        "base_url",
        "the URL of Airflow's API server, e.g. http://airflow:8080",
    ),
    ("dag_id", "the id of the DAG in Airflow"),
    ("dag_run_id", "the id of the run in Airflow"),
    ("username", "the Airflow user to log in as"),
    (
        "password",
        "the user's password, best as { env = \"NAME\" }",
    ),
    ("poll_interval", "a duration such as `5s` or `1m`"),
];

/// Kwargs of one `airflow.DagRunStateTrigger`. `Debug` masks the password.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a table with `base_url`, `dag_id`, `dag_run_id`, `username` and `password` \
                 (and optionally `poll_interval`)"
)]
pub struct DagRunStateParams {
    /// Airflow's API server (`http://airflow:8080`, or with the path prefix it is served under).
    #[serde(deserialize_with = "trimmed")]
    pub base_url: String,
    #[serde(deserialize_with = "trimmed")]
    pub dag_id: String,
    #[serde(deserialize_with = "trimmed")]
    pub dag_run_id: String,
    #[serde(deserialize_with = "trimmed")]
    pub username: String,
    /// Kept as written (a password may start or end with a space).
    #[serde(deserialize_with = "non_blank")]
    pub password: String,
    /// How often to ask for the run's state; shorter than [`MIN_POLL_INTERVAL`] counts as it.
    #[serde(default = "default_poll_interval", deserialize_with = "poll_interval")]
    pub poll_interval: Duration,
}

impl fmt::Debug for DagRunStateParams {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DagRunStateParams")
            .field("base_url", &triggerer_sdk::redact_uri(&self.base_url))
            .field("dag_id", &self.dag_id)
            .field("dag_run_id", &self.dag_run_id)
            .field("username", &self.username)
            .field("password", &"***")
            .field("poll_interval", &self.poll_interval)
            .finish()
    }
}

impl DagRunStateParams {
    /// The rules serde does not express. No I/O. A `base_url` holding a placeholder is checked
    /// when the triggerer builds the trigger, with the variable's value.
    pub(crate) fn check(&self) -> Result<(), KwargsError> {
        if !self.base_url.contains(PLACEHOLDER) {
            if let Err(e) = parse_base_url(&self.base_url) {
                let message = e.to_string();
                let message = message.strip_prefix("base_url ").unwrap_or(&message);
                return Err(KwargsError::new("base_url", message));
            }
        }
        Ok(())
    }
}

fn trimmed<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    Trimmed::deserialize(d).map(|t| t.0)
}

fn default_poll_interval() -> Duration {
    DEFAULT_POLL_INTERVAL
}

/// Shorter intervals count as [`MIN_POLL_INTERVAL`] (as the file provider floors its
/// `poke_interval`): the core writes this kwarg from the `airflow` operator's own
/// `poll_interval`, which a sync accepted, so refusing one here would only fail the task later.
fn at_least_min(interval: Duration) -> Duration {
    interval.max(MIN_POLL_INTERVAL)
}

/// A duration string (`5s`, `1m`) or a number of seconds (as Airflow's `poll_interval`);
/// `null` is the default.
fn poll_interval<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    struct PollVisitor;

    impl<'de> Visitor<'de> for PollVisitor {
        type Value = Duration;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a duration such as `5s`, or a number of seconds")
        }

        fn visit_unit<E: de::Error>(self) -> Result<Duration, E> {
            Ok(DEFAULT_POLL_INTERVAL)
        }

        fn visit_none<E: de::Error>(self) -> Result<Duration, E> {
            Ok(DEFAULT_POLL_INTERVAL)
        }

        fn visit_str<E: de::Error>(self, v: &str) -> Result<Duration, E> {
            humantime::parse_duration(v.trim())
                .map(at_least_min)
                .map_err(|e| {
                    E::custom(format!(
                        "`{}` is not a duration ({e}); write one such as `5s` or `1m`",
                        v.trim()
                    ))
                })
        }

        fn visit_f64<E: de::Error>(self, secs: f64) -> Result<Duration, E> {
            Duration::try_from_secs_f64(secs)
                .map(at_least_min)
                .map_err(|_| E::custom(format!("{secs} is not a number of seconds >= 0")))
        }

        fn visit_u64<E: de::Error>(self, secs: u64) -> Result<Duration, E> {
            Ok(at_least_min(Duration::from_secs(secs)))
        }

        fn visit_i64<E: de::Error>(self, secs: i64) -> Result<Duration, E> {
            match u64::try_from(secs) {
                Ok(secs) => self.visit_u64(secs),
                Err(_) => Err(E::custom(format!("{secs} is not a number of seconds >= 0"))),
            }
        }
    }

    d.deserialize_any(PollVisitor)
}

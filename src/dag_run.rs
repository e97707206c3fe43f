//! The vocabulary of Airflow's `dag_run`: its states and run types, as types rather than
//! strings, with the text the database, the CLI and JSON use for each (Airflow's own), and
//! the run ids the scheduler gives the runs it makes. Pure: no I/O, no SQL beyond the names.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// A run's state (Airflow's `DagRunState`).
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    Serialize,
    Deserialize,
    clap::ValueEnum,
    utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum DagRunState {
    Queued,
    Running,
    Success,
    Failed,
}

impl DagRunState {
    pub const fn as_str(self) -> &'static str {
        match self {
            DagRunState::Queued => "queued",
            DagRunState::Running => "running",
            DagRunState::Success => "success",
            DagRunState::Failed => "failed",
        }
    }

    /// Success or failed: the run holds no place under `max_active_runs` any more.
    pub const fn is_finished(self) -> bool {
        matches!(self, DagRunState::Success | DagRunState::Failed)
    }
}

/// How a run came to be (Airflow's `DagRunType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DagRunType {
    Scheduled,
    Manual,
    AssetTriggered,
    Backfill,
}

impl DagRunType {
    pub const fn as_str(self) -> &'static str {
        match self {
            DagRunType::Scheduled => "scheduled",
            DagRunType::Manual => "manual",
            DagRunType::AssetTriggered => "asset_triggered",
            DagRunType::Backfill => "backfill",
        }
    }

    /// Airflow's run id for a run of this type due at `run_after`: `scheduled__<run_after>`.
    pub fn run_id(self, run_after: DateTime<Utc>) -> String {
        format!("{}__{}", self.as_str(), crate::time::isoformat(run_after))
    }

    /// The run-id prefix of this type (`scheduled__`).
    pub fn prefix(self) -> String {
        format!("{}__", self.as_str())
    }
}

/// A state or type read back from the database that this version does not know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {what} `{value}`")]
pub struct UnknownName {
    what: &'static str,
    value: String,
}

impl UnknownName {
    /// `what` names the kind of value: `dag_run state`, `task_instance state`.
    pub fn new(what: &'static str, value: &str) -> Self {
        Self {
            what,
            value: value.to_string(),
        }
    }
}

macro_rules! text_enum {
    ($ty:ident, $what:literal, [$($variant:ident),+]) => {
        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $ty {
            type Err = UnknownName;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                [$($ty::$variant),+]
                    .into_iter()
                    .find(|v| v.as_str() == s)
                    .ok_or_else(|| UnknownName::new($what, s))
            }
        }
    };
}

text_enum!(
    DagRunState,
    "dag_run state",
    [Queued, Running, Success, Failed]
);
text_enum!(
    DagRunType,
    "dag_run run type",
    [Scheduled, Manual, AssetTriggered, Backfill]
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_match_airflow() {
        for state in [
            DagRunState::Queued,
            DagRunState::Running,
            DagRunState::Success,
            DagRunState::Failed,
        ] {
            assert_eq!(state.as_str().parse::<DagRunState>(), Ok(state));
            assert_eq!(
                serde_json::to_value(state).unwrap(),
                serde_json::json!(state.as_str())
            );
        }
        assert_eq!(DagRunType::AssetTriggered.as_str(), "asset_triggered");
        assert_eq!(
            serde_json::to_value(DagRunType::AssetTriggered).unwrap(),
            serde_json::json!("asset_triggered")
        );
        assert!("paused".parse::<DagRunState>().is_err());
        let at = crate::time::parse_rfc3339("2025-01-01T00:00:00Z").unwrap();
        assert_eq!(
            DagRunType::Scheduled.run_id(at),
            "scheduled__2025-01-01T00:00:00+00:00"
        );
        assert_eq!(
            DagRunType::Backfill.run_id(at),
            "backfill__2025-01-01T00:00:00+00:00"
        );
    }
}

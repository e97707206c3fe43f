//! The id of a `trigger` row: what the core, the writer and every provider call one trigger.
//! A type rather than an `i64`, so that it cannot be mixed up with a job, run or event id
//! where it crosses from the core to a provider and back.

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TriggerId(i64);

impl TriggerId {
    pub const fn new(id: i64) -> Self {
        Self(id)
    }

    /// The row's id, for SQL and wire formats.
    pub const fn get(self) -> i64 {
        self.0
    }
}

impl fmt::Display for TriggerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

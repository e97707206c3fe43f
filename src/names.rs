//! What a name may be. Asset names, DAG ids, watcher names, run ids and dedup keys are shown in
//! terminals and logs and compared as keys: they must be non-empty and hold no control
//! characters (a NUL that PostgreSQL refuses, a newline that forges a log line, an ANSI escape
//! that rewrites the screen). Run ids made by the scheduler carry a reserved prefix that manual
//! runs may not take. Also the one escape for printing text that did not pass through here,
//! and the check for NUL characters in JSON, which PostgreSQL cannot store.
//! This module only judges and escapes; callers say where the name came from.

use std::fmt;

use crate::dag_run::DagRunType;

/// The run types whose run-id prefix (`scheduled__`) only the scheduler may give.
pub const SCHEDULER_RUN_TYPES: [DagRunType; 3] = [
    DagRunType::Scheduled,
    DagRunType::Backfill,
    DagRunType::AssetTriggered,
];

/// Why a name was refused; the caller adds which field it was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NameError {
    Empty,
    ControlCharacter { at: usize, character: char },
    ReservedPrefix(String),
}

impl fmt::Display for NameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NameError::Empty => write!(f, "must not be empty"),
            NameError::ControlCharacter { at, character } => write!(
                f,
                "must not contain control characters (found {} at character {})",
                character.escape_default(),
                at + 1
            ),
            NameError::ReservedPrefix(prefix) => write!(
                f,
                "must not start with `{prefix}`: the scheduler gives that prefix to the runs it \
                 creates"
            ),
        }
    }
}

impl std::error::Error for NameError {}

/// Checks a name: not empty (after trimming), no control character anywhere.
pub fn check(name: &str) -> Result<(), NameError> {
    if name.trim().is_empty() {
        return Err(NameError::Empty);
    }
    match name.chars().enumerate().find(|(_, c)| c.is_control()) {
        Some((at, character)) => Err(NameError::ControlCharacter { at, character }),
        None => Ok(()),
    }
}

/// Checks the run id of a run asked for by hand: a name, without a scheduler prefix.
pub fn check_manual_run_id(run_id: &str) -> Result<(), NameError> {
    check(run_id)?;
    match SCHEDULER_RUN_TYPES
        .iter()
        .map(|t| t.prefix())
        .find(|prefix| run_id.starts_with(prefix.as_str()))
    {
        Some(prefix) => Err(NameError::ReservedPrefix(prefix)),
        None => Ok(()),
    }
}

/// `text` with every control character written as an escape (`\n`, `\u{1b}`), for a terminal:
/// what the database holds may predate these checks or come from a source's payload.
pub fn escape_control(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.chars().any(char::is_control) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

/// The path of the first string or key in a JSON value holding a NUL, which PostgreSQL cannot
/// store: the SDK's check, shared with the providers.
pub use triggerer_sdk::nul_in_json;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_refuse_empty_and_control_characters() {
        assert_eq!(check("orders"), Ok(()));
        assert_eq!(check("ünïcode names ok"), Ok(()));
        assert_eq!(check(""), Err(NameError::Empty));
        assert_eq!(check("  "), Err(NameError::Empty));
        for bad in [
            "a\0b",
            "a\nb",
            "a\tb",
            "a\u{1b}[31mred",
            "\u{7f}",
            "a\u{85}",
        ] {
            assert!(
                matches!(check(bad), Err(NameError::ControlCharacter { .. })),
                "{bad:?}"
            );
        }
        let err = check("ab\u{1b}").unwrap_err().to_string();
        assert!(err.contains("\\u{1b} at character 3"), "{err}");
    }

    #[test]
    fn manual_run_ids_may_not_take_a_scheduler_prefix() {
        assert_eq!(check_manual_run_id("manual__2024"), Ok(()));
        assert_eq!(check_manual_run_id("my-run"), Ok(()));
        for prefix in ["scheduled__", "backfill__", "asset_triggered__"] {
            let id = format!("{prefix}2024-01-01T00:00:00+00:00");
            assert_eq!(
                check_manual_run_id(&id),
                Err(NameError::ReservedPrefix(prefix.into()))
            );
        }
        assert_eq!(check_manual_run_id(""), Err(NameError::Empty));
    }

    #[test]
    fn nul_characters_in_json_are_found_with_their_path() {
        use serde_json::json;
        assert_eq!(
            nul_in_json(&json!({"a": ["x", {"b": "y\u{0}"}]})),
            Some("a.1.b".into())
        );
        assert_eq!(nul_in_json(&json!({"k\u{0}": 1})), Some("k\\u{0}".into()));
        assert_eq!(nul_in_json(&json!({"a": "fine", "n": 1})), None);
    }

    #[test]
    fn escaping_makes_control_characters_visible() {
        assert_eq!(escape_control("plain"), "plain");
        assert_eq!(escape_control("a\nb\u{1b}[2J"), "a\\nb\\u{1b}[2J");
        assert_eq!(escape_control("tab\there"), "tab\\there");
    }
}

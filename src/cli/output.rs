//! What the command line prints: tables (control characters escaped, long cells cut on a
//! terminal) or one `--json` array, and the message a failure exits with.

use std::io::IsTerminal;

use anyhow::Result;
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;

use crate::names;
use crate::sync::SyncError;
use crate::time::isoformat;

/// Prints `rows` as one JSON array, or as a table of `columns`.
pub(crate) fn print_rows<T: Serialize>(json: bool, rows: &[T], columns: &[&str]) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(rows)?);
        return Ok(());
    }
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|row| {
            let value = serde_json::to_value(row).unwrap_or(Value::Null);
            columns
                .iter()
                .map(|c| cell(value.get(*c).unwrap_or(&Value::Null)))
                .collect()
        })
        .collect();
    let mut widths: Vec<usize> = columns.iter().map(|c| c.len()).collect();
    let max_width = if std::io::stdout().is_terminal() {
        60
    } else {
        usize::MAX
    };
    for row in &cells {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count()).min(max_width);
        }
    }
    let line = |items: &[String]| {
        items
            .iter()
            .zip(&widths)
            .map(|(s, w)| {
                let s: String = s.chars().take(*w).collect();
                format!("{s:<w$}")
            })
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    };
    println!(
        "{}",
        line(&columns.iter().map(|c| c.to_string()).collect::<Vec<_>>())
    );
    for row in &cells {
        println!("{}", line(row));
    }
    Ok(())
}

fn cell(value: &Value) -> String {
    match value {
        Value::Null => "-".into(),
        Value::String(s) => match s.parse::<DateTime<Utc>>() {
            Ok(t) => isoformat(t),
            // A name from before names were checked, a payload, an error text: never raw.
            Err(_) => names::escape_control(s).into_owned(),
        },
        Value::Array(items) => items.iter().map(cell).collect::<Vec<_>>().join(","),
        other => other.to_string(),
    }
}

/// Maps a failure to what the process prints as it exits: definition errors as their
/// `file:line: message` lines; anything else as `error: ` and its chain of causes, each cause
/// once (our errors already quote their source's text, so `{:#}` printed it up to three times).
pub fn exit_message(error: &anyhow::Error) -> String {
    if let Some(SyncError::Invalid(errors)) = error.downcast_ref::<SyncError>() {
        return errors.to_string();
    }
    let mut message = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if !message.contains(&text) {
            if !message.is_empty() {
                message.push_str(": ");
            }
            message.push_str(&text);
        }
    }
    format!("error: {}", names::escape_control(&message))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_cells_escape_control_characters() {
        assert_eq!(
            cell(&serde_json::json!("a\u{1b}[2Jb\nc")),
            "a\\u{1b}[2Jb\\nc"
        );
        assert_eq!(cell(&serde_json::json!(["x\ty", "z"])), "x\\ty,z");
        assert_eq!(cell(&serde_json::json!("plain")), "plain");
    }

    #[test]
    fn exit_messages_print_each_cause_once() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "Connection refused");
        let error = anyhow::Error::new(io)
            .context("error communicating with database: Connection refused")
            .context("cannot open database postgres://h/db");
        assert_eq!(
            exit_message(&error),
            "error: cannot open database postgres://h/db: error communicating with database: Connection refused"
        );
    }
}

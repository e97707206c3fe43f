//! The SQLite and PostgreSQL migrations must define the same tables with the same columns.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Table name → column names, read from every `CREATE TABLE` and `ALTER TABLE … ADD COLUMN`.
fn schema(dir: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .expect("migrations dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "sql"))
        .collect();
    files.sort();
    let mut tables: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in files {
        let text = std::fs::read_to_string(&file).expect("read migration");
        let mut current: Option<String> = None;
        for line in text.lines() {
            let line = line.split("--").next().unwrap_or("").trim();
            let lower = line.to_lowercase();
            if let Some(rest) = lower.strip_prefix("create table ") {
                let name = rest
                    .split_whitespace()
                    .next()
                    .unwrap_or("")
                    .trim_end_matches('(');
                current = Some(name.to_string());
                tables.entry(name.to_string()).or_default();
            } else if lower.starts_with(");") {
                current = None;
            } else if let Some(table) = &current {
                let first = lower.split_whitespace().next().unwrap_or("");
                let constraint = ["primary", "unique", "foreign", "constraint", "check", ""];
                if !constraint.contains(&first) {
                    tables
                        .get_mut(table)
                        .expect("table")
                        .insert(first.to_string());
                }
            } else if lower.starts_with("alter table ") && lower.contains(" add column ") {
                let words: Vec<&str> = lower.split_whitespace().collect();
                let table = words[2].to_string();
                let column = words[words.iter().position(|w| *w == "column").expect("column") + 1];
                tables.entry(table).or_default().insert(column.to_string());
            }
        }
    }
    tables
}

#[test]
fn sqlite_and_postgres_define_the_same_tables_and_columns() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
    let sqlite = schema(&root.join("sqlite"));
    let postgres = schema(&root.join("postgres"));
    assert!(
        sqlite.len() >= 11,
        "expected the full schema, got {:?}",
        sqlite.keys()
    );
    assert_eq!(sqlite, postgres);
    for table in [
        "dag",
        "dag_run",
        "asset",
        "asset_event",
        "asset_dag_run_queue",
        "dag_schedule_asset_reference",
        "trigger",
        "asset_watcher",
        "dagrun_asset_event",
        "job",
    ] {
        assert!(sqlite.contains_key(table), "missing Airflow table {table}");
    }
    for column in [
        "run_type",
        "state",
        "logical_date",
        "data_interval_start",
        "data_interval_end",
        "run_after",
        "conf",
    ] {
        assert!(sqlite["dag_run"].contains(column), "dag_run lacks {column}");
    }
    assert!(sqlite["asset_dag_run_queue"].contains("asset_event_id"));
    assert!(sqlite["trigger"].contains("hash") && sqlite["trigger"].contains("triggerer_id"));
}

#[test]
fn both_migration_sets_have_the_same_files() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
    let names = |d: &str| -> BTreeSet<String> {
        std::fs::read_dir(root.join(d))
            .expect("dir")
            .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect()
    };
    assert_eq!(names("sqlite"), names("postgres"));
}

//! Property tests for what users type: definition files, asset expressions and `{ env = … }`
//! references. Whatever the input, parsing returns a value or errors that point inside the
//! input; it never panics. Bounded (a few hundred cases each) so CI stays fast; proptest keeps
//! any failure it finds in `proptest-regressions/` and replays it first on every run.

use std::collections::BTreeSet;

use proptest::prelude::*;
use serde_json::{json, Value};
use triggerer::asset_expression::AssetExpr;
use triggerer::definitions::load_str;
use triggerer::registry::builtin_providers;
use triggerer::secrets;

/// A valid file touching every part of the format: edits of it reach deep into validation.
const TEMPLATE: &str = r#"
[[asset]]
name = "orders"
uri = "s3://bucket/orders"
[[asset.watcher]]
name = "landing"
classpath = "file.FileTrigger"
kwargs = { filepath = "/data/in/*.csv" }
[[asset.watcher]]
name = "topic"
classpath = "MessageQueueTrigger"
kwargs = { queue = "kafka://b:9092/orders", kafka_config = { "sasl.password" = { env = "P" } } }

[[asset]]
name = "refunds"

[[dag]]
dag_id = "reconcile"
schedule = { assets = "orders & (refunds | orders)" }
max_active_runs = 3

[[dag]]
dag_id = "nightly"
schedule = { cron = "0 2 * * *", timezone = "Europe/Amsterdam" }
start_date = 2025-01-01T00:00:00Z
catchup = true
"#;

#[test]
fn the_template_is_valid_as_it_stands() {
    let plan = load_str("defs.toml", TEMPLATE, &builtin_providers())
        .unwrap_or_else(|e| panic!("the template must be valid unedited:\n{e}"));
    assert_eq!((plan.assets.len(), plan.dags.len()), (2, 2));
    assert_eq!(plan.assets[0].watchers.len(), 2);
}

fn assert_errors_point_inside(text: &str) {
    if let Err(errors) = load_str("defs.toml", text, &builtin_providers()) {
        assert!(!errors.0.is_empty(), "a rejection names at least one error");
        let lines = text.lines().count().max(1);
        for e in &errors.0 {
            assert!(
                e.line >= 1 && e.line <= lines + 1,
                "line {} outside 1..={} for: {e}",
                e.line,
                lines + 1
            );
            assert!(e
                .to_string()
                .starts_with(&format!("defs.toml:{}: ", e.line)));
        }
    }
}

/// An expression in canonical form: no group inside a group of its kind, no one-operand group
/// (what the parser builds).
fn normalize(e: AssetExpr) -> AssetExpr {
    fn merge(ops: Vec<AssetExpr>, all: bool) -> Vec<AssetExpr> {
        let mut out = Vec::new();
        for op in ops.into_iter().map(normalize) {
            match op {
                AssetExpr::All(inner) if all => out.extend(inner),
                AssetExpr::Any(inner) if !all => out.extend(inner),
                other => out.push(other),
            }
        }
        out
    }
    let collapse = |mut ops: Vec<AssetExpr>, make: fn(Vec<AssetExpr>) -> AssetExpr| {
        if ops.len() == 1 {
            ops.remove(0)
        } else {
            make(ops)
        }
    };
    match e {
        AssetExpr::All(ops) => collapse(merge(ops, true), AssetExpr::All),
        AssetExpr::Any(ops) => collapse(merge(ops, false), AssetExpr::Any),
        leaf => leaf,
    }
}

fn asset_name() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z][a-z0-9_.:/-]{0,10}",
        // Names with spaces and operators need quotes; the printer adds them.
        "[a-z][a-z &|()]{0,10}[a-z]",
    ]
}

fn expression() -> impl Strategy<Value = AssetExpr> {
    asset_name()
        .prop_map(AssetExpr::Asset)
        .prop_recursive(4, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 2..4).prop_map(AssetExpr::All),
                prop::collection::vec(inner, 2..4).prop_map(AssetExpr::Any),
            ]
        })
}

fn has_reference(v: &Value) -> bool {
    secrets::env_reference(v).is_some()
        || match v {
            Value::Array(items) => items.iter().any(has_reference),
            Value::Object(map) => map.values().any(has_reference),
            _ => false,
        }
}

/// JSON kwargs with `{ env = … }` references here and there.
fn kwargs() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        any::<i64>().prop_map(Value::from),
        any::<bool>().prop_map(Value::from),
        "[ -~]{0,12}".prop_map(Value::from),
        "[A-Z_][A-Z0-9_]{0,8}".prop_map(|name| json!({ "env": name })),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("[a-z_.]{1,8}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn any_text_is_parsed_or_rejected_with_lines_inside_it(text in "[ -~\n\t\u{e9}\u{4e2d}]{0,400}") {
        assert_errors_point_inside(&text);
    }

    #[test]
    fn edits_of_a_valid_file_never_panic(
        edits in prop::collection::vec((any::<prop::sample::Index>(), 0usize..3, "[ -~\n]{0,6}"), 1..6)
    ) {
        let mut text = TEMPLATE.to_string();
        for (at, kind, snippet) in edits {
            let mut i = at.index(text.len() + 1);
            while !text.is_char_boundary(i) {
                i -= 1;
            }
            match kind {
                0 => text.insert_str(i, &snippet), // insert
                1 => {                              // delete a few bytes
                    let mut end = (i + snippet.len()).min(text.len());
                    while !text.is_char_boundary(end) {
                        end -= 1;
                    }
                    text.replace_range(i..end, "");
                }
                _ => text.truncate(i),              // cut short
            }
        }
        assert_errors_point_inside(&text);
    }

    #[test]
    fn any_expression_text_parses_or_names_a_column_inside_it(text in "[a-c &|()\" \u{e9}]{0,40}") {
        if let Err(e) = AssetExpr::parse(&text) {
            prop_assert!(e.offset <= text.len(), "offset {} past the end of {text:?}", e.offset);
        }
    }

    #[test]
    fn printed_expressions_parse_back_to_themselves(e in expression(), queued in prop::collection::btree_set("[a-z]{1,3}", 0..6)) {
        let e = normalize(e);
        let printed = e.to_string();
        let parsed = AssetExpr::parse(&printed).map_err(|err| TestCaseError::fail(format!("{printed:?}: {err}")))?;
        prop_assert_eq!(&parsed, &e, "{}", printed);
        let queued: BTreeSet<String> = queued;
        prop_assert_eq!(parsed.evaluate(&queued), e.evaluate(&queued));
    }

    #[test]
    fn references_survive_validation_placeholders_unchanged(kwargs in kwargs()) {
        let (with_placeholders, placeholders) = secrets::with_placeholders(&kwargs).expect("valid names");
        prop_assert_eq!(placeholders.restore(&with_placeholders).expect("restores"), kwargs.clone());
        // Resolving with every variable set leaves no reference behind.
        let resolved = secrets::resolve(&kwargs, |name| Ok(format!("value-of-{name}"))).expect("resolves");
        prop_assert!(!has_reference(&resolved), "{}", resolved);
    }
}

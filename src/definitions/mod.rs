//! Definition files (README "Definition files"): reading TOML and validating everything into a
//! [`SyncPlan`] before anything is written. Every error names `file:line`, the asset or DAG,
//! and the field. This module reads files and nothing else: writing the plan is
//! [`crate::sync`]'s, and it must not touch the database or the scheduler.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::Value;
use thiserror::Error;
use toml::Spanned;
use tracing::warn;

use crate::identity::{canonical_json, trigger_hash};
use crate::names;
use crate::registry::{ProviderRegistry, TriggerCheckError, TriggerUse};
use crate::secrets;
use crate::store::{AssetPlan, DagPlan, SyncPlan, WatcherPlan};

mod tasks;

/// Airflow's `[core] max_active_runs_per_dag` default.
pub const DEFAULT_MAX_ACTIVE_RUNS: i64 = 16;

/// One problem in a definition file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DefinitionError {
    pub file: String,
    pub line: usize,
    pub message: String,
}

impl fmt::Display for DefinitionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Messages quote what the file says, which may be a name refused for its control
        // characters: printed raw, those would act on the terminal.
        write!(
            f,
            "{}:{}: {}",
            names::escape_control(&self.file),
            self.line,
            names::escape_control(&self.message)
        )
    }
}

/// Every problem found in the files, in file and line order.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub struct DefinitionErrors(pub Vec<DefinitionError>);

impl fmt::Display for DefinitionErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileDoc {
    #[serde(default)]
    asset: Vec<Spanned<AssetDoc>>,
    #[serde(default)]
    dag: Vec<Spanned<DagDoc>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AssetDoc {
    name: Spanned<String>,
    uri: Option<Spanned<String>>,
    #[serde(default)]
    watcher: Vec<Spanned<WatcherDoc>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WatcherDoc {
    name: Spanned<String>,
    classpath: Spanned<String>,
    kwargs: Option<Spanned<toml::Table>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DagDoc {
    dag_id: Spanned<String>,
    schedule: Option<Spanned<toml::Value>>,
    start_date: Option<Spanned<toml::Value>>,
    end_date: Option<Spanned<toml::Value>>,
    catchup: Option<bool>,
    max_active_runs: Option<Spanned<i64>>,
    is_paused_upon_creation: Option<bool>,
    // Accepted for Airflow users' habits; shown nowhere yet.
    #[allow(dead_code)]
    description: Option<String>,
    #[allow(dead_code)]
    #[serde(default)]
    tags: Vec<String>,
    #[serde(default)]
    task: Vec<Spanned<tasks::TaskDoc>>,
}

/// One definition file's text and where it came from.
pub(crate) struct Source {
    file: String,
    text: String,
    /// Byte offset where each line after the first starts: a line number is a binary search,
    /// not a scan (a file of 100,000 DAGs asks for 100,000 of them).
    line_starts: Vec<usize>,
}

impl Source {
    fn new(file: String, text: String) -> Self {
        let line_starts = text
            .bytes()
            .enumerate()
            .filter(|(_, b)| *b == b'\n')
            .map(|(i, _)| i + 1)
            .collect();
        Self {
            file,
            text,
            line_starts,
        }
    }

    pub(crate) fn line_of(&self, span: Range<usize>) -> usize {
        let at = span.start.min(self.text.len());
        self.line_starts.partition_point(|&start| start <= at) + 1
    }

    pub(crate) fn error(&self, span: Range<usize>, message: impl Into<String>) -> DefinitionError {
        DefinitionError {
            file: self.file.clone(),
            line: self.line_of(span),
            message: message.into(),
        }
    }
}

/// Lists the `.toml` files of `paths` (files as given, directories searched recursively),
/// sorted so that sync order and error order are stable. Symlinks are followed, but every
/// directory and file is read once at most, by its canonical path: a link back up the tree (a
/// cycle) or two links to one place would otherwise loop forever or define everything twice.
pub fn definition_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>, DefinitionErrors> {
    let mut files = Vec::new();
    let mut errors = Vec::new();
    let mut seen_dirs: HashSet<PathBuf> = HashSet::new();
    let mut seen_files: HashSet<PathBuf> = HashSet::new();
    let unreadable = |path: &Path, what: &str, e: std::io::Error| DefinitionError {
        file: path.display().to_string(),
        line: 0,
        message: format!("cannot read {what}: {e}"),
    };
    for path in paths {
        if path.is_dir() {
            let mut stack = vec![path.clone()];
            while let Some(dir) = stack.pop() {
                match std::fs::canonicalize(&dir).map(|c| seen_dirs.insert(c)) {
                    Ok(false) => continue,
                    Ok(true) => {}
                    Err(e) => {
                        errors.push(unreadable(&dir, "directory", e));
                        continue;
                    }
                }
                let entries = match std::fs::read_dir(&dir) {
                    Ok(entries) => entries,
                    Err(e) => {
                        errors.push(unreadable(&dir, "directory", e));
                        continue;
                    }
                };
                // Sorted, and depth first in that order: which of two links to one place is
                // kept (and so named in errors) does not depend on the directory's order.
                let mut entries: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
                entries.sort();
                let (dirs, others): (Vec<PathBuf>, Vec<PathBuf>) =
                    entries.into_iter().partition(|p| p.is_dir());
                stack.extend(dirs.into_iter().rev());
                for p in others {
                    if is_definition_file(&p) {
                        match std::fs::canonicalize(&p).map(|c| seen_files.insert(c)) {
                            Ok(true) => files.push(p),
                            Ok(false) => {}
                            // A dangling link among them: its DAGs would silently go.
                            Err(e) => errors.push(unreadable(&p, "file", e)),
                        }
                    }
                }
            }
        } else if path.exists() {
            match std::fs::canonicalize(path).map(|c| seen_files.insert(c)) {
                Ok(true) => files.push(path.clone()),
                Ok(false) => {}
                Err(e) => errors.push(unreadable(path, "file", e)),
            }
        } else {
            errors.push(DefinitionError {
                file: path.display().to_string(),
                line: 0,
                message: "no such file or directory".into(),
            });
        }
    }
    if !errors.is_empty() {
        return Err(DefinitionErrors(errors));
    }
    files.sort();
    Ok(files)
}

/// The definition files under some paths, read at one moment: what a sync validates, and a
/// digest of it, so that a watcher can tell a real change from a file merely touched.
pub struct Snapshot {
    sources: Vec<Source>,
}

impl Snapshot {
    /// Reads every definition file under `paths`.
    pub fn read(paths: &[PathBuf]) -> Result<Self, DefinitionErrors> {
        let mut sources = Vec::new();
        let mut errors = Vec::new();
        for file in definition_files(paths)? {
            match std::fs::read_to_string(&file) {
                Ok(text) => sources.push(Source::new(file.display().to_string(), text)),
                Err(e) => errors.push(DefinitionError {
                    file: file.display().to_string(),
                    line: 0,
                    message: format!("cannot read file: {e}"),
                }),
            }
        }
        if !errors.is_empty() {
            return Err(DefinitionErrors(errors));
        }
        Ok(Self { sources })
    }

    /// SHA-256 over every file's name and text, in sync order.
    pub fn digest(&self) -> [u8; 32] {
        use sha2::{Digest, Sha256};
        let mut digest = Sha256::new();
        for source in &self.sources {
            // Lengths first, so that no two different sets of files hash alike.
            digest.update((source.file.len() as u64).to_le_bytes());
            digest.update(source.file.as_bytes());
            digest.update((source.text.len() as u64).to_le_bytes());
            digest.update(source.text.as_bytes());
        }
        digest.finalize().into()
    }

    /// How many definition files it holds.
    pub fn files(&self) -> usize {
        self.sources.len()
    }

    /// Parses and validates the snapshot into a plan to write.
    pub fn validate(&self, registry: &ProviderRegistry) -> Result<SyncPlan, DefinitionErrors> {
        validate(&self.sources, registry)
    }
}

/// Parses definitions from in-memory text, as if read from `file` (used by tests and tools).
pub fn load_str(
    file: &str,
    text: &str,
    registry: &ProviderRegistry,
) -> Result<SyncPlan, DefinitionErrors> {
    validate(&[Source::new(file.to_string(), text.to_string())], registry)
}

pub(crate) fn toml_to_json(value: &toml::Value) -> Value {
    match value {
        toml::Value::String(s) => Value::String(s.clone()),
        toml::Value::Integer(i) => Value::from(*i),
        toml::Value::Float(f) => serde_json::Number::from_f64(*f)
            .map(Value::Number)
            .unwrap_or(Value::Null),
        toml::Value::Boolean(b) => Value::Bool(*b),
        toml::Value::Datetime(d) => Value::String(d.to_string()),
        toml::Value::Array(items) => Value::Array(items.iter().map(toml_to_json).collect()),
        toml::Value::Table(t) => Value::Object(
            t.iter()
                .map(|(k, v)| (k.clone(), toml_to_json(v)))
                .collect(),
        ),
    }
}

/// A TOML datetime or RFC 3339 string as UTC. A date alone is midnight UTC; a local date-time
/// is taken as UTC (README "Command line": times are UTC unless a zone is given).
fn parse_date(value: &toml::Value) -> Result<DateTime<Utc>, String> {
    let text = match value {
        toml::Value::Datetime(d) => d.to_string(),
        toml::Value::String(s) => s.clone(),
        _ => return Err("must be a date-time such as 2024-01-01T00:00:00Z".into()),
    };
    let candidates = [
        text.clone(),
        format!("{text}Z"),
        format!("{text}T00:00:00Z"),
    ];
    candidates
        .iter()
        .find_map(|c| DateTime::parse_from_rfc3339(c).ok())
        .map(|t| crate::time::truncate(t.with_timezone(&Utc)))
        .ok_or_else(|| format!("`{text}` is not a date-time such as 2024-01-01T00:00:00Z"))
}

fn validate(sources: &[Source], registry: &ProviderRegistry) -> Result<SyncPlan, DefinitionErrors> {
    let mut errors: Vec<DefinitionError> = Vec::new();
    let mut plan = SyncPlan::default();
    // Where each name was first defined, to point at both places of a duplicate.
    let mut asset_at: HashMap<String, (String, usize)> = HashMap::new();
    let mut uri_at: HashMap<String, (String, String, usize)> = HashMap::new();
    let mut dag_at: HashMap<String, (String, usize)> = HashMap::new();
    // DAG expressions are checked against all assets once every file is read.
    let mut pending_refs: Vec<(usize, &Source, Range<usize>, BTreeSet<String>)> = Vec::new();

    for source in sources {
        let doc: FileDoc = match toml::from_str(&source.text) {
            Ok(doc) => doc,
            Err(e) => {
                let line = e.span().map(|s| source.line_of(s)).unwrap_or(1);
                errors.push(DefinitionError {
                    file: source.file.clone(),
                    line,
                    message: e.message().trim().replace('\n', " "),
                });
                continue;
            }
        };

        for asset in &doc.asset {
            let asset = asset.get_ref();
            let name = asset.name.get_ref().trim().to_string();
            let name_line = source.line_of(asset.name.span());
            if let Err(e) = names::check(&name) {
                errors.push(source.error(asset.name.span(), format!("asset: `name` {e}")));
                continue;
            }
            if let Some((file, line)) = asset_at.get(&name) {
                errors.push(source.error(
                    asset.name.span(),
                    format!("asset `{name}`: `name` is already defined at {file}:{line}"),
                ));
                continue;
            }
            asset_at.insert(name.clone(), (source.file.clone(), name_line));
            let uri = asset
                .uri
                .as_ref()
                .map(|u| u.get_ref().trim().to_string())
                .unwrap_or_else(|| name.clone());
            if let (Err(e), Some(u)) = (names::check(&uri), &asset.uri) {
                errors.push(source.error(u.span(), format!("asset `{name}`: `uri` {e}")));
            }
            let uri_span = asset
                .uri
                .as_ref()
                .map(|u| u.span())
                .unwrap_or(asset.name.span());
            if let Some((other, file, line)) = uri_at.get(&uri) {
                errors.push(source.error(
                    uri_span,
                    format!("asset `{name}`: `uri` `{uri}` is already used by asset `{other}` at {file}:{line}"),
                ));
            } else {
                uri_at.insert(uri.clone(), (name.clone(), source.file.clone(), name_line));
            }

            let mut watchers = Vec::new();
            let mut watcher_names: HashMap<String, usize> = HashMap::new();
            for watcher in &asset.watcher {
                let w = watcher.get_ref();
                let wname = w.name.get_ref().trim().to_string();
                let ctx = format!("asset `{name}`, watcher `{wname}`");
                if let Err(e) = names::check(&wname) {
                    errors.push(
                        source.error(w.name.span(), format!("asset `{name}`: watcher `name` {e}")),
                    );
                    continue;
                }
                if let Some(line) = watcher_names.get(&wname) {
                    errors.push(source.error(
                        w.name.span(),
                        format!("{ctx}: `name` is already used by another watcher of this asset (line {line})"),
                    ));
                    continue;
                }
                watcher_names.insert(wname.clone(), source.line_of(w.name.span()));
                let classpath = w.classpath.get_ref().trim();
                let (kwargs, kwargs_span) = match &w.kwargs {
                    Some(k) => (
                        toml_to_json(&toml::Value::Table(k.get_ref().clone())),
                        k.span(),
                    ),
                    None => (Value::Object(Default::default()), watcher.span()),
                };
                let (canonical, kwargs) = match check_trigger(
                    source,
                    &ctx,
                    registry,
                    (classpath, w.classpath.span()),
                    (kwargs, kwargs_span),
                    TriggerUse::Watcher,
                ) {
                    Ok(checked) => checked,
                    Err((span, message)) => {
                        errors.push(source.error(span, format!("{ctx}: {message}")));
                        continue;
                    }
                };
                watchers.push(WatcherPlan {
                    name: wname,
                    classpath: canonical.to_string(),
                    kwargs: canonical_json(&kwargs),
                    hash: trigger_hash(canonical, &kwargs),
                });
            }
            plan.assets.push(AssetPlan {
                name,
                uri,
                fileloc: source.file.clone(),
                watchers,
            });
        }

        for dag in &doc.dag {
            let d = dag.get_ref();
            let dag_id = d.dag_id.get_ref().trim().to_string();
            if let Err(e) = names::check(&dag_id) {
                errors.push(source.error(d.dag_id.span(), format!("dag: `dag_id` {e}")));
                continue;
            }
            if let Some((file, line)) = dag_at.get(&dag_id) {
                errors.push(source.error(
                    d.dag_id.span(),
                    format!("dag `{dag_id}`: `dag_id` is already defined at {file}:{line}"),
                ));
                continue;
            }
            dag_at.insert(
                dag_id.clone(),
                (source.file.clone(), source.line_of(d.dag_id.span())),
            );
            let ctx = format!("dag `{dag_id}`");

            let schedule = match &d.schedule {
                None => None,
                Some(s) => match crate::timetable::schedule::parse(&toml_to_json(s.get_ref())) {
                    Ok(parsed) => Some((parsed, s.span())),
                    Err(e) => {
                        errors.push(source.error(s.span(), format!("{ctx}: `schedule`: {e}")));
                        continue;
                    }
                },
            };
            let mut date = |field: &str, v: &Option<Spanned<toml::Value>>| match v {
                None => None,
                Some(v) => match parse_date(v.get_ref()) {
                    Ok(t) => Some(t),
                    Err(e) => {
                        errors.push(source.error(v.span(), format!("{ctx}: `{field}` {e}")));
                        None
                    }
                },
            };
            let start_date = date("start_date", &d.start_date);
            let end_date = date("end_date", &d.end_date);
            if let (Some(start), Some(end), Some(span)) =
                (start_date, end_date, d.end_date.as_ref().map(|e| e.span()))
            {
                if end < start {
                    errors.push(
                        source.error(span, format!("{ctx}: `end_date` is before `start_date`")),
                    );
                }
            }
            let max_active_runs = match &d.max_active_runs {
                Some(m) if *m.get_ref() < 1 => {
                    errors.push(source.error(
                        m.span(),
                        format!("{ctx}: `max_active_runs` must be at least 1"),
                    ));
                    DEFAULT_MAX_ACTIVE_RUNS
                }
                Some(m) => *m.get_ref(),
                None => DEFAULT_MAX_ACTIVE_RUNS,
            };
            let tasks = tasks::validate(source, &ctx, &d.task, registry, &mut errors);
            let (json, summary, expr) = match &schedule {
                Some((s, span)) => {
                    if let Some(expr) = s.assets() {
                        pending_refs.push((plan.dags.len(), source, span.clone(), expr.assets()));
                    }
                    (
                        Some(s.json.clone()),
                        s.summary.clone(),
                        s.assets().map(ToString::to_string),
                    )
                }
                None => (None, "None".to_string(), None),
            };
            plan.dags.push(DagPlan {
                dag_id,
                fileloc: source.file.clone(),
                schedule: json,
                timetable_summary: summary,
                assets: schedule
                    .as_ref()
                    .and_then(|(s, _)| s.assets())
                    .map(|e| e.assets())
                    .unwrap_or_default(),
                asset_expression: expr,
                start_date,
                end_date,
                catchup: d.catchup.unwrap_or(false),
                max_active_runs,
                is_paused_upon_creation: d.is_paused_upon_creation.unwrap_or(false),
                asset_gated: schedule
                    .as_ref()
                    .is_some_and(|(s, _)| s.timetable.asset_gate().is_some()),
                tasks,
            });
        }
    }

    for (dag_index, source, span, names) in pending_refs {
        for name in names {
            if !asset_at.contains_key(&name) {
                errors.push(source.error(
                    span.clone(),
                    format!(
                        "dag `{}`: `schedule`: unknown asset `{name}` in `assets`; define it with [[asset]] name = \"{name}\"",
                        plan.dags[dag_index].dag_id
                    ),
                ));
            }
        }
    }

    if errors.is_empty() {
        Ok(plan)
    } else {
        errors.sort_by(|a, b| (&a.file, a.line).cmp(&(&b.file, b.line)));
        Err(DefinitionErrors(errors))
    }
}

/// Checks a trigger's `classpath` and `kwargs` as a watcher or a task's `wait` has them
/// ([`ProviderRegistry::check_trigger`]), and warns about literal secrets, which are stored as
/// written. `ctx` names the asset and watcher, or the DAG and task, in those warnings; an error
/// comes back as the span it is at and its message.
pub(crate) fn check_trigger(
    source: &Source,
    ctx: &str,
    registry: &ProviderRegistry,
    (classpath, classpath_span): (&str, Range<usize>),
    (kwargs, kwargs_span): (Value, Range<usize>),
    usage: TriggerUse,
) -> Result<(&'static str, Value), (Range<usize>, String)> {
    let (canonical, kwargs) =
        registry
            .check_trigger(classpath, &kwargs, usage)
            .map_err(|e| match e {
                TriggerCheckError::Classpath(_) => (classpath_span, e.to_string()),
                TriggerCheckError::Kwargs(_) => (kwargs_span.clone(), e.to_string()),
            })?;
    let line = source.line_of(kwargs_span.clone());
    for path in secrets::uri_credentials(&kwargs) {
        warn!(
            "{}:{line}: {ctx}: kwargs `{path}` holds a password inside a URI and is stored in the database as written; keep it in the triggerer's environment with `{{ env = \"NAME\" }}`",
            source.file
        );
    }
    for path in secrets::literal_secrets(&kwargs) {
        warn!(
            "{}:{line}: {ctx}: kwargs `{path}` is a literal secret and is stored in the database as written; use `{{ env = \"NAME\" }}` to keep it in the triggerer's environment",
            source.file
        );
    }
    Ok((canonical, kwargs))
}

/// Reports whether `path` is one `dags sync` would read, for the file watcher behind `--dags`.
pub fn is_definition_file(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "toml")
}

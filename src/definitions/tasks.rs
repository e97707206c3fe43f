//! `[[dag.task]]` (DESIGN §10): reading a DAG's tasks into [`TaskSpec`]s, with every error at
//! `file:line` naming the DAG, the task and the field. Checks what can be checked without I/O:
//! one operator per task, known and acyclic `depends_on`, durations, trigger rules, HTTP
//! methods, URLs and statuses. Reads nothing and writes nothing.

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;

use serde::Deserialize;
use serde_json::Value;
use toml::Spanned;

use super::{toml_to_json, DefinitionError, Source};
use crate::names;
use crate::registry::{ProviderRegistry, TriggerUse};
use crate::secrets;
use crate::task::{
    self, AirflowCall, HttpBody, HttpCall, Operator, TaskSpec, TriggerRule, TriggerSpec,
};

/// Most retries a task may ask for: beyond this a typo (`retries = 10000`) is likelier than
/// intent.
const MAX_RETRIES: i64 = 1000;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct TaskDoc {
    task_id: Spanned<String>,
    command: Option<Spanned<Vec<String>>>,
    shell: Option<Spanned<String>>,
    http: Option<Spanned<HttpDoc>>,
    wait: Option<Spanned<WaitDoc>>,
    airflow: Option<Spanned<AirflowDoc>>,
    timeout: Option<Spanned<String>>,
    resume: Option<Spanned<Vec<String>>>,
    #[serde(default)]
    depends_on: Vec<Spanned<String>>,
    trigger_rule: Option<Spanned<String>>,
    retries: Option<Spanned<i64>>,
    retry_delay: Option<Spanned<String>>,
    retry_exponential_backoff: Option<bool>,
    execution_timeout: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WaitDoc {
    classpath: Spanned<String>,
    kwargs: Option<Spanned<toml::Table>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AirflowDoc {
    base_url: Spanned<String>,
    dag_id: Spanned<String>,
    username: Spanned<toml::Value>,
    password: Spanned<toml::Value>,
    conf: Option<toml::Table>,
    poll_interval: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HttpDoc {
    method: Option<Spanned<String>>,
    url: Spanned<String>,
    headers: Option<Spanned<toml::Table>>,
    json: Option<toml::Value>,
    body: Option<String>,
    expect_status: Option<Spanned<toml::Value>>,
    timeout: Option<Spanned<String>>,
}

/// Validates one DAG's tasks; problems go to `errors` and the task is left out.
pub(super) fn validate(
    source: &Source,
    dag_ctx: &str,
    docs: &[Spanned<TaskDoc>],
    registry: &ProviderRegistry,
    errors: &mut Vec<DefinitionError>,
) -> Vec<TaskSpec> {
    let mut tasks: Vec<TaskSpec> = Vec::with_capacity(docs.len());
    // Where each task id and each `depends_on` entry is, to point at them.
    let mut defined_at: HashMap<String, usize> = HashMap::new();
    let mut depends_spans: HashMap<String, Vec<(String, Range<usize>)>> = HashMap::new();
    let mut task_spans: HashMap<String, Range<usize>> = HashMap::new();
    let before = errors.len();
    for doc in docs {
        let t = doc.get_ref();
        let task_id = t.task_id.get_ref().trim().to_string();
        if let Err(e) = names::check(&task_id) {
            errors.push(source.error(t.task_id.span(), format!("{dag_ctx}: task `task_id` {e}")));
            continue;
        }
        if let Some(line) = defined_at.get(&task_id) {
            errors.push(source.error(
                t.task_id.span(),
                format!("{dag_ctx}: task `{task_id}`: `task_id` is already used by the task at line {line}"),
            ));
            continue;
        }
        defined_at.insert(task_id.clone(), source.line_of(t.task_id.span()));
        let ctx = format!("{dag_ctx}, task `{task_id}`");
        let mut error = |span: Range<usize>, message: String| {
            errors.push(source.error(span, format!("{ctx}: {message}")));
        };
        let Some(operator) = operator(t, doc.span(), (source, &ctx, registry), &mut error) else {
            continue;
        };
        let retries = match &t.retries {
            Some(r) if !(0..=MAX_RETRIES).contains(r.get_ref()) => {
                error(
                    r.span(),
                    format!(
                        "`retries` must be between 0 and {MAX_RETRIES}, got {}",
                        r.get_ref()
                    ),
                );
                continue;
            }
            Some(r) => u32::try_from(*r.get_ref()).unwrap_or(0),
            None => 0,
        };
        let retry_delay = match duration(&t.retry_delay, "retry_delay", &mut error) {
            Ok(d) => d.unwrap_or(task::DEFAULT_RETRY_DELAY),
            Err(()) => continue,
        };
        let Ok(execution_timeout) = duration(&t.execution_timeout, "execution_timeout", &mut error)
        else {
            continue;
        };
        let Ok(timeout) = duration(&t.timeout, "timeout", &mut error) else {
            continue;
        };
        if let (Some(d), Some(span)) = (timeout, &t.timeout) {
            if d.is_zero() {
                error(span.span(), "`timeout` must be longer than zero".into());
                continue;
            }
        }
        let resume = match &t.resume {
            None => None,
            Some(argv)
                if !matches!(operator, Operator::Command { .. } | Operator::Shell { .. }) =>
            {
                error(
                    argv.span(),
                    "`resume` is for `command` and `shell` tasks, which may defer themselves"
                        .into(),
                );
                continue;
            }
            Some(argv) if argv.get_ref().first().is_none_or(|p| p.trim().is_empty()) => {
                error(
                    argv.span(),
                    "`resume` must name a program: resume = [\"program\", …]".into(),
                );
                continue;
            }
            Some(argv) => Some(argv.get_ref().clone()),
        };
        if let (Some(d), Some(span)) = (execution_timeout, &t.execution_timeout) {
            if d.is_zero() {
                error(
                    span.span(),
                    "`execution_timeout` must be longer than zero".into(),
                );
                continue;
            }
        }
        let trigger_rule = match &t.trigger_rule {
            None => TriggerRule::default(),
            Some(rule) => match rule.get_ref().parse::<TriggerRule>() {
                Ok(rule) => rule,
                Err(_) => {
                    let known: Vec<&str> = TriggerRule::ALL.iter().map(|r| r.as_str()).collect();
                    error(
                        rule.span(),
                        format!(
                            "`trigger_rule`: unknown rule `{}`; use one of {}",
                            rule.get_ref(),
                            known.join(", ")
                        ),
                    );
                    continue;
                }
            },
        };
        let mut depends_on: Vec<String> = Vec::with_capacity(t.depends_on.len());
        for upstream in &t.depends_on {
            let name = upstream.get_ref().trim().to_string();
            if depends_on.contains(&name) {
                error(
                    upstream.span(),
                    format!("`depends_on` lists `{name}` twice"),
                );
                continue;
            }
            depends_spans
                .entry(task_id.clone())
                .or_default()
                .push((name.clone(), upstream.span()));
            depends_on.push(name);
        }
        task_spans.insert(task_id.clone(), doc.span());
        tasks.push(TaskSpec {
            task_id,
            operator,
            depends_on,
            trigger_rule,
            retries,
            retry_delay,
            retry_exponential_backoff: t.retry_exponential_backoff.unwrap_or(false),
            execution_timeout,
            timeout,
            resume,
        });
    }
    // Upstreams are checked once every task of the DAG is known: `depends_on` may name a task
    // written further down.
    for task in &tasks {
        for (upstream, span) in depends_spans.get(&task.task_id).into_iter().flatten() {
            if !defined_at.contains_key(upstream) {
                let known: Vec<&str> = tasks.iter().map(|t| t.task_id.as_str()).collect();
                errors.push(source.error(
                    span.clone(),
                    format!(
                        "{dag_ctx}, task `{}`: `depends_on`: unknown task `{upstream}`; this DAG's tasks are {}",
                        task.task_id,
                        known.join(", ")
                    ),
                ));
            }
        }
    }
    if errors.len() == before {
        if let Some(cycle) = task::graph::find_cycle(&tasks) {
            let span = task_spans.get(&cycle[0]).cloned().unwrap_or(0..0);
            errors.push(source.error(
                span,
                format!(
                    "{dag_ctx}: `depends_on` makes a cycle: {}; tasks must form a DAG",
                    cycle.join(" → ")
                ),
            ));
        }
    }
    tasks
}

/// The task's one operator. `at` is where the task is (for trigger checks).
fn operator(
    t: &TaskDoc,
    task_span: Range<usize>,
    at: (&Source, &str, &ProviderRegistry),
    error: &mut impl FnMut(Range<usize>, String),
) -> Option<Operator> {
    let present: Vec<(&str, Range<usize>)> = [
        ("command", t.command.as_ref().map(|c| c.span())),
        ("shell", t.shell.as_ref().map(|c| c.span())),
        ("http", t.http.as_ref().map(|c| c.span())),
        ("wait", t.wait.as_ref().map(|c| c.span())),
        ("airflow", t.airflow.as_ref().map(|c| c.span())),
    ]
    .into_iter()
    .filter_map(|(name, span)| span.map(|s| (name, s)))
    .collect();
    match present.as_slice() {
        [] => {
            error(
                task_span,
                "needs an operator: one of `command`, `shell`, `http`, `wait` or `airflow`".into(),
            );
            return None;
        }
        [(first, _), (second, span), ..] => {
            error(
                span.clone(),
                format!("has both `{first}` and `{second}`; a task has exactly one operator"),
            );
            return None;
        }
        [_] => {}
    }
    if let Some(wait) = &t.wait {
        let (source, ctx, registry) = at;
        let w = wait.get_ref();
        let (kwargs, kwargs_span) = match &w.kwargs {
            Some(k) => (
                toml_to_json(&toml::Value::Table(k.get_ref().clone())),
                k.span(),
            ),
            None => (Value::Object(Default::default()), wait.span()),
        };
        let classpath = w.classpath.get_ref().trim();
        return match super::check_trigger(
            source,
            ctx,
            registry,
            (classpath, w.classpath.span()),
            (kwargs, kwargs_span),
            TriggerUse::Task,
        ) {
            Ok((canonical, kwargs)) => Some(Operator::Wait(TriggerSpec {
                classpath: canonical.to_string(),
                kwargs,
            })),
            Err((span, message)) => {
                error(span, format!("`wait`: {message}"));
                None
            }
        };
    }
    if let Some(airflow) = &t.airflow {
        return airflow_call(airflow.get_ref(), error).map(Operator::Airflow);
    }
    if let Some(argv) = &t.command {
        if argv.get_ref().first().is_none_or(|p| p.trim().is_empty()) {
            error(
                argv.span(),
                "`command` must name a program: command = [\"program\", \"arg\", …]".into(),
            );
            return None;
        }
        if argv.get_ref().iter().any(|a| a.contains('\0')) {
            error(
                argv.span(),
                "`command` must not contain a NUL character".into(),
            );
            return None;
        }
        return Some(Operator::Command {
            argv: argv.get_ref().clone(),
        });
    }
    if let Some(script) = &t.shell {
        if script.get_ref().trim().is_empty() {
            error(script.span(), "`shell` is empty".into());
            return None;
        }
        if script.get_ref().contains('\0') {
            error(
                script.span(),
                "`shell` must not contain a NUL character".into(),
            );
            return None;
        }
        return Some(Operator::Shell {
            script: script.get_ref().clone(),
        });
    }
    let http = t.http.as_ref()?;
    http_call(http.get_ref(), error).map(Operator::Http)
}

fn http_call(h: &HttpDoc, error: &mut impl FnMut(Range<usize>, String)) -> Option<HttpCall> {
    let method = match &h.method {
        None => "GET".to_string(),
        Some(m) => {
            let text = m.get_ref().trim().to_ascii_uppercase();
            // RFC 9110 token characters.
            let token = !text.is_empty()
                && text
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
            if !token {
                error(
                    m.span(),
                    format!(
                        "`http.method`: `{}` is not an HTTP method such as GET or POST",
                        m.get_ref()
                    ),
                );
                return None;
            }
            text
        }
    };
    let url_text = h.url.get_ref().trim();
    match url::Url::parse(url_text) {
        Ok(u) if matches!(u.scheme(), "http" | "https") => {}
        Ok(u) => {
            error(
                h.url.span(),
                format!("`http.url`: scheme `{}` is not http or https", u.scheme()),
            );
            return None;
        }
        Err(e) => {
            error(
                h.url.span(),
                format!(
                    "`http.url`: `{}` is not a URL ({e})",
                    secrets::redact_uri(url_text)
                ),
            );
            return None;
        }
    }
    let mut headers: BTreeMap<String, Value> = BTreeMap::new();
    if let Some(table) = &h.headers {
        for (name, value) in table.get_ref() {
            let json = toml_to_json(value);
            let valid_name = !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
            if !valid_name {
                error(
                    table.span(),
                    format!("`http.headers`: `{name}` is not a header name"),
                );
                return None;
            }
            let ok = match &json {
                Value::String(s) => !s.contains(['\r', '\n', '\0']),
                other => secrets::env_reference(other).is_some(),
            };
            if !ok {
                error(
                    table.span(),
                    format!(
                        "`http.headers.{name}` must be a string (without line breaks) or {{ env = \"NAME\" }}"
                    ),
                );
                return None;
            }
            headers.insert(name.clone(), json);
        }
        if let Err(e) =
            secrets::with_placeholders(&Value::Object(headers.clone().into_iter().collect()))
        {
            error(table.span(), format!("`http.headers`: {e}"));
            return None;
        }
    }
    let body = match (&h.json, &h.body) {
        (Some(_), Some(_)) => {
            error(
                h.url.span(),
                "`http` has both `json` and `body`; send one".into(),
            );
            return None;
        }
        (Some(json), None) => HttpBody::Json(toml_to_json(json)),
        (None, Some(text)) => HttpBody::Text(text.clone()),
        (None, None) => HttpBody::Empty,
    };
    let expect_status = match &h.expect_status {
        None => Vec::new(),
        Some(v) => {
            let items: Vec<&toml::Value> = match v.get_ref() {
                toml::Value::Array(items) => items.iter().collect(),
                one => vec![one],
            };
            let mut statuses = Vec::with_capacity(items.len());
            for item in items {
                match item.as_integer().and_then(|i| u16::try_from(i).ok()) {
                    Some(code) if (100..=599).contains(&code) => statuses.push(code),
                    _ => {
                        error(
                            v.span(),
                            format!(
                                "`http.expect_status`: `{}` is not an HTTP status (100 to 599)",
                                toml_to_json(item)
                            ),
                        );
                        return None;
                    }
                }
            }
            statuses
        }
    };
    let timeout = match duration(&h.timeout, "http.timeout", error) {
        Ok(Some(d)) if d.is_zero() => {
            if let Some(t) = &h.timeout {
                error(t.span(), "`http.timeout` must be longer than zero".into());
            }
            return None;
        }
        Ok(d) => d.unwrap_or(task::DEFAULT_HTTP_TIMEOUT),
        Err(()) => return None,
    };
    Some(HttpCall {
        method,
        url: url_text.to_string(),
        headers,
        body,
        expect_status,
        timeout,
    })
}

fn airflow_call(
    a: &AirflowDoc,
    error: &mut impl FnMut(Range<usize>, String),
) -> Option<AirflowCall> {
    let base_url = a.base_url.get_ref().trim().trim_end_matches('/');
    match url::Url::parse(base_url) {
        Ok(u) if matches!(u.scheme(), "http" | "https") => {}
        _ => {
            error(
                a.base_url.span(),
                format!(
                    "`airflow.base_url`: `{}` is not an http(s) URL such as http://airflow:8080",
                    secrets::redact_uri(base_url)
                ),
            );
            return None;
        }
    }
    let dag_id = a.dag_id.get_ref().trim();
    if let Err(e) = names::check(dag_id) {
        error(a.dag_id.span(), format!("`airflow.dag_id` {e}"));
        return None;
    }
    let mut credential = |field: &str, value: &Spanned<toml::Value>| {
        let json = toml_to_json(value.get_ref());
        match &json {
            Value::String(s) if !s.is_empty() => Some(json),
            other if secrets::env_reference(other).is_some() => Some(json),
            _ => {
                error(
                    value.span(),
                    format!("`airflow.{field}` must be a string or {{ env = \"NAME\" }}"),
                );
                None
            }
        }
    };
    let username = credential("username", &a.username)?;
    let password = credential("password", &a.password)?;
    if matches!(password, Value::String(_)) {
        tracing::warn!(
            "`airflow.password` is a literal secret and is stored in the database as written; use {{ env = \"NAME\" }} to keep it in the executor's and triggerer's environment"
        );
    }
    let poll_interval = match duration(&a.poll_interval, "airflow.poll_interval", error) {
        Ok(Some(d)) if d < std::time::Duration::from_secs(1) => {
            if let Some(p) = &a.poll_interval {
                error(
                    p.span(),
                    "`airflow.poll_interval` must be at least 1s".into(),
                );
            }
            return None;
        }
        Ok(d) => d.unwrap_or(std::time::Duration::from_secs(5)),
        Err(()) => return None,
    };
    Some(AirflowCall {
        base_url: base_url.to_string(),
        dag_id: dag_id.to_string(),
        username,
        password,
        conf: a
            .conf
            .as_ref()
            .map(|c| toml_to_json(&toml::Value::Table(c.clone())))
            .unwrap_or_else(|| Value::Object(Default::default())),
        poll_interval,
    })
}

/// An optional duration field; `Err` once its error is reported.
fn duration(
    field: &Option<Spanned<String>>,
    name: &str,
    error: &mut impl FnMut(Range<usize>, String),
) -> Result<Option<std::time::Duration>, ()> {
    match field {
        None => Ok(None),
        Some(text) => match task::parse_duration(text.get_ref()) {
            Ok(d) => Ok(Some(d)),
            Err(e) => {
                error(text.span(), format!("`{name}`: {e}"));
                Err(())
            }
        },
    }
}

//! Secrets in watcher kwargs. A value may be an environment reference, `{ env = "NAME" }`:
//! definitions, the database, trigger identity and every CLI listing keep the reference, never
//! the value, and only the triggerer process resolves it, just before it builds the trigger.
//! Literal values under sensitive keys (passwords, tokens, …) are masked wherever kwargs are
//! shown, and so is the password of a URI's userinfo (`scheme://user:***@host`). A
//! [`Scrubber`], built from a trigger's kwargs each time it starts, takes the secrets back out
//! of whatever error text a source library made of them before that text is stored or logged.
//! This module owns that vocabulary; it must not read or write the database.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde_json::{Map, Value};
use thiserror::Error;

/// The one key of an environment reference.
const ENV_KEY: &str = "env";
/// What a masked value is shown as.
pub const MASK: &str = "***";
/// Starts every placeholder that stands for a reference during validation.
const PLACEHOLDER_PREFIX: &str = "${env:";

#[derive(Debug, Error, PartialEq, Eq)]
pub enum SecretError {
    #[error("kwargs `{path}`: environment variable `{name}` is not set in this triggerer")]
    NotSet { path: String, name: String },
    #[error("kwargs `{path}`: environment variable `{name}` is not valid UTF-8")]
    NotUnicode { path: String, name: String },
    #[error("kwargs `{path}`: `{{ env = … }}` needs a variable name (letters, digits, `_`)")]
    BadName { path: String },
    #[error(
        "kwargs `{path}`: an environment reference must be a whole value, not part of one \
         (here it ended up inside `{value}`)"
    )]
    Embedded { path: String, value: String },
}

/// The variable an environment reference names: an object whose only key is `env`, a string.
pub fn env_reference(value: &Value) -> Option<&str> {
    match value {
        Value::Object(map) if map.len() == 1 => map.get(ENV_KEY)?.as_str(),
        _ => None,
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Rebuilds `value`: a node for which `f` (given its path) returns a replacement is replaced,
/// the others are copied with their children rebuilt the same way.
fn rewrite<E>(
    value: &Value,
    path: &mut Vec<String>,
    f: &mut impl FnMut(&Value, &[String]) -> Option<Result<Value, E>>,
) -> Result<Value, E> {
    if let Some(replaced) = f(value, path) {
        return replaced;
    }
    Ok(match value {
        Value::Object(map) => {
            let mut out = Map::with_capacity(map.len());
            for (k, v) in map {
                path.push(k.clone());
                let rebuilt = rewrite(v, path, f);
                path.pop();
                out.insert(k.clone(), rebuilt?);
            }
            Value::Object(out)
        }
        Value::Array(items) => {
            let mut out = Vec::with_capacity(items.len());
            for (i, v) in items.iter().enumerate() {
                path.push(i.to_string());
                let rebuilt = rewrite(v, path, f);
                path.pop();
                out.push(rebuilt?);
            }
            Value::Array(out)
        }
        other => other.clone(),
    })
}

/// Replaces every reference with what `f` makes of its path (`kafka_config.sasl.password`)
/// and variable name.
fn replace_references<E>(
    value: &Value,
    f: &mut impl FnMut(&str, &str) -> Result<Value, E>,
) -> Result<Value, E> {
    rewrite(value, &mut Vec::new(), &mut |v, path| {
        env_reference(v).map(|name| f(&path.join("."), name))
    })
}

/// Resolves every reference with `lookup` (the process environment in the triggerer).
pub fn resolve(
    kwargs: &Value,
    lookup: impl Fn(&str) -> Result<String, std::env::VarError>,
) -> Result<Value, SecretError> {
    replace_references(kwargs, &mut |path, name| {
        if !valid_name(name) {
            return Err(SecretError::BadName { path: path.into() });
        }
        match lookup(name) {
            Ok(value) => Ok(Value::String(value)),
            Err(std::env::VarError::NotPresent) => Err(SecretError::NotSet {
                path: path.into(),
                name: name.into(),
            }),
            Err(std::env::VarError::NotUnicode(_)) => Err(SecretError::NotUnicode {
                path: path.into(),
                name: name.into(),
            }),
        }
    })
}

/// [`resolve`] from this process's environment.
pub fn resolve_from_env(kwargs: &Value) -> Result<Value, SecretError> {
    resolve(kwargs, |name| std::env::var(name))
}

/// Kwargs with every reference replaced by a placeholder string, for validation where the
/// variables are not set (`dags sync` runs anywhere); [`Placeholders::restore`] puts the
/// references back into whatever the validator derived from them.
pub fn with_placeholders(kwargs: &Value) -> Result<(Value, Placeholders), SecretError> {
    let mut names = HashMap::new();
    let value = replace_references(kwargs, &mut |path, name| {
        if !valid_name(name) {
            return Err(SecretError::BadName { path: path.into() });
        }
        let placeholder = format!("{PLACEHOLDER_PREFIX}{name}}}");
        names.insert(placeholder.clone(), name.to_string());
        Ok(Value::String(placeholder))
    })?;
    Ok((value, Placeholders { names }))
}

/// The placeholders [`with_placeholders`] made, by the variable they stand for.
#[derive(Debug, Default)]
pub struct Placeholders {
    names: HashMap<String, String>,
}

impl Placeholders {
    /// Turns each placeholder in `value` back into its reference. A placeholder that ended up
    /// inside a longer string (a URI built from it) cannot be resolved later: an error.
    pub fn restore(&self, value: &Value) -> Result<Value, SecretError> {
        if self.names.is_empty() {
            return Ok(value.clone());
        }
        rewrite(value, &mut Vec::new(), &mut |v, path| {
            let Value::String(s) = v else { return None };
            Some(match self.names.get(s) {
                Some(name) => Ok(Value::Object(Map::from_iter([(
                    ENV_KEY.to_string(),
                    Value::String(name.clone()),
                )]))),
                // The rest of the value may be a URI with a literal password in it.
                None if s.contains(PLACEHOLDER_PREFIX) => Err(SecretError::Embedded {
                    path: path.join("."),
                    value: redact_uri(s),
                }),
                None => Ok(v.clone()),
            })
        })
    }
}

/// Whether a kwarg or client-setting name holds a secret: the SDK's one vocabulary, shared
/// with the providers (which must not depend on the core).
pub use triggerer_sdk::is_sensitive_key as is_sensitive;

/// Whether `value`, found at `path`, is a literal secret: a non-empty scalar under a
/// sensitive key.
fn is_literal_secret(value: &Value, path: &[String]) -> bool {
    let scalar = match value {
        Value::String(s) => !s.is_empty(),
        Value::Number(_) | Value::Bool(_) => true,
        _ => false,
    };
    scalar && path.last().is_some_and(|key| is_sensitive(key))
}

/// Kwargs for display: literal values under sensitive keys become [`MASK`], and so does the
/// password of every URI in a string value; references stay (a variable's name is not a
/// secret).
pub fn mask(kwargs: &Value) -> Value {
    let masked: Result<Value, std::convert::Infallible> =
        rewrite(kwargs, &mut Vec::new(), &mut |v, path| {
            if env_reference(v).is_some() {
                Some(Ok(v.clone()))
            } else if is_literal_secret(v, path) {
                Some(Ok(Value::String(MASK.into())))
            } else if let Value::String(s) = v {
                Some(Ok(Value::String(redact_uri(s))))
            } else {
                None
            }
        });
    masked.unwrap_or_else(|never| match never {})
}

/// Paths of literal (not referenced) values under sensitive keys: `dags sync` warns about them,
/// since they are stored in the database as written.
pub fn literal_secrets(kwargs: &Value) -> Vec<String> {
    let mut found = Vec::new();
    let _: Result<Value, std::convert::Infallible> =
        rewrite(kwargs, &mut Vec::new(), &mut |v, path| {
            if is_literal_secret(v, path) {
                found.push(path.join("."));
            }
            None
        });
    found
}

/// Paths of literal string values holding a URI with a password in its userinfo
/// (`kafka://user:pw@host/…`, `http://user:pw@host`): stored in the database as written, like
/// [`literal_secrets`], which already names those under a sensitive key (not repeated here).
pub fn uri_credentials(kwargs: &Value) -> Vec<String> {
    let mut found = Vec::new();
    let _: Result<Value, std::convert::Infallible> =
        rewrite(kwargs, &mut Vec::new(), &mut |v, path| {
            if let Value::String(s) = v {
                if !is_literal_secret(v, path) && !uri_passwords(s).is_empty() {
                    found.push(path.join("."));
                }
            }
            None
        });
    found
}

/// Userinfo passwords in URIs: the SDK's one implementation, shared with the providers.
pub use triggerer_sdk::redact_uri;
use triggerer_sdk::uri_passwords;

/// Shortest secret a [`Scrubber`] removes from text. A one- to three-character value (`on`, a
/// digit, `abc`) also occurs inside ordinary words, numbers and hosts: replacing it everywhere
/// would turn every error into noise, while a secret that short is found by guessing anyway.
pub const MIN_SCRUBBED_LEN: usize = 4;

/// Removes one trigger's secrets from error and warning text before it is stored, logged or
/// printed. Libraries echo a setting they refuse (`Unsupported value "…" for configuration
/// property "ssl.key.password"`), and a key with a typo (`sasl.pasword`) defeats any key-based
/// detection, so it removes:
/// - every value an environment reference resolved to, whatever its key;
/// - every literal value under a sensitive key (or inside a table or list under one);
/// - every URI userinfo password in any string value;
///
/// each also as it appears percent-decoded, percent-encoded and quoted-escaped, and then
/// masks the password of any URI left in the text itself.
#[derive(Debug, Clone, Default)]
pub struct Scrubber {
    /// Longest first, so a secret that contains another is replaced whole.
    secrets: Vec<String>,
}

impl Scrubber {
    /// The scrubber for one start of a trigger: `stored` are its kwargs as in the database
    /// (with references), `resolved` what [`resolve`] made of them. When resolving failed,
    /// pass `stored` twice: the literal secrets still count.
    pub fn new(stored: &Value, resolved: &Value) -> Self {
        let mut found = Vec::new();
        collect_secrets(stored, resolved, false, &mut found);
        let mut forms: BTreeSet<String> = BTreeSet::new();
        for secret in &found {
            forms.extend(
                spellings(secret)
                    .into_iter()
                    .filter(|s| s.chars().count() >= MIN_SCRUBBED_LEN),
            );
        }
        let mut secrets: Vec<String> = forms.into_iter().collect();
        secrets.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
        Self { secrets }
    }

    /// `text` with every secret replaced by [`MASK`].
    pub fn scrub(&self, text: &str) -> String {
        let mut out = text.to_string();
        for secret in &self.secrets {
            if out.contains(secret.as_str()) {
                out = out.replace(secret.as_str(), MASK);
            }
        }
        redact_uri(&out)
    }
}

/// The scrubbers of the triggers running in this process, for text that leaves it another way
/// than through the supervisor: a panic message, which Rust's hook prints before anyone can
/// catch it. Registered per trigger start (keyed by the supervisor's start number, so a late
/// end of an earlier start cannot remove a later one's), removed when that start ends.
static RUNNING: std::sync::Mutex<BTreeMap<u64, Scrubber>> = std::sync::Mutex::new(BTreeMap::new());

fn running() -> std::sync::MutexGuard<'static, BTreeMap<u64, Scrubber>> {
    // A panic while the map was held leaves it whole: nothing to repair.
    RUNNING.lock().unwrap_or_else(|p| p.into_inner())
}

/// Makes `scrubber` part of [`scrub_running`] while start number `start` runs.
pub fn register_running(start: u64, scrubber: &Scrubber) {
    if !scrubber.secrets.is_empty() {
        running().insert(start, scrubber.clone());
    }
}

/// Forgets the scrubber of a start that ended.
pub fn unregister_running(start: u64) {
    running().remove(&start);
}

/// `text` with the secrets of every running trigger removed, and URI passwords masked.
pub fn scrub_running(text: &str) -> String {
    let running = running();
    let mut out = text.to_string();
    for scrubber in running.values() {
        out = scrubber.scrub(&out);
    }
    redact_uri(&out)
}

/// Walks the stored kwargs beside the resolved ones (they differ only where a reference was),
/// pushing every secret value. `sensitive`: a key above this node is sensitive.
fn collect_secrets(stored: &Value, resolved: &Value, sensitive: bool, out: &mut Vec<String>) {
    if env_reference(stored).is_some() {
        if let Value::String(s) = resolved {
            out.push(s.clone());
            out.extend(uri_passwords(s).into_iter().map(|r| s[r].to_string()));
        }
        return;
    }
    match (stored, resolved) {
        (Value::Object(stored), Value::Object(resolved)) => {
            for (key, value) in stored {
                if let Some(resolved) = resolved.get(key) {
                    collect_secrets(value, resolved, sensitive || is_sensitive(key), out);
                }
            }
        }
        (Value::Array(stored), Value::Array(resolved)) => {
            for (value, resolved) in stored.iter().zip(resolved) {
                collect_secrets(value, resolved, sensitive, out);
            }
        }
        (_, Value::String(s)) => {
            if sensitive {
                out.push(s.clone());
            }
            out.extend(uri_passwords(s).into_iter().map(|r| s[r].to_string()));
        }
        (_, Value::Number(n)) if sensitive => out.push(n.to_string()),
        _ => {}
    }
}

/// The ways a library may print `secret`: as it is, percent-decoded (a URI password the
/// library decoded), percent-encoded (one it put in a URL), and escaped inside quotes (Rust's
/// `{:?}`, JSON).
fn spellings(secret: &str) -> Vec<String> {
    let mut forms = vec![secret.to_string(), percent_encode(secret)];
    // A path or URL comes back without its trailing separators once a library normalised it
    // (`/data/in/` is reported as directory `/data/in`).
    let trimmed = secret.trim_end_matches(['/', '\\']);
    if trimmed.len() < secret.len() {
        forms.push(trimmed.to_string());
    }
    if let Some(decoded) = percent_decode(secret) {
        forms.push(decoded);
    }
    let debug = format!("{secret:?}");
    forms.push(debug[1..debug.len() - 1].to_string());
    if let Ok(json) = serde_json::to_string(secret) {
        forms.push(json[1..json.len() - 1].to_string());
    }
    forms
}

fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `None` when `s` has no valid escape or decodes to something other than UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut changed = false;
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| char::from(b).to_digit(16);
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push(u8::try_from(h * 16 + l).ok()?);
                changed = true;
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    if changed {
        String::from_utf8(out).ok()
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Result<String, std::env::VarError> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| {
            vars.get(name)
                .cloned()
                .ok_or(std::env::VarError::NotPresent)
        }
    }

    #[test]
    fn references_resolve_anywhere_in_kwargs() {
        let kwargs = json!({
            "topics": ["a"],
            "kafka_config": {"sasl.password": {"env": "KAFKA_PASSWORD"}, "acks": "all"},
            "list": [{"env": "X"}]
        });
        let resolved =
            resolve(&kwargs, env(&[("KAFKA_PASSWORD", "hunter2"), ("X", "x")])).expect("resolves");
        assert_eq!(
            resolved,
            json!({
                "topics": ["a"],
                "kafka_config": {"sasl.password": "hunter2", "acks": "all"},
                "list": ["x"]
            })
        );
    }

    #[test]
    fn a_missing_variable_names_the_kwarg_and_the_variable() {
        let kwargs = json!({"kafka_config": {"sasl.password": {"env": "KAFKA_PASSWORD"}}});
        let err = resolve(&kwargs, env(&[])).expect_err("missing");
        assert_eq!(
            err.to_string(),
            "kwargs `kafka_config.sasl.password`: environment variable `KAFKA_PASSWORD` is not set in this triggerer"
        );
        let err = resolve(&json!({"p": {"env": "1 bad"}}), env(&[])).expect_err("bad name");
        assert!(matches!(err, SecretError::BadName { ref path } if path == "p"));
    }

    #[test]
    fn only_a_lone_env_key_is_a_reference() {
        assert_eq!(env_reference(&json!({"env": "A"})), Some("A"));
        assert_eq!(env_reference(&json!({"env": "A", "other": 1})), None);
        assert_eq!(env_reference(&json!({"env": 1})), None);
        let kwargs = json!({"opts": {"env": "A", "other": 1}});
        assert_eq!(resolve(&kwargs, env(&[])).expect("no reference"), kwargs);
    }

    #[test]
    fn placeholders_round_trip_through_derived_kwargs() {
        let kwargs =
            json!({"queue": "kafka://h:9092/t", "kafka_config": {"sasl.password": {"env": "P"}}});
        let (validated, placeholders) = with_placeholders(&kwargs).expect("placeholders");
        assert_eq!(
            validated["kafka_config"]["sasl.password"],
            json!("${env:P}")
        );
        // What a dispatcher derives keeps the placeholder as a whole value: restored.
        let derived = json!({"topics": ["t"], "kafka_config": validated["kafka_config"].clone()});
        assert_eq!(
            placeholders.restore(&derived).expect("restored"),
            json!({"topics": ["t"], "kafka_config": {"sasl.password": {"env": "P"}}})
        );
        // Spliced into a URI, it could never be resolved: an error naming where it went.
        let spliced = json!({"bootstrap_servers": "${env:P}:9092"});
        let err = placeholders.restore(&spliced).expect_err("embedded");
        assert!(err.to_string().contains("`bootstrap_servers`"), "{err}");
    }

    #[test]
    fn masking_hides_literal_secrets_and_keeps_references() {
        let kwargs = json!({
            "topics": ["a"],
            "kafka_config": {
                "sasl.password": "hunter2",
                "sasl.username": "svc",
                "ssl.key.password": {"env": "KEY_PASS"},
                "sasl.oauthbearer.client.secret": "s3"
            },
            "aws_secret_access_key": "AKIA…"
        });
        assert_eq!(
            mask(&kwargs),
            json!({
                "topics": ["a"],
                "kafka_config": {
                    "sasl.password": MASK,
                    "sasl.username": "svc",
                    "ssl.key.password": {"env": "KEY_PASS"},
                    "sasl.oauthbearer.client.secret": MASK
                },
                "aws_secret_access_key": MASK
            })
        );
        let mut found = literal_secrets(&kwargs);
        found.sort();
        assert_eq!(
            found,
            vec![
                "aws_secret_access_key",
                "kafka_config.sasl.oauthbearer.client.secret",
                "kafka_config.sasl.password"
            ]
        );
    }

    #[test]
    fn uri_passwords_are_masked_for_display() {
        assert_eq!(
            redact_uri("postgres://u:secret@h/db"),
            "postgres://u:***@h/db"
        );
        assert_eq!(redact_uri("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(redact_uri("sqlite://x.db"), "sqlite://x.db");
        assert_eq!(redact_uri("no uri here: a:b@c"), "no uri here: a:b@c");
        // An unencoded `@` in the password: the host is after the last one.
        assert_eq!(
            redact_uri("kafka://u:p@ss@h:9092/t"),
            "kafka://u:***@h:9092/t"
        );
        // Unencoded `/` (base64) in the password.
        assert_eq!(redact_uri("http://u:ab/c+d=@h:1/x"), "http://u:***@h:1/x");
        // An `@` in the path, no userinfo.
        assert_eq!(redact_uri("http://h/a@b"), "http://h/a@b");
        // Every URI of a list, and inside running text.
        assert_eq!(
            redact_uri("sasl://u:p1@h1,sasl://u:p2@h2"),
            "sasl://u:***@h1,sasl://u:***@h2"
        );
        assert_eq!(
            redact_uri("cannot reach `http://svc:hunter2@127.0.0.1:5000`: refused"),
            "cannot reach `http://svc:***@127.0.0.1:5000`: refused"
        );
        // An empty password has nothing to hide.
        assert_eq!(redact_uri("http://u:@h"), "http://u:@h");
    }

    #[test]
    fn masking_hides_uri_passwords_anywhere_and_sync_can_name_them() {
        let kwargs = json!({
            "endpoint_url": "http://svc:hunter2@127.0.0.1:5000",
            "queue": "kafka://u:pw@b:9092/t",
            "list": ["https://a:b@h/x", "plain"],
            "db_password": "postgres://u:pw@h/db",
            "sqs_queue": {"env": "Q"}
        });
        assert_eq!(
            mask(&kwargs),
            json!({
                "endpoint_url": "http://svc:***@127.0.0.1:5000",
                "queue": "kafka://u:***@b:9092/t",
                "list": ["https://a:***@h/x", "plain"],
                "db_password": MASK,
                "sqs_queue": {"env": "Q"}
            })
        );
        let mut found = uri_credentials(&kwargs);
        found.sort();
        // `db_password` is a literal secret already: `literal_secrets` names it.
        assert_eq!(found, vec!["endpoint_url", "list.0", "queue"]);
        assert_eq!(literal_secrets(&kwargs), vec!["db_password"]);
    }

    fn scrubber_for(stored: &Value, vars: &[(&str, &str)]) -> Scrubber {
        let resolved = resolve(stored, env(vars)).expect("resolves");
        Scrubber::new(stored, &resolved)
    }

    #[test]
    fn the_scrubber_removes_referenced_values_whatever_their_key() {
        let stored = json!({
            "kafka_config": {
                // A typo: no key-based rule sees it, but it came from the environment.
                "sasl.pasword": {"env": "TYPO"},
                "ssl.key.password": {"env": "KEY_PASS"},
                "acks": "all"
            },
            "bootstrap_servers": "b:9092"
        });
        let scrubber = scrubber_for(
            &stored,
            &[("TYPO", "c4n4ry-typo"), ("KEY_PASS", "k3y-p4ss")],
        );
        let text = "Client config error: No such configuration property: \"sasl.pasword\" \
                    sasl.pasword c4n4ry-typo; Unsupported value \"k3y-p4ss\" for \
                    configuration property \"ssl.key.password\" (acks all, b:9092)";
        let scrubbed = scrubber.scrub(text);
        assert!(
            !scrubbed.contains("c4n4ry-typo") && !scrubbed.contains("k3y-p4ss"),
            "{scrubbed}"
        );
        assert!(scrubbed.contains("sasl.pasword ***;"), "{scrubbed}");
        // What is not secret stays readable.
        assert!(scrubbed.contains("acks all, b:9092"), "{scrubbed}");
    }

    #[test]
    fn the_scrubber_removes_literal_secrets_and_uri_passwords() {
        let stored = json!({
            "kafka_config": {"sasl.password": "l1teral-pw", "sasl.username": "svc-user"},
            "aws": {"credentials": {"id": "n3sted-id"}, "pin_token": 98765},
            "endpoint_url": "http://svc:ur1-p%40ss@127.0.0.1:5000",
            "from_env": {"env": "URL"}
        });
        let scrubber = scrubber_for(&stored, &[("URL", "http://u:env-uri-pw@h:1")]);
        for (secret, text) in [
            ("l1teral-pw", "auth failed for password l1teral-pw"),
            ("n3sted-id", "bad id n3sted-id"),
            ("98765", "token 98765 refused"),
            // The library decoded the password, or printed it on its own.
            ("ur1-p@ss", "login ur1-p@ss refused"),
            ("ur1-p%40ss", "password ur1-p%40ss refused"),
            ("env-uri-pw", "password env-uri-pw refused"),
            (
                "http://u:env-uri-pw@h:1",
                "cannot reach http://u:env-uri-pw@h:1",
            ),
        ] {
            let scrubbed = scrubber.scrub(text);
            assert!(!scrubbed.contains(secret), "{secret} in {scrubbed}");
            assert!(scrubbed.contains(MASK), "{scrubbed}");
        }
        // Not a secret: the user name.
        assert_eq!(scrubber.scrub("user svc-user"), "user svc-user");
        // A URI password in the error text itself is masked though it is in no kwarg.
        assert_eq!(
            scrubber.scrub("redirected to https://x:other@h/"),
            "redirected to https://x:***@h/"
        );
    }

    #[test]
    fn the_scrubber_catches_quoted_and_encoded_spellings() {
        let stored = json!({"p": {"env": "P"}});
        let scrubber = scrubber_for(&stored, &[("P", "we\"ird pa/ss")]);
        for text in [
            "value we\"ird pa/ss",
            "value \"we\\\"ird pa/ss\"", // {:?} and JSON escape the quote
            "url ?p=we%22ird%20pa%2Fss",
        ] {
            let scrubbed = scrubber.scrub(text);
            assert!(!scrubbed.contains("ird pa"), "{text} -> {scrubbed}");
            assert!(!scrubbed.contains("ird%20pa"), "{text} -> {scrubbed}");
        }
    }

    #[test]
    fn very_short_secrets_are_not_scrubbed() {
        let stored = json!({"a": {"env": "A"}, "password": "xyz", "token": "abcd"});
        let scrubber = scrubber_for(&stored, &[("A", "on")]);
        // `on`, `xyz` would turn ordinary words into `***`: below MIN_SCRUBBED_LEN.
        assert_eq!(
            scrubber.scrub("connection refused, xyz"),
            "connection refused, xyz"
        );
        assert_eq!(scrubber.scrub("token abcd"), "token ***");
    }

    #[test]
    fn a_failed_resolution_still_scrubs_literals() {
        let stored = json!({"password": "l1teral-pw", "other": {"env": "UNSET"}});
        let scrubber = Scrubber::new(&stored, &stored);
        assert_eq!(scrubber.scrub("pw l1teral-pw"), "pw ***");
        // The reference itself is a name, not a value.
        assert_eq!(scrubber.scrub("UNSET is not set"), "UNSET is not set");
    }

    #[test]
    fn a_secret_containing_another_is_replaced_whole() {
        let stored = json!({"a": {"env": "A"}, "b": {"env": "B"}});
        let scrubber = scrubber_for(&stored, &[("A", "abcd"), ("B", "abcdefgh")]);
        assert_eq!(scrubber.scrub("x abcdefgh y abcd"), "x *** y ***");
    }

    #[test]
    fn a_spliced_reference_error_masks_uri_passwords() {
        let (_, placeholders) = with_placeholders(&json!({"p": {"env": "P"}})).expect("ok");
        let err = placeholders
            .restore(&json!({"q": "kafka://u:pw@${env:P}/t"}))
            .expect_err("embedded");
        assert!(!err.to_string().contains(":pw@"), "{err}");
    }

    #[test]
    fn sensitive_keys_survive_one_typo() {
        for key in [
            "sasl.pasword",
            "sasl.passowrd",
            "ssl.keystore.pasword",
            "sasl.oauthbearer.client.secert",
            "aws_secrte_access_key",
            "credentail",
            "ssl_key_passphrse",
            "dbPassw0rd",
        ] {
            assert!(is_sensitive(key), "{key}");
        }
        for key in [
            "topics",
            "bootstrap_servers",
            "sasl.username",
            "group_id",
            "messages_passed",
            "taken",
            "secure",
            "session.timeout.ms",
        ] {
            assert!(!is_sensitive(key), "{key}");
        }
        let kwargs = json!({"kafka_config": {"sasl.pasword": "l1teral-pw"}});
        assert_eq!(
            mask(&kwargs),
            json!({"kafka_config": {"sasl.pasword": MASK}})
        );
        assert_eq!(literal_secrets(&kwargs), vec!["kafka_config.sasl.pasword"]);
    }

    #[test]
    fn running_scrubbers_serve_text_from_outside_the_supervisor() {
        let stored = json!({"p": {"env": "P"}});
        let resolved = json!({"p": "canary-running-1"});
        let scrubber = Scrubber::new(&stored, &resolved);
        register_running(u64::MAX, &scrubber);
        assert_eq!(
            scrub_running("panicked: bad value canary-running-1"),
            "panicked: bad value ***"
        );
        unregister_running(u64::MAX);
        assert_eq!(
            scrub_running("canary-running-1 at kafka://u:pw@h"),
            "canary-running-1 at kafka://u:***@h"
        );
    }

    #[test]
    fn a_path_secret_is_scrubbed_without_its_trailing_slash_too() {
        let stored = json!({"filepath": {"env": "D"}});
        let resolved = json!({"filepath": "/data/secret-place/"});
        let scrubber = Scrubber::new(&stored, &resolved);
        assert_eq!(
            scrubber.scrub(
                "filepath \"/data/secret-place/\": directory /data/secret-place does not exist"
            ),
            "filepath \"***\": directory *** does not exist"
        );
    }
}

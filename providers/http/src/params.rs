//! The kwargs of `http.WebhookTrigger`, parsed without I/O (validation runs at `dags sync`,
//! with environment references still `${env:NAME}` placeholders, which any non-empty secret
//! is). It owns their rules and must never show the secret: not in an error, not in `Debug`.

use std::fmt;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;
use triggerer_sdk::de::non_blank;

/// `signature_header` when not given: GitHub's.
pub const DEFAULT_SIGNATURE_HEADER: &str = "X-Hub-Signature-256";

/// The longest `path`, in characters.
pub const MAX_PATH_LEN: usize = 200;

pub(crate) const HINTS: &[(&str, &str)] = &[
    (
        "path",
        "where requests are posted, below /webhooks/, e.g. `github`",
    ),
    (
        "secret",
        "the secret the sender signs with, best as { env = \"NAME\" }",
    ),
    (
        "signature_header",
        "a header name such as `X-Hub-Signature-256`",
    ),
    ("dedup_header", "a header name such as `X-GitHub-Delivery`"),
];

/// Kwargs of one `http.WebhookTrigger`. `Debug` masks the secret.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a table with `path` and `secret` (and optionally `signature_header` and \
                 `dedup_header`)"
)]
pub struct WebhookParams {
    /// Below `/webhooks/`: `github` is served at `POST /webhooks/github`.
    #[serde(deserialize_with = "push_path")]
    pub path: String,
    /// Kept as written (a secret may start or end with a space).
    #[serde(deserialize_with = "non_blank")]
    pub secret: String,
    /// The header holding the body's HMAC-SHA256, as written (headers match in any case).
    #[serde(default = "default_signature_header", deserialize_with = "header_name")]
    pub signature_header: String,
    /// The header identifying a delivery, kept across redeliveries.
    #[serde(default, deserialize_with = "optional_header_name")]
    pub dedup_header: Option<String>,
}

impl fmt::Debug for WebhookParams {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookParams")
            .field("path", &self.path)
            .field("secret", &"***")
            .field("signature_header", &self.signature_header)
            .field("dedup_header", &self.dedup_header)
            .finish()
    }
}

fn default_signature_header() -> String {
    DEFAULT_SIGNATURE_HEADER.to_string()
}

/// Why `path` cannot be served, or `None` when it can.
pub(crate) fn path_problem(path: &str) -> Option<String> {
    if path.is_empty() {
        return Some("must not be empty; write one such as `github`".into());
    }
    if path.chars().count() > MAX_PATH_LEN {
        return Some(format!("is longer than {MAX_PATH_LEN} characters"));
    }
    if let Some(c) = path
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/')))
    {
        return Some(format!(
            "holds {c:?}; use only letters, digits, `.`, `_`, `-` and `/` between segments"
        ));
    }
    if path.starts_with('/') || path.ends_with('/') {
        return Some(format!(
            "`{path}` starts or ends with `/`; write it without, as in `{}`",
            path.trim_matches('/')
        ));
    }
    if path.split('/').any(str::is_empty) {
        return Some(format!("`{path}` has an empty segment (`//`)"));
    }
    if path
        .split('/')
        .any(|segment| segment == "." || segment == "..")
    {
        return Some(format!("`{path}` has a `.` or `..` segment"));
    }
    None
}

/// Why `name` is no HTTP header name (RFC 9110 token), or `None` when it is one.
fn header_problem(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        return Some("must not be empty");
    }
    let token = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
    if !name.chars().all(token) {
        return Some(
            "is no HTTP header name (letters, digits and `-`, as in `X-Hub-Signature-256`)",
        );
    }
    None
}

/// A visitor of one string, handed to `parse`; `expecting` is what a value of another type
/// is told.
struct StrVisitor<F> {
    expecting: &'static str,
    parse: F,
}

impl<T, F> Visitor<'_> for StrVisitor<F>
where
    F: FnOnce(&str) -> Result<T, String>,
{
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.expecting)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
        (self.parse)(v).map_err(E::custom)
    }
}

fn push_path<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    d.deserialize_str(StrVisitor {
        expecting: "a path such as `github`",
        parse: |v: &str| match path_problem(v) {
            Some(problem) => Err(problem),
            None => Ok(v.to_string()),
        },
    })
}

fn parse_header_name(v: &str) -> Result<String, String> {
    let name = v.trim();
    match header_problem(name) {
        Some(problem) => Err(problem.to_string()),
        None => Ok(name.to_string()),
    }
}

fn header_name<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    d.deserialize_str(StrVisitor {
        expecting: "a header name",
        parse: parse_header_name,
    })
}

fn optional_header_name<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    header_name(d).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        for good in [
            "github",
            "gh/org-1/repo_2",
            "a.b",
            "v1.2/x",
            &"a".repeat(200),
        ] {
            assert_eq!(path_problem(good), None, "{good}");
        }
        for (bad, says) in [
            ("", "must not be empty"),
            ("/github", "starts or ends with `/`"),
            ("github/", "write it without, as in `github`"),
            ("a//b", "empty segment"),
            ("a/../b", "`..` segment"),
            ("..", "`..` segment"),
            ("a/./b", "`.` or `..` segment"),
            ("a b", "holds ' '"),
            ("a?b=1", "holds '?'"),
            ("é", "holds 'é'"),
            (&"a".repeat(201), "longer than 200 characters"),
        ] {
            let problem = path_problem(bad).unwrap_or_else(|| panic!("{bad:?} accepted"));
            assert!(problem.contains(says), "{bad:?}: {problem}");
        }
    }

    #[test]
    fn header_names() {
        assert_eq!(
            parse_header_name(" X-GitHub-Delivery "),
            Ok("X-GitHub-Delivery".into())
        );
        assert!(parse_header_name("X Hub").is_err());
        assert!(parse_header_name("X-Hub:").is_err());
        assert!(parse_header_name("  ").is_err());
    }
}

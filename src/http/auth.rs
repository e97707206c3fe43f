//! Who may call the HTTP server: API tokens (`name:scope:token`, from `TRIGGERER_API_TOKENS`
//! or `--api-tokens-file`), their scopes, and the middleware that checks every request. It
//! owns the rule that a request reading needs `read` and one changing anything needs `write`;
//! it must not know what a route does beyond its method and whether it is open (`/health`,
//! and webhooks, which prove themselves by their signature).

use std::fmt;
use std::path::Path;

use axum::extract::{Request, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use sha2::{Digest, Sha256};
use thiserror::Error;

use super::{ApiError, AppState};

/// What a token allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Scope {
    /// `GET`: lists, the UI, `/metrics`.
    Read,
    /// Everything `read` allows, and pushes, manual runs, pauses.
    Write,
}

impl Scope {
    fn parse(text: &str) -> Option<Self> {
        match text {
            "read" => Some(Scope::Read),
            "write" => Some(Scope::Write),
            _ => None,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Write => "write",
        }
    }
}

/// One configured token. Only its digest is kept, so a heap dump or a debug print holds no
/// token.
#[derive(Clone)]
struct ApiToken {
    name: String,
    scope: Scope,
    digest: [u8; 32],
}

impl fmt::Debug for ApiToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:***", self.name, self.scope.as_str())
    }
}

/// The configured tokens; empty means the server accepts everyone (and then listens only on
/// loopback).
#[derive(Debug, Clone, Default)]
pub struct ApiTokens(Vec<ApiToken>);

#[derive(Debug, Error, PartialEq, Eq)]
pub enum TokenError {
    #[error(
        "{source_name}: entry {index}: expected `name:scope:token` with scope `read` or `write`, got {got}"
    )]
    Malformed {
        source_name: String,
        index: usize,
        /// What was wrong, never the token itself.
        got: String,
    },
    #[error("{source_name}: entry {index}: the token of `{name}` is shorter than 16 characters")]
    TooShort {
        source_name: String,
        index: usize,
        name: String,
    },
    #[error("{source_name}: entry {index}: the name `{name}` is used twice")]
    Duplicate {
        source_name: String,
        index: usize,
        name: String,
    },
    #[error("{path}: cannot read the API tokens: {error}")]
    Unreadable { path: String, error: String },
}

impl ApiTokens {
    /// Parses a comma- or newline-separated list of `name:scope:token` (blank entries and
    /// `#` comment lines skipped); `source_name` says where it came from in errors.
    pub fn parse(text: &str, source_name: &str) -> Result<Self, TokenError> {
        let mut tokens: Vec<ApiToken> = Vec::new();
        let entries = text
            .split(['\n', ','])
            .map(str::trim)
            .filter(|e| !e.is_empty() && !e.starts_with('#'));
        for (i, entry) in entries.enumerate() {
            let index = i + 1;
            let malformed = |got: &str| TokenError::Malformed {
                source_name: source_name.to_string(),
                index,
                got: got.to_string(),
            };
            let mut parts = entry.splitn(3, ':');
            let (Some(name), Some(scope), Some(token)) = (parts.next(), parts.next(), parts.next())
            else {
                return Err(malformed("fewer than three `:`-separated parts"));
            };
            if name.is_empty() {
                return Err(malformed("an empty name"));
            }
            let scope = Scope::parse(scope)
                .ok_or_else(|| malformed(&format!("scope `{}`", scope.escape_default())))?;
            if token.chars().count() < 16 {
                return Err(TokenError::TooShort {
                    source_name: source_name.to_string(),
                    index,
                    name: name.to_string(),
                });
            }
            if tokens.iter().any(|t| t.name == name) {
                return Err(TokenError::Duplicate {
                    source_name: source_name.to_string(),
                    index,
                    name: name.to_string(),
                });
            }
            tokens.push(ApiToken {
                name: name.to_string(),
                scope,
                digest: digest(token),
            });
        }
        Ok(ApiTokens(tokens))
    }

    /// The tokens of `TRIGGERER_API_TOKENS` (`env`) and of `--api-tokens-file`, together.
    pub fn load(env: Option<&str>, file: Option<&Path>) -> Result<Self, TokenError> {
        let mut tokens = match env {
            Some(text) => Self::parse(text, "TRIGGERER_API_TOKENS")?,
            None => Self::default(),
        };
        if let Some(path) = file {
            let text = std::fs::read_to_string(path).map_err(|e| TokenError::Unreadable {
                path: path.display().to_string(),
                error: e.to_string(),
            })?;
            let from_file = Self::parse(&text, &path.display().to_string())?;
            for token in from_file.0 {
                if tokens.0.iter().any(|t| t.name == token.name) {
                    return Err(TokenError::Duplicate {
                        source_name: path.display().to_string(),
                        index: 0,
                        name: token.name,
                    });
                }
                tokens.0.push(token);
            }
        }
        Ok(tokens)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The scope of the token `presented`, if it is one of ours.
    fn scope_of(&self, presented: &str) -> Option<Scope> {
        let presented = digest(presented);
        // Every token is compared (no early exit), so the time taken does not say which matched.
        self.0.iter().fold(None, |found, t| {
            let same = t
                .digest
                .iter()
                .zip(&presented)
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0;
            if same {
                found.max(Some(t.scope))
            } else {
                found
            }
        })
    }
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// The token a request presents: `Authorization: Bearer TOKEN`, or HTTP Basic with the token
/// as the password (what a browser asks for on the UI's pages).
fn presented(request: &Request) -> Option<String> {
    let value = request
        .headers()
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (kind, rest) = value.split_once(' ')?;
    if kind.eq_ignore_ascii_case("bearer") {
        return Some(rest.trim().to_string());
    }
    if kind.eq_ignore_ascii_case("basic") {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(rest.trim())
            .ok()?;
        let decoded = String::from_utf8(decoded).ok()?;
        return decoded
            .split_once(':')
            .map(|(_, password)| password.to_string());
    }
    None
}

/// Routes anyone may call: health checks have no token to give, and a webhook's sender proves
/// itself with its signature.
fn is_open(path: &str) -> bool {
    path == "/health" || path.starts_with("/webhooks/")
}

/// Pages a browser shows: a refusal asks it for the token (HTTP Basic) instead of answering
/// JSON it would print.
fn is_page(path: &str) -> bool {
    !(path.starts_with("/api/") || path == "/metrics")
}

/// The middleware: every request but the open ones needs a token of the scope its method asks.
pub(super) async fn require(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let tokens = &state.tokens;
    if tokens.is_empty() || is_open(request.uri().path()) {
        return next.run(request).await;
    }
    let needed = if matches!(*request.method(), Method::GET | Method::HEAD) {
        Scope::Read
    } else {
        Scope::Write
    };
    let page = is_page(request.uri().path());
    match presented(&request).and_then(|t| tokens.scope_of(&t)) {
        Some(scope) if scope >= needed => next.run(request).await,
        Some(scope) => ApiError::new(
            StatusCode::FORBIDDEN,
            format!(
                "this token's scope is `{}`; {} {} needs a `{}` token",
                scope.as_str(),
                request.method(),
                request.uri().path(),
                needed.as_str()
            ),
        )
        .into_response(),
        None => {
            let (message, challenge) = if page {
                (
                    "sign in with any user name and an API token as the password",
                    "Basic realm=\"triggerer\", charset=\"UTF-8\"",
                )
            } else {
                (
                    "missing or unknown API token: send `Authorization: Bearer TOKEN`",
                    "Bearer realm=\"triggerer\"",
                )
            };
            let mut response =
                ApiError::new(StatusCode::UNAUTHORIZED, message.to_string()).into_response();
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static(challenge),
            );
            response
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_parse_with_scopes_and_errors_name_the_entry() {
        let tokens = ApiTokens::parse(
            "ci:write:0123456789abcdef0123, grafana:read:fedcba9876543210fedc",
            "TRIGGERER_API_TOKENS",
        )
        .unwrap();
        assert_eq!(tokens.scope_of("0123456789abcdef0123"), Some(Scope::Write));
        assert_eq!(tokens.scope_of("fedcba9876543210fedc"), Some(Scope::Read));
        assert_eq!(tokens.scope_of("0123456789abcdef012"), None);

        let err = ApiTokens::parse("a:admin:0123456789abcdef", "T").unwrap_err();
        assert_eq!(
            err.to_string(),
            "T: entry 1: expected `name:scope:token` with scope `read` or `write`, got scope `admin`"
        );
        let err = ApiTokens::parse("a:read:0123456789abcdef\nb:read:xyzzy42", "f.txt").unwrap_err();
        assert!(
            err.to_string()
                .starts_with("f.txt: entry 2: the token of `b`"),
            "{err}"
        );
        assert!(
            !err.to_string().contains("xyzzy42"),
            "never the token: {err}"
        );
        let err =
            ApiTokens::parse("a:read:0123456789abcdef,a:write:0123456789abcdefg", "T").unwrap_err();
        assert!(matches!(err, TokenError::Duplicate { .. }), "{err}");
        assert!(ApiTokens::parse("# none yet\n\n", "f").unwrap().is_empty());
    }

    #[test]
    fn a_debug_print_holds_no_token() {
        let tokens = ApiTokens::parse("ci:write:0123456789abcdef0123", "T").unwrap();
        let printed = format!("{tokens:?}");
        assert!(printed.contains("ci:write:***"), "{printed}");
        assert!(!printed.contains("0123456789abcdef"), "{printed}");
    }
}

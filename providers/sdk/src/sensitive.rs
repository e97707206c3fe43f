//! Which setting names hold secrets, and where a URI carries a password: one vocabulary for
//! the core (masking kwargs, scrubbing errors) and every provider (keeping its client
//! library's settings and URIs out of its own messages). Pure string work.

use std::ops::Range;

/// Whether a kwarg or client-setting name holds a secret (Airflow's sensitive field names,
/// plus librdkafka's and AWS's), also when one of the longer words is misspelt by one letter
/// (`sasl.pasword`, `client.secert`): a typo'd key still holds the secret it was meant for.
pub fn is_sensitive_key(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    [
        "password",
        "passwd",
        "passphrase",
        "secret",
        "token",
        "credential",
        "api_key",
        "api-key",
        "apikey",
        // HTTP headers that carry credentials (`X-Api-Key`, `Cookie`, `Proxy-Authorization`).
        "cookie",
        "private_key",
        "private.key",
        "jaas.config",
        "authorization",
        // librdkafka's sensitive properties that name no secret word.
        "key.pem",
        "oauthbearer.config",
    ]
    .iter()
    .any(|word| key.contains(word))
        || TYPO_PRONE.iter().any(|word| contains_near(&key, word))
}

/// Words long enough that one letter off is still unmistakably them (`token` is not: one off
/// is `taken`; nor `passwd`: `passed`).
const TYPO_PRONE: &[&str] = &["password", "passphrase", "secret", "credential"];

/// Whether some part of `text` is at most one edit (insertion, deletion, substitution or
/// swap of neighbours) from `word`.
fn contains_near(text: &str, word: &str) -> bool {
    let text: Vec<char> = text.chars().collect();
    let word: Vec<char> = word.chars().collect();
    (word.len() - 1..=word.len() + 1)
        .any(|len| len <= text.len() && text.windows(len).any(|part| within_one_edit(part, &word)))
}

fn within_one_edit(a: &[char], b: &[char]) -> bool {
    let (short, long) = if a.len() <= b.len() { (a, b) } else { (b, a) };
    let prefix = short.iter().zip(long).take_while(|(x, y)| x == y).count();
    match long.len() - short.len() {
        0 => {
            let suffix = short.len() - prefix;
            suffix <= 1
                || short[prefix + 1..] == long[prefix + 1..]
                || (suffix >= 2
                    && short[prefix] == long[prefix + 1]
                    && short[prefix + 1] == long[prefix]
                    && short[prefix + 2..] == long[prefix + 2..])
        }
        1 => short[prefix..] == long[prefix + 1..],
        _ => false,
    }
}

/// Where the userinfo passwords are in `text`: for every `://`, what lies between the first
/// `:` and the last `@` before the URI ends (at whitespace, a quote, or the next `://`), when
/// there is such a `:`. Passwords are often written unencoded, and generated ones hold `/`
/// (base64) or `@`, so the URI's own end, not the authority's, bounds the search: a URI with a
/// `:` and an `@` in its path (`http://h:80/x@y`) is masked more than needed, never less.
/// Several URIs in one string (`a://u:p@h1,b://u:q@h2`) each count.
pub fn uri_passwords(text: &str) -> Vec<Range<usize>> {
    let mut found = Vec::new();
    let mut from = 0;
    while let Some(i) = text[from..].find("://") {
        let start = from + i + 3;
        let rest = &text[start..];
        let mut end = rest
            .find(|c: char| matches!(c, '"' | '\'' | '`' | '<' | '>') || c.is_whitespace())
            .unwrap_or(rest.len());
        if let Some(next) = rest[..end].find("://") {
            end = next;
        }
        if let Some(at) = rest[..end].rfind('@') {
            if let Some(colon) = rest[..at].find(':') {
                if colon + 1 < at {
                    found.push(start + colon + 1..start + at);
                }
            }
        }
        from = start;
    }
    found
}

/// `text` with the password of every URI in it shown as `***`:
/// `postgres://u:secret@h/db` → `postgres://u:***@h/db`; the user and host stay, so the
/// value still says where it points.
pub fn redact_uri(text: &str) -> String {
    let ranges = uri_passwords(text);
    if ranges.is_empty() {
        return text.to_string();
    }
    let mut out = String::with_capacity(text.len());
    let mut last = 0;
    for range in ranges {
        out.push_str(&text[last..range.start]);
        out.push_str("***");
        last = range.end;
    }
    out.push_str(&text[last..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sensitive_names_and_their_near_misses() {
        for key in [
            "password",
            "sasl.password",
            "sasl.pasword",
            "ssl.key.password",
            "client.secert",
            "aws_secret_access_key",
            "sasl.jaas.config",
            "api_key",
            "ssl.key.pem",
            "sasl.oauthbearer.config",
            "X-Api-Key",
            "Cookie",
            "Proxy-Authorization",
        ] {
            assert!(is_sensitive_key(key), "{key}");
        }
        for key in ["topics", "group_id", "bootstrap.servers", "passed", "taken"] {
            assert!(!is_sensitive_key(key), "{key}");
        }
    }
}

//! Which setting names hold secrets: one vocabulary for the core (masking kwargs, scrubbing
//! errors) and every provider (keeping its client library's settings out of its own logs).
//! Pure string tests; nothing here sees a value.

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
        "apikey",
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
        ] {
            assert!(is_sensitive_key(key), "{key}");
        }
        for key in ["topics", "group_id", "bootstrap.servers", "passed", "taken"] {
            assert!(!is_sensitive_key(key), "{key}");
        }
    }
}

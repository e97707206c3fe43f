//! Behaviour through the object-safe [`Provider`], as the core's HTTP server calls it: kwargs
//! as a definition writes them, requests as the server hands them over (header names
//! lowercase), and refusals that say what is wrong without giving the secret away.

use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use triggerer_sdk::{is_sensitive_key, Event, Provider, PushRefusalKind, PushRequest, TriggerKind};

use crate::{WebhookProvider, CLASSPATHS};

/// GitHub's documented example ("Validating webhook deliveries").
const GH_SECRET: &str = "It's a Secret to Everybody";
const GH_BODY: &[u8] = b"Hello, World!";
const GH_SIGNATURE: &str =
    "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
/// `sha256("Hello, World!")`.
const GH_BODY_SHA256: &str = "dffd6021bb2bd5b0af676290809ec3a53191dd81c7f70a4b28688a362182986f";

fn kwargs() -> Value {
    json!({ "path": "github", "secret": GH_SECRET })
}

/// Headers as the core's HTTP server hands them over: names lowercase, values as bytes.
type Headers = Vec<(String, Vec<u8>)>;

fn headers(pairs: &[(&str, &str)]) -> Headers {
    pairs
        .iter()
        .map(|(name, value)| (name.to_ascii_lowercase(), value.as_bytes().to_vec()))
        .collect()
}

fn push(
    kwargs: &Value,
    headers: &[(String, Vec<u8>)],
    body: &[u8],
) -> Result<Event, (PushRefusalKind, String)> {
    let provider: &dyn Provider = &WebhookProvider;
    let path = provider
        .push_path(kwargs)
        .expect("a pushed trigger has a path");
    let request = PushRequest {
        path: &path,
        headers,
        body,
    };
    provider
        .accept_push(kwargs, &request)
        .map_err(|refusal| (refusal.kind, refusal.message))
}

/// The bare hex HMAC-SHA256 of `body` under `secret`.
fn sign(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).expect("any key");
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

fn kwargs_error(kwargs: Value) -> (String, String) {
    let e = WebhookProvider
        .validate(&kwargs)
        .expect_err("kwargs must be refused");
    (e.field.clone(), e.to_string())
}

#[test]
fn classpath_kind_and_path() {
    let provider: &dyn Provider = &WebhookProvider;
    assert_eq!(provider.classpaths(), CLASSPATHS);
    assert_eq!(provider.classpaths()[0], "http.WebhookTrigger");
    assert_eq!(provider.name(), "http");
    assert_eq!(provider.kind(), TriggerKind::Pushed);
    assert_eq!(provider.push_path(&kwargs()).as_deref(), Some("github"));
    assert_eq!(
        provider
            .push_path(&json!({ "path": "a/b", "secret": "s" }))
            .as_deref(),
        Some("a/b")
    );
    assert_eq!(
        provider.push_path(&json!({ "path": "/a" })),
        None,
        "invalid kwargs"
    );
    assert!(
        is_sensitive_key("secret"),
        "masked wherever kwargs are shown"
    );
}

#[test]
fn githubs_test_vector_is_accepted() {
    let event = push(
        &kwargs(),
        &headers(&[("X-Hub-Signature-256", GH_SIGNATURE)]),
        GH_BODY,
    )
    .expect("GitHub's example verifies");
    assert_eq!(
        event.payload,
        json!({ "path": "github", "delivery": null, "body": "Hello, World!" }),
        "a body that is no JSON is kept as text"
    );
    assert_eq!(
        event.dedup_key,
        format!("webhook:github:sha256:{GH_BODY_SHA256}")
    );
    assert_eq!(event.checkpoint, None);
}

#[test]
fn a_bare_hex_signature_in_a_chosen_header_is_accepted() {
    let bare = GH_SIGNATURE.trim_start_matches("sha256=");
    assert_eq!(
        sign(GH_SECRET, GH_BODY),
        bare,
        "the helper agrees with GitHub"
    );
    push(
        &kwargs(),
        &headers(&[("x-hub-signature-256", bare)]),
        GH_BODY,
    )
    .expect("bare hex");
    let upper = bare.to_ascii_uppercase();
    push(
        &kwargs(),
        &headers(&[("x-hub-signature-256", &upper)]),
        GH_BODY,
    )
    .expect("hex in capitals");
    let custom = json!({ "path": "ci", "secret": "s3", "signature_header": "X-Signature" });
    let body = br#"{"build": 7}"#;
    let event = push(
        &custom,
        &headers(&[("X-Signature", &sign("s3", body))]),
        body,
    )
    .expect("a generic sender's header");
    assert_eq!(
        event.payload["body"],
        json!({ "build": 7 }),
        "JSON is parsed"
    );
    assert_eq!(event.payload["path"], "ci");
    let refused = push(
        &custom,
        &headers(&[("X-Hub-Signature-256", GH_SIGNATURE)]),
        body,
    )
    .expect_err("the default header is not read when another is set");
    assert_eq!(refused.0, PushRefusalKind::Unauthorized);
}

#[test]
fn bad_signatures_are_unauthorized_naming_the_header_only() {
    let bare = GH_SIGNATURE.trim_start_matches("sha256=");
    let mut wrong = bare.to_string();
    wrong.replace_range(..1, if wrong.starts_with('0') { "1" } else { "0" });
    let cases: Vec<(&str, Headers, &[u8])> = vec![
        ("no header", headers(&[("X-Other", GH_SIGNATURE)]), GH_BODY),
        (
            "wrong digest",
            headers(&[("X-Hub-Signature-256", &format!("sha256={wrong}"))]),
            GH_BODY,
        ),
        (
            "another body",
            headers(&[("X-Hub-Signature-256", GH_SIGNATURE)]),
            b"Hello, World?",
        ),
        (
            "no hex",
            headers(&[("X-Hub-Signature-256", "sha256=zz")]),
            GH_BODY,
        ),
        (
            "odd hex",
            headers(&[("X-Hub-Signature-256", "sha256=abc")]),
            GH_BODY,
        ),
        (
            "short digest",
            headers(&[("X-Hub-Signature-256", &bare[..32])]),
            GH_BODY,
        ),
        ("empty", headers(&[("X-Hub-Signature-256", "")]), GH_BODY),
        (
            "sha1",
            headers(&[("X-Hub-Signature-256", &format!("sha1={bare}"))]),
            GH_BODY,
        ),
    ];
    for (case, headers, body) in cases {
        let (kind, message) = push(&kwargs(), &headers, body).expect_err(case);
        assert_eq!(kind, PushRefusalKind::Unauthorized, "{case}: {message}");
        assert!(
            message.contains("`X-Hub-Signature-256`"),
            "{case}: {message}"
        );
        assert!(!message.contains(GH_SECRET), "{case}: {message}");
        assert!(!message.contains(bare), "{case}: {message}");
        assert!(!message.contains(&bare[..16]), "{case}: {message}");
    }
    let other_secret = json!({ "path": "github", "secret": "It's a Secret to Nobody" });
    let (kind, _) = push(
        &other_secret,
        &headers(&[("X-Hub-Signature-256", GH_SIGNATURE)]),
        GH_BODY,
    )
    .expect_err("another secret");
    assert_eq!(kind, PushRefusalKind::Unauthorized);
}

#[test]
fn the_dedup_key_is_the_delivery_header_when_set() {
    let kwargs = json!({
        "path": "github",
        "secret": GH_SECRET,
        "dedup_header": "X-GitHub-Delivery",
    });
    let delivery = "72d3162e-cc78-11e3-81ab-4c9367dc0958";
    let event = push(
        &kwargs,
        &headers(&[
            ("X-Hub-Signature-256", GH_SIGNATURE),
            ("X-GitHub-Delivery", delivery),
        ]),
        GH_BODY,
    )
    .expect("accepted");
    assert_eq!(event.dedup_key, format!("webhook:github:{delivery}"));
    assert_eq!(
        event.payload,
        json!({ "path": "github", "delivery": delivery, "body": "Hello, World!" })
    );

    let (kind, message) = push(
        &kwargs,
        &headers(&[("X-Hub-Signature-256", GH_SIGNATURE)]),
        GH_BODY,
    )
    .expect_err("the delivery header is missing");
    assert_eq!(kind, PushRefusalKind::BadRequest);
    assert!(message.contains("`X-GitHub-Delivery`"), "{message}");

    let (kind, _) = push(
        &kwargs,
        &headers(&[("X-GitHub-Delivery", delivery)]),
        GH_BODY,
    )
    .expect_err("the signature is checked first");
    assert_eq!(kind, PushRefusalKind::Unauthorized);

    let (kind, _) = push(
        &kwargs,
        &headers(&[
            ("X-Hub-Signature-256", GH_SIGNATURE),
            ("X-GitHub-Delivery", " "),
        ]),
        GH_BODY,
    )
    .expect_err("a blank delivery id would make every delivery one event");
    assert_eq!(kind, PushRefusalKind::BadRequest);
}

#[test]
fn without_a_delivery_header_the_body_is_the_identity() {
    let signed = |body: &[u8]| headers(&[("X-Hub-Signature-256", &sign(GH_SECRET, body))]);
    let body = br#"{"ref": "main", "n": [1, 2]}"#;
    let first = push(&kwargs(), &signed(body), body).expect("accepted");
    let again = push(&kwargs(), &signed(body), body).expect("accepted");
    assert_eq!(first, again, "a redelivered body is the same event");
    assert_eq!(first.payload["body"], json!({ "ref": "main", "n": [1, 2] }));
    assert!(first.dedup_key.starts_with("webhook:github:sha256:"));
    let other = br#"{"ref": "dev", "n": [1, 2]}"#;
    let second = push(&kwargs(), &signed(other), other).expect("accepted");
    assert_ne!(first.dedup_key, second.dedup_key);
    let empty = push(&kwargs(), &signed(b""), b"").expect("an empty body is text");
    assert_eq!(empty.payload["body"], "");
}

#[test]
fn bodies_that_cannot_be_stored_are_bad_requests() {
    let signed = |body: &[u8]| headers(&[("X-Hub-Signature-256", &sign(GH_SECRET, body))]);
    let latin1 = b"caf\xe9";
    let (kind, message) = push(&kwargs(), &signed(latin1), latin1).expect_err("no UTF-8");
    assert_eq!(kind, PushRefusalKind::BadRequest);
    assert!(message.contains("UTF-8"), "{message}");

    let nul = br#"{"a": {"b": "x\u0000y"}}"#;
    let (kind, message) = push(&kwargs(), &signed(nul), nul).expect_err("a NUL in JSON");
    assert_eq!(kind, PushRefusalKind::BadRequest);
    assert!(
        message.contains("body.a.b") && message.contains("NUL"),
        "{message}"
    );

    let text = b"plain\0text";
    let (kind, _) = push(&kwargs(), &signed(text), text).expect_err("a NUL in text");
    assert_eq!(kind, PushRefusalKind::BadRequest);

    let (kind, _) = push(&kwargs(), &headers(&[]), latin1).expect_err("unsigned");
    assert_eq!(
        kind,
        PushRefusalKind::Unauthorized,
        "nothing is read before the signature"
    );
}

#[test]
fn kwargs_errors_name_the_kwarg() {
    let (field, message) = kwargs_error(json!({ "path": "/github", "secret": "s" }));
    assert_eq!(field, "path");
    assert!(message.starts_with("kwargs.path: "), "{message}");
    assert!(message.contains("`github`"), "{message}");
    let (field, message) = kwargs_error(json!({ "path": "a/../b", "secret": "s" }));
    assert_eq!(field, "path", "{message}");
    let (field, message) = kwargs_error(json!({ "path": 3, "secret": "s" }));
    assert_eq!(field, "path", "{message}");

    let (field, message) = kwargs_error(json!({ "path": "gh", "secret": "s", "sceret": "t" }));
    assert_eq!(field, "sceret");
    assert!(message.contains("unknown kwarg"), "{message}");
    assert!(
        message.contains("dedup_header"),
        "lists the accepted ones: {message}"
    );

    let (field, message) = kwargs_error(json!({ "path": "gh" }));
    assert_eq!(field, "secret");
    assert!(message.contains("required"), "{message}");
    assert!(message.contains("env"), "the hint: {message}");
    let (field, message) = kwargs_error(json!({ "path": "gh", "secret": "" }));
    assert_eq!(field, "secret");
    assert!(message.contains("must not be empty"), "{message}");

    let (field, message) =
        kwargs_error(json!({ "path": "gh", "secret": "s", "dedup_header": "X Delivery" }));
    assert_eq!(field, "dedup_header", "{message}");
    let (field, _) = kwargs_error(json!({ "path": "gh", "secret": "s", "signature_header": "" }));
    assert_eq!(field, "signature_header");
    let (field, message) = kwargs_error(json!(["gh"]));
    assert_eq!(field, "");
    assert!(message.contains("`path` and `secret`"), "{message}");
}

#[test]
fn a_secret_reference_validates_at_sync() {
    // What `secret = { env = "GH_SECRET" }` is while `dags sync` validates it.
    let placeholder = json!({
        "path": "github",
        "secret": "${env:GH_SECRET}",
        "signature_header": "X-Hub-Signature-256",
        "dedup_header": "X-GitHub-Delivery",
    });
    WebhookProvider
        .validate(&placeholder)
        .expect("a placeholder is a secret");
}

#[test]
fn nothing_runs_it_and_nothing_shows_the_secret() {
    let e = WebhookProvider
        .build(&kwargs())
        .err()
        .expect("a webhook is not run by a triggerer");
    let message = e.to_string();
    assert!(message.contains("--http"), "{message}");
    assert!(message.contains("not run by a triggerer"), "{message}");
    let params: crate::WebhookParams =
        triggerer_sdk::parse_params(&WebhookProvider, &kwargs()).expect("valid");
    let shown = format!("{params:?}");
    assert!(!shown.contains(GH_SECRET), "{shown}");
    assert!(shown.contains("github"), "{shown}");
    assert_eq!(
        params.signature_header, "X-Hub-Signature-256",
        "the default"
    );
    assert_eq!(params.dedup_header, None);
}

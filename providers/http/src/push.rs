//! One pushed request into one event: the signature first (nothing about an unsigned request
//! is looked at, nor answered, beyond that), then the delivery header, then the body. Messages
//! name headers and kwargs, never the secret or the digest the signature should have been.

use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use triggerer_sdk::{nul_in_json, Event, PushRefusal, PushRequest};

use crate::WebhookParams;

/// The longest delivery id accepted from the `dedup_header` (it becomes part of a dedup key).
const MAX_DELIVERY_LEN: usize = 256;

/// The event `request` stands for under `params`, or why there is none.
pub(crate) fn event(
    params: &WebhookParams,
    request: &PushRequest<'_>,
) -> Result<Event, PushRefusal> {
    verify_signature(params, request)?;
    let delivery = match &params.dedup_header {
        Some(header) => Some(delivery(header, request.header(header))?),
        None => None,
    };
    let body = body(request.body)?;
    let dedup_key = match &delivery {
        Some(delivery) => format!("webhook:{}:{delivery}", params.path),
        None => format!(
            "webhook:{}:sha256:{}",
            params.path,
            hex::encode(Sha256::digest(request.body))
        ),
    };
    let payload = json!({ "path": params.path, "delivery": delivery, "body": body });
    if let Some(at) = nul_in_json(&payload) {
        return Err(PushRefusal::bad_request(format!(
            "the request's {at} holds a NUL character, which cannot be stored"
        )));
    }
    Ok(Event::new(payload, dedup_key))
}

/// Checks the signature header: `sha256=<hex>` (GitHub) or bare `<hex>`, the HMAC-SHA256 of
/// the raw body under the secret, compared in constant time.
fn verify_signature(params: &WebhookParams, request: &PushRequest<'_>) -> Result<(), PushRefusal> {
    let header = &params.signature_header;
    let value = request.header(header).ok_or_else(|| {
        PushRefusal::unauthorized(format!("the request has no `{header}` header"))
    })?;
    let value = value.trim_ascii();
    let hex_digits = match value.get(..7) {
        Some(prefix) if prefix.eq_ignore_ascii_case(b"sha256=") => &value[7..],
        _ => value,
    };
    let signature = hex::decode(hex_digits).map_err(|_| {
        PushRefusal::unauthorized(format!(
            "the `{header}` header is not `sha256=` followed by a hexadecimal HMAC-SHA256"
        ))
    })?;
    let mut mac = Hmac::<Sha256>::new_from_slice(params.secret.as_bytes())
        .map_err(|_| PushRefusal::bad_request("the trigger's secret cannot key an HMAC"))?;
    mac.update(request.body);
    mac.verify_slice(&signature).map_err(|_| {
        PushRefusal::unauthorized(format!(
            "the `{header}` header does not match the body signed with the trigger's secret"
        ))
    })
}

/// The delivery id from the `dedup_header`: present, UTF-8 text without control characters,
/// not blank.
fn delivery(header: &str, value: Option<&[u8]>) -> Result<String, PushRefusal> {
    let value = value.ok_or_else(|| {
        PushRefusal::bad_request(format!(
            "the request has no `{header}` header, which identifies each delivery (the \
             trigger's dedup_header)"
        ))
    })?;
    let text = std::str::from_utf8(value)
        .ok()
        .map(str::trim)
        .filter(|t| !t.is_empty() && !t.chars().any(char::is_control))
        .ok_or_else(|| {
            PushRefusal::bad_request(format!(
                "the `{header}` header (the trigger's dedup_header) must be non-empty text"
            ))
        })?;
    if text.len() > MAX_DELIVERY_LEN {
        return Err(PushRefusal::bad_request(format!(
            "the `{header}` header (the trigger's dedup_header) is longer than \
             {MAX_DELIVERY_LEN} bytes"
        )));
    }
    Ok(text.to_string())
}

/// The body as JSON, or as a string when it is no JSON.
fn body(bytes: &[u8]) -> Result<Value, PushRefusal> {
    if let Ok(value) = serde_json::from_slice(bytes) {
        return Ok(value);
    }
    match std::str::from_utf8(bytes) {
        Ok(text) => Ok(Value::String(text.to_string())),
        Err(_) => Err(PushRefusal::bad_request(
            "the body is neither JSON nor UTF-8 text",
        )),
    }
}

//! The `http` provider: webhooks as asset watchers (DESIGN §12, "Webhooks are watchers").
//! `http.WebhookTrigger` is [`TriggerKind::Pushed`]: no triggerer runs it. Every process
//! started with `--http` serves `POST /webhooks/{path}`; its HTTP server hands each request
//! to this provider ([`triggerer_sdk::Provider::accept_push`]), which verifies the request's
//! signature and turns it into the [`Event`] the server then writes for every asset the
//! watcher feeds, answering 2xx only after it has committed. This crate owns the kwargs, the
//! signature check and the event's payload and dedup key; it must not do I/O, show the secret
//! or the expected signature anywhere (errors, `Debug`), or depend on the triggerer core.
//!
//! Classpath: `http.WebhookTrigger` only.
//!
//! | kwarg              | type   | default               | meaning |
//! |--------------------|--------|-----------------------|---------|
//! | `path`             | string | required              | Where requests are posted, below `/webhooks/`: `github` for `POST /webhooks/github`. 1–200 characters of `A-Z a-z 0-9 . _ -` in segments separated by `/` (none empty, none `.` or `..`, no `/` first or last). |
//! | `secret`           | string | required              | The secret the sender signs each body with; a sensitive kwarg (masked wherever kwargs are shown), best given as `{ env = "NAME" }`, which the core resolves in the process serving the request. Not empty. |
//! | `signature_header` | string | `X-Hub-Signature-256` | The header holding the body's HMAC-SHA256 under `secret`, as GitHub writes it (`sha256=<hex>`) or as bare hex. |
//! | `dedup_header`     | string | none                  | A header identifying each delivery, kept across the sender's redeliveries (GitHub's `X-GitHub-Delivery`). |
//!
//! A request whose signature header is missing, is no hex, or does not match the body (compared
//! in constant time) is refused as unauthorized: 401, and nothing is recorded. One whose
//! `dedup_header` is missing, or whose body is neither JSON nor UTF-8 text, or holds a NUL
//! character, is a bad request (400).
//!
//! Event payload: `{"path": <path>, "delivery": <the dedup header's value, or null>, "body":
//! <the body as JSON, or as a string when it is no JSON>}`. Dedup key:
//! `webhook:<path>:<delivery>` with a `dedup_header`, else `webhook:<path>:sha256:<hex SHA-256
//! of the body>` (an identical body delivered again is the same event).
//!
//! Delivery guarantee: at least once from the sender's point of view, effectively once in the
//! database. The answer is 2xx only once the event is committed, so a sender that got none
//! delivers again, and the dedup key makes that redelivery insert nothing.

mod params;
mod push;

#[cfg(test)]
mod tests;

use triggerer_sdk::{
    EventTrigger, KwargsError, PushRefusal, PushRequest, TriggerKind, TypedProvider,
};

pub use params::{WebhookParams, DEFAULT_SIGNATURE_HEADER, MAX_PATH_LEN};

use triggerer_sdk::Event;

/// The classpaths of [`WebhookProvider`], canonical first.
pub const CLASSPATHS: &[&str] = &["http.WebhookTrigger"];

/// `http.WebhookTrigger`. Stateless: each request is checked against its trigger's kwargs.
#[derive(Debug, Default, Clone, Copy)]
pub struct WebhookProvider;

impl TypedProvider for WebhookProvider {
    type Params = WebhookParams;
    const NAME: &'static str = "http";
    const KIND: TriggerKind = TriggerKind::Pushed;
    const CLASSPATHS: &'static [&'static str] = CLASSPATHS;
    const HINTS: &'static [(&'static str, &'static str)] = params::HINTS;

    fn build_trigger(&self, _params: WebhookParams) -> Result<Box<dyn EventTrigger>, KwargsError> {
        Err(KwargsError::new(
            "",
            "webhook triggers are served by the HTTP server of any process started with \
             `--http` (POST /webhooks/<path>), not run by a triggerer",
        ))
    }

    fn pushed_at(&self, params: &WebhookParams) -> Option<String> {
        Some(params.path.clone())
    }

    fn push_event(
        &self,
        params: WebhookParams,
        request: &PushRequest<'_>,
    ) -> Result<Event, PushRefusal> {
        push::event(&params, request)
    }
}

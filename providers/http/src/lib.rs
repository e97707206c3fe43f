//! The `http` providers: webhooks as asset watchers (DESIGN §12, "Webhooks are watchers"),
//! [`WebhookProvider`], and polling an HTTP endpoint, [`HttpEventProvider`] (see its own
//! documentation below and in [`HttpEventProvider`]).
//!
//! ## `http.WebhookTrigger`
//!
//! `http.WebhookTrigger` is [`TriggerKind::Pushed`]: no triggerer runs it. Every process
//! started with `--http` serves `POST /webhooks/{path}`; its HTTP server hands each request
//! to this provider ([`triggerer_sdk::Provider::accept_push`]), which verifies the request's
//! signature and turns it into the [`Event`] the server then writes for every asset the
//! watcher feeds, answering 2xx only after it has committed. This crate owns the kwargs, the
//! signature check and the event's payload and dedup key; it must not do I/O, show the secret
//! or the expected signature anywhere (errors, `Debug`), or depend on the triggerer core.
//!
//! Classpath: `http.WebhookTrigger` only (Airflow has no webhook trigger).
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
//!
//! ## `http.HttpEventTrigger`
//!
//! Classpaths: `http.HttpEventTrigger`, and Airflow's
//! `airflow.providers.http.triggers.http.HttpEventTrigger`. [`TriggerKind::Event`]: a
//! triggerer runs it, as a watcher (or as a task's `wait`, whose first event resumes it).
//!
//! | kwarg            | type          | default | meaning |
//! |------------------|---------------|---------|---------|
//! | `url`            | string        | required | The full `http://` or `https://` URL; `{ env = "NAME" }` keeps a secret one out of the file. Shown and stored with a userinfo password and sensitive query values (`token=`, `api_key=`, `sig=`…) as `***`. |
//! | `method`         | string        | `GET`   | `GET`, `POST`, `PUT`, `PATCH`, `DELETE`, `HEAD` or `OPTIONS` (any case). |
//! | `headers`        | table         | none    | Header name → value; a value may be `{ env = "NAME" }`. Values of sensitive headers (`Authorization`, anything with `auth`, `token`, `secret`, `api-key`, `cookie`) are never shown by this crate; the core masks literal values under the SDK's sensitive names (`Authorization`, `X-Auth-Token`…). |
//! | `data`           | table or string | none  | Airflow's `data`: a table is sent as query parameters for `GET`/`HEAD`/`DELETE`/`OPTIONS` and as a JSON body (`Content-Type: application/json` unless `headers` says otherwise) for the others; a string is the raw body (not allowed for `GET`…). |
//! | `response_check` | string        | none    | A JSONPath (RFC 9535, `serde_json_path`) evaluated on the JSON response: it holds when it selects at least one node that is truthy as Python sees it (not `null`, `false`, `0`, `""`, `[]`, `{}`). `$.ready`, `$.jobs[?@.state == 'done']`. Without it, every 2xx response counts. |
//! | `poll_interval`  | seconds       | 60      | Between the starts of two requests; at least 1. The first request is made at start. |
//! | `timeout`        | seconds       | 30      | For one whole request, body included. |
//!
//! Refused, with what to write instead: `http_conn_id` and `auth_type` (no Airflow
//! connections: give `url` and `headers`), `endpoint` (give the full `url`),
//! `response_check_path` (no Python callables: write `response_check`), `extra_options`.
//!
//! Each poll: a 2xx response whose check holds is an event when the SHA-256 of its **body**
//! (the raw bytes, so any change in the response is a change) differs from the last committed
//! one. The digest and a change number are the trigger's checkpoint (`response` =
//! `<n>:<hex>`), committed in the event's transaction and read back at every start: the same
//! response again, or after a restart or a `kill -9`, makes no event. A response that changes
//! back (A, B, A) is a new change each time.
//!
//! - A check that does not hold, or a body that is no JSON while there is a check (reported
//!   once per body as a warning), is no event, and polling goes on; the committed digest is
//!   kept, so a response that fails the check and then passes it again unchanged does not fire.
//! - 404 is "not there yet" (as Airflow's `HttpTrigger` treats it): no event, polling goes on.
//! - Any other non-2xx status (after redirects, which are followed), a connection error, a
//!   timeout, or a body larger than 1 MiB fails the trigger with a one-line reason
//!   (`http GET <url>: answered 503 Service Unavailable`, `…: cannot connect: …`): it shows as
//!   `failing` and the supervisor restarts it with backoff.
//!
//! Event payload: `{"url": <shown url>, "status": <code>, "headers": {"content-type",
//! "etag", "last-modified": <value or null>}, "body": <JSON if it parses, else text, else
//! base64>, "body_encoding": "json" | "text" | "base64", "check_result": <the array of
//! nodes the JSONPath selected, or null without a check>}`. Dedup key:
//! `http:<shown url>:<n>:sha256:<hex>`: the same change redelivered (emitted again after a
//! crash before its commit, from the same checkpoint) has the same key.
//!
//! Delivery: nothing is acknowledged upstream (a poll takes nothing away); what is lost when
//! the process is down is the intermediate responses nobody saw, never the latest one.

mod params;
mod poll;
mod poll_params;
mod push;

#[cfg(test)]
mod poll_tests;
#[cfg(test)]
mod tests;

use triggerer_sdk::{
    EventTrigger, KwargsError, PushRefusal, PushRequest, Refusal, TriggerKind, TypedProvider,
};

pub use params::{WebhookParams, DEFAULT_SIGNATURE_HEADER, MAX_PATH_LEN};
pub use poll::{CHECKPOINT_KEY, MAX_BODY, PAYLOAD_HEADERS};
pub use poll_params::{
    is_sensitive_header, shown_url, PollConfig, PollParams, DEFAULT_POLL_INTERVAL, DEFAULT_TIMEOUT,
    MIN_POLL_INTERVAL,
};

use triggerer_sdk::Event;

/// The classpaths of [`WebhookProvider`], canonical first.
pub const CLASSPATHS: &[&str] = &["http.WebhookTrigger"];

/// The classpaths of [`HttpEventProvider`], canonical first.
pub const POLL_CLASSPATHS: &[&str] = &[
    "http.HttpEventTrigger",
    "airflow.providers.http.triggers.http.HttpEventTrigger",
];

/// `http.HttpEventTrigger`: polls a URL, an event per new response that passes its check.
#[derive(Debug, Default, Clone, Copy)]
pub struct HttpEventProvider;

impl TypedProvider for HttpEventProvider {
    type Params = PollParams;
    const NAME: &'static str = "http";
    const CLASSPATHS: &'static [&'static str] = POLL_CLASSPATHS;
    const REFUSED: &'static [Refusal] = poll_params::REFUSED;
    const HINTS: &'static [(&'static str, &'static str)] = poll_params::HINTS;

    fn check(&self, params: &PollParams) -> Result<(), KwargsError> {
        PollConfig::from_params(params).map(drop)
    }

    fn build_trigger(&self, params: PollParams) -> Result<Box<dyn EventTrigger>, KwargsError> {
        let config = PollConfig::from_params(&params)?;
        if config.url.contains("${env:") {
            return Err(KwargsError::new(
                "url",
                "the environment reference was not resolved",
            ));
        }
        Ok(Box::new(poll::PollTrigger { config }))
    }
}

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

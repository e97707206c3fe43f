//! The traits of a provider: [`TypedProvider`] (what a provider implements: its params as a
//! serde type, and how to build a trigger from them), [`Provider`] (the object-safe factory the
//! core's registry holds, one per crate, derived from it), [`EventTrigger`] (one running
//! trigger) and [`TriggerKind`] (whether its triggers repeat, as a watcher needs, fire once,
//! as a deferred task's may, or are pushed to the core, as a webhook's are). A pushed trigger
//! is never run: the core's HTTP server receives each request ([`PushRequest`]) and asks the
//! provider for its event, or for why it refuses it ([`PushRefusal`]).

use std::collections::HashMap;

use async_trait::async_trait;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};
use thiserror::Error;
use tokio_util::sync::CancellationToken;

use crate::kwargs::parse_kwargs;
use crate::{Event, EventSink, KwargsError, TriggerError, TriggerId, WarningSink};

/// A factory for triggers of one kind. Held by the core's registry for the whole process, so it
/// is also the place for state shared by all its triggers (one OS file watcher, one Kafka
/// consumer per cluster and group). A provider crate implements [`TypedProvider`], which gives
/// this trait; implementing it directly is for kwargs that are no serde type (tests' fakes).
pub trait Provider: Send + Sync + 'static {
    /// Short name, e.g. `file`; shown in logs and `triggers list`.
    fn name(&self) -> &'static str;

    /// Whether this provider's triggers are repeatable (watchers and task waits), fire once
    /// (task waits only) or are pushed to the core (watchers only, never run).
    fn kind(&self) -> TriggerKind {
        TriggerKind::Event
    }

    /// The classpaths this provider answers to. The first is canonical: it is what the core
    /// stores, so that an Airflow alias and the short name give the same trigger identity.
    fn classpaths(&self) -> &'static [&'static str];

    /// URI schemes this provider serves for the common message-queue trigger (`kafka`, `sqs`).
    fn schemes(&self) -> &'static [&'static str] {
        &[]
    }

    /// The kwargs of this provider's trigger for a message-queue URI (`MessageQueueTrigger`'s
    /// `queue`, e.g. `kafka://host:9092/orders`), merged with the watcher's other `kwargs`; or
    /// `None` when this provider does not serve the URI. No I/O.
    fn queue_kwargs(
        &self,
        _queue: &str,
        _kwargs: &serde_json::Map<String, Value>,
    ) -> Option<Result<Value, KwargsError>> {
        None
    }

    /// Checks `kwargs` without any I/O: it runs at `dags sync` time.
    fn validate(&self, kwargs: &Value) -> Result<(), KwargsError>;

    /// Builds a trigger from validated kwargs. Connecting happens in [`EventTrigger::run`], so
    /// that an unreachable source becomes a restart with backoff, not a build failure.
    fn build(&self, kwargs: &Value) -> Result<Box<dyn EventTrigger>, KwargsError>;

    /// For a [`TriggerKind::Pushed`] trigger with these kwargs (references resolved, as for
    /// [`Self::build`]), the path its requests are pushed to, below the core's `/webhooks/`
    /// (`github` for `POST /webhooks/github`); `None` for any other trigger, or kwargs that do
    /// not validate. No I/O.
    fn push_path(&self, _kwargs: &Value) -> Option<String> {
        None
    }

    /// The event one request pushed to a [`TriggerKind::Pushed`] trigger with these kwargs
    /// (references resolved) stands for, or why it is refused: a signature that does not
    /// verify is [`PushRefusalKind::Unauthorized`], and the core records nothing. No I/O. Any
    /// other trigger refuses every request ([`PushRefusalKind::BadRequest`]).
    fn accept_push(
        &self,
        _kwargs: &Value,
        _request: &PushRequest<'_>,
    ) -> Result<Event, PushRefusal> {
        Err(PushRefusal::not_pushed())
    }
}

/// A provider as its crate writes it: its kwargs are a serde type, [`Self::Params`], and
/// [`Provider`], which the core uses, comes with it. Parsing (types, required and unknown
/// kwargs, the rules of [`crate::de`]) is serde's; [`Self::check`] holds the rules serde cannot
/// express; [`Self::build_trigger`] only ever sees params that passed both.
///
/// Every kwarg is checked the same way at `dags sync` time (with environment references as
/// `${env:NAME}` placeholder strings) and at build time (with their values), so nothing is
/// accepted at sync that the triggerer would then refuse, except a secret's own value.
pub trait TypedProvider: Send + Sync + 'static {
    /// The kwargs: `#[derive(Deserialize)]` with `#[serde(deny_unknown_fields)]`, so that a
    /// misspelt kwarg is an error listing the accepted ones, and
    /// `#[serde(expecting = "a table with …")]` for kwargs that are not a table at all.
    type Params: DeserializeOwned;

    /// Short name, e.g. `file`; shown in logs and `triggers list`.
    const NAME: &'static str;

    /// See [`Provider::kind`].
    const KIND: TriggerKind = TriggerKind::Event;

    /// The classpaths this provider answers to, canonical first (see [`Provider::classpaths`]).
    const CLASSPATHS: &'static [&'static str];

    /// URI schemes served for the common message-queue trigger (see [`Provider::schemes`]).
    const SCHEMES: &'static [&'static str] = &[];

    /// Kwargs refused whatever their value (Airflow-only ones: callables, connection ids), each
    /// with what to write instead. Checked before parsing, so the guidance wins over "unknown
    /// kwarg".
    const REFUSED: &'static [Refusal] = &[];

    /// `(kwarg, what it takes)`: added to the message when a kwarg is missing or of the wrong
    /// type (see [`crate::parse_kwargs`]).
    const HINTS: &'static [(&'static str, &'static str)] = &[];

    /// Rules across kwargs, or on a value's content, that serde cannot express. No I/O.
    fn check(&self, _params: &Self::Params) -> Result<(), KwargsError> {
        Ok(())
    }

    /// The kwargs a message-queue URI stands for, merged with the watcher's other `kwargs`; or
    /// `None` when this provider does not serve `queue`. The result is then parsed and checked
    /// like any kwargs. No I/O.
    fn queue_params(
        &self,
        _queue: &str,
        _kwargs: &Map<String, Value>,
    ) -> Option<Result<Map<String, Value>, KwargsError>> {
        None
    }

    /// Builds a trigger from params that passed [`Self::check`]. Connecting happens in
    /// [`EventTrigger::run`] (see [`Provider::build`]). A [`TriggerKind::Pushed`] provider,
    /// whose triggers nothing runs, refuses with a [`KwargsError`] saying where they are served.
    fn build_trigger(&self, params: Self::Params) -> Result<Box<dyn EventTrigger>, KwargsError>;

    /// [`Provider::push_path`] from params that passed [`Self::check`]. A
    /// [`TriggerKind::Pushed`] provider must give one for every valid params.
    fn pushed_at(&self, _params: &Self::Params) -> Option<String> {
        None
    }

    /// [`Provider::accept_push`] from params that passed [`Self::check`]: the event `request`
    /// stands for, or why it is refused. No I/O.
    fn push_event(
        &self,
        _params: Self::Params,
        _request: &PushRequest<'_>,
    ) -> Result<Event, PushRefusal> {
        Err(PushRefusal::not_pushed())
    }
}

/// A kwarg (or several spellings of one) that is refused, and what to write instead.
#[derive(Debug, Clone, Copy)]
pub struct Refusal {
    pub kwargs: &'static [&'static str],
    /// The whole message, e.g. "Airflow connections are not available here: set …".
    pub instead: &'static str,
}

/// `kwargs` as `P`'s params: refused kwargs first, then serde, then [`TypedProvider::check`].
/// Errors name the full path of the offending value.
pub fn parse_params<P: TypedProvider>(
    provider: &P,
    kwargs: &Value,
) -> Result<P::Params, KwargsError> {
    if let Value::Object(map) = kwargs {
        for refusal in P::REFUSED {
            // In the kwargs' order, so the error names the same one every time.
            if let Some(kwarg) = map.keys().find(|k| refusal.kwargs.contains(&k.as_str())) {
                return Err(KwargsError::new(kwarg.as_str(), refusal.instead));
            }
        }
    }
    let params = parse_kwargs(kwargs, P::HINTS)?;
    provider.check(&params)?;
    Ok(params)
}

impl<P: TypedProvider> Provider for P {
    fn name(&self) -> &'static str {
        P::NAME
    }

    fn kind(&self) -> TriggerKind {
        P::KIND
    }

    fn classpaths(&self) -> &'static [&'static str] {
        P::CLASSPATHS
    }

    fn schemes(&self) -> &'static [&'static str] {
        P::SCHEMES
    }

    fn queue_kwargs(
        &self,
        queue: &str,
        kwargs: &Map<String, Value>,
    ) -> Option<Result<Value, KwargsError>> {
        let merged = self.queue_params(queue, kwargs)?;
        Some(merged.and_then(|merged| {
            let merged = Value::Object(merged);
            parse_params(self, &merged)?;
            Ok(merged)
        }))
    }

    fn validate(&self, kwargs: &Value) -> Result<(), KwargsError> {
        parse_params(self, kwargs).map(drop)
    }

    fn build(&self, kwargs: &Value) -> Result<Box<dyn EventTrigger>, KwargsError> {
        self.build_trigger(parse_params(self, kwargs)?)
    }

    fn push_path(&self, kwargs: &Value) -> Option<String> {
        self.pushed_at(&parse_params(self, kwargs).ok()?)
    }

    fn accept_push(&self, kwargs: &Value, request: &PushRequest<'_>) -> Result<Event, PushRefusal> {
        let params = parse_params(self, kwargs).map_err(|e| {
            PushRefusal::bad_request(format!("the trigger's kwargs do not validate: {e}"))
        })?;
        self.push_event(params, request)
    }
}

/// One HTTP request pushed to the core for a [`TriggerKind::Pushed`] trigger, in no HTTP
/// library's types.
#[derive(Debug, Clone, Copy)]
pub struct PushRequest<'a> {
    /// The path below `/webhooks/`, as [`Provider::push_path`] gives it (`github`).
    pub path: &'a str,
    /// Every header in the order received, a repeated one once per value: names lowercase,
    /// values as the raw bytes.
    pub headers: &'a [(String, Vec<u8>)],
    /// The raw body, exactly as received (signatures are over these bytes).
    pub body: &'a [u8],
}

impl<'a> PushRequest<'a> {
    /// The value of the first header called `name` (in any case), if there is one.
    pub fn header(&self, name: &str) -> Option<&'a [u8]> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_slice())
    }
}

/// Why a pushed request makes no event. Its message is answered to whoever sent the request:
/// it names what is wrong (a header, a kwarg) and never a secret or an expected signature.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{message}")]
pub struct PushRefusal {
    pub kind: PushRefusalKind,
    pub message: String,
}

/// What kind of refusal a [`PushRefusal`] is, which the core answers as an HTTP status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushRefusalKind {
    /// The request is not from whom the trigger trusts (a missing or wrong signature): 401.
    Unauthorized,
    /// The request, or the trigger it was pushed to, cannot make an event: 400.
    BadRequest,
}

impl PushRefusal {
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self {
            kind: PushRefusalKind::Unauthorized,
            message: message.into(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self {
            kind: PushRefusalKind::BadRequest,
            message: message.into(),
        }
    }

    /// What a trigger that is not [`TriggerKind::Pushed`] answers to every request.
    fn not_pushed() -> Self {
        Self::bad_request("not a pushed trigger")
    }
}

/// What a provider's triggers are (Airflow's `BaseEventTrigger` versus a plain trigger).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TriggerKind {
    /// Repeatable: one event per external occurrence, for as long as it runs. May watch an
    /// asset, and may be a deferred task's trigger (its first event resumes the task).
    Event,
    /// Fires once and is done (a moment reached, an external run finished): only a deferred
    /// task's trigger. Its `run` emits one event with [`fire_once`].
    OneShot,
    /// Its events are pushed to the core (a webhook): no triggerer runs it, and it can only
    /// watch an asset. The core's HTTP server receives each request at the trigger's
    /// [`Provider::push_path`] and asks the provider to turn it into an event
    /// ([`Provider::accept_push`]), which it writes for every asset the watcher feeds.
    Pushed,
}

/// A running trigger: emits one event per external occurrence until cancelled.
#[async_trait]
pub trait EventTrigger: Send + 'static {
    /// Runs until `ctx.cancel` fires (return `Ok(())`) or the trigger fails (return the error;
    /// the supervisor restarts it with backoff). An event trigger never stops on its own after
    /// an event: it is repeatable. A [`TriggerKind::OneShot`] trigger ends with [`fire_once`].
    async fn run(self: Box<Self>, ctx: TriggerContext) -> Result<(), TriggerError>;
}

/// How a one-shot trigger fires: emits `event`, waits until it is committed (the core resumes
/// the deferred task and removes the trigger in that commit), then waits to be cancelled, which
/// follows the removal. A trigger that stopped before its event committed is started again
/// (a fired trigger's row is gone, so it is not).
pub async fn fire_once(ctx: TriggerContext, event: Event) -> Result<(), TriggerError> {
    ctx.sink.emit(event).await?;
    ctx.cancel.cancelled().await;
    Ok(())
}

/// What the core hands a trigger when it starts it.
#[derive(Debug)]
pub struct TriggerContext {
    pub trigger_id: TriggerId,
    pub sink: EventSink,
    /// Where to report what the trigger skipped while it goes on (see [`WarningSink`]).
    pub warnings: WarningSink,
    /// The trigger's committed checkpoint pairs, as of this start.
    pub checkpoint: HashMap<String, String>,
    /// Fires when the trigger is unassigned, removed, or the process shuts down.
    pub cancel: CancellationToken,
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;
    use serde_json::json;

    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct HookParams {
        path: String,
    }

    /// A pushed provider: an event per request, whose body must not be empty.
    struct Hook;

    impl TypedProvider for Hook {
        type Params = HookParams;
        const NAME: &'static str = "hook";
        const KIND: TriggerKind = TriggerKind::Pushed;
        const CLASSPATHS: &'static [&'static str] = &["test.Hook"];

        fn build_trigger(&self, _params: HookParams) -> Result<Box<dyn EventTrigger>, KwargsError> {
            Err(KwargsError::new("", "pushed, never run"))
        }

        fn pushed_at(&self, params: &HookParams) -> Option<String> {
            Some(params.path.clone())
        }

        fn push_event(
            &self,
            params: HookParams,
            request: &PushRequest<'_>,
        ) -> Result<Event, PushRefusal> {
            if request.body.is_empty() {
                return Err(PushRefusal::bad_request("empty body"));
            }
            let id = request.header("x-id").unwrap_or_default();
            Ok(Event::new(
                json!({ "path": params.path }),
                String::from_utf8_lossy(id),
            ))
        }
    }

    /// A plain event provider, which keeps every default.
    struct Plain;

    impl TypedProvider for Plain {
        type Params = HookParams;
        const NAME: &'static str = "plain";
        const CLASSPATHS: &'static [&'static str] = &["test.Plain"];

        fn build_trigger(&self, _params: HookParams) -> Result<Box<dyn EventTrigger>, KwargsError> {
            Err(KwargsError::new("", "not in this test"))
        }
    }

    fn request<'a>(headers: &'a [(String, Vec<u8>)], body: &'a [u8]) -> PushRequest<'a> {
        PushRequest {
            path: "gh",
            headers,
            body,
        }
    }

    #[test]
    fn headers_are_found_in_any_case_first_value_first() {
        let headers = [
            ("x-id".to_string(), b"one".to_vec()),
            ("x-id".to_string(), b"two".to_vec()),
        ];
        let req = request(&headers, b"");
        assert_eq!(req.header("X-Id"), Some(&b"one"[..]));
        assert_eq!(req.header("x-ID"), Some(&b"one"[..]));
        assert_eq!(req.header("x-other"), None);
    }

    #[test]
    fn a_pushed_provider_answers_through_the_object_safe_trait() {
        let hook: &dyn Provider = &Hook;
        assert_eq!(hook.kind(), TriggerKind::Pushed);
        let kwargs = json!({ "path": "gh" });
        assert_eq!(hook.push_path(&kwargs).as_deref(), Some("gh"));
        let headers = [("x-id".to_string(), b"d-1".to_vec())];
        let event = hook
            .accept_push(&kwargs, &request(&headers, b"{}"))
            .expect("accepted");
        assert_eq!(event, Event::new(json!({ "path": "gh" }), "d-1"));
        let refused = hook
            .accept_push(&kwargs, &request(&headers, b""))
            .expect_err("refused");
        assert_eq!(refused, PushRefusal::bad_request("empty body"));
        assert_eq!(refused.to_string(), "empty body");
    }

    #[test]
    fn kwargs_that_do_not_validate_are_a_bad_request_naming_the_kwarg() {
        let hook: &dyn Provider = &Hook;
        let kwargs = json!({ "path": "gh", "typo": 1 });
        assert_eq!(hook.push_path(&kwargs), None);
        let refused = hook
            .accept_push(&kwargs, &request(&[], b"{}"))
            .expect_err("refused");
        assert_eq!(refused.kind, PushRefusalKind::BadRequest);
        assert!(refused.message.contains("kwargs.typo"), "{refused}");
    }

    #[test]
    fn other_providers_are_not_pushed() {
        let plain: &dyn Provider = &Plain;
        assert_eq!(plain.kind(), TriggerKind::Event);
        let kwargs = json!({ "path": "gh" });
        assert_eq!(plain.push_path(&kwargs), None);
        let refused = plain
            .accept_push(&kwargs, &request(&[], b"{}"))
            .expect_err("refused");
        assert_eq!(refused, PushRefusal::bad_request("not a pushed trigger"));
    }
}

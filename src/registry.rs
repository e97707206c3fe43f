//! The providers compiled into this binary, in one explicit list ([`builtin_providers`]), and
//! lookup by classpath (Airflow aliases included), with which classpaths are pushed to the HTTP
//! server rather than run by a triggerer ([`ProviderRegistry::pushed_classpaths`]). Adding a
//! provider is one line here plus a cargo feature; nothing registers itself.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::Value;
use thiserror::Error;
use triggerer_sdk::{KwargsError, Provider, TriggerKind};

/// A watcher as the triggerer will run it.
#[derive(Clone)]
pub struct ResolvedWatcher {
    /// The canonical classpath of the provider that runs it (what is stored).
    pub classpath: &'static str,
    pub provider: Arc<dyn Provider>,
    /// The provider's kwargs (for a `MessageQueueTrigger`, derived from its URI or scheme).
    pub kwargs: Value,
}

/// Why a watcher cannot run in this build.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum WatcherError {
    #[error("unknown classpath `{0}`")]
    UnknownClasspath(String),
    #[error(transparent)]
    Kwargs(#[from] KwargsError),
    /// A one-shot trigger (it fires once, as a task's `wait`) where a watcher needs a
    /// repeatable one.
    #[error(
        "`{0}` fires once and is done, so it cannot watch an asset; use it as a task's `wait`"
    )]
    NotRepeatable(&'static str),
    /// A pushed trigger (a webhook, which no triggerer runs) where a task's trigger is needed.
    #[error(
        "`{0}` receives requests pushed to the HTTP server and no triggerer runs it, so it can \
         only watch an asset, not be a task's trigger"
    )]
    PushedOnly(&'static str),
}

/// What a trigger is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TriggerUse {
    /// An asset's watcher: repeatable triggers only.
    Watcher,
    /// A task's `wait` or a command's deferral: any trigger.
    Task,
}

/// Why [`ProviderRegistry::check_trigger`] refused a trigger: its classpath or its kwargs.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum TriggerCheckError {
    #[error("`classpath`: {0}")]
    Classpath(String),
    #[error("{0}")]
    Kwargs(String),
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum RegistryError {
    #[error("classpath `{classpath}` is claimed by both `{first}` and `{second}`")]
    DuplicateClasspath {
        classpath: String,
        first: &'static str,
        second: &'static str,
    },
}

/// Providers by classpath.
#[derive(Clone, Default)]
pub struct ProviderRegistry {
    providers: Vec<Arc<dyn Provider>>,
    by_classpath: HashMap<&'static str, usize>,
}

impl std::fmt::Debug for ProviderRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.providers.iter().map(|p| p.name()))
            .finish()
    }
}

impl ProviderRegistry {
    pub fn register(&mut self, provider: impl Provider) -> Result<(), RegistryError> {
        let index = self.providers.len();
        for classpath in provider.classpaths() {
            if let Some(&other) = self.by_classpath.get(classpath) {
                return Err(RegistryError::DuplicateClasspath {
                    classpath: classpath.to_string(),
                    first: self.providers[other].name(),
                    second: provider.name(),
                });
            }
            self.by_classpath.insert(classpath, index);
        }
        self.providers.push(Arc::new(provider));
        Ok(())
    }

    /// The provider answering to `classpath`, and the canonical classpath to store.
    pub fn resolve(&self, classpath: &str) -> Option<(&'static str, &Arc<dyn Provider>)> {
        let provider = &self.providers[*self.by_classpath.get(classpath)?];
        let canonical = provider.classpaths().first().copied()?;
        Some((canonical, provider))
    }

    /// Resolves a watcher's `(classpath, kwargs)` to the provider that runs it, its canonical
    /// classpath and its kwargs, validated without I/O. A `MessageQueueTrigger` resolves to the
    /// provider serving its `scheme` or `queue` URI (with the `msgqueue` feature).
    pub fn resolve_watcher(
        &self,
        classpath: &str,
        kwargs: &Value,
    ) -> Result<ResolvedWatcher, WatcherError> {
        #[cfg(feature = "msgqueue")]
        if triggerer_provider_msgqueue::CLASSPATHS.contains(&classpath) {
            let (provider, kwargs) = triggerer_provider_msgqueue::resolve(&self.providers, kwargs)?;
            let canonical = provider
                .classpaths()
                .first()
                .copied()
                .ok_or_else(|| WatcherError::UnknownClasspath(classpath.to_string()))?;
            return Ok(ResolvedWatcher {
                classpath: canonical,
                provider,
                kwargs,
            });
        }
        let resolved = self.resolve_validated(classpath, kwargs)?;
        if resolved.provider.kind() == TriggerKind::OneShot {
            return Err(WatcherError::NotRepeatable(resolved.classpath));
        }
        Ok(resolved)
    }

    /// Resolves a task trigger's `(classpath, kwargs)` (a `wait`, or a command's deferral): any
    /// trigger a provider serves, one-shot or repeatable (whose first event resumes the task),
    /// but not a pushed one (nothing would run it), validated without I/O.
    pub fn resolve_trigger(
        &self,
        classpath: &str,
        kwargs: &Value,
    ) -> Result<ResolvedWatcher, WatcherError> {
        #[cfg(feature = "msgqueue")]
        if triggerer_provider_msgqueue::CLASSPATHS.contains(&classpath) {
            return self.resolve_watcher(classpath, kwargs);
        }
        let resolved = self.resolve_validated(classpath, kwargs)?;
        if resolved.provider.kind() == TriggerKind::Pushed {
            return Err(WatcherError::PushedOnly(resolved.classpath));
        }
        Ok(resolved)
    }

    /// The provider of `classpath` (not a `MessageQueueTrigger`), with `kwargs` validated.
    fn resolve_validated(
        &self,
        classpath: &str,
        kwargs: &Value,
    ) -> Result<ResolvedWatcher, WatcherError> {
        let (canonical, provider) = self
            .resolve(classpath)
            .ok_or_else(|| WatcherError::UnknownClasspath(classpath.to_string()))?;
        provider.validate(kwargs)?;
        Ok(ResolvedWatcher {
            classpath: canonical,
            provider: provider.clone(),
            kwargs: kwargs.clone(),
        })
    }

    /// Checks a trigger as a definition or a command's deferral writes it: `{ env = "NAME" }`
    /// references stand in as placeholders while the provider validates the kwargs (no I/O;
    /// secrets are not where this runs), then come back. Returns the canonical classpath and
    /// the kwargs to store, references kept.
    pub fn check_trigger(
        &self,
        classpath: &str,
        kwargs: &Value,
        usage: TriggerUse,
    ) -> Result<(&'static str, Value), TriggerCheckError> {
        let (with_placeholders, placeholders) = crate::secrets::with_placeholders(kwargs)
            .map_err(|e| TriggerCheckError::Kwargs(e.to_string()))?;
        let resolved = match usage {
            TriggerUse::Watcher => self.resolve_watcher(classpath, &with_placeholders),
            TriggerUse::Task => self.resolve_trigger(classpath, &with_placeholders),
        };
        let resolved = resolved.map_err(|e| match e {
            WatcherError::UnknownClasspath(_) => TriggerCheckError::Classpath(format!(
                "unknown classpath `{classpath}`; this build knows: {}",
                self.canonical_classpaths().join(", ")
            )),
            e @ (WatcherError::NotRepeatable(_) | WatcherError::PushedOnly(_)) => {
                TriggerCheckError::Classpath(e.to_string())
            }
            WatcherError::Kwargs(e) => TriggerCheckError::Kwargs(e.to_string()),
        })?;
        if let Some(path) = crate::names::nul_in_json(&with_placeholders) {
            return Err(TriggerCheckError::Kwargs(format!(
                "kwargs `{path}` must not contain a NUL character"
            )));
        }
        let kwargs = placeholders
            .restore(&resolved.kwargs)
            .map_err(|e| TriggerCheckError::Kwargs(e.to_string()))?;
        Ok((resolved.classpath, kwargs))
    }

    /// The canonical classpaths of the [`TriggerKind::Pushed`] providers (webhooks): what no
    /// triggerer may claim, and what the HTTP server serves, finding each trigger's provider
    /// with [`Self::resolve`].
    pub fn pushed_classpaths(&self) -> Vec<&'static str> {
        self.providers
            .iter()
            .filter(|p| p.kind() == TriggerKind::Pushed)
            .filter_map(|p| p.classpaths().first().copied())
            .collect()
    }

    /// Canonical classpaths, for error messages that list what is available.
    pub fn canonical_classpaths(&self) -> Vec<&'static str> {
        #[allow(unused_mut)]
        let mut all: Vec<&'static str> = self
            .providers
            .iter()
            .filter_map(|p| p.classpaths().first().copied())
            .collect();
        #[cfg(feature = "msgqueue")]
        all.extend(triggerer_provider_msgqueue::CLASSPATHS.first());
        all
    }
}

/// Every provider this binary was built with.
pub fn builtin_providers() -> ProviderRegistry {
    #[allow(unused_mut)]
    let mut registry = ProviderRegistry::default();
    #[cfg(feature = "file")]
    registry
        .register(triggerer_provider_file::FileProvider::default())
        .expect("built-in providers claim distinct classpaths");
    #[cfg(feature = "kafka")]
    registry
        .register(triggerer_provider_kafka::KafkaProvider::default())
        .expect("built-in providers claim distinct classpaths");
    #[cfg(feature = "sqs")]
    registry
        .register(triggerer_provider_sqs::SqsProvider::default())
        .expect("built-in providers claim distinct classpaths");
    #[cfg(feature = "nats")]
    registry
        .register(triggerer_provider_nats::NatsProvider::default())
        .expect("built-in providers claim distinct classpaths");
    #[cfg(feature = "amqp")]
    registry
        .register(triggerer_provider_amqp::AmqpProvider::default())
        .expect("built-in providers claim distinct classpaths");
    #[cfg(feature = "time")]
    registry
        .register(triggerer_provider_time::DateTimeProvider)
        .expect("built-in providers claim distinct classpaths");
    #[cfg(feature = "time")]
    registry
        .register(triggerer_provider_time::TimeDeltaProvider)
        .expect("built-in providers claim distinct classpaths");
    #[cfg(feature = "airflow")]
    registry
        .register(triggerer_provider_airflow::DagRunStateProvider::default())
        .expect("built-in providers claim distinct classpaths");
    #[cfg(feature = "http")]
    registry
        .register(triggerer_provider_http::WebhookProvider)
        .expect("built-in providers claim distinct classpaths");
    #[cfg(feature = "http")]
    registry
        .register(triggerer_provider_http::HttpEventProvider)
        .expect("built-in providers claim distinct classpaths");
    #[cfg(feature = "mqtt")]
    registry
        .register(triggerer_provider_mqtt::MqttProvider)
        .expect("built-in providers claim distinct classpaths");
    #[cfg(feature = "sql")]
    registry
        .register(triggerer_provider_sql::TableProvider)
        .expect("built-in providers claim distinct classpaths");
    // Three classpaths (pub/sub, lists, streams) sharing one connection hub.
    #[cfg(feature = "redis")]
    {
        let (pubsub, list, stream) = triggerer_provider_redis::providers();
        let registered = [
            registry.register(pubsub),
            registry.register(list),
            registry.register(stream),
        ];
        registered
            .into_iter()
            .collect::<Result<(), _>>()
            .expect("built-in providers claim distinct classpaths");
    }
    registry
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(feature = "http")]
    #[test]
    fn a_webhook_is_pushed_watches_assets_and_is_no_task_trigger() {
        let registry = builtin_providers();
        assert_eq!(registry.pushed_classpaths(), ["http.WebhookTrigger"]);
        let kwargs = serde_json::json!({ "path": "github", "secret": { "env": "GH_SECRET" } });
        let (canonical, stored) = registry
            .check_trigger("http.WebhookTrigger", &kwargs, TriggerUse::Watcher)
            .expect("a webhook watcher");
        assert_eq!(canonical, "http.WebhookTrigger");
        assert_eq!(stored, kwargs, "the reference is stored, not a placeholder");
        let e = registry
            .check_trigger("http.WebhookTrigger", &kwargs, TriggerUse::Task)
            .expect_err("no triggerer would run it");
        assert!(
            matches!(&e, TriggerCheckError::Classpath(m) if m.contains("only watch an asset")),
            "{e}"
        );
        let (_, provider) = registry.resolve("http.WebhookTrigger").expect("registered");
        assert_eq!(provider.kind(), TriggerKind::Pushed);
    }
}

//! The `sql` provider: `sql.TableTrigger`, new rows of a PostgreSQL or MySQL/MariaDB table, by
//! a monotonic column, as events; schemes `postgres` and `mysql` of the common message-queue
//! trigger (`MessageQueueTrigger`).
//!
//! Kwargs: `url` (`postgres://…/db`, `postgresql://`, `mysql://…/db`, `mariadb://`; best
//! `{ env = "NAME" }` with a password), `table` (`name` or `schema.name`: ASCII letters,
//! digits, `_`, `$`; always quoted, so used exactly as written), `column` (an integer,
//! numeric, date or timestamp column whose values grow with new rows), `poke_interval`
//! (seconds, default 5), `batch_size` (1..=5000, default 500). URI form:
//! `postgres://[user[:password]@]host[:port]/DATABASE/TABLE[?options]` (the URI without its
//! last segment is `url`, the segment is `table`; `column` comes from `kwargs`).
//!
//! Each poll reads `SELECT <row as JSON>, <key> FROM table WHERE key > watermark ORDER BY key
//! LIMIT batch_size`, where the key is the column followed by the table's primary key (found
//! in the catalog), so rows sharing a column value are neither skipped nor repeated at a batch
//! boundary. Rows are JSON on the server (PostgreSQL `row_to_json`, MySQL `JSON_OBJECT` over
//! the `information_schema` column list). The trigger emits one batch, waits until all of it
//! committed, then polls again (at once after a full batch, after `poke_interval` otherwise).
//! Nothing is acknowledged at the source: the watermark is the checkpoint committed with the
//! events (see [`watermark`]). Payload `{table, column, value, row}`; dedup key
//! `sql:{host:port/db}/{table}/{column}={value}[,{pk}={value}…]`.

mod config;
mod db;
pub mod watermark;

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::{json, Map, Value};
use triggerer_sdk::{
    Delivery, Event, EventTrigger, KwargsError, Refusal, TriggerContext, TriggerError,
    TypedProvider,
};

pub use config::{
    Dialect, Ident, TableConfig, TableParams, DEFAULT_BATCH_SIZE, DEFAULT_POKE_INTERVAL,
    MAX_BATCH_SIZE,
};

/// The classpaths of [`TableProvider`].
pub const CLASSPATHS: &[&str] = &["sql.TableTrigger"];

/// Longest wait for a connection before the trigger fails (and is restarted with backoff).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// `sql.TableTrigger`.
#[derive(Debug, Clone, Copy, Default)]
pub struct TableProvider;

impl TypedProvider for TableProvider {
    type Params = TableParams;
    const NAME: &'static str = "sql";
    const CLASSPATHS: &'static [&'static str] = CLASSPATHS;
    const SCHEMES: &'static [&'static str] = &["postgres", "mysql"];
    const REFUSED: &'static [Refusal] = config::REFUSED;
    const HINTS: &'static [(&'static str, &'static str)] = config::HINTS;

    fn check(&self, params: &TableParams) -> Result<(), KwargsError> {
        TableConfig::from_params(params).map(drop)
    }

    fn queue_params(
        &self,
        queue: &str,
        kwargs: &Map<String, Value>,
    ) -> Option<Result<Map<String, Value>, KwargsError>> {
        config::queue_params(queue, kwargs)
    }

    fn build_trigger(&self, params: TableParams) -> Result<Box<dyn EventTrigger>, KwargsError> {
        let config = TableConfig::from_params(&params)?;
        let dialect = config
            .dialect
            .ok_or_else(|| KwargsError::new("url", "must be a postgres:// or mysql:// URL"))?;
        Ok(Box::new(TableTrigger { config, dialect }))
    }
}

/// One table watched by one column.
#[derive(Debug)]
pub struct TableTrigger {
    config: TableConfig,
    dialect: Dialect,
}

/// The trigger stopped: cancelled (`Ok`) or failed.
enum Stop {
    Cancelled,
    Failed(TriggerError),
}

impl From<TriggerError> for Stop {
    fn from(e: TriggerError) -> Self {
        Self::Failed(e)
    }
}

#[async_trait]
impl EventTrigger for TableTrigger {
    async fn run(self: Box<Self>, ctx: TriggerContext) -> Result<(), TriggerError> {
        match self.run_inner(&ctx).await {
            Ok(()) | Err(Stop::Cancelled) => Ok(()),
            Err(Stop::Failed(e)) => Err(e),
        }
    }
}

impl TableTrigger {
    fn fail(&self, what: impl std::fmt::Display) -> Stop {
        let db = match self.dialect {
            Dialect::Postgres => "postgres",
            Dialect::MySql => "mysql",
        };
        Stop::Failed(TriggerError::failed(format!(
            "{db} {}: {}",
            self.config.label,
            db::one_line(what)
        )))
    }

    /// `fut`, unless the trigger is cancelled first.
    async fn or_cancel<T>(
        ctx: &TriggerContext,
        fut: impl std::future::Future<Output = T>,
    ) -> Result<T, Stop> {
        tokio::select! {
            biased;
            _ = ctx.cancel.cancelled() => Err(Stop::Cancelled),
            v = fut => Ok(v),
        }
    }

    async fn run_inner(&self, ctx: &TriggerContext) -> Result<(), Stop> {
        let resume = watermark::resume(&ctx.checkpoint);
        let mut batch = resume.batch;
        let mut after = resume.after;
        let mut conn = match Self::or_cancel(
            ctx,
            tokio::time::timeout(CONNECT_TIMEOUT, db::connect(&self.config, self.dialect)),
        )
        .await?
        {
            Ok(Ok(conn)) => conn,
            Ok(Err(e)) => return Err(self.fail(e)),
            Err(_) => {
                return Err(self.fail(format!("connecting: no answer within {CONNECT_TIMEOUT:?}")))
            }
        };
        let plan = match Self::or_cancel(ctx, conn.plan(&self.config)).await? {
            Ok(plan) => plan,
            Err(e) => return Err(self.fail(e)),
        };
        tracing::debug!(table = %self.config.table, key = ?plan.names, unique = plan.unique, ?after, "watching");
        let result = self
            .poll_loop(ctx, &mut conn, &plan, &mut batch, &mut after)
            .await;
        conn.close().await;
        result
    }

    async fn poll_loop(
        &self,
        ctx: &TriggerContext,
        conn: &mut db::Conn,
        plan: &db::Plan,
        batch: &mut u64,
        after: &mut Option<watermark::Key>,
    ) -> Result<(), Stop> {
        let table = self.config.table.to_string();
        loop {
            let mut rows = Self::or_cancel(ctx, conn.fetch(plan, after.as_ref(), None))
                .await?
                .map_err(|e| self.fail(format!("reading `{table}`: {e}")))?;
            let full = rows.len() >= self.config.batch_size;
            if full && !plan.unique {
                // Without a primary key, rows sharing the last value must be read together:
                // drop them from this batch, or, when the whole batch shares one value, read
                // every row with it.
                let last = rows.last().map(|(_, k)| k[0].clone()).unwrap_or_default();
                rows.retain(|(_, k)| k[0] != last);
                if rows.is_empty() {
                    rows = Self::or_cancel(ctx, conn.fetch(plan, None, Some(&last)))
                        .await?
                        .map_err(|e| self.fail(format!("reading `{table}`: {e}")))?;
                }
            }
            if rows.is_empty() {
                Self::or_cancel(ctx, tokio::time::sleep(self.config.poke_interval)).await?;
                continue;
            }
            *batch += 1;
            let from = after.clone();
            let mut deliveries: Vec<Delivery> = Vec::with_capacity(rows.len());
            let mut seen: HashMap<(String, String), usize> = HashMap::new();
            for (i, (text, key)) in rows.iter().enumerate() {
                let mut row: Value = serde_json::from_str(text)
                    .map_err(|e| self.fail(format!("a row of `{table}` is not JSON: {e}")))?;
                scrub_nul(&mut row);
                let value = row.get(&plan.names[0]).cloned().unwrap_or(Value::Null);
                let no_pk = if plan.unique {
                    None
                } else {
                    let n = seen.entry((key[0].clone(), text.clone())).or_insert(0);
                    *n += 1;
                    Some((text.as_str(), *n - 1))
                };
                let dedup =
                    watermark::dedup_key(&self.config.label, &table, &plan.names, key, no_pk);
                let (cp_key, cp_value) = watermark::slot(*batch, i, &from, key);
                let event = Event::new(
                    json!({
                        "table": table,
                        "column": plan.names[0],
                        "value": value,
                        "row": row,
                    }),
                    dedup,
                )
                .with_checkpoint(cp_key, cp_value);
                let delivery = Self::or_cancel(ctx, ctx.sink.submit(event))
                    .await?
                    .map_err(TriggerError::from)?;
                deliveries.push(delivery);
            }
            // The whole batch committed before the next poll: at most `batch_size` rows are
            // ever ahead of the commit.
            for delivery in deliveries {
                Self::or_cancel(ctx, delivery)
                    .await?
                    .map_err(TriggerError::from)?;
            }
            *after = rows.last().map(|(_, k)| k.clone());
            if !full {
                Self::or_cancel(ctx, tokio::time::sleep(self.config.poke_interval)).await?;
            }
        }
    }
}

/// NUL characters (possible in MySQL text) replaced by U+FFFD: PostgreSQL cannot store them
/// in JSON, and an event it refuses would stop the trigger at that row for ever.
fn scrub_nul(value: &mut Value) {
    match value {
        Value::String(s) if s.contains('\0') => *s = s.replace('\0', "\u{FFFD}"),
        Value::Array(items) => items.iter_mut().for_each(scrub_nul),
        Value::Object(map) => {
            if map.keys().any(|k| k.contains('\0')) {
                let old = std::mem::take(map);
                for (k, v) in old {
                    map.insert(k.replace('\0', "\u{FFFD}"), v);
                }
            }
            map.values_mut().for_each(scrub_nul);
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nul_characters_are_replaced() {
        let mut v = json!({"a\u{0}": ["x\u{0}y", 1], "b": "ok"});
        scrub_nul(&mut v);
        assert_eq!(triggerer_sdk::nul_in_json(&v), None);
        assert_eq!(v["b"], "ok");
        assert_eq!(v["a\u{FFFD}"][0], "x\u{FFFD}y");
    }

    #[test]
    fn an_environment_url_is_refused_only_when_built_without_its_value() {
        use triggerer_sdk::Provider;
        let kwargs = json!({"url": "${env:DB}", "table": "t", "column": "id"});
        assert!(TableProvider.validate(&kwargs).is_ok());
        let kwargs = json!({"url": "postgres://u@h/db", "table": "t", "column": "id"});
        assert!(TableProvider.build(&kwargs).is_ok());
        assert_eq!(TableProvider.schemes(), &["postgres", "mysql"]);
        assert_eq!(TableProvider.classpaths(), CLASSPATHS);
    }
}

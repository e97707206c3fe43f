//! `sql.TableTrigger`'s kwargs ([`TableParams`]), checked without I/O into a [`TableConfig`]:
//! the database ([`Dialect`], connection URL, a label without credentials), the table and
//! column as validated identifiers ([`Ident`]), and the `postgres://…/DB/TABLE` and
//! `mysql://…/DB/TABLE` URIs of the common message-queue trigger.

use std::fmt;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{Map, Value};
use triggerer_sdk::de::{Bounded, Seconds, Trimmed};
use triggerer_sdk::{KwargsError, Refusal};

/// How long the trigger waits between polls when the last one found less than a batch.
pub const DEFAULT_POKE_INTERVAL: Duration = Duration::from_secs(5);
/// Rows per poll when `batch_size` is not given.
pub const DEFAULT_BATCH_SIZE: usize = 500;
/// The largest `batch_size` accepted.
pub const MAX_BATCH_SIZE: i64 = 5_000;

/// Starts a placeholder that stands for an environment reference during validation.
const PLACEHOLDER: &str = "${env:";

pub(crate) const REFUSED: &[Refusal] = &[Refusal {
    kwargs: &["conn_id", "postgres_conn_id", "mysql_conn_id", "sql_conn_id"],
    instead: "Airflow connections are not available here: set `url` (postgres://user[:password]@host:port/db \
              or mysql://user[:password]@host:port/db; with a password, best as { env = \"NAME\" })",
}];

pub(crate) const HINTS: &[(&str, &str)] = &[
    (
        "url",
        "the database, e.g. postgres://app@127.0.0.1:5432/shop or mysql://app@127.0.0.1:3306/shop \
         (with a password, best as { env = \"NAME\" })",
    ),
    ("table", "the table, e.g. \"orders\" or \"sales.orders\""),
    (
        "column",
        "a monotonic integer or timestamp column, e.g. \"id\" or \"created_at\"",
    ),
];

/// `sql.TableTrigger`'s kwargs.
#[derive(Clone, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a table with `url`, `table` and `column`"
)]
pub struct TableParams {
    pub url: Trimmed,
    pub table: Trimmed,
    pub column: Trimmed,
    #[serde(default)]
    pub poke_interval: Option<Seconds>,
    #[serde(default)]
    pub batch_size: Option<Bounded<1, MAX_BATCH_SIZE>>,
}

/// Without the URL's password.
impl fmt::Debug for TableParams {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TableParams")
            .field("url", &triggerer_sdk::redact_uri(&self.url.0))
            .field("table", &self.table.0)
            .field("column", &self.column.0)
            .field("poke_interval", &self.poke_interval)
            .field("batch_size", &self.batch_size)
            .finish()
    }
}

/// Which SQL the trigger speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Postgres,
    MySql,
}

impl Dialect {
    /// The dialect of a database URL by its scheme, if it is one this provider serves.
    pub fn of_url(url: &str) -> Option<Self> {
        let scheme = url.split_once("://")?.0.to_ascii_lowercase();
        match scheme.as_str() {
            "postgres" | "postgresql" => Some(Self::Postgres),
            "mysql" | "mariadb" => Some(Self::MySql),
            _ => None,
        }
    }

    /// `part` quoted as an identifier: `"a""b"` (PostgreSQL), `` `a``b` `` (MySQL).
    pub fn quote(self, part: &str) -> String {
        match self {
            Self::Postgres => format!("\"{}\"", part.replace('"', "\"\"")),
            Self::MySql => format!("`{}`", part.replace('`', "``")),
        }
    }
}

/// A table or column name: one or (for a table) two dot-separated parts, each made of ASCII
/// letters, digits, `_` and `$`, not starting with a digit, at most 63 characters. Used exactly
/// as written (always quoted, so case-sensitive in PostgreSQL).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ident {
    /// `[schema, table]` or `[name]`.
    pub parts: Vec<String>,
}

impl Ident {
    /// `text` as an identifier of at most `max_parts` parts; the error says what is wrong.
    pub fn parse(text: &str, max_parts: usize) -> Result<Self, String> {
        let parts: Vec<&str> = text.split('.').collect();
        if parts.len() > max_parts {
            return Err(if max_parts == 1 {
                format!("`{text}` must be a single column name, without a table or schema")
            } else {
                format!("`{text}` must be `table` or `schema.table`")
            });
        }
        for part in &parts {
            if part.is_empty() {
                return Err(format!("`{text}` has an empty name part"));
            }
            if part.len() > 63 {
                return Err(format!("`{part}` is longer than 63 characters"));
            }
            if part.starts_with(|c: char| c.is_ascii_digit()) {
                return Err(format!("`{part}` must not start with a digit"));
            }
            if let Some(bad) = part
                .chars()
                .find(|c| !(c.is_ascii_alphanumeric() || *c == '_' || *c == '$'))
            {
                return Err(format!(
                    "`{text}` holds {bad:?}: names are ASCII letters, digits, `_` and `$`"
                ));
            }
        }
        Ok(Self {
            parts: parts.into_iter().map(str::to_string).collect(),
        })
    }

    /// The name quoted for `dialect`, parts joined with `.`.
    pub fn quoted(&self, dialect: Dialect) -> String {
        self.parts
            .iter()
            .map(|p| dialect.quote(p))
            .collect::<Vec<_>>()
            .join(".")
    }

    /// The schema part, if given.
    pub fn schema(&self) -> Option<&str> {
        (self.parts.len() == 2).then(|| self.parts[0].as_str())
    }

    /// The last part (the table's or column's own name).
    pub fn name(&self) -> &str {
        self.parts.last().map_or("", String::as_str)
    }
}

impl fmt::Display for Ident {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.parts.join("."))
    }
}

/// A trigger's kwargs, checked. `Debug` never shows the password.
#[derive(Clone)]
pub struct TableConfig {
    /// `None` while `url` is an environment placeholder (sync time).
    pub dialect: Option<Dialect>,
    /// The URL as given, password included: what is connected to.
    pub url: String,
    /// `host:port/db` (or the placeholder): in messages and dedup keys.
    pub label: String,
    pub table: Ident,
    pub column: Ident,
    pub poke_interval: Duration,
    pub batch_size: usize,
}

impl fmt::Debug for TableConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TableConfig")
            .field("dialect", &self.dialect)
            .field("label", &self.label)
            .field("table", &self.table)
            .field("column", &self.column)
            .field("poke_interval", &self.poke_interval)
            .field("batch_size", &self.batch_size)
            .finish()
    }
}

impl TableConfig {
    /// The config `params` stand for, or the first kwarg that is wrong. No I/O.
    pub fn from_params(params: &TableParams) -> Result<Self, KwargsError> {
        let url = params.url.0.clone();
        let (dialect, label) = if url.contains(PLACEHOLDER) {
            (None, url.clone())
        } else {
            let dialect = Dialect::of_url(&url).ok_or_else(|| {
                KwargsError::new(
                    "url",
                    "must be a postgres:// (postgresql://) or mysql:// (mariadb://) URL, e.g. \
                     postgres://app@127.0.0.1:5432/shop",
                )
            })?;
            (Some(dialect), label_of(&url)?)
        };
        let table = Ident::parse(&params.table.0, 2).map_err(|e| KwargsError::new("table", e))?;
        let column =
            Ident::parse(&params.column.0, 1).map_err(|e| KwargsError::new("column", e))?;
        Ok(Self {
            dialect,
            url,
            label,
            table,
            column,
            poke_interval: params.poke_interval.map_or(DEFAULT_POKE_INTERVAL, |s| s.0),
            batch_size: params
                .batch_size
                .map_or(DEFAULT_BATCH_SIZE, |b| b.get() as usize),
        })
    }
}

/// `host:port/db` of a database URL, or why it is not one. The URL parser's own errors are not
/// repeated: they may quote the URL, password and all.
fn label_of(url: &str) -> Result<String, KwargsError> {
    let parsed = url::Url::parse(url).map_err(|_| {
        KwargsError::new(
            "url",
            "is not a valid URL (SCHEME://[user[:password]@]host[:port]/database)",
        )
    })?;
    let host = parsed
        .host_str()
        .filter(|h| !h.is_empty())
        .ok_or_else(|| KwargsError::new("url", "names no host"))?;
    let db = parsed.path().trim_start_matches('/');
    if db.is_empty() {
        return Err(KwargsError::new(
            "url",
            "names no database (SCHEME://host:port/database)",
        ));
    }
    if db.contains('/') {
        return Err(KwargsError::new(
            "url",
            "has more than a database in its path (SCHEME://host:port/database); the table is `table`",
        ));
    }
    Ok(match parsed.port() {
        Some(port) => format!("{host}:{port}/{db}"),
        None => format!("{host}/{db}"),
    })
}

/// The kwargs a `postgres://[user[:password]@]host[:port]/DATABASE/TABLE[?options]` or
/// `mysql://…/DATABASE/TABLE` URI stands for: `url` is the URI without its last path segment
/// (the query string kept), `table` that segment; merged with the watcher's other kwargs
/// (`column` among them). `None` for another scheme.
pub(crate) fn queue_params(
    queue: &str,
    kwargs: &Map<String, Value>,
) -> Option<Result<Map<String, Value>, KwargsError>> {
    let (scheme, rest) = queue.split_once("://")?;
    Dialect::of_url(queue)?;
    Some(queue_params_inner(scheme, rest, kwargs))
}

fn queue_params_inner(
    scheme: &str,
    rest: &str,
    kwargs: &Map<String, Value>,
) -> Result<Map<String, Value>, KwargsError> {
    let (rest, query) = match rest.split_once('?') {
        Some((r, q)) => (r, Some(q)),
        None => (rest, None),
    };
    // A password may hold `/`: the authority ends at the first `/` after the last `@`.
    let after_at = rest.rfind('@').map_or(0, |at| at + 1);
    let Some(slash) = rest[after_at..].find('/') else {
        return Err(KwargsError::new(
            "queue",
            format!("names no database and table ({scheme}://host:port/DATABASE/TABLE)"),
        ));
    };
    let (authority, path) = rest.split_at(after_at + slash);
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let [db, table] = segments.as_slice() else {
        return Err(KwargsError::new(
            "queue",
            format!("must be {scheme}://host:port/DATABASE/TABLE (TABLE may be schema.table)"),
        ));
    };
    if db.is_empty() || table.is_empty() {
        return Err(KwargsError::new(
            "queue",
            format!("must be {scheme}://host:port/DATABASE/TABLE (TABLE may be schema.table)"),
        ));
    }
    let mut merged = kwargs.clone();
    for field in ["url", "table"] {
        if merged.contains_key(field) {
            return Err(KwargsError::new(
                field,
                "is given by the `queue` URI; set one or the other",
            ));
        }
    }
    let url = match query {
        Some(q) => format!("{scheme}://{authority}/{db}?{q}"),
        None => format!("{scheme}://{authority}/{db}"),
    };
    merged.insert("url".into(), Value::String(url));
    merged.insert("table".into(), Value::String(table.to_string()));
    Ok(merged)
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use triggerer_sdk::parse_params;

    use super::*;
    use crate::TableProvider;

    fn config(kwargs: Value) -> Result<TableConfig, KwargsError> {
        let params: TableParams = parse_params(&TableProvider, &kwargs)?;
        TableConfig::from_params(&params)
    }

    fn field_of(kwargs: Value) -> String {
        config(kwargs).expect_err("refused").field
    }

    #[test]
    fn defaults_and_a_label_without_the_password() {
        let c = config(json!({
            "url": "postgres://app:s3cret@db.example:5433/shop",
            "table": "sales.orders",
            "column": "id",
        }))
        .unwrap();
        assert_eq!(c.dialect, Some(Dialect::Postgres));
        assert_eq!(c.label, "db.example:5433/shop");
        assert_eq!(c.poke_interval, DEFAULT_POKE_INTERVAL);
        assert_eq!(c.batch_size, DEFAULT_BATCH_SIZE);
        assert_eq!(c.table.schema(), Some("sales"));
        assert!(!format!("{c:?}").contains("s3cret"));
        let c = config(json!({
            "url": "mysql://root@127.0.0.1/shop", "table": "t", "column": "ts",
            "poke_interval": 0.5, "batch_size": 10,
        }))
        .unwrap();
        assert_eq!(c.dialect, Some(Dialect::MySql));
        assert_eq!(c.label, "127.0.0.1/shop");
        assert_eq!(c.poke_interval, Duration::from_millis(500));
        assert_eq!(c.batch_size, 10);
    }

    #[test]
    fn kwargs_errors_name_the_field() {
        let ok = json!({"url": "postgres://h/db", "table": "t", "column": "id"});
        let with = |k: &str, v: Value| {
            let mut m = ok.clone();
            m[k] = v;
            m
        };
        assert_eq!(field_of(with("url", json!("redis://h/0"))), "url");
        assert_eq!(field_of(with("url", json!("postgres://h"))), "url");
        assert_eq!(field_of(with("url", json!("postgres://h/db/t"))), "url");
        assert_eq!(field_of(with("table", json!("a.b.c"))), "table");
        assert_eq!(field_of(with("table", json!("t; DROP TABLE x"))), "table");
        assert_eq!(field_of(with("table", json!("1t"))), "table");
        assert_eq!(field_of(with("column", json!("t.id"))), "column");
        assert_eq!(field_of(with("column", json!("id\""))), "column");
        assert_eq!(field_of(with("column", json!(""))), "column");
        assert_eq!(field_of(with("poke_interval", json!(0))), "poke_interval");
        assert_eq!(field_of(with("batch_size", json!(0))), "batch_size");
        assert_eq!(field_of(with("batch_size", json!(5_001))), "batch_size");
        assert_eq!(field_of(with("typo", json!(1))), "typo");
        assert_eq!(
            field_of(with("postgres_conn_id", json!("pg"))),
            "postgres_conn_id"
        );
        let mut missing = ok.clone();
        missing.as_object_mut().unwrap().remove("column");
        let e = config(missing).unwrap_err();
        assert!(e.to_string().contains("column"), "{e}");
        // An environment reference passes at sync time, whatever it will hold.
        assert!(config(with("url", json!("${env:DB_URL}"))).is_ok());
    }

    #[test]
    fn identifiers_are_quoted_for_each_dialect() {
        let t = Ident::parse("sales.Orders", 2).unwrap();
        assert_eq!(t.quoted(Dialect::Postgres), "\"sales\".\"Orders\"");
        assert_eq!(t.quoted(Dialect::MySql), "`sales`.`Orders`");
        // Quote characters are doubled (names from the catalog may hold anything).
        assert_eq!(Dialect::Postgres.quote("a\"b"), "\"a\"\"b\"");
        assert_eq!(Dialect::MySql.quote("a`b"), "`a``b`");
        for bad in ["", "a..b", "a b", "a-b", "a\"", "a`", "x'y", "é", ".a"] {
            assert!(Ident::parse(bad, 2).is_err(), "{bad:?} accepted");
        }
        assert!(Ident::parse(&"a".repeat(64), 1).is_err());
        assert!(Ident::parse("_a$1", 1).is_ok());
    }

    #[test]
    fn a_queue_uri_gives_url_and_table() {
        let kwargs: Map<String, Value> = json!({"column": "id"}).as_object().unwrap().clone();
        let got = queue_params(
            "postgres://app:p/w@h:5432/shop/sales.orders?sslmode=disable",
            &kwargs,
        )
        .unwrap()
        .unwrap();
        assert_eq!(got["url"], "postgres://app:p/w@h:5432/shop?sslmode=disable");
        assert_eq!(got["table"], "sales.orders");
        assert_eq!(got["column"], "id");
        let got = queue_params("mysql://root@127.0.0.1:3306/shop/orders", &kwargs)
            .unwrap()
            .unwrap();
        assert_eq!(got["url"], "mysql://root@127.0.0.1:3306/shop");
        assert_eq!(got["table"], "orders");
        assert!(queue_params("kafka://h/t", &kwargs).is_none());
        let e = queue_params("postgres://h/shop", &kwargs)
            .unwrap()
            .unwrap_err();
        assert_eq!(e.field, "queue");
        let e = queue_params("postgres://h", &kwargs).unwrap().unwrap_err();
        assert_eq!(e.field, "queue");
        let mut with_table = kwargs.clone();
        with_table.insert("table".into(), json!("x"));
        let e = queue_params("postgres://h/shop/orders", &with_table)
            .unwrap()
            .unwrap_err();
        assert_eq!(e.field, "table");
    }

    #[test]
    fn a_queue_uri_resolves_through_the_provider() {
        use triggerer_sdk::Provider;
        let kwargs: Map<String, Value> = json!({"column": "id"}).as_object().unwrap().clone();
        let merged = TableProvider
            .queue_kwargs("postgres://u@h/db/orders", &kwargs)
            .unwrap()
            .unwrap();
        assert_eq!(merged["table"], "orders");
        let refused = TableProvider
            .queue_kwargs("postgres://u@h/db/orders", &Map::new())
            .unwrap()
            .unwrap_err();
        assert_eq!(refused.field, "column");
    }
}

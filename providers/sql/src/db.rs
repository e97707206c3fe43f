//! The two databases: connecting, finding the table's columns and primary key in the catalog,
//! and reading the next rows as JSON text with their keys.

use std::str::FromStr;

use sqlx::mysql::{MySqlConnectOptions, MySqlConnection};
use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::{Connection, Row};

use crate::config::{Dialect, Ident, TableConfig};
use crate::watermark::Key;

/// One connection per trigger.
pub enum Conn {
    Pg(PgConnection),
    My(MySqlConnection),
}

/// The statements of one trigger, built from the catalog. Every name in them is quoted; every
/// value is a bound parameter.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The watched column's name as the catalog spells it, then the primary key columns'.
    pub names: Vec<String>,
    /// Whether the table has a primary key (other than the watched column alone, which then
    /// identifies a row by itself).
    pub unique: bool,
    first: String,
    after: String,
    equal: String,
    /// MySQL: the JSON keys (column names), bound before the other parameters.
    json_keys: Vec<String>,
}

/// One line: a database error's message without line breaks.
pub fn one_line(e: impl std::fmt::Display) -> String {
    e.to_string()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

pub async fn connect(config: &TableConfig, dialect: Dialect) -> Result<Conn, String> {
    let what = |e: sqlx::Error| format!("connecting: {}", one_line(e));
    match dialect {
        Dialect::Postgres => {
            let opts = PgConnectOptions::from_str(&config.url)
                .map_err(|_| "`url` is not a valid PostgreSQL URL".to_string())?
                .options([("TimeZone", "UTC")]);
            Ok(Conn::Pg(
                PgConnection::connect_with(&opts).await.map_err(what)?,
            ))
        }
        Dialect::MySql => {
            let url = config.url.replacen("mariadb://", "mysql://", 1);
            let opts = MySqlConnectOptions::from_str(&url)
                .map_err(|_| "`url` is not a valid MySQL URL".to_string())?
                .timezone(Some("+00:00".to_string()));
            Ok(Conn::My(
                MySqlConnection::connect_with(&opts).await.map_err(what)?,
            ))
        }
    }
}

const PG_TYPES: &[&str] = &[
    "smallint",
    "integer",
    "bigint",
    "numeric",
    "timestamp",
    "date",
];
const MY_TYPES: &[&str] = &[
    "tinyint",
    "smallint",
    "mediumint",
    "int",
    "bigint",
    "decimal",
    "date",
    "datetime",
    "timestamp",
];

fn not_orderable(column: &Ident, ty: &str) -> String {
    format!("column `{column}` is of type `{ty}`: the watched column must be an integer, numeric, date or timestamp column")
}

impl Conn {
    /// The statements for `config`'s table and column, or why there are none (no such table
    /// or column, a column of another type).
    pub async fn plan(&mut self, config: &TableConfig) -> Result<Plan, String> {
        match self {
            Self::Pg(c) => plan_pg(c, config).await,
            Self::My(c) => plan_my(c, config).await,
        }
    }

    /// Up to `limit` rows after `after` (all rows when `None`), in key order, or, with
    /// `equal`, every row whose watched column equals it.
    pub async fn fetch(
        &mut self,
        plan: &Plan,
        after: Option<&Key>,
        equal: Option<&str>,
    ) -> Result<Vec<(String, Key)>, String> {
        let (sql, binds): (&str, Vec<&str>) = match (equal, after) {
            (Some(v), _) => (&plan.equal, vec![v]),
            (None, Some(key)) => (&plan.after, key.iter().map(String::as_str).collect()),
            (None, None) => (&plan.first, Vec::new()),
        };
        let n = plan.names.len();
        match self {
            Self::Pg(c) => {
                let mut q = sqlx::query(sql);
                for b in binds {
                    q = q.bind(b);
                }
                let rows = q.fetch_all(&mut *c).await.map_err(one_line)?;
                rows.iter()
                    .map(|r| {
                        let json: String = r.try_get(0).map_err(one_line)?;
                        let key = (1..=n)
                            .map(|i| r.try_get::<String, _>(i).map_err(one_line))
                            .collect::<Result<Key, _>>()?;
                        Ok((json, key))
                    })
                    .collect()
            }
            Self::My(c) => {
                let mut q = sqlx::query(sql);
                for k in &plan.json_keys {
                    q = q.bind(k.as_str());
                }
                for b in binds {
                    q = q.bind(b);
                }
                let rows = q.fetch_all(&mut *c).await.map_err(one_line)?;
                rows.iter()
                    .map(|r| {
                        let json: String = r.try_get(0).map_err(one_line)?;
                        let key = (1..=n)
                            .map(|i| r.try_get::<String, _>(i).map_err(one_line))
                            .collect::<Result<Key, _>>()?;
                        Ok((json, key))
                    })
                    .collect()
            }
        }
    }

    pub async fn close(self) {
        let _ = match self {
            Self::Pg(c) => c.close().await,
            Self::My(c) => c.close().await,
        };
    }
}

/// The shared shape: `SELECT json, key… FROM table t WHERE … ORDER BY key… [LIMIT n]`.
#[allow(clippy::too_many_arguments)]
fn statements(
    dialect: Dialect,
    table: &str,
    json: &str,
    names: &[String],
    casts: &[String],
    text: impl Fn(&str) -> String,
    limit: usize,
) -> (String, String, String) {
    let col = |n: &str| format!("t.{}", dialect.quote(n));
    let keys: Vec<String> = names.iter().map(|n| text(&col(n))).collect();
    let select = format!("SELECT {json}, {} FROM {table} AS t", keys.join(", "));
    let order: Vec<String> = names.iter().map(|n| col(n)).collect();
    let order = format!("ORDER BY {}", order.join(", "));
    let not_null = format!("{} IS NOT NULL", col(&names[0]));
    let first = format!("{select} WHERE {not_null} {order} LIMIT {limit}");
    let after = format!(
        "{select} WHERE {not_null} AND ({}) > ({}) {order} LIMIT {limit}",
        order_cols(names, &col),
        casts.join(", ")
    );
    let equal = format!("{select} WHERE {} = {} {order}", col(&names[0]), casts[0]);
    (first, after, equal)
}

fn order_cols(names: &[String], col: &impl Fn(&str) -> String) -> String {
    names.iter().map(|n| col(n)).collect::<Vec<_>>().join(", ")
}

async fn plan_pg(c: &mut PgConnection, config: &TableConfig) -> Result<Plan, String> {
    let table = config.table.quoted(Dialect::Postgres);
    let columns: Vec<(String, String)> = sqlx::query_as(
        "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a \
         WHERE a.attrelid = $1::regclass AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
    )
    .bind(&table)
    .fetch_all(&mut *c)
    .await
    .map_err(|e| format!("table `{}`: {}", config.table, one_line(e)))?;
    let column = config.column.name();
    let Some((_, ty)) = columns.iter().find(|(n, _)| n == column) else {
        return Err(format!("table `{}` has no column `{column}`", config.table));
    };
    if !PG_TYPES.iter().any(|t| ty.starts_with(t)) {
        return Err(not_orderable(&config.column, ty));
    }
    let pk: Vec<(String, String)> = sqlx::query_as(
        "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod) FROM pg_index i \
         JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) \
         WHERE i.indrelid = $1::regclass AND i.indisprimary \
         ORDER BY array_position(i.indkey::int2[], a.attnum)",
    )
    .bind(&table)
    .fetch_all(&mut *c)
    .await
    .map_err(|e| format!("table `{}`: primary key: {}", config.table, one_line(e)))?;
    let unique = !pk.is_empty();
    let mut typed = vec![(column.to_string(), ty.clone())];
    typed.extend(pk.into_iter().filter(|(n, _)| n != column));
    let names: Vec<String> = typed.iter().map(|(n, _)| n.clone()).collect();
    let casts: Vec<String> = typed
        .iter()
        .enumerate()
        .map(|(i, (_, ty))| format!("CAST(${} AS {ty})", i + 1))
        .collect();
    let (first, after, equal) = statements(
        Dialect::Postgres,
        &table,
        "row_to_json(t)::text",
        &names,
        &casts,
        |c| format!("({c})::text"),
        config.batch_size,
    );
    Ok(Plan {
        names,
        unique,
        first,
        after,
        equal,
        json_keys: Vec::new(),
    })
}

async fn plan_my(c: &mut MySqlConnection, config: &TableConfig) -> Result<Plan, String> {
    let schema = config.table.schema().map(str::to_string);
    let name = config.table.name().to_string();
    let columns: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT CAST(COLUMN_NAME AS CHAR), CAST(DATA_TYPE AS CHAR), CAST(COLUMN_TYPE AS CHAR) \
         FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = COALESCE(?, DATABASE()) \
         AND TABLE_NAME = ? ORDER BY ORDINAL_POSITION",
    )
    .bind(&schema)
    .bind(&name)
    .fetch_all(&mut *c)
    .await
    .map_err(|e| format!("table `{}`: {}", config.table, one_line(e)))?;
    if columns.is_empty() {
        return Err(format!("table `{}` does not exist", config.table));
    }
    let column = config.column.name();
    let Some((col_name, ty, full)) = columns
        .iter()
        .find(|(n, _, _)| n.eq_ignore_ascii_case(column))
        .cloned()
    else {
        return Err(format!("table `{}` has no column `{column}`", config.table));
    };
    if !MY_TYPES.contains(&ty.to_ascii_lowercase().as_str()) {
        return Err(not_orderable(&config.column, &full));
    }
    let pk: Vec<(String,)> = sqlx::query_as(
        "SELECT CAST(COLUMN_NAME AS CHAR) FROM information_schema.KEY_COLUMN_USAGE \
         WHERE TABLE_SCHEMA = COALESCE(?, DATABASE()) AND TABLE_NAME = ? \
         AND CONSTRAINT_NAME = 'PRIMARY' ORDER BY ORDINAL_POSITION",
    )
    .bind(&schema)
    .bind(&name)
    .fetch_all(&mut *c)
    .await
    .map_err(|e| format!("table `{}`: primary key: {}", config.table, one_line(e)))?;
    let unique = !pk.is_empty();
    let mut names = vec![col_name.clone()];
    names.extend(
        pk.into_iter()
            .map(|(n,)| n)
            .filter(|n| !n.eq_ignore_ascii_case(&col_name)),
    );
    let cast = |n: &str| -> String {
        let (ty, full) = columns
            .iter()
            .find(|(c, _, _)| c == n)
            .map(|(_, t, f)| (t.to_ascii_lowercase(), f.to_ascii_lowercase()))
            .unwrap_or_default();
        match ty.as_str() {
            "tinyint" | "smallint" | "mediumint" | "int" | "bigint"
                if full.contains("unsigned") =>
            {
                "CAST(? AS UNSIGNED)".into()
            }
            "tinyint" | "smallint" | "mediumint" | "int" | "bigint" => "CAST(? AS SIGNED)".into(),
            "decimal" => "CAST(? AS DECIMAL(65,30))".into(),
            "datetime" | "timestamp" => "CAST(? AS DATETIME(6))".into(),
            "date" => "CAST(? AS DATE)".into(),
            _ => "?".into(),
        }
    };
    let casts: Vec<String> = names.iter().map(|n| cast(n)).collect();
    let json_keys: Vec<String> = columns.iter().map(|(n, _, _)| n.clone()).collect();
    let pairs: Vec<String> = json_keys
        .iter()
        .map(|n| format!("?, t.{}", Dialect::MySql.quote(n)))
        .collect();
    let json = format!("CAST(JSON_OBJECT({}) AS CHAR)", pairs.join(", "));
    let (first, after, equal) = statements(
        Dialect::MySql,
        &config.table.quoted(Dialect::MySql),
        &json,
        &names,
        &casts,
        |c| format!("CAST({c} AS CHAR)"),
        config.batch_size,
    );
    Ok(Plan {
        names,
        unique,
        first,
        after,
        equal,
        json_keys,
    })
}

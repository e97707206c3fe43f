//! The database: connecting, migrating, and every SQL statement the service runs.
//!
//! Two engines, one code path. Each query is written once in SQL both SQLite and PostgreSQL
//! accept (`$n` placeholders, `ON CONFLICT`, `RETURNING`) and compiled for both pools by
//! [`with_db!`]; the only dialect switch is row locking ([`Store::skip_locked`]). Submodules
//! group statements by who calls them. This module owns transactions and their boundaries; it
//! must not decide policy (what is due, what is ready): callers pass that in.

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Connection, PgPool, SqlitePool};
use thiserror::Error;

mod cli;
mod events;
mod runs;
mod schedule;
mod sync;
mod tasks;
mod triggers;

pub use cli::{AssetRow, DagRow, EventRow, RunRow, TriggerRow};
pub use events::{NewEvent, Origin};
pub use runs::{ManualRun, NewDagRun, QueuedDag};
pub use schedule::{BackfillReport, DagTiming, DueSlot, SlotOutcome, SlotPolicy};
pub use sync::{AssetPlan, DagPlan, SyncPlan, SyncReport, WatcherPlan};
pub use tasks::{
    ClaimedTry, Deferral, EndedTry, ExecutorStatus, Status, TaskInstanceId, TaskLog, TaskRow,
    TriggererStatus, TryEnd, TryUpdate, EXECUTOR_JOB,
};
pub use triggers::{
    AssignedTrigger, Claim, JobId, SCHEDULER_JOB, TASK_TRIGGER_FAILURES, TRIGGERER_JOB,
};

/// A caller's asset condition, asked with the names of the assets a DAG has queued events for
/// (re-checked by the store on the rows it locked).
pub type AssetCondition<'a> = dyn Fn(&std::collections::BTreeSet<String>) -> bool + Sync + 'a;

/// Most rows bound into one statement; keeps every engine under its bind-parameter limit.
const CHUNK: usize = 500;

#[derive(Debug, Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Sqlx(#[from] sqlx::Error),
    #[error("migrating the database failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error(
        "unsupported database URL `{0}`: use sqlite://PATH (for example sqlite://triggerer.db) \
         or postgres://USER@HOST/DB"
    )]
    UnsupportedUrl(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    /// Input the store refuses before writing anything (a reserved run id, say).
    #[error("{0}")]
    Invalid(String),
    #[error(
        "this sync would remove every asset and DAG now defined ({assets} asset(s), {dags} \
         DAG(s)) and keep none of them; nothing was changed. If that is what you want, pass \
         --allow-empty"
    )]
    WouldRemoveEverything { assets: usize, dags: usize },
    /// A state or run type in the database that this version does not know (a newer
    /// version wrote it).
    #[error(transparent)]
    UnknownName(#[from] crate::dag_run::UnknownName),
    #[error(
        "the database file {path} was {what} while this process had it open; what it wrote \
         since would be lost, so it stops. Restore the file or point --database-url at the new \
         one, then start again"
    )]
    DatabaseFileGone { path: String, what: &'static str },
}

impl StoreError {
    /// A failure of the database or its storage worth retrying (database restarting, network
    /// blip, disk full, I/O error), as opposed to a statement the database refused. A full
    /// disk is the database's trouble, not the event's: treating it as a refusal would fail
    /// every event in turn.
    pub fn is_transient(&self) -> bool {
        match self {
            StoreError::Sqlx(
                sqlx::Error::Io(_)
                | sqlx::Error::PoolTimedOut
                | sqlx::Error::PoolClosed
                | sqlx::Error::Tls(_)
                | sqlx::Error::Protocol(_)
                | sqlx::Error::WorkerCrashed,
            ) => true,
            StoreError::Sqlx(sqlx::Error::Database(db)) => {
                db.code().is_some_and(|code| transient_code(&code))
            }
            _ => false,
        }
    }
}

/// `sqlite::memory:` and `mode=memory` databases have no file to watch.
fn is_in_memory(url: &str) -> bool {
    url.contains(":memory:") || url.contains("mode=memory")
}

/// Whether a database error code (SQLite's extended result code, PostgreSQL's SQLSTATE) names
/// a passing condition of the server or its storage.
fn transient_code(code: &str) -> bool {
    if let Ok(extended) = code.parse::<i32>() {
        // SQLite primary codes: BUSY, LOCKED, IOERR, FULL, CANTOPEN, PROTOCOL.
        return matches!(extended & 0xff, 5 | 6 | 10 | 13 | 14 | 15);
    }
    // PostgreSQL: connection exceptions, insufficient resources (disk full, out of memory, too
    // many connections), operator intervention (shutting down, starting up), and the two
    // conflicts a retry resolves.
    code.starts_with("08")
        || code.starts_with("53")
        || code.starts_with("57P")
        || code == "40001"
        || code == "40P01"
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

#[derive(Debug, Clone)]
pub(crate) enum Db {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// Runs `$body` with `$pool` bound to the concrete pool, so one body serves both engines.
macro_rules! with_db {
    ($store:expr, $pool:ident => $body:expr) => {
        match &$store.db {
            $crate::store::Db::Sqlite($pool) => $body,
            $crate::store::Db::Postgres($pool) => $body,
        }
    };
}
pub(crate) use with_db;

/// Stores `$info: Option<DagRunInfo>` as `$dag_id`'s next slot, on `$conn` (a transaction).
macro_rules! store_next_dagrun {
    ($conn:expr, $dag_id:expr, $info:expr) => {{
        let info: Option<$crate::timetable::DagRunInfo> = $info;
        sqlx::query(
            "UPDATE dag SET next_dagrun = $1, next_dagrun_data_interval_start = $2, \
             next_dagrun_data_interval_end = $3, next_dagrun_create_after = $4 WHERE dag_id = $5",
        )
        .bind(info.map(|i| i.logical_date()))
        .bind(info.map(|i| i.data_interval.start))
        .bind(info.map(|i| i.data_interval.end))
        .bind(info.map(|i| i.run_after))
        .bind($dag_id)
        .execute($conn)
        .await?;
    }};
}
pub(crate) use store_next_dagrun;

/// Inserts every [`NewDagRun`] of `$runs` as a QUEUED run with a task instance per task of its
/// DAG, on `$tx`, in multi-row statements. The one place a `dag_run` row is made. A run whose id or logical date is taken is left out
/// (`ON CONFLICT DO NOTHING`): callers that checked first treat that as a conflict, the batch
/// as its signal to fall back. Evaluates to the `(dag_id, id)` of the runs inserted.
macro_rules! insert_dag_runs {
    ($tx:expr, $runs:expr, $now:expr) => {{
        let runs: &[$crate::store::NewDagRun<'_>] = $runs;
        let mut inserted: Vec<(String, i64)> = Vec::with_capacity(runs.len());
        // 11 values a run: under SQLite's oldest limit of 999 bound values a statement.
        for chunk in runs.chunks(90) {
            let mut qb = sqlx::QueryBuilder::new(
                "INSERT INTO dag_run (dag_id, run_id, run_type, state, logical_date, \
                 data_interval_start, data_interval_end, run_after, conf, queued_at, creating_job_id) ",
            );
            qb.push_values(chunk, |mut b, run| {
                b.push_bind(run.dag_id)
                    .push_bind(run.run_id.as_str())
                    .push_bind(run.run_type.as_str())
                    .push_bind($crate::dag_run::DagRunState::Queued.as_str())
                    .push_bind(run.logical_date)
                    .push_bind(run.data_interval.map(|i| i.start))
                    .push_bind(run.data_interval.map(|i| i.end))
                    .push_bind(run.run_after)
                    .push_bind(sqlx::types::Json(run.conf))
                    .push_bind($now)
                    .push_bind(run.creating_job_id);
            });
            qb.push(" ON CONFLICT DO NOTHING RETURNING dag_id, id");
            for row in qb.build().fetch_all(&mut *$tx).await? {
                inserted.push((row.try_get("dag_id")?, row.try_get("id")?));
            }
        }
        // A run gets its task instances (no state yet) in the transaction that makes it.
        let ids: Vec<i64> = inserted.iter().map(|(_, id)| *id).collect();
        for chunk in ids.chunks($crate::store::CHUNK) {
            let mut qb = sqlx::QueryBuilder::new(
                "INSERT INTO task_instance (dag_run_id, dag_id, run_id, task_id, operator, max_tries, updated_at) \
                 SELECT r.id, r.dag_id, r.run_id, t.task_id, t.operator, t.retries, ",
            );
            qb.push_bind($now)
                .push(" FROM dag_run r JOIN dag_task t ON t.dag_id = r.dag_id WHERE r.id IN ");
            $crate::store::push_in_list(&mut qb, chunk);
            qb.build().execute(&mut *$tx).await?;
        }
        inserted
    }};
}
pub(crate) use insert_dag_runs;

/// Links `$event_ids` to run `$dag_run_id` and removes exactly those queue rows of `$dag_id`:
/// an event leaves the queue only in the transaction that gives it a run.
macro_rules! consume_queued_events {
    ($tx:expr, $dag_run_id:expr, $dag_id:expr, $event_ids:expr) => {{
        for chunk in $event_ids.chunks($crate::store::CHUNK) {
            let mut qb =
                sqlx::QueryBuilder::new("INSERT INTO dagrun_asset_event (dag_run_id, event_id) ");
            qb.push_values(chunk, |mut b, event_id| {
                b.push_bind($dag_run_id).push_bind(*event_id);
            });
            qb.build().execute(&mut *$tx).await?;
            let mut qb =
                sqlx::QueryBuilder::new("DELETE FROM asset_dag_run_queue WHERE target_dag_id = ");
            qb.push_bind($dag_id).push(" AND asset_event_id IN ");
            $crate::store::push_in_list(&mut qb, chunk);
            qb.build().execute(&mut *$tx).await?;
        }
    }};
}
pub(crate) use consume_queued_events;

/// Which engine a store talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    Sqlite,
    Postgres,
}

/// A handle on the database. Cheap to clone (pools are shared).
#[derive(Debug, Clone)]
pub struct Store {
    pub(crate) db: Db,
    /// The SQLite file as it was opened, to notice it deleted or replaced underneath us.
    sqlite_file: Option<std::sync::Arc<DatabaseFile>>,
}

/// A SQLite database file by path and by identity (device and inode).
#[derive(Debug)]
struct DatabaseFile {
    path: std::path::PathBuf,
    identity: Option<(u64, u64)>,
}

#[cfg(unix)]
fn file_identity(path: &std::path::Path) -> std::io::Result<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path)?;
    Ok((meta.dev(), meta.ino()))
}

#[cfg(not(unix))]
fn file_identity(path: &std::path::Path) -> std::io::Result<(u64, u64)> {
    std::fs::metadata(path).map(|_| (0, 0))
}

impl Store {
    /// Connects to `url` (`sqlite://PATH`, created if missing, or `postgres://…`) and applies
    /// pending migrations.
    pub async fn connect(url: &str) -> Result<Self> {
        let mut sqlite_file = None;
        let db = if url.starts_with("sqlite:") {
            let options = SqliteConnectOptions::from_str(url)?;
            let path = options.get_filename().to_path_buf();
            if path.as_os_str().is_empty() {
                return Err(StoreError::UnsupportedUrl(url.into()));
            }
            // WAL lets readers (the CLI) run beside the writer; FULL makes every commit durable
            // before the source is acknowledged, which is the point of committing first.
            let options = options
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Full)
                .busy_timeout(Duration::from_secs(30))
                .foreign_keys(true);
            let pool = SqlitePoolOptions::new()
                .max_connections(4)
                // After a failed COMMIT (disk full) SQLite has rolled back by itself, the
                // driver's own ROLLBACK then fails, and it keeps counting the connection as in a
                // transaction: back in the pool, every later BEGIN on it failed ("non-zero
                // transaction depth") even once space returned. Such a connection is closed
                // instead. Only a connection that still counts a transaction is looked at twice:
                // the ping waits for the rollback a dropped transaction may have queued.
                .after_release(|conn, _| {
                    Box::pin(async move {
                        if !conn.is_in_transaction() {
                            return Ok(true);
                        }
                        conn.ping().await?;
                        Ok(!conn.is_in_transaction())
                    })
                })
                .connect_with(options)
                .await?;
            migrate_sqlite(&pool).await?;
            if !is_in_memory(url) {
                sqlite_file = Some(std::sync::Arc::new(DatabaseFile {
                    identity: file_identity(&path).ok(),
                    path,
                }));
            }
            Db::Sqlite(pool)
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            let options = PgConnectOptions::from_str(url)?;
            // One plain connection first: the pool retries a refused connection until its
            // acquire timeout and then says only "pool timed out", hiding "connection refused"
            // or "password authentication failed" behind a 10 s wait.
            sqlx::postgres::PgConnection::connect_with(&options)
                .await?
                .close()
                .await?;
            let pool = PgPoolOptions::new()
                .max_connections(8)
                .acquire_timeout(Duration::from_secs(10))
                .connect_with(options)
                .await?;
            sqlx::migrate!("migrations/postgres").run(&pool).await?;
            Db::Postgres(pool)
        } else {
            return Err(StoreError::UnsupportedUrl(crate::secrets::redact_uri(url)));
        };
        Ok(Self { db, sqlite_file })
    }

    /// Fails when the SQLite file this store opened is no longer at its path (deleted, moved
    /// or replaced): SQLite goes on writing to the open, unlinked file, and everything
    /// committed from then on would be lost when the process exits. PostgreSQL: always fine.
    pub fn check_database_file(&self) -> Result<()> {
        let Some(file) = &self.sqlite_file else {
            return Ok(());
        };
        let what = match file_identity(&file.path) {
            Ok(now) if Some(now) == file.identity => return Ok(()),
            Ok(_) => "replaced by another file",
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => "deleted",
            Err(_) => "made unreadable",
        };
        Err(StoreError::DatabaseFileGone {
            path: file.path.display().to_string(),
            what,
        })
    }

    pub fn engine(&self) -> Engine {
        match self.db {
            Db::Sqlite(_) => Engine::Sqlite,
            Db::Postgres(_) => Engine::Postgres,
        }
    }

    /// How every transaction of the store starts. All of them write; on SQLite, taking the
    /// write lock up front (`IMMEDIATE`) makes a second writer wait out the busy timeout
    /// instead of failing when a read-started transaction tries to upgrade its lock.
    pub(crate) fn begin_write(&self) -> &'static str {
        match self.engine() {
            Engine::Sqlite => "BEGIN IMMEDIATE",
            Engine::Postgres => "BEGIN",
        }
    }

    /// Row-lock suffix for `SELECT`s that several processes may run at once. SQLite has one
    /// writer per database, so it needs none.
    pub(crate) fn skip_locked(&self) -> &'static str {
        match self.engine() {
            Engine::Sqlite => "",
            // NO KEY UPDATE: our updates never touch keys, and it does not conflict with the
            // KEY SHARE locks that inserts referencing the row (events, runs) take.
            Engine::Postgres => " FOR NO KEY UPDATE SKIP LOCKED",
        }
    }

    /// Row-lock suffix for `SELECT`s that must wait for a row another process holds (a run
    /// whose task instances two executors finish at once). SQLite: none needed.
    pub(crate) fn lock_rows(&self) -> &'static str {
        match self.engine() {
            Engine::Sqlite => "",
            Engine::Postgres => " FOR NO KEY UPDATE",
        }
    }

    /// One round trip to the database (`/health`).
    pub async fn ping(&self) -> Result<()> {
        with_db!(self, pool => {
            sqlx::query("SELECT 1").execute(pool).await?;
            Ok(())
        })
    }

    /// Waits for in-flight statements and closes the pool.
    pub async fn close(&self) {
        with_db!(self, pool => pool.close().await)
    }
}

/// Applies SQLite's pending migrations. sqlx takes no lock for them on SQLite, so two
/// processes opening a new database at once both try migration 1 and one fails ("table job
/// already exists"); each migration is its own transaction, so the loser retries and finds
/// the winner's migrations applied.
async fn migrate_sqlite(pool: &SqlitePool) -> Result<()> {
    let migrator = sqlx::migrate!("migrations/sqlite");
    let mut attempt = 0u64;
    loop {
        match migrator.run(pool).await {
            Ok(()) => return Ok(()),
            Err(e) if attempt < 10 => {
                tracing::debug!(error = %e, attempt, "migrating SQLite failed; another process may be migrating it, retrying");
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(50 * attempt)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Appends `(v1, v2, …)` with one bind per value: the portable way to say `IN (…)` for a list.
pub(crate) fn push_in_list<'a, DB, T>(qb: &mut sqlx::QueryBuilder<'a, DB>, values: &'a [T])
where
    DB: sqlx::Database,
    &'a T: sqlx::Encode<'a, DB> + sqlx::Type<DB> + Send,
    T: 'a,
{
    qb.push("(");
    let mut list = qb.separated(", ");
    for v in values {
        list.push_bind(v);
    }
    list.push_unseparated(")");
}

//! `sql.TableTrigger` against real servers: PostgreSQL (`TRIGGERER_TEST_POSTGRES_URL`, or the
//! machine's) and MariaDB/MySQL (`scripts/services.sh` `ensure_mariadb`, or
//! `TRIGGERER_TEST_MYSQL_URL`), each test in databases of its own. The SDK conformance suite on
//! PostgreSQL (a row is acknowledged once the committed watermark covers it); rows sharing a
//! column value across batch boundaries, with and without a primary key; then through the
//! binary on both servers: inserted rows become events with the documented payload and a run;
//! every row exactly once across `kill -9`; refused credentials and an unknown table fail
//! their trigger alone while another watcher keeps working.
#![cfg(feature = "integration-sql")]

mod common;

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde_json::json;
use sqlx::{Connection, Executor, MySqlConnection, PgConnection};
use triggerer_provider_sql::{watermark, TableProvider};
use triggerer_sdk::testkit::{run_conformance, ConformanceSource, TestRun, Timing};
use triggerer_sdk::{EventTrigger, Provider};

fn mysql_admin_url() -> String {
    std::env::var("TRIGGERER_TEST_MYSQL_URL")
        .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/mysql".into())
}

/// `url` with its database (the path) replaced by `db`.
fn with_db(url: &str, db: &str) -> String {
    let (scheme, rest) = url.split_once("://").expect("a URL");
    let (rest, query) = match rest.split_once('?') {
        Some((r, q)) => (r, format!("?{q}")),
        None => (rest, String::new()),
    };
    let after_at = rest.rfind('@').map_or(0, |a| a + 1);
    let authority = match rest[after_at..].find('/') {
        Some(slash) => &rest[..after_at + slash],
        None => rest,
    };
    format!("{scheme}://{authority}/{db}{query}")
}

/// A database name no other test uses.
fn db_name(prefix: &str) -> String {
    common::unique(prefix).replace('-', "_")
}

/// A fresh PostgreSQL database: its URL and a connection to it.
async fn pg_database() -> (String, PgConnection) {
    let admin = common::postgres_admin_url();
    let mut conn = PgConnection::connect(&admin).await.unwrap_or_else(|e| {
        panic!("PostgreSQL is not reachable at {admin} ({e}): run scripts/test.sh, or set TRIGGERER_TEST_POSTGRES_URL")
    });
    let name = db_name("trg_sql");
    conn.execute(format!("CREATE DATABASE {name}").as_str())
        .await
        .expect("create database");
    let url = with_db(&admin, &name);
    let conn = PgConnection::connect(&url).await.expect("connect");
    (url, conn)
}

/// A fresh MariaDB/MySQL database: its URL and a connection to it.
async fn mysql_database() -> (String, MySqlConnection) {
    let admin = mysql_admin_url();
    let mut conn = MySqlConnection::connect(&admin).await.unwrap_or_else(|e| {
        panic!("MariaDB/MySQL is not reachable at {admin} ({e}): run scripts/services.sh (ensure_mariadb), or set TRIGGERER_TEST_MYSQL_URL")
    });
    let name = db_name("trg_sql");
    conn.execute(format!("CREATE DATABASE {name}").as_str())
        .await
        .expect("create database");
    let url = with_db(&admin, &name);
    let conn = MySqlConnection::connect(&url).await.expect("connect");
    (url, conn)
}

fn build(kwargs: serde_json::Value) -> Box<dyn EventTrigger> {
    TableProvider.validate(&kwargs).expect("valid kwargs");
    TableProvider.build(&kwargs).expect("built")
}

/// A table per check in one PostgreSQL database; a row is acknowledged when the committed
/// checkpoint's resume point covers it.
struct Rows {
    url: String,
    conn: PgConnection,
    n: usize,
}

impl Rows {
    fn table(&self) -> String {
        format!("conf_{}", self.n)
    }
}

#[async_trait]
impl ConformanceSource for Rows {
    fn name(&self) -> String {
        "sql (postgres)".into()
    }

    async fn fresh(&mut self) -> Result<(), String> {
        self.n += 1;
        let sql = format!(
            "CREATE TABLE {} (id bigserial PRIMARY KEY, v text)",
            self.table()
        );
        self.conn
            .execute(sql.as_str())
            .await
            .map(drop)
            .map_err(|e| e.to_string())
    }

    fn trigger(&mut self) -> Result<Box<dyn EventTrigger>, String> {
        let kwargs =
            json!({"url": self.url, "table": self.table(), "column": "id", "poke_interval": 0.2});
        TableProvider.validate(&kwargs).map_err(|e| e.to_string())?;
        TableProvider.build(&kwargs).map_err(|e| e.to_string())
    }

    async fn put(&mut self, n: usize) -> Result<(), String> {
        // One statement: the rows appear together, in one batch.
        let sql = format!(
            "INSERT INTO {} (v) SELECT 'row ' || g FROM generate_series(1, {n}) g",
            self.table()
        );
        self.conn
            .execute(sql.as_str())
            .await
            .map(drop)
            .map_err(|e| e.to_string())
    }

    async fn acknowledged(
        &mut self,
        checkpoint: &HashMap<String, String>,
    ) -> Result<usize, String> {
        let Some(after) = watermark::resume(checkpoint).after else {
            return Ok(0);
        };
        let id: i64 = after[0].parse().map_err(|e| format!("{after:?}: {e}"))?;
        let sql = format!("SELECT count(*) FROM {} WHERE id <= $1", self.table());
        let n: i64 = sqlx::query_scalar(&sql)
            .bind(id)
            .fetch_one(&mut self.conn)
            .await
            .map_err(|e| e.to_string())?;
        Ok(n as usize)
    }

    fn ordered(&self) -> bool {
        true
    }

    fn timing(&self) -> Timing {
        Timing {
            ack: Duration::from_millis(700),
            ..Timing::default()
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_table_trigger_conforms_on_postgres() {
    let (url, conn) = pg_database().await;
    let mut rows = Rows { url, conn, n: 0 };
    if let Err(failures) = run_conformance(&mut rows).await {
        panic!("{failures}");
    }
}

/// Commits everything a trigger emits until it is quiet; the committed events.
async fn drain(trigger: Box<dyn EventTrigger>) -> Vec<triggerer_sdk::Event> {
    let mut run = TestRun::start(trigger, HashMap::new(), 16);
    run.commit_until_quiet(Duration::from_secs(3)).await;
    let committed = run.committed.clone();
    run.stop().await.expect("stopped cleanly");
    committed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_sharing_a_value_across_batches_come_once_each() {
    let (url, mut conn) = pg_database().await;
    conn.execute(
        "CREATE TABLE keyed (id serial PRIMARY KEY, ts int NOT NULL); \
         CREATE TABLE bare (ts int, v text); \
         INSERT INTO keyed (ts) VALUES (1), (1), (1), (2), (2), (3); \
         INSERT INTO bare VALUES (1, 'a'), (1, 'a'), (1, 'b'), (2, 'c'), (2, 'd'), (3, 'e'), (NULL, 'never');",
    )
    .await
    .expect("tables");
    for (table, batch) in [("keyed", 2), ("bare", 2), ("bare", 5)] {
        let events = drain(build(json!({
            "url": url, "table": table, "column": "ts", "batch_size": batch, "poke_interval": 0.2,
        })))
        .await;
        let keys: BTreeSet<&str> = events.iter().map(|e| e.dedup_key.as_str()).collect();
        assert_eq!(events.len(), 6, "{table} by {batch}: {events:?}");
        assert_eq!(keys.len(), 6, "{table} by {batch}: distinct keys {keys:?}");
        let values: Vec<i64> = events
            .iter()
            .map(|e| e.payload["value"].as_i64().expect("value"))
            .collect();
        assert_eq!(values, vec![1, 1, 1, 2, 2, 3], "{table} by {batch}");
        assert!(events.iter().all(|e| e.payload["table"] == table
            && e.payload["column"] == "ts"
            && e.payload["row"]["ts"] == e.payload["value"]));
    }
}

/// A test's triggerer database and definitions, and the binary on them.
struct Env {
    dir: tempfile::TempDir,
    db_url: String,
    cli: common::Cli,
}

impl Env {
    fn new(defs: &str) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let db_url = format!("sqlite://{}", dir.path().join("s.db").display());
        let path = common::write_file(dir.path(), "dags.toml", defs);
        common::sync_definitions(&db_url, &path);
        let cli = common::Cli {
            db_url: db_url.clone(),
        };
        Self { dir, db_url, cli }
    }

    fn start(&self, log: &str, vars: &[(&str, &str)]) -> common::KillOnDrop {
        common::standalone_with_env(&self.db_url, &self.dir.path().join(log), vars)
    }

    async fn events(&self, log: &str) -> common::Events {
        common::Events::open(&self.db_url, self.dir.path().join(log)).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inserted_rows_become_asset_events_and_a_run_on_postgres_and_mariadb() {
    let (pg_url, mut pg) = pg_database().await;
    let (my_url, mut my) = mysql_database().await;
    pg.execute(
        "CREATE TABLE orders (id serial PRIMARY KEY, item text NOT NULL, \
         created_at timestamptz NOT NULL DEFAULT now()); \
         INSERT INTO orders (item) VALUES ('apple'), ('pear'), ('fig');",
    )
    .await
    .expect("pg table");
    my.execute(
        "CREATE TABLE orders (id int AUTO_INCREMENT PRIMARY KEY, item varchar(50) NOT NULL, \
         created_at datetime(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6))",
    )
    .await
    .expect("mysql table");
    my.execute("INSERT INTO orders (item) VALUES ('apple'), ('pear'), ('fig')")
        .await
        .expect("mysql rows");
    let my_queue = format!("{my_url}/orders");
    let env = Env::new(&format!(
        r#"
[[asset]]
name = "pg_orders"
[[asset.watcher]]
name = "pg-orders"
classpath = "sql.TableTrigger"
kwargs = {{ url = {{ env = "TEST_PG_URL" }}, table = "public.orders", column = "id", poke_interval = 0.3 }}

[[asset]]
name = "my_orders"
[[asset.watcher]]
name = "my-orders"
classpath = "MessageQueueTrigger"
kwargs = {{ queue = "{my_queue}", column = "created_at", poke_interval = 0.3 }}

[[dag]]
dag_id = "on_pg_orders"
schedule = {{ assets = "pg_orders" }}
"#
    ));
    let _triggerer = env.start("run.log", &[("TEST_PG_URL", &pg_url)]);
    let events = env.events("run.log").await;
    events.wait("postgres rows", "pg_orders", 3, 60).await;
    events.wait("mariadb rows", "my_orders", 3, 60).await;
    pg.execute("INSERT INTO orders (item) VALUES ('kiwi'), ('plum')")
        .await
        .expect("more pg rows");
    my.execute("INSERT INTO orders (item) VALUES ('kiwi'), ('plum')")
        .await
        .expect("more mysql rows");
    events.wait("more postgres rows", "pg_orders", 5, 60).await;
    events.wait("more mariadb rows", "my_orders", 5, 60).await;
    tokio::time::sleep(Duration::from_secs(1)).await; // repeats would show now

    let all = env
        .cli
        .json(&["assets", "events", "--limit", "0", "--json"]);
    let of = |asset: &str| -> Vec<serde_json::Value> {
        all.iter()
            .filter(|e| e["asset"] == asset)
            .map(|e| e["extra"]["payload"].clone())
            .collect()
    };
    let items = |payloads: &[serde_json::Value]| -> Vec<String> {
        let mut v: Vec<String> = payloads
            .iter()
            .map(|p| p["row"]["item"].as_str().unwrap_or_default().to_string())
            .collect();
        v.sort();
        v
    };
    let fruit = vec!["apple", "fig", "kiwi", "pear", "plum"];
    let pg_events = of("pg_orders");
    assert_eq!(items(&pg_events), fruit, "{pg_events:?}");
    assert!(pg_events.iter().all(|p| p["table"] == "public.orders"
        && p["column"] == "id"
        && p["value"] == p["row"]["id"]
        && p["row"]["created_at"].is_string()));
    let my_events = of("my_orders");
    assert_eq!(items(&my_events), fruit, "{my_events:?}");
    assert!(my_events.iter().all(|p| p["table"] == "orders"
        && p["column"] == "created_at"
        && p["value"] == p["row"]["created_at"]
        && p["row"]["id"].is_i64()));
    let keys: Vec<&str> = all.iter().filter_map(|e| e["dedup_key"].as_str()).collect();
    assert!(
        keys.iter()
            .any(|k| k.starts_with("sql:") && k.contains("/public.orders/id=1")),
        "{keys:?}"
    );
    assert!(
        keys.iter()
            .any(|k| k.contains("/orders/created_at=") && k.contains(",id=")),
        "{keys:?}"
    );

    // The DAG on `pg_orders` ran, on its events.
    let ids: BTreeSet<i64> = all
        .iter()
        .filter(|e| e["asset"] == "pg_orders")
        .filter_map(|e| e["id"].as_i64())
        .collect();
    common::wait_for_runs_consuming(&env.cli, "on_pg_orders", &ids, 60).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_row_exactly_once_across_kill_9() {
    const N: i64 = 2_000;
    const FIRST: i64 = 300;
    const CHUNK: i64 = 50;
    let (pg_url, mut pg) = pg_database().await;
    let (my_url, mut my) = mysql_database().await;
    pg.execute("CREATE TABLE ev (id bigserial PRIMARY KEY, n bigint NOT NULL)")
        .await
        .expect("pg table");
    my.execute("CREATE TABLE ev (id bigint AUTO_INCREMENT PRIMARY KEY, n bigint NOT NULL)")
        .await
        .expect("mysql table");
    let insert = |from: i64, to: i64| {
        let values: Vec<String> = (from..to).map(|i| format!("({i})")).collect();
        format!("INSERT INTO ev (n) VALUES {}", values.join(", "))
    };
    pg.execute(insert(0, FIRST).as_str())
        .await
        .expect("pg rows");
    my.execute(insert(0, FIRST).as_str())
        .await
        .expect("mysql rows");
    let env = Env::new(&format!(
        r#"
[[asset]]
name = "pg_ev"
[[asset.watcher]]
name = "pg-ev"
classpath = "sql.TableTrigger"
kwargs = {{ url = "{pg_url}", table = "ev", column = "id", batch_size = 100, poke_interval = 0.2 }}

[[asset]]
name = "my_ev"
[[asset.watcher]]
name = "my-ev"
classpath = "sql.TableTrigger"
kwargs = {{ url = "{my_url}", table = "ev", column = "id", batch_size = 100, poke_interval = 0.2 }}
"#
    ));
    let producer = tokio::spawn({
        let (pg_url, my_url) = (pg_url.clone(), my_url.clone());
        async move {
            let mut pg = PgConnection::connect(&pg_url).await.expect("pg");
            let mut my = MySqlConnection::connect(&my_url).await.expect("mysql");
            for from in (FIRST..N).step_by(CHUNK as usize) {
                pg.execute(insert(from, from + CHUNK).as_str())
                    .await
                    .expect("pg rows");
                my.execute(insert(from, from + CHUNK).as_str())
                    .await
                    .expect("mysql rows");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    });
    let mut first = env.start("run1.log", &[]);
    let events = env.events("run1.log").await;
    let deadline = Instant::now() + Duration::from_secs(120);
    while events.count("pg_ev").await < 200 || events.count("my_ev").await < 200 {
        assert!(Instant::now() < deadline, "too slow before the kill");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    first.kill(); // SIGKILL mid-stream: a batch emitted, not all of it committed
    let before = (events.count("pg_ev").await, events.count("my_ev").await);
    assert!(
        before.0 < N && before.1 < N,
        "the kill came too late to test anything: {before:?}"
    );
    producer.await.expect("producer");
    let _second = env.start("run2.log", &[]);
    let events = env.events("run2.log").await;
    events
        .wait("postgres rows after restart", "pg_ev", N, 180)
        .await;
    events
        .wait("mariadb rows after restart", "my_ev", N, 180)
        .await;
    tokio::time::sleep(Duration::from_secs(2)).await; // repeats would show now
    assert_eq!(events.count("pg_ev").await, N, "one event per postgres row");
    assert_eq!(events.count("my_ev").await, N, "one event per mariadb row");
    assert_eq!(events.distinct_keys().await, 2 * N);
    for asset in ["pg_ev", "my_ev"] {
        let ns: Vec<i64> = sqlx::query_scalar(
            "SELECT json_extract(e.extra, '$.payload.row.n') FROM asset_event e \
             JOIN asset a ON a.id = e.asset_id WHERE a.name = ?",
        )
        .bind(asset)
        .fetch_all(&events.pool)
        .await
        .expect("rows");
        let distinct: BTreeSet<i64> = ns.into_iter().collect();
        assert_eq!(distinct, (0..N).collect(), "{asset}: every row, each once");
    }
    eprintln!("{before:?} events before kill -9; {N} + {N} after restart");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_credentials_and_an_unknown_table_fail_their_trigger_alone() {
    let (pg_url, mut pg) = pg_database().await;
    let (my_url, mut my) = mysql_database().await;
    pg.execute("CREATE TABLE t (id serial PRIMARY KEY)")
        .await
        .expect("pg table");
    my.execute("CREATE TABLE t (id int AUTO_INCREMENT PRIMARY KEY, v text)")
        .await
        .expect("mysql table");
    let db = my_url.rsplit('/').next().unwrap().to_string();
    let my_hp = common::host_port(&my_url).replace(":5432", ":3306");
    let env = Env::new(&format!(
        r#"
[[asset]]
name = "refused"
[[asset.watcher]]
name = "wrong-password"
classpath = "sql.TableTrigger"
kwargs = {{ url = "mysql://nobody:hunter2secret@{my_hp}/{db}", table = "t", column = "id", poke_interval = 0.3 }}

[[asset]]
name = "missing"
[[asset.watcher]]
name = "no-such-table"
classpath = "sql.TableTrigger"
kwargs = {{ url = "{pg_url}", table = "nope", column = "id", poke_interval = 0.3 }}

[[asset]]
name = "healthy"
[[asset.watcher]]
name = "healthy-table"
classpath = "sql.TableTrigger"
kwargs = {{ url = "{my_url}", table = "t", column = "id", poke_interval = 0.3 }}
"#
    ));
    let _triggerer = env.start("run.log", &[]);
    let events = env.events("run.log").await;
    let refused = common::wait_for_failing(&env.db_url, Duration::from_secs(60), |t| {
        t["assets"].to_string().contains("refused")
    })
    .await;
    let reason = refused["last_error"].as_str().unwrap_or_default();
    eprintln!("refused credentials: {reason}");
    assert!(
        reason.contains("Access denied") && !reason.contains('\n') && !reason.contains("hunter2"),
        "a one-line reason, without the password: {refused}"
    );
    let missing = common::wait_for_failing(&env.db_url, Duration::from_secs(60), |t| {
        t["assets"].to_string().contains("missing")
    })
    .await;
    let reason = missing["last_error"].as_str().unwrap_or_default();
    eprintln!("unknown table: {reason}");
    assert!(
        reason.contains("nope") && reason.contains("does not exist") && !reason.contains('\n'),
        "{missing}"
    );
    // The other watcher keeps working meanwhile.
    my.execute("INSERT INTO t (v) VALUES ('a'), ('b'), ('c')")
        .await
        .expect("rows");
    events.wait("the healthy watcher", "healthy", 3, 60).await;
    assert_eq!(events.count("refused").await, 0);
    assert_eq!(events.count("missing").await, 0);
}

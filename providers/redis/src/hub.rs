//! Connections shared by the Redis triggers: one auto-reconnecting [`ConnectionManager`] per
//! server URL for non-blocking commands, and a fresh connection per trigger for what blocks
//! (a subscription, `BLMOVE`, `XREADGROUP BLOCK`).

use std::collections::HashMap;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::AsyncConnectionConfig;
use tokio::sync::Mutex;
use triggerer_sdk::TriggerError;

use crate::config::Server;

/// How long connecting may take, and a non-blocking command's answer.
const TIMEOUT: Duration = Duration::from_secs(5);

/// The shared connections, by URL (credentials included, so other credentials never share).
#[derive(Default)]
pub struct Hub {
    shared: Mutex<HashMap<String, ConnectionManager>>,
}

/// Without the URLs: they hold passwords.
impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub").finish_non_exhaustive()
    }
}

/// A Redis error as one line naming the server (never its password) and what was being done.
pub fn failure(server: &Server, doing: &str, e: &redis::RedisError) -> TriggerError {
    let text = triggerer_sdk::redact_uri(&e.to_string());
    let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
    TriggerError::failed(format!("redis {}: {doing}: {text}", server.label))
}

fn client(server: &Server) -> Result<redis::Client, TriggerError> {
    redis::Client::open(server.url.as_str()).map_err(|e| failure(server, "opening the URL", &e))
}

impl Hub {
    /// Shared connections open now (one per distinct server URL).
    pub async fn connections(&self) -> usize {
        self.shared.lock().await.len()
    }

    /// Drops the server's shared connection after a failure, so that the next start opens a
    /// fresh one rather than reuse one that may be broken.
    pub async fn forget(&self, server: &Server) {
        self.shared.lock().await.remove(&server.url);
    }

    /// The server's shared connection, opened (and authenticated) on first use.
    pub async fn shared(&self, server: &Server) -> Result<ConnectionManager, TriggerError> {
        let mut shared = self.shared.lock().await;
        if let Some(conn) = shared.get(&server.url) {
            return Ok(conn.clone());
        }
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(TIMEOUT))
            .set_response_timeout(Some(TIMEOUT))
            .set_number_of_retries(2);
        let conn = client(server)?
            .get_connection_manager_with_config(config)
            .await
            .map_err(|e| failure(server, "connecting", &e))?;
        shared.insert(server.url.clone(), conn.clone());
        Ok(conn)
    }
}

/// A connection of the trigger's own for a command that blocks up to `block`.
pub async fn dedicated(
    server: &Server,
    block: Duration,
) -> Result<MultiplexedConnection, TriggerError> {
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(TIMEOUT))
        .set_response_timeout(Some(block + TIMEOUT));
    client(server)?
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .map_err(|e| failure(server, "connecting", &e))
}

/// A subscription connection.
pub async fn pubsub(server: &Server) -> Result<redis::aio::PubSub, TriggerError> {
    client(server)?
        .get_async_pubsub()
        .await
        .map_err(|e| failure(server, "connecting", &e))
}

/// A random id for a trigger's run: tags what it takes, so that nothing it names collides with
/// another run's.
pub fn run_id() -> String {
    format!("{:016x}", rand::random::<u64>())
}

/// A reply's bytes (bulk or simple string, or a number as its digits).
pub fn bytes(v: redis::Value) -> Option<Vec<u8>> {
    match v {
        redis::Value::BulkString(b) => Some(b),
        redis::Value::SimpleString(s) => Some(s.into_bytes()),
        redis::Value::Int(n) => Some(n.to_string().into_bytes()),
        _ => None,
    }
}

/// A reply's string.
pub fn string(v: redis::Value) -> Option<String> {
    bytes(v).and_then(|b| String::from_utf8(b).ok())
}

/// A reply's elements: an array (or a set), or the pairs of a map flattened.
pub fn items(v: redis::Value) -> Vec<redis::Value> {
    match v {
        redis::Value::Array(items) | redis::Value::Set(items) => items,
        redis::Value::Map(pairs) => pairs.into_iter().flat_map(|(k, v)| [k, v]).collect(),
        _ => Vec::new(),
    }
}

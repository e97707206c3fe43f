//! The provider's AMQP connections: one per broker URL (credentials and vhost included),
//! shared by every trigger of that URL, each of which opens its own channel on it. A
//! connection is opened by the first trigger that needs it (the others of its URL wait for
//! that attempt rather than make their own), replaced when it died, and closed when its last
//! trigger stops.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use lapin::{Connection, ConnectionProperties};

/// How long connecting (TCP, TLS, AMQP handshake) may take: a broker that drops packets fails
/// the trigger, which the supervisor then restarts with backoff.
pub const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

#[derive(Default)]
struct State {
    conn: Option<Arc<Connection>>,
    users: usize,
}

#[derive(Default)]
struct Slot {
    /// Held while connecting, so triggers of one URL make one connection.
    gate: tokio::sync::Mutex<()>,
    state: Mutex<State>,
}

/// The connections of one provider.
#[derive(Default)]
pub struct Hub {
    slots: Mutex<HashMap<String, Arc<Slot>>>,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The keys are URLs with passwords: only how many.
        f.debug_struct("Hub")
            .field("connections", &self.connections())
            .finish()
    }
}

/// A trigger's use of a shared connection; the connection closes when its last lease drops.
pub struct Lease {
    slot: Arc<Slot>,
    pub conn: Arc<Connection>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        let mut state = lock(&self.slot.state);
        state.users = state.users.saturating_sub(1);
        if state.users == 0 {
            // Dropping the last handle closes it (lapin's connection closer).
            state.conn = None;
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Hub {
    /// Open connections (for tests and metrics).
    pub fn connections(&self) -> usize {
        lock(&self.slots)
            .values()
            .filter(|slot| {
                lock(&slot.state)
                    .conn
                    .as_ref()
                    .is_some_and(|c| c.status().connected())
            })
            .count()
    }

    /// The live connection for `url`, opening one if there is none (giving up after
    /// [`CONNECT_TIMEOUT`], unless the URL's `connection_timeout` says otherwise). The error is
    /// lapin's, as one line, which never repeats the URL.
    pub async fn acquire(&self, url: &str) -> Result<Lease, String> {
        let slot = lock(&self.slots)
            .entry(url.to_string())
            .or_default()
            .clone();
        let _gate = slot.gate.lock().await;
        {
            let mut state = lock(&slot.state);
            if let Some(conn) = state.conn.as_ref().filter(|c| c.status().connected()) {
                let conn = conn.clone();
                state.users += 1;
                return Ok(Lease {
                    slot: slot.clone(),
                    conn,
                });
            }
        }
        let properties = ConnectionProperties::default()
            .with_connection_name("triggerer amqp.AwaitMessageTrigger".into());
        let connect = Connection::connect(url, properties);
        let conn = if url.contains("connection_timeout=") {
            connect.await
        } else {
            tokio::time::timeout(CONNECT_TIMEOUT, connect)
                .await
                .map_err(|_| format!("no answer within {}s", CONNECT_TIMEOUT.as_secs()))?
        };
        let conn = Arc::new(conn.map_err(|e| crate::one_line(&e))?);
        let mut state = lock(&slot.state);
        // A dead connection still held by running triggers stays theirs until they stop.
        state.conn = Some(conn.clone());
        state.users += 1;
        Ok(Lease {
            slot: slot.clone(),
            conn,
        })
    }
}

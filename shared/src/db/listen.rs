//! PostgreSQL `LISTEN` on a dedicated connection (not one of the pool's), on its own thread,
//! reconnecting by itself when the server restarts or drops it.
//!
//! Subscribers get every notification of the channels, and a [`ListenEvent::Connected`] after
//! each (re)connection: notifications sent while the connection was down are lost, so a
//! subscriber should then look for work it may have missed.
//!
//! diesel reads notifications without blocking (`PgConnection::notifications_iter`: libpq's
//! `PQconsumeInput` then `PQnotifies`), so the thread checks the socket every `poll` (1 ms by
//! default): one non-blocking read, no query and no round trip to the server. A `SELECT 1` every
//! `keepalive` finds a connection that died silently.

use crate::secret::Secret;
use diesel::connection::SimpleConnection;
use diesel::{Connection, PgConnection};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::broadcast;

/// What a subscriber receives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenEvent {
    /// The connection is (again) up and listening: anything sent while it was down was missed.
    Connected,
    Notification {
        channel: String,
        payload: String,
    },
}

/// Tuning of a [`Listener`].
#[derive(Debug, Clone)]
pub struct ListenOptions {
    /// `application_name` of the connection, to tell it apart in `pg_stat_activity`.
    pub application_name: String,
    /// How often the socket is checked for notifications: the added pickup latency.
    pub poll: Duration,
    /// How often an idle connection is checked with a query.
    pub keepalive: Duration,
    /// The first wait before reconnecting; doubles on each failure up to `reconnect_max`.
    pub reconnect_min: Duration,
    pub reconnect_max: Duration,
}

impl Default for ListenOptions {
    fn default() -> Self {
        Self {
            application_name: "keel-listener".into(),
            poll: Duration::from_millis(1),
            keepalive: Duration::from_secs(30),
            reconnect_min: Duration::from_millis(100),
            reconnect_max: Duration::from_secs(5),
        }
    }
}

/// Why a listener could not start.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error("invalid LISTEN channel {0:?}: use 1 to 63 characters of a-z, 0-9 and _")]
    InvalidChannel(String),
    #[error("cannot start the listener thread: {0}")]
    Thread(#[from] std::io::Error),
}

/// A running `LISTEN` connection. Dropping it stops the thread (within one `poll`, or after a
/// connection attempt in progress).
#[derive(Debug)]
pub struct Listener {
    events: broadcast::Sender<ListenEvent>,
    stop: Arc<AtomicBool>,
    connected: Arc<AtomicBool>,
}

impl Listener {
    /// Starts listening to `channels` on a connection of its own to `url`. Returns at once; the
    /// connection is made (and remade) in the background, so a server that is down now is not an
    /// error. Subscribe before the first connection to see its [`ListenEvent::Connected`].
    pub fn start(url: Secret, channels: Vec<String>, options: ListenOptions) -> Result<Self, ListenError> {
        if let Some(bad) = channels.iter().find(|c| !valid_channel(c)) {
            return Err(ListenError::InvalidChannel(bad.clone()));
        }
        let (events, _) = broadcast::channel(1024);
        let stop = Arc::new(AtomicBool::new(false));
        let connected = Arc::new(AtomicBool::new(false));
        let task = ListenTask {
            url,
            channels,
            options,
            events: events.clone(),
            stop: stop.clone(),
            connected: connected.clone(),
        };
        std::thread::Builder::new().name("keel-listen".into()).spawn(move || task.run())?;
        Ok(Self { events, stop, connected })
    }

    /// A new subscription: every event from now on. A subscriber that falls more than 1,024
    /// events behind gets `RecvError::Lagged` and should treat it like `Connected`.
    pub fn subscribe(&self) -> broadcast::Receiver<ListenEvent> {
        self.events.subscribe()
    }

    /// Whether the connection is up and listening.
    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Acquire)
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
    }
}

fn valid_channel(channel: &str) -> bool {
    !channel.is_empty()
        && channel.len() <= 63
        && channel.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

struct ListenTask {
    url: Secret,
    channels: Vec<String>,
    options: ListenOptions,
    events: broadcast::Sender<ListenEvent>,
    stop: Arc<AtomicBool>,
    connected: Arc<AtomicBool>,
}

impl ListenTask {
    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }

    fn run(self) {
        let mut backoff = self.options.reconnect_min;
        let mut failures = 0u32;
        while !self.stopped() {
            match self.connect() {
                Ok(mut conn) => {
                    if failures > 0 {
                        tracing::info!(listener.channels = ?self.channels, "LISTEN connection restored");
                    }
                    failures = 0;
                    backoff = self.options.reconnect_min;
                    self.connected.store(true, Ordering::Release);
                    // No subscriber yet is fine: there is nothing for them to miss.
                    let _ = self.events.send(ListenEvent::Connected);
                    let error = self.listen(&mut conn);
                    self.connected.store(false, Ordering::Release);
                    if let Some(error) = error {
                        tracing::warn!(error = %error, "LISTEN connection lost; reconnecting");
                    }
                }
                Err(error) => {
                    failures += 1;
                    // The first failure and then one in ten, so that an outage does not flood the log.
                    if failures == 1 || failures.is_multiple_of(10) {
                        tracing::warn!(error = %error, attempts = failures, "cannot open the LISTEN connection; retrying");
                    }
                    self.sleep(backoff);
                    backoff = (backoff * 2).min(self.options.reconnect_max);
                }
            }
        }
    }

    fn connect(&self) -> Result<PgConnection, String> {
        let mut conn = PgConnection::establish(self.url.expose()).map_err(|e| e.to_string())?;
        let mut sql = format!("SET application_name = '{}';", self.options.application_name.replace('\'', "''"));
        for channel in &self.channels {
            sql.push_str(&format!(" LISTEN \"{channel}\";"));
        }
        conn.batch_execute(&sql).map_err(|e| e.to_string())?;
        Ok(conn)
    }

    /// Forwards notifications until the connection fails (the error) or the listener stops (None).
    fn listen(&self, conn: &mut PgConnection) -> Option<String> {
        let mut checked = Instant::now();
        while !self.stopped() {
            for notification in conn.notifications_iter() {
                match notification {
                    Ok(n) => {
                        let _ = self.events.send(ListenEvent::Notification { channel: n.channel, payload: n.payload });
                    }
                    Err(e) => return Some(e.to_string()),
                }
            }
            if checked.elapsed() >= self.options.keepalive {
                if let Err(e) = conn.batch_execute("SELECT 1") {
                    return Some(e.to_string());
                }
                checked = Instant::now();
            }
            std::thread::sleep(self.options.poll);
        }
        None
    }

    /// Sleeps up to `duration`, returning early when the listener stops.
    fn sleep(&self, duration: Duration) {
        let deadline = Instant::now() + duration;
        while !self.stopped() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            std::thread::sleep(left.min(Duration::from_millis(50)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_names_are_plain_identifiers() {
        assert!(valid_channel("keel_jobs_auth"));
        assert!(!valid_channel(""));
        assert!(!valid_channel("Jobs"));
        assert!(!valid_channel("a\"; DROP"));
        assert!(!valid_channel(&"a".repeat(64)));
    }
}

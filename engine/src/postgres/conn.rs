//! Connections: one per role (adds and reads, claims, completions, notifications), each
//! reconnected with backoff when lost, each with its prepared statements.
//!
//! Why no pool: `tokio-postgres` pipelines the queries that tasks issue concurrently on one
//! connection, so one shared connection serves every producer without a round trip each, and
//! the claimer and completer each hold one connection of their own so a long claim never waits
//! behind a burst of adds. Why prepared statements: a statement text sent each time costs a
//! second round trip (parse, then execute); a [`Conn`] prepares each text once.

use super::error::PgError;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;
use tokio_postgres::tls::MakeTlsConnect;
use tokio_postgres::{AsyncMessage, Client, Connection, NoTls, Notification, Socket, Statement};
use tokio_postgres_rustls::MakeRustlsConnect;

/// How to reach the database, and how patiently. Clones share one count of lost connections.
#[derive(Clone)]
pub(crate) struct Db {
    config: tokio_postgres::Config,
    /// The TLS connector when the URL asked for TLS; plain text otherwise.
    tls: Option<MakeRustlsConnect>,
    base: Duration,
    max: Duration,
    lost: Arc<AtomicU64>,
}

impl fmt::Debug for Db {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Db")
            .field("hosts", &self.config.get_hosts().len())
            .field("tls", &self.tls.is_some())
            .finish_non_exhaustive()
    }
}

impl Db {
    pub(crate) fn new(
        config: tokio_postgres::Config,
        tls: Option<MakeRustlsConnect>,
        base: Duration,
        max: Duration,
    ) -> Self {
        Self {
            config,
            tls,
            base,
            max,
            lost: Arc::default(),
        }
    }

    /// Connections of this handle (any role) that ended with an error: the server went away,
    /// the network failed, or the server ended the session. A connection closed because its
    /// handle dropped it is not counted.
    pub(crate) fn connections_lost(&self) -> u64 {
        self.lost.load(Ordering::Relaxed)
    }

    /// One connection; its socket is driven by a task of its own until it closes. Notifications
    /// go to `notices` when given.
    pub(crate) async fn connect(
        &self,
        notices: Option<tokio::sync::mpsc::UnboundedSender<Notification>>,
    ) -> Result<Conn, PgError> {
        let client = match &self.tls {
            None => self.open(NoTls, notices).await?,
            Some(tls) => self.open(tls.clone(), notices).await?,
        };
        Ok(Conn {
            client,
            statements: Mutex::new(HashMap::new()),
        })
    }

    /// Opens a connection through `tls` and spawns the task driving it.
    async fn open<T>(
        &self,
        tls: T,
        notices: Option<tokio::sync::mpsc::UnboundedSender<Notification>>,
    ) -> Result<Client, PgError>
    where
        T: MakeTlsConnect<Socket>,
        T::Stream: Send + 'static,
    {
        let (client, connection) = self.config.connect(tls).await.map_err(PgError::Connect)?;
        tokio::spawn(drive(connection, notices, self.lost.clone()));
        Ok(client)
    }

    /// Connects, retrying with backoff until it succeeds or `stop` turns true; `None` then.
    pub(crate) async fn connect_retrying(
        &self,
        role: &'static str,
        notices: Option<tokio::sync::mpsc::UnboundedSender<Notification>>,
        stop: &mut watch::Receiver<bool>,
    ) -> Option<Conn> {
        let mut wait = self.base;
        loop {
            if *stop.borrow() {
                return None;
            }
            match self.connect(notices.clone()).await {
                Ok(conn) => return Some(conn),
                Err(error) => {
                    tracing::warn!(role, error = %error_chain(&error), ?wait, "postgres reconnect failed; retrying");
                }
            }
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                _ = stop.changed() => return None,
            }
            wait = (wait * 2).min(self.max);
        }
    }
}

/// Drives a connection's socket until it closes, passing notifications to `notices` and
/// counting an end in error in `lost`.
async fn drive<S, T>(
    mut connection: Connection<S, T>,
    notices: Option<tokio::sync::mpsc::UnboundedSender<Notification>>,
    lost: Arc<AtomicU64>,
) where
    S: AsyncRead + AsyncWrite + Unpin,
    T: AsyncRead + AsyncWrite + Unpin,
{
    loop {
        match futures::future::poll_fn(|cx| connection.poll_message(cx)).await {
            Some(Ok(AsyncMessage::Notification(n))) => {
                if let Some(tx) = &notices {
                    let _ = tx.send(n);
                }
            }
            Some(Ok(_)) => {}
            Some(Err(error)) => {
                lost.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%error, "postgres connection lost");
                break;
            }
            None => break,
        }
    }
}

/// An error with its causes, for a log line.
pub(crate) fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// A client and the statements prepared on it.
pub(crate) struct Conn {
    pub(crate) client: Client,
    statements: Mutex<HashMap<&'static str, Statement>>,
}

impl fmt::Debug for Conn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Conn")
            .field("closed", &self.client.is_closed())
            .finish_non_exhaustive()
    }
}

impl Conn {
    /// The statement `name` (text `sql`), prepared on first use. A connection serves one queue,
    /// so a name stands for one text.
    pub(crate) async fn statement(
        &self,
        name: &'static str,
        sql: &str,
    ) -> Result<Statement, PgError> {
        if let Some(st) = self.statements.lock().get(name) {
            return Ok(st.clone());
        }
        let st = self
            .client
            .prepare(sql)
            .await
            .map_err(PgError::query("prepare"))?;
        self.statements.lock().insert(name, st.clone());
        Ok(st)
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.client.is_closed()
    }
}

/// The connection shared by producers and readers: replaced when found closed.
#[derive(Debug)]
pub(crate) struct SharedConn {
    db: Db,
    current: Mutex<Option<Arc<Conn>>>,
    reconnecting: tokio::sync::Mutex<()>,
}

impl SharedConn {
    pub(crate) fn new(db: Db, conn: Conn) -> Self {
        Self {
            db,
            current: Mutex::new(Some(Arc::new(conn))),
            reconnecting: tokio::sync::Mutex::new(()),
        }
    }

    /// The open connection, reconnecting once if it was lost.
    ///
    /// # Errors
    /// [`PgError::Connect`] when the database cannot be reached now: the caller decides whether
    /// to retry.
    pub(crate) async fn get(&self) -> Result<Arc<Conn>, PgError> {
        if let Some(conn) = self.open() {
            return Ok(conn);
        }
        let _one = self.reconnecting.lock().await;
        if let Some(conn) = self.open() {
            return Ok(conn);
        }
        let conn = Arc::new(self.db.connect(None).await?);
        *self.current.lock() = Some(conn.clone());
        Ok(conn)
    }

    fn open(&self) -> Option<Arc<Conn>> {
        self.current
            .lock()
            .as_ref()
            .filter(|c| !c.is_closed())
            .cloned()
    }
}

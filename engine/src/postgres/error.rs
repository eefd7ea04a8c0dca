//! What can go wrong: [`ConfigError`] for a configuration refused before connecting, [`PgError`]
//! for everything that talks to the database.

use std::time::Duration;

/// A [`PgQueueConfig`](super::PgQueueConfig) field that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The connection string does not parse.
    #[error("invalid connection url: {0}")]
    Url(String),
    /// The schema is not a plain lower-case identifier.
    #[error("invalid schema name {0:?}: use lower-case letters, digits and _ (at most 63, not starting with a digit or pg_)")]
    Schema(String),
    /// The queue name is empty or too long.
    #[error("invalid queue name: {len} bytes, need 1 to {max}", max = super::config::MAX_QUEUE_NAME_LEN)]
    QueueName {
        /// Its length.
        len: usize,
    },
    /// The lease is too short to be renewed in time, or absurdly long.
    #[error("lease timeout {0:?} out of range ({min:?} to one year)", min = super::config::MIN_LEASE_TIMEOUT)]
    LeaseTimeout(Duration),
    /// A zero poll interval would spin.
    #[error("poll interval must be above zero")]
    ZeroPollInterval,
    /// A claim or completion batch of zero could never make progress.
    #[error("claim and completion batch sizes must be above zero")]
    ZeroBatch,
    /// The backoff's first delay is above its cap.
    #[error("backoff base {base:?} is above its max {max:?}")]
    InvertedBackoff {
        /// First delay.
        base: Duration,
        /// Cap.
        max: Duration,
    },
    /// The reconnection backoff starts at zero or above its cap.
    #[error("reconnect backoff must start above zero and not above its max")]
    Reconnect,
    /// The connection URL's `sslmode` or `sslrootcert` cannot be honoured.
    #[error("TLS to the database: {0}")]
    Tls(String),
}

/// An operation of the PostgreSQL queue that did not complete.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PgError {
    /// The configuration was refused before connecting.
    #[error("invalid postgres queue configuration")]
    Config(#[from] ConfigError),
    /// No connection could be made to the database.
    #[error("cannot connect to postgres")]
    Connect(#[source] tokio_postgres::Error),
    /// A statement failed (the connection was lost, or the database refused it).
    #[error("postgres {what} failed")]
    Query {
        /// What the statement was for.
        what: &'static str,
        /// The client's error.
        #[source]
        source: tokio_postgres::Error,
    },
    /// The schema was migrated by a newer version of this library.
    #[error("schema {schema} is at version {found}, newer than the {known} this library knows")]
    SchemaTooNew {
        /// The schema.
        schema: String,
        /// Its version.
        found: i32,
        /// The newest version this library has.
        known: i32,
    },
    /// A key is empty or longer than [`MAX_KEY_LEN`](super::MAX_KEY_LEN).
    #[error("invalid key: {len} bytes, need 1 to {max}", max = super::MAX_KEY_LEN)]
    Key {
        /// Its length.
        len: usize,
    },
    /// The database refused a completion batch (not a lost connection); the keys keep their
    /// leases until they expire.
    #[error("postgres refused the completion: {0}")]
    Completion(String),
    /// The queue was shut down: it no longer adds, claims or completes.
    #[error("the postgres queue is shut down")]
    ShutDown,
}

impl PgError {
    pub(crate) fn query(what: &'static str) -> impl FnOnce(tokio_postgres::Error) -> Self {
        move |source| Self::Query { what, source }
    }

    /// Whether the error is a lost or refused connection, which a retry after reconnecting may
    /// cure (rather than a statement the database refused).
    pub fn is_connection(&self) -> bool {
        use tokio_postgres::error::Severity;
        match self {
            Self::Connect(_) => true,
            // A FATAL (or PANIC) error ends the session: a server shutting down or restarting
            // (57P01 admin_shutdown), a terminated backend, a crash. The statement it cut was
            // not applied, and the server says so before it closes the connection, so the
            // client sees a database error rather than a closed connection.
            Self::Query { source, .. } => {
                source.is_closed()
                    || source.as_db_error().is_none_or(|db| {
                        matches!(
                            db.parsed_severity(),
                            Some(Severity::Fatal | Severity::Panic)
                        ) || db.code().code().starts_with("08")
                    })
            }
            _ => false,
        }
    }

    /// Whether the statement may succeed if run again as it is: a lost connection, or the
    /// database aborted it to break a deadlock or a serialization conflict.
    pub fn is_transient(&self) -> bool {
        use tokio_postgres::error::SqlState;
        match self {
            Self::Query { source, .. } => {
                self.is_connection()
                    || source.code().is_some_and(|c| {
                        *c == SqlState::T_R_DEADLOCK_DETECTED
                            || *c == SqlState::T_R_SERIALIZATION_FAILURE
                    })
            }
            _ => self.is_connection(),
        }
    }
}

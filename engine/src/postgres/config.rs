//! How a [`PgQueue`](super::PgQueue) is built: [`PgQueueConfig`], its defaults, and what
//! [`PgQueueConfig::validate`] refuses.

use super::error::ConfigError;
use crate::queue::MAX_DELAY;
use crate::rate_limit::{DEFAULT_BASE, DEFAULT_MAX};
use std::fmt;
use std::time::Duration;

/// Default schema the queue's tables live in.
pub const DEFAULT_SCHEMA: &str = "traceq";
/// Default queue name: one schema holds any number of queues, each a name.
pub const DEFAULT_QUEUE: &str = "default";
/// Default lease: a claimed key is reclaimable by another worker this long after its holder
/// last renewed it. The holder renews every third of it while its handler runs.
pub const DEFAULT_LEASE_TIMEOUT: Duration = Duration::from_secs(30);
/// Default fallback poll: an idle claimer looks for work this often even when no notification
/// arrives (a notification lost with a connection, a lease that expired elsewhere).
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(1);
/// Default most keys one claim statement takes.
pub const DEFAULT_CLAIM_BATCH: usize = 256;
/// Default keys claimed ahead of the workers that wait: none, so a claimed key is a key being
/// run and other processes get every key nobody runs.
pub const DEFAULT_PREFETCH: usize = 0;
/// Default most completions one statement applies.
pub const DEFAULT_COMPLETION_BATCH: usize = 1024;
/// Default failures after which [`PgQueue::fail`](super::PgQueue::fail) dead-letters a key, as
/// the in-memory engine's [`DEFAULT_MAX_RETRIES`](crate::DEFAULT_MAX_RETRIES).
pub const DEFAULT_MAX_RETRIES: u32 = crate::DEFAULT_MAX_RETRIES;
/// Default time a dead-lettered key is kept before it is purged: one week.
pub const DEFAULT_FAILED_RETENTION: Duration = Duration::from_secs(7 * 24 * 60 * 60);
/// Default first wait before a background task reconnects after losing its connection.
pub const DEFAULT_RECONNECT_BASE: Duration = Duration::from_millis(50);
/// Default longest wait between reconnection attempts.
pub const DEFAULT_RECONNECT_MAX: Duration = Duration::from_secs(5);
/// Shortest lease accepted: renewals every third of it must be possible over a network.
pub const MIN_LEASE_TIMEOUT: Duration = Duration::from_millis(30);
/// Longest identifier PostgreSQL keeps (`NAMEDATALEN - 1`).
pub const MAX_IDENTIFIER_LEN: usize = 63;
/// Longest queue name accepted (it travels as a notification payload).
pub const MAX_QUEUE_NAME_LEN: usize = 200;

/// Configuration of a [`PgQueue`](super::PgQueue). Build it with [`PgQueueConfig::new`] and the
/// `with_*` setters; [`PgQueue::connect`](super::PgQueue::connect) validates it.
///
/// # Examples
/// ```
/// use std::time::Duration;
/// use traceq_engine::postgres::PgQueueConfig;
///
/// let config = PgQueueConfig::new("postgres://postgres@127.0.0.1:5432/postgres")
///     .with_schema("jobs")
///     .with_queue("emails")
///     .with_lease_timeout(Duration::from_secs(10));
/// assert!(config.validate().is_ok());
/// assert!(config.with_schema("no spaces").validate().is_err());
/// ```
#[derive(Clone)]
pub struct PgQueueConfig {
    /// Connection string, as libpq takes it (`postgres://user@host:port/db` or `host=... port=...`).
    /// TLS is asked for with `sslmode` and `sslrootcert` in the URL form
    /// (`?sslmode=verify-full&sslrootcert=/etc/ssl/db-ca.pem`): see [TLS](super#tls).
    pub url: String,
    /// Schema holding the queue's tables, created and migrated by the library. A lower-case SQL
    /// identifier: letters, digits and `_`, not starting with a digit or `pg_`. Default
    /// [`DEFAULT_SCHEMA`].
    pub schema: String,
    /// Name of the queue within the schema; processes that use the same name share its keys.
    /// Default [`DEFAULT_QUEUE`].
    pub queue: String,
    /// How long a claim holds its key without renewal; see [`DEFAULT_LEASE_TIMEOUT`].
    pub lease_timeout: Duration,
    /// Fallback poll interval of an idle claimer; see [`DEFAULT_POLL_INTERVAL`].
    pub poll_interval: Duration,
    /// Most keys taken by one claim statement; see [`DEFAULT_CLAIM_BATCH`].
    pub claim_batch: usize,
    /// Keys claimed ahead of the workers waiting, handed out as workers ask (their leases
    /// renewed meanwhile); at most [`claim_batch`](Self::claim_batch) per statement in all.
    /// More keys per claim statement means fewer round trips and commits per key, at the price
    /// of keys held while no worker runs them. It pays with few workers (10 workers: about
    /// 1.5× the jobs per second in `benches/postgres.rs`); with many, the waiting workers' claims
    /// already share one statement and prefetching measured slower (100 workers: 0.55×).
    /// See [`DEFAULT_PREFETCH`].
    pub prefetch: usize,
    /// Most completions applied by one statement; see [`DEFAULT_COMPLETION_BATCH`].
    pub completion_batch: usize,
    /// Failures after which [`fail`](super::PgQueue::fail) dead-letters a key rather than
    /// requeueing it; see [`DEFAULT_MAX_RETRIES`].
    pub max_retries: u32,
    /// First delay of the per-key exponential backoff; default [`DEFAULT_BASE`] (5 ms).
    pub backoff_base: Duration,
    /// Longest delay of the per-key exponential backoff; default [`DEFAULT_MAX`] (1000 s).
    pub backoff_max: Duration,
    /// How long a dead-lettered key is kept; see [`DEFAULT_FAILED_RETENTION`].
    pub failed_retention: Duration,
    /// First wait before reconnecting; see [`DEFAULT_RECONNECT_BASE`].
    pub reconnect_base: Duration,
    /// Longest wait between reconnection attempts; see [`DEFAULT_RECONNECT_MAX`].
    pub reconnect_max: Duration,
}

impl fmt::Debug for PgQueueConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The connection string may hold a password: show only that there is one.
        f.debug_struct("PgQueueConfig")
            .field("url", &"<redacted>")
            .field("schema", &self.schema)
            .field("queue", &self.queue)
            .field("lease_timeout", &self.lease_timeout)
            .field("poll_interval", &self.poll_interval)
            .field("claim_batch", &self.claim_batch)
            .field("prefetch", &self.prefetch)
            .field("completion_batch", &self.completion_batch)
            .field("max_retries", &self.max_retries)
            .field("backoff_base", &self.backoff_base)
            .field("backoff_max", &self.backoff_max)
            .field("failed_retention", &self.failed_retention)
            .finish_non_exhaustive()
    }
}

impl Default for PgQueueConfig {
    fn default() -> Self {
        Self::new("postgres://postgres@127.0.0.1:5432/postgres")
    }
}

impl PgQueueConfig {
    /// The defaults, connecting to `url`.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            schema: DEFAULT_SCHEMA.to_owned(),
            queue: DEFAULT_QUEUE.to_owned(),
            lease_timeout: DEFAULT_LEASE_TIMEOUT,
            poll_interval: DEFAULT_POLL_INTERVAL,
            claim_batch: DEFAULT_CLAIM_BATCH,
            prefetch: DEFAULT_PREFETCH,
            completion_batch: DEFAULT_COMPLETION_BATCH,
            max_retries: DEFAULT_MAX_RETRIES,
            backoff_base: DEFAULT_BASE,
            backoff_max: DEFAULT_MAX,
            failed_retention: DEFAULT_FAILED_RETENTION,
            reconnect_base: DEFAULT_RECONNECT_BASE,
            reconnect_max: DEFAULT_RECONNECT_MAX,
        }
    }

    /// See [`schema`](Self::schema).
    #[must_use]
    pub fn with_schema(mut self, schema: impl Into<String>) -> Self {
        self.schema = schema.into();
        self
    }

    /// See [`queue`](Self::queue).
    #[must_use]
    pub fn with_queue(mut self, queue: impl Into<String>) -> Self {
        self.queue = queue.into();
        self
    }

    /// See [`lease_timeout`](Self::lease_timeout).
    #[must_use]
    pub fn with_lease_timeout(mut self, lease: Duration) -> Self {
        self.lease_timeout = lease;
        self
    }

    /// See [`poll_interval`](Self::poll_interval).
    #[must_use]
    pub fn with_poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = interval;
        self
    }

    /// See [`claim_batch`](Self::claim_batch).
    #[must_use]
    pub fn with_claim_batch(mut self, n: usize) -> Self {
        self.claim_batch = n;
        self
    }

    /// See [`prefetch`](Self::prefetch).
    #[must_use]
    pub fn with_prefetch(mut self, n: usize) -> Self {
        self.prefetch = n;
        self
    }

    /// See [`completion_batch`](Self::completion_batch).
    #[must_use]
    pub fn with_completion_batch(mut self, n: usize) -> Self {
        self.completion_batch = n;
        self
    }

    /// See [`max_retries`](Self::max_retries).
    #[must_use]
    pub fn with_max_retries(mut self, n: u32) -> Self {
        self.max_retries = n;
        self
    }

    /// The per-key exponential backoff: `base * 2^failures`, capped at `max`, as
    /// [`EngineBuilder::with_backoff`](crate::EngineBuilder::with_backoff).
    #[must_use]
    pub fn with_backoff(mut self, base: Duration, max: Duration) -> Self {
        self.backoff_base = base;
        self.backoff_max = max;
        self
    }

    /// See [`failed_retention`](Self::failed_retention).
    #[must_use]
    pub fn with_failed_retention(mut self, retention: Duration) -> Self {
        self.failed_retention = retention;
        self
    }

    /// The reconnection backoff of the background tasks: `base`, doubling up to `max`.
    #[must_use]
    pub fn with_reconnect(mut self, base: Duration, max: Duration) -> Self {
        self.reconnect_base = base;
        self.reconnect_max = max;
        self
    }

    /// The connection settings as `tokio-postgres` reads them, with `sslmode` and `sslrootcert`
    /// taken out of the URL and applied (see [TLS](super#tls)): its hosts and ports, say. Reads
    /// no file (the certificates are read when connecting, and by [`validate`](Self::validate)).
    ///
    /// # Errors
    /// As [`validate`](Self::validate) for the URL and its TLS keys.
    pub fn connection_config(&self) -> Result<tokio_postgres::Config, ConfigError> {
        super::tls::settings(&self.url).map(|(config, _)| config)
    }

    /// Checks every field.
    ///
    /// # Errors
    /// The first [`ConfigError`] found: an unparsable URL, TLS settings that cannot be honoured
    /// (an `sslmode` that verifies without `sslrootcert`, an unreadable CA file), a schema that
    /// is no plain identifier, an empty or overlong queue name, a lease under
    /// [`MIN_LEASE_TIMEOUT`], a zero poll interval or batch, or inverted backoff bounds.
    pub fn validate(&self) -> Result<(), ConfigError> {
        super::tls::parse(&self.url)?;
        validate_identifier(&self.schema)?;
        if self.queue.is_empty() || self.queue.len() > MAX_QUEUE_NAME_LEN {
            return Err(ConfigError::QueueName {
                len: self.queue.len(),
            });
        }
        if self.lease_timeout < MIN_LEASE_TIMEOUT || self.lease_timeout > MAX_DELAY {
            return Err(ConfigError::LeaseTimeout(self.lease_timeout));
        }
        if self.poll_interval.is_zero() {
            return Err(ConfigError::ZeroPollInterval);
        }
        if self.claim_batch == 0 || self.completion_batch == 0 {
            return Err(ConfigError::ZeroBatch);
        }
        if self.backoff_base > self.backoff_max {
            return Err(ConfigError::InvertedBackoff {
                base: self.backoff_base,
                max: self.backoff_max,
            });
        }
        if self.reconnect_base.is_zero() || self.reconnect_base > self.reconnect_max {
            return Err(ConfigError::Reconnect);
        }
        Ok(())
    }
}

/// Checks that `name` is a plain lower-case SQL identifier, safe to write into a statement
/// unquoted.
///
/// # Errors
/// [`ConfigError::Schema`] naming the schema otherwise.
pub fn validate_identifier(name: &str) -> Result<(), ConfigError> {
    let mut chars = name.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_');
    let rest_ok = chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if !first_ok || !rest_ok || name.len() > MAX_IDENTIFIER_LEN || name.starts_with("pg_") {
        return Err(ConfigError::Schema(name.to_owned()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_should_accept_the_defaults() {
        assert_eq!(PgQueueConfig::default().validate(), Ok(()));
    }

    #[test]
    fn config_should_refuse_schemas_that_are_not_plain_identifiers() {
        for bad in [
            "",
            "1abc",
            "Upper",
            "a-b",
            "a b",
            "x\"; drop",
            "pg_catalog",
            &"a".repeat(64),
        ] {
            assert_eq!(
                validate_identifier(bad),
                Err(ConfigError::Schema(bad.to_owned())),
                "{bad:?}"
            );
        }
        for good in ["traceq", "_q", "jobs_2", &"a".repeat(63)] {
            assert_eq!(validate_identifier(good), Ok(()), "{good:?}");
        }
    }

    #[test]
    fn config_should_refuse_bad_values_with_a_named_error() {
        let base = PgQueueConfig::default();
        let cases = [
            (base.clone().with_queue(""), "queue name"),
            (
                base.clone().with_lease_timeout(Duration::from_millis(1)),
                "lease",
            ),
            (base.clone().with_poll_interval(Duration::ZERO), "poll"),
            (base.clone().with_claim_batch(0), "batch"),
            (
                base.clone()
                    .with_backoff(Duration::from_secs(2), Duration::from_secs(1)),
                "backoff",
            ),
            (PgQueueConfig::new("postgres://a:b@/x?port=notaport"), "url"),
        ];
        for (config, word) in cases {
            let error = config.validate().expect_err(word).to_string();
            assert!(error.contains(word), "{error:?} should mention {word}");
        }
    }
}

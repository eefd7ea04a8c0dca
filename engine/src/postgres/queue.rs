//! [`PgQueue`]: connecting (and migrating), the background tasks, lengths, `forget`,
//! `num_requeues`, counters and shutdown.

use super::claim::{self, ClaimRequest, Held};
use super::complete::{self, CompletionRequest};
use super::config::PgQueueConfig;
use super::conn::{Db, SharedConn};
use super::error::PgError;
use super::{add, dead, notify, schema};
use parking_lot::Mutex;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::{mpsc, watch, Notify};
use tokio::task::JoinHandle;

/// Requests a claimer or completer may have waiting before senders wait.
const CHANNEL_BOUND: usize = 4096;

/// The statements of one queue, its schema written in.
#[derive(Debug)]
pub(super) struct Sql {
    pub(super) add: String,
    pub(super) claim: String,
    pub(super) next: String,
    pub(super) renew: String,
    pub(super) complete: String,
    pub(super) failed: String,
    pub(super) requeue_failed: String,
    pub(super) purge: String,
    stats: String,
    forget: String,
    num_requeues: String,
    release_all: String,
}

impl Sql {
    fn new(s: &str) -> Self {
        Self {
            add: add::add_sql(s),
            claim: claim::claim_sql(s),
            next: claim::next_sql(s),
            renew: claim::renew_sql(s),
            complete: complete::complete_sql(s),
            failed: dead::failed_sql(s),
            requeue_failed: dead::requeue_failed_sql(s),
            purge: dead::purge_sql(s),
            stats: format!(
                "SELECT count(*) FILTER (WHERE state = 'queued' AND ready_at <= now()),
                        count(*) FILTER (WHERE state = 'queued' AND ready_at > now()),
                        count(*) FILTER (WHERE state = 'processing'),
                        count(*) FILTER (WHERE state = 'failed'),
                        extract(epoch FROM now() - min(ready_at) FILTER (WHERE state = 'queued' AND ready_at <= now()))::float8
                 FROM {s}.items WHERE queue = $1"
            ),
            forget: format!(
                "WITH gone AS (DELETE FROM {s}.items WHERE queue = $1 AND key = $2 AND state = 'idle')
                 UPDATE {s}.items SET failures = 0, requeues = 0
                 WHERE queue = $1 AND key = $2 AND state IN ('queued', 'processing')"
            ),
            num_requeues: format!(
                "SELECT requeues FROM {s}.items WHERE queue = $1 AND key = $2 AND state <> 'failed'"
            ),
            release_all: format!(
                "WITH r AS (
                   UPDATE {s}.items SET state = 'queued', attempt = greatest(attempt - 1, 0),
                     ready_at = least(ready_at, coalesce(dirty_ready_at, ready_at)),
                     dirty_ready_at = NULL, lease_owner = NULL, lease_token = NULL, lease_expires_at = NULL
                   WHERE queue = $1 AND state = 'processing' AND lease_owner = $2
                     AND lease_token = ANY($3::int8[])
                   RETURNING key)
                 SELECT pg_notify($4, $1) FROM (SELECT 1 FROM r LIMIT 1) AS n"
            ),
        }
    }
}

/// Counters for what this process's queue handle did, for tests and metrics.
#[derive(Debug, Default)]
pub(super) struct Counters {
    pub(super) stale_completions: AtomicU64,
    pub(super) reclaimed: AtomicU64,
    pub(super) leases_lost: AtomicU64,
    pub(super) claimed: AtomicU64,
    pub(super) notifications: AtomicU64,
    pub(super) listening: AtomicBool,
    pub(super) claim_statements: AtomicU64,
    pub(super) completion_statements: AtomicU64,
}

/// A snapshot of a [`PgQueue`]'s counters (this process's handle only).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct PgCounters {
    /// Completions refused because the claim's lease had been lost and the key claimed again.
    pub stale_completions: u64,
    /// Keys this handle claimed from a worker whose lease had expired.
    pub reclaimed: u64,
    /// Leases this handle found lost when renewing them.
    pub leases_lost: u64,
    /// Keys claimed.
    pub claimed: u64,
    /// Notifications received for this queue.
    pub notifications: u64,
    /// Whether the notification listener is connected and listening.
    pub listening: bool,
    /// Claim statements run (each a round trip, for any number of keys).
    pub claim_statements: u64,
    /// Completion statements run (each a round trip, for any number of completions).
    pub completion_statements: u64,
    /// Connections of this handle (producers', claimer's, completer's, listener's) that ended
    /// with an error: the database restarted or went away, or the network failed. Each is
    /// reopened with backoff; a rising count with a healthy database points at the network.
    pub connections_lost: u64,
}

/// How many keys a queue has in each state, across every process.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
#[non_exhaustive]
pub struct PgStats {
    /// Queued and ready ([`PgQueue::len`]).
    pub ready: u64,
    /// Queued, waiting out a delay or backoff ([`PgQueue::waiting_len`]).
    pub waiting: u64,
    /// Claimed by a worker ([`PgQueue::processing_len`]).
    pub processing: u64,
    /// In the dead letters.
    pub failed: u64,
    /// How long the oldest ready key has been ready; `None` when none is.
    pub oldest_ready: Option<Duration>,
}

pub(super) struct Inner {
    pub(super) config: PgQueueConfig,
    pub(super) sql: Sql,
    pub(super) db: Db,
    pub(super) shared: SharedConn,
    /// The lease owner written on every claim of this handle: unique per handle.
    pub(super) owner: String,
    pub(super) claims: mpsc::Sender<ClaimRequest>,
    pub(super) completions: mpsc::Sender<CompletionRequest>,
    /// Wakes the claimer: a notification, an add or requeue of our own.
    pub(super) wake: Notify,
    /// Stops claims and notifications (the first step of a shutdown).
    pub(super) stop_claims: watch::Sender<bool>,
    /// Stops everything.
    pub(super) stop: watch::Sender<bool>,
    pub(super) held: Arc<Held>,
    pub(super) counters: Counters,
    /// Backoff base and max in µs.
    pub(super) backoff_us: (f64, f64),
    pub(super) renewals_paused: AtomicBool,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl Inner {
    pub(super) fn is_stopped(&self) -> bool {
        *self.stop.borrow()
    }

    pub(super) fn claims_stopped(&self) -> bool {
        *self.stop_claims.borrow()
    }

    /// Gives back the keys of `tokens` this handle holds: queued where they were, their attempt
    /// not counted. Forgets the tokens.
    pub(super) async fn release_tokens(&self, tokens: &[i64]) -> Result<(), PgError> {
        if tokens.is_empty() {
            return Ok(());
        }
        let conn = self.shared.get().await?;
        let st = conn.statement("release_all", &self.sql.release_all).await?;
        let c = &self.config;
        conn.client
            .execute(&st, &[&c.queue, &self.owner, &tokens, &c.schema])
            .await
            .map_err(PgError::query("release"))?;
        for token in tokens {
            self.held.release(*token);
        }
        Ok(())
    }
}

/// Stops the background tasks when the last handle goes.
struct StopOnDrop(Arc<Inner>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.stop_claims.send_replace(true);
        self.0.stop.send_replace(true);
    }
}

/// A durable work queue on PostgreSQL, shared by every process that opens the same schema and
/// queue name. See the [module docs](super) for the semantics and the design. Cheap to clone:
/// clones share the connections and background tasks, which stop when the last clone is
/// dropped or at [`shutdown`](Self::shutdown).
///
/// # Examples
/// ```no_run
/// # async fn example() -> Result<(), traceq_engine::postgres::PgError> {
/// use traceq_engine::postgres::{PgQueue, PgQueueConfig};
///
/// let queue = PgQueue::connect(PgQueueConfig::new("postgres://app@db/app").with_queue("mail")).await?;
/// queue.add("user-42").await?;
/// while let Some(claim) = queue.claim().await {
///     match send_mail(&claim.key).await {
///         Ok(()) => queue.succeed(&claim).await?,
///         Err(error) => queue.fail(&claim, &error).await?,
///     };
/// }
/// # Ok(()) }
/// # async fn send_mail(_: &str) -> Result<(), String> { Ok(()) }
/// ```
#[derive(Clone)]
pub struct PgQueue {
    pub(super) inner: Arc<Inner>,
    _stop: Arc<StopOnDrop>,
}

impl fmt::Debug for PgQueue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgQueue")
            .field("schema", &self.inner.config.schema)
            .field("queue", &self.inner.config.queue)
            .field("owner", &self.inner.owner)
            .field("held", &self.inner.held.len())
            .finish_non_exhaustive()
    }
}

fn owner_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(nanos);
    format!(
        "{}-{}-{:016x}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed),
        h.finish()
    )
}

impl PgQueue {
    /// Validates `config`, connects, creates or migrates the schema, and starts the claimer,
    /// completer, listener and lease renewer. Must be called within a tokio runtime.
    ///
    /// # Errors
    /// [`PgError::Config`] for a bad configuration, [`PgError::Connect`] when the database
    /// cannot be reached, [`PgError::Query`] / [`PgError::SchemaTooNew`] from the migration.
    pub async fn connect(config: PgQueueConfig) -> Result<Self, PgError> {
        config.validate()?;
        let db = db_of(&config)?;
        let mut first = db.connect(None).await?;
        schema::migrate(&mut first, &config.schema).await?;
        let (claims, claim_rx) = mpsc::channel(CHANNEL_BOUND);
        let (completions, completion_rx) = mpsc::channel(CHANNEL_BOUND);
        let backoff_us = (
            config.backoff_base.as_micros() as f64,
            config.backoff_max.min(crate::MAX_DELAY).as_micros() as f64,
        );
        let inner = Arc::new(Inner {
            sql: Sql::new(&config.schema),
            shared: SharedConn::new(db.clone(), first),
            db,
            owner: owner_id(),
            claims,
            completions,
            wake: Notify::new(),
            stop_claims: watch::channel(false).0,
            stop: watch::channel(false).0,
            held: Arc::default(),
            counters: Counters::default(),
            backoff_us,
            renewals_paused: AtomicBool::new(false),
            tasks: Mutex::new(Vec::new()),
            config,
        });
        // Subscribed here, before any shutdown can be called: a task that subscribed itself
        // would miss a shutdown that came before it first ran, and never stop.
        let (claims_stop, listener_stop) =
            (inner.stop_claims.subscribe(), inner.stop_claims.subscribe());
        let (completer_stop, renewer_stop) = (inner.stop.subscribe(), inner.stop.subscribe());
        let tasks = vec![
            tokio::spawn(claim::run_claimer(inner.clone(), claim_rx, claims_stop)),
            tokio::spawn(complete::run_completer(
                inner.clone(),
                completion_rx,
                completer_stop,
            )),
            tokio::spawn(notify::run_listener(inner.clone(), listener_stop)),
            tokio::spawn(claim::run_renewer(inner.clone(), renewer_stop)),
        ];
        *inner.tasks.lock() = tasks;
        Ok(Self {
            _stop: Arc::new(StopOnDrop(inner.clone())),
            inner,
        })
    }

    /// Creates or migrates `config`'s schema without starting a queue; the schema version.
    /// Idempotent and safe to run from many processes at once.
    ///
    /// # Errors
    /// As [`connect`](Self::connect).
    pub async fn migrate(config: &PgQueueConfig) -> Result<i32, PgError> {
        config.validate()?;
        let mut conn = db_of(config)?.connect(None).await?;
        schema::migrate(&mut conn, &config.schema).await
    }

    /// The version of `config`'s schema, read on a connection of its own (closed on return)
    /// without creating or migrating anything: `None` when the schema does not exist, `Some(0)`
    /// when it holds no traceq tables. For tools that must not change a schema an operator
    /// points them at (a mistyped name, or one a newer or older library migrated).
    ///
    /// # Errors
    /// [`PgError::Config`] for a configuration [`validate`](PgQueueConfig::validate) refuses;
    /// [`PgError::Connect`] / [`PgError::Query`] when the database cannot be reached.
    pub async fn schema_version(config: &PgQueueConfig) -> Result<Option<i32>, PgError> {
        config.validate()?;
        let conn = db_of(config)?.connect(None).await?;
        let row = conn
            .client
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1),
                        to_regclass(format('%I.migrations', $1::text)) IS NOT NULL",
                &[&config.schema],
            )
            .await
            .map_err(PgError::query("schema lookup"))?;
        let (schema, migrations): (bool, bool) = (row.get(0), row.get(1));
        if !schema {
            return Ok(None);
        }
        if !migrations {
            return Ok(Some(0));
        }
        // The name is a checked identifier (`validate`), so it can stand in the statement.
        let row = conn
            .client
            .query_one(
                &format!(
                    "SELECT coalesce(max(version), 0) FROM {}.migrations",
                    config.schema
                ),
                &[],
            )
            .await
            .map_err(PgError::query("schema version"))?;
        Ok(Some(row.get(0)))
    }

    /// The configuration the queue runs with.
    pub fn config(&self) -> &PgQueueConfig {
        &self.inner.config
    }

    pub(super) fn check_running(&self) -> Result<(), PgError> {
        if self.inner.claims_stopped() {
            return Err(PgError::ShutDown);
        }
        Ok(())
    }

    /// How many keys the queue has in each state, in one statement.
    ///
    /// # Errors
    /// [`PgError::Connect`] / [`PgError::Query`] when the database cannot answer.
    pub async fn stats(&self) -> Result<PgStats, PgError> {
        let conn = self.inner.shared.get().await?;
        let st = conn.statement("stats", &self.inner.sql.stats).await?;
        let row = conn
            .client
            .query_one(&st, &[&self.inner.config.queue])
            .await
            .map_err(PgError::query("stats"))?;
        let n = |i: usize| row.get::<_, i64>(i).max(0) as u64;
        Ok(PgStats {
            ready: n(0),
            waiting: n(1),
            processing: n(2),
            failed: n(3),
            oldest_ready: row
                .get::<_, Option<f64>>(4)
                .map(|s| Duration::from_secs_f64(s.max(0.0))),
        })
    }

    /// Keys queued and ready, across every process (client-go's `Len`). Keys waiting out a
    /// delay are in [`waiting_len`](Self::waiting_len), claimed keys in
    /// [`processing_len`](Self::processing_len) (also when an add made them dirty).
    ///
    /// # Errors
    /// As [`stats`](Self::stats).
    pub async fn len(&self) -> Result<u64, PgError> {
        Ok(self.stats().await?.ready)
    }

    /// Whether no key is queued and ready.
    ///
    /// # Errors
    /// As [`stats`](Self::stats).
    pub async fn is_empty(&self) -> Result<bool, PgError> {
        Ok(self.len().await? == 0)
    }

    /// Keys queued but waiting out a delay or backoff.
    ///
    /// # Errors
    /// As [`stats`](Self::stats).
    pub async fn waiting_len(&self) -> Result<u64, PgError> {
        Ok(self.stats().await?.waiting)
    }

    /// Keys claimed and not yet completed (by any process).
    ///
    /// # Errors
    /// As [`stats`](Self::stats).
    pub async fn processing_len(&self) -> Result<u64, PgError> {
        Ok(self.stats().await?.processing)
    }

    /// Clears `key`'s failure history (its backoff starts again from the base; its
    /// [`num_requeues`](Self::num_requeues) is zero). A key with no work left is removed.
    ///
    /// # Errors
    /// As [`stats`](Self::stats).
    pub async fn forget(&self, key: &str) -> Result<(), PgError> {
        let conn = self.inner.shared.get().await?;
        let st = conn.statement("forget", &self.inner.sql.forget).await?;
        conn.client
            .execute(&st, &[&self.inner.config.queue, &key])
            .await
            .map_err(PgError::query("forget"))?;
        Ok(())
    }

    /// Rate-limited adds and failures of `key` counted since it was last forgotten.
    ///
    /// # Errors
    /// As [`stats`](Self::stats).
    pub async fn num_requeues(&self, key: &str) -> Result<u32, PgError> {
        let conn = self.inner.shared.get().await?;
        let st = conn
            .statement("num_requeues", &self.inner.sql.num_requeues)
            .await?;
        let row = conn
            .client
            .query_opt(&st, &[&self.inner.config.queue, &key])
            .await
            .map_err(PgError::query("num_requeues"))?;
        Ok(row.map_or(0, |r| r.get::<_, i32>(0).max(0) as u32))
    }

    /// What this handle counted so far.
    pub fn counters(&self) -> PgCounters {
        let c = &self.inner.counters;
        PgCounters {
            stale_completions: c.stale_completions.load(Ordering::Relaxed),
            reclaimed: c.reclaimed.load(Ordering::Relaxed),
            leases_lost: c.leases_lost.load(Ordering::Relaxed),
            claimed: c.claimed.load(Ordering::Relaxed),
            notifications: c.notifications.load(Ordering::Relaxed),
            listening: c.listening.load(Ordering::Relaxed),
            claim_statements: c.claim_statements.load(Ordering::Relaxed),
            completion_statements: c.completion_statements.load(Ordering::Relaxed),
            connections_lost: self.inner.db.connections_lost(),
        }
    }

    /// Leases this handle holds now (claims not yet completed).
    pub fn held_len(&self) -> usize {
        self.inner.held.len()
    }

    /// Whether [`shutdown`](Self::shutdown) (or a drain) has begun.
    pub fn is_shutting_down(&self) -> bool {
        self.inner.claims_stopped()
    }

    /// Stops handing out keys and adding; gives back every key this handle still holds
    /// (queued where it was, the attempt not counted, so another worker takes it at once rather
    /// than after its lease), applies the completions already sent, and stops the background
    /// tasks. A completion sent after this returns is refused with [`PgError::ShutDown`]: its
    /// key was given back and runs again elsewhere. Idempotent.
    ///
    /// # Errors
    /// [`PgError::Connect`] / [`PgError::Query`] when the held keys could not be given back:
    /// they are then reclaimed when their leases expire.
    pub async fn shutdown(&self) -> Result<(), PgError> {
        self.inner.stop_claims.send_replace(true);
        self.inner.stop.send_replace(true);
        let tasks = std::mem::take(&mut *self.inner.tasks.lock());
        for task in tasks {
            let _ = task.await;
        }
        let (tokens, _) = self.inner.held.snapshot();
        self.inner.release_tokens(&tokens).await
    }

    /// Stops handing out keys and adding, waits until every key this handle holds is
    /// completed (or its claim dropped), then [`shutdown`](Self::shutdown). Keys still queued
    /// stay queued for other processes.
    ///
    /// # Errors
    /// As [`shutdown`](Self::shutdown).
    pub async fn shutdown_with_drain(&self) -> Result<(), PgError> {
        self.inner.stop_claims.send_replace(true);
        self.inner.held.wait_empty().await;
        self.shutdown().await
    }

    /// Moves the queue's clock: every ready time, pending dirty ready time and dead-letter
    /// time of this queue is moved `by` into the past, as if `by` had passed (leases are not
    /// moved). For tests that check delays and backoffs without sleeping.
    ///
    /// # Errors
    /// As [`stats`](Self::stats).
    #[cfg(any(test, feature = "testing"))]
    pub async fn advance_time(&self, by: Duration) -> Result<(), PgError> {
        let conn = self.inner.shared.get().await?;
        let sql = format!(
            "UPDATE {s}.items SET ready_at = ready_at - $2::int8 * interval '1 microsecond',
               dirty_ready_at = dirty_ready_at - $2::int8 * interval '1 microsecond',
               failed_at = failed_at - $2::int8 * interval '1 microsecond'
             WHERE queue = $1",
            s = self.inner.config.schema
        );
        conn.client
            .execute(&sql, &[&self.inner.config.queue, &add::micros(by)])
            .await
            .map_err(PgError::query("advance time"))?;
        self.inner.wake.notify_one();
        Ok(())
    }

    /// Pauses (or resumes) this handle's lease renewals, as a worker stalled by a long pause
    /// or a partition would: its leases then expire and other workers reclaim its keys.
    #[cfg(any(test, feature = "testing"))]
    pub fn pause_renewals(&self, paused: bool) {
        self.inner.renewals_paused.store(paused, Ordering::Relaxed);
    }
}

fn db_of(config: &PgQueueConfig) -> Result<Db, PgError> {
    let (pg, tls) = super::tls::parse(&config.url)?;
    Ok(Db::new(
        pg,
        tls,
        config.reconnect_base,
        config.reconnect_max,
    ))
}

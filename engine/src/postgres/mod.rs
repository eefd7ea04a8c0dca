//! The durable queue on PostgreSQL (feature `postgres`): the client-go work-queue semantics of
//! [`Queue`](crate::Queue), per queue name, across every process that opens one database.
//!
//! ```text
//!  producers ──add (upsert + pg_notify)──▶ items (queue, key) ◀── claim: UPDATE … FOR UPDATE
//!     │  (or inside their own transaction)       │      ▲             SKIP LOCKED, n at once
//!     │                                          │      │ renew leases (one UPDATE / lease/3)
//!     └──── LISTEN/NOTIFY ──▶ claimer ◀──────────┘      │
//!                               │ claims ─▶ workers ─▶ done / succeed / fail / dead_letter
//!                               │                         │ batched into one UPDATE (unnest)
//!                               └─ polls at the next ready time and every poll interval
//! ```
//!
//! # The state machine
//! One row per `(queue, key)`; the primary key is the dedup.
//!
//! ```text
//!            add                 claim (attempt+1, new lease token)
//!   (none) ──────▶ queued ──────────────────────────────────────▶ processing ──┐ add: dirty
//!                  ready_at ≤ now: ready          ◀── lease expired: reclaim ──┘ (dirty_ready_at)
//!                  ready_at > now: waiting
//!     processing ─ done ─▶ queued again if dirty, else gone (or idle, keeping its history)
//!     processing ─ fail ─▶ queued after its backoff, failures+1; past max_retries ─▶ failed
//!     processing ─ dead_letter ─▶ failed (reason, last error, attempts; purged after retention)
//!     failed ─ requeue_failed / add ─▶ queued with a fresh history
//! ```
//!
//! An add of a queued key keeps one row with the earliest ready time and the highest priority;
//! an add of a processing key marks it dirty, so it runs once more after `done`: a key is never
//! run by two workers at once and no add is lost. The failure count behind
//! [`add_rate_limited`](PgQueue::add_rate_limited) is a column of the key's row, so the backoff
//! is the same whichever process retries it. See `add` for the full table of adds.
//!
//! # Why leases and attempt fencing
//! A claim is a lease, not a lock held by a connection: a worker that dies (SIGKILL, a lost
//! connection, a machine gone) must not keep its keys, so every lease expires
//! ([`lease_timeout`](PgQueueConfig::lease_timeout)) and any worker's next claim takes expired
//! keys back, in the same statement that takes ready ones. A time-based rescue alone is what
//! makes other job queues run a job twice when a handler outlives its timeout; two things stop
//! that here. The holder renews all its leases in one statement every third of the timeout while
//! its handlers run, so a long handler keeps its key. And each claim carries a new lease token
//! (with the attempt number): a completion must present it, so a worker that stalled past its
//! lease and whose key was claimed again cannot complete, requeue or dead-letter the newer
//! attempt: its late call is refused ([`Settled::Stale`]), counted and logged.
//!
//! # Why `FOR UPDATE SKIP LOCKED`
//! Claimers on many machines run the same claim statement at once. `SKIP LOCKED` makes each
//! take rows the others have not locked instead of queueing behind them (or failing on a
//! serialization error), so claims scale with workers and never hand a key out twice. One
//! statement claims for every worker of the process that waits (up to
//! [`claim_batch`](PgQueueConfig::claim_batch)), and completions are coalesced the same way,
//! so throughput does not pay a round trip per key.
//!
//! # Time
//! Every ready time, lease and backoff is measured by the database's clock (`now()`), so the
//! clocks of the worker machines never matter.
//!
//! # Where it differs from the in-memory queue
//! A key has one ready time: a delayed add of a key that is already queued earlier coalesces
//! into it (it does not fire a second run later). A priority raised by an add keeps the key's
//! place by ready time within its new priority. A claimed key with a pending add is counted in
//! `processing_len` only. Adds after shutdown are refused with [`PgError::ShutDown`] rather than
//! dropped. Only the per-key exponential backoff limits rate-limited adds (no global bucket).
//!
//! # TLS
//! Asked for as libpq users already ask: `sslmode` and `sslrootcert` in the connection URL,
//! `postgres://app@db.example.com/app?sslmode=verify-full&sslrootcert=/etc/ssl/db-ca.pem`.
//!
//! | `sslmode` | here |
//! |---|---|
//! | `disable` | plain text |
//! | `prefer` (the default), `allow` | plain text; with `sslrootcert`, TLS when the server offers it, verified as `verify-full` |
//! | `require` | TLS or no connection, verified as `verify-full`: needs `sslrootcert` |
//! | `verify-ca` | TLS; the server's certificate must chain to `sslrootcert` (its name is not checked) |
//! | `verify-full` | TLS; it must chain to `sslrootcert` and name the host dialled |
//!
//! Why `require` verifies where libpq's does not: a connection that accepts any certificate
//! is open to anyone on the path posing as the database, and the queue's rows (payloads, errors,
//! trace identities) would go to them. Why `sslrootcert` is a file: no crate of CA roots is
//! among the dependencies, so `sslrootcert=system` is refused; the system bundle's path (e.g.
//! `/etc/ssl/certs/ca-certificates.crt`) works, as does a managed database's CA bundle. The
//! TLS keys are read from the URL form (`postgres://…?…`) and taken out before the rest goes to
//! `tokio-postgres`; in the `key=value` form `tokio-postgres` reads `sslmode` itself and refuses
//! `sslrootcert`, so TLS takes the URL form. The handshake is rustls with the `ring` provider,
//! as in the collector, and offers channel binding (SCRAM-SHA-256-PLUS). A client certificate
//! (for `cert` authentication) is `sslcert=PATH&sslkey=PATH`, PEM files; it needs TLS, so a
//! verified `sslmode` and `sslrootcert` with it.
//!
//! # The engine on it, and trace identity
//! [`PgEngine`] (from [`EngineBuilder::build_postgres`](crate::EngineBuilder::build_postgres))
//! runs handlers over this queue as the in-memory engine does. The `items` table keeps each
//! key's trace identity ([`StoredTrace`](crate::trace::stored::StoredTrace), one `bytea`
//! column) beside the key, never in the payload, so that an item's attempts on any process and
//! its end land in one trace; see [`PgEngine`]'s module docs.

mod add;
mod claim;
mod complete;
mod config;
mod conn;
mod dead;
mod error;
mod list;
mod notify;
mod queue;
mod schema;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
#[cfg(test)]
mod tests;
mod tls;

pub use crate::engine::{PgBuildError, PgEngine, PgEngineHandle};
pub use add::MAX_KEY_LEN;
pub use claim::PgClaim;
pub use complete::Settled;
pub use config::{
    validate_identifier, PgQueueConfig, DEFAULT_CLAIM_BATCH, DEFAULT_COMPLETION_BATCH,
    DEFAULT_FAILED_RETENTION, DEFAULT_LEASE_TIMEOUT, DEFAULT_MAX_RETRIES, DEFAULT_POLL_INTERVAL,
    DEFAULT_PREFETCH, DEFAULT_QUEUE, DEFAULT_RECONNECT_BASE, DEFAULT_RECONNECT_MAX, DEFAULT_SCHEMA,
    MAX_IDENTIFIER_LEN, MAX_QUEUE_NAME_LEN, MIN_LEASE_TIMEOUT,
};
pub use dead::FailedKey;
pub use error::{ConfigError, PgError};
pub use list::{KeyState, ListFilter, ListedKey};
pub use queue::{PgCounters, PgQueue, PgStats};
pub use schema::SCHEMA_VERSION;
/// The client this backend speaks, re-exported: [`PgQueue::add_in`] takes its transactions.
pub use tokio_postgres;

//! The schema: versioned migrations, applied by [`migrate`] in one transaction under an advisory
//! lock, so any number of processes starting at once agree and each migration runs once.
//!
//! A migration is never edited once released: a change to the tables is a new entry at the end
//! of [`MIGRATIONS`]. `{s}` in a migration's text stands for the (validated) schema name.

use super::conn::Conn;
use super::error::PgError;

/// One step of the schema's history.
struct Migration {
    version: i32,
    description: &'static str,
    sql: &'static str,
}

/// Every migration, in order; the schema's version is the last one applied.
const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        description:
            "items: one row per (queue, key) with state, lease, history and trace identity",
        sql: r"
CREATE SEQUENCE {s}.seq;
CREATE TABLE {s}.items (
    queue            text        NOT NULL,
    key              text        NOT NULL,
    -- queued (ready_at <= now: ready; later: waiting out a delay), processing (leased),
    -- failed (dead letter), idle (no work, only the failure history kept until forget)
    state            text        NOT NULL CHECK (state IN ('queued', 'processing', 'failed', 'idle')),
    priority         integer     NOT NULL DEFAULT 0,
    ready_at         timestamptz NOT NULL DEFAULT now(),
    -- FIFO order among keys with one priority and ready time (a bulk add shares one now())
    seq              bigint      NOT NULL,
    payload          bytea,
    -- set while processing when the key was added again: it is queued at this time after done
    dirty_ready_at   timestamptz,
    attempt          integer     NOT NULL DEFAULT 0,
    lease_owner      text,
    -- unique per claim: what a completion must present (the fence)
    lease_token      bigint,
    lease_expires_at timestamptz,
    failures         integer     NOT NULL DEFAULT 0,
    requeues         integer     NOT NULL DEFAULT 0,
    last_error       text,
    fail_reason      text,
    failed_at        timestamptz,
    added_at         timestamptz NOT NULL DEFAULT now(),
    -- the item's trace identity, beside the key and never in the payload
    trace_id         bytea,
    root_span_id     bytea,
    trace_started_at timestamptz,
    baggage          text,
    job_id           text,
    segment          integer,
    PRIMARY KEY (queue, key)
);
CREATE INDEX items_ready ON {s}.items (queue, priority DESC, ready_at, seq) WHERE state = 'queued';
CREATE INDEX items_leases ON {s}.items (queue, lease_expires_at) WHERE state = 'processing';
CREATE INDEX items_failed ON {s}.items (queue, failed_at) WHERE state = 'failed';
",
    },
    Migration {
        version: 2,
        description: "items: the trace identity as one encoded column (trace::stored's layout)",
        // The identity is read and written whole, by the process that runs or ends the item,
        // so one column of `StoredTrace::encode` bytes replaces the split ones (never filled).
        sql: r"
ALTER TABLE {s}.items
    DROP COLUMN trace_id,
    DROP COLUMN root_span_id,
    DROP COLUMN trace_started_at,
    DROP COLUMN baggage,
    DROP COLUMN job_id,
    DROP COLUMN segment,
    ADD COLUMN trace bytea;
",
    },
];

/// The newest schema version this library knows.
pub const SCHEMA_VERSION: i32 = 2;

/// Creates `schema` if needed and applies the migrations it lacks. Idempotent; safe to run from
/// many processes at once (they queue on an advisory lock keyed by the schema name).
///
/// # Errors
/// [`PgError::Query`] when a statement fails (the transaction is rolled back: nothing is half
/// applied), [`PgError::SchemaTooNew`] when a newer library migrated the schema.
pub(crate) async fn migrate(conn: &mut Conn, schema: &str) -> Result<i32, PgError> {
    let tx = conn
        .client
        .transaction()
        .await
        .map_err(PgError::query("migration begin"))?;
    let lock_key = format!("traceq.migrate.{schema}");
    tx.execute(
        "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
        &[&lock_key],
    )
    .await
    .map_err(PgError::query("migration lock"))?;
    tx.batch_execute(&format!(
        "CREATE SCHEMA IF NOT EXISTS {schema};
         CREATE TABLE IF NOT EXISTS {schema}.migrations (
             version     integer     PRIMARY KEY,
             description text        NOT NULL,
             applied_at  timestamptz NOT NULL DEFAULT now()
         );"
    ))
    .await
    .map_err(PgError::query("migration bootstrap"))?;
    let current: i32 = tx
        .query_one(
            &format!("SELECT coalesce(max(version), 0) FROM {schema}.migrations"),
            &[],
        )
        .await
        .map_err(PgError::query("migration version"))?
        .get(0);
    if current > SCHEMA_VERSION {
        return Err(PgError::SchemaTooNew {
            schema: schema.to_owned(),
            found: current,
            known: SCHEMA_VERSION,
        });
    }
    for m in MIGRATIONS.iter().filter(|m| m.version > current) {
        tx.batch_execute(&m.sql.replace("{s}", schema))
            .await
            .map_err(PgError::query("migration"))?;
        tx.execute(
            &format!("INSERT INTO {schema}.migrations (version, description) VALUES ($1, $2)"),
            &[&m.version, &m.description],
        )
        .await
        .map_err(PgError::query("migration record"))?;
    }
    tx.commit()
        .await
        .map_err(PgError::query("migration commit"))?;
    Ok(SCHEMA_VERSION)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_should_be_numbered_in_order_and_end_at_the_schema_version() {
        for (i, m) in MIGRATIONS.iter().enumerate() {
            assert_eq!(m.version, i as i32 + 1, "{}", m.description);
            assert!(
                m.sql.contains("{s}."),
                "migration {} names its schema",
                m.version
            );
        }
        assert_eq!(MIGRATIONS.last().map(|m| m.version), Some(SCHEMA_VERSION));
    }
}

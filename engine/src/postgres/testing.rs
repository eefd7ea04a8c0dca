//! The one place every PostgreSQL test gets its database from (feature `testing`).
//!
//! [`TestSchema::new`] reads `DATABASE_URL`. Without it, a test fails when `CI` is set (CI must
//! never skip the durable backend's tests silently) and is skipped otherwise, saying so. With
//! it, each test gets a schema of its own with a unique name, so tests run in parallel, and the
//! schema is dropped when the [`TestSchema`] is (also when the test panics).

use super::config::PgQueueConfig;
use super::error::PgError;
use super::queue::PgQueue;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// The variable naming the test database.
pub const DATABASE_URL: &str = "DATABASE_URL";

/// A freshly named schema for one test, dropped (with everything in it) on drop.
#[derive(Debug)]
pub struct TestSchema {
    url: String,
    schema: String,
}

impl TestSchema {
    /// A new schema name on the database of `DATABASE_URL`; `None` (after printing
    /// "skipped: DATABASE_URL not set") when it is unset and `CI` is not.
    ///
    /// # Panics
    /// When `DATABASE_URL` is unset and `CI` is set: the test fails.
    pub fn new(test: &str) -> Option<Self> {
        let Ok(url) = std::env::var(DATABASE_URL) else {
            if std::env::var_os("CI").is_some() {
                panic!("{test}: DATABASE_URL must be set when CI is (the postgres tests may not be skipped)");
            }
            println!("{test}: skipped: DATABASE_URL not set");
            return None;
        };
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let schema = format!(
            "tq_test_{}_{}_{nanos}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        Some(Self { url, schema })
    }

    /// The database URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The schema's name.
    pub fn schema(&self) -> &str {
        &self.schema
    }

    /// A configuration for queue `queue` in this schema, with the defaults otherwise. Its
    /// connections carry the schema's name as `application_name` (when `DATABASE_URL` is a
    /// URL), so a test can find them in `pg_stat_activity`.
    pub fn config(&self, queue: &str) -> PgQueueConfig {
        let url = if self.url.starts_with("postgres://") || self.url.starts_with("postgresql://") {
            let sep = if self.url.contains('?') { '&' } else { '?' };
            format!("{}{sep}application_name={}", self.url, self.schema)
        } else {
            format!("{} application_name={}", self.url, self.schema)
        };
        PgQueueConfig::new(url)
            .with_schema(self.schema.clone())
            .with_queue(queue)
    }

    /// Connects a queue with `config` (which should come from [`config`](Self::config)).
    ///
    /// # Errors
    /// As [`PgQueue::connect`].
    pub async fn queue(&self, config: PgQueueConfig) -> Result<PgQueue, PgError> {
        PgQueue::connect(config).await
    }

    /// Ends every connection of this test's queues (as a database restart would), from the
    /// server side; how many were ended.
    ///
    /// # Errors
    /// [`PgError::Connect`] / [`PgError::Query`] when the database cannot be reached.
    pub async fn terminate_connections(&self) -> Result<u64, PgError> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1",
                &[&self.schema],
            )
            .await
            .map_err(PgError::query("terminate connections"))?;
        Ok(rows.len() as u64)
    }

    /// A plain client on the test database, for statements of the test's own.
    ///
    /// # Errors
    /// [`PgError::Connect`] when the database cannot be reached.
    pub async fn client(&self) -> Result<tokio_postgres::Client, PgError> {
        let (client, connection) = tokio_postgres::connect(&self.url, tokio_postgres::NoTls)
            .await
            .map_err(PgError::Connect)?;
        tokio::spawn(connection);
        Ok(client)
    }
}

impl Drop for TestSchema {
    fn drop(&mut self) {
        // Drop may run inside a runtime (or while a test unwinds): do the cleanup on a thread of
        // its own with a runtime of its own.
        let url = self.url.clone();
        let sql = format!("DROP SCHEMA IF EXISTS {} CASCADE", self.schema);
        let cleanup = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            rt.block_on(async {
                let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                    .await
                    .ok()?;
                tokio::spawn(connection);
                client.batch_execute(&sql).await.ok()
            })
        });
        if cleanup.join().ok().flatten().is_none() {
            eprintln!("could not drop test schema {}", self.schema);
        }
    }
}

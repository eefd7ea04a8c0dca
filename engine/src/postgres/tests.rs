//! The SQL paths against a real PostgreSQL (`DATABASE_URL`; see `testing`). The behaviours a
//! user relies on are tested across crates in `tests/postgres_queue.rs`.

use super::testing::TestSchema;
use super::*;
use crate::AddOptions;
use std::time::Duration;

macro_rules! schema_or_skip {
    ($name:expr) => {
        match TestSchema::new($name) {
            Some(schema) => schema,
            None => return,
        }
    };
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_should_create_the_schema_once_and_record_its_version() {
    let db = schema_or_skip!("migrate_should_create_the_schema_once_and_record_its_version");
    let config = db.config("q");
    assert_eq!(PgQueue::migrate(&config).await.unwrap(), SCHEMA_VERSION);
    assert_eq!(PgQueue::migrate(&config).await.unwrap(), SCHEMA_VERSION);
    let client = db.client().await.unwrap();
    let sql = format!("SELECT count(*) FROM {}.migrations", db.schema());
    let n: i64 = client.query_one(&sql, &[]).await.unwrap().get(0);
    assert_eq!(n, i64::from(SCHEMA_VERSION));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_should_refuse_a_schema_from_a_newer_version() {
    let db = schema_or_skip!("migrate_should_refuse_a_schema_from_a_newer_version");
    let config = db.config("q");
    PgQueue::migrate(&config).await.unwrap();
    let client = db.client().await.unwrap();
    let sql = format!(
        "INSERT INTO {}.migrations (version, description) VALUES (999, 'future')",
        db.schema()
    );
    client.execute(&sql, &[]).await.unwrap();
    let error = PgQueue::migrate(&config).await.unwrap_err();
    assert!(
        matches!(error, PgError::SchemaTooNew { found: 999, .. }),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claim_statement_should_order_by_priority_then_ready_time_then_add_order() {
    let db = schema_or_skip!("claim_statement_should_order_by_priority");
    let queue = db.queue(db.config("q")).await.unwrap();
    let items: Vec<(String, Option<&[u8]>)> = (0..5).map(|i| (format!("low-{i}"), None)).collect();
    let refs: Vec<(&str, Option<&[u8]>)> = items.iter().map(|(k, p)| (k.as_str(), *p)).collect();
    // One statement: all five share one now(); the add order breaks the tie.
    queue.add_many(&refs, AddOptions::new()).await.unwrap();
    queue
        .add_with("high", AddOptions::new().with_priority(5))
        .await
        .unwrap();
    let claims = queue.try_claim_batch(10).await.unwrap();
    let keys: Vec<&str> = claims.iter().map(|c| c.key.as_str()).collect();
    assert_eq!(keys, ["high", "low-0", "low-1", "low-2", "low-3", "low-4"]);
    assert!(claims.iter().all(|c| c.attempt == 1 && !c.reclaimed));
    assert_eq!(claims[0].priority, 5);
    queue.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completion_statement_should_settle_a_batch_of_mixed_outcomes() {
    let db = schema_or_skip!("completion_statement_should_settle_a_batch_of_mixed_outcomes");
    let config = db
        .config("q")
        .with_max_retries(0)
        .with_backoff(Duration::from_secs(10), Duration::from_secs(10));
    let queue = db.queue(config).await.unwrap();
    for key in ["done", "dirty", "fail", "dead", "back"] {
        queue.add(key).await.unwrap();
    }
    let claims = queue.try_claim_batch(5).await.unwrap();
    let by = |k: &str| claims.iter().find(|c| c.key == k).unwrap();
    queue.add("dirty").await.unwrap();
    // Sent at once, so the completer applies them in one statement.
    let (done, dirty, fail, dead, back) = tokio::join!(
        queue.done(by("done")),
        queue.done(by("dirty")),
        queue.fail(by("fail"), "boom"),
        queue.dead_letter(by("dead"), "poison", "bad input"),
        queue.release(by("back")),
    );
    assert_eq!(done.unwrap(), Settled::Finished);
    assert!(
        matches!(dirty.unwrap(), Settled::Requeued { delay, exhausted: false } if delay.is_zero())
    );
    // max_retries 0: the first failure dead-letters.
    assert_eq!(fail.unwrap(), Settled::DeadLettered);
    assert_eq!(dead.unwrap(), Settled::DeadLettered);
    assert_eq!(back.unwrap(), Settled::Released);
    let failed = queue.failed(10).await.unwrap();
    let reasons: Vec<(&str, &str)> = failed
        .iter()
        .map(|f| (f.key.as_str(), f.reason.as_str()))
        .collect();
    assert!(
        reasons.contains(&("fail", "retries exhausted")),
        "{reasons:?}"
    );
    assert!(reasons.contains(&("dead", "poison")), "{reasons:?}");
    let stats = queue.stats().await.unwrap();
    assert_eq!((stats.ready, stats.processing, stats.failed), (2, 0, 2));
    let again = queue.try_claim_batch(5).await.unwrap();
    let back = again.iter().find(|c| c.key == "back").unwrap();
    assert_eq!(back.attempt, 1, "a released attempt is not counted");
    queue.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forget_should_remove_a_key_that_only_kept_its_history() {
    let db = schema_or_skip!("forget_should_remove_a_key_that_only_kept_its_history");
    let queue = db.queue(db.config("q")).await.unwrap();
    queue.add_rate_limited("k").await.unwrap();
    queue.advance_time(Duration::from_secs(1)).await.unwrap();
    let claim = queue.try_claim().await.unwrap().unwrap();
    assert_eq!(queue.done(&claim).await.unwrap(), Settled::Kept);
    assert_eq!(queue.num_requeues("k").await.unwrap(), 1);
    queue.forget("k").await.unwrap();
    assert_eq!(queue.num_requeues("k").await.unwrap(), 0);
    let client = db.client().await.unwrap();
    let sql = format!("SELECT count(*) FROM {}.items", db.schema());
    let rows: i64 = client.query_one(&sql, &[]).await.unwrap().get(0);
    assert_eq!(rows, 0);
    queue.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_should_fail_with_an_error_value_when_nothing_listens() {
    // Needs no database: port 1 on loopback refuses.
    let config = PgQueueConfig::new("postgres://postgres@127.0.0.1:1/postgres");
    let error = PgQueue::connect(config).await.unwrap_err();
    assert!(matches!(error, PgError::Connect(_)), "{error}");
    assert!(error.is_connection());
    let bad = PgQueueConfig::default().with_schema("Robert'); DROP TABLE");
    assert!(matches!(
        PgQueue::connect(bad).await.unwrap_err(),
        PgError::Config(ConfigError::Schema(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_should_return_when_called_right_after_connect() {
    let db = schema_or_skip!("shutdown_should_return_when_called_right_after_connect");
    // Before the background tasks first run: they must still see the shutdown.
    for _ in 0..20 {
        let queue = db.queue(db.config("q")).await.unwrap();
        tokio::time::timeout(Duration::from_secs(10), queue.shutdown())
            .await
            .expect("shutdown returned")
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_cut_by_a_server_shutdown_should_count_as_a_lost_connection() {
    let db = schema_or_skip!("a_statement_cut_by_a_server_shutdown");
    let victim = db.client().await.unwrap();
    let pid: i32 = victim
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    let running = tokio::spawn(async move { victim.query("SELECT pg_sleep(30)", &[]).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    // What `pg_ctl stop -m fast` (and a restart) does to every backend: SIGTERM, so the running
    // statement fails with 57P01 (admin_shutdown) before the connection closes.
    let admin = db.client().await.unwrap();
    admin
        .execute("SELECT pg_terminate_backend($1)", &[&pid])
        .await
        .unwrap();
    let error = tokio::time::timeout(Duration::from_secs(10), running)
        .await
        .expect("the statement ends")
        .unwrap()
        .expect_err("the statement was cut");
    let error = PgError::query("sleep")(error);
    assert!(error.is_connection(), "{error:?}");
}

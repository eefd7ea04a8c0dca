//! `traceq queue` as an operator runs it, against a real PostgreSQL (`DATABASE_URL`; each test in
//! a schema of its own): the numbers and keys it shows match the queue, it never claims a key,
//! `retry` and `purge` change what the library then sees, and a database it cannot reach or a
//! bad flag gives a clear message, never the password. Tests that need no database always run.

use std::net::TcpListener;
use std::process::{Command, Output};
use std::time::{Duration, Instant};
use traceq_engine::postgres::testing::TestSchema;
use traceq_engine::postgres::{KeyState, ListFilter, PgClaim, PgQueue, SCHEMA_VERSION};
use traceq_engine::AddOptions;

macro_rules! db_or_skip {
    ($name:expr) => {
        match TestSchema::new($name) {
            Some(db) => db,
            None => return,
        }
    };
}

/// `traceq queue <args>`, with no `DATABASE_URL` of the test's environment leaking in.
fn traceq_queue(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_traceq"))
        .arg("queue")
        .args(args)
        .env_remove("DATABASE_URL")
        .output()
        .expect("running traceq queue")
}

/// `traceq queue <command> <args>` on the test's queue `q`, off the runtime's threads.
async fn on_queue(db: &TestSchema, command: &str, args: &[&str]) -> Output {
    let mut all: Vec<String> = vec![command.to_owned()];
    all.extend(args.iter().map(|s| (*s).to_owned()));
    all.extend(
        [
            "--postgres",
            db.url(),
            "--schema",
            db.schema(),
            "--queue",
            "q",
        ]
        .map(str::to_owned),
    );
    tokio::task::spawn_blocking(move || {
        let refs: Vec<&str> = all.iter().map(String::as_str).collect();
        traceq_queue(&refs)
    })
    .await
    .expect("the command's thread")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[track_caller]
fn assert_ok(out: &Output) {
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(out));
}

/// The keys of a `list` table, in order (the first column, header skipped).
fn listed_keys(out: &Output) -> Vec<String> {
    stdout(out)
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect()
}

/// The line of a `list` table for `key`.
fn row_of(out: &Output, key: &str) -> String {
    stdout(out)
        .lines()
        .find(|l| l.split_whitespace().next() == Some(key))
        .unwrap_or_else(|| panic!("no row for {key} in:\n{}", stdout(out)))
        .to_owned()
}

/// A long error with line breaks, as a handler's error chain looks.
const LONG_ERROR: &str = "connection reset\n  caused by: peer closed\n  caused by: the upstream mail server refused the message after a very long wait that nobody should ever see in full";

/// Queue `q` with three ready keys (`r3` at priority 2, then `r1`, `r2`), two waiting an hour
/// (`w1`, `w2`), one claimed (`c1`, the claim returned so its lease stays held) and two dead
/// letters (`d1` whose retries ran out with [`LONG_ERROR`], `d2` dead-lettered as "bad payload").
async fn populated(db: &TestSchema) -> (PgQueue, PgClaim) {
    let q = db
        .queue(db.config("q").with_max_retries(0))
        .await
        .expect("connect");
    for key in ["d1", "d2", "c1"] {
        q.add(key).await.unwrap();
    }
    let claims = q.try_claim_batch(3).await.unwrap();
    let mut claims: std::collections::HashMap<_, _> =
        claims.into_iter().map(|c| (c.key.clone(), c)).collect();
    q.fail(&claims["d1"], LONG_ERROR).await.unwrap();
    q.dead_letter(&claims["d2"], "bad payload", "not json")
        .await
        .unwrap();
    let held = claims.remove("c1").expect("c1 claimed");
    q.add("r1").await.unwrap();
    q.add("r2").await.unwrap();
    q.add_with("r3", AddOptions::new().with_priority(2))
        .await
        .unwrap();
    for key in ["w1", "w2"] {
        q.add_after(key, Duration::from_secs(3600)).await.unwrap();
    }
    (q, held)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_stats_should_count_each_state_and_claim_nothing() {
    let db = db_or_skip!("queue_stats_should_count_each_state_and_claim_nothing");
    let (q, _held) = populated(&db).await;

    let out = on_queue(&db, "stats", &[]).await;
    assert_ok(&out);
    let text = stdout(&out);
    let value_of = |label: &str| -> String {
        let line = text
            .lines()
            .find(|l| l.trim_start().starts_with(label))
            .unwrap_or_else(|| panic!("no {label} in:\n{text}"));
        line.split_whitespace().last().unwrap().to_owned()
    };
    assert_eq!(value_of("ready"), "3", "{text}");
    assert_eq!(value_of("waiting"), "2", "{text}");
    assert_eq!(value_of("processing"), "1", "{text}");
    assert_eq!(value_of("failed"), "2", "{text}");
    assert_ne!(value_of("oldest ready"), "-", "{text}");
    // Aligned: every number ends in the same column.
    let ends: std::collections::HashSet<usize> = text.lines().skip(1).map(str::len).collect();
    assert_eq!(ends.len(), 1, "{text}");

    let out = on_queue(&db, "stats", &["--json"]).await;
    assert_ok(&out);
    let json: serde_json::Value = serde_json::from_str(&stdout(&out)).expect("stats --json");
    assert_eq!(json["ready"], 3);
    assert_eq!(json["waiting"], 2);
    assert_eq!(json["processing"], 1);
    assert_eq!(json["failed"], 2);
    assert_eq!(json["queue"], "q");
    assert!(json["oldest_ready_seconds"]
        .as_f64()
        .is_some_and(|s| s >= 0.0));

    // The commands left every ready key unclaimed: never attempted, still ready.
    let stats = q.stats().await.unwrap();
    assert_eq!(
        (stats.ready, stats.waiting, stats.processing, stats.failed),
        (3, 2, 1, 2)
    );
    let ready = q.list(ListFilter::Ready, 10).await.unwrap();
    assert_eq!(ready.len(), 3);
    assert!(ready.iter().all(|k| k.attempt == 0), "{ready:?}");
    q.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_list_should_show_each_state_in_its_order() {
    let db = db_or_skip!("queue_list_should_show_each_state_in_its_order");
    let (q, held) = populated(&db).await;

    // Default: the dead letters, newest first, with reason, error on one line, attempts.
    let out = on_queue(&db, "list", &[]).await;
    assert_ok(&out);
    assert_eq!(listed_keys(&out), ["d2", "d1"], "{}", stdout(&out));
    let header = stdout(&out).lines().next().unwrap().to_owned();
    for column in ["KEY", "STATE", "ATTEMPT", "FAILURES", "WHEN", "DETAIL"] {
        assert!(header.contains(column), "{header}");
    }
    let d1 = row_of(&out, "d1");
    assert!(d1.contains("failed"), "{d1}");
    assert!(d1.contains(" ago"), "{d1}");
    assert!(
        d1.contains("retries exhausted: connection reset caused by: peer closed"),
        "{d1}"
    );
    assert!(d1.ends_with('…'), "a long error is cut: {d1}");
    assert!(!d1.contains("in full"), "{d1}");
    let d2 = row_of(&out, "d2");
    assert!(d2.contains("bad payload: not json"), "{d2}");
    assert_eq!(d1.split_whitespace().nth(3), Some("1"), "one attempt: {d1}");

    let out = on_queue(&db, "list", &["--state", "ready"]).await;
    assert_ok(&out);
    assert_eq!(listed_keys(&out), ["r3", "r1", "r2"], "claim order");
    assert!(row_of(&out, "r3").contains(" 2 "), "priority shown");
    assert!(row_of(&out, "r1").contains("ready "), "{}", stdout(&out));

    let out = on_queue(&db, "list", &["--state", "waiting"]).await;
    assert_ok(&out);
    assert_eq!(listed_keys(&out), ["w1", "w2"]);
    assert!(row_of(&out, "w1").contains("in 59m"), "{}", stdout(&out));

    let out = on_queue(&db, "list", &["--state", "processing"]).await;
    assert_ok(&out);
    assert_eq!(listed_keys(&out), ["c1"]);
    let c1 = row_of(&out, "c1");
    assert!(c1.contains("lease ") && c1.contains("owner "), "{c1}");

    let out = on_queue(&db, "list", &["--state", "all"]).await;
    assert_ok(&out);
    assert_eq!(
        listed_keys(&out),
        ["r3", "r1", "r2", "w1", "w2", "c1", "d2", "d1"]
    );

    let out = on_queue(&db, "list", &["--state", "all", "--limit", "2"]).await;
    assert_ok(&out);
    assert_eq!(listed_keys(&out), ["r3", "r1"]);
    assert!(stderr(&out).contains("--limit"), "{}", stderr(&out));

    let out = on_queue(&db, "list", &["--json"]).await;
    assert_ok(&out);
    let json: serde_json::Value = serde_json::from_str(&stdout(&out)).expect("list --json");
    let keys = json.as_array().expect("an array");
    assert_eq!(keys.len(), 2);
    assert_eq!(keys[1]["key"], "d1");
    assert_eq!(keys[1]["state"], "failed");
    assert_eq!(keys[1]["last_error"], LONG_ERROR, "whole in json");
    assert_eq!(keys[1]["fail_reason"], "retries exhausted");

    let out = on_queue(&db, "list", &["--state", "idle"]).await;
    assert_ok(&out);
    assert!(stdout(&out).contains("no idle keys"), "{}", stdout(&out));

    let out = on_queue(&db, "list", &["--state", "stuck"]).await;
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    drop(held);
    q.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_retry_should_move_dead_letters_to_ready() {
    let db = db_or_skip!("queue_retry_should_move_dead_letters_to_ready");
    let (q, _held) = populated(&db).await;

    let out = on_queue(&db, "retry", &["d1", "r1", "nope"]).await;
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("d1: requeued"), "{text}");
    assert!(text.contains("r1: not in the dead letters"), "{text}");
    assert!(text.contains("nope: not in the dead letters"), "{text}");
    assert!(
        stderr(&out).contains("2 of 3 keys were not in the dead letters"),
        "{}",
        stderr(&out)
    );
    // The library sees it ready with a fresh history; the others unchanged.
    let ready = q.list(ListFilter::Ready, 10).await.unwrap();
    let d1 = ready.iter().find(|k| k.key == "d1").expect("d1 ready");
    assert_eq!((d1.state, d1.attempt, d1.failures), (KeyState::Ready, 0, 0));
    let stats = q.stats().await.unwrap();
    assert_eq!((stats.ready, stats.failed), (4, 1));

    let out = on_queue(&db, "retry", &["d2", "--all-failed"]).await;
    assert_eq!(out.status.code(), Some(2), "a key list or --all-failed");
    let out = on_queue(&db, "retry", &[]).await;
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));

    let out = on_queue(&db, "retry", &["--all-failed"]).await;
    assert_ok(&out);
    assert!(stdout(&out).contains("d2: requeued"), "{}", stdout(&out));
    assert!(stdout(&out).contains("requeued 1 dead letter\n"));
    let stats = q.stats().await.unwrap();
    assert_eq!((stats.ready, stats.failed), (5, 0));
    // A requeued key is claimable again.
    let claims = q.try_claim_batch(10).await.unwrap();
    assert!(claims.iter().any(|c| c.key == "d2"), "{claims:?}");
    drop(claims);
    q.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_purge_should_delete_old_dead_letters_and_say_how_many() {
    let db = db_or_skip!("queue_purge_should_delete_old_dead_letters_and_say_how_many");
    let (q, _held) = populated(&db).await;

    let out = on_queue(&db, "purge", &["--older-than", "1h"]).await;
    assert_ok(&out);
    assert!(stdout(&out).contains("purged 0 dead letters older than 1h00m"));
    assert_eq!(q.stats().await.unwrap().failed, 2);

    q.advance_time(Duration::from_secs(2 * 3600)).await.unwrap();
    let out = on_queue(&db, "purge", &["--older-than", "1h"]).await;
    assert_ok(&out);
    assert!(
        stdout(&out).contains("purged 2 dead letters"),
        "{}",
        stdout(&out)
    );
    // The hour's delays ran out too; the other keys are all still there.
    let stats = q.stats().await.unwrap();
    assert_eq!(
        (stats.failed, stats.ready, stats.processing),
        (0, 5, 1),
        "only dead letters go"
    );

    let out = on_queue(&db, "purge", &["--older-than", "7 days"]).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("is not an age like `7d`"),
        "{}",
        stderr(&out)
    );
    q.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_should_show_zeros_for_an_unknown_queue_and_read_database_url() {
    let db = db_or_skip!("queue_should_show_zeros_for_an_unknown_queue");
    // Make the schema exist with another queue in it.
    let (q, _held) = populated(&db).await;
    let (url, schema) = (db.url().to_owned(), db.schema().to_owned());
    let out = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_traceq"))
            .args(["queue", "stats", "--json", "--schema", &schema])
            .args(["--queue", "never-used"])
            .env("DATABASE_URL", url)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert_ok(&out);
    let json: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    for state in ["ready", "waiting", "processing", "failed"] {
        assert_eq!(json[state], 0, "{json}");
    }
    assert!(json["oldest_ready_seconds"].is_null());
    q.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_should_refuse_a_schema_that_does_not_exist_and_not_create_it() {
    let db = db_or_skip!("queue_should_refuse_a_schema_that_does_not_exist");
    let absent = format!("{}_absent", db.schema());
    let (url, schema) = (db.url().to_owned(), absent.clone());
    let out = tokio::task::spawn_blocking(move || {
        traceq_queue(&["stats", "--postgres", &url, "--schema", &schema])
    })
    .await
    .unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains(&format!("no schema {absent} at ")), "{err}");
    let client = db.client().await.unwrap();
    let found: bool = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)",
            &[&absent],
        )
        .await
        .unwrap()
        .get(0);
    assert!(!found, "traceq queue created schema {absent}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_should_refuse_an_older_schema_and_not_migrate_it() {
    let db = db_or_skip!("queue_should_refuse_an_older_schema_and_not_migrate_it");
    let q = db.queue(db.config("q")).await.unwrap();
    q.shutdown().await.unwrap();
    // As an older library left it: its last migration not applied.
    let client = db.client().await.unwrap();
    let schema = db.schema().to_owned();
    client
        .execute(
            &format!("DELETE FROM {schema}.migrations WHERE version = $1"),
            &[&SCHEMA_VERSION],
        )
        .await
        .unwrap();
    let url = db.url().to_owned();
    let out = tokio::task::spawn_blocking(move || {
        traceq_queue(&[
            "stats",
            "--postgres",
            &url,
            "--schema",
            &schema,
            "--queue",
            "q",
        ])
    })
    .await
    .unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let older = SCHEMA_VERSION - 1;
    assert!(err.contains(&format!("is at version {older}")), "{err}");
    let version: i32 = client
        .query_one(
            &format!("SELECT max(version) FROM {}.migrations", db.schema()),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(version, older, "traceq queue migrated the schema");
}

#[test]
fn queue_should_say_it_cannot_connect_without_printing_the_password() {
    let started = Instant::now();
    let out = traceq_queue(&["stats", "--postgres", "postgres://u:secret@127.0.0.1:1/db"]);
    let took = started.elapsed();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("cannot connect to postgres at 127.0.0.1:1: "),
        "{err}"
    );
    assert!(err.contains("refused"), "the cause: {err}");
    assert!(
        !err.contains("secret") && !stdout(&out).contains("secret"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    assert!(took < Duration::from_secs(5), "{took:?}");

    let out = traceq_queue(&[
        "stats",
        "--postgres",
        "postgres://u:secret@/x?port=notaport",
    ]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("invalid connection url"), "{err}");
    assert!(!err.contains("secret"), "{err}");
}

#[test]
fn queue_should_give_up_on_a_silent_server_within_the_connect_timeout() {
    // Accepts connections (the kernel's backlog) but never answers the startup message.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!(
        "postgres://u:secret@127.0.0.1:{}/db",
        silent.local_addr().unwrap().port()
    );
    let started = Instant::now();
    let out = traceq_queue(&["list", "--postgres", &url, "--connect-timeout", "1s"]);
    let took = started.elapsed();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("no answer within 1s"), "{err}");
    assert!(!err.contains("secret"), "{err}");
    assert!(took < Duration::from_secs(4), "{took:?}");
}

#[test]
fn queue_should_refuse_bad_flags_with_a_clear_message() {
    // Schema names are checked by the library before any connection.
    let out = traceq_queue(&[
        "stats",
        "--postgres",
        "postgres://u@127.0.0.1:1/db",
        "--schema",
        "Bad-Name",
    ]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("invalid schema name \"Bad-Name\""), "{err}");
    assert!(
        !err.contains("cannot connect"),
        "refused before connecting: {err}"
    );

    // No URL at all (flag nor environment): a usage error naming the flag.
    let out = traceq_queue(&["stats"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("--postgres"), "{}", stderr(&out));

    let out = traceq_queue(&["stats", "--postgres", "x", "--connect-timeout", "0s"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("must be longer than 0"));
}

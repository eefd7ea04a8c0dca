//! `traceq queue`: an operator's look inside a durable queue on PostgreSQL (`stats`, `list`) and
//! its repairs (`retry` dead letters, `purge` old ones).
//!
//! Why it is safe to point at a live queue: it opens the queue with `PgQueue::connect`, whose
//! claimer claims only for a worker waiting in `claim`, and this command never asks; it holds no
//! lease, so it renews none, and nothing it reads changes a key. Its handle keeps dead letters for
//! the longest retention the library allows, so the background purge of the handle does not
//! delete what an operator came to look at (the workers' own retention still applies).
//!
//! Why a connect timeout: the library's first connect is one attempt, but an address that drops
//! packets leaves it waiting on the operating system's TCP timeout (minutes); an operator gets
//! an answer within `--connect-timeout` instead. The connection string is never printed (it may
//! hold a password): errors name the hosts and ports only. A schema that does not exist is
//! refused rather than created (as opening a queue would), so a mistyped `--schema` changes
//! nothing; so is a schema an older library made (opening the queue would migrate it): the
//! workers of the new version migrate it when they start.

use anyhow::{bail, Context as _};
use clap::{Args, Subcommand, ValueEnum};
use serde_json::json;
use std::fmt::Write as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use traceq::engine::postgres::{
    tokio_postgres, KeyState, ListFilter, ListedKey, PgError, PgQueue, PgQueueConfig, PgStats,
    DEFAULT_QUEUE, DEFAULT_SCHEMA, SCHEMA_VERSION,
};

/// The longest a last error is shown in a table, in characters (`--json` shows it whole).
const ERROR_WIDTH: usize = 72;
/// How long the handle may take to stop after the command's work is done.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// Options of `traceq queue`.
#[derive(Debug, Args)]
pub(crate) struct QueueArgs {
    #[command(subcommand)]
    command: QueueCommand,
}

#[derive(Debug, Subcommand)]
enum QueueCommand {
    /// Keys in each state (ready, waiting, processing, failed) and the age of the oldest ready key.
    Stats {
        #[command(flatten)]
        target: Target,
        /// Print one JSON object instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Keys with their state, attempts, failures, timing and last error (the dead letters by
    /// default).
    List {
        #[command(flatten)]
        target: Target,
        /// Which keys: ready (claim order), waiting (soonest first), processing (soonest lease
        /// expiry first), failed (newest first), idle, or all.
        #[arg(long, value_enum, default_value_t = StateArg::Failed)]
        state: StateArg,
        /// Show at most this many keys.
        #[arg(long, value_name = "N", default_value_t = 50)]
        limit: usize,
        /// Print a JSON array instead of a table (last errors in full).
        #[arg(long)]
        json: bool,
    },
    /// Take dead-lettered keys out of the dead letters and queue them now, with a fresh history.
    Retry {
        #[command(flatten)]
        target: Target,
        /// The keys to requeue.
        #[arg(value_name = "KEY", required_unless_present = "all_failed")]
        keys: Vec<String>,
        /// Requeue every dead letter of the queue.
        #[arg(long, conflicts_with = "keys")]
        all_failed: bool,
    },
    /// Delete the dead letters older than an age.
    Purge {
        #[command(flatten)]
        target: Target,
        /// Age: 7d, 12h, 30m, 1d12h; 0s deletes every dead letter.
        #[arg(long, value_name = "AGE", value_parser = parse_age)]
        older_than: Duration,
    },
}

/// Which queue, on which database.
#[derive(Debug, Args)]
struct Target {
    /// Connection string: postgres://user:password@host:port/db, or key=value pairs. TLS:
    /// ?sslmode=verify-full&sslrootcert=CA.pem (or verify-ca, require, prefer, disable).
    #[arg(long, value_name = "URL", env = "DATABASE_URL", hide_env_values = true)]
    postgres: String,
    /// The queue's name.
    #[arg(long, value_name = "NAME", default_value = DEFAULT_QUEUE)]
    queue: String,
    /// The schema holding the queue's tables.
    #[arg(long, value_name = "NAME", default_value = DEFAULT_SCHEMA)]
    schema: String,
    /// Give up connecting after this long: 500ms, 5s, 1m.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_timeout)]
    connect_timeout: Duration,
}

/// `--state`, as a flag value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum StateArg {
    Ready,
    Waiting,
    Processing,
    Failed,
    Idle,
    All,
}

impl StateArg {
    fn filter(self) -> ListFilter {
        match self {
            Self::Ready => ListFilter::Ready,
            Self::Waiting => ListFilter::Waiting,
            Self::Processing => ListFilter::Processing,
            Self::Failed => ListFilter::Failed,
            Self::Idle => ListFilter::Idle,
            Self::All => ListFilter::All,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Ready => "ready",
            Self::Waiting => "waiting",
            Self::Processing => "processing",
            Self::Failed => "failed",
            Self::Idle => "idle",
            Self::All => "",
        }
    }
}

fn parse_timeout(text: &str) -> Result<Duration, String> {
    match traceq::sampler::parse_duration(text) {
        Ok(d) if d.is_zero() => Err("must be longer than 0".to_owned()),
        Ok(d) => Ok(d),
        Err(e) => Err(e.to_string()),
    }
}

/// An age in days as well as Go's units: `7d`, `1d12h`, `12h`, `30m`, `0s`.
fn parse_age(text: &str) -> Result<Duration, String> {
    let bad = || format!("`{text}` is not an age like `7d`, `12h`, `30m` or `0s`");
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err(bad());
    }
    // No Go unit has a `d`, so a `d` can only end a count of days.
    let (days, rest) = match trimmed.split_once('d') {
        Some((days, rest)) => {
            let days: u64 = days.parse().map_err(|_| bad())?;
            (days, rest)
        }
        None => (0, trimmed),
    };
    let rest = if rest.is_empty() {
        Duration::ZERO
    } else {
        traceq::sampler::parse_duration(rest).map_err(|_| bad())?
    };
    days.checked_mul(24 * 60 * 60)
        .map(Duration::from_secs)
        .and_then(|d| d.checked_add(rest))
        .ok_or_else(bad)
}

pub(crate) fn run(args: QueueArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    runtime.block_on(run_command(args.command))
}

async fn run_command(command: QueueCommand) -> anyhow::Result<()> {
    let target = match &command {
        QueueCommand::Stats { target, .. }
        | QueueCommand::List { target, .. }
        | QueueCommand::Retry { target, .. }
        | QueueCommand::Purge { target, .. } => target,
    };
    let queue = open(target).await?;
    let result = match &command {
        QueueCommand::Stats { json, .. } => stats(&queue, target, *json).await,
        QueueCommand::List {
            state, limit, json, ..
        } => list(&queue, *state, *limit, *json).await,
        QueueCommand::Retry {
            keys, all_failed, ..
        } => retry(&queue, keys, *all_failed).await,
        QueueCommand::Purge { older_than, .. } => purge(&queue, *older_than).await,
    };
    // The handle holds no lease: stopping it only ends its connections.
    let _ = tokio::time::timeout(SHUTDOWN_TIMEOUT, queue.shutdown()).await;
    result
}

/// Connects within the timeout, saying where it tried (never the connection string itself).
async fn open(target: &Target) -> anyhow::Result<PgQueue> {
    let config = PgQueueConfig::new(target.postgres.clone())
        .with_schema(target.schema.clone())
        .with_queue(target.queue.clone())
        .with_failed_retention(traceq::engine::MAX_DELAY);
    // The library's own words for a bad flag, before any connection is tried.
    config.validate()?;
    let at = describe_hosts(&config);
    let opened = async {
        // `PgQueue::connect` creates a schema it does not find: an operator's typo must not.
        let version = PgQueue::schema_version(&config)
            .await
            .map_err(|error| connect_error(error, &at))?;
        match version {
            None => return Ok(None),
            Some(0) => bail!(
                "schema {} at {at} holds no traceq queue (check --schema)",
                target.schema
            ),
            // Opening the queue would migrate it: a worker of this version does that.
            Some(v) if v < SCHEMA_VERSION => bail!(
                "schema {} at {at} is at version {v}; this traceq reads version {SCHEMA_VERSION} \
                 and `traceq queue` never changes a schema: a worker of this version migrates \
                 it when it starts",
                target.schema
            ),
            Some(_) => {}
        }
        match PgQueue::connect(config).await {
            Ok(queue) => Ok(Some(queue)),
            Err(error) => Err(connect_error(error, &at).context(format!(
                "cannot open queue {:?} (schema {})",
                target.queue, target.schema
            ))),
        }
    };
    match tokio::time::timeout(target.connect_timeout, opened).await {
        Ok(Ok(Some(queue))) => Ok(queue),
        Ok(Ok(None)) => bail!(
            "no schema {} at {at}: no queue was ever opened there (check --schema)",
            target.schema
        ),
        Ok(Err(error)) => Err(error),
        Err(_) => bail!(
            "cannot connect to postgres at {at}: no answer within {:?} (--connect-timeout)",
            target.connect_timeout
        ),
    }
}

/// A connection refused says where it was refused; other errors keep the library's words.
fn connect_error(error: PgError, at: &str) -> anyhow::Error {
    match error {
        PgError::Connect(cause) => {
            anyhow::Error::new(cause).context(format!("cannot connect to postgres at {at}"))
        }
        other => other.into(),
    }
}

/// `host:port` for each host of a connection string, for messages.
fn describe_hosts(config: &PgQueueConfig) -> String {
    let Ok(config) = config.connection_config() else {
        return "an unparsable address".to_owned();
    };
    let ports = config.get_ports();
    let port = |i: usize| match ports {
        [] => 5432,
        [one] => *one,
        many => many.get(i).copied().unwrap_or(5432),
    };
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(i, host)| match host {
            tokio_postgres::config::Host::Tcp(name) if name.contains(':') => {
                format!("[{name}]:{}", port(i))
            }
            tokio_postgres::config::Host::Tcp(name) => format!("{name}:{}", port(i)),
            tokio_postgres::config::Host::Unix(dir) => {
                format!("{}/.s.PGSQL.{}", dir.display(), port(i))
            }
        })
        .collect();
    if hosts.is_empty() {
        format!("the default host, port {}", port(0))
    } else {
        hosts.join(", ")
    }
}

async fn stats(queue: &PgQueue, target: &Target, json: bool) -> anyhow::Result<()> {
    let stats: PgStats = queue.stats().await.context("reading the queue's stats")?;
    if json {
        let value = json!({
            "schema": target.schema,
            "queue": target.queue,
            "ready": stats.ready,
            "waiting": stats.waiting,
            "processing": stats.processing,
            "failed": stats.failed,
            "oldest_ready_seconds": stats.oldest_ready.map(|d| d.as_secs_f64()),
        });
        println!("{value}");
        return Ok(());
    }
    println!("queue {:?} (schema {})", target.queue, target.schema);
    let rows = [
        ("ready", stats.ready.to_string()),
        ("waiting", stats.waiting.to_string()),
        ("processing", stats.processing.to_string()),
        ("failed", stats.failed.to_string()),
        (
            "oldest ready",
            stats.oldest_ready.map_or_else(|| "-".to_owned(), human),
        ),
    ];
    let width = rows.iter().map(|(_, v)| v.len()).max().unwrap_or(0);
    for (label, value) in rows {
        println!("  {label:<12}  {value:>width$}");
    }
    Ok(())
}

async fn list(queue: &PgQueue, state: StateArg, limit: usize, json: bool) -> anyhow::Result<()> {
    let keys = queue
        .list(state.filter(), limit)
        .await
        .context("listing the queue's keys")?;
    if json {
        let values: Vec<_> = keys.iter().map(key_json).collect();
        println!("{}", serde_json::Value::Array(values));
        return Ok(());
    }
    if keys.is_empty() {
        let what = match state {
            StateArg::All => "no keys".to_owned(),
            other => format!("no {} keys", other.name()),
        };
        println!("{what} in queue {:?}", queue.config().queue);
        return Ok(());
    }
    let mut rows = vec![[
        "KEY".to_owned(),
        "STATE".to_owned(),
        "PRIORITY".to_owned(),
        "ATTEMPT".to_owned(),
        "FAILURES".to_owned(),
        "WHEN".to_owned(),
        "DETAIL".to_owned(),
    ]];
    rows.extend(keys.iter().map(|k| {
        [
            printable(&k.key),
            k.state.to_string(),
            k.priority.to_string(),
            k.attempt.to_string(),
            k.failures.to_string(),
            when(k),
            detail(k),
        ]
    }));
    print!("{}", table(&rows));
    if keys.len() == limit {
        eprintln!("(the first {limit} shown; --limit N for more)");
    }
    Ok(())
}

async fn retry(queue: &PgQueue, keys: &[String], all_failed: bool) -> anyhow::Result<()> {
    if all_failed {
        let requeued = queue
            .requeue_all_failed()
            .await
            .context("requeueing the dead letters")?;
        for key in &requeued {
            println!("{}: requeued", printable(key));
        }
        println!("requeued {}", dead_letters(requeued.len() as u64));
        return Ok(());
    }
    let mut missing = 0;
    for key in keys {
        let requeued = queue
            .requeue_failed(key)
            .await
            .with_context(|| format!("requeueing {}", printable(key)))?;
        if requeued {
            println!("{}: requeued", printable(key));
        } else {
            missing += 1;
            println!("{}: not in the dead letters", printable(key));
        }
    }
    if missing > 0 {
        bail!(
            "{missing} of {} keys were not in the dead letters",
            keys.len()
        );
    }
    Ok(())
}

async fn purge(queue: &PgQueue, older_than: Duration) -> anyhow::Result<()> {
    let purged = queue
        .purge_failed(older_than)
        .await
        .context("purging the dead letters")?;
    println!(
        "purged {} older than {} from queue {:?}",
        dead_letters(purged),
        human(older_than),
        queue.config().queue
    );
    Ok(())
}

fn dead_letters(n: u64) -> String {
    if n == 1 {
        "1 dead letter".to_owned()
    } else {
        format!("{n} dead letters")
    }
}

/// The key's timing in its state's terms.
fn when(k: &ListedKey) -> String {
    match k.state {
        KeyState::Ready => format!("ready {}", human(k.ready_for)),
        KeyState::Waiting => format!("in {}", human(k.ready_in)),
        KeyState::Processing => match k.lease_expires_in {
            Some(d) if !d.is_zero() => format!("lease {}", human(d)),
            _ => "lease expired".to_owned(),
        },
        KeyState::Failed => k
            .failed_for
            .map_or_else(|| "-".to_owned(), |d| format!("{} ago", human(d))),
        _ => "-".to_owned(),
    }
}

/// What else an operator wants to see: the holder, or why it failed.
fn detail(k: &ListedKey) -> String {
    let error = k.last_error.as_deref().map(|e| one_line(e, ERROR_WIDTH));
    match k.state {
        KeyState::Processing => {
            let mut text = format!("owner {}", k.lease_owner.as_deref().unwrap_or("?"));
            if k.dirty {
                text.push_str(", added again: runs once more");
            }
            text
        }
        KeyState::Failed => match (k.fail_reason.as_deref(), error) {
            (Some(reason), Some(error)) => format!("{}: {error}", one_line(reason, ERROR_WIDTH)),
            (Some(reason), None) => one_line(reason, ERROR_WIDTH),
            (None, Some(error)) => error,
            (None, None) => String::new(),
        },
        _ => error.map_or_else(String::new, |e| format!("last error: {e}")),
    }
}

fn key_json(k: &ListedKey) -> serde_json::Value {
    let unix = |t: SystemTime| {
        t.duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64())
    };
    json!({
        "key": k.key,
        "state": k.state.as_str(),
        "priority": k.priority,
        "attempt": k.attempt,
        "failures": k.failures,
        "ready_at_unix": unix(k.ready_at),
        "ready_in_seconds": k.ready_in.as_secs_f64(),
        "ready_for_seconds": k.ready_for.as_secs_f64(),
        "lease_owner": k.lease_owner,
        "lease_expires_in_seconds": k.lease_expires_in.map(|d| d.as_secs_f64()),
        "dirty": k.dirty,
        "last_error": k.last_error,
        "fail_reason": k.fail_reason,
        "failed_seconds_ago": k.failed_for.map(|d| d.as_secs_f64()),
        "added_at_unix": unix(k.added_at),
        "payload_bytes": k.payload_len,
    })
}

/// Rows as columns padded to their widest cell (the last column unpadded).
fn table<const N: usize>(rows: &[[String; N]]) -> String {
    let mut widths = [0usize; N];
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 == N {
                line.push_str(cell);
            } else {
                let _ = write!(line, "{cell:<w$}  ", w = widths[i]);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// A text on one line, runs of whitespace and control characters as one space, cut at `max`
/// characters with an ellipsis.
fn one_line(text: &str, max: usize) -> String {
    let words: Vec<&str> = text
        .split(|c: char| c.is_whitespace() || c.is_control())
        .filter(|w| !w.is_empty())
        .collect();
    let flat = words.join(" ");
    if flat.chars().count() <= max {
        return flat;
    }
    let mut cut: String = flat.chars().take(max.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

/// A key as it can be typed back: control characters escaped, so none reaches the terminal.
fn printable(key: &str) -> String {
    key.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// A duration as an operator reads it: `850ms`, `12.3s`, `4m05s`, `3h20m`, `2d04h`.
fn human(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0 => format!("{}ms", d.as_millis()),
        1..=59 => format!("{:.1}s", d.as_secs_f64()),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        3600..=86_399 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{:02}h", s / 86_400, s % 86_400 / 3600),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_should_take_days_and_go_units() {
        let h = |n: u64| Duration::from_secs(n * 3600);
        assert_eq!(parse_age("7d"), Ok(h(7 * 24)));
        assert_eq!(parse_age("1d12h"), Ok(h(36)));
        assert_eq!(parse_age("12h"), Ok(h(12)));
        assert_eq!(parse_age("30m"), Ok(Duration::from_secs(1800)));
        assert_eq!(parse_age("0s"), Ok(Duration::ZERO));
        for bad in [
            "",
            "d",
            "7",
            "-1d",
            "1.5d",
            "7days",
            "1d7",
            "soon",
            "99999999999999999d",
        ] {
            let error = parse_age(bad).expect_err(bad);
            assert!(error.contains("is not an age like `7d`"), "{bad}: {error}");
        }
    }

    #[test]
    fn errors_should_be_flattened_and_cut_on_a_character_boundary() {
        assert_eq!(
            one_line("boom\n  at line 2\r\n\tend", 80),
            "boom at line 2 end"
        );
        let long = "é".repeat(100);
        let cut = one_line(&long, 10);
        assert_eq!(cut.chars().count(), 10);
        assert!(cut.ends_with('…'));
        assert_eq!(printable("a\u{1b}[31mb"), "a\\u{1b}[31mb");
    }

    #[test]
    fn tables_should_align_columns_by_characters() {
        let rows = [
            ["KEY".to_owned(), "N".to_owned(), "X".to_owned()],
            ["clé-longue".to_owned(), "12".to_owned(), "tail".to_owned()],
        ];
        assert_eq!(table(&rows), "KEY         N   X\nclé-longue  12  tail\n");
    }

    #[test]
    fn hosts_should_be_described_without_credentials() {
        let text = describe_hosts(&PgQueueConfig::new("postgres://u:secret@127.0.0.1:1/db"));
        assert_eq!(text, "127.0.0.1:1");
        assert_eq!(
            describe_hosts(&PgQueueConfig::new("host=a,b port=1,2 password=secret")),
            "a:1, b:2"
        );
        assert_eq!(
            describe_hosts(&PgQueueConfig::new("postgres://[::1]/db")),
            "[::1]:5432"
        );
        // The TLS keys of the URL are the library's, not tokio-postgres': they do not hide the host.
        let tls = "postgres://u@db:6432/x?sslmode=disable&sslrootcert=/etc/ca.pem";
        assert_eq!(describe_hosts(&PgQueueConfig::new(tls)), "db:6432");
    }

    #[test]
    fn durations_should_read_at_a_glance() {
        assert_eq!(human(Duration::from_millis(850)), "850ms");
        assert_eq!(human(Duration::from_millis(12_340)), "12.3s");
        assert_eq!(human(Duration::from_secs(245)), "4m05s");
        assert_eq!(human(Duration::from_secs(3 * 3600 + 20 * 60)), "3h20m");
        assert_eq!(human(Duration::from_secs(2 * 86_400 + 4 * 3600)), "2d04h");
    }
}

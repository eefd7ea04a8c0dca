//! The add paths: `add`, `add_with`, `add_after`, `add_rate_limited`, a bulk add, and an add
//! inside the caller's own transaction. All are one statement, an upsert on the `(queue, key)`
//! primary key, which is the dedup: whatever the key's state, the row says what the add does.
//!
//! | row before        | plain / delayed add                      | rate-limited add                     |
//! |-------------------|------------------------------------------|--------------------------------------|
//! | none, idle        | queued at now + delay                    | queued after the backoff, counted    |
//! | failed            | taken out of the dead letters, queued    | as none, with a fresh history        |
//! | queued or waiting | ready time = the earlier one (no-op)     | no-op: no failure counted            |
//! | processing        | dirty: queued after done, earliest wins  | dirty after the backoff, counted     |
//!
//! Every add takes the higher of the key's priority and its own while the key is live; an add
//! with a payload replaces the stored one (an add without keeps it). A key that becomes ready now
//! sends a notification on the schema's channel, delivered when the add commits.

use super::error::PgError;
use super::queue::PgQueue;
use crate::queue::{AddOptions, MAX_DELAY};
use std::collections::HashMap;
use std::time::Duration;
use tokio_postgres::types::ToSql;
use tokio_postgres::GenericClient;

/// The longest key accepted, in bytes (far below the 2704-byte limit of a B-tree index entry).
pub const MAX_KEY_LEN: usize = 1024;

/// Runs of an add statement the database aborted (deadlock or serialization conflict).
const ADD_TRIES: u32 = 3;

/// How far apart the `seq` values of two statements are: a bulk add numbers its keys within
/// one block, in the caller's order, while it locks them in key order (see [`add_sql`]).
pub(super) const SEQ_SCALE: i64 = 1 << 20;

/// The add statement: `$1` queue, `$2` keys, `$3` payloads, `$4` priority, `$5` delay in µs
/// (the cap of a rate-limited add, 0 for none), `$6` rate limited, `$7`/`$8` backoff base and
/// max in µs, `$9` the notification channel, `$10` the keys' trace identities (shorter than the
/// keys, or empty: `unnest` pads it with nulls, for keys added untraced).
///
/// Why rows are inserted in key order with `seq` from the caller's order: two statements that
/// upsert overlapping keys in different orders would each lock a row the other waits for, and
/// PostgreSQL would abort one (a deadlock). In key order they queue behind each other instead.
/// FIFO within the batch is kept by numbering each key with its position in a block of
/// [`SEQ_SCALE`] numbers drawn once per statement.
pub(super) fn add_sql(s: &str) -> String {
    let f0 = "(CASE WHEN i.state = 'failed' THEN 0 ELSE i.failures END)";
    let r0 = "(CASE WHEN i.state = 'failed' THEN 0 ELSE i.requeues END)";
    let delay = |failures: &str| {
        format!(
            "(CASE WHEN $6 THEN least({}, CASE WHEN $5::int8 > 0 THEN $5::int8 ELSE 9223372036854775807 END) \
             ELSE $5::int8 END)",
            backoff_sql(failures)
        )
    };
    let ready = format!("(now() + {} * interval '1 microsecond')", delay(f0));
    let ready0 = format!("(now() + {} * interval '1 microsecond')", delay("0"));
    format!(
        "WITH up AS (
  INSERT INTO {s}.items AS i (queue, key, state, priority, ready_at, seq, payload, failures, requeues, trace)
  SELECT $1, u.k, 'queued', $4, {ready0}, b.base * {SEQ_SCALE} + least(u.n, {SEQ_SCALE} - 1), u.p,
         CASE WHEN $6 THEN 1 ELSE 0 END, CASE WHEN $6 THEN 1 ELSE 0 END, u.t
  FROM unnest($2::text[], $3::bytea[], $10::bytea[]) WITH ORDINALITY AS u(k, p, t, n),
       (SELECT nextval('{s}.seq') AS base) AS b
  -- rows are locked in key order, so concurrent adds of overlapping keys cannot deadlock
  ORDER BY u.k
  ON CONFLICT (queue, key) DO UPDATE SET
    priority = CASE WHEN i.state IN ('queued', 'processing')
                    THEN greatest(i.priority, EXCLUDED.priority) ELSE EXCLUDED.priority END,
    ready_at = CASE WHEN i.state = 'processing' THEN i.ready_at
                    WHEN i.state = 'queued' AND $6 THEN i.ready_at
                    WHEN i.state = 'queued' THEN least(i.ready_at, {ready})
                    ELSE {ready} END,
    seq = CASE WHEN i.state = 'processing' THEN i.seq
               WHEN i.state = 'queued' AND ($6 OR i.ready_at <= {ready}) THEN i.seq
               ELSE EXCLUDED.seq END,
    dirty_ready_at = CASE WHEN i.state = 'processing'
                          THEN least(coalesce(i.dirty_ready_at, {ready}), {ready}) END,
    state = CASE WHEN i.state = 'processing' THEN 'processing' ELSE 'queued' END,
    failures = {f0} + CASE WHEN $6 AND i.state <> 'queued' THEN 1 ELSE 0 END,
    requeues = {r0} + CASE WHEN $6 AND i.state <> 'queued' THEN 1 ELSE 0 END,
    payload = coalesce(EXCLUDED.payload, i.payload),
    -- a live key keeps its trace (the add joins it); a dead letter's ended with it
    trace = CASE WHEN i.state = 'failed' THEN EXCLUDED.trace ELSE coalesce(i.trace, EXCLUDED.trace) END,
    last_error = CASE WHEN i.state = 'failed' THEN NULL ELSE i.last_error END,
    fail_reason = NULL,
    failed_at = NULL
  RETURNING i.state = 'queued' AND i.ready_at <= now() AS ready
)
SELECT pg_notify($9::text, $1::text) FROM (SELECT 1 FROM up WHERE ready LIMIT 1) AS r"
    )
}

/// The backoff in µs for a key that failed `failures` times: `base * 2^failures`, capped.
pub(super) fn backoff_sql(failures: &str) -> String {
    format!(
        "least($7::float8 * power(2::float8, least({failures}, 1000)::float8), $8::float8)::int8"
    )
}

/// A delay in whole microseconds, clamped to [`MAX_DELAY`].
pub(super) fn micros(delay: Duration) -> i64 {
    delay.min(MAX_DELAY).as_micros() as i64
}

/// Keys checked and deduplicated (the last payload given for a key wins), as the statement's
/// arrays, with the index in `items` of each key's first entry: one upsert cannot touch a row
/// twice.
fn batch<'a>(items: &[(&'a str, Option<&'a [u8]>)]) -> Result<BatchArrays<'a>, PgError> {
    let mut index: HashMap<&str, usize> = HashMap::with_capacity(items.len());
    let mut keys = Vec::with_capacity(items.len());
    let mut payloads: Vec<Option<&[u8]>> = Vec::with_capacity(items.len());
    let mut first = Vec::with_capacity(items.len());
    for (i, &(key, payload)) in items.iter().enumerate() {
        if key.is_empty() || key.len() > MAX_KEY_LEN {
            return Err(PgError::Key { len: key.len() });
        }
        match index.get(key) {
            Some(&at) => {
                if payload.is_some() {
                    payloads[at] = payload;
                }
            }
            None => {
                index.insert(key, keys.len());
                keys.push(key);
                payloads.push(payload);
                first.push(i);
            }
        }
    }
    Ok((keys, payloads, first))
}

type BatchArrays<'a> = (Vec<&'a str>, Vec<Option<&'a [u8]>>, Vec<usize>);

impl PgQueue {
    /// Queues `key` now unless it is queued already; marks it dirty if a worker is processing
    /// it, so it runs again after that worker's `done`. The same as [`add_with`](Self::add_with)
    /// with the default [`AddOptions`].
    ///
    /// # Errors
    /// [`PgError::ShutDown`] after shutdown, [`PgError::Key`] for an empty or overlong key,
    /// [`PgError::Connect`] / [`PgError::Query`] when the database cannot take it: then the add
    /// did not happen (or, if the connection broke after the commit, may have: adds are
    /// idempotent, retry it).
    pub async fn add(&self, key: &str) -> Result<(), PgError> {
        self.add_many(&[(key, None)], AddOptions::new()).await
    }

    /// Queues `key` after `delay` (clamped to [`MAX_DELAY`]); of several ready times for a key
    /// the earliest wins. See [`add`](Self::add) for the errors.
    pub async fn add_after(&self, key: &str, delay: Duration) -> Result<(), PgError> {
        self.add_many(&[(key, None)], AddOptions::new().with_delay(delay))
            .await
    }

    /// Queues `key` after its exponential backoff (`base * 2^failures`, capped; the failure
    /// count is stored with the key) and counts a failure and a requeue. A key already queued or
    /// waiting is left alone: the add coalesces, takes nothing and counts nothing, so re-adds of
    /// a failing key never make its backoff grow faster than once per failed attempt. See
    /// [`add`](Self::add) for the errors.
    pub async fn add_rate_limited(&self, key: &str) -> Result<(), PgError> {
        self.add_many(&[(key, None)], AddOptions::new().with_rate_limited(true))
            .await
    }

    /// Adds `key` as `options` say (priority, delay, rate limiting), as
    /// [`Queue::add_with`](crate::Queue::add_with). See [`add`](Self::add) for the errors.
    pub async fn add_with(&self, key: &str, options: AddOptions) -> Result<(), PgError> {
        self.add_many(&[(key, None)], options).await
    }

    /// Adds `key` with `payload`, which replaces the payload the key has if it is queued (or,
    /// if it is processing, is the payload of its next run). See [`add`](Self::add) for the
    /// errors.
    pub async fn add_payload(
        &self,
        key: &str,
        payload: &[u8],
        options: AddOptions,
    ) -> Result<(), PgError> {
        self.add_many(&[(key, Some(payload))], options).await
    }

    /// Adds many keys (each with an optional payload) in one statement, each as
    /// [`add_with`](Self::add_with) would. A key given twice is added once, with the last payload
    /// given for it. All or nothing: the statement commits or fails whole.
    ///
    /// # Errors
    /// As [`add`](Self::add); a bad key refuses the whole batch before anything is sent.
    pub async fn add_many(
        &self,
        items: &[(&str, Option<&[u8]>)],
        options: AddOptions,
    ) -> Result<(), PgError> {
        self.add_traced(items, &[], options).await
    }

    /// [`add_many`](Self::add_many) with the keys' trace identities (`traces[i]` for
    /// `items[i]`; missing or `None`: untraced), stored with a key that has none.
    pub(crate) async fn add_traced(
        &self,
        items: &[(&str, Option<&[u8]>)],
        traces: &[Option<Vec<u8>>],
        options: AddOptions,
    ) -> Result<(), PgError> {
        self.check_running()?;
        if items.is_empty() {
            return Ok(());
        }
        let (keys, payloads, first) = batch(items)?;
        let traces: Vec<Option<&[u8]>> = if traces.is_empty() {
            Vec::new()
        } else {
            first
                .iter()
                .map(|&i| traces.get(i).and_then(Option::as_deref))
                .collect()
        };
        let mut params = self.add_params(&keys, &payloads, &options);
        params.traces = &traces;
        // An add is idempotent: one the database aborted (a deadlock with a writer that locks
        // in another order, a serialization conflict) is run again, a few times.
        let mut tries = 0;
        loop {
            let conn = self.inner.shared.get().await?;
            let st = conn.statement("add", &self.inner.sql.add).await?;
            match conn.client.query(&st, &params.refs()).await {
                Ok(_) => break,
                Err(e) => {
                    let error = PgError::query("add")(e);
                    tries += 1;
                    if tries >= ADD_TRIES || error.is_connection() || !error.is_transient() {
                        return Err(error);
                    }
                }
            }
        }
        if !options.rate_limited && options.delay.is_zero() {
            // Our own claimer need not wait for the notification's round trip.
            self.inner.wake.notify_one();
        }
        Ok(())
    }

    /// Adds `key` inside the caller's transaction (or on the caller's connection): the add is
    /// seen by claimers, and its notification sent, only if that transaction commits; a
    /// rollback leaves no trace. Otherwise as [`add_with`](Self::add_with) with a payload.
    ///
    /// # Examples
    /// ```no_run
    /// # async fn example(queue: traceq_engine::postgres::PgQueue, mut client: tokio_postgres::Client)
    /// # -> Result<(), Box<dyn std::error::Error>> {
    /// use traceq_engine::AddOptions;
    ///
    /// let tx = client.transaction().await?;
    /// tx.execute("INSERT INTO orders (id) VALUES ($1)", &[&42i64]).await?;
    /// queue.add_in(&tx, "order-42", None, AddOptions::new()).await?;
    /// tx.commit().await?; // the key exists from here on, with the order
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// As [`add`](Self::add); a failed add leaves the caller's transaction aborted, as any
    /// failed statement does.
    pub async fn add_in<C: GenericClient + Sync>(
        &self,
        client: &C,
        key: &str,
        payload: Option<&[u8]>,
        options: AddOptions,
    ) -> Result<(), PgError> {
        self.add_in_traced(client, key, payload, None, options)
            .await
    }

    /// [`add_in`](Self::add_in) with the key's trace identity.
    pub(crate) async fn add_in_traced<C: GenericClient + Sync>(
        &self,
        client: &C,
        key: &str,
        payload: Option<&[u8]>,
        trace: Option<&[u8]>,
        options: AddOptions,
    ) -> Result<(), PgError> {
        self.check_running()?;
        let (keys, payloads, _) = batch(&[(key, payload)])?;
        let traces = [trace];
        let mut params = self.add_params(&keys, &payloads, &options);
        params.traces = &traces;
        client
            .query(self.inner.sql.add.as_str(), &params.refs())
            .await
            .map_err(PgError::query("add"))?;
        Ok(())
    }

    fn add_params<'a>(
        &'a self,
        keys: &'a [&'a str],
        payloads: &'a [Option<&'a [u8]>],
        options: &AddOptions,
    ) -> AddParams<'a> {
        AddParams {
            queue: &self.inner.config.queue,
            keys,
            payloads,
            priority: options.priority,
            delay: micros(options.delay),
            rate_limited: options.rate_limited,
            base: self.inner.backoff_us.0,
            max: self.inner.backoff_us.1,
            channel: &self.inner.config.schema,
            traces: &[],
        }
    }
}

/// The add statement's parameters, owned for the call.
struct AddParams<'a> {
    queue: &'a String,
    keys: &'a [&'a str],
    payloads: &'a [Option<&'a [u8]>],
    priority: i32,
    delay: i64,
    rate_limited: bool,
    base: f64,
    max: f64,
    channel: &'a String,
    traces: &'a [Option<&'a [u8]>],
}

impl AddParams<'_> {
    fn refs(&self) -> [&(dyn ToSql + Sync); 10] {
        [
            self.queue,
            &self.keys,
            &self.payloads,
            &self.priority,
            &self.delay,
            &self.rate_limited,
            &self.base,
            &self.max,
            self.channel,
            &self.traces,
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_should_keep_one_entry_per_key_with_the_last_payload() {
        let (keys, payloads, first) = batch(&[
            ("a", Some(b"1".as_slice())),
            ("b", None),
            ("a", Some(b"2".as_slice())),
            ("a", None),
        ])
        .unwrap();
        assert_eq!(keys, ["a", "b"]);
        assert_eq!(payloads, [Some(b"2".as_slice()), None]);
        assert_eq!(
            first,
            [0, 1],
            "each key's first entry, for its trace identity"
        );
    }

    #[test]
    fn batch_should_refuse_empty_and_overlong_keys() {
        let long = "k".repeat(MAX_KEY_LEN + 1);
        assert!(matches!(batch(&[("", None)]), Err(PgError::Key { len: 0 })));
        assert!(matches!(batch(&[(&long, None)]), Err(PgError::Key { .. })));
    }

    #[test]
    fn micros_should_clamp_absurd_delays() {
        assert_eq!(micros(Duration::MAX), MAX_DELAY.as_micros() as i64);
        assert_eq!(micros(Duration::from_millis(3)), 3000);
    }
}

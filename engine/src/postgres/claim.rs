//! Claims and leases: the claim statement, the claimer task that batches the claims of every
//! waiting worker into it, and the renewer that keeps this process's leases alive.
//!
//! One claim statement takes up to `n` keys: first those whose lease expired (their holder died
//! or lost its connection), then ready keys by priority (higher first), ready time and add
//! order. `FOR UPDATE SKIP LOCKED` lets many claimers run it at once without waiting on each
//! other's rows or taking the same key twice. Each claimed row gets a new attempt number and a
//! new lease token (from the schema's sequence, so never reused even if the key's row is
//! deleted and added again); a completion must present that token (see `complete`).

use super::conn::{error_chain, Conn};
use super::error::PgError;
use super::queue::{Inner, PgQueue};
use parking_lot::Mutex;
use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, Notify};
use tokio_postgres::Row;

/// A key handed to this worker by [`PgQueue::claim`]: finish it with
/// [`PgQueue::done`], [`succeed`](PgQueue::succeed), [`fail`](PgQueue::fail) or
/// [`dead_letter`](PgQueue::dead_letter). Its lease is renewed until then; dropping the claim
/// unfinished stops the renewals, so the key is reclaimed after the lease timeout.
#[non_exhaustive]
pub struct PgClaim {
    /// The key.
    pub key: String,
    /// The priority it was queued at.
    pub priority: i32,
    /// Which attempt this is, from 1: claims of the key since it was last forgotten or finished,
    /// counting claims whose worker died.
    pub attempt: u32,
    /// The payload stored with the key, if any.
    pub payload: Option<Vec<u8>>,
    /// Whether the key was taken from a worker whose lease had expired.
    pub reclaimed: bool,
    /// How long the key was ready before this claim.
    pub waited: Duration,
    pub(super) token: i64,
    /// The item's stored trace identity (`trace::stored`), if it has one yet.
    pub(crate) trace: Option<Vec<u8>>,
    held: Arc<Held>,
}

impl fmt::Debug for PgClaim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgClaim")
            .field("key", &self.key)
            .field("priority", &self.priority)
            .field("attempt", &self.attempt)
            .field("payload_len", &self.payload.as_ref().map(Vec::len))
            .field("reclaimed", &self.reclaimed)
            .field("token", &self.token)
            .finish()
    }
}

impl Drop for PgClaim {
    fn drop(&mut self) {
        self.held.release(self.token);
    }
}

/// The leases this process holds: token → key. The renewer renews exactly these.
#[derive(Debug, Default)]
pub(super) struct Held {
    leases: Mutex<HashMap<i64, String>>,
    emptied: Notify,
}

impl Held {
    pub(super) fn release(&self, token: i64) {
        let mut leases = self.leases.lock();
        if leases.remove(&token).is_some() && leases.is_empty() {
            self.emptied.notify_waiters();
        }
    }

    pub(super) fn snapshot(&self) -> (Vec<i64>, Vec<String>) {
        self.leases
            .lock()
            .iter()
            .map(|(t, k)| (*t, k.clone()))
            .unzip()
    }

    pub(super) fn len(&self) -> usize {
        self.leases.lock().len()
    }

    /// Waits until no lease is held.
    pub(super) async fn wait_empty(&self) {
        loop {
            let notified = self.emptied.notified();
            if self.len() == 0 {
                return;
            }
            notified.await;
        }
    }
}

/// The claim statement: `$1` queue, `$2` most keys, `$3` owner, `$4` lease in µs.
pub(super) fn claim_sql(s: &str) -> String {
    format!(
        "WITH expired AS (
  SELECT key FROM {s}.items
  WHERE queue = $1 AND state = 'processing' AND lease_expires_at <= now()
  ORDER BY lease_expires_at LIMIT $2 FOR UPDATE SKIP LOCKED
), ready AS (
  SELECT key FROM {s}.items
  WHERE queue = $1 AND state = 'queued' AND ready_at <= now()
  ORDER BY priority DESC, ready_at, seq
  LIMIT $2 FOR UPDATE SKIP LOCKED
), picked AS (
  SELECT key FROM expired UNION ALL SELECT key FROM ready LIMIT $2
)
-- The keys as an array, so the planner looks them up by primary key whatever it guesses their
-- number to be (a join on the CTE made it hash the whole queue).
UPDATE {s}.items i SET
  state = 'processing',
  attempt = i.attempt + 1,
  lease_owner = $3,
  lease_token = nextval('{s}.seq'),
  lease_expires_at = now() + $4::int8 * interval '1 microsecond',
  -- a run that starts now covers every add made so far; a later ready time stays pending
  dirty_ready_at = CASE WHEN i.dirty_ready_at > now() THEN i.dirty_ready_at END
WHERE i.queue = $1 AND i.key = ANY(ARRAY(SELECT key FROM picked))
RETURNING i.key, i.priority, i.attempt, i.lease_token, i.payload,
  i.key = ANY(ARRAY(SELECT key FROM expired)),
  greatest(extract(epoch FROM now() - i.ready_at), 0)::float8, i.ready_at, i.seq, i.trace"
    )
}

/// Seconds until the next key may become claimable: the earliest ready time of a waiting key or
/// lease expiry. `$1` queue.
pub(super) fn next_sql(s: &str) -> String {
    format!(
        "SELECT extract(epoch FROM least(
   (SELECT min(ready_at) FROM {s}.items WHERE queue = $1 AND state = 'queued' AND ready_at > now()),
   (SELECT min(lease_expires_at) FROM {s}.items WHERE queue = $1 AND state = 'processing')
 ) - now())::float8"
    )
}

/// Renews leases: `$1` queue, `$2` owner, `$3` tokens, `$4` lease in µs. The rows are locked
/// in key order first, as adds and completions lock them, so a renewal never deadlocks with
/// them.
pub(super) fn renew_sql(s: &str) -> String {
    format!(
        "WITH l AS (
  SELECT key FROM {s}.items
  WHERE queue = $1 AND state = 'processing' AND lease_owner = $2 AND lease_token = ANY($3::int8[])
  ORDER BY key FOR UPDATE
)
UPDATE {s}.items i SET lease_expires_at = now() + $4::int8 * interval '1 microsecond'
FROM l
WHERE i.queue = $1 AND i.key = l.key AND i.state = 'processing' AND i.lease_owner = $2
  AND i.lease_token = ANY($3::int8[])
RETURNING i.lease_token"
    )
}

/// A worker waiting in [`PgQueue::claim`].
pub(super) type ClaimRequest = oneshot::Sender<PgClaim>;

impl PgQueue {
    /// Waits for a key and claims it: `None` once the queue is shut down. Claims of all the
    /// workers waiting at once are taken by one statement; an idle claimer is woken by the
    /// add's notification, or polls.
    pub async fn claim(&self) -> Option<PgClaim> {
        if self.inner.claims_stopped() {
            return None;
        }
        let (tx, rx) = oneshot::channel();
        self.inner.claims.send(tx).await.ok()?;
        rx.await.ok()
    }

    /// Claims up to `n` ready keys now, in one statement, without waiting.
    ///
    /// # Errors
    /// [`PgError::ShutDown`] after shutdown; [`PgError::Connect`] / [`PgError::Query`] when the
    /// database cannot be reached.
    pub async fn try_claim_batch(&self, n: usize) -> Result<Vec<PgClaim>, PgError> {
        self.check_running()?;
        let conn = self.inner.shared.get().await?;
        claim_rows(&self.inner, &conn, n).await
    }

    /// Claims one ready key now, if any. See [`try_claim_batch`](Self::try_claim_batch).
    ///
    /// # Errors
    /// As [`try_claim_batch`](Self::try_claim_batch).
    pub async fn try_claim(&self) -> Result<Option<PgClaim>, PgError> {
        Ok(self.try_claim_batch(1).await?.pop())
    }
}

/// Runs the claim statement for up to `n` keys; claims in hand-out order.
pub(super) async fn claim_rows(
    inner: &Arc<Inner>,
    conn: &Conn,
    n: usize,
) -> Result<Vec<PgClaim>, PgError> {
    let st = conn.statement("claim", &inner.sql.claim).await?;
    let limit = n as i64;
    let lease = super::add::micros(inner.config.lease_timeout);
    let rows = conn
        .client
        .query(&st, &[&inner.config.queue, &limit, &inner.owner, &lease])
        .await
        .map_err(PgError::query("claim"))?;
    inner
        .counters
        .claim_statements
        .fetch_add(1, Ordering::Relaxed);
    let mut rows: Vec<(bool, i32, std::time::SystemTime, i64, Row)> = rows
        .into_iter()
        .map(|r| (r.get(5), r.get(1), r.get(7), r.get(8), r))
        .collect();
    // Reclaims first, then priority (higher first), ready time and add order.
    rows.sort_by(|a, b| {
        b.0.cmp(&a.0)
            .then(b.1.cmp(&a.1))
            .then(a.2.cmp(&b.2))
            .then(a.3.cmp(&b.3))
    });
    let mut claims = Vec::with_capacity(rows.len());
    let mut leases = inner.held.leases.lock();
    for (reclaimed, priority, _, _, row) in rows {
        let key: String = row.get(0);
        let token: i64 = row.get(3);
        leases.insert(token, key.clone());
        if reclaimed {
            inner.counters.reclaimed.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(queue = %inner.config.queue, %key, "reclaimed a key whose lease expired");
        }
        claims.push(PgClaim {
            key,
            priority,
            attempt: row.get::<_, i32>(2).max(0) as u32,
            payload: row.get(4),
            reclaimed,
            waited: Duration::from_secs_f64(row.get::<_, f64>(6).max(0.0)),
            token,
            trace: row.get(9),
            held: inner.held.clone(),
        });
    }
    drop(leases);
    inner
        .counters
        .claimed
        .fetch_add(claims.len() as u64, Ordering::Relaxed);
    Ok(claims)
}

/// The claimer: gathers waiting workers, claims for all of them (plus the prefetch) in one
/// statement, and sleeps until a notification, the next ready time or the poll interval when it
/// found too little. Claims no worker took yet wait in `buffer` (their leases renewed); they are
/// given back when the claimer stops.
///
/// `stop` is subscribed before the task is spawned, so a shutdown that comes before the task
/// first runs is still seen.
pub(super) async fn run_claimer(
    inner: Arc<Inner>,
    mut requests: mpsc::Receiver<ClaimRequest>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut waiting: VecDeque<ClaimRequest> = VecDeque::new();
    let mut buffer: VecDeque<PgClaim> = VecDeque::new();
    let mut conn: Option<Conn> = None;
    claim_loop(
        &inner,
        &mut requests,
        &mut stop,
        &mut waiting,
        &mut buffer,
        &mut conn,
    )
    .await;
    if !buffer.is_empty() {
        let tokens: Vec<i64> = buffer.iter().map(|c| c.token).collect();
        if let Err(error) = inner.release_tokens(&tokens).await {
            tracing::warn!(queue = %inner.config.queue, error = %error_chain(&error),
                "could not give back prefetched keys; they are reclaimed when their leases expire");
        }
    }
}

async fn claim_loop(
    inner: &Arc<Inner>,
    requests: &mut mpsc::Receiver<ClaimRequest>,
    stop: &mut tokio::sync::watch::Receiver<bool>,
    waiting: &mut VecDeque<ClaimRequest>,
    buffer: &mut VecDeque<PgClaim>,
    conn: &mut Option<Conn>,
) {
    let mut backoff = inner.config.reconnect_base;
    loop {
        // Claims that came back after a shutdown began are given back (by the caller), not
        // handed out: a drain must not start new work.
        if inner.claims_stopped() {
            return;
        }
        while let Ok(r) = requests.try_recv() {
            waiting.push_back(r);
        }
        while let Some(claim) = buffer.pop_front() {
            if let Some(back) = hand_out(waiting, claim) {
                buffer.push_front(back);
                break;
            }
        }
        waiting.retain(|w| !w.is_closed());
        if waiting.is_empty() {
            tokio::select! {
                r = requests.recv() => match r {
                    Some(r) => waiting.push_back(r),
                    None => return,
                },
                _ = stop.changed() => return,
            }
            // Let the workers that are asking now join this claim.
            tokio::task::yield_now().await;
            continue;
        }
        if inner.claims_stopped() {
            return;
        }
        let c = match conn.take() {
            Some(c) if !c.is_closed() => c,
            _ => match inner.db.connect_retrying("claimer", None, stop).await {
                Some(c) => c,
                None => return,
            },
        };
        let n = (waiting.len() + inner.config.prefetch).min(inner.config.claim_batch);
        match claim_rows(inner, &c, n).await {
            Ok(claims) => {
                backoff = inner.config.reconnect_base;
                let short = claims.len() < waiting.len();
                buffer.extend(claims);
                if short && buffer.is_empty() {
                    let next = next_ready(inner, &c).await;
                    *conn = Some(c);
                    let pause = next.min(inner.config.poll_interval);
                    tokio::select! {
                        () = inner.wake.notified() => {}
                        () = tokio::time::sleep(pause) => {}
                        _ = stop.changed() => return,
                    }
                } else {
                    *conn = Some(c);
                }
            }
            Err(error) => {
                tracing::warn!(queue = %inner.config.queue, error = %error_chain(&error), "claim failed; retrying");
                if !error.is_connection() {
                    *conn = Some(c);
                }
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    _ = stop.changed() => return,
                }
                backoff = (backoff * 2).min(inner.config.reconnect_max);
            }
        }
    }
}

/// Gives `claim` to the first worker still waiting; hands it back when none is left.
fn hand_out(waiting: &mut VecDeque<ClaimRequest>, mut claim: PgClaim) -> Option<PgClaim> {
    while let Some(worker) = waiting.pop_front() {
        match worker.send(claim) {
            Ok(()) => return None,
            Err(back) => claim = back,
        }
    }
    Some(claim)
}

/// How long until a waiting key or an expiring lease may need a claim; the poll interval when
/// there is none or the question fails.
async fn next_ready(inner: &Inner, conn: &Conn) -> Duration {
    let Ok(st) = conn.statement("next", &inner.sql.next).await else {
        return inner.config.poll_interval;
    };
    match conn.client.query_one(&st, &[&inner.config.queue]).await {
        Ok(row) => match row.get::<_, Option<f64>>(0) {
            // A key ready now but skipped (locked by another claimer): look again shortly.
            Some(secs) if secs <= 0.0 => Duration::from_millis(10),
            Some(secs) => Duration::from_secs_f64(secs.min(3600.0)) + Duration::from_millis(1),
            None => inner.config.poll_interval,
        },
        Err(_) => inner.config.poll_interval,
    }
}

/// The renewer: every third of the lease, renews every lease this process holds in one
/// statement, and purges dead letters past their retention.
pub(super) async fn run_renewer(inner: Arc<Inner>, mut stop: tokio::sync::watch::Receiver<bool>) {
    let period = inner.config.lease_timeout / 3;
    let mut ticks = tokio::time::interval(period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = stop.changed() => return,
        }
        if !inner.renewals_paused.load(Ordering::Relaxed) {
            if let Err(error) = renew(&inner).await {
                tracing::warn!(queue = %inner.config.queue, error = %error_chain(&error), "lease renewal failed");
            }
        }
        if let Err(error) = inner.purge_expired().await {
            tracing::warn!(queue = %inner.config.queue, error = %error_chain(&error), "dead-letter purge failed");
        }
    }
}

/// Renews the held leases; counts and logs those found lost (reclaimed by another worker).
async fn renew(inner: &Inner) -> Result<(), PgError> {
    let (tokens, keys) = inner.held.snapshot();
    if tokens.is_empty() {
        return Ok(());
    }
    let conn = inner.shared.get().await?;
    let st = conn.statement("renew", &inner.sql.renew).await?;
    let lease = super::add::micros(inner.config.lease_timeout);
    let rows = conn
        .client
        .query(&st, &[&inner.config.queue, &inner.owner, &tokens, &lease])
        .await
        .map_err(PgError::query("lease renewal"))?;
    if rows.len() < tokens.len() {
        let renewed: std::collections::HashSet<i64> = rows.iter().map(|r| r.get(0)).collect();
        for (token, key) in tokens.iter().zip(&keys) {
            // Completed meanwhile (no longer held) is not lost.
            if !renewed.contains(token) && inner.held.leases.lock().contains_key(token) {
                inner.counters.leases_lost.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(queue = %inner.config.queue, %key, "lease lost: the key was reclaimed by another worker");
                inner.held.release(*token);
            }
        }
    }
    Ok(())
}

//! Request bodies, read and inflated within bounds.
//!
//! Why by hand and not `axum::body::to_bytes`: a receiver must stop reading as soon as a body
//! cannot fit (a declared `content-length` or gRPC message length over the limit is refused
//! before a byte of payload is buffered), must not wait for ever on a client that sends slowly,
//! and must let go of a body when the receiver is stopped.

use std::io::Read;
use std::sync::OnceLock;
use std::time::Duration;

use axum::body::{Body, HttpBody};
use bytes::{Bytes, BytesMut};
use flate2::read::MultiGzDecoder;
use http_body_util::BodyExt;
use tokio::sync::{Semaphore, SemaphorePermit};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Longest a client may take to send one request body.
pub(super) const BODY_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Bodies at most this large once inflated are decoded on the connection's task; larger ones on
/// the blocking pool, one per decode slot, so one big request does not hold up every connection
/// served by the same worker and memory while decoding stays bounded.
pub(super) const INLINE_DECODE_BYTES: usize = 64 << 10;

/// Most request-body bytes being read at once, over every receiver of the process: a read that
/// would go over is refused as retryable ("busy"), so slow senders of large bodies cannot pin
/// unbounded memory between them.
pub(crate) const MAX_READING_BYTES: usize = 256 << 20;

fn reading_budget() -> &'static Semaphore {
    static BUDGET: OnceLock<Semaphore> = OnceLock::new();
    BUDGET.get_or_init(|| Semaphore::new(MAX_READING_BYTES))
}

/// Large decodes run at most this many at once (one per core, at least two): each holds its
/// inflated body and the spans decoded from it, so together they hold at most this many times
/// about 7 x `max_request_bytes`.
pub(crate) fn decode_slots() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get().max(2))
}

fn decode_slot_semaphore() -> &'static Semaphore {
    static SLOTS: OnceLock<Semaphore> = OnceLock::new();
    SLOTS.get_or_init(|| Semaphore::new(decode_slots()))
}

/// Why a body could not be read whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum BodyError {
    /// The body is, or says it is, larger than the limit.
    TooLarge,
    /// The client took longer than [`BODY_READ_TIMEOUT`].
    TimedOut,
    /// The client failed or went away.
    Failed(String),
    /// The receiver is stopping.
    Stopped,
    /// Too many body bytes are being read at once ([`MAX_READING_BYTES`]); retry later.
    Busy,
}

/// The share of [`MAX_READING_BYTES`] a body holds while it is read and decoded.
#[derive(Debug, Default)]
pub(super) struct Reading(Option<SemaphorePermit<'static>>);

impl Reading {
    fn add(&mut self, bytes: usize) -> Result<(), BodyError> {
        let n = u32::try_from(bytes).map_err(|_| BodyError::TooLarge)?;
        let permit = reading_budget()
            .try_acquire_many(n)
            .map_err(|_| BodyError::Busy)?;
        match &mut self.0 {
            Some(held) => held.merge(permit),
            None => self.0 = Some(permit),
        }
        Ok(())
    }
}

/// A request body read incrementally, never holding more than `limit` bytes.
pub(super) struct BoundedBody<'a> {
    body: Body,
    buf: BytesMut,
    limit: usize,
    deadline: Instant,
    stop: &'a CancellationToken,
    done: bool,
    reading: Reading,
}

impl<'a> BoundedBody<'a> {
    /// Wraps `body`; fails at once when its declared length is over `limit`.
    pub(super) fn new(
        body: Body,
        limit: usize,
        stop: &'a CancellationToken,
    ) -> Result<Self, BodyError> {
        if body.size_hint().lower() > limit as u64 {
            return Err(BodyError::TooLarge);
        }
        Ok(Self {
            body,
            buf: BytesMut::new(),
            limit,
            deadline: Instant::now() + BODY_READ_TIMEOUT,
            stop,
            done: false,
            reading: Reading::default(),
        })
    }

    /// Reads until at least `n` bytes are buffered or the body ends; returns what is buffered.
    pub(super) async fn fill(&mut self, n: usize) -> Result<&[u8], BodyError> {
        while self.buf.len() < n && !self.done {
            self.next_frame().await?;
        }
        Ok(&self.buf)
    }

    /// Reads the rest of the body; with it comes its share of the reading budget, to hold
    /// until it is decoded.
    pub(super) async fn read_to_end(mut self) -> Result<(Bytes, Reading), BodyError> {
        while !self.done {
            self.next_frame().await?;
        }
        Ok((self.buf.freeze(), self.reading))
    }

    async fn next_frame(&mut self) -> Result<(), BodyError> {
        let frame = tokio::select! {
            frame = self.body.frame() => frame,
            () = tokio::time::sleep_until(self.deadline) => {
                return Err(BodyError::TimedOut);
            }
            () = self.stop.cancelled() => return Err(BodyError::Stopped),
        };
        match frame {
            None => self.done = true,
            Some(Err(e)) => {
                return Err(BodyError::Failed(format!("reading the request body: {e}")))
            }
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    if data.len() > self.limit - self.buf.len() {
                        return Err(BodyError::TooLarge);
                    }
                    self.reading.add(data.len())?;
                    self.buf.extend_from_slice(&data);
                }
            }
        }
        Ok(())
    }
}

/// Why a gzip payload could not be inflated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum GunzipError {
    /// It inflates to more than the limit.
    TooLarge,
    /// It is not valid gzip.
    Invalid(String),
}

/// Inflates gzip data (one or more members), refusing to produce more than `limit` bytes.
pub(super) fn gunzip(data: &[u8], limit: usize) -> Result<Vec<u8>, GunzipError> {
    let mut out = Vec::with_capacity(data.len().saturating_mul(4).min(limit));
    // One byte over the limit tells "exactly the limit" from "more".
    let cap = u64::try_from(limit).unwrap_or(u64::MAX).saturating_add(1);
    MultiGzDecoder::new(data)
        .take(cap)
        .read_to_end(&mut out)
        .map_err(|e| GunzipError::Invalid(e.to_string()))?;
    if out.len() > limit {
        return Err(GunzipError::TooLarge);
    }
    Ok(out)
}

/// Inflates (when `gzip`) and decodes `body[offset..]` within bounds: on the connection's task
/// when it is at most [`INLINE_DECODE_BYTES`] once inflated, else on the blocking pool in one of
/// the [`decode_slots`] (waiting for one). Gzip is first inflated inline up to the inline
/// bound, so a small body that inflates hugely costs at most that much work on the task.
/// `None` when the blocking task could not run to completion.
pub(super) async fn decode_bounded<T, F, G>(
    body: Bytes,
    offset: usize,
    gzip: bool,
    max: usize,
    decode: F,
    gunzip_failed: G,
) -> Option<T>
where
    T: Send + 'static,
    F: FnOnce(&[u8]) -> T + Send + 'static,
    G: FnOnce(GunzipError) -> T + Send + 'static,
{
    let payload = body.get(offset..).unwrap_or_default();
    if gzip {
        match gunzip(payload, INLINE_DECODE_BYTES.min(max)) {
            Ok(inflated) => return Some(decode(&inflated)),
            Err(GunzipError::TooLarge) if max > INLINE_DECODE_BYTES => {}
            Err(e) => return Some(gunzip_failed(e)),
        }
    } else if payload.len() <= INLINE_DECODE_BYTES {
        return Some(decode(payload));
    }
    let _slot = decode_slot_semaphore().acquire().await.ok()?;
    tokio::task::spawn_blocking(move || {
        let payload = body.get(offset..).unwrap_or_default();
        if gzip {
            match gunzip(payload, max) {
                Ok(inflated) => {
                    drop(body);
                    decode(&inflated)
                }
                Err(e) => gunzip_failed(e),
            }
        } else {
            decode(payload)
        }
    })
    .await
    .ok()
}

/// Compares two byte strings in time independent of where they differ (bearer tokens).
pub(super) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::super::testing::gzip;
    use super::*;

    #[test]
    fn gunzip_should_accept_exactly_the_limit_and_refuse_one_byte_more() {
        let data = vec![7u8; 1000];
        assert_eq!(gunzip(&gzip(&data), 1000).unwrap(), data);
        assert_eq!(gunzip(&gzip(&data), 999), Err(GunzipError::TooLarge));
    }

    #[test]
    fn gunzip_should_stop_a_decompression_bomb_at_the_limit() {
        let bomb = gzip(&vec![0u8; 64 << 20]);
        assert!(bomb.len() < 128 << 10);
        assert_eq!(gunzip(&bomb, 1 << 20), Err(GunzipError::TooLarge));
    }

    #[test]
    fn gunzip_should_reject_data_that_is_not_gzip() {
        assert!(matches!(
            gunzip(b"plainly not gzip", 100),
            Err(GunzipError::Invalid(_))
        ));
    }

    #[test]
    fn constant_time_eq_should_compare_bytes_and_lengths() {
        assert!(constant_time_eq(b"Bearer x", b"Bearer x"));
        assert!(!constant_time_eq(b"Bearer x", b"Bearer y"));
        assert!(!constant_time_eq(b"Bearer x", b"Bearer xx"));
    }

    #[tokio::test]
    async fn bounded_body_should_refuse_a_declared_length_over_the_limit() {
        let stop = CancellationToken::new();
        let body = Body::from(vec![0u8; 11]);
        assert!(matches!(
            BoundedBody::new(body, 10, &stop),
            Err(BodyError::TooLarge)
        ));
        let body = Body::from(vec![0u8; 10]);
        let read = BoundedBody::new(body, 10, &stop)
            .unwrap()
            .read_to_end()
            .await;
        assert_eq!(read.unwrap().0.len(), 10);
    }

    #[tokio::test]
    async fn bounded_body_should_refuse_a_streamed_body_over_the_limit() {
        let stop = CancellationToken::new();
        let chunks = futures::stream::iter(
            [Bytes::from_static(b"12345"), Bytes::from_static(b"678")]
                .map(Ok::<_, std::convert::Infallible>),
        );
        let body = Body::from_stream(chunks);
        let mut b = BoundedBody::new(body, 7, &stop).unwrap();
        assert_eq!(b.fill(5).await.unwrap(), b"12345");
        assert_eq!(b.read_to_end().await.unwrap_err(), BodyError::TooLarge);
    }

    #[tokio::test]
    async fn bounded_body_should_give_up_when_the_receiver_stops() {
        let stop = CancellationToken::new();
        let body = Body::from_stream(futures::stream::pending::<Result<Bytes, std::io::Error>>());
        let b = BoundedBody::new(body, 7, &stop).unwrap();
        stop.cancel();
        assert_eq!(b.read_to_end().await.unwrap_err(), BodyError::Stopped);
    }
}

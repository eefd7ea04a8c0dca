//! [`HttpServer`]: the accept loop of every listener (both OTLP receivers and the admin
//! endpoint), with a bound on open connections, a deadline for each request head, an idle
//! timeout, bounded HTTP/2, and a shutdown no client can hold up.
//!
//! Why our own loop instead of `axum::serve`: axum accepts without limit, serves each connection
//! with hyper's defaults (no way to set them), and its graceful shutdown waits for every
//! connection as long as it stays open, so one client that sends half a request head keeps the
//! process from exiting. Here each connection is a task that knows what it is doing:
//!
//! - **reading a request head** (HTTP/1): the head must be whole within `read_header_timeout`
//!   of the connection's start, or of the first byte after the previous response, or the
//!   connection is dropped (slowloris);
//! - **idle** (no request in flight): closed gracefully after `idle_timeout`. For HTTP/2, pings
//!   and settings are not activity, as with gRPC's `max_connection_idle`;
//! - **busy** (a request in flight): the handlers bound their own body reads, and HTTP/2
//!   keep-alive pings drop a peer that stopped answering.
//!
//! On shutdown, a connection reading a head is dropped at once (no request was received, so
//! nothing is lost), an idle one is closed, and a busy one finishes within the grace period and
//! is then cut off.
//!
//! The protocol is chosen from the first bytes (the HTTP/2 connection preface or not) so each
//! gets its own rules; hyper's auto-detection would wait for those bytes without a deadline.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, Response};
use axum::Router;
use bytes::{Buf, Bytes};
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper::service::Service;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::{sleep_until, timeout, timeout_at, Instant};
use tokio_util::sync::CancellationToken;

use super::tls::{HandshakeFailure, Handshaker};
use crate::metrics::ConnectionMetrics;

/// Largest request head (request line and headers) of HTTP/1, and header list of HTTP/2.
pub(crate) const MAX_HEAD_BYTES: usize = 64 << 10;
/// Most HTTP/2 streams one connection may have open at once.
pub(crate) const H2_MAX_CONCURRENT_STREAMS: u32 = 128;
/// Interval of the HTTP/2 keep-alive pings sent to a client.
pub(crate) const H2_KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(30);
/// How long a client has to answer a keep-alive ping before its connection is closed.
pub(crate) const H2_KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a connection closed for idleness has to finish closing (HTTP/2 `GOAWAY`).
const IDLE_CLOSE_GRACE: Duration = Duration::from_secs(1);
/// After the grace period, how long handlers have to answer "shutting down" before the
/// connections are dropped.
const CUT_OFF: Duration = Duration::from_millis(250);
/// Pause after an accept error that is not the client's (out of file descriptors, say).
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_secs(1);
/// The HTTP/2 connection preface, which a client sends first.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The bounds of one listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ListenerLimits {
    /// Most connections open at once (TLS handshakes included); more are closed at once.
    pub(crate) max_connections: usize,
    /// Longest a client may take to send a whole request head.
    pub(crate) read_header_timeout: Duration,
    /// Longest a connection may stay open with no request in flight.
    pub(crate) idle_timeout: Duration,
    /// How long shutdown lets requests in flight finish.
    pub(crate) shutdown_grace: Duration,
}

/// A running HTTP server on one listening socket. Dropping it stops accepting; the connections
/// then wind down on their own within the grace period.
#[derive(Debug)]
pub(crate) struct HttpServer {
    local_addr: SocketAddr,
    stop: CancellationToken,
    grace: Duration,
    task: JoinHandle<()>,
}

impl HttpServer {
    /// Serves `router` on `tcp` (over TLS when `tls` is given) on a spawned task. `hard_stop`
    /// is cancelled when the grace period is over, so handlers can answer before being cut off.
    pub(crate) fn start(
        tcp: TcpListener,
        tls: Option<Handshaker>,
        router: Router,
        limits: ListenerLimits,
        metrics: Arc<ConnectionMetrics>,
        hard_stop: CancellationToken,
    ) -> io::Result<Self> {
        let local_addr = tcp.local_addr()?;
        let stop = CancellationToken::new();
        let mut h1 = http1::Builder::new();
        h1.keep_alive(true)
            .header_read_timeout(None) // ours covers idle and half-sent heads apart
            .max_buf_size(MAX_HEAD_BYTES);
        let mut h2 = http2::Builder::new(TokioExecutor::new());
        h2.timer(TokioTimer::new())
            .max_concurrent_streams(H2_MAX_CONCURRENT_STREAMS)
            .max_header_list_size(MAX_HEAD_BYTES as u32)
            .keep_alive_interval(H2_KEEP_ALIVE_INTERVAL)
            .keep_alive_timeout(H2_KEEP_ALIVE_TIMEOUT);
        let shared = Arc::new(Connections {
            tls,
            router,
            limits,
            metrics,
            stop: stop.clone(),
            h1,
            h2,
        });
        let task = tokio::spawn(accept_loop(tcp, shared, hard_stop));
        Ok(Self {
            local_addr,
            stop,
            grace: limits.shutdown_grace,
            task,
        })
    }

    /// The address actually bound.
    pub(crate) fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops accepting (the socket is closed), closes idle and half-sent connections at once,
    /// lets requests in flight finish for at most the grace period, then cuts off what is left.
    pub(crate) async fn shutdown(mut self) {
        self.stop.cancel();
        let limit = self.grace + CUT_OFF + Duration::from_secs(1);
        if timeout(limit, &mut self.task).await.is_err() {
            // Not expected (the loop bounds itself): dropping its `JoinSet` aborts the rest.
            self.task.abort();
        }
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// What every connection of one listener shares.
struct Connections {
    tls: Option<Handshaker>,
    router: Router,
    limits: ListenerLimits,
    metrics: Arc<ConnectionMetrics>,
    /// Cancelled when the server stops.
    stop: CancellationToken,
    h1: http1::Builder,
    h2: http2::Builder<TokioExecutor>,
}

async fn accept_loop(tcp: TcpListener, shared: Arc<Connections>, hard_stop: CancellationToken) {
    let permits = Arc::new(Semaphore::new(shared.limits.max_connections));
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            biased;
            () = shared.stop.cancelled() => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = tcp.accept() => match accepted {
                Ok((stream, _)) => {
                    let Ok(permit) = permits.clone().try_acquire_owned() else {
                        shared.metrics.refused.fetch_add(1, Relaxed);
                        drop(stream);
                        continue;
                    };
                    shared.metrics.accepted.fetch_add(1, Relaxed);
                    // No Nagle: a small response held back for a delayed ACK costs a sender
                    // ~40 ms per request.
                    let _ = stream.set_nodelay(true);
                    connections.spawn(shared.clone().serve(stream, permit));
                }
                Err(e) if is_connection_error(&e) => {}
                Err(_) => {
                    tokio::select! {
                        () = shared.stop.cancelled() => break,
                        () = tokio::time::sleep(ACCEPT_ERROR_PAUSE) => {}
                    }
                }
            },
        }
    }
    drop(tcp);
    async fn drain(set: &mut JoinSet<()>) {
        while set.join_next().await.is_some() {}
    }
    if timeout(shared.limits.shutdown_grace, drain(&mut connections))
        .await
        .is_err()
    {
        hard_stop.cancel();
        let _ = timeout(CUT_OFF, drain(&mut connections)).await;
    }
    // Dropping the set aborts whatever is left.
}

fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// Counts a connection as open while it lives, and holds its slot.
struct OpenGuard<'a> {
    metrics: &'a ConnectionMetrics,
    _permit: OwnedSemaphorePermit,
}

impl Drop for OpenGuard<'_> {
    fn drop(&mut self) {
        self.metrics.open.fetch_sub(1, Relaxed);
    }
}

impl Connections {
    async fn serve(self: Arc<Self>, stream: TcpStream, permit: OwnedSemaphorePermit) {
        self.metrics.open.fetch_add(1, Relaxed);
        let _open = OpenGuard {
            metrics: &self.metrics,
            _permit: permit,
        };
        match &self.tls {
            None => self.serve_io(stream, Instant::now()).await,
            Some(tls) => {
                let handshake = tokio::select! {
                    r = tls.accept(stream) => r,
                    () = self.stop.cancelled() => return,
                };
                match handshake {
                    Ok(stream) => self.serve_io(stream, Instant::now()).await,
                    Err(HandshakeFailure::TimedOut) => {
                        self.metrics.timed_out.fetch_add(1, Relaxed);
                    }
                    // Port scanners, health checks and plain-text clients: not worth a word.
                    Err(HandshakeFailure::Failed) => {}
                }
            }
        }
    }

    async fn serve_io<S>(&self, mut io: S, start: Instant)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let sniffed = tokio::select! {
            r = timeout_at(start + self.limits.read_header_timeout, sniff(&mut io)) => r,
            () = self.stop.cancelled() => return,
        };
        let (http2, prefix) = match sniffed {
            Ok(Ok(Some(sniffed))) => sniffed,
            Ok(_) => return, // closed or failed before a request
            Err(_) => {
                self.metrics.timed_out.fetch_add(1, Relaxed);
                return;
            }
        };
        let activity = Arc::new(Activity::new(http2, start));
        let io = TokioIo::new(TrackedIo {
            inner: io,
            prefix,
            activity: activity.clone(),
        });
        let service = TrackedService {
            inner: TowerToHyperService::new(self.router.clone()),
            activity: activity.clone(),
        };
        if http2 {
            let conn = self.h2.serve_connection(io, service);
            self.drive(conn, &activity, http2::Connection::graceful_shutdown)
                .await;
        } else {
            let conn = self.h1.serve_connection(io, service);
            self.drive(conn, &activity, http1::Connection::graceful_shutdown)
                .await;
        }
    }

    /// Runs one connection to its end, enforcing the head and idle deadlines and the stop.
    async fn drive<C>(&self, conn: C, activity: &Activity, graceful: fn(Pin<&mut C>))
    where
        C: Future,
    {
        tokio::pin!(conn);
        let mut stopping = false;
        // Set once a graceful close for idleness is under way: when it must be over.
        let mut closing: Option<Instant> = None;
        loop {
            let changed = activity.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let (phase, deadline) = activity.deadline(&self.limits);
            if stopping {
                match phase {
                    Phase::Head => return, // a request after the stop: never received
                    // Closing with nothing in flight: a live peer completes it in a round
                    // trip (HTTP/2 answers the `GOAWAY` ping), a dead or silent one is dropped.
                    Phase::Idle => {
                        closing.get_or_insert_with(|| Instant::now() + CUT_OFF);
                    }
                    Phase::Busy => {}
                }
            }
            let deadline = if stopping {
                closing
            } else {
                closing.or(deadline)
            };
            tokio::select! {
                biased;
                _ = conn.as_mut() => return,
                () = self.stop.cancelled(), if !stopping => {
                    stopping = true;
                    if phase == Phase::Head {
                        return;
                    }
                    // Busy: finish the requests in flight, then close; idle: close now.
                    graceful(conn.as_mut());
                    closing = None; // the stop's rules replace an idle close under way
                }
                () = &mut changed => {}
                () = sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => {
                    if closing.is_some_and(|c| c <= Instant::now()) {
                        return; // the graceful close took too long
                    }
                    match activity.deadline(&self.limits) {
                        (Phase::Head, Some(d)) if d <= Instant::now() => {
                            self.metrics.timed_out.fetch_add(1, Relaxed);
                            return;
                        }
                        (Phase::Idle, Some(d)) if d <= Instant::now() => {
                            self.metrics.idle_closed.fetch_add(1, Relaxed);
                            graceful(conn.as_mut());
                            closing = Some(Instant::now() + IDLE_CLOSE_GRACE);
                        }
                        _ => {} // something happened meanwhile
                    }
                }
            }
        }
    }
}

/// Reads the first bytes of a connection: whether they are the HTTP/2 preface, and the bytes
/// read. `None` when the client closed before saying anything.
async fn sniff<S: AsyncRead + Unpin>(io: &mut S) -> io::Result<Option<(bool, Bytes)>> {
    let mut buf = [0u8; H2_PREFACE.len()];
    let mut filled = 0;
    while filled < buf.len() {
        let n = io.read(&mut buf[filled..]).await?;
        if n == 0 {
            return Ok(None);
        }
        filled += n;
        if buf[..filled] != H2_PREFACE[..filled] {
            return Ok(Some((false, Bytes::copy_from_slice(&buf[..filled]))));
        }
    }
    Ok(Some((true, Bytes::copy_from_slice(&buf))))
}

/// What a connection is doing, as far as its deadlines go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// HTTP/1: part of a request head has arrived, no request is in flight.
    Head,
    /// No request in flight, nothing pending.
    Idle,
    /// At least one request in flight.
    Busy,
}

/// One connection's activity, updated by its reads and its requests.
#[derive(Debug)]
struct Activity {
    http2: bool,
    state: Mutex<ActivityState>,
    /// Told of every phase change.
    changed: Notify,
}

#[derive(Debug)]
struct ActivityState {
    in_flight: usize,
    /// HTTP/1: bytes arrived since the last request ended.
    head: bool,
    /// When the current phase began.
    since: Instant,
}

impl Activity {
    fn new(http2: bool, start: Instant) -> Self {
        Self {
            http2,
            state: Mutex::new(ActivityState {
                in_flight: 0,
                // The sniffed bytes are the start of an HTTP/1 head.
                head: !http2,
                since: start,
            }),
            changed: Notify::new(),
        }
    }

    /// The phase now and when it expires (`None` while busy).
    fn deadline(&self, limits: &ListenerLimits) -> (Phase, Option<Instant>) {
        let s = self.state.lock();
        if s.in_flight > 0 {
            (Phase::Busy, None)
        } else if s.head {
            (Phase::Head, Some(s.since + limits.read_header_timeout))
        } else {
            (Phase::Idle, Some(s.since + limits.idle_timeout))
        }
    }

    fn read_some(&self) {
        if self.http2 {
            return; // frames between requests are pings and settings, not a request head
        }
        let mut s = self.state.lock();
        if s.in_flight == 0 && !s.head {
            s.head = true;
            s.since = Instant::now();
            drop(s);
            self.changed.notify_one();
        }
    }

    fn begin(self: &Arc<Self>) -> InFlight {
        let mut s = self.state.lock();
        s.in_flight += 1;
        s.head = false;
        drop(s);
        self.changed.notify_one();
        InFlight(self.clone())
    }
}

/// A request in flight on a connection.
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut s = self.0.state.lock();
        s.in_flight -= 1;
        if s.in_flight == 0 {
            s.head = false;
            s.since = Instant::now();
        }
        drop(s);
        self.0.changed.notify_one();
    }
}

/// The router as a hyper service that marks each request in flight.
#[derive(Clone)]
struct TrackedService {
    inner: TowerToHyperService<Router>,
    activity: Arc<Activity>,
}

impl Service<Request<Incoming>> for TrackedService {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

    fn call(&self, request: Request<Incoming>) -> Self::Future {
        let in_flight = self.activity.begin();
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await;
            drop(in_flight);
            response
        })
    }
}

/// A connection's stream: first the sniffed bytes, then the socket; reads are reported to the
/// connection's [`Activity`].
struct TrackedIo<S> {
    inner: S,
    prefix: Bytes,
    activity: Arc<Activity>,
}

impl<S: AsyncRead + Unpin> AsyncRead for TrackedIo<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.prefix.is_empty() {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix[..n]);
            this.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.activity.read_some();
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for TrackedIo<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests;

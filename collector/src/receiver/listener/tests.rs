use std::time::Duration;

use axum::routing::get;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::*;
use crate::metrics::get as read;
use crate::receiver::testing::bounded;

/// How long a test allows the server for anything it should do "at once".
const PROMPTLY: Duration = Duration::from_millis(500);

fn limits() -> ListenerLimits {
    ListenerLimits {
        max_connections: 64,
        read_header_timeout: Duration::from_secs(5),
        idle_timeout: Duration::from_secs(5),
        shutdown_grace: Duration::from_secs(5),
    }
}

struct Running {
    server: HttpServer,
    metrics: Arc<ConnectionMetrics>,
    hard_stop: CancellationToken,
}

impl Running {
    async fn start(limits: ListenerLimits) -> Self {
        let router = Router::new()
            .route("/", get(|| async { "ok" }))
            .route(
                "/slow",
                get(|| async {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    "slow"
                }),
            )
            .route(
                "/stuck",
                get(|| async {
                    tokio::time::sleep(Duration::from_secs(60)).await;
                    "late"
                }),
            );
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let metrics = Arc::new(ConnectionMetrics::default());
        let hard_stop = CancellationToken::new();
        let server = HttpServer::start(
            tcp,
            None,
            router,
            limits,
            metrics.clone(),
            hard_stop.clone(),
        )
        .unwrap();
        Self {
            server,
            metrics,
            hard_stop,
        }
    }

    async fn connect(&self) -> TcpStream {
        TcpStream::connect(self.server.local_addr()).await.unwrap()
    }
}

/// Sends `GET path` on a keep-alive connection and reads the response's body.
async fn get_on(stream: &mut TcpStream, path: &str) -> String {
    let head = format!("GET {path} HTTP/1.1\r\nhost: test\r\n\r\n");
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream.read(&mut chunk).await.unwrap();
        assert!(
            n > 0,
            "closed mid-response: {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length: ")?
                        .parse()
                        .ok()
                })
                .expect("a content-length");
            if body.len() >= length {
                assert!(head.starts_with("HTTP/1.1 200"), "{head}");
                return body.to_owned();
            }
        }
    }
}

/// Reads until the server closes the connection; how long that took (`None`: not within
/// `limit`).
async fn closed_within(stream: &mut TcpStream, limit: Duration) -> Option<Duration> {
    let started = Instant::now();
    let mut chunk = [0u8; 1024];
    tokio::time::timeout(limit, async {
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return started.elapsed(),
                Ok(_) => {}
            }
        }
    })
    .await
    .ok()
}

#[tokio::test]
async fn connections_over_the_limit_should_be_closed_at_once_while_admitted_ones_are_served() {
    bounded(async {
        let r = Running::start(ListenerLimits {
            max_connections: 2,
            ..limits()
        })
        .await;
        let mut admitted = r.connect().await;
        assert_eq!(get_on(&mut admitted, "/").await, "ok");
        let _silent = r.connect().await;
        for _ in 0..5 {
            let mut over = r.connect().await;
            assert!(closed_within(&mut over, PROMPTLY).await.is_some());
        }
        assert_eq!(read(&r.metrics.refused), 5);
        assert_eq!(read(&r.metrics.accepted), 2);
        assert_eq!(read(&r.metrics.open), 2);
        // The admitted keep-alive connection is still served.
        assert_eq!(get_on(&mut admitted, "/").await, "ok");
        // A slot freed is a slot reusable.
        drop(admitted);
        let deadline = Instant::now() + PROMPTLY;
        while read(&r.metrics.open) > 1 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let mut next = r.connect().await;
        assert_eq!(get_on(&mut next, "/").await, "ok");
    })
    .await;
}

#[tokio::test]
async fn a_half_sent_or_silent_head_should_be_dropped_after_read_header_timeout() {
    bounded(async {
        let timeout = Duration::from_millis(400);
        let r = Running::start(ListenerLimits {
            read_header_timeout: timeout,
            ..limits()
        })
        .await;
        let mut silent = r.connect().await;
        let mut slow = r.connect().await;
        slow.write_all(b"GET / HTTP/1.1\r\nhost: test\r\n")
            .await
            .unwrap();
        // A slowloris: a byte every 50 ms never completes the head.
        let trickle = async {
            for _ in 0..40 {
                tokio::time::sleep(Duration::from_millis(50)).await;
                if slow.write_all(b"x").await.is_err() {
                    break;
                }
            }
        };
        let started = Instant::now();
        trickle.await;
        let slow_took = started.elapsed();
        let silent_took = closed_within(&mut silent, Duration::from_secs(2))
            .await
            .expect("the silent client was dropped");
        assert!(
            slow_took < timeout + PROMPTLY,
            "the slowloris kept writing for {slow_took:?}"
        );
        assert!(silent_took < timeout + PROMPTLY, "{silent_took:?}");
        assert!(started.elapsed() >= timeout - Duration::from_millis(50));
        assert_eq!(read(&r.metrics.timed_out), 2);
    })
    .await;
}

#[tokio::test]
async fn an_idle_connection_should_outlive_read_header_timeout_and_close_after_idle_timeout() {
    bounded(async {
        let r = Running::start(ListenerLimits {
            read_header_timeout: Duration::from_millis(200),
            idle_timeout: Duration::from_millis(800),
            ..limits()
        })
        .await;
        let mut conn = r.connect().await;
        assert_eq!(get_on(&mut conn, "/").await, "ok");
        // Idle for longer than the header timeout: still open, and a request resets idleness.
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(get_on(&mut conn, "/").await, "ok");
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(get_on(&mut conn, "/").await, "ok");
        let took = closed_within(&mut conn, Duration::from_secs(3))
            .await
            .expect("closed when idle");
        assert!(took >= Duration::from_millis(700), "closed after {took:?}");
        assert_eq!(read(&r.metrics.idle_closed), 1);
        assert_eq!(read(&r.metrics.timed_out), 0);
    })
    .await;
}

/// The frames types of an HTTP/2 byte stream from a server (after its preface-less start).
fn h2_frame_types(mut bytes: &[u8]) -> Vec<u8> {
    let mut types = Vec::new();
    while bytes.len() >= 9 {
        let len = usize::from(bytes[0]) << 16 | usize::from(bytes[1]) << 8 | usize::from(bytes[2]);
        types.push(bytes[3]);
        bytes = &bytes[(9 + len).min(bytes.len())..];
    }
    types
}

#[tokio::test]
async fn an_http2_connection_should_close_with_goaway_when_idle_despite_pings() {
    bounded(async {
        let r = Running::start(ListenerLimits {
            idle_timeout: Duration::from_millis(600),
            ..limits()
        })
        .await;
        let mut conn = r.connect().await;
        conn.write_all(H2_PREFACE).await.unwrap();
        conn.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0]).await.unwrap(); // empty SETTINGS
        let (mut rd, mut wr) = conn.into_split();
        let pinger = tokio::spawn(async move {
            // PING every 100 ms: activity, but no request.
            let mut ping = vec![0, 0, 8, 6, 0, 0, 0, 0, 0];
            ping.extend_from_slice(&[7; 8]);
            while wr.write_all(&ping).await.is_ok() {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        let started = Instant::now();
        let mut received = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), async {
            let mut chunk = [0u8; 4096];
            while let Ok(n @ 1..) = rd.read(&mut chunk).await {
                received.extend_from_slice(&chunk[..n]);
            }
        })
        .await
        .expect("the idle HTTP/2 connection was closed");
        let took = started.elapsed();
        pinger.abort();
        assert!(took >= Duration::from_millis(500), "closed after {took:?}");
        let types = h2_frame_types(&received);
        assert!(types.contains(&6), "pings were answered: {types:?}");
        assert!(types.contains(&7), "a GOAWAY before closing: {types:?}");
        assert_eq!(read(&r.metrics.idle_closed), 1);
    })
    .await;
}

#[tokio::test]
async fn shutdown_should_not_wait_for_idle_silent_or_half_sent_connections() {
    bounded(async {
        let r = Running::start(limits()).await;
        let mut idle = r.connect().await;
        assert_eq!(get_on(&mut idle, "/").await, "ok");
        let mut silent = r.connect().await;
        let mut half = r.connect().await;
        half.write_all(b"GET /metrics HTTP/1.1\r\nhost: t")
            .await
            .unwrap();
        let mut h2 = r.connect().await;
        h2.write_all(H2_PREFACE).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let started = Instant::now();
        r.server.shutdown().await;
        // The HTTP/2 client that never finished its handshake is given the cut-off.
        let took = started.elapsed();
        assert!(took < CUT_OFF + PROMPTLY, "{took:?}");
        for conn in [&mut idle, &mut silent, &mut half, &mut h2] {
            assert!(closed_within(conn, PROMPTLY).await.is_some());
        }
        assert!(!r.hard_stop.is_cancelled());
    })
    .await;
}

#[tokio::test]
async fn shutdown_should_let_a_request_in_flight_finish_and_cut_off_one_past_the_grace() {
    bounded(async {
        let r = Running::start(ListenerLimits {
            shutdown_grace: Duration::from_millis(1500),
            ..limits()
        })
        .await;
        let mut slow = r.connect().await;
        let mut stuck = r.connect().await;
        stuck
            .write_all(b"GET /stuck HTTP/1.1\r\nhost: t\r\n\r\n")
            .await
            .unwrap();
        let slow_response = async { get_on(&mut slow, "/slow").await };
        let shutdown = async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let started = Instant::now();
            r.server.shutdown().await;
            started.elapsed()
        };
        let (body, took) = tokio::join!(slow_response, shutdown);
        assert_eq!(body, "slow");
        assert!(took >= Duration::from_millis(1400), "{took:?}");
        assert!(
            took < Duration::from_millis(1500) + CUT_OFF + PROMPTLY,
            "{took:?}"
        );
        assert!(r.hard_stop.is_cancelled());
        assert!(closed_within(&mut stuck, PROMPTLY).await.is_some());
    })
    .await;
}

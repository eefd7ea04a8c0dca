//! Test support shared by the receiver's tests: a recording sink, requests and a running
//! receiver.

use std::future::Future;
use std::io::Write;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use flate2::write::GzEncoder;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use parking_lot::Mutex;
use prost::Message;

use super::{OtlpReceiver, Protocol};
use crate::sink::Accepted;
use crate::{ReceiverConfig, ReceiverMetrics, Refused, SpanSink};
use traceq_exporter::otlp::OtlpSpan;

/// Longest any one test may take over the network.
pub(super) const TEST_TIMEOUT: Duration = Duration::from_secs(30);

/// A sink that records what it takes, or refuses everything.
#[derive(Debug, Default)]
pub(super) struct TestSink {
    spans: Mutex<Vec<OtlpSpan>>,
    refusal: Option<Refused>,
    /// When set: told when an offer starts, then the offer takes this long.
    slow: Option<(Duration, Mutex<mpsc::Sender<()>>)>,
}

impl TestSink {
    pub(super) fn accepting() -> Arc<Self> {
        Arc::default()
    }

    pub(super) fn refusing(refusal: Refused) -> Arc<Self> {
        Arc::new(Self {
            refusal: Some(refusal),
            ..Self::default()
        })
    }

    /// A sink whose offers take `delay`; the receiver hears when one starts.
    pub(super) fn slow(delay: Duration) -> (Arc<Self>, mpsc::Receiver<()>) {
        let (tx, rx) = mpsc::channel();
        let sink = Self {
            slow: Some((delay, Mutex::new(tx))),
            ..Self::default()
        };
        (Arc::new(sink), rx)
    }

    /// Trace ids of the spans taken, in order.
    pub(super) fn trace_ids(&self) -> Vec<[u8; 16]> {
        self.spans
            .lock()
            .iter()
            .map(OtlpSpan::trace_id_bytes)
            .collect()
    }
}

impl SpanSink for TestSink {
    fn offer(&self, spans: Vec<OtlpSpan>) -> Result<Accepted, Refused> {
        if let Some((delay, started)) = &self.slow {
            let _ = started.lock().send(());
            std::thread::sleep(*delay);
        }
        if let Some(refusal) = self.refusal {
            return Err(refusal);
        }
        self.spans.lock().extend(spans);
        Ok(Accepted::default())
    }
}

/// A loopback receiver configuration on a free port.
pub(super) fn config(max_request_bytes: usize) -> ReceiverConfig {
    ReceiverConfig::new(
        "127.0.0.1:0".parse().expect("a valid address"),
        max_request_bytes,
    )
}

/// A request of `n` spans, span `i` in trace `[i + 1; 16]`, each with a `name_len`-byte name.
pub(super) fn request(n: u8, name_len: usize) -> ExportTraceServiceRequest {
    let spans = (0..n)
        .map(|i| Span {
            trace_id: vec![i + 1; 16],
            span_id: vec![i + 1; 8],
            name: "n".repeat(name_len),
            start_time_unix_nano: 1_000,
            end_time_unix_nano: 2_000,
            ..Default::default()
        })
        .collect();
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            scope_spans: vec![ScopeSpans {
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

/// The trace ids [`request`] uses.
pub(super) fn trace_ids(n: u8) -> Vec<[u8; 16]> {
    (0..n).map(|i| [i + 1; 16]).collect()
}

/// [`request`], protobuf-encoded.
pub(super) fn encoded(n: u8, name_len: usize) -> Vec<u8> {
    request(n, name_len).encode_to_vec()
}

/// gzip-compresses `data`.
pub(super) fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).expect("writing to a Vec");
    e.finish().expect("writing to a Vec")
}

/// A receiver running on loopback, with its sink and counters.
pub(super) struct Running {
    pub(super) receiver: OtlpReceiver,
    pub(super) sink: Arc<TestSink>,
    pub(super) metrics: Arc<ReceiverMetrics>,
}

impl Running {
    pub(super) async fn start(
        protocol: Protocol,
        config: &ReceiverConfig,
        sink: Arc<TestSink>,
    ) -> Self {
        Self::start_with_limit(protocol, config, sink, 256).await
    }

    /// [`Running::start`] allowing at most `limit` requests in flight.
    pub(super) async fn start_with_limit(
        protocol: Protocol,
        config: &ReceiverConfig,
        sink: Arc<TestSink>,
        limit: usize,
    ) -> Self {
        let metrics = Arc::new(ReceiverMetrics::default());
        let receiver =
            OtlpReceiver::start_with_limit(protocol, config, sink.clone(), metrics.clone(), limit)
                .await
                .expect("the receiver starts");
        Self {
            receiver,
            sink,
            metrics,
        }
    }

    /// `http://<addr>`.
    pub(super) fn url(&self) -> String {
        format!("http://{}", self.receiver.local_addr())
    }

    /// (accepted, spans accepted, refused, spans refused, rejected).
    pub(super) fn counts(&self) -> (u64, u64, u64, u64, u64) {
        use crate::metrics::get;
        let m = &self.metrics;
        (
            get(&m.requests_accepted),
            get(&m.spans_accepted),
            get(&m.requests_refused),
            get(&m.spans_refused),
            get(&m.requests_rejected),
        )
    }
}

/// Runs `test`, failing it when it takes longer than [`TEST_TIMEOUT`].
pub(super) async fn bounded<T>(test: impl Future<Output = T>) -> T {
    tokio::time::timeout(TEST_TIMEOUT, test)
        .await
        .expect("the test finished in time")
}

//! Two HTTP services on loopback passing trace context: W3C `traceparent` / `baggage` and Zipkin
//! B3 headers in, work queued under the caller's trace.
//!
//! Shows: a client starting a span and injecting its context as W3C Trace Context + W3C Baggage
//! (`tenant=acme`) and as B3 multi-headers; a second client speaking B3 only (a single `b3`
//! header, as a Zipkin-instrumented caller would); the `orders` service extracting whichever it
//! gets (`propagation::extract`: W3C first, then B3), answering `202 Accepted` and queuing the
//! order with `add_with_context`, so the order's item trace continues the caller's trace and its
//! baggage lands on the engine's spans; and the order's handler calling the `payments` service
//! with W3C headers injected from the attempt's context, continuing the same trace again.
//!
//! The HTTP is a minimal HTTP/1.1 over tokio sockets, to keep the example free of a web framework;
//! both services share one tracer provider because they share one process.
//!
//! Run it: `cargo run --example http_propagation`

use opentelemetry::baggage::BaggageExt as _;
use opentelemetry::trace::{
    Span as _, SpanKind, TraceContextExt as _, TraceId, Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracer, SdkTracerProvider, SpanData};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::{TcpListener, TcpStream};
use traceq::engine::trace::propagation::{self, B3Encoding};
use traceq::engine::{Attempt, Engine};
use traceq::exporter::{records_from_sdk, traces, Waterfall};

type Headers = HashMap<String, String>;

/// What the run produced: every span, and the trace id each client started.
pub(crate) struct Report {
    pub(crate) spans: Vec<SpanData>,
    pub(crate) w3c_client_trace: TraceId,
    pub(crate) b3_client_trace: TraceId,
}

/// Reads a request's line and headers (names lower-cased); requests here have no body.
async fn read_request(stream: &mut TcpStream) -> std::io::Result<(String, Headers)> {
    let mut reader = BufReader::new(stream);
    let mut request_line = String::new();
    reader.read_line(&mut request_line).await?;
    let mut headers = Headers::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).await? == 0 || line.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            headers.insert(name.trim().to_ascii_lowercase(), value.trim().to_owned());
        }
    }
    let path = request_line
        .split_whitespace()
        .nth(1)
        .unwrap_or("/")
        .to_owned();
    Ok((path, headers))
}

/// Sends `POST path` with `headers`; returns the response's status code.
async fn post(addr: SocketAddr, path: &str, headers: &Headers) -> std::io::Result<u16> {
    let mut stream = TcpStream::connect(addr).await?;
    let mut request = format!("POST {path} HTTP/1.1\r\nhost: {addr}\r\ncontent-length: 0\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("connection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut status_line = String::new();
    BufReader::new(&mut stream)
        .read_line(&mut status_line)
        .await?;
    status_line
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line {status_line:?}")))
}

async fn respond(stream: &mut TcpStream, status: &str) -> std::io::Result<()> {
    let response = format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
    stream.write_all(response.as_bytes()).await
}

/// A server span continuing whatever context the caller sent.
fn server_span(tracer: &SdkTracer, name: &str, headers: &Headers) -> Context {
    let parent = propagation::extract(headers);
    let span = tracer
        .span_builder(name.to_owned())
        .with_kind(SpanKind::Server)
        .start_with_context(tracer, &parent);
    parent.with_span(span)
}

/// The payments service: records a server span per request and says 200.
async fn payments(listener: TcpListener, tracer: SdkTracer) {
    while let Ok((mut stream, _)) = listener.accept().await {
        let tracer = tracer.clone();
        tokio::spawn(async move {
            if let Ok((path, headers)) = read_request(&mut stream).await {
                let cx = server_span(&tracer, &format!("POST {path}"), &headers);
                cx.span().end();
                let _ = respond(&mut stream, "200 OK").await;
            }
        });
    }
}

/// The orders service: queues the order under the caller's trace and says 202.
async fn orders(
    listener: TcpListener,
    tracer: SdkTracer,
    queue: traceq::engine::EngineHandle<String>,
) {
    while let Ok((mut stream, _)) = listener.accept().await {
        let (tracer, queue) = (tracer.clone(), queue.clone());
        tokio::spawn(async move {
            if let Ok((path, headers)) = read_request(&mut stream).await {
                let cx = server_span(&tracer, "POST /orders", &headers);
                let order = path.trim_start_matches("/orders/").to_owned();
                queue.add_with_context(order, &cx);
                cx.span().end();
                let _ = respond(&mut stream, "202 Accepted").await;
            }
        });
    }
}

/// Starts both services, sends one W3C+B3 request and one B3-only request, waits for the orders
/// to be processed; returns every span.
pub(crate) async fn run() -> anyhow::Result<Report> {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let tracer = provider.tracer("http-propagation");

    let payments_listener = TcpListener::bind("127.0.0.1:0").await?;
    let payments_addr = payments_listener.local_addr()?;
    let orders_listener = TcpListener::bind("127.0.0.1:0").await?;
    let orders_addr = orders_listener.local_addr()?;

    let engine = Engine::<String>::builder()
        .with_name("orders")
        .with_workers(2)
        .with_tracer(tracer.clone())
        .build()?;
    let handle = engine.handle();
    let servers = [
        tokio::spawn(payments(payments_listener, tracer.clone())),
        tokio::spawn(orders(orders_listener, tracer.clone(), handle.clone())),
    ];
    let workers = tokio::spawn(async move {
        engine
            .run(move |attempt: Attempt<String>| async move {
                // Hand the attempt's context on to the next service, in W3C headers.
                let mut headers = Headers::new();
                propagation::inject_w3c(&attempt.context(), &mut headers);
                match post(
                    payments_addr,
                    &format!("/payments/{}", attempt.key),
                    &headers,
                )
                .await
                {
                    Ok(200) => Ok(()),
                    Ok(status) => Err(format!("payments answered {status}")),
                    Err(e) => Err(format!("payments unreachable: {e}")),
                }
            })
            .await
    });

    // Client 1: W3C trace context and baggage, plus B3 multi-headers.
    let span = tracer
        .span_builder("checkout")
        .with_kind(SpanKind::Client)
        .start(&tracer);
    let w3c_client_trace = span.span_context().trace_id();
    let cx = Context::new()
        .with_span(span)
        .with_baggage([KeyValue::new("tenant", "acme")]);
    let mut headers = Headers::new();
    propagation::inject_w3c(&cx, &mut headers);
    propagation::inject_b3(&cx, &mut headers, B3Encoding::MultipleHeader);
    anyhow::ensure!(post(orders_addr, "/orders/1001", &headers).await? == 202);
    cx.span().end();

    // Client 2: a Zipkin-instrumented caller, B3 single header only.
    let span = tracer.start("legacy checkout");
    let b3_client_trace = span.span_context().trace_id();
    let cx = Context::new().with_span(span);
    let mut headers = Headers::new();
    propagation::inject_b3(&cx, &mut headers, B3Encoding::SingleHeader);
    anyhow::ensure!(post(orders_addr, "/orders/1002", &headers).await? == 202);
    cx.span().end();

    // Both orders processed (adds happen before the 202), then stop everything.
    handle.queue().wait_idle().await;
    handle.shutdown_with_drain().await;
    workers.await?;
    for server in servers {
        server.abort();
    }

    tokio::task::spawn_blocking(move || {
        provider.force_flush()?;
        let spans = exporter.get_finished_spans()?; // before shutdown, which clears them
        provider.shutdown()?;
        Ok(Report {
            spans,
            w3c_client_trace,
            b3_client_trace,
        })
    })
    .await?
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let report = tokio::time::timeout(Duration::from_secs(30), run()).await??;
    println!("W3C + B3 caller's trace: {:032x}", report.w3c_client_trace);
    println!("B3-only caller's trace:  {:032x}\n", report.b3_client_trace);
    for trace in traces(records_from_sdk(report.spans)) {
        println!("{}", Waterfall::plain().render(&trace));
    }
    Ok(())
}

//! `traceq loadgen`: synthetic traces sent to an OTLP receiver (a collector, `traceq collector`,
//! Jaeger) at a target rate, then a report of what was delivered.
//!
//! The work is done by `traceq::exporter::loadgen`; this module maps flags to its
//! `LoadgenConfig` and prints its `LoadReport` as a table or, with `--json`, as one JSON object
//! on stdout. The exit status is 1 when a setting is invalid or any request failed (the report is
//! printed first), 2 for flags clap cannot parse.

use anyhow::{bail, Context as _};
use clap::{ArgGroup, Args, ValueEnum};
use std::time::Duration;
use traceq::exporter::loadgen::{
    self, LoadReport, LoadgenConfig, LoadgenError, Protocol, DEFAULT_BATCH_SPANS,
    DEFAULT_ERROR_RATIO, DEFAULT_SERVICE_NAME, DEFAULT_SPANS_PER_TRACE, DEFAULT_WORKERS,
};

/// The OTLP transport, as a flag value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ProtocolArg {
    /// OTLP/gRPC.
    Grpc,
    /// OTLP/HTTP with protobuf bodies.
    Http,
}

/// Options of `traceq loadgen`.
#[derive(Debug, Args)]
#[command(group(
    ArgGroup::new("stop")
        .args(["traces", "duration"])
        .required(true)
        .multiple(true)
))]
pub(crate) struct LoadgenArgs {
    /// Receiver address: host:port or http://host:port (plain http only). [default:
    /// 127.0.0.1:4317 for grpc, http://127.0.0.1:4318 for http; `/v1/traces` is appended for http]
    #[arg(long, value_name = "URL")]
    endpoint: Option<String>,
    /// OTLP transport.
    #[arg(long, value_enum, default_value_t = ProtocolArg::Grpc)]
    protocol: ProtocolArg,
    /// Stop after sending this many traces.
    #[arg(long, value_name = "N")]
    traces: Option<u64>,
    /// Stop after this long: 500ms, 10s, 2m, 1m30s.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    duration: Option<Duration>,
    /// Target spans per second across all workers; 0 for as fast as the receiver answers.
    #[arg(long, value_name = "SPANS_PER_S", default_value_t = 0.0)]
    rate: f64,
    /// Spans per trace: a server root with client and internal children.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_SPANS_PER_TRACE)]
    spans_per_trace: usize,
    /// Share of traces with one ERROR span, from 0 to 1 (exact, not sampled).
    #[arg(long, value_name = "RATIO", default_value_t = DEFAULT_ERROR_RATIO)]
    error_ratio: f64,
    /// Most spans per request; requests carry whole traces (at least one).
    #[arg(long, value_name = "N", default_value_t = DEFAULT_BATCH_SPANS)]
    batch_spans: usize,
    /// Concurrent senders, one request in flight each.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_WORKERS)]
    workers: usize,
    /// Compress requests with gzip.
    #[arg(long)]
    gzip: bool,
    /// service.name of the generated resource.
    #[arg(long, value_name = "NAME", default_value = DEFAULT_SERVICE_NAME)]
    service_name: String,
    /// Seed of the generated ids and shapes, for reproducible runs.
    #[arg(long, value_name = "N")]
    seed: Option<u64>,
    /// Extra request header (gRPC metadata), repeatable: --header authorization='Bearer x'.
    #[arg(long = "header", value_name = "KEY=VALUE", value_parser = parse_header)]
    headers: Vec<(String, String)>,
    /// Print the report as one JSON object.
    #[arg(long)]
    json: bool,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    match traceq::sampler::parse_duration(text) {
        Ok(d) if d.is_zero() => Err("must be longer than 0".to_owned()),
        Ok(d) => Ok(d),
        Err(e) => Err(e.to_string()),
    }
}

fn parse_header(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.trim().is_empty() => {
            Ok((key.trim().to_owned(), value.trim().to_owned()))
        }
        _ => Err(format!("`{text}` is not KEY=VALUE")),
    }
}

impl LoadgenArgs {
    fn config(&self) -> LoadgenConfig {
        let mut config = LoadgenConfig::default()
            .with_protocol(match self.protocol {
                ProtocolArg::Grpc => Protocol::Grpc,
                ProtocolArg::Http => Protocol::Http,
            })
            .with_rate(self.rate)
            .with_spans_per_trace(self.spans_per_trace)
            .with_error_ratio(self.error_ratio)
            .with_batch_spans(self.batch_spans)
            .with_workers(self.workers)
            .with_gzip(self.gzip)
            .with_service_name(self.service_name.clone());
        config.endpoint.clone_from(&self.endpoint);
        config.traces = self.traces;
        config.duration = self.duration;
        config.seed = self.seed;
        config.headers.clone_from(&self.headers);
        config
    }
}

/// A library setting error in the flags' words: `--spans-per-trace: must be ...`.
fn flag_error(error: LoadgenError) -> anyhow::Error {
    match error {
        LoadgenError::Setting { field, reason } => {
            let flag = match field {
                "headers" => "header".to_owned(),
                other => other.replace('_', "-"),
            };
            anyhow::anyhow!("--{flag}: {reason}")
        }
        other => other.into(),
    }
}

pub(crate) fn run(args: LoadgenArgs) -> anyhow::Result<()> {
    let config = args.config();
    // Checked before the runtime starts, so a bad flag costs nothing.
    config.validate().map_err(flag_error)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    let report = runtime
        .block_on(loadgen::run(&config))
        .map_err(flag_error)?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string(&report).context("encoding the report")?
        );
    } else {
        print_table(&config, &report);
    }
    if report.requests_failed > 0 {
        let total = report.requests_failed + report.requests_ok;
        bail!(
            "{} of {total} requests to {} failed; first error: {}",
            report.requests_failed,
            config.url(),
            report.first_error.as_deref().unwrap_or("unknown")
        );
    }
    Ok(())
}

fn print_table(config: &LoadgenConfig, report: &LoadReport) {
    let protocol = match config.protocol {
        Protocol::Grpc => "OTLP/gRPC",
        Protocol::Http => "OTLP/HTTP",
        _ => "OTLP",
    };
    println!(
        "traceq loadgen: {protocol} to {}, {} workers{}",
        config.url(),
        config.workers,
        if config.gzip { ", gzip" } else { "" }
    );
    let row = |label: &str, value: String| println!("  {label:<20} {value:>14}");
    row("traces sent", report.traces_sent.to_string());
    row("spans sent", report.spans_sent.to_string());
    row("error traces sent", report.error_traces_sent.to_string());
    if report.spans_rejected > 0 {
        row("spans rejected", report.spans_rejected.to_string());
    }
    if report.spans_failed > 0 {
        row("spans failed", report.spans_failed.to_string());
    }
    row("requests ok", report.requests_ok.to_string());
    row("requests failed", report.requests_failed.to_string());
    row("requests retried", report.requests_retried.to_string());
    row(
        "bytes sent",
        format!("{:.1} MB", report.bytes_sent as f64 / 1e6),
    );
    row("elapsed", format!("{:.2} s", report.elapsed.as_secs_f64()));
    row("spans/s", format!("{:.0}", report.spans_per_second));
    if let Some(error) = &report.first_error {
        println!("  first error: {error}");
    }
}

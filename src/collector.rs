//! `traceq collector`: OTLP in, tail sampling, OTLP out, until SIGINT or SIGTERM.
//!
//! Configuration: a YAML file in the OpenTelemetry Collector's shape (`--config`), then flags
//! and environment for the common cases (`--otlp-endpoint` / `OTEL_EXPORTER_OTLP_ENDPOINT` adds
//! an OTLP exporter, `--file` a file exporter). On a signal it stops receiving, decides every
//! pending trace, flushes the exporters within the shutdown timeout, prints a summary and exits
//! 0. On SIGHUP it reopens its files and reloads the configuration (policies, exporters and
//! static backends; an invalid file changes nothing).
//!
//! The shutdown is bounded whatever clients and the downstream do: it ends within
//! `service.shutdown_timeout` plus [`SHUTDOWN_GRACE`], or the process says what it leaves
//! undelivered and exits 1. A second SIGINT or SIGTERM during the shutdown exits at once, with
//! that same line and the signal's conventional status (130 or 143).

use anyhow::{bail, Context as _};
use clap::{Args, ValueEnum};
use std::io::{IsTerminal, Write as _};
use std::path::PathBuf;
use std::time::{Duration, Instant};
use traceq::collector::{
    ClientTlsConfig, Collector, CollectorConfig, CollectorStatus, Compression, ExportTarget,
    ExporterConfig, FileReopener, ReloadReport, Reloader, DEFAULT_EXPORT_TIMEOUT,
};

/// How long the shutdown may run past `service.shutdown_timeout` (the receivers' grace for
/// requests in flight fits in it) before the process gives up and exits.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Protocol of the exporter added by `--otlp-endpoint`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum OtlpProtocol {
    /// OTLP/gRPC.
    Grpc,
    /// OTLP/HTTP with protobuf bodies.
    #[value(name = "http/protobuf")]
    HttpProtobuf,
}

/// Options of `traceq collector`.
#[derive(Debug, Clone, Args)]
pub(crate) struct CollectorArgs {
    /// Configuration file (YAML, the OpenTelemetry Collector's receivers / processors.tail_sampling
    /// / exporters shape). Without it: the defaults of `--print-config`, without exporters.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Print the effective default configuration and exit.
    #[arg(long)]
    print_config: bool,
    /// Add an OTLP exporter to this downstream endpoint (`host:port`, `http://` or `https://`
    /// for gRPC; an `http://` or `https://` URL for http/protobuf).
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT", value_name = "URL")]
    otlp_endpoint: Option<String>,
    /// CA certificates (PEM) that the `--otlp-endpoint` server's certificate must chain to
    /// (TLS; required for `https://`: no CA roots are built in).
    #[arg(long, env = "OTEL_EXPORTER_OTLP_CERTIFICATE", value_name = "FILE")]
    otlp_certificate: Option<PathBuf>,
    /// Client certificate (PEM) presented to the `--otlp-endpoint` server (mutual TLS).
    #[arg(
        long,
        env = "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE",
        value_name = "FILE"
    )]
    otlp_client_certificate: Option<PathBuf>,
    /// Private key (PEM) of `--otlp-client-certificate`.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_CLIENT_KEY", value_name = "FILE")]
    otlp_client_key: Option<PathBuf>,
    /// Protocol of the `--otlp-endpoint` exporter.
    #[arg(
        long,
        env = "OTEL_EXPORTER_OTLP_PROTOCOL",
        value_enum,
        default_value = "grpc"
    )]
    otlp_protocol: OtlpProtocol,
    /// Add a file exporter writing OTLP-JSON lines (readable by `traceq show`).
    #[arg(long, value_name = "PATH")]
    file: Option<PathBuf>,
    /// Override the OTLP/gRPC receiver's address.
    #[arg(long, value_name = "ADDR")]
    grpc_endpoint: Option<std::net::SocketAddr>,
    /// Override the OTLP/HTTP receiver's address.
    #[arg(long, value_name = "ADDR")]
    http_endpoint: Option<std::net::SocketAddr>,
    /// Override the `/metrics` and `/healthz` address.
    #[arg(long, value_name = "ADDR")]
    metrics_endpoint: Option<std::net::SocketAddr>,
    /// Keep accepted spans, pending traces and decisions in a write-ahead log in DIR, replayed
    /// after a crash or restart (the `file_storage` extension, for the sampler and every
    /// exporter; other `file_storage` settings in --config are kept).
    #[arg(long, value_name = "DIR")]
    storage: Option<PathBuf>,
    /// Show a progress line on stderr (default: when stderr is a terminal).
    #[arg(long)]
    progress: Option<bool>,
}

fn build_config(args: &CollectorArgs) -> anyhow::Result<CollectorConfig> {
    let mut config = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            CollectorConfig::from_yaml(&text)
                .with_context(|| format!("invalid configuration in {}", path.display()))?
        }
        None => CollectorConfig::default(),
    };
    if let Some(endpoint) = args
        .otlp_endpoint
        .as_deref()
        .filter(|e| !e.trim().is_empty())
    {
        let target = match args.otlp_protocol {
            OtlpProtocol::Grpc => ExportTarget::OtlpGrpc {
                endpoint: endpoint.to_owned(),
                compression: Compression::Gzip,
                timeout: DEFAULT_EXPORT_TIMEOUT,
                headers: Vec::new(),
            },
            OtlpProtocol::HttpProtobuf => {
                if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
                    bail!("--otlp-endpoint: `{endpoint}` is not a URL like http://127.0.0.1:4318 or https://collector:4318");
                }
                ExportTarget::OtlpHttp {
                    endpoint: endpoint.to_owned(),
                    compression: Compression::Gzip,
                    timeout: DEFAULT_EXPORT_TIMEOUT,
                    headers: Vec::new(),
                }
            }
        };
        let mut exporter = ExporterConfig::new("otlp/flag", target);
        let tls_files = [
            &args.otlp_certificate,
            &args.otlp_client_certificate,
            &args.otlp_client_key,
        ];
        if tls_files.iter().any(|f| f.is_some()) {
            exporter = exporter.with_tls(ClientTlsConfig {
                ca_file: args.otlp_certificate.clone(),
                cert_file: args.otlp_client_certificate.clone(),
                key_file: args.otlp_client_key.clone(),
                ..ClientTlsConfig::default()
            });
        }
        config.exporters.push(exporter);
    }
    if let Some(path) = &args.file {
        config.exporters.push(ExporterConfig::new(
            "file/flag",
            ExportTarget::file(path.clone()),
        ));
    }
    if let Some(addr) = args.grpc_endpoint {
        match &mut config.grpc {
            Some(r) => r.endpoint = addr,
            None => bail!("--grpc-endpoint: the gRPC receiver is disabled in the configuration"),
        }
    }
    if let Some(addr) = args.http_endpoint {
        match &mut config.http {
            Some(r) => r.endpoint = addr,
            None => bail!("--http-endpoint: the HTTP receiver is disabled in the configuration"),
        }
    }
    if let Some(addr) = args.metrics_endpoint {
        config.admin = Some(addr);
    }
    if let Some(dir) = &args.storage {
        if dir.as_os_str().is_empty() {
            bail!("--storage: needs a directory");
        }
        config = config.with_storage_directory(dir.clone());
    }
    if config.exporters.is_empty() && config.loadbalancing.is_none() {
        bail!(
            "no exporter: add one under `exporters:` in --config, or use --otlp-endpoint or --file \
             (`traceq collector --print-config` shows the syntax)"
        );
    }
    Ok(config)
}

/// Runs the sub-command.
pub(crate) fn run(args: CollectorArgs) -> anyhow::Result<()> {
    if args.print_config {
        print!("{}", CollectorConfig::default_yaml());
        return Ok(());
    }
    let config = build_config(&args)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("traceq-collector")
        .build()
        .context("cannot start the async runtime")?;
    let progress = args.progress;
    runtime.block_on(serve(config, progress, args))
}

fn addr(a: Option<std::net::SocketAddr>) -> String {
    a.map_or_else(|| "off".to_owned(), |a| a.to_string())
}

async fn serve(
    config: CollectorConfig,
    progress: Option<bool>,
    args: CollectorArgs,
) -> anyhow::Result<()> {
    let mut signals = Signals::register()?;
    let collector = Collector::start(&config).await?;
    on_sighup(collector.file_reopener(), collector.reloader(), args)?;
    let names: Vec<&str> = config
        .exporters
        .iter()
        .map(|e| e.name.as_str())
        .chain(config.loadbalancing.iter().map(|lb| lb.name.as_str()))
        .collect();
    // One machine-readable line: tests and scripts read the bound addresses from it.
    eprintln!(
        "traceq collector: listening grpc={} http={} metrics={} exporters={}",
        addr(collector.grpc_addr()),
        addr(collector.http_addr()),
        addr(collector.admin_addr()),
        names.join(",")
    );
    let show_progress = progress.unwrap_or_else(|| std::io::stderr().is_terminal());
    let started = Instant::now();
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    ticker.tick().await;
    let mut last = (Instant::now(), CollectorStatus::default());
    loop {
        tokio::select! {
            name = signals.next() => {
                if show_progress {
                    eprintln!();
                }
                eprintln!("traceq collector: {name}, deciding pending traces and flushing exporters");
                break;
            }
            _ = ticker.tick(), if show_progress => {
                let now = (Instant::now(), collector.status());
                let secs = now.0.duration_since(last.0).as_secs_f64().max(1e-3);
                let rate = (now.1.spans_received - last.1.spans_received) as f64 / secs;
                let s = now.1;
                eprint!(
                    "\r{:>7.0} s  in {:>10.0} spans/s  kept {:>8} traces  dropped {:>9} traces  buffered {:>7}  exported {:>10} spans  refused {:>8}   ",
                    started.elapsed().as_secs_f64(), rate, s.traces_kept, s.traces_dropped,
                    s.traces_buffered, s.spans_exported, s.spans_refused,
                );
                let _ = std::io::stderr().flush();
                last = now;
            }
        }
    }
    let status = collector.status_handle();
    let limit = config.shutdown_timeout + SHUTDOWN_GRACE;
    let shutdown = collector.shutdown();
    tokio::pin!(shutdown);
    let s = tokio::select! {
        s = &mut shutdown => s,
        name = signals.next() => {
            eprintln!(
                "traceq collector: second {name}, exiting now; undelivered: {}",
                undelivered(&status.status())
            );
            std::process::exit(signal_exit_code(name));
        }
        () = tokio::time::sleep(limit) => {
            eprintln!(
                "traceq collector: shutdown did not finish within {} ms, exiting; undelivered: {}",
                limit.as_millis(),
                undelivered(&status.status())
            );
            std::process::exit(1);
        }
    };
    eprintln!(
        "traceq collector: received {} spans, refused {}, rejected {} requests; kept {} traces ({} spans), dropped {} traces; exported {} spans, export drops {}",
        s.spans_received,
        s.spans_refused,
        s.requests_rejected,
        s.traces_kept,
        s.spans_kept,
        s.traces_dropped,
        s.spans_exported,
        s.spans_export_dropped
    );
    Ok(())
}

/// What a shutdown cut short leaves behind, for its one line on stderr.
fn undelivered(s: &CollectorStatus) -> String {
    format!(
        "{} traces ({} spans) undecided in the buffer, {} kept spans not exported ({} in exporter queues)",
        s.traces_buffered, s.spans_buffered, s.spans_undelivered, s.spans_queued
    )
}

/// The conventional exit status of a process ended by `signal`: 128 plus its number.
fn signal_exit_code(signal: &str) -> i32 {
    match signal {
        "SIGTERM" => 128 + 15,
        _ => 128 + 2, // SIGINT, or the interrupt of other platforms
    }
}

/// On every SIGHUP: reopens the file exporters' files (log rotation: rename the file, send
/// SIGHUP, and new lines go to a new file at the configured path), then re-reads the
/// configuration (the same file and flags) and reloads it: policies, exporters and the
/// `loadbalancing` static backends change for traces decided from then on. An invalid file is
/// reported and changes nothing. Registered before the collector says it is listening, so an
/// early SIGHUP is not taken by the default action (exit).
#[cfg(unix)]
fn on_sighup(
    reopener: FileReopener,
    reloader: Reloader,
    args: CollectorArgs,
) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = signal(SignalKind::hangup()).context("cannot handle SIGHUP")?;
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            match reopener.reopen().await {
                Ok(n) => eprintln!("traceq collector: SIGHUP, reopened {n} file(s)"),
                Err(e) => eprintln!("traceq collector: SIGHUP: {:#}", anyhow::Error::new(e)),
            }
            let reloaded = build_config(&args)
                .and_then(|config| reloader.reload(&config).map_err(anyhow::Error::new));
            match reloaded {
                Ok(report) => report_reload(&report),
                Err(e) => {
                    eprintln!("traceq collector: SIGHUP: keeping the running configuration: {e:#}");
                }
            }
        }
    });
    Ok(())
}

/// One line for what a reload changed, and one per setting it left for a restart.
#[cfg(unix)]
fn report_reload(report: &ReloadReport) {
    let names = |list: &[String]| {
        if list.is_empty() {
            "none".to_owned()
        } else {
            list.join(",")
        }
    };
    let policies = report
        .policies
        .map_or_else(|| "sampling off".to_owned(), |n| format!("{n} policies"));
    eprintln!(
        "traceq collector: SIGHUP, configuration reloaded: {policies}; exporters started: {}, \
         stopped: {}, unchanged: {}",
        names(&report.exporters_started),
        names(&report.exporters_stopped),
        names(&report.exporters_unchanged),
    );
    if let Some(backends) = &report.backends {
        eprintln!(
            "traceq collector: SIGHUP, loadbalancing backends now {}",
            backends.join(",")
        );
    }
    for setting in &report.needs_restart {
        eprintln!("traceq collector: SIGHUP: {setting} changed: takes effect after a restart");
    }
}

#[cfg(not(unix))]
fn on_sighup(
    _reopener: FileReopener,
    _reloader: Reloader,
    _args: CollectorArgs,
) -> anyhow::Result<()> {
    Ok(())
}

/// SIGINT and SIGTERM, registered at once (not when first awaited), so a signal that arrives
/// as soon as the collector says it is listening is not taken by the default action (exit
/// without a flush), and a second one during the shutdown is seen too.
#[cfg(unix)]
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

#[cfg(unix)]
impl Signals {
    fn register() -> anyhow::Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Self {
            term: signal(SignalKind::terminate()).context("cannot handle SIGTERM")?,
            int: signal(SignalKind::interrupt()).context("cannot handle SIGINT")?,
        })
    }

    /// The next signal's name.
    async fn next(&mut self) -> &'static str {
        tokio::select! {
            _ = self.int.recv() => "SIGINT",
            _ = self.term.recv() => "SIGTERM",
        }
    }
}

#[cfg(not(unix))]
struct Signals;

#[cfg(not(unix))]
impl Signals {
    fn register() -> anyhow::Result<Self> {
        Ok(Self)
    }

    async fn next(&mut self) -> &'static str {
        let _ = tokio::signal::ctrl_c().await;
        "interrupt"
    }
}

//! A command-line tool whose root span is named after the sub-command it runs.
//!
//! Shows: the root span created after argument parsing (so `--help` or a typo makes no trace),
//! named after the sub-command (`sync`), with the arguments as attributes; the work the command
//! queues continuing the root span's trace (`add_with_context`), so one run is one trace; tracing
//! that is a no-op when no exporter is configured (here: without `--traces-file` or the
//! `TRACEQ_TRACES_FILE` environment variable); and a guard that flushes every span when the
//! command exits, on success and on error alike, outside the async runtime.
//!
//! Run it: `cargo run --example cli_root_span -- --traces-file traces.jsonl sync --items 5`,
//! then `cargo run -- show traces.jsonl`.

use clap::{Parser, Subcommand};
use opentelemetry::global::BoxedTracer;
use opentelemetry::trace::noop::NoopTracer;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry::trace::{Span as _, Status, TraceContextExt as _, Tracer as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use traceq::engine::{Attempt, Engine, OutcomeKind};
use traceq::exporter::OtlpJsonFileExporter;

/// A small inventory tool.
#[derive(Debug, Parser)]
#[command(name = "inventory")]
struct Cli {
    /// Write spans to this OTLP-JSON lines file; without it (and without TRACEQ_TRACES_FILE)
    /// tracing is off and costs nothing.
    #[arg(long)]
    traces_file: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Sync items from the warehouse.
    Sync {
        /// How many items.
        #[arg(long, default_value_t = 3)]
        items: usize,
        /// Make item N fail (for trying it out).
        #[arg(long)]
        fail_item: Option<usize>,
    },
    /// Print the inventory's status.
    Status,
}

impl Command {
    fn name(&self) -> &'static str {
        match self {
            Command::Sync { .. } => "sync",
            Command::Status => "status",
        }
    }
}

/// Owns the tracer provider; flushes and shuts it down when dropped, whatever the exit path.
/// Drop it outside the async runtime: the SDK's flush must not run on an async worker.
struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    fn init(traces_file: Option<&PathBuf>) -> anyhow::Result<Self> {
        let provider = match traces_file {
            None => None,
            Some(path) => {
                let resource = Resource::builder().with_service_name("inventory").build();
                let exporter = OtlpJsonFileExporter::append(path)?.with_resource(&resource);
                Some(
                    SdkTracerProvider::builder()
                        .with_resource(resource)
                        .with_batch_exporter(exporter)
                        .build(),
                )
            }
        };
        Ok(Self { provider })
    }

    fn tracer(&self) -> BoxedTracer {
        match &self.provider {
            Some(p) => BoxedTracer::new(Box::new(p.tracer("inventory"))),
            None => BoxedTracer::new(Box::new(NoopTracer::new())),
        }
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take() {
            if let Err(e) = provider.force_flush().and_then(|()| provider.shutdown()) {
                eprintln!("inventory: flushing traces: {e}");
            }
        }
    }
}

/// Parses `args` (program name first) and runs the command.
pub(crate) fn run<I, T>(args: I) -> anyhow::Result<()>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let cli = Cli::try_parse_from(args)?;
    // After parsing: a bad command line makes no trace.
    let traces_file = (cli.traces_file.clone())
        .or_else(|| std::env::var_os("TRACEQ_TRACES_FILE").map(PathBuf::from));
    let telemetry = Telemetry::init(traces_file.as_ref())?;
    let tracer = telemetry.tracer();
    let mut root = tracer
        .span_builder(cli.command.name())
        .with_attributes([KeyValue::new("cli.command", cli.command.name())])
        .start(&tracer);
    if let Command::Sync { items, .. } = &cli.command {
        root.set_attribute(KeyValue::new("cli.args.items", *items as i64));
    }
    let cx = Context::new().with_span(root);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let result = runtime.block_on(execute(&cli.command, tracer, &cx));
    if let Err(e) = &result {
        cx.span().set_status(Status::error(e.to_string()));
    }
    cx.span().end();
    drop(runtime);
    drop(telemetry); // flushes every span, also when the command failed
    result
}

async fn execute(command: &Command, tracer: BoxedTracer, cx: &Context) -> anyhow::Result<()> {
    match command {
        Command::Status => {
            println!("inventory: all good");
            Ok(())
        }
        Command::Sync { items, fail_item } => {
            let failed = Arc::new(AtomicUsize::new(0));
            let failures = Arc::clone(&failed);
            let engine = Engine::<String>::builder()
                .with_name("sync")
                .with_workers(2)
                .with_max_retries(1)
                .with_backoff(Duration::from_millis(5), Duration::from_millis(20))
                .with_tracer(tracer)
                .with_outcome_hook(move |o| {
                    if matches!(o.kind, OutcomeKind::Exhausted { .. }) {
                        failures.fetch_add(1, Ordering::Relaxed);
                    }
                })
                .build()?;
            let handle = engine.handle();
            for i in 0..*items {
                // Each item's trace continues the command's: one run, one trace.
                handle.add_with_context(format!("item-{i}"), cx);
            }
            let failing = fail_item.map(|n| format!("item-{n}"));
            let workers = tokio::spawn(async move {
                engine
                    .run(move |attempt: Attempt<String>| {
                        let failing = failing.clone();
                        async move {
                            tokio::time::sleep(Duration::from_millis(2)).await;
                            match failing {
                                Some(f) if f == attempt.key => Err("warehouse said no"),
                                _ => Ok(()),
                            }
                        }
                    })
                    .await
            });
            // Wait until every item is done (retries in backoff included), then stop.
            handle.queue().wait_idle().await;
            handle.shutdown_with_drain().await;
            workers.await?;
            let failed = failed.load(Ordering::Relaxed);
            println!("inventory: synced {} of {items} items", items - failed);
            anyhow::ensure!(failed == 0, "{failed} item(s) failed to sync");
            Ok(())
        }
    }
}

fn main() -> ExitCode {
    match run(std::env::args_os()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => match e.downcast_ref::<clap::Error>() {
            Some(clap) => clap.exit(), // --help, --version, usage errors
            None => {
                eprintln!("inventory: {e:#}");
                ExitCode::FAILURE
            }
        },
    }
}

//! The `traceq` command line.

mod collector;
mod demo;
mod loadgen;
mod queue;
mod show;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// traceq: a trace-aware work-queue engine with tail sampling.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a tail-sampling collector: OTLP in (gRPC and HTTP), tail sampling, OTLP out.
    Collector(collector::CollectorArgs),
    /// Run a traced, tail-sampled controller over synthetic objects; kept traces go to a file.
    Demo(demo::DemoArgs),
    /// Draw the traces of an OTLP-JSON lines file as waterfalls.
    Show(show::ShowArgs),
    /// Send synthetic traces over OTLP/gRPC or OTLP/HTTP at a target rate and report on them.
    Loadgen(loadgen::LoadgenArgs),
    /// Inspect and repair a durable queue on PostgreSQL: stats, list, retry and purge keys.
    Queue(queue::QueueArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Collector(args) => collector::run(args),
        Command::Demo(args) => demo::run(args),
        Command::Show(args) => show::run(args),
        Command::Loadgen(args) => loadgen::run(args),
        Command::Queue(args) => queue::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // `{:#}`: the error and its causes on one line, no backtrace dump.
            eprintln!("traceq: {e:#}");
            ExitCode::FAILURE
        }
    }
}

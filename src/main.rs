//! The `traceq` command line.

mod demo;

use clap::{Parser, Subcommand};

/// traceq: a trace-aware work-queue engine with tail sampling.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a simulated controller over synthetic objects and print what the engine did.
    Demo(demo::DemoArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Demo(args) => demo::run(args),
    }
}

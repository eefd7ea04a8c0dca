//! `traceq show FILE [--trace ID] [--errors]`: draws the traces of an OTLP-JSON lines file as
//! waterfalls.
//!
//! Malformed lines are reported on stderr with their line number; every other line is still
//! shown, and the exit status is then 1 so scripts notice.

use anyhow::{bail, Context};
use clap::Args;
use std::io::{self, BufReader, IsTerminal, Write};
use std::path::PathBuf;
use traceq::exporter::{read_otlp_json_lines, traces, Waterfall};

/// Options of `traceq show`.
#[derive(Debug, Args)]
pub(crate) struct ShowArgs {
    /// OTLP-JSON lines file (`traceq demo`'s output, or an OTLP file exporter's); `-` for stdin.
    file: PathBuf,
    /// Only the trace with this id (32 hex digits).
    #[arg(long = "trace", value_name = "ID")]
    trace_id: Option<String>,
    /// Only traces with an error span.
    #[arg(long)]
    errors: bool,
}

/// What `show` found wrong with its input after drawing everything it could.
#[derive(Debug)]
pub(crate) struct MalformedLines(pub(crate) usize);

impl std::fmt::Display for MalformedLines {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = if self.0 == 1 { "" } else { "s" };
        write!(f, "{} malformed line{s} skipped", self.0)
    }
}

impl std::error::Error for MalformedLines {}

pub(crate) fn run(args: ShowArgs) -> anyhow::Result<()> {
    let name = args.file.display().to_string();
    let read = if name == "-" {
        read_otlp_json_lines(io::stdin().lock())
    } else {
        let file = std::fs::File::open(&args.file).with_context(|| format!("opening {name}"))?;
        read_otlp_json_lines(BufReader::new(file))
    }
    .with_context(|| format!("reading {name}"))?;
    for e in &read.errors {
        eprintln!("traceq show: {name}: {e}");
    }
    let wanted = args.trace_id.as_deref().map(str::to_ascii_lowercase);
    let shown: Vec<_> = traces(read.spans)
        .into_iter()
        .filter(|t| wanted.as_ref().is_none_or(|id| &t.trace_id == id))
        .filter(|t| !args.errors || t.has_error())
        .collect();
    let stdout = io::stdout();
    let style = if stdout.is_terminal() {
        Waterfall::terminal()
    } else {
        Waterfall::plain()
    };
    let mut out = stdout.lock();
    let written = shown.iter().enumerate().try_for_each(|(i, trace)| {
        if i > 0 {
            writeln!(out)?;
        }
        out.write_all(style.render(trace).as_bytes())
    });
    match written.and_then(|()| out.flush()) {
        // `traceq show FILE | head`: the reader has seen enough.
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => return Ok(()),
        other => other.context("writing to stdout")?,
    }
    if let (Some(id), true) = (&args.trace_id, shown.is_empty()) {
        bail!("no trace {id} in {name}");
    }
    if !read.errors.is_empty() {
        return Err(MalformedLines(read.errors.len()).into());
    }
    Ok(())
}

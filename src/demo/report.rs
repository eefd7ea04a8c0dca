//! What the demo tells its user: a progress bar while it runs; what became of every attempt,
//! counted; one line per object whose handler panicked; then the summary and the waterfall of one
//! kept error trace, read back from the demo's own file.
//!
//! Why one line per object and not per panic: the engine catches a handler's panic, records it
//! on the attempt's span and retries the key, so each panic is an outcome to count, not news.
//! An object that keeps panicking would otherwise repeat the same line for every life; the count
//! is in the summary's "panicked attempts (caught)" row.

use super::engine::traces_url;
use super::{DemoArgs, LONG_JOB_ID};
use anyhow::{bail, Context as _};
use indicatif::{ProgressBar, ProgressStyle};
use std::collections::HashSet;
use std::future::Future;
use std::io::{BufReader, IsTerminal};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;
use traceq::engine::postgres::PgCounters;
use traceq::engine::{AttemptError, Outcome, OutcomeKind, QueueMetrics};
use traceq::exporter::{read_otlp_json_lines, traces, TraceRecord, Waterfall};
use traceq::sampler::SamplerMetrics;

tokio::task_local! {
    /// Set while the demo's handler runs: the panic hook leaves its panics to [`Tally::record`].
    static IN_HANDLER: ();
}

/// Runs `attempt`, a handler's future, marked as the handler's, so that the panic hook installed
/// by [`quiet_caught_panics`] stays quiet about its panics (the engine catches them).
pub(super) fn as_handler<F: Future>(attempt: F) -> impl Future<Output = F::Output> {
    IN_HANDLER.scope((), attempt)
}

/// Installs a panic hook that says nothing of the handler's panics, which the engine catches and
/// [`Tally::record`] reports, once per object. Any other panic is reported as before, by the
/// hook that was installed.
pub(super) fn quiet_caught_panics() {
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if IN_HANDLER.try_with(|()| ()).is_err() {
            report(info);
        }
    }));
}

/// What became of the attempts, counted by the engine's outcome hook.
#[derive(Debug)]
pub(super) struct Tally {
    attempts: AtomicU64,
    succeeded: AtomicU64,
    requeued: AtomicU64,
    exhausted: AtomicU64,
    dropped: AtomicU64,
    panicked: AtomicU64,
    /// Item lives with at least one failed attempt: each has a trace with an error span.
    items_failed: AtomicU64,
    /// Objects whose handler panicked, each reported once.
    panicked_objects: Mutex<HashSet<String>>,
    /// Where lines go while the bar is drawn (stderr when it is hidden).
    progress: ProgressBar,
}

impl Tally {
    pub(super) fn new(progress: ProgressBar) -> Self {
        Self {
            attempts: AtomicU64::new(0),
            succeeded: AtomicU64::new(0),
            requeued: AtomicU64::new(0),
            exhausted: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            panicked: AtomicU64::new(0),
            items_failed: AtomicU64::new(0),
            panicked_objects: Mutex::default(),
            progress,
        }
    }

    /// Counts one attempt's outcome; reports the first panic of each object.
    pub(super) fn record(&self, o: &Outcome<String>) {
        self.attempts.fetch_add(1, Ordering::Relaxed);
        let counter = match &o.kind {
            OutcomeKind::Succeeded => &self.succeeded,
            OutcomeKind::Requeued { .. } => &self.requeued,
            OutcomeKind::Exhausted { .. } => &self.exhausted,
            _ => &self.dropped,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        let Some(error) = o.kind.error() else { return };
        // Success forgets a key, so a life with a failure fails its first attempt.
        if o.attempt == 1 {
            self.items_failed.fetch_add(1, Ordering::Relaxed);
        }
        if let AttemptError::Panicked(message) = error {
            self.panicked.fetch_add(1, Ordering::Relaxed);
            self.report_panic(o, message);
        }
    }

    fn report_panic(&self, o: &Outcome<String>, message: &str) {
        let first = self
            .panicked_objects
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .insert(o.key.clone());
        if !first {
            return;
        }
        let then = match o.kind {
            OutcomeKind::Requeued { .. } => "will retry",
            OutcomeKind::Exhausted { .. } => "retries exhausted",
            _ => "shutting down",
        };
        let line = format!(
            "handler panicked (caught, {then}): {message} \
             (once per object; the summary counts every panic)"
        );
        if self.progress.is_hidden() {
            eprintln!("{line}");
        } else {
            self.progress.println(line);
        }
    }

    /// The progress bar's message: attempts, retries and forgotten keys so far.
    pub(super) fn progress_message(&self) -> String {
        format!(
            "attempts {}  retries {}  forgotten {}",
            load(&self.attempts),
            load(&self.requeued),
            load(&self.exhausted),
        )
    }
}

fn load(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

/// The bar shown while watch events are sent: elapsed time against `--duration`.
pub(super) fn progress_bar(duration_s: f64) -> ProgressBar {
    let bar = ProgressBar::new((duration_s * 1000.0) as u64);
    if let Ok(style) = ProgressStyle::with_template("{spinner} {elapsed:>3} [{bar:30}] {msg}")
        .map(|s| s.progress_chars("=> "))
    {
        bar.set_style(style);
    }
    bar
}

/// Prints the summary: the run, the work queue, the tail sampler.
pub(super) fn print_summary(
    args: &DemoArgs,
    ran_for: Duration,
    adds: u64,
    m: &QueueMetrics,
    s: &SamplerMetrics,
    tally: &Tally,
) {
    let row = |label: &str, value: String| println!("  {label:<48} {value:>10}");
    println!(
        "traceq demo: {} objects, {} workers, {:.1} s of events, {:.1} s in all",
        args.objects,
        args.workers,
        args.duration,
        ran_for.as_secs_f64()
    );
    println!("\n work queue");
    row("watch events (adds)", adds.to_string());
    row(
        "queue adds (workqueue_adds_total, retries incl.)",
        m.adds_total.to_string(),
    );
    let processed = load(&tally.succeeded) + load(&tally.exhausted);
    row(
        "items processed (succeeded or forgotten)",
        processed.to_string(),
    );
    row("attempts", load(&tally.attempts).to_string());
    row(
        "retries (requeued with backoff)",
        load(&tally.requeued).to_string(),
    );
    row(
        "items that failed at least once",
        load(&tally.items_failed).to_string(),
    );
    row(
        "forgotten after max retries",
        load(&tally.exhausted).to_string(),
    );
    row(
        "panicked attempts (caught)",
        load(&tally.panicked).to_string(),
    );
    row(
        "left unprocessed at shutdown",
        (m.depth + m.waiting).to_string(),
    );
    println!("\n tail sampling");
    row("traces seen", s.new_trace_id_received.to_string());
    row("traces kept", s.global_count_traces_sampled.to_string());
    for p in &s.policies {
        row(
            &format!("  by policy {}", p.policy),
            p.traces_kept.to_string(),
        );
    }
    if s.traces_kept_by_job_linkage > 0 {
        row("  by job linkage", s.traces_kept_by_job_linkage.to_string());
    }
    row(
        "traces dropped",
        s.global_count_traces_not_sampled.to_string(),
    );
    row("spans exported", s.spans_exported.to_string());
    let lost = s.spans_dropped_queue_full + s.export_failures;
    if lost > 0 {
        row(
            "spans lost (export queue full) + failed exports",
            lost.to_string(),
        );
    }
}

/// Says where the kept traces went over OTLP.
///
/// # Errors
/// When exports to `endpoint` failed.
/// What this process did on the durable queue it shared with any other demo processes.
pub(super) fn print_durable(args: &DemoArgs, c: PgCounters) {
    let row = |label: &str, value: String| println!("  {label:<48} {value:>10}");
    println!(
        "\n durable queue {}.{} (shared by every demo process on the database)",
        args.schema, args.queue
    );
    row("keys claimed by this process", c.claimed.to_string());
    row("reclaimed after a lost lease", c.reclaimed.to_string());
    row("stale completions refused", c.stale_completions.to_string());
    row("database connections lost", c.connections_lost.to_string());
    row(
        "claim / completion statements",
        format!("{} / {}", c.claim_statements, c.completion_statements),
    );
}

pub(super) fn sent_over_otlp(endpoint: &str, s: &SamplerMetrics) -> anyhow::Result<()> {
    println!("\n kept traces sent to {}", traces_url(endpoint));
    if s.export_failures > 0 {
        bail!("{} exports to {endpoint} failed", s.export_failures);
    }
    Ok(())
}

/// Reads the demo's file back: the long job's segments, and the waterfall of one error trace.
pub(super) fn show_kept(output: &Path) -> anyhow::Result<()> {
    let read = {
        let file = std::fs::File::open(output)
            .with_context(|| format!("reading back {}", output.display()))?;
        read_otlp_json_lines(BufReader::new(file))?
    };
    let kept = traces(read.spans);
    let segments = kept
        .iter()
        .filter(|t| {
            t.spans
                .iter()
                .any(|s| s.attribute("traceq.job.id") == Some(LONG_JOB_ID))
        })
        .count();
    println!(
        "\n kept traces: {} ({} with errors, {} segments of the long job) in {}",
        kept.len(),
        kept.iter().filter(|t| t.has_error()).count(),
        segments,
        output.display()
    );

    // One kept error trace: preferably an object that exhausted its retries, in one segment.
    let exhausted = |t: &TraceRecord| {
        t.spans
            .iter()
            .any(|s| s.attribute("traceq.outcome") == Some("exhausted_retries"))
    };
    let whole = |t: &TraceRecord| t.spans.iter().all(|s| s.links.is_empty());
    let errors: Vec<&TraceRecord> = kept.iter().filter(|t| t.has_error()).collect();
    let example = errors
        .iter()
        .find(|t| exhausted(t) && whole(t))
        .or_else(|| errors.iter().find(|t| exhausted(t)))
        .or_else(|| errors.first());
    if let Some(trace) = example {
        let style = if std::io::stdout().is_terminal() {
            Waterfall::terminal()
        } else {
            Waterfall::plain()
        };
        println!("\n a kept error trace:\n");
        print!("{}", style.render(trace));
    }
    println!(
        "\n see them all: traceq show {} [--errors] [--trace ID]",
        output.display()
    );
    Ok(())
}

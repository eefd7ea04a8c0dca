//! An operation made of tasks, each task in three steps (pre-run, run, post-run), each a span; and
//! an operation composed of other operations' tasks.
//!
//! Shows: operations queued by name and run by the engine, one trace per operation run; under
//! the attempt span an `operation` span, under it a `task` span per task, under each task its
//! `pre-run` / `run` / `post-run` spans; a task failing in its post-run step failing the attempt,
//! which is retried whole; and `release`, an operation composed of the tasks of `build` and
//! `migrate`, whose task spans say which operation each task came from.
//!
//! Run it: `cargo run --example operation_tasks`

use opentelemetry::trace::TracerProvider as _;
use opentelemetry::trace::{Span as _, Status, TraceContextExt as _, Tracer as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracer, SdkTracerProvider, SpanData};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use traceq::engine::{Attempt, Engine};
use traceq::exporter::{records_from_sdk, traces, Waterfall};
use traceq::sampler::TailSamplingProcessor;

/// A step of a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    PreRun,
    Run,
    PostRun,
}

impl Step {
    const ALL: [Step; 3] = [Step::PreRun, Step::Run, Step::PostRun];

    fn name(self) -> &'static str {
        match self {
            Step::PreRun => "pre-run",
            Step::Run => "run",
            Step::PostRun => "post-run",
        }
    }
}

/// A unit of work: three steps, the last of which may fail once (a flaky verification).
#[derive(Debug, Clone)]
struct Task {
    name: &'static str,
    /// The operation the task was defined in.
    origin: &'static str,
    flaky_post_run: Option<Arc<AtomicBool>>,
}

impl Task {
    fn new(origin: &'static str, name: &'static str) -> Self {
        Self {
            name,
            origin,
            flaky_post_run: None,
        }
    }

    fn flaky(mut self) -> Self {
        self.flaky_post_run = Some(Arc::new(AtomicBool::new(true)));
        self
    }

    async fn step(&self, step: Step) -> Result<(), String> {
        tokio::time::sleep(Duration::from_millis(1)).await;
        match (&self.flaky_post_run, step) {
            // Fails the first time only.
            (Some(flaky), Step::PostRun) if flaky.swap(false, Ordering::SeqCst) => {
                Err(format!("{}: post-run check failed", self.name))
            }
            _ => Ok(()),
        }
    }
}

/// A named list of tasks.
#[derive(Debug, Clone)]
struct Operation {
    name: &'static str,
    tasks: Vec<Task>,
}

impl Operation {
    /// An operation made of the tasks of `parts`, in order.
    fn compose(name: &'static str, parts: &[&Operation]) -> Self {
        Self {
            name,
            tasks: parts.iter().flat_map(|p| p.tasks.iter().cloned()).collect(),
        }
    }
}

/// Runs one operation: an `operation` span, a `task` span per task, a span per step.
async fn run_operation(tracer: &SdkTracer, op: &Operation, cx: &Context) -> Result<(), String> {
    let op_span = tracer
        .span_builder(format!("operation {}", op.name))
        .with_attributes([KeyValue::new("operation.tasks", op.tasks.len() as i64)])
        .start_with_context(tracer, cx);
    let op_cx = cx.with_span(op_span);
    for task in &op.tasks {
        let task_span = tracer
            .span_builder(format!("task {}", task.name))
            .with_attributes([KeyValue::new("operation.origin", task.origin)])
            .start_with_context(tracer, &op_cx);
        let task_cx = op_cx.with_span(task_span);
        for step in Step::ALL {
            let mut span = tracer.start_with_context(step.name(), &task_cx);
            let result = task.step(step).await;
            if let Err(e) = &result {
                span.set_status(Status::error(e.clone()));
                task_cx.span().set_status(Status::error(e.clone()));
                op_cx.span().set_status(Status::error(e.clone()));
            }
            span.end();
            result?;
        }
    }
    Ok(())
}

/// Runs `build`, `migrate` and `release` (= build + migrate); returns every span.
pub(crate) async fn run() -> anyhow::Result<Vec<SpanData>> {
    let exporter = InMemorySpanExporter::default();
    let processor = TailSamplingProcessor::from_yaml(
        exporter.clone(),
        "policies: [{name: everything, type: always_sample}]",
    )?;
    let provider = SdkTracerProvider::builder()
        .with_span_processor(processor)
        .build();
    let tracer = provider.tracer("operation-tasks");

    let build = Operation {
        name: "build",
        tasks: vec![Task::new("build", "compile"), Task::new("build", "package")],
    };
    let migrate = Operation {
        name: "migrate",
        tasks: vec![
            Task::new("migrate", "backup"),
            Task::new("migrate", "apply schema").flaky(),
        ],
    };
    let release = Operation::compose("release", &[&build, &migrate]);
    let operations: Arc<HashMap<&'static str, Operation>> = Arc::new(
        [build, migrate, release]
            .into_iter()
            .map(|op| (op.name, op))
            .collect(),
    );

    let engine = Engine::<&'static str>::builder()
        .with_name("operations")
        .with_workers(2)
        .with_backoff(Duration::from_millis(5), Duration::from_millis(50))
        .with_tracer(tracer.clone())
        .build()?;
    let handle = engine.handle();
    for name in ["build", "release"] {
        handle.add(name);
    }
    let workers = tokio::spawn(async move {
        engine
            .run(move |attempt: Attempt<&'static str>| {
                let (tracer, operations) = (tracer.clone(), operations.clone());
                async move {
                    let op = &operations[attempt.key];
                    run_operation(&tracer, op, &attempt.context()).await
                }
            })
            .await
    });
    handle.queue().wait_idle().await;
    handle.shutdown_with_drain().await;
    workers.await?;

    tokio::task::spawn_blocking(move || {
        provider.force_flush()?;
        let spans = exporter.get_finished_spans()?; // before shutdown, which clears them
        provider.shutdown()?;
        Ok(spans)
    })
    .await?
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let spans = run().await?;
    for trace in traces(records_from_sdk(spans)) {
        println!("{}", Waterfall::plain().render(&trace));
    }
    Ok(())
}

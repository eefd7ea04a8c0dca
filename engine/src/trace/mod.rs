//! One trace per work item, split into linked segments when it grows too old or too large.
//!
//! Why one trace per item lifetime: a key's attempts, backoffs and re-queues are one piece of
//! work, and a tail sampler can only judge it whole. So the item span, the root, lives from the
//! key's first add until the key is forgotten (success, retries exhausted, or dropped at
//! shutdown), and its end is the "trace complete" signal. Each attempt is a child span the
//! handler nests its own spans under.
//!
//! Why segments: a job that lives for days would otherwise build one unbounded trace. Past a
//! maximum age or span budget the current segment ends and a new trace starts, linked at
//! creation to the previous one (only links given at creation are visible to samplers) and
//! carrying the same job id.
//!
//! # Examples
//! ```
//! use opentelemetry::trace::{Span, Tracer};
//! use std::collections::HashMap;
//! use std::time::Duration;
//! use traceq_engine::trace::propagation;
//! use traceq_engine::{Attempt, Engine};
//!
//! # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
//! // Any tracer: here the global one (a no-op until an SDK provider is installed).
//! let engine = Engine::<String>::builder()
//!     .with_tracer(opentelemetry::global::tracer("traceq"))
//!     .with_max_trace_age(Duration::from_secs(30 * 60))
//!     .with_job_id_of(|key: &String| Some(format!("job-{key}")))
//!     .build()
//!     .unwrap();
//! let handle = engine.handle();
//!
//! // A producer's W3C or B3 headers continue its trace in the queue.
//! let headers: HashMap<String, String> = HashMap::new();
//! handle.add_with_context("order-1".to_owned(), &propagation::extract(&headers));
//!
//! let run = tokio::spawn(async move {
//!     engine
//!         .run(|attempt: Attempt<String>| async move {
//!             let tracer = opentelemetry::global::tracer("handler");
//!             // The handler's spans nest under the attempt span.
//!             let mut span = tracer.start_with_context("charge card", &attempt.context());
//!             span.end();
//!             Ok::<(), std::io::Error>(())
//!         })
//!         .await
//! });
//! handle.shutdown_with_drain_queued().await;
//! run.await.unwrap();
//! # });
//! ```

pub mod attributes;
mod item;
mod items;
pub mod propagation;
#[cfg(feature = "stored-trace")]
pub mod stored;
mod tracer;

#[cfg(feature = "postgres")]
pub(crate) use item::{attempt_builder, end_attempt_span, item_builder, item_outcome, link_to};
pub(crate) use item::{interned, Item, Ranking, TraceConfig};
pub use item::{JobContext, DEFAULT_MAX_SPANS_PER_SEGMENT, DEFAULT_MAX_TRACE_AGE};
pub(crate) use items::{ItemTraces, KeyFormat};
pub(crate) use tracer::ErasedTracer;

//! The engine's tracer, its type erased without boxing each span twice.
//!
//! Why not `opentelemetry::global::BoxedTracer`: its spans are boxed once by the tracer and once
//! more when put in a `Context`, two allocations and two dynamic calls per span operation. Here
//! the span goes into its `Context` while its type is still known: one box, one dynamic call.

use opentelemetry::trace::{SpanBuilder, TraceContextExt, Tracer};
use opentelemetry::Context;

/// Any `Tracer`, starting each span straight into a `Context`.
pub(crate) trait ErasedTracer: Send + Sync {
    /// Starts `builder`'s span under `parent` (its parent span, if any, and what the sampler and
    /// span processors see), and returns `holder` with that span as its span.
    fn start_in(&self, builder: SpanBuilder, parent: &Context, holder: &Context) -> Context;
}

impl<T> ErasedTracer for T
where
    T: Tracer + Send + Sync,
    T::Span: Send + Sync + 'static,
{
    fn start_in(&self, builder: SpanBuilder, parent: &Context, holder: &Context) -> Context {
        holder.with_span(self.build_with_context(builder, parent))
    }
}

//! Sharing the tail-sampling processor with the tracer provider, so its counters stay readable.

use opentelemetry::Context;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{Span, SpanData, SpanProcessor};
use std::sync::Arc;
use std::time::Duration;
use traceq::sampler::TailSamplingProcessor;

/// A [`SpanProcessor`] forwarding to a shared [`TailSamplingProcessor`]: the provider owns its
/// processors, and the demo still wants the sampler's metrics after shutdown.
///
/// The provider's resource is not forwarded (that takes `&mut`); give it to the exporter
/// directly instead.
#[derive(Debug)]
pub(crate) struct SharedProcessor(Arc<TailSamplingProcessor>);

impl SharedProcessor {
    pub(crate) fn new(processor: Arc<TailSamplingProcessor>) -> Self {
        Self(processor)
    }
}

impl SpanProcessor for SharedProcessor {
    fn on_start(&self, span: &mut Span, cx: &Context) {
        self.0.on_start(span, cx);
    }

    fn on_end(&self, span: SpanData) {
        self.0.on_end(span);
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.0.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.0.shutdown_with_timeout(timeout)
    }
}

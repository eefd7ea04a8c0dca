//! The OpenTelemetry Transformation Language (OTTL) conditions an `ottl_condition` policy uses.
//!
//! Why our own: the Collector's OTTL is Go and reads pdata structs; ours must read the spans the
//! sampler already holds (the collector's encoded bytes, the SDK's `SpanData`) through
//! [`SpanView`](crate::SpanView), without decoding them. So a condition is parsed once, when the
//! configuration is read, into a small tree whose paths are resolved to span fields and whose
//! regular expressions are compiled; evaluating it per span allocates nothing for the usual
//! conditions (comparisons, `and` / `or` / `not`, `IsMatch`).
//!
//! The subset is what the Collector's examples and common configurations use: the span and
//! span-event paths of the OTTL span and span-event contexts that read scalars (listed in the
//! errors that refuse any other path), literals (strings, ints, doubles, booleans, `nil`, byte slices,
//! the `SPAN_KIND_*` and `STATUS_CODE_*` enums), comparisons, `+ - * /`, `and` / `or` / `not`
//! and parentheses, and the converters `IsMatch`, `IsString`, `IsInt`, `IsBool`, `IsDouble`,
//! `IsRootSpan`, `Len`, `Concat`, `TraceID` and `SpanID`. Anything else is refused when the
//! configuration is read, with an error naming it and where it is. Map and list attribute
//! values are not scalars here: a path to one reads as `nil`, as the other attribute policies
//! do not match them either.

use opentelemetry::KeyValue;

use crate::span::{EventView, SpanView};

mod eval;
mod lex;
mod parse;
#[cfg(test)]
mod tests;

/// Which OTTL context a condition is written for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Context {
    /// `ottl_condition.span`: one span.
    Span,
    /// `ottl_condition.spanevent`: one event of a span (its span is `span.`).
    SpanEvent,
}

/// Why a condition was refused: a message, and the column (from 1) it is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CompileError {
    pub(crate) at: Option<usize>,
    pub(crate) message: String,
}

impl CompileError {
    fn at(at: usize, message: impl Into<String>) -> Self {
        Self {
            at: Some(at),
            message: message.into(),
        }
    }

    fn whole(message: impl Into<String>) -> Self {
        Self {
            at: None,
            message: message.into(),
        }
    }
}

impl std::fmt::Display for CompileError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.at {
            Some(at) => write!(f, "at character {at}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

/// Why a condition could not be evaluated on one span (`Len(nil)`, `1 + "a"`, division by
/// zero): what an `error_mode` decides about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct EvalError(pub(crate) String);

/// One compiled condition.
#[derive(Debug)]
pub(crate) struct Condition {
    node: parse::Node,
}

impl Condition {
    /// Parses `text` for `context`.
    pub(crate) fn compile(text: &str, context: Context) -> Result<Self, CompileError> {
        let tokens = lex::tokens(text)?;
        Ok(Self {
            node: parse::condition(&tokens, text.chars().count() + 1, context)?,
        })
    }

    /// Evaluates a span condition on `span`.
    pub(crate) fn on_span<S: SpanView>(
        &self,
        span: &S,
        resource: &[KeyValue],
    ) -> Result<bool, EvalError> {
        let env: eval::Env<'_, S, NoEvent> = eval::Env {
            span,
            event: None,
            resource,
        };
        env.test(&self.node)
    }

    /// Evaluates a span event condition on `event` of `span`.
    pub(crate) fn on_event<S: SpanView, E: EventView>(
        &self,
        span: &S,
        event: &E,
        resource: &[KeyValue],
    ) -> Result<bool, EvalError> {
        let env = eval::Env {
            span,
            event: Some(event),
            resource,
        };
        env.test(&self.node)
    }
}

/// The event type of span conditions, which read no event.
enum NoEvent {}

impl EventView for NoEvent {
    fn name(&self) -> &str {
        match *self {}
    }
    fn time_unix_nano(&self) -> u64 {
        match *self {}
    }
    fn attribute(&self, _: &str) -> Option<crate::AttrValue<'_>> {
        match *self {}
    }
}

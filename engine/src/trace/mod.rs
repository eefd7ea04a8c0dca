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

pub mod attributes;
mod item;
mod items;
pub mod propagation;

pub(crate) use item::{span_name, TraceConfig};
pub use item::{JobContext, DEFAULT_MAX_SPANS_PER_SEGMENT, DEFAULT_MAX_TRACE_AGE};
pub(crate) use items::{ItemTraces, KeyFormat};

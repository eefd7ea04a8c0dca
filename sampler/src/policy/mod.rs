//! Sampling policies, in the OpenTelemetry Collector `tail_sampling` syntax.

mod attribute;
mod composite;
mod config;
mod latency;
mod ottl;
mod probabilistic;
mod rate;
mod set;
mod span_count;
mod status;

pub use attribute::{
    BooleanAttributeConfig, NumericAttributeConfig, StringAttributeConfig, TraceStateConfig,
};
pub use composite::{CompositeConfig, RateAllocationConfig};
pub use config::{AndConfig, DropConfig, NotConfig, PolicyConfig, PolicyType};
pub use latency::LatencyConfig;
pub use ottl::{OttlConditionConfig, OttlErrorMode};
pub use probabilistic::ProbabilisticConfig;
pub use rate::{BytesLimitingConfig, RateLimitingConfig};
pub use span_count::SpanCountConfig;
pub use status::StatusCodeConfig;

pub(crate) use set::{EvalContext, Outcome, PolicySet};

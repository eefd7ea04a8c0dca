//! OTLP spans as the collector holds them: the encoded bytes as received, plus the few fields the
//! sampler reads, so nothing is converted to SDK objects and a kept span leaves as it came.

#[cfg(feature = "client")]
pub mod grpc;
mod json;
mod request;
mod span;
mod validate;
mod wire;

pub use request::{
    decode_json_request, decode_request, decode_request_for_routing, encode_request,
    encode_request_into, DecodeError,
};
pub use span::{OtlpSpan, Retained};
pub use validate::{MAX_LIST_ITEMS, MAX_VALUE_DEPTH};

//! The OTLP receivers, gRPC and HTTP: both are axum servers that read each request within
//! bounds, decode it without copying spans out of their encoding, and offer the spans to a
//! `SpanSink` whole or not at all.

mod body;
mod grpc;
mod http;
mod listener;
mod server;
#[cfg(test)]
mod testing;
mod tls;

pub(crate) use listener::{HttpServer, ListenerLimits};
pub use server::ReceiverError;
pub(crate) use server::{authorization_is, OtlpReceiver, Protocol};

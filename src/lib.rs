//! traceq: a trace-aware work-queue engine with tail sampling.
//!
//! ```text
//!  producers ─▶ engine::Queue ─▶ engine::Engine workers ─▶ handler
//!                                      │ spans (OpenTelemetry API)
//!                                      ▼
//!                         sampler::TailSamplingProcessor ─▶ exporter::OtlpJsonFileExporter
//!
//!  OTLP in ─▶ collector::Collector (receivers, sampler::TailSampler) ─▶ exporter::export ─▶ OTLP out
//! ```
//!
//! This crate re-exports the workspace's libraries (`engine`, `sampler`, `exporter`, `collector`;
//! `traceq-core`'s clock is `engine::clock::Clock`, the same trait as `sampler::Clock`) and holds
//! the `traceq` command line.

pub use traceq_collector as collector;
pub use traceq_engine as engine;
pub use traceq_exporter as exporter;
pub use traceq_sampler as sampler;

/// The README's Rust examples, compiled and run as doc tests so they stay true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

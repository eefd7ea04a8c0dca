//! traceq-sampler: tail sampling (work in progress in this commit).

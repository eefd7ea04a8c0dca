//! The `traceq` command line.
fn main() {}

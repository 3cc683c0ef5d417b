//! kanon's end-to-end tests, in one binary.

mod benchmarks;
mod daemon;
mod daemon_ops;
mod hostile;
mod isolation;
mod plugins;
mod privacy;
mod upload;
mod vault;
mod work;

//! kanon's end-to-end tests, in one binary.

mod benchmarks;
mod daemon;
mod hostile;
mod isolation;
mod plugins;
mod upload;
mod vault;

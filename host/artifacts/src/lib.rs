//! The plugins of `plugins/`, compiled for `wasm32-wasip2` by this crate's
//! build script: the bundled ones as bytes, the hostile test fixtures as
//! paths, and [`foreach_hostile_fixture!`] to make a missing test a compile
//! error.

include!(concat!(env!("OUT_DIR"), "/plugins.rs"));

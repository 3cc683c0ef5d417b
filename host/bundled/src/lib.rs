//! The plugins the `kanon` binary ships (`emissions-benchmark`,
//! `absence-rate`), compiled for `wasm32-wasip2` by this crate's build
//! script, as bytes. The hostile fixtures are `kanon-fixtures`', which only
//! tests depend on.

include!(concat!(env!("OUT_DIR"), "/bundled.rs"));

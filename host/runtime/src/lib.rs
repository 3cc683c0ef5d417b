//! kanon's sandbox: loads plugins as WebAssembly components and runs them
//! over granted data, feeding their contributions to the gate.
//!
//! Architecture invariant: this is the only crate that touches wasmtime; its
//! API speaks in kanon's own types ([`Manifest`], [`RunRequest`],
//! [`RunReport`]).
//!
//! Each run gets its own `Store` and instance, from a pooled, precompiled
//! `InstancePre`, with a memory cap, an epoch deadline (which also fires
//! inside host calls), caps on what it passes to the host, and a WASI with
//! nothing behind it. What the plugin printed, its panics and its error text
//! go to the [`OwnerLog`], never into the [`RunFailure`] its caller sees.

mod bindings;
mod cache;
mod clocks;
mod compile;
mod data;
mod engine;
mod gate;
mod isolation;
mod manifest;
mod run;
mod sandbox;
mod validate;
mod wasi;

use std::path::PathBuf;
use std::time::Duration;

pub use cache::CacheOutcome;
pub use clocks::CancelToken;
pub use compile::{CompileLimits, CompileWorker, compile_worker_main};
pub use data::{DatasetHandle, ScanHandle};
pub use gate::TableHandle;
// The manifest is the gate's, so clients read it without the sandbox; its
// paths here stay.
pub use kanon_gate::{
    ColumnNeed, DatasetNeed, MAX_MANIFEST_BYTES, Manifest, ManifestError, ParamSpec, ParamType, ParamsError,
    PluginColumnType, is_printable, is_printable_char,
};
pub use manifest::{DataMismatch, check_data, plugin_column_type};
pub use run::{
    BenchmarkReport, BenchmarkRequest, FailureClass, LoadedPlugin, OwnerLog, RunFailure, RunReport,
    RunRequest, RunStats, Runtime, TenantInput,
};

/// What one run may use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunLimits {
    /// Linear memory a run may grow to, in bytes.
    pub memory_bytes: usize,
    /// Wall-clock budget of a run, in and out of host calls.
    pub timeout: Duration,
    /// Bytes a run may pass into host calls (names, contributions).
    pub max_bytes_to_host: u64,
    /// Contribution rows a run may send to the gate.
    pub max_contributions: u64,
    /// Datasets, scans and tables a run may hold open at once.
    pub max_open_resources: usize,
    /// Bytes of stdout and of stderr kept for the data owner.
    pub output_bytes: usize,
    /// Host memory a run makes the host hold outside the guest's own memory:
    /// decoded chunks and dictionaries of its open scans, the entities issued
    /// to it and the gate's per-entity slots.
    pub host_memory_bytes: usize,
}

impl Default for RunLimits {
    fn default() -> Self {
        Self {
            memory_bytes: 512 << 20,
            timeout: Duration::from_secs(120),
            max_bytes_to_host: 2 << 30,
            max_contributions: 100_000_000,
            max_open_resources: 256,
            output_bytes: 64 << 10,
            host_memory_bytes: 1 << 30,
        }
    }
}

/// How the runtime is set up.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// Where compiled components are cached; `None` compiles every time.
    pub cache_dir: Option<PathBuf>,
    /// Per-run limits.
    pub limits: RunLimits,
    /// Largest component accepted at upload.
    pub max_component_bytes: usize,
    /// Instances that may be alive at once (the pool's slots): every shared
    /// run holds one, every worker of an isolated run one at a time.
    pub concurrent_runs: u32,
    /// Threads an entity-isolated run spreads its entities over.
    pub isolated_workers: usize,
    /// Limits of the `manifest()` call at upload, which sees no data.
    pub manifest_timeout: Duration,
    /// Where uploads are compiled: `None` in this process, with only the
    /// static bounds of upload validation; a worker process adds
    /// `compile_limits`. Take a worker wherever uploads are not your own.
    pub compile_worker: Option<CompileWorker>,
    /// What one compile in the worker may cost.
    pub compile_limits: CompileLimits,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            cache_dir: None,
            limits: RunLimits::default(),
            max_component_bytes: 64 << 20,
            concurrent_runs: 16,
            isolated_workers: std::thread::available_parallelism().map_or(1, |n| n.get().min(4)),
            manifest_timeout: Duration::from_secs(5),
            compile_worker: None,
            compile_limits: CompileLimits::default(),
        }
    }
}

/// The runtime could not start.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("cannot configure the wasm engine: {0}")]
    Engine(String),
    #[error("cannot link the plugin interfaces: {0}")]
    Link(String),
}

/// Why an uploaded component was refused. None of these ran any plugin
/// code over data, so the details are safe to show the uploader.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum UploadError {
    #[error("the component is {size} bytes, more than the {max} allowed")]
    TooLarge { size: usize, max: usize },
    #[error("not a WebAssembly binary")]
    NotWasm,
    #[error("a core WebAssembly module, not a component: build for wasm32-wasip2")]
    CoreModule,
    #[error("the component does not compile: {0}")]
    Invalid(String),
    #[error("a function of the component is {size} bytes, more than the {max} allowed")]
    FunctionTooLarge { size: usize, max: usize },
    #[error("the component is too costly to compile: {0}")]
    CompileLimit(String),
    #[error("the component imports `{0}`, which plugins may not use")]
    RefusedImport(String),
    #[error("the component does not export the kanon:plugin world: {0}")]
    WrongWorld(String),
    #[error("the plugin's manifest() failed: {0}")]
    ManifestFailed(String),
    #[error(transparent)]
    Manifest(#[from] ManifestError),
}

/// A run could not start: the request does not fit the plugin. Nothing of
/// the plugin ran.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Params(#[from] ParamsError),
    #[error(transparent)]
    Data(#[from] DataMismatch),
    #[error("the run cannot be set up: {0}")]
    Gate(#[from] kanon_gate::GateError),
    #[error("all pooled instances are busy; try again")]
    Busy,
    #[error("a benchmark needs at least one tenant")]
    NoTenants,
}

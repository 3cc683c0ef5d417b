//! Compiling an uploaded component, which is the uploader's input to the
//! compiler: a component built to be slow or large to compile must cost the
//! host a bounded time and memory, and fail with a reason.
//!
//! [`validate::check_component`](crate::validate) has already refused
//! oversized functions and components that are not plugins. What remains is
//! compiled either here, with only those static bounds, or, when a
//! [`CompileWorker`] is configured (the `kanon` binary always does), in a
//! child process that sets its own memory (`RLIMIT_DATA`) and CPU limits and
//! is killed at the wall-clock deadline. The child hands back the serialized
//! artifact, which is also what the cache stores.

use std::ffi::OsString;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use wasmtime::Engine;
use wasmtime::component::Component;

use crate::engine::compile_engine;
use crate::{RuntimeConfig, UploadError};

/// A program that serves one compile when run: it calls
/// [`compile_worker_main`] (the `kanon` binary's hidden `compile-worker`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompileWorker {
    pub program: PathBuf,
    pub args: Vec<OsString>,
}

/// What compiling one upload may cost, in a worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompileLimits {
    /// Wall-clock time, after which the worker is killed.
    pub timeout: Duration,
    /// The worker's writable memory (`RLIMIT_DATA`: its heap and stacks,
    /// not the binary's mapped code).
    pub memory_bytes: u64,
}

impl Default for CompileLimits {
    fn default() -> Self {
        Self { timeout: Duration::from_secs(60), memory_bytes: 2 << 30 }
    }
}

/// A compiled component and its serialized form.
pub(crate) struct Compiled {
    pub(crate) component: Component,
    pub(crate) artifact: Vec<u8>,
}

/// Compile `bytes`, in the configured worker or in this process.
pub(crate) fn compile(
    engine: &Engine,
    config: &RuntimeConfig,
    bytes: &[u8],
) -> Result<Compiled, UploadError> {
    let Some(worker) = &config.compile_worker else {
        let component = Component::new(engine, bytes).map_err(|e| UploadError::Invalid(format!("{e:#}")))?;
        let artifact = component.serialize().map_err(|e| UploadError::Invalid(format!("{e:#}")))?;
        return Ok(Compiled { component, artifact });
    };
    let artifact = in_worker(worker, &config.compile_limits, bytes)?;
    // SAFETY: the artifact is what `Engine::precompile_component` returned
    // in a child process of this same binary, built with this engine's
    // settings; wasmtime checks its version and settings and refuses a
    // mismatch.
    #[allow(unsafe_code)]
    let component = unsafe { Component::deserialize(engine, &artifact) }
        .map_err(|e| UploadError::Invalid(format!("the compiled artifact does not load: {e:#}")))?;
    Ok(Compiled { component, artifact })
}

/// The header before the component on the worker's stdin: the worker's
/// heap (`RLIMIT_DATA`) and CPU-seconds limits, each a little-endian u64.
const HEADER_BYTES: usize = 16;

/// Most bytes read back from a worker, artifact or message.
const MAX_ARTIFACT_BYTES: u64 = 1 << 30;
const MAX_MESSAGE_BYTES: u64 = 4 << 10;

fn in_worker(worker: &CompileWorker, limits: &CompileLimits, bytes: &[u8]) -> Result<Vec<u8>, UploadError> {
    let failed = |what: String| UploadError::Invalid(format!("the compiler could not run: {what}"));
    let mut child = Command::new(&worker.program)
        .args(&worker.args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| failed(format!("{}: {e}", worker.program.display())))?;
    let (Some(mut stdin), Some(stdout), Some(stderr)) =
        (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        return Err(failed("no pipes to the worker".into()));
    };
    let mut header = Vec::with_capacity(HEADER_BYTES);
    header.extend(limits.memory_bytes.to_le_bytes());
    header.extend(limits.timeout.as_secs().max(1).to_le_bytes());
    let deadline = Instant::now() + limits.timeout;

    let (status, artifact, message) = std::thread::scope(|scope| {
        // A worker that dies early closes its stdin; the write then fails,
        // and the exit status says why.
        scope.spawn(move || {
            let _ = stdin.write_all(&header).and_then(|()| stdin.write_all(bytes));
        });
        let artifact = scope.spawn(|| read_bounded(stdout, MAX_ARTIFACT_BYTES));
        let message = scope.spawn(|| read_bounded(stderr, MAX_MESSAGE_BYTES));
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break Some(status),
                Ok(None) if Instant::now() >= deadline => {
                    let _ = child.kill();
                    let _ = child.wait();
                    break None;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(5)),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot wait for the compile worker");
                    let _ = child.kill();
                    let _ = child.wait();
                    break None;
                }
            }
        };
        let join = |h: std::thread::ScopedJoinHandle<'_, Vec<u8>>| h.join().unwrap_or_default();
        (status, join(artifact), join(message))
    });
    let message = String::from_utf8_lossy(&message).trim().to_owned();
    match status {
        None => Err(UploadError::CompileLimit(format!(
            "compiling took longer than {} s",
            limits.timeout.as_secs_f64()
        ))),
        Some(status) if status.success() => Ok(artifact),
        Some(status) if status.code() == Some(WORKER_REFUSED) => Err(UploadError::Invalid(message)),
        // Killed by a signal: SIGXCPU at the CPU limit, SIGABRT when an
        // allocation failed under the memory limit.
        Some(_) => Err(UploadError::CompileLimit(format!(
            "compiling needed more than {} MiB of memory or {} s of CPU",
            limits.memory_bytes >> 20,
            limits.timeout.as_secs()
        ))),
    }
}

fn read_bounded(from: impl Read, max: u64) -> Vec<u8> {
    let mut out = Vec::new();
    let _ = from.take(max).read_to_end(&mut out);
    out
}

/// The worker's exit code when the component does not compile.
const WORKER_REFUSED: i32 = 3;

/// Serve one compile: the header and the component on stdin, the artifact
/// on stdout. Limits itself first, so the compiler runs under them. Call it
/// from the program a [`CompileWorker`] names, and nothing else.
pub fn compile_worker_main() -> ExitCode {
    let mut input = Vec::new();
    if let Err(e) = std::io::stdin().lock().read_to_end(&mut input) {
        eprintln!("cannot read the component: {e}");
        return ExitCode::from(WORKER_REFUSED as u8);
    }
    let Some((header, bytes)) = input.split_first_chunk::<HEADER_BYTES>() else {
        eprintln!("no compile request on stdin");
        return ExitCode::from(WORKER_REFUSED as u8);
    };
    let field = |i: usize| u64::from_le_bytes(header[i * 8..i * 8 + 8].try_into().expect("8 bytes"));
    let (heap, cpu_secs) = (field(0), field(1));
    let limit = |resource, value| {
        rustix::process::setrlimit(
            resource,
            rustix::process::Rlimit { current: Some(value), maximum: Some(value) },
        )
    };
    if let Err(e) = limit(rustix::process::Resource::Data, heap)
        .and_then(|()| limit(rustix::process::Resource::Cpu, cpu_secs))
    {
        eprintln!("cannot limit the compiler: {e}");
        return ExitCode::FAILURE;
    }
    let artifact = compile_engine()
        .map_err(|e| e.to_string())
        .and_then(|engine| engine.precompile_component(bytes).map_err(|e| format!("{e:#}")));
    match artifact {
        Ok(artifact) => match std::io::stdout().lock().write_all(&artifact) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("cannot write the artifact: {e}");
                ExitCode::FAILURE
            }
        },
        Err(message) => {
            eprintln!("{message}");
            ExitCode::from(WORKER_REFUSED as u8)
        }
    }
}

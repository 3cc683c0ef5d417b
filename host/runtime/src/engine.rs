//! The process's one wasmtime `Engine`: pooling allocator, epoch
//! interruption, and the thread that advances the epoch.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use wasmtime::{Config, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use crate::{RuntimeConfig, RuntimeError};

/// How often the epoch advances: the granularity of CPU deadlines.
pub(crate) const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Core instances a Rust `wasm32-wasip2` component needs, with room to spare.
const CORE_INSTANCES_PER_COMPONENT: u32 = 16;
const MEMORIES_PER_COMPONENT: u32 = 2;
const TABLES_PER_COMPONENT: u32 = 8;

pub(crate) fn new_engine(config: &RuntimeConfig) -> Result<Engine, RuntimeError> {
    let slots = config.concurrent_runs.max(1);
    let mut pool = PoolingAllocationConfig::new();
    pool.total_component_instances(slots)
        .total_core_instances(slots * CORE_INSTANCES_PER_COMPONENT)
        .total_memories(slots * MEMORIES_PER_COMPONENT)
        .total_tables(slots * TABLES_PER_COMPONENT)
        .max_core_instances_per_component(CORE_INSTANCES_PER_COMPONENT)
        .max_memories_per_component(MEMORIES_PER_COMPONENT)
        .max_tables_per_component(TABLES_PER_COMPONENT)
        .max_memory_size(config.limits.memory_bytes)
        // Keep freed slots' pages mapped so the next instantiation finds them
        // without a page fault, and (where the kernel has PAGEMAP_SCAN, Linux
        // 6.7+) reset only the pages the last instance dirtied instead of
        // memsetting the whole resident part: an entity-isolated run frees
        // and takes a slot per entity.
        .pagemap_scan(Enabled::Auto)
        .linear_memory_keep_resident(16 << 20)
        .table_keep_resident(1 << 20);
    let mut wasm = code_config();
    wasm.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    Engine::new(&wasm).map_err(|e| RuntimeError::Engine(e.to_string()))
}

/// An engine that only compiles, for the compile worker: the same code
/// settings as [`new_engine`] (the allocation strategy does not shape
/// compiled code), without the pool's address-space reservation.
pub(crate) fn compile_engine() -> Result<Engine, RuntimeError> {
    Engine::new(&code_config()).map_err(|e| RuntimeError::Engine(e.to_string()))
}

/// The settings that shape compiled code and its checks, shared by the
/// engine that runs plugins and the one that compiles them.
fn code_config() -> Config {
    let mut wasm = Config::new();
    wasm.wasm_component_model(true)
        .epoch_interruption(true)
        .memory_init_cow(true)
        .parallel_compilation(true)
        .max_wasm_stack(1 << 20)
        // Explicit bounds checks instead of guard pages and signals: then a
        // pooled slot's memory stays mapped from one instance to the next,
        // and growing it is no `mprotect`. An entity-isolated run takes a
        // slot per entity, and those calls (four or five per entity) took
        // the process's memory-map lock in turn on every thread: measured,
        // 1.5-2x more entities per second without them, with the shared
        // group-by's throughput unchanged within the noise (BENCHMARKS.md).
        .signals_based_traps(false)
        .memory_guard_size(0);
    wasm
}

/// Advances the engine's epoch every [`EPOCH_TICK`] until dropped.
#[derive(Debug)]
pub(crate) struct EpochTicker {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl EpochTicker {
    pub(crate) fn start(engine: &Engine) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let weak = engine.weak();
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("kanon-epoch".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    match weak.upgrade() {
                        Some(engine) => engine.increment_epoch(),
                        None => break,
                    }
                }
            })
            .expect("spawn the epoch thread");
        Self { stop, thread: Some(thread) }
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

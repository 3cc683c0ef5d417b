//! One run's store: its limits, its empty WASI, and the state behind the
//! data and gate capabilities. A store serves one run and is dropped with it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use kanon_gate::{Gate, IssuedEntities, Policy, Scope, TenantIntake};
use kanon_vault::{DatasetVersion, PseudonymKey};
use wasmtime::component::ResourceTable;
use wasmtime::{ResourceLimiter, Store, UpdateDeadline};
use wasmtime_wasi::p2::pipe::{ClosedInputStream, MemoryOutputPipe};
use wasmtime_wasi::{HostWallClock, WasiCtx, WasiCtxView, WasiView};

use crate::RunLimits;
use crate::clocks::CancelToken;
use crate::isolation::IsolatedData;
use kanon_gate::DatasetNeed;

/// Why the host ended a run from inside a host call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Abort {
    Timeout,
    /// Ended from outside ([`CancelToken::cancel`]).
    Cancelled,
    Limit(String),
    Violation(String),
    /// The host could not serve a request (a vault read failed).
    Host(String),
}

impl std::fmt::Display for Abort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Abort::Timeout => f.write_str("the run passed its deadline"),
            Abort::Cancelled => f.write_str("the run was cancelled"),
            Abort::Limit(what) => write!(f, "limit reached: {what}"),
            Abort::Violation(what) => write!(f, "contract violation: {what}"),
            Abort::Host(what) => write!(f, "host fault: {what}"),
        }
    }
}

/// Counts what a run passes to the host, against its limits.
#[derive(Debug)]
pub(crate) struct Meter {
    pub(crate) limits: RunLimits,
    pub(crate) started: Instant,
    pub(crate) deadline: Instant,
    pub(crate) cancel: CancelToken,
    pub(crate) bytes_to_host: u64,
    pub(crate) contributions: u64,
    pub(crate) open_resources: usize,
    /// Host memory held for the run now, and at most so far.
    pub(crate) host_bytes: usize,
    pub(crate) peak_host_bytes: usize,
    /// What the issued entities and the gate's intake are charged for.
    pub(crate) issued_bytes: usize,
    pub(crate) intake_bytes: usize,
    /// The first abort, which classifies the run's failure.
    pub(crate) abort: Option<Abort>,
    /// Refused requests (undeclared datasets, columns, tables), for the
    /// data owner's log.
    pub(crate) refusals: Vec<String>,
}

impl Meter {
    /// End the run: the returned error traps the guest.
    pub(crate) fn abort(&mut self, abort: Abort) -> wasmtime::Error {
        let message = abort.to_string();
        self.abort.get_or_insert(abort);
        wasmtime::Error::msg(message)
    }

    /// Every host call and every epoch tick checks the wall clock and the
    /// cancel, so a guest meets both wherever it is.
    pub(crate) fn check_deadline(&mut self) -> wasmtime::Result<()> {
        if self.cancel.is_cancelled() {
            return Err(self.abort(Abort::Cancelled));
        }
        if Instant::now() >= self.deadline {
            return Err(self.abort(Abort::Timeout));
        }
        Ok(())
    }

    /// What every host call does first: meet the deadline, then pay for the
    /// bytes the guest passed in.
    pub(crate) fn enter_host_call(&mut self, bytes: usize) -> wasmtime::Result<()> {
        self.check_deadline()?;
        self.charge_bytes(bytes as u64)
    }

    pub(crate) fn charge_bytes(&mut self, bytes: u64) -> wasmtime::Result<()> {
        self.bytes_to_host = self.bytes_to_host.saturating_add(bytes);
        if self.bytes_to_host > self.limits.max_bytes_to_host {
            return Err(self.abort(Abort::Limit(format!(
                "more than {} bytes passed to the host",
                self.limits.max_bytes_to_host
            ))));
        }
        Ok(())
    }

    pub(crate) fn charge_contributions(&mut self, rows: u64) -> wasmtime::Result<()> {
        self.contributions = self.contributions.saturating_add(rows);
        if self.contributions > self.limits.max_contributions {
            return Err(self
                .abort(Abort::Limit(format!("more than {} contributions", self.limits.max_contributions))));
        }
        Ok(())
    }

    /// Move what one holder (a scan, the issued entities, the intake) is
    /// charged for from `held` to `now`, against the run's host memory
    /// budget. Returns `now`, the holder's new charge.
    pub(crate) fn hold(&mut self, held: usize, now: usize) -> wasmtime::Result<usize> {
        self.host_bytes = self.host_bytes - held + now;
        self.peak_host_bytes = self.peak_host_bytes.max(self.host_bytes);
        if self.host_bytes > self.limits.host_memory_bytes {
            return Err(self.abort(Abort::Limit(format!(
                "more than {} bytes of host memory",
                self.limits.host_memory_bytes
            ))));
        }
        Ok(now)
    }

    pub(crate) fn open_resource(&mut self) -> wasmtime::Result<()> {
        if self.open_resources >= self.limits.max_open_resources {
            return Err(self
                .abort(Abort::Limit(format!("more than {} open handles", self.limits.max_open_resources))));
        }
        self.open_resources += 1;
        Ok(())
    }

    pub(crate) fn close_resource(&mut self) {
        self.open_resources = self.open_resources.saturating_sub(1);
    }

    pub(crate) fn refuse(&mut self, what: String) {
        if self.refusals.len() < 100 {
            self.refusals.push(truncate(what, 256));
        }
    }
}

/// `text` cut to at most `max` bytes on a character boundary, marked when
/// cut: what a plugin says is kept for its owner, but not without bound.
pub(crate) fn truncate(mut text: String, max: usize) -> String {
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        let cut = text.len() - end;
        text.truncate(end);
        text.push_str(&format!("… [{cut} more bytes]"));
    }
    text
}

/// Caps linear memory and tables, remembering a refusal so an out-of-memory
/// trap is classified as such.
#[derive(Debug)]
pub(crate) struct Limiter {
    memory_bytes: usize,
    pub(crate) peak_memory: usize,
    pub(crate) denied: bool,
}

/// Table elements a component may grow to.
const MAX_TABLE_ELEMENTS: usize = 100_000;

impl ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.memory_bytes {
            self.denied = true;
            return Ok(false);
        }
        self.peak_memory = self.peak_memory.max(desired);
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > MAX_TABLE_ELEMENTS {
            self.denied = true;
            return Ok(false);
        }
        Ok(true)
    }
}

/// A dataset granted to a run: the fixed version and the columns the
/// manifest reads.
#[derive(Debug)]
pub(crate) struct Grant {
    pub(crate) dataset: DatasetVersion,
    pub(crate) need: DatasetNeed,
}

/// What a run may read, and with which pseudonym key.
#[derive(Debug)]
pub(crate) struct DataState {
    /// Shared by every instance of an isolated run.
    pub(crate) grants: Arc<BTreeMap<String, Grant>>,
    pub(crate) key: PseudonymKey,
    /// In an entity-isolated run: the run's data, read once, and this
    /// instance's entity (an index into [`IsolatedData::entities`]). Scans
    /// then see that entity's rows only.
    pub(crate) entity: Option<(Arc<IsolatedData>, usize)>,
}

/// The data of one run's store.
pub(crate) struct StoreState {
    wasi: WasiCtx,
    pub(crate) resources: ResourceTable,
    pub(crate) limiter: Limiter,
    pub(crate) meter: Meter,
    pub(crate) data: DataState,
    pub(crate) intake: TenantIntake,
    pub(crate) issued: IssuedEntities,
    stdout: MemoryOutputPipe,
    stderr: MemoryOutputPipe,
}

impl WasiView for StoreState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.resources }
    }
}

/// The wall clock a plugin sees: the run's start, to the second, standing
/// still. A plugin learns when it ran, nothing finer.
struct FrozenWallClock(Duration);

impl HostWallClock for FrozenWallClock {
    fn resolution(&self) -> Duration {
        Duration::from_secs(1)
    }
    fn now(&self) -> Duration {
        self.0
    }
}

impl StoreState {
    pub(crate) fn new(
        limits: RunLimits,
        cancel: CancelToken,
        seed: [u8; 32],
        data: DataState,
        intake: TenantIntake,
    ) -> Self {
        let stdout = MemoryOutputPipe::new(limits.output_bytes);
        let stderr = MemoryOutputPipe::new(limits.output_bytes);
        let start = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        // No arguments, environment, directories or network: the builder
        // starts empty, and sockets and files are never linked at all.
        let wasi = WasiCtx::builder()
            .stdin(ClosedInputStream)
            .stdout(stdout.clone())
            .stderr(stderr.clone())
            .wall_clock(FrozenWallClock(Duration::from_secs(start.as_secs())))
            // Repeating a request repeats its randomness, so a coin flip in
            // the plugin cannot make two runs of one request differ.
            .secure_random(SeededRandom::new(&seed, b"secure"))
            .insecure_random(SeededRandom::new(&seed, b"insecure"))
            .insecure_random_seed(u128::from_le_bytes(
                *blake3::keyed_hash(&seed, b"insecure-seed").as_bytes().first_chunk().expect("32 bytes"),
            ))
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .build();
        // The monotonic clock is `clocks`' own, bounded by this deadline.
        let started = Instant::now();
        let deadline = started + limits.timeout;
        Self {
            wasi,
            resources: ResourceTable::new(),
            limiter: Limiter { memory_bytes: limits.memory_bytes, peak_memory: 0, denied: false },
            meter: Meter {
                limits,
                started,
                deadline,
                cancel,
                bytes_to_host: 0,
                contributions: 0,
                open_resources: 0,
                host_bytes: 0,
                peak_host_bytes: 0,
                issued_bytes: 0,
                intake_bytes: 0,
                abort: None,
                refusals: Vec::new(),
            },
            data,
            intake,
            issued: IssuedEntities::new(),
            stdout,
            stderr,
        }
    }

    /// A store that grants no data and declares no tables: for the
    /// `manifest()` call at upload, and for measuring instantiation.
    pub(crate) fn without_data(limits: RunLimits) -> Self {
        let data = DataState {
            grants: Arc::default(),
            key: PseudonymKey::for_run(&[0; 32], b"no data"),
            entity: None,
        };
        let gate = Gate::new(Vec::new(), Policy::default(), Scope::Tenant).expect("no tables is valid");
        Self::new(limits, CancelToken::new(), [0; 32], data, gate.intake())
    }

    /// The resource table and the meter, borrowed together.
    pub(crate) fn resources_and_meter(&mut self) -> (&mut ResourceTable, &mut Meter) {
        (&mut self.resources, &mut self.meter)
    }

    /// What the plugin wrote to stdout and stderr.
    pub(crate) fn output(&self) -> (String, String) {
        let text = |pipe: &MemoryOutputPipe| String::from_utf8_lossy(&pipe.contents()).into_owned();
        (text(&self.stdout), text(&self.stderr))
    }
}

/// `wasi:random` for one run: blake3's extendable output under the run's
/// seed and a purpose, a stream no one without the seed can predict.
struct SeededRandom(blake3::OutputReader);

impl SeededRandom {
    fn new(seed: &[u8; 32], purpose: &[u8]) -> Self {
        Self(blake3::Hasher::new_keyed(seed).update(purpose).finalize_xof())
    }
}

impl rand_core::TryRng for SeededRandom {
    type Error = std::convert::Infallible;

    fn try_next_u32(&mut self) -> Result<u32, Self::Error> {
        let mut bytes = [0; 4];
        self.0.fill(&mut bytes);
        Ok(u32::from_le_bytes(bytes))
    }

    fn try_next_u64(&mut self) -> Result<u64, Self::Error> {
        let mut bytes = [0; 8];
        self.0.fill(&mut bytes);
        Ok(u64::from_le_bytes(bytes))
    }

    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Self::Error> {
        self.0.fill(dst);
        Ok(())
    }
}

/// A store for one run, with its limits in force: at every epoch tick the
/// guest's code stops to meet the deadline and the cancel.
pub(crate) fn new_store(engine: &wasmtime::Engine, state: StoreState) -> Store<StoreState> {
    let mut store = Store::new(engine, state);
    store.limiter(|s| &mut s.limiter);
    store.set_epoch_deadline(1);
    store.epoch_deadline_callback(|mut store| {
        store.data_mut().meter.check_deadline()?;
        Ok(UpdateDeadline::Continue(1))
    });
    store
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meter(limits: RunLimits) -> Meter {
        StoreState::without_data(limits).meter
    }

    #[test]
    fn each_cap_aborts_with_its_reason_and_the_first_abort_sticks() {
        let mut m = meter(RunLimits { max_open_resources: 2, ..RunLimits::default() });
        m.open_resource().unwrap();
        m.open_resource().unwrap();
        assert!(m.open_resource().is_err());
        assert_eq!(m.abort, Some(Abort::Limit("more than 2 open handles".into())));
        m.close_resource();
        assert!(m.check_deadline().is_ok(), "a later check does not replace the first abort");

        let mut m = meter(RunLimits { max_bytes_to_host: 10, ..RunLimits::default() });
        m.charge_bytes(10).unwrap();
        assert!(m.charge_bytes(1).is_err());
        assert!(matches!(m.abort, Some(Abort::Limit(ref what)) if what.contains("bytes")));

        let mut m = meter(RunLimits { max_contributions: 5, ..RunLimits::default() });
        assert!(m.charge_contributions(6).is_err());

        let mut m = meter(RunLimits { host_memory_bytes: 100, ..RunLimits::default() });
        let scan = m.hold(0, 60).unwrap();
        let other = m.hold(0, 40).unwrap();
        m.hold(scan, 10).unwrap();
        assert_eq!(m.host_bytes, 50, "a holder's charge moves, it does not add up");
        assert!(m.hold(other, 91).is_err());
        assert!(matches!(m.abort, Some(Abort::Limit(ref what)) if what.contains("host memory")));

        let mut m = meter(RunLimits { timeout: Duration::ZERO, ..RunLimits::default() });
        assert!(m.check_deadline().is_err());
        assert_eq!(m.abort, Some(Abort::Timeout));
    }

    #[test]
    fn refusals_are_kept_but_bounded() {
        let mut m = meter(RunLimits::default());
        for i in 0..500 {
            m.refuse(format!("refusal {i} {}", "x".repeat(10_000)));
        }
        assert_eq!(m.refusals.len(), 100);
        assert!(m.refusals.iter().all(|r| r.len() < 300), "{}", m.refusals[0].len());
    }

    #[test]
    fn truncation_respects_characters_and_says_how_much() {
        assert_eq!(truncate("short".into(), 10), "short");
        assert_eq!(truncate("ééé".into(), 3), "é… [4 more bytes]");
    }
}

//! Loading plugins and running them: the one place a run's life is written
//! down, from request checks to release.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kanon_gate::dp::DpError;
use kanon_gate::{
    Gate, Isolation, OwnPosition, Policy, Release, ReleaseHistory, ReleaseRecord, Scope, TenantIntake,
};
use kanon_vault::{DatasetVersion, PseudonymKey};
use rand_010::SeedableRng;
use rand_010::rngs::{ChaCha20Rng, SysRng};
use serde::{Deserialize, Serialize};
use wasmtime::component::Linker;
use wasmtime::{Engine, Store, Trap};

use crate::bindings::{Plugin, PluginPre};
use crate::cache::{ArtifactCache, CacheOutcome};
use crate::clocks::CancelToken;
use crate::engine::{EpochTicker, new_engine};
use crate::sandbox::{Abort, DataState, Grant, StoreState, new_store, truncate};
use crate::{RunError, RunLimits, RuntimeConfig, RuntimeError, UploadError, compile, validate};
use kanon_gate::Manifest;

/// The sandbox: one engine, one linker, a compiled-artifact cache.
pub struct Runtime {
    engine: Engine,
    linker: Linker<StoreState>,
    cache: ArtifactCache,
    config: RuntimeConfig,
    _ticker: EpochTicker,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime").field("config", &self.config).finish_non_exhaustive()
    }
}

/// A validated, compiled plugin, ready to instantiate.
pub struct LoadedPlugin {
    /// blake3 of the component bytes, hex: what tenants approve.
    pub hash: String,
    /// Size of the component in bytes.
    pub size: usize,
    /// What the plugin declared it reads and emits.
    pub manifest: Manifest,
    /// Whether compiling was skipped thanks to the cache.
    pub cache: CacheOutcome,
    pre: PluginPre<StoreState>,
}

impl std::fmt::Debug for LoadedPlugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedPlugin")
            .field("hash", &self.hash)
            .field("manifest", &self.manifest.name)
            .finish()
    }
}

/// One run: the data granted, the params, the policy.
#[derive(Debug, Clone)]
pub struct RunRequest {
    /// Unique per run: pseudonyms are keyed by it.
    pub run_id: String,
    /// The datasets granted to the run, by the names the manifest uses.
    pub datasets: BTreeMap<String, DatasetVersion>,
    /// JSON object of parameters.
    pub params: String,
    /// The disclosure rules the release answers to.
    pub policy: Policy,
    /// The data owner's secret, from which the run's pseudonym key derives.
    pub tenant_secret: [u8; 32],
    /// Ends the run from outside; [`CancelToken::new`] when nobody will.
    pub cancel: CancelToken,
}

/// One tenant's part of a benchmark run.
#[derive(Debug, Clone)]
pub struct TenantInput {
    /// The tenant's name, for its owner log.
    pub tenant: String,
    /// The tenant's datasets granted to the run.
    pub datasets: BTreeMap<String, DatasetVersion>,
    /// The tenant's secret, from which its pseudonym key for the run derives.
    pub secret: [u8; 32],
    /// The tenant's ordinal in the benchmark, the same in every version:
    /// what the subtraction rule compares tenant sets by.
    pub member: u32,
}

/// A vendor benchmark run: one isolated instance per opted-in tenant,
/// merged by the gate under the tenant rules.
#[derive(Debug, Clone)]
pub struct BenchmarkRequest {
    pub run_id: String,
    pub tenants: Vec<TenantInput>,
    /// JSON object of parameters, the same for every tenant.
    pub params: String,
    /// The strictest policy of every participant (see [`Policy::for_run`]).
    pub policy: Policy,
    /// What the benchmark's earlier versions released.
    pub history: ReleaseHistory,
    /// The number of the version this run releases.
    pub version: u64,
    /// Ends the run, every tenant's instance, from outside.
    pub cancel: CancelToken,
}

/// Why a run failed, as its caller may see it: a class, never the plugin's
/// own words.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FailureClass {
    /// The plugin trapped (panic, unreachable, stack overflow, exit).
    Trap,
    /// The run passed its deadline.
    Timeout,
    /// The run was cancelled from outside.
    Cancelled,
    /// The run hit its memory cap.
    Memory,
    /// The run passed too many bytes, contributions or handles to the host.
    Limit,
    /// The plugin broke the gate's contract (unknown entity, code outside a
    /// domain, malformed batch).
    ContractViolation,
    /// The plugin returned an error.
    PluginError,
    /// The host failed to serve the run (a vault read failed): not the
    /// plugin's doing.
    HostError,
}

impl FailureClass {
    /// A stable code for scripts and APIs.
    pub fn code(self) -> &'static str {
        match self {
            FailureClass::Trap => "trap",
            FailureClass::Timeout => "timeout",
            FailureClass::Cancelled => "cancelled",
            FailureClass::Memory => "memory",
            FailureClass::Limit => "limit",
            FailureClass::ContractViolation => "contract-violation",
            FailureClass::PluginError => "plugin-error",
            FailureClass::HostError => "host-error",
        }
    }
}

/// A failed run as its caller sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunFailure {
    pub class: FailureClass,
}

impl std::fmt::Display for RunFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the plugin run failed ({}); nothing was released", self.class.code())
    }
}

impl std::error::Error for RunFailure {}

/// What the plugin said, for the data owner's eyes only: it may carry data.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OwnerLog {
    pub stdout: String,
    pub stderr: String,
    /// The trap, host abort or plugin error behind a failure.
    pub error: Option<String>,
    /// Requests the host refused (undeclared datasets, columns, tables).
    pub refusals: Vec<String>,
    /// The class of the failure, which the caller sees only as "failed":
    /// a plugin picks its class, so it could carry a few bits a run.
    pub failure: Option<FailureClass>,
    /// In an entity-isolated run: how many entities' instances failed, by
    /// class. Each such entity is absent from the release; the run goes on.
    #[serde(default)]
    pub entity_failures: BTreeMap<FailureClass, u64>,
}

/// Figures of a run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunStats {
    pub duration: Duration,
    pub instantiation: Duration,
    pub contributions: u64,
    pub bytes_to_host: u64,
    pub dropped_contributions: u64,
    pub entities_issued: usize,
    pub peak_memory_bytes: usize,
    /// Most host memory the run's scans held at once.
    pub peak_host_bytes: usize,
    /// In an entity-isolated run: the entities run, one instance each, and
    /// how many of those failed. `instantiation` is then the median.
    pub entities_run: usize,
    pub entities_failed: usize,
}

/// The result of a run.
#[derive(Debug, Clone)]
pub struct RunReport {
    pub run_id: String,
    pub plugin_hash: String,
    /// blake3 of the params as the plugin received them.
    pub params_hash: String,
    pub outcome: Result<Release, RunFailure>,
    pub owner_log: OwnerLog,
    pub stats: RunStats,
}

/// The result of a benchmark run. If any tenant's instance fails, nothing
/// is released.
#[derive(Debug, Clone)]
pub struct BenchmarkReport {
    pub run_id: String,
    pub plugin_hash: String,
    pub params_hash: String,
    pub outcome: Result<Release, RunFailure>,
    /// Per tenant, in request order: its owner log (for that tenant only)
    /// and the figures of its instance.
    pub tenants: Vec<(String, OwnerLog, RunStats)>,
    /// Per tenant, in request order, when there is a release: what it sees
    /// of itself next to the peers.
    pub positions: Vec<OwnPosition>,
    /// The history the next version is checked against (the request's own
    /// when nothing was released).
    pub history: ReleaseHistory,
}

impl RunReport {
    /// What the audit log keeps of the release, if there was one.
    pub fn record(&self) -> Option<ReleaseRecord> {
        self.outcome.as_ref().ok().map(|r| r.record(&self.plugin_hash, &self.params_hash))
    }
}

impl BenchmarkReport {
    /// What the audit log keeps of the release, if there was one.
    pub fn record(&self) -> Option<ReleaseRecord> {
        self.outcome.as_ref().ok().map(|r| r.record(&self.plugin_hash, &self.params_hash))
    }
}

/// One tenant's part of a run: what every instance of it is given.
#[derive(Clone, Copy)]
pub(crate) struct TenantRun<'a> {
    pub(crate) plugin: &'a LoadedPlugin,
    pub(crate) gate: &'a Gate,
    /// Keys the run's pseudonyms.
    pub(crate) run_id: &'a str,
    pub(crate) datasets: &'a BTreeMap<String, DatasetVersion>,
    /// The tenant's secret: its pseudonym key and its instances' seeds derive
    /// from it.
    pub(crate) secret: &'a [u8; 32],
    /// The params as checked and completed from the manifest.
    pub(crate) params: &'a str,
    pub(crate) cancel: &'a CancelToken,
}

/// What one tenant's run left behind: its one instance's, or in an
/// entity-isolated run every entity's instance's.
pub(crate) struct InstanceRun {
    pub(crate) result: Result<(), FailureClass>,
    pub(crate) intake: TenantIntake,
    pub(crate) owner_log: OwnerLog,
    pub(crate) stats: RunStats,
}

impl Runtime {
    /// Start the engine, link the plugin world and start the epoch clock.
    pub fn new(config: RuntimeConfig) -> Result<Self, RuntimeError> {
        let engine = new_engine(&config)?;
        let mut linker = Linker::new(&engine);
        let link = |e: wasmtime::Error| RuntimeError::Link(e.to_string());
        crate::wasi::add_to_linker(&mut linker).map_err(link)?;
        crate::data::add_to_linker(&mut linker).map_err(link)?;
        crate::gate::add_to_linker(&mut linker).map_err(link)?;
        let ticker = EpochTicker::start(&engine);
        Ok(Self {
            cache: ArtifactCache::new(config.cache_dir.clone()),
            engine,
            linker,
            config,
            _ticker: ticker,
        })
    }

    /// The runtime's configuration.
    pub fn config(&self) -> &RuntimeConfig {
        &self.config
    }

    /// Validate, compile (or load from cache) and read the manifest of an
    /// uploaded component. Nothing runs over data here.
    pub fn load(&self, bytes: &[u8]) -> Result<LoadedPlugin, UploadError> {
        validate::check_bytes(bytes, self.config.max_component_bytes)?;
        validate::check_component(bytes)?;
        let hash = blake3::hash(bytes);
        let (component, compiled) = match self.cache.lookup(&self.engine, &hash) {
            Some(component) => (component, None),
            None => {
                let compiled = compile::compile(&self.engine, &self.config, bytes)?;
                (compiled.component, Some(compiled.artifact))
            }
        };
        let pre =
            self.linker.instantiate_pre(&component).map_err(|e| UploadError::WrongWorld(format!("{e:#}")))?;
        let pre = PluginPre::new(pre).map_err(|e| UploadError::WrongWorld(format!("{e:#}")))?;

        // The manifest call gets no data and no tables, and a short deadline.
        let limits = RunLimits { timeout: self.config.manifest_timeout, ..self.config.limits.clone() };
        let mut store = new_store(&self.engine, StoreState::without_data(limits));
        let manifest =
            pre.instantiate(&mut store).and_then(|plugin| plugin.call_manifest(&mut store)).map_err(|e| {
                let class = classify(&e, store.data());
                let (_, stderr) = store.data().output();
                UploadError::ManifestFailed(format!("{}: {e:#}\n{stderr}", class.code()))
            })?;
        let manifest = crate::manifest::from_wit(manifest)?;
        let cache = match compiled {
            Some(artifact) => self.cache.store(&self.engine, &hash, &artifact),
            None => CacheOutcome::Hit,
        };
        Ok(LoadedPlugin { hash: hash.to_hex().to_string(), size: bytes.len(), manifest, cache, pre })
    }

    /// Run a plugin over one tenant's granted data and release what the
    /// gate allows.
    pub fn run(&self, plugin: &LoadedPlugin, request: RunRequest) -> Result<RunReport, RunError> {
        let started = Instant::now();
        let params = plugin.manifest.check_params(&request.params)?;
        crate::check_data(&plugin.manifest, &request.datasets)?;
        let gate = Gate::new(plugin.manifest.outputs.clone(), request.policy, Scope::Tenant)?;
        let mut run = self.run_tenant(&TenantRun {
            plugin,
            gate: &gate,
            run_id: &request.run_id,
            datasets: &request.datasets,
            secret: &request.tenant_secret,
            params: &params,
            cancel: &request.cancel,
        });
        let outcome = match run.result {
            Ok(()) => release(&gate, &run.intake),
            Err(class) => Err(RunFailure { class }),
        };
        run.stats.duration = started.elapsed();
        Ok(RunReport {
            run_id: request.run_id,
            plugin_hash: plugin.hash.clone(),
            params_hash: params_hash(&params),
            outcome,
            owner_log: run.owner_log,
            stats: run.stats,
        })
    }

    /// Run a plugin once per tenant, each in its own store and instance, and
    /// release what the gate allows of the merged contributions. Nothing a
    /// plugin holds survives from one tenant's instance into the next.
    pub fn run_benchmark(
        &self,
        plugin: &LoadedPlugin,
        request: BenchmarkRequest,
    ) -> Result<BenchmarkReport, RunError> {
        if request.tenants.is_empty() {
            return Err(RunError::NoTenants);
        }
        let params = plugin.manifest.check_params(&request.params)?;
        for tenant in &request.tenants {
            crate::check_data(&plugin.manifest, &tenant.datasets)?;
        }
        let gate = Gate::new(plugin.manifest.outputs.clone(), request.policy, Scope::Benchmark)?;
        let mut intakes = Vec::with_capacity(request.tenants.len());
        let mut tenants = Vec::with_capacity(request.tenants.len());
        let mut failure = None;
        for tenant in &request.tenants {
            let started = Instant::now();
            let mut run = self.run_tenant(&TenantRun {
                plugin,
                gate: &gate,
                run_id: &request.run_id,
                datasets: &tenant.datasets,
                secret: &tenant.secret,
                params: &params,
                cancel: &request.cancel,
            });
            run.stats.duration = started.elapsed();
            if let Err(class) = run.result {
                failure.get_or_insert(RunFailure { class });
            }
            intakes.push(run.intake);
            tenants.push((tenant.tenant.clone(), run.owner_log, run.stats));
        }
        let members: Vec<u32> = request.tenants.iter().map(|t| t.member).collect();
        let version = match failure {
            None if gate.dp_plan().is_some() => dp_rng()
                .and_then(|mut rng| gate.release_benchmark_dp(&intakes, &request.history, &mut rng))
                .map_err(|e| host_error(&e)),
            None => Ok(gate.release_benchmark(&intakes, &members, &request.history, request.version)),
            Some(failure) => Err(failure),
        };
        let (outcome, positions, history) = match version {
            Ok(version) => (Ok(version.release), version.positions, version.history),
            Err(failure) => (Err(failure), Vec::new(), request.history),
        };
        Ok(BenchmarkReport {
            run_id: request.run_id,
            plugin_hash: plugin.hash.clone(),
            params_hash: params_hash(&params),
            outcome,
            tenants,
            positions,
            history,
        })
    }

    /// One tenant's part of a run: one instance over all its data, or, when
    /// the policy asks for entity isolation, one per entity.
    fn run_tenant(&self, run: &TenantRun<'_>) -> InstanceRun {
        match run.gate.policy().isolation {
            Isolation::Entity => self.run_isolated(run),
            Isolation::Shared => self.run_shared(run),
        }
    }

    /// One tenant's instance, in a fresh store, feeding a fresh intake.
    fn run_shared(&self, run: &TenantRun<'_>) -> InstanceRun {
        let TenantRun { plugin, gate, run_id, datasets, secret, params, cancel } = *run;
        let grants = plugin
            .manifest
            .inputs
            .iter()
            .map(|need| {
                let dataset = datasets[&need.name].clone();
                (need.name.clone(), Grant { dataset, need: need.clone() })
            })
            .collect();
        let key = PseudonymKey::for_run(secret, run_id.as_bytes());
        let seed = random_seed(secret, &plugin.hash, params, datasets);
        let state = StoreState::new(
            self.config.limits.clone(),
            cancel.clone(),
            seed,
            DataState { grants: Arc::new(grants), key, entity: None },
            gate.intake(),
        );
        let (result, state, instantiation) = self.instance(plugin, state, params);
        let (stdout, stderr) = state.output();
        let (result, error) = match result {
            Ok(()) => (Ok(()), None),
            Err((class, error)) => (Err(class), Some(truncate(error, self.config.limits.output_bytes))),
        };
        let stats = RunStats {
            duration: Duration::ZERO,
            instantiation,
            contributions: state.meter.contributions,
            bytes_to_host: state.meter.bytes_to_host,
            dropped_contributions: state.intake.dropped_contributions(),
            entities_issued: state.issued.len(),
            peak_memory_bytes: state.limiter.peak_memory,
            peak_host_bytes: state.meter.peak_host_bytes,
            entities_run: 0,
            entities_failed: 0,
        };
        InstanceRun {
            result,
            owner_log: OwnerLog {
                stdout,
                stderr,
                error,
                refusals: state.meter.refusals,
                failure: result.err(),
                entity_failures: BTreeMap::new(),
            },
            intake: state.intake,
            stats,
        }
    }

    /// Instantiate `plugin` in a fresh store over `state` and call its
    /// `run(params)`: how the run went, the store's state after it, and how
    /// long instantiating took.
    #[allow(clippy::type_complexity)]
    pub(crate) fn instance(
        &self,
        plugin: &LoadedPlugin,
        state: StoreState,
        params: &str,
    ) -> (Result<(), (FailureClass, String)>, StoreState, Duration) {
        let mut store = new_store(&self.engine, state);
        let instantiating = Instant::now();
        let instance = plugin.pre.instantiate(&mut store);
        let instantiation = instantiating.elapsed();
        let result = match instance {
            Ok(instance) => call_run(&instance, &mut store, params),
            Err(e) => Err((classify(&e, store.data()), format!("instantiation failed: {e:#}"))),
        };
        (result, store.into_data(), instantiation)
    }

    /// Instantiate a plugin in a fresh store and drop it: what every run pays
    /// before the plugin's code starts. For benchmarks.
    pub fn instantiate_empty(&self, plugin: &LoadedPlugin) -> Result<Duration, String> {
        let start = Instant::now();
        let mut store = new_store(&self.engine, StoreState::without_data(self.config.limits.clone()));
        plugin.pre.instantiate(&mut store).map_err(|e| format!("{e:#}"))?;
        Ok(start.elapsed())
    }
}

/// The seed of an entity's `wasi:random` in an isolated run: the plugin, the
/// params and the entity, keyed by the tenant's secret. Nothing in it depends
/// on another entity's data, nor on the dataset's version (which would).
pub(crate) fn entity_seed(secret: &[u8; 32], plugin_hash: &str, params: &str, entity: u64) -> [u8; 32] {
    let mut hasher =
        blake3::Hasher::new_keyed(&blake3::derive_key("kanon wasi:random entity seed v1", secret));
    hasher
        .update(plugin_hash.as_bytes())
        .update(&(params.len() as u64).to_le_bytes())
        .update(params.as_bytes())
        .update(&entity.to_le_bytes());
    *hasher.finalize().as_bytes()
}

/// The seed of a run's `wasi:random`: the same for the same plugin, params
/// and dataset versions, so a repeated request repeats its randomness; keyed
/// by the tenant's secret, so no one else can predict it.
fn random_seed(
    secret: &[u8; 32],
    plugin_hash: &str,
    params: &str,
    datasets: &BTreeMap<String, DatasetVersion>,
) -> [u8; 32] {
    let mut hasher = blake3::Hasher::new_keyed(&blake3::derive_key("kanon wasi:random seed v1", secret));
    hasher
        .update(plugin_hash.as_bytes())
        .update(&(params.len() as u64).to_le_bytes())
        .update(params.as_bytes());
    for (name, dataset) in datasets {
        hasher
            .update(&(name.len() as u64).to_le_bytes())
            .update(name.as_bytes())
            .update(&(dataset.name().len() as u64).to_le_bytes())
            .update(dataset.name().as_bytes())
            .update(&dataset.version().to_le_bytes());
    }
    *hasher.finalize().as_bytes()
}

/// blake3 of the params as the plugin received them, hex.
fn params_hash(params: &str) -> String {
    blake3::hash(params.as_bytes()).to_hex().to_string()
}

fn call_run(
    instance: &Plugin,
    store: &mut Store<StoreState>,
    params: &str,
) -> Result<(), (FailureClass, String)> {
    match instance.call_run(&mut *store, params) {
        Ok(Ok(())) => Ok(()),
        Ok(Err(message)) => Err((FailureClass::PluginError, message)),
        Err(e) => Err((classify(&e, store.data()), format!("{e:?}"))),
    }
}

/// What ended a run, from the host's own records first, then the trap.
fn classify(error: &wasmtime::Error, state: &StoreState) -> FailureClass {
    match &state.meter.abort {
        Some(Abort::Timeout) => return FailureClass::Timeout,
        Some(Abort::Cancelled) => return FailureClass::Cancelled,
        Some(Abort::Limit(_)) => return FailureClass::Limit,
        Some(Abort::Violation(_)) => return FailureClass::ContractViolation,
        Some(Abort::Host(_)) => return FailureClass::HostError,
        None => {}
    }
    if error.downcast_ref::<Trap>() == Some(&Trap::Interrupt) {
        return FailureClass::Timeout;
    }
    if state.limiter.denied {
        return FailureClass::Memory;
    }
    FailureClass::Trap
}

/// What the gate releases of one tenant's intake. Under a differentially
/// private policy the noise comes from ChaCha20 seeded by the operating
/// system, never from the run's request: a replay of the request gets the
/// stored release, not the same noise drawn again.
fn release(gate: &Gate, intake: &TenantIntake) -> Result<Release, RunFailure> {
    let intakes = std::slice::from_ref(intake);
    if gate.dp_plan().is_none() {
        return Ok(gate.release(intakes));
    }
    dp_rng().and_then(|mut rng| gate.release_dp(intakes, &mut rng)).map_err(|e| host_error(&e))
}

/// The noise's generator: ChaCha20 seeded from the operating system, never
/// from anything of the request.
fn dp_rng() -> Result<ChaCha20Rng, DpError> {
    ChaCha20Rng::try_from_rng(&mut SysRng).map_err(|e| DpError::Sampler(e.to_string()))
}

/// A differentially private release that failed: the host's fault, never
/// the plugin's, and logged for the operator.
fn host_error(e: &DpError) -> RunFailure {
    tracing::error!("differentially private release failed: {e}");
    RunFailure { class: FailureClass::HostError }
}

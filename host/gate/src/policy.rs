//! The disclosure-control settings a run is held to, and how the layers that
//! set them combine: the operator's floor, each tenant's own policy (never
//! looser than the floor) and the job's request. The strictest value wins.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// What happens to an entity's contributions beyond its cell limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExcessContributions {
    /// Keep the entity's `max_cells_per_entity` cells of lowest rank (a keyed
    /// hash of entity and cell, so the choice does not depend on order) and
    /// drop the rest.
    #[default]
    Drop,
    /// Abort the run as a contract violation. Stricter than `Drop`: nothing
    /// is released.
    Fail,
}

/// The (n, p%) dominance rule: a sum is suppressed when its `n` largest
/// contributors together hold more than `percent` of it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Dominance {
    pub n: u32,
    pub percent: f64,
}

impl Dominance {
    /// Whether the `n` largest contributions (`top`, their absolute values
    /// summed) hold more than `percent` of `total` (absolute values summed).
    pub fn dominated(&self, top: u128, total: u128) -> bool {
        // top / total > percent / 100, without dividing by zero.
        top as f64 * 100.0 > self.percent * total as f64
    }
}

/// Whose rows one plugin instance sees.
///
/// Variants are ordered from looser to stricter: the strictest wins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Isolation {
    /// One instance per tenant sees all the tenant's granted rows, so a
    /// plugin can make one person's contribution depend on another
    /// person's rows (SECURITY.md, "The honest limits").
    #[default]
    Shared,
    /// One fresh instance per entity, which sees only that entity's rows
    /// and runs within [`Policy::entity_budget`]; each instance's intake is
    /// merged into the run's ([`crate::TenantIntake::absorb`]) only if the
    /// instance succeeded. Stricter than `Shared`.
    Entity,
}

impl Isolation {
    /// The name used in policy files.
    pub fn name(self) -> &'static str {
        match self {
            Isolation::Shared => "shared",
            Isolation::Entity => "entity",
        }
    }
}

/// How a release protects each entity: by rules on exact values, or by
/// noise.
///
/// Variants are ordered from looser to stricter: the strictest wins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Privacy {
    /// Exact values, cells suppressed by the thresholds (k, dominance,
    /// tenants) and complementary suppression.
    #[default]
    Threshold,
    /// Differential privacy ([`crate::dp`]): every cell released with
    /// discrete Gaussian noise at [`DpPolicy::rho`] per release, no rule
    /// on exact values. Needs entity isolation, and turns it on.
    Dp,
}

impl Privacy {
    /// The name used in policy files.
    pub fn name(self) -> &'static str {
        match self {
            Privacy::Threshold => "threshold",
            Privacy::Dp => "dp",
        }
    }

    fn is_threshold(&self) -> bool {
        *self == Privacy::Threshold
    }
}

/// The parameters of differential privacy. Stricter is smaller.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DpPolicy {
    /// ρ of zero-concentrated DP one release spends: 0.0243 is ε = 1 at
    /// δ = 10⁻⁶ ([`crate::dp::epsilon`]).
    pub rho: f64,
    /// ρ a tenant's releases may spend together in any `window_days`: what
    /// the daemon's ledger holds them to. The tenant's (floor and tenant
    /// layers); a run's own layers cannot set it.
    #[serde(default = "DpPolicy::default_budget_rho")]
    pub budget_rho: f64,
    /// The ledger's rolling window, in days: a charge counts for this long.
    #[serde(default = "DpPolicy::default_window_days")]
    pub window_days: u32,
}

impl Default for DpPolicy {
    fn default() -> Self {
        Self {
            rho: Self::DEFAULT_RHO,
            budget_rho: Self::DEFAULT_BUDGET_RHO,
            window_days: Self::DEFAULT_WINDOW_DAYS,
        }
    }
}

impl DpPolicy {
    /// ε = 1 at δ = 10⁻⁶ by CKS20's Corollary 13.
    pub const DEFAULT_RHO: f64 = 0.0243;
    /// The least ρ a release may be given: one nano-ρ, the ledger's unit.
    pub const MIN_RHO: f64 = 1e-9;
    /// The most: already ε ≈ 2 000 at δ = 10⁻⁶, no privacy left to speak of.
    pub const MAX_RHO: f64 = 1e4;
    /// About twenty releases at ε = 1 a window (ε ≈ 5.2 together at
    /// δ = 10⁻⁶): the operator's to change in the floor.
    pub const DEFAULT_BUDGET_RHO: f64 = 0.5;
    /// The most a window may hold: a thousand releases at the most ρ.
    pub const MAX_BUDGET_RHO: f64 = 1e7;
    /// A rolling month.
    pub const DEFAULT_WINDOW_DAYS: u32 = 30;
    /// Ten years: for a budget meant to last.
    pub const MAX_WINDOW_DAYS: u32 = 3650;

    fn default_budget_rho() -> f64 {
        Self::DEFAULT_BUDGET_RHO
    }

    fn default_window_days() -> u32 {
        Self::DEFAULT_WINDOW_DAYS
    }

    fn is_default(&self) -> bool {
        *self == Self::default()
    }

    /// ρ in whole nano-ρ. Rounded to the nearest, which is exact for any ρ
    /// written with up to nine decimals: flooring would turn 0.00013 (whose
    /// product is 129 999.999… nano-ρ) into one nano-ρ less than written.
    pub fn rho_nanos(&self) -> u64 {
        (self.rho * crate::dp::NANOS_PER_RHO as f64).round() as u64
    }

    /// The window's budget in whole nano-ρ, rounded as [`Self::rho_nanos`].
    pub fn budget_nanos(&self) -> u64 {
        (self.budget_rho * crate::dp::NANOS_PER_RHO as f64).round() as u64
    }

    /// This with every field of `layer` that is stricter applied.
    fn tightened(&self, layer: Option<DpLayer>) -> DpPolicy {
        let layer = layer.unwrap_or_default();
        DpPolicy {
            rho: layer.rho.map_or(self.rho, |r| r.min(self.rho)),
            budget_rho: layer.budget_rho.map_or(self.budget_rho, |b| b.min(self.budget_rho)),
            window_days: layer.window_days.map_or(self.window_days, |d| d.max(self.window_days)),
        }
    }
}

/// DP parameters as a policy layer writes them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DpLayer {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rho: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget_rho: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window_days: Option<u32>,
}

impl DpLayer {
    /// Whether this layer sets the tenant's budget terms, which only the
    /// floor and a tenant may.
    pub fn sets_budget(&self) -> bool {
        self.budget_rho.is_some() || self.window_days.is_some()
    }
}

/// What one entity's instance may use in an entity-isolated run. Stricter
/// is smaller, field by field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EntityBudget {
    /// Wall-clock time of one instance, in milliseconds, in and out of host
    /// calls.
    pub timeout_ms: u64,
    /// Linear memory one instance may grow to, in MiB.
    pub memory_mib: u32,
    /// Bytes one instance may pass into host calls, in MiB.
    pub bytes_to_host_mib: u32,
    /// Contribution rows one instance may send to the gate.
    pub contributions: u64,
}

impl Default for EntityBudget {
    /// Small per-entity work: a second, 64 MiB, 16 MiB to the host and a
    /// million contribution rows.
    fn default() -> Self {
        Self { timeout_ms: 1_000, memory_mib: 64, bytes_to_host_mib: 16, contributions: 1_000_000 }
    }
}

impl EntityBudget {
    /// The most linear memory one instance may have: the runtime's cap per
    /// run.
    pub const MAX_MEMORY_MIB: u32 = 512;

    /// Field by field: name, value (widened), for validation and errors.
    fn fields(&self) -> [(&'static str, u64); 4] {
        [
            ("entity_budget.timeout_ms", self.timeout_ms),
            ("entity_budget.memory_mib", u64::from(self.memory_mib)),
            ("entity_budget.bytes_to_host_mib", u64::from(self.bytes_to_host_mib)),
            ("entity_budget.contributions", self.contributions),
        ]
    }

    /// The wall-clock budget of one instance.
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }

    /// The linear memory budget of one instance, in bytes.
    pub fn memory_bytes(&self) -> u64 {
        u64::from(self.memory_mib) << 20
    }

    /// The bytes one instance may pass into host calls.
    pub fn bytes_to_host(&self) -> u64 {
        u64::from(self.bytes_to_host_mib) << 20
    }

    /// This budget with the fields `layer` sets replaced, as written.
    fn with(&self, layer: &EntityBudgetLayer) -> EntityBudget {
        EntityBudget {
            timeout_ms: layer.timeout_ms.unwrap_or(self.timeout_ms),
            memory_mib: layer.memory_mib.unwrap_or(self.memory_mib),
            bytes_to_host_mib: layer.bytes_to_host_mib.unwrap_or(self.bytes_to_host_mib),
            contributions: layer.contributions.unwrap_or(self.contributions),
        }
    }

    /// This budget with every smaller field of `layer` applied.
    fn tightened(&self, layer: &EntityBudgetLayer) -> EntityBudget {
        EntityBudget {
            timeout_ms: layer.timeout_ms.map_or(self.timeout_ms, |v| v.min(self.timeout_ms)),
            memory_mib: layer.memory_mib.map_or(self.memory_mib, |v| v.min(self.memory_mib)),
            bytes_to_host_mib: layer
                .bytes_to_host_mib
                .map_or(self.bytes_to_host_mib, |v| v.min(self.bytes_to_host_mib)),
            contributions: layer.contributions.map_or(self.contributions, |v| v.min(self.contributions)),
        }
    }
}

/// An entity budget as a policy layer writes it: any field may be left out,
/// so a tenant can tighten just one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EntityBudgetLayer {
    pub timeout_ms: Option<u64>,
    pub memory_mib: Option<u32>,
    pub bytes_to_host_mib: Option<u32>,
    pub contributions: Option<u64>,
}

impl EntityBudgetLayer {
    /// In the order of [`EntityBudget::fields`].
    fn values(&self) -> [Option<u64>; 4] {
        [
            self.timeout_ms,
            self.memory_mib.map(u64::from),
            self.bytes_to_host_mib.map(u64::from),
            self.contributions,
        ]
    }
}

/// The rules a run's release is held to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// Minimum distinct entities in a released cell (k).
    pub min_entities: u32,
    /// The (n, p%) rule over per-entity totals of every released sum.
    pub dominance: Dominance,
    /// Most cells of one table a single entity may count towards.
    pub max_cells_per_entity: u32,
    /// What to do with contributions beyond that.
    pub excess_contributions: ExcessContributions,
    /// Benchmark runs: minimum distinct tenants in a released cell (t).
    pub min_tenants: u32,
    /// Benchmark runs: the largest share of a cell's sum one tenant may hold,
    /// in percent. The dominance rule applies to tenants as well.
    pub max_tenant_percent: f64,
    /// Whether the plugin runs once per tenant or once per entity. Absent
    /// from policies written before it existed, which were all `shared`.
    #[serde(default)]
    pub isolation: Isolation,
    /// What one entity's instance may use when `isolation` is `entity`
    /// (checked, and combined strictest-wins, whatever the isolation).
    #[serde(default)]
    pub entity_budget: EntityBudget,
    /// Thresholds or differential privacy. Left out when `threshold`, so
    /// the JSON of every threshold policy (and the request keys hashed
    /// from it) is what it was before the field existed.
    #[serde(default, skip_serializing_if = "Privacy::is_threshold")]
    pub privacy: Privacy,
    /// The parameters of `dp`, checked and combined whatever `privacy` is;
    /// left out at their defaults.
    #[serde(default, skip_serializing_if = "DpPolicy::is_default")]
    pub dp: DpPolicy,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            min_entities: 10,
            dominance: Dominance { n: 2, percent: 90.0 },
            max_cells_per_entity: 1,
            excess_contributions: ExcessContributions::Drop,
            min_tenants: 5,
            max_tenant_percent: 50.0,
            isolation: Isolation::Shared,
            entity_budget: EntityBudget::default(),
            privacy: Privacy::Threshold,
            dp: DpPolicy::default(),
        }
    }
}

/// One layer of a policy as written in a file: any field may be left out.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyLayer {
    pub min_entities: Option<u32>,
    pub dominance: Option<Dominance>,
    pub max_cells_per_entity: Option<u32>,
    pub excess_contributions: Option<ExcessContributions>,
    pub min_tenants: Option<u32>,
    pub max_tenant_percent: Option<f64>,
    pub isolation: Option<Isolation>,
    pub entity_budget: Option<EntityBudgetLayer>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub privacy: Option<Privacy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dp: Option<DpLayer>,
}

/// Why a policy was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PolicyError {
    /// A value is unusable on its own.
    #[error("policy field `{field}`: {detail}")]
    Invalid { field: &'static str, detail: String },
    /// A tenant's policy would relax the operator's floor.
    #[error("policy field `{field}`: {detail}, which is looser than the operator's floor of {floor}")]
    LooserThanFloor { field: &'static str, detail: String, floor: String },
    /// The file is not a valid policy.
    #[error("policy file `{source_name}`: {detail}")]
    Parse { source_name: String, detail: String },
}

impl Policy {
    /// Most cells per entity a policy may allow: bounds the gate's memory.
    pub const MAX_CELLS_PER_ENTITY: u32 = 64;
    /// Largest `n` of the dominance rule: the gate keeps the top `n` per cell.
    pub const MAX_DOMINANCE_N: u32 = 16;

    /// Check the values are usable, naming the first field that is not.
    pub fn validate(&self) -> Result<(), PolicyError> {
        let invalid = |field, detail: String| Err(PolicyError::Invalid { field, detail });
        if self.min_entities < 2 {
            return invalid("min_entities", format!("must be at least 2, got {}", self.min_entities));
        }
        let Dominance { n, percent } = self.dominance;
        if !(1..=Self::MAX_DOMINANCE_N).contains(&n) {
            return invalid("dominance.n", format!("must be 1 to {}, got {n}", Self::MAX_DOMINANCE_N));
        }
        if !(percent > 0.0 && percent <= 100.0) {
            return invalid("dominance.percent", format!("must be above 0 and at most 100, got {percent}"));
        }
        if !(1..=Self::MAX_CELLS_PER_ENTITY).contains(&self.max_cells_per_entity) {
            return invalid(
                "max_cells_per_entity",
                format!("must be 1 to {}, got {}", Self::MAX_CELLS_PER_ENTITY, self.max_cells_per_entity),
            );
        }
        if self.min_tenants < 2 {
            return invalid("min_tenants", format!("must be at least 2, got {}", self.min_tenants));
        }
        let share = self.max_tenant_percent;
        if !(share > 0.0 && share <= 100.0) {
            return invalid("max_tenant_percent", format!("must be above 0 and at most 100, got {share}"));
        }
        for (field, value) in self.entity_budget.fields() {
            if value == 0 {
                return invalid(field, "must be above 0, got 0".into());
            }
        }
        let memory = self.entity_budget.memory_mib;
        if memory > EntityBudget::MAX_MEMORY_MIB {
            return invalid(
                "entity_budget.memory_mib",
                format!(
                    "must be at most {} (the runtime's cap per run), got {memory}",
                    EntityBudget::MAX_MEMORY_MIB
                ),
            );
        }
        let rho = self.dp.rho;
        if !(DpPolicy::MIN_RHO..=DpPolicy::MAX_RHO).contains(&rho) {
            return invalid(
                "dp.rho",
                format!("must be {} to {}, got {rho}", DpPolicy::MIN_RHO, DpPolicy::MAX_RHO),
            );
        }
        let budget = self.dp.budget_rho;
        if !(rho..=DpPolicy::MAX_BUDGET_RHO).contains(&budget) {
            return invalid(
                "dp.budget_rho",
                format!(
                    "must be at least one release's `dp.rho` ({rho}) and at most {}, got {budget}",
                    DpPolicy::MAX_BUDGET_RHO
                ),
            );
        }
        let days = self.dp.window_days;
        if !(1..=DpPolicy::MAX_WINDOW_DAYS).contains(&days) {
            return invalid(
                "dp.window_days",
                format!("must be 1 to {}, got {days}", DpPolicy::MAX_WINDOW_DAYS),
            );
        }
        if self.privacy == Privacy::Dp && self.isolation != Isolation::Entity {
            return invalid("isolation", "differential privacy needs `entity` isolation".into());
        }
        Ok(())
    }

    /// This policy without the budget ledger's terms (`dp.budget_rho`,
    /// `dp.window_days`), which decide whether a run may start, not what it
    /// releases: what identifies a request, so that a tenant changing its
    /// budget does not make the same request run (and be charged) again.
    pub fn without_budget_terms(&self) -> Policy {
        let default = DpPolicy::default();
        let dp = DpPolicy { budget_rho: default.budget_rho, window_days: default.window_days, ..self.dp };
        Policy { dp, ..self.clone() }
    }

    /// The ρ of one release in nano-ρ, when the policy is differentially
    /// private.
    pub fn dp_rho_nanos(&self) -> Option<u64> {
        (self.privacy == Privacy::Dp).then(|| self.dp.rho_nanos())
    }

    /// Differential privacy needs one instance per entity: a DP policy
    /// isolates entities whatever a layer said.
    fn isolated_if_dp(mut self) -> Policy {
        if self.privacy == Privacy::Dp {
            self.isolation = Isolation::Entity;
        }
        self
    }

    /// An operator's floor: the defaults with `layer` applied as written,
    /// looser or not (the operator sets the floor).
    pub fn floor(layer: &PolicyLayer) -> Result<Policy, PolicyError> {
        let default = Policy::default();
        let floor = Policy {
            min_entities: layer.min_entities.unwrap_or(default.min_entities),
            dominance: layer.dominance.unwrap_or(default.dominance),
            max_cells_per_entity: layer.max_cells_per_entity.unwrap_or(default.max_cells_per_entity),
            excess_contributions: layer.excess_contributions.unwrap_or(default.excess_contributions),
            min_tenants: layer.min_tenants.unwrap_or(default.min_tenants),
            max_tenant_percent: layer.max_tenant_percent.unwrap_or(default.max_tenant_percent),
            isolation: layer.isolation.unwrap_or(default.isolation),
            entity_budget: layer
                .entity_budget
                .map_or(default.entity_budget, |b| default.entity_budget.with(&b)),
            privacy: layer.privacy.unwrap_or(default.privacy),
            dp: {
                let dp = layer.dp.unwrap_or_default();
                DpPolicy {
                    rho: dp.rho.unwrap_or(default.dp.rho),
                    budget_rho: dp.budget_rho.unwrap_or(default.dp.budget_rho),
                    window_days: dp.window_days.unwrap_or(default.dp.window_days),
                }
            },
        }
        .isolated_if_dp();
        floor.validate()?;
        Ok(floor)
    }

    /// Refuse a tenant's layer that relaxes any field of this floor.
    pub fn check_not_looser(&self, layer: &PolicyLayer) -> Result<(), PolicyError> {
        let looser =
            |field, detail: String, floor: String| Err(PolicyError::LooserThanFloor { field, detail, floor });
        if let Some(k) = layer.min_entities.filter(|&k| k < self.min_entities) {
            return looser("min_entities", format!("{k}"), self.min_entities.to_string());
        }
        if let Some(d) = layer.dominance {
            if d.n < self.dominance.n {
                return looser("dominance.n", d.n.to_string(), self.dominance.n.to_string());
            }
            if d.percent > self.dominance.percent {
                return looser(
                    "dominance.percent",
                    d.percent.to_string(),
                    self.dominance.percent.to_string(),
                );
            }
        }
        if let Some(c) = layer.max_cells_per_entity.filter(|&c| c > self.max_cells_per_entity) {
            return looser("max_cells_per_entity", c.to_string(), self.max_cells_per_entity.to_string());
        }
        if layer.excess_contributions == Some(ExcessContributions::Drop)
            && self.excess_contributions == ExcessContributions::Fail
        {
            return looser("excess_contributions", "drop".into(), "fail".into());
        }
        if let Some(t) = layer.min_tenants.filter(|&t| t < self.min_tenants) {
            return looser("min_tenants", t.to_string(), self.min_tenants.to_string());
        }
        if let Some(s) = layer.max_tenant_percent.filter(|&s| s > self.max_tenant_percent) {
            return looser("max_tenant_percent", s.to_string(), self.max_tenant_percent.to_string());
        }
        if let Some(i) = layer.isolation.filter(|&i| i < self.isolation) {
            return looser("isolation", i.name().into(), self.isolation.name().into());
        }
        if let Some(budget) = &layer.entity_budget {
            for ((field, floor), value) in self.entity_budget.fields().into_iter().zip(budget.values()) {
                if let Some(v) = value.filter(|&v| v > floor) {
                    return looser(field, v.to_string(), floor.to_string());
                }
            }
        }
        if let Some(p) = layer.privacy.filter(|&p| p < self.privacy) {
            return looser("privacy", p.name().into(), self.privacy.name().into());
        }
        let dp = layer.dp.unwrap_or_default();
        if let Some(rho) = dp.rho.filter(|&rho| rho > self.dp.rho) {
            return looser("dp.rho", rho.to_string(), self.dp.rho.to_string());
        }
        if let Some(budget) = dp.budget_rho.filter(|&b| b > self.dp.budget_rho) {
            return looser("dp.budget_rho", budget.to_string(), self.dp.budget_rho.to_string());
        }
        if let Some(days) = dp.window_days.filter(|&d| d < self.dp.window_days) {
            return looser("dp.window_days", days.to_string(), self.dp.window_days.to_string());
        }
        Ok(())
    }

    /// This policy with every field of `layer` that is stricter applied:
    /// the strictest value wins, field by field.
    pub fn tightened(&self, layer: &PolicyLayer) -> Policy {
        let dominance = layer.dominance.map_or(self.dominance, |d| Dominance {
            n: d.n.max(self.dominance.n),
            percent: d.percent.min(self.dominance.percent),
        });
        let excess = match layer.excess_contributions {
            Some(ExcessContributions::Fail) => ExcessContributions::Fail,
            _ => self.excess_contributions,
        };
        Policy {
            min_entities: layer.min_entities.map_or(self.min_entities, |k| k.max(self.min_entities)),
            dominance,
            max_cells_per_entity: layer
                .max_cells_per_entity
                .map_or(self.max_cells_per_entity, |c| c.min(self.max_cells_per_entity)),
            excess_contributions: excess,
            min_tenants: layer.min_tenants.map_or(self.min_tenants, |t| t.max(self.min_tenants)),
            max_tenant_percent: layer
                .max_tenant_percent
                .map_or(self.max_tenant_percent, |s| s.min(self.max_tenant_percent)),
            isolation: layer.isolation.map_or(self.isolation, |i| i.max(self.isolation)),
            entity_budget: layer
                .entity_budget
                .map_or(self.entity_budget, |b| self.entity_budget.tightened(&b)),
            privacy: layer.privacy.map_or(self.privacy, |p| p.max(self.privacy)),
            dp: self.dp.tightened(layer.dp),
        }
        .isolated_if_dp()
    }

    /// The policy of a run: the floor, tightened by every participating
    /// tenant's layer (each refused if looser than the floor) and by the
    /// job's request (which can only tighten).
    pub fn for_run<'a>(
        floor: &Policy,
        tenants: impl IntoIterator<Item = &'a PolicyLayer>,
        job: &PolicyLayer,
    ) -> Result<Policy, PolicyError> {
        floor.validate()?;
        let mut policy = floor.clone();
        for tenant in tenants {
            floor.check_not_looser(tenant)?;
            policy = policy.tightened(tenant);
        }
        let policy = policy.tightened(job);
        policy.validate()?;
        Ok(policy)
    }
}

impl PolicyLayer {
    /// Parse and check a policy file. `source_name` names it in errors.
    pub fn from_toml(source_name: &str, text: &str) -> Result<PolicyLayer, PolicyError> {
        let layer: PolicyLayer = toml::from_str(text)
            .map_err(|e| PolicyError::Parse { source_name: source_name.to_owned(), detail: e.to_string() })?;
        // Each value must be usable on its own, whatever the other layers say.
        Policy::floor(&layer)?;
        Ok(layer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_follow_disclosure_practice() {
        let p = Policy::default();
        assert_eq!((p.min_entities, p.max_cells_per_entity, p.min_tenants), (10, 1, 5));
        assert_eq!(p.dominance, Dominance { n: 2, percent: 90.0 });
        assert_eq!(p.max_tenant_percent, 50.0);
        p.validate().unwrap();
    }

    #[test]
    fn unusable_values_name_the_field() {
        let cases: Vec<(Policy, &str)> = vec![
            (Policy { min_entities: 1, ..Policy::default() }, "min_entities"),
            (Policy { max_cells_per_entity: 0, ..Policy::default() }, "max_cells_per_entity"),
            (Policy { dominance: Dominance { n: 0, percent: 90.0 }, ..Policy::default() }, "dominance.n"),
            (
                Policy { dominance: Dominance { n: 2, percent: 100.5 }, ..Policy::default() },
                "dominance.percent",
            ),
            (Policy { min_tenants: 1, ..Policy::default() }, "min_tenants"),
            (Policy { max_tenant_percent: f64::NAN, ..Policy::default() }, "max_tenant_percent"),
        ];
        for (policy, field) in cases {
            let err = policy.validate().unwrap_err().to_string();
            assert!(err.contains(&format!("`{field}`")), "{err}");
        }
    }

    #[test]
    fn files_parse_and_errors_name_the_field() {
        let layer = PolicyLayer::from_toml(
            "tenant.toml",
            "min_entities = 20\nmax_tenant_percent = 40\n[dominance]\nn = 3\npercent = 80\n",
        )
        .unwrap();
        assert_eq!(layer.min_entities, Some(20));
        assert_eq!(layer.dominance, Some(Dominance { n: 3, percent: 80.0 }));
        assert_eq!(layer.max_tenant_percent, Some(40.0));

        let err = PolicyLayer::from_toml("t.toml", "min_entites = 20\n").unwrap_err().to_string();
        assert!(err.contains("t.toml") && err.contains("min_entites"), "{err}");
        let err = PolicyLayer::from_toml("t.toml", "min_entities = \"ten\"\n").unwrap_err().to_string();
        assert!(err.contains("min_entities"), "{err}");
        let err = PolicyLayer::from_toml("t.toml", "min_entities = 1\n").unwrap_err().to_string();
        assert!(err.contains("`min_entities`"), "{err}");
        let err = PolicyLayer::from_toml("t.toml", "[dominance]\nn = 2\n").unwrap_err().to_string();
        assert!(err.contains("percent"), "{err}");
        let err = PolicyLayer::from_toml("t.toml", "excess_contributions = \"average\"\n").unwrap_err();
        assert!(err.to_string().contains("excess_contributions"), "{err}");
    }

    #[test]
    fn a_tenant_may_only_tighten_the_floor() {
        let floor = Policy::default();
        let looser = [
            ("min_entities = 5", "min_entities"),
            ("[dominance]\nn = 1\npercent = 90", "dominance.n"),
            ("[dominance]\nn = 2\npercent = 95", "dominance.percent"),
            ("max_cells_per_entity = 2", "max_cells_per_entity"),
            ("min_tenants = 3", "min_tenants"),
            ("max_tenant_percent = 60", "max_tenant_percent"),
        ];
        for (text, field) in looser {
            let layer = PolicyLayer::from_toml("tenant.toml", text).unwrap();
            let err = Policy::for_run(&floor, [&layer], &PolicyLayer::default()).unwrap_err();
            assert!(matches!(err, PolicyError::LooserThanFloor { field: f, .. } if f == field), "{err}");
            assert!(err.to_string().contains("looser than the operator's floor"), "{err}");
        }
        let fail_floor = Policy { excess_contributions: ExcessContributions::Fail, ..Policy::default() };
        let drop = PolicyLayer::from_toml("tenant.toml", "excess_contributions = \"drop\"").unwrap();
        assert!(Policy::for_run(&fail_floor, [&drop], &PolicyLayer::default()).is_err());
    }

    #[test]
    fn the_strictest_value_wins_across_participants() {
        let floor = Policy::default();
        let a = PolicyLayer::from_toml("a", "min_entities = 20\n[dominance]\nn = 2\npercent = 80").unwrap();
        let b = PolicyLayer::from_toml("b", "min_entities = 15\n[dominance]\nn = 3\npercent = 90").unwrap();
        // The job asks for less than the tenants: it cannot loosen anything.
        let job = PolicyLayer::from_toml("job", "min_entities = 12\nmin_tenants = 7").unwrap();
        let policy = Policy::for_run(&floor, [&a, &b], &job).unwrap();
        assert_eq!(policy.min_entities, 20);
        assert_eq!(policy.dominance, Dominance { n: 3, percent: 80.0 });
        assert_eq!(policy.min_tenants, 7);
        assert_eq!(policy.max_cells_per_entity, 1);
        let fail = PolicyLayer::from_toml("job", "excess_contributions = \"fail\"").unwrap();
        let policy = Policy::for_run(&floor, [], &fail).unwrap();
        assert_eq!(policy.excess_contributions, ExcessContributions::Fail);
    }

    #[test]
    fn an_operator_floor_may_be_set_either_way() {
        let floor = Policy::floor(&PolicyLayer::from_toml("floor", "min_entities = 5").unwrap()).unwrap();
        assert_eq!(floor.min_entities, 5);
        assert_eq!(floor.dominance, Policy::default().dominance);
    }

    #[test]
    fn isolation_and_entity_budget_default_to_shared_and_small() {
        let p = Policy::default();
        assert_eq!(p.isolation, Isolation::Shared);
        assert_eq!(
            p.entity_budget,
            EntityBudget {
                timeout_ms: 1_000,
                memory_mib: 64,
                bytes_to_host_mib: 16,
                contributions: 1_000_000
            }
        );
        assert_eq!(p.entity_budget.timeout(), Duration::from_secs(1));
        assert_eq!(p.entity_budget.memory_bytes(), 64 << 20);
        assert_eq!(p.entity_budget.bytes_to_host(), 16 << 20);
        assert!(Isolation::Entity > Isolation::Shared, "entity is the stricter");
    }

    #[test]
    fn an_unusable_entity_budget_names_the_field() {
        let budget = |b: EntityBudget| Policy { entity_budget: b, ..Policy::default() };
        let d = EntityBudget::default();
        let cases = [
            (budget(EntityBudget { timeout_ms: 0, ..d }), "entity_budget.timeout_ms"),
            (budget(EntityBudget { memory_mib: 0, ..d }), "entity_budget.memory_mib"),
            (budget(EntityBudget { memory_mib: 513, ..d }), "entity_budget.memory_mib"),
            (budget(EntityBudget { bytes_to_host_mib: 0, ..d }), "entity_budget.bytes_to_host_mib"),
            (budget(EntityBudget { contributions: 0, ..d }), "entity_budget.contributions"),
        ];
        for (policy, field) in cases {
            let err = policy.validate().unwrap_err();
            assert!(matches!(err, PolicyError::Invalid { field: f, .. } if f == field), "{err}");
            assert!(err.to_string().contains(&format!("`{field}`")), "{err}");
        }
        budget(EntityBudget { memory_mib: 512, ..d }).validate().unwrap();
        // A file is checked on its own too.
        let err = PolicyLayer::from_toml("t.toml", "[entity_budget]\nmemory_mib = 1024\n").unwrap_err();
        assert!(err.to_string().contains("`entity_budget.memory_mib`"), "{err}");
        let err = PolicyLayer::from_toml("t.toml", "[entity_budget]\ncontributions = 0\n").unwrap_err();
        assert!(err.to_string().contains("`entity_budget.contributions`"), "{err}");
    }

    #[test]
    fn a_file_may_ask_for_entity_isolation_and_part_of_a_budget() {
        let text =
            "min_entities = 12\nisolation = \"entity\"\n[entity_budget]\nmemory_mib = 32\ntimeout_ms = 500\n";
        let layer = PolicyLayer::from_toml("tenant.toml", text).unwrap();
        assert_eq!(layer.isolation, Some(Isolation::Entity));
        let budget = EntityBudgetLayer { timeout_ms: Some(500), memory_mib: Some(32), ..Default::default() };
        assert_eq!(layer.entity_budget, Some(budget));
        let floor = Policy::floor(&layer).unwrap();
        assert_eq!(floor.isolation, Isolation::Entity);
        assert_eq!(
            floor.entity_budget,
            EntityBudget { timeout_ms: 500, memory_mib: 32, ..EntityBudget::default() },
            "the fields left out keep the defaults"
        );
        let layer = PolicyLayer::from_toml("t.toml", "isolation = \"shared\"").unwrap();
        assert_eq!(layer.isolation, Some(Isolation::Shared));

        // Unknown fields and values are refused, in the budget too.
        let err = PolicyLayer::from_toml("t.toml", "[entity_budget]\nmemory_mb = 32\n").unwrap_err();
        assert!(err.to_string().contains("memory_mb"), "{err}");
        let err = PolicyLayer::from_toml("t.toml", "isolation = \"person\"\n").unwrap_err();
        assert!(err.to_string().contains("person") || err.to_string().contains("isolation"), "{err}");
        let err = PolicyLayer::from_toml("t.toml", "isolated = \"entity\"\n").unwrap_err();
        assert!(err.to_string().contains("isolated"), "{err}");
        let err = PolicyLayer::from_toml("t.toml", "[entity_budget]\nmemory_mib = -1\n").unwrap_err();
        assert!(err.to_string().contains("memory_mib"), "{err}");

        // JSON, as the daemon stores layers and the API reads them.
        let layer: PolicyLayer =
            serde_json::from_str(r#"{"isolation":"entity","entity_budget":{"contributions":10}}"#).unwrap();
        assert_eq!(layer.isolation, Some(Isolation::Entity));
        assert_eq!(layer.entity_budget.and_then(|b| b.contributions), Some(10));
        assert!(serde_json::from_str::<PolicyLayer>(r#"{"entity_budget":{"rows":10}}"#).is_err());
        assert_eq!(serde_json::from_str::<PolicyLayer>("{}").unwrap(), PolicyLayer::default());
    }

    #[test]
    fn a_tenant_may_not_loosen_isolation_or_the_entity_budget() {
        let floor = Policy {
            isolation: Isolation::Entity,
            entity_budget: EntityBudget {
                timeout_ms: 500,
                memory_mib: 32,
                bytes_to_host_mib: 8,
                contributions: 1000,
            },
            ..Policy::default()
        };
        let looser = [
            ("isolation = \"shared\"", "isolation"),
            ("[entity_budget]\ntimeout_ms = 501", "entity_budget.timeout_ms"),
            ("[entity_budget]\nmemory_mib = 64", "entity_budget.memory_mib"),
            ("[entity_budget]\nbytes_to_host_mib = 9", "entity_budget.bytes_to_host_mib"),
            ("[entity_budget]\ncontributions = 1001", "entity_budget.contributions"),
        ];
        for (text, field) in looser {
            let layer = PolicyLayer::from_toml("tenant.toml", text).unwrap();
            let err = Policy::for_run(&floor, [&layer], &PolicyLayer::default()).unwrap_err();
            assert!(matches!(err, PolicyError::LooserThanFloor { field: f, .. } if f == field), "{err}");
            assert!(err.to_string().contains(&format!("`{field}`")), "{err}");
        }
        let err = floor.check_not_looser(&PolicyLayer::from_toml("t", "isolation = \"shared\"").unwrap());
        assert_eq!(
            err.unwrap_err().to_string(),
            "policy field `isolation`: shared, which is looser than the operator's floor of entity"
        );
        // The same values, or stricter ones, are fine.
        let same = PolicyLayer::from_toml(
            "tenant.toml",
            "isolation = \"entity\"\n[entity_budget]\ntimeout_ms = 500\nmemory_mib = 16",
        )
        .unwrap();
        let policy = Policy::for_run(&floor, [&same], &PolicyLayer::default()).unwrap();
        assert_eq!(policy.entity_budget.memory_mib, 16);
    }

    #[test]
    fn entity_isolation_and_the_smallest_budget_win() {
        let floor = Policy::default();
        let a =
            PolicyLayer::from_toml("a", "isolation = \"entity\"\n[entity_budget]\nmemory_mib = 32").unwrap();
        let b =
            PolicyLayer::from_toml("b", "isolation = \"shared\"\n[entity_budget]\ntimeout_ms = 200").unwrap();
        // The job asks for shared and a bigger budget: it cannot loosen.
        let job = PolicyLayer::from_toml(
            "job",
            "isolation = \"shared\"\n[entity_budget]\nmemory_mib = 48\ncontributions = 5000",
        )
        .unwrap();
        let policy = Policy::for_run(&floor, [&a, &b], &job).unwrap();
        assert_eq!(policy.isolation, Isolation::Entity);
        assert_eq!(
            policy.entity_budget,
            EntityBudget { timeout_ms: 200, memory_mib: 32, bytes_to_host_mib: 16, contributions: 5000 }
        );
        // Whichever layer asks for it, entity isolation stays.
        for order in [[&a, &b], [&b, &a]] {
            assert_eq!(
                Policy::for_run(&floor, order, &PolicyLayer::default()).unwrap().isolation,
                Isolation::Entity
            );
        }
        let entity_job = PolicyLayer { isolation: Some(Isolation::Entity), ..PolicyLayer::default() };
        let policy = Policy::for_run(&floor, [&b], &entity_job).unwrap();
        assert_eq!(policy.isolation, Isolation::Entity);
        assert_eq!(policy.tightened(&b).isolation, Isolation::Entity);
        // Nobody asking keeps the floor's shared.
        let policy = Policy::for_run(&floor, [&b], &PolicyLayer::default()).unwrap();
        assert_eq!(policy.isolation, Isolation::Shared);
    }

    #[test]
    fn a_policy_serialises_its_isolation_and_reads_older_json() {
        let policy = Policy { isolation: Isolation::Entity, ..Policy::default() };
        let json = serde_json::to_string(&policy).unwrap();
        assert!(json.contains(r#""isolation":"entity""#), "{json}");
        assert!(json.contains(r#""entity_budget":{"timeout_ms":1000,"memory_mib":64"#), "{json}");
        assert_eq!(serde_json::from_str::<Policy>(&json).unwrap(), policy);
        // A policy stored before isolation existed reads as shared.
        let old = r#"{"min_entities":10,"dominance":{"n":2,"percent":90.0},"max_cells_per_entity":1,
            "excess_contributions":"drop","min_tenants":5,"max_tenant_percent":50.0}"#;
        assert_eq!(serde_json::from_str::<Policy>(old).unwrap(), Policy::default());
        let unknown = json.replace("\"isolation\"", "\"isolate\"");
        assert!(serde_json::from_str::<Policy>(&unknown).is_err());
    }

    #[test]
    fn differential_privacy_is_strictest_wins_and_isolates_entities() {
        let floor = Policy::floor(&PolicyLayer::default()).unwrap();
        assert_eq!(floor.dp_rho_nanos(), None);
        let dp = PolicyLayer::from_toml("job.toml", "privacy = \"dp\"\n[dp]\nrho = 0.01\n").unwrap();
        // A job may ask for DP: it turns on entity isolation.
        let policy = Policy::for_run(&floor, [], &dp).unwrap();
        assert_eq!((policy.privacy, policy.isolation), (Privacy::Dp, Isolation::Entity));
        assert_eq!(policy.dp_rho_nanos(), Some(10_000_000));
        // ρ in nano-ρ is what was written, even where the double's product is not.
        assert_eq!(DpPolicy { rho: 0.00013, ..DpPolicy::default() }.rho_nanos(), 130_000);
        // ρ only shrinks: a job asking for more keeps the tenant's.
        let more = PolicyLayer {
            dp: Some(DpLayer { rho: Some(0.5), ..DpLayer::default() }),
            ..PolicyLayer::default()
        };
        assert_eq!(Policy::for_run(&floor, [&dp], &more).unwrap().dp.rho, 0.01);
        // Under a DP floor, threshold, shared isolation or a larger ρ is looser.
        let dp_floor = Policy::floor(&dp).unwrap();
        assert_eq!(dp_floor.isolation, Isolation::Entity);
        let looser = |text: &str| {
            let layer = PolicyLayer::from_toml("tenant.toml", text).unwrap();
            Policy::for_run(&dp_floor, [&layer], &PolicyLayer::default()).unwrap_err().to_string()
        };
        assert!(looser("privacy = \"threshold\"\n").contains("`privacy`: threshold, which is looser"));
        assert!(looser("isolation = \"shared\"\n").contains("`isolation`: shared, which is looser"));
        assert!(looser("[dp]\nrho = 0.02\n").contains("`dp.rho`: 0.02, which is looser"));
        // The budget: a larger one or a shorter window is looser; a smaller
        // one and a longer window win.
        assert!(looser("[dp]\nbudget_rho = 0.6\n").contains("`dp.budget_rho`: 0.6, which is looser"));
        assert!(looser("[dp]\nwindow_days = 7\n").contains("`dp.window_days`: 7, which is looser"));
        let tighter = PolicyLayer::from_toml("t.toml", "[dp]\nbudget_rho = 0.2\nwindow_days = 90\n").unwrap();
        let policy = Policy::for_run(&dp_floor, [&tighter], &PolicyLayer::default()).unwrap();
        assert_eq!((policy.dp.budget_rho, policy.dp.window_days, policy.dp.rho), (0.2, 90, 0.01));
        assert_eq!(policy.dp.budget_nanos(), 200_000_000);
        assert!(tighter.dp.unwrap().sets_budget() && !dp.dp.unwrap().sets_budget());
        // Unusable values name their field; unknown DP fields are refused.
        for (text, field) in [("[dp]\nrho = 0\n", "`dp.rho`"), ("[dp]\nrho = nan\n", "`dp.rho`")] {
            let err = PolicyLayer::from_toml("t.toml", text).unwrap_err().to_string();
            assert!(err.contains(field), "{err}");
        }
        assert!(PolicyLayer::from_toml("t.toml", "[dp]\nepsilon = 1\n").is_err());
        for (text, field) in [
            ("[dp]\nbudget_rho = 0.01\n", "`dp.budget_rho`"),
            ("[dp]\nwindow_days = 0\n", "`dp.window_days`"),
            ("[dp]\nwindow_days = 3651\n", "`dp.window_days`"),
        ] {
            let err = PolicyLayer::from_toml("t.toml", text).unwrap_err().to_string();
            assert!(err.contains(field), "{text}: {err}");
        }
        let shared_dp = Policy { privacy: Privacy::Dp, ..Policy::default() };
        assert!(shared_dp.validate().unwrap_err().to_string().contains("`isolation`"));
    }

    #[test]
    fn a_threshold_policy_serialises_as_before_privacy_existed() {
        // Request keys hash a policy's JSON: threshold policies keep theirs.
        let json = serde_json::to_string(&Policy::default()).unwrap();
        assert!(!json.contains("privacy") && !json.contains("\"dp\""), "{json}");
        let layer = serde_json::to_string(&PolicyLayer::default()).unwrap();
        assert!(!layer.contains("privacy") && !layer.contains("\"dp\""), "{layer}");
        let dp = Policy { privacy: Privacy::Dp, isolation: Isolation::Entity, ..Policy::default() };
        let json = serde_json::to_string(&dp).unwrap();
        assert!(json.contains(r#""privacy":"dp""#), "{json}");
        assert_eq!(serde_json::from_str::<Policy>(&json).unwrap(), dp);
    }

    #[test]
    fn dominance_compares_shares() {
        let d = Dominance { n: 2, percent: 90.0 };
        assert!(d.dominated(91, 100));
        assert!(!d.dominated(90, 100));
        assert!(!d.dominated(0, 0));
    }
}

//! Turning accumulated contributions into what may leave the host: the
//! release rules, applied in order to every output table of a run.
//!
//! 1. Contract (on contribution): host-issued entities, codes inside their
//!    domains, measures clamped, at most `max_cells_per_entity` cells per
//!    entity per table ([`crate::TableAccumulator`]).
//! 2. Primary suppression, per released cell, margins included: fewer than
//!    `k` entities; a released sum whose `n` largest entities hold more than
//!    `p%`; and in benchmark runs fewer than `t` tenants, the same (n, p%)
//!    rule over tenants, or one tenant above its maximum share.
//! 3. Complementary suppression across linked tables ([`crate::suppression`]),
//!    every linked table but the finest computed from the finest one's
//!    contributions.

use serde::{Deserialize, Serialize};

use rand_010::CryptoRng;

use crate::accumulator::{Contributions, TableAccumulator, fixed_point_scales};
use crate::dp::{self, DpError, DpPlan, DpSummary, Interval, Quantity};
use crate::shape::Shape;
use crate::spec::{SpecError, Statistic, TableSpec, validate_tables};
use crate::suppression::{Derivation, Family, families};
use crate::tally::Tally;
use crate::{ContractViolation, Dominance, IssuedEntities, Policy, PolicyError};

/// The label of a `total` code in a released key.
pub const TOTAL_LABEL: &str = "*";

/// Whose data a run sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// One tenant's data.
    #[default]
    Tenant,
    /// A vendor benchmark: one isolated instance per opted-in tenant, merged
    /// here under the tenant rules.
    Benchmark,
}

/// The gate of one run: its output tables, the policy they answer to, and
/// how its tables are linked by arithmetic.
#[derive(Debug)]
pub struct Gate {
    policy: Policy,
    scope: Scope,
    specs: Vec<TableSpec>,
    shapes: Vec<Shape>,
    families: Vec<Family>,
    /// Per table: how the gate derives it from its family's root, if it is
    /// linked and not the root.
    derivations: Vec<Option<Derivation>>,
    /// How a differentially private policy's release adds its noise, made
    /// once at setup; `None` under thresholds.
    dp: Option<DpPlan>,
}

/// Why a gate could not be set up.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum GateError {
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error(transparent)]
    Policy(#[from] PolicyError),
    #[error(transparent)]
    Dp(#[from] DpError),
}

/// One tenant's contributions to a run's tables: what one isolated plugin
/// instance fed the gate. In an entity-isolated run, what one entity's
/// instance fed it, absorbed into the run's intake
/// ([`TenantIntake::absorb`]).
#[derive(Debug)]
pub struct TenantIntake {
    tables: Vec<TableAccumulator>,
}

/// Why one intake could not absorb another.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AbsorbError {
    /// An entity of the absorbed intake has no index in the absorbing
    /// intake's issued entities: the caller must issue it there first.
    #[error("entity pseudonym {pseudonym:#018x} of the absorbed intake was not issued to the absorbing one")]
    UnknownEntity { pseudonym: u64 },
    /// The intakes were not made by gates over the same tables and policy.
    #[error("the absorbed intake has {got} tables, the absorbing one {expected}")]
    TableCount { expected: usize, got: usize },
    /// A table of the absorbed intake keeps its slots otherwise (another
    /// table or policy), or holds more entities than the issued entities
    /// given for it.
    #[error(
        "table `{table}` of the absorbed intake does not match the absorbing one's, or its issued entities"
    )]
    Mismatch { table: String },
    /// An entity already in the absorbing intake would reach more cells of
    /// a table than the policy allows, and the policy says to fail: one
    /// intake fed both sets of contributions would have failed too.
    #[error(transparent)]
    Contract(#[from] ContractViolation),
}

/// One released cell: its key labels (`*` for a total) and either its
/// statistics (in the table's `statistics` order) or nothing, when
/// suppressed. A suppressed cell carries no reason and no hint of its size.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReleasedCell {
    pub key: Vec<String>,
    pub values: Option<Vec<f64>>,
    /// Benchmark versions only: the cell's contributing tenants changed too
    /// little since an earlier version for a new value to be safe, so the
    /// values are those released in version `held_from`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held_from: Option<u64>,
    /// Differentially private releases only: per statistic, the 95 %
    /// interval of its noise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub intervals: Option<Vec<Interval>>,
}

/// One released table: every cell of its domain (then its totals, when it
/// asked for margins), in key order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReleasedTable {
    pub name: String,
    pub dimensions: Vec<String>,
    pub statistics: Vec<String>,
    pub cells: Vec<ReleasedCell>,
    pub suppressed_cells: usize,
    /// Benchmark versions only: cells that show an earlier version's values.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub held_cells: usize,
    /// Differentially private releases only: per statistic, the standard
    /// deviation of its noise (`None` for means and ratios, whose noise
    /// comes from their components).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub noise_sd: Option<Vec<Option<f64>>>,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// What a run releases.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Release {
    pub scope: Scope,
    pub policy: Policy,
    pub tables: Vec<ReleasedTable>,
    /// Set when the release is differentially private: its noise instead
    /// of the policy's suppression rules.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dp: Option<DpSummary>,
}

/// What the audit log keeps of a release: enough to tell later what ran
/// under which rules, and nothing of the values.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReleaseRecord {
    /// blake3 of the plugin component, hex.
    pub plugin_hash: String,
    /// blake3 of the params as the plugin received them, hex.
    pub params_hash: String,
    pub scope: Scope,
    pub policy: Policy,
    pub tables: Vec<TableRecord>,
}

/// Per table: how many cells, how many suppressed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableRecord {
    pub name: String,
    pub cells: usize,
    pub suppressed_cells: usize,
}

impl Release {
    /// The audit record of this release.
    pub fn record(&self, plugin_hash: &str, params_hash: &str) -> ReleaseRecord {
        ReleaseRecord {
            plugin_hash: plugin_hash.to_owned(),
            params_hash: params_hash.to_owned(),
            scope: self.scope,
            policy: self.policy.clone(),
            tables: self
                .tables
                .iter()
                .map(|t| TableRecord {
                    name: t.name.clone(),
                    cells: t.cells.len(),
                    suppressed_cells: t.suppressed_cells,
                })
                .collect(),
        }
    }
}

impl TenantIntake {
    /// The index of a declared table.
    pub fn table_index(&self, name: &str) -> Option<usize> {
        self.tables.iter().position(|t| t.spec.name == name)
    }

    /// The accumulator of table `index`.
    pub fn table(&self, index: usize) -> &TableAccumulator {
        &self.tables[index]
    }

    /// Add a batch of contributions to table `index`. `issued` holds the
    /// pseudonyms the host issued to this tenant's instance. A table the
    /// gate derives from a linked one checks the batch and keeps nothing
    /// ([`TableAccumulator::is_derived`]).
    pub fn contribute(
        &mut self,
        index: usize,
        issued: &IssuedEntities,
        batch: &Contributions<'_>,
    ) -> Result<(), ContractViolation> {
        self.tables[index].contribute(issued, batch)
    }

    /// Add every entity of `other` to this intake, as if its contributions
    /// had been made here: `issued` holds the pseudonyms this intake's
    /// entities are indexed by, `other_issued` those of `other`.
    ///
    /// This is how an entity-isolated run gathers its instances' intakes
    /// (each over an `IssuedEntities` of one entity), and how partial
    /// intakes built by several threads over disjoint entities are merged.
    /// Both intakes must come from gates over the same tables and policy
    /// (the same [`Gate`], typically), and the caller must have issued
    /// every pseudonym of `other_issued` in `issued` first.
    ///
    /// **Disjoint entities** (the intended use): each entity's slots are
    /// copied as they are, the cells it kept under `drop`, its exact sums
    /// and their wrap counts, so the release of the merged intake equals,
    /// bit for bit, that of one intake fed the same contributions; the
    /// dropped counts add up to what that intake would count given each
    /// entity's contributions in the same order. Tables the gate derives
    /// from a linked one keep nothing, here as anywhere.
    ///
    /// **An entity in both intakes** is merged as one intake fed both sets
    /// of contributions would hold it: sums add exactly, and under `drop`
    /// it keeps the lowest-ranked of all its cells (each side kept its
    /// lowest-ranked ones). Under `fail`, an entity that now reaches too
    /// many cells is [`AbsorbError::Contract`]; then this intake holds part
    /// of `other` and the run is over, as with a contribution that breaks
    /// the contract. The dropped count of a merged entity is the two sides'
    /// plus one per cell the merge dropped (it depends on order anyway).
    ///
    /// Every other error is found before anything changes. Cost:
    /// O(tables × slots per entity) per entity of `other`, plus one pass
    /// over `other_issued`'s table; nothing in proportion to this intake's
    /// entities (the first absorb allocates this intake's slots for every
    /// entity of `issued`, as a first contribution does).
    pub fn absorb(
        &mut self,
        issued: &IssuedEntities,
        other: &TenantIntake,
        other_issued: &IssuedEntities,
    ) -> Result<(), AbsorbError> {
        if self.tables.len() != other.tables.len() {
            return Err(AbsorbError::TableCount { expected: self.tables.len(), got: other.tables.len() });
        }
        for (own, theirs) in self.tables.iter().zip(&other.tables) {
            if !own.same_layout(theirs) || theirs.entities_with_slots() > other_issued.len() {
                return Err(AbsorbError::Mismatch { table: theirs.spec.name.clone() });
            }
        }
        if let Some((pseudonym, _)) = other_issued.iter().find(|&(p, _)| issued.lookup(p).is_none()) {
            return Err(AbsorbError::UnknownEntity { pseudonym });
        }
        let entities = issued.len();
        for (pseudonym, from) in other_issued.iter() {
            let Some(to) = issued.lookup(pseudonym) else { continue };
            for (own, theirs) in self.tables.iter_mut().zip(&other.tables) {
                own.absorb_entity(entities, to as usize, theirs, from as usize, pseudonym)?;
            }
        }
        for (own, theirs) in self.tables.iter_mut().zip(&other.tables) {
            own.dropped += theirs.dropped;
        }
        Ok(())
    }

    /// Forget every contribution, keeping the allocations, so that one
    /// scratch intake serves entity after entity: afterwards the intake is
    /// as [`Gate::intake`] made it (its tables derived or not as before).
    /// Clear the [`IssuedEntities`] it was fed under as well
    /// ([`IssuedEntities::clear`]). O(tables), plus the wrap counts if a
    /// sum passed i64's range; nothing is freed.
    pub fn clear(&mut self) {
        self.tables.iter_mut().for_each(TableAccumulator::clear);
    }

    /// Heap bytes of every table's accumulator: what a run charges to its
    /// host memory.
    pub fn heap_bytes(&self) -> usize {
        self.tables.iter().map(TableAccumulator::heap_bytes).sum()
    }

    /// Contributions dropped, when they arrived or later by a lower-ranked
    /// cell of the same entity, because their entity had reached its cell
    /// limit. A figure for the owner: what is released does not depend on
    /// the order of contributions, but this count can (an evicted cell counts
    /// once, however many rows it held).
    pub fn dropped_contributions(&self) -> u64 {
        self.tables.iter().map(|t| t.dropped).sum()
    }
}

impl Gate {
    /// A gate for the given tables under `policy`.
    pub fn new(tables: Vec<TableSpec>, policy: Policy, scope: Scope) -> Result<Self, GateError> {
        policy.validate()?;
        validate_tables(&tables)?;
        let families = families(&tables)?;
        let shapes: Vec<Shape> = tables.iter().map(Shape::of).collect();
        let mut derivations = vec![None; tables.len()];
        for (t, derivation) in families.iter().flat_map(|f| &f.derived) {
            derivations[*t] = Some(derivation.clone());
        }
        // A release that cannot be noised is refused before any data is read.
        let dp = policy
            .dp_rho_nanos()
            .map(|rho_nanos| DpPlan::new(&tables, &shapes, policy.max_cells_per_entity, rho_nanos))
            .transpose()?;
        Ok(Self { policy, scope, specs: tables, shapes, families, derivations, dp })
    }

    /// The policy the release answers to.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// An empty intake for one tenant's instance.
    pub fn intake(&self) -> TenantIntake {
        let accumulator = |(spec, derivation): (&TableSpec, &Option<Derivation>)| {
            let accumulator = TableAccumulator::new(spec.clone(), &self.policy);
            if derivation.is_some() { accumulator.derived() } else { accumulator }
        };
        TenantIntake { tables: self.specs.iter().zip(&self.derivations).map(accumulator).collect() }
    }

    /// Apply the release rules to every tenant's intake and produce what may
    /// leave the host.
    pub fn release(&self, intakes: &[TenantIntake]) -> Release {
        let (tallies, mut hidden) = self.primary_all(intakes, self.scope);
        self.protect(&tallies, &mut hidden);
        self.assemble(&tallies, &hidden, self.scope)
    }

    /// Tally every table over `intakes` and mark the cells the primary rules
    /// of `scope` suppress.
    pub(crate) fn primary_all(&self, intakes: &[TenantIntake], scope: Scope) -> (Vec<Tally>, Vec<Vec<bool>>) {
        let by_tenant = scope == Scope::Benchmark;
        let mut tallies = Vec::with_capacity(self.specs.len());
        let mut hidden = Vec::with_capacity(self.specs.len());
        for (t, spec) in self.specs.iter().enumerate() {
            let summed = spec.summed_measures();
            let n = self.policy.dominance.n as usize;
            let mut tally = self.tally(t, intakes, n, by_tenant, None);
            hidden.push(self.primary(spec, &summed, &tally, scope));
            tally.forget_contributors();
            tallies.push(tally);
        }
        (tallies, hidden)
    }

    /// Tally table `t` over `intakes` (its `n` largest contributors, by
    /// tenant too if `by_tenant`; entity totals clamped if `clamp`). A
    /// linked table is computed from its family's root, never from what the
    /// plugin contributed to it.
    fn tally(
        &self,
        t: usize,
        intakes: &[TenantIntake],
        n: usize,
        by_tenant: bool,
        clamp: Option<&[(i128, i128)]>,
    ) -> Tally {
        let derivation = self.derivations[t].as_ref();
        let source = derivation.map_or(t, |d| d.root);
        let tenants: Vec<&TableAccumulator> = intakes.iter().map(|i| &i.tables[source]).collect();
        let summed = self.specs[t].summed_measures();
        Tally::new(&self.shapes[t], &tenants, &summed, derivation, n, by_tenant, clamp)
    }

    /// Complementary suppression: hide more cells until no hidden cell can
    /// be recovered by arithmetic on released ones.
    ///
    /// An empty cell (no entity) hides nothing: a plugin's author knows
    /// which cells it left empty. So the cells with entities are protected
    /// with the empty cells as known values; then every hidden cell, empty
    /// ones too, is protected for readers who do not know which are empty;
    /// and then the first pass runs again, because the second may have
    /// hidden cells with entities as complements of empty ones (a line of
    /// an empty cell, a hidden complement of 12 people and released rest
    /// gives the 12 away to whoever knows the empty cell is empty).
    ///
    /// Hiding more cells never makes a hidden cell determined (fewer known
    /// values), so the last pass keeps what the second achieved, and every
    /// family ends with the exact check that treats empty cells as known.
    pub(crate) fn protect(&self, tallies: &[Tally], hidden: &mut [Vec<bool>]) {
        for family in &self.families {
            let mut linked = vec![false; family.cells()];
            let mut known = vec![false; family.cells()];
            let mut cost = vec![0u64; family.cells()];
            for (m, &t) in family.members.iter().enumerate() {
                let vars = family.member_vars(m);
                let entities = &tallies[t].entities;
                for ((v, &h), &e) in vars.clone().zip(&hidden[t]).zip(entities) {
                    known[v] = e == 0;
                    linked[v] = h && e > 0;
                    cost[v] = e + 1;
                }
            }
            family.protect(&mut linked, &cost, &known);
            // Empty cells stay suppressed (below any k), and are protected
            // in their turn.
            linked.iter_mut().zip(&known).for_each(|(h, &k)| *h |= k);
            family.protect(&mut linked, &cost, &vec![false; known.len()]);
            // Again with the empty cells known: the complements of the
            // second pass are protected too.
            linked.iter_mut().zip(&known).for_each(|(h, &k)| *h &= !k);
            family.protect(&mut linked, &cost, &known);
            linked.iter_mut().zip(&known).for_each(|(h, &k)| *h |= k);
            for (m, &t) in family.members.iter().enumerate() {
                hidden[t].copy_from_slice(&linked[family.member_vars(m)]);
            }
        }
    }

    /// The release of tallied tables with `hidden` cells suppressed.
    pub(crate) fn assemble(&self, tallies: &[Tally], hidden: &[Vec<bool>], scope: Scope) -> Release {
        Release {
            scope,
            policy: self.policy.clone(),
            tables: (0..self.specs.len()).map(|t| self.released(t, &tallies[t], &hidden[t])).collect(),
            dp: None,
        }
    }

    /// How this gate's release adds its noise, when its policy is
    /// differentially private (made at setup, so a gate that could not
    /// noise its tables was refused before any data was read).
    pub fn dp_plan(&self) -> Option<&DpPlan> {
        self.dp.as_ref()
    }

    /// The differentially private release of `intakes` at the policy's ρ
    /// ([`crate::dp`]): every cell of every table released, with discrete
    /// Gaussian noise drawn from `rng` on each count and sum, the noise's
    /// scale and 95 % intervals beside the values. No rule looks at an
    /// exact value: the policy's `k`, dominance and tenant rules and the
    /// complementary suppression do not apply, and means and ratios are
    /// computed from the noisy counts and sums. The noise is drawn for
    /// every cell in a fixed order whatever the data, so the generator's
    /// use is the same for any intakes of these tables.
    ///
    /// The guarantee needs each entity's contributions to depend on its
    /// own rows only (an entity-isolated run) and `rng` to be a
    /// cryptographic generator seeded from outside the run's request.
    pub fn release_dp(&self, intakes: &[TenantIntake], rng: &mut dyn CryptoRng) -> Result<Release, DpError> {
        let plan = self.dp.as_ref().ok_or(DpError::ThresholdPolicy)?;
        let noisy = self.dp_noisy(intakes, plan, rng)?;
        let tables = (0..self.specs.len()).map(|t| self.released_dp(t, plan, &noisy)).collect();
        Ok(Release { scope: self.scope, policy: self.policy.clone(), tables, dp: Some(plan.summary()) })
    }

    /// Per noise group of `plan`, per cell: the exact quantity plus its
    /// noise, drawn table by table, cell by cell, group by group.
    pub(crate) fn dp_noisy(
        &self,
        intakes: &[TenantIntake],
        plan: &DpPlan,
        rng: &mut dyn CryptoRng,
    ) -> Result<Vec<Vec<i128>>, DpError> {
        let samplers = plan.samplers()?;
        let mut noisy = self.dp_exact(intakes, plan);
        let mut first = 0;
        for t in 0..self.specs.len() {
            let own = plan.groups[first..].iter().take_while(|g| g.table == t).count();
            for cell in 0..self.shapes[t].count() {
                for (sampler, values) in
                    samplers[first..first + own].iter().zip(&mut noisy[first..first + own])
                {
                    values[cell] = values[cell].saturating_add(dp::draw(sampler, rng)?);
                }
            }
            first += own;
        }
        Ok(noisy)
    }

    /// Per noise group of `plan`, per cell: the exact quantity before noise,
    /// each entity's total in a cell clamped to the measure's bounds.
    pub(crate) fn dp_exact(&self, intakes: &[TenantIntake], plan: &DpPlan) -> Vec<Vec<i128>> {
        let mut exact = Vec::with_capacity(plan.groups.len());
        for (t, spec) in self.specs.iter().enumerate() {
            let clamp: Vec<(i128, i128)> =
                spec.summed_measures().iter().map(|&m| dp::fixed_bounds(spec, m)).collect();
            let tally = self.tally(t, intakes, 1, false, Some(&clamp));
            for group in plan.groups.iter().filter(|g| g.table == t) {
                exact.push(match group.quantity {
                    Quantity::Count => tally.entities.iter().map(|&e| i128::from(e)).collect(),
                    Quantity::Sum(m) => (0..self.shapes[t].count()).map(|cell| tally.sum(cell, m)).collect(),
                });
            }
        }
        exact
    }

    /// Table `t` of a differentially private release from the noisy
    /// quantities of every group of `plan`.
    fn released_dp(&self, t: usize, plan: &DpPlan, noisy: &[Vec<i128>]) -> ReleasedTable {
        let spec = &self.specs[t];
        // A quantity's noisy values, its scale, σ and the half-widths of
        // its 95 % and 97.5 % intervals, in fixed point.
        struct Noised<'a> {
            values: &'a [i128],
            scale: f64,
            sigma: f64,
            w95: f64,
            w975: f64,
        }
        let noised = |quantity: Quantity| {
            let g = plan.groups.iter().position(|g| g.table == t && g.quantity == quantity).expect("planned");
            let (scale, sigma) = (plan.groups[g].scale, plan.groups[g].sigma_fixed());
            Noised {
                values: &noisy[g],
                scale,
                sigma,
                w95: dp::half_width(sigma, true),
                w975: dp::half_width(sigma, false),
            }
        };
        let measure = |name: &str| Quantity::Sum(spec.measure_index(name).expect("validated statistic"));
        let sources: Vec<Vec<Noised>> = spec
            .statistics
            .iter()
            .map(|s| match s {
                Statistic::Count => vec![noised(Quantity::Count)],
                Statistic::Sum(m) => vec![noised(measure(m))],
                Statistic::Mean(m) => vec![noised(measure(m)), noised(Quantity::Count)],
                Statistic::Ratio(a, b) => vec![noised(measure(a)), noised(measure(b))],
            })
            .collect();
        let cells = self
            .keys(t)
            .enumerate()
            .map(|(cell, key)| {
                let mut values = Vec::with_capacity(sources.len());
                let mut intervals = Vec::with_capacity(sources.len());
                for (statistic, parts) in spec.statistics.iter().zip(&sources) {
                    let value = |q: &Noised| q.values[cell] as f64 / q.scale;
                    let around = |q: &Noised, w: f64| {
                        ((q.values[cell] as f64 - w) / q.scale, (q.values[cell] as f64 + w) / q.scale)
                    };
                    match parts.as_slice() {
                        [one] => {
                            values.push(value(one));
                            let (lo, hi) = around(one, one.w95);
                            intervals.push(Interval { lo: Some(lo), hi: Some(hi) });
                        }
                        [a, b] => {
                            let (top, bottom) = (value(a), value(b));
                            // A mean divides by the count, at least one
                            // entity; a ratio by its denominator's sum.
                            values.push(if matches!(statistic, Statistic::Mean(_)) {
                                top / bottom.max(1.0)
                            } else if bottom != 0.0 {
                                top / bottom
                            } else {
                                0.0
                            });
                            intervals.push(dp::quotient(around(a, a.w975), around(b, b.w975)));
                        }
                        _ => unreachable!("one or two components"),
                    }
                }
                ReleasedCell { key, values: Some(values), held_from: None, intervals: Some(intervals) }
            })
            .collect();
        let noise_sd =
            sources.iter().map(|parts| (parts.len() == 1).then(|| parts[0].sigma / parts[0].scale)).collect();
        self.table(t, cells, 0, Some(noise_sd))
    }

    /// The output tables.
    pub(crate) fn specs(&self) -> &[TableSpec] {
        &self.specs
    }

    /// Table `t` and every table linked to it by margins or nesting.
    pub(crate) fn linked_tables(&self, t: usize) -> Vec<usize> {
        self.families.iter().find(|f| f.members.contains(&t)).map_or_else(|| vec![t], |f| f.members.clone())
    }

    /// The scope this gate was made for.
    pub(crate) fn scope(&self) -> Scope {
        self.scope
    }

    /// Primary suppression of every released cell of one table; `summed`
    /// are the measures whose sums it releases.
    fn primary(&self, spec: &TableSpec, summed: &[usize], tally: &Tally, scope: Scope) -> Vec<bool> {
        // A ratio over a zero sum has no value to release.
        let denominators: Vec<usize> = spec
            .statistics
            .iter()
            .filter_map(|s| match s {
                Statistic::Ratio(_, b) => spec.measure_index(b),
                _ => None,
            })
            .collect();
        let policy = &self.policy;
        // The largest tenant share is the (1, share%) rule over tenants.
        let tenant_share = Dominance { n: 1, percent: policy.max_tenant_percent };
        let benchmark = scope == Scope::Benchmark;
        let n = policy.dominance.n as usize;
        (0..tally.entities.len())
            .map(|cell| {
                if tally.entities[cell] < u64::from(policy.min_entities) {
                    return true;
                }
                if benchmark && tally.tenants[cell] < policy.min_tenants {
                    return true;
                }
                if denominators.iter().any(|&m| tally.sum(cell, m) == 0) {
                    return true;
                }
                summed.iter().any(|&m| {
                    let total = tally.magnitude(cell, m);
                    policy.dominance.dominated(tally.top_entities(cell, m, n), total)
                        || benchmark
                            && (policy.dominance.dominated(tally.top_tenants(cell, m, n), total)
                                || tenant_share.dominated(tally.top_tenants(cell, m, 1), total))
                })
            })
            .collect()
    }

    fn released(&self, t: usize, tally: &Tally, hidden: &[bool]) -> ReleasedTable {
        let spec = &self.specs[t];
        let scales = fixed_point_scales(spec);
        let cells = self
            .keys(t)
            .enumerate()
            .map(|(cell, key)| {
                let values = (!hidden[cell]).then(|| cell_values(spec, tally, cell, &scales));
                ReleasedCell { key, values, held_from: None, intervals: None }
            })
            .collect();
        self.table(t, cells, hidden.iter().filter(|&&h| h).count(), None)
    }

    /// The key labels of every released cell of table `t`, in cell order.
    fn keys(&self, t: usize) -> impl Iterator<Item = Vec<String>> + '_ {
        let spec = &self.specs[t];
        let shape = &self.shapes[t];
        let mut codes = Vec::new();
        (0..shape.count()).map(move |cell| {
            shape.codes(cell, &mut codes);
            spec.dimensions
                .iter()
                .zip(&codes)
                .enumerate()
                .map(|(d, (dim, &code))| {
                    if code == shape.total(d) && shape.margins {
                        TOTAL_LABEL.to_owned()
                    } else {
                        dim.domain.label(code)
                    }
                })
                .collect()
        })
    }

    /// Released table `t` of `cells`.
    fn table(
        &self,
        t: usize,
        cells: Vec<ReleasedCell>,
        suppressed_cells: usize,
        noise_sd: Option<Vec<Option<f64>>>,
    ) -> ReleasedTable {
        let spec = &self.specs[t];
        ReleasedTable {
            name: spec.name.clone(),
            dimensions: spec.dimensions.iter().map(|d| d.name.clone()).collect(),
            statistics: spec.statistics.iter().map(Statistic::column_name).collect(),
            cells,
            suppressed_cells,
            held_cells: 0,
            noise_sd,
        }
    }
}

/// A cell's statistics, in the table's order, from its tally. `scales` are
/// the table's fixed-point scales.
pub(crate) fn cell_values(spec: &TableSpec, tally: &Tally, cell: usize, scales: &[f64]) -> Vec<f64> {
    let sum = |name: &str| {
        let m = spec.measure_index(name).expect("validated statistic");
        tally.sum(cell, m) as f64 / scales[m]
    };
    let count = tally.entities[cell] as f64;
    spec.statistics
        .iter()
        .map(|s| match s {
            Statistic::Count => count,
            Statistic::Sum(m) => sum(m),
            Statistic::Mean(m) => sum(m) / count,
            Statistic::Ratio(a, b) => sum(a) / sum(b),
        })
        .collect()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::{Dimension, Domain, ExcessContributions, Isolation, Measure};

    /// Fuel by region: count, sum and mean of litres, no margins.
    pub(crate) fn spec() -> TableSpec {
        TableSpec {
            name: "fuel".into(),
            description: String::new(),
            dimensions: vec![Dimension {
                name: "region".into(),
                domain: Domain::Labels(vec!["north".into(), "south".into(), "east".into()]),
            }],
            measures: vec![Measure { name: "litres".into(), lower: 0.0, upper: 100.0 }],
            statistics: vec![
                Statistic::Count,
                Statistic::Sum("litres".into()),
                Statistic::Mean("litres".into()),
            ],
            margins: false,
        }
    }

    pub(crate) fn issued(n: u64) -> (IssuedEntities, Vec<u64>) {
        let mut issued = IssuedEntities::new();
        let ids: Vec<u64> = (0..n).map(|i| 0x5eed_0000 + i * 7919).collect();
        ids.iter().for_each(|&p| {
            issued.issue(p);
        });
        (issued, ids)
    }

    /// A gate over `spec()` and one tenant's intake.
    fn tenant_gate(policy: Policy) -> (Gate, TenantIntake) {
        let gate = Gate::new(vec![spec()], policy, Scope::Tenant).unwrap();
        let intake = gate.intake();
        (gate, intake)
    }

    pub(crate) fn add(
        intake: &mut TenantIntake,
        issued: &IssuedEntities,
        entities: &[u64],
        codes: &[u32],
        values: &[f64],
    ) -> Result<(), ContractViolation> {
        intake.contribute(0, issued, &Contributions { entities, dimensions: &[codes], measures: &[values] })
    }

    #[test]
    fn cells_below_k_are_suppressed_and_others_released() {
        let (issued, ids) = issued(19);
        let (gate, mut intake) = tenant_gate(Policy::default());
        // 10 entities in north, 9 in south, none in east.
        let codes: Vec<u32> = (0..19).map(|i| u32::from(i >= 10)).collect();
        add(&mut intake, &issued, &ids, &codes, &[10.0; 19]).unwrap();
        let table = &gate.release(&[intake]).tables[0];
        assert_eq!(table.cells[0].values, Some(vec![10.0, 100.0, 10.0]));
        assert_eq!(
            table.cells[1],
            ReleasedCell { key: vec!["south".into()], values: None, held_from: None, intervals: None }
        );
        assert_eq!(table.cells[2].values, None);
        assert_eq!(table.suppressed_cells, 2);
    }

    #[test]
    fn counts_are_distinct_entities_not_rows() {
        let (issued, ids) = issued(5);
        let (gate, mut intake) = tenant_gate(Policy::default());
        let many: Vec<u64> = ids.iter().cycle().take(50).copied().collect();
        add(&mut intake, &issued, &many, &[0; 50], &[1.0; 50]).unwrap();
        assert_eq!(gate.release(&[intake]).tables[0].cells[0].values, None, "5 entities, 50 rows: below k");
    }

    #[test]
    fn contract_violations_name_what_was_wrong() {
        let (issued, ids) = issued(3);
        let (_, mut intake) = tenant_gate(Policy::default());
        let err = add(&mut intake, &issued, &[12345], &[0], &[1.0]).unwrap_err();
        assert!(matches!(err, ContractViolation::UnknownEntity { pseudonym: 12345, .. }), "{err}");
        let err = add(&mut intake, &issued, &ids[..1], &[3], &[1.0]).unwrap_err();
        assert!(matches!(err, ContractViolation::CodeOutsideDomain { code: 3, size: 3, .. }), "{err}");
        let err = add(&mut intake, &issued, &ids[..1], &[0], &[f64::NAN]).unwrap_err();
        assert!(matches!(err, ContractViolation::NotANumber { .. }), "{err}");
        let err = add(&mut intake, &issued, &ids[..2], &[0], &[1.0, 2.0]).unwrap_err();
        assert!(err.to_string().contains("unequal length"), "{err}");
        let batch = Contributions { entities: &ids[..1], dimensions: &[], measures: &[&[1.0]] };
        let err = intake.contribute(0, &issued, &batch).unwrap_err();
        assert!(err.to_string().contains("expected 1 dimension"), "{err}");
    }

    #[test]
    fn measures_are_clamped_to_their_bounds() {
        let (issued, ids) = issued(10);
        // Dominance off, so the clamped outlier is released and visible.
        let policy = Policy { dominance: Dominance { n: 1, percent: 100.0 }, ..Policy::default() };
        let (gate, mut intake) = tenant_gate(policy);
        let mut values = vec![50.0; 10];
        values[0] = 1e12;
        values[1] = f64::NEG_INFINITY;
        add(&mut intake, &issued, &ids, &[0; 10], &values).unwrap();
        let released = gate.release(&[intake]).tables[0].cells[0].values.clone().unwrap();
        assert_eq!(released[1], 8.0 * 50.0 + 100.0 + 0.0);
    }

    #[test]
    fn an_entity_counts_towards_at_most_its_cell_limit() {
        let (issued, ids) = issued(10);
        let (gate, mut intake) = tenant_gate(Policy::default());
        // Every entity contributes to all three cells.
        for code in 0..3 {
            add(&mut intake, &issued, &ids, &[code; 10], &[1.0; 10]).unwrap();
        }
        assert_eq!(intake.dropped_contributions(), 20);
        let table = &gate.release(&[intake]).tables[0];
        let counted: f64 = table.cells.iter().map(|c| c.values.as_ref().map_or(0.0, |v| v[0])).sum();
        assert!(counted <= 10.0, "each entity counts once in all, got {counted}");

        let fail = Policy { excess_contributions: ExcessContributions::Fail, ..Policy::default() };
        let (_, mut intake) = tenant_gate(fail);
        add(&mut intake, &issued, &ids[..1], &[0], &[1.0]).unwrap();
        let err = add(&mut intake, &issued, &ids[..1], &[1], &[1.0]).unwrap_err();
        assert!(matches!(err, ContractViolation::TooManyCells { limit: 1, .. }), "{err}");
    }

    #[test]
    fn a_sum_held_by_two_entities_is_suppressed() {
        let (issued, ids) = issued(24);
        let (gate, mut intake) = tenant_gate(Policy::default());
        // North: the target and one other hold 91 % over 12 entities.
        // South: 12 even contributions.
        let mut values = vec![0.9; 24];
        values[0] = 81.0;
        values[1] = 10.0;
        values[12..].fill(5.0);
        let codes: Vec<u32> = (0..24).map(|i| u32::from(i >= 12)).collect();
        add(&mut intake, &issued, &ids, &codes, &values).unwrap();
        let table = &gate.release(&[intake]).tables[0];
        assert_eq!(table.cells[0].values, None, "(2, 90 %) dominated");
        assert_eq!(table.cells[1].values, Some(vec![12.0, 60.0, 5.0]));
    }

    #[test]
    fn benchmark_cells_need_enough_tenants_and_no_dominant_one() {
        let gate = Gate::new(vec![spec()], Policy::default(), Scope::Benchmark).unwrap();
        let (issued, ids) = issued(10);
        // Six tenants. North: 4 entities of each, even. South: 3 entities of
        // only four tenants. East: 3 entities of each, tenant 0 holding 75
        // of the 90.
        let intakes: Vec<TenantIntake> = (0..6)
            .map(|tenant| {
                let mut intake = gate.intake();
                let rows: Vec<usize> = (0..10).filter(|&i| tenant < 4 || !(4..7).contains(&i)).collect();
                let entities: Vec<u64> = rows.iter().map(|&i| ids[i]).collect();
                let codes: Vec<u32> = rows
                    .iter()
                    .map(|&i| {
                        if i < 4 {
                            0
                        } else if i < 7 {
                            1
                        } else {
                            2
                        }
                    })
                    .collect();
                let values: Vec<f64> =
                    rows.iter().map(|&i| if i >= 7 && tenant == 0 { 25.0 } else { 1.0 }).collect();
                add(&mut intake, &issued, &entities, &codes, &values).unwrap();
                intake
            })
            .collect();
        let table = &gate.release(&intakes).tables[0];
        assert_eq!(table.cells[0].values.as_ref().map(|v| v[0]), Some(24.0), "6 tenants, even");
        assert_eq!(table.cells[1].values, None, "4 tenants < t = 5");
        assert_eq!(table.cells[2].values, None, "one tenant holds 75 of 90");

        // The same data as one tenant's run has no tenant rules.
        let single = Gate::new(vec![spec()], Policy::default(), Scope::Tenant).unwrap();
        let mut intake = single.intake();
        add(&mut intake, &issued, &ids, &[0; 10], &[1.0; 10]).unwrap();
        assert!(single.release(&[intake]).tables[0].cells[0].values.is_some());
    }

    #[test]
    fn two_tenants_holding_a_sum_together_suppress_it() {
        let gate = Gate::new(vec![spec()], Policy::default(), Scope::Benchmark).unwrap();
        let (issued, ids) = issued(10);
        // Five tenants of 10 entities in north, 96 in all. Tenants 0 and 1
        // hold 46 each: neither is above 50 %, together 92 of 96, above 90 %.
        let intakes: Vec<TenantIntake> = (0..5)
            .map(|tenant| {
                let mut intake = gate.intake();
                let value = if tenant < 2 { 4.6 } else { 4.0 / 30.0 };
                add(&mut intake, &issued, &ids, &[0; 10], &[value; 10]).unwrap();
                intake
            })
            .collect();
        let table = &gate.release(&intakes).tables[0];
        assert_eq!(table.cells[0].values, None);
    }

    #[test]
    fn margins_are_released_and_protected() {
        let mut with_margins = spec();
        with_margins.margins = true;
        let gate = Gate::new(vec![with_margins], Policy::default(), Scope::Tenant).unwrap();
        let (issued, ids) = issued(40);
        let mut intake = gate.intake();
        // North 20, south 15, east 5 (suppressed): the total minus north and
        // south would give east away, so one more cell must go.
        let codes: Vec<u32> = (0..40)
            .map(|i| {
                if i < 20 {
                    0
                } else if i < 35 {
                    1
                } else {
                    2
                }
            })
            .collect();
        add(&mut intake, &issued, &ids, &codes, &[1.0; 40]).unwrap();
        let table = &gate.release(&[intake]).tables[0];
        assert_eq!(table.cells.len(), 4);
        assert_eq!(table.cells[3].key, vec!["*".to_owned()]);
        assert_eq!(table.cells[2].values, None);
        assert_eq!(table.cells[1].values, None, "south, the cheapest complement, goes too");
        assert_eq!(table.cells[3].values.as_ref().map(|v| v[0]), Some(40.0));
        assert_eq!(table.suppressed_cells, 2);
    }

    #[test]
    fn an_empty_cell_hides_nothing() {
        let mut with_margins = spec();
        with_margins.margins = true;
        let gate = Gate::new(vec![with_margins], Policy::default(), Scope::Tenant).unwrap();
        let (issued, ids) = issued(21);
        let mut intake = gate.intake();
        // North: one target. South: 20. East: left empty by the plugin, so
        // its author knows it is zero: the total minus south is the target.
        let codes: Vec<u32> = (0..21).map(|i| u32::from(i > 0)).collect();
        add(&mut intake, &issued, &ids, &codes, &[1.0; 21]).unwrap();
        let table = &gate.release(&[intake]).tables[0];
        assert_eq!(table.cells[0].values, None, "the target");
        assert_eq!(table.cells[2].values, None, "empty");
        assert!(
            table.cells[1].values.is_none() || table.cells[3].values.is_none(),
            "south or the total must go too: {:?}",
            table.cells
        );
    }

    /// One entity sends `first` then `then` (value, rows) to north, in
    /// batches; another sends 1 once. Sum and count of north and the total.
    fn many_rows(first: (f64, usize), then: (f64, usize)) -> Vec<Vec<f64>> {
        let mut spec = spec();
        spec.measures[0] = Measure { name: "litres".into(), lower: -1.0, upper: 1.0 };
        spec.margins = true;
        let policy =
            Policy { min_entities: 2, dominance: Dominance { n: 1, percent: 100.0 }, ..Policy::default() };
        let gate = Gate::new(vec![spec], policy, Scope::Tenant).unwrap();
        let (issued, ids) = issued(2);
        let mut intake = gate.intake();
        const BATCH: usize = 1 << 16;
        let entities = vec![ids[0]; BATCH];
        let codes = vec![0; BATCH];
        for (value, rows) in [first, then] {
            let values = vec![value; BATCH];
            for start in (0..rows).step_by(BATCH) {
                let n = BATCH.min(rows - start);
                add(&mut intake, &issued, &entities[..n], &codes[..n], &values[..n]).unwrap();
            }
        }
        add(&mut intake, &issued, &ids[1..], &[0], &[1.0]).unwrap();
        let table = &gate.release(&[intake]).tables[0];
        [0, 3].iter().map(|&c| table.cells[c].values.clone().unwrap()).collect()
    }

    #[test]
    fn one_entity_sending_the_largest_value_millions_of_times_sums_exactly() {
        // Bounds of +-1 make a contribution of 1 the fixed-point 2^40, so
        // 2^23 of them fill an i64. One entity sends more ones than that,
        // and as many minus ones but 3: its sum passes 2^63 on the way
        // (upwards in one order, downwards in the other) and ends at 3.
        let many = (1 << 23) + (1 << 20);
        let up_first = many_rows((1.0, many + 3), (-1.0, many));
        let down_first = many_rows((-1.0, many), (1.0, many + 3));
        // North and the total: 2 entities, 3 + 1.
        assert_eq!(up_first, vec![vec![2.0, 4.0, 2.0]; 2]);
        assert_eq!(down_first, up_first, "the order of contributions does not matter");
        // A sum beyond i64 is released exactly too.
        let beyond = many_rows((1.0, many), (1.0, many));
        assert_eq!(beyond[0][1], 2.0 * many as f64 + 1.0);
    }

    #[test]
    fn a_measure_with_tiny_bounds_is_summed_exactly() {
        // The scale that maps 2^-1000 to 2^40 is 2^1040, past f64: it used
        // to be infinite, and every contribution became i64::MAX.
        let tiny = 2f64.powi(-1000);
        let mut spec = spec();
        spec.measures[0] = Measure { name: "litres".into(), lower: 0.0, upper: tiny };
        let gate = Gate::new(vec![spec], Policy::default(), Scope::Tenant).unwrap();
        let (issued, ids) = issued(10);
        let mut intake = gate.intake();
        add(&mut intake, &issued, &ids, &[0; 10], &[tiny; 10]).unwrap();
        let released = gate.release(&[intake]).tables[0].cells[0].values.clone().unwrap();
        assert_eq!(released, vec![10.0, 10.0 * tiny, tiny]);
    }

    #[test]
    fn a_complement_of_an_empty_cell_is_protected_in_its_turn() {
        let mut with_margins = spec();
        with_margins.margins = true;
        let gate = Gate::new(vec![with_margins], Policy::default(), Scope::Tenant).unwrap();
        let (issued, ids) = issued(42);
        let mut intake = gate.intake();
        // North: left empty. South: 12 people, east: 30. Protecting the
        // empty north hides its cheapest complement, south; with north
        // known to be empty, the total minus east would give south away.
        let codes: Vec<u32> = (0..42).map(|i| if i < 12 { 1 } else { 2 }).collect();
        add(&mut intake, &issued, &ids, &codes, &[1.0; 42]).unwrap();
        let table = &gate.release(&[intake]).tables[0];
        assert_eq!(table.cells[0].values, None, "empty");
        assert_eq!(table.cells[1].values, None, "the complement of the empty cell");
        assert!(
            table.cells[2].values.is_none() || table.cells[3].values.is_none(),
            "east or the total must go too: {:?}",
            table.cells
        );
    }

    /// Litres by age: 10-year buckets from 0 to 40, or the given edges.
    fn by_age(name: &str, edges: &[f64]) -> TableSpec {
        TableSpec {
            name: name.into(),
            dimensions: vec![Dimension { name: "age".into(), domain: Domain::Buckets(edges.to_vec()) }],
            ..spec()
        }
    }

    /// One batch to table `t`: entity `i` of `ids` in bucket `codes[i]`.
    fn add_to(
        intake: &mut TenantIntake,
        t: usize,
        issued: &IssuedEntities,
        entities: &[u64],
        codes: &[u32],
        values: &[f64],
    ) {
        let batch = Contributions { entities, dimensions: &[codes], measures: &[values] };
        intake.contribute(t, issued, &batch).unwrap();
    }

    /// A released cell's (count, sum).
    fn count_and_sum(table: &ReleasedTable, cell: usize) -> (f64, f64) {
        let values = table.cells[cell].values.as_ref().expect("released");
        (values[0], values[1])
    }

    #[test]
    fn a_person_left_out_of_a_coarse_table_cannot_be_subtracted() {
        // Fine: ages 0-10 (the target, 50 litres, and 11 others of 5) and
        // 10-20 (12 of 5). Coarse: 0-20. The plugin leaves the target out of
        // the coarse table: fine 0-10 + fine 10-20 - coarse 0-20 would be
        // the target, every cell released and nothing suppressed.
        let fine = by_age("fine", &[0.0, 10.0, 20.0, 30.0, 40.0]);
        let coarse = by_age("coarse", &[0.0, 20.0, 40.0]);
        let gate = Gate::new(vec![fine, coarse], Policy::default(), Scope::Tenant).unwrap();
        let (issued, ids) = issued(24);
        let mut intake = gate.intake();
        let codes: Vec<u32> = (0..24).map(|i| u32::from(i >= 12)).collect();
        let mut values = vec![5.0; 24];
        values[0] = 50.0;
        add_to(&mut intake, 0, &issued, &ids, &codes, &values);
        add_to(&mut intake, 1, &issued, &ids[1..], &[0; 23], &values[1..]);
        let release = gate.release(&[intake]);
        let (young, older) = (count_and_sum(&release.tables[0], 0), count_and_sum(&release.tables[0], 1));
        let both = count_and_sum(&release.tables[1], 0);
        assert_eq!(young, (12.0, 105.0));
        assert_eq!(both, (young.0 + older.0, young.1 + older.1), "the coarse cell is the fine cells' sum");
    }

    #[test]
    fn a_duplicate_table_that_differs_by_one_person_releases_the_same() {
        // Two tables under identical declarations; the plugin leaves the
        // target out of the second. Their difference would be the target.
        let mut second = spec();
        second.name = "fuel-again".into();
        let gate = Gate::new(vec![spec(), second], Policy::default(), Scope::Tenant).unwrap();
        let (issued, ids) = issued(24);
        let mut intake = gate.intake();
        let codes: Vec<u32> = (0..24).map(|i| u32::from(i >= 12)).collect();
        let mut values = vec![5.0; 24];
        values[0] = 50.0;
        add_to(&mut intake, 0, &issued, &ids, &codes, &values);
        add_to(&mut intake, 1, &issued, &ids[1..], &codes[1..], &values[1..]);
        let release = gate.release(&[intake]);
        assert_eq!(count_and_sum(&release.tables[0], 0), (12.0, 105.0));
        assert_eq!(release.tables[0].cells, release.tables[1].cells);
    }

    #[test]
    fn a_linked_table_is_derived_under_the_roots_cell_limit() {
        // Entities in two fine cells keep one (max_cells_per_entity = 1);
        // the coarse table counts exactly the fine cells they kept, whatever
        // the plugin sent it.
        let fine = by_age("fine", &[0.0, 10.0, 20.0, 30.0, 40.0]);
        let coarse = by_age("coarse", &[0.0, 20.0, 40.0]);
        let policy = Policy { min_entities: 2, ..Policy::default() };
        let gate = Gate::new(vec![coarse, fine], policy, Scope::Tenant).unwrap();
        let (issued, ids) = issued(40);
        let mut intake = gate.intake();
        // Entity i sends 1 to age i % 2 (0-10 or 10-20) and 2 to age
        // 2 + i / 2 % 2 (20-30 or 30-40).
        let young: Vec<u32> = (0..40).map(|i| i % 2).collect();
        let old: Vec<u32> = (0..40).map(|i| 2 + i / 2 % 2).collect();
        add_to(&mut intake, 1, &issued, &ids, &young, &[1.0; 40]);
        add_to(&mut intake, 1, &issued, &ids, &old, &[2.0; 40]);
        add_to(&mut intake, 0, &issued, &ids[..3], &[1; 3], &[100.0; 3]);
        assert!(intake.table(0).is_derived() && !intake.table(1).is_derived());
        let release = gate.release(&[intake]);
        let (fine, coarse) = (&release.tables[1], &release.tables[0]);
        let cells: Vec<(f64, f64)> = (0..4).map(|c| count_and_sum(fine, c)).collect();
        assert_eq!(cells.iter().map(|c| c.0).sum::<f64>(), 40.0, "each entity kept one fine cell");
        let add = |a: (f64, f64), b: (f64, f64)| (a.0 + b.0, a.1 + b.1);
        assert_eq!(count_and_sum(coarse, 0), add(cells[0], cells[1]));
        assert_eq!(count_and_sum(coarse, 1), add(cells[2], cells[3]));
    }

    #[test]
    fn a_ratio_over_a_zero_sum_is_suppressed() {
        let mut ratio = spec();
        ratio.measures.push(Measure { name: "km".into(), lower: 0.0, upper: 100.0 });
        ratio.statistics = vec![Statistic::Count, Statistic::Ratio("litres".into(), "km".into())];
        let gate = Gate::new(vec![ratio], Policy::default(), Scope::Tenant).unwrap();
        let (issued, ids) = issued(20);
        let mut intake = gate.intake();
        // North: 10 entities with no km; south: 10 with some.
        let codes: Vec<u32> = (0..20).map(|i| u32::from(i >= 10)).collect();
        let km: Vec<f64> = (0..20).map(|i| if i >= 10 { 2.0 } else { 0.0 }).collect();
        let batch = Contributions { entities: &ids, dimensions: &[&codes], measures: &[&[1.0; 20], &km] };
        intake.contribute(0, &issued, &batch).unwrap();
        let release = gate.release(&[intake]);
        assert_eq!(release.tables[0].cells[0].values, None, "no value, not inf or NaN");
        assert_eq!(release.tables[0].cells[1].values, Some(vec![10.0, 0.5]));
        let json = serde_json::to_string(&release).unwrap();
        assert_eq!(serde_json::from_str::<Release>(&json).unwrap(), release, "a release reads back");
    }

    /// Rows to table 0 of `spec()`: (entity, an index into `ids`; cell;
    /// value).
    type Rows = Vec<(usize, u32, f64)>;

    /// One intake fed `rows` (entity index into `ids`, cell, value) in order.
    fn fed(gate: &Gate, issued: &IssuedEntities, ids: &[u64], rows: &Rows) -> TenantIntake {
        let mut intake = gate.intake();
        for &(e, code, value) in rows {
            add(&mut intake, issued, &ids[e..=e], &[code], &[value]).unwrap();
        }
        intake
    }

    /// The run's intake gathered entity by entity, each in a scratch intake
    /// and issued set cleared between entities, as an entity-isolated run
    /// does.
    fn gathered(gate: &Gate, issued: &IssuedEntities, ids: &[u64], rows: &Rows) -> TenantIntake {
        let mut run = gate.intake();
        let (mut scratch, mut own) = (gate.intake(), IssuedEntities::new());
        for (e, &id) in ids.iter().enumerate() {
            own.issue(id);
            for &(_, code, value) in rows.iter().filter(|r| r.0 == e) {
                add(&mut scratch, &own, &[id], &[code], &[value]).unwrap();
            }
            run.absorb(issued, &scratch, &own).unwrap();
            scratch.clear();
            own.clear();
        }
        run
    }

    #[test]
    fn intakes_of_one_entity_each_release_what_one_intake_releases() {
        let policy = Policy { min_entities: 3, max_cells_per_entity: 2, ..Policy::default() };
        let mut with_margins = spec();
        with_margins.margins = true;
        let gate = Gate::new(vec![with_margins], policy, Scope::Tenant).unwrap();
        let (issued, ids) = issued(30);
        // Every entity sends to two or three cells (one dropped), values
        // clamped and not.
        let rows: Rows = (0..90)
            .map(|i| (i % 30, (i / 7 % 3) as u32, if i % 11 == 0 { 500.0 } else { (i % 13) as f64 }))
            .collect();
        let one = fed(&gate, &issued, &ids, &rows);
        let merged = gathered(&gate, &issued, &ids, &rows);
        assert!(one.dropped_contributions() > 0);
        assert_eq!(merged.dropped_contributions(), one.dropped_contributions());
        assert_eq!(gate.release(&[merged]), gate.release(&[one]));
    }

    #[test]
    fn absorbing_carries_sums_beyond_i64_exactly() {
        // As in one_entity_sending_the_largest_value_millions_of_times:
        // entity 0's sum in north passes 2^63, and only the wrap count
        // holds the difference; dominance off so the sum is released.
        let mut spec = spec();
        spec.measures[0] = Measure { name: "litres".into(), lower: -1.0, upper: 1.0 };
        spec.margins = true;
        let policy =
            Policy { min_entities: 2, dominance: Dominance { n: 1, percent: 100.0 }, ..Policy::default() };
        let gate = Gate::new(vec![spec], policy, Scope::Tenant).unwrap();
        let (issued, ids) = issued(2);
        let many = (1 << 23) + (1 << 20);
        let mut big = gate.intake();
        let (mut own, mut one) = (IssuedEntities::new(), gate.intake());
        own.issue(ids[0]);
        let ones = vec![1.0; many];
        for (intake, entities) in [(&mut big, &own), (&mut one, &issued)] {
            let batch = Contributions {
                entities: &vec![ids[0]; many],
                dimensions: &[&vec![0; many]],
                measures: &[&ones],
            };
            intake.contribute(0, entities, &batch).unwrap();
        }
        add(&mut one, &issued, &ids[1..], &[0], &[1.0]).unwrap();
        let (mut merged, mut other, mut other_issued) = (gate.intake(), gate.intake(), IssuedEntities::new());
        other_issued.issue(ids[1]);
        add(&mut other, &other_issued, &ids[1..], &[0], &[1.0]).unwrap();
        merged.absorb(&issued, &other, &other_issued).unwrap();
        merged.absorb(&issued, &big, &own).unwrap();
        let release = gate.release(&[merged]);
        assert_eq!(
            release.tables[0].cells[0].values,
            Some(vec![2.0, many as f64 + 1.0, (many as f64 + 1.0) / 2.0])
        );
        assert_eq!(release, gate.release(&[one]));

        // The same entity absorbed twice: its sums add, wraps and all.
        let mut twice = gate.intake();
        twice.absorb(&issued, &big, &own).unwrap();
        twice.absorb(&issued, &big, &own).unwrap();
        twice.absorb(&issued, &other, &other_issued).unwrap();
        let cells = &gate.release(&[twice]).tables[0].cells;
        assert_eq!(
            cells[0].values,
            Some(vec![2.0, 2.0 * many as f64 + 1.0, (2.0 * many as f64 + 1.0) / 2.0])
        );
    }

    #[test]
    fn an_entity_in_both_intakes_is_merged_as_one_intake_would_hold_it() {
        let policy = Policy { min_entities: 2, max_cells_per_entity: 2, ..Policy::default() };
        let gate = Gate::new(vec![spec()], policy.clone(), Scope::Tenant).unwrap();
        let (issued, ids) = issued(12);
        // Each entity sends to all three cells, its rows split between two
        // intakes in every way: it keeps the same two cells.
        let rows: Rows = (0..36).map(|i| (i % 12, (i / 12) as u32, 1.0 + (i % 5) as f64)).collect();
        let one = gate.release(&[fed(&gate, &issued, &ids, &rows)]);
        for split in 0..8u32 {
            let (mut a, mut b) = (Rows::new(), Rows::new());
            for &row in &rows {
                if split >> row.1 & 1 == 1 { a.push(row) } else { b.push(row) }
            }
            let mut first = fed(&gate, &issued, &ids, &a);
            first.absorb(&issued, &fed(&gate, &issued, &ids, &b), &issued).unwrap();
            assert_eq!(gate.release(&[first]), one, "split {split}");
        }
        // Under `fail`, an entity that reaches three cells only once merged
        // fails the merge, as it would have failed one intake.
        let fail = Policy { excess_contributions: ExcessContributions::Fail, ..policy };
        let gate = Gate::new(vec![spec()], fail, Scope::Tenant).unwrap();
        let mut first = fed(&gate, &issued, &ids, &vec![(0, 0, 1.0), (0, 1, 1.0)]);
        let second = fed(&gate, &issued, &ids, &vec![(0, 2, 1.0)]);
        let err = first.absorb(&issued, &second, &issued).unwrap_err();
        assert!(
            matches!(err, AbsorbError::Contract(ContractViolation::TooManyCells { limit: 2, .. })),
            "{err}"
        );
    }

    #[test]
    fn absorb_refuses_what_it_cannot_place_and_changes_nothing() {
        let gate = Gate::new(vec![spec()], Policy::default(), Scope::Tenant).unwrap();
        let (issued, ids) = issued(10);
        let mut run = fed(&gate, &issued, &ids, &(0..10).map(|e| (e, 0, 1.0)).collect());
        let before = gate.release(&[fed(&gate, &issued, &ids, &(0..10).map(|e| (e, 0, 1.0)).collect())]);

        // A pseudonym the run never issued.
        let mut stranger = IssuedEntities::new();
        stranger.issue(0xbad);
        let mut other = gate.intake();
        add(&mut other, &stranger, &[0xbad], &[1], &[1.0]).unwrap();
        let err = run.absorb(&issued, &other, &stranger).unwrap_err();
        assert_eq!(err, AbsorbError::UnknownEntity { pseudonym: 0xbad });

        // An intake of another gate: other tables, or another policy.
        let mut two = spec();
        two.name = "other".into();
        two.dimensions[0].name = "area".into();
        let wider = Gate::new(vec![spec(), two], Policy::default(), Scope::Tenant).unwrap();
        let err = run.absorb(&issued, &wider.intake(), &issued).unwrap_err();
        assert_eq!(err, AbsorbError::TableCount { expected: 1, got: 2 });
        let looser = Policy { max_cells_per_entity: 2, ..Policy::default() };
        let err =
            run.absorb(&issued, &Gate::new(vec![spec()], looser, Scope::Tenant).unwrap().intake(), &issued);
        assert_eq!(err.unwrap_err(), AbsorbError::Mismatch { table: "fuel".into() });
        let mut bounds = spec();
        bounds.measures[0].upper = 1000.0;
        let err = run.absorb(
            &issued,
            &Gate::new(vec![bounds], Policy::default(), Scope::Tenant).unwrap().intake(),
            &issued,
        );
        assert!(matches!(err, Err(AbsorbError::Mismatch { .. })));

        // An intake given with too few issued entities for what it holds.
        let full = fed(&gate, &issued, &ids, &vec![(9, 1, 1.0)]);
        let mut fewer = IssuedEntities::new();
        fewer.issue(ids[0]);
        assert!(matches!(run.absorb(&issued, &full, &fewer), Err(AbsorbError::Mismatch { .. })));

        assert_eq!(gate.release(&[run]), before, "nothing changed");
    }

    #[test]
    fn a_cleared_intake_is_as_new_and_keeps_its_memory() {
        let gate = Gate::new(vec![spec()], Policy::default(), Scope::Tenant).unwrap();
        let (issued, ids) = issued(20);
        let rows: Rows = (0..40).map(|i| (i % 20, (i % 3) as u32, i as f64)).collect();
        let mut intake = fed(&gate, &issued, &ids, &rows);
        assert!(intake.dropped_contributions() > 0);
        let bytes = intake.heap_bytes();
        intake.clear();
        assert_eq!(intake.heap_bytes(), bytes, "nothing freed");
        assert_eq!(intake.dropped_contributions(), 0);
        assert_eq!(gate.release(&[gate.intake()]), gate.release(&[intake]));

        let mut intake = fed(&gate, &issued, &ids, &rows);
        intake.clear();
        for &(e, code, value) in rows.iter().rev() {
            add(&mut intake, &issued, &ids[e..=e], &[code], &[value]).unwrap();
        }
        assert_eq!(intake.heap_bytes(), bytes, "refilled in place");
        assert_eq!(gate.release(&[intake]), gate.release(&[fed(&gate, &issued, &ids, &rows)]));
    }

    #[test]
    fn release_record_names_what_ran() {
        let (gate, intake) = tenant_gate(Policy::default());
        let release = gate.release(&[intake]);
        let record = release.record("abc", "def");
        assert_eq!((record.plugin_hash.as_str(), record.params_hash.as_str()), ("abc", "def"));
        assert_eq!(record.policy, Policy::default());
        assert_eq!(record.tables, vec![TableRecord { name: "fuel".into(), cells: 3, suppressed_cells: 3 }]);

        // The isolation mode shows in every record.
        let isolated = Policy { isolation: Isolation::Entity, ..Policy::default() };
        let (gate, intake) = tenant_gate(isolated.clone());
        let record = gate.release(&[intake]).record("abc", "def");
        assert_eq!(record.policy, isolated);
        let json = serde_json::to_string(&record).unwrap();
        assert!(json.contains(r#""isolation":"entity""#), "{json}");
        assert_eq!(serde_json::from_str::<ReleaseRecord>(&json).unwrap(), record);
        let json = serde_json::to_string(&release.record("abc", "def")).unwrap();
        assert!(json.contains(r#""isolation":"shared""#), "{json}");
    }
}

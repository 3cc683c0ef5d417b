//! kanon's aggregation gate: the only place where a plugin's contributions
//! become results.
//!
//! A plugin contributes `(entity pseudonym, group key, measures)` rows to the
//! output tables its manifest declared. The gate enforces the contract on
//! what it saw itself, never on what the plugin claims:
//!
//! - every entity is a pseudonym the host issued in this run ([`IssuedEntities`]);
//! - every key code lies inside its dimension's declared domain;
//! - every measure is clamped to its declared bounds;
//! - each entity counts towards at most `max_cells_per_entity` cells of a
//!   table, chosen independently of contribution order;
//! - a cell is released only with at least `k` distinct entities;
//! - tables linked by their declarations (nesting, identical domains) are
//!   all computed from the contributions to the one that refines them all,
//!   so they cannot disagree.
//!
//! Sums are kept in exact fixed point, so a release is bit-identical
//! whatever the order and batching of the contributions.
//!
//! No wasmtime and no I/O: this crate compiles and tests in seconds.

mod accumulator;
mod benchmark;
pub mod dp;
mod entities;
mod manifest;
mod policy;
mod prefetch;
mod release;
mod shape;
mod spec;
mod suppression;
mod tally;

pub use accumulator::MAX_MEASURES;
pub use accumulator::{Contributions, TableAccumulator};
pub use benchmark::{
    BandGiven, BenchmarkRelease, CellHistory, MAX_BANDS, OwnPosition, PositionCell, PositionTable, RankBand,
    ReleaseHistory, TableHistory,
};
pub use entities::IssuedEntities;
pub use manifest::{
    ColumnNeed, DatasetNeed, MAX_MANIFEST_BYTES, Manifest, ManifestError, ParamSpec, ParamType, ParamsError,
    PluginColumnType, is_printable, is_printable_char,
};
pub use policy::{
    Dominance, DpLayer, DpPolicy, EntityBudget, EntityBudgetLayer, ExcessContributions, Isolation, Policy,
    PolicyError, PolicyLayer, Privacy,
};
pub use release::{
    AbsorbError, Gate, GateError, Release, ReleaseRecord, ReleasedCell, ReleasedTable, Scope, TOTAL_LABEL,
    TableRecord, TenantIntake,
};
pub use spec::{
    Dimension, Domain, MAX_CELLS, MAX_DIMENSIONS, MAX_RELEASED_CELLS, MAX_RELEASED_SUMS, MAX_STATISTICS,
    Measure, SpecError, Statistic, TableSpec, validate_tables,
};
pub use suppression::MAX_LINKED_CELLS;

/// A contribution that breaks the contract between plugin and gate. Any of
/// these aborts the run: nothing of it is released.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ContractViolation {
    /// The entity pseudonym was never issued to this run.
    #[error("table `{table}`: entity pseudonym {pseudonym:#018x} was never issued to this run")]
    UnknownEntity { table: String, pseudonym: u64 },
    /// A key code lies outside its dimension's domain.
    #[error("table `{table}`: code {code} is outside the domain of dimension `{dimension}` ({size} values)")]
    CodeOutsideDomain { table: String, dimension: String, code: u32, size: u32 },
    /// The batch's columns do not match the table or each other.
    #[error("table `{table}`: {detail}")]
    MalformedBatch { table: String, detail: String },
    /// A measure value is NaN.
    #[error("table `{table}`: measure `{measure}` is NaN")]
    NotANumber { table: String, measure: String },
    /// An entity contributed to more cells than the policy allows, and the
    /// policy says to fail rather than drop.
    #[error("table `{table}`: an entity contributed to more than {limit} cells")]
    TooManyCells { table: String, limit: u32 },
}

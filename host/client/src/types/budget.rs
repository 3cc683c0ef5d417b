//! The privacy-budget ledger: what differentially private runs have charged
//! a tenant's ρ, and what remains in its window. Amounts are in nano-ρ
//! (10⁻⁹ ρ of zero-concentrated DP), the ledger's exact unit.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Where a charge stands. Every state counts against the budget: once a
/// run may have read data, its ρ is spent whether or not it released.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum ChargeState {
    /// Taken before the run read any data; the run has not finished.
    Reserved,
    /// The run's noisy release was stored.
    Released,
    /// The run read data and released nothing of its own (it failed, was
    /// cancelled or interrupted, or an identical request answered first).
    Spent,
}

/// One run's charge on one tenant's budget. The control store keeps these
/// as this JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Charge {
    pub tenant: String,
    /// The job (or benchmark run) charged.
    pub run: String,
    /// Who asked for the run: the analyst's (or vendor's) token name.
    pub by: String,
    /// ρ of the run's release, in nano-ρ.
    pub rho_nanos: u64,
    pub state: ChargeState,
    pub reserved_ms: u64,
    pub settled_ms: Option<u64>,
}

/// A tenant's privacy budget as it stands.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Budget {
    pub tenant: String,
    /// Whether the tenant's runs are differentially private at all (the
    /// floor's or the tenant's policy): the budget binds only then, but an
    /// approval or a job may ask for DP under a threshold tenant, and is
    /// charged alike.
    pub dp_required: bool,
    /// ρ the tenant's releases may spend in any window, in nano-ρ.
    pub budget_nanos: u64,
    pub window_days: u32,
    /// Charged within the window, in every state.
    pub charged_nanos: u64,
    pub remaining_nanos: u64,
    /// When the oldest charge in the window leaves it, if any does.
    pub next_free_ms: Option<u64>,
    /// The window's charges, oldest first: every one for the tenant admin
    /// and the operator, an analyst's own for an analyst.
    pub charges: Vec<Charge>,
}

/// What a benchmark's next run would charge, and how many runs its
/// participants' budgets allow: for its vendor, who sees no tenant's own
/// budget, only the smallest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct BenchmarkBudget {
    pub benchmark: String,
    /// ρ a run charges each tenant whose data it reads, in nano-ρ; `None`
    /// when the tenants opted in now run under thresholds (no charge).
    pub rho_nanos: Option<u64>,
    /// How many such runs the tightest budget of the tenants opted in now
    /// allows in its window, if the run is differentially private and at
    /// least t tenants are opted in. A tenant whose budget falls short is
    /// left out of a run, not the run refused.
    pub runs_possible: Option<u64>,
}

/// Nano-ρ as ρ, exactly, without trailing zeros: `24300000` is `0.0243`.
pub fn rho_text(nanos: u64) -> String {
    let text = format!("{}.{:09}", nanos / 1_000_000_000, nanos % 1_000_000_000);
    text.trim_end_matches('0').trim_end_matches('.').to_owned()
}

//! The privacy-budget ledger: every differentially private run charges its
//! tenant's ρ before it reads any data, and the charge is never refunded.
//!
//! A tenant's budget is `dp.budget_rho` per rolling `dp.window_days`, from
//! the operator's floor and the tenant's own layer (an approval or a job
//! cannot set it). A charge counts from when it was reserved until the
//! window has passed over it, whatever became of the run. Reserving reads
//! the standing and writes the charge in one write transaction, and the
//! store has one writer, so runs racing for the last of a budget are
//! serialized: together they never overspend.

use kanon_gate::PolicyLayer;
use serde_json::json;

use crate::error::{Error, Result};
use crate::store::{CHARGES_OF_RUN, PRIVACY_CHARGES, RecordRead, StoreError, Write};

pub use kanon_client::types::{Budget, Charge, ChargeState, rho_text as rho};

const DAY_MS: u64 = 24 * 60 * 60 * 1000;

/// A tenant's budget terms: the floor tightened by the tenant's layer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Terms {
    pub budget_nanos: u64,
    pub window_days: u32,
    /// Whether the floor or the tenant requires differential privacy.
    pub dp_required: bool,
}

impl Terms {
    pub(crate) fn of(floor: &PolicyLayer, tenant: &PolicyLayer) -> Result<Terms> {
        let policy = crate::tenants::policy_of(floor, tenant)?;
        Ok(Terms {
            budget_nanos: policy.dp.budget_nanos(),
            window_days: policy.dp.window_days,
            dp_required: policy.dp_rho_nanos().is_some(),
        })
    }

    fn window_ms(&self) -> u64 {
        u64::from(self.window_days) * DAY_MS
    }
}

/// Refuse a run's own layer (an approval's or a job's) that sets the
/// budget terms: they are the tenant's, and a smaller budget there would
/// read as a sub-budget the ledger does not keep.
pub(crate) fn refuse_budget_terms(layer: &PolicyLayer) -> Result<()> {
    if layer.dp.is_some_and(|dp| dp.sets_budget()) {
        return Err(Error::Unprocessable(
            "the policy is refused: `dp.budget_rho` and `dp.window_days` are the tenant's, set in its \
             policy; a job's or an approval's policy may set `dp.rho`"
                .into(),
        ));
    }
    Ok(())
}

/// A tenant's charges within the window ending at `now`, oldest first, and
/// what they leave.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Standing {
    pub terms: Terms,
    pub charges: Vec<Charge>,
    pub charged_nanos: u64,
    pub remaining_nanos: u64,
}

impl Standing {
    pub(crate) fn of(read: &impl RecordRead, tenant: &str, terms: Terms, now: u64) -> Result<Standing> {
        let since = now.saturating_sub(terms.window_ms());
        // A charge stamped in the future (the clock went back) still counts.
        let mut charges: Vec<Charge> = read
            .prefixed(PRIVACY_CHARGES, &prefix(tenant))?
            .into_iter()
            .filter(|c| c.reserved_ms > since)
            .collect();
        charges.sort_by(|a, b| (a.reserved_ms, &a.run).cmp(&(b.reserved_ms, &b.run)));
        let charged_nanos = charges.iter().map(|c| c.rho_nanos).fold(0u64, u64::saturating_add);
        let remaining_nanos = terms.budget_nanos.saturating_sub(charged_nanos);
        Ok(Standing { terms, charges, charged_nanos, remaining_nanos })
    }

    /// When `cost` will fit, if it does not now: once enough of the oldest
    /// charges have left the window. `None` if it fits now or never will
    /// (it is above the whole budget).
    pub(crate) fn fits_at(&self, cost: u64) -> Option<u64> {
        if cost <= self.remaining_nanos || cost > self.terms.budget_nanos {
            return None;
        }
        // What must leave the window: more than what is short when the
        // budget was made smaller than what is already charged.
        let must_leave = self.charged_nanos.saturating_add(cost).saturating_sub(self.terms.budget_nanos);
        let mut left = 0u64;
        for charge in &self.charges {
            left = left.saturating_add(charge.rho_nanos);
            if left >= must_leave {
                return Some(charge.reserved_ms.saturating_add(self.terms.window_ms()));
            }
        }
        None
    }

    /// The shortfall of a run costing `cost`, if it does not fit.
    pub(crate) fn shortfall(&self, tenant: &str, cost: u64, now: u64) -> Option<Shortfall> {
        (cost > self.remaining_nanos).then(|| Shortfall {
            tenant: tenant.to_owned(),
            cost,
            remaining: self.remaining_nanos,
            terms: self.terms,
            wait_ms: self.fits_at(cost).map(|at| at.saturating_sub(now)),
        })
    }

    /// As the API serves it.
    pub(crate) fn view(self, tenant: &str) -> Budget {
        let window_ms = self.terms.window_ms();
        Budget {
            tenant: tenant.to_owned(),
            dp_required: self.terms.dp_required,
            budget_nanos: self.terms.budget_nanos,
            window_days: self.terms.window_days,
            charged_nanos: self.charged_nanos,
            remaining_nanos: self.remaining_nanos,
            next_free_ms: self.charges.first().map(|c| c.reserved_ms.saturating_add(window_ms)),
            charges: self.charges,
        }
    }
}

/// Why a run was refused: it costs more than its tenant has left.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Shortfall {
    tenant: String,
    cost: u64,
    remaining: u64,
    terms: Terms,
    /// How long until it would fit, if it ever will.
    wait_ms: Option<u64>,
}

impl std::fmt::Display for Shortfall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "privacy budget: the run costs ρ = {}; tenant `{}` has ρ = {} of {} left in its {}-day window",
            rho(self.cost),
            self.tenant,
            rho(self.remaining),
            rho(self.terms.budget_nanos),
            self.terms.window_days,
        )?;
        match self.wait_ms {
            Some(ms) => write!(f, "; it fits again in {}", days_and_hours(ms)),
            None => write!(f, "; it will not fit in this window's budget, however long you wait"),
        }
    }
}

fn days_and_hours(ms: u64) -> String {
    let hours = ms.div_ceil(60 * 60 * 1000);
    match (hours / 24, hours % 24) {
        (0, h) => format!("{h} h"),
        (d, 0) => format!("{d} d"),
        (d, h) => format!("{d} d {h} h"),
    }
}

fn prefix(tenant: &str) -> String {
    // Tenant names have no `/` (`tenants::check_name`).
    format!("{tenant}/")
}

fn key(tenant: &str, run: &str) -> String {
    format!("{tenant}/{run}")
}

/// Charge `cost` to `tenant` for run `run`, asked for by `by`, in `write`,
/// if its budget has that much left: the charge and its `privacy.reserve`
/// entry on the tenant's chain, or the shortfall and nothing written. The
/// caller commits durably before the run reads any data.
pub(crate) fn reserve(
    write: &mut Write<'_>,
    terms: Terms,
    tenant: &str,
    run: &str,
    by: &str,
    cost: u64,
    now: u64,
) -> Result<Result<Charge, Shortfall>> {
    let standing = Standing::of(&*write, tenant, terms, now)?;
    if let Some(shortfall) = standing.shortfall(tenant, cost, now) {
        return Ok(Err(shortfall));
    }
    charge(write, &standing, tenant, run, by, cost, now).map(Ok)
}

/// Write the charge of `cost` on `tenant`, whose `standing` covers it, and
/// its `privacy.reserve` entry.
fn charge(
    write: &mut Write<'_>,
    standing: &Standing,
    tenant: &str,
    run: &str,
    by: &str,
    cost: u64,
    now: u64,
) -> Result<Charge> {
    let key = key(tenant, run);
    if write.get::<Charge>(PRIVACY_CHARGES, &key)?.is_some() {
        return Err(Error::Internal(format!("run `{run}` was charged already")));
    }
    let charge = Charge {
        tenant: tenant.to_owned(),
        run: run.to_owned(),
        by: by.to_owned(),
        rho_nanos: cost,
        state: ChargeState::Reserved,
        reserved_ms: now,
        settled_ms: None,
    };
    write.put(PRIVACY_CHARGES, &key, &charge)?;
    write.audit(
        tenant,
        "daemon",
        "privacy.reserve",
        json!({"run": run, "by": by, "rho_nanos": cost,
               "remaining_nanos": standing.remaining_nanos - cost, "window_days": standing.terms.window_days}),
    )?;
    Ok(charge)
}

/// Charge every tenant of `tenants` (with its terms) `cost` for run `run`,
/// all or none: the charges and their entries, or every shortfall (by
/// index) and nothing written. A benchmark run charges each tenant whose
/// data it reads.
pub(crate) fn reserve_all(
    write: &mut Write<'_>,
    tenants: &[(&str, Terms)],
    run: &str,
    by: &str,
    cost: u64,
    now: u64,
) -> Result<Result<(), Vec<(usize, Shortfall)>>> {
    let mut standings = Vec::with_capacity(tenants.len());
    let mut short = Vec::new();
    for (i, &(tenant, terms)) in tenants.iter().enumerate() {
        let standing = Standing::of(&*write, tenant, terms, now)?;
        if let Some(shortfall) = standing.shortfall(tenant, cost, now) {
            short.push((i, shortfall));
        }
        standings.push(standing);
    }
    if !short.is_empty() {
        return Ok(Err(short));
    }
    for (&(tenant, _), standing) in tenants.iter().zip(&standings) {
        charge(write, standing, tenant, run, by, cost, now)?;
    }
    Ok(Ok(()))
}

/// Settle run `run`'s reserved charges (one per tenant it read) as
/// `state`, each with its `privacy.settle` entry on its tenant's chain:
/// the ρ stays charged whatever the state. A charge on a tenant whose
/// chain takes no entries (it did not verify) stays `reserved`, which
/// counts the same, rather than keep the run from ending. Returns what the
/// run charged each tenant, reserved or settled before; 0 if it was never
/// charged.
pub(crate) fn settle(write: &mut Write<'_>, run: &str, state: ChargeState) -> Result<u64, StoreError> {
    let mut charged = 0;
    for mut charge in write.listed(PRIVACY_CHARGES, CHARGES_OF_RUN, run)? {
        charged = charged.max(charge.rho_nanos);
        if charge.state != ChargeState::Reserved || write.chain_broken(&charge.tenant) {
            continue;
        }
        charge.state = state;
        charge.settled_ms = Some(crate::now_ms());
        write.put(PRIVACY_CHARGES, &key(&charge.tenant, run), &charge)?;
        write.audit(
            &charge.tenant,
            "daemon",
            "privacy.settle",
            json!({"run": run, "state": state, "rho_nanos": charge.rho_nanos}),
        )?;
    }
    Ok(charged)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ControlStore;

    const COST: u64 = 24_300_000;
    const NOW: u64 = 400 * DAY_MS;

    fn terms(budget_nanos: u64) -> Terms {
        Terms { budget_nanos, window_days: 30, dp_required: true }
    }

    #[test]
    fn racing_runs_never_overspend_the_budget() {
        let dir = tempfile::tempdir().unwrap();
        let store = ControlStore::open(dir.path()).unwrap();
        let terms = terms(5 * COST + COST / 2);
        let charged = std::thread::scope(|scope| {
            let runs: Vec<_> = (0..16)
                .map(|i| {
                    let store = &store;
                    scope.spawn(move || {
                        let run = format!("job_{i:024}");
                        store.write(|w| reserve(w, terms, "acme", &run, "ana", COST, NOW)).unwrap().is_ok()
                    })
                })
                .collect();
            runs.into_iter().map(|run| run.join().unwrap()).filter(|&charged| charged).count()
        });
        assert_eq!(charged, 5);
        let read = store.read().unwrap();
        let standing = Standing::of(&read, "acme", terms, NOW).unwrap();
        assert_eq!((standing.charged_nanos, standing.remaining_nanos), (5 * COST, COST / 2));
        assert!(standing.charges.iter().all(|c| c.state == ChargeState::Reserved && c.rho_nanos == COST));
        let (chain, _) = read.audit("acme").unwrap();
        assert_eq!(chain.iter().filter(|e| e.action == "privacy.reserve").count(), 5);
        // Another tenant's budget is its own.
        assert_eq!(Standing::of(&read, "acme2", terms, NOW).unwrap().remaining_nanos, terms.budget_nanos);
    }

    #[test]
    fn a_charge_counts_for_its_window_and_the_refusal_says_when_it_fits() {
        let dir = tempfile::tempdir().unwrap();
        let store = ControlStore::open(dir.path()).unwrap();
        let terms = terms(2 * COST);
        let at = |days_ago: u64| NOW - days_ago * DAY_MS;
        // Charged under a larger budget, since made smaller; the last one
        // stamped later than now (the clock went back) counts too.
        let roomy = Terms { budget_nanos: 4 * COST, ..terms };
        let charged =
            [("job_old", at(31)), ("job_a", at(29)), ("job_b", at(10)), ("job_future", NOW + DAY_MS)];
        for (run, reserved) in charged {
            store.write(|w| reserve(w, roomy, "acme", run, "ana", COST, reserved)).unwrap().unwrap();
        }
        let read = store.read().unwrap();
        let standing = Standing::of(&read, "acme", terms, NOW).unwrap();
        let runs: Vec<&str> = standing.charges.iter().map(|c| c.run.as_str()).collect();
        assert_eq!(runs, ["job_a", "job_b", "job_future"], "job_old left the window");
        assert_eq!((standing.charged_nanos, standing.remaining_nanos), (3 * COST, 0));
        // One more fits when the two oldest have left: job_b's end.
        assert_eq!(standing.fits_at(COST), Some(at(10) + 30 * DAY_MS));
        let refusal = standing.shortfall("acme", COST, NOW).unwrap().to_string();
        assert_eq!(
            refusal,
            "privacy budget: the run costs ρ = 0.0243; tenant `acme` has ρ = 0 of 0.0486 left in its \
             30-day window; it fits again in 20 d"
        );
        let never = standing.shortfall("acme", 3 * COST, NOW).unwrap().to_string();
        assert!(never.ends_with("however long you wait"), "{never}");
        drop(read);
        // Refused: nothing written.
        let short = store.write(|w| reserve(w, terms, "acme", "job_c", "ana", COST, NOW)).unwrap();
        assert!(short.is_err());
        assert!(store.read().unwrap().get(PRIVACY_CHARGES, "acme/job_c").unwrap().is_none());
        let view = Standing::of(&store.read().unwrap(), "acme", terms, NOW).unwrap().view("acme");
        assert_eq!(view.next_free_ms, Some(at(29) + 30 * DAY_MS));
    }

    #[test]
    fn settling_keeps_the_charge_and_a_second_settle_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = ControlStore::open(dir.path()).unwrap();
        let terms = terms(COST);
        store.write(|w| reserve(w, terms, "acme", "job_a", "ana", COST, NOW)).unwrap().unwrap();
        let settled = store.write(|w| settle(w, "job_a", ChargeState::Released)).unwrap();
        assert_eq!(settled, COST);
        let again = store.write(|w| settle(w, "job_a", ChargeState::Spent)).unwrap();
        assert_eq!(again, COST);
        assert_eq!(store.write(|w| settle(w, "job_none", ChargeState::Spent)).unwrap(), 0);
        let read = store.read().unwrap();
        let standing = Standing::of(&read, "acme", terms, NOW).unwrap();
        assert_eq!((standing.remaining_nanos, standing.charges[0].state), (0, ChargeState::Released));
        let (chain, _) = read.audit("acme").unwrap();
        assert_eq!(chain.iter().filter(|e| e.action == "privacy.settle").count(), 1);
    }

    #[test]
    fn nano_rho_reads_as_rho() {
        assert_eq!(
            (rho(0), rho(24_300_000), rho(1_500_000_000), rho(1)),
            ("0".into(), "0.0243".into(), "1.5".into(), "0.000000001".into())
        );
        assert_eq!(
            (days_and_hours(1), days_and_hours(DAY_MS), days_and_hours(DAY_MS + 1)),
            ("1 h".into(), "1 d".into(), "1 d 1 h".into())
        );
    }

    #[test]
    fn only_the_tenant_sets_its_budget() {
        let job = PolicyLayer::from_toml("job.toml", "privacy = \"dp\"\n[dp]\nrho = 0.01\n").unwrap();
        refuse_budget_terms(&job).unwrap();
        let sub_budget = PolicyLayer::from_toml("job.toml", "[dp]\nbudget_rho = 0.1\n").unwrap();
        assert!(refuse_budget_terms(&sub_budget).unwrap_err().to_string().contains("are the tenant's"));
        let floor = PolicyLayer::from_toml("floor.toml", "[dp]\nbudget_rho = 0.3\n").unwrap();
        let tenant = PolicyLayer::from_toml("t.toml", "privacy = \"dp\"\n[dp]\nwindow_days = 90\n").unwrap();
        let terms = Terms::of(&floor, &tenant).unwrap();
        assert_eq!(terms, Terms { budget_nanos: 300_000_000, window_days: 90, dp_required: true });
        assert!(!Terms::of(&floor, &PolicyLayer::default()).unwrap().dp_required);
    }
}

//! Differential privacy through the daemon: jobs charge their tenant's
//! privacy budget before they read anything, a replay charges nothing,
//! racing jobs never overspend, and the ledger is on the tenant's chain.

use kanon_client::Client;
use kanon_client::types::{ChargeState, JobState, PluginRecord, SubmitRequest};
use kanon_daemon::Role;
use kanon_gate::{DpLayer, PolicyLayer, Privacy};

use crate::daemon::{TestDaemon, actions, approve, audit, ingest_trips, submit_of, upload_plugin, wait_for};

const RHO: u64 = 24_300_000;

/// A tenant whose policy requires DP with a budget of `budget_rho`, its
/// trips, the emissions plugin and an approval for `ana`.
fn dp_tenant(d: &TestDaemon, tenant: &str, budget_rho: f64, analyst: &Client) -> (Client, SubmitRequest) {
    let admin = d.tenant(tenant);
    let policy = PolicyLayer {
        privacy: Some(Privacy::Dp),
        dp: Some(DpLayer { budget_rho: Some(budget_rho), ..DpLayer::default() }),
        ..PolicyLayer::default()
    };
    admin.set_tenant_policy(tenant, &policy).unwrap();
    ingest_trips(&admin, tenant);
    let uploaded = upload_plugin(analyst, kanon_bundled::EMISSIONS_BENCHMARK);
    assert!([200, 201].contains(&uploaded.status), "{}", uploaded.text());
    let plugin: PluginRecord = uploaded.json().unwrap();
    let approval = approve(&admin, tenant, &plugin, "ana");
    (admin, submit_of(tenant, &plugin, &approval))
}

fn with_rho(ask: &SubmitRequest, rho: f64) -> SubmitRequest {
    let dp = DpLayer { rho: Some(rho), ..DpLayer::default() };
    SubmitRequest { policy: Some(PolicyLayer { dp: Some(dp), ..PolicyLayer::default() }), ..ask.clone() }
}

#[test]
fn a_dp_job_is_charged_once_a_replay_is_free_and_an_overspend_is_refused() {
    let d = TestDaemon::start();
    let (analyst, _) = d.token(Role::Analyst, "ana", None, None);
    let (admin, ask) = dp_tenant(&d, "acme", 0.05, &analyst);

    let first = wait_for(&analyst, &analyst.submit_job(&ask).unwrap().id);
    assert_eq!((first.state, first.rho_charged_nanos), (JobState::Succeeded, RHO), "{first:?}");
    let release = analyst.job_results(&first.id).unwrap();
    assert_eq!(release.dp.as_ref().map(|dp| dp.rho_nanos), Some(RHO));
    let cells: usize = release.tables.iter().map(|t| t.cells.len()).sum();
    assert!(cells > 0 && release.tables.iter().all(|t| t.suppressed_cells == 0 && t.noise_sd.is_some()));
    assert!(
        release.tables.iter().flat_map(|t| &t.cells).all(|c| c.values.is_some() && c.intervals.is_some())
    );

    // Its CSV carries each value's noise and interval.
    let csv = analyst.job_results_as(&first.id, "csv").unwrap();
    let header = csv.lines().next().unwrap();
    assert!(header.contains(",count,count_sd,count_lo95,count_hi95,"), "{header}");

    // The same request: the stored release, the same noise, no charge.
    let again = wait_for(&analyst, &analyst.submit_job(&ask).unwrap().id);
    assert_eq!((again.replay_of.as_deref(), again.rho_charged_nanos), (Some(first.id.as_str()), 0));
    assert_eq!(analyst.job_results(&again.id).unwrap(), release);

    // Another ρ is another request, charged again; then too little is left.
    let cheaper = wait_for(&analyst, &analyst.submit_job(&with_rho(&ask, 0.02)).unwrap().id);
    assert_eq!((cheaper.state, cheaper.rho_charged_nanos), (JobState::Succeeded, 20_000_000));
    let refused = analyst.submit_job(&with_rho(&ask, 0.01)).unwrap_err();
    assert_eq!(refused.status(), Some(409), "{refused}");
    let message = refused.to_string();
    assert!(
        message.contains("the run costs ρ = 0.01; tenant `acme` has ρ = 0.0057 of 0.05 left"),
        "{message}"
    );
    assert!(message.contains("it fits again in 30 d"), "{message}");

    // The tenant's ledger: both charges released, on its chain with their
    // settlements, and what remains.
    let budget = admin.tenant_budget("acme").unwrap();
    assert!(budget.dp_required);
    assert_eq!((budget.charged_nanos, budget.remaining_nanos), (RHO + 20_000_000, 5_700_000));
    let charged: Vec<(&str, u64, ChargeState)> =
        budget.charges.iter().map(|c| (c.run.as_str(), c.rho_nanos, c.state)).collect();
    assert_eq!(
        charged,
        [
            (first.id.as_str(), RHO, ChargeState::Released),
            (cheaper.id.as_str(), 20_000_000, ChargeState::Released)
        ]
    );
    let chain = audit(&admin, "acme");
    let privacy: Vec<&str> = actions(&chain).into_iter().filter(|a| a.starts_with("privacy.")).collect();
    assert_eq!(
        privacy,
        ["privacy.reserve", "privacy.settle", "privacy.reserve", "privacy.settle", "privacy.refused"]
    );
    let refusal = chain.entries.iter().find(|e| e.action == "privacy.refused").unwrap();
    assert_eq!(refusal.detail["rho_nanos"], 10_000_000, "{refusal:?}");

    // The analyst sees the totals and its own charges while its approval
    // lives; another analyst, and a tenant's admin elsewhere, do not.
    let seen = analyst.tenant_budget("acme").unwrap();
    assert_eq!((seen.remaining_nanos, seen.charges.len()), (5_700_000, 2));
    let (stranger, _) = d.token(Role::Analyst, "eve", None, None);
    assert_eq!(stranger.tenant_budget("acme").unwrap_err().status(), Some(404));
    let other_admin = d.tenant("other");
    assert_eq!(other_admin.tenant_budget("acme").unwrap_err().status(), Some(403));
    // The operator, without a support grant, is refused as for job lists.
    assert_eq!(d.operator.tenant_budget("acme").unwrap_err().status(), Some(403));
}

#[test]
fn racing_dp_jobs_never_overspend_and_a_refused_one_reads_nothing() {
    let d = TestDaemon::start_with(tempfile::tempdir().unwrap(), |config| {
        config.jobs.concurrent = 4;
        config.jobs.per_tenant = 4;
    });
    let (analyst, _) = d.token(Role::Analyst, "ana", None, None);
    // Eight requests, each its own ρ below the tenant's (a larger one
    // would be cut to it, and be the same request): any three of them fit
    // in 0.073, no four do.
    let (admin, ask) = dp_tenant(&d, "acme", 0.073, &analyst);
    let rhos: Vec<f64> = (0..8).map(|i| 0.0235 + 0.0001 * f64::from(i)).collect();
    let submitted: Vec<_> = std::thread::scope(|scope| {
        let runs: Vec<_> = rhos
            .iter()
            .map(|&rho| {
                let (analyst, ask) = (&analyst, &ask);
                scope.spawn(move || analyst.submit_job(&with_rho(ask, rho)))
            })
            .collect();
        runs.into_iter().map(|run| run.join().unwrap()).collect()
    });
    let mut succeeded = 0;
    let mut short = Vec::new();
    for outcome in submitted {
        match outcome {
            Ok(job) => {
                let job = wait_for(&analyst, &job.id);
                match job.state {
                    JobState::Succeeded => {
                        assert_eq!(job.replay_of, None);
                        succeeded += 1;
                    }
                    _ => {
                        assert_eq!(job.failure.as_deref(), Some("privacy-budget"), "{job:?}");
                        assert_eq!(job.rho_charged_nanos, 0);
                        short.push(job.id);
                    }
                }
            }
            Err(refused) => assert_eq!(refused.status(), Some(409), "{refused}"),
        }
    }
    assert_eq!(succeeded, 3);
    let budget = admin.tenant_budget("acme").unwrap();
    assert_eq!(budget.charges.len(), 3);
    assert!(budget.charged_nanos <= budget.budget_nanos, "{budget:?}");
    // A job refused at its start never ran: its log says why, with no
    // figures, because the runtime never opened its data.
    for id in &short {
        let log = admin.job_log(id).unwrap();
        assert!(log.figures.is_none(), "{log:?}");
        assert!(log.error.as_deref().is_some_and(|e| e.starts_with("privacy budget:")), "{log:?}");
    }
}

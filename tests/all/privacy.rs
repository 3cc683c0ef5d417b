//! Differential privacy through the daemon: jobs charge their tenant's
//! privacy budget before they read anything, a replay charges nothing,
//! racing jobs never overspend, and the ledger is on the tenant's chain. A
//! benchmark version charges every tenant it reads, and leaves out a
//! tenant whose budget cannot pay.

use kanon_client::Client;
use kanon_client::types::{ChargeState, JobState, PluginRecord, SubmitRequest};
use kanon_daemon::Role;
use kanon_gate::{DpLayer, PolicyLayer, Privacy};

use crate::benchmarks::{carriers, join, publish, run};
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
    let refused = audit(&admin, "acme");
    let refused = refused.entries.iter().find(|e| e.action == "access.refused").expect("on the chain");
    assert!(refused.actor.contains(" eve ") && refused.detail["what"] == "privacy budget", "{refused:?}");
    let other_admin = d.tenant("other");
    assert_eq!(other_admin.tenant_budget("acme").unwrap_err().status(), Some(403));
    // The operator, without a support grant, is refused as for job lists.
    assert_eq!(d.operator.tenant_budget("acme").unwrap_err().status(), Some(403));
}

/// A dataset deleted and uploaded anew starts again at version 1: its
/// other data is another request, run and charged, never answered with the
/// release of the deleted data.
#[test]
fn data_uploaded_anew_under_an_old_version_number_is_another_request() {
    let d = TestDaemon::start();
    let (analyst, _) = d.token(Role::Analyst, "ana", None, None);
    let (admin, ask) = dp_tenant(&d, "acme", 0.5, &analyst);
    let first = wait_for(&analyst, &analyst.submit_job(&ask).unwrap().id);
    assert_eq!(first.state, JobState::Succeeded, "{first:?}");
    admin.revoke_approval("acme", &ask.approval).unwrap();
    admin.delete_dataset("acme", "trips").unwrap();
    let csv = kanon_client::UploadArgs {
        format: "csv".into(),
        entity: Some("driver_id".into()),
        ..kanon_client::UploadArgs::default()
    };
    let again =
        admin.ingest("acme", "trips", &csv, std::io::Cursor::new(kanon_tests::fleet_csv(60, 1.0))).unwrap();
    assert_eq!(again.version, 1, "the number comes again");
    let plugin = analyst.plugin(&ask.plugin).unwrap();
    let ask = submit_of("acme", &plugin, &approve(&admin, "acme", &plugin, "ana"));
    let second = wait_for(&analyst, &analyst.submit_job(&ask).unwrap().id);
    assert_eq!(
        (second.state, second.replay_of.as_deref(), second.rho_charged_nanos),
        (JobState::Succeeded, None, RHO),
        "{second:?}"
    );
    assert_eq!(second.versions, first.versions);
    assert_ne!(analyst.job_results(&second.id).unwrap(), analyst.job_results(&first.id).unwrap());
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

/// A carrier's policy: differential privacy at ρ `rho` (or the default),
/// with a budget of 0.05.
fn dp_carrier(rho: Option<f64>) -> PolicyLayer {
    PolicyLayer {
        privacy: Some(Privacy::Dp),
        dp: Some(DpLayer { rho, budget_rho: Some(0.05), ..DpLayer::default() }),
        ..PolicyLayer::default()
    }
}

#[test]
fn a_dp_benchmark_charges_every_tenant_it_reads_replays_free_and_leaves_out_a_short_budget() {
    let d = TestDaemon::start();
    let admins = carriers(&d);
    let (vendor, vendor_token) = d.token(Role::Vendor, "benchco", None, None);
    let (rival, _) = d.token(Role::Vendor, "rival", None, None);
    let plugin = vendor.upload_plugin(kanon_bundled::EMISSIONS_BENCHMARK).unwrap();
    publish(&vendor, "co2", &plugin.hash, "");
    for (i, admin) in admins.iter().enumerate().take(6) {
        join(admin, i, "co2");
    }
    let tenant = |i: usize| format!("carrier-{i}");
    // Two carriers require DP, with small budgets; the others do not, and
    // are charged all the same when they take part in a DP version.
    for i in [0, 1] {
        admins[i].set_tenant_policy(&tenant(i), &dp_carrier(None)).unwrap();
    }
    let ahead = vendor.benchmark_budget("co2").unwrap();
    assert_eq!((ahead.rho_nanos, ahead.runs_possible), (Some(RHO), Some(2)), "0.05 / 0.0243");
    assert_eq!(rival.benchmark_budget("co2").unwrap_err().status(), Some(404));

    let first = run(&vendor, "co2");
    assert_eq!(
        (first.state, first.participants, first.version, first.rho_charged_nanos),
        (JobState::Succeeded, Some(6), Some(1), RHO),
        "{first:?}"
    );
    let version = vendor.benchmark_version("co2", "1").unwrap();
    assert_eq!(version.release.dp.as_ref().map(|dp| dp.rho_nanos), Some(RHO));
    assert!(version.release.tables.iter().all(|t| t.suppressed_cells == 0 && t.held_cells == 0));
    assert!(version.release.tables.iter().flat_map(|t| &t.cells).all(|c| c.intervals.is_some()));
    // Each tenant's own position: the noisy peers with their intervals, no
    // band.
    let position = admins[2].own_position(&tenant(2), "co2", "1").unwrap().position;
    let cells = || position.tables.iter().flat_map(|t| &t.cells);
    assert!(cells().all(|c| c.peer_intervals.is_some() && c.bands.iter().all(Option::is_none)));
    assert!(cells().any(|c| c.own.is_some()));
    // Every tenant it read was charged once, on its own chain; the one
    // not opted in was not.
    for (i, admin) in admins.iter().enumerate() {
        let budget = admin.tenant_budget(&tenant(i)).unwrap();
        let charged: Vec<(&str, &str, u64, ChargeState)> =
            budget.charges.iter().map(|c| (c.run.as_str(), c.by.as_str(), c.rho_nanos, c.state)).collect();
        if i == 6 {
            assert_eq!(charged, [], "not in the benchmark");
            continue;
        }
        assert_eq!(charged, [(first.id.as_str(), "benchco", RHO, ChargeState::Released)], "{}", tenant(i));
        let chain = audit(admin, &tenant(i));
        let chain = actions(&chain);
        assert!(chain.contains(&"privacy.reserve") && chain.contains(&"privacy.settle"), "{chain:?}");
    }

    // The same request again: the same version, nothing read or charged.
    let again = run(&vendor, "co2");
    assert_eq!(
        (again.state, again.version, again.replay_of.as_deref(), again.rho_charged_nanos),
        (JobState::Succeeded, Some(1), Some(first.id.as_str()), 0),
        "{again:?}"
    );
    assert_eq!(vendor.benchmark_versions("co2").unwrap().len(), 1);
    assert_eq!(admins[3].tenant_budget(&tenant(3)).unwrap().charges.len(), 1);

    // A smaller ρ is another request, charged to all six; the DP carriers
    // have 0.0057 left after it.
    admins[0].set_tenant_policy(&tenant(0), &dp_carrier(Some(0.02))).unwrap();
    let cheaper = run(&vendor, "co2");
    assert_eq!((cheaper.version, cheaper.rho_charged_nanos), (Some(2), 20_000_000), "{cheaper:?}");
    let left = admins[1].tenant_budget(&tenant(1)).unwrap();
    assert_eq!(left.remaining_nanos, 5_700_000);
    assert_eq!(vendor.benchmark_budget("co2").unwrap().runs_possible, Some(0));

    // At ρ = 0.01 both DP carriers fall short: they are left out and told
    // why, and the four left are fewer than t. Nobody is charged, and the
    // vendor learns neither who was left out nor why.
    admins[0].set_tenant_policy(&tenant(0), &dp_carrier(Some(0.01))).unwrap();
    let short = run(&vendor, "co2");
    assert_eq!(
        (short.state, short.failure.as_deref(), short.participants, short.rho_charged_nanos),
        (JobState::Failed, Some("too-few-tenants"), Some(4), 0),
        "{short:?}"
    );
    for i in [0, 1] {
        let chain = audit(&admins[i], &tenant(i));
        let told: Vec<&str> = chain
            .entries
            .iter()
            .filter(|e| e.action == "benchmark.skipped")
            .map(|e| e.detail["reason"].as_str().unwrap())
            .collect();
        let says = format!(
            "privacy budget: the run costs ρ = 0.01; tenant `{}` has ρ = 0.0057 of 0.05 left in its 30-day window",
            tenant(i)
        );
        assert!(told.len() == 1 && told[0].starts_with(&says), "{told:?}");
    }
    assert_eq!(admins[4].tenant_budget(&tenant(4)).unwrap().charges.len(), 2, "charged for versions 1 and 2");
    let seen = serde_json::to_string(&short).unwrap();
    assert!(!seen.contains("carrier") && !seen.contains("budget"), "{seen}");

    // An analyst holding the vendor's old name sees none of the
    // benchmark's charges: only its own jobs'.
    d.operator.revoke_token(&vendor_token).unwrap();
    let (namesake, _) = d.token(Role::Analyst, "benchco", None, None);
    approve(&admins[3], &tenant(3), &plugin, "benchco");
    let seen = namesake.tenant_budget(&tenant(3)).unwrap();
    assert_eq!((seen.charged_nanos, seen.charges.len()), (RHO + 20_000_000, 0), "{seen:?}");
}

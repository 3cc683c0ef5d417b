//! The one lifecycle of queued work, through the daemon: jobs and benchmark
//! runs wait in one queue, take slots from one scheduler, and a cancel drops
//! a queued piece at once and interrupts a running one, which then releases
//! nothing.

use std::time::{Duration, Instant};

use kanon_client::Client;
use kanon_daemon::{DaemonConfig, Role};
use kanon_runtime::RunLimits;
use serde_json::{Value, json};

use crate::benchmarks::{carriers, join};
use crate::daemon::{TestDaemon, approve, audit, ingest_trips, upload_plugin};

/// Poll `path` until its `state` is `state`.
fn wait_state(client: &Client, path: &str, state: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let now: Value = client.get(path).unwrap();
        if now["state"] == state {
            return now;
        }
        assert!(Instant::now() < deadline, "{path} never reached `{state}`: {now}");
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// The host chain's entries with `action`.
fn host_entries(d: &TestDaemon, action: &str) -> Vec<Value> {
    let host: Value = d.operator.get("/v1/audit").unwrap();
    host["entries"].as_array().unwrap().iter().filter(|e| e["action"] == action).cloned().collect()
}

/// A daemon whose runs may take two minutes (`configure`d further), tenant
/// `acme` with its trips, analyst `ana`, and a submit request of the
/// plugin that sleeps until cancelled, approved for `ana`.
fn sleeper_daemon(configure: impl FnOnce(&mut DaemonConfig)) -> (TestDaemon, Client, Client, Value) {
    let limits = RunLimits { timeout: Duration::from_secs(120), ..kanon_tests::test_limits() };
    let d = TestDaemon::start_with_limits(tempfile::tempdir().unwrap(), configure, limits);
    let admin = d.tenant("acme");
    ingest_trips(&admin, "acme");
    let (analyst, _) = d.token(Role::Analyst, "ana", None, None);
    let plugin: Value =
        upload_plugin(&analyst, &std::fs::read(kanon_fixtures::SLEEPS_FOREVER).unwrap()).json().unwrap();
    let approval = approve(&admin, "acme", &plugin, "ana");
    let submit = json!({"tenant": "acme", "plugin": plugin["hash"], "approval": approval["id"],
                        "datasets": {"trips": "trips"}});
    (d, admin, analyst, submit)
}

/// Submit `submit` and wait until the job runs; its id.
fn running_job(analyst: &Client, submit: &Value) -> String {
    let job: Value = analyst.send("POST", "/v1/jobs", submit).unwrap();
    let id = job["id"].as_str().unwrap().to_owned();
    wait_state(analyst, &format!("/v1/jobs/{id}"), "running");
    id
}

#[test]
fn a_cancel_drops_queued_work_and_interrupts_running_work_of_either_kind() {
    // Runs long enough to be cancelled mid-way: without a cancel, the
    // sleeping plugin would run for two minutes.
    let (d, admin, analyst, submit) = sleeper_daemon(|_| {});

    // Jobs: the tenant's one slot holds the first; the second waits.
    let first = running_job(&analyst, &submit);
    let second: Value = analyst.send("POST", "/v1/jobs", &submit).unwrap();
    let second = second["id"].as_str().unwrap().to_owned();

    // Benchmark runs: one at a time, so a second benchmark's run waits
    // while the first's sleeps, beside the running job.
    let admins = carriers(&d);
    let (vendor, _) = d.token(Role::Vendor, "benchco", None, None);
    let slow: Value =
        upload_plugin(&vendor, &std::fs::read(kanon_fixtures::SLEEPS_FOREVER).unwrap()).json().unwrap();
    for name in ["slow", "slower"] {
        let _: Value =
            vendor.send("POST", "/v1/benchmarks", &json!({"name": name, "plugin": slow["hash"]})).unwrap();
        for (i, admin) in admins.iter().enumerate().take(6) {
            join(admin, i, name);
        }
    }
    let running: Value = vendor.send("POST", "/v1/benchmarks/slow/runs", &json!({})).unwrap();
    let running = format!("/v1/benchmarks/slow/runs/{}", running["id"].as_str().unwrap());
    wait_state(&vendor, &running, "running");
    let waiting: Value = vendor.send("POST", "/v1/benchmarks/slower/runs", &json!({})).unwrap();
    let waiting = format!("/v1/benchmarks/slower/runs/{}", waiting["id"].as_str().unwrap());
    let again = vendor.raw("POST", "/v1/benchmarks/slow/runs", Some(("application/json", b"{}"))).unwrap();
    assert_eq!(again.status, 409, "one run of a benchmark at a time: {}", again.text());

    // Nothing queued starts while the slots are held.
    std::thread::sleep(Duration::from_millis(1500));
    let job: Value = analyst.get(&format!("/v1/jobs/{second}")).unwrap();
    assert_eq!(job["state"], "queued", "{job}");
    let run: Value = vendor.get(&waiting).unwrap();
    assert_eq!(run["state"], "queued", "{run}");

    // A queued piece is cancelled at once and never starts.
    let cancelled: Value = analyst.send("POST", &format!("/v1/jobs/{second}/cancel"), &json!({})).unwrap();
    assert_eq!(cancelled["state"], "cancelled", "{cancelled}");
    let cancelled: Value = vendor.send("POST", &format!("{waiting}/cancel"), &json!({})).unwrap();
    assert_eq!(cancelled["state"], "cancelled", "{cancelled}");
    assert!(cancelled["started_ms"].is_null(), "{cancelled}");

    // A running one is interrupted well before its deadline and releases
    // nothing.
    let asked = Instant::now();
    let marked: Value = analyst.send("POST", &format!("/v1/jobs/{first}/cancel"), &json!({})).unwrap();
    assert_eq!(
        (marked["state"].as_str(), marked["cancel_requested"].as_bool()),
        (Some("running"), Some(true))
    );
    let marked: Value = vendor.send("POST", &format!("{running}/cancel"), &json!({})).unwrap();
    assert_eq!(
        (marked["state"].as_str(), marked["cancel_requested"].as_bool()),
        (Some("running"), Some(true))
    );
    let job = wait_state(&analyst, &format!("/v1/jobs/{first}"), "cancelled");
    let run = wait_state(&vendor, &running, "cancelled");
    assert!(asked.elapsed() < Duration::from_secs(30), "the cancels took {:?}", asked.elapsed());
    assert!(job["stats"].is_null(), "{job}");
    assert!(run["version"].is_null() && run["stats"].is_null(), "{run}");
    let results = analyst.raw("GET", &format!("/v1/jobs/{first}/results"), None).unwrap();
    assert_eq!(results.status, 409, "{}", results.text());
    assert!(results.text().contains("no results"), "{}", results.text());
    let versions: Value = vendor.get("/v1/benchmarks/slow/versions").unwrap();
    assert_eq!(versions, json!([]));

    // A cancel of finished work is a conflict.
    let late =
        analyst.raw("POST", &format!("/v1/jobs/{first}/cancel"), Some(("application/json", b"{}"))).unwrap();
    assert_eq!(late.status, 409, "{}", late.text());
    let late = vendor.raw("POST", &format!("{running}/cancel"), Some(("application/json", b"{}"))).unwrap();
    assert_eq!(late.status, 409, "{}", late.text());

    // Each cancel and each end is on the right chain.
    let chain = audit(&admin, "acme");
    let of = |action: &str| chain.entries.iter().filter(|e| e.action == action).count();
    assert_eq!(of("job.cancel"), 2);
    let finished =
        chain.entries.iter().find(|e| e.action == "job.finish" && e.detail["job"] == first.as_str());
    assert_eq!(finished.unwrap().detail["outcome"], "cancelled");
    assert_eq!(host_entries(&d, "benchmark.run.cancel").len(), 2);
    let ends = host_entries(&d, "benchmark.run.finish");
    assert_eq!(ends.len(), 1, "the queued run never started: {ends:?}");
    assert_eq!(ends[0]["detail"]["outcome"], "cancelled");

    // The slots are free again: a new run of the first benchmark starts.
    let next: Value = vendor.send("POST", "/v1/benchmarks/slow/runs", &json!({})).unwrap();
    let next = format!("/v1/benchmarks/slow/runs/{}", next["id"].as_str().unwrap());
    wait_state(&vendor, &next, "running");
    let _: Value = vendor.send("POST", &format!("{next}/cancel"), &json!({})).unwrap();
    wait_state(&vendor, &next, "cancelled");
}

#[test]
fn a_wait_answers_once_work_ends_or_its_time_is_up() {
    let (d, _, analyst, submit) = sleeper_daemon(|_| {});
    let sleeping = running_job(&analyst, &submit);
    let path = format!("/v1/jobs/{sleeping}");

    // An hour asked, the cap waited: checked at the end, meanwhile the rest.
    let capped = std::thread::spawn({
        let (analyst, path) = (analyst.clone(), path.clone());
        move || {
            let asked = Instant::now();
            let job: Value = analyst.get(&format!("{path}?wait=3600")).unwrap();
            (asked.elapsed(), job)
        }
    });

    for bad in ["abc", "-1", "1.5", "", "99999999999999999999999"] {
        let reply = analyst.raw("GET", &format!("{path}?wait={bad}"), None).unwrap();
        assert_eq!(reply.status, 400, "wait={bad}: {}", reply.text());
    }
    // As before for whoever may not see it: the same 404 as without a wait.
    let (other, _) = d.token(Role::Analyst, "other", None, None);
    let reply = other.raw("GET", &format!("{path}?wait=5"), None).unwrap();
    assert_eq!(reply.status, 404, "{}", reply.text());

    // The wait is over before the job: its state then.
    let asked = Instant::now();
    let job: Value = analyst.wait_job(&sleeping, Duration::from_secs(1)).unwrap();
    assert_eq!(job["state"], "running", "{job}");
    assert!(
        (Duration::from_secs(1)..Duration::from_secs(10)).contains(&asked.elapsed()),
        "{:?}",
        asked.elapsed()
    );

    // A job queued behind it ends by its cancel: the waiter hears at once.
    let queued: Value = analyst.send("POST", "/v1/jobs", &submit).unwrap();
    let queued = queued["id"].as_str().unwrap().to_owned();
    let waiter = std::thread::spawn({
        let (analyst, queued) = (analyst.clone(), queued.clone());
        move || {
            let asked = Instant::now();
            let job: Value = analyst.wait_job(&queued, Duration::from_secs(60)).unwrap();
            (asked.elapsed(), job)
        }
    });
    std::thread::sleep(Duration::from_millis(500));
    let _: Value = analyst.send("POST", &format!("/v1/jobs/{queued}/cancel"), &json!({})).unwrap();
    let (took, job) = waiter.join().unwrap();
    assert_eq!(job["state"], "cancelled", "{job}");
    assert!(took < Duration::from_secs(10), "{took:?}");

    // A job that runs to its end on another tenant (a slot of the two is
    // free): the waiter has its result as soon as it is recorded.
    let beta = d.tenant("beta");
    ingest_trips(&beta, "beta");
    let emissions: Value = upload_plugin(&analyst, kanon_bundled::EMISSIONS_BENCHMARK).json().unwrap();
    let approval = approve(&beta, "beta", &emissions, "ana");
    let quick: Value = analyst
        .send(
            "POST",
            "/v1/jobs",
            &json!({"tenant": "beta", "plugin": emissions["hash"], "approval": approval["id"],
                    "datasets": {"trips": "trips"}}),
        )
        .unwrap();
    let asked = Instant::now();
    let job: Value = analyst.wait_job(quick["id"].as_str().unwrap(), Duration::from_secs(60)).unwrap();
    assert_eq!(job["state"], "succeeded", "{job}");
    assert!(asked.elapsed() < Duration::from_secs(30), "{:?}", asked.elapsed());

    let (took, job) = capped.join().unwrap();
    assert_eq!(job["state"], "running", "{job}");
    let cap = Duration::from_secs(kanon_client::MAX_WAIT_SECS);
    assert!((cap..cap + Duration::from_secs(15)).contains(&took), "{took:?}");
    let _: Value = analyst.send("POST", &format!("/v1/jobs/{sleeping}/cancel"), &json!({})).unwrap();
    let job: Value = analyst.wait_job(&sleeping, Duration::from_secs(60)).unwrap();
    assert_eq!(job["state"], "cancelled", "{job}");
}

/// Waits hold request slots, so they are budgeted: with 4 slots, two
/// waits in all and one per caller. One beyond answers at once with the
/// state as it stands; once a wait ends, its place is free again.
#[test]
fn a_wait_beyond_the_budget_answers_at_once() {
    let (_d, _, analyst, submit) = sleeper_daemon(|config| config.limits.max_concurrent_requests = 4);
    let sleeping = running_job(&analyst, &submit);

    let waiter = std::thread::spawn({
        let (analyst, sleeping) = (analyst.clone(), sleeping.clone());
        move || {
            let asked = Instant::now();
            let job: Value = analyst.wait_job(&sleeping, Duration::from_secs(4)).unwrap();
            (asked.elapsed(), job)
        }
    });
    std::thread::sleep(Duration::from_millis(500));
    // The same caller again: beyond its share, answered at once.
    let asked = Instant::now();
    let job: Value = analyst.wait_job(&sleeping, Duration::from_secs(30)).unwrap();
    assert_eq!(job["state"], "running", "{job}");
    assert!(asked.elapsed() < Duration::from_secs(2), "{:?}", asked.elapsed());
    let (took, job) = waiter.join().unwrap();
    assert_eq!(job["state"], "running", "{job}");
    assert!(took >= Duration::from_secs(4), "the first wait waited: {took:?}");
    // Its place is free again: a wait waits.
    let asked = Instant::now();
    let _: Value = analyst.wait_job(&sleeping, Duration::from_secs(2)).unwrap();
    assert!(asked.elapsed() >= Duration::from_secs(2), "{:?}", asked.elapsed());
    let _: Value = analyst.send("POST", &format!("/v1/jobs/{sleeping}/cancel"), &json!({})).unwrap();
}

/// A tenant's queue is bounded: once `queued_per_tenant` of its jobs wait,
/// a submit is refused (429) with how many wait, and a job that leaves the
/// queue (here by its cancel) makes room again. The running job does not
/// count.
#[test]
fn a_tenant_with_its_queue_full_is_refused_until_a_job_leaves_it() {
    let (_d, _, analyst, submit) = sleeper_daemon(|config| config.jobs.queued_per_tenant = 2);
    let sleeping = running_job(&analyst, &submit);
    let waiting: Vec<String> = (0..2)
        .map(|_| {
            let job: Value = analyst.send("POST", "/v1/jobs", &submit).unwrap();
            assert_eq!(job["state"], "queued", "{job}");
            job["id"].as_str().unwrap().to_owned()
        })
        .collect();
    let full =
        analyst.raw("POST", "/v1/jobs", Some(("application/json", submit.to_string().as_bytes()))).unwrap();
    assert_eq!(full.status, 429, "{}", full.text());
    assert!(full.text().contains("already has 2 jobs waiting"), "{}", full.text());

    let _: Value = analyst.send("POST", &format!("/v1/jobs/{}/cancel", waiting[0]), &json!({})).unwrap();
    let job: Value = analyst.send("POST", "/v1/jobs", &submit).unwrap();
    assert_eq!(job["state"], "queued", "{job}");
    for id in [&sleeping, &waiting[1], &job["id"].as_str().unwrap().to_owned()] {
        let _: Value = analyst.send("POST", &format!("/v1/jobs/{id}/cancel"), &json!({})).unwrap();
    }
}

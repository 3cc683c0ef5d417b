//! The one lifecycle of queued work, through the daemon: jobs and benchmark
//! runs wait in one queue, take slots from one scheduler, and a cancel drops
//! a queued piece at once and interrupts a running one, which then releases
//! nothing.

use std::time::{Duration, Instant};

use kanon_client::Client;
use kanon_client::types::{AuditEntry, BenchmarkRun, Job, JobState, SubmitRequest};
use kanon_daemon::{DaemonConfig, Role};
use kanon_runtime::RunLimits;

use crate::benchmarks::{carriers, join, publish};
use crate::daemon::{TestDaemon, approve, audit, ingest_trips, submit_of};

/// Poll `fetch` until the record's state is `state`.
fn wait_state<T: std::fmt::Debug>(
    fetch: impl Fn() -> T,
    state_of: impl Fn(&T) -> JobState,
    state: JobState,
) -> T {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let now = fetch();
        if state_of(&now) == state {
            return now;
        }
        assert!(Instant::now() < deadline, "never reached `{}`: {now:?}", state.name());
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// Poll job `id` until its state is `state`.
fn wait_job_state(analyst: &Client, id: &str, state: JobState) -> Job {
    wait_state(|| analyst.job(id).unwrap(), |job| job.state, state)
}

/// Poll run `id` of `benchmark` until its state is `state`.
fn wait_run_state(vendor: &Client, benchmark: &str, id: &str, state: JobState) -> BenchmarkRun {
    wait_state(|| vendor.benchmark_run(benchmark, id).unwrap(), |run| run.state, state)
}

/// The host chain's entries with `action`.
fn host_entries(d: &TestDaemon, action: &str) -> Vec<AuditEntry> {
    d.operator.host_audit().unwrap().entries.into_iter().filter(|e| e.action == action).collect()
}

/// A daemon whose runs may take two minutes (`configure`d further), tenant
/// `acme` with its trips, analyst `ana`, and a submit request of the
/// plugin that sleeps until cancelled, approved for `ana`.
fn sleeper_daemon(configure: impl FnOnce(&mut DaemonConfig)) -> (TestDaemon, Client, Client, SubmitRequest) {
    let limits = RunLimits { timeout: Duration::from_secs(120), ..kanon_tests::test_limits() };
    let d = TestDaemon::start_with_limits(tempfile::tempdir().unwrap(), configure, limits);
    let admin = d.tenant("acme");
    ingest_trips(&admin, "acme");
    let (analyst, _) = d.token(Role::Analyst, "ana", None, None);
    let plugin = analyst.upload_plugin(&std::fs::read(kanon_fixtures::SLEEPS_FOREVER).unwrap()).unwrap();
    let approval = approve(&admin, "acme", &plugin, "ana");
    let submit = submit_of("acme", &plugin, &approval);
    (d, admin, analyst, submit)
}

/// Submit `submit` and wait until the job runs; its id.
fn running_job(analyst: &Client, submit: &SubmitRequest) -> String {
    let id = analyst.submit_job(submit).unwrap().id;
    wait_job_state(analyst, &id, JobState::Running);
    id
}

#[test]
fn a_cancel_drops_queued_work_and_interrupts_running_work_of_either_kind() {
    // Runs long enough to be cancelled mid-way: without a cancel, the
    // sleeping plugin would run for two minutes.
    let (d, admin, analyst, submit) = sleeper_daemon(|_| {});

    // Jobs: the tenant's one slot holds the first; the second waits.
    let first = running_job(&analyst, &submit);
    let second = analyst.submit_job(&submit).unwrap().id;

    // Benchmark runs: one at a time, so a second benchmark's run waits
    // while the first's sleeps, beside the running job.
    let admins = carriers(&d);
    let (vendor, _) = d.token(Role::Vendor, "benchco", None, None);
    let slow = vendor.upload_plugin(&std::fs::read(kanon_fixtures::SLEEPS_FOREVER).unwrap()).unwrap();
    for name in ["slow", "slower"] {
        publish(&vendor, name, &slow.hash, "");
        for (i, admin) in admins.iter().enumerate().take(6) {
            join(admin, i, name);
        }
    }
    let running = vendor.run_benchmark("slow").unwrap().id;
    wait_run_state(&vendor, "slow", &running, JobState::Running);
    let waiting = vendor.run_benchmark("slower").unwrap().id;
    let again = vendor.raw("POST", "/v1/benchmarks/slow/runs", Some(("application/json", b"{}"))).unwrap();
    assert_eq!(again.status, 409, "one run of a benchmark at a time: {}", again.text());

    // Nothing queued starts while the slots are held.
    std::thread::sleep(Duration::from_millis(1500));
    let job = analyst.job(&second).unwrap();
    assert_eq!(job.state, JobState::Queued, "{job:?}");
    let run = vendor.benchmark_run("slower", &waiting).unwrap();
    assert_eq!(run.state, JobState::Queued, "{run:?}");

    // A queued piece is cancelled at once and never starts.
    let cancelled = analyst.cancel_job(&second).unwrap();
    assert_eq!(cancelled.state, JobState::Cancelled, "{cancelled:?}");
    let cancelled = vendor.cancel_benchmark_run("slower", &waiting).unwrap();
    assert_eq!(cancelled.state, JobState::Cancelled, "{cancelled:?}");
    assert!(cancelled.started_ms.is_none(), "{cancelled:?}");

    // A running one is interrupted well before its deadline and releases
    // nothing.
    let asked = Instant::now();
    let marked = analyst.cancel_job(&first).unwrap();
    assert_eq!((marked.state, marked.cancel_requested), (JobState::Running, true));
    let marked = vendor.cancel_benchmark_run("slow", &running).unwrap();
    assert_eq!((marked.state, marked.cancel_requested), (JobState::Running, true));
    let job = wait_job_state(&analyst, &first, JobState::Cancelled);
    let run = wait_run_state(&vendor, "slow", &running, JobState::Cancelled);
    assert!(asked.elapsed() < Duration::from_secs(30), "the cancels took {:?}", asked.elapsed());
    assert!(job.stats.is_none(), "{job:?}");
    assert!(run.version.is_none() && run.stats.is_none(), "{run:?}");
    let results = analyst.raw("GET", &format!("/v1/jobs/{first}/results"), None).unwrap();
    assert_eq!(results.status, 409, "{}", results.text());
    assert!(results.text().contains("no results"), "{}", results.text());
    assert_eq!(vendor.benchmark_versions("slow").unwrap(), []);

    // A cancel of finished work is a conflict.
    let late =
        analyst.raw("POST", &format!("/v1/jobs/{first}/cancel"), Some(("application/json", b"{}"))).unwrap();
    assert_eq!(late.status, 409, "{}", late.text());
    let late = vendor
        .raw("POST", &format!("/v1/benchmarks/slow/runs/{running}/cancel"), Some(("application/json", b"{}")))
        .unwrap();
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
    assert_eq!(ends[0].detail["outcome"], "cancelled");

    // The slots are free again: a new run of the first benchmark starts.
    let next = vendor.run_benchmark("slow").unwrap().id;
    wait_run_state(&vendor, "slow", &next, JobState::Running);
    vendor.cancel_benchmark_run("slow", &next).unwrap();
    wait_run_state(&vendor, "slow", &next, JobState::Cancelled);
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
            // Longer than the client asks for: the daemon's own cap.
            let job: Job = analyst.get(&format!("{path}?wait=3600")).unwrap();
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
    let job = analyst.wait_job(&sleeping, Duration::from_secs(1)).unwrap();
    assert_eq!(job.state, JobState::Running, "{job:?}");
    assert!(
        (Duration::from_secs(1)..Duration::from_secs(10)).contains(&asked.elapsed()),
        "{:?}",
        asked.elapsed()
    );

    // A job queued behind it ends by its cancel: the waiter hears at once.
    let queued = analyst.submit_job(&submit).unwrap().id;
    let waiter = std::thread::spawn({
        let (analyst, queued) = (analyst.clone(), queued.clone());
        move || {
            let asked = Instant::now();
            let job = analyst.wait_job(&queued, Duration::from_secs(60)).unwrap();
            (asked.elapsed(), job)
        }
    });
    std::thread::sleep(Duration::from_millis(500));
    analyst.cancel_job(&queued).unwrap();
    let (took, job) = waiter.join().unwrap();
    assert_eq!(job.state, JobState::Cancelled, "{job:?}");
    assert!(took < Duration::from_secs(10), "{took:?}");

    // A job that runs to its end on another tenant (a slot of the two is
    // free): the waiter has its result as soon as it is recorded.
    let beta = d.tenant("beta");
    ingest_trips(&beta, "beta");
    let emissions = analyst.upload_plugin(kanon_bundled::EMISSIONS_BENCHMARK).unwrap();
    let approval = approve(&beta, "beta", &emissions, "ana");
    let quick = analyst.submit_job(&submit_of("beta", &emissions, &approval)).unwrap();
    let asked = Instant::now();
    let job = analyst.wait_job(&quick.id, Duration::from_secs(60)).unwrap();
    assert_eq!(job.state, JobState::Succeeded, "{job:?}");
    assert!(asked.elapsed() < Duration::from_secs(30), "{:?}", asked.elapsed());

    let (took, job) = capped.join().unwrap();
    assert_eq!(job.state, JobState::Running, "{job:?}");
    let cap = Duration::from_secs(kanon_client::MAX_WAIT_SECS);
    assert!((cap..cap + Duration::from_secs(15)).contains(&took), "{took:?}");
    analyst.cancel_job(&sleeping).unwrap();
    let job = analyst.wait_job(&sleeping, Duration::from_secs(60)).unwrap();
    assert_eq!(job.state, JobState::Cancelled, "{job:?}");
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
            let job = analyst.wait_job(&sleeping, Duration::from_secs(4)).unwrap();
            (asked.elapsed(), job)
        }
    });
    std::thread::sleep(Duration::from_millis(500));
    // The same caller again: beyond its share, answered at once.
    let asked = Instant::now();
    let job = analyst.wait_job(&sleeping, Duration::from_secs(30)).unwrap();
    assert_eq!(job.state, JobState::Running, "{job:?}");
    assert!(asked.elapsed() < Duration::from_secs(2), "{:?}", asked.elapsed());
    let (took, job) = waiter.join().unwrap();
    assert_eq!(job.state, JobState::Running, "{job:?}");
    assert!(took >= Duration::from_secs(4), "the first wait waited: {took:?}");
    // Its place is free again: a wait waits.
    let asked = Instant::now();
    analyst.wait_job(&sleeping, Duration::from_secs(2)).unwrap();
    assert!(asked.elapsed() >= Duration::from_secs(2), "{:?}", asked.elapsed());
    analyst.cancel_job(&sleeping).unwrap();
}

/// A tenant's queue is bounded: once `queued_per_tenant` of its jobs wait,
/// a submit is refused (429) with how many wait, and a job that leaves the
/// queue (here by its cancel) makes room again. The running job does not
/// count.
#[test]
fn a_tenant_with_its_queue_full_is_refused_until_a_job_leaves_it() {
    let (_d, _, analyst, submit) = sleeper_daemon(|config| config.jobs.queued_per_tenant = 2);
    let sleeping = running_job(&analyst, &submit);
    let waiting: Vec<Job> = (0..2).map(|_| analyst.submit_job(&submit).unwrap()).collect();
    assert!(waiting.iter().all(|job| job.state == JobState::Queued), "{waiting:?}");
    match analyst.submit_job(&submit) {
        Err(kanon_client::ClientError::Api { status: 429, message, .. }) => {
            assert!(message.contains("already has 2 jobs waiting"), "{message}")
        }
        other => panic!("a submit to a full queue: {other:?}"),
    }

    analyst.cancel_job(&waiting[0].id).unwrap();
    let job = analyst.submit_job(&submit).unwrap();
    assert_eq!(job.state, JobState::Queued, "{job:?}");
    for id in [&sleeping, &waiting[1].id, &job.id] {
        analyst.cancel_job(id).unwrap();
    }
}

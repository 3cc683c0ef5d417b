//! The daemon under operations: a full disk, online backups, shutdown and
//! connection limits.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use kanon_client::types::{Job, JobState, SubmitRequest};
use kanon_client::{Client, DaemonStatus, NewBackup, NewTenant, NewToken, Reply, Role};
use kanon_daemon::{Daemon, DaemonConfig};
use kanon_runtime::{Runtime, RuntimeConfig};
use kanon_vault::KeyEncryptionKey;
use serde_json::{Value, json};

use crate::daemon::{TestDaemon, audit, ingest_trips, submit_of};

/// A tmpfs of a few MiB, unmounted when dropped: a disk that really fills.
/// Mounting needs root (or CAP_SYS_ADMIN); without it the tests that need
/// one say so and pass.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Option<Self> {
        let dir = tempfile::tempdir().unwrap();
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0700"), "tmpfs"])
            .arg(dir.path())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !mounted {
            eprintln!("SKIPPED: cannot mount a tmpfs here (root or CAP_SYS_ADMIN is needed)");
            return None;
        }
        Some(Self { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Fill it up: a file that grows until the disk refuses.
    fn fill(&self) -> Filler {
        let path = self.path().join("filler");
        let mut file = std::fs::File::create(&path).unwrap();
        for size in [1 << 20, 4096, 1] {
            let block = vec![0xa5u8; size];
            loop {
                match file.write_all(&block).and_then(|()| file.sync_all()) {
                    Ok(()) => {}
                    Err(e) if e.raw_os_error() == Some(28) => break,
                    Err(e) => panic!("filling the tmpfs: {e}"),
                }
            }
        }
        Filler(path)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.dir.path()).status();
    }
}

/// The file that fills a disk; removing it gives the space back.
struct Filler(PathBuf);

impl Filler {
    fn remove(self) {
        std::fs::remove_file(&self.0).unwrap();
    }
}

fn post_tenant(d: &TestDaemon, name: &str) -> Reply {
    d.operator
        .raw("POST", "/v1/tenants", Some(("application/json", json!({"name": name}).to_string().as_bytes())))
        .unwrap()
}

fn upload_trips(admin: &Client) -> Reply {
    admin
        .raw(
            "PUT",
            "/v1/tenants/acme/datasets/trips?format=csv&entity=driver_id",
            Some(("text/csv", kanon_tests::trips_csv().as_bytes())),
        )
        .unwrap()
}

/// `/health`'s status (anyone's), and the operator's view of the storage
/// (`/v1/status`).
fn health(d: &TestDaemon) -> (u16, DaemonStatus) {
    // As JSON: anyone's answer has one field, whatever the client's type holds.
    let reply = d.operator.with_token(None).raw("GET", "/health", None).unwrap();
    let anyone: Value = reply.json().unwrap();
    let status = d.operator.status().unwrap();
    assert_eq!(anyone["status"], status.storage, "{anyone} {status:?}");
    assert_eq!(anyone.as_object().unwrap().len(), 1, "anyone learns only up or degraded: {anyone}");
    (reply.status, status)
}

/// Every version of acme's `trips` has its `dataset.ingest` entry, and the
/// chain verifies.
fn every_version_is_audited(admin: &Client) -> usize {
    let export = audit(admin, "acme");
    assert_eq!(kanon_daemon::verify("acme", &export.entries, &export.head), Ok(export.entries.len() as u64));
    let audited: Vec<u64> = export
        .entries
        .iter()
        .filter(|e| e.action == "dataset.ingest")
        .map(|e| e.detail["version"].as_u64().unwrap())
        .collect();
    let versions = admin.list_datasets("acme").unwrap();
    let latest = versions.iter().find(|v| v.dataset == "trips").map_or(0, |v| v.version);
    assert_eq!(audited, (1..=latest).collect::<Vec<_>>(), "versions without their audit entry");
    latest as usize
}

/// `control.redb` on a disk that fills up (a symlink into a small tmpfs),
/// the vault beside it on a disk with room. Once the control database's
/// disk is full, every change either goes through (redb reuses freed
/// pages) or answers 507 with a JSON error, never 500 or 401; `/health`
/// says storage is degraded; no dataset version is stored without its
/// audit entry; and everything works again once space returns, without a
/// restart.
#[test]
fn a_full_disk_under_the_control_database_answers_507_and_recovers_without_a_restart() {
    let Some(disk) = Tmpfs::mount("2m") else { return };
    let dir = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(disk.path().join("control.redb"), dir.path().join("control.redb")).unwrap();
    let d = TestDaemon::start_with(dir, |_| {});
    let admin = d.tenant("acme");
    ingest_trips(&admin, "acme");
    assert_eq!(health(&d).0, 200);

    let filler = disk.fill();
    let (mut tenants, mut versions, mut refused, mut audited_late) = (2, 1, 0, 0);
    for i in 0..40 {
        let reply = if i % 2 == 0 { post_tenant(&d, &format!("t{i}")) } else { upload_trips(&admin) };
        match reply.status {
            201 if i % 2 == 0 => tenants += 1,
            201 => versions += 1,
            507 => {
                let body: Value = reply.json().unwrap();
                assert_eq!(body["error"]["code"], "insufficient-storage", "{body}");
                refused += 1;
                // The vault stored it; its audit entry waits for storage.
                if body["error"]["message"].as_str().unwrap().contains("was stored") {
                    versions += 1;
                    audited_late += 1;
                }
            }
            other => panic!("{other} on a full disk: {}", reply.text()),
        }
    }
    eprintln!(
        "on the full disk: {refused} of 40 changes answered 507, {audited_late} of them stored and audited later"
    );
    assert!(refused > 0, "the full disk never refused a write");
    let (status, state) = health(&d);
    assert_eq!(status, 503, "{state:?}");
    assert_eq!(state.storage, "degraded", "{state:?}");
    assert!(state.storage_error.as_deref().unwrap().contains("No space left"), "{state:?}");

    filler.remove();
    let (status, state) = health(&d);
    assert_eq!((status, state.storage.as_str()), (200, "ok"), "{state:?}");
    assert_eq!(post_tenant(&d, "after").status, 201);
    assert_eq!(upload_trips(&admin).status, 201);
    assert_eq!(every_version_is_audited(&admin), versions + 1);
    let late = audit(&admin, "acme").entries.iter().filter(|e| e.detail["recovered"] == json!(true)).count();
    assert_eq!(late, audited_late);
    let listed = d.operator.list_tenants().unwrap();
    assert_eq!(listed.len(), tenants, "acme, `after` and the tenants the full disk took");
    let host = d.operator.host_audit().unwrap();
    assert!(kanon_daemon::verify("_host", &host.entries, &host.head).is_ok());
}

/// `kanon.redb` on a disk that fills up, the chunks beside it on a disk
/// with room: an ingest whose vault commit the full disk refuses answers
/// 507 and stores nothing, `/health` says so, and once space returns the
/// vault (reopened: redb refuses every write of a handle after one failed)
/// takes the next ingest, without a restart.
#[test]
fn a_full_disk_under_the_vaults_database_answers_507_and_recovers_without_a_restart() {
    let Some(disk) = Tmpfs::mount("2m") else { return };
    let dir = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(disk.path().join("kanon.redb"), dir.path().join("kanon.redb")).unwrap();
    let d = TestDaemon::start_with(dir, |_| {});
    let admin = d.tenant("acme");
    ingest_trips(&admin, "acme");

    let filler = disk.fill();
    let (mut versions, mut refused) = (1, 0);
    for _ in 0..20 {
        let reply = upload_trips(&admin);
        match reply.status {
            201 => versions += 1,
            507 => {
                let body: Value = reply.json().unwrap();
                assert_eq!(body["error"]["code"], "insufficient-storage", "{body}");
                refused += 1;
            }
            other => panic!("{other} on a full disk: {}", reply.text()),
        }
    }
    eprintln!("on the full disk: {refused} of 20 ingests answered 507");
    assert!(refused > 0, "the full disk never refused an ingest");
    let (status, state) = health(&d);
    assert_eq!((status, state.storage.as_str()), (503, "degraded"), "{state:?}");

    filler.remove();
    let (status, state) = health(&d);
    assert_eq!((status, state.storage.as_str()), (200, "ok"), "{state:?}");
    let stored = upload_trips(&admin);
    assert_eq!(stored.status, 201, "{}", stored.text());
    assert_eq!(every_version_is_audited(&admin), versions + 1);
}

/// The whole data directory on a disk that fills up: an upload answers 507
/// and leaves nothing behind, `/health` says so, and the next upload after
/// space returns is stored and audited.
#[test]
fn a_full_data_directory_refuses_uploads_with_507_and_recovers_without_a_restart() {
    let Some(disk) = Tmpfs::mount("16m") else { return };
    let data = tempfile::tempdir_in(disk.path()).unwrap();
    let d = TestDaemon::start_with(data, |_| {});
    let admin = d.tenant("acme");
    ingest_trips(&admin, "acme");

    let filler = disk.fill();
    let refused = upload_trips(&admin);
    assert_eq!(refused.status, 507, "{}", refused.text());
    assert_eq!(refused.json::<Value>().unwrap()["error"]["code"], "insufficient-storage");
    let (status, state) = health(&d);
    assert_eq!((status, state.storage.as_str()), (503, "degraded"), "{state:?}");

    filler.remove();
    assert_eq!(health(&d).0, 200);
    let stored = upload_trips(&admin);
    assert_eq!(stored.status, 201, "{}", stored.text());
    assert_eq!(every_version_is_audited(&admin), 2);
}

/// A daemon over `dir` (kept after it stops), with its operator's client.
fn start_over(
    dir: &Path,
    key: &KeyEncryptionKey,
) -> Result<(tokio::runtime::Runtime, Daemon, Client), String> {
    let config = DaemonConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir.to_owned(),
        ..DaemonConfig::default()
    };
    let runtime =
        Runtime::new(RuntimeConfig { limits: kanon_tests::test_limits(), ..RuntimeConfig::default() })
            .unwrap();
    let tokio = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let (daemon, first) =
        tokio.block_on(Daemon::start(config, key.clone(), runtime)).map_err(|e| e.to_string())?;
    let client = Client::new(&format!("http://{}", daemon.local_addr()), first.operator_token);
    Ok((tokio, daemon, client))
}

fn stop_daemon(started: (tokio::runtime::Runtime, Daemon, Client)) {
    let (tokio, daemon, _) = started;
    tokio.block_on(daemon.shutdown());
}

/// What unfinished uploads leave in the data directory (a crash, a kill)
/// is deleted at the next start; stored plugins stay.
#[test]
fn a_start_deletes_what_unfinished_uploads_left_behind() {
    let dir = tempfile::tempdir().unwrap();
    let key = KeyEncryptionKey::generate();
    let started = start_over(dir.path(), &key).unwrap();
    let (analyst, _) = {
        let operator = &started.2;
        let issued = operator
            .issue_token(&NewToken { role: Role::Analyst, name: "ana".into(), tenant: None, ttl_secs: None })
            .unwrap();
        (operator.with_token(Some(issued.token)), ())
    };
    let plugin = crate::daemon::upload_plugin(&analyst, kanon_bundled::EMISSIONS_BENCHMARK);
    assert_eq!(plugin.status, 201, "{}", plugin.text());
    stop_daemon(started);

    let uploads = dir.path().join("uploads");
    std::fs::create_dir_all(&uploads).unwrap();
    let leftovers =
        [uploads.join(".tmpA1b2C3"), uploads.join(".tmpD4e5F6"), dir.path().join("plugins/.tmpG7h8I9")];
    for path in &leftovers {
        std::fs::write(path, vec![7u8; 1 << 20]).unwrap();
    }
    let started = start_over(dir.path(), &key).unwrap();
    for path in &leftovers {
        assert!(!path.exists(), "{} is still there", path.display());
    }
    let hash = blake3::hash(kanon_bundled::EMISSIONS_BENCHMARK).to_hex();
    assert!(dir.path().join(format!("plugins/{hash}.wasm")).exists(), "the stored plugin stays");
    stop_daemon(started);
}

/// A `control.redb` cut short: the daemon does not start, and says which
/// file is damaged and to restore from a backup.
#[test]
fn a_truncated_control_database_stops_the_start_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let key = KeyEncryptionKey::generate();
    let started = start_over(dir.path(), &key).unwrap();
    started.2.create_tenant(&NewTenant { name: "acme".into(), enrolment_ttl_secs: None }).unwrap();
    stop_daemon(started);
    let path = dir.path().join("control.redb");
    let bytes = std::fs::read(&path).unwrap();
    for cut in [bytes.len() / 2, 4096, 0] {
        std::fs::write(&path, &bytes[..cut]).unwrap();
        let error = start_over(dir.path(), &key).expect_err("a damaged control.redb does not start");
        assert!(error.contains("control.redb is damaged"), "cut at {cut}: {error}");
        assert!(error.ends_with("restore the data directory from a backup"), "cut at {cut}: {error}");
    }
    std::fs::write(&path, &bytes).unwrap();
    stop_daemon(start_over(dir.path(), &key).unwrap());
}

/// Open a connection and send the start of a request head, never its end.
fn half_sent_head(addr: &str) -> std::net::TcpStream {
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream.write_all(b"GET /health HTTP/1.1\r\nhost: kanon\r\nx-slow: ").unwrap();
    stream
}

/// What the daemon sends on `stream` until it closes it (bounded: a
/// daemon that never closes fails the test after 30 s).
fn read_until_closed(stream: &mut std::net::TcpStream) -> String {
    use std::io::Read;
    stream.set_read_timeout(Some(std::time::Duration::from_secs(30))).unwrap();
    let mut answer = Vec::new();
    match stream.read_to_end(&mut answer) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        Err(e) => {
            panic!("the daemon kept the connection open: {e}; it sent {:?}", String::from_utf8_lossy(&answer))
        }
    }
    String::from_utf8_lossy(&answer).into_owned()
}

fn address(d: &TestDaemon) -> String {
    d.operator.base().trim_start_matches("http://").to_owned()
}

/// A client that never finishes its request head is disconnected after
/// `header_read_timeout_secs`, not held for ever.
#[test]
fn a_client_that_never_finishes_its_headers_is_disconnected() {
    let d = TestDaemon::start_with(tempfile::tempdir().unwrap(), |c| c.limits.header_read_timeout_secs = 1);
    let mut stuck = half_sent_head(&address(&d));
    let started = std::time::Instant::now();
    read_until_closed(&mut stuck);
    eprintln!("a half-sent head was dropped after {:?}", started.elapsed());
    assert_eq!(d.operator.with_token(None).raw("GET", "/health", None).unwrap().status, 200);
}

/// Read one response to a request sent on `stream` (kept alive): its status
/// line. Bounded like `read_until_closed`.
fn read_response(stream: &mut std::net::TcpStream) -> String {
    use std::io::Read;
    stream.set_read_timeout(Some(std::time::Duration::from_secs(30))).unwrap();
    let mut answer = Vec::new();
    let mut buffer = [0u8; 4096];
    while !(String::from_utf8_lossy(&answer).contains("\r\n\r\n{") && answer.ends_with(b"}")) {
        let n = stream.read(&mut buffer).expect("a response within 30 s");
        assert!(n > 0, "closed before answering: {:?}", String::from_utf8_lossy(&answer));
        answer.extend_from_slice(&buffer[..n]);
    }
    String::from_utf8_lossy(&answer).lines().next().unwrap().to_owned()
}

/// At `max_connections`, a new connection makes room by closing the oldest
/// one that has not sent a whole request head: a flood of half-sent heads
/// cannot keep out a client that sends its request.
#[test]
fn at_the_connection_cap_the_oldest_silent_connection_makes_room() {
    let d = TestDaemon::start_with(tempfile::tempdir().unwrap(), |c| c.limits.max_connections = 4);
    let addr = address(&d);
    let mut silent: Vec<_> = (0..4).map(|_| half_sent_head(&addr)).collect();
    let mut client = std::net::TcpStream::connect(&addr).unwrap();
    client.write_all(b"GET /health HTTP/1.1\r\nhost: kanon\r\n\r\n").unwrap();
    assert_eq!(read_response(&mut client), "HTTP/1.1 200 OK");
    // Accepted in order: the first silent one went.
    read_until_closed(&mut silent[0]);
}

/// At `max_connections` connections that have all sent requests, one more
/// is answered 503 (a JSON error) and closed; once one of them goes, the
/// daemon answers again.
#[test]
fn connections_past_the_cap_are_answered_503_and_closed() {
    let d = TestDaemon::start_with(tempfile::tempdir().unwrap(), |c| {
        c.limits.max_connections = 4;
        c.limits.header_read_timeout_secs = 600;
    });
    let addr = address(&d);
    let mut held: Vec<_> = (0..4)
        .map(|_| {
            let mut stream = std::net::TcpStream::connect(&addr).unwrap();
            stream.write_all(b"GET /health HTTP/1.1\r\nhost: kanon\r\n\r\n").unwrap();
            assert_eq!(read_response(&mut stream), "HTTP/1.1 200 OK");
            stream
        })
        .collect();
    let mut extra = std::net::TcpStream::connect(&addr).unwrap();
    extra.write_all(b"GET /health HTTP/1.1\r\nhost: kanon\r\n\r\n").unwrap();
    let answer = read_until_closed(&mut extra);
    assert!(answer.starts_with("HTTP/1.1 503 "), "{answer}");
    let body: Value = serde_json::from_str(answer.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    assert_eq!(body["error"]["code"], "unavailable", "{body}");

    drop(held.pop());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let refusals = "kanon_refusals_total{reason=\"connections\"}";
    while !d.operator.get_text("/metrics").is_ok_and(|metrics| metrics.contains(refusals)) {
        assert!(std::time::Instant::now() < deadline, "a freed slot was never used again");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    drop(held);
}

/// The backup of a running daemon, taken while a tenant ingests and jobs
/// run, restored into an empty directory: a daemon started on it has the
/// tenants, tokens, approvals, plugins, jobs, results, benchmarks and audit
/// chains the backup was taken with, every chain verifies and is the
/// original's up to the backup, and every dataset version has its entry.
#[test]
fn an_online_backup_taken_under_ingests_and_jobs_restores_everything() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    use kanon_gate::PolicyLayer;

    use crate::benchmarks::{carriers, join, publish, run};
    use crate::daemon::{approve, wait_for};

    let d = TestDaemon::start();
    let admins = carriers(&d);
    let (vendor, _) = d.token(Role::Vendor, "ven", None, None);
    let plugin = vendor.upload_plugin(kanon_bundled::EMISSIONS_BENCHMARK).unwrap();
    publish(&vendor, "co2", &plugin.hash, "");
    for (i, admin) in admins.iter().enumerate() {
        join(admin, i, "co2");
    }
    assert_eq!(run(&vendor, "co2").state, JobState::Succeeded);
    let admin = d.tenant("acme");
    ingest_trips(&admin, "acme");
    let (analyst, _) = d.token(Role::Analyst, "ana", None, None);
    let approval = approve(&admin, "acme", &plugin, "ana");
    let submit_with = |min_entities: u32| {
        let policy = PolicyLayer { min_entities: Some(min_entities), ..PolicyLayer::default() };
        SubmitRequest { policy: Some(policy), ..submit_of("acme", &plugin, &approval) }
    };
    let submit = |i: usize| analyst.submit_job(&submit_with(10 + i as u32)).unwrap().id;
    wait_for(&analyst, &submit(0));

    // Ingests and jobs go on before, during and after the backup.
    let (stop, ingests, jobs) = (AtomicBool::new(false), AtomicUsize::new(0), AtomicUsize::new(1));
    let backup = std::thread::scope(|scope| {
        scope.spawn(|| {
            while !stop.load(Ordering::SeqCst) {
                ingest_trips(&admin, "acme");
                ingests.fetch_add(1, Ordering::SeqCst);
            }
        });
        scope.spawn(|| {
            while !stop.load(Ordering::SeqCst) {
                submit(jobs.fetch_add(1, Ordering::SeqCst));
            }
        });
        let at_least = |n: usize| {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
            while ingests.load(Ordering::SeqCst) < n || jobs.load(Ordering::SeqCst) < n + 1 {
                assert!(std::time::Instant::now() < deadline, "the load did not get going");
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
        };
        at_least(3);
        let started = std::time::Instant::now();
        let backup = d.operator.create_backup(&NewBackup { name: "under-load".into() }).unwrap();
        eprintln!("backup under load took {:?}: {backup:?}", started.elapsed());
        let after = ingests.load(Ordering::SeqCst);
        at_least(after + 3);
        stop.store(true, Ordering::SeqCst);
        backup
    });
    let again =
        d.operator.raw("POST", "/v1/backups", Some(("application/json", b"{\"name\": \"under-load\"}")));
    assert_eq!(again.unwrap().status, 409, "a backup is never written over");
    let submitted: Vec<Job> = analyst.list_jobs().unwrap();
    for job in &submitted {
        wait_for(&analyst, &job.id);
    }
    let chains: Vec<String> = ["_host".to_owned(), "acme".to_owned()]
        .into_iter()
        .chain((0..admins.len()).map(|i| format!("carrier-{i}")))
        .collect();
    let chain_of = |client: &Client, chain: &str| -> kanon_daemon::AuditExport {
        if chain == "_host" { client.host_audit().unwrap() } else { audit(client, chain) }
    };
    let carrier_admins: Vec<&Client> = admins.iter().collect();
    let admin_of = |chain: &str| -> Client {
        match chain {
            "_host" => d.operator.clone(),
            "acme" => admin.clone(),
            carrier => {
                carrier_admins[carrier.trim_start_matches("carrier-").parse::<usize>().unwrap()].clone()
            }
        }
    };
    let original: Vec<kanon_daemon::AuditExport> = chains.iter().map(|c| chain_of(&admin_of(c), c)).collect();
    let original_versions = admin.list_datasets("acme").unwrap();
    let original_tokens = json!(d.operator.list_tokens().unwrap());
    let original_tenants = d.operator.list_tenants().unwrap();
    let original_benchmark = vendor.benchmark_version("co2", "1").unwrap();

    // Restore into an empty directory; before any daemon touches it, each
    // chain is the original's up to the backup.
    let restored = tempfile::tempdir().unwrap();
    let summary =
        kanon_daemon::backup::restore(Path::new(&backup.path), restored.path(), d.key.clone()).unwrap();
    assert_eq!(summary.versions, backup.versions);
    {
        let store = kanon_daemon::ControlStore::open(restored.path()).unwrap();
        let read = store.read().unwrap();
        for (chain, original) in chains.iter().zip(&original) {
            let (entries, head) = read.audit(chain).unwrap();
            assert_eq!(kanon_daemon::verify(chain, &entries, &head), Ok(entries.len() as u64), "{chain}");
            assert!(!entries.is_empty() && entries.len() <= original.entries.len(), "{chain}");
            assert_eq!(
                entries,
                original.entries[..entries.len()],
                "{chain} is the original's up to the backup"
            );
        }
    }

    // A daemon over it.
    let started = start_over(restored.path(), &d.key).unwrap();
    assert!(started.2.whoami().is_err(), "no new operator token: the restored one stands");
    let base = started.2.base().to_owned();
    let moved = |client: &Client| Client::new(&base, client.token().map(str::to_owned));
    let (operator, admin2, analyst2, vendor2) =
        (moved(&d.operator), moved(&admin), moved(&analyst), moved(&vendor));
    assert_eq!(operator.list_tenants().unwrap(), original_tenants);
    assert_eq!(json!(operator.list_tokens().unwrap()), original_tokens);
    assert_eq!(vendor2.benchmark_version("co2", "1").unwrap(), original_benchmark);
    let approvals = admin2.tenant_approvals("acme").unwrap();
    assert_eq!(approvals.len(), 1);
    // Jobs: those the backup holds, each finished (queued ones ran here,
    // a running one was interrupted), with the original's results.
    let jobs = analyst2.list_jobs().unwrap();
    assert!(jobs.len() >= 2 && jobs.len() <= submitted.len(), "{} of {}", jobs.len(), submitted.len());
    for job in &jobs {
        let id = job.id.as_str();
        let done = wait_for(&analyst2, id);
        let before = submitted.iter().find(|j| j.id == id).expect("a job of the original");
        if done.state == JobState::Succeeded && before.state == JobState::Succeeded {
            let results = |client: &Client| client.job_results(id).unwrap().tables;
            assert_eq!(results(&analyst2), results(&analyst), "{id}");
        }
    }
    // Datasets: the versions the backup holds, the same contents.
    let versions = admin2.list_datasets("acme").unwrap();
    let latest = versions[0].version;
    assert!(latest >= 3 && latest < original_versions[0].version);
    assert_eq!(every_version_is_audited(&admin2), latest as usize);
    for chain in &chains {
        let client = match chain.as_str() {
            "_host" => operator.clone(),
            "acme" => admin2.clone(),
            _ => moved(&admin_of(chain)),
        };
        let export = chain_of(&client, chain);
        assert_eq!(
            kanon_daemon::verify(chain, &export.entries, &export.head),
            Ok(export.entries.len() as u64)
        );
    }
    // And it goes on working: the restored plugin runs.
    let job = analyst2.submit_job(&submit_with(99)).unwrap();
    assert_eq!(wait_for(&analyst2, &job.id).state, JobState::Succeeded);
    stop_daemon(started);
}

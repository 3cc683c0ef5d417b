//! The daemon through its real HTTP API: an in-process daemon on a loopback
//! port, driven by the same blocking client the CLI uses.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use kanon_client::types::{
    Approval, ApprovedDataset, AuditExport, DatasetVersionInfo, Job, JobState, NewApproval, PluginRecord,
    SubmitRequest,
};
use kanon_client::{Client, NewGrant, NewTenant, NewToken, Reply, UploadArgs};
use kanon_daemon::api::{ACCESS, Access};
use kanon_daemon::{Daemon, DaemonConfig, FirstStart, Role};
use kanon_runtime::{RunLimits, Runtime, RuntimeConfig};
use kanon_vault::KeyEncryptionKey;
use serde_json::{Value, json};

/// A daemon on a free loopback port over a fresh data directory.
pub(crate) struct TestDaemon {
    pub(crate) operator: Client,
    tokio: tokio::runtime::Runtime,
    daemon: Option<Daemon>,
    dir: tempfile::TempDir,
    /// The key-encryption key it runs under, to start again over the same
    /// directory.
    pub(crate) key: KeyEncryptionKey,
    limits: RunLimits,
}

impl TestDaemon {
    pub(crate) fn start() -> Self {
        Self::start_with(tempfile::tempdir().unwrap(), |_| {})
    }

    /// A daemon over `dir`, its settings changed by `configure`.
    pub(crate) fn start_with(dir: tempfile::TempDir, configure: impl FnOnce(&mut DaemonConfig)) -> Self {
        Self::start_with_limits(dir, configure, kanon_tests::test_limits())
    }

    /// A daemon whose runs have `limits` (the tests' are two seconds).
    pub(crate) fn start_with_limits(
        dir: tempfile::TempDir,
        configure: impl FnOnce(&mut DaemonConfig),
        limits: RunLimits,
    ) -> Self {
        let tokio =
            tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let key = KeyEncryptionKey::generate();
        let mut config = Self::config(dir.path(), "127.0.0.1:0".parse().unwrap());
        configure(&mut config);
        let (daemon, first) = tokio.block_on(Self::daemon(config, &key, limits.clone()));
        let base = format!("http://{}", daemon.local_addr());
        let operator = Client::new(&base, Some(first.operator_token.expect("first start prints the token")));
        Self { operator, tokio, daemon: Some(daemon), dir, key, limits }
    }

    fn config(dir: &std::path::Path, listen: std::net::SocketAddr) -> DaemonConfig {
        DaemonConfig { listen, data_dir: dir.to_owned(), ..DaemonConfig::default() }
    }

    async fn daemon(config: DaemonConfig, key: &KeyEncryptionKey, limits: RunLimits) -> (Daemon, FirstStart) {
        let runtime = Runtime::new(RuntimeConfig { limits, ..RuntimeConfig::default() }).unwrap();
        Daemon::start(config, key.clone(), runtime).await.expect("daemon starts")
    }

    /// Stop the daemon, do `between` to its data directory, and start it
    /// again on the same address.
    pub(crate) fn restart(&mut self, between: impl FnOnce(&std::path::Path)) {
        let daemon = self.daemon.take().expect("running");
        let listen = daemon.local_addr();
        self.tokio.block_on(daemon.shutdown());
        between(self.dir.path());
        let config = Self::config(self.dir.path(), listen);
        let (daemon, _) = self.tokio.block_on(Self::daemon(config, &self.key, self.limits.clone()));
        self.daemon = Some(daemon);
    }

    /// The size of the control database now.
    pub(crate) fn control_bytes(&self) -> u64 {
        std::fs::metadata(self.dir.path().join(kanon_daemon::CONTROL_FILE)).unwrap().len()
    }

    /// A client holding a new token.
    pub(crate) fn token(
        &self,
        role: Role,
        name: &str,
        tenant: Option<&str>,
        ttl_secs: Option<u64>,
    ) -> (Client, String) {
        let issued = self
            .operator
            .issue_token(&NewToken {
                role,
                name: name.to_owned(),
                tenant: tenant.map(str::to_owned),
                ttl_secs,
            })
            .unwrap();
        (self.operator.with_token(Some(issued.token)), issued.info.id)
    }

    /// A new tenant, and a client holding the token its admin enrolled
    /// for (holder `<name>-admin`).
    pub(crate) fn tenant(&self, name: &str) -> Client {
        let created = self
            .operator
            .create_tenant(&NewTenant { name: name.to_owned(), enrolment_ttl_secs: None })
            .unwrap();
        self.operator.enrol(&created.enrolment.code, &format!("{name}-admin"), None).unwrap().0
    }
}

impl Drop for TestDaemon {
    fn drop(&mut self) {
        if let Some(daemon) = self.daemon.take() {
            self.tokio.block_on(daemon.shutdown());
        }
    }
}

pub(crate) fn ingest_trips(admin: &Client, tenant: &str) -> DatasetVersionInfo {
    let csv = UploadArgs { format: "csv".into(), entity: Some("driver_id".into()), ..UploadArgs::default() };
    admin.ingest(tenant, "trips", &csv, std::io::Cursor::new(kanon_tests::trips_csv().into_bytes())).unwrap()
}

pub(crate) fn upload_plugin(analyst: &Client, bytes: &[u8]) -> Reply {
    analyst.raw("POST", "/v1/plugins", Some(("application/wasm", bytes))).unwrap()
}

/// The emissions plugin's approval on `trips` as asked for, every column it
/// reads.
pub(crate) fn approval_of(plugin: &PluginRecord, analyst: &str) -> NewApproval {
    let manifest = &plugin.manifest;
    let need = &manifest.inputs[0];
    let columns = need.columns.iter().map(|c| c.name.clone()).collect();
    NewApproval {
        plugin: plugin.hash.clone(),
        analyst: analyst.to_owned(),
        datasets: [(need.name.clone(), ApprovedDataset { dataset: "trips".into(), columns })].into(),
        outputs: manifest.outputs.iter().map(|t| t.name.clone()).collect(),
        params: None,
        params_schema: None,
        ttl_secs: 3600,
        policy: None,
    }
}

/// An approval of the emissions plugin on `trips`, every column it reads.
pub(crate) fn approve(admin: &Client, tenant: &str, plugin: &PluginRecord, analyst: &str) -> Approval {
    admin.grant_approval(tenant, &approval_of(plugin, analyst)).unwrap()
}

/// A job of `plugin` on `trips` under `approval`.
pub(crate) fn submit_of(tenant: &str, plugin: &PluginRecord, approval: &Approval) -> SubmitRequest {
    SubmitRequest {
        tenant: tenant.to_owned(),
        plugin: plugin.hash.clone(),
        approval: approval.id.clone(),
        datasets: [("trips".to_owned(), "trips".to_owned())].into(),
        params: None,
        policy: None,
    }
}

/// `body` as a raw request's JSON body.
pub(crate) fn json_body(body: &impl serde::Serialize) -> Vec<u8> {
    serde_json::to_vec(body).unwrap()
}

/// The job once it has ended, through the daemon's long poll.
pub(crate) fn wait_for(client: &Client, job: &str) -> Job {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let job = client.wait_job(job, Duration::from_secs(30)).unwrap();
        if job.state.is_final() {
            return job;
        }
        assert!(Instant::now() < deadline, "job did not finish: {job:?}");
    }
}

pub(crate) fn audit(admin: &Client, tenant: &str) -> AuditExport {
    admin.tenant_audit(tenant).unwrap()
}

pub(crate) fn actions(export: &AuditExport) -> Vec<&str> {
    export.entries.iter().map(|e| e.action.as_str()).collect()
}

#[test]
fn an_approved_job_runs_and_only_its_analyst_reads_the_results() {
    let d = TestDaemon::start();
    let admin = d.tenant("acme");
    let (analyst, _) = d.token(Role::Analyst, "ana", None, None);
    let (other_analyst, _) = d.token(Role::Analyst, "bob", None, None);

    let stored = ingest_trips(&admin, "acme");
    assert_eq!(stored.rows, 192);
    let first = upload_plugin(&analyst, kanon_bundled::EMISSIONS_BENCHMARK);
    assert_eq!(first.status, 201, "{}", first.text());
    let again = upload_plugin(&analyst, kanon_bundled::EMISSIONS_BENCHMARK);
    assert_eq!(again.status, 200, "uploading the same bytes twice is idempotent");
    let plugin: PluginRecord = first.json().unwrap();
    assert_eq!(plugin, again.json::<PluginRecord>().unwrap());
    assert_eq!(plugin.hash, blake3::hash(kanon_bundled::EMISSIONS_BENCHMARK).to_hex().as_str());

    let approval = approve(&admin, "acme", &plugin, "ana");
    let job = analyst.submit_job(&submit_of("acme", &plugin, &approval)).unwrap();
    assert_eq!(job.state, JobState::Queued);
    let id = job.id.as_str();
    let done = wait_for(&analyst, id);
    assert_eq!(done.state, JobState::Succeeded, "{done:?}");
    assert_eq!(done.versions["trips"], 1);

    let results = analyst.job_results(id).unwrap();
    let west = results.tables[0].cells.iter().find(|c| c.key == ["rigid", "west"]).unwrap();
    assert!(west.values.is_none(), "4 drivers in the west: suppressed");
    let csv = analyst.get_text(&format!("/v1/jobs/{id}/results?format=csv")).unwrap();
    assert!(csv.starts_with("table,"), "{csv}");
    assert!(csv.lines().any(|l| l.contains("west") && l.ends_with(",true")), "{csv}");

    // Another analyst, the vendor and the operator see nothing of it.
    assert_eq!(other_analyst.raw("GET", &format!("/v1/jobs/{id}"), None).unwrap().status, 404);
    assert_eq!(other_analyst.raw("GET", &format!("/v1/jobs/{id}/results"), None).unwrap().status, 404);
    assert_eq!(d.operator.raw("GET", &format!("/v1/jobs/{id}"), None).unwrap().status, 403);
    // The plugin's output log is the tenant's.
    assert_eq!(analyst.raw("GET", &format!("/v1/jobs/{id}/log"), None).unwrap().status, 403);
    let log = admin.job_log(id).unwrap();
    assert_eq!(log.job, id);

    let export = audit(&admin, "acme");
    assert_eq!(kanon_daemon::verify("acme", &export.entries, &export.head), Ok(export.entries.len() as u64));
    let seen = actions(&export);
    for expected in [
        "tenant.create",
        "token.issue",
        "dataset.ingest",
        "approval.grant",
        "job.submit",
        "job.start",
        "job.finish",
        "release",
    ] {
        assert!(seen.contains(&expected), "{expected} missing from {seen:?}");
    }
    let release = export.entries.iter().find(|e| e.action == "release").unwrap();
    assert!(release.detail["record"]["tables"][0]["suppressed_cells"].as_u64().unwrap() >= 1);
}

#[test]
fn revoking_an_approval_stops_later_jobs_and_the_refusal_is_audited() {
    let d = TestDaemon::start();
    let admin = d.tenant("acme");
    let (analyst, _) = d.token(Role::Analyst, "ana", None, None);
    ingest_trips(&admin, "acme");
    let plugin = analyst.upload_plugin(kanon_bundled::EMISSIONS_BENCHMARK).unwrap();
    let approval = approve(&admin, "acme", &plugin, "ana");
    let submit = submit_of("acme", &plugin, &approval);

    // Other parameters, another analyst or another dataset are not covered.
    let other_params = SubmitRequest { params: Some(json!({"kg_co2_per_litre": 3.0})), ..submit.clone() };
    let refused =
        analyst.raw("POST", "/v1/jobs", Some(("application/json", &json_body(&other_params)))).unwrap();
    assert_eq!(refused.status, 403, "{}", refused.text());
    let (bob, _) = d.token(Role::Analyst, "bob", None, None);
    assert_eq!(
        bob.raw("POST", "/v1/jobs", Some(("application/json", &json_body(&submit)))).unwrap().status,
        403
    );

    admin.revoke_approval("acme", &approval.id).unwrap();
    let after = analyst.raw("POST", "/v1/jobs", Some(("application/json", &json_body(&submit)))).unwrap();
    assert_eq!(after.status, 403, "{}", after.text());
    assert!(after.text().contains("revoked"), "{}", after.text());
    let export = audit(&admin, "acme");
    assert_eq!(actions(&export).iter().filter(|a| **a == "access.refused").count(), 3);
    assert!(actions(&export).contains(&"approval.revoke"));
    assert!(kanon_daemon::verify("acme", &export.entries, &export.head).is_ok());
    // The plugin cannot be deleted while... it is no longer approved: now it can.
    let deleted = analyst.raw("DELETE", &format!("/v1/plugins/{}", plugin.hash), None).unwrap();
    assert_eq!(deleted.status, 200, "{}", deleted.text());
}

#[test]
fn an_approval_may_bound_the_params_by_a_json_schema() {
    let d = TestDaemon::start();
    let admin = d.tenant("acme");
    let (analyst, _) = d.token(Role::Analyst, "ana", None, None);
    ingest_trips(&admin, "acme");
    let plugin = analyst.upload_plugin(kanon_bundled::EMISSIONS_BENCHMARK).unwrap();
    let mut approval = approve(&admin, "acme", &plugin, "ana");
    // The same grant, with a schema instead of exact params.
    let schema = json!({"type": "object", "additionalProperties": false,
                        "properties": {"kg_co2_per_litre": {"type": "number", "minimum": 2, "maximum": 3}}});
    let body = json!({"plugin": plugin.hash, "analyst": "ana", "outputs": approval.outputs, "ttl_secs": 3600,
                      "datasets": approval.datasets, "params_schema": schema});
    approval = admin
        .grant_approval("acme", &NewApproval { params_schema: Some(schema), ..approval_of(&plugin, "ana") })
        .unwrap();
    assert!(approval.params.is_null());
    let submit = |params: Value| {
        let body = SubmitRequest { params: Some(params), ..submit_of("acme", &plugin, &approval) };
        analyst.raw("POST", "/v1/jobs", Some(("application/json", &json_body(&body)))).unwrap()
    };
    let inside = submit(json!({"kg_co2_per_litre": 2.68}));
    assert_eq!(inside.status, 202, "{}", inside.text());
    for outside in [json!({"kg_co2_per_litre": 5.0}), json!({"kg_co2_per_litre": "2.5"}), json!({"other": 1})]
    {
        let refused = submit(outside.clone());
        assert_eq!(refused.status, 403, "{outside}: {}", refused.text());
        assert!(refused.text().contains("schema"), "{}", refused.text());
    }
    let done = wait_for(&analyst, &inside.json::<Job>().unwrap().id);
    assert_eq!(done.state, JobState::Succeeded, "{done:?}");

    // Not both; and a schema must be one.
    let mut both = body.clone();
    both["params"] = json!({});
    let reply = admin
        .raw("POST", "/v1/tenants/acme/approvals", Some(("application/json", both.to_string().as_bytes())))
        .unwrap();
    assert_eq!(reply.status, 400, "{}", reply.text());
    let mut broken = body.clone();
    broken["params_schema"] = json!({"type": "no-such-type"});
    let reply = admin
        .raw("POST", "/v1/tenants/acme/approvals", Some(("application/json", broken.to_string().as_bytes())))
        .unwrap();
    assert_eq!(reply.status, 422, "{}", reply.text());
}

#[test]
fn a_tenant_enrols_its_own_admin_and_the_operator_never_holds_its_token() {
    let d = TestDaemon::start();
    let created =
        d.operator.create_tenant(&NewTenant { name: "acme".into(), enrolment_ttl_secs: None }).unwrap();
    assert_eq!(created.tenant.name, "acme");
    let code = created.enrolment.code;
    let post = |client: &Client, path: &str, body: Value| {
        client.raw("POST", path, Some(("application/json", body.to_string().as_bytes()))).unwrap()
    };
    // The operator issues no tenant-admin token, under any name.
    for body in [
        json!({"role": "tenant-admin", "name": "acme-admin", "tenant": "acme"}),
        json!({"role": "tenant-admin", "name": "someone"}),
    ] {
        let reply = post(&d.operator, "/v1/tokens", body);
        assert_eq!(reply.status, 403, "{}", reply.text());
    }

    // A wrong code, and the right one twice: refused alike but once.
    let anonymous = d.operator.with_token(None);
    let last = code.chars().last().unwrap();
    let forged = format!("{}{}", &code[..code.len() - 1], if last == '0' { '1' } else { '0' });
    let refusal = post(&anonymous, "/v1/enrol", json!({"code": forged, "name": "acme-admin"}));
    assert_eq!(refusal.status, 403, "{}", refusal.text());
    let (admin, _) = anonymous.enrol(&code, "acme-admin", None).unwrap();
    let me = admin.whoami().unwrap();
    assert_eq!((me.role, me.tenant.as_deref()), (Role::TenantAdmin, Some("acme")));
    let again = post(&anonymous, "/v1/enrol", json!({"code": code, "name": "acme-admin-2"}));
    assert_eq!((again.status, again.text()), (refusal.status, refusal.text()), "used and forged look alike");
    // The holder name is the admin's now.
    let taken = post(&d.operator, "/v1/tokens", json!({"role": "analyst", "name": "acme-admin"}));
    assert_eq!(taken.status, 409, "{}", taken.text());

    // The admin issues a further admin token of its tenant, and no other.
    let ops = admin
        .issue_token(&NewToken {
            role: Role::TenantAdmin,
            name: "acme-ops".into(),
            tenant: None,
            ttl_secs: None,
        })
        .unwrap();
    assert_eq!(ops.info.tenant.as_deref(), Some("acme"));
    assert_eq!(post(&admin, "/v1/tokens", json!({"role": "analyst", "name": "ana"})).status, 403);

    // Lost access: a fresh code, which replaces the unused one before it;
    // the operator still holds no token, and the admin's tokens still work.
    // As JSON: the answer carries no token, whatever the client's type holds.
    let fresh = |ttl: Value| -> Value {
        d.operator.send("POST", "/v1/tenants/acme/enrolments", &json!({"ttl_secs": ttl})).unwrap()
    };
    let replaced = fresh(Value::Null);
    let current = fresh(json!(3600));
    assert!(replaced.get("token").is_none() && current.get("token").is_none());
    let stale = post(&anonymous, "/v1/enrol", json!({"code": replaced["code"], "name": "acme-new"}));
    assert_eq!(stale.status, 403, "{}", stale.text());
    let (_, _) = anonymous.enrol(current["code"].as_str().unwrap(), "acme-new", Some(3600)).unwrap();
    assert_eq!(admin.raw("GET", "/v1/whoami", None).unwrap().status, 200);

    // The admin sees and revokes its tenant's tokens, and no one else's.
    let tokens = admin.list_tokens().unwrap();
    let mut names: Vec<&str> = tokens.iter().map(|t| t.name.as_str()).collect();
    names.sort_unstable();
    assert_eq!(names, ["acme-admin", "acme-new", "acme-ops"]);
    let new_id = &tokens.iter().find(|t| t.name == "acme-new").unwrap().id;
    admin.revoke_token(new_id).unwrap();
    let operator_id = d.operator.whoami().unwrap().token;
    assert_eq!(admin.raw("DELETE", &format!("/v1/tokens/{operator_id}"), None).unwrap().status, 404);

    // Every code and every token on the tenant is on its chain.
    let export = audit(&admin, "acme");
    assert!(kanon_daemon::verify("acme", &export.entries, &export.head).is_ok());
    let seen: Vec<String> = export
        .entries
        .iter()
        .map(|e| format!("{} {}", e.action, e.detail.get("name").and_then(Value::as_str).unwrap_or("")))
        .collect();
    let expected = [
        "tenant.create ",
        "enrolment.issue ",
        "enrolment.redeem ",
        "token.issue acme-admin",
        "token.issue acme-ops",
        "enrolment.issue ",
        "enrolment.issue ",
        "enrolment.redeem ",
        "token.issue acme-new",
        "token.revoke acme-new",
    ];
    assert_eq!(seen, expected);
    let issued = export.entries.iter().filter(|e| e.action == "enrolment.issue").collect::<Vec<_>>();
    assert_eq!(issued[2].detail["replaced"], json!([replaced["id"]]));
    assert!(issued[1].actor.starts_with("operator "), "{:?}", issued[1]);
}

#[test]
fn refused_access_by_another_tenant_or_role_lands_in_the_tenants_audit_log() {
    let d = TestDaemon::start();
    let admin = d.tenant("acme");
    let intruder = d.tenant("other");
    let (analyst, _) = d.token(Role::Analyst, "ana", None, None);
    let before = audit(&admin, "acme").entries.len();
    assert_eq!(intruder.raw("GET", "/v1/tenants/acme/audit", None).unwrap().status, 403);
    assert_eq!(analyst.raw("GET", "/v1/tenants/acme/datasets", None).unwrap().status, 403);
    // A percent-encoded name is the same tenant's.
    assert_eq!(analyst.raw("GET", "/v1/tenants/%61c%6De/approvals", None).unwrap().status, 403);
    // Without a token: refused and counted, but not written to the log.
    assert_eq!(
        d.operator.with_token(None).raw("GET", "/v1/tenants/acme/datasets", None).unwrap().status,
        401
    );
    let export = audit(&admin, "acme");
    let refused: Vec<_> = export.entries[before..].iter().filter(|e| e.action == "access.refused").collect();
    assert_eq!(refused.len(), 3, "{refused:?}");
    assert!(refused[0].actor.starts_with("tenant-admin other-admin"), "{:?}", refused[0]);
    assert!(refused[1].detail["what"].as_str().unwrap().contains("as analyst"), "{:?}", refused[1]);
    assert_eq!(
        refused[2].detail["what"], "GET /v1/tenants/{tenant}/approvals as analyst",
        "{:?}",
        refused[2]
    );
    assert!(kanon_daemon::verify("acme", &export.entries, &export.head).is_ok());
}

#[test]
fn a_plugin_in_use_cannot_be_deleted_and_a_bad_component_is_refused() {
    let d = TestDaemon::start();
    let admin = d.tenant("acme");
    let (analyst, _) = d.token(Role::Analyst, "ana", None, None);
    let (vendor, _) = d.token(Role::Vendor, "ven", None, None);
    ingest_trips(&admin, "acme");
    let plugin = analyst.upload_plugin(kanon_bundled::EMISSIONS_BENCHMARK).unwrap();
    approve(&admin, "acme", &plugin, "ana");
    let path = format!("/v1/plugins/{}", plugin.hash);
    assert_eq!(
        vendor.raw("DELETE", &path, None).unwrap().status,
        404,
        "another's plugin is not there for it"
    );
    let in_use = analyst.raw("DELETE", &path, None).unwrap();
    assert_eq!(in_use.status, 409, "{}", in_use.text());

    let not_wasm = upload_plugin(&analyst, b"not a component");
    assert_eq!(not_wasm.status, 422, "{}", not_wasm.text());
    assert!(not_wasm.text().contains("not a WebAssembly binary"), "{}", not_wasm.text());
    let plugins = analyst.list_plugins().unwrap();
    assert_eq!(plugins.len(), 1, "a refused upload leaves nothing");
}

#[test]
fn analysts_and_vendors_see_only_their_own_or_approved_plugins_and_no_other_uploader() {
    let d = TestDaemon::start();
    let admin = d.tenant("acme");
    let (ana, _) = d.token(Role::Analyst, "ana", None, None);
    let (bob, _) = d.token(Role::Analyst, "bob", None, None);
    let (ven, _) = d.token(Role::Vendor, "ven", None, None);
    ingest_trips(&admin, "acme");
    let emissions = ana.upload_plugin(kanon_bundled::EMISSIONS_BENCHMARK).unwrap();
    let absence = ven.upload_plugin(kanon_bundled::ABSENCE_RATE).unwrap();
    let (e, a) = (emissions.hash.as_str(), absence.hash.as_str());
    let listed = |client: &Client| -> BTreeSet<String> {
        client.list_plugins().unwrap().into_iter().map(|p| p.hash).collect()
    };
    let show = |client: &Client, hash: &str| client.raw("GET", &format!("/v1/plugins/{hash}"), None).unwrap();
    assert_eq!(listed(&ana), BTreeSet::from([e.to_owned()]));
    assert_eq!(listed(&ven), BTreeSet::from([a.to_owned()]));
    assert_eq!(listed(&bob), BTreeSet::new());
    assert_eq!(listed(&admin), BTreeSet::from([e.to_owned(), a.to_owned()]), "a tenant admin approves any");
    for (client, hash) in [(&bob, e), (&ven, e), (&ana, a)] {
        assert_eq!(show(client, hash).status, 404, "{hash}");
    }
    let shown = admin.plugin(e).unwrap();
    assert_eq!(shown.uploader, "analyst ana", "the tenant admin knows whose plugin it approves");

    // Approved for bob: he sees it, not who uploaded it.
    approve(&admin, "acme", &emissions, "bob");
    assert_eq!(listed(&bob), BTreeSet::from([e.to_owned()]));
    let seen = show(&bob, e);
    assert_eq!(seen.status, 200);
    assert_eq!(seen.json::<PluginRecord>().unwrap().uploader, "");
    assert!(!seen.text().contains("ana"), "{}", seen.text());

    // The same bytes from the vendor: its own to see, under its name only;
    // and ana's view names no one else.
    let again = upload_plugin(&ven, kanon_bundled::EMISSIONS_BENCHMARK);
    assert_eq!(again.status, 200, "{}", again.text());
    assert_eq!(again.json::<PluginRecord>().unwrap().uploader, "vendor ven");
    assert_eq!(listed(&ven), BTreeSet::from([e.to_owned(), a.to_owned()]));
    let ana_view = show(&ana, e);
    assert_eq!(ana_view.json::<PluginRecord>().unwrap().uploader, "analyst ana");
    assert!(!ana_view.text().contains("ven"), "{}", ana_view.text());
    // Only the first uploader deletes (it is in use anyway); others do not see it.
    assert_eq!(ven.raw("DELETE", &format!("/v1/plugins/{e}"), None).unwrap().status, 403);
    assert_eq!(bob.raw("DELETE", &format!("/v1/plugins/{a}"), None).unwrap().status, 404);
    // A vendor publishes only over a plugin it uploaded.
    let (rival, _) = d.token(Role::Vendor, "rival", None, None);
    let publish = |client: &Client, hash: &str| {
        let body = json!({"name": "co2", "plugin": hash}).to_string();
        client.raw("POST", "/v1/benchmarks", Some(("application/json", body.as_bytes()))).unwrap().status
    };
    assert_eq!(publish(&rival, a), 404);
    assert_eq!(publish(&ven, a), 201);
}

#[test]
fn support_staff_read_job_metadata_only_under_a_live_grant_and_every_use_is_audited() {
    let d = TestDaemon::start();
    let admin = d.tenant("acme");
    assert_eq!(d.operator.raw("GET", "/v1/tenants/acme/jobs", None).unwrap().status, 403);
    let grant = admin.create_grant("acme", &NewGrant { ttl_secs: 3600, reason: "ticket 42".into() }).unwrap();
    let jobs = d.operator.raw("GET", "/v1/tenants/acme/jobs", None).unwrap();
    assert_eq!(jobs.status, 200, "{}", jobs.text());
    // Never the data.
    assert_eq!(d.operator.raw("GET", "/v1/tenants/acme/datasets", None).unwrap().status, 403);
    admin.revoke_grant("acme", &grant.id).unwrap();
    assert_eq!(d.operator.raw("GET", "/v1/tenants/acme/jobs", None).unwrap().status, 403);
    let export = audit(&admin, "acme");
    let seen = actions(&export);
    let uses: Vec<&&str> = seen
        .iter()
        .filter(|a| ["support.grant", "support.use", "support.revoke", "access.refused"].contains(a))
        .collect();
    // The refusals: jobs before the grant, datasets under it, jobs after it.
    let expected = [
        "access.refused",
        "support.grant",
        "support.use",
        "access.refused",
        "support.revoke",
        "access.refused",
    ];
    assert_eq!(uses, expected.iter().collect::<Vec<_>>());

    // A grant expires by itself.
    admin.create_grant("acme", &NewGrant { ttl_secs: 1, reason: "short".into() }).unwrap();
    assert_eq!(d.operator.raw("GET", "/v1/tenants/acme/jobs", None).unwrap().status, 200);
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(d.operator.raw("GET", "/v1/tenants/acme/jobs", None).unwrap().status, 403);
}

/// The status each role gets on each route, probed with a body of `{}` and
/// ids that do not exist. `None`: the role is denied (403).
fn expected(method: &str, path: &str, role: Role) -> u16 {
    use Role::*;
    let allowed: &[(Role, u16)] = match (method, path) {
        ("GET", "/health") | ("GET", "/openapi.json") => {
            &[(Operator, 200), (TenantAdmin, 200), (Analyst, 200), (Vendor, 200)]
        }
        ("GET", "/metrics") | ("GET", "/v1/status") => &[(Operator, 200)],
        ("GET", "/v1/whoami") => &[(Operator, 200), (TenantAdmin, 200), (Analyst, 200), (Vendor, 200)],
        ("POST", "/v1/tenants") => &[(Operator, 400)],
        ("POST", "/v1/tokens") => &[(Operator, 400), (TenantAdmin, 400)],
        ("GET", "/v1/tenants") | ("GET", "/v1/audit") => &[(Operator, 200)],
        ("GET", "/v1/tokens") => &[(Operator, 200), (TenantAdmin, 200)],
        ("DELETE", "/v1/tokens/{id}") => &[(Operator, 404), (TenantAdmin, 404)],
        // A fresh code for the tenant's admin.
        ("POST", "/v1/tenants/{tenant}/enrolments") => &[(Operator, 201)],
        // Public: `{}` is no code, whoever asks.
        ("POST", "/v1/enrol") => &[(Operator, 400), (TenantAdmin, 400), (Analyst, 400), (Vendor, 400)],
        ("POST", "/v1/backups") => &[(Operator, 400)],
        ("GET", "/v1/tenants/{tenant}/policy") | ("PUT", "/v1/tenants/{tenant}/policy") => {
            &[(TenantAdmin, 200)]
        }
        ("GET", "/v1/tenants/{tenant}/datasets") => &[(TenantAdmin, 200)],
        ("PUT", "/v1/tenants/{tenant}/datasets/{dataset}") => &[(TenantAdmin, 400)],
        ("DELETE", "/v1/tenants/{tenant}/datasets/{dataset}") => &[(TenantAdmin, 404)],
        ("GET", "/v1/tenants/{tenant}/approvals") => &[(TenantAdmin, 200)],
        ("POST", "/v1/tenants/{tenant}/approvals") | ("POST", "/v1/tenants/{tenant}/grants") => {
            &[(TenantAdmin, 400)]
        }
        ("DELETE", "/v1/tenants/{tenant}/approvals/{id}")
        | ("DELETE", "/v1/tenants/{tenant}/grants/{id}") => &[(TenantAdmin, 404)],
        // The operator passes the role check but holds no support grant.
        ("GET", "/v1/tenants/{tenant}/jobs") => &[(TenantAdmin, 200), (Operator, 403)],
        // The same for the budget; an analyst with no live approval on the
        // tenant is told it does not exist.
        ("GET", "/v1/tenants/{tenant}/budget") => &[(TenantAdmin, 200), (Operator, 403), (Analyst, 404)],
        ("GET", "/v1/tenants/{tenant}/audit") | ("GET", "/v1/tenants/{tenant}/grants") => {
            &[(TenantAdmin, 200)]
        }
        ("GET", "/v1/plugins") => &[(TenantAdmin, 200), (Analyst, 200), (Vendor, 200)],
        ("POST", "/v1/plugins") => &[(Analyst, 422), (Vendor, 422)],
        ("GET", "/v1/plugins/{hash}") => &[(TenantAdmin, 404), (Analyst, 404), (Vendor, 404)],
        ("DELETE", "/v1/plugins/{hash}") => &[(Operator, 404), (Analyst, 404), (Vendor, 404)],
        ("GET", "/v1/approvals") => &[(Analyst, 200)],
        ("GET", "/v1/jobs") => &[(Analyst, 200), (TenantAdmin, 200)],
        ("POST", "/v1/jobs") => &[(Analyst, 400)],
        ("GET", "/v1/jobs/{id}") => &[(Analyst, 404), (TenantAdmin, 404), (Operator, 404)],
        ("POST", "/v1/jobs/{id}/cancel") => &[(Analyst, 404), (TenantAdmin, 404)],
        ("GET", "/v1/jobs/{id}/results") => &[(Analyst, 404)],
        ("GET", "/v1/jobs/{id}/log") => &[(TenantAdmin, 404), (Operator, 404)],
        ("POST", "/v1/benchmarks") => &[(Vendor, 400)],
        ("GET", "/v1/benchmarks") => &[(Vendor, 200), (TenantAdmin, 200), (Operator, 200)],
        ("GET", "/v1/benchmarks/{benchmark}") => &[(Vendor, 404), (TenantAdmin, 404), (Operator, 404)],
        ("POST", "/v1/benchmarks/{benchmark}/runs") | ("DELETE", "/v1/benchmarks/{benchmark}") => {
            &[(Vendor, 404)]
        }
        ("GET", "/v1/benchmarks/{benchmark}/budget")
        | ("GET", "/v1/benchmarks/{benchmark}/runs")
        | ("GET", "/v1/benchmarks/{benchmark}/runs/{run}")
        | ("POST", "/v1/benchmarks/{benchmark}/runs/{run}/cancel")
        | ("GET", "/v1/benchmarks/{benchmark}/versions")
        | ("GET", "/v1/benchmarks/{benchmark}/versions/{version}") => &[(Vendor, 404), (Operator, 404)],
        ("GET", "/v1/tenants/{tenant}/benchmarks") => &[(TenantAdmin, 200)],
        ("PUT", "/v1/tenants/{tenant}/benchmarks/{benchmark}") => &[(TenantAdmin, 400)],
        ("DELETE", "/v1/tenants/{tenant}/benchmarks/{benchmark}")
        | ("GET", "/v1/tenants/{tenant}/benchmarks/{benchmark}/versions/{version}") => &[(TenantAdmin, 404)],
        // The operator passes the role check but holds no support grant.
        ("GET", "/v1/tenants/{tenant}/benchmark-runs/{run}/log") => &[(TenantAdmin, 404), (Operator, 403)],
        _ => panic!("no expected statuses for {method} {path}: add the new route to this table"),
    };
    allowed.iter().find(|(r, _)| *r == role).map_or(403, |(_, status)| *status)
}

/// A well-formed id that names nothing, for the `{id}` of `path`.
fn absent_id(path: &str) -> String {
    let zeros = "0".repeat(24);
    if path.starts_with("/v1/tokens/") {
        "0".repeat(12)
    } else if path.starts_with("/v1/jobs/") {
        format!("job_{zeros}")
    } else if path.contains("/approvals/") {
        format!("apr_{zeros}")
    } else if path.contains("/grants/") {
        format!("grant_{zeros}")
    } else {
        panic!("no id shape for {path}: add it here")
    }
}

fn probe_path(path: &str) -> String {
    let path = if path.contains("{id}") { path.replace("{id}", &absent_id(path)) } else { path.to_owned() };
    path.replace("{tenant}", "acme")
        .replace("{dataset}", "nope")
        .replace("{hash}", &"0".repeat(64))
        .replace("{benchmark}", "nope")
        .replace("{run}", &format!("brun_{}", "0".repeat(24)))
        .replace("{version}", "latest")
}

/// `path` with each parameter malformed in turn (too long, or not of its
/// shape), and which.
fn malformed_path(path: &str, long: &str) -> Vec<(&'static str, String)> {
    let params = ["{tenant}", "{dataset}", "{id}", "{hash}", "{benchmark}", "{run}", "{version}"];
    let mut paths = Vec::new();
    for param in params.iter().filter(|p| path.contains(*p)) {
        let correct = probe_path(path.replace(param, "\u{1}").as_str());
        for bad in [long, "..%2F..%2Fcontrol.redb", "-x", "%ff"] {
            paths.push((*param, correct.replace('\u{1}', bad)));
        }
    }
    paths
}

#[test]
fn every_route_answers_every_role_and_every_bad_token_with_the_exact_status() {
    let d = TestDaemon::start();
    let admin = d.tenant("acme");
    let clients = [
        (Role::Operator, d.operator.clone()),
        (Role::TenantAdmin, admin),
        (Role::Analyst, d.token(Role::Analyst, "ana", None, None).0),
        (Role::Vendor, d.token(Role::Vendor, "ven", None, None).0),
    ];
    let (expired, _) = d.token(Role::Operator, "old", None, Some(1));
    let (revoked, revoked_id) = d.token(Role::Operator, "gone", None, None);
    d.operator.revoke_token(&revoked_id).unwrap();
    let forged = d.operator.with_token(Some(format!("kanon_{revoked_id}_{}", "a".repeat(64))));
    let garbage = d.operator.with_token(Some("not-a-token".into()));
    let anonymous = d.operator.with_token(None);
    std::thread::sleep(Duration::from_millis(1100));

    // The routes in the served API document are exactly those in ACCESS.
    let document = anonymous.openapi().unwrap();
    let mut documented = BTreeSet::new();
    for (path, item) in document["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            let method = method.to_uppercase();
            let roles = operation["x-kanon-roles"]
                .as_array()
                .unwrap_or_else(|| panic!("{method} {path} lists no roles"));
            assert!(!roles.is_empty(), "{method} {path}");
            documented.insert((method, path.clone()));
        }
    }
    let table: BTreeSet<(String, String)> =
        ACCESS.iter().map(|(m, p, _)| (m.to_string(), p.to_string())).collect();
    assert_eq!(documented, table, "the API document and the access table disagree");

    for (method, path, access) in ACCESS {
        let url = probe_path(path);
        let body = matches!(*method, "POST" | "PUT").then_some(("application/json", b"{}".as_slice()));
        for (role, client) in &clients {
            let status = client.raw(method, &url, body).unwrap().status;
            assert_eq!(status, expected(method, path, *role), "{role} {method} {url}");
        }
        let bad_token_status =
            if *access == Access::Public { expected(method, path, Role::Operator) } else { 401 };
        for (what, client) in [
            ("no token", &anonymous),
            ("expired", &expired),
            ("revoked", &revoked),
            ("forged", &forged),
            ("garbage", &garbage),
        ] {
            let status = client.raw(method, &url, body).unwrap().status;
            assert_eq!(status, bad_token_status, "{what} {method} {url}");
        }
    }
}

#[test]
fn malformed_ids_and_names_are_refused_before_any_lookup_or_audit() {
    let d = TestDaemon::start();
    let admin = d.tenant("acme");
    let clients = [
        (Role::Operator, d.operator.clone()),
        (Role::TenantAdmin, admin.clone()),
        (Role::Analyst, d.token(Role::Analyst, "ana", None, None).0),
        (Role::Vendor, d.token(Role::Vendor, "ven", None, None).0),
    ];
    let head = audit(&admin, "acme").head;
    let long = "a".repeat(1000);
    let mut probed = 0;
    for (method, path, access) in ACCESS {
        let body = matches!(*method, "POST" | "PUT").then_some(("application/json", b"{}".as_slice()));
        for (param, url) in malformed_path(path, &long) {
            for (role, client) in &clients {
                // A role the route refuses is refused before its parameters
                // are read (and audited if the tenant is well-formed).
                let allowed = matches!(access, Access::Roles(roles) if roles.contains(role));
                if !allowed && param != "{tenant}" {
                    continue;
                }
                let status = if allowed { 400 } else { 403 };
                let reply = client.raw(method, &url, body).unwrap();
                assert_eq!(reply.status, status, "{role} {method} {url}: {}", reply.text());
                assert!(reply.body.len() < 400, "the refusal quotes a bounded part: {}", reply.text());
                probed += 1;
            }
        }
    }
    assert!(probed > 100, "{probed}");
    assert_eq!(audit(&admin, "acme").head, head, "nothing was audited");

    // The same in a body: a 1 MB approval id is refused whole, and nothing is written.
    let (analyst, _) = (&clients[2].1, ());
    let size = d.control_bytes();
    let body = json!({"tenant": "acme", "plugin": "0".repeat(64), "approval": "a".repeat(1_000_000), "datasets": {}});
    for _ in 0..50 {
        let reply =
            analyst.raw("POST", "/v1/jobs", Some(("application/json", body.to_string().as_bytes()))).unwrap();
        assert_eq!(reply.status, 400, "{}", reply.text());
        assert!(
            reply.text().contains("not a approval id") || reply.text().contains("approval id"),
            "{}",
            reply.text()
        );
    }
    assert_eq!(audit(&admin, "acme").head, head, "nothing was audited");
    assert_eq!(d.control_bytes(), size, "the control database did not grow");
}

#[test]
fn repeated_refusals_fold_into_counted_entries() {
    let d = TestDaemon::start();
    let admin = d.tenant("acme");
    let (vendor, _) = d.token(Role::Vendor, "ven", None, None);
    let (analyst, _) = d.token(Role::Analyst, "ana", None, None);
    let before = audit(&admin, "acme").entries.len();
    let started = Instant::now();
    for _ in 0..2000 {
        assert_eq!(vendor.raw("GET", "/v1/tenants/acme/datasets", None).unwrap().status, 403);
    }
    // Job submissions under approvals that do not exist, each another id.
    for i in 0..200 {
        let body = json!({"tenant": "acme", "plugin": "0".repeat(64), "approval": format!("apr_{i:024x}"),
                          "datasets": {}});
        let reply =
            analyst.raw("POST", "/v1/jobs", Some(("application/json", body.to_string().as_bytes()))).unwrap();
        assert_eq!(reply.status, 403, "{}", reply.text());
    }
    // Windows begun while refusing; each caller writes at most one entry
    // per window, and one more for the count the reader takes.
    let windows =
        started.elapsed().as_millis() as usize / kanon_daemon::audit::REFUSAL_WINDOW_MS as usize + 1;
    let export = audit(&admin, "acme");
    assert!(kanon_daemon::verify("acme", &export.entries, &export.head).is_ok());
    let refused: Vec<_> = export.entries[before..].iter().filter(|e| e.action == "access.refused").collect();
    for (who, refusals) in [("vendor ven", 2000), ("analyst ana", 200)] {
        let entries: Vec<_> = refused.iter().filter(|e| e.actor.starts_with(who)).collect();
        assert!((1..=windows + 1).contains(&entries.len()), "{who}: {} entries", entries.len());
        let counted: u64 = entries.iter().map(|e| e.detail["count"].as_u64().unwrap()).sum();
        assert_eq!(counted, refusals, "{who}: every refusal is counted");
    }
    let last = refused.iter().rfind(|e| e.actor.starts_with("analyst ana")).unwrap();
    assert_eq!(last.detail["what"], "job.submit");
    assert_eq!(last.detail["approval"], format!("apr_{:024x}", 199), "the last refusal's particulars");
    // Read again: nothing more was counted, nothing more is written.
    assert_eq!(audit(&admin, "acme").head, export.head);
}

#[test]
fn a_non_member_cannot_tell_which_tenants_exist() {
    let d = TestDaemon::start();
    let _admin = d.tenant("acme");
    let other = d.tenant("other");
    let (analyst, _) = d.token(Role::Analyst, "ana", None, None);
    let (vendor, _) = d.token(Role::Vendor, "ven", None, None);
    let absent = format!("apr_{}", "0".repeat(24));
    // Every answer a non-member gets about `tenant`, its name blanked.
    let answers = |tenant: &str| -> Vec<(u16, String)> {
        let submit = json!({"tenant": tenant, "plugin": "0".repeat(64), "approval": absent,
                            "datasets": {"trips": "trips"}})
        .to_string();
        let probes = [
            (&analyst, "POST", "/v1/jobs".to_owned(), Some(submit.as_bytes())),
            (&analyst, "GET", format!("/v1/tenants/{tenant}/datasets"), None),
            (&vendor, "GET", format!("/v1/tenants/{tenant}/benchmarks"), None),
            (&other, "GET", format!("/v1/tenants/{tenant}/audit"), None),
            (&other, "GET", format!("/v1/tenants/{tenant}/jobs"), None),
            (&other, "DELETE", format!("/v1/tenants/{tenant}/approvals/{absent}"), None),
        ];
        probes
            .into_iter()
            .map(|(client, method, path, body)| {
                let reply = client.raw(method, &path, body.map(|b| ("application/json", b))).unwrap();
                (reply.status, reply.text().replace(tenant, "TENANT"))
            })
            .collect()
    };
    let existing = answers("acme");
    assert!(existing.iter().all(|(status, _)| *status == 403), "{existing:?}");
    assert_eq!(existing, answers("nosuch"));
}

/// What the state looks like from outside, to compare before and after.
fn state(d: &TestDaemon, admin: &Client) -> Value {
    json!({
        "tenants": d.operator.list_tenants().unwrap(),
        "tokens": d.operator.list_tokens().unwrap(),
        "host_audit": d.operator.host_audit().unwrap().head,
        "audit": admin.tenant_audit("acme").unwrap().head,
        "datasets": admin.list_datasets("acme").unwrap(),
        "plugins": admin.list_plugins().unwrap(),
        "approvals": admin.tenant_approvals("acme").unwrap(),
        "policy": admin.tenant_policy("acme").unwrap(),
    })
}

#[test]
fn bad_requests_get_a_clear_4xx_and_change_nothing() {
    let d = TestDaemon::start();
    let admin = d.tenant("acme");
    ingest_trips(&admin, "acme");
    let before = state(&d, &admin);
    let json_body = |s: &str| Some(("application/json", s.as_bytes().to_vec()));
    // (who, method, path, body, status, what the message says)
    type Case<'a> = (&'a Client, &'a str, String, Option<(&'a str, Vec<u8>)>, u16, &'a str);
    let cases: Vec<Case> = vec![
        (&d.operator, "POST", "/v1/tenants".into(), json_body("{\"name\": "), 400, "bad-request"),
        (
            &d.operator,
            "POST",
            "/v1/tenants".into(),
            json_body("{\"name\": \"x\", \"admin\": true}"),
            400,
            "unknown field",
        ),
        (
            &d.operator,
            "POST",
            "/v1/tenants".into(),
            json_body("{\"name\": \"../etc\"}"),
            400,
            "not a valid tenant name",
        ),
        (&d.operator, "POST", "/v1/tenants".into(), json_body("{\"name\": \"acme\"}"), 409, "exists"),
        (
            &d.operator,
            "POST",
            "/v1/tenants".into(),
            Some(("application/json", vec![b' '; (1 << 20) + 1024])),
            413,
            "too-large",
        ),
        (
            &d.operator,
            "POST",
            "/v1/tenants".into(),
            Some(("text/plain", b"{\"name\": \"t\"}".to_vec())),
            400,
            "content-type",
        ),
        (
            &d.operator,
            "POST",
            "/v1/tokens".into(),
            json_body("{\"role\": \"root\", \"name\": \"x\"}"),
            400,
            "unknown variant",
        ),
        (
            &d.operator,
            "POST",
            "/v1/tokens".into(),
            json_body("{\"role\": \"tenant-admin\", \"name\": \"x\", \"tenant\": \"acme\"}"),
            403,
            "does not issue tenant-admin tokens",
        ),
        (
            &d.operator,
            "POST",
            "/v1/tokens".into(),
            json_body("{\"role\": \"vendor\", \"name\": \"x\", \"tenant\": \"acme\"}"),
            400,
            "not bound to a tenant",
        ),
        (
            &d.operator,
            "POST",
            "/v1/tokens".into(),
            json_body("{\"role\": \"analyst\", \"name\": \"acme-admin\"}"),
            409,
            "taken by a live token",
        ),
        (
            &admin,
            "POST",
            "/v1/tokens".into(),
            json_body("{\"role\": \"analyst\", \"name\": \"x\"}"),
            403,
            "not analyst tokens",
        ),
        (
            &admin,
            "POST",
            "/v1/tokens".into(),
            json_body("{\"role\": \"tenant-admin\", \"name\": \"x\", \"tenant\": \"nobody\"}"),
            403,
            "not a tenant admin of `nobody`",
        ),
        (
            &d.operator,
            "POST",
            "/v1/enrol".into(),
            json_body(&format!(
                "{{\"code\": \"kanon_enrol_{}_{}\", \"name\": \"x\"}}",
                "0".repeat(24),
                "0".repeat(64)
            )),
            403,
            "not valid",
        ),
        (
            &admin,
            "PUT",
            "/v1/tenants/acme/datasets/..%2F..%2Fetc?format=csv&entity=driver_id".into(),
            Some(("text/csv", b"driver_id\nA\n".to_vec())),
            400,
            "not a valid dataset name",
        ),
        (
            &admin,
            "PUT",
            "/v1/tenants/acme/datasets/trips?format=csv&entity=driver_id".into(),
            Some(("text/csv", b"driver_id,x\nA,1\nB\n".to_vec())),
            422,
            "row 2",
        ),
        (
            &admin,
            "PUT",
            "/v1/tenants/acme/datasets/trips?format=xls&entity=driver_id".into(),
            Some(("text/csv", b"driver_id\nA\n".to_vec())),
            400,
            "unknown format",
        ),
        (
            &admin,
            "PUT",
            "/v1/tenants/other/datasets/trips?format=csv&entity=driver_id".into(),
            Some(("text/csv", b"driver_id\nA\n".to_vec())),
            403,
            "not a tenant admin",
        ),
        (
            &admin,
            "PUT",
            "/v1/tenants/acme/policy".into(),
            json_body("{\"min_entities\": 2}"),
            422,
            "min_entities",
        ),
        (
            &admin,
            "PUT",
            "/v1/tenants/acme/policy".into(),
            json_body("{\"min_entitys\": 20}"),
            400,
            "unknown field",
        ),
        (
            &admin,
            "POST",
            "/v1/tenants/acme/approvals".into(),
            json_body(&format!(
                "{{\"plugin\": \"{}\", \"analyst\": \"ana\", \"datasets\": {{}}, \"outputs\": [], \"ttl_secs\": 60}}",
                "0".repeat(64)
            )),
            404,
            "plugin",
        ),
        (
            &admin,
            "POST",
            "/v1/tenants/acme/grants".into(),
            json_body("{\"ttl_secs\": 0, \"reason\": \"x\"}"),
            400,
            "ttl_secs",
        ),
        (&d.operator, "GET", "/v1/plugins/..%2F..%2Fcontrol.redb".into(), None, 403, "forbidden"),
        (&admin, "GET", "/v1/plugins/..%2F..%2Fcontrol.redb".into(), None, 400, "not a plugin hash"),
    ];
    for (client, method, path, body, status, needle) in &cases {
        let reply = client.raw(method, path, body.as_ref().map(|(t, b)| (*t, b.as_slice()))).unwrap();
        assert_eq!(reply.status, *status, "{method} {path}: {}", reply.text());
        assert!(reply.text().contains(needle), "{method} {path}: `{needle}` not in {}", reply.text());
        assert!(serde_json::from_slice::<Value>(&reply.body).is_ok(), "errors are JSON: {}", reply.text());
    }
    assert_eq!(state(&d, &admin), before, "a refused request changed the state");
}

#[test]
fn anonymous_health_says_only_that_the_daemon_is_up() {
    let d = TestDaemon::start();
    // As JSON: nothing but the status, whatever the client's type holds.
    let health: Value = d.operator.with_token(None).get("/health").unwrap();
    assert_eq!(health, json!({"status": "ok"}));
    let status = d.operator.status().unwrap();
    assert_eq!((status.running_jobs, status.queued_jobs), (0, Some(0)), "{status:?}");
    assert!(status.broken_chains.is_empty(), "{status:?}");
    assert!(!status.version.is_empty());
}

/// Edit entry `seq` of `chain` in a stopped daemon's control database, as
/// someone holding the file could.
fn tamper(dir: &std::path::Path, chain: &str, seq: u64) {
    use redb::ReadableTable as _;
    const AUDIT: redb::TableDefinition<(&str, u64), &[u8]> = redb::TableDefinition::new("audit");
    // The stopped daemon's background tasks let go of the file as they end.
    let deadline = Instant::now() + Duration::from_secs(30);
    let db = loop {
        match redb::Database::open(dir.join(kanon_daemon::CONTROL_FILE)) {
            Ok(db) => break db,
            Err(redb::DatabaseError::DatabaseAlreadyOpen) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("cannot open the control database: {e}"),
        }
    };
    let txn = db.begin_write().unwrap();
    {
        let mut table = txn.open_table(AUDIT).unwrap();
        let bytes = table.get((chain, seq)).unwrap().unwrap().value().to_vec();
        let mut entry: Value = serde_json::from_slice(&bytes).unwrap();
        entry["detail"]["edited"] = json!(true);
        table.insert((chain, seq), serde_json::to_vec(&entry).unwrap().as_slice()).unwrap();
    }
    txn.commit().unwrap();
}

#[test]
fn a_chain_that_does_not_verify_at_start_is_reported_and_refuses_every_write() {
    let mut d = TestDaemon::start();
    let admin = d.tenant("acme");
    let other = d.tenant("other");
    ingest_trips(&admin, "acme");
    let head = audit(&admin, "acme").head;
    d.restart(|dir| tamper(dir, "acme", 2));

    let status = d.operator.status().unwrap();
    let why = status.broken_chains.get("acme").unwrap_or_else(|| panic!("{status:?}"));
    assert!(why.contains("entry 2 was altered"), "{why}");
    assert_eq!(status.broken_chains.len(), 1, "{status:?}");
    // Every change that acme's chain would record is refused, with why.
    let policy =
        admin.raw("PUT", "/v1/tenants/acme/policy", Some(("application/json", b"{\"min_entities\": 20}")));
    let upload = admin.raw(
        "PUT",
        "/v1/tenants/acme/datasets/more?format=csv&entity=driver_id",
        Some(("text/csv", kanon_tests::trips_csv().as_bytes())),
    );
    for reply in [policy.unwrap(), upload.unwrap()] {
        assert_eq!(reply.status, 503, "{}", reply.text());
        assert!(
            reply.text().contains("the audit log of `acme` does not verify (entry 2 was altered"),
            "{}",
            reply.text()
        );
    }
    let datasets = admin.list_datasets("acme").unwrap();
    assert_eq!(datasets.len(), 1, "the upload was refused before the vault stored it");
    // The tenant still reads its log, and sees the break itself.
    let export = audit(&admin, "acme");
    assert_eq!(export.head, head, "nothing was appended");
    assert!(kanon_daemon::verify("acme", &export.entries, &export.head).is_err());
    // Other tenants carry on.
    ingest_trips(&other, "other");
}

#[test]
fn the_metrics_count_requests_jobs_and_refusals() {
    let d = TestDaemon::start();
    let _ = d.operator.with_token(None).raw("GET", "/v1/tenants", None).unwrap();
    let text = d.operator.get_text("/metrics").unwrap();
    assert!(text.contains("kanon_http_requests_total{"), "{text}");
    assert!(text.contains("kanon_refusals_total{reason=\"token\"} 1"), "{text}");
    assert!(text.contains("route=\"/v1/tenants\""), "{text}");
}

#[test]
fn a_large_field_is_cut_in_the_audit_entry_and_kept_whole_in_its_record() {
    let d = TestDaemon::start();
    let admin = d.tenant("acme");
    let (analyst, _) = d.token(Role::Analyst, "ana", None, None);
    ingest_trips(&admin, "acme");
    let plugin = analyst.upload_plugin(kanon_bundled::EMISSIONS_BENCHMARK).unwrap();
    let long = "x".repeat(900_000);
    let schema = json!({"type": "object", "description": long});
    let created = admin
        .grant_approval("acme", &NewApproval { params_schema: Some(schema), ..approval_of(&plugin, "ana") })
        .unwrap();
    assert_eq!(
        created.params_schema.as_ref().unwrap()["description"].as_str().unwrap().len(),
        long.len(),
        "the record is whole"
    );
    let export = audit(&admin, "acme");
    let entry = export.entries.last().unwrap();
    assert_eq!(entry.action, "approval.grant");
    assert_eq!(entry.detail["approval"], created.id);
    let size = serde_json::to_vec(entry).unwrap().len();
    assert!(size <= kanon_daemon::audit::MAX_DETAIL_BYTES + 1024, "the entry holds {size} bytes");
    assert!(kanon_daemon::verify("acme", &export.entries, &export.head).is_ok());
}

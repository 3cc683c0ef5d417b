//! The `kanon` binary as a user runs it.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

struct Dir(tempfile::TempDir);

impl Dir {
    fn new() -> Self {
        Self(tempfile::tempdir().unwrap())
    }
    fn write(&self, name: &str, contents: impl AsRef<[u8]>) -> PathBuf {
        let path = self.0.path().join(name);
        std::fs::write(&path, contents).unwrap();
        path
    }
    fn path(&self) -> &Path {
        self.0.path()
    }
}

fn kanon(dir: &Dir, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kanon"))
        .args(args)
        .env("KANON_CACHE_DIR", dir.path().join("cache"))
        .output()
        .unwrap()
}

#[test]
fn a_reader_that_stops_early_ends_kanon_quietly() {
    // As `kanon manifest PLUGIN | head -0`: the pipe is closed before
    // kanon prints.
    let (dir, plugin) = setup();
    let mut child = Command::new(env!("CARGO_BIN_EXE_kanon"))
        .args(["manifest", &plugin])
        .env("KANON_CACHE_DIR", dir.path().join("cache"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    assert!(!text(&out.stderr).contains("panicked"), "{}", text(&out.stderr));
    assert_eq!(out.status.code(), Some(141), "{}", text(&out.stderr));
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// 12 drivers in north, 3 in south.
fn trips_csv() -> String {
    let mut csv = String::from("driver_id,vehicle_class,region,distance_km,load_tonnes,fuel_litres\n");
    for d in 0..15 {
        let region = if d < 12 { "north" } else { "south" };
        csv.push_str(&format!("D{d},van,{region},80.5,1.2,9.1\n"));
    }
    csv
}

fn setup() -> (Dir, String) {
    let dir = Dir::new();
    let plugin = dir.write("emissions.wasm", kanon_bundled::EMISSIONS_BENCHMARK);
    (dir, plugin.display().to_string())
}

#[test]
fn run_prints_released_and_suppressed_cells() {
    let (dir, plugin) = setup();
    let data = format!("trips={}", dir.write("trips.csv", trips_csv()).display());
    let out = kanon(&dir, &["run", "--plugin", &plugin, "--data", &data, "--entity", "driver_id"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("co2_intensity: 28 of 30 cells suppressed (k = 10, dominance (2, 90%))"),
        "{stdout}"
    );
    // Margins: the van total and the grand total are released; totals are `*`.
    assert!(stdout.lines().any(|l| l.starts_with("*") && l.contains(" 15 ")), "{stdout}");
    // North's 12 vans go too: the other regions are empty, so the van total
    // minus north would be south's 3.
    assert!(
        stdout.lines().any(|l| l.starts_with("van") && l.contains("north") && l.ends_with("suppressed")),
        "{stdout}"
    );
    assert!(
        stdout.lines().any(|l| l.starts_with("van") && l.contains("south") && l.ends_with("suppressed")),
        "{stdout}"
    );
}

#[test]
fn run_json_is_the_release_record() {
    let (dir, plugin) = setup();
    let data = format!("trips={}", dir.write("trips.csv", trips_csv()).display());
    let out =
        kanon(&dir, &["run", "--plugin", &plugin, "--data", &data, "--entity", "trips=driver_id", "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["policy"]["min_entities"], 10);
    assert_eq!(json["plugin_hash"].as_str().unwrap().len(), 64);
    let cells = json["tables"][0]["cells"].as_array().unwrap();
    assert_eq!(cells.len(), 30, "5 x 4 cells with their totals: 6 x 5");
    assert_eq!(json["suppressed"][0]["suppressed_cells"], 28);
    assert_eq!(json["params_hash"].as_str().unwrap().len(), 64);
    assert_eq!(cells[5]["key"], serde_json::json!(["van", "*"]));
    assert_eq!(cells[5]["values"][0], 15.0);
    assert!(cells[0]["values"].is_null());
}

#[test]
fn policy_files_tighten_and_a_looser_tenant_policy_is_refused() {
    let (dir, plugin) = setup();
    let data = format!("trips={}", dir.write("trips.csv", trips_csv()).display());
    let run = |extra: &[&str]| {
        let mut args = vec!["run", "--plugin", &plugin, "--data", &data, "--entity", "driver_id", "--json"];
        args.extend_from_slice(extra);
        kanon(&dir, &args)
    };
    // The job asks for k = 13: van/north (12 drivers) goes too.
    let job = dir.write("job.toml", "min_entities = 13\n").display().to_string();
    let out = run(&["--policy", &job]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["policy"]["min_entities"], 13);
    assert!(json["tables"][0]["cells"][0]["values"].is_null());

    let looser = dir.write("tenant.toml", "min_entities = 5\n").display().to_string();
    let out = run(&["--tenant-policy", &looser]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains("`min_entities`: 5, which is looser than the operator's floor of 10"), "{err}");

    let typo = dir.write("typo.toml", "min_entites = 20\n").display().to_string();
    let out = run(&["--policy", &typo]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("min_entites"), "{}", text(&out.stderr));

    // An operator may lower the floor; the tenant's own k = 5 then holds.
    let floor = dir.write("floor.toml", "min_entities = 3\n").display().to_string();
    let out = run(&["--floor", &floor, "--tenant-policy", &looser]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["policy"]["min_entities"], 5);
}

#[test]
fn a_dp_run_releases_every_cell_with_noise_and_its_interval() {
    let (dir, plugin) = setup();
    let data = format!("trips={}", dir.write("trips.csv", trips_csv()).display());
    let run = |extra: &[&str]| {
        let mut args = vec!["run", "--plugin", &plugin, "--data", &data, "--entity", "driver_id"];
        args.extend_from_slice(extra);
        kanon(&dir, &args)
    };
    let out = run(&["--dp-rho", "0.0243", "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["policy"]["privacy"], "dp");
    assert_eq!(json["policy"]["isolation"], "entity", "DP runs one instance per entity");
    assert_eq!(json["dp"]["rho_nanos"], 24_300_000);
    assert_eq!(json["suppressed"][0]["suppressed_cells"], 0);
    let table = &json["tables"][0];
    let cells = table["cells"].as_array().unwrap();
    assert_eq!(cells.len(), 30);
    // Every cell, the 28 threshold mode suppresses too, has values and
    // intervals; a count's interval is centred on it.
    for cell in cells {
        let count = cell["values"][0].as_f64().unwrap();
        let interval = &cell["intervals"][0];
        let (lo, hi) = (interval["lo"].as_f64().unwrap(), interval["hi"].as_f64().unwrap());
        assert!(lo < count && count < hi && (count - lo - (hi - count)).abs() < 1e-9, "{cell}");
    }
    assert!(table["noise_sd"][0].as_f64().unwrap() > 1.0, "{table}");
    // Two runs draw fresh noise from the operating system.
    let again: serde_json::Value =
        serde_json::from_slice(&run(&["--dp-rho", "0.0243", "--json"]).stdout).unwrap();
    assert_ne!(again["tables"], json["tables"]);

    let out = run(&["--dp-rho", "0.0243"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("every cell released with noise (differential privacy: ρ = 0.0243 per release"),
        "{stdout}"
    );
    assert!(stdout.contains(" ± "), "{stdout}");
    assert!(!stdout.contains("suppressed"), "{stdout}");

    // ρ must be usable; a tenant's threshold policy under a DP floor is looser.
    let out = run(&["--dp-rho", "0"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("`dp.rho`"), "{}", text(&out.stderr));
    let floor = dir.write("dp-floor.toml", "privacy = \"dp\"\n").display().to_string();
    let tenant = dir.write("threshold.toml", "privacy = \"threshold\"\n").display().to_string();
    let out = run(&["--floor", &floor, "--tenant-policy", &tenant]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("`privacy`: threshold, which is looser"), "{}", text(&out.stderr));
}

#[test]
fn bad_csv_names_the_row_and_column() {
    let (dir, plugin) = setup();
    let cases = [
        (
            "ragged.csv",
            "driver_id,region\nD1,north\nD2,north,extra\n",
            "row 2 (line 3): the row has 3 fields, the header has 2",
        ),
        ("empty.csv", "", "the file is empty"),
        ("noentity.csv", "driver,region\nD1,north\n", "column `driver_id`: no such column"),
    ];
    for (name, csv, expected) in cases {
        let data = format!("trips={}", dir.write(name, csv).display());
        let out = kanon(&dir, &["run", "--plugin", &plugin, "--data", &data, "--entity", "driver_id"]);
        assert_eq!(out.status.code(), Some(1), "{name}");
        let stderr = text(&out.stderr);
        assert!(stderr.contains(name) && stderr.contains(expected), "{name}: {stderr}");
    }
    // A type change after the rows used to infer types.
    let mut csv = trips_csv();
    for d in 0..1000 {
        csv.push_str(&format!("X{d},van,north,1,1,1\n"));
    }
    csv.push_str("Y,van,north,far,1,1\n");
    let data = format!("trips={}", dir.write("late.csv", csv).display());
    let out = kanon(&dir, &["run", "--plugin", &plugin, "--data", &data, "--entity", "driver_id"]);
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("row 1016 (line 1017), column `distance_km`: expected float, found `far`"),
        "{stderr}"
    );
}

#[test]
fn missing_column_and_wrong_type_are_clear() {
    let (dir, plugin) = setup();
    let data =
        format!("trips={}", dir.write("trips.csv", trips_csv().replace("fuel_litres", "fuel")).display());
    let out = kanon(&dir, &["run", "--plugin", &plugin, "--data", &data, "--entity", "driver_id"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("dataset `trips` has no column `fuel_litres`"),
        "{}",
        text(&out.stderr)
    );

    let data = format!("trips={}", dir.write("text.csv", trips_csv().replace(",80.5,", ",far,")).display());
    let out = kanon(&dir, &["run", "--plugin", &plugin, "--data", &data, "--entity", "driver_id"]);
    let stderr = text(&out.stderr);
    assert!(stderr.contains("column `distance_km`: the plugin expects Float, the data is Text"), "{stderr}");
}

#[test]
fn a_failed_run_exits_3_and_shows_only_the_class() {
    let (dir, plugin) = setup();
    let data = format!("trips={}", dir.write("trips.csv", trips_csv()).display());
    let out = kanon(
        &dir,
        &[
            "run",
            "--plugin",
            &plugin,
            "--data",
            &data,
            "--entity",
            "driver_id",
            "--params",
            r#"{"kg_co2_per_litre": -2}"#,
        ],
    );
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(text(&out.stderr).trim(), "the plugin run failed (plugin-error); nothing was released");
}

#[test]
fn a_refused_plugin_says_why() {
    let (dir, _) = setup();
    let core = dir.write("core.wasm", b"\0asm\x01\0\0\0");
    let out = kanon(&dir, &["manifest", core.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("a core WebAssembly module, not a component"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn manifest_prints_what_the_plugin_reads_and_emits() {
    let (dir, plugin) = setup();
    let out = kanon(&dir, &["manifest", &plugin]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["manifest"]["name"], "emissions-benchmark");
    assert_eq!(json["manifest"]["outputs"][0]["name"], "co2_intensity");
}

/// A key file and the flags that name it and the data directory.
fn vault_flags(dir: &Dir) -> Vec<String> {
    let key = dir.path().join("kek.hex");
    if !key.exists() {
        std::fs::write(&key, kanon_vault::KeyEncryptionKey::generate().to_hex()).unwrap();
    }
    let data = dir.path().join("data");
    vec!["--data-dir".into(), data.display().to_string(), "--key-file".into(), key.display().to_string()]
}

/// README's first command, smaller: every role through an embedded
/// daemon's API, both plugins released, both audit logs verified.
#[test]
fn the_demo_walks_every_role_through_the_daemon() {
    let _timed = timed_processes();
    let dir = Dir::new();
    let out = kanon(
        &dir,
        &["demo", "--trips", "30000", "--drivers", "300", "--employees", "2000", "--carrier-trips", "20000"],
    );
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
    for expected in [
        "Started an embedded daemon at http://127.0.0.1:",
        "fleetco: ingested 30000 rows",
        "co2_intensity:",
        "peoplefirst: ingested 2000 rows",
        "absence:",
        // The DP job: every cell noised, charged once to the tenant's budget.
        "co2_intensity: every cell released with noise (differential privacy: ρ = 0.0243 per release",
        "fleetco: the job charged ρ = 0.0243; its privacy budget has ρ = 0.4757 of 0.5 left",
        "privacy.reserve, privacy.settle, job.finish, release",
    ] {
        assert!(stdout.contains(expected), "`{expected}` missing:\n{stdout}");
    }
    assert_eq!(stdout.matches("audit log verifies").count(), 2, "{stdout}");
    // The benchmark: eight carriers, the vendor's table, one carrier's own
    // position, and the version after one left.
    for expected in [
        "carriers: all 8 opted in",
        "benchco: version 1 of `co2` in the meta data vault; it names no carrier:",
        "co2_intensity: ",
        "carrier-03: its own position next to the peers",
        "peers count   own count  band",
        "carrier-08: opted out",
        "benchco: version 2 holds",
    ] {
        assert!(stdout.contains(expected), "`{expected}` missing:\n{stdout}");
    }
    let json = kanon(
        &dir,
        &[
            "demo",
            "--trips",
            "30000",
            "--drivers",
            "300",
            "--employees",
            "2000",
            "--carrier-trips",
            "20000",
            "--json",
        ],
    );
    let out: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert!(out["jobs"]["fleetco"]["tables"][0]["cells"].is_array(), "{out}");
    assert!(out["jobs"]["peoplefirst"]["tables"][0]["cells"].is_array(), "{out}");
    assert_eq!(out["jobs"]["fleetco_dp"]["dp"]["rho_nanos"], 24_300_000, "{out}");
    let benchmark = &out["benchmark"];
    assert_eq!(benchmark["version"]["participants"], 8, "{benchmark}");
    assert!(!benchmark["version"].to_string().contains("carrier"), "the vendor's version names no carrier");
    assert_eq!(benchmark["position"]["tenant"], "carrier-03");
    assert_eq!(benchmark["second_run"]["participants"], 7);
    assert!(benchmark["second_run"]["stats"]["held_cells"].as_u64().unwrap() > 0, "{benchmark}");
}

fn kanon_vault_cmd(dir: &Dir, command: &[&str]) -> Output {
    let flags = vault_flags(dir);
    let mut args: Vec<&str> = command.to_vec();
    args.extend(flags.iter().map(String::as_str));
    kanon(dir, &args)
}

#[test]
fn ingest_run_export_backup_restore_and_erase_from_the_command_line() {
    let (dir, plugin) = setup();
    let csv = dir.write("trips.csv", trips_csv());
    let csv = csv.to_str().unwrap();
    let out = kanon_vault_cmd(
        &dir,
        &["ingest", "--tenant", "acme", "--dataset", "trips", csv, "--entity", "driver_id"],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).starts_with("acme/trips v1: 15 rows, 6 columns"), "{}", text(&out.stdout));

    let run = kanon_vault_cmd(
        &dir,
        &["run", "--plugin", &plugin, "--tenant", "acme", "--dataset", "trips", "--json"],
    );
    assert!(run.status.success(), "{}", text(&run.stderr));
    let release: serde_json::Value = serde_json::from_slice(&run.stdout).unwrap();
    assert!(release["tables"].as_array().is_some_and(|t| !t.is_empty()), "{release}");

    let export = kanon_vault_cmd(&dir, &["export", "--tenant", "acme", "--dataset", "trips"]);
    assert_eq!(text(&export.stdout), trips_csv(), "the tenant's export is its data");
    // A Parquet export ingests back to the same contents.
    let parquet = dir.path().join("trips.parquet");
    let out = kanon_vault_cmd(
        &dir,
        &["export", "--tenant", "acme", "--dataset", "trips", "--out", parquet.to_str().unwrap()],
    );
    assert!(
        out.status.success() && std::fs::read(&parquet).unwrap().starts_with(b"PAR1"),
        "{}",
        text(&out.stderr)
    );
    let ingest = [
        "ingest",
        "--tenant",
        "acme",
        "--dataset",
        "again",
        parquet.to_str().unwrap(),
        "--entity",
        "driver_id",
    ];
    let out = kanon_vault_cmd(&dir, &ingest);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let again =
        kanon_vault_cmd(&dir, &["export", "--tenant", "acme", "--dataset", "again", "--format", "csv"]);
    assert_eq!(text(&again.stdout), trips_csv(), "Parquet roundtrips");
    let out = kanon_vault_cmd(&dir, &["erase", "--tenant", "acme", "--dataset", "again"]);
    assert!(out.status.success(), "{}", text(&out.stderr));

    let backup = dir.path().join("backup");
    let out = kanon_vault_cmd(&dir, &["backup", "--to", backup.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = kanon_vault_cmd(&dir, &["erase", "--tenant", "acme"]);
    assert_eq!(text(&out.stdout), "erased tenant acme: its data key and 1 dataset versions\n");
    let gone = kanon_vault_cmd(&dir, &["export", "--tenant", "acme", "--dataset", "trips"]);
    assert_eq!(gone.status.code(), Some(1));
    assert!(text(&gone.stderr).contains("no tenant `acme`"), "{}", text(&gone.stderr));

    std::fs::remove_dir_all(dir.path().join("data")).unwrap();
    let out = kanon_vault_cmd(&dir, &["restore", "--from", backup.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let export = kanon_vault_cmd(&dir, &["export", "--tenant", "acme", "--dataset", "trips"]);
    assert_eq!(text(&export.stdout), trips_csv(), "restored byte for byte");

    // No key: a clear refusal, nothing created. A development key warns.
    let data = dir.path().join("elsewhere");
    let out = kanon(&dir, &["datasets", "--data-dir", data.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("no key-encryption key: give --key-file"), "{}", text(&out.stderr));
    assert!(!data.exists());
    let out = kanon(&dir, &["datasets", "--data-dir", data.to_str().unwrap(), "--dev-key"]);
    assert!(out.status.success() && text(&out.stderr).contains("warning: generated a DEVELOPMENT key"));
    let out = kanon(&dir, &["datasets", "--data-dir", data.to_str().unwrap(), "--dev-key"]);
    assert!(out.status.success() && out.stderr.is_empty(), "the key is generated once");
}

#[test]
fn bad_ingest_input_is_named_and_stores_nothing() {
    let dir = Dir::new();
    let cases: [(&str, &str, &str); 6] = [
        ("ragged.csv", "driver_id,km\nD1,1\nD2,2,3\n", "ragged.csv, row 2 (line 3): the row has 3 fields"),
        ("empty.csv", "", "the file is empty"),
        ("nested.jsonl", "{\"driver_id\":\"D1\",\"km\":[1]}\n", "row 1 (line 1), column `km`: nested values"),
        ("trips.parquet", "PAR1", "trips.parquet: not a readable Parquet file"),
        ("trips.arrow", "ARROW1\0\0PAR1", "trips.arrow: not a readable Arrow IPC file or stream"),
        ("trips.xlsx", "PK", "unknown file type"),
    ];
    for (name, contents, expected) in cases {
        let file = dir.write(name, contents);
        let out = kanon_vault_cmd(
            &dir,
            &[
                "ingest",
                "--tenant",
                "acme",
                "--dataset",
                "trips",
                file.to_str().unwrap(),
                "--entity",
                "driver_id",
            ],
        );
        assert_eq!(out.status.code(), Some(1), "{name}");
        assert!(text(&out.stderr).contains(expected), "{name}: {}", text(&out.stderr));
    }
    let out = kanon_vault_cmd(&dir, &["datasets"]);
    assert!(out.status.success() && out.stdout.is_empty(), "no tenant was created: {}", text(&out.stdout));
}

/// Random numbers without a dependency: std's randomly keyed hasher.
fn random_below(bound: u64) -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(std::time::SystemTime::now()) % bound
}

/// Tests that time a process and then kill it at a moment inside that time
/// take this lock, as do the CPU-heavy daemon tests: on two cores, a daemon
/// ingesting millions of rows next door skews the timing, and the kills then
/// miss.
static TIMED_PROCESSES: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn timed_processes() -> std::sync::MutexGuard<'static, ()> {
    TIMED_PROCESSES.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[test]
fn sigkill_during_ingest_or_read_leaves_each_version_whole_or_absent() {
    use std::os::unix::process::ExitStatusExt;
    let _alone = timed_processes();
    let dir = Dir::new();
    let mut csv = String::from("driver_id,region,km,note\n");
    for i in 0..600_000 {
        csv.push_str(&format!("D{},r{},{}.25,trip note {}\n", i % 5000, i % 9, i % 700, i % 13));
    }
    let file = dir.write("trips.csv", &csv);
    let file = file.to_str().unwrap();
    let flags = vault_flags(&dir);
    let spawn = |args: &[&str]| {
        let mut all: Vec<&str> = args.to_vec();
        all.extend(flags.iter().map(String::as_str));
        Command::new(env!("CARGO_BIN_EXE_kanon"))
            .args(&all)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap()
    };
    let ingest = ["ingest", "--tenant", "acme", "--dataset", "trips", file, "--entity", "driver_id"];
    let export = ["export", "--tenant", "acme", "--dataset", "trips", "--out", "/dev/null"];
    // A whole ingest and a whole export, timed, so the kills land anywhere
    // inside one.
    let timed = |args: &[&str]| {
        let start = std::time::Instant::now();
        assert!(spawn(args).wait().unwrap().success());
        start.elapsed().as_millis() as u64 + 1
    };
    let whole_ingest = timed(&ingest);
    let whole_export = timed(&export);
    let key = std::fs::read(dir.path().join("kek.hex")).unwrap();
    let key = kanon_vault::KeyEncryptionKey::from_key_file("kek.hex", &key).unwrap();
    let reference = {
        let vault = kanon_vault::Vault::open(&dir.path().join("data"), key.clone()).unwrap();
        vault.dataset("acme", "trips", None).unwrap().info().content_hash
    };
    let mut checked = 0;
    let (mut interrupted, mut rounds) = (0, 0);
    for round in 0..24 {
        let reading = round % 3 == 2 && round > 0;
        let (mut child, whole) =
            if reading { (spawn(&export), whole_export) } else { (spawn(&ingest), whole_ingest) };
        std::thread::sleep(std::time::Duration::from_millis(random_below(whole)));
        let _ = child.kill(); // SIGKILL
        let status = child.wait().unwrap();
        if status.signal() == Some(9) {
            interrupted += 1;
        }
        rounds += 1;

        // The store opens cleanly, and every version is the whole input:
        // each new one read back in full, the others by their content hash.
        let vault =
            kanon_vault::Vault::open(&dir.path().join("data"), key.clone()).expect("opens after a kill");
        let versions = vault.versions("acme", "trips").unwrap();
        for info in &versions {
            assert_eq!(info.content_hash, reference, "round {round}: version {}", info.version);
            if info.version > checked {
                let version = vault.dataset("acme", "trips", Some(info.version)).unwrap();
                version.verify().unwrap();
                let mut out = Vec::new();
                kanon_vault::export_csv(&version, &mut out).unwrap();
                assert!(out == csv.as_bytes(), "round {round}: version {} is not the input", info.version);
                checked = info.version;
            }
        }
        // Nothing half-written survives the reopen: one write directory per version.
        let write_dirs: usize = std::fs::read_dir(dir.path().join("data/chunks"))
            .unwrap()
            .map(|tenant| std::fs::read_dir(tenant.unwrap().path()).unwrap().count())
            .sum();
        assert_eq!(write_dirs, versions.len(), "round {round}");
    }
    assert_eq!(rounds, 24);
    eprintln!("{interrupted} of 24 processes killed mid-way");
    assert!(interrupted >= 12, "only {interrupted} of 24 processes were killed mid-way");
}

/// A component that passes upload's static checks (no import, both plugin
/// exports, every function under the size cap) but is built to be costly to
/// compile: `functions` bodies of `ops` multiplications over 256 locals that
/// all start from the argument and all feed the result, so none folds away.
fn costly_component(functions: u32, ops: u32) -> Vec<u8> {
    use wasm_encoder::{
        CodeSection, ComponentBuilder, ComponentExportKind, ExportKind, ExportSection, Function,
        FunctionSection, Module, PrimitiveValType, TypeSection, ValType,
    };
    let mut module = Module::new();
    let mut types = TypeSection::new();
    types.ty().function([ValType::I64], [ValType::I64]);
    module.section(&types);
    let mut declared = FunctionSection::new();
    (0..functions).for_each(|_| {
        declared.function(0);
    });
    module.section(&declared);
    let mut exports = ExportSection::new();
    exports.export("f", ExportKind::Func, 0);
    module.section(&exports);
    let mut code = CodeSection::new();
    for _ in 0..functions {
        // Local 0 is the argument; 1..=256 are the working set.
        let mut body = Function::new([(256, ValType::I64)]);
        for local in 1..=256 {
            body.instructions().local_get(0).i64_const(i64::from(local)).i64_add().local_set(local);
        }
        for i in 0..ops {
            body.instructions()
                .local_get(1 + i % 256)
                .local_get(1 + (i * 7 + 3) % 256)
                .i64_mul()
                .local_set(1 + (i * 13 + 5) % 256);
        }
        body.instructions().i64_const(0);
        for local in 1..=256 {
            body.instructions().local_get(local).i64_add();
        }
        body.instructions().end();
        code.function(&body);
    }
    module.section(&code);
    let mut component = ComponentBuilder::default();
    let module = component.core_module(None, &module);
    let instance = component.core_instantiate(None, module, []);
    let f = component.core_alias_export(None, instance, "f", ExportKind::Func);
    let (ty, encoder) = component.ty(None);
    encoder.function().params([("x", PrimitiveValType::S64)]).result(Some(PrimitiveValType::S64.into()));
    let lifted = component.lift_func(None, f, ty, []);
    component.export("manifest", ComponentExportKind::Func, lifted, None);
    component.export("run", ComponentExportKind::Func, lifted, None);
    component.finish()
}

#[test]
fn a_component_costly_to_compile_is_refused_within_the_compile_limits() {
    let dir = Dir::new();
    let costly = dir.write("costly.wasm", costly_component(2, 110_000));
    let costly = costly.to_str().unwrap();
    for limits in [["--compile-timeout", "1"], ["--compile-memory", "128"]] {
        let start = std::time::Instant::now();
        let out = kanon(&dir, &[&["manifest", costly], &limits[..]].concat());
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{limits:?}: {stderr}");
        assert!(stderr.contains("too costly to compile"), "{limits:?}: {stderr}");
        assert!(start.elapsed().as_secs() < 60, "{limits:?}: {:?}", start.elapsed());
    }
    // Nothing of a refused upload is cached.
    let cached = std::fs::read_dir(dir.path().join("cache")).map_or(0, |d| d.count());
    assert_eq!(cached, 0);
    // A plugin compiles in the same worker under the same memory limit (its
    // time is given room: on a loaded machine it may take more than 1 s).
    let (dir, plugin) = setup();
    let out = kanon(&dir, &["manifest", &plugin, "--compile-timeout", "60", "--compile-memory", "128"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
}

/// `kanon serve` as a process: what survives a SIGKILL and what a SIGTERM waits for.
mod serve {
    use std::path::PathBuf;
    use std::process::Command;
    use std::time::{Duration, Instant};

    use kanon_client::types::{ApprovedDataset, AuditExport, Job, JobState, NewApproval, SubmitRequest};
    use kanon_client::{Client, NewTenant, NewToken, UploadArgs};
    use kanon_daemon::Role;
    use kanon_gate::PolicyLayer;
    use serde_json::Value;

    use super::{Dir, text};

    /// Trips in the daemon tests' dataset: enough that one emissions job runs
    /// for a few hundred milliseconds, so a signal can land while one runs.
    const DAEMON_TRIPS: usize = if cfg!(debug_assertions) { 300_000 } else { 3_000_000 };

    /// `kanon serve --dev-key` over `dir`'s data directory, on a free loopback port.
    struct Served {
        child: std::process::Child,
        /// Held open until the end, so the daemon never writes into a closed pipe.
        stdout: std::io::BufReader<std::process::ChildStdout>,
        base: String,
        log: PathBuf,
    }

    impl Served {
        /// Start it and wait until `/health` answers. The operator token, if this
        /// start printed one (only the first start of a data directory does).
        fn start(dir: &Dir, run: &str) -> (Self, Option<String>) {
            Self::start_with(dir, run, "", None)
        }

        /// The same with `config` as its settings file, and at most
        /// `open_files` file descriptors (`ulimit -n`) if given.
        fn start_with(dir: &Dir, run: &str, config: &str, open_files: Option<u32>) -> (Self, Option<String>) {
            use std::io::BufRead;
            // A port the OS just handed out and nobody holds now.
            let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
            let log = dir.path().join(format!("serve-{run}.log"));
            let first = !dir.path().join("data").exists();
            let settings = dir.write(&format!("serve-{run}.toml"), config);
            let mut command = match open_files {
                Some(limit) => {
                    let mut command = Command::new("sh");
                    let script = format!("ulimit -n {limit} && exec \"$0\" \"$@\"");
                    command.args(["-c", &script, env!("CARGO_BIN_EXE_kanon")]);
                    command
                }
                None => Command::new(env!("CARGO_BIN_EXE_kanon")),
            };
            let mut child = command
                .args(["serve", "--dev-key", "--config"])
                .arg(&settings)
                .env("KANON_DATA_DIR", dir.path().join("data"))
                .env("KANON_LISTEN", format!("127.0.0.1:{port}"))
                .env("KANON_CACHE_DIR", dir.path().join("cache"))
                .env_remove("KANON_CONFIG")
                .env_remove("KANON_KEY")
                .env_remove("KANON_KEY_FILE")
                .stdout(std::process::Stdio::piped())
                .stderr(std::fs::File::create(&log).unwrap())
                .spawn()
                .unwrap();
            let stdout = std::io::BufReader::new(child.stdout.take().unwrap());
            let mut served = Self { child, stdout, base: format!("http://127.0.0.1:{port}"), log };
            let token = first.then(|| {
                let mut line = String::new();
                served.stdout.read_line(&mut line).unwrap();
                let Some(token) = line.trim().strip_prefix("operator token (shown once; keep it safe): ")
                else {
                    panic!("no operator token on stdout: {line:?}; stderr: {}", served.stderr())
                };
                assert!(token.starts_with("kanon_"), "{token}");
                token.to_owned()
            });
            let deadline = Instant::now() + Duration::from_secs(30);
            while !served.client(None).raw("GET", "/health", None).is_ok_and(|r| r.status == 200) {
                if let Some(status) = served.child.try_wait().unwrap() {
                    panic!("kanon serve exited with {status}: {}", served.stderr());
                }
                assert!(Instant::now() < deadline, "kanon serve did not answer: {}", served.stderr());
                std::thread::sleep(Duration::from_millis(20));
            }
            (served, token)
        }

        fn client(&self, token: Option<&str>) -> Client {
            Client::new(&self.base, token.map(str::to_owned))
        }

        fn stderr(&self) -> String {
            text(&std::fs::read(&self.log).unwrap_or_default())
        }

        /// SIGKILL, then reap it.
        fn kill(mut self) {
            self.child.kill().unwrap();
            let status = self.child.wait().unwrap();
            assert!(!status.success(), "{status}");
        }
    }

    impl Drop for Served {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    /// `rows` trips by 2 000 drivers, each keeping one vehicle class and region.
    fn fleet_csv(rows: usize) -> Vec<u8> {
        use std::io::Write;
        let classes = emissions_benchmark::kernel::VEHICLE_CLASSES;
        let regions = emissions_benchmark::kernel::REGIONS;
        let mut csv = Vec::with_capacity(rows * 40);
        csv.extend_from_slice(b"driver_id,vehicle_class,region,distance_km,load_tonnes,fuel_litres\n");
        for trip in 0..rows {
            let driver = trip * 7919 % 2000;
            let km = 40 + trip % 300;
            writeln!(
                csv,
                "D{driver:04},{},{},{km}.5,{}.25,{}.5",
                classes[driver % classes.len()],
                regions[driver / classes.len() % regions.len()],
                1 + driver % 20,
                km / 3,
            )
            .unwrap();
        }
        csv
    }

    /// The operator's, the tenant admin's and the analyst's tokens.
    struct Tokens {
        operator: String,
        admin: String,
        analyst: String,
    }

    /// A tenant `acme` with the trips, an analyst `ana`, the bundled emissions
    /// plugin and an approval: the tokens and the body of a job submission.
    /// A token of `role` held by `name`, issued by `client`.
    fn token(client: &Client, role: Role, name: &str, tenant: Option<&str>) -> String {
        let new = NewToken { role, name: name.into(), tenant: tenant.map(str::to_owned), ttl_secs: None };
        client.issue_token(&new).unwrap().token
    }

    fn daemon_setup(served: &Served, operator: String) -> (Tokens, SubmitRequest) {
        let client = served.client(Some(&operator));
        let tokens = Tokens {
            admin: tenant_admin(&client, "acme"),
            analyst: token(&client, Role::Analyst, "ana", None),
            operator,
        };
        let (admin, analyst) = (served.client(Some(&tokens.admin)), served.client(Some(&tokens.analyst)));
        let csv =
            UploadArgs { format: "csv".into(), entity: Some("driver_id".into()), ..UploadArgs::default() };
        let stored =
            admin.ingest("acme", "trips", &csv, std::io::Cursor::new(fleet_csv(DAEMON_TRIPS))).unwrap();
        assert_eq!(stored.rows, DAEMON_TRIPS as u64, "{stored:?}");
        let plugin = analyst.upload_plugin(kanon_bundled::EMISSIONS_BENCHMARK).unwrap();
        let input = &plugin.manifest.inputs[0];
        let columns = input.columns.iter().map(|c| c.name.clone()).collect();
        let approval = admin
            .grant_approval(
                "acme",
                &NewApproval {
                    plugin: plugin.hash.clone(),
                    analyst: "ana".into(),
                    datasets: [(input.name.clone(), ApprovedDataset { dataset: "trips".into(), columns })]
                        .into(),
                    outputs: plugin.manifest.outputs.iter().map(|t| t.name.clone()).collect(),
                    params: None,
                    params_schema: None,
                    ttl_secs: 3600,
                    policy: None,
                },
            )
            .unwrap();
        let submit = SubmitRequest {
            tenant: "acme".into(),
            plugin: plugin.hash,
            approval: approval.id,
            datasets: [("trips".to_owned(), "trips".to_owned())].into(),
            params: None,
            policy: None,
        };
        (tokens, submit)
    }

    /// Create `tenant` (as the operator `client`) and enrol its admin
    /// `<tenant>-admin` with the one-time code: the admin's token.
    fn tenant_admin(client: &Client, tenant: &str) -> String {
        let created =
            client.create_tenant(&NewTenant { name: tenant.into(), enrolment_ttl_secs: None }).unwrap();
        client.enrol(&created.enrolment.code, &format!("{tenant}-admin"), None).unwrap().1
    }

    /// `count` jobs, each a different request (a stricter k each), so none is
    /// answered from another's stored release.
    fn submit_jobs(analyst: &Client, submit: &SubmitRequest, count: usize) -> Vec<String> {
        (0..count)
            .map(|i| {
                let policy = PolicyLayer { min_entities: Some(10 + i as u32), ..PolicyLayer::default() };
                let job =
                    analyst.submit_job(&SubmitRequest { policy: Some(policy), ..submit.clone() }).unwrap();
                assert_eq!(job.state, JobState::Queued);
                job.id
            })
            .collect()
    }

    fn jobs_of(analyst: &Client) -> Vec<Job> {
        analyst.list_jobs().unwrap()
    }

    fn now_ms() -> u64 {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64
    }

    /// How long a job runs here: the shortest of the first `count` to succeed,
    /// from the owner log's exact figures (the analyst sees whole seconds).
    fn job_duration_ms(analyst: &Client, admin: &Client, count: usize) -> u64 {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let done: Vec<u64> = jobs_of(analyst)
                .iter()
                .filter(|j| j.state == JobState::Succeeded)
                .map(|j| admin.job_log(&j.id).unwrap().figures.unwrap().run_ms)
                .collect();
            if done.len() >= count {
                return done.into_iter().min().unwrap();
            }
            assert!(Instant::now() < deadline, "{count} jobs did not succeed: {:?}", jobs_of(analyst));
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Poll until a job is seen running that was queued at the poll before,
    /// less than a third of `duration_ms` earlier: it is sure to be running
    /// for a while yet (stamps are whole seconds, so the polls time it).
    /// That job, and every job as seen then.
    fn catch_a_running_job(analyst: &Client, duration_ms: u64) -> (Job, Vec<Job>) {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut queued_at: std::collections::HashMap<String, Instant> = Default::default();
        loop {
            let polled = Instant::now();
            let jobs = jobs_of(analyst);
            let fresh = jobs.iter().find(|j| {
                j.state == JobState::Running
                    && queued_at
                        .get(&j.id)
                        .is_some_and(|&at| at.elapsed().as_millis() < u128::from(duration_ms / 3))
            });
            if let Some(job) = fresh {
                return (job.clone(), jobs);
            }
            queued_at =
                jobs.iter().filter(|j| j.state == JobState::Queued).map(|j| (j.id.clone(), polled)).collect();
            assert!(Instant::now() < deadline, "no job was caught running: {jobs:?}");
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Poll until no job is queued or running.
    fn wait_all_final(analyst: &Client) -> Vec<Job> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let jobs = jobs_of(analyst);
            if jobs.iter().all(|j| j.state.is_final()) {
                return jobs;
            }
            assert!(Instant::now() < deadline, "jobs did not finish: {jobs:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Every succeeded job has its results; any other answers 409.
    fn check_results(analyst: &Client, jobs: &[Job]) {
        for job in jobs {
            let reply = analyst.raw("GET", &format!("/v1/jobs/{}/results", job.id), None).unwrap();
            if job.state == JobState::Succeeded {
                assert_eq!(reply.status, 200, "{}: {}", job.id, reply.text());
                let release: Value = reply.json().unwrap();
                let tables = release["tables"].as_array().unwrap();
                assert!(
                    !tables.is_empty() && !tables[0]["cells"].as_array().unwrap().is_empty(),
                    "{release}"
                );
            } else {
                assert_eq!(reply.status, 409, "{}: {}", job.id, reply.text());
            }
        }
    }

    /// The tenant's audit chain verifies, and holds one release per succeeded
    /// job and one finish per job.
    fn check_audit(admin: &Client, jobs: &[Job]) -> AuditExport {
        let export = admin.tenant_audit("acme").unwrap();
        assert_eq!(
            kanon_daemon::verify("acme", &export.entries, &export.head),
            Ok(export.entries.len() as u64),
            "the audit chain is broken"
        );
        for job in jobs {
            let of_job = |action: &str| {
                export
                    .entries
                    .iter()
                    .filter(|e| e.action == action && e.detail["job"] == job.id.as_str())
                    .count()
            };
            assert_eq!(of_job("job.finish"), 1, "{}", job.id);
            let released = usize::from(job.state == JobState::Succeeded);
            assert_eq!(of_job("release"), released, "{}", job.id);
        }
        export
    }

    #[test]
    fn after_a_sigkill_queued_jobs_run_and_the_running_one_is_marked_interrupted() {
        let _alone = super::timed_processes();
        let dir = Dir::new();
        let (served, operator) = Served::start(&dir, "first");
        let (tokens, submit) =
            daemon_setup(&served, operator.expect("the first start prints the operator token"));
        let analyst = served.client(Some(&tokens.analyst));
        let submitted = submit_jobs(&analyst, &submit, 7);

        // Two jobs succeed first, to learn how long one takes here; then the
        // kill lands early in another's run.
        let duration = job_duration_ms(&analyst, &served.client(Some(&tokens.admin)), 2);
        let (running, before) = catch_a_running_job(&analyst, duration);
        served.kill();
        let killed_ms = now_ms();
        let queued: Vec<&Job> = before.iter().filter(|j| j.state == JobState::Queued).collect();
        assert!(queued.len() >= 2, "{before:?}");

        let (served, token) = Served::start(&dir, "second");
        assert_eq!(token, None, "the operator token is shown once");
        // The first start's tokens still work.
        let whoami = served.client(Some(&tokens.operator)).whoami().unwrap();
        assert_eq!(whoami.role, Role::Operator, "{whoami:?}");
        let analyst = served.client(Some(&tokens.analyst));
        let admin = served.client(Some(&tokens.admin));
        let after = wait_all_final(&analyst);
        eprintln!(
            "one job ran {duration} ms; killed {} ms into {}",
            killed_ms - running.started_ms.unwrap(),
            running.id
        );

        let ids: Vec<&str> = after.iter().map(|j| j.id.as_str()).collect();
        assert_eq!(ids, submitted, "every job is still there, in order");
        let state = |id: &str| after.iter().find(|j| j.id == id).unwrap();
        let interrupted = state(&running.id);
        assert_eq!(
            (interrupted.state, interrupted.failure.as_deref()),
            (JobState::Failed, Some("interrupted")),
            "the job running at the kill: {interrupted:?}"
        );
        // Stamps are whole seconds, rounded down.
        let killed_second = killed_ms / 1000 * 1000;
        assert!(
            interrupted.stats.is_none() && interrupted.finished_ms.unwrap() >= killed_second,
            "{interrupted:?}"
        );
        for job in &after {
            if job.id != running.id {
                assert_eq!(job.state, JobState::Succeeded, "{job:?}");
                assert_eq!(job.versions.get("trips"), Some(&1), "{job:?}");
            }
        }
        // Those queued at the kill ran after the restart.
        for job in &queued {
            assert!(state(&job.id).started_ms.unwrap() >= killed_second, "{:?}", state(&job.id));
        }
        check_results(&analyst, &after);
        let audit = check_audit(&admin, &after);
        let recovered =
            audit.entries.iter().find(|e| e.action == "job.finish" && e.detail["job"] == running.id.as_str());
        assert_eq!(recovered.unwrap().detail["failure"], "interrupted");
        let log = admin.raw("GET", &format!("/v1/jobs/{}/log", running.id), None).unwrap();
        assert_eq!(log.status, 404, "an interrupted run leaves no owner log: {}", log.text());
    }

    /// `kanon budget`: what a DP job charged, as the tenant admin and the
    /// analyst see it, and the refusal of an analyst with no approval.
    #[test]
    fn kanon_budget_shows_what_a_dp_job_charged_and_what_remains() {
        let dir = Dir::new();
        let (served, operator) = Served::start(&dir, "first");
        let (tokens, submit) =
            daemon_setup(&served, operator.expect("the first start prints the operator token"));
        let (admin, analyst) = (served.client(Some(&tokens.admin)), served.client(Some(&tokens.analyst)));
        let policy = PolicyLayer::from_toml("t.toml", "privacy = \"dp\"\n[dp]\nbudget_rho = 0.1\n").unwrap();
        admin.set_tenant_policy("acme", &policy).unwrap();
        let job = analyst.submit_job(&submit).unwrap();
        wait_all_final(&analyst);
        let budget = |token: &str, json: bool| {
            let mut args = vec!["budget", "acme"];
            if json {
                args.push("--json");
            }
            let out = Command::new(env!("CARGO_BIN_EXE_kanon"))
                .args(&args)
                .env("KANON_URL", &served.base)
                .env("KANON_TOKEN", token)
                .env_remove("KANON_PROFILE")
                .output()
                .unwrap();
            (out.status.code(), text(&out.stdout), text(&out.stderr))
        };
        let (code, out, err) = budget(&tokens.admin, false);
        assert_eq!(code, Some(0), "{err}");
        assert!(
            out.contains("tenant `acme`: ρ = 0.0757 of 0.1 left in its 30-day window (what is left is ε ≈ "),
            "{out}"
        );
        assert!(out.contains("its policy requires differential privacy"), "{out}");
        let row = out.lines().find(|l| l.starts_with(&job.id)).unwrap_or_else(|| panic!("{out}"));
        let cells: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(cells[1..4], ["ana", "0.0243", "released"], "{row}");
        let (code, json, err) = budget(&tokens.analyst, true);
        assert_eq!(code, Some(0), "{err}");
        let seen: Value = serde_json::from_str(&json).unwrap();
        assert_eq!(
            (seen["remaining_nanos"].as_u64(), seen["charges"][0]["by"].as_str()),
            (Some(75_700_000), Some("ana"))
        );
        let stranger = token(&served.client(Some(&tokens.operator)), Role::Analyst, "eve", None);
        let (code, _, err) = budget(&stranger, false);
        assert_eq!(code, Some(4), "refused as for a tenant that does not exist: {err}");
        assert!(err.contains("tenant `acme`"), "{err}");
    }

    #[test]
    fn sigterm_lets_the_running_job_finish_and_exits_0() {
        let _alone = super::timed_processes();
        let dir = Dir::new();
        let (mut served, operator) = Served::start(&dir, "first");
        let (tokens, submit) =
            daemon_setup(&served, operator.expect("the first start prints the operator token"));
        let analyst = served.client(Some(&tokens.analyst));
        let submitted = submit_jobs(&analyst, &submit, 5);
        let duration = job_duration_ms(&analyst, &served.client(Some(&tokens.admin)), 2);
        let (running, _) = catch_a_running_job(&analyst, duration);
        let term_ms = now_ms();
        let kill = Command::new("kill").args(["-TERM", &served.child.id().to_string()]).status().unwrap();
        assert!(kill.success());
        let status = served.child.wait().unwrap();
        let exit_ms = now_ms();
        assert!(status.success(), "{status}: {}", served.stderr());
        drop(served);

        let (served, _) = Served::start(&dir, "second");
        let analyst = served.client(Some(&tokens.analyst));
        let after = wait_all_final(&analyst);
        let ids: Vec<&str> = after.iter().map(|j| j.id.as_str()).collect();
        assert_eq!(ids, submitted);
        assert!(after.iter().all(|j| j.state == JobState::Succeeded), "{after:?}");
        // The job running at SIGTERM finished after the signal and before the
        // exit, which came when it finished, not at the 30 s grace deadline.
        // (Stamps are whole seconds, rounded down.)
        let finished = after.iter().find(|j| j.id == running.id).unwrap().finished_ms.unwrap();
        assert!(
            term_ms / 1000 * 1000 <= finished && finished <= exit_ms && exit_ms - term_ms < 10_000,
            "signal {term_ms}, finished {finished}, exit {exit_ms}"
        );
        check_results(&analyst, &after);
        check_audit(&served.client(Some(&tokens.admin)), &after);
    }

    /// The operator creates a tenant and gets a one-time code, never a
    /// token; the tenant's admin redeems it with `kanon enrol`, which saves
    /// its profile.
    #[test]
    fn tenants_create_prints_a_one_time_code_and_enrol_saves_the_admins_profile() {
        let _timed = super::timed_processes();
        let dir = Dir::new();
        let (served, operator) = Served::start(&dir, "enrol");
        let operator = operator.expect("the first start prints the operator token");
        let config = dir.path().join("config");
        let cli = |args: &[&str], stdin: &str| {
            use std::io::Write;
            let mut child = Command::new(env!("CARGO_BIN_EXE_kanon"))
                .args(args)
                .env("XDG_CONFIG_HOME", &config)
                .env_remove("KANON_PROFILE")
                .env_remove("KANON_TOKEN")
                .env_remove("KANON_URL")
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
            let out = child.wait_with_output().unwrap();
            (out.status.code(), text(&out.stdout), text(&out.stderr))
        };
        let url = served.base.as_str();
        let as_operator = |args: &[&str]| {
            let mut all = args.to_vec();
            all.extend(["--url", url, "--token", operator.as_str()]);
            cli(&all, "")
        };
        let (code, out, err) = as_operator(&["tenants", "create", "acme"]);
        assert_eq!(code, Some(0), "{err}");
        let enrolment = out.trim().to_owned();
        assert!(enrolment.starts_with("kanon_enrol_"), "{out}");
        assert!(err.contains("kanon enrol"), "{err}");
        // The operator cannot issue the tenant's admin a token instead.
        let (code, _, err) = as_operator(&[
            "tokens",
            "issue",
            "--role",
            "tenant-admin",
            "--name",
            "acme-admin",
            "--tenant",
            "acme",
        ]);
        assert_eq!(code, Some(4), "{err}");
        assert!(err.contains("does not issue tenant-admin tokens"), "{err}");

        let (code, out, err) = cli(&["enrol", "acme", "--url", url, "--name", "acme-admin"], &enrolment);
        assert_eq!(code, Some(0), "{err}");
        assert!(out.contains("profile `acme`: tenant-admin acme-admin of `acme`"), "{out}");
        let (code, out, err) = cli(&["tokens", "list", "--profile", "acme"], "");
        assert_eq!(code, Some(0), "{err}");
        assert!(out.contains("acme-admin") && out.contains("live"), "{out}");
        // Once only.
        let (code, _, err) = cli(&["enrol", "again", "--url", url, "--name", "someone"], &enrolment);
        assert_eq!(code, Some(4), "{err}");
        assert!(err.contains("not valid"), "{err}");

        // A fresh code for a lost admin: printed, and on the tenant's log.
        let (code, out, err) = as_operator(&["tenants", "enrolment", "acme", "--ttl", "1d"]);
        assert_eq!(code, Some(0), "{err}");
        assert!(out.trim().starts_with("kanon_enrol_") && out.trim() != enrolment, "{out}");
        let (code, out, err) = cli(&["audit", "show", "--tenant", "acme", "--profile", "acme"], "");
        assert_eq!(code, Some(0), "{err}");
        let issued = out.lines().filter(|l| l.contains("enrolment.issue")).count();
        assert_eq!(issued, 2, "{out}");
        assert!(out.contains("enrolment.redeem"), "{out}");
    }

    /// The vendor's and the tenants' side of a benchmark, through `kanon
    /// benchmarks` against `kanon serve`.
    #[test]
    fn the_benchmark_commands_take_vendor_and_tenants_through_two_versions() {
        let _timed = super::timed_processes();
        let dir = Dir::new();
        let (served, operator) = Served::start(&dir, "benchmarks");
        let client = served.client(operator.as_deref());
        let token = |role: Role, name: &str, tenant: Option<&str>| token(&client, role, name, tenant);
        let vendor = token(Role::Vendor, "benchco", None);
        let cli = |token: &str, args: &[&str]| {
            let mut all = args.to_vec();
            all.extend(["--url", served.base.as_str(), "--token", token]);
            let out = Command::new(env!("CARGO_BIN_EXE_kanon"))
                .args(&all)
                .env("KANON_CACHE_DIR", dir.path().join("cache"))
                .env_remove("KANON_PROFILE")
                .output()
                .unwrap();
            (out.status.code(), text(&out.stdout), text(&out.stderr))
        };
        let admins: Vec<String> = (0..6)
            .map(|i| {
                let tenant = format!("carrier-{i}");
                let admin = tenant_admin(&client, &tenant);
                let dataset = if i == 5 { "ritten" } else { "trips" };
                let csv = UploadArgs {
                    format: "csv".into(),
                    entity: Some("driver_id".into()),
                    ..UploadArgs::default()
                };
                served
                    .client(Some(&admin))
                    .ingest(&tenant, dataset, &csv, std::io::Cursor::new(fleet_csv(20_000)))
                    .unwrap();
                admin
            })
            .collect();

        let wasm = dir.write("emissions.wasm", kanon_bundled::EMISSIONS_BENCHMARK);
        let (code, out, err) = cli(&vendor, &["plugins", "upload", wasm.to_str().unwrap(), "--json"]);
        assert_eq!(code, Some(0), "{err}");
        let hash = serde_json::from_str::<Value>(&out).unwrap()["hash"].as_str().unwrap().to_owned();
        let (code, _, err) =
            cli(&vendor, &["benchmarks", "publish", "co2", "--plugin", &hash, "--every", "7d"]);
        assert_eq!(code, Some(0), "{err}");
        let (_, out, _) = cli(&admins[0], &["benchmarks", "show", "co2"]);
        assert!(out.contains("every 168h") && out.contains("reads dataset `trips`"), "{out}");
        assert!(out.lines().any(|l| l.starts_with("driver_id") && l.contains("pseudonym")), "{out}");
        for (i, admin) in admins.iter().enumerate() {
            let tenant = format!("carrier-{i}");
            let mut args = vec!["benchmarks", "join", "co2", "--tenant", &tenant];
            if i == 5 {
                args.extend(["--dataset", "trips=ritten"]);
            }
            let (code, out, err) = cli(admin, &args);
            assert_eq!(code, Some(0), "{err}");
            assert!(out.contains("trips="), "{out}");
        }

        let (code, out, err) = cli(&vendor, &["benchmarks", "run", "co2", "--wait"]);
        assert_eq!(code, Some(0), "{err}");
        assert!(
            out.contains("co2 version 1 (6 tenants)")
                && out.contains("co2_intensity: 0 of 30 cells suppressed"),
            "{out}"
        );
        let (_, csv, _) = cli(&vendor, &["benchmarks", "table", "co2", "--format", "csv"]);
        assert!(csv.starts_with("table,vehicle_class,region,count,"), "{csv}");
        assert!(!csv.contains("carrier"), "no tenant named");
        let parquet = dir.path().join("co2.parquet");
        let (code, _, err) = cli(
            &vendor,
            &["benchmarks", "table", "co2", "--format", "parquet", "--out", parquet.to_str().unwrap()],
        );
        assert_eq!(code, Some(0), "{err}");
        assert!(std::fs::read(&parquet).unwrap().starts_with(b"PAR1"));
        let (code, out, err) = cli(&admins[0], &["benchmarks", "position", "co2", "--tenant", "carrier-0"]);
        assert_eq!(code, Some(0), "{err}");
        assert!(out.contains("carrier-0 in co2 version 1:") && out.contains("peers count"), "{out}");
        let (code, _, err) = cli(&admins[1], &["benchmarks", "position", "co2", "--tenant", "carrier-0"]);
        assert_eq!(code, Some(4), "another tenant's position is refused: {err}");

        let (code, _, err) = cli(&admins[5], &["benchmarks", "leave", "co2", "--tenant", "carrier-5"]);
        assert_eq!(code, Some(0), "{err}");
        let (code, out, err) = cli(&vendor, &["benchmarks", "run", "co2", "--wait"]);
        assert_eq!(code, Some(0), "{err}");
        assert!(
            out.contains("co2 version 2 (5 tenants)") && out.contains("30 held") && out.contains("from v1"),
            "{out}"
        );
        let (_, out, _) = cli(&vendor, &["benchmarks", "versions", "co2", "--json"]);
        let versions: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(versions[1]["held_cells"], 30, "{versions}");

        // One tenant requires differential privacy: the next version is
        // noised, every tenant it reads pays, and the same run again is the
        // same version, free.
        let (_, out, _) = cli(&vendor, &["budget", "--benchmark", "co2"]);
        assert!(out.contains("its tenants run under thresholds"), "{out}");
        let dp = PolicyLayer::from_toml("t.toml", "privacy = \"dp\"\n").unwrap();
        served.client(Some(&admins[0])).set_tenant_policy("carrier-0", &dp).unwrap();
        let (code, out, err) = cli(&vendor, &["budget", "--benchmark", "co2"]);
        assert_eq!(code, Some(0), "{err}");
        assert!(
            out.contains("a run charges ρ = 0.0243 to each tenant it reads")
                && out.contains("allows 20 more"),
            "{out}"
        );
        let (code, out, err) = cli(&vendor, &["benchmarks", "run", "co2", "--wait"]);
        assert_eq!(code, Some(0), "{err}");
        assert!(
            out.contains("co2 version 3 (5 tenants)") && out.contains("every cell released with noise"),
            "{out}"
        );
        let (code, out, err) = cli(&admins[0], &["benchmarks", "position", "co2", "--tenant", "carrier-0"]);
        assert_eq!(code, Some(0), "{err}");
        assert!(out.contains(" [") && out.contains("peers count"), "peers with their intervals: {out}");
        let (code, _, err) = cli(&vendor, &["benchmarks", "run", "co2", "--wait"]);
        assert_eq!(code, Some(0), "{err}");
        let (_, out, _) = cli(&vendor, &["benchmarks", "runs", "co2"]);
        let replayed = out.lines().filter(|l| l.contains("3 (replay)")).count();
        let charged = out.lines().filter(|l| l.contains(" 0.0243 ")).count();
        assert_eq!((replayed, charged), (1, 1), "{out}");
        let (_, out, _) = cli(&vendor, &["budget", "--benchmark", "co2"]);
        assert!(out.contains("allows 19 more"), "the replay charged nothing: {out}");
        let (code, out, err) = cli(&admins[1], &["budget", "carrier-1"]);
        assert_eq!(code, Some(0), "{err}");
        assert!(out.lines().any(|l| l.contains("benchco") && l.contains("0.0243 ")), "{out}");

        let (code, _, _) = cli(&vendor, &["benchmarks", "retire", "co2"]);
        assert_eq!(code, Some(0));
        let (code, _, err) = cli(&vendor, &["benchmarks", "run", "co2"]);
        assert_eq!(code, Some(4), "a retired benchmark runs no more: {err}");
    }

    /// Send `GET /health` on a fresh connection and read the answer's status
    /// line (`None`: refused, closed or silent for 30 s).
    fn health_status(base: &str) -> Option<String> {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(base.trim_start_matches("http://")).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        stream.write_all(b"GET /health HTTP/1.1\r\nhost: kanon\r\nconnection: close\r\n\r\n").ok()?;
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).ok()?;
        text(&answer).lines().next().map(str::to_owned)
    }

    /// Many connections that never finish their request heads, more than the
    /// daemon has file descriptors: `/health` still answers, because each
    /// such connection is dropped after `header_read_timeout_secs` and those
    /// past `max_connections` are turned away at once.
    #[test]
    fn a_flood_of_unfinished_request_heads_does_not_starve_health() {
        use std::io::Write;
        let _alone = super::timed_processes();
        let dir = Dir::new();
        let config = "[limits]\nmax_connections = 32\nheader_read_timeout_secs = 1\n";
        let (served, _) = Served::start_with(&dir, "flood", config, Some(128));
        let addr = served.base.trim_start_matches("http://").to_owned();
        let mut flood = Vec::new();
        for _ in 0..300 {
            let mut stream = std::net::TcpStream::connect(&addr).unwrap();
            let _ = stream.write_all(b"GET /health HTTP/1.1\r\nhost: kanon\r\nx-slow: ");
            flood.push(stream);
        }
        let started = Instant::now();
        let deadline = started + Duration::from_secs(30);
        loop {
            let status = health_status(&served.base);
            if status.as_deref() == Some("HTTP/1.1 200 OK") {
                break;
            }
            assert!(Instant::now() < deadline, "/health did not answer under the flood: {status:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
        eprintln!("/health answered {:?} into a flood of 300 unfinished heads", started.elapsed());
        drop(flood);
    }

    /// SIGTERM while an upload crawls in: the request gets
    /// `limits.shutdown_grace_secs`, then it is dropped and the daemon exits
    /// 0, long before the upload's own timeout (an hour).
    #[test]
    fn sigterm_does_not_wait_for_a_slow_upload() {
        use std::io::Write;
        let _alone = super::timed_processes();
        let dir = Dir::new();
        let (mut served, operator) =
            Served::start_with(&dir, "slow", "[limits]\nshutdown_grace_secs = 2\n", None);
        let operator = served.client(operator.as_deref());
        let token = tenant_admin(&operator, "acme");
        let mut upload = std::net::TcpStream::connect(served.base.trim_start_matches("http://")).unwrap();
        let head = format!(
            "PUT /v1/tenants/acme/datasets/trips?format=csv&entity=driver_id HTTP/1.1\r\nhost: kanon\r\n\
             authorization: Bearer {token}\r\ncontent-type: text/csv\r\ncontent-length: 100000000\r\n\r\n\
             driver_id,km\n"
        );
        upload.write_all(head.as_bytes()).unwrap();
        // The handler is receiving it once its file shows up in uploads/.
        let uploads = dir.path().join("data/uploads");
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::fs::read_dir(&uploads).map_or(true, |mut d| d.next().is_none()) {
            assert!(Instant::now() < deadline, "the upload never started: {}", served.stderr());
            std::thread::sleep(Duration::from_millis(20));
        }
        let term = Instant::now();
        let kill = Command::new("kill").args(["-TERM", &served.child.id().to_string()]).status().unwrap();
        assert!(kill.success());
        let status = loop {
            if let Some(status) = served.child.try_wait().unwrap() {
                break status;
            }
            assert!(
                term.elapsed() < Duration::from_secs(30),
                "SIGTERM waited for the upload: {}",
                served.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        eprintln!("kanon serve exited {:?} after SIGTERM with an upload in flight", term.elapsed());
        assert!(status.success(), "{status}: {}", served.stderr());
        drop(upload);
    }

    /// A first start that cannot bind its port creates no operator token
    /// (it could never show it); the next start that can prints one.
    #[test]
    fn a_first_start_that_cannot_listen_leaves_the_operator_token_to_the_next() {
        let dir = Dir::new();
        let serve = |listen: &str| {
            let mut command = Command::new(env!("CARGO_BIN_EXE_kanon"));
            command
                .args(["serve", "--dev-key"])
                .env("KANON_DATA_DIR", dir.path().join("data"))
                .env("KANON_LISTEN", listen)
                .env("KANON_CACHE_DIR", dir.path().join("cache"))
                .env_remove("KANON_CONFIG")
                .env_remove("KANON_KEY")
                .env_remove("KANON_KEY_FILE");
            command
        };
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let out = serve(&taken.local_addr().unwrap().to_string()).output().unwrap();
        assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
        assert!(text(&out.stderr).contains("cannot listen on"), "{}", text(&out.stderr));
        assert!(!text(&out.stdout).contains("kanon_"), "{}", text(&out.stdout));
        drop(taken);

        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut child = serve(&format!("127.0.0.1:{port}"))
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        // Read on a thread: a daemon that prints nothing keeps stdout open.
        let stdout = child.stdout.take().unwrap();
        let (sender, receiver) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            let mut stdout = std::io::BufReader::new(stdout);
            let mut line = String::new();
            let _ = stdout.read_line(&mut line);
            let _ = sender.send(line);
            // Keep the pipe open until the daemon is gone.
            let _ = std::io::copy(&mut stdout, &mut std::io::sink());
        });
        let line = receiver.recv_timeout(Duration::from_secs(30)).unwrap_or_default();
        let token =
            line.trim().strip_prefix("operator token (shown once; keep it safe): ").map(str::to_owned);
        let whoami = token
            .as_ref()
            .map(|token| Client::new(&format!("http://127.0.0.1:{port}"), Some(token.clone())).whoami());
        let _ = child.kill();
        let _ = child.wait();
        assert!(token.is_some(), "no operator token on stdout: {line:?}");
        assert_eq!(whoami.unwrap().unwrap().role, Role::Operator);
    }

    /// `kanon backups create` while the daemon serves, and `kanon backup` of
    /// a stopped one: each restores (`kanon restore`) into a directory that a
    /// daemon then serves with the same tenants, tokens and audit chains.
    #[test]
    fn backups_of_a_serving_and_of_a_stopped_daemon_restore_its_state() {
        let dir = Dir::new();
        let (mut served, operator) = Served::start(&dir, "first");
        let operator = operator.expect("the first start prints the operator token");
        let client = served.client(Some(&operator));
        let admin = served.client(Some(&tenant_admin(&client, "acme")));
        let csv =
            UploadArgs { format: "csv".into(), entity: Some("driver_id".into()), ..UploadArgs::default() };
        admin.ingest("acme", "trips", &csv, std::io::Cursor::new(super::trips_csv().into_bytes())).unwrap();
        let base = served.base.clone();
        let kanon = |args: &[&str], data: &std::path::Path| {
            let out = Command::new(env!("CARGO_BIN_EXE_kanon"))
                .args(args)
                .env("KANON_DATA_DIR", data)
                .env("KANON_CACHE_DIR", dir.path().join("cache"))
                .env("KANON_URL", &base)
                .env("KANON_TOKEN", &operator)
                .env_remove("KANON_KEY")
                .env_remove("KANON_KEY_FILE")
                .env_remove("KANON_PROFILE")
                .output()
                .unwrap();
            (out.status.code(), text(&out.stdout), text(&out.stderr))
        };
        let data = dir.path().join("data");
        let offline = dir.path().join("offline");
        let (code, _, err) = kanon(&["backup", "--dev-key", "--to", offline.to_str().unwrap()], &data);
        assert_eq!(code, Some(1), "{err}");
        assert!(err.contains("kanon backups create"), "{err}");
        let (code, out, err) = kanon(&["backups", "create", "nightly"], &data);
        assert_eq!(code, Some(0), "{err}");
        assert!(out.contains("backed up 1 tenants, 1 dataset versions"), "{out}");
        let (code, _, err) = kanon(&["backups", "create", "nightly"], &data);
        assert_eq!(code, Some(4), "the name is taken: {err}");

        let kill = Command::new("kill").args(["-TERM", &served.child.id().to_string()]).status().unwrap();
        assert!(kill.success());
        assert!(served.child.wait().unwrap().success(), "{}", served.stderr());
        let (code, out, err) = kanon(&["backup", "--dev-key", "--to", offline.to_str().unwrap()], &data);
        assert_eq!(code, Some(0), "{err}");
        assert!(out.contains("and the daemon's state and 0 plugins"), "{out}");
        drop(served);

        let key = data.join("dev.key");
        for (run, backup) in [("online", data.join("backups/nightly")), ("offline", offline)] {
            let restored = Dir::new();
            let target = restored.path().join("data");
            let (code, out, err) = kanon(
                &["restore", "--from", backup.to_str().unwrap(), "--key-file", key.to_str().unwrap()],
                &target,
            );
            assert_eq!(code, Some(0), "{run}: {err}");
            assert!(out.contains("restored 1 tenants, 1 dataset versions"), "{run}: {out}");
            std::fs::copy(&key, target.join("dev.key")).unwrap();
            let (served, token) = Served::start(&restored, run);
            assert!(token.is_none(), "{run}: the restored operator token stands");
            let whoami = served.client(Some(&operator)).whoami().unwrap();
            assert_eq!(whoami.role, Role::Operator, "{run}");
            let admin = served.client(admin.token());
            let datasets = admin.list_datasets("acme").unwrap();
            assert_eq!(datasets[0].version, 1, "{run}");
            let chain: AuditExport = admin.tenant_audit("acme").unwrap();
            assert_eq!(
                kanon_daemon::verify("acme", &chain.entries, &chain.head),
                Ok(chain.entries.len() as u64)
            );
            assert!(chain.entries.iter().any(|e| e.action == "dataset.ingest"), "{run}");
        }
    }
}

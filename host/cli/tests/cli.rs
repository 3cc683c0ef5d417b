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
    let plugin = dir.write("emissions.wasm", kanon_artifacts::EMISSIONS_BENCHMARK);
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
        stdout.contains("co2_intensity: 26 of 30 cells suppressed (k = 10, dominance (2, 90%))"),
        "{stdout}"
    );
    // Margins: the van total and the grand total are released; totals are `*`.
    assert!(stdout.lines().any(|l| l.starts_with("*") && l.contains(" 15 ")), "{stdout}");
    assert!(
        stdout.lines().any(|l| l.starts_with("van") && l.contains("north") && l.contains(" 12 ")),
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
    assert_eq!(json["suppressed"][0]["suppressed_cells"], 26);
    assert_eq!(json["params_hash"].as_str().unwrap().len(), 64);
    assert_eq!(cells[0]["key"], serde_json::json!(["van", "north"]));
    assert_eq!(cells[0]["values"][0], 12.0);
    assert!(cells[1]["values"].is_null());
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

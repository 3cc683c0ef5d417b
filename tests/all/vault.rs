//! The vault end to end: versions, atomic ingest, keys, erase, tampering,
//! export and backup/restore, through the public API only.

use std::path::{Path, PathBuf};

use kanon_vault::{
    CsvReader, IngestOptions, InputFormat, KeyEncryptionKey, Vault, VaultError, WriteMode, export_csv,
    export_parquet, open_file, open_stream,
};

/// Rows marked with a unique text, so plaintext is easy to look for.
fn staff_csv(rows: usize, marker: &str) -> String {
    let mut csv = String::from("employee_id,department,salary,note\n");
    for i in 0..rows {
        csv.push_str(&format!("E{marker}{i:05},dept-{},{}.5,{marker}-note-{}\n", i % 7, 30_000 + i, i % 3));
    }
    csv
}

fn options(chunk_rows: usize) -> IngestOptions {
    IngestOptions { chunk_rows, ..IngestOptions::entity("employee_id") }
}

fn ingest(vault: &Vault, tenant: &str, dataset: &str, mode: WriteMode, csv: &str) -> Result<u64, VaultError> {
    let reader =
        open_stream(InputFormat::Csv, "staff.csv", std::io::Cursor::new(csv.to_owned()), &options(100))?;
    Ok(vault.ingest(tenant, dataset, mode, reader, "staff.csv")?.version)
}

fn export(vault: &Vault, tenant: &str, dataset: &str, version: Option<u64>) -> String {
    let mut out = Vec::new();
    export_csv(&vault.dataset(tenant, dataset, version).unwrap(), &mut out).unwrap();
    String::from_utf8(out).unwrap()
}

/// Every file under `dir`, recursively.
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(files(&path));
        } else {
            out.push(path);
        }
    }
    out
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn versions_are_fixed_and_append_keeps_the_base() {
    let dir = tempfile::tempdir().unwrap();
    let vault = Vault::open(dir.path(), KeyEncryptionKey::generate()).unwrap();
    let (first, second) = (staff_csv(250, "a"), staff_csv(120, "b"));
    assert_eq!(ingest(&vault, "acme", "staff", WriteMode::Replace, &first).unwrap(), 1);
    assert_eq!(ingest(&vault, "acme", "staff", WriteMode::Append, &second).unwrap(), 2);
    assert_eq!(ingest(&vault, "acme", "staff", WriteMode::Replace, &second).unwrap(), 3);

    assert_eq!(export(&vault, "acme", "staff", Some(1)), first, "export reads back the input");
    let appended = format!("{first}{}", second.split_once('\n').unwrap().1);
    assert_eq!(export(&vault, "acme", "staff", Some(2)), appended);
    assert_eq!(export(&vault, "acme", "staff", None), second, "the latest is version 3");
    let pinned = vault.dataset("acme", "staff", Some(1)).unwrap();
    ingest(&vault, "acme", "staff", WriteMode::Replace, &staff_csv(5, "c")).unwrap();
    assert_eq!(pinned.rows(), 250, "a job reads the version it was given");
    pinned.verify().unwrap();

    let versions = vault.versions("acme", "staff").unwrap();
    assert_eq!(versions.iter().map(|v| v.rows).collect::<Vec<_>>(), [250, 370, 120, 5]);
    assert_eq!(versions[2].content_hash, ingest_hash(&second), "same contents, same hash");

    let other = staff_csv(10, "d").replace("salary", "pay");
    let err = ingest(&vault, "acme", "staff", WriteMode::Append, &other).unwrap_err().to_string();
    assert!(err.contains("cannot append to `staff`: the schema differs at column 3"), "{err}");
    assert!(matches!(
        ingest(&vault, "acme", "nothing", WriteMode::Append, &second),
        Err(VaultError::UnknownDataset { .. })
    ));
    assert!(matches!(vault.dataset("acme", "staff", Some(9)), Err(VaultError::UnknownVersion { .. })));
    assert!(matches!(vault.dataset("globex", "staff", None), Err(VaultError::UnknownTenant(_))));
    for bad in ["", "../x", "a/b", ".hidden", &"x".repeat(65)] {
        assert!(matches!(
            ingest(&vault, bad, "staff", WriteMode::Replace, &second),
            Err(VaultError::BadName(_))
        ));
        assert!(matches!(
            ingest(&vault, "acme", bad, WriteMode::Replace, &second),
            Err(VaultError::BadName(_))
        ));
    }
}

/// The content hash of `csv` stored on its own.
fn ingest_hash(csv: &str) -> String {
    let vault = Vault::temporary().unwrap();
    ingest(&vault, "t", "d", WriteMode::Replace, csv).unwrap();
    vault.dataset("t", "d", None).unwrap().info().content_hash
}

#[test]
fn a_failed_ingest_leaves_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let vault = Vault::open(dir.path(), KeyEncryptionKey::generate()).unwrap();
    // Several chunks are written before the bad row is reached.
    let mut csv = staff_csv(1500, "a");
    csv.push_str("Ebad,dept-1,not-a-number,x\n");
    let err = ingest(&vault, "acme", "staff", WriteMode::Replace, &csv).unwrap_err().to_string();
    assert_eq!(err, "staff.csv, row 1501 (line 1502), column `salary`: expected float, found `not-a-number`");
    assert!(vault.tenants().unwrap().is_empty(), "not even the tenant was created");
    let chunk_files: Vec<_> =
        files(dir.path()).into_iter().filter(|p| p.extension().is_some_and(|e| e == "kc")).collect();
    assert!(chunk_files.is_empty(), "{chunk_files:?}");

    ingest(&vault, "acme", "staff", WriteMode::Replace, &staff_csv(10, "a")).unwrap();
    let err = ingest(&vault, "acme", "staff", WriteMode::Replace, "employee_id,x\n").unwrap_err();
    assert!(err.to_string().contains("no rows"), "{err}");
    assert_eq!(vault.versions("acme", "staff").unwrap().len(), 1, "the failed replace made no version");
}

#[test]
fn the_key_is_checked_and_rotation_rewrites_no_data() {
    let dir = tempfile::tempdir().unwrap();
    let (old, new) = (KeyEncryptionKey::generate(), KeyEncryptionKey::generate());
    let vault = Vault::open(dir.path(), old.clone()).unwrap();
    let csv = staff_csv(300, "a");
    ingest(&vault, "acme", "staff", WriteMode::Replace, &csv).unwrap();
    assert!(
        matches!(Vault::open(dir.path(), new.clone()), Err(VaultError::InUse(_))),
        "one process at a time"
    );
    let before: Vec<_> =
        files(&dir.path().join("chunks")).into_iter().map(|p| std::fs::read(p).unwrap()).collect();
    assert_eq!(vault.rotate_key(new.clone()).unwrap(), 1);
    assert_eq!(export(&vault, "acme", "staff", None), csv);
    drop(vault);
    let after: Vec<_> =
        files(&dir.path().join("chunks")).into_iter().map(|p| std::fs::read(p).unwrap()).collect();
    assert_eq!(before, after, "chunks untouched by rotation");
    assert!(matches!(Vault::open(dir.path(), old), Err(VaultError::WrongKey)));
    let vault = Vault::open(dir.path(), new).unwrap();
    assert_eq!(export(&vault, "acme", "staff", None), csv);
}

#[test]
fn erase_leaves_no_plaintext_and_no_key() {
    let dir = tempfile::tempdir().unwrap();
    let vault = Vault::open(dir.path(), KeyEncryptionKey::generate()).unwrap();
    ingest(&vault, "acme", "staff", WriteMode::Replace, &staff_csv(400, "zqx")).unwrap();
    ingest(&vault, "acme", "payroll", WriteMode::Replace, &staff_csv(50, "zqy")).unwrap();
    ingest(&vault, "globex", "staff", WriteMode::Replace, &staff_csv(30, "gbx")).unwrap();
    // At rest nothing is in clear: not values, not column names (tenant and
    // dataset names are the operator's labels, and are).
    let needles: [&[u8]; 4] = [b"Ezqx00042", b"zqx-note", b"dept-3", b"department"];
    let no_plaintext = || {
        for file in files(dir.path()) {
            let bytes = std::fs::read(&file).unwrap();
            for needle in needles {
                let shown = String::from_utf8_lossy(needle);
                assert!(!contains(&bytes, needle), "{} holds {shown:?} in clear", file.display());
            }
        }
    };
    no_plaintext();
    let acme = vault.dataset("acme", "staff", None).unwrap();
    assert_eq!(vault.erase_tenant("acme").unwrap(), 2);
    assert!(matches!(vault.dataset("acme", "staff", None), Err(VaultError::UnknownTenant(_))));
    assert!(acme.verify().is_err(), "even a handle opened before the erase reads nothing now");
    assert_eq!(vault.tenants().unwrap(), ["globex"]);
    no_plaintext();
    assert_eq!(export(&vault, "globex", "staff", None), staff_csv(30, "gbx"), "other tenants untouched");
    drop(vault);
    // Reopen: what is left on disk is only globex's.
    let chunk_dirs = std::fs::read_dir(dir.path().join("chunks")).unwrap().count();
    assert_eq!(chunk_dirs, 1);
}

#[test]
fn moved_or_swapped_chunks_fail_to_read() {
    let dir = tempfile::tempdir().unwrap();
    let vault = Vault::open(dir.path(), KeyEncryptionKey::generate()).unwrap();
    ingest(&vault, "acme", "staff", WriteMode::Replace, &staff_csv(100, "a")).unwrap();
    ingest(&vault, "acme", "other", WriteMode::Replace, &staff_csv(100, "b")).unwrap();
    let chunk_files: Vec<_> = files(&dir.path().join("chunks"));
    assert_eq!(chunk_files.len(), 2, "one chunk each");
    // Same tenant, same key, same layout: only the bound address tells them apart.
    let (a, b) = (std::fs::read(&chunk_files[0]).unwrap(), std::fs::read(&chunk_files[1]).unwrap());
    std::fs::write(&chunk_files[0], &b).unwrap();
    std::fs::write(&chunk_files[1], &a).unwrap();
    for dataset in ["staff", "other"] {
        let err = vault.dataset("acme", dataset, None).unwrap().verify().unwrap_err().to_string();
        assert!(err.contains("failed authentication"), "{err}");
    }
    // A flipped bit fails too, and the run path sees an error, not data.
    let mut flipped = b.clone();
    flipped[60] ^= 1;
    std::fs::write(&chunk_files[1], &flipped).unwrap();
    let mut out = Vec::new();
    assert!(export_csv(&vault.dataset("acme", "staff", None).unwrap(), &mut out).is_err());
    // A missing file is an I/O error naming it.
    std::fs::remove_file(&chunk_files[0]).unwrap();
    let missing = ["staff", "other"]
        .iter()
        .filter(|d| matches!(vault.dataset("acme", d, None).unwrap().verify(), Err(VaultError::Io { .. })))
        .count();
    assert_eq!(missing, 1);
}

#[test]
fn backup_during_ingest_restores_byte_identical() {
    let dir = tempfile::tempdir().unwrap();
    let kek = KeyEncryptionKey::generate();
    let vault = Vault::open(&dir.path().join("data"), kek.clone()).unwrap();
    let jsonl: String = (0..500).map(|i| format!("{{\"id\":\"J{i}\",\"score\":{}}}\n", i % 17)).collect();
    let reader = open_stream(
        InputFormat::JsonLines,
        "scores.jsonl",
        std::io::Cursor::new(jsonl),
        &IngestOptions::entity("id"),
    )
    .unwrap();
    vault.ingest("globex", "scores", WriteMode::Replace, reader, "scores.jsonl").unwrap();
    ingest(&vault, "acme", "staff", WriteMode::Replace, &staff_csv(900, "a")).unwrap();
    ingest(&vault, "acme", "staff", WriteMode::Append, &staff_csv(90, "b")).unwrap();

    // Ingests go on while the backup runs; the backup is one snapshot.
    let backup = dir.path().join("backup");
    let summary = std::thread::scope(|scope| {
        let writer = scope.spawn(|| {
            for i in 0..5 {
                ingest(&vault, "acme", "busy", WriteMode::Replace, &staff_csv(300 + i, "c")).unwrap();
            }
        });
        let summary = vault.backup(&backup).unwrap();
        writer.join().unwrap();
        summary
    });
    assert_eq!(summary.tenants, 2);
    let snapshot: Vec<(String, String, u64, String)> = ["globex/scores", "acme/staff", "acme/busy"]
        .iter()
        .flat_map(|path| {
            let (tenant, dataset) = path.split_once('/').unwrap();
            vault.versions(tenant, dataset).unwrap_or_default().into_iter().map(move |v| (tenant, dataset, v))
        })
        .map(|(t, d, v)| {
            let contents = export(&vault, t, d, Some(v.version));
            (t.to_owned(), d.to_owned(), v.version, blake3::hash(contents.as_bytes()).to_hex().to_string())
        })
        .collect();
    drop(vault);
    std::fs::remove_dir_all(dir.path().join("data")).unwrap();

    let restored_dir = dir.path().join("data");
    assert!(matches!(
        Vault::restore(&backup, &restored_dir, KeyEncryptionKey::generate()),
        Err(VaultError::WrongKey)
    ));
    let (restored, again) = Vault::restore(&backup, &restored_dir, kek.clone()).unwrap();
    assert_eq!(again, summary);
    let mut compared = 0;
    for (tenant, dataset, version, hash) in &snapshot {
        match restored.dataset(tenant, dataset, Some(*version)) {
            Ok(found) => {
                let mut out = Vec::new();
                export_csv(&found, &mut out).unwrap();
                assert_eq!(&blake3::hash(&out).to_hex().to_string(), hash, "{tenant}/{dataset} v{version}");
                compared += 1;
            }
            // Versions committed after the snapshot are not in it.
            Err(VaultError::UnknownDataset { .. } | VaultError::UnknownVersion { .. }) => {
                assert_eq!(dataset, "busy");
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(compared, summary.versions, "every version in the backup reads back identical");
    assert!(compared >= 3);
    assert!(matches!(restored.backup(&backup), Err(VaultError::NotEmpty(_))));
    drop(restored);

    // A damaged chunk or an edited manifest is refused, and nothing is left.
    let elsewhere = dir.path().join("elsewhere");
    let chunk = files(&backup.join("chunks")).remove(0);
    let original = std::fs::read(&chunk).unwrap();
    let mut damaged = original.clone();
    damaged[10] ^= 1;
    std::fs::write(&chunk, &damaged).unwrap();
    let err = Vault::restore(&backup, &elsewhere, kek.clone()).unwrap_err().to_string();
    assert!(err.contains("differs from the manifest"), "{err}");
    assert!(!elsewhere.exists());
    std::fs::write(&chunk, &original).unwrap();
    let manifest = backup.join("manifest");
    let mut edited = std::fs::read(&manifest).unwrap();
    let last = edited.len() - 1;
    edited[last] ^= 1;
    std::fs::write(&manifest, &edited).unwrap();
    let err = Vault::restore(&backup, &elsewhere, kek).unwrap_err().to_string();
    assert!(err.contains("altered") || err.contains("key-encryption key"), "{err}");
    assert!(!elsewhere.exists());
}

#[test]
fn an_export_ingests_back_to_the_same_contents() {
    let csv =
        "id,when,ok,n,x,label\nA,2024-01-02T03:04:05.5Z,true,-3,2.0,\nB,,false,,1e-7,hé \"quoted\", yes\n"
            .replace(", yes", "");
    let vault = Vault::temporary().unwrap();
    let reader = CsvReader::new("in.csv", std::io::Cursor::new(csv), &IngestOptions::entity("id")).unwrap();
    let first = vault.ingest("t", "d", WriteMode::Replace, Box::new(reader), "in.csv").unwrap();
    let exported = export(&vault, "t", "d", None);
    let reader =
        CsvReader::new("out.csv", std::io::Cursor::new(exported), &IngestOptions::entity("id")).unwrap();
    let second = vault.ingest("t", "d", WriteMode::Replace, Box::new(reader), "out.csv").unwrap();
    assert_eq!(first.schema, second.schema);
    assert_eq!(first.content_hash, second.content_hash);
}

#[test]
fn a_parquet_export_ingests_back_to_the_same_contents() {
    let mixed = "id,when,ok,n,x,label\nA,2024-01-02T03:04:05.5Z,true,-3,2.0,\nB,,false,,1e-7,hé \"quoted\"\n";
    let dir = tempfile::tempdir().unwrap();
    let vault = Vault::temporary().unwrap();
    for (csv, entity, chunk_rows) in
        [(mixed.to_owned(), "id", 100), (staff_csv(1000, "pq"), "employee_id", 64)]
    {
        let options = IngestOptions { chunk_rows, ..IngestOptions::entity(entity) };
        let reader = open_stream(InputFormat::Csv, "in.csv", std::io::Cursor::new(csv), &options).unwrap();
        let first = vault.ingest("t", "d", WriteMode::Replace, reader, "in.csv").unwrap();
        let path = dir.path().join("out.parquet");
        let file = std::fs::File::create(&path).unwrap();
        let rows = export_parquet(&vault.dataset("t", "d", None).unwrap(), file).unwrap();
        assert_eq!(rows, first.rows);
        let reader = open_file(&path, None, &options).unwrap();
        let second = vault.ingest("t", "d", WriteMode::Replace, reader, "out.parquet").unwrap();
        assert_eq!(first.schema, second.schema);
        assert_eq!(first.content_hash, second.content_hash, "{entity}: the same contents");
    }
}

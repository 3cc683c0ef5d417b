//! Parquet and Arrow IPC ingest throughput: writes a generated dataset of
//! typical columns (a text entity, ints, floats with nulls, a timestamp, a
//! bool, a dictionary-encoded and a plain text attribute) as a Snappy
//! Parquet file and an uncompressed Arrow IPC file, then times, for each,
//! the reader alone and a whole ingest into a temporary vault.
//!
//! `cargo run --release -p kanon-vault --example ingest_columnar [ROWS]`
//! (default 2 000 000 rows). MB/s counts the decoded Arrow bytes (what the
//! reader converts), so Parquet and IPC compare on the same data.

use std::sync::Arc;
use std::time::Instant;

use arrow_array::types::UInt16Type;
use arrow_array::{
    ArrayRef, BooleanArray, DictionaryArray, Float64Array, Int32Array, Int64Array, RecordBatch, StringArray,
    TimestampMicrosecondArray,
};
use kanon_vault::{ArrowReader, ChunkReader, IngestOptions, Vault, WriteMode};

const BATCH_ROWS: usize = 64 * 1024;

fn batch(start: usize, rows: usize) -> RecordBatch {
    let row = |i: usize| (start + i) as u64;
    // A cheap deterministic scramble, so values do not run in order.
    let mix = |i: usize| row(i).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 16;
    let drivers: Vec<String> = (0..rows).map(|i| format!("driver-{:06}", mix(i) % 50_000)).collect();
    let trips = Int64Array::from_iter_values((0..rows).map(|i| row(i) as i64));
    let km = Int32Array::from_iter_values((0..rows).map(|i| (mix(i) % 900) as i32));
    let litres =
        Float64Array::from_iter((0..rows).map(|i| (mix(i) % 10 != 0).then(|| (mix(i) % 1000) as f64 / 8.0)));
    let started = TimestampMicrosecondArray::from_iter_values(
        (0..rows).map(|i| 1_700_000_000_000_000 + (row(i) as i64) * 60_000_000),
    )
    .with_timezone("UTC");
    let loaded = BooleanArray::from_iter((0..rows).map(|i| Some(mix(i) % 3 == 0)));
    let regions = StringArray::from(vec!["noord", "oost", "zuid", "west", "midden"]);
    let keys = arrow_array::UInt16Array::from_iter_values((0..rows).map(|i| (mix(i) % 5) as u16));
    let region = DictionaryArray::<UInt16Type>::try_new(keys, Arc::new(regions)).expect("keys in range");
    let plates: Vec<Option<String>> =
        (0..rows).map(|i| (mix(i) % 7 != 0).then(|| format!("KN-{:04}-X", mix(i) % 4000))).collect();
    let columns: Vec<(&str, ArrayRef)> = vec![
        ("driver", Arc::new(StringArray::from(drivers))),
        ("trip", Arc::new(trips)),
        ("km", Arc::new(km)),
        ("litres", Arc::new(litres)),
        ("started", Arc::new(started)),
        ("loaded", Arc::new(loaded)),
        ("region", Arc::new(region)),
        ("plate", Arc::new(StringArray::from(plates))),
    ];
    RecordBatch::try_from_iter(columns).expect("columns agree")
}

fn batches(rows: usize) -> Vec<RecordBatch> {
    (0..rows).step_by(BATCH_ROWS).map(|start| batch(start, BATCH_ROWS.min(rows - start))).collect()
}

fn figures(what: &str, rows: usize, bytes: usize, seconds: f64) {
    println!(
        "{what:<34} {seconds:>7.3} s  {:>8.1} MB/s  {:>6.2} M rows/s",
        bytes as f64 / 1e6 / seconds,
        rows as f64 / 1e6 / seconds
    );
}

/// The best of `runs` timings of `f`.
fn best(runs: usize, mut f: impl FnMut() -> usize) -> (usize, f64) {
    let mut best = f64::INFINITY;
    let mut rows = 0;
    for _ in 0..runs {
        let started = Instant::now();
        rows = f();
        best = best.min(started.elapsed().as_secs_f64());
    }
    (rows, best)
}

fn main() {
    let rows: usize = std::env::args().nth(1).and_then(|r| r.parse().ok()).unwrap_or(2_000_000);
    let batches = batches(rows);
    let arrow_bytes: usize = batches.iter().map(RecordBatch::get_array_memory_size).sum();
    let dir = tempfile::tempdir().expect("temp dir");
    let parquet_path = dir.path().join("trips.parquet");
    let ipc_path = dir.path().join("trips.arrow");
    {
        let file = std::fs::File::create(&parquet_path).expect("create");
        let properties = parquet::file::properties::WriterProperties::builder()
            .set_compression(parquet::basic::Compression::SNAPPY)
            .build();
        let mut writer = parquet::arrow::ArrowWriter::try_new(file, batches[0].schema(), Some(properties))
            .expect("writer");
        batches.iter().for_each(|b| writer.write(b).expect("write"));
        writer.close().expect("close");
        let file = std::fs::File::create(&ipc_path).expect("create");
        let mut writer = arrow_ipc::writer::FileWriter::try_new(file, &batches[0].schema()).expect("writer");
        batches.iter().for_each(|b| writer.write(b).expect("write"));
        writer.finish().expect("finish");
    }
    drop(batches);
    let size = |p: &std::path::Path| std::fs::metadata(p).expect("stat").len() as f64 / 1e6;
    println!(
        "{rows} rows, {:.1} MB of Arrow data; Parquet file {:.1} MB, IPC file {:.1} MB",
        arrow_bytes as f64 / 1e6,
        size(&parquet_path),
        size(&ipc_path)
    );
    let options = IngestOptions::entity("driver");
    let open = |parquet: bool| -> Box<dyn ChunkReader> {
        if parquet {
            let file = std::fs::File::open(&parquet_path).expect("open");
            Box::new(ArrowReader::parquet("trips.parquet", file, &options).expect("reads"))
        } else {
            let file = std::fs::File::open(&ipc_path).expect("open");
            Box::new(ArrowReader::ipc("trips.arrow", file, &options).expect("reads"))
        }
    };
    for (name, parquet) in [("parquet", true), ("arrow ipc", false)] {
        let (read, seconds) = best(3, || {
            let mut reader = open(parquet);
            let mut read = 0;
            while let Some(table) = reader.next_chunk().expect("reads") {
                read += table.rows;
            }
            read
        });
        assert_eq!(read, rows);
        figures(&format!("{name}: reader only"), rows, arrow_bytes, seconds);
        let (stored, seconds) = best(3, || {
            let vault = Vault::temporary().expect("vault");
            let info = vault.ingest("t", "trips", WriteMode::Replace, open(parquet), name).expect("ingests");
            info.rows as usize
        });
        assert_eq!(stored, rows);
        figures(&format!("{name}: ingest into the vault"), rows, arrow_bytes, seconds);
    }
}

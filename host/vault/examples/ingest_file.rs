//! Ingest one file into a temporary vault and print the outcome: a tool to
//! measure a reader's time and peak memory on a given input, e.g.
//! `/usr/bin/time -v ingest_file hostile.csv driver`. `MAX_COLUMNS` in the
//! environment raises the column limit, to time many columns.

use std::path::Path;
use std::time::Instant;

use kanon_vault::{IngestOptions, Vault, WriteMode, open_file};

fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(path), Some(entity)) = (args.next(), args.next()) else {
        eprintln!("usage: ingest_file FILE ENTITY_COLUMN");
        std::process::exit(2);
    };
    let started = Instant::now();
    let outcome = Vault::temporary().map_err(|e| e.to_string()).and_then(|vault| {
        let mut options = IngestOptions::entity(entity);
        if let Some(max) = std::env::var("MAX_COLUMNS").ok().and_then(|m| m.parse().ok()) {
            options.limits.max_columns = max;
            options.limits.max_header_bytes = usize::MAX;
        }
        let reader = open_file(Path::new(&path), None, &options).map_err(|e| e.to_string())?;
        vault.ingest("t", "d", WriteMode::Replace, reader, &path).map_err(|e| e.to_string())
    });
    let seconds = started.elapsed().as_secs_f64();
    match outcome {
        Ok(info) => println!("ok: {} rows in {seconds:.2} s", info.rows),
        Err(message) => {
            let shown: String = message.chars().take(300).collect();
            println!("error of {} bytes after {seconds:.2} s: {shown}", message.len());
        }
    }
}

//! A tenant's own export: a dataset version in clear, as CSV that the CSV
//! reader reads back to the same contents. The only way clear `entity` and
//! `identifier` values leave the vault.

use std::io::Write;

use crate::store::{DatasetVersion, VaultError};
use crate::table::ColumnData;
use crate::timestamp::format_timestamp;

/// Write `dataset` as CSV with a header row; returns the rows written.
/// Nulls are empty fields; floats keep a decimal point so they read back as
/// floats.
pub fn export_csv(dataset: &DatasetVersion, out: impl Write) -> Result<u64, VaultError> {
    let failed = |e: csv::Error| VaultError::Export(e.to_string());
    let mut writer = csv::Writer::from_writer(out);
    let schema = dataset.schema();
    writer.write_record(schema.fields.iter().map(|f| f.name.as_str())).map_err(failed)?;
    let all: Vec<usize> = (0..schema.fields.len()).collect();
    let mut record = csv::StringRecord::new();
    let mut written = 0;
    for chunk in 0..dataset.chunk_count() {
        let columns = dataset.read_chunk(chunk, &all)?;
        for row in 0..dataset.chunk_rows(chunk) {
            record.clear();
            for column in &columns {
                if !column.is_valid(row) {
                    record.push_field("");
                    continue;
                }
                match &column.data {
                    ColumnData::Int(v) => record.push_field(&v[row].to_string()),
                    ColumnData::Float(v) => record.push_field(&format!("{:?}", v[row])),
                    ColumnData::Bool(v) => record.push_field(if v[row] { "true" } else { "false" }),
                    ColumnData::Timestamp(v) => record.push_field(&format_timestamp(v[row])),
                    ColumnData::Text { entries, codes } => record.push_field(&entries[codes[row] as usize]),
                }
            }
            writer.write_record(&record).map_err(failed)?;
            written += 1;
        }
    }
    writer.flush().map_err(|e| VaultError::Export(e.to_string()))?;
    Ok(written)
}

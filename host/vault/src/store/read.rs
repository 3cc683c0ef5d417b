//! The read path: a pinned version's chunks, read, opened (which
//! authenticates them), decompressed and decoded, and checked against their
//! recorded content hashes.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};

use super::error::{VaultError, io};
use super::versions::DatasetVersion;
use crate::chunk::{self, SegmentError};
use crate::sealing::ChunkAddress;
use crate::table::Column;

impl DatasetVersion {
    pub(crate) fn chunk_count(&self) -> usize {
        self.inner.record.chunks.len()
    }

    pub(crate) fn chunk_rows(&self, chunk: usize) -> usize {
        self.inner.record.chunks[chunk].rows as usize
    }

    /// Columns `columns` (schema indexes) of chunk `chunk`, decoded.
    pub(crate) fn read_chunk(&self, chunk: usize, columns: &[usize]) -> Result<Vec<Column>, VaultError> {
        let mut file = None;
        columns
            .iter()
            .map(|&column| {
                let plain = self.read_segment_from(&mut file, chunk, column)?;
                let column_type = self.schema().fields[column].column_type;
                chunk::decode_plain(&plain, column_type, self.chunk_rows(chunk))
                    .map_err(|e| self.corrupt(chunk, e.to_string()))
            })
            .collect()
    }

    /// Column `column`'s segment of chunk `chunk`: read, opened (which
    /// authenticates it) and decompressed, not yet decoded.
    pub(crate) fn read_segment(&self, chunk: usize, column: usize) -> Result<Vec<u8>, VaultError> {
        self.read_segment_from(&mut None, chunk, column)
    }

    /// [`Self::read_segment`] from `file`, the chunk's file, opened into it
    /// if it is not open yet: a chunk's columns are read with one open.
    fn read_segment_from(
        &self,
        file: &mut Option<File>,
        chunk: usize,
        column: usize,
    ) -> Result<Vec<u8>, VaultError> {
        let h = &self.inner;
        let c = &h.record.chunks[chunk];
        let corrupt = |detail: String| self.corrupt(chunk, detail);
        let Some(&(offset, len)) =
            c.segments.get(column).filter(|_| c.segments.len() == h.record.schema.fields.len())
        else {
            return Err(corrupt("the record's segments do not match the schema".into()));
        };
        let path = h.tenant_dir.join(&c.dir).join(c.file_name());
        let mut sealed = vec![0; len as usize];
        let file = match file {
            Some(file) => file,
            None => file.insert(File::open(&path).map_err(io(&path))?),
        };
        file.seek(SeekFrom::Start(offset)).and_then(|_| file.read_exact(&mut sealed)).map_err(io(&path))?;
        let address = ChunkAddress {
            tenant: &h.tenant,
            dataset: &h.dataset,
            version: c.origin_version,
            chunk: c.index,
            column: column as u32,
        };
        let stored = h.key.open(&address, &sealed).map_err(|e| corrupt(e.to_string()))?;
        chunk::decompress(&stored).map_err(|e: SegmentError| corrupt(e.to_string()))
    }

    /// The stored size of a segment: what reading it costs.
    pub(crate) fn segment_len(&self, chunk: usize, column: usize) -> u64 {
        self.inner.record.chunks[chunk].segments.get(column).map_or(0, |&(_, len)| len.into())
    }

    pub(crate) fn corrupt(&self, chunk: usize, detail: String) -> VaultError {
        VaultError::Corrupt {
            dataset: self.inner.dataset.clone(),
            version: self.inner.record.version,
            chunk: chunk as u64,
            detail,
        }
    }

    /// Read every chunk and check it against its recorded content hash.
    pub fn verify(&self) -> Result<(), VaultError> {
        let all: Vec<usize> = (0..self.schema().fields.len()).collect();
        for chunk in 0..self.chunk_count() {
            let rows = self.chunk_rows(chunk);
            let mut hasher = blake3::Hasher::new();
            for column in self.read_chunk(chunk, &all)? {
                hasher.update(&chunk::encode_plain(&column, rows));
            }
            if *hasher.finalize().as_bytes() != self.inner.record.chunks[chunk].plain_hash {
                return Err(VaultError::Corrupt {
                    dataset: self.inner.dataset.clone(),
                    version: self.version(),
                    chunk: chunk as u64,
                    detail: "contents differ from the recorded hash".into(),
                });
            }
        }
        Ok(())
    }
}

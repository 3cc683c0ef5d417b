//! Emitting contributions to the gate, column-wise and in batches.

use crate::GateError;
use crate::bindings::kanon::plugin::gate;

/// Rows buffered before a contribution batch goes to the host.
const FLUSH_ROWS: usize = 16 * 1024;

/// An output table: buffers contributions and hands them to the gate in
/// column-wise batches. Dropping it flushes what is left.
#[derive(Debug)]
pub struct Table {
    inner: gate::Table,
    buffer: gate::Contributions,
}

impl Table {
    /// Open an output table the manifest declared.
    pub fn open(name: &str) -> Result<Self, GateError> {
        Ok(Self {
            inner: gate::open_table(name)?,
            buffer: gate::Contributions {
                entities: Vec::new(),
                dimensions: Vec::new(),
                measures: Vec::new(),
            },
        })
    }

    /// Contribute `measures` for `entity` to the cell keyed by `keys` (one
    /// domain code per dimension, one value per measure, in manifest order).
    #[inline]
    pub fn add(&mut self, entity: u64, keys: &[u32], measures: &[f64]) {
        if self.buffer.entities.is_empty() {
            self.buffer.dimensions.resize_with(keys.len(), || Vec::with_capacity(FLUSH_ROWS));
            self.buffer.measures.resize_with(measures.len(), || Vec::with_capacity(FLUSH_ROWS));
        }
        self.buffer.entities.push(entity);
        for (column, &key) in self.buffer.dimensions.iter_mut().zip(keys) {
            column.push(key);
        }
        for (column, &value) in self.buffer.measures.iter_mut().zip(measures) {
            column.push(value);
        }
        if self.buffer.entities.len() >= FLUSH_ROWS {
            self.flush();
        }
    }

    /// Contribute whole columns at once: `keys[d][i]` and `measures[m][i]`
    /// belong to `entities[i]`.
    pub fn add_columns(&mut self, entities: &[u64], keys: &[&[u32]], measures: &[&[f64]]) {
        self.flush();
        self.inner.contribute(&gate::Contributions {
            entities: entities.to_vec(),
            dimensions: keys.iter().map(|k| k.to_vec()).collect(),
            measures: measures.iter().map(|m| m.to_vec()).collect(),
        });
    }

    /// Send the buffered contributions to the gate now.
    pub fn flush(&mut self) {
        if self.buffer.entities.is_empty() {
            return;
        }
        self.inner.contribute(&self.buffer);
        self.buffer.entities.clear();
        self.buffer.dimensions.iter_mut().for_each(Vec::clear);
        self.buffer.measures.iter_mut().for_each(Vec::clear);
    }
}

impl Drop for Table {
    fn drop(&mut self) {
        self.flush();
    }
}

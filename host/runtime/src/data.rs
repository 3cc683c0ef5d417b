//! The data capability (`kanon:plugin/data`): datasets and columns the
//! manifest declared, in columnar batches, identifiers as pseudonyms.

use kanon_gate::IssuedEntities;
use kanon_vault::{BatchValues, Scan, ScanError};
use wasmtime::component::{HasData, Resource, ResourceTable};

use crate::bindings::data::{
    self, Batch, Column, ColumnInfo, ColumnValues, DataError, HostDataset, HostScan, TextColumn,
};
use crate::bindings::types::{self, Classification, ColumnType};
use crate::isolation::SliceScan;
use crate::sandbox::{Abort, DataState, Meter, StoreState};
use kanon_gate::PluginColumnType;

/// Most rows the host puts in one batch, whatever the plugin asks.
pub(crate) const MAX_BATCH_ROWS: u32 = 1 << 16;

/// An open dataset.
#[derive(Debug)]
pub struct DatasetHandle {
    name: String,
}

/// An open scan.
#[derive(Debug)]
pub struct ScanHandle {
    scan: ScanSource,
    /// Per scanned column: int data read by a plugin that declared float.
    widen: Vec<bool>,
    /// What the scan holds, as charged to the run's host memory budget.
    charged: usize,
}

/// Where a scan's batches come from: the vault, or in an entity-isolated
/// run the instance's own rows of the data read once.
#[derive(Debug)]
enum ScanSource {
    Vault(Box<Scan>),
    Entity(SliceScan),
}

impl ScanSource {
    fn next_batch(&mut self) -> Result<Option<kanon_vault::Batch>, ScanError> {
        match self {
            ScanSource::Vault(scan) => scan.next_batch(),
            ScanSource::Entity(slice) => Ok(slice.next_batch()),
        }
    }

    /// Host memory the scan holds of its own (the isolated run's data is the
    /// run's, charged once).
    fn held_bytes(&self) -> usize {
        match self {
            ScanSource::Vault(scan) => scan.held_bytes(),
            ScanSource::Entity(_) => 0,
        }
    }
}

/// What the data capability's host functions see of a run's store.
pub(crate) struct DataView<'a> {
    state: &'a DataState,
    issued: &'a mut IssuedEntities,
    resources: &'a mut ResourceTable,
    meter: &'a mut Meter,
}

/// Marker for linking the data capability.
pub(crate) struct DataCapability;

impl HasData for DataCapability {
    type Data<'a> = DataView<'a>;
}

impl StoreState {
    pub(crate) fn data_view(&mut self) -> DataView<'_> {
        DataView {
            state: &self.data,
            issued: &mut self.issued,
            resources: &mut self.resources,
            meter: &mut self.meter,
        }
    }
}

pub(crate) fn add_to_linker(linker: &mut wasmtime::component::Linker<StoreState>) -> wasmtime::Result<()> {
    types::add_to_linker::<StoreState, DataCapability>(linker, StoreState::data_view)?;
    data::add_to_linker::<StoreState, DataCapability>(linker, StoreState::data_view)
}

impl types::Host for DataView<'_> {}

impl data::Host for DataView<'_> {
    fn open(&mut self, name: String) -> wasmtime::Result<Result<Resource<DatasetHandle>, DataError>> {
        self.meter.enter_host_call(name.len())?;
        if !self.state.grants.contains_key(&name) {
            self.meter.refuse(format!("opened undeclared dataset `{name}`"));
            return Ok(Err(DataError::DatasetNotGranted(name)));
        }
        self.meter.open_resource()?;
        Ok(Ok(self.resources.push(DatasetHandle { name })?))
    }
}

impl HostDataset for DataView<'_> {
    fn schema(&mut self, dataset: Resource<DatasetHandle>) -> wasmtime::Result<Vec<ColumnInfo>> {
        self.meter.enter_host_call(0)?;
        let grant = &self.state.grants[&self.resources.get(&dataset)?.name];
        let schema = grant.dataset.schema();
        // Only the declared columns exist, as far as the plugin can tell.
        Ok(grant
            .need
            .columns
            .iter()
            .filter_map(|c| schema.fields.iter().find(|f| f.name == c.name))
            .map(|f| ColumnInfo {
                name: f.name.clone(),
                type_: match crate::plugin_column_type(f.column_type, f.classification) {
                    PluginColumnType::Int => ColumnType::Int,
                    PluginColumnType::Float => ColumnType::Float,
                    PluginColumnType::Boolean => ColumnType::Boolean,
                    PluginColumnType::Text => ColumnType::Text,
                    PluginColumnType::Timestamp => ColumnType::Timestamp,
                    PluginColumnType::Pseudonym => ColumnType::Pseudonym,
                },
                classification: match f.classification {
                    kanon_vault::Classification::Entity => Classification::Entity,
                    kanon_vault::Classification::Identifier => Classification::Identifier,
                    kanon_vault::Classification::Attribute => Classification::Attribute,
                },
            })
            .collect())
    }

    fn scan(
        &mut self,
        dataset: Resource<DatasetHandle>,
        columns: Vec<String>,
        batch_rows: u32,
    ) -> wasmtime::Result<Result<Resource<ScanHandle>, DataError>> {
        self.meter.enter_host_call(columns.iter().map(String::len).sum())?;
        let name = self.resources.get(&dataset)?.name.clone();
        let grant = &self.state.grants[&name];
        if let Some(column) = columns.iter().find(|c| !grant.need.columns.iter().any(|n| &n.name == *c)) {
            self.meter.refuse(format!("scanned undeclared column `{column}` of `{name}`"));
            return Ok(Err(DataError::ColumnNotGranted(column.clone())));
        }
        let names: Vec<&str> = columns.iter().map(String::as_str).collect();
        let widen = columns
            .iter()
            .map(|c| {
                let declared = grant.need.columns.iter().find(|n| &n.name == c).map(|n| n.column_type);
                let stored = grant.dataset.schema().fields.iter().find(|f| &f.name == c);
                declared == Some(PluginColumnType::Float)
                    && stored.is_some_and(|f| {
                        crate::plugin_column_type(f.column_type, f.classification) == PluginColumnType::Int
                    })
            })
            .collect();
        let rows = batch_rows.min(MAX_BATCH_ROWS) as usize;
        let scan = match &self.state.entity {
            Some((data, entity)) => match data.scan(*entity, &name, &names, rows) {
                Some(slice) => ScanSource::Entity(slice),
                None => return Ok(Err(DataError::InvalidRequest("a column was named twice".into()))),
            },
            None => match Scan::new(grant.dataset.clone(), &names, rows, self.state.key.clone()) {
                Ok(scan) => ScanSource::Vault(Box::new(scan)),
                Err(ScanError::UnknownColumn { column, .. }) => {
                    return Ok(Err(DataError::ColumnNotGranted(column)));
                }
                Err(e) => return Ok(Err(DataError::InvalidRequest(e.to_string()))),
            },
        };
        self.meter.open_resource()?;
        Ok(Ok(self.resources.push(ScanHandle { scan, widen, charged: 0 })?))
    }

    fn drop(&mut self, dataset: Resource<DatasetHandle>) -> wasmtime::Result<()> {
        self.resources.delete(dataset)?;
        self.meter.close_resource();
        Ok(())
    }
}

impl HostScan for DataView<'_> {
    fn next(&mut self, scan: Resource<ScanHandle>) -> wasmtime::Result<Option<Batch>> {
        self.meter.enter_host_call(0)?;
        let handle = self.resources.get_mut(&scan)?;
        let next = handle.scan.next_batch();
        // A chunk is charged once it has loaded: a run overshoots its budget
        // by at most one chunk (64 K rows, about 32 MiB) before it ends.
        handle.charged = self.meter.hold(handle.charged, handle.scan.held_bytes())?;
        let batch = match next {
            Ok(Some(batch)) => batch,
            Ok(None) => return Ok(None),
            Err(e) => return Err(self.meter.abort(Abort::Host(e.to_string()))),
        };
        let widen = &handle.widen;
        // The gate accepts contributions only for entities handed out here.
        for &pseudonym in &batch.new_entities {
            self.issued.issue(pseudonym);
        }
        self.meter.issued_bytes = self.meter.hold(self.meter.issued_bytes, self.issued.heap_bytes())?;
        Ok(Some(Batch {
            rows: batch.rows as u32,
            columns: batch
                .columns
                .into_iter()
                .zip(widen)
                .map(|(c, &widen)| Column {
                    values: match c.values {
                        BatchValues::Int(v) if widen => {
                            ColumnValues::Float(v.into_iter().map(|i| i as f64).collect())
                        }
                        BatchValues::Int(v) => ColumnValues::Int(v),
                        BatchValues::Float(v) => ColumnValues::Float(v),
                        BatchValues::Bool(v) => ColumnValues::Boolean(v),
                        BatchValues::Timestamp(v) => ColumnValues::Timestamp(v),
                        BatchValues::Text { new_entries, codes } => {
                            ColumnValues::Text(TextColumn { new_entries, codes })
                        }
                        BatchValues::Pseudonym(v) => ColumnValues::Pseudonym(v),
                    },
                    validity: c.validity,
                })
                .collect(),
        }))
    }

    fn drop(&mut self, scan: Resource<ScanHandle>) -> wasmtime::Result<()> {
        let handle = self.resources.delete(scan)?;
        self.meter.close_resource();
        self.meter.hold(handle.charged, 0).map(drop)
    }
}

//! The gate capability (`kanon:plugin/gate`): contributions to the tables
//! the manifest declared, checked and accumulated by `kanon-gate`.

use kanon_gate::{Contributions as GateBatch, IssuedEntities, TenantIntake};
use wasmtime::component::{HasData, Resource, ResourceTable};

use crate::bindings::gate::{self, Contributions, GateError, HostTable};
use crate::sandbox::{Abort, Meter, StoreState};

/// An open output table.
#[derive(Debug)]
pub struct TableHandle {
    index: usize,
}

/// What the gate capability's host functions see of a run's store.
pub(crate) struct GateView<'a> {
    intake: &'a mut TenantIntake,
    issued: &'a IssuedEntities,
    resources: &'a mut ResourceTable,
    meter: &'a mut Meter,
}

/// Marker for linking the gate capability.
pub(crate) struct GateCapability;

impl HasData for GateCapability {
    type Data<'a> = GateView<'a>;
}

impl StoreState {
    pub(crate) fn gate_view(&mut self) -> GateView<'_> {
        GateView {
            intake: &mut self.intake,
            issued: &self.issued,
            resources: &mut self.resources,
            meter: &mut self.meter,
        }
    }
}

pub(crate) fn add_to_linker(linker: &mut wasmtime::component::Linker<StoreState>) -> wasmtime::Result<()> {
    gate::add_to_linker::<StoreState, GateCapability>(linker, StoreState::gate_view)
}

impl gate::Host for GateView<'_> {
    fn open_table(&mut self, name: String) -> wasmtime::Result<Result<Resource<TableHandle>, GateError>> {
        self.meter.enter_host_call(name.len())?;
        let Some(index) = self.intake.table_index(&name) else {
            self.meter.refuse(format!("opened undeclared table `{name}`"));
            return Ok(Err(GateError::UnknownTable(name)));
        };
        self.meter.open_resource()?;
        Ok(Ok(self.resources.push(TableHandle { index })?))
    }
}

impl HostTable for GateView<'_> {
    fn contribute(&mut self, table: Resource<TableHandle>, batch: Contributions) -> wasmtime::Result<()> {
        let rows = batch.entities.len();
        let bytes = rows * 8
            + batch.dimensions.iter().map(|d| d.len() * 4).sum::<usize>()
            + batch.measures.iter().map(|m| m.len() * 8).sum::<usize>();
        self.meter.enter_host_call(bytes)?;
        self.meter.charge_contributions(rows as u64)?;
        let index = self.resources.get(&table)?.index;
        let dimensions: Vec<&[u32]> = batch.dimensions.iter().map(Vec::as_slice).collect();
        let measures: Vec<&[f64]> = batch.measures.iter().map(Vec::as_slice).collect();
        let contributions =
            GateBatch { entities: &batch.entities, dimensions: &dimensions, measures: &measures };
        self.intake
            .contribute(index, self.issued, &contributions)
            .map_err(|violation| self.meter.abort(Abort::Violation(violation.to_string())))?;
        // The per-entity slots grow with the entities a table reaches.
        self.meter.intake_bytes = self.meter.hold(self.meter.intake_bytes, self.intake.heap_bytes())?;
        Ok(())
    }

    fn drop(&mut self, table: Resource<TableHandle>) -> wasmtime::Result<()> {
        self.resources.delete(table)?;
        self.meter.close_resource();
        Ok(())
    }
}

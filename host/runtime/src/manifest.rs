//! The manifest as the runtime reads it from a plugin (converted from WIT
//! and validated at upload) and checks a run's data against. The manifest
//! itself and its pure checks are `kanon_gate`'s ([`Manifest`]), so the
//! daemon's clients can read it without the sandbox.

use std::collections::BTreeMap;

use kanon_gate::{
    ColumnNeed, DatasetNeed, Dimension, Domain, Manifest, ManifestError, Measure, ParamSpec, ParamType,
    PluginColumnType, Statistic, TableSpec,
};
use kanon_vault::{Classification, ColumnType, DatasetVersion};

use crate::bindings::types as wit;

/// How a stored column appears to plugins.
pub fn plugin_column_type(column_type: ColumnType, classification: Classification) -> PluginColumnType {
    if classification.is_pseudonymised() {
        return PluginColumnType::Pseudonym;
    }
    match column_type {
        ColumnType::Int => PluginColumnType::Int,
        ColumnType::Float => PluginColumnType::Float,
        ColumnType::Bool => PluginColumnType::Boolean,
        ColumnType::Text => PluginColumnType::Text,
        ColumnType::Timestamp => PluginColumnType::Timestamp,
    }
}

/// Why the granted data does not fit what the manifest reads.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DataMismatch {
    #[error("the plugin reads dataset `{0}`, which the run was not given")]
    MissingDataset(String),
    #[error("dataset `{dataset}` has no column `{column}`")]
    MissingColumn { dataset: String, column: String },
    #[error("dataset `{dataset}`, column `{column}`: the plugin expects {expected:?}, the data is {found:?}")]
    WrongType { dataset: String, column: String, expected: PluginColumnType, found: PluginColumnType },
    #[error(
        "dataset `{0}` has no entity column and is not marked as reference data: a run needs to know \
         whose rows are whose, or that no row is anyone's"
    )]
    NoEntity(String),
}

/// Convert and validate what the plugin's `manifest()` returned.
pub(crate) fn from_wit(m: wit::Manifest) -> Result<Manifest, ManifestError> {
    let params = m
        .params
        .into_iter()
        .map(|p| {
            let default = match p.default {
                None => None,
                Some(text) => Some(serde_json::from_str(&text).map_err(|e| {
                    ManifestError::Invalid(format!("param `{}`: default is not JSON: {e}", p.name))
                })?),
            };
            Ok(ParamSpec {
                name: p.name,
                param_type: match p.type_ {
                    wit::ParamType::Int => ParamType::Int,
                    wit::ParamType::Float => ParamType::Float,
                    wit::ParamType::Boolean => ParamType::Boolean,
                    wit::ParamType::Text => ParamType::Text,
                },
                description: p.description,
                default,
            })
        })
        .collect::<Result<_, ManifestError>>()?;
    let manifest = Manifest {
        name: m.name,
        version: m.version,
        description: m.description,
        inputs: m
            .inputs
            .into_iter()
            .map(|d| DatasetNeed {
                name: d.name,
                columns: d
                    .columns
                    .into_iter()
                    .map(|c| ColumnNeed {
                        name: c.name,
                        column_type: match c.type_ {
                            wit::ColumnType::Int => PluginColumnType::Int,
                            wit::ColumnType::Float => PluginColumnType::Float,
                            wit::ColumnType::Boolean => PluginColumnType::Boolean,
                            wit::ColumnType::Text => PluginColumnType::Text,
                            wit::ColumnType::Timestamp => PluginColumnType::Timestamp,
                            wit::ColumnType::Pseudonym => PluginColumnType::Pseudonym,
                        },
                    })
                    .collect(),
            })
            .collect(),
        outputs: m.outputs.into_iter().map(table_from_wit).collect(),
        params,
    };
    manifest.validate()?;
    Ok(manifest)
}

/// Check the run's data has every dataset and column the plugin reads,
/// with the types it expects.
pub fn check_data(
    manifest: &Manifest,
    datasets: &BTreeMap<String, DatasetVersion>,
) -> Result<(), DataMismatch> {
    for need in &manifest.inputs {
        let dataset =
            datasets.get(&need.name).ok_or_else(|| DataMismatch::MissingDataset(need.name.clone()))?;
        if dataset.schema().entity().is_none() && !dataset.schema().reference {
            return Err(DataMismatch::NoEntity(need.name.clone()));
        }
        for column in &need.columns {
            let field = dataset.schema().fields.iter().find(|f| f.name == column.name).ok_or_else(|| {
                DataMismatch::MissingColumn { dataset: need.name.clone(), column: column.name.clone() }
            })?;
            let found = plugin_column_type(field.column_type, field.classification);
            if !column.column_type.accepts(found) {
                return Err(DataMismatch::WrongType {
                    dataset: need.name.clone(),
                    column: column.name.clone(),
                    expected: column.column_type,
                    found,
                });
            }
        }
    }
    Ok(())
}

fn table_from_wit(t: wit::TableSpec) -> TableSpec {
    TableSpec {
        name: t.name,
        description: t.description,
        dimensions: t
            .dimensions
            .into_iter()
            .map(|d| Dimension {
                name: d.name,
                domain: match d.domain {
                    wit::Domain::Labels(labels) => Domain::Labels(labels),
                    wit::Domain::Buckets(edges) => Domain::Buckets(edges),
                },
            })
            .collect(),
        measures: t
            .measures
            .into_iter()
            .map(|m| Measure { name: m.name, lower: m.lower, upper: m.upper })
            .collect(),
        statistics: t
            .statistics
            .into_iter()
            .map(|s| match s {
                wit::Statistic::Count => Statistic::Count,
                wit::Statistic::Sum(m) => Statistic::Sum(m),
                wit::Statistic::Mean(m) => Statistic::Mean(m),
                wit::Statistic::Ratio((a, b)) => Statistic::Ratio(a, b),
            })
            .collect(),
        margins: t.margins,
    }
}

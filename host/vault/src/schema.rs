//! Typed schemas and the tenant's column classifications.

use serde::{Deserialize, Serialize};

/// The type of a stored column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ColumnType {
    Int,
    Float,
    Bool,
    Text,
    /// Microseconds since the Unix epoch, UTC.
    Timestamp,
}

impl std::fmt::Display for ColumnType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ColumnType::Int => "int",
            ColumnType::Float => "float",
            ColumnType::Bool => "bool",
            ColumnType::Text => "text",
            ColumnType::Timestamp => "timestamp",
        })
    }
}

/// How the data owner classified a column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Classification {
    /// The privacy unit: exactly one per dataset.
    Entity,
    /// Another personal or customer identifier.
    Identifier,
    /// An ordinary value.
    Attribute,
}

impl Classification {
    /// Whether plugins see this column only as pseudonyms.
    pub fn is_pseudonymised(self) -> bool {
        matches!(self, Classification::Entity | Classification::Identifier)
    }
}

/// One column of a schema.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Field {
    pub name: String,
    pub column_type: ColumnType,
    pub classification: Classification,
}

/// A dataset's columns, in order.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Schema {
    pub fields: Vec<Field>,
    /// The tenant marked the dataset as reference data: no personal data, no
    /// entity or identifier column. An entity-isolated run gives it whole to
    /// every entity's instance.
    #[serde(default)]
    pub reference: bool,
}

impl Schema {
    /// The index of a column by name. Unnamed columns (hidden by a
    /// renamed view) are never found.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.fields.iter().position(|f| !f.name.is_empty() && f.name == name)
    }

    /// The entity column, if the schema has one.
    pub fn entity(&self) -> Option<&Field> {
        self.fields.iter().find(|f| f.classification == Classification::Entity)
    }
}

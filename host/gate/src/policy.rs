//! The disclosure-control settings a run is held to.

use serde::{Deserialize, Serialize};

/// What happens to an entity's contributions beyond its cell limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExcessContributions {
    /// Keep the entity's `max_cells_per_entity` cells of lowest rank (a keyed
    /// hash of entity and cell, so the choice does not depend on order) and
    /// drop the rest.
    #[default]
    Drop,
    /// Abort the run as a contract violation.
    Fail,
}

/// The rules a run's release is held to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Policy {
    /// Minimum distinct entities in a released cell (k).
    pub min_entities: u32,
    /// Most cells of one table a single entity may count towards.
    pub max_cells_per_entity: u32,
    /// What to do with contributions beyond that.
    pub excess_contributions: ExcessContributions,
}

impl Default for Policy {
    fn default() -> Self {
        Self { min_entities: 10, max_cells_per_entity: 1, excess_contributions: ExcessContributions::Drop }
    }
}

/// Why a policy was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PolicyError {
    #[error("policy field `{field}`: {detail}")]
    Invalid { field: &'static str, detail: String },
}

impl Policy {
    /// Most cells per entity a policy may allow: bounds the gate's memory.
    pub const MAX_CELLS_PER_ENTITY: u32 = 64;

    /// Check the values are usable.
    pub fn validate(&self) -> Result<(), PolicyError> {
        if self.min_entities < 2 {
            return Err(PolicyError::Invalid {
                field: "min_entities",
                detail: format!("must be at least 2, got {}", self.min_entities),
            });
        }
        if !(1..=Self::MAX_CELLS_PER_ENTITY).contains(&self.max_cells_per_entity) {
            return Err(PolicyError::Invalid {
                field: "max_cells_per_entity",
                detail: format!(
                    "must be 1 to {}, got {}",
                    Self::MAX_CELLS_PER_ENTITY,
                    self.max_cells_per_entity
                ),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_follow_disclosure_practice() {
        let p = Policy::default();
        assert_eq!((p.min_entities, p.max_cells_per_entity), (10, 1));
        p.validate().unwrap();
    }

    #[test]
    fn unusable_values_name_the_field() {
        let p = Policy { min_entities: 1, ..Policy::default() };
        assert!(p.validate().unwrap_err().to_string().contains("min_entities"));
        let p = Policy { max_cells_per_entity: 0, ..Policy::default() };
        assert!(p.validate().unwrap_err().to_string().contains("max_cells_per_entity"));
    }
}

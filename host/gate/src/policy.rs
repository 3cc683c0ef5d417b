//! The disclosure-control settings a run is held to, and how the layers that
//! set them combine: the operator's floor, each tenant's own policy (never
//! looser than the floor) and the job's request. The strictest value wins.

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
    /// Abort the run as a contract violation. Stricter than `Drop`: nothing
    /// is released.
    Fail,
}

/// The (n, p%) dominance rule: a sum is suppressed when its `n` largest
/// contributors together hold more than `percent` of it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Dominance {
    pub n: u32,
    pub percent: f64,
}

impl Dominance {
    /// Whether the `n` largest contributions (`top`, their absolute values
    /// summed) hold more than `percent` of `total` (absolute values summed).
    pub fn dominated(&self, top: u128, total: u128) -> bool {
        // top / total > percent / 100, without dividing by zero.
        top as f64 * 100.0 > self.percent * total as f64
    }
}

/// The rules a run's release is held to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// Minimum distinct entities in a released cell (k).
    pub min_entities: u32,
    /// The (n, p%) rule over per-entity totals of every released sum.
    pub dominance: Dominance,
    /// Most cells of one table a single entity may count towards.
    pub max_cells_per_entity: u32,
    /// What to do with contributions beyond that.
    pub excess_contributions: ExcessContributions,
    /// Benchmark runs: minimum distinct tenants in a released cell (t).
    pub min_tenants: u32,
    /// Benchmark runs: the largest share of a cell's sum one tenant may hold,
    /// in percent. The dominance rule applies to tenants as well.
    pub max_tenant_percent: f64,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            min_entities: 10,
            dominance: Dominance { n: 2, percent: 90.0 },
            max_cells_per_entity: 1,
            excess_contributions: ExcessContributions::Drop,
            min_tenants: 5,
            max_tenant_percent: 50.0,
        }
    }
}

/// One layer of a policy as written in a file: any field may be left out.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyLayer {
    pub min_entities: Option<u32>,
    pub dominance: Option<Dominance>,
    pub max_cells_per_entity: Option<u32>,
    pub excess_contributions: Option<ExcessContributions>,
    pub min_tenants: Option<u32>,
    pub max_tenant_percent: Option<f64>,
}

/// Why a policy was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PolicyError {
    /// A value is unusable on its own.
    #[error("policy field `{field}`: {detail}")]
    Invalid { field: &'static str, detail: String },
    /// A tenant's policy would relax the operator's floor.
    #[error("policy field `{field}`: {detail}, which is looser than the operator's floor of {floor}")]
    LooserThanFloor { field: &'static str, detail: String, floor: String },
    /// The file is not a valid policy.
    #[error("policy file `{source_name}`: {detail}")]
    Parse { source_name: String, detail: String },
}

impl Policy {
    /// Most cells per entity a policy may allow: bounds the gate's memory.
    pub const MAX_CELLS_PER_ENTITY: u32 = 64;
    /// Largest `n` of the dominance rule: the gate keeps the top `n` per cell.
    pub const MAX_DOMINANCE_N: u32 = 16;

    /// Check the values are usable, naming the first field that is not.
    pub fn validate(&self) -> Result<(), PolicyError> {
        let invalid = |field, detail: String| Err(PolicyError::Invalid { field, detail });
        if self.min_entities < 2 {
            return invalid("min_entities", format!("must be at least 2, got {}", self.min_entities));
        }
        let Dominance { n, percent } = self.dominance;
        if !(1..=Self::MAX_DOMINANCE_N).contains(&n) {
            return invalid("dominance.n", format!("must be 1 to {}, got {n}", Self::MAX_DOMINANCE_N));
        }
        if !(percent > 0.0 && percent <= 100.0) {
            return invalid("dominance.percent", format!("must be above 0 and at most 100, got {percent}"));
        }
        if !(1..=Self::MAX_CELLS_PER_ENTITY).contains(&self.max_cells_per_entity) {
            return invalid(
                "max_cells_per_entity",
                format!("must be 1 to {}, got {}", Self::MAX_CELLS_PER_ENTITY, self.max_cells_per_entity),
            );
        }
        if self.min_tenants < 2 {
            return invalid("min_tenants", format!("must be at least 2, got {}", self.min_tenants));
        }
        let share = self.max_tenant_percent;
        if !(share > 0.0 && share <= 100.0) {
            return invalid("max_tenant_percent", format!("must be above 0 and at most 100, got {share}"));
        }
        Ok(())
    }

    /// An operator's floor: the defaults with `layer` applied as written,
    /// looser or not (the operator sets the floor).
    pub fn floor(layer: &PolicyLayer) -> Result<Policy, PolicyError> {
        let default = Policy::default();
        let floor = Policy {
            min_entities: layer.min_entities.unwrap_or(default.min_entities),
            dominance: layer.dominance.unwrap_or(default.dominance),
            max_cells_per_entity: layer.max_cells_per_entity.unwrap_or(default.max_cells_per_entity),
            excess_contributions: layer.excess_contributions.unwrap_or(default.excess_contributions),
            min_tenants: layer.min_tenants.unwrap_or(default.min_tenants),
            max_tenant_percent: layer.max_tenant_percent.unwrap_or(default.max_tenant_percent),
        };
        floor.validate()?;
        Ok(floor)
    }

    /// Refuse a tenant's layer that relaxes any field of this floor.
    pub fn check_not_looser(&self, layer: &PolicyLayer) -> Result<(), PolicyError> {
        let looser =
            |field, detail: String, floor: String| Err(PolicyError::LooserThanFloor { field, detail, floor });
        if let Some(k) = layer.min_entities.filter(|&k| k < self.min_entities) {
            return looser("min_entities", format!("{k}"), self.min_entities.to_string());
        }
        if let Some(d) = layer.dominance {
            if d.n < self.dominance.n {
                return looser("dominance.n", d.n.to_string(), self.dominance.n.to_string());
            }
            if d.percent > self.dominance.percent {
                return looser(
                    "dominance.percent",
                    d.percent.to_string(),
                    self.dominance.percent.to_string(),
                );
            }
        }
        if let Some(c) = layer.max_cells_per_entity.filter(|&c| c > self.max_cells_per_entity) {
            return looser("max_cells_per_entity", c.to_string(), self.max_cells_per_entity.to_string());
        }
        if layer.excess_contributions == Some(ExcessContributions::Drop)
            && self.excess_contributions == ExcessContributions::Fail
        {
            return looser("excess_contributions", "drop".into(), "fail".into());
        }
        if let Some(t) = layer.min_tenants.filter(|&t| t < self.min_tenants) {
            return looser("min_tenants", t.to_string(), self.min_tenants.to_string());
        }
        if let Some(s) = layer.max_tenant_percent.filter(|&s| s > self.max_tenant_percent) {
            return looser("max_tenant_percent", s.to_string(), self.max_tenant_percent.to_string());
        }
        Ok(())
    }

    /// This policy with every field of `layer` that is stricter applied:
    /// the strictest value wins, field by field.
    pub fn tightened(&self, layer: &PolicyLayer) -> Policy {
        let dominance = layer.dominance.map_or(self.dominance, |d| Dominance {
            n: d.n.max(self.dominance.n),
            percent: d.percent.min(self.dominance.percent),
        });
        let excess = match layer.excess_contributions {
            Some(ExcessContributions::Fail) => ExcessContributions::Fail,
            _ => self.excess_contributions,
        };
        Policy {
            min_entities: layer.min_entities.map_or(self.min_entities, |k| k.max(self.min_entities)),
            dominance,
            max_cells_per_entity: layer
                .max_cells_per_entity
                .map_or(self.max_cells_per_entity, |c| c.min(self.max_cells_per_entity)),
            excess_contributions: excess,
            min_tenants: layer.min_tenants.map_or(self.min_tenants, |t| t.max(self.min_tenants)),
            max_tenant_percent: layer
                .max_tenant_percent
                .map_or(self.max_tenant_percent, |s| s.min(self.max_tenant_percent)),
        }
    }

    /// The policy of a run: the floor, tightened by every participating
    /// tenant's layer (each refused if looser than the floor) and by the
    /// job's request (which can only tighten).
    pub fn for_run<'a>(
        floor: &Policy,
        tenants: impl IntoIterator<Item = &'a PolicyLayer>,
        job: &PolicyLayer,
    ) -> Result<Policy, PolicyError> {
        floor.validate()?;
        let mut policy = floor.clone();
        for tenant in tenants {
            floor.check_not_looser(tenant)?;
            policy = policy.tightened(tenant);
        }
        let policy = policy.tightened(job);
        policy.validate()?;
        Ok(policy)
    }
}

impl PolicyLayer {
    /// Parse and check a policy file. `source_name` names it in errors.
    pub fn from_toml(source_name: &str, text: &str) -> Result<PolicyLayer, PolicyError> {
        let layer: PolicyLayer = toml::from_str(text)
            .map_err(|e| PolicyError::Parse { source_name: source_name.to_owned(), detail: e.to_string() })?;
        // Each value must be usable on its own, whatever the other layers say.
        Policy::floor(&layer)?;
        Ok(layer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_follow_disclosure_practice() {
        let p = Policy::default();
        assert_eq!((p.min_entities, p.max_cells_per_entity, p.min_tenants), (10, 1, 5));
        assert_eq!(p.dominance, Dominance { n: 2, percent: 90.0 });
        assert_eq!(p.max_tenant_percent, 50.0);
        p.validate().unwrap();
    }

    #[test]
    fn unusable_values_name_the_field() {
        let cases: Vec<(Policy, &str)> = vec![
            (Policy { min_entities: 1, ..Policy::default() }, "min_entities"),
            (Policy { max_cells_per_entity: 0, ..Policy::default() }, "max_cells_per_entity"),
            (Policy { dominance: Dominance { n: 0, percent: 90.0 }, ..Policy::default() }, "dominance.n"),
            (
                Policy { dominance: Dominance { n: 2, percent: 100.5 }, ..Policy::default() },
                "dominance.percent",
            ),
            (Policy { min_tenants: 1, ..Policy::default() }, "min_tenants"),
            (Policy { max_tenant_percent: f64::NAN, ..Policy::default() }, "max_tenant_percent"),
        ];
        for (policy, field) in cases {
            let err = policy.validate().unwrap_err().to_string();
            assert!(err.contains(&format!("`{field}`")), "{err}");
        }
    }

    #[test]
    fn files_parse_and_errors_name_the_field() {
        let layer = PolicyLayer::from_toml(
            "tenant.toml",
            "min_entities = 20\nmax_tenant_percent = 40\n[dominance]\nn = 3\npercent = 80\n",
        )
        .unwrap();
        assert_eq!(layer.min_entities, Some(20));
        assert_eq!(layer.dominance, Some(Dominance { n: 3, percent: 80.0 }));
        assert_eq!(layer.max_tenant_percent, Some(40.0));

        let err = PolicyLayer::from_toml("t.toml", "min_entites = 20\n").unwrap_err().to_string();
        assert!(err.contains("t.toml") && err.contains("min_entites"), "{err}");
        let err = PolicyLayer::from_toml("t.toml", "min_entities = \"ten\"\n").unwrap_err().to_string();
        assert!(err.contains("min_entities"), "{err}");
        let err = PolicyLayer::from_toml("t.toml", "min_entities = 1\n").unwrap_err().to_string();
        assert!(err.contains("`min_entities`"), "{err}");
        let err = PolicyLayer::from_toml("t.toml", "[dominance]\nn = 2\n").unwrap_err().to_string();
        assert!(err.contains("percent"), "{err}");
        let err = PolicyLayer::from_toml("t.toml", "excess_contributions = \"average\"\n").unwrap_err();
        assert!(err.to_string().contains("excess_contributions"), "{err}");
    }

    #[test]
    fn a_tenant_may_only_tighten_the_floor() {
        let floor = Policy::default();
        let looser = [
            ("min_entities = 5", "min_entities"),
            ("[dominance]\nn = 1\npercent = 90", "dominance.n"),
            ("[dominance]\nn = 2\npercent = 95", "dominance.percent"),
            ("max_cells_per_entity = 2", "max_cells_per_entity"),
            ("min_tenants = 3", "min_tenants"),
            ("max_tenant_percent = 60", "max_tenant_percent"),
        ];
        for (text, field) in looser {
            let layer = PolicyLayer::from_toml("tenant.toml", text).unwrap();
            let err = Policy::for_run(&floor, [&layer], &PolicyLayer::default()).unwrap_err();
            assert!(matches!(err, PolicyError::LooserThanFloor { field: f, .. } if f == field), "{err}");
            assert!(err.to_string().contains("looser than the operator's floor"), "{err}");
        }
        let fail_floor = Policy { excess_contributions: ExcessContributions::Fail, ..Policy::default() };
        let drop = PolicyLayer::from_toml("tenant.toml", "excess_contributions = \"drop\"").unwrap();
        assert!(Policy::for_run(&fail_floor, [&drop], &PolicyLayer::default()).is_err());
    }

    #[test]
    fn the_strictest_value_wins_across_participants() {
        let floor = Policy::default();
        let a = PolicyLayer::from_toml("a", "min_entities = 20\n[dominance]\nn = 2\npercent = 80").unwrap();
        let b = PolicyLayer::from_toml("b", "min_entities = 15\n[dominance]\nn = 3\npercent = 90").unwrap();
        // The job asks for less than the tenants: it cannot loosen anything.
        let job = PolicyLayer::from_toml("job", "min_entities = 12\nmin_tenants = 7").unwrap();
        let policy = Policy::for_run(&floor, [&a, &b], &job).unwrap();
        assert_eq!(policy.min_entities, 20);
        assert_eq!(policy.dominance, Dominance { n: 3, percent: 80.0 });
        assert_eq!(policy.min_tenants, 7);
        assert_eq!(policy.max_cells_per_entity, 1);
        let fail = PolicyLayer::from_toml("job", "excess_contributions = \"fail\"").unwrap();
        let policy = Policy::for_run(&floor, [], &fail).unwrap();
        assert_eq!(policy.excess_contributions, ExcessContributions::Fail);
    }

    #[test]
    fn an_operator_floor_may_be_set_either_way() {
        let floor = Policy::floor(&PolicyLayer::from_toml("floor", "min_entities = 5").unwrap()).unwrap();
        assert_eq!(floor.min_entities, 5);
        assert_eq!(floor.dominance, Policy::default().dominance);
    }

    #[test]
    fn dominance_compares_shares() {
        let d = Dominance { n: 2, percent: 90.0 };
        assert!(d.dominated(91, 100));
        assert!(!d.dominated(90, 100));
        assert!(!d.dominated(0, 0));
    }
}

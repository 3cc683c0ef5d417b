//! Short constructors for manifest entries.

use crate::{ColumnNeed, ColumnType, DatasetNeed, Dimension, Domain, Measure, ParamSpec, ParamType};

/// A dataset the plugin reads, with the columns it needs.
pub fn dataset(name: &str, columns: &[(&str, ColumnType)]) -> DatasetNeed {
    DatasetNeed {
        name: name.to_owned(),
        columns: columns.iter().map(|&(name, type_)| ColumnNeed { name: name.to_owned(), type_ }).collect(),
    }
}

/// A dimension whose codes are the indexes of `labels`.
pub fn labels(name: &str, labels: &[&str]) -> Dimension {
    Dimension {
        name: name.to_owned(),
        domain: Domain::Labels(labels.iter().map(|&l| l.to_owned()).collect()),
    }
}

/// A dimension of numeric buckets: code i is `[edges[i], edges[i + 1])`.
pub fn buckets(name: &str, edges: &[f64]) -> Dimension {
    Dimension { name: name.to_owned(), domain: Domain::Buckets(edges.to_vec()) }
}

/// A measure whose contributions the gate clamps to `[lower, upper]`.
pub fn measure(name: &str, lower: f64, upper: f64) -> Measure {
    Measure { name: name.to_owned(), lower, upper }
}

/// A run parameter; `default` is JSON text, and `None` makes it required.
pub fn param(name: &str, type_: ParamType, description: &str, default: Option<&str>) -> ParamSpec {
    ParamSpec {
        name: name.to_owned(),
        type_,
        description: description.to_owned(),
        default: default.map(str::to_owned),
    }
}

impl Dimension {
    /// The domain code of a numeric value, or `None` outside every bucket
    /// (and for label domains).
    pub fn bucket_of(&self, value: f64) -> Option<u32> {
        match &self.domain {
            Domain::Buckets(edges) => bucket_of(edges, value),
            Domain::Labels(_) => None,
        }
    }
}

/// The bucket of `value` among ascending `edges`: i when
/// `edges[i] <= value < edges[i + 1]`.
pub(crate) fn bucket_of(edges: &[f64], value: f64) -> Option<u32> {
    if edges.len() < 2 || !(edges[0] <= value && value < edges[edges.len() - 1]) {
        return None;
    }
    let upper = edges.partition_point(|&edge| edge <= value);
    u32::try_from(upper - 1).ok()
}

#[cfg(test)]
mod tests {
    use super::bucket_of;

    #[test]
    fn buckets_are_half_open() {
        let edges = [0.0, 10.0, 20.0];
        assert_eq!(bucket_of(&edges, -0.1), None);
        assert_eq!(bucket_of(&edges, 0.0), Some(0));
        assert_eq!(bucket_of(&edges, 9.99), Some(0));
        assert_eq!(bucket_of(&edges, 10.0), Some(1));
        assert_eq!(bucket_of(&edges, 20.0), None);
        assert_eq!(bucket_of(&edges, f64::NAN), None);
    }
}

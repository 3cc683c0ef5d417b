//! Output tables as the manifest declares them: finite domains, bounded
//! measures, and the statistics to release.

use serde::{Deserialize, Serialize};

/// Most dimensions a table may have.
pub const MAX_DIMENSIONS: usize = 8;
/// Most cells (product of domain sizes) a table may have.
pub const MAX_CELLS: usize = 1 << 20;
/// Most released cells (totals included) times released sums a table may
/// have: bounds the gate's memory at release, about 100 bytes each.
pub const MAX_RELEASED_SUMS: usize = 1 << 21;
/// Most released cells (totals included) all of a plugin's tables may have
/// together: bounds what its declarations cost the host at release.
///
/// Measured (`examples/release_memory.rs`, peak live heap during the
/// release, per released cell): about 150 bytes for a table of buckets with
/// three statistics, and 4.6 KB for the most a declaration can ask for per
/// cell (eight dimensions of 256-byte labels, 16 summed measures, 32
/// statistics, dominance over the 16 largest). So a plugin's release costs
/// a tenant's run at most about 150 MB, and a benchmark about 90 MB plus
/// 175 MB per tenant (each tenant's own values and position). Every table
/// counts, derived ones too, whatever its family.
pub const MAX_RELEASED_CELLS: usize = 1 << 15;
/// Most statistics a table may release per cell.
pub const MAX_STATISTICS: usize = 32;
/// Longest label, bucket labels (`[lo, hi)`) included, in bytes.
const MAX_LABEL: usize = 256;

/// An output table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TableSpec {
    pub name: String,
    pub description: String,
    pub dimensions: Vec<Dimension>,
    pub measures: Vec<Measure>,
    pub statistics: Vec<Statistic>,
    /// The plugin asks for per-dimension totals and a grand total.
    pub margins: bool,
}

/// A group key with a finite, declared domain.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Dimension {
    pub name: String,
    pub domain: Domain,
}

/// Every value a dimension can take.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Domain {
    /// Code i is the i-th label.
    Labels(Vec<String>),
    /// Ascending edges; code i is `[edges[i], edges[i + 1])`.
    Buckets(Vec<f64>),
}

impl Domain {
    /// How many codes the domain has.
    pub fn len(&self) -> usize {
        match self {
            Domain::Labels(labels) => labels.len(),
            Domain::Buckets(edges) => edges.len().saturating_sub(1),
        }
    }

    /// Whether the domain has no codes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The label of a code: the label itself, or the bucket as `[lo, hi)`.
    pub fn label(&self, code: usize) -> String {
        match self {
            Domain::Labels(labels) => labels[code].clone(),
            Domain::Buckets(edges) => format!("[{}, {})", edges[code], edges[code + 1]),
        }
    }
}

/// A numeric measure and the bounds every contribution is clamped to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Measure {
    pub name: String,
    pub lower: f64,
    pub upper: f64,
}

/// A statistic released per cell.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Statistic {
    /// Distinct entities.
    Count,
    /// Sum of a measure.
    Sum(String),
    /// Sum of a measure over distinct entities.
    Mean(String),
    /// Sum of the first measure over the sum of the second.
    Ratio(String, String),
}

impl Statistic {
    /// The column name of this statistic in a released table.
    pub fn column_name(&self) -> String {
        match self {
            Statistic::Count => "count".to_owned(),
            Statistic::Sum(m) => format!("sum({m})"),
            Statistic::Mean(m) => format!("mean({m})"),
            Statistic::Ratio(a, b) => format!("ratio({a}/{b})"),
        }
    }
}

/// Why a table spec was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SpecError {
    #[error("table `{table}`: {detail}")]
    Invalid { table: String, detail: String },
    #[error("two output tables are named `{0}`")]
    DuplicateTable(String),
    /// The tables together release more cells than a plugin may.
    #[error(
        "the output tables release {cells} cells in all (totals included), more than the {max} a plugin \
         may release; declare fewer or smaller tables"
    )]
    TooManyReleasedCells { cells: usize, max: usize },
}

impl TableSpec {
    /// How many cells the table has (product of domain sizes).
    pub fn cell_count(&self) -> usize {
        self.dimensions.iter().map(|d| d.domain.len()).product()
    }

    /// How many cells the table releases: its cells and, with margins, every
    /// total. Saturates rather than overflow.
    pub fn released_cells(&self) -> usize {
        self.dimensions
            .iter()
            .fold(1usize, |n, d| n.saturating_mul(d.domain.len() + usize::from(self.margins)))
    }

    /// The index of a measure by name.
    pub fn measure_index(&self, name: &str) -> Option<usize> {
        self.measures.iter().position(|m| m.name == name)
    }

    /// Check everything the gate relies on.
    pub fn validate(&self) -> Result<(), SpecError> {
        let invalid = |detail: String| SpecError::Invalid { table: self.name.clone(), detail };
        if !is_name(&self.name) {
            return Err(invalid("the table name must be 1-64 letters, digits, `_` or `-`".into()));
        }
        if self.dimensions.is_empty() || self.dimensions.len() > MAX_DIMENSIONS {
            return Err(invalid(format!("needs 1 to {MAX_DIMENSIONS} dimensions")));
        }
        let mut names = std::collections::BTreeSet::new();
        let mut cells: usize = 1;
        for d in &self.dimensions {
            if !is_name(&d.name) || !names.insert(d.name.as_str()) {
                return Err(invalid(format!("dimension name `{}` is invalid or repeated", d.name)));
            }
            match &d.domain {
                Domain::Labels(labels) => {
                    let distinct: std::collections::BTreeSet<_> = labels.iter().collect();
                    let bad = |l: &String| l.is_empty() || l.len() > MAX_LABEL || l == crate::TOTAL_LABEL;
                    if distinct.len() != labels.len() || labels.iter().any(bad) {
                        return Err(invalid(format!(
                            "dimension `{}` has empty, long, repeated or `*` labels (`*` marks totals)",
                            d.name
                        )));
                    }
                }
                Domain::Buckets(edges) => {
                    if !edges.iter().all(|e| e.is_finite()) || !edges.windows(2).all(|w| w[0] < w[1]) {
                        return Err(invalid(format!(
                            "dimension `{}` needs finite, strictly ascending edges",
                            d.name
                        )));
                    }
                    // Every released key repeats its labels (`[lo, hi)`), and
                    // `1e300` is written out in 301 digits.
                    let lengths: Vec<usize> = edges.iter().map(|e| e.to_string().len()).collect();
                    if lengths.windows(2).any(|w| w[0] + w[1] + "[, )".len() > MAX_LABEL) {
                        return Err(invalid(format!(
                            "dimension `{}` has bucket labels longer than {MAX_LABEL} bytes",
                            d.name
                        )));
                    }
                }
            }
            if d.domain.is_empty() {
                return Err(invalid(format!("dimension `{}` has an empty domain", d.name)));
            }
            cells = cells.saturating_mul(d.domain.len());
        }
        if cells > MAX_CELLS {
            return Err(invalid(format!("has {cells} cells, more than {MAX_CELLS}")));
        }
        if self.measures.len() > crate::MAX_MEASURES {
            return Err(invalid(format!("declares more than {} measures", crate::MAX_MEASURES)));
        }
        for m in &self.measures {
            if !is_name(&m.name) || !names.insert(m.name.as_str()) {
                return Err(invalid(format!("measure name `{}` is invalid or repeated", m.name)));
            }
            if !(m.lower.is_finite() && m.upper.is_finite() && m.lower <= m.upper) {
                return Err(invalid(format!("measure `{}` needs finite bounds with lower <= upper", m.name)));
            }
        }
        let released = self.released_cells();
        let sums = self.summed_measures().len();
        if released.saturating_mul(sums) > MAX_RELEASED_SUMS {
            return Err(invalid(format!(
                "releases {sums} sums over {released} cells, more than {MAX_RELEASED_SUMS} values"
            )));
        }
        if self.statistics.is_empty() || self.statistics.len() > MAX_STATISTICS {
            return Err(invalid(format!("releases no statistic or more than {MAX_STATISTICS}")));
        }
        for s in &self.statistics {
            let refs: &[&String] = match s {
                Statistic::Count => &[],
                Statistic::Sum(m) | Statistic::Mean(m) => &[m],
                Statistic::Ratio(a, b) => &[a, b],
            };
            if let Some(missing) = refs.iter().find(|m| self.measure_index(m).is_none()) {
                return Err(invalid(format!(
                    "statistic {} names no declared measure `{missing}`",
                    s.column_name()
                )));
            }
        }
        Ok(())
    }
}

impl TableSpec {
    /// Measures whose sums the table releases (directly or in a mean or
    /// ratio), by index, ascending.
    pub fn summed_measures(&self) -> Vec<usize> {
        let mut measures: Vec<usize> = self
            .statistics
            .iter()
            .flat_map(|s| match s {
                Statistic::Count => vec![],
                Statistic::Sum(m) | Statistic::Mean(m) => vec![m.as_str()],
                Statistic::Ratio(a, b) => vec![a.as_str(), b.as_str()],
            })
            .filter_map(|m| self.measure_index(m))
            .collect();
        measures.sort_unstable();
        measures.dedup();
        measures
    }
}

/// Validate a set of tables: each on its own, their names unique, the cells
/// they release together within [`MAX_RELEASED_CELLS`], and the tables that
/// margins and nesting link small enough to check and derivable from one of
/// them. The runtime calls this at upload.
pub fn validate_tables(tables: &[TableSpec]) -> Result<(), SpecError> {
    // First, as it is cheap: validating a table of a million buckets is not.
    let cells = tables.iter().fold(0usize, |n, t| n.saturating_add(t.released_cells()));
    if cells > MAX_RELEASED_CELLS {
        return Err(SpecError::TooManyReleasedCells { cells, max: MAX_RELEASED_CELLS });
    }
    let mut names = std::collections::BTreeSet::new();
    for t in tables {
        t.validate()?;
        if !names.insert(t.name.as_str()) {
            return Err(SpecError::DuplicateTable(t.name.clone()));
        }
    }
    crate::suppression::families(tables)?;
    Ok(())
}

/// Names that are safe in paths, CSV headers and logs.
pub(crate) fn is_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn spec() -> TableSpec {
        TableSpec {
            name: "t".into(),
            description: String::new(),
            dimensions: vec![Dimension {
                name: "region".into(),
                domain: Domain::Labels(vec!["n".into(), "s".into()]),
            }],
            measures: vec![Measure { name: "fuel".into(), lower: 0.0, upper: 10.0 }],
            statistics: vec![Statistic::Count, Statistic::Sum("fuel".into())],
            margins: false,
        }
    }

    #[test]
    fn a_valid_spec_passes() {
        spec().validate().unwrap();
    }

    #[test]
    fn bad_specs_are_refused_with_the_reason() {
        type Mutation = fn(&mut TableSpec);
        let cases: Vec<(Mutation, &str)> = vec![
            (|s| s.dimensions.clear(), "dimensions"),
            (|s| s.dimensions[0].domain = Domain::Labels(vec![]), "empty domain"),
            (|s| s.dimensions[0].domain = Domain::Labels(vec!["a".into(), "a".into()]), "repeated"),
            (|s| s.dimensions[0].domain = Domain::Labels(vec!["a".into(), "*".into()]), "`*` marks totals"),
            (|s| s.dimensions[0].domain = Domain::Buckets(vec![0.0, 0.0]), "ascending"),
            (|s| s.dimensions[0].domain = Domain::Buckets(vec![0.0, f64::INFINITY]), "finite"),
            (|s| s.measures[0].upper = -1.0, "bounds"),
            (|s| s.measures[0].lower = f64::NAN, "bounds"),
            (|s| s.statistics = vec![Statistic::Sum("nope".into())], "no declared measure"),
            (|s| s.statistics.clear(), "no statistic"),
            (|s| s.statistics = vec![Statistic::Count; 33], "more than 32"),
            (|s| s.dimensions[0].domain = Domain::Buckets(vec![0.0, 1e300]), "longer than 256 bytes"),
            (|s| s.name = "../etc".into(), "table name"),
            (
                |s| {
                    let wide = Domain::Buckets((0..=1000).map(f64::from).collect());
                    s.dimensions = vec![
                        Dimension { name: "a".into(), domain: wide.clone() },
                        Dimension { name: "b".into(), domain: wide },
                    ];
                    s.margins = true;
                    for more in ["more", "most"] {
                        s.measures.push(Measure { name: more.into(), lower: 0.0, upper: 1.0 });
                        s.statistics.push(Statistic::Mean(more.into()));
                    }
                },
                "values",
            ),
            (
                |s| {
                    let big = Domain::Buckets((0..=1100).map(f64::from).collect());
                    s.dimensions = vec![
                        Dimension { name: "a".into(), domain: big.clone() },
                        Dimension { name: "b".into(), domain: big },
                    ];
                },
                "more than",
            ),
        ];
        for (mutate, expected) in cases {
            let mut s = spec();
            mutate(&mut s);
            let err = s.validate().unwrap_err().to_string();
            assert!(err.contains(expected), "`{err}` should mention `{expected}`");
        }
    }

    /// A table of `cells` buckets, and margins, linked to no other.
    fn buckets(name: &str, cells: usize, margins: bool) -> TableSpec {
        let mut t = spec();
        t.name = name.into();
        t.dimensions[0].name = name.into();
        t.dimensions[0].domain = Domain::Buckets((0..=cells).map(|e| e as f64).collect());
        t.margins = margins;
        t
    }

    #[test]
    fn the_cells_of_all_tables_count_against_one_bound() {
        // Each table alone is well within its own limits.
        let half = MAX_RELEASED_CELLS / 2;
        let tables = [buckets("a", half, false), buckets("b", half - 1, false)];
        validate_tables(&tables).unwrap();
        for t in &tables {
            validate_tables(std::slice::from_ref(t)).unwrap();
        }
        // One more cell, or a total, is over.
        let over = [buckets("a", half, false), buckets("b", half, false), buckets("c", 1, false)];
        let err = validate_tables(&over).unwrap_err();
        assert_eq!(
            err,
            SpecError::TooManyReleasedCells { cells: MAX_RELEASED_CELLS + 1, max: MAX_RELEASED_CELLS }
        );
        assert!(err.to_string().contains(&format!("{} cells in all", MAX_RELEASED_CELLS + 1)), "{err}");
        assert!(err.to_string().contains(&MAX_RELEASED_CELLS.to_string()), "{err}");
        // 32 tables of a million cells each, as upload allowed before.
        let many: Vec<TableSpec> = (0..32).map(|i| buckets(&format!("t{i}"), 1 << 20, false)).collect();
        assert!(matches!(validate_tables(&many), Err(SpecError::TooManyReleasedCells { .. })));
    }

    #[test]
    fn totals_are_released_cells_too() {
        let mut t = spec();
        t.dimensions = vec![
            Dimension { name: "a".into(), domain: Domain::Labels(vec!["x".into(), "y".into()]) },
            Dimension { name: "b".into(), domain: Domain::Buckets(vec![0.0, 1.0, 2.0, 3.0]) },
        ];
        assert_eq!(t.released_cells(), 6);
        t.margins = true;
        assert_eq!(t.released_cells(), 12);
    }

    #[test]
    fn duplicate_table_names_are_refused() {
        assert_eq!(validate_tables(&[spec(), spec()]), Err(SpecError::DuplicateTable("t".into())));
    }

    #[test]
    fn bucket_labels_are_half_open_ranges() {
        assert_eq!(Domain::Buckets(vec![16.0, 25.0, 35.0]).label(1), "[25, 35)");
    }
}

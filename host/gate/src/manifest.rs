//! What a plugin declares (its manifest): the datasets and columns it
//! reads, the tables it releases and the parameters it takes, and the
//! checks the host relies on. Read from the plugin by the runtime at upload,
//! kept in the daemon's registry, approved by the tenant, enforced on every
//! run, and served to clients; so it lives here, beside the table specs it
//! holds, free of wasmtime and of the vault.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{Domain, SpecError, TableSpec};

/// Bounds on a manifest's size, so a hostile one cannot bloat the registry.
const MAX_INPUTS: usize = 32;
const MAX_COLUMNS: usize = 256;
const MAX_OUTPUTS: usize = 32;
const MAX_PARAMS: usize = 64;
const MAX_TEXT: usize = 4096;
/// The whole manifest as the registry stores and serves it (JSON).
pub const MAX_MANIFEST_BYTES: usize = 1 << 20;

/// Whether plugin-supplied text is safe to show in a terminal or a log: no
/// control characters (escape sequences, carriage returns that redraw a
/// row) and no bidirectional overrides that reorder what a reader sees.
pub fn is_printable(text: &str) -> bool {
    text.chars().all(is_printable_char)
}

/// One character of [`is_printable`] text.
pub fn is_printable_char(c: char) -> bool {
    !(c.is_control()
        || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}'))
}

/// What a plugin reads and emits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub name: String,
    pub version: String,
    pub description: String,
    pub inputs: Vec<DatasetNeed>,
    pub outputs: Vec<TableSpec>,
    pub params: Vec<ParamSpec>,
}

/// A dataset a plugin reads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatasetNeed {
    pub name: String,
    pub columns: Vec<ColumnNeed>,
}

/// A column a plugin reads, with the type it expects.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ColumnNeed {
    pub name: String,
    pub column_type: PluginColumnType,
}

/// A column's type as the plugin sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PluginColumnType {
    Int,
    Float,
    Boolean,
    Text,
    Timestamp,
    /// An `entity` or `identifier` column, as pseudonyms.
    Pseudonym,
}

impl PluginColumnType {
    /// Its name, as in the manifest's JSON.
    pub fn name(self) -> &'static str {
        match self {
            Self::Int => "int",
            Self::Float => "float",
            Self::Boolean => "boolean",
            Self::Text => "text",
            Self::Timestamp => "timestamp",
            Self::Pseudonym => "pseudonym",
        }
    }

    /// Whether a plugin expecting `self` can read a column of type `found`:
    /// the same type, or ints where floats are expected (widened on read).
    pub fn accepts(self, found: PluginColumnType) -> bool {
        self == found || (self == Self::Float && found == Self::Int)
    }
}

/// A run parameter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ParamSpec {
    pub name: String,
    pub param_type: ParamType,
    pub description: String,
    /// `None`: the parameter is required.
    pub default: Option<Value>,
}

/// A parameter's JSON type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ParamType {
    Int,
    Float,
    Boolean,
    Text,
}

impl ParamType {
    fn accepts(self, value: &Value) -> bool {
        match self {
            ParamType::Int => value.is_i64() || value.is_u64(),
            ParamType::Float => value.is_number(),
            ParamType::Boolean => value.is_boolean(),
            ParamType::Text => value.is_string(),
        }
    }
}

/// Why a manifest was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ManifestError {
    #[error("manifest: {0}")]
    Invalid(String),
    #[error("manifest: {0}")]
    Table(#[from] SpecError),
}

/// Why a run's parameters were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParamsError {
    #[error("params are not a JSON object: {0}")]
    NotAnObject(String),
    #[error("param `{0}` is not declared by the plugin")]
    Unknown(String),
    #[error("param `{0}` is required")]
    Missing(String),
    #[error("param `{name}` must be of type {expected:?}")]
    WrongType { name: String, expected: ParamType },
}

fn is_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

impl Manifest {
    /// Check everything the host relies on.
    pub fn validate(&self) -> Result<(), ManifestError> {
        let invalid = |s: String| Err(ManifestError::Invalid(s));
        if !is_name(&self.name) {
            return invalid("the plugin name must be 1-64 letters, digits, `_` or `-`".into());
        }
        if self.version.is_empty() || self.version.len() > 64 || self.description.len() > MAX_TEXT {
            return invalid("version must be 1-64 characters and the description at most 4 KiB".into());
        }
        if let Some(field) = self.unprintable_field() {
            return invalid(format!("{field} holds control or bidirectional-override characters"));
        }
        if self.inputs.len() > MAX_INPUTS || self.outputs.is_empty() || self.outputs.len() > MAX_OUTPUTS {
            return invalid(format!("needs at most {MAX_INPUTS} inputs and 1 to {MAX_OUTPUTS} outputs"));
        }
        for (i, d) in self.inputs.iter().enumerate() {
            if !is_name(&d.name) || self.inputs[..i].iter().any(|o| o.name == d.name) {
                return invalid(format!("dataset name `{}` is invalid or repeated", d.name));
            }
            if d.columns.is_empty() || d.columns.len() > MAX_COLUMNS {
                return invalid(format!("dataset `{}` must read 1 to {MAX_COLUMNS} columns", d.name));
            }
            for (j, c) in d.columns.iter().enumerate() {
                if c.name.is_empty() || c.name.len() > 256 || d.columns[..j].iter().any(|o| o.name == c.name)
                {
                    return invalid(format!(
                        "dataset `{}`: column `{}` is invalid or repeated",
                        d.name, c.name
                    ));
                }
            }
        }
        crate::validate_tables(&self.outputs)?;
        if self.params.len() > MAX_PARAMS {
            return invalid(format!("declares more than {MAX_PARAMS} params"));
        }
        for (i, p) in self.params.iter().enumerate() {
            if !is_name(&p.name)
                || self.params[..i].iter().any(|o| o.name == p.name)
                || p.description.len() > MAX_TEXT
            {
                return invalid(format!("param `{}` is invalid or repeated", p.name));
            }
            if let Some(default) = &p.default
                && !p.param_type.accepts(default)
            {
                return invalid(format!("param `{}`: default does not have type {:?}", p.name, p.param_type));
            }
        }
        // Every part is bounded above, but their product is not: the whole
        // is what the registry stores and every listing returns.
        let size = serde_json::to_vec(self).map_or(usize::MAX, |json| json.len());
        if size > MAX_MANIFEST_BYTES {
            return invalid(format!("is {size} bytes as JSON, more than the {MAX_MANIFEST_BYTES} allowed"));
        }
        Ok(())
    }

    /// The first plugin-supplied text that is not [`is_printable`], named.
    fn unprintable_field(&self) -> Option<String> {
        let mut texts: Vec<(String, &str)> =
            vec![("the version".into(), &self.version), ("the description".into(), &self.description)];
        for d in &self.inputs {
            texts
                .extend(d.columns.iter().map(|c| (format!("dataset `{}`: a column name", d.name), &*c.name)));
        }
        for t in &self.outputs {
            texts.push((format!("table `{}`: the description", t.name), &t.description));
            for d in &t.dimensions {
                if let Domain::Labels(labels) = &d.domain {
                    texts.extend(
                        labels.iter().map(|l| (format!("table `{}`: a label of `{}`", t.name, d.name), &**l)),
                    );
                }
            }
        }
        for p in &self.params {
            texts.push((format!("param `{}`: the description", p.name), &p.description));
            if let Some(Value::String(default)) = &p.default {
                texts.push((format!("param `{}`: the default", p.name), default));
            }
        }
        texts.into_iter().find(|(_, text)| !is_printable(text)).map(|(field, _)| field)
    }

    /// Check a run's params against the declaration and fill in defaults:
    /// the plugin receives exactly the object returned.
    pub fn check_params(&self, params: &str) -> Result<String, ParamsError> {
        let text = if params.trim().is_empty() { "{}" } else { params };
        let value: Value = serde_json::from_str(text).map_err(|e| ParamsError::NotAnObject(e.to_string()))?;
        let Value::Object(mut given) = value else {
            return Err(ParamsError::NotAnObject("found another JSON value".into()));
        };
        if let Some(unknown) = given.keys().find(|k| !self.params.iter().any(|p| &p.name == *k)) {
            return Err(ParamsError::Unknown(unknown.clone()));
        }
        for p in &self.params {
            match given.get(&p.name) {
                Some(v) if !p.param_type.accepts(v) => {
                    return Err(ParamsError::WrongType { name: p.name.clone(), expected: p.param_type });
                }
                Some(_) => {}
                None => match &p.default {
                    Some(default) => {
                        given.insert(p.name.clone(), default.clone());
                    }
                    None => return Err(ParamsError::Missing(p.name.clone())),
                },
            }
        }
        Ok(Value::Object(given).to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Dimension, Statistic};

    fn manifest() -> Manifest {
        Manifest {
            name: "p".into(),
            version: "1".into(),
            description: String::new(),
            inputs: vec![],
            outputs: vec![TableSpec {
                name: "t".into(),
                description: String::new(),
                dimensions: vec![Dimension { name: "d".into(), domain: Domain::Labels(vec!["a".into()]) }],
                measures: vec![],
                statistics: vec![Statistic::Count],
                margins: false,
            }],
            params: vec![
                ParamSpec {
                    name: "factor".into(),
                    param_type: ParamType::Float,
                    description: String::new(),
                    default: Some(2.5.into()),
                },
                ParamSpec {
                    name: "year".into(),
                    param_type: ParamType::Int,
                    description: String::new(),
                    default: None,
                },
            ],
        }
    }

    #[test]
    fn column_type_names_are_their_json() {
        use PluginColumnType::*;
        for t in [Int, Float, Boolean, Text, Timestamp, Pseudonym] {
            assert_eq!(serde_json::to_value(t).unwrap(), t.name());
        }
    }

    #[test]
    fn params_are_checked_and_defaults_filled() {
        let m = manifest();
        let out: Value = serde_json::from_str(&m.check_params(r#"{"year": 2024}"#).unwrap()).unwrap();
        assert_eq!(out, serde_json::json!({"factor": 2.5, "year": 2024}));
        assert_eq!(m.check_params("{}"), Err(ParamsError::Missing("year".into())));
        assert_eq!(m.check_params(r#"{"year": 1, "x": 1}"#), Err(ParamsError::Unknown("x".into())));
        assert_eq!(
            m.check_params(r#"{"year": "2024"}"#),
            Err(ParamsError::WrongType { name: "year".into(), expected: ParamType::Int })
        );
        assert!(matches!(m.check_params("[1]"), Err(ParamsError::NotAnObject(_))));
        assert!(matches!(m.check_params("{"), Err(ParamsError::NotAnObject(_))));
    }

    #[test]
    fn invalid_manifests_are_refused() {
        let mut m = manifest();
        m.params[0].default = Some("text".into());
        assert!(m.validate().unwrap_err().to_string().contains("default does not have type"));
        let mut m = manifest();
        m.outputs.clear();
        assert!(m.validate().is_err());
        let mut m = manifest();
        m.name = "a b".into();
        assert!(m.validate().is_err());
    }

    #[test]
    fn text_that_would_drive_a_terminal_is_refused() {
        for (bad, field) in [
            ("north\x1b[2K\rsouth", "a label of `d`"),
            ("a\rb", "a label of `d`"),
            ("\u{202e}tsaf", "a label of `d`"),
            ("x\u{7}", "a label of `d`"),
        ] {
            let mut m = manifest();
            m.outputs[0].dimensions[0].domain = Domain::Labels(vec![bad.into()]);
            let err = m.validate().unwrap_err().to_string();
            assert!(err.contains(field) && err.contains("control"), "{err}");
        }
        let mut m = manifest();
        m.description = "line one\nline two".into();
        assert!(m.validate().unwrap_err().to_string().contains("the description"));
        let mut m = manifest();
        m.params[1].description = "\x1b]0;title\x07".into();
        assert!(m.validate().unwrap_err().to_string().contains("param `year`"));
        // Ordinary text in any script passes.
        let mut m = manifest();
        m.outputs[0].dimensions[0].domain =
            Domain::Labels(vec!["Zuid-Holland".into(), "東京".into(), "Île".into()]);
        m.description = "CO₂ per km – by region".into();
        m.validate().unwrap();
    }

    #[test]
    fn a_manifest_too_large_to_store_is_refused() {
        let mut m = manifest();
        // Each part within its own bound: 5 000 labels of 250 bytes.
        let labels = (0..5000).map(|l| format!("{l:0250}")).collect();
        m.outputs[0].dimensions[0].domain = Domain::Labels(labels);
        let err = m.validate().unwrap_err().to_string();
        assert!(err.contains("bytes as JSON, more than the 1048576 allowed"), "{err}");
    }
}

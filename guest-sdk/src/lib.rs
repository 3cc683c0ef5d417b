//! Write kanon analytics plugins in plain Rust.
//!
//! A plugin declares what it reads and what it emits in a [`Manifest`], then
//! in [`Plugin::run`] pulls columnar batches from a [`Dataset`] and adds
//! contributions to a gate [`Table`]. The host's aggregation gate, not the
//! plugin, decides which cells are released.
//!
//! ```no_run
//! use kanon_guest::prelude::*;
//!
//! struct Headcount;
//!
//! #[derive(serde::Deserialize)]
//! struct Params {}
//!
//! impl Plugin for Headcount {
//!     type Params = Params;
//!
//!     fn manifest() -> Manifest {
//!         Manifest {
//!             name: "headcount".into(),
//!             version: "1.0.0".into(),
//!             description: "Employees per department".into(),
//!             inputs: vec![dataset(
//!                 "staff",
//!                 &[("employee", ColumnType::Pseudonym), ("department", ColumnType::Text)],
//!             )],
//!             outputs: vec![TableSpec {
//!                 name: "headcount".into(),
//!                 description: "Employees per department".into(),
//!                 dimensions: vec![labels("department", &["sales", "ops"])],
//!                 measures: vec![],
//!                 statistics: vec![Statistic::Count],
//!                 margins: false,
//!             }],
//!             params: vec![],
//!         }
//!     }
//!
//!     fn run(_: Params) -> Result<(), Error> {
//!         let staff = Dataset::open("staff")?;
//!         let mut table = Table::open("headcount")?;
//!         let mut departments = LabelCoder::new(&["sales", "ops"]);
//!         for batch in staff.scan(&["employee", "department"])? {
//!             let employees = batch.pseudonyms(0)?;
//!             let department = batch.text(1)?;
//!             departments.extend(department.new_entries());
//!             for (row, &code) in department.codes().iter().enumerate() {
//!                 if let Some(department) = departments.code(code) {
//!                     table.add(employees[row], &[department], &[]);
//!                 }
//!             }
//!         }
//!         Ok(())
//!     }
//! }
//!
//! kanon_guest::export_plugin!(Headcount);
//! ```
#![deny(missing_docs)]

// The generated bindings name this crate by its public path, also from inside it.
extern crate self as kanon_guest;

mod batch;
mod manifest;
mod table;

pub use batch::{Batch, ColumnValues, Dataset, LabelCoder, Scan, TextColumn};
pub use manifest::{buckets, dataset, labels, measure, param};
pub use table::Table;

/// The plugin's view of the WIT contract types.
pub use bindings::kanon::plugin::data::{Classification, ColumnInfo, DataError};
pub use bindings::kanon::plugin::gate::GateError;
pub use bindings::kanon::plugin::types::{
    ColumnNeed, ColumnType, DatasetNeed, Dimension, Domain, Manifest, Measure, ParamSpec, ParamType,
    Statistic, TableSpec,
};

/// Everything a plugin usually needs, in one import.
pub mod prelude {
    pub use crate::{
        Batch, ColumnType, Dataset, Error, LabelCoder, Manifest, ParamType, Plugin, Statistic, Table,
        TableSpec, buckets, dataset, labels, measure, param,
    };
}

/// Bindings generated from `wit/`. Not part of the stable API: use the
/// re-exports above.
#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../wit",
        world: "plugin",
        pub_export_macro: true,
        export_macro_name: "__export_plugin_world",
        default_bindings_module: "kanon_guest::bindings",
        runtime_path: "kanon_guest::__private::wit_bindgen::rt",
    });
}

/// An analytics plugin.
pub trait Plugin {
    /// The parameters of a run, parsed from the JSON object the host passes.
    type Params: serde::de::DeserializeOwned;

    /// What the plugin reads and emits.
    fn manifest() -> Manifest;

    /// Run the job.
    fn run(params: Self::Params) -> Result<(), Error>;
}

/// A plugin's failure. Its text reaches only the data owner, never the
/// analyst or vendor.
#[derive(Debug)]
pub struct Error(String);

impl Error {
    /// An error with the given text.
    pub fn new(message: impl Into<String>) -> Self {
        Self(message.into())
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<String> for Error {
    fn from(message: String) -> Self {
        Self(message)
    }
}

impl From<&str> for Error {
    fn from(message: &str) -> Self {
        Self(message.to_owned())
    }
}

impl From<DataError> for Error {
    fn from(error: DataError) -> Self {
        Self(format!("data: {error:?}"))
    }
}

impl From<GateError> for Error {
    fn from(error: GateError) -> Self {
        Self(format!("gate: {error:?}"))
    }
}

/// Export `$plugin` (a type implementing [`Plugin`]) as the component's
/// `manifest` and `run`.
#[macro_export]
macro_rules! export_plugin {
    ($plugin:ty) => {
        struct __KanonPluginExport;

        impl $crate::bindings::Guest for __KanonPluginExport {
            fn manifest() -> $crate::Manifest {
                <$plugin as $crate::Plugin>::manifest()
            }

            fn run(params: String) -> Result<(), String> {
                $crate::__private::run::<$plugin>(&params)
            }
        }

        $crate::bindings::__export_plugin_world!(__KanonPluginExport);
    };
}

#[doc(hidden)]
pub mod __private {
    pub use wit_bindgen;

    /// Parse the params and run the plugin; the error text goes to the host.
    pub fn run<P: crate::Plugin>(params: &str) -> Result<(), String> {
        let params = if params.trim().is_empty() { "{}" } else { params };
        let params: P::Params = serde_json::from_str(params).map_err(|e| format!("invalid params: {e}"))?;
        P::run(params).map_err(|e| e.0)
    }
}

//! What every hostile fixture declares: it reads trips and writes fuel by
//! region, so each attack below is the only thing that differs.

use kanon_guest::prelude::*;

/// Regions of the `by_region` table, in code order.
pub const REGIONS: [&str; 5] = ["north", "east", "south", "west", "central"];

/// The manifest of a fixture called `name`.
pub fn manifest(name: &str) -> Manifest {
    Manifest {
        name: name.into(),
        version: "0.0.0".into(),
        description: "a hostile test fixture".into(),
        inputs: vec![dataset(
            "trips",
            &[
                ("driver_id", ColumnType::Pseudonym),
                ("region", ColumnType::Text),
                ("fuel_litres", ColumnType::Float),
            ],
        )],
        outputs: vec![TableSpec {
            name: "by_region".into(),
            description: "fuel by region".into(),
            dimensions: vec![labels("region", &REGIONS)],
            measures: vec![measure("fuel_litres", 0.0, 1000.0)],
            statistics: vec![Statistic::Count, Statistic::Sum("fuel_litres".into())],
            margins: false,
        }],
        params: vec![],
    }
}

/// The first trip's driver pseudonym and fuel: "one person's value".
pub fn first_trip() -> Result<(u64, f64), Error> {
    let trips = Dataset::open("trips")?;
    let batch = trips.scan(&["driver_id", "fuel_litres"])?.next().ok_or("no trips")?;
    Ok((batch.pseudonyms(0)?[0], batch.floats(1)?[0]))
}

/// Declare a fixture: `$name` implements the attack in `$body`.
#[macro_export]
macro_rules! fixture {
    ($name:literal, $body:expr) => {
        struct Fixture;

        impl kanon_guest::Plugin for Fixture {
            type Params = std::collections::BTreeMap<String, String>;

            fn manifest() -> kanon_guest::Manifest {
                $crate::manifest($name)
            }

            fn run(_: Self::Params) -> Result<(), kanon_guest::Error> {
                $body
            }
        }

        kanon_guest::export_plugin!(Fixture);
    };
}

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

/// The same, with margins: the gate releases the regions' total.
pub fn manifest_with_margins(name: &str) -> Manifest {
    let mut manifest = manifest(name);
    manifest.outputs[0].margins = true;
    manifest
}

/// Every driver once, in first-seen order: pseudonym, region code and the
/// driver's total fuel. What an honest per-driver plugin would contribute.
pub fn drivers() -> Result<Vec<(u64, u32, f64)>, Error> {
    let trips = Dataset::open("trips")?;
    let scan = trips.scan(&["driver_id", "region", "fuel_litres"])?;
    let mut coder = LabelCoder::new(&REGIONS);
    let mut drivers: Vec<(u64, u32, f64)> = Vec::new();
    for batch in scan {
        let regions = batch.text(1)?;
        coder.extend(regions.new_entries());
        for ((&driver, &entry), &fuel) in
            batch.pseudonyms(0)?.iter().zip(regions.codes()).zip(batch.floats(2)?)
        {
            let region = coder.code(entry).ok_or("a region outside the domain")?;
            match drivers.iter_mut().find(|d| d.0 == driver) {
                Some(d) => d.2 += fuel,
                None => drivers.push((driver, region, fuel)),
            }
        }
    }
    Ok(drivers)
}

/// The first trip's driver pseudonym and fuel: "one person's value".
pub fn first_trip() -> Result<(u64, f64), Error> {
    let trips = Dataset::open("trips")?;
    let batch = trips.scan(&["driver_id", "fuel_litres"])?.next().ok_or("no trips")?;
    Ok((batch.pseudonyms(0)?[0], batch.floats(1)?[0]))
}

/// Declare a fixture: `$name` implements the attack in `$body`, under the
/// common manifest or the one given, with its params (as text) when the
/// body is written `|params| ...`.
#[macro_export]
macro_rules! fixture {
    ($name:literal, $body:expr) => {
        $crate::fixture!($name, manifest = $crate::manifest($name), $body);
    };
    ($name:literal, manifest = $manifest:expr, |$params:ident| $body:expr) => {
        struct Fixture;

        impl kanon_guest::Plugin for Fixture {
            type Params = std::collections::BTreeMap<String, String>;

            fn manifest() -> kanon_guest::Manifest {
                $manifest
            }

            fn run($params: Self::Params) -> Result<(), kanon_guest::Error> {
                $body
            }
        }

        kanon_guest::export_plugin!(Fixture);
    };
    ($name:literal, manifest = $manifest:expr, $body:expr) => {
        struct Fixture;

        impl kanon_guest::Plugin for Fixture {
            type Params = std::collections::BTreeMap<String, String>;

            fn manifest() -> kanon_guest::Manifest {
                $manifest
            }

            fn run(_: Self::Params) -> Result<(), kanon_guest::Error> {
                $body
            }
        }

        kanon_guest::export_plugin!(Fixture);
    };
}

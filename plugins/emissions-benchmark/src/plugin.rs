use kanon_guest::prelude::*;

// `LabelCoder::table` marks unknown labels with `u32::MAX`, the kernel's `UNKNOWN`.
use crate::kernel::{self, Groups, REGIONS, Trips, VEHICLE_CLASSES};

struct EmissionsBenchmark;

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Params {
    #[serde(default = "default_factor")]
    kg_co2_per_litre: f64,
}

fn default_factor() -> f64 {
    kernel::DIESEL_KG_CO2_PER_LITRE
}

const COLUMNS: [&str; 6] =
    ["driver_id", "vehicle_class", "region", "distance_km", "load_tonnes", "fuel_litres"];

impl Plugin for EmissionsBenchmark {
    type Params = Params;

    fn manifest() -> Manifest {
        Manifest {
            name: "emissions-benchmark".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: "CO2 per tonne-km by vehicle class and region, from trip records".into(),
            inputs: vec![dataset(
                "trips",
                &[
                    ("driver_id", ColumnType::Pseudonym),
                    ("vehicle_class", ColumnType::Text),
                    ("region", ColumnType::Text),
                    ("distance_km", ColumnType::Float),
                    ("load_tonnes", ColumnType::Float),
                    ("fuel_litres", ColumnType::Float),
                ],
            )],
            outputs: vec![TableSpec {
                name: "co2_intensity".into(),
                description: "kg CO2 per tonne-km, per driver-weighted cell".into(),
                dimensions: vec![labels("vehicle_class", &VEHICLE_CLASSES), labels("region", &REGIONS)],
                // Per driver and cell: a year of trips stays well inside.
                measures: vec![measure("co2_kg", 0.0, 2.0e6), measure("tonne_km", 0.0, 2.0e7)],
                statistics: vec![
                    Statistic::Count,
                    Statistic::Sum("co2_kg".into()),
                    Statistic::Ratio(("co2_kg".into(), "tonne_km".into())),
                ],
                margins: true,
            }],
            params: vec![param(
                "kg_co2_per_litre",
                ParamType::Float,
                "kg CO2 per litre of fuel",
                Some("2.68"),
            )],
        }
    }

    fn run(params: Params) -> Result<(), Error> {
        if !(params.kg_co2_per_litre.is_finite() && params.kg_co2_per_litre > 0.0) {
            return Err("kg_co2_per_litre must be a positive number".into());
        }
        let trips = Dataset::open("trips")?;
        let mut classes = LabelCoder::new(&VEHICLE_CLASSES);
        let mut regions = LabelCoder::new(&REGIONS);
        let mut groups = Groups::default();
        for batch in trips.scan(&COLUMNS)? {
            let class = batch.text(1)?;
            let region = batch.text(2)?;
            classes.extend(class.new_entries());
            regions.extend(region.new_entries());
            let batch = Trips {
                drivers: batch.pseudonyms(0)?,
                vehicle_class: class.codes(),
                vehicle_class_domain: classes.table(),
                region: region.codes(),
                region_domain: regions.table(),
                distance_km: batch.floats(3)?,
                load_tonnes: batch.floats(4)?,
                fuel_litres: batch.floats(5)?,
            };
            kernel::accumulate(&mut groups, &batch, params.kg_co2_per_litre);
        }
        let mut table = Table::open("co2_intensity")?;
        for ((driver, cell), totals) in groups {
            table.add(driver, &kernel::cell_keys(cell), &[totals.co2_kg, totals.tonne_km]);
        }
        Ok(())
    }
}

kanon_guest::export_plugin!(EmissionsBenchmark);

//! A test plugin, not an attack: it reads two datasets that carry the entity
//! (trips, and each driver's contract) and one reference dataset (a fuel
//! factor per region), joins them on the driver, and releases weighted fuel
//! by contract and region. In an entity-isolated run each instance gets its
//! driver's trips and contract and the whole reference table, so the join
//! works unchanged and the release is the shared run's.
use std::collections::HashMap;

use kanon_guest::prelude::*;

const CONTRACTS: [&str; 2] = ["employed", "freelance"];
const REGIONS: [&str; 3] = ["north", "east", "south"];

struct JoinsOnTheEntity;

#[derive(serde::Deserialize)]
struct Params {}

impl Plugin for JoinsOnTheEntity {
    type Params = Params;

    fn manifest() -> Manifest {
        Manifest {
            name: "joins-on-the-entity".into(),
            version: "0.0.0".into(),
            description: "weighted fuel by contract and region".into(),
            inputs: vec![
                dataset(
                    "trips",
                    &[
                        ("driver_id", ColumnType::Pseudonym),
                        ("region", ColumnType::Text),
                        ("fuel_litres", ColumnType::Float),
                    ],
                ),
                dataset("contracts", &[("driver_id", ColumnType::Pseudonym), ("contract", ColumnType::Text)]),
                dataset("factors", &[("region", ColumnType::Text), ("factor", ColumnType::Float)]),
            ],
            outputs: vec![TableSpec {
                name: "weighted_fuel".into(),
                description: "fuel times the region's factor, per driver".into(),
                dimensions: vec![labels("contract", &CONTRACTS), labels("region", &REGIONS)],
                measures: vec![measure("weighted_litres", 0.0, 100_000.0)],
                statistics: vec![Statistic::Count, Statistic::Sum("weighted_litres".into())],
                margins: false,
            }],
            params: vec![],
        }
    }

    fn run(_: Params) -> Result<(), Error> {
        let mut factors: HashMap<String, f64> = HashMap::new();
        for batch in Dataset::open("factors")?.scan(&["region", "factor"])? {
            let (regions, values) = (batch.text(0)?, batch.floats(1)?);
            let mut names: Vec<String> = Vec::new();
            names.extend(regions.new_entries().iter().cloned());
            for (&code, &factor) in regions.codes().iter().zip(values) {
                factors.insert(names[code as usize].clone(), factor);
            }
        }
        let mut contracts: HashMap<u64, u32> = HashMap::new();
        let mut coder = LabelCoder::new(&CONTRACTS);
        for batch in Dataset::open("contracts")?.scan(&["driver_id", "contract"])? {
            let contract = batch.text(1)?;
            coder.extend(contract.new_entries());
            for (&driver, &entry) in batch.pseudonyms(0)?.iter().zip(contract.codes()) {
                if let Some(code) = coder.code(entry) {
                    contracts.insert(driver, code);
                }
            }
        }
        // Per driver: its region (the first trip's) and its weighted fuel.
        let mut drivers: HashMap<u64, (u32, f64)> = HashMap::new();
        let mut region_names: Vec<String> = Vec::new();
        for batch in Dataset::open("trips")?.scan(&["driver_id", "region", "fuel_litres"])? {
            let regions = batch.text(1)?;
            region_names.extend(regions.new_entries().iter().cloned());
            for ((&driver, &code), &fuel) in
                batch.pseudonyms(0)?.iter().zip(regions.codes()).zip(batch.floats(2)?)
            {
                let name = &region_names[code as usize];
                let Some(region) = REGIONS.iter().position(|r| r == name) else { continue };
                let weighted = fuel * factors.get(name).copied().unwrap_or(1.0);
                drivers.entry(driver).or_insert((region as u32, 0.0)).1 += weighted;
            }
        }
        let mut table = Table::open("weighted_fuel")?;
        for (driver, (region, weighted)) in drivers {
            if let Some(&contract) = contracts.get(&driver) {
                table.add(driver, &[contract, region], &[weighted]);
            }
        }
        Ok(())
    }
}

kanon_guest::export_plugin!(JoinsOnTheEntity);

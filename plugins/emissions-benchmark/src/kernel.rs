//! The group-by at the heart of the plugin, free of any host API so the
//! benchmark can run the very same code natively.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// Vehicle classes, in domain-code order.
pub const VEHICLE_CLASSES: [&str; 4] = ["van", "rigid", "articulated", "refrigerated"];
/// Regions, in domain-code order.
pub const REGIONS: [&str; 5] = ["north", "east", "south", "west", "central"];
/// kg of CO2 per litre of diesel (tank-to-wheel).
pub const DIESEL_KG_CO2_PER_LITRE: f64 = 2.68;

/// Sentinel a dictionary-to-domain table holds for unknown labels.
pub const UNKNOWN: u32 = u32::MAX;

/// One columnar batch of trips, with text columns as dictionary codes and
/// tables mapping those codes to domain codes.
#[derive(Debug, Clone, Copy)]
pub struct Trips<'a> {
    pub drivers: &'a [u64],
    pub vehicle_class: &'a [u32],
    pub vehicle_class_domain: &'a [u32],
    pub region: &'a [u32],
    pub region_domain: &'a [u32],
    pub distance_km: &'a [f64],
    pub load_tonnes: &'a [f64],
    pub fuel_litres: &'a [f64],
}

/// Totals of one (driver, cell) group.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct Totals {
    pub co2_kg: f64,
    pub tonne_km: f64,
}

/// A multiply-rotate hasher: pseudonyms are already uniform, so this is
/// enough, and it is the same on both sides of the benchmark.
#[derive(Default)]
pub struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = (self.0.rotate_left(5) ^ v).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
    fn write_u32(&mut self, v: u32) {
        self.write_u64(u64::from(v));
    }
}

/// Trips grouped per (driver, cell), cell = class * REGIONS + region.
pub type Groups = HashMap<(u64, u32), Totals, BuildHasherDefault<KeyHasher>>;

/// Add a batch of trips to `groups`; trips with an unknown class or region
/// are skipped.
pub fn accumulate(groups: &mut Groups, trips: &Trips<'_>, kg_co2_per_litre: f64) {
    let regions = REGIONS.len() as u32;
    for row in 0..trips.drivers.len() {
        let class = trips.vehicle_class_domain[trips.vehicle_class[row] as usize];
        let region = trips.region_domain[trips.region[row] as usize];
        if class == UNKNOWN || region == UNKNOWN {
            continue;
        }
        let totals = groups.entry((trips.drivers[row], class * regions + region)).or_default();
        totals.co2_kg += trips.fuel_litres[row] * kg_co2_per_litre;
        totals.tonne_km += trips.distance_km[row] * trips.load_tonnes[row];
    }
}

/// Split a cell back into (vehicle class, region) codes.
pub fn cell_keys(cell: u32) -> [u32; 2] {
    let regions = REGIONS.len() as u32;
    [cell / regions, cell % regions]
}

//! Attack: pass dominance with cancelling pairs. The target (the first
//! driver) contributes its fuel to north; every other driver in north
//! contributes +900 or -900 in turn, so the pairs cancel in the sum while
//! the dominance rule, which looks at magnitudes, sees many large
//! contributors and releases the cell. North's sum is then the target's
//! fuel (plus 900 when the others are odd in number).
//!
//! In an entity-isolated run each instance's first driver is its own, so it
//! contributes its own fuel: north's sum is the drivers' own fuel.
use kanon_guest::Table;
hostile_common::fixture!(
    "cancels-pairs",
    manifest = {
        let mut manifest = hostile_common::manifest("cancels-pairs");
        manifest.outputs[0].measures[0].lower = -1000.0;
        manifest
    },
    {
        let drivers = hostile_common::drivers()?;
        let mut table = Table::open("by_region")?;
        for (i, &(driver, _, fuel)) in drivers.iter().enumerate() {
            let value = match i {
                0 => fuel,
                i if i % 2 == 1 => 900.0,
                _ => -900.0,
            };
            table.add(driver, &[0], &[value]);
        }
        Ok(())
    }
);

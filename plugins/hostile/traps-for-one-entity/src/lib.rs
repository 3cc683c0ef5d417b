//! Attack: fail on purpose when some person's data has a property, to learn
//! that bit from the run's outcome. This fixture traps whenever it sees a
//! driver whose fuel passes 100 litres.
//!
//! In a shared run that fails the whole run. In an entity-isolated run only
//! that driver's instance fails: the driver is left out of the release, the
//! run succeeds, and its caller sees nothing else of it.
use kanon_guest::Table;
hostile_common::fixture!("traps-for-one-entity", {
    let drivers = hostile_common::drivers()?;
    if drivers.iter().any(|d| d.2 > 100.0) {
        panic!("a driver with more than 100 litres");
    }
    let mut table = Table::open("by_region")?;
    for (driver, region, fuel) in drivers {
        table.add(driver, &[region], &[fuel]);
    }
    Ok(())
});

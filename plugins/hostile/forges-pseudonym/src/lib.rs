//! Attack: contribute for an entity the host never issued, to fake a crowd.
use kanon_guest::Table;
hostile_common::fixture!("forges-pseudonym", {
    let (driver, fuel) = hostile_common::first_trip()?;
    let mut table = Table::open("by_region")?;
    table.add(driver, &[0], &[fuel]);
    for fake in 1..=20u64 {
        table.add(driver ^ fake, &[0], &[0.0]);
    }
    Ok(())
});

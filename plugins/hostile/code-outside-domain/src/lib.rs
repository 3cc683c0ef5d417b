//! Attack: smuggle a value out through a group key outside its domain.
use kanon_guest::Table;
hostile_common::fixture!("code-outside-domain", {
    let (driver, fuel) = hostile_common::first_trip()?;
    let mut table = Table::open("by_region")?;
    table.add(driver, &[1000 + fuel as u32], &[0.0]);
    Ok(())
});

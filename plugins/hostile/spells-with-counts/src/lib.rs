//! Attack: spell one person's value in released counts. The plugin reads
//! the first driver's fuel (the target) and puts that many of the other
//! drivers in north, the rest in south, and the target in east. Each
//! released count passes k, but north's count is the target's fuel.
//!
//! In an entity-isolated run the "first driver" an instance sees is its
//! own and it sees no other: every driver goes to east whatever anyone's
//! fuel, so no count depends on another driver's rows.
use kanon_guest::Table;
hostile_common::fixture!("spells-with-counts", {
    let drivers = hostile_common::drivers()?;
    let Some(&(target, _, fuel)) = drivers.first() else { return Ok(()) };
    let spelled = fuel as usize % 40;
    let mut table = Table::open("by_region")?;
    table.add(target, &[1], &[0.0]);
    for (i, &(driver, _, _)) in drivers[1..].iter().enumerate() {
        table.add(driver, &[if i < spelled { 0 } else { 2 }], &[0.0]);
    }
    Ok(())
});

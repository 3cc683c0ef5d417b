//! Attack: put the target in an otherwise empty cell with k - 1 others who
//! contribute zero, so the cell passes k and its sum is the target's value.
use kanon_guest::Table;
hostile_common::fixture!("pads-with-zeros", {
    let drivers = hostile_common::drivers()?;
    let central = hostile_common::REGIONS.iter().position(|&r| r == "central").ok_or("no central")? as u32;
    let mut table = Table::open("by_region")?;
    let (target, _, fuel) = drivers[0];
    table.add(target, &[central], &[fuel]);
    for &(driver, _, _) in &drivers[1..10] {
        table.add(driver, &[central], &[0.0]);
    }
    Ok(())
});

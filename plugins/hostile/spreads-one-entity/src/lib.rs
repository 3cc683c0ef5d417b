//! Attack: count one person in every cell, so that the cells' differences
//! single them out. Everyone else contributes honestly.
use kanon_guest::Table;
hostile_common::fixture!("spreads-one-entity", {
    let drivers = hostile_common::drivers()?;
    let mut table = Table::open("by_region")?;
    for &(driver, region, fuel) in &drivers {
        table.add(driver, &[region], &[fuel]);
    }
    let (target, home, fuel) = drivers[0];
    for region in (0..hostile_common::REGIONS.len() as u32).filter(|&r| r != home) {
        table.add(target, &[region], &[fuel]);
    }
    Ok(())
});

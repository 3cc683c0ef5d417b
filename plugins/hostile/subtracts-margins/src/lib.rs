//! Attack: leave the target alone in one cell and make every other cell
//! large enough to release, so the released total minus the released cells
//! would be the target's value.
use kanon_guest::Table;
hostile_common::fixture!(
    "subtracts-margins",
    manifest = hostile_common::manifest_with_margins("subtracts-margins"),
    {
        let drivers = hostile_common::drivers()?;
        let central =
            hostile_common::REGIONS.iter().position(|&r| r == "central").ok_or("no central")? as u32;
        let mut table = Table::open("by_region")?;
        let (target, _, fuel) = drivers[0];
        table.add(target, &[central], &[fuel]);
        // Everyone else in north, east, south and west, at least k in each.
        for (i, &(driver, _, fuel)) in drivers[1..].iter().enumerate() {
            table.add(driver, &[i as u32 % 4], &[fuel]);
        }
        Ok(())
    }
);

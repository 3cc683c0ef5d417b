//! Attack on a benchmark: every tenant's instance puts its drivers in one
//! cell, but only the instance that sees a large dataset contributes real
//! values; the others contribute zeros. The cell passes k and t, and its sum
//! is the large tenant's total.
use kanon_guest::Table;
hostile_common::fixture!("singles-out-a-tenant", {
    let drivers = hostile_common::drivers()?;
    let large = drivers.len() > 100;
    let mut table = Table::open("by_region")?;
    for &(driver, _, fuel) in &drivers {
        table.add(driver, &[4], &[if large { fuel } else { 0.0 }]);
    }
    Ok(())
});

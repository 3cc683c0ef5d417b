//! Attack: leave the first driver out on a coin flip. If two runs of one
//! request could flip differently, their releases would differ by that
//! driver alone. The host seeds `wasi:random` from the request, so both
//! runs flip the same way.
use std::hash::BuildHasher;

use kanon_guest::Table;
hostile_common::fixture!("flips-a-coin", {
    // std seeds its hash keys from `wasi:random`.
    let coin = std::hash::RandomState::new().hash_one(0u64) & 1 == 1;
    let mut table = Table::open("by_region")?;
    for (i, (driver, region, fuel)) in hostile_common::drivers()?.into_iter().enumerate() {
        if i > 0 || coin {
            table.add(driver, &[region], &[fuel]);
        }
    }
    Ok(())
});

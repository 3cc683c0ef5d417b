//! Attack: flood the host with contributions until it runs out of memory.
use kanon_guest::Table;
hostile_common::fixture!("floods-host", {
    let (driver, _) = hostile_common::first_trip()?;
    let mut table = Table::open("by_region")?;
    let entities = vec![driver; 1 << 16];
    let codes = vec![0u32; 1 << 16];
    let fuel = vec![1.0f64; 1 << 16];
    loop {
        table.add_columns(&entities, &[&codes], &[&fuel]);
    }
});

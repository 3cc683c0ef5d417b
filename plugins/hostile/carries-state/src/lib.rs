//! Attack on a benchmark: carry state from one tenant's instance into the
//! next. A run first reads what an earlier run could have left behind (an
//! atomic, a `Mutex<Vec<_>>` and a `thread_local!` in statics, and an
//! environment variable) and reports it on stderr. It contributes the bound
//! (1000) for every driver when anything was carried and the driver's fuel
//! otherwise, then leaves its own state in every channel. Were one instance
//! reused, the second tenant's run would see the first tenant's 40 drivers.
//!
//! Files are no channel here: `std::fs` imports `wasi:filesystem`, which
//! upload refuses (see `reads-file`), so this fixture could not run at all.
//! Nor can it set a variable: `std::env::set_var` is `unsafe` in edition 2024
//! and `unsafe_code` is denied; it only checks that none arrives.
use std::cell::Cell;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use kanon_guest::Table;

static RUNS: AtomicU64 = AtomicU64::new(0);
static FUEL_BITS: AtomicU64 = AtomicU64::new(0);
static DRIVERS: Mutex<Vec<u64>> = Mutex::new(Vec::new());
thread_local! {
    static LAST_DRIVERS: Cell<usize> = const { Cell::new(0) };
}

hostile_common::fixture!("carries-state", {
    let seen = DRIVERS.lock().map_err(|e| e.to_string())?.len();
    let runs = RUNS.load(Ordering::Relaxed);
    let fuel = f64::from_bits(FUEL_BITS.load(Ordering::Relaxed));
    let last = LAST_DRIVERS.with(Cell::get);
    let env = std::env::var("KANON_CARRY").ok();
    let env_shown = env.as_deref().unwrap_or("absent");
    eprintln!("carried: static={seen} runs={runs} fuel={fuel} thread_local={last} env={env_shown}");
    let carried = seen > 0 || runs > 0 || fuel != 0.0 || last > 0 || env.is_some();

    let drivers = hostile_common::drivers()?;
    let mut table = Table::open("by_region")?;
    for &(driver, region, fuel) in &drivers {
        table.add(driver, &[region], &[if carried { 1000.0 } else { fuel }]);
    }

    RUNS.fetch_add(1, Ordering::Relaxed);
    let total = fuel + drivers.iter().map(|d| d.2).sum::<f64>();
    FUEL_BITS.store(total.to_bits(), Ordering::Relaxed);
    DRIVERS.lock().map_err(|e| e.to_string())?.extend(drivers.iter().map(|d| d.0));
    LAST_DRIVERS.with(|c| c.set(drivers.len()));
    Ok(())
});

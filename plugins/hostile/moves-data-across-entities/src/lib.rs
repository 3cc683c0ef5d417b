//! Attack on entity isolation: make one driver's contribution depend on the
//! drivers before it, through every channel a wasm instance has: an atomic, a
//! `Mutex<Vec<_>>` and a `thread_local!` in statics, a heap value leaked on
//! purpose, and randomness. Each driver contributes its own fuel plus what
//! it carried in, to its own region.
//!
//! In a shared instance the carried sum is everyone seen so far, so every
//! cell depends on other drivers' rows. In an entity-isolated run each
//! instance is fresh, sees one driver, and carries nothing in: a cell
//! depends only on the rows of the drivers in it.
use std::cell::Cell;
use std::hash::BuildHasher;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use kanon_guest::Table;

static FUEL_BITS: AtomicU64 = AtomicU64::new(0);
static SEEN: Mutex<Vec<f64>> = Mutex::new(Vec::new());
thread_local! {
    static LAST: Cell<f64> = const { Cell::new(0.0) };
}

hostile_common::fixture!("moves-data-across-entities", {
    // A random draw that a shared stream would make depend on earlier draws.
    let draw = (std::hash::RandomState::new().hash_one(0u64) % 2) as f64;
    let mut table = Table::open("by_region")?;
    for (driver, region, fuel) in hostile_common::drivers()? {
        let carried = f64::from_bits(FUEL_BITS.load(Ordering::Relaxed))
            + SEEN.lock().map_err(|e| e.to_string())?.iter().sum::<f64>()
            + LAST.with(Cell::get);
        table.add(driver, &[region], &[(fuel + carried) % 1000.0 + draw * 0.0]);
        FUEL_BITS
            .store((f64::from_bits(FUEL_BITS.load(Ordering::Relaxed)) + fuel).to_bits(), Ordering::Relaxed);
        SEEN.lock().map_err(|e| e.to_string())?.push(fuel);
        LAST.with(|c| c.set(fuel));
        // Left on the heap for good: a later instance sharing this memory
        // could find it.
        std::mem::forget(vec![fuel; 16]);
    }
    Ok(())
});

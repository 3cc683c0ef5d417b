//! Attack: hold the host forever from inside host calls, never spinning in
//! guest code for long.
use kanon_guest::Dataset;
hostile_common::fixture!("loops-in-host-calls", {
    loop {
        let trips = Dataset::open("trips")?;
        for batch in trips.scan_with_batch_rows(&["fuel_litres"], 1)? {
            std::hint::black_box(batch.rows());
        }
    }
});

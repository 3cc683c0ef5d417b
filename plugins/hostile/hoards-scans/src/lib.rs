//! Attack: make the host hold memory outside the guest's cap. Every open
//! scan keeps its decoded chunk and its text dictionary on the host, so many
//! scans of a wide text column, each one batch in, would cost the host
//! gigabytes. The host charges them to the run's host memory budget.
use kanon_guest::Dataset;
hostile_common::fixture!("hoards-scans", {
    let trips = Dataset::open("trips")?;
    let mut scans = Vec::new();
    for _ in 0..32 {
        let mut scan = trips.scan(&["region"])?;
        std::hint::black_box(scan.next());
        scans.push(scan);
    }
    Ok(())
});

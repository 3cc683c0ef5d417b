//! Attack: hold a job slot by sleeping inside a WASI call, where epoch
//! interruption never fires: `thread::sleep` blocks in `wasi:io/poll` on a
//! monotonic-clock timer. The host cuts every timer at the run's deadline
//! and wakes it on cancel.
hostile_common::fixture!("sleeps-forever", {
    std::thread::sleep(std::time::Duration::MAX);
    Ok(())
});

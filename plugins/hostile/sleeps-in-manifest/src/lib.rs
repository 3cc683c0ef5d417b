//! Attack: hold an upload by sleeping inside `manifest()`, which the host
//! calls before any tenant has approved anything. The upload's own deadline
//! must hold there too.
hostile_common::fixture!(
    "sleeps-in-manifest",
    manifest = {
        std::thread::sleep(std::time::Duration::MAX);
        hostile_common::manifest("sleeps-in-manifest")
    },
    Ok(())
);

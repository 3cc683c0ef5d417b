//! Attack: exhaust host memory.
hostile_common::fixture!("grows-memory", {
    let mut hoard: Vec<Vec<u8>> = Vec::new();
    loop {
        hoard.push(vec![0xAB; 1 << 20]);
        std::hint::black_box(&hoard);
    }
});

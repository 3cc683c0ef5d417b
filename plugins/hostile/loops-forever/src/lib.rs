//! Attack: hold the host CPU forever.
hostile_common::fixture!("loops-forever", {
    let mut x = 0u64;
    loop {
        x = std::hint::black_box(x.wrapping_add(1));
    }
});

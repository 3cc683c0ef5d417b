//! Attack: leak a value through a panic message.
hostile_common::fixture!("panics-with-data", {
    let (_, fuel) = hostile_common::first_trip()?;
    panic!("secret fuel={fuel}");
});

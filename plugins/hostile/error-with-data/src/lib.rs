//! Attack: leak a value through the error text of a failed run.
hostile_common::fixture!("error-with-data", {
    let (_, fuel) = hostile_common::first_trip()?;
    Err(format!("secret fuel={fuel}").into())
});

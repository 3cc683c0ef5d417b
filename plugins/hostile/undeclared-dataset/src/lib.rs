//! Attack: read a dataset and a column the manifest did not declare.
use kanon_guest::Dataset;
hostile_common::fixture!("undeclared-dataset", {
    let salaries = Dataset::open("salaries").map(|_| ());
    let trips = Dataset::open("trips")?;
    let address = trips.scan(&["home_address"]).map(|_| ());
    let schema: Vec<String> = trips.schema().into_iter().map(|c| c.name).collect();
    Err(format!("salaries={salaries:?} home_address={address:?} schema={schema:?}").into())
});

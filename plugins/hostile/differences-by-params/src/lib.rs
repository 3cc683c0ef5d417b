//! Attack: difference two releases by params. With `leave_out_above = X`
//! every driver with more fuel than X contributes nothing. An attacker who
//! knows its target is the only driver above X runs the plugin with X = inf
//! and with X, and subtracts: the cell's difference is the target's fuel.
//! Both releases pass k (they differ by one driver), and each instance
//! decides on its own rows only, so entity isolation does not stop it: only
//! noise does, drawn afresh for each release.
use kanon_guest::Table;
use kanon_guest::prelude::{ParamType, param};

hostile_common::fixture!(
    "differences-by-params",
    manifest = {
        let mut manifest = hostile_common::manifest("differences-by-params");
        let what = "leave out every driver with more fuel than this";
        manifest.params = vec![param("leave_out_above", ParamType::Text, what, Some("\"inf\""))];
        manifest
    },
    |params| {
        let above: f64 = match params.get("leave_out_above") {
            Some(text) => text.parse().map_err(|_| "leave_out_above: not a number")?,
            None => f64::INFINITY,
        };
        let mut table = Table::open("by_region")?;
        for (driver, region, fuel) in hostile_common::drivers()? {
            if fuel <= above {
                table.add(driver, &[region], &[fuel]);
            }
        }
        Ok(())
    }
);

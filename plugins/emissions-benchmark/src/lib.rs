//! CO2 per tonne-km by vehicle class and region, from trip records.
//!
//! Each trip's CO2 comes from its fuel; the plugin groups trips per
//! (driver, vehicle class, region) and contributes one row per group, so the
//! gate counts drivers and bounds each driver's influence.

pub mod kernel;

#[cfg(feature = "plugin")]
mod plugin;

//! Cross-tenant benchmarks: a vendor publishes one (a plugin, its params,
//! on demand or every few hours); tenant admins read its manifest and opt in
//! with a mapping from their own dataset to the shape the plugin reads, or
//! opt out. Runs and their versions are in [`crate::benchmark_runs`].

use std::collections::BTreeMap;

use kanon_runtime::{Manifest, PluginColumnType};
use kanon_vault::DatasetVersion;
use serde_json::json;

use crate::audit::HOST_CHAIN;
use crate::benchmark_runs::BenchmarkRun;
use crate::error::{Error, Result};
use crate::jobs::JobState;
use crate::registry::PluginRecord;
use crate::store::{BENCHMARKS, OPT_INS, PLUGINS, Read, Setting, Write};
use crate::tenants::check_name;
use crate::{App, now_ms};

/// Longest interval of a scheduled benchmark: a year.
pub const MAX_EVERY_HOURS: u32 = 366 * 24;

// The records are the API's: the client reads these same types, and the
// control store keeps them as their JSON.
pub use kanon_client::types::{Benchmark, DatasetMapping, NewBenchmark, OptIn, OptInRequest};

/// Longest description of a benchmark.
pub const MAX_DESCRIPTION: usize = 4096;

/// The shapes of an opt-in's names, before anything is looked up.
pub(crate) fn check_opt_in(request: &OptInRequest) -> Result<()> {
    use crate::ids;
    ids::check_count("datasets", request.datasets.len(), ids::MAX_DATASETS)?;
    for (name, mapping) in &request.datasets {
        ids::check_manifest_name("dataset", name)?;
        check_name("dataset", &mapping.dataset)?;
        ids::check_count("columns", mapping.columns.len(), ids::MAX_COLUMNS)?;
        for (theirs, ours) in &mapping.columns {
            ids::check_column_name(theirs)?;
            ids::check_column_name(ours)?;
        }
    }
    Ok(())
}

/// The key of a tenant's opt-in.
pub(crate) fn opt_in_key(benchmark: &str, tenant: &str) -> String {
    format!("{benchmark}/{tenant}")
}

/// The benchmark, or 404.
pub(crate) fn get(write: &Write<'_>, name: &str) -> Result<Benchmark> {
    write.get(BENCHMARKS, name)?.ok_or_else(|| Error::NotFound(format!("benchmark `{name}`")))
}

/// Every opt-in of `benchmark`, past ones too, by tenant name.
pub(crate) fn opt_ins(read: &Read, benchmark: &str) -> Result<Vec<OptIn>> {
    Ok(read.prefixed(OPT_INS, &format!("{benchmark}/"))?)
}

/// Publish a benchmark: its plugin must be registered and its params fit
/// the manifest. Audited on the host's chain.
pub(crate) fn publish(
    write: &mut Write<'_>,
    actor: &str,
    vendor: &str,
    new: NewBenchmark,
) -> Result<Benchmark> {
    check_name("benchmark", &new.name)?;
    crate::ids::check_hash(&new.plugin)?;
    if new.description.len() > MAX_DESCRIPTION {
        return Err(Error::BadRequest(format!("description: at most {MAX_DESCRIPTION} bytes")));
    }
    if let Some(hours) = new.every_hours
        && !(1..=MAX_EVERY_HOURS).contains(&hours)
    {
        return Err(Error::BadRequest(format!("every_hours must be 1 to {MAX_EVERY_HOURS}")));
    }
    if write.get::<Benchmark>(BENCHMARKS, &new.name)?.is_some() {
        return Err(Error::Conflict(format!("benchmark `{}` exists", new.name)));
    }
    // Only over a plugin the vendor uploaded: it sees no other.
    let plugin: PluginRecord = write
        .get(PLUGINS, &new.plugin)?
        .filter(|p: &PluginRecord| p.uploaded_by(&format!("{} {vendor}", crate::auth::Role::Vendor)))
        .ok_or_else(|| Error::NotFound(format!("plugin `{}`", new.plugin)))?;
    let params = new.params.unwrap_or_else(|| json!({}));
    plugin.manifest.check_params(&params.to_string()).map_err(|e| Error::Unprocessable(e.to_string()))?;
    let now = now_ms();
    let benchmark = Benchmark {
        name: new.name,
        vendor: vendor.to_owned(),
        plugin: new.plugin,
        description: new.description,
        params,
        every_hours: new.every_hours,
        published_ms: now,
        scheduled_ms: now,
        versions: 0,
        retired_ms: None,
    };
    write.put(BENCHMARKS, &benchmark.name, &benchmark)?;
    write.audit(
        HOST_CHAIN,
        actor,
        "benchmark.publish",
        json!({"benchmark": benchmark.name, "plugin": benchmark.plugin, "params": benchmark.params,
               "every_hours": benchmark.every_hours}),
    )?;
    Ok(benchmark)
}

/// The tenant's datasets as the plugin reads them: the latest version of
/// each mapped dataset, its columns under the plugin's names, checked
/// against the manifest. The error says what does not fit.
pub(crate) fn mapped_datasets(
    app: &App,
    tenant: &str,
    manifest: &Manifest,
    mapping: &BTreeMap<String, DatasetMapping>,
) -> Result<BTreeMap<String, DatasetVersion>> {
    if let Some(extra) = mapping.keys().find(|name| !manifest.inputs.iter().any(|need| &need.name == *name)) {
        return Err(Error::Unprocessable(format!("the benchmark reads no dataset `{extra}`")));
    }
    let mut datasets = BTreeMap::new();
    for need in &manifest.inputs {
        let mapped = mapping
            .get(&need.name)
            .ok_or_else(|| Error::Unprocessable(format!("map a dataset of yours to `{}`", need.name)))?;
        check_name("dataset", &mapped.dataset)?;
        if let Some(extra) = mapped.columns.keys().find(|c| !need.columns.iter().any(|n| &n.name == *c)) {
            return Err(Error::Unprocessable(format!("`{}` has no column `{extra}` to map", need.name)));
        }
        let names: BTreeMap<String, String> = need
            .columns
            .iter()
            .map(|c| (c.name.clone(), mapped.columns.get(&c.name).unwrap_or(&c.name).clone()))
            .collect();
        let version = app.vault.dataset(tenant, &mapped.dataset, None)?;
        let view = version.with_column_names(&names).map_err(|e| Error::Unprocessable(e.to_string()))?;
        // The plugin counts people by a pseudonym column: one of those it
        // reads must be the dataset's entity, or no contribution could name
        // an entity and every run would fail.
        let pseudonyms: Vec<&str> = need
            .columns
            .iter()
            .filter(|c| c.column_type == PluginColumnType::Pseudonym)
            .map(|c| c.name.as_str())
            .collect();
        let entity = view.schema().entity().map(|f| f.name.as_str());
        if !pseudonyms.is_empty() && !entity.is_some_and(|e| pseudonyms.contains(&e)) {
            return Err(Error::Unprocessable(format!(
                "map the entity column of `{}` to one of {}",
                mapped.dataset,
                pseudonyms.iter().map(|p| format!("`{p}`")).collect::<Vec<_>>().join(", ")
            )));
        }
        datasets.insert(need.name.clone(), view);
    }
    kanon_runtime::check_data(manifest, &datasets).map_err(|e| Error::Unprocessable(e.to_string()))?;
    Ok(datasets)
}

/// Opt `tenant` in (again, with a new mapping, keeping its ordinal).
pub(crate) fn opt_in(
    write: &mut Write<'_>,
    actor: &str,
    benchmark: &str,
    tenant: &str,
    datasets: BTreeMap<String, DatasetMapping>,
) -> Result<OptIn> {
    crate::tenants::get(write, tenant)?;
    let bench = get(write, benchmark)?;
    if bench.retired_ms.is_some() {
        return Err(Error::Conflict(format!("benchmark `{benchmark}` is retired")));
    }
    let key = opt_in_key(benchmark, tenant);
    let member = member(write, tenant)?;
    let opt_in = OptIn {
        benchmark: benchmark.to_owned(),
        tenant: tenant.to_owned(),
        member,
        datasets,
        by: actor.to_owned(),
        opted_in_ms: now_ms(),
        opted_out_ms: None,
    };
    write.put(OPT_INS, &key, &opt_in)?;
    write.audit(
        tenant,
        actor,
        "benchmark.opt-in",
        json!({"benchmark": benchmark, "plugin": bench.plugin, "datasets": opt_in.datasets}),
    )?;
    Ok(opt_in)
}

/// Retire a benchmark: its queued runs are cancelled, no run or opt-in
/// follows, and a run already going finishes. Its versions stay. Returns
/// it, and the runs cancelled.
pub(crate) fn retire(write: &mut Write<'_>, actor: &str, name: &str) -> Result<(Benchmark, Vec<String>)> {
    let mut benchmark = get(write, name)?;
    if benchmark.retired_ms.is_some() {
        return Err(Error::Conflict(format!("benchmark `{name}` is already retired")));
    }
    benchmark.retired_ms = Some(now_ms());
    write.put(BENCHMARKS, name, &benchmark)?;
    let unfinished: Vec<BenchmarkRun> = crate::work::unfinished(write)?;
    let mut cancelled = Vec::new();
    for run in unfinished.into_iter().filter(|r| r.benchmark == name && r.state == JobState::Queued) {
        crate::work::cancel::<BenchmarkRun>(write, actor, &run.id)?;
        cancelled.push(run.id);
    }
    write.audit(HOST_CHAIN, actor, "benchmark.retire", json!({"benchmark": name}))?;
    Ok((benchmark, cancelled))
}

/// A tenant's ordinal in every benchmark (`benchmark-member:<tenant>`), and
/// the counter they come from.
const BENCHMARK_MEMBER: Setting<u32> = Setting::new("benchmark-member:");
const BENCHMARK_MEMBERS: Setting<u64> = Setting::new("benchmark-member");

/// The tenant's ordinal in every benchmark, given at its first opt-in.
/// One ordinal across benchmarks lets a benchmark's tenant sets be compared
/// with a sibling's (the same vendor and plugin).
fn member(write: &mut Write<'_>, tenant: &str) -> Result<u32> {
    let setting = BENCHMARK_MEMBER.of(tenant);
    if let Some(member) = write.setting(&setting)? {
        return Ok(member);
    }
    let member = u32::try_from(write.next_sequence(&BENCHMARK_MEMBERS)?)
        .map_err(|_| Error::Internal("out of benchmark ordinals".into()))?;
    write.set(&setting, &member)?;
    Ok(member)
}

/// Opt `tenant` out: no run that starts later reads its data.
pub(crate) fn opt_out(write: &mut Write<'_>, actor: &str, benchmark: &str, tenant: &str) -> Result<OptIn> {
    let key = opt_in_key(benchmark, tenant);
    let mut opt_in: OptIn = write.get(OPT_INS, &key)?.filter(OptIn::active).ok_or_else(|| {
        Error::NotFound(format!("tenant `{tenant}` takes no part in benchmark `{benchmark}`"))
    })?;
    opt_in.opted_out_ms = Some(now_ms());
    write.put(OPT_INS, &key, &opt_in)?;
    write.audit(tenant, actor, "benchmark.opt-out", json!({"benchmark": benchmark}))?;
    Ok(opt_in)
}

//! Every route's path template, defined once: the daemon registers its
//! handlers and its access table (`ACCESS`) under these, and [`Client`]
//! (crate root) calls them. Grouped as the daemon's API modules are.
//!
//! [`Client`]: crate::Client

// system
pub const HEALTH: &str = "/health";
pub const OPENAPI: &str = "/openapi.json";
pub const METRICS: &str = "/metrics";
pub const STATUS: &str = "/v1/status";
pub const WHOAMI: &str = "/v1/whoami";
pub const HOST_AUDIT: &str = "/v1/audit";

// tenants, enrolment, tokens, policy, audit, grants
pub const TENANTS: &str = "/v1/tenants";
pub const TENANT_ENROLMENTS: &str = "/v1/tenants/{tenant}/enrolments";
pub const ENROL: &str = "/v1/enrol";
pub const TOKENS: &str = "/v1/tokens";
pub const TOKEN: &str = "/v1/tokens/{id}";
pub const TENANT_POLICY: &str = "/v1/tenants/{tenant}/policy";
pub const TENANT_BUDGET: &str = "/v1/tenants/{tenant}/budget";
pub const TENANT_AUDIT: &str = "/v1/tenants/{tenant}/audit";
pub const TENANT_GRANTS: &str = "/v1/tenants/{tenant}/grants";
pub const TENANT_GRANT: &str = "/v1/tenants/{tenant}/grants/{id}";

// backups
pub const BACKUPS: &str = "/v1/backups";

// datasets
pub const TENANT_DATASETS: &str = "/v1/tenants/{tenant}/datasets";
pub const TENANT_DATASET: &str = "/v1/tenants/{tenant}/datasets/{dataset}";

// plugins
pub const PLUGINS: &str = "/v1/plugins";
pub const PLUGIN: &str = "/v1/plugins/{hash}";

// approvals
pub const TENANT_APPROVALS: &str = "/v1/tenants/{tenant}/approvals";
pub const TENANT_APPROVAL: &str = "/v1/tenants/{tenant}/approvals/{id}";
pub const APPROVALS: &str = "/v1/approvals";

// jobs
pub const JOBS: &str = "/v1/jobs";
pub const JOB: &str = "/v1/jobs/{id}";
pub const JOB_CANCEL: &str = "/v1/jobs/{id}/cancel";
pub const JOB_RESULTS: &str = "/v1/jobs/{id}/results";
pub const JOB_LOG: &str = "/v1/jobs/{id}/log";
pub const TENANT_JOBS: &str = "/v1/tenants/{tenant}/jobs";

// benchmarks
pub const BENCHMARKS: &str = "/v1/benchmarks";
pub const BENCHMARK: &str = "/v1/benchmarks/{benchmark}";
pub const BENCHMARK_BUDGET: &str = "/v1/benchmarks/{benchmark}/budget";
pub const BENCHMARK_RUNS: &str = "/v1/benchmarks/{benchmark}/runs";
pub const BENCHMARK_RUN: &str = "/v1/benchmarks/{benchmark}/runs/{run}";
pub const BENCHMARK_RUN_CANCEL: &str = "/v1/benchmarks/{benchmark}/runs/{run}/cancel";
pub const BENCHMARK_VERSIONS: &str = "/v1/benchmarks/{benchmark}/versions";
pub const BENCHMARK_VERSION: &str = "/v1/benchmarks/{benchmark}/versions/{version}";
pub const TENANT_BENCHMARKS: &str = "/v1/tenants/{tenant}/benchmarks";
pub const TENANT_BENCHMARK: &str = "/v1/tenants/{tenant}/benchmarks/{benchmark}";
pub const TENANT_BENCHMARK_POSITION: &str = "/v1/tenants/{tenant}/benchmarks/{benchmark}/versions/{version}";
pub const TENANT_BENCHMARK_RUN_LOG: &str = "/v1/tenants/{tenant}/benchmark-runs/{run}/log";

/// `template` with its `{…}` parameters replaced by `args`, in order, each
/// percent-encoded as one path segment.
///
/// # Panics
/// When `args` does not give exactly one value per parameter: a bug in the
/// caller, not an input error.
pub fn fill(template: &str, args: &[&str]) -> String {
    let mut path = String::with_capacity(template.len() + 32);
    let mut args = args.iter();
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        let close = rest[open..].find('}').map(|c| open + c).expect("a closed parameter");
        path.push_str(&rest[..open]);
        let arg = args.next().unwrap_or_else(|| panic!("no value for {} in {template}", &rest[open..=close]));
        encode_segment(arg, &mut path);
        rest = &rest[close + 1..];
    }
    assert!(args.next().is_none(), "more values than parameters in {template}");
    path.push_str(rest);
    path
}

/// Percent-encodes what cannot stand in a path segment as is: a name with
/// `/` or `?` reaches the daemon's shape check instead of another route.
fn encode_segment(segment: &str, out: &mut String) {
    encode(segment, b"-._~@:!$&'()*+,;=", out);
}

/// A query value, percent-encoded (`,` and `:` kept: the daemon's lists).
pub(crate) fn encode_query(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    encode(value, b"-._~:,", &mut out);
    out
}

fn encode(text: &str, keep: &[u8], out: &mut String) {
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || keep.contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fills_parameters_in_order_and_encodes_them() {
        assert_eq!(fill(TENANT_DATASET, &["acme", "trips"]), "/v1/tenants/acme/datasets/trips");
        assert_eq!(fill(JOB, &["a/b c"]), "/v1/jobs/a%2Fb%20c");
        assert_eq!(fill(TENANTS, &[]), "/v1/tenants");
    }

    #[test]
    #[should_panic(expected = "no value")]
    fn a_missing_value_is_a_bug() {
        fill(TENANT_GRANT, &["acme"]);
    }
}

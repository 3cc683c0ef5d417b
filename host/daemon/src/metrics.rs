//! Prometheus metrics, served on `/metrics` in the OpenMetrics text format.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    /// The route template (`/v1/jobs/{id}`), never the concrete path.
    route: String,
    method: String,
    status: u16,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: String,
}

#[derive(Debug)]
pub(crate) struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    request_seconds: Family<RequestLabels, Histogram, fn() -> Histogram>,
    jobs: Family<OutcomeLabels, Counter>,
    run_seconds: Histogram,
    suppressed_cells: Counter,
    refusals: Family<ReasonLabels, Counter>,
}

fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("kanon");
        let requests = Family::<RequestLabels, Counter>::default();
        let request_seconds =
            Family::<RequestLabels, Histogram, fn() -> Histogram>::new_with_constructor(latency_histogram);
        let jobs = Family::<OutcomeLabels, Counter>::default();
        let run_seconds = Histogram::new(exponential_buckets(0.01, 2.0, 16));
        let suppressed_cells = Counter::default();
        let refusals = Family::<ReasonLabels, Counter>::default();
        registry.register("http_requests", "HTTP requests by route, method and status", requests.clone());
        registry.register("http_request_seconds", "HTTP request latency", request_seconds.clone());
        registry.register("jobs", "Finished jobs by outcome", jobs.clone());
        registry.register("job_run_seconds", "Wall-clock time of job runs", run_seconds.clone());
        registry.register(
            "suppressed_cells",
            "Cells the gate suppressed in released tables",
            suppressed_cells.clone(),
        );
        registry.register(
            "refusals",
            "Refused access: bad tokens, denied roles, uncovered jobs, plugin requests the host refused",
            refusals.clone(),
        );
        Self { registry, requests, request_seconds, jobs, run_seconds, suppressed_cells, refusals }
    }

    pub fn request(&self, route: &str, method: &str, status: u16, elapsed: Duration) {
        let labels = RequestLabels { route: route.to_owned(), method: method.to_owned(), status };
        self.requests.get_or_create(&labels).inc();
        self.request_seconds.get_or_create(&labels).observe(elapsed.as_secs_f64());
    }

    pub fn refusal(&self, reason: &str) {
        self.refusals.get_or_create(&ReasonLabels { reason: reason.to_owned() }).inc();
    }

    /// A job ended: `run` holds its time, suppressed cells and the plugin
    /// requests the host refused, when it ran.
    pub fn job_finished(&self, outcome: &str, run: Option<(Duration, Option<usize>, usize)>) {
        self.jobs.get_or_create(&OutcomeLabels { outcome: outcome.to_owned() }).inc();
        if let Some((elapsed, suppressed, refusals)) = run {
            self.run_seconds.observe(elapsed.as_secs_f64());
            self.suppressed_cells.inc_by(suppressed.unwrap_or(0) as u64);
            if refusals > 0 {
                self.refusals
                    .get_or_create(&ReasonLabels { reason: "plugin-request".into() })
                    .inc_by(refusals as u64);
            }
        }
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("writing to a String");
        out
    }
}

//! Prometheus metrics at `/metrics`, per pipeline and stage.

use super::models::Served;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::sync::Arc;
use std::time::Duration;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PipelineLabel {
    pub pipeline: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FailureLabels {
    pub pipeline: String,
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StageLabels {
    pub pipeline: String,
    pub stage: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct InstanceLabels {
    pub pipeline: String,
    pub stage: String,
    pub state: &'static str,
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

fn seconds() -> Histogram {
    // 50 µs to about 52 s.
    Histogram::new(exponential_buckets(0.000_05, 2.0, 21))
}

pub struct Metrics {
    registry: Registry,
    pub requests: Family<PipelineLabel, Counter>,
    pub failures: Family<FailureLabels, Counter>,
    pub request_seconds: Histograms<PipelineLabel>,
    pub queue_wait_seconds: Histograms<PipelineLabel>,
    pub stage_seconds: Histograms<StageLabels>,
    pub inference_seconds: Histograms<StageLabels>,
    instances: Family<InstanceLabels, Gauge>,
    queue_depth: Family<PipelineLabel, Gauge>,
    in_flight: Family<PipelineLabel, Gauge>,
    rss: Gauge,
    /// 1 while the fleet metadata is expired and nothing fresher is
    /// reachable (the device keeps what it runs, and does not update).
    pub fleet_stale: Gauge,
    /// Versions swapped in by the update agent.
    pub fleet_swaps: Counter,
    /// Versions rolled back after failing probation.
    pub fleet_rollbacks: Counter,
    /// Update checks that failed, by kind.
    pub fleet_check_failures: Family<KindLabel, Counter>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: String,
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let requests = Family::default();
        registry.register(
            "outpost_requests",
            "Inference requests received, per pipeline",
            Family::clone(&requests),
        );
        let failures = Family::default();
        registry.register(
            "outpost_request_failures",
            "Inference requests that failed, per pipeline and kind (bad_request, overloaded, DeadlineExceeded, or the StageError kind: Trap, Timeout, MemoryLimit, ...)",
            Family::clone(&failures),
        );
        let histograms = || Histograms::new_with_constructor(seconds as fn() -> Histogram);
        let request_seconds = histograms();
        registry.register(
            "outpost_request_seconds",
            "Time from a request's body read to its answer",
            request_seconds.clone(),
        );
        let queue_wait_seconds = histograms();
        registry.register(
            "outpost_queue_wait_seconds",
            "Time a request waited for a free slot of its pipeline",
            queue_wait_seconds.clone(),
        );
        let stage_seconds = Family::new_with_constructor(seconds as fn() -> Histogram);
        registry.register(
            "outpost_stage_seconds",
            "Time of one call into a stage, inference included",
            Family::clone(&stage_seconds),
        );
        let inference_seconds = Family::new_with_constructor(seconds as fn() -> Histogram);
        registry.register(
            "outpost_inference_seconds",
            "Time a stage's call spent inside models",
            Family::clone(&inference_seconds),
        );
        let instances = Family::default();
        registry.register(
            "outpost_stage_instances",
            "Stage instances, live (idle or serving) and idle",
            Family::clone(&instances),
        );
        let queue_depth = Family::default();
        registry.register(
            "outpost_queue_depth",
            "Requests waiting for a slot",
            Family::clone(&queue_depth),
        );
        let in_flight = Family::default();
        registry.register(
            "outpost_in_flight",
            "Requests running",
            Family::clone(&in_flight),
        );
        let rss = Gauge::default();
        // Unprefixed, as Prometheus' process collectors name it.
        registry.register(
            "process_resident_memory_bytes",
            "Resident set size of the process",
            Gauge::clone(&rss),
        );
        let fleet_stale = Gauge::default();
        registry.register(
            "outpost_fleet_stale",
            "1 while the fleet metadata has expired and no fresher is reachable: the device keeps what it runs and does not update",
            Gauge::clone(&fleet_stale),
        );
        let fleet_swaps = Counter::default();
        registry.register(
            "outpost_fleet_swaps",
            "Versions the update agent swapped in",
            Counter::clone(&fleet_swaps),
        );
        let fleet_rollbacks = Counter::default();
        registry.register(
            "outpost_fleet_rollbacks",
            "Versions rolled back after failing probation",
            Counter::clone(&fleet_rollbacks),
        );
        let fleet_check_failures = Family::default();
        registry.register(
            "outpost_fleet_check_failures",
            "Update checks that failed, by kind (stale, untrusted-metadata, blob, fetch, refused, install, ...)",
            Family::clone(&fleet_check_failures),
        );
        Self {
            fleet_stale,
            fleet_swaps,
            fleet_rollbacks,
            fleet_check_failures,
            registry,
            requests,
            failures,
            request_seconds,
            queue_wait_seconds,
            stage_seconds,
            inference_seconds,
            instances,
            queue_depth,
            in_flight,
            rss,
        }
    }

    pub fn observe(histogram: &Histogram, d: Duration) {
        histogram.observe(d.as_secs_f64());
    }

    /// The text exposition, with gauges read now.
    pub fn render(&self, served: &[Arc<Served>]) -> String {
        for model in served {
            let pipeline = model.name.clone();
            for step in model.pipeline.stages() {
                let stage = step.stage();
                for (state, value) in [
                    ("live", stage.live_instances()),
                    ("idle", stage.idle_instances()),
                ] {
                    self.instances
                        .get_or_create(&InstanceLabels {
                            pipeline: pipeline.clone(),
                            stage: stage.name().to_owned(),
                            state,
                        })
                        .set(i64::try_from(value).unwrap_or(i64::MAX));
                }
            }
            let label = PipelineLabel {
                pipeline: pipeline.clone(),
            };
            self.queue_depth
                .get_or_create(&label)
                .set(i64::try_from(model.waiting()).unwrap_or(i64::MAX));
            self.in_flight
                .get_or_create(&label)
                .set(i64::try_from(model.running()).unwrap_or(i64::MAX));
        }
        self.rss.set(resident_bytes().unwrap_or(0));
        let mut text = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}

/// VmRSS from /proc/self/status.
pub fn resident_bytes() -> Option<i64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: i64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

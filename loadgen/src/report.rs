//! What a run measured: answers counted by outcome, latency percentiles, and the
//! final report as a table or JSON.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::io;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::options::Protocol;

mod heartbeat;

pub use heartbeat::{DelaySummary, ExpiryFigures, HeartbeatFigures, WatchFigures};

/// Polaris codes this tool names in its table (the set the design document uses).
const POLARIS_CODE_NAMES: &[(u32, &str)] = &[
    (200000, "ExecuteSuccess"),
    (200001, "DataNoChange"),
    (400000, "BadRequest"),
    (400001, "ParseException"),
    (400002, "EmptyRequest"),
    (400103, "InvalidParameter"),
    (400110, "InvalidNamespaceName"),
    (400120, "InvalidServiceName"),
    (400122, "InvalidServiceToken"),
    (400130, "InvalidInstanceID"),
    (400131, "InvalidInstanceHost"),
    (400132, "InvalidInstancePort"),
    (400136, "InvalidInstanceProtocol"),
    (400137, "InvalidInstanceVersion"),
    (400138, "InvalidInstanceLogicSet"),
    (400140, "HealthCheckNotOpen"),
    (400141, "HeartbeatOnDisabledIns"),
    (400150, "InvalidMetadata"),
    (400201, "ExistedResource"),
    (400202, "NotFoundResource"),
    (400301, "NotFoundService"),
    (400303, "NotFoundInstance"),
    (401000, "Unauthorized"),
    (401001, "NotAllowedAccess"),
    (401002, "EmptyAutToken"),
    (429001, "InstanceTooManyRequests"),
    (500000, "ExecuteException"),
    (500001, "StoreLayerException"),
    (500007, "HeartbeatException"),
    (500008, "InstanceRegisTimeout"),
];

pub const EXECUTE_SUCCESS: u32 = 200000;
pub const DATA_NO_CHANGE: u32 = 200001;
pub const EXISTED_RESOURCE: u32 = 400201;
pub const NOT_FOUND_RESOURCE: u32 = 400202;

/// How one request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// gRPC OK; the Polaris code of the `Response`, `None` when it carried none.
    Answered(Option<u32>),
    /// The server answered the call with a gRPC status other than OK.
    Grpc(tonic::Code),
    /// The call failed in its connection (refused, reset, closed mid-call) without a
    /// status from the server; the code is the one the gRPC client gives it.
    Transport(tonic::Code),
    /// No answer within the per-request deadline.
    Timeout,
    /// The server ended a Discover stream without a status before answering.
    StreamEnded,
    /// An HTTP answer whose body is no Polaris JSON answer; its status.
    Http(u16),
    /// The HTTP connection failed, or closed before the answer.
    ConnectionFailed,
}

impl Outcome {
    /// Key used in the table and in JSON: the Polaris code, `grpc:<Code>`,
    /// `transport:<Code>`, `http:<status>`, `no-code`, `timeout`, `stream-ended` or
    /// `connection-failed`.
    pub fn label(&self) -> String {
        match self {
            Outcome::Answered(Some(code)) => code.to_string(),
            Outcome::Answered(None) => "no-code".to_owned(),
            Outcome::Grpc(code) => format!("grpc:{code:?}"),
            Outcome::Transport(code) => format!("transport:{code:?}"),
            Outcome::Timeout => "timeout".to_owned(),
            Outcome::StreamEnded => "stream-ended".to_owned(),
            Outcome::Http(status) => format!("http:{status}"),
            Outcome::ConnectionFailed => "connection-failed".to_owned(),
        }
    }

    /// Human name of a known Polaris code or of the gRPC status.
    pub fn description(&self) -> &'static str {
        match self {
            Outcome::Answered(Some(code)) => POLARIS_CODE_NAMES
                .iter()
                .find(|(known, _)| known == code)
                .map_or("", |(_, name)| name),
            Outcome::Answered(None) => "Response without code",
            Outcome::Grpc(code) => code.description(),
            Outcome::Transport(_) => "connection failed, no status from the server",
            Outcome::Timeout => "no answer before --timeout",
            Outcome::StreamEnded => "stream ended before the answer",
            Outcome::Http(_) => "HTTP answer without a Polaris JSON body",
            Outcome::ConnectionFailed => "HTTP connection failed before the answer",
        }
    }

    /// Whether the server answered with a Polaris `Response` (whatever its code), as
    /// opposed to a failure of the call or a deadline.
    pub fn is_answer(&self) -> bool {
        matches!(self, Outcome::Answered(_))
    }
}

/// The Polaris codes a scenario counts as a correct answer; anything else fails the run.
#[derive(Debug, Clone, Copy)]
pub struct Expectation {
    pub codes: &'static [u32],
}

impl Expectation {
    pub fn accepts(&self, outcome: Outcome) -> bool {
        matches!(outcome, Outcome::Answered(Some(code)) if self.codes.contains(&code))
    }
}

/// Answers counted by outcome.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tally {
    counts: HashMap<Outcome, u64>,
}

impl Tally {
    pub fn record(&mut self, outcome: Outcome) {
        *self.counts.entry(outcome).or_default() += 1;
    }

    pub fn merge(&mut self, other: &Tally) {
        for (outcome, count) in &other.counts {
            *self.counts.entry(*outcome).or_default() += count;
        }
    }

    pub fn total(&self) -> u64 {
        self.counts.values().sum()
    }

    /// Answers that ended in `outcome`.
    pub fn count(&self, outcome: Outcome) -> u64 {
        self.counts.get(&outcome).copied().unwrap_or(0)
    }

    /// Outcomes with their counts, most frequent first (ties by label).
    pub fn sorted(&self) -> Vec<(Outcome, u64)> {
        let mut rows: Vec<_> = self.counts.iter().map(|(o, c)| (*o, *c)).collect();
        rows.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.label().cmp(&b.0.label())));
        rows
    }

    /// Outcomes the expectation does not accept, with their counts.
    pub fn unexpected(&self, expectation: Expectation) -> Vec<(Outcome, u64)> {
        self.sorted()
            .into_iter()
            .filter(|(outcome, _)| !expectation.accepts(*outcome))
            .collect()
    }
}

/// One kind of request a scenario sends, and the answers it accepts.
#[derive(Debug, Clone, Copy)]
pub struct Operation {
    /// `register`, `deregister`: the label of its rows in the report.
    pub name: &'static str,
    pub expectation: Expectation,
}

/// Answers and latencies of one operation, recorded by all the workers.
#[derive(Debug, Clone)]
pub struct Measurements {
    pub operation: Operation,
    pub tally: Tally,
    /// From the request's intended start to its answer, in µs. In a closed loop the
    /// intended start is the send; in an open loop it is the scheduled time, so time
    /// spent waiting for a free in-flight slot counts too.
    pub latency: Histogram<u64>,
    /// From the actual send to the answer, in µs.
    pub service: Histogram<u64>,
    /// `latency` of each outcome apart: how long the accepted requests took beside the
    /// refused ones.
    pub latency_by_outcome: HashMap<Outcome, Histogram<u64>>,
}

impl Measurements {
    pub fn new(operation: Operation) -> Self {
        Measurements {
            operation,
            tally: Tally::default(),
            latency: new_latency_histogram(),
            service: new_latency_histogram(),
            latency_by_outcome: HashMap::new(),
        }
    }

    pub fn record(&mut self, outcome: Outcome, latency: Duration, service: Duration) {
        let micros = latency.as_micros() as u64;
        self.tally.record(outcome);
        self.latency.saturating_record(micros);
        self.service.saturating_record(service.as_micros() as u64);
        self.latency_by_outcome
            .entry(outcome)
            .or_insert_with(new_latency_histogram)
            .saturating_record(micros);
    }
}

/// Latency histogram of a run, in microseconds.
pub fn new_latency_histogram() -> Histogram<u64> {
    // 1 µs to 1 hour at 3 significant digits; larger values saturate.
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds")
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct LatencySummary {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

impl LatencySummary {
    /// Reads the percentiles of a histogram recorded in microseconds.
    pub fn from_micros(histogram: &Histogram<u64>) -> Self {
        let at = |quantile: f64| micros_to_millis(histogram.value_at_quantile(quantile));
        LatencySummary {
            p50: at(0.50),
            p90: at(0.90),
            p99: at(0.99),
            p999: at(0.999),
            max: micros_to_millis(histogram.max()),
        }
    }
}

fn micros_to_millis(micros: u64) -> f64 {
    micros as f64 / 1000.0
}

/// The final report of a run; serialised as is for `--json`.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub scenario: &'static str,
    pub targets: Vec<String>,
    pub protocol: Protocol,
    /// Requests sent, over all operations.
    pub count: u64,
    pub in_flight: u32,
    pub connections: usize,
    /// HTTP only: connections opened during the run, the kept ones included; above
    /// `connections` when some were closed (a failure, a deadline) and reopened.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connections_opened: Option<u64>,
    /// Length of the gradual start; 0 without one.
    pub ramp_s: f64,
    pub elapsed_s: f64,
    /// Answers per second over the whole run, ramp included.
    pub rate_per_s: f64,
    /// Only for open-loop runs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub open_loop: Option<OpenLoopReport>,
    /// Only for discover runs; its keys sit at the top level.
    #[serde(flatten)]
    pub discover: Option<DiscoverFigures>,
    /// Only for heartbeat runs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub heartbeat: Option<HeartbeatFigures>,
    /// Count per outcome label, over all operations.
    pub codes: BTreeMap<String, u64>,
    /// Of `codes`, the requests the server answered with a Polaris `Response`: count
    /// per Polaris code (`no-code` for a `Response` without one).
    pub answered: BTreeMap<String, u64>,
    /// Of `codes`, the requests without a Polaris answer: a gRPC status from the
    /// server (`grpc:Unavailable`), a failed connection (`transport:Cancelled`,
    /// `connection-failed`), `timeout`, ...; count per label.
    pub failed: BTreeMap<String, u64>,
    /// With `--acked-out`: the ids written, one per registration answered 200000 or
    /// 400201.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub acknowledged: Option<u64>,
    /// Over all operations; from the intended start in an open loop.
    pub latency_ms: LatencySummary,
    /// `latency_ms` of each outcome apart, by its label (`200000`, `429001`, ...).
    pub latency_ms_by_code: BTreeMap<String, LatencySummary>,
    /// Count per outcome label the scenario does not accept, over all operations;
    /// empty on success.
    pub unexpected: BTreeMap<String, u64>,
    /// The same figures for each operation, in the order the scenario sends them.
    pub operations: Vec<OperationReport>,
}

/// Counts and latencies of one operation.
#[derive(Debug, Clone, Serialize)]
pub struct OperationReport {
    pub op: &'static str,
    pub count: u64,
    pub codes: BTreeMap<String, u64>,
    pub latency_ms: LatencySummary,
    pub unexpected: BTreeMap<String, u64>,
    #[serde(skip)]
    pub rows: Vec<(Outcome, u64)>,
}

/// What an open-loop run offered and what it got.
#[derive(Debug, Clone, Serialize)]
pub struct OpenLoopReport {
    /// The steady rate asked for (`--rate`), reached at the end of the ramp.
    pub offered_rate_per_s: f64,
    /// Answers per second over the run: below the offered rate when the server
    /// (or the in-flight bound) did not keep up, or during a ramp.
    pub achieved_rate_per_s: f64,
    /// When the last request was due, from the start.
    pub schedule_s: f64,
    /// From the actual send to the answer, without the wait for the due time's
    /// in-flight slot; the top-level `latency_ms` counts from the due time.
    pub service_latency_ms: LatencySummary,
}

/// How a discover run polled and what its full answers carried.
#[derive(Debug, Clone, Serialize)]
pub struct DiscoverFigures {
    pub watchers: u32,
    pub services_per_watcher: u32,
    /// Whether the watchers never sent a revision.
    pub cold: bool,
    /// Instances listed by all the full (ExecuteSuccess) answers.
    pub instances_returned: u64,
    /// Mean instances per full answer; 0 without any.
    pub instances_per_full_answer: f64,
}

impl DiscoverFigures {
    /// Figures of a run whose `full_answers` full answers listed `instances_returned`.
    pub fn new(
        watchers: u32,
        services_per_watcher: u32,
        cold: bool,
        instances_returned: u64,
        full_answers: u64,
    ) -> Self {
        let instances_per_full_answer = if full_answers > 0 {
            instances_returned as f64 / full_answers as f64
        } else {
            0.0
        };
        DiscoverFigures {
            watchers,
            services_per_watcher,
            cold,
            instances_returned,
            instances_per_full_answer,
        }
    }
}

/// The load an open-loop run offered.
#[derive(Debug, Clone, Copy)]
pub struct OfferedLoad {
    pub rate_per_s: f64,
    /// When the last request was due, from the start.
    pub schedule: Duration,
}

/// Everything a report is made from, besides the measurements.
#[derive(Debug, Clone)]
pub struct RunSetup {
    pub scenario: &'static str,
    pub targets: Vec<String>,
    pub protocol: Protocol,
    pub in_flight: u32,
    pub connections: usize,
    pub ramp: Duration,
    /// `Some` for an open-loop run.
    pub offered: Option<OfferedLoad>,
}

/// Outcome labels with their counts.
fn labelled(rows: &[(Outcome, u64)]) -> BTreeMap<String, u64> {
    labelled_where(rows, |_| true)
}

/// The labels and counts of the outcomes `keep` selects.
fn labelled_where(
    rows: &[(Outcome, u64)],
    keep: impl Fn(&Outcome) -> bool,
) -> BTreeMap<String, u64> {
    rows.iter()
        .filter(|(outcome, _)| keep(outcome))
        .map(|(outcome, count)| (outcome.label(), *count))
        .collect()
}

impl OperationReport {
    fn new(measured: &Measurements) -> Self {
        let rows = measured.tally.sorted();
        OperationReport {
            op: measured.operation.name,
            count: measured.tally.total(),
            codes: labelled(&rows),
            latency_ms: LatencySummary::from_micros(&measured.latency),
            unexpected: labelled(&measured.tally.unexpected(measured.operation.expectation)),
            rows,
        }
    }
}

impl Report {
    /// `operations` holds one entry per operation.
    pub fn new(setup: RunSetup, elapsed: Duration, operations: &[Measurements]) -> Self {
        debug_assert!(!operations.is_empty());
        let mut tally = Tally::default();
        let mut unexpected = BTreeMap::new();
        let mut latency = new_latency_histogram();
        let mut service = new_latency_histogram();
        let mut by_code: BTreeMap<String, Histogram<u64>> = BTreeMap::new();
        for measured in operations {
            for (outcome, histogram) in &measured.latency_by_outcome {
                by_code
                    .entry(outcome.label())
                    .or_insert_with(new_latency_histogram)
                    .add(histogram)
                    .expect("histograms share bounds");
            }
            tally.merge(&measured.tally);
            for (outcome, count) in measured.tally.unexpected(measured.operation.expectation) {
                *unexpected.entry(outcome.label()).or_default() += count;
            }
            latency
                .add(&measured.latency)
                .expect("histograms share bounds");
            service
                .add(&measured.service)
                .expect("histograms share bounds");
        }
        let count = tally.total();
        let rows = tally.sorted();
        let elapsed_s = elapsed.as_secs_f64();
        let rate_per_s = if elapsed_s > 0.0 {
            count as f64 / elapsed_s
        } else {
            0.0
        };
        let open_loop = setup.offered.map(|offered| OpenLoopReport {
            offered_rate_per_s: offered.rate_per_s,
            achieved_rate_per_s: rate_per_s,
            schedule_s: offered.schedule.as_secs_f64(),
            service_latency_ms: LatencySummary::from_micros(&service),
        });
        Report {
            scenario: setup.scenario,
            targets: setup.targets,
            protocol: setup.protocol,
            count,
            in_flight: setup.in_flight,
            connections: setup.connections,
            connections_opened: None,
            ramp_s: setup.ramp.as_secs_f64(),
            elapsed_s,
            rate_per_s,
            open_loop,
            discover: None,
            heartbeat: None,
            codes: labelled(&rows),
            answered: labelled_where(&rows, Outcome::is_answer),
            failed: labelled_where(&rows, |outcome| !outcome.is_answer()),
            acknowledged: None,
            latency_ms: LatencySummary::from_micros(&latency),
            latency_ms_by_code: by_code
                .iter()
                .map(|(label, histogram)| (label.clone(), LatencySummary::from_micros(histogram)))
                .collect(),
            unexpected,
            operations: operations.iter().map(OperationReport::new).collect(),
        }
    }

    pub fn is_success(&self) -> bool {
        self.unexpected.is_empty()
            && self
                .heartbeat
                .as_ref()
                .is_none_or(HeartbeatFigures::is_success)
    }

    /// The unexpected answers on one line, named by operation when there are several.
    pub fn unexpected_summary(&self) -> String {
        let named = self.operations.len() > 1;
        let mut parts = Vec::new();
        for operation in &self.operations {
            for (label, count) in &operation.unexpected {
                if named {
                    parts.push(format!("{} {label} x{count}", operation.op));
                } else {
                    parts.push(format!("{label} x{count}"));
                }
            }
        }
        if let Some(heartbeat) = &self.heartbeat {
            parts.extend(heartbeat.failures());
        }
        parts.join(", ")
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("report serialises")
    }

    /// The report as an aligned plain-text table; with several operations the code
    /// and latency rows are named by operation.
    pub fn to_table(&self) -> String {
        let named = self.operations.len() > 1;
        let mut out = String::new();
        let _ = writeln!(out, "scenario     {}", self.scenario);
        let _ = writeln!(out, "targets      {}", self.targets.join(", "));
        let _ = writeln!(out, "protocol     {}", self.protocol.name());
        let _ = writeln!(out, "count        {}", self.count);
        let _ = writeln!(out, "in-flight    {}", self.in_flight);
        match self.connections_opened {
            Some(opened) => {
                let _ = writeln!(out, "connections  {} ({opened} opened)", self.connections);
            }
            None => {
                let _ = writeln!(out, "connections  {}", self.connections);
            }
        }
        if self.ramp_s > 0.0 {
            let _ = writeln!(out, "ramp         {:.3} s", self.ramp_s);
        }
        let _ = writeln!(out, "elapsed      {:.3} s", self.elapsed_s);
        match &self.open_loop {
            Some(open_loop) => {
                let _ = writeln!(
                    out,
                    "offered      {:.1} req/s",
                    open_loop.offered_rate_per_s
                );
                let _ = writeln!(
                    out,
                    "achieved     {:.1} req/s",
                    open_loop.achieved_rate_per_s
                );
                let _ = writeln!(out, "schedule     {:.3} s", open_loop.schedule_s);
            }
            None => {
                let _ = writeln!(out, "rate         {:.1} req/s", self.rate_per_s);
            }
        }
        if let Some(discover) = &self.discover {
            let revisions = if discover.cold {
                "cold"
            } else {
                "revisions sent"
            };
            let _ = writeln!(
                out,
                "watchers     {} x {} services, {revisions}",
                discover.watchers, discover.services_per_watcher
            );
            let _ = writeln!(
                out,
                "instances    {} returned, {:.1} per full answer",
                discover.instances_returned, discover.instances_per_full_answer
            );
        }
        if let Some(heartbeat) = &self.heartbeat {
            heartbeat.write_fleet(&mut out);
        }
        let answered: u64 = self.answered.values().sum();
        let failed: u64 = self.failed.values().sum();
        let _ = writeln!(
            out,
            "answered     {answered} with a Polaris code, {failed} without"
        );
        if let Some(acknowledged) = self.acknowledged {
            let _ = writeln!(out, "acknowledged {acknowledged} ids written");
        }
        let _ = writeln!(out);

        let rows: Vec<(&str, &Outcome, u64)> = self
            .operations
            .iter()
            .flat_map(|operation| {
                let op = if named { operation.op } else { "" };
                operation.rows.iter().map(move |(o, count)| (op, o, *count))
            })
            .collect();
        let op_width = rows.iter().map(|(op, ..)| op.len()).max().unwrap_or(0);
        let op_column = |op: &str| {
            if named {
                format!("{op:<op_width$}  ")
            } else {
                String::new()
            }
        };
        let label_width = rows
            .iter()
            .map(|(_, outcome, _)| outcome.label().len())
            .chain([4])
            .max()
            .unwrap_or(4);
        let _ = writeln!(
            out,
            "{}{:<label_width$}  {:>12}  name",
            op_column("op"),
            "code",
            "count"
        );
        for (op, outcome, count) in rows {
            let _ = writeln!(
                out,
                "{}{:<label_width$}  {:>12}  {}",
                op_column(op),
                outcome.label(),
                count,
                outcome.description()
            );
        }
        let _ = writeln!(out);

        let latency_rows: Vec<(&str, LatencySummary)> = if named {
            self.operations
                .iter()
                .map(|operation| (operation.op, operation.latency_ms))
                .collect()
        } else if let Some(open_loop) = &self.open_loop {
            vec![
                ("from intended start", self.latency_ms),
                ("from send", open_loop.service_latency_ms),
            ]
        } else {
            vec![("", self.latency_ms)]
        };
        let width = latency_rows
            .iter()
            .map(|(label, _)| label.len() + 2)
            .chain([13])
            .max()
            .unwrap_or(13);
        let _ = writeln!(
            out,
            "{:<width$}{:>10} {:>10} {:>10} {:>10} {:>10}",
            "latency ms", "p50", "p90", "p99", "p99.9", "max"
        );
        for (label, latency) in latency_rows {
            let _ = writeln!(
                out,
                "{label:<width$}{:>10.3} {:>10.3} {:>10.3} {:>10.3} {:>10.3}",
                latency.p50, latency.p90, latency.p99, latency.p999, latency.max
            );
        }
        if let Some(heartbeat) = &self.heartbeat {
            heartbeat.write_expiry(&mut out);
        }
        out
    }
}

/// Writes the percentile distribution of a microsecond histogram in milliseconds, in
/// HdrHistogram's `.hgrm` text layout (readable by its plotting tools).
pub fn write_percentile_distribution(
    histogram: &Histogram<u64>,
    out: &mut impl io::Write,
) -> io::Result<()> {
    writeln!(
        out,
        "{:>12} {:>14} {:>10} {:>14}\n",
        "Value", "Percentile", "TotalCount", "1/(1-Percentile)"
    )?;
    let mut total_count = 0u64;
    for step in histogram.iter_quantiles(5) {
        total_count += step.count_since_last_iteration();
        let value = micros_to_millis(step.value_iterated_to());
        let quantile = step.quantile_iterated_to();
        if quantile < 1.0 {
            writeln!(
                out,
                "{value:12.3} {quantile:2.12} {total_count:10} {:14.2}",
                1.0 / (1.0 - quantile)
            )?;
        } else {
            writeln!(out, "{value:12.3} {quantile:2.12} {total_count:10}")?;
        }
    }
    writeln!(
        out,
        "#[Mean    = {:12.3}, StdDeviation   = {:12.3}]",
        histogram.mean() / 1000.0,
        histogram.stdev() / 1000.0
    )?;
    writeln!(
        out,
        "#[Max     = {:12.3}, Total count    = {:12}]",
        micros_to_millis(histogram.max()),
        histogram.len()
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const STORM: Expectation = Expectation {
        codes: &[EXECUTE_SUCCESS, EXISTED_RESOURCE],
    };

    const REGISTER: Operation = Operation {
        name: "register",
        expectation: STORM,
    };
    const DEREGISTER: Operation = Operation {
        name: "deregister",
        expectation: Expectation {
            codes: &[EXECUTE_SUCCESS],
        },
    };

    fn setup() -> RunSetup {
        RunSetup {
            scenario: "storm",
            targets: vec!["127.0.0.1:8091".to_owned()],
            protocol: Protocol::Grpc,
            in_flight: 512,
            connections: 8,
            ramp: Duration::ZERO,
            offered: None,
        }
    }

    /// Measurements of `operation` from a tally and latencies (µs, also the service times).
    fn measured(
        operation: Operation,
        tally: Tally,
        latencies: impl IntoIterator<Item = u64>,
    ) -> Measurements {
        let mut measurements = Measurements::new(operation);
        measurements.tally = tally;
        measurements.latency = histogram_of(latencies);
        measurements.service = measurements.latency.clone();
        measurements
    }

    #[test]
    fn latency_is_also_reported_per_code() {
        let mut register = Measurements::new(REGISTER);
        for _ in 0..10 {
            register.record(
                Outcome::Answered(Some(EXECUTE_SUCCESS)),
                Duration::from_millis(800),
                Duration::from_millis(800),
            );
            register.record(
                Outcome::Answered(Some(429_001)),
                Duration::from_millis(2),
                Duration::from_millis(2),
            );
        }
        let mut deregister = Measurements::new(DEREGISTER);
        deregister.record(
            Outcome::Answered(Some(EXECUTE_SUCCESS)),
            Duration::from_millis(1_600),
            Duration::from_millis(1_600),
        );
        let report = Report::new(setup(), Duration::from_secs(1), &[register, deregister]);
        let by_code = &report.latency_ms_by_code;
        assert_eq!(by_code.keys().collect::<Vec<_>>(), ["200000", "429001"]);
        let accepted = by_code["200000"];
        assert!((799.0..=801.0).contains(&accepted.p50), "{accepted:?}");
        assert!((1_599.0..=1_601.0).contains(&accepted.max), "{accepted:?}");
        assert!((1.9..=2.1).contains(&by_code["429001"].max));
    }

    fn tally_of(outcomes: impl IntoIterator<Item = (Outcome, u64)>) -> Tally {
        let mut tally = Tally::default();
        for (outcome, count) in outcomes {
            for _ in 0..count {
                tally.record(outcome);
            }
        }
        tally
    }

    fn histogram_of(values: impl IntoIterator<Item = u64>) -> Histogram<u64> {
        let mut histogram = new_latency_histogram();
        for value in values {
            histogram.record(value).unwrap();
        }
        histogram
    }

    #[test]
    fn discover_figures_sit_at_the_top_level() {
        let tally = tally_of([
            (Outcome::Answered(Some(EXECUTE_SUCCESS)), 4),
            (Outcome::Answered(Some(DATA_NO_CHANGE)), 6),
        ]);
        let mut report = Report::new(
            RunSetup {
                scenario: "discover",
                ..setup()
            },
            Duration::from_secs(1),
            &[measured(REGISTER, tally, [1000; 10])],
        );
        let plain: serde_json::Value = serde_json::from_str(&report.to_json()).unwrap();
        assert!(plain.get("instances_returned").is_none());
        report.discover = Some(DiscoverFigures::new(2, 3, false, 10, 4));
        let json: serde_json::Value = serde_json::from_str(&report.to_json()).unwrap();
        assert_eq!(json["instances_returned"], 10);
        assert_eq!(json["instances_per_full_answer"], 2.5);
        assert_eq!(json["watchers"], 2);
        assert_eq!(json["cold"], false);
        assert_eq!(json["codes"]["200001"], 6);
        let table = report.to_table();
        assert!(
            table.contains("watchers     2 x 3 services, revisions sent"),
            "{table}"
        );
        assert!(
            table.contains("instances    10 returned, 2.5 per full answer"),
            "{table}"
        );
        assert!(table.contains("  DataNoChange"), "{table}");
        assert_eq!(
            DiscoverFigures::new(1, 1, true, 0, 0).instances_per_full_answer,
            0.0
        );
    }

    #[test]
    fn outcomes_have_stable_labels() {
        assert_eq!(Outcome::Answered(Some(200000)).label(), "200000");
        assert_eq!(Outcome::Answered(None).label(), "no-code");
        assert_eq!(
            Outcome::Grpc(tonic::Code::Unavailable).label(),
            "grpc:Unavailable"
        );
        assert_eq!(
            Outcome::Transport(tonic::Code::Cancelled).label(),
            "transport:Cancelled"
        );
        assert_eq!(Outcome::Timeout.label(), "timeout");
        assert_eq!(Outcome::StreamEnded.label(), "stream-ended");
        assert_eq!(Outcome::Http(404).label(), "http:404");
        assert_eq!(Outcome::ConnectionFailed.label(), "connection-failed");
        assert_eq!(
            Outcome::Answered(Some(400201)).description(),
            "ExistedResource"
        );
        assert_eq!(Outcome::Answered(Some(123)).description(), "");
    }

    #[test]
    fn expectation_accepts_only_its_codes() {
        assert!(STORM.accepts(Outcome::Answered(Some(EXECUTE_SUCCESS))));
        assert!(STORM.accepts(Outcome::Answered(Some(EXISTED_RESOURCE))));
        assert!(!STORM.accepts(Outcome::Answered(Some(429001))));
        assert!(!STORM.accepts(Outcome::Answered(None)));
        assert!(!STORM.accepts(Outcome::Timeout));
        assert!(!STORM.accepts(Outcome::Grpc(tonic::Code::Unimplemented)));
        assert!(!STORM.accepts(Outcome::Http(200)));
        assert!(!STORM.accepts(Outcome::ConnectionFailed));
    }

    #[test]
    fn an_http_run_names_its_protocol_and_the_connections_it_opened() {
        let tally = tally_of([(Outcome::Answered(Some(EXECUTE_SUCCESS)), 3)]);
        let answers = [measured(REGISTER, tally, [1000; 3])];
        let grpc = Report::new(setup(), Duration::from_secs(1), &answers);
        let grpc_json: serde_json::Value = serde_json::from_str(&grpc.to_json()).unwrap();
        assert_eq!(grpc_json["protocol"], "grpc");
        assert!(grpc_json.get("connections_opened").is_none());
        assert!(grpc.to_table().contains("connections  8\n"));

        let http = RunSetup {
            protocol: Protocol::Http,
            connections: 64,
            ..setup()
        };
        let mut report = Report::new(http, Duration::from_secs(1), &answers);
        report.connections_opened = Some(66);
        let json: serde_json::Value = serde_json::from_str(&report.to_json()).unwrap();
        assert_eq!(json["protocol"], "http");
        assert_eq!(json["connections"], 64);
        assert_eq!(json["connections_opened"], 66);
        let table = report.to_table();
        assert!(table.contains("protocol     http\n"), "{table}");
        assert!(table.contains("connections  64 (66 opened)\n"), "{table}");
    }

    #[test]
    fn tallies_merge_and_sort_by_count() {
        let mut first = Tally::default();
        first.record(Outcome::Answered(Some(200000)));
        first.record(Outcome::Answered(Some(200000)));
        first.record(Outcome::Timeout);
        let mut second = Tally::default();
        second.record(Outcome::Answered(Some(200000)));
        second.record(Outcome::Answered(Some(429001)));
        first.merge(&second);
        assert_eq!(first.total(), 5);
        assert_eq!(first.count(Outcome::Answered(Some(200000))), 3);
        assert_eq!(first.count(Outcome::Answered(Some(200001))), 0);
        assert_eq!(
            first.sorted(),
            [
                (Outcome::Answered(Some(200000)), 3),
                (Outcome::Answered(Some(429001)), 1),
                (Outcome::Timeout, 1),
            ]
        );
        assert_eq!(
            first.unexpected(STORM),
            [(Outcome::Answered(Some(429001)), 1), (Outcome::Timeout, 1)]
        );
    }

    #[test]
    fn percentiles_are_read_in_milliseconds() {
        let histogram = histogram_of(1..=1000);
        let summary = LatencySummary::from_micros(&histogram);
        assert_eq!(summary.p50, 0.5);
        assert_eq!(summary.p90, 0.9);
        assert_eq!(summary.p99, 0.99);
        assert_eq!(summary.p999, 0.999);
        assert_eq!(summary.max, 1.0);
    }

    #[test]
    fn empty_histogram_reads_as_zero() {
        let summary = LatencySummary::from_micros(&new_latency_histogram());
        assert_eq!(summary.p50, 0.0);
        assert_eq!(summary.max, 0.0);
    }

    #[test]
    fn report_counts_codes_and_flags_unexpected_ones() {
        let mut tally = Tally::default();
        for _ in 0..98 {
            tally.record(Outcome::Answered(Some(EXECUTE_SUCCESS)));
        }
        tally.record(Outcome::Answered(Some(EXISTED_RESOURCE)));
        tally.record(Outcome::Grpc(tonic::Code::Unavailable));
        let report = Report::new(
            setup(),
            Duration::from_secs(2),
            &[measured(REGISTER, tally, [1500, 2000])],
        );
        assert_eq!(report.count, 100);
        assert_eq!(report.rate_per_s, 50.0);
        assert_eq!(report.codes["200000"], 98);
        assert_eq!(report.codes["400201"], 1);
        assert!(!report.is_success());
        assert_eq!(
            report.unexpected,
            BTreeMap::from([("grpc:Unavailable".to_owned(), 1)])
        );

        let table = report.to_table();
        assert!(table.contains("rate         50.0 req/s"), "{table}");
        assert!(
            table.contains("200000                      98  ExecuteSuccess"),
            "{table}"
        );
        assert!(table.contains("grpc:Unavailable"), "{table}");

        let json: serde_json::Value = serde_json::from_str(&report.to_json()).unwrap();
        assert_eq!(json["scenario"], "storm");
        assert_eq!(json["count"], 100);
        assert_eq!(json["elapsed_s"], 2.0);
        assert_eq!(json["codes"]["200000"], 98);
        assert_eq!(json["latency_ms"]["max"], 2.0);
        assert!(json["latency_ms"]["p999"].is_number());
        assert!(json.get("rows").is_none());
        assert!(json.get("open_loop").is_none());
        assert_eq!(json["ramp_s"], 0.0);
        assert_eq!(json["operations"][0]["op"], "register");
        assert_eq!(json["operations"][0]["count"], 100);
        assert_eq!(report.unexpected_summary(), "grpc:Unavailable x1");
    }

    #[test]
    fn answers_and_failures_are_counted_apart() {
        let tally = tally_of([
            (Outcome::Answered(Some(EXECUTE_SUCCESS)), 7),
            (Outcome::Answered(Some(500001)), 2),
            (Outcome::Answered(None), 1),
            (Outcome::Grpc(tonic::Code::Unavailable), 3),
            (Outcome::Transport(tonic::Code::Cancelled), 4),
            (Outcome::Transport(tonic::Code::Unavailable), 5),
            (Outcome::Timeout, 6),
        ]);
        let mut report = Report::new(
            setup(),
            Duration::from_secs(1),
            &[measured(REGISTER, tally, [1000])],
        );
        let answered = BTreeMap::from([
            ("200000".to_owned(), 7),
            ("500001".to_owned(), 2),
            ("no-code".to_owned(), 1),
        ]);
        let failed = BTreeMap::from([
            ("grpc:Unavailable".to_owned(), 3),
            ("transport:Cancelled".to_owned(), 4),
            ("transport:Unavailable".to_owned(), 5),
            ("timeout".to_owned(), 6),
        ]);
        assert_eq!(report.answered, answered);
        assert_eq!(report.failed, failed);
        assert_eq!(report.codes.len(), 7);
        let table = report.to_table();
        assert!(
            table.contains("answered     10 with a Polaris code, 18 without\n"),
            "{table}"
        );
        assert!(table.contains("connection failed, no status"), "{table}");
        assert!(!table.contains("acknowledged"), "{table}");
        let json: serde_json::Value = serde_json::from_str(&report.to_json()).unwrap();
        assert_eq!(json["answered"]["500001"], 2);
        assert_eq!(json["failed"]["transport:Cancelled"], 4);
        assert_eq!(json["failed"]["grpc:Unavailable"], 3);
        assert!(json.get("acknowledged").is_none());

        report.acknowledged = Some(7);
        let json: serde_json::Value = serde_json::from_str(&report.to_json()).unwrap();
        assert_eq!(json["acknowledged"], 7);
        assert!(report.to_table().contains("acknowledged 7 ids written\n"));
    }

    #[test]
    fn a_single_closed_loop_operation_keeps_the_plain_table() {
        let tally = tally_of([(Outcome::Answered(Some(EXECUTE_SUCCESS)), 3)]);
        let report = Report::new(
            setup(),
            Duration::from_secs(1),
            &[measured(REGISTER, tally, [1000, 2000, 3000])],
        );
        let table = report.to_table();
        assert!(table.contains("\ncode           count  name\n"), "{table}");
        assert!(
            table.contains("\nlatency ms          p50"),
            "no op column: {table}"
        );
        assert!(!table.contains("ramp"), "{table}");
        assert!(!table.contains("offered"), "{table}");
    }

    #[test]
    fn several_operations_are_reported_apart_and_together() {
        let registered = measured(
            REGISTER,
            tally_of([(Outcome::Answered(Some(EXECUTE_SUCCESS)), 4)]),
            [1000, 1000, 1000, 1000],
        );
        let deregistered = measured(
            DEREGISTER,
            tally_of([
                (Outcome::Answered(Some(EXECUTE_SUCCESS)), 3),
                (Outcome::Answered(Some(EXISTED_RESOURCE)), 1),
            ]),
            [1500, 1500, 1500, 2000],
        );
        let report = Report::new(
            RunSetup {
                scenario: "churn",
                ramp: Duration::from_secs(2),
                ..setup()
            },
            Duration::from_secs(1),
            &[registered, deregistered],
        );
        assert_eq!(report.count, 8);
        assert_eq!(report.codes["200000"], 7);
        // ExistedResource is fine for a register but not for a deregister.
        assert_eq!(
            report.unexpected,
            BTreeMap::from([("400201".to_owned(), 1)])
        );
        assert_eq!(report.unexpected_summary(), "deregister 400201 x1");
        assert_eq!(report.operations[0].latency_ms.max, 1.0);
        assert_eq!(report.operations[1].latency_ms.max, 2.0);
        assert_eq!(report.latency_ms.max, 2.0);
        assert_eq!(report.ramp_s, 2.0);

        let table = report.to_table();
        assert!(table.contains("ramp         2.000 s"), "{table}");
        assert!(table.contains("op          code"), "{table}");
        assert!(
            table.contains("register    200000             4  ExecuteSuccess"),
            "{table}"
        );
        assert!(
            table.contains("deregister  400201             1  ExistedResource"),
            "{table}"
        );
        assert!(table.contains("\nregister          1.000"), "{table}");
        assert!(table.contains("\nderegister        1.500"), "{table}");

        let json: serde_json::Value = serde_json::from_str(&report.to_json()).unwrap();
        assert_eq!(json["operations"][1]["op"], "deregister");
        assert_eq!(json["operations"][1]["unexpected"]["400201"], 1);
        assert_eq!(json["operations"][0]["unexpected"], serde_json::json!({}));
    }

    #[test]
    fn open_loop_reports_offered_and_achieved_rates_and_both_latencies() {
        let mut register = measured(
            REGISTER,
            tally_of([(Outcome::Answered(Some(EXECUTE_SUCCESS)), 150)]),
            (0..150).map(|i| 40_000 + i * 100),
        );
        register.service = histogram_of((0..150).map(|_| 2_000));
        let report = Report::new(
            RunSetup {
                scenario: "open-loop",
                offered: Some(OfferedLoad {
                    rate_per_s: 200.0,
                    schedule: Duration::from_millis(745),
                }),
                ..setup()
            },
            Duration::from_secs(1),
            &[register],
        );
        let open_loop = report.open_loop.as_ref().expect("open-loop section");
        assert_eq!(open_loop.offered_rate_per_s, 200.0);
        assert_eq!(open_loop.achieved_rate_per_s, 150.0);
        assert_eq!(open_loop.service_latency_ms.max, 2.0);
        assert!(report.latency_ms.p50 > 40.0);

        let table = report.to_table();
        assert!(table.contains("offered      200.0 req/s"), "{table}");
        assert!(table.contains("achieved     150.0 req/s"), "{table}");
        assert!(table.contains("schedule     0.745 s"), "{table}");
        assert!(table.contains("\nfrom intended start"), "{table}");
        assert!(
            table.contains("\nfrom send                 2.000"),
            "{table}"
        );

        let json: serde_json::Value = serde_json::from_str(&report.to_json()).unwrap();
        assert_eq!(json["scenario"], "open-loop");
        assert_eq!(json["open_loop"]["offered_rate_per_s"], 200.0);
        assert_eq!(json["open_loop"]["achieved_rate_per_s"], 150.0);
        assert_eq!(json["open_loop"]["service_latency_ms"]["p99"], 2.0);
    }

    #[test]
    fn measurements_count_outcomes_and_keep_both_latencies() {
        let mut first = Measurements::new(REGISTER);
        first.record(
            Outcome::Answered(Some(EXECUTE_SUCCESS)),
            Duration::from_millis(30),
            Duration::from_millis(2),
        );
        first.record(
            Outcome::Timeout,
            Duration::from_secs(1),
            Duration::from_secs(1),
        );
        assert_eq!(first.tally.total(), 2);
        assert_eq!(first.latency.len(), 2);
        assert!(first.latency.equivalent(first.latency.min(), 30_000));
        assert!(first.service.equivalent(first.service.min(), 2_000));
        assert!(first.service.equivalent(first.service.max(), 1_000_000));
    }

    #[test]
    fn only_expected_codes_make_a_success() {
        let mut tally = Tally::default();
        tally.record(Outcome::Answered(Some(EXECUTE_SUCCESS)));
        tally.record(Outcome::Answered(Some(EXISTED_RESOURCE)));
        let report = Report::new(
            setup(),
            Duration::from_secs(1),
            &[measured(REGISTER, tally, [100])],
        );
        assert!(report.is_success());
    }

    #[test]
    fn percentile_distribution_ends_at_the_total() {
        let histogram = histogram_of(1..=1000);
        let mut out = Vec::new();
        write_percentile_distribution(&histogram, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        let last_row = text
            .lines()
            .rfind(|line| !line.starts_with('#') && !line.is_empty())
            .unwrap();
        let columns: Vec<_> = last_row.split_whitespace().collect();
        assert_eq!(columns[0], "1.000");
        assert_eq!(columns[1], "1.000000000000");
        assert_eq!(columns[2], "1000");
        assert!(text.contains("Total count    =         1000"), "{text}");
    }
}

//! What `verify` found: the server's listing of each service compared with the
//! fleet's instances of that service, counted, with a few examples of each
//! difference; shown as a table or JSON.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::time::Duration;

use serde::Serialize;

use crate::fleet::{Fleet, IdDigest, parse_id};
use crate::proto;

/// Examples kept of each kind of difference.
pub const MAX_EXAMPLES: usize = 10;

/// The fleet compared with the listings, service by service.
#[derive(Debug, Clone, Serialize)]
pub struct Verification {
    pub scenario: &'static str,
    pub targets: Vec<String>,
    /// Services whose listing was checked.
    pub services: u64,
    /// Instances of the fleet.
    pub expected: u64,
    /// Instances of the fleet the listings hold, mismatched or not.
    pub listed: u64,
    /// Instances of the fleet no listing holds.
    pub missing: u64,
    /// Listed instances of the fleet whose host, port or metadata differ.
    pub mismatched: u64,
    /// Listed entries that are no unlisted instance of the fleet: unknown ids, or
    /// an instance listed twice. Reported, not an error.
    pub extra: u64,
    pub elapsed_s: f64,
    /// The first missing instances found, service by service.
    pub missing_examples: Vec<InstanceSummary>,
    pub mismatched_examples: Vec<Mismatch>,
    pub extra_examples: Vec<InstanceSummary>,
}

/// An instance as the report names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InstanceSummary {
    /// Fleet index; none for an instance the fleet does not know.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub index: Option<u64>,
    pub id: String,
    pub namespace: String,
    pub service: String,
    pub host: String,
    pub port: u32,
}

/// A listed instance of the fleet that differs from what the fleet registered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Mismatch {
    /// As the fleet registered it.
    pub instance: InstanceSummary,
    pub differences: Vec<Difference>,
}

/// One field that differs; `listed` is `None` when the listing leaves it out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Difference {
    /// `host`, `port` or `metadata.{key}`.
    pub field: String,
    pub expected: String,
    pub listed: Option<String>,
}

impl Verification {
    pub fn new(targets: Vec<String>) -> Self {
        Verification {
            scenario: "verify",
            targets,
            services: 0,
            expected: 0,
            listed: 0,
            missing: 0,
            mismatched: 0,
            extra: 0,
            elapsed_s: 0.0,
            missing_examples: Vec::new(),
            mismatched_examples: Vec::new(),
            extra_examples: Vec::new(),
        }
    }

    /// True when every instance of the fleet is listed as it was registered.
    pub fn is_complete(&self) -> bool {
        self.missing == 0 && self.mismatched == 0
    }

    pub fn set_elapsed(&mut self, elapsed: Duration) {
        self.elapsed_s = elapsed.as_secs_f64();
    }

    /// Compares the listing of grid cell `cell` with the fleet's instances there;
    /// holds only their ids meanwhile.
    pub fn check_service(&mut self, fleet: &Fleet, cell: u64, listing: &[proto::Instance]) {
        let (namespace, service) = fleet.grid().cell(cell);
        let mut unlisted: HashMap<IdDigest, u64> = fleet
            .indices_in_cell(cell)
            .map(|index| (fleet.id_digest(index), index))
            .collect();
        self.services += 1;
        self.expected += unlisted.len() as u64;
        for entry in listing {
            let id = entry.id.as_deref().unwrap_or_default();
            let Some(index) = parse_id(id).and_then(|digest| unlisted.remove(&digest)) else {
                self.extra += 1;
                if self.extra_examples.len() < MAX_EXAMPLES {
                    self.extra_examples.push(InstanceSummary {
                        index: None,
                        id: id.to_owned(),
                        namespace: namespace.to_owned(),
                        service: service.to_owned(),
                        host: entry.host.clone().unwrap_or_default(),
                        port: entry.port.unwrap_or_default(),
                    });
                }
                continue;
            };
            self.listed += 1;
            let differences = differences(fleet, index, entry);
            if differences.is_empty() {
                continue;
            }
            self.mismatched += 1;
            if self.mismatched_examples.len() < MAX_EXAMPLES {
                self.mismatched_examples.push(Mismatch {
                    instance: summary(fleet, index),
                    differences,
                });
            }
        }
        let mut missing: Vec<u64> = unlisted.into_values().collect();
        missing.sort_unstable();
        self.missing += missing.len() as u64;
        let room = MAX_EXAMPLES - self.missing_examples.len();
        let examples = missing
            .iter()
            .take(room)
            .map(|&index| summary(fleet, index));
        self.missing_examples.extend(examples);
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("verification serialises")
    }

    /// The counts, then the examples of each difference.
    pub fn to_table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "scenario     {}", self.scenario);
        let _ = writeln!(out, "targets      {}", self.targets.join(", "));
        let _ = writeln!(out, "services     {}", self.services);
        let _ = writeln!(out, "expected     {}", self.expected);
        let _ = writeln!(out, "listed       {}", self.listed);
        let _ = writeln!(out, "missing      {}", self.missing);
        let _ = writeln!(out, "mismatched   {}", self.mismatched);
        let _ = writeln!(out, "extra        {}", self.extra);
        let _ = writeln!(out, "elapsed      {:.3} s", self.elapsed_s);
        let heading =
            |name: &str, shown: usize, count: u64| format!("\n{name} (first {shown} of {count})");
        if !self.missing_examples.is_empty() {
            let shown = self.missing_examples.len();
            let _ = writeln!(out, "{}", heading("missing", shown, self.missing));
            for instance in &self.missing_examples {
                let _ = writeln!(out, "  {}", instance.describe());
            }
        }
        if !self.mismatched_examples.is_empty() {
            let shown = self.mismatched_examples.len();
            let _ = writeln!(out, "{}", heading("mismatched", shown, self.mismatched));
            for mismatch in &self.mismatched_examples {
                let _ = writeln!(out, "  {}", mismatch.instance.describe());
                for difference in &mismatch.differences {
                    let listed = difference.listed.as_deref().unwrap_or("(absent)");
                    let _ = writeln!(
                        out,
                        "    {}: expected {}, listed {listed}",
                        difference.field, difference.expected
                    );
                }
            }
        }
        if !self.extra_examples.is_empty() {
            let shown = self.extra_examples.len();
            let _ = writeln!(out, "{}", heading("extra", shown, self.extra));
            for instance in &self.extra_examples {
                let _ = writeln!(out, "  {}", instance.describe());
            }
        }
        out
    }
}

impl InstanceSummary {
    /// `#index namespace/service host:port id`, without the index when unknown.
    fn describe(&self) -> String {
        let index = self.index.map(|i| format!("#{i} ")).unwrap_or_default();
        format!(
            "{index}{}/{} {}:{} id {}",
            self.namespace, self.service, self.host, self.port, self.id
        )
    }
}

/// Instance `index` of the fleet as registered.
fn summary(fleet: &Fleet, index: u64) -> InstanceSummary {
    let (namespace, service) = fleet.placement(index);
    let (host, port) = fleet.address(index);
    InstanceSummary {
        index: Some(index),
        id: fleet.instance_id(index),
        namespace: namespace.to_owned(),
        service: service.to_owned(),
        host: host.to_string(),
        port: u32::from(port),
    }
}

/// How a listed instance differs from instance `index` of the fleet: host, port,
/// and each metadata entry the fleet gave it (more entries are fine).
fn differences(fleet: &Fleet, index: u64, listed: &proto::Instance) -> Vec<Difference> {
    let (host, port) = fleet.address(index);
    let mut differences = Vec::new();
    let mut compare = |field: String, expected: String, listed: Option<String>| {
        if listed.as_deref() != Some(expected.as_str()) {
            differences.push(Difference {
                field,
                expected,
                listed,
            });
        }
    };
    compare("host".to_owned(), host.to_string(), listed.host.clone());
    compare(
        "port".to_owned(),
        port.to_string(),
        listed.port.map(|port| port.to_string()),
    );
    let mut metadata: Vec<_> = fleet.metadata(index).into_iter().collect();
    metadata.sort_unstable();
    for (key, value) in metadata {
        let listed_value = listed.metadata.get(&key).cloned();
        compare(format!("metadata.{key}"), value, listed_value);
    }
    differences
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::options::{FleetOptions, ServiceGridOptions};

    fn fleet(count: u64) -> Fleet {
        Fleet::new(&FleetOptions {
            count,
            grid: ServiceGridOptions {
                namespaces: 2,
                services: 2,
            },
            metadata: 3,
            metadata_size: 8,
            ttl: 5,
            seed: 3,
        })
    }

    /// The listing of `cell` a correct server gives: the fleet's instances, with ids.
    fn listing(fleet: &Fleet, cell: u64) -> Vec<proto::Instance> {
        fleet
            .indices_in_cell(cell)
            .map(|index| proto::Instance {
                id: Some(fleet.instance_id(index)),
                ..fleet.instance(index)
            })
            .collect()
    }

    fn verify(fleet: &Fleet, listings: impl Fn(u64) -> Vec<proto::Instance>) -> Verification {
        let mut verification = Verification::new(vec!["here:1".to_owned()]);
        for cell in 0..fleet.grid().cells() {
            verification.check_service(fleet, cell, &listings(cell));
        }
        verification
    }

    #[test]
    fn a_complete_listing_is_complete() {
        let fleet = fleet(30);
        let verification = verify(&fleet, |cell| listing(&fleet, cell));
        assert_eq!(
            (
                verification.services,
                verification.expected,
                verification.listed
            ),
            (4, 30, 30)
        );
        assert_eq!(
            (
                verification.missing,
                verification.mismatched,
                verification.extra
            ),
            (0, 0, 0)
        );
        assert!(verification.is_complete());
    }

    #[test]
    fn an_unknown_service_leaves_its_instances_missing() {
        let fleet = fleet(30);
        let verification = verify(&fleet, |cell| {
            if cell == 1 {
                Vec::new()
            } else {
                listing(&fleet, cell)
            }
        });
        // Cell 1 holds instances 1, 5, 9, ..., 29.
        assert_eq!(verification.missing, 8);
        let indices: Vec<_> = verification
            .missing_examples
            .iter()
            .map(|instance| instance.index.unwrap())
            .collect();
        assert_eq!(indices, [1, 5, 9, 13, 17, 21, 25, 29]);
        assert!(!verification.is_complete());
    }

    #[test]
    fn every_difference_of_an_instance_is_named() {
        let fleet = fleet(8);
        let verification = verify(&fleet, |cell| {
            let mut instances = listing(&fleet, cell);
            if cell == 2 {
                let changed = &mut instances[1];
                changed.port = Some(changed.port.unwrap() + 1);
                changed.metadata.remove("k0");
                changed.metadata.insert("k2".to_owned(), "other".to_owned());
                changed
                    .metadata
                    .insert("extra".to_owned(), "fine".to_owned());
            }
            instances
        });
        assert_eq!((verification.listed, verification.mismatched), (8, 1));
        let mismatch = &verification.mismatched_examples[0];
        assert_eq!(mismatch.instance.index, Some(6));
        let fields: Vec<_> = mismatch
            .differences
            .iter()
            .map(|d| (d.field.as_str(), d.listed.as_deref()))
            .collect();
        let port = fleet.address(6).1 + 1;
        assert_eq!(
            fields,
            [
                ("port", Some(port.to_string().as_str())),
                ("metadata.k0", None),
                ("metadata.k2", Some("other"))
            ]
        );
        assert_eq!(mismatch.differences[2].expected, fleet.metadata(6)["k2"]);
        let table = verification.to_table();
        assert!(table.contains("mismatched (first 1 of 1)"), "{table}");
        assert!(table.contains("    metadata.k0: expected "), "{table}");
        assert!(table.contains(", listed (absent)"), "{table}");
    }

    #[test]
    fn unknown_and_repeated_entries_are_extra_but_not_an_error() {
        let fleet = fleet(8);
        let verification = verify(&fleet, |cell| {
            let mut instances = listing(&fleet, cell);
            if cell == 0 {
                instances.push(instances[0].clone());
                instances.push(proto::Instance {
                    id: Some("ffff".to_owned()),
                    host: Some("192.0.2.1".to_owned()),
                    port: Some(9),
                    ..Default::default()
                });
            }
            instances
        });
        assert_eq!((verification.listed, verification.extra), (8, 2));
        assert!(verification.is_complete());
        let unknown = &verification.extra_examples[1];
        assert_eq!(
            unknown.describe(),
            "loadgen-ns-0/loadgen-svc-0 192.0.2.1:9 id ffff"
        );
    }

    #[test]
    fn examples_stop_at_ten_and_counts_go_on() {
        let fleet = fleet(100);
        let verification = verify(&fleet, |_| Vec::new());
        assert_eq!(verification.missing, 100);
        assert_eq!(verification.missing_examples.len(), MAX_EXAMPLES);
        let json: serde_json::Value = serde_json::from_str(&verification.to_json()).unwrap();
        assert_eq!(json["scenario"], "verify");
        assert_eq!(json["missing"], 100);
        assert_eq!(json["missing_examples"][0]["index"], 0);
        assert_eq!(json["missing_examples"][0]["id"], fleet.instance_id(0));
        assert_eq!(json["expected"], 100);
        assert!(json["extra_examples"].as_array().unwrap().is_empty());
        let table = verification.to_table();
        assert!(
            table.contains("\nmissing (first 10 of 100)\n  #0 loadgen-ns-0/"),
            "{table}"
        );
    }
}

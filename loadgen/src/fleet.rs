//! Deterministic fleet: instance `index` always gets the same namespace, service,
//! address and metadata for the same seed, so runs are repeatable and any index can
//! be built on its own by whichever worker pulls it. The services it is spread over
//! form a grid of namespaces × services that `discover` and `verify` walk too.

use std::collections::HashMap;
use std::net::Ipv4Addr;

use rand::rngs::Xoshiro256PlusPlus;
use rand::{RngExt, SeedableRng};
use sha1::{Digest, Sha1};

use crate::options::{FleetOptions, ServiceGridOptions};
use crate::proto;

/// Hosts live in 10.0.0.0/8: 2^24 of them.
const HOST_SPACE_BITS: u32 = 24;
const HOST_SPACE: u64 = 1 << HOST_SPACE_BITS;
const HALF_BITS: u32 = HOST_SPACE_BITS / 2;
const HALF_MASK: u32 = (1 << HALF_BITS) - 1;
/// Ports are drawn from the unprivileged range.
const PORT_MIN: u64 = 1024;
const PORT_SPAN: u64 = 65536 - PORT_MIN;
/// Largest fleet whose host:port pairs are all distinct: every host once per port.
pub const MAX_FLEET_SIZE: u64 = HOST_SPACE * PORT_SPAN;
const FEISTEL_ROUNDS: usize = 4;

/// The (namespace, service) pairs a fleet is spread over, numbered by cell: cell `c`
/// is namespace `c % namespaces` and service `(c / namespaces) % services`, so
/// namespaces alternate fastest.
#[derive(Debug, Clone)]
pub struct ServiceGrid {
    namespace_names: Vec<String>,
    service_names: Vec<String>,
}

impl ServiceGrid {
    pub fn new(options: &ServiceGridOptions) -> Self {
        ServiceGrid {
            namespace_names: (0..options.namespaces.max(1))
                .map(|i| format!("loadgen-ns-{i}"))
                .collect(),
            service_names: (0..options.services.max(1))
                .map(|i| format!("loadgen-svc-{i}"))
                .collect(),
        }
    }

    /// Number of cells: namespaces × services.
    pub fn cells(&self) -> u64 {
        self.namespace_names.len() as u64 * self.service_names.len() as u64
    }

    /// Namespace and service of cell `cell`; cells past the last wrap around.
    pub fn cell(&self, cell: u64) -> (&str, &str) {
        let namespaces = self.namespace_names.len() as u64;
        let services = self.service_names.len() as u64;
        let namespace = &self.namespace_names[(cell % namespaces) as usize];
        let service = &self.service_names[((cell / namespaces) % services) as usize];
        (namespace, service)
    }
}

/// Builds the register requests of one fleet.
#[derive(Debug, Clone)]
pub struct Fleet {
    count: u64,
    grid: ServiceGrid,
    metadata_keys: Vec<String>,
    metadata_size: usize,
    ttl: u32,
    /// Round keys of the permutation that scatters indices over the host space.
    host_keys: [u32; FEISTEL_ROUNDS],
    port_key: u64,
    metadata_key: u64,
}

impl Fleet {
    pub fn new(options: &FleetOptions) -> Self {
        debug_assert!(options.count <= MAX_FLEET_SIZE);
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(options.seed);
        Fleet {
            count: options.count,
            grid: ServiceGrid::new(&options.grid),
            metadata_keys: (0..options.metadata).map(|i| format!("k{i}")).collect(),
            metadata_size: options.metadata_size as usize,
            ttl: options.ttl,
            host_keys: std::array::from_fn(|_| rng.random()),
            port_key: rng.random(),
            metadata_key: rng.random(),
        }
    }

    /// Number of instances in the fleet.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Address of instance `index`. Distinct indices below [`MAX_FLEET_SIZE`] get
    /// distinct host:port pairs: the low 24 bits pick the host through a bijection,
    /// the higher bits shift the port, so a host that recurs gets another port.
    pub fn address(&self, index: u64) -> (Ipv4Addr, u16) {
        let low = (index % HOST_SPACE) as u32;
        let round = index / HOST_SPACE;
        let [_, a, b, c] = self.permute_host(low).to_be_bytes();
        let port_offset = mix64(u64::from(low) ^ self.port_key) % PORT_SPAN;
        let port = PORT_MIN + (port_offset + round) % PORT_SPAN;
        (Ipv4Addr::new(10, a, b, c), port as u16)
    }

    /// The services the fleet is spread over.
    pub fn grid(&self) -> &ServiceGrid {
        &self.grid
    }

    /// Namespace and service of instance `index`: those of grid cell `index`, so
    /// namespaces alternate fastest and every namespace sees each of its services.
    pub fn placement(&self, index: u64) -> (&str, &str) {
        self.grid.cell(index)
    }

    /// Indices of the fleet's instances in grid cell `cell` (below the cell count),
    /// in increasing order.
    pub fn indices_in_cell(&self, cell: u64) -> impl Iterator<Item = u64> + use<> {
        debug_assert!(cell < self.grid.cells());
        let step = usize::try_from(self.grid.cells()).unwrap_or(usize::MAX);
        (cell..self.count).step_by(step)
    }

    /// The id the server gives instance `index`, which registers without one.
    pub fn instance_id(&self, index: u64) -> String {
        hex::encode(self.id_digest(index))
    }

    /// The digest whose hex is [`Self::instance_id`]: half its size, for large sets.
    pub fn id_digest(&self, index: u64) -> IdDigest {
        let (namespace, service) = self.placement(index);
        let (host, port) = self.address(index);
        id_digest(namespace, service, &host.to_string(), port)
    }

    /// Metadata of instance `index`: keys `k{i}`, values of the configured size.
    pub fn metadata(&self, index: u64) -> HashMap<String, String> {
        self.metadata_keys
            .iter()
            .enumerate()
            .map(|(entry, key)| {
                let word = mix64(self.metadata_key ^ index.rotate_left(20) ^ entry as u64);
                let hex = format!("{word:016x}");
                let value = hex.chars().cycle().take(self.metadata_size).collect();
                (key.clone(), value)
            })
            .collect()
    }

    /// The register request for instance `index`; no id, the server computes it.
    pub fn instance(&self, index: u64) -> proto::Instance {
        let (namespace, service) = self.placement(index);
        let (host, port) = self.address(index);
        let health_check = (self.ttl > 0).then_some(proto::HealthCheck {
            r#type: proto::health_check::HealthCheckType::Heartbeat as i32,
            heartbeat: Some(proto::HeartbeatHealthCheck {
                ttl: Some(self.ttl),
            }),
        });
        proto::Instance {
            service: Some(service.to_owned()),
            namespace: Some(namespace.to_owned()),
            host: Some(host.to_string()),
            port: Some(u32::from(port)),
            protocol: Some("grpc".to_owned()),
            version: Some("1.0.0".to_owned()),
            weight: Some(100),
            healthy: Some(true),
            enable_health_check: Some(self.ttl > 0),
            health_check,
            metadata: self.metadata(index),
            ..Default::default()
        }
    }

    /// Keyed bijection on 24 bits (a balanced Feistel network).
    fn permute_host(&self, value: u32) -> u32 {
        debug_assert!(u64::from(value) < HOST_SPACE);
        let mut left = value >> HALF_BITS;
        let mut right = value & HALF_MASK;
        for key in self.host_keys {
            let mixed = mix64(u64::from(right ^ key)) as u32 & HALF_MASK;
            (left, right) = (right, left ^ mixed);
        }
        (left << HALF_BITS) | right
    }
}

/// SHA-1 digest of an instance id.
pub type IdDigest = [u8; 20];

/// The digest of the id a Polaris server computes for an instance registered
/// without one (and without a VPC): the id is the lowercase hex SHA-1 of
/// `namespace##service##host##port`.
pub fn id_digest(namespace: &str, service: &str, host: &str, port: u16) -> IdDigest {
    let mut hash = Sha1::new();
    for part in [namespace, service, host] {
        hash.update(part.as_bytes());
        hash.update(b"##");
    }
    hash.update(port.to_string().as_bytes());
    hash.finalize().into()
}

/// The digest an instance id is the hex of; `None` when it is not 40 lowercase hex
/// digits, as no server-computed id is.
pub fn parse_id(id: &str) -> Option<IdDigest> {
    if !id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    let mut digest = IdDigest::default();
    hex::decode_to_slice(id, &mut digest).ok()?;
    Some(digest)
}

/// SplitMix64 finaliser: a cheap, well-spread hash of one word.
fn mix64(mut value: u64) -> u64 {
    value = value.wrapping_add(0x9E37_79B9_7F4A_7C15);
    value = (value ^ (value >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    value = (value ^ (value >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    value ^ (value >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn options(seed: u64) -> FleetOptions {
        FleetOptions {
            count: 100_000,
            grid: ServiceGridOptions {
                namespaces: 2,
                services: 10,
            },
            metadata: 3,
            metadata_size: 16,
            ttl: 5,
            seed,
        }
    }

    #[test]
    fn addresses_are_distinct_for_a_large_fleet() {
        let fleet = Fleet::new(&options(1));
        let addresses: HashSet<_> = (0..100_000).map(|i| fleet.address(i)).collect();
        assert_eq!(addresses.len(), 100_000);
    }

    #[test]
    fn addresses_stay_distinct_when_hosts_recur() {
        let fleet = Fleet::new(&options(7));
        let indices = (0..1000).flat_map(|i| [i, i + HOST_SPACE, i + 2 * HOST_SPACE]);
        let addresses: HashSet<_> = indices.map(|i| fleet.address(i)).collect();
        assert_eq!(addresses.len(), 3000);
        assert_eq!(fleet.address(5).0, fleet.address(5 + HOST_SPACE).0);
    }

    #[test]
    fn host_permutation_is_a_bijection() {
        let fleet = Fleet::new(&options(3));
        let mut seen = vec![false; HOST_SPACE as usize];
        for value in 0..HOST_SPACE as u32 {
            let image = fleet.permute_host(value) as usize;
            assert!(!seen[image], "{value} collides");
            seen[image] = true;
        }
    }

    #[test]
    fn same_seed_gives_same_fleet_and_another_seed_does_not() {
        let first = Fleet::new(&options(42));
        let again = Fleet::new(&options(42));
        let other = Fleet::new(&options(43));
        for index in [0, 1, 999, 65_535, 99_999] {
            assert_eq!(first.instance(index), again.instance(index));
        }
        let differing = (0..100)
            .filter(|&i| first.address(i) != other.address(i))
            .count();
        assert!(differing > 90, "only {differing} of 100 addresses differ");
    }

    #[test]
    fn instance_carries_the_register_fields() {
        let fleet = Fleet::new(&options(1));
        let instance = fleet.instance(3);
        assert_eq!(instance.id, None);
        assert_eq!(instance.namespace.as_deref(), Some("loadgen-ns-1"));
        assert_eq!(instance.service.as_deref(), Some("loadgen-svc-1"));
        assert_eq!(instance.protocol.as_deref(), Some("grpc"));
        assert_eq!(instance.version.as_deref(), Some("1.0.0"));
        assert_eq!(instance.weight, Some(100));
        assert_eq!(instance.healthy, Some(true));
        assert_eq!(instance.enable_health_check, Some(true));
        let health_check = instance.health_check.expect("health check");
        assert_eq!(
            health_check.r#type,
            proto::health_check::HealthCheckType::Heartbeat as i32
        );
        assert_eq!(health_check.heartbeat.and_then(|h| h.ttl), Some(5));
        assert!(instance.host.unwrap().starts_with("10."));
        assert!(instance.port.unwrap() >= PORT_MIN as u32);
        assert_eq!(instance.metadata.len(), 3);
        assert!(instance.metadata.values().all(|v| v.len() == 16));
        assert!(instance.metadata.contains_key("k2"));
    }

    #[test]
    fn zero_ttl_registers_without_health_check() {
        let fleet = Fleet::new(&FleetOptions {
            ttl: 0,
            ..options(1)
        });
        let instance = fleet.instance(0);
        assert_eq!(instance.enable_health_check, Some(false));
        assert!(instance.health_check.is_none());
    }

    #[test]
    fn placement_covers_every_namespace_and_service() {
        let fleet = Fleet::new(&options(1));
        let placements: HashSet<_> = (0..20).map(|i| fleet.placement(i)).collect();
        assert_eq!(placements.len(), 20);
        assert_eq!(fleet.grid().cells(), 20);
    }

    #[test]
    fn the_instances_of_a_cell_are_those_placed_in_it() {
        let fleet = Fleet::new(&FleetOptions {
            count: 1003,
            ..options(1)
        });
        let mut seen = 0;
        for cell in 0..fleet.grid().cells() {
            let indices: Vec<_> = fleet.indices_in_cell(cell).collect();
            assert!(
                indices
                    .iter()
                    .all(|&index| fleet.placement(index) == fleet.grid().cell(cell))
            );
            seen += indices.len();
        }
        assert_eq!(seen, 1003);
        assert_eq!(
            fleet.indices_in_cell(2).take(3).collect::<Vec<_>>(),
            [2, 22, 42]
        );
    }

    // The server's own test vectors (computed with Python's hashlib).
    #[test]
    fn ids_are_those_the_server_computes() {
        let instance_id =
            |namespace, service, host, port| hex::encode(id_digest(namespace, service, host, port));
        assert_eq!(
            instance_id("default", "echo", "10.0.0.1", 8080),
            "f66fb94da5404b4c8a541173874f53eb60f82440"
        );
        assert_eq!(
            instance_id("ns", "svc", "h", 65_535),
            "61abf9c91af4ec52afb55ecc774075a272678e2e"
        );
        assert_eq!(
            parse_id("61abf9c91af4ec52afb55ecc774075a272678e2e"),
            Some(id_digest("ns", "svc", "h", 65_535))
        );
        assert_eq!(parse_id("61abf9"), None);
        assert_eq!(parse_id("61ABF9C91AF4EC52AFB55ECC774075A272678E2E"), None);
        assert_eq!(parse_id("not hex"), None);
        let fleet = Fleet::new(&options(1));
        let instance = fleet.instance(7);
        let port = u16::try_from(instance.port.unwrap()).unwrap();
        assert_eq!(
            fleet.instance_id(7),
            instance_id(
                instance.namespace.as_deref().unwrap(),
                instance.service.as_deref().unwrap(),
                instance.host.as_deref().unwrap(),
                port
            )
        );
    }
}

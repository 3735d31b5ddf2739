//! What the store writes and reads: plain rows, no wire types.

use std::sync::Arc;

use sha1::{Digest, Sha1};

/// One instance as it is stored, built by the naming layer from a validated request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceRecord {
    pub id: String,
    pub namespace: String,
    pub service: String,
    pub vpc_id: String,
    pub host: String,
    pub port: u32,
    pub protocol: String,
    pub version: String,
    pub priority: u32,
    pub weight: u32,
    pub healthy: bool,
    /// `None` when the request did not say: the stored flag is kept.
    pub isolate: Option<bool>,
    pub enable_health_check: bool,
    /// Heartbeat ttl in seconds; `Some` exactly when a health_check row is stored.
    pub health_check_ttl: Option<u32>,
    pub logic_set: String,
    pub region: String,
    pub zone: String,
    pub campus: String,
    /// Sorted by key, keys unique.
    pub metadata: Vec<(String, String)>,
}

impl InstanceRecord {
    /// Content revision: a hash of everything stored for the instance, given the isolate
    /// flag that will be stored. Equal revisions mean the write would change nothing.
    pub fn revision(&self, isolate: bool) -> String {
        // Every field, length first, into one buffer hashed at once.
        let mut content = Vec::with_capacity(256);
        let mut field = |bytes: &[u8]| {
            content.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
            content.extend_from_slice(bytes);
        };
        for text in [
            &self.namespace,
            &self.service,
            &self.vpc_id,
            &self.host,
            &self.protocol,
            &self.version,
            &self.logic_set,
            &self.region,
            &self.zone,
            &self.campus,
        ] {
            field(text.as_bytes());
        }
        for number in [self.port, self.priority, self.weight] {
            field(&number.to_le_bytes());
        }
        field(&[
            u8::from(self.healthy),
            u8::from(isolate),
            u8::from(self.enable_health_check),
        ]);
        field(&self.health_check_ttl.unwrap_or(0).to_le_bytes());
        for (key, value) in &self.metadata {
            field(key.as_bytes());
            field(value.as_bytes());
        }
        let digest = Sha1::digest(&content);
        hex::encode(&digest[..16])
    }
}

/// What a register write did to one instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegisterOutcome {
    Created,
    Replaced,
    /// The database already held this exact content; nothing was written.
    Unchanged,
    /// The service does not exist and the batch was not allowed to create it.
    ServiceNotFound,
}

/// A service as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredService {
    pub id: String,
    pub namespace: String,
    pub name: String,
    pub ctime: String,
    pub mtime: String,
}

/// What the store holds for an instance after a register write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredState {
    pub service: Arc<StoredService>,
    pub isolate: bool,
    pub revision: String,
    pub ctime: String,
    pub mtime: String,
}

/// What a register write did to one instance, and what is stored for it now (`None`
/// when its service was not found).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registered {
    pub outcome: RegisterOutcome,
    pub stored: Option<StoredState>,
}

/// A health transition: the instance as it is to be stored, with its new health in
/// `record.healthy`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthChange {
    pub record: InstanceRecord,
    pub isolate: bool,
}

/// What a health write stored for one instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthSet {
    pub revision: String,
    pub mtime: String,
}

/// An instance row written since some moment, as the change feed reads it first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangedRow {
    pub id: String,
    pub revision: String,
    /// Deregistered (soft-deleted).
    pub deleted: bool,
    pub mtime: String,
}

/// What a deregister write did to one instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeregisterOutcome {
    /// Deregistered; `at` is the mtime its row was marked with.
    Deleted { at: String },
    /// There was no such instance: nothing to do.
    Absent,
}

/// Policy the naming layer passes with a register batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegisterOptions {
    /// Create missing namespaces and services instead of answering `ServiceNotFound`.
    pub create_services: bool,
}

/// A live instance as read from the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredInstance {
    pub record: InstanceRecord,
    pub isolate: bool,
    pub service_id: String,
    pub revision: String,
    pub ctime: String,
    pub mtime: String,
}

/// The id a service gets when batchreg creates it: stable across replicas, so two that
/// create the same service at once agree on its id.
pub fn service_id(namespace: &str, service: &str) -> String {
    let digest = Sha1::digest(format!("{namespace}##{service}").as_bytes());
    hex::encode(&digest[..16])
}

/// A plain instance of service `ns/svc`, for tests.
#[cfg(test)]
impl InstanceRecord {
    pub(crate) fn sample(id: &str) -> Self {
        InstanceRecord {
            id: id.to_owned(),
            namespace: "ns".to_owned(),
            service: "svc".to_owned(),
            vpc_id: String::new(),
            host: "h".to_owned(),
            port: 1,
            protocol: String::new(),
            version: String::new(),
            priority: 0,
            weight: 100,
            healthy: true,
            isolate: None,
            enable_health_check: false,
            health_check_ttl: None,
            logic_set: String::new(),
            region: String::new(),
            zone: String::new(),
            campus: String::new(),
            metadata: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Revisions are stored: the same content must hash the same in every version.
    #[test]
    fn revisions_are_stable() {
        let record = InstanceRecord {
            id: "i".into(),
            namespace: "ns".into(),
            service: "svc".into(),
            vpc_id: "v".into(),
            host: "10.0.0.1".into(),
            port: 8080,
            protocol: "grpc".into(),
            version: "1.0".into(),
            priority: 3,
            weight: 100,
            healthy: true,
            isolate: None,
            enable_health_check: true,
            health_check_ttl: Some(5),
            logic_set: "ls".into(),
            region: "r".into(),
            zone: "z".into(),
            campus: "c".into(),
            metadata: vec![("a".into(), "1".into()), ("b".into(), "2".into())],
        };
        assert_eq!(record.revision(false), "c8d42a5aff30abbd885253dbf69a51c8");
        assert_eq!(record.revision(true), "4eb52bf7b83f6a93b279d24d178818f2");
    }
}

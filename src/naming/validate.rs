//! Request validation with Polaris's limits, and the step from a request to the record the
//! store writes.

use super::InstanceInput;
use super::instance_id::instance_id;
use crate::code::Code;
use crate::store::InstanceRecord;

pub const MAX_NAMESPACE_LEN: usize = 64;
pub const MAX_SERVICE_LEN: usize = 128;
pub const MAX_ID_LEN: usize = 128;
pub const MAX_HOST_LEN: usize = 128;
pub const MAX_PROTOCOL_LEN: usize = 32;
pub const MAX_VERSION_LEN: usize = 32;
pub const MAX_LOGIC_SET_LEN: usize = 128;
pub const MAX_LOCATION_LEN: usize = 128;
pub const MAX_VPC_ID_LEN: usize = 64;
pub const MAX_METADATA_ENTRIES: usize = 64;
pub const MAX_METADATA_KEY_LEN: usize = 128;
pub const MAX_METADATA_VALUE_LEN: usize = 4096;
pub const MAX_PORT: u32 = 65_535;
pub const MAX_WEIGHT: u32 = 65_535;
pub const MAX_TTL_SECONDS: u32 = 60;
pub const DEFAULT_TTL_SECONDS: u32 = 5;
pub const DEFAULT_WEIGHT: u32 = 100;

/// A request field that breaks a limit. The text says which and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValidationError {
    #[error("empty request")]
    Empty,
    #[error("invalid namespace: {0}")]
    Namespace(&'static str),
    #[error("invalid service name: {0}")]
    Service(&'static str),
    #[error("invalid instance id: {0}")]
    Id(&'static str),
    #[error("invalid instance host: {0}")]
    Host(&'static str),
    #[error("invalid instance port: {0}")]
    Port(&'static str),
    #[error("invalid instance protocol: {0}")]
    Protocol(&'static str),
    #[error("invalid instance version: {0}")]
    Version(&'static str),
    #[error("invalid instance logic_set: {0}")]
    LogicSet(&'static str),
    #[error("invalid instance metadata: {0}")]
    Metadata(&'static str),
    #[error("invalid parameter: {0}")]
    Parameter(&'static str),
}

impl ValidationError {
    /// The Polaris code the request is answered with.
    pub fn code(&self) -> Code {
        match self {
            ValidationError::Empty => Code::EmptyRequest,
            ValidationError::Namespace(_) => Code::InvalidNamespaceName,
            ValidationError::Service(_) => Code::InvalidServiceName,
            ValidationError::Id(_) => Code::InvalidInstanceId,
            ValidationError::Host(_) => Code::InvalidInstanceHost,
            ValidationError::Port(_) => Code::InvalidInstancePort,
            ValidationError::Protocol(_) => Code::InvalidInstanceProtocol,
            ValidationError::Version(_) => Code::InvalidInstanceVersion,
            ValidationError::LogicSet(_) => Code::InvalidInstanceLogicSet,
            ValidationError::Metadata(_) => Code::InvalidMetadata,
            ValidationError::Parameter(_) => Code::InvalidParameter,
        }
    }
}

/// Whether a namespace or service name uses only `[0-9A-Za-z-./:_]`.
fn is_name(text: &str) -> bool {
    text.bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'/' | b':' | b'_'))
}

fn check_names(input: &InstanceInput) -> Result<(&str, &str), ValidationError> {
    let namespace = check_namespace(input)?;
    Ok((namespace, check_service(input)?))
}

fn check_namespace(input: &InstanceInput) -> Result<&str, ValidationError> {
    let namespace = input.namespace.as_deref().unwrap_or("");
    if namespace.is_empty() {
        return Err(ValidationError::Namespace("namespace is required"));
    }
    if namespace.len() > MAX_NAMESPACE_LEN {
        return Err(ValidationError::Namespace("longer than 64 characters"));
    }
    if !is_name(namespace) {
        return Err(ValidationError::Namespace(
            "only 0-9 A-Z a-z - . / : _ are allowed",
        ));
    }
    Ok(namespace)
}

fn check_service(input: &InstanceInput) -> Result<&str, ValidationError> {
    let service = input.service.as_deref().unwrap_or("");
    if service.is_empty() {
        return Err(ValidationError::Service("service is required"));
    }
    if service.len() > MAX_SERVICE_LEN {
        return Err(ValidationError::Service("longer than 128 characters"));
    }
    if !is_name(service) {
        return Err(ValidationError::Service(
            "only 0-9 A-Z a-z - . / : _ are allowed",
        ));
    }
    Ok(service)
}

fn check_host_port(input: &InstanceInput) -> Result<(&str, u32), ValidationError> {
    let host = input.host.as_deref().unwrap_or("");
    if host.is_empty() {
        return Err(ValidationError::Host("host is required"));
    }
    if host.len() > MAX_HOST_LEN {
        return Err(ValidationError::Host("longer than 128 characters"));
    }
    let Some(port) = input.port else {
        return Err(ValidationError::Port("port is required"));
    };
    if port > MAX_PORT {
        return Err(ValidationError::Port("greater than 65535"));
    }
    Ok((host, port))
}

/// The client's id when it sent a non-empty one.
fn given_id(input: &InstanceInput) -> Result<Option<&str>, ValidationError> {
    match input.id.as_deref() {
        None | Some("") => Ok(None),
        Some(id) if id.len() > MAX_ID_LEN => Err(ValidationError::Id("longer than 128 characters")),
        Some(id) => Ok(Some(id)),
    }
}

fn at_most(value: &Option<String>, max: usize) -> bool {
    value.as_deref().is_none_or(|v| v.len() <= max)
}

/// Validates a register request and builds the record to store, moving the request's
/// values into it.
pub fn register_record(input: InstanceInput) -> Result<InstanceRecord, ValidationError> {
    if input.is_empty() {
        return Err(ValidationError::Empty);
    }
    check_names(&input)?;
    given_id(&input)?;
    check_host_port(&input)?;
    if !at_most(&input.protocol, MAX_PROTOCOL_LEN) {
        return Err(ValidationError::Protocol("longer than 32 characters"));
    }
    if !at_most(&input.version, MAX_VERSION_LEN) {
        return Err(ValidationError::Version("longer than 32 characters"));
    }
    if !at_most(&input.logic_set, MAX_LOGIC_SET_LEN) {
        return Err(ValidationError::LogicSet("longer than 128 characters"));
    }
    if !at_most(&input.vpc_id, MAX_VPC_ID_LEN) {
        return Err(ValidationError::Parameter(
            "vpc_id longer than 64 characters",
        ));
    }
    let weight = input.weight.unwrap_or(DEFAULT_WEIGHT);
    if weight > MAX_WEIGHT {
        return Err(ValidationError::Parameter("weight greater than 65535"));
    }
    if let Some(location) = &input.location
        && ![&location.region, &location.zone, &location.campus]
            .into_iter()
            .all(|part| at_most(part, MAX_LOCATION_LEN))
    {
        return Err(ValidationError::Parameter(
            "location field longer than 128 characters",
        ));
    }
    if input.metadata.len() > MAX_METADATA_ENTRIES {
        return Err(ValidationError::Metadata("more than 64 entries"));
    }
    for (key, value) in &input.metadata {
        if key.is_empty() {
            return Err(ValidationError::Metadata("empty key"));
        }
        if key.len() > MAX_METADATA_KEY_LEN {
            return Err(ValidationError::Metadata("key longer than 128 characters"));
        }
        if value.len() > MAX_METADATA_VALUE_LEN {
            return Err(ValidationError::Metadata(
                "value longer than 4096 characters",
            ));
        }
    }

    // Every check passed: the values move into the record.
    let enable_health_check = input
        .enable_health_check
        .unwrap_or(input.health_check.is_some());
    let health_check_ttl =
        enable_health_check.then(|| match input.health_check.as_ref().and_then(|hc| hc.ttl) {
            Some(ttl) if ttl > 0 && ttl <= MAX_TTL_SECONDS => ttl,
            _ => DEFAULT_TTL_SECONDS,
        });
    let mut metadata: Vec<(String, String)> = input.metadata.into_iter().collect();
    metadata.sort_unstable();
    let location = input.location.unwrap_or_default();
    let namespace = input.namespace.unwrap_or_default();
    let service = input.service.unwrap_or_default();
    let vpc_id = input.vpc_id.unwrap_or_default();
    let host = input.host.unwrap_or_default();
    let port = input.port.unwrap_or_default();
    let id = match input.id {
        Some(id) if !id.is_empty() => id,
        _ => instance_id(&namespace, &service, &vpc_id, &host, port),
    };
    Ok(InstanceRecord {
        id,
        namespace,
        service,
        vpc_id,
        host,
        port,
        protocol: input.protocol.unwrap_or_default(),
        version: input.version.unwrap_or_default(),
        priority: input.priority.unwrap_or(0),
        weight,
        healthy: input.healthy.unwrap_or(true),
        isolate: input.isolate,
        enable_health_check,
        health_check_ttl,
        logic_set: input.logic_set.unwrap_or_default(),
        region: location.region.unwrap_or_default(),
        zone: location.zone.unwrap_or_default(),
        campus: location.campus.unwrap_or_default(),
        metadata,
    })
}

/// Validates a deregister request: an id, or namespace, service, host and port to compute
/// it from. Returns the instance id.
pub fn deregister_id(input: &InstanceInput) -> Result<String, ValidationError> {
    if input.is_empty() {
        return Err(ValidationError::Empty);
    }
    if let Some(id) = given_id(input)? {
        return Ok(id.to_owned());
    }
    let (namespace, service) = check_names(input)?;
    let (host, port) = check_host_port(input)?;
    if !at_most(&input.vpc_id, MAX_VPC_ID_LEN) {
        return Err(ValidationError::Parameter(
            "vpc_id longer than 64 characters",
        ));
    }
    let vpc_id = input.vpc_id.as_deref().unwrap_or("");
    Ok(instance_id(namespace, service, vpc_id, host, port))
}

/// Validates a heartbeat in Polaris's order: an id is used as given (an empty one is
/// refused); without one, service, namespace, host and port (and vpc_id) are checked and
/// the id computed from them. Returns the instance id.
pub fn heartbeat_id(input: &InstanceInput) -> Result<String, ValidationError> {
    if input.is_empty() {
        return Err(ValidationError::Empty);
    }
    if let Some(id) = &input.id {
        return match id.len() {
            0 => Err(ValidationError::Id("id is empty")),
            len if len > MAX_ID_LEN => Err(ValidationError::Id("longer than 128 characters")),
            _ => Ok(id.clone()),
        };
    }
    let service = check_service(input)?;
    let namespace = check_namespace(input)?;
    let (host, port) = check_host_port(input)?;
    if !at_most(&input.vpc_id, MAX_VPC_ID_LEN) {
        return Err(ValidationError::Parameter(
            "vpc_id longer than 64 characters",
        ));
    }
    let vpc_id = input.vpc_id.as_deref().unwrap_or("");
    Ok(instance_id(namespace, service, vpc_id, host, port))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn heartbeats_are_checked_in_polaris_order() {
        let by_id = InstanceInput {
            id: Some("given".into()),
            ..Default::default()
        };
        assert_eq!(heartbeat_id(&by_id).unwrap(), "given");
        let empty_id = InstanceInput {
            id: Some(String::new()),
            service: Some("svc".into()),
            ..Default::default()
        };
        assert!(matches!(
            heartbeat_id(&empty_id),
            Err(ValidationError::Id(_))
        ));
        // Service before namespace.
        let neither = InstanceInput {
            host: Some("h".into()),
            ..Default::default()
        };
        assert!(matches!(
            heartbeat_id(&neither),
            Err(ValidationError::Service(_))
        ));
        let mut no_port = good();
        no_port.port = None;
        assert!(matches!(
            heartbeat_id(&no_port),
            Err(ValidationError::Port(_))
        ));
        assert_eq!(
            heartbeat_id(&good()).unwrap(),
            instance_id("default", "echo", "", "10.0.0.1", 8080)
        );
        assert_eq!(
            heartbeat_id(&InstanceInput::default()),
            Err(ValidationError::Empty)
        );
    }

    fn good() -> InstanceInput {
        InstanceInput {
            namespace: Some("default".into()),
            service: Some("echo".into()),
            host: Some("10.0.0.1".into()),
            port: Some(8080),
            ..Default::default()
        }
    }

    #[test]
    fn defaults() {
        let record = register_record(good()).unwrap();
        assert_eq!(record.weight, 100);
        assert!(record.healthy);
        assert_eq!(record.isolate, None);
        assert!(!record.enable_health_check);
        assert_eq!(record.health_check_ttl, None);
        assert_eq!(
            record.id,
            instance_id("default", "echo", "", "10.0.0.1", 8080)
        );
    }

    #[test]
    fn health_check_enabled_without_ttl_gets_five_seconds() {
        let mut input = good();
        input.enable_health_check = Some(true);
        assert_eq!(
            register_record(input.clone()).unwrap().health_check_ttl,
            Some(5)
        );
        input.health_check = Some(super::super::HealthCheckInput {
            heartbeat: true,
            ttl: Some(30),
        });
        assert_eq!(
            register_record(input.clone()).unwrap().health_check_ttl,
            Some(30)
        );
        input.enable_health_check = Some(false);
        assert_eq!(
            register_record(input.clone()).unwrap().health_check_ttl,
            None
        );
    }

    #[test]
    fn deregister_needs_an_id_or_the_address() {
        let by_id = InstanceInput {
            id: Some("x".into()),
            ..Default::default()
        };
        assert_eq!(deregister_id(&by_id).unwrap(), "x");
        assert_eq!(
            deregister_id(&good()).unwrap(),
            instance_id("default", "echo", "", "10.0.0.1", 8080)
        );
        let mut no_port = good();
        no_port.port = None;
        assert!(matches!(
            deregister_id(&no_port),
            Err(ValidationError::Port(_))
        ));
        assert_eq!(
            deregister_id(&InstanceInput::default()),
            Err(ValidationError::Empty)
        );
    }

    proptest! {
        #[test]
        fn names_of_the_allowed_alphabet_pass(
            namespace in "[0-9A-Za-z./:_-]{1,64}",
            service in "[0-9A-Za-z./:_-]{1,128}",
        ) {
            let mut input = good();
            input.namespace = Some(namespace.clone());
            input.service = Some(service.clone());
            let record = register_record(input.clone()).unwrap();
            prop_assert_eq!(record.namespace, namespace);
            prop_assert_eq!(record.service, service);
        }

        #[test]
        fn a_name_with_any_other_character_fails(
            prefix in "[a-z]{0,10}", bad in "[^0-9A-Za-z./:_-]", suffix in "[a-z]{0,10}",
        ) {
            let name = format!("{prefix}{bad}{suffix}");
            let mut input = good();
            input.namespace = Some(name.clone());
            prop_assert!(matches!(register_record(input.clone()), Err(ValidationError::Namespace(_))));
            let mut input = good();
            input.service = Some(name);
            prop_assert!(matches!(register_record(input.clone()), Err(ValidationError::Service(_))));
        }

        #[test]
        fn ports_and_weights_are_checked_at_their_limits(port in 0u32..200_000, weight in 0u32..200_000) {
            let mut input = good();
            input.port = Some(port);
            input.weight = Some(weight);
            let result = register_record(input.clone());
            if port > MAX_PORT {
                prop_assert!(matches!(result, Err(ValidationError::Port(_))));
            } else if weight > MAX_WEIGHT {
                prop_assert!(matches!(result, Err(ValidationError::Parameter(_))));
            } else {
                prop_assert_eq!(result.unwrap().weight, weight);
            }
        }

        #[test]
        fn ttl_is_kept_in_range_else_five(ttl in proptest::option::of(0u32..1_000)) {
            let mut input = good();
            input.health_check = Some(super::super::HealthCheckInput { heartbeat: true, ttl });
            let stored = register_record(input.clone()).unwrap().health_check_ttl.unwrap();
            match ttl {
                Some(t) if (1..=60).contains(&t) => prop_assert_eq!(stored, t),
                _ => prop_assert_eq!(stored, 5),
            }
        }

        #[test]
        fn metadata_is_stored_sorted(entries in proptest::collection::hash_map("[a-z]{1,8}", "[a-z]{0,8}", 0..64)) {
            let mut input = good();
            input.metadata = entries.clone();
            let record = register_record(input.clone()).unwrap();
            let mut expected: Vec<_> = entries.into_iter().collect();
            expected.sort();
            prop_assert_eq!(record.metadata, expected);
        }
    }
}

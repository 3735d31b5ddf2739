//! Wire messages to and from the client API's types, for every transport: an instance in,
//! and the one place a write's result becomes a Polaris `Response`.

use super::ApiError;
use crate::code::Code;
use crate::naming::{HealthCheckInput, InstanceInput, LocationInput, Written};
use crate::proto;

/// The code a write's result is answered with.
pub fn code_of(result: &Result<Written, ApiError>) -> Code {
    match result {
        Ok(written) => written.code,
        Err(error) => error.code(),
    }
}

pub fn instance_from_wire(wire: proto::Instance) -> InstanceInput {
    InstanceInput {
        id: wire.id,
        service: wire.service,
        namespace: wire.namespace,
        vpc_id: wire.vpc_id,
        host: wire.host,
        port: wire.port,
        protocol: wire.protocol,
        version: wire.version,
        priority: wire.priority,
        weight: wire.weight,
        healthy: wire.healthy,
        isolate: wire.isolate,
        enable_health_check: wire.enable_health_check,
        health_check: wire.health_check.map(|hc| HealthCheckInput {
            heartbeat: hc.r#type == proto::health_check::HealthCheckType::Heartbeat as i32,
            ttl: hc.heartbeat.and_then(|hb| hb.ttl),
        }),
        location: wire.location.map(|l| LocationInput {
            region: l.region,
            zone: l.zone,
            campus: l.campus,
        }),
        metadata: wire.metadata,
        logic_set: wire.logic_set,
        service_token: wire.service_token,
    }
}

pub fn instance_to_wire(instance: InstanceInput) -> proto::Instance {
    proto::Instance {
        id: instance.id,
        service: instance.service,
        namespace: instance.namespace,
        vpc_id: Some(instance.vpc_id.unwrap_or_default()),
        host: instance.host,
        port: instance.port,
        protocol: instance.protocol,
        version: instance.version,
        priority: instance.priority,
        weight: instance.weight,
        healthy: instance.healthy,
        isolate: instance.isolate,
        enable_health_check: instance.enable_health_check,
        health_check: instance.health_check.map(|hc| proto::HealthCheck {
            r#type: if hc.heartbeat {
                proto::health_check::HealthCheckType::Heartbeat as i32
            } else {
                proto::health_check::HealthCheckType::Unknown as i32
            },
            heartbeat: Some(proto::HeartbeatHealthCheck { ttl: hc.ttl }),
        }),
        location: instance.location.map(|l| proto::Location {
            region: l.region,
            zone: l.zone,
            campus: l.campus,
        }),
        metadata: instance.metadata,
        logic_set: instance.logic_set,
        // The token is the caller's secret: never echoed back.
        service_token: None,
        ctime: None,
        mtime: None,
        revision: None,
    }
}

/// The answer to a write: its code and text, and the instance echoed (with its id once
/// known): a registration's identity, a deregistration as sent. The one place a result
/// becomes a wire `Response`.
pub fn write_response(
    result: Result<Written, ApiError>,
    mut instance: InstanceInput,
) -> proto::Response {
    let (code, info) = match result {
        Ok(written) => {
            instance.id = Some(written.id);
            (written.code, written.info.to_owned())
        }
        Err(error) => (error.code(), error.to_string()),
    };
    proto::Response {
        code: Some(code.as_u32()),
        info: Some(info),
        // Health checking off: Polaris answers the code alone.
        instance: (code != Code::HealthCheckNotOpen).then(|| instance_to_wire(instance)),
        client: None,
    }
}

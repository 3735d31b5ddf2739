//! The HTTP client API's JSON alone: reading a registration's body (what a storm costs
//! beyond gRPC's protobuf decoding), writing its answer, and writing a full Discover
//! answer of 100 instances.

use batchreg::api::http::json;
use batchreg::proto;
use criterion::{Criterion, criterion_group, criterion_main};
use prost::Message;

fn registration(port: u32) -> String {
    format!(
        r#"{{"namespace":"bench","service":"svc-3","host":"10.1.2.3","port":{port},
            "protocol":"grpc","version":"1.0.0","weight":100,
            "metadata":{{"env":"prod","zone":"z1","build":"abc123"}},
            "enableHealthCheck":true,"healthCheck":{{"type":"HEARTBEAT","heartbeat":{{"ttl":5}}}}}}"#
    )
}

fn answer() -> proto::Response {
    proto::Response {
        code: Some(200000),
        info: Some("instance registered".to_owned()),
        client: None,
        instance: Some(proto::Instance {
            id: Some("8a397127490e2ec98a6861b15d6e3aa519097624".to_owned()),
            service: Some("svc-3".to_owned()),
            namespace: Some("bench".to_owned()),
            vpc_id: Some(String::new()),
            host: Some("10.1.2.3".to_owned()),
            port: Some(8080),
            ..Default::default()
        }),
    }
}

fn discover_answer(instances: u32) -> Vec<u8> {
    let instances = (0..instances)
        .map(|i| {
            let mut wire: proto::Instance =
                json::decode(json::INSTANCE, registration(i).as_bytes()).unwrap();
            wire.id = Some(format!("{i:040}"));
            wire.revision = Some(format!("{i:040x}"));
            wire.ctime = Some("2026-12-02 04:24:23".to_owned());
            wire.mtime = Some("2026-12-02 04:24:23".to_owned());
            wire.healthy = Some(true);
            wire.isolate = Some(false);
            wire
        })
        .collect();
    proto::DiscoverResponse {
        code: Some(200000),
        info: Some("execute success".to_owned()),
        r#type: proto::discover_response::DiscoverResponseType::Instance as i32,
        service: Some(proto::Service {
            name: Some("svc-3".to_owned()),
            namespace: Some("bench".to_owned()),
            revision: Some("r".repeat(40)),
            ..Default::default()
        }),
        instances,
        services: Vec::new(),
    }
    .encode_to_vec()
}

fn bench(c: &mut Criterion) {
    let body = registration(8080);
    c.bench_function("decode a registration", |b| {
        b.iter(|| json::decode::<proto::Instance>(json::INSTANCE, body.as_bytes()).unwrap())
    });
    let response = answer();
    c.bench_function("encode a registration's answer", |b| {
        b.iter(|| json::encode(json::RESPONSE, &response))
    });
    let discover = discover_answer(100);
    c.bench_function("encode a 100-instance Discover answer", |b| {
        b.iter(|| json::encode_bytes(json::DISCOVER_RESPONSE, &discover))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);

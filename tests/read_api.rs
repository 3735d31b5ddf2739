//! The operators' read API (`GET /naming/v1/services`, `GET /naming/v1/instances`) and the
//! console's summary, over real HTTP against a server that was written to over gRPC.

mod common;

use common::discover::{DiscoverRequestType, discover_all, request};
use common::{TestServer, code, expected_id, instance};
use reqwest::StatusCode;
use serde_json::Value;
use tonic::Request;

/// One answer of the HTTP port: status, the Polaris headers, the JSON body.
#[derive(Debug)]
struct Answer {
    status: StatusCode,
    polaris_code: Option<String>,
    polaris_message: Option<String>,
    request_id: Option<String>,
    body: Value,
}

impl Answer {
    fn code(&self) -> u64 {
        self.body["code"]
            .as_u64()
            .expect("every answer carries a code")
    }

    fn amount(&self) -> u64 {
        self.body["amount"].as_u64().unwrap()
    }

    fn size(&self) -> u64 {
        self.body["size"].as_u64().unwrap()
    }

    fn list(&self, key: &str) -> &Vec<Value> {
        self.body[key].as_array().unwrap()
    }

    /// `host:port` of each instance listed, in order.
    fn addresses(&self) -> Vec<String> {
        self.list("instances")
            .iter()
            .map(|i| format!("{}:{}", i["host"].as_str().unwrap(), i["port"]))
            .collect()
    }
}

async fn get(t: &TestServer, path_and_query: &str, headers: &[(&str, &str)]) -> Answer {
    let mut request =
        reqwest::Client::new().get(format!("http://{}{path_and_query}", t.server.http_addr()));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.expect("the HTTP port answers");
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
    };
    let (polaris_code, polaris_message, request_id) = (
        header("x-polaris-code"),
        header("x-polaris-message"),
        header("request-id"),
    );
    let status = response.status();
    let body = response.json().await.expect("a JSON body");
    Answer {
        status,
        polaris_code,
        polaris_message,
        request_id,
        body,
    }
}

/// A page served as asked: 200, 200000, no Polaris headers.
fn assert_served(answer: &Answer) {
    assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
    assert_eq!(answer.code(), 200_000, "{answer:?}");
    assert_eq!(answer.body["info"], "execute success");
    assert_eq!(answer.polaris_code, None);
    assert_eq!(answer.polaris_message, None);
}

/// A refusal: status = code / 1000, the code and message in the body and the headers, an
/// empty page.
fn assert_refused(answer: &Answer, list: &str, expected: u64, says: &str) {
    assert_eq!(answer.code(), expected, "{answer:?}");
    assert_eq!(
        u64::from(answer.status.as_u16()),
        expected / 1000,
        "{answer:?}"
    );
    let info = answer.body["info"].as_str().unwrap();
    assert!(info.contains(says), "{info:?} should name {says:?}");
    assert_eq!(answer.polaris_code.as_deref(), Some(&*expected.to_string()));
    assert_eq!(answer.polaris_message.as_deref(), Some(info));
    assert_eq!((answer.amount(), answer.size()), (0, 0));
    assert!(answer.list(list).is_empty());
}

/// Registers over gRPC and checks that the write was taken.
async fn register(t: &TestServer, wire: batchreg::proto::Instance) {
    let answer = t
        .client()
        .await
        .register_instance(wire)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(code(&answer), 200_000, "{answer:?}");
}

/// An instance without a health check: it keeps the health it was registered with, however
/// slowly the test runs.
fn unchecked(namespace: &str, service: &str, host: &str, port: u32) -> batchreg::proto::Instance {
    batchreg::proto::Instance {
        enable_health_check: Some(false),
        health_check: None,
        ..instance(namespace, service, host, port)
    }
}

/// `read/pay`: five instances, registered out of order; two unhealthy, one isolated.
/// `read/cart` and `other/x`: one each.
async fn fill(t: &TestServer) {
    for (host, port, healthy, isolate) in [
        ("10.0.0.2", 80, true, false),
        ("10.0.0.1", 81, true, true),
        ("10.0.0.1", 80, true, false),
        ("10.0.0.3", 80, false, false),
        ("10.0.0.2", 81, false, false),
    ] {
        let mut wire = unchecked("read", "pay", host, port);
        wire.healthy = Some(healthy);
        wire.isolate = Some(isolate);
        register(t, wire).await;
    }
    register(t, unchecked("read", "cart", "10.0.1.1", 80)).await;
    register(t, unchecked("other", "x", "10.0.2.1", 80)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_are_listed_with_their_counts_and_paged() {
    let t = TestServer::start(|_| {}).await;
    fill(&t).await;

    let read = get(&t, "/naming/v1/services?namespace=read", &[]).await;
    assert_served(&read);
    assert_eq!((read.amount(), read.size()), (2, 2));
    let services = read.list("services");
    let names: Vec<&str> = services
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["cart", "pay"]);
    let pay = &services[1];
    assert_eq!(pay["namespace"], "read");
    assert_eq!(pay["total_instance_count"], 5);
    assert_eq!(pay["healthy_instance_count"], 3);
    assert_eq!(pay["isolate_instance_count"], 1);
    assert_eq!(pay["revision"].as_str().unwrap().len(), 40, "{pay}");
    assert!(!pay["mtime"].as_str().unwrap().is_empty(), "{pay}");
    assert_eq!(pay["token"], Value::Null, "a service token is never shown");
    let cart = &services[0];
    assert_eq!(
        (
            &cart["total_instance_count"],
            &cart["healthy_instance_count"],
            &cart["isolate_instance_count"]
        ),
        (&Value::from(1), &Value::from(1), &Value::from(0))
    );

    // Every namespace: the server's own services too, sorted by namespace then name.
    let all = get(&t, "/naming/v1/services", &[]).await;
    assert_served(&all);
    let listed: Vec<(String, String)> = all
        .list("services")
        .iter()
        .map(|s| {
            let text = |key: &str| s[key].as_str().unwrap().to_owned();
            (text("namespace"), text("name"))
        })
        .collect();
    assert_eq!(all.amount() as usize, listed.len());
    let mut sorted = listed.clone();
    sorted.sort();
    assert_eq!(listed, sorted);
    for expected in [("other", "x"), ("read", "cart"), ("read", "pay")] {
        assert!(
            listed
                .iter()
                .any(|(ns, name)| (ns.as_str(), name.as_str()) == expected),
            "{expected:?} in {listed:?}"
        );
    }

    let second = get(
        &t,
        "/naming/v1/services?namespace=read&offset=1&limit=1",
        &[],
    )
    .await;
    assert_served(&second);
    assert_eq!((second.amount(), second.size()), (2, 1));
    assert_eq!(second.list("services")[0]["name"], "pay");
    let past = get(&t, "/naming/v1/services?namespace=read&offset=2", &[]).await;
    assert_eq!((past.amount(), past.size()), (2, 0));
    let nothing = get(&t, "/naming/v1/services?namespace=nosuch", &[]).await;
    assert_served(&nothing);
    assert_eq!((nothing.amount(), nothing.size()), (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_are_paged_in_a_stable_order_and_filtered() {
    let t = TestServer::start(|_| {}).await;
    fill(&t).await;
    let page = |offset: u32, limit: u32| {
        format!("/naming/v1/instances?namespace=read&service=pay&offset={offset}&limit={limit}")
    };

    let mut seen = Vec::new();
    for offset in [0, 2, 4] {
        let answer = get(&t, &page(offset, 2), &[]).await;
        assert_served(&answer);
        assert_eq!(answer.amount(), 5);
        assert_eq!(answer.size() as usize, answer.list("instances").len());
        seen.extend(answer.addresses());
    }
    assert_eq!(
        seen,
        [
            "10.0.0.1:80",
            "10.0.0.1:81",
            "10.0.0.2:80",
            "10.0.0.2:81",
            "10.0.0.3:80"
        ]
    );
    let past = get(&t, &page(5, 2), &[]).await;
    assert_served(&past);
    assert_eq!((past.amount(), past.size()), (5, 0));
    let counted = get(&t, &page(0, 0), &[]).await;
    assert_eq!((counted.amount(), counted.size()), (5, 0));

    // Each instance in Polaris's JSON, as the client API writes it.
    let whole = get(&t, "/naming/v1/instances?namespace=read&service=pay", &[]).await;
    assert_eq!((whole.amount(), whole.size()), (5, 5));
    let first = &whole.list("instances")[0];
    assert_eq!(first["id"], expected_id("read", "pay", "10.0.0.1", 80));
    assert_eq!(first["service"], "pay");
    assert_eq!(first["namespace"], "read");
    assert_eq!(first["weight"], 100);
    assert_eq!(first["healthy"], true);
    assert_eq!(first["isolate"], false);
    assert_eq!(first["metadata"]["env"], "test");
    assert_eq!(first["enableHealthCheck"], false);
    assert_eq!(first["healthCheck"], Value::Null);
    assert_eq!(first["service_token"], Value::Null);
    assert_eq!(first["mtime"].as_str().unwrap().len(), 19, "{first}");
    assert_eq!(whole.list("instances")[1]["isolate"], true);

    let host = get(
        &t,
        "/naming/v1/instances?namespace=read&service=pay&host=10.0.0.1",
        &[],
    )
    .await;
    assert_eq!(host.addresses(), ["10.0.0.1:80", "10.0.0.1:81"]);
    assert_eq!(host.amount(), 2);
    let unhealthy = get(
        &t,
        "/naming/v1/instances?namespace=read&service=pay&healthy=false",
        &[],
    )
    .await;
    assert_eq!(unhealthy.addresses(), ["10.0.0.2:81", "10.0.0.3:80"]);
    assert!(
        unhealthy
            .list("instances")
            .iter()
            .all(|i| i["healthy"] == false)
    );
    let both = get(
        &t,
        "/naming/v1/instances?namespace=read&service=pay&healthy=true&host=10.0.0.2",
        &[],
    )
    .await;
    assert_eq!(both.addresses(), ["10.0.0.2:80"]);
    let no_host = get(
        &t,
        "/naming/v1/instances?namespace=read&service=pay&host=10.9.9.9",
        &[],
    )
    .await;
    assert_served(&no_host);
    assert_eq!((no_host.amount(), no_host.size()), (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_namespace_defaults_and_unknown_or_emptied_services_differ() {
    let t = TestServer::start(|_| {}).await;
    let mut echo = instance("default", "echo", "10.0.3.1", 80);
    // A token sent with the registration is a secret: never shown.
    echo.service_token = Some("secret-service-token".to_owned());
    register(&t, echo).await;
    let found = get(&t, "/naming/v1/instances?service=echo", &[]).await;
    assert_served(&found);
    assert_eq!(found.addresses(), ["10.0.3.1:80"]);
    let echo = &found.list("instances")[0];
    assert_eq!(echo["enableHealthCheck"], true);
    assert_eq!(echo["healthCheck"]["type"], "HEARTBEAT");
    assert_eq!(echo["healthCheck"]["heartbeat"]["ttl"], 5);
    assert!(!found.body.to_string().contains("secret-service-token"));

    let unknown = get(
        &t,
        "/naming/v1/instances?namespace=read&service=nosuch",
        &[],
    )
    .await;
    assert_refused(&unknown, "instances", 400_202, "read/nosuch");

    // A service whose instances all left is still known: an empty page.
    let gone = t
        .client()
        .await
        .deregister_instance(instance("default", "echo", "10.0.3.1", 80))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(code(&gone), 200_000);
    let emptied = get(&t, "/naming/v1/instances?service=echo", &[]).await;
    assert_served(&emptied);
    assert_eq!((emptied.amount(), emptied.size()), (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_bad_parameter_is_refused_with_its_code_status_and_headers() {
    let t = TestServer::start(|_| {}).await;
    register(&t, instance("read", "pay", "10.0.0.1", 80)).await;
    let instances = "/naming/v1/instances?namespace=read";
    let cases: &[(String, &str, u64, &str)] = &[
        (instances.to_owned(), "instances", 400_104, "service"),
        (
            "/naming/v1/instances".to_owned(),
            "instances",
            400_104,
            "service",
        ),
        (
            format!("{instances}&service="),
            "instances",
            400_104,
            "service",
        ),
        (
            format!("{instances}&service=pay&limit=101"),
            "instances",
            400_103,
            "at most 100",
        ),
        (
            format!("{instances}&service=pay&limit=-1"),
            "instances",
            400_103,
            "limit",
        ),
        (
            format!("{instances}&service=pay&offset=first"),
            "instances",
            400_103,
            "offset",
        ),
        (
            format!("{instances}&service=pay&healthy=maybe"),
            "instances",
            400_103,
            "healthy",
        ),
        (
            format!("{instances}&service=pay&colour=red"),
            "instances",
            400_103,
            "colour",
        ),
        (
            format!("{instances}&service=pay&service=cart"),
            "instances",
            400_103,
            "service",
        ),
        (
            "/naming/v1/services?limit=500".to_owned(),
            "services",
            400_103,
            "at most 100",
        ),
        (
            "/naming/v1/services?service=pay".to_owned(),
            "services",
            400_103,
            "service",
        ),
    ];
    for (path, list, expected, says) in cases {
        let answer = get(&t, path, &[]).await;
        assert_refused(&answer, list, *expected, says);
    }

    let traced = get(
        &t,
        &format!("{instances}&service=pay&limit=1000"),
        &[("Request-Id", "req-42")],
    )
    .await;
    assert_eq!(traced.request_id.as_deref(), Some("req-42"));
    let served = get(
        &t,
        &format!("{instances}&service=pay"),
        &[("Request-Id", "req-43")],
    )
    .await;
    assert_served(&served);
    assert_eq!(served.request_id.as_deref(), Some("req-43"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_auth_on_reads_need_a_token_granted_the_namespace_or_service() {
    let t = TestServer::start(|config| {
        config.auth.enabled = true;
        config.auth.tokens = [
            ("reader-token", "read/*"),
            ("pay-token", "read/pay"),
            ("admin-token", "*"),
        ]
        .into_iter()
        .map(|(token, allow)| batchreg::config::TokenConfig {
            token: token.to_owned(),
            allow: vec![allow.to_owned()],
        })
        .collect();
    })
    .await;
    let mut granted = Request::new(instance("read", "pay", "10.0.0.1", 80));
    granted
        .metadata_mut()
        .insert("x-polaris-token", "admin-token".parse().unwrap());
    let written = t
        .client()
        .await
        .register_instance(granted)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(code(&written), 200_000);

    let pay = "/naming/v1/instances?namespace=read&service=pay";
    let missing = get(&t, pay, &[]).await;
    assert_refused(&missing, "instances", 401_002, "token");
    let wrong = get(&t, pay, &[("X-Polaris-Token", "guessed-token")]).await;
    assert_refused(&wrong, "instances", 401_001, "read/pay");
    assert!(!wrong.body.to_string().contains("guessed-token"));
    for (header, token) in [
        ("X-Polaris-Token", "reader-token"),
        ("Polaris-Token", "pay-token"),
        ("X-Polaris-Token", "admin-token"),
    ] {
        let answer = get(&t, pay, &[(header, token)]).await;
        assert_served(&answer);
        assert_eq!(answer.addresses(), ["10.0.0.1:80"], "{token}");
    }
    let elsewhere = get(
        &t,
        "/naming/v1/instances?namespace=other&service=pay",
        &[("X-Polaris-Token", "reader-token")],
    )
    .await;
    assert_refused(&elsewhere, "instances", 401_001, "other/pay");

    // Listing services takes a grant of the whole namespace; of every namespace, `*`.
    let read = "/naming/v1/services?namespace=read";
    let listed = get(&t, read, &[("X-Polaris-Token", "reader-token")]).await;
    assert_served(&listed);
    assert_eq!(listed.amount(), 1);
    let narrow = get(&t, read, &[("X-Polaris-Token", "pay-token")]).await;
    assert_refused(&narrow, "services", 401_001, "read");
    assert_refused(&get(&t, read, &[]).await, "services", 401_002, "token");
    let every = "/naming/v1/services";
    let not_all = get(&t, every, &[("X-Polaris-Token", "reader-token")]).await;
    assert_refused(&not_all, "services", 401_001, "?");
    assert_served(&get(&t, every, &[("X-Polaris-Token", "admin-token")]).await);

    // The summary is open, as /metrics is, and tells the page to ask for a token.
    let summary = get(&t, "/console/v1/summary", &[]).await;
    assert_eq!(summary.status, StatusCode::OK);
    assert_eq!(summary.body["auth"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_summary_counts_known_traffic_with_metrics_off() {
    let t = TestServer::start(|config| config.telemetry.metrics = false).await;
    let before = get(&t, "/console/v1/summary", &[]).await.body;
    assert_eq!(before["auth"], false);

    let mut client = t.client().await;
    for port in 1..=3 {
        let mut wire = instance("sum", "svc", "10.0.4.1", port);
        wire.healthy = Some(port != 3);
        register(&t, wire).await;
    }
    for port in 1..=2 {
        let beat = client
            .heartbeat(instance("sum", "svc", "10.0.4.1", port))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(code(&beat), 200_000, "{beat:?}");
    }
    let answers = discover_all(
        &mut client,
        vec![request(DiscoverRequestType::Instance, "sum", "svc", ""); 4],
    )
    .await;
    assert_eq!(answers.len(), 4);

    let after = get(&t, "/console/v1/summary", &[]).await;
    assert_eq!(after.status, StatusCode::OK);
    let after = after.body;
    let grew = |key: &str| after[key].as_u64().unwrap() - before[key].as_u64().unwrap();
    // The totals are the process's, and other tests of this binary run beside this one:
    // at least this test's requests.
    assert!(grew("registrations_total") >= 3, "{before} {after}");
    assert!(grew("heartbeats_total") >= 2, "{before} {after}");
    assert!(grew("discovers_total") >= 4, "{before} {after}");
    assert!(after["uptime_seconds"].as_f64().unwrap() > 0.0);

    // The sizes are this server's: they agree with the services list.
    let all = get(&t, "/naming/v1/services", &[]).await;
    let services = all.list("services");
    let sum = |key: &str| -> u64 { services.iter().map(|s| s[key].as_u64().unwrap()).sum() };
    assert_eq!(after["services"], services.len());
    assert_eq!(after["instances"], sum("total_instance_count"));
    assert_eq!(after["healthy"], sum("healthy_instance_count"));
    assert_eq!(
        after["instances"].as_u64().unwrap() - after["healthy"].as_u64().unwrap(),
        1
    );
    let namespaces = after["namespaces"].as_array().unwrap();
    assert!(
        namespaces
            .iter()
            .any(|ns| ns["name"] == "sum" && ns["services"] == 1),
        "{after}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_page_and_its_files_are_served_self_contained() {
    let t = TestServer::start(|_| {}).await;
    let http = reqwest::Client::new();
    for (path, content_type, contains) in [
        ("/", "text/html", "/console/console.js"),
        (
            "/console/console.js",
            "text/javascript",
            "/console/v1/summary",
        ),
        ("/console/console.css", "text/css", "table"),
    ] {
        let response = http
            .get(format!("http://{}{path}", t.server.http_addr()))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .map(|v| v.to_str().unwrap().to_owned())
                .unwrap_or_default()
        };
        assert!(header("content-type").starts_with(content_type), "{path}");
        assert!(
            header("content-security-policy").contains("default-src 'none'"),
            "{path}"
        );
        let body = response.text().await.unwrap();
        assert!(body.contains(contains), "{path}");
        assert!(
            !body.contains("http://") && !body.contains("https://"),
            "{path} loads nothing from elsewhere"
        );
        assert!(
            !body.contains("innerHTML"),
            "{path} never parses data as HTML"
        );
    }
}

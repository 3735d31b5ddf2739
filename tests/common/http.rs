//! The HTTP client API for the tests: a client that posts to `/v1/<Method>` and checks
//! what every answer shows (status = code / 1000, Polaris's headers), and raw HTTP/1.1 for
//! bodies a client library would not send as they are.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::TestServer;
use super::polaris_json::{Answer, DiscoverAnswer};

const SUCCESS: u32 = 200_000;

/// One answer of the client API, its body read as JSON.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub text: String,
    pub json: Value,
}

impl Reply {
    pub fn code(&self) -> u32 {
        let code = self.json["code"].as_u64().unwrap_or_else(|| {
            panic!("every answer carries a code: {}", self.text);
        });
        u32::try_from(code).unwrap()
    }

    pub fn info(&self) -> &str {
        self.json["info"].as_str().unwrap_or_else(|| {
            panic!("every answer carries an info: {}", self.text);
        })
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }

    pub fn parse<T: DeserializeOwned>(&self) -> T {
        serde_json::from_str(&self.text)
            .unwrap_or_else(|e| panic!("read with Polaris's names ({e}): {}", self.text))
    }

    pub fn answer(&self) -> Answer {
        self.parse()
    }

    pub fn discover(&self) -> DiscoverAnswer {
        self.parse()
    }

    /// What every answer of the client API shows (POLARIS.md §5): status = code / 1000,
    /// `X-Polaris-Code` and `X-Polaris-Message` (the info) exactly when the code is not
    /// 200000, JSON indented by one space.
    pub fn assert_polaris_headers(&self) {
        let code = self.code();
        assert_eq!(
            u32::from(self.status),
            code / 1000,
            "status = code / 1000: {}",
            self.text
        );
        assert_eq!(self.header("content-type"), Some("application/json"));
        if code == SUCCESS {
            assert_eq!(self.header("x-polaris-code"), None, "{}", self.text);
            assert_eq!(self.header("x-polaris-message"), None, "{}", self.text);
        } else {
            assert_eq!(
                self.header("x-polaris-code"),
                Some(code.to_string().as_str()),
                "{}",
                self.text
            );
            assert_eq!(
                self.header("x-polaris-message"),
                Some(self.info()),
                "{}",
                self.text
            );
        }
        assert!(self.text.starts_with("{\n \"code\": "), "{}", self.text);
    }
}

pub struct Api {
    pub http: reqwest::Client,
    pub base: String,
}

impl Api {
    pub fn new(t: &TestServer) -> Api {
        Api {
            http: reqwest::Client::builder().no_proxy().build().unwrap(),
            base: format!("http://{}", t.server.http_addr()),
        }
    }

    /// Posts `body` to `/v1/<route>` with `headers`; the answer as it came.
    pub async fn send(
        &self,
        route: &str,
        body: impl Into<reqwest::Body>,
        headers: &[(&str, &str)],
    ) -> Reply {
        let mut request = self
            .http
            .post(format!("{}/v1/{route}", self.base))
            .header("content-type", "application/json")
            .body(body);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = request.send().await.expect("an HTTP answer");
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let text = response.text().await.unwrap();
        let json = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{route}: the answer is JSON ({e}): {text}"));
        Reply {
            status,
            headers,
            text,
            json,
        }
    }

    /// Posts a raw body; the answer's status and headers checked.
    pub async fn post(
        &self,
        route: &str,
        body: impl Into<reqwest::Body>,
        headers: &[(&str, &str)],
    ) -> Reply {
        let reply = self.send(route, body, headers).await;
        reply.assert_polaris_headers();
        reply
    }

    /// Posts a JSON value; the answer's status and headers checked.
    pub async fn json(&self, route: &str, body: &Value) -> Reply {
        self.post(route, body.to_string(), &[]).await
    }

    pub async fn register(&self, body: &Value) -> Reply {
        self.json("RegisterInstance", body).await
    }
}

// Raw HTTP/1.1.

/// Writes `request` as it is and reads one answer (status, header block lowercased, body)
/// by its Content-Length, without closing the request side: the server must answer
/// without waiting for the rest of a body.
pub async fn raw_exchange(addr: SocketAddr, request: &[u8]) -> (u16, String, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let read = async {
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let text = String::from_utf8_lossy(&got).into_owned();
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let head = head.to_ascii_lowercase();
                let length: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length: "))
                    .map(|v| v.trim().parse().unwrap())
                    .expect("the answer has a content-length");
                if body.len() >= length {
                    let status = head[9..12].parse().unwrap();
                    return (status, head, body[..length].to_owned());
                }
            }
            let n = stream.read(&mut buf).await.expect("read the answer");
            assert!(n > 0, "closed before a whole answer: {text}");
            got.extend_from_slice(&buf[..n]);
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .expect("answered without the rest of the body")
}

pub fn header_of<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(": "))
        .map(str::trim)
}

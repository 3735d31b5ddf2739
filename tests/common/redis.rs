#![allow(dead_code)]

//! Redis for the tests: `BATCHREG_TEST_REDIS_URL` names a Redis the tests may write keys
//! to, each test under a key prefix of its own. Unset, the Redis tests say they were
//! skipped and pass, unless `BATCHREG_TEST_REQUIRE_REDIS` is set (as in CI), when they
//! fail.

pub const URL_VAR: &str = "BATCHREG_TEST_REDIS_URL";

/// The Redis URL and a key prefix no other test (or run) uses; `None` (after saying so)
/// when no Redis is configured.
pub fn redis_for(test: &str) -> Option<(String, String)> {
    let Ok(url) = std::env::var(URL_VAR) else {
        if std::env::var_os("BATCHREG_TEST_REQUIRE_REDIS").is_some() {
            panic!("{URL_VAR} is not set but BATCHREG_TEST_REQUIRE_REDIS is: Redis tests must run");
        }
        eprintln!("SKIPPED: {URL_VAR} is not set; Redis test '{test}' did not run");
        return None;
    };
    let unique = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    Some((
        url,
        format!("batchreg-test:{test}:{}:{unique}:", std::process::id()),
    ))
}

/// Deletes every key under `prefix`.
pub async fn clean(url: &str, prefix: &str) {
    let client = redis::Client::open(url).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query_async(&mut conn)
        .await
        .unwrap();
    if !keys.is_empty() {
        let _: () = redis::cmd("DEL")
            .arg(keys)
            .query_async(&mut conn)
            .await
            .unwrap();
    }
}

//! Signals to the binary while it starts: SIGTERM before the store has answered (here, a
//! database that accepts the connection and never says a word) ends the process at once,
//! with exit status 0, instead of after the store's connect timeout or the cache's load.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn sigterm_while_the_store_is_opening_exits_at_once() {
    // A "database" that accepts connections and never answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_batchreg"))
        .arg("serve")
        .env(
            "BATCHREG_STORE_URL",
            format!("mysql://root@127.0.0.1:{port}/silent"),
        )
        .env("BATCHREG_GRPC_LISTEN", "127.0.0.1:0")
        .env("BATCHREG_HTTP_LISTEN", "127.0.0.1:0")
        .stderr(Stdio::piped())
        .spawn()
        .expect("start batchreg");
    // Let it reach the store (the connect waits up to 10 s for an answer).
    silent.set_nonblocking(true).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    let _held = loop {
        if let Ok((connection, _)) = silent.accept() {
            break connection;
        }
        assert!(Instant::now() < deadline, "batchreg never connected");
        std::thread::sleep(Duration::from_millis(20));
    };
    // Connected and waiting for the server's greeting.
    std::thread::sleep(Duration::from_millis(300));
    let sent = Instant::now();
    let stopped = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(stopped.success());
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if sent.elapsed() > Duration::from_secs(5) {
            child.kill().unwrap();
            panic!("still running 5 s after SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut logged = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut logged).unwrap();
    assert!(status.success(), "exit status {status:?}: {logged}");
    assert!(logged.contains("stopped while starting"), "{logged}");
}

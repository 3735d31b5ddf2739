//! The binary's log lines on stderr: plain text without colour codes when stderr is not a
//! terminal, and one JSON object per line with `--log-format json`.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

/// Starts `batchreg serve` on free ports and a fresh SQLite file, reads stderr until the
/// server says it is serving, stops it with SIGTERM, and returns every line it logged.
fn serve_and_stop(extra: &[&str]) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_batchreg"))
        .args(extra)
        .arg("serve")
        .env(
            "BATCHREG_STORE_URL",
            format!("sqlite://{}", dir.path().join("logs.db").display()),
        )
        .env("BATCHREG_GRPC_LISTEN", "127.0.0.1:0")
        .env("BATCHREG_HTTP_LISTEN", "127.0.0.1:0")
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .expect("start batchreg");
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut logged = Vec::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        let serving = line.contains("batchreg serving");
        logged.push(line);
        if serving {
            break;
        }
    }
    let stopped = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(stopped.success());
    logged.extend(lines.map(Result::unwrap));
    assert!(
        child.wait().unwrap().success(),
        "exit 0 after SIGTERM: {logged:?}"
    );
    logged
}

#[test]
fn text_logs_have_no_colour_codes_when_stderr_is_not_a_terminal() {
    let logged = serve_and_stop(&[]);
    assert!(
        logged.iter().any(|l| l.contains("batchreg serving")),
        "{logged:?}"
    );
    assert!(
        logged.iter().any(|l| l.contains("batchreg stopped")),
        "{logged:?}"
    );
    for line in &logged {
        assert!(!line.contains('\u{1b}'), "colour code in {line:?}");
        assert!(line.contains("INFO") || line.contains("WARN"), "{line:?}");
    }
}

#[test]
fn json_logs_are_one_object_per_line() {
    let logged = serve_and_stop(&["--log-format", "json"]);
    assert!(logged.len() >= 2, "{logged:?}");
    for line in &logged {
        assert!(
            line.starts_with('{') && line.ends_with('}'),
            "not a JSON object: {line:?}"
        );
        assert!(line.contains(r#""level":"#), "{line:?}");
    }
    assert!(
        logged
            .iter()
            .any(|l| l.contains(r#""message":"batchreg serving""#)),
        "{logged:?}"
    );
}

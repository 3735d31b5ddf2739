//! The console page in a real browser: headless Chromium loads `GET /` from a server that
//! holds a registered service, and the DOM it renders must show that service with its
//! counts, and at `#service/<namespace>/<name>` its instances, with nothing written to
//! the browser's console (the page writes nothing there, so any line is an error, a
//! refused load or a broken policy). Screenshots go to `<target>/console.png` (the
//! services) and `<target>/console-service.png` (the instances), and what the browser
//! printed to `<target>/console-browser.log`.
//!
//! Without Chromium the test is skipped with a message, unless
//! `BATCHREG_TEST_REQUIRE_BROWSER=1`; `BATCHREG_TEST_CHROMIUM` names another binary.

mod common;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{TestServer, code, instance};

/// How long one browser run may take before it is killed.
const BROWSER_TIMEOUT: Duration = Duration::from_secs(90);
/// Page time the browser runs (virtual: it passes as fast as the page allows), long
/// enough for the first load and one refresh, so that the rates show too.
const VIRTUAL_TIME_MS: u32 = 4_000;

/// The browser binary, if one is installed.
fn chromium() -> Option<PathBuf> {
    if let Some(named) = std::env::var_os("BATCHREG_TEST_CHROMIUM") {
        return Some(PathBuf::from(named));
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .flat_map(|dir| {
            ["chromium", "chromium-browser", "google-chrome"].map(|name| dir.join(name))
        })
        .find(|candidate| candidate.is_file())
}

/// Where the screenshot goes: the build's target directory.
fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .or_else(|| option_env!("CARGO_TARGET_DIR").map(PathBuf::from))
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"))
}

/// What one browser run printed.
struct BrowserRun {
    stdout: String,
    stderr: String,
}

impl BrowserRun {
    /// Lines of the page's console (Chromium logs them all as `INFO:CONSOLE`, whatever
    /// their level) and uncaught errors.
    fn console_lines(&self) -> Vec<&str> {
        self.stderr
            .lines()
            .filter(|line| line.contains(":CONSOLE") || line.contains("Uncaught"))
            .collect()
    }
}

/// Runs the browser headless on `url` with `extra` arguments, with a profile and output
/// files of its own; kills it (by its pid) if it outlives [`BROWSER_TIMEOUT`].
fn run_browser(binary: &Path, url: &str, extra: &[String]) -> BrowserRun {
    let scratch = tempfile::tempdir().expect("scratch dir");
    let stdout_path = scratch.path().join("stdout");
    let stderr_path = scratch.path().join("stderr");
    let mut child = Command::new(binary)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--enable-logging=stderr",
            "--v=0",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-default-apps",
            "--disable-extensions",
            "--disable-sync",
            "--window-size=1280,900",
            "--hide-scrollbars",
        ])
        .arg(format!("--virtual-time-budget={VIRTUAL_TIME_MS}"))
        .arg(format!(
            "--user-data-dir={}",
            scratch.path().join("profile").display()
        ))
        .args(extra)
        .arg(url)
        .stdin(Stdio::null())
        // Files, not pipes: a helper process that outlives the browser cannot hold
        // the test up.
        .stdout(File::create(&stdout_path).unwrap())
        .stderr(File::create(&stderr_path).unwrap())
        .spawn()
        .unwrap_or_else(|error| panic!("cannot start {}: {error}", binary.display()));
    let deadline = Instant::now() + BROWSER_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for the browser") {
            break status;
        }
        if Instant::now() > deadline {
            let pid = child.id();
            let _ = child.kill();
            let _ = child.wait();
            let stderr = std::fs::read_to_string(&stderr_path).unwrap_or_default();
            panic!(
                "the browser (pid {pid}) ran over {BROWSER_TIMEOUT:?} and was killed:\n{stderr}"
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let run = BrowserRun {
        stdout: std::fs::read_to_string(&stdout_path).unwrap_or_default(),
        stderr: std::fs::read_to_string(&stderr_path).unwrap_or_default(),
    };
    assert!(
        status.success(),
        "the browser failed ({status}):\n{}",
        run.stderr
    );
    run
}

/// The text of the element that opens with `opening` (up to its `</tr>`): the text of
/// each cell, tags dropped.
fn row_cells(dom: &str, opening: &str) -> Vec<String> {
    let start = dom
        .find(opening)
        .unwrap_or_else(|| panic!("no {opening} in the page:\n{dom}"));
    let row = &dom[start..];
    let row = &row[..row.find("</tr>").expect("the row closes")];
    row.split("<td")
        .skip(1)
        .map(|cell| {
            let mut text = String::new();
            let mut in_tag = true; // the rest of the `<td ...>` tag comes first
            for c in cell.chars() {
                match c {
                    '<' => in_tag = true,
                    '>' => in_tag = false,
                    c if !in_tag => text.push(c),
                    _ => {}
                }
            }
            text.trim().to_owned()
        })
        .collect()
}

/// The text between `<span class="value" id="{id}">` and its `</span>`.
fn stat(dom: &str, id: &str) -> String {
    let opening = format!("id=\"{id}\">");
    let start = dom
        .find(&opening)
        .unwrap_or_else(|| panic!("no #{id} in the page"))
        + opening.len();
    dom[start..][..dom[start..].find('<').unwrap()].to_owned()
}

/// The browser, or `None` (the test skips) when none is installed and none is required.
fn browser_or_skip(test: &str) -> Option<PathBuf> {
    let found = chromium();
    if found.is_none() {
        let required = std::env::var("BATCHREG_TEST_REQUIRE_BROWSER").is_ok_and(|v| v == "1");
        assert!(
            !required,
            "BATCHREG_TEST_REQUIRE_BROWSER=1 but no chromium is installed (PATH, or BATCHREG_TEST_CHROMIUM)"
        );
        eprintln!(
            "SKIPPED {test}: no chromium on PATH (install it, or set BATCHREG_TEST_CHROMIUM)"
        );
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_shows_a_registered_service_and_its_instances() {
    let Some(binary) = browser_or_skip("the_console_shows_a_registered_service_and_its_instances")
    else {
        return;
    };
    let t = TestServer::start(|_| {}).await;
    let mut client = t.client().await;
    // Without a health check, each instance keeps the health it was registered with,
    // however slowly the browser runs.
    let unchecked = |host: &str, port: u32| batchreg::proto::Instance {
        enable_health_check: Some(false),
        health_check: None,
        ..instance("default", "console-svc", host, port)
    };
    for (port, healthy) in [(8080, true), (8081, true), (8082, false)] {
        let mut wire = unchecked("10.1.0.7", port);
        wire.healthy = Some(healthy);
        let answer = client.register_instance(wire).await.unwrap().into_inner();
        assert_eq!(code(&answer), 200_000, "{answer:?}");
    }
    // Markup in a value is shown as text, never parsed.
    let mut marked = unchecked("10.1.0.8", 8080);
    marked.isolate = Some(true);
    marked
        .metadata
        .insert("note".to_owned(), "<b id=\"injected\">bold</b>".to_owned());
    let answer = client.register_instance(marked).await.unwrap().into_inner();
    assert_eq!(code(&answer), 200_000, "{answer:?}");

    let base = format!("http://{}/", t.server.http_addr());
    let opened = format!("{base}#service/default/console-svc");
    let target = target_dir();
    std::fs::create_dir_all(&target).expect("the target directory");
    let screenshots = [
        (base.clone(), target.join("console.png")),
        (opened.clone(), target.join("console-service.png")),
    ];
    let runs = tokio::task::spawn_blocking({
        let screenshots = screenshots.clone();
        move || {
            let dump = ["--dump-dom".to_owned()];
            let mut runs = vec![
                run_browser(&binary, &base, &dump),
                run_browser(&binary, &opened, &dump),
            ];
            for (url, path) in &screenshots {
                let _ = std::fs::remove_file(path);
                let shot = format!("--screenshot={}", path.display());
                runs.push(run_browser(&binary, url, &[shot]));
            }
            runs
        }
    })
    .await
    .unwrap();
    let log: String = runs.iter().map(|run| run.stderr.as_str()).collect();
    let _ = std::fs::write(target.join("console-browser.log"), log);
    let (list, service) = (&runs[0], &runs[1]);

    // The services list: the service with 4 instances, 3 healthy, 1 isolated.
    let dom = &list.stdout;
    let cells = row_cells(dom, "<tr data-service=\"default/console-svc\"");
    assert_eq!(
        cells[..5],
        ["default", "console-svc", "4", "3", "1"],
        "{cells:?}"
    );
    assert!(
        dom.contains("<p id=\"problem\" class=\"problem\" role=\"alert\" hidden=\"\">"),
        "no problem shown:\n{dom}"
    );
    // Counted from the same cache: at least this service's instances; and one refresh
    // happened, so the rates show numbers.
    let instances: u64 = stat(dom, "stat-instances")
        .replace(',', "")
        .parse()
        .unwrap();
    assert!(instances >= 4, "{instances}");
    for rate in ["rate-registrations", "rate-heartbeats", "rate-discovers"] {
        let shown = stat(dom, rate);
        assert!(
            shown.replace(',', "").parse::<f64>().is_ok(),
            "#{rate} shows {shown:?}"
        );
    }
    assert!(
        dom.contains("<option value=\"default\">default (1)</option>"),
        "{dom}"
    );

    // The service's instances, ordered by host and port.
    let dom = &service.stdout;
    let first = row_cells(dom, "<tr data-instance=");
    assert_eq!(
        first[..5],
        ["10.1.0.7", "8080", "healthy", "–", "100"],
        "{first:?}"
    );
    assert!(first[5].contains("env=test"), "{first:?}");
    let unhealthy = row_cells(
        dom,
        &format!(
            "<tr data-instance=\"{}\"",
            common::expected_id("default", "console-svc", "10.1.0.7", 8082)
        ),
    );
    assert_eq!(
        unhealthy[..3],
        ["10.1.0.7", "8082", "unhealthy"],
        "{unhealthy:?}"
    );
    assert!(
        !dom.contains("<b id=\"injected\""),
        "metadata was parsed as HTML"
    );
    assert!(
        dom.contains("note=&lt;b id=\"injected\"&gt;bold&lt;/b&gt;"),
        "{dom}"
    );
    let isolated = row_cells(
        dom,
        &format!(
            "<tr data-instance=\"{}\"",
            common::expected_id("default", "console-svc", "10.1.0.8", 8080)
        ),
    );
    assert_eq!(
        isolated[..4],
        ["10.1.0.8", "8080", "healthy", "isolated"],
        "{isolated:?}"
    );
    assert!(dom.contains("default / console-svc"));

    for run in &runs {
        assert_eq!(
            run.console_lines(),
            Vec::<&str>::new(),
            "the page's console"
        );
    }
    for (_, path) in &screenshots {
        let png = std::fs::read(path).expect("a screenshot");
        assert!(png.starts_with(b"\x89PNG"), "{}", path.display());
        eprintln!("screenshot: {}", path.display());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_auth_on_the_console_asks_for_a_token() {
    let Some(binary) = browser_or_skip("with_auth_on_the_console_asks_for_a_token") else {
        return;
    };
    let t = TestServer::start(|config| {
        config.auth.enabled = true;
        config.auth.tokens = vec![batchreg::config::TokenConfig {
            token: "console-token".to_owned(),
            allow: vec!["*".to_owned()],
        }];
    })
    .await;
    let url = format!("http://{}/", t.server.http_addr());
    let run =
        tokio::task::spawn_blocking(move || run_browser(&binary, &url, &["--dump-dom".to_owned()]))
            .await
            .unwrap();
    let dom = &run.stdout;
    assert!(
        dom.contains("<form id=\"token-form\">"),
        "the token field shows:\n{dom}"
    );
    assert!(
        dom.contains("role=\"alert\">401002: "),
        "the refusal is shown:\n{dom}"
    );
    // The browser reports each refused read itself; the page adds nothing.
    for line in run.console_lines() {
        assert!(
            line.contains("Failed to load resource: the server responded with a status of 401"),
            "{line}"
        );
    }
}

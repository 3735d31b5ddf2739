#![allow(dead_code)]

//! The process's metrics as `/metrics` renders them, read back by the tests. One
//! recorder serves every server and writer of a test binary, so a test that counts gives
//! its writers labels of their own.

/// Installs the recorder (once per process) and renders every metric now.
pub fn rendered() -> String {
    batchreg::telemetry::install().render()
}

/// The value of the sample line that starts with `series` exactly.
pub fn sample(body: &str, series: &str) -> Option<f64> {
    body.lines().find_map(|line| {
        line.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// The sum of every sample of `name` whose labels include each of `labels` (`key="value"`).
pub fn sum(body: &str, name: &str, labels: &[&str]) -> f64 {
    body.lines()
        .filter_map(|line| {
            let rest = line.strip_prefix(name)?.strip_prefix('{')?;
            let (label_text, value) = rest.split_once("} ")?;
            let present: Vec<&str> = label_text.split(',').collect();
            labels
                .iter()
                .all(|wanted| present.contains(wanted))
                .then(|| value.trim().parse::<f64>().ok())
                .flatten()
        })
        .sum()
}

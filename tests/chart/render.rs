//! The chart rendered by the pinned helm that scripts/check-chart caches,
//! read back as JSON values.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::Value;

pub const CHART: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/charts/spool");

fn tools_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("SPOOL_TOOLS_DIR") {
        return dir.into();
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache"));
    cache.join("spool-tools")
}

fn tool(name: &str) -> PathBuf {
    let path = tools_dir().join("bin").join(name);
    assert!(
        path.exists(),
        "{} is missing: run scripts/check-chart first (scripts/test does), which fetches the pinned helm and kubernetes-validate",
        path.display()
    );
    path
}

/// `helm template` of the chart with `args`, as a list of objects.
pub fn render(helm: &str, args: &[&str]) -> Vec<Value> {
    let out = Command::new(tool(helm))
        .args(["template", "spool-test", CHART, "--namespace", "spool-test"])
        .args(args)
        .output()
        .expect("run helm");
    assert!(
        out.status.success(),
        "{helm} template {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut python = Command::new(tool("chart-python"))
        .args([
            "-c",
            "import json, sys, yaml; json.dump([d for d in yaml.safe_load_all(sys.stdin) if d], sys.stdout)",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run chart-python");
    python.stdin.take().unwrap().write_all(&out.stdout).unwrap();
    let json = python.wait_with_output().unwrap();
    assert!(json.status.success(), "YAML to JSON failed");
    serde_json::from_slice(&json.stdout).expect("JSON from chart-python")
}

/// The path of a values file under charts/spool/ci.
pub fn values(file: &str) -> String {
    Path::new(CHART).join("ci").join(file).display().to_string()
}

/// charts/spool/values.schema.json.
pub fn schema() -> Value {
    let text = std::fs::read_to_string(Path::new(CHART).join("values.schema.json")).unwrap();
    serde_json::from_str(&text).expect("values.schema.json is JSON")
}

pub fn str_of<'a>(v: &'a Value, what: &str) -> &'a str {
    v.as_str()
        .unwrap_or_else(|| panic!("{what} is not a string: {v}"))
}

//! The chart's alerts and dashboard query what spool exports. A rule on a
//! metric spool does not register, or grouped by a label its series do not
//! carry, renders and loads fine and can never fire; so every metric name
//! in the PrometheusRule's and the dashboard's queries must be on a running
//! spool's /metrics, every label they match or group by on one of that
//! metric's series, and every label value they match exactly a string
//! spool's source writes (an outcome that only shows after a 503 cannot be
//! waited for here).

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use crate::render::{render, str_of, values};

/// Labels Prometheus adds when it scrapes, not spool.
const TARGET_LABELS: &[&str] = &[
    "namespace",
    "pod",
    "instance",
    "job",
    "container",
    "service",
    "endpoint",
];

/// (where, query) for every query of the PrometheusRule and the dashboard,
/// as `helm` renders them with ci/monitoring-values.yaml.
pub fn queries(helm: &str) -> Vec<(String, String)> {
    let file = values("monitoring-values.yaml");
    let objects = render(helm, &["-f", &file, "--kube-version", "1.31.0"]);
    let mut out = Vec::new();
    for rule in objects
        .iter()
        .filter(|o| o["kind"] == "PrometheusRule")
        .flat_map(|o| o["spec"]["groups"].as_array().into_iter().flatten())
        .flat_map(|g| g["rules"].as_array().into_iter().flatten())
    {
        let name = rule["alert"]
            .as_str()
            .or(rule["record"].as_str())
            .unwrap_or("?");
        out.push((
            format!("alert {name}"),
            str_of(&rule["expr"], "expr").to_owned(),
        ));
    }
    let alerts = out.len();
    assert!(alerts > 0, "{helm}: no PrometheusRule rules rendered");
    let dashboard = objects
        .iter()
        .find(|o| {
            o["kind"] == "ConfigMap"
                && o["metadata"]["name"]
                    .as_str()
                    .is_some_and(|n| n.ends_with("-dashboard"))
        })
        .expect("the dashboard ConfigMap");
    let json: Value = serde_json::from_str(str_of(&dashboard["data"]["spool.json"], "spool.json"))
        .expect("the dashboard is JSON");
    fn walk(v: &Value, out: &mut Vec<(String, String)>) {
        match v {
            Value::Object(map) => {
                for (key, sub) in map {
                    match sub {
                        Value::String(s)
                            if ["expr", "query", "definition"].contains(&key.as_str())
                                && s.contains("spool_") =>
                        {
                            out.push((format!("dashboard {key}"), s.clone()));
                        }
                        _ => walk(sub, out),
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|i| walk(i, out)),
            _ => {}
        }
    }
    walk(&json, &mut out);
    assert!(out.len() > alerts, "{helm}: no dashboard queries found");
    out
}

/// What one query uses: metric names, labels, and `label="value"` matches.
#[derive(Default, Debug)]
struct Uses {
    metrics: BTreeSet<String>,
    labels: BTreeSet<String>,
    exact: BTreeSet<(String, String)>,
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// The part of PromQL these queries use: selectors with matchers,
/// `by (...)`, and Grafana's `label_values(metric, label)`.
fn uses(query: &str) -> Uses {
    let mut u = Uses::default();
    let chars: Vec<char> = query.chars().collect();
    let word_at =
        |i: usize| -> String { chars[i..].iter().take_while(|c| is_ident(**c)).collect() };
    let mut i = 0;
    while i < chars.len() {
        let boundary = i == 0 || !is_ident(chars[i - 1]);
        if !boundary || !is_ident(chars[i]) {
            i += 1;
            continue;
        }
        let word = word_at(i);
        let mut j = i + word.len();
        if word.starts_with("spool_") {
            u.metrics.insert(word.clone());
            if chars.get(j) == Some(&'{') {
                let end = close(&chars, j, '}');
                for matcher in split_outside_quotes(&chars[j + 1..end]) {
                    let m = matcher.trim();
                    let name: String = m.chars().take_while(|c| is_ident(*c)).collect();
                    let rest = m[name.len()..].trim_start();
                    if name.is_empty() {
                        continue;
                    }
                    u.labels.insert(name.clone());
                    if let Some(value) = rest.strip_prefix('=').filter(|v| !v.starts_with('~')) {
                        let value = value.trim().trim_matches('"');
                        if !value.contains('$') {
                            u.exact.insert((name, value.to_owned()));
                        }
                    }
                }
                j = end + 1;
            }
        } else if word == "by" || word == "without" || word == "label_values" {
            let open = (j..chars.len()).find(|&k| !chars[k].is_whitespace());
            if let Some(open) = open.filter(|&k| chars[k] == '(') {
                let end = close(&chars, open, ')');
                let inner: String = chars[open + 1..end].iter().collect();
                let mut parts: Vec<&str> = inner.split(',').map(str::trim).collect();
                if word == "label_values" {
                    // (metric, label): the metric is read on the next pass.
                    parts.remove(0);
                    j = open + 1;
                } else {
                    j = end + 1;
                }
                u.labels.extend(
                    parts
                        .into_iter()
                        .filter(|p| !p.is_empty())
                        .map(str::to_owned),
                );
            }
        }
        i = j.max(i + 1);
    }
    u
}

/// The index of the `closing` that ends the group opened at `open`.
fn close(chars: &[char], open: usize, closing: char) -> usize {
    let mut quoted = false;
    for (k, c) in chars.iter().enumerate().skip(open + 1) {
        match c {
            '"' if chars[k - 1] != '\\' => quoted = !quoted,
            c if *c == closing && !quoted => return k,
            _ => {}
        }
    }
    panic!(
        "unbalanced {closing} in {}",
        chars.iter().collect::<String>()
    )
}

fn split_outside_quotes(chars: &[char]) -> Vec<String> {
    let mut out = vec![String::new()];
    let mut quoted = false;
    for (k, c) in chars.iter().enumerate() {
        if *c == '"' && (k == 0 || chars[k - 1] != '\\') {
            quoted = !quoted;
        }
        if *c == ',' && !quoted {
            out.push(String::new());
        } else {
            out.last_mut().unwrap().push(*c);
        }
    }
    out
}

/// Each sample's metric name in a Prometheus text exposition, with the
/// label names its series carry.
pub fn exported(text: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
    {
        let chars: Vec<char> = line.chars().collect();
        let name: String = chars
            .iter()
            .take_while(|c| is_ident(**c) || **c == ':')
            .collect();
        let labels = out.entry(name.clone()).or_default();
        if chars.get(name.len()) == Some(&'{') {
            let end = close(&chars, name.len(), '}');
            for pair in split_outside_quotes(&chars[name.len() + 1..end]) {
                if let Some((label, _)) = pair.split_once('=') {
                    labels.insert(label.trim().to_owned());
                }
            }
        }
    }
    out
}

/// Every string literal's text in src/, for the exact matches.
fn source_strings() -> BTreeSet<String> {
    fn walk(dir: &std::path::Path, out: &mut BTreeSet<String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).unwrap();
                out.extend(text.split('"').skip(1).step_by(2).map(str::to_owned));
            }
        }
    }
    let mut out = BTreeSet::new();
    walk(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
        &mut out,
    );
    out
}

/// What in `queries` a spool exporting `metrics` does not back; empty when all is.
pub fn unbacked(queries: &[(String, String)], metrics: &str) -> Vec<String> {
    let exported = exported(metrics);
    let strings = source_strings();
    let mut problems = Vec::new();
    for (place, query) in queries {
        let u = uses(query);
        if u.metrics.is_empty() {
            problems.push(format!("{place}: no spool_ metric in `{query}`"));
        }
        for metric in &u.metrics {
            if !exported.contains_key(metric) {
                problems.push(format!("{place}: spool exports no `{metric}`"));
            }
        }
        let carried: BTreeSet<&String> = u
            .metrics
            .iter()
            .filter_map(|m| exported.get(m))
            .flatten()
            .collect();
        for label in &u.labels {
            if !TARGET_LABELS.contains(&label.as_str()) && !carried.contains(label) {
                problems.push(format!(
                    "{place}: no series of {:?} carries the label `{label}`",
                    u.metrics
                ));
            }
        }
        for (label, value) in &u.exact {
            if !TARGET_LABELS.contains(&label.as_str()) && !strings.contains(value) {
                problems.push(format!(
                    "{place}: {label}=\"{value}\" is not a string spool's source writes"
                ));
            }
        }
    }
    problems
}

#[test]
fn the_query_reader_finds_names_labels_and_values() {
    let u = uses(
        r#"sum by (namespace, route) (rate(spool_ingest_requests_total{namespace="a",outcome="unavailable", x=~"$y"}[5m])) > 0"#,
    );
    assert_eq!(u.metrics, ["spool_ingest_requests_total".to_owned()].into());
    assert_eq!(
        u.labels,
        ["namespace", "outcome", "route", "x"]
            .map(str::to_owned)
            .into()
    );
    assert_eq!(
        u.exact,
        [
            ("namespace".to_owned(), "a".to_owned()),
            ("outcome".to_owned(), "unavailable".to_owned())
        ]
        .into()
    );
    let u = uses("label_values(spool_backlog, target)");
    assert_eq!(u.metrics, ["spool_backlog".to_owned()].into());
    assert_eq!(u.labels, ["target".to_owned()].into());
    let metrics = "# TYPE spool_backlog gauge\nspool_backlog{route=\"a\",target=\"b\"} 0\n";
    assert!(
        unbacked(
            &[("t".into(), "max by (route) (spool_backlog)".into())],
            metrics
        )
        .is_empty()
    );
    let problems = unbacked(
        &[(
            "t".into(),
            "max by (shard) (spool_shard_owner{outcome=\"nonesuch-value\"})".into(),
        )],
        metrics,
    );
    assert_eq!(problems.len(), 4, "{problems:?}");
}

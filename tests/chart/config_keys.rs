//! The chart's `config` value and spool's configuration know the same keys.
//! values.schema.json lists spool.toml's keys by hand (additionalProperties
//! false), so a key spool gains would be refused by the chart until someone
//! adds it, and a key spool drops would pass the schema and make spool exit
//! 2. spool itself says which keys a section has: its error for an unknown
//! key is serde's "unknown field `x`, expected one of `a`, `b`, ...". So each
//! section the schema describes gets one unknown key, and the lists are
//! compared.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

use serde_json::Value;

/// Keys of spool's configuration that the chart sets itself or leaves out
/// on purpose, with the reason; the schema must not allow them.
pub const CHART_OWNED: &[(&str, &str)] = &[
    ("server.listen", "rendered from `ports` and `listen`"),
    ("server.admin_listen", "rendered from `ports` and `listen`"),
    (
        "server.admin_token",
        "from the adminToken Secret, through SPOOL_ADMIN_TOKEN_FILE",
    ),
    (
        "database.url",
        "from the databaseUrl Secret, through SPOOL_DATABASE_URL_FILE",
    ),
    (
        "database.embedded",
        "the image has no Postgres; its Dockerfile sets it false",
    ),
    ("database.embedded_dir", "the image has no Postgres"),
    ("database.embedded_bin_dir", "the image has no Postgres"),
];

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

/// Each section of the schema's `config` ("" for the top, "server",
/// "routes[]", "routes[].retry", ...) and the keys it allows.
pub fn schema_sections(schema: &Value) -> BTreeMap<String, BTreeSet<String>> {
    fn walk(node: &Value, path: String, out: &mut BTreeMap<String, BTreeSet<String>>) {
        if let Some(props) = node["properties"].as_object() {
            out.insert(path.clone(), props.keys().cloned().collect());
            for (key, sub) in props {
                walk(sub, join(&path, key), out);
            }
        }
        if node.get("items").is_some() {
            walk(&node["items"], format!("{path}[]"), out);
        }
    }
    let mut out = BTreeMap::new();
    walk(&schema["properties"]["config"], String::new(), &mut out);
    out
}

/// Every key path the schema allows ("server.max_body_bytes",
/// "routes[].targets[].url").
pub fn schema_paths(schema: &Value) -> BTreeSet<String> {
    schema_sections(schema)
        .iter()
        .flat_map(|(path, keys)| keys.iter().map(move |k| join(path, k)))
        .collect()
}

/// Every key path set in a spool.toml, in the same notation.
pub fn toml_paths(table: &toml::Table) -> BTreeSet<String> {
    fn walk(table: &toml::Table, path: &str, out: &mut BTreeSet<String>) {
        for (key, value) in table {
            let here = join(path, key);
            out.insert(here.clone());
            match value {
                toml::Value::Table(sub) => walk(sub, &here, out),
                toml::Value::Array(items) => {
                    for item in items {
                        if let toml::Value::Table(sub) = item {
                            walk(sub, &format!("{here}[]"), out);
                        }
                    }
                }
                _ => {}
            }
        }
    }
    let mut out = BTreeSet::new();
    walk(table, "", &mut out);
    out
}

const UNKNOWN: &str = "zz_not_a_spool_key";

/// The keys spool knows in `section`, from its own error for an unknown one.
fn spool_keys(section: &str) -> BTreeSet<String> {
    let mut text = String::new();
    let mut name = String::new();
    if !section.is_empty() {
        for segment in section.split('.') {
            let (plain, array) = match segment.strip_suffix("[]") {
                Some(plain) => (plain, true),
                None => (segment, false),
            };
            name = join(&name, plain);
            text += &if array {
                format!("[[{name}]]\n")
            } else {
                format!("[{name}]\n")
            };
        }
    }
    text += &format!("{UNKNOWN} = 1\n");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("spool.toml");
    std::fs::write(&file, &text).unwrap();
    let out = Command::new(crate::support::process::spool_binary())
        .arg("--config")
        .arg(&file)
        .arg("check-config")
        .env_clear()
        .output()
        .expect("run spool check-config");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let expected = stderr
        .split_once(&format!("unknown field `{UNKNOWN}`"))
        .and_then(|(_, rest)| rest.split_once("expected"))
        .map(|(_, list)| list.lines().next().unwrap_or_default())
        .unwrap_or_else(|| panic!("spool did not name the keys of [{section}]:\n{text}\n{stderr}"));
    // `a`, `b` or `c`: every backquoted name.
    expected
        .split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect()
}

#[test]
fn the_schema_and_spool_know_the_same_configuration_keys() {
    let mut problems = Vec::new();
    let mut owned_seen = BTreeSet::new();
    for (section, allowed) in schema_sections(&crate::render::schema()) {
        let known = spool_keys(&section);
        let owned: BTreeSet<String> = CHART_OWNED
            .iter()
            .map(|(key, _)| *key)
            .filter(|key| key.rsplit_once('.').map_or("", |(s, _)| s) == section)
            .map(|key| key.rsplit('.').next().unwrap().to_owned())
            .collect();
        for key in known.difference(&allowed) {
            if !owned.contains(key) {
                problems.push(format!(
                    "{}: spool knows it, values.schema.json does not (add it there, to ci/full-config-values.yaml and charts/spool/README.md, or to CHART_OWNED with the reason)",
                    join(&section, key)
                ));
            }
        }
        for key in allowed.difference(&known) {
            problems.push(format!(
                "{}: values.schema.json allows it, spool refuses it",
                join(&section, key)
            ));
        }
        for key in &owned {
            if allowed.contains(key) {
                problems.push(format!(
                    "{}: the chart owns it, yet the schema lets `config` set it",
                    join(&section, key)
                ));
            }
            if !known.contains(key) {
                problems.push(format!(
                    "{}: in CHART_OWNED, but spool has no such key",
                    join(&section, key)
                ));
            }
            owned_seen.insert(join(&section, key));
        }
    }
    for (key, _) in CHART_OWNED {
        if !owned_seen.contains(*key) {
            problems.push(format!(
                "{key}: in CHART_OWNED, but its section is not in the schema"
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

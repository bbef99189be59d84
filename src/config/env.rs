//! `SPOOL_*` environment variables override keys of the file.
//!
//! `SPOOL_SECTION__KEY` sets `section.key` (a double underscore between
//! levels, array entries by index: `SPOOL_ROUTES__0__TIMEOUT_MS`). A few keys
//! have short names that deployment tools expect, listed in `ALIASES`. Values
//! are read as TOML values when they parse as one (`5000`, `true`,
//! `["POST"]`), else as strings; the aliased keys are always strings.
//!
//! The two secrets may instead be read from a file (a mounted Kubernetes
//! Secret): `SPOOL_DATABASE_URL_FILE`, `SPOOL_ADMIN_TOKEN_FILE`. Variables
//! that Kubernetes injects for Services (`SPOOL_PORT=tcp://...`) are set
//! aside, not taken for misspelt settings.

use std::path::Path;

use toml::{Table, Value};

use super::ConfigError;
use super::service_links::is_service_link;

const PREFIX: &str = "SPOOL_";

/// Short names for the keys operators set most, always taken as strings.
const ALIASES: &[(&str, &str)] = &[
    ("SPOOL_LISTEN", "server.listen"),
    ("SPOOL_ADMIN_LISTEN", "server.admin_listen"),
    ("SPOOL_ADMIN_TOKEN", "server.admin_token"),
    ("SPOOL_DATABASE_URL", "database.url"),
];

/// Secrets read from the file a variable names, for mounted Secrets: the
/// value never has to sit in the pod's environment.
const FROM_FILE: &[(&str, &str)] = &[
    ("SPOOL_DATABASE_URL_FILE", "SPOOL_DATABASE_URL"),
    ("SPOOL_ADMIN_TOKEN_FILE", "SPOOL_ADMIN_TOKEN"),
];

/// `SPOOL_*` variables that are not configuration keys.
const NOT_KEYS: &[&str] = &["SPOOL_CONFIG"];

/// What the environment did to the file's table.
#[derive(Debug, Default)]
pub(super) struct Overrides {
    /// (dotted key, variable) pairs, so that a later type error can say
    /// which variable it came from.
    pub applied: Vec<(String, String)>,
    /// Kubernetes' Service variables, left alone (logged once logging runs).
    pub ignored: Vec<String>,
}

/// Applies every override.
pub(super) fn apply_overrides(
    table: &mut Table,
    vars: impl IntoIterator<Item = (String, String)>,
) -> Result<Overrides, ConfigError> {
    let mut overrides = Overrides::default();
    let mut vars: Vec<_> = vars
        .into_iter()
        .filter(|(name, _)| name.starts_with(PREFIX) && !NOT_KEYS.contains(&name.as_str()))
        .filter(|(name, value)| {
            let link = is_service_link(name, value);
            if link {
                overrides.ignored.push(name.clone());
            }
            !link
        })
        .collect();
    // Sorted, so that SPOOL_ROUTES__0__* lands before SPOOL_ROUTES__1__*.
    vars.sort();
    overrides.ignored.sort();
    for (file_var, direct) in FROM_FILE {
        let both = |(name, _): &(String, String)| name == file_var || name == direct;
        if vars.iter().filter(|v| both(v)).count() > 1 {
            return Err(ConfigError::Env {
                var: (*file_var).to_owned(),
                message: format!("is set together with {direct}; set only one of them"),
            });
        }
    }
    for (name, raw) in vars {
        let alias = FROM_FILE
            .iter()
            .find(|(file_var, _)| *file_var == name)
            .map(|(_, direct)| *direct)
            .unwrap_or(&name);
        let (path, value) = match ALIASES.iter().find(|(a, _)| *a == alias) {
            Some((_, key)) if alias != name => {
                (split(key), Value::String(read_secret(&name, &raw)?))
            }
            Some((_, key)) => (split(key), Value::String(raw)),
            None => (path_of(&name)?, value_of(raw)),
        };
        set(table, &path, value).map_err(|message| ConfigError::Env {
            var: name.clone(),
            message,
        })?;
        overrides.applied.push((path.join("."), name));
    }
    Ok(overrides)
}

fn split(key: &str) -> Vec<String> {
    key.split('.').map(str::to_owned).collect()
}

/// The contents of the file `var` names, less the trailing newline that
/// editors and `echo` leave (a Secret made with `--from-file` keeps it).
fn read_secret(var: &str, path: &str) -> Result<String, ConfigError> {
    let env_error = |message: String| ConfigError::Env {
        var: var.to_owned(),
        message,
    };
    let text = std::fs::read_to_string(Path::new(path))
        .map_err(|e| env_error(format!("cannot read {path}: {e}")))?;
    let value = text
        .strip_suffix('\n')
        .map(|t| t.strip_suffix('\r').unwrap_or(t))
        .unwrap_or(&text);
    if value.trim().is_empty() {
        return Err(env_error(format!("{path} is empty")));
    }
    Ok(value.to_owned())
}

fn path_of(name: &str) -> Result<Vec<String>, ConfigError> {
    let rest = &name[PREFIX.len()..];
    let path: Vec<String> = rest.split("__").map(str::to_ascii_lowercase).collect();
    if path.len() < 2 || path.iter().any(String::is_empty) {
        return Err(ConfigError::Env {
            var: name.to_owned(),
            message: format!(
                "not a spool setting; use SPOOL_SECTION__KEY (for example SPOOL_SERVER__MAX_BODY_BYTES) or one of {}",
                ALIASES
                    .iter()
                    .map(|(a, _)| *a)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        });
    }
    Ok(path)
}

fn value_of(raw: String) -> Value {
    match format!("v = {raw}").parse::<Table>() {
        Ok(mut t) => t.remove("v").unwrap_or(Value::String(raw)),
        Err(_) => Value::String(raw),
    }
}

/// Sets `path` in `table`, creating tables (or arrays, before an index) on
/// the way; an index may name an existing entry or the one just past the end.
fn set(table: &mut Table, path: &[String], value: Value) -> Result<(), String> {
    let mut node = table
        .entry(path[0].clone())
        .or_insert_with(|| empty_before(&path[1]));
    for (i, part) in path.iter().enumerate().skip(1) {
        let slot = match path.get(i + 1) {
            Some(next) => empty_before(next),
            None => value.clone(),
        };
        let is_last = i + 1 == path.len();
        node = match node {
            Value::Table(t) if is_last => {
                t.insert(part.clone(), slot);
                return Ok(());
            }
            Value::Table(t) => t.entry(part.clone()).or_insert(slot),
            Value::Array(items) => {
                let index = index_of(part, items.len())?;
                if index == items.len() {
                    items.push(slot);
                } else if is_last {
                    items[index] = slot;
                }
                &mut items[index]
            }
            _ => return Err(format!("`{}` is not a table", path[..i].join("."))),
        };
    }
    Ok(())
}

/// The empty container to create before `next`: an array before an index.
fn empty_before(next: &str) -> Value {
    if next.parse::<usize>().is_ok() {
        Value::Array(Vec::new())
    } else {
        Value::Table(Table::new())
    }
}

fn index_of(part: &str, len: usize) -> Result<usize, String> {
    match part.parse::<usize>() {
        Ok(i) if i <= len => Ok(i),
        Ok(i) => Err(format!("index {i} skips entries: the array has {len}")),
        Err(_) => Err(format!("`{part}` is not an array index")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn aliases_and_nested_keys_are_set() {
        let mut t: Table = "[[routes]]\nname = \"a\"".parse().unwrap();
        apply_overrides(
            &mut t,
            vars(&[
                ("SPOOL_DATABASE_URL", "postgres://x@h/db"),
                ("SPOOL_SERVER__MAX_BODY_BYTES", "10"),
                ("SPOOL_ROUTES__0__TIMEOUT_MS", "7"),
                ("SPOOL_ADMIN_TOKEN", "12345"),
                ("HOME", "/root"),
            ]),
        )
        .unwrap();
        assert_eq!(t["database"]["url"].as_str(), Some("postgres://x@h/db"));
        assert_eq!(t["server"]["max_body_bytes"].as_integer(), Some(10));
        assert_eq!(t["routes"][0]["timeout_ms"].as_integer(), Some(7));
        assert_eq!(t["server"]["admin_token"].as_str(), Some("12345"));
    }

    #[test]
    fn rejects_unknown_spool_variable() {
        let err = apply_overrides(&mut Table::new(), vars(&[("SPOOL_LISTNE", "x")])).unwrap_err();
        assert!(err.to_string().contains("SPOOL_LISTNE"), "{err}");
    }

    #[test]
    fn kubernetes_service_variables_are_set_aside() {
        let mut t = Table::new();
        let overrides = apply_overrides(
            &mut t,
            vars(&[
                ("SPOOL_PORT", "tcp://10.0.0.1:4000"),
                ("SPOOL_PORT_4000_TCP", "tcp://10.0.0.1:4000"),
                ("SPOOL_PORT_4000_TCP_ADDR", "10.0.0.1"),
                ("SPOOL_PORT_4000_TCP_PORT", "4000"),
                ("SPOOL_PORT_4000_TCP_PROTO", "tcp"),
                ("SPOOL_SERVICE_HOST", "10.0.0.1"),
                ("SPOOL_SERVICE_PORT", "4000"),
                ("SPOOL_SERVICE_PORT_DATA", "4000"),
                ("SPOOL_SERVER__MAX_BODY_BYTES", "10"),
            ]),
        )
        .unwrap();
        assert_eq!(overrides.ignored.len(), 8, "{:?}", overrides.ignored);
        assert_eq!(overrides.applied.len(), 1);
        assert_eq!(t.keys().collect::<Vec<_>>(), ["server"]);
    }

    #[test]
    fn a_misspelt_setting_beside_service_variables_is_still_an_error() {
        let err = apply_overrides(
            &mut Table::new(),
            vars(&[
                ("SPOOL_SERVICE_HOST", "10.0.0.1"),
                ("SPOOL_SERVR__LISTEN", "127.0.0.1:1"),
                ("SPOOL_PORT", "4000"),
            ]),
        )
        .unwrap_err();
        // Both are errors; the first in sorted order is reported.
        assert!(err.to_string().contains("SPOOL_PORT"), "{err}");
        let mut t = Table::new();
        apply_overrides(&mut t, vars(&[("SPOOL_SERVR__LISTEN", "127.0.0.1:1")])).unwrap();
        // Applied here; the unknown section is rejected by the deserializer.
        assert!(t.contains_key("servr"));
    }

    #[test]
    fn secrets_are_read_from_files_without_the_trailing_newline() {
        let dir = tempfile::tempdir().unwrap();
        let url = dir.path().join("url");
        let token = dir.path().join("token");
        std::fs::write(&url, "postgres://u:p@db/spool\n").unwrap();
        std::fs::write(&token, "s3cret\r\n").unwrap();
        let mut t = Table::new();
        let overrides = apply_overrides(
            &mut t,
            vars(&[
                ("SPOOL_DATABASE_URL_FILE", url.to_str().unwrap()),
                ("SPOOL_ADMIN_TOKEN_FILE", token.to_str().unwrap()),
            ]),
        )
        .unwrap();
        assert_eq!(
            t["database"]["url"].as_str(),
            Some("postgres://u:p@db/spool")
        );
        assert_eq!(t["server"]["admin_token"].as_str(), Some("s3cret"));
        assert!(
            overrides
                .applied
                .contains(&("database.url".into(), "SPOOL_DATABASE_URL_FILE".into()))
        );
    }

    #[test]
    fn an_unreadable_secret_file_names_the_variable_and_path() {
        let err = apply_overrides(
            &mut Table::new(),
            vars(&[("SPOOL_ADMIN_TOKEN_FILE", "/nonexistent/token")]),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("SPOOL_ADMIN_TOKEN_FILE"), "{err}");
        assert!(err.contains("/nonexistent/token"), "{err}");
    }

    #[test]
    fn an_empty_secret_file_is_an_error() {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), "\n").unwrap();
        let err = apply_overrides(
            &mut Table::new(),
            vars(&[("SPOOL_DATABASE_URL_FILE", file.path().to_str().unwrap())]),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("SPOOL_DATABASE_URL_FILE") && err.contains("empty"),
            "{err}"
        );
    }

    #[test]
    fn a_secret_from_both_a_variable_and_a_file_is_an_error() {
        let err = apply_overrides(
            &mut Table::new(),
            vars(&[
                ("SPOOL_DATABASE_URL", "postgres://db/x"),
                ("SPOOL_DATABASE_URL_FILE", "/run/secrets/url"),
            ]),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("SPOOL_DATABASE_URL_FILE"), "{err}");
        assert!(err.contains("only one"), "{err}");
    }

    #[test]
    fn rejects_index_past_end() {
        let err = apply_overrides(&mut Table::new(), vars(&[("SPOOL_ROUTES__3__NAME", "x")]))
            .unwrap_err();
        assert!(err.to_string().contains("SPOOL_ROUTES__3__NAME"), "{err}");
    }
}

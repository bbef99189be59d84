//! `SPOOL_*` environment variables override keys of the file.
//!
//! `SPOOL_SECTION__KEY` sets `section.key` (a double underscore between
//! levels, array entries by index: `SPOOL_ROUTES__0__TIMEOUT_MS`). A few keys
//! have short names that deployment tools expect, listed in `ALIASES`. Values
//! are read as TOML values when they parse as one (`5000`, `true`,
//! `["POST"]`), else as strings; the aliased keys are always strings.

use toml::{Table, Value};

use super::ConfigError;

const PREFIX: &str = "SPOOL_";

/// Short names for the keys operators set most, always taken as strings.
const ALIASES: &[(&str, &str)] = &[
    ("SPOOL_LISTEN", "server.listen"),
    ("SPOOL_ADMIN_LISTEN", "server.admin_listen"),
    ("SPOOL_ADMIN_TOKEN", "server.admin_token"),
    ("SPOOL_DATABASE_URL", "database.url"),
];

/// `SPOOL_*` variables that are not configuration keys.
const NOT_KEYS: &[&str] = &["SPOOL_CONFIG"];

/// Applies every override; returns (dotted key, variable) pairs so that a
/// later type error can say which variable it came from.
pub(super) fn apply_overrides(
    table: &mut Table,
    vars: impl IntoIterator<Item = (String, String)>,
) -> Result<Vec<(String, String)>, ConfigError> {
    let mut vars: Vec<_> = vars
        .into_iter()
        .filter(|(name, _)| name.starts_with(PREFIX) && !NOT_KEYS.contains(&name.as_str()))
        .collect();
    // Sorted, so that SPOOL_ROUTES__0__* lands before SPOOL_ROUTES__1__*.
    vars.sort();
    let mut applied = Vec::with_capacity(vars.len());
    for (name, raw) in vars {
        let (path, value) = match ALIASES.iter().find(|(alias, _)| *alias == name) {
            Some((_, key)) => (
                key.split('.').map(str::to_owned).collect(),
                Value::String(raw),
            ),
            None => (path_of(&name)?, value_of(raw)),
        };
        set(table, &path, value).map_err(|message| ConfigError::Env {
            var: name.clone(),
            message,
        })?;
        applied.push((path.join("."), name));
    }
    Ok(applied)
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
    fn rejects_index_past_end() {
        let err = apply_overrides(&mut Table::new(), vars(&[("SPOOL_ROUTES__3__NAME", "x")]))
            .unwrap_err();
        assert!(err.to_string().contains("SPOOL_ROUTES__3__NAME"), "{err}");
    }
}

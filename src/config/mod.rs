//! Configuration: one TOML file, every key overridable from the environment,
//! unknown keys rejected, and every error naming the key it is about.
//!
//! Loading is all-or-nothing: a `Config` value only exists once it has been
//! parsed *and* validated, so the rest of spool never re-checks it.

mod env;
mod model;
mod service_links;
mod validate;

use std::path::{Path, PathBuf};

pub use model::*;

/// Why a configuration could not be loaded. Every variant names its key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid TOML: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("environment variable {var}: {message}")]
    Env { var: String, message: String },
    #[error("config key `{key}`{origin}: {message}")]
    Key {
        key: String,
        origin: String,
        message: String,
    },
    #[error("invalid configuration:\n{}", .0.iter().map(|e| format!("  - {e}")).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<ConfigError>),
}

impl ConfigError {
    pub(crate) fn key(key: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError::Key {
            key: key.into(),
            origin: String::new(),
            message: message.into(),
        }
    }
}

/// Loads `path` (a missing file is an empty config only when `required` is
/// false), applies `SPOOL_*` overrides from `vars`, then validates.
pub fn load(
    path: &Path,
    required: bool,
    vars: impl IntoIterator<Item = (String, String)>,
) -> Result<Config, ConfigError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => String::new(),
        Err(source) => {
            return Err(ConfigError::Read {
                path: path.to_owned(),
                source,
            });
        }
    };
    parse(&text, path, vars)
}

/// Parses a config from TOML text with no environment overrides.
pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
    parse(text, Path::new("<inline>"), std::iter::empty())
}

fn parse(
    text: &str,
    path: &Path,
    vars: impl IntoIterator<Item = (String, String)>,
) -> Result<Config, ConfigError> {
    let mut table: toml::Table =
        text.parse()
            .map_err(|e: toml::de::Error| ConfigError::Syntax {
                path: path.to_owned(),
                message: e.to_string().trim_end().to_owned(),
            })?;
    let overrides = env::apply_overrides(&mut table, vars)?;
    let mut config = deserialize_all(table, &overrides.applied)?;
    validate::validate(&config)?;
    config.ignored_vars = overrides.ignored;
    Ok(config)
}

/// Most shape errors reported at once.
const MAX_REPORTED: usize = 50;

/// Deserializes the config, reporting every unknown key and badly typed
/// value at once rather than the first: each is recorded, taken out of the
/// table, and the rest tried again. A missing field takes out its whole
/// top-level entry (all of `routes`: taking one route out would renumber
/// the others), so the other sections are still checked.
fn deserialize_all(
    mut table: toml::Table,
    applied: &[(String, String)],
) -> Result<Config, ConfigError> {
    let mut errors = Vec::new();
    loop {
        let attempt: Result<Config, _> =
            serde_path_to_error::deserialize(toml::Value::Table(table.clone()));
        let e = match attempt {
            Ok(config) if errors.is_empty() => return Ok(config),
            Ok(_) => break,
            Err(e) => e,
        };
        let message = e.inner().message().to_owned();
        let key = key_of(&e.path().to_string(), &message);
        let origin = applied
            .iter()
            // The variable set this key, or lies under it (a misspelt
            // section is reported at the section).
            .find(|(k, _)| key.starts_with(k.as_str()) || k.starts_with(&format!("{key}.")))
            .map(|(_, var)| format!(" (from {var})"))
            .unwrap_or_default();
        let missing = message.starts_with("missing field");
        errors.push(ConfigError::Key {
            key: key.clone(),
            origin,
            message,
        });
        let removed = if missing {
            let top = key.split(['.', '[']).next().unwrap_or_default();
            table.remove(top).is_some()
        } else {
            remove_key(&mut table, &key)
        };
        if !removed || errors.len() >= MAX_REPORTED {
            break;
        }
    }
    match errors.len() {
        1 => Err(errors.pop().expect("one")),
        _ => Err(ConfigError::Invalid(errors)),
    }
}

/// Takes `key` (`server.listen`, `routes[0].targets[1].url`) out of `table`;
/// false when it is not there.
fn remove_key(table: &mut toml::Table, key: &str) -> bool {
    let mut parts: Vec<(&str, Option<usize>)> = Vec::new();
    for part in key.split('.') {
        match part.split_once('[') {
            Some((name, index)) => {
                let Ok(index) = index.trim_end_matches(']').parse() else {
                    return false;
                };
                parts.push((name, Some(index)));
            }
            None => parts.push((part, None)),
        }
    }
    let Some(((last, last_index), path)) = parts.split_last() else {
        return false;
    };
    if last_index.is_some() {
        return false;
    }
    let mut current = table;
    for (name, index) in path {
        let value = match current.get_mut(*name) {
            Some(value) => value,
            None => return false,
        };
        let value = match (index, value) {
            (Some(i), toml::Value::Array(items)) => match items.get_mut(*i) {
                Some(item) => item,
                None => return false,
            },
            (None, value) => value,
            _ => return false,
        };
        current = match value {
            toml::Value::Table(t) => t,
            _ => return false,
        };
    }
    current.remove(*last).is_some()
}

/// The dotted key an error is about: the path serde reports, which for an
/// unknown field may or may not already end with the field's own name.
fn key_of(path: &str, message: &str) -> String {
    let parent = if path == "." { "" } else { path };
    let unknown = message
        .strip_prefix("unknown field `")
        .and_then(|rest| rest.split('`').next());
    match unknown {
        Some(field) if parent == field || parent.ends_with(&format!(".{field}")) => {
            parent.to_owned()
        }
        Some(field) if parent.is_empty() => field.to_owned(),
        Some(field) => format!("{parent}.{field}"),
        None if parent.is_empty() => "(top level)".to_owned(),
        None => parent.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_env(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let vars = vars.iter().map(|(k, v)| (k.to_string(), v.to_string()));
        parse("", Path::new("spool.toml"), vars)
    }

    #[test]
    fn a_misspelt_section_variable_is_an_error_naming_it() {
        let err = parse_env(&[
            ("SPOOL_SERVICE_HOST", "10.0.0.1"),
            ("SPOOL_SERVR__LISTEN", "127.0.0.1:1"),
        ])
        .unwrap_err()
        .to_string();
        assert!(err.contains("SPOOL_SERVR__LISTEN"), "{err}");
    }

    #[test]
    fn service_variables_are_kept_for_the_log() {
        let config = parse_env(&[
            ("SPOOL_PORT", "tcp://10.0.0.1:4000"),
            ("SPOOL_SERVICE_HOST", "10.0.0.1"),
        ])
        .unwrap();
        assert_eq!(config.ignored_vars, ["SPOOL_PORT", "SPOOL_SERVICE_HOST"]);
    }
}

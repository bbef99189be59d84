//! Finding the machine's PostgreSQL server binaries.

use std::path::{Path, PathBuf};

/// The programs spool runs; all must be in one directory.
const REQUIRED: &[&str] = &["initdb", "pg_ctl", "postgres"];

/// Where Debian and Ubuntu's `postgresql` packages put each major version.
const DEBIAN_ROOT: &str = "/usr/lib/postgresql";

/// The binaries were not found: says where spool looked and what to install.
#[derive(Debug, thiserror::Error)]
#[error(
    "PostgreSQL server binaries ({}) were not found in {searched}. Install them with \
     `apt-get install postgresql` (Debian/Ubuntu) or your system's `postgresql-server` package, \
     set database.embedded_bin_dir to their directory, or set database.url (SPOOL_DATABASE_URL) \
     to use an existing Postgres",
    REQUIRED.join(", ")
)]
pub struct BinariesNotFound {
    searched: String,
}

/// Looks in `configured` if given, else in the newest
/// /usr/lib/postgresql/N/bin, else on PATH.
pub fn locate(configured: Option<&Path>) -> Result<PathBuf, BinariesNotFound> {
    let candidates: Vec<PathBuf> = match configured {
        Some(dir) => vec![dir.to_owned()],
        None => debian_dirs().into_iter().chain(path_dirs()).collect(),
    };
    candidates
        .iter()
        .find(|dir| REQUIRED.iter().all(|bin| dir.join(bin).is_file()))
        .cloned()
        .ok_or_else(|| BinariesNotFound {
            searched: match configured {
                Some(dir) => format!("database.embedded_bin_dir ({})", dir.display()),
                None => format!("{DEBIAN_ROOT}/*/bin or PATH"),
            },
        })
}

/// /usr/lib/postgresql/N/bin, newest major version first.
fn debian_dirs() -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(DEBIAN_ROOT) else {
        return Vec::new();
    };
    let mut versions: Vec<(u32, PathBuf)> = entries
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse::<u32>().ok()?;
            Some((version, e.path().join("bin")))
        })
        .collect();
    versions.sort_by_key(|(version, _)| std::cmp::Reverse(*version));
    versions.into_iter().map(|(_, dir)| dir).collect()
}

fn path_dirs() -> Vec<PathBuf> {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_binaries_name_the_package() {
        let err = locate(Some(Path::new("/nonexistent")))
            .unwrap_err()
            .to_string();
        assert!(err.contains("apt-get install postgresql"), "{err}");
        assert!(err.contains("database.embedded_bin_dir"), "{err}");
    }
}

//! Running wrk and reading what it prints.

use std::path::Path;

use tokio::process::Command;

use super::{BoxError, parse_field};

/// wrk with `threads`, `connections` and a run of `seconds`; stdin closed,
/// and killed if the run is dropped. The caller adds the rest (script,
/// headers, URL).
pub fn command(program: &Path, threads: usize, connections: usize, seconds: u64) -> Command {
    let mut command = Command::new(program);
    command
        .arg(format!("-t{threads}"))
        .arg(format!("-c{connections}"))
        .arg(format!("-d{seconds}s"))
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    command
}

/// Runs `command` to its end and gives its standard output, or an error
/// with all it printed when it failed.
pub async fn output(mut command: Command) -> Result<String, BoxError> {
    let output = command.output().await?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        return Err(format!("wrk exited with {}:\n{stdout}{stderr}", output.status).into());
    }
    Ok(stdout)
}

/// The `Requests/sec:` figure of wrk's output.
pub fn requests_per_second(out: &str) -> Result<f64, BoxError> {
    parse_field(out, "Requests/sec:")
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| format!("no `Requests/sec:` in wrk's output:\n{out}").into())
}

/// `wrk 4.1.0 [epoll]`, from the first line wrk prints for `-v`; just
/// `wrk` when it cannot be run.
pub async fn version(program: &Path) -> String {
    let output = Command::new(program).arg("-v").output().await;
    let text = output
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let first = text.lines().next().unwrap_or("wrk").trim();
    // `wrk debian/4.1.0-3+b2 [epoll] Copyright (C) 2012 Will Glozer`
    first.split(" Copyright").next().unwrap_or(first).to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_request_rate() {
        let out = "  309512 requests in 10.00s, 376.80MB read\nRequests/sec:  30946.12\n";
        assert_eq!(requests_per_second(out).unwrap(), 30946.12);
        assert!(requests_per_second("Transfer/sec: 1MB\n").is_err());
    }
}

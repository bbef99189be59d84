//! Where the CPU went: the /proc readings the benchmarks take at the start
//! and end of a window to split its CPU time by spender.

use std::time::Instant;

/// Linux reports /proc times in USER_HZ ticks, 100 per second on every
/// architecture it runs on (it is part of the user-space ABI).
pub const TICKS_PER_SECOND: f64 = 100.0;

/// Share of one core, in percent, of the ticks spent between `start` and
/// `end`, over a window of `seconds`.
pub fn share(end: u64, start: u64, seconds: f64) -> f64 {
    100.0 * end.saturating_sub(start) as f64 / TICKS_PER_SECOND / seconds
}

/// A benchmark's CPU time by spender, in ticks, and the shares of one core
/// it gives over a window.
pub trait Ticks: Sized {
    /// What a reading needs to tell the spenders apart (their pids).
    type Key: Copy;
    /// Share of one core, in percent, for each spender over a window.
    type Split;
    /// The ticks spent so far.
    fn read(key: Self::Key) -> Self;
    /// The shares from `start` to `end`, `seconds` apart.
    fn split(start: &Self, end: &Self, seconds: f64) -> Self::Split;
}

/// Reads /proc at the start of a window and again at its end.
pub struct Sampler<T: Ticks> {
    key: T::Key,
    start: T,
    started: Instant,
}

impl<T: Ticks> Sampler<T> {
    pub fn start(key: T::Key) -> Self {
        Sampler {
            key,
            start: T::read(key),
            started: Instant::now(),
        }
    }

    pub fn finish(&self) -> T::Split {
        let end = T::read(self.key);
        let window = self.started.elapsed().as_secs_f64();
        T::split(&self.start, &end, window)
    }
}

/// What the benchmarks read from a /proc stat line.
#[derive(Debug, PartialEq, Eq)]
pub struct Stat {
    pub name: String,
    pub parent: u32,
    /// utime + stime.
    pub used: u64,
    /// cutime + cstime: children waited for.
    pub children: u64,
}

/// A /proc stat line. The name is in parentheses and may itself hold
/// spaces or parentheses: split after the last `)`.
pub fn parse_stat(stat: &str) -> Option<Stat> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let name = stat[open + 1..close].to_owned();
    // Fields from the third on: state, ppid, ..., utime (14th), stime,
    // cutime, cstime (17th).
    let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
    let number = |i: usize| -> Option<u64> { fields.get(i)?.parse().ok() };
    Some(Stat {
        name,
        parent: fields.get(1)?.parse().ok()?,
        used: number(11)? + number(12)?,
        children: number(13)? + number(14)?,
    })
}

/// This process's own stat line.
pub fn own_stat() -> Option<Stat> {
    parse_stat(&std::fs::read_to_string("/proc/self/stat").ok()?)
}

/// (thread id, stat) of each thread of this process.
pub fn own_threads() -> Vec<(u32, Stat)> {
    numbered_stats("/proc/self/task")
}

/// (pid, stat) of every process on the machine.
pub fn processes() -> Vec<(u32, Stat)> {
    numbered_stats("/proc")
}

/// (number, stat) of each numbered entry of `dir` that has a stat file.
fn numbered_stats(dir: &str) -> Vec<(u32, Stat)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| {
            let id = entry.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(entry.path().join("stat")).ok()?;
            Some((id, parse_stat(&stat)?))
        })
        .collect()
}

/// (busy, idle) ticks of the whole machine, all cores, from /proc/stat.
pub fn machine_ticks() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = stat.lines().find(|l| l.starts_with("cpu ")) else {
        return (0, 0);
    };
    // user nice system idle iowait irq softirq steal (guest time is in user).
    let values: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .filter_map(|v| v.parse().ok())
        .collect();
    if values.len() < 8 {
        return (0, 0);
    }
    let idle = values[3] + values[4];
    let busy = values.iter().sum::<u64>() - idle;
    (busy, idle)
}

/// How many cores this process may use (2 when that cannot be told).
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_proc_stat_lines() {
        let stat =
            "4242 (tokio (w) x) S 4200 4242 1 0 -1 4194368 10 0 0 0 137 42 3 4 20 0 9 0 1 2 3";
        assert_eq!(
            parse_stat(stat),
            Some(Stat {
                name: "tokio (w) x".to_owned(),
                parent: 4200,
                used: 179,
                children: 7,
            })
        );
    }

    #[test]
    fn shares_of_one_core() {
        assert_eq!(share(300, 100, 2.0), 100.0);
        assert_eq!(share(100, 300, 2.0), 0.0);
    }
}

//! What the kernel says about processes, read from /proc: a server's
//! process tree (a root PID and all its descendants, which for Dovecot
//! are the master, its helpers, login and per-session pop3 processes),
//! its memory (RSS and PSS from `smaps_rollup`) and its CPU time, and the
//! load generator's own CPU time. Linux only; read-only.

use std::collections::HashMap;
use std::fs;

/// Clock ticks per second in /proc/<pid>/stat: USER_HZ, fixed at 100 in
/// the Linux ABI whatever the kernel's internal HZ.
const TICKS_PER_SECOND: f64 = 100.0;

/// The fields of /proc/<pid>/stat that we use.
struct Stat {
    ppid: u32,
    /// utime + stime + cutime + cstime: the process's own CPU and that of
    /// its children it has reaped, so that short-lived children (a
    /// Dovecot login process per connection) are still counted.
    ticks: u64,
}

fn read_stat(pid: u32) -> Option<Stat> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may hold spaces or ')'.
    let rest = &text[text.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_ascii_whitespace().collect();
    let num = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok());
    Some(Stat {
        ppid: num(1)? as u32,
        ticks: num(11)? + num(12)? + num(13)? + num(14)?,
    })
}

/// `root` and all its live descendants.
pub fn tree(root: u32) -> Vec<u32> {
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    if let Ok(dir) = fs::read_dir("/proc") {
        for entry in dir.flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
                continue;
            };
            if let Some(stat) = read_stat(pid) {
                children.entry(stat.ppid).or_default().push(pid);
            }
        }
    }
    let mut out = vec![root];
    let mut i = 0;
    while i < out.len() {
        if let Some(kids) = children.get(&out[i]) {
            out.extend(kids);
        }
        i += 1;
    }
    out
}

/// Memory of a set of processes, in KiB.
#[derive(Debug, Clone, Copy, Default)]
pub struct Memory {
    /// Resident set size, summed (counts shared pages once per process).
    pub rss_kib: u64,
    /// Proportional set size, summed: shared pages divided among sharers,
    /// the fair figure for a multi-process server.
    pub pss_kib: u64,
    /// How many processes were summed.
    pub processes: usize,
}

/// Sums RSS and PSS over the tree of `root`.
pub fn memory(root: u32) -> Memory {
    let mut total = Memory::default();
    for pid in tree(root) {
        let Ok(text) = fs::read_to_string(format!("/proc/{pid}/smaps_rollup")) else {
            continue;
        };
        total.processes += 1;
        for line in text.lines() {
            let kib = || {
                line.split_ascii_whitespace()
                    .nth(1)
                    .and_then(|w| w.parse::<u64>().ok())
                    .unwrap_or(0)
            };
            if line.starts_with("Rss:") {
                total.rss_kib += kib();
            } else if line.starts_with("Pss:") {
                total.pss_kib += kib();
            }
        }
    }
    total
}

/// RSS summed over `pids` from /proc/<pid>/statm, in KiB: cheaper than
/// `smaps_rollup`, for sampling often.
pub fn rss_kib(pids: &[u32]) -> u64 {
    // statm counts pages; 4 KiB on the machines this runs on.
    let page_kib = 4;
    pids.iter()
        .filter_map(|pid| fs::read_to_string(format!("/proc/{pid}/statm")).ok())
        .filter_map(|text| {
            text.split_ascii_whitespace()
                .nth(1)
                .and_then(|w| w.parse::<u64>().ok())
        })
        .map(|pages| pages * page_kib)
        .sum()
}

/// Anonymous resident memory summed over `pids`, in KiB: statm's resident
/// minus its file-backed shared pages. Unlike RSS it does not count the
/// shared libraries of a multi-process server once per process.
pub fn anon_rss_kib(pids: &[u32]) -> u64 {
    let page_kib = 4;
    pids.iter()
        .filter_map(|pid| fs::read_to_string(format!("/proc/{pid}/statm")).ok())
        .filter_map(|text| {
            let mut fields = text.split_ascii_whitespace().skip(1);
            let resident: u64 = fields.next()?.parse().ok()?;
            let shared: u64 = fields.next()?.parse().ok()?;
            Some(resident.saturating_sub(shared))
        })
        .map(|pages| pages * page_kib)
        .sum()
}

/// CPU seconds used so far by the tree of `root` (including reaped
/// children).
pub fn cpu_seconds(root: u32) -> f64 {
    let ticks: u64 = tree(root)
        .into_iter()
        .filter_map(read_stat)
        .map(|s| s.ticks)
        .sum();
    ticks as f64 / TICKS_PER_SECOND
}

/// CPU seconds used so far by this process (all threads).
pub fn own_cpu_seconds() -> f64 {
    read_stat(std::process::id())
        .map(|s| s.ticks as f64 / TICKS_PER_SECOND)
        .unwrap_or(0.0)
}

/// Jiffies since boot over all CPUs: (busy, total), from /proc/stat.
pub fn machine_ticks() -> (u64, u64) {
    let text = fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = text.lines().next() else {
        return (0, 0);
    };
    let n: Vec<u64> = line
        .split_ascii_whitespace()
        .skip(1)
        .filter_map(|w| w.parse().ok())
        .collect();
    let total: u64 = n.iter().take(8).sum();
    // idle and iowait are the 4th and 5th fields.
    let idle = n.get(3).copied().unwrap_or(0) + n.get(4).copied().unwrap_or(0);
    (total - idle, total)
}

/// The 1-minute load average.
pub fn load_average() -> f64 {
    fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|t| t.split_ascii_whitespace().next()?.parse().ok())
        .unwrap_or(0.0)
}

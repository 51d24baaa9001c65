//! What the process costs, from Linux's /proc (elsewhere these read as absent): resident
//! memory, and CPU time by thread, summed over threads of the same name.

use std::collections::BTreeMap;

/// `/proc` reports CPU times in USER_HZ ticks, which Linux fixes at 100 a second for
/// user space on every architecture it ships.
const USER_HZ: f64 = 100.0;

/// `VmRSS` and `VmHWM` (peak) of this process, in KiB.
pub fn rss_kib() -> (Option<u64>, Option<u64>) {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return (None, None);
    };
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// CPU seconds (user + system) so far of each live thread, by thread id: (name, seconds).
pub fn thread_cpu() -> BTreeMap<u32, (String, f64)> {
    let mut out = BTreeMap::new();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return out;
    };
    for task in tasks.flatten() {
        let Some(tid) = task.file_name().to_str().and_then(|s| s.parse().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
            continue;
        };
        // "tid (comm) state ppid ...": comm may hold spaces and parentheses, so split at
        // the last ')'. utime and stime are fields 14 and 15 (1-based).
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let comm = stat[open + 1..close].to_string();
        let rest: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        let ticks = |i: usize| rest.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        // `rest` starts at field 3 (state): field n is rest[n - 3].
        let seconds = (ticks(11) + ticks(12)) as f64 / USER_HZ;
        out.insert(tid, (comm, seconds));
    }
    out
}

/// CPU taken between two [`thread_cpu`] readings, by thread name: (name, threads, CPU
/// seconds), busiest first. Threads that ended in between are not counted.
pub fn cpu_between(
    before: &BTreeMap<u32, (String, f64)>,
    after: &BTreeMap<u32, (String, f64)>,
) -> Vec<(String, usize, f64)> {
    let mut by_name: BTreeMap<&str, (usize, f64)> = BTreeMap::new();
    for (tid, (name, s)) in after {
        let earlier = before.get(tid).map_or(0.0, |(_, b)| *b);
        let e = by_name.entry(name.as_str()).or_default();
        e.0 += 1;
        e.1 += (s - earlier).max(0.0);
    }
    let mut out: Vec<_> = by_name
        .into_iter()
        .map(|(n, (threads, s))| (n.to_string(), threads, s))
        .collect();
    out.sort_by(|a, b| b.2.total_cmp(&a.2).then_with(|| a.0.cmp(&b.0)));
    out
}

/// CPU seconds (user + system) the calling thread has taken so far.
pub fn this_thread_cpu() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").ok()?;
    let rest: Vec<&str> = stat[stat.rfind(')')? + 1..].split_whitespace().collect();
    let ticks = |i: usize| rest.get(i).and_then(|v| v.parse::<u64>().ok());
    Some((ticks(11)? + ticks(12)?) as f64 / USER_HZ)
}

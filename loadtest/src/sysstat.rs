//! Server-side accounting from /proc: CPU time and RSS of a process, kernel UDP drop counters.

use std::fs;

/// CPU seconds (user + system, all threads) a process has used so far.
///
/// Summed from each thread's /proc/PID/task/TID/schedstat (nanoseconds) when readable: the
/// tick-based utime + stime of /proc/PID/stat move in 10 ms steps, too coarse for a paced run
/// that keeps a server a few percent busy for a few seconds. (Threads that exit between two
/// samples drop out of the sum; servers keep theirs for their lifetime.)
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    schedstat_seconds(pid).or_else(|| {
        let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        parse_stat_cpu_ticks(&stat).map(|ticks| ticks as f64 / clock_ticks_per_second())
    })
}

fn schedstat_seconds(pid: u32) -> Option<f64> {
    let mut ns: u64 = 0;
    for entry in fs::read_dir(format!("/proc/{pid}/task")).ok()? {
        let path = entry.ok()?.path().join("schedstat");
        let text = fs::read_to_string(path).ok()?;
        ns += text.split_whitespace().next()?.parse::<u64>().ok()?;
    }
    Some(ns as f64 / 1e9)
}

/// utime + stime (fields 14 and 15) from a /proc/PID/stat line. The command name (field 2) may
/// hold spaces and parentheses, so fields are counted from the last ')'.
pub fn parse_stat_cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    // After ')': field 3 (state) is index 0, so utime (14) is index 11 and stime (15) index 12.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

/// Resident set size in kB (VmRSS).
pub fn rss_kb(pid: u32) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_status_rss_kb(&status)
}

pub fn parse_status_rss_kb(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The kernel's UDP counters that say packets were dropped (this network namespace, all sockets).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct UdpCounters {
    pub rcvbuf_errors: u64,
    pub sndbuf_errors: u64,
    pub in_errors: u64,
}

impl UdpCounters {
    pub fn read() -> Option<Self> {
        parse_snmp_udp(&fs::read_to_string("/proc/net/snmp").ok()?)
    }

    pub fn delta(&self, earlier: &Self) -> Self {
        Self {
            rcvbuf_errors: self.rcvbuf_errors.saturating_sub(earlier.rcvbuf_errors),
            sndbuf_errors: self.sndbuf_errors.saturating_sub(earlier.sndbuf_errors),
            in_errors: self.in_errors.saturating_sub(earlier.in_errors),
        }
    }
}

/// /proc/net/snmp has a header line and a value line per protocol; take the "Udp:" pair.
pub fn parse_snmp_udp(snmp: &str) -> Option<UdpCounters> {
    let mut udp = snmp.lines().filter(|l| l.starts_with("Udp:"));
    let names: Vec<&str> = udp.next()?.split_whitespace().skip(1).collect();
    let values: Vec<u64> = udp
        .next()?
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().unwrap_or(0))
        .collect();
    let get = |name: &str| {
        names
            .iter()
            .position(|n| *n == name)
            .and_then(|i| values.get(i).copied())
    };
    Some(UdpCounters {
        rcvbuf_errors: get("RcvbufErrors")?,
        sndbuf_errors: get("SndbufErrors").unwrap_or(0),
        in_errors: get("InErrors").unwrap_or(0),
    })
}

/// A before/after reading of one process.
#[derive(Debug, Clone, Copy)]
pub struct ProcessSample {
    pub cpu_seconds: Option<f64>,
    pub rss_kb: Option<u64>,
}

impl ProcessSample {
    pub fn take(pid: u32) -> Self {
        Self {
            cpu_seconds: cpu_seconds(pid),
            rss_kb: rss_kb(pid),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_with_odd_command_name() {
        let line =
            "1234 (a) b (c)) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 4 0 99 0 0";
        assert_eq!(parse_stat_cpu_ticks(line), Some(325));
    }

    #[test]
    fn own_process_has_cpu_and_rss() {
        let pid = std::process::id();
        assert!(cpu_seconds(pid).is_some());
        let ticks = fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| parse_stat_cpu_ticks(&s));
        assert!(ticks.is_some());
        assert!(rss_kb(pid).unwrap_or(0) > 0);
    }

    #[test]
    fn snmp_udp_line() {
        let snmp = "Ip: Forwarding DefaultTTL\nIp: 1 64\nUdp: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors InCsumErrors IgnoredMulti MemErrors\nUdp: 10 0 3 12 2 1 0 0 0\nUdpLite: InDatagrams\nUdpLite: 0\n";
        assert_eq!(
            parse_snmp_udp(snmp),
            Some(UdpCounters {
                rcvbuf_errors: 2,
                sndbuf_errors: 1,
                in_errors: 3
            })
        );
    }
}

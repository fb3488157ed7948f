//! What several benches share (`mod common;`): their knobs from the environment, medians in
//! milliseconds, and a process's memory figures from `/proc`.
// Each bench uses a part of this.
#![allow(dead_code)]

use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Median, min and max of a run's figures.
pub fn stats(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(f64::total_cmp);
    (v[v.len() / 2], v[0], v[v.len() - 1])
}

/// One result line: its name, the median and the range.
pub fn line(name: &str, v: Vec<f64>, unit: &str) {
    let (m, lo, hi) = stats(v);
    println!("    {name:<52} {m:>9.2} {unit}  ({lo:.2}–{hi:.2})");
}

/// A count from the environment variable `name`, or `default` when unset or not a number.
pub fn env_num(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The middle sample (the upper one of an even count).
pub fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// A kB figure from `/proc/PID/status` (VmRSS, VmHWM, RssAnon); panics when it is missing.
pub fn proc_status_kib(pid: u32, key: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no {key} in /proc/{pid}/status"))
}

/// Resets the peak RSS (VmHWM) of `pid` to its current RSS.
pub fn reset_peak(pid: u32) {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").expect("clear_refs");
}

/// What [`measure`] saw of one run.
pub struct Sample {
    pub wall: Duration,
    /// The peak RSS of the child and the children it waited for.
    pub max_rss_kib: i64,
}

/// Runs `cmd` to completion; its wall time and the peak RSS of the child and the children it
/// waited for (git clone's index-pack and ssh count for git). Panics with its stderr when it
/// fails.
// Reaped by wait4 below (std has no rusage), which clippy cannot see.
#[allow(clippy::zombie_processes)]
pub fn measure(cmd: &mut Command) -> Sample {
    let t0 = Instant::now();
    // BOSUN_BENCH_STDERR=FILE: the children's stderr appended there (with RUST_LOG, where
    // the time goes), not piped and shown only on failure.
    let stderr = match std::env::var_os("BOSUN_BENCH_STDERR") {
        Some(f) => Stdio::from(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(f)
                .expect("BOSUN_BENCH_STDERR"),
        ),
        None => Stdio::piped(),
    };
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .expect("spawn");
    let pid = child.id() as libc::pid_t;
    let mut status: libc::c_int = 0;
    // SAFETY: rusage is plain data that wait4 fills in; pid is our own child.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    let wall = t0.elapsed();
    assert_eq!(r, pid, "wait4");
    let st = std::process::ExitStatus::from_raw(status);
    if !st.success() {
        let mut err = String::new();
        if let Some(mut e) = child.stderr {
            let _ = std::io::Read::read_to_string(&mut e, &mut err);
        }
        panic!("{cmd:?} failed: {st}\n{err}");
    }
    Sample {
        wall,
        max_rss_kib: usage.ru_maxrss,
    }
}

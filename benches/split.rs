//! `circleci tests split` of 10,000 test names (target: under 50 ms by timings): the real
//! static in-job executable (`bosun::runtime::CIRCLECI_EXECUTABLE`) run as a process with the
//! names on stdin and 10,000 stored timings in its runtime directory — what a job's step pays.
//! Baseline in the same run: `sort` of the same names (a process reading, sorting and writing
//! the same text). Each of the 4 nodes' shares is checked: every test exactly once.
//!
//! `cargo bench --bench split` measures; without `--bench` among the arguments (as under
//! `cargo test --all-targets`) the binary only checks the split once.

mod common;
use common::{median, ms};

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const TESTS: usize = 10_000;
const NODES: usize = 4;

fn run(cmd: &mut Command, stdin: &[u8]) -> (Duration, String) {
    let t = Instant::now();
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin)
        .expect("write stdin");
    let out = child.wait_with_output().expect("wait");
    let took = t.elapsed();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (took, String::from_utf8_lossy(&out.stdout).into_owned())
}

fn split(exe: &Path, runtime: &Path, by: &str, index: usize, names: &[u8]) -> (Duration, String) {
    run(
        Command::new(exe)
            .args([
                "tests",
                "split",
                &format!("--split-by={by}"),
                &format!("--index={index}"),
                &format!("--total={NODES}"),
            ])
            .env("BOSUN_RUNTIME_DIR", runtime),
        names,
    )
}

fn main() {
    let measure = std::env::args().any(|a| a == "--bench");
    let dir = tempfile::tempdir().expect("tempdir");
    let runtime = dir.path();
    std::fs::create_dir(runtime.join("bin")).expect("bin");
    let exe = runtime.join("bin/circleci");
    std::fs::write(&exe, bosun::runtime::CIRCLECI_EXECUTABLE).expect("write circleci");
    std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).expect("chmod");

    let tests: Vec<String> = (0..TESTS)
        .map(|i| format!("spec/models/area_{}/model_{i}_spec.rb", i % 97))
        .collect();
    let names = tests.join("\n").into_bytes();
    // Timings as the agent writes them from stored JUnit results: skewed, a few slow tests.
    let mut timings = String::new();
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    for t in &tests {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let secs = (state % 1000) as f64 / 100.0 + if state % 50 == 0 { 30.0 } else { 0.0 };
        timings.push_str(&format!("{t}\t\t\t{secs}\n"));
    }
    std::fs::write(runtime.join("timings.tsv"), timings).expect("timings");

    // Every test exactly once over the nodes, for both ways of splitting.
    for by in ["timings", "name"] {
        let mut all: Vec<String> = (0..NODES)
            .flat_map(|i| {
                split(&exe, runtime, by, i, &names)
                    .1
                    .lines()
                    .map(str::to_owned)
                    .collect::<Vec<_>>()
            })
            .collect();
        all.sort();
        let mut want = tests.clone();
        want.sort();
        assert_eq!(all, want, "--split-by={by}: not every test exactly once");
    }
    if !measure {
        println!(
            "split: {TESTS} tests over {NODES} nodes, each once (run with --bench to measure)"
        );
        return;
    }

    let rounds: usize = std::env::var("BOSUN_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(21);
    let (mut by_timings, mut by_name, mut sort) = (Vec::new(), Vec::new(), Vec::new());
    for r in 0..rounds {
        // Interleaved, so the machine's noise falls on all three alike.
        by_timings.push(split(&exe, runtime, "timings", r % NODES, &names).0);
        by_name.push(split(&exe, runtime, "name", r % NODES, &names).0);
        sort.push(run(&mut Command::new("sort"), &names).0);
    }
    let range = |v: &[Duration]| {
        let lo = v.iter().min().copied().unwrap_or_default();
        let hi = v.iter().max().copied().unwrap_or_default();
        format!("{:.1}–{:.1} ms", ms(lo), ms(hi))
    };
    let (t, n, s) = (
        median(by_timings.clone()),
        median(by_name.clone()),
        median(sort.clone()),
    );
    println!("tests split of {TESTS} names, {rounds} rounds (median, range):");
    println!(
        "  --split-by=timings  {:>6.1} ms  ({})",
        ms(t),
        range(&by_timings)
    );
    println!(
        "  --split-by=name     {:>6.1} ms  ({})",
        ms(n),
        range(&by_name)
    );
    println!(
        "  sort (baseline)     {:>6.1} ms  ({})",
        ms(s),
        range(&sort)
    );
    println!(
        "  ratio timings/sort {:.2}, name/sort {:.2}; target: timings < 50 ms: {}",
        ms(t) / ms(s),
        ms(n) / ms(s),
        if ms(t) < 50.0 { "met" } else { "MISSED" }
    );
}

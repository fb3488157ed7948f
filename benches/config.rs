//! Compile-time and peak-memory benchmark of the config compiler on a generated ~2,000-line
//! config: 50 parameterised commands (some calling others), 20 jobs using them, and a workflow
//! with a 3×3×3 matrix. Targets: median compile < 20 ms, peak allocation < 20 MB.
//!
//! `cargo bench --bench config` measures; without `--bench` among the arguments (as under
//! `cargo test --all-targets`) the binary only checks that the config compiles.

use std::alloc::{GlobalAlloc, Layout, System};
use std::fmt::Write;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::{Duration, Instant};

struct Counting;

static CURRENT: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(l) };
        if !p.is_null() {
            let now = CURRENT.fetch_add(l.size(), Relaxed) + l.size();
            PEAK.fetch_max(now, Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        unsafe { System.dealloc(p, l) };
        CURRENT.fetch_sub(l.size(), Relaxed);
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        let q = unsafe { System.realloc(p, l, new) };
        if !q.is_null() {
            if new >= l.size() {
                let now = CURRENT.fetch_add(new - l.size(), Relaxed) + (new - l.size());
                PEAK.fetch_max(now, Relaxed);
            } else {
                CURRENT.fetch_sub(l.size() - new, Relaxed);
            }
        }
        q
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

const COMMANDS: usize = 50;
const JOBS: usize = 20;

/// The generated config. Commands `c0`…`c49` take a string, a boolean and an integer; every
/// fifth command calls the next one; jobs call a handful of commands each.
fn config() -> String {
    let mut s = String::from(
        "version: 2.1\n\nparameters:\n  deploy:\n    type: boolean\n    default: false\n\n",
    );
    s.push_str("executors:\n  base:\n    parameters:\n      tag:\n        type: string\n        default: current\n    docker:\n      - image: cimg/base:<< parameters.tag >>\n    environment:\n      LANG: C.UTF-8\n    working_directory: ~/project\n\n");
    s.push_str("commands:\n");
    for i in 0..COMMANDS {
        let _ = write!(
            s,
            "  c{i}:\n    description: command {i}\n    parameters:\n      target:\n        type: string\n        default: t{i}\n      verbose:\n        type: boolean\n        default: false\n      retries:\n        type: integer\n        default: 1\n    steps:\n      - run:\n          name: step {i} << parameters.target >>\n          command: |\n            echo \"running {i} for << parameters.target >>\"\n            for n in $(seq << parameters.retries >>); do ./task-{i} --n $n; done\n          environment:\n            VERBOSE: << parameters.verbose >>\n      - when:\n          condition: << parameters.verbose >>\n          steps:\n            - run: echo verbose {i}\n"
        );
        if i % 5 == 0 && i + 1 < COMMANDS {
            let _ = write!(
                s,
                "      - c{}:\n          target: from-{i}\n          retries: 2\n",
                i + 1
            );
        }
    }
    s.push_str("\njobs:\n");
    for j in 0..JOBS {
        let _ = write!(
            s,
            "  j{j}:\n    parameters:\n      os:\n        type: string\n        default: linux\n      py:\n        type: string\n        default: \"3.12\"\n      db:\n        type: enum\n        enum: [pg, mysql, sqlite]\n        default: pg\n    executor:\n      name: base\n      tag: << parameters.py >>\n    environment:\n      OS: << parameters.os >>\n      DB: << parameters.db >>\n    steps:\n      - checkout\n      - restore_cache:\n          keys:\n            - deps-{j}-{{{{ checksum \"lock\" }}}}\n            - deps-{j}-\n"
        );
        for k in 0..5 {
            let c = (j * 7 + k * 3) % COMMANDS;
            let _ = write!(
                s,
                "      - c{c}:\n          target: j{j}-<< parameters.os >>\n          verbose: {}\n",
                k % 2 == 0
            );
        }
        let _ = write!(
            s,
            "      - save_cache:\n          key: deps-{j}-{{{{ checksum \"lock\" }}}}\n          paths: [~/.cache]\n      - store_test_results:\n          path: results\n"
        );
    }
    s.push_str("\nworkflows:\n  main:\n    jobs:\n");
    for j in 0..JOBS {
        if j == 0 {
            s.push_str("      - j0:\n          matrix:\n            parameters:\n              os: [linux, alpine, debian]\n              py: [\"3.10\", \"3.11\", \"3.12\"]\n              db: [pg, mysql, sqlite]\n");
        } else {
            let _ = write!(
                s,
                "      - j{j}:\n          requires: [{}]\n          filters:\n            branches:\n              ignore: /wip-.*/\n",
                if j == 1 { "j0".to_owned() } else { format!("j{}", j - 1) }
            );
        }
    }
    s
}

/// CPU time of the whole process (the compiler runs on its own thread).
fn process_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into `ts`.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

fn compile(text: &str) -> bosun::config::CompiledConfig {
    bosun::config::compile(text, "bench.yml", &bosun::config::CompileOptions::default())
        .unwrap_or_else(|e| panic!("generated config does not compile: {e:?}"))
}

fn main() {
    let text = config();
    let lines = text.lines().count();
    let compiled = compile(&text);
    let jobs: usize = compiled.workflows.iter().map(|w| w.jobs.len()).sum();
    assert_eq!(jobs, 27 + JOBS - 1, "matrix 3×3×3 plus the other jobs");
    if !std::env::args().any(|a| a == "--bench") {
        println!("config bench: {lines}-line config compiles ({jobs} workflow jobs); pass --bench to measure");
        return;
    }
    let runs = 60;
    let mut cpu: Vec<Duration> = Vec::with_capacity(runs);
    let mut times: Vec<Duration> = (0..runs)
        .map(|_| {
            let c = process_cpu();
            let t = Instant::now();
            std::hint::black_box(compile(std::hint::black_box(&text)));
            let wall = t.elapsed();
            cpu.push(process_cpu().saturating_sub(c));
            wall
        })
        .collect();
    times.sort();
    cpu.sort();
    let median = times[runs / 2];
    // Peak memory of one compile, above what was live before it (the text itself).
    let base = CURRENT.load(Relaxed);
    PEAK.store(base, Relaxed);
    std::hint::black_box(compile(&text));
    let peak = PEAK.load(Relaxed) - base;

    let ms = median.as_secs_f64() * 1e3;
    let mb = peak as f64 / 1e6;
    println!("config bench: {lines} lines, {COMMANDS} commands, {JOBS} jobs, {jobs} workflow jobs");
    println!(
        "compile time  median of {runs}: {ms:8.2} ms  (min {:.2}, max {:.2})  target < 20 ms  ratio to target {:.3}",
        times[0].as_secs_f64() * 1e3,
        times[runs - 1].as_secs_f64() * 1e3,
        ms / 20.0
    );
    println!(
        "compile CPU   median of {runs}: {:8.2} ms  (less sensitive to other load on the machine)  ratio to target {:.3}",
        cpu[runs / 2].as_secs_f64() * 1e3,
        cpu[runs / 2].as_secs_f64() * 1e3 / 20.0
    );
    println!(
        "peak memory   one compile:   {mb:8.2} MB  target < 20 MB  ratio to target {:.3}",
        mb / 20.0
    );
    real_configs();
}

/// CPU time per compile (median, min, max of `runs`) of `text` with `opts`.
fn time_compile(text: &str, opts: &bosun::config::CompileOptions, runs: usize) -> [f64; 3] {
    let mut cpu: Vec<f64> = (0..runs)
        .map(|_| {
            let c = process_cpu();
            let r = bosun::config::compile(std::hint::black_box(text), "real.yml", opts);
            std::hint::black_box(r.is_ok());
            process_cpu().saturating_sub(c).as_secs_f64() * 1e3
        })
        .collect();
    cpu.sort_by(f64::total_cmp);
    [cpu[runs / 2], cpu[0], cpu[runs - 1]]
}

/// The largest real config of `../shared/corpus` that compiles, and a config using every job
/// of the largest vendored orb (`../shared/orbs`), loaded from disk on every compile as
/// `--orb-dir` does.
fn real_configs() {
    let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared");
    let none = bosun::config::CompileOptions::default();
    let largest = std::fs::read_dir(root.join("corpus"))
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "yml"))
        .filter_map(|e| Some((e.path(), std::fs::read_to_string(e.path()).ok()?)))
        .filter(|(_, t)| bosun::config::compile(t, "real.yml", &none).is_ok())
        .max_by_key(|(_, t)| t.len());
    if let Some((path, text)) = largest {
        let [med, min, max] = time_compile(&text, &none, 30);
        println!(
            "largest real config  {} ({} lines): CPU median {med:.2} ms (min {min:.2}, max {max:.2})",
            path.file_name().map(|f| f.to_string_lossy()).unwrap_or_default(),
            text.lines().count()
        );
    }
    let loader = bosun::config::OrbDir(root.join("orbs"));
    let with = bosun::config::CompileOptions {
        orbs: Some(&loader),
        ..Default::default()
    };
    let orb = "circleci/docker@4.0.1";
    let Ok(orb_text) = std::fs::read_to_string(root.join("orbs/circleci/docker@4.0.1.yml")) else {
        return;
    };
    let Ok(orb_root) = bosun::config::yaml::parse(&orb_text) else {
        return;
    };
    let mut cfg = format!("version: 2.1\norbs:\n  docker: {orb}\nworkflows:\n  main:\n    jobs:\n");
    for (k, def) in orb_root.get("jobs").and_then(|j| j.as_map()).unwrap_or(&[]) {
        let Some(name) = k.as_str() else { continue };
        let required: Vec<String> = def
            .get("parameters")
            .and_then(|p| p.as_map())
            .unwrap_or(&[])
            .iter()
            .filter(|(_, d)| d.get("default").is_none())
            .filter_map(|(p, _)| Some(format!("{}: x", p.as_str()?)))
            .collect();
        let _ = writeln!(cfg, "      - docker/{name}: {{{}}}", required.join(", "));
    }
    if let Err(e) = bosun::config::compile(&cfg, "real.yml", &with) {
        println!("orb config does not compile: {e:?}");
        return;
    }
    let [med, min, max] = time_compile(&cfg, &with, 30);
    println!(
        "every job of {orb} ({} lines of orb, + circleci/jq@2.2 it imports): CPU median {med:.2} ms (min {min:.2}, max {max:.2})",
        orb_text.lines().count()
    );
}

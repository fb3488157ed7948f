//! The in-job `circleci` / `circleci-agent` command (std only; see this crate's `Cargo.toml`).
//!
//! It lives in the job's runtime directory (`/tmp/.bosun-<job>/bin/`, put there by the agent's
//! one setup upload) and talks to the agent only through that directory: `step halt` leaves a
//! `halt` file the agent looks for after the step; `tests split` reads `timings.tsv`, which the
//! agent wrote from the job's earlier stored test results. Nothing it does reaches another job.
//! The same executable is also the container's step runner ([`step_runner`]), run by the main
//! process with a private argument, and the SFTP server of the SSH gateway's sessions
//! ([`sftp`]), with another.

pub mod glob;
pub mod main_process;
pub mod sftp;
pub mod split;
pub mod step_runner;
pub mod subst;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// The file `step halt` leaves in the runtime directory.
pub const HALT_FILE: &str = "halt";
/// The timings the agent provides in the runtime directory.
pub const TIMINGS_FILE: &str = "timings.tsv";
/// Overrides where the runtime directory is (tests; by default the executable's `../`).
pub const RUNTIME_DIR_ENV: &str = "BOSUN_RUNTIME_DIR";

const USAGE: &str = "usage: circleci <command>
  step halt                       end the job successfully after this step
  tests glob PATTERN...           files matching CircleCI glob patterns (*, **, ?, [..], {a,b})
  tests split [FILE...]           this node's share of the tests named on stdin (or in FILEs)
      --split-by=name|filesize|timings   (default: name)
      --timings-type=filename|classname|testname|autodetect   (default: autodetect)
      --time-default=DURATION     weight of a test without timing (default: mean of the known)
      --index=N --total=N         (default: $CIRCLE_NODE_INDEX, $CIRCLE_NODE_TOTAL)
      --show-counts               print how many tests this node got to stderr
  tests run --command=CMD [split options]   split stdin's tests, feed this node's to CMD's stdin
  env subst [TEXT]                substitute $VARS in TEXT (or stdin)
Other commands go to the next `circleci` on PATH, if the image has one.";

/// Run the command; its exit status.
pub fn main(args: &[String]) -> i32 {
    let prog = args
        .first()
        .map(|a| a.rsplit('/').next().unwrap_or(a).to_owned())
        .unwrap_or_else(|| "circleci".to_owned());
    let rest: Vec<&str> = args.iter().skip(1).map(String::as_str).collect();
    let result = match rest.as_slice() {
        ["step", "halt", ..] => halt(),
        ["tests", "glob", patterns @ ..] => tests_glob(patterns),
        ["tests", "split", opts @ ..] => tests_split(opts),
        ["tests", "run", opts @ ..] => tests_run(opts),
        ["env", "subst", text @ ..] => env_subst(text),
        [step_runner::ARG] => Ok(serve_steps()),
        [step_runner::ARG, runtime] => {
            set_runtime_dir(PathBuf::from(runtime));
            Ok(serve_steps())
        }
        [main_process::ARG] => Ok(main_process::run()),
        [sftp::ARG] => Ok(sftp::run()),
        [] | ["help" | "--help" | "-h", ..] => {
            println!("{USAGE}");
            Ok(0)
        }
        _ => forward(&prog, args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("{prog}: {e}");
            1
        }
    }
}

/// The job container's main process hands over to the step runner (see [`step_runner`]).
fn serve_steps() -> i32 {
    use std::os::fd::AsFd;
    step_runner::not_dumpable();
    // Frames go out whole, unbuffered: a dup of stdout as a plain file, not the line writer.
    let out: Box<dyn Write + Send> = match std::io::stdout().as_fd().try_clone_to_owned() {
        Ok(fd) => Box::new(std::fs::File::from(fd)),
        Err(_) => Box::new(std::io::stdout()),
    };
    step_runner::serve(std::io::stdin(), out)
}

/// The runtime directory the main process learnt from the agent (see [`main_process`]).
static RUNTIME_DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

fn set_runtime_dir(dir: PathBuf) {
    let _ = RUNTIME_DIR.set(dir);
}

/// The variable every step has that names the runtime directory (CircleCI's task data).
const TASK_DATA_ENV: &str = "CIRCLE_INTERNAL_TASK_DATA";

fn runtime_dir() -> Result<PathBuf, String> {
    if let Some(d) = std::env::var_os(RUNTIME_DIR_ENV) {
        return Ok(PathBuf::from(d));
    }
    if let Some(d) = RUNTIME_DIR.get() {
        return Ok(d.clone());
    }
    let exe = std::env::current_exe().map_err(|e| format!("cannot find where I am: {e}"))?;
    // Mounted from the agent's host (a local engine), it lives outside every job's runtime
    // directory; `bin/circleci` there links to it, and steps are told where that is.
    if exe == Path::new(main_process::MOUNTED_PATH) {
        return std::env::var_os(TASK_DATA_ENV)
            .map(PathBuf::from)
            .ok_or_else(|| {
                format!("cannot find the job's runtime directory (no ${TASK_DATA_ENV})")
            });
    }
    exe.parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .ok_or_else(|| "cannot find the job's runtime directory".to_owned())
}

fn halt() -> Result<i32, String> {
    let path = runtime_dir()?.join(HALT_FILE);
    std::fs::write(&path, b"halt\n")
        .map_err(|e| format!("cannot record the halt ({}): {e}", path.display()))?;
    Ok(0)
}

fn tests_glob(patterns: &[&str]) -> Result<i32, String> {
    if patterns.is_empty() {
        return Err("tests glob needs at least one pattern".to_owned());
    }
    let cwd = std::env::current_dir().map_err(|e| e.to_string())?;
    let mut seen = std::collections::HashSet::new();
    let mut out = std::io::stdout().lock();
    for p in patterns {
        for f in glob::glob(&cwd, p) {
            if seen.insert(f.clone()) {
                let _ = writeln!(out, "{f}");
            }
        }
    }
    Ok(0)
}

/// Parsed `tests split` / `tests run` options.
#[derive(Debug)]
struct SplitOpts {
    split_by: String,
    timings_type: split::TimingsType,
    time_default: Option<f64>,
    index: usize,
    total: usize,
    show_counts: bool,
    command: Option<String>,
    files: Vec<String>,
}

fn parse_split_opts(opts: &[&str]) -> Result<SplitOpts, String> {
    let env_num = |k: &str| std::env::var(k).ok().and_then(|v| v.trim().parse().ok());
    let mut o = SplitOpts {
        split_by: "name".to_owned(),
        timings_type: split::TimingsType::Autodetect,
        time_default: None,
        index: env_num("CIRCLE_NODE_INDEX").unwrap_or(0),
        total: env_num("CIRCLE_NODE_TOTAL").unwrap_or(1),
        show_counts: false,
        command: None,
        files: Vec::new(),
    };
    let mut i = 0;
    while i < opts.len() {
        let arg = opts[i];
        let (key, inline) = match arg.split_once('=') {
            Some((k, v)) if k.starts_with("--") => (k, Some(v.to_owned())),
            _ => (arg, None),
        };
        let mut value = || -> Result<String, String> {
            if let Some(v) = &inline {
                return Ok(v.clone());
            }
            i += 1;
            opts.get(i)
                .map(|v| (*v).to_owned())
                .ok_or_else(|| format!("{key} needs a value"))
        };
        match key {
            "--split-by" => {
                let v = value()?;
                if !["name", "filesize", "timings"].contains(&v.as_str()) {
                    return Err(format!(
                        "--split-by={v}: expected name, filesize or timings"
                    ));
                }
                o.split_by = v;
            }
            "--timings-type" => {
                let v = value()?;
                o.timings_type = split::TimingsType::parse(&v).ok_or_else(|| {
                    format!(
                        "--timings-type={v}: expected filename, classname, testname or autodetect"
                    )
                })?;
            }
            "--time-default" => {
                let v = value()?;
                o.time_default = Some(
                    split::parse_duration(&v)
                        .ok_or_else(|| format!("--time-default={v}: not a duration"))?,
                );
            }
            "--index" => {
                let v = value()?;
                o.index = v
                    .parse()
                    .map_err(|_| format!("--index={v}: not a number"))?;
            }
            "--total" => {
                let v = value()?;
                o.total = v
                    .parse()
                    .map_err(|_| format!("--total={v}: not a number"))?;
            }
            "--command" => o.command = Some(value()?),
            "--show-counts" => o.show_counts = true,
            "--verbose" => {}
            k if k.starts_with("--") => return Err(format!("unknown option {k}")),
            f => o.files.push(f.to_owned()),
        }
        i += 1;
    }
    if o.total == 0 {
        return Err("--total must be at least 1".to_owned());
    }
    if o.index >= o.total {
        return Err(format!(
            "--index={} is not below --total={}",
            o.index, o.total
        ));
    }
    Ok(o)
}

/// Whitespace-separated test names from the given files, or stdin.
fn read_tests(files: &[String]) -> Result<Vec<String>, String> {
    let mut text = String::new();
    if files.is_empty() {
        std::io::stdin()
            .read_to_string(&mut text)
            .map_err(|e| format!("reading stdin: {e}"))?;
    } else {
        for f in files {
            text.push_str(&std::fs::read_to_string(f).map_err(|e| format!("reading {f}: {e}"))?);
            text.push('\n');
        }
    }
    Ok(text.split_whitespace().map(str::to_owned).collect())
}

/// This node's tests, with what to tell the user on stderr.
fn choose(o: &SplitOpts, tests: &[String]) -> (Vec<String>, Vec<String>) {
    match o.split_by.as_str() {
        "timings" => {
            let timings = runtime_dir()
                .ok()
                .and_then(|d| std::fs::read_to_string(d.join(TIMINGS_FILE)).ok())
                .map(|t| split::parse_timings(&t))
                .unwrap_or_default();
            let s = split::split_by_timings(
                tests,
                &timings,
                o.timings_type,
                o.time_default,
                o.index,
                o.total,
            );
            (s.tests, s.notices)
        }
        "filesize" => {
            let mut notices = Vec::new();
            let weighted: Vec<(String, f64)> = tests
                .iter()
                .map(|t| {
                    let size = std::fs::metadata(t).map(|m| m.len()).unwrap_or_else(|_| {
                        notices.push(format!("{t}: no such file; it weighs 0 bytes"));
                        0
                    });
                    (t.clone(), size as f64)
                })
                .collect();
            let mut nodes = split::split_by_weight(&weighted, o.total);
            (std::mem::take(&mut nodes[o.index]), notices)
        }
        _ => (split::split_by_name(tests, o.index, o.total), Vec::new()),
    }
}

fn tests_split(opts: &[&str]) -> Result<i32, String> {
    let o = parse_split_opts(opts)?;
    let tests = read_tests(&o.files)?;
    let (mine, notices) = choose(&o, &tests);
    for n in notices {
        eprintln!("{n}");
    }
    if o.show_counts {
        eprintln!(
            "node {} of {}: {} of {} tests",
            o.index,
            o.total,
            mine.len(),
            tests.len()
        );
    }
    let mut out = std::io::stdout().lock();
    for t in mine {
        let _ = writeln!(out, "{t}");
    }
    Ok(0)
}

fn tests_run(opts: &[&str]) -> Result<i32, String> {
    let o = parse_split_opts(opts)?;
    let command = o
        .command
        .clone()
        .ok_or_else(|| "tests run needs --command=CMD".to_owned())?;
    let tests = read_tests(&o.files)?;
    let (mine, notices) = choose(&o, &tests);
    for n in notices {
        eprintln!("{n}");
    }
    if mine.is_empty() {
        eprintln!(
            "No tests for node {} of {}: nothing to run",
            o.index, o.total
        );
        return Ok(0);
    }
    let mut child = std::process::Command::new("/bin/sh")
        .args(["-c", &command])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("starting `{command}`: {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        let mut text = mine.join("\n");
        text.push('\n');
        let _ = stdin.write_all(text.as_bytes());
    }
    let status = child.wait().map_err(|e| e.to_string())?;
    Ok(status.code().unwrap_or(1))
}

fn env_subst(text: &[&str]) -> Result<i32, String> {
    let input = if text.is_empty() {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .map_err(|e| format!("reading stdin: {e}"))?;
        s
    } else {
        text.join(" ")
    };
    let out = subst::subst(&input, &|k| std::env::var(k).ok());
    print!("{out}");
    let _ = std::io::stdout().flush();
    Ok(0)
}

/// A command this one does not know: the image's own `circleci` (the full CLI), if any.
fn forward(prog: &str, args: &[String]) -> Result<i32, String> {
    let me = std::env::current_exe().ok();
    let dirs = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&dirs) {
        let candidate = dir.join("circleci");
        let Ok(meta) = std::fs::metadata(&candidate) else {
            continue;
        };
        let same = match (&me, std::fs::canonicalize(&candidate)) {
            (Some(me), Ok(c)) => *me == c,
            _ => false,
        };
        if same || !meta.is_file() {
            continue;
        }
        use std::os::unix::process::CommandExt;
        let err = std::process::Command::new(&candidate)
            .args(&args[1..])
            .exec();
        return Err(format!("running {}: {err}", candidate.display()));
    }
    Err(format!(
        "`{}` is not a command the job's {prog} knows, and the image has no other `circleci`\n{USAGE}",
        args[1..].join(" ")
    ))
}

//! A throwaway project directory (a git repository with `.circleci/config.yml`) and the
//! `bosun` binary run against it, with its JSON events parsed.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub struct Project {
    pub dir: tempfile::TempDir,
    /// The local store (caches, workspaces, artifacts) this project's runs use.
    pub store: tempfile::TempDir,
    /// `bosun.job` label of the job's container.
    pub job_id: String,
}

pub struct Outcome {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
    /// stdout parsed as JSON lines (empty unless `--json`).
    pub events: Vec<serde_json::Value>,
}

impl Outcome {
    /// Every step's output (`--json`), in order.
    pub fn output(&self) -> String {
        self.events
            .iter()
            .filter(|e| e["event"] == "output")
            .filter_map(|e| e["data"].as_str())
            .collect()
    }

    /// The status of the step called `name` (`""` if it never finished).
    pub fn step_status(&self, name: &str) -> String {
        self.events
            .iter()
            .filter(|e| e["event"] == "step_finished" && e["name"] == name)
            .filter_map(|e| e["status"].as_str())
            .next()
            .unwrap_or("")
            .to_owned()
    }

    /// The first event of type `kind`.
    pub fn event(&self, kind: &str) -> Option<&serde_json::Value> {
        self.events.iter().find(|e| e["event"] == kind)
    }
}

/// The output of one step (`"step"` in the `--json` events), of the job itself or, with
/// `Some(job)`, of that job in a workflow (or that `parallelism` node's job).
pub fn step_output(events: &[serde_json::Value], job: Option<&str>, step: u64) -> String {
    events
        .iter()
        .filter_map(|e| match job {
            Some(j) if e["event"] == "job" && e["job"] == j => Some(&e["inner"]),
            None if e["event"] != "job" => Some(e),
            _ => None,
        })
        .filter(|e| e["event"] == "output" && e["step"] == step)
        .filter_map(|e| e["data"].as_str())
        .collect()
}

pub fn bosun_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_bosun"))
}

/// The git CLI with a fixed identity and no host configuration.
pub fn git_in(dir: &Path) -> Command {
    let mut c = Command::new("git");
    c.current_dir(dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .args([
            "-c",
            "user.name=Bosun Test",
            "-c",
            "user.email=test@bosun.invalid",
        ])
        .stdin(Stdio::null());
    c
}

impl Project {
    /// A repository with `config` committed as `.circleci/config.yml`.
    pub fn new(config: &str) -> Project {
        let dir = tempfile::Builder::new()
            .prefix("bosun-project-")
            .tempdir()
            .expect("tempdir");
        std::fs::create_dir_all(dir.path().join(".circleci")).expect("mkdir");
        std::fs::write(dir.path().join(".circleci/config.yml"), config).expect("write config");
        super::run(git_in(dir.path()).args(["init", "-q", "-b", "main"]));
        super::run(git_in(dir.path()).args(["add", "-A"]));
        super::run(git_in(dir.path()).args(["commit", "-q", "-m", "config"]));
        Project {
            dir,
            store: tempfile::Builder::new()
                .prefix("bosun-store-")
                .tempdir()
                .expect("tempdir"),
            job_id: super::new_run_id(),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// This project's artifacts of its job in the store: `projects/<scope>/artifacts/<job>`
    /// (the store keeps each project apart; this is the only project using it).
    pub fn artifacts_dir(&self) -> PathBuf {
        let projects = self.store.path().join("projects");
        let found: Vec<PathBuf> = std::fs::read_dir(&projects)
            .map(|d| {
                d.flatten()
                    .map(|e| e.path().join("artifacts").join(&self.job_id))
                    .filter(|p| p.is_dir())
                    .collect()
            })
            .unwrap_or_default();
        assert_eq!(
            found.len(),
            1,
            "artifacts of {} in {projects:?}",
            self.job_id
        );
        found.into_iter().next().unwrap_or_default()
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(bosun_bin());
        c.current_dir(self.path())
            .arg("execute")
            .args(["--job-id", &self.job_id])
            .env("BOSUN_STORE", self.store.path())
            // The project's own mirror cache: nothing of the tester's ~/.cache, and every
            // test starts cold unless it runs twice.
            .env("BOSUN_CACHE_DIR", self.store.path().join("cache"))
            .args(args)
            .stdin(Stdio::null());
        c
    }

    pub fn execute(&self, args: &[&str]) -> Outcome {
        self.execute_env(args, &[])
    }

    pub fn execute_env(&self, args: &[&str], env: &[(&str, &str)]) -> Outcome {
        let mut c = self.command(args);
        for (k, v) in env {
            c.env(k, v);
        }
        let out = c.output().expect("run bosun");
        outcome(
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Start `bosun execute` in the background, reading its stdout as it comes.
    pub fn spawn(&self, args: &[&str]) -> Running {
        spawn_running(self.command(args))
    }

    /// Containers (any state) labelled with this project's job id.
    pub fn containers(&self) -> Vec<String> {
        // Workflow jobs are labelled JOB_ID-NAME.
        let mut all = containers_labelled("bosun.job", &self.job_id);
        all.extend(
            containers_labelled("bosun.agent", "execute")
                .into_iter()
                .filter(|c| {
                    let out = Command::new("docker")
                        .args(["inspect", "-f", "{{index .Config.Labels \"bosun.job\"}}", c])
                        .output()
                        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
                        .unwrap_or_default();
                    out.starts_with(&format!("{}-", self.job_id))
                }),
        );
        all
    }

    pub fn assert_no_container_left(&self) {
        let left = self.containers();
        assert!(
            left.is_empty(),
            "containers left behind for job {}: {left:?}",
            self.job_id
        );
    }
}

impl Drop for Project {
    fn drop(&mut self) {
        super::cleanup_label("bosun.job", &self.job_id);
    }
}

/// Start `c` (a `bosun` command) in the background, reading its stdout as it comes.
pub fn spawn_running(mut c: Command) -> Running {
    c.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = c.spawn().expect("spawn bosun");
    let stdout = child.stdout.take().expect("stdout");
    let lines = Arc::new(Mutex::new(String::new()));
    let sink = Arc::clone(&lines);
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Ok(mut s) = sink.lock() {
                s.push_str(&line);
                s.push('\n');
            }
        }
    });
    Running {
        child,
        lines,
        reader: Some(reader),
    }
}

pub fn containers_labelled(label: &str, value: &str) -> Vec<String> {
    let out = Command::new("docker")
        .args(["ps", "-aq", "--filter", &format!("label={label}={value}")])
        .stdin(Stdio::null())
        .output()
        .expect("docker ps");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

fn outcome(code: i32, stdout: String, stderr: String) -> Outcome {
    let events = stdout
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    Outcome {
        code,
        stdout,
        stderr,
        events,
    }
}

pub struct Running {
    child: Child,
    lines: Arc<Mutex<String>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Running {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn stdout_so_far(&self) -> String {
        self.lines.lock().map(|s| s.clone()).unwrap_or_default()
    }

    pub fn wait_for_output(&self, needle: &str, timeout: Duration) {
        let t0 = Instant::now();
        while t0.elapsed() < timeout {
            if self.stdout_so_far().contains(needle) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "`{needle}` did not appear within {timeout:?}; output so far:\n{}",
            self.stdout_so_far()
        );
    }

    pub fn signal(&self, sig: &str) {
        super::run(Command::new("kill").args([&format!("-{sig}"), &self.pid().to_string()]));
    }

    pub fn finish(mut self, timeout: Duration) -> Outcome {
        let t0 = Instant::now();
        let status = loop {
            match self.child.try_wait() {
                Ok(Some(s)) => break s,
                Ok(None) if t0.elapsed() < timeout => std::thread::sleep(Duration::from_millis(50)),
                _ => {
                    let _ = self.child.kill();
                    panic!(
                        "bosun did not exit within {timeout:?}:\n{}",
                        self.stdout_so_far()
                    );
                }
            }
        };
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        let mut stderr = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            let _ = std::io::Read::read_to_string(&mut e, &mut stderr);
        }
        outcome(status.code().unwrap_or(-1), self.stdout_so_far(), stderr)
    }
}

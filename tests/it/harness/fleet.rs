//! A real coordinator and real agents, as processes of this machine:
//!
//! ```ignore
//! let c = Coordinator::start();                       // or Coordinator::builder()…start()
//! c.cli(&["project", "add", …]);
//! let a = c.agent(&rig, "one").labels(&["one"]).start();
//! ```
//!
//! [`AgentBuilder::start`] writes the agent's `agent.toml` (its own state, spool, store and
//! work directories under the coordinator's temporary directory, the rig's network and
//! `vcs_hosts`, fast heartbeats and claims), starts `bosun agent` and returns once the
//! coordinator has registered it. Dropping an [`Agent`] kills it and removes the containers it
//! labelled with its id (a killed agent cannot clean up after a running job); dropping the
//! [`Coordinator`] kills it and removes its directory. An agent's log is printed when it drops
//! during a panic, so a failing test shows what the agent saw.

use super::Rig;
use bosun::coordinator::store::Store;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// `bosun coordinator serve` on loopback with a data directory of its own.
pub struct Coordinator {
    /// The data directory (`<dir>/coordinator`).
    pub data: PathBuf,
    /// `host:port` it listens on.
    pub addr: String,
    child: Child,
    /// The `serve` arguments besides `--listen` and `--data`, for [`Coordinator::restart`].
    args: Vec<String>,
    token_file: OnceLock<PathBuf>,
    /// Last: removed after the process is gone.
    dir: tempfile::TempDir,
}

/// How to start a [`Coordinator`]: `--lease-secs 10` unless [`Self::no_defaults`].
pub struct CoordinatorBuilder {
    listen: String,
    args: Vec<String>,
}

impl Coordinator {
    /// A coordinator on a free loopback port with `--lease-secs 10`.
    pub fn start() -> Coordinator {
        Coordinator::builder().start()
    }

    pub fn builder() -> CoordinatorBuilder {
        CoordinatorBuilder {
            listen: "127.0.0.1:0".to_owned(),
            args: vec!["--lease-secs".into(), "10".into()],
        }
    }

    /// A temporary directory for the test's own files (the data directory and the agents'
    /// directories are inside it).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `bosun coordinator ARGS… --data DATA`, panicking on failure; trimmed stdout.
    pub fn cli(&self, args: &[&str]) -> String {
        super::coordinator_cli(&self.data, args)
    }

    /// Kills the server (SIGKILL, as a crash would); its data directory stays.
    /// What it logged so far (its stderr).
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(super::coordinator_log(&self.data)).unwrap_or_default()
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts the server again (killing it first if it still runs) on the same address, data
    /// directory and arguments, so agents and URLs made for it still reach it.
    pub fn restart(&mut self) {
        self.kill();
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        let (child, addr) = super::spawn_coordinator(&self.data, &self.addr, &args);
        assert_eq!(addr, self.addr, "the restarted coordinator's address");
        self.child = child;
    }

    /// A file holding a registration token, made on first use.
    pub fn token_file(&self) -> &Path {
        self.token_file.get_or_init(|| {
            let token = self.cli(&["token"]);
            let file = self.dir.path().join("registration-token");
            std::fs::write(&file, format!("{token}\n")).expect("token file");
            file
        })
    }

    /// An agent of this coordinator named `name`, its jobs on the rig's network.
    pub fn agent<'a>(&'a self, rig: &'a Rig, name: &str) -> AgentBuilder<'a> {
        AgentBuilder {
            coordinator: self,
            rig,
            name: name.to_owned(),
            labels: Vec::new(),
            resource_class: None,
            ssh_gateway: "off".to_owned(),
            extra: String::new(),
        }
    }
}

impl CoordinatorBuilder {
    /// Listen on `addr` instead of a free port (e.g. when an argument must name it).
    pub fn listen(mut self, addr: &str) -> Self {
        addr.clone_into(&mut self.listen);
        self
    }

    /// Further `serve` arguments.
    pub fn args(mut self, args: &[&str]) -> Self {
        self.args.extend(args.iter().map(|s| s.to_string()));
        self
    }

    /// `--vcs-host` for each of the rig's names, so the coordinator reaches the stand-in.
    pub fn vcs_hosts(mut self, rig: &Rig) -> Self {
        for m in rig.vcs_host_mapping() {
            self.args.push("--vcs-host".into());
            self.args.push(m);
        }
        self
    }

    /// Leave out the default `--lease-secs 10`.
    pub fn no_defaults(mut self) -> Self {
        self.args.clear();
        self
    }

    pub fn start(self) -> Coordinator {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("coordinator");
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        let (child, addr) = super::spawn_coordinator(&data, &self.listen, &args);
        Coordinator {
            data,
            addr,
            child,
            args: self.args,
            token_file: OnceLock::new(),
            dir,
        }
    }
}

impl Drop for Coordinator {
    fn drop(&mut self) {
        self.kill();
    }
}

/// How to start an [`Agent`]: concurrency 1, heartbeat 1 s, claim wait 2 s, kill grace 1 s,
/// no SSH gateway unless [`Self::ssh_gateway`], resource class `docker` and no labels unless set.
pub struct AgentBuilder<'a> {
    coordinator: &'a Coordinator,
    rig: &'a Rig,
    name: String,
    labels: Vec<String>,
    resource_class: Option<String>,
    ssh_gateway: String,
    extra: String,
}

impl AgentBuilder<'_> {
    /// Run the SSH gateway on `listen` (`HOST:PORT`; off by default).
    pub fn ssh_gateway(mut self, listen: &str) -> Self {
        self.ssh_gateway = listen.to_owned();
        self
    }

    pub fn labels(mut self, labels: &[&str]) -> Self {
        self.labels = labels.iter().map(|s| s.to_string()).collect();
        self
    }

    pub fn resource_class(mut self, class: &str) -> Self {
        self.resource_class = Some(class.to_owned());
        self
    }

    /// More `agent.toml` lines, as written (`key = value`).
    pub fn toml(mut self, lines: &str) -> Self {
        self.extra.push_str(lines);
        self.extra.push('\n');
        self
    }

    /// Start it and wait until the coordinator has registered it (30 s at most).
    pub fn start(self) -> Agent {
        let c = self.coordinator;
        let root = c.dir().join(&self.name);
        std::fs::create_dir_all(&root).expect("agent dir");
        let labels: Vec<String> = self.labels.iter().map(|l| format!("{l:?}")).collect();
        let mut toml = agent_toml(&c.url(), c.token_file(), &self.name, &root, self.rig);
        toml.push_str(&format!(
            "labels = [{labels}]\nheartbeat_secs = 1\nssh_gateway_listen = {ssh:?}\n",
            labels = labels.join(", "),
            ssh = self.ssh_gateway,
        ));
        if let Some(class) = &self.resource_class {
            toml.push_str(&format!("resource_class = {class:?}\n"));
        }
        toml.push_str(&self.extra);
        let config = root.join("agent.toml");
        std::fs::write(&config, toml).expect("agent config");
        let log = root.join("agent.log");
        // A fresh log for each start (spawn_agent appends).
        std::fs::File::create(&log).expect("agent log");
        let child = spawn_agent(&config, &log, &[]);
        let mut agent = Agent {
            name: self.name.clone(),
            id: String::new(),
            store: root.join("store"),
            log,
            child,
        };
        agent.id = agent.wait_registered(c);
        agent
    }
}

/// The `agent.toml` lines every test agent has: `coordinator_url`, the registration token
/// file, its name, its state, spool, store and work directories under `root`, jobs on the
/// rig's network reaching the stand-in (`vcs_hosts`), one job at a time, a claim wait of 2 s
/// and a kill grace of 1 s. Callers add their own lines.
pub fn agent_toml(url: &str, token_file: &Path, name: &str, root: &Path, rig: &Rig) -> String {
    let vcs: Vec<String> = rig
        .vcs_host_mapping()
        .iter()
        .map(|m| format!("{m:?}"))
        .collect();
    format!(
        "coordinator_url = \"{url}\"\nregistration_token_file = {tf:?}\nname = {name:?}\n\
         state_dir = {sd:?}\nspool_dir = {sp:?}\nstore_dir = {st:?}\nwork_dir = {wd:?}\n\
         network = {net:?}\nvcs_hosts = [{vcs}]\nconcurrency = 1\nclaim_wait_secs = 2\n\
         kill_grace_secs = 1\n",
        tf = token_file,
        sd = root.join("state"),
        sp = root.join("spool"),
        st = root.join("store"),
        wd = root.join("work"),
        net = rig.network,
        vcs = vcs.join(", "),
    )
}

/// `bosun agent --config CONFIG` with `env` set (later pairs win), its log (stderr) appended
/// to `log`. It does not inherit the test runner's service-manager variables: an agent of a
/// test must not notify the runner's systemd or log to its journal.
pub fn spawn_agent(config: &Path, log: &Path, env: &[(&str, &str)]) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("agent log");
    Command::new(super::bosun_bin())
        .args(["agent", "--config"])
        .arg(config)
        .env_remove("NOTIFY_SOCKET")
        .env_remove("WATCHDOG_USEC")
        .env_remove("JOURNAL_STREAM")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start the agent")
}

/// A running `bosun agent`.
pub struct Agent {
    pub name: String,
    /// The id the coordinator gave it (its containers carry `bosun.agent=<id>`).
    pub id: String,
    /// Its local store (`store_dir`).
    pub store: PathBuf,
    pub log: PathBuf,
    child: Child,
}

impl Agent {
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn wait_registered(&mut self, c: &Coordinator) -> String {
        let t0 = Instant::now();
        loop {
            // Registration writes the agents row; a name registered twice takes the newest.
            let found = Store::open(&c.data)
                .ok()
                .and_then(|s| s.list_agents().ok())
                .and_then(|agents| {
                    agents
                        .into_iter()
                        .filter(|(_, name, _, _, revoked)| *name == self.name && !revoked)
                        .map(|(id, ..)| id)
                        .next_back()
                });
            if let Some(id) = found {
                return id;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "agent {} exited ({status}) before registering:\n{}",
                    self.name,
                    self.log_text()
                );
            }
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "agent {} did not register in 30 s:\n{}",
                self.name,
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        super::cleanup_killed_agent(&self.id);
        if std::thread::panicking() {
            eprintln!("---- {} ----\n{}", self.log.display(), self.log_text());
        }
    }
}

//! The real test rig shared by every integration test (`mod harness;`).
//!
//! - images: `bosun/base`, `bosun/nobash`, `bosun/gitserver`, `bosun/systemd`, built from Debian
//!   packages by `images/build.sh` (no registry is reachable here);
//! - [`Rig`]: a Bitbucket stand-in (real OpenSSH sshd, bare repos, per-key
//!   access like Bitbucket's) on a Docker network of its own, reachable from
//!   job containers on that network as `bitbucket.org` / `ssh.bitbucket.org`
//!   and from the host on `127.0.0.1:<port>`;
//! - host-side git helpers to fill its repositories.
//!
//! Everything a rig creates in Docker carries the label `bosun.test=<run_id>`
//! and is removed when the [`Rig`] drops (see [`cleanup_label`]). Each test
//! makes its own `Rig`, so tests run in parallel safely.
//!
//! This is scaffolding that shells out to the `docker`, `git` and `ssh*` CLIs
//! on purpose: it must not share code (or bugs) with the agent under test.

pub mod bitbucket;
pub mod bitbucket_api;
mod browser;
mod corpus;
mod fleet;
mod net;
pub mod postgres;
mod project;
mod s3;
mod services;
mod systemd;
mod tls;
mod wait;
pub use browser::*;
pub use corpus::*;
pub use fleet::*;
pub use net::*;
pub use project::*;
pub use s3::*;
pub use services::*;
pub use systemd::*;
pub use tls::*;
pub use wait::*;

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Label key put on every container and network a rig creates.
pub const LABEL: &str = "bosun.test";

/// The names the stand-in answers to inside its network.
pub const VCS_HOSTS: [&str; 2] = ["bitbucket.org", "ssh.bitbucket.org"];

/// uid/gid of the non-root `circleci` user in `bosun/base`.
pub const CIRCLECI_UID: u32 = 3434;

/// The crate's root (where `images/` lives).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Builds the test images once per test process. `images/build.sh` is
/// idempotent and takes a lock, so concurrent test binaries are fine.
pub fn ensure_images() {
    images();
}

/// name → exact tag (`bosun/base:<hash>`), as printed by `images/build.sh`.
fn images() -> &'static [(String, String)] {
    static BUILT: OnceLock<Result<Vec<(String, String)>, String>> = OnceLock::new();
    let result = BUILT.get_or_init(|| {
        let script = repo_root().join("images/build.sh");
        let started = Instant::now();
        let out = Command::new("bash")
            .arg(&script)
            .arg("all")
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
        if !out.status.success() {
            return Err(format!(
                "{} all failed ({}):\n{}{}",
                script.display(),
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        eprintln!(
            "[harness] images ready in {:.1}s",
            started.elapsed().as_secs_f64()
        );
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| {
                let name = l.strip_prefix("bosun/")?.split(':').next()?;
                Some((name.to_string(), l.trim().to_string()))
            })
            .collect())
    });
    match result {
        Ok(tags) => tags,
        Err(e) => panic!("{e}"),
    }
}

/// The exact tag of a test image built by this tree's `images/build.sh`,
/// e.g. `image("base")` → `bosun/base:1a2b3c4d5e6f`. Not `:latest`: other
/// work trees sharing the Docker engine may have retagged that.
pub fn image(name: &str) -> String {
    images()
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, tag)| tag.clone())
        .unwrap_or_else(|| panic!("images/build.sh built no image named {name:?}"))
}

/// A run id unique across processes and threads, short enough for names.
pub fn new_run_id() -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "t{}-{}-{:05x}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed),
        nanos & 0xfffff
    )
}

/// The lower-case hex SHA-256 of `b`, as the protocol and the blob store name contents.
pub fn sha256(b: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(b)
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

/// Runs a command, panicking with everything it printed if it fails.
/// Returns stdout.
pub fn run(cmd: &mut Command) -> String {
    let out = output(cmd);
    if !out.status.success() {
        panic!(
            "command failed ({}): {:?}\nstdout:\n{}\nstderr:\n{}",
            out.status,
            cmd,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs a command to completion (no stdin) and returns its output, whatever
/// its exit status. Panics only if it cannot be started.
pub fn output(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"))
}

/// The names in `dir`, sorted (none when it does not exist).
pub fn dir_entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// `docker ARGS...`, panicking on failure; returns trimmed stdout.
pub fn docker(args: &[&str]) -> String {
    run(Command::new("docker").args(args)).trim().to_string()
}

/// Removes what a just-killed agent left: everything labelled with its id, twice. Its
/// ready-container pool refills after every job, so the kill often lands with a create or
/// start still in the engine's hands, which the engine finishes afterwards; a second look
/// 400 ms later finds that one (the agent's own start-up sweep would, in production).
pub fn cleanup_killed_agent(agent_id: &str) {
    if agent_id.is_empty() {
        return;
    }
    cleanup_label(bosun::executor::LABEL_AGENT, agent_id);
    std::thread::sleep(std::time::Duration::from_millis(400));
    cleanup_label(bosun::executor::LABEL_AGENT, agent_id);
}

/// Removes every container and network labelled `label=value`. Best effort:
/// used from `Drop`, so it never panics.
pub fn cleanup_label(label: &str, value: &str) {
    let filter = format!("label={label}={value}");
    let list = |args: &[&str]| -> Vec<String> {
        Command::new("docker")
            .args(args)
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .split_whitespace()
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default()
    };
    let quiet = |args: Vec<String>| {
        let _ = Command::new("docker")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    };
    let containers = list(&["ps", "-aq", "--filter", &filter]);
    if !containers.is_empty() {
        quiet(
            ["rm", "-f", "-v"]
                .iter()
                .map(|s| s.to_string())
                .chain(containers)
                .collect(),
        );
    }
    let networks = list(&["network", "ls", "-q", "--filter", &filter]);
    if !networks.is_empty() {
        quiet(
            ["network", "rm"]
                .iter()
                .map(|s| s.to_string())
                .chain(networks)
                .collect(),
        );
    }
    let volumes = list(&["volume", "ls", "-q", "--filter", &filter]);
    if !volumes.is_empty() {
        quiet(
            ["volume", "rm", "-f"]
                .iter()
                .map(|s| s.to_string())
                .chain(volumes)
                .collect(),
        );
    }
}

/// An ed25519 key pair made with `ssh-keygen -N ''`.
#[derive(Clone, Debug)]
pub struct Key {
    pub private_path: PathBuf,
    /// `ssh-ed25519 AAAA... comment`
    pub public: String,
    /// OpenSSH private key text (what CircleCI would hand the agent).
    pub private_text: String,
}

/// Host-side git environment that ignores the user's and the system's git
/// config, with a fixed identity.
#[derive(Clone, Debug)]
struct GitEnv {
    home: PathBuf,
}

impl GitEnv {
    fn new(home: PathBuf) -> GitEnv {
        fs::create_dir_all(&home).unwrap();
        fs::write(
            home.join(".gitconfig"),
            "[user]\n\tname = Bosun Test\n\temail = test@bosun.invalid\n\
             [init]\n\tdefaultBranch = main\n\
             [protocol \"file\"]\n\tallow = always\n\
             [safe]\n\tdirectory = *\n\
             [commit]\n\tgpgsign = false\n\
             [tag]\n\tgpgsign = false\n\
             [advice]\n\tdetachedHead = false\n",
        )
        .unwrap();
        GitEnv { home }
    }

    fn vars(&self) -> Vec<(String, String)> {
        vec![
            ("HOME".into(), self.home.display().to_string()),
            ("GIT_CONFIG_NOSYSTEM".into(), "1".into()),
            (
                "GIT_CONFIG_GLOBAL".into(),
                self.home.join(".gitconfig").display().to_string(),
            ),
            ("GIT_TERMINAL_PROMPT".into(), "0".into()),
        ]
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new("git");
        // A test run from inside a git hook would otherwise act on the wrong repo.
        for var in [
            "GIT_DIR",
            "GIT_WORK_TREE",
            "GIT_INDEX_FILE",
            "GIT_SSH",
            "GIT_SSH_COMMAND",
        ] {
            cmd.env_remove(var);
        }
        cmd.envs(self.vars());
        cmd
    }
}

/// A Bitbucket stand-in: the `bosun/gitserver` container on its own network.
///
/// Host layout under `dir`: `srv/` (mounted at `/srv/bitbucket`: `repos/`,
/// `authorized_keys`), `keys/`, `home/` (git's HOME), `work/` (work repos),
/// `known_hosts`.
pub struct Rig {
    pub run_id: String,
    pub network: String,
    pub container: String,
    pub port: u16,
    pub dir: tempfile::TempDir,
    host_keys: Vec<String>,
    git: GitEnv,
    counter: AtomicUsize,
    authorized_keys: Mutex<()>,
}

impl Rig {
    /// Starts the stand-in and waits until it answers SSH.
    pub fn start() -> Rig {
        ensure_images();
        let run_id = new_run_id();
        let dir = tempfile::Builder::new()
            .prefix("bosun-rig-")
            .tempdir()
            .expect("tempdir");
        let srv = dir.path().join("srv");
        fs::create_dir_all(srv.join("repos")).unwrap();
        fs::create_dir_all(dir.path().join("keys")).unwrap();
        fs::create_dir_all(dir.path().join("work")).unwrap();
        // The container's git user has its own uid: it must read everything
        // here and write into the repositories.
        chmod(&srv, 0o755);
        chmod(&srv.join("repos"), 0o777);
        fs::write(srv.join("authorized_keys"), "").unwrap();
        chmod(&srv.join("authorized_keys"), 0o644);

        let git = GitEnv::new(dir.path().join("home"));
        // Built before anything exists in Docker so that Drop cleans up after
        // a failed start too.
        let mut rig = Rig {
            network: format!("bosun-test-{run_id}"),
            container: String::new(),
            run_id,
            port: 0,
            dir,
            host_keys: Vec::new(),
            git,
            counter: AtomicUsize::new(0),
            authorized_keys: Mutex::new(()),
        };
        let label = format!("{LABEL}={}", rig.run_id);
        docker(&["network", "create", "--label", &label, &rig.network]);
        let mount = format!("{}:/srv/bitbucket", srv.display());
        let name = format!("bosun-bitbucket-{}", rig.run_id);
        rig.container = docker(&[
            "run",
            "-d",
            "--name",
            &name,
            "--label",
            &label,
            "--network",
            &rig.network,
            "--network-alias",
            VCS_HOSTS[0],
            "--network-alias",
            VCS_HOSTS[1],
            "-p",
            "127.0.0.1::22",
            "-v",
            &mount,
            &image("gitserver"),
        ]);
        let published = docker(&["port", &rig.container, "22/tcp"]);
        rig.port = published
            .lines()
            .find_map(|l| l.strip_prefix("127.0.0.1:"))
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or_else(|| panic!("unexpected `docker port` output: {published:?}"));
        rig.wait_ready();
        rig.host_keys = docker(&[
            "exec",
            &rig.container,
            "sh",
            "-c",
            "cat /etc/ssh/ssh_host_*_key.pub",
        ])
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            Some(format!("{} {}", f.next()?, f.next()?))
        })
        .collect();
        assert!(!rig.host_keys.is_empty(), "stand-in has no host keys");
        fs::write(rig.known_hosts_file(), rig.host_key_lines()).unwrap();
        rig
    }

    /// Polls with ssh-keyscan: the port is published (docker-proxy accepts)
    /// before sshd listens, so a TCP connect alone proves nothing.
    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let out = Command::new("ssh-keyscan")
                .args([
                    "-T",
                    "2",
                    "-t",
                    "ed25519",
                    "-p",
                    &self.port.to_string(),
                    "127.0.0.1",
                ])
                .stdin(Stdio::null())
                .output()
                .expect("ssh-keyscan (openssh-client) is needed on the host");
            if out.status.success() && !out.stdout.is_empty() {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "Bitbucket stand-in not ready after 30s on port {}; logs:\n{}",
                    self.port,
                    self.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The stand-in's sshd log (`LogLevel VERBOSE`: accepted key fingerprints,
    /// refusals).
    pub fn logs(&self) -> String {
        let out = output(Command::new("docker").args(["logs", &self.container]));
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }

    /// The directory mounted at /srv/bitbucket.
    pub fn srv_dir(&self) -> PathBuf {
        self.dir.path().join("srv")
    }

    /// known_hosts lines for every host key type, for both real names.
    pub fn host_key_lines(&self) -> String {
        self.host_key_lines_for(&VCS_HOSTS)
    }

    /// known_hosts lines for every host key type under the given names
    /// (e.g. `"[127.0.0.1]:PORT"`).
    pub fn host_key_lines_for(&self, names: &[&str]) -> String {
        let names = names.join(",");
        self.host_keys
            .iter()
            .map(|k| format!("{names} {k}\n"))
            .collect()
    }

    /// A file holding [`Rig::host_key_lines`].
    pub fn known_hosts_file(&self) -> PathBuf {
        self.dir.path().join("known_hosts")
    }

    /// The agent's VCS host → address mapping for this rig.
    pub fn vcs_host_mapping(&self) -> Vec<String> {
        vec![
            format!("ssh.bitbucket.org=127.0.0.1:{}", self.port),
            format!("bitbucket.org=127.0.0.1:{}", self.port),
        ]
    }

    /// The URL the host-side git uses for a repo, e.g.
    /// `ssh://git@127.0.0.1:PORT/acme/widget.git`.
    pub fn ssh_url(&self, slug: &str) -> String {
        format!("ssh://git@127.0.0.1:{}/{slug}.git", self.port)
    }

    /// Host path of `repos/<slug>.git` (whether or not it exists).
    pub fn repo_path(&self, slug: &str) -> PathBuf {
        self.srv_dir().join("repos").join(format!("{slug}.git"))
    }

    /// Creates the bare repository `repos/<slug>.git` (if missing).
    pub fn create_repo(&self, slug: &str) -> PathBuf {
        let (ws, name) = slug
            .split_once('/')
            .unwrap_or_else(|| panic!("slug must be workspace/repo: {slug}"));
        assert!(
            !ws.is_empty() && !name.is_empty() && !name.contains('/'),
            "slug must be workspace/repo: {slug}"
        );
        let path = self.repo_path(slug);
        if path.exists() {
            return path;
        }
        let ws_dir = path.parent().unwrap();
        fs::create_dir_all(ws_dir).unwrap();
        chmod(ws_dir, 0o755);
        // --shared=0777: objects and refs written by the host (as whoever
        // runs the tests) and by the container's git user stay writable by both.
        run(self
            .git
            .command()
            .args(["init", "-q", "--bare", "--shared=0777", "-b", "main"])
            .arg(&path));
        chmod(&path, 0o777);
        path
    }

    /// A working repository whose `origin` is the bare repo's host path
    /// (created if missing); commit into it and push by file path.
    pub fn work_repo(&self, slug: &str) -> WorkRepo {
        let bare = self.create_repo(slug);
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let path = self
            .dir
            .path()
            .join("work")
            .join(format!("{}-{n}", slug.replace('/', "_")));
        fs::create_dir_all(&path).unwrap();
        let repo = WorkRepo {
            path,
            slug: slug.to_string(),
            rig_repos: self.srv_dir().join("repos"),
            git: self.git.clone(),
        };
        repo.git(&["init", "-q", "-b", "main"]);
        repo.git(&["remote", "add", "origin", &bare.display().to_string()]);
        repo
    }

    fn new_key(&self, comment: &str) -> Key {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let private_path = self.dir.path().join("keys").join(format!("id_{n}"));
        run(Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", comment, "-f"])
            .arg(&private_path));
        let public = fs::read_to_string(private_path.with_extension("pub"))
            .unwrap()
            .trim()
            .to_string();
        let private_text = fs::read_to_string(&private_path).unwrap();
        Key {
            private_path,
            public,
            private_text,
        }
    }

    fn authorize(&self, key: &Key, grant: &str) {
        let line = format!(
            "command=\"/usr/local/bin/bb-serve {grant}\",no-port-forwarding,\
             no-X11-forwarding,no-agent-forwarding,no-pty {}\n",
            key.public
        );
        let _guard = self.authorized_keys.lock().unwrap();
        fs::OpenOptions::new()
            .append(true)
            .open(self.srv_dir().join("authorized_keys"))
            .and_then(|mut f| f.write_all(line.as_bytes()))
            .expect("append to authorized_keys");
    }

    /// A user key: read/write on every repository of these workspaces.
    pub fn user_key(&self, workspaces: &[&str]) -> Key {
        assert!(!workspaces.is_empty());
        let key = self.new_key(&format!("user:{}", workspaces.join(",")));
        self.authorize(&key, &format!("user {}", workspaces.join(",")));
        key
    }

    /// A deploy (access) key: read-only on one repository.
    pub fn deploy_key(&self, slug: &str) -> Key {
        let key = self.new_key(&format!("deploy:{slug}"));
        self.authorize(&key, &format!("deploy {slug}"));
        key
    }

    /// A key the stand-in has never heard of.
    pub fn unknown_key(&self) -> Key {
        self.new_key("unknown")
    }

    /// The ssh command line for host-side clients: the key only, host key
    /// checked under the real name, no prompts, nothing from ~/.ssh.
    pub fn ssh_command(&self, key: &Key) -> String {
        format!(
            "ssh -F /dev/null -p {} -i {} -o IdentitiesOnly=yes -o IdentityAgent=none \
             -o UserKnownHostsFile={} -o GlobalKnownHostsFile=/dev/null \
             -o HostKeyAlias=ssh.bitbucket.org -o StrictHostKeyChecking=yes \
             -o BatchMode=yes -o ConnectTimeout=10",
            self.port,
            key.private_path.display(),
            self.known_hosts_file().display()
        )
    }

    /// Environment for the host `git` CLI talking to this rig with `key`
    /// (use with [`Rig::ssh_url`]). Includes the isolated git config.
    pub fn git_ssh_env(&self, key: &Key) -> Vec<(String, String)> {
        let mut vars = self.git.vars();
        vars.push(("GIT_SSH_COMMAND".into(), self.ssh_command(key)));
        vars
    }

    /// A host `git` command with the isolated config and, if given, `key`.
    pub fn git(&self, key: Option<&Key>) -> Command {
        let mut cmd = self.git.command();
        if let Some(key) = key {
            cmd.envs(self.git_ssh_env(key));
        }
        cmd
    }

    /// A long-running job-like container on the rig's network
    /// (`docker run -d --init ... IMAGE sleep infinity`), labelled with the
    /// rig's run id so it is removed with the rig.
    pub fn job_container(&self, image: &str) -> String {
        docker(&[
            "run",
            "-d",
            "--init",
            "--label",
            &format!("{LABEL}={}", self.run_id),
            "--network",
            &self.network,
            image,
            "sleep",
            "infinity",
        ])
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        cleanup_label(LABEL, &self.run_id);
    }
}

/// `docker exec [-u USER] CONTAINER sh -c SCRIPT`.
pub fn exec(container: &str, user: Option<&str>, script: &str) -> Output {
    let mut cmd = Command::new("docker");
    cmd.arg("exec");
    if let Some(user) = user {
        cmd.args(["-u", user]);
    }
    output(cmd.args([container, "sh", "-c", script]))
}

/// Puts one file into a running container with the given owner and mode,
/// through `docker cp -` (the archive API keeps tar headers' uid/gid/mode).
/// `dest_dir` must exist in the container.
pub fn copy_into(
    container: &str,
    dest_dir: &str,
    name: &str,
    content: &[u8],
    uid: u32,
    gid: u32,
    mode: u32,
) {
    let stage = tempfile::tempdir().unwrap();
    let file = stage.path().join(name);
    fs::write(&file, content).unwrap();
    chmod(&file, mode);
    run(Command::new("tar")
        .args([
            "--numeric-owner",
            "--owner",
            &uid.to_string(),
            "--group",
            &gid.to_string(),
        ])
        .args(["-cf", "archive.tar.tmp", name])
        .current_dir(stage.path()));
    let archive = fs::File::open(stage.path().join("archive.tar.tmp")).unwrap();
    let out = Command::new("docker")
        .args(["cp", "-", &format!("{container}:{dest_dir}")])
        .stdin(archive)
        .output()
        .expect("docker cp");
    assert!(
        out.status.success(),
        "docker cp into {container}:{dest_dir} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A non-bare working repository whose `origin` is a rig repo's host path.
pub struct WorkRepo {
    path: PathBuf,
    slug: String,
    rig_repos: PathBuf,
    git: GitEnv,
}

impl WorkRepo {
    /// Runs git in this repo, panicking on failure; returns trimmed stdout.
    pub fn git(&self, args: &[&str]) -> String {
        run(self.git.command().current_dir(&self.path).args(args))
            .trim()
            .to_string()
    }

    /// Writes a file (parent directories created).
    pub fn write(&self, rel: &str, content: &str) {
        let file = self.path.join(rel);
        fs::create_dir_all(file.parent().unwrap()).unwrap();
        fs::write(file, content).unwrap();
    }

    /// Stages everything and commits (empty commits allowed); returns the SHA.
    pub fn commit(&self, msg: &str) -> String {
        self.git(&["add", "-A"]);
        self.git(&["commit", "-q", "--allow-empty", "-m", msg]);
        self.head()
    }

    pub fn head(&self) -> String {
        self.git(&["rev-parse", "HEAD"])
    }

    /// Lightweight tag at HEAD.
    pub fn tag(&self, name: &str) {
        self.git(&["tag", name]);
    }

    /// Annotated tag at HEAD.
    pub fn tag_annotated(&self, name: &str, msg: &str) {
        self.git(&["tag", "-a", name, "-m", msg]);
    }

    /// Creates (or resets) branch `name` at HEAD and switches to it, so the
    /// next commits land on it.
    pub fn branch(&self, name: &str) {
        self.git(&["checkout", "-q", "-B", name]);
    }

    /// Switches to an existing branch.
    pub fn checkout(&self, name: &str) {
        self.git(&["checkout", "-q", name]);
    }

    /// `git push origin REFSPEC` (by file path: no SSH involved).
    pub fn push(&self, refspec: &str) {
        self.git(&["push", "-q", "origin", refspec]);
    }

    /// Adds a submodule at `path` whose .gitmodules URL is `url` exactly as
    /// given (`../lib.git`, `git@bitbucket.org:acme/lib.git`, ...), pinned to
    /// the HEAD of the rig repo that URL names. Commit afterwards.
    pub fn add_submodule(&self, url: &str, path: &str) {
        let slug = resolve_slug(&self.slug, url);
        let bare = self.rig_repos.join(format!("{slug}.git"));
        let sha = run(self.git.command().arg("--git-dir").arg(&bare).args([
            "rev-parse",
            "--verify",
            "HEAD^{commit}",
        ]))
        .trim()
        .to_string();
        self.add_submodule_at(url, path, &sha);
    }

    /// Adds a submodule gitlink `path` → `sha` with .gitmodules URL `url`,
    /// written by hand so the URL stays exactly as given.
    pub fn add_submodule_at(&self, url: &str, path: &str, sha: &str) {
        let key = format!("submodule.{path}");
        self.git(&["config", "-f", ".gitmodules", &format!("{key}.path"), path]);
        self.git(&["config", "-f", ".gitmodules", &format!("{key}.url"), url]);
        self.git(&[
            "update-index",
            "--add",
            "--cacheinfo",
            &format!("160000,{sha},{path}"),
        ]);
        // An uninitialised submodule is an empty directory; without it the
        // next `git add -A` would stage the gitlink's deletion.
        fs::create_dir_all(self.path.join(path)).unwrap();
        self.git(&["add", ".gitmodules"]);
    }
}

/// The rig slug a submodule URL names. Relative URLs resolve against the
/// superproject's own slug, as git resolves them against its remote URL.
pub fn resolve_slug(own_slug: &str, url: &str) -> String {
    let trimmed = |s: &str| {
        s.trim_start_matches('/')
            .trim_end_matches('/')
            .trim_end_matches(".git")
            .to_string()
    };
    if url.starts_with("../") || url.starts_with("./") {
        let mut parts: Vec<&str> = own_slug.split('/').collect();
        let mut rest = url;
        loop {
            if let Some(r) = rest.strip_prefix("../") {
                parts.pop();
                rest = r;
            } else if let Some(r) = rest.strip_prefix("./") {
                rest = r;
            } else {
                break;
            }
        }
        parts.push(rest);
        return trimmed(&parts.join("/"));
    }
    if let Some((_, after_scheme)) = url.split_once("://") {
        // ssh://git@host[:port]/ws/repo.git
        let path = after_scheme.split_once('/').map(|(_, p)| p).unwrap_or("");
        return trimmed(path);
    }
    if let Some((_, path)) = url.split_once(':') {
        // scp-like git@host:ws/repo.git
        return trimmed(path);
    }
    trimmed(url)
}

fn chmod(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {:o} {}: {e}", mode, path.display()));
}

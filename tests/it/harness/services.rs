//! The project's own servers as real processes: `bosun coordinator serve` on loopback.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

/// A child process killed (and reaped) when the test lets go of it, a failed assertion
/// included.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `bosun coordinator project add` for the stand-in's repository `slug`, with a new deploy
/// key for it and the stand-in's host keys (then `extra` arguments, e.g. `--secret-env`);
/// returns a registration token for agents.
pub fn add_stand_in_project(data: &Path, rig: &super::Rig, slug: &str, extra: &[&str]) -> String {
    let deploy = rig.deploy_key(slug);
    let known_hosts = rig.known_hosts_file();
    let clone_url = format!("git@bitbucket.org:{slug}.git");
    let mut args = vec![
        "project",
        "add",
        "--slug",
        slug,
        "--clone-url",
        &clone_url,
        "--deploy-key",
        deploy.private_path.to_str().expect("utf8"),
        "--known-hosts",
        known_hosts.to_str().expect("utf8"),
    ];
    args.extend_from_slice(extra);
    coordinator_cli(data, &args);
    coordinator_cli(data, &["token"])
}

/// Start `bosun coordinator serve --listen LISTEN --data DATA EXTRA…` and return it with the
/// `host:port` it printed (`listening on http://ADDR`, or `https://` with `--tls-cert`; port 0
/// picks a free one).
pub fn spawn_coordinator(data: &Path, listen: &str, extra: &[&str]) -> (Child, String) {
    let to_file = std::env::var_os("BOSUN_TEST_COORDINATOR_LOG").is_none();
    let mut cmd = Command::new(super::bosun_bin());
    if to_file && std::env::var_os("BOSUN_LOG").is_none() {
        // What a test reads of the log (no secret in it, for one) includes its info lines.
        cmd.env("BOSUN_LOG", "bosun=info");
    }
    let mut child = cmd
        .args(["coordinator", "serve", "--listen", listen])
        .args(extra)
        .arg("--data")
        .arg(data)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        // BOSUN_TEST_COORDINATOR_LOG=1 shows the coordinator's log (with BOSUN_LOG's filter);
        // else it goes to DATA.log, next to the data directory (`coordinator_log`).
        .stderr(if !to_file {
            Stdio::inherit()
        } else {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(coordinator_log(data))
                .map_or_else(|_| Stdio::null(), Stdio::from)
        })
        .spawn()
        .expect("coordinator");
    let stdout = child.stdout.take().expect("stdout");
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("listening line");
    let addr = line.trim().rsplit("://").next().unwrap_or("").to_owned();
    assert!(addr.contains(':'), "unexpected first line: {line}");
    (child, addr)
}

/// Where [`spawn_coordinator`] writes the log of a coordinator serving `data`.
pub fn coordinator_log(data: &Path) -> std::path::PathBuf {
    data.with_extension("log")
}

/// `bosun coordinator ARGS… --data DATA`, panicking on failure; trimmed stdout.
pub fn coordinator_cli(data: &Path, args: &[&str]) -> String {
    let mut c = Command::new(super::bosun_bin());
    c.arg("coordinator").args(args).arg("--data").arg(data);
    let out = super::run(&mut c).trim().to_owned();
    // Projects are private by default (docs/people.md); the tests that read pages without
    // logging in predate that, so a project the harness adds is public. A test of privacy
    // makes it private again (`project set --public false`).
    let slug = match args {
        ["project", "add", rest @ ..] => flag(rest, "--slug"),
        ["project", "follow", rest @ ..] => flag(rest, "--bitbucket"),
        _ => None,
    };
    if let Some(slug) = slug {
        let mut p = Command::new(super::bosun_bin());
        p.args([
            "coordinator",
            "project",
            "set",
            "--public",
            "true",
            "--slug",
            slug,
        ])
        .arg("--data")
        .arg(data);
        // The same store as the command's (a PostgreSQL database when it named one).
        if let Some(db) = flag(args, "--database") {
            p.args(["--database", db]);
        }
        super::run(&mut p);
    }
    out
}

/// The value after `name` in `args`.
fn flag<'a>(args: &[&'a str], name: &str) -> Option<&'a str> {
    args.iter()
        .position(|a| *a == name)
        .and_then(|i| args.get(i + 1).copied())
}

/// `bosun coordinator enqueue` of `job` on `main` of `acme/widget` (the project every rig
/// adds), with `extra` flags; returns the job id it prints.
pub fn enqueue_job(data: &Path, job: &str, extra: &[&str]) -> String {
    let mut args = vec![
        "enqueue",
        "--project",
        "acme/widget",
        "--ref",
        "main",
        "--job",
        job,
    ];
    args.extend_from_slice(extra);
    coordinator_cli(data, &args)
}

/// `bosun coordinator serve` in a container of its own on the rig's network, reachable there
/// as `http://ALIAS:8080` (`https://` with a [`super::TestCa`] for ALIAS): a separate machine
/// from the agents', as in a real install, and nothing listens on any host interface. The
/// data directory is the host's `data` (the process runs as its owner), and its parent is
/// mounted too (the secrets key file lies beside it), so [`coordinator_cli`] and
/// `Store::open` work on it from the host as with [`spawn_coordinator`]; so do the CA's files
/// when they are under that parent. Returns the container id and the URL.
pub fn spawn_coordinator_container(
    rig: &super::Rig,
    data: &Path,
    alias: &str,
    tls: Option<&super::TestCa>,
    extra: &[&str],
) -> (String, String) {
    use std::os::unix::fs::MetadataExt;
    std::fs::create_dir_all(data).expect("coordinator data dir");
    let meta = std::fs::metadata(data).expect("coordinator data dir");
    let bin = format!("{}:/usr/local/bin/bosun:ro", super::bosun_bin().display());
    let parent = data.parent().expect("data dir has a parent");
    let name = data.file_name().expect("data dir name").to_string_lossy();
    let vol = format!("{}:/srv", parent.display());
    let data_in = format!("/srv/{name}");
    let inside = |p: &Path| {
        let rel = p
            .strip_prefix(parent)
            .expect("TLS files under the data dir's parent");
        format!("/srv/{}", rel.display())
    };
    let tls_args: Vec<String> = match tls {
        Some(ca) => vec![
            "--tls-cert".into(),
            inside(&ca.cert),
            "--tls-key".into(),
            inside(&ca.key),
        ],
        None => vec![],
    };
    let user = format!("{}:{}", meta.uid(), meta.gid());
    let label = format!("{}={}", super::LABEL, rig.run_id);
    let mut args = vec![
        "run",
        "-d",
        "--label",
        &label,
        "--network",
        &rig.network,
        "--network-alias",
        alias,
        "--user",
        &user,
        "-v",
        &bin,
        "-v",
        &vol,
    ];
    let image = super::image("base");
    args.extend([
        image.as_str(),
        "/usr/local/bin/bosun",
        "coordinator",
        "serve",
        "--listen",
        "0.0.0.0:8080",
        "--data",
        &data_in,
    ]);
    args.extend(tls_args.iter().map(String::as_str));
    args.extend(extra);
    let container = super::docker(&args);
    let t0 = std::time::Instant::now();
    loop {
        let out = super::output(Command::new("docker").args(["logs", &container]));
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if text.contains("listening on http") {
            break;
        }
        assert!(
            t0.elapsed() < std::time::Duration::from_secs(30),
            "the coordinator container did not start listening in 30 s:\n{text}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let scheme = if tls.is_some() { "https" } else { "http" };
    (container, format!("{scheme}://{alias}:8080"))
}

/// A job's status in the coordinator's store (`""` when unknown).
pub fn job_status(data: &Path, job: &str) -> String {
    use bosun::coordinator::store::{parse_job_id, Store};
    let store = Store::open(data).expect("store");
    let id = parse_job_id(job).expect("job id");
    store
        .job(id)
        .expect("job")
        .map(|j| j.status.to_string())
        .unwrap_or_default()
}

/// A job's log as the coordinator holds it.
pub fn job_log(data: &Path, job: &str) -> String {
    String::from_utf8_lossy(&job_log_bytes(data, job)).into_owned()
}

/// A job's log as the coordinator holds it, byte for byte.
pub fn job_log_bytes(data: &Path, job: &str) -> Vec<u8> {
    use bosun::coordinator::store::{parse_job_id, Store};
    let store = Store::open(data).expect("store");
    let id = parse_job_id(job).expect("job id");
    store.log_from(id, 0).expect("log")
}

/// Polls until the job's status contains one of `want`; returns it.
pub fn wait_job_status(
    data: &Path,
    job: &str,
    want: &[&str],
    timeout: std::time::Duration,
) -> String {
    let t0 = std::time::Instant::now();
    loop {
        let s = job_status(data, job);
        if want.iter().any(|w| s.contains(w)) {
            return s;
        }
        assert!(
            t0.elapsed() < timeout,
            "job {job} still `{s}` after {timeout:?}; log:\n{}",
            job_log(data, job).chars().take(3000).collect::<String>()
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

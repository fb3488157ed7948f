//! The SSH gateway against the real OpenSSH client and real job containers (`bosun execute
//! --ssh`): who gets in, where they land, what they can do, and how long the job stays up.

use crate::harness;

use crate::harness::{ensure_images, free_port, image, poll, KillOnDrop, Project};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// An ed25519 key pair made with `ssh-keygen`.
pub(crate) fn keygen(dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(name);
    harness::run(
        Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", name, "-f"])
            .arg(&path),
    );
    path
}

fn config(extra_env: &str, step: &str) -> String {
    format!(
        "version: 2.1\njobs:\n  build:\n    docker:\n      - image: {}\n        user: circleci\n    environment:\n      MY_VAR: from-the-job\n{extra_env}    steps:\n      - run: {step}\n",
        image("base")
    )
}

/// A job started with `--ssh`, and how to reach it (`tests/it/sftp.rs` uses it too).
pub(crate) struct Gateway {
    pub(crate) run: harness::Running,
    pub(crate) port: u16,
    fingerprint: String,
    pub(crate) dir: tempfile::TempDir,
    pub(crate) key: PathBuf,
}

pub(crate) fn start(p: &Project, args: &[&str]) -> Gateway {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = keygen(dir.path(), "id_user");
    let pubkey = format!("{}.pub", key.display());
    let host_key = dir.path().join("state/ssh_host_ed25519_key");
    let host_key = host_key.to_str().expect("utf-8 path");
    let mut all = vec![
        "--ssh",
        "--ssh-authorized-key",
        &pubkey,
        "--ssh-host-key",
        host_key,
    ];
    all.extend_from_slice(args);
    let run = p.spawn(&all);
    run.wait_for_output("(ED25519)", Duration::from_secs(120));
    let out = run.stdout_so_far();
    let line = out
        .lines()
        .find(|l| l.contains("SSH: ssh -p"))
        .expect("ssh line");
    let port = line
        .split_whitespace()
        .nth(3)
        .and_then(|p| p.parse().ok())
        .expect("port");
    assert!(
        line.trim_end()
            .ends_with(&format!("{}@127.0.0.1", p.job_id)),
        "{line}"
    );
    let fingerprint = out
        .split_whitespace()
        .find(|w| w.starts_with("SHA256:"))
        .expect("fingerprint")
        .to_owned();
    Gateway {
        run,
        port,
        fingerprint,
        dir,
        key,
    }
}

impl Gateway {
    pub(crate) fn ssh(&self, key: &Path, user: &str) -> Command {
        let mut c = Command::new("ssh");
        c.args([
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
        ])
        .args([
            "-o",
            "LogLevel=ERROR",
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "BatchMode=yes",
        ])
        .args(["-p", &self.port.to_string(), "-i"])
        .arg(key)
        .arg(format!("{user}@127.0.0.1"))
        .stdin(Stdio::null());
        c
    }

    pub(crate) fn run_as(&self, key: &Path, user: &str, cmd: &str) -> Output {
        self.ssh(key, user).arg(cmd).output().expect("ssh")
    }

    fn scp(&self, from: &str, to: &str) -> Output {
        Command::new("scp")
            .args([
                "-O",
                "-o",
                "StrictHostKeyChecking=no",
                "-o",
                "UserKnownHostsFile=/dev/null",
            ])
            .args([
                "-o",
                "LogLevel=ERROR",
                "-o",
                "BatchMode=yes",
                "-P",
                &self.port.to_string(),
                "-i",
            ])
            .arg(&self.key)
            .args([from, to])
            .stdin(Stdio::null())
            .output()
            .expect("scp")
    }
}

pub(crate) fn text(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn the_right_key_lands_in_the_job_and_a_session_holds_it_until_it_ends() {
    ensure_images();
    let p = Project::new(&config("", "echo steps-done"));
    let g = start(&p, &["--ssh-wait", "60s", "--ssh-grace", "1s"]);
    let job = p.job_id.as_str();

    // The host key in the log is the one the gateway shows.
    let scan =
        harness::run(Command::new("ssh-keyscan").args(["-p", &g.port.to_string(), "127.0.0.1"]));
    let mut lf = Command::new("ssh-keygen")
        .args(["-lf", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("ssh-keygen");
    lf.stdin
        .take()
        .expect("stdin")
        .write_all(scan.as_bytes())
        .expect("write");
    let seen = String::from_utf8_lossy(&lf.wait_with_output().expect("keygen").stdout).into_owned();
    assert!(
        seen.contains(&g.fingerprint),
        "log says {}, ssh-keyscan sees {seen}",
        g.fingerprint
    );

    // The session is encrypted with AES-GCM (hardware AES), whatever the client prefers;
    // a client that will only speak chacha20-poly1305 is refused at the key exchange.
    let o = g
        .ssh(&g.key, job)
        .args(["-v", "true"])
        .output()
        .expect("ssh");
    let debug = String::from_utf8_lossy(&o.stderr);
    assert!(
        debug.contains("cipher: aes128-gcm@openssh.com"),
        "negotiated:\n{debug}"
    );
    let o = g
        .ssh(&g.key, job)
        .args(["-c", "chacha20-poly1305@openssh.com", "true"])
        .output()
        .expect("ssh");
    assert_eq!(o.status.code(), Some(255), "{}", text(&o));

    // A session that stays open holds the job after its last step.
    let holder = KillOnDrop(g.ssh(&g.key, job).arg("sleep 300").spawn().expect("ssh"));
    g.run.wait_for_output("steps-done", Duration::from_secs(60));

    let o = g.run_as(&g.key, job, "id -un; pwd; echo $CIRCLE_JOB $MY_VAR");
    assert_eq!(
        text(&o),
        "circleci\n/home/circleci/project\nbuild from-the-job\n",
        "{o:?}"
    );
    assert_eq!(g.run_as(&g.key, job, "exit 3").status.code(), Some(3));

    // Refused alike: a key that is not the requester's, another job's id.
    let wrong = keygen(g.dir.path(), "id_other");
    for (key, user) in [(&wrong, job), (&g.key, "someone-elses-job")] {
        let o = g.run_as(key, user, "true");
        assert_eq!(o.status.code(), Some(255), "{user}: {o:?}");
        assert!(String::from_utf8_lossy(&o.stderr).contains("Permission denied (publickey)"));
    }

    // An interactive shell through a pseudo-terminal.
    let mut tty = g
        .ssh(&g.key, job)
        .arg("-tt")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("ssh -tt");
    tty.stdin
        .take()
        .expect("stdin")
        .write_all(b"echo tty-$((6*7)) $(tput cols); exit 4\n")
        .expect("type");
    let o = tty.wait_with_output().expect("ssh -tt");
    assert_eq!(o.status.code(), Some(4));
    assert!(text(&o).contains("tty-42 80"), "{}", text(&o));

    // scp both ways.
    let local = g.dir.path().join("up.txt");
    std::fs::write(&local, "uploaded\n").expect("write");
    let remote = format!("{job}@127.0.0.1:up.txt");
    assert!(g
        .scp(local.to_str().expect("utf-8"), &remote)
        .status
        .success());
    assert_eq!(
        text(&g.run_as(&g.key, job, "cat ~/project/up.txt")),
        "uploaded\n"
    );
    let back = g.dir.path().join("back.txt");
    assert!(g
        .scp(&remote, back.to_str().expect("utf-8"))
        .status
        .success());
    assert_eq!(std::fs::read_to_string(&back).expect("read"), "uploaded\n");

    // ssh -L reaches a server listening on the job's localhost.
    let server = KillOnDrop(
        g.ssh(&g.key, job)
            .arg("echo from-the-job | timeout 30 nc -l -p 8080 -q 1")
            .spawn()
            .expect("server"),
    );
    let local_port = free_port();
    let tunnel = KillOnDrop(
        g.ssh(&g.key, job)
            .args([
                "-N",
                "-o",
                "ExitOnForwardFailure=yes",
                "-L",
                &format!("{local_port}:localhost:8080"),
            ])
            .spawn()
            .expect("tunnel"),
    );
    let got = poll(Duration::from_secs(15), Duration::from_millis(200), || {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", local_port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        let mut got = String::new();
        s.read_to_string(&mut got).ok()?;
        got.contains("from-the-job").then_some(got)
    });
    assert!(got.is_some(), "nothing came through the tunnel");
    drop((tunnel, server));

    // Still held: the holder's session is open.
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        !p.containers().is_empty(),
        "released while a session was open"
    );
    drop(holder);
    let t = Instant::now();
    let out = g.run.finish(Duration::from_secs(60));
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert!(
        t.elapsed() < Duration::from_secs(20),
        "held {:?} after the last session",
        t.elapsed()
    );
    p.assert_no_container_left();
    // Nothing of the keys in the job's output.
    let pubkey = std::fs::read_to_string(format!("{}.pub", g.key.display())).expect("pub");
    let body = pubkey.split_whitespace().nth(1).expect("key body");
    assert!(!out.stdout.contains(body) && !out.stderr.contains(body));
}

#[test]
fn a_job_nobody_connects_to_is_released_when_the_wait_passes_and_then_refuses() {
    ensure_images();
    let p = Project::new(&config("", "echo steps-done"));
    let g = start(&p, &["--ssh-wait", "3s"]);
    g.run.wait_for_output("steps-done", Duration::from_secs(60));
    let t = Instant::now();
    let port = g.port;
    let (key, job) = (g.key.clone(), p.job_id.clone());
    let out = g.run.finish(Duration::from_secs(60));
    assert_eq!(out.code, 0, "{}", out.stdout);
    assert!(
        t.elapsed() < Duration::from_secs(15),
        "held {:?}",
        t.elapsed()
    );
    assert!(out.stdout.contains("held"), "{}", out.stdout);
    p.assert_no_container_left();
    // The gateway went with the job: nothing answers for it any more.
    let o = Command::new("ssh")
        .args([
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
        ])
        .args(["-o", "ConnectTimeout=5", "-p", &port.to_string(), "-i"])
        .arg(&key)
        .arg(format!("{job}@127.0.0.1"))
        .arg("true")
        .stdin(Stdio::null())
        .output()
        .expect("ssh");
    assert_eq!(o.status.code(), Some(255));
}

/// `n` TCP connections to the gateway from 127.0.0.1 that never send an SSH banner, each with
/// the first thing the gateway sent on it (its own banner when it took the connection; a
/// refusal, or nothing, when it closed it at once).
fn idle_connections(port: u16, n: usize) -> Vec<(TcpStream, String)> {
    let conns: Vec<TcpStream> = (0..n)
        .map(|_| TcpStream::connect(("127.0.0.1", port)).expect("connect"))
        .collect();
    conns
        .into_iter()
        .map(|mut s| {
            s.set_read_timeout(Some(Duration::from_secs(20)))
                .expect("timeout");
            let mut buf = [0u8; 256];
            let got = match s.read(&mut buf) {
                Ok(n) => String::from_utf8_lossy(&buf[..n]).into_owned(),
                Err(e) => format!("read error: {e}"),
            };
            (s, got)
        })
        .collect()
}

fn admitted(conns: &[(TcpStream, String)]) -> usize {
    conns
        .iter()
        .filter(|(_, got)| got.starts_with("SSH-2.0-"))
        .count()
}

#[test]
fn hundreds_of_idle_connections_from_one_address_do_not_lock_out_a_login() {
    ensure_images();
    let p = Project::new(&config("", "echo steps-done"));
    let g = start(&p, &["--ssh-wait", "60s", "--ssh-grace", "1s"]);
    let job = p.job_id.as_str();

    // More idle connections than the gateway takes in all, from one address, held open.
    let flood = idle_connections(g.port, 300);

    // The flood's own address is what is held back: a login from it is refused at once, its
    // first connections were taken and the rest were told why they were closed.
    let o = g
        .ssh(&g.key, job)
        .args(["-v", "true"])
        .output()
        .expect("ssh");
    assert_eq!(o.status.code(), Some(255), "{o:?}");
    // `ssh -v` shows the line the gateway sent before closing.
    assert!(
        String::from_utf8_lossy(&o.stderr)
            .contains("too many connections not logged in from your address"),
        "{o:?}"
    );

    // Another address still logs in and runs a command.
    let o = g
        .ssh(&g.key, job)
        .args(["-b", "127.0.0.2", "echo in-$((6*7))"])
        .output()
        .expect("ssh");
    assert_eq!(
        (o.status.code(), text(&o).as_str()),
        (Some(0), "in-42\n"),
        "login from 127.0.0.2 during the flood: {}",
        String::from_utf8_lossy(&o.stderr)
    );

    let taken = admitted(&flood);
    assert!((1..=10).contains(&taken), "{taken} idle connections taken");
    let told = flood
        .iter()
        .filter(|(_, got)| got.contains("too many connections not logged in from your address"))
        .count();
    assert_eq!(taken + told, flood.len());
    drop(flood);

    let out = g.run.finish(Duration::from_secs(60));
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    p.assert_no_container_left();
}

#[test]
fn connections_that_do_not_log_in_are_closed_after_the_login_grace_time() {
    ensure_images();
    let p = Project::new(&config("", "echo steps-done"));
    let g = start(
        &p,
        &[
            "--ssh-wait",
            "60s",
            "--ssh-grace",
            "1s",
            "--ssh-login-grace",
            "3s",
        ],
    );
    let job = p.job_id.as_str();

    let t = Instant::now();
    let mut flood = idle_connections(g.port, 300);
    assert!(admitted(&flood) > 0);
    // Every connection the gateway took is closed by it once the grace time has passed from
    // its accept (after `t`), and none before.
    let mut first = None;
    for (s, got) in &mut flood {
        if !got.starts_with("SSH-2.0-") {
            continue;
        }
        s.set_read_timeout(Some(Duration::from_secs(30)))
            .expect("timeout");
        let mut buf = [0u8; 64];
        let r = s.read(&mut buf);
        assert!(
            matches!(&r, Ok(0))
                || matches!(&r, Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset),
            "an idle connection past the grace time: {r:?} after {:?}",
            t.elapsed()
        );
        first.get_or_insert(t.elapsed());
    }
    let (first, last) = (first.expect("one taken"), t.elapsed());
    assert!(
        first >= Duration::from_millis(2900) && last < Duration::from_secs(13),
        "closed from {first:?} to {last:?} after the connects, with a 3 s grace time"
    );

    // The address is let in again, and a logged-in session outlives the grace time.
    let o = g.run_as(&g.key, job, "echo in; sleep 5; echo still-in");
    assert_eq!(
        (o.status.code(), text(&o).as_str()),
        (Some(0), "in\nstill-in\n"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    drop(flood);

    let out = g.run.finish(Duration::from_secs(60));
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    p.assert_no_container_left();
}

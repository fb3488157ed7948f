//! SSH into a job through the coordinator, real processes only: `bosun coordinator` + `bosun
//! agent` (with its gateway) + Docker + the Bitbucket stand-in + the real OpenSSH client. A
//! finished job is rerun with SSH (`coordinator rerun JOB --ssh-key`), its page shows how to
//! reach it and what its agent reports (sessions, held until), a session runs a command,
//! and the job is released once the session ends; a cancel ends the hold and an open session.

use crate::harness;

use crate::harness::{free_port, http_get, image, poll, Agent, Coordinator, KillOnDrop, Rig};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Fields drop in order: the agent (its containers) first, the coordinator and its
/// directory next, the stand-in last.
struct Setup {
    agent: Agent,
    c: Coordinator,
    _rig: Rig,
    /// The gateway's port.
    port: u16,
    /// The developer's key pair (`id_dev`, `id_dev.pub`).
    key: PathBuf,
}

/// A coordinator with the stand-in's `acme/widget` (a one-step `build` job as `circleci`),
/// an agent with its SSH gateway on a free port and no ready containers (a taken-over
/// container keeps the pool's labels, and this test finds a job's containers by its id),
/// and a developer key pair.
fn setup() -> Setup {
    harness::ensure_images();
    let rig = Rig::start();
    rig.create_repo("acme/widget");
    let repo = rig.work_repo("acme/widget");
    repo.write(
        ".circleci/config.yml",
        &format!(
            "version: 2.1\njobs:\n  build:\n    docker: [{{image: {}, user: circleci}}]\n    steps:\n      - checkout\n      - run: echo built-it\n",
            image("base")
        ),
    );
    repo.commit("config");
    repo.push("HEAD:refs/heads/main");
    let c = Coordinator::start();
    harness::add_stand_in_project(&c.data, &rig, "acme/widget", &[]);
    let port = free_port();
    let agent = c
        .agent(&rig, "ssh")
        .ssh_gateway(&format!("127.0.0.1:{port}"))
        .toml("ssh_wait_secs = 120\nssh_grace_secs = 1\nready_containers = 0")
        .start();
    let key = c.dir().join("id_dev");
    harness::run(
        Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", "dev", "-f"])
            .arg(&key),
    );
    Setup {
        agent,
        c,
        _rig: rig,
        port,
        key,
    }
}

impl Setup {
    fn cli(&self, args: &[&str]) -> String {
        self.c.cli(args)
    }

    fn status(&self, job: &str) -> String {
        self.cli(&["jobs"])
            .lines()
            .find(|l| l.split_whitespace().next() == Some(job))
            .and_then(|l| l.split_whitespace().nth(5).map(str::to_owned))
            .unwrap_or_default()
    }

    fn page(&self, job: &str) -> String {
        http_get(&self.c.addr, &format!("/jobs/{job}")).text()
    }

    fn wait(&self, what: &str, within: Duration, mut f: impl FnMut() -> bool) {
        let every = Duration::from_millis(250);
        if poll(within, every, || f().then_some(())).is_none() {
            panic!(
                "{what}: not within {within:?}; agent log:\n{}",
                self.agent.log_text()
            );
        }
    }

    fn ssh(&self, user: &str) -> Command {
        let mut c = Command::new("ssh");
        c.args([
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "LogLevel=ERROR",
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "BatchMode=yes",
            "-p",
            &self.port.to_string(),
            "-i",
        ])
        .arg(&self.key)
        .arg(format!("{user}@127.0.0.1"))
        .stdin(Stdio::null());
        c
    }

    /// The job's containers (labelled with its id by this test's agent).
    fn containers(&self, job: &str) -> String {
        harness::docker(&[
            "ps",
            "-aq",
            "--filter",
            &format!("label=bosun.job={job}"),
            "--filter",
            &format!("label=bosun.agent={}", self.agent.id),
        ])
    }

    fn pub_key(&self) -> String {
        format!("{}.pub", self.key.display())
    }
}

fn finished(s: &str) -> bool {
    [
        "success",
        "failed",
        "canceled",
        "timedout",
        "infrastructure_fail",
    ]
    .contains(&s)
}

/// Rerun `job` with SSH and wait until its steps are done and it is held for a session.
fn rerun_held(s: &Setup, job: &str) -> String {
    let id = s.cli(&["rerun", job, "--ssh-key", &s.pub_key()]);
    assert_ne!(id, job);
    s.wait("the rerun held for SSH", Duration::from_secs(180), || {
        s.page(&id).contains("0 sessions, held until")
    });
    id
}

#[test]
fn a_rerun_with_ssh_is_reached_through_the_page_line_and_released_after_the_session() {
    let s = setup();
    let first = harness::enqueue_job(&s.c.data, "build", &[]);
    s.wait("the first run", Duration::from_secs(180), || {
        finished(&s.status(&first))
    });
    assert_eq!(s.status(&first), "success");
    // A finished job's page offers the rerun with SSH.
    assert!(
        s.page(&first)
            .contains(&format!("bosun coordinator rerun {first} --ssh")),
        "{}",
        s.page(&first)
    );
    // A key file that is not a public key is refused before anything is queued.
    let bad = s.c.dir().join("not-a-key.pub");
    std::fs::write(&bad, "ssh-ed25519 garbage\n").expect("write");
    let o = harness::output(
        Command::new(harness::bosun_bin())
            .args(["coordinator", "rerun", &first, "--ssh-key"])
            .arg(&bad)
            .arg("--data")
            .arg(&s.c.data),
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("not-a-key.pub:1: not an OpenSSH public key"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );

    let job = rerun_held(&s, &first);
    let page = s.page(&job);
    let line = format!("ssh -p {} {job}@127.0.0.1", s.port);
    assert!(page.contains(&line), "{page}");
    assert!(page.contains(&format!(
        "rerun of <a href=\"/jobs/{first}\">#{first}</a> with SSH"
    )));
    // Held after its last step, its status is reported at once (dependants and commit
    // statuses need not wait for a debugging session); its containers stay.
    s.wait("the held job's status", Duration::from_secs(30), || {
        s.status(&job) == "success"
    });
    assert!(!s.containers(&job).is_empty());
    assert!(s.page(&job).contains(&line), "{}", s.page(&job));

    // The original job has no keys (and is finished): refused with the same key.
    let o = s.ssh(&first).arg("true").output().expect("ssh");
    assert_eq!(o.status.code(), Some(255));

    let o = s
        .ssh(&job)
        .arg("echo \"in $PWD as $(whoami)\"; exit 3")
        .output()
        .expect("ssh");
    assert_eq!(
        o.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("as circleci"),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    // The last session ended: released after the grace; the status stays what it was.
    s.wait(
        "the rerun's containers removed",
        Duration::from_secs(60),
        || s.containers(&job).is_empty(),
    );
    assert_eq!(s.status(&job), "success");
    let log = s.cli(&["jobs"]);
    assert!(log.contains(&job), "{log}");
    // The SSH row now offers another rerun instead of the command (the agent's next
    // heartbeat no longer lists the job).
    s.wait("the page's hold gone", Duration::from_secs(30), || {
        let page = s.page(&job);
        let row = page.split("<span id=\"ssh\">").nth(1).unwrap_or("");
        row.starts_with("rerun it with SSH")
    });
    let page = s.page(&job);
    // Nothing of the key in the job's output.
    let key_text = std::fs::read_to_string(s.pub_key()).expect("pub");
    let blob = key_text.split_whitespace().nth(1).expect("key blob");
    assert!(!page.contains(blob), "the public key is on the page");
}

#[test]
fn cancel_ends_the_hold_and_an_open_session() {
    let s = setup();
    let first = harness::enqueue_job(&s.c.data, "build", &[]);
    s.wait("the first run", Duration::from_secs(180), || {
        finished(&s.status(&first))
    });
    let job = rerun_held(&s, &first);
    let session = KillOnDrop(
        s.ssh(&job)
            .arg("sleep 300")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("ssh"),
    );
    s.wait(
        "the page counts the session",
        Duration::from_secs(30),
        || s.page(&job).contains("— 1 session, held until"),
    );
    s.wait("the held job's status", Duration::from_secs(30), || {
        s.status(&job) == "success"
    });
    let t = Instant::now();
    let said = s.cli(&["cancel", &job]);
    assert!(said.contains("success (its SSH hold ends)"), "{said}");
    let mut session = session;
    s.wait(
        "the session closed by the cancel",
        Duration::from_secs(30),
        || matches!(session.0.try_wait(), Ok(Some(_))),
    );
    s.wait("the containers removed", Duration::from_secs(30), || {
        s.containers(&job).is_empty()
    });
    // The control channel carries the cancel: well under a heartbeat round trip or two.
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    assert_eq!(
        s.status(&job),
        "success",
        "the cancel ended the hold, not the job"
    );
    // A job that is finished and not held: the cancel changes nothing.
    let said = s.cli(&["cancel", &first]);
    assert!(!said.contains("hold"), "{said}");
}

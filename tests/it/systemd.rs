//! `systemd/bosun-agent.service`, installed and run under a real systemd (PID 1 of the
//! `bosun/systemd` image, booted in a container) exactly as docs/operations.md's install
//! section tells an operator to, against a real coordinator and the Bitbucket stand-in.
//! `systemd/verify.sh` only checks the unit's syntax; this checks what it does: READY and
//! STATUS through sd_notify, a job running under the sandbox, the journal, file ownership,
//! reload, drain on stop, and restart after a crash.

use crate::harness;

use crate::harness::{enqueue_job, image, job_log, wait_job_status, Rig, SystemdHost};
use std::path::Path;
use std::time::{Duration, Instant};

const UNIT: &str = "bosun-agent";

/// systemd/agent.toml as shipped, with only what this site needs changed. Each replaced line
/// must exist, so the test notices when the example changes under it.
fn agent_toml(coordinator_url: &str, network: &str) -> String {
    let shipped = std::fs::read_to_string(harness::repo_root().join("systemd/agent.toml"))
        .expect("systemd/agent.toml");
    let edits = [
        (
            "coordinator_url = \"https://coordinator.example.com:8443\"",
            format!("coordinator_url = \"{coordinator_url}\""),
        ),
        // The coordinator's certificate comes from the test's own CA.
        (
            "# ca_file = \"/etc/bosun/coordinator-ca.pem\"",
            "ca_file = \"/etc/bosun/coordinator-ca.pem\"".to_owned(),
        ),
        (
            "# name = \"build-01\"",
            "name = \"systemd-test\"".to_owned(),
        ),
        ("# network = \"ci\"", format!("network = \"{network}\"")),
        // Quicker than the defaults so STATUS and claims follow within a second or two.
        ("heartbeat_secs = 5", "heartbeat_secs = 1".to_owned()),
        ("claim_wait_secs = 30", "claim_wait_secs = 2".to_owned()),
    ];
    let mut toml = shipped;
    for (from, to) in edits {
        assert!(
            toml.lines().any(|l| l == from),
            "systemd/agent.toml has no line `{from}` any more; update tests/it/systemd.rs"
        );
        toml = toml.replace(from, &to);
    }
    // vcs_hosts stays empty as shipped: on the rig's network `bitbucket.org` and
    // `ssh.bitbucket.org` resolve to the stand-in, as they resolve to Bitbucket on a real host.
    toml
}

fn job_config(command: &str) -> String {
    format!(
        "version: 2.1\njobs:\n  build:\n    docker: [{{image: {img}}}]\n    steps:\n      - checkout\n      - run:\n          name: work\n          command: {command}\n  slow:\n    docker: [{{image: {img}}}]\n    steps:\n      - run:\n          name: sleep\n          command: 'echo slow-started; sleep 8; echo slow-done'\n",
        img = image("base")
    )
}

fn enqueue(data: &Path, job: &str) -> String {
    enqueue_job(data, job, &[])
}

/// `find` over the agent's directories: `user mode path` per file and directory.
fn owners_and_modes(host: &SystemdHost) -> Vec<(String, u32, String)> {
    host.sh_ok("find /var/lib/bosun /var/cache/bosun -printf '%u %m %p\\n'")
        .lines()
        .filter_map(|l| {
            let mut f = l.splitn(3, ' ');
            let user = f.next()?.to_owned();
            let mode = u32::from_str_radix(f.next()?, 8).ok()?;
            Some((user, mode, f.next()?.to_owned()))
        })
        .collect()
}

fn assert_private_to_bosun(entries: &[(String, u32, String)]) {
    for (user, mode, path) in entries {
        assert_eq!(user, "bosun", "{path} is owned by {user}, not bosun");
        assert_eq!(
            mode & 0o007,
            0,
            "{path} is open to others (mode {mode:o}): {entries:?}"
        );
    }
}

/// Removes the containers an agent started (label `bosun.agent=ID`) when dropped.
struct JobContainers(String);

impl Drop for JobContainers {
    fn drop(&mut self) {
        harness::cleanup_label("bosun.agent", &self.0);
    }
}

#[test]
fn the_agent_unit_installs_runs_reloads_drains_and_restarts_under_systemd() {
    let t_start = Instant::now();
    let rig = Rig::start();
    let repo = rig.work_repo("acme/widget");
    repo.write(
        ".circleci/config.yml",
        &job_config("'echo \"hello from systemd as $(id -un)\" && git remote get-url origin'"),
    );
    repo.commit("config");
    repo.push("HEAD:refs/heads/main");

    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("coordinator");
    // The coordinator runs in a container beside the agent's machine, not on the host: the
    // agent then reaches it by name on the rig's network, as an operator's agent reaches its
    // coordinator, and the test opens no port on a host interface (nor depends on the host's
    // firewall letting a container reach the bridge's gateway address).
    // Over HTTPS, as the shipped agent.toml says: a certificate for the name the agent uses.
    let ca = harness::TestCa::new(&dir.path().join("tls"), &["coordinator"]);
    let (_coordinator, url) = harness::spawn_coordinator_container(
        &rig,
        &data,
        "coordinator",
        Some(&ca),
        &["--lease-secs", "10"],
    );
    let ca_pem = std::fs::read(&ca.ca_cert).expect("CA certificate");
    let token = harness::add_stand_in_project(&data, &rig, "acme/widget", &[]);

    let t0 = Instant::now();
    let host = SystemdHost::boot(&rig, "build-01");
    let t_boot = t0.elapsed();

    // Install as docs/operations.md's "Installing the agent (systemd, by hand)" says, with the
    // committed files.
    let unit_file = std::fs::read(harness::repo_root().join("systemd/bosun-agent.service"))
        .expect("systemd/bosun-agent.service");
    let binary = std::fs::read(harness::bosun_bin()).expect("bosun binary");
    harness::copy_into(&host.container, "/tmp", "bosun", &binary, 0, 0, 0o755);
    harness::copy_into(
        &host.container,
        "/tmp",
        "bosun-agent.service",
        &unit_file,
        0,
        0,
        0o644,
    );
    harness::copy_into(
        &host.container,
        "/tmp",
        "agent.toml",
        agent_toml(&url, &rig.network).as_bytes(),
        0,
        0,
        0o644,
    );
    harness::copy_into(
        &host.container,
        "/tmp",
        "coordinator-ca.pem",
        &ca_pem,
        0,
        0,
        0o644,
    );
    harness::copy_into(
        &host.container,
        "/tmp",
        "registration-token",
        token.as_bytes(),
        0,
        0,
        0o600,
    );
    // The socket's group inside must be the host socket's gid: an operator's docker package
    // creates group `docker` with the gid its socket has. `-o`: that gid may already be taken
    // by some system group of the image.
    let socket_gid = std::fs::metadata(harness::DOCKER_SOCKET)
        .map(|m| std::os::unix::fs::MetadataExt::gid(&m))
        .expect("the Docker socket");
    host.sh_ok(&format!("groupadd -o -g {socket_gid} docker"));
    host.sh_ok(
        "set -e
         install -m 0755 /tmp/bosun /usr/local/bin/bosun
         useradd --system --groups docker bosun
         install -d -m 0750 -o root -g bosun /etc/bosun
         install -m 0640 -g bosun /tmp/agent.toml /etc/bosun/agent.toml
         install -m 0644 /tmp/coordinator-ca.pem /etc/bosun/coordinator-ca.pem
         install -m 0600 -o bosun /dev/stdin /etc/bosun/registration-token </tmp/registration-token
         install -m 0644 /tmp/bosun-agent.service /etc/systemd/system/
         rm /tmp/bosun /tmp/agent.toml /tmp/registration-token /tmp/bosun-agent.service \
            /tmp/coordinator-ca.pem",
    );
    assert_eq!(
        host.sh_ok("cat /etc/systemd/system/bosun-agent.service")
            .as_bytes(),
        String::from_utf8_lossy(&unit_file).trim().as_bytes(),
        "the unit is installed as committed"
    );

    // Type=notify: `enable --now` returns once the agent said READY=1 (it does after
    // registering), so `active` right after proves the notification arrived.
    let t0 = Instant::now();
    host.sh_ok("systemctl daemon-reload && systemctl enable --now bosun-agent");
    let t_enable = t0.elapsed();
    assert_eq!(
        host.show(UNIT, "ActiveState"),
        "active",
        "{}",
        host.status(UNIT)
    );
    assert_eq!(host.show(UNIT, "Type"), "notify");
    // Job containers belong to the host engine, not to the machine: should the test fail
    // mid-job, remove them with it (they carry the agent's id, not the rig's label).
    let identity: serde_json::Value =
        serde_json::from_str(&host.sh_ok("cat /var/lib/bosun/agent.json")).expect("agent.json");
    let agent_id = identity["agent_id"].as_str().unwrap_or_default().to_owned();
    assert!(agent_id.starts_with("agent-"), "agent.json: {identity}");
    let _job_containers = JobContainers(agent_id);
    assert_eq!(host.sh_ok("systemctl is-enabled bosun-agent"), "enabled");
    assert_eq!(host.show(UNIT, "NRestarts"), "0");
    // STATUS= from the agent's heartbeat loop.
    host.wait_show(UNIT, "StatusText", Duration::from_secs(10), |s| {
        s == "0 job(s) running"
    });

    // The sandbox is really in place (else the job below would prove nothing about it):
    // ProtectSystem=strict makes / read-only for the agent, StateDirectory= stays writable,
    // ProtectHome= hides /home, and it runs as bosun with the docker group.
    let pid = host.show(UNIT, "MainPID");
    let mounts = host.sh_ok(&format!("cat /proc/{pid}/mountinfo"));
    let mount_opts = |target: &str| -> String {
        mounts
            .lines()
            .rfind(|l| l.split(' ').nth(4) == Some(target))
            .and_then(|l| l.split(' ').nth(5))
            .unwrap_or_else(|| panic!("{target} is no mount point of the agent:\n{mounts}"))
            .to_owned()
    };
    assert!(mount_opts("/").starts_with("ro"), "/ writable:\n{mounts}");
    assert!(mount_opts("/var/lib/bosun").starts_with("rw"));
    assert!(mount_opts("/var/cache/bosun").starts_with("rw"));
    assert!(mount_opts("/home").starts_with("ro"));
    let proc_status = host.sh_ok(&format!("cat /proc/{pid}/status"));
    let field = |name: &str| {
        proc_status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.split_whitespace().collect::<Vec<_>>())
            .unwrap_or_default()
    };
    let bosun_uid = host.sh_ok("id -u bosun");
    assert_eq!(field("Uid:")[0], bosun_uid, "{proc_status}");
    assert!(
        field("Groups:").contains(&socket_gid.to_string().as_str()),
        "{proc_status}"
    );
    assert_eq!(field("NoNewPrivs:"), ["1"]);

    // A job through the agent under systemd: checkout over SSH from the agent, container on
    // the host engine through the socket, log and status back to the coordinator.
    let t0 = Instant::now();
    let job = enqueue(&data, "build");
    let status = wait_job_status(
        &data,
        &job,
        &["success", "fail", "canceled"],
        Duration::from_secs(90),
    );
    let t_job = t0.elapsed();
    let log = job_log(&data, &job);
    assert_eq!(status, "success", "{log}\n{}", host.status(UNIT));
    assert!(log.contains("hello from systemd as"), "{log}");
    assert!(log.contains("git@bitbucket.org:acme/widget.git"), "{log}");

    // The agent's own lines are in the journal (through journald's native protocol).
    host.wait_journal(UNIT, &format!("job {job} finished: success"));
    let journal = host.journal(UNIT);
    assert!(journal.contains("registered as agent-"), "{journal}");
    // The unit's directory settings agree with docs/operations.md's install steps.
    assert!(!journal.contains("but the mode is different"), "{journal}");

    // Reload: SIGHUP re-reads agent.toml; same process, still active, and it says so.
    host.sh_ok("sed -i 's/^concurrency = 1$/concurrency = 2/' /etc/bosun/agent.toml");
    host.sh_ok("systemctl reload bosun-agent");
    let t0 = Instant::now();
    loop {
        let fields =
            host.sh_ok("journalctl -u bosun-agent --no-pager -o verbose --grep 'config reloaded'");
        if fields.contains("CONCURRENCY=2") {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "no reload with concurrency 2 logged:\n{}",
            host.status(UNIT)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(host.show(UNIT, "ActiveState"), "active");
    assert_eq!(
        host.show(UNIT, "MainPID"),
        pid,
        "reload restarted the agent"
    );

    // Drain: stop while a job sleeps. The stop waits for the job, which ends `success`.
    let slow = enqueue(&data, "slow");
    let t0 = Instant::now();
    while !job_log(&data, &slow).contains("slow-started") {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "the slow job never started; {}",
            host.status(UNIT)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    host.wait_show(UNIT, "StatusText", Duration::from_secs(10), |s| {
        s == "1 job(s) running"
    });
    // While it runs its spool is on disk: owned by bosun, closed to others.
    let entries = owners_and_modes(&host);
    assert!(
        entries
            .iter()
            .any(|(_, _, p)| p.starts_with("/var/lib/bosun/spool/")),
        "no spool for the running job: {entries:?}"
    );
    assert!(entries
        .iter()
        .any(|(_, _, p)| p == "/var/lib/bosun/agent.json"));
    assert_private_to_bosun(&entries);

    let stopper = {
        let container = host.container.clone();
        std::thread::spawn(move || {
            let t = Instant::now();
            let out = harness::exec(&container, None, "systemctl stop bosun-agent");
            (out, t.elapsed())
        })
    };
    // STOPPING=1 and the draining STATUS= arrive while systemctl stop waits.
    host.wait_show(UNIT, "StatusText", Duration::from_secs(10), |s| {
        s.starts_with("draining")
    });
    assert_eq!(host.show(UNIT, "ActiveState"), "deactivating");
    let (out, t_stop) = stopper.join().expect("stop thread");
    assert!(
        out.status.success(),
        "systemctl stop: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        harness::job_status(&data, &slow),
        "success",
        "the job was not drained before the stop returned:\n{}",
        job_log(&data, &slow)
    );
    assert!(job_log(&data, &slow).contains("slow-done"));
    assert!(
        t_stop > Duration::from_secs(2),
        "stop returned after {t_stop:?}, before the 8 s job could have ended"
    );
    assert_eq!(host.show(UNIT, "ActiveState"), "inactive");
    assert_eq!(host.show(UNIT, "Result"), "success");
    assert_eq!(host.show(UNIT, "ExecMainStatus"), "0");
    host.wait_journal(UNIT, "draining: no new jobs");
    host.wait_journal(UNIT, "stopped");
    // Everything delivered: the spool is empty, and what remains is still bosun's alone.
    let entries = owners_and_modes(&host);
    assert!(
        !entries
            .iter()
            .any(|(_, _, p)| p.starts_with("/var/lib/bosun/spool/")),
        "spool left after a drain: {entries:?}"
    );
    assert_private_to_bosun(&entries);

    // Restart=on-failure: a SIGKILLed agent comes back (after RestartSec=5s) with its
    // identity, and takes jobs again.
    host.sh_ok("systemctl start bosun-agent");
    let pid = host.show(UNIT, "MainPID");
    let restarts = host.show(UNIT, "NRestarts");
    let t0 = Instant::now();
    host.sh_ok("systemctl kill -s KILL bosun-agent");
    let want = (restarts.parse::<u32>().expect("NRestarts") + 1).to_string();
    host.wait_show(UNIT, "NRestarts", Duration::from_secs(30), |n| n == want);
    host.wait_show(UNIT, "ActiveState", Duration::from_secs(30), |s| {
        s == "active"
    });
    let t_restart = t0.elapsed();
    assert_ne!(host.show(UNIT, "MainPID"), pid);
    let again = enqueue(&data, "build");
    let status = wait_job_status(
        &data,
        &again,
        &["success", "fail", "canceled"],
        Duration::from_secs(90),
    );
    assert_eq!(status, "success", "{}", job_log(&data, &again));
    // Three starts (enable, start, restart), one identity kept in /var/lib/bosun.
    let journal = host.journal(UNIT);
    let ids: Vec<&str> = journal
        .lines()
        .filter_map(|l| l.strip_prefix("registered as "))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(ids.len(), 3, "{journal}");
    assert!(ids.iter().all(|id| *id == ids[0]), "{journal}");

    eprintln!(
        "[systemd] boot {:.1}s, enable --now {:.1}s, job {:.1}s, drain stop {:.1}s, \
         kill→active {:.1}s, total {:.1}s",
        t_boot.as_secs_f64(),
        t_enable.as_secs_f64(),
        t_job.as_secs_f64(),
        t_stop.as_secs_f64(),
        t_restart.as_secs_f64(),
        t_start.elapsed().as_secs_f64()
    );
}

/// The Debian package (`scripts/build-deb.sh`) installed with `dpkg -i` on the systemd machine
/// as an operator would: the package makes the `bosun` user in group `docker`, installs the
/// binary, the unit and the example config, and enables the unit; with the site's config and
/// the registration token in place the agent starts, ends `active` and runs a job; installing
/// the package again (an upgrade) restarts it with the same identity.
#[test]
fn the_debian_package_installs_an_agent_that_runs_under_systemd() {
    let rig = Rig::start();
    let repo = rig.work_repo("acme/widget");
    repo.write(
        ".circleci/config.yml",
        &job_config("'echo \"hello from the package as $(id -un)\"'"),
    );
    repo.commit("config");
    repo.push("HEAD:refs/heads/main");

    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("coordinator");
    let ca = harness::TestCa::new(&dir.path().join("tls"), &["coordinator"]);
    let (_coordinator, url) = harness::spawn_coordinator_container(
        &rig,
        &data,
        "coordinator",
        Some(&ca),
        &["--lease-secs", "10"],
    );
    let token = harness::add_stand_in_project(&data, &rig, "acme/widget", &[]);

    // The package, built by the project's script around the binary under test.
    let out = dir.path().join("deb");
    let mut build = std::process::Command::new("bash");
    build
        .arg(harness::repo_root().join("scripts/build-deb.sh"))
        .arg("--binary")
        .arg(harness::bosun_bin())
        .arg("--out")
        .arg(&out);
    let deb_path = harness::run(&mut build).trim().to_owned();
    let deb = std::fs::read(&deb_path).expect("the .deb");
    std::fs::remove_file(&deb_path).expect("rm .deb");

    let host = SystemdHost::boot(&rig, "build-02");
    // The socket's group as an operator's Docker package makes it (see the test above).
    let socket_gid = std::fs::metadata(harness::DOCKER_SOCKET)
        .map(|m| std::os::unix::fs::MetadataExt::gid(&m))
        .expect("the Docker socket");
    host.sh_ok(&format!("groupadd -o -g {socket_gid} docker"));
    harness::copy_into(&host.container, "/tmp", "bosun.deb", &deb, 0, 0, 0o644);
    drop(deb);
    let installed = host.sh_ok("dpkg -i /tmp/bosun.deb 2>&1");
    assert!(
        installed.contains("/etc/bosun/registration-token"),
        "{installed}"
    );
    // What the package did.
    assert!(
        host.sh_ok("id bosun").contains("(docker)"),
        "{}",
        host.sh_ok("id bosun")
    );
    assert_eq!(host.sh_ok("systemctl is-enabled bosun-agent"), "enabled");
    assert_eq!(host.show(UNIT, "ActiveState"), "inactive");
    assert_eq!(
        host.sh_ok("stat -c '%U:%G %a' /etc/bosun"),
        "root:bosun 750"
    );
    assert_eq!(
        host.sh_ok("stat -c '%U:%G %a' /etc/bosun/agent.toml"),
        "root:bosun 640"
    );
    assert!(host
        .sh_ok("systemctl cat bosun-agent")
        .contains("ExecStart=/usr/bin/bosun agent"));

    // The operator's part: the site's config, the CA, the token; then start.
    harness::copy_into(
        &host.container,
        "/tmp",
        "agent.toml",
        agent_toml(&url, &rig.network).as_bytes(),
        0,
        0,
        0o644,
    );
    let ca_pem = std::fs::read(&ca.ca_cert).expect("CA certificate");
    harness::copy_into(
        &host.container,
        "/tmp",
        "coordinator-ca.pem",
        &ca_pem,
        0,
        0,
        0o644,
    );
    harness::copy_into(
        &host.container,
        "/tmp",
        "registration-token",
        token.as_bytes(),
        0,
        0,
        0o600,
    );
    host.sh_ok(
        "set -e
         install -m 0640 -g bosun /tmp/agent.toml /etc/bosun/agent.toml
         install -m 0644 /tmp/coordinator-ca.pem /etc/bosun/coordinator-ca.pem
         install -m 0600 -o bosun /dev/stdin /etc/bosun/registration-token </tmp/registration-token
         rm /tmp/agent.toml /tmp/coordinator-ca.pem /tmp/registration-token
         systemctl start bosun-agent",
    );
    assert_eq!(
        host.show(UNIT, "ActiveState"),
        "active",
        "{}",
        host.status(UNIT)
    );
    let identity: serde_json::Value =
        serde_json::from_str(&host.sh_ok("cat /var/lib/bosun/agent.json")).expect("agent.json");
    let agent_id = identity["agent_id"].as_str().unwrap_or_default().to_owned();
    let _job_containers = JobContainers(agent_id.clone());
    assert_private_to_bosun(&owners_and_modes(&host));
    // The shipped config's metrics listener answers inside the machine.
    assert!(host
        .sh_ok(
            "bash -c 'exec 3<>/dev/tcp/127.0.0.1/9464; \
             printf \"GET /readyz HTTP/1.0\\r\\n\\r\\n\" >&3; cat <&3'"
        )
        .starts_with("HTTP/1.0 200"));
    let job = enqueue(&data, "build");
    let status = wait_job_status(
        &data,
        &job,
        &["success", "fail", "canceled"],
        Duration::from_secs(90),
    );
    let log = job_log(&data, &job);
    assert_eq!(status, "success", "{log}");
    assert!(log.contains("hello from the package as "), "{log}");

    // Upgrade: the same package again keeps the config (a conffile) and restarts the agent.
    let pid = host.show(UNIT, "MainPID");
    host.sh_ok("dpkg -i /tmp/bosun.deb >/dev/null 2>&1 && rm /tmp/bosun.deb");
    host.wait_show(UNIT, "ActiveState", Duration::from_secs(30), |s| {
        s == "active"
    });
    assert_ne!(host.show(UNIT, "MainPID"), pid, "restarted");
    assert!(host
        .sh_ok("cat /etc/bosun/agent.toml")
        .contains(&format!("coordinator_url = \"{url}\"")));
    let again: serde_json::Value =
        serde_json::from_str(&host.sh_ok("cat /var/lib/bosun/agent.json")).expect("agent.json");
    assert_eq!(again["agent_id"].as_str(), Some(agent_id.as_str()));
}

//! A machine with a real systemd as PID 1: the `bosun/systemd` image booted in a container on
//! a rig's network, with the host's Docker socket, for installing the agent's unit exactly as
//! an operator would (`tests/it/systemd.rs`).

use super::{docker, exec, output, Rig, LABEL};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// The host engine's socket, bind-mounted into the machine so an agent inside drives it.
pub const DOCKER_SOCKET: &str = "/var/run/docker.sock";

pub struct SystemdHost {
    pub container: String,
}

impl SystemdHost {
    /// Boots `bosun/systemd` on the rig's network (labelled with the rig's run id, so it goes
    /// with the rig) and waits until systemd has finished starting up.
    pub fn boot(rig: &Rig, hostname: &str) -> SystemdHost {
        let name = format!("bosun-systemd-{}", rig.run_id);
        let socket = format!("{DOCKER_SOCKET}:{DOCKER_SOCKET}");
        let container = docker(&[
            "run",
            "-d",
            "--name",
            &name,
            "--hostname",
            hostname,
            "--label",
            &format!("{LABEL}={}", rig.run_id),
            "--network",
            &rig.network,
            // Without CAP_SYS_ADMIN systemd cannot build a unit's mount namespace and silently
            // runs it without ProtectSystem=, PrivateTmp=, ProtectHome=… ("assuming
            // containerized execution"), so the sandbox would go untested. One capability,
            // not --privileged (which this engine refuses anyway).
            "--cap-add",
            "SYS_ADMIN",
            // What systemd needs to boot unprivileged on a cgroup v1 engine.
            "--tmpfs",
            "/run",
            "--tmpfs",
            "/run/lock",
            "-v",
            "/sys/fs/cgroup:/sys/fs/cgroup:ro",
            "-v",
            &socket,
            &super::image("systemd"),
        ]);
        let host = SystemdHost { container };
        host.wait_booted(Duration::from_secs(60));
        host
    }

    /// `is-system-running` says `running` or `degraded` (a unit of the image that cannot work
    /// in a container is no reason to fail); `starting` and `initializing` are polled through.
    fn wait_booted(&self, timeout: Duration) {
        let t0 = Instant::now();
        loop {
            let out = self.sh("systemctl is-system-running");
            let state = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            if state == "running" || state == "degraded" {
                return;
            }
            assert!(
                t0.elapsed() < timeout,
                "systemd still `{state}` after {timeout:?}; failed units:\n{}\ncontainer log:\n{}",
                self.sh_ok("systemctl --failed --no-pager || true"),
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// `sh -c SCRIPT` as root in the machine, whatever its exit status.
    pub fn sh(&self, script: &str) -> Output {
        exec(&self.container, None, script)
    }

    /// `sh -c SCRIPT` as root, panicking with its output if it fails; trimmed stdout.
    pub fn sh_ok(&self, script: &str) -> String {
        let out = self.sh(script);
        assert!(
            out.status.success(),
            "in the systemd machine, `{script}` failed ({}):\nstdout:\n{}\nstderr:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// `systemctl show -p PROP --value UNIT`.
    pub fn show(&self, unit: &str, prop: &str) -> String {
        self.sh_ok(&format!("systemctl show -p {prop} --value {unit}"))
    }

    /// Polls `systemctl show` until `pred` holds for PROP; returns the value that did.
    pub fn wait_show(
        &self,
        unit: &str,
        prop: &str,
        timeout: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> String {
        let t0 = Instant::now();
        loop {
            let v = self.show(unit, prop);
            if pred(&v) {
                return v;
            }
            assert!(
                t0.elapsed() < timeout,
                "{unit}: {prop} still {v:?} after {timeout:?}\n{}",
                self.status(unit)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `systemctl status` and the unit's journal, for failure messages.
    pub fn status(&self, unit: &str) -> String {
        let out = self.sh(&format!(
            "systemctl status --no-pager --full {unit}; journalctl -u {unit} --no-pager -n 60"
        ));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The unit's journal, messages only.
    pub fn journal(&self, unit: &str) -> String {
        self.sh_ok(&format!("journalctl -u {unit} --no-pager -o cat"))
    }

    /// Polls the unit's journal until a message contains `needle` (journald stores what it
    /// receives asynchronously: a line logged just now may not be readable yet).
    pub fn wait_journal(&self, unit: &str, needle: &str) {
        let t0 = Instant::now();
        loop {
            if self.journal(unit).contains(needle) {
                return;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "{unit}: no `{needle}` in the journal after 10 s:\n{}",
                self.journal(unit)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn logs(&self) -> String {
        let out = output(Command::new("docker").args(["logs", "--tail", "100", &self.container]));
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }
}

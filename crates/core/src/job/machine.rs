//! `machine` jobs: a container that boots systemd as PID 1 (unprivileged: fresh tmpfs on
//! `/run`, the host's cgroup tree read-only), with a `circleci` user who may `sudo`. Steps
//! start once `systemctl is-system-running --wait` says the system is up.

use super::bootstrap::capture;
use super::resources::{Resources, Role};
use super::{JobSpec, SetupError, DEFAULT_MACHINE_IMAGE};
use crate::executor::{ContainerSpec, ExecSpec, Executor, NetworkMode};
use std::time::Duration;

/// The user steps of a `machine` job run as.
pub(super) const MACHINE_USER: &str = "circleci";

/// How long systemd may take to come up.
const BOOT_TIMEOUT: Duration = Duration::from_secs(120);

/// The local image a `machine:` image name maps to.
pub(super) fn local_image(spec: &JobSpec, name: &str) -> Result<String, SetupError> {
    if let Some(image) = spec.context.machine_images.get(name) {
        return Ok(image.clone());
    }
    if name == "default" {
        return Ok(DEFAULT_MACHINE_IMAGE.to_owned());
    }
    let mut known: Vec<&str> = spec
        .context
        .machine_images
        .keys()
        .map(String::as_str)
        .collect();
    known.push("default");
    Err(SetupError::UnknownMachineImage {
        name: name.to_owned(),
        known: known.join(", "),
    })
}

/// Create and start the machine; its container id once systemd says it is up.
pub(super) async fn boot(
    executor: &dyn Executor,
    resources: &Resources,
    spec: &JobSpec,
    image: &str,
    engine: Option<&crate::engine_proxy::JobEngine>,
) -> Result<String, SetupError> {
    let role = Role::Primary;
    let id = executor
        .create(&ContainerSpec {
            image: image.to_owned(),
            // systemd runs as root; the steps run as `circleci`.
            user: None,
            env: std::iter::once("container=docker".to_owned())
                .chain(
                    engine.map(|_| format!("DOCKER_HOST={}", crate::engine_proxy::docker_host())),
                )
                .collect(),
            labels: resources.labels(&role),
            network: spec
                .context
                .network
                .clone()
                .map_or(NetworkMode::Default, NetworkMode::Named),
            // The image's own command: /lib/systemd/systemd.
            entrypoint: None,
            cmd: None,
            stdin: false,
            init: false,
            // Its output is systemd's console: steps go through exec, not through it.
            unlogged: false,
            extra_hosts: Vec::new(),
            tmpfs: vec!["/run".to_owned(), "/run/lock".to_owned()],
            read_only_binds: vec!["/sys/fs/cgroup".to_owned()],
            // What systemd takes as "halt".
            stop_signal: Some("SIGRTMIN+3".to_owned()),
            // A machine's resource_class names a VM size, not limits
            // (docs/config-compatibility.md).
            limits: None,
            // A machine's checkout goes in through the engine (steps run through exec).
            work_tree: None,
            // systemd is PID 1: its files come through the archive, the executable with them.
            runtime: None,
            // The job's engine: a machine has Docker without setup_remote_docker.
            binds: engine
                .map(|e| {
                    vec![(
                        e.dir().display().to_string(),
                        crate::engine_proxy::CONTAINER_DIR.to_owned(),
                    )]
                })
                .unwrap_or_default(),
        })
        .await?;
    resources.track(role, &id);
    // systemd writes to the console; nobody reads it (its journal has it all).
    drop(executor.start(&id).await?);
    // For its first half second systemd's bus is not there and `--wait` does not wait
    // through that: ask again until it answers with a settled state.
    let boot = async {
        loop {
            let (_, out) = capture(
                executor,
                &id,
                ExecSpec {
                    cmd: vec![
                        "systemctl".into(),
                        "is-system-running".into(),
                        "--wait".into(),
                    ],
                    user: Some("0".into()),
                    ..Default::default()
                },
            )
            .await?;
            // Before systemd's manager answers, systemctl says `offline` (and that it cannot
            // reach the bus); `--wait` waits only once it answers.
            let text = String::from_utf8_lossy(&out);
            let state = text.lines().next().unwrap_or("").trim();
            if !matches!(
                state,
                "" | "offline" | "unknown" | "initializing" | "starting"
            ) && !text.contains("Failed to connect to bus")
            {
                return Ok::<_, SetupError>(out);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let out = tokio::time::timeout(BOOT_TIMEOUT, boot)
        .await
        .map_err(|_| {
            SetupError::MachineBoot(format!(
                "systemd was not up after {}s",
                BOOT_TIMEOUT.as_secs()
            ))
        })??;
    let state = String::from_utf8_lossy(&out)
        .lines()
        .next()
        .unwrap_or("")
        .trim()
        .to_owned();
    if let Some(engine) = engine {
        engine
            .serve()
            .map_err(|e| SetupError::Prepare(e.to_string()))?;
        // Tools that ignore DOCKER_HOST (and services of the machine) find the usual socket.
        let _ = capture(
            executor,
            &id,
            ExecSpec {
                cmd: vec![
                    "ln".into(),
                    "-sf".into(),
                    format!(
                        "{}/{}",
                        crate::engine_proxy::CONTAINER_DIR,
                        crate::engine_proxy::SOCKET_NAME
                    ),
                    "/run/docker.sock".into(),
                ],
                user: Some("0".into()),
                ..Default::default()
            },
        )
        .await;
    }
    match state.as_str() {
        // `degraded`: up, with a unit that failed (the job may not need it).
        "running" | "degraded" => Ok(id),
        other => {
            let (_, failed) = capture(
                executor,
                &id,
                ExecSpec {
                    cmd: vec!["systemctl".into(), "--failed".into(), "--no-pager".into()],
                    user: Some("0".into()),
                    ..Default::default()
                },
            )
            .await
            .unwrap_or((None, Vec::new()));
            Err(SetupError::MachineBoot(format!(
                "systemd says `{other}`\n{}\n  help: the image must boot systemd as PID 1 (see images/README.md, bosun/machine)",
                String::from_utf8_lossy(&failed).trim()
            )))
        }
    }
}

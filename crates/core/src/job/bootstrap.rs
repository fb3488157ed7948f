//! The primary container comes up: its main process says who it runs as, then takes the
//! job's files (`~/.ssh`, the step scripts, the working directory) in one write.

use super::archive::{once_stream, TarBuilder};
use super::{JobSpec, SetupError};
use crate::config::StepKind;
use crate::executor::{Attached, ExecSpec, Executor, Output, OutputStream};
use crate::ssh;
use futures_util::StreamExt;
use std::time::Duration;
use tokio::io::AsyncWriteExt;

/// What the container told us about its user, once, at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerUser {
    pub home: String,
    pub uid: u64,
    pub gid: u64,
    pub has_bash: bool,
}

/// Per-job scratch directory inside the container (step scripts, pid files).
pub(super) fn scratch_dir(job_id: &str) -> String {
    format!("/tmp/.bosun-{job_id}")
}

/// The file bash sources before every step (`$BASH_ENV`, also `$CIRCLE_SHELL_ENV`): empty at
/// start, writable by the job's user, in the scratch directory.
pub(super) fn bash_env_path(job_id: &str) -> String {
    format!("{}/bash_env", scratch_dir(job_id))
}

/// The directory holding the in-job `circleci` / `circleci-agent` command; steps find it first
/// on `PATH`.
pub(super) fn bin_dir(job_id: &str) -> String {
    format!("{}/bin", scratch_dir(job_id))
}

/// The line that tells who the container runs as: uid, gid, bash or not, `$HOME`.
const BANNER: &str = r#"printf 'bosun-ready %s %s %s %s\n' "$(id -u)" "$(id -g)" "$([ -x /bin/bash ] && echo bash || echo sh)" "${HOME:-/}""#;

/// The job container's main process: it announces who it runs as in one line, then takes
/// the files on stdin (`LENGTH RUNNER` on a line, then that many bytes of tar), then becomes
/// the step runner (`RUNNER __bosun-runner`, the in-job command the tar just brought; see
/// [`super::step_transport`]) on the same stdin, and when that cannot run or ends, idles until the
/// container is removed (steps then arrive through the engine's exec). The length keeps stdin
/// open past the tar. A shell loop rather than `sleep infinity`, which busybox lacks; the
/// engine's init reaps what background steps leave behind.
pub(super) fn main_process() -> Vec<String> {
    let script = format!(
        "{BANNER}\nif read -r n runner && head -c \"$n\" | tar -x -f - -C / 2>&1; then echo bosun-installed; \"$runner\" {arg}; echo bosun-runner-ended; else echo bosun-install-failed; fi\nexec </dev/null\nwhile :; do sleep 3600; done",
        arg = crate::runtime::cmd::step_runner::ARG
    );
    vec!["/bin/sh".into(), "-c".into(), script]
}

/// The job container's main process on a local engine: the in-job executable itself,
/// mounted read-only from the host ([`super::work_tree::runtime_copy`]), which speaks what
/// [`main_process`]'s shell speaks without starting a shell, `id`, `head`, or taking its own
/// copy through the setup archive (`crate::runtime::cmd::main_process`).
pub(super) fn mounted_main_process() -> Vec<String> {
    use crate::runtime::cmd::main_process::{ARG, MOUNTED_PATH};
    vec![MOUNTED_PATH.to_owned(), ARG.to_owned()]
}

/// How long the main process may take to announce itself or to take the files.
const MAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Read the output up to the line starting with `marker`; what came before it (e.g. tar's
/// complaints) is returned as the error when the marker line never comes.
pub(super) async fn main_line(
    output: &mut OutputStream,
    marker: &str,
) -> Result<String, SetupError> {
    main_line_keeping(output, marker, &mut Vec::new()).await
}

/// [`main_line`] over a buffer the caller keeps: on return it holds what came after the line.
async fn main_line_keeping(
    output: &mut OutputStream,
    marker: &str,
    buf: &mut Vec<u8>,
) -> Result<String, SetupError> {
    let read = async {
        loop {
            if let Some(start) = find_line(buf, marker) {
                if let Some(len) = buf[start..].iter().position(|b| *b == b'\n') {
                    let line = String::from_utf8_lossy(&buf[start..start + len]).into_owned();
                    buf.drain(..start + len + 1);
                    return Ok(line);
                }
            }
            match output.next().await {
                Some(Ok(Output::Stdout(b) | Output::Stderr(b))) => buf.extend_from_slice(&b),
                Some(Err(e)) => return Err(SetupError::Executor(e)),
                None => {
                    return Err(SetupError::Prepare(format!(
                        "the container's main process ended before it was ready: {}\n  help: the image needs /bin/sh and `id`, and `user:` must name a user the image knows",
                        String::from_utf8_lossy(buf).trim()
                    )))
                }
            }
        }
    };
    match tokio::time::timeout(MAIN_TIMEOUT, read).await {
        Ok(r) => r,
        Err(_) => Err(SetupError::Prepare(format!(
            "the container's main process gave no `{marker}` within {}s: {}",
            MAIN_TIMEOUT.as_secs(),
            String::from_utf8_lossy(buf).trim()
        ))),
    }
}

fn find_line(buf: &[u8], marker: &str) -> Option<usize> {
    let m = marker.as_bytes();
    (0..buf.len()).find(|&i| (i == 0 || buf[i - 1] == b'\n') && buf[i..].starts_with(m))
}

/// Parse the `bosun-ready UID GID SHELL HOME` line.
pub(super) fn parse_banner(line: &str) -> Result<ContainerUser, SetupError> {
    let bad = || {
        SetupError::Prepare(format!(
            "could not start a shell in the container: `{}`\n  help: the image needs /bin/sh and `id`, and `user:` must name a user the image knows",
            line.trim()
        ))
    };
    let rest = line
        .trim_end()
        .strip_prefix("bosun-ready ")
        .ok_or_else(bad)?;
    let mut parts = rest.splitn(4, ' ');
    let uid = parts.next().and_then(|p| p.parse().ok()).ok_or_else(bad)?;
    let gid = parts.next().and_then(|p| p.parse().ok()).ok_or_else(bad)?;
    let has_bash = parts.next().ok_or_else(bad)? == "bash";
    let home = parts
        .next()
        .filter(|h| !h.is_empty())
        .unwrap_or("/")
        .to_owned();
    Ok(ContainerUser {
        home,
        uid,
        gid,
        has_bash,
    })
}

/// Who `user` is in a running container, asked through exec (a `machine` job's PID 1 is
/// systemd, not our main process).
pub(super) async fn ask_user(
    executor: &dyn Executor,
    container: &str,
    user: Option<&str>,
) -> Result<ContainerUser, SetupError> {
    let (code, out) = capture(
        executor,
        container,
        ExecSpec {
            cmd: vec!["/bin/sh".into(), "-lc".into(), BANNER.into()],
            user: user.map(str::to_owned),
            ..Default::default()
        },
    )
    .await?;
    let text = String::from_utf8_lossy(&out);
    let line = text
        .lines()
        .find(|l| l.starts_with("bosun-ready "))
        .unwrap_or(text.trim());
    if code != Some(0) && !line.starts_with("bosun-ready ") {
        return Err(SetupError::Prepare(format!(
            "could not run a shell as {}: {}",
            user.unwrap_or("the image's user"),
            text.trim()
        )));
    }
    parse_banner(line)
}

/// Run a short command to its end; its exit code and its output (both streams).
pub(super) async fn capture(
    executor: &dyn Executor,
    container: &str,
    spec: ExecSpec,
) -> Result<(Option<i64>, Vec<u8>), SetupError> {
    let mut exec = executor.exec(container, spec).await?;
    let mut out = Vec::new();
    while let Some(item) = exec.output.next().await {
        match item? {
            Output::Stdout(b) | Output::Stderr(b) => out.extend_from_slice(&b),
        }
    }
    Ok((exec.exit.await?, out))
}

/// One upload at job start: `~/.ssh` (keys, config, known_hosts), the scratch directory with
/// every step's script, and the working directory, all owned by the job's user. Key bytes go
/// from memory into the tar stream: never into a file on the agent's disk, an argument or an
/// environment variable. With the main process attached, it goes to its `tar -x` on stdin
/// (one write, no extra request), and the main process then runs the steps (the runner comes
/// back); otherwise (or if that fails: no usable tar in the image, a directory the user may
/// not create) through the engine's archive upload, as root, and steps go through exec.
pub(super) async fn install_files(
    executor: &dyn Executor,
    spec: &JobSpec,
    container: &str,
    main: Option<Attached>,
    user: &ContainerUser,
    workdir: &str,
    mounted_runtime: bool,
) -> Result<Option<super::step_transport::StepTransport>, SetupError> {
    let mut tar = TarBuilder::new(user.uid, user.gid);
    let home = user.home.trim_end_matches('/');
    let ssh_dir = format!("{home}/.ssh");
    tar.dir(&ssh_dir, 0o700);
    let vcs_hosts = vcs_host_names(spec);
    let files = ssh::container_ssh_files(
        &spec.context.access.keys,
        &spec.context.access.known_hosts,
        &vcs_hosts,
    );
    for (name, bytes, mode) in &files.files {
        tar.file(&format!("{ssh_dir}/{name}"), bytes, *mode);
    }
    let scratch = scratch_dir(&spec.id);
    tar.dir(&scratch, 0o700);
    tar.file(&bash_env_path(&spec.id), b"", 0o644);
    // The in-job command: one static executable, two names; it finds the scratch directory
    // from where it lives.
    let bin = bin_dir(&spec.id);
    tar.dir(&bin, 0o755);
    if mounted_runtime {
        // The main process is the mounted executable: the job's command names it.
        tar.symlink(
            &format!("{bin}/circleci"),
            crate::runtime::cmd::main_process::MOUNTED_PATH,
        );
    } else {
        tar.file(
            &format!("{bin}/circleci"),
            crate::runtime::CIRCLECI_EXECUTABLE,
            0o755,
        );
    }
    tar.symlink(&format!("{bin}/circleci-agent"), "circleci");
    if let Some(timings) = &spec.timings {
        tar.file(
            &format!("{scratch}/{}", crate::runtime::cmd::TIMINGS_FILE),
            timings.as_bytes(),
            0o644,
        );
    }
    for (i, step) in spec.plan.steps.iter().enumerate() {
        if let StepKind::Run(run) = &step.kind {
            tar.file(
                &format!("{scratch}/step-{i}.sh"),
                run.command.as_bytes(),
                0o600,
            );
        }
    }
    tar.dir(workdir, 0o755);
    // The archive holds private keys: wiped from memory when it goes.
    let bytes = zeroize::Zeroizing::new(
        tar.finish()
            .map_err(|e| SetupError::Prepare(format!("building the setup archive: {e}")))?,
    );
    // The archive (or the job's mounted copy) holds its copy; an idle agent need not keep
    // the original's pages.
    if let Err(e) = crate::runtime::page_out(crate::runtime::CIRCLECI_EXECUTABLE) {
        tracing::debug!("could not page out the in-job executable: {e}");
    }
    let runner_path = format!("{bin}/circleci");
    let (via_stdin, runner) = match main {
        None => (false, None),
        Some(Attached {
            mut input,
            mut output,
        }) => {
            let sent = async {
                let head = format!("{} {runner_path}\n", bytes.len());
                input.write_all(head.as_bytes()).await?;
                input.write_all(&bytes).await?;
                input.flush().await
            };
            let mut buf = Vec::new();
            let installed = match tokio::join!(
                sent,
                main_line_keeping(&mut output, "bosun-install", &mut buf)
            ) {
                (Ok(()), Ok(line)) => line == "bosun-installed",
                _ => false,
            };
            let runner = if installed {
                // The runner's ready line, or the shell's word that it could not run it.
                let why = match main_line_keeping(&mut output, "bosun-runner", &mut buf).await {
                    Ok(line) if line == crate::runtime::cmd::step_runner::READY => Ok(()),
                    Ok(line) => Err(line),
                    Err(e) => Err(e.to_string()),
                };
                match why {
                    Ok(()) => Some(super::step_transport::StepTransport::new(
                        container, input, output, buf,
                    )),
                    Err(why) => {
                        tracing::debug!(%container, "no step runner ({why}): steps go through the engine's exec");
                        None
                    }
                }
            } else {
                None
            };
            (installed, runner)
        }
    };
    if !via_stdin {
        tracing::debug!("installing files through the engine's archive upload");
        executor
            .upload_tar(container, "/", once_stream(&bytes))
            .await?;
    }
    Ok(runner)
}

/// The host names the container's ssh config covers: those of the job's repository, plus
/// both Bitbucket names (private dependencies usually live there).
pub(super) fn vcs_host_names(spec: &JobSpec) -> Vec<String> {
    let mut hosts = vec!["bitbucket.org".to_owned(), "ssh.bitbucket.org".to_owned()];
    if let Some(u) = spec
        .context
        .source
        .as_ref()
        .and_then(|s| ssh::parse_ssh_url(&s.url))
    {
        if !hosts.contains(&u.host) {
            hosts.push(u.host);
        }
    }
    hosts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn banner_parsing() {
        let u = parse_banner("bosun-ready 3434 3434 bash /home/circle ci\n").expect("parses");
        assert_eq!(
            (u.uid, u.gid, u.has_bash, u.home.as_str()),
            (3434, 3434, true, "/home/circle ci")
        );
        let u = parse_banner("bosun-ready 0 0 sh ").expect("empty home");
        assert_eq!(u.home, "/");
        assert!(parse_banner("unable to find user nobody").is_err());
    }
}

//! An SSH channel bridged to an exec in the job's primary container: the channel's requests
//! (`pty-req`, `window-change`, `shell` / `exec` / `subsystem sftp`, data, EOF) drive the exec;
//! its output, exit status, EOF and close come back. A direct-tcpip channel is an exec too: a
//! relay to a port on the job's own `localhost`.
//!
//! The `sftp` subsystem is the in-job executable's SFTP server (`circleci __bosun-sftp`, see
//! `crate::runtime::cmd::sftp`), run directly — no shell, no `sftp-server` needed in the image —
//! as the step user: every file operation is that user's system call in the container, and
//! the packets a client sends are parsed there, never in the agent.

use crate::executor::{ExecSpec, Executor, Interactive, Output, TtySize};
use crate::job::Attachment;
use futures_util::StreamExt;
use russh::server::Msg;
use russh::{Channel, ChannelMsg};
use std::sync::Arc;
use tokio::io::AsyncWriteExt;

/// An interactive shell: bash where the image has it (reads `~/.bashrc`), else sh.
const SHELL: &str = "if command -v bash >/dev/null 2>&1; then exec bash -i; fi; exec sh -i";
/// A command line, as sshd runs it: through a shell (bash where there is one).
const COMMAND: &str =
    "if command -v bash >/dev/null 2>&1; then exec bash -c \"$1\"; fi; exec sh -c \"$1\"";
/// A TCP relay to the job's `localhost:$1` (bash's /dev/tcp: images without bash cannot forward).
/// It ends when the server closes its side (the client's input is then cut off).
const RELAY: &str =
    "exec 3<>\"/dev/tcp/127.0.0.1/$1\" || exit 1; cat <&0 >&3 & cat <&3; kill $! 2>/dev/null; exit 0";

fn spec(job: &Attachment, cmd: Vec<String>, term: Option<&str>) -> ExecSpec {
    let mut env: Vec<String> = job.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
    if let Some(t) = term {
        env.push(format!("TERM={t}"));
    }
    ExecSpec {
        cmd,
        env,
        user: job.user.clone(),
        working_dir: Some(job.workdir.clone()),
    }
}

/// The SFTP server: the in-job executable itself, started without a shell.
fn sftp(job: &Attachment) -> Vec<String> {
    vec![
        job.in_job_command(),
        crate::runtime::cmd::sftp::ARG.to_owned(),
    ]
}

fn sh(script: &str, args: &[&str]) -> Vec<String> {
    let mut v = vec![
        "/bin/sh".to_owned(),
        "-c".to_owned(),
        script.to_owned(),
        "bosun-ssh".to_owned(),
    ];
    v.extend(args.iter().map(|a| (*a).to_owned()));
    v
}

fn size(cols: u32, rows: u32) -> TtySize {
    let clamp = |n: u32, d: u16| u16::try_from(n).ok().filter(|n| *n > 0).unwrap_or(d);
    TtySize {
        cols: clamp(cols, 80),
        rows: clamp(rows, 24),
    }
}

/// A session channel: waits for its program, runs it, relays until it ends.
pub(super) async fn session_channel(
    channel: Channel<Msg>,
    job: Arc<Attachment>,
    executor: Arc<dyn Executor>,
) {
    let (mut read, write) = channel.split();
    let write = Arc::new(write);
    let mut pty: Option<(String, TtySize)> = None;
    let mut input: Option<tokio::sync::mpsc::Sender<Option<bytes::Bytes>>> = None;
    let mut resize: Option<crate::executor::Resizer> = None;
    let mut tty_running = false;
    loop {
        let msg = tokio::select! {
            m = read.wait() => m,
            () = job.released.cancelled() => {
                let _ = write
                    .extended_data_bytes(1, &b"\r\nbosun: the job was released; closing the session\r\n"[..])
                    .await;
                let _ = write.close().await;
                return;
            }
        };
        let Some(msg) = msg else { return };
        let cmd = match msg {
            ChannelMsg::RequestPty {
                term,
                col_width,
                row_height,
                ..
            } => {
                pty = Some((term, size(col_width, row_height)));
                continue;
            }
            ChannelMsg::WindowChange {
                col_width,
                row_height,
                ..
            } => {
                let s = size(col_width, row_height);
                match &resize {
                    Some(r) => {
                        if let Err(e) = r(s).await {
                            tracing::debug!("SSH gateway: resize: {e}");
                        }
                    }
                    None => {
                        if let Some(p) = &mut pty {
                            p.1 = s;
                        }
                    }
                }
                continue;
            }
            ChannelMsg::Data { data } => {
                if let Some(tx) = &input {
                    if tx.send(Some(data)).await.is_err() {
                        input = None;
                    }
                }
                continue;
            }
            ChannelMsg::Eof => {
                // A terminal has no end of input (as with sshd): the engine would stop
                // streaming the program's output once its terminal's input closed.
                if !tty_running {
                    if let Some(tx) = input.take() {
                        let _ = tx.send(None).await;
                    }
                }
                continue;
            }
            ChannelMsg::Close => return,
            ChannelMsg::RequestShell { .. } if resize.is_none() => Some((sh(SHELL, &[]), true)),
            ChannelMsg::Exec { command, .. } if resize.is_none() => {
                let command = String::from_utf8_lossy(&command).into_owned();
                Some((sh(COMMAND, &[&command]), true))
            }
            ChannelMsg::RequestSubsystem { name, .. } if resize.is_none() && name == "sftp" => {
                Some((sftp(&job), false))
            }
            _ => None,
        };
        let Some((cmd, may_tty)) = cmd else { continue };
        let tty = pty.as_ref().filter(|_| may_tty);
        let spec = spec(&job, cmd, tty.map(|(t, _)| t.as_str()));
        match executor
            .exec_interactive(&job.container, spec, tty.map(|(_, s)| *s))
            .await
        {
            Ok(running) => {
                tty_running = tty.is_some();
                resize = Some(Arc::clone(&running.resize));
                input = Some(pump(running, Arc::clone(&write)));
            }
            Err(e) => {
                tracing::warn!(job = %job.job_id, "SSH gateway: exec: {e}");
                let _ = write
                    .extended_data_bytes(1, format!("bosun: cannot start the session: {e}\r\n"))
                    .await;
                let _ = write.exit_status(255).await;
                let _ = write.eof().await;
                let _ = write.close().await;
                return;
            }
        }
    }
}

/// A direct-tcpip channel: a relay to `localhost:port` inside the job.
pub(super) async fn forward_channel(
    channel: Channel<Msg>,
    job: Arc<Attachment>,
    executor: Arc<dyn Executor>,
    port: u16,
) {
    let (mut read, write) = channel.split();
    let write = Arc::new(write);
    let cmd = vec![
        "bash".to_owned(),
        "-c".to_owned(),
        RELAY.to_owned(),
        "bosun-ssh".to_owned(),
        port.to_string(),
    ];
    let spec = spec(&job, cmd, None);
    let input = match executor.exec_interactive(&job.container, spec, None).await {
        Ok(running) => pump(running, Arc::clone(&write)),
        Err(e) => {
            tracing::warn!(job = %job.job_id, "SSH gateway: forward: {e}");
            let _ = write.close().await;
            return;
        }
    };
    loop {
        let msg = tokio::select! {
            m = read.wait() => m,
            () = job.released.cancelled() => None,
        };
        match msg {
            Some(ChannelMsg::Data { data }) => {
                if input.send(Some(data)).await.is_err() {
                    return;
                }
            }
            Some(ChannelMsg::Eof) => {
                let _ = input.send(None).await;
            }
            None | Some(ChannelMsg::Close) => {
                let _ = write.close().await;
                return;
            }
            Some(_) => {}
        }
    }
}

/// Start moving bytes: the returned sender feeds the program's stdin (`None`: end of input);
/// its output goes to the channel, then its exit status, EOF and close.
fn pump(
    running: Interactive,
    write: Arc<russh::ChannelWriteHalf<Msg>>,
) -> tokio::sync::mpsc::Sender<Option<bytes::Bytes>> {
    let Interactive {
        mut input,
        mut output,
        exit,
        ..
    } = running;
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Option<bytes::Bytes>>(64);
    tokio::spawn(async move {
        while let Some(Some(data)) = rx.recv().await {
            if input.write_all(&data).await.is_err() || input.flush().await.is_err() {
                break;
            }
        }
        let _ = input.shutdown().await;
    });
    tokio::spawn(async move {
        while let Some(item) = output.next().await {
            let sent = match item {
                Ok(Output::Stdout(b)) => write.data_bytes(b).await,
                Ok(Output::Stderr(b)) => write.extended_data_bytes(1, b).await,
                Err(e) => {
                    tracing::debug!("SSH gateway: output: {e}");
                    break;
                }
            };
            if sent.is_err() {
                break;
            }
        }
        drop(output);
        match exit.await {
            Ok(Some(code)) => {
                let code = u32::try_from(code).unwrap_or(255);
                let _ = write.exit_status(code).await;
            }
            Ok(None) => {}
            Err(e) => tracing::debug!("SSH gateway: exit status: {e}"),
        }
        let _ = write.eof().await;
        let _ = write.close().await;
    });
    tx
}

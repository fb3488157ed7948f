//! The agent's side of the step runner (`crate::runtime::cmd::step_runner`): the primary
//! container's main process, once the job's files are in, runs the `run` steps as its own
//! children, and this sends it each step over the attach stream and hands the step's output
//! and exit back in the same shape an engine exec has ([`Exec`]), so `run_step` cannot tell
//! them apart. One reader task routes the frames to the steps running at once (background
//! steps beside the others).

use crate::executor::{Exec, ExecSpec, ExecutorError, Output, OutputStream};
use crate::runtime::cmd::step_runner::{self as wire, Run};
use bytes::{Bytes, BytesMut};
use futures_util::{FutureExt, StreamExt};
use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};

/// A step's output chunks buffered between the reader and the step (each up to 64 KiB):
/// beyond that the reader waits, and the runner's pipes fill, as with an engine exec.
const STEP_BUFFER: usize = 16;

struct Route {
    started: Option<oneshot::Sender<Result<(), String>>>,
    output: Option<mpsc::Sender<Result<Output, ExecutorError>>>,
    exit: Option<oneshot::Sender<i64>>,
}

#[derive(Default)]
struct Routes {
    by_id: HashMap<u32, Route>,
    /// Why the runner can no longer be used (its stream ended or broke); new steps go to the
    /// engine's exec instead.
    broken: Option<String>,
    /// A step's exit came with the halt file present (`circleci step halt`).
    halt_seen: bool,
}

pub struct StepTransport {
    container: String,
    input: tokio::sync::Mutex<Pin<Box<dyn AsyncWrite + Send>>>,
    routes: Arc<Mutex<Routes>>,
    next_id: AtomicU32,
    reader: tokio::task::JoinHandle<()>,
}

impl StepTransport {
    /// Take over the main process's attach stream after its ready line; `rest` is what was
    /// read past that line.
    pub fn new(
        container: &str,
        input: Pin<Box<dyn AsyncWrite + Send>>,
        output: OutputStream,
        rest: Vec<u8>,
    ) -> StepTransport {
        let routes = Arc::new(Mutex::new(Routes::default()));
        let reader = tokio::spawn(read_frames(
            container.to_owned(),
            output,
            rest,
            Arc::clone(&routes),
        ));
        StepTransport {
            container: container.to_owned(),
            input: tokio::sync::Mutex::new(input),
            routes,
            next_id: AtomicU32::new(1),
            reader,
        }
    }

    /// Why new steps cannot go through the runner, if they cannot.
    pub fn broken(&self) -> Option<String> {
        lock(&self.routes).broken.clone()
    }

    /// Whether `circleci step halt` had been run when a step's exit came; `None` when the
    /// runner is broken (then ask the engine).
    pub fn halt_seen(&self) -> Option<bool> {
        let r = lock(&self.routes);
        r.broken.is_none().then_some(r.halt_seen)
    }

    /// Start a command in the container as its main process's user (`spec.user` is not
    /// looked at: the caller sends only steps of that user).
    pub async fn exec(&self, spec: ExecSpec) -> Result<Exec, ExecutorError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (started_tx, started_rx) = oneshot::channel();
        let (output_tx, output_rx) = mpsc::channel(STEP_BUFFER);
        let (exit_tx, exit_rx) = oneshot::channel();
        {
            let mut routes = lock(&self.routes);
            if let Some(why) = &routes.broken {
                return Err(self.error("step", why.clone()));
            }
            routes.by_id.insert(
                id,
                Route {
                    started: Some(started_tx),
                    output: Some(output_tx),
                    exit: Some(exit_tx),
                },
            );
        }
        let run = Run {
            argv: spec.cmd,
            env: spec.env,
            dir: spec.working_dir,
        };
        let frame = wire::encode(wire::RUN, id, &run.encode());
        let sent = {
            let mut input = self.input.lock().await;
            match input.write_all(&frame).await {
                Ok(()) => input.flush().await,
                Err(e) => Err(e),
            }
        };
        if let Err(e) = sent {
            lock(&self.routes).by_id.remove(&id);
            return Err(self.error("step", format!("could not send the step: {e}")));
        }
        match started_rx.await {
            Ok(Ok(())) => {}
            Ok(Err(why)) => return Err(self.error("step start", why)),
            Err(_) => {
                let why = self
                    .broken()
                    .unwrap_or_else(|| "the runner went away".into());
                return Err(self.error("step start", why));
            }
        }
        let output = futures_util::stream::unfold(output_rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        })
        .boxed();
        let exit = async move { Ok(exit_rx.await.ok()) }.boxed();
        Ok(Exec { output, exit })
    }

    fn error(&self, what: &'static str, detail: String) -> ExecutorError {
        ExecutorError::Protocol {
            target: self.container.clone(),
            what,
            detail,
        }
    }
}

impl Drop for StepTransport {
    fn drop(&mut self) {
        // The attach stream closes with `input`; the runner ends on it and the main process
        // idles until the container is removed.
        self.reader.abort();
    }
}

fn lock(routes: &Mutex<Routes>) -> std::sync::MutexGuard<'_, Routes> {
    routes.lock().unwrap_or_else(|p| p.into_inner())
}

async fn read_frames(
    container: String,
    mut output: OutputStream,
    rest: Vec<u8>,
    routes: Arc<Mutex<Routes>>,
) {
    // Payloads leave this buffer as `Bytes` without a copy (a flood is 64 KiB frames).
    let mut buf = BytesMut::from(rest.as_slice());
    let why = loop {
        match wire::whole_frame(&buf) {
            Ok(Some((kind, id, len))) => {
                let mut frame = buf.split_to(wire::HEADER + len);
                let payload = frame.split_off(wire::HEADER).freeze();
                route(&routes, kind, id, payload).await;
                continue;
            }
            Ok(None) => {}
            // The main process's shell speaks again only when the runner has gone.
            Err(_) if buf.starts_with(b"bosun-runner-ended") => {
                break "the step runner ended (killed by a step?)".to_owned()
            }
            Err(e) => break format!("the runner's stream broke: {e}"),
        }
        match output.next().await {
            Some(Ok(Output::Stdout(b))) => buf.extend_from_slice(&b),
            // The runner's own complaints (it writes frames only to stdout).
            Some(Ok(Output::Stderr(b))) => {
                tracing::warn!(%container, "step runner: {}", String::from_utf8_lossy(&b).trim());
            }
            Some(Err(e)) => break format!("the runner's stream failed: {e}"),
            None => break "the runner's stream ended".to_owned(),
        }
    };
    tracing::debug!(%container, "step runner unusable: {why}");
    // Every step still running learns it, with its output cut here and no exit code.
    let running: Vec<Route> = {
        let mut r = lock(&routes);
        r.broken = Some(why.clone());
        r.by_id.drain().map(|(_, route)| route).collect()
    };
    for mut route in running {
        if let Some(tx) = route.started.take() {
            let _ = tx.send(Err(why.clone()));
        }
        if let Some(tx) = route.output.take() {
            let err = ExecutorError::Protocol {
                target: container.clone(),
                what: "step output",
                detail: why.clone(),
            };
            let _ = tx.send(Err(err)).await;
        }
    }
}

async fn route(routes: &Mutex<Routes>, kind: u8, id: u32, payload: Bytes) {
    match kind {
        wire::STARTED | wire::FAILED => {
            let result = if kind == wire::STARTED {
                Ok(())
            } else {
                Err(String::from_utf8_lossy(&payload).into_owned())
            };
            let tx = {
                let mut r = lock(routes);
                let tx = r.by_id.get_mut(&id).and_then(|r| r.started.take());
                // A step that did not start has nothing more coming.
                if result.is_err() {
                    r.by_id.remove(&id);
                }
                tx
            };
            if let Some(tx) = tx {
                let _ = tx.send(result);
            }
        }
        wire::STDOUT | wire::STDERR => {
            let tx = lock(routes).by_id.get(&id).and_then(|r| r.output.clone());
            let item = if kind == wire::STDOUT {
                Output::Stdout(payload)
            } else {
                Output::Stderr(payload)
            };
            // A step whose reader has gone (it was abandoned) loses its output, no one else.
            if let Some(tx) = tx {
                let _ = tx.send(Ok(item)).await;
            }
        }
        wire::EXIT => {
            let route = {
                let mut r = lock(routes);
                r.halt_seen |= payload.get(4) == Some(&1);
                r.by_id.remove(&id)
            };
            let code = payload
                .get(..4)
                .and_then(|b| <[u8; 4]>::try_from(b).ok())
                .map(i32::from_be_bytes)
                .ok_or(());
            if let (Some(mut route), Ok(code)) = (route, code) {
                // Dropping the output sender ends the step's stream; then its exit.
                route.output.take();
                if let Some(tx) = route.exit.take() {
                    let _ = tx.send(i64::from(code));
                }
            }
        }
        // RUN goes the other way; a runner never sends it.
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    //! The agent's side against the real runner loop (`serve`) over pipes, with real child
    //! processes: what Docker would carry is only the byte stream between them.
    use super::*;
    use crate::runtime::cmd::step_runner::serve;

    /// A runner serving on pipes in a thread; the client's halves.
    async fn runner_on_pipes() -> StepTransport {
        let (agent_to_runner_r, agent_to_runner_w) = std::io::pipe().expect("pipe");
        let (runner_to_agent_r, runner_to_agent_w) = std::io::pipe().expect("pipe");
        std::thread::spawn(move || serve(agent_to_runner_r, Box::new(runner_to_agent_w)));
        let input: Pin<Box<dyn AsyncWrite + Send>> = Box::pin(tokio::fs::File::from_std(
            std::fs::File::from(std::os::fd::OwnedFd::from(agent_to_runner_w)),
        ));
        let reader = std::fs::File::from(std::os::fd::OwnedFd::from(runner_to_agent_r));
        let mut output: OutputStream =
            tokio_util::io::ReaderStream::new(tokio::fs::File::from_std(reader))
                .map(|r| Ok(Output::Stdout(r.expect("read"))))
                .boxed();
        // The ready line comes first, as from the container; what follows it is kept.
        let want = format!("{}\n", wire::READY);
        let mut rest = Vec::new();
        while rest.len() < want.len() {
            match output.next().await {
                Some(Ok(Output::Stdout(b))) => rest.extend_from_slice(&b),
                other => panic!("unexpected {other:?}"),
            }
        }
        assert!(rest.starts_with(want.as_bytes()));
        rest.drain(..want.len());
        StepTransport::new("test", input, output, rest)
    }

    async fn run(runner: &StepTransport, cmd: &[&str]) -> (Vec<u8>, Vec<u8>, Option<i64>) {
        let mut exec = runner
            .exec(ExecSpec {
                cmd: cmd.iter().map(|s| (*s).to_owned()).collect(),
                env: vec!["GREETING=hello there".into()],
                working_dir: Some("/tmp".into()),
                user: None,
            })
            .await
            .expect("started");
        let (mut out, mut err) = (Vec::new(), Vec::new());
        while let Some(item) = exec.output.next().await {
            match item.expect("output") {
                Output::Stdout(b) => out.extend_from_slice(&b),
                Output::Stderr(b) => err.extend_from_slice(&b),
            }
        }
        (out, err, exec.exit.await.expect("exit"))
    }

    #[tokio::test]
    async fn steps_run_with_their_env_dir_streams_and_exit_codes() {
        let runner = runner_on_pipes().await;
        let (out, err, code) = run(
            &runner,
            &[
                "/bin/sh",
                "-c",
                "echo \"$GREETING from $(pwd)\"; echo oops >&2; exit 3",
            ],
        )
        .await;
        assert_eq!(String::from_utf8_lossy(&out), "hello there from /tmp\n");
        assert_eq!(String::from_utf8_lossy(&err), "oops\n");
        assert_eq!(code, Some(3));
        // Killed by a signal: 128 + the signal, as the engine reports an exec's.
        let (_, _, code) = run(&runner, &["/bin/sh", "-c", "kill -9 $$"]).await;
        assert_eq!(code, Some(137));
        // Its own process group, so stopping the step reaches what it started.
        let (out, _, _) = run(
            &runner,
            &["/bin/sh", "-c", "cut -d' ' -f5 /proc/$$/stat; echo $$"],
        )
        .await;
        let text = String::from_utf8_lossy(&out);
        let mut lines = text.split_whitespace();
        assert_eq!(lines.next(), lines.next(), "pgid == pid: {text}");
    }

    #[tokio::test]
    async fn a_command_that_cannot_start_is_an_error_and_the_runner_goes_on() {
        let runner = runner_on_pipes().await;
        let e = runner
            .exec(ExecSpec {
                cmd: vec!["/nonexistent/tool".into()],
                ..Default::default()
            })
            .await
            .err()
            .expect("refused");
        assert!(e.to_string().contains("/nonexistent/tool"), "{e}");
        let e = runner
            .exec(ExecSpec {
                cmd: vec!["/bin/true".into()],
                working_dir: Some("/nonexistent/dir".into()),
                ..Default::default()
            })
            .await
            .err()
            .expect("refused");
        assert!(
            e.to_string()
                .contains("the working directory /nonexistent/dir does not exist"),
            "{e}"
        );
        let (out, _, code) = run(&runner, &["/bin/echo", "still here"]).await;
        assert_eq!((out.as_slice(), code), (&b"still here\n"[..], Some(0)));
    }

    #[tokio::test]
    async fn steps_at_once_keep_their_output_apart() {
        let runner = Arc::new(runner_on_pipes().await);
        let script = |tag: &str| format!("for i in $(seq 1 200); do echo {tag}$i; done");
        let (sa, sb) = (script("a"), script("b"));
        let (ca, cb) = (
            ["/bin/sh", "-c", sa.as_str()],
            ["/bin/sh", "-c", sb.as_str()],
        );
        let (a, b) = tokio::join!(run(&runner, &ca), run(&runner, &cb));
        let want = |tag: &str| (1..=200).map(|i| format!("{tag}{i}\n")).collect::<String>();
        assert_eq!(String::from_utf8_lossy(&a.0), want("a"));
        assert_eq!(String::from_utf8_lossy(&b.0), want("b"));
    }

    #[tokio::test]
    async fn garbage_in_the_stream_fails_running_steps_and_sends_new_ones_elsewhere() {
        // A runner that starts a step and then writes garbage (what a hostile process could
        // do if it reached the attach stream).
        let (mut to_agent, from_runner) = tokio::io::duplex(1024);
        let (to_runner, mut runner_in) = tokio::io::duplex(1024);
        let output: OutputStream = tokio_util::io::ReaderStream::new(from_runner)
            .map(|r| Ok(Output::Stdout(r.expect("read"))))
            .boxed();
        let runner = StepTransport::new("test", Box::pin(to_runner), output, Vec::new());
        let step = tokio::spawn(async move {
            let r = runner
                .exec(ExecSpec {
                    cmd: vec!["true".into()],
                    ..Default::default()
                })
                .await;
            (r.map(|_| ()), runner)
        });
        // The RUN first (as a runner would see it), then the answer.
        let mut got = Vec::new();
        let run = loop {
            if let Some(frame) = wire::decode(&mut got).expect("a frame") {
                break frame;
            }
            let mut chunk = [0u8; 256];
            let n = tokio::io::AsyncReadExt::read(&mut runner_in, &mut chunk)
                .await
                .expect("read");
            got.extend_from_slice(&chunk[..n]);
        };
        assert_eq!(run.kind, wire::RUN);
        tokio::io::AsyncWriteExt::write_all(
            &mut to_agent,
            &wire::encode(wire::STARTED, run.id, &[]),
        )
        .await
        .expect("write");
        let (started, runner) = step.await.expect("task");
        assert!(started.is_ok());
        tokio::io::AsyncWriteExt::write_all(&mut to_agent, &[0xee; 32])
            .await
            .expect("write");
        for _ in 0..100 {
            if runner.broken().is_some() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        let why = runner.broken().expect("marked broken");
        assert!(why.contains("unknown frame kind"), "{why}");
        assert!(runner.exec(ExecSpec::default()).await.is_err());
    }
}

//! A recording, programmable [`Executor`] for tests of the job lifecycle without an engine
//! (after youki's `Syscall` test double): every call is recorded in order, any call can be
//! told to fail, and commands answer from a script.
//!
//! It plays the parts the job core relies on: a primary's main process that prints the
//! `bosun-ready` banner and takes the files on stdin (or refuses them, to exercise the
//! archive-upload fallback), execs whose output and exit code come from [`Script`], service
//! containers that keep running (or end at once, to exercise the early-exit report), and
//! removal that makes a container's output end.

use super::{
    Attached, ByteStream, ContainerSpec, Exec, ExecSpec, Executor, ExecutorError, ImageInfo,
    Interactive, Output, ResourceKind, TarStream, TtySize,
};
use bytes::Bytes;
use futures_util::{FutureExt, StreamExt};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio_util::sync::CancellationToken;

/// One call the job made, as recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    ImageInfo(String),
    Create {
        id: String,
        spec_image: String,
    },
    Start(String),
    Wait(String),
    Upload {
        container: String,
        dest: String,
    },
    Download {
        container: String,
        path: String,
    },
    Exec {
        container: String,
        cmd: String,
    },
    /// An interactive exec: its command line and terminal size.
    ExecInteractive {
        container: String,
        cmd: String,
        tty: Option<TtySize>,
    },
    Remove(String),
    Pause(String),
    Unpause(String),
    CreateNetwork(String),
    RemoveNetwork(String),
    RemoveVolume(String),
    RemoveImage(String),
    List(ResourceKind),
}

/// Which call to make fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    ImageInfo,
    Create,
    Start,
    Upload,
    Exec,
    Remove,
}

/// How an exec whose command line contains `pattern` answers.
#[derive(Debug, Clone)]
pub struct Reply {
    pub pattern: String,
    pub stdout: Vec<u8>,
    /// Written to stderr just before `stdout`, in the same instant (both frames ready at
    /// once, then the end: the order a short command's last output arrives in).
    pub stderr: Vec<u8>,
    pub exit: i64,
    /// Output comes only after this long (a slow step).
    pub delay: Duration,
    /// Never ends by itself: only a removal (or the job stopping it) ends it.
    pub hang: bool,
}

/// What the double answers; set before the job runs.
#[derive(Debug, Clone, Default)]
pub struct Script {
    /// Images that are "not in the engine".
    pub missing_images: HashSet<String>,
    /// `(op, nth)`: the nth call (0-based) of `op` fails.
    pub fail: Vec<(Op, usize)>,
    /// The main process refuses the files on stdin (no usable tar in the image).
    pub refuse_stdin_files: bool,
    /// Service images whose container ends at once with this code and output.
    pub exiting_services: HashMap<String, (i64, Vec<u8>)>,
    /// Exec answers, first match wins; unmatched commands succeed silently.
    pub replies: Vec<Reply>,
    /// The banner's user: uid, gid, home.
    pub user: Option<(u64, u64, String)>,
    /// An exec whose command line contains this panics (a bug inside a step's task).
    pub panic_on_exec: Option<String>,
    /// A start answers only after this long (a slow image: a ready container still being
    /// made when the agent stops).
    pub start_delay: Duration,
}

#[derive(Default)]
struct State {
    calls: Vec<Call>,
    counts: HashMap<Op, usize>,
    next_id: usize,
    images: HashMap<String, String>,
    live: HashMap<String, CancellationToken>,
    /// Hanging execs by (container, `step-N`): the job's stop script for that step ends them.
    stoppable: HashMap<(String, String), CancellationToken>,
    specs: HashMap<String, ContainerSpec>,
    /// Registry credentials each image was asked for with.
    pull_auth: Vec<(String, super::RegistryAuth)>,
}

/// The double. Clone the `Arc` to keep looking at it after the job took it.
#[derive(Default)]
pub struct Recording {
    script: Script,
    state: Mutex<State>,
    /// Terminal sizes interactive execs were resized to, in order.
    resizes: Arc<Mutex<Vec<TtySize>>>,
}

impl Recording {
    pub fn new(script: Script) -> Arc<Self> {
        Arc::new(Self {
            script,
            state: Mutex::default(),
            resizes: Arc::default(),
        })
    }

    /// Terminal sizes interactive execs were resized to, in order.
    pub fn resizes(&self) -> Vec<TtySize> {
        self.resizes.lock().map(|r| r.clone()).unwrap_or_default()
    }

    pub fn calls(&self) -> Vec<Call> {
        self.lock().calls.clone()
    }

    /// Containers created and not removed.
    pub fn live(&self) -> Vec<String> {
        let mut v: Vec<String> = self.lock().live.keys().cloned().collect();
        v.sort();
        v
    }

    /// The spec a container was created with.
    /// The images asked for with registry credentials, and those credentials.
    pub fn pull_auth(&self) -> Vec<(String, super::RegistryAuth)> {
        self.lock().pull_auth.clone()
    }

    pub fn spec_of(&self, id: &str) -> Option<ContainerSpec> {
        self.lock().specs.get(id).cloned()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Record a call; fail it if the script says so.
    fn enter(&self, op: Option<Op>, call: Call) -> Result<(), ExecutorError> {
        let mut st = self.lock();
        st.calls.push(call.clone());
        let Some(op) = op else { return Ok(()) };
        let n = st.counts.entry(op).or_insert(0);
        let nth = *n;
        *n += 1;
        if self.script.fail.contains(&(op, nth)) {
            return Err(ExecutorError::Protocol {
                target: format!("{call:?}"),
                what: "scripted failure",
                detail: format!("{op:?} call {nth} fails"),
            });
        }
        Ok(())
    }

    fn ended(&self, container: &str) -> CancellationToken {
        self.lock().live.get(container).cloned().unwrap_or_else(|| {
            let t = CancellationToken::new();
            t.cancel();
            t
        })
    }
}

/// `step-N` in a step's command line (its script or its pid file).
fn step_marker(cmd: &str) -> Option<String> {
    let at = cmd.find("/step-")? + 1;
    let digits: String = cmd[at + 5..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    (!digits.is_empty()).then(|| format!("step-{digits}"))
}

fn out(b: &[u8]) -> Result<Output, ExecutorError> {
    Ok(Output::Stdout(Bytes::copy_from_slice(b)))
}

#[async_trait::async_trait]
impl Executor for Recording {
    /// The double's containers see none of this host's files: every job takes the tar
    /// stream, as against a remote engine.
    fn shares_host_paths(&self) -> bool {
        false
    }
    async fn image_info(
        &self,
        image: &str,
        auth: Option<&super::RegistryAuth>,
        _progress: super::PullProgress<'_>,
    ) -> Result<ImageInfo, ExecutorError> {
        self.enter(Some(Op::ImageInfo), Call::ImageInfo(image.to_owned()))?;
        if let Some(a) = auth {
            self.lock().pull_auth.push((image.to_owned(), a.clone()));
        }
        if self.script.missing_images.contains(image) {
            return Err(ExecutorError::ImageMissing {
                image: image.to_owned(),
                reason: "not in the double's engine".to_owned(),
            });
        }
        Ok(ImageInfo::default())
    }

    async fn create(&self, spec: &ContainerSpec) -> Result<String, ExecutorError> {
        let id = {
            let mut st = self.lock();
            st.next_id += 1;
            format!("c{}", st.next_id)
        };
        self.enter(
            Some(Op::Create),
            Call::Create {
                id: id.clone(),
                spec_image: spec.image.clone(),
            },
        )?;
        let mut st = self.lock();
        st.images.insert(id.clone(), spec.image.clone());
        st.live.insert(id.clone(), CancellationToken::new());
        st.specs.insert(id.clone(), spec.clone());
        Ok(id)
    }

    async fn start(&self, container: &str) -> Result<Attached, ExecutorError> {
        self.enter(Some(Op::Start), Call::Start(container.to_owned()))?;
        if !self.script.start_delay.is_zero() {
            tokio::time::sleep(self.script.start_delay).await;
        }
        let ended = self.ended(container);
        let spec = self
            .lock()
            .specs
            .get(container)
            .cloned()
            .unwrap_or_default();
        let image = spec.image.clone();
        if let Some((_, text)) = self.script.exiting_services.get(&image) {
            let text = text.clone();
            ended.cancel();
            return Ok(Attached {
                input: Box::pin(tokio::io::sink()),
                output: futures_util::stream::iter(vec![out(&text)]).boxed(),
            });
        }
        if !spec.stdin {
            // A service or a machine: output until it is removed.
            let output = futures_util::stream::once(async move {
                ended.cancelled().await;
            })
            .filter_map(|()| async { None })
            .boxed();
            return Ok(Attached {
                input: Box::pin(tokio::io::sink()),
                output,
            });
        }
        // The primary's main process: banner, then the files on stdin, then idle.
        let (uid, gid, home) = self
            .script
            .user
            .clone()
            .unwrap_or((0, 0, "/root".to_owned()));
        let (client, mut server) = tokio::io::duplex(64 * 1024);
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let _ = tx.send(out(
            format!("bosun-ready {uid} {gid} bash {home}\n").as_bytes()
        ));
        let refuse = self.script.refuse_stdin_files;
        tokio::spawn(async move {
            // `LENGTH RUNNER` on a line, then the tar: as the real main process reads it.
            let read = async {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while server.read_exact(&mut byte).await.is_ok() && byte[0] != b'\n' {
                    head.push(byte[0]);
                }
                let len = String::from_utf8_lossy(&head)
                    .split(' ')
                    .next()
                    .and_then(|n| n.parse::<u64>().ok())
                    .unwrap_or(0);
                let mut tar = Vec::new();
                let _ = (&mut server).take(len).read_to_end(&mut tar).await;
                tar
            };
            // Removed while it waits for the files (a ready container killed): it ends.
            let tar = tokio::select! {
                tar = read => tar,
                () = ended.cancelled() => return,
            };
            // No step runner here: steps go through `exec`, which the script drives.
            let line: &[u8] = if refuse || tar.is_empty() {
                b"tar: not found\nbosun-install-failed\n"
            } else {
                b"bosun-installed\nbosun-runner-ended\n"
            };
            let _ = tx.send(out(line));
            ended.cancelled().await;
        });
        let output =
            futures_util::stream::unfold(
                rx,
                |mut rx| async move { rx.recv().await.map(|i| (i, rx)) },
            )
            .boxed();
        Ok(Attached {
            input: Box::pin(client),
            output,
        })
    }

    async fn wait(&self, container: &str) -> Result<i64, ExecutorError> {
        self.enter(None, Call::Wait(container.to_owned()))?;
        let image = self
            .lock()
            .images
            .get(container)
            .cloned()
            .unwrap_or_default();
        if let Some((code, _)) = self.script.exiting_services.get(&image) {
            return Ok(*code);
        }
        self.ended(container).cancelled().await;
        Ok(137)
    }

    async fn upload_tar(
        &self,
        container: &str,
        dest: &str,
        tar: TarStream,
    ) -> Result<(), ExecutorError> {
        // Drain it: a producer on the other end must not block.
        let _: Vec<Bytes> = tar.collect().await;
        self.enter(
            Some(Op::Upload),
            Call::Upload {
                container: container.to_owned(),
                dest: dest.to_owned(),
            },
        )
    }

    async fn download_tar(
        &self,
        container: &str,
        path: &str,
    ) -> Result<Option<ByteStream>, ExecutorError> {
        self.enter(
            None,
            Call::Download {
                container: container.to_owned(),
                path: path.to_owned(),
            },
        )?;
        Ok(None)
    }

    async fn exec(&self, container: &str, spec: ExecSpec) -> Result<Exec, ExecutorError> {
        let cmd = spec.cmd.join(" ");
        self.enter(
            Some(Op::Exec),
            Call::Exec {
                container: container.to_owned(),
                cmd: cmd.clone(),
            },
        )?;
        if let Some(p) = &self.script.panic_on_exec {
            assert!(!cmd.contains(p.as_str()), "the double panics on `{p}`");
        }
        let reply = self
            .script
            .replies
            .iter()
            .find(|r| cmd.contains(&r.pattern))
            .cloned();
        // The job stops a step by signalling the group recorded in `step-N.pid`.
        if cmd.contains(".pid") && cmd.contains("TERM") {
            if let Some(step) = step_marker(&cmd) {
                if let Some(t) = self.lock().stoppable.remove(&(container.to_owned(), step)) {
                    t.cancel();
                }
            }
        }
        let ended = self.ended(container);
        let stopped = CancellationToken::new();
        if let Some(step) = step_marker(&cmd).filter(|_| cmd.contains(".sh")) {
            self.lock()
                .stoppable
                .insert((container.to_owned(), step), stopped.clone());
        }
        let Some(reply) = reply else {
            return Ok(Exec {
                output: futures_util::stream::empty().boxed(),
                exit: async { Ok(Some(0)) }.boxed(),
            });
        };
        let (done_tx, done_rx) = tokio::sync::oneshot::channel::<Option<i64>>();
        let output = futures_util::stream::once(async move {
            tokio::select! {
                () = tokio::time::sleep(reply.delay) => {}
                () = ended.cancelled() => { let _ = done_tx.send(None); return Vec::new(); }
            }
            if reply.hang {
                tokio::select! {
                    () = ended.cancelled() => { let _ = done_tx.send(None); }
                    // Stopped by the job: killed by TERM.
                    () = stopped.cancelled() => { let _ = done_tx.send(Some(143)); }
                }
                return Vec::new();
            }
            let _ = done_tx.send(Some(reply.exit));
            let mut frames = Vec::new();
            if !reply.stderr.is_empty() {
                frames.push(Ok(Output::Stderr(Bytes::from(reply.stderr))));
            }
            if !reply.stdout.is_empty() {
                frames.push(out(&reply.stdout));
            }
            frames
        })
        .flat_map(futures_util::stream::iter)
        .boxed();
        Ok(Exec {
            output,
            exit: async move { Ok(done_rx.await.ok().flatten()) }.boxed(),
        })
    }

    /// Plays `cat`: what is written comes back as output; the exit status is 0 once the
    /// input is closed (or the container is removed).
    async fn exec_interactive(
        &self,
        container: &str,
        spec: ExecSpec,
        tty: Option<TtySize>,
    ) -> Result<Interactive, ExecutorError> {
        self.enter(
            Some(Op::Exec),
            Call::ExecInteractive {
                container: container.to_owned(),
                cmd: spec.cmd.join(" "),
                tty,
            },
        )?;
        let (input, output) = tokio::io::duplex(64 * 1024);
        let ended = self.ended(container);
        let output = tokio_util::io::ReaderStream::new(output)
            .map(|chunk| {
                chunk
                    .map(Output::Stdout)
                    .map_err(|e| ExecutorError::Protocol {
                        target: "double".to_owned(),
                        what: "interactive output",
                        detail: e.to_string(),
                    })
            })
            .take_until(ended.cancelled_owned())
            .boxed();
        let resizes = Arc::clone(&self.resizes);
        let resize: super::Resizer = Arc::new(move |size| {
            if let Ok(mut r) = resizes.lock() {
                r.push(size);
            }
            async { Ok(()) }.boxed()
        });
        Ok(Interactive {
            input: Box::pin(input),
            output,
            resize,
            exit: async { Ok(Some(0)) }.boxed(),
        })
    }

    async fn remove(&self, container: &str) -> Result<(), ExecutorError> {
        self.enter(Some(Op::Remove), Call::Remove(container.to_owned()))?;
        if let Some(t) = self.lock().live.remove(container) {
            t.cancel();
        }
        Ok(())
    }

    async fn pause(&self, container: &str) -> Result<(), ExecutorError> {
        self.enter(None, Call::Pause(container.to_owned()))
    }

    async fn unpause(&self, container: &str) -> Result<(), ExecutorError> {
        self.enter(None, Call::Unpause(container.to_owned()))
    }

    async fn create_network(
        &self,
        name: &str,
        _labels: &[(String, String)],
    ) -> Result<String, ExecutorError> {
        self.enter(None, Call::CreateNetwork(name.to_owned()))?;
        Ok(format!("net-{name}"))
    }

    async fn remove_network(&self, network: &str) -> Result<(), ExecutorError> {
        self.enter(None, Call::RemoveNetwork(network.to_owned()))
    }

    async fn remove_volume(&self, volume: &str) -> Result<(), ExecutorError> {
        self.enter(None, Call::RemoveVolume(volume.to_owned()))
    }

    async fn remove_image(&self, image: &str) -> Result<(), ExecutorError> {
        self.enter(None, Call::RemoveImage(image.to_owned()))
    }

    async fn list_by_label(
        &self,
        kind: ResourceKind,
        _label: &str,
        _value: &str,
    ) -> Result<Vec<String>, ExecutorError> {
        self.enter(None, Call::List(kind))?;
        Ok(match kind {
            ResourceKind::Container => self.live(),
            ResourceKind::Network | ResourceKind::Volume | ResourceKind::Image => Vec::new(),
        })
    }
}

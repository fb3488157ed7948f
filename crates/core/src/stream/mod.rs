//! What a job tells the world while it runs: typed events, and the sinks that carry them
//! (a terminal, JSON lines; later the coordinator with its spool).

pub mod mask;
pub mod spool;

use bytes::Bytes;
use serde::{Serialize, Serializer};
use std::io::Write;
use std::sync::Mutex;
use std::time::Duration;

pub use crate::protocol::{JobStatus, StepStatus, WorkflowJobStatus};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Stream {
    Stdout,
    Stderr,
}

#[derive(Debug, Clone, Serialize)]
pub struct StepSummary {
    pub step: usize,
    pub name: String,
    pub status: StepStatus,
    pub exit_code: Option<i64>,
    pub duration_ms: u64,
}

/// One thing that happened. `step` is the 0-based index into the plan's steps.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    JobStarted {
        /// The job's unique id, also the `bosun.job` label of its container.
        id: String,
        job: String,
        image: String,
    },
    /// Something the agent itself did (keys installed, checkout done).
    Info {
        message: String,
    },
    /// The checkout finished at this commit (full SHA). The log already says so in an
    /// [`Event::Info`] line; this carries it as data (the agent reports it to its coordinator).
    CheckedOut {
        sha: String,
    },
    /// One of the job's containers started: which one, as data (tools attach to it by id).
    ContainerStarted {
        role: ContainerRole,
        /// `primary`, or the service's name (`name:` or its image).
        name: String,
        image: String,
        container: String,
    },
    /// A layer of an image being pulled changed: its status, or its bytes (at most a few
    /// times a second per layer). The terminal redraws a line per layer; the log keeps each
    /// layer's changes of status.
    PullProgress {
        image: String,
        layer: String,
        status: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        current: Option<u64>,
        #[serde(skip_serializing_if = "Option::is_none")]
        total: Option<u64>,
    },
    /// A missing image was pulled.
    ImagePulled {
        image: String,
        /// Layers fetched (not those the engine already had).
        layers: usize,
        bytes: u64,
        duration_ms: u64,
    },
    /// A service container ended while the job still ran; its last output comes with it.
    ServiceExited {
        service: String,
        image: String,
        exit_code: Option<i64>,
        #[serde(serialize_with = "lossy_utf8")]
        output: Bytes,
    },
    /// What a service container printed, shown when the job failed.
    ServiceOutput {
        service: String,
        #[serde(serialize_with = "lossy_utf8")]
        data: Bytes,
    },
    StepStarted {
        step: usize,
        name: String,
        background: bool,
    },
    Output {
        step: usize,
        stream: Stream,
        #[serde(serialize_with = "lossy_utf8")]
        data: Bytes,
    },
    StepFinished(StepSummary),
    JobFinished {
        job: String,
        status: JobStatus,
        duration_ms: u64,
        steps: Vec<StepSummary>,
        /// Why the job could not run, for `infrastructure_fail`.
        #[serde(skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    /// An event of one job of a workflow run (several run at once).
    Job {
        job: String,
        inner: Box<Event>,
    },
    /// A workflow job that did not run, and why (filters, a failed requirement, an approval).
    JobNotRun {
        job: String,
        status: WorkflowJobStatus,
        reason: String,
    },
    WorkflowFinished {
        workflow: String,
        status: JobStatus,
        duration_ms: u64,
        jobs: Vec<WorkflowJobSummary>,
    },
}

/// What a container is to its job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ContainerRole {
    Primary,
    Service,
}

#[derive(Debug, Clone, Serialize)]
pub struct WorkflowJobSummary {
    pub job: String,
    pub status: WorkflowJobStatus,
    pub duration_ms: u64,
}

fn lossy_utf8<S: Serializer>(b: &Bytes, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&String::from_utf8_lossy(b))
}

pub trait EventSink: Send + Sync {
    fn emit(&self, event: &Event);
}

/// Human output: a header per step, output as it happens, a summary table at the end.
pub struct TerminalSink<W: Write + Send> {
    out: Mutex<W>,
    /// A terminal that takes cursor moves: a pull's layers are lines redrawn in place.
    live: bool,
    /// The image being pulled and its layers in the order their lines were written; cleared
    /// by any other event (its lines then stay as they are).
    board: Mutex<Option<(String, Vec<String>)>>,
    /// Per workflow job: whether its next byte starts a line (for the `[job] ` prefix).
    line_start: Mutex<std::collections::HashMap<String, bool>>,
}

impl<W: Write + Send> TerminalSink<W> {
    pub fn new(out: W) -> Self {
        Self {
            out: Mutex::new(out),
            live: false,
            board: Mutex::new(None),
            line_start: Mutex::new(std::collections::HashMap::new()),
        }
    }

    /// Redraw a pull's layer lines in place (for a terminal; not for a file or a pipe).
    pub fn live(mut self, live: bool) -> Self {
        self.live = live;
        self
    }

    /// The live view of a pull: one line per layer, rewritten where it stands.
    fn draw_layer(&self, out: &mut dyn Write, image: &str, layer: &str, line: &str) {
        let Ok(mut board) = self.board.lock() else {
            return;
        };
        if board.as_ref().is_none_or(|(i, _)| i != image) {
            *board = Some((image.to_owned(), Vec::new()));
            let _ = writeln!(out, "    Pulling {image}");
        }
        let Some((_, layers)) = board.as_mut() else {
            return;
        };
        let _ = match layers.iter().position(|l| l == layer) {
            Some(at) => {
                let up = layers.len() - at;
                write!(out, "\x1b[{up}A\r\x1b[2K{line}\x1b[{up}B\r")
            }
            None => {
                layers.push(layer.to_owned());
                writeln!(out, "{line}")
            }
        };
        let _ = out.flush();
    }

    pub fn into_inner(self) -> W {
        match self.out.into_inner() {
            Ok(w) => w,
            Err(p) => p.into_inner(),
        }
    }
}

pub fn format_duration(ms: u64) -> String {
    let d = Duration::from_millis(ms);
    if d.as_secs() >= 60 {
        format!("{}m{:02}s", d.as_secs() / 60, d.as_secs() % 60)
    } else {
        format!("{:.1}s", d.as_secs_f64())
    }
}

impl<W: Write + Send> EventSink for TerminalSink<W> {
    fn emit(&self, event: &Event) {
        if let Event::Job { job, inner } = event {
            // Render the job's event on its own, then prefix each line with the job's name.
            let mut text = Vec::new();
            render(&mut text, inner);
            let mut prefixed = Vec::with_capacity(text.len() + 16);
            let mut at_start = self
                .line_start
                .lock()
                .map(|mut m| *m.entry(job.clone()).or_insert(true))
                .unwrap_or(true);
            for b in text {
                if at_start {
                    prefixed.extend_from_slice(format!("[{job}] ").as_bytes());
                }
                prefixed.push(b);
                at_start = b == b'\n';
            }
            if let Ok(mut m) = self.line_start.lock() {
                m.insert(job.clone(), at_start);
            }
            let mut out = match self.out.lock() {
                Ok(o) => o,
                Err(p) => p.into_inner(),
            };
            let _ = out.write_all(&prefixed).and_then(|()| out.flush());
            return;
        }
        let mut out = match self.out.lock() {
            Ok(o) => o,
            Err(p) => p.into_inner(),
        };
        if self.live {
            if let Event::PullProgress {
                image,
                layer,
                status,
                current,
                total,
            } = event
            {
                let line = layer_line(layer, status, *current, *total);
                self.draw_layer(&mut *out, image, layer, &line);
                return;
            }
            if let Ok(mut board) = self.board.lock() {
                *board = None;
            }
        }
        render(&mut *out, event);
        let _ = out.flush();
    }
}

/// A pulled layer as one line: `    3f4ca61aafcd: Downloading  12.1 MB / 30.4 MB`.
fn layer_line(layer: &str, status: &str, current: Option<u64>, total: Option<u64>) -> String {
    match (current, total) {
        (Some(c), Some(t)) => format!(
            "      {layer}: {status} {} / {}",
            megabytes(c),
            megabytes(t)
        ),
        (Some(c), None) => format!("      {layer}: {status} {}", megabytes(c)),
        _ => format!("      {layer}: {status}"),
    }
}

fn megabytes(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1e6)
}

/// The human rendering of one event (the terminal view; also the agent's job log).
pub fn render(out: &mut dyn Write, event: &Event) {
    {
        // A closed terminal must not take the job down with it: write errors are ignored.
        let _ = match event {
            Event::JobStarted { job, image, .. } => writeln!(out, "==> Job {job} on {image}"),
            Event::Info { message } => writeln!(out, "    {message}"),
            Event::CheckedOut { .. } => Ok(()),
            // Without a live terminal, a layer's line per change of status; bytes moving
            // are for the live view and `--json`.
            Event::PullProgress {
                image,
                layer,
                status,
                current: None,
                total,
            } => writeln!(
                out,
                "    Pulling {image}: {}",
                layer_line(layer, status, None, *total).trim_start()
            ),
            Event::PullProgress { .. } => Ok(()),
            Event::ImagePulled {
                image,
                layers,
                bytes,
                duration_ms,
            } => writeln!(
                out,
                "    Pulled {image}: {layers} layer{}, {} in {}",
                if *layers == 1 { "" } else { "s" },
                megabytes(*bytes),
                format_duration(*duration_ms)
            ),
            Event::ContainerStarted {
                role: ContainerRole::Primary,
                image,
                container,
                ..
            } => writeln!(
                out,
                "    Container {} started from {image}",
                crate::executor::short_id(container)
            ),
            Event::ContainerStarted {
                role: ContainerRole::Service,
                name,
                image,
                container,
            } => writeln!(
                out,
                "    Service {name} started from {image} (container {}; not waited for)",
                crate::executor::short_id(container)
            ),
            Event::ServiceExited {
                service,
                image,
                exit_code,
                output,
            } => {
                let code =
                    exit_code.map_or_else(|| "an unknown code".to_owned(), |c| c.to_string());
                let _ = writeln!(
                    out,
                    "    Service {service} ({image}) exited with {code} while the job ran; its last output:"
                );
                indented(out, output)
            }
            Event::ServiceOutput { service, data } => {
                let _ = writeln!(out, "    Output of service {service}:");
                indented(out, data)
            }
            Event::StepStarted {
                step,
                name,
                background,
            } => writeln!(
                out,
                "\n==> Step {}: {name}{}",
                step + 1,
                if *background { " (background)" } else { "" }
            ),
            Event::Output { data, .. } => out.write_all(data).and_then(|()| out.flush()),
            Event::StepFinished(s) => {
                let code = s
                    .exit_code
                    .map(|c| format!(", exit code {c}"))
                    .unwrap_or_default();
                writeln!(
                    out,
                    "<== Step {}: {} in {}{code}",
                    s.step + 1,
                    s.status.as_str(),
                    format_duration(s.duration_ms)
                )
            }
            Event::JobFinished {
                job,
                status,
                duration_ms,
                steps,
                error,
            } => {
                let width = steps
                    .iter()
                    .map(|s| s.name.chars().count().min(60))
                    .max()
                    .unwrap_or(4)
                    .max(4);
                let mut text = format!(
                    "\n{:<width$}  {:<10}  {:>8}\n",
                    "STEP", "STATUS", "DURATION"
                );
                for s in steps {
                    let name: String = s
                        .name
                        .lines()
                        .next()
                        .unwrap_or("")
                        .chars()
                        .take(60)
                        .collect();
                    text.push_str(&format!(
                        "{name:<width$}  {:<10}  {:>8}\n",
                        s.status.as_str(),
                        format_duration(s.duration_ms)
                    ));
                }
                if let Some(e) = error {
                    text.push_str(&format!("\nerror: {e}\n"));
                }
                text.push_str(&format!(
                    "\nJob {job}: {} in {}\n",
                    status.as_str(),
                    format_duration(*duration_ms)
                ));
                out.write_all(text.as_bytes()).and_then(|()| out.flush())
            }
            Event::Job { inner, .. } => {
                render(out, inner);
                Ok(())
            }
            Event::JobNotRun {
                job,
                status,
                reason,
            } => writeln!(out, "--- {job}: {} ({reason})", status.as_str()),
            Event::WorkflowFinished {
                workflow,
                status,
                duration_ms,
                jobs,
            } => {
                let width = jobs
                    .iter()
                    .map(|j| j.job.chars().count())
                    .max()
                    .unwrap_or(3)
                    .max(3);
                let mut text =
                    format!("\n{:<width$}  {:<10}  {:>8}\n", "JOB", "STATUS", "DURATION");
                for j in jobs {
                    text.push_str(&format!(
                        "{:<width$}  {:<10}  {:>8}\n",
                        j.job,
                        j.status.as_str(),
                        format_duration(j.duration_ms)
                    ));
                }
                text.push_str(&format!(
                    "\nWorkflow {workflow}: {} in {}\n",
                    status.as_str(),
                    format_duration(*duration_ms)
                ));
                out.write_all(text.as_bytes())
            }
        };
    }
}

/// `data` with each line indented under its heading (and a final newline).
fn indented(out: &mut dyn Write, data: &[u8]) -> std::io::Result<()> {
    let text = String::from_utf8_lossy(data);
    for line in text.lines() {
        writeln!(out, "      | {line}")?;
    }
    Ok(())
}

/// Machine output: one JSON object per line.
pub struct JsonSink<W: Write + Send> {
    out: Mutex<W>,
}

impl<W: Write + Send> JsonSink<W> {
    pub fn new(out: W) -> Self {
        Self {
            out: Mutex::new(out),
        }
    }
}

impl<W: Write + Send> EventSink for JsonSink<W> {
    fn emit(&self, event: &Event) {
        let mut out = match self.out.lock() {
            Ok(o) => o,
            Err(p) => p.into_inner(),
        };
        if let Ok(line) = serde_json::to_string(event) {
            let _ = writeln!(out, "{line}").and_then(|()| out.flush());
        }
    }
}

/// Keeps every event; for tests and for callers that want the record.
#[derive(Default)]
pub struct MemorySink {
    pub events: Mutex<Vec<Event>>,
}

impl EventSink for MemorySink {
    fn emit(&self, event: &Event) {
        if let Ok(mut e) = self.events.lock() {
            e.push(event.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pulled(layer: &str, status: &str, current: Option<u64>) -> Event {
        Event::PullProgress {
            image: "registry.test/app:1".into(),
            layer: layer.into(),
            status: status.into(),
            current,
            total: current.map(|_| 2_000_000),
        }
    }

    #[test]
    fn a_live_terminal_redraws_each_layer_on_its_own_line() {
        let sink = TerminalSink::new(Vec::new()).live(true);
        sink.emit(&pulled("aaaaaaaaaaaa", "Pulling fs layer", None));
        sink.emit(&pulled("bbbbbbbbbbbb", "Pulling fs layer", None));
        sink.emit(&pulled("aaaaaaaaaaaa", "Downloading", Some(1_000_000)));
        sink.emit(&Event::Info {
            message: "next".into(),
        });
        let out = String::from_utf8(sink.into_inner()).expect("utf8");
        assert_eq!(
            out,
            "    Pulling registry.test/app:1\n\
             \x20     aaaaaaaaaaaa: Pulling fs layer\n\
             \x20     bbbbbbbbbbbb: Pulling fs layer\n\
             \x1b[2A\r\x1b[2K      aaaaaaaaaaaa: Downloading 1.0 MB / 2.0 MB\x1b[2B\r\
             \x20   next\n"
        );
    }

    #[test]
    fn a_log_keeps_each_layers_changes_of_status_not_its_bytes() {
        let sink = TerminalSink::new(Vec::new());
        sink.emit(&pulled("aaaaaaaaaaaa", "Pulling fs layer", None));
        sink.emit(&pulled("aaaaaaaaaaaa", "Downloading", Some(1_000_000)));
        sink.emit(&pulled("aaaaaaaaaaaa", "Pull complete", None));
        sink.emit(&Event::ImagePulled {
            image: "registry.test/app:1".into(),
            layers: 1,
            bytes: 2_000_000,
            duration_ms: 1500,
        });
        let out = String::from_utf8(sink.into_inner()).expect("utf8");
        assert_eq!(
            out,
            "    Pulling registry.test/app:1: aaaaaaaaaaaa: Pulling fs layer\n\
             \x20   Pulling registry.test/app:1: aaaaaaaaaaaa: Pull complete\n\
             \x20   Pulled registry.test/app:1: 1 layer, 2.0 MB in 1.5s\n"
        );
    }

    #[test]
    fn terminal_shows_headers_output_and_summary() {
        let sink = TerminalSink::new(Vec::new());
        sink.emit(&Event::StepStarted {
            step: 0,
            name: "Build".into(),
            background: false,
        });
        sink.emit(&Event::Output {
            step: 0,
            stream: Stream::Stdout,
            data: Bytes::from_static(b"hello\n"),
        });
        let summary = StepSummary {
            step: 0,
            name: "Build".into(),
            status: StepStatus::Failed,
            exit_code: Some(3),
            duration_ms: 1500,
        };
        sink.emit(&Event::StepFinished(summary.clone()));
        sink.emit(&Event::JobFinished {
            job: "build".into(),
            status: JobStatus::Failed,
            duration_ms: 2000,
            steps: vec![summary],
            error: None,
        });
        let text = String::from_utf8(sink.into_inner()).expect("utf8");
        assert!(
            text.contains("==> Step 1: Build\nhello\n<== Step 1: failed in 1.5s, exit code 3"),
            "{text}"
        );
        assert!(text.contains("Build  failed"), "{text}");
        assert!(text.ends_with("Job build: failed in 2.0s\n"), "{text}");
    }

    #[test]
    fn json_lines_are_tagged() {
        let ev = Event::StepFinished(StepSummary {
            step: 1,
            name: "t".into(),
            status: StepStatus::TimedOut,
            exit_code: None,
            duration_ms: 5,
        });
        let v = serde_json::to_value(&ev).expect("json");
        assert_eq!(v["event"], "step_finished");
        assert_eq!(v["status"], "timedout");
        let v = serde_json::to_value(Event::Output {
            step: 0,
            stream: Stream::Stderr,
            data: Bytes::from_static(b"x\xff"),
        })
        .expect("json");
        assert_eq!(v["data"], "x\u{fffd}");
        assert_eq!(v["stream"], "stderr");
    }
}

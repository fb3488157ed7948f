//! What a job tells the world while it runs: typed events, and the sinks that carry them
//! (a terminal, JSON lines; later the coordinator with its spool).

pub mod mask;
pub mod spool;

use bytes::Bytes;
use serde::{Serialize, Serializer};
use std::io::Write;
use std::sync::Mutex;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StepStatus {
    Success,
    Failed,
    TimedOut,
    Canceled,
    /// Not run because of its `when:` and how the job had gone.
    Skipped,
    /// A background step still running when the job ended; it was stopped with the job.
    Stopped,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    Success,
    Failed,
    Canceled,
    #[serde(rename = "timedout")]
    TimedOut,
    InfrastructureFail,
}

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
    /// Something the agent itself did (container created, keys installed, checkout done).
    Info {
        message: String,
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkflowJobStatus {
    Success,
    Failed,
    Canceled,
    #[serde(rename = "timedout")]
    TimedOut,
    InfrastructureFail,
    /// A job it requires did not succeed.
    Blocked,
    /// A `type: approval` job nobody approved (run with `--approve`).
    OnHold,
    /// Its filters exclude this branch or tag.
    NotRun,
    /// A job a Docker executor cannot run (`machine`, `macos`).
    NotRunnable,
}

impl From<JobStatus> for WorkflowJobStatus {
    fn from(s: JobStatus) -> Self {
        match s {
            JobStatus::Success => WorkflowJobStatus::Success,
            JobStatus::Failed => WorkflowJobStatus::Failed,
            JobStatus::Canceled => WorkflowJobStatus::Canceled,
            JobStatus::TimedOut => WorkflowJobStatus::TimedOut,
            JobStatus::InfrastructureFail => WorkflowJobStatus::InfrastructureFail,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct WorkflowJobSummary {
    pub job: String,
    pub status: WorkflowJobStatus,
    pub duration_ms: u64,
}

fn workflow_word(s: WorkflowJobStatus) -> &'static str {
    match s {
        WorkflowJobStatus::Success => "success",
        WorkflowJobStatus::Failed => "failed",
        WorkflowJobStatus::Canceled => "canceled",
        WorkflowJobStatus::TimedOut => "timed out",
        WorkflowJobStatus::InfrastructureFail => "infra fail",
        WorkflowJobStatus::Blocked => "blocked",
        WorkflowJobStatus::OnHold => "on hold",
        WorkflowJobStatus::NotRun => "not run",
        WorkflowJobStatus::NotRunnable => "unrunnable",
    }
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
    /// Per workflow job: whether its next byte starts a line (for the `[job] ` prefix).
    line_start: Mutex<std::collections::HashMap<String, bool>>,
}

impl<W: Write + Send> TerminalSink<W> {
    pub fn new(out: W) -> Self {
        Self {
            out: Mutex::new(out),
            line_start: Mutex::new(std::collections::HashMap::new()),
        }
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

fn status_word(s: StepStatus) -> &'static str {
    match s {
        StepStatus::Success => "success",
        StepStatus::Failed => "failed",
        StepStatus::TimedOut => "timed out",
        StepStatus::Canceled => "canceled",
        StepStatus::Skipped => "skipped",
        StepStatus::Stopped => "stopped",
    }
}

fn job_word(s: JobStatus) -> &'static str {
    match s {
        JobStatus::Success => "success",
        JobStatus::Failed => "failed",
        JobStatus::Canceled => "canceled",
        JobStatus::TimedOut => "timed out",
        JobStatus::InfrastructureFail => "infrastructure failure",
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
        render(&mut *out, event);
        let _ = out.flush();
    }
}

/// The human rendering of one event (the terminal view; also the agent's job log).
pub fn render(out: &mut dyn Write, event: &Event) {
    {
        // A closed terminal must not take the job down with it: write errors are ignored.
        let _ = match event {
            Event::JobStarted { job, image, .. } => writeln!(out, "==> Job {job} on {image}"),
            Event::Info { message } => writeln!(out, "    {message}"),
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
                    status_word(s.status),
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
                        status_word(s.status),
                        format_duration(s.duration_ms)
                    ));
                }
                if let Some(e) = error {
                    text.push_str(&format!("\nerror: {e}\n"));
                }
                text.push_str(&format!(
                    "\nJob {job}: {} in {}\n",
                    job_word(*status),
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
            } => writeln!(out, "--- {job}: {} ({reason})", workflow_word(*status)),
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
                        workflow_word(j.status),
                        format_duration(j.duration_ms)
                    ));
                }
                text.push_str(&format!(
                    "\nWorkflow {workflow}: {} in {}\n",
                    job_word(*status),
                    format_duration(*duration_ms)
                ));
                out.write_all(text.as_bytes())
            }
        };
    }
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
        assert_eq!(v["status"], "timed_out");
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

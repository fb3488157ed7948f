//! The agent's [`EventSink`]: the human rendering of the job's events appended to the job's
//! spool; step starts and ends also become [`JobEvent`]s with their log offsets. Events
//! arrive masked already (the job core masks secrets before any sink).
//!
//! The job's end ([`Event::JobFinished`]) finishes the spool there and then: a job held for
//! an SSH session after its last step has its status reported at once, while its containers
//! stay. The log is closed from then on (the finish fixed its length and hash).

use bosun_core::protocol::JobEvent;
use bosun_core::stream::spool::SpoolJob;
use bosun_core::stream::{render, Event, EventSink};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

pub(crate) struct AgentSink {
    spool: Arc<SpoolJob>,
    state: Arc<Mutex<String>>,
    total_steps: AtomicUsize,
    metrics: Option<Arc<super::metrics::AgentMetrics>>,
    /// The commit the checkout reached, until the next step start carries it to the
    /// coordinator (`step_started.commit_sha`).
    checked_out: Mutex<Option<String>>,
    /// The spool is finished: nothing more is written to it.
    closed: AtomicBool,
}

impl AgentSink {
    pub(crate) fn new(
        spool: Arc<SpoolJob>,
        state: Arc<Mutex<String>>,
        total_steps: usize,
    ) -> AgentSink {
        AgentSink {
            spool,
            state,
            total_steps: AtomicUsize::new(total_steps),
            metrics: None,
            checked_out: Mutex::new(None),
            closed: AtomicBool::new(false),
        }
    }

    /// Step durations also go to these metrics.
    pub(crate) fn with_metrics(mut self, m: Arc<super::metrics::AgentMetrics>) -> AgentSink {
        self.metrics = Some(m);
        self
    }

    /// The job's end was written and the spool finished.
    pub(crate) fn finished(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    pub(crate) fn set_total_steps(&self, n: usize) {
        self.total_steps.store(n, Ordering::Relaxed);
    }

    fn write(&self, data: &[u8]) {
        if let Err(e) = self.spool.append_log(data) {
            tracing::error!(job = %self.spool.job_id(), "spool write failed: {e}");
        }
    }

    fn set_state(&self, s: String) {
        if let Ok(mut g) = self.state.lock() {
            *g = s;
        }
    }

    fn rendered(&self, event: &Event) {
        let mut text = Vec::new();
        render(&mut text, event);
        self.write(&text);
    }

    fn event(&self, ev: JobEvent) {
        if let Err(e) = self.spool.append_event(ev) {
            tracing::error!(job = %self.spool.job_id(), "spool write failed: {e}");
        }
    }
}

impl EventSink for AgentSink {
    fn emit(&self, event: &Event) {
        if self.closed.load(Ordering::SeqCst) {
            tracing::debug!(job = %self.spool.job_id(), ?event, "after the job's end: not in its log");
            return;
        }
        match event {
            Event::Output { data, .. } => self.write(data),
            Event::CheckedOut { sha } => {
                if let Ok(mut g) = self.checked_out.lock() {
                    *g = Some(sha.clone());
                }
            }
            Event::StepStarted { step, name, .. } => {
                let commit_sha = self.checked_out.lock().ok().and_then(|mut g| g.take());
                self.event(JobEvent::StepStarted {
                    step: u32::try_from(*step).unwrap_or(u32::MAX),
                    name: name.clone(),
                    log_offset: self.spool.log_len(),
                    commit_sha,
                });
                let first = name.lines().next().unwrap_or("");
                self.set_state(format!(
                    "step {}/{}: {first}",
                    step + 1,
                    self.total_steps.load(Ordering::Relaxed)
                ));
                self.rendered(event);
            }
            Event::StepFinished(s) => {
                if let Some(m) = &self.metrics {
                    m.step_finished(s.duration_ms);
                }
                self.event(JobEvent::StepFinished {
                    step: u32::try_from(s.step).unwrap_or(u32::MAX),
                    name: s.name.clone(),
                    status: s.status,
                    exit_code: s.exit_code,
                    duration_ms: s.duration_ms,
                    log_offset: self.spool.log_len(),
                });
                self.rendered(event);
            }
            Event::JobFinished { status, error, .. } => {
                self.set_state(format!("finished: {status}"));
                self.rendered(event);
                self.closed.store(true, Ordering::SeqCst);
                if let Err(e) = self.spool.finish(*status, error.clone()) {
                    tracing::error!(job = %self.spool.job_id(), "cannot record the finish: {e}");
                }
            }
            other => self.rendered(other),
        }
    }
}

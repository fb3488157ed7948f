//! The agent's [`EventSink`]: the human rendering of the job's events, masked, appended to
//! the job's spool; step starts and ends also become [`JobEvent`]s with their log offsets.

use crate::protocol::JobEvent;
use crate::stream::mask::Masker;
use crate::stream::spool::SpoolJob;
use crate::stream::{render, Event, EventSink, Stream};
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

pub(crate) struct AgentSink {
    spool: Arc<SpoolJob>,
    base: Masker,
    /// One masker per step output stream: interleaved streams never split a secret apart.
    streams: Mutex<HashMap<(usize, Stream), Masker>>,
    state: Arc<Mutex<String>>,
    total_steps: AtomicUsize,
}

impl AgentSink {
    pub(crate) fn new(
        spool: Arc<SpoolJob>,
        masker: Masker,
        state: Arc<Mutex<String>>,
        total_steps: usize,
    ) -> AgentSink {
        AgentSink {
            spool,
            base: masker,
            streams: Mutex::new(HashMap::new()),
            state,
            total_steps: AtomicUsize::new(total_steps),
        }
    }

    pub(crate) fn set_total_steps(&self, n: usize) {
        self.total_steps.store(n, Ordering::Relaxed);
    }

    fn write(&self, data: &[u8]) {
        if let Err(e) = self.spool.append_log(data) {
            tracing::error!(job = %self.spool.job_id(), "spool write failed: {e}");
        }
    }

    /// A line of the agent's own (masked as a whole).
    pub(crate) fn line(&self, text: &str) {
        let mut t = text.to_owned();
        if !t.ends_with('\n') {
            t.push('\n');
        }
        self.write(&self.base.mask_all(t.as_bytes()));
    }

    fn flush_streams(&self, step: Option<usize>) {
        let mut streams = match self.streams.lock() {
            Ok(s) => s,
            Err(p) => p.into_inner(),
        };
        let mut out = Vec::new();
        for ((s, _), m) in streams.iter_mut() {
            if step.is_none_or(|want| *s == want) {
                out.extend(m.finish());
            }
        }
        drop(streams);
        self.write(&out);
    }

    fn set_state(&self, s: String) {
        if let Ok(mut g) = self.state.lock() {
            *g = s;
        }
    }

    fn rendered(&self, event: &Event) {
        let mut text = Vec::new();
        render(&mut text, event);
        self.write(&self.base.mask_all(&text));
    }

    fn event(&self, ev: JobEvent) {
        if let Err(e) = self.spool.append_event(ev) {
            tracing::error!(job = %self.spool.job_id(), "spool write failed: {e}");
        }
    }

    /// End of job: whatever a masker still holds goes out.
    pub(crate) fn flush(&self) {
        self.flush_streams(None);
    }
}

impl EventSink for AgentSink {
    fn emit(&self, event: &Event) {
        match event {
            Event::Output { step, stream, data } => {
                let out = {
                    let mut streams = match self.streams.lock() {
                        Ok(s) => s,
                        Err(p) => p.into_inner(),
                    };
                    streams
                        .entry((*step, *stream))
                        .or_insert_with(|| self.base.clone())
                        .feed(data)
                };
                self.write(&out);
            }
            Event::StepStarted { step, name, .. } => {
                let name =
                    String::from_utf8_lossy(&self.base.mask_all(name.as_bytes())).into_owned();
                self.event(JobEvent::StepStarted {
                    step: u32::try_from(*step).unwrap_or(u32::MAX),
                    name: name.clone(),
                    log_offset: self.spool.log_len(),
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
                self.flush_streams(Some(s.step));
                let name =
                    String::from_utf8_lossy(&self.base.mask_all(s.name.as_bytes())).into_owned();
                let status = serde_json::to_value(s.status)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default();
                self.event(JobEvent::StepFinished {
                    step: u32::try_from(s.step).unwrap_or(u32::MAX),
                    name,
                    status,
                    exit_code: s.exit_code,
                    duration_ms: s.duration_ms,
                    log_offset: self.spool.log_len(),
                });
                self.rendered(event);
            }
            Event::JobFinished { .. } => {
                self.flush_streams(None);
                self.set_state("finishing".to_owned());
                self.rendered(event);
            }
            other => self.rendered(other),
        }
    }
}

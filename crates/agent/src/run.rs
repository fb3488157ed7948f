//! One claimed job, from [`WireJob`] to its spooled finish; and the sender that delivers a
//! spool to the coordinator.

use super::client::{ApiErr, Backoff};
use super::sink::AgentSink;
use super::Agent;
use bosun_core::job::{self, ConfigSource, EnvEntry, JobRequest, PullRequest, Source, Target};
use bosun_core::protocol::{EventAck, EventBatch, LogAck, WireJob, WireKeyRole, MAX_LOG_CHUNK};
use bosun_core::ssh::{KeyRole, SshKey};
use bosun_core::store::LocalStore;
use bosun_core::stream::spool::SpoolJob;
use bosun_core::stream::{Event, EventSink, JobStatus};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

pub(crate) async fn run_wire_job(
    agent: &Arc<Agent>,
    mut wire: WireJob,
    cancel: CancellationToken,
    quiet: Arc<AtomicBool>,
    state: Arc<Mutex<String>>,
) {
    let cfg = agent.cfg();
    let spool = match SpoolJob::create(&cfg.spool_dir, &wire.id, wire.attempt) {
        Ok(s) => Arc::new(s),
        Err(e) => {
            // Nothing can be reported without a spool; the lease lapses and the job is queued
            // again elsewhere.
            tracing::error!(job = %wire.id, "cannot create the spool: {e}");
            return;
        }
    };
    let sender = super::spawn_sender(Arc::clone(agent), Arc::clone(&spool));
    let sink = Arc::new(
        AgentSink::new(Arc::clone(&spool), Arc::clone(&state), 0)
            .with_metrics(Arc::clone(&agent.metrics)),
    );
    if let Ok(mut s) = state.lock() {
        *s = "checkout".to_owned();
    }
    // The requester's keys may log in while the job runs (and while it is held for them).
    if !wire.ssh_keys.is_empty() {
        agent.registry.grant_ssh(&wire.id, wire.ssh_keys.clone());
    }
    let outcome = match request(agent, &mut wire) {
        Ok(req) => {
            let sink_dyn: Arc<dyn EventSink> = sink.clone();
            let on_prepared = |p: &job::Prepared| sink.set_total_steps(p.step_count());
            bosun_core::run::run(
                Arc::clone(&agent.executor),
                req,
                sink_dyn,
                cancel.clone(),
                &on_prepared,
            )
            .await
        }
        Err(e) => {
            // The job's own keys or store could not be read: nothing secret is in the text
            // (key parse errors name the role, never the key).
            let error = e.to_string();
            sink.emit(&Event::JobFinished {
                job: wire.job_name.clone(),
                status: JobStatus::InfrastructureFail,
                duration_ms: 0,
                steps: Vec::new(),
                error: Some(error.clone()),
            });
            bosun_core::run::RequestOutcome {
                status: JobStatus::InfrastructureFail,
                error: Some(error),
            }
        }
    };
    agent.registry.revoke_ssh(&wire.id);
    if quiet.load(Ordering::SeqCst) {
        tracing::info!(job = %wire.id, "stopped quietly (no longer ours)");
        sender.abort();
        let _ = spool.remove();
        return;
    }
    let status = outcome.status;
    agent.metrics.job_finished(status);
    tracing::info!(job = %wire.id, ?status, "job {} finished: {status}", wire.id);
    // The sink finished the spool at the job's end (before any SSH hold); this is for a
    // path that ended without telling it.
    if sink.finished() {
        return;
    }
    if let Err(e) = spool.finish(status, outcome.error) {
        tracing::error!(job = %wire.id, "cannot record the finish: {e}");
    }
}

/// Why a claimed job could not even be asked for.
#[derive(Debug, thiserror::Error)]
enum RequestError {
    #[error("the job's {role} key: {reason}")]
    Key { role: KeyRole, reason: String },
    #[error("{path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] bosun_core::store::StoreError),
}

/// The claimed job as a [`JobRequest`]: the config comes from the commit, the time limit and
/// secrets from the coordinator, the rest from the agent's settings.
fn request(agent: &Arc<Agent>, wire: &mut WireJob) -> Result<JobRequest, RequestError> {
    let cfg = agent.cfg();
    let mut keys = Vec::new();
    let mut additional_keys = Vec::new();
    for k in &mut wire.keys {
        let role = match k.role {
            WireKeyRole::User => KeyRole::User,
            WireKeyRole::Deploy => KeyRole::Deploy,
            WireKeyRole::Additional => KeyRole::Additional,
        };
        // Moved, not copied: the claim keeps no second plaintext copy of the key.
        let key = SshKey::from_text(k.take_private_key(), role)
            .map_err(|reason| RequestError::Key { role, reason })?;
        if role == KeyRole::Additional {
            additional_keys.push(key);
        } else {
            keys.push(key);
        }
    }
    let mut known_hosts = Vec::new();
    if let Some(p) = &cfg.known_hosts_file {
        let text = std::fs::read_to_string(p).map_err(|source| RequestError::Read {
            path: p.display().to_string(),
            source,
        })?;
        known_hosts.push((text, p.display().to_string()));
    }
    if !wire.known_hosts.is_empty() {
        known_hosts.push((
            wire.known_hosts.join("\n"),
            "the job's known_hosts".to_owned(),
        ));
    }
    Ok(JobRequest {
        id: wire.id.clone(),
        agent_id: agent.agent_id.clone(),
        source: Source {
            url: wire.project.clone_url.clone(),
            reference: Some(wire.commit_sha.clone()),
        },
        local_branch: None,
        // A continued pipeline's jobs compile the config its setup workflow made.
        config: match wire.pipeline.as_ref().and_then(|p| p.config.clone()) {
            Some(text) => ConfigSource::Text {
                text,
                name: "the continued config".to_owned(),
            },
            None => ConfigSource::Repository,
        },
        // One container per claimed job: the coordinator hands out each node as its own job.
        target: Target::Node {
            job: wire.job_name.clone(),
            index: 0,
            total: 1,
            workflow: wire.pipeline.as_ref().map(|p| p.workflow.clone()),
        },
        keys,
        additional_keys,
        known_hosts,
        vcs_hosts: cfg.vcs_hosts.clone(),
        mirrors: Some(bosun_core::mirror::Mirrors::new(
            &cfg.cache_dir,
            cfg.cache_budget_mb.saturating_mul(1 << 20),
        )),
        // The coordinator's variables (the project's and its contexts', and the OIDC tokens)
        // are the lowest layer: the config's `environment:` and the built-ins go over them.
        env: Vec::new(),
        contexts: Vec::new(),
        project_env: wire
            .env
            .iter()
            .map(|e| EnvEntry {
                name: e.name.clone(),
                value: e.value.clone(),
                secret: e.secret,
            })
            .collect(),
        pipeline_params: wire
            .pipeline
            .as_ref()
            .map(|p| p.parameters.clone())
            .unwrap_or_default(),
        trigger_source: wire
            .pipeline
            .as_ref()
            .map(|p| p.trigger_source.clone())
            .unwrap_or_default(),
        base_revision: wire
            .pipeline
            .as_ref()
            .map(|p| p.base_revision.clone())
            .unwrap_or_default(),
        schedule: wire
            .pipeline
            .as_ref()
            .map(|p| (p.schedule_name.clone(), p.schedule_id.clone()))
            .unwrap_or_default(),
        pipeline_number: wire.pipeline_number,
        branch: wire.branch.clone(),
        tag: wire.tag.clone(),
        pull_request: wire.pull_request.as_ref().map(|p| PullRequest {
            number: p.number,
            url: p.url.clone(),
            fork: p.fork,
        }),
        time_limit: Some(Duration::from_secs(wire.timeouts.job_secs.max(1))),
        network: cfg.network.clone(),
        kill_grace: Duration::from_secs(cfg.kill_grace_secs),
        store: {
            let local = LocalStore::open(cfg.store_dir.clone(), super::store_scope(wire))?;
            // A v2 coordinator keeps the job's store; a v1 one leaves it to the local store.
            match &wire.store {
                Some(s) => local.with_remote(std::sync::Arc::new(super::blobs::JobStore::new(
                    agent.client.clone(),
                    &wire.id,
                    wire.attempt,
                    s.cache_writes,
                ))),
                None => local,
            }
        },
        orb_dir: cfg.orb_dir.clone(),
        machine_images: cfg.machine_images.clone(),
        limits: cfg.resource_class_limits,
        registry: agent.registry.clone(),
        engine: match cfg.engine_settings() {
            Ok(s) => Some(std::sync::Arc::new(s)),
            Err(e) => {
                tracing::warn!("jobs get no Docker engine: {e}");
                None
            }
        },
        identity: bosun_core::job::JobIdentity {
            // The job's page on the coordinator this agent works for.
            build_url: Some(format!(
                "{}/jobs/{}",
                cfg.coordinator_url.trim_end_matches('/'),
                wire.id
            )),
            previous_build_num: wire.previous_build_num,
            username: wire.username.clone(),
            // A pipeline's jobs share its ids (CIRCLE_WORKFLOW_ID names the workflow's
            // workspace too).
            pipeline_id: wire.pipeline.as_ref().map(|p| p.id.clone()),
            workflow_id: wire.pipeline.as_ref().map(|p| p.workflow_id.clone()),
            ..Default::default()
        },
        ready: Some(Arc::clone(&agent.pool) as Arc<dyn bosun_core::job::ready::ReadySource>),
    })
}

/// Deliver a job's spool: log, events, then the finish; delete it when the finish is
/// acknowledged. Retries with backoff while the coordinator is unreachable.
pub(crate) async fn send_spool(agent: &Arc<Agent>, job: &Arc<SpoolJob>) {
    let id = job.job_id();
    let mut backoff = Backoff::default();
    loop {
        if agent.fatal.is_cancelled() {
            return;
        }
        let round_started = Instant::now();
        match send_round(agent, job, &id).await {
            Ok(true) => {
                tracing::debug!(job = %id, "delivered");
                if let Err(e) = job.remove() {
                    tracing::error!(job = %id, "cannot remove the spool: {e}");
                }
                return;
            }
            Ok(false) => {
                backoff.reset();
                tokio::select! {
                    _ = job.notify.notified() => {}
                    _ = tokio::time::sleep(Duration::from_secs(2)) => {},
                    _ = agent.fatal.cancelled() => return,
                }
                // A trickle of output gathers for up to GATHER after the last round began, so
                // a chatty step costs at most a few requests a second; a flood (GATHER_BYTES
                // waiting) or the job's end goes out at once. (A fixed pause after every
                // wake-up kept the sender idle half the time under a flood.)
                let deadline = round_started + GATHER;
                while job.unsent_log() < GATHER_BYTES
                    && job.finished().is_none()
                    && Instant::now() < deadline
                {
                    tokio::select! {
                        _ = job.notify.notified() => {}
                        _ = tokio::time::sleep_until(deadline.into()) => {}
                        _ = agent.fatal.cancelled() => return,
                    }
                }
            }
            Err(ApiErr::Unauthorized(m)) => {
                agent.unauthorized(&m);
                return;
            }
            Err(ApiErr::NotFound(m)) => {
                tracing::warn!(job = %id, "the coordinator takes nothing more for this job ({m}); dropping its spool");
                let _ = job.remove();
                return;
            }
            Err(e) => {
                let d = backoff.next_delay();
                tracing::warn!(job = %id, "sending: {e}; retrying in {:.1}s", d.as_secs_f64());
                tokio::select! {
                    _ = tokio::time::sleep(d) => {},
                    _ = agent.fatal.cancelled() => return,
                }
            }
        }
    }
}

fn conflict<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiErr> {
    serde_json::from_slice(body)
        .map_err(|e| ApiErr::Other(format!("409 without a usable offset: {e}")))
}

/// How long a little output may wait for more before it is sent.
const GATHER: Duration = Duration::from_millis(200);
/// Unsent output that is sent without waiting.
const GATHER_BYTES: u64 = 256 * 1024;
/// How much of the spool a log request holds in memory at a time: a request carries up to
/// MAX_LOG_CHUNK, streamed from the spool in pieces of this size. (Reading whole chunks
/// into memory took the agent's peak RSS over its budget for a big log, and smaller requests
/// made delivery lag the step.)
const SEND_PIECE: u64 = 256 * 1024;

/// `len` log bytes from `offset`, read from the spool piece by piece as the request goes out.
fn spool_body(job: &Arc<SpoolJob>, offset: u64, len: u64) -> reqwest::Body {
    let job = Arc::clone(job);
    let end = offset + len;
    let pieces = futures_util::stream::try_unfold(offset, move |pos| {
        let job = Arc::clone(&job);
        async move {
            if pos >= end {
                return Ok(None);
            }
            let n = usize::try_from(SEND_PIECE.min(end - pos)).unwrap_or(usize::MAX);
            let data = job.read_log(pos, n)?;
            if data.is_empty() {
                return Err(std::io::Error::other("the spool ended early"));
            }
            let next = pos + data.len() as u64;
            Ok::<_, std::io::Error>(Some((bytes::Bytes::from(data), next)))
        }
    });
    reqwest::Body::wrap_stream(pieces)
}

/// One pass: everything spooled so far. `Ok(true)` when the finish was acknowledged.
async fn send_round(agent: &Agent, job: &Arc<SpoolJob>, id: &str) -> Result<bool, ApiErr> {
    let io = |e: std::io::Error| ApiErr::Other(format!("spool: {e}"));
    let st = job.state();
    let finish = job.finished();
    let len = job.log_len();
    let mut off = st.acked_log;
    while off < len {
        // Up to the length read at the start of the round: the finish check below compares
        // with the same length.
        let want = MAX_LOG_CHUNK.min(usize::try_from(len - off).unwrap_or(MAX_LOG_CHUNK));
        let body = spool_body(job, off, want as u64);
        let ack: LogAck = match agent
            .client
            .append_log(id, st.attempt, off, body, want as u64)
            .await
        {
            Ok(a) => a,
            Err(ApiErr::Conflict(body)) => conflict(&body)?,
            Err(e) => return Err(e),
        };
        if ack.offset > len {
            // The coordinator holds bytes this spool lost (a tail never fsync'd when the
            // agent's host went down; see `stream::spool`): the two copies can no longer agree.
            return Err(ApiErr::NotFound(format!(
                "the coordinator has {} log bytes, the spool only {len}",
                ack.offset
            )));
        }
        off = ack.offset;
        job.ack_log(off).map_err(io)?;
    }
    let total = job.next_seq();
    let mut next = st.acked_events;
    while next < total {
        let events = job.read_events(next, 500).map_err(io)?;
        if events.is_empty() {
            break;
        }
        let batch = EventBatch {
            first_seq: next,
            events,
        };
        let ack: EventAck = match agent.client.events(id, st.attempt, &batch).await {
            Ok(a) => a,
            Err(ApiErr::Conflict(body)) => conflict(&body)?,
            Err(e) => return Err(e),
        };
        next = ack.next_seq.min(total);
        job.ack_events(next).map_err(io)?;
    }
    let Some(fin) = finish else {
        return Ok(false);
    };
    if off != fin.log_bytes || next != job.next_seq() {
        return Ok(false);
    }
    match agent.client.finish(id, st.attempt, &fin).await {
        Ok(()) => Ok(true),
        Err(ApiErr::Conflict(body)) => {
            let ack: LogAck = conflict(&body)?;
            job.ack_log(ack.offset.min(fin.log_bytes)).map_err(io)?;
            job.notify.notify_one();
            Ok(false)
        }
        Err(e) => Err(e),
    }
}

//! One claimed job, from [`WireJob`] to its spooled finish; and the sender that delivers a
//! spool to the coordinator.

use super::client::{ApiErr, Backoff};
use super::sink::AgentSink;
use super::Agent;
use crate::config;
use crate::job::{self, Access, JobSpec, PullRequest, Source};
use crate::protocol::{
    EventAck, EventBatch, FinalStatus, LogAck, WireJob, WireKeyRole, MAX_LOG_CHUNK,
};
use crate::ssh::{KeyRole, KnownHosts, SshKey, VcsHosts};
use crate::store::Store;
use crate::stream::mask::Masker;
use crate::stream::spool::SpoolJob;
use crate::stream::{Event, EventSink, JobStatus};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

fn final_status(s: JobStatus) -> FinalStatus {
    match s {
        JobStatus::Success => FinalStatus::Success,
        JobStatus::Failed => FinalStatus::Failed,
        JobStatus::Canceled => FinalStatus::Canceled,
        JobStatus::TimedOut => FinalStatus::TimedOut,
        JobStatus::InfrastructureFail => FinalStatus::InfrastructureFail,
    }
}

pub(crate) async fn run_wire_job(
    agent: &Arc<Agent>,
    wire: WireJob,
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

    let mut secrets: Vec<String> = wire
        .env
        .iter()
        .filter(|e| e.secret)
        .map(|e| e.value.clone())
        .collect();
    secrets.extend(wire.keys.iter().map(|k| k.private_key.clone()));
    let (masker, short) = Masker::new(&secrets);
    let sink = Arc::new(AgentSink::new(
        Arc::clone(&spool),
        masker,
        Arc::clone(&state),
        0,
    ));
    for e in wire
        .env
        .iter()
        .filter(|e| e.secret && short.contains(&e.value))
    {
        sink.line(&format!(
            "warning: the value of secret {} is shorter than {} characters and is not masked",
            e.name,
            crate::stream::mask::MIN_SECRET_LEN
        ));
    }

    // The job's own time limit: cancel, and report `timedout`.
    let timed_out = Arc::new(AtomicBool::new(false));
    let timer = {
        let (cancel, timed_out) = (cancel.clone(), Arc::clone(&timed_out));
        let limit = Duration::from_secs(wire.timeouts.job_secs.max(1));
        tokio::spawn(async move {
            tokio::time::sleep(limit).await;
            timed_out.store(true, Ordering::SeqCst);
            cancel.cancel();
        })
    };

    let started = Instant::now();
    if let Ok(mut s) = state.lock() {
        *s = "checkout".to_owned();
    }
    let (status, error) = match prepare(agent, &wire, &sink, &cancel).await {
        Err(msg) => {
            let status = if cancel.is_cancelled() {
                JobStatus::Canceled
            } else {
                JobStatus::InfrastructureFail
            };
            sink.emit(&Event::JobFinished {
                job: wire.job_name.clone(),
                status,
                duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
                steps: Vec::new(),
                error: Some(msg.clone()),
            });
            (status, Some(msg))
        }
        Ok(spec) => {
            let sink_dyn: Arc<dyn EventSink> = sink.clone();
            let outcome =
                job::run_job(Arc::clone(&agent.executor), spec, sink_dyn, cancel.clone()).await;
            (outcome.status, outcome.error)
        }
    };
    timer.abort();
    sink.flush();
    let status = if status == JobStatus::Canceled && timed_out.load(Ordering::SeqCst) {
        JobStatus::TimedOut
    } else {
        status
    };
    if quiet.load(Ordering::SeqCst) {
        tracing::info!(job = %wire.id, "stopped quietly (no longer ours)");
        sender.abort();
        let _ = spool.remove();
        return;
    }
    let error = error.map(|e| {
        String::from_utf8_lossy(&Masker::new(&secrets).0.mask_all(e.as_bytes())).into_owned()
    });
    tracing::info!(job = %wire.id, ?status, "job {} finished: {status:?}", wire.id);
    if let Err(e) = spool.finish(final_status(status), error) {
        tracing::error!(job = %wire.id, "cannot record the finish: {e}");
    }
}

/// Keys, host keys, the checkout, the config from the fetched tree: a [`JobSpec`], or the
/// reason the job cannot run.
async fn prepare(
    agent: &Arc<Agent>,
    wire: &WireJob,
    sink: &Arc<AgentSink>,
    cancel: &CancellationToken,
) -> Result<JobSpec, String> {
    let cfg = agent.cfg();
    let mut keys = Vec::new();
    let mut additional_keys = Vec::new();
    for k in &wire.keys {
        let role = match k.role {
            WireKeyRole::User => KeyRole::User,
            WireKeyRole::Deploy => KeyRole::Deploy,
            WireKeyRole::Additional => KeyRole::Additional,
        };
        let key = SshKey::from_text(zeroize::Zeroizing::new(k.private_key.clone()), role)
            .map_err(|e| format!("the job's {role} key: {e}"))?;
        if role == KeyRole::Additional {
            additional_keys.push(key);
        } else {
            keys.push(key);
        }
    }
    let mut known_hosts = KnownHosts::pinned();
    if let Some(p) = &cfg.known_hosts_file {
        let text = std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()))?;
        known_hosts
            .extend(KnownHosts::parse(&text, &p.display().to_string()).map_err(|e| e.to_string())?);
    }
    if !wire.known_hosts.is_empty() {
        known_hosts.extend(
            KnownHosts::parse(&wire.known_hosts.join("\n"), "the job's known_hosts")
                .map_err(|e| e.to_string())?,
        );
    }
    let mut vcs_hosts = VcsHosts::new();
    for m in cfg.vcs_hosts.iter().filter(|m| !m.trim().is_empty()) {
        vcs_hosts.add_mapping(m.trim()).map_err(|e| e.to_string())?;
    }
    let access = Access {
        keys,
        known_hosts,
        vcs_hosts,
    };
    let source = Source {
        url: wire.project.clone_url.clone(),
        reference: Some(wire.commit_sha.clone()),
    };
    let fetched = {
        let (access, source, sink) = (access.clone(), source.clone(), Arc::clone(sink));
        tokio::task::spawn_blocking(move || job::fetch_source(&access, &source, sink.as_ref()))
            .await
            .map_err(|e| format!("checkout panicked: {e}"))?
            .map_err(|e| e.to_string())?
    };
    if cancel.is_cancelled() {
        return Err("canceled before the job started".to_owned());
    }
    let file = fetched.dir.path().join("repo/.circleci/config.yml");
    let text = std::fs::read_to_string(&file).map_err(|e| {
        format!(
            "{} at {}: cannot read .circleci/config.yml: {e}",
            wire.project.slug, fetched.outcome.sha
        )
    })?;
    let pipeline = config::PipelineValues {
        number: i64::try_from(wire.pipeline_number).unwrap_or(i64::MAX),
        project_git_url: wire.project.clone_url.clone(),
        project_type: "bitbucket".to_owned(),
        git_branch: wire
            .branch
            .clone()
            .or(fetched.outcome.branch.clone())
            .unwrap_or_default(),
        git_tag: wire
            .tag
            .clone()
            .or(fetched.outcome.tag.clone())
            .unwrap_or_default(),
        git_revision: fetched.outcome.sha.clone(),
        trigger_source: "bosun".to_owned(),
        ..config::PipelineValues::default()
    };
    let opts = config::CompileOptions {
        pipeline,
        orbs: None,
        orb_dir: None,
    };
    let plan = config::compile_job_with(&text, ".circleci/config.yml", &wire.job_name, &opts)
        .map_err(|e| e.to_string())?;
    let store =
        Store::open(cfg.store_dir.clone(), super::store_scope(wire)).map_err(|e| e.to_string())?;
    sink.set_total_steps(plan.steps.len());
    Ok(JobSpec {
        id: wire.id.clone(),
        agent_id: agent.agent_id.clone(),
        plan,
        source: Some(source),
        access,
        env: wire
            .env
            .iter()
            .map(|e| (e.name.clone(), e.value.clone()))
            .collect(),
        network: cfg.network.clone(),
        build_num: wire.pipeline_number,
        kill_grace: Duration::from_secs(cfg.kill_grace_secs),
        prefetched: Some(fetched),
        store,
        workspace: wire.id.clone(),
        additional_keys,
        // One container per claimed job: the coordinator hands out each node as its own job.
        node_index: 0,
        node_total: 1,
        pull_request: wire.pull_request.as_ref().map(|p| PullRequest {
            number: p.number,
            url: p.url.clone(),
            fork: p.fork,
        }),
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
/// MAX_LOG_CHUNK, streamed from the spool in pieces of this size. (Reading whole 8 MiB
/// chunks put the agent's peak RSS at 37–51 MiB for a 200 MiB log, over its 50 MB budget;
/// 2 MiB requests kept it at 26 MiB but made delivery lag the step by ~0.6 s.)
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

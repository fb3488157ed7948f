//! The agent side: claims, leases and heartbeats, log and event appends, finishes, and the
//! job as it travels to the agent.

use super::*;
use crate::model::forks::{self, Given};
use bosun_protocol::WireStore;

impl PgStore {
    // ---- agent calls ----

    /// Lease the oldest queued job this agent can run: one statement ([`CLAIM`]) in a
    /// transaction, so two claimers (threads, processes, replicas) never get the same job,
    /// in three round trips (`BEGIN`, the claim, `COMMIT`; a job given contexts reads them
    /// too).
    ///
    /// The agent's resource class and labels are the ones stored for it (fixed at
    /// registration, changed by `relabel`), never what a claim says; a project restricted to
    /// some agents (`project restrict`) is offered to those only.
    pub(super) fn claim(&self, agent_id: &str, lease: Duration) -> Result<Option<WireJob>> {
        let mut conn = self.conn()?;
        // Row locks only: claimers on every coordinator run side by side, each taking the
        // oldest job it may run that no other claimer holds (`SKIP LOCKED`). One statement
        // does the claim and reads what the agent is sent (`CLAIM`); the transaction keeps
        // the lease from committing if opening its secrets fails.
        let tx = conn.transaction_with_behavior(TransactionBehavior::RowLocks)?;
        let now = now_ms();
        let claimed = tx
            .query_row(
                CLAIM,
                params![agent_id, now, now + lease.as_millis() as i64],
                claimed,
            )
            .optional()?;
        let job = match claimed {
            Some(c) => Some(wire_job(&tx, &self.secrets, c)?),
            None => None,
        };
        tx.commit()?;
        Ok(job)
    }

    /// May `agent_id`, writing for `attempt` (when it says), write to job `id`?
    pub(super) fn lease_state(
        conn: &Connection,
        id: i64,
        agent_id: &str,
        attempt: Option<u32>,
    ) -> Result<Lease> {
        let row: Option<(String, Option<String>, u32)> = conn
            .query_row(
                "SELECT status, agent_id, attempts FROM jobs WHERE id = ?1 FOR UPDATE",
                [id],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?;
        Ok(match row {
            None => Lease::NotFound,
            // A late write of a lapsed attempt, possibly from the same agent that claimed the
            // next one: it must not land in the new attempt's log.
            Some((_, _, current)) if attempt.is_some_and(|a| a != current) => {
                Lease::Superseded { current }
            }
            Some((s, Some(a), _)) if a == agent_id && s == "running" => Lease::Held,
            Some((s, Some(a), _)) if a == agent_id && s != "queued" => Lease::FinishedByYou(s),
            Some(_) => Lease::NotYours,
        })
    }

    pub(super) fn heartbeat(
        &self,
        agent_id: &str,
        running: &[RunningJob],
        lease: Duration,
    ) -> Result<HeartbeatOutcome> {
        let mut conn = self.conn()?;
        let tx = conn.transaction_with_behavior(TransactionBehavior::RowLocks)?;
        let now = now_ms();
        tx.execute(
            "UPDATE agents SET last_seen = ?2 WHERE id = ?1",
            params![agent_id, now],
        )?;
        let mut out = HeartbeatOutcome {
            cancel: vec![],
            unknown: vec![],
        };
        for running in running {
            let job = &running.job_id;
            let Some(id) = parse_job_id(job) else {
                out.unknown.push(job.clone());
                continue;
            };
            let n = tx.execute(
                "UPDATE jobs SET lease_expires = ?3 WHERE id = ?1 AND agent_id = ?2 AND status = 'running'",
                params![id, agent_id, now + lease.as_millis() as i64],
            )?;
            if n == 0 {
                // A job that finished while its agent holds it for SSH: its state still
                // shows, and a cancel still reaches it (it ends the hold).
                if ssh::record_hold(&tx, id, agent_id, running.ssh.as_ref())? {
                    if ssh::release_requested(&tx, id)? {
                        out.cancel.push(job.clone());
                    }
                } else {
                    out.unknown.push(job.clone());
                }
                continue;
            }
            ssh::record_state(&tx, id, running.ssh.as_ref())?;
            let cancel: bool = tx.query_row(
                "SELECT cancel_requested FROM jobs WHERE id = ?1",
                [id],
                |r| r.get(0),
            )?;
            if cancel {
                out.cancel.push(job.clone());
            }
        }
        let reported: Vec<&str> = running.iter().map(|r| r.job_id.as_str()).collect();
        ssh::end_holds_not_reported(&tx, agent_id, &reported)?;
        tx.commit()?;
        Ok(out)
    }

    /// Jobs leased to `agent_id` whose cancel is pending: what its control poll carries.
    /// A read on a reader connection (no lease renewal: heartbeats do that).
    pub(super) fn pending_cancels(&self, agent_id: &str) -> Result<Vec<String>> {
        let reader = self.reader()?;
        let mut stmt = reader.prepare_cached(
            "SELECT id FROM jobs WHERE agent_id = ?1 AND status = 'running' AND cancel_requested = 1 \
             UNION SELECT id FROM jobs WHERE agent_id = ?1 \
             AND ssh_state IS NOT NULL AND cancel_requested = 1 \
             AND (ssh_state::jsonb ->> 'held_until_ms') IS NOT NULL \
             ORDER BY id",
        )?;
        let ids = stmt
            .query_map([agent_id], |r| r.get::<_, i64>(0))?
            .map(|r| r.map(|id| id.to_string()))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        Ok(ids)
    }

    /// Append log bytes sent for `offset`; see `docs/protocol.md` (idempotent by offset).
    ///
    /// The bytes go into the database (`log_chunks`), in the transaction that moves the
    /// job's committed length, under its row's lock: whichever replica an agent reaches,
    /// an append lands once or not at all, and a resend from the last acknowledged offset
    /// through another replica (the first died between two appends) overlaps what is
    /// committed and adds only what lies beyond it.
    pub(super) fn append_log(
        &self,
        id: i64,
        agent_id: &str,
        attempt: Option<u32>,
        offset: u64,
        bytes: &[u8],
    ) -> Result<AppendOutcome> {
        let mut conn = self.conn()?;
        let (outcome, added) =
            Self::append_log_tx(&mut conn, id, agent_id, attempt, offset, bytes, now_ms())?;
        self.appended
            .fetch_add(added, std::sync::atomic::Ordering::Relaxed);
        Ok(outcome)
    }

    /// New log bytes appended through this store since it opened.
    pub(super) fn appended_log_bytes(&self) -> u64 {
        self.appended.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn append_log_tx(
        conn: &mut Connection,
        id: i64,
        agent_id: &str,
        attempt: Option<u32>,
        offset: u64,
        bytes: &[u8],
        now: i64,
    ) -> Result<(AppendOutcome, u64)> {
        let tx = conn.transaction_with_behavior(TransactionBehavior::RowLocks)?;
        match Self::lease_state(&tx, id, agent_id, attempt)? {
            Lease::Held => {}
            other => return Ok((AppendOutcome::Refused(other), 0)),
        }
        let (stored, followed_until): (i64, i64) = tx.query_row(
            "SELECT log_bytes, log_followed_until FROM jobs WHERE id = ?1",
            [id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        let mut stored = stored as u64;
        if offset > stored {
            return Ok((AppendOutcome::Gap(stored), 0));
        }
        // A resend overlapping what we have: keep only the part beyond our end.
        let skip = (stored - offset) as usize;
        if skip >= bytes.len() {
            return Ok((AppendOutcome::Ack(stored), 0));
        }
        let new = &bytes[skip..];
        tx.execute(
            "INSERT INTO log_chunks(job_id, start, bytes) VALUES (?1, ?2, ?3)",
            params![id, stored as i64, new],
        )?;
        super::times::note_arrival(&tx, id, stored, now)?;
        stored += new.len() as u64;
        tx.execute(
            "UPDATE jobs SET log_bytes = ?2 WHERE id = ?1",
            params![id, stored as i64],
        )?;
        if followed_until > now {
            // A live page follows this log on some replica: tell them all (on commit).
            tx.query_row(
                "SELECT pg_notify('bosun_changes', ?1)",
                [id.to_string()],
                |_| Ok(()),
            )?;
        }
        tx.commit()?;
        Ok((AppendOutcome::Ack(stored), new.len() as u64))
    }

    pub(super) fn append_events(
        &self,
        id: i64,
        agent_id: &str,
        attempt: Option<u32>,
        first_seq: u64,
        events: &[JobEvent],
    ) -> Result<EventsOutcome> {
        let mut conn = self.conn()?;
        let tx = conn.transaction_with_behavior(TransactionBehavior::RowLocks)?;
        match Self::lease_state(&tx, id, agent_id, attempt)? {
            Lease::Held => {}
            other => return Ok(EventsOutcome::Refused(other)),
        }
        let next: i64 = tx.query_row("SELECT event_count FROM jobs WHERE id = ?1", [id], |r| {
            r.get(0)
        })?;
        let next = next as u64;
        if first_seq > next {
            return Ok(EventsOutcome::Gap(next));
        }
        let skip = (next - first_seq) as usize;
        let mut seq = next;
        for ev in events.iter().skip(skip) {
            if let JobEvent::StepStarted {
                commit_sha: Some(sha),
                ..
            } = ev
            {
                // Agent-written: kept only if it is a commit id (shown and linked as one).
                if is_commit_id(sha) {
                    tx.execute(
                        "UPDATE jobs SET resolved_sha = ?2 WHERE id = ?1",
                        params![id, sha.to_ascii_lowercase()],
                    )?;
                }
            }
            let json = serde_json::to_string(ev).map_err(|e| CoordError::Invalid(e.to_string()))?;
            tx.execute(
                "INSERT INTO job_events(job_id, seq, json) VALUES (?1, ?2, ?3)",
                params![id, seq as i64, json],
            )?;
            seq += 1;
        }
        tx.execute(
            "UPDATE jobs SET event_count = ?2 WHERE id = ?1",
            params![id, seq as i64],
        )?;
        tx.commit()?;
        Ok(EventsOutcome::Ack(seq))
    }

    pub(super) fn finish(
        &self,
        id: i64,
        agent_id: &str,
        attempt: Option<u32>,
        req: &FinishRequest,
    ) -> Result<FinishOutcome> {
        let (status, log_bytes, log_sha256) = (req.status, req.log_bytes, req.log_sha256.as_str());
        let error = req.error.as_deref();
        let mut conn = self.conn()?;
        let tx = conn.transaction_with_behavior(TransactionBehavior::RowLocks)?;
        match Self::lease_state(&tx, id, agent_id, attempt)? {
            Lease::Held => {}
            // A resent finish (the answer to the first was lost) for the same status: done.
            Lease::FinishedByYou(s) if s == JobState::from(status).as_str() => {
                return Ok(FinishOutcome::Done)
            }
            other => return Ok(FinishOutcome::Refused(other)),
        }
        let stored: i64 = tx.query_row("SELECT log_bytes FROM jobs WHERE id = ?1", [id], |r| {
            r.get(0)
        })?;
        if log_bytes != stored as u64 {
            return Ok(FinishOutcome::Incomplete(stored as u64));
        }
        // The chunks committed with the length: the digest covers exactly those bytes.
        let digest = Self::log_digest(&tx, id, stored as u64)?;
        let now = now_ms();
        if !digest.eq_ignore_ascii_case(log_sha256.trim()) {
            let msg = format!(
                "log digest differs: the agent sent sha256 {log_sha256}, the coordinator stored {digest} ({stored} bytes)"
            );
            tx.execute(
                "UPDATE jobs SET status = 'infrastructure_fail', error = ?2, finished = ?3, lease_expires = NULL WHERE id = ?1",
                params![id, msg, now],
            )?;
            tx.commit()?;
            return Ok(FinishOutcome::DigestMismatch(msg));
        }
        tx.execute(
            "UPDATE jobs SET status = ?2, error = ?3, finished = ?4, lease_expires = NULL WHERE id = ?1",
            params![id, JobState::from(status).as_str(), error, now],
        )?;
        tx.commit()?;
        Ok(FinishOutcome::Done)
    }

    /// Jobs whose lease lapsed (no heartbeat): back to the queue for another attempt, or
    /// `infrastructure_fail` once they used all attempts; canceled if a cancel was pending.
    /// Returns how many jobs were re-queued (the caller wakes claimers).
    pub(super) fn expire_leases(&self) -> Result<usize> {
        let mut conn = self.conn()?;
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let now = now_ms();
        let lapsed: Vec<(i64, u32, u32, bool)> = {
            let mut st = tx.prepare(
                "SELECT id, attempts, max_attempts, cancel_requested FROM jobs \
                 WHERE status = 'running' AND lease_expires < ?1 ORDER BY id FOR UPDATE",
            )?;
            st.query_map([now], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
                .collect::<sql::Result<Vec<_>>>()?
        };
        let mut requeued = 0;
        for (id, attempts, max, cancel) in lapsed {
            if cancel {
                tx.execute(
                    "UPDATE jobs SET status = 'canceled', finished = ?2, lease_expires = NULL, \
                     error = 'canceled; the agent stopped sending heartbeats' WHERE id = ?1",
                    params![id, now],
                )?;
            } else if attempts >= max {
                let msg = format!(
                    "the agent stopped sending heartbeats (lease lapsed) on attempt {attempts} of {max}"
                );
                tx.execute(
                    "UPDATE jobs SET status = 'infrastructure_fail', finished = ?2, lease_expires = NULL, error = ?3 WHERE id = ?1",
                    params![id, now, msg],
                )?;
            } else {
                // The next attempt's agent sends its log from offset 0 again, so the lost
                // attempt's log and events go; the error field says what happened.
                tx.execute("DELETE FROM job_events WHERE job_id = ?1", [id])?;
                Self::drop_log(&tx, id)?;
                // What the lost attempt stored goes with its log: the next attempt stores
                // its own (its caches stay: they are immutable and whole).
                super::blobs::forget_attempt(&tx, id)?;
                let msg = format!("attempt {attempts} lost its lease (no heartbeat); re-queued");
                tx.execute(
                    "UPDATE jobs SET status = 'queued', agent_id = NULL, lease_expires = NULL, \
                     started = NULL, log_bytes = 0, event_count = 0, error = ?2 WHERE id = ?1",
                    params![id, msg],
                )?;
                requeued += 1;
            }
        }
        tx.commit()?;
        Ok(requeued)
    }
}

/// The claim, in one statement: the agent's last call noted, the oldest queued job it may
/// run that no other claimer holds locked (`FOR UPDATE SKIP LOCKED`; a row another claimer
/// committed meanwhile is re-checked and passed over), leased, and everything the agent is
/// sent about it read in the same statement (its project, pipeline and workflow, the
/// project's variables, a continuation's key or config). The fitting rule is SQLite's
/// (`waiting::fits`): the job's resource class unset or the agent's, and its labels a subset
/// of the agent's (stored as JSON arrays; an agent the table does not know has neither), in
/// a project open to every agent or to this one.
const CLAIM: &str = "WITH agent AS ( \
        UPDATE agents SET last_seen = ?2 WHERE id = ?1 RETURNING resource_class, labels \
    ), pick AS ( \
        SELECT j.id, j.project_id FROM jobs j WHERE j.status = 'queued' \
        AND (NOT EXISTS (SELECT 1 FROM project_agents pa WHERE pa.project_id = j.project_id) \
             OR EXISTS (SELECT 1 FROM project_agents pa WHERE pa.project_id = j.project_id \
                        AND pa.agent_id = ?1)) \
        AND (j.resource_class IS NULL \
             OR j.resource_class = COALESCE((SELECT resource_class FROM agent), '')) \
        AND j.labels::jsonb <@ COALESCE((SELECT labels FROM agent), '[]')::jsonb \
        ORDER BY j.id LIMIT 1 FOR UPDATE OF j SKIP LOCKED \
    ) \
    UPDATE jobs j SET status = 'running', agent_id = ?1, lease_expires = ?3, \
        attempts = j.attempts + 1, started = ?2 \
    FROM pick k JOIN projects p ON p.id = k.project_id \
        LEFT JOIN workflow_jobs wj ON wj.job_id = k.id \
        LEFT JOIN workflows w ON w.id = wj.workflow_id \
        LEFT JOIN pipelines pl ON pl.id = w.pipeline_id \
        LEFT JOIN continuations cn ON cn.pipeline_id = pl.id \
        LEFT JOIN pipeline_configs pc ON pc.pipeline_id = pl.id \
    WHERE j.id = k.id AND j.status = 'queued' \
    RETURNING j.id, p.id, p.uuid, p.slug, p.clone_url, \
        CASE WHEN j.ssh_user_key = 'without' THEN NULL ELSE p.user_key END, p.deploy_key, p.known_hosts, \
        j.commit_sha, j.branch, j.tag, j.job_name, j.pipeline_number, j.attempts, j.pr_number, \
        j.pr_url, j.timeout_secs, j.pr_fork, j.ssh_keys, j.workspace, j.contexts, j.restricted, \
        pl.id, pl.uuid, w.name, w.uuid, pl.params, pl.trigger_source, \
        COALESCE(pl.base_revision, ''), COALESCE(pl.schedule_name, ''), \
        COALESCE(pl.schedule_id, ''), \
        CASE WHEN w.continued = 1 AND cn.pipeline_id IS NOT NULL THEN pc.source END, \
        CASE WHEN w.continued = 1 THEN cn.params END, \
        CASE WHEN w.continued = 0 AND cn.used IS NULL THEN cn.key_sealed END, \
        (SELECT MAX(o.pipeline_number) FROM jobs o WHERE o.project_id = k.project_id \
         AND o.branch IS NOT DISTINCT FROM j.branch AND o.pipeline_number < j.pipeline_number), \
        (SELECT json_agg(json_build_array(e.name, e.value, e.secret) ORDER BY e.name COLLATE \"C\")::text \
         FROM project_env e WHERE e.project_id = k.project_id)";

/// A claimed job's row as [`CLAIM`] returns it, secrets still sealed.
struct Claimed {
    id: i64,
    pid: i64,
    project: WireProject,
    user_key: Option<String>,
    deploy_key: Option<String>,
    known_hosts: String,
    commit_sha: String,
    branch: Option<String>,
    tag: Option<String>,
    job_name: String,
    pipeline_number: i64,
    attempts: u32,
    pull_request: Option<WirePullRequest>,
    timeouts: WireTimeouts,
    fork: bool,
    ssh_keys: Option<String>,
    workspace: Option<String>,
    contexts: String,
    restricted: bool,
    /// The pipeline's row id and what the agent is told of it (a job queued on its own has
    /// none).
    pipeline: Option<(i64, bosun_protocol::WirePipeline)>,
    /// The continued config and its parameters (a job of a workflow a continuation added).
    continued: Option<(String, Option<String>)>,
    /// The pipeline's continuation key, sealed (a job of its setup workflow, not used yet).
    continuation_key: Option<String>,
    previous_build_num: Option<i64>,
    /// The project's variables, JSON `[[name, value, secret]]` by name, secret ones sealed.
    env: Option<String>,
}

fn claimed(r: &Row) -> sql::Result<Claimed> {
    let pull_request = match (r.get::<_, Option<i64>>(14)?, r.get(15)?) {
        (Some(n), Some(url)) => Some(WirePullRequest {
            number: n as u64,
            url,
            fork: r.get(17)?,
        }),
        _ => None,
    };
    let timeouts = match r.get::<_, Option<i64>>(16)? {
        Some(s) if s > 0 => WireTimeouts { job_secs: s as u64 },
        _ => WireTimeouts::default(),
    };
    let pipeline = match r.get::<_, Option<i64>>(22)? {
        Some(row) => Some((
            row,
            bosun_protocol::WirePipeline {
                id: r.get(23)?,
                workflow: r.get(24)?,
                workflow_id: r.get(25)?,
                parameters: serde_json::from_str(&r.get::<_, String>(26)?).unwrap_or_default(),
                trigger_source: r.get(27)?,
                base_revision: r.get(28)?,
                schedule_name: r.get(29)?,
                schedule_id: r.get(30)?,
                config: None,
            },
        )),
        None => None,
    };
    Ok(Claimed {
        id: r.get(0)?,
        pid: r.get(1)?,
        project: WireProject {
            uuid: r.get(2)?,
            slug: r.get(3)?,
            clone_url: r.get(4)?,
        },
        user_key: r.get(5)?,
        deploy_key: r.get(6)?,
        known_hosts: r.get(7)?,
        commit_sha: r.get(8)?,
        branch: r.get(9)?,
        tag: r.get(10)?,
        job_name: r.get(11)?,
        pipeline_number: r.get(12)?,
        attempts: r.get(13)?,
        pull_request,
        timeouts,
        fork: r.get(17)?,
        ssh_keys: r.get(18)?,
        workspace: r.get(19)?,
        contexts: r.get(20)?,
        restricted: r.get(21)?,
        pipeline,
        continued: r
            .get::<_, Option<String>>(31)?
            .map(|c| Ok::<_, sql::SqlError>((c, r.get(32)?)))
            .transpose()?,
        continuation_key: r.get(33)?,
        previous_build_num: r.get(34)?,
        env: r.get(35)?,
    })
}

/// The job as the agent gets it: its secrets opened, and what a forked pull request's build
/// may have only (`forks::gives`; restricted or not was decided when its pipeline was made,
/// and is the job's own flag, so a rerun outside its workflow keeps it).
fn wire_job(conn: &Connection, secrets: &SecretsKey, c: Claimed) -> Result<WireJob> {
    let (id, pid) = (c.id, c.pid);
    let restricted = c.restricted;
    let pipeline_row = c.pipeline.as_ref().map(|(row, _)| *row);
    let pipeline = c.pipeline.map(|(_, mut p)| {
        if let Some((config, params)) = c.continued {
            p.config = Some(config);
            p.parameters = params
                .and_then(|p| serde_json::from_str(&p).ok())
                .unwrap_or_default();
        }
        p
    });
    let mut keys = Vec::new();
    for (role, what, column, key) in [
        (WireKeyRole::User, Given::UserKey, "user_key", c.user_key),
        (
            WireKeyRole::Deploy,
            Given::DeployKey,
            "deploy_key",
            c.deploy_key,
        ),
    ] {
        if !forks::gives(restricted, what) {
            continue;
        }
        if let Some(sealed) = key {
            let private_key = secrets.open(&secrets::key_place(pid, column), &sealed)?;
            keys.push(WireKey {
                role,
                private_key: private_key.as_str().to_owned(),
                fingerprint: None,
            });
        }
    }
    let secret_values = forks::gives(restricted, Given::Env { secret: true });
    let mut env = Vec::new();
    let vars: Vec<(String, String, i64)> = c
        .env
        .and_then(|e| serde_json::from_str(&e).ok())
        .unwrap_or_default();
    for (name, value, secret) in vars {
        let secret = secret != 0;
        if !forks::gives(restricted, Given::Env { secret }) {
            continue;
        }
        let value = if secret {
            secrets
                .open(&secrets::env_place(pid, &name), &value)?
                .as_str()
                .to_owned()
        } else {
            value
        };
        env.push(WireEnv {
            name,
            value,
            secret,
        });
    }
    // A setup workflow's job continues its pipeline with this key (a secret value);
    // restricted builds get no secret values, so not this one either.
    if let (true, Some(sealed), Some(row)) = (secret_values, &c.continuation_key, pipeline_row) {
        let key = secrets.open(&crate::store::api_v2::continuation_place(row), sealed)?;
        env.push(WireEnv {
            name: "CIRCLE_CONTINUATION_KEY".into(),
            value: key.as_str().to_owned(),
            secret: true,
        });
    }
    // The contexts it was given when queued (none for a restricted fork build): their
    // variables over the project's, a later context's over an earlier one's, all secret.
    let context_ids: Vec<String> = if secret_values {
        serde_json::from_str(&c.contexts).unwrap_or_default()
    } else {
        Vec::new()
    };
    let (env, context_ids) = if context_ids.is_empty() {
        (env, context_ids)
    } else {
        let contexts = super::contexts::values_of(conn, secrets, &context_ids)?;
        let ids = contexts.iter().map(|c| c.id.clone()).collect();
        let layered = crate::model::contexts::layer(
            env.into_iter()
                .map(|e| (e.name, e.value, e.secret))
                .collect(),
            contexts
                .into_iter()
                .map(|c| {
                    c.vars
                        .into_iter()
                        .map(|(n, v)| (n, v.as_str().to_owned()))
                        .collect()
                })
                .collect(),
        );
        let env = layered
            .into_iter()
            .map(|(name, value, secret)| WireEnv {
                name,
                value,
                secret,
            })
            .collect();
        (env, ids)
    };
    Ok(WireJob {
        id: id.to_string(),
        project: c.project,
        commit_sha: c.commit_sha,
        branch: c.branch,
        tag: c.tag,
        pull_request: c.pull_request,
        job_name: c.job_name,
        pipeline_number: c.pipeline_number as u64,
        keys,
        known_hosts: c
            .known_hosts
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(String::from)
            .collect(),
        env,
        timeouts: c.timeouts,
        attempt: c.attempts,
        previous_build_num: c.previous_build_num.map(|n| n as u64),
        username: None,
        ssh_keys: c
            .ssh_keys
            .and_then(|j| serde_json::from_str(&j).ok())
            .unwrap_or_default(),
        store: Some(WireStore {
            workspace: super::blobs::workspace_of(id, c.workspace),
            cache_writes: !c.fork,
        }),
        pipeline,
        context_ids,
    })
}

//! The agent side: claims, leases and heartbeats, log and event appends, finishes, and the
//! job as it travels to the agent.

use super::*;
use crate::model::forks::{self, Given};

impl Store {
    // ---- agent calls ----

    /// Lease the oldest queued job this agent can run, in one IMMEDIATE transaction so two
    /// claimers (threads or processes) never get the same job.
    ///
    /// The agent's resource class and labels are the ones stored for it (fixed at
    /// registration, changed by `relabel`), never what a claim says; a project restricted to
    /// some agents (`project restrict`) is offered to those only.
    pub(super) fn claim(&self, agent_id: &str, lease: Duration) -> Result<Option<WireJob>> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute(
            "UPDATE agents SET last_seen = ?2 WHERE id = ?1",
            params![agent_id, now_ms()],
        )?;
        let (resource_class, labels): (String, Vec<String>) = tx
            .query_row(
                "SELECT resource_class, labels FROM agents WHERE id = ?1",
                [agent_id],
                |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)),
            )
            .optional()?
            .map(|(rc, l)| (rc, serde_json::from_str(&l).unwrap_or_default()))
            .unwrap_or_default();
        let resource_class = resource_class.as_str();
        let labels = labels.as_slice();
        let candidates: Vec<(i64, Option<String>, String)> = {
            let mut st = tx.prepare(
                "SELECT j.id, j.resource_class, j.labels FROM jobs j WHERE j.status = 'queued' \
                 AND (NOT EXISTS (SELECT 1 FROM project_agents pa WHERE pa.project_id = j.project_id) \
                      OR EXISTS (SELECT 1 FROM project_agents pa WHERE pa.project_id = j.project_id \
                                 AND pa.agent_id = ?1)) \
                 ORDER BY j.id LIMIT 200",
            )?;
            let rows = st
                .query_map([agent_id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            rows
        };
        // A job fits when its resource class is unset or equal, and the agent has every label
        // (the rule a queued job's wait reason counts agents by).
        let fits = |rc: &Option<String>, jl: &str| {
            let wanted: Vec<String> = serde_json::from_str(jl).unwrap_or_default();
            super::waiting::fits(rc.as_deref(), &wanted, resource_class, labels)
        };
        let Some(id) = candidates
            .iter()
            .find(|(_, rc, jl)| fits(rc, jl))
            .map(|c| c.0)
        else {
            return Ok(None);
        };
        let now = now_ms();
        tx.execute(
            "UPDATE jobs SET status = 'running', agent_id = ?2, lease_expires = ?3, \
             attempts = attempts + 1, started = ?4 WHERE id = ?1 AND status = 'queued'",
            params![id, agent_id, now + lease.as_millis() as i64, now],
        )?;
        let job = wire_job(&tx, &self.secrets, id)?;
        tx.commit()?;
        Ok(Some(job))
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
                "SELECT status, agent_id, attempts FROM jobs WHERE id = ?1",
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
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
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
             UNION SELECT id FROM jobs INDEXED BY jobs_ssh_state WHERE agent_id = ?1 \
             AND ssh_state IS NOT NULL AND cancel_requested = 1 \
             AND json_extract(ssh_state, '$.held_until_ms') IS NOT NULL \
             ORDER BY id",
        )?;
        let ids = stmt
            .query_map([agent_id], |r| r.get::<_, i64>(0))?
            .map(|r| r.map(|id| id.to_string()))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        Ok(ids)
    }

    /// Append log bytes sent for `offset`; see `docs/protocol.md` (idempotent by offset).
    pub(super) fn append_log(
        &self,
        id: i64,
        agent_id: &str,
        attempt: Option<u32>,
        offset: u64,
        bytes: &[u8],
    ) -> Result<AppendOutcome> {
        let mut conn = self.conn();
        // The bytes themselves are not fsync'd until the finish (see the module comment), so
        // fsyncing the WAL for their length would buy nothing: commit with NORMAL (durable
        // against a crash of the process; the finish's FULL commit syncs the WAL, and with it
        // every commit before it).
        conn.execute_batch("PRAGMA synchronous=NORMAL")?;
        let out = Self::append_log_tx(&self.logs, &mut conn, id, agent_id, attempt, offset, bytes);
        conn.execute_batch("PRAGMA synchronous=FULL")?;
        out.map(|(outcome, added)| {
            self.appended
                .fetch_add(added, std::sync::atomic::Ordering::Relaxed);
            if let (AppendOutcome::Ack(end), true) = (&outcome, added > 0) {
                self.note_arrival(id, end - added, now_ms());
            }
            outcome
        })
    }

    /// New log bytes appended through this store since it opened.
    pub(super) fn appended_log_bytes(&self) -> u64 {
        self.appended.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn append_log_tx(
        logs: &Path,
        conn: &mut Connection,
        id: i64,
        agent_id: &str,
        attempt: Option<u32>,
        offset: u64,
        bytes: &[u8],
    ) -> Result<(AppendOutcome, u64)> {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        match Self::lease_state(&tx, id, agent_id, attempt)? {
            Lease::Held => {}
            other => return Ok((AppendOutcome::Refused(other), 0)),
        }
        let stored: i64 = tx.query_row("SELECT log_bytes FROM jobs WHERE id = ?1", [id], |r| {
            r.get(0)
        })?;
        let mut stored = stored as u64;
        let path = log_path(logs, id);
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&path)
            .map_err(io_err(&path))?;
        let on_disk = file.metadata().map_err(io_err(&path))?.len();
        if on_disk < stored {
            // The host crashed before the file reached the disk: what survived is the log.
            tracing::warn!(
                job = id,
                "log file {} has {on_disk} of {stored} committed bytes (host crash?); asking the agent to resend from {on_disk}",
                path.display()
            );
            tx.execute(
                "UPDATE jobs SET log_bytes = ?2 WHERE id = ?1",
                params![id, on_disk as i64],
            )?;
            tx.commit()?;
            return Ok((AppendOutcome::Gap(on_disk), 0));
        }
        if offset > stored {
            return Ok((AppendOutcome::Gap(stored), 0));
        }
        // A resend overlapping what we have: keep only the part beyond our end.
        let skip = (stored - offset) as usize;
        if skip >= bytes.len() {
            return Ok((AppendOutcome::Ack(stored), 0));
        }
        let new = &bytes[skip..];
        {
            use std::os::unix::fs::FileExt;
            if on_disk > stored {
                // An append that wrote but never committed: not part of the log.
                file.set_len(stored).map_err(io_err(&path))?;
            }
            file.write_all_at(new, stored).map_err(io_err(&path))?;
        }
        stored += new.len() as u64;
        tx.execute(
            "UPDATE jobs SET log_bytes = ?2 WHERE id = ?1",
            params![id, stored as i64],
        )?;
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
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
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
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
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
        let (digest, on_disk) = self.log_digest(id, stored as u64)?;
        if on_disk < stored as u64 {
            // Lost in a host crash (see the module comment): have the agent resend it.
            tx.execute(
                "UPDATE jobs SET log_bytes = ?2 WHERE id = ?1",
                params![id, on_disk as i64],
            )?;
            tx.commit()?;
            return Ok(FinishOutcome::Incomplete(on_disk));
        }
        // The agent deletes its spool once this finish is acknowledged.
        self.sync_log(id)?;
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
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let now = now_ms();
        let lapsed: Vec<(i64, u32, u32, bool)> = {
            let mut st = tx.prepare(
                "SELECT id, attempts, max_attempts, cancel_requested FROM jobs \
                 WHERE status = 'running' AND lease_expires < ?1",
            )?;
            let rows = st
                .query_map([now], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            rows
        };
        let mut requeued = 0;
        let mut requeued_ids = Vec::new();
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
                // What the lost attempt stored goes with its log: the next attempt stores
                // its own (its caches stay: they are immutable and whole).
                super::blobs::forget_attempt(&tx, id)?;
                requeued_ids.push(id);
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
        // After the commit: a crash before this leaves a file longer than `log_bytes` (0),
        // which the next attempt's first append cuts back.
        for id in requeued_ids {
            self.drop_log(id);
        }
        Ok(requeued)
    }
}

fn wire_job(conn: &Connection, secrets: &SecretsKey, id: i64) -> Result<WireJob> {
    let (pid, uuid, slug, clone_url, user_key, deploy_key, known_hosts): (
        i64,
        String,
        String,
        String,
        Option<String>,
        Option<String>,
        String,
    ) = conn.query_row(
        // A rerun with SSH asked by someone other than the user key's owner runs without it
        // (`model::ssh_policy`).
        "SELECT p.id, p.uuid, p.slug, p.clone_url, \
         CASE WHEN j.ssh_user_key = 'without' THEN NULL ELSE p.user_key END, p.deploy_key, \
         p.known_hosts FROM jobs j JOIN projects p ON p.id = j.project_id WHERE j.id = ?1",
        [id],
        |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
                r.get(6)?,
            ))
        },
    )?;
    let (
        commit_sha,
        branch,
        tag,
        job_name,
        pipeline_number,
        attempts,
        pull_request,
        timeouts,
        restricted,
    ) = conn.query_row(
        "SELECT commit_sha, branch, tag, job_name, pipeline_number, attempts, pr_number, \
             pr_url, timeout_secs, pr_fork, restricted FROM jobs WHERE id = ?1",
        [id],
        |r| {
            let pull_request = match (r.get::<_, Option<i64>>(6)?, r.get(7)?) {
                (Some(n), Some(url)) => Some(WirePullRequest {
                    number: n as u64,
                    url,
                    fork: r.get(9)?,
                }),
                _ => None,
            };
            let timeouts = match r.get::<_, Option<i64>>(8)? {
                Some(s) if s > 0 => WireTimeouts { job_secs: s as u64 },
                _ => WireTimeouts::default(),
            };
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, Option<String>>(1)?,
                r.get::<_, Option<String>>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, i64>(4)?,
                r.get::<_, u32>(5)?,
                pull_request,
                timeouts,
                r.get::<_, bool>(10)?,
            ))
        },
    )?;
    // A forked pull request's build is given what `forks::gives` says (restricted or not was
    // decided when the pipeline was made). The job's own flag, not its workflow's: a rerun
    // is outside the workflow and keeps what its job was.
    let pipeline = Store::wire_pipeline(conn, id)?.map(|(p, _)| p);
    let mut keys = Vec::new();
    for (role, what, column, key) in [
        (WireKeyRole::User, Given::UserKey, "user_key", user_key),
        (
            WireKeyRole::Deploy,
            Given::DeployKey,
            "deploy_key",
            deploy_key,
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
    let env = {
        let mut st = conn.prepare(
            "SELECT name, value, secret FROM project_env WHERE project_id = ?1 ORDER BY name",
        )?;
        let rows = st
            .query_map([pid], |r| {
                Ok(WireEnv {
                    name: r.get(0)?,
                    value: r.get(1)?,
                    secret: r.get(2)?,
                })
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        let mut env = Vec::with_capacity(rows.len());
        for mut e in rows {
            if !forks::gives(restricted, Given::Env { secret: e.secret }) {
                continue;
            }
            if e.secret {
                e.value = secrets
                    .open(&secrets::env_place(pid, &e.name), &e.value)?
                    .as_str()
                    .to_owned();
            }
            env.push(e);
        }
        // A setup workflow's job continues its pipeline with this key (a secret value);
        // restricted builds get no secret values, so not this one either.
        if forks::gives(restricted, Given::Env { secret: true }) {
            env.extend(super::api_v2::continuation_env(conn, secrets, id)?);
        }
        env
    };
    // The contexts it was given when queued (none for a restricted fork build): their
    // variables over the project's, a later context's over an earlier one's, all secret.
    let context_ids: Vec<String> = if forks::gives(restricted, Given::Env { secret: true }) {
        let ids: String = conn.query_row("SELECT contexts FROM jobs WHERE id = ?1", [id], |r| {
            r.get(0)
        })?;
        serde_json::from_str(&ids).unwrap_or_default()
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
    let previous_build_num: Option<i64> = conn.query_row(
        "SELECT MAX(pipeline_number) FROM jobs WHERE project_id = ?1 AND branch IS ?2 \
         AND pipeline_number < ?3",
        rusqlite::params![pid, branch, pipeline_number],
        |r| r.get(0),
    )?;
    Ok(WireJob {
        id: id.to_string(),
        project: WireProject {
            uuid,
            slug,
            clone_url,
        },
        commit_sha,
        branch,
        tag,
        pull_request,
        job_name,
        pipeline_number: pipeline_number as u64,
        keys,
        known_hosts: known_hosts
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(String::from)
            .collect(),
        env,
        timeouts,
        attempt: attempts,
        previous_build_num: previous_build_num.map(|n| n as u64),
        username: None,
        ssh_keys: ssh::job_ssh_keys(conn, id)?,
        store: Some(super::blobs::wire_store(conn, id)?),
        pipeline,
        context_ids,
    })
}

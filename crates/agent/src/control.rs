//! The control channel: one long poll (`POST /agents/control`) kept open while the agent
//! runs jobs, so a cancel reaches a job within a round trip instead of at the next heartbeat
//! answer. Heartbeats still renew leases and still carry cancels (a coordinator without this
//! endpoint, or one the poll cannot reach, is served by them as before).

use super::client::{ApiErr, Backoff};
use super::Agent;
use bosun_core::protocol::{ControlRequest, DEFAULT_CONTROL_WAIT_SECS};
use std::sync::Arc;
use std::time::Duration;

/// Poll until the agent stops. Idle (no job running), it waits for a job instead of polling:
/// there is nothing to cancel, and an idle agent's requests stay at heartbeats and claims.
pub(super) async fn control_loop(agent: Arc<Agent>) {
    let mut backoff = Backoff::default();
    let wait = Duration::from_secs(DEFAULT_CONTROL_WAIT_SECS);
    loop {
        if agent.fatal.is_cancelled() {
            return;
        }
        // Registered before the check, so a job starting in between wakes us.
        let changed = agent.changed.notified();
        let seen: Option<Vec<String>> = {
            let jobs = agent.jobs();
            (!jobs.is_empty()).then(|| {
                jobs.iter()
                    .filter(|(_, e)| e.cancel.is_cancelled())
                    .map(|(id, _)| id.clone())
                    .collect()
            })
        };
        let Some(cancels_seen) = seen else {
            tokio::select! {
                _ = changed => {},
                _ = agent.fatal.cancelled() => return,
            }
            continue;
        };
        let req = ControlRequest { cancels_seen };
        let result = tokio::select! {
            r = agent.client.control(&req, wait) => r,
            _ = agent.fatal.cancelled() => return,
        };
        match result {
            Ok(Some(answer)) => {
                backoff.reset();
                let jobs = agent.jobs();
                for id in &answer.cancel {
                    if let Some(e) = jobs.get(id) {
                        if !e.cancel.is_cancelled() {
                            tracing::info!(job = %id, "canceled by the coordinator");
                            e.cancel.cancel();
                        }
                    }
                }
            }
            Ok(None) => backoff.reset(),
            Err(ApiErr::Unauthorized(m)) => {
                agent.unauthorized(&m);
                return;
            }
            // An older coordinator: heartbeats carry its cancels.
            Err(ApiErr::NotFound(m)) => {
                tracing::info!(
                    "the coordinator has no control channel ({m}); cancels arrive with heartbeats"
                );
                return;
            }
            Err(e) => {
                let d = backoff.next_delay();
                tracing::warn!("control: {e}; retrying in {:.1}s", d.as_secs_f64());
                tokio::select! {
                    _ = tokio::time::sleep(d) => {},
                    _ = agent.fatal.cancelled() => return,
                }
            }
        }
    }
}

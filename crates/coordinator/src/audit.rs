//! The audit log's one door: every code path that logs someone in or out, triggers, reruns
//! (with SSH or not), approves, cancels, changes a project's settings, makes or revokes a
//! token, or grants or revokes admin calls [`record`] once it is done. The row is scrubbed
//! first (`model::audit::scrubbed`: no token-shaped word reaches it), stamped with the time
//! and kept by the store (`AuditStore`). Read on `/admin/audit` (coordinator admins) and
//! with `bosun coordinator audit --json` (docs/people.md).

pub use crate::model::audit::{Actor, AuditAction, Event};
use crate::store::Backend;
use crate::AppState;

/// Keep `e` (scrubbed) as done now.
pub fn record(s: &dyn Backend, e: Event) -> crate::Result<()> {
    let e = crate::model::audit::scrubbed(&e);
    s.record_audit(crate::store::now_ms(), &e)?;
    Ok(())
}

/// [`record`] from a request handler.
pub async fn record_async(state: &AppState, e: Event) -> crate::Result<()> {
    state.db(move |s: &dyn Backend| record(s, e)).await
}

/// The CLI on the coordinator's host, as its environment names its user.
pub fn host() -> Actor {
    let user = std::env::var("SUDO_USER")
        .ok()
        .filter(|u| !u.is_empty())
        .or_else(|| std::env::var("USER").ok().filter(|u| !u.is_empty()))
        .unwrap_or_else(|| "unknown".to_owned());
    Actor::Host(user)
}

/// Delete every row written before `cut_off` (ms), [`crate::model::audit::PRUNE_BATCH`] at
/// a time (each its own statement, so other writers get in between): how many went.
pub fn prune(s: &dyn Backend, cut_off: i64) -> crate::Result<u64> {
    let batch = crate::model::audit::PRUNE_BATCH;
    let mut total = 0u64;
    loop {
        let n = s.prune_audit(cut_off, batch)?;
        total += n;
        if n < u64::from(batch) {
            return Ok(total);
        }
    }
}

/// How often the server prunes the audit log (`serve --audit-retention`).
const SWEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(3600);

/// Prune rows older than `retention` now and every [`SWEEP_EVERY`] until the server stops;
/// one batch per store call, so a large backlog never holds the writer for long.
pub fn spawn_sweeper(state: std::sync::Arc<AppState>, retention: crate::model::audit::Retention) {
    if retention == crate::model::audit::Retention::Forever {
        return;
    }
    tokio::spawn(async move {
        loop {
            if let Some(cut_off) = crate::model::audit::cut_off(crate::store::now_ms(), retention) {
                match sweep(&state, cut_off).await {
                    Ok(0) => {}
                    Ok(n) => {
                        tracing::info!(rows = n, "audit log: rows past --audit-retention removed")
                    }
                    Err(e) => tracing::warn!("audit log: pruning failed (tried again later): {e}"),
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(SWEEP_EVERY) => {}
                _ = state.shutdown.cancelled() => return,
            }
        }
    });
}

async fn sweep(state: &AppState, cut_off: i64) -> crate::Result<u64> {
    let batch = crate::model::audit::PRUNE_BATCH;
    let mut total = 0u64;
    loop {
        let n = state
            .db(move |s: &dyn Backend| s.prune_audit(cut_off, batch))
            .await?;
        total += n;
        if n < u64::from(batch) || state.shutdown.is_cancelled() {
            return Ok(total);
        }
    }
}

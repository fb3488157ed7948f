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

//! The job page's SSH row: how to reach a running job queued with SSH keys (what its agent
//! last reported: the command, sessions open, held until — also after its end, while the hold
//! lasts), or, on a finished job, the command that reruns it with SSH.

use super::super::store::JobRow;
use super::{esc, iso_utc};

/// The row's content (`None`: no row), also sent to live pages when it changes.
pub fn row_html(j: &JobRow) -> Option<String> {
    // A finished job its agent still holds for SSH shows how to reach it until the hold ends.
    let held = j
        .ssh_state
        .as_ref()
        .is_some_and(|s| s.held_until_ms.is_some());
    if j.is_final() && !held {
        return Some(format!(
            "rerun it with SSH: <code>{}</code>",
            esc(&super::super::rerun::command(j.id))
        ));
    }
    if !j.ssh {
        return None;
    }
    let Some(s) = &j.ssh_state else {
        return Some(
            "enabled; the command shows here (and in the job's output) once its agent starts it"
                .to_owned(),
        );
    };
    let mut out = format!(
        "<code>ssh -p {} {}@{}</code> — {} session{}",
        s.port,
        j.id,
        esc(&s.host),
        s.sessions,
        if s.sessions == 1 { "" } else { "s" }
    );
    match s.held_until_ms {
        Some(ms) => {
            let iso = iso_utc(ms);
            out.push_str(&format!(
                ", held until <span class=\"held\" title=\"{iso}\">{}</span>",
                iso.replace('T', " ").replace('Z', " UTC")
            ));
        }
        None => out.push_str(", steps running"),
    }
    if !s.fingerprint.is_empty() {
        out.push_str(&format!(
            " <span class=\"fp\">(host key <code>{}</code>)</span>",
            esc(&s.fingerprint)
        ));
    }
    Some(out)
}

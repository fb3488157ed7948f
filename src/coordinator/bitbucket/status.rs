//! Commit statuses to Bitbucket's REST API: `POST {api}/repositories/{workspace}/{repo}/
//! commit/{sha}/statuses/build` with `{key, state, name, description, url, refname}`; a
//! POST with an existing key overwrites it, so a job's INPROGRESS becomes its
//! SUCCESSFUL/FAILED/STOPPED. The store's outbox (filled in the same transaction as the
//! status change) is sent here, on its own task: a slow or failing Bitbucket never holds up
//! dispatch. Failures are retried with backoff; a job's statuses go out in order.

use super::super::store::pipelines::OutgoingStatus;
use super::super::AppState;
use std::sync::Arc;
use std::time::Duration;

/// Attempts before a status is given up (about an hour of backoff).
const MAX_ATTEMPTS: u32 = 12;

#[derive(Debug, thiserror::Error)]
enum SendError {
    #[error("{0}")]
    Http(#[from] reqwest::Error),
    #[error("Bitbucket answered {status}: {body}")]
    Refused { status: u16, body: String },
}

/// Start the sender.
pub fn spawn(state: Arc<AppState>) {
    tokio::spawn(async move {
        let client = match reqwest::Client::builder()
            .timeout(Duration::from_secs(15))
            .user_agent(concat!("bosun/", env!("CARGO_PKG_VERSION")))
            .build()
        {
            Ok(c) => c,
            Err(e) => {
                tracing::error!("commit statuses are off: no HTTP client: {e}");
                return;
            }
        };
        let mut changed = state.changed.subscribe();
        loop {
            changed.borrow_and_update();
            match state.db(|s| s.due_statuses(32)).await {
                Ok(due) => {
                    for s in due {
                        deliver(&state, &client, s).await;
                    }
                }
                Err(e) => tracing::warn!("commit statuses: {e}"),
            }
            tokio::select! {
                _ = changed.changed() => {}
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                _ = state.shutdown.cancelled() => return,
            }
        }
    });
}

/// The backoff after `attempts` failures: 1 s doubling, at most 10 minutes.
fn backoff(attempts: u32) -> Duration {
    Duration::from_secs(1u64 << attempts.min(10)).min(Duration::from_secs(600))
}

async fn deliver(state: &Arc<AppState>, client: &reqwest::Client, s: OutgoingStatus) {
    let id = s.id;
    match send(client, &s).await {
        Ok(()) => {
            if let Err(e) = state.db(move |st| st.status_sent(id)).await {
                tracing::warn!("commit status {id}: {e}");
            }
        }
        Err(e) => {
            let give_up = s.attempts + 1 >= MAX_ATTEMPTS;
            let wait = backoff(s.attempts);
            tracing::warn!(
                "commit status for {} failed (attempt {}): {e}{}",
                s.commit_sha,
                s.attempts + 1,
                if give_up { "; giving up" } else { "" }
            );
            let msg = e.to_string();
            if let Err(e) = state
                .db(move |st| st.status_failed(id, &msg, wait, give_up))
                .await
            {
                tracing::warn!("commit status {id}: {e}");
            }
        }
    }
}

async fn send(client: &reqwest::Client, s: &OutgoingStatus) -> Result<(), SendError> {
    let url = format!(
        "{}/repositories/{}/commit/{}/statuses/build",
        s.api.trim_end_matches('/'),
        s.workspace_repo,
        s.commit_sha
    );
    let mut req = client
        .post(url)
        .header("content-type", "application/json")
        .body(s.body.clone());
    let creds = s.credentials.as_str();
    if let Some(token) = creds.strip_prefix("bearer:") {
        req = req.bearer_auth(token);
    } else if let Some((user, pass)) = creds.split_once(':') {
        req = req.basic_auth(user, Some(pass));
    }
    let resp = req.send().await?;
    let status = resp.status();
    if status.is_success() {
        return Ok(());
    }
    let body: String = resp
        .text()
        .await
        .unwrap_or_default()
        .chars()
        .take(300)
        .collect();
    Err(SendError::Refused {
        status: status.as_u16(),
        body,
    })
}

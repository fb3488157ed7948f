//! Commit statuses to Bitbucket's REST API: `POST {api}/repositories/{workspace}/{repo}/
//! commit/{sha}/statuses/build` with `{key, state, name, description, url, refname}`; a
//! POST with an existing key overwrites it, so a job's INPROGRESS becomes its
//! SUCCESSFUL/FAILED/STOPPED. The store's outbox (filled in the same transaction as the
//! status change) is sent here, on its own task: a slow or failing Bitbucket never holds up
//! dispatch. Failures are retried with backoff; a job's statuses go out in order.
//!
//! Bitbucket Data Center speaks another shape: a project's `--status-api
//! data-center:https://bitbucket.example.com` posts to `{base}/rest/api/latest/projects/
//! {project}/repos/{repo}/commits/{sha}/builds` with `ref` for `refname` and `CANCELLED` for
//! `STOPPED` (Atlassian's "Updating build status for commits").

use super::super::store::pipelines::{OutgoingStatus, StatusBody, StatusChange, Statuses};
use super::super::AppState;
use crate::model::{JobKind, StatusApi};
use bosun_protocol::WorkflowJobStatus;
use std::sync::Arc;
use std::time::Duration;

/// Attempts before a status is given up (about an hour of backoff).
const MAX_ATTEMPTS: u32 = 12;

/// What a status transition posts: Bitbucket's state and CircleCI's description.
fn status_words(s: WorkflowJobStatus) -> Option<(&'static str, &'static str)> {
    use WorkflowJobStatus as W;
    Some(match s {
        W::Queued | W::Running => ("INPROGRESS", "Your tests are running on Bosun"),
        W::OnHold => ("INPROGRESS", "Waiting for approval"),
        W::Success => ("SUCCESSFUL", "Your tests passed on Bosun!"),
        W::Failed | W::TimedOut | W::InfrastructureFail => ("FAILED", "Your tests failed on Bosun"),
        W::Canceled => ("STOPPED", "Your tests were canceled"),
        // Not run: its contexts were refused (the reason is on the pipeline's page).
        W::Unauthorized => ("FAILED", "Unauthorized: the job may not use its contexts"),
        W::Blocked | W::NotRun | W::NotRunnable | W::Waiting => return None,
    })
}

/// The Bitbucket `key` of a workflow job's status: stable for the same workflow and job
/// name (a rerun overwrites it), at most 40 characters as Bitbucket's key column allows.
pub fn status_key(workflow: &str, job: &str) -> String {
    crate::sha256_hex(format!("bosun/{workflow}/{job}").as_bytes())[..40].to_owned()
}

/// Bitbucket's commit status for a workflow job's new status, in Cloud's shape (the outbox
/// keeps it so; `request_for` makes Data Center's from it). `None`: Bitbucket is not told
/// of this status.
pub fn commit_status(c: &StatusChange<'_>) -> Option<StatusBody> {
    let (state, description) = status_words(c.status)?;
    // Approval and no-op jobs are named with their workflow, as CircleCI names them.
    let name = if c.kind == JobKind::Build {
        format!("ci/circleci: {}", c.job)
    } else {
        format!("ci/circleci: {}/{}", c.workflow, c.job)
    };
    let key = status_key(c.workflow, c.job);
    let mut body = serde_json::json!({
        "key": key,
        "state": state,
        "name": name,
        "description": description,
        "url": c.url,
    });
    if let Some(b) = c.branch {
        body["refname"] = serde_json::Value::String(b.to_owned());
    }
    Some(StatusBody {
        key,
        body: body.to_string(),
    })
}

/// How the store writes the statuses of a server reached at `public_url` (empty: the
/// address the server recorded, for the CLI).
pub fn statuses(public_url: &str) -> Statuses<'_> {
    Statuses {
        public_url,
        write: commit_status,
    }
}

#[derive(Debug, thiserror::Error)]
enum SendError {
    #[error("the status body is not JSON: {0}")]
    Body(#[from] serde_json::Error),
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

/// Where a status goes and what is sent: Cloud's shape as the outbox holds it, or Data
/// Center's made from it.
fn request_for(s: &OutgoingStatus) -> Result<(String, String), SendError> {
    let base = match &s.api {
        StatusApi::DataCenter(base) => base,
        StatusApi::Cloud(api) => {
            let url = format!(
                "{}/repositories/{}/commit/{}/statuses/build",
                api.trim_end_matches('/'),
                s.workspace_repo,
                s.commit_sha
            );
            return Ok((url, s.body.clone()));
        }
    };
    let (project, repo) = s
        .workspace_repo
        .split_once('/')
        .unwrap_or((s.workspace_repo.as_str(), ""));
    let url = format!(
        "{}/rest/api/latest/projects/{project}/repos/{repo}/commits/{}/builds",
        base.trim_end_matches('/'),
        s.commit_sha
    );
    let mut body: serde_json::Value = serde_json::from_str(&s.body)?;
    if let Some(o) = body.as_object_mut() {
        if let Some(r) = o.remove("refname") {
            o.insert("ref".to_owned(), r);
        }
        if o.get("state").and_then(|v| v.as_str()) == Some("STOPPED") {
            o.insert("state".to_owned(), "CANCELLED".into());
        }
    }
    Ok((url, body.to_string()))
}

async fn send(client: &reqwest::Client, s: &OutgoingStatus) -> Result<(), SendError> {
    let (url, body) = request_for(s)?;
    let mut req = client
        .post(url)
        .header("content-type", "application/json")
        .body(body);
    // A text that is no credentials goes unsigned, and Bitbucket's 401 says so.
    if let Ok(creds) = super::rest::Credentials::parse(&s.credentials) {
        req = creds.sign(req);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn status(api: &str, state: &str) -> OutgoingStatus {
        OutgoingStatus {
            id: 1,
            api: StatusApi::from_stored(api),
            credentials: zeroize::Zeroizing::new("u:p".to_owned()),
            workspace_repo: "acme/widget".to_owned(),
            commit_sha: "0123abcd".to_owned(),
            body: serde_json::json!({
                "key": "k1", "state": state, "name": "ci/circleci: build",
                "description": "d", "url": "https://ci/jobs/7", "refname": "main"
            })
            .to_string(),
            attempts: 0,
        }
    }

    #[test]
    fn a_status_on_its_way_never_shows_its_credentials() {
        let mut s = status("https://api.bitbucket.org/2.0", "SUCCESSFUL");
        s.credentials = zeroize::Zeroizing::new("bosun-bot:app-password-XYZZY".to_owned());
        let shown = format!("{s:?}");
        assert!(!shown.contains("XYZZY"), "{shown}");
        assert!(shown.contains("acme/widget"), "the rest is shown: {shown}");
        let source = crate::model::ApiSource {
            api: s.api.clone(),
            credentials: s.credentials.clone(),
            repo: "acme/widget".to_owned(),
        };
        assert!(!format!("{source:?}").contains("XYZZY"));
    }

    #[test]
    fn a_job_status_is_named_as_circleci_names_it_and_keyed_by_workflow_and_job() {
        let change = |kind, status| StatusChange {
            workflow: "main",
            job: "build",
            kind,
            status,
            url: "https://ci/jobs/7",
            branch: Some("dev"),
        };
        let s = commit_status(&change(JobKind::Build, WorkflowJobStatus::Queued)).expect("shown");
        assert_eq!(s.key, status_key("main", "build"));
        assert_eq!(s.key.len(), 40);
        let body: serde_json::Value = serde_json::from_str(&s.body).expect("json");
        assert_eq!(
            body,
            serde_json::json!({
                "key": s.key, "state": "INPROGRESS", "name": "ci/circleci: build",
                "description": "Your tests are running on Bosun",
                "url": "https://ci/jobs/7", "refname": "dev"
            })
        );
        let s =
            commit_status(&change(JobKind::Approval, WorkflowJobStatus::OnHold)).expect("shown");
        assert!(
            s.body.contains("\"name\":\"ci/circleci: main/build\""),
            "{}",
            s.body
        );
        assert!(
            s.body.contains("\"description\":\"Waiting for approval\""),
            "{}",
            s.body
        );
        let mut c = change(JobKind::Build, WorkflowJobStatus::Canceled);
        c.branch = None;
        let s = commit_status(&c).expect("shown");
        assert!(s.body.contains("\"state\":\"STOPPED\""), "{}", s.body);
        assert!(!s.body.contains("refname"), "{}", s.body);
        let s = commit_status(&change(JobKind::Build, WorkflowJobStatus::Unauthorized))
            .expect("an unauthorized job is shown");
        assert!(s.body.contains("\"state\":\"FAILED\""), "{}", s.body);
        assert!(s.body.contains("Unauthorized"), "{}", s.body);
        for hidden in [
            WorkflowJobStatus::Blocked,
            WorkflowJobStatus::Waiting,
            WorkflowJobStatus::NotRun,
            WorkflowJobStatus::NotRunnable,
        ] {
            assert_eq!(commit_status(&change(JobKind::Build, hidden)), None);
        }
    }

    #[test]
    fn cloud_statuses_go_as_the_outbox_holds_them() {
        let s = status("https://api.bitbucket.org/2.0/", "STOPPED");
        let (url, body) = request_for(&s).expect("request");
        assert_eq!(
            url,
            "https://api.bitbucket.org/2.0/repositories/acme/widget/commit/0123abcd/statuses/build"
        );
        assert_eq!(body, s.body);
    }

    #[test]
    fn data_center_statuses_take_its_path_ref_and_cancelled() {
        let s = status("data-center:https://bitbucket.example.com/", "STOPPED");
        let (url, body) = request_for(&s).expect("request");
        assert_eq!(
            url,
            "https://bitbucket.example.com/rest/api/latest/projects/acme/repos/widget/commits/0123abcd/builds"
        );
        let body: serde_json::Value = serde_json::from_str(&body).expect("json");
        assert_eq!(body["state"], "CANCELLED");
        assert_eq!(body["ref"], "main");
        assert!(body.get("refname").is_none());
        assert_eq!(
            (body["key"].as_str(), body["url"].as_str()),
            (Some("k1"), Some("https://ci/jobs/7"))
        );
        let s = status("data-center:https://bitbucket.example.com", "SUCCESSFUL");
        let (_, body) = request_for(&s).expect("request");
        assert!(body.contains("\"state\":\"SUCCESSFUL\""), "{body}");
    }
}

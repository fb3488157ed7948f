//! Bitbucket in and out: `POST /webhooks/bitbucket` (signature checked, deliveries
//! de-duplicated, the seed's build rules applied, pipelines made: [`webhook`]) and commit
//! statuses sent back to Bitbucket's REST API ([`status`]). Payload types in [`payload`],
//! the HMAC check in [`signature`].

pub mod payload;
pub mod signature;
pub mod status;

use super::store::pipelines::NewPipeline;
use super::store::WebhookProject;
use super::AppState;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use payload::{PullRequestEvent, PushEvent};
use std::sync::Arc;

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/webhooks/bitbucket", post(webhook))
        .with_state(state)
}

fn answer(status: StatusCode, body: serde_json::Value) -> Response {
    (status, Json(body)).into_response()
}

fn error(status: StatusCode, msg: impl Into<String>) -> Response {
    answer(status, serde_json::json!({ "error": msg.into() }))
}

fn header<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

/// What a delivery decided, for the answer and the log.
#[derive(Debug, Default)]
struct Decision {
    pipelines: Vec<NewPipeline>,
    skipped: Vec<String>,
}

async fn webhook(State(state): State<Arc<AppState>>, headers: HeaderMap, body: Bytes) -> Response {
    let Some(event) = header(&headers, "x-event-key").map(str::to_owned) else {
        return error(StatusCode::BAD_REQUEST, "no X-Event-Key header");
    };
    // The repository names the project, whose secret checks the signature: the body is
    // parsed before it is trusted, and nothing of it is used until the check passed.
    #[derive(serde::Deserialize)]
    struct Envelope {
        repository: payload::Repository,
    }
    let envelope: Envelope = match serde_json::from_slice(&body) {
        Ok(e) => e,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("payload: {e}")),
    };
    let uuid = envelope.repository.uuid.clone();
    let project = match state.db(move |s| s.project_for_webhook(&uuid)).await {
        Ok(Some(p)) => p,
        Ok(None) => {
            return error(
                StatusCode::NOT_FOUND,
                format!(
                    "no project for repository {}",
                    super::printable(&envelope.repository.uuid)
                ),
            )
        }
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    let Some(secret) = project.secret.as_ref() else {
        return error(
            StatusCode::UNAUTHORIZED,
            "the project has no webhook secret: set one with `bosun coordinator project set --webhook-secret-file`",
        );
    };
    if let Err(e) = signature::verify(
        secret.as_bytes(),
        &body,
        header(&headers, "x-hub-signature"),
    ) {
        return error(StatusCode::UNAUTHORIZED, e.to_string());
    }
    // A delivery Bitbucket retries (or anyone replays) carries the same X-Request-UUID.
    if let Some(delivery) = header(&headers, "x-request-uuid").map(str::to_owned) {
        let ev = event.clone();
        match state.db(move |s| s.first_delivery(&delivery, &ev)).await {
            Ok(true) => {}
            Ok(false) => {
                return answer(
                    StatusCode::OK,
                    serde_json::json!({"ignored": "this delivery was received already"}),
                )
            }
            Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        }
    }
    // The repository's name follows Bitbucket (a rename keeps the project and its settings).
    {
        let (pid, slug) = (project.id, envelope.repository.full_name.clone());
        let main = envelope
            .repository
            .mainbranch
            .as_ref()
            .map(|m| m.name.clone());
        if let Err(e) = state
            .db(move |s| s.follow_repository(pid, &slug, main.as_deref()))
            .await
        {
            return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string());
        }
    }
    let decision = match event.as_str() {
        "repo:push" => match serde_json::from_slice::<PushEvent>(&body) {
            Ok(p) => decide_push(&state, &project, p).await,
            Err(e) => return error(StatusCode::BAD_REQUEST, format!("repo:push payload: {e}")),
        },
        "pullrequest:created"
        | "pullrequest:updated"
        | "pullrequest:fulfilled"
        | "pullrequest:rejected" => match serde_json::from_slice::<PullRequestEvent>(&body) {
            Ok(p) => decide_pull_request(&state, &project, &event, p).await,
            Err(e) => return error(StatusCode::BAD_REQUEST, format!("{event} payload: {e}")),
        },
        other => {
            return answer(
                StatusCode::OK,
                serde_json::json!({"ignored": format!("event {} is not one Bosun builds", super::printable(other))}),
            )
        }
    };
    let decision = match decision {
        Ok(d) => d,
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    let mut made = Vec::new();
    for p in decision.pipelines {
        match state.db(move |s| s.create_pipeline(&p)).await {
            Ok((id, number)) => made.push(serde_json::json!({"id": id, "number": number})),
            Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        }
    }
    if !made.is_empty() {
        state.pipelines_wake.notify_one();
    }
    answer(
        StatusCode::ACCEPTED,
        serde_json::json!({"pipelines": made, "skipped": decision.skipped}),
    )
}

/// `repo:push`: every pushed branch or tag builds, except a deleted ref, a head commit
/// saying `[ci skip]`, and — with "only build pull requests" — a branch other than the
/// default one without an open pull request.
async fn decide_push(
    state: &Arc<AppState>,
    project: &WebhookProject,
    p: PushEvent,
) -> super::Result<Decision> {
    let mut d = Decision::default();
    for change in p.push.changes {
        let Some(new) = change.new else {
            d.skipped.push("a deleted ref".into());
            continue;
        };
        if payload::skips_ci(&new.target.message) {
            d.skipped
                .push(format!("{}: [ci skip] in the head commit", new.name));
            continue;
        }
        let subject = new.target.message.lines().next().map(str::to_owned);
        let mut pipeline = NewPipeline {
            project: project.slug.clone(),
            commit_sha: Some(new.target.hash.clone()),
            trigger_source: "webhook".into(),
            event: "push".into(),
            event_action: "push".into(),
            username: p.actor.login(),
            commit_subject: subject,
            ..Default::default()
        };
        if new.kind == "tag" {
            pipeline.git_ref = format!("refs/tags/{}", new.name);
            d.pipelines.push(pipeline);
            continue;
        }
        pipeline.git_ref = format!("refs/heads/{}", new.name);
        let (pid, branch) = (project.id, new.name.clone());
        let open = state.db(move |s| s.open_pull_request(pid, &branch)).await?;
        if let Some((n, url)) = &open {
            pipeline.pr_number = Some(*n);
            pipeline.pr_url = Some(url.clone());
        }
        if project.build_pull_requests_only && new.name != project.default_branch && open.is_none()
        {
            d.skipped.push(format!(
                "{}: only pull requests build (the branch has no open pull request)",
                new.name
            ));
            continue;
        }
        d.pipelines.push(pipeline);
    }
    Ok(d)
}

/// `pullrequest:*`: the pull request is recorded (open or not); an opened one builds when
/// only pull requests build, a fork's opened or updated one when forks build (then without
/// secrets unless the project passes them to forks). Pushes to the project's own branches
/// build through `repo:push`.
async fn decide_pull_request(
    state: &Arc<AppState>,
    project: &WebhookProject,
    event: &str,
    p: PullRequestEvent,
) -> super::Result<Decision> {
    let pr = p.pullrequest;
    let fork = pr.is_fork();
    let url = pr
        .links
        .html
        .as_ref()
        .map(|h| h.href.clone())
        .filter(|h| h.starts_with("https://") || h.starts_with("http://"))
        .unwrap_or_else(|| super::store::bitbucket_pr_url(&project.slug, pr.id));
    let state_word = match event {
        "pullrequest:fulfilled" => "MERGED",
        "pullrequest:rejected" => "DECLINED",
        _ => "OPEN",
    };
    {
        let (pid, n, branch, url) = (
            project.id,
            pr.id,
            pr.source.branch.name.clone(),
            url.clone(),
        );
        state
            .db(move |s| s.record_pull_request(pid, n, &branch, state_word, fork, &url))
            .await?;
    }
    let mut d = Decision::default();
    let action = event.trim_start_matches("pullrequest:");
    let builds = match (action, fork) {
        ("created" | "updated", true) if !project.build_fork_pull_requests => {
            d.skipped
                .push("a pull request from a fork: the project does not build forks".into());
            false
        }
        ("created" | "updated", true) => true,
        ("created", false) if project.build_pull_requests_only => true,
        _ => false,
    };
    if !builds {
        if d.skipped.is_empty() {
            d.skipped
                .push(format!("pull request {} {action}: nothing to build", pr.id));
        }
        return Ok(d);
    }
    d.pipelines.push(NewPipeline {
        project: project.slug.clone(),
        git_ref: format!("refs/heads/{}", pr.source.branch.name),
        commit_sha: Some(pr.source.commit.hash.clone()),
        trigger_source: "webhook".into(),
        event: "pull_request".into(),
        event_action: action.into(),
        pr_number: Some(pr.id),
        pr_url: Some(url),
        pr_fork: fork,
        restricted: fork && !project.fork_secrets,
        username: p.actor.login(),
        commit_subject: Some(pr.title.clone()),
        params: Vec::new(),
    });
    Ok(d)
}

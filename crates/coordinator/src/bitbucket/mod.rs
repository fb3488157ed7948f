//! Bitbucket in and out: `POST /webhooks/bitbucket` (signature checked, deliveries
//! de-duplicated, the seed's build rules applied, pipelines made: [`webhook`]) and commit
//! statuses sent back to Bitbucket's REST API ([`status`]); following a repository and user
//! keys through that API ([`rest`]). Payload types in [`payload`]
//! (Cloud's, and what the rules read of either) and [`data_center`] (Data Center's), the HMAC
//! check in [`signature`].

pub mod data_center;
pub mod payload;
pub mod rest;
pub mod signature;
pub mod status;

use super::store::pipelines::NewPipeline;
use super::store::WebhookProject;
use super::AppState;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use payload::{
    Intake, PullRequestAction, PullRequestEvent, PullRequestIntake, PushEvent, PushIntake,
};
use std::sync::Arc;

/// The largest delivery read.
const WEBHOOK_LIMIT: usize = 2 << 20;

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/webhooks/bitbucket", post(webhook))
        // A body is read whole before its signature can be checked: bounded (axum's default,
        // said here). Bitbucket's pushes list a few commits, far below it.
        .layer(DefaultBodyLimit::max(WEBHOOK_LIMIT))
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
    let data_center = data_center::is_data_center_event(&event);
    if event == data_center::PING {
        // Data Center's "Test connection": it names no repository, so no project (and no
        // secret) to check it with; it makes nothing, and says only that the URL is right.
        return answer(
            StatusCode::OK,
            serde_json::json!({"ok": "Bosun received the test delivery"}),
        );
    }
    // The repository names the project, whose secret checks the signature: the body is
    // parsed before it is trusted, and nothing of it is used until the check passed.
    let found = if data_center {
        find_data_center(&state, &headers, &body).await
    } else {
        find_cloud(&state, &headers, &body).await
    };
    let Found {
        project,
        full_name,
        main_branch,
    } = match found {
        Ok(f) => f,
        Err(r) => return r,
    };
    // A delivery Bitbucket retries (or anyone replays) carries the same id: Cloud's
    // X-Request-UUID, Data Center's X-Request-Id.
    let delivery = header(&headers, "x-request-uuid")
        .or_else(|| header(&headers, "x-request-id"))
        .map(str::to_owned);
    if let Some(delivery) = delivery {
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
        let pid = project.id;
        if let Err(e) = state
            .db(move |s| s.follow_repository(pid, &full_name, main_branch.as_deref()))
            .await
        {
            return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string());
        }
    }
    let intake = if data_center {
        let server = data_center::server_of_key(&project.key);
        data_center::intake(&event, &body, server).map_err(|e| e.to_string())
    } else {
        cloud_intake(&event, &body)
    };
    let decision = match intake {
        Ok(Some(Intake::Push(p))) => decide_push(&state, &project, p).await,
        Ok(Some(Intake::PullRequest(p))) => decide_pull_request(&state, &project, p).await,
        Ok(None) => {
            return answer(
                StatusCode::OK,
                serde_json::json!({"ignored": format!("event {} is not one Bosun builds", super::printable(&event))}),
            )
        }
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
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

/// The project a signed delivery is for, and the repository's name and default branch as
/// the payload says them.
struct Found {
    project: WebhookProject,
    full_name: String,
    main_branch: Option<String>,
}

/// Cloud: the project of `repository.uuid`, its signature checked.
async fn find_cloud(
    state: &Arc<AppState>,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Found, Response> {
    #[derive(serde::Deserialize)]
    struct Envelope {
        repository: payload::Repository,
    }
    let envelope: Envelope = serde_json::from_slice(body)
        .map_err(|e| error(StatusCode::BAD_REQUEST, format!("payload: {e}")))?;
    let repo = envelope.repository;
    let uuid = repo.uuid.clone();
    let project = match state.db(move |s| s.project_for_webhook(&uuid)).await {
        Ok(Some(p)) => p,
        Ok(None) => {
            return Err(error(
                StatusCode::NOT_FOUND,
                format!("no project for repository {}", super::printable(&repo.uuid)),
            ))
        }
        Err(e) => return Err(error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())),
    };
    let Some(secret) = project.secret.as_ref() else {
        return Err(no_secret());
    };
    signature::verify(secret.as_bytes(), body, header(headers, "x-hub-signature"))
        .map_err(|e| error(StatusCode::UNAUTHORIZED, e.to_string()))?;
    Ok(Found {
        project,
        full_name: repo.full_name,
        main_branch: repo.mainbranch.map(|m| m.name),
    })
}

fn no_secret() -> Response {
    error(
        StatusCode::UNAUTHORIZED,
        "the project has no webhook secret: set one with `bosun coordinator project set --webhook-secret-file`",
    )
}

/// Data Center: the project of the repository's id on its server. Ids repeat across servers,
/// so every project of that id is a candidate (narrowed to the server the payload's links
/// name, when they name one Bosun knows) and the one whose secret verifies the signature is
/// the project; each check is constant-time.
async fn find_data_center(
    state: &Arc<AppState>,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Found, Response> {
    let envelope: data_center::Envelope = serde_json::from_slice(body)
        .map_err(|e| error(StatusCode::BAD_REQUEST, format!("payload: {e}")))?;
    let Some(repo) = envelope.repository() else {
        return Err(error(
            StatusCode::BAD_REQUEST,
            "payload: no repository (at the top or in pullRequest.toRef)",
        ));
    };
    let Some(id) = repo.id else {
        return Err(error(
            StatusCode::BAD_REQUEST,
            "payload: the repository has no id",
        ));
    };
    let mut candidates = match state.db(move |s| s.projects_for_data_center(id)).await {
        Ok(c) => c,
        Err(e) => return Err(error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())),
    };
    if candidates.is_empty() {
        return Err(error(
            StatusCode::NOT_FOUND,
            format!(
                "no project for Bitbucket Data Center repository {id} ({}): add it with                  `bosun coordinator project add --data-center URL --repository-id {id}`",
                super::printable(&repo.full_name())
            ),
        ));
    }
    if let Some(server) = repo.server() {
        let named = data_center::key(&server, id);
        if candidates.iter().any(|p| p.key == named) {
            candidates.retain(|p| p.key == named);
        }
    }
    let given = header(headers, "x-hub-signature");
    let mut refusal = None;
    for project in candidates {
        let Some(secret) = project.secret.as_ref() else {
            continue;
        };
        match signature::verify(secret.as_bytes(), body, given) {
            Ok(()) => {
                return Ok(Found {
                    project,
                    full_name: repo.full_name(),
                    main_branch: None,
                })
            }
            Err(e) => {
                refusal.get_or_insert(e);
            }
        }
    }
    Err(match refusal {
        Some(e) => error(StatusCode::UNAUTHORIZED, e.to_string()),
        None => no_secret(),
    })
}

/// A Cloud delivery as the rules read it; `Ok(None)`: an event Bosun does not build.
fn cloud_intake(event: &str, body: &[u8]) -> Result<Option<Intake>, String> {
    let action = match event {
        "repo:push" => {
            return serde_json::from_slice::<PushEvent>(body)
                .map(|p| Some(Intake::Push(p.intake())))
                .map_err(|e| format!("repo:push payload: {e}"))
        }
        "pullrequest:created" => PullRequestAction::Opened,
        "pullrequest:updated" => PullRequestAction::Updated,
        "pullrequest:fulfilled" => PullRequestAction::Merged,
        "pullrequest:rejected" => PullRequestAction::Declined,
        _ => return Ok(None),
    };
    serde_json::from_slice::<PullRequestEvent>(body)
        .map(|p| Some(Intake::PullRequest(p.intake(action))))
        .map_err(|e| format!("{event} payload: {e}"))
}

/// A push: every pushed branch or tag builds, except a deleted ref, a head commit saying
/// `[ci skip]`, and — with "only build pull requests" — a branch other than the default one
/// without an open pull request.
async fn decide_push(
    state: &Arc<AppState>,
    project: &WebhookProject,
    p: PushIntake,
) -> super::Result<Decision> {
    let mut d = Decision::default();
    for change in p.changes {
        let Some(new) = change else {
            d.skipped.push("a deleted ref".into());
            continue;
        };
        let message = new.message.as_deref().unwrap_or("");
        if payload::skips_ci(message) {
            d.skipped
                .push(format!("{}: [ci skip] in the head commit", new.name));
            continue;
        }
        let subject = new
            .message
            .as_deref()
            .and_then(|m| m.lines().next())
            .map(str::to_owned);
        let mut pipeline = NewPipeline {
            project: project.slug.clone(),
            commit_sha: Some(new.hash.clone()),
            trigger_source: "webhook".into(),
            event: "push".into(),
            event_action: "push".into(),
            username: p.actor.clone(),
            triggered_by: p.account.clone(),
            commit_subject: subject,
            ..Default::default()
        };
        if new.tag {
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

/// A pull request event: the pull request is recorded (open or not); an opened one builds
/// when only pull requests build, a fork's opened or updated one when forks build (then
/// without secrets unless the project passes them to forks). Pushes to the project's own
/// branches build through the push event.
async fn decide_pull_request(
    state: &Arc<AppState>,
    project: &WebhookProject,
    pr: PullRequestIntake,
) -> super::Result<Decision> {
    let fork = pr.fork;
    let url = pr
        .url
        .clone()
        .unwrap_or_else(|| super::store::bitbucket_pr_url(&project.slug, pr.id));
    {
        let (pid, n, branch, url, state_word) = (
            project.id,
            pr.id,
            pr.source_branch.clone(),
            url.clone(),
            pr.action.state(),
        );
        state
            .db(move |s| s.record_pull_request(pid, n, &branch, state_word, fork, &url))
            .await?;
    }
    let mut d = Decision::default();
    let action = pr.action.as_str();
    use PullRequestAction as A;
    let builds = match (pr.action, fork) {
        (A::Opened | A::Updated, true) if !project.build_fork_pull_requests => {
            d.skipped
                .push("a pull request from a fork: the project does not build forks".into());
            false
        }
        (A::Opened | A::Updated, true) => true,
        (A::Opened, false) if project.build_pull_requests_only => true,
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
        git_ref: format!("refs/heads/{}", pr.source_branch),
        commit_sha: Some(pr.source_hash.clone()),
        trigger_source: "webhook".into(),
        event: "pull_request".into(),
        event_action: action.into(),
        pr_number: Some(pr.id),
        pr_url: Some(url),
        pr_fork: fork,
        restricted: crate::model::forks::restricted(fork, project.fork_secrets),
        username: pr.actor.clone(),
        triggered_by: pr.account.clone(),
        commit_subject: Some(pr.title.clone()),
        params: Vec::new(),
        ..Default::default()
    });
    Ok(d)
}

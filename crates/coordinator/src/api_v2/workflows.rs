//! A workflow, its jobs, and the actions on it: approve, cancel, rerun from failed.
//!
//! Bosun cancels and reruns a pipeline as a whole (`PipelineStore::cancel_pipeline`,
//! `rerun_failed`): a workflow's cancel or rerun acts on its pipeline, which for the usual
//! one-workflow pipeline is the same thing, and a rerun keeps the workflow's id (CircleCI makes
//! a new workflow). `docs/api-v2.md` says so.

use super::auth::caller;
use super::{db, pipeline_of_workflow, shapes, V2Error, V2Result};
use crate::audit::{self, AuditAction, Event};
use crate::bitbucket::status::statuses;
use crate::model::people::Action;
use crate::model::JobKind;
use crate::AppState;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use serde::Deserialize;
use serde_json::json;
use std::sync::Arc;

fn accepted() -> axum::response::Response {
    (StatusCode::ACCEPTED, Json(json!({"message": "Accepted."}))).into_response()
}

pub async fn get_one(
    State(state): State<Arc<AppState>>,
    Path(raw): Path<String>,
    headers: HeaderMap,
) -> V2Result {
    let who = caller(&state, &headers).await?;
    let (p, d) = pipeline_of_workflow(&state, &who, &raw, Action::Read).await?;
    let w = p
        .workflows
        .iter()
        .find(|w| w.uuid.eq_ignore_ascii_case(&raw))
        .ok_or_else(|| V2Error::not_found("Workflow"))?;
    Ok(Json(shapes::workflow(&p, &d, w)).into_response())
}

pub async fn jobs(
    State(state): State<Arc<AppState>>,
    Path(raw): Path<String>,
    headers: HeaderMap,
) -> V2Result {
    let who = caller(&state, &headers).await?;
    let (p, _) = pipeline_of_workflow(&state, &who, &raw, Action::Read).await?;
    let w = p
        .workflows
        .iter()
        .find(|w| w.uuid.eq_ignore_ascii_case(&raw))
        .ok_or_else(|| V2Error::not_found("Workflow"))?
        .clone();
    let ids: Vec<i64> = w.jobs.iter().filter_map(|j| j.job_id).collect();
    let rows = db(&state, move |s| {
        ids.iter()
            .map(|id| s.job(*id))
            .collect::<crate::Result<Vec<_>>>()
    })
    .await?;
    // A workflow's jobs fit one page.
    let items = w
        .jobs
        .iter()
        .map(|j| {
            let row = j
                .job_id
                .and_then(|id| rows.iter().flatten().find(|r| r.id == id));
            shapes::workflow_job(&p.project, &w, j, row)
        })
        .collect();
    Ok(Json(shapes::page(items, None)).into_response())
}

pub async fn approve(
    State(state): State<Arc<AppState>>,
    Path((raw, request)): Path<(String, String)>,
    headers: HeaderMap,
) -> V2Result {
    let who = caller(&state, &headers).await?;
    let (p, _) = pipeline_of_workflow(&state, &who, &raw, Action::Approve).await?;
    let by = who.name();
    let actor = who.actor();
    let w = p
        .workflows
        .iter()
        .find(|w| w.uuid.eq_ignore_ascii_case(&raw))
        .ok_or_else(|| V2Error::not_found("Workflow"))?;
    let request = request.to_ascii_lowercase();
    let job = w
        .jobs
        .iter()
        .find(|j| j.kind == JobKind::Approval && shapes::workflow_job_uuid(j.id) == request)
        .ok_or_else(|| V2Error::not_found("Approval request"))?
        .name
        .clone();
    let (id, url, slug) = (p.id, state.public_url.clone(), p.project.clone());
    db(&state, move |s| {
        s.approve(id, &job, &by, &statuses(&url))?;
        audit::record(
            s,
            Event::new(actor, AuditAction::Approve)
                .project(slug)
                .target(format!("pipeline {id} job {job}"))
                .detail("API v2"),
        )
    })
    .await?;
    super::changed(&state);
    Ok(accepted())
}

pub async fn cancel(
    State(state): State<Arc<AppState>>,
    Path(raw): Path<String>,
    headers: HeaderMap,
) -> V2Result {
    let who = caller(&state, &headers).await?;
    let (p, _) = pipeline_of_workflow(&state, &who, &raw, Action::Cancel).await?;
    let (id, url, slug, actor) = (
        p.id,
        state.public_url.clone(),
        p.project.clone(),
        who.actor(),
    );
    db(&state, move |s| {
        s.cancel_pipeline(id, &statuses(&url))?;
        audit::record(
            s,
            Event::new(actor, AuditAction::Cancel)
                .project(slug)
                .target(format!("pipeline {id}"))
                .detail("API v2"),
        )
    })
    .await?;
    super::changed(&state);
    Ok(accepted())
}

/// `POST /workflow/{id}/rerun`'s body; only a rerun from the failed jobs is served.
#[derive(Deserialize, Default)]
struct RerunBody {
    #[serde(default)]
    from_failed: bool,
    #[serde(default)]
    jobs: Vec<String>,
    #[serde(default)]
    sparse_tree: bool,
    #[serde(default)]
    enable_ssh: bool,
}

pub async fn rerun(
    State(state): State<Arc<AppState>>,
    Path(raw): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> V2Result {
    let who = caller(&state, &headers).await?;
    let (p, _) = pipeline_of_workflow(&state, &who, &raw, Action::Rerun).await?;
    let b: RerunBody = if body.iter().all(u8::is_ascii_whitespace) {
        RerunBody::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| V2Error::bad(format!("Invalid JSON body: {e}")))?
    };
    if !b.from_failed || !b.jobs.is_empty() || b.sparse_tree || b.enable_ssh {
        return Err(V2Error::bad(
            "Only a rerun from failed is served here: send {\"from_failed\": true} \
             (`bosun coordinator rerun JOB --ssh` reruns one job with SSH)",
        ));
    }
    let (id, url, slug, actor) = (
        p.id,
        state.public_url.clone(),
        p.project.clone(),
        who.actor(),
    );
    db(&state, move |s| {
        s.rerun_failed(id, &statuses(&url))?;
        audit::record(
            s,
            Event::new(actor, AuditAction::Rerun)
                .project(slug)
                .target(format!("pipeline {id}"))
                .detail("API v2, from failed"),
        )
    })
    .await?;
    super::changed(&state);
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"workflow_id": raw.to_ascii_lowercase()})),
    )
        .into_response())
}

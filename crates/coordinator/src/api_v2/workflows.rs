//! A workflow, its jobs, and the actions on it: approve, cancel, rerun from failed.
//!
//! Bosun cancels and reruns a pipeline as a whole (`PipelineStore::cancel_pipeline`,
//! `rerun_failed`): a workflow's cancel or rerun acts on its pipeline, which for the usual
//! one-workflow pipeline is the same thing, and a rerun keeps the workflow's id (CircleCI makes
//! a new workflow). `docs/api-v2.md` says so.

use super::auth::{caller, Caller};
use super::{db, pipeline_of_workflow, shapes, V2Error, V2Result};
use crate::audit::{self, AuditAction, Event};
use crate::bitbucket::status::statuses;
use crate::model::people::Action;
use crate::model::JobKind;
use crate::people::ssh::{self as person_ssh, RerunError, Via};
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
    let by = who.principal()?;
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

/// `POST /workflow/{id}/rerun`'s body: a rerun from the failed jobs, or (with a personal
/// token) chosen jobs rerun with SSH.
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
    if b.enable_ssh {
        return rerun_ssh(&state, &who, &raw, b).await;
    }
    if !b.from_failed || !b.jobs.is_empty() || b.sparse_tree {
        return Err(V2Error::bad(
            "Only a rerun from failed is served here: send {\"from_failed\": true} \
             (with a personal token, {\"enable_ssh\": true, \"jobs\": [JOB_ID]} reruns jobs \
             with SSH)",
        ));
    }
    let (id, url, slug, actor, by) = (
        p.id,
        state.public_url.clone(),
        p.project.clone(),
        who.actor(),
        who.person_account(),
    );
    db(&state, move |s| {
        s.rerun_failed(id, by.as_deref(), &statuses(&url))?;
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

/// `enable_ssh: true`: the listed jobs (CircleCI's `jobs`, workflow job ids) rerun with SSH,
/// each letting in exactly the calling person's stored keys and holding the project's user
/// key only as `model::ssh_policy::decide` says (through `people::ssh::rerun_with_ssh`, the
/// same door as the job page's button). The answer says, per job, what it holds.
async fn rerun_ssh(state: &Arc<AppState>, who: &Caller, raw: &str, b: RerunBody) -> V2Result {
    let person =
        match who {
            Caller::Person(p) => p.clone(),
            // A rerun with SSH lets in a person's keys: an operator or project token has none.
            Caller::Operator(_) => return Err(V2Error::bad(
                "enable_ssh needs a personal token (made on your page, /me): an operator token \
                 carries nobody's SSH keys; on the host, `bosun coordinator rerun JOB --ssh \
                 --ssh-key FILE` reruns a job with SSH",
            )),
            Caller::Project(_) => return Err(V2Error::forbidden(
                "Permission denied: a project token may not rerun with SSH (it carries nobody's \
                 SSH keys); use your personal token, made on your page (/me)",
            )),
        };
    if b.from_failed || b.jobs.is_empty() {
        return Err(V2Error::bad(
            "enable_ssh needs `jobs` (the workflow's job ids to rerun with SSH) and not \
             `from_failed`, as on CircleCI",
        ));
    }
    if b.jobs.len() > MAX_SSH_JOBS {
        return Err(V2Error::bad(format!(
            "jobs: at most {MAX_SSH_JOBS} jobs rerun with SSH at once"
        )));
    }
    let (p, _) = pipeline_of_workflow(state, who, raw, Action::RerunWithSsh).await?;
    let w = p
        .workflows
        .iter()
        .find(|w| w.uuid.eq_ignore_ascii_case(raw))
        .ok_or_else(|| V2Error::not_found("Workflow"))?;
    // Every id checked before anything is rerun.
    let mut chosen: Vec<(String, i64)> = Vec::new();
    for (i, asked) in b.jobs.iter().enumerate() {
        let asked = asked.trim().to_ascii_lowercase();
        let j = w
            .jobs
            .iter()
            .find(|j| shapes::workflow_job_uuid(j.id) == asked)
            .ok_or_else(|| {
                V2Error::bad(format!(
                    "jobs[{i}]: no such job in this workflow (ids are those of \
                     GET /workflow/{{id}}/job)"
                ))
            })?;
        let id = j
            .job_id
            .filter(|_| j.kind != JobKind::Approval)
            .ok_or_else(|| {
                V2Error::bad(format!(
                    "jobs[{i}]: `{}` has not run, or is an approval: nothing to rerun with SSH",
                    crate::printable(&j.name)
                ))
            })?;
        if !chosen.iter().any(|(u, _)| *u == asked) {
            chosen.push((asked, id));
        }
    }
    let mut done = Vec::new();
    for (uuid, id) in chosen {
        let r = person_ssh::rerun_with_ssh(state, &person, id, Via::ApiV2)
            .await
            .map_err(|e| match e {
                RerunError::NotFound(_) => V2Error::not_found("Job"),
                RerunError::Refused(m) => V2Error::forbidden(&format!("Permission denied: {m}")),
                e @ RerunError::NoKeys => V2Error(StatusCode::CONFLICT, format!("Not rerun: {e}")),
                RerunError::Coord(e) => e.into(),
            })?;
        done.push(json!({
            "id": uuid,
            "rerun_of": id,
            "job_number": r.job,
            "user_key": r.user_key.as_str(),
            "message": format!("rerun with SSH {}", r.said),
        }));
    }
    super::changed(state);
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"workflow_id": raw.to_ascii_lowercase(), "jobs": done})),
    )
        .into_response())
}

/// Jobs one request may rerun with SSH (a workflow's jobs fit well under it).
const MAX_SSH_JOBS: usize = 100;

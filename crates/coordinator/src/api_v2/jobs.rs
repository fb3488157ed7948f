//! A job by its number (Bosun's job id: unique in the coordinator, so in its project): its
//! details, artifacts and test results.

use super::auth::caller;
use super::{db, project, shapes, V2Error, V2Result};
use crate::audit::{self, AuditAction, Event};
use crate::model::people::Action;
use crate::store::api_v2::ApiProject;
use crate::store::JobRow;
use crate::AppState;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::IntoResponse;
use axum::Json;
use serde_json::{json, Value};
use std::sync::Arc;

/// The project and job a path names, if the caller may read them.
async fn job(
    state: &AppState,
    headers: &HeaderMap,
    path: &(String, String, String, String),
) -> Result<(ApiProject, JobRow), V2Error> {
    let who = caller(state, headers).await?;
    job_for(state, &who, path, Action::Read).await
}

async fn job_for(
    state: &AppState,
    who: &super::auth::Caller,
    (vcs, org, repo, number): &(String, String, String, String),
    action: Action,
) -> Result<(ApiProject, JobRow), V2Error> {
    let p = project(state, who, vcs, org, repo, action).await?;
    let n: i64 = number
        .parse()
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| V2Error::not_found("Job"))?;
    let row = db(state, move |s| s.job(n)).await?;
    match row {
        // A job of another project is not found under this one.
        Some(j) if j.project == p.slug => Ok((p, j)),
        _ => Err(V2Error::not_found("Job")),
    }
}

pub async fn details(
    State(state): State<Arc<AppState>>,
    Path(path): Path<(String, String, String, String)>,
    headers: HeaderMap,
) -> V2Result {
    let (p, j) = job(&state, &headers, &path).await?;
    let id = j.id;
    let ctx = db(&state, move |s| {
        let Some(pid) = s.job_pipeline(id)? else {
            return Ok(None);
        };
        Ok(s.pipeline(pid)?.map(|row| {
            let wf = row
                .workflows
                .iter()
                .find(|w| w.jobs.iter().any(|wj| wj.job_id == Some(id)))
                .map(|w| (w.uuid.clone(), w.name.clone()));
            (row.uuid, wf)
        }))
    })
    .await?;
    let (pipeline, workflow) = match &ctx {
        Some((u, wf)) => (Some(u.as_str()), wf.as_ref()),
        None => (None, None),
    };
    let v = shapes::job_details(
        &state.public_url,
        &p,
        &j,
        workflow.map(|(a, b)| (a.as_str(), b.as_str())),
        pipeline,
    );
    Ok(Json(v).into_response())
}

pub async fn artifacts(
    State(state): State<Arc<AppState>>,
    Path(path): Path<(String, String, String, String)>,
    headers: HeaderMap,
) -> V2Result {
    let (_, j) = job(&state, &headers, &path).await?;
    let id = j.id;
    let results = db(&state, move |s| s.job_results(id)).await?;
    let base = state.public_url.trim_end_matches('/').to_owned();
    let items = results
        .artifacts
        .iter()
        .map(|(path, _)| {
            json!({
                "path": path,
                "node_index": 0,
                "url": format!("{base}/jobs/{id}/artifacts/{}", shapes::url_path(path)),
            })
        })
        .collect();
    Ok(Json(shapes::page(items, None)).into_response())
}

/// The job's test results: the failed and errored tests the agent stored (passing tests are
/// kept as counts only, so they are not listed).
pub async fn tests(
    State(state): State<Arc<AppState>>,
    Path(path): Path<(String, String, String, String)>,
    headers: HeaderMap,
) -> V2Result {
    let (_, j) = job(&state, &headers, &path).await?;
    let id = j.id;
    let results = db(&state, move |s| s.job_results(id)).await?;
    let items: Vec<Value> = results
        .tests
        .iter()
        .flat_map(|t| &t.failed)
        .map(|f| {
            json!({
                "message": f.message,
                "source": "",
                "run_time": 0,
                "file": Value::Null,
                "result": "failure",
                "name": f.name,
                "classname": f.classname,
            })
        })
        .collect();
    Ok(Json(shapes::page(items, None)).into_response())
}

/// `POST /project/{slug}/job/{number}/cancel`: a queued job ends at once, a running one at its
/// agent's next heartbeat (as `bosun coordinator cancel`).
pub async fn cancel(
    State(state): State<Arc<AppState>>,
    Path(path): Path<(String, String, String, String)>,
    headers: HeaderMap,
) -> V2Result {
    let who = caller(&state, &headers).await?;
    let (p, j) = job_for(&state, &who, &path, Action::Cancel).await?;
    let id = j.id;
    let actor = who.actor();
    db(&state, move |s| {
        s.cancel(id)?;
        audit::record(
            s,
            Event::new(actor, AuditAction::Cancel)
                .project(p.slug)
                .target(format!("job {id}"))
                .detail("API v2"),
        )
    })
    .await?;
    super::changed(&state);
    state.jobs.bump(id);
    Ok((
        axum::http::StatusCode::ACCEPTED,
        Json(json!({"message": "Accepted."})),
    )
        .into_response())
}

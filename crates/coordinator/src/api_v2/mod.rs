//! CircleCI's API v2, the subset teams script against (`docs/api-v2.md` lists it), under
//! `/api/v2`: trigger and read pipelines, their config and workflows, a workflow's jobs, a
//! job's details, artifacts and tests; approve, cancel and rerun a workflow; contexts and
//! their variables; `GET /me`; the continuation of setup workflows.
//! CircleCI's JSON shapes ([`shapes`]), its `next_page_token` pagination and its error body
//! `{"message": …}` for every refusal, unknown routes included.
//!
//! One door: [`router`], which the server merges. Handlers are thin: the caller ([`auth`]),
//! one or two store calls through [`crate::store::Backend`], a shape.

pub mod auth;
mod contexts;
mod continuation;
mod jobs;
mod pipelines;
pub mod shapes;
mod workflows;

use crate::model::people::Action;
use crate::store::api_v2::ApiProject;
use crate::store::pipelines::PipelineRow;
use crate::store::Backend;
use crate::{AppState, CoordError};
use auth::{Allowed, Caller};
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use std::sync::Arc;

/// Where the API is served.
pub const PREFIX: &str = "/api/v2";

/// The largest request body: a continuation carries a whole config
/// ([`crate::pipelines::config::MAX_CONFIG_BYTES`]) as a JSON string, escapes and parameters
/// beside it.
pub const MAX_BODY: usize = 2 * crate::pipelines::config::MAX_CONFIG_BYTES;

/// CircleCI's error answer: a status and `{"message": …}`.
#[derive(Debug)]
pub struct V2Error(pub StatusCode, pub String);

impl V2Error {
    pub fn unauthorized() -> V2Error {
        V2Error(StatusCode::UNAUTHORIZED, "You must log in first.".into())
    }
    pub fn forbidden(m: &str) -> V2Error {
        V2Error(StatusCode::FORBIDDEN, m.into())
    }
    pub fn not_found(what: &str) -> V2Error {
        V2Error(StatusCode::NOT_FOUND, format!("{what} not found"))
    }
    pub fn bad(m: impl Into<String>) -> V2Error {
        V2Error(StatusCode::BAD_REQUEST, m.into())
    }
}

impl IntoResponse for V2Error {
    fn into_response(self) -> Response {
        (self.0, Json(serde_json::json!({ "message": self.1 }))).into_response()
    }
}

impl From<CoordError> for V2Error {
    fn from(e: CoordError) -> Self {
        match e {
            CoordError::NotFound(m) => V2Error(StatusCode::NOT_FOUND, m),
            CoordError::Invalid(m) => V2Error(StatusCode::BAD_REQUEST, m),
            // An approver outside a context's security group, for one.
            CoordError::Forbidden(m) => V2Error(StatusCode::FORBIDDEN, m),
            e => {
                tracing::error!("api v2: {e}");
                V2Error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "Internal server error".into(),
                )
            }
        }
    }
}

pub(crate) type V2Result = Result<Response, V2Error>;

/// The API's routes under [`PREFIX`], with CircleCI's 404 for every other path there;
/// `orb_dir`: the registry orbs a continued config may import (`serve --orb-dir`).
pub fn router(state: Arc<AppState>, orb_dir: Option<std::path::PathBuf>) -> Router {
    let v2 = Router::new()
        .route("/me", get(pipelines::me))
        .route(
            "/project/{vcs}/{org}/{repo}/pipeline",
            get(pipelines::list).post(pipelines::trigger),
        )
        .route(
            "/project/{vcs}/{org}/{repo}/pipeline/{number}",
            get(pipelines::by_number),
        )
        .route(
            "/project/{vcs}/{org}/{repo}/job/{number}",
            get(jobs::details),
        )
        .route(
            "/project/{vcs}/{org}/{repo}/job/{number}/cancel",
            post(jobs::cancel),
        )
        .route(
            "/project/{vcs}/{org}/{repo}/{number}/artifacts",
            get(jobs::artifacts),
        )
        .route(
            "/project/{vcs}/{org}/{repo}/{number}/tests",
            get(jobs::tests),
        )
        .route("/pipeline/continue", post(continuation::continue_pipeline))
        .route("/pipeline/{id}", get(pipelines::get_one))
        .route("/pipeline/{id}/config", get(pipelines::config))
        .route("/pipeline/{id}/workflow", get(pipelines::workflows))
        .route("/workflow/{id}", get(workflows::get_one))
        .route("/workflow/{id}/job", get(workflows::jobs))
        .route("/workflow/{id}/approve/{request}", post(workflows::approve))
        .route("/workflow/{id}/cancel", post(workflows::cancel))
        .route("/workflow/{id}/rerun", post(workflows::rerun))
        .route("/context", get(contexts::list).post(contexts::create))
        .route(
            "/context/{id}",
            get(contexts::get_one).delete(contexts::delete),
        )
        .route("/context/{id}/environment-variable", get(contexts::vars))
        .route(
            "/context/{id}/environment-variable/{name}",
            axum::routing::put(contexts::set_var).delete(contexts::delete_var),
        )
        .fallback(not_found)
        .layer(axum::Extension(continuation::Orbs(orb_dir)))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(axum::middleware::map_response(message_errors))
        .layer(axum::middleware::from_fn(timeout))
        .with_state(state);
    Router::new().nest(PREFIX, v2)
}

/// A request ends within the agent API's bound (a body trickled in byte by byte does not hold
/// a connection for ever), with CircleCI's error body.
async fn timeout(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let limit = crate::server::API_REQUEST_TIMEOUT;
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(r) => r,
        Err(_) => V2Error(
            StatusCode::REQUEST_TIMEOUT,
            format!("The request took longer than {} s", limit.as_secs()),
        )
        .into_response(),
    }
}

/// CircleCI's answer to a path it does not serve.
async fn not_found() -> Response {
    V2Error(StatusCode::NOT_FOUND, "Not found".into()).into_response()
}

/// An error answer that is not JSON (axum's own: 405, 413, a bad path) becomes CircleCI's
/// `{"message": …}`, before the server's `{"error": …}` layer sees it.
async fn message_errors(resp: Response) -> Response {
    use axum::http::header;
    let status = resp.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return resp;
    }
    let json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/json"));
    if json {
        return resp;
    }
    let (parts, body) = resp.into_parts();
    let text = axum::body::to_bytes(body, 64 * 1024)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_owned())
        .unwrap_or_default();
    let message = if text.is_empty() {
        status.canonical_reason().unwrap_or("Error").to_owned()
    } else {
        text
    };
    let mut out = V2Error(status, message).into_response();
    if let Some(allow) = parts.headers.get(header::ALLOW) {
        out.headers_mut().insert(header::ALLOW, allow.clone());
    }
    out
}

/// `Ok` when the caller may do `action` on project `slug`; a project it may not read is
/// CircleCI's 404 for `what`, one it reads but may not act on a 403.
pub(crate) async fn check(
    state: &AppState,
    who: &Caller,
    slug: &str,
    action: Action,
    what: &str,
) -> Result<(), V2Error> {
    match auth::allows(state, who, slug, action).await? {
        Allowed::Yes => Ok(()),
        Allowed::Hidden => Err(V2Error::not_found(what)),
        Allowed::Refused(m) => Err(V2Error::forbidden(&m)),
    }
}

/// The project a path names (`{vcs}/{org}/{repo}`), if the caller may do `action` on it;
/// otherwise CircleCI's 404 (a project the caller may not read is not found, as for
/// CircleCI) or a 403.
pub(crate) async fn project(
    state: &AppState,
    who: &Caller,
    vcs: &str,
    org: &str,
    repo: &str,
    action: Action,
) -> Result<ApiProject, V2Error> {
    if !(shapes::is_bitbucket(vcs) && shapes::valid_slug_part(org) && shapes::valid_slug_part(repo))
    {
        return Err(V2Error::not_found("Project"));
    }
    let slug = format!("{org}/{repo}");
    let found = state.db(move |s| s.api_project(&slug)).await?;
    match found {
        Some(p) => {
            check(state, who, &p.slug, action, "Project").await?;
            Ok(p)
        }
        None => Err(V2Error::not_found("Project")),
    }
}

/// Pipeline `id` with what the API shows of it, if the caller may do `action` on its
/// project.
pub(crate) async fn pipeline_by_id(
    state: &AppState,
    who: &Caller,
    id: i64,
    action: Action,
) -> Result<(PipelineRow, crate::store::api_v2::PipelineDetails), V2Error> {
    let found = state
        .db(move |s| Ok(s.pipeline(id)?.zip(s.pipeline_details(id)?)))
        .await?;
    match found {
        Some((p, d)) => {
            check(state, who, &p.project, action, "Pipeline").await?;
            Ok((p, d))
        }
        None => Err(V2Error::not_found("Pipeline")),
    }
}

/// The pipeline of workflow `uuid`, if the caller may do `action` on it.
pub(crate) async fn pipeline_of_workflow(
    state: &AppState,
    who: &Caller,
    uuid: &str,
    action: Action,
) -> Result<(PipelineRow, crate::store::api_v2::PipelineDetails), V2Error> {
    if !is_uuid(uuid) {
        return Err(V2Error::not_found("Workflow"));
    }
    let u = uuid.to_ascii_lowercase();
    let id = state.db(move |s| s.workflow_pipeline(&u)).await?;
    match id {
        Some(id) => pipeline_by_id(state, who, id, action).await.map_err(|e| {
            if e.0 == StatusCode::NOT_FOUND {
                V2Error::not_found("Workflow")
            } else {
                e
            }
        }),
        None => Err(V2Error::not_found("Workflow")),
    }
}

/// A UUID as text (any version): what the API's ids are; anything else names nothing.
pub fn is_uuid(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
}

/// After an action: claims, live pages and the pipeline runner look again.
pub(crate) fn changed(state: &AppState) {
    state.bump();
    state.pipelines_wake.notify_one();
}

/// Run `f` over the store (see [`AppState::db`]).
pub(crate) async fn db<T, F>(state: &AppState, f: F) -> Result<T, V2Error>
where
    F: FnOnce(&dyn Backend) -> crate::Result<T> + Send + 'static,
    T: Send + 'static,
{
    Ok(state.db(f).await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuids_are_checked_before_any_lookup() {
        assert!(is_uuid("5034460f-c7c4-4c43-9457-de07e2029e7b"));
        assert!(is_uuid("5034460F-C7C4-4C43-9457-DE07E2029E7B"));
        for bad in [
            "",
            "1",
            "5034460f-c7c4-4c43-9457-de07e2029e7",
            "5034460f-c7c4-4c43-9457_de07e2029e7b",
            "5034460g-c7c4-4c43-9457-de07e2029e7b",
            "' OR 1=1 --",
        ] {
            assert!(!is_uuid(bad), "{bad}");
        }
    }
}

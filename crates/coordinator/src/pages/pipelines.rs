//! The pipeline page (`GET /pipelines/{id}`): its workflows as graphs of jobs (columns by
//! depth, edges for `requires`), statuses following the server live (the script polls
//! `GET /pipelines/{id}.json`), the compiler's error when the config did not compile, and the
//! operator's actions (`POST /pipelines/{id}/approve|cancel|rerun`), which need an operator
//! token (`bosun coordinator operator new NAME`) as a bearer token, or a person logged in
//! with Bitbucket whose repository permission allows the action (their session and the
//! page's CSRF token); reading needs read access to the project, like every other page
//! (`web::Guard`). `GET /pipelines` lists them.

use super::{esc, shell};
use crate::audit::{Actor, AuditAction, Event};
use crate::bitbucket::status::statuses;
use crate::model::contexts::Principal;
use crate::model::people::Action;
use crate::model::JobKind;
use crate::store::pipelines::{PipelineRow, WorkflowRow};
use crate::AppState;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::Json;
use std::collections::HashMap;
use std::sync::Arc;

const SCRIPT: &[u8] = include_bytes!("pipeline.js");

fn script_name() -> String {
    format!("pipeline.{}.js", &crate::sha256_hex(SCRIPT)[..12])
}

pub(crate) async fn script(Path(name): Path<String>) -> Response {
    if name != script_name() {
        return (StatusCode::NOT_FOUND, "no such asset\n").into_response();
    }
    let mut h = HeaderMap::new();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/javascript; charset=utf-8"),
    );
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=31536000, immutable"),
    );
    (h, SCRIPT).into_response()
}

fn json_error(status: StatusCode, msg: impl Into<String>) -> Response {
    (status, Json(bosun_protocol::ApiError { error: msg.into() })).into_response()
}

/// `{id}` or `{id}.json`.
fn parse_id(raw: &str) -> Option<(i64, bool)> {
    let (n, json) = match raw.strip_suffix(".json") {
        Some(n) => (n, true),
        None => (raw, false),
    };
    n.parse::<i64>().ok().filter(|n| *n > 0).map(|n| (n, json))
}

fn to_json(p: &PipelineRow) -> serde_json::Value {
    serde_json::json!({
        "id": p.id,
        "number": p.number,
        "project": p.project,
        "ref": p.git_ref,
        "revision": p.revision,
        "status": p.status.as_str(),
        "error": p.error,
        "workflows": p.workflows.iter().map(|w| serde_json::json!({
            "name": w.name,
            "id": w.uuid,
            "status": w.status.as_str(),
            "jobs": w.jobs.iter().map(|j| serde_json::json!({
                "name": j.name,
                "kind": j.kind.as_str(),
                "status": j.status.as_str(),
                "reason": j.reason,
                "job_id": j.job_id,
                "requires": j.requires.iter().map(|(n, _)| n).collect::<Vec<_>>(),
                "approved_by": j.approved_by,
            })).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    })
}

pub(crate) async fn list(
    State(state): State<Arc<AppState>>,
    axum::Extension(readable): axum::Extension<crate::people::Readable>,
) -> Response {
    match state.db(|s| s.list_pipelines(None, 100)).await {
        Ok(mut rows) => {
            rows.retain(|p| readable.allows(&p.project));
            let mut out = String::from(
                "<h1>Pipelines</h1><table class=\"jobs\"><thead><tr><th>Pipeline</th><th>Ref</th>\
                 <th>Status</th></tr></thead><tbody>",
            );
            for p in rows {
                out.push_str(&format!(
                    "<tr><td><a href=\"/pipelines/{}\">{}#{}</a></td><td>{}</td><td>{}</td></tr>",
                    p.id,
                    esc(&p.project),
                    p.number,
                    esc(&p.git_ref),
                    esc(p.status.as_str())
                ));
            }
            out.push_str("</tbody></table>");
            shell("Pipelines", "", &out).into_response()
        }
        Err(e) => json_error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

pub(crate) async fn page(
    State(state): State<Arc<AppState>>,
    Path(raw): Path<String>,
    headers: HeaderMap,
) -> Response {
    let Some((id, json)) = parse_id(&raw) else {
        return json_error(StatusCode::NOT_FOUND, format!("no pipeline {raw}"));
    };
    let p = match state.db(move |s| s.pipeline(id)).await {
        Ok(Some(p)) => p,
        Ok(None) if json => return json_error(StatusCode::NOT_FOUND, format!("no pipeline {id}")),
        Ok(None) => {
            return (
                StatusCode::NOT_FOUND,
                shell("bosun", "", &format!("<h1>No pipeline {id}</h1>")),
            )
                .into_response()
        }
        Err(e) => return json_error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    if json {
        return ([(header::CACHE_CONTROL, "no-store")], Json(to_json(&p))).into_response();
    }
    let viewer = match crate::people::viewer(&state, &headers).await {
        Ok(v) => v,
        Err(e) => return json_error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    let settings = super::settings::link_for(&state, viewer.as_ref(), &p.project).await;
    render(&p, viewer.as_ref(), &settings).into_response()
}

/// The pipeline's page; `settings` is the link to its project's settings page for a viewer
/// who may use it (else empty).
fn render(p: &PipelineRow, viewer: Option<&crate::people::Viewer>, settings: &str) -> Html<String> {
    let mut main = format!(
        "<section id=\"pipeline\" data-id=\"{}\" data-status=\"{}\"{}>\
         <h1>{}#{} <small>{}</small></h1>\
         <p>Status: <strong id=\"pipeline-status\">{}</strong>{}{}</p>",
        p.id,
        esc(p.status.as_str()),
        viewer
            .map(|v| format!(
                " data-csrf=\"{}\" data-person=\"{}\"",
                esc(&v.csrf),
                esc(&v.person.nickname)
            ))
            .unwrap_or_default(),
        esc(&p.project),
        p.number,
        esc(&p.git_ref),
        esc(p.status.as_str()),
        p.revision
            .as_deref()
            .map(|r| format!(" · commit <code>{}</code>", esc(&r[..r.len().min(12)])))
            .unwrap_or_default(),
        if p.restricted {
            " · forked pull request: built without the project's secrets"
        } else {
            ""
        }
    );
    main.push_str(settings);
    if let Some(err) = &p.error {
        main.push_str(&format!(
            "<h2>The pipeline did not run</h2><pre id=\"pipeline-error\">{}</pre>",
            esc(err)
        ));
    }
    if viewer.is_none() {
        main.push_str(&format!(
            "<p><a id=\"login-link\" href=\"/login?return_to=/pipelines/{}\">Log in with Bitbucket</a> \
             to approve, cancel or rerun, or use an operator token:</p>",
            p.id
        ));
    }
    main.push_str(
        "<form id=\"login\" class=\"login\"><label>Operator token \
         <input id=\"token\" type=\"password\" autocomplete=\"off\"></label> \
         <button type=\"submit\">Log in</button></form>\
         <p><button id=\"cancel\" type=\"button\">Cancel pipeline</button> \
         <button id=\"rerun\" type=\"button\">Rerun from failed</button> \
         <output id=\"action-result\"></output></p>",
    );
    for w in &p.workflows {
        main.push_str(&workflow_graph(w));
    }
    main.push_str(&format!(
        "<script src=\"/pipeline-assets/{}\" defer></script></section>",
        script_name()
    ));
    shell(&format!("{}#{}", p.project, p.number), "", &main)
}

/// A workflow as an SVG graph: each job in the column of its depth (the longest chain of
/// `requires` before it), an edge from each required job.
fn workflow_graph(w: &WorkflowRow) -> String {
    let index: HashMap<&str, usize> = w
        .jobs
        .iter()
        .enumerate()
        .map(|(i, j)| (j.name.as_str(), i))
        .collect();
    let mut depth = vec![0usize; w.jobs.len()];
    // The graph is acyclic (the compiler checked); a bounded relaxation is enough.
    for _ in 0..w.jobs.len() {
        for (i, j) in w.jobs.iter().enumerate() {
            for (r, _) in &j.requires {
                if let Some(&k) = index.get(r.as_str()) {
                    depth[i] = depth[i].max(depth[k] + 1);
                }
            }
        }
    }
    let mut rows = vec![0usize; w.jobs.len()];
    let mut per_col: HashMap<usize, usize> = HashMap::new();
    for (i, d) in depth.iter().enumerate() {
        let c = per_col.entry(*d).or_default();
        rows[i] = *c;
        *c += 1;
    }
    let (bw, bh, gx, gy) = (170usize, 46usize, 60usize, 18usize);
    let pos = |i: usize| (10 + depth[i] * (bw + gx), 10 + rows[i] * (bh + gy));
    let width = 20 + (depth.iter().max().copied().unwrap_or(0) + 1) * (bw + gx);
    let height = 20 + per_col.values().max().copied().unwrap_or(1) * (bh + gy);
    let mut svg = format!(
        "<svg class=\"wf-graph\" role=\"img\" aria-label=\"jobs of workflow {}\" \
         width=\"{width}\" height=\"{height}\" viewBox=\"0 0 {width} {height}\">",
        esc(&w.name)
    );
    for (i, j) in w.jobs.iter().enumerate() {
        for (r, _) in &j.requires {
            if let Some(&k) = index.get(r.as_str()) {
                let (x1, y1) = pos(k);
                let (x2, y2) = pos(i);
                svg.push_str(&format!(
                    "<line class=\"edge\" x1=\"{}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"currentColor\" stroke-opacity=\"0.5\"/>",
                    x1 + bw,
                    y1 + bh / 2,
                    x2,
                    y2 + bh / 2
                ));
            }
        }
    }
    for (i, j) in w.jobs.iter().enumerate() {
        let (x, y) = pos(i);
        let label = match j.job_id {
            Some(id) => format!(
                "<a href=\"/jobs/{id}\"><text x=\"{}\" y=\"{}\" fill=\"currentColor\">{}</text></a>",
                x + 8,
                y + 18,
                esc(&j.name)
            ),
            None => format!(
                "<text x=\"{}\" y=\"{}\" fill=\"currentColor\">{}</text>",
                x + 8,
                y + 18,
                esc(&j.name)
            ),
        };
        svg.push_str(&format!(
            "<g class=\"pjob s-{st}\" data-job=\"{name}\" data-status=\"{st}\">\
             <title>{reason}</title>\
             <rect x=\"{x}\" y=\"{y}\" width=\"{bw}\" height=\"{bh}\" rx=\"6\" fill=\"none\" stroke=\"currentColor\"/>\
             {label}<text class=\"pjob-status\" x=\"{tx}\" y=\"{ty}\" fill=\"currentColor\" font-size=\"12\">{st}</text></g>",
            st = esc(j.status.as_str()),
            name = esc(&j.name),
            reason = esc(j.reason.as_deref().unwrap_or("")),
            tx = x + 8,
            ty = y + 36,
        ));
    }
    svg.push_str("</svg>");
    // The reasons in text beside the graph (the SVG's titles show only on hover): why a job
    // waits for an agent, waits its serial group's turn, is blocked or did not run. One item
    // per job, hidden while it has none, so the script can fill it in without a reload.
    let reasons: String = w
        .jobs
        .iter()
        .map(|j| {
            let r = j.reason.as_deref().unwrap_or("");
            format!(
                "<li data-reason-for=\"{n}\"{hidden}><strong>{n}</strong>: <span class=\"reason\">{r}</span></li>",
                n = esc(&j.name),
                r = esc(r),
                hidden = if r.is_empty() { " hidden" } else { "" }
            )
        })
        .collect();
    svg.push_str(&format!("<ul class=\"wf-reasons\">{reasons}</ul>"));
    let approvals: String = w
        .jobs
        .iter()
        .filter(|j| j.kind == JobKind::Approval)
        .map(|j| {
            format!(
                "<button type=\"button\" data-approve=\"{n}\"{hidden}>Approve {n}</button> ",
                n = esc(&j.name),
                hidden = if j.status.as_str() == "on_hold" {
                    ""
                } else {
                    " hidden"
                }
            )
        })
        .collect();
    format!(
        "<section class=\"workflow\" data-workflow=\"{}\"><h2>{} <small class=\"wf-status\">{}</small></h2>\
         <p>{approvals}</p>{svg}</section>",
        esc(&w.name),
        esc(&w.name),
        esc(w.status.as_str())
    )
}

/// Who acts on pipeline `id`: the operator behind the request's bearer token, or the person
/// logged in whose repository permission allows `action` (their session cookie and the
/// CSRF token in `X-Bosun-CSRF`); else the 401 or 403 to answer. With who they are in the
/// audit log, who they are to security groups.
async fn operator(
    state: &Arc<AppState>,
    headers: &HeaderMap,
    id: i64,
    action: crate::model::people::Action,
) -> Result<(Actor, Principal), Response> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .unwrap_or("")
        .to_owned();
    if token.is_empty() {
        return person(state, headers, id, action).await;
    }
    match state.db(move |s| s.operator(&token)).await {
        Ok(Some(name)) => Ok((Actor::Operator(name.clone()), Principal::Operator(name))),
        Ok(None) => Err(json_error(
            StatusCode::UNAUTHORIZED,
            "operator token unknown or revoked",
        )),
        Err(e) => Err(json_error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())),
    }
}

/// A logged-in person acting from the page (see [`operator`]).
async fn person(
    state: &Arc<AppState>,
    headers: &HeaderMap,
    id: i64,
    action: crate::model::people::Action,
) -> Result<(Actor, Principal), Response> {
    use crate::people;
    let viewer = match people::viewer(state, headers).await {
        Ok(Some(v)) => v,
        Ok(None) => return Err(json_error(
            StatusCode::UNAUTHORIZED,
            "log in (with Bitbucket, or an operator token: bosun coordinator operator new NAME)",
        )),
        Err(e) => return Err(json_error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())),
    };
    if !people::csrf_ok(&viewer, people::csrf_header(headers)) {
        return Err(json_error(
            StatusCode::FORBIDDEN,
            "the request did not come from this site's page (CSRF token missing or wrong): reload the page",
        ));
    }
    let project = match state.db(move |s| s.pipeline(id)).await {
        Ok(Some(p)) => p.project,
        Ok(None) => {
            return Err(json_error(
                StatusCode::NOT_FOUND,
                format!("no pipeline {id}"),
            ))
        }
        Err(e) => return Err(json_error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())),
    };
    // Asked of Bitbucket again now: a permission taken away there stops this at once.
    if let Err(e) = people::refresh_permissions(state, &viewer.person, true).await {
        return Err(json_error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()));
    }
    match people::may(state, &viewer, &project, action).await {
        Ok(true) => Ok((
            Actor::Person(viewer.person.nickname.clone()),
            Principal::Person {
                account: viewer.person.uuid,
                nickname: viewer.person.nickname,
            },
        )),
        Ok(false) => Err(json_error(
            StatusCode::FORBIDDEN,
            format!(
                "{} may not {} on {project}: that needs {} permission on its repository",
                viewer.person.nickname,
                action.as_str(),
                action.needs()
            ),
        )),
        Err(e) => Err(json_error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())),
    }
}

#[derive(serde::Deserialize)]
struct ApproveBody {
    job: String,
}

pub(crate) async fn approve(
    State(state): State<Arc<AppState>>,
    Path(raw): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some((id, false)) = parse_id(&raw) else {
        return json_error(StatusCode::NOT_FOUND, format!("no pipeline {raw}"));
    };
    let (who, by) = match operator(&state, &headers, id, Action::Approve).await {
        Ok(w) => w,
        Err(r) => return r,
    };
    let b: ApproveBody = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(e) => return json_error(StatusCode::BAD_REQUEST, format!("body: {e}")),
    };
    let url = state.public_url.clone();
    let job = b.job.clone();
    done(
        &state,
        state
            .db(move |s| {
                let wf = s.approve(id, &job, &by, &statuses(&url))?;
                audited(s, who, AuditAction::Approve, id, &format!(" job {job}"))?;
                Ok(wf)
            })
            .await
            .map(|wf| format!("approved {} in {wf}", b.job)),
    )
}

pub(crate) async fn cancel(
    State(state): State<Arc<AppState>>,
    Path(raw): Path<String>,
    headers: HeaderMap,
) -> Response {
    let Some((id, false)) = parse_id(&raw) else {
        return json_error(StatusCode::NOT_FOUND, format!("no pipeline {raw}"));
    };
    let (who, _) = match operator(&state, &headers, id, Action::Cancel).await {
        Ok(w) => w,
        Err(r) => return r,
    };
    let url = state.public_url.clone();
    done(
        &state,
        state
            .db(move |s| {
                s.cancel_pipeline(id, &statuses(&url))?;
                audited(s, who, AuditAction::Cancel, id, "")
            })
            .await
            .map(|()| "cancel requested".to_owned()),
    )
}

pub(crate) async fn rerun(
    State(state): State<Arc<AppState>>,
    Path(raw): Path<String>,
    headers: HeaderMap,
) -> Response {
    let Some((id, false)) = parse_id(&raw) else {
        return json_error(StatusCode::NOT_FOUND, format!("no pipeline {raw}"));
    };
    let (who, by) = match operator(&state, &headers, id, Action::Rerun).await {
        Ok(w) => w,
        Err(r) => return r,
    };
    let url = state.public_url.clone();
    done(
        &state,
        state
            .db(move |s| {
                let n = s.rerun_failed(id, by.account(), &statuses(&url))?;
                audited(s, who, AuditAction::Rerun, id, "")?;
                Ok(n)
            })
            .await
            .map(|n| format!("{n} job(s) run again")),
    )
}

/// The audit row of an action on pipeline `id` from the page.
fn audited(
    s: &dyn crate::store::Backend,
    who: Actor,
    action: AuditAction,
    id: i64,
    more: &str,
) -> crate::Result<()> {
    let project = s.pipeline(id)?.map(|p| p.project);
    let mut e = Event::new(who, action)
        .target(format!("pipeline {id}{more}"))
        .detail("from the pipeline page");
    e.project = project;
    crate::audit::record(s, e)
}

fn done(state: &Arc<AppState>, r: crate::Result<String>) -> Response {
    use crate::CoordError;
    match r {
        Ok(msg) => {
            state.bump();
            state.pipelines_wake.notify_one();
            Json(serde_json::json!({ "ok": msg })).into_response()
        }
        Err(CoordError::NotFound(m)) => json_error(StatusCode::NOT_FOUND, m),
        Err(CoordError::Invalid(m)) => json_error(StatusCode::CONFLICT, m),
        Err(CoordError::Forbidden(m)) => json_error(StatusCode::FORBIDDEN, m),
        Err(e) => json_error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

//! `GET /me`, and pipelines: trigger, list, one by id or number, its config, its workflows.

use super::auth::{caller, Caller};
use super::{db, pipeline_by_id, project, shapes, V2Error, V2Result};
use crate::audit::{self, AuditAction, Event};
use crate::model::people::Action;
use crate::store::pipelines::NewPipeline;
use crate::AppState;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use base64::Engine;
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;

/// Pipelines a page of `GET /project/{slug}/pipeline` holds.
pub const PAGE: u32 = 20;

pub async fn me(State(state): State<Arc<AppState>>, headers: HeaderMap) -> V2Result {
    let who = caller(&state, &headers).await?;
    let login = match &who {
        // A project token is known by its project.
        Caller::Project(t) => format!("project-token:{}", t.slug),
        _ => who.name(),
    };
    let (id, name) = match &who {
        // A person: their Bitbucket account's UUID (without its braces) and display name.
        Caller::Person(p) => {
            let bare = p.uuid.trim_matches(|c| c == '{' || c == '}').to_owned();
            let id = if super::is_uuid(&bare) {
                bare
            } else {
                shapes::operator_uuid(&format!("person:{}", p.uuid))
            };
            (id, p.display_name.clone())
        }
        _ => (shapes::operator_uuid(&login), login.clone()),
    };
    Ok(Json(json!({
        "id": id,
        "login": login,
        "name": name,
    }))
    .into_response())
}

#[derive(Deserialize)]
pub struct ListQuery {
    branch: Option<String>,
    #[serde(rename = "page-token")]
    page_token: Option<String>,
}

/// A page token: the last pipeline of the page before (opaque to clients).
fn page_token(last: i64) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("before:{last}"))
}

fn read_page_token(t: &str) -> Result<i64, V2Error> {
    let bad = || V2Error::bad("Invalid page-token: pass the next_page_token of the page before");
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(t.trim())
        .map_err(|_| bad())?;
    String::from_utf8(raw)
        .ok()
        .and_then(|s| s.strip_prefix("before:")?.parse::<i64>().ok())
        .filter(|n| *n > 0)
        .ok_or_else(bad)
}

pub async fn list(
    State(state): State<Arc<AppState>>,
    Path((vcs, org, repo)): Path<(String, String, String)>,
    Query(q): Query<ListQuery>,
    headers: HeaderMap,
) -> V2Result {
    let who = caller(&state, &headers).await?;
    let p = project(&state, &who, &vcs, &org, &repo, Action::Read).await?;
    let before = q.page_token.as_deref().map(read_page_token).transpose()?;
    let branch = q.branch.filter(|b| !b.is_empty());
    let slug = p.slug.clone();
    let rows = db(&state, move |s| {
        // One more than a page tells whether another page follows.
        let ids = s.pipeline_page(&slug, branch.as_deref(), before, PAGE + 1)?;
        let more = ids.len() > PAGE as usize;
        let mut rows = Vec::new();
        for id in ids.into_iter().take(PAGE as usize) {
            if let (Some(p), Some(d)) = (s.pipeline(id)?, s.pipeline_details(id)?) {
                rows.push((p, d));
            }
        }
        Ok((rows, more))
    })
    .await?;
    let (rows, more) = rows;
    let next = more
        .then(|| rows.last().map(|(p, _)| page_token(p.id)))
        .flatten();
    let items = rows.iter().map(|(p, d)| shapes::pipeline(p, d)).collect();
    Ok(Json(shapes::page(items, next)).into_response())
}

pub async fn by_number(
    State(state): State<Arc<AppState>>,
    Path((vcs, org, repo, number)): Path<(String, String, String, String)>,
    headers: HeaderMap,
) -> V2Result {
    let who = caller(&state, &headers).await?;
    let p = project(&state, &who, &vcs, &org, &repo, Action::Read).await?;
    let n: i64 = number
        .parse()
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| V2Error::not_found("Pipeline"))?;
    let reference = format!("{}#{n}", p.slug);
    let id = db(&state, move |s| s.pipeline_id(&reference)).await?;
    let (p, d) = pipeline_by_id(&state, &who, id, Action::Read).await?;
    Ok(Json(shapes::pipeline(&p, &d)).into_response())
}

async fn by_uuid(
    state: &AppState,
    who: &Caller,
    raw: &str,
) -> Result<
    (
        crate::store::pipelines::PipelineRow,
        crate::store::api_v2::PipelineDetails,
    ),
    V2Error,
> {
    if !super::is_uuid(raw) {
        return Err(V2Error::not_found("Pipeline"));
    }
    let u = raw.to_ascii_lowercase();
    let id = db(state, move |s| s.pipeline_by_uuid(&u))
        .await?
        .ok_or_else(|| V2Error::not_found("Pipeline"))?;
    pipeline_by_id(state, who, id, Action::Read).await
}

pub async fn get_one(
    State(state): State<Arc<AppState>>,
    Path(raw): Path<String>,
    headers: HeaderMap,
) -> V2Result {
    let who = caller(&state, &headers).await?;
    let (p, d) = by_uuid(&state, &who, &raw).await?;
    Ok(Json(shapes::pipeline(&p, &d)).into_response())
}

pub async fn config(
    State(state): State<Arc<AppState>>,
    Path(raw): Path<String>,
    headers: HeaderMap,
) -> V2Result {
    let who = caller(&state, &headers).await?;
    let (p, _) = by_uuid(&state, &who, &raw).await?;
    let id = p.id;
    let c = db(&state, move |s| s.pipeline_config(id))
        .await?
        .ok_or_else(|| V2Error::not_found("Pipeline config"))?;
    let mut v = json!({"source": c.source, "compiled": c.compiled});
    if let (Some(s), Some(cs)) = (c.setup_source, c.setup_compiled) {
        v["setup-config"] = Value::String(s);
        v["compiled-setup-config"] = Value::String(cs);
    }
    Ok(Json(v).into_response())
}

pub async fn workflows(
    State(state): State<Arc<AppState>>,
    Path(raw): Path<String>,
    headers: HeaderMap,
) -> V2Result {
    let who = caller(&state, &headers).await?;
    let (p, d) = by_uuid(&state, &who, &raw).await?;
    // A pipeline has a handful of workflows: one page.
    let items = p
        .workflows
        .iter()
        .map(|w| shapes::workflow(&p, &d, w))
        .collect();
    Ok(Json(shapes::page(items, None)).into_response())
}

/// `POST /project/{slug}/pipeline`'s body.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct TriggerBody {
    branch: Option<String>,
    tag: Option<String>,
    #[serde(default)]
    parameters: serde_json::Map<String, Value>,
}

/// Longest branch or tag name taken (git's own limit is the file system's).
const MAX_REF: usize = 255;

/// A trigger's parameters as the text the compiler reads them as (its config declares their
/// types): strings, numbers and booleans only, as CircleCI takes them.
pub(super) fn params(m: serde_json::Map<String, Value>) -> Result<Vec<(String, String)>, V2Error> {
    m.into_iter()
        .map(|(k, v)| {
            if k.is_empty() || k.len() > 128 || k.chars().any(|c| c.is_control()) {
                return Err(V2Error::bad(
                    "parameters: a parameter's name must be 1 to 128 printable characters",
                ));
            }
            let text = match v {
                Value::String(s) => s,
                Value::Bool(b) => b.to_string(),
                Value::Number(n) => n.to_string(),
                _ => {
                    return Err(V2Error::bad(format!(
                        "parameters: `{}` must be a string, a number or a boolean",
                        crate::text::printable(&k)
                    )))
                }
            };
            Ok((k, text))
        })
        .collect()
}

fn ref_name(what: &str, s: &str) -> Result<String, V2Error> {
    let s = s.trim();
    if s.is_empty()
        || s.len() > MAX_REF
        || s.starts_with('-')
        || s.contains("..")
        || s.chars()
            .any(|c| c.is_control() || c.is_whitespace() || "~^:?*[\\".contains(c))
    {
        return Err(V2Error::bad(format!(
            "{what}: not a valid git {what} name (at most {MAX_REF} characters, no spaces, \
             control characters, `..` or any of ~^:?*[\\)"
        )));
    }
    Ok(s.to_owned())
}

pub async fn trigger(
    State(state): State<Arc<AppState>>,
    Path((vcs, org, repo)): Path<(String, String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> V2Result {
    let who = caller(&state, &headers).await?;
    let p = project(&state, &who, &vcs, &org, &repo, Action::Trigger).await?;
    let by = who.name();
    let triggered_by = who.person_account();
    let actor = who.actor();
    let b: TriggerBody = if body.iter().all(u8::is_ascii_whitespace) {
        TriggerBody::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| V2Error::bad(format!("Invalid JSON body: {e}")))?
    };
    let git_ref = match (b.branch, b.tag) {
        (Some(_), Some(_)) => {
            return Err(V2Error::bad(
                "branch and tag are mutually exclusive: give one of them",
            ))
        }
        (Some(br), None) => format!("refs/heads/{}", ref_name("branch", &br)?),
        (None, Some(t)) => format!("refs/tags/{}", ref_name("tag", &t)?),
        (None, None) => format!("refs/heads/{}", p.default_branch),
    };
    let params = params(b.parameters)?;
    let slug = p.slug.clone();
    let (id, uuid, number, created) = db(&state, move |s| {
        let (id, number) = s.create_pipeline(&NewPipeline {
            project: slug,
            git_ref,
            params,
            trigger_source: "api".into(),
            event: "api".into(),
            event_action: "api".into(),
            username: Some(by),
            triggered_by,
            ..Default::default()
        })?;
        let row = s
            .pipeline(id)?
            .ok_or_else(|| crate::CoordError::NotFound(format!("pipeline {id} went away")))?;
        audit::record(
            s,
            Event::new(actor, AuditAction::Trigger)
                .project(&row.project)
                .target(format!("pipeline {id}"))
                .detail("API v2"),
        )?;
        Ok((id, row.uuid, number, row.created))
    })
    .await?;
    tracing::info!(pipeline = id, project = %p.slug, "pipeline triggered through API v2");
    super::changed(&state);
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "id": uuid,
            "state": "pending",
            "number": number,
            "created_at": bosun_protocol::time::iso_utc(created),
        })),
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_tokens_round_trip_and_garbage_is_refused() {
        assert_eq!(read_page_token(&page_token(41)).ok(), Some(41));
        for bad in ["", "x", "YmVmb3JlOi0x", "!!!"] {
            assert!(read_page_token(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn trigger_parameters_are_scalars_with_sane_names() {
        let m = |v: Value| v.as_object().cloned().expect("object");
        let got = params(m(json!({"a": "x", "b": 2, "c": false}))).ok();
        assert_eq!(
            got,
            Some(vec![
                ("a".into(), "x".into()),
                ("b".into(), "2".into()),
                ("c".into(), "false".into())
            ])
        );
        assert!(params(m(json!({"a": {"nested": 1}}))).is_err());
        assert!(params(m(json!({"a": [1]}))).is_err());
        assert!(params(m(json!({"": 1}))).is_err());
        assert!(params(m(json!({"a\u{1b}": 1}))).is_err());
    }

    #[test]
    fn branch_and_tag_names_are_checked() {
        assert_eq!(ref_name("branch", " main ").ok().as_deref(), Some("main"));
        assert!(ref_name("branch", "feature/x-1").is_ok());
        for bad in ["", "a b", "-x", "a..b", "a\nb", "x:y", &"b".repeat(256)] {
            assert!(ref_name("branch", bad).is_err(), "{bad:?}");
        }
    }
}

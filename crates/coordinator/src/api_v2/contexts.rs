//! Contexts and their variables (`docs/contexts.md`) over the store's `ContextStore`: list,
//! create, read and delete a context; list, set and delete its variables (names and times,
//! never values). Operators only: a context holds deploy credentials, which no read-only
//! project token may even list.

use super::auth::caller;
use super::{db, is_uuid, shapes, V2Error, V2Result};
use crate::store::contexts::{ContextRow, ContextVarRow};
use crate::AppState;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::IntoResponse;
use axum::Json;
use bosun_protocol::time::iso_utc;
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;

/// Longest variable value taken, as `bosun coordinator context env set` takes.
const MAX_VALUE: usize = 32 * 1024;

fn context_json(c: &ContextRow) -> Value {
    json!({"id": c.id, "name": c.name, "created_at": iso_utc(c.created)})
}

fn var_json(context: &str, v: &ContextVarRow) -> Value {
    json!({
        "variable": v.name,
        "created_at": iso_utc(v.created),
        "updated_at": iso_utc(v.updated),
        "context_id": context,
    })
}

/// The workspace an `owner-slug` (`bb/WS`, `bitbucket/WS`) names; `None`: not a Bitbucket
/// organization slug.
fn owner_of(slug: &str) -> Option<String> {
    let (vcs, ws) = slug.split_once('/')?;
    (shapes::is_bitbucket(vcs) && shapes::valid_slug_part(ws)).then(|| ws.to_owned())
}

/// A context the path names by its id, for an operator.
async fn context(state: &AppState, headers: &HeaderMap, id: &str) -> Result<ContextRow, V2Error> {
    caller(state, headers).await?.operator()?;
    if !is_uuid(id) {
        return Err(V2Error::not_found("Context"));
    }
    let id = id.to_ascii_lowercase();
    db(state, move |s| s.context(&id))
        .await?
        .ok_or_else(|| V2Error::not_found("Context"))
}

#[derive(Deserialize)]
pub struct ListQuery {
    #[serde(rename = "owner-slug")]
    owner_slug: Option<String>,
    #[serde(rename = "owner-id")]
    owner_id: Option<String>,
}

/// `GET /context?owner-slug=bb/WS`: the workspace's contexts and the coordinator's own (those
/// made without an owner, which every project may use), by name; one page.
pub async fn list(
    State(state): State<Arc<AppState>>,
    Query(q): Query<ListQuery>,
    headers: HeaderMap,
) -> V2Result {
    caller(&state, &headers).await?.operator()?;
    if q.owner_id.is_some() && q.owner_slug.is_none() {
        return Err(V2Error::bad(
            "owner-id is not served here: give owner-slug (bb/WORKSPACE)",
        ));
    }
    let owner = match q.owner_slug.as_deref() {
        Some(s) => Some(owner_of(s).ok_or_else(|| {
            V2Error::bad("owner-slug: expected bb/WORKSPACE or bitbucket/WORKSPACE")
        })?),
        None => None,
    };
    let rows = db(&state, move |s| s.list_contexts(None)).await?;
    let items = rows
        .iter()
        .filter(|c| match &owner {
            Some(o) => c.owner == *o || c.owner.is_empty(),
            None => true,
        })
        .map(context_json)
        .collect();
    Ok(Json(shapes::page(items, None)).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Owner {
    slug: Option<String>,
    id: Option<String>,
    #[serde(rename = "type")]
    _kind: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    name: String,
    owner: Option<Owner>,
}

pub async fn create(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Bytes,
) -> V2Result {
    caller(&state, &headers).await?.operator()?;
    let b: CreateBody = serde_json::from_slice(&body)
        .map_err(|e| V2Error::bad(format!("Invalid JSON body: {e}")))?;
    let owner = match b.owner {
        Some(Owner { slug: Some(s), .. }) => owner_of(&s).ok_or_else(|| {
            V2Error::bad("owner.slug: expected bb/WORKSPACE or bitbucket/WORKSPACE")
        })?,
        Some(Owner { id: Some(_), .. }) => {
            return Err(V2Error::bad(
                "owner.id is not served here: give owner.slug (bb/WORKSPACE)",
            ))
        }
        _ => String::new(),
    };
    let name = b.name;
    let row = db(&state, move |s| s.create_context(&name, &owner)).await?;
    Ok(Json(context_json(&row)).into_response())
}

pub async fn get_one(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> V2Result {
    let c = context(&state, &headers, &id).await?;
    Ok(Json(context_json(&c)).into_response())
}

pub async fn delete(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> V2Result {
    let c = context(&state, &headers, &id).await?;
    db(&state, move |s| s.delete_context(&c.id)).await?;
    Ok(Json(json!({"message": "Context deleted."})).into_response())
}

pub async fn vars(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> V2Result {
    let c = context(&state, &headers, &id).await?;
    let cid = c.id.clone();
    let rows = db(&state, move |s| s.list_context_vars(&cid)).await?;
    let items = rows.iter().map(|v| var_json(&c.id, v)).collect();
    Ok(Json(shapes::page(items, None)).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SetBody {
    value: String,
}

pub async fn set_var(
    State(state): State<Arc<AppState>>,
    Path((id, name)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> V2Result {
    let c = context(&state, &headers, &id).await?;
    let b: SetBody = serde_json::from_slice(&body)
        .map_err(|e| V2Error::bad(format!("Invalid JSON body: {e}")))?;
    if b.value.len() > MAX_VALUE {
        return Err(V2Error::bad(format!(
            "value: a context variable's value is at most {MAX_VALUE} bytes"
        )));
    }
    let cid = c.id.clone();
    // The value is sealed by the store; it is never logged or echoed.
    let row = db(&state, move |s| s.set_context_var(&cid, &name, &b.value)).await?;
    Ok(Json(var_json(&c.id, &row)).into_response())
}

pub async fn delete_var(
    State(state): State<Arc<AppState>>,
    Path((id, name)): Path<(String, String)>,
    headers: HeaderMap,
) -> V2Result {
    let c = context(&state, &headers, &id).await?;
    db(&state, move |s| s.remove_context_var(&c.id, &name)).await?;
    Ok(Json(json!({"message": "Environment variable deleted."})).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_slugs_name_bitbucket_workspaces() {
        assert_eq!(owner_of("bb/acme").as_deref(), Some("acme"));
        assert_eq!(owner_of("bitbucket/acme").as_deref(), Some("acme"));
        for bad in ["gh/acme", "acme", "bb/", "bb/a b", "bb/acme/widget"] {
            assert_eq!(owner_of(bad), None, "{bad}");
        }
    }
}

//! A person's SSH keys on their page (`/me`: listed, `POST /me/ssh-keys` adds one,
//! `POST /me/ssh-keys/{key}/delete` removes one, forms carrying the CSRF token) and the job
//! page's "Rerun with SSH" (`POST /jobs/{id}/rerun-ssh`, the same): the rules are in
//! [`crate::people::ssh`] and `model::ssh_policy`.

use super::people::see_other;
use super::{error_page, esc, internal, iso_utc};
use crate::model::ssh_policy::{self as policy, UserKey};
use crate::people::ssh::{self as person_ssh, RerunError};
use crate::store::{Backend, PersonKey, SshGrant};
use crate::AppState;
use axum::extract::{Form, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use std::fmt::Write as _;
use std::sync::Arc;

/// The "SSH keys" section of `/me`.
pub fn section(keys: &[PersonKey], csrf: &str) -> String {
    let mut m = String::from(
        "<h2 id=\"ssh-keys\">SSH keys</h2><p>A rerun with SSH that you ask for lets in these \
         public keys (and no others).</p><ul id=\"ssh-key-list\">",
    );
    for k in keys {
        let _ = write!(
            m,
            "<li data-key=\"{id}\"><code>{fp}</code> {comment} <small>added {at}{src}</small> \
             <form method=\"post\" action=\"/me/ssh-keys/{id}/delete\" class=\"inline\">\
             <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
             <button type=\"submit\">Remove</button></form></li>",
            id = k.id,
            fp = esc(&k.fingerprint),
            comment = esc(k.key.splitn(3, ' ').nth(2).unwrap_or("")),
            at = iso_utc(k.added),
            src = if k.from_bitbucket {
                ", from Bitbucket"
            } else {
                ""
            },
            csrf = esc(csrf),
        );
    }
    if keys.is_empty() {
        m.push_str("<li>none yet</li>");
    }
    let _ = write!(
        m,
        "</ul><form method=\"post\" action=\"/me/ssh-keys\" id=\"add-ssh-key\">\
         <input type=\"hidden\" name=\"csrf\" value=\"{0}\">\
         <label>Public key (one line of your <code>.pub</code> file) \
         <textarea name=\"key\" rows=\"3\" cols=\"60\" autocomplete=\"off\"></textarea></label> \
         <button type=\"submit\">Add key</button></form>\
         <form method=\"post\" action=\"/me/ssh-keys/bitbucket\" id=\"import-ssh-keys\">\
         <input type=\"hidden\" name=\"csrf\" value=\"{0}\">\
         <button type=\"submit\">Read my keys from Bitbucket</button></form>",
        esc(csrf)
    );
    m
}

/// `POST /me/ssh-keys/bitbucket`: the keys of the person's Bitbucket account, read now.
pub async fn import(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Form(f): Form<super::CsrfForm>,
) -> Response {
    let viewer = match super::form_viewer(&state, &headers, f.csrf.as_deref()).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    match person_ssh::import_from_bitbucket(&state, &viewer).await {
        Ok(_) => see_other("/me#ssh-keys", &[]),
        Err(person_ssh::ImportError::Coord(e)) => internal(e),
        Err(e) => error_page(StatusCode::BAD_GATEWAY, &format!("Keys not read: {e}")),
    }
}

#[derive(Deserialize)]
pub struct AddKey {
    #[serde(default)]
    csrf: Option<String>,
    #[serde(default)]
    key: String,
}

/// `POST /me/ssh-keys`.
pub async fn add(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Form(f): Form<AddKey>,
) -> Response {
    let viewer = match super::form_viewer(&state, &headers, f.csrf.as_deref()).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let (key, fingerprint) = match person_ssh::parse_key(&f.key) {
        Ok(k) => k,
        Err(e) => return error_page(StatusCode::BAD_REQUEST, &format!("Key not added: {e}")),
    };
    let pid = viewer.person.id;
    match state
        .db(move |s: &dyn Backend| s.add_person_ssh_key(pid, &key, &fingerprint, false))
        .await
    {
        Ok(_) => see_other("/me#ssh-keys", &[]),
        Err(crate::CoordError::Invalid(m)) => {
            error_page(StatusCode::CONFLICT, &format!("Key not added: {m}"))
        }
        Err(e) => internal(e),
    }
}

/// `POST /me/ssh-keys/{key}/delete`.
pub async fn remove(
    State(state): State<Arc<AppState>>,
    Path(raw): Path<String>,
    headers: HeaderMap,
    Form(f): Form<super::CsrfForm>,
) -> Response {
    let viewer = match super::form_viewer(&state, &headers, f.csrf.as_deref()).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let Ok(id) = raw.parse::<i64>() else {
        return error_page(StatusCode::NOT_FOUND, "No such key.");
    };
    let pid = viewer.person.id;
    match state
        .db(move |s: &dyn Backend| s.remove_person_ssh_key(pid, id))
        .await
    {
        Ok(true) => see_other("/me#ssh-keys", &[]),
        // Another person's key is not told apart from a missing one.
        Ok(false) => error_page(StatusCode::NOT_FOUND, "No such key."),
        Err(e) => internal(e),
    }
}

/// `POST /jobs/{id}/rerun-ssh`: to the new job's page, which says what it holds.
pub async fn rerun(
    State(state): State<Arc<AppState>>,
    Path(raw): Path<String>,
    headers: HeaderMap,
    Form(f): Form<super::CsrfForm>,
) -> Response {
    let Some(id) = crate::store::parse_job_id(&raw) else {
        return error_page(StatusCode::NOT_FOUND, "No such job.");
    };
    let viewer = match super::form_viewer(&state, &headers, f.csrf.as_deref()).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    // A script asking for JSON gets the answer as JSON (what the rerun holds, in words).
    let json = headers
        .get(axum::http::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("application/json"));
    match person_ssh::rerun_with_ssh(&state, &viewer.person, id, person_ssh::Via::JobPage).await {
        Ok(r) if json => axum::Json(serde_json::json!({
            "job_id": r.job,
            "user_key": r.user_key.as_str(),
            "message": format!("rerun with SSH {}", r.said),
        }))
        .into_response(),
        Ok(r) => see_other(&format!("/jobs/{}", r.job), &[]),
        Err(RerunError::NotFound(_)) => error_page(StatusCode::NOT_FOUND, "No such job."),
        Err(e @ RerunError::Refused(_)) => {
            error_page(StatusCode::FORBIDDEN, &format!("Not rerun: {e}"))
        }
        Err(e @ RerunError::NoKeys) => error_page(StatusCode::CONFLICT, &format!("Not rerun: {e}")),
        Err(RerunError::Coord(e)) => internal(e),
    }
}

/// The job page's rows for a rerun with SSH: who asked, and what it holds of the user key.
pub fn grant_row(g: &SshGrant) -> String {
    format!(
        "<span id=\"ssh-grant\" data-user-key=\"{}\">asked by {}: {}</span>",
        g.user_key.as_str(),
        esc(g.by.as_deref().unwrap_or("an operator")),
        esc(&policy::explain(g.user_key, g.owner.as_deref()))
    )
}

/// What a failed job's error adds when it ran without the user key (the likely cause of a
/// checkout or clone that failed).
pub fn error_note(g: &SshGrant) -> Option<String> {
    (g.user_key == UserKey::Withheld).then(|| {
        format!(
            " (This rerun with SSH ran without the project's user key, which belongs to {}: \
             only the deploy key was given, which reads this repository only. If a checkout \
             of another repository failed, that is why.)",
            g.owner.as_deref().unwrap_or("an account not recorded")
        )
    })
}

/// The job page's "Rerun with SSH" form, for a logged-in person.
pub fn rerun_form(id: i64, csrf: &str) -> String {
    format!(
        "<form method=\"post\" action=\"/jobs/{id}/rerun-ssh\" id=\"rerun-ssh\" class=\"inline\">\
         <input type=\"hidden\" name=\"csrf\" value=\"{}\">\
         <button type=\"submit\">Rerun with SSH</button></form>",
        esc(csrf)
    )
}

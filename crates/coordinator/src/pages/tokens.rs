//! A person's API tokens on their page ("You", `/me`): the list (name, made, last used —
//! never a value), the form that makes one (`POST /me/tokens`, its value shown once on the
//! answer), and each token's revoke button (`POST /me/tokens/{id}/revoke`). Both forms carry
//! the session's CSRF token. The rules are in [`crate::people::tokens`].

use super::{error_page, esc, internal, shell};
use crate::people::{self, Viewer};
use crate::store::PersonalToken;
use crate::AppState;
use axum::extract::{Form, Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use std::fmt::Write as _;
use std::sync::Arc;

fn when(ms: Option<i64>) -> String {
    ms.map(super::iso_utc).unwrap_or_else(|| "never".to_owned())
}

/// The "API tokens" part of the viewer's page.
pub fn section(tokens: &[PersonalToken], csrf: &str) -> String {
    let mut m = String::from(
        "<section id=\"tokens\"><h2>API tokens</h2><p>A token acts on the API \
         (<code>/api/v2</code>, header <code>Circle-Token</code>) as you, with your \
         permissions on each repository. Its value is shown once, when it is made.</p>",
    );
    if tokens.is_empty() {
        m.push_str("<p id=\"no-tokens\">You have no tokens.</p>");
    } else {
        m.push_str(
            "<table id=\"token-list\"><thead><tr><th>Name</th><th>Made</th><th>Last used</th>\
             <th></th></tr></thead><tbody>",
        );
        for t in tokens {
            let _ = write!(
                m,
                "<tr data-token=\"{id}\"><td class=\"name\">{}</td><td>{}</td><td class=\"used\">{}</td>\
                 <td><form method=\"post\" action=\"/me/tokens/{id}/revoke\" class=\"revoke\">\
                 <input type=\"hidden\" name=\"csrf\" value=\"{}\">\
                 <button type=\"submit\">Revoke</button></form></td></tr>",
                esc(&t.name),
                super::iso_utc(t.created),
                when(t.last_used),
                esc(csrf),
                id = t.id,
            );
        }
        m.push_str("</tbody></table>");
    }
    let _ = write!(
        m,
        "<form method=\"post\" action=\"/me/tokens\" id=\"new-token-form\">\
         <input type=\"hidden\" name=\"csrf\" value=\"{}\">\
         <label>Name <input type=\"text\" name=\"name\" id=\"token-name\" maxlength=\"{}\" \
         required></label> <button type=\"submit\">Make a token</button></form></section>",
        esc(csrf),
        crate::model::tokens::MAX_NAME
    );
    m
}

/// The section for `viewer`, read from the store (an error says so in its place).
pub async fn section_for(state: &AppState, viewer: &Viewer) -> String {
    match people::tokens::list(state, &viewer.person).await {
        Ok(t) => section(&t, &viewer.csrf),
        Err(e) => {
            tracing::error!("{e}");
            format!(
                "<p>API tokens could not be read: {}</p>",
                esc(&e.to_string())
            )
        }
    }
}

#[derive(Deserialize)]
pub struct MakeForm {
    #[serde(default)]
    csrf: Option<String>,
    #[serde(default)]
    name: String,
}

fn no_store(mut r: Response) -> Response {
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// `POST /me/tokens` (fields `csrf`, `name`): a new token, its value on this answer only.
pub async fn make(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Form(f): Form<MakeForm>,
) -> Response {
    let viewer = match super::form_viewer(&state, &headers, f.csrf.as_deref()).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let made = match people::tokens::make(&state, &viewer, &f.name).await {
        Ok(m) => m,
        Err(crate::CoordError::Invalid(m)) => {
            return no_store(error_page(StatusCode::BAD_REQUEST, &m));
        }
        Err(e) => return internal(e),
    };
    let mut m = format!(
        "<h1>Your new token</h1><p>Copy <strong>{}</strong> now: this is the only time it is \
         shown (only its digest is kept).</p><p><code id=\"new-token\">{}</code></p>\
         <p><a href=\"/me\">Back to your page</a></p>",
        esc(&made.row.name),
        esc(&made.token)
    );
    m.push_str(&section_for(&state, &viewer).await);
    no_store(shell("New token · bosun", " data-page=\"me\"", &m).into_response())
}

/// `POST /me/tokens/{id}/revoke` (field `csrf`): the token stops working at once.
pub async fn revoke(
    State(state): State<Arc<AppState>>,
    Path(raw): Path<String>,
    headers: HeaderMap,
    Form(f): Form<super::CsrfForm>,
) -> Response {
    let viewer = match super::form_viewer(&state, &headers, f.csrf.as_deref()).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let Some(id) = raw.parse::<i64>().ok().filter(|n| *n > 0) else {
        return super::not_found();
    };
    match people::tokens::revoke(&state, &viewer, id).await {
        Ok(Some(_)) => {
            let mut r = StatusCode::SEE_OTHER.into_response();
            r.headers_mut()
                .insert(header::LOCATION, HeaderValue::from_static("/me#tokens"));
            r
        }
        // Not theirs (or gone already): nothing said of anyone else's tokens.
        Ok(None) => super::not_found(),
        Err(e) => internal(e),
    }
}

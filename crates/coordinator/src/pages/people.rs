//! The pages of logging in and out: `GET /login` (the "Log in with Bitbucket" page),
//! `GET /login/bitbucket` (starts the OAuth flow), `GET /login/bitbucket/callback` (where
//! Bitbucket sends the browser back), `POST /logout` (a form carrying the CSRF token) and
//! `GET /me` (who you are). The rules are in [`crate::people`].

use super::{error_page, esc, internal, shell};
use crate::people::{self, LoginError};
use crate::AppState;
use axum::extract::{Form, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use std::fmt::Write as _;
use std::sync::Arc;

#[derive(Deserialize, Default)]
pub struct ReturnQuery {
    #[serde(default)]
    return_to: Option<String>,
}

pub(super) fn see_other(location: &str, cookies: &[String]) -> Response {
    let mut resp = StatusCode::SEE_OTHER.into_response();
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(location) {
        h.insert(header::LOCATION, v);
    }
    for c in cookies {
        if let Ok(v) = HeaderValue::from_str(c) {
            h.append(header::SET_COOKIE, v);
        }
    }
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// The logout form (a POST with the CSRF token).
pub fn logout_form(csrf: &str) -> String {
    format!(
        "<form method=\"post\" action=\"/logout\" class=\"logout\">\
         <input type=\"hidden\" name=\"csrf\" value=\"{}\">\
         <button type=\"submit\">Log out</button></form>",
        esc(csrf)
    )
}

/// `GET /login`.
pub async fn login_page(
    State(state): State<Arc<AppState>>,
    Query(q): Query<ReturnQuery>,
    headers: HeaderMap,
) -> Response {
    let viewer = match people::viewer(&state, &headers).await {
        Ok(v) => v,
        Err(e) => return internal(e),
    };
    let mut m = String::from("<h1>Log in</h1>");
    if let Some(v) = &viewer {
        let _ = write!(
            m,
            "<p>You are logged in as <strong id=\"me\">{}</strong>.</p>{}",
            esc(&v.person.nickname),
            logout_form(&v.csrf)
        );
    }
    if state.people.enabled() {
        // Logged in already: logging in again (as someone else) ends this session.
        let back = crate::model::people::safe_return_to(q.return_to.as_deref());
        let _ =
            write!(
            m,
            "<p><a id=\"login-bitbucket\" class=\"button\" href=\"/login/bitbucket?return_to={}\">\
             Log in with Bitbucket{}</a></p>",
            esc(&super::url_encode(&back)),
            if viewer.is_some() { " as someone else" } else { "" }
        );
    } else {
        m.push_str(
            "<p>Logging in with Bitbucket is not set up on this coordinator \
             (<code>serve --bitbucket-oauth-file</code>).</p>",
        );
    }
    shell("Log in · bosun", "", &m).into_response()
}

/// `GET /login/bitbucket`: off to Bitbucket, with the login cookie.
pub async fn login_start(
    State(state): State<Arc<AppState>>,
    Query(q): Query<ReturnQuery>,
) -> Response {
    match state.people.begin(q.return_to.as_deref()) {
        Ok(b) => see_other(&b.location, &[b.set_cookie]),
        Err(LoginError::NotConfigured) => error_page(
            StatusCode::NOT_FOUND,
            &LoginError::NotConfigured.to_string(),
        ),
        Err(e) => error_page(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
}

#[derive(Deserialize)]
pub struct CallbackQuery {
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    state: Option<String>,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    error_description: Option<String>,
}

/// `GET /login/bitbucket/callback?code=…&state=…`.
pub async fn login_callback(
    State(state): State<Arc<AppState>>,
    Query(q): Query<CallbackQuery>,
    headers: HeaderMap,
) -> Response {
    let result = match (&q.error, &q.code, &q.state) {
        (Some(e), _, _) => Err(LoginError::Refused(crate::printable(&format!(
            "{e} {}",
            q.error_description.as_deref().unwrap_or("")
        )))),
        (None, Some(code), Some(st)) => people::finish_login(&state, &headers, code, st).await,
        _ => Err(LoginError::BadState),
    };
    match result {
        Ok(done) => see_other(&done.return_to, &done.set_cookies),
        Err(e) => {
            let status = match e {
                LoginError::BadState | LoginError::Refused(_) => StatusCode::FORBIDDEN,
                LoginError::NotConfigured => StatusCode::NOT_FOUND,
                LoginError::OAuth(_) => StatusCode::BAD_GATEWAY,
                LoginError::Coord(_) => StatusCode::INTERNAL_SERVER_ERROR,
            };
            tracing::warn!("login: {e}");
            let mut resp = error_page(status, &format!("Not logged in: {e}"));
            if let Ok(v) = HeaderValue::from_str(&crate::model::people::cookie(
                people::LOGIN_COOKIE,
                "",
                0,
                state.people.settings.secure_cookies,
            )) {
                resp.headers_mut().append(header::SET_COOKIE, v);
            }
            resp
        }
    }
}

#[derive(Deserialize)]
pub struct CsrfForm {
    #[serde(default)]
    csrf: Option<String>,
}

/// `POST /logout` (form field `csrf`).
pub async fn logout(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Form(f): Form<CsrfForm>,
) -> Response {
    let viewer = match people::viewer(&state, &headers).await {
        Ok(Some(v)) => v,
        Ok(None) => return see_other("/", &[state.people.clear_session_cookie()]),
        Err(e) => return internal(e),
    };
    if !people::csrf_ok(&viewer, f.csrf.as_deref()) {
        return error_page(
            StatusCode::FORBIDDEN,
            "This form did not come from this site (its CSRF token is missing or wrong): reload the page and try again.",
        );
    }
    if let Err(e) = people::logout(&state, &viewer).await {
        return internal(e);
    }
    see_other("/", &[state.people.clear_session_cookie()])
}

/// `GET /me`: who you are, or a link to log in.
pub async fn me(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    let viewer = match people::viewer(&state, &headers).await {
        Ok(v) => v,
        Err(e) => return internal(e),
    };
    let Some(v) = viewer else {
        return see_other("/login?return_to=/me", &[]);
    };
    let p = &v.person;
    let mut m = format!(
        "<h1>{}</h1><dl class=\"meta\"><dt>Bitbucket account</dt><dd id=\"nickname\">{}</dd>\
         <dt>UUID</dt><dd><code>{}</code></dd><dt>Coordinator admin</dt><dd id=\"admin\">{}</dd>",
        esc(&p.display_name),
        esc(&p.nickname),
        esc(&p.uuid),
        if p.admin { "yes" } else { "no" },
    );
    if let Some(at) = p.permissions_fetched {
        let _ = write!(
            m,
            "<dt>Repository permissions read</dt><dd>{}</dd>",
            super::iso_utc(at)
        );
    }
    m.push_str("</dl>");
    m.push_str(&logout_form(&v.csrf));
    let pid = p.id;
    match state.db(move |s| s.person_ssh_keys(pid)).await {
        Ok(keys) => m.push_str(&super::ssh_keys::section(&keys, &v.csrf)),
        Err(e) => return internal(e),
    }
    m.push_str(&super::tokens::section_for(&state, &v).await);
    let mut resp = shell("You · bosun", " data-page=\"me\"", &m).into_response();
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

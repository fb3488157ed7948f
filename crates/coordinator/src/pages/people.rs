//! The pages of logging in and out: `GET /login` (the "Log in with Bitbucket" page),
//! `GET /login/bitbucket` (starts the OAuth flow), `GET /login/bitbucket/callback` (where
//! Bitbucket sends the browser back), `POST /login/bitbucket/token` (a Data Center HTTP
//! access token pasted in the login page's form), `POST /logout` (a form carrying the CSRF
//! token) and
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
    login_page_saying(&state, q.return_to.as_deref(), &headers, None).await
}

/// The login page, with `said` (why the last try failed: never quoting what was pasted)
/// above the ways to log in, and a new token login form with its cookie.
async fn login_page_saying(
    state: &AppState,
    return_to: Option<&str>,
    headers: &HeaderMap,
    said: Option<(StatusCode, String)>,
) -> Response {
    let viewer = match people::viewer(state, headers).await {
        Ok(v) => v,
        Err(e) => return internal(e),
    };
    let mut m = String::from("<h1>Log in</h1>");
    let status = match &said {
        Some((status, why)) => {
            let _ = write!(m, "<p class=\"error\" id=\"login-error\">{}</p>", esc(why));
            *status
        }
        None => StatusCode::OK,
    };
    let mut form_cookie = None;
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
        let back = crate::model::people::safe_return_to(return_to);
        if state.people.offers_oauth() {
            let _ = write!(
                m,
                "<p><a id=\"login-bitbucket\" class=\"button\" href=\"/login/bitbucket?return_to={}\">\
                 Log in with Bitbucket{}</a></p>",
                esc(&super::url_encode(&back)),
                if viewer.is_some() { " as someone else" } else { "" }
            );
        }
        if state.people.offers_access_tokens() {
            let form = match state.people.login_form() {
                Ok(f) => f,
                Err(e) => return error_page(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
            };
            // A password field: the browser neither shows nor keeps what is pasted, and it
            // goes in the POST body only, never in a URL.
            let _ = write!(
                m,
                "<h2>{}</h2>\
                 <p>Make one in Bitbucket under <em>Manage account → HTTP access tokens</em> \
                 with <strong>Repository read</strong> permission, and paste it here once. \
                 Bosun keeps it sealed to read your repository permissions again, until it \
                 expires or you revoke it.</p>\
                 <form method=\"post\" action=\"/login/bitbucket/token\" id=\"token-login\">\
                 <input type=\"hidden\" name=\"csrf\" value=\"{}\">\
                 <input type=\"hidden\" name=\"return_to\" value=\"{}\">\
                 <label>HTTP access token <input type=\"password\" name=\"token\" \
                 id=\"access-token\" autocomplete=\"off\" required maxlength=\"{}\"></label> \
                 <button type=\"submit\" id=\"login-token\">Log in with a Bitbucket HTTP \
                 access token</button></form>",
                if state.people.offers_oauth() {
                    "Or with a Bitbucket HTTP access token"
                } else {
                    "Log in with a Bitbucket HTTP access token"
                },
                esc(&form.csrf),
                esc(&back),
                crate::model::people::MAX_ACCESS_TOKEN,
            );
            form_cookie = Some(form.set_cookie);
        }
    } else {
        m.push_str(
            "<p>Logging in with Bitbucket is not set up on this coordinator \
             (<code>serve --bitbucket-oauth-file</code>, or <code>--bitbucket-dc-url</code> \
             for Bitbucket Data Center).</p>",
        );
    }
    let mut resp = (status, shell("Log in · bosun", "", &m)).into_response();
    let h = resp.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Some(c) = form_cookie.and_then(|c| HeaderValue::from_str(&c).ok()) {
        h.append(header::SET_COOKIE, c);
    }
    resp
}

/// The token login form's fields. `Debug` is not derived: the token must never be printed.
#[derive(Deserialize)]
pub struct TokenForm {
    #[serde(default)]
    csrf: Option<String>,
    #[serde(default)]
    return_to: Option<String>,
    #[serde(default)]
    token: String,
}

/// `POST /login/bitbucket/token` (form fields `csrf`, `token`, `return_to`): log in with a
/// Data Center HTTP access token. A refusal shows the login page again with why (never
/// the token) and a fresh form.
pub async fn token_login(
    State(state): State<Arc<AppState>>,
    client: Option<axum::Extension<crate::server::ClientAddr>>,
    headers: HeaderMap,
    Form(f): Form<TokenForm>,
) -> Response {
    // Without the connection's address (a request not through the server's loop), every
    // such request shares one count.
    let addr = client
        .map(|c| c.0 .0)
        .unwrap_or(std::net::IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED));
    let TokenForm {
        csrf,
        return_to,
        token,
    } = f;
    let result = people::token_login(
        &state,
        &headers,
        addr,
        zeroize::Zeroizing::new(token),
        csrf.as_deref(),
        return_to.as_deref(),
    )
    .await;
    match result {
        Ok(done) => see_other(&done.return_to, &done.set_cookies),
        Err(e) => {
            let status = match e {
                LoginError::TooManyAttempts { .. } => StatusCode::TOO_MANY_REQUESTS,
                LoginError::FormExpired | LoginError::TokenRefused => StatusCode::FORBIDDEN,
                LoginError::NotConfigured | LoginError::NotDataCenter | LoginError::TokensOnly => {
                    StatusCode::NOT_FOUND
                }
                LoginError::OAuth(_) => StatusCode::BAD_GATEWAY,
                _ => StatusCode::INTERNAL_SERVER_ERROR,
            };
            tracing::warn!(%addr, "login with an HTTP access token: {e}");
            login_page_saying(
                &state,
                return_to.as_deref(),
                &headers,
                Some((status, format!("Not logged in: {e}"))),
            )
            .await
        }
    }
}

/// `GET /login/bitbucket`: off to Bitbucket, with the login cookie.
pub async fn login_start(
    State(state): State<Arc<AppState>>,
    Query(q): Query<ReturnQuery>,
) -> Response {
    match state.people.begin(q.return_to.as_deref()) {
        Ok(b) => see_other(&b.location, &[b.set_cookie]),
        Err(e @ (LoginError::NotConfigured | LoginError::TokensOnly)) => {
            error_page(StatusCode::NOT_FOUND, &e.to_string())
        }
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
                LoginError::BadState
                | LoginError::Refused(_)
                | LoginError::FormExpired
                | LoginError::TokenRefused => StatusCode::FORBIDDEN,
                LoginError::TooManyAttempts { .. } => StatusCode::TOO_MANY_REQUESTS,
                LoginError::NotConfigured | LoginError::NotDataCenter | LoginError::TokensOnly => {
                    StatusCode::NOT_FOUND
                }
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

/// `POST /logout` (form field `csrf`).
pub async fn logout(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Form(f): Form<super::CsrfForm>,
) -> Response {
    let viewer = match people::viewer(&state, &headers).await {
        Ok(Some(v)) => v,
        Ok(None) => return see_other("/", &[state.people.clear_session_cookie()]),
        Err(e) => return internal(e),
    };
    if !people::csrf_ok(&viewer, f.csrf.as_deref()) {
        return error_page(StatusCode::FORBIDDEN, super::FOREIGN_FORM);
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

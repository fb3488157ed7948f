//! Status badges: `GET /badge/{workspace}/{repo}/{branch}.svg` (a branch's badge; `/` in a
//! branch name is kept), `GET /badge/{workspace}/{repo}.svg` (the project's default branch),
//! `?style=shield|flat-square`, `?token=` for a private project. A shields-style SVG labelled
//! `build` whose second word is the status (`model::badge`), `Cache-Control: no-cache` so
//! README renderers' proxies ask again, and an `ETag` (a 304 for `If-None-Match`).
//!
//! A missing or wrong token gets the same 404 as a project that does not exist, so a badge
//! URL tells nothing about which projects exist. The SVG carries no script, and the web
//! router's Content-Security-Policy (`default-src 'none'`) would stop one anyway; every name
//! in it is escaped. `GET /projects/{workspace}/{repo}` shows the README snippet.

use super::{esc, shell};
use crate::model::badge::{self, BadgeStatus, BadgeStyle};
use crate::model::notify::{shown_url, TargetKind};
use crate::store::{BadgeProject, TargetRow};
use crate::AppState;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use std::sync::Arc;

#[derive(Deserialize)]
pub(crate) struct BadgeQuery {
    style: Option<String>,
    token: Option<String>,
}

/// The one answer for an unknown project, a missing token and a wrong one.
fn not_found() -> Response {
    (StatusCode::NOT_FOUND, "no such badge\n").into_response()
}

/// `workspace/repo[/branch…].svg` → (project slug, branch; `None`: the default branch).
fn split(path: &str) -> Option<(String, Option<String>)> {
    let path = path.strip_suffix(".svg")?;
    let mut parts = path.splitn(3, '/');
    let (ws, repo) = (parts.next()?, parts.next()?);
    if ws.is_empty() || repo.is_empty() {
        return None;
    }
    let branch = parts.next().map(str::to_owned);
    if branch.as_deref() == Some("") {
        return None;
    }
    Some((format!("{ws}/{repo}"), branch))
}

pub(crate) async fn badge(
    State(state): State<Arc<AppState>>,
    Path(path): Path<String>,
    Query(q): Query<BadgeQuery>,
    headers: HeaderMap,
) -> Response {
    let Some((project, branch)) = split(&path) else {
        return not_found();
    };
    let Some(style) = BadgeStyle::parse(q.style.as_deref()) else {
        return (
            StatusCode::BAD_REQUEST,
            "?style: expected shield or flat-square\n",
        )
            .into_response();
    };
    let given = q.token.as_deref().map(|t| crate::sha256_hex(t.as_bytes()));
    let found = state
        .db(move |s| {
            let Some(p) = s.badge_project(&project)? else {
                return Ok(None);
            };
            if !badge::may_see(p.public, p.token_digest.as_deref(), given.as_deref()) {
                return Ok(None);
            }
            let branch = branch.unwrap_or_else(|| p.default_branch.clone());
            let newest = s.newest_pipeline_state(p.id, &branch, &badge::SHOWN)?;
            Ok(Some((p, branch, badge::status(newest))))
        })
        .await;
    let (p, branch, status) = match found {
        Ok(Some(x)) => x,
        Ok(None) => return not_found(),
        Err(e) => {
            tracing::error!("badge: {e}");
            return (StatusCode::INTERNAL_SERVER_ERROR, "badge unavailable\n").into_response();
        }
    };
    let svg = svg(&p.slug, &branch, status, style);
    let etag = format!("\"{}\"", &crate::sha256_hex(svg.as_bytes())[..32]);
    let mut resp = if if_none_match(&headers, &etag) {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        (
            [(header::CONTENT_TYPE, "image/svg+xml; charset=utf-8")],
            svg,
        )
            .into_response()
    };
    let h = resp.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    if let Ok(v) = HeaderValue::from_str(&etag) {
        h.insert(header::ETAG, v);
    }
    resp
}

/// Whether `If-None-Match` names `etag` (or is `*`).
fn if_none_match(headers: &HeaderMap, etag: &str) -> bool {
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().trim_start_matches("W/"))
        .any(|t| t == etag || t == "*")
}

/// Width of `s` in the badge's 11 px Verdana, roughly: shields measures glyphs; a fixed
/// advance per character is close enough for these few words and never clips them.
fn text_width(s: &str) -> u32 {
    s.chars()
        .map(|c| {
            if c.is_ascii_lowercase() || c == ' ' {
                7
            } else {
                8
            }
        })
        .sum()
}

/// The SVG: `build` on grey, the status word on its colour; the title (and accessible name)
/// says which project and branch, escaped.
pub(crate) fn svg(slug: &str, branch: &str, status: BadgeStatus, style: BadgeStyle) -> String {
    let label = "build";
    let word = status.word();
    let lw = text_width(label) + 10;
    let sw = text_width(word) + 10;
    let w = lw + sw;
    let title = esc(&format!("{label}: {word} ({slug}, branch {branch})"));
    let (rx, gradient, fill_gradient) = match style {
        BadgeStyle::Shield => (
            3,
            "<linearGradient id=\"s\" x2=\"0\" y2=\"100%\"><stop offset=\"0\" stop-color=\"#bbb\" \
             stop-opacity=\".1\"/><stop offset=\"1\" stop-opacity=\".1\"/></linearGradient>",
            format!("<rect width=\"{w}\" height=\"20\" fill=\"url(#s)\"/>"),
        ),
        BadgeStyle::FlatSquare => (0, "", String::new()),
    };
    format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"20\" role=\"img\" \
         aria-label=\"{title}\"><title>{title}</title>{gradient}\
         <clipPath id=\"r\"><rect width=\"{w}\" height=\"20\" rx=\"{rx}\" fill=\"#fff\"/></clipPath>\
         <g clip-path=\"url(#r)\"><rect width=\"{lw}\" height=\"20\" fill=\"#555\"/>\
         <rect x=\"{lw}\" width=\"{sw}\" height=\"20\" fill=\"{colour}\"/>{fill_gradient}</g>\
         <g fill=\"#fff\" text-anchor=\"middle\" font-family=\"Verdana,Geneva,DejaVu Sans,sans-serif\" \
         font-size=\"11\"><text x=\"{lx}\" y=\"14\">{label}</text>\
         <text x=\"{sx}\" y=\"14\">{word}</text></g></svg>",
        colour = status.colour(),
        lx = lw / 2,
        sx = lw + sw / 2,
    )
}

/// `GET /projects/{workspace}/{repo}`: the project's badge and the Markdown snippet for its
/// README (a private project's with a placeholder: the token is shown once, by
/// `project badge-token`, and kept only as a digest).
pub(crate) async fn project_page(
    State(state): State<Arc<AppState>>,
    Path((workspace, repo)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let slug = format!("{workspace}/{repo}");
    let found = state
        .db(move |s| {
            let Some(p) = s.badge_project(&slug)? else {
                return Ok(None);
            };
            let targets = s.notify_targets(&p.slug)?;
            Ok(Some((p, targets)))
        })
        .await;
    let (p, targets): (BadgeProject, Vec<TargetRow>) = match found {
        Ok(Some(p)) => p,
        Ok(None) => return (StatusCode::NOT_FOUND, "no such project\n").into_response(),
        Err(e) => {
            tracing::error!("project page: {e}");
            return (StatusCode::INTERNAL_SERVER_ERROR, "project unavailable\n").into_response();
        }
    };
    let snippet = markdown(&state.public_url, &p.slug, p.public, "TOKEN");
    let viewer = crate::people::viewer(&state, &headers)
        .await
        .unwrap_or_default();
    let settings = super::settings::link_for(&state, viewer.as_ref(), &p.slug).await;
    let main = format!(
        "<h1>{}</h1>{settings}<h2>Status badge</h2><p>Badges are {}. Paste this into the README:</p>\
         <pre class=\"badge-snippet\">{}</pre>",
        esc(&p.slug),
        if p.public {
            "public"
        } else {
            "private: replace TOKEN by the one <code>bosun coordinator project badge-token</code> \
             printed"
        },
        esc(&snippet),
    ) + &notifications(&targets);
    shell(&p.slug, "", &main).into_response()
}

/// The project's mail addresses and webhooks: what each asked for, how many deliveries
/// wait, the last one delivered and the last error with its time. No secret is shown, and
/// a webhook's query (which may carry the receiver's token) is left out.
fn notifications(targets: &[TargetRow]) -> String {
    let mut out = String::from("<h2>Notifications</h2>");
    if targets.is_empty() {
        out.push_str(
            "<p>None: <code>bosun coordinator project notify add</code> mails an address, \
             <code>project webhook add</code> calls a URL.</p>",
        );
        return out;
    }
    out.push_str(
        "<table class=\"notify-targets\"><thead><tr><th>kind</th><th>target</th><th>events</th>\
         <th>pending</th><th>last delivered</th><th>last error</th></tr></thead><tbody>",
    );
    let time = |t: Option<i64>| {
        t.map(bosun_protocol::time::iso_utc)
            .unwrap_or_else(|| "—".into())
    };
    for t in targets {
        let shown = match t.kind {
            TargetKind::Email => t.address.clone(),
            TargetKind::Webhook => shown_url(&t.address),
        };
        let error = match (&t.last_error, t.last_error_at) {
            (Some(e), Some(at)) => format!(
                "<time>{}</time> <span class=\"notify-error\">{}</span>",
                esc(&time(Some(at))),
                esc(e)
            ),
            _ => "—".to_owned(),
        };
        out.push_str(&format!(
            "<tr data-target=\"{}\"><td>{}</td><td>{}</td><td>{}</td><td class=\"notify-pending\">{}</td>\
             <td>{}</td><td>{error}</td></tr>",
            esc(&t.uuid),
            t.kind.as_str(),
            esc(&shown),
            esc(&t.events),
            t.pending,
            esc(&time(t.last_delivered_at)),
        ));
    }
    out.push_str("</tbody></table>");
    out
}

/// The README's Markdown: the default branch's badge linking to the pipelines.
pub fn markdown(public_url: &str, slug: &str, public: bool, token: &str) -> String {
    let base = public_url.trim_end_matches('/');
    let query = if public {
        String::new()
    } else {
        format!("?token={token}")
    };
    format!("[![build status]({base}/badge/{slug}.svg{query})]({base}/pipelines)")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_name_a_project_and_maybe_a_branch() {
        assert_eq!(split("acme/widget.svg"), Some(("acme/widget".into(), None)));
        assert_eq!(
            split("acme/widget/feature/x.svg"),
            Some(("acme/widget".into(), Some("feature/x".into())))
        );
        assert_eq!(split("acme/widget"), None);
        assert_eq!(split("acme.svg"), None);
        assert_eq!(split("acme/widget/.svg"), None);
        assert_eq!(split("/widget.svg"), None);
    }

    #[test]
    fn names_in_the_svg_are_escaped() {
        let s = svg(
            "a/b",
            "x\"><script>alert(1)</script>&",
            BadgeStatus::Failing,
            BadgeStyle::FlatSquare,
        );
        assert!(!s.contains("<script"), "{s}");
        assert!(s.contains("&lt;script&gt;"), "{s}");
        assert!(s.contains(">failing</text>"), "{s}");
        assert!(!s.contains("linearGradient"));
        assert!(
            svg("a/b", "m", BadgeStatus::Passing, BadgeStyle::Shield).contains("linearGradient")
        );
    }
}

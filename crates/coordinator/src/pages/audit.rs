//! The audit log for coordinator admins (`GET /admin/audit`, guarded by `Guard::Admin`):
//! newest first, a page at a time (`?before=ID`), or the whole log as JSON lines
//! (`?format=jsonl`), one `model::audit::json_line` a row.

use super::{esc, internal, shell};
use crate::model::audit::{json_line, AuditRow};
use crate::store::Backend;
use crate::AppState;
use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use std::fmt::Write as _;
use std::sync::Arc;

/// Rows a page shows.
const PAGE: u32 = 100;
/// Rows the export reads from the store at a time.
const EXPORT_PAGE: u32 = 500;

#[derive(Deserialize, Default)]
pub struct AuditQuery {
    #[serde(default)]
    before: Option<i64>,
    #[serde(default)]
    format: Option<String>,
}

fn no_store(mut r: Response) -> Response {
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// `GET /admin/audit`.
pub async fn page(State(state): State<Arc<AppState>>, Query(q): Query<AuditQuery>) -> Response {
    if q.format.as_deref() == Some("jsonl") {
        return no_store(export(state));
    }
    let before = q.before.filter(|b| *b > 0);
    let rows = match state
        .db(move |s: &dyn Backend| s.audit_log(before, PAGE))
        .await
    {
        Ok(r) => r,
        Err(e) => return internal(e),
    };
    let mut m = String::from(
        "<h1>Audit log</h1><p>Who did what, newest first. \
         <a href=\"/admin/audit?format=jsonl\" id=\"jsonl\">All of it as JSON lines</a>.</p>",
    );
    m.push_str(
        "<table id=\"audit\"><thead><tr><th>When (UTC)</th><th>Who</th><th>What</th>\
         <th>Project</th><th>On</th><th>How</th></tr></thead><tbody>",
    );
    for r in &rows {
        row(&mut m, r);
    }
    m.push_str("</tbody></table>");
    if rows.len() == PAGE as usize {
        if let Some(last) = rows.last() {
            let _ = write!(
                m,
                "<p><a href=\"/admin/audit?before={}\" id=\"older\">Older</a></p>",
                last.id
            );
        }
    }
    no_store(shell("Audit log · bosun", " data-page=\"audit\"", &m).into_response())
}

fn row(m: &mut String, r: &AuditRow) {
    let _ = write!(
        m,
        "<tr data-action=\"{a}\"><td>{}</td><td class=\"actor\">{}</td><td>{a}</td><td>{}</td>\
         <td>{}</td><td>{}</td></tr>",
        super::iso_utc(r.at),
        esc(&r.actor),
        esc(r.project.as_deref().unwrap_or("")),
        esc(r.target.as_deref().unwrap_or("")),
        esc(&r.detail),
        a = esc(&r.action),
    );
}

/// The whole log as JSON lines, newest first, read a page at a time as it is sent.
fn export(state: Arc<AppState>) -> Response {
    let pages = futures_util::stream::unfold(
        (state, None::<i64>, false),
        |(state, before, done)| async move {
            if done {
                return None;
            }
            let rows = match state
                .db(move |s: &dyn Backend| s.audit_log(before, EXPORT_PAGE))
                .await
            {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!("audit export: {e}");
                    return Some((
                        Err(std::io::Error::other(e.to_string())),
                        (state, None, true),
                    ));
                }
            };
            let last = rows.last()?.id;
            let mut text = String::new();
            for r in &rows {
                text.push_str(&json_line(r));
                text.push('\n');
            }
            let end = rows.len() < EXPORT_PAGE as usize;
            Some((Ok(text), (state, Some(last), end)))
        },
    );
    let mut r = Body::from_stream(pages).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/jsonl; charset=utf-8"),
    );
    r
}

//! A job's log beyond the page: an older part as numbered HTML lines (`GET
//! /jobs/{id}/log.html`, what "Load earlier output" inserts) and the whole log as a download
//! (`GET /jobs/{id}/log.txt`).

use super::super::store::Backend;
use super::super::AppState;
use super::{align, ansi, internal, stamper, FRAGMENT};
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use futures_util::stream;
use serde::Deserialize;
use std::sync::Arc;

#[derive(Deserialize)]
pub struct FragmentQuery {
    /// The section's start: the fragment never begins before it.
    #[serde(default)]
    start: u64,
    /// The fragment ends here (a line start: where the shown part began).
    end: u64,
    /// The line number of the line starting at `end`.
    line: u64,
}

/// `GET /jobs/{id}/log.html?start=S&end=E&line=N`: up to 1 MiB of the log before `E` (not
/// before `S`, from a line start) as numbered HTML lines, in a `<div data-start data-line>`
/// the script puts in front of what the page shows.
pub async fn log_fragment(
    State(state): State<Arc<AppState>>,
    Path(raw): Path<String>,
    Query(q): Query<FragmentQuery>,
) -> Response {
    let Some(id) = super::super::store::parse_job_id(&raw) else {
        return (StatusCode::NOT_FOUND, "no such job\n").into_response();
    };
    let from = q.end.saturating_sub(FRAGMENT).max(q.start);
    if from >= q.end {
        return (StatusCode::BAD_REQUEST, "empty range\n").into_response();
    }
    let logs = state.logs.clone();
    let read = state
        .db(move |s: &dyn Backend| {
            Ok(logs
                .log_piece(s, id, from, q.end - from)?
                .map(|(b, _)| b)
                .zip(Some(s.log_times(id)?)))
        })
        .await;
    let (bytes, times) = match read {
        Ok(Some(x)) => x,
        Ok(None) => return (StatusCode::NOT_FOUND, "no such job\n").into_response(),
        Err(e) => return internal(e),
    };
    let (from, bytes) = align(q.start, from, bytes);
    let lines = bytes.iter().filter(|&&b| b == b'\n').count() as u64;
    let first = q.line.saturating_sub(lines).max(1);
    let text = String::from_utf8_lossy(&bytes);
    let (html, _) = ansi::render_lines_stamped(
        &text,
        first,
        &mut ansi::Style::default(),
        &mut stamper(&times, from, false),
    );
    Html(format!(
        "<div class=\"part\" data-start=\"{from}\" data-line=\"{first}\">{html}</div>"
    ))
    .into_response()
}

/// `GET /jobs/{id}/log.txt`: the whole log as a download, streamed in 1 MiB pieces.
pub async fn raw_log(State(state): State<Arc<AppState>>, Path(raw): Path<String>) -> Response {
    let Some(id) = super::super::store::parse_job_id(&raw) else {
        return (StatusCode::NOT_FOUND, "no such job\n").into_response();
    };
    let len = match state.db(move |s: &dyn Backend| s.job(id)).await {
        Ok(Some(j)) => j.log_bytes,
        Ok(None) => return (StatusCode::NOT_FOUND, "no such job\n").into_response(),
        Err(e) => return internal(e),
    };
    let body = stream::unfold((state, 0u64), move |(state, off)| async move {
        if off >= len {
            return None;
        }
        let want = (len - off).min(FRAGMENT);
        let logs = state.logs.clone();
        match state
            .db(move |s: &dyn Backend| logs.log_piece(s, id, off, want))
            .await
        {
            Ok(Some((b, _))) if !b.is_empty() => {
                let next = off + b.len() as u64;
                Some((Ok::<_, std::io::Error>(b), (state, next)))
            }
            Ok(_) => None,
            Err(e) => Some((Err(std::io::Error::other(e.to_string())), (state, len))),
        }
    });
    (
        [
            (header::CONTENT_TYPE, "text/plain; charset=utf-8".to_owned()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"job-{id}.log\""),
            ),
            (header::CONTENT_LENGTH, len.to_string()),
        ],
        Body::from_stream(body),
    )
        .into_response()
}

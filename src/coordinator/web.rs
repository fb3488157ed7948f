//! Server-rendered pages: `GET /` (jobs), `GET /jobs/{id}` (one job, its log in step sections)
//! and `GET /jobs/{id}/stream` (server-sent events following a running job). No framework and
//! no external assets: the pages must work where nothing can be fetched.

use super::store::{JobRow, Store};
use super::{fmt_duration, AppState, CoordError};
use crate::protocol::JobEvent;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use futures_util::stream::{self, Stream, StreamExt};
use serde::Deserialize;
use std::convert::Infallible;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/jobs/{id}", get(job_page))
        .route("/jobs/{id}/stream", get(job_stream))
        .route("/jobs/{id}/log", get(log_part))
        .layer(axum::middleware::map_response(security_headers))
        .with_state(state)
}

/// Escape text for HTML element content and quoted attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = "body{font-family:sans-serif;margin:1.5em}table{border-collapse:collapse}\
td,th{padding:.2em .8em;border-bottom:1px solid #ddd;text-align:left}\
pre{background:#111;color:#eee;padding:.5em;white-space:pre-wrap;margin:0 0 1em}\
.success{color:#070}.failed,.infrastructure_fail,.timedout{color:#b00}.canceled{color:#777}\
.running{color:#05a}";

/// The job page's live follower (see [`job_page`]).
const FOLLOW_JS: &str = r#"
const es = new EventSource(document.currentScript.dataset.stream);
const logDiv = document.getElementById("log");
let pre = [...document.querySelectorAll("pre.log")].pop();
es.addEventListener("log", e => pre.append(JSON.parse(e.data).text));
es.addEventListener("step", e => {
  const v = JSON.parse(e.data);
  if (v.type !== "step_started") return;
  const s = document.createElement("section"), h = document.createElement("h3");
  h.textContent = v.name; pre = document.createElement("pre"); pre.className = "log";
  s.append(h, pre); logDiv.append(s);
});
es.addEventListener("status", e => {
  const v = JSON.parse(e.data), st = document.getElementById("status");
  st.textContent = v.status; st.className = "status " + v.status;
  document.getElementById("error").textContent = v.error || "";
});
es.addEventListener("end", () => es.close());
"#;

/// `'sha256-…'` of an inline script or style, for the CSP.
fn csp_hash(text: &str) -> String {
    use base64::Engine as _;
    use sha2::{Digest, Sha256};
    format!(
        "'sha256-{}'",
        base64::engine::general_purpose::STANDARD.encode(Sha256::digest(text.as_bytes()))
    )
}

/// The pages' Content-Security-Policy: nothing but our own inline style and script (by
/// hash) and the live stream from this origin; never framed, no forms, no base URL.
fn content_security_policy() -> &'static str {
    static CSP: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    CSP.get_or_init(|| {
        format!(
            "default-src 'none'; script-src {}; style-src {}; connect-src 'self'; \
             img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
            csp_hash(FOLLOW_JS),
            csp_hash(STYLE)
        )
    })
}

/// Security headers on every answer of the web router: CSP, no framing, no MIME sniffing,
/// no referrer.
pub async fn security_headers(mut resp: Response) -> Response {
    use axum::http::header::{self, HeaderValue};
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(content_security_policy()) {
        h.insert(header::CONTENT_SECURITY_POLICY, v);
    }
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    resp
}

/// A JSON error answer (`{"error": …}`, as docs/protocol.md documents for every error).
fn json_error(status: StatusCode, msg: impl Into<String>) -> Response {
    (
        status,
        axum::Json(crate::protocol::ApiError { error: msg.into() }),
    )
        .into_response()
}

fn page(title: &str, body: &str) -> Html<String> {
    Html(format!(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{}</title><style>{STYLE}</style></head>\n<body>{body}</body></html>\n",
        escape(title)
    ))
}

fn internal(e: CoordError) -> Response {
    tracing::error!("{e}");
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        page("error", &format!("<p>{}</p>", escape(&e.to_string()))),
    )
        .into_response()
}

/// The pull request (linked: the store only accepts http(s) addresses) and a time limit
/// other than the default; nothing for a plain job.
fn pr_and_timeout_rows(j: &JobRow) -> String {
    let mut rows = String::new();
    if let (Some(n), Some(url)) = (j.pr_number, &j.pr_url) {
        let _ = write!(
            rows,
            "<tr><th>pull request</th><td><a href=\"{u}\">#{n}</a></td></tr>",
            u = escape(url)
        );
    }
    if let Some(secs) = j.timeout_secs {
        let _ = write!(
            rows,
            "<tr><th>timeout</th><td>{}</td></tr>",
            escape(&fmt_duration(Duration::from_secs(secs)))
        );
    }
    rows
}

fn duration(j: &JobRow) -> String {
    j.duration().map(fmt_duration).unwrap_or_default()
}

async fn index(State(state): State<Arc<AppState>>) -> Response {
    let jobs = match state.db(|s| s.list_jobs(200)).await {
        Ok(j) => j,
        Err(e) => return internal(e),
    };
    let mut body = String::from(
        "<h1>Jobs</h1><table id=\"jobs\"><tr><th>id</th><th>project</th><th>ref</th><th>job</th><th>status</th><th>duration</th></tr>\n",
    );
    for j in &jobs {
        let _ = writeln!(
            body,
            "<tr><td><a href=\"/jobs/{id}\">{id}</a></td><td>{}</td><td>{}</td><td>{}</td><td class=\"status {s}\">{s}</td><td>{}</td></tr>",
            escape(&j.project),
            escape(&j.git_ref),
            escape(&j.job_name),
            escape(&duration(j)),
            id = j.id,
            s = j.status,
        );
    }
    body.push_str("</table>");
    // Refreshing the list every few seconds needs no script.
    let mut html = page("bosun jobs", &body).0;
    html = html.replacen(
        "<head>",
        "<head><meta http-equiv=\"refresh\" content=\"5\">",
        1,
    );
    Html(html).into_response()
}

/// The job page shows at most this much of the log: its tail.
const PAGE_TAIL: u64 = 256 * 1024;
/// A live stream reads the log in pieces of at most this much.
const STREAM_PIECE: u64 = 256 * 1024;
/// `/jobs/{id}/log?offset=N` answers at most this much.
const LOG_PART: u64 = 1024 * 1024;

#[derive(Deserialize)]
struct PartQuery {
    #[serde(default)]
    offset: u64,
}

/// An older part of a job's log as plain text, at most [`LOG_PART`] bytes from `offset`.
async fn log_part(
    State(state): State<Arc<AppState>>,
    Path(raw): Path<String>,
    Query(q): Query<PartQuery>,
) -> Response {
    let Some(id) = super::store::parse_job_id(&raw) else {
        return json_error(StatusCode::NOT_FOUND, format!("no job {raw}"));
    };
    match state
        .db(move |s: &Store| s.log_piece(id, q.offset, LOG_PART))
        .await
    {
        Ok(Some((bytes, _))) => (
            [(
                axum::http::header::CONTENT_TYPE,
                "text/plain; charset=utf-8",
            )],
            bytes,
        )
            .into_response(),
        Ok(None) => json_error(StatusCode::NOT_FOUND, format!("no job {id}")),
        Err(e) => {
            tracing::error!("{e}");
            json_error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
        }
    }
}

/// Split the log into sections at each step's start offset: (title, status, text).
#[cfg(test)]
fn sections(log: &[u8], events: &[(u64, JobEvent)]) -> Vec<(String, String, String)> {
    sections_from(log, 0, events)
}

/// [`sections`] of a log's tail `log`, which starts at `base`: sections that end before it
/// are left out, one that starts before it shows its part in the tail.
fn sections_from(
    log: &[u8],
    base: u64,
    events: &[(u64, JobEvent)],
) -> Vec<(String, String, String)> {
    let events: Vec<(u64, JobEvent)> = events
        .iter()
        .map(|(s, e)| {
            let mut e = e.clone();
            if let JobEvent::StepStarted { log_offset, .. } = &mut e {
                *log_offset = log_offset.saturating_sub(base);
            }
            (*s, e)
        })
        .collect();
    let mut out = sections_rel(log, &events);
    if base > 0 {
        // Sections squeezed to nothing at the front lie wholly before the tail.
        while out.len() > 1 && out[0].2.is_empty() {
            out.remove(0);
        }
    }
    out
}

fn sections_rel(log: &[u8], events: &[(u64, JobEvent)]) -> Vec<(String, String, String)> {
    let mut starts: Vec<(u64, u32, String)> = Vec::new();
    let mut status: std::collections::HashMap<u32, String> = Default::default();
    for (_, ev) in events {
        match ev {
            JobEvent::StepStarted {
                step,
                name,
                log_offset,
            } => starts.push((*log_offset, *step, name.clone())),
            JobEvent::StepFinished {
                step,
                status: s,
                duration_ms,
                ..
            } => {
                status.insert(
                    *step,
                    format!(
                        "{s} in {}",
                        fmt_duration(Duration::from_millis(*duration_ms))
                    ),
                );
            }
        }
    }
    let len = log.len() as u64;
    let mut out = Vec::new();
    let first = starts.first().map(|s| s.0).unwrap_or(len).min(len);
    if first > 0 || starts.is_empty() {
        out.push((
            "Preparing".to_string(),
            String::new(),
            String::from_utf8_lossy(&log[..first as usize]).into_owned(),
        ));
    }
    for (i, (start, step, name)) in starts.iter().enumerate() {
        let end = starts.get(i + 1).map(|s| s.0).unwrap_or(len).min(len);
        let start = (*start).min(end);
        out.push((
            name.clone(),
            status.get(step).cloned().unwrap_or_default(),
            String::from_utf8_lossy(&log[start as usize..end as usize]).into_owned(),
        ));
    }
    out
}

async fn job_page(State(state): State<Arc<AppState>>, Path(raw): Path<String>) -> Response {
    let Some(id) = super::store::parse_job_id(&raw) else {
        return (
            StatusCode::NOT_FOUND,
            page("not found", "<p>No such job.</p>"),
        )
            .into_response();
    };
    let loaded = state
        .db(move |s: &Store| {
            let Some(job) = s.job(id)? else {
                return Ok(None);
            };
            // Read events before the log: every event's offset then falls within the log.
            let events = s.events_from(id, 0)?;
            let base = job.log_bytes.saturating_sub(PAGE_TAIL);
            let log = s
                .log_piece(id, base, PAGE_TAIL)?
                .map(|(b, _)| b)
                .unwrap_or_default();
            Ok(Some((job, events, (base, log))))
        })
        .await;
    let (job, events, (base, log)) = match loaded {
        Ok(Some(x)) => x,
        Ok(None) => {
            return (
                StatusCode::NOT_FOUND,
                page("not found", "<p>No such job.</p>"),
            )
                .into_response()
        }
        Err(e) => return internal(e),
    };
    let mut body = format!(
        "<p><a href=\"/\">all jobs</a></p><h1>Job {id}: {}</h1>\n<table>\
         <tr><th>project</th><td>{}</td></tr><tr><th>ref</th><td>{}</td></tr>\
         <tr><th>commit</th><td>{}</td></tr><tr><th>pipeline</th><td>{}</td></tr>{}\
         <tr><th>status</th><td id=\"status\" class=\"status {s}\">{s}</td></tr>\
         <tr><th>attempt</th><td>{} of {}</td></tr><tr><th>agent</th><td>{}</td></tr>\
         <tr><th>duration</th><td>{}</td></tr><tr><th>error</th><td id=\"error\">{}</td></tr></table>\n<div id=\"log\">",
        escape(&job.job_name),
        escape(&job.project),
        escape(&job.git_ref),
        escape(&job.commit_sha),
        job.pipeline_number,
        pr_and_timeout_rows(&job),
        job.attempts,
        job.max_attempts,
        escape(job.agent_id.as_deref().unwrap_or("-")),
        escape(&duration(&job)),
        escape(job.error.as_deref().unwrap_or("")),
        s = job.status,
    );
    if base > 0 {
        let _ = write!(
            body,
            "<p class=\"older\">The last {} KiB of {} bytes of log; \
             <a href=\"/jobs/{id}/log?offset={}\">earlier parts</a> (1 MiB each).</p>",
            PAGE_TAIL / 1024,
            base + log.len() as u64,
            base.saturating_sub(LOG_PART)
        );
    }
    for (title, status, text) in sections_from(&log, base, &events) {
        let _ = write!(
            body,
            "<section><h3>{} <small>{}</small></h3><pre class=\"log\">{}</pre></section>",
            escape(&title),
            escape(&status),
            escape(&text)
        );
    }
    body.push_str("</div>\n");
    if !job.is_final() {
        // Follow the job: append new log text and steps as they arrive. textContent/append
        // of strings never interprets HTML, so the log cannot inject markup.
        // The script is a constant (allowed by its hash in the CSP); the page's values ride
        // in an attribute.
        let _ = write!(
            body,
            "<script data-stream=\"/jobs/{id}/stream?offset={off}&amp;seq={seq}\">{FOLLOW_JS}</script>",
            off = base + log.len() as u64,
            seq = events.len(),
        );
    }
    page(&format!("job {id}"), &body).into_response()
}

#[derive(Deserialize)]
struct StreamQuery {
    #[serde(default)]
    offset: u64,
    #[serde(default)]
    seq: u64,
}

/// The longest prefix of `b` that is whole UTF-8 (a character split across chunks waits for
/// its tail), unless `all` (the job ended: send everything, lossily).
fn text_prefix(b: &[u8], all: bool) -> usize {
    match std::str::from_utf8(b) {
        Ok(_) => b.len(),
        Err(e) if e.error_len().is_none() && !all => e.valid_up_to(),
        Err(_) => b.len(),
    }
}

struct Follow {
    state: Arc<AppState>,
    id: i64,
    offset: u64,
    seq: u64,
    status: Option<crate::protocol::JobState>,
    done: bool,
    changed: tokio::sync::watch::Receiver<super::JobProgress>,
    /// The job's row as last read, and the notifier's `gen` then: while only the log and
    /// events grow (appends say how far), the row is not read again.
    row: Option<JobRow>,
    gen: u64,
    /// Read the row again (a second passed: another process may have changed the job).
    recheck: bool,
    /// When the last batch went out (see [`FOLLOW_INTERVAL`]).
    last_sent: Option<tokio::time::Instant>,
}

/// A follower sends at most one batch per this: appends in between coalesce into it, so a
/// follower costs the same whether the agent appends ten times a second or a thousand.
const FOLLOW_INTERVAL: Duration = Duration::from_millis(100);

fn log_event(text: &[u8], end: u64, seq: u64) -> Event {
    Event::default()
        .event("log")
        .id(format!("{end}:{seq}"))
        .json_data(serde_json::json!({ "text": String::from_utf8_lossy(text) }))
        .unwrap_or_default()
}

/// One round: everything new since the last, or `None` once the job ended and all was sent.
async fn next_batch(mut f: Follow) -> Option<(Vec<Event>, Follow)> {
    if f.done {
        return None;
    }
    loop {
        if let Some(t) = f.last_sent {
            tokio::select! {
                _ = tokio::time::sleep_until(t + FOLLOW_INTERVAL) => {}
                _ = f.state.shutdown.cancelled() => return None,
            }
        }
        let progress = *f.changed.borrow_and_update();
        let (id, offset, seq, status) = (f.id, f.offset, f.seq, f.status);
        let cached = match f.row.take() {
            Some(mut row) if progress.gen == f.gen && !f.recheck => {
                row.log_bytes = row.log_bytes.max(progress.log_bytes);
                row.event_count = row.event_count.max(progress.event_count);
                Some(row)
            }
            _ => None,
        };
        f.gen = progress.gen;
        f.recheck = false;
        // Read-only connections (never the writer's), and only what changed: an append
        // costs a follower a read of the new bytes, no query.
        let read = f
            .state
            .db(move |s| {
                // The job first: if it was final then, the log and events read next are whole.
                let job = match cached {
                    Some(row) => row,
                    None => match s.job(id)? {
                        Some(row) => row,
                        None => return Ok(None),
                    },
                };
                let fresh = job.log_bytes > offset
                    || job.event_count > seq
                    || status != Some(job.status)
                    || job.is_final();
                if !fresh {
                    return Ok(Some((job, Vec::new(), None)));
                }
                let events = if job.event_count > seq {
                    s.events_from(id, seq)?
                } else {
                    Vec::new()
                };
                let end = job.log_bytes;
                let log = s.read_log(id, offset, end.min(offset.saturating_add(STREAM_PIECE)))?;
                Ok(Some((job, events, Some((log, end)))))
            })
            .await;
        let (job, events, log) = match read {
            Ok(Some(x)) => x,
            _ => return None,
        };
        let Some((log, end)) = log else {
            // Nothing new: wait below.
            f.row = Some(job);
            if !wait_for_change(&mut f).await {
                return None;
            }
            continue;
        };
        // Whole only when the job is final and this piece reaches the end of its log.
        let last_piece = f.offset + log.len() as u64 >= end;
        let fin = job.is_final() && last_piece;
        let mut out = Vec::new();
        let take = text_prefix(&log, fin);
        let mut sent = 0usize;
        for (s, ev) in &events {
            let at = match ev {
                JobEvent::StepStarted { log_offset, .. }
                | JobEvent::StepFinished { log_offset, .. } => *log_offset,
            };
            // An event past the log read so far waits for the piece that reaches it.
            if at > f.offset + take as u64 {
                break;
            }
            // Log text before a step's start goes out first, so it lands in the prior section.
            if let JobEvent::StepStarted { log_offset, .. } = ev {
                let upto = log_offset.saturating_sub(f.offset) as usize;
                if upto > sent && upto <= take {
                    out.push(log_event(&log[sent..upto], f.offset + upto as u64, *s));
                    sent = upto;
                }
            }
            f.seq = s + 1;
            if let Ok(e) = Event::default()
                .event("step")
                .id(format!("{}:{}", f.offset + sent as u64, f.seq))
                .json_data(ev)
            {
                out.push(e);
            }
        }
        if take > sent {
            out.push(log_event(&log[sent..take], f.offset + take as u64, f.seq));
        }
        f.offset += take as u64;
        if f.status != Some(job.status) {
            f.status = Some(job.status);
            if let Ok(e) = Event::default()
                .event("status")
                .json_data(serde_json::json!({ "status": job.status, "error": job.error }))
            {
                out.push(e);
            }
        }
        if fin && f.seq >= job.event_count {
            out.push(Event::default().event("end").data("end"));
            f.done = true;
        }
        f.row = Some(job);
        if !out.is_empty() {
            f.last_sent = Some(tokio::time::Instant::now());
            return Some((out, f));
        }
        if !wait_for_change(&mut f).await {
            return None;
        }
    }
}

/// Wait until the server changes the followed job, or a second passes (changes made by
/// another process, e.g. the CLI canceling a queued job, are not notified) — never a busy
/// loop. `false`: the server is shutting down, end the stream (the browser's EventSource
/// reconnects later).
async fn wait_for_change(f: &mut Follow) -> bool {
    tokio::select! {
        c = f.changed.changed() => c.is_ok(),
        _ = tokio::time::sleep(Duration::from_secs(1)) => {
            f.recheck = true;
            true
        }
        _ = f.state.shutdown.cancelled() => false,
    }
}

async fn job_stream(
    State(state): State<Arc<AppState>>,
    Path(raw): Path<String>,
    Query(q): Query<StreamQuery>,
    headers: HeaderMap,
) -> Response {
    let Some(id) = super::store::parse_job_id(&raw) else {
        return json_error(StatusCode::NOT_FOUND, format!("no job {raw}"));
    };
    match state.db(move |s| s.job(id)).await {
        Ok(Some(_)) => {}
        Ok(None) => return json_error(StatusCode::NOT_FOUND, format!("no job {id}")),
        Err(e) => {
            tracing::error!("{e}");
            return json_error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string());
        }
    }
    // A reconnecting EventSource resumes from the id of the last event it got ("offset:seq").
    let (offset, seq) = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(':'))
        .and_then(|(o, s)| Some((o.parse().ok()?, s.parse().ok()?)))
        .unwrap_or((q.offset, q.seq));
    tracing::info!(job = id, offset, seq, "live stream opened");
    let changed = state.jobs.subscribe(id);
    let follow = Follow {
        state,
        id,
        offset,
        seq,
        status: None,
        done: false,
        changed,
        row: None,
        gen: 0,
        recheck: false,
        last_sent: None,
    };
    let s: std::pin::Pin<Box<dyn Stream<Item = Result<Event, Infallible>> + Send>> = Box::pin(
        stream::unfold(follow, next_batch)
            .flat_map(|batch| stream::iter(batch.into_iter().map(Ok))),
    );
    Sse::new(s)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup() {
        assert_eq!(
            escape("<script>\"a\" & 'b'</script>"),
            "&lt;script&gt;&quot;a&quot; &amp; &#39;b&#39;&lt;/script&gt;"
        );
    }

    #[test]
    fn sections_split_at_step_offsets() {
        let log = b"prep\nstep one\nstep two\n";
        let ev = |step, name: &str, off| JobEvent::StepStarted {
            step,
            name: name.into(),
            log_offset: off,
        };
        let s = sections(log, &[(0, ev(1, "one", 5)), (1, ev(2, "two", 14))]);
        let texts: Vec<&str> = s.iter().map(|x| x.2.as_str()).collect();
        assert_eq!(texts, ["prep\n", "step one\n", "step two\n"]);
    }

    #[test]
    fn split_characters_wait_for_their_tail() {
        let b = "é".as_bytes();
        assert_eq!(text_prefix(&b[..1], false), 0);
        assert_eq!(text_prefix(&b[..1], true), 1);
        assert_eq!(text_prefix(b, false), 2);
    }
}

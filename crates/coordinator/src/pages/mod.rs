//! The coordinator's HTML pages: the job list (`GET /`), a job (`GET /jobs/{id}`), an older
//! part of a job's log as HTML lines (`GET /jobs/{id}/log.html`), the raw log download
//! (`GET /jobs/{id}/log.txt`) and the pages' two assets (`GET /assets/…`).
//!
//! Everything is server-rendered and readable without JavaScript; the one script
//! (`assets/bosun.js`) adds search, live updates, loading older output and scrolling to the
//! first failure. No inline script or style anywhere (a CSP may forbid both): the script and
//! the stylesheet are files embedded in the binary, served gzip-compressed under names that
//! carry their digest, cached for a year. Job output is attacker-written: it goes through
//! [`ansi`], which escapes it and turns colours into classes.

pub mod ansi;
pub mod audit;
pub mod badge;
pub mod live;
mod log;
pub mod people;
pub mod pipelines;
pub mod results;
pub mod settings;
pub mod ssh;
pub mod ssh_keys;
pub mod tokens;

pub use log::{log_fragment, raw_log};

use super::store::{is_commit_id, Backend, JobFilter, JobRow};
use super::{fmt_duration, AppState, CoordError};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use bosun_protocol::{JobEvent, JobState, StepStatus};
use serde::Deserialize;
use std::fmt::Write as _;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use ansi::escape_into;

/// The job page renders at most this much of the log from its end (spread over the last steps).
pub const PAGE_TAIL: u64 = 256 * 1024;
/// …and a failed step's own tail of up to this much, wherever it lies in the log.
const FAILED_TAIL: u64 = 64 * 1024;
/// At most this many failed steps get their own tail.
const FAILED_STEPS_SHOWN: usize = 8;
/// `log.html` renders at most this much per request.
const FRAGMENT: u64 = 1024 * 1024;
/// Jobs per page of the job list.
const LIST_PAGE: u32 = 50;

fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    escape_into(&mut out, s);
    out
}

// ---- assets ----

struct Asset {
    name: String,
    content_type: &'static str,
    raw: &'static [u8],
    gzip: Vec<u8>,
    etag: String,
}

fn make_asset(stem: &str, ext: &str, content_type: &'static str, raw: &'static [u8]) -> Asset {
    use std::io::Write as _;
    let digest = super::sha256_hex(raw);
    let short = &digest[..12];
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    // Writing to a Vec cannot fail; an empty gzip body only costs the compression.
    let gzip = enc
        .write_all(raw)
        .and_then(|()| enc.finish())
        .unwrap_or_default();
    Asset {
        name: format!("{stem}.{short}.{ext}"),
        content_type,
        raw,
        gzip,
        etag: format!("\"{short}\""),
    }
}

fn assets() -> &'static [Asset; 2] {
    static ASSETS: OnceLock<[Asset; 2]> = OnceLock::new();
    ASSETS.get_or_init(|| {
        [
            make_asset(
                "bosun",
                "css",
                "text/css; charset=utf-8",
                include_bytes!("assets/bosun.css"),
            ),
            make_asset(
                "bosun",
                "js",
                "text/javascript; charset=utf-8",
                include_bytes!("assets/bosun.js"),
            ),
        ]
    })
}

/// `GET /assets/{name}`: the stylesheet or the script, by the digest-named file only.
pub async fn asset(Path(name): Path<String>, headers: HeaderMap) -> Response {
    let Some(a) = assets().iter().find(|a| a.name == name) else {
        return (StatusCode::NOT_FOUND, "no such asset\n").into_response();
    };
    let mut h = HeaderMap::new();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(a.content_type),
    );
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=31536000, immutable"),
    );
    h.insert(header::VARY, HeaderValue::from_static("Accept-Encoding"));
    if let Ok(v) = HeaderValue::from_str(&a.etag) {
        h.insert(header::ETAG, v);
    }
    let matches = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == a.etag));
    if matches {
        return (StatusCode::NOT_MODIFIED, h).into_response();
    }
    let gzip_ok = headers
        .get(header::ACCEPT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(',').any(|t| {
                let mut parts = t.split(';');
                parts.next().map(str::trim) == Some("gzip")
                    && !parts.any(|q| q.trim().replace(' ', "") == "q=0")
            })
        });
    if gzip_ok && !a.gzip.is_empty() {
        h.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        (h, a.gzip.clone()).into_response()
    } else {
        (h, a.raw).into_response()
    }
}

// ---- the page shell ----

fn shell(title: &str, body_attrs: &str, main: &str) -> Html<String> {
    let [css, js] = assets();
    Html(format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <meta name=\"color-scheme\" content=\"light dark\">\
         <title>{}</title><link rel=\"stylesheet\" href=\"/assets/{}\">\
         <script src=\"/assets/{}\" defer></script></head>\n\
         <body{body_attrs}><a class=\"skip\" href=\"#main\">Skip to content</a>\
         <header class=\"top\"><a href=\"/\" class=\"brand\">bosun</a> \
         <nav aria-label=\"Site\"><a href=\"/\">Jobs</a> <a href=\"/me\">You</a></nav></header>\n\
         <main id=\"main\">{main}</main></body></html>\n",
        esc(title),
        css.name,
        js.name
    ))
}

#[derive(Deserialize)]
pub struct CsrfForm {
    #[serde(default)]
    pub(crate) csrf: Option<String>,
}

pub(crate) const FOREIGN_FORM: &str =
    "This form did not come from this site (its CSRF token is missing or \
     wrong): reload the page and try again.";

/// The viewer behind a form, its CSRF token checked; else the answer to give.
pub(crate) async fn form_viewer(
    state: &AppState,
    headers: &HeaderMap,
    csrf: Option<&str>,
) -> Result<crate::people::Viewer, Response> {
    let viewer = match crate::people::viewer(state, headers).await {
        Ok(Some(v)) => v,
        Ok(None) => return Err(error_page(StatusCode::UNAUTHORIZED, "Log in first.")),
        Err(e) => return Err(internal(e)),
    };
    if !crate::people::csrf_ok(&viewer, csrf) {
        return Err(error_page(StatusCode::FORBIDDEN, FOREIGN_FORM));
    }
    Ok(viewer)
}

fn error_page(status: StatusCode, text: &str) -> Response {
    (
        status,
        shell("bosun", "", &format!("<h1>{}</h1>", esc(text))),
    )
        .into_response()
}

/// A 404 that says nothing of what exists (a private project's pages, to whoever may not
/// read them).
pub fn not_found() -> Response {
    error_page(StatusCode::NOT_FOUND, "Not found.")
}

/// A 403 saying why (to someone who may read what they asked to change).
pub fn forbidden(text: &str) -> Response {
    error_page(StatusCode::FORBIDDEN, text)
}

fn internal(e: CoordError) -> Response {
    tracing::error!("{e}");
    error_page(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string())
}

// ---- pieces ----

/// A status badge: an icon and the status word (colour is never the only signal).
fn badge(word: &str) -> String {
    let icon = match word {
        "success" => "✓",
        "failed" => "✗",
        "timedout" => "⏱",
        "canceled" => "⊘",
        "infrastructure_fail" => "⚠",
        "skipped" => "↷",
        "stopped" => "■",
        "running" => "●",
        "queued" => "◌",
        _ => "?",
    };
    format!(
        "<span class=\"badge st-{w}\"><span aria-hidden=\"true\">{icon}</span> {w}</span>",
        w = esc(word)
    )
}

pub use bosun_protocol::time::iso_utc;

/// Milliseconds since the epoch as `09:05:03` (UTC): a log line's time.
pub fn clock(ms: i64) -> String {
    iso_utc(ms)[11..19].to_owned()
}

/// `3 min ago` and the like.
pub fn relative(ms: i64, now: i64) -> String {
    let s = (now - ms).max(0) / 1000;
    match s {
        0..=44 => "just now".to_owned(),
        45..=5399 => format!("{} min ago", (s + 30) / 60),
        5400..=129_599 => format!("{} h ago", (s + 1800) / 3600),
        _ => format!("{} d ago", (s + 43_200) / 86_400),
    }
}

/// `<time>` with the relative text, the exact time in its title (hover) and attribute.
fn time_el(ms: Option<i64>, now: i64) -> String {
    match ms {
        Some(ms) => {
            let iso = iso_utc(ms);
            format!(
                "<time datetime=\"{iso}\" title=\"{}\">{}</time>",
                iso.replace('T', " ").replace('Z', " UTC"),
                relative(ms, now)
            )
        }
        None => "<span class=\"none\">–</span>".to_owned(),
    }
}

/// The commit a job built: the checked-out SHA once the agent reported it, else the queued
/// commit if it is one; linked to Bitbucket when the project lives on bitbucket.org.
fn commit_el(j: &JobRow, full: bool) -> String {
    let sha = j
        .resolved_sha
        .as_deref()
        .or_else(|| is_commit_id(&j.commit_sha).then_some(j.commit_sha.as_str()));
    let Some(sha) = sha else {
        return format!(
            "<span class=\"none\" title=\"not resolved yet\">{}</span>",
            esc(&j.commit_sha)
        );
    };
    let text = if full { sha } else { &sha[..12.min(sha.len())] };
    let code = format!("<code title=\"{sha}\">{text}</code>");
    match bitbucket_repo(&j.clone_url) {
        Some(repo) => format!(
            "<a href=\"https://bitbucket.org/{}/commits/{sha}\">{code}</a>",
            esc(&repo)
        ),
        None => code,
    }
}

/// `workspace/repo` of a bitbucket.org clone URL (ssh or https), else `None`.
fn bitbucket_repo(url: &str) -> Option<String> {
    let rest = url
        .strip_prefix("git@bitbucket.org:")
        .or_else(|| url.strip_prefix("ssh://git@bitbucket.org/"))
        .or_else(|| url.strip_prefix("https://bitbucket.org/"))
        .or_else(|| {
            url.strip_prefix("https://")
                .and_then(|u| u.split_once("@bitbucket.org/"))
                .map(|(_, r)| r)
        })?;
    let repo = rest.trim_end_matches('/').trim_end_matches(".git");
    let ok = repo.split('/').count() == 2
        && repo
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./".contains(&b));
    ok.then(|| repo.to_owned())
}

/// `branch main` / `tag v1`.
fn ref_el(git_ref: &str) -> String {
    match git_ref.strip_prefix("refs/tags/") {
        Some(t) => format!("<span class=\"ref\">tag</span> {}", esc(t)),
        None => format!(
            "<span class=\"ref\">branch</span> {}",
            esc(git_ref.strip_prefix("refs/heads/").unwrap_or(git_ref))
        ),
    }
}

fn duration_text(j: &JobRow) -> String {
    j.duration().map(fmt_duration).unwrap_or_default()
}

// ---- the job list ----

#[derive(Deserialize, Default)]
pub struct ListQuery {
    #[serde(default)]
    project: Option<String>,
    #[serde(default)]
    branch: Option<String>,
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    before: Option<String>,
}

fn nonempty(s: &Option<String>) -> Option<String> {
    s.as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
}

fn job_list_row(j: &JobRow, now: i64) -> String {
    let word = j.status.as_str();
    format!(
        "<tr data-status=\"{word}\"><td><a href=\"/jobs/{id}\">#{id}</a></td><td>{}</td>\
         <td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>\n",
        esc(&j.project),
        ref_el(&j.git_ref),
        commit_el(j, false),
        esc(&j.job_name),
        badge(word),
        time_el(j.started.or(Some(j.created)), now),
        esc(&duration_text(j)),
        esc(j
            .agent_name
            .as_deref()
            .or(j.agent_id.as_deref())
            .unwrap_or("–")),
        id = j.id,
    )
}

/// `GET /`: jobs newest first, filtered and paged by query parameters (a plain GET form).
pub async fn index(
    State(state): State<Arc<AppState>>,
    Query(q): Query<ListQuery>,
    axum::Extension(readable): axum::Extension<crate::people::Readable>,
) -> Response {
    let filter = JobFilter {
        projects: readable.0.clone(),
        project: nonempty(&q.project),
        branch: nonempty(&q.branch),
        status: nonempty(&q.status).and_then(|s| s.parse::<JobState>().ok()),
        before: nonempty(&q.before).and_then(|s| s.parse().ok()),
    };
    let f = filter.clone();
    let loaded = state
        .db(move |s: &dyn Backend| {
            Ok((s.list_jobs_filtered(&f, LIST_PAGE + 1)?, s.project_slugs()?))
        })
        .await;
    let (mut jobs, mut projects) = match loaded {
        Ok(x) => x,
        Err(e) => return internal(e),
    };
    projects.retain(|p| readable.allows(p));
    let more = jobs.len() > LIST_PAGE as usize;
    jobs.truncate(LIST_PAGE as usize);
    let now = super::store::now_ms();
    let mut m = String::from("<h1>Jobs</h1>\n<form class=\"filters\" method=\"get\" action=\"/\">");
    m.push_str("<label>Project <select name=\"project\"><option value=\"\">all</option>");
    for p in &projects {
        let sel = if filter.project.as_deref() == Some(p.as_str()) {
            " selected"
        } else {
            ""
        };
        let _ = write!(m, "<option{sel}>{}</option>", esc(p));
    }
    let _ = write!(
        m,
        "</select></label> <label>Branch or tag <input name=\"branch\" value=\"{}\" size=\"16\"></label> \
         <label>Status <select name=\"status\"><option value=\"\">all</option>",
        esc(filter.branch.as_deref().unwrap_or(""))
    );
    for s in JobState::ALL {
        let sel = if filter.status == Some(*s) {
            " selected"
        } else {
            ""
        };
        let _ = write!(m, "<option{sel}>{}</option>", s.as_str());
    }
    m.push_str(
        "</select></label> <button type=\"submit\">Filter</button> <a href=\"/\">Clear</a></form>\n",
    );
    m.push_str(
        "<table id=\"jobs\" data-live=\"5\"><caption class=\"vh\">Jobs, newest first</caption>\
         <thead><tr><th scope=\"col\">Job</th><th scope=\"col\">Project</th>\
         <th scope=\"col\">Branch or tag</th><th scope=\"col\">Commit</th><th scope=\"col\">Name</th>\
         <th scope=\"col\">Status</th><th scope=\"col\">Started</th><th scope=\"col\">Duration</th>\
         <th scope=\"col\">Agent</th></tr></thead>\n<tbody>",
    );
    for j in &jobs {
        m.push_str(&job_list_row(j, now));
    }
    if jobs.is_empty() {
        m.push_str("<tr><td colspan=\"9\">No jobs match.</td></tr>");
    }
    m.push_str("</tbody></table>\n<nav class=\"pager\" aria-label=\"Pages\">");
    let qs = |before: Option<i64>| {
        let mut parts = Vec::new();
        for (k, v) in [
            ("project", filter.project.clone()),
            ("branch", filter.branch.clone()),
            ("status", filter.status.map(|s| s.as_str().to_owned())),
            ("before", before.map(|b| b.to_string())),
        ] {
            if let Some(v) = v {
                parts.push(format!("{k}={}", url_encode(&v)));
            }
        }
        if parts.is_empty() {
            "/".to_owned()
        } else {
            format!("/?{}", parts.join("&"))
        }
    };
    if filter.before.is_some() {
        let _ = write!(m, "<a href=\"{}\">Newest jobs</a> ", esc(&qs(None)));
    }
    if let (true, Some(last)) = (more, jobs.last()) {
        let _ = write!(
            m,
            "<a href=\"{}\" rel=\"next\">Older jobs</a>",
            esc(&qs(Some(last.id)))
        );
    }
    m.push_str("</nav>");
    shell("bosun jobs", " data-page=\"jobs\"", &m).into_response()
}

pub(crate) fn url_encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~/".contains(&b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

// ---- the job page ----

/// One section of a job's log: the part before the first step, or a step.
#[derive(Debug, Clone, PartialEq)]
pub struct Section {
    pub step: Option<u32>,
    pub name: String,
    pub start: u64,
    pub end: u64,
    pub status: Option<StepStatus>,
    pub duration_ms: Option<u64>,
    pub exit_code: Option<i64>,
}

/// The log split at each step's start offset (`len`: the log's length).
pub fn sections(events: &[(u64, JobEvent)], len: u64) -> Vec<Section> {
    let mut out: Vec<Section> = Vec::new();
    for (_, ev) in events {
        match ev {
            JobEvent::StepStarted {
                step,
                name,
                log_offset,
                ..
            } => out.push(Section {
                step: Some(*step),
                name: name.clone(),
                start: (*log_offset).min(len),
                end: len,
                status: None,
                duration_ms: None,
                exit_code: None,
            }),
            JobEvent::StepFinished {
                step,
                status,
                duration_ms,
                exit_code,
                ..
            } => {
                if let Some(s) = out.iter_mut().rev().find(|s| s.step == Some(*step)) {
                    s.status = Some(*status);
                    s.duration_ms = Some(*duration_ms);
                    s.exit_code = *exit_code;
                }
            }
        }
    }
    // Offsets only grow; a section ends where the next begins.
    let mut prev = 0;
    for s in &mut out {
        s.start = s.start.max(prev);
        prev = s.start;
    }
    for i in 0..out.len() {
        out[i].end = out.get(i + 1).map_or(len, |n| n.start);
    }
    let first = out.first().map_or(len, |s| s.start);
    if first > 0 || out.is_empty() {
        out.insert(
            0,
            Section {
                step: None,
                name: "Preparing".to_owned(),
                start: 0,
                end: first,
                status: None,
                duration_ms: None,
                exit_code: None,
            },
        );
    }
    out
}

fn failed(s: Option<StepStatus>) -> bool {
    matches!(s, Some(StepStatus::Failed | StepStatus::TimedOut))
}

/// Where each section's shown part starts: the last [`PAGE_TAIL`] bytes of the log spread
/// over the last sections, and a failed step's own last [`FAILED_TAIL`].
pub fn shown_from(secs: &[Section]) -> Vec<u64> {
    let mut budget = PAGE_TAIL;
    let mut extras = 0;
    let mut out = vec![0; secs.len()];
    for (i, s) in secs.iter().enumerate().rev() {
        let len = s.end - s.start;
        let mut show = len.min(budget);
        budget -= show;
        if failed(s.status) && show < len.min(FAILED_TAIL) && extras < FAILED_STEPS_SHOWN {
            show = len.min(FAILED_TAIL);
            extras += 1;
        }
        out[i] = s.end - show;
    }
    out
}

/// A region's bytes from a line start: if it begins after its section's start, drop the
/// partial first line. Returns the new start and the bytes.
fn align(start: u64, from: u64, mut bytes: Vec<u8>) -> (u64, Vec<u8>) {
    if from <= start {
        return (from, bytes);
    }
    match bytes.iter().position(|&b| b == b'\n') {
        Some(i) => {
            bytes.drain(..=i);
            (from + i as u64 + 1, bytes)
        }
        None => (from + bytes.len() as u64, Vec::new()),
    }
}

struct Loaded {
    job: JobRow,
    secs: Vec<Section>,
    /// Per section: shown part's start, its bytes, the line number of its first line.
    parts: Vec<(u64, Vec<u8>, u64)>,
    seq: u64,
    log_end: u64,
    /// The line number the next byte after the log starts (live lines continue from it).
    next_line: u64,
    /// When each part of the log arrived (per-line timestamps).
    times: super::store::LogTimes,
}

fn load_job(
    s: &dyn Backend,
    logs: &crate::objects::logs::LogArchive,
    id: i64,
) -> super::Result<Option<Loaded>> {
    // Events first, then the job row: every event's offset then falls within its log.
    let events = s.events_from(id, 0)?;
    let Some(job) = s.job(id)? else {
        return Ok(None);
    };
    let len = job.log_bytes;
    let secs = sections(&events, len);
    let froms = shown_from(&secs);
    let mut parts = Vec::with_capacity(secs.len());
    for (sec, &from) in secs.iter().zip(&froms) {
        let bytes = if from < sec.end {
            logs.log_piece(s, id, from, sec.end - from)?
                .map(|(b, _)| b)
                .unwrap_or_default()
        } else {
            Vec::new()
        };
        let (from, bytes) = align(sec.start, from, bytes);
        parts.push((from, bytes, 0));
    }
    let mut points: Vec<u64> = parts.iter().map(|p| p.0).collect();
    points.push(len);
    let counts = logs.newlines_before(s, id, &points)?;
    for (p, c) in parts.iter_mut().zip(&counts) {
        p.2 = c + 1;
    }
    let last = counts.last().copied().unwrap_or(0);
    Ok(Some(Loaded {
        job,
        secs,
        parts,
        seq: events.len() as u64,
        log_end: len,
        next_line: last + 1,
        times: s.log_times(id)?,
    }))
}

fn meta_row(out: &mut String, k: &str, v: &str) {
    let _ = write!(out, "<dt>{k}</dt><dd>{v}</dd>");
}

fn step_word(sec: &Section, job: &JobRow) -> Option<&'static str> {
    match sec.status {
        Some(s) => Some(s.as_str()),
        None if !job.is_final() && sec.step.is_some() => Some(JobState::Running.as_str()),
        None => None,
    }
}

#[derive(Deserialize, Default)]
pub struct PageQuery {
    /// Show every line's time (`?timestamps=1`; the script toggles without a reload).
    #[serde(default)]
    timestamps: Option<String>,
}

/// Stamps for [`ansi::render_lines_stamped`] of log bytes starting at offset `base`: a line's
/// `HH:MM:SS`, on every line when `every`, else only where it differs from the line before
/// (the script fills in the rest when timestamps are shown).
fn stamper<'a>(
    times: &'a super::store::LogTimes,
    base: u64,
    every: bool,
) -> impl FnMut(usize) -> Option<String> + 'a {
    let mut prev: Option<String> = None;
    move |at| {
        let t = times.at(base + at as u64).map(clock);
        if every || t != prev {
            prev.clone_from(&t);
            t
        } else {
            None
        }
    }
}

/// `GET /jobs/{id}`.
pub async fn job_page(
    State(state): State<Arc<AppState>>,
    Path(raw): Path<String>,
    Query(q): Query<PageQuery>,
    headers: HeaderMap,
) -> Response {
    let stamps = nonempty(&q.timestamps).is_some_and(|v| v != "0");
    let Some(id) = super::store::parse_job_id(&raw) else {
        return error_page(StatusCode::NOT_FOUND, "No such job.");
    };
    let logs = state.logs.clone();
    let l = match state
        .db(move |s: &dyn Backend| load_job(s, &logs, id))
        .await
    {
        Ok(Some(l)) => l,
        Ok(None) => return error_page(StatusCode::NOT_FOUND, "No such job."),
        Err(e) => return internal(e),
    };
    let stored = match state.db(move |s: &dyn Backend| s.job_results(id)).await {
        Ok(r) => r,
        Err(e) => return internal(e),
    };
    // Why a queued job waits (no agent of its class, all busy or offline): the store's words.
    let waiting = match state.db(move |s: &dyn Backend| s.wait_reason(id)).await {
        Ok(r) => r,
        Err(e) => return internal(e),
    };
    // A rerun with SSH: who asked and what it holds of the user key.
    let grant = match state.db(move |s: &dyn Backend| s.ssh_grant(id)).await {
        Ok(g) => g,
        Err(e) => return internal(e),
    };
    let viewer = match crate::people::viewer(&state, &headers).await {
        Ok(v) => v,
        Err(e) => return internal(e),
    };
    let j = &l.job;
    let now = super::store::now_ms();
    let word = j.status.as_str();
    let mut m = format!(
        "<h1><span id=\"status\" data-status=\"{word}\">{}</span> {} <small>job #{id}</small></h1>\n<dl class=\"meta\">",
        badge(word),
        esc(&j.job_name),
    );
    meta_row(&mut m, "Project", &esc(&j.project));
    meta_row(&mut m, "Branch or tag", &ref_el(&j.git_ref));
    meta_row(&mut m, "Commit", &commit_el(j, true));
    if let (Some(n), Some(url)) = (j.pr_number, &j.pr_url) {
        meta_row(
            &mut m,
            "Pull request",
            &format!("<a href=\"{}\">#{n}</a>", esc(url)),
        );
    }
    meta_row(&mut m, "Pipeline", &j.pipeline_number.to_string());
    let triggered = match j.rerun_of {
        Some(of) => format!(
            "rerun of <a href=\"/jobs/{of}\">#{of}</a>{}",
            if j.ssh { " with SSH" } else { "" }
        ),
        None => "queued with <code>bosun coordinator enqueue</code>".to_owned(),
    };
    meta_row(&mut m, "Triggered", &triggered);
    meta_row(&mut m, "Queued", &time_el(Some(j.created), now));
    meta_row(&mut m, "Started", &time_el(j.started, now));
    meta_row(&mut m, "Duration", &esc(&duration_text(j)));
    meta_row(
        &mut m,
        "Attempt",
        &format!("{} of {}", j.attempts, j.max_attempts),
    );
    meta_row(
        &mut m,
        "Agent",
        &esc(j
            .agent_name
            .as_deref()
            .or(j.agent_id.as_deref())
            .unwrap_or("–")),
    );
    if let Some(w) = &waiting {
        meta_row(
            &mut m,
            "Waiting",
            &format!("<span id=\"waiting\">{}</span>", esc(w)),
        );
    }
    if let Some(ssh) = ssh::row_html(j) {
        let form = match (&viewer, j.is_final()) {
            (Some(v), true) => format!(" {}", ssh_keys::rerun_form(id, &v.csrf)),
            _ => String::new(),
        };
        meta_row(
            &mut m,
            "SSH",
            &format!("<span id=\"ssh\">{ssh}</span>{form}"),
        );
    }
    if let Some(g) = &grant {
        meta_row(&mut m, "SSH access", &ssh_keys::grant_row(g));
    }
    if let Some(secs) = j.timeout_secs {
        meta_row(
            &mut m,
            "Time limit",
            &esc(&fmt_duration(Duration::from_secs(secs))),
        );
    }
    let _ = write!(
        m,
        "<dt>Error</dt><dd id=\"error\">{}</dd></dl>\n\
         <nav class=\"tabs\" aria-label=\"Job sections\"><a href=\"#steps\">Steps</a> \
         <a href=\"#tests\">Tests</a> <a href=\"#artifacts\">Artifacts</a></nav>\n\
         <section id=\"steps\" aria-labelledby=\"steps-h\"><h2 id=\"steps-h\">Steps</h2>\n\
         <div class=\"tools\"><form class=\"search\" role=\"search\" hidden>\
         <label for=\"q\">Search the log</label> <input id=\"q\" type=\"search\" autocomplete=\"off\"> \
         <button type=\"button\" id=\"q-prev\">Previous</button> <button type=\"submit\" id=\"q-next\">Next</button> \
         <span id=\"q-status\" role=\"status\" aria-live=\"polite\"></span></form> \
         <button type=\"button\" id=\"expand-all\" hidden>Expand all</button> \
         <button type=\"button\" id=\"collapse-all\" hidden>Collapse all</button> \
         <a href=\"/jobs/{id}{}\" id=\"ts-toggle\" role=\"button\" aria-pressed=\"{stamps}\">Timestamps (UTC)</a> \
         <a href=\"/jobs/{id}/log.txt\" download>Raw log</a> <span class=\"size\">({} bytes)</span></div>\n<div id=\"log\"{}>",
        esc(&format!(
            "{}{}",
            j.error.as_deref().unwrap_or(""),
            grant
                .as_ref()
                .filter(|_| j.error.is_some())
                .and_then(ssh_keys::error_note)
                .unwrap_or_default()
        )),
        if stamps { "" } else { "?timestamps=1" },
        l.log_end,
        if stamps { " class=\"ts\"" } else { "" },
    );
    // Where a live page's stream starts: the last line if it is unfinished (the stream sends
    // it again, whole), in the style the page reached there.
    let mut live = (l.log_end, ansi::Style::default(), false, l.next_line);
    let last = l.secs.len().saturating_sub(1);
    for (i, (sec, (from, bytes, first_line))) in l.secs.iter().zip(&l.parts).enumerate() {
        let w = step_word(sec, j);
        // Failed steps open; the last step of a running job too (its output is arriving).
        let open = failed(sec.status) || (i == last && !j.is_final());
        let key = sec
            .step
            .map_or_else(|| "prep".to_owned(), |n| n.to_string());
        let _ = write!(
            m,
            "<details class=\"step\" id=\"step-{key}\" data-step=\"{key}\" data-status=\"{}\"{}>\
             <summary><span class=\"sb\">{}</span> <span class=\"name\">{}</span> \
             <span class=\"dur\">{}</span></summary>",
            w.unwrap_or(""),
            if open { " open" } else { "" },
            w.map(badge).unwrap_or_default(),
            esc(sec.name.lines().next().unwrap_or("")),
            esc(&sec
                .duration_ms
                .map(|d| fmt_duration(Duration::from_millis(d)))
                .unwrap_or_default()),
        );
        if *from > sec.start {
            let _ = write!(
                m,
                "<p class=\"earlier\">{} KiB of earlier output not shown: \
                 <a href=\"/jobs/{id}/log?offset={}\">as text</a> \
                 <button type=\"button\" class=\"load\" data-start=\"{}\" data-end=\"{from}\" \
                 data-line=\"{first_line}\" hidden>Load earlier output</button></p>",
                (from - sec.start).div_ceil(1024),
                from.saturating_sub(FRAGMENT).max(sec.start),
                sec.start,
            );
        }
        // The last section of a live job: its unfinished last line apart.
        let cut = if i == last && !j.is_final() {
            bytes.iter().rposition(|&b| b == b'\n').map_or(0, |p| p + 1)
        } else {
            bytes.len()
        };
        let mut style = ansi::Style::default();
        let text = String::from_utf8_lossy(&bytes[..cut]);
        let (mut html, n) = ansi::render_lines_stamped(
            &text,
            *first_line,
            &mut style,
            &mut stamper(&l.times, *from, stamps),
        );
        if cut < bytes.len() {
            let base = from + cut as u64;
            live = (base, style, true, first_line + n + 1);
            let text = String::from_utf8_lossy(&bytes[cut..]);
            let (tail, _) = ansi::render_lines_stamped(
                &text,
                first_line + n,
                &mut style,
                &mut stamper(&l.times, base, true),
            );
            html.push_str(&tail);
        }
        let _ = writeln!(m, "<pre class=\"log\">{html}</pre></details>");
    }
    m.push_str("</div></section>\n<section id=\"tests\" aria-labelledby=\"tests-h\"><h2 id=\"tests-h\">Tests</h2>");
    m.push_str(&results::tests_section(j, &stored));
    m.push_str("</section>\n<section id=\"artifacts\" aria-labelledby=\"art-h\"><h2 id=\"art-h\">Artifacts</h2>");
    m.push_str(&results::artifacts_section(j, &stored));
    m.push_str("</section>");
    let mut attrs = format!(" data-page=\"job\" data-job=\"{id}\"");
    if !j.is_final() {
        let (offset, style, open, next_line) = live;
        let _ = write!(
            attrs,
            " data-live=\"1\" data-offset=\"{offset}\" data-seq=\"{}\" data-next-line=\"{next_line}\" \
             data-style=\"{}\" data-open=\"{}\"",
            l.seq,
            style.code(),
            u8::from(open)
        );
    }
    shell(&format!("{} #{id} · {word}", j.job_name), &attrs, &m).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn started(step: u32, off: u64) -> JobEvent {
        JobEvent::StepStarted {
            step,
            name: format!("s{step}"),
            log_offset: off,
            commit_sha: None,
        }
    }

    fn finished(step: u32, status: StepStatus, off: u64) -> JobEvent {
        JobEvent::StepFinished {
            step,
            name: format!("s{step}"),
            status,
            exit_code: Some(1),
            duration_ms: 1500,
            log_offset: off,
        }
    }

    #[test]
    fn sections_split_at_step_offsets_with_statuses() {
        let ev = [
            (0, started(1, 5)),
            (1, finished(1, StepStatus::Success, 14)),
            (2, started(2, 14)),
            (3, finished(2, StepStatus::Failed, 23)),
        ];
        let s = sections(&ev, 23);
        let spans: Vec<(u64, u64)> = s.iter().map(|x| (x.start, x.end)).collect();
        assert_eq!(spans, [(0, 5), (5, 14), (14, 23)]);
        assert_eq!(s[0].name, "Preparing");
        assert_eq!(s[2].status, Some(StepStatus::Failed));
        assert_eq!(s[2].duration_ms, Some(1500));
        // No steps: one section, the whole log.
        assert_eq!(sections(&[], 9).len(), 1);
    }

    #[test]
    fn the_tail_budget_goes_to_the_last_steps_and_failed_steps_get_their_own() {
        let mib = 1 << 20;
        let ev = [
            (0, started(1, 0)),
            (1, finished(1, StepStatus::Failed, 10 * mib)),
            (2, started(2, 10 * mib)),
            (3, finished(2, StepStatus::Success, 20 * mib)),
        ];
        let s = sections(&ev, 20 * mib);
        let f = shown_from(&s);
        assert_eq!(f[1], 20 * mib - PAGE_TAIL);
        assert_eq!(f[0], 10 * mib - FAILED_TAIL);
    }

    #[test]
    fn regions_start_at_a_line() {
        assert_eq!(align(0, 0, b"ab\ncd".to_vec()), (0, b"ab\ncd".to_vec()));
        assert_eq!(align(0, 4, b"ab\ncd".to_vec()), (7, b"cd".to_vec()));
        assert_eq!(align(0, 4, b"abcd".to_vec()), (8, Vec::new()));
    }

    #[test]
    fn times_and_links() {
        assert_eq!(iso_utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(iso_utc(1_795_000_000_000), "2026-11-18T11:06:40Z");
        assert_eq!(relative(0, 10_000), "just now");
        assert_eq!(relative(0, 180_000), "3 min ago");
        assert_eq!(relative(0, 3 * 3_600_000), "3 h ago");
        assert_eq!(
            bitbucket_repo("git@bitbucket.org:acme/widget.git").as_deref(),
            Some("acme/widget")
        );
        assert_eq!(
            bitbucket_repo("https://bitbucket.org/acme/widget").as_deref(),
            Some("acme/widget")
        );
        assert_eq!(bitbucket_repo("git@example.com:acme/widget.git"), None);
        assert_eq!(bitbucket_repo("git@bitbucket.org:a/\"><x.git"), None);
    }

    #[test]
    fn assets_have_digest_names_and_compress() {
        for a in assets() {
            assert!(
                a.name.starts_with("bosun.") && a.name.len() > 12,
                "{}",
                a.name
            );
            assert!(!a.gzip.is_empty() && a.gzip.len() < a.raw.len());
        }
    }
}

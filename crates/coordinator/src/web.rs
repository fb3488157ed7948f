//! The web routes: the pages themselves are rendered in [`super::pages`] (`GET /`,
//! `GET /jobs/{id}`, its older log parts as HTML, the raw log, the assets); here are
//! `GET /jobs/{id}/stream` (server-sent events following a running job) and
//! `GET /jobs/{id}/log?offset=` (an older part of the log as plain text). No framework and
//! no external assets: the pages must work where nothing can be fetched.

use super::pages;
use super::people;
use super::store::{Backend, JobRow};
use super::AppState;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use bosun_protocol::JobEvent;
use futures_util::stream::{self, Stream, StreamExt};
use serde::Deserialize;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

/// Who may reach a route. Every route of the web router declares one ([`routes`]); the
/// [`guard`] in front of it enforces it, so a route cannot be added without saying who may
/// read it, and `tests/it/people.rs` requests every route of [`route_table`] as nobody, as a
/// reader, as someone without access and as an operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Guard {
    /// Anyone: the assets, logging in and out, "You" (which sends nobody to log in) and a
    /// person's own SSH keys (their session decides).
    Public,
    /// The badge's own rule: the project's badge token, or its badges made public.
    Badge,
    /// `{id}` is a job: its project must be readable.
    Job,
    /// `{id}` (or `{id}.json`) is a pipeline: its project must be readable.
    Pipeline,
    /// `{workspace}/{repo}` is a project: it must be readable.
    Project,
    /// `{workspace}/{repo}` is a project whose settings the route shows or changes: a person
    /// logged in with admin permission on its repository, or a coordinator admin (or an
    /// operator, whose token sees the page without its forms). Nobody logged in is sent to
    /// log in; someone who may not read the project is told "Not found"; a reader or writer
    /// gets 403 saying what it needs. The forms' handlers ask Bitbucket again before each
    /// change.
    Settings,
    /// A list: it shows only the projects the asker may read ([`people::Readable`]).
    List,
    /// A person's own things (their API tokens): a logged-in person.
    Person,
    /// The coordinator's own records (the audit log): a coordinator admin, or an operator.
    Admin,
}

/// A route as [`route_table`] lists it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    pub method: &'static str,
    pub path: &'static str,
    pub guard: Guard,
}

type Handler = axum::routing::MethodRouter<Arc<AppState>>;

/// Every route of the web router with its guard and handler: the one list.
fn routes() -> Vec<(Route, Handler)> {
    use Guard::*;
    let r = |method, path, guard, h: Handler| {
        (
            Route {
                method,
                path,
                guard,
            },
            h,
        )
    };
    vec![
        r("GET", "/", List, get(pages::index)),
        r("GET", "/jobs/{id}", Job, get(pages::job_page)),
        r("GET", "/jobs/{id}/log.html", Job, get(pages::log_fragment)),
        r("GET", "/jobs/{id}/log.txt", Job, get(pages::raw_log)),
        r(
            "GET",
            "/jobs/{id}/artifacts/{*path}",
            Job,
            get(pages::results::artifact),
        ),
        r("GET", "/assets/{name}", Public, get(pages::asset)),
        r("GET", "/jobs/{id}/stream", Job, get(job_stream)),
        r("GET", "/jobs/{id}/log", Job, get(log_part)),
        r("GET", "/pipelines", List, get(pages::pipelines::list)),
        r(
            "GET",
            "/pipelines/{id}",
            Pipeline,
            get(pages::pipelines::page),
        ),
        r(
            "POST",
            "/pipelines/{id}/approve",
            Pipeline,
            post(pages::pipelines::approve),
        ),
        r(
            "POST",
            "/pipelines/{id}/cancel",
            Pipeline,
            post(pages::pipelines::cancel),
        ),
        r(
            "POST",
            "/pipelines/{id}/rerun",
            Pipeline,
            post(pages::pipelines::rerun),
        ),
        r(
            "GET",
            "/pipeline-assets/{name}",
            Public,
            get(pages::pipelines::script),
        ),
        r("GET", "/badge/{*path}", Badge, get(pages::badge::badge)),
        r(
            "GET",
            "/projects/{workspace}/{repo}",
            Project,
            get(pages::badge::project_page),
        ),
        r(
            "GET",
            "/projects/{workspace}/{repo}/settings",
            Settings,
            get(pages::settings::page),
        ),
        r(
            "POST",
            "/projects/{workspace}/{repo}/settings",
            Settings,
            post(pages::settings::switches),
        ),
        r(
            "POST",
            "/projects/{workspace}/{repo}/settings/env",
            Settings,
            post(pages::settings::set_var),
        ),
        r(
            "POST",
            "/projects/{workspace}/{repo}/settings/env/{name}/delete",
            Settings,
            post(pages::settings::delete_var),
        ),
        r("GET", "/login", Public, get(pages::people::login_page)),
        r(
            "GET",
            "/login/bitbucket",
            Public,
            get(pages::people::login_start),
        ),
        r(
            "GET",
            "/login/bitbucket/callback",
            Public,
            get(pages::people::login_callback),
        ),
        // Its own CSRF defence (a cookie set with the form, before any session).
        r(
            "POST",
            "/login/bitbucket/token",
            Public,
            post(pages::people::token_login),
        ),
        r("POST", "/logout", Public, post(pages::people::logout)),
        r("GET", "/me", Public, get(pages::people::me)),
        // A person's own keys: their session and CSRF token decide; nothing of a project.
        r("POST", "/me/ssh-keys", Public, post(pages::ssh_keys::add)),
        r(
            "POST",
            "/me/ssh-keys/bitbucket",
            Public,
            post(pages::ssh_keys::import),
        ),
        r(
            "POST",
            "/me/ssh-keys/{key}/delete",
            Public,
            post(pages::ssh_keys::remove),
        ),
        r(
            "POST",
            "/jobs/{id}/rerun-ssh",
            Job,
            post(pages::ssh_keys::rerun),
        ),
        r("POST", "/me/tokens", Person, post(pages::tokens::make)),
        r(
            "POST",
            "/me/tokens/{id}/revoke",
            Person,
            post(pages::tokens::revoke),
        ),
        r("GET", "/admin/audit", Admin, get(pages::audit::page)),
    ]
}

/// Every route of the web router, with its guard.
pub fn route_table() -> Vec<Route> {
    routes().into_iter().map(|(r, _)| r).collect()
}

pub fn router(state: Arc<AppState>) -> Router {
    let mut router = Router::new();
    for (route, handler) in routes() {
        let guarded = Guarded {
            state: state.clone(),
            guard: route.guard,
        };
        router = router.route(
            route.path,
            handler.route_layer(axum::middleware::from_fn_with_state(guarded, guard)),
        );
    }
    router
        .layer(axum::middleware::map_response(security_headers))
        .with_state(state)
}

#[derive(Clone)]
struct Guarded {
    state: Arc<AppState>,
    guard: Guard,
}

/// A request the guard refuses: nobody logged in is sent to log in (and back); a person
/// without read access, or an unknown operator token, is told there is no such thing (so
/// that private projects' names and ids are not given away).
fn refused(asking: Option<&people::Asking>, uri: &axum::http::Uri) -> Response {
    match asking {
        Some(people::Asking::Anonymous) => {
            let back = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
            let location = format!(
                "/login?return_to={}",
                pages::url_encode(&crate::model::people::safe_return_to(Some(back)))
            );
            let mut r = StatusCode::SEE_OTHER.into_response();
            if let Ok(v) = axum::http::HeaderValue::from_str(&location) {
                r.headers_mut().insert(axum::http::header::LOCATION, v);
            }
            r
        }
        Some(_) => pages::not_found(),
        None => json_error(
            StatusCode::UNAUTHORIZED,
            "operator token unknown or revoked",
        ),
    }
}

/// The guard in front of every web route (see [`Guard`]).
async fn guard(
    State(g): State<Guarded>,
    params: axum::extract::RawPathParams,
    mut req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    use crate::model::people::Action;
    use crate::store::Resource;
    let param = |name: &str| {
        params
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.to_owned())
    };
    let project = || Some(format!("{}/{}", param("workspace")?, param("repo")?));
    let resource = match g.guard {
        Guard::Public | Guard::Badge => return next.run(req).await,
        Guard::Person | Guard::Admin => {
            let asking = match people::asking(&g.state, req.headers()).await {
                Ok(Some(a)) => a,
                Ok(None) => return refused(None, req.uri()),
                Err(e) => {
                    tracing::error!("{e}");
                    return json_error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string());
                }
            };
            let ok = match (&asking, g.guard) {
                (people::Asking::Person(_), Guard::Person) => true,
                (people::Asking::Person(v), _) => v.person.admin,
                (people::Asking::Operator(_), Guard::Admin) => true,
                _ => false,
            };
            return if ok {
                next.run(req).await
            } else {
                refused(Some(&asking), req.uri())
            };
        }
        Guard::List => None,
        // An id that is not one is the handler's 404: nothing to read there.
        Guard::Job => match param("id").and_then(|r| super::store::parse_job_id(&r)) {
            Some(id) => Some(Resource::Job(id)),
            None => return next.run(req).await,
        },
        Guard::Pipeline => match param("id")
            .as_deref()
            .map(|r| r.strip_suffix(".json").unwrap_or(r))
            .and_then(|n| n.parse::<i64>().ok())
        {
            Some(id) => Some(Resource::Pipeline(id)),
            None => return next.run(req).await,
        },
        Guard::Project => match project() {
            Some(slug) => Some(Resource::Project(slug)),
            None => return next.run(req).await,
        },
        Guard::Settings => {
            let Some(slug) = project() else {
                return next.run(req).await;
            };
            return settings_guard(&g.state, slug, req, next).await;
        }
    };
    let asking = match people::asking(&g.state, req.headers()).await {
        Ok(Some(a)) => a,
        Ok(None) => return refused(None, req.uri()),
        Err(e) => {
            tracing::error!("{e}");
            return json_error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string());
        }
    };
    match resource {
        None => match people::readable(&g.state, &asking).await {
            Ok(r) => {
                req.extensions_mut().insert(r);
            }
            Err(e) => {
                tracing::error!("{e}");
                return json_error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string());
            }
        },
        Some(of) => match people::may_on(&g.state, &asking, of, Action::Read).await {
            // No such thing: the handler's own 404 (ids are numbers in sequence; that one
            // exists says nothing of what it holds).
            Ok(Some(true)) | Ok(None) => {}
            Ok(Some(false)) => return refused(Some(&asking), req.uri()),
            Err(e) => {
                tracing::error!("{e}");
                return json_error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string());
            }
        },
    }
    next.run(req).await
}

/// The [`Guard::Settings`] of project `slug`.
async fn settings_guard(
    state: &AppState,
    slug: String,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    use crate::model::people::Action;
    use crate::store::Resource;
    let asking = match people::asking(state, req.headers()).await {
        Ok(Some(a)) => a,
        Ok(None) => return refused(None, req.uri()),
        Err(e) => {
            tracing::error!("{e}");
            return json_error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string());
        }
    };
    // Nobody logged in may change anything, public project or not: log in first.
    if matches!(asking, people::Asking::Anonymous) {
        return refused(Some(&asking), req.uri());
    }
    let project = || Resource::Project(slug.clone());
    match people::may_on(state, &asking, project(), Action::Read).await {
        // No such project: the handler's own 404.
        Ok(None) => return next.run(req).await,
        Ok(Some(false)) => return refused(Some(&asking), req.uri()),
        Ok(Some(true)) => {}
        Err(e) => {
            tracing::error!("{e}");
            return json_error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string());
        }
    }
    match (
        people::may_on(state, &asking, project(), Action::Settings).await,
        &asking,
    ) {
        (Ok(Some(true)), _) => next.run(req).await,
        (Ok(_), people::Asking::Person(v)) => {
            pages::forbidden(&pages::settings::needs_admin(v, &slug))
        }
        (Ok(_), _) => refused(Some(&asking), req.uri()),
        (Err(e), _) => {
            tracing::error!("{e}");
            json_error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
        }
    }
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

/// The pages' Content-Security-Policy: their stylesheet and script come from this origin
/// (`/assets/…`; the pages have no inline script or style), the live stream too; never
/// framed, no forms elsewhere, no base URL.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'self'; \
     frame-ancestors 'none'";

/// Security headers on every answer of the web router: CSP, no framing, no MIME sniffing,
/// no referrer.
pub async fn security_headers(mut resp: Response) -> Response {
    use axum::http::header::{self, HeaderValue};
    let h = resp.headers_mut();
    // An answer with a stricter policy of its own (an artifact) keeps it.
    h.entry(header::CONTENT_SECURITY_POLICY)
        .or_insert(HeaderValue::from_static(CONTENT_SECURITY_POLICY));
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
        axum::Json(bosun_protocol::ApiError { error: msg.into() }),
    )
        .into_response()
}
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
    let logs = state.logs.clone();
    match state
        .db(move |s: &dyn Backend| logs.log_piece(s, id, q.offset, LOG_PART))
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

#[derive(Deserialize)]
struct StreamQuery {
    #[serde(default)]
    offset: u64,
    #[serde(default)]
    seq: u64,
    /// The style at `offset` and whether the page has an open line there (see
    /// [`pages::live`]).
    #[serde(default)]
    style: u32,
    #[serde(default)]
    open: u8,
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
    status: Option<bosun_protocol::JobState>,
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
    /// The SSH row as last sent (heartbeats change it).
    ssh: Option<String>,
    /// The page's lines as sent so far (text goes out rendered, as a reload shows it).
    live: pages::live::LiveLines,
    /// Arrival times of the log from the first line still open on (new lines show theirs),
    /// and how many records of the job's times were read.
    times: super::store::LogTimes,
    times_read: usize,
    /// When the store was last told a page follows this log (see [`FOLLOWED_FOR`]).
    followed: Option<tokio::time::Instant>,
    /// The request's headers (its session cookie or bearer token), to ask again whether its
    /// sender may still read the job ([`still_readable`]), and when that was last asked.
    headers: HeaderMap,
    checked: tokio::time::Instant,
}

/// How often an open stream asks again whether its reader may still read the job: a
/// quarter of `--permissions-refresh`, between 1 s and 30 s. A permission taken away on
/// Bitbucket (read again when older than `--permissions-refresh`), a logout, a revoked
/// operator token or a project made private closes the stream within that.
fn recheck_every(state: &AppState) -> Duration {
    (state.people.settings.permissions_refresh / 4)
        .clamp(Duration::from_secs(1), Duration::from_secs(30))
}

/// Whether the sender of `headers` may still read job `id` (as the guard decided when the
/// stream opened).
async fn still_readable(state: &AppState, headers: &HeaderMap, id: i64) -> bool {
    use crate::model::people::Action;
    let asking = match people::asking(state, headers).await {
        Ok(Some(a)) => a,
        _ => return false,
    };
    matches!(
        people::may_on(
            state,
            &asking,
            super::store::Resource::Job(id),
            Action::Read
        )
        .await,
        Ok(Some(true))
    )
}

/// A live stream marks its log followed for this long, and again every third of it while
/// it runs: meanwhile appends received by other coordinators on the same database notify
/// this one (`LogStore::follow_log`), so the page keeps up as with appends received here.
const FOLLOWED_FOR: Duration = Duration::from_secs(30);

/// A follower sends at most one batch per this: appends in between coalesce into it, so a
/// follower costs the same whether the agent appends ten times a second or a thousand.
const FOLLOW_INTERVAL: Duration = Duration::from_millis(100);

/// A `log` event: the operations that show `text` on the page (see [`pages::live`]).
fn log_event(
    live: &mut pages::live::LiveLines,
    times: &super::store::LogTimes,
    text: &[u8],
    seq: u64,
) -> Event {
    let time = |at: u64| times.at(at).map(pages::clock);
    let ops = live.push(&String::from_utf8_lossy(text), &time);
    Event::default()
        .event("log")
        .id(live.resume_id(seq))
        .json_data(serde_json::json!({ "ops": ops }))
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
        if f.checked.elapsed() >= recheck_every(&f.state) {
            if !still_readable(&f.state, &f.headers, f.id).await {
                tracing::info!(
                    job = f.id,
                    "live stream closed: its reader may no longer read it"
                );
                return None;
            }
            f.checked = tokio::time::Instant::now();
        }
        let progress = *f.changed.borrow_and_update();
        let (id, offset, seq, status) = (f.id, f.offset, f.seq, f.status);
        let ssh = f.ssh.clone();
        let times_read = f.times_read;
        let mark = f.followed.is_none_or(|t| t.elapsed() >= FOLLOWED_FOR / 3);
        if mark {
            f.followed = Some(tokio::time::Instant::now());
        }
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
        let logs = f.state.logs.clone();
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
                if mark && !job.is_final() {
                    // Appends through other replicas notify while this is marked (the
                    // store's own appends wake this stream directly).
                    if let Err(e) = s.follow_log(id, FOLLOWED_FOR.as_secs()) {
                        tracing::debug!(job = id, "marking the log followed: {e}");
                    }
                }
                let fresh = job.log_bytes > offset
                    || job.event_count > seq
                    || status != Some(job.status)
                    || job.is_final()
                    || pages::ssh::row_html(&job) != ssh;
                if !fresh {
                    return Ok(Some((job, Vec::new(), None, (Vec::new(), times_read))));
                }
                let events = if job.event_count > seq {
                    s.events_from(id, seq)?
                } else {
                    Vec::new()
                };
                let end = job.log_bytes;
                let log =
                    logs.read_log(s, id, offset, end.min(offset.saturating_add(STREAM_PIECE)))?;
                // The times after the log: every byte read has its time by then.
                let times = s.log_times_from(id, times_read)?;
                Ok(Some((job, events, Some((log, end)), times)))
            })
            .await;
        let (job, events, log, (new_times, times_total)) = match read {
            Ok(Some(x)) => x,
            _ => return None,
        };
        f.times.0.extend(new_times);
        f.times_read = times_total;
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
                    out.push(log_event(&mut f.live, &f.times, &log[sent..upto], *s));
                    sent = upto;
                }
                // The step's lines start in its own section, as the page renders them.
                f.live.section(f.offset + sent as u64);
            }
            f.seq = s + 1;
            if let Ok(e) = Event::default()
                .event("step")
                .id(f.live.resume_id(f.seq))
                .json_data(ev)
            {
                out.push(e);
            }
        }
        if take > sent {
            out.push(log_event(&mut f.live, &f.times, &log[sent..take], f.seq));
        }
        f.offset += take as u64;
        // Only the times of lines still to come (or still open) are needed.
        let keep = f
            .times
            .0
            .partition_point(|(o, _)| *o <= f.live.line_start());
        f.times.0.drain(..keep.saturating_sub(1));
        if f.status != Some(job.status) {
            f.status = Some(job.status);
            if let Ok(e) = Event::default()
                .event("status")
                .json_data(serde_json::json!({ "status": job.status, "error": job.error }))
            {
                out.push(e);
            }
        }
        let ssh = pages::ssh::row_html(&job);
        if ssh != f.ssh {
            if let Ok(e) = Event::default()
                .event("ssh")
                .json_data(serde_json::json!({ "html": ssh }))
            {
                out.push(e);
            }
            f.ssh = ssh;
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
    // A reconnecting EventSource resumes from the id of the last event it got
    // ("offset:seq:style:open", see `pages::live`).
    let (live, seq) = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(pages::live::LiveLines::parse_resume_id)
        .unwrap_or_else(|| {
            let style = pages::ansi::Style::from_code(q.style);
            (
                pages::live::LiveLines::new(q.offset, style, q.open == 1),
                q.seq,
            )
        });
    let offset = live.resume_offset();
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
        ssh: None,
        live,
        times: Default::default(),
        times_read: 0,
        headers,
        checked: tokio::time::Instant::now(),
        followed: None,
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
    fn split_characters_wait_for_their_tail() {
        let b = "é".as_bytes();
        assert_eq!(text_prefix(&b[..1], false), 0);
        assert_eq!(text_prefix(&b[..1], true), 1);
        assert_eq!(text_prefix(b, false), 2);
    }
}

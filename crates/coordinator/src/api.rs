//! The agent endpoints of protocol v1 (see [`bosun_protocol`] and `docs/protocol.md`).

use super::store::{self, AppendOutcome, EventsOutcome, FinishOutcome, Lease};
use super::{AppState, CoordError};
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use bosun_protocol::{
    ApiError, ClaimRequest, ClaimResponse, ControlRequest, ControlResponse, EventAck, EventBatch,
    FinishRequest, Heartbeat, HeartbeatResponse, LogAck, RegisterRequest, RegisterResponse,
    API_PREFIX, ATTEMPT_HEADER, DEFAULT_CLAIM_WAIT_SECS, DEFAULT_CONTROL_WAIT_SECS, MAX_LOG_CHUNK,
    PROTOCOL_VERSION,
};
use serde::Deserialize;
use std::sync::Arc;
use std::time::Duration;

/// An error answer: status plus JSON [`ApiError`].
pub struct Failure(pub StatusCode, pub String);

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        (self.0, Json(ApiError { error: self.1 })).into_response()
    }
}

impl From<CoordError> for Failure {
    fn from(e: CoordError) -> Self {
        tracing::error!("{e}");
        Failure(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
    }
}

pub(crate) type ApiResult = std::result::Result<Response, Failure>;

/// Middleware over the whole server: an error answer that is neither JSON nor an HTML page
/// (axum's rejections of a bad query or body, 405, 413, …) becomes the documented
/// `{"error": …}` with the same status.
pub async fn json_errors(resp: Response) -> Response {
    use axum::http::header;
    let status = resp.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return resp;
    }
    let ct = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if ct.starts_with("application/json") || ct.starts_with("text/html") {
        return resp;
    }
    let (parts, body) = resp.into_parts();
    let text = axum::body::to_bytes(body, 64 * 1024)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_owned())
        .unwrap_or_default();
    let error = if text.is_empty() {
        status
            .canonical_reason()
            .unwrap_or("error")
            .to_ascii_lowercase()
    } else {
        text
    };
    let mut out = Failure(status, error).into_response();
    if let Some(allow) = parts.headers.get(header::ALLOW) {
        out.headers_mut().insert(header::ALLOW, allow.clone());
    }
    out
}

/// What no route serves: 404 with a JSON error.
pub async fn not_found(uri: axum::http::Uri) -> Response {
    Failure(StatusCode::NOT_FOUND, format!("nothing at {}", uri.path())).into_response()
}

/// The agent endpoints under [`API_PREFIX`], with `store` (the store's endpoints, which bound
/// their bodies themselves: blob pieces are streamed to disk) beside them. The caller hands
/// them in so that this module does not import the blob code that builds on its helpers.
pub fn router(state: Arc<AppState>, store: Router) -> Router {
    let api = Router::new()
        .route("/agents/register", post(register))
        .route("/agents/heartbeat", post(heartbeat))
        .route("/agents/control", post(control))
        .route("/jobs/claim", post(claim))
        .route("/jobs/{id}/log", post(append_log))
        .route("/jobs/{id}/events", post(append_events))
        .route("/jobs/{id}/finish", post(finish))
        // A log chunk is at most MAX_LOG_CHUNK; leave room for JSON bodies' overhead.
        .layer(DefaultBodyLimit::max(MAX_LOG_CHUNK + 64 * 1024))
        .layer(axum::middleware::from_fn(super::server::request_timeout))
        .with_state(state.clone());
    Router::new().nest(API_PREFIX, api.merge(store))
}

/// The caller's agent id from `Authorization: Bearer …`, or 401.
pub(crate) async fn agent(
    state: &AppState,
    headers: &HeaderMap,
) -> std::result::Result<String, Failure> {
    let token = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|t| t.trim().to_string())
        .ok_or_else(|| {
            Failure(
                StatusCode::UNAUTHORIZED,
                "missing Authorization: Bearer <agent token>".into(),
            )
        })?;
    match state.db(move |s| s.agent_by_token(&token)).await? {
        Some(a) if !a.revoked => Ok(a.id),
        Some(_) => Err(Failure(
            StatusCode::UNAUTHORIZED,
            "agent token revoked".into(),
        )),
        None => Err(Failure(
            StatusCode::UNAUTHORIZED,
            "agent token unknown".into(),
        )),
    }
}

pub(crate) fn job_id(raw: &str) -> std::result::Result<i64, Failure> {
    store::parse_job_id(raw).ok_or_else(|| Failure(StatusCode::NOT_FOUND, format!("no job {raw}")))
}

pub(crate) fn refused(id: i64, lease: Lease) -> Failure {
    match lease {
        Lease::NotFound => Failure(StatusCode::NOT_FOUND, format!("no job {id}")),
        Lease::FinishedByYou(s) => Failure(
            StatusCode::FORBIDDEN,
            format!("job {id} is finished ({s}); it takes no more writes"),
        ),
        Lease::Superseded { current } => Failure(
            StatusCode::FORBIDDEN,
            format!(
                "job {id} is on attempt {current} now; writes for an earlier attempt are refused"
            ),
        ),
        Lease::NotYours | Lease::Held => Failure(
            StatusCode::FORBIDDEN,
            format!("job {id} is not leased to this agent (the lease lapsed or was never yours)"),
        ),
    }
}

/// The optional `Bosun-Attempt` header of a job write (see docs/protocol.md).
pub(crate) fn attempt(headers: &HeaderMap) -> std::result::Result<Option<u32>, Failure> {
    let Some(v) = headers.get(ATTEMPT_HEADER) else {
        return Ok(None);
    };
    v.to_str()
        .ok()
        .and_then(|v| v.trim().parse::<u32>().ok())
        .map(Some)
        .ok_or_else(|| {
            Failure(
                StatusCode::BAD_REQUEST,
                format!("{ATTEMPT_HEADER}: expected an attempt number (1, 2, …)"),
            )
        })
}

pub(crate) fn json_body<T: serde::de::DeserializeOwned>(
    body: &Bytes,
) -> std::result::Result<T, Failure> {
    serde_json::from_slice(body)
        .map_err(|e| Failure(StatusCode::BAD_REQUEST, format!("bad JSON body: {e}")))
}

async fn register(State(state): State<Arc<AppState>>, body: Bytes) -> ApiResult {
    let req: RegisterRequest = json_body(&body)?;
    // Compare digests, not the strings, so the comparison time says nothing about the token.
    let given = super::sha256_hex(req.registration_token.expose().as_bytes());
    let from_file = state.registration_token_file_digests.contains(&given);
    let token = req.registration_token.expose().clone();
    if !from_file
        && !state
            .db(move |s| s.registration_token_valid(&token))
            .await?
    {
        return Err(Failure(
            StatusCode::UNAUTHORIZED,
            "registration token invalid".into(),
        ));
    }
    check_registration(&req).map_err(|e| Failure(StatusCode::BAD_REQUEST, e))?;
    let (agent_id, agent_token) = state
        .db(move |s| s.register_agent(&req.name, &req.resource_class, &req.labels, &req.version))
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(RegisterResponse {
            agent_id,
            agent_token: agent_token.into(),
            protocol_version: PROTOCOL_VERSION,
        }),
    )
        .into_response())
}

/// Longest agent name, resource class, label and version accepted at registration.
pub const MAX_NAME_CHARS: usize = 64;
/// Most labels an agent may register with.
pub const MAX_LABELS: usize = 32;

/// Names, class, labels and version: non-empty (but the version), at most
/// [`MAX_NAME_CHARS`] characters, no control characters or bidi overrides (the CLI prints
/// them; they must not drive a terminal), at most [`MAX_LABELS`] labels.
fn check_registration(req: &RegisterRequest) -> std::result::Result<(), String> {
    let field = |what: &str, v: &str, may_be_empty: bool| {
        if !may_be_empty && v.trim().is_empty() {
            return Err(format!("{what} is empty"));
        }
        if v.chars().count() > MAX_NAME_CHARS {
            return Err(format!("{what} is longer than {MAX_NAME_CHARS} characters"));
        }
        if v.chars().any(super::is_unsafe_char) {
            return Err(format!(
                "{what} has control characters (escapes, newlines) or bidi overrides"
            ));
        }
        Ok(())
    };
    field("name", &req.name, false)?;
    field("resource_class", &req.resource_class, false)?;
    field("version", &req.version, true)?;
    if req.labels.len() > MAX_LABELS {
        return Err(format!("more than {MAX_LABELS} labels"));
    }
    for l in &req.labels {
        field("a label", l, false)?;
    }
    Ok(())
}

#[derive(Deserialize)]
struct WaitQuery {
    wait: Option<u64>,
}

/// Long poll: answer the moment a fitting job is queued, or 204 after `wait` seconds.
async fn claim(
    State(state): State<Arc<AppState>>,
    Query(q): Query<WaitQuery>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult {
    let agent_id = agent(&state, &headers).await?;
    let req: ClaimRequest = json_body(&body)?;
    if req.capacity == 0 {
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    let wait = Duration::from_secs(
        q.wait
            .unwrap_or(DEFAULT_CLAIM_WAIT_SECS)
            .min(DEFAULT_CLAIM_WAIT_SECS),
    );
    let deadline = tokio::time::Instant::now() + wait;
    let mut changed = state.changed.subscribe();
    let lease = state.lease;
    loop {
        // Mark the current version seen before querying, so a change that lands during the
        // query wakes us rather than being missed.
        changed.borrow_and_update();
        // The class and labels in the request are the agent's word only: the coordinator
        // uses the ones fixed at registration.
        let a = agent_id.clone();
        if let Some(mut job) = state.db(move |s| s.claim(&a, lease)).await? {
            if let Some(oidc) = state.oidc.clone() {
                // Signing may read a rotated key file: off the async workers.
                job = tokio::task::spawn_blocking(move || {
                    oidc.add_tokens(&mut job);
                    job
                })
                .await
                .map_err(|e| CoordError::Invalid(format!("minting OIDC tokens failed: {e}")))?;
            }
            state.bump();
            state.metrics.claims.inc();
            if let Some(id) = store::parse_job_id(&job.id) {
                state.jobs.bump(id);
            }
            return Ok(Json(ClaimResponse {
                job,
                lease_secs: lease.as_secs(),
            })
            .into_response());
        }
        let woke = tokio::select! {
            w = tokio::time::timeout_at(deadline, changed.changed()) => w,
            _ = state.shutdown.cancelled() => return Ok(StatusCode::NO_CONTENT.into_response()),
        };
        match woke {
            Ok(Ok(())) => continue,
            // Deadline, or the sender is gone (shutting down): nothing for you.
            _ => return Ok(StatusCode::NO_CONTENT.into_response()),
        }
    }
}

async fn heartbeat(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult {
    let agent_id = agent(&state, &headers).await?;
    let hb: Heartbeat = json_body(&body)?;
    let lease = state.lease;
    let out = state
        .db(move |s| s.heartbeat(&agent_id, &hb.running, lease))
        .await?;
    Ok(Json(HeartbeatResponse {
        cancel: out.cancel,
        unknown: out.unknown,
        lease_secs: lease.as_secs(),
    })
    .into_response())
}

/// The control channel (long poll): answer the moment one of the agent's jobs has a cancel
/// it has not seen, or 204 after `wait` seconds. Cancels made by the CLI in another process
/// wake it through the store's change watcher (50 ms), those made here at once.
async fn control(
    State(state): State<Arc<AppState>>,
    Query(q): Query<WaitQuery>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult {
    let agent_id = agent(&state, &headers).await?;
    let req: ControlRequest = json_body(&body)?;
    let wait = Duration::from_secs(
        q.wait
            .unwrap_or(DEFAULT_CONTROL_WAIT_SECS)
            .min(DEFAULT_CONTROL_WAIT_SECS),
    );
    let deadline = tokio::time::Instant::now() + wait;
    let mut changed = state.changed.subscribe();
    loop {
        // Seen before the query: a change landing during it wakes the next round.
        changed.borrow_and_update();
        let a = agent_id.clone();
        let cancel: Vec<String> = state
            .db(move |s| s.pending_cancels(&a))
            .await?
            .into_iter()
            .filter(|id| !req.cancels_seen.contains(id))
            .collect();
        if !cancel.is_empty() {
            return Ok(Json(ControlResponse { cancel }).into_response());
        }
        let woke = tokio::select! {
            w = tokio::time::timeout_at(deadline, changed.changed()) => w,
            _ = state.shutdown.cancelled() => return Ok(StatusCode::NO_CONTENT.into_response()),
        };
        if !matches!(woke, Ok(Ok(()))) {
            return Ok(StatusCode::NO_CONTENT.into_response());
        }
    }
}

#[derive(Deserialize)]
struct OffsetQuery {
    offset: u64,
}

async fn append_log(
    State(state): State<Arc<AppState>>,
    Path(raw): Path<String>,
    Query(q): Query<OffsetQuery>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult {
    let agent_id = agent(&state, &headers).await?;
    let id = job_id(&raw)?;
    let attempt = attempt(&headers)?;
    if body.len() > MAX_LOG_CHUNK {
        return Err(Failure(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("log chunks are at most {MAX_LOG_CHUNK} bytes"),
        ));
    }
    let out = state
        .db(move |s| s.append_log(id, &agent_id, attempt, q.offset, &body))
        .await?;
    match out {
        AppendOutcome::Ack(offset) => {
            // Only this job's followers care; claims wait for queue changes, not logs.
            state.jobs.logged(id, offset);
            Ok(Json(LogAck { offset }).into_response())
        }
        AppendOutcome::Gap(offset) => {
            Ok((StatusCode::CONFLICT, Json(LogAck { offset })).into_response())
        }
        AppendOutcome::Refused(l) => Err(refused(id, l)),
    }
}

async fn append_events(
    State(state): State<Arc<AppState>>,
    Path(raw): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult {
    let agent_id = agent(&state, &headers).await?;
    let id = job_id(&raw)?;
    let attempt = attempt(&headers)?;
    let batch: EventBatch = json_body(&body)?;
    let out = state
        .db(move |s| s.append_events(id, &agent_id, attempt, batch.first_seq, &batch.events))
        .await?;
    match out {
        EventsOutcome::Ack(next_seq) => {
            state.jobs.evented(id, next_seq);
            Ok(Json(EventAck { next_seq }).into_response())
        }
        EventsOutcome::Gap(next_seq) => {
            Ok((StatusCode::CONFLICT, Json(EventAck { next_seq })).into_response())
        }
        EventsOutcome::Refused(l) => Err(refused(id, l)),
    }
}

/// Move a finished job's log into the object store, off the agent's request (a failure is
/// retried by the sweeper; readers meanwhile read the store's copy).
fn archive_log(state: &Arc<AppState>, id: i64) {
    let logs = state.logs.clone();
    let store = state.store.clone();
    tokio::spawn(async move {
        if let Err(e) = logs.archive(&store, id).await {
            tracing::warn!(job = id, "moving the finished log: {e}");
        }
    });
}

async fn finish(
    State(state): State<Arc<AppState>>,
    Path(raw): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult {
    let agent_id = agent(&state, &headers).await?;
    let id = job_id(&raw)?;
    let attempt = attempt(&headers)?;
    let req: FinishRequest = json_body(&body)?;
    let out = state
        .db(move |s| s.finish(id, &agent_id, attempt, &req))
        .await?;
    match out {
        FinishOutcome::Done => {
            state.bump();
            state.jobs.bump(id);
            archive_log(&state, id);
            Ok(Json(serde_json::json!({})).into_response())
        }
        FinishOutcome::Incomplete(offset) => {
            Ok((StatusCode::CONFLICT, Json(LogAck { offset })).into_response())
        }
        FinishOutcome::DigestMismatch(msg) => {
            state.bump();
            state.jobs.bump(id);
            Err(Failure(StatusCode::UNPROCESSABLE_ENTITY, msg))
        }
        FinishOutcome::Refused(l) => Err(refused(id, l)),
    }
}

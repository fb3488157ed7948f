//! The store's endpoints of protocol v2 (see `docs/protocol.md`, *Store*): blobs up and
//! down, and the records that name them. Every call is about a job the calling agent holds
//! the lease of, and reaches only that job's project.

use super::{is_blob_name, parse_range, BlobError, PIECE_LIMIT};
use crate::api::{agent, attempt, job_id, json_body, refused, ApiResult, Failure};
use crate::store::blobs::JobScope;
use crate::AppState;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bosun_protocol::{
    BlobAck, CacheLookup, CacheSaved, WireArtifact, WireCache, WireLayer, WireTestResults,
    WorkspaceLayers, MAX_FAILED_TESTS,
};
use futures_util::StreamExt;
use serde::Deserialize;
use std::sync::Arc;
use tokio::io::AsyncWriteExt;

/// Longest cache key (CircleCI's limit is 900 characters).
pub const MAX_CACHE_KEY: usize = 900;
/// Longest artifact path.
pub const MAX_ARTIFACT_PATH: usize = 1024;
/// JSON bodies of the record endpoints (test results with 1,000 failures and long messages).
const JSON_LIMIT: usize = 16 * 1024 * 1024;
/// Downloads are read from disk in pieces of this size.
const READ_PIECE: usize = 256 * 1024;

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/jobs/{id}/blobs/{sha}", get(download).put(upload))
        .route("/jobs/{id}/blobs/{sha}/upload", get(upload_status))
        .route("/jobs/{id}/workspace", get(layers).post(add_layer))
        .route("/jobs/{id}/caches", get(find_cache).post(save_cache))
        .route("/jobs/{id}/artifacts", post(add_artifact))
        .route("/jobs/{id}/tests", post(add_tests))
        // JSON bodies only: an upload's body is a stream, bounded by its Content-Length.
        .layer(DefaultBodyLimit::max(JSON_LIMIT))
        .layer(axum::middleware::from_fn(crate::server::request_timeout))
        .with_state(state)
}

fn bad(msg: impl Into<String>) -> Failure {
    Failure(StatusCode::BAD_REQUEST, msg.into())
}

fn internal(e: impl std::fmt::Display) -> Failure {
    tracing::error!("blobs: {e}");
    Failure(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
}

/// The job's scope for the calling agent, or why not (401, 403, 404).
async fn scope(state: &AppState, headers: &HeaderMap, raw: &str) -> Result<JobScope, Failure> {
    let agent_id = agent(state, headers).await?;
    let id = job_id(raw)?;
    let attempt = attempt(headers)?;
    match state
        .db(move |s| s.job_scope(id, &agent_id, attempt))
        .await?
    {
        Ok(sc) => Ok(sc),
        Err(l) => Err(refused(id, l)),
    }
}

fn blob_name(sha: &str) -> Result<(), Failure> {
    if is_blob_name(sha) {
        Ok(())
    } else {
        Err(bad(format!(
            "`{}` is not a blob name: expected 64 lower-case hex digits (its SHA-256)",
            crate::printable(&sha.chars().take(80).collect::<String>())
        )))
    }
}

fn ack(received: u64, complete: bool) -> Response {
    Json(BlobAck { received, complete }).into_response()
}

#[derive(Deserialize)]
struct SizeQuery {
    size: Option<u64>,
}

/// `GET /jobs/{id}/blobs/{sha}/upload?size=S`: how much of the blob the coordinator holds for
/// the job's project (where to resume), refusing at once a blob past the quota.
async fn upload_status(
    State(state): State<Arc<AppState>>,
    Path((raw, sha)): Path<(String, String)>,
    Query(q): Query<SizeQuery>,
    headers: HeaderMap,
) -> ApiResult {
    let sc = scope(&state, &headers, &raw).await?;
    blob_name(&sha)?;
    let (pid, name) = (sc.project_id, sha.clone());
    if let Some(size) = state.db(move |s| s.project_blob(pid, &name)).await? {
        return Ok(ack(size, true));
    }
    if let Some(size) = q.size {
        let quota = state.blobs.quota;
        let sc2 = sc.clone();
        if let Some(over) = state.db(move |s| s.check_quota(&sc2, size, quota)).await? {
            return Err(Failure(StatusCode::PAYLOAD_TOO_LARGE, over.to_string()));
        }
    }
    let received = state
        .blobs
        .received(sc.project_id, &sha)
        .map_err(internal)?;
    Ok(ack(received, false))
}

#[derive(Deserialize)]
struct PieceQuery {
    offset: u64,
    size: u64,
}

/// `PUT /jobs/{id}/blobs/{sha}?offset=N&size=S`: a piece of the blob, streamed to its upload
/// file. Idempotent by offset, as log appends are; the last piece checks the digest.
async fn upload(
    State(state): State<Arc<AppState>>,
    Path((raw, sha)): Path<(String, String)>,
    Query(q): Query<PieceQuery>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult {
    let sc = scope(&state, &headers, &raw).await?;
    blob_name(&sha)?;
    let len: u64 = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| {
            Failure(
                StatusCode::LENGTH_REQUIRED,
                "a blob piece needs a Content-Length".into(),
            )
        })?;
    if len > PIECE_LIMIT {
        return Err(Failure(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("a blob piece is at most {PIECE_LIMIT} bytes"),
        ));
    }
    if q.offset.checked_add(len).is_none_or(|end| end > q.size) {
        return Err(bad(format!(
            "a piece of {len} bytes at {} goes past the blob's size {}",
            q.offset, q.size
        )));
    }
    let (pid, name) = (sc.project_id, sha.clone());
    if let Some(size) = state.db(move |s| s.project_blob(pid, &name)).await? {
        return Ok(ack(size, true));
    }
    let quota = state.blobs.quota;
    let sc2 = sc.clone();
    let size = q.size;
    if let Some(over) = state.db(move |s| s.check_quota(&sc2, size, quota)).await? {
        return Err(Failure(StatusCode::PAYLOAD_TOO_LARGE, over.to_string()));
    }
    let lock = state.blobs.upload(pid, &sha);
    let mut up = lock.lock().await;
    // Another request may have finished the blob while this one waited.
    let name = sha.clone();
    if let Some(size) = state.db(move |s| s.project_blob(pid, &name)).await? {
        return Ok(ack(size, true));
    }
    let have = state.blobs.received(pid, &sha).map_err(internal)?;
    if q.offset > have {
        return Ok((
            StatusCode::CONFLICT,
            Json(BlobAck {
                received: have,
                complete: false,
            }),
        )
            .into_response());
    }
    let file = state.blobs.open_part(pid, &sha).map_err(internal)?;
    let mut out = tokio::io::BufWriter::with_capacity(READ_PIECE, tokio::fs::File::from_std(file));
    // A resend overlapping what arrived: its first bytes are already here.
    let mut skip = have - q.offset;
    let mut at = have;
    let mut stream = body.into_data_stream();
    let mut cut = None;
    while let Some(chunk) = stream.next().await {
        let chunk = match chunk {
            Ok(c) => c,
            Err(e) => {
                // The agent went away mid-piece: keep what arrived, it resumes from there.
                cut = Some(e.to_string());
                break;
            }
        };
        let mut data: &[u8] = &chunk;
        if skip > 0 {
            let n = usize::try_from(skip).unwrap_or(usize::MAX).min(data.len());
            data = &data[n..];
            skip -= n as u64;
        }
        if data.is_empty() {
            continue;
        }
        if at + data.len() as u64 > q.size {
            up.reset();
            let _ = out.flush().await;
            return Err(bad("the piece is longer than its Content-Length"));
        }
        if let Err(e) = out.write_all(data).await {
            up.reset();
            return Err(internal(e));
        }
        up.appended(at, data);
        at += data.len() as u64;
    }
    if let Err(e) = out.flush().await {
        up.reset();
        return Err(internal(e));
    }
    drop(out);
    if let Some(e) = cut {
        return Err(bad(format!("the piece was cut at {at} bytes: {e}")));
    }
    if at < q.size {
        return Ok(ack(at, false));
    }
    let mut taken = std::mem::take(&mut *up);
    let files = Arc::clone(&state.blobs);
    let name = sha.clone();
    let verified = tokio::task::spawn_blocking(move || files.verify(pid, &name, &mut taken, size))
        .await
        .map_err(internal)?;
    // Still under the upload's lock: a second request for the same blob waits for the
    // object to be whole, then finds it recorded.
    let done = match verified {
        Ok(()) => state.blobs.publish(pid, &sha).await,
        Err(e) => Err(e),
    };
    drop(up);
    state.blobs.forget(pid, &sha);
    match done {
        Ok(()) => {}
        Err(e @ BlobError::DigestMismatch { .. }) => {
            return Err(Failure(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()))
        }
        Err(e) => return Err(internal(e)),
    }
    let name = sha.clone();
    match state
        .db(move |s| s.add_blob_ref(&sc, &name, size, quota))
        .await?
    {
        Ok(()) => Ok(ack(size, true)),
        Err(over) => Err(Failure(StatusCode::PAYLOAD_TOO_LARGE, over.to_string())),
    }
}

/// `GET /jobs/{id}/blobs/{sha}` (with `Range: bytes=N-` to resume): a blob the job's project
/// holds, streamed from the object store.
async fn download(
    State(state): State<Arc<AppState>>,
    Path((raw, sha)): Path<(String, String)>,
    headers: HeaderMap,
) -> ApiResult {
    let sc = scope(&state, &headers, &raw).await?;
    blob_name(&sha)?;
    let (pid, name) = (sc.project_id, sha.clone());
    // Another project's blob is as absent as one nobody has: no answer tells them apart.
    let Some(size) = state.db(move |s| s.project_blob(pid, &name)).await? else {
        return Err(Failure(
            StatusCode::NOT_FOUND,
            format!("project {} holds no blob {sha}", sc.slug),
        ));
    };
    let (start, end, status) = match headers.get(header::RANGE).and_then(|v| v.to_str().ok()) {
        None => (0, size, StatusCode::OK),
        Some(r) => match parse_range(r, size) {
            Some((a, b)) => (a, b, StatusCode::PARTIAL_CONTENT),
            None => {
                let mut resp = Failure(
                    StatusCode::RANGE_NOT_SATISFIABLE,
                    format!("range `{r}` is outside the blob's {size} bytes"),
                )
                .into_response();
                if let Ok(v) = HeaderValue::from_str(&format!("bytes */{size}")) {
                    resp.headers_mut().insert(header::CONTENT_RANGE, v);
                }
                return Ok(resp);
            }
        },
    };
    let pieces = state.blobs.read(&sha, start, end).await.map_err(internal)?;
    let mut resp = Response::new(Body::from_stream(pieces));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(end - start));
    if let Ok(v) = HeaderValue::from_str(&format!("\"{sha}\"")) {
        h.insert(header::ETAG, v);
    }
    if status == StatusCode::PARTIAL_CONTENT {
        if let Ok(v) = HeaderValue::from_str(&format!("bytes {start}-{}/{size}", end - 1)) {
            h.insert(header::CONTENT_RANGE, v);
        }
    }
    Ok(resp)
}

fn not_uploaded(sha: &str) -> Failure {
    bad(format!(
        "blob {sha} is not uploaded for this project: upload it first"
    ))
}

/// `GET /jobs/{id}/workspace`: the layers of the job's workspace, oldest first.
async fn layers(
    State(state): State<Arc<AppState>>,
    Path(raw): Path<String>,
    headers: HeaderMap,
) -> ApiResult {
    let sc = scope(&state, &headers, &raw).await?;
    let layers = state.db(move |s| s.layers(&sc)).await?;
    Ok(Json(WorkspaceLayers { layers }).into_response())
}

/// `POST /jobs/{id}/workspace` (`WireLayer`): one `persist_to_workspace` of the job.
async fn add_layer(
    State(state): State<Arc<AppState>>,
    Path(raw): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult {
    let sc = scope(&state, &headers, &raw).await?;
    let layer: WireLayer = json_body(&body)?;
    blob_name(&layer.blob)?;
    let sha = layer.blob.clone();
    if !state.db(move |s| s.add_layer(&sc, &sha)).await? {
        return Err(not_uploaded(&layer.blob));
    }
    Ok(Json(serde_json::json!({})).into_response())
}

fn check_text(what: &str, s: &str, max: usize) -> Result<(), Failure> {
    if s.is_empty() || s.len() > max || s.chars().any(crate::is_unsafe_char) {
        return Err(bad(format!(
            "{what}: expected 1 to {max} bytes without control characters"
        )));
    }
    Ok(())
}

#[derive(Deserialize)]
struct PrefixQuery {
    prefix: String,
}

/// `GET /jobs/{id}/caches?prefix=K`: the project's newest cache whose key starts with K.
async fn find_cache(
    State(state): State<Arc<AppState>>,
    Path(raw): Path<String>,
    Query(q): Query<PrefixQuery>,
    headers: HeaderMap,
) -> ApiResult {
    let sc = scope(&state, &headers, &raw).await?;
    check_text("a cache key", &q.prefix, MAX_CACHE_KEY)?;
    let pid = sc.project_id;
    let cache = state.db(move |s| s.find_cache(pid, &q.prefix)).await?;
    Ok(Json(CacheLookup { cache }).into_response())
}

/// `POST /jobs/{id}/caches` (`WireCache`): save a cache; never for a forked pull request.
async fn save_cache(
    State(state): State<Arc<AppState>>,
    Path(raw): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult {
    let sc = scope(&state, &headers, &raw).await?;
    if sc.fork {
        return Err(Failure(
            StatusCode::FORBIDDEN,
            format!(
                "job {} builds a pull request from a fork: it reads the project's caches and \
                 never writes them",
                sc.job_id
            ),
        ));
    }
    let c: WireCache = json_body(&body)?;
    check_text("a cache key", &c.key, MAX_CACHE_KEY)?;
    blob_name(&c.blob)?;
    let (key, sha) = (c.key.clone(), c.blob.clone());
    match state.db(move |s| s.save_cache(&sc, &key, &sha)).await? {
        Some(saved) => Ok(Json(CacheSaved { saved }).into_response()),
        None => Err(not_uploaded(&c.blob)),
    }
}

/// An artifact path: relative, `/`-separated plain components.
fn check_artifact_path(p: &str) -> Result<(), Failure> {
    check_text("an artifact path", p, MAX_ARTIFACT_PATH)?;
    if p.starts_with('/')
        || p.contains('\\')
        || p.split('/').any(|c| c.is_empty() || c == "." || c == "..")
    {
        return Err(bad(format!(
            "artifact path `{}`: expected a relative path of plain names",
            crate::printable(p)
        )));
    }
    Ok(())
}

/// `POST /jobs/{id}/artifacts` (`WireArtifact`): name an uploaded blob as an artifact.
async fn add_artifact(
    State(state): State<Arc<AppState>>,
    Path(raw): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult {
    let sc = scope(&state, &headers, &raw).await?;
    let a: WireArtifact = json_body(&body)?;
    check_artifact_path(&a.path)?;
    blob_name(&a.blob)?;
    let (path, sha) = (a.path.clone(), a.blob.clone());
    if !state.db(move |s| s.add_artifact(&sc, &path, &sha)).await? {
        return Err(not_uploaded(&a.blob));
    }
    Ok(Json(serde_json::json!({})).into_response())
}

/// `POST /jobs/{id}/tests` (`WireTestResults`): one `store_test_results` step's results.
async fn add_tests(
    State(state): State<Arc<AppState>>,
    Path(raw): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult {
    let sc = scope(&state, &headers, &raw).await?;
    let mut t: WireTestResults = json_body(&body)?;
    t.failed.truncate(MAX_FAILED_TESTS);
    state.db(move |s| s.add_test_results(&sc, &t)).await?;
    Ok(Json(serde_json::json!({})).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn artifact_paths_are_relative_plain_names() {
        assert!(check_artifact_path("reports/index.html").is_ok());
        for bad in ["/etc/passwd", "../x", "a//b", "a/./b", "a\\b", "", "a\nb"] {
            assert!(check_artifact_path(bad).is_err(), "{bad:?}");
        }
    }
}

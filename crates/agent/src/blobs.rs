//! The agent's side of the store over the protocol (v2, `docs/protocol.md`, *Store*): a
//! [`Remote`] bound to one claimed job, over HTTP. Blobs are streamed from and to files in
//! pieces (never held whole in memory), uploads resume from what the coordinator holds and
//! downloads from what the local file holds (`Range`), and connection errors are retried
//! with backoff before a step gives up.

use super::client::{describe, Backoff, Client};
use bosun_core::protocol::{
    BlobAck, CacheLookup, CacheSaved, WireArtifact, WireCache, WireLayer, WireTestResults,
    WorkspaceLayers, ATTEMPT_HEADER, MAX_BLOB_PIECE,
};
use bosun_core::store::remote::{Remote, RemoteError, Uploaded};
use bosun_core::store::{BlobId, CacheEntry, Layer};
use futures_util::StreamExt;
use reqwest::{Method, StatusCode};
use std::path::Path;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

/// Tries of a request that meets connection errors or 5xx (with backoff: about 30 s in all).
const TRIES: u32 = 7;
/// Files are read and written in pieces of this size.
const PIECE: usize = 256 * 1024;

/// The store of one claimed job on its coordinator.
pub struct JobStore {
    client: Client,
    job: String,
    attempt: u32,
    cache_writes: bool,
    /// Pieces of an upload (the protocol's largest by default; tests make it smaller).
    piece: u64,
}

/// An answer: its status and body (read whole: JSON only).
type Answer = (StatusCode, bytes::Bytes);

fn transient(s: StatusCode) -> bool {
    s.is_server_error() || s == StatusCode::TOO_MANY_REQUESTS || s == StatusCode::REQUEST_TIMEOUT
}

fn error_text(body: &[u8]) -> String {
    serde_json::from_slice::<bosun_core::protocol::ApiError>(body)
        .map(|e| e.error)
        .unwrap_or_else(|_| String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned())
}

/// The error for a final (non-retried) failure answer.
fn refusal(status: StatusCode, body: &[u8]) -> RemoteError {
    let text = error_text(body);
    match status {
        StatusCode::PAYLOAD_TOO_LARGE => RemoteError::Quota(text),
        StatusCode::UNPROCESSABLE_ENTITY => RemoteError::Corrupt(text),
        StatusCode::NOT_FOUND => RemoteError::NotFound(text),
        StatusCode::FORBIDDEN | StatusCode::UNAUTHORIZED => RemoteError::Refused(text),
        s => RemoteError::Protocol(format!("{s}: {text}")),
    }
}

fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, RemoteError> {
    serde_json::from_slice(body)
        .map_err(|e| RemoteError::Protocol(format!("{e}: {}", error_text(body))))
}

fn local(path: &Path) -> impl FnOnce(std::io::Error) -> RemoteError + '_ {
    move |source| {
        RemoteError::Local(bosun_core::store::StoreError::Io {
            path: path.display().to_string(),
            source,
        })
    }
}

/// `len` bytes of the file at `path` from `offset`, read piece by piece as the request goes.
async fn file_body(path: &Path, offset: u64, len: u64) -> Result<reqwest::Body, RemoteError> {
    let mut f = tokio::fs::File::open(path).await.map_err(local(path))?;
    f.seek(std::io::SeekFrom::Start(offset))
        .await
        .map_err(local(path))?;
    let pieces = futures_util::stream::try_unfold((f, len), |(mut f, left)| async move {
        if left == 0 {
            return Ok(None);
        }
        let n = usize::try_from(left).unwrap_or(usize::MAX).min(PIECE);
        let mut buf = vec![0u8; n];
        let got = f.read(&mut buf).await?;
        if got == 0 {
            return Err(std::io::Error::other("the file ended early"));
        }
        buf.truncate(got);
        Ok::<_, std::io::Error>(Some((bytes::Bytes::from(buf), (f, left - got as u64))))
    });
    Ok(reqwest::Body::wrap_stream(pieces))
}

impl JobStore {
    pub fn new(client: Client, job: &str, attempt: u32, cache_writes: bool) -> JobStore {
        JobStore {
            client,
            job: job.to_owned(),
            attempt,
            cache_writes,
            piece: MAX_BLOB_PIECE,
        }
    }

    /// Upload in pieces of `piece` bytes (at most the protocol's largest).
    pub fn with_piece(mut self, piece: u64) -> JobStore {
        self.piece = piece.clamp(1, MAX_BLOB_PIECE);
        self
    }

    fn request(&self, method: Method, rest: &str) -> reqwest::RequestBuilder {
        let mut r = self
            .client
            .request(method, &format!("/jobs/{}{rest}", self.job));
        if self.attempt > 0 {
            r = r.header(ATTEMPT_HEADER, self.attempt.to_string());
        }
        r
    }

    /// Send once; `Err` only for a connection error (the body is read whole: JSON answers).
    async fn once(
        &self,
        req: reqwest::RequestBuilder,
        timeout: Duration,
    ) -> Result<Answer, String> {
        let resp = req
            .timeout(timeout)
            .send()
            .await
            .map_err(|e| describe(&e))?;
        let status = resp.status();
        let body = resp.bytes().await.map_err(|e| describe(&e))?;
        Ok((status, body))
    }

    /// A JSON call, retried on connection errors and 5xx; a failure answer is an error.
    async fn call<T: serde::de::DeserializeOwned>(
        &self,
        make: impl Fn() -> reqwest::RequestBuilder,
    ) -> Result<T, RemoteError> {
        let mut backoff = Backoff::default();
        let mut last = String::new();
        for _ in 0..TRIES {
            match self.once(make(), Duration::from_secs(60)).await {
                Ok((s, body)) if s.is_success() => return parse(&body),
                Ok((s, body)) if !transient(s) => return Err(refusal(s, &body)),
                Ok((s, body)) => last = format!("{s}: {}", error_text(&body)),
                Err(e) => last = e,
            }
            tokio::time::sleep(backoff.next_delay()).await;
        }
        Err(RemoteError::Transport(last))
    }

    /// One upload pass from what the coordinator holds; `Err(Some)` a final error,
    /// `Err(None)` a connection problem worth another pass.
    async fn upload_pass(
        &self,
        file: &Path,
        blob: &BlobId,
        size: u64,
        sent: &mut u64,
        last: &mut String,
    ) -> Result<Uploaded, Option<RemoteError>> {
        let status = self
            .once(
                self.request(
                    Method::GET,
                    &format!("/blobs/{}/upload?size={size}", blob.0),
                ),
                Duration::from_secs(60),
            )
            .await;
        let mut at = match status {
            Ok((s, body)) if s.is_success() => {
                let a: BlobAck = parse(&body).map_err(Some)?;
                if a.complete {
                    return Ok(Uploaded {
                        sent: *sent,
                        already: *sent == 0,
                    });
                }
                a.received
            }
            Ok((s, body)) if !transient(s) => return Err(Some(refusal(s, &body))),
            Ok((s, body)) => {
                *last = format!("{s}: {}", error_text(&body));
                return Err(None);
            }
            Err(e) => {
                *last = e;
                return Err(None);
            }
        };
        loop {
            let n = self.piece.min(size.saturating_sub(at));
            let body = file_body(file, at, n).await.map_err(Some)?;
            let req = self
                .request(
                    Method::PUT,
                    &format!("/blobs/{}?offset={at}&size={size}", blob.0),
                )
                .header("content-type", "application/octet-stream")
                .header("content-length", n)
                .body(body);
            // A piece is at most 32 MiB: 120 s is a 0.27 MB/s link.
            match self.once(req, Duration::from_secs(120)).await {
                Ok((s, body)) if s.is_success() || s == StatusCode::CONFLICT => {
                    let a: BlobAck = parse(&body).map_err(Some)?;
                    if s.is_success() {
                        *sent += n;
                    }
                    if a.complete {
                        return Ok(Uploaded {
                            sent: *sent,
                            already: false,
                        });
                    }
                    if a.received >= size {
                        return Err(Some(RemoteError::Protocol(format!(
                            "the coordinator holds all {size} bytes of {} but says it is not whole",
                            blob.0
                        ))));
                    }
                    at = a.received;
                }
                Ok((s, body)) if !transient(s) => return Err(Some(refusal(s, &body))),
                Ok((s, body)) => {
                    *last = format!("{s}: {}", error_text(&body));
                    return Err(None);
                }
                Err(e) => {
                    *last = e;
                    return Err(None);
                }
            }
        }
    }

    /// One download pass into `part` from its length; `Err(None)`: try again.
    async fn download_pass(
        &self,
        blob: &BlobId,
        size: u64,
        part: &Path,
        last: &mut String,
    ) -> Result<(), Option<RemoteError>> {
        let have = match tokio::fs::metadata(part).await {
            Ok(m) if m.len() <= size => m.len(),
            Ok(_) => {
                let _ = tokio::fs::remove_file(part).await;
                0
            }
            Err(_) => 0,
        };
        if have == size {
            return Ok(());
        }
        let mut req = self.request(Method::GET, &format!("/blobs/{}", blob.0));
        if have > 0 {
            req = req.header("range", format!("bytes={have}-"));
        }
        // No overall timeout (a large blob takes its time); a stalled read is cut below.
        let resp = match req.send().await {
            Ok(r) => r,
            Err(e) => {
                *last = describe(&e);
                return Err(None);
            }
        };
        let s = resp.status();
        let append = match s {
            StatusCode::PARTIAL_CONTENT => true,
            StatusCode::OK => false,
            StatusCode::RANGE_NOT_SATISFIABLE => {
                let _ = tokio::fs::remove_file(part).await;
                *last = "the partial download did not match the blob".into();
                return Err(None);
            }
            s => {
                let body = resp.bytes().await.unwrap_or_default();
                if transient(s) {
                    *last = format!("{s}: {}", error_text(&body));
                    return Err(None);
                }
                return Err(Some(refusal(s, &body)));
            }
        };
        let file = tokio::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .append(append)
            .truncate(!append)
            .open(part)
            .await
            .map_err(|e| Some(local(part)(e)))?;
        let mut out = tokio::io::BufWriter::with_capacity(PIECE, file);
        let mut stream = resp.bytes_stream();
        loop {
            let next = tokio::time::timeout(Duration::from_secs(60), stream.next()).await;
            match next {
                Ok(Some(Ok(chunk))) => out
                    .write_all(&chunk)
                    .await
                    .map_err(|e| Some(local(part)(e)))?,
                Ok(None) => break,
                Ok(Some(Err(e))) => {
                    *last = describe(&e);
                    let _ = out.flush().await;
                    return Err(None);
                }
                Err(_) => {
                    *last = "no data for 60 s".into();
                    let _ = out.flush().await;
                    return Err(None);
                }
            }
        }
        out.flush().await.map_err(|e| Some(local(part)(e)))?;
        Ok(())
    }
}

#[async_trait::async_trait]
impl Remote for JobStore {
    fn cache_writes(&self) -> bool {
        self.cache_writes
    }

    async fn upload(&self, file: &Path, blob: &BlobId, size: u64) -> Result<Uploaded, RemoteError> {
        let mut backoff = Backoff::default();
        let mut sent = 0;
        let mut last = String::new();
        for _ in 0..TRIES {
            match self
                .upload_pass(file, blob, size, &mut sent, &mut last)
                .await
            {
                Ok(u) => return Ok(u),
                Err(Some(e)) => return Err(e),
                // Ask again where to resume: the coordinator keeps what arrived.
                Err(None) => tokio::time::sleep(backoff.next_delay()).await,
            }
        }
        Err(RemoteError::Transport(last))
    }

    async fn download(&self, blob: &BlobId, size: u64, part: &Path) -> Result<(), RemoteError> {
        let mut backoff = Backoff::default();
        let mut last = String::new();
        for _ in 0..TRIES {
            match self.download_pass(blob, size, part, &mut last).await {
                Ok(()) => return Ok(()),
                Err(Some(e)) => return Err(e),
                Err(None) => tokio::time::sleep(backoff.next_delay()).await,
            }
        }
        Err(RemoteError::Transport(last))
    }

    async fn add_layer(&self, blob: &BlobId, size: u64) -> Result<(), RemoteError> {
        let layer = WireLayer {
            job: String::new(),
            blob: blob.0.clone(),
            size,
        };
        let _: serde_json::Value = self
            .call(|| self.request(Method::POST, "/workspace").json(&layer))
            .await?;
        Ok(())
    }

    async fn layers(&self) -> Result<Vec<Layer>, RemoteError> {
        let w: WorkspaceLayers = self
            .call(|| self.request(Method::GET, "/workspace"))
            .await?;
        Ok(w.layers
            .into_iter()
            .map(|l| Layer {
                job: l.job,
                blob: BlobId(l.blob),
                size: l.size,
            })
            .collect())
    }

    async fn find_cache(&self, prefix: &str) -> Result<Option<CacheEntry>, RemoteError> {
        let c: CacheLookup = self
            .call(|| {
                self.request(Method::GET, "/caches")
                    .query(&[("prefix", prefix)])
            })
            .await?;
        Ok(c.cache.map(|c| CacheEntry {
            key: c.key,
            blob: BlobId(c.blob),
            size: c.size,
            created_ns: u128::try_from(c.created_ms).unwrap_or(0) * 1_000_000,
        }))
    }

    async fn save_cache(&self, key: &str, blob: &BlobId, size: u64) -> Result<bool, RemoteError> {
        let c = WireCache {
            key: key.to_owned(),
            blob: blob.0.clone(),
            size,
            created_ms: 0,
        };
        let s: CacheSaved = self
            .call(|| self.request(Method::POST, "/caches").json(&c))
            .await?;
        Ok(s.saved)
    }

    async fn add_artifact(&self, path: &str, blob: &BlobId, size: u64) -> Result<(), RemoteError> {
        let a = WireArtifact {
            path: path.to_owned(),
            blob: blob.0.clone(),
            size,
        };
        let _: serde_json::Value = self
            .call(|| self.request(Method::POST, "/artifacts").json(&a))
            .await?;
        Ok(())
    }

    async fn test_results(&self, results: &WireTestResults) -> Result<(), RemoteError> {
        let _: serde_json::Value = self
            .call(|| self.request(Method::POST, "/tests").json(results))
            .await?;
        Ok(())
    }
}

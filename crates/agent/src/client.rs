//! The agent's side of protocol v1 (see [`bosun_core::protocol`]), over reqwest.

use bosun_core::protocol::*;
use reqwest::StatusCode;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum ApiErr {
    /// 401: the token is unknown or revoked; the agent must stop.
    #[error("unauthorized: {0}")]
    Unauthorized(String),
    /// 409 with the coordinator's idea of where to resume (body kept raw).
    #[error("conflict")]
    Conflict(bytes::Bytes),
    /// 404/410: the coordinator does not know this job (any more).
    #[error("not found: {0}")]
    NotFound(String),
    /// Connection errors, timeouts, 5xx: try again later.
    #[error("{0}")]
    Transient(String),
    /// Any other answer: a bug on one side; retried slowly.
    #[error("{0}")]
    Other(String),
}

impl ApiErr {
    pub fn is_unauthorized(&self) -> bool {
        matches!(self, ApiErr::Unauthorized(_))
    }
}

#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Client {
    /// A client of `coordinator_url` trusting the system's CA certificates and `extra_cas`.
    pub fn new(
        coordinator_url: &str,
        extra_cas: Vec<reqwest::Certificate>,
        token: &str,
    ) -> Result<Client, String> {
        let mut builder = reqwest::Client::builder();
        for ca in extra_cas {
            builder = builder.add_root_certificate(ca);
        }
        let http = builder
            .connect_timeout(Duration::from_secs(5))
            .user_agent(concat!("bosun-agent/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("http client: {e}"))?;
        Ok(Client {
            http,
            base: format!("{}{API_PREFIX}", coordinator_url.trim_end_matches('/')),
            token: token.to_owned(),
        })
    }

    pub fn with_token(&self, token: &str) -> Client {
        Client {
            token: token.to_owned(),
            ..self.clone()
        }
    }

    async fn send(
        &self,
        req: reqwest::RequestBuilder,
        timeout: Duration,
    ) -> Result<(StatusCode, bytes::Bytes), ApiErr> {
        let resp = req
            .bearer_auth(&self.token)
            .timeout(timeout)
            .send()
            .await
            .map_err(|e| ApiErr::Transient(describe(&e)))?;
        let status = resp.status();
        let body = resp
            .bytes()
            .await
            .map_err(|e| ApiErr::Transient(describe(&e)))?;
        let text = || {
            serde_json::from_slice::<ApiError>(&body)
                .map(|e| e.error)
                .unwrap_or_else(|_| String::from_utf8_lossy(&body).into_owned())
        };
        match status {
            s if s.is_success() => Ok((s, body)),
            StatusCode::UNAUTHORIZED => Err(ApiErr::Unauthorized(text())),
            StatusCode::CONFLICT => Err(ApiErr::Conflict(body)),
            // 403 on a job: the lease lapsed, or the job moved on to another attempt or agent;
            // nothing sent for it will ever be accepted.
            StatusCode::NOT_FOUND | StatusCode::GONE | StatusCode::FORBIDDEN => {
                Err(ApiErr::NotFound(text()))
            }
            s if s.is_server_error()
                || s == StatusCode::TOO_MANY_REQUESTS
                || s == StatusCode::REQUEST_TIMEOUT =>
            {
                Err(ApiErr::Transient(format!("{s}: {}", text())))
            }
            s => Err(ApiErr::Other(format!("{s}: {}", text()))),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// A request to `path` (under the API prefix) carrying the agent token, for callers that
    /// read the answer themselves (the store's streamed blobs: `super::blobs`).
    pub(crate) fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, self.url(path))
            .bearer_auth(&self.token)
    }

    pub async fn register(&self, req: &RegisterRequest) -> Result<RegisterResponse, ApiErr> {
        let (_, body) = self
            .send(
                self.http.post(self.url("/agents/register")).json(req),
                Duration::from_secs(30),
            )
            .await?;
        parse(&body)
    }

    /// Long poll: `None` when nothing was queued within `wait`.
    pub async fn claim(
        &self,
        req: &ClaimRequest,
        wait: Duration,
    ) -> Result<Option<ClaimResponse>, ApiErr> {
        let (status, body) = self
            .send(
                self.http
                    .post(self.url(&format!("/jobs/claim?wait={}", wait.as_secs())))
                    .json(req),
                wait + Duration::from_secs(15),
            )
            .await?;
        if status == StatusCode::NO_CONTENT || body.is_empty() {
            return Ok(None);
        }
        let claim = parse(&body).map(Some);
        // The answer's bytes hold the job's private keys and secrets in JSON: wipe them once
        // parsed (when no one else holds the buffer, as after a whole-body read).
        if let Ok(mut raw) = body.try_into_mut() {
            use zeroize::Zeroize;
            raw.as_mut().zeroize();
        }
        claim
    }

    pub async fn heartbeat(&self, hb: &Heartbeat) -> Result<HeartbeatResponse, ApiErr> {
        let (_, body) = self
            .send(
                self.http.post(self.url("/agents/heartbeat")).json(hb),
                Duration::from_secs(15),
            )
            .await?;
        parse(&body)
    }

    /// The control channel's long poll: `None` when nothing new came within `wait`.
    pub async fn control(
        &self,
        req: &ControlRequest,
        wait: Duration,
    ) -> Result<Option<ControlResponse>, ApiErr> {
        let (status, body) = self
            .send(
                self.http
                    .post(self.url(&format!("/agents/control?wait={}", wait.as_secs())))
                    .json(req),
                wait + Duration::from_secs(15),
            )
            .await?;
        if status == StatusCode::NO_CONTENT || body.is_empty() {
            return Ok(None);
        }
        parse(&body).map(Some)
    }

    /// Append log bytes at `offset`; 409 comes back as `Err(Conflict)` with a [`LogAck`].
    pub async fn append_log(
        &self,
        job: &str,
        attempt: u32,
        offset: u64,
        body: reqwest::Body,
        len: u64,
    ) -> Result<LogAck, ApiErr> {
        let (_, body) = self
            .send(
                with_attempt(
                    self.http
                        .post(self.url(&format!("/jobs/{job}/log?offset={offset}"))),
                    attempt,
                )
                .header("content-type", "application/octet-stream")
                // Known length: the body is streamed from the spool, not chunk-encoded.
                .header("content-length", len)
                .body(body),
                Duration::from_secs(60),
            )
            .await?;
        parse(&body)
    }

    pub async fn events(
        &self,
        job: &str,
        attempt: u32,
        batch: &EventBatch,
    ) -> Result<EventAck, ApiErr> {
        let (_, body) = self
            .send(
                with_attempt(
                    self.http.post(self.url(&format!("/jobs/{job}/events"))),
                    attempt,
                )
                .json(batch),
                Duration::from_secs(30),
            )
            .await?;
        parse(&body)
    }

    pub async fn finish(&self, job: &str, attempt: u32, req: &FinishRequest) -> Result<(), ApiErr> {
        self.send(
            with_attempt(
                self.http.post(self.url(&format!("/jobs/{job}/finish"))),
                attempt,
            )
            .json(req),
            Duration::from_secs(30),
        )
        .await
        .map(|_| ())
    }
}

/// Name the attempt a job write belongs to (0: a spool from before attempts were recorded).
fn with_attempt(req: reqwest::RequestBuilder, attempt: u32) -> reqwest::RequestBuilder {
    if attempt == 0 {
        req
    } else {
        req.header(bosun_core::protocol::ATTEMPT_HEADER, attempt.to_string())
    }
}

fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiErr> {
    serde_json::from_slice(body).map_err(|e| {
        ApiErr::Other(format!(
            "unexpected answer ({e}): {}",
            String::from_utf8_lossy(&body[..body.len().min(200)])
        ))
    })
}

pub(crate) fn describe(e: &reqwest::Error) -> String {
    let mut s = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

/// Exponential backoff with jitter: 0.5 s doubling to 30 s.
pub struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            next: Duration::from_millis(500),
        }
    }
}

impl Backoff {
    pub fn reset(&mut self) {
        self.next = Duration::from_millis(500);
    }

    /// The next wait: between half and all of the current step.
    pub fn next_delay(&mut self) -> Duration {
        let cur = self.next;
        self.next = (cur * 2).min(Duration::from_secs(30));
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let half = cur / 2;
        let jitter = half.as_millis() as u64 * u64::from(nanos % 1000) / 1000;
        half + Duration::from_millis(jitter)
    }
}

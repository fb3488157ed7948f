//! The agent's `/metrics` (OpenMetrics text, which Prometheus scrapes), `/healthz` and
//! `/readyz`, served on `metrics_listen` from agent.toml (a local address: nothing here is
//! for the outside).
//!
//! * `bosun_agent_jobs_running` — jobs this agent runs now;
//! * `bosun_agent_jobs_finished_total{status}` — jobs ended, by final status;
//! * `bosun_agent_step_duration_seconds` — histogram of step durations;
//! * `bosun_agent_spool_bytes_pending` — bytes spooled and not yet acknowledged (the spool
//!   directory's size: a coordinator outage makes it grow);
//! * `bosun_agent_claim_latency_seconds` — from a claim request to the answer that brought a
//!   job (a long poll waits up to `claim_wait_secs` when the queue is empty);
//! * `bosun_agent_engine_errors_total{kind}` — failed calls to the Docker engine (`connect`,
//!   `image_missing`, `engine`, `protocol`).

use bosun_core::executor::{
    Attached, ByteStream, ContainerSpec, Exec, ExecSpec, Executor, ExecutorError, ImageInfo,
    Interactive, RegistryAuth, ResourceKind, TarStream, TtySize,
};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::path::{Path, PathBuf};
use std::sync::Arc;

type Labels = Vec<(String, String)>;

pub struct AgentMetrics {
    registry: Registry,
    running: Gauge,
    spool_bytes: Gauge,
    finished: Family<Labels, Counter>,
    step_seconds: Histogram,
    claim_seconds: Histogram,
    engine_errors: Family<Labels, Counter>,
}

impl Default for AgentMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl AgentMetrics {
    pub fn new() -> AgentMetrics {
        let mut registry = Registry::with_prefix("bosun_agent");
        let running = Gauge::default();
        let spool_bytes = Gauge::default();
        let finished = Family::<Labels, Counter>::default();
        // 0.1 s … ~3.6 h.
        let step_seconds = Histogram::new(exponential_buckets(0.1, 4.0, 9));
        // 5 ms … ~40 s.
        let claim_seconds = Histogram::new(exponential_buckets(0.005, 3.0, 9));
        let engine_errors = Family::<Labels, Counter>::default();
        registry.register("jobs_running", "Jobs running now", running.clone());
        registry.register(
            "jobs_finished",
            "Jobs ended, by final status",
            finished.clone(),
        );
        registry.register(
            "step_duration_seconds",
            "Step durations",
            step_seconds.clone(),
        );
        registry.register(
            "spool_bytes_pending",
            "Bytes spooled and not yet acknowledged by the coordinator",
            spool_bytes.clone(),
        );
        registry.register(
            "claim_latency_seconds",
            "From a claim request to the answer that brought a job",
            claim_seconds.clone(),
        );
        registry.register(
            "engine_errors",
            "Failed calls to the Docker engine, by kind",
            engine_errors.clone(),
        );
        AgentMetrics {
            registry,
            running,
            spool_bytes,
            finished,
            step_seconds,
            claim_seconds,
            engine_errors,
        }
    }

    pub fn job_finished(&self, status: impl std::fmt::Display) {
        self.finished
            .get_or_create(&vec![("status".to_owned(), status.to_string())])
            .inc();
    }

    pub fn step_finished(&self, duration_ms: u64) {
        self.step_seconds.observe(duration_ms as f64 / 1000.0);
    }

    pub fn claimed(&self, latency: std::time::Duration) {
        self.claim_seconds.observe(latency.as_secs_f64());
    }

    fn engine_error(&self, e: &ExecutorError) {
        let kind = match e {
            ExecutorError::Connect { .. } => "connect",
            ExecutorError::ImageMissing { .. } => "image_missing",
            ExecutorError::PullRefused { .. } => "pull_refused",
            ExecutorError::Engine { .. } => "engine",
            ExecutorError::Protocol { .. } => "protocol",
        };
        self.engine_errors
            .get_or_create(&vec![("kind".to_owned(), kind.to_owned())])
            .inc();
    }

    /// The text of `/metrics`, with the gauges read now.
    pub fn render(&self, running: usize, spool_bytes: u64) -> String {
        self.running.set(i64::try_from(running).unwrap_or(i64::MAX));
        self.spool_bytes
            .set(i64::try_from(spool_bytes).unwrap_or(i64::MAX));
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::warn!("encoding metrics: {e}");
        }
        out
    }
}

/// Bytes of the files under `dir` (the spool: what is not acknowledged yet).
pub fn dir_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            match e.file_type() {
                Ok(t) if t.is_dir() => stack.push(e.path()),
                Ok(t) if t.is_file() => total += e.metadata().map(|m| m.len()).unwrap_or(0),
                _ => {}
            }
        }
    }
    total
}

/// What the health endpoints ask of the agent.
pub trait Health: Send + Sync + 'static {
    /// Jobs running now.
    fn running(&self) -> usize;
    /// The spool directory.
    fn spool_dir(&self) -> PathBuf;
    /// Ready to take jobs: registered, not draining, not stopping on a fatal error.
    fn ready(&self) -> Result<(), String>;
    fn metrics(&self) -> &AgentMetrics;
}

/// Serve `/metrics`, `/healthz` and `/readyz` on `listener` until `stop`, then let the
/// requests under way finish. Plain hyper rather than a router framework, so that the agent
/// builds without the coordinator's web stack.
pub async fn serve(
    listener: tokio::net::TcpListener,
    health: Arc<dyn Health>,
    stop: tokio_util::sync::CancellationToken,
) {
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let stream = tokio::select! {
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!("metrics listener: accept failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = stop.cancelled() => break,
        };
        let health = Arc::clone(&health);
        let stop = stop.clone();
        connections.spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let health = Arc::clone(&health);
                async move { Ok::<_, std::convert::Infallible>(respond(&*health, &req).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            tokio::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => if let Err(e) = r {
                    tracing::debug!("metrics connection: {e}");
                },
                () = stop.cancelled() => {
                    // Finish the request under way, then close.
                    conn.as_mut().graceful_shutdown();
                    if let Err(e) = conn.await {
                        tracing::debug!("metrics connection: {e}");
                    }
                }
            }
        });
        // Reap the connections that ended, so the set holds only the open ones.
        while connections.try_join_next().is_some() {}
    }
    while connections.join_next().await.is_some() {}
}

type Reply = hyper::Response<http_body_util::Full<bytes::Bytes>>;

/// The answer to one request: GET (or HEAD, whose body hyper leaves out) of the three
/// paths; 405 for another method on them, 404 elsewhere.
async fn respond<B>(health: &dyn Health, req: &hyper::Request<B>) -> Reply {
    use hyper::{Method, StatusCode};
    const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
    const JSON: &str = "application/json";
    let path = req.uri().path();
    if !matches!(path, "/metrics" | "/healthz" | "/readyz") {
        return reply(StatusCode::NOT_FOUND, None, Vec::new());
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = reply(StatusCode::METHOD_NOT_ALLOWED, None, Vec::new());
        r.headers_mut().insert(
            hyper::header::ALLOW,
            hyper::header::HeaderValue::from_static("GET,HEAD"),
        );
        return r;
    }
    match path {
        "/metrics" => {
            let dir = health.spool_dir();
            let spool = tokio::task::spawn_blocking(move || dir_bytes(&dir))
                .await
                .unwrap_or(0);
            let text = health.metrics().render(health.running(), spool);
            reply(StatusCode::OK, Some(OPENMETRICS), text.into_bytes())
        }
        "/healthz" => reply(
            StatusCode::OK,
            Some(JSON),
            serde_json::json!({"status": "ok"}).to_string().into_bytes(),
        ),
        _ => match health.ready() {
            Ok(()) => reply(
                StatusCode::OK,
                Some(JSON),
                serde_json::json!({"ready": true}).to_string().into_bytes(),
            ),
            Err(why) => reply(
                StatusCode::SERVICE_UNAVAILABLE,
                Some(JSON),
                serde_json::to_vec(&bosun_core::protocol::ApiError { error: why })
                    .unwrap_or_default(),
            ),
        },
    }
}

fn reply(status: hyper::StatusCode, content_type: Option<&'static str>, body: Vec<u8>) -> Reply {
    let mut r = hyper::Response::new(http_body_util::Full::new(bytes::Bytes::from(body)));
    *r.status_mut() = status;
    if let Some(t) = content_type {
        r.headers_mut().insert(
            hyper::header::CONTENT_TYPE,
            hyper::header::HeaderValue::from_static(t),
        );
    }
    r
}

/// An [`Executor`] that counts the engine's errors in [`AgentMetrics`].
pub struct Metered {
    inner: Arc<dyn Executor>,
    metrics: Arc<AgentMetrics>,
}

impl Metered {
    pub fn new(inner: Arc<dyn Executor>, metrics: Arc<AgentMetrics>) -> Metered {
        Metered { inner, metrics }
    }

    fn count<T>(&self, r: Result<T, ExecutorError>) -> Result<T, ExecutorError> {
        if let Err(e) = &r {
            self.metrics.engine_error(e);
        }
        r
    }
}

#[async_trait::async_trait]
impl Executor for Metered {
    async fn image_info(
        &self,
        image: &str,
        auth: Option<&RegistryAuth>,
        progress: bosun_core::executor::PullProgress<'_>,
    ) -> Result<ImageInfo, ExecutorError> {
        self.count(self.inner.image_info(image, auth, progress).await)
    }
    async fn create(&self, spec: &ContainerSpec) -> Result<String, ExecutorError> {
        self.count(self.inner.create(spec).await)
    }
    fn shares_host_paths(&self) -> bool {
        self.inner.shares_host_paths()
    }
    async fn start(&self, container: &str) -> Result<Attached, ExecutorError> {
        self.count(self.inner.start(container).await)
    }
    async fn wait(&self, container: &str) -> Result<i64, ExecutorError> {
        self.count(self.inner.wait(container).await)
    }
    async fn upload_tar(
        &self,
        container: &str,
        dest: &str,
        tar: TarStream,
    ) -> Result<(), ExecutorError> {
        self.count(self.inner.upload_tar(container, dest, tar).await)
    }
    async fn download_tar(
        &self,
        container: &str,
        path: &str,
    ) -> Result<Option<ByteStream>, ExecutorError> {
        self.count(self.inner.download_tar(container, path).await)
    }
    async fn exec(&self, container: &str, spec: ExecSpec) -> Result<Exec, ExecutorError> {
        self.count(self.inner.exec(container, spec).await)
    }
    async fn exec_interactive(
        &self,
        container: &str,
        spec: ExecSpec,
        tty: Option<TtySize>,
    ) -> Result<Interactive, ExecutorError> {
        self.count(self.inner.exec_interactive(container, spec, tty).await)
    }
    async fn remove(&self, container: &str) -> Result<(), ExecutorError> {
        self.count(self.inner.remove(container).await)
    }
    async fn pause(&self, container: &str) -> Result<(), ExecutorError> {
        self.count(self.inner.pause(container).await)
    }
    async fn unpause(&self, container: &str) -> Result<(), ExecutorError> {
        self.count(self.inner.unpause(container).await)
    }
    async fn create_network(
        &self,
        name: &str,
        labels: &[(String, String)],
    ) -> Result<String, ExecutorError> {
        self.count(self.inner.create_network(name, labels).await)
    }
    async fn remove_network(&self, network: &str) -> Result<(), ExecutorError> {
        self.count(self.inner.remove_network(network).await)
    }
    async fn remove_volume(&self, volume: &str) -> Result<(), ExecutorError> {
        self.count(self.inner.remove_volume(volume).await)
    }
    async fn remove_image(&self, image: &str) -> Result<(), ExecutorError> {
        self.count(self.inner.remove_image(image).await)
    }
    async fn list_by_label(
        &self,
        kind: ResourceKind,
        label: &str,
        value: &str,
    ) -> Result<Vec<String>, ExecutorError> {
        self.count(self.inner.list_by_label(kind, label, value).await)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_family_in_openmetrics_text() {
        let m = AgentMetrics::new();
        m.job_finished("success");
        m.step_finished(1500);
        m.claimed(std::time::Duration::from_millis(20));
        m.engine_error(&ExecutorError::Protocol {
            target: "c".into(),
            what: "inspect",
            detail: "?".into(),
        });
        let text = m.render(2, 1234);
        for want in [
            "bosun_agent_jobs_running 2",
            "bosun_agent_spool_bytes_pending 1234",
            "bosun_agent_jobs_finished_total{status=\"success\"} 1",
            "bosun_agent_step_duration_seconds_count 1",
            "bosun_agent_claim_latency_seconds_count 1",
            "bosun_agent_engine_errors_total{kind=\"protocol\"} 1",
            "# EOF",
        ] {
            assert!(text.contains(want), "{want} missing:\n{text}");
        }
    }

    struct Fixed {
        metrics: AgentMetrics,
        ready: Result<(), String>,
        spool: tempfile::TempDir,
    }

    impl Health for Fixed {
        fn running(&self) -> usize {
            3
        }
        fn spool_dir(&self) -> PathBuf {
            self.spool.path().to_path_buf()
        }
        fn ready(&self) -> Result<(), String> {
            self.ready.clone()
        }
        fn metrics(&self) -> &AgentMetrics {
            &self.metrics
        }
    }

    /// One HTTP/1.0 request (as the systemd unit's probe sends); the status and the body.
    async fn request(addr: std::net::SocketAddr, method: &str, path: &str) -> (u16, String) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut conn = tokio::net::TcpStream::connect(addr).await.expect("connect");
        conn.write_all(format!("{method} {path} HTTP/1.0\r\n\r\n").as_bytes())
            .await
            .expect("request");
        let mut text = String::new();
        conn.read_to_string(&mut text).await.expect("response");
        let code = text
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let body = text.split_once("\r\n\r\n").map(|x| x.1).unwrap_or("");
        (code, body.to_owned())
    }

    #[tokio::test]
    async fn serves_metrics_health_and_readiness_and_stops() {
        for (ready, code, body) in [
            (Ok(()), 200, r#"{"ready":true}"#),
            (Err("draining".to_owned()), 503, r#"{"error":"draining"}"#),
        ] {
            let spool = tempfile::tempdir().expect("tempdir");
            std::fs::write(spool.path().join("x"), [0u8; 1234]).expect("spool file");
            let health = Arc::new(Fixed {
                metrics: AgentMetrics::new(),
                ready,
                spool,
            });
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            let addr = listener.local_addr().expect("address");
            let stop = tokio_util::sync::CancellationToken::new();
            let served = tokio::spawn(serve(listener, health, stop.clone()));
            assert_eq!(
                request(addr, "GET", "/readyz").await,
                (code, body.to_owned())
            );
            assert_eq!(
                request(addr, "GET", "/healthz").await,
                (200, r#"{"status":"ok"}"#.to_owned())
            );
            let (code, text) = request(addr, "GET", "/metrics").await;
            assert_eq!(code, 200);
            assert!(text.contains("bosun_agent_jobs_running 3"), "{text}");
            assert!(
                text.contains("bosun_agent_spool_bytes_pending 1234"),
                "{text}"
            );
            assert_eq!(
                request(addr, "HEAD", "/metrics").await,
                (200, String::new())
            );
            assert_eq!(request(addr, "POST", "/metrics").await.0, 405);
            assert_eq!(request(addr, "GET", "/other").await.0, 404);
            stop.cancel();
            tokio::time::timeout(std::time::Duration::from_secs(10), served)
                .await
                .expect("serve returns once stopped")
                .expect("serve task");
        }
    }
}

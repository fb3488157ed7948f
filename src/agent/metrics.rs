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

use crate::executor::{
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

/// Serve `/metrics`, `/healthz` and `/readyz` on `listener` until `stop`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    health: Arc<dyn Health>,
    stop: tokio_util::sync::CancellationToken,
) {
    use axum::http::{header, StatusCode};
    use axum::response::IntoResponse;
    use axum::routing::get;
    let metrics = {
        let h = Arc::clone(&health);
        move || {
            let h = Arc::clone(&h);
            async move {
                let dir = h.spool_dir();
                let spool = tokio::task::spawn_blocking(move || dir_bytes(&dir))
                    .await
                    .unwrap_or(0);
                (
                    [(
                        header::CONTENT_TYPE,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    h.metrics().render(h.running(), spool),
                )
            }
        }
    };
    let ready = {
        let h = Arc::clone(&health);
        move || {
            let h = Arc::clone(&h);
            async move {
                match h.ready() {
                    Ok(()) => (
                        StatusCode::OK,
                        axum::Json(serde_json::json!({"ready": true})),
                    )
                        .into_response(),
                    Err(why) => (
                        StatusCode::SERVICE_UNAVAILABLE,
                        axum::Json(crate::protocol::ApiError { error: why }),
                    )
                        .into_response(),
                }
            }
        }
    };
    let app = axum::Router::new()
        .route("/metrics", get(metrics))
        .route(
            "/healthz",
            get(|| async { axum::Json(serde_json::json!({"status": "ok"})) }),
        )
        .route("/readyz", get(ready));
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(async move { stop.cancelled().await })
        .await;
    if let Err(e) = served {
        tracing::warn!("metrics listener: {e}");
    }
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
        progress: crate::executor::PullProgress<'_>,
    ) -> Result<ImageInfo, ExecutorError> {
        self.count(self.inner.image_info(image, auth, progress).await)
    }
    async fn create(&self, spec: &ContainerSpec) -> Result<String, ExecutorError> {
        self.count(self.inner.create(spec).await)
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
}

//! The coordinator's `/metrics` (OpenMetrics text, which Prometheus scrapes), `/healthz` and
//! `/readyz`:
//!
//! * `bosun_coordinator_queue_depth` — jobs queued;
//! * `bosun_coordinator_jobs_running` — jobs leased to agents;
//! * `bosun_coordinator_claims_total` — jobs handed to agents;
//! * `bosun_coordinator_log_bytes_total` — log bytes appended (new bytes, not resends);
//! * `bosun_coordinator_agents_online` — agents not revoked that called within two leases.
//!
//! The gauges are read from the store at each scrape. They are counts only: no project,
//! job or agent is named. `/metrics` needs an operator token (`Authorization: Bearer`) or a
//! coordinator admin's session, unless the server runs with `--metrics-public` (a scraper
//! that sends no token); `/healthz` and `/readyz` answer anyone.

use super::store::LogStore;
use super::AppState;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::sync::Arc;

pub struct CoordMetrics {
    registry: Registry,
    queue_depth: Gauge,
    running: Gauge,
    agents_online: Gauge,
    pub claims: Counter,
    log_bytes: Counter,
    /// The store's appended-bytes count at the last scrape.
    log_bytes_seen: std::sync::atomic::AtomicU64,
    /// `--metrics-public`: anyone may scrape.
    pub public: bool,
}

impl Default for CoordMetrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("bosun_coordinator");
        let m = CoordMetrics {
            queue_depth: Gauge::default(),
            running: Gauge::default(),
            agents_online: Gauge::default(),
            claims: Counter::default(),
            log_bytes: Counter::default(),
            log_bytes_seen: Default::default(),
            registry: Registry::default(),
            public: false,
        };
        registry.register("queue_depth", "Jobs queued", m.queue_depth.clone());
        registry.register("jobs_running", "Jobs leased to agents", m.running.clone());
        registry.register(
            "agents_online",
            "Agents not revoked that called within two lease lengths",
            m.agents_online.clone(),
        );
        registry.register("claims", "Jobs handed to agents", m.claims.clone());
        registry.register(
            "log_bytes",
            "Log bytes appended (new bytes, not resends)",
            m.log_bytes.clone(),
        );
        CoordMetrics { registry, ..m }
    }
}

impl CoordMetrics {
    /// The metrics, scraped by anyone when `public` (`--metrics-public`).
    pub fn new(public: bool) -> CoordMetrics {
        CoordMetrics {
            public,
            ..CoordMetrics::default()
        }
    }

    fn render(&self, queued: i64, running: i64, online: i64, appended: u64) -> String {
        let seen = self
            .log_bytes_seen
            .swap(appended, std::sync::atomic::Ordering::Relaxed);
        self.log_bytes.inc_by(appended.saturating_sub(seen));
        self.queue_depth.set(queued);
        self.running.set(running);
        self.agents_online.set(online);
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::warn!("encoding metrics: {e}");
        }
        out
    }
}

pub fn router(state: Arc<AppState>) -> axum::Router {
    axum::Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(state)
}

fn error(status: StatusCode, msg: String) -> Response {
    (status, axum::Json(bosun_protocol::ApiError { error: msg })).into_response()
}

/// Who may scrape: anyone with `--metrics-public`; else an operator token or a coordinator
/// admin's session. `Err`: the refusal to answer.
async fn may_scrape(state: &AppState, headers: &axum::http::HeaderMap) -> Result<(), Response> {
    use crate::people::{self, Asking};
    if state.metrics.public {
        return Ok(());
    }
    match people::asking(state, headers).await {
        Ok(Some(Asking::Operator(_))) => Ok(()),
        Ok(Some(Asking::Person(v))) if v.person.admin => Ok(()),
        Ok(Some(Asking::Person(_))) => Err(error(
            StatusCode::FORBIDDEN,
            "metrics are for coordinator admins and operator tokens".into(),
        )),
        Ok(Some(Asking::Anonymous)) => Err(error(
            StatusCode::UNAUTHORIZED,
            "metrics need an operator token (Authorization: Bearer; `bosun coordinator \
             operator new NAME`), or serve --metrics-public"
                .into(),
        )),
        Ok(None) => Err(error(
            StatusCode::UNAUTHORIZED,
            "operator token unknown or revoked".into(),
        )),
        Err(e) => Err(error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())),
    }
}

async fn metrics(
    axum::extract::State(state): axum::extract::State<Arc<AppState>>,
    headers: axum::http::HeaderMap,
) -> Response {
    if let Err(r) = may_scrape(&state, &headers).await {
        return r;
    }
    let online_since = super::store::now_ms() - 2 * state.lease.as_millis() as i64;
    match state.db(move |s| s.counts(online_since)).await {
        Ok((queued, running, online)) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            state.metrics.render(
                queued,
                running,
                online,
                LogStore::appended_log_bytes(state.store.backend()),
            ),
        )
            .into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// The process answers.
async fn healthz() -> Response {
    axum::Json(serde_json::json!({"status": "ok"})).into_response()
}

/// The store answers and the server is not shutting down.
async fn readyz(axum::extract::State(state): axum::extract::State<Arc<AppState>>) -> Response {
    if state.shutdown.is_cancelled() {
        return error(StatusCode::SERVICE_UNAVAILABLE, "shutting down".into());
    }
    match state.db(|s| s.counts(0)).await {
        Ok(_) => axum::Json(serde_json::json!({"ready": true})).into_response(),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, format!("store: {e}")),
    }
}

//! The coordinator's HTTP server: hyper's HTTP/1.1 connection loop, bounded.
//!
//! `axum::serve` has no header timeout and no connection limit: 200 connections that sent
//! half a request each and stalled (a slow loris) used up the file descriptors, and every
//! later caller met `Too many open files`. Here:
//!
//! * **header timeout** (`--header-timeout`, 10 s): a request's headers must arrive within it,
//!   and an idle keep-alive connection is closed after it (hyper ≥ 1.6 starts the timer when
//!   a connection waits for its next request);
//! * **request timeout** for the agent API (120 s, longer than a claim's 30 s long poll): a
//!   body trickled in byte by byte does not hold a connection for ever;
//! * **connection limit** (`--max-connections`, 1024, and never more than the process's
//!   RLIMIT_NOFILE minus a reserve for the database and log files): past it, new connections
//!   wait in the kernel's backlog until one closes, instead of failing `accept` in a loop;
//! * **shutdown**: on SIGTERM/SIGINT the listener closes, live streams end (see
//!   [`super::AppState::shutdown`]), every connection is asked to finish its request and
//!   close, and after [`SHUTDOWN_GRACE`] whatever is left is dropped.

use super::Result;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// How long connections may take to finish after a shutdown begins.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// File descriptors kept out of the connection budget (database, WAL, log files, stdio).
const FD_RESERVE: u64 = 64;

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub header_timeout: Duration,
    pub max_connections: usize,
}

impl Limits {
    /// `max_connections`, lowered to what RLIMIT_NOFILE leaves after the reserve.
    pub fn within_fd_limit(self) -> Limits {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes the struct we pass and nothing else.
        let ok = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0;
        let budget = if ok {
            usize::try_from(lim.rlim_cur.saturating_sub(FD_RESERVE)).unwrap_or(usize::MAX)
        } else {
            self.max_connections
        };
        Limits {
            max_connections: self.max_connections.min(budget).max(8),
            ..self
        }
    }
}

/// Serve `app` on `listener` until `shutdown` is cancelled, then drain (see the module docs).
pub async fn serve(
    listener: TcpListener,
    app: axum::Router,
    limits: Limits,
    shutdown: CancellationToken,
) -> Result<()> {
    let limits = limits.within_fd_limit();
    tracing::info!(
        max_connections = limits.max_connections,
        header_timeout_ms = limits.header_timeout.as_millis() as u64,
        "serving"
    );
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            _ = shutdown.cancelled() => break,
        };
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.cancelled() => break,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // EMFILE and friends: the budget above should prevent them; back off rather
                // than spin.
                tracing::warn!("accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        let stop = shutdown.clone();
        // Reap finished connection tasks as we go, so the set does not grow.
        while tasks.try_join_next().is_some() {}
        tasks.spawn(async move {
            let _permit = permit;
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_timeout)
                .serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            let ended = tokio::select! {
                r = conn.as_mut() => Some(r),
                _ = stop.cancelled() => None,
            };
            let result = match ended {
                Some(r) => r,
                None => {
                    conn.as_mut().graceful_shutdown();
                    match tokio::time::timeout(SHUTDOWN_GRACE, conn.as_mut()).await {
                        Ok(r) => r,
                        Err(_) => return,
                    }
                }
            };
            if let Err(e) = result {
                tracing::debug!(%peer, "connection: {e}");
            }
        });
    }
    drop(listener);
    let drained = tokio::time::timeout(SHUTDOWN_GRACE + Duration::from_secs(1), async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!("{} connection(s) dropped at shutdown", tasks.len());
        tasks.abort_all();
    }
    Ok(())
}

/// Requests to the agent API end within this (a claim waits at most 30 s).
pub const API_REQUEST_TIMEOUT: Duration = Duration::from_secs(120);

/// Middleware: a 408 (JSON error) when a request takes longer than [`API_REQUEST_TIMEOUT`]
/// (most often a body trickled in too slowly).
pub async fn request_timeout(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    match tokio::time::timeout(API_REQUEST_TIMEOUT, next.run(req)).await {
        Ok(r) => r,
        Err(_) => (
            axum::http::StatusCode::REQUEST_TIMEOUT,
            axum::Json(crate::protocol::ApiError {
                error: format!(
                    "the request took longer than {} s",
                    API_REQUEST_TIMEOUT.as_secs()
                ),
            }),
        )
            .into_response(),
    }
}

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
//! * **TLS** (`--tls-cert/--tls-key`): rustls over the accepted socket, the handshake bounded
//!   by the header timeout;
//! * **shutdown**: on SIGTERM/SIGINT the listener closes, live streams end (see
//!   [`super::AppState::shutdown`]), every connection is asked to finish its request and
//!   close, and after [`SHUTDOWN_GRACE`] whatever is left is dropped.

use super::{CoordError, Result};
use hyper_util::rt::{TokioIo, TokioTimer};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
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

/// A TLS acceptor for `--tls-cert`/`--tls-key` (rustls with ring; TLS 1.2 and 1.3,
/// HTTP/1.1 by ALPN).
pub fn tls_acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor> {
    use tokio_rustls::rustls;
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let bad = |path: &Path, what: &str, e: &dyn std::fmt::Display| {
        CoordError::Tls(format!("{}: {what}: {e}", path.display()))
    };
    let certs = CertificateDer::pem_file_iter(cert)
        .map_err(|e| bad(cert, "cannot read the certificate chain", &e))?
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| bad(cert, "not a PEM certificate chain", &e))?;
    if certs.is_empty() {
        return Err(bad(
            cert,
            "no certificate",
            &"the file has no CERTIFICATE block",
        ));
    }
    // The error of a key file never quotes its content.
    let key_der = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| bad(key, "cannot read a PEM private key", &e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| CoordError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key_der)
        .map_err(|e| {
            bad(
                cert,
                "certificate and key do not make a server identity",
                &e,
            )
        })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Serve `app` on `listener` (over TLS with `tls`) until `shutdown` is cancelled, then drain
/// (see the module docs).
pub async fn serve(
    listener: TcpListener,
    app: axum::Router,
    limits: Limits,
    tls: Option<TlsAcceptor>,
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
        let tls = tls.clone();
        tasks.spawn(async move {
            let _permit = permit;
            match tls {
                None => serve_connection(stream, peer, service, limits, stop).await,
                Some(tls) => {
                    // The handshake is bounded like a request's headers: a client that
                    // opens a connection and says nothing holds it no longer.
                    let hs = tokio::select! {
                        r = tokio::time::timeout(limits.header_timeout, tls.accept(stream)) => r,
                        _ = stop.cancelled() => return,
                    };
                    match hs {
                        Ok(Ok(s)) => serve_connection(s, peer, service, limits, stop).await,
                        Ok(Err(e)) => tracing::debug!(%peer, "TLS handshake: {e}"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                }
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

/// One HTTP/1.1 connection: header timeout, and a graceful close when `stop` fires.
async fn serve_connection<S>(
    stream: S,
    peer: std::net::SocketAddr,
    service: hyper_util::service::TowerToHyperService<axum::Router>,
    limits: Limits,
    stop: CancellationToken,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    {
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
    }
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
            axum::Json(bosun_core::protocol::ApiError {
                error: format!(
                    "the request took longer than {} s",
                    API_REQUEST_TIMEOUT.as_secs()
                ),
            }),
        )
            .into_response(),
    }
}

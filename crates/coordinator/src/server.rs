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
//! * **per-address cap on waiting connections** (`--max-waiting-per-address`, 32): a new
//!   connection from an address that already has that many connections waiting for request
//!   headers (new, or idle between keep-alive requests) is closed at once, unless (plain
//!   HTTP) its complete headers are already buffered, so one address stalling connections
//!   cannot fill the connection limit for everyone (see [`super::per_address`]);
//! * **TLS** (`--tls-cert/--tls-key`): rustls over the accepted socket, the handshake bounded
//!   by the header timeout;
//! * **shutdown**: on SIGTERM/SIGINT the listener closes, live streams end (see
//!   [`super::AppState::shutdown`]), every connection is asked to finish its request and
//!   close, and after [`SHUTDOWN_GRACE`] whatever is left is dropped.

use super::per_address::{headers_complete, Connection, InRequest, PerAddress, PEEK_BYTES};
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

/// How long a connection past the per-address cap that the kernel handed over before its
/// first bytes were queued may take to show them (see [`defer_accept`]). Under deferred
/// accept only that moment's lag, or a connection silent for the whole defer period (the
/// listen backlog bounds how many), gets here, so few connection slots are held this long.
const FIRST_BYTES_WAIT: Duration = Duration::from_millis(100);

/// File descriptors kept out of the connection budget (database, WAL, log files, stdio).
const FD_RESERVE: u64 = 64;

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub header_timeout: Duration,
    pub max_connections: usize,
    /// Connections waiting for request headers one address may have when it opens another
    /// (0: no cap).
    pub max_waiting_per_address: usize,
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
        max_waiting_per_address = limits.max_waiting_per_address,
        header_timeout_ms = limits.header_timeout.as_millis() as u64,
        "serving"
    );
    defer_accept(&listener, limits.header_timeout);
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let waiting = PerAddress::new(limits.max_waiting_per_address);
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
        let first = match waiting.admit(peer.ip()) {
            Some(w) => Some(w),
            None => match tls.is_none().then(|| peek_now(&stream)) {
                Some(Peeked::Complete) => Some(waiting.hold(peer.ip())),
                // Deferred accept let it through on its first bytes, which the kernel may
                // queue a moment after handing it over: its task waits briefly for them.
                Some(Peeked::Nothing) => None,
                seen => {
                    refused(peer, waiting.cap(), seen);
                    drop(stream);
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let table = waiting.clone();
        let app = app.clone();
        let stop = shutdown.clone();
        // Reap finished connection tasks as we go, so the set does not grow.
        while tasks.try_join_next().is_some() {}
        let tls = tls.clone();
        tasks.spawn(async move {
            let _permit = permit;
            let first = match first {
                Some(w) => w,
                None => match first_bytes(&stream, FIRST_BYTES_WAIT).await {
                    Peeked::Complete => table.hold(peer.ip()),
                    seen => return refused(peer, table.cap(), Some(seen)),
                },
            };
            let counted = Connection::new(first, peer.ip());
            let over_cap = counted.close_requested().clone();
            let service = Counted {
                inner: hyper_util::service::TowerToHyperService::new(app),
                conn: counted,
                peer: peer.ip(),
            };
            match tls {
                None => serve_connection(stream, peer, service, limits, stop, over_cap).await,
                Some(tls) => {
                    // The handshake is bounded like a request's headers: a client that
                    // opens a connection and says nothing holds it no longer.
                    let hs = tokio::select! {
                        r = tokio::time::timeout(limits.header_timeout, tls.accept(stream)) => r,
                        _ = stop.cancelled() => return,
                    };
                    match hs {
                        Ok(Ok(s)) => {
                            serve_connection(s, peer, service, limits, stop, over_cap).await
                        }
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

/// Have the kernel hand a connection to `accept` only once its first bytes are in
/// (TCP_DEFER_ACCEPT, for up to `within`): a client that connects and says nothing waits in
/// the kernel rather than in a connection slot, and a request sent with the connection is
/// already buffered when the per-address cap looks for it ([`peek_now`]), however
/// quickly the accept loop runs.
fn defer_accept(listener: &TcpListener, within: Duration) {
    use std::os::fd::AsRawFd;
    let secs = libc::c_int::try_from(within.as_secs().max(1)).unwrap_or(libc::c_int::MAX);
    // SAFETY: setsockopt reads one c_int from the pointer we pass, with its size.
    let rc = unsafe {
        libc::setsockopt(
            listener.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_DEFER_ACCEPT,
            std::ptr::from_ref(&secs).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        // Not fatal: connections are then accepted at once, and a burst of complete
        // requests past the per-address cap may be closed before its bytes arrive.
        tracing::warn!(
            "TCP_DEFER_ACCEPT on the listener: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// What a new plain-HTTP connection has in its socket's receive buffer.
#[derive(Debug, PartialEq, Eq)]
enum Peeked {
    /// Nothing yet, or the peer closed.
    Nothing,
    /// Part of a request's headers.
    Partial,
    /// A request's complete headers.
    Complete,
}

/// A connection closed past the per-address cap, before anything was read: its slot goes
/// back at once. Logged at debug only, since whoever is refused can make it as frequent as
/// they like.
fn refused(peer: std::net::SocketAddr, cap: usize, seen: Option<Peeked>) {
    tracing::debug!(
        %peer,
        cap,
        ?seen,
        "connection closed: its address has too many connections waiting for request headers"
    );
}

/// What a new plain-HTTP connection has in its socket's receive buffer now, looked at
/// without reading it.
fn peek_now(stream: &tokio::net::TcpStream) -> Peeked {
    let mut buf = [0u8; PEEK_BYTES];
    let n = peek(stream, &mut buf);
    classify(n, &buf)
}

/// [`peek_now`] once the connection's first bytes are in, waiting up to `within` for them.
async fn first_bytes(stream: &tokio::net::TcpStream, within: Duration) -> Peeked {
    let mut buf = [0u8; PEEK_BYTES];
    let n = tokio::time::timeout(within, async {
        loop {
            stream.readable().await?;
            // try_io clears tokio's readiness on WouldBlock, so a wake-up that found nothing
            // waits for the next one.
            match stream.try_io(tokio::io::Interest::READABLE, || peek(stream, &mut buf)) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                other => return other,
            }
        }
    })
    .await
    .unwrap_or(Ok(0));
    classify(n, &buf)
}

fn classify(peeked: std::io::Result<usize>, buf: &[u8]) -> Peeked {
    match peeked {
        Ok(0) | Err(_) => Peeked::Nothing,
        Ok(n) if headers_complete(&buf[..n.min(buf.len())]) => Peeked::Complete,
        Ok(_) => Peeked::Partial,
    }
}

/// `recv` with MSG_PEEK (the bytes stay in the socket for hyper) and MSG_DONTWAIT.
fn peek(stream: &tokio::net::TcpStream, buf: &mut [u8]) -> std::io::Result<usize> {
    use std::os::fd::AsRawFd;
    // SAFETY: recv writes at most `buf.len()` bytes into `buf`, which we borrow mutably.
    let n = unsafe {
        libc::recv(
            stream.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    usize::try_from(n).map_err(|_| std::io::Error::last_os_error())
}

/// The app's service for one connection, which stops counting the connection as waiting
/// while a request is in progress: from its headers being in until its response body is
/// done (hyper drops the body then, or when the connection ends).
#[derive(Clone)]
struct Counted {
    inner: hyper_util::service::TowerToHyperService<axum::Router>,
    conn: Arc<Connection>,
    peer: std::net::IpAddr,
}

/// The address a request's connection comes from (a request extension), for what is
/// counted per client, such as failed logins. Behind a reverse proxy it is the proxy's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddr(pub std::net::IpAddr);

impl hyper::service::Service<axum::http::Request<hyper::body::Incoming>> for Counted {
    type Response = axum::http::Response<CountedBody>;
    type Error = std::convert::Infallible;
    type Future = std::pin::Pin<
        Box<
            dyn std::future::Future<Output = std::result::Result<Self::Response, Self::Error>>
                + Send,
        >,
    >;

    fn call(&self, mut req: axum::http::Request<hyper::body::Incoming>) -> Self::Future {
        req.extensions_mut().insert(ClientAddr(self.peer));
        let in_request = self.conn.request();
        let response = self.inner.call(req);
        Box::pin(async move {
            let response = response.await?;
            Ok(response.map(|body| CountedBody {
                body,
                _in_request: in_request,
            }))
        })
    }
}

/// A response body that holds its request's [`InRequest`] until hyper is done with it.
struct CountedBody {
    body: axum::body::Body,
    _in_request: InRequest,
}

impl hyper::body::Body for CountedBody {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<std::result::Result<hyper::body::Frame<Self::Data>, Self::Error>>>
    {
        std::pin::Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

/// One HTTP/1.1 connection: header timeout, a graceful close when `stop` fires, and no
/// keep-alive once `over_cap` fires (its address has enough connections waiting).
async fn serve_connection<S>(
    stream: S,
    peer: std::net::SocketAddr,
    service: Counted,
    limits: Limits,
    stop: CancellationToken,
    over_cap: CancellationToken,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    {
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_timeout)
            .serve_connection(TokioIo::new(stream), service);
        tokio::pin!(conn);
        let mut closing = false;
        let ended = loop {
            tokio::select! {
                r = conn.as_mut() => break Some(r),
                _ = stop.cancelled() => break None,
                // An idle connection (part of a next request's headers included) closes at
                // once; one whose next request's headers are in finishes that request.
                _ = over_cap.cancelled(), if !closing => {
                    closing = true;
                    conn.as_mut().graceful_shutdown();
                }
            }
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
            axum::Json(bosun_protocol::ApiError {
                error: format!(
                    "the request took longer than {} s",
                    API_REQUEST_TIMEOUT.as_secs()
                ),
            }),
        )
            .into_response(),
    }
}

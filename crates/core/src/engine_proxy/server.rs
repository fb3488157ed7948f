//! The proxy itself: an HTTP/1.1 server on the job's unix socket that plans each request with
//! [`super::filter`], makes the plan's checks against the host engine, and forwards — the
//! response body streamed as it comes, hijacked connections (attach, exec) copied both ways.

use super::build_context::ContextScanner;
use super::filter::{self, Body, BodyKind, Check, Kind, Plan, Refusal, Route, Scope};
use super::{EngineSettings, ProxyError, Upstream, SOCKET_NAME};
use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::net::UnixListener;
use tokio_util::sync::CancellationToken;

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type ProxyBody = BoxBody<Bytes, BoxError>;

/// The largest JSON body the proxy reads to check (container create is a few KiB).
const MAX_JSON_BODY: usize = 1 << 20;

/// A job's engine: its socket directory and, once [`JobEngine::serve`] ran, the server.
pub struct JobEngine {
    dir: PathBuf,
    /// The images the job builds stay on the engine after it (layer reuse by later jobs).
    keep_images: bool,
    ctx: Arc<Ctx>,
    stop: CancellationToken,
    serving: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

struct Ctx {
    upstream: Upstream,
    scope: Scope,
}

impl JobEngine {
    /// Make the job's socket directory (mode 0755: the job container's users reach the
    /// socket in it; the root above stays 0700 on the host). Nothing listens yet. The images
    /// the job builds are kept when the agent keeps images and the job asked for
    /// `docker_layer_caching`.
    pub fn prepare(
        settings: &EngineSettings,
        scope: Scope,
        layer_caching: bool,
    ) -> Result<Self, ProxyError> {
        use std::os::unix::fs::PermissionsExt;
        let dir_err = |path: &Path| {
            let path = path.to_owned();
            move |source| ProxyError::Dir { path, source }
        };
        std::fs::create_dir_all(&settings.socket_root).map_err(dir_err(&settings.socket_root))?;
        std::fs::set_permissions(
            &settings.socket_root,
            std::fs::Permissions::from_mode(0o700),
        )
        .map_err(dir_err(&settings.socket_root))?;
        let dir = settings.job_dir(&scope.job);
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(dir_err(&dir))?;
        }
        std::fs::create_dir(&dir).map_err(dir_err(&dir))?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))
            .map_err(dir_err(&dir))?;
        Ok(Self {
            dir,
            keep_images: settings.keep_images && layer_caching,
            ctx: Arc::new(Ctx {
                upstream: settings.upstream.clone(),
                scope,
            }),
            stop: CancellationToken::new(),
            serving: std::sync::Mutex::new(None),
        })
    }

    /// Whether the images the job builds outlive it.
    pub fn keeps_images(&self) -> bool {
        self.keep_images
    }

    /// The directory to mount into the job's container.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn socket_path(&self) -> PathBuf {
        self.dir.join(SOCKET_NAME)
    }

    /// Start listening (once; later calls do nothing). The socket is mode 0666: whoever is
    /// in the job's container is the job.
    pub fn serve(&self) -> Result<(), ProxyError> {
        use std::os::unix::fs::PermissionsExt;
        let mut serving = self.serving.lock().unwrap_or_else(|p| p.into_inner());
        if serving.is_some() {
            return Ok(());
        }
        let path = self.socket_path();
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path).map_err(|source| ProxyError::Dir {
            path: path.clone(),
            source,
        })?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666))
            .map_err(|source| ProxyError::Dir { path, source })?;
        let ctx = Arc::clone(&self.ctx);
        let stop = self.stop.clone();
        *serving = Some(tokio::spawn(accept_loop(listener, ctx, stop)));
        Ok(())
    }

    /// Serve connections from an already-bound listener (tests and benches).
    pub fn serve_on(listener: UnixListener, upstream: Upstream, scope: Scope) -> CancellationToken {
        let stop = CancellationToken::new();
        tokio::spawn(accept_loop(
            listener,
            Arc::new(Ctx { upstream, scope }),
            stop.clone(),
        ));
        stop
    }

    /// Stop serving (open connections end too) and remove the socket directory.
    pub async fn stop(&self) {
        self.stop.cancel();
        let task = self
            .serving
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(t) = task {
            let _ = t.await;
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Drop for JobEngine {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn accept_loop(listener: UnixListener, ctx: Arc<Ctx>, stop: CancellationToken) {
    loop {
        let stream = tokio::select! {
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!("job engine: accept failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = stop.cancelled() => break,
        };
        let ctx = Arc::clone(&ctx);
        let stop = stop.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let ctx = Arc::clone(&ctx);
                async move { Ok::<_, Infallible>(handle(&ctx, req).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades();
            tokio::select! {
                r = conn => if let Err(e) = r {
                    tracing::debug!("job engine connection: {e}");
                },
                () = stop.cancelled() => {}
            }
        });
    }
}

fn json_response(status: u16, message: &str) -> Response<ProxyBody> {
    let body = serde_json::json!({ "message": message }).to_string();
    let mut r = Response::new(full(Bytes::from(body)));
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

fn json_response_value(status: u16, body: Value) -> Response<ProxyBody> {
    let mut r = Response::new(full(Bytes::from(body.to_string())));
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

fn full(b: Bytes) -> ProxyBody {
    Full::new(b).map_err(|never| match never {}).boxed()
}

fn refusal(r: &Refusal) -> Response<ProxyBody> {
    json_response(r.status(), &r.to_string())
}

/// The one `Content-Type` a request carries, or a refusal: two of them, or one that is not
/// text, would let the engine and the proxy read different types.
fn content_type(req: &Request<Incoming>) -> Result<Option<String>, Refusal> {
    let mut values = req.headers().get_all(hyper::header::CONTENT_TYPE).iter();
    let Some(first) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(Refusal::BadRequest(
            "bosun: Content-Type is given more than once".into(),
        ));
    }
    let text = first
        .to_str()
        .map_err(|_| Refusal::BadRequest("bosun: Content-Type is not plain ASCII text".into()))?;
    Ok(Some(text.trim().to_ascii_lowercase()))
}

/// Whether a body of `kind` may come with this `Content-Type`. The engine parses a form body
/// (`application/x-www-form-urlencoded`) as if it were the query, so only the types the
/// endpoint reads are let through, exactly.
fn content_type_fits(kind: BodyKind, ct: Option<&str>) -> bool {
    match (kind, ct) {
        (_, None) => true,
        (BodyKind::Json, Some(ct)) => {
            matches!(ct, "application/json" | "application/json; charset=utf-8")
        }
        // Go's client marks a PUT or POST whose caller set no type as text/plain.
        (BodyKind::Stream, Some(ct)) => {
            matches!(ct, "application/x-tar" | "application/tar" | "text/plain")
        }
        (BodyKind::None, Some(ct)) => matches!(ct, "text/plain" | "application/json"),
    }
}

async fn handle(ctx: &Ctx, mut req: Request<Incoming>) -> Response<ProxyBody> {
    let method = req.method().as_str().to_owned();
    let full_path = req.uri().path().to_owned();
    let query = req.uri().query().unwrap_or("").to_owned();
    let routed = filter::strip_version(&full_path).and_then(|p| filter::route(&method, p));
    let endpoint = match routed {
        Ok(r) => r,
        Err(r) => {
            tracing::debug!(%method, path = %full_path, "job engine refused: {r}");
            return refusal(&r);
        }
    };
    let ct = match content_type(&req) {
        Ok(ct) => ct,
        Err(r) => return refusal(&r),
    };
    if !content_type_fits(endpoint.body, ct.as_deref()) {
        return refusal(&Refusal::BadRequest(format!(
            "bosun: Content-Type {} is not accepted by {method} {full_path}",
            ct.as_deref().unwrap_or("")
        )));
    }
    let client_upgrade = req
        .headers()
        .contains_key(hyper::header::UPGRADE)
        .then(|| hyper::upgrade::on(&mut req));
    let (parts, incoming) = req.into_parts();
    // A body is read whole where it is decoded, must be empty where none is taken (API
    // versions before 1.24 even applied a host config sent to `start`), and streams through
    // only where the engine takes a tar.
    let (body, incoming) = match endpoint.body {
        BodyKind::Json => match Limited::new(incoming, MAX_JSON_BODY).collect().await {
            Ok(c) => (Some(c.to_bytes()), None),
            Err(e) => return json_response(413, &format!("bosun: request body: {e}")),
        },
        BodyKind::None => match Limited::new(incoming, 0).collect().await {
            Ok(_) => (None, None),
            Err(_) => {
                return refusal(&Refusal::BadRequest(format!(
                    "bosun: {method} {full_path} takes no request body"
                )))
            }
        },
        BodyKind::Stream => (None, Some(incoming)),
    };
    if endpoint.route == Route::Auth {
        // The body holds the client's credentials: it is read and dropped, never logged.
        return json_response_value(
            200,
            serde_json::json!({
                "Status": "Login Succeeded (bosun: the job's engine does not contact registries to log in; the credentials are checked when an image is pushed)",
                "IdentityToken": "",
            }),
        );
    }
    let plan = match filter::plan(&endpoint, &full_path, &query, body.as_deref(), &ctx.scope) {
        Ok(p) => p,
        Err(r) => return refusal(&r),
    };
    let path_and_query = match run_checks(ctx, &plan).await {
        Ok(p) => p,
        Err(Failure::Refused(r)) => return refusal(&r),
        Err(Failure::Engine(e)) => return json_response(502, &format!("bosun: engine: {e}")),
    };
    for v in &plan.ensure_volumes {
        if let Err(e) = ensure_volume(ctx, v).await {
            return json_response(502, &format!("bosun: creating volume {v}: {e}"));
        }
    }
    let verdict = Verdict::default();
    let (out_body, out_type) = match (plan.body, incoming) {
        (Body::Json(b), _) => (full(Bytes::from(b)), Some("application/json".to_owned())),
        (Body::Stream, Some(i)) if endpoint.route == Route::Build => {
            let dockerfile = filter::parse_query(&query)
                .into_iter()
                .find(|(k, _)| k == "dockerfile")
                .map(|(_, v)| v);
            let scanner = ContextScanner::new(dockerfile.as_deref());
            (scanned(i, scanner, verdict.clone()), ct)
        }
        (Body::Stream, Some(i)) => (i.map_err(BoxError::from).boxed(), ct),
        (Body::Stream | Body::Empty, _) => (full(Bytes::new()), None),
    };
    let response = forward(
        ctx,
        parts,
        out_body,
        out_type.as_deref(),
        &path_and_query,
        client_upgrade,
    )
    .await;
    // A build context refused midway broke the request to the engine: say why instead.
    let reason = verdict.0.lock().ok().and_then(|v| v.clone());
    match reason {
        Some(reason) => json_response(403, &reason),
        None => response,
    }
}

/// Why a streamed body was cut off, if it was.
#[derive(Default, Clone)]
struct Verdict(Arc<std::sync::Mutex<Option<String>>>);

/// The build context as it streams to the engine, each chunk read by the scanner before it is
/// passed on: a refused context ends in an error, so the engine never holds all of it.
fn scanned(incoming: Incoming, scanner: ContextScanner, verdict: Verdict) -> ProxyBody {
    use futures_util::StreamExt;
    let frames = http_body_util::BodyStream::new(incoming);
    let stream = futures_util::stream::unfold(
        (frames, scanner, verdict, false),
        |(mut frames, mut scanner, verdict, ended)| async move {
            if ended {
                return None;
            }
            let refused = |r: super::build_context::Refused, verdict: &Verdict| {
                if let Ok(mut v) = verdict.0.lock() {
                    *v = Some(r.0.clone());
                }
                BoxError::from(r)
            };
            match frames.next().await {
                Some(Ok(frame)) => {
                    if let Some(data) = frame.data_ref() {
                        if let Err(r) = scanner.feed(data) {
                            let e = refused(r, &verdict);
                            return Some((Err(e), (frames, scanner, verdict, true)));
                        }
                    }
                    Some((Ok(frame), (frames, scanner, verdict, false)))
                }
                Some(Err(e)) => Some((Err(BoxError::from(e)), (frames, scanner, verdict, true))),
                None => match scanner.finish() {
                    Ok(()) => None,
                    Err(r) => {
                        let e = refused(r, &verdict);
                        Some((Err(e), (frames, scanner, verdict, true)))
                    }
                },
            }
        },
    );
    BodyExt::boxed(http_body_util::StreamBody::new(stream))
}

enum Failure {
    Refused(Refusal),
    Engine(EngineError),
}

/// What went wrong talking to the host engine on the job's behalf (answered as 502).
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("{at}: {source}")]
    Connect {
        at: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Request(#[from] hyper::http::Error),
    #[error(transparent)]
    Http(#[from] hyper::Error),
    #[error("{what}: {status}: {body}")]
    Status {
        what: String,
        status: StatusCode,
        body: String,
    },
    #[error("GET {path}: {source}")]
    Json {
        path: String,
        #[source]
        source: serde_json::Error,
    },
}

/// Make the plan's checks; the forwarded path with names resolved to ids (so the request
/// acts on the object that was checked, not on one renamed since).
async fn run_checks(ctx: &Ctx, plan: &Plan) -> Result<String, Failure> {
    let mut path = plan.path_and_query.clone();
    for check in &plan.checks {
        let (owner, count) = match check {
            Check::RegistryHost(host) => {
                registry_reachable(host).await.map_err(Failure::Refused)?;
                continue;
            }
            Check::ContainerCount(_) => {
                (None, count_containers(ctx).await.map_err(Failure::Engine)?)
            }
            Check::Owned(kind, name)
            | Check::Referenced { kind, name, .. }
            | Check::FreeOrOwned { kind, name, .. } => {
                (lookup(ctx, *kind, name).await.map_err(Failure::Engine)?, 0)
            }
        };
        let found = owner.as_ref().map(|o| o.job.as_deref());
        filter::judge(check, found, count, &ctx.scope.job).map_err(Failure::Refused)?;
        if let (Check::Owned(kind, name), Some(Owner { id: Some(id), .. })) = (check, &owner) {
            path = resolve_in_path(&path, *kind, name, id);
        }
    }
    Ok(path)
}

/// The engine pushes to a registry from the host: a name that resolves to the host's own
/// addresses (loopback, link-local, unspecified) would reach the host's services for the job.
/// A name that does not resolve here is left to the engine (which then fails to reach it too).
async fn registry_reachable(host: &str) -> Result<(), Refusal> {
    let name = filter::host_of(host);
    let Ok(addrs) = tokio::net::lookup_host((name, 443)).await else {
        return Ok(());
    };
    for a in addrs {
        if !filter::routable(a.ip()) {
            return Err(Refusal::Forbidden(format!(
                "bosun: the registry `{host}` resolves to {}, the host's own address: a job's engine does not push to the host. Push to a registry on the network",
                a.ip()
            )));
        }
    }
    Ok(())
}

/// `/containers/NAME/…` → `/containers/ID/…` (containers, networks, execs; volumes and images
/// keep their names).
fn resolve_in_path(path: &str, kind: Kind, name: &str, id: &str) -> String {
    let seg = match kind {
        Kind::Container => "containers",
        Kind::Network => "networks",
        Kind::Exec => "exec",
        Kind::Volume | Kind::Image | Kind::Plugin => return path.to_owned(),
    };
    let from = format!("/{seg}/{name}");
    let Some(i) = path.find(&from) else {
        return path.to_owned();
    };
    let end = i + from.len();
    match path[end..].chars().next() {
        None | Some('/') | Some('?') => format!("{}/{seg}/{id}{}", &path[..i], &path[end..]),
        _ => path.to_owned(),
    }
}

/// What the engine says about an object: its id and whose it is.
struct Owner {
    id: Option<String>,
    job: Option<String>,
}

pub(super) fn valid_name(kind: Kind, name: &str) -> bool {
    if name.is_empty() || name.len() > 512 || name.split('/').any(|s| s == "..") {
        return false;
    }
    name.chars().all(|c| {
        c.is_ascii_alphanumeric()
            || matches!(c, '_' | '.' | '-')
            || (kind == Kind::Image && matches!(c, '/' | ':' | '@'))
    })
}

/// Inspect an object; `None` if the engine does not know it (or the name is not one).
async fn lookup(ctx: &Ctx, kind: Kind, name: &str) -> Result<Option<Owner>, EngineError> {
    if !valid_name(kind, name) {
        return Ok(None);
    }
    let path = match kind {
        Kind::Container => format!("/containers/{name}/json"),
        Kind::Network => format!("/networks/{name}"),
        Kind::Volume => format!("/volumes/{name}"),
        Kind::Exec => format!("/exec/{name}/json"),
        Kind::Image => format!("/images/{name}/json"),
        Kind::Plugin => return Ok(None),
    };
    let Some(v) = get_json(ctx, &path).await? else {
        return Ok(None);
    };
    let labels = match kind {
        Kind::Container | Kind::Image => v.get("Config").and_then(|c| c.get("Labels")),
        Kind::Network | Kind::Volume => v.get("Labels"),
        Kind::Plugin => None,
        Kind::Exec => {
            // An exec is the job's if its container is.
            let Some(c) = v.get("ContainerID").and_then(Value::as_str) else {
                return Ok(None);
            };
            let owner = Box::pin(lookup(ctx, Kind::Container, c)).await?;
            return Ok(owner.map(|o| Owner {
                id: v.get("ID").and_then(Value::as_str).map(str::to_owned),
                job: o.job,
            }));
        }
    };
    // Only what was made through a job's engine counts as a job's: the agent's own containers
    // for the job (its primary, services) carry the job's label too, with another kind.
    let made_through_proxy = labels
        .and_then(|l| l.get(crate::executor::LABEL_KIND))
        .and_then(Value::as_str)
        == Some(filter::KIND_VALUE);
    let job = labels
        .and_then(|l| l.get(crate::executor::LABEL_JOB))
        .and_then(Value::as_str)
        .filter(|_| made_through_proxy)
        .map(str::to_owned);
    let id = v
        .get("Id")
        .or_else(|| v.get("ID"))
        .or_else(|| v.get("Name"))
        .and_then(Value::as_str)
        .map(str::to_owned);
    Ok(Some(Owner { id, job }))
}

async fn count_containers(ctx: &Ctx) -> Result<usize, EngineError> {
    let filters = serde_json::json!({ "label": [ctx.scope.label_filter(), Scope::kind_filter()] })
        .to_string();
    let q = form_urlencoded::Serializer::new(String::new())
        .append_pair("all", "1")
        .append_pair("filters", &filters)
        .finish();
    let v = get_json(ctx, &format!("/containers/json?{q}"))
        .await?
        .unwrap_or(Value::Null);
    Ok(v.as_array().map_or(0, Vec::len))
}

async fn ensure_volume(ctx: &Ctx, name: &str) -> Result<(), EngineError> {
    if get_json(ctx, &format!("/volumes/{name}")).await?.is_some() {
        return Ok(());
    }
    let labels: serde_json::Map<String, Value> = ctx
        .scope
        .labels()
        .into_iter()
        .map(|(k, v)| (k, Value::String(v)))
        .collect();
    let body = serde_json::json!({ "Name": name, "Labels": labels }).to_string();
    let req = Request::post("/volumes/create")
        .header(hyper::header::HOST, "docker")
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(full(Bytes::from(body)))?;
    let resp = send(&ctx.upstream, req).await?;
    let status = resp.status();
    if status.is_success() {
        Ok(())
    } else {
        let b = resp.into_body().collect().await?.to_bytes();
        Err(EngineError::Status {
            what: "POST /volumes/create".to_owned(),
            status,
            body: String::from_utf8_lossy(&b).into_owned(),
        })
    }
}

/// GET a JSON document from the engine; `None` on 404.
async fn get_json(ctx: &Ctx, path: &str) -> Result<Option<Value>, EngineError> {
    let req = Request::get(path)
        .header(hyper::header::HOST, "docker")
        .body(full(Bytes::new()))?;
    let resp = send(&ctx.upstream, req).await?;
    let status = resp.status();
    let body = resp.into_body().collect().await?.to_bytes();
    if status == StatusCode::NOT_FOUND {
        return Ok(None);
    }
    if !status.is_success() {
        return Err(EngineError::Status {
            what: format!("GET {path}"),
            status,
            body: String::from_utf8_lossy(&body).into_owned(),
        });
    }
    serde_json::from_slice(&body)
        .map(Some)
        .map_err(|source| EngineError::Json {
            path: path.to_owned(),
            source,
        })
}

/// Send one request on a fresh connection to the engine (a unix socket connect costs
/// microseconds; a fresh connection also serves a hijack without a pool to return to).
async fn send(
    upstream: &Upstream,
    req: Request<ProxyBody>,
) -> Result<Response<Incoming>, EngineError> {
    match upstream {
        Upstream::Unix(p) => {
            let s = tokio::net::UnixStream::connect(p).await.map_err(|source| {
                EngineError::Connect {
                    at: p.display().to_string(),
                    source,
                }
            })?;
            send_on(s, req).await
        }
        Upstream::Tcp(a) => {
            let s =
                tokio::net::TcpStream::connect(a)
                    .await
                    .map_err(|source| EngineError::Connect {
                        at: a.clone(),
                        source,
                    })?;
            send_on(s, req).await
        }
    }
}

async fn send_on<S>(io: S, req: Request<ProxyBody>) -> Result<Response<Incoming>, EngineError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!("job engine upstream connection: {e}");
        }
    });
    Ok(sender.send_request(req).await?)
}

/// Request headers the engine reads that a job's client may send (the hijack's upgrade, the
/// registry credentials of push and build); every other header is dropped, and the framing
/// and `Content-Type` are the proxy's own.
const FORWARDED_HEADERS: &[&str] = &[
    "upgrade",
    "connection",
    "user-agent",
    "x-registry-auth",
    "x-registry-config",
];

async fn forward(
    ctx: &Ctx,
    parts: hyper::http::request::Parts,
    body: ProxyBody,
    content_type: Option<&str>,
    path_and_query: &str,
    client_upgrade: Option<hyper::upgrade::OnUpgrade>,
) -> Response<ProxyBody> {
    let mut builder = Request::builder()
        .method(parts.method.clone())
        .uri(path_and_query)
        .header(hyper::header::HOST, "docker");
    for (k, v) in &parts.headers {
        if FORWARDED_HEADERS.contains(&k.as_str()) {
            builder = builder.header(k, v);
        }
    }
    if let Some(ct) = content_type {
        builder = builder.header(hyper::header::CONTENT_TYPE, ct);
    }
    let out = match builder.body(body) {
        Ok(r) => r,
        Err(e) => return json_response(400, &format!("bosun: {e}")),
    };
    let mut resp = match send(&ctx.upstream, out).await {
        Ok(r) => r,
        Err(e) => return json_response(502, &format!("bosun: engine: {e}")),
    };
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        let engine_upgrade = hyper::upgrade::on(&mut resp);
        if let Some(client_upgrade) = client_upgrade {
            tokio::spawn(async move {
                let (client, engine) = tokio::join!(client_upgrade, engine_upgrade);
                if let (Ok(c), Ok(e)) = (client, engine) {
                    let mut c = TokioIo::new(c);
                    let mut e = TokioIo::new(e);
                    let _ = tokio::io::copy_bidirectional(&mut c, &mut e).await;
                }
            });
        }
        let (parts, _) = resp.into_parts();
        return Response::from_parts(parts, full(Bytes::new()));
    }
    let (parts, body) = resp.into_parts();
    Response::from_parts(parts, body.map_err(BoxError::from).boxed())
}

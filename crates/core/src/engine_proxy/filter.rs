//! What a job may ask of the engine: a pure function from a request (method, path, query,
//! body) to a [`Plan`] — the checks the server must make against the engine, the objects it
//! must create first, and the exact request it forwards — or a [`Refusal`].
//!
//! Default deny: a route not in [`route`] is refused with its method and path. Objects named
//! in the path must be the job's (checked by label, else 404 as if they did not exist);
//! objects named in a body must be the job's too (else 403 naming the field). Whatever is
//! created carries the job's labels, lists are filtered by them.
//!
//! The engine must see what the filter saw, however its Go decoders read a request: bodies
//! are decoded into the typed [`model`] (exact field names, no duplicate keys, no unknown
//! fields) and the engine gets their re-encoding; the query is re-encoded from the pairs the
//! endpoint takes, each once; an endpoint that takes no body gets none.

use serde_json::Value;
use std::collections::BTreeMap;

mod bodies;
pub mod model;
use bodies::*;

/// Labels put on everything a job creates through the proxy.
pub const KIND_VALUE: &str = "engine";

/// Who is asking and what they may use.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scope {
    pub job: String,
    pub agent: String,
    pub limits: Limits,
}

/// Per-job resource limits (from agent settings); `None` = no limit.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Limits {
    /// CPUs per container, in billionths (`NanoCpus`).
    pub nano_cpus: Option<i64>,
    /// Memory per container, in bytes (swap included).
    pub memory: Option<i64>,
    /// Containers the job may have at once.
    pub max_containers: Option<usize>,
    /// Processes per container.
    pub pids: Option<i64>,
    /// Address pools a job's networks may take explicit subnets from (`--subnet`); empty:
    /// the engine picks every subnet from its own pool.
    pub subnet_pools: Vec<Subnet>,
}

/// An IP network in CIDR notation (`10.200.0.0/16`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subnet {
    pub addr: std::net::IpAddr,
    pub prefix: u8,
}

impl Subnet {
    pub fn parse(text: &str) -> Option<Subnet> {
        let (addr, prefix) = text.split_once('/')?;
        let addr: std::net::IpAddr = addr.parse().ok()?;
        let prefix: u8 = prefix.parse().ok()?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        (prefix <= max).then_some(Subnet { addr, prefix })
    }

    fn bits(&self) -> (u128, u32) {
        match self.addr {
            std::net::IpAddr::V4(a) => (u128::from(u32::from(a)) << 96, 32),
            std::net::IpAddr::V6(a) => (u128::from(a), 128),
        }
    }

    /// Whether `other` lies wholly inside this network.
    pub fn contains(&self, other: &Subnet) -> bool {
        let ((a, width), (b, other_width)) = (self.bits(), other.bits());
        if width != other_width || other.prefix < self.prefix {
            return false;
        }
        // Both are left-aligned in 128 bits, so a prefix counts from the top either way.
        let mask = match self.prefix {
            0 => 0,
            p => u128::MAX << (128 - u32::from(p)),
        };
        (a & mask) == (b & mask)
    }
}

impl std::fmt::Display for Subnet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl Scope {
    pub fn labels(&self) -> Vec<(String, String)> {
        vec![
            (crate::executor::LABEL_JOB.to_owned(), self.job.clone()),
            (crate::executor::LABEL_AGENT.to_owned(), self.agent.clone()),
            (
                crate::executor::LABEL_KIND.to_owned(),
                KIND_VALUE.to_owned(),
            ),
        ]
    }

    /// The `label=` filter that selects the job's objects.
    pub fn label_filter(&self) -> String {
        format!("{}={}", crate::executor::LABEL_JOB, self.job)
    }

    /// The `label=` filter that selects what was made through the proxy (not the job's
    /// primary or service containers, which the agent made).
    pub fn kind_filter() -> String {
        format!("{}={KIND_VALUE}", crate::executor::LABEL_KIND)
    }
}

/// What kind of engine object a name or id refers to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Container,
    Network,
    Volume,
    Exec,
    Image,
    /// Never a job's: named only to answer 404 (so `docker inspect NAME` says "No such
    /// object" once every other kind said so too).
    Plugin,
}

impl Kind {
    pub fn word(self) -> &'static str {
        match self {
            Kind::Container => "container",
            Kind::Network => "network",
            Kind::Volume => "volume",
            Kind::Exec => "exec instance",
            Kind::Image => "image",
            Kind::Plugin => "plugin",
        }
    }
}

/// What the server must verify against the engine before forwarding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check {
    /// The object must exist and carry the job's label; otherwise answer 404.
    Owned(Kind, String),
    /// A body field names this object: it must be the job's; otherwise 403 naming `field`.
    Referenced {
        kind: Kind,
        name: String,
        field: String,
    },
    /// A name the job is about to create or (re)point: if it exists it must be the job's;
    /// otherwise 403 naming `field`.
    FreeOrOwned {
        kind: Kind,
        name: String,
        field: String,
    },
    /// The job must have fewer than this many containers.
    ContainerCount(usize),
    /// A registry the engine will connect to: none of the addresses its name resolves to may
    /// be the host's own (loopback, link-local, unspecified).
    RegistryHost(String),
}

/// The request the server forwards once the checks pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub checks: Vec<Check>,
    /// Named volumes to create (labelled) before forwarding, if missing: a container's
    /// `-v name:/path` would otherwise make an unlabelled one.
    pub ensure_volumes: Vec<String>,
    /// Path and query as forwarded (the version prefix kept).
    pub path_and_query: String,
    pub body: Body,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body {
    /// No body at all.
    Empty,
    /// The client's body, streamed through untouched (tar contexts and archives).
    Stream,
    /// The re-encoding of the checked JSON body.
    Json(Vec<u8>),
}

/// A request the proxy answers itself.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// 403: not allowed for a job; the message names the field and what to do.
    #[error("{0}")]
    Forbidden(String),
    /// 400: malformed or ambiguous.
    #[error("{0}")]
    BadRequest(String),
    /// 404: a foreign object, answered as if it did not exist.
    #[error("No such {}: {}", .0.word(), .1)]
    NotFound(Kind, String),
}

impl Refusal {
    pub fn status(&self) -> u16 {
        match self {
            Refusal::Forbidden(_) => 403,
            Refusal::BadRequest(_) => 400,
            Refusal::NotFound(..) => 404,
        }
    }
}

fn forbid(msg: impl Into<String>) -> Refusal {
    Refusal::Forbidden(format!("bosun: {}", msg.into()))
}

/// What a route does with the request's body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    /// None: a body is refused (the engine would read a form or old-API fields from it).
    None,
    /// A JSON object, decoded into the route's model and re-encoded.
    Json,
    /// A tar stream (build contexts, archives) passed through to the engine.
    Stream,
}

/// The endpoint a request was routed to: what it does, the query parameters it takes, the body
/// it takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub route: Route,
    /// The query parameters the engine reads for this endpoint; any other is refused.
    pub query: &'static [&'static str],
    pub body: BodyKind,
}

/// What the filter does for an endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// Engine-wide reads that name no object (ping, version, info, the image list).
    Plain,
    /// `docker login`: answered by the proxy, never sent to the engine (which would connect to
    /// whatever address the body names, the host's loopback included).
    Auth,
    /// A list: add the job's label filter.
    List,
    /// An operation on a named object of the job.
    OnObject(Kind, String),
    ContainerCreate,
    ExecCreate(String),
    ExecStart(String),
    ContainerArchivePut(String),
    NetworkCreate,
    NetworkConnect(String),
    NetworkDisconnect(String),
    VolumeCreate,
    Prune,
    Build,
    /// Reads of any image (inspect, history, save): images are shared.
    ImageRead,
    ImageTag(String),
    ImageRemove(String),
    ImagePush(String),
}

impl Endpoint {
    /// Whether the body must be read (and decoded) before planning.
    pub fn needs_body(&self) -> bool {
        self.body == BodyKind::Json
    }
}

/// The oldest API version a job may speak: older ones let `POST /containers/{id}/start` carry
/// a host config the engine still applies, past every check made at create.
pub const MIN_API_VERSION: (u32, u32) = (1, 24);

/// The API path without its `/v1.41` prefix, checked to be clean: no `.`/`..`/empty
/// segments, no percent-escapes (no engine object name contains `%`), no version older than
/// [`MIN_API_VERSION`].
pub fn strip_version(path: &str) -> Result<&str, Refusal> {
    if !path.starts_with('/') || path.contains('%') || path.contains('\\') {
        return Err(Refusal::BadRequest(format!("bosun: malformed path {path}")));
    }
    let rest = match path.strip_prefix("/v") {
        Some(r) => match r.find('/') {
            Some(i)
                if !r[..i].is_empty() && r[..i].chars().all(|c| c.is_ascii_digit() || c == '.') =>
            {
                let version = r[..i]
                    .split_once('.')
                    .and_then(|(a, b)| Some((a.parse::<u32>().ok()?, b.parse::<u32>().ok()?)));
                match version {
                    Some(v) if v >= MIN_API_VERSION => &r[i..],
                    _ => {
                        return Err(Refusal::BadRequest(format!(
                            "bosun: API version v{} is not served to jobs (v{}.{} or newer is; docker clients negotiate it by themselves)",
                            &r[..i],
                            MIN_API_VERSION.0,
                            MIN_API_VERSION.1
                        )))
                    }
                }
            }
            _ => path,
        },
        None => path,
    };
    let trimmed = rest.strip_suffix('/').unwrap_or(rest);
    if trimmed
        .split('/')
        .skip(1)
        .any(|s| s.is_empty() || s == "." || s == "..")
    {
        return Err(Refusal::BadRequest(format!(
            "bosun: path {path} is not clean (empty, . or .. segments)"
        )));
    }
    Ok(trimmed)
}

const FILTERS: &[&str] = &["filters"];
const NONE: &[&str] = &[];

/// Map a method and (version-less) path to an endpoint, or refuse it. The allow-list.
pub fn route(method: &str, path: &str) -> Result<Endpoint, Refusal> {
    use BodyKind::{Json, None as NoBody, Stream};
    let segs: Vec<&str> = path.split('/').skip(1).collect();
    let not_allowed = || {
        forbid(format!(
            "{method} {path} is not allowed for a job (the job's engine serves containers, images, builds, networks, volumes and events of the job only; swarm, plugins, system-wide calls and host access are refused)"
        ))
    };
    let ep = |route: Route, query: &'static [&'static str], body: BodyKind| Endpoint {
        route,
        query,
        body,
    };
    let obj = |k: Kind, s: &str, query: &'static [&'static str]| {
        ep(Route::OnObject(k, s.to_owned()), query, NoBody)
    };
    let c = Kind::Container;
    let r = match (method, segs.as_slice()) {
        ("GET" | "HEAD", ["_ping"]) | ("GET", ["version" | "info"]) => ep(Route::Plain, NONE, NoBody),
        ("POST", ["auth"]) => ep(Route::Auth, NONE, Json),
        ("GET", ["events"]) => ep(Route::List, &["since", "until", "filters"], NoBody),
        // Containers.
        ("GET", ["containers", "json"]) => {
            ep(
            Route::List,
            &["all", "limit", "size", "filters", "since", "before"],
            NoBody,
        )
        }
        ("POST", ["containers", "create"]) => {
            ep(Route::ContainerCreate, &["name", "platform"], Json)
        }
        ("POST", ["containers", "prune"]) => ep(Route::Prune, FILTERS, NoBody),
        ("GET", ["containers", id, "json"]) => obj(c, id, &["size"]),
        ("GET", ["containers", id, "top"]) => obj(c, id, &["ps_args"]),
        ("GET", ["containers", id, "logs"]) => obj(
            c,
            id,
            &["follow", "stdout", "stderr", "since", "until", "timestamps", "tail", "details"],
        ),
        ("GET", ["containers", id, "changes" | "export"]) => obj(c, id, NONE),
        ("GET", ["containers", id, "stats"]) => obj(c, id, &["stream", "one-shot"]),
        ("POST", ["containers", id, "resize"]) => obj(c, id, &["h", "w"]),
        ("POST", ["containers", id, "start"]) => obj(c, id, &["detachKeys"]),
        ("POST", ["containers", id, "stop" | "restart"]) => obj(c, id, &["t", "signal"]),
        ("POST", ["containers", id, "kill"]) => obj(c, id, &["signal"]),
        ("POST", ["containers", id, "rename"]) => obj(c, id, &["name"]),
        ("POST", ["containers", id, "pause" | "unpause"]) => obj(c, id, NONE),
        ("POST", ["containers", id, "attach"]) => obj(
            c,
            id,
            &["detachKeys", "logs", "stream", "stdin", "stdout", "stderr"],
        ),
        ("POST", ["containers", id, "wait"]) => obj(c, id, &["condition"]),
        ("DELETE", ["containers", id]) => obj(c, id, &["v", "force"]),
        ("GET" | "HEAD", ["containers", id, "archive"]) => obj(c, id, &["path"]),
        ("PUT", ["containers", id, "archive"]) => ep(
            Route::ContainerArchivePut((*id).to_owned()),
            &["path", "noOverwriteDirNonDir", "copyUIDGID"],
            Stream,
        ),
        ("POST", ["containers", id, "exec"]) => ep(Route::ExecCreate((*id).to_owned()), NONE, Json),
        ("POST", ["exec", id, "start"]) => ep(Route::ExecStart((*id).to_owned()), NONE, Json),
        ("POST", ["exec", id, "resize"]) => obj(Kind::Exec, id, &["h", "w"]),
        ("GET", ["exec", id, "json"]) => obj(Kind::Exec, id, NONE),
        // Images and builds.
        ("GET", ["images", "json"]) => {
            ep(Route::Plain, &["all", "filters", "digests", "filter"], NoBody)
        }
        ("GET", ["images", "search"]) => {
            return Err(forbid(
                "GET /images/search (docker search) is not available to a job: the engine would contact the registry named in the term on the job's behalf",
            ))
        }
        ("GET", ["images", "get"]) => ep(Route::ImageRead, &["names"], NoBody),
        ("POST", ["build"]) => ep(Route::Build, BUILD_QUERY, Stream),
        ("POST", ["images", "prune"]) => ep(Route::Prune, FILTERS, NoBody),
        ("POST", ["images", "create"]) => {
            return Err(forbid(
                "POST /images/create (docker pull / import) is not allowed: no registry is reachable from this agent, and an import could overwrite an image other jobs use. Build the image with `docker build` FROM an image already on the engine (`docker images` lists them)",
            ))
        }
        ("POST", ["images", "load"]) => {
            return Err(forbid(
                "POST /images/load (docker load) is not allowed: a loaded archive could overwrite tags other jobs use. Build the image with `docker build` instead",
            ))
        }
        ("GET", ["images", rest @ .., "json" | "history" | "get"]) if !rest.is_empty() => {
            ep(Route::ImageRead, NONE, NoBody)
        }
        ("POST", ["images", rest @ .., "tag"]) if !rest.is_empty() => {
            ep(Route::ImageTag(rest.join("/")), &["repo", "tag"], NoBody)
        }
        ("POST", ["images", rest @ .., "push"]) if !rest.is_empty() => {
            ep(Route::ImagePush(rest.join("/")), &["tag"], NoBody)
        }
        ("DELETE", ["images", rest @ ..]) if !rest.is_empty() => ep(
            Route::ImageRemove(rest.join("/")),
            &["force", "noprune"],
            NoBody,
        ),
        // Networks.
        ("GET", ["networks"]) => ep(Route::List, FILTERS, NoBody),
        ("POST", ["networks", "create"]) => ep(Route::NetworkCreate, NONE, Json),
        ("POST", ["networks", "prune"]) => ep(Route::Prune, FILTERS, NoBody),
        ("GET", ["networks", id]) => obj(Kind::Network, id, &["verbose", "scope"]),
        ("DELETE", ["networks", id]) => obj(Kind::Network, id, NONE),
        ("POST", ["networks", id, "connect"]) => {
            ep(Route::NetworkConnect((*id).to_owned()), NONE, Json)
        }
        ("POST", ["networks", id, "disconnect"]) => {
            ep(Route::NetworkDisconnect((*id).to_owned()), NONE, Json)
        }
        // Volumes.
        ("GET", ["volumes"]) => ep(Route::List, FILTERS, NoBody),
        ("POST", ["volumes", "create"]) => ep(Route::VolumeCreate, NONE, Json),
        ("POST", ["volumes", "prune"]) => ep(Route::Prune, FILTERS, NoBody),
        ("GET", ["volumes", name]) => obj(Kind::Volume, name, NONE),
        ("DELETE", ["volumes", name]) => obj(Kind::Volume, name, &["force"]),
        // Named refusals, for a better message than the default.
        ("POST", ["containers", _, "update"]) => {
            return Err(forbid(
                "docker update is not allowed: a job's containers keep the limits the agent set",
            ))
        }
        (_, ["commit"]) => {
            return Err(forbid(
                "docker commit is not allowed: build images with `docker build`",
            ))
        }
        (_, ["system", ..]) => {
            return Err(forbid(format!(
                "{method} {path} is engine-wide and not allowed for a job: `docker system df`/`prune` would see or remove other jobs' objects. Use `docker container prune`, `docker volume prune`, `docker network prune`, `docker image prune` (each acts on this job's objects only)"
            )))
        }
        (_, ["swarm" | "nodes" | "services" | "tasks" | "secrets" | "configs", ..]) => {
            return Err(forbid(format!(
                "{method} {path}: swarm is not available to a job"
            )))
        }
        ("GET", ["plugins", name, "json"]) => {
            return Err(Refusal::NotFound(Kind::Plugin, (*name).to_owned()))
        }
        (_, ["plugins", ..]) => {
            return Err(forbid(format!(
                "{method} {path}: engine plugins are not available to a job"
            )))
        }
        (_, ["session"]) | (_, ["grpc"]) => {
            return Err(forbid(format!(
                "{method} {path}: BuildKit is not available through the job's engine; build with the classic builder (DOCKER_BUILDKIT=0)"
            )))
        }
        _ => return Err(not_allowed()),
    };
    Ok(r)
}

/// The query parameters of `POST /build` (API 1.41).
const BUILD_QUERY: &[&str] = &[
    "dockerfile",
    "t",
    "extrahosts",
    "remote",
    "q",
    "nocache",
    "cachefrom",
    "pull",
    "rm",
    "forcerm",
    "memory",
    "memswap",
    "cpushares",
    "cpusetcpus",
    "cpusetmems",
    "cpuperiod",
    "cpuquota",
    "cgroupparent",
    "securityopt",
    "buildargs",
    "shmsize",
    "squash",
    "labels",
    "networkmode",
    "platform",
    "target",
    "outputs",
    "version",
    "isolation",
    "ulimits",
    "session",
    "buildid",
];

/// Query parameters a client may give more than once (`docker build -t a -t b`,
/// `docker save a b`).
const REPEATABLE: &[&str] = &["t", "names"];

/// Decoded query pairs in order (repeated keys kept).
pub fn parse_query(query: &str) -> Vec<(String, String)> {
    form_urlencoded::parse(query.as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

/// The query as the engine will read it, or a refusal: only the endpoint's parameters, each
/// once (but for [`REPEATABLE`] ones), no `;` (older Go servers split on it where this parser
/// does not).
pub fn checked_query(query: &str, endpoint: &Endpoint) -> Result<Vec<(String, String)>, Refusal> {
    if query.contains(';') {
        return Err(Refusal::BadRequest(
            "bosun: `;` in the query is refused (the engine may read it as a separator); percent-encode it as %3B".into(),
        ));
    }
    let pairs = parse_query(query);
    for (i, (k, _)) in pairs.iter().enumerate() {
        if !endpoint.query.contains(&k.as_str()) {
            let known = if endpoint.query.is_empty() {
                "it takes none".to_owned()
            } else {
                format!("it takes {}", endpoint.query.join(", "))
            };
            return Err(Refusal::BadRequest(format!(
                "bosun: query parameter `{k}` is not one this endpoint takes ({known})"
            )));
        }
        if !REPEATABLE.contains(&k.as_str()) && pairs[..i].iter().any(|(p, _)| p == k) {
            return Err(Refusal::BadRequest(format!(
                "bosun: query parameter {k} given more than once"
            )));
        }
    }
    Ok(pairs)
}

fn encode_query(pairs: &[(String, String)]) -> String {
    let mut s = form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        s.append_pair(k, v);
    }
    s.finish()
}

fn join(path: &str, pairs: &[(String, String)]) -> String {
    if pairs.is_empty() {
        path.to_owned()
    } else {
        format!("{path}?{}", encode_query(pairs))
    }
}

/// Decode a body into the route's model, as a refusal naming where it went wrong.
fn decoded<T>(body: Option<&[u8]>, what: &str) -> Result<T, Refusal>
where
    T: for<'de> serde::Deserialize<'de> + Default,
{
    model::decode(body.unwrap_or_default())
        .map_err(|e| Refusal::BadRequest(format!("bosun: {what} body: {e}")))
}

/// Plan a routed request. `full_path` is the path as sent (version prefix kept); `body` is
/// the client's body when [`Endpoint::needs_body`].
pub fn plan(
    endpoint: &Endpoint,
    full_path: &str,
    query: &str,
    body: Option<&[u8]>,
    scope: &Scope,
) -> Result<Plan, Refusal> {
    let mut pairs = checked_query(query, endpoint)?;
    let mut checks = Vec::new();
    let mut ensure_volumes = Vec::new();
    let mut out_body = match endpoint.body {
        BodyKind::Stream => Body::Stream,
        BodyKind::None | BodyKind::Json => Body::Empty,
    };
    match &endpoint.route {
        Route::Plain | Route::ImageRead | Route::Auth => {}
        Route::ImagePush(name) => {
            if let Some(host) = registry_host(name) {
                check_registry_host(host)?;
                checks.push(Check::RegistryHost(host.to_owned()));
            }
        }
        Route::List | Route::Prune => {
            let filters = merged_filters(&pairs, scope)?;
            pairs.retain(|(k, _)| k != "filters");
            pairs.push(("filters".to_owned(), filters));
        }
        Route::OnObject(kind, id) => checks.push(Check::Owned(*kind, id.clone())),
        Route::ContainerArchivePut(id) => {
            checks.push(Check::Owned(Kind::Container, id.clone()));
        }
        Route::ExecCreate(id) => {
            checks.push(Check::Owned(Kind::Container, id.clone()));
            let v: model::ExecCreate = decoded(body, "exec create")?;
            if v.Privileged == Some(true) {
                return Err(forbid(
                    "Privileged is not allowed: `docker exec --privileged` would give the process every capability on the host. Drop --privileged",
                ));
            }
            out_body = Body::Json(model::encode(&v));
        }
        Route::ExecStart(id) => {
            checks.push(Check::Owned(Kind::Exec, id.clone()));
            let v: model::ExecStart = decoded(body, "exec start")?;
            out_body = Body::Json(model::encode(&v));
        }
        Route::ContainerCreate => {
            if let Some(max) = scope.limits.max_containers {
                checks.push(Check::ContainerCount(max));
            }
            let v: model::ContainerCreate = decoded(body, "container create")?;
            let v = container_create(v, scope, &mut checks, &mut ensure_volumes)?;
            out_body = Body::Json(model::encode(&v));
        }
        Route::NetworkCreate => {
            let v: model::NetworkCreate = decoded(body, "network create")?;
            let v = network_create(v, scope, &mut checks)?;
            out_body = Body::Json(model::encode(&v));
        }
        Route::NetworkConnect(id) => {
            checks.push(Check::Owned(Kind::Network, id.clone()));
            let v: model::NetworkConnect = decoded(body, "network connect")?;
            network_connect(&v, &mut checks)?;
            out_body = Body::Json(model::encode(&v));
        }
        Route::NetworkDisconnect(id) => {
            checks.push(Check::Owned(Kind::Network, id.clone()));
            let v: model::NetworkDisconnect = decoded(body, "network disconnect")?;
            match v.Container.as_deref() {
                Some(c) if !c.is_empty() => checks.push(Check::Referenced {
                    kind: Kind::Container,
                    name: c.to_owned(),
                    field: "Container".to_owned(),
                }),
                _ => return Err(Refusal::BadRequest("bosun: Container is missing".into())),
            }
            out_body = Body::Json(model::encode(&v));
        }
        Route::VolumeCreate => {
            let v: model::VolumeCreate = decoded(body, "volume create")?;
            let v = volume_create(v, scope, &mut checks)?;
            out_body = Body::Json(model::encode(&v));
        }
        Route::Build => build_query(&mut pairs, scope, &mut checks)?,
        Route::ImageTag(source) => {
            checks.push(Check::Referenced {
                kind: Kind::Image,
                name: source.clone(),
                field: "the image to tag (only images this job built may be tagged)".to_owned(),
            });
            let repo = single(&pairs, "repo")?.unwrap_or_default();
            let tag = single(&pairs, "tag")?.unwrap_or_default();
            if repo.is_empty() {
                return Err(Refusal::BadRequest("bosun: repo is missing".into()));
            }
            checks.push(Check::FreeOrOwned {
                kind: Kind::Image,
                name: image_ref(&repo, &tag),
                field: "repo/tag".to_owned(),
            });
        }
        Route::ImageRemove(name) => {
            checks.push(Check::Referenced {
                kind: Kind::Image,
                name: name.clone(),
                field: "the image to remove (only this job's own tags can be removed)".to_owned(),
            });
        }
    }
    let path_and_query = join(full_path, &pairs);
    Ok(Plan {
        checks,
        ensure_volumes,
        path_and_query,
        body: out_body,
    })
}

/// The registry an image reference names, as the engine reads it: the first component when it
/// has a `.` or `:` or is `localhost`; `None` for Docker Hub.
pub fn registry_host(name: &str) -> Option<&str> {
    let (first, _) = name.split_once('/')?;
    (first.contains('.') || first.contains(':') || first == "localhost").then_some(first)
}

/// Whether a registry address (`host[:port]`) is written as the host's own: `localhost`
/// or a loopback, link-local or unspecified address. The engine connects to it from the host.
pub fn names_the_host(registry: &str) -> bool {
    let name = host_of(registry);
    name.eq_ignore_ascii_case("localhost")
        || name.to_ascii_lowercase().ends_with(".localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| !routable(ip))
}

/// A registry address written as the host's own is refused before any lookup: the engine
/// would push to it from the host.
fn check_registry_host(host: &str) -> Result<(), Refusal> {
    if names_the_host(host) {
        return Err(forbid(format!(
            "the registry `{host}` is the host's own address: a job's engine does not push to the host (loopback, link-local or unspecified addresses). Push to a registry on the network"
        )));
    }
    Ok(())
}

/// `host:port`, `[v6]:port` → the host part.
pub fn host_of(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match host.rsplit_once(':') {
        Some((h, port)) if port.chars().all(|c| c.is_ascii_digit()) => h,
        _ => host,
    }
}

/// Whether an address is one a job's engine may reach on its behalf: not the host itself
/// (loopback, unspecified) and not link-local (cloud metadata services live there).
pub fn routable(ip: std::net::IpAddr) -> bool {
    match ip {
        std::net::IpAddr::V4(v4) => {
            !(v4.is_loopback() || v4.is_unspecified() || v4.is_link_local() || v4.is_broadcast())
        }
        std::net::IpAddr::V6(v6) => {
            let mapped = v6
                .to_ipv4_mapped()
                .is_some_and(|v4| v4.is_loopback() || v4.is_unspecified() || v4.is_link_local());
            !(v6.is_loopback()
                || v6.is_unspecified()
                || (v6.segments()[0] & 0xffc0) == 0xfe80
                || mapped)
        }
    }
}

/// `repo:tag` as the engine names it (`latest` when no tag).
pub fn image_ref(repo: &str, tag: &str) -> String {
    if tag.is_empty() {
        if repo.contains('@') || has_tag(repo) {
            repo.to_owned()
        } else {
            format!("{repo}:latest")
        }
    } else {
        format!("{repo}:{tag}")
    }
}

fn has_tag(name: &str) -> bool {
    let last = name.rsplit('/').next().unwrap_or(name);
    last.contains(':')
}

fn single(pairs: &[(String, String)], key: &str) -> Result<Option<String>, Refusal> {
    let mut it = pairs.iter().filter(|(k, _)| k == key);
    let first = it.next().map(|(_, v)| v.clone());
    if it.next().is_some() {
        return Err(Refusal::BadRequest(format!(
            "bosun: query parameter {key} given more than once"
        )));
    }
    Ok(first)
}

/// The client's `filters` (new or legacy form) with the job's label added: an AND, so no
/// client filter can widen the list.
fn merged_filters(pairs: &[(String, String)], scope: &Scope) -> Result<String, Refusal> {
    let mut merged: BTreeMap<String, Vec<String>> = BTreeMap::new();
    if let Some(text) = single(pairs, "filters")? {
        if !text.is_empty() {
            let v: Value = serde_json::from_str(&text)
                .map_err(|e| Refusal::BadRequest(format!("bosun: filters: {e}")))?;
            let Value::Object(m) = v else {
                return Err(Refusal::BadRequest(
                    "bosun: filters must be a JSON object".into(),
                ));
            };
            for (k, vals) in m {
                let list = merged.entry(k).or_default();
                match vals {
                    Value::Array(a) => {
                        for x in a {
                            match x {
                                Value::String(s) => list.push(s),
                                _ => {
                                    return Err(Refusal::BadRequest(
                                        "bosun: filters values must be strings".into(),
                                    ))
                                }
                            }
                        }
                    }
                    Value::Object(o) => {
                        for (s, on) in o {
                            if on == Value::Bool(true) {
                                list.push(s);
                            }
                        }
                    }
                    _ => {
                        return Err(Refusal::BadRequest(
                            "bosun: filters values must be lists".into(),
                        ))
                    }
                }
            }
        }
    }
    let labels = merged.entry("label".to_owned()).or_default();
    labels.push(scope.label_filter());
    labels.push(Scope::kind_filter());
    Ok(serde_json::to_string(&merged).unwrap_or_default())
}

/// What the engine said about a checked object: `None` if it does not exist, else the value
/// of its `bosun.job` label (`None` for the host's objects).
pub type Found<'a> = Option<Option<&'a str>>;

/// Decide one check from what the engine said (`count`: the job's containers, for
/// [`Check::ContainerCount`]). The server and the property test share this.
pub fn judge(check: &Check, found: Found<'_>, count: usize, job: &str) -> Result<(), Refusal> {
    let mine = found == Some(Some(job));
    match check {
        Check::Owned(kind, name) => {
            if mine {
                Ok(())
            } else {
                Err(Refusal::NotFound(*kind, name.clone()))
            }
        }
        Check::Referenced { kind, name, field } => {
            if mine {
                Ok(())
            } else {
                Err(forbid(format!(
                    "{field}: {} `{name}` is not one of this job's {}s",
                    kind.word(),
                    kind.word()
                )))
            }
        }
        Check::FreeOrOwned { kind, name, field } => {
            if found.is_none() || mine {
                Ok(())
            } else {
                Err(forbid(format!(
                    "{field}: {} `{name}` already exists and belongs to the host or another job; choose another name",
                    kind.word()
                )))
            }
        }
        // Decided by the server from the addresses the name resolves to.
        Check::RegistryHost(_) => Ok(()),
        Check::ContainerCount(max) => {
            if count < *max {
                Ok(())
            } else {
                Err(forbid(format!(
                    "the job has {count} containers, its limit ({max}, engine_max_containers in the agent's settings); remove some with docker rm first"
                )))
            }
        }
    }
}

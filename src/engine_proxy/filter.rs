//! What a job may ask of the engine: a pure function from a request (method, path, query,
//! body) to a [`Plan`] — the checks the server must make against the engine, the objects it
//! must create first, and the exact request it forwards — or a [`Refusal`].
//!
//! Default deny: a route not in [`route`] is refused with its method and path. Objects named
//! in the path must be the job's (checked by label, else 404 as if they did not exist);
//! objects named in a body must be the job's too (else 403 naming the field). Whatever is
//! created carries the job's labels, lists are filtered by them, and the forwarded query and
//! body are re-serialized from what was checked, so the engine sees nothing the filter did
//! not.

use serde_json::{Map, Value};
use std::collections::BTreeMap;

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
    /// The client's body, streamed through untouched (tar contexts, stdin, archives).
    Stream,
    /// A rewritten JSON body.
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

/// Which body a route needs before it can be planned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// Engine-wide reads that name no object (ping, version, info, auth).
    Plain,
    /// A list: add the job's label filter.
    List,
    /// An operation on a named object of the job.
    OnObject(Kind, String),
    ContainerCreate,
    ExecCreate(String),
    ContainerArchivePut(String),
    NetworkCreate,
    NetworkConnect(String),
    VolumeCreate,
    Prune,
    Build,
    /// Reads of any image (inspect, history, save): images are shared.
    ImageRead,
    ImageTag(String),
    ImageRemove(String),
    ImagePush(String),
}

impl Route {
    /// Whether the JSON body must be read (and rewritten) before planning.
    pub fn needs_body(&self) -> bool {
        matches!(
            self,
            Route::ContainerCreate
                | Route::ExecCreate(_)
                | Route::NetworkCreate
                | Route::NetworkConnect(_)
                | Route::VolumeCreate
        )
    }
}

/// The API path without its `/v1.41` prefix, checked to be clean: no `.`/`..`/empty
/// segments, no percent-escapes (no engine object name contains `%`).
pub fn strip_version(path: &str) -> Result<&str, Refusal> {
    if !path.starts_with('/') || path.contains('%') || path.contains('\\') {
        return Err(Refusal::BadRequest(format!("bosun: malformed path {path}")));
    }
    let rest = match path.strip_prefix("/v") {
        Some(r) => match r.find('/') {
            Some(i)
                if !r[..i].is_empty() && r[..i].chars().all(|c| c.is_ascii_digit() || c == '.') =>
            {
                &r[i..]
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

/// Map a method and (version-less) path to a route, or refuse it. The allow-list.
pub fn route(method: &str, path: &str) -> Result<Route, Refusal> {
    let segs: Vec<&str> = path.split('/').skip(1).collect();
    let not_allowed = || {
        forbid(format!(
            "{method} {path} is not allowed for a job (the job's engine serves containers, images, builds, networks, volumes and events of the job only; swarm, plugins, system-wide calls and host access are refused)"
        ))
    };
    let obj = |k: Kind, s: &str| Route::OnObject(k, s.to_owned());
    let r = match (method, segs.as_slice()) {
        ("GET" | "HEAD", ["_ping"]) | ("GET", ["version"]) | ("GET", ["info"]) => Route::Plain,
        ("POST", ["auth"]) => Route::Plain,
        ("GET", ["events"]) => Route::List,
        // Containers.
        ("GET", ["containers", "json"]) => Route::List,
        ("POST", ["containers", "create"]) => Route::ContainerCreate,
        ("POST", ["containers", "prune"]) => Route::Prune,
        ("GET", ["containers", id, "json" | "top" | "logs" | "changes" | "export" | "stats"]) => {
            obj(Kind::Container, id)
        }
        (
            "POST",
            ["containers", id, "resize" | "start" | "stop" | "restart" | "kill" | "rename" | "pause"
            | "unpause" | "attach" | "wait"],
        ) => obj(Kind::Container, id),
        ("DELETE", ["containers", id]) => obj(Kind::Container, id),
        ("GET" | "HEAD", ["containers", id, "archive"]) => obj(Kind::Container, id),
        ("PUT", ["containers", id, "archive"]) => Route::ContainerArchivePut((*id).to_owned()),
        ("POST", ["containers", id, "exec"]) => Route::ExecCreate((*id).to_owned()),
        ("POST", ["exec", id, "start" | "resize"]) | ("GET", ["exec", id, "json"]) => {
            obj(Kind::Exec, id)
        }
        // Images and builds.
        ("GET", ["images", "json"]) | ("GET", ["images", "search"]) => Route::Plain,
        ("GET", ["images", "get"]) => Route::ImageRead,
        ("POST", ["build"]) => Route::Build,
        ("POST", ["images", "prune"]) => Route::Prune,
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
            Route::ImageRead
        }
        ("POST", ["images", rest @ .., "tag"]) if !rest.is_empty() => {
            Route::ImageTag(rest.join("/"))
        }
        ("POST", ["images", rest @ .., "push"]) if !rest.is_empty() => {
            Route::ImagePush(rest.join("/"))
        }
        ("DELETE", ["images", rest @ ..]) if !rest.is_empty() => Route::ImageRemove(rest.join("/")),
        // Networks.
        ("GET", ["networks"]) => Route::List,
        ("POST", ["networks", "create"]) => Route::NetworkCreate,
        ("POST", ["networks", "prune"]) => Route::Prune,
        ("GET", ["networks", id]) | ("DELETE", ["networks", id]) => obj(Kind::Network, id),
        ("POST", ["networks", id, "connect" | "disconnect"]) => {
            Route::NetworkConnect((*id).to_owned())
        }
        // Volumes.
        ("GET", ["volumes"]) => Route::List,
        ("POST", ["volumes", "create"]) => Route::VolumeCreate,
        ("POST", ["volumes", "prune"]) => Route::Prune,
        ("GET", ["volumes", name]) | ("DELETE", ["volumes", name]) => obj(Kind::Volume, name),
        // Named refusals, for a better message than the default.
        (_, ["containers", _, "update"]) => {
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

/// Decoded query pairs in order (repeated keys kept).
pub fn parse_query(query: &str) -> Vec<(String, String)> {
    form_urlencoded::parse(query.as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
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

/// Plan a routed request. `full_path` is the path as sent (version prefix kept); `body` is
/// the client's body when [`Route::needs_body`].
pub fn plan(
    route: &Route,
    full_path: &str,
    query: &str,
    body: Option<&[u8]>,
    scope: &Scope,
) -> Result<Plan, Refusal> {
    let mut pairs = parse_query(query);
    let mut checks = Vec::new();
    let mut ensure_volumes = Vec::new();
    let mut out_body = Body::Stream;
    match route {
        Route::Plain | Route::ImageRead | Route::ImagePush(_) => {}
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
            let mut v = json_object(body)?;
            check_keys(&v, EXEC_KEYS, "")?;
            if truthy(v.get("Privileged")) {
                return Err(forbid(
                    "Privileged is not allowed: `docker exec --privileged` would give the process every capability on the host. Drop --privileged",
                ));
            }
            v.remove("Privileged");
            retain_known(&mut v, EXEC_KEYS);
            out_body = Body::Json(to_vec(&Value::Object(v)));
        }
        Route::ContainerCreate => {
            if let Some(max) = scope.limits.max_containers {
                checks.push(Check::ContainerCount(max));
            }
            let v = json_object(body)?;
            let v = container_create(v, scope, &mut checks, &mut ensure_volumes)?;
            out_body = Body::Json(to_vec(&Value::Object(v)));
        }
        Route::NetworkCreate => {
            let mut v = json_object(body)?;
            check_keys(&v, NETWORK_KEYS, "")?;
            let driver = v.get("Driver").and_then(Value::as_str).unwrap_or("");
            if !matches!(driver, "" | "bridge") {
                return Err(forbid(format!(
                    "Driver `{driver}` is not allowed for a network: only bridge networks (the default) are. Drop --driver"
                )));
            }
            if !matches!(str_of(&v, "Scope"), "" | "local") {
                return Err(forbid(
                    "Scope is not allowed for a job's network: only local networks are",
                ));
            }
            for field in ["ConfigFrom", "Ingress", "ConfigOnly"] {
                if truthy(v.get(field)) {
                    return Err(forbid(format!(
                        "{field} is not allowed for a job's network"
                    )));
                }
            }
            if let Some(Value::Object(opts)) = v.get("Options") {
                if opts
                    .keys()
                    .any(|k| k.starts_with("com.docker.network.bridge."))
                {
                    return Err(forbid(
                        "Options com.docker.network.bridge.* are not allowed: they change the host's network interfaces. Drop the -o options",
                    ));
                }
            }
            if let Some(name) = v.get("Name").and_then(Value::as_str) {
                checks.push(Check::FreeOrOwned {
                    kind: Kind::Network,
                    name: name.to_owned(),
                    field: "Name".to_owned(),
                });
            }
            inject_labels(&mut v, "Labels", scope)?;
            retain_known(&mut v, NETWORK_KEYS);
            out_body = Body::Json(to_vec(&Value::Object(v)));
        }
        Route::NetworkConnect(id) => {
            checks.push(Check::Owned(Kind::Network, id.clone()));
            let mut v = json_object(body)?;
            let known = ["Container", "EndpointConfig", "Force"];
            check_keys(&v, &known, "")?;
            retain_known(&mut v, &known);
            match v.get("Container").and_then(Value::as_str) {
                Some(c) => checks.push(Check::Referenced {
                    kind: Kind::Container,
                    name: c.to_owned(),
                    field: "Container".to_owned(),
                }),
                None => return Err(Refusal::BadRequest("bosun: Container is missing".into())),
            }
            out_body = Body::Json(to_vec(&Value::Object(v)));
        }
        Route::VolumeCreate => {
            let mut v = json_object(body)?;
            check_keys(&v, VOLUME_KEYS, "")?;
            let driver = v.get("Driver").and_then(Value::as_str).unwrap_or("");
            if !matches!(driver, "" | "local") {
                return Err(forbid(format!(
                    "Driver `{driver}` is not allowed for a volume: only local volumes are. Drop --driver"
                )));
            }
            if v.get("DriverOpts")
                .is_some_and(|o| o.as_object().is_some_and(|m| !m.is_empty()))
            {
                return Err(forbid(
                    "DriverOpts are not allowed for a volume: `-o type=none,o=bind,device=PATH` would mount a host path. Create the volume without options and fill it with `docker cp`",
                ));
            }
            if let Some(name) = v
                .get("Name")
                .and_then(Value::as_str)
                .filter(|n| !n.is_empty())
            {
                checks.push(Check::FreeOrOwned {
                    kind: Kind::Volume,
                    name: name.to_owned(),
                    field: "Name".to_owned(),
                });
            }
            inject_labels(&mut v, "Labels", scope)?;
            retain_known(&mut v, VOLUME_KEYS);
            out_body = Body::Json(to_vec(&Value::Object(v)));
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

fn json_object(body: Option<&[u8]>) -> Result<Map<String, Value>, Refusal> {
    let bytes = body.unwrap_or_default();
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    match serde_json::from_slice::<Value>(bytes) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(Value::Null) => Ok(Map::new()),
        Ok(_) => Err(Refusal::BadRequest(
            "bosun: the body must be a JSON object".into(),
        )),
        Err(e) => Err(Refusal::BadRequest(format!(
            "bosun: invalid JSON body: {e}"
        ))),
    }
}

fn to_vec(v: &Value) -> Vec<u8> {
    serde_json::to_vec(v).unwrap_or_default()
}

fn truthy(v: Option<&Value>) -> bool {
    match v {
        None | Some(Value::Null) | Some(Value::Bool(false)) => false,
        Some(Value::String(s)) => !s.is_empty(),
        Some(Value::Array(a)) => !a.is_empty(),
        Some(Value::Object(o)) => !o.is_empty(),
        Some(Value::Number(n)) => n.as_f64() != Some(0.0),
        Some(Value::Bool(true)) => true,
    }
}

const EXEC_KEYS: &[&str] = &[
    "AttachStdin",
    "AttachStdout",
    "AttachStderr",
    "DetachKeys",
    "Tty",
    "Env",
    "Cmd",
    "Privileged",
    "User",
    "WorkingDir",
    "ConsoleSize",
];
const NETWORK_KEYS: &[&str] = &[
    "Name",
    "CheckDuplicate",
    "Driver",
    "Internal",
    "Attachable",
    "Ingress",
    "IPAM",
    "EnableIPv6",
    "Options",
    "Labels",
    "Scope",
    "ConfigOnly",
    "ConfigFrom",
];
const VOLUME_KEYS: &[&str] = &[
    "Name",
    "Driver",
    "DriverOpts",
    "Labels",
    "ClusterVolumeSpec",
];
const CREATE_KEYS: &[&str] = &[
    "Hostname",
    "Domainname",
    "User",
    "AttachStdin",
    "AttachStdout",
    "AttachStderr",
    "ExposedPorts",
    "Tty",
    "OpenStdin",
    "StdinOnce",
    "Env",
    "Cmd",
    "Healthcheck",
    "ArgsEscaped",
    "Image",
    "Volumes",
    "WorkingDir",
    "Entrypoint",
    "NetworkDisabled",
    "MacAddress",
    "OnBuild",
    "Labels",
    "StopSignal",
    "StopTimeout",
    "Shell",
    "HostConfig",
    "NetworkingConfig",
];
/// Host config fields a job may set as it likes (resource fields are capped after).
const HOST_SAFE: &[&str] = &[
    "Binds",
    "ContainerIDFile",
    "LogConfig",
    "NetworkMode",
    "PortBindings",
    "RestartPolicy",
    "AutoRemove",
    "VolumeDriver",
    "VolumesFrom",
    "Mounts",
    "CapAdd",
    "CapDrop",
    "CgroupnsMode",
    "Dns",
    "DnsOptions",
    "DnsSearch",
    "ExtraHosts",
    "GroupAdd",
    "IpcMode",
    "Cgroup",
    "Links",
    "OomScoreAdj",
    "PidMode",
    "Privileged",
    "PublishAllPorts",
    "ReadonlyRootfs",
    "SecurityOpt",
    "StorageOpt",
    "Tmpfs",
    "UTSMode",
    "UsernsMode",
    "ShmSize",
    "Sysctls",
    "Runtime",
    "ConsoleSize",
    "Isolation",
    "CpuShares",
    "Memory",
    "NanoCpus",
    "CgroupParent",
    "BlkioWeight",
    "BlkioWeightDevice",
    "BlkioDeviceReadBps",
    "BlkioDeviceWriteBps",
    "BlkioDeviceReadIOps",
    "BlkioDeviceWriteIOps",
    "CpuPeriod",
    "CpuQuota",
    "CpuRealtimePeriod",
    "CpuRealtimeRuntime",
    "CpusetCpus",
    "CpusetMems",
    "Devices",
    "DeviceCgroupRules",
    "DeviceRequests",
    "KernelMemory",
    "KernelMemoryTCP",
    "MemoryReservation",
    "MemorySwap",
    "MemorySwappiness",
    "OomKillDisable",
    "Init",
    "PidsLimit",
    "Ulimits",
    "CpuCount",
    "CpuPercent",
    "IOMaximumIOps",
    "IOMaximumBandwidth",
    "MaskedPaths",
    "ReadonlyPaths",
];

/// Go's JSON decoder matches field names case-insensitively (and folds a few non-ASCII
/// letters): a key that is a known field in another spelling, or not ASCII, could slip past
/// a check on the exact name. Refuse those; unknown ASCII keys are ignored by the engine.
fn check_keys(m: &Map<String, Value>, known: &[&str], at: &str) -> Result<(), Refusal> {
    for k in m.keys() {
        if !k.is_ascii() {
            return Err(Refusal::BadRequest(format!(
                "bosun: field name {at}{k:?} is not ASCII"
            )));
        }
        if let Some(exact) = known
            .iter()
            .find(|f| f.eq_ignore_ascii_case(k) && **f != k.as_str())
        {
            return Err(Refusal::BadRequest(format!(
                "bosun: field {at}{k} must be spelled {at}{exact}"
            )));
        }
    }
    Ok(())
}

/// Keep only the fields the filter knows (and so has checked): the engine sees nothing else.
fn retain_known(m: &mut Map<String, Value>, known: &[&str]) {
    m.retain(|k, _| known.contains(&k.as_str()));
}

fn inject_labels(m: &mut Map<String, Value>, key: &str, scope: &Scope) -> Result<(), Refusal> {
    let labels = m
        .entry(key.to_owned())
        .or_insert_with(|| Value::Object(Map::new()));
    if labels.is_null() {
        *labels = Value::Object(Map::new());
    }
    let Value::Object(l) = labels else {
        return Err(Refusal::BadRequest(format!(
            "bosun: {key} must be an object"
        )));
    };
    for (k, v) in scope.labels() {
        l.insert(k, Value::String(v));
    }
    Ok(())
}

fn str_of<'a>(m: &'a Map<String, Value>, key: &str) -> &'a str {
    m.get(key).and_then(Value::as_str).unwrap_or("")
}

/// `container:<id>` modes must name one of the job's containers; `host` is refused.
fn namespace_mode(
    host: &Map<String, Value>,
    field: &str,
    allowed: &[&str],
    checks: &mut Vec<Check>,
    what: &str,
) -> Result<(), Refusal> {
    let mode = str_of(host, field);
    if let Some(other) = mode.strip_prefix("container:") {
        checks.push(Check::Referenced {
            kind: Kind::Container,
            name: other.to_owned(),
            field: format!("HostConfig.{field}"),
        });
        return Ok(());
    }
    if mode.is_empty() || allowed.contains(&mode) {
        return Ok(());
    }
    Err(forbid(format!(
        "HostConfig.{field}={mode} is not allowed: {what}. Drop the option (or use container:<one of this job's containers>)"
    )))
}

fn container_create(
    mut v: Map<String, Value>,
    scope: &Scope,
    checks: &mut Vec<Check>,
    ensure_volumes: &mut Vec<String>,
) -> Result<Map<String, Value>, Refusal> {
    check_keys(&v, CREATE_KEYS, "")?;
    inject_labels(&mut v, "Labels", scope)?;
    let mut host = match v.remove("HostConfig") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(h)) => h,
        Some(_) => {
            return Err(Refusal::BadRequest(
                "bosun: HostConfig must be an object".into(),
            ))
        }
    };
    check_keys(&host, HOST_SAFE, "HostConfig.")?;

    if truthy(host.get("Privileged")) {
        return Err(forbid(
            "HostConfig.Privileged is not allowed: a privileged container is root on the host. Drop --privileged (the job's engine runs containers unprivileged)",
        ));
    }
    for (field, what) in [
        (
            "CapAdd",
            "added capabilities loosen the container's confinement; drop --cap-add",
        ),
        (
            "Devices",
            "host devices are not available to a job; drop --device",
        ),
        (
            "DeviceRequests",
            "host devices (GPUs) are not available to a job; drop --gpus",
        ),
        (
            "DeviceCgroupRules",
            "device access is not available to a job; drop --device-cgroup-rule",
        ),
        (
            "Sysctls",
            "kernel parameters are not a job's to set; drop --sysctl",
        ),
        (
            "CgroupParent",
            "the cgroup parent is the agent's; drop --cgroup-parent",
        ),
        (
            "VolumeDriver",
            "only local volumes are available; drop --volume-driver",
        ),
        (
            "StorageOpt",
            "storage options are the agent's; drop --storage-opt",
        ),
        (
            "OomKillDisable",
            "the out-of-memory killer protects the host; drop --oom-kill-disable",
        ),
        (
            "KernelMemory",
            "kernel memory limits are the agent's; drop --kernel-memory",
        ),
    ] {
        if truthy(host.get(field)) {
            return Err(forbid(format!("HostConfig.{field} is not allowed: {what}")));
        }
    }
    for field in ["MaskedPaths", "ReadonlyPaths"] {
        if host.get(field).is_some_and(|v| !v.is_null()) {
            return Err(forbid(format!(
                "HostConfig.{field} is not allowed: the /proc paths the engine masks stay masked; drop --security-opt systempaths=unconfined"
            )));
        }
    }
    if let Some(opts) = host.get("SecurityOpt").and_then(Value::as_array) {
        for o in opts {
            let s = o.as_str().unwrap_or("");
            let ok = matches!(
                s,
                "no-new-privileges" | "no-new-privileges:true" | "no-new-privileges=true"
            );
            if !ok {
                return Err(forbid(format!(
                    "HostConfig.SecurityOpt `{s}` is not allowed: only no-new-privileges may be set (seccomp, AppArmor and SELinux profiles stay the engine's defaults). Drop --security-opt"
                )));
            }
        }
    }
    let runtime = str_of(&host, "Runtime");
    if !matches!(runtime, "" | "runc") {
        return Err(forbid(format!(
            "HostConfig.Runtime `{runtime}` is not allowed; drop --runtime"
        )));
    }

    // Namespaces.
    let net = str_of(&host, "NetworkMode").to_owned();
    match net.as_str() {
        "" | "default" | "bridge" | "none" => {}
        "host" => {
            return Err(forbid(
                "HostConfig.NetworkMode=host is not allowed: the host's network belongs to the agent and other jobs. Publish ports with -p (reached at the engine's address) or use a network of this job (docker network create)",
            ))
        }
        other => match other.strip_prefix("container:") {
            Some(c) => checks.push(Check::Referenced {
                kind: Kind::Container,
                name: c.to_owned(),
                field: "HostConfig.NetworkMode".to_owned(),
            }),
            None => checks.push(Check::Referenced {
                kind: Kind::Network,
                name: other.to_owned(),
                field: "HostConfig.NetworkMode".to_owned(),
            }),
        },
    }
    namespace_mode(
        &host,
        "PidMode",
        &[],
        checks,
        "the host's processes are not a job's to see",
    )?;
    namespace_mode(
        &host,
        "IpcMode",
        &["private", "shareable", "none"],
        checks,
        "the host's IPC namespace is not a job's",
    )?;
    for field in ["UsernsMode", "UTSMode", "CgroupnsMode", "Cgroup"] {
        let mode = str_of(&host, field);
        let ok = match field {
            "CgroupnsMode" => matches!(mode, "" | "private"),
            _ => mode.is_empty(),
        };
        if !ok {
            return Err(forbid(format!(
                "HostConfig.{field}={mode} is not allowed: host namespaces are not a job's. Drop the option"
            )));
        }
    }

    // Storage: named volumes of the job only.
    if let Some(binds) = host.get("Binds").and_then(Value::as_array) {
        for b in binds {
            let s = b.as_str().unwrap_or("");
            let src = s.split(':').next().unwrap_or("");
            if src.is_empty() || !s.contains(':') {
                continue; // an anonymous volume (`-v /data`)
            }
            if src.starts_with('/') || src.starts_with('.') || src.starts_with('~') {
                return Err(forbid(bind_message("HostConfig.Binds", src)));
            }
            volume_source(src, "HostConfig.Binds", checks, ensure_volumes);
        }
    }
    if let Some(mounts) = host.get("Mounts").and_then(Value::as_array) {
        for m in mounts {
            let Some(m) = m.as_object() else {
                return Err(Refusal::BadRequest(
                    "bosun: HostConfig.Mounts entries must be objects".into(),
                ));
            };
            check_keys(
                m,
                &[
                    "Target",
                    "Source",
                    "Type",
                    "ReadOnly",
                    "Consistency",
                    "BindOptions",
                    "VolumeOptions",
                    "TmpfsOptions",
                ],
                "HostConfig.Mounts[].",
            )?;
            let src = str_of(m, "Source");
            match str_of(m, "Type") {
                "tmpfs" => {}
                "volume" => {
                    if m.get("VolumeOptions")
                        .and_then(|o| o.get("DriverConfig"))
                        .is_some_and(|d| !d.is_null())
                    {
                        return Err(forbid(
                            "HostConfig.Mounts[].VolumeOptions.DriverConfig is not allowed: volume driver options could mount host paths",
                        ));
                    }
                    if !src.is_empty() {
                        volume_source(src, "HostConfig.Mounts[].Source", checks, ensure_volumes);
                    }
                }
                other => {
                    return Err(forbid(if other == "bind" {
                        bind_message("HostConfig.Mounts[].Type=bind", src)
                    } else {
                        format!("HostConfig.Mounts[].Type={other} is not allowed: use volume or tmpfs mounts")
                    }))
                }
            }
        }
    }
    if let Some(from) = host.get("VolumesFrom").and_then(Value::as_array) {
        for f in from {
            let c = f.as_str().unwrap_or("").split(':').next().unwrap_or("");
            checks.push(Check::Referenced {
                kind: Kind::Container,
                name: c.to_owned(),
                field: "HostConfig.VolumesFrom".to_owned(),
            });
        }
    }
    if let Some(links) = host.get("Links").and_then(Value::as_array) {
        for l in links {
            let c = l.as_str().unwrap_or("").split(':').next().unwrap_or("");
            checks.push(Check::Referenced {
                kind: Kind::Container,
                name: c.trim_start_matches('/').to_owned(),
                field: "HostConfig.Links".to_owned(),
            });
        }
    }
    if let Some(nc) = v.get("NetworkingConfig") {
        if let Some(eps) = nc.get("EndpointsConfig").and_then(Value::as_object) {
            for name in eps.keys() {
                match name.as_str() {
                    "bridge" | "default" | "none" => {}
                    "host" => {
                        return Err(forbid(
                            "NetworkingConfig.EndpointsConfig.host is not allowed: the host's network belongs to the agent and other jobs",
                        ))
                    }
                    n if n == net => {}
                    n => checks.push(Check::Referenced {
                        kind: Kind::Network,
                        name: n.to_owned(),
                        field: "NetworkingConfig.EndpointsConfig".to_owned(),
                    }),
                }
            }
        }
    }

    apply_limits(&mut host, &scope.limits);
    retain_known(&mut host, HOST_SAFE);
    retain_known(&mut v, CREATE_KEYS);
    v.insert("HostConfig".to_owned(), Value::Object(host));
    Ok(v)
}

fn bind_message(field: &str, src: &str) -> String {
    let sock = if src.contains("docker.sock") {
        " (the engine's socket would give the container root on the host)"
    } else {
        ""
    };
    format!(
        "{field} `{src}` is not allowed: the job's engine is remote, so the job's own files and host paths cannot be bind-mounted{sock}. Use a named volume (docker volume create, then docker cp into a container using it) or docker cp"
    )
}

fn volume_source(src: &str, field: &str, checks: &mut Vec<Check>, ensure: &mut Vec<String>) {
    checks.push(Check::FreeOrOwned {
        kind: Kind::Volume,
        name: src.to_owned(),
        field: field.to_owned(),
    });
    if !ensure.iter().any(|e| e == src) {
        ensure.push(src.to_owned());
    }
}

/// Cap the container's resources at the job's limits.
fn apply_limits(host: &mut Map<String, Value>, limits: &Limits) {
    let cap = |host: &mut Map<String, Value>, key: &str, max: i64| {
        let asked = host.get(key).and_then(Value::as_i64).unwrap_or(0);
        let v = if asked > 0 { asked.min(max) } else { max };
        host.insert(key.to_owned(), Value::from(v));
    };
    if let Some(max) = limits.memory {
        cap(host, "Memory", max);
        let mem = host.get("Memory").and_then(Value::as_i64).unwrap_or(max);
        host.insert("MemorySwap".to_owned(), Value::from(mem));
    }
    if let Some(max) = limits.nano_cpus {
        // Quota/period and NanoCpus cannot both be set: fold a quota into NanoCpus.
        let quota = host.get("CpuQuota").and_then(Value::as_i64).unwrap_or(0);
        let period = host.get("CpuPeriod").and_then(Value::as_i64).unwrap_or(0);
        if quota > 0 {
            let p = if period > 0 { period } else { 100_000 };
            let n = quota.saturating_mul(1_000_000_000) / p;
            host.insert("NanoCpus".to_owned(), Value::from(n));
        }
        host.remove("CpuQuota");
        host.remove("CpuPeriod");
        cap(host, "NanoCpus", max);
    }
    if let Some(max) = limits.pids {
        cap(host, "PidsLimit", max);
    }
}

/// `/build`: labels on the image, the classic builder only, no host network, tags that are
/// free or the job's own, the job's limits on the build's containers.
fn build_query(
    pairs: &mut Vec<(String, String)>,
    scope: &Scope,
    checks: &mut Vec<Check>,
) -> Result<(), Refusal> {
    for (k, v) in pairs.iter() {
        match k.as_str() {
            "networkmode" if !matches!(v.as_str(), "" | "default" | "bridge" | "none") => {
                return Err(forbid(format!(
                    "networkmode={v} is not allowed for a build: the host's network belongs to the agent and other jobs. Drop --network"
                )))
            }
            "cgroupparent" if !v.is_empty() => {
                return Err(forbid("cgroupparent is not allowed for a build; drop --cgroup-parent"))
            }
            "remote" if !v.is_empty() => {
                return Err(forbid(
                    "remote is not allowed for a build: the engine would fetch the context itself. Send the context from the job (docker build DIR)",
                ))
            }
            "version" if v == "2" => {
                return Err(forbid(
                    "version=2 (BuildKit) is not available through the job's engine; build with the classic builder (DOCKER_BUILDKIT=0)",
                ))
            }
            "isolation" if !v.is_empty() && v != "default" => {
                return Err(forbid("isolation is not allowed for a build"))
            }
            "t" => checks.push(Check::FreeOrOwned {
                kind: Kind::Image,
                name: image_ref(v, ""),
                field: "t (the build's tag)".to_owned(),
            }),
            _ => {}
        }
    }
    let mut labels: Map<String, Value> = match single(pairs, "labels")? {
        Some(text) if !text.is_empty() => match serde_json::from_str(&text) {
            Ok(Value::Object(m)) => m,
            _ => {
                return Err(Refusal::BadRequest(
                    "bosun: labels must be a JSON object".into(),
                ))
            }
        },
        _ => Map::new(),
    };
    for (k, v) in scope.labels() {
        labels.insert(k, Value::String(v));
    }
    pairs.retain(|(k, _)| {
        !matches!(
            k.as_str(),
            "labels" | "memory" | "memswap" | "cpuquota" | "cpuperiod" | "cpusetcpus"
        ) || (k != "labels" && scope.limits.memory.is_none() && scope.limits.nano_cpus.is_none())
    });
    pairs.push((
        "labels".to_owned(),
        serde_json::to_string(&labels).unwrap_or_default(),
    ));
    if let Some(mem) = scope.limits.memory {
        pairs.push(("memory".to_owned(), mem.to_string()));
        pairs.push(("memswap".to_owned(), mem.to_string()));
    }
    if let Some(n) = scope.limits.nano_cpus {
        pairs.push(("cpuperiod".to_owned(), "100000".to_owned()));
        pairs.push(("cpuquota".to_owned(), (n / 10_000).to_string()));
    }
    Ok(())
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

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

mod bodies;
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

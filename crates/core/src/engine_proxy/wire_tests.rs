//! The proxy against a model of Go's JSON decoder, end to end: random bodies for every JSON
//! endpoint, built from the filter's own model, then disguised as Go would still read them
//! (a key in another case or with `ſ`/`K` folded in, a key given twice, a field the model
//! does not know), sent as raw bytes through the real proxy server to a recording engine.
//!
//! What must hold: a disguised body never reaches the engine; a plain one reaches it, if the
//! filter approves it, byte for byte as the filter's re-encoding of what it approved, and Go's
//! reading of those bytes is Go's reading of the client's (but for the labels the proxy adds).

use super::filter::model::{self, Shape, Shaped};
use super::filter::{self, Body, Limits, Scope};
use super::{JobEngine, Upstream};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use proptest::prelude::*;
use serde_json::{Map, Number, Value};
use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

// ---- JSON as written on the wire: key order and duplicates kept ----------------------------

#[derive(Debug, Clone, PartialEq)]
enum Raw {
    Null,
    Bool(bool),
    Num(Number),
    Str(String),
    Arr(Vec<Raw>),
    Obj(Vec<(String, Raw)>),
}

impl<'de> serde::Deserialize<'de> for Raw {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Raw, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Raw;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("JSON")
            }
            fn visit_unit<E>(self) -> Result<Raw, E> {
                Ok(Raw::Null)
            }
            fn visit_bool<E>(self, b: bool) -> Result<Raw, E> {
                Ok(Raw::Bool(b))
            }
            fn visit_i64<E>(self, n: i64) -> Result<Raw, E> {
                Ok(Raw::Num(n.into()))
            }
            fn visit_u64<E>(self, n: u64) -> Result<Raw, E> {
                Ok(Raw::Num(n.into()))
            }
            fn visit_f64<E>(self, n: f64) -> Result<Raw, E> {
                Ok(Number::from_f64(n).map_or(Raw::Null, Raw::Num))
            }
            fn visit_str<E>(self, s: &str) -> Result<Raw, E> {
                Ok(Raw::Str(s.to_owned()))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut a: A) -> Result<Raw, A::Error> {
                let mut v = Vec::new();
                while let Some(x) = a.next_element()? {
                    v.push(x);
                }
                Ok(Raw::Arr(v))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut m: A) -> Result<Raw, A::Error> {
                let mut v = Vec::new();
                while let Some((k, x)) = m.next_entry()? {
                    v.push((k, x));
                }
                Ok(Raw::Obj(v))
            }
        }
        d.deserialize_any(V)
    }
}

fn write_raw(r: &Raw, out: &mut String) {
    let q = |s: &str| serde_json::to_string(s).unwrap_or_default();
    match r {
        Raw::Null => out.push_str("null"),
        Raw::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Raw::Num(n) => out.push_str(&n.to_string()),
        Raw::Str(s) => out.push_str(&q(s)),
        Raw::Arr(a) => {
            out.push('[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_raw(x, out);
            }
            out.push(']');
        }
        Raw::Obj(o) => {
            out.push('{');
            for (i, (k, x)) in o.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&q(k));
                out.push(':');
                write_raw(x, out);
            }
            out.push('}');
        }
    }
}

// ---- Go's encoding/json, as far as the engine's request types need it ----------------------

/// Go matches a key to a field ignoring ASCII case, with `ſ` as `s` and the Kelvin sign as
/// `k` (its `foldName`).
fn go_fold_eq(field: &str, key: &str) -> bool {
    let fold = |c: char| match c {
        '\u{17F}' => 's',
        '\u{212A}' => 'k',
        c => c.to_ascii_lowercase(),
    };
    field.chars().map(fold).eq(key.chars().map(fold))
}

/// What Go's decoder makes of `raw` as a value of `shape`: a struct takes each key by its
/// exact or folded name (later keys win, nested structs and maps merge), ignores unknown keys;
/// `null` leaves a value unset. `Err` where Go would fail the whole request.
fn go_decode(shape: &Shape, raw: &Raw) -> Result<Value, ()> {
    Ok(match (shape, raw) {
        (_, Raw::Null) => Value::Null,
        (Shape::Str, Raw::Str(s)) => Value::String(s.clone()),
        (Shape::Bool, Raw::Bool(b)) => Value::Bool(*b),
        (Shape::Int, Raw::Num(n)) if n.is_i64() || n.is_u64() => Value::Number(n.clone()),
        (Shape::StrOrList, Raw::Str(s)) => Value::Array(vec![Value::String(s.clone())]),
        (Shape::StrOrList, Raw::Arr(_)) => go_decode(&Shape::List(Box::new(Shape::Str)), raw)?,
        (Shape::List(inner), Raw::Arr(items)) => Value::Array(
            items
                .iter()
                .map(|x| go_decode(inner, x))
                .collect::<Result<_, _>>()?,
        ),
        (Shape::Map(inner), Raw::Obj(pairs)) => {
            let mut m = Map::new();
            for (k, x) in pairs {
                let v = go_decode(inner, x)?;
                merge(&mut m, k, v);
            }
            Value::Object(m)
        }
        (Shape::Struct(fields), Raw::Obj(pairs)) => {
            let mut m = Map::new();
            for (k, x) in pairs {
                let field = fields
                    .iter()
                    .find(|(f, _)| f == k)
                    .or_else(|| fields.iter().find(|(f, _)| go_fold_eq(f, k)));
                if let Some((name, inner)) = field {
                    let v = go_decode(inner, x)?;
                    merge(&mut m, name, v);
                }
            }
            Value::Object(m)
        }
        _ => return Err(()),
    })
}

/// Go decodes into what is already there: objects merge, everything else is replaced; null
/// changes nothing.
fn merge(m: &mut Map<String, Value>, k: &str, v: Value) {
    match (m.get_mut(k), v) {
        (_, Value::Null) => {}
        (Some(Value::Object(old)), Value::Object(new)) => {
            for (nk, nv) in new {
                merge(old, &nk, nv);
            }
        }
        (_, v) => {
            m.insert(k.to_owned(), v);
        }
    }
}

/// Empty objects are the same as absent ones to the engine's request handling, and the labels
/// are the proxy's to set.
fn normalized(v: Value) -> Value {
    fn strip(v: Value) -> Option<Value> {
        match v {
            Value::Null => None,
            Value::Object(m) => {
                let m: Map<String, Value> = m
                    .into_iter()
                    .filter_map(|(k, v)| strip(v).map(|v| (k, v)))
                    .collect();
                (!m.is_empty()).then_some(Value::Object(m))
            }
            other => Some(other),
        }
    }
    let mut v = v;
    if let Value::Object(m) = &mut v {
        m.remove("Labels");
    }
    strip(v).unwrap_or(Value::Null)
}

// ---- bodies: generated from the model, then disguised ---------------------------------------

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
}

/// A plain value of `shape`: a few fields of each struct, harmless values mostly (names of the
/// job's objects, empty strings, false), so that many bodies pass the filter.
fn generate(shape: &Shape, rng: &mut Rng, depth: usize) -> Raw {
    match shape {
        Shape::Str => Raw::Str(["", "", "thing", "job-net", "1"][rng.below(5)].to_owned()),
        Shape::Bool => Raw::Bool(rng.chance(15)),
        Shape::Int => Raw::Num((rng.below(3) as u64).into()),
        Shape::StrOrList => {
            if rng.chance(50) {
                Raw::Str("echo hi".into())
            } else {
                Raw::Arr(vec![Raw::Str("sh".into()), Raw::Str("-c".into())])
            }
        }
        Shape::List(inner) => Raw::Arr(
            (0..rng.below(3))
                .map(|_| generate(inner, rng, depth + 1))
                .collect(),
        ),
        Shape::Map(inner) => Raw::Obj(
            (0..rng.below(3))
                .map(|i| (format!("key{i}"), generate(inner, rng, depth + 1)))
                .collect(),
        ),
        Shape::Struct(fields) => {
            let percent = if depth == 0 { 30 } else { 12 };
            let mut pairs: Vec<(String, Raw)> = Vec::new();
            for (name, inner) in fields {
                if rng.chance(percent) {
                    pairs.push(((*name).to_owned(), generate(inner, rng, depth + 1)));
                }
            }
            if pairs.is_empty() && depth == 0 {
                if let Some((name, inner)) = fields.first() {
                    pairs.push(((*name).to_owned(), generate(inner, rng, depth + 1)));
                }
            }
            Raw::Obj(pairs)
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Disguise {
    /// A struct key in another case: Go still finds the field.
    Recased,
    /// A struct key with `s` as `ſ` or `k` as the Kelvin sign: Go still finds the field.
    Folded,
    /// A key given twice, the second one winning in Go.
    Repeated,
    /// A field the model does not know: Go ignores it, a newer engine might not.
    Unknown,
}

/// Every struct object in `raw` (as a path of indices) with its shape.
fn struct_objects<'a>(
    shape: &'a Shape,
    raw: &Raw,
    path: Vec<usize>,
    out: &mut Vec<(Vec<usize>, &'a Shape)>,
) {
    match (shape, raw) {
        (Shape::Struct(fields), Raw::Obj(pairs)) => {
            out.push((path.clone(), shape));
            for (i, (k, x)) in pairs.iter().enumerate() {
                if let Some((_, inner)) = fields.iter().find(|(f, _)| f == k) {
                    let mut p = path.clone();
                    p.push(i);
                    struct_objects(inner, x, p, out);
                }
            }
        }
        (Shape::Map(inner), Raw::Obj(pairs)) => {
            for (i, (_, x)) in pairs.iter().enumerate() {
                let mut p = path.clone();
                p.push(i);
                struct_objects(inner, x, p, out);
            }
        }
        (Shape::List(inner), Raw::Arr(items)) => {
            for (i, x) in items.iter().enumerate() {
                let mut p = path.clone();
                p.push(i);
                struct_objects(inner, x, p, out);
            }
        }
        _ => {}
    }
}

fn at_mut<'a>(raw: &'a mut Raw, path: &[usize]) -> &'a mut Raw {
    match (raw, path.split_first()) {
        (r, None) => r,
        (Raw::Obj(pairs), Some((i, rest))) => at_mut(&mut pairs[*i].1, rest),
        (Raw::Arr(items), Some((i, rest))) => at_mut(&mut items[*i], rest),
        (r, Some(_)) => r,
    }
}

/// Disguise one key of one struct object in `raw`; `false` when there was none to disguise.
fn disguise(shape: &Shape, raw: &mut Raw, how: Disguise, rng: &mut Rng) -> bool {
    let mut objects = Vec::new();
    struct_objects(shape, raw, Vec::new(), &mut objects);
    if objects.is_empty() {
        return false;
    }
    let (path, obj_shape) = objects[rng.below(objects.len())].clone();
    let Shape::Struct(fields) = obj_shape else {
        return false;
    };
    let Raw::Obj(pairs) = at_mut(raw, &path) else {
        return false;
    };
    match how {
        Disguise::Unknown => {
            let name = ["Annotations", "Extra", "hostconfig_", "ClusterVolumeSpec"][rng.below(4)];
            if fields.iter().any(|(f, _)| go_fold_eq(f, name)) {
                return false;
            }
            pairs.push((name.to_owned(), Raw::Bool(true)));
            true
        }
        Disguise::Repeated | Disguise::Recased | Disguise::Folded if pairs.is_empty() => false,
        Disguise::Repeated => {
            let i = rng.below(pairs.len());
            let again = pairs[i].clone();
            pairs.push(again);
            true
        }
        Disguise::Recased => {
            let i = rng.below(pairs.len());
            let k = &pairs[i].0;
            let recased: String = if rng.chance(50) {
                k.to_ascii_lowercase()
            } else {
                k.to_ascii_uppercase()
            };
            if recased == *k {
                return false;
            }
            pairs[i].0 = recased;
            true
        }
        Disguise::Folded => {
            let i = rng.below(pairs.len());
            let k = &pairs[i].0;
            let folded: String = k
                .chars()
                .map(|c| match c {
                    's' | 'S' => '\u{17F}',
                    'k' | 'K' => '\u{212A}',
                    c => c,
                })
                .collect();
            if folded == *k {
                return false;
            }
            pairs[i].0 = folded;
            true
        }
    }
}

// ---- the proxy, between a client and a recording engine -------------------------------------

#[derive(Debug, Clone)]
struct Recorded {
    method: String,
    uri: String,
    content_type: Option<String>,
    body: Vec<u8>,
}

struct Rig {
    rt: tokio::runtime::Runtime,
    socket: PathBuf,
    recorded: Arc<Mutex<Vec<Recorded>>>,
    _dir: tempfile::TempDir,
}

const JOB: &str = "job-a";

fn scope() -> Scope {
    Scope {
        job: JOB.into(),
        agent: "agent-1".into(),
        limits: Limits::default(),
    }
}

/// The engine as the proxy's checks see it: every object the job's, but names starting with
/// `host` (the host's); every other request recorded and answered 201.
async fn engine(
    req: Request<hyper::body::Incoming>,
    log: Arc<Mutex<Vec<Recorded>>>,
) -> Response<Full<Bytes>> {
    let method = req.method().to_string();
    let uri = req.uri().to_string();
    let path = req.uri().path().to_owned();
    let content_type = req
        .headers()
        .get(hyper::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = req
        .into_body()
        .collect()
        .await
        .map(|c| c.to_bytes().to_vec())
        .unwrap_or_default();
    let labels = serde_json::json!({
        crate::executor::LABEL_JOB: JOB,
        crate::executor::LABEL_KIND: filter::KIND_VALUE,
    });
    let segs: Vec<&str> = path.split('/').skip(1).collect();
    let reply = |status: u16, v: Value| {
        let mut r = Response::new(Full::new(Bytes::from(v.to_string())));
        *r.status_mut() = hyper::StatusCode::from_u16(status).unwrap_or_default();
        r
    };
    if method == "GET" {
        let name = match segs.as_slice() {
            ["containers", "json"] => return reply(200, Value::Array(Vec::new())),
            ["containers" | "images" | "exec", n, "json"] | ["networks" | "volumes", n] => *n,
            _ => "",
        };
        if name.starts_with("host") {
            return reply(404, serde_json::json!({"message": "no such object"}));
        }
        return reply(
            200,
            serde_json::json!({
                "Id": name, "ID": name, "Name": name, "ContainerID": "c-of-the-job",
                "Config": {"Labels": labels}, "Labels": labels,
            }),
        );
    }
    if let Ok(mut l) = log.lock() {
        l.push(Recorded {
            method,
            uri,
            content_type,
            body,
        });
    }
    reply(201, serde_json::json!({"Id": "made"}))
}

fn rig() -> &'static Rig {
    static RIG: OnceLock<Rig> = OnceLock::new();
    RIG.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let dir = tempfile::tempdir().expect("tempdir");
        let engine_path = dir.path().join("engine.sock");
        let socket = dir.path().join("proxy.sock");
        let recorded = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&recorded);
        rt.block_on(async {
            let engine_listener = tokio::net::UnixListener::bind(&engine_path).expect("bind");
            tokio::spawn(async move {
                while let Ok((s, _)) = engine_listener.accept().await {
                    let log = Arc::clone(&log);
                    tokio::spawn(async move {
                        let svc = hyper::service::service_fn(move |req| {
                            let log = Arc::clone(&log);
                            async move { Ok::<_, Infallible>(engine(req, log).await) }
                        });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(s), svc)
                            .await;
                    });
                }
            });
            let listener = tokio::net::UnixListener::bind(&socket).expect("bind");
            // The token lives as long as the rig (the whole test binary).
            std::mem::forget(JobEngine::serve_on(
                listener,
                Upstream::Unix(engine_path),
                scope(),
            ));
        });
        Rig {
            rt,
            socket,
            recorded,
            _dir: dir,
        }
    })
}

/// Send raw bytes as the body of `POST path` and return the status and what reached the
/// engine.
fn send(path: &str, body: &[u8]) -> (u16, Vec<Recorded>) {
    let rig = rig();
    if let Ok(mut l) = rig.recorded.lock() {
        l.clear();
    }
    let status = rig.rt.block_on(async {
        let mut s = tokio::net::UnixStream::connect(&rig.socket)
            .await
            .expect("connect");
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: docker\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        s.write_all(head.as_bytes()).await.expect("write");
        s.write_all(body).await.expect("write");
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.expect("read");
        let text = String::from_utf8_lossy(&out);
        text.split(' ')
            .nth(1)
            .and_then(|c| c.parse::<u16>().ok())
            .unwrap_or(0)
    });
    let recorded = rig.recorded.lock().map(|l| l.clone()).unwrap_or_default();
    (status, recorded)
}

/// Every JSON endpoint, with the model its body is read as.
fn endpoints() -> Vec<(&'static str, Shape)> {
    vec![
        ("/v1.41/containers/create", model::ContainerCreate::shape()),
        ("/v1.41/containers/web/exec", model::ExecCreate::shape()),
        ("/v1.41/exec/e1/start", model::ExecStart::shape()),
        ("/v1.41/networks/create", model::NetworkCreate::shape()),
        (
            "/v1.41/networks/job-net/connect",
            model::NetworkConnect::shape(),
        ),
        (
            "/v1.41/networks/job-net/disconnect",
            model::NetworkDisconnect::shape(),
        ),
        ("/v1.41/volumes/create", model::VolumeCreate::shape()),
    ]
}

/// What the filter and the server's checks make of the body against this rig's engine: the
/// bytes forwarded, if any. The engine (see [`engine`]) has every object the job's but those
/// named `host…`, and no containers yet; a name no engine object can have (empty, `..`) is
/// not found, as the server looks it up.
fn approved(path: &str, body: &[u8]) -> Option<Vec<u8>> {
    let p = filter::strip_version(path).ok()?;
    let ep = filter::route("POST", p).ok()?;
    let plan = filter::plan(&ep, path, "", Some(body), &scope()).ok()?;
    for check in &plan.checks {
        let found = match check {
            filter::Check::Owned(kind, name)
            | filter::Check::Referenced { kind, name, .. }
            | filter::Check::FreeOrOwned { kind, name, .. } => {
                if super::server::valid_name(*kind, name) && !name.starts_with("host") {
                    Some(Some(JOB))
                } else {
                    None
                }
            }
            filter::Check::ContainerCount(_) => None,
            filter::Check::RegistryHost(_) => continue,
        };
        filter::judge(check, found, 0, JOB).ok()?;
    }
    match plan.body {
        Body::Json(b) => Some(b),
        Body::Empty | Body::Stream => None,
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 600, ..ProptestConfig::default() })]
    #[test]
    fn the_engine_reads_exactly_what_the_filter_approved(
        seed in any::<u64>(),
        which in 0usize..7,
        how in prop_oneof![
            Just(None),
            Just(Some(Disguise::Recased)),
            Just(Some(Disguise::Folded)),
            Just(Some(Disguise::Repeated)),
            Just(Some(Disguise::Unknown)),
        ],
    ) {
        let mut rng = Rng(seed | 1);
        let (path, shape) = endpoints().swap_remove(which);
        let mut raw = generate(&shape, &mut rng, 0);
        let disguised = how.is_some_and(|h| disguise(&shape, &mut raw, h, &mut rng));
        let mut text = String::new();
        write_raw(&raw, &mut text);
        let (status, recorded) = send(path, text.as_bytes());
        let forwarded: Vec<&Recorded> = recorded.iter().filter(|r| r.uri.starts_with(path)).collect();
        if disguised {
            prop_assert_eq!(status, 400, "{} {}", path, text);
            prop_assert!(forwarded.is_empty(), "{:?}", forwarded);
            return Ok(());
        }
        let Some(expected) = approved(path, text.as_bytes()) else {
            prop_assert!(status == 400 || status == 403, "{} {} -> {}", path, text, status);
            prop_assert!(forwarded.is_empty());
            return Ok(());
        };
        prop_assert_eq!(status, 201, "{} {}", path, text);
        prop_assert_eq!(forwarded.len(), 1);
        let got = forwarded[0];
        prop_assert_eq!(got.method.as_str(), "POST");
        prop_assert_eq!(got.content_type.as_deref(), Some("application/json"));
        prop_assert_eq!(&got.body, &expected, "not the filter's re-encoding");
        // Go reads the forwarded bytes as it would have read the client's.
        let client: Raw = serde_json::from_str(&text).expect("raw");
        let sent: Raw = serde_json::from_slice(&got.body).expect("raw");
        let (Ok(a), Ok(b)) = (go_decode(&shape, &client), go_decode(&shape, &sent)) else {
            return Err(TestCaseError::fail(format!("Go could not read {text}")));
        };
        prop_assert_eq!(normalized(a), normalized(b), "{}", text);
        COUNTS.forwarded.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}

struct Counts {
    forwarded: std::sync::atomic::AtomicUsize,
}

static COUNTS: Counts = Counts {
    forwarded: std::sync::atomic::AtomicUsize::new(0),
};

/// The property is not vacuous: the generator makes bodies the filter forwards, for every
/// endpoint, and each kind of disguise applies.
#[test]
fn the_generator_reaches_every_endpoint_and_every_disguise() {
    let mut rng = Rng(7);
    for (path, shape) in endpoints() {
        let forwarded = (0..200)
            .filter(|_| {
                let raw = generate(&shape, &mut rng, 0);
                let mut text = String::new();
                write_raw(&raw, &mut text);
                approved(path, text.as_bytes()).is_some()
            })
            .count();
        assert!(
            forwarded >= 20,
            "{path}: only {forwarded} of 200 bodies pass"
        );
    }
    let (_, shape) = endpoints().swap_remove(0);
    for how in [
        Disguise::Recased,
        Disguise::Folded,
        Disguise::Repeated,
        Disguise::Unknown,
    ] {
        let applied = (0..200)
            .filter(|_| {
                let mut raw = generate(&shape, &mut rng, 0);
                disguise(&shape, &mut raw, how, &mut rng)
            })
            .count();
        assert!(applied >= 50, "{how:?}: applied {applied} of 200");
    }
}

#[test]
fn the_go_model_reads_disguises_as_the_engine_does() {
    let shape = model::HostConfig::shape();
    let raw: Raw =
        serde_json::from_str("{\"privileged\":true,\"Mount\u{17F}\":[{\"type\":\"bind\"}],\"Extra\":1,\"Privileged\":false,\"PRIVILEGED\":true}")
            .unwrap();
    let v = go_decode(&shape, &raw).unwrap();
    assert_eq!(v["Privileged"], true, "the last spelling wins");
    assert_eq!(v["Mounts"][0]["Type"], "bind");
    assert!(v.get("Extra").is_none());
}

//! The filter on its own: every refused field, the allow-list, label injection, list
//! filtering; and a property test that, against a model engine holding this job's, another
//! job's and the host's objects, no forwarded request reaches an object that is not this
//! job's, creates anything unlabelled, or carries a refused field.

use super::filter::*;
use proptest::prelude::*;
use serde_json::{json, Value};
use std::collections::HashMap;

fn scope() -> Scope {
    Scope {
        job: "job-a".into(),
        agent: "agent-1".into(),
        limits: Limits::default(),
    }
}

fn plan_of(method: &str, path: &str, query: &str, body: Option<Value>) -> Result<Plan, Refusal> {
    let p = strip_version(path)?;
    let r = route(method, p)?;
    let bytes = body.map(|b| serde_json::to_vec(&b).unwrap());
    plan(&r, path, query, bytes.as_deref(), &scope())
}

fn create(host: Value) -> Result<Plan, Refusal> {
    plan_of(
        "POST",
        "/v1.41/containers/create",
        "",
        Some(json!({"Image": "bosun/base", "HostConfig": host})),
    )
}

fn forbidden_naming(r: Result<Plan, Refusal>, field: &str) {
    match r {
        Err(Refusal::Forbidden(m)) => assert!(m.contains(field), "{m:?} should name {field}"),
        other => panic!("expected a 403 naming {field}, got {other:?}"),
    }
}

fn body_of(p: &Plan) -> Value {
    match &p.body {
        Body::Json(b) => serde_json::from_slice(b).unwrap(),
        Body::Stream | Body::Empty => Value::Null,
    }
}

#[test]
fn every_refused_host_config_field_is_named() {
    for (host, field) in [
        (json!({"Privileged": true}), "Privileged"),
        (json!({"CapAdd": ["SYS_ADMIN"]}), "CapAdd"),
        (json!({"Devices": [{"PathOnHost": "/dev/sda"}]}), "Devices"),
        (json!({"DeviceRequests": [{"Count": -1}]}), "DeviceRequests"),
        (json!({"Sysctls": {"net.ipv4.ip_forward": "1"}}), "Sysctls"),
        (json!({"CgroupParent": "/"}), "CgroupParent"),
        (
            json!({"SecurityOpt": ["seccomp=unconfined"]}),
            "SecurityOpt",
        ),
        (
            json!({"SecurityOpt": ["apparmor=unconfined"]}),
            "SecurityOpt",
        ),
        (json!({"MaskedPaths": []}), "MaskedPaths"),
        (json!({"NetworkMode": "host"}), "NetworkMode"),
        (json!({"PidMode": "host"}), "PidMode"),
        (json!({"IpcMode": "host"}), "IpcMode"),
        (json!({"UsernsMode": "host"}), "UsernsMode"),
        (json!({"UTSMode": "host"}), "UTSMode"),
        (json!({"CgroupnsMode": "host"}), "CgroupnsMode"),
        (json!({"Runtime": "runsc-host"}), "Runtime"),
        (json!({"Binds": ["/:/host"]}), "Binds"),
        (
            json!({"Binds": ["/var/run/docker.sock:/var/run/docker.sock"]}),
            "docker.sock",
        ),
        (
            json!({"Mounts": [{"Type": "bind", "Source": "/etc", "Target": "/x"}]}),
            "Mounts",
        ),
        (json!({"VolumeDriver": "nfs"}), "VolumeDriver"),
        (json!({"OomKillDisable": true}), "OomKillDisable"),
    ] {
        forbidden_naming(create(host), field);
    }
}

#[test]
fn go_style_case_insensitive_or_non_ascii_field_names_are_refused() {
    // The engine's JSON decoder would take `privileged` as `Privileged`.
    assert!(matches!(
        create(json!({"privileged": true})),
        Err(Refusal::BadRequest(_))
    ));
    assert!(matches!(
        plan_of(
            "POST",
            "/containers/create",
            "",
            Some(json!({"hostconfig": {"Privileged": true}}))
        ),
        Err(Refusal::BadRequest(_))
    ));
    // U+212A KELVIN SIGN folds to `k` in Go.
    assert!(matches!(
        create(json!({"Ulimits": [], "\u{212a}ernelMemory": 1})),
        Err(Refusal::BadRequest(_))
    ));
}

#[test]
fn a_safe_create_is_labelled_capped_and_its_references_checked() {
    let mut s = scope();
    s.limits = Limits {
        nano_cpus: Some(1_000_000_000),
        memory: Some(512 << 20),
        max_containers: Some(10),
        pids: None,
        subnet_pools: Vec::new(),
    };
    let body = json!({
        "Image": "app", "Labels": {"bosun.job": "job-b", "mine": "1"},
        "HostConfig": {
            "Binds": ["data:/data", "/anon"], "NetworkMode": "net1",
            "VolumesFrom": ["c1"], "Memory": 4_i64 << 30, "CpuQuota": 400000,
            "SecurityOpt": ["no-new-privileges"]
        },
        "NetworkingConfig": {"EndpointsConfig": {"net2": {}}}
    });
    let r = route("POST", "/containers/create").unwrap();
    let p = plan(
        &r,
        "/containers/create",
        "",
        Some(&serde_json::to_vec(&body).unwrap()),
        &s,
    )
    .unwrap();
    let b = body_of(&p);
    assert_eq!(
        b["Labels"]["bosun.job"], "job-a",
        "a client cannot choose the job label"
    );
    assert_eq!(b["Labels"]["mine"], "1");
    assert_eq!(b["Labels"]["bosun.agent"], "agent-1");
    assert_eq!(b["HostConfig"]["Memory"], 512 << 20);
    assert_eq!(b["HostConfig"]["MemorySwap"], 512 << 20);
    assert_eq!(b["HostConfig"]["NanoCpus"], 1_000_000_000);
    assert!(b["HostConfig"].get("CpuQuota").is_none());
    assert_eq!(p.ensure_volumes, vec!["data".to_owned()]);
    for c in [
        Check::ContainerCount(10),
        Check::FreeOrOwned {
            kind: Kind::Volume,
            name: "data".into(),
            field: "HostConfig.Binds".into(),
        },
        Check::Referenced {
            kind: Kind::Network,
            name: "net1".into(),
            field: "HostConfig.NetworkMode".into(),
        },
        Check::Referenced {
            kind: Kind::Container,
            name: "c1".into(),
            field: "HostConfig.VolumesFrom".into(),
        },
        Check::Referenced {
            kind: Kind::Network,
            name: "net2".into(),
            field: "NetworkingConfig.EndpointsConfig".into(),
        },
    ] {
        assert!(p.checks.contains(&c), "missing {c:?} in {:?}", p.checks);
    }
}

#[test]
fn the_allow_list_denies_by_default_naming_method_and_path() {
    for (m, path) in [
        ("GET", "/v1.41/swarm"),
        ("POST", "/v1.41/plugins/pull"),
        ("GET", "/v1.41/system/df"),
        ("POST", "/v1.41/session"),
        ("POST", "/v1.41/containers/abc/update"),
        ("GET", "/v1.41/containers/abc/attach/ws"),
        ("POST", "/v1.41/images/create"),
        ("POST", "/v1.41/images/load"),
        ("POST", "/v1.41/commit"),
        ("PUT", "/v1.41/whatever"),
        ("GET", "/v1.41/distribution/x/json"),
    ] {
        let r = strip_version(path).and_then(|p| route(m, p));
        assert!(matches!(r, Err(Refusal::Forbidden(_))), "{m} {path}: {r:?}");
    }
    let Err(Refusal::Forbidden(m)) = route("PUT", "/whatever") else {
        panic!()
    };
    assert!(m.contains("PUT /whatever"), "{m}");
}

#[test]
fn unclean_paths_are_refused_before_routing() {
    for p in [
        "/v1.41/containers/../info",
        "/containers/x/../../swarm",
        "/containers//json",
        "/containers/%2e%2e/json",
        "/containers/./json",
    ] {
        assert!(
            matches!(strip_version(p), Err(Refusal::BadRequest(_))),
            "{p}"
        );
    }
    assert_eq!(
        strip_version("/v1.41/containers/json").unwrap(),
        "/containers/json"
    );
    assert_eq!(strip_version("/_ping").unwrap(), "/_ping");
}

#[test]
fn lists_events_and_prunes_are_filtered_to_the_job_whatever_the_client_asks() {
    for (m, path, q) in [
        ("GET", "/v1.41/containers/json", "all=1"),
        ("GET", "/v1.41/networks", ""),
        (
            "GET",
            "/v1.41/volumes",
            "filters=%7B%22dangling%22%3A%5B%22true%22%5D%7D",
        ),
        (
            "GET",
            "/v1.41/events",
            "filters=%7B%22label%22%3A%7B%22x%3Dy%22%3Atrue%7D%7D",
        ),
        ("POST", "/v1.41/containers/prune", ""),
        ("POST", "/v1.41/images/prune", ""),
    ] {
        let p = plan_of(m, path, q, None).unwrap();
        let query = p.path_and_query.split_once('?').unwrap().1;
        let pairs = parse_query(query);
        let filters: Vec<_> = pairs.iter().filter(|(k, _)| k == "filters").collect();
        assert_eq!(filters.len(), 1, "{path}");
        let f: HashMap<String, Vec<String>> = serde_json::from_str(&filters[0].1).unwrap();
        assert!(
            f["label"].contains(&"bosun.job=job-a".to_owned()),
            "{path}: {f:?}"
        );
    }
    // A second `filters` (the engine reads the first) is refused, not merged.
    assert!(plan_of(
        "GET",
        "/containers/json",
        "filters=%7B%7D&filters=%7B%7D",
        None
    )
    .is_err());
}

#[test]
fn objects_in_the_path_must_be_the_jobs_and_are_forwarded_by_id() {
    let p = plan_of(
        "POST",
        "/v1.41/containers/web/exec",
        "",
        Some(json!({"Cmd": ["ls"]})),
    )
    .unwrap();
    assert_eq!(p.checks, vec![Check::Owned(Kind::Container, "web".into())]);
    forbidden_naming(
        plan_of(
            "POST",
            "/v1.41/containers/web/exec",
            "",
            Some(json!({"Cmd": ["sh"], "Privileged": true})),
        ),
        "Privileged",
    );
    for (m, path, kind, name) in [
        ("GET", "/v1.41/containers/abc/json", Kind::Container, "abc"),
        ("DELETE", "/v1.41/containers/abc", Kind::Container, "abc"),
        (
            "POST",
            "/v1.41/containers/abc/attach",
            Kind::Container,
            "abc",
        ),
        ("GET", "/v1.41/containers/abc/logs", Kind::Container, "abc"),
        (
            "HEAD",
            "/v1.41/containers/abc/archive",
            Kind::Container,
            "abc",
        ),
        (
            "PUT",
            "/v1.41/containers/abc/archive",
            Kind::Container,
            "abc",
        ),
        ("POST", "/v1.41/exec/e1/start", Kind::Exec, "e1"),
        ("GET", "/v1.41/networks/n1", Kind::Network, "n1"),
        ("DELETE", "/v1.41/volumes/v1", Kind::Volume, "v1"),
    ] {
        let p = plan_of(m, path, "", None).unwrap();
        assert_eq!(
            p.checks,
            vec![Check::Owned(kind, name.into())],
            "{m} {path}"
        );
    }
    // A foreign object answers as if it did not exist.
    let c = Check::Owned(Kind::Container, "abc".into());
    assert_eq!(
        judge(&c, Some(Some("job-b")), 0, "job-a"),
        Err(Refusal::NotFound(Kind::Container, "abc".into()))
    );
    assert_eq!(
        judge(&c, Some(None), 0, "job-a"),
        Err(Refusal::NotFound(Kind::Container, "abc".into()))
    );
    assert!(judge(&c, Some(Some("job-a")), 0, "job-a").is_ok());
}

#[test]
fn builds_are_labelled_classic_and_may_only_tag_free_or_own_names() {
    let p = plan_of(
        "POST",
        "/v1.41/build",
        "t=app%3A1&t=bosun%2Fbase&labels=%7B%22bosun.job%22%3A%22job-b%22%7D",
        None,
    )
    .unwrap();
    let q = parse_query(p.path_and_query.split_once('?').unwrap().1);
    let labels: Vec<_> = q.iter().filter(|(k, _)| k == "labels").collect();
    assert_eq!(labels.len(), 1);
    let l: HashMap<String, String> = serde_json::from_str(&labels[0].1).unwrap();
    assert_eq!(l["bosun.job"], "job-a");
    assert!(p.checks.contains(&Check::FreeOrOwned {
        kind: Kind::Image,
        name: "bosun/base:latest".into(),
        field: "t (the build's tag)".into()
    }));
    assert_eq!(p.body, Body::Stream, "the build context streams through");
    forbidden_naming(
        plan_of("POST", "/build", "networkmode=host", None),
        "networkmode",
    );
    forbidden_naming(plan_of("POST", "/build", "version=2", None), "BuildKit");
    forbidden_naming(plan_of("POST", "/build", "remote=http://x", None), "remote");
    forbidden_naming(
        plan_of("POST", "/build", "cgroupparent=/", None),
        "cgroupparent",
    );
    // Images on the engine may be read by anyone, removed or re-tagged only when the job's.
    assert!(
        plan_of("GET", "/v1.41/images/bosun/base:latest/json", "", None)
            .unwrap()
            .checks
            .is_empty()
    );
    let rm = plan_of("DELETE", "/v1.41/images/bosun/base:latest", "", None).unwrap();
    assert!(
        matches!(&rm.checks[..], [Check::Referenced { kind: Kind::Image, name, .. }] if name == "bosun/base:latest")
    );
}

#[test]
fn networks_and_volumes_are_labelled_and_cannot_reach_the_host() {
    let p = plan_of("POST", "/networks/create", "", Some(json!({"Name": "n"}))).unwrap();
    assert_eq!(body_of(&p)["Labels"]["bosun.job"], "job-a");
    forbidden_naming(
        plan_of(
            "POST",
            "/networks/create",
            "",
            Some(json!({"Name": "n", "Driver": "macvlan"})),
        ),
        "Driver",
    );
    let p = plan_of("POST", "/volumes/create", "", Some(json!({"Name": "v"}))).unwrap();
    assert_eq!(body_of(&p)["Labels"]["bosun.job"], "job-a");
    assert!(p.checks.iter().any(|c| matches!(
        c,
        Check::FreeOrOwned {
            kind: Kind::Volume,
            ..
        }
    )));
    forbidden_naming(
        plan_of(
            "POST",
            "/volumes/create",
            "",
            Some(json!({"Name": "v", "DriverOpts": {"type": "none", "o": "bind", "device": "/"}})),
        ),
        "DriverOpts",
    );
}

/// What docker's own client (version 28, speaking API 1.41) sends for `docker run --rm IMAGE
/// true` and `docker network connect`: the fields of newer API versions included.
#[test]
fn a_current_docker_clients_bodies_pass() {
    let run: Value = serde_json::from_str(
        r#"{"Hostname":"","Domainname":"","User":"","AttachStdin":false,"AttachStdout":true,"AttachStderr":true,"Tty":false,"OpenStdin":false,"StdinOnce":false,"Env":["A=1"],"Cmd":["true"],"Image":"bosun/base","Volumes":{"/d":{}},"WorkingDir":"","Entrypoint":null,"OnBuild":null,"Labels":{},"HostConfig":{"Binds":null,"ContainerIDFile":"","LogConfig":{"Type":"","Config":{}},"NetworkMode":"default","PortBindings":{},"RestartPolicy":{"Name":"no","MaximumRetryCount":0},"AutoRemove":true,"VolumeDriver":"","VolumesFrom":null,"ConsoleSize":[0,0],"CapAdd":null,"CapDrop":null,"CgroupnsMode":"","Dns":[],"DnsOptions":[],"DnsSearch":[],"ExtraHosts":null,"GroupAdd":null,"IpcMode":"","Cgroup":"","Links":null,"OomScoreAdj":0,"PidMode":"","Privileged":false,"PublishAllPorts":false,"ReadonlyRootfs":false,"SecurityOpt":null,"UTSMode":"","UsernsMode":"","ShmSize":0,"Isolation":"","CpuShares":0,"Memory":0,"NanoCpus":0,"CgroupParent":"","BlkioWeight":0,"BlkioWeightDevice":[],"BlkioDeviceReadBps":[],"BlkioDeviceWriteBps":[],"BlkioDeviceReadIOps":[],"BlkioDeviceWriteIOps":[],"CpuPeriod":0,"CpuQuota":0,"CpuRealtimePeriod":0,"CpuRealtimeRuntime":0,"CpusetCpus":"","CpusetMems":"","Devices":[],"DeviceCgroupRules":null,"DeviceRequests":null,"MemoryReservation":0,"MemorySwap":0,"MemorySwappiness":-1,"OomKillDisable":false,"PidsLimit":0,"Ulimits":[],"CpuCount":0,"CpuPercent":0,"IOMaximumIOps":0,"IOMaximumBandwidth":0,"MaskedPaths":null,"ReadonlyPaths":null},"NetworkingConfig":{"EndpointsConfig":{"default":{"IPAMConfig":null,"Links":null,"Aliases":null,"MacAddress":"","DriverOpts":null,"GwPriority":0,"NetworkID":"","EndpointID":"","Gateway":"","IPAddress":"","IPPrefixLen":0,"IPv6Gateway":"","GlobalIPv6Address":"","GlobalIPv6PrefixLen":0,"DNSNames":null}}}}"#,
    )
    .unwrap();
    let p = plan_of("POST", "/v1.41/containers/create", "", Some(run)).unwrap();
    assert_eq!(body_of(&p)["HostConfig"]["AutoRemove"], true);
    let connect = json!({"Container":"x","EndpointConfig":{"IPAMConfig":{},"Links":null,"Aliases":[],"MacAddress":"","DriverOpts":{},"GwPriority":0,"NetworkID":"","EndpointID":"","Gateway":"","IPAddress":"","IPPrefixLen":0,"IPv6Gateway":"","GlobalIPv6Address":"","GlobalIPv6PrefixLen":0,"DNSNames":null}});
    assert!(plan_of("POST", "/v1.41/networks/n2/connect", "", Some(connect)).is_ok());
    forbidden_naming(
        create(json!({"Annotations": {"io.kubernetes.cri": "x"}})),
        "Annotations",
    );
}

#[test]
fn queries_take_each_parameter_of_the_endpoint_once_and_nothing_else() {
    for (m, path, q, what) in [
        ("POST", "/images/app/tag", "repo=a&Repo=b", "`Repo`"),
        ("POST", "/images/app/tag", "repo=a&repo=b", "more than once"),
        ("POST", "/images/app/tag", "repo=a;repo=b", "`;`"),
        (
            "POST",
            "/containers/c/start",
            "hostconfig=x",
            "it takes detachKeys",
        ),
        ("GET", "/containers/c/changes", "x=1", "it takes none"),
    ] {
        match plan_of(m, path, q, None) {
            Err(Refusal::BadRequest(msg)) => assert!(msg.contains(what), "{q}: {msg}"),
            other => panic!("{m} {path}?{q}: {other:?}"),
        }
    }
    // Tags repeat (docker build -t a -t b); the query is re-encoded from the pairs.
    let p = plan_of("POST", "/build", "t=a&t=b&q=1", None).unwrap();
    assert!(
        p.path_and_query.starts_with("/build?t=a&t=b&q=1&labels="),
        "{}",
        p.path_and_query
    );
}

#[test]
fn old_api_versions_are_refused_and_start_takes_no_body() {
    for v in [
        "/v1.23/containers/c/start",
        "/v1.12/containers/c/start",
        "/v1/containers/c/start",
    ] {
        assert!(
            matches!(strip_version(v), Err(Refusal::BadRequest(_))),
            "{v}"
        );
    }
    assert_eq!(
        strip_version("/v1.24/containers/c/start").unwrap(),
        "/containers/c/start"
    );
    assert_eq!(
        route("POST", "/containers/c/start").unwrap().body,
        BodyKind::None
    );
    assert_eq!(route("POST", "/build").unwrap().body, BodyKind::Stream);
    assert_eq!(route("POST", "/auth").unwrap().route, Route::Auth);
}

#[test]
fn log_drivers_write_on_the_host_only() {
    forbidden_naming(
        create(
            json!({"LogConfig": {"Type": "syslog", "Config": {"syslog-address": "tcp://127.0.0.1:1"}}}),
        ),
        "LogConfig.Type `syslog`",
    );
    forbidden_naming(
        create(
            json!({"LogConfig": {"Type": "", "Config": {"syslog-address": "tcp://127.0.0.1:1"}}}),
        ),
        "LogConfig.Config",
    );
    for ok in ["json-file", "local", "none", ""] {
        assert!(
            create(json!({"LogConfig": {"Type": ok, "Config": {}}})).is_ok(),
            "{ok}"
        );
    }
}

#[test]
fn every_network_a_body_names_is_checked_by_name_and_id() {
    let p = plan_of(
        "POST",
        "/containers/create",
        "",
        Some(json!({"HostConfig": {"NetworkMode": "jobnet"},
            "NetworkingConfig": {"EndpointsConfig": {"jobnet": {"NetworkID": "0123abcd"}}}})),
    )
    .unwrap();
    assert!(p.checks.contains(&Check::Referenced {
        kind: Kind::Network,
        name: "0123abcd".into(),
        field: "NetworkingConfig.EndpointsConfig.jobnet.NetworkID".into(),
    }));
    let p = plan_of(
        "POST",
        "/networks/jobnet/connect",
        "",
        Some(json!({"Container": "web", "EndpointConfig": {"NetworkID": "theirs"}})),
    )
    .unwrap();
    assert!(p.checks.contains(&Check::Referenced {
        kind: Kind::Network,
        name: "theirs".into(),
        field: "EndpointConfig.NetworkID".into(),
    }));
    let p = plan_of(
        "POST",
        "/networks/jobnet/disconnect",
        "",
        Some(json!({"Container": "web"})),
    )
    .unwrap();
    assert!(p
        .checks
        .contains(&Check::Owned(Kind::Network, "jobnet".into())));
    assert!(p.checks.iter().any(
        |c| matches!(c, Check::Referenced { kind: Kind::Container, name, .. } if name == "web")
    ));
}

#[test]
fn subnets_come_from_the_engine_or_an_operators_pool() {
    let net = |cfg: Value| {
        plan_of(
            "POST",
            "/networks/create",
            "",
            Some(json!({"Name": "n", "IPAM": {"Config": [cfg]}})),
        )
    };
    forbidden_naming(
        net(json!({"Subnet": "192.168.1.0/30"})),
        "IPAM.Config[].Subnet",
    );
    assert!(net(json!({})).is_ok(), "no subnet: the engine picks one");
    let mut s = scope();
    s.limits.subnet_pools = vec![Subnet::parse("10.200.0.0/16").unwrap()];
    let with_pool = |cfg: Value| {
        let body = serde_json::to_vec(&json!({"Name": "n", "IPAM": {"Config": [cfg]}})).unwrap();
        plan(
            &route("POST", "/networks/create").unwrap(),
            "/networks/create",
            "",
            Some(&body),
            &s,
        )
    };
    assert!(with_pool(json!({"Subnet": "10.200.3.0/24", "Gateway": "10.200.3.1"})).is_ok());
    forbidden_naming(
        with_pool(json!({"Subnet": "10.201.0.0/24"})),
        "10.200.0.0/16",
    );
    forbidden_naming(with_pool(json!({"Subnet": "10.0.0.0/8"})), "Subnet");
    let sub = |t: &str| Subnet::parse(t).unwrap();
    assert!(sub("10.0.0.0/8").contains(&sub("10.255.0.0/16")));
    assert!(!sub("10.0.0.0/8").contains(&sub("11.0.0.0/16")));
    assert!(sub("0.0.0.0/0").contains(&sub("1.2.3.4/32")));
    assert!(!sub("10.0.0.0/8").contains(&sub("fd00::/64")));
    assert!(sub("fd00::/8").contains(&sub("fd12::/64")));
    assert!(Subnet::parse("10.0.0.0/33").is_none());
}

#[test]
fn pushes_to_the_hosts_own_addresses_are_refused() {
    for name in [
        "localhost:5000/app",
        "127.0.0.1:5000/app",
        "[::1]:5000/app",
        "169.254.169.254/app",
        "reg.localhost/app",
    ] {
        forbidden_naming(
            plan_of("POST", &format!("/images/{name}/push"), "", None),
            "host's own address",
        );
    }
    let p = plan_of(
        "POST",
        "/images/registry.example.com/app/push",
        "tag=1",
        None,
    )
    .unwrap();
    assert_eq!(
        p.checks,
        vec![Check::RegistryHost("registry.example.com".into())]
    );
    assert!(plan_of("POST", "/images/app/push", "", None)
        .unwrap()
        .checks
        .is_empty());
}

// ---- the property: nothing escapes ------------------------------------------------------

/// A model engine: name → owner (`Some(job)` or `None` for the host's).
struct Model(HashMap<(Kind, String), Option<String>>);

impl Model {
    fn new() -> Self {
        let mut m = HashMap::new();
        for kind in [
            Kind::Container,
            Kind::Network,
            Kind::Volume,
            Kind::Exec,
            Kind::Image,
        ] {
            m.insert((kind, "mine".to_owned()), Some("job-a".to_owned()));
            m.insert((kind, "theirs".to_owned()), Some("job-b".to_owned()));
            m.insert((kind, "hosts".to_owned()), None);
        }
        Model(m)
    }
    fn found(&self, kind: Kind, name: &str) -> Found<'_> {
        self.0.get(&(kind, name.to_owned())).map(|o| o.as_deref())
    }
    fn is_mine(&self, kind: Kind, name: &str) -> bool {
        self.found(kind, name) == Some(Some("job-a"))
    }
}

fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("mine".to_owned()),
        Just("theirs".to_owned()),
        Just("hosts".to_owned()),
        Just("new".to_owned()),
    ]
}

fn path_strategy() -> impl Strategy<Value = (String, String)> {
    let obj = (
        prop_oneof![
            Just("containers"),
            Just("networks"),
            Just("volumes"),
            Just("exec"),
            Just("images")
        ],
        name(),
        prop_oneof![
            Just(""),
            Just("/json"),
            Just("/start"),
            Just("/attach"),
            Just("/logs"),
            Just("/archive"),
            Just("/exec"),
            Just("/kill"),
            Just("/connect"),
            Just("/tag"),
            Just("/update"),
        ],
    )
        .prop_map(|(k, n, a)| format!("/v1.41/{k}/{n}{a}"));
    let fixed = prop_oneof![
        Just("/v1.41/containers/json".to_owned()),
        Just("/v1.41/containers/create".to_owned()),
        Just("/v1.41/networks".to_owned()),
        Just("/v1.41/volumes".to_owned()),
        Just("/v1.41/events".to_owned()),
        Just("/v1.41/build".to_owned()),
        Just("/v1.41/containers/prune".to_owned()),
        Just("/v1.41/system/prune".to_owned()),
        Just("/v1.41/swarm/init".to_owned()),
        Just("/v1.41/networks/create".to_owned()),
        Just("/v1.41/volumes/create".to_owned()),
    ];
    (
        prop_oneof![
            Just("GET"),
            Just("POST"),
            Just("DELETE"),
            Just("PUT"),
            Just("HEAD")
        ],
        prop_oneof![obj, fixed],
    )
        .prop_map(|(m, p)| (m.to_owned(), p))
}

fn body_strategy() -> impl Strategy<Value = Value> {
    (
        proptest::option::of(prop_oneof![
            Just(json!({"Privileged": true})),
            Just(json!({"CapAdd": ["ALL"]})),
            Just(json!({"NetworkMode": "host"})),
            Just(json!({"PidMode": "host"})),
            Just(json!({"Binds": ["/:/host"]})),
            Just(json!({"SecurityOpt": ["label=disable"]})),
        ]),
        name(),
        name(),
        name(),
        proptest::bool::ANY,
    )
        .prop_map(|(bad, vol, net, other, privileged)| {
            let mut host = json!({
                "Binds": [format!("{vol}:/data")],
                "NetworkMode": net,
                "VolumesFrom": [other.clone()],
            });
            if let Some(Value::Object(b)) = bad {
                for (k, v) in b {
                    host[k] = v;
                }
            }
            json!({
                "Image": "x", "Cmd": ["true"], "Privileged": privileged,
                "HostConfig": host, "Container": other, "Name": vol,
                "Labels": {"bosun.job": "job-b"},
            })
        })
}

/// What a forwarded request touches, read back from the forwarded path and body.
fn assert_contained(model: &Model, method: &str, plan: &Plan) {
    let (path, query) = plan
        .path_and_query
        .split_once('?')
        .unwrap_or((&plan.path_and_query, ""));
    let p = strip_version(path).unwrap();
    let segs: Vec<&str> = p.split('/').skip(1).collect();
    // 1. Any object named in the path is the job's (images: reads are shared).
    match segs.as_slice() {
        ["containers", "json" | "create" | "prune"]
        | ["networks" | "volumes", "create" | "prune"]
        | ["networks" | "volumes" | "events" | "build"] => {}
        ["containers", n, ..] => assert!(model.is_mine(Kind::Container, n), "{method} {p}"),
        ["networks", n, ..] => assert!(model.is_mine(Kind::Network, n), "{method} {p}"),
        ["volumes", n] => assert!(model.is_mine(Kind::Volume, n), "{method} {p}"),
        ["exec", n, ..] => assert!(model.is_mine(Kind::Exec, n), "{method} {p}"),
        ["images", rest @ ..] => {
            let n = rest[0];
            if method == "DELETE" || rest.last() == Some(&"tag") {
                assert!(model.is_mine(Kind::Image, n), "{method} {p}");
            }
        }
        other => panic!("forwarded an unexpected path {other:?}"),
    }
    // 2. Lists are filtered by the job's label.
    if matches!(
        segs.as_slice(),
        ["containers", "json" | "prune"] | ["networks" | "volumes" | "events"]
    ) {
        let f = parse_query(query)
            .into_iter()
            .find(|(k, _)| k == "filters")
            .expect("filters");
        assert!(f.1.contains("bosun.job=job-a"), "{p}: {}", f.1);
    }
    // 3. Bodies: labelled, nothing refused, references only to the job's objects.
    if let Body::Json(b) = &plan.body {
        let v: Value = serde_json::from_slice(b).unwrap();
        if segs.last() == Some(&"create") {
            assert_eq!(v["Labels"]["bosun.job"], "job-a", "{p}");
        }
        assert_ne!(v["Privileged"], true);
        let h = &v["HostConfig"];
        assert_ne!(h["Privileged"], true);
        assert!(h["CapAdd"].is_null());
        for mode in ["NetworkMode", "PidMode"] {
            assert_ne!(h[mode], "host");
        }
        if let Some(net) = h["NetworkMode"].as_str() {
            assert!(
                matches!(net, "" | "bridge" | "default" | "none")
                    || model.is_mine(Kind::Network, net)
            );
        }
        for b in h["Binds"].as_array().into_iter().flatten() {
            let src = b.as_str().unwrap().split(':').next().unwrap();
            assert!(!src.starts_with('/'));
            let f = model.found(Kind::Volume, src);
            assert!(
                f.is_none() || model.is_mine(Kind::Volume, src),
                "volume {src}"
            );
        }
        for c in h["VolumesFrom"].as_array().into_iter().flatten() {
            assert!(model.is_mine(Kind::Container, c.as_str().unwrap()));
        }
        if segs.last() == Some(&"connect") || segs.last() == Some(&"disconnect") {
            assert!(model.is_mine(Kind::Container, v["Container"].as_str().unwrap()));
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]
    #[test]
    fn no_request_escapes_the_jobs_objects(
        (method, path) in path_strategy(),
        body in body_strategy(),
        tag in name(),
    ) {
        let model = Model::new();
        let Ok(p) = strip_version(&path) else { return Ok(()) };
        let Ok(r) = route(&method, p) else { return Ok(()) };
        // The parameters the endpoint takes, and the body its model reads.
        let query: Vec<String> = [("t", &tag), ("repo", &tag), ("all", &"1".to_owned())]
            .iter()
            .filter(|(k, _)| r.query.contains(k))
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let query = query.join("&");
        let body = match r.route {
            Route::NetworkConnect(_) | Route::NetworkDisconnect(_) => json!({"Container": body["Container"]}),
            Route::NetworkCreate | Route::VolumeCreate => json!({"Name": body["Name"]}),
            Route::ExecCreate(_) => json!({"Cmd": body["Cmd"], "Privileged": body["Privileged"]}),
            Route::ContainerCreate => {
                let mut b = body.clone();
                if let Value::Object(m) = &mut b {
                    m.remove("Container");
                    m.remove("Name");
                    m.remove("Privileged");
                }
                b
            }
            _ => Value::Null,
        };
        let bytes = serde_json::to_vec(&body).unwrap();
        let Ok(plan) = plan(&r, &path, &query, Some(&bytes), &scope()) else { return Ok(()) };
        // The server's checks, against the model.
        for c in &plan.checks {
            let found = match c {
                Check::Owned(k, n) | Check::Referenced { kind: k, name: n, .. }
                | Check::FreeOrOwned { kind: k, name: n, .. } => model.found(*k, n.split(':').next().unwrap()),
                Check::ContainerCount(_) | Check::RegistryHost(_) => None,
            };
            if judge(c, found, 0, "job-a").is_err() {
                return Ok(());
            }
        }
        assert_contained(&model, &method, &plan);
        // A build's tag is free or the job's; its image is labelled.
        if p == "/build" {
            let f = model.found(Kind::Image, &tag);
            prop_assert!(f.is_none() || model.is_mine(Kind::Image, &tag));
            prop_assert!(plan.path_and_query.contains("bosun.job%22%3A%22job-a"));
        }
    }
}

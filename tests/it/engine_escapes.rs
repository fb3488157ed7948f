//! The job engine proxy's holes of issue 26, replayed on the real engine. Each test serves a
//! job's proxy in-process on a unix socket in front of the host's engine, sends the attacker's
//! raw HTTP bytes (exact keys, an invalid UTF-8 header), and then asks the engine itself
//! whether the escape happened: a host directory mounted, a foreign network joined, a host
//! image re-tagged, a foreign volume pruned, the host's loopback dialled, a host subnet taken,
//! a host config applied at start. The proxy must also have answered 4xx.

use crate::harness;

use crate::harness::{docker, ensure_images, image, new_run_id};
use bosun::engine_proxy::{JobEngine, Scope, Upstream};
use std::io::{ErrorKind, Read, Write};
use std::net::TcpListener;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc::{self, TryRecvError};
use std::time::{Duration, Instant};

/// The Content-Type the attacker used: `to_str()` fails on the `\xff`, while the engine's Go
/// server still reads the body as a form and lets its values win over the query's.
const FORM_NOT_UTF8: &[u8] = b"Content-Type: application/x-www-form-urlencoded;\xff\r\n";
const JSON: &[u8] = b"Content-Type: application/json\r\n";

/// A job's proxy in front of the real engine, and everything the test made for it. Objects
/// made with the CLI carry `bosun.test=<run>`; what the proxy makes carries `bosun.job=<job>`;
/// both go on drop.
struct Escape {
    run: String,
    job: String,
    sock: PathBuf,
    tags: Vec<String>,
    stop: tokio_util::sync::CancellationToken,
    _rt: tokio::runtime::Runtime,
    _dir: tempfile::TempDir,
}

impl Escape {
    fn new() -> Escape {
        ensure_images();
        let run = new_run_id();
        let job = format!("escape-{run}");
        let dir = tempfile::tempdir().expect("tempdir");
        let sock = dir.path().join("docker.sock");
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let stop = {
            let _in = rt.enter();
            let listener = tokio::net::UnixListener::bind(&sock).expect("bind the proxy socket");
            let scope = Scope {
                job: job.clone(),
                agent: format!("escape-agent-{run}"),
                limits: Default::default(),
            };
            JobEngine::serve_on(
                listener,
                Upstream::Unix("/var/run/docker.sock".into()),
                scope,
            )
        };
        Escape {
            run,
            job,
            sock,
            tags: Vec::new(),
            stop,
            _rt: rt,
            _dir: dir,
        }
    }

    /// One raw request over the proxy's socket: `head` is `METHOD PATH`, `headers` raw header
    /// lines (each ending in CRLF). Returns the status and the response as text.
    fn send(&self, head: &str, headers: &[u8], body: &[u8]) -> (u16, String) {
        let mut s = UnixStream::connect(&self.sock).expect("connect to the proxy");
        s.set_read_timeout(Some(Duration::from_secs(90)))
            .expect("timeout");
        let mut req =
            format!("{head} HTTP/1.1\r\nHost: docker\r\nConnection: close\r\n").into_bytes();
        req.extend_from_slice(headers);
        req.extend_from_slice(format!("Content-Length: {}\r\n\r\n", body.len()).as_bytes());
        req.extend_from_slice(body);
        s.write_all(&req).expect("write the request");
        let mut resp = Vec::new();
        if let Err(e) = s.read_to_end(&mut resp) {
            panic!("{head}: no whole answer from the proxy: {e}");
        }
        let text = String::from_utf8_lossy(&resp).into_owned();
        let status = text
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or_else(|| panic!("{head}: not an HTTP answer: {text:?}"));
        (status, text)
    }

    /// Create a container through the proxy; on success start it too (some escapes happen at
    /// start). Returns the create's status and answer.
    fn create_and_start(&self, body: &str) -> (u16, String) {
        let (status, text) = self.send("POST /v1.41/containers/create", JSON, body.as_bytes());
        if status == 201 {
            let id = text
                .split("\"Id\":\"")
                .nth(1)
                .and_then(|r| r.split('"').next())
                .unwrap_or_else(|| panic!("created, but no Id in {text}"));
            let (s, t) = self.send(&format!("POST /v1.41/containers/{id}/start"), b"", b"");
            eprintln!("start {id}: {s} {}", t.lines().last().unwrap_or(""));
        }
        (status, text)
    }

    /// `--label` flags making a CLI-made object the job's (as the proxy labels), or another
    /// job's when `job` is not this one.
    fn labels(&self, job: &str) -> Vec<String> {
        [
            format!("bosun.test={}", self.run),
            format!("bosun.job={job}"),
            "bosun.kind=engine".to_owned(),
        ]
        .into_iter()
        .flat_map(|l| ["--label".to_owned(), l])
        .collect()
    }

    /// `docker <verb...> <labels> <rest...>`; returns stdout.
    fn make(&self, verb: &[&str], job: &str, rest: &[&str]) -> String {
        let mut args: Vec<String> = verb.iter().map(|s| s.to_string()).collect();
        args.extend(self.labels(job));
        args.extend(rest.iter().map(|s| s.to_string()));
        docker(&args.iter().map(String::as_str).collect::<Vec<_>>())
    }

    fn other_job(&self) -> String {
        format!("other-{}", self.run)
    }

    /// A network of another job with a container on it; returns (network name, id, member id).
    fn foreign_network(&self) -> (String, String, String) {
        let name = format!("foreign-{}", self.run);
        let id = self.make(&["network", "create"], &self.other_job(), &[&name]);
        let member = self.make(
            &["run", "-d", "--network", &name],
            &self.other_job(),
            &[&image("base"), "sleep", "300"],
        );
        (name, id, member)
    }

    /// Container ids on network `id`, as the engine says.
    fn members(&self, id: &str) -> Vec<String> {
        let json = docker(&["network", "inspect", "-f", "{{json .Containers}}", id]);
        let map: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(&json).unwrap_or_default();
        map.keys().cloned().collect()
    }
}

impl Drop for Escape {
    fn drop(&mut self) {
        self.stop.cancel();
        let quiet = |args: &[&str]| {
            Command::new("docker")
                .args(args)
                .stdin(Stdio::null())
                .stderr(Stdio::null())
                .output()
                .map(|o| {
                    String::from_utf8_lossy(&o.stdout)
                        .split_whitespace()
                        .map(str::to_owned)
                        .collect::<Vec<_>>()
                })
                .unwrap_or_default()
        };
        for tag in &self.tags {
            quiet(&["rmi", tag]);
        }
        for (list, rm) in [
            (vec!["ps", "-aq"], vec!["rm", "-fv"]),
            (vec!["network", "ls", "-q"], vec!["network", "rm"]),
            (vec!["volume", "ls", "-q"], vec!["volume", "rm", "-f"]),
            (vec!["images", "-q"], vec!["rmi", "-f"]),
        ] {
            for label in [
                format!("bosun.test={}", self.run),
                format!("bosun.job={}", self.job),
            ] {
                let mut args = list.clone();
                let f = format!("label={label}");
                args.extend(["--filter", &f]);
                let found = quiet(&args);
                if !found.is_empty() {
                    let mut args = rm.clone();
                    args.extend(found.iter().map(String::as_str));
                    quiet(&args);
                }
            }
        }
    }
}

/// Watch `listener` until the returned closure is called (and a second after, for a late
/// dial); the closure says whether anything connected. Each connection is dropped at once, so
/// an engine that dials fails fast instead of waiting on an answer.
fn watch(listener: TcpListener) -> impl FnOnce() -> bool {
    listener.set_nonblocking(true).expect("nonblocking");
    let (done, stop) = mpsc::channel::<()>();
    let thread = std::thread::spawn(move || {
        let mut until = None;
        let mut dialled = false;
        while until.is_none_or(|u| Instant::now() < u) {
            if until.is_none() && stop.try_recv() != Err(TryRecvError::Empty) {
                until = Some(Instant::now() + Duration::from_secs(1));
            }
            match listener.accept() {
                Ok(_) => dialled = true,
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                Err(e) => panic!("accept: {e}"),
            }
        }
        dialled
    });
    move || {
        drop(done);
        thread.join().expect("watcher")
    }
}

fn assert_refused(what: &str, (status, text): &(u16, String)) {
    assert!(
        (400..500).contains(status),
        "{what}: the proxy answered {status}, not 4xx:\n{text}"
    );
}

/// Hole 1: `VolumeOptions.driverconfig` (lower case) gives an anonymous local volume the
/// options `type=none,o=bind,device=<host dir>`: a host directory mounted as root.
#[test]
fn a_mount_cannot_bind_a_host_directory_through_volume_driver_options() {
    let e = Escape::new();
    let host = tempfile::tempdir().expect("tempdir");
    let secret = format!("host-secret-{}", e.run);
    std::fs::write(host.path().join("secret"), &secret).expect("write");
    let dir = host.path().display().to_string();
    let body = format!(
        r#"{{"Image":"{base}","Cmd":["cat","/m/secret"],"HostConfig":{{"Mounts":[{{"Type":"volume","Target":"/m","VolumeOptions":{{"driverconfig":{{"Name":"local","Options":{{"type":"none","o":"bind","device":"{dir}"}}}}}}}}]}}}}"#,
        base = image("base")
    );
    let answer = e.create_and_start(&body);
    // The engine's state: no volume binds the host directory, and no container of the job
    // read the file in it.
    let volumes = docker(&["volume", "ls", "-q"]);
    let bound: Vec<&str> = volumes
        .split_whitespace()
        .filter(|v| docker(&["volume", "inspect", "-f", "{{.Options.device}}", v]).trim() == dir)
        .collect();
    let f = format!("label=bosun.job={}", e.job);
    let mut read = Vec::new();
    for c in docker(&["ps", "-aq", "--filter", &f]).split_whitespace() {
        let _ = docker(&["wait", c]);
        if docker(&["logs", c]).contains(&secret) {
            read.push(c.to_owned());
        }
    }
    assert!(bound.is_empty(), "volumes binding {dir}: {bound:?}");
    assert!(
        read.is_empty(),
        "job containers read {dir}/secret: {read:?}"
    );
    assert_refused("create with VolumeOptions.driverconfig", &answer);
}

/// Hole 2a: `NetworkingConfig.endpointsconfig` (lower case) names a foreign network.
#[test]
fn a_container_cannot_join_a_foreign_network_through_lower_case_endpoints() {
    let e = Escape::new();
    let (foreign, foreign_id, member) = e.foreign_network();
    let own = format!("own-{}", e.run);
    e.make(&["network", "create"], &e.job, &[&own]);
    let body = format!(
        r#"{{"Image":"{base}","Cmd":["sleep","300"],"HostConfig":{{"NetworkMode":"{own}"}},"NetworkingConfig":{{"endpointsconfig":{{"{foreign}":{{}}}}}}}}"#,
        base = image("base")
    );
    let answer = e.create_and_start(&body);
    assert_eq!(e.members(&foreign_id), vec![member], "on {foreign}");
    assert_refused("create with NetworkingConfig.endpointsconfig", &answer);
}

/// Hole 2b: the job's own network's endpoint carries `NetworkID` = a foreign network's id.
#[test]
fn a_container_cannot_join_a_foreign_network_through_an_endpoint_network_id() {
    let e = Escape::new();
    let (foreign, foreign_id, member) = e.foreign_network();
    let own = format!("own-{}", e.run);
    e.make(&["network", "create"], &e.job, &[&own]);
    let body = format!(
        r#"{{"Image":"{base}","Cmd":["sleep","300"],"HostConfig":{{"NetworkMode":"{own}"}},"NetworkingConfig":{{"EndpointsConfig":{{"{own}":{{"NetworkID":"{foreign_id}"}}}}}}}}"#,
        base = image("base")
    );
    let answer = e.create_and_start(&body);
    assert_eq!(e.members(&foreign_id), vec![member], "on {foreign}");
    assert_refused("create with EndpointsConfig.<own>.NetworkID", &answer);
}

/// Hole 2c: connecting to the job's network with `EndpointConfig.NetworkID` = a foreign one.
#[test]
fn a_connect_cannot_join_a_foreign_network_through_an_endpoint_network_id() {
    let e = Escape::new();
    let (foreign, foreign_id, member) = e.foreign_network();
    let own = format!("own-{}", e.run);
    e.make(&["network", "create"], &e.job, &[&own]);
    let mine = e.make(&["run", "-d"], &e.job, &[&image("base"), "sleep", "300"]);
    let body =
        format!(r#"{{"Container":"{mine}","EndpointConfig":{{"NetworkID":"{foreign_id}"}}}}"#);
    let answer = e.send(
        &format!("POST /v1.41/networks/{own}/connect"),
        JSON,
        body.as_bytes(),
    );
    assert_eq!(e.members(&foreign_id), vec![member], "on {foreign}");
    assert_refused("connect with EndpointConfig.NetworkID", &answer);
}

/// Hole 3a: the query names a free tag, the form body (read by the engine despite the
/// invalid Content-Type) a host image's tag: the host's tag would point at the job's image.
#[test]
fn a_form_body_cannot_retag_a_host_image() {
    let mut e = Escape::new();
    let own = format!("escape-own-{}:1", e.run);
    let host = format!("escape-host-{}", e.run);
    let host_ref = format!("{host}:v1");
    let free = format!("escape-free-{}", e.run);
    e.tags = vec![host_ref.clone(), format!("{free}:x"), own.clone()];
    docker(&["tag", &image("base"), &host_ref]);
    let ctx = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        ctx.path().join("Dockerfile"),
        format!("FROM {}\n", image("base")),
    )
    .expect("write");
    e.make(
        &["build", "-q", "-t", &own],
        &e.job,
        &[&ctx.path().display().to_string()],
    );
    let before = docker(&["image", "inspect", "-f", "{{.Id}}", &host_ref]);
    let answer = e.send(
        &format!("POST /v1.41/images/{own}/tag?repo={free}&tag=x"),
        FORM_NOT_UTF8,
        format!("repo={host}&tag=v1").as_bytes(),
    );
    let after = docker(&["image", "inspect", "-f", "{{.Id}}", &host_ref]);
    assert_eq!(after, before, "{host_ref} was re-pointed");
    assert_refused("tag with a form body", &answer);
}

/// Hole 3b: the query is the job's (the proxy adds its label filter), the form body's
/// `filters` select another job's volume.
#[test]
fn a_form_body_cannot_prune_a_foreign_volume() {
    let e = Escape::new();
    let victim = format!("victim-{}", e.run);
    let mark = format!("bosun.escape={}", e.run);
    e.make(
        &["volume", "create", "--label", &mark],
        &e.other_job(),
        &[&victim],
    );
    let filters: String =
        form_urlencoded::byte_serialize(format!(r#"{{"label":["{mark}"]}}"#).as_bytes()).collect();
    let answer = e.send(
        "POST /v1.41/volumes/prune",
        FORM_NOT_UTF8,
        format!("filters={filters}").as_bytes(),
    );
    let left = docker(&["volume", "ls", "-q", "--filter", &format!("label={mark}")]);
    assert_eq!(left, victim, "the other job's volume was pruned");
    assert_refused("prune with a form body", &answer);
}

/// Hole 4a: a syslog log driver at `tcp://127.0.0.1:PORT` makes the engine dial the host's
/// loopback when the container starts.
#[test]
fn a_log_driver_cannot_dial_the_hosts_loopback() {
    let e = Escape::new();
    let listener = TcpListener::bind("127.0.0.1:0").expect("listen");
    let port = listener.local_addr().expect("addr").port();
    let dialled = watch(listener);
    let body = format!(
        r#"{{"Image":"{base}","Cmd":["true"],"HostConfig":{{"LogConfig":{{"Type":"syslog","Config":{{"syslog-address":"tcp://127.0.0.1:{port}"}}}}}}}}"#,
        base = image("base")
    );
    let answer = e.create_and_start(&body);
    assert!(!dialled(), "the engine connected to 127.0.0.1:{port}");
    assert_refused("create with a syslog address on the host", &answer);
}

/// Hole 4b: `POST /auth` with a server address on the host's loopback makes the engine dial it.
#[test]
fn an_auth_cannot_dial_the_hosts_loopback() {
    let e = Escape::new();
    let listener = TcpListener::bind("127.0.0.1:0").expect("listen");
    let port = listener.local_addr().expect("addr").port();
    let dialled = watch(listener);
    let body =
        format!(r#"{{"username":"u","password":"p","serveraddress":"http://127.0.0.1:{port}"}}"#);
    let (status, text) = e.send("POST /v1.41/auth", JSON, body.as_bytes());
    assert!(!dialled(), "the engine connected to 127.0.0.1:{port}");
    // `docker login` keeps working: the proxy answers it, the engine never sees it.
    assert_eq!(status, 200, "{text}");
    assert!(
        text.contains("bosun: the job's engine does not contact registries"),
        "{text}"
    );
}

/// The host's first global IPv4 address outside Docker's bridges and its prefix length.
fn host_lan() -> ([u8; 4], u32) {
    let out =
        harness::run(Command::new("ip").args(["-4", "-o", "addr", "show", "scope", "global"]));
    out.lines()
        .filter(|l| {
            let dev = l.split_whitespace().nth(1).unwrap_or("");
            !(dev.starts_with("docker") || dev.starts_with("br-") || dev.starts_with("veth"))
        })
        .find_map(|l| {
            let cidr = l.split_whitespace().nth(3)?;
            let (ip, len) = cidr.split_once('/')?;
            let ip: std::net::Ipv4Addr = ip.parse().ok()?;
            Some((ip.octets(), len.parse().ok()?))
        })
        .unwrap_or_else(|| panic!("no host IPv4 LAN to test against in:\n{out}"))
}

/// Hole 5: a job network whose subnet lies in the host's LAN. A /30 near the top of the LAN
/// (not the host's own address, not the usual gateway at the bottom) so that the route the
/// engine adds for it while the test runs diverts no one's traffic.
#[test]
fn a_job_network_cannot_take_a_subnet_of_the_hosts_lan() {
    let e = Escape::new();
    let (addr, len) = host_lan();
    assert!(
        len <= 28,
        "the host's LAN /{len} is too small for this test"
    );
    let host = u32::from_be_bytes(addr);
    let size = 1u32 << (32 - len);
    let base = host & !(size - 1);
    let mut block = base + size - 8;
    if host & !3 == block {
        block -= 4;
    }
    let subnet = format!("{}/30", std::net::Ipv4Addr::from(block));
    let body = format!(
        r#"{{"Name":"escape-net-{run}","IPAM":{{"Config":[{{"Subnet":"{subnet}"}}]}}}}"#,
        run = e.run
    );
    let answer = e.send("POST /v1.41/networks/create", JSON, body.as_bytes());
    // Other tests make and remove networks meanwhile: one gone between the list and its
    // inspection has no subnet to look at.
    let taken: Vec<String> = docker(&["network", "ls", "-q"])
        .split_whitespace()
        .filter(|n| {
            std::process::Command::new("docker")
                .args(["network", "inspect", "-f"])
                .arg("{{range .IPAM.Config}}{{.Subnet}} {{end}}")
                .arg(n)
                .output()
                .is_ok_and(|o| {
                    String::from_utf8_lossy(&o.stdout)
                        .split_whitespace()
                        .any(|s| s == subnet)
                })
        })
        .map(str::to_owned)
        .collect();
    assert!(taken.is_empty(), "networks with subnet {subnet}: {taken:?}");
    assert_refused("network create with a subnet of the host's LAN", &answer);
}

/// API versions before 1.24 let `start` carry a host config that the engine still applies.
#[test]
fn a_start_cannot_carry_a_host_config() {
    let e = Escape::new();
    let mut applied = Vec::new();
    for (body, field) in [
        (r#"{"Binds":["/:/host"]}"#, "Binds"),
        (r#"{"Privileged":true}"#, "Privileged"),
    ] {
        let c = e.make(&["create"], &e.job, &[&image("base"), "sleep", "300"]);
        let answer = e.send(
            &format!("POST /v1.23/containers/{c}/start"),
            JSON,
            body.as_bytes(),
        );
        let state = docker(&[
            "inspect",
            "-f",
            "privileged={{.HostConfig.Privileged}} mounts={{range .Mounts}}{{.Destination}},{{end}}",
            &c,
        ]);
        if state != "privileged=false mounts=" {
            applied.push(format!("{field}: {state}"));
        }
        if !(400..500).contains(&answer.0) {
            let said = answer.1.lines().last().unwrap_or("");
            applied.push(format!("{field}: the proxy answered {}: {said}", answer.0));
        }
    }
    assert!(applied.is_empty(), "{applied:#?}");
}

/// Found in the review of the proxy's streams: the classic builder runs `ADD <url>` itself,
/// from the host's network, so a build could copy what a service on the host's loopback
/// answers into the job's image. The build context is read as it passes; this one never
/// reaches the engine whole, nothing dials, no image is made.
#[test]
fn a_build_cannot_add_from_the_hosts_loopback() {
    let e = Escape::new();
    let listener = TcpListener::bind("127.0.0.1:0").expect("listen");
    let port = listener.local_addr().expect("addr").port();
    let dialled = watch(listener);
    let dockerfile = format!(
        "FROM {}\nADD http://127.0.0.1:{port}/secret /secret\n",
        image("base")
    );
    let mut tar = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(dockerfile.len() as u64);
    h.set_mode(0o644);
    h.set_cksum();
    tar.append_data(&mut h, "Dockerfile", dockerfile.as_bytes())
        .expect("tar");
    let context = tar.into_inner().expect("tar");
    let tag = format!("escape-add-{}", e.run);
    let (status, text) = e.send(
        &format!("POST /v1.41/build?t={tag}&rm=1"),
        b"Content-Type: application/x-tar\r\n",
        &context,
    );
    assert!(
        !dialled(),
        "the engine fetched http://127.0.0.1:{port}/secret"
    );
    let made = Command::new("docker")
        .args(["image", "inspect", &tag])
        .output()
        .expect("docker");
    assert!(!made.status.success(), "the image {tag} was built");
    assert_refused(
        "ADD of a URL on the host's loopback",
        &(status, text.clone()),
    );
    assert!(text.contains("ADD"), "{text}");
}

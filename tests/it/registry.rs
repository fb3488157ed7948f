//! Image pulls with `auth:` against a real private registry (bosun/registry: Debian's
//! docker-registry with htpasswd auth) that the test starts on loopback. dockerd treats
//! 127.0.0.0/8 registries as insecure (plain HTTP) by default, so no TLS is needed. A test
//! image is pushed with a private Docker CLI config (the user's ~/.docker is never touched)
//! and removed locally; then `bosun execute` pulls it with the right credentials (from a
//! secret variable), is refused with wrong ones or none, naming the image and the registry,
//! and the password never appears in what it prints.

use crate::harness;

use crate::harness::{docker, ensure_images, image, new_run_id, Project, LABEL};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const USER: &str = "bosun-puller";
const PASSWORD: &str = "reg-pa55word-7d1e";

struct Registry {
    run_id: String,
    container: String,
    port: u16,
    /// The pushed image's name in the registry.
    image: String,
    _dir: tempfile::TempDir,
}

impl Registry {
    /// What the registry logged (its requests and auth decisions), for failure reports.
    fn logs(&self) -> String {
        let out = harness::output(Command::new("docker").args(["logs", &self.container]));
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = Command::new("docker")
            .args(["rmi", "-f", &self.image])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        harness::cleanup_label(LABEL, &self.run_id);
    }
}

/// `docker --config DIR ARGS…` with `stdin` fed in, panicking on failure.
fn docker_with(config: &std::path::Path, args: &[&str], stdin: &str) -> String {
    use std::io::Write;
    let mut child = Command::new("docker")
        .arg("--config")
        .arg(config)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("docker");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("write stdin");
    let out = child.wait_with_output().expect("docker");
    assert!(
        out.status.success(),
        "docker {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn start_registry() -> Registry {
    ensure_images();
    let dir = tempfile::tempdir().expect("tempdir");
    let run_id = new_run_id();
    let htpasswd = docker(&[
        "run",
        "--rm",
        "--entrypoint",
        "htpasswd",
        &image("registry"),
        "-Bbn",
        USER,
        PASSWORD,
    ]);
    let auth = dir.path().join("auth");
    std::fs::create_dir(&auth).expect("auth dir");
    std::fs::write(auth.join("htpasswd"), format!("{htpasswd}\n")).expect("htpasswd");
    let id = docker(&[
        "run",
        "-d",
        "--label",
        &format!("{LABEL}={run_id}"),
        "-p",
        "127.0.0.1::5000",
        "-v",
        &format!("{}:/auth:ro", auth.display()),
        &image("registry"),
    ]);
    let published = docker(&["port", &id, "5000/tcp"]);
    let port: u16 = published
        .lines()
        .find_map(|l| l.strip_prefix("127.0.0.1:"))
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or_else(|| panic!("unexpected `docker port` output: {published:?}"));
    // Ready when /v2/ asks for credentials.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        use std::io::{Read, Write};
        let answer = std::net::TcpStream::connect(("127.0.0.1", port))
            .and_then(|mut s| {
                s.set_read_timeout(Some(Duration::from_secs(2)))?;
                write!(
                    s,
                    "GET /v2/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
                )?;
                let mut out = String::new();
                s.read_to_string(&mut out)?;
                Ok(out)
            })
            .unwrap_or_default();
        if answer.starts_with("HTTP/1.1 401") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "registry not ready: {answer:?}\n{}",
            docker(&["logs", &id])
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // Push a small image with a Docker CLI config of our own, then forget it locally.
    let config = dir.path().join("docker-config");
    std::fs::create_dir(&config).expect("docker config dir");
    let registry = format!("127.0.0.1:{port}");
    let target = format!("{registry}/bosun-test/private:{run_id}");
    docker_with(
        &config,
        &["login", "-u", USER, "--password-stdin", &registry],
        PASSWORD,
    );
    // A layer of its own (3 MB that do not compress), so the engine has something to fetch
    // and report: the base image's layer is in the engine already.
    let context = dir.path().join("image");
    std::fs::create_dir(&context).expect("build context");
    let mut state = u64::from_str_radix(&run_id.replace(|c: char| !c.is_ascii_hexdigit(), ""), 16)
        .unwrap_or(0x2545_f491_4f6c_dd1d)
        | 1;
    let noise: Vec<u8> = (0..3_000_000)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 32) as u8
        })
        .collect();
    std::fs::write(context.join("noise"), noise).expect("noise");
    std::fs::write(
        context.join("Dockerfile"),
        format!("FROM {}\nCOPY noise /pulled-layer\n", image("nobash")),
    )
    .expect("Dockerfile");
    docker(&["build", "-q", "-t", &target, &context.display().to_string()]);
    docker_with(&config, &["push", &target], "");
    docker(&["rmi", &target]);
    Registry {
        run_id,
        container: id,
        port,
        image: target,
        _dir: dir,
    }
}

fn job(image: &str, auth: &str) -> String {
    format!(
        "version: 2.1\njobs:\n  build:\n    docker:\n      - image: {image}\n{auth}    steps:\n      - run: {{name: work, command: echo pulled-and-ran}}\n"
    )
}

fn image_present(image: &str) -> bool {
    Command::new("docker")
        .args(["image", "inspect", image])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

#[test]
fn a_private_image_is_pulled_with_the_right_credentials_and_refused_with_wrong_ones() {
    let r = start_registry();
    assert!(!image_present(&r.image), "the pushed image is gone locally");
    let registry = format!("127.0.0.1:{}", r.port);
    let with_auth = job(
        &r.image,
        &format!(
            "        auth:\n          username: {USER}\n          password: $REGISTRY_PASSWORD\n"
        ),
    );

    // Wrong password: refused, naming the image, the registry and the user.
    let p = Project::new(&with_auth);
    let out = p.execute(&["--secret-env", "REGISTRY_PASSWORD=not-the-pa55word"]);
    let all = format!("{}{}", out.stdout, out.stderr);
    assert_ne!(out.code, 0, "{all}");
    assert!(
        all.contains(&format!(
            "image `{}`: the registry {registry} refused the pull with the credentials of `{USER}`",
            r.image
        )),
        "{all}"
    );
    assert!(!all.contains("pulled-and-ran"), "{all}");
    assert!(!all.contains("not-the-pa55word"), "{all}");
    assert!(!image_present(&r.image));
    p.assert_no_container_left();

    // No credentials at all: the image cannot be had either, and the error names it.
    let p = Project::new(&job(&r.image, ""));
    let out = p.execute(&[]);
    let all = format!("{}{}", out.stdout, out.stderr);
    assert_ne!(out.code, 0, "{all}");
    assert!(
        all.contains(&format!(
            "image `{}` is not in the engine and could not be pulled",
            r.image
        )),
        "{all}"
    );

    // The right password, from a secret variable: pulled, and the job runs in it.
    let p = Project::new(&with_auth);
    let out = p.execute(&[
        "--json",
        "--secret-env",
        &format!("REGISTRY_PASSWORD={PASSWORD}"),
    ]);
    let all = format!("{}{}", out.stdout, out.stderr);
    assert_eq!(out.code, 0, "{all}\nregistry log:\n{}", r.logs());
    assert!(out.output().contains("pulled-and-ran"), "{all}");
    assert!(!all.contains(PASSWORD), "the password leaked:\n{all}");
    assert!(image_present(&r.image));
    // The pull's progress as events: each layer from its first status to `Pull complete`,
    // then the image as a whole, before the container starts.
    let at = |kind: &str| {
        out.events
            .iter()
            .position(|e| e["event"] == kind)
            .unwrap_or_else(|| panic!("no {kind} event:\n{all}"))
    };
    let layers: Vec<&serde_json::Value> = out
        .events
        .iter()
        .filter(|e| e["event"] == "pull_progress")
        .collect();
    assert!(
        layers.iter().all(|e| e["image"] == r.image.as_str()
            && e["layer"].as_str().is_some_and(|l| l.len() == 12)),
        "{layers:?}"
    );
    assert!(
        layers.iter().any(|e| e["status"] == "Pull complete"),
        "{layers:?}"
    );
    let pulled = out.event("image_pulled").expect("image_pulled");
    assert_eq!(pulled["image"], r.image.as_str());
    assert!(pulled["layers"].as_u64() >= Some(1), "{pulled}");
    assert!(pulled["bytes"].as_u64() > Some(0), "{pulled}");
    assert!(at("pull_progress") < at("image_pulled"));
    assert!(at("image_pulled") < at("container_started"));
    p.assert_no_container_left();

    // A literal password in the config is masked the same way, wherever the job prints it.
    docker(&["rmi", &r.image]);
    let p = Project::new(&format!(
        "version: 2.1\njobs:\n  build:\n    docker:\n      - image: {img}\n        auth: {{username: {USER}, password: {PASSWORD}}}\n    steps:\n      - run: echo \"pw={PASSWORD}\"\n",
        img = r.image
    ));
    let out = p.execute(&[]);
    let all = format!("{}{}", out.stdout, out.stderr);
    assert_eq!(out.code, 0, "{all}");
    assert!(all.contains("pw=********"), "{all}");
    assert!(!all.contains(PASSWORD), "the password leaked:\n{all}");
    // Not a terminal: a line per layer and status, no cursor moves; then the image.
    assert!(
        all.contains(&format!("    Pulling {}: ", r.image)) && all.contains(": Pull complete\n"),
        "{all}"
    );
    assert!(all.contains(&format!("    Pulled {}: ", r.image)), "{all}");
    assert!(!all.contains('\x1b'), "{all}");
}

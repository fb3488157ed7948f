//! Blobs and finished logs on a real S3-compatible server (s3s-fs on loopback, its own
//! directory and credentials): `bosun coordinator serve --blob-store s3://…` with two real
//! agents, the Docker engine and the Bitbucket stand-in. A job persists a workspace, saves a
//! cache and stores artifacts; jobs on the other agent attach and restore them; the log and
//! the artifacts read back on the pages once the log has moved into the bucket; the objects
//! are files in the server's directory and none stay in the data directory. A wrong secret,
//! a missing bucket and a loose credentials file stop the coordinator with a clear error.

use crate::harness::{self, http_get, image, Coordinator, Rig, S3Server, S3_SECRET};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BUCKET: &str = "bosun-it";

fn s3_args<'a>(server: &'a S3Server, creds: &'a str) -> Vec<&'a str> {
    vec![
        "--blob-store",
        "s3://bosun-it/ci",
        "--s3-endpoint",
        &server.endpoint,
        "--s3-region",
        "us-east-1",
        "--s3-credentials-file",
        creds,
    ]
}

fn wait_final(c: &Coordinator, job: &str) -> String {
    let t0 = Instant::now();
    loop {
        let s = harness::job_status(&c.data, job);
        if !s.is_empty() && s != "queued" && s != "running" {
            return s;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(180),
            "job {job} still `{s}`"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The job's whole log through the page's download (`/jobs/{id}/log.txt`).
fn raw_log(c: &Coordinator, job: &str) -> Vec<u8> {
    let (h, body) = http_get(&c.addr, &format!("/jobs/{job}/log.txt")).head_and_body();
    assert!(h.starts_with("http/1.1 200"), "{h}");
    body
}

/// Waits until the finished job's log is an object in the bucket and gone from the data
/// directory; returns the object's bytes.
fn wait_log_moved(c: &Coordinator, server: &S3Server, job: &str) -> Vec<u8> {
    let object = server
        .root()
        .join(BUCKET)
        .join(format!("ci/logs/{job}.log"));
    let local = c.data.join("logs").join(format!("{job}.log"));
    let t0 = Instant::now();
    while !object.is_file() || local.exists() {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "job {job}'s log did not move to the bucket (object {}, local {})",
            object.exists(),
            local.exists()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::fs::read(&object).expect("log object")
}

fn files_in(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn blobs_and_finished_logs_live_in_a_real_s3_bucket() {
    harness::ensure_images();
    let server = S3Server::start(&[BUCKET]);
    let rig = Rig::start();
    rig.create_repo("acme/widget");
    let repo = rig.work_repo("acme/widget");
    let img = image("base");
    repo.write(
        ".circleci/config.yml",
        &format!(
            r#"version: 2.1
jobs:
  build:
    docker: [{{image: {img}}}]
    steps:
      - run: mkdir -p /tmp/ws/out && echo "built-on-one" > /tmp/ws/out/result.txt && head -c 12000000 /dev/urandom > /tmp/ws/out/big.bin && sha256sum /tmp/ws/out/big.bin | cut -d' ' -f1 > /tmp/ws/out/big.sum
      - persist_to_workspace: {{root: /tmp/ws, paths: [out]}}
      - run: mkdir -p /tmp/deps /tmp/art && echo "from-build" > /tmp/deps/who && echo hello > /tmp/art/hello.txt && seq 1 3000 | sed 's/^/log line /'
      - save_cache: {{key: "deps-v1-{{{{ .BuildNum }}}}", paths: [/tmp/deps]}}
      - store_artifacts: {{path: /tmp/art, destination: art}}
  deploy:
    docker: [{{image: {img}}}]
    steps:
      - attach_workspace: {{at: /tmp/got}}
      - restore_cache: {{keys: [deps-v1-]}}
      - run: cat /tmp/got/out/result.txt && test "$(sha256sum /tmp/got/out/big.bin | cut -d' ' -f1)" = "$(cat /tmp/got/out/big.sum)" && echo attached-ok && echo "who=$(cat /tmp/deps/who)"
"#
        ),
    );
    repo.commit("config");
    repo.push("HEAD:refs/heads/main");
    let creds_dir = tempfile::tempdir().expect("tempdir");
    let creds = server.credentials_file(creds_dir.path(), S3_SECRET);
    let creds = creds.to_string_lossy().into_owned();
    let c = Coordinator::builder()
        .args(&s3_args(&server, &creds))
        .start();
    harness::add_stand_in_project(&c.data, &rig, "acme/widget", &[]);
    let _one = c.agent(&rig, "one").labels(&["one"]).start();
    let _two = c.agent(&rig, "two").labels(&["two"]).start();

    let build = harness::enqueue_job(
        &c.data,
        "build",
        &["--label", "one", "--workspace", "run-1"],
    );
    let status = wait_final(&c, &build);
    let log = wait_log_moved(&c, &server, &build);
    let text = String::from_utf8_lossy(&log);
    assert_eq!(status, "success", "{text}");
    assert!(
        text.contains("to the workspace on the coordinator"),
        "{text}"
    );
    // The finished log reads from the bucket: whole, by part, and on the page.
    assert_eq!(
        raw_log(&c, &build),
        log,
        "log.txt is the object, byte for byte"
    );
    let at = log
        .windows(b"log line 2999".len())
        .position(|w| w == b"log line 2999")
        .expect("line 2999 in the log");
    let (h, part) = http_get(&c.addr, &format!("/jobs/{build}/log?offset={at}")).head_and_body();
    assert!(h.starts_with("http/1.1 200"), "{h}");
    assert_eq!(part, &log[at..], "a part of the log from an offset");
    let (h, page) = http_get(&c.addr, &format!("/jobs/{build}")).head_and_body();
    assert!(h.starts_with("http/1.1 200"), "{h}");
    let page = String::from_utf8_lossy(&page);
    assert!(
        page.contains("log line 3000"),
        "the page shows the log's tail"
    );

    // The dependant on the other agent attaches the workspace and restores the cache.
    let deploy = harness::enqueue_job(
        &c.data,
        "deploy",
        &["--label", "two", "--workspace", "run-1"],
    );
    let status = wait_final(&c, &deploy);
    let log = wait_log_moved(&c, &server, &deploy);
    let text = String::from_utf8_lossy(&log);
    assert_eq!(status, "success", "{text}");
    assert!(
        text.contains("built-on-one") && text.contains("attached-ok"),
        "{text}"
    );
    assert!(text.contains("of workspace from the coordinator"), "{text}");
    assert!(text.contains("who=from-build"), "{text}");

    // The artifact, from the bucket.
    let (h, body) =
        http_get(&c.addr, &format!("/jobs/{build}/artifacts/art/hello.txt")).head_and_body();
    assert!(h.contains("content-type: text/plain"), "{h}");
    assert_eq!(body, b"hello\n");

    // Workspace layer, cache and artifact are objects in the server's directory, named by
    // their SHA-256; none is a file of the data directory, and no upload is left over.
    let objects = files_in(&server.root().join(BUCKET).join("ci/blobs/sha256"));
    assert!(objects.len() >= 3, "objects in the bucket: {objects:?}");
    for name in &objects {
        let bytes = std::fs::read(
            server
                .root()
                .join(BUCKET)
                .join("ci/blobs/sha256")
                .join(name),
        )
        .expect("object");
        assert_eq!(
            &harness::sha256(&bytes),
            name,
            "an object is named by its digest"
        );
    }
    assert!(
        files_in(&c.data.join("blobs/sha256")).is_empty(),
        "no whole blob in the data directory"
    );
    let uploads = c.data.join("blobs/uploads");
    let left: Vec<String> = files_in(&uploads)
        .into_iter()
        .flat_map(|p| files_in(&uploads.join(p)))
        .collect();
    assert!(left.is_empty(), "uploads left over: {left:?}");
}

/// `bosun coordinator serve` with `args`: it must exit at once; its stderr.
fn serve_fails(data: &Path, args: &[&str]) -> String {
    let out = Command::new(harness::bosun_bin())
        .args(["coordinator", "serve", "--listen", "127.0.0.1:0"])
        .args(args)
        .arg("--data")
        .arg(data)
        .stdin(Stdio::null())
        .output()
        .expect("serve");
    assert!(!out.status.success(), "serve started with {args:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!stdout.contains("listening"), "{stdout}");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_wrong_secret_a_missing_bucket_or_a_loose_credentials_file_stop_the_coordinator() {
    let server = S3Server::start(&[BUCKET]);
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");

    let wrong = "definitely-not-the-secret";
    let creds = server.credentials_file(dir.path(), wrong);
    let creds = creds.to_string_lossy().into_owned();
    let err = serve_fails(&data, &s3_args(&server, &creds));
    assert!(err.contains("s3://bosun-it/ci"), "names the bucket: {err}");
    assert!(err.contains(&server.endpoint), "names the endpoint: {err}");
    assert!(err.contains("credentials were refused"), "{err}");
    assert!(!err.contains(wrong), "never the secret: {err}");

    let creds = server.credentials_file(dir.path(), S3_SECRET);
    let creds = creds.to_string_lossy().into_owned();
    let mut args = s3_args(&server, &creds);
    args[1] = "s3://no-such-bucket";
    let err = serve_fails(&data, &args);
    assert!(
        err.contains("no-such-bucket") && err.contains("does not exist"),
        "{err}"
    );
    assert!(!err.contains(S3_SECRET), "never the secret: {err}");

    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&creds, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    }
    let err = serve_fails(&data, &s3_args(&server, &creds));
    assert!(err.contains("chmod 600"), "{err}");
}

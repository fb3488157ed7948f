//! The store over the protocol (v2), real processes only: `bosun coordinator` (SQLite, blob
//! files) and, for the jobs, two `bosun agent`s with separate local stores, the Docker engine
//! and the Bitbucket stand-in. A workspace persisted on one agent is attached on the other,
//! caches travel between agents but never from a forked pull request, artifacts and a failing
//! JUnit file show on the job page (Chromium). At the protocol level: an upload cut mid-way
//! resumes from what the coordinator holds, a download resumes with `Range`, a corrupt blob
//! is refused, the quota is enforced with a clear error, a forked pull request's job cannot
//! write a cache and no job reads another project's blob.

use crate::harness;

use crate::harness::{http_get, image, sha256, Coordinator, Rig};
use bosun::agent::blobs::JobStore;
use bosun::agent::client::Client;
use bosun::protocol::{BlobAck, ClaimResponse, WireJob};
use bosun::store::remote::Remote;
use bosun::store::BlobId;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Deterministic bytes that do not compress.
fn noise(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

// ---- the protocol level: an agent written here, with the agent's own blob client ----

struct Caller {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Caller {
    async fn register(c: &Coordinator, token: &str, name: &str) -> Caller {
        let http = reqwest::Client::new();
        let base = format!("{}/api/v1", c.url());
        let r: serde_json::Value = http
            .post(format!("{base}/agents/register"))
            .json(
                &serde_json::json!({"registration_token": token, "name": name,
                "resource_class": "docker", "labels": [], "version": "test"}),
            )
            .send()
            .await
            .expect("register")
            .json()
            .await
            .expect("register json");
        Caller {
            http,
            base,
            token: r["agent_token"].as_str().expect("token").to_owned(),
        }
    }

    async fn claim(&self) -> WireJob {
        let r = self
            .http
            .post(format!("{}/jobs/claim?wait=5", self.base))
            .bearer_auth(&self.token)
            .json(&serde_json::json!({"resource_class": "docker", "capacity": 1}))
            .send()
            .await
            .expect("claim");
        assert_eq!(r.status(), 200, "nothing to claim");
        r.json::<ClaimResponse>().await.expect("claim json").job
    }

    fn req(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token)
    }

    /// The agent's own blob client for `job`.
    fn store(&self, c: &Coordinator, job: &WireJob) -> JobStore {
        let client = Client::new(&c.url(), Vec::new(), "")
            .expect("client")
            .with_token(&self.token);
        JobStore::new(
            client,
            &job.id,
            job.attempt,
            job.store.as_ref().is_some_and(|s| s.cache_writes),
        )
    }
}

/// A coordinator with projects acme/widget and acme/gadget (no keys: nothing is checked
/// out) and a registration token.
fn coordinator(extra: &[&str]) -> (Coordinator, String) {
    let c = Coordinator::builder().args(extra).start();
    for slug in ["acme/widget", "acme/gadget"] {
        c.cli(&[
            "project",
            "add",
            "--slug",
            slug,
            "--clone-url",
            &format!("git@bitbucket.org:{slug}.git"),
        ]);
    }
    let token = c.cli(&["token"]);
    (c, token)
}

fn enqueue(c: &Coordinator, project: &str, extra: &[&str]) -> String {
    let mut args = vec![
        "enqueue",
        "--project",
        project,
        "--ref",
        "main",
        "--job",
        "build",
    ];
    args.extend_from_slice(extra);
    c.cli(&args)
}

/// A body that sends `data` and then fails, as a connection cut mid-upload does.
fn cut_body(data: Vec<u8>) -> reqwest::Body {
    let pieces: Vec<Result<Vec<u8>, std::io::Error>> = data
        .chunks(64 * 1024)
        .map(|c| Ok(c.to_vec()))
        .chain(std::iter::once(Err(std::io::Error::other("cut"))))
        .collect();
    reqwest::Body::wrap_stream(futures_util::stream::iter(pieces))
}

#[tokio::test]
async fn an_upload_cut_mid_way_resumes_and_a_download_resumes_with_range() {
    let (c, token) = coordinator(&[]);
    let a = Caller::register(&c, &token, "one").await;
    enqueue(&c, "acme/widget", &[]);
    let job = a.claim().await;
    assert!(
        job.store.is_some(),
        "a v2 coordinator names the job's store"
    );
    let data = noise(3 * 1024 * 1024 + 12345, 1);
    let sha = sha256(&data);
    let size = data.len() as u64;
    let path = format!("/jobs/{}/blobs/{sha}", job.id);

    // The first MiB arrives whole; the next piece is cut after 512 KiB.
    let r = a
        .req(
            reqwest::Method::PUT,
            &format!("{path}?offset=0&size={size}"),
        )
        .header("content-length", 1024 * 1024)
        .body(data[..1024 * 1024].to_vec())
        .send()
        .await
        .expect("put");
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.json::<BlobAck>().await.expect("ack"),
        BlobAck {
            received: 1024 * 1024,
            complete: false
        }
    );
    let cut = a
        .req(
            reqwest::Method::PUT,
            &format!("{path}?offset={}&size={size}", 1024 * 1024),
        )
        .header("content-length", 1024 * 1024)
        .body(cut_body(data[1024 * 1024..1536 * 1024].to_vec()))
        .send()
        .await;
    assert!(cut.is_err() || !cut.expect("answer").status().is_success());
    // The coordinator kept what arrived of the cut piece (asked until the cut request is
    // over on its side: the same answer twice, 300 ms apart).
    let status = || async {
        a.req(reqwest::Method::GET, &format!("{path}/upload?size={size}"))
            .send()
            .await
            .expect("status")
            .json::<BlobAck>()
            .await
            .expect("ack")
    };
    let mut held = status().await;
    loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let again = status().await;
        if again == held {
            break;
        }
        held = again;
    }
    assert!(!held.complete);
    assert!(
        held.received >= 1024 * 1024 && held.received <= 1536 * 1024,
        "{held:?}"
    );
    // A piece past what is held is a gap: 409 with where to resume.
    let gap = a
        .req(
            reqwest::Method::PUT,
            &format!("{path}?offset={}&size={size}", size - 10),
        )
        .header("content-length", 10)
        .body(data[data.len() - 10..].to_vec())
        .send()
        .await
        .expect("gap");
    assert_eq!(gap.status(), 409);

    // The agent's client resumes from there and sends only the rest.
    let file = c.dir().join("blob.bin");
    std::fs::write(&file, &data).expect("write");
    let store = a.store(&c, &job).with_piece(1024 * 1024);
    let up = store
        .upload(&file, &BlobId(sha.clone()), size)
        .await
        .expect("upload resumes");
    assert_eq!(up.sent, size - held.received, "{up:?}");
    let blob_file = c.data.join("blobs/sha256").join(&sha);
    assert_eq!(std::fs::read(&blob_file).expect("stored"), data);
    // Sending it again sends nothing.
    let again = store
        .upload(&file, &BlobId(sha.clone()), size)
        .await
        .expect("again");
    assert!(again.already && again.sent == 0, "{again:?}");

    // A download interrupted after 1000 bytes continues from there (Range), and ends whole.
    let part = c.dir().join("download.part");
    std::fs::write(&part, &data[..1000]).expect("partial");
    store
        .download(&BlobId(sha.clone()), size, &part)
        .await
        .expect("download");
    assert_eq!(std::fs::read(&part).expect("downloaded"), data);
    let ranged = a
        .req(reqwest::Method::GET, &path)
        .header("range", "bytes=1000-")
        .send()
        .await
        .expect("range");
    assert_eq!(ranged.status(), 206);
    assert_eq!(
        ranged.headers()["content-range"],
        format!("bytes 1000-{}/{size}", size - 1).as_str()
    );
    assert_eq!(ranged.bytes().await.expect("bytes")[..], data[1000..]);
}

#[tokio::test]
async fn a_corrupt_blob_is_refused_and_the_quota_is_enforced_with_a_clear_error() {
    let (c, token) = coordinator(&["--blob-quota", "4MiB"]);
    let a = Caller::register(&c, &token, "one").await;
    enqueue(&c, "acme/widget", &[]);
    let job = a.claim().await;

    // Bytes that do not hash to the name they are sent under: 422, nothing kept.
    let data = noise(100_000, 2);
    let mut wrong = data.clone();
    wrong[5000] ^= 0xff;
    let sha = sha256(&data);
    let path = format!("/jobs/{}/blobs/{sha}", job.id);
    let r = a
        .req(
            reqwest::Method::PUT,
            &format!("{path}?offset=0&size={}", data.len()),
        )
        .header("content-length", wrong.len())
        .body(wrong)
        .send()
        .await
        .expect("put");
    assert_eq!(r.status(), 422);
    let text = r.text().await.expect("text");
    assert!(text.contains(&sha) && text.contains("corrupted"), "{text}");
    assert!(!c.data.join("blobs/sha256").join(&sha).exists());
    let held: BlobAck = a
        .req(reqwest::Method::GET, &format!("{path}/upload"))
        .send()
        .await
        .expect("status")
        .json()
        .await
        .expect("ack");
    assert_eq!(
        held,
        BlobAck {
            received: 0,
            complete: false
        }
    );
    assert_eq!(
        a.req(reqwest::Method::GET, &path)
            .send()
            .await
            .expect("get")
            .status(),
        404
    );
    // The agent's client reports it as corruption, not as something to retry for ever.
    let file = c.dir().join("corrupt.bin");
    let mut bad = data.clone();
    bad[0] ^= 1;
    std::fs::write(&file, &bad).expect("write");
    let e = a
        .store(&c, &job)
        .upload(&file, &BlobId(sha.clone()), data.len() as u64)
        .await
        .expect_err("corrupt");
    assert!(e.to_string().contains("corrupted"), "{e}");

    // 3 MiB fits the 4 MiB quota; 2 MiB more do not, refused before a byte is sent.
    let first = noise(3 * 1024 * 1024, 3);
    let file = c.dir().join("first.bin");
    std::fs::write(&file, &first).expect("write");
    let store = a.store(&c, &job);
    store
        .upload(&file, &BlobId(sha256(&first)), first.len() as u64)
        .await
        .expect("within quota");
    let second = noise(2 * 1024 * 1024, 4);
    let r = a
        .req(
            reqwest::Method::GET,
            &format!(
                "/jobs/{}/blobs/{}/upload?size={}",
                job.id,
                sha256(&second),
                second.len()
            ),
        )
        .send()
        .await
        .expect("status");
    assert_eq!(r.status(), 413);
    let text = r.text().await.expect("text");
    assert!(
        text.contains("acme/widget")
            && text.contains("4.0 MiB quota")
            && text.contains("--blob-quota"),
        "{text}"
    );
    let file = c.dir().join("second.bin");
    std::fs::write(&file, &second).expect("write");
    let e = store
        .upload(&file, &BlobId(sha256(&second)), second.len() as u64)
        .await
        .expect_err("over quota");
    assert!(e.to_string().contains("quota"), "{e}");
}

#[tokio::test]
async fn a_forked_pull_request_cannot_write_a_cache_and_no_job_reads_another_projects_blob() {
    let (c, token) = coordinator(&[]);
    let a = Caller::register(&c, &token, "one").await;
    let b = Caller::register(&c, &token, "two").await;

    // A job of acme/gadget on agent one stores a blob.
    enqueue(&c, "acme/gadget", &[]);
    let gadget = a.claim().await;
    let secret = noise(50_000, 5);
    let secret_sha = sha256(&secret);
    let file = c.dir().join("secret.bin");
    std::fs::write(&file, &secret).expect("write");
    a.store(&c, &gadget)
        .upload(&file, &BlobId(secret_sha.clone()), secret.len() as u64)
        .await
        .expect("upload");

    // A forked pull request's job of acme/widget may upload, but not save a cache.
    enqueue(
        &c,
        "acme/widget",
        &["--pull-request", "5", "--pull-request-fork"],
    );
    let fork = a.claim().await;
    assert_eq!(
        fork.store.as_ref().map(|s| s.cache_writes),
        Some(false),
        "{:?}",
        fork.store
    );
    let poison = noise(10_000, 6);
    let poison_sha = sha256(&poison);
    let file = c.dir().join("poison.bin");
    std::fs::write(&file, &poison).expect("write");
    let fork_store = a.store(&c, &fork);
    fork_store
        .upload(&file, &BlobId(poison_sha.clone()), poison.len() as u64)
        .await
        .expect("a fork's job uploads (artifacts)");
    let r = a
        .req(reqwest::Method::POST, &format!("/jobs/{}/caches", fork.id))
        .json(&serde_json::json!({"key": "deps-v1", "blob": poison_sha, "size": poison.len()}))
        .send()
        .await
        .expect("save");
    assert_eq!(r.status(), 403);
    assert!(r.text().await.expect("text").contains("fork"));
    let e = fork_store
        .save_cache("deps-v1", &BlobId(poison_sha.clone()), poison.len() as u64)
        .await
        .expect_err("refused");
    assert!(e.to_string().contains("fork"), "{e}");

    // A widget job on agent two: no cache came of it, and gadget's blob is not there for it
    // (404, as for a blob nobody has), neither to read nor by claiming to have it.
    enqueue(&c, "acme/widget", &[]);
    let widget = b.claim().await;
    let w = b.store(&c, &widget);
    assert_eq!(w.find_cache("deps").await.expect("find"), None);
    let r = b
        .req(
            reqwest::Method::GET,
            &format!("/jobs/{}/blobs/{secret_sha}", widget.id),
        )
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 404);
    let st: BlobAck = b
        .req(
            reqwest::Method::GET,
            &format!("/jobs/{}/blobs/{secret_sha}/upload", widget.id),
        )
        .send()
        .await
        .expect("status")
        .json()
        .await
        .expect("ack");
    assert_eq!(
        st,
        BlobAck {
            received: 0,
            complete: false
        }
    );
    let r = b
        .req(
            reqwest::Method::POST,
            &format!("/jobs/{}/artifacts", widget.id),
        )
        .json(&serde_json::json!({"path": "stolen.bin", "blob": secret_sha, "size": secret.len()}))
        .send()
        .await
        .expect("artifact");
    assert_eq!(r.status(), 400);
    // Agent two cannot reach gadget's job (agent one holds its lease), nor an unknown one.
    for job in [&gadget.id, &"999".to_owned()] {
        let r = b
            .req(
                reqwest::Method::GET,
                &format!("/jobs/{job}/blobs/{secret_sha}"),
            )
            .send()
            .await
            .expect("get");
        assert!(matches!(r.status().as_u16(), 403 | 404), "{}", r.status());
    }
    let r = b
        .req(
            reqwest::Method::GET,
            &format!("/jobs/{}/blobs/{secret_sha}", gadget.id),
        )
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 403);
    // Its own agent reads it.
    let part = c.dir().join("back.part");
    a.store(&c, &gadget)
        .download(&BlobId(secret_sha.clone()), secret.len() as u64, &part)
        .await
        .expect("download");
    assert_eq!(std::fs::read(&part).expect("read"), secret);
}

// ---- end to end: two real agents, real Docker, the Bitbucket stand-in ----

fn wait_final(c: &Coordinator, job: &str) -> (String, String) {
    let t0 = Instant::now();
    loop {
        let s = harness::job_status(&c.data, job);
        if !s.is_empty() && s != "queued" && s != "running" {
            return (s, harness::job_log(&c.data, job));
        }
        assert!(
            t0.elapsed() < Duration::from_secs(180),
            "job {job} still `{s}`; log:\n{}",
            harness::job_log(&c.data, job)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

const JUNIT: &str = r#"<?xml version="1.0"?>
<testsuites><testsuite name="unit" tests="3">
<testcase classname="widget.Math" name="adds"/>
<testcase classname="widget.Math" name="divides_by_zero"><failure message="expected Err, got Ok(&lt;inf&gt;)">trace</failure></testcase>
<testcase classname="widget.Io" name="later"><skipped/></testcase>
</testsuite></testsuites>"#;

#[test]
fn a_workspace_and_caches_travel_between_two_agents_and_results_show_on_the_page() {
    harness::ensure_images();
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
      - run: mkdir -p /tmp/ws/out && echo "built-on-one" > /tmp/ws/out/result.txt && head -c 3000000 /dev/urandom > /tmp/ws/out/big.bin && sha256sum /tmp/ws/out/big.bin | cut -d' ' -f1 > /tmp/ws/out/big.sum
      - persist_to_workspace: {{root: /tmp/ws, paths: [out]}}
      - run: mkdir -p /tmp/reports /tmp/art && printf '%s' "$JUNIT" > /tmp/reports/junit.xml && echo hello > /tmp/art/hello.txt && echo '<script>alert(1)</script>' > /tmp/art/page.html
      - store_test_results: {{path: /tmp/reports}}
      - store_artifacts: {{path: /tmp/art, destination: art}}
  deploy:
    docker: [{{image: {img}}}]
    steps:
      - attach_workspace: {{at: /tmp/got}}
      - run: cat /tmp/got/out/result.txt && test "$(sha256sum /tmp/got/out/big.bin | cut -d' ' -f1)" = "$(cat /tmp/got/out/big.sum)" && echo attached-ok
  save:
    docker: [{{image: {img}}}]
    steps:
      - run: mkdir -p /tmp/deps && echo "saved-by-${{CIRCLE_PR_NUMBER:-base}}" > /tmp/deps/who
      - save_cache: {{key: "deps-v1-{{{{ .BuildNum }}}}", paths: [/tmp/deps]}}
  check:
    docker: [{{image: {img}}}]
    steps:
      - restore_cache: {{keys: [deps-v1-]}}
      - run: echo "who=$(cat /tmp/deps/who 2>/dev/null || echo none)"
"#
        ),
    );
    repo.commit("config");
    repo.push("HEAD:refs/heads/main");
    let c = Coordinator::start();
    harness::add_stand_in_project(
        &c.data,
        &rig,
        "acme/widget",
        &["--env", &format!("JUNIT={JUNIT}")],
    );
    let one = c.agent(&rig, "one").labels(&["one"]).start();
    let two = c.agent(&rig, "two").labels(&["two"]).start();
    let enqueue = |job: &str, extra: &[&str]| harness::enqueue_job(&c.data, job, extra);

    // The workspace: persisted by a job on agent one, attached by a job on agent two.
    let build = enqueue("build", &["--label", "one", "--workspace", "run-1"]);
    let (status, log) = wait_final(&c, &build);
    assert_eq!(status, "success", "{log}");
    assert!(log.contains("to the workspace on the coordinator"), "{log}");
    let deploy = enqueue("deploy", &["--label", "two", "--workspace", "run-1"]);
    let (status, log) = wait_final(&c, &deploy);
    assert_eq!(status, "success", "{log}");
    assert!(
        log.contains("built-on-one") && log.contains("attached-ok"),
        "{log}"
    );
    assert!(log.contains("of workspace from the coordinator"), "{log}");
    // Another run's workspace is not this one.
    let other = enqueue("deploy", &["--label", "two", "--workspace", "run-2"]);
    let (status, log) = wait_final(&c, &other);
    assert_eq!(status, "failed", "{log}");
    assert!(log.contains("no workspace to attach"), "{log}");

    // Caches: a forked pull request's save never reaches the project; a save on agent one
    // is restored on agent two.
    let fork = enqueue(
        "save",
        &[
            "--label",
            "one",
            "--pull-request",
            "5",
            "--pull-request-fork",
        ],
    );
    let (status, log) = wait_final(&c, &fork);
    assert_eq!(status, "success", "{log}");
    assert!(log.contains("never writes them"), "{log}");
    let check = enqueue("check", &["--label", "two"]);
    let (_, log) = wait_final(&c, &check);
    assert!(log.contains("who=none"), "{log}");
    let save = enqueue("save", &["--label", "one"]);
    let (status, log) = wait_final(&c, &save);
    assert_eq!(status, "success", "{log}");
    let check = enqueue("check", &["--label", "two"]);
    let (_, log) = wait_final(&c, &check);
    assert!(log.contains("Downloaded cache deps-v1-"), "{log}");
    assert!(log.contains("who=saved-by-base"), "{log}");
    assert!(
        !two.store
            .join("projects")
            .read_dir()
            .map(|mut d| d.next().is_none())
            .unwrap_or(true),
        "agent two keeps what it downloaded in its local store"
    );
    let _ = &one;

    // The page: artifacts as links, the failed test with its class and message.
    let (h, body) =
        http_get(&c.addr, &format!("/jobs/{build}/artifacts/art/hello.txt")).head_and_body();
    assert!(h.contains("content-type: text/plain"), "{h}");
    assert_eq!(body, b"hello\n");
    let (h, body) =
        http_get(&c.addr, &format!("/jobs/{build}/artifacts/art/page.html")).head_and_body();
    assert!(h.contains("content-type: application/octet-stream"), "{h}");
    assert!(h.contains("content-disposition: attachment"), "{h}");
    assert!(h.contains("x-content-type-options: nosniff"), "{h}");
    assert!(h.contains("sandbox"), "{h}");
    assert_eq!(body, b"<script>alert(1)</script>\n");
    let (h, _) = http_get(&c.addr, &format!("/jobs/{build}/artifacts/art/../../x")).head_and_body();
    assert!(h.starts_with("http/1.1 404"), "{h}");
    let Some(chromium) = harness::chromium() else {
        eprintln!("skipped the page in Chromium: no chromium installed");
        return;
    };
    let profile = tempfile::tempdir().expect("profile");
    let out = Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--dump-dom",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(format!("http://{}/jobs/{build}", c.addr))
        .stderr(Stdio::null())
        .output()
        .expect("chromium");
    let dom = String::from_utf8_lossy(&out.stdout);
    assert!(
        dom.contains(&format!("href=\"/jobs/{build}/artifacts/art/hello.txt\"")),
        "{dom}"
    );
    assert!(dom.contains("art/page.html"), "{dom}");
    assert!(dom.contains("data-tests=\"3\" data-failed=\"1\""), "{dom}");
    assert!(
        dom.contains("<td class=\"name\">divides_by_zero</td>"),
        "{dom}"
    );
    assert!(
        dom.contains("<td class=\"class\">widget.Math</td>"),
        "{dom}"
    );
    assert!(
        dom.contains("expected Err, got Ok(&lt;inf&gt;)"),
        "the message, escaped: {dom}"
    );
    assert!(!dom.contains("<script>alert"), "{dom}");
}

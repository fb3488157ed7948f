//! Notifications (issue 29) through real parts: `bosun coordinator serve` with a real agent
//! running pipelines on the Docker engine, a real SMTP server (`aiosmtpd` from PyPI, the
//! venv `scripts/test.sh --setup` makes, STARTTLS required with the test CA's certificate)
//! writing each message it gets into a maildir the test reads, and an HTTP server in the test
//! receiving outgoing webhooks and checking their signatures.
//!
//! Both start dead: the SMTP port has nothing on it and the webhook receiver takes
//! connections and never answers. The failing pipeline must end at the pace of its jobs all
//! the same, and the project's page shows the errors and what is pending. Then both come
//! up: the failed mail (with the failed job and its first failing step) and every webhook
//! go out once. A second pipeline passes: a "fixed" mail.

use crate::harness::bitbucket::*;
use crate::harness::free_port;
use crate::harness::image;
use crate::harness::TestCa;
use hmac::{Hmac, Mac};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn config(fail: bool) -> String {
    let img = image("base");
    let code = if fail { 3 } else { 0 };
    format!(
        r#"version: 2.1
jobs:
  build:
    docker: [{{image: {img}}}]
    steps:
      - run: echo building
  check:
    docker: [{{image: {img}}}]
    steps:
      - run: {{name: prepare, command: echo preparing}}
      - run: {{name: make check, command: exit {code}}}
      - run: {{name: never, command: echo never}}
workflows:
  main:
    jobs: [build, check]
"#
    )
}

/// The Python of the venv `scripts/test.sh --setup` made, when it has aiosmtpd.
fn python_with_aiosmtpd() -> Option<PathBuf> {
    let venv = std::env::var_os("BOSUN_PY_CLIENTS")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/bosun/py-clients"))
        });
    let mut candidates = vec![PathBuf::from("python3")];
    if let Some(v) = venv {
        candidates.push(v.join("bin/python3"));
    }
    candidates.into_iter().find(|py| {
        Command::new(py)
            .args(["-c", "import aiosmtpd"])
            .output()
            .is_ok_and(|o| o.status.success())
    })
}

/// aiosmtpd on `port`, STARTTLS with `ca`'s server certificate (required before MAIL),
/// each message written into the maildir `dir`.
struct Smtp(Child);

impl Smtp {
    fn start(py: &Path, port: u16, ca: &TestCa, dir: &Path) -> Smtp {
        let child = Command::new(py)
            .args(["-m", "aiosmtpd", "-n", "-l", &format!("127.0.0.1:{port}")])
            .arg("--tlscert")
            .arg(&ca.cert)
            .arg("--tlskey")
            .arg(&ca.key)
            .args(["-c", "aiosmtpd.handlers.Mailbox"])
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start aiosmtpd");
        let t0 = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "aiosmtpd did not listen"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Smtp(child)
    }
}

impl Drop for Smtp {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The messages in maildir `dir`, raw.
fn mails(dir: &Path) -> Vec<String> {
    let mut out: Vec<(std::time::SystemTime, String)> = std::fs::read_dir(dir.join("new"))
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| {
                    let t = e.metadata().and_then(|m| m.modified()).expect("mtime");
                    (t, std::fs::read_to_string(e.path()).expect("read mail"))
                })
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out.into_iter().map(|(_, m)| m).collect()
}

/// A message's text with quoted-printable soft breaks and `=XX` escapes undone (enough for
/// the ASCII this test looks for).
fn unfolded(m: &str) -> String {
    let s = m.replace("=\r\n", "").replace("=\n", "");
    let mut out = String::new();
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'=' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(v as char);
                i += 3;
                continue;
            }
        }
        out.push(b[i] as char);
        i += 1;
    }
    out
}

/// (headers lowercased, body) of each webhook call received.
type Calls = Arc<Mutex<Vec<(Vec<(String, String)>, Vec<u8>)>>>;

/// The webhook receiver on `listener`: while `dead` it takes connections and never answers;
/// otherwise records each POST and answers 200.
fn receiver(listener: std::net::TcpListener, dead: Arc<AtomicBool>, calls: Calls) {
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            if dead.load(Ordering::SeqCst) {
                // Hold it open, unanswered, until the coordinator's time limit gives up.
                held.push(conn);
                continue;
            }
            let calls = calls.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(conn.try_clone().expect("clone"));
                let mut first = String::new();
                if reader.read_line(&mut first).is_err() {
                    return;
                }
                let mut headers = Vec::new();
                let mut len = 0usize;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).is_err() || line.trim().is_empty() {
                        break;
                    }
                    if let Some((k, v)) = line.split_once(':') {
                        let (k, v) = (k.trim().to_ascii_lowercase(), v.trim().to_owned());
                        if k == "content-length" {
                            len = v.parse().unwrap_or(0);
                        }
                        headers.push((k, v));
                    }
                }
                let mut body = vec![0u8; len];
                let _ = reader.read_exact(&mut body);
                assert!(first.starts_with("POST /hook?token=t0p "), "{first}");
                calls.lock().expect("lock").push((headers, body));
                let _ = conn.write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                );
            });
        }
    });
}

fn header<'a>(h: &'a [(String, String)], name: &str) -> &'a str {
    h.iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
        .unwrap_or_else(|| panic!("no {name} header in {h:?}"))
}

/// Pipeline `id`'s end and its jobs' last end, milliseconds, from the store's file.
fn ends(data: &Path, id: i64) -> (i64, i64) {
    let db = rusqlite::Connection::open(data.join("coordinator.db")).expect("db");
    db.query_row(
        "SELECT p.finished, (SELECT MAX(finished) FROM jobs WHERE pipeline_id = p.id) \
         FROM pipelines p WHERE p.id = ?1",
        [id],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )
    .expect("ends")
}

fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let t0 = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(t0.elapsed() < timeout, "{what} not within {timeout:?}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn failed_and_fixed_mail_and_signed_webhooks_survive_dead_receivers() {
    let Some(py) = python_with_aiosmtpd() else {
        panic!(
            "aiosmtpd is not installed: run scripts/test.sh --setup (it installs it into a venv)"
        );
    };
    let tmp = tempfile::tempdir().expect("tmp");
    let ca = TestCa::new(&tmp.path().join("tls"), &["127.0.0.1"]);
    let maildir = tmp.path().join("maildir");
    let smtp_port = free_port();
    let hook_listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let hook_url = format!(
        "http://{}/hook?token=t0p",
        hook_listener.local_addr().expect("addr")
    );
    let dead = Arc::new(AtomicBool::new(true));
    let calls: Calls = Arc::default();
    receiver(hook_listener, dead.clone(), calls.clone());

    let smtp_url = format!("smtp://127.0.0.1:{smtp_port}?tls=required");
    let ca_file = ca.ca_cert.to_str().expect("utf8").to_owned();
    let s = setup_serving(
        &config(true),
        &["--uuid", UUID],
        &[
            "--smtp-url",
            &smtp_url,
            "--smtp-ca-file",
            &ca_file,
            "--mail-from",
            "ci@example.com",
            "--notify-timeout",
            "2s",
            "--notify-max-backoff",
            "2s",
        ],
        &[],
        |c, rig| vec![c.agent(rig, "agent-n").labels(&["agent-n"]).start()],
    );
    let out = s.c.cli(&[
        "project",
        "notify",
        "add",
        "--slug",
        "acme/widget",
        "--email",
        "team@example.com",
    ]);
    assert!(
        out.contains("team@example.com  failed,fixed  pending 0"),
        "{out}"
    );
    // Hostile input is refused with a clear word.
    for (args, want) in [
        (
            vec!["notify", "add", "--email", "a@b\r\nBcc: x@y"],
            "e-mail address",
        ),
        (
            vec!["notify", "add", "--email", "t@example.com", "--on", "push"],
            "unknown event `push`",
        ),
        (
            vec!["webhook", "add", "file:///etc/passwd"],
            "http:// or https://",
        ),
        (
            vec!["webhook", "add", "https://u:p@example.com/"],
            "no user or password",
        ),
    ] {
        let mut full = vec!["project"];
        full.extend_from_slice(&args[..2]);
        full.extend_from_slice(&["--slug", "acme/widget"]);
        full.extend_from_slice(&args[2..]);
        let o = Command::new(crate::harness::bosun_bin())
            .arg("coordinator")
            .args(&full)
            .arg("--data")
            .arg(&s.data)
            .output()
            .expect("run bosun");
        assert!(!o.status.success(), "{args:?} was accepted");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(want), "{args:?}: {err}");
    }
    let out = s.c.cli(&[
        "project",
        "webhook",
        "add",
        "--slug",
        "acme/widget",
        &hook_url,
        "--name",
        "ci hook",
    ]);
    let secret = out
        .lines()
        .find_map(|l| l.strip_prefix("signing secret: "))
        .unwrap_or_else(|| panic!("{out}"))
        .to_owned();
    let ls =
        s.c.cli(&["project", "webhook", "ls", "--slug", "acme/widget"]);
    assert!(!ls.contains(&secret) && !ls.contains("t0p"), "{ls}");
    assert!(
        ls.contains("/hook?…  workflow-completed,job-completed"),
        "{ls}"
    );

    // The failing pipeline, with both receivers dead.
    let sha = s.repo.head();
    let body = push_payload("acme/widget", "branch", "main", &sha, "config");
    let (code, answer) = deliver(&s.addr, "repo:push", "{n-1}", &body, SECRET).await;
    assert_eq!(code, 202, "{answer}");
    let first = answer["pipelines"][0]["id"].as_i64().expect("id");
    let p = wait_pipeline(&s.data, first, &["failed"], Duration::from_secs(240));
    assert_eq!(job_status(&p, "check"), "failed");
    let (end, jobs_end) = ends(&s.data, first);
    assert!(
        end - jobs_end < 3000,
        "the pipeline ended {} ms after its last job: deliveries held it up",
        end - jobs_end
    );
    // The page shows both errors and what waits; no secret, no token.
    let page = wait_for("both errors on the page", Duration::from_secs(30), || {
        let page = crate::harness::http_get(&s.addr, "/projects/acme/widget").text();
        (page.matches("class=\"notify-error\"").count() == 2).then_some(page)
    });
    assert!(page.contains("SMTP"), "{page}");
    assert!(page.contains("webhook"), "{page}");
    assert!(!page.contains(&secret) && !page.contains("t0p"), "{page}");
    assert!(
        page.matches("<td class=\"notify-pending\">").count() == 2
            && !page.contains("<td class=\"notify-pending\">0</td>"),
        "both have deliveries pending: {page}"
    );
    assert!(mails(&maildir).is_empty());
    assert!(calls.lock().expect("lock").is_empty());

    // Both come back: what waited goes out, once.
    let _smtp = Smtp::start(&py, smtp_port, &ca, &maildir);
    dead.store(false, Ordering::SeqCst);
    let m = wait_for("the failed mail", Duration::from_secs(60), || {
        mails(&maildir).into_iter().next()
    });
    let m = unfolded(&m);
    assert!(m.contains("Subject: Failed: acme/widget#1 (main - "), "{m}");
    assert!(m.contains("To: team@example.com"), "{m}");
    assert!(m.contains("text/plain") && m.contains("text/html"), "{m}");
    assert!(
        m.contains("main/check (failed): first failing step: make check (exit code 3)"),
        "{m}"
    );
    assert!(m.contains(&format!("/pipelines/{first}")), "{m}");
    assert!(
        !m.contains("main/build"),
        "a job that passed is not listed: {m}"
    );
    // workflow-completed once, job-completed for each of the two jobs.
    let got = wait_for("the webhook calls", Duration::from_secs(60), || {
        let c = calls.lock().expect("lock").clone();
        (c.len() >= 3).then_some(c)
    });
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(calls.lock().expect("lock").len(), 3, "each event once");
    assert_eq!(mails(&maildir).len(), 1, "the mail once");
    let mut kinds = Vec::new();
    let mut ids = std::collections::BTreeSet::new();
    for (h, body) in &got {
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).expect("hmac");
        mac.update(body);
        let want = format!(
            "v1={}",
            mac.finalize()
                .into_bytes()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        );
        assert_eq!(header(h, "circleci-signature"), want, "the signature");
        let v: serde_json::Value = serde_json::from_slice(body).expect("json body");
        assert_eq!(
            header(h, "circleci-event-type"),
            v["type"].as_str().expect("type")
        );
        assert!(
            ids.insert(v["id"].as_str().expect("id").to_owned()),
            "ids differ"
        );
        assert_eq!(v["webhook"]["name"], "ci hook");
        assert_eq!(v["project"]["slug"], "bb/acme/widget");
        assert_eq!(v["organization"]["name"], "acme");
        assert_eq!(v["pipeline"]["number"], 1);
        assert_eq!(
            v["pipeline"]["vcs"]["revision"],
            p.revision.clone().expect("rev")
        );
        assert_eq!(v["pipeline"]["vcs"]["branch"], "main");
        assert_eq!(v["pipeline"]["id"], p.uuid);
        assert_eq!(v["workflow"]["name"], "main");
        assert!(v["happened_at"].as_str().expect("time").ends_with('Z'));
        match v["type"].as_str() {
            Some("workflow-completed") => {
                assert_eq!(v["workflow"]["status"], "failed");
                assert!(v.get("job").is_none());
                kinds.push("workflow".to_owned());
            }
            Some("job-completed") => {
                let name = v["job"]["name"].as_str().expect("job name");
                let want = if name == "check" { "failed" } else { "success" };
                assert_eq!(v["job"]["status"], want, "{v}");
                assert!(v["job"]["stopped_at"].is_string(), "{v}");
                kinds.push(format!("job {name}"));
            }
            other => panic!("type {other:?}"),
        }
    }
    kinds.sort();
    assert_eq!(kinds, ["job build", "job check", "workflow"]);
    let page = wait_for("nothing pending", Duration::from_secs(20), || {
        let page = crate::harness::http_get(&s.addr, "/projects/acme/widget").text();
        (page.matches("<td class=\"notify-pending\">0</td>").count() == 2).then_some(page)
    });
    assert!(!page.contains(&secret), "{page}");

    // Fixed: the next pipeline of the branch passes.
    s.repo.write(".circleci/config.yml", &config(false));
    let sha = s.repo.commit("fix the check");
    s.repo.push("HEAD:refs/heads/main");
    let body = push_payload("acme/widget", "branch", "main", &sha, "fix the check");
    let (code, answer) = deliver(&s.addr, "repo:push", "{n-2}", &body, SECRET).await;
    assert_eq!(code, 202, "{answer}");
    let second = answer["pipelines"][0]["id"].as_i64().expect("id");
    wait_pipeline(&s.data, second, &["success"], Duration::from_secs(240));
    let fixed = wait_for("the fixed mail", Duration::from_secs(60), || {
        let all = mails(&maildir);
        (all.len() >= 2).then(|| all[1].clone())
    });
    let fixed = unfolded(&fixed);
    assert!(
        fixed.contains("Subject: Fixed: acme/widget#2 (main - "),
        "{fixed}"
    );
    assert!(!fixed.contains("Failed jobs"), "{fixed}");

    // Removed targets are told of nothing more.
    s.c.cli(&[
        "project",
        "webhook",
        "rm",
        "--slug",
        "acme/widget",
        &hook_url,
    ]);
    s.c.cli(&[
        "project",
        "notify",
        "rm",
        "--slug",
        "acme/widget",
        "--email",
        "team@example.com",
    ]);
    for kind in ["webhook", "notify"] {
        let ls = s.c.cli(&["project", kind, "ls", "--slug", "acme/widget"]);
        assert!(ls.trim().is_empty(), "{kind}: {ls}");
    }
}

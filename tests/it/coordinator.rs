//! The reference coordinator as a real process on loopback: started with
//! `bosun coordinator serve --listen 127.0.0.1:0`, driven over HTTP like an agent would,
//! and through the CLI (`enqueue`, `cancel`, `revoke`) like an operator would.

use crate::harness;

use crate::coordinator_rig::*;

use bosun::protocol::{
    ClaimResponse, EventAck, EventBatch, FinalStatus, HeartbeatResponse, JobEvent, LogAck,
    RegisterResponse,
};
use serde_json::json;
use std::path::Path;
use std::time::{Duration, Instant};
#[tokio::test]
async fn register_needs_the_registration_token() {
    let s = fresh(&[]);
    let r = client()
        .post(format!("{}/api/v1/agents/register", s.base))
        .json(&json!({"registration_token": "wrong", "name": "a",
            "resource_class": "docker", "version": "test"}))
        .send()
        .await
        .expect("register");
    assert_eq!(r.status(), 401);
    let a = register(&s, "a1").await;
    // The token is stored only as a digest.
    let db = std::fs::read(s.data.join("coordinator.db")).expect("db");
    assert!(!db.windows(a.token.len()).any(|w| w == a.token.as_bytes()));
    // A made-up bearer token is refused.
    let bad = Agent {
        token: "bosun-agent-nope".into(),
        ..a
    };
    assert_eq!(bad.claim(0).await.status(), 401);
}

#[tokio::test]
async fn claim_long_poll_wakes_on_cli_enqueue_and_answers_204_when_nothing_comes() {
    let s = fresh(&[]);
    let a = register(&s, "a1").await;

    let t = Instant::now();
    assert_eq!(a.claim(1).await.status(), 204);
    let waited = t.elapsed();
    assert!(
        waited >= Duration::from_millis(950) && waited < Duration::from_secs(3),
        "{waited:?}"
    );

    let data = s.data.clone();
    let poll = tokio::spawn(async move {
        let r = a.claim(20).await;
        (Instant::now(), r.status(), r.text().await.expect("text"))
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (id, enqueued_at) = tokio::task::spawn_blocking(move || {
        (enqueue(&data, &["--commit", "abc123"]), Instant::now())
    })
    .await
    .expect("enqueue");
    let (answered_at, status, body) = poll.await.expect("poll");
    assert_eq!(status, 200, "{body}");
    let lag = answered_at.saturating_duration_since(enqueued_at);
    eprintln!("claim answered {lag:?} after the enqueue command exited");
    assert!(lag < Duration::from_millis(300), "{lag:?}");
    let c: ClaimResponse = serde_json::from_str(&body).expect("json");
    assert_eq!(c.job.id, id);
    assert_eq!(c.job.attempt, 1);
    assert_eq!(c.job.commit_sha, "abc123");
    assert_eq!(c.job.branch.as_deref(), Some("main"));
    assert_eq!(c.job.project.slug, "acme/widget");
    assert_eq!(c.job.keys.len(), 1);
    assert!(c.job.env.iter().any(|e| e.name == "TOKEN" && e.secret));
}

#[tokio::test]
async fn one_job_is_leased_to_one_agent_only() {
    let s = fresh(&[]);
    let a = register(&s, "a1").await;
    let b = register(&s, "a2").await;
    let (ra, rb, _) = tokio::join!(a.claim(3), b.claim(3), async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let data = s.data.clone();
        tokio::task::spawn_blocking(move || enqueue(&data, &[]))
            .await
            .expect("enqueue")
    });
    let mut statuses = [ra.status().as_u16(), rb.status().as_u16()];
    statuses.sort();
    assert_eq!(statuses, [200, 204]);
}

#[tokio::test]
async fn logs_and_events_are_idempotent_and_finish_checks_the_digest() {
    let s = fresh(&[]);
    let a = register(&s, "a1").await;
    let id = enqueue(&s.data, &[]);
    let job = a.claim_job(5).await.job;
    assert_eq!(job.id, id);

    // Same chunk twice: stored once.
    assert_eq!(a.log(&id, 0, b"prep\n").await, (200, 5));
    assert_eq!(a.log(&id, 0, b"prep\n").await, (200, 5));
    // A gap: 409 with where the coordinator's copy ends.
    assert_eq!(a.log(&id, 20, b"later\n").await, (409, 5));
    // Resend from that offset (overlapping a little) works.
    assert_eq!(a.log(&id, 3, b"p\nstep <one>\n").await, (200, 16));

    let ev = |first_seq: u64, events: Vec<JobEvent>| {
        serde_json::to_value(EventBatch { first_seq, events }).expect("json")
    };
    let started = JobEvent::StepStarted {
        step: 1,
        name: "Run <tests>".into(),
        log_offset: 5,
        commit_sha: None,
    };
    let finished = JobEvent::StepFinished {
        step: 1,
        name: "Run <tests>".into(),
        status: bosun::protocol::StepStatus::Success,
        exit_code: Some(0),
        duration_ms: 1200,
        log_offset: 16,
    };
    let r = a
        .post(&format!("/jobs/{id}/events"), ev(0, vec![started.clone()]))
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<EventAck>().await.expect("ack").next_seq, 1);
    // Resent batch overlapping the stored one: only the new event is added.
    let r = a
        .post(
            &format!("/jobs/{id}/events"),
            ev(0, vec![started.clone(), finished.clone()]),
        )
        .await;
    assert_eq!(r.json::<EventAck>().await.expect("ack").next_seq, 2);
    let r = a
        .post(&format!("/jobs/{id}/events"), ev(5, vec![finished.clone()]))
        .await;
    assert_eq!(r.status(), 409);
    assert_eq!(r.json::<EventAck>().await.expect("ack").next_seq, 2);

    let log = b"prep\nstep <one>\n";
    // Claiming more bytes than stored: 409 with the stored length.
    let mut longer = log.to_vec();
    longer.extend_from_slice(b"lost");
    let r = a.finish(&id, FinalStatus::Success, &longer).await;
    assert_eq!(r.status(), 409);
    assert_eq!(r.json::<LogAck>().await.expect("ack").offset, 16);

    let r = a.finish(&id, FinalStatus::Success, log).await;
    assert_eq!(r.status(), 200);
    // A resent finish (lost answer) is answered the same.
    assert_eq!(a.finish(&id, FinalStatus::Success, log).await.status(), 200);
    // No writes after the end.
    assert_eq!(a.log(&id, 16, b"x").await.0, 403);

    let index = get_text(&s.base).await;
    assert!(
        index.contains(&format!("<a href=\"/jobs/{id}\">#{id}</a>")),
        "{index}"
    );
    assert!(index.contains("</span> success</span>"), "{index}");
    let page = get_text(&format!("{}/jobs/{id}", s.base)).await;
    assert!(page.contains("Run &lt;tests&gt;"), "{page}");
    assert!(
        page.contains("tabindex=\"-1\"></a>step &lt;one&gt;\n</span></pre>"),
        "{page}"
    );
    assert!(
        page.contains("<pre class=\"log\"><span class=\"l\" id=\"L1\" data-t=\""),
        "{page}"
    );
    assert!(
        page.contains("<a href=\"#L1\" data-n=\"1\" tabindex=\"-1\"></a>prep\n</span></pre>"),
        "{page}"
    );

    // A second job finished with a digest that does not match what was stored.
    let id2 = enqueue(&s.data, &[]);
    a.claim_job(5).await;
    assert_eq!(a.log(&id2, 0, b"abc").await, (200, 3));
    let r = a.finish(&id2, FinalStatus::Success, b"abd").await;
    assert_eq!(r.status(), 422);
    let err: serde_json::Value = r.json().await.expect("json");
    assert!(
        err["error"]
            .as_str()
            .unwrap_or_default()
            .contains("log digest differs"),
        "{err}"
    );
    let jobs = cli(&s.data, &["jobs"]);
    let line = jobs
        .lines()
        .find(|l| l.trim_start().starts_with(&format!("{id2} ")))
        .unwrap_or_else(|| panic!("{jobs}"));
    assert!(line.contains("infrastructure_fail"), "{jobs}");
}

#[tokio::test]
async fn live_stream_sends_new_log_and_the_final_status() {
    let s = fresh(&[]);
    let a = register(&s, "a1").await;
    let id = enqueue(&s.data, &[]);
    a.claim_job(5).await;
    a.log(&id, 0, b"first\n").await;
    let mut stream = client()
        .get(format!("{}/jobs/{id}/stream?offset=0&seq=0", s.base))
        .send()
        .await
        .expect("stream");
    assert_eq!(
        stream
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("text/event-stream")
    );
    let mut got = String::new();
    let mut sent_second = false;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !got.contains("event: end") && Instant::now() < deadline {
        let chunk = tokio::time::timeout(Duration::from_secs(5), stream.chunk())
            .await
            .expect("stream stalled")
            .expect("chunk");
        let Some(chunk) = chunk else { break };
        got.push_str(&String::from_utf8_lossy(&chunk));
        if got.contains("first") && !sent_second {
            sent_second = true;
            a.log(&id, 6, b"second <b>\n").await;
            a.finish(&id, FinalStatus::Failed, b"first\nsecond <b>\n")
                .await;
        }
    }
    // Rendered and escaped by the coordinator (pages/live.rs), never raw markup.
    assert!(got.contains("second &lt;b&gt;"), "{got}");
    assert!(!got.contains("second <b>"), "{got}");
    assert!(got.contains("\"status\":\"failed\""), "{got}");
    assert!(got.contains("event: end"), "{got}");
}

#[tokio::test]
async fn a_lapsed_lease_requeues_the_job_then_fails_it_after_max_attempts() {
    let s = fresh(&["--lease-secs", "2"]);
    let a = register(&s, "a1").await;
    let id = enqueue(&s.data, &["--max-attempts", "2"]);
    let c = a.claim_job(5).await;
    assert_eq!((c.job.attempt, c.lease_secs), (1, 2));
    a.log(&id, 0, b"attempt one\n").await;
    // No heartbeat: within lease + reaper period the job is queued again, as attempt 2.
    let c = a.claim_job(10).await;
    assert_eq!((c.job.id.as_str(), c.job.attempt), (id.as_str(), 2));
    // A late write that says it is attempt 1 is refused over HTTP, with the reason…
    let late = a
        .http
        .post(a.url(&format!("/jobs/{id}/log?offset=0")))
        .bearer_auth(&a.token)
        .header(bosun::protocol::ATTEMPT_HEADER, "1")
        .body(b"late bytes of attempt one\n".to_vec())
        .send()
        .await
        .expect("late append");
    assert_eq!(late.status(), 403);
    let why = late.text().await.expect("body");
    assert!(why.contains("attempt 2"), "{why}");
    // …a malformed one is a 400 naming the header…
    let bad = a
        .http
        .post(a.url(&format!("/jobs/{id}/log?offset=0")))
        .bearer_auth(&a.token)
        .header(bosun::protocol::ATTEMPT_HEADER, "two")
        .body(b"x".to_vec())
        .send()
        .await
        .expect("bad append");
    assert_eq!(bad.status(), 400);
    assert!(bad.text().await.expect("body").contains("bosun-attempt"));
    // …and the old attempt's log went with it: the new attempt writes from 0.
    assert_eq!(a.log(&id, 0, b"attempt two\n").await, (200, 12));
    // Heartbeats keep the lease…
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(800)).await;
        let hb: HeartbeatResponse = a.heartbeat(&[&id]).await.json().await.expect("hb");
        assert!(hb.unknown.is_empty(), "{hb:?}");
    }
    // …and without them the last attempt ends as infrastructure_fail.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let jobs = cli(&s.data, &["jobs"]);
        if jobs.contains("infrastructure_fail") {
            assert!(jobs.contains("2/2"), "{jobs}");
            break;
        }
        assert!(Instant::now() < deadline, "{jobs}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let hb: HeartbeatResponse = a.heartbeat(&[&id]).await.json().await.expect("hb");
    assert_eq!(hb.unknown, vec![id.clone()]);
    assert_eq!(a.log(&id, 12, b"x").await.0, 403);
}

#[tokio::test]
async fn cancel_through_the_cli_reaches_the_next_heartbeat() {
    let s = fresh(&[]);
    let a = register(&s, "a1").await;
    let id = enqueue(&s.data, &[]);
    a.claim_job(5).await;
    let hb: HeartbeatResponse = a.heartbeat(&[&id]).await.json().await.expect("hb");
    assert!(hb.cancel.is_empty());
    assert!(cli(&s.data, &["cancel", &id]).contains("cancel requested"));
    let hb: HeartbeatResponse = a.heartbeat(&[&id]).await.json().await.expect("hb");
    assert_eq!(hb.cancel, vec![id.clone()]);
    assert_eq!(hb.lease_secs, 30);
    assert_eq!(
        a.finish(&id, FinalStatus::Canceled, b"").await.status(),
        200
    );
    // A queued job is canceled at once.
    let id2 = enqueue(&s.data, &[]);
    assert!(cli(&s.data, &["cancel", &id2]).ends_with("canceled"));
    assert_eq!(a.claim(0).await.status(), 204);
}

#[tokio::test]
async fn a_revoked_agent_gets_401() {
    let s = fresh(&[]);
    let a = register(&s, "doomed").await;
    assert_eq!(a.heartbeat(&[]).await.status(), 200);
    cli(&s.data, &["revoke", "doomed"]);
    let r = a.heartbeat(&[]).await;
    assert_eq!(r.status(), 401);
    let body: serde_json::Value = r.json().await.expect("json");
    assert_eq!(body["error"], "agent token revoked");
    assert_eq!(a.claim(0).await.status(), 401);
}

#[tokio::test]
async fn everything_survives_sigkill_and_restart() {
    let mut s = fresh(&[]);
    let a = register(&s, "a1").await;
    let done = enqueue(&s.data, &[]);
    a.claim_job(5).await;
    let log = b"all the bytes\n";
    assert_eq!(a.log(&done, 0, log).await, (200, 14));
    assert_eq!(
        a.finish(&done, FinalStatus::Success, log).await.status(),
        200
    );
    let running = enqueue(&s.data, &[]);
    a.claim_job(5).await;
    assert_eq!(a.log(&running, 0, b"half").await, (200, 4));
    let queued = enqueue(&s.data, &[]);

    // SIGKILL: no chance to flush anything; every acknowledged write must be on disk.
    s.child.kill().expect("kill");
    s.child.wait().expect("wait");
    let dir = s._dir.take();
    let data = s.data.clone();
    drop(s);
    let mut s2 = start(&data, &[]);
    s2._dir = dir;

    let a = Agent {
        base: s2.base.clone(),
        ..a
    };
    // The running job's lease and log are intact: the agent carries on where it was.
    assert_eq!(a.log(&running, 4, b" more").await, (200, 9));
    let page = get_text(&format!("{}/jobs/{done}", s2.base)).await;
    assert!(page.contains("all the bytes"), "{page}");
    assert!(page.contains("data-status=\"success\""), "{page}");
    let c = a.claim_job(5).await;
    assert_eq!(c.job.id, queued);
    let jobs = cli(&s2.data, &["jobs"]);
    assert!(jobs.contains("success"), "{jobs}");
}

/// Issue 12 item 6: an agent's resource class and labels are the ones fixed when it
/// registered (changed by the operator only), whatever its claims say.
#[tokio::test]
async fn an_agent_claims_with_its_registered_class_and_labels_not_what_it_claims_to_be() {
    let s = fresh(&[]);
    let a = register(&s, "docker-agent").await;
    let data = s.data.clone();
    let id = tokio::task::spawn_blocking(move || {
        enqueue(&data, &["--resource-class", "gpu", "--label", "secure"])
    })
    .await
    .expect("enqueue");
    let r = a
        .post(
            "/jobs/claim?wait=1",
            json!({"resource_class": "gpu", "labels": ["secure"], "capacity": 1}),
        )
        .await;
    assert_eq!(r.status(), 204, "a docker agent took a gpu job");
    cli(
        &s.data,
        &[
            "relabel",
            &a.id,
            "--resource-class",
            "gpu",
            "--label",
            "secure",
        ],
    );
    let c = a.claim_job(1).await;
    assert_eq!(c.job.id, id);
}

/// Issue 12 item 6: a project restricted to some agents is run by those only.
#[tokio::test]
async fn a_project_restricted_to_an_agent_is_claimed_by_that_agent_only() {
    let s = fresh(&[]);
    let trusted = register(&s, "trusted").await;
    let other = register(&s, "other").await;
    cli(
        &s.data,
        &[
            "project",
            "restrict",
            "--slug",
            "acme/widget",
            "--agent",
            &trusted.id,
        ],
    );
    let data = s.data.clone();
    let id = tokio::task::spawn_blocking(move || enqueue(&data, &[]))
        .await
        .expect("enqueue");
    assert_eq!(other.claim(1).await.status(), 204);
    assert_eq!(trusted.claim_job(1).await.job.id, id);
}

/// Issue 12 item 6: registration tokens are kept as digests only, expire, and `token
/// rotate` retires every earlier one.
#[tokio::test]
async fn registration_tokens_are_digests_that_expire_and_rotate() {
    let s = fresh(&[]);
    let first = cli(&s.data, &["token"]);
    let short = cli(&s.data, &["token", "--expires", "2s"]);
    let db = std::fs::read(s.data.join("coordinator.db")).expect("db");
    for t in [&first, &short] {
        assert!(
            !db.windows(t.len()).any(|w| w == t.as_bytes()),
            "a registration token is stored in the clear"
        );
    }
    register_with(&s, "a1", &short).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(try_register(&s, "a2", &short).await.status(), 401);
    register_with(&s, "a3", &first).await;
    let rotated = cli(&s.data, &["token", "rotate"]);
    assert_eq!(try_register(&s, "a4", &first).await.status(), 401);
    register_with(&s, "a5", &rotated).await;
    let listed = cli(&s.data, &["token", "list"]);
    assert!(!listed.contains(&rotated), "{listed}");
}

/// Issue 12 item 9: SIGTERM ends the live streams of browsers following a job, so the
/// coordinator exits promptly.
#[tokio::test]
async fn sigterm_ends_live_streams_and_exits() {
    let mut s = fresh(&[]);
    let a = register(&s, "a1").await;
    let id = enqueue(&s.data, &[]);
    a.claim_job(5).await;
    let mut stream = client()
        .get(format!("{}/jobs/{id}/stream?offset=0&seq=0", s.base))
        .send()
        .await
        .expect("stream");
    let first = tokio::time::timeout(Duration::from_secs(5), stream.chunk())
        .await
        .expect("first event");
    assert!(first.is_ok());
    let pid = s.child.id() as libc::pid_t;
    // SAFETY: a plain kill(2) of our own child.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let t0 = Instant::now();
    let status = loop {
        if let Some(st) = s.child.try_wait().expect("wait") {
            break st;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "the coordinator still runs 10 s after SIGTERM with a live stream open"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(status.success(), "{status:?}");
    // The stream ended rather than being cut mid-event.
    let rest = tokio::time::timeout(Duration::from_secs(5), async {
        while let Ok(Some(_)) = stream.chunk().await {}
    })
    .await;
    assert!(rest.is_ok());
}

/// Every byte of the coordinator's database and WAL.
fn db_bytes(data: &Path) -> Vec<u8> {
    let mut all = Vec::new();
    for f in ["coordinator.db", "coordinator.db-wal"] {
        all.extend(std::fs::read(data.join(f)).unwrap_or_default());
    }
    all
}

fn has(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

#[tokio::test]
async fn the_api_is_served_over_https_and_keys_and_secrets_are_sealed_at_rest() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = harness::TestCa::new(&dir.path().join("tls"), &["localhost", "127.0.0.1"]);
    let s = fresh(&[
        "--tls-cert",
        ca.cert.to_str().expect("utf8"),
        "--tls-key",
        ca.key.to_str().expect("utf8"),
    ]);
    assert!(s.base.starts_with("https://127.0.0.1:"), "{}", s.base);
    let pem = std::fs::read(&ca.ca_cert).expect("ca");
    let http = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&pem).expect("pem"))
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client");
    let token = cli(&s.data, &["token"]);
    let r = http
        .post(format!("{}/api/v1/agents/register", s.base))
        .json(&json!({"registration_token": token, "name": "tls",
            "resource_class": "docker", "labels": [], "version": "test"}))
        .send()
        .await
        .expect("register over https");
    assert_eq!(r.status(), 201);
    let reg: RegisterResponse = r.json().await.expect("json");
    let a = Agent {
        base: s.base.clone(),
        id: reg.agent_id,
        token: reg.agent_token.into_inner(),
        http,
    };
    enqueue(&s.data, &[]);
    let job = a.claim_job(5).await.job;
    // The claim carries the key and the secret as they were added …
    assert_eq!(
        job.keys[0].private_key.trim(),
        "-----BEGIN OPENSSH PRIVATE KEY-----\nTESTKEY"
    );
    assert!(job
        .env
        .iter()
        .any(|e| e.name == "TOKEN" && e.value == "hunter22" && e.secret));
    // … which the database holds only sealed, with a key file outside the data directory.
    let bytes = db_bytes(&s.data);
    assert!(!has(&bytes, "TESTKEY") && !has(&bytes, "hunter22"));
    assert!(has(&bytes, "enc:v1:"));
    let key = s.data.with_file_name("data.key");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&key)
        .expect("key file")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    // Plain HTTP to the TLS port is no way in, nor is a client that does not trust the CA.
    let plain = s.base.replace("https://", "http://");
    let r = client().get(format!("{plain}/")).send().await;
    assert!(r.is_err() || !r.expect("r").status().is_success());
    assert!(client().get(format!("{}/", s.base)).send().await.is_err());
}

/// Issue 12 item 12: names and labels come from agents; the operator's terminal prints them.
#[tokio::test]
async fn agent_names_cannot_drive_the_operators_terminal() {
    let s = fresh(&[]);
    let token = cli(&s.data, &["token"]);
    let long = "n".repeat(65);
    for (name, labels) in [
        ("evil\x1b]0;pwned\x07", json!([])),
        ("two\nlines", json!([])),
        ("bidi\u{202e}txt.exe", json!([])),
        (long.as_str(), json!([])),
        ("ok", json!(["fine", "bad\x1b[2J"])),
        (
            "ok",
            json!((0..33).map(|i| format!("l{i}")).collect::<Vec<_>>()),
        ),
    ] {
        let r = client()
            .post(format!("{}/api/v1/agents/register", s.base))
            .json(&json!({"registration_token": token, "name": name,
                "resource_class": "docker", "labels": labels, "version": "test"}))
            .send()
            .await
            .expect("register");
        assert_eq!(r.status(), 400, "{name:?} {labels}");
        let v: serde_json::Value = r.json().await.expect("a JSON error");
        assert!(v["error"].is_string(), "{v}");
    }
    assert!(try_register(&s, &"n".repeat(64), &token)
        .await
        .status()
        .is_success());
    // A name an older coordinator let in is shown, not obeyed.
    let db = rusqlite::Connection::open(s.data.join("coordinator.db")).expect("db");
    db.execute(
        "INSERT INTO agents(id, name, token_sha256, resource_class, labels, version, created, \
         last_seen) VALUES ('agent-old', 'old\x1b[2J\nREVOKED', 'x', 'docker\r', '[]', 'v', 0, 0)",
        [],
    )
    .expect("insert");
    let out = cli(&s.data, &["agents"]);
    assert!(!out.contains('\x1b') && !out.contains('\r'), "{out:?}");
    assert_eq!(out.lines().count(), 2, "one line per agent: {out:?}");
    assert!(out.contains("old\\u{1b}[2J\\u{a}REVOKED"), "{out}");
}

/// Issue 12 item 13: the pages say what a browser may do with them.
#[tokio::test]
async fn pages_carry_security_headers() {
    let s = fresh(&[]);
    let id = enqueue(&s.data, &[]);
    for path in [
        "/".to_owned(),
        format!("/jobs/{id}"),
        "/jobs/99999".to_owned(),
    ] {
        let r = client()
            .get(format!("{}{path}", s.base))
            .send()
            .await
            .expect("get");
        let h = |k: &str| {
            r.headers()
                .get(k)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned()
        };
        let csp = h("content-security-policy");
        assert!(csp.contains("default-src 'none'"), "{path}: {csp}");
        assert!(csp.contains("script-src 'self'"), "{path}: {csp}");
        assert!(csp.contains("style-src 'self'"), "{path}: {csp}");
        assert!(csp.contains("frame-ancestors 'none'"), "{path}: {csp}");
        assert!(!csp.contains("unsafe-inline"), "{path}: {csp}");
        assert_eq!(h("x-frame-options"), "DENY", "{path}");
        assert_eq!(h("x-content-type-options"), "nosniff", "{path}");
    }
}

/// Issue 12 item 15: every error is the documented JSON, and what does not exist is 404.
#[tokio::test]
async fn every_error_is_json_and_what_does_not_exist_is_404() {
    let s = fresh(&[]);
    let a = register(&s, "a1").await;
    let id = enqueue(&s.data, &[]);
    a.claim_job(5).await;
    let get = |path: String| {
        let url = format!("{}{path}", s.base);
        async move { client().get(url).send().await.expect("get") }
    };
    let cases = vec![
        (get("/jobs/99999/stream".into()).await, 404),
        (get("/jobs/abc/stream".into()).await, 404),
        (get("/jobs/99999/log".into()).await, 404),
        (get("/jobs/abc/log".into()).await, 404),
        (get(format!("/jobs/{id}/log?offset=x")).await, 400),
        (get("/no/such/page".into()).await, 404),
        (get("/api/v1/nothing".into()).await, 404),
        (get("/api/v1/jobs/claim".into()).await, 405),
        // A log append without its offset.
        (
            a.http
                .post(a.url(&format!("/jobs/{id}/log")))
                .bearer_auth(&a.token)
                .body("x")
                .send()
                .await
                .expect("post"),
            400,
        ),
        // Over the body limit.
        (
            a.http
                .post(a.url(&format!("/jobs/{id}/log?offset=0")))
                .bearer_auth(&a.token)
                .body(vec![b'x'; 9 << 20])
                .send()
                .await
                .expect("post"),
            413,
        ),
    ];
    for (r, want) in cases {
        let url = r.url().path().to_owned();
        assert_eq!(r.status().as_u16(), want, "{url}");
        let ct = r
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        assert!(ct.starts_with("application/json"), "{url}: {ct}");
        let v: serde_json::Value = r.json().await.expect("JSON");
        assert!(
            v["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{url}: {v}"
        );
    }
}

/// Operators: `/healthz`, `/readyz` and `/metrics` (queue depth, claims, log bytes, agents
/// online) in the Prometheus/OpenMetrics text format; `/metrics` with an operator token,
/// or to anyone with `--metrics-public`.
#[tokio::test]
async fn health_readiness_and_metrics_for_operators() {
    let s = fresh(&[]);
    for path in ["/healthz", "/readyz"] {
        let r = client()
            .get(format!("{}{path}", s.base))
            .send()
            .await
            .expect("get");
        assert_eq!(r.status(), 200, "{path}");
    }
    // Metrics need an operator token (or an admin's session) unless --metrics-public.
    for token in [None, Some("bosun-op-not-a-token")] {
        let mut req = client().get(format!("{}/metrics", s.base));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let r = req.send().await.expect("metrics");
        assert_eq!(r.status(), 401, "{token:?}");
        assert!(!r.text().await.expect("text").contains("bosun_coordinator_"));
    }
    let open = fresh(&["--metrics-public"]);
    let r = client()
        .get(format!("{}/metrics", open.base))
        .send()
        .await
        .expect("metrics");
    assert_eq!(r.status(), 200, "--metrics-public");
    drop(open);
    let operator = cli(&s.data, &["operator", "new", "prometheus"]);
    let operator = operator.trim();
    let metrics = || async {
        let r = client()
            .get(format!("{}/metrics", s.base))
            .bearer_auth(operator)
            .send()
            .await
            .expect("metrics");
        assert_eq!(r.status(), 200);
        let ct = r
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        assert!(ct.starts_with("application/openmetrics-text"), "{ct}");
        r.text().await.expect("text")
    };
    let has_line = |text: &str, line: &str| text.lines().any(|l| l == line);
    enqueue(&s.data, &[]);
    enqueue(&s.data, &[]);
    let m = metrics().await;
    assert!(has_line(&m, "bosun_coordinator_queue_depth 2"), "{m}");
    assert!(has_line(&m, "bosun_coordinator_agents_online 0"), "{m}");
    assert!(has_line(&m, "bosun_coordinator_claims_total 0"), "{m}");
    let a = register(&s, "a1").await;
    let id = a.claim_job(5).await.job.id;
    a.heartbeat(&[&id]).await;
    a.log(&id, 0, b"0123456789").await;
    // A resend of bytes already held adds nothing.
    a.log(&id, 5, b"56789abc").await;
    let m = metrics().await;
    for line in [
        "bosun_coordinator_queue_depth 1",
        "bosun_coordinator_jobs_running 1",
        "bosun_coordinator_claims_total 1",
        "bosun_coordinator_log_bytes_total 13",
        "bosun_coordinator_agents_online 1",
        "# EOF",
    ] {
        assert!(has_line(&m, line), "{line} missing:\n{m}");
    }
}

// ---- the pages in a real Chromium, driven over the DevTools protocol ----

//! API tokens and the audit log (docs/people.md, docs/api-v2.md): a person makes a personal
//! token on their page in a real browser (Chromium) after logging in with the Bitbucket
//! stand-in of `tests/it/people.rs`, and `pycircleci` (PyPI) uses it with exactly that
//! person's permissions; project tokens are read-only or trigger-only, each refused the
//! other's routes; the audit page is for coordinator admins, its JSON lines parse, and no
//! token value reaches the coordinator's log or an audit row.

use crate::api_v2::python_with;
use crate::coordinator_rig::*;
use crate::harness::{chromium, with_browser, Browser};
use crate::people::{csrf_of, http, login, setup_with};
use serde_json::{json, Value};
use std::time::Duration;

/// What a script does with `pycircleci` and two personal tokens.
const SCRIPT: &str = r#"
import json, os, requests
from pycircleci.api import Api

url = os.environ["BOSUN_API"]
BB = dict(vcs_type="bitbucket")

def attempt(f):
    try:
        return ["ok", f()]
    except requests.HTTPError as e:
        return [e.response.status_code, e.response.json()]

r = Api(token=os.environ["READER"], url=url)
w = Api(token=os.environ["WRITER"], url=url)
out = {}
out["reader_me"] = r.get_user_info(api_version="v2")
out["reader_list"] = attempt(lambda: [p["number"] for p in r.get_project_pipelines("acme", "widget", paginate=True, **BB)])
out["reader_trigger"] = attempt(lambda: r.trigger_pipeline("acme", "widget", branch="main", **BB))
out["writer_trigger"] = attempt(lambda: w.trigger_pipeline("acme", "widget", branch="main", **BB))
out["writer_list"] = attempt(lambda: [p["number"] for p in w.get_project_pipelines("acme", "widget", paginate=True, **BB)])
print(json.dumps(out))
"#;

/// Make a token named `name` on the logged-in person's page, as a person does: type the
/// name, press the button, read the value the answer shows once.
fn make_token(b: &mut Browser, base: &str, name: &str) -> String {
    b.open(&format!("{base}/me"));
    b.wait_for("document.readyState === 'complete' && document.getElementById('token-name')");
    b.click("#token-name");
    b.type_text(name);
    b.click("#new-token-form button");
    b.wait_for("document.getElementById('new-token')");
    let token = b.eval("document.getElementById('new-token').textContent");
    let token = token.as_str().expect("the token's text").to_owned();
    // Listed by name on the same answer; the value appears only in its one place.
    assert_eq!(
        b.eval("document.querySelector('#token-list .name').textContent"),
        json!(name)
    );
    assert_eq!(
        b.eval(&format!(
            "document.body.innerHTML.split({}).length",
            json!(token)
        )),
        json!(2)
    );
    token
}

async fn api(base: &str, method: &str, path: &str, token: &str) -> (u16, Value) {
    let r = http()
        .request(
            method.parse().expect("method"),
            format!("{base}/api/v2{path}"),
        )
        .header("Circle-Token", token)
        .header("content-type", "application/json")
        .body(if method == "POST" { "{}" } else { "" })
        .send()
        .await
        .expect("request");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn page(base: &str, path: &str, cookie: Option<&str>) -> (u16, String) {
    let mut req = http().get(format!("{base}{path}"));
    if let Some(c) = cookie {
        req = req.header("cookie", format!("bosun_session={c}"));
    }
    let r = req.send().await.expect("page");
    let status = r.status().as_u16();
    (status, r.text().await.expect("text"))
}

#[tokio::test]
async fn personal_tokens_act_as_their_person_and_every_act_is_audited() {
    if chromium().is_none() {
        eprintln!("skipped: no chromium installed (scripts/test.sh installs it on Debian)");
        return;
    }
    let Some(py) = python_with("pycircleci") else {
        eprintln!("skipped: no python3 with pycircleci (scripts/test.sh --setup installs it)");
        return;
    };
    let mut t = setup_with(&["--permissions-refresh", "2s"]);
    let base = t.s.base.clone();
    let data = t.s.data.clone();
    let first = cli(
        &data,
        &["trigger", "--project", "acme/widget", "--ref", "main"],
    );
    assert!(first.starts_with("pipeline "), "{first}");

    let (b2, api2) = (base.clone(), t.api.clone());
    let (reader_token, writer_token, reader_cookie, writer_cookie) = with_browser(180, move |b| {
        let reader_cookie = login(b, &b2, &api2, "reader");
        let reader_token = make_token(b, &b2, "ci script");
        b.call("Network.clearBrowserCookies", json!({}), true);
        let writer_cookie = login(b, &b2, &api2, "writer");
        let writer_token = make_token(b, &b2, "deploy");
        (reader_token, writer_token, reader_cookie, writer_cookie)
    })
    .await
    .expect("chromium is installed");
    assert!(reader_token.starts_with("bosun-pat-"), "{reader_token}");
    assert_ne!(reader_token, writer_token);

    // The page lists a token by name and times, never its value.
    let (st, me) = page(&base, "/me", Some(&reader_cookie)).await;
    assert_eq!(st, 200);
    assert!(
        me.contains("ci script") && !me.contains(&reader_token),
        "{me}"
    );

    // pycircleci with each person's token: the reader lists and may not trigger; the
    // writer triggers.
    let script = t.s.data.parent().expect("dir").join("tokens.py");
    std::fs::write(&script, SCRIPT).expect("script");
    let out = std::process::Command::new(&py)
        .arg(&script)
        .env("BOSUN_API", format!("{base}/api"))
        .env("READER", &reader_token)
        .env("WRITER", &writer_token)
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "the client failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["reader_me"]["login"], "reader", "{v:#}");
    assert_eq!(v["reader_list"][0], "ok", "{v:#}");
    assert!(
        v["reader_list"][1]
            .as_array()
            .is_some_and(|l| !l.is_empty()),
        "{v:#}"
    );
    assert_eq!(v["reader_trigger"][0], 403, "{v:#}");
    assert!(
        v["reader_trigger"][1]["message"]
            .as_str()
            .is_some_and(|m| m.contains("needs write permission")),
        "{v:#}"
    );
    assert_eq!(v["writer_trigger"][0], "ok", "{v:#}");
    assert_eq!(v["writer_trigger"][1]["state"], "pending", "{v:#}");
    let listed = v["writer_list"][1].as_array().expect("list").len();
    assert_eq!(
        listed,
        v["reader_list"][1].as_array().expect("list").len() + 1
    );

    // Revoked on the page (a form with the CSRF token): 401 at once.
    let re = regex::Regex::new(r#"data-token="(\d+)""#).expect("regex");
    let id = re.captures(&me).expect("a listed token")[1].to_owned();
    let csrf = csrf_of(&base, &reader_cookie).await;
    let revoke = |c: Option<String>| {
        let url = format!("{base}/me/tokens/{id}/revoke");
        let cookie = format!("bosun_session={reader_cookie}");
        async move {
            http()
                .post(url)
                .header("cookie", cookie)
                .form(&[("csrf", c.unwrap_or_default())])
                .send()
                .await
                .expect("revoke")
                .status()
                .as_u16()
        }
    };
    assert_eq!(revoke(None).await, 403, "no CSRF token, no revoke");
    assert_eq!(api(&base, "GET", "/me", &reader_token).await.0, 200);
    // Another person cannot revoke it (their own session and CSRF token).
    let writer_csrf = csrf_of(&base, &writer_cookie).await;
    let r = http()
        .post(format!("{base}/me/tokens/{id}/revoke"))
        .header("cookie", format!("bosun_session={writer_cookie}"))
        .form(&[("csrf", writer_csrf.as_str())])
        .send()
        .await
        .expect("revoke");
    assert_eq!(r.status().as_u16(), 404);
    assert_eq!(api(&base, "GET", "/me", &reader_token).await.0, 200);
    assert_eq!(revoke(Some(csrf)).await, 303);
    let (st, body) = api(
        &base,
        "GET",
        "/project/bb/acme/widget/pipeline",
        &reader_token,
    )
    .await;
    assert_eq!(st, 401, "a revoked token: {body}");
    assert_eq!(body["message"], "You must log in first.");
    let (_, me) = page(&base, "/me", Some(&reader_cookie)).await;
    assert!(me.contains("no-tokens"), "{me}");

    // Write taken away upstream: the token's next action is refused at once; read taken
    // away: its reads stop within --permissions-refresh (2 s).
    t.api.set_permission("writer", "acme/widget", Some("read"));
    let (st, body) = api(
        &base,
        "POST",
        "/project/bb/acme/widget/pipeline",
        &writer_token,
    )
    .await;
    assert_eq!(st, 403, "{body}");
    t.api.set_permission("writer", "acme/widget", None);
    let taken = std::time::Instant::now();
    loop {
        let (st, _) = api(
            &base,
            "GET",
            "/project/bb/acme/widget/pipeline",
            &writer_token,
        )
        .await;
        if st == 404 {
            break;
        }
        assert_eq!(st, 200);
        assert!(
            taken.elapsed() < Duration::from_secs(6),
            "still readable {:?} after read was taken away",
            taken.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // The audit page: nobody is sent to log in, a person who is not an admin is told there
    // is nothing; an admin (granted on the host) and an operator read it.
    let (st, _) = page(&base, "/admin/audit", None).await;
    assert_eq!(st, 303);
    let (st, body) = page(&base, "/admin/audit", Some(&reader_cookie)).await;
    assert_eq!(st, 404, "{body}");
    assert!(!body.contains("token-made"));
    cli(&data, &["person", "grant", "writer", "admin"]);
    let (st, html) = page(&base, "/admin/audit", Some(&writer_cookie)).await;
    assert_eq!(st, 200, "{html}");
    for seen in [
        "person:reader",
        "token-made",
        "token-revoked",
        "grant-admin",
    ] {
        assert!(html.contains(seen), "{seen} not on the audit page: {html}");
    }
    let operator = cli(&data, &["operator", "new", "ops"]);
    let r = http()
        .get(format!("{base}/admin/audit?format=jsonl"))
        .bearer_auth(operator.trim())
        .send()
        .await
        .expect("export");
    assert_eq!(r.status().as_u16(), 200);
    assert!(r.headers()["content-type"]
        .to_str()
        .is_ok_and(|c| c.starts_with("application/jsonl")));
    let jsonl = r.text().await.expect("text");
    let rows: Vec<Value> = jsonl
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let has = |actor: &str, action: &str| {
        rows.iter()
            .any(|r| r["actor"] == actor && r["action"] == action)
    };
    for (actor, action) in [
        ("person:reader", "login"),
        ("person:reader", "token-made"),
        ("person:reader", "token-revoked"),
        ("person:writer", "login"),
        ("person:writer", "token-made"),
        ("person:writer", "trigger"),
    ] {
        assert!(has(actor, action), "no {actor} {action} in {jsonl}");
    }
    assert!(
        rows.iter().any(|r| r["action"] == "grant-admin"
            && r["target"] == "writer"
            && r["actor"].as_str().is_some_and(|a| a.starts_with("host:"))),
        "{jsonl}"
    );
    assert!(rows
        .windows(2)
        .all(|w| w[0]["id"].as_i64() > w[1]["id"].as_i64()));
    let on_host = cli(&data, &["audit", "--json"]);
    let host_rows: Vec<Value> = on_host
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    // The host's export holds the same rows as the page's.
    assert_eq!(host_rows, rows, "{on_host}");

    // No token value in the coordinator's log, the audit rows or the host's export.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let log: Vec<String> = t.s.log.take().expect("log").try_iter().collect();
    let log = log.join("\n");
    assert!(log.contains("personal API token made"), "{log}");
    for secret in [
        reader_token.as_str(),
        writer_token.as_str(),
        operator.trim(),
    ] {
        for (what, text) in [
            ("log", &log),
            ("audit", &jsonl),
            ("host audit", &on_host),
            ("page", &html),
        ] {
            assert!(!text.contains(secret), "a token in the {what}:\n{text}");
        }
    }
}

/// A bare coordinator with a pipeline of acme/widget, made private.
async fn private_with_pipeline() -> (Server, String) {
    let s = fresh(&[]);
    cli(
        &s.data,
        &[
            "project",
            "set",
            "--slug",
            "acme/widget",
            "--public",
            "false",
        ],
    );
    let out = cli(
        &s.data,
        &["trigger", "--project", "acme/widget", "--ref", "main"],
    );
    let pipeline = out.split_whitespace().nth(1).expect("id").to_owned();
    (s, pipeline)
}

#[tokio::test]
async fn project_tokens_are_read_only_or_trigger_only_on_every_route() {
    let (s, pipeline) = private_with_pipeline().await;
    let base = s.base.clone();
    let read = cli(
        &s.data,
        &["api-token", "new", "--project", "acme/widget", "dash"],
    )
    .trim()
    .to_owned();
    let trigger = cli(
        &s.data,
        &[
            "api-token",
            "new",
            "--project",
            "acme/widget",
            "--scope",
            "trigger",
            "nightly",
        ],
    )
    .trim()
    .to_owned();
    let job = enqueue(&s.data, &[]);
    let a = register(&s, "a1").await;
    a.claim_job(5).await;
    a.log(&job, 0, b"PRIVATE-LOG-LINE\n").await;

    // The pipeline's UUID, as a read shows it.
    let (st, one) = api(&base, "GET", "/project/bb/acme/widget/pipeline/1", &read).await;
    assert_eq!(st, 200, "{one}");
    let uuid = one["id"].as_str().expect("uuid").to_owned();
    assert!(!pipeline.is_empty());

    let reads = [
        "/project/bb/acme/widget/pipeline".to_owned(),
        "/project/bb/acme/widget/pipeline/1".to_owned(),
        format!("/pipeline/{uuid}"),
        format!("/pipeline/{uuid}/workflow"),
        format!("/project/bb/acme/widget/job/{job}"),
        format!("/project/bb/acme/widget/{job}/artifacts"),
        format!("/project/bb/acme/widget/{job}/tests"),
    ];
    for path in &reads {
        let (st, body) = api(&base, "GET", path, &read).await;
        assert!(
            st == 200 || st == 404 && path.ends_with("/workflow"),
            "read token, {path}: {st} {body}"
        );
        let (st, body) = api(&base, "GET", path, &trigger).await;
        assert_eq!(st, 403, "trigger token, {path}: {body}");
        assert!(
            body["message"]
                .as_str()
                .is_some_and(|m| m.contains("trigger-only")),
            "{path}: {body}"
        );
    }
    // Nor do the pages take a project token: the log stays unread.
    for token in [&read, &trigger] {
        let r = http()
            .get(format!("{base}/jobs/{job}/log.txt"))
            .bearer_auth(token)
            .send()
            .await
            .expect("log");
        assert_eq!(r.status().as_u16(), 401);
        assert!(!r.text().await.expect("text").contains("PRIVATE-LOG-LINE"));
    }

    let (st, body) = api(&base, "POST", "/project/bb/acme/widget/pipeline", &read).await;
    assert_eq!(st, 403, "{body}");
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("read-only")),
        "{body}"
    );
    let (st, body) = api(&base, "POST", "/project/bb/acme/widget/pipeline", &trigger).await;
    assert_eq!(st, 201, "{body}");
    assert_eq!(body["state"], "pending", "{body}");
    assert!(body["number"].as_i64().is_some_and(|n| n > 1), "{body}");
    // Neither reruns, cancels or approves.
    for token in [&read, &trigger] {
        for path in [
            format!("/workflow/{uuid}/cancel"),
            format!("/workflow/{uuid}/rerun"),
            format!("/project/bb/acme/widget/job/{job}/cancel"),
        ] {
            let (st, body) = api(&base, "POST", &path, token).await;
            assert!(st == 403 || st == 404, "{path}: {st} {body}");
            assert_ne!(st, 202);
        }
    }
    // Another project is not found, whatever the scope.
    cli(
        &s.data,
        &[
            "project",
            "add",
            "--slug",
            "acme/other",
            "--clone-url",
            "git@bitbucket.org:acme/other.git",
        ],
    );
    for token in [&read, &trigger] {
        let (st, _) = api(&base, "POST", "/project/bb/acme/other/pipeline", token).await;
        assert_eq!(st, 404);
    }

    // A scope that does not exist is refused by the CLI, naming the choices.
    let out = std::process::Command::new(BIN)
        .args([
            "coordinator",
            "api-token",
            "new",
            "--project",
            "acme/widget",
            "--scope",
            "write",
            "x",
            "--data",
        ])
        .arg(&s.data)
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("read") && err.contains("trigger"), "{err}");

    // The host's audit log: the tokens made (with their scope), the trigger by the
    // trigger-only token, and never a token's value.
    let audit = cli(&s.data, &["audit"]);
    assert!(
        audit.contains("project token nightly") && audit.contains("(trigger, on the host)"),
        "{audit}"
    );
    assert!(
        audit.contains("project-token:nightly") && audit.contains("trigger"),
        "{audit}"
    );
    for token in [&read, &trigger] {
        assert!(!audit.contains(token.as_str()), "{audit}");
    }
}

/// The audit log pruned: on the host at once (`audit prune`, itself recorded with how many
/// rows went), and by the server by `--audit-retention` (at its start, then hourly);
/// `forever` keeps every row.
#[test]
fn the_audit_log_is_pruned_on_the_host_and_by_the_server() {
    let audit = |data: &std::path::Path| -> Vec<Value> {
        cli(data, &["audit", "--json"])
            .lines()
            .map(|l| serde_json::from_str(l).expect("a JSON line"))
            .collect()
    };
    let mut s = fresh(&["--audit-retention", "forever"]);
    let dir = s._dir.take();
    let data = s.data.clone();
    cli(&data, &["operator", "new", "ops"]);
    // Kept for ever: the project's addition and the token, whatever their age.
    std::thread::sleep(Duration::from_millis(300));
    let rows = audit(&data);
    let n = rows.len();
    assert!(n >= 2 && rows[0]["action"] == "token-made", "{rows:?}");
    drop(s);

    // On the host: everything older than 100ms goes, and the prune says so.
    let out = cli(&data, &["audit", "prune", "--older-than", "100ms"]);
    assert!(
        out.contains(&format!("removed {n} audit log rows written before")),
        "{out}"
    );
    let rows = audit(&data);
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["action"], "audit-pruned");
    assert!(
        rows[0]["actor"]
            .as_str()
            .is_some_and(|a| a.starts_with("host:")),
        "{rows:?}"
    );
    assert_eq!(rows[0]["detail"], format!("{n} removed, on the host"));
    // `forever` removes nothing, so prune refuses it, naming the flag.
    let out = std::process::Command::new(BIN)
        .args([
            "coordinator",
            "audit",
            "prune",
            "--older-than",
            "forever",
            "--data",
        ])
        .arg(&data)
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--older-than"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The server with a retention prunes at its start.
    cli(&data, &["operator", "new", "ops2"]);
    std::thread::sleep(Duration::from_millis(300));
    let server = start(&data, &["--audit-retention", "200ms"]);
    let started = std::time::Instant::now();
    while !audit(&data).is_empty() {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "rows past the retention still there: {:?}",
            audit(&data)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    drop(server);
    drop(dir);
}

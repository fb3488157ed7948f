//! A project's settings page (docs/people.md, "Project settings"): a person with admin
//! permission on the repository logs in with the Bitbucket stand-in of `tests/it/people.rs`
//! in a real browser (Chromium), follows the pipeline page's link, adds a variable there,
//! and the next job's claim (what an agent is handed) carries it, secret, to the same
//! bytes; a writer and a reader are refused and change nothing; a missing, wrong or
//! another person's CSRF token is refused; admin taken away upstream stops the next change
//! at once; and the value is never in a page, the audit log or the coordinator's log. And
//! end to end: a variable set on the page reaches a job a real `bosun agent` runs in Docker.

use crate::coordinator_rig::*;
use crate::harness::{chromium, with_browser};
use crate::people::{csrf_of, http, login, login_http, setup_with};
use bosun::coordinator::store::ProjectSettingsStore;
use serde_json::{json, Value};
use std::time::Duration;

/// A value a form must carry exactly: spaces, quotes, `&`, `=`, `%`, markup, non-ASCII.
const VALUE: &str = "s3cr3t &=% \"quoted\" <b>wörd</b> 🔑 tail-9f2a";

async fn get(base: &str, path: &str, cookie: Option<&str>) -> (u16, String) {
    let mut req = http().get(format!("{base}{path}"));
    if let Some(c) = cookie {
        req = req.header("cookie", format!("bosun_session={c}"));
    }
    let r = req.send().await.expect("get");
    let status = r.status().as_u16();
    (status, r.text().await.expect("text"))
}

async fn post(base: &str, path: &str, cookie: &str, form: &[(&str, &str)]) -> (u16, String) {
    let r = http()
        .post(format!("{base}{path}"))
        .header("cookie", format!("bosun_session={cookie}"))
        .form(form)
        .send()
        .await
        .expect("post");
    let status = r.status().as_u16();
    (status, r.text().await.expect("text"))
}

/// The project's variables as the store keeps them: (name, opened value, secret).
fn vars(data: &std::path::Path) -> Vec<(String, String, bool)> {
    crate::harness::bitbucket::store(data)
        .project_vars("acme/widget")
        .expect("vars")
        .into_iter()
        .map(|v| (v.name, v.value.as_str().to_owned(), v.secret))
        .collect()
}

#[tokio::test]
async fn an_admin_sets_variables_and_switches_on_the_page_and_nobody_else_can() {
    if chromium().is_none() {
        eprintln!("skipped: no chromium installed (scripts/test.sh installs it on Debian)");
        return;
    }
    // Permissions older than a second are read again at the next request.
    let mut t = setup_with(&["--permissions-refresh", "1s"]);
    let base = t.s.base.clone();
    let data = t.s.data.clone();
    // `stranger` administers the repository here (admin on Bitbucket).
    t.api
        .set_permission("stranger", "acme/widget", Some("admin"));
    let out = cli(
        &data,
        &["trigger", "--project", "acme/widget", "--ref", "main"],
    );
    let pipeline = out
        .split_whitespace()
        .nth(1)
        .expect("pipeline id")
        .to_owned();
    let settings = "/projects/acme/widget/settings";
    let before = vars(&data);

    let (b2, api2, p2) = (base.clone(), t.api.clone(), pipeline.clone());
    let (admin, page_html) = with_browser(180, move |b| {
        let admin = login(b, &b2, &api2, "stranger");
        // From the pipeline's page to its project's settings, as a person goes.
        b.open(&format!("{b2}/pipelines/{p2}"));
        b.wait_for(
            "document.readyState === 'complete' && document.getElementById('settings-link')",
        );
        b.click("#settings-link");
        b.wait_for(&format!(
            "location.href === {} && document.getElementById('add-var')",
            json!(format!("{b2}/projects/acme/widget/settings"))
        ));
        b.wait_for("document.readyState === 'complete'");
        b.click("#var-name");
        b.type_text("DEPLOY_TOKEN");
        b.click("#var-value");
        b.type_text(VALUE);
        b.click("#add-var button");
        b.wait_for("document.querySelector('tr[data-var=\"DEPLOY_TOKEN\"]')");
        assert_eq!(
            b.eval("document.querySelector('tr[data-var=\"DEPLOY_TOKEN\"] .value').textContent"),
            json!("xxxx9f2a")
        );
        // The switches: private stays, badges public, SSH reruns by others refused.
        b.click("#public-badges");
        b.eval("document.getElementById('ssh-policy').value = 'refuse'");
        // A mark on this document: gone once the answer's page is loaded.
        b.eval("window.beforeSave = true");
        b.click("#switches-form button");
        b.wait_for(
            "!window.beforeSave && document.readyState === 'complete' && \
             document.getElementById('public-badges').checked",
        );
        assert_eq!(
            b.eval("document.getElementById('ssh-policy').value"),
            json!("refuse")
        );
        let html = b.eval("document.documentElement.outerHTML");
        (admin, html.as_str().expect("html").to_owned())
    })
    .await
    .expect("chromium is installed");
    assert!(page_html.contains("xxxx9f2a"), "{page_html}");
    assert!(!page_html.contains("s3cr3t"), "{page_html}");

    // Stored sealed, opening to the bytes typed; the job's claim carries it as a secret.
    let now = vars(&data);
    assert!(
        now.contains(&("DEPLOY_TOKEN".to_owned(), VALUE.to_owned(), true)),
        "{:?}",
        now.iter().map(|v| &v.0).collect::<Vec<_>>()
    );
    let db = std::fs::read(data.join("coordinator.db")).expect("db");
    assert!(
        !db.windows(6).any(|w| w == b"s3cr3t"),
        "the value is in the database in the clear"
    );
    let a = register(&t.s, "a1").await;
    enqueue(&data, &[]);
    let job = a.claim_job(5).await.job;
    let given = job
        .env
        .iter()
        .find(|e| e.name == "DEPLOY_TOKEN")
        .expect("the job gets the variable");
    assert_eq!(given.value.as_bytes(), VALUE.as_bytes());
    assert!(given.secret, "masked in the job's log");
    let sw = crate::harness::bitbucket::store(&data)
        .project_switches("acme/widget")
        .expect("read")
        .expect("project")
        .1;
    assert!(!sw.public && sw.public_badges, "{sw:?}");
    assert_eq!(sw.ssh_policy.as_str(), "refuse");

    // The page as served: names and masks, never a value (the rig's TOKEN=hunter22 too).
    let (st, html) = get(&base, settings, Some(&admin)).await;
    assert_eq!(st, 200, "{html}");
    assert!(
        html.contains("xxxx9f2a") && html.contains("TOKEN"),
        "{html}"
    );
    for v in [VALUE, "s3cr3t", "hunter22"] {
        assert!(!html.contains(v), "{v} on the page: {html}");
    }

    // CSRF: none, a wrong one, another person's: refused, nothing changed.
    let writer = login_http(&base, &t.api, "writer").await;
    let reader = login_http(&base, &t.api, "reader").await;
    let admin_csrf = csrf_of(&base, &admin).await;
    let writer_csrf = csrf_of(&base, &writer).await;
    let reader_csrf = csrf_of(&base, &reader).await;
    let forged = "0".repeat(64);
    let add = "/projects/acme/widget/settings/env";
    for csrf in [None, Some(forged.as_str()), Some(writer_csrf.as_str())] {
        let mut form = vec![("name", "FORGED"), ("value", "forged-value")];
        if let Some(c) = csrf {
            form.push(("csrf", c));
        }
        let (st, body) = post(&base, add, &admin, &form).await;
        assert_eq!(st, 403, "{csrf:?}: {body}");
        assert!(body.contains("CSRF"), "{body}");
        let (st, _) = post(
            &base,
            "/projects/acme/widget/settings/env/DEPLOY_TOKEN/delete",
            &admin,
            &csrf.map(|c| vec![("csrf", c)]).unwrap_or_default(),
        )
        .await;
        assert_eq!(st, 403);
    }
    // A writer and a reader: refused, with their own valid tokens.
    for (who, cookie, csrf) in [
        ("writer", &writer, &writer_csrf),
        ("reader", &reader, &reader_csrf),
    ] {
        let (st, body) = get(&base, settings, Some(cookie)).await;
        assert_eq!(st, 403, "{who}: {body}");
        assert!(body.contains("needs admin permission"), "{body}");
        assert!(!body.contains("xxxx9f2a"), "{body}");
        let (st, body) = post(
            &base,
            add,
            cookie,
            &[
                ("csrf", csrf),
                ("name", "FORGED"),
                ("value", "forged-value"),
            ],
        )
        .await;
        assert_eq!(st, 403, "{who}: {body}");
        let (st, _) = post(
            &base,
            "/projects/acme/widget/settings/env/DEPLOY_TOKEN/delete",
            cookie,
            &[("csrf", csrf)],
        )
        .await;
        assert_eq!(st, 403, "{who}");
        let (st, _) = post(
            &base,
            settings,
            cookie,
            &[
                ("csrf", csrf),
                ("public", "true"),
                ("ssh_policy", "without-user-key"),
            ],
        )
        .await;
        assert_eq!(st, 403, "{who}");
        // And no link to the page for them.
        let (_, p) = get(&base, &format!("/pipelines/{pipeline}"), Some(cookie)).await;
        assert!(!p.contains("settings-link"), "{who}: {p}");
    }
    // Nobody logged in is sent to log in, even to a public project's settings.
    let r = http()
        .get(format!("{base}{settings}"))
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 303);
    assert_eq!(
        r.headers()["location"],
        "/login?return_to=/projects/acme/widget/settings"
    );
    let after = vars(&data);
    assert_eq!(after, now, "nothing changed");
    assert!(!after.iter().any(|v| v.0 == "FORGED"));
    assert!(before.iter().all(|v| after.contains(v)));

    // A name the CLI would refuse is refused here, naming it and not the value.
    let (st, body) = post(
        &base,
        add,
        &admin,
        &[
            ("csrf", &admin_csrf),
            ("name", "9-LIVES"),
            ("value", "never-shown-77"),
        ],
    )
    .await;
    assert_eq!(st, 400, "{body}");
    assert!(
        body.contains("9-LIVES") && !body.contains("never-shown-77"),
        "{body}"
    );

    // Admin taken away on Bitbucket: the very next change is refused (read again first).
    t.api
        .set_permission("stranger", "acme/widget", Some("write"));
    let (st, body) = post(
        &base,
        add,
        &admin,
        &[
            ("csrf", &admin_csrf),
            ("name", "LATE"),
            ("value", "late-value"),
        ],
    )
    .await;
    assert_eq!(st, 403, "{body}");
    t.api
        .set_permission("stranger", "acme/widget", Some("admin"));
    tokio::time::sleep(Duration::from_millis(1200)).await;
    // Given back: deleting works, and the next job no longer gets it.
    let (st, body) = post(
        &base,
        "/projects/acme/widget/settings/env/DEPLOY_TOKEN/delete",
        &admin,
        &[("csrf", &admin_csrf)],
    )
    .await;
    assert_eq!(st, 303, "{body}");
    assert!(!vars(&data).iter().any(|v| v.0 == "DEPLOY_TOKEN"));
    enqueue(&data, &[]);
    let job = a.claim_job(5).await.job;
    assert!(!job.env.iter().any(|e| e.name == "DEPLOY_TOKEN"));

    // Every change is audited: by whom, what (names only), from the page.
    let audit = cli(&data, &["audit", "--json"]);
    let rows: Vec<Value> = audit
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        // The page's rows (the setup's `project set` is the host's).
        .filter(|v: &Value| {
            v["action"] == "settings"
                && !v["detail"]
                    .as_str()
                    .is_some_and(|d| d.ends_with("on the host"))
        })
        .collect();
    let targets: Vec<&str> = rows
        .iter()
        .map(|v| {
            assert_eq!(v["actor"], "person:stranger", "{v}");
            assert_eq!(v["project"], "acme/widget", "{v}");
            assert_eq!(v["detail"], "from the settings page", "{v}");
            v["target"].as_str().expect("target")
        })
        .collect();
    assert_eq!(
        targets.iter().rev().copied().collect::<Vec<_>>(),
        [
            "variable DEPLOY_TOKEN set",
            "public-badges true",
            "ssh-policy refuse",
            "variable DEPLOY_TOKEN deleted"
        ],
        "{audit}"
    );
    // The value is nowhere in the audit log nor the coordinator's log.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let log: Vec<String> = t.s.log.take().expect("log").try_iter().collect();
    let log = log.join("\n");
    assert!(log.contains("variable DEPLOY_TOKEN set"), "{log}");
    for v in [
        "s3cr3t",
        "9f2a",
        "never-shown-77",
        "forged-value",
        "late-value",
    ] {
        assert!(!audit.contains(v), "{v} in the audit log: {audit}");
        assert!(!log.contains(v), "{v} in the coordinator's log:\n{log}");
    }
}

/// End to end with real parts: the variable an admin sets on the page reaches a job a real
/// `bosun agent` runs in Docker (the Bitbucket stand-in serving git and the webhook), as a
/// secret: masked where the job prints it, the same bytes where it transforms them.
#[tokio::test(flavor = "multi_thread")]
async fn a_variable_set_on_the_page_reaches_a_job_a_real_agent_runs() {
    use crate::harness::bitbucket::*;
    use crate::harness::bitbucket_api::{Account, BitbucketApi};
    use std::os::unix::fs::PermissionsExt;
    // Printed backwards by the job: not the secret itself, so not masked, yet it shows the
    // job got exactly these bytes.
    const SECRET_VALUE: &str = "from-the-page \"q\" & 7e3d";
    let api = BitbucketApi::start("Bearer not-used-here", None);
    api.oauth(
        "consumer-key",
        "consumer-s3cret-9f",
        vec![Account {
            uuid: "{acct-ada}".into(),
            nickname: "ada".into(),
            token: "bb-access-ada-Zq9".into(),
            permissions: vec![(
                "acme/widget".into(),
                "{repo-acme/widget}".into(),
                "admin".into(),
            )],
        }],
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("oauth-consumer");
    std::fs::write(&file, "consumer-key:consumer-s3cret-9f\n").expect("write");
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let cloud = api.cloud_api();
    let img = crate::harness::image("base");
    let config = format!(
        r#"version: 2.1
jobs:
  build:
    docker: [{{image: {img}}}]
    steps:
      - run: |
          echo "raw=$WEB_VAR"
          echo "rev=$(printf %s "${{WEB_VAR:-none}}" | rev)"
workflows:
  main:
    jobs: [build]
"#
    );
    let s = setup_serving(
        &config,
        &["--uuid", UUID],
        &[
            "--bitbucket-oauth-file",
            file.to_str().expect("utf8"),
            "--bitbucket-oauth-url",
            &api.base,
            "--bitbucket-api",
            &cloud,
        ],
        &[],
        |c, rig| vec![c.agent(rig, "agent-a").labels(&["agent-a"]).start()],
    );
    let base = format!("http://{}", s.addr);
    let ada = login_http(&base, &api, "ada").await;
    let csrf = csrf_of(&base, &ada).await;
    let (st, body) = post(
        &base,
        "/projects/acme/widget/settings/env",
        &ada,
        &[
            ("csrf", &csrf),
            ("name", "WEB_VAR"),
            ("value", SECRET_VALUE),
        ],
    )
    .await;
    assert_eq!(st, 303, "{body}");

    let sha = s.repo.head();
    let body = push_payload("acme/widget", "branch", "main", &sha, "config");
    let (code, answer) = deliver(&s.addr, "repo:push", "{s-1}", &body, SECRET).await;
    assert_eq!(code, 202, "{answer}");
    let id = answer["pipelines"][0]["id"]
        .as_i64()
        .unwrap_or_else(|| panic!("no pipeline: {answer}"));
    let p = wait_pipeline(
        &s.data,
        id,
        &["success", "failed"],
        Duration::from_secs(240),
    );
    let log = String::from_utf8_lossy(
        &store(&s.data)
            .log_from(job_id(&p, "build"), 0)
            .expect("log"),
    )
    .into_owned();
    assert_eq!(p.status.as_str(), "success", "{p:#?}\n{log}");
    assert!(log.contains("raw=********"), "masked: {log}");
    let reversed: String = SECRET_VALUE.chars().rev().collect();
    assert!(log.contains(&format!("rev={reversed}")), "{log}");
    assert!(!log.contains(SECRET_VALUE), "{log}");
}

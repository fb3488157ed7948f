//! Security groups of people (docs/contexts.md, "Restrictions"), real parts only:
//! `bosun coordinator serve` logging people in against the Bitbucket stand-in
//! (`harness::bitbucket_api`), a `bosun agent`, Docker and the git stand-in. A context
//! restricted to group `release` is given to a job run for a member: the person whose push
//! the webhook reports (Cloud's `actor.uuid`), the person whose personal token triggered the
//! pipeline through API v2, or the person who approved the approval in front of the job (the
//! pipeline page's button, session and CSRF token). A person outside the group is refused
//! the approval (403, on the page and through API v2) and their push's job is unauthorized;
//! taking someone out of the group counts for the next job.

use crate::contexts::{log_of, pipeline_id, reason, rev, set_var};
use crate::harness::bitbucket::*;
use crate::harness::bitbucket_api::{Account, BitbucketApi};
use crate::harness::image;
use crate::ssh_policy::{Person, Web};
use bosun::coordinator::store::pipelines::PipelineRow;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const KEY: &str = "consumer-key";
const SECRET_OAUTH: &str = "consumer-s3cret-groups";
const PROD_KEY: &str = "prod-group-secret-7531";

fn account(nick: &str) -> Account {
    Account {
        uuid: format!("{{acct-{nick}}}"),
        nickname: nick.into(),
        token: format!("bb-access-{nick}-Gr8"),
        permissions: vec![(
            "acme/widget".to_owned(),
            "{repo-acme/widget}".to_owned(),
            "write".to_owned(),
        )],
    }
}

fn config() -> String {
    let img = image("base");
    // `rev` prints the value backwards: not the secret itself (so not masked), yet it shows
    // which value the job got.
    let job = |name: &str| {
        format!(
            "  {name}:\n    docker: [{{image: {img}}}]\n    steps:\n      - run: echo \"{name}=$(printf %s \"${{PROD_KEY:-none}}\" | rev)\"\n"
        )
    };
    format!(
        "version: 2.1\njobs:\n{}{}workflows:\n  main:\n    jobs:\n      - ship:\n          context: prod\n      - hold:\n          type: approval\n      - release:\n          context: prod\n          requires: [hold]\n",
        job("ship"),
        job("release")
    )
}

/// A push of `sha` to main by the Bitbucket account of `who`, as Cloud sends it.
fn push_by(sha: &str, who: &str) -> String {
    let mut v: Value = serde_json::from_str(&push_payload(
        "acme/widget",
        "branch",
        "main",
        sha,
        "config",
    ))
    .expect("payload");
    v["actor"] = json!({
        "type": "user", "display_name": who, "nickname": who,
        "uuid": format!("{{acct-{who}}}"), "account_id": format!("5f-{who}"),
    });
    v.to_string()
}

/// Pipeline `id` once `job` has settled (compiled, neither waiting, queued nor running), which must be
/// in status `want`: a job that ends otherwise fails the test at once, with its reason.
fn settled(data: &std::path::Path, id: i64, job: &str, want: &str) -> PipelineRow {
    let t0 = Instant::now();
    loop {
        let p = store(data).pipeline(id).expect("read").expect("pipeline");
        let st = job_status(&p, job);
        if !["<absent>", "waiting", "queued", "running"].contains(&st.as_str()) {
            assert_eq!(st, want, "{job}: {}\n{p:#?}", reason(&p, job));
            return p;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(240),
            "{job} still {st}: {p:#?}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// The pipeline page's approve button as a logged-in person presses it: session cookie and
/// the CSRF token in `X-Bosun-CSRF`.
fn approve_on_page(web: &Web, p: &Person, id: i64) -> (u16, Value) {
    let url = format!("{}/pipelines/{id}/approve", web.base());
    let (cookie, csrf) = (p.cookie.clone(), p.csrf.clone());
    web.rt.block_on(async move {
        let r = reqwest::Client::new()
            .post(url)
            .header("cookie", format!("bosun_session={cookie}"))
            .header("x-bosun-csrf", csrf)
            .json(&json!({"job": "hold"}))
            .send()
            .await
            .expect("approve");
        let st = r.status().as_u16();
        (st, r.json().await.unwrap_or(Value::Null))
    })
}

/// API v2's approve of `hold` in pipeline `id`'s workflow with `token`.
fn approve_by_api(web: &Web, data: &std::path::Path, id: i64, token: &str) -> (u16, Value) {
    let wf = store(data)
        .pipeline(id)
        .expect("read")
        .expect("pipeline")
        .workflows[0]
        .uuid
        .clone();
    let (st, jobs) = web.api("GET", &format!("/workflow/{wf}/job"), token, None);
    assert_eq!(st, 200, "{jobs}");
    let request = jobs["items"]
        .as_array()
        .and_then(|l| l.iter().find(|j| j["name"] == "hold"))
        .and_then(|j| j["approval_request_id"].as_str())
        .unwrap_or_else(|| panic!("no approval request: {jobs}"))
        .to_owned();
    web.api(
        "POST",
        &format!("/workflow/{wf}/approve/{request}"),
        token,
        None,
    )
}

#[test]
fn a_group_restricted_context_is_given_to_jobs_run_for_its_members_only() {
    use std::os::unix::fs::PermissionsExt;
    let api = BitbucketApi::start("Bearer not-used-here", None);
    api.oauth(KEY, SECRET_OAUTH, vec![account("owner"), account("other")]);
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("oauth-consumer");
    std::fs::write(&file, format!("{KEY}:{SECRET_OAUTH}\n")).expect("write");
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let cloud = api.cloud_api();
    let s = setup_serving(
        &config(),
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
        |c, rig| vec![c.agent(rig, "groups").start()],
    );
    let data = &s.data;
    let web = Web::new(&s.c, api);
    let owner = web.login("owner");
    let other = web.login("other");
    let owner_token = web.personal_token(&owner);
    let other_token = web.personal_token(&other);

    s.c.cli(&["context", "create", "prod"]);
    set_var(data, "prod", "PROD_KEY", PROD_KEY);
    s.c.cli(&["context", "restrict", "prod", "--group", "release"]);
    let out = s.c.cli(&["person", "groups", "owner", "--add", "release"]);
    assert_eq!(out, "owner ({acct-owner}): release");
    let ls = s.c.cli(&["person", "ls"]);
    assert!(
        ls.lines()
            .any(|l| l.starts_with("owner ") && l.ends_with("  release")),
        "{ls}"
    );
    assert!(
        ls.lines()
            .any(|l| l.starts_with("other ") && l.ends_with("  -")),
        "{ls}"
    );

    // A push by the member: `ship` gets the context without an approval; the pipeline
    // records whom it runs for.
    let sha = s.repo.head();
    let (code, answer) = web.rt.block_on(deliver(
        &s.addr,
        "repo:push",
        "{g-1}",
        &push_by(&sha, "owner"),
        SECRET,
    ));
    assert_eq!(code, 202, "{answer}");
    let id = pipeline_id(&answer);
    let p = settled(data, id, "ship", "success");
    assert_eq!(job_status(&p, "hold"), "on_hold");
    assert_eq!(p.triggered_by.as_deref(), Some("{acct-owner}"));
    let log = log_of(data, &p, "ship");
    assert!(log.contains(&format!("ship={}", rev(PROD_KEY))), "{log}");

    // Approving in front of `release`: refused to the person outside the group, on the page
    // and with their token; `release` does not run.
    let (st, body) = approve_on_page(&web, &other, id);
    assert_eq!(st, 403, "{body}");
    let msg = body["error"].as_str().unwrap_or_default();
    assert!(
        msg.contains("other may not approve hold") && msg.contains("group release"),
        "{body}"
    );
    let (st, body) = approve_by_api(&web, data, id, &other_token);
    assert_eq!(st, 403, "{body}");
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("other may not approve hold")),
        "{body}"
    );
    let p = store(data).pipeline(id).expect("read").expect("pipeline");
    assert_eq!(job_status(&p, "hold"), "on_hold");
    assert_eq!(job_status(&p, "release"), "waiting");
    // The member approves on the page: `release` runs with the context.
    let (st, body) = approve_on_page(&web, &owner, id);
    assert_eq!(st, 200, "{body}");
    let p = settled(data, id, "release", "success");
    let log = log_of(data, &p, "release");
    assert!(log.contains(&format!("release={}", rev(PROD_KEY))), "{log}");

    // A push by the person outside the group: `ship` is unauthorized, never queued.
    s.repo.write("README", "by other\n");
    let sha2 = s.repo.commit("by other");
    s.repo.push("HEAD:refs/heads/main");
    let (code, answer) = web.rt.block_on(deliver(
        &s.addr,
        "repo:push",
        "{g-2}",
        &push_by(&sha2, "other"),
        SECRET,
    ));
    assert_eq!(code, 202, "{answer}");
    let id2 = pipeline_id(&answer);
    let p = settled(data, id2, "ship", "unauthorized");
    let why = reason(&p, "ship");
    assert!(
        why.contains("context prod is restricted to group release")
            && why.contains("other, who triggered the pipeline, is not a member"),
        "{why}"
    );
    assert!(p.workflows[0]
        .jobs
        .iter()
        .all(|j| j.name != "ship" || j.job_id.is_none()));
    s.c.cli(&["cancel-pipeline", &id2.to_string()]);

    // A trigger with the member's personal token through API v2: given.
    let (st, body) = web.api(
        "POST",
        "/project/bb/acme/widget/pipeline",
        &owner_token,
        Some(json!({"branch": "main"})),
    );
    assert_eq!(st, 201, "{body}");
    let number = body["number"].as_i64().expect("number");
    let id3 = store(data)
        .list_pipelines(Some("acme/widget"), 10)
        .expect("list")
        .into_iter()
        .find(|p| p.number == number)
        .expect("the triggered pipeline")
        .id;
    let p = settled(data, id3, "ship", "success");
    assert_eq!(p.triggered_by.as_deref(), Some("{acct-owner}"));
    let log = log_of(data, &p, "ship");
    assert!(log.contains(&format!("ship={}", rev(PROD_KEY))), "{log}");

    // Taken out of the group: their approval of that pipeline is now refused, and their
    // next push's job is not given the context.
    s.c.cli(&["person", "groups", "{acct-owner}", "--remove", "release"]);
    let (st, body) = approve_by_api(&web, data, id3, &owner_token);
    assert_eq!(st, 403, "{body}");
    s.c.cli(&["cancel-pipeline", &id3.to_string()]);
    s.repo.write("README", "by owner again\n");
    let sha4 = s.repo.commit("by owner again");
    s.repo.push("HEAD:refs/heads/main");
    let (code, answer) = web.rt.block_on(deliver(
        &s.addr,
        "repo:push",
        "{g-4}",
        &push_by(&sha4, "owner"),
        SECRET,
    ));
    assert_eq!(code, 202, "{answer}");
    let id4 = pipeline_id(&answer);
    let p = settled(data, id4, "ship", "unauthorized");
    assert!(
        reason(&p, "ship").contains("owner, who triggered the pipeline, is not a member"),
        "{p:#?}"
    );
    s.c.cli(&["cancel-pipeline", &id4.to_string()]);

    // Each change of membership is in the audit log, said by the host.
    let audit = s.c.cli(&["audit", "--json"]);
    let rows: Vec<Value> = audit
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    for (target, detail) in [
        ("person owner", "+release, on the host"),
        ("person {acct-owner}", "-release, on the host"),
    ] {
        assert!(
            rows.iter().any(|r| r["action"] == "groups"
                && r["target"] == target
                && r["detail"] == detail
                && r["actor"].as_str().is_some_and(|a| a.starts_with("host:"))),
            "no groups row for {target}: {audit}"
        );
    }
    // No value of the context in the coordinator's log.
    assert!(!s.c.log_text().contains(PROD_KEY));
    drop(dir);
}

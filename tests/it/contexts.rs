//! Contexts end to end, real parts only: `bosun coordinator serve`, a `bosun agent`, the
//! Docker engine, the Bitbucket stand-in for git, and an HTTP server recording the commit
//! statuses. A deploy job with two contexts gets their values (masked in its log, in
//! CircleCI's order of precedence) on `main`, ends `unauthorized` on another branch (an
//! expression restriction) with its dependant blocked and a FAILED status; an approval in
//! front of a job with a group-restricted context is refused (403) to an operator outside the
//! group and accepted from one inside; a forked pull request's job gets no context. And
//! `bosun execute --context NAME=FILE` for local runs.

use crate::harness;
use crate::harness::bitbucket::*;
use crate::harness::{image, Project};
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const AWS_KEY: &str = "AKIA-ctx-secret-1234";
const PROD_KEY: &str = "prod-ctx-secret-9876";
const CONTEXT_TOKEN: &str = "ctx-token-5555";

fn config() -> String {
    let img = image("base");
    // `rev` prints a value backwards: not the secret itself, so not masked, yet it shows
    // which value the job got.
    format!(
        r#"version: 2.1
jobs:
  build:
    docker: [{{image: {img}}}]
    steps: [{{run: echo built}}]
  deploy:
    docker: [{{image: {img}}}]
    environment:
      OVERRIDE: from-job
    steps:
      - run: |
          echo "raw=$AWS_KEY"
          echo "aws=$(printf %s "${{AWS_KEY:-none}}" | rev) region=${{REGION:-none}}"
          echo "token=$(printf %s "${{DEPLOY_TOKEN:-none}}" | rev) over=$OVERRIDE job=$CIRCLE_JOB"
  notify:
    docker: [{{image: {img}}}]
    steps: [{{run: echo notified}}]
  release:
    docker: [{{image: {img}}}]
    steps:
      - run: echo "prod=$(printf %s "${{PROD_KEY:-none}}" | rev)"
workflows:
  main:
    jobs:
      - build
      - deploy:
          context: [org-global, aws]
          requires: [build]
      - notify:
          requires: [deploy]
      - hold:
          type: approval
          requires: [build]
      - release:
          context: prod
          requires: [hold]
"#
    )
}

pub(crate) fn rev(s: &str) -> String {
    s.chars().rev().collect()
}

/// `bosun coordinator context env set NAME KEY` with the value on stdin.
pub(crate) fn set_var(data: &std::path::Path, context: &str, key: &str, value: &str) {
    let mut child = Command::new(harness::bosun_bin())
        .args([
            "coordinator",
            "context",
            "env",
            "set",
            context,
            key,
            "--data",
        ])
        .arg(data)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(format!("{value}\n").as_bytes())
        .expect("write");
    let out = child.wait_with_output().expect("wait");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

pub(crate) fn pipeline_id(answer: &serde_json::Value) -> i64 {
    answer["pipelines"][0]["id"]
        .as_i64()
        .unwrap_or_else(|| panic!("no pipeline: {answer}"))
}

pub(crate) fn wait_jobs(
    data: &std::path::Path,
    id: i64,
    want: &[(&str, &str)],
    secs: u64,
) -> bosun::coordinator::store::pipelines::PipelineRow {
    let t0 = Instant::now();
    loop {
        let p = store(data).pipeline(id).expect("read").expect("pipeline");
        if want.iter().all(|(j, s)| job_status(&p, j) == *s) {
            return p;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(secs),
            "waiting for {want:?}: {p:#?}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

pub(crate) fn log_of(
    data: &std::path::Path,
    p: &bosun::coordinator::store::pipelines::PipelineRow,
    job: &str,
) -> String {
    String::from_utf8_lossy(&store(data).log_from(job_id(p, job), 0).expect("log")).into_owned()
}

pub(crate) fn reason(p: &bosun::coordinator::store::pipelines::PipelineRow, job: &str) -> String {
    p.workflows
        .iter()
        .flat_map(|w| &w.jobs)
        .find(|j| j.name == job)
        .and_then(|j| j.reason.clone())
        .unwrap_or_default()
}

async fn approve(addr: &str, id: i64, token: &str) -> (u16, serde_json::Value) {
    let r = reqwest::Client::new()
        .post(format!("http://{addr}/pipelines/{id}/approve"))
        .bearer_auth(token)
        .json(&serde_json::json!({"job": "hold"}))
        .send()
        .await
        .expect("approve");
    let code = r.status().as_u16();
    (code, r.json().await.unwrap_or(serde_json::Value::Null))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_deploy_job_gets_its_contexts_on_main_and_is_unauthorized_elsewhere_or_by_outsiders() {
    let s = setup(
        &config(),
        &["agent-a"],
        &["--build-fork-pull-requests", "true"],
    );
    let data = &s.data;
    // Contexts through the CLI; values on stdin, never on the command line.
    for (name, owner) in [("org-global", "acme"), ("aws", "acme"), ("prod", "")] {
        let out = s.c.cli(&["context", "create", name, "--owner", owner]);
        assert!(out.starts_with(&format!("context {name} (")), "{out}");
    }
    set_var(data, "org-global", "AWS_KEY", "overridden-by-aws");
    set_var(data, "org-global", "DEPLOY_TOKEN", CONTEXT_TOKEN);
    set_var(data, "org-global", "OVERRIDE", "from-context");
    set_var(data, "org-global", "CIRCLE_JOB", "from-context");
    set_var(data, "aws", "AWS_KEY", AWS_KEY);
    set_var(data, "aws", "REGION", "eu-west-1");
    set_var(data, "prod", "PROD_KEY", PROD_KEY);
    let ls = s.c.cli(&["context", "ls", "--owner", "acme"]);
    assert!(
        ls.contains("aws") && ls.contains("org-global") && !ls.contains("prod"),
        "{ls}"
    );
    let vars = s.c.cli(&["context", "env", "ls", "org-global"]);
    for name in ["AWS_KEY", "CIRCLE_JOB", "DEPLOY_TOKEN", "OVERRIDE"] {
        assert!(vars.contains(name), "{vars}");
    }
    assert!(
        !vars.contains("overridden-by-aws") && !vars.contains(CONTEXT_TOKEN),
        "{vars}"
    );
    // Sealed at rest: no value is in the database file in the clear.
    let db = std::fs::read(data.join("coordinator.db")).expect("db");
    for v in [AWS_KEY, PROD_KEY, CONTEXT_TOKEN] {
        assert!(
            !db.windows(v.len()).any(|w| w == v.as_bytes()),
            "{v} in the clear"
        );
    }
    // A restriction the parser does not know is refused with its column.
    let mut bad = Command::new(harness::bosun_bin());
    bad.args([
        "coordinator",
        "context",
        "restrict",
        "aws",
        "--expression",
        "pipeline.git.brnch == \"main\"",
        "--data",
    ])
    .arg(data);
    let out = bad.output().expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("column 1: unknown variable `pipeline.git.brnch`"),
        "{err}"
    );
    s.c.cli(&[
        "context",
        "restrict",
        "aws",
        "--expression",
        "pipeline.git.branch == \"main\" and not job.ssh.enabled",
    ]);
    s.c.cli(&["context", "restrict", "aws", "--project", "bb/acme/widget"]);
    s.c.cli(&["context", "restrict", "prod", "--group", "release"]);
    let listed = s.c.cli(&["context", "restrict", "aws"]);
    assert!(
        listed.contains("expression") && listed.contains("acme/widget"),
        "{listed}"
    );
    let ann = s.c.cli(&["operator", "new", "ann", "--group", "release"]);
    let bob = s.c.cli(&["operator", "new", "bob", "--group", "dev"]);

    // On main: deploy gets both contexts, the later over the earlier, all over the project's
    // variable; the job's `environment:` and the built-ins over every context.
    let sha = s.repo.head();
    let body = push_payload("acme/widget", "branch", "main", &sha, "config");
    let (code, answer) = deliver(&s.addr, "repo:push", "{c-1}", &body, SECRET).await;
    assert_eq!(code, 202, "{answer}");
    let id = pipeline_id(&answer);
    let p = wait_jobs(
        data,
        id,
        &[
            ("deploy", "success"),
            ("notify", "success"),
            ("hold", "on_hold"),
        ],
        240,
    );
    let log = log_of(data, &p, "deploy");
    assert!(log.contains("raw=********"), "{log}");
    assert!(
        log.contains(&format!("aws={} region=********", rev(AWS_KEY))),
        "{log}"
    );
    assert!(
        log.contains(&format!(
            "token={} over=from-job job=deploy",
            rev(CONTEXT_TOKEN)
        )),
        "{log}"
    );
    for v in [AWS_KEY, CONTEXT_TOKEN, "eu-west-1"] {
        assert!(!log.contains(v), "{v} unmasked in {log}");
    }

    // The approval in front of the group-restricted context: bob is not in `release`.
    let (code, answer) = approve(&s.addr, id, &bob).await;
    assert_eq!(code, 403, "{answer}");
    let msg = answer["error"].as_str().unwrap_or_default();
    assert!(
        msg.contains("bob may not approve hold") && msg.contains("group release"),
        "{answer}"
    );
    assert_eq!(
        job_status(&store(data).pipeline(id).expect("read").expect("p"), "hold"),
        "on_hold"
    );
    let (code, answer) = approve(&s.addr, id, &ann).await;
    assert_eq!(code, 200, "{answer}");
    let p = wait_pipeline(data, id, &["success", "failed"], Duration::from_secs(180));
    assert_eq!(p.status.as_str(), "success", "{p:#?}");
    let log = log_of(data, &p, "release");
    assert!(log.contains(&format!("prod={}", rev(PROD_KEY))), "{log}");

    // On another branch the expression is not met: deploy ends unauthorized with the
    // reason, notify does not run, and Bitbucket hears FAILED for deploy.
    s.repo.branch("feature");
    s.repo.write("README", "a feature\n");
    let fsha = s.repo.commit("a feature");
    s.repo.push("HEAD:refs/heads/feature");
    let body = push_payload("acme/widget", "branch", "feature", &fsha, "a feature");
    let (code, answer) = deliver(&s.addr, "repo:push", "{c-2}", &body, SECRET).await;
    assert_eq!(code, 202, "{answer}");
    let fid = pipeline_id(&answer);
    let p = wait_jobs(
        data,
        fid,
        &[("deploy", "unauthorized"), ("notify", "blocked")],
        240,
    );
    let why = reason(&p, "deploy");
    assert!(
        why.contains("context aws") && why.contains("pipeline.git.branch == \"main\""),
        "{why}"
    );
    assert!(p.workflows[0]
        .jobs
        .iter()
        .all(|j| j.name != "deploy" || j.job_id.is_none()));
    let page = reqwest::get(format!("http://{}/pipelines/{fid}", s.addr))
        .await
        .expect("page")
        .text()
        .await
        .expect("text");
    assert!(page.contains("unauthorized"), "{page}");
    assert!(page.contains("context aws"), "{page}");
    let t0 = Instant::now();
    loop {
        let failed = s.statuses.all().iter().any(|(path, _, b)| {
            path.contains(&fsha)
                && b["state"] == "FAILED"
                && b["name"].as_str().is_some_and(|n| n.contains("deploy"))
        });
        if failed {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "no FAILED status for deploy: {:#?}",
            s.statuses.all()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    s.c.cli(&["cancel-pipeline", &fid.to_string()]);

    // A forked pull request gets no context (as no project secret): deploy runs without.
    s.repo.branch("contrib");
    s.repo.write("README", "from a fork\n");
    let fork_sha = s.repo.commit("a contribution");
    s.repo.push("HEAD:refs/heads/contrib");
    let pr = pr_payload(9, "eve/widget", "contrib", &fork_sha);
    let (code, answer) = deliver(&s.addr, "pullrequest:created", "{c-3}", &pr, SECRET).await;
    assert_eq!(code, 202, "{answer}");
    let prid = pipeline_id(&answer);
    let p = wait_jobs(data, prid, &[("deploy", "success")], 240);
    assert!(p.restricted, "{p:#?}");
    let log = log_of(data, &p, "deploy");
    assert!(
        log.contains("aws=enon region=none") && log.contains("token=enon over=from-job"),
        "{log}"
    );
    s.c.cli(&["cancel-pipeline", &prid.to_string()]);

    // Removing a context: a job naming it is unauthorized (it does not exist).
    s.c.cli(&["context", "rm", "org-global"]);
    let out =
        s.c.cli(&["trigger", "--project", "acme/widget", "--ref", "main"]);
    let tid: i64 = out
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{out}"));
    let p = wait_jobs(data, tid, &[("deploy", "unauthorized")], 240);
    assert!(
        reason(&p, "deploy").contains("context org-global does not exist"),
        "{p:#?}"
    );
    s.c.cli(&["cancel-pipeline", &tid.to_string()]);
}

#[test]
fn execute_gives_a_workflow_job_the_contexts_it_names_and_warns_of_missing_ones() {
    harness::ensure_images();
    let img = image("base");
    let p = Project::new(&format!(
        r#"version: 2.1
jobs:
  deploy:
    docker: [{{image: {img}}}]
    steps:
      - run: echo "key=$(printf %s "${{AWS_KEY:-none}}" | rev) raw=$AWS_KEY other=${{OTHER:-none}}"
workflows:
  main:
    jobs:
      - deploy:
          context: [aws, missing-one]
"#
    ));
    let env = p.path().join("aws.env");
    std::fs::write(&env, format!("# aws\nexport AWS_KEY='{AWS_KEY}'\n")).expect("env");
    let other = p.path().join("other.env");
    std::fs::write(&other, "OTHER=given-but-not-named\n").expect("env");
    let arg = format!("aws={}", env.display());
    let arg2 = format!("other={}", other.display());
    let out = p.execute(&[
        "--json",
        "--workflow",
        "main",
        "--context",
        &arg,
        "--context",
        &arg2,
    ]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    let text = harness::step_output(&out.events, Some("deploy"), 0);
    assert!(
        text.contains(&format!("key={} raw=******** other=none", rev(AWS_KEY))),
        "{text}"
    );
    assert!(!out.stdout.contains(AWS_KEY), "{}", out.stdout);
    assert!(
        out.stdout
            .contains("job deploy names context missing-one, which was not given"),
        "{}",
        out.stdout
    );
    // A dotenv line that is not a variable is refused with its file and line.
    std::fs::write(&other, "OTHER=1\nnot a line\n").expect("env");
    let out = p.execute(&["--workflow", "main", "--context", &arg2]);
    assert_ne!(out.code, 0);
    let said = format!("{}{}", out.stdout, out.stderr);
    assert!(
        said.contains("--context: ") && said.contains("other.env:2: expected KEY=value"),
        "{said}"
    );
    assert!(!said.contains("not a line"), "{said}");
}

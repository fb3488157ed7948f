//! Pipelines end to end, real parts only: `bosun coordinator serve` (SQLite, HTTP), two
//! `bosun agent`s, the Docker engine, the Bitbucket stand-in for git, and an HTTP server in
//! the test standing in for Bitbucket's REST API (it records the commit statuses it gets).
//! Webhook deliveries are signed as Bitbucket signs them.

use crate::harness;

use crate::harness::bitbucket::*;
use crate::harness::image;
use std::path::Path;
use std::time::{Duration, Instant};

fn config() -> String {
    let img = image("base");
    format!(
        r#"version: 2.1
jobs:
  build:
    docker: [{{image: {img}}}]
    steps:
      - checkout
      - run: echo "built for << pipeline.git.branch >> with token=${{DEPLOY_TOKEN:-none}}"; sleep 3
  test:
    docker: [{{image: {img}}}]
    parameters: {{n: {{type: integer}}}}
    steps:
      - run: echo "test << parameters.n >> of pipeline << pipeline.number >>"; sleep 3
  broken:
    docker: [{{image: {img}}}]
    steps: [{{run: exit 3}}]
  after-broken:
    docker: [{{image: {img}}}]
    steps: [{{run: echo never}}]
  cleanup:
    docker: [{{image: {img}}}]
    steps: [{{run: echo cleaning up after a failure}}]
  deploy:
    docker: [{{image: {img}}}]
    steps: [{{run: echo deploying}}]
  release:
    docker: [{{image: {img}}}]
    steps: [{{run: echo releasing << pipeline.git.tag >>}}]
workflows:
  main:
    jobs:
      - build:
          filters: {{tags: {{only: /^v.*/}}}}
      - test:
          matrix: {{parameters: {{n: [1, 2]}}}}
          requires: [build]
      - broken
      - after-broken: {{requires: [broken]}}
      - cleanup: {{requires: [{{broken: failed}}]}}
      - hold: {{type: approval, requires: [test]}}
      - deploy: {{requires: [hold]}}
      - release:
          requires: [build]
          filters: {{tags: {{only: /^v.*/}}, branches: {{ignore: /.*/}}}}
"#
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_signed_push_runs_its_workflow_across_two_agents_with_approval_blocking_and_statuses() {
    let s = setup(&config(), &["agent-a", "agent-b"], &[]);
    let sha = s.repo.head();
    let body = push_payload("acme/widget", "branch", "main", &sha, "config");

    // A bad signature is refused, and nothing is made.
    let (code, _) = deliver(&s.addr, "repo:push", "{d-0}", &body, "wrong-secret").await;
    assert_eq!(code, 401);
    assert!(store(&s.data)
        .list_pipelines(None, 10)
        .expect("list")
        .is_empty());

    let (code, answer) = deliver(&s.addr, "repo:push", "{d-1}", &body, SECRET).await;
    assert_eq!(code, 202, "{answer}");
    let id = answer["pipelines"][0]["id"].as_i64().expect("pipeline id");
    // The same delivery again (a retry or a replay) makes nothing.
    let (code, again) = deliver(&s.addr, "repo:push", "{d-1}", &body, SECRET).await;
    assert_eq!(code, 200, "{again}");
    assert!(again["ignored"].is_string(), "{again}");
    assert_eq!(
        store(&s.data).list_pipelines(None, 10).expect("list").len(),
        1
    );

    // Everything before the approval runs; the failed job blocks only its dependant, and
    // the job that requires its failure runs.
    let t0 = Instant::now();
    let p = loop {
        let p = store(&s.data)
            .pipeline(id)
            .expect("read")
            .expect("pipeline");
        if job_status(&p, "hold") == "on_hold"
            && job_status(&p, "cleanup") == "success"
            && job_status(&p, "after-broken") == "blocked"
        {
            break p;
        }
        assert!(t0.elapsed() < Duration::from_secs(240), "{p:#?}");
        std::thread::sleep(Duration::from_millis(300));
    };
    assert_eq!(p.status.as_str(), "on_hold", "{p:#?}");
    for j in ["build", "test-1", "test-2"] {
        assert_eq!(job_status(&p, j), "success", "{p:#?}");
    }
    assert_eq!(job_status(&p, "broken"), "failed");
    assert_eq!(job_status(&p, "deploy"), "waiting");
    assert_eq!(job_status(&p, "release"), "not_run");
    // Two agents shared the jobs.
    let st = store(&s.data);
    let agents: std::collections::BTreeSet<String> =
        ["build", "test-1", "test-2", "broken", "cleanup"]
            .iter()
            .filter_map(|j| {
                st.job(job_id(&p, j))
                    .expect("job")
                    .and_then(|r| r.agent_name)
            })
            .collect();
    let all: std::collections::BTreeSet<String> = s.agents.iter().map(|a| a.name.clone()).collect();
    assert_eq!(agents, all, "one agent ran everything");
    let log =
        String::from_utf8_lossy(&st.log_from(job_id(&p, "test-2"), 0).expect("log")).into_owned();
    assert!(log.contains("test 2 of pipeline 1"), "{log}");
    let log =
        String::from_utf8_lossy(&st.log_from(job_id(&p, "build"), 0).expect("log")).into_owned();
    assert!(log.contains("built for main with token=********"), "{log}");

    // Approval from the CLI releases deploy.
    let out = harness::coordinator_cli(
        &s.data,
        &["approve", &id.to_string(), "hold", "--by", "ops"],
    );
    assert!(out.contains("approved hold"), "{out}");
    let p = wait_pipeline(
        &s.data,
        id,
        &["failed", "success"],
        Duration::from_secs(120),
    );
    assert_eq!(job_status(&p, "deploy"), "success", "{p:#?}");
    assert_eq!(
        p.status.as_str(),
        "failed",
        "broken failed the workflow: {p:#?}"
    );

    // Statuses: one key per job, INPROGRESS before its end, the job page linked.
    let t0 = Instant::now();
    let sent = loop {
        let sent = s.statuses.all();
        if sent
            .iter()
            .any(|(_, _, b)| b["name"] == "ci/circleci: deploy" && b["state"] == "SUCCESSFUL")
        {
            break sent;
        }
        assert!(t0.elapsed() < Duration::from_secs(30), "{sent:#?}");
        std::thread::sleep(Duration::from_millis(200));
    };
    for (path, auth, _) in &sent {
        assert_eq!(
            path,
            &format!("/repositories/acme/widget/commit/{sha}/statuses/build")
        );
        assert!(auth.starts_with("Basic "), "{auth}");
    }
    let states = |name: &str| -> Vec<String> {
        sent.iter()
            .filter(|(_, _, b)| b["name"] == name)
            .map(|(_, _, b)| b["state"].as_str().unwrap_or("").to_owned())
            .collect()
    };
    assert_eq!(states("ci/circleci: build"), ["INPROGRESS", "SUCCESSFUL"]);
    assert_eq!(states("ci/circleci: broken"), ["INPROGRESS", "FAILED"]);
    assert_eq!(
        states("ci/circleci: main/hold"),
        ["INPROGRESS", "SUCCESSFUL"]
    );
    assert!(states("ci/circleci: after-broken").is_empty());
    let build = sent
        .iter()
        .find(|(_, _, b)| b["name"] == "ci/circleci: build")
        .expect("build")
        .2
        .clone();
    assert_eq!(build["key"].as_str().map(str::len), Some(40));
    assert!(
        build["url"]
            .as_str()
            .unwrap_or("")
            .ends_with(&format!("/jobs/{}", job_id(&p, "build"))),
        "{build}"
    );

    // A rename keeps the project and its settings (the secret still verifies, statuses
    // still go), and the old slug still resolves.
    let renamed = push_payload("acme/gadget", "branch", "main", &sha, "again");
    let (code, answer) = deliver(&s.addr, "repo:push", "{d-2}", &renamed, SECRET).await;
    assert_eq!(code, 202, "{answer}");
    let id2 = answer["pipelines"][0]["id"].as_i64().expect("pipeline id");
    let p2 = store(&s.data)
        .pipeline(id2)
        .expect("read")
        .expect("pipeline");
    assert_eq!(p2.project, "acme/gadget");
    assert_eq!(p2.number, 2);
    let listed = s.c.cli(&["pipelines", "--project", "acme/widget"]);
    assert!(listed.contains("acme/gadget#2"), "{listed}");
    s.c.cli(&["cancel-pipeline", "acme/widget#2"]);
    wait_pipeline(
        &s.data,
        id2,
        &["canceled", "errored", "failed"],
        Duration::from_secs(60),
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn tags_forks_skips_and_a_config_that_does_not_compile() {
    let s = setup(
        &config(),
        &["agent-a"],
        &["--build-fork-pull-requests", "true"],
    );
    let repo = &s.repo;
    repo.tag("v1.0");
    repo.push("refs/tags/v1.0");
    let sha = repo.head();

    // A tag push runs the jobs whose tag filters match: build and release only.
    let body = push_payload("acme/widget", "tag", "v1.0", &sha, "config");
    let (code, answer) = deliver(&s.addr, "repo:push", "{t-1}", &body, SECRET).await;
    assert_eq!(code, 202, "{answer}");
    let id = answer["pipelines"][0]["id"].as_i64().expect("pipeline id");
    let p = wait_pipeline(
        &s.data,
        id,
        &["success", "failed", "errored"],
        Duration::from_secs(180),
    );
    assert_eq!(p.status.as_str(), "success", "{p:#?}");
    assert_eq!(job_status(&p, "release"), "success");
    assert_eq!(job_status(&p, "test-1"), "not_run");
    let st = store(&s.data);
    let log =
        String::from_utf8_lossy(&st.log_from(job_id(&p, "release"), 0).expect("log")).into_owned();
    assert!(log.contains("releasing v1.0"), "{log}");

    // [skip ci] in the head commit: no pipeline.
    let skip = push_payload("acme/widget", "branch", "main", &sha, "docs\n\n[skip ci]");
    let (code, answer) = deliver(&s.addr, "repo:push", "{t-2}", &skip, SECRET).await;
    assert_eq!(code, 202, "{answer}");
    assert_eq!(
        answer["pipelines"].as_array().map(Vec::len),
        Some(0),
        "{answer}"
    );

    // A forked pull request builds without the secret env value (and without the user key).
    repo.branch("contrib");
    repo.write("README", "from a fork\n");
    let fork_sha = repo.commit("a contribution");
    repo.push("HEAD:refs/heads/contrib");
    let pr = pr_payload(9, "eve/widget", "contrib", &fork_sha);
    let (code, answer) = deliver(&s.addr, "pullrequest:created", "{t-3}", &pr, SECRET).await;
    assert_eq!(code, 202, "{answer}");
    let id = answer["pipelines"][0]["id"].as_i64().expect("pipeline id");
    let t0 = Instant::now();
    let p = loop {
        let p = store(&s.data)
            .pipeline(id)
            .expect("read")
            .expect("pipeline");
        if job_status(&p, "build") == "success" {
            break p;
        }
        assert!(t0.elapsed() < Duration::from_secs(120), "{p:#?}");
        std::thread::sleep(Duration::from_millis(300));
    };
    assert!(p.restricted && p.pr_fork, "{p:#?}");
    let log =
        String::from_utf8_lossy(&st.log_from(job_id(&p, "build"), 0).expect("log")).into_owned();
    assert!(log.contains("built for contrib with token=none"), "{log}");
    s.c.cli(&["cancel-pipeline", &id.to_string()]);
    // Rerun on its own, outside its workflow, the build is still the fork's: no secret value.
    let rerun = s.c.cli(&["rerun", &job_id(&p, "build").to_string()]);
    let rerun = rerun.trim();
    let status = harness::wait_job_status(
        &s.data,
        rerun,
        &["success", "failed"],
        Duration::from_secs(120),
    );
    let log = harness::job_log(&s.data, rerun);
    assert!(
        status == "success" && log.contains("built for contrib with token=none"),
        "{status}: {log}"
    );

    // A config that does not compile errors the pipeline with the compiler's position.
    repo.checkout("main");
    repo.write(".circleci/config.yml", "version: 2.1\njobs:\n  build:\n    docker: [{image: x}]\n    steps: [{run: {comand: true}}]\nworkflows:\n  w:\n    jobs: [build]\n");
    let bad = repo.commit("break the config");
    repo.push("HEAD:refs/heads/main");
    let out = harness::coordinator_cli(
        &s.data,
        &[
            "trigger",
            "--project",
            "acme/widget",
            "--ref",
            "main",
            "--commit",
            &bad,
        ],
    );
    let id: i64 = out
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{out}"));
    let p = wait_pipeline(&s.data, id, &["errored"], Duration::from_secs(60));
    let err = p.error.clone().unwrap_or_default();
    assert!(err.contains(".circleci/config.yml:5:"), "{err}");
    let page = reqwest::get(format!("http://{}/pipelines/{id}", s.addr))
        .await
        .expect("page")
        .text()
        .await
        .expect("text");
    assert!(page.contains(".circleci/config.yml:5:"), "{page}");

    // The config mirror holds the repository now, but once the project's deploy key is
    // replaced by one the repository does not know, it gets nothing of the mirror: the fetch
    // with the project's keys comes first, every time.
    s.c.cli(&["project", "keys", "rotate", "--slug", "acme/widget"]);
    let out =
        s.c.cli(&["trigger", "--project", "acme/widget", "--ref", "main"]);
    let id: i64 = out
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{out}"));
    let p = wait_pipeline(&s.data, id, &["errored"], Duration::from_secs(60));
    let err = p.error.clone().unwrap_or_default();
    assert!(err.contains("cannot fetch the config"), "{err}");
    let mirrors = s.data.join("config-mirrors/mirrors");
    assert!(
        std::fs::read_dir(&mirrors).is_ok_and(|mut d| d.next().is_some()),
        "no config mirror under {}",
        mirrors.display()
    );
}

/// The agent that ran job `name` of pipeline `p`.
fn ran_on(
    data: &Path,
    p: &bosun::coordinator::store::pipelines::PipelineRow,
    name: &str,
) -> String {
    store(data)
        .job(job_id(p, name))
        .expect("job")
        .and_then(|j| j.agent_name)
        .unwrap_or_else(|| format!("<no agent for {name}>"))
}

fn log_of(
    data: &Path,
    p: &bosun::coordinator::store::pipelines::PipelineRow,
    name: &str,
) -> String {
    String::from_utf8_lossy(&store(data).log_from(job_id(p, name), 0).expect("log")).into_owned()
}

/// A workflow's workspace crosses agents: `make` persists a file on the agent of runner class
/// `acme/one`, its dependant `use` runs on the agent of class `acme/two` (a job's
/// `resource_class: namespace/name` picks the agents registered with that class, as CircleCI
/// routes jobs to its self-hosted runners) and attaches it. Another pipeline's workflow has a
/// workspace of its own.
#[tokio::test(flavor = "multi_thread")]
async fn a_workspace_persisted_on_one_agent_is_attached_by_a_dependant_on_the_other() {
    let img = image("base");
    let nonce = format!("handed-over-{}", harness::new_run_id());
    let config = format!(
        r#"version: 2.1
jobs:
  make:
    docker: [{{image: {img}}}]
    resource_class: acme/one
    steps:
      - run: mkdir -p /tmp/ws/out && echo "{nonce} from pipeline << pipeline.number >>" > /tmp/ws/out/hand.txt
      - persist_to_workspace: {{root: /tmp/ws, paths: [out]}}
  use:
    docker: [{{image: {img}}}]
    resource_class: acme/two
    steps:
      - attach_workspace: {{at: /tmp/got}}
      - run: echo "got [$(cat /tmp/got/out/hand.txt)]"
workflows:
  hand-over:
    jobs:
      - make
      - use: {{requires: [make]}}
"#
    );
    let s = setup_with(&config, &[], |c, rig| {
        vec![
            c.agent(rig, "agent-one").resource_class("acme/one").start(),
            c.agent(rig, "agent-two").resource_class("acme/two").start(),
        ]
    });
    let sha = s.repo.head();
    let mut ids = Vec::new();
    for n in 1..=2 {
        let body = push_payload("acme/widget", "branch", "main", &sha, "config");
        let (code, answer) =
            deliver(&s.addr, "repo:push", &format!("{{w-{n}}}"), &body, SECRET).await;
        assert_eq!(code, 202, "{answer}");
        ids.push(answer["pipelines"][0]["id"].as_i64().expect("pipeline id"));
    }
    for (n, id) in ids.iter().enumerate() {
        let p = wait_pipeline(
            &s.data,
            *id,
            &["success", "failed", "errored", "canceled"],
            Duration::from_secs(180),
        );
        let log = log_of(&s.data, &p, "use");
        assert_eq!(p.status.as_str(), "success", "{p:#?}\n{log}");
        assert_eq!(ran_on(&s.data, &p, "make"), "agent-one");
        assert_eq!(ran_on(&s.data, &p, "use"), "agent-two");
        // Its own pipeline's file, not the other's (each workflow has its workspace).
        let want = format!("got [{nonce} from pipeline {}]", n + 1);
        assert!(log.contains(&want), "want {want:?} in:\n{log}");
        assert!(log.contains("of workspace from the coordinator"), "{log}");
    }
    assert_eq!(s.agents.len(), 2);
}

/// (started, finished) of job `name` of pipeline `p`, in the coordinator's milliseconds.
fn interval(
    data: &Path,
    p: &bosun::coordinator::store::pipelines::PipelineRow,
    name: &str,
) -> (i64, i64) {
    let j = store(data)
        .job(job_id(p, name))
        .expect("job")
        .unwrap_or_else(|| panic!("no job row for {name}"));
    match (j.started, j.finished) {
        (Some(s), Some(f)) => (s, f),
        other => panic!("{name} has no whole run interval: {other:?}"),
    }
}

fn overlap(a: (i64, i64), b: (i64, i64)) -> bool {
    a.0 < b.1 && b.0 < a.1
}

/// `serial-group`: the `deploy` jobs of two pipelines of the project run one at a time, the
/// older pipeline's first, although three agents are idle, while the `free` jobs (in no
/// group) run beside them. Without the group the three agents would run both deploys at once.
#[tokio::test(flavor = "multi_thread")]
async fn serial_group_jobs_of_two_pipelines_run_one_at_a_time_while_others_overlap() {
    let img = image("base");
    let config = format!(
        r#"version: 2.1
jobs:
  deploy:
    docker: [{{image: {img}}}]
    steps: [{{run: echo deploying; sleep 4}}]
  free:
    docker: [{{image: {img}}}]
    steps: [{{run: echo free; sleep 4}}]
workflows:
  ship:
    jobs:
      - deploy: {{serial-group: prod/deploy}}
      - free
"#
    );
    let s = setup(&config, &["agent-a", "agent-b", "agent-c"], &[]);
    let sha = s.repo.head();
    let mut ids = Vec::new();
    for n in 1..=2 {
        let body = push_payload("acme/widget", "branch", "main", &sha, "config");
        let (code, answer) =
            deliver(&s.addr, "repo:push", &format!("{{s-{n}}}"), &body, SECRET).await;
        assert_eq!(code, 202, "{answer}");
        ids.push(answer["pipelines"][0]["id"].as_i64().expect("pipeline id"));
    }
    // While the first deploy runs, the second waits without a job row, saying why.
    let t0 = Instant::now();
    let mut saw_wait = false;
    loop {
        let first = store(&s.data).pipeline(ids[0]).expect("read").expect("p1");
        let second = store(&s.data).pipeline(ids[1]).expect("read").expect("p2");
        let waiting = second
            .workflows
            .iter()
            .flat_map(|w| &w.jobs)
            .find(|j| j.name == "deploy")
            .filter(|j| j.job_id.is_none() && j.status.as_str() == "queued")
            .and_then(|j| j.reason.clone());
        if job_status(&first, "deploy") == "running" {
            if let Some(reason) = waiting {
                assert!(reason.contains("serial group prod/deploy"), "{reason}");
                saw_wait = true;
                break;
            }
        }
        if matches!(job_status(&first, "deploy").as_str(), "success" | "failed") {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(120), "{first:#?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let done: Vec<_> = ids
        .iter()
        .map(|id| {
            wait_pipeline(
                &s.data,
                *id,
                &["success", "failed", "errored", "canceled"],
                Duration::from_secs(180),
            )
        })
        .collect();
    for p in &done {
        assert_eq!(p.status.as_str(), "success", "{p:#?}");
    }
    let deploys: Vec<(i64, i64)> = done
        .iter()
        .map(|p| interval(&s.data, p, "deploy"))
        .collect();
    let frees: Vec<(i64, i64)> = done.iter().map(|p| interval(&s.data, p, "free")).collect();
    assert!(
        !overlap(deploys[0], deploys[1]),
        "the serial group's jobs overlapped: {deploys:?}"
    );
    assert!(
        deploys[0].1 <= deploys[1].0,
        "the older pipeline's deploy goes first: {deploys:?}"
    );
    assert!(
        frees
            .iter()
            .any(|f| deploys.iter().any(|d| overlap(*f, *d))),
        "a job outside the group ran beside a deploy: deploys {deploys:?}, free {frees:?}"
    );
    assert!(
        saw_wait,
        "the second deploy was never seen waiting its turn"
    );
}

/// The pipeline page in headless Chromium while the pipeline runs: the workflow's graph (a
/// node per job, an edge per `requires`), `build` turning from queued/running to success and
/// `hold` to on_hold without a reload, then the approve button: refused without a login (the
/// page says so, and the server answers 401 to a request without a token or with a wrong
/// one), and with an operator's token typed into the login form it approves `hold`, after
/// which `deploy` runs and the page shows the pipeline's success and hold's reason beside the
/// graph turned from "waiting for approval" to "approved by …", still without a reload.
#[tokio::test(flavor = "multi_thread")]
async fn the_pipeline_page_follows_the_run_and_approves_with_an_operator_login_in_chromium() {
    if harness::chromium().is_none() {
        eprintln!("skipped: no chromium installed");
        return;
    }
    let img = image("base");
    let config = format!(
        r#"version: 2.1
jobs:
  build:
    docker: [{{image: {img}}}]
    steps: [{{run: echo building; sleep 6}}]
  deploy:
    docker: [{{image: {img}}}]
    steps: [{{run: echo deployed}}]
workflows:
  release:
    jobs:
      - build
      - hold: {{type: approval, requires: [build]}}
      - deploy: {{requires: [hold]}}
"#
    );
    let s = setup(&config, &["agent-a"], &[]);
    let operator = s.c.cli(&["operator", "new", "ops-ada"]);
    let sha = s.repo.head();
    let body = push_payload("acme/widget", "branch", "main", &sha, "config");
    let (code, answer) = deliver(&s.addr, "repo:push", "{p-1}", &body, SECRET).await;
    assert_eq!(code, 202, "{answer}");
    let id = answer["pipelines"][0]["id"].as_i64().expect("pipeline id");
    // Open the page once the workflow is recorded and build has not finished.
    let t0 = Instant::now();
    loop {
        let p = store(&s.data)
            .pipeline(id)
            .expect("read")
            .expect("pipeline");
        if matches!(job_status(&p, "build").as_str(), "queued" | "running") {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(60), "{p:#?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let url = format!("http://{}/pipelines/{id}", s.addr);
    let api = format!("http://{}/pipelines/{id}/approve", s.addr);
    let data = s.data.clone();

    let seen = harness::with_browser(180, move |b| {
        b.open(&url);
        let wf = "section[data-workflow=\"release\"]";
        let graph = b.eval(&format!(
            "(() => {{ const w = document.querySelector('{wf}'); const nodes = \
             [...w.querySelectorAll('svg.wf-graph g.pjob')].map(g => g.getAttribute('data-job')); \
             return {{nodes, edges: w.querySelectorAll('svg.wf-graph line.edge').length, \
             build: w.querySelector('[data-job=\"build\"]').getAttribute('data-status')}}; }})()"
        ));
        // A reload would lose this.
        b.eval("window.__sameLoad = 'yes'");
        b.wait_for(&format!(
            "document.querySelector('{wf} [data-job=\"build\"]').getAttribute('data-status') === 'success' \
             && document.querySelector('{wf} [data-job=\"hold\"] .pjob-status').textContent === 'on_hold' \
             && !document.querySelector('button[data-approve=\"hold\"]').hidden"
        ));
        // The reason beside the graph, for hold while it waits for its approval.
        let reason_of = |job: &str| {
            format!(
                "(() => {{ const li = document.querySelector('{wf} [data-reason-for=\"{job}\"]'); \
                 return {{hidden: li.hidden, text: li.querySelector('.reason').textContent}}; }})()"
            )
        };
        let hold_reason_before = b.eval(&reason_of("hold"));
        // Approve without a login: the page refuses, nothing is sent.
        b.click("button[data-approve=\"hold\"]");
        b.wait_for("document.getElementById('action-result').textContent.includes('log in')");
        let without = b.eval("document.getElementById('action-result').textContent");
        // The server refuses a request without a token and one with a wrong token.
        let no_token = b.eval(&format!(
            "fetch({api}, {{method: 'POST', headers: {{'Content-Type': 'application/json'}}, \
             body: JSON.stringify({{job: 'hold'}})}}).then(r => r.status)",
            api = serde_json::json!(api)
        ));
        b.click("#token");
        b.type_text("not-an-operator-token");
        b.key("Enter", 13, "\r");
        b.wait_for("document.getElementById('action-result').textContent.includes('kept')");
        b.click("button[data-approve=\"hold\"]");
        b.wait_for("document.getElementById('action-result').textContent.startsWith('refused')");
        let wrong = b.eval("document.getElementById('action-result').textContent");
        let held = store(&data).pipeline(id).expect("read").expect("pipeline");
        let still_held = job_status(&held, "hold");
        // The operator logs in and approves.
        b.click("#token");
        b.type_text(&operator);
        b.key("Enter", 13, "\r");
        b.wait_for("document.getElementById('action-result').textContent.includes('kept')");
        b.click("button[data-approve=\"hold\"]");
        b.wait_for("document.getElementById('action-result').textContent.startsWith('approved')");
        let approved = b.eval("document.getElementById('action-result').textContent");
        // The approval's reason appears beside the graph without a reload.
        b.wait_for(&format!(
            "document.querySelector('{wf} [data-reason-for=\"hold\"] .reason').textContent.startsWith('approved')"
        ));
        let hold_reason_after = b.eval(&reason_of("hold"));
        b.wait_for(&format!(
            "document.querySelector('{wf} [data-job=\"deploy\"]').getAttribute('data-status') === 'success' \
             && document.getElementById('pipeline-status').textContent === 'success'"
        ));
        let same_load = b.eval("window.__sameLoad");
        // Final: the page stops asking the server (it polled once a second forever).
        let polls = "performance.getEntriesByType('resource').filter(e => e.name.endsWith('.json')).length";
        let settled = b.eval(polls);
        std::thread::sleep(Duration::from_secs(3));
        let later = b.eval(polls);
        assert_eq!(settled, later, "the page kept polling a final pipeline");
        (
            graph,
            without,
            no_token,
            wrong,
            still_held,
            approved,
            same_load,
            (hold_reason_before, hold_reason_after),
        )
    })
    .await
    .expect("chromium is installed");
    let (graph, without, no_token, wrong, still_held, approved, same_load, hold_reasons) = seen;
    assert_eq!(
        hold_reasons.0,
        serde_json::json!({"hidden": false, "text": "waiting for approval"}),
        "hold's reason while on hold"
    );
    assert_eq!(
        hold_reasons.1,
        serde_json::json!({"hidden": false, "text": "approved by ops-ada"}),
        "the approval's reason did not appear live"
    );
    assert_eq!(
        graph["nodes"],
        serde_json::json!(["build", "hold", "deploy"]),
        "{graph}"
    );
    assert_eq!(graph["edges"], 2, "{graph}");
    assert!(
        matches!(graph["build"].as_str(), Some("queued" | "running")),
        "the page opened before build finished: {graph}"
    );
    assert!(
        without.as_str().unwrap_or("").contains("log in"),
        "{without}"
    );
    assert_eq!(no_token, 401);
    assert!(
        wrong
            .as_str()
            .unwrap_or("")
            .contains("operator token unknown"),
        "{wrong}"
    );
    assert_eq!(still_held, "on_hold", "refused approvals changed nothing");
    assert_eq!(approved, "approved hold in release");
    assert_eq!(same_load, "yes", "the page was reloaded");
    let p = wait_pipeline(&s.data, id, &["success"], Duration::from_secs(30));
    let hold = p
        .workflows
        .iter()
        .flat_map(|w| &w.jobs)
        .find(|j| j.name == "hold")
        .expect("hold");
    assert_eq!(hold.approved_by.as_deref(), Some("ops-ada"));
    assert!(log_of(&s.data, &p, "deploy").contains("deployed"));
}

/// Pipeline `id` as the page's script reads it.
async fn pipeline_json(addr: &str, id: i64) -> serde_json::Value {
    reqwest::get(format!("http://{addr}/pipelines/{id}.json"))
        .await
        .expect("pipeline json")
        .json()
        .await
        .expect("json")
}

fn reason_in(p: &serde_json::Value, job: &str) -> String {
    p["workflows"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|w| w["jobs"].as_array().into_iter().flatten())
        .find(|j| j["name"] == job)
        .and_then(|j| j["reason"].as_str())
        .unwrap_or("")
        .to_owned()
}

/// Wait until `job` of pipeline `id` has `status` in the page's JSON; returns the JSON.
async fn wait_job_json(addr: &str, id: i64, job: &str, status: &str) -> serde_json::Value {
    let t0 = Instant::now();
    loop {
        let p = pipeline_json(addr, id).await;
        let now = p["workflows"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|w| w["jobs"].as_array().into_iter().flatten())
            .find(|j| j["name"] == job)
            .map(|j| j["status"].as_str().unwrap_or("").to_owned());
        if now.as_deref() == Some(status) {
            return p;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "{job} of pipeline {id} not {status}: {p:#}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A job of a runner class no agent has says so (pipeline page and JSON, job page, both CLI
/// listings) instead of sitting `queued` silently; once an agent of the class registers and
/// is busy with the first such job, the second says it waits for a free one; both then run.
#[tokio::test(flavor = "multi_thread")]
async fn a_job_of_a_runner_class_without_a_free_agent_says_why_it_waits() {
    let img = image("base");
    let config = format!(
        r#"version: 2.1
jobs:
  train:
    docker: [{{image: {img}}}]
    resource_class: acme/gpu
    steps: [{{run: echo training; sleep 6}}]
  evaluate:
    docker: [{{image: {img}}}]
    resource_class: acme/gpu
    steps: [{{run: echo evaluating}}]
workflows:
  ml:
    jobs: [train, evaluate]
"#
    );
    // One agent, of the default class: it may not take either job.
    let s = setup(&config, &["agent-docker"], &[]);
    let sha = s.repo.head();
    let body = push_payload("acme/widget", "branch", "main", &sha, "gpu jobs");
    let (code, answer) = deliver(&s.addr, "repo:push", "{g-1}", &body, SECRET).await;
    assert_eq!(code, 202, "{answer}");
    let id = answer["pipelines"][0]["id"].as_i64().expect("pipeline id");
    let none = "waiting: no agent of runner class acme/gpu has registered";
    let p = wait_job_json(&s.addr, id, "train", "queued").await;
    assert_eq!(reason_in(&p, "train"), none, "{p:#}");
    assert_eq!(reason_in(&p, "evaluate"), none, "{p:#}");
    // The page shows it as text (not only in the graph's hover titles), the job page too.
    let page = reqwest::get(format!("http://{}/pipelines/{id}", s.addr))
        .await
        .expect("page")
        .text()
        .await
        .expect("text");
    assert!(
        page.contains(&format!(
            "<strong>train</strong>: <span class=\"reason\">{none}</span>"
        )),
        "{page}"
    );
    let train = store(&s.data)
        .pipeline(id)
        .expect("read")
        .map(|p| job_id(&p, "train"))
        .expect("pipeline");
    let job_page = reqwest::get(format!("http://{}/jobs/{train}", s.addr))
        .await
        .expect("job page")
        .text()
        .await
        .expect("text");
    assert!(
        job_page.contains(&format!("<span id=\"waiting\">{none}</span>")),
        "{job_page}"
    );
    let listed = s.c.cli(&["pipelines"]);
    assert!(
        listed
            .lines()
            .any(|l| l.contains("train") && l.contains("queued") && l.ends_with(none)),
        "{listed}"
    );
    let jobs = s.c.cli(&["jobs"]);
    assert!(
        jobs.lines()
            .any(|l| l.contains(&format!("{train} ")) && l.ends_with(none)),
        "{jobs}"
    );

    // An agent of the class: it takes one job (the older, train) and is busy with it.
    let _gpu =
        s.c.agent(&s.rig, "agent-gpu")
            .resource_class("acme/gpu")
            .start();
    let p = wait_job_json(&s.addr, id, "train", "running").await;
    assert_eq!(
        reason_in(&p, "evaluate"),
        "waiting for a free agent of runner class acme/gpu (1 busy)",
        "{p:#}"
    );
    let listed = s.c.cli(&["pipelines"]);
    assert!(
        listed.lines().any(|l| l.contains("evaluate")
            && l.ends_with("waiting for a free agent of runner class acme/gpu (1 busy)")),
        "{listed}"
    );
    let p = wait_pipeline(
        &s.data,
        id,
        &["success", "failed", "errored", "canceled"],
        Duration::from_secs(120),
    );
    assert_eq!(p.status.as_str(), "success", "{p:#?}");
    // Finished jobs wait for nothing.
    let p = pipeline_json(&s.addr, id).await;
    assert_eq!(reason_in(&p, "evaluate"), "", "{p:#}");
}

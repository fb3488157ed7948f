//! CircleCI's API v2 on the coordinator (`docs/api-v2.md`): driven by `pycircleci` from PyPI
//! (a client no one here wrote, installed by `scripts/test.sh --setup`) against a real
//! coordinator and agent, and by hand over HTTP for pagination, auth, the 404 body and
//! hostile input.

use crate::harness::{self, bitbucket};
use bosun::coordinator::store::PipelineStore as _;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

/// A python3 that imports `pycircleci`: the system's, or the virtual environment
/// `scripts/test.sh --setup` installs it into. `None`: skip, and say so.
pub(crate) fn python_with(module: &str) -> Option<PathBuf> {
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
            .args(["-c", &format!("import {module}")])
            .output()
            .is_ok_and(|o| o.status.success())
    })
}

fn config(img: &str) -> String {
    format!(
        r#"version: 2.1
parameters:
  greeting: {{type: string, default: hi}}
  fail: {{type: boolean, default: false}}
jobs:
  build:
    docker: [{{image: {img}}}]
    steps:
      - run: echo "greeting=<< pipeline.parameters.greeting >>"
      - run: |
          mkdir -p /tmp/reports /tmp/art
          echo '<testsuites><testsuite name="u" tests="2"><testcase classname="w.Math" name="adds"/><testcase classname="w.Math" name="divides"><failure message="boom">trace</failure></testcase></testsuite></testsuites>' > /tmp/reports/junit.xml
          echo hello > "/tmp/art/hello world.txt"
      - store_test_results: {{path: /tmp/reports}}
      - store_artifacts: {{path: /tmp/art, destination: art}}
      - run: test "<< pipeline.parameters.fail >>" != true
  deploy:
    docker: [{{image: {img}}}]
    steps:
      - run: echo deployed
workflows:
  w:
    jobs:
      - build
      - hold: {{type: approval, requires: [build]}}
      - deploy: {{requires: [hold]}}
"#
    )
}

/// The client's side: what a team's script does with `pycircleci`, each answer kept for the
/// test to check. Waits are bounded; a failure exits non-zero with what it waited for.
const SCRIPT: &str = r#"
import json, os, sys, tempfile, time
import requests
from pycircleci.api import Api

url = os.environ["BOSUN_API"]
api = Api(token=os.environ["OP_TOKEN"], url=url)
BB = dict(vcs_type="bitbucket")

def wait(what, f, timeout=240):
    t0 = time.time()
    while True:
        v = f()
        if v:
            return v
        if time.time() - t0 > timeout:
            sys.exit("timed out waiting for " + what)
        time.sleep(0.5)

def jobs(wf):
    return {j["name"]: j for j in api.get_workflow_jobs(wf)}

def status(wf, s):
    return api.get_workflow(wf)["status"] == s

out = {}
out["me"] = api.get_user_info(api_version="v2")
p = api.trigger_pipeline("acme", "widget", branch="main", params={"greeting": "hello-api"}, **BB)
out["trigger"] = p
wf = wait("workflows", lambda: api.get_pipeline_workflow(p["id"]))[0]
out["wf"] = wf
out["on_hold"] = wait("hold on_hold", lambda: (lambda j: j if j.get("hold", {}).get("status") == "on_hold" else None)(jobs(wf["id"])))
build = out["on_hold"]["build"]
out["job"] = api.get_job_details("acme", "widget", build["job_number"], **BB)
arts = api._request_get_items("project/bitbucket/acme/widget/%d/artifacts" % build["job_number"])
out["artifacts"] = arts
d = tempfile.mkdtemp()
got = api.download_artifact([a for a in arts if a["path"].endswith(".txt")][0]["url"], destdir=d, filename="a.txt")
out["artifact_text"] = open(got).read()
out["tests"] = api._request_get_items("project/bitbucket/acme/widget/%d/tests" % build["job_number"])
out["approve"] = api.approve_job(wf["id"], out["on_hold"]["hold"]["approval_request_id"])
wait("workflow success", lambda: status(wf["id"], "success"))
out["workflow"] = api.get_workflow(wf["id"])
out["done"] = {n: j["status"] for n, j in jobs(wf["id"]).items()}
out["pipeline"] = api.get_pipeline(p["id"])
out["by_number"] = api.get_project_pipeline("acme", "widget", p["number"], **BB)
out["config"] = api.get_pipeline_config(p["id"])
out["listed"] = [x["number"] for x in api.get_project_pipelines("acme", "widget", paginate=True, **BB)]

# A failing workflow rerun from failed: its failed job runs again, as a new job number.
f = api.trigger_pipeline("acme", "widget", branch="main", params={"fail": True}, **BB)
fwf = wait("workflows", lambda: api.get_pipeline_workflow(f["id"]))[0]["id"]
wait("failed", lambda: status(fwf, "failed"))
first = jobs(fwf)["build"]["job_number"]
out["rerun"] = api.rerun_workflow(fwf, from_failed=True)
second = wait("the rerun's job", lambda: (lambda n: n if n and n != first else None)(jobs(fwf)["build"]["job_number"]))
wait("failed again", lambda: status(fwf, "failed"))
out["rerun_jobs"] = [first, second, api.get_workflow(fwf)["id"]]

# A workflow held for approval, canceled.
c = api.trigger_pipeline("acme", "widget", branch="main", **BB)
cwf = wait("workflows", lambda: api.get_pipeline_workflow(c["id"]))[0]["id"]
wait("on hold", lambda: status(cwf, "on_hold"))
out["cancel"] = api.cancel_workflow(cwf)
wait("canceled", lambda: status(cwf, "canceled"))
out["canceled_jobs"] = {n: j["status"] for n, j in jobs(cwf).items()}

# A project token reads its project and may not act.
ro = Api(token=os.environ["RO_TOKEN"], url=url)
out["ro_read"] = ro.get_pipeline(p["id"])["number"]
try:
    ro.trigger_pipeline("acme", "widget", branch="main", **BB)
    out["ro_trigger"] = "allowed"
except requests.HTTPError as e:
    out["ro_trigger"] = [e.response.status_code, e.response.json()]
print(json.dumps(out))
"#;

#[test]
fn pycircleci_triggers_reads_approves_reruns_and_cancels_against_a_real_agent() {
    let Some(py) = python_with("pycircleci") else {
        eprintln!("skipped: no python3 with pycircleci (scripts/test.sh --setup installs it)");
        return;
    };
    harness::ensure_images();
    let s = bitbucket::setup(&config(&harness::image("base")), &["one"], &[]);
    let op = s.c.cli(&["operator", "new", "ann"]).trim().to_owned();
    let ro =
        s.c.cli(&["api-token", "new", "--project", "acme/widget", "reader"])
            .trim()
            .to_owned();
    let script = s.c.dir().join("client.py");
    std::fs::write(&script, SCRIPT).expect("script");
    let out = Command::new(&py)
        .arg(&script)
        .env("BOSUN_API", format!("http://{}/api", s.addr))
        .env("OP_TOKEN", &op)
        .env("RO_TOKEN", &ro)
        .output()
        .expect("python3");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the client failed: {stderr}\nagent log:\n{}",
        s.agents[0].log_text()
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!("{e}: {}", String::from_utf8_lossy(&out.stdout));
    });

    assert_eq!(v["me"]["login"], "ann", "{v:#}");
    let t = &v["trigger"];
    assert_eq!(t["state"], "pending", "{t}");
    let pid = t["id"].as_str().expect("id");
    assert!(bosun::coordinator::api_v2::is_uuid(pid), "{pid}");

    let held = &v["on_hold"];
    assert_eq!(held["build"]["status"], "success", "{held:#}");
    assert_eq!(held["build"]["type"], "build");
    assert_eq!(held["hold"]["type"], "approval");
    assert_eq!(held["hold"]["approval_request_id"], held["hold"]["id"]);
    assert_eq!(held["deploy"]["status"], "blocked");
    assert_eq!(held["deploy"]["dependencies"], json!([held["hold"]["id"]]));
    assert_eq!(held["hold"]["dependencies"], json!([held["build"]["id"]]));

    let job = &v["job"];
    let number = held["build"]["job_number"].as_i64().expect("job number");
    assert_eq!(job["number"], number, "{job:#}");
    assert_eq!(job["name"], "build");
    assert_eq!(job["status"], "success");
    assert_eq!(job["pipeline"]["id"], pid);
    assert_eq!(job["latest_workflow"]["id"], v["wf"]["id"]);
    assert_eq!(job["project"]["slug"], "bb/acme/widget");
    let log = harness::job_log(&s.data, &number.to_string());
    assert!(log.contains("greeting=hello-api"), "{log}");

    let arts = v["artifacts"].as_array().expect("artifacts");
    assert_eq!(arts.len(), 1, "{arts:?}");
    assert_eq!(arts[0]["path"], "art/hello world.txt");
    assert!(
        arts[0]["url"].as_str().is_some_and(
            |u| u.ends_with(&format!("/jobs/{number}/artifacts/art/hello%20world.txt"))
        ),
        "{arts:?}"
    );
    assert_eq!(v["artifact_text"], "hello\n");
    assert_eq!(
        v["tests"],
        json!([{"message": "boom", "source": "", "run_time": 0, "file": null,
                "result": "failure", "name": "divides", "classname": "w.Math"}])
    );

    assert_eq!(v["approve"], json!({"message": "Accepted."}));
    assert_eq!(v["workflow"]["status"], "success");
    assert_eq!(v["workflow"]["name"], "w");
    assert!(
        v["workflow"]["stopped_at"].is_string(),
        "{:#}",
        v["workflow"]
    );
    assert_eq!(
        v["done"],
        json!({"build": "success", "hold": "success", "deploy": "success"})
    );
    let p = &v["pipeline"];
    assert_eq!(p["id"], pid);
    assert_eq!(p["state"], "created");
    assert_eq!(p["trigger_parameters"], json!({"greeting": "hello-api"}));
    assert_eq!(p["trigger"]["type"], "api");
    assert_eq!(p["trigger"]["actor"]["login"], "ann");
    assert_eq!(p["vcs"]["branch"], "main");
    assert_eq!(p["vcs"]["provider_name"], "Bitbucket");
    assert!(
        p["vcs"]["revision"].as_str().is_some_and(|r| r.len() == 40),
        "{p:#}"
    );
    assert_eq!(v["by_number"]["id"], pid);
    let source = v["config"]["source"].as_str().unwrap_or("");
    assert!(
        source.contains("greeting: {type: string"),
        "{:#}",
        v["config"]
    );
    assert!(
        v["config"]["compiled"]
            .as_str()
            .is_some_and(|c| c.contains("workflows")),
        "{:#}",
        v["config"]
    );
    assert!(
        v["listed"]
            .as_array()
            .is_some_and(|l| l.contains(&t["number"])),
        "{:#}",
        v["listed"]
    );

    let r = &v["rerun_jobs"];
    assert_ne!(r[0], r[1], "the rerun ran the job again: {r}");
    assert_eq!(v["rerun"]["workflow_id"], r[2]);
    assert_eq!(v["cancel"], json!({"message": "Accepted."}));
    assert_eq!(
        v["canceled_jobs"]["hold"], "canceled",
        "{:#}",
        v["canceled_jobs"]
    );
    assert_eq!(v["canceled_jobs"]["deploy"], "canceled");

    assert_eq!(v["ro_read"], t["number"]);
    assert_eq!(v["ro_trigger"][0], 403, "{}", v["ro_trigger"]);
    assert!(
        v["ro_trigger"][1]["message"]
            .as_str()
            .is_some_and(|m| m.contains("read-only")),
        "{}",
        v["ro_trigger"]
    );
}

/// A coordinator with project acme/widget (no repository behind it: its pipelines error at
/// the config, which is all the listing needs), an operator token and a read-only token.
fn bare() -> (harness::Coordinator, String, String) {
    let c = harness::Coordinator::start();
    for slug in ["acme/widget", "acme/other"] {
        c.cli(&[
            "project",
            "add",
            "--slug",
            slug,
            "--clone-url",
            &format!("git@bitbucket.org:{slug}.git"),
        ]);
    }
    let op = c.cli(&["operator", "new", "ann"]).trim().to_owned();
    let ro = c
        .cli(&["api-token", "new", "--project", "acme/widget", "reader"])
        .trim()
        .to_owned();
    (c, op, ro)
}

async fn call(
    client: &reqwest::Client,
    method: reqwest::Method,
    url: String,
    token: Option<String>,
    body: Option<Vec<u8>>,
) -> (u16, Value) {
    let mut req = client.request(method, url);
    if let Some(t) = token {
        req = req.header("Circle-Token", t);
    }
    if let Some(b) = body {
        req = req.header("content-type", "application/json").body(b);
    }
    let resp = req.send().await.expect("send");
    let status = resp.status().as_u16();
    let ct = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let text = resp.text().await.expect("body");
    assert!(ct.starts_with("application/json"), "{status} {ct}: {text}");
    (status, serde_json::from_str(&text).expect("json"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pagination_auth_the_404_body_and_hostile_input_get_circleci_answers() {
    let (c, op, ro) = bare();
    let base = format!("http://{}/api/v2", c.addr);
    let http = reqwest::Client::new();
    let get = |path: &str, token: Option<&str>| {
        call(
            &http,
            reqwest::Method::GET,
            format!("{base}{path}"),
            token.map(str::to_owned),
            None,
        )
    };
    let post = |path: &str, token: Option<&str>, body: &[u8]| {
        call(
            &http,
            reqwest::Method::POST,
            format!("{base}{path}"),
            token.map(str::to_owned),
            Some(body.to_vec()),
        )
    };

    // Auth: none, unknown, and the token as Basic's user name.
    let must_log_in = json!({"message": "You must log in first."});
    assert_eq!(get("/me", None).await, (401, must_log_in.clone()));
    assert_eq!(
        get("/me", Some("bosun-op-nope")).await,
        (401, must_log_in.clone())
    );
    let basic = http
        .get(format!("{base}/me"))
        .basic_auth(&op, Some(""))
        .send()
        .await
        .expect("basic");
    assert_eq!(basic.status().as_u16(), 200);
    let me: Value = basic.json().await.expect("json");
    assert_eq!(me["login"], "ann");
    let (_, me_ro) = get("/me", Some(&ro)).await;
    assert!(
        me_ro["login"]
            .as_str()
            .is_some_and(|l| l.contains("acme/widget")),
        "{me_ro}"
    );

    // 25 pipelines: two pages, the second found by the first's token, newest first.
    let mut numbers = Vec::new();
    for i in 0..25 {
        let body = if i % 2 == 0 {
            json!({"branch": "main", "parameters": {"n": i}})
        } else {
            json!({"branch": "dev"})
        };
        let (st, v) = post(
            "/project/bb/acme/widget/pipeline",
            Some(&op),
            body.to_string().as_bytes(),
        )
        .await;
        assert_eq!(st, 201, "{v}");
        numbers.push(v["number"].as_i64().expect("number"));
    }
    // Both slug spellings name the project.
    let (st, first) = get("/project/bitbucket/acme/widget/pipeline", Some(&op)).await;
    assert_eq!(st, 200, "{first}");
    let items = first["items"].as_array().expect("items");
    assert_eq!(items.len(), 20);
    assert_eq!(items[0]["number"], numbers[24]);
    let token = first["next_page_token"].as_str().expect("a next page");
    let (_, second) = get(
        &format!("/project/bb/acme/widget/pipeline?page-token={token}"),
        Some(&ro),
    )
    .await;
    let rest: Vec<i64> = second["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|p| p["number"].as_i64())
        .collect();
    assert_eq!(rest, numbers[..5].iter().rev().copied().collect::<Vec<_>>());
    assert_eq!(second["next_page_token"], Value::Null);
    let (_, dev) = get("/project/bb/acme/widget/pipeline?branch=dev", Some(&op)).await;
    assert_eq!(dev["items"].as_array().map(Vec::len), Some(12), "{dev}");
    assert!(dev["items"]
        .as_array()
        .expect("items")
        .iter()
        .all(|p| p["vcs"]["branch"] == "dev"));
    assert_eq!(
        get(
            "/project/bb/acme/widget/pipeline?page-token=garbage",
            Some(&op)
        )
        .await
        .0,
        400
    );

    // A project token reads its own project only, and acts on nothing.
    let project_not_found = json!({"message": "Project not found"});
    assert_eq!(
        get("/project/bb/acme/other/pipeline", Some(&ro)).await,
        (404, project_not_found.clone())
    );
    assert_eq!(
        get("/project/bb/acme/other/pipeline", Some(&op)).await.0,
        200
    );
    let (st, v) = post("/project/bb/acme/widget/pipeline", Some(&ro), b"{}").await;
    assert_eq!(st, 403, "{v}");

    // Unknown routes and methods: CircleCI's body.
    assert_eq!(
        get("/no/such/route", Some(&op)).await,
        (404, json!({"message": "Not found"}))
    );
    assert_eq!(
        get("/insights/bb/acme/widget/workflows", None).await,
        (404, json!({"message": "Not found"}))
    );
    let (st, v) = call(
        &http,
        reqwest::Method::DELETE,
        format!("{base}/me"),
        Some(op.clone()),
        None,
    )
    .await;
    assert_eq!(st, 405, "{v}");
    assert!(v["message"].is_string(), "{v}");

    // Bad slugs name no project (and never reach the store). (`..` segments never get here:
    // the client resolves them, as every URL parser does.)
    for slug in [
        "gh/acme/widget",
        "bb/acme/wid%20get",
        "bb/acme/wid%2Fget",
        "bb/ac%00me/widget",
        "bb/acme/.hidden",
        "bitbucket/nobody/widget",
        "BB/acme/widget",
    ] {
        assert_eq!(
            get(&format!("/project/{slug}/pipeline"), Some(&op)).await,
            (404, project_not_found.clone()),
            "{slug}"
        );
    }
    // Ids that are not UUIDs, or no one's.
    for path in [
        "/pipeline/1",
        "/pipeline/'%20OR%201=1",
        "/pipeline/5034460f-c7c4-4c43-9457-de07e2029e7b",
    ] {
        assert_eq!(
            get(path, Some(&op)).await,
            (404, json!({"message": "Pipeline not found"})),
            "{path}"
        );
    }
    assert_eq!(
        get(
            "/workflow/5034460f-c7c4-4c43-9457-de07e2029e7b/job",
            Some(&op)
        )
        .await,
        (404, json!({"message": "Workflow not found"}))
    );
    assert_eq!(
        get("/project/bb/acme/widget/job/99999", Some(&op)).await,
        (404, json!({"message": "Job not found"}))
    );

    // Bodies: bad JSON, wrong shapes, both refs, a body past the limit.
    for (body, says) in [
        (&b"{not json"[..], "Invalid JSON body"),
        (br#"{"branch": "main", "tag": "v1"}"#, "mutually exclusive"),
        (br#"{"branch": "a b"}"#, "branch"),
        (
            br#"{"parameters": {"x": {"deep": 1}}}"#,
            "`x` must be a string",
        ),
        (br#"{"parameters": [1]}"#, "Invalid JSON body"),
        (br#"{"branch": 7}"#, "Invalid JSON body"),
        (br#"{"brnach": "main"}"#, "unknown field"),
    ] {
        let (st, v) = post("/project/bb/acme/widget/pipeline", Some(&op), body).await;
        assert_eq!(st, 400, "{}: {v}", String::from_utf8_lossy(body));
        assert!(
            v["message"].as_str().is_some_and(|m| m.contains(says)),
            "{}: {v}",
            String::from_utf8_lossy(body)
        );
    }
    let huge = vec![b' '; bosun::coordinator::api_v2::MAX_BODY + 1];
    let (st, v) = post("/project/bb/acme/widget/pipeline", Some(&op), &huge).await;
    assert_eq!(st, 413, "{v}");
    assert!(v["message"].is_string(), "{v}");
    // None of the refused bodies made a pipeline.
    let (_, all) = get("/project/bb/acme/widget/pipeline", Some(&op)).await;
    assert_eq!(all["items"][0]["number"], numbers[24]);

    // A job queued on its own (no agent runs it): its details, then canceled, by an operator
    // only.
    let queued = c.cli(&[
        "enqueue",
        "--project",
        "acme/widget",
        "--ref",
        "main",
        "--job",
        "build",
    ]);
    let n: i64 = queued
        .split_whitespace()
        .find_map(|w| w.parse().ok())
        .unwrap_or_else(|| panic!("{queued}"));
    let job_path = format!("/project/bb/acme/widget/job/{n}");
    let (st, j) = get(&job_path, Some(&ro)).await;
    assert_eq!(
        (st, &j["status"], &j["name"]),
        (200, &json!("queued"), &json!("build")),
        "{j}"
    );
    assert_eq!(j["pipeline"], Value::Null, "{j}");
    assert_eq!(
        get(&format!("/project/bb/acme/other/job/{n}"), Some(&op)).await,
        (404, json!({"message": "Job not found"})),
        "a job is found under its own project only"
    );
    assert_eq!(
        post(&format!("{job_path}/cancel"), Some(&ro), b"").await.0,
        403
    );
    assert_eq!(
        post(&format!("{job_path}/cancel"), Some(&op), b"").await,
        (202, json!({"message": "Accepted."}))
    );
    let (_, j) = get(&job_path, Some(&op)).await;
    assert_eq!(j["status"], "canceled", "{j}");
    assert!(j["stopped_at"].is_string(), "{j}");

    // The pipeline errors at its config (no repository): CircleCI's state and errors.
    let id = all["items"][0]["id"].as_str().expect("id").to_owned();
    let t0 = std::time::Instant::now();
    let p = loop {
        let (_, v) = get(&format!("/pipeline/{id}"), Some(&op)).await;
        if v["state"] == "errored" {
            break v;
        }
        assert!(t0.elapsed() < Duration::from_secs(60), "{v:#}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(p["errors"][0]["type"], "config", "{p:#}");
    assert!(p["errors"][0]["message"].is_string(), "{p:#}");
    assert_eq!(
        get(&format!("/pipeline/{id}/config"), Some(&op)).await,
        (404, json!({"message": "Pipeline config not found"}))
    );
    drop(c);
}

/// `circleci-env-cli` (PyPI) manages a context and its variables through the API, as teams
/// run it; a workflow job naming that context then gets the values on a real agent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn circleci_env_cli_manages_a_context_whose_values_reach_a_job() {
    let Some(py) = python_with("circleci_env_cli") else {
        eprintln!(
            "skipped: no python3 with circleci_env_cli (scripts/test.sh --setup installs it)"
        );
        return;
    };
    harness::ensure_images();
    let config = format!(
        r#"version: 2.1
jobs:
  deploy:
    docker: [{{image: {img}}}]
    steps:
      - run: test "$DEPLOY_KEY_ID" = "id-from-the-cli" && test "${{#DEPLOY_SECRET}}" = 24 && echo context-values-ok
workflows:
  w:
    jobs:
      - deploy: {{context: [deploy-creds]}}
"#,
        img = harness::image("base")
    );
    let s = bitbucket::setup(&config, &["one"], &[]);
    let op = s.c.cli(&["operator", "new", "ann"]).trim().to_owned();
    let api = format!("http://{}/api", s.addr);
    let vars = s.c.dir().join("vars.env");
    std::fs::write(
        &vars,
        "DEPLOY_KEY_ID=id-from-the-cli\nDEPLOY_SECRET=s3cr3t-s3cr3t-s3cr3t-24c\nOBSOLETE=x\n",
    )
    .expect("vars");
    // The token through CIRCLE_TOKEN (click's envvar prefix), never on the command line.
    let env_cli = |args: &[&str], stdin: &str| {
        use std::io::Write;
        let mut child = Command::new(&py)
            .args(["-m", "circleci_env_cli", "-u", &api])
            .args(args)
            .env("CIRCLE_TOKEN", &op)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("circleci-env-cli");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(stdin.as_bytes())
            .expect("answer");
        let out = child.wait_with_output().expect("wait");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "{args:?}: {text}");
        text
    };
    let vars_arg = vars.to_str().expect("utf8");
    // Not found: it asks, and creates the context (owner: the workspace), then sets the file's
    // variables.
    let out = env_cli(
        &[
            "-c",
            "deploy-creds",
            "-p",
            "bitbucket/acme",
            "-ef",
            vars_arg,
        ],
        "y\n",
    );
    assert!(
        out.contains("Successfully created context: deploy-creds"),
        "{out}"
    );
    assert!(
        out.contains("Successfully added/updated context variable: DEPLOY_SECRET"),
        "{out}"
    );
    let out = env_cli(
        &[
            "-c",
            "deploy-creds",
            "-p",
            "bitbucket/acme",
            "-e",
            "OBSOLETE",
            "-d",
        ],
        "",
    );
    assert!(
        out.contains("Successfully deleted context variable: OBSOLETE"),
        "{out}"
    );
    let out = env_cli(&["-c", "deploy-creds", "-p", "bitbucket/acme", "-l"], "");
    assert!(
        out.contains("Context variables (2):\nDEPLOY_KEY_ID\nDEPLOY_SECRET"),
        "{out}"
    );
    assert!(!out.contains("s3cr3t"), "values are never listed: {out}");
    assert!(
        s.c.cli(&["context", "ls"]).contains("deploy-creds"),
        "the operator's CLI sees the same context"
    );

    // A pipeline through API v2: the job gets the context's values.
    let http = reqwest::Client::new();
    let t: Value = http
        .post(format!("{api}/v2/project/bb/acme/widget/pipeline"))
        .header("Circle-Token", &op)
        .json(&json!({"branch": "main"}))
        .send()
        .await
        .expect("trigger")
        .json()
        .await
        .expect("json");
    let number = t["number"].as_i64().expect("number");
    let store = bosun::coordinator::store::Store::open(&s.data).expect("store");
    let t0 = std::time::Instant::now();
    let p = loop {
        let p = store
            .list_pipelines(Some("acme/widget"), 5)
            .expect("pipelines")
            .into_iter()
            .find(|p| p.number == number);
        if let Some(p) = p.filter(|p| matches!(p.status.as_str(), "success" | "failed" | "errored"))
        {
            break p;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(180),
            "pipeline {number} did not end; agent log:\n{}",
            s.agents[0].log_text()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    let job = p.workflows[0].jobs[0].job_id.expect("job");
    let log = harness::job_log(&s.data, &job.to_string());
    assert_eq!(p.status.as_str(), "success", "{p:#?}\n{log}");
    assert!(log.contains("context-values-ok"), "{log}");

    // Deleted through the CLI (it asks first); the API lists none then.
    let out = env_cli(&["-c", "deploy-creds", "-p", "bitbucket/acme", "-d"], "y\n");
    assert!(
        out.contains("Successfully deleted context: deploy-creds"),
        "{out}"
    );
    let listed: Value = http
        .get(format!("{api}/v2/context?owner-slug=bb/acme"))
        .header("Circle-Token", &op)
        .send()
        .await
        .expect("list")
        .json()
        .await
        .expect("json");
    assert_eq!(listed, json!({"items": [], "next_page_token": null}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contexts_are_for_operators_only_and_take_only_ids_and_sane_bodies() {
    let (c, op, ro) = bare();
    let base = format!("http://{}/api/v2", c.addr);
    let http = reqwest::Client::new();
    let send = |m: reqwest::Method, path: &str, token: &str, body: Option<Value>| {
        call(
            &http,
            m,
            format!("{base}{path}"),
            Some(token.to_owned()),
            body.map(|b| b.to_string().into_bytes()),
        )
    };
    use reqwest::Method as M;
    // A read-only project token may not even list contexts.
    assert_eq!(send(M::GET, "/context", &ro, None).await.0, 403);
    let (st, ctx) = send(
        M::POST,
        "/context",
        &op,
        Some(json!({"name": "deploy", "owner": {"slug": "bb/acme", "type": "organization"}})),
    )
    .await;
    assert_eq!(st, 200, "{ctx}");
    let id = ctx["id"].as_str().expect("id").to_owned();
    assert!(bosun::coordinator::api_v2::is_uuid(&id), "{ctx}");
    assert_eq!(ctx["name"], "deploy");
    // A second one of the name, a bad owner, an owner id: refused.
    for body in [
        json!({"name": "deploy", "owner": {"slug": "bb/acme"}}),
        json!({"name": "x", "owner": {"slug": "gh/acme"}}),
        json!({"name": "x", "owner": {"id": "5034460f-c7c4-4c43-9457-de07e2029e7b"}}),
        json!({"name": "x", "extra": 1}),
    ] {
        let (st, v) = send(M::POST, "/context", &op, Some(body.clone())).await;
        assert_eq!(st, 400, "{body}: {v}");
    }
    // Listed by its workspace, not another's.
    let (_, l) = send(M::GET, "/context?owner-slug=bitbucket/acme", &op, None).await;
    assert_eq!(l["items"][0]["id"], id.as_str(), "{l}");
    let (_, other) = send(M::GET, "/context?owner-slug=bb/other", &op, None).await;
    assert_eq!(other["items"], json!([]), "{other}");
    // By id only: a name is not an id.
    assert_eq!(
        send(M::GET, "/context/deploy", &op, None).await,
        (404, json!({"message": "Context not found"}))
    );
    let var = format!("/context/{id}/environment-variable/API_KEY");
    let (st, v) = send(M::PUT, &var, &op, Some(json!({"value": "v1"}))).await;
    assert_eq!(
        (st, &v["variable"], &v["context_id"]),
        (200, &json!("API_KEY"), &json!(id.as_str()))
    );
    assert_eq!(
        send(M::PUT, &var, &ro, Some(json!({"value": "v2"})))
            .await
            .0,
        403
    );
    let big = "x".repeat(32 * 1024 + 1);
    assert_eq!(
        send(M::PUT, &var, &op, Some(json!({"value": big}))).await.0,
        400
    );
    let (st, v) = send(
        M::PUT,
        &format!("/context/{id}/environment-variable/1BAD-NAME"),
        &op,
        Some(json!({"value": "v"})),
    )
    .await;
    assert_eq!(st, 400, "{v}");
    let (_, vars) = send(
        M::GET,
        &format!("/context/{id}/environment-variable"),
        &op,
        None,
    )
    .await;
    assert_eq!(vars["items"].as_array().map(Vec::len), Some(1), "{vars}");
    assert!(
        !vars.to_string().contains("v1"),
        "values are never listed: {vars}"
    );
    assert_eq!(send(M::DELETE, &var, &op, None).await.0, 200);
    assert_eq!(send(M::DELETE, &var, &op, None).await.0, 404);
    assert_eq!(
        send(M::DELETE, &format!("/context/{id}"), &op, None)
            .await
            .0,
        200
    );
    assert_eq!(
        send(M::GET, &format!("/context/{id}"), &op, None).await.0,
        404
    );
}

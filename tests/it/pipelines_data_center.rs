//! Bitbucket Data Center's webhooks end to end, real parts only: `bosun coordinator serve`, a
//! `bosun agent`, the Docker engine and the Bitbucket stand-in for git. Deliveries are in Data
//! Center's shapes (Atlassian's "Event payload" page: `repo:refs_changed`, `pr:*`,
//! `diagnostics:ping`), signed as Data Center signs them (`X-Hub-Signature: sha256=<hex>`),
//! and de-duplicated by Data Center's `X-Request-Id`.

use crate::harness::bitbucket::*;
use crate::harness::image;
use bosun::coordinator::bitbucket::signature::sign;
use std::time::Duration;

const SERVER: &str = "https://bitbucket.example.com";
/// The stand-in's repository as Data Center numbers it.
const REPO_ID: u64 = 84;

/// A Data Center delivery: `X-Request-Id` (not Cloud's `X-Request-UUID`), signed with
/// `secret`.
async fn deliver_dc(
    addr: &str,
    event: &str,
    delivery: &str,
    body: &str,
    secret: &str,
) -> (u16, serde_json::Value) {
    let r = reqwest::Client::new()
        .post(format!("http://{addr}/webhooks/bitbucket"))
        .header("X-Event-Key", event)
        .header("X-Request-Id", delivery)
        .header("X-Hub-Signature", sign(secret.as_bytes(), body.as_bytes()))
        .header("Content-Type", "application/json; charset=utf-8")
        .body(body.to_owned())
        .send()
        .await
        .expect("deliver");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(serde_json::Value::Null))
}

/// A Data Center repository object (as in every payload), of project `key`.
fn repository(id: u64, key: &str, slug: &str) -> serde_json::Value {
    serde_json::json!({
        "slug": slug, "id": id, "name": slug, "scmId": "git", "state": "AVAILABLE",
        "statusMessage": "Available", "forkable": true, "public": false,
        "project": {"key": key, "id": 7, "name": key, "public": false, "type": "NORMAL"},
        "links": {
            "clone": [{"href": format!("ssh://git@bitbucket.example.com:7999/{}/{slug}.git", key.to_lowercase()), "name": "ssh"}],
            "self": [{"href": format!("{SERVER}/projects/{key}/repos/{slug}/browse")}]
        }
    })
}

fn actor() -> serde_json::Value {
    serde_json::json!({"name": "ada", "emailAddress": "ada@example.com", "id": 3,
                       "displayName": "Ada", "active": true, "slug": "ada", "type": "NORMAL"})
}

/// `repo:refs_changed` of one ref (`refs/heads/x` or `refs/tags/x`) moved to `hash`, whose
/// commit says `message` (`toHash` of zeros: a deleted ref).
fn refs_changed(slug: &str, ref_id: &str, hash: &str, message: &str) -> String {
    let (kind, display) = match ref_id.strip_prefix("refs/tags/") {
        Some(t) => ("TAG", t),
        None => ("BRANCH", ref_id.trim_start_matches("refs/heads/")),
    };
    let change = if hash.bytes().all(|b| b == b'0') {
        "DELETE"
    } else {
        "UPDATE"
    };
    serde_json::json!({
        "eventKey": "repo:refs_changed",
        "date": "2026-12-01T10:00:00+0000",
        "actor": actor(),
        "repository": repository(REPO_ID, "ACME", slug),
        "changes": [{
            "ref": {"id": ref_id, "displayId": display, "type": kind},
            "refId": ref_id,
            "fromHash": "ecddabb624f6f5ba43816f5926e580a5f680a932",
            "toHash": hash,
            "type": change
        }],
        "commits": [{"id": hash, "displayId": &hash[..11],
                     "author": {"name": "ada", "emailAddress": "ada@example.com"},
                     "authorTimestamp": 1764583200000u64, "message": message, "parents": []}],
        "toCommit": {"id": hash, "displayId": &hash[..11], "message": message, "parents": []}
    })
    .to_string()
}

/// `event` (`pr:opened`, …) of pull request `id` from `from` (a repository object) to the
/// project's repository.
fn pull_request(event: &str, id: u64, from: serde_json::Value, branch: &str, hash: &str) -> String {
    serde_json::json!({
        "eventKey": event,
        "date": "2026-12-01T10:00:00+0000",
        "actor": actor(),
        "pullRequest": {
            "id": id, "version": 0, "title": "a contribution", "state": "OPEN", "open": true,
            "closed": false, "createdDate": 1764583200000u64, "updatedDate": 1764583200000u64,
            "fromRef": {"id": format!("refs/heads/{branch}"), "displayId": branch,
                        "latestCommit": hash, "repository": from},
            "toRef": {"id": "refs/heads/main", "displayId": "main",
                      "latestCommit": "178864a7d521b6f5e720b386b2c2b0ef8563e0dc",
                      "repository": repository(REPO_ID, "ACME", "widget")},
            "locked": false,
            "author": {"user": actor(), "role": "AUTHOR", "approved": false, "status": "UNAPPROVED"},
            "reviewers": [], "participants": [],
            "links": {"self": [{"href": format!("{SERVER}/projects/ACME/repos/widget/pull-requests/{id}")}]}
        }
    })
    .to_string()
}

/// A Data Center project keyed by server and repository id: a push builds on a real agent, a
/// replay and a bad signature make nothing, `[ci skip]` and a deleted branch are skipped, a
/// tag push runs its tag-filtered job, a fork's pull request follows the fork rule, a pull
/// request opened with "only build pull requests" builds and its merge closes it, and the
/// test connection answers. The repository's name follows the payload (renamed, the project
/// keeps its settings).
#[tokio::test(flavor = "multi_thread")]
async fn data_center_deliveries_run_pipelines_by_the_same_rules_as_cloud() {
    let img = image("base");
    let config = format!(
        r#"version: 2.1
jobs:
  build:
    docker: [{{image: {img}}}]
    steps:
      - checkout
      - run: echo "built << pipeline.git.branch >><< pipeline.git.tag >> by << pipeline.trigger_source >>"
workflows:
  main:
    jobs:
      - build:
          filters: {{tags: {{only: /^v.*/}}}}
"#
    );
    let repo_id = REPO_ID.to_string();
    let s = setup_keyed(
        &config,
        &["--data-center", SERVER, "--repository-id", &repo_id],
        &["--build-pull-requests-only", "true"],
        |c, rig| vec![c.agent(rig, "agent-dc").start()],
    );
    let sha = s.repo.head();
    s.repo.push("HEAD:refs/heads/feature");

    // The test connection: answered, nothing made.
    let (code, answer) = deliver_dc(
        &s.addr,
        "diagnostics:ping",
        "{ping}",
        r#"{"test": true}"#,
        "",
    )
    .await;
    assert_eq!(code, 200, "{answer}");

    // A push to the default branch builds.
    let body = refs_changed("widget", "refs/heads/main", &sha, "a change");
    let (code, answer) = deliver_dc(&s.addr, "repo:refs_changed", "dc-1", &body, SECRET).await;
    assert_eq!(code, 202, "{answer}");
    let id = answer["pipelines"][0]["id"].as_i64().expect("pipeline id");
    // Replayed with the same X-Request-Id: nothing made.
    let (code, again) = deliver_dc(&s.addr, "repo:refs_changed", "dc-1", &body, SECRET).await;
    assert_eq!((code, again["ignored"].is_string()), (200, true), "{again}");
    // Another secret's signature: refused, and never a pipeline.
    let (code, refused) = deliver_dc(&s.addr, "repo:refs_changed", "dc-2", &body, "guess").await;
    assert_eq!(code, 401, "{refused}");
    assert!(!refused.to_string().contains(SECRET), "{refused}");
    let p = wait_pipeline(
        &s.data,
        id,
        &["success", "failed", "errored", "canceled"],
        Duration::from_secs(120),
    );
    assert_eq!(p.status.as_str(), "success", "{p:#?}");
    assert_eq!(p.revision.as_deref(), Some(sha.as_str()));
    assert_eq!(p.trigger_source, "webhook");
    // The project follows the repository's name as Data Center gives it (PROJECT/slug); the
    // slug it was added with still resolves.
    assert_eq!(p.project, "ACME/widget");
    let old = store(&s.data)
        .list_pipelines(Some("acme/widget"), 10)
        .expect("old slug");
    assert_eq!(old.len(), 1);

    // `[ci skip]` in the head commit, and a deleted branch: skipped.
    let skip = refs_changed("widget", "refs/heads/main", &sha, "docs\n\n[ci skip]");
    let (code, answer) = deliver_dc(&s.addr, "repo:refs_changed", "dc-3", &skip, SECRET).await;
    assert_eq!(code, 202, "{answer}");
    assert_eq!(
        answer["pipelines"].as_array().map(Vec::len),
        Some(0),
        "{answer}"
    );
    assert!(
        answer["skipped"][0]
            .as_str()
            .unwrap_or("")
            .contains("[ci skip]"),
        "{answer}"
    );
    let gone = refs_changed("widget", "refs/heads/old", &"0".repeat(40), "");
    let (_, answer) = deliver_dc(&s.addr, "repo:refs_changed", "dc-4", &gone, SECRET).await;
    assert_eq!(answer["skipped"][0], "a deleted ref", "{answer}");
    // Only pull requests build: a branch without one does not.
    let feature = refs_changed("widget", "refs/heads/feature", &sha, "wip");
    let (_, answer) = deliver_dc(&s.addr, "repo:refs_changed", "dc-5", &feature, SECRET).await;
    assert_eq!(
        answer["pipelines"].as_array().map(Vec::len),
        Some(0),
        "{answer}"
    );

    // A tag push runs the tag-filtered job.
    s.repo.tag("v1.0");
    s.repo.push("refs/tags/v1.0");
    let tag = refs_changed("widget", "refs/tags/v1.0", &sha, "a change");
    let (code, answer) = deliver_dc(&s.addr, "repo:refs_changed", "dc-6", &tag, SECRET).await;
    assert_eq!(code, 202, "{answer}");
    let tag_id = answer["pipelines"][0]["id"].as_i64().expect("tag pipeline");

    // A pull request from a fork (another repository id): the project builds no forks.
    let fork = repository(99, "~EVE", "widget");
    let body = pull_request("pr:opened", 3, fork, "feature", &sha);
    let (code, answer) = deliver_dc(&s.addr, "pr:opened", "dc-7", &body, SECRET).await;
    assert_eq!(code, 202, "{answer}");
    assert_eq!(
        answer["pipelines"].as_array().map(Vec::len),
        Some(0),
        "{answer}"
    );
    assert!(
        answer["skipped"][0].as_str().unwrap_or("").contains("fork"),
        "{answer}"
    );
    // Its own branch's pull request opened: builds (only pull requests build), with its link.
    let own = repository(REPO_ID, "ACME", "widget");
    let body = pull_request("pr:opened", 4, own.clone(), "feature", &sha);
    let (code, answer) = deliver_dc(&s.addr, "pr:opened", "dc-8", &body, SECRET).await;
    assert_eq!(code, 202, "{answer}");
    let pr_id = answer["pipelines"][0]["id"].as_i64().expect("pr pipeline");
    // While it is open, the branch's pushes build and carry it; merged, they do not.
    let (_, answer) = deliver_dc(&s.addr, "repo:refs_changed", "dc-9", &feature, SECRET).await;
    assert_eq!(
        answer["pipelines"].as_array().map(Vec::len),
        Some(1),
        "{answer}"
    );
    let body = pull_request("pr:merged", 4, own, "feature", &sha);
    let (_, answer) = deliver_dc(&s.addr, "pr:merged", "dc-10", &body, SECRET).await;
    assert_eq!(
        answer["pipelines"].as_array().map(Vec::len),
        Some(0),
        "{answer}"
    );
    let (_, answer) = deliver_dc(&s.addr, "repo:refs_changed", "dc-11", &feature, SECRET).await;
    assert_eq!(
        answer["pipelines"].as_array().map(Vec::len),
        Some(0),
        "{answer}"
    );

    for (id, want) in [(tag_id, "v1.0"), (pr_id, "feature")] {
        let p = wait_pipeline(
            &s.data,
            id,
            &["success", "failed", "errored", "canceled"],
            Duration::from_secs(120),
        );
        assert_eq!(p.status.as_str(), "success", "{p:#?}");
        let job = p.workflows[0].jobs[0].job_id.expect("job");
        let log =
            String::from_utf8_lossy(&store(&s.data).log_from(job, 0).expect("log")).into_owned();
        assert!(log.contains(&format!("built {want} by webhook")), "{log}");
    }
    let pr = store(&s.data)
        .pipeline(pr_id)
        .expect("read")
        .expect("pipeline");
    assert_eq!(pr.pr_number, Some(4));
    assert_eq!(pr.event, "pull_request");

    // Another repository id (say, another server's repository 85): no project.
    let body =
        refs_changed("widget", "refs/heads/main", &sha, "x").replace("\"id\":84", "\"id\":85");
    let (code, answer) = deliver_dc(&s.addr, "repo:refs_changed", "dc-12", &body, SECRET).await;
    assert_eq!(code, 404, "{answer}");
}

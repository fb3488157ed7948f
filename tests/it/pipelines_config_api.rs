//! A pipeline's config read through Bitbucket's REST API (issue 16's webhook → claim budget),
//! real parts: `bosun coordinator serve`, a `bosun agent`, Docker, the Bitbucket stand-in
//! for git, and an HTTP server in the test standing in for Bitbucket's REST API (which cannot
//! exist here): it records every request it receives (connection, method, path,
//! authorization) and answers the config request as the test says.

use crate::harness::bitbucket::*;
use crate::harness::image;
use std::time::Duration;

/// The repository's config. The API's copy is the same plus a job filtered out of every
/// branch (`from-api`): the agent, which reads the config from its checkout, runs the same
/// `build` either way, and the pipeline shows which copy the coordinator compiled.
fn config(img: &str, from_api: bool) -> String {
    let mut c = format!(
        "version: 2.1\njobs:\n  build:\n    docker: [{{image: {img}}}]\n    steps: [{{run: echo built}}]\nworkflows:\n  w:\n    jobs:\n      - build\n"
    );
    if from_api {
        c.push_str(
            "      - build: {name: from-api, filters: {branches: {only: never-a-branch}}}\n",
        );
    }
    c
}

/// The last use of the config mirror (its `bosun-url`'s mtime); `None`: no mirror.
fn mirror_used(s: &Setup) -> Option<std::time::SystemTime> {
    let root = s.data.join("config-mirrors/mirrors");
    let dirs: Vec<_> = std::fs::read_dir(root)
        .ok()?
        .flatten()
        .filter(|e| e.path().is_dir() && !e.file_name().to_string_lossy().starts_with('.'))
        .collect();
    assert!(dirs.len() <= 1, "one project, one mirror: {dirs:?}");
    std::fs::metadata(dirs.first()?.path().join("bosun-url"))
        .and_then(|m| m.modified())
        .ok()
}

/// Push a new commit, deliver it, wait for its pipeline; returns (sha, whether the pipeline
/// was compiled from the API's copy).
async fn run_once(s: &Setup, n: usize) -> (String, bool) {
    s.repo.write("round", &format!("{n}\n"));
    let sha = s.repo.commit(&format!("round {n}"));
    s.repo.push("HEAD:refs/heads/main");
    let body = push_payload("acme/widget", "branch", "main", &sha, "a change");
    let (code, answer) =
        deliver(&s.addr, "repo:push", &format!("{{api-{n}}}"), &body, SECRET).await;
    assert_eq!(code, 202, "{answer}");
    let id = answer["pipelines"][0]["id"].as_i64().expect("pipeline id");
    let p = wait_pipeline(
        &s.data,
        id,
        &["success", "failed", "errored", "canceled"],
        Duration::from_secs(120),
    );
    assert_eq!(p.status.as_str(), "success", "{p:#?}");
    assert_eq!(p.revision.as_deref(), Some(sha.as_str()));
    assert_eq!(job_status(&p, "build"), "success");
    let api = match job_status(&p, "from-api").as_str() {
        "not_run" => true,
        "<absent>" => false,
        other => panic!("from-api {other}: {p:#?}"),
    };
    (sha, api)
}

/// With API credentials, the config comes from the API (on one kept-alive connection, with
/// the project's credentials, at the pushed commit) and the mirror is not touched; on a
/// refusal or an oversized answer the pipeline still runs, from the config mirror over SSH;
/// without credentials nothing is asked of the API.
#[tokio::test(flavor = "multi_thread")]
async fn the_config_is_read_through_the_api_when_it_can_be_and_from_the_mirror_otherwise() {
    let img = image("base");
    let s = setup(&config(&img, false), &["agent-api"], &[]);
    let (api, url) = ApiStandIn::start();
    s.c.cli(&[
        "project",
        "set",
        "--slug",
        "acme/widget",
        "--status-api",
        &url,
    ]);
    *api.answer.lock().expect("lock") = Answer::File(config(&img, true));

    let (sha1, from_api) = run_once(&s, 1).await;
    assert!(from_api);
    let (sha2, from_api) = run_once(&s, 2).await;
    assert!(from_api);
    assert_eq!(mirror_used(&s), None, "no SSH fetch was made");
    let gets = api.config_gets();
    assert_eq!(gets.len(), 2, "{gets:?}");
    for (got, sha) in gets.iter().zip([&sha1, &sha2]) {
        assert_eq!(
            got.2,
            format!("/repositories/acme/widget/src/{sha}/.circleci/config.yml")
        );
        // `bosun-bot:app-password-9`, as the statuses are signed.
        assert_eq!(got.3, "Basic Ym9zdW4tYm90OmFwcC1wYXNzd29yZC05");
    }
    assert_eq!(gets[0].0, gets[1].0, "one kept-alive connection: {gets:?}");

    // Past the size limit: refused whole, read from the mirror.
    *api.answer.lock().expect("lock") = Answer::Endless;
    let (_, from_api) = run_once(&s, 3).await;
    assert!(!from_api);
    let used = mirror_used(&s).expect("the mirror was fetched into");
    // Answering again: the API (such failures are tried again), the mirror left alone.
    *api.answer.lock().expect("lock") = Answer::File(config(&img, true));
    let (_, from_api) = run_once(&s, 4).await;
    assert!(from_api);
    assert_eq!(mirror_used(&s), Some(used));
    assert_eq!(api.config_gets().len(), 4);
    // Credentials refused: read from the mirror, and not asked again for a while (the next
    // pipeline goes to the mirror without a request, even though the API would answer).
    *api.answer.lock().expect("lock") = Answer::Status(403);
    std::thread::sleep(Duration::from_millis(20));
    let (_, from_api) = run_once(&s, 5).await;
    assert!(!from_api);
    let used_again = mirror_used(&s).expect("mirror");
    assert!(used_again > used, "the mirror was fetched into again");
    assert_eq!(api.config_gets().len(), 5);
    *api.answer.lock().expect("lock") = Answer::File(config(&img, true));
    let (_, from_api) = run_once(&s, 6).await;
    assert!(!from_api, "refused credentials are not tried again at once");
    assert_eq!(api.config_gets().len(), 5, "no request was made");
    // New credentials are tried at once.
    let creds = s.c.dir().join("status-creds-renewed");
    std::fs::write(&creds, "bosun-bot:app-password-10").expect("creds");
    s.c.cli(&[
        "project",
        "set",
        "--slug",
        "acme/widget",
        "--status-credentials-file",
        creds.to_str().expect("utf8"),
    ]);
    let (_, from_api) = run_once(&s, 7).await;
    assert!(from_api);
    let gets = api.config_gets();
    assert_eq!(gets.len(), 6);
    assert_eq!(
        gets[5].3, "Basic Ym9zdW4tYm90OmFwcC1wYXNzd29yZC0xMA==",
        "the new credentials"
    );

    // Without an API (statuses off), nothing is asked of it.
    s.c.cli(&[
        "project",
        "set",
        "--slug",
        "acme/widget",
        "--status-api",
        "",
    ]);
    let (_, from_api) = run_once(&s, 8).await;
    assert!(!from_api);
    assert_eq!(api.config_gets().len(), 6);
}

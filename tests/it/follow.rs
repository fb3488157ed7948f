//! `project follow`, `project unfollow` and `user key add|rm` against an HTTP server in the
//! test playing Bitbucket's REST API (`harness::bitbucket_api`), Cloud's and Data Center's
//! shapes: what is added and removed on Bitbucket and recorded in the store, paging, a 429,
//! a 403 half way (nothing left behind), following twice (nothing doubled), tokens in no
//! output; and end to end, a followed project whose signed push runs a pipeline on a real
//! agent that checks out with the deploy key follow added.

use crate::harness::bitbucket::{job_id, job_status, push_payload, wait_pipeline};
use crate::harness::bitbucket_api::{BitbucketApi, Fault, OnKey, DC_ID, DC_USER, UUID};
use crate::harness::{self, image, Coordinator, Rig};
use bosun::coordinator::bitbucket::signature::sign;
use bosun::coordinator::store::{FollowStore, ProjectStore, Store};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

const EMAIL: &str = "ada@example.com";
const API_TOKEN: &str = "ATATT3xFfGF0-api-token-7d1e";
const DC_TOKEN: &str = "BBDC-http-access-token-55aa";
const PUBLIC_URL: &str = "https://ci.example.com";
const LABEL: &str = "bosun https://ci.example.com";
const HOOK_URL: &str = "https://ci.example.com/webhooks/bitbucket";

fn basic() -> String {
    use base64::Engine;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{EMAIL}:{API_TOKEN}"))
    )
}

struct Out {
    ok: bool,
    stdout: String,
    stderr: String,
}

/// `bosun coordinator ARGS --data DATA`, with the most verbose log the binary has, so that a
/// token in any log line shows up in `stderr`.
fn cli(data: &Path, args: &[&str]) -> Out {
    let out = harness::output(
        Command::new(harness::bosun_bin())
            .arg("coordinator")
            .args(args)
            .arg("--data")
            .arg(data)
            .env("BOSUN_LOG", "trace"),
    );
    Out {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn creds(dir: &Path, text: &str) -> String {
    let f = dir.join("api-credentials");
    std::fs::write(&f, text).expect("credentials");
    f.to_str().expect("utf8").to_owned()
}

fn cloud_follow(data: &Path, api: &BitbucketApi, creds: &str, verb: &str) -> Out {
    cli(
        data,
        &[
            "project",
            verb,
            "--bitbucket",
            "acme/widget",
            "--api",
            &api.cloud_api(),
            "--api-credentials-file",
            creds,
            "--public-url",
            PUBLIC_URL,
        ],
    )
}

/// No token in anything the command said, nor in the store's files.
fn no_token(out: &Out, data: &Path, token: &str) {
    assert!(!out.stdout.contains(token), "stdout: {}", out.stdout);
    assert!(!out.stderr.contains(token), "stderr: {}", out.stderr);
    for f in std::fs::read_dir(data).expect("data dir") {
        let p = f.expect("entry").path();
        if p.is_file() {
            let bytes = std::fs::read(&p).expect("read");
            assert!(
                !String::from_utf8_lossy(&bytes).contains(token),
                "{} holds the token",
                p.display()
            );
        }
    }
}

/// The public line of a private key text (OpenSSH's own reading).
fn public_of(private: &str) -> String {
    let dir = tempfile::tempdir().expect("tempdir");
    let f = dir.path().join("k");
    std::fs::write(&f, private).expect("key");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let line = harness::run(Command::new("ssh-keygen").arg("-y").arg("-f").arg(&f));
    line.split_whitespace()
        .take(2)
        .collect::<Vec<_>>()
        .join(" ")
}

fn material(line: &str) -> String {
    line.split_whitespace()
        .take(2)
        .collect::<Vec<_>>()
        .join(" ")
}

fn ours<'a>(hooks: &'a [serde_json::Value], url: &str) -> Vec<&'a serde_json::Value> {
    hooks.iter().filter(|h| h["url"] == url).collect()
}

#[test]
fn cloud_follow_adds_one_key_and_one_webhook_and_unfollow_removes_only_those() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let api = BitbucketApi::start(&basic(), None);
    // Other people's keys and webhooks, more than a page of each.
    for i in 0..3 {
        api.add_foreign_deploy_key(
            &format!("laptop {i}"),
            &format!("ssh-ed25519 AAAAforeign{i}"),
        );
    }
    api.add_foreign_hook("https://chat.example.com/hook");
    api.add_foreign_hook("https://deploy.example.com/hook");
    api.add_foreign_hook("https://other.example.com/hook");
    // Bitbucket's rate limit, once: waited out as Retry-After says.
    let mut limit = Fault::new(
        "GET",
        "/deploy-keys",
        429,
        "Rate limit for this resource has been exceeded",
    );
    limit.retry_after = Some(1);
    api.fault(limit);
    let creds = creds(dir.path(), &format!("{EMAIL}:{API_TOKEN}\n"));

    let out = cloud_follow(&data, &api, &creds, "follow");
    assert!(out.ok, "follow failed: {}\n{}", out.stdout, out.stderr);
    no_token(&out, &data, API_TOKEN);
    assert!(
        out.stdout.contains(&format!("followed acme/widget {UUID}")),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("deploy key SHA256:"), "{}", out.stdout);
    assert!(
        out.stdout.contains(&format!("\"{LABEL}\"")),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("webhook {hook-"), "{}", out.stdout);

    // Every request signed with the API token as HTTP Basic.
    let reqs = api.requests();
    for r in &reqs {
        assert_eq!(
            r.header("authorization"),
            Some(basic().as_str()),
            "{}",
            r.call()
        );
    }
    let calls: Vec<String> = reqs
        .iter()
        .map(|r| format!("{} {}", r.method, r.path))
        .collect();
    // The 429 was waited out (the same page asked twice) and every page was read.
    let first_page = "GET /2.0/repositories/acme/widget/deploy-keys?pagelen=100";
    assert_eq!(
        calls.iter().filter(|c| *c == first_page).count(),
        2,
        "{calls:#?}"
    );
    assert!(
        calls
            .iter()
            .any(|c| c
                .starts_with("GET /2.0/repositories/acme/widget/deploy-keys?pagelen=100&page=2")),
        "{calls:#?}"
    );
    assert!(
        calls
            .iter()
            .any(|c| c.starts_with("GET /2.0/repositories/acme/widget/hooks?pagelen=100&page=2")),
        "{calls:#?}"
    );

    // Bitbucket has one more key (ours, labelled) and one more webhook (ours).
    let keys = api.deploy_keys();
    assert_eq!(keys.len(), 4, "{keys:#?}");
    let mine: Vec<_> = keys.iter().filter(|k| k.label == LABEL).collect();
    assert_eq!(mine.len(), 1);
    let post_key = reqs
        .iter()
        .find(|r| r.call() == "POST /2.0/repositories/acme/widget/deploy-keys")
        .expect("key added");
    assert_eq!(post_key.json()["label"], LABEL);
    assert!(post_key.json()["key"]
        .as_str()
        .expect("key")
        .starts_with("ssh-ed25519 "));
    assert!(!post_key.body.contains("PRIVATE"), "{}", post_key.body);
    let hooks = api.hooks();
    let hook = ours(&hooks, HOOK_URL);
    assert_eq!(hook.len(), 1, "{hooks:#?}");
    let hook = hook[0].clone();
    assert_eq!(hook["active"], true);
    assert_eq!(
        hook["events"],
        serde_json::json!([
            "repo:push",
            "pullrequest:created",
            "pullrequest:updated",
            "pullrequest:fulfilled",
            "pullrequest:rejected"
        ])
    );
    let secret = hook["secret"].as_str().expect("secret").to_owned();
    assert!(secret.len() >= 32, "{secret}");

    // The store holds the project keyed by the UUID, the private half of that key and the
    // webhook's secret (sealed: the file never shows them).
    let store = Store::open(&data).expect("store");
    let f = store.followed(UUID).expect("read").expect("project");
    assert_eq!(f.slug, "acme/widget");
    let private = f.deploy_key.clone().expect("deploy key");
    assert_eq!(public_of(&private), material(&mine[0].key));
    assert_eq!(
        f.webhook_secret.as_deref().map(String::as_str),
        Some(secret.as_str())
    );
    for f in std::fs::read_dir(&data).expect("dir") {
        let bytes = std::fs::read(f.expect("entry").path()).unwrap_or_default();
        let text = String::from_utf8_lossy(&bytes);
        assert!(
            !text.contains(&secret) && !text.contains("OPENSSH PRIVATE"),
            "sealed at rest"
        );
    }
    drop(store);

    // Following again adds nothing and changes nothing.
    let before = api.requests().len();
    let again = cloud_follow(&data, &api, &creds, "follow");
    assert!(again.ok, "{}\n{}", again.stdout, again.stderr);
    no_token(&again, &data, API_TOKEN);
    assert!(again.stdout.contains("kept"), "{}", again.stdout);
    let writes: Vec<_> = api.requests()[before..]
        .iter()
        .filter(|r| r.method != "GET")
        .map(|r| r.call())
        .collect();
    assert!(
        writes.is_empty(),
        "a second follow changed Bitbucket: {writes:?}"
    );
    assert_eq!(api.deploy_keys(), keys);
    assert_eq!(api.hooks(), hooks);

    // Unfollow: ours go, the others stay; the project and its history stay.
    let out = cloud_follow(&data, &api, &creds, "unfollow");
    assert!(out.ok, "{}\n{}", out.stdout, out.stderr);
    no_token(&out, &data, API_TOKEN);
    assert_eq!(api.deploy_keys().len(), 3);
    assert!(api
        .deploy_keys()
        .iter()
        .all(|k| k.label.starts_with("laptop")));
    assert_eq!(api.hooks().len(), 3);
    assert!(ours(&api.hooks(), HOOK_URL).is_empty());
    let store = Store::open(&data).expect("store");
    let f = store.followed(UUID).expect("read").expect("project kept");
    assert!(f.deploy_key.is_none() && f.webhook_secret.is_none());
    assert_eq!(
        store.project_slugs().expect("slugs"),
        vec!["acme/widget".to_owned()]
    );
}

#[test]
fn a_403_half_way_leaves_nothing_behind_and_names_the_call() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let api = BitbucketApi::start(&basic(), None);
    api.add_foreign_deploy_key("laptop", "ssh-ed25519 AAAAforeign");
    api.fault(Fault::new(
        "POST",
        "/hooks",
        403,
        "Your credentials lack one or more required privilege scopes.",
    ));
    let creds = creds(dir.path(), &format!("{EMAIL}:{API_TOKEN}"));
    let out = cloud_follow(&data, &api, &creds, "follow");
    assert!(!out.ok, "{}", out.stdout);
    no_token(&out, &data, API_TOKEN);
    for want in [
        "POST /2.0/repositories/acme/widget/hooks",
        "403",
        "Your credentials lack one or more required privilege scopes.",
    ] {
        assert!(out.stderr.contains(want), "{want} not in: {}", out.stderr);
    }
    // The key it had added is gone again; the webhook never came; the store has no project.
    let calls: Vec<String> = api.requests().iter().map(|r| r.call()).collect();
    let added = calls
        .iter()
        .position(|c| c == "POST /2.0/repositories/acme/widget/deploy-keys")
        .expect("key added first");
    assert!(
        calls[added..]
            .iter()
            .any(|c| c.starts_with("DELETE /2.0/repositories/acme/widget/deploy-keys/")),
        "{calls:#?}"
    );
    assert_eq!(api.deploy_keys().len(), 1, "{:#?}", api.deploy_keys());
    assert!(api.hooks().is_empty());
    let store = Store::open(&data).expect("store");
    assert!(store.followed(UUID).expect("read").is_none());
    assert!(store.project_slugs().expect("slugs").is_empty());
    drop(store);

    // The same with the store failing last: the project's slug held by another repository.
    let api = BitbucketApi::start(&basic(), None);
    harness::coordinator_cli(
        &data,
        &[
            "project",
            "add",
            "--slug",
            "acme/widget",
            "--clone-url",
            "git@bitbucket.org:acme/widget.git",
            "--uuid",
            "{someone-else}",
        ],
    );
    let out = cloud_follow(&data, &api, &creds, "follow");
    assert!(!out.ok, "{}", out.stdout);
    assert!(
        out.stderr.contains("exists already for another repository"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("taken back"), "{}", out.stderr);
    assert!(api.deploy_keys().is_empty(), "{:#?}", api.deploy_keys());
    assert!(api.hooks().is_empty(), "{:#?}", api.hooks());
}

#[test]
fn data_center_follow_with_a_bearer_token_in_its_own_shapes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let api = BitbucketApi::start(&format!("Bearer {DC_TOKEN}"), None);
    for i in 0..3 {
        api.add_foreign_deploy_key(
            &format!("build box {i}"),
            &format!("ssh-ed25519 AAAAforeign{i} build box {i}"),
        );
    }
    let creds = creds(dir.path(), &format!("bearer:{DC_TOKEN}"));
    let follow = |verb: &str| {
        cli(
            &data,
            &[
                "project",
                verb,
                "--data-center",
                &api.base,
                "--project",
                "ACME",
                "--repo",
                "widget",
                "--api-credentials-file",
                &creds,
                "--public-url",
                PUBLIC_URL,
            ],
        )
    };
    let out = follow("follow");
    assert!(out.ok, "{}\n{}", out.stdout, out.stderr);
    no_token(&out, &data, DC_TOKEN);
    let server = api.base.trim_start_matches("http://").to_owned();
    let key = format!("bitbucket-dc:{server}/{DC_ID}");
    assert!(
        out.stdout.contains(&format!("followed ACME/widget {key}")),
        "{}",
        out.stdout
    );
    let reqs = api.requests();
    for r in &reqs {
        assert_eq!(
            r.header("authorization"),
            Some(format!("Bearer {DC_TOKEN}").as_str())
        );
    }
    let calls: Vec<String> = reqs
        .iter()
        .map(|r| format!("{} {}", r.method, r.path))
        .collect();
    assert!(
        calls.contains(
            &"GET /rest/keys/1.0/projects/ACME/repos/widget/ssh?start=2&limit=100".to_owned()
        ),
        "{calls:#?}"
    );
    let post = reqs
        .iter()
        .find(|r| r.call() == "POST /rest/keys/1.0/projects/ACME/repos/widget/ssh")
        .expect("key added");
    assert_eq!(post.json()["permission"], "REPO_READ");
    assert!(post.json()["key"]["text"]
        .as_str()
        .expect("text")
        .ends_with(&format!(" {LABEL}")));
    let hook = reqs
        .iter()
        .find(|r| r.call() == "POST /rest/api/1.0/projects/ACME/repos/widget/webhooks")
        .expect("webhook");
    let body = hook.json();
    assert_eq!(body["url"], HOOK_URL);
    assert_eq!(body["active"], true);
    assert_eq!(
        body["events"],
        serde_json::json!([
            "repo:refs_changed",
            "pr:opened",
            "pr:from_ref_updated",
            "pr:merged",
            "pr:declined",
            "pr:deleted"
        ])
    );
    let secret = body["configuration"]["secret"]
        .as_str()
        .expect("secret")
        .to_owned();
    let store = Store::open(&data).expect("store");
    let f = store.followed(&key).expect("read").expect("project");
    assert_eq!(f.slug, "ACME/widget");
    assert_eq!(
        f.webhook_secret.as_deref().map(String::as_str),
        Some(secret.as_str())
    );
    drop(store);
    assert_eq!(api.deploy_keys().len(), 4);

    let before = api.requests().len();
    let again = follow("follow");
    assert!(again.ok, "{}", again.stderr);
    assert!(api.requests()[before..].iter().all(|r| r.method == "GET"));
    assert_eq!((api.deploy_keys().len(), api.hooks().len()), (4, 1));

    let out = follow("unfollow");
    assert!(out.ok, "{}", out.stderr);
    no_token(&out, &data, DC_TOKEN);
    assert_eq!((api.deploy_keys().len(), api.hooks().len()), (3, 0));
}

#[test]
fn a_user_key_goes_onto_the_account_and_comes_off_both_sides() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let token = "oauth-access-token-0c0ffee";
    let api = BitbucketApi::start(&format!("Bearer {token}"), None);
    harness::coordinator_cli(
        &data,
        &[
            "project",
            "add",
            "--slug",
            "acme/widget",
            "--clone-url",
            "git@bitbucket.org:acme/widget.git",
            "--uuid",
            UUID,
        ],
    );
    let creds = creds(dir.path(), &format!("bearer:{token}"));
    let user = |verb: &str| {
        cli(
            &data,
            &[
                "user",
                "key",
                verb,
                "--bitbucket",
                "acme/widget",
                "--user",
                "{ada-uuid}",
                "--api",
                &api.cloud_api(),
                "--api-credentials-file",
                &creds,
            ],
        )
    };
    let out = user("add");
    assert!(out.ok, "{}\n{}", out.stdout, out.stderr);
    no_token(&out, &data, token);
    let post = api
        .requests()
        .into_iter()
        .find(|r| r.method == "POST")
        .expect("a key posted");
    assert_eq!(post.path, "/2.0/users/%7Bada-uuid%7D/ssh-keys");
    assert_eq!(post.json()["label"], "bosun user key for acme/widget");
    let on_account = api.user_keys();
    assert_eq!(on_account.len(), 1);
    let store = Store::open(&data).expect("store");
    let f = store
        .followed("acme/widget")
        .expect("read")
        .expect("project");
    assert_eq!(
        public_of(&f.user_key.expect("user key")),
        material(&on_account[0].key)
    );
    drop(store);

    // Again: kept, nothing added.
    let out = user("add");
    assert!(
        out.ok && out.stdout.contains("kept"),
        "{}\n{}",
        out.stdout,
        out.stderr
    );
    assert_eq!(api.user_keys(), on_account);

    let out = user("rm");
    assert!(out.ok, "{}", out.stderr);
    assert!(api.user_keys().is_empty());
    assert!(
        api.requests()
            .iter()
            .any(|r| r.method == "DELETE"
                && r.path.starts_with("/2.0/users/%7Bada-uuid%7D/ssh-keys/"))
    );
    let store = Store::open(&data).expect("store");
    assert!(store
        .followed("acme/widget")
        .expect("read")
        .expect("project")
        .user_key
        .is_none());
}

/// Data Center: the key goes onto the user's account through `/rest/ssh/1.0/keys?user=`,
/// labelled, and `rm` takes it off there and from Bosun; again, nothing doubles.
#[test]
fn a_data_center_user_key_goes_onto_the_account_and_comes_off_both_sides() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let api = BitbucketApi::start(&format!("Bearer {DC_TOKEN}"), None);
    let creds = creds(dir.path(), &format!("bearer:{DC_TOKEN}"));
    let repo = [
        "--data-center",
        &api.base,
        "--project",
        "ACME",
        "--repo",
        "widget",
        "--api-credentials-file",
        &creds,
    ];
    let mut args = vec!["project", "follow", "--public-url", PUBLIC_URL];
    args.extend(repo);
    let out = cli(&data, &args);
    assert!(out.ok, "{}\n{}", out.stdout, out.stderr);
    let user = |verb: &str| {
        let mut args = vec!["user", "key", verb, "--user", DC_USER];
        args.extend(repo);
        cli(&data, &args)
    };

    let out = user("add");
    assert!(out.ok, "{}\n{}", out.stdout, out.stderr);
    no_token(&out, &data, DC_TOKEN);
    let post = api
        .requests()
        .into_iter()
        .find(|r| r.call() == "POST /rest/ssh/1.0/keys")
        .expect("a key posted");
    assert_eq!(post.path, format!("/rest/ssh/1.0/keys?user={DC_USER}"));
    assert_eq!(post.json()["label"], "bosun user key for ACME/widget");
    let on_account = api.user_keys();
    assert_eq!(on_account.len(), 1);
    let server = api.base.trim_start_matches("http://").to_owned();
    let key = format!("bitbucket-dc:{server}/{DC_ID}");
    let store = Store::open(&data).expect("store");
    let f = store.followed(&key).expect("read").expect("project");
    assert_eq!(
        public_of(&f.user_key.expect("user key")),
        material(&on_account[0].key)
    );
    drop(store);

    let out = user("add");
    assert!(out.ok && out.stdout.contains("kept"), "{}", out.stdout);
    assert_eq!(api.user_keys(), on_account);

    let out = user("rm");
    assert!(out.ok, "{}", out.stderr);
    assert!(api.user_keys().is_empty());
    assert!(api
        .requests()
        .iter()
        .any(|r| r.call() == format!("DELETE /rest/ssh/1.0/keys/{}", on_account[0].id)));
    let store = Store::open(&data).expect("store");
    let f = store.followed(&key).expect("read").expect("project");
    assert!(f.user_key.is_none());
    assert!(f.deploy_key.is_some(), "the deploy key stays");
}

#[test]
fn bad_arguments_are_refused_before_any_call() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let api = BitbucketApi::start(&basic(), None);
    let good = creds(dir.path(), &format!("{EMAIL}:{API_TOKEN}"));
    let bad_creds = dir.path().join("bad");
    std::fs::write(&bad_creds, "just-a-token-without-a-user").expect("write");
    let run = |repo: &str, creds: &str, public: &str| {
        cli(
            &data,
            &[
                "project",
                "follow",
                "--bitbucket",
                repo,
                "--api",
                &api.cloud_api(),
                "--api-credentials-file",
                creds,
                "--public-url",
                public,
            ],
        )
    };
    let out = run("acme", &good, PUBLIC_URL);
    assert!(
        !out.ok && out.stderr.contains("WORKSPACE/REPO"),
        "{}",
        out.stderr
    );
    let out = run("acme/../../users/x", &good, PUBLIC_URL);
    assert!(
        !out.ok && out.stderr.contains("--bitbucket"),
        "{}",
        out.stderr
    );
    let out = run("acme/widget", bad_creds.to_str().expect("utf8"), PUBLIC_URL);
    assert!(
        !out.ok && out.stderr.contains("bearer:TOKEN"),
        "{}",
        out.stderr
    );
    assert!(!out.stderr.contains("just-a-token"), "{}", out.stderr);
    let out = run("acme/widget", &good, "ci.example.com");
    assert!(
        !out.ok && out.stderr.contains("--public-url"),
        "{}",
        out.stderr
    );
    assert!(api.requests().is_empty(), "{:#?}", api.requests());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_followed_project_builds_a_signed_push_with_the_keys_follow_and_user_key_added() {
    let rig = Rig::start();
    rig.create_repo("acme/widget");
    rig.create_repo("deps/other");
    let other = rig.work_repo("deps/other");
    other.write(
        "OTHER.txt",
        "a private dependency read with the authorized user key\n",
    );
    other.commit("other");
    other.push("HEAD:refs/heads/main");
    let repo = rig.work_repo("acme/widget");
    let img = image("base");
    repo.write(
        ".circleci/config.yml",
        &format!(
            "version: 2.1\njobs:\n  build:\n    docker: [{{image: {img}}}]\n    steps:\n      - checkout\n      - run: cat greeting.txt\n      - run: git clone -q git@bitbucket.org:deps/other.git /tmp/other && cat /tmp/other/OTHER.txt\nworkflows:\n  main:\n    jobs: [build]\n"
        ),
    );
    repo.write("greeting.txt", "checked out with the followed deploy key\n");
    let sha = repo.commit("config");
    repo.push("HEAD:refs/heads/main");

    // The stand-in grants each key Bitbucket's API is given as Bitbucket does: a deploy key
    // read-only on the repository, a user's key on the user's workspace (here another one,
    // so the checkout of acme/widget needs the deploy key and the clone of deps/other the
    // user key).
    let authorized = rig.srv_dir().join("authorized_keys");
    let grant: OnKey = std::sync::Arc::new(move |kind: &str, public: &str| {
        use std::io::Write;
        let grant = match kind {
            "deploy" => "deploy acme/widget",
            _ => "user deps",
        };
        let line = format!(
            "command=\"/usr/local/bin/bb-serve {grant}\",no-port-forwarding,no-X11-forwarding,no-agent-forwarding,no-pty {}\n",
            public.trim()
        );
        std::fs::OpenOptions::new()
            .append(true)
            .open(&authorized)
            .and_then(|mut f| f.write_all(line.as_bytes()))
            .expect("grant the key");
    });
    let api = BitbucketApi::start(&basic(), Some(grant));
    let c = Coordinator::builder().vcs_hosts(&rig).start();
    let creds = creds(c.dir(), &format!("{EMAIL}:{API_TOKEN}"));
    let public_url = format!("http://{}", c.addr);
    let known_hosts = rig.known_hosts_file();
    let out = cli(
        &c.data,
        &[
            "project",
            "follow",
            "--bitbucket",
            "acme/widget",
            "--api",
            &api.cloud_api(),
            "--api-credentials-file",
            &creds,
            "--public-url",
            &public_url,
            "--known-hosts",
            known_hosts.to_str().expect("utf8"),
        ],
    );
    assert!(out.ok, "{}\n{}", out.stdout, out.stderr);
    // "Authorize with Bitbucket": a user key on ada's account, for the project's jobs.
    let out = cli(
        &c.data,
        &[
            "user",
            "key",
            "add",
            "--bitbucket",
            "acme/widget",
            "--user",
            "ada",
            "--api",
            &api.cloud_api(),
            "--api-credentials-file",
            &creds,
        ],
    );
    assert!(out.ok, "{}\n{}", out.stdout, out.stderr);
    let _agent = c.agent(&rig, "one").start();

    // Bitbucket delivers a push to the URL it was given, signed with the secret it was given.
    let hooks = api.hooks();
    let hook = hooks.first().expect("webhook");
    let url = hook["url"].as_str().expect("url").to_owned();
    let secret = hook["secret"].as_str().expect("secret").to_owned();
    let body = push_payload("acme/widget", "branch", "main", &sha, "config");
    let r = reqwest::Client::new()
        .post(&url)
        .header("X-Event-Key", "repo:push")
        .header("X-Request-UUID", "{follow-1}")
        .header("X-Hub-Signature", sign(secret.as_bytes(), body.as_bytes()))
        .header("Content-Type", "application/json")
        .body(body)
        .send()
        .await
        .expect("deliver");
    let code = r.status().as_u16();
    let answer: serde_json::Value = r.json().await.unwrap_or_default();
    assert_eq!(code, 202, "{answer}");
    let id = answer["pipelines"][0]["id"].as_i64().expect("pipeline id");
    let p = wait_pipeline(
        &c.data,
        id,
        &["success", "failed", "errored"],
        Duration::from_secs(180),
    );
    let job = job_id(&p, "build");
    let log = harness::job_log(&c.data, &job.to_string());
    assert_eq!(job_status(&p, "build"), "success", "{p:#?}\n{log}");
    assert!(
        log.contains("checked out with the followed deploy key"),
        "{log}"
    );
    assert!(
        log.contains("a private dependency read with the authorized user key"),
        "{log}"
    );
}

#[test]
fn a_rate_limit_longer_than_bosun_waits_stops_at_once_and_says_so() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let api = BitbucketApi::start(&basic(), None);
    let mut limit = Fault::new(
        "GET",
        "/repositories/acme/widget",
        429,
        "Rate limit exceeded",
    );
    limit.retry_after = Some(3600);
    api.fault(limit);
    let creds = creds(dir.path(), &format!("{EMAIL}:{API_TOKEN}"));
    let t0 = std::time::Instant::now();
    let out = cloud_follow(&data, &api, &creds, "follow");
    assert!(!out.ok, "{}", out.stdout);
    assert!(
        t0.elapsed() < Duration::from_secs(30),
        "it waited {:?}",
        t0.elapsed()
    );
    assert!(
        out.stderr
            .contains("GET /2.0/repositories/acme/widget: still 429"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("try again later"), "{}", out.stderr);
    no_token(&out, &data, API_TOKEN);
    assert_eq!(api.requests().len(), 1, "nothing more was asked");
    assert!(api.deploy_keys().is_empty() && api.hooks().is_empty());
}

//! People logging in with Bitbucket Data Center (docs/people.md): its OAuth 2.0 provider
//! (authorization code with state and PKCE, the code exchanged server side with the
//! client's id and secret), the person read from `whoami` and the users API, and their
//! permissions from the repositories they may read, write or administer, all played by an
//! HTTP server in the test in Data Center's shapes (`harness::bitbucket_api`); the login
//! itself in a real browser (Chromium).

use crate::coordinator_rig::*;
use crate::harness::bitbucket_api::{Account, BitbucketApi};
use crate::harness::{chromium, with_browser};
use crate::people::{csrf_of, http, login, login_http};
use std::time::Duration;

const CLIENT_ID: &str = "dc-client-id";
const CLIENT_SECRET: &str = "dc-client-s3cret-7b";
/// The Data Center repository's id, which Bosun keys its project by.
const REPO_ID: &str = "85";
const PROJECT: &str = "ACME/gadget";

/// A Data Center user (numeric id) and their repository permissions: the repository is
/// listed upstream as `ACME/gadget-renamed` (renamed since it was added), so only its id
/// can match the project.
fn user(nick: &str, id: u64, perm: Option<&str>) -> Account {
    Account {
        uuid: id.to_string(),
        nickname: nick.into(),
        token: format!("dc-access-{nick}-Xk4"),
        permissions: perm
            .map(|p| {
                vec![(
                    "ACME/gadget-renamed".to_owned(),
                    REPO_ID.to_owned(),
                    p.to_owned(),
                )]
            })
            .unwrap_or_default(),
    }
}

struct Setup {
    s: Server,
    api: BitbucketApi,
    pipeline: String,
    job: String,
    _dir: tempfile::TempDir,
}

fn setup(extra: &[&str]) -> Setup {
    use std::os::unix::fs::PermissionsExt;
    let api = BitbucketApi::start("Bearer not-used-here", None);
    api.oauth(
        CLIENT_ID,
        CLIENT_SECRET,
        vec![
            user("reader", 101, Some("read")),
            user("writer", 102, Some("write")),
            user("stranger", 103, None),
        ],
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("dc-oauth-client");
    std::fs::write(&file, format!("{CLIENT_ID}:{CLIENT_SECRET}\n")).expect("write");
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let mut args = vec![
        "--bitbucket-oauth-file",
        file.to_str().expect("utf8"),
        "--bitbucket-dc-url",
        &api.base,
    ];
    args.extend_from_slice(extra);
    let s = fresh_with(&args, true);
    let key = dir.path().join("deploy_key");
    std::fs::write(&key, "-----BEGIN OPENSSH PRIVATE KEY-----\nTESTKEY\n").expect("key");
    cli(
        &s.data,
        &[
            "project",
            "add",
            "--slug",
            PROJECT,
            "--clone-url",
            "ssh://git@bitbucket.example.com:7999/acme/gadget.git",
            "--data-center",
            &api.base,
            "--repository-id",
            REPO_ID,
            "--deploy-key",
            key.to_str().expect("utf8"),
        ],
    );
    cli(
        &s.data,
        &["project", "set", "--slug", PROJECT, "--public", "false"],
    );
    let job = crate::harness::coordinator_cli(
        &s.data,
        &[
            "enqueue",
            "--project",
            PROJECT,
            "--ref",
            "main",
            "--job",
            "build",
        ],
    );
    let out = cli(&s.data, &["trigger", "--project", PROJECT, "--ref", "main"]);
    let pipeline = out
        .split_whitespace()
        .nth(1)
        .expect("pipeline id")
        .to_owned();
    Setup {
        s,
        api,
        pipeline,
        job: job.trim().to_owned(),
        _dir: dir,
    }
}

async fn status(base: &str, path: &str, cookie: &str) -> u16 {
    http()
        .get(format!("{base}{path}"))
        .header("cookie", format!("bosun_session={cookie}"))
        .send()
        .await
        .expect("page")
        .status()
        .as_u16()
}

async fn cancel(base: &str, pipeline: &str, cookie: &str) -> (u16, String) {
    let csrf = csrf_of(base, cookie).await;
    let r = http()
        .post(format!("{base}/pipelines/{pipeline}/cancel"))
        .header("cookie", format!("bosun_session={cookie}"))
        .header("x-bosun-csrf", csrf)
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .expect("cancel");
    let st = r.status().as_u16();
    (st, r.text().await.expect("text"))
}

#[tokio::test]
async fn data_center_people_log_in_and_act_as_their_repository_permits() {
    if chromium().is_none() {
        eprintln!("skipped: no chromium installed (scripts/test.sh installs it on Debian)");
        return;
    }
    let t = setup(&[]);
    let base = t.s.base.clone();
    let (b2, api2) = (base.clone(), t.api.clone());
    let reader = with_browser(120, move |b| login(b, &b2, &api2, "reader"))
        .await
        .expect("chromium is installed");
    let writer = login_http(&base, &t.api, "writer").await;
    let stranger = login_http(&base, &t.api, "stranger").await;

    // Data Center was asked as its OAuth 2.0 provider documents: the browser sent to
    // authorize with state, a PKCE challenge and a scope; the code swapped on the server
    // with the verifier and the client's id and secret in the form, never in a URL.
    let reqs = t.api.requests();
    let authorize: Vec<_> = reqs
        .iter()
        .filter(|r| r.call() == "GET /rest/oauth2/latest/authorize")
        .collect();
    assert_eq!(authorize.len(), 3);
    for r in &authorize {
        for part in [
            "state=",
            "code_challenge=",
            "code_challenge_method=S256",
            "scope=REPO_READ",
        ] {
            assert!(r.path.contains(part), "{part} missing: {}", r.path);
        }
        assert!(!r.path.contains(CLIENT_SECRET));
    }
    let exchanges: Vec<_> = reqs
        .iter()
        .filter(|r| r.call() == "POST /rest/oauth2/latest/token")
        .collect();
    assert_eq!(exchanges.len(), 3);
    for r in &exchanges {
        assert!(!r.path.contains(CLIENT_SECRET), "{}", r.path);
        for part in [
            "grant_type=authorization_code",
            "code_verifier=",
            "client_secret=",
        ] {
            assert!(r.body.contains(part), "{part} missing from the exchange");
        }
    }
    assert!(reqs
        .iter()
        .any(|r| r.call() == "GET /plugins/servlet/applinks/whoami"));
    assert!(reqs.iter().any(|r| r
        .path
        .contains("/rest/api/latest/repos?permission=REPO_WRITE")));
    assert!(!reqs.iter().any(|r| r.call().starts_with("GET /2.0/")));

    // Kept as a Data Center person, never confused with a Cloud account.
    let people = cli(&t.s.data, &["person", "ls"]);
    let host = t.api.base.trim_start_matches("http://");
    assert!(people.contains(&format!("dc:{host}/101")), "{people}");
    assert!(people.contains(&format!("dc:{host}/102")), "{people}");

    // Read: sees the private project's job, cannot cancel; write can; no permission: nothing.
    let job = format!("/jobs/{}", t.job);
    assert_eq!(status(&base, &job, &reader).await, 200);
    assert_eq!(status(&base, &job, &stranger).await, 404);
    let (st, body) = cancel(&base, &t.pipeline, &reader).await;
    assert_eq!(st, 403, "{body}");
    assert!(body.contains("needs write permission"), "{body}");
    // Someone who may not even read the project is told there is no such pipeline.
    let (st, body) = cancel(&base, &t.pipeline, &stranger).await;
    assert_eq!(st, 404, "{body}");
    assert_eq!(status(&base, &job, &writer).await, 200);
    let (st, body) = cancel(&base, &t.pipeline, &writer).await;
    assert!((200..300).contains(&st), "{st} {body}");

    // "Read my keys from Bitbucket": the user's own keys from Data Center's SSH API, Bosun's
    // own user keys left out.
    let dir = tempfile::tempdir().expect("tempdir");
    let keygen = |name: &str| {
        let key = dir.path().join(name);
        crate::harness::run(
            std::process::Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-C", name, "-f"])
                .arg(&key),
        );
        let public = std::fs::read_to_string(format!("{}.pub", key.display())).expect("pub");
        let fp = crate::harness::run(
            std::process::Command::new("ssh-keygen")
                .arg("-lf")
                .arg(format!("{}.pub", key.display())),
        );
        (
            public.trim().to_owned(),
            fp.split_whitespace().nth(1).expect("fp").to_owned(),
        )
    };
    let (laptop, laptop_fp) = keygen("laptop");
    let (bosun, bosun_fp) = keygen("bosun-user");
    t.api.set_account_ssh_keys(
        "writer",
        &[
            (&laptop, "laptop"),
            (&bosun, "bosun user key for ACME/gadget"),
        ],
    );
    let csrf = csrf_of(&base, &writer).await;
    let r = http()
        .post(format!("{base}/me/ssh-keys/bitbucket"))
        .header("cookie", format!("bosun_session={writer}"))
        .form(&[("csrf", csrf.as_str())])
        .send()
        .await
        .expect("import");
    assert_eq!(r.status().as_u16(), 303, "{:?}", r.text().await);
    let me = http()
        .get(format!("{base}/me"))
        .header("cookie", format!("bosun_session={writer}"))
        .send()
        .await
        .expect("me")
        .text()
        .await
        .expect("text");
    assert!(me.contains(&laptop_fp), "{me}");
    assert!(!me.contains(&bosun_fp), "{me}");
    assert!(t
        .api
        .requests()
        .iter()
        .any(|r| r.call() == "GET /rest/ssh/latest/keys"
            && r.header("authorization") == Some("Bearer dc-access-writer-Xk4")));
}

/// Taken away on Data Center: an action re-checks at once, a read stops within
/// `--permissions-refresh` (through the refresh token, at Data Center's token endpoint).
#[tokio::test]
async fn a_data_center_permission_taken_away_applies_within_the_bound() {
    let t = setup(&["--permissions-refresh", "2s"]);
    let base = t.s.base.clone();
    let job = format!("/jobs/{}", t.job);
    let reader = login_http(&base, &t.api, "reader").await;
    let writer = login_http(&base, &t.api, "writer").await;
    assert_eq!(status(&base, &job, &reader).await, 200);

    t.api
        .set_permission("writer", "ACME/gadget-renamed", Some("read"));
    let (st, body) = cancel(&base, &t.pipeline, &writer).await;
    assert_eq!(st, 403, "{body}");

    t.api.set_permission("reader", "ACME/gadget-renamed", None);
    let taken = std::time::Instant::now();
    while status(&base, &job, &reader).await != 404 {
        assert!(
            taken.elapsed() < Duration::from_secs(6),
            "still readable {:?} after the permission was taken away",
            taken.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let refreshes = t
        .api
        .requests()
        .iter()
        .filter(|r| {
            r.call() == "POST /rest/oauth2/latest/token"
                && r.body.contains("grant_type=refresh_token")
                && r.body.contains("client_id=")
        })
        .count();
    assert!(refreshes >= 1, "{refreshes}");
}

/// A Data Center URL that is not one is refused at start, naming the setting.
#[test]
fn a_bad_data_center_url_is_refused_at_start() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("oauth");
    std::fs::write(&file, "k:s\n").expect("write");
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let out = std::process::Command::new(BIN)
        .args(["coordinator", "serve", "--listen", "127.0.0.1:0", "--data"])
        .arg(dir.path().join("data"))
        .arg("--bitbucket-oauth-file")
        .arg(&file)
        .args(["--bitbucket-dc-url", "bitbucket.example.com"])
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--bitbucket-dc-url") && err.contains("https://bitbucket.example.com"),
        "{err}"
    );
}

//! People logging in with Bitbucket Data Center (docs/people.md): its OAuth 2.0 provider
//! (authorization code with state and PKCE, the code exchanged server side with the
//! client's id and secret), the person read from `whoami` and the users API, and their
//! permissions from the repositories they may read, write or administer, all played by an
//! HTTP server in the test in Data Center's shapes (`harness::bitbucket_api`); the login
//! itself in a real browser (Chromium). Also the other way in: a Data Center HTTP access
//! token pasted once in the login page's form.

use crate::coordinator_rig::*;
use crate::harness::bitbucket_api::{Account, BitbucketApi};
use crate::harness::{chromium, with_browser};
use crate::people::{csrf_of, http, login, login_http, session_cookie};
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
    setup_with(extra, true)
}

/// `setup`, with or without the application link's OAuth client (`--bitbucket-oauth-file`).
fn setup_with(extra: &[&str], oauth_client: bool) -> Setup {
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
    let mut args = vec!["--bitbucket-dc-url", &api.base];
    if oauth_client {
        args.extend(["--bitbucket-oauth-file", file.to_str().expect("utf8")]);
    }
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

/// HTTP access tokens as people paste them (44 characters, as Data Center makes them).
const WRITER_TOKEN: &str = "NjQ2MDk0NzE3MzY0OuPQHk2vEEsW+qaDfrLBQbHUtvHX";
const READER_TOKEN: &str = "MTc4NDQ1NjQwMzk0OkR0ZWFkZXItdG9rZW4tZm9yLXg5";

/// The token login form on `/login`, over plain HTTP as a browser would: its cookie and
/// its CSRF field.
async fn token_form(base: &str) -> (String, String) {
    let r = http()
        .get(format!("{base}/login?return_to=/me"))
        .send()
        .await
        .expect("login page");
    assert_eq!(r.status(), 200);
    let cookie = r
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().expect("cookie").to_owned())
        .find(|c| c.starts_with("bosun_login_form="))
        .expect("the form's cookie");
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Lax"),
        "{cookie}"
    );
    let cookie = cookie.split(';').next().expect("pair").to_owned();
    let page = r.text().await.expect("text");
    assert!(
        page.contains(r#"action="/login/bitbucket/token""#),
        "{page}"
    );
    assert!(page.contains(r#"type="password" name="token""#), "{page}");
    let re = regex::Regex::new(
        r#"id="token-login"><input type="hidden" name="csrf" value="([0-9a-f]+)""#,
    )
    .expect("regex");
    let csrf = re.captures(&page).expect("the form's CSRF field")[1].to_owned();
    (cookie, csrf)
}

/// POST the token form with `cookies` (`;`-joined pairs): status, the session cookie set
/// (if any) and the page.
async fn post_token(
    base: &str,
    cookies: &str,
    csrf: &str,
    token: &str,
) -> (u16, Option<String>, String) {
    let mut req = http().post(format!("{base}/login/bitbucket/token")).form(&[
        ("csrf", csrf),
        ("token", token),
        ("return_to", "/me"),
    ]);
    if !cookies.is_empty() {
        req = req.header("cookie", cookies);
    }
    let r = req.send().await.expect("post");
    let st = r.status().as_u16();
    let session = r
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|c| c.strip_prefix("bosun_session="))
        .and_then(|c| c.split(';').next())
        .filter(|c| !c.is_empty())
        .map(str::to_owned);
    (st, session, r.text().await.expect("text"))
}

/// Logging in with a Data Center HTTP access token pasted once: in Chromium, then the
/// refusals (a wrong token, a forged form, too many tries), the session rotated, the
/// permissions the token's user has, a revoked token taking them away within
/// `--permissions-refresh`, and the token nowhere but in the requests to Data Center and
/// sealed in the store.
#[tokio::test]
async fn data_center_people_log_in_with_an_http_access_token() {
    if chromium().is_none() {
        eprintln!("skipped: no chromium installed (scripts/test.sh installs it on Debian)");
        return;
    }
    let mut t = setup(&["--permissions-refresh", "2s"]);
    let base = t.s.base.clone();
    let job = format!("/jobs/{}", t.job);
    t.api.http_access_token("writer", WRITER_TOKEN);
    t.api.http_access_token("reader", READER_TOKEN);

    // In a browser: the form on the login page, the token pasted, back to `/me`.
    let b2 = base.clone();
    let writer = with_browser(120, move |b| {
        b.open(&format!("{b2}/login?return_to=/me"));
        b.wait_for("document.readyState === 'complete' && document.getElementById('access-token')");
        b.click("#access-token");
        b.type_text(WRITER_TOKEN);
        b.click("#login-token");
        b.wait_for(&format!(
            "location.href === {} && document.getElementById('nickname')",
            serde_json::json!(format!("{b2}/me"))
        ));
        assert_eq!(
            b.eval("document.getElementById('nickname').textContent"),
            serde_json::json!("writer")
        );
        // Nothing of the token on the page it lands on.
        let html = b.eval("document.documentElement.outerHTML");
        assert!(!html.to_string().contains(WRITER_TOKEN));
        session_cookie(b, &b2).expect("a session cookie after login")
    })
    .await
    .expect("chromium is installed");

    // Data Center was asked with the token as a bearer, on `/rest` only: who it is from
    // `X-AUSERNAME`, the user, the repositories by permission.
    let bearer = format!("Bearer {WRITER_TOKEN}");
    let reqs = t.api.requests();
    let with_token: Vec<_> = reqs
        .iter()
        .filter(|r| r.header("authorization") == Some(bearer.as_str()))
        .collect();
    for call in [
        "GET /rest/api/latest/application-properties",
        "GET /rest/api/latest/users",
        "GET /rest/api/latest/repos",
    ] {
        assert!(
            with_token.iter().any(|r| r.call() == call),
            "{call} not asked"
        );
    }
    assert!(with_token.iter().all(|r| r.path.starts_with("/rest/")));
    assert!(!reqs
        .iter()
        .any(|r| r.path.contains(WRITER_TOKEN) || r.body.contains(WRITER_TOKEN)));
    let people = cli(&t.s.data, &["person", "ls"]);
    let host = t.api.base.trim_start_matches("http://");
    assert!(people.contains(&format!("dc:{host}/102")), "{people}");

    // The permissions follow the token's user: write cancels.
    assert_eq!(status(&base, &job, &writer).await, 200);
    let (st, body) = cancel(&base, &t.pipeline, &writer).await;
    assert!((200..300).contains(&st), "{st} {body}");

    // "Read my keys from Bitbucket" reads them with the kept token, as its user.
    t.api.set_account_ssh_keys(
        "writer",
        &[(
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKqP3Cr632C2dNhhgKVcon4ldUSAeKiku2yP9O9/bDtY",
            "laptop",
        )],
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
    assert!(t
        .api
        .requests()
        .iter()
        .any(|r| r.call() == "GET /rest/ssh/latest/keys"
            && r.header("authorization") == Some(bearer.as_str())));

    // A wrong token: refused, saying why, never echoing it; no session.
    let (cookie, csrf) = token_form(&base).await;
    let wrong = "NjQ2MDk0NzE3MzY0OuWRONGwrongWRONGwrongWRONG";
    let (st, session, page) = post_token(&base, &cookie, &csrf, wrong).await;
    assert_eq!(st, 403, "{page}");
    assert!(session.is_none());
    assert!(
        page.contains("did not accept this HTTP access token"),
        "{page}"
    );
    assert!(!page.contains(wrong));

    // A form without its cookie (another site posting it, or a stale page): refused before
    // Data Center is asked.
    let asked = t.api.requests().len();
    let (st, session, page) = post_token(&base, "", &csrf, READER_TOKEN).await;
    assert_eq!(st, 403, "{page}");
    assert!(session.is_none());
    assert!(page.contains("did not come from this browser"), "{page}");
    let (other_cookie, _) = token_form(&base).await;
    let (st, _, _) = post_token(&base, &other_cookie, &csrf, READER_TOKEN).await;
    assert_eq!(st, 403, "another form's field");
    assert_eq!(
        t.api.requests().len(),
        asked,
        "Data Center asked for a forged form"
    );

    // The reader logs in over HTTP in a browser that holds the writer's session: a new
    // session, and the one it came with ends (rotated, as the OAuth login does).
    let (cookie, csrf) = token_form(&base).await;
    let (st, reader, page) = post_token(
        &base,
        &format!("{cookie}; bosun_session={writer}"),
        &csrf,
        READER_TOKEN,
    )
    .await;
    assert_eq!(st, 303, "{page}");
    let reader = reader.expect("a session");
    assert_ne!(reader, writer);
    assert_eq!(
        status(&base, "/me", &writer).await,
        303,
        "the old session lives on"
    );
    assert_eq!(status(&base, &job, &reader).await, 200);
    let (st, body) = cancel(&base, &t.pipeline, &reader).await;
    assert_eq!(st, 403, "{body}");

    // Revoked on Data Center: the permissions go within --permissions-refresh (2s), and
    // the token is forgotten: Data Center is not asked with it again.
    t.api.revoke_http_access_token(READER_TOKEN);
    let taken = std::time::Instant::now();
    while status(&base, &job, &reader).await != 404 {
        assert!(
            taken.elapsed() < Duration::from_secs(6),
            "still readable {:?} after the token was revoked",
            taken.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!("revoked token took effect after {:?}", taken.elapsed());
    let reader_bearer = format!("Bearer {READER_TOKEN}");
    let asked_with = |api: &crate::harness::bitbucket_api::BitbucketApi| {
        api.requests()
            .iter()
            .filter(|r| r.header("authorization") == Some(reader_bearer.as_str()))
            .count()
    };
    let before = asked_with(&t.api);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(status(&base, &job, &reader).await, 404);
    assert_eq!(asked_with(&t.api), before, "a refused token was sent again");

    // Too many failed tries from one address: refused without asking Data Center.
    let mut limited = None;
    for i in 0..12 {
        let (cookie, csrf) = token_form(&base).await;
        let (st, _, page) = post_token(&base, &cookie, &csrf, wrong).await;
        if st == 429 {
            assert!(page.contains("too many failed logins"), "{page}");
            limited = Some(i);
            break;
        }
        assert_eq!(st, 403, "{page}");
    }
    // The reader's login cleared the address's count: ten failures, then refused.
    assert_eq!(limited, Some(10));
    let asked = t.api.requests().len();
    let (cookie, csrf) = token_form(&base).await;
    let (st, _, _) = post_token(&base, &cookie, &csrf, WRITER_TOKEN).await;
    assert_eq!(st, 429, "a good token from a refused address waits too");
    assert_eq!(t.api.requests().len(), asked);

    // The tokens appear nowhere: not in the coordinator's log, not in the store unsealed.
    let log = t.s.log.take().expect("log watched");
    let lines: Vec<String> = log.try_iter().collect();
    assert!(
        lines.iter().any(|l| l.contains("HTTP access token")),
        "{lines:?}"
    );
    for token in [WRITER_TOKEN, READER_TOKEN, wrong] {
        assert!(
            !lines.iter().any(|l| l.contains(token)),
            "{token} in the log"
        );
        for f in ["coordinator.db", "coordinator.db-wal"] {
            let bytes = std::fs::read(t.s.data.join(f)).unwrap_or_default();
            assert!(
                !bytes.windows(token.len()).any(|w| w == token.as_bytes()),
                "{token} in {f}"
            );
        }
    }
    let audit = cli(&t.s.data, &["audit", "--json"]);
    assert!(
        audit.contains("with a Bitbucket HTTP access token"),
        "{audit}"
    );
    assert!(!audit.contains(WRITER_TOKEN) && !audit.contains(READER_TOKEN));
}

/// A Data Center coordinator without an application link (no `--bitbucket-oauth-file`):
/// the login page offers only the token form, the OAuth way says why it is not there, and
/// a pasted token logs its user in with their permissions; no OAuth endpoint is asked.
#[tokio::test]
async fn a_data_center_coordinator_without_an_application_link_takes_access_tokens() {
    let t = setup_with(&[], false);
    let base = t.s.base.clone();
    t.api.http_access_token("writer", WRITER_TOKEN);

    let page = http()
        .get(format!("{base}/login"))
        .send()
        .await
        .expect("login page")
        .text()
        .await
        .expect("text");
    assert!(!page.contains("id=\"login-bitbucket\""), "{page}");
    assert!(
        page.contains("<h2>Log in with a Bitbucket HTTP access token</h2>"),
        "{page}"
    );
    let r = http()
        .get(format!("{base}/login/bitbucket?return_to=/me"))
        .send()
        .await
        .expect("the OAuth way");
    assert_eq!(r.status(), 404);
    let said = r.text().await.expect("text");
    assert!(said.contains("HTTP access tokens only"), "{said}");

    let (cookie, csrf) = token_form(&base).await;
    let (st, session, page) = post_token(&base, &cookie, &csrf, WRITER_TOKEN).await;
    assert_eq!(st, 303, "{page}");
    let writer = session.expect("a session after login");
    assert_eq!(
        status(&base, &format!("/jobs/{}", t.job), &writer).await,
        200
    );
    let (st, body) = cancel(&base, &t.pipeline, &writer).await;
    assert!((200..300).contains(&st), "{st} {body}");
    assert!(
        !t.api
            .requests()
            .iter()
            .any(|r| r.path.starts_with("/rest/oauth2") || r.path.contains("applinks")),
        "no OAuth call without an OAuth client"
    );
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

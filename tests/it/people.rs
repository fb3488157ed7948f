//! People (docs/people.md): logging in with Bitbucket Cloud in a real browser (Chromium)
//! against an HTTP server in the test playing Bitbucket's OAuth and REST endpoints
//! (`harness::bitbucket_api`), sessions (HttpOnly cookies, rotated at login, ended at
//! logout), CSRF tokens, the state bound to the browser, and the actions on a pipeline as
//! the repository permissions allow them.

use crate::coordinator_rig::*;
use crate::harness::bitbucket_api::{Account, BitbucketApi};
use crate::harness::{chromium, with_browser, Browser};
use serde_json::json;
use std::time::Duration;

const KEY: &str = "consumer-key";
const SECRET: &str = "consumer-s3cret-9f";

fn account(nick: &str, perms: &[(&str, &str)]) -> Account {
    Account {
        uuid: format!("{{acct-{nick}}}"),
        nickname: nick.into(),
        token: format!("bb-access-{nick}-Zq9"),
        permissions: perms
            .iter()
            .map(|(r, p)| (r.to_string(), format!("{{repo-{r}}}"), p.to_string()))
            .collect(),
    }
}

pub(crate) struct Setup {
    pub(crate) s: Server,
    pub(crate) api: BitbucketApi,
    _dir: tempfile::TempDir,
}

fn setup() -> Setup {
    setup_with(&[])
}

pub(crate) fn setup_with(extra: &[&str]) -> Setup {
    use std::os::unix::fs::PermissionsExt;
    let api = BitbucketApi::start("Bearer not-used-here", None);
    api.oauth(
        KEY,
        SECRET,
        vec![
            account("reader", &[("acme/widget", "read")]),
            // Three permissions: more than one page of Bitbucket's list.
            account(
                "writer",
                &[
                    ("acme/other", "admin"),
                    ("acme/third", "read"),
                    ("acme/widget", "write"),
                ],
            ),
            account("stranger", &[("acme/other", "write")]),
        ],
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("oauth-consumer");
    std::fs::write(&file, format!("{KEY}:{SECRET}\n")).expect("write");
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let mut args = vec![
        "--bitbucket-oauth-file",
        file.to_str().expect("utf8"),
        "--bitbucket-oauth-url",
        &api.base,
        "--bitbucket-api",
    ];
    let cloud = api.cloud_api();
    args.push(&cloud);
    args.extend_from_slice(extra);
    let s = fresh_with(&args, true);
    // Private, as every project is unless made public (the harness makes its projects
    // public for the tests that predate people).
    cli(
        &s.data,
        &[
            "project",
            "set",
            "--slug",
            "acme/widget",
            "--public",
            "false",
        ],
    );
    Setup { s, api, _dir: dir }
}

pub(crate) fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client")
}

/// The browser's session cookie: its value, and that it is HttpOnly and SameSite=Lax.
pub(crate) fn session_cookie(b: &mut Browser, base: &str) -> Option<String> {
    let c = b.call("Network.getCookies", json!({"urls": [base]}), true);
    let c = c["cookies"]
        .as_array()
        .expect("cookies")
        .iter()
        .find(|c| c["name"] == "bosun_session")?
        .clone();
    assert_eq!(c["httpOnly"], json!(true), "{c}");
    assert_eq!(c["sameSite"], json!("Lax"), "{c}");
    assert_eq!(c["path"], json!("/"), "{c}");
    Some(c["value"].as_str().expect("value").to_owned())
}

/// Log in as `who` through the pages and Bitbucket, ending on `/me`.
pub(crate) fn login(b: &mut Browser, base: &str, api: &BitbucketApi, who: &str) -> String {
    api.sign_in(Some(who));
    b.open(&format!("{base}/login?return_to=/me"));
    // The stylesheet in, so the link is where it is drawn when the mouse clicks it.
    b.wait_for("document.readyState === 'complete'");
    b.click("#login-bitbucket");
    b.wait_for(&format!(
        "location.href === {} && document.getElementById('nickname')",
        json!(format!("{base}/me"))
    ));
    assert_eq!(
        b.eval("document.getElementById('nickname').textContent"),
        json!(who)
    );
    // HttpOnly: the page's script cannot read the session.
    assert_eq!(
        b.eval("document.cookie.includes('bosun_session')"),
        json!(false)
    );
    session_cookie(b, base).expect("a session cookie after login")
}

async fn me(base: &str, cookie: &str) -> (u16, String) {
    let r = http()
        .get(format!("{base}/me"))
        .header("cookie", format!("bosun_session={cookie}"))
        .send()
        .await
        .expect("GET /me");
    let status = r.status().as_u16();
    (status, r.text().await.expect("text"))
}

/// The CSRF token the pages give a person (their page's logout form carries it).
pub(crate) async fn csrf_of(base: &str, cookie: &str) -> String {
    let page = http()
        .get(format!("{base}/me"))
        .header("cookie", format!("bosun_session={cookie}"))
        .send()
        .await
        .expect("page")
        .text()
        .await
        .expect("text");
    let re = regex::Regex::new(r#"name="csrf" value="([0-9a-f]+)""#).expect("regex");
    re.captures(&page)
        .unwrap_or_else(|| panic!("no CSRF token on the page of a logged-in person: {page}"))[1]
        .to_owned()
}

async fn cancel(base: &str, pipeline: &str, cookie: &str, csrf: Option<&str>) -> (u16, String) {
    let mut req = http()
        .post(format!("{base}/pipelines/{pipeline}/cancel"))
        .header("cookie", format!("bosun_session={cookie}"))
        .header("content-type", "application/json")
        .body("{}");
    if let Some(c) = csrf {
        req = req.header("x-bosun-csrf", c);
    }
    let r = req.send().await.expect("cancel");
    let status = r.status().as_u16();
    (status, r.text().await.expect("text"))
}

#[tokio::test]
async fn people_log_in_with_bitbucket_and_act_as_their_repository_permits() {
    if chromium().is_none() {
        eprintln!("skipped: no chromium installed (scripts/test.sh installs it on Debian)");
        return;
    }
    let mut t = setup();
    let base = t.s.base.clone();
    let (b2, api2) = (base.clone(), t.api.clone());
    let planted = "ab".repeat(32);
    let p2 = planted.clone();
    let cookies = with_browser(180, move |b| {
        let (base, api) = (b2, api2);
        // Logged in as writer, then as reader in the same browser: the writer's session
        // ends and the reader gets a new id (never the one the browser came with).
        let first_writer = login(b, &base, &api, "writer");
        let reader = login(b, &base, &api, "reader");
        assert_ne!(first_writer, reader);
        // A cookie planted before login (session fixation) is replaced, not adopted.
        b.call("Network.clearBrowserCookies", json!({}), true);
        b.call(
            "Network.setCookie",
            json!({"name": "bosun_session", "value": p2, "url": base, "httpOnly": true}),
            true,
        );
        let writer = login(b, &base, &api, "writer");
        assert_ne!(writer, p2);
        // Logging out from the page (a form with the CSRF token) ends the session.
        b.click("form.logout button");
        b.wait_for(&format!("location.href === {}", json!(format!("{base}/"))));
        assert_eq!(session_cookie(b, &base), None, "logout removes the cookie");
        b.call("Network.clearBrowserCookies", json!({}), true);
        let writer_again = login(b, &base, &api, "writer");
        b.call("Network.clearBrowserCookies", json!({}), true);
        let stranger = login(b, &base, &api, "stranger");
        (first_writer, reader, writer, writer_again, stranger)
    })
    .await
    .expect("chromium is installed");
    let (first_writer, reader, writer, writer_again, stranger) = cookies;

    // Sessions as the server keeps them.
    let (st, body) = me(&base, &reader).await;
    assert_eq!(st, 200);
    assert!(body.contains("reader"), "{body}");
    assert_eq!(me(&base, &writer_again).await.0, 200);
    for (what, dead) in [
        ("ended by the next login", &first_writer),
        ("logged out", &writer),
        ("planted", &planted),
    ] {
        let (st, _) = me(&base, dead).await;
        assert_eq!(st, 303, "a session {what} must not be valid");
    }

    // What Bitbucket was asked: the authorization-code flow with state and PKCE, the code
    // swapped with the consumer's credentials, the account and its permissions (every page).
    let reqs = t.api.requests();
    let authorize: Vec<_> = reqs
        .iter()
        .filter(|r| r.call() == "GET /site/oauth2/authorize")
        .collect();
    assert_eq!(authorize.len(), 5);
    for r in &authorize {
        assert!(r.path.contains("code_challenge_method=S256"), "{}", r.path);
        assert!(r.path.contains("state="), "{}", r.path);
        assert!(!r.path.contains(SECRET));
    }
    let exchanges: Vec<_> = reqs
        .iter()
        .filter(|r| r.call() == "POST /site/oauth2/access_token")
        .collect();
    assert_eq!(exchanges.len(), 5);
    assert!(exchanges
        .iter()
        .all(|r| r.body.contains("code_verifier=")
            && r.body.contains("grant_type=authorization_code")));
    let perm_pages = reqs
        .iter()
        .filter(|r| r.call() == "GET /2.0/user/permissions/repositories")
        .count();
    assert!(
        perm_pages >= 6,
        "the writer's permissions take two pages: {perm_pages}"
    );

    // A login the browser did not start (its state not in the browser's cookie) is refused
    // before any code is exchanged.
    let r = http()
        .get(format!("{base}/login/bitbucket"))
        .send()
        .await
        .expect("start");
    assert_eq!(r.status(), 303);
    let location = r.headers()["location"]
        .to_str()
        .expect("location")
        .to_owned();
    let set = r.headers()["set-cookie"]
        .to_str()
        .expect("cookie")
        .to_owned();
    assert!(
        set.contains("HttpOnly") && set.contains("SameSite=Lax"),
        "{set}"
    );
    let state = location
        .split("state=")
        .nth(1)
        .and_then(|s| s.split('&').next())
        .expect("state")
        .to_owned();
    for cookie in [None, Some(format!("bosun_login={}", "cd".repeat(32)))] {
        let mut req = http().get(format!(
            "{base}/login/bitbucket/callback?code=code1000&state={state}"
        ));
        if let Some(c) = cookie {
            req = req.header("cookie", c);
        }
        let r = req.send().await.expect("callback");
        assert_eq!(r.status(), 403);
        let body = r.text().await.expect("text");
        assert!(body.contains("not started from this browser"), "{body}");
    }
    assert_eq!(
        t.api
            .requests()
            .iter()
            .filter(|r| r.call() == "POST /site/oauth2/access_token")
            .count(),
        5,
        "no code is exchanged for a login with a foreign state"
    );

    // Logout without the CSRF token is refused and the session stays.
    let r = http()
        .post(format!("{base}/logout"))
        .header("cookie", format!("bosun_session={reader}"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("")
        .send()
        .await
        .expect("logout");
    assert_eq!(r.status(), 403);
    assert_eq!(me(&base, &reader).await.0, 200);

    // Actions on a pipeline follow the repository: write may cancel, read may not, nor
    // someone with no permission on it, unless made a coordinator admin on the host.
    let out = cli(
        &t.s.data,
        &["trigger", "--project", "acme/widget", "--ref", "main"],
    );
    let pipeline = out
        .split_whitespace()
        .nth(1)
        .expect("pipeline id")
        .to_owned();
    let csrf = csrf_of(&base, &writer_again).await;
    let (st, body) = cancel(&base, &pipeline, &writer_again, None).await;
    assert_eq!(st, 403, "no CSRF token: {body}");
    assert!(body.contains("CSRF"), "{body}");
    let (st, body) = cancel(&base, &pipeline, &writer_again, Some(&"0".repeat(64))).await;
    assert_eq!(st, 403, "a wrong CSRF token: {body}");
    // Another person's token does not do either.
    let reader_csrf = csrf_of(&base, &reader).await;
    assert_ne!(reader_csrf, csrf);
    assert_eq!(
        cancel(&base, &pipeline, &writer_again, Some(&reader_csrf))
            .await
            .0,
        403
    );
    let (st, body) = cancel(&base, &pipeline, &reader, Some(&reader_csrf)).await;
    assert_eq!(st, 403, "{body}");
    assert!(body.contains("needs write permission"), "{body}");
    // Someone who may not even read the project is told there is no such pipeline.
    let stranger_csrf = csrf_of(&base, &stranger).await;
    assert_eq!(
        cancel(&base, &pipeline, &stranger, Some(&stranger_csrf))
            .await
            .0,
        404
    );
    let (st, body) = cancel(&base, &pipeline, &writer_again, Some(&csrf)).await;
    assert!(st == 200 || st == 409, "the writer may cancel: {st} {body}");
    // A cancel that happened (not one of a pipeline already ended) is audited.
    let mut canceled_by = Vec::new();
    if st == 200 {
        canceled_by.push("person:writer");
    }

    let granted = cli(&t.s.data, &["person", "grant", "stranger", "admin"]);
    assert!(granted.contains("is a coordinator admin"), "{granted}");
    let (st, body) = cancel(&base, &pipeline, &stranger, Some(&stranger_csrf)).await;
    assert!(st == 200 || st == 409, "an admin may cancel: {st} {body}");
    if st == 200 {
        canceled_by.push("person:stranger");
    }
    // The cancels are in the audit log, by their person, from the page.
    let audit = cli(&t.s.data, &["audit", "--json"]);
    for who in canceled_by {
        assert!(
            audit.lines().any(|l| {
                let v: serde_json::Value = serde_json::from_str(l).expect("json line");
                v["actor"] == who
                    && v["action"] == "cancel"
                    && v["target"] == format!("pipeline {pipeline}")
                    && v["detail"] == "from the pipeline page"
            }),
            "no cancel by {who}: {audit}"
        );
    }
    let people = cli(&t.s.data, &["person", "ls"]);
    assert!(
        people.contains("stranger  {acct-stranger}  admin"),
        "{people}"
    );
    let nobody = std::process::Command::new(BIN)
        .args([
            "coordinator",
            "person",
            "grant",
            "nobody",
            "admin",
            "--data",
        ])
        .arg(&t.s.data)
        .output()
        .expect("run");
    assert!(!nobody.status.success());
    assert!(
        String::from_utf8_lossy(&nobody.stderr).contains("nobody called nobody has logged in"),
        "{}",
        String::from_utf8_lossy(&nobody.stderr)
    );

    // Nothing secret reached the server's log: access tokens, codes, the consumer's secret,
    // session ids.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let log: Vec<String> = t.s.log.take().expect("log").try_iter().collect();
    let log = log.join("\n");
    assert!(log.contains("logged in with Bitbucket"), "{log}");
    for secret in [
        "bb-access-".to_owned(),
        SECRET.to_owned(),
        reader.clone(),
        writer_again.clone(),
        "code100".to_owned(),
        csrf.clone(),
    ] {
        assert!(!log.contains(&secret), "{secret} in the log:\n{log}");
    }
}

/// Without `--bitbucket-oauth-file` nobody can log in, and the pages say how to set it up.
#[tokio::test]
async fn without_an_oauth_consumer_logging_in_says_how_to_set_it_up() {
    let s = fresh(&[]);
    let page = get_text(&format!("{}/login", s.base)).await;
    assert!(page.contains("--bitbucket-oauth-file"), "{page}");
    let r = http()
        .get(format!("{}/login/bitbucket", s.base))
        .send()
        .await
        .expect("start");
    assert_eq!(r.status(), 404);
    // /me without a session sends the browser to log in.
    let r = http()
        .get(format!("{}/me", s.base))
        .send()
        .await
        .expect("me");
    assert_eq!(r.status(), 303);
    assert_eq!(r.headers()["location"], "/login?return_to=/me");
}

/// A consumer file others may read is refused at start, naming the file.
#[test]
fn a_loose_oauth_file_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("oauth");
    std::fs::write(&file, "k:s\n").expect("write");
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let out = std::process::Command::new(BIN)
        .args(["coordinator", "serve", "--listen", "127.0.0.1:0", "--data"])
        .arg(dir.path().join("data"))
        .arg("--bitbucket-oauth-file")
        .arg(&file)
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("oauth") && err.contains("chmod 600"), "{err}");
}

/// Log in as `who` over HTTP, following the redirects a browser would (the coordinator's,
/// then Bitbucket's), carrying the login cookie: the session cookie's value.
pub(crate) async fn login_http(base: &str, api: &BitbucketApi, who: &str) -> String {
    api.sign_in(Some(who));
    let r = http()
        .get(format!("{base}/login/bitbucket"))
        .send()
        .await
        .expect("start");
    assert_eq!(r.status(), 303);
    let to_bitbucket = r.headers()["location"].to_str().expect("loc").to_owned();
    let login_cookie = r.headers()["set-cookie"]
        .to_str()
        .expect("cookie")
        .split(';')
        .next()
        .expect("pair")
        .to_owned();
    let r = http().get(&to_bitbucket).send().await.expect("authorize");
    assert_eq!(r.status(), 302);
    let back = r.headers()["location"].to_str().expect("loc").to_owned();
    let r = http()
        .get(&back)
        .header("cookie", login_cookie)
        .send()
        .await
        .expect("callback");
    assert_eq!(r.status(), 303, "{:?}", r.text().await);
    let set: Vec<String> = r
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().expect("cookie").to_owned())
        .collect();
    set.iter()
        .find_map(|c| c.strip_prefix("bosun_session="))
        .and_then(|c| c.split(';').next())
        .expect("a session cookie")
        .to_owned()
}

/// Every route of the web router (`web::route_table`, the list the router is built from),
/// asked as nobody, as a reader of the private project, as someone with no permission on it
/// and as an operator: each answers as its guard says. A route added as `Public` that is not
/// in the list below fails this test.
#[tokio::test]
async fn every_web_route_is_guarded_as_its_table_says() {
    use bosun::coordinator::web::{route_table, Guard};
    let t = setup();
    let base = t.s.base.clone();
    let data = t.s.data.clone();
    cli(
        &data,
        &[
            "project",
            "set",
            "--slug",
            "acme/widget",
            "--public",
            "false",
        ],
    );
    let a = register(&t.s, "a1").await;
    let job = enqueue(&data, &[]);
    a.claim_job(5).await;
    a.log(&job, 0, b"PRIVATE-LOG-LINE\n").await;
    let out = cli(
        &data,
        &["trigger", "--project", "acme/widget", "--ref", "main"],
    );
    let pipeline = out
        .split_whitespace()
        .nth(1)
        .expect("pipeline id")
        .to_owned();
    let reader = login_http(&base, &t.api, "reader").await;
    let stranger = login_http(&base, &t.api, "stranger").await;
    let operator = cli(&data, &["operator", "new", "ops"]);

    // Who nobody logged in may reach: nothing here shows anything of a project.
    let public = [
        "/assets/{name}",
        "/pipeline-assets/{name}",
        "/login",
        "/login/bitbucket",
        "/login/bitbucket/callback",
        // The token login form: its own cookie-bound CSRF field, before any session.
        "/login/bitbucket/token",
        "/logout",
        "/me",
        // A person's own SSH keys: their session and CSRF token decide.
        "/me/ssh-keys",
        "/me/ssh-keys/bitbucket",
        "/me/ssh-keys/{key}/delete",
    ];
    #[derive(Clone, Copy, Debug)]
    enum Who<'a> {
        Nobody,
        Session(&'a str),
        Operator(&'a str),
    }
    let ask = |method: &'static str, path: String, who: Who<'_>| {
        let mut req = http()
            .request(method.parse().expect("method"), format!("{base}{path}"))
            .header("content-type", "application/json")
            .body("{}");
        match who {
            Who::Nobody => {}
            Who::Session(c) => req = req.header("cookie", format!("bosun_session={c}")),
            Who::Operator(t) => req = req.bearer_auth(t),
        }
        async move {
            let r = req.send().await.expect("request");
            let status = r.status().as_u16();
            let location = r
                .headers()
                .get("location")
                .map(|l| l.to_str().expect("loc").to_owned());
            // A live stream is not read to its end.
            let body = if path.ends_with("/stream") {
                String::new()
            } else {
                r.text().await.unwrap_or_default()
            };
            (status, location, body)
        }
    };
    let routes = route_table();
    assert!(routes.len() >= 20, "{routes:?}");
    for route in routes {
        let id = if route.guard == Guard::Pipeline {
            &pipeline
        } else {
            &job
        };
        let path = route
            .path
            .replace("{id}", id)
            .replace("{*path}", "x.txt")
            .replace("{workspace}", "acme")
            .replace("{repo}", "widget")
            .replace("{name}", "x");
        let m = route.method;
        match route.guard {
            Guard::Public => assert!(
                public.contains(&route.path),
                "{} {} is open to everyone: give it a guard, or add it to the public list \
                 here if it shows nothing of any project",
                m,
                route.path
            ),
            Guard::Badge => assert_eq!(route.path, "/badge/{*path}"),
            // A person's own things: nobody is sent to log in, an operator is no person.
            Guard::Person => {
                let (st, loc, _) = ask(m, path.clone(), Who::Nobody).await;
                assert_eq!(st, 303, "{m} {path} as nobody");
                assert!(loc.is_some_and(|l| l.starts_with("/login?return_to=")));
                let (st, _, _) = ask(m, path.clone(), Who::Operator(&operator)).await;
                assert_eq!(st, 404, "{m} {path} as an operator");
                // Past the guard: refused for want of a form with its CSRF token (this
                // request's body is JSON, not a form).
                let (st, _, body) = ask(m, path.clone(), Who::Session(&stranger)).await;
                assert!(
                    st == 403 || st == 415,
                    "{m} {path} as a person: {st} {body}"
                );
            }
            // The coordinator's records: admins (and operators) only.
            Guard::Admin => {
                let (st, loc, _) = ask(m, path.clone(), Who::Nobody).await;
                assert_eq!(st, 303, "{m} {path} as nobody");
                assert!(loc.is_some_and(|l| l.starts_with("/login?return_to=")));
                for who in [Who::Session(&stranger), Who::Session(&reader)] {
                    let (st, _, body) = ask(m, path.clone(), who).await;
                    assert_eq!(st, 404, "{m} {path} as {who:?}: {body}");
                }
                let (st, _, body) = ask(m, path.clone(), Who::Operator(&operator)).await;
                assert_eq!(st, 200, "{m} {path} as an operator: {body}");
            }
            Guard::Job | Guard::Pipeline | Guard::Project => {
                let (st, loc, body) = ask(m, path.clone(), Who::Nobody).await;
                assert_eq!(st, 303, "{m} {path} as nobody: {body}");
                assert!(
                    loc.as_deref()
                        .is_some_and(|l| l.starts_with("/login?return_to=")),
                    "{m} {path}: {loc:?}"
                );
                let (st, _, body) = ask(m, path.clone(), Who::Session(&stranger)).await;
                assert_eq!(st, 404, "{m} {path} as a stranger: {body}");
                assert!(!body.contains("PRIVATE-LOG-LINE") && !body.contains("acme/widget"));
                for who in [Who::Session(&reader), Who::Operator(&operator)] {
                    let (st, _, body) = ask(m, path.clone(), who).await;
                    let refused = st == 303 || (st == 404 && body.contains("<h1>Not found.</h1>"));
                    assert!(!refused, "{m} {path} as {who:?}: {st} {body}");
                }
            }
            // A project's settings: admin on its repository (or the whole coordinator).
            Guard::Settings => {
                let (st, loc, body) = ask(m, path.clone(), Who::Nobody).await;
                assert_eq!(st, 303, "{m} {path} as nobody: {body}");
                assert!(
                    loc.as_deref()
                        .is_some_and(|l| l.starts_with("/login?return_to=")),
                    "{m} {path}: {loc:?}"
                );
                let (st, _, body) = ask(m, path.clone(), Who::Session(&stranger)).await;
                assert_eq!(st, 404, "{m} {path} as a stranger: {body}");
                assert!(!body.contains("acme/widget"), "{body}");
                // A reader (and a writer: tests/it/settings_web.rs) is told what it needs.
                let (st, _, body) = ask(m, path.clone(), Who::Session(&reader)).await;
                assert_eq!(st, 403, "{m} {path} as a reader: {body}");
                assert!(body.contains("needs admin permission"), "{body}");
                // Past the guard: an operator's token reads the page; its forms need a
                // person's session and CSRF token (and this body is JSON, not a form).
                let (st, _, body) = ask(m, path.clone(), Who::Operator(&operator)).await;
                let passed = if m == "GET" {
                    st == 200
                } else {
                    st == 401 || st == 415
                };
                assert!(passed, "{m} {path} as an operator: {st} {body}");
            }
            Guard::List => {
                for (who, sees) in [
                    (Who::Nobody, false),
                    (Who::Session(&stranger), false),
                    (Who::Session(&reader), true),
                    (Who::Operator(&operator), true),
                ] {
                    let (st, _, body) = ask(m, path.clone(), who).await;
                    assert_eq!(st, 200, "{m} {path} as {who:?}");
                    assert_eq!(
                        body.contains("acme/widget"),
                        sees,
                        "{m} {path} as {who:?}: {body}"
                    );
                }
            }
        }
    }

    // What the reader reads, and may not do: the job page with its log; an action needs
    // write (after the CSRF token, which comes first).
    let (st, _, body) = ask("GET", format!("/jobs/{job}"), Who::Session(&reader)).await;
    assert_eq!(st, 200);
    assert!(body.contains("PRIVATE-LOG-LINE"), "{body}");
    let (st, _, body) = ask("GET", format!("/jobs/{job}/log.txt"), Who::Session(&reader)).await;
    assert_eq!((st, body.as_str()), (200, "PRIVATE-LOG-LINE\n"));
    let (st, _, _) = ask(
        "GET",
        format!("/jobs/{job}"),
        Who::Operator("bosun-op-not-a-token"),
    )
    .await;
    assert_eq!(st, 401, "an unknown operator token is refused");

    // Made public: anyone reads, nobody logged in acts.
    cli(
        &data,
        &[
            "project",
            "set",
            "--slug",
            "acme/widget",
            "--public",
            "true",
        ],
    );
    let (st, _, body) = ask("GET", format!("/jobs/{job}"), Who::Nobody).await;
    assert_eq!(st, 200);
    assert!(body.contains("PRIVATE-LOG-LINE"));
    let (st, _, body) = ask("GET", "/".to_owned(), Who::Nobody).await;
    assert_eq!(st, 200);
    assert!(body.contains("acme/widget"));
    let (st, _, _) = ask("POST", format!("/pipelines/{pipeline}/cancel"), Who::Nobody).await;
    assert_eq!(st, 401, "reading a public project gives no action");
}

/// A permission taken away on Bitbucket: an action re-checks at once; a read stops within
/// `--permissions-refresh`; given back, it reads again.
#[tokio::test]
async fn a_permission_taken_away_upstream_applies_within_the_bound() {
    let t = setup_with(&["--permissions-refresh", "2s"]);
    let base = t.s.base.clone();
    let data = t.s.data.clone();
    let job = enqueue(&data, &[]);
    let out = cli(
        &data,
        &["trigger", "--project", "acme/widget", "--ref", "main"],
    );
    let pipeline = out
        .split_whitespace()
        .nth(1)
        .expect("pipeline id")
        .to_owned();
    let reader = login_http(&base, &t.api, "reader").await;
    let writer = login_http(&base, &t.api, "writer").await;
    let page = |cookie: String| {
        let url = format!("{base}/jobs/{job}");
        async move {
            http()
                .get(url)
                .header("cookie", format!("bosun_session={cookie}"))
                .send()
                .await
                .expect("page")
                .status()
                .as_u16()
        }
    };
    assert_eq!(page(reader.clone()).await, 200);

    // Write taken away: the next action is refused, whatever the refresh bound.
    t.api.set_permission("writer", "acme/widget", Some("read"));
    let csrf = csrf_of(&base, &writer).await;
    let (st, body) = cancel(&base, &pipeline, &writer, Some(&csrf)).await;
    assert_eq!(st, 403, "{body}");
    assert!(body.contains("needs write permission"), "{body}");

    // Read taken away: refused within the bound (2 s here), reading again once given back.
    t.api.set_permission("reader", "acme/widget", None);
    let taken = std::time::Instant::now();
    while page(reader.clone()).await != 404 {
        assert!(
            taken.elapsed() < Duration::from_secs(6),
            "still readable {:?} after the permission was taken away",
            taken.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    t.api.set_permission("reader", "acme/widget", Some("read"));
    let given = std::time::Instant::now();
    while page(reader.clone()).await != 200 {
        assert!(
            given.elapsed() < Duration::from_secs(6),
            "not readable again"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let refreshes = t
        .api
        .requests()
        .iter()
        .filter(|r| {
            r.call() == "POST /site/oauth2/access_token"
                && r.body.contains("grant_type=refresh_token")
        })
        .count();
    assert!(refreshes >= 3, "{refreshes}");
}

//! Who may SSH into a rerun that holds its project's user key (docs/ssh.md, "Who may rerun
//! with SSH"), with real processes only: `bosun coordinator` logging people in against the
//! Bitbucket stand-in (`harness::bitbucket_api`), `bosun agent` with its SSH gateway, Docker,
//! the git stand-in, and the real OpenSSH client. People add their public keys on their page
//! and rerun a private project's job with SSH from its page: the key's owner gets the user
//! key, another writer gets the deploy key only (or a refusal under `--ssh-policy refuse`),
//! a reader is refused, and only the asker's own keys get in.

use crate::harness::bitbucket_api::{Account, BitbucketApi};
use crate::harness::{self, free_port, poll, Agent, Coordinator, Rig};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

const KEY: &str = "consumer-key";
const SECRET: &str = "consumer-s3cret-ssh";

fn account(nick: &str, permission: &str) -> Account {
    Account {
        uuid: format!("{{acct-{nick}}}"),
        nickname: nick.into(),
        token: format!("bb-access-{nick}-Qx7"),
        permissions: vec![(
            "acme/widget".to_owned(),
            "{repo-acme/widget}".to_owned(),
            permission.to_owned(),
        )],
    }
}

/// Fields drop in order: the agent (its containers) first, the coordinator, the stand-ins.
struct Setup {
    agent: Agent,
    c: Coordinator,
    _rig: Rig,
    web: Web,
    port: u16,
}

/// The pages as people use them: logging in against the stand-in, GETs and form POSTs,
/// personal tokens and API v2 calls with them (also used by `context_groups.rs`).
pub(crate) struct Web {
    base: String,
    /// Where people's key pairs are made.
    dir: PathBuf,
    pub(crate) api: BitbucketApi,
    pub(crate) rt: tokio::runtime::Runtime,
}

fn setup() -> Setup {
    use std::os::unix::fs::PermissionsExt;
    harness::ensure_images();
    let rig = Rig::start();
    rig.create_repo("acme/widget");
    let repo = rig.work_repo("acme/widget");
    repo.write(
        ".circleci/config.yml",
        &format!(
            "version: 2.1\njobs:\n  build:\n    docker: [{{image: {}, user: circleci}}]\n    steps:\n      - checkout\n      - run: echo built-it\n",
            harness::image("base")
        ),
    );
    repo.commit("config");
    repo.push("HEAD:refs/heads/main");
    let api = BitbucketApi::start("Bearer not-used-here", None);
    api.oauth(
        KEY,
        SECRET,
        vec![
            account("owner", "write"),
            account("other", "write"),
            account("reader", "read"),
        ],
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("oauth-consumer");
    std::fs::write(&file, format!("{KEY}:{SECRET}\n")).expect("write");
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    // The stand-in's hosts: a pipeline triggered through the API is compiled from a clone.
    let c = Coordinator::builder()
        .vcs_hosts(&rig)
        .args(&[
            "--bitbucket-oauth-file",
            file.to_str().expect("utf8"),
            "--bitbucket-oauth-url",
            &api.base,
            "--bitbucket-api",
            &api.cloud_api(),
        ])
        .start();
    // The consumer file was read at start.
    drop(dir);
    let user_key = rig.user_key(&["acme"]);
    harness::add_stand_in_project(
        &c.data,
        &rig,
        "acme/widget",
        &["--user-key", user_key.private_path.to_str().expect("utf8")],
    );
    c.cli(&[
        "project",
        "set",
        "--slug",
        "acme/widget",
        "--public",
        "false",
        "--user-key-owner",
        "{acct-owner}",
    ]);
    let port = free_port();
    let agent = c
        .agent(&rig, "ssh")
        .ssh_gateway(&format!("127.0.0.1:{port}"))
        .toml("ssh_wait_secs = 120\nssh_grace_secs = 1\nready_containers = 0")
        .start();
    let web = Web::new(&c, api);
    Setup {
        agent,
        c,
        _rig: rig,
        web,
        port,
    }
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client")
}

/// A person logged in: their session cookie and CSRF token.
pub(crate) struct Person {
    pub(crate) cookie: String,
    pub(crate) csrf: String,
    /// Their key pair (`id_NAME`, `id_NAME.pub`).
    key: PathBuf,
}

impl Web {
    pub(crate) fn new(c: &Coordinator, api: BitbucketApi) -> Web {
        Web {
            base: c.url(),
            dir: c.dir().to_owned(),
            api,
            rt: tokio::runtime::Runtime::new().expect("runtime"),
        }
    }

    pub(crate) fn base(&self) -> String {
        self.base.clone()
    }

    /// Log in as `who` over HTTP, following the redirects a browser would.
    pub(crate) fn login(&self, who: &str) -> Person {
        self.api.sign_in(Some(who));
        let base = self.base();
        let cookie = self.rt.block_on(async {
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
            let back = r.headers()["location"].to_str().expect("loc").to_owned();
            let r = http()
                .get(&back)
                .header("cookie", login_cookie)
                .send()
                .await
                .expect("callback");
            assert_eq!(r.status(), 303);
            r.headers()
                .get_all("set-cookie")
                .iter()
                .filter_map(|v| v.to_str().ok())
                .find_map(|c| c.strip_prefix("bosun_session="))
                .and_then(|c| c.split(';').next())
                .expect("a session cookie")
                .to_owned()
        });
        let (_, page) = self.get(&cookie, "/me");
        let re = regex::Regex::new(r#"name="csrf" value="([0-9a-f]+)""#).expect("regex");
        let csrf = re.captures(&page).expect("a CSRF token")[1].to_owned();
        let key = self.dir.join(format!("id_{who}"));
        harness::run(
            Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-C", who, "-f"])
                .arg(&key),
        );
        Person { cookie, csrf, key }
    }

    pub(crate) fn get(&self, cookie: &str, path: &str) -> (u16, String) {
        let url = format!("{}{path}", self.base());
        self.rt.block_on(async {
            let r = http()
                .get(url)
                .header("cookie", format!("bosun_session={cookie}"))
                .send()
                .await
                .expect("GET");
            let st = r.status().as_u16();
            (st, r.text().await.expect("text"))
        })
    }

    /// A form POST as `p`: (status, Location, body).
    pub(crate) fn post(
        &self,
        p: &Person,
        path: &str,
        fields: &[(&str, &str)],
    ) -> (u16, String, String) {
        let url = format!("{}{path}", self.base());
        let mut form: Vec<(String, String)> = vec![("csrf".into(), p.csrf.clone())];
        form.extend(fields.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let cookie = p.cookie.clone();
        self.rt.block_on(async {
            let r = http()
                .post(url)
                .header("cookie", format!("bosun_session={cookie}"))
                .form(&form)
                .send()
                .await
                .expect("POST");
            let st = r.status().as_u16();
            let loc = r
                .headers()
                .get("location")
                .and_then(|l| l.to_str().ok())
                .unwrap_or("")
                .to_owned();
            (st, loc, r.text().await.expect("text"))
        })
    }

    fn add_key(&self, p: &Person) {
        let public = std::fs::read_to_string(format!("{}.pub", p.key.display())).expect("pub");
        let (st, loc, body) = self.post(p, "/me/ssh-keys", &[("key", &public)]);
        assert_eq!((st, loc.as_str()), (303, "/me#ssh-keys"), "{body}");
    }
}

impl std::ops::Deref for Setup {
    type Target = Web;
    fn deref(&self) -> &Web {
        &self.web
    }
}

impl Setup {
    fn status(&self, job: &str) -> String {
        self.c
            .cli(&["jobs"])
            .lines()
            .find(|l| l.split_whitespace().next() == Some(job))
            .and_then(|l| l.split_whitespace().nth(5).map(str::to_owned))
            .unwrap_or_default()
    }

    fn wait(&self, what: &str, within: Duration, mut f: impl FnMut() -> bool) {
        if poll(within, Duration::from_millis(250), || f().then_some(())).is_none() {
            panic!(
                "{what}: not within {within:?}; agent log:\n{}",
                self.agent.log_text()
            );
        }
    }

    /// `p` reruns `job` with SSH asking for JSON: the answer.
    fn rerun_json(&self, p: &Person, job: &str) -> serde_json::Value {
        let url = format!("{}/jobs/{job}/rerun-ssh", self.base());
        let (cookie, csrf) = (p.cookie.clone(), p.csrf.clone());
        self.rt.block_on(async {
            let r = http()
                .post(url)
                .header("cookie", format!("bosun_session={cookie}"))
                .header("accept", "application/json")
                .form(&[("csrf", csrf)])
                .send()
                .await
                .expect("POST");
            assert_eq!(r.status(), 200);
            r.json().await.expect("json")
        })
    }

    /// `p` reruns `job` with SSH from its page: the new job's id.
    fn rerun(&self, p: &Person, job: &str) -> String {
        let (st, loc, body) = self.post(p, &format!("/jobs/{job}/rerun-ssh"), &[]);
        assert_eq!(st, 303, "{body}");
        loc.strip_prefix("/jobs/")
            .expect("to the new job")
            .to_owned()
    }

    fn held(&self, p: &Person, job: &str) {
        self.wait("the rerun held for SSH", Duration::from_secs(180), || {
            self.get(&p.cookie, &format!("/jobs/{job}"))
                .1
                .contains("0 sessions, held until")
        });
    }

    /// `ssh JOB@gateway CMD` with `key`: exit status and stdout.
    fn ssh(&self, key: &Path, job: &str, cmd: &str) -> (Option<i32>, String) {
        let o = Command::new("ssh")
            .args([
                "-o",
                "StrictHostKeyChecking=no",
                "-o",
                "UserKnownHostsFile=/dev/null",
                "-o",
                "LogLevel=ERROR",
                "-o",
                "IdentitiesOnly=yes",
                "-o",
                "BatchMode=yes",
                "-p",
                &self.port.to_string(),
                "-i",
            ])
            .arg(key)
            .arg(format!("{job}@127.0.0.1"))
            .arg(cmd)
            .stdin(Stdio::null())
            .output()
            .expect("ssh");
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stdout).into_owned(),
        )
    }

    /// Wait until the agent let `job` go (its session ended, the grace passed).
    fn released(&self, p: &Person, job: &str) {
        self.wait("the rerun released", Duration::from_secs(60), || {
            let page = self.get(&p.cookie, &format!("/jobs/{job}")).1;
            page.split("<span id=\"ssh\">")
                .nth(1)
                .is_some_and(|row| row.starts_with("rerun it with SSH"))
        });
    }
}

const KEYS_IN_JOB: &str = "ls ~/.ssh | grep '^id_bosun_' | sort | tr '\\n' ' '";

#[test]
fn who_may_rerun_with_ssh_holding_the_user_key() {
    let s = setup();
    let owner = s.login("owner");
    let other = s.login("other");
    let reader = s.login("reader");
    // Keys are checked where they enter: a private key is refused without being echoed.
    let private = std::fs::read_to_string(&owner.key).expect("private key");
    let (st, _, body) = s.post(&owner, "/me/ssh-keys", &[("key", &private)]);
    assert_eq!(st, 400, "{body}");
    assert!(body.contains("private key") && !body.contains(private.lines().nth(1).expect("line")));
    // …and a form without the CSRF token changes nothing.
    let public = std::fs::read_to_string(format!("{}.pub", owner.key.display())).expect("pub");
    let forged = Person {
        cookie: owner.cookie.clone(),
        csrf: "00".repeat(32),
        key: owner.key.clone(),
    };
    assert_eq!(s.post(&forged, "/me/ssh-keys", &[("key", &public)]).0, 403);
    for p in [&owner, &other, &reader] {
        s.add_key(p);
    }
    // The page lists the key by its fingerprint, as ssh-keygen prints it.
    let listed = harness::run(
        Command::new("ssh-keygen")
            .arg("-lf")
            .arg(format!("{}.pub", owner.key.display())),
    );
    let fingerprint = listed
        .split_whitespace()
        .nth(1)
        .expect("fingerprint")
        .to_owned();
    let me = s.get(&owner.cookie, "/me").1;
    assert!(me.contains(&format!("<code>{fingerprint}</code>")), "{me}");

    let first = harness::enqueue_job(&s.c.data, "build", &[]);
    s.wait("the first run", Duration::from_secs(180), || {
        s.status(&first) == "success"
    });
    // The page offers the button to a logged-in person.
    assert!(s
        .get(&owner.cookie, &format!("/jobs/{first}"))
        .1
        .contains(&format!("action=\"/jobs/{first}/rerun-ssh\"")));

    // A reader may not; nor may a form without the CSRF token.
    let (st, _, body) = s.post(&reader, &format!("/jobs/{first}/rerun-ssh"), &[]);
    assert_eq!(st, 403, "{body}");
    assert!(body.contains("write permission"), "{body}");
    let (st, _, _) = s.post(
        &Person {
            cookie: other.cookie.clone(),
            csrf: "00".repeat(32),
            key: other.key.clone(),
        },
        &format!("/jobs/{first}/rerun-ssh"),
        &[],
    );
    assert_eq!(st, 403);

    // The key's owner: the rerun holds the user key, and only the owner's key gets in.
    let job = s.rerun(&owner, &first);
    let page = s.get(&owner.cookie, &format!("/jobs/{job}")).1;
    assert!(
        page.contains("asked by owner: with the project&#39;s user key"),
        "{page}"
    );
    s.held(&owner, &job);
    assert_eq!(
        s.ssh(&other.key, &job, "true").0,
        Some(255),
        "another's key"
    );
    let (code, out) = s.ssh(&owner.key, &job, KEYS_IN_JOB);
    assert_eq!(code, Some(0));
    assert_eq!(out.trim(), "id_bosun_deploy id_bosun_user", "{out}");
    s.released(&owner, &job);

    // Another writer: the rerun runs without the user key, and the answer and the page
    // say so.
    let answer = s.rerun_json(&other, &first);
    assert_eq!(answer["user_key"], "without", "{answer}");
    assert!(
        answer["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("rerun with SSH without the project's user key")),
        "{answer}"
    );
    let job = answer["job_id"].to_string();
    let page = s.get(&other.cookie, &format!("/jobs/{job}")).1;
    assert!(
        page.contains("asked by other: without the project&#39;s user key: it belongs to the Bitbucket account {acct-owner}"),
        "{page}"
    );
    s.held(&other, &job);
    assert_eq!(
        s.ssh(&owner.key, &job, "true").0,
        Some(255),
        "the owner's key is not let into another's rerun"
    );
    let (code, out) = s.ssh(&other.key, &job, KEYS_IN_JOB);
    assert_eq!(code, Some(0));
    assert_eq!(out.trim(), "id_bosun_deploy", "{out}");
    s.released(&other, &job);

    // The project refuses a rerun without the user key: another writer is refused, saying
    // why; the owner still may (not run: the refusal is what this checks).
    s.c.cli(&[
        "project",
        "set",
        "--slug",
        "acme/widget",
        "--ssh-policy",
        "refuse",
    ]);
    let (st, _, body) = s.post(&other, &format!("/jobs/{first}/rerun-ssh"), &[]);
    assert_eq!(st, 403, "{body}");
    assert!(
        body.contains("only its owner or a coordinator admin may rerun it with SSH")
            && body.contains("--ssh-policy refuse"),
        "{body}"
    );
    // The owner still may.
    let owners = s.rerun(&owner, &first);
    s.c.cli(&["cancel", &owners]);

    // Someone without a key gets nothing to log in with: refused, saying what to do. Their
    // key is removed from their page first (another person cannot remove it).
    s.c.cli(&[
        "project",
        "set",
        "--slug",
        "acme/widget",
        "--ssh-policy",
        "without-user-key",
    ]);
    let me = s.get(&other.cookie, "/me").1;
    let re = regex::Regex::new(r#"data-key="([0-9]+)""#).expect("regex");
    let key_id = re.captures(&me).expect("a listed key")[1].to_owned();
    let remove = format!("/me/ssh-keys/{key_id}/delete");
    assert_eq!(s.post(&owner, &remove, &[]).0, 404, "not the owner's key");
    assert_eq!(s.post(&other, &remove, &[]).0, 303);
    assert!(!s
        .get(&other.cookie, "/me")
        .1
        .contains(&format!("data-key=\"{key_id}\"")));
    let (st, _, body) = s.post(&other, &format!("/jobs/{first}/rerun-ssh"), &[]);
    assert_eq!(st, 409, "{body}");
    assert!(body.contains("no SSH key"), "{body}");

    // The host's CLI acts as an operator: it gets the user key, and says so on stderr.
    let pub_key = format!("{}.pub", owner.key.display());
    let o = harness::output(
        Command::new(harness::bosun_bin())
            .args([
                "coordinator",
                "rerun",
                &first,
                "--ssh-key",
                &pub_key,
                "--data",
            ])
            .arg(&s.c.data),
    );
    assert!(o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("rerun with SSH with the project's user key (it belongs to the Bitbucket account {acct-owner})"),
        "{err}"
    );
    let id = String::from_utf8_lossy(&o.stdout).trim().to_owned();
    assert!(id.parse::<i64>().is_ok(), "stdout is the job id: {id}");
    s.c.cli(&["cancel", &id]);

    // Each rerun with SSH from the page is in the audit log, by the person who asked.
    let audit = s.c.cli(&["audit", "--json"]);
    let by = |who: &str| {
        audit
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|e| e["action"] == "rerun-ssh" && e["actor"] == format!("person:{who}"))
            .count()
    };
    assert!(by("owner") >= 2 && by("other") >= 1, "{audit}");
}

/// A person's keys read from their Bitbucket account (with their own token, through the
/// refresh token kept at login): Bosun's own user keys on the account are left out, a line
/// that is not a key is skipped, and reading again replaces what was read before while keys
/// added on the page stay.
#[test]
fn a_persons_keys_are_read_from_their_bitbucket_account() {
    use std::os::unix::fs::PermissionsExt;
    let api = BitbucketApi::start("Bearer not-used-here", None);
    api.oauth(KEY, SECRET, vec![account("owner", "write")]);
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("oauth-consumer");
    std::fs::write(&file, format!("{KEY}:{SECRET}\n")).expect("write");
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let c = Coordinator::builder()
        .args(&[
            "--bitbucket-oauth-file",
            file.to_str().expect("utf8"),
            "--bitbucket-oauth-url",
            &api.base,
            "--bitbucket-api",
            &api.cloud_api(),
        ])
        .start();
    let keygen = |name: &str| {
        let key = c.dir().join(name);
        harness::run(
            Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-C", name, "-f"])
                .arg(&key),
        );
        let public = std::fs::read_to_string(format!("{}.pub", key.display())).expect("pub");
        let fp = harness::run(
            Command::new("ssh-keygen")
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
    let (desk, desk_fp) = keygen("desk");
    api.set_account_ssh_keys(
        "owner",
        &[
            (&laptop, "laptop"),
            (&bosun, "bosun user key for acme/widget"),
            ("ssh-ed25519 not-a-key", "broken"),
        ],
    );
    // Only what logging in needs: no agent, no rig.
    let s = Web::new(&c, api);
    let p = s.login("owner");
    let (st, loc, body) = s.post(&p, "/me/ssh-keys/bitbucket", &[]);
    assert_eq!((st, loc.as_str()), (303, "/me#ssh-keys"), "{body}");
    let me = s.get(&p.cookie, "/me").1;
    assert!(me.contains(&laptop_fp), "{me}");
    assert!(
        !me.contains(&bosun_fp),
        "Bosun's own user key must never let anyone in: {me}"
    );
    let asked: Vec<_> = s
        .api
        .requests()
        .into_iter()
        .filter(|r| r.path.contains("/ssh-keys"))
        .collect();
    assert_eq!(asked.len(), 1, "{asked:?}");
    assert!(asked[0].path.contains("acct-owner"), "{:?}", asked[0].path);
    assert_eq!(
        asked[0].header("authorization"),
        Some("Bearer bb-access-owner-Qx7")
    );
    // A key added on the page stays when the account's keys are read again.
    let (st, _, _) = s.post(&p, "/me/ssh-keys", &[("key", &desk)]);
    assert_eq!(st, 303);
    s.api.set_account_ssh_keys("owner", &[]);
    assert_eq!(s.post(&p, "/me/ssh-keys/bitbucket", &[]).0, 303);
    let me = s.get(&p.cookie, "/me").1;
    assert!(!me.contains(&laptop_fp) && me.contains(&desk_fp), "{me}");
    // Without the CSRF token nothing is read.
    let forged = Person {
        cookie: p.cookie.clone(),
        csrf: "00".repeat(32),
        key: p.key.clone(),
    };
    assert_eq!(s.post(&forged, "/me/ssh-keys/bitbucket", &[]).0, 403);
}

impl Web {
    /// `p` makes a personal API token on their page: its value, shown once.
    pub(crate) fn personal_token(&self, p: &Person) -> String {
        let (st, _, body) = self.post(p, "/me/tokens", &[("name", "ssh script")]);
        assert_eq!(st, 200, "{body}");
        let re = regex::Regex::new(r#"<code id="new-token">([^<]+)</code>"#).expect("regex");
        re.captures(&body).expect("the new token")[1].to_owned()
    }

    /// An API v2 call with `token`: status and JSON body.
    pub(crate) fn api(
        &self,
        method: &str,
        path: &str,
        token: &str,
        body: Option<serde_json::Value>,
    ) -> (u16, serde_json::Value) {
        let url = format!("{}/api/v2{path}", self.base());
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        self.rt.block_on(async {
            let mut r = http().request(method, url).header("Circle-Token", token);
            if let Some(b) = body {
                r = r.json(&b);
            }
            let r = r.send().await.expect("API call");
            let st = r.status().as_u16();
            (st, r.json().await.unwrap_or(serde_json::Value::Null))
        })
    }
}

/// API v2's `POST /workflow/{id}/rerun` with `enable_ssh` and a personal token reruns the
/// chosen jobs with SSH through the same door as the job page's button: only the caller's
/// keys get in, the user key is held as the rule says (and the answer says so per job), a
/// reader, a project token and an operator token are refused, a person without a key gets
/// 409, every rerun is audited, and no token reaches the coordinator's log.
#[test]
fn a_personal_token_reruns_a_workflow_job_with_ssh() {
    let s = setup();
    let owner = s.login("owner");
    let other = s.login("other");
    let reader = s.login("reader");
    s.add_key(&owner);
    s.add_key(&other);
    let (owner_t, other_t, reader_t) = (
        s.personal_token(&owner),
        s.personal_token(&other),
        s.personal_token(&reader),
    );
    let project_t = s.c.cli(&[
        "api-token",
        "new",
        "--project",
        "acme/widget",
        "--scope",
        "trigger",
        "nightly",
    ]);
    let operator_t = s.c.cli(&["operator", "new", "ops"]);

    let out =
        s.c.cli(&["trigger", "--project", "acme/widget", "--ref", "main"]);
    let number = out
        .split_whitespace()
        .nth(1)
        .unwrap_or_else(|| panic!("{out}"))
        .to_owned();
    let (st, pipeline) = s.api(
        "GET",
        &format!("/project/bb/acme/widget/pipeline/{number}"),
        &other_t,
        None,
    );
    assert_eq!(st, 200, "{pipeline}");
    let pid = pipeline["id"].as_str().expect("pipeline id").to_owned();
    let mut workflow = String::new();
    let mut first = serde_json::Value::Null;
    let mut seen = serde_json::Value::Null;
    let ran = poll(Duration::from_secs(120), Duration::from_millis(500), || {
        let (_, ws) = s.api("GET", &format!("/pipeline/{pid}/workflow"), &other_t, None);
        seen = ws.clone();
        let w = ws["items"][0]["id"].as_str()?;
        workflow = w.to_owned();
        let (_, jobs) = s.api("GET", &format!("/workflow/{w}/job"), &other_t, None);
        first = jobs["items"][0].clone();
        (first["status"] == "success").then_some(())
    });
    assert!(
        ran.is_some(),
        "the first run: {seen} {first}\ncoordinator log:\n{}\nagent log:\n{}",
        s.c.log_text(),
        s.agent.log_text()
    );
    let job_uuid = first["id"].as_str().expect("job id").to_owned();
    let rerun = format!("/workflow/{workflow}/rerun");
    let ssh_body = serde_json::json!({"enable_ssh": true, "jobs": [job_uuid]});

    // Refused: a project token (no person's keys), an operator token (no keys either), a
    // reader, and requests CircleCI refuses too.
    let (st, body) = s.api("POST", &rerun, &project_t, Some(ssh_body.clone()));
    assert_eq!(st, 403, "{body}");
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("project token")),
        "{body}"
    );
    let (st, body) = s.api("POST", &rerun, &operator_t, Some(ssh_body.clone()));
    assert_eq!(st, 400, "{body}");
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("personal token")),
        "{body}"
    );
    let (st, body) = s.api("POST", &rerun, &reader_t, Some(ssh_body.clone()));
    assert_eq!(st, 403, "{body}");
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("write permission")),
        "{body}"
    );
    for bad in [
        serde_json::json!({"enable_ssh": true, "from_failed": true}),
        serde_json::json!({"enable_ssh": true}),
        serde_json::json!({"enable_ssh": true, "jobs": ["00000000-0000-0000-0000-000000000000"]}),
    ] {
        let (st, body) = s.api("POST", &rerun, &other_t, Some(bad.clone()));
        assert_eq!(st, 400, "{bad}: {body}");
    }

    // Another writer: the rerun runs without the user key, and the answer and the page say
    // so; only their key gets in.
    let (st, body) = s.api("POST", &rerun, &other_t, Some(ssh_body.clone()));
    assert_eq!(st, 202, "{body}");
    assert_eq!(body["workflow_id"], workflow.as_str(), "{body}");
    let done = &body["jobs"][0];
    assert_eq!(done["id"], job_uuid.as_str(), "{body}");
    assert_eq!(done["user_key"], "without", "{body}");
    assert!(
        done["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("rerun with SSH without the project's user key")),
        "{body}"
    );
    let job = done["job_number"].to_string();
    assert_ne!(job, first["job_number"].to_string(), "a new job: {body}");
    let page = s.get(&other.cookie, &format!("/jobs/{job}")).1;
    assert!(
        page.contains("asked by other: without the project&#39;s user key"),
        "{page}"
    );
    s.held(&other, &job);
    assert_eq!(
        s.ssh(&owner.key, &job, "true").0,
        Some(255),
        "another's key"
    );
    let (code, out) = s.ssh(&other.key, &job, KEYS_IN_JOB);
    assert_eq!(code, Some(0));
    assert_eq!(out.trim(), "id_bosun_deploy", "{out}");
    s.released(&other, &job);

    // The key's owner gets the user key (not run: what it holds is what this checks).
    let (st, body) = s.api("POST", &rerun, &owner_t, Some(ssh_body.clone()));
    assert_eq!(st, 202, "{body}");
    assert_eq!(body["jobs"][0]["user_key"], "with", "{body}");
    s.c.cli(&["cancel", &body["jobs"][0]["job_number"].to_string()]);

    // Without a stored key: 409, saying what to do.
    let me = s.get(&other.cookie, "/me").1;
    let re = regex::Regex::new(r#"data-key="([0-9]+)""#).expect("regex");
    let key_id = re.captures(&me).expect("a listed key")[1].to_owned();
    assert_eq!(
        s.post(&other, &format!("/me/ssh-keys/{key_id}/delete"), &[])
            .0,
        303
    );
    let (st, body) = s.api("POST", &rerun, &other_t, Some(ssh_body));
    assert_eq!(st, 409, "{body}");
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("no SSH key")),
        "{body}"
    );

    // Audited, by the person, as through API v2.
    let audit = s.c.cli(&["audit", "--json"]);
    let rows: Vec<serde_json::Value> = audit
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .filter(|e: &serde_json::Value| {
            e["action"] == "rerun-ssh"
                && e["detail"]
                    .as_str()
                    .is_some_and(|d| d.starts_with("API v2"))
        })
        .collect();
    let by = |who: &str| {
        rows.iter()
            .filter(|e| e["actor"] == format!("person:{who}"))
            .count()
    };
    assert_eq!((by("other"), by("owner"), rows.len()), (1, 1, 2), "{audit}");

    // No token value in the coordinator's log or the audit log.
    let log = s.c.log_text();
    assert!(log.contains("rerun with SSH"), "{log}");
    for t in [&owner_t, &other_t, &reader_t, &project_t, &operator_t] {
        let t = t.trim();
        assert!(!log.contains(t) && !audit.contains(t), "a token in the log");
    }
}

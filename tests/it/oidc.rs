//! The coordinator as an OIDC issuer, end to end with real processes: `bosun coordinator serve
//! --oidc-issuer` + `bosun agent` + Docker + the Bitbucket stand-in. A job writes its
//! `$CIRCLE_OIDC_TOKEN` / `_V2` into files it stores as artifacts (its log shows them
//! masked); the test follows the issuer's discovery document to its JWKS over HTTP and
//! verifies both tokens with a maintained JWT library (jsonwebtoken): signature, issuer,
//! audience, subject, expiry. Then `bosun coordinator oidc rotate`: the next job's token is
//! signed by the new key, and the first job's token still verifies against the JWKS.

use crate::harness;

use crate::harness::{free_port, http_get, image, job_log, job_status, Coordinator, Rig};
use jsonwebtoken::{decode, decode_header, jwk::JwkSet, Algorithm, DecodingKey, Validation};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

fn wait_done(data: &Path, job: &str) {
    let t0 = Instant::now();
    loop {
        let s = job_status(data, job);
        if ["success", "fail", "canceled", "timedout"]
            .iter()
            .any(|w| s.contains(w))
        {
            assert_eq!(s, "success", "job {job}; log:\n{}", job_log(data, job));
            return;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(180),
            "job {job} still `{s}`; log:\n{}",
            job_log(data, job)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The file `name` the job `job` stored as an artifact in the agent's store (anywhere under
/// `projects/<p>/artifacts/<job>/`).
fn artifact(store: &Path, job: &str, name: &str) -> String {
    fn find(dir: &Path, name: &str) -> Option<PathBuf> {
        for e in std::fs::read_dir(dir).ok()?.flatten() {
            let p = e.path();
            if p.is_dir() {
                if let Some(f) = find(&p, name) {
                    return Some(f);
                }
            } else if p.file_name().is_some_and(|n| n == name) {
                return Some(p);
            }
        }
        None
    }
    let projects = store.join("projects");
    for p in std::fs::read_dir(&projects)
        .expect("store projects")
        .flatten()
    {
        if let Some(f) = find(&p.path().join("artifacts").join(job), name) {
            return std::fs::read_to_string(f).expect("artifact");
        }
    }
    panic!(
        "no artifact {name} of job {job} under {}",
        projects.display()
    );
}

/// `KEY: value` printed by the job.
fn printed(log: &str, key: &str) -> String {
    log.lines()
        .find_map(|l| l.trim().strip_prefix(&format!("{key}: ")))
        .unwrap_or_else(|| panic!("the job printed no {key}:\n{log}"))
        .trim()
        .to_owned()
}

fn verify(
    token: &str,
    jwks: &JwkSet,
    issuer: &str,
    audience: &str,
    sub: &str,
) -> serde_json::Value {
    let header = decode_header(token).expect("a JWT header");
    assert_eq!(header.alg, Algorithm::ES256);
    let kid = header.kid.expect("a key id");
    let jwk = jwks
        .find(&kid)
        .unwrap_or_else(|| panic!("key {kid} is not in the JWKS"));
    let key = DecodingKey::from_jwk(jwk).expect("a key from the JWK");
    let mut v = Validation::new(Algorithm::ES256);
    v.set_issuer(&[issuer]);
    v.set_audience(&[audience]);
    v.set_required_spec_claims(&["exp", "iat", "iss", "aud", "sub"]);
    v.sub = Some(sub.to_owned());
    v.leeway = 0;
    let data = decode::<serde_json::Value>(token, &key, &v)
        .unwrap_or_else(|e| panic!("the token does not verify: {e}"));
    // The same token fails for another audience, subject or issuer, and with a changed byte.
    let mut other = v.clone();
    other.set_audience(&["00000000-0000-4000-8000-000000000000"]);
    assert!(decode::<serde_json::Value>(token, &key, &other).is_err());
    let mut other = v.clone();
    other.sub = Some(format!("{sub}x"));
    assert!(decode::<serde_json::Value>(token, &key, &other).is_err());
    let mut other = v.clone();
    other.set_issuer(&["https://oidc.circleci.com/org/x"]);
    assert!(decode::<serde_json::Value>(token, &key, &other).is_err());
    let (head, rest) = token.split_once('.').expect("dots");
    let tampered = format!("{head}.{}", rest.replacen('e', "f", 1));
    assert!(decode::<serde_json::Value>(&tampered, &key, &v).is_err());
    data.claims
}

fn jwks(addr: &str, issuer: &str) -> JwkSet {
    let (code, body) = http_get(addr, "/.well-known/openid-configuration").status_and_body();
    assert_eq!(code, 200, "{body}");
    let discovery: serde_json::Value = serde_json::from_str(&body).expect("discovery JSON");
    assert_eq!(discovery["issuer"], issuer);
    assert_eq!(
        discovery["id_token_signing_alg_values_supported"][0],
        "ES256"
    );
    let jwks_uri = discovery["jwks_uri"].as_str().expect("jwks_uri");
    let path = jwks_uri
        .strip_prefix(issuer)
        .expect("the JWKS lives under the issuer");
    let (code, body) = http_get(addr, path).status_and_body();
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).expect("a JWK set")
}

#[test]
fn a_jobs_oidc_tokens_verify_against_the_jwks_before_and_after_a_key_rotation() {
    let rig = Rig::start();
    rig.create_repo("acme/widget");
    let repo = rig.work_repo("acme/widget");
    repo.write(
        ".circleci/config.yml",
        &format!(
            r#"version: 2.1
jobs:
  build:
    docker: [{{image: {img}}}]
    steps:
      - run: |
          mkdir -p /tmp/oidc
          printf '%s' "$CIRCLE_OIDC_TOKEN" > /tmp/oidc/v1
          printf '%s' "$CIRCLE_OIDC_TOKEN_V2" > /tmp/oidc/v2
          echo "token: $CIRCLE_OIDC_TOKEN"
          echo "project: $CIRCLE_PROJECT_ID"
          echo "organization: $CIRCLE_ORGANIZATION_ID"
      - store_artifacts: {{path: /tmp/oidc}}
"#,
            img = image("base")
        ),
    );
    repo.commit("config");
    repo.push("HEAD:refs/heads/main");
    // The issuer names the listener, so pick its port first.
    let listen = format!("127.0.0.1:{}", free_port());
    let issuer = format!("http://{listen}");
    let c = Coordinator::builder()
        .listen(&listen)
        .args(&["--oidc-issuer", &issuer, "--oidc-token-lifetime", "10m"])
        .start();
    let (data, addr) = (&c.data, &c.addr);
    // The key file lies beside the data directory, owner-only.
    let key_file = PathBuf::from(format!("{}.oidc-keys", data.display()));
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key_file)
            .expect("the OIDC key file")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    harness::add_stand_in_project(data, &rig, "acme/widget", &[]);
    let agent = c.agent(&rig, "oidc").start();

    let first = harness::enqueue_job(data, "build", &[]);
    wait_done(data, &first);
    let first_log = job_log(data, &first);
    let v1 = artifact(&agent.store, &first, "v1");
    let v2 = artifact(&agent.store, &first, "v2");
    assert_eq!(v1.split('.').count(), 3, "{v1}");
    // Masked in the log like any secret.
    assert!(first_log.contains("token: ********"), "{first_log}");
    assert!(!first_log.contains(&v1), "the token leaked into the log");
    let project = printed(&first_log, "project");
    let org = printed(&first_log, "organization");

    let keys = jwks(addr, &issuer);
    assert_eq!(keys.keys.len(), 1);
    // The user id is the coordinator's; the rest of the subject is what the job saw itself.
    let unverified: serde_json::Value = {
        use base64::Engine as _;
        let raw = v1.split('.').nth(1).expect("claims part");
        serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(raw)
                .expect("b64"),
        )
        .expect("claims JSON")
    };
    let sub = unverified["sub"].as_str().expect("sub").to_owned();
    let prefix = format!("org/{org}/project/{project}/user/");
    assert!(sub.starts_with(&prefix), "{sub} vs {prefix}");
    let claims = verify(&v1, &keys, &issuer, &org, &sub);
    let sub_v1 = claims["sub"].as_str().expect("sub").to_owned();
    assert_eq!(claims["oidc.circleci.com/project-id"], project.as_str());
    assert_eq!(
        claims["oidc.circleci.com/vcs-origin"],
        "bitbucket.org/acme/widget"
    );
    assert_eq!(claims["oidc.circleci.com/vcs-ref"], "refs/heads/main");
    assert_eq!(
        claims["oidc.circleci.com/context-ids"],
        serde_json::json!([])
    );
    assert_eq!(claims["oidc.circleci.com/ssh-rerun"], false);
    let (iat, exp) = (
        claims["iat"].as_i64().expect("iat"),
        claims["exp"].as_i64().expect("exp"),
    );
    assert_eq!(exp - iat, 600, "--oidc-token-lifetime 10m");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64;
    assert!(iat <= now && now < exp, "iat {iat} now {now} exp {exp}");
    let want_v2 = format!("{sub_v1}/vcs-origin/bitbucket.org/acme/widget/vcs-ref/refs/heads/main");
    verify(&v2, &keys, &issuer, &org, &want_v2);

    // Rotate: the running server signs with the new key and still publishes the old one.
    let out = c.cli(&["oidc", "rotate"]);
    assert!(out.starts_with("new signing key "), "{out}");
    let second = harness::enqueue_job(data, "build", &[]);
    wait_done(data, &second);
    let v1_second = artifact(&agent.store, &second, "v1");
    let keys = jwks(addr, &issuer);
    assert_eq!(keys.keys.len(), 2, "old and new key");
    let old_kid = decode_header(&v1).expect("header").kid;
    let new_kid = decode_header(&v1_second).expect("header").kid;
    assert_ne!(old_kid, new_kid);
    assert!(out.contains(new_kid.as_deref().unwrap_or("?")), "{out}");
    verify(&v1, &keys, &issuer, &org, &sub_v1);
    verify(&v1_second, &keys, &issuer, &org, &sub_v1);
    let listed = c.cli(&["oidc", "keys"]);
    assert_eq!(listed.lines().count(), 2, "{listed}");
    assert!(
        listed.contains("signing") && listed.contains("retired"),
        "{listed}"
    );
}

#[test]
fn without_an_issuer_there_is_no_discovery_and_no_token() {
    let c = Coordinator::builder().no_defaults().start();
    let (code, body) = http_get(&c.addr, "/.well-known/openid-configuration").status_and_body();
    assert_eq!(code, 404, "{body}");
    assert!(!Path::new(&format!("{}.oidc-keys", c.data.display())).exists());
}

#[test]
fn bosun_execute_has_no_issuer_and_says_so() {
    harness::ensure_images();
    let p = harness::Project::new(&format!(
        "version: 2.1\njobs:\n  build:\n    docker: [{{image: {img}}}]\n    steps:\n      - run: echo \"token=[${{CIRCLE_OIDC_TOKEN:-unset}}]\"\n",
        img = image("base")
    ));
    let out = p.execute(&["--json"]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert!(out.output().contains("token=[unset]"), "{}", out.stdout);
    assert!(
        out.stdout.contains("bosun execute has no OIDC issuer"),
        "{}",
        out.stdout
    );
    // A token of one's own is passed through (and masked), without the notice.
    let out = p.execute(&[
        "--json",
        "--secret-env",
        "CIRCLE_OIDC_TOKEN=my-own-token-123",
    ]);
    assert!(out.output().contains("token=[********]"), "{}", out.stdout);
    assert!(!out.stdout.contains("no OIDC issuer"), "{}", out.stdout);
}

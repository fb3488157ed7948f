//! The coordinator as an OpenID Connect issuer, as CircleCI is one for its jobs: every claimed
//! job gets `CIRCLE_OIDC_TOKEN` and `CIRCLE_OIDC_TOKEN_V2`, ES256 ID tokens with CircleCI's
//! claims, which a cloud provider verifies against the keys published at
//! `<issuer>/.well-known/openid-configuration` → `jwks_uri`.
//!
//! One door: [`Oidc`] (made from the `serve` settings) mints a job's tokens ([`Oidc::tokens`])
//! and serves discovery and the JWKS ([`router`]). Keys live in [`keys`].
//!
//! Where Bosun differs from CircleCI (docs/coordinator.md, "OIDC tokens"): the issuer is one
//! URL for the whole coordinator (`--oidc-issuer`), not one per organization; ids are Bosun's
//! derived UUIDs (the same the job sees in `CIRCLE_PROJECT_ID`/`CIRCLE_ORGANIZATION_ID`); the
//! user id is derived from the pipeline's user name; `context-ids` lists the ids of the
//! contexts the job was given (none for a forked pull request, which gets no token anyway).

pub mod keys;

use super::{AppState, Result};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use bosun_protocol::identity;
use bosun_protocol::{WireEnv, WireJob};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// The variables the tokens travel in.
pub const TOKEN_VAR: &str = "CIRCLE_OIDC_TOKEN";
pub const TOKEN_V2_VAR: &str = "CIRCLE_OIDC_TOKEN_V2";

/// Discovery and keys, under the issuer URL (which must lead to this server's root).
pub const DISCOVERY_PATH: &str = "/.well-known/openid-configuration";
pub const JWKS_PATH: &str = "/.well-known/jwks.json";

/// CircleCI's token lifetime: one hour after issuance.
pub const DEFAULT_LIFETIME: Duration = Duration::from_secs(3600);

/// Clock skew allowed for: a rotated key stays published this long past a token lifetime.
const SKEW_SECS: i64 = 300;

/// The claim names besides the standard ones (CircleCI's).
const PROJECT_ID: &str = "oidc.circleci.com/project-id";
const VCS_ORIGIN: &str = "oidc.circleci.com/vcs-origin";
const VCS_REF: &str = "oidc.circleci.com/vcs-ref";
const CONTEXT_IDS: &str = "oidc.circleci.com/context-ids";
const SSH_RERUN: &str = "oidc.circleci.com/ssh-rerun";

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum OidcAction {
    Rotate,
    Keys,
}

#[derive(clap::Args, Debug, Clone)]
pub struct OidcKeysArg {
    /// The file holding the OIDC signing keys (default: `<data dir>.oidc-keys` beside the
    /// data directory, created 0600 on first use). Keep it out of the data directory's
    /// backups: whoever has it can mint tokens your cloud accounts trust.
    #[arg(long, env = "BOSUN_COORDINATOR_OIDC_KEYS", value_name = "FILE")]
    pub oidc_keys: Option<PathBuf>,
}

impl OidcKeysArg {
    pub fn path(&self, data: &super::DataArg) -> PathBuf {
        self.oidc_keys
            .clone()
            .unwrap_or_else(|| keys::default_path(&data.data))
    }
}

/// `bosun coordinator oidc rotate|keys` on the key file at `path`: the lines to print.
pub fn cli(action: OidcAction, path: &std::path::Path) -> Result<Vec<String>> {
    Ok(match action {
        OidcAction::Rotate => {
            let kid = keys::rotate(path)?;
            vec![format!("new signing key {kid} in {}", path.display())]
        }
        OidcAction::Keys => keys::list(path)?
            .into_iter()
            .map(|(kid, created, retired)| {
                let state = match retired {
                    None => "signing".to_owned(),
                    Some(r) => format!("retired at {r}"),
                };
                format!("{kid}  created {created}  {state}")
            })
            .collect(),
    })
}

/// The issuer: its URL, the token lifetime and the signing keys.
#[derive(Debug)]
pub struct Oidc {
    issuer: String,
    lifetime: Duration,
    keys: keys::KeyRing,
}

/// What a job's tokens say about it (derived from the claim).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subject {
    pub organization_id: String,
    pub project_id: String,
    pub user_id: String,
    pub vcs_origin: String,
    /// `refs/heads/<branch>` or `refs/tags/<tag>`; empty when the job names neither.
    pub vcs_ref: String,
    pub ssh_rerun: bool,
    /// The job's contexts' ids, in the config's order.
    pub context_ids: Vec<String>,
}

impl Subject {
    pub fn of(job: &WireJob) -> Subject {
        let url = &job.project.clone_url;
        let vcs_ref = match (&job.tag, &job.branch) {
            (Some(t), _) => format!("refs/tags/{t}"),
            (None, Some(b)) => format!("refs/heads/{b}"),
            (None, None) => String::new(),
        };
        Subject {
            organization_id: identity::organization_id(url),
            project_id: identity::project_id(url),
            // CircleCI names the user who caused the job; the coordinator knows a name at
            // most (none for CLI-queued jobs: one fixed id then).
            user_id: identity::uuid_from(&format!(
                "user/{}",
                job.username.as_deref().unwrap_or("")
            )),
            vcs_origin: identity::vcs_origin(url),
            vcs_ref,
            ssh_rerun: !job.ssh_keys.is_empty(),
            context_ids: job.context_ids.clone(),
        }
    }

    /// `sub` of `CIRCLE_OIDC_TOKEN`.
    pub fn v1(&self) -> String {
        format!(
            "org/{}/project/{}/user/{}",
            self.organization_id, self.project_id, self.user_id
        )
    }

    /// `sub` of `CIRCLE_OIDC_TOKEN_V2`: the V1 subject, then where the change came from.
    pub fn v2(&self) -> String {
        format!(
            "{}/vcs-origin/{}/vcs-ref/{}",
            self.v1(),
            self.vcs_origin,
            self.vcs_ref
        )
    }
}

impl Oidc {
    /// An issuer at `issuer` (an `https://` URL in production: verifiers fetch its keys),
    /// with its keys at `key_file` (made on first use).
    pub fn new(issuer: &str, lifetime: Duration, key_file: &std::path::Path) -> Result<Oidc> {
        let issuer = issuer.trim().trim_end_matches('/').to_owned();
        let ok = (issuer.starts_with("https://") || issuer.starts_with("http://"))
            && issuer.len() > "https://".len()
            && !issuer.contains(['?', '#', ' ']);
        if !ok {
            return Err(super::CoordError::Invalid(format!(
                "--oidc-issuer `{issuer}`: expected the URL verifiers reach this server at, \
                 e.g. https://ci.example.com (no query or fragment)"
            )));
        }
        if lifetime.is_zero() || lifetime > Duration::from_secs(24 * 3600) {
            return Err(super::CoordError::Invalid(
                "--oidc-token-lifetime must be between 1s and 24h".into(),
            ));
        }
        Ok(Oidc {
            issuer,
            lifetime,
            keys: keys::KeyRing::open_or_create(key_file)?,
        })
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The claims of a token for `subject`, issued at `iat` (Unix seconds).
    pub fn claims(&self, subject: &Subject, sub: String, iat: i64) -> serde_json::Value {
        let mut c = serde_json::json!({
            "iss": self.issuer,
            "sub": sub,
            "aud": subject.organization_id,
            "iat": iat,
            "exp": iat + self.lifetime.as_secs() as i64,
            PROJECT_ID: subject.project_id,
            CONTEXT_IDS: subject.context_ids,
            SSH_RERUN: subject.ssh_rerun,
            VCS_ORIGIN: subject.vcs_origin,
        });
        if !subject.vcs_ref.is_empty() {
            c[VCS_REF] = subject.vcs_ref.clone().into();
        }
        c
    }

    /// The job's two tokens as secret variables (masked in its logs like any secret), or none
    /// for a pull request from a fork (CircleCI's default: forks get no OIDC tokens).
    pub fn tokens(&self, job: &WireJob) -> Result<Vec<WireEnv>> {
        if job.pull_request.as_ref().is_some_and(|p| p.fork) {
            return Ok(Vec::new());
        }
        let subject = Subject::of(job);
        let iat = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        let v1 = self.keys.sign(&self.claims(&subject, subject.v1(), iat))?;
        let v2 = self.keys.sign(&self.claims(&subject, subject.v2(), iat))?;
        Ok(vec![
            WireEnv {
                name: TOKEN_VAR.to_owned(),
                value: v1,
                secret: true,
            },
            WireEnv {
                name: TOKEN_V2_VAR.to_owned(),
                value: v2,
                secret: true,
            },
        ])
    }

    /// Add the job's tokens to its environment (replacing any project variable of the same
    /// name, as CircleCI's own variables would). A failure to sign is logged and the job runs
    /// without tokens: a step that needs one fails there, naming the variable.
    pub fn add_tokens(&self, job: &mut WireJob) {
        match self.tokens(job) {
            Ok(tokens) => {
                job.env
                    .retain(|e| e.name != TOKEN_VAR && e.name != TOKEN_V2_VAR);
                job.env.extend(tokens);
            }
            Err(e) => tracing::error!(job = %job.id, "no OIDC tokens for the job: {e}"),
        }
    }

    fn discovery(&self) -> serde_json::Value {
        serde_json::json!({
            "issuer": self.issuer,
            "jwks_uri": format!("{}{JWKS_PATH}", self.issuer),
            "response_types_supported": ["id_token"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["ES256"],
            "claims_supported": [
                "aud", "exp", "iat", "iss", "sub",
                PROJECT_ID, VCS_ORIGIN, VCS_REF, CONTEXT_IDS, SSH_RERUN,
            ],
        })
    }

    fn jwks(&self) -> serde_json::Value {
        let keep = self.lifetime.as_secs() as i64 + SKEW_SECS;
        serde_json::json!({ "keys": self.keys.published(keep) })
    }
}

/// Discovery and JWKS on the public listener (no token: verifiers are anyone). Without an
/// issuer they answer 404 like any unknown path.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route(DISCOVERY_PATH, get(discovery))
        .route(JWKS_PATH, get(jwks))
        .with_state(state)
}

fn cacheable(body: serde_json::Value) -> Response {
    // Verifiers cache keys; a short max-age lets a rotation's new key show up quickly.
    (
        [(axum::http::header::CACHE_CONTROL, "public, max-age=300")],
        Json(body),
    )
        .into_response()
}

async fn discovery(
    axum::extract::State(state): axum::extract::State<Arc<AppState>>,
    uri: axum::http::Uri,
) -> Response {
    match &state.oidc {
        Some(o) => cacheable(o.discovery()),
        None => super::api::not_found(uri).await,
    }
}

async fn jwks(
    axum::extract::State(state): axum::extract::State<Arc<AppState>>,
    uri: axum::http::Uri,
) -> Response {
    match &state.oidc {
        Some(o) => {
            // Reading the key file (when it changed) is blocking I/O: off the workers.
            let o = o.clone();
            match tokio::task::spawn_blocking(move || o.jwks()).await {
                Ok(body) => cacheable(body),
                Err(_) => super::api::not_found(uri).await,
            }
        }
        None => super::api::not_found(uri).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bosun_protocol::{WireProject, WirePullRequest, WireTimeouts};

    fn job() -> WireJob {
        WireJob {
            id: "7".into(),
            project: WireProject {
                uuid: "{u}".into(),
                slug: "acme/widget".into(),
                clone_url: "git@bitbucket.org:acme/widget.git".into(),
            },
            commit_sha: "0".repeat(40),
            branch: Some("main".into()),
            tag: None,
            pull_request: None,
            job_name: "build".into(),
            pipeline_number: 1,
            keys: vec![],
            known_hosts: vec![],
            env: vec![WireEnv {
                name: TOKEN_VAR.into(),
                value: "a project value".into(),
                secret: false,
            }],
            timeouts: WireTimeouts::default(),
            attempt: 1,
            previous_build_num: None,
            username: None,
            ssh_keys: vec![],
            store: None,
            pipeline: None,
            context_ids: Vec::new(),
        }
    }

    #[test]
    fn subjects_follow_circleci_formats() {
        let s = Subject::of(&job());
        let uuid = "[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}";
        let v1 =
            regex::Regex::new(&format!("^org/{uuid}/project/{uuid}/user/{uuid}$")).expect("regex");
        assert!(v1.is_match(&s.v1()), "{}", s.v1());
        assert_eq!(
            s.v2(),
            format!(
                "{}/vcs-origin/bitbucket.org/acme/widget/vcs-ref/refs/heads/main",
                s.v1()
            )
        );
        assert_eq!(
            s.project_id,
            identity::project_id("git@bitbucket.org:acme/widget.git")
        );
        let mut tagged = job();
        tagged.tag = Some("v1".into());
        assert!(Subject::of(&tagged).v2().ends_with("/vcs-ref/refs/tags/v1"));
    }

    #[test]
    fn the_context_ids_claim_lists_the_jobs_contexts_in_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let o = Oidc::new(
            "https://ci.example.com",
            DEFAULT_LIFETIME,
            &dir.path().join("k"),
        )
        .expect("oidc");
        let s = Subject::of(&job());
        assert_eq!(o.claims(&s, s.v1(), 0)[CONTEXT_IDS], serde_json::json!([]));
        let mut j = job();
        j.context_ids = vec!["id-b".into(), "id-a".into()];
        let s = Subject::of(&j);
        assert_eq!(
            o.claims(&s, s.v1(), 0)[CONTEXT_IDS],
            serde_json::json!(["id-b", "id-a"])
        );
    }

    #[test]
    fn tokens_replace_project_values_and_forks_get_none() {
        let dir = tempfile::tempdir().expect("tempdir");
        let o = Oidc::new(
            "https://ci.example.com/",
            DEFAULT_LIFETIME,
            &dir.path().join("k"),
        )
        .expect("oidc");
        assert_eq!(o.issuer(), "https://ci.example.com");
        let mut j = job();
        o.add_tokens(&mut j);
        let names: Vec<(&str, bool)> = j.env.iter().map(|e| (e.name.as_str(), e.secret)).collect();
        assert_eq!(names, vec![(TOKEN_VAR, true), (TOKEN_V2_VAR, true)]);
        assert_eq!(j.env[0].value.split('.').count(), 3);
        let mut fork = job();
        fork.pull_request = Some(WirePullRequest {
            number: 3,
            url: "u".into(),
            fork: true,
        });
        assert!(o.tokens(&fork).expect("tokens").is_empty());
        for bad in ["ci.example.com", "https://", "https://x/?a=b", "ftp://x"] {
            assert!(
                Oidc::new(bad, DEFAULT_LIFETIME, &dir.path().join("k")).is_err(),
                "{bad}"
            );
        }
    }
}

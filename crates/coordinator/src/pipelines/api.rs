//! A pipeline's config read through Bitbucket's REST API, when the project has API
//! credentials (the ones its commit statuses use) and the pipeline names a full commit: one
//! HTTPS request on a kept-alive connection instead of an SSH login and fetch into the config
//! mirror, which is most of the time from webhook to first claim (docs/benchmarks.md,
//! Pipelines).
//!
//! - Cloud (`--status-api https://api.bitbucket.org/2.0`): `GET {api}/repositories/
//!   {workspace}/{repo}/src/{commit}/.circleci/config.yml` (the file's raw content).
//! - Data Center (`--status-api data-center:https://HOST`): `GET {HOST}/rest/api/1.0/
//!   projects/{project}/repos/{repo}/raw/.circleci/config.yml?at={commit}`.
//!
//! The same limits as the mirror's read (at most [`MAX_CONFIG_BYTES`], UTF-8), streamed so
//! an oversized answer is never held whole. Anything else than a file's content answered 200
//! is an error here, and the caller falls back to the SSH mirror, which then says what is
//! wrong (no file, a link, a directory) as before. The credentials go in the Authorization
//! header only, never in a URL or an error.

use super::config::{CONFIG_PATH, MAX_CONFIG_BYTES};
pub use crate::model::ApiSource;
use crate::model::StatusApi;

/// Why the API did not give the config (the caller falls back to the mirror).
#[derive(Debug, thiserror::Error)]
pub enum ApiReadError {
    #[error("`{0}` is not a full commit hash")]
    NotACommit(String),
    #[error("the repository `{0}` is not `owner/repo`")]
    BadRepo(String),
    #[error("{0}")]
    Http(#[source] reqwest::Error),
    #[error("Bitbucket answered {0}")]
    Status(u16),
    #[error("Bitbucket answered with {0}, not a file's content")]
    NotAFile(String),
    #[error("the config is over {MAX_CONFIG_BYTES} bytes")]
    TooLarge,
    #[error("the config is not UTF-8 text")]
    NotText,
}

/// A full (40-hex) commit hash: only then is the API's file the commit's (a branch name
/// moves, and the pipeline records the full hash it ran).
pub fn full_commit(reference: &str) -> bool {
    reference.len() == 40 && reference.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The URL of the config of `commit` in `src`'s repository.
pub fn url(src: &ApiSource, commit: &str) -> Result<String, ApiReadError> {
    if !full_commit(commit) {
        return Err(ApiReadError::NotACommit(commit.to_owned()));
    }
    let (owner, repo) = src
        .repo
        .split_once('/')
        .filter(|(o, r)| {
            let ok = |s: &str| {
                !s.is_empty()
                    && s.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-_.~".contains(&b))
            };
            ok(o) && ok(r)
        })
        .ok_or_else(|| ApiReadError::BadRepo(src.repo.clone()))?;
    Ok(match &src.api {
        StatusApi::DataCenter(base) => format!(
            "{}/rest/api/1.0/projects/{owner}/repos/{repo}/raw/{CONFIG_PATH}?at={commit}",
            base.trim_end_matches('/')
        ),
        StatusApi::Cloud(base) => format!(
            "{}/repositories/{owner}/{repo}/src/{commit}/{CONFIG_PATH}",
            base.trim_end_matches('/')
        ),
    })
}

/// The client the runner keeps: one connection pool for every config read.
pub fn client() -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(10))
        .connect_timeout(std::time::Duration::from_secs(5))
        .pool_idle_timeout(std::time::Duration::from_secs(90))
        .user_agent(concat!("bosun/", env!("CARGO_PKG_VERSION")))
        // Redirects would carry the Authorization header elsewhere: none followed.
        .redirect(reqwest::redirect::Policy::none())
        .build()
}

/// Read the config of `commit` from the API.
pub async fn read(
    client: &reqwest::Client,
    src: &ApiSource,
    commit: &str,
) -> Result<String, ApiReadError> {
    let mut req = client.get(url(src, commit)?);
    // A text that is no credentials goes unsigned, and Bitbucket's 401 says so.
    if let Ok(creds) = crate::bitbucket::rest::Credentials::parse(&src.credentials) {
        req = creds.sign(req);
    }
    let mut resp = req.send().await.map_err(http)?;
    let status = resp.status();
    if status != reqwest::StatusCode::OK {
        return Err(ApiReadError::Status(status.as_u16()));
    }
    // Cloud's `src` answers a directory with a JSON listing: not the file.
    let kind = resp
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    if kind.starts_with("application/json") {
        return Err(ApiReadError::NotAFile(kind));
    }
    if resp
        .content_length()
        .is_some_and(|n| n > MAX_CONFIG_BYTES as u64)
    {
        return Err(ApiReadError::TooLarge);
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(http)? {
        if body.len() + chunk.len() > MAX_CONFIG_BYTES {
            return Err(ApiReadError::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    String::from_utf8(body).map_err(|_| ApiReadError::NotText)
}

/// How long credentials the API refused (401, 403) are not tried again for that project:
/// each try costs a round trip before the SSH fetch that reads the config anyway, and refused
/// credentials do not mend themselves. Other failures (the network, a 404, an oversized
/// answer) are tried again with the next pipeline.
pub const REFUSAL_MEMORY: std::time::Duration = std::time::Duration::from_secs(600);

/// Projects whose API credentials were refused lately, by project, API and a digest of the
/// credentials: new credentials (or another API) are tried at once.
#[derive(Default)]
pub struct Refusals {
    until: std::collections::HashMap<[u8; 32], std::time::Instant>,
}

impl Refusals {
    fn key(project: &str, src: &ApiSource) -> [u8; 32] {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        let api = src.api.to_string();
        for part in [project, api.as_str(), src.credentials.as_str()] {
            h.update((part.len() as u64).to_le_bytes());
            h.update(part.as_bytes());
        }
        h.finalize().into()
    }

    /// Whether `project`'s credentials for `src` were refused within [`REFUSAL_MEMORY`].
    pub fn holds(&mut self, project: &str, src: &ApiSource) -> bool {
        let now = std::time::Instant::now();
        self.until.retain(|_, until| *until > now);
        self.until.contains_key(&Self::key(project, src))
    }

    /// Remember `error` when it is a refusal of the credentials; whether it was.
    pub fn note(&mut self, project: &str, src: &ApiSource, error: &ApiReadError) -> bool {
        let refused = matches!(error, ApiReadError::Status(401 | 403));
        if refused {
            self.until.insert(
                Self::key(project, src),
                std::time::Instant::now() + REFUSAL_MEMORY,
            );
        }
        refused
    }
}

/// reqwest's errors name the URL (no credentials are in it) and the cause.
fn http(e: reqwest::Error) -> ApiReadError {
    ApiReadError::Http(e.without_url())
}

#[cfg(test)]
mod tests {
    use super::*;
    use zeroize::Zeroizing;

    fn src(api: &str, repo: &str) -> ApiSource {
        ApiSource {
            api: StatusApi::from_stored(api),
            credentials: Zeroizing::new("u:p".to_owned()),
            repo: repo.to_owned(),
        }
    }

    const SHA: &str = "178864a7d521b6f5e720b386b2c2b0ef8563e0dc";

    #[test]
    fn refused_credentials_are_remembered_per_project_and_credentials() {
        let mut r = Refusals::default();
        let a = src("https://api.bitbucket.org/2.0", "acme/widget");
        assert!(!r.holds("p1", &a));
        assert!(!r.note("p1", &a, &ApiReadError::Status(404)));
        assert!(!r.note("p1", &a, &ApiReadError::TooLarge));
        assert!(!r.holds("p1", &a), "only refusals are remembered");
        assert!(r.note("p1", &a, &ApiReadError::Status(403)));
        assert!(r.holds("p1", &a));
        assert!(!r.holds("p2", &a), "per project");
        let mut renewed = a.clone();
        renewed.credentials = Zeroizing::new("bosun-bot:new-password".to_owned());
        assert!(
            !r.holds("p1", &renewed),
            "new credentials are tried at once"
        );
        assert!(r.note("p1", &renewed, &ApiReadError::Status(401)));
        assert!(r.holds("p1", &renewed));
    }

    #[test]
    fn the_config_url_of_cloud_and_data_center() {
        assert_eq!(
            url(&src("https://api.bitbucket.org/2.0/", "acme/widget"), SHA).expect("url"),
            format!("https://api.bitbucket.org/2.0/repositories/acme/widget/src/{SHA}/.circleci/config.yml")
        );
        assert_eq!(
            url(&src("data-center:https://bb.example.com/", "ACME/widget"), SHA).expect("url"),
            format!("https://bb.example.com/rest/api/1.0/projects/ACME/repos/widget/raw/.circleci/config.yml?at={SHA}")
        );
        // A branch name, an abbreviation, or a name that would change the path: no URL.
        for commit in ["main", &SHA[..12], &format!("{}/..", &SHA[..37])] {
            assert!(
                matches!(
                    url(&src("https://a", "acme/widget"), commit),
                    Err(ApiReadError::NotACommit(_))
                ),
                "{commit}"
            );
        }
        for repo in ["acme", "acme/../x", "acme/w?x", "/w", "a/b/c"] {
            assert!(
                matches!(
                    url(&src("https://a", repo), SHA),
                    Err(ApiReadError::BadRepo(_))
                ),
                "{repo}"
            );
        }
        assert!(!format!("{:?}", src("https://a", "a/b")).contains("u:p"));
    }
}

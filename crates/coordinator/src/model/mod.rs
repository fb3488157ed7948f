//! What the coordinator's records mean, with no I/O: the kinds of a workflow's jobs, where a
//! project's status API is, and (in its submodules) the rules that decide with them. The
//! store and everything above it import this module; it imports none of them, so the store
//! can name these types without reaching up into the Bitbucket or pipeline code.

pub mod advance;

use std::fmt;
use std::str::FromStr;

/// A word this side does not know in a stored column (a newer coordinator, a damaged row).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {what} `{word}`")]
pub struct UnknownWord {
    pub what: &'static str,
    pub word: String,
}

/// What a workflow job is, as the compiled config says and the store keeps it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum JobKind {
    /// A job an agent runs.
    Build,
    /// `type: approval`: held until someone approves it.
    Approval,
    /// A job that cannot run (its reason says why); it ends `not_runnable` when ready.
    NotRunnable,
}

impl JobKind {
    pub fn as_str(self) -> &'static str {
        match self {
            JobKind::Build => "build",
            JobKind::Approval => "approval",
            JobKind::NotRunnable => "not_runnable",
        }
    }
}

impl fmt::Display for JobKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for JobKind {
    type Err = UnknownWord;
    fn from_str(s: &str) -> Result<Self, UnknownWord> {
        Ok(match s {
            "build" => JobKind::Build,
            "approval" => JobKind::Approval,
            "not_runnable" => JobKind::NotRunnable,
            _ => {
                return Err(UnknownWord {
                    what: "workflow job kind",
                    word: s.to_owned(),
                })
            }
        })
    }
}

/// How a Data Center base address is written in a project's `status_api` (and on the
/// command line): the one place this prefix is spelled.
const DATA_CENTER: &str = "data-center:";

/// A project's Bitbucket REST API, which its commit statuses go to and its config may be read
/// from. Stored as its [`Display`](fmt::Display) text: Cloud's base as it is, Data Center's
/// behind `data-center:`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StatusApi {
    /// Bitbucket Cloud's API base, such as `https://api.bitbucket.org/2.0`.
    Cloud(String),
    /// A Bitbucket Data Center server's base address, such as `https://bitbucket.example.com`.
    DataCenter(String),
}

/// An operator's `--status-api` that is not an http(s) address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "--status-api `{0}`: expected an http(s) address such as https://api.bitbucket.org/2.0 \
     (Bitbucket Cloud), or data-center:https://HOST for Bitbucket Data Center"
)]
pub struct InvalidStatusApi(pub String);

impl StatusApi {
    /// A stored `status_api`: anything not behind `data-center:` is Cloud's base, as it has
    /// always been read (rows written before the setting was checked included).
    pub fn from_stored(s: &str) -> StatusApi {
        match s.strip_prefix(DATA_CENTER) {
            Some(base) => StatusApi::DataCenter(base.to_owned()),
            None => StatusApi::Cloud(s.to_owned()),
        }
    }

    /// An operator's setting: `None` when empty (statuses off); otherwise an http(s)
    /// address, its trailing `/` dropped.
    pub fn parse_setting(s: &str) -> Result<Option<StatusApi>, InvalidStatusApi> {
        let api = s.trim_end_matches('/');
        if api.is_empty() {
            return Ok(None);
        }
        let parsed = StatusApi::from_stored(api);
        let address = parsed.base();
        if address.starts_with("https://") || address.starts_with("http://") {
            Ok(Some(parsed))
        } else {
            Err(InvalidStatusApi(api.to_owned()))
        }
    }

    /// The address without the kind: Cloud's API base, or the Data Center server.
    pub fn base(&self) -> &str {
        match self {
            StatusApi::Cloud(b) | StatusApi::DataCenter(b) => b,
        }
    }
}

impl fmt::Display for StatusApi {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StatusApi::Cloud(b) => f.write_str(b),
            StatusApi::DataCenter(b) => write!(f, "{DATA_CENTER}{b}"),
        }
    }
}

/// Where a project's API is and how to sign in to it: its commit statuses' destination,
/// which its pipelines' configs are also read from (`pipelines::api`).
#[derive(Clone)]
pub struct ApiSource {
    pub api: StatusApi,
    /// `user:app-password` or `bearer:TOKEN`.
    pub credentials: zeroize::Zeroizing<String>,
    /// `workspace/repo` (Cloud) or `PROJECT/repo` (Data Center).
    pub repo: String,
}

impl fmt::Debug for ApiSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiSource")
            .field("api", &self.api)
            .field("credentials", &"<redacted>")
            .field("repo", &self.repo)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_kinds_round_trip_their_words() {
        for k in [JobKind::Build, JobKind::Approval, JobKind::NotRunnable] {
            assert_eq!(k.as_str().parse::<JobKind>(), Ok(k));
        }
        assert!("deploy".parse::<JobKind>().is_err());
    }

    #[test]
    fn status_api_settings_are_checked_and_stored_as_written() {
        assert_eq!(StatusApi::parse_setting(""), Ok(None));
        assert_eq!(StatusApi::parse_setting("/"), Ok(None));
        let cloud = StatusApi::parse_setting("https://api.bitbucket.org/2.0/")
            .expect("cloud")
            .expect("on");
        assert_eq!(
            cloud,
            StatusApi::Cloud("https://api.bitbucket.org/2.0".into())
        );
        assert_eq!(cloud.to_string(), "https://api.bitbucket.org/2.0");
        let dc = StatusApi::parse_setting("data-center:https://bb.example.com/")
            .expect("dc")
            .expect("on");
        assert_eq!(dc, StatusApi::DataCenter("https://bb.example.com".into()));
        assert_eq!(dc.to_string(), "data-center:https://bb.example.com");
        assert_eq!(StatusApi::from_stored(&dc.to_string()), dc);
        for bad in [
            "api.bitbucket.org",
            "data-center:",
            "data-center:bb.example.com",
        ] {
            let e = StatusApi::parse_setting(bad).expect_err(bad);
            assert!(e.to_string().starts_with("--status-api `"), "{e}");
        }
    }
}

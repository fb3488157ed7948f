//! What the coordinator's records mean, with no I/O: the kinds of a workflow's jobs, where a
//! project's status API is, and (in its submodules) the rules that decide with them. The
//! store and everything above it import this module; it imports none of them, so the store
//! can name these types without reaching up into the Bitbucket or pipeline code.

pub mod advance;
pub mod audit;
pub mod badge;
pub mod contexts;
pub mod expression;
pub mod notify;
pub mod people;
pub mod project_settings;
pub mod schedule;
pub mod ssh_policy;
pub mod tokens;

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

/// The prefix of a Bitbucket Data Center project's key in the store (`projects.uuid`):
/// `bitbucket-dc:SERVER/ID` (`bitbucket::data_center::key` makes it).
pub const DATA_CENTER_KEY_PREFIX: &str = "bitbucket-dc:";

/// A forked pull request's build gets its project's deploy key and plain environment
/// values, but no user key and no secret values unless the project passes secrets to forks:
/// a fork's code is not the workspace's, and would read them.
pub mod forks {
    /// Whether a pull request's builds are restricted: from a fork, of a project that does
    /// not pass secrets to forks (decided when the pipeline is made, kept with it).
    pub fn restricted(pr_fork: bool, fork_secrets: bool) -> bool {
        pr_fork && !fork_secrets
    }

    /// What of its project a job may be given.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Given {
        /// The user key (it may reach other repositories as the user).
        UserKey,
        /// The deploy key (read access to this repository: the checkout needs it).
        DeployKey,
        /// An environment value; `secret` as the project marked it.
        Env { secret: bool },
    }

    /// The policy: whether a job (restricted or not) is given `what`.
    pub fn gives(restricted: bool, what: Given) -> bool {
        !restricted || matches!(what, Given::DeployKey | Given::Env { secret: false })
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn a_restricted_fork_build_gets_the_deploy_key_and_plain_values_only() {
            assert!(restricted(true, false));
            assert!(
                !restricted(true, true),
                "the project passes secrets to forks"
            );
            assert!(!restricted(false, false), "not a fork");
            let all = [
                Given::UserKey,
                Given::DeployKey,
                Given::Env { secret: true },
                Given::Env { secret: false },
            ];
            for what in all {
                assert!(gives(false, what), "{what:?}");
            }
            let given: Vec<Given> = all.into_iter().filter(|w| gives(true, *w)).collect();
            assert_eq!(given, [Given::DeployKey, Given::Env { secret: false }]);
        }
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
/// which its pipelines' configs are also read from (`pipelines::api`). `Debug` shows no
/// credentials: `Zeroizing`'s own `Debug` hides its value.
#[derive(Debug, Clone)]
pub struct ApiSource {
    pub api: StatusApi,
    /// `EMAIL:API-TOKEN` or `bearer:TOKEN` (`bitbucket::rest::Credentials`).
    pub credentials: zeroize::Zeroizing<String>,
    /// `workspace/repo` (Cloud) or `PROJECT/repo` (Data Center).
    pub repo: String,
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

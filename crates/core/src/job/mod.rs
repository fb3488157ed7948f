//! One job, from a request to its outcome. Data flows one way:
//! [`JobRequest`] → [`prepare`] (keys, host keys, checkout, config) → one shared
//! [`JobContext`] and a [`JobSpec`] per job → [`run_job`] (resources → steps → events) → the
//! caller's [`EventSink`].
//!
//! `bosun execute` and `bosun agent` only build a request and choose a sink; everything a job
//! is — its time limit, the masking of its secrets, its final status, the containers it owns —
//! is decided here.
//!
//! Rooms, each with one responsibility:
//! - [`request`]: the request and the one preparation path;
//! - [`context`]: what a request's jobs share, built once ([`JobContext`]), and one job of
//!   it ([`JobSpec`]);
//! - [`lifecycle`]: the only place that knows a job's order (start → bootstrap → steps →
//!   hold → release), the time limit and the final status;
//! - [`resources`]: what a job owns (containers, networks) and the guard that removes them;
//! - [`registry`]: the seam other parts attach to while a job runs (SSH, a scoped engine);
//! - `bootstrap` / `machine` / `services`: how the primary container, a `machine` job's
//!   system and the service containers come up;
//! - `environment`: the built-in variables; `step_sequence`: a job's steps in order (`when:`,
//!   halts, background steps); `shell_step`: one `run` step (its command, output, timeouts,
//!   stop); `step_transport`: the agent's end of the in-container step runner's wire;
//!   `builtin` / `extra_keys`: the steps the agent carries out itself; [`archive`]: the one
//!   tar writer; [`work_tree`]: the working directory prepared on the host and mounted (the
//!   checkout without a copy, on a local engine), `mounted`: where it is mounted, decided
//!   before the container exists; `in_place`: caches and workspace layers written into it.

pub mod archive;
mod bootstrap;
mod builtin;
pub mod context;
mod environment;
mod extra_keys;
pub mod in_place;
pub use bosun_protocol::identity;
pub mod lifecycle;
pub mod limits;
mod machine;
mod mounted;
mod pull;
pub mod ready;
pub mod registry;
pub mod request;
pub mod resources;
mod services;
mod shell_step;
mod step_sequence;
mod step_transport;
#[cfg(test)]
mod tests;
mod timings;
pub mod work_tree;

pub use context::{context_env, JobContext, JobSpec, Secrets};
pub use environment::{expand_home, project_names};
pub use identity::JobIdentity;
pub use lifecycle::run_job;
pub use limits::LimitPolicy;
pub use registry::{Attachment, Hold, Registry};
pub use request::{
    fetch_source, prepare, ConfigSource, EnvEntry, JobRequest, PrepareError, Prepared, Target,
};
pub use resources::{sweep, Resources};

use crate::checkout::{self, CheckoutOutcome};
use crate::ssh::{KnownHosts, SshKey, VcsHosts};
use crate::stream::{JobStatus, StepSummary};
use std::sync::Arc;
use std::time::Duration;

/// Where a job's code comes from.
#[derive(Debug, Clone)]
pub struct Source {
    /// As the user wrote it: `git@bitbucket.org:acme/widget.git`, `ssh://…`, or a local path.
    pub url: String,
    /// Branch, tag or SHA; `None` = the remote's HEAD.
    pub reference: Option<String>,
}

/// What opens the job's repositories: keys, trusted host keys, host mappings.
#[derive(Clone)]
pub struct Access {
    /// User key first, then deploy key: the order SSH offers them in.
    pub keys: Vec<SshKey>,
    pub known_hosts: KnownHosts,
    pub vcs_hosts: VcsHosts,
    /// Where fetches go through a mirror first; `None`: straight into the job's checkout.
    pub mirrors: Option<crate::mirror::Mirrors>,
}

/// The pull request a job builds, as the coordinator names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PullRequest {
    pub number: u64,
    pub url: String,
    /// From a fork of the project's repository.
    pub fork: bool,
}

/// A fetched tree waiting to be uploaded by the `checkout` step.
#[derive(Clone)]
pub struct Prefetched {
    /// Shared by the jobs of a workflow run, which all check out the same commit.
    pub dir: Arc<tempfile::TempDir>,
    pub outcome: CheckoutOutcome,
}

#[derive(Debug, Clone)]
pub struct JobOutcome {
    pub status: JobStatus,
    pub steps: Vec<StepSummary>,
    /// Set when the job could not run (infrastructure failure).
    pub error: Option<String>,
}

/// Errors before any step could run: the job is an infrastructure failure, not a red build.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error(transparent)]
    Executor(#[from] crate::executor::ExecutorError),
    #[error(transparent)]
    Checkout(#[from] checkout::CheckoutError),
    #[error("the container could not be prepared: {0}")]
    Prepare(String),
    #[error("service container `{service}` ({image}): {reason}")]
    Service {
        service: String,
        image: String,
        reason: String,
    },
    #[error("`machine` image `{name}` is not known to this agent\n  help: map it to a local image: `machine_images = {{ \"{name}\" = \"IMAGE\" }}` in agent.toml, or `--machine-image {name}=IMAGE` for bosun execute (known: {known})")]
    UnknownMachineImage { name: String, known: String },
    #[error("the machine did not finish booting: {0}")]
    MachineBoot(String),
    #[error("canceled before the first step")]
    Canceled,
    /// A config feature this runner lacks (an image's `aws_auth:`): the compiler's error.
    #[error("{0}")]
    Unsupported(String),
}

/// The default local image for `machine: true` and unmapped default names.
pub const DEFAULT_MACHINE_IMAGE: &str = "bosun/machine";

pub(crate) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

//! The messages, their versions and limits (re-exported at the crate root).

use crate::private::Secret;
use serde::{Deserialize, Serialize};

pub const PROTOCOL_VERSION: u32 = 2;
pub const API_PREFIX: &str = "/api/v1";
/// How long the coordinator holds a claim open when nothing is queued.
pub const DEFAULT_CLAIM_WAIT_SECS: u64 = 30;
/// A lease not renewed by a heartbeat within this many seconds lapses.
pub const DEFAULT_LEASE_SECS: u64 = 30;
/// Largest log chunk an agent sends in one request.
/// Header on job writes (log, events, finish) naming the attempt they belong to; the
/// coordinator refuses writes for an attempt other than the job's current one (403), so a late
/// write of a lapsed attempt never lands in the next one's log. Optional: without it the lease
/// check alone applies.
pub const ATTEMPT_HEADER: &str = "bosun-attempt";

pub const MAX_LOG_CHUNK: usize = 8 * 1024 * 1024;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RegisterRequest {
    /// Never shown by `Debug` (logs, panics).
    pub registration_token: Secret<String>,
    pub name: String,
    pub resource_class: String,
    #[serde(default)]
    pub labels: Vec<String>,
    pub version: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RegisterResponse {
    pub agent_id: String,
    /// Never shown by `Debug` (logs, panics).
    pub agent_token: Secret<String>,
    pub protocol_version: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ClaimRequest {
    pub resource_class: String,
    #[serde(default)]
    pub labels: Vec<String>,
    /// Free slots: the coordinator answers with at most one job per claim.
    pub capacity: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ClaimResponse {
    pub job: WireJob,
    pub lease_secs: u64,
}

/// A job as the coordinator hands it out.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct WireJob {
    pub id: String,
    pub project: WireProject,
    pub commit_sha: String,
    #[serde(default)]
    pub branch: Option<String>,
    #[serde(default)]
    pub tag: Option<String>,
    #[serde(default)]
    pub pull_request: Option<WirePullRequest>,
    pub job_name: String,
    pub pipeline_number: u64,
    /// User key first, then deploy key, as the agent offers them.
    #[serde(default)]
    pub keys: Vec<WireKey>,
    /// Lines trusted besides the agent's pinned Bitbucket keys.
    #[serde(default)]
    pub known_hosts: Vec<String>,
    #[serde(default)]
    pub env: Vec<WireEnv>,
    #[serde(default)]
    pub timeouts: WireTimeouts,
    /// Attempt number, from 1; a lapsed lease re-queues the job with the next one.
    pub attempt: u32,
    /// The largest earlier pipeline number of the same project and branch
    /// (`CIRCLE_PREVIOUS_BUILD_NUM`); absent for the branch's first job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_build_num: Option<u64>,
    /// Who started the pipeline (`CIRCLE_USERNAME`), when the coordinator knows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// Public keys (`authorized_keys` lines) of whoever asked to SSH into this job; empty:
    /// no SSH. An agent without a gateway ignores them (the job runs as usual).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ssh_keys: Vec<String>,
    /// Protocol v2: the coordinator keeps this job's workspaces, caches, artifacts and test
    /// results (the blob endpoints). Absent from a v1 coordinator: the agent keeps them in
    /// its local store only, as before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store: Option<WireStore>,
    /// The pipeline and workflow the job belongs to, when a pipeline queued it (absent for a
    /// job queued on its own with `enqueue`). Optional both ways: an older agent ignores it
    /// and then finds `job_name` by name in the first workflow that has it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pipeline: Option<WirePipeline>,
    /// The ids of the contexts whose variables `env` carries (the OIDC claim
    /// `oidc.circleci.com/context-ids`), in the config's order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub context_ids: Vec<String>,
}

/// What a v2 coordinator says about a job's store (see `docs/protocol.md`, *Store*).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct WireStore {
    /// The workspace the job attaches and persists to: a workflow run's, shared by its jobs;
    /// `job-<id>` for a job queued alone.
    pub workspace: String,
    /// `false` for a build of a pull request from a fork: it reads the project's caches and
    /// never writes them (the coordinator refuses with 403).
    pub cache_writes: bool,
}

/// Largest piece of a blob one upload request carries; a blob goes up in pieces, each a
/// point an interrupted upload resumes from.
pub const MAX_BLOB_PIECE: u64 = 32 * 1024 * 1024;

/// Answer to a blob upload (and to `GET …/upload`): how many bytes of the blob the
/// coordinator holds for this project, and whether it has the whole blob, checked.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct BlobAck {
    pub received: u64,
    pub complete: bool,
}

/// A workspace layer: one `persist_to_workspace`, as the blob of a tar archive.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct WireLayer {
    /// The job that persisted it (filled by the coordinator; ignored when sent).
    #[serde(default)]
    pub job: String,
    /// Hex SHA-256 of the blob.
    pub blob: String,
    pub size: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct WorkspaceLayers {
    /// Oldest first: later layers win where they overlap.
    pub layers: Vec<WireLayer>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct WireCache {
    pub key: String,
    pub blob: String,
    pub size: u64,
    /// Milliseconds since the epoch.
    #[serde(default)]
    pub created_ms: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct CacheLookup {
    /// The newest cache whose key starts with the prefix asked for.
    pub cache: Option<WireCache>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct CacheSaved {
    /// `false`: a cache with that key exists already (caches are immutable).
    pub saved: bool,
}

/// One stored artifact file.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct WireArtifact {
    /// Relative path under the job's artifacts (`destination/file`), `/`-separated.
    pub path: String,
    pub blob: String,
    pub size: u64,
}

/// One `store_test_results` step's JUnit results, parsed by the agent.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct WireTestResults {
    pub tests: u64,
    pub failures: u64,
    pub errors: u64,
    pub skipped: u64,
    /// At most [`MAX_FAILED_TESTS`] failed or errored tests.
    #[serde(default)]
    pub failed: Vec<WireFailedTest>,
}

/// Most failed tests one results upload lists (the counts stay exact).
pub const MAX_FAILED_TESTS: usize = 1000;
/// Longest failure message kept, in bytes.
pub const MAX_TEST_MESSAGE: usize = 4096;

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct WireFailedTest {
    pub name: String,
    #[serde(default)]
    pub classname: String,
    #[serde(default)]
    pub message: String,
}

/// Where a pipeline's job comes from: the agent compiles the config with the same pipeline
/// values as the coordinator did and takes `job_name` from workflow `workflow`, so matrix and
/// parameterised jobs (`test-3.12`) resolve as the coordinator's graph named them.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct WirePipeline {
    /// `pipeline.id` (a UUID).
    pub id: String,
    /// The workflow's name in the config.
    pub workflow: String,
    /// The workflow's id (a UUID, `CIRCLE_WORKFLOW_ID`): the same for every job of it.
    pub workflow_id: String,
    /// `pipeline.parameters` given to the trigger (`--param K=V`), as text.
    #[serde(default)]
    pub parameters: Vec<(String, String)>,
    /// `pipeline.trigger_source`: `webhook`, `api`, `scheduled_pipeline` or `schedule`.
    #[serde(default)]
    pub trigger_source: String,
    /// `pipeline.git.base_revision` (the previous pipeline's commit on the branch), or empty.
    #[serde(default)]
    pub base_revision: String,
    /// `pipeline.schedule.name` and `.id` of a scheduled pipeline, or empty.
    #[serde(default)]
    pub schedule_name: String,
    #[serde(default)]
    pub schedule_id: String,
    /// The config to compile instead of the commit's `.circleci/config.yml`: a job of a
    /// workflow that a setup workflow's continuation added (dynamic config). Absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct WireProject {
    /// Bitbucket repository UUID (`{…}`).
    pub uuid: String,
    /// `workspace/repo`.
    pub slug: String,
    pub clone_url: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct WirePullRequest {
    pub number: u64,
    pub url: String,
    /// From a fork of the project's repository (CircleCI sets `CIRCLE_PR_NUMBER` only then).
    #[serde(default)]
    pub fork: bool,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum WireKeyRole {
    User,
    Deploy,
    Additional,
}

#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct WireKey {
    pub role: WireKeyRole,
    /// OpenSSH private key text. Never logged: `Debug` hides it.
    pub private_key: String,
    #[serde(default)]
    pub fingerprint: Option<String>,
}

impl WireKey {
    /// Overwrite the key text with zeros (its whole buffer, capacity included) and empty it.
    pub fn wipe(&mut self) {
        use zeroize::Zeroize;
        self.private_key.zeroize();
    }

    /// The key text, leaving this value empty: the text moves into a buffer that wipes itself
    /// in turn, with no copy left behind.
    pub fn take_private_key(&mut self) -> zeroize::Zeroizing<String> {
        zeroize::Zeroizing::new(std::mem::take(&mut self.private_key))
    }
}

/// A claim's keys are wiped from memory when the value goes, however it goes (a job that ends,
/// a claim answer dropped on an error path). Because of this `Drop`, fields cannot be moved out
/// of a `WireKey`: take the key with [`WireKey::take_private_key`].
impl Drop for WireKey {
    fn drop(&mut self) {
        self.wipe();
    }
}

impl std::fmt::Debug for WireKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WireKey")
            .field("role", &self.role)
            .field("private_key", &"<redacted>")
            .field("fingerprint", &self.fingerprint)
            .finish()
    }
}

#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct WireEnv {
    pub name: String,
    pub value: String,
    /// Secret values are masked (`********`) in everything the agent sends back.
    #[serde(default)]
    pub secret: bool,
}

impl std::fmt::Debug for WireEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let value = if self.secret {
            "<secret>"
        } else {
            self.value.as_str()
        };
        f.debug_struct("WireEnv")
            .field("name", &self.name)
            .field("value", &value)
            .finish()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct WireTimeouts {
    /// Whole job, seconds.
    pub job_secs: u64,
}

impl Default for WireTimeouts {
    fn default() -> Self {
        WireTimeouts { job_secs: 3 * 3600 }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Heartbeat {
    pub running: Vec<RunningJob>,
    /// The agent is draining: it claims nothing new.
    #[serde(default)]
    pub draining: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RunningJob {
    pub job_id: String,
    /// Human words: `checkout`, `step 3/7: Test`.
    pub state: String,
    /// How developers reach the job over SSH, when it was queued with SSH keys and the agent
    /// runs a gateway. Optional both ways: agents without a gateway never send it, older
    /// coordinators ignore it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh: Option<WireSshState>,
}

/// A job's SSH access as its agent reports it in every heartbeat.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct WireSshState {
    /// The host users connect to (`ssh -p PORT JOB@HOST`; the job id is the user name).
    pub host: String,
    pub port: u16,
    /// The gateway's host key, `SHA256:…`.
    #[serde(default)]
    pub fingerprint: String,
    /// Sessions open now.
    #[serde(default)]
    pub sessions: u32,
    /// The job's resources are held for SSH until then (ms since the epoch); absent while
    /// its steps run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held_until_ms: Option<i64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct HeartbeatResponse {
    /// Jobs to cancel now.
    #[serde(default)]
    pub cancel: Vec<String>,
    /// Jobs the coordinator does not (any longer) lease to this agent: stop them quietly.
    #[serde(default)]
    pub unknown: Vec<String>,
    pub lease_secs: u64,
}

/// The control channel's long poll (`POST /agents/control?wait=S`): the agent keeps one open
/// so the coordinator reaches it at once (heartbeats stay for leases). The request says what
/// the agent already acted on, so an answer carries only what is new to it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ControlRequest {
    /// Jobs whose cancel the agent already received (from a heartbeat or this channel).
    #[serde(default)]
    pub cancels_seen: Vec<String>,
}

/// What the coordinator wants of the agent now. Additive: later kinds of message (SSH holds,
/// config reloads) come as new fields an older agent ignores.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ControlResponse {
    /// Jobs of this agent to cancel now (not in `cancels_seen`).
    #[serde(default)]
    pub cancel: Vec<String>,
}

/// How long the coordinator holds a control poll open when there is nothing to say.
pub const DEFAULT_CONTROL_WAIT_SECS: u64 = 30;

/// Answer to a log append: where the coordinator's copy of the log ends now.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct LogAck {
    pub offset: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct EventBatch {
    /// Sequence number of the first event; events are numbered from 0 per job.
    pub first_seq: u64,
    pub events: Vec<JobEvent>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct EventAck {
    /// The next sequence number the coordinator expects.
    pub next_seq: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum JobEvent {
    StepStarted {
        step: u32,
        name: String,
        /// Log offset where the step's output starts (sections in the log view).
        log_offset: u64,
        /// The commit the agent checked out (full hex SHA), on the first step to start after
        /// its checkout; absent otherwise. Optional: older peers neither send nor read it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        commit_sha: Option<String>,
    },
    StepFinished {
        step: u32,
        name: String,
        status: StepStatus,
        exit_code: Option<i64>,
        duration_ms: u64,
        log_offset: u64,
    },
}

/// The one status vocabulary. Each enum is a subset of the same words, spelled once here (the
/// words CircleCI's API uses), and used unchanged by events, the wire, SQLite, the web pages
/// and the terminal: `as_str`/`FromStr`/serde all come from this one table.
macro_rules! statuses {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident = $word:literal,)+ }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        pub enum $name {
            $($(#[$vmeta])* #[serde(rename = $word)] $variant,)+
        }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $word,)+
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl std::str::FromStr for $name {
            type Err = UnknownStatus;
            fn from_str(s: &str) -> Result<Self, UnknownStatus> {
                match s {
                    $($word => Ok($name::$variant),)+
                    _ => Err(UnknownStatus(s.to_owned())),
                }
            }
        }
    };
}

/// A status word this side does not know (a newer peer, a damaged row).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown status `{0}`")]
pub struct UnknownStatus(pub String);

statuses! {
    /// How a job ended.
    JobStatus {
        Success = "success",
        Failed = "failed",
        Canceled = "canceled",
        /// The job's time limit (or a step's `no_output_timeout`) ran out.
        TimedOut = "timedout",
        /// The job could not run: bad config, engine, image, checkout.
        InfrastructureFail = "infrastructure_fail",
    }
}

statuses! {
    /// How a step ended.
    StepStatus {
        Success = "success",
        Failed = "failed",
        /// Events stored before the vocabulary was one said `timed_out`: still read.
        #[serde(alias = "timed_out")]
        TimedOut = "timedout",
        Canceled = "canceled",
        /// Not run because of its `when:` and how the job had gone.
        Skipped = "skipped",
        /// A background step still running when the job ended; it was stopped with the job.
        Stopped = "stopped",
    }
}

statuses! {
    /// A workflow job: how it ended, or why it did not run.
    WorkflowJobStatus {
        Success = "success",
        Failed = "failed",
        Canceled = "canceled",
        TimedOut = "timedout",
        InfrastructureFail = "infrastructure_fail",
        /// A job it requires did not succeed.
        Blocked = "blocked",
        /// A `type: approval` job nobody approved (run with `--approve`).
        OnHold = "on_hold",
        /// Its filters exclude this branch or tag.
        NotRun = "not_run",
        /// A job this agent cannot run (`macos`).
        NotRunnable = "not_runnable",
        /// On the coordinator: its contexts do not exist or their restrictions are not met
        /// (CircleCI's status); it did not run.
        Unauthorized = "unauthorized",
        /// On the coordinator: a job it requires has not finished yet.
        Waiting = "waiting",
        /// On the coordinator: queued for an agent (or, in a serial group, for its turn).
        Queued = "queued",
        /// On the coordinator: an agent runs it.
        Running = "running",
    }
}

statuses! {
    /// A workflow of a pipeline on the coordinator (CircleCI's workflow statuses).
    WorkflowState {
        Running = "running",
        /// A job failed while others still run.
        Failing = "failing",
        /// Nothing runs; an approval job waits.
        OnHold = "on_hold",
        Success = "success",
        Failed = "failed",
        Canceled = "canceled",
        /// Filters left no job to run for this branch or tag.
        NotRun = "not_run",
    }
}

statuses! {
    /// A pipeline on the coordinator.
    PipelineState {
        /// Accepted; its config is being fetched and compiled.
        Created = "created",
        /// The config could not be fetched or did not compile (the error is kept).
        Errored = "errored",
        Running = "running",
        OnHold = "on_hold",
        Success = "success",
        Failed = "failed",
        Canceled = "canceled",
    }
}

statuses! {
    /// A coordinator job's state: waiting, running, or how it ended.
    JobState {
        Queued = "queued",
        Running = "running",
        Success = "success",
        Failed = "failed",
        Canceled = "canceled",
        TimedOut = "timedout",
        InfrastructureFail = "infrastructure_fail",
    }
}

impl From<JobStatus> for WorkflowJobStatus {
    fn from(s: JobStatus) -> Self {
        match s {
            JobStatus::Success => WorkflowJobStatus::Success,
            JobStatus::Failed => WorkflowJobStatus::Failed,
            JobStatus::Canceled => WorkflowJobStatus::Canceled,
            JobStatus::TimedOut => WorkflowJobStatus::TimedOut,
            JobStatus::InfrastructureFail => WorkflowJobStatus::InfrastructureFail,
        }
    }
}

impl From<JobStatus> for JobState {
    fn from(s: JobStatus) -> Self {
        match s {
            JobStatus::Success => JobState::Success,
            JobStatus::Failed => JobState::Failed,
            JobStatus::Canceled => JobState::Canceled,
            JobStatus::TimedOut => JobState::TimedOut,
            JobStatus::InfrastructureFail => JobState::InfrastructureFail,
        }
    }
}

/// The finish an agent reports is a job status; the wire name stays.
pub type FinalStatus = JobStatus;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct FinishRequest {
    pub status: FinalStatus,
    /// Total bytes of (masked) log the agent sent; the coordinator checks it has them all.
    pub log_bytes: u64,
    /// Hex SHA-256 of those bytes.
    pub log_sha256: String,
    #[serde(default)]
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ApiError {
    pub error: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_do_not_show_in_debug() {
        let k = WireKey {
            role: WireKeyRole::User,
            private_key: "-----BEGIN OPENSSH PRIVATE KEY-----\nAAAA".into(),
            fingerprint: None,
        };
        assert!(!format!("{k:?}").contains("AAAA"));
        let e = WireEnv {
            name: "TOKEN".into(),
            value: "hunter22".into(),
            secret: true,
        };
        assert!(!format!("{e:?}").contains("hunter22"));
    }

    /// `WireKey` must wipe itself on drop (issue 12 item 16); checked at compile time, and
    /// `wipe` (which `drop` calls) zeroes the whole buffer while it is still ours to read.
    #[test]
    fn private_keys_are_wiped() {
        #[allow(drop_bounds)]
        fn wiped_on_drop<T: Drop>() {}
        wiped_on_drop::<WireKey>();
        let mut k = WireKey {
            role: WireKeyRole::User,
            private_key: "-----BEGIN OPENSSH PRIVATE KEY-----\nSECRETSECRET".into(),
            fingerprint: None,
        };
        let (ptr, cap) = (k.private_key.as_ptr(), k.private_key.capacity());
        k.wipe();
        assert!(k.private_key.is_empty());
        assert_eq!(
            k.private_key.capacity(),
            cap,
            "the same buffer, still allocated"
        );
        // SAFETY: the String still owns `cap` bytes at `ptr` (zeroize keeps the allocation and
        // has written every byte of it).
        let bytes = unsafe { std::slice::from_raw_parts(ptr, cap) };
        assert!(bytes.iter().all(|b| *b == 0), "{bytes:?}");
        let mut k = WireKey {
            role: WireKeyRole::Deploy,
            private_key: "KEY".into(),
            fingerprint: None,
        };
        assert_eq!(k.take_private_key().as_str(), "KEY");
        assert!(k.private_key.is_empty());
    }

    #[test]
    fn events_and_statuses_have_stable_wire_names() {
        let ev = JobEvent::StepFinished {
            step: 1,
            name: "t".into(),
            status: StepStatus::Success,
            exit_code: Some(0),
            duration_ms: 3,
            log_offset: 10,
        };
        let v = serde_json::to_value(&ev).expect("json");
        assert_eq!(v["type"], "step_finished");
        assert_eq!(
            serde_json::to_value(FinalStatus::TimedOut).expect("json"),
            "timedout"
        );
        assert_eq!(
            serde_json::to_value(FinalStatus::InfrastructureFail).expect("json"),
            "infrastructure_fail"
        );
    }

    #[test]
    fn every_status_word_round_trips_through_str_and_serde() {
        fn check<T>(all: &[T])
        where
            T: Copy
                + std::fmt::Debug
                + PartialEq
                + std::str::FromStr
                + Serialize
                + std::fmt::Display,
        {
            for s in all {
                let word = s.to_string();
                assert_eq!(word.parse::<T>().ok(), Some(*s));
                assert_eq!(serde_json::to_value(s).expect("json"), word.as_str());
            }
        }
        check(JobStatus::ALL);
        check(StepStatus::ALL);
        check(WorkflowJobStatus::ALL);
        check(JobState::ALL);
        check(WorkflowState::ALL);
        check(PipelineState::ALL);
        // One spelling per state: a step and a job that time out say the same word.
        assert_eq!(StepStatus::TimedOut.as_str(), JobStatus::TimedOut.as_str());
        assert!("timed_out".parse::<StepStatus>().is_err());
    }
}

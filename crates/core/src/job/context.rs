//! What a request's jobs share, built once from the request ([`JobContext`], shared as an
//! `Arc`), and one job of it ([`JobSpec`]: its id, its compiled plan, its node). A workflow's
//! jobs and a parallel job's nodes each get a spec; none copies the request's settings.

use super::{Access, JobIdentity, LimitPolicy, Prefetched, PullRequest, Registry, Source};
use crate::config::JobPlan;
use crate::private::Secret;
use crate::ssh::SshKey;
use crate::store::LocalStore;
use crate::stream::mask::Masker;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// Everything the jobs of one request share, nothing left to read or parse.
pub struct JobContext {
    /// The request's id: the workspace its jobs share (a workflow run's; the job's own when
    /// alone), and the stem of each job's id.
    pub workspace: String,
    pub agent_id: String,
    pub source: Option<Source>,
    pub access: Access,
    /// Keys only an `add_ssh_keys` step installs (CircleCI's "additional SSH keys").
    pub additional_keys: Vec<SshKey>,
    /// Highest-precedence variables (`--env`, `--secret-env`).
    pub env: Vec<(String, String)>,
    /// The project's and its contexts' variables: the lowest layer, under the built-ins.
    pub project_env: Vec<(String, String)>,
    /// Contexts given by name (`bosun execute --context`), for [`context_env`].
    pub contexts: Vec<(String, Vec<(String, String)>)>,
    /// What the request's output must never show: secret variables, key text.
    pub secrets: Secrets,
    /// Each job's own time limit (what preparation left of the request's): past it the job
    /// is stopped and ends `timedout`.
    pub time_limit: Option<Duration>,
    pub network: Option<String>,
    pub build_num: u64,
    /// Grace between TERM and KILL when a step is stopped.
    pub kill_grace: Duration,
    /// A checkout already fetched (when the config itself had to come from the repository).
    pub prefetched: Option<Prefetched>,
    /// Where caches, workspaces and artifacts live.
    pub store: LocalStore,
    /// Set for a pull request build.
    pub pull_request: Option<PullRequest>,
    /// The branch or tag the request builds, as its sender said (a coordinator's pipeline):
    /// `CIRCLE_BRANCH`/`CIRCLE_TAG` when the checkout is of a bare commit, which names
    /// neither.
    pub git_ref: (Option<String>, Option<String>),
    /// `machine:` image names → local images (`default` for `machine: true`).
    pub machine_images: BTreeMap<String, String>,
    /// Where the running job registers itself for others to attach to.
    pub registry: Registry,
    /// How the job's Docker engine is served (`setup_remote_docker`, `machine`); `None`: this
    /// runner offers none.
    pub engine: Option<Arc<crate::engine_proxy::EngineSettings>>,
    /// Ids, names and links for the `CIRCLE_*` variables.
    pub identity: JobIdentity,
    /// What the runner does with a docker job's `resource_class` (container limits).
    pub limits: LimitPolicy,
    /// Where a ready-made primary container may come from (the agent's pool).
    pub ready: Option<Arc<dyn super::ready::ReadySource>>,
}

/// One job of a request: everything [`super::run_job`] needs, beside what it shares.
#[derive(Clone)]
pub struct JobSpec {
    pub context: Arc<JobContext>,
    /// Unique per run; labels the job's containers and networks.
    pub id: String,
    pub plan: JobPlan,
    /// This container's place among the job's `parallelism` nodes (0-based) and their count.
    pub node_index: u32,
    pub node_total: u32,
    /// The job's stored test timings, read once for all its nodes (`timings::for_job`).
    pub timings: Option<String>,
    /// Its contexts' variables ([`context_env`]): over the project's, under the built-ins.
    pub context_env: Vec<(String, String)>,
}

/// The variables of the contexts a job names (`Some`: a workflow job's `context:`, in
/// order, a later one over an earlier one; those not given are left out), or of every given
/// context in the order given (`None`: a job run alone, which names none itself).
pub fn context_env(context: &JobContext, names: Option<&[String]>) -> Vec<(String, String)> {
    let mut env = Vec::new();
    let picked: Vec<&(String, Vec<(String, String)>)> = match names {
        None => context.contexts.iter().collect(),
        Some(names) => names
            .iter()
            .filter_map(|n| context.contexts.iter().find(|(c, _)| c == n))
            .collect(),
    };
    for (_, vars) in picked {
        crate::config::merge_env(&mut env, vars.clone());
    }
    env
}

impl JobSpec {
    /// Job `id` of `context` running `plan`, as its only node.
    pub fn new(context: &Arc<JobContext>, id: String, plan: JobPlan) -> JobSpec {
        JobSpec {
            context: Arc::clone(context),
            id,
            timings: super::timings::for_job(&context.store, &plan.name),
            context_env: Vec::new(),
            node_index: 0,
            node_total: 1,
            plan,
        }
    }
}

/// Values masked wherever a job's output goes, each with what it is (for the warning when
/// one is too short to mask). Its `Debug` shows neither.
#[derive(Debug, Clone, Default)]
pub struct Secrets(Secret<Vec<(String, String)>>);

impl Secrets {
    /// The secrets of a request: its secret variables' values and its private keys' text.
    pub fn of<'a>(
        env: impl IntoIterator<Item = &'a super::EnvEntry>,
        keys: &[SshKey],
        additional_keys: &[SshKey],
    ) -> Secrets {
        let mut secrets: Vec<(String, String)> = env
            .into_iter()
            .filter(|e| e.secret)
            .map(|e| (e.name.clone(), e.value.clone()))
            .collect();
        for k in keys.iter().chain(additional_keys) {
            secrets.push((k.describe(), k.private.expose().as_str().to_owned()));
        }
        Secrets(Secret::new(secrets))
    }

    /// One more value to mask; `what` names it.
    pub fn push(&mut self, what: String, value: String) {
        let mut all = std::mem::take(&mut self.0).into_inner();
        all.push((what, value));
        self.0 = Secret::new(all);
    }

    pub fn is_empty(&self) -> bool {
        self.0.expose().is_empty()
    }

    /// Each secret as (what it is, its value).
    pub fn as_slice(&self) -> &[(String, String)] {
        self.0.expose()
    }

    /// `text` with every secret masked.
    pub fn mask(&self, text: &str) -> String {
        let (masker, _) = Masker::new(self.0.expose().iter().map(|(_, v)| v));
        String::from_utf8_lossy(&masker.mask_all(text.as_bytes())).into_owned()
    }
}

impl From<Vec<(String, String)>> for Secrets {
    fn from(secrets: Vec<(String, String)>) -> Secrets {
        Secrets(Secret::new(secrets))
    }
}

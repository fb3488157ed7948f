//! The compiled workflows: which jobs exist, what each runs, how they depend on each other and
//! which branches or tags they run for. A later runner walks this; nothing here refers to YAML.

use super::plan::CompiledJob;
use std::collections::{BTreeSet, HashMap};

#[derive(Debug, Clone, PartialEq)]
pub struct Workflow {
    pub name: String,
    pub jobs: Vec<WorkflowJob>,
    /// `triggers: - schedule:`: a workflow with triggers runs at its schedules' times only,
    /// never for a push or an API trigger (CircleCI's rule; the coordinator selects).
    pub triggers: Vec<Schedule>,
}

/// One `triggers: - schedule:` entry: `cron` times (UTC) on the branches `branches` allows
/// (every branch without it).
#[derive(Debug, Clone, PartialEq)]
pub struct Schedule {
    pub cron: crate::cron::Cron,
    pub branches: Option<Filter>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct WorkflowJob {
    /// The name in the workflow: `name:`, the matrix-generated name, or the job's own.
    pub name: String,
    /// The job definition invoked (`build`, `node/test`); for approvals, the entry's key.
    pub job: String,
    pub kind: WorkflowJobKind,
    /// Names of jobs in the same workflow (matrix aliases already expanded).
    pub requires: Vec<String>,
    /// The `requires` entries written with statuses (`- build: failed`, `- build: [success,
    /// canceled]`, `terminal`): the job waits until the named job ends in one of them. An
    /// entry not listed here asks for `success`.
    pub requires_status: Vec<(String, Vec<RequiredStatus>)>,
    pub context: Vec<String>,
    pub filters: Filters,
    /// `serial-group:` (pipeline values substituted): jobs of one group, across pipelines of
    /// the project, run one at a time, in order.
    pub serial_group: Option<String>,
}

impl WorkflowJob {
    pub fn is_approval(&self) -> bool {
        matches!(self.kind, WorkflowJobKind::Approval)
    }

    /// Whether the job may start, given the current status of each job it requires (`None`:
    /// not known yet). Both runners (`bosun execute --workflow` and the coordinator's
    /// pipelines) decide through here.
    pub fn readiness(
        &self,
        status_of: impl Fn(&str) -> Option<bosun_protocol::WorkflowJobStatus>,
    ) -> Readiness {
        readiness(&self.requires, &self.requires_status, status_of)
    }

    /// The statuses requirement `name` accepts (`success` unless written otherwise).
    pub fn accepted(&self, name: &str) -> &[RequiredStatus] {
        self.requires_status
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, s)| s.as_slice())
            .unwrap_or(&[RequiredStatus::Success])
    }
}

/// Whether a job requiring `requires` (with `requires_status` where written with statuses)
/// may start, given each required job's current status (`None`: not known yet).
pub fn readiness(
    requires: &[String],
    requires_status: &[(String, Vec<RequiredStatus>)],
    status_of: impl Fn(&str) -> Option<bosun_protocol::WorkflowJobStatus>,
) -> Readiness {
    let mut wait = false;
    for r in requires {
        let accepted = requires_status
            .iter()
            .find(|(n, _)| n == r)
            .map(|(_, s)| s.as_slice())
            .unwrap_or(&[RequiredStatus::Success]);
        match status_of(r).and_then(RequiredStatus::of) {
            None => wait = true,
            Some(s) if accepted.contains(&s) => {}
            Some(s) => {
                return Readiness::Blocked {
                    by: r.clone(),
                    ended: s,
                }
            }
        }
    }
    if wait {
        Readiness::Wait
    } else {
        Readiness::Ready
    }
}

/// What [`WorkflowJob::readiness`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Readiness {
    Ready,
    /// A required job has not ended yet.
    Wait,
    /// Required job `by` ended as `ended`, which the requirement does not accept.
    Blocked {
        by: String,
        ended: RequiredStatus,
    },
}

/// A status a `requires` entry may ask for (CircleCI's words; `terminal` is all five).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RequiredStatus {
    Success,
    Failed,
    Canceled,
    Unauthorized,
    NotRun,
}

impl RequiredStatus {
    pub const TERMINAL: &'static [RequiredStatus] = &[
        RequiredStatus::Success,
        RequiredStatus::Failed,
        RequiredStatus::Canceled,
        RequiredStatus::Unauthorized,
        RequiredStatus::NotRun,
    ];

    /// The word as written in a config; `terminal` expands to every status.
    pub fn parse(word: &str) -> Option<&'static [RequiredStatus]> {
        Some(match word {
            "success" => &[RequiredStatus::Success],
            "failed" => &[RequiredStatus::Failed],
            "canceled" => &[RequiredStatus::Canceled],
            "unauthorized" => &[RequiredStatus::Unauthorized],
            "not_run" => &[RequiredStatus::NotRun],
            "terminal" => Self::TERMINAL,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            RequiredStatus::Success => "success",
            RequiredStatus::Failed => "failed",
            RequiredStatus::Canceled => "canceled",
            RequiredStatus::Unauthorized => "unauthorized",
            RequiredStatus::NotRun => "not_run",
        }
    }

    /// What a finished workflow job's status counts as for `requires` (`None`: not finished,
    /// or an approval still on hold). Timed out and infrastructure failures are failures;
    /// a job that never ran because its own requirement was unmet is `not_run`.
    pub fn of(status: bosun_protocol::WorkflowJobStatus) -> Option<RequiredStatus> {
        use bosun_protocol::WorkflowJobStatus as W;
        Some(match status {
            W::Success => RequiredStatus::Success,
            W::Failed | W::TimedOut | W::InfrastructureFail => RequiredStatus::Failed,
            W::Canceled => RequiredStatus::Canceled,
            W::Blocked | W::NotRun | W::NotRunnable => RequiredStatus::NotRun,
            W::Unauthorized => RequiredStatus::Unauthorized,
            W::OnHold | W::Waiting | W::Queued | W::Running => return None,
        })
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum WorkflowJobKind {
    Build(Box<CompiledJob>),
    /// `type: approval`: a manual hold, nothing to run.
    Approval,
    /// A valid CircleCI job that a Docker executor cannot run (`machine`, `macos`, `no-op`…).
    NotRunnable {
        reason: String,
    },
}

/// `filters:` of a workflow job. `None` means the key was absent.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Filters {
    pub branches: Option<Filter>,
    pub tags: Option<Filter>,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Filter {
    pub only: Vec<Pattern>,
    pub ignore: Vec<Pattern>,
}

/// A filter entry: an exact name, or `/regex/` that must match the whole name.
#[derive(Debug, Clone)]
pub enum Pattern {
    Exact(String),
    Regex(regex::Regex),
}

impl PartialEq for Pattern {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Pattern::Exact(a), Pattern::Exact(b)) => a == b,
            (Pattern::Regex(a), Pattern::Regex(b)) => a.as_str() == b.as_str(),
            _ => false,
        }
    }
}

impl Pattern {
    /// A pattern from its text as written and as [`Pattern::source`] gives it back: `/re/`
    /// is a regular expression that must match the whole name, anything else an exact name.
    pub fn parse(source: &str) -> Result<Pattern, regex::Error> {
        if source.len() >= 2 && source.starts_with('/') && source.ends_with('/') {
            let inner = &source[1..source.len() - 1];
            Ok(Pattern::Regex(regex::Regex::new(&format!(
                "^(?:{inner})$"
            ))?))
        } else {
            Ok(Pattern::Exact(source.to_owned()))
        }
    }

    pub fn matches(&self, name: &str) -> bool {
        match self {
            Pattern::Exact(s) => s == name,
            Pattern::Regex(r) => r.is_match(name),
        }
    }

    /// As written in the config (`main`, `/^v.*/`).
    pub fn source(&self) -> String {
        match self {
            Pattern::Exact(s) => s.clone(),
            Pattern::Regex(r) => {
                // Stored anchored as `^(?:…)$`; show what the user wrote.
                let s = r.as_str();
                let inner = s
                    .strip_prefix("^(?:")
                    .and_then(|x| x.strip_suffix(")$"))
                    .unwrap_or(s);
                format!("/{inner}/")
            }
        }
    }
}

impl Filter {
    /// `only` is considered first: with both, a name must be in `only` and not in `ignore`.
    pub fn allows(&self, name: &str) -> bool {
        let only_ok = self.only.is_empty() || self.only.iter().any(|p| p.matches(name));
        only_ok && !self.ignore.iter().any(|p| p.matches(name))
    }
}

/// What a pipeline was triggered for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GitRef<'a> {
    Branch(&'a str),
    Tag(&'a str),
}

/// Whether a job's own filters let it run for `git`. Tags are opt-in: a job without
/// `filters.tags` never runs for a tag push (branch filters do not apply to tags).
pub fn filters_allow(filters: &Filters, git: GitRef<'_>) -> bool {
    match git {
        GitRef::Branch(b) => filters.branches.as_ref().is_none_or(|f| f.allows(b)),
        GitRef::Tag(t) => filters.tags.as_ref().is_some_and(|f| f.allows(t)),
    }
}

impl Workflow {
    /// The jobs that run for `git`: a job runs when its filters allow it and every job it
    /// requires runs (a job whose upstream is filtered out cannot start, which is why CircleCI
    /// asks for tag filters on every upstream job of a tag-built job). Workflow order is kept.
    pub fn jobs_to_run(&self, git: GitRef<'_>) -> Vec<&WorkflowJob> {
        let index: HashMap<&str, usize> = self
            .jobs
            .iter()
            .enumerate()
            .map(|(i, j)| (j.name.as_str(), i))
            .collect();
        // None = not decided yet; the graph was checked acyclic at compile time, but a
        // hand-built graph may not be, so a job on a cycle simply does not run.
        let mut runs: Vec<Option<bool>> = vec![None; self.jobs.len()];
        fn decide(
            i: usize,
            wf: &Workflow,
            index: &HashMap<&str, usize>,
            runs: &mut Vec<Option<bool>>,
            visiting: &mut BTreeSet<usize>,
            git: GitRef<'_>,
        ) -> bool {
            if let Some(r) = runs[i] {
                return r;
            }
            if !visiting.insert(i) {
                return false;
            }
            let job = &wf.jobs[i];
            let mut ok = filters_allow(&job.filters, git);
            for r in &job.requires {
                ok = ok
                    && match index.get(r.as_str()) {
                        Some(&j) => decide(j, wf, index, runs, visiting, git),
                        None => false,
                    };
            }
            visiting.remove(&i);
            runs[i] = Some(ok);
            ok
        }
        let mut visiting = BTreeSet::new();
        (0..self.jobs.len())
            .filter(|&i| decide(i, self, &index, &mut runs, &mut visiting, git))
            .map(|i| &self.jobs[i])
            .collect()
    }
}

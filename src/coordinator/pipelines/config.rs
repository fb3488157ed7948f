//! A pipeline's config: `.circleci/config.yml` at the pipeline's commit, fetched with the
//! same checkout code the agent uses (git2, the project's keys, Bitbucket's pinned host keys
//! plus the project's), and compiled with the same compiler as `bosun execute --workflow`,
//! pipeline values filled. Blocking: run it off the async workers.

use crate::checkout::{self, CheckoutSpec, Credentials};
use crate::config::{self, CompileOptions, GitRef, PipelineValues, WorkflowJobKind};
use crate::coordinator::store::pipelines::{NewWorkflow, NewWorkflowJob, PipelineToFetch};
use crate::protocol::{WireKeyRole, WorkflowJobStatus};
use crate::ssh::{KeyRole, KnownHosts, SshKey, VcsHosts};

/// Why a pipeline's config could not be had. The text is shown on the pipeline's page.
#[derive(Debug, thiserror::Error)]
pub enum ConfigFetchError {
    #[error("the project's {role} key: {reason}")]
    Key { role: KeyRole, reason: String },
    #[error("the project's known_hosts: {0}")]
    KnownHosts(#[source] crate::ssh::SshError),
    #[error("--vcs-host: {0}")]
    VcsHost(#[source] crate::ssh::SshError),
    #[error("cannot fetch the config: {0}")]
    Checkout(#[from] checkout::CheckoutError),
    #[error("cannot make a checkout directory: {0}")]
    TempDir(#[source] std::io::Error),
    #[error("no .circleci/config.yml at {revision}")]
    NoConfig { revision: String },
    #[error("reading .circleci/config.yml: {0}")]
    Read(#[source] std::io::Error),
}

/// The config text and the commit it was read at.
pub struct Fetched {
    pub revision: String,
    pub text: String,
}

pub fn fetch(p: &PipelineToFetch, vcs_hosts: &[String]) -> Result<Fetched, ConfigFetchError> {
    let mut keys = Vec::new();
    for (role, text) in &p.keys {
        let role = match role {
            WireKeyRole::User => KeyRole::User,
            WireKeyRole::Deploy => KeyRole::Deploy,
            WireKeyRole::Additional => KeyRole::Additional,
        };
        keys.push(
            SshKey::from_text(text.clone(), role)
                .map_err(|reason| ConfigFetchError::Key { role, reason })?,
        );
    }
    let mut known_hosts = KnownHosts::pinned();
    if !p.known_hosts.trim().is_empty() {
        known_hosts.extend(
            KnownHosts::parse(&p.known_hosts, "the project's known_hosts")
                .map_err(ConfigFetchError::KnownHosts)?,
        );
    }
    let mut hosts = VcsHosts::new();
    for m in vcs_hosts.iter().filter(|m| !m.trim().is_empty()) {
        hosts
            .add_mapping(m.trim())
            .map_err(ConfigFetchError::VcsHost)?;
    }
    let dir = tempfile::Builder::new()
        .prefix("bosun-pipeline-")
        .tempdir()
        .map_err(ConfigFetchError::TempDir)?;
    let spec = CheckoutSpec {
        url: p.clone_url.clone(),
        reference: Some(p.reference.clone()),
        dest: dir.path().join("repo"),
        // One config file per pipeline: a mirror would cost the coordinator a cache of every
        // repository for a single file.
        mirrors: None,
    };
    let creds = Credentials {
        keys,
        known_hosts,
        hosts,
    };
    let outcome = checkout::checkout(&spec, &creds, &mut |_line: &str| {})?;
    let path = dir.path().join("repo/.circleci/config.yml");
    if !path.exists() {
        return Err(ConfigFetchError::NoConfig {
            revision: outcome.sha,
        });
    }
    let text = std::fs::read_to_string(&path).map_err(ConfigFetchError::Read)?;
    Ok(Fetched {
        revision: outcome.sha,
        text,
    })
}

/// Compile `text` for pipeline `p` at `revision`: its workflows with each job's starting
/// status (`waiting`, or `not_run` when filters leave it out). `Err`: the compiler's errors,
/// one per line, each `file:line:col: key: message`.
pub fn compile(
    p: &PipelineToFetch,
    revision: &str,
    text: &str,
) -> Result<Vec<NewWorkflow>, String> {
    let pipeline = PipelineValues {
        id: p.uuid.clone(),
        number: p.number,
        project_git_url: p.clone_url.clone(),
        project_type: "bitbucket".to_owned(),
        project_slug: format!("bitbucket/{}", p.project_slug),
        git_branch: p.branch.clone().unwrap_or_default(),
        git_tag: p.tag.clone().unwrap_or_default(),
        git_revision: revision.to_owned(),
        git_base_revision: p.base_revision.clone().unwrap_or_default(),
        trigger_source: p.trigger_source.clone(),
        extra: vec![
            ("event.name".to_owned(), p.event.clone()),
            ("event.action".to_owned(), p.event_action.clone()),
        ],
        parameters: p.params.clone(),
        ..PipelineValues::default()
    };
    let opts = CompileOptions {
        pipeline,
        orbs: None,
        orb_dir: None,
    };
    let file = ".circleci/config.yml";
    let compiled = config::compile(text, file, &opts).map_err(|errs| {
        errs.iter()
            .map(|e| e.to_string())
            .collect::<Vec<_>>()
            .join("\n")
    })?;
    if compiled.setup {
        return Err(format!(
            "{file}: `setup: true` (dynamic config) needs a continuation, which pipelines do not offer yet"
        ));
    }
    let git = match (&p.tag, &p.branch) {
        (Some(t), _) => GitRef::Tag(t),
        (None, b) => GitRef::Branch(b.as_deref().unwrap_or("")),
    };
    Ok(compiled
        .workflows
        .iter()
        .map(|w| {
            let selected: Vec<&str> = w.jobs_to_run(git).iter().map(|j| j.name.as_str()).collect();
            NewWorkflow {
                name: w.name.clone(),
                jobs: w
                    .jobs
                    .iter()
                    .map(|j| {
                        let runs = selected.contains(&j.name.as_str());
                        let mut runner_class = None;
                        let (kind, reason) = match &j.kind {
                            WorkflowJobKind::Build(job) => {
                                // Only a runner class (`namespace/name`) picks agents; the
                                // compiler has already refused anything else that is not a
                                // docker size.
                                runner_class = job
                                    .resource_class
                                    .as_deref()
                                    .map(str::trim)
                                    .filter(|c| c.contains('/'))
                                    .map(str::to_owned);
                                ("build", None)
                            }
                            WorkflowJobKind::Approval => ("approval", None),
                            WorkflowJobKind::NotRunnable { reason } => {
                                ("not_runnable", Some(reason.clone()))
                            }
                        };
                        let (status, reason) = if runs {
                            (WorkflowJobStatus::Waiting, reason)
                        } else {
                            let why = match git {
                                GitRef::Branch(b) => format!("filters exclude branch {b}"),
                                GitRef::Tag(t) => {
                                    format!("filters exclude tag {t} (tags are opt-in)")
                                }
                            };
                            (WorkflowJobStatus::NotRun, Some(why))
                        };
                        NewWorkflowJob {
                            name: j.name.clone(),
                            kind: kind.to_owned(),
                            requires: j
                                .requires
                                .iter()
                                .map(|r| (r.clone(), j.accepted(r).to_vec()))
                                .collect(),
                            serial_group: j.serial_group.clone(),
                            resource_class: runner_class,
                            status,
                            reason,
                        }
                    })
                    .collect(),
            }
        })
        .collect())
}

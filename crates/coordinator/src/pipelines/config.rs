//! A pipeline's config: `.circleci/config.yml` at the pipeline's commit, read from a bare
//! mirror of the project's repository kept in the coordinator's data directory
//! (`DATA/config-mirrors/mirrors/`, one per project and address, `src/mirror/`): each pipeline fetches
//! only what is new, with the project's keys and Bitbucket's pinned host keys plus the
//! project's (the agent's checkout code), then reads the one blob from the commit's tree — no
//! working tree. It is compiled with the same compiler as `bosun execute --workflow`, pipeline
//! values filled. Blocking: run it off the async workers.

use crate::model::{schedule, JobKind};
use crate::store::pipelines::{NewWorkflow, NewWorkflowJob, PipelineToFetch};
use crate::store::schedules::{RepoAccess, WorkflowTrigger};
use bosun_config::{self as config, CompileOptions, GitRef, PipelineValues, WorkflowJobKind};
use bosun_git::checkout::{self, Credentials};
use bosun_git::mirror::Mirrors;
use bosun_git::ssh::{KeyRole, KnownHosts, SshKey, VcsHosts};
use bosun_protocol::{WireKeyRole, WorkflowJobStatus};
use std::path::Path;

/// Where the config is read from in the commit's tree.
pub const CONFIG_PATH: &str = ".circleci/config.yml";

/// The largest config read (our choice, the sources name no limit for the file as written):
/// the largest real config the compiler is benchmarked on is 1,327 lines, ~50 KiB; this
/// bounds what a push can make the coordinator hold before compiling.
pub const MAX_CONFIG_BYTES: usize = 4 << 20;

/// Why a pipeline's config could not be had. The text is shown on the pipeline's page.
#[derive(Debug, thiserror::Error)]
pub enum ConfigFetchError {
    #[error("the project's {role} key: {reason}")]
    Key { role: KeyRole, reason: String },
    #[error("the project's known_hosts: {0}")]
    KnownHosts(#[source] bosun_git::ssh::SshError),
    #[error("--vcs-host: {0}")]
    VcsHost(#[source] bosun_git::ssh::SshError),
    #[error("cannot fetch the config: {0}")]
    Checkout(#[from] checkout::CheckoutError),
    #[error("no {CONFIG_PATH} at {revision}")]
    NoConfig { revision: String },
    #[error("{CONFIG_PATH} at {revision} is {what}, not a file: only a file is read")]
    NotAFile {
        revision: String,
        what: &'static str,
    },
    #[error("{CONFIG_PATH} at {revision} is {size} bytes; the limit is {MAX_CONFIG_BYTES}")]
    TooLarge { revision: String, size: usize },
    #[error("{CONFIG_PATH} at {revision} is not UTF-8 text")]
    NotText { revision: String },
    #[error("reading {CONFIG_PATH} at {revision}: {source}")]
    Git {
        revision: String,
        #[source]
        source: git2::Error,
    },
}

/// The config text and the commit it was read at.
pub struct Fetched {
    pub revision: String,
    pub text: String,
}

/// The mirrors of the projects' repositories under the data directory `data`, kept within
/// `budget` bytes: [`fetch`] evicts the least recently used ones after each fetch (`serve
/// --config-mirror-budget`).
pub fn mirrors(data: &Path, budget: u64) -> Mirrors {
    Mirrors::new(&data.join("config-mirrors"), budget)
}

/// The default of `serve --config-mirror-budget`: the agents' mirror cache's default.
pub const DEFAULT_MIRROR_BUDGET: u64 = bosun_git::mirror::DEFAULT_BUDGET_BYTES;

pub fn fetch(
    p: &PipelineToFetch,
    vcs_hosts: &[String],
    mirrors: &Mirrors,
) -> Result<Fetched, ConfigFetchError> {
    let creds = credentials(&p.keys, &p.known_hosts, vcs_hosts)?;
    // One mirror per project (by its UUID, which survives renames): two projects never read
    // each other's fetched objects, even for one URL.
    let scope = format!("project {}", p.project_uuid);
    let fetched = checkout::fetch_commit(&p.clone_url, &p.reference, &scope, mirrors, &creds)?;
    let revision = fetched.commit().to_string();
    let text = read_config(fetched.repo(), fetched.commit(), &revision)?;
    keep_within_budget(mirrors);
    drop(fetched);
    Ok(Fetched { revision, text })
}

/// The branches project `r`'s repository has now: its mirror is fetched (as for a
/// pipeline's config, with the project's keys; the fetch prunes deleted branches) and its
/// `refs/heads/*` listed. A scheduled workflow fires on those its filters allow.
pub fn branches(
    r: &RepoAccess,
    vcs_hosts: &[String],
    mirrors: &Mirrors,
) -> Result<Vec<String>, ConfigFetchError> {
    let creds = credentials(&r.keys, &r.known_hosts, vcs_hosts)?;
    let scope = format!("project {}", r.project_uuid);
    let fetched = checkout::fetch_commit(&r.clone_url, &r.default_branch, &scope, mirrors, &creds)?;
    let git = |source| ConfigFetchError::Git {
        revision: r.default_branch.clone(),
        source,
    };
    let mut out = Vec::new();
    for reference in fetched
        .repo()
        .references_glob("refs/heads/*")
        .map_err(git)?
    {
        if let Ok(name) = reference.map_err(git)?.name() {
            if let Some(b) = name.strip_prefix("refs/heads/") {
                out.push(b.to_owned());
            }
        }
    }
    drop(fetched);
    keep_within_budget(mirrors);
    Ok(out)
}

/// The project's keys, its `known_hosts` beside Bitbucket's pinned ones, and `--vcs-host`.
fn credentials(
    project_keys: &[(WireKeyRole, zeroize::Zeroizing<String>)],
    project_known_hosts: &str,
    vcs_hosts: &[String],
) -> Result<Credentials, ConfigFetchError> {
    let mut keys = Vec::new();
    for (role, text) in project_keys {
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
    if !project_known_hosts.trim().is_empty() {
        known_hosts.extend(
            KnownHosts::parse(project_known_hosts, "the project's known_hosts")
                .map_err(ConfigFetchError::KnownHosts)?,
        );
    }
    let mut hosts = VcsHosts::new();
    for m in vcs_hosts.iter().filter(|m| !m.trim().is_empty()) {
        hosts
            .add_mapping(m.trim())
            .map_err(ConfigFetchError::VcsHost)?;
    }
    Ok(Credentials {
        keys,
        known_hosts,
        hosts,
    })
}

fn keep_within_budget(mirrors: &Mirrors) {
    // Keep the mirrors within their budget, least recently used first, while this one is
    // still locked: the mirror just fetched is never evicted by its own pipeline, nor is one
    // another pipeline is fetching into (`Mirrors::shrink_to` skips locked mirrors). Without
    // this every project ever built kept its whole repository here for good. A failed
    // eviction costs disk, not the pipeline: logged, not returned.
    let t0 = std::time::Instant::now();
    match mirrors.evict() {
        Ok(removed) => {
            if !removed.is_empty() {
                tracing::info!(
                    removed = removed.len(),
                    bytes = removed.iter().map(|m| m.bytes).sum::<u64>(),
                    budget = mirrors.budget(),
                    "config mirrors evicted"
                );
            }
        }
        Err(e) => tracing::warn!("config mirrors: eviction failed: {e}"),
    }
    tracing::debug!(
        evict_ms = t0.elapsed().as_secs_f64() * 1000.0,
        "config mirrors kept within their budget"
    );
}

/// The config blob of `commit`'s tree: a regular file only (a symbolic link's target or a
/// submodule is never followed: the coordinator reads nothing but the project's own blob),
/// at most [`MAX_CONFIG_BYTES`], UTF-8.
fn read_config(
    repo: &git2::Repository,
    commit: git2::Oid,
    revision: &str,
) -> Result<String, ConfigFetchError> {
    let git = |source| ConfigFetchError::Git {
        revision: revision.to_owned(),
        source,
    };
    let tree = repo
        .find_commit(commit)
        .and_then(|c| c.tree())
        .map_err(git)?;
    let entry = match tree.get_path(Path::new(CONFIG_PATH)) {
        Ok(e) => e,
        Err(e) if e.code() == git2::ErrorCode::NotFound => {
            return Err(ConfigFetchError::NoConfig {
                revision: revision.to_owned(),
            })
        }
        Err(e) => return Err(git(e)),
    };
    let what = match entry.filemode() {
        0o100644 | 0o100755 => None,
        0o120000 => Some("a symbolic link"),
        0o160000 => Some("a submodule"),
        0o040000 => Some("a directory"),
        _ => Some("an entry of an unknown kind"),
    };
    if let Some(what) = what {
        return Err(ConfigFetchError::NotAFile {
            revision: revision.to_owned(),
            what,
        });
    }
    // The size from the object's header first, so an oversized blob is never inflated.
    let (size, kind) = repo
        .odb()
        .and_then(|odb| odb.read_header(entry.id()))
        .map_err(git)?;
    if kind != git2::ObjectType::Blob {
        return Err(ConfigFetchError::NotAFile {
            revision: revision.to_owned(),
            what: "not a blob",
        });
    }
    if size > MAX_CONFIG_BYTES {
        return Err(ConfigFetchError::TooLarge {
            revision: revision.to_owned(),
            size,
        });
    }
    let blob = repo.find_blob(entry.id()).map_err(git)?;
    String::from_utf8(blob.content().to_vec()).map_err(|_| ConfigFetchError::NotText {
        revision: revision.to_owned(),
    })
}

/// A pipeline's config, compiled.
pub struct Compiled {
    /// The workflows it runs (a scheduled workflow's pipeline: that one; any other: every
    /// workflow without `triggers`), each job with its starting status.
    pub workflows: Vec<NewWorkflow>,
    /// Every workflow's schedules (what the default branch's config says is scheduled).
    pub triggers: Vec<WorkflowTrigger>,
    /// The processed config, as `circleci config process` writes it.
    pub processed: String,
    /// `setup: true`: its workflows make the real config and continue the pipeline with it.
    pub setup: bool,
}

/// Compile `text` for pipeline `p` at `revision`, registry orbs read from `orb_dir`
/// (`serve --orb-dir`): the workflows it runs with each job's starting status (`waiting`,
/// or `not_run` when filters leave it out). `Err`: the compiler's errors, one per line,
/// each `file:line:col: key: message`.
pub fn compile(
    p: &PipelineToFetch,
    revision: &str,
    text: &str,
    orb_dir: Option<&Path>,
) -> Result<Compiled, String> {
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
        schedule_name: p.schedule_name.clone(),
        schedule_id: p.schedule_id.clone(),
        extra: vec![
            ("event.name".to_owned(), p.event.clone()),
            ("event.action".to_owned(), p.event_action.clone()),
        ],
        parameters: p.params.clone(),
    };
    let loader = orb_dir.map(|d| config::OrbDir(d.to_path_buf()));
    let opts = CompileOptions {
        pipeline,
        orbs: loader.as_ref().map(|l| l as &dyn config::OrbLoader),
        orb_dir: orb_dir.map(|d| d.display().to_string()),
    };
    let file = CONFIG_PATH;
    let compiled = config::compile(text, file, &opts).map_err(|errs| {
        errs.iter()
            .map(|e| e.to_string())
            .collect::<Vec<_>>()
            .join("\n")
    })?;
    let git = match (&p.tag, &p.branch) {
        (Some(t), _) => GitRef::Tag(t),
        (None, b) => GitRef::Branch(b.as_deref().unwrap_or("")),
    };
    let triggers = compiled
        .workflows
        .iter()
        .flat_map(|w| {
            w.triggers.iter().map(|t| WorkflowTrigger {
                workflow: w.name.clone(),
                cron: t.cron.as_str().to_owned(),
                only: t
                    .branches
                    .as_ref()
                    .filter(|f| !f.only.is_empty())
                    .map(|f| f.only.iter().map(|p| p.source()).collect()),
                ignore: t
                    .branches
                    .as_ref()
                    .map(|f| f.ignore.iter().map(|p| p.source()).collect())
                    .unwrap_or_default(),
            })
        })
        .collect();
    if let Some(w) = &p.scheduled_workflow {
        if !compiled.workflows.iter().any(|x| &x.name == w) {
            return Err(format!(
                "{file}: the scheduled workflow `{w}` (read from the default branch's config) is not in this config at {revision}"
            ));
        }
    }
    let workflows = compiled
        .workflows
        .iter()
        .filter(|w| {
            schedule::runs_workflow(
                p.scheduled_workflow.as_deref(),
                &w.name,
                !w.triggers.is_empty(),
            )
        })
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
                                (JobKind::Build, None)
                            }
                            WorkflowJobKind::Approval => (JobKind::Approval, None),
                            WorkflowJobKind::NotRunnable { reason } => {
                                (JobKind::NotRunnable, Some(reason.clone()))
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
                            contexts: j.context.clone(),
                        }
                    })
                    .collect(),
            }
        })
        .collect();
    Ok(Compiled {
        workflows,
        triggers,
        processed: compiled.to_yaml(),
        setup: compiled.setup,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A repository at `dir` whose `main` holds `.circleci/config.yml` as `mode` with
    /// `content` (for a link: its target); returns the commit.
    fn commit_config(dir: &Path, mode: i32, content: &[u8]) -> String {
        let repo = git2::Repository::open(dir)
            .or_else(|_| git2::Repository::init(dir))
            .expect("repo");
        let blob = repo.blob(content).expect("blob");
        let mut sub = repo.treebuilder(None).expect("tb");
        sub.insert("config.yml", blob, mode).expect("insert");
        let sub = sub.write().expect("subtree");
        let mut root = repo.treebuilder(None).expect("tb");
        root.insert(".circleci", sub, 0o040000).expect("insert");
        let tree = repo.find_tree(root.write().expect("tree")).expect("tree");
        let sig = git2::Signature::now("t", "t@example.com").expect("sig");
        let parent = repo
            .find_reference("refs/heads/main")
            .ok()
            .and_then(|r| r.peel_to_commit().ok());
        let parents: Vec<&git2::Commit> = parent.iter().collect();
        repo.commit(Some("refs/heads/main"), &sig, &sig, "c", &tree, &parents)
            .expect("commit")
            .to_string()
    }

    fn pipeline(url: &Path, reference: &str) -> PipelineToFetch {
        PipelineToFetch {
            id: 1,
            uuid: "u".into(),
            number: 1,
            project_slug: "acme/widget".into(),
            project_uuid: "{p}".into(),
            clone_url: url.display().to_string(),
            keys: Vec::new(),
            known_hosts: String::new(),
            reference: reference.into(),
            branch: Some("main".into()),
            tag: None,
            params: Vec::new(),
            trigger_source: "api".into(),
            event: "api".into(),
            event_action: String::new(),
            base_revision: None,
            default_branch: "main".into(),
            api: None,
            schedule_name: String::new(),
            schedule_id: String::new(),
            scheduled_workflow: None,
        }
    }

    #[test]
    fn the_config_blob_is_read_from_a_mirror_and_follows_new_commits() {
        let src = tempfile::tempdir().expect("tmp");
        let data = tempfile::tempdir().expect("tmp");
        let m = mirrors(data.path(), DEFAULT_MIRROR_BUDGET);
        let first = commit_config(src.path(), 0o100644, b"version: 2.1\n# one\n");
        let got = fetch(&pipeline(src.path(), "main"), &[], &m).expect("fetch");
        assert_eq!(
            (got.revision.as_str(), got.text.as_str()),
            (first.as_str(), "version: 2.1\n# one\n")
        );
        let second = commit_config(src.path(), 0o100755, b"version: 2.1\n# two\n");
        let got = fetch(&pipeline(src.path(), &second), &[], &m).expect("fetch");
        assert_eq!(got.text, "version: 2.1\n# two\n");
        // The first commit is still readable by its SHA.
        let got = fetch(&pipeline(src.path(), &first), &[], &m).expect("fetch");
        assert!(got.text.contains("# one"));
        // No working tree anywhere: the mirror is bare.
        let mirror_root = data.path().join("config-mirrors/mirrors");
        for e in std::fs::read_dir(&mirror_root).expect("mirrors").flatten() {
            assert!(
                !e.path().join(".circleci").exists(),
                "{}",
                e.path().display()
            );
        }
    }

    /// The mirrors' directories under the data directory.
    fn mirror_dirs(data: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(data.join("config-mirrors/mirrors"))
            .map(|d| {
                d.flatten()
                    .filter(|e| e.path().is_dir())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| !n.starts_with('.'))
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    fn project(url: &Path, uuid: &str) -> PipelineToFetch {
        PipelineToFetch {
            project_uuid: uuid.into(),
            ..pipeline(url, "main")
        }
    }

    #[test]
    fn config_mirrors_are_evicted_least_recently_used_within_the_budget_never_one_in_use() {
        let (a, b, c) = (
            tempfile::tempdir().expect("tmp"),
            tempfile::tempdir().expect("tmp"),
            tempfile::tempdir().expect("tmp"),
        );
        for src in [&a, &b, &c] {
            commit_config(src.path(), 0o100644, b"version: 2.1\n");
        }
        let data = tempfile::tempdir().expect("tmp");
        // A budget that holds every mirror: nothing goes.
        let roomy = mirrors(data.path(), DEFAULT_MIRROR_BUDGET);
        fetch(&project(a.path(), "{a}"), &[], &roomy).expect("fetch a");
        fetch(&project(b.path(), "{b}"), &[], &roomy).expect("fetch b");
        let both = mirror_dirs(data.path());
        assert_eq!(both.len(), 2, "{both:?}");
        // One byte: after each fetch only the mirror just fetched (locked while evicting)
        // is left; the least recently used went first.
        let tight = mirrors(data.path(), 1);
        fetch(&project(c.path(), "{c}"), &[], &tight).expect("fetch c");
        let only_c = mirror_dirs(data.path());
        assert_eq!(only_c.len(), 1, "{only_c:?}");
        assert!(!both.contains(&only_c[0]), "{only_c:?} of {both:?}");
        // A mirror in use (another pipeline fetching into it: its lock is held) is never
        // removed, whatever the budget.
        let creds = Credentials {
            keys: Vec::new(),
            known_hosts: KnownHosts::pinned(),
            hosts: VcsHosts::new(),
        };
        let held = checkout::fetch_commit(
            &a.path().display().to_string(),
            "main",
            "project {a}",
            &tight,
            &creds,
        )
        .expect("a in use");
        fetch(&project(b.path(), "{b}"), &[], &tight).expect("fetch b");
        let in_use = mirror_dirs(data.path());
        assert_eq!(in_use.len(), 2, "a (held) and b (just fetched): {in_use:?}");
        assert!(!in_use.contains(&only_c[0]), "c was the oldest: {in_use:?}");
        drop(held);
        // Released, it goes with the next fetch; the config still reads.
        let got = fetch(&project(c.path(), "{c}"), &[], &tight).expect("fetch c");
        assert_eq!(got.text, "version: 2.1\n");
        assert_eq!(mirror_dirs(data.path()), only_c);
    }

    #[test]
    fn a_link_a_missing_file_and_an_oversized_file_are_refused() {
        let src = tempfile::tempdir().expect("tmp");
        let data = tempfile::tempdir().expect("tmp");
        let m = mirrors(data.path(), DEFAULT_MIRROR_BUDGET);
        // A link to a file of the coordinator's host is never followed.
        commit_config(src.path(), 0o120000, b"/etc/passwd");
        let e = fetch(&pipeline(src.path(), "main"), &[], &m)
            .err()
            .expect("refused");
        assert!(
            matches!(
                e,
                ConfigFetchError::NotAFile {
                    what: "a symbolic link",
                    ..
                }
            ),
            "{e}"
        );
        let big = vec![b'#'; MAX_CONFIG_BYTES + 1];
        commit_config(src.path(), 0o100644, &big);
        let e = fetch(&pipeline(src.path(), "main"), &[], &m)
            .err()
            .expect("refused");
        assert!(matches!(e, ConfigFetchError::TooLarge { .. }), "{e}");
        commit_config(src.path(), 0o100644, b"\xff\xfe not text");
        let e = fetch(&pipeline(src.path(), "main"), &[], &m)
            .err()
            .expect("refused");
        assert!(matches!(e, ConfigFetchError::NotText { .. }), "{e}");
        let e = fetch(&pipeline(src.path(), "no-such-branch"), &[], &m)
            .err()
            .expect("refused");
        assert!(e.to_string().contains("not a branch, tag or commit"), "{e}");
        // A commit without the file.
        let repo = git2::Repository::open(src.path()).expect("repo");
        let empty = repo.treebuilder(None).expect("tb").write().expect("tree");
        let tree = repo.find_tree(empty).expect("tree");
        let sig = git2::Signature::now("t", "t@example.com").expect("sig");
        let head = repo
            .find_reference("refs/heads/main")
            .and_then(|r| r.peel_to_commit())
            .expect("head");
        repo.commit(Some("refs/heads/main"), &sig, &sig, "rm", &tree, &[&head])
            .expect("commit");
        let e = fetch(&pipeline(src.path(), "main"), &[], &m)
            .err()
            .expect("refused");
        assert!(matches!(e, ConfigFetchError::NoConfig { .. }), "{e}");
    }
}

//! The seam through which a job's primary container may come ready-made: a runner (the
//! agent's pool, `crate::agent::pool`) creates and starts containers ahead of the jobs that
//! will use them, and the lifecycle takes one over instead of creating its own — only when
//! it was made from exactly the spec the job would have created (labels and the host side of
//! its working directory aside), so the job cannot tell: its main process is the same one,
//! still waiting for the job's files on stdin.
//!
//! A job whose checkout goes into a mounted working directory (`super::work_tree`) needs
//! that directory when its container is created; a ready container for such a job comes with
//! an empty one of its own, made by [`prepare`] under the agent's work directory, mounted
//! where the job's spec says, and handed to the job with the container (the job fills it,
//! and its resources remove both). Nothing is in it before the job takes it, so no job sees
//! another's files.
//!
//! What differs, and why: the engine cannot relabel a container (Docker's labels are fixed at
//! create, moby/moby#21721), so a taken-over container keeps its pool labels
//! (`bosun.agent=<agent>`, `bosun.kind=pool`) instead of the job's `bosun.job`. Nothing in
//! the job reads its labels; the job's resource guard removes it like any primary, and the
//! agent's start-up sweep finds it by `bosun.agent`.

use super::work_tree::WorkTree;
use crate::executor::{Attached, ContainerSpec, Executor};
use std::sync::atomic::{AtomicU64, Ordering};

/// A container made ahead of its job: created from a spec, started, its main process has
/// announced its user (`banner`) and waits for the job's files on stdin.
pub struct ReadyContainer {
    pub id: String,
    pub main: Attached,
    /// The main process's `bosun-ready …` line.
    pub banner: String,
    /// The empty working directory mounted into it, when its spec asks for one (removed on
    /// drop unless a job took it).
    pub work_tree: Option<WorkTree>,
    /// The directory of its own copy of the in-job executable, mounted as its main process,
    /// when its spec asks for one (the same).
    pub runtime: Option<WorkTree>,
}

/// Where a job may take its primary container from. `bosun execute` has none.
pub trait ReadySource: Send + Sync {
    /// A ready container made from `spec` (its labels ignored), if one waits; it is the
    /// job's from now on (the pool forgets it: a container serves one job only).
    fn take(&self, spec: &ContainerSpec) -> Option<ReadyContainer>;
    /// The job created or took a primary from `spec`: the next job may want the same.
    fn used(&self, spec: &ContainerSpec);
}

/// The part of a spec a ready container must match: everything but the labels and the host
/// paths of what is mounted into it (each container has its own working directory and copy
/// of the in-job executable; where they are mounted must match).
pub fn pool_key(spec: &ContainerSpec) -> ContainerSpec {
    ContainerSpec {
        labels: Vec::new(),
        work_tree: spec
            .work_tree
            .as_ref()
            .map(|(_, target)| (String::new(), target.clone())),
        runtime: spec.runtime.as_ref().map(|_| String::new()),
        ..spec.clone()
    }
}

/// Create and start a container from `spec` and wait for its main process to announce its
/// user: what the lifecycle does for a fresh primary, done ahead of the job. A spec with a
/// working directory gets an empty one of its own under `agent_id`'s work directory, and one
/// with a mounted in-job executable its own copy, mounted where the spec says. On failure the
/// container (if made) and the directories are removed.
pub async fn prepare(
    executor: &dyn Executor,
    spec: &ContainerSpec,
    agent_id: &str,
) -> Result<ReadyContainer, super::SetupError> {
    let mut spec = spec.clone();
    let name = ready_dir_name();
    let failed = |what: &str, e: std::io::Error| {
        super::SetupError::Prepare(format!("cannot make {what} for a ready container: {e}"))
    };
    let work_tree = match &spec.work_tree {
        None => None,
        Some((_, target)) => {
            let tree = WorkTree::create_mounted(agent_id, &name)
                .map_err(|e| failed("a working directory", e))?;
            spec.work_tree = Some((tree.path().display().to_string(), target.clone()));
            Some(tree)
        }
    };
    let runtime = match &spec.runtime {
        None => None,
        Some(_) => {
            let (dir, file) = super::work_tree::runtime_copy(agent_id, &name)
                .map_err(|e| failed("a copy of the in-job executable", e))?;
            spec.runtime = Some(file.display().to_string());
            Some(dir)
        }
    };
    let spec = &spec;
    let id = executor.create(spec).await?;
    let started = async {
        let mut main = executor.start(&id).await?;
        let banner = super::bootstrap::main_line(&mut main.output, "bosun-ready").await?;
        // A banner that does not parse fails here, not in the job that takes it.
        super::bootstrap::parse_banner(&banner)?;
        Ok::<_, super::SetupError>((main, banner))
    };
    match started.await {
        Ok((main, banner)) => Ok(ReadyContainer {
            id,
            main,
            banner,
            work_tree,
            runtime,
        }),
        Err(e) => {
            if let Err(r) = executor.remove(&id).await {
                tracing::warn!(%id, "could not remove a container that failed to get ready: {r}");
            }
            Err(e)
        }
    }
}

/// A name for a ready container's working directory, unique in this process (the agent's
/// work directory is its own, and swept when it starts).
fn ready_dir_name() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "ready-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Whether a ready container's main process is still there to take the job's files: its
/// output has not ended (a container killed from outside ends it).
pub fn alive(ready: &mut ReadyContainer) -> bool {
    use futures_util::FutureExt;
    use futures_util::StreamExt;
    !matches!(
        ready.main.output.next().now_or_never(),
        Some(None | Some(Err(_)))
    )
}

//! The seam through which a job's primary container may come ready-made: a runner (the
//! agent's pool, `crate::agent::pool`) creates and starts containers ahead of the jobs that
//! will use them, and the lifecycle takes one over instead of creating its own — only when
//! it was made from exactly the spec the job would have created (labels aside), so the job
//! cannot tell: its main process is the same one, still waiting for the job's files on stdin.
//!
//! What differs, and why: the engine cannot relabel a container (Docker's labels are fixed at
//! create, moby/moby#21721), so a taken-over container keeps its pool labels
//! (`bosun.agent=<agent>`, `bosun.kind=pool`) instead of the job's `bosun.job`. Nothing in
//! the job reads its labels; the job's resource guard removes it like any primary, and the
//! agent's start-up sweep finds it by `bosun.agent`.

use crate::executor::{Attached, ContainerSpec, Executor};

/// A container made ahead of its job: created from a spec, started, its main process has
/// announced its user (`banner`) and waits for the job's files on stdin.
pub struct ReadyContainer {
    pub id: String,
    pub main: Attached,
    /// The main process's `bosun-ready …` line.
    pub banner: String,
}

/// Where a job may take its primary container from. `bosun execute` has none.
pub trait ReadySource: Send + Sync {
    /// A ready container made from `spec` (its labels ignored), if one waits; it is the
    /// job's from now on (the pool forgets it: a container serves one job only).
    fn take(&self, spec: &ContainerSpec) -> Option<ReadyContainer>;
    /// The job created or took a primary from `spec`: the next job may want the same.
    fn used(&self, spec: &ContainerSpec);
}

/// The part of a spec a ready container must match: everything but the labels.
pub fn pool_key(spec: &ContainerSpec) -> ContainerSpec {
    ContainerSpec {
        labels: Vec::new(),
        ..spec.clone()
    }
}

/// Create and start a container from `spec` and wait for its main process to announce its
/// user: what the lifecycle does for a fresh primary, done ahead of the job. On failure the
/// container (if made) is removed.
pub async fn prepare(
    executor: &dyn Executor,
    spec: &ContainerSpec,
) -> Result<ReadyContainer, super::SetupError> {
    let id = executor.create(spec).await?;
    let started = async {
        let mut main = executor.start(&id).await?;
        let banner = super::bootstrap::main_line(&mut main.output, "bosun-ready").await?;
        // A banner that does not parse fails here, not in the job that takes it.
        super::bootstrap::parse_banner(&banner)?;
        Ok::<_, super::SetupError>((main, banner))
    };
    match started.await {
        Ok((main, banner)) => Ok(ReadyContainer { id, main, banner }),
        Err(e) => {
            if let Err(r) = executor.remove(&id).await {
                tracing::warn!(%id, "could not remove a container that failed to get ready: {r}");
            }
            Err(e)
        }
    }
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

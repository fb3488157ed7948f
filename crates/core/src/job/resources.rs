//! What a job owns on the engine — its primary container, service containers, networks it
//! made, and whatever later parts add — and the one guard that removes all of them.
//!
//! Every resource is labelled `bosun.job=<job id>` and `bosun.agent=<agent id>` when it is
//! created, and tracked here the moment the engine names it. [`Resources::release`] removes
//! them in reverse order (services before the primary whose network namespace they share,
//! containers before networks). The lifecycle calls it on every exit path — success,
//! failure, cancel, timeout, a panic in a step's task — and if the job's future is dropped
//! before that (its task aborted), `Drop` hands the removal to the runtime. What a killed
//! agent left behind is found by label at its next start ([`sweep`]).

use crate::engine_proxy::JobEngine;
use crate::executor::{Executor, ExecutorError, ResourceKind, LABEL_AGENT, LABEL_JOB, LABEL_KIND};
use std::sync::{Arc, Mutex};

/// What a tracked resource is to its job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// Where the steps run.
    Primary,
    /// A `docker:` image after the first, by its name (`name:` or the image).
    Service(String),
    /// A network the job created.
    Network,
    /// The job's engine proxy; what the job made through it (containers, networks, volumes,
    /// images, labelled `bosun.kind=engine`) is found by label when it is released.
    Engine,
    /// The working directory prepared on the host (a directory, not an engine object).
    WorkTree,
}

impl Role {
    /// The `bosun.kind` label value.
    pub fn label(&self) -> &'static str {
        match self {
            Role::Primary => "primary",
            Role::Service(_) => "service",
            Role::Network => "network",
            Role::Engine => crate::engine_proxy::filter::KIND_VALUE,
            Role::WorkTree => "work-tree",
        }
    }

    fn kind(&self) -> ResourceKind {
        match self {
            Role::Network => ResourceKind::Network,
            _ => ResourceKind::Container,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resource {
    pub role: Role,
    pub id: String,
}

/// A job's resources. Cheap to share; removal happens once.
pub struct Resources {
    executor: Arc<dyn Executor>,
    job_id: String,
    agent_id: String,
    held: Mutex<Vec<Resource>>,
    engine: Mutex<Option<JobEngineHeld>>,
    /// The directories prepared on the host and mounted into the primary (the working
    /// directory, the in-job executable's copy): removed after the containers (nothing
    /// mounts them then).
    work_trees: Mutex<Vec<Arc<super::work_tree::WorkTree>>>,
}

/// A job's engine: the proxy to stop, and whether the images built through it stay.
struct JobEngineHeld {
    proxy: Arc<JobEngine>,
    keep_images: bool,
}

impl Resources {
    pub fn new(executor: Arc<dyn Executor>, job_id: &str, agent_id: &str) -> Self {
        Self {
            executor,
            job_id: job_id.to_owned(),
            agent_id: agent_id.to_owned(),
            held: Mutex::new(Vec::new()),
            engine: Mutex::new(None),
            work_trees: Mutex::new(Vec::new()),
        }
    }

    /// Hand a directory the job's primary mounts over: removed on release, after the
    /// containers that mount it.
    pub fn track_work_tree(&self, tree: Arc<super::work_tree::WorkTree>) {
        self.work_trees
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(tree);
    }

    /// Hand the job's engine proxy over: on release it stops first (nothing new can be made),
    /// then everything labelled with the job is removed (images unless the engine keeps them).
    pub fn track_engine(&self, proxy: Arc<JobEngine>) {
        let keep_images = proxy.keeps_images();
        *self.engine.lock().unwrap_or_else(|p| p.into_inner()) =
            Some(JobEngineHeld { proxy, keep_images });
    }

    /// The labels a resource of `role` must carry to be found again.
    pub fn labels(&self, role: &Role) -> Vec<(String, String)> {
        vec![
            (LABEL_JOB.to_owned(), self.job_id.clone()),
            (LABEL_AGENT.to_owned(), self.agent_id.clone()),
            (LABEL_KIND.to_owned(), role.label().to_owned()),
        ]
    }

    /// Track a resource the engine just made.
    pub fn track(&self, role: Role, id: &str) {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        held.push(Resource {
            role,
            id: id.to_owned(),
        });
    }

    /// What the job holds now, in creation order.
    pub fn list(&self) -> Vec<Resource> {
        self.held
            .lock()
            .map(|h| h.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    /// Remove everything, newest first, containers before networks. Every removal is tried;
    /// the failures come back (the caller reports them).
    pub async fn release(&self) -> Vec<(Resource, ExecutorError)> {
        let engine = self.engine.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(e) = &engine {
            e.proxy.stop().await;
        }
        let taken = std::mem::take(&mut *self.held.lock().unwrap_or_else(|p| p.into_inner()));
        // The job's directories go while the engine removes its containers (a removal takes
        // the engine a few hundred milliseconds, a checkout's tree about as long on the
        // host): the two overlap. A removal that fails while a container still writes into
        // its mount is tried again once the containers are gone.
        let trees = std::mem::take(&mut *self.work_trees.lock().unwrap_or_else(|p| p.into_inner()));
        let removing = {
            let trees = trees.clone();
            tokio::task::spawn_blocking(move || {
                // Every one tried, whatever the others do.
                trees.iter().filter(|t| t.remove().is_err()).count() == 0
            })
        };
        let mut failed = remove_all(self.executor.as_ref(), taken).await;
        if let Some(e) = engine {
            failed.extend(
                remove_labelled(
                    self.executor.as_ref(),
                    LABEL_JOB,
                    &self.job_id,
                    e.keep_images,
                )
                .await,
            );
        }
        if matches!(removing.await, Ok(true)) {
            return failed;
        }
        for tree in trees {
            let path = tree.path().display().to_string();
            let removed = tokio::task::spawn_blocking(move || tree.remove()).await;
            if let Some(e) = match removed {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(e.to_string()),
                Err(e) => Some(e.to_string()),
            } {
                failed.push((
                    Resource {
                        role: Role::WorkTree,
                        id: path,
                    },
                    ExecutorError::Protocol {
                        target: "the job's working directory".to_owned(),
                        what: "remove",
                        detail: e,
                    },
                ));
            }
        }
        failed
    }
}

/// Remove every container, network, volume and (unless `keep_images`) image carrying
/// `label=value`, in that order; the failures.
async fn remove_labelled(
    executor: &dyn Executor,
    label: &str,
    value: &str,
    keep_images: bool,
) -> Vec<(Resource, ExecutorError)> {
    let mut failed = Vec::new();
    let kinds: &[ResourceKind] = if keep_images {
        &[
            ResourceKind::Container,
            ResourceKind::Network,
            ResourceKind::Volume,
        ]
    } else {
        &[
            ResourceKind::Container,
            ResourceKind::Network,
            ResourceKind::Volume,
            ResourceKind::Image,
        ]
    };
    for &kind in kinds {
        let ids = match executor.list_by_label(kind, label, value).await {
            Ok(ids) => ids,
            Err(e) => {
                failed.push((
                    Resource {
                        role: Role::Engine,
                        id: format!("{kind:?} list"),
                    },
                    e,
                ));
                continue;
            }
        };
        for id in ids {
            if let Err(e) = remove_kind(executor, kind, &id).await {
                failed.push((
                    Resource {
                        role: Role::Engine,
                        id,
                    },
                    e,
                ));
            }
        }
    }
    failed
}

async fn remove_kind(
    executor: &dyn Executor,
    kind: ResourceKind,
    id: &str,
) -> Result<(), ExecutorError> {
    match kind {
        ResourceKind::Container => executor.remove(id).await,
        ResourceKind::Network => executor.remove_network(id).await,
        ResourceKind::Volume => executor.remove_volume(id).await,
        ResourceKind::Image => executor.remove_image(id).await,
    }
}

async fn remove_all(
    executor: &dyn Executor,
    mut taken: Vec<Resource>,
) -> Vec<(Resource, ExecutorError)> {
    // Newest first, and every container before any network (a network in use cannot go).
    taken.reverse();
    taken.sort_by_key(|r| r.role.kind() == ResourceKind::Network);
    let mut failed = Vec::new();
    for r in taken {
        if let Err(e) = remove_kind(executor, r.role.kind(), &r.id).await {
            failed.push((r, e));
        }
    }
    failed
}

impl Drop for Resources {
    fn drop(&mut self) {
        let taken = std::mem::take(&mut *self.held.lock().unwrap_or_else(|p| p.into_inner()));
        let engine = self.engine.lock().unwrap_or_else(|p| p.into_inner()).take();
        // Dropped after the containers' removal below (or at once, with no runtime).
        let tree = std::mem::take(&mut *self.work_trees.lock().unwrap_or_else(|p| p.into_inner()));
        if taken.is_empty() && engine.is_none() {
            return;
        }
        // The lifecycle did not get to release (its future was dropped): remove in the
        // background if a runtime is still there; otherwise the next start's sweep will.
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            let executor = Arc::clone(&self.executor);
            let job_id = self.job_id.clone();
            handle.spawn(async move {
                let mut failed = Vec::new();
                if let Some(e) = &engine {
                    e.proxy.stop().await;
                }
                failed.extend(remove_all(executor.as_ref(), taken).await);
                if let Some(e) = engine {
                    failed.extend(
                        remove_labelled(executor.as_ref(), LABEL_JOB, &job_id, e.keep_images).await,
                    );
                }
                for (r, e) in failed {
                    tracing::warn!(id = %r.id, "could not remove a job's {:?}: {e}", r.role);
                }
                drop(tree);
            });
        }
    }
}

/// Remove every container, network, volume and (unless `keep_images`) image labelled as made
/// by `agent_id`: what an agent killed mid-job left behind, its jobs' engines' objects
/// included. Containers first (they keep networks and volumes in use). Returns what was
/// removed, and the first error if any removal failed.
pub async fn sweep(
    executor: &dyn Executor,
    agent_id: &str,
    keep_images: bool,
) -> Result<Vec<(ResourceKind, String)>, ExecutorError> {
    let mut removed = Vec::new();
    let mut first_error = None;
    let mut kinds = vec![
        ResourceKind::Container,
        ResourceKind::Network,
        ResourceKind::Volume,
    ];
    if !keep_images {
        kinds.push(ResourceKind::Image);
    }
    for kind in kinds {
        for id in executor.list_by_label(kind, LABEL_AGENT, agent_id).await? {
            match remove_kind(executor, kind, &id).await {
                Ok(()) => removed.push((kind, id)),
                Err(e) => {
                    tracing::warn!(%id, "sweep: could not remove a leftover {kind:?}: {e}");
                    first_error.get_or_insert(e);
                }
            }
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(removed),
    }
}

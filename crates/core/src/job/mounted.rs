//! Where a docker job's working directory is mounted from the host, decided before its
//! primary container exists: whether the checkout can go there without a copy, where `~` is
//! (predicted, remembered by image id, or probed), and the job's own empty directory.

use super::environment::expand_home;
use super::resources::{Resources, Role};
use super::work_tree::{self, WorkTree};
use super::{millis, JobSpec};
use crate::config::StepKind;
use crate::executor::Executor;
use std::sync::Arc;
use std::time::Instant;

/// Where the job's working directory is mounted, when its checkout can go there without a
/// copy: the engine is on this host, the agent may give files to the job's user, and every
/// `checkout` step writes to the working directory, whose place is known before the
/// container exists ([`work_tree::predict_home`]). `None` means the tar stream.
pub(super) async fn work_tree_target(
    executor: &dyn Executor,
    spec: &JobSpec,
    info: &crate::executor::ImageInfo,
    resources: &Resources,
) -> Option<String> {
    let plan = &spec.plan;
    let mut checkouts = plan.steps.iter().filter_map(|s| match &s.kind {
        StepKind::Checkout { path } => Some(path.as_deref()),
        _ => None,
    });
    let first = checkouts.next()?;
    if spec.context.source.is_none() || !executor.shares_host_paths() || !work_tree::can_chown() {
        return None;
    }
    let user = plan.user.as_deref().or(info.user.as_deref());
    let key = home_key(&plan.image, info);
    let stored = || {
        let dir = homes_dir(spec)?;
        let home = work_tree::stored_home(&dir, info.id.as_deref()?, user.unwrap_or("root"))?;
        work_tree::learn_home(key, user, &home);
        Some(home)
    };
    let predicted = job_home(plan)
        .map(str::to_owned)
        .or_else(|| work_tree::predict_home(key, user, &info.env))
        .or_else(stored);
    let home = match predicted {
        Some(h) => h,
        None => {
            let mut labels = resources.labels(&Role::Primary);
            labels.retain(|(k, _)| k != crate::executor::LABEL_KIND);
            labels.push((crate::executor::LABEL_KIND.to_owned(), "probe".to_owned()));
            let t = Instant::now();
            let home = work_tree::probe_home(executor, &plan.image, user.unwrap_or("root"), labels)
                .await?;
            tracing::debug!(ms = millis(t.elapsed()), %home, "home probed");
            work_tree::learn_home(key, user, &home);
            if let (Some(dir), Some(id)) = (homes_dir(spec), info.id.as_deref()) {
                work_tree::store_home(&dir, id, user.unwrap_or("root"), &home);
            }
            home
        }
    };
    let workdir = expand_home(&plan.working_directory, &home);
    let all_there = std::iter::once(first)
        .chain(checkouts)
        .all(|p| super::step_sequence::checkout_dest(p, &workdir, &home) == workdir);
    if !all_there || !workdir.starts_with('/') || workdir.trim_end_matches('/').is_empty() {
        return None;
    }
    Some(workdir)
}

/// The job's own empty working directory on the host, handed to its resources; `None` (the
/// checkout is copied in) when it cannot be made.
pub(super) fn new_work_tree(spec: &JobSpec, resources: &Resources) -> Option<Arc<WorkTree>> {
    match WorkTree::create_mounted(&spec.context.agent_id, &spec.id) {
        Ok(t) => {
            let t = Arc::new(t);
            resources.track_work_tree(Arc::clone(&t));
            Some(t)
        }
        Err(e) => {
            tracing::warn!(
                "cannot prepare the job's working directory ({e}): the checkout is copied in"
            );
            None
        }
    }
}

/// The `HOME` the job's own image `environment:` gives its primary container: the home its
/// main process announces, whatever the image says, and the job's alone (never kept for
/// another job).
pub(super) fn job_home(plan: &crate::config::JobPlan) -> Option<&str> {
    plan.image_environment
        .iter()
        .rev()
        .find(|(k, _)| k == "HOME")
        .map(|(_, v)| v.as_str())
}

/// What homes learned in this process are kept by: the engine's image id where it is known
/// (it names the image's content; a name may be re-pulled or re-tagged), else the name.
pub(super) fn home_key<'a>(image: &'a str, info: &'a crate::executor::ImageInfo) -> &'a str {
    info.id.as_deref().unwrap_or(image)
}

/// Where homes learned from images are kept across processes: beside the mirrors, in the
/// cache directory (`None` without one: each process probes once).
pub(super) fn homes_dir(spec: &JobSpec) -> Option<std::path::PathBuf> {
    let mirrors = spec.context.access.mirrors.as_ref()?;
    Some(mirrors.root().parent()?.join("homes"))
}

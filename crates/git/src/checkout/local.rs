//! A source on this machine, copied instead of fetched (see [`copy_from_local_path`]).

use super::RemotePlan;
use git2::Repository;
use std::path::Path;

/// A source that is a repository on this machine (a path, or `file://`), copied the way a
/// mirror is (see [`crate::mirror::copy_local`]) — the same objects and refs a fetch from it
/// would bring, from the same place. `None` (then it is fetched) when it is not such a path,
/// or when its objects are not all its own (alternates, a shallow clone) or the copy fails.
/// Returns the source's `HEAD` branch, as a fetch's default branch.
pub(super) fn copy_from_local_path(repo: &Repository, plan: &RemotePlan) -> Option<Option<String>> {
    if plan.host_check.is_some() {
        return None;
    }
    let path = plan
        .physical
        .strip_prefix("file://")
        .unwrap_or(&plan.physical);
    let path = Path::new(path);
    if !path.is_absolute() || !path.is_dir() {
        return None;
    }
    let src = Repository::open(path).ok()?;
    let git_dir = src.path().to_path_buf();
    if git_dir.join("objects/info/alternates").exists() || git_dir.join("shallow").exists() {
        return None;
    }
    let t = std::time::Instant::now();
    if let Err(e) = crate::mirror::copy_local(&git_dir, &src, repo) {
        tracing::debug!("copying {} failed, fetching instead: {e}", path.display());
        return None;
    }
    tracing::debug!(ms = t.elapsed().as_millis() as u64, path = %path.display(), "copied a local repository");
    let head = src
        .find_reference("HEAD")
        .ok()
        .and_then(|h| h.symbolic_target().ok().flatten().map(str::to_owned));
    Some(head)
}

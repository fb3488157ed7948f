//! Submodules of a checkout, nested ones included: each fetched with the job's own keys
//! and host-key check (through the mirror cache when there is one), at the commit the
//! parent records.

use super::{
    check_out, fetch_repo, fetch_with_keys, git_err, plan_remote, CheckoutError, Credentials,
    MIRROR_REFSPECS,
};
use crate::mirror::{Mirror, Mirrors};
use crate::ssh::{parse_ssh_url, resolve_relative_url};
use git2::Repository;
use std::collections::HashMap;
use std::path::Path;

/// Submodule mirrors fetched ahead with the job's own keys, by mirror address, each still
/// locked: [`update`] takes one instead of opening and fetching it again.
pub(super) type Prefetched = HashMap<String, Mirror>;

/// Fetch, with the job's keys, the mirrors of the submodules that the head start's tree
/// (already in the working directory of the repository at `git_dir`) names, while the
/// parent's own fetch is still running: most commits keep their submodules' URLs, so the
/// fetch [`update`] would make after the parent's is mostly done by then. Only URLs the
/// same rules allow ([`check_submodule_url`], relative ones under the parent's root) are
/// fetched, only into mirrors (never into the job's directory), and only mirrors nobody
/// else holds (never waiting on a lock while the parent's is held). Whatever fails here is
/// left to [`update`], which fetches again and reports it.
pub(super) fn prefetch(
    git_dir: &Path,
    parent_url: &str,
    creds: &Credentials,
    mirrors: &Mirrors,
) -> Prefetched {
    let mut out = Prefetched::new();
    let Ok(repo) = Repository::open(git_dir) else {
        return out;
    };
    let Ok(submodules) = repo.submodules() else {
        return out;
    };
    for sm in submodules.iter().take(MAX_PREFETCH) {
        let Some(raw) = sm.url().ok().flatten() else {
            continue;
        };
        if sm.head_id().is_none() || check_submodule_url(raw).is_err() {
            continue;
        }
        let Some(url) = resolve_relative_url(parent_url, raw) else {
            continue;
        };
        let plan = plan_remote(&url, &creds.hosts);
        let Some(address) = plan.mirror_address() else {
            continue;
        };
        if out.contains_key(&address) {
            continue;
        }
        let mut quiet = |_: &str| {};
        let mirror = match mirrors.try_open(&address, &plan.written, &mut quiet) {
            Ok(Some(m)) => m,
            Ok(None) => continue,
            Err(e) => {
                tracing::debug!(%url, "submodule prefetch: {e}");
                continue;
            }
        };
        match fetch_with_keys(mirror.repo(), &plan, &MIRROR_REFSPECS, creds, true) {
            Ok(_) => {
                tracing::debug!(%url, "submodule mirror fetched ahead");
                out.insert(address, mirror);
            }
            Err(e) => tracing::debug!(%url, "submodule prefetch failed (fetched again later): {e}"),
        }
    }
    out
}

/// Submodules fetched ahead at most, so that a `.gitmodules` of thousands of entries does
/// not hold the parent's checkout behind them.
const MAX_PREFETCH: usize = 16;

/// A submodule URL comes from `.gitmodules`, which anyone who can push writes: only SSH
/// (whose host key must then be trusted, like the project's own) and URLs relative to the
/// superproject's remote are fetched. A local path or `file://` would hand the job a
/// repository from the agent's own disk, `ext::` runs a command, and the other transports
/// go around the host-key check.
pub(super) fn check_submodule_url(raw: &str) -> Result<(), String> {
    let url = raw.trim();
    if url.starts_with("./") || url.starts_with("../") {
        return Ok(());
    }
    let refuse = |why: &str| {
        Err(format!(
            "url {url:?} uses a transport bosun does not fetch submodules over ({why}); \
             only SSH URLs (git@host:path, ssh://…) to a host with a trusted key and relative \
             URLs (../other.git) are allowed"
        ))
    };
    // `<transport>::<address>` is git's remote-helper syntax (ext::, fd::, …).
    if url.find("::").is_some_and(|i| !url[..i].contains('/')) {
        return refuse("a remote helper");
    }
    match parse_ssh_url(url) {
        Some(ssh)
            if ssh.host.starts_with('-')
                || ssh.user.as_deref().is_some_and(|u| u.starts_with('-')) =>
        {
            refuse("a host or user that reads as an option")
        }
        Some(_) => Ok(()),
        None if url.starts_with("file:") => refuse("a file on the agent's host"),
        None if url.contains("://") => refuse("not SSH"),
        None => refuse("a path on the agent's host"),
    }
}

/// Nesting bound: a submodule that (indirectly) contains itself would otherwise recurse forever.
const MAX_SUBMODULE_DEPTH: usize = 8;

/// Each submodule is fetched with its own callbacks (same keys, same host-key check) because
/// its URL may name another host, and libgit2's own submodule update cannot use ours.
#[allow(clippy::too_many_arguments)] // recursion state; grouping it would only rename it
pub(super) fn update(
    repo: &Repository,
    parent_url: &str,
    creds: &Credentials,
    progress: &mut dyn FnMut(&str),
    prefix: &Path,
    out: &mut Vec<(String, String)>,
    depth: usize,
    mirrors: Option<&Mirrors>,
    prefetched: &mut Prefetched,
) -> Result<(), CheckoutError> {
    let submodules = repo.submodules().map_err(git_err("reading .gitmodules"))?;
    for mut sm in submodules {
        let rel_path = sm.path().to_path_buf();
        let full_path = prefix.join(&rel_path).display().to_string();
        let sm_err = |message: String| CheckoutError::Submodule {
            path: full_path.clone(),
            message,
        };
        if depth >= MAX_SUBMODULE_DEPTH {
            return Err(sm_err(format!(
                "submodules nested more than {MAX_SUBMODULE_DEPTH} deep"
            )));
        }
        let name = sm.name().unwrap_or(&full_path).to_string();
        let Some(gitlink) = sm.head_id() else {
            // In .gitmodules but not in the commit's tree: git ignores it too.
            continue;
        };
        let raw_url = sm
            .url()
            .ok()
            .flatten()
            .ok_or_else(|| sm_err("no url in .gitmodules".into()))?
            .to_string();
        check_submodule_url(&raw_url).map_err(sm_err)?;
        let url = resolve_relative_url(parent_url, &raw_url).ok_or_else(|| {
            sm_err(format!(
                "relative url {raw_url} climbs above the root of {parent_url}"
            ))
        })?;
        sm.init(false)
            .map_err(git_err(format!("initialising submodule {full_path}")))?;
        // libgit2 resolved relative URLs itself; store ours, which is the one we fetch.
        repo.config()
            .and_then(|mut c| c.set_str(&format!("submodule.{name}.url"), &url))
            .map_err(git_err(format!(
                "recording the url of submodule {full_path}"
            )))?;
        let plan = plan_remote(&url, &creds.hosts);
        progress(&format!("Submodule {full_path} → {}", plan.describe));
        let (subrepo, fresh) = match sm.open() {
            Ok(r) => (r, false),
            Err(_) => (
                sm.repo_init(true).map_err(git_err(format!(
                    "creating the repository of submodule {full_path}"
                )))?,
                true,
            ),
        };
        match subrepo.find_remote("origin") {
            Ok(_) => subrepo.remote_set_url("origin", &url),
            Err(_) => subrepo.remote("origin", &url).map(|_| ()),
        }
        .map_err(git_err(format!("setting origin of submodule {full_path}")))?;
        let gitlink_hex = gitlink.to_string();
        let ahead = plan
            .mirror_address()
            .filter(|_| fresh)
            .and_then(|a| prefetched.remove(&a));
        let mut fetched = match ahead {
            // Fetched with these keys a moment ago: only the job's copy is left to make.
            Some(mirror) => {
                mirror.materialize(&subrepo)?;
                super::Fetched::default()
            }
            None => fetch_repo(
                &subrepo,
                &plan,
                creds,
                mirrors.filter(|_| fresh),
                Some(&gitlink_hex),
                progress,
            )?,
        };
        if subrepo.find_commit(gitlink).is_err() {
            let sha = gitlink.to_string();
            let fetched = fetch_with_keys(&subrepo, &plan, &[sha.as_str()], creds, false);
            if fetched.is_err() || subrepo.find_commit(gitlink).is_err() {
                return Err(sm_err(format!(
                    "commit {gitlink} recorded by the parent is not on any branch or tag of {url} \
                     (was it pushed?)"
                )));
            }
        }
        let commit = subrepo
            .find_commit(gitlink)
            .map_err(git_err(format!("reading commit {gitlink} of {full_path}")))?;
        check_out(&subrepo, &commit, fetched.head_start)
            .map_err(git_err(format!("checking out {full_path}")))?;
        out.push((full_path.clone(), gitlink.to_string()));
        update(
            &subrepo,
            &url,
            creds,
            progress,
            &prefix.join(&rel_path),
            out,
            depth + 1,
            mirrors,
            &mut fetched.prefetched,
        )?;
    }
    Ok(())
}

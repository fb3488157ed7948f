//! A head start for a checkout through a warm mirror.
//!
//! The fetch that proves the job's keys and brings what is new is one SSH connection and
//! a ref advertisement, its time spent mostly waiting on the server. The tree the mirror
//! already holds for the wanted reference (the branch's tip at the previous job) is most of
//! the tree the job will get, so while the fetch waits a second thread writes that tree
//! into the job's working directory from the objects the mirror had. After the fetch, the
//! final checkout changes only the files that differ — for a branch a few commits ahead,
//! a handful instead of every file (measured in benches/checkout.rs).
//!
//! Nothing of it reaches the job unless the fetch with the job's own keys succeeds: the
//! checkout's destination is the job's private directory on the host (never mounted into a
//! container before the checkout returns), and when the fetch fails [`wipe`] returns it to
//! the empty repository it was.

use git2::build::CheckoutBuilder;
use git2::{Oid, Repository};
use std::path::Path;

/// The commit the mirror holds for `reference` before this job's fetch: a branch's or
/// tag's current tip, a full or abbreviated commit it already has, or for no reference
/// the branch its `HEAD` names, else `main`, else `master`. Only a guess: the final
/// checkout is of what the fetch resolves.
pub(super) fn guess(mirror: &Repository, reference: Option<&str>) -> Option<Oid> {
    let peel = |name: &str| -> Option<Oid> {
        Some(
            mirror
                .find_reference(name)
                .ok()?
                .peel_to_commit()
                .ok()?
                .id(),
        )
    };
    match reference {
        None => mirror
            .find_reference("HEAD")
            .ok()
            .and_then(|h| h.symbolic_target().ok().flatten().map(str::to_owned))
            .and_then(|name| peel(&name))
            .or_else(|| peel("refs/heads/main"))
            .or_else(|| peel("refs/heads/master")),
        Some(r) if r.starts_with("refs/") => peel(r),
        Some(r) => peel(&format!("refs/heads/{r}"))
            .or_else(|| peel(&format!("refs/tags/{r}")))
            .or_else(|| {
                let hex = (7..=40).contains(&r.len()) && r.bytes().all(|b| b.is_ascii_hexdigit());
                hex.then(|| mirror.revparse_single(r).ok()?.peel_to_commit().ok())
                    .flatten()
                    .map(|c| c.id())
            }),
    }
}

/// Write `commit`'s tree into the working directory of the repository at `git_dir`
/// (whose objects already hold it), leaving `HEAD` detached at `commit`: the baseline the
/// final checkout ([`finish`]) diffs against. `.gitmodules` goes first, then
/// `gitmodules_written` is called (with whether it was), so that the submodules' fetches
/// can start beside the rest of the tree. Runs on its own thread with its own handle.
pub(super) fn write_tree(
    git_dir: &Path,
    commit: Oid,
    gitmodules_written: impl FnOnce(bool),
) -> Result<Oid, git2::Error> {
    let mut told = Some(gitmodules_written);
    let result = (|| {
        let repo = Repository::open(git_dir)?;
        let c = repo.find_commit(commit)?;
        repo.set_head_detached(commit)?;
        repo.checkout_tree(
            c.as_object(),
            Some(CheckoutBuilder::new().force().path(".gitmodules")),
        )?;
        if let Some(tell) = told.take() {
            tell(true);
        }
        repo.checkout_tree(c.as_object(), Some(CheckoutBuilder::new().force()))?;
        Ok(commit)
    })();
    if let Some(tell) = told.take() {
        tell(false);
    }
    result
}

/// The final checkout of `commit` over a working directory that holds `from`'s tree
/// (`HEAD` still detached at `from`): files `from` has and `commit` has not are removed,
/// the others added or rewritten where they differ. `HEAD` is then detached at `commit`.
pub(super) fn finish(repo: &Repository, commit: &git2::Commit<'_>) -> Result<(), git2::Error> {
    repo.checkout_tree(commit.as_object(), Some(CheckoutBuilder::new().force()))?;
    repo.set_head_detached(commit.id())
}

/// Return the repository at `git_dir` with working directory `workdir` to what it was when
/// made: no files, no objects, no refs, an unborn `HEAD`. For a head start whose fetch
/// failed (the keys could not read the repository) or whose mirror was found damaged.
pub(super) fn wipe(git_dir: &Path, workdir: &Path) -> std::io::Result<()> {
    let git_name = git_dir.file_name();
    for entry in std::fs::read_dir(workdir)? {
        let entry = entry?;
        let path = entry.path();
        if path == git_dir || Some(entry.file_name().as_os_str()) == git_name {
            continue;
        }
        remove_any(&path)?;
    }
    let objects = git_dir.join("objects");
    for entry in std::fs::read_dir(&objects)? {
        let entry = entry?;
        let name = entry.file_name();
        // `info` and `pack` stay (as `git init` makes them), emptied.
        match name.to_str() {
            Some("info") => {}
            Some("pack") => {
                for p in std::fs::read_dir(entry.path())? {
                    remove_any(&p?.path())?;
                }
            }
            _ => remove_any(&entry.path())?,
        }
    }
    for file in ["index", "packed-refs", "ORIG_HEAD"] {
        match std::fs::remove_file(git_dir.join(file)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    let refs = git_dir.join("refs");
    for sub in ["heads", "tags", "remotes"] {
        let dir = refs.join(sub);
        if dir.exists() {
            std::fs::remove_dir_all(&dir)?;
            std::fs::create_dir(&dir)?;
        }
    }
    std::fs::write(git_dir.join("HEAD"), "ref: refs/heads/master\n")
}

fn remove_any(path: &Path) -> std::io::Result<()> {
    let meta = std::fs::symlink_metadata(path)?;
    if meta.is_dir() {
        std::fs::remove_dir_all(path)
    } else {
        std::fs::remove_file(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    // The checkout tests' git: isolated identity, `main` as the first branch.
    use crate::checkout::tests::git;

    /// The old tip, then a new one that deletes, adds, modifies, renames and turns a file
    /// into a directory: the final checkout over the head start equals a fresh checkout.
    #[test]
    fn a_head_start_then_the_final_commit_equals_a_fresh_checkout() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let src = tmp.path().join("src");
        std::fs::create_dir(&src).expect("mkdir");
        git(&src, &["init", "-q"]);
        std::fs::create_dir_all(src.join("d/e")).expect("mkdir");
        for (p, body) in [
            ("keep.txt", "keep\n"),
            ("gone.txt", "gone\n"),
            ("edit.txt", "old\n"),
            ("d/e/moved.txt", "moves\n"),
            ("becomes-dir", "a file first\n"),
        ] {
            std::fs::write(src.join(p), body).expect("write");
        }
        git(&src, &["add", "-A"]);
        git(&src, &["commit", "-q", "-m", "old"]);
        let old = Oid::from_str(&git(&src, &["rev-parse", "HEAD"])).expect("oid");
        std::fs::remove_file(src.join("gone.txt")).expect("rm");
        std::fs::write(src.join("edit.txt"), "new\n").expect("write");
        std::fs::write(src.join("added.txt"), "added\n").expect("write");
        std::fs::rename(src.join("d/e/moved.txt"), src.join("moved.txt")).expect("mv");
        std::fs::remove_file(src.join("becomes-dir")).expect("rm");
        std::fs::create_dir(src.join("becomes-dir")).expect("mkdir");
        std::fs::write(src.join("becomes-dir/inner.txt"), "inner\n").expect("write");
        git(&src, &["add", "-A"]);
        git(&src, &["commit", "-q", "-m", "new"]);
        let new = Oid::from_str(&git(&src, &["rev-parse", "HEAD"])).expect("oid");

        let mirror = Repository::open(&src).expect("open");
        assert_eq!(guess(&mirror, Some("main")), Some(new));
        assert_eq!(guess(&mirror, None), Some(new));
        assert_eq!(guess(&mirror, Some(&old.to_string()[..9])), Some(old));
        assert_eq!(guess(&mirror, Some("no-such-branch")), None);

        let dest = tmp.path().join("dest");
        let repo = Repository::init(&dest).expect("init");
        crate::mirror::copy_local(&src.join(".git"), &mirror, &repo).expect("copy");
        let mut told = None;
        assert_eq!(
            write_tree(repo.path(), old, |written| told = Some(written)).expect("head start"),
            old
        );
        assert_eq!(told, Some(true));
        assert!(dest.join("gone.txt").exists() && dest.join("d/e/moved.txt").exists());
        let commit = repo.find_commit(new).expect("commit");
        finish(&repo, &commit).expect("finish");

        let fresh = tmp.path().join("fresh");
        git(
            tmp.path(),
            &["clone", "-q", src.to_str().expect("utf-8"), "fresh"],
        );
        let listing = |dir: &Path| {
            let mut v: Vec<(String, Vec<u8>)> = walkdir(dir)
                .into_iter()
                .map(|p| {
                    let rel = p.strip_prefix(dir).expect("prefix").display().to_string();
                    (rel, std::fs::read(&p).expect("read"))
                })
                .collect();
            v.sort();
            v
        };
        assert_eq!(listing(&dest), listing(&fresh));
        assert_eq!(
            git(&dest, &["status", "--porcelain", "--untracked-files=all"]),
            ""
        );
        assert_eq!(git(&dest, &["rev-parse", "HEAD"]), new.to_string());
        assert!(!dest.join("d").exists(), "the emptied directory went too");

        wipe(repo.path(), &dest).expect("wipe");
        let left: Vec<_> = walkdir(&dest);
        assert!(left.is_empty(), "{left:?}");
        assert_eq!(
            std::fs::read_dir(dest.join(".git/objects/pack"))
                .expect("pack")
                .count(),
            0
        );
        assert!(!dest.join(".git/packed-refs").exists());
        let reopened = Repository::open(&dest).expect("reopen");
        assert!(reopened.head().is_err(), "HEAD is unborn again");
    }

    /// Regular files under `dir`, `.git` left out.
    fn walkdir(dir: &Path) -> Vec<std::path::PathBuf> {
        let mut out = Vec::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).expect("read_dir").flatten() {
                let p = e.path();
                if e.file_name() == ".git" {
                    continue;
                }
                if p.is_dir() {
                    stack.push(p);
                } else {
                    out.push(p);
                }
            }
        }
        out
    }
}

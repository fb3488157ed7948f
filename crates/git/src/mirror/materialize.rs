//! A job's repository made from a mirror: its objects hard-linked (copied across file
//! systems) and its refs written as the job's own remote-tracking branches and tags.

use super::{io_err, MirrorError};
use std::fmt::Write as _;
use std::path::Path;

pub(super) fn copy_into(
    mirror_dir: &Path,
    mirror: &git2::Repository,
    dest: &git2::Repository,
) -> Result<(), MirrorError> {
    let git_err = |context: &'static str| {
        move |source| MirrorError::Git {
            path: mirror_dir.to_path_buf(),
            context,
            source,
        }
    };
    let from = mirror_dir.join("objects");
    let to = dest.path().join("objects");
    // Packs (what fetches write), then any loose objects: all immutable once written, so a
    // link is as good as a copy and costs nothing. The job's copy goes into its container
    // by a tar stream, never by these inodes.
    link_dir(&from.join("pack"), &to.join("pack"), |n| {
        n.starts_with("pack-")
    })?;
    if let Ok(entries) = std::fs::read_dir(&from) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.len() == 2 && name.bytes().all(|b| b.is_ascii_hexdigit()) {
                link_dir(&e.path(), &to.join(&name), |n| {
                    n.len() == 38 && n.bytes().all(|b| b.is_ascii_hexdigit())
                })?;
            }
        }
    }

    // packed-refs in one write (a repository with thousands of tags would otherwise get a
    // file per tag), sorted, annotated tags with their peeled commit as git writes them.
    let mut refs: Vec<(String, git2::Oid, Option<git2::Oid>)> = Vec::new();
    for r in mirror.references().map_err(git_err("listing refs"))? {
        let r = r.map_err(git_err("reading a ref"))?;
        let (Ok(name), Some(oid)) = (r.name(), r.target()) else {
            continue;
        };
        let local = if let Some(b) = name.strip_prefix("refs/heads/") {
            format!("refs/remotes/origin/{b}")
        } else if name.starts_with("refs/tags/") {
            name.to_string()
        } else {
            continue;
        };
        let peeled = mirror.find_tag(oid).ok().map(|_| peel_tags(mirror, oid));
        refs.push((local, oid, peeled));
    }
    refs.sort_by(|a, b| a.0.cmp(&b.0));
    let mut text = String::from("# pack-refs with: peeled fully-peeled sorted \n");
    for (name, oid, peeled) in &refs {
        let _ = writeln!(text, "{oid} {name}");
        if let Some(p) = peeled {
            let _ = writeln!(text, "^{p}");
        }
    }
    let packed = dest.path().join("packed-refs");
    std::fs::write(&packed, text).map_err(io_err(&packed))
}

/// The first object under a chain of annotated tags.
fn peel_tags(repo: &git2::Repository, mut oid: git2::Oid) -> git2::Oid {
    for _ in 0..32 {
        match repo.find_tag(oid) {
            Ok(t) => oid = t.target_id(),
            Err(_) => break,
        }
    }
    oid
}

fn link_dir(from: &Path, to: &Path, wanted: impl Fn(&str) -> bool) -> Result<(), MirrorError> {
    let entries = match std::fs::read_dir(from) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err(from)(e)),
    };
    std::fs::create_dir_all(to).map_err(io_err(to))?;
    for e in entries.flatten() {
        let name = e.file_name();
        if !wanted(&name.to_string_lossy()) {
            continue;
        }
        let target = to.join(&name);
        if target.exists() {
            continue;
        }
        if std::fs::hard_link(e.path(), &target).is_err() {
            // Another file system (TMPDIR on tmpfs) or a link limit: copy (reflinked where
            // the file system can).
            std::fs::copy(e.path(), &target).map_err(io_err(&target))?;
        }
    }
    Ok(())
}

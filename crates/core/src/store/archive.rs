//! Renaming the entries of a tar archive on its way between a container and the store
//! (caches are re-rooted at `/`, workspace layers at the root they were persisted from and
//! attached under `at`).
//!
//! Entry names are re-rooted and only plain components kept. Hard links are renamed the same
//! way as the entries they point at — a hard link entry names an earlier entry of the same
//! archive, and a link whose target kept its old name would point at nothing after the
//! rename (the engine then refuses the whole archive with a 500). A link whose target was
//! left out (a workspace pattern that keeps `b` but not `a`) is stored as a copy of the
//! target's bytes. A link to an entry the archive does not hold is an error, never skipped.
//! Symbolic links are kept as they are: they resolve inside the container.

use super::StoreError;
use std::collections::HashMap;
use std::io::Write;
use std::path::{Component, Path, PathBuf};

fn archive_err(src: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: src.display().to_string(),
        source,
    }
}

/// Only the plain components of `p` (no root, `.`, `..`).
pub fn plain(p: &Path) -> PathBuf {
    p.components()
        .filter(|c| matches!(c, Component::Normal(_)))
        .collect()
}

/// Copy the entries of the tar at `src` into `out`, each named by `rename` (`None` leaves
/// it out; the result is reduced to its plain components, and an empty name is left out
/// too). Returns how many entries were written.
pub fn rewrite<W: Write>(
    out: &mut tar::Builder<W>,
    src: &Path,
    rename: impl Fn(&Path) -> Option<PathBuf>,
) -> Result<usize, StoreError> {
    let err = |e| archive_err(src)(e);
    let file = std::fs::File::open(src).map_err(err)?;
    let mut archive = tar::Archive::new(file);
    // Plain original name → name written, for hard links to come.
    let mut written: HashMap<PathBuf, PathBuf> = HashMap::new();
    let mut count = 0;
    for entry in archive.entries().map_err(err)? {
        let mut entry = entry.map_err(err)?;
        let name = entry.path().map_err(err)?.into_owned();
        let Some(dest) = rename(&name).map(|d| plain(&d)) else {
            continue;
        };
        if dest.as_os_str().is_empty() {
            continue;
        }
        let mut header = entry.header().clone();
        let kind = header.entry_type();
        if kind.is_hard_link() {
            let target = plain(&entry.link_name().map_err(err)?.unwrap_or_default());
            match written.get(&target) {
                Some(new_target) => {
                    out.append_link(&mut header, &dest, new_target)
                        .map_err(err)?;
                }
                None => copy_of(out, src, &target, &dest, &name)?,
            }
        } else if kind.is_symlink() {
            let target = entry
                .link_name()
                .map_err(err)?
                .map(|t| t.into_owned())
                .unwrap_or_default();
            out.append_link(&mut header, &dest, target).map_err(err)?;
        } else {
            out.append_data(&mut header, &dest, &mut entry)
                .map_err(err)?;
        }
        written.insert(plain(&name), dest);
        count += 1;
    }
    Ok(count)
}

/// Append, as `dest`, a regular file holding the bytes of the entry `target` of the tar at
/// `src` (a hard link whose target was left out).
fn copy_of<W: Write>(
    out: &mut tar::Builder<W>,
    src: &Path,
    target: &Path,
    dest: &Path,
    link_name: &Path,
) -> Result<(), StoreError> {
    let err = |e| archive_err(src)(e);
    let file = std::fs::File::open(src).map_err(err)?;
    let mut archive = tar::Archive::new(file);
    for entry in archive.entries().map_err(err)? {
        let mut entry = entry.map_err(err)?;
        let kind = entry.header().entry_type();
        if kind.is_file() && plain(&entry.path().map_err(err)?) == target {
            let mut header = entry.header().clone();
            return out.append_data(&mut header, dest, &mut entry).map_err(err);
        }
    }
    Err(StoreError::DanglingHardLink {
        name: link_name.display().to_string(),
        target: target.display().to_string(),
    })
}

/// Re-root a tar downloaded from the container for a cache or a workspace layer: without
/// `patterns`, names are joined under `parent` (a cache: the archive of `/a/b/deps` names
/// its entries `deps/…`, stored as `a/b/deps/…`); with them, names lose their first
/// component (the root's base name) and only entries under a matching pattern are kept.
pub fn reroot<W: Write>(
    out: &mut tar::Builder<W>,
    src: &Path,
    parent: &Path,
    patterns: Option<&[glob::Pattern]>,
) -> Result<usize, StoreError> {
    rewrite(out, src, |name| match patterns {
        None => Some(parent.join(name)),
        Some(pats) => {
            let rel: PathBuf = name.components().skip(1).collect();
            if rel.as_os_str().is_empty() {
                return None;
            }
            let keep = rel
                .ancestors()
                .filter(|a| !a.as_os_str().is_empty())
                .any(|a| {
                    let s = a.to_string_lossy();
                    pats.iter().any(|p| p.matches(&s))
                });
            keep.then_some(rel)
        }
    })
}

/// A stored blob's entries moved under `prefix` (relative to `/`; empty: as they are), for
/// extraction at `/` in the container.
pub fn under_prefix<W: Write>(
    out: &mut tar::Builder<W>,
    blob: &Path,
    prefix: &str,
) -> Result<usize, StoreError> {
    let prefix = Path::new(prefix.trim_matches('/'));
    rewrite(out, blob, |name| Some(prefix.join(name)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    /// `deps/`, `deps/a` ("content"), `deps/b` hard link to `deps/a`, `deps/s` symlink to `a`,
    /// as the engine's archive of `/home/circleci/deps` names them.
    fn archive_with_hard_link(dir: &Path) -> PathBuf {
        let path = dir.join("in.tar");
        let mut b = tar::Builder::new(std::fs::File::create(&path).expect("create"));
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(0o755);
        h.set_size(0);
        b.append_data(&mut h, "deps/", std::io::empty())
            .expect("dir");
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o644);
        h.set_size(7);
        b.append_data(&mut h, "deps/a", &b"content"[..])
            .expect("file");
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Link);
        h.set_size(0);
        b.append_link(&mut h, "deps/b", "deps/a").expect("link");
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        b.append_link(&mut h, "deps/s", "a").expect("symlink");
        b.finish().expect("finish");
        path
    }

    fn entries(tar_bytes: &[u8]) -> Vec<(String, String, String)> {
        let mut a = tar::Archive::new(tar_bytes);
        a.entries()
            .expect("entries")
            .map(|e| {
                let mut e = e.expect("entry");
                let name = e.path().expect("path").display().to_string();
                let link = e
                    .link_name()
                    .expect("link")
                    .map(|l| l.display().to_string())
                    .unwrap_or_default();
                let mut data = String::new();
                e.read_to_string(&mut data).expect("read");
                (name, link, data)
            })
            .collect()
    }

    #[test]
    fn hard_links_are_rerooted_with_their_targets() {
        let dir = tempfile::tempdir().expect("tempdir");
        let src = archive_with_hard_link(dir.path());
        let mut out = tar::Builder::new(Vec::new());
        let n = reroot(&mut out, &src, Path::new("/home/circleci"), None).expect("reroot");
        assert_eq!(n, 4);
        let got = entries(&out.into_inner().expect("tar"));
        assert!(got.contains(&(
            "home/circleci/deps/b".into(),
            "home/circleci/deps/a".into(),
            String::new()
        )));
        // A symbolic link keeps its target: it resolves inside the container.
        assert!(got.contains(&("home/circleci/deps/s".into(), "a".into(), String::new())));
        // And again under an attach prefix.
        let blob = dir.path().join("blob.tar");
        let mut out = tar::Builder::new(std::fs::File::create(&blob).expect("blob"));
        reroot(&mut out, &src, Path::new("/home/circleci"), None).expect("reroot");
        out.finish().expect("finish");
        let mut out = tar::Builder::new(Vec::new());
        under_prefix(&mut out, &blob, "/mnt/ws").expect("prefix");
        let got = entries(&out.into_inner().expect("tar"));
        assert!(got.contains(&(
            "mnt/ws/home/circleci/deps/b".into(),
            "mnt/ws/home/circleci/deps/a".into(),
            String::new()
        )));
    }

    #[test]
    fn a_hard_link_whose_target_was_left_out_becomes_a_copy() {
        let dir = tempfile::tempdir().expect("tempdir");
        let src = archive_with_hard_link(dir.path());
        let pats = [glob::Pattern::new("b").expect("pattern")];
        let mut out = tar::Builder::new(Vec::new());
        let n = reroot(&mut out, &src, Path::new(""), Some(&pats)).expect("reroot");
        assert_eq!(n, 1);
        let got = entries(&out.into_inner().expect("tar"));
        assert_eq!(got, [("b".into(), String::new(), "content".into())]);
    }

    #[test]
    fn a_hard_link_to_nothing_is_an_error_not_a_skip() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("bad.tar");
        let mut b = tar::Builder::new(std::fs::File::create(&path).expect("create"));
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Link);
        h.set_size(0);
        b.append_link(&mut h, "x/b", "x/missing").expect("link");
        b.finish().expect("finish");
        let mut out = tar::Builder::new(Vec::new());
        let e = reroot(&mut out, &path, Path::new("/r"), None).expect_err("dangling");
        assert!(e.to_string().contains("x/missing"), "{e}");
    }
}

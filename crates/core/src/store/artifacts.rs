//! `store_artifacts`: files from a container's tar archive written to the job's artifact
//! directory on the agent's host.
//!
//! The host is the agent's, so nothing a job names may land outside that directory: the
//! `destination` and every entry name keep only their plain components (no `/`, `.`, `..`),
//! every directory created is checked to lie under the job's artifact directory once
//! resolved, and files are opened without following a symbolic link. Hard links are stored
//! as copies of their target; what cannot be stored as a file (symbolic links, devices) is
//! named in the report, never dropped silently.

use super::archive::plain;
use super::{LocalStore, StoreError};
use std::collections::HashMap;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// What `store_artifacts` did.
#[derive(Debug)]
pub struct StoredArtifacts {
    pub files: usize,
    /// The destination as used (plain components only), relative to the job's directory.
    pub dest_rel: String,
    /// Its path on the host.
    pub dest: PathBuf,
    /// Entries not stored, each with the reason (`out/link (symbolic link)`).
    pub skipped: Vec<String>,
    /// Each file stored: its path relative to the job's artifacts (`/`-separated), and where
    /// it is on the host.
    pub written: Vec<(String, PathBuf)>,
}

impl LocalStore {
    /// Store the files of the tar at `tar` (the container's archive of a path whose base name
    /// is `base`) as artifacts of `job_id`, under `destination` (default: `base`).
    pub fn store_artifacts(
        &self,
        job_id: &str,
        tar: &Path,
        base: &str,
        destination: Option<&str>,
    ) -> Result<StoredArtifacts, StoreError> {
        let job_dir = self.artifacts_dir(job_id);
        std::fs::create_dir_all(&job_dir).map_err(super::io(&job_dir))?;
        let job_dir = job_dir.canonicalize().map_err(super::io(&job_dir))?;
        let mut dest_rel = destination.map(|d| plain(Path::new(d))).unwrap_or_default();
        if dest_rel.as_os_str().is_empty() {
            dest_rel = plain(Path::new(base));
        }
        let dest = job_dir.join(&dest_rel);
        let err = |e| super::io(tar)(e);
        let mut archive = tar::Archive::new(std::fs::File::open(tar).map_err(err)?);
        let mut written: HashMap<PathBuf, PathBuf> = HashMap::new();
        let mut report = StoredArtifacts {
            files: 0,
            dest_rel: dest_rel.display().to_string(),
            dest: dest.clone(),
            skipped: Vec::new(),
            written: Vec::new(),
        };
        for entry in archive.entries().map_err(err)? {
            let mut entry = entry.map_err(err)?;
            let kind = entry.header().entry_type();
            let name = entry.path().map_err(err)?.into_owned();
            if kind.is_dir() {
                continue;
            }
            // The first component is the path's base name, which `destination` replaces.
            let rel = plain(&name.components().skip(1).collect::<PathBuf>());
            let target = if rel.as_os_str().is_empty() {
                dest.clone()
            } else {
                dest.join(&rel)
            };
            if kind.is_file() {
                let mut out = create_under(&job_dir, &target, &report.dest_rel)?;
                std::io::copy(&mut entry, &mut out).map_err(super::io(&target))?;
            } else if kind.is_hard_link() {
                let linked = plain(&entry.link_name().map_err(err)?.unwrap_or_default());
                let Some(source) = written.get(&linked) else {
                    return Err(StoreError::DanglingHardLink {
                        name: name.display().to_string(),
                        target: linked.display().to_string(),
                    });
                };
                let mut from = std::fs::File::open(source).map_err(super::io(source))?;
                let mut out = create_under(&job_dir, &target, &report.dest_rel)?;
                std::io::copy(&mut from, &mut out).map_err(super::io(&target))?;
            } else {
                let what = if kind.is_symlink() {
                    "symbolic link"
                } else {
                    "not a regular file"
                };
                report.skipped.push(format!("{} ({what})", name.display()));
                continue;
            }
            if let Ok(rel) = target.strip_prefix(&job_dir) {
                let rel: Vec<String> = rel
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy().into_owned())
                    .collect();
                report.written.push((rel.join("/"), target.clone()));
            }
            written.insert(plain(&name), target);
            report.files += 1;
        }
        Ok(report)
    }
}

/// Create (or truncate) `target`, which must lie under `job_dir` once its directories are
/// resolved, without following a symbolic link at its last component.
fn create_under(
    job_dir: &Path,
    target: &Path,
    destination: &str,
) -> Result<std::fs::File, StoreError> {
    let escape = || StoreError::Escape {
        destination: destination.to_owned(),
    };
    let parent = target.parent().ok_or_else(escape)?;
    std::fs::create_dir_all(parent).map_err(super::io(parent))?;
    let resolved = parent.canonicalize().map_err(super::io(parent))?;
    if !resolved.starts_with(job_dir) {
        return Err(escape());
    }
    if target.is_dir() {
        let _ = std::fs::remove_dir(target);
    }
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(target)
        .map_err(super::io(target))
}

#[cfg(test)]
mod tests {
    use super::super::ProjectScope;
    use super::*;

    fn tar_of(dir: &Path, entries: &[(&str, &[u8])]) -> PathBuf {
        let path = dir.join("art.tar");
        let mut b = tar::Builder::new(std::fs::File::create(&path).expect("create"));
        for (name, data) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_mode(0o644);
            h.set_size(data.len() as u64);
            b.append_data(&mut h, name, *data).expect("append");
        }
        b.finish().expect("finish");
        path
    }

    #[test]
    fn a_destination_climbing_out_stays_in_the_jobs_directory() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store =
            LocalStore::open(dir.path().join("store"), ProjectScope::new("p")).expect("open");
        let tar = tar_of(dir.path(), &[("out/x.txt", b"x")]);
        let r = store
            .store_artifacts("job", &tar, "out", Some("../../../../../../escaped"))
            .expect("store");
        assert_eq!(r.files, 1);
        assert_eq!(r.dest_rel, "escaped");
        let job_dir = store.artifacts_dir("job").canonicalize().expect("dir");
        assert!(job_dir.join("escaped/x.txt").is_file());
        assert!(!dir.path().join("escaped").exists());
    }

    #[test]
    fn a_symlinked_directory_in_the_way_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store =
            LocalStore::open(dir.path().join("store"), ProjectScope::new("p")).expect("open");
        let outside = dir.path().join("outside");
        std::fs::create_dir_all(&outside).expect("mkdir");
        let job_dir = store.artifacts_dir("job");
        std::fs::create_dir_all(&job_dir).expect("mkdir");
        std::os::unix::fs::symlink(&outside, job_dir.join("reports")).expect("symlink");
        let tar = tar_of(dir.path(), &[("out/x.txt", b"x")]);
        let e = store
            .store_artifacts("job", &tar, "out", Some("reports"))
            .expect_err("escape");
        assert!(matches!(e, StoreError::Escape { .. }), "{e}");
        assert!(!outside.join("x.txt").exists());
    }
}

//! A cache or a workspace layer written straight into the job's mounted working directory
//! (`work_tree`) on the host, instead of through the engine's archive API, which takes about
//! twice as long for many small files and four times for large ones (benches/restore.rs;
//! the figures in docs/benchmarks.md).
//!
//! The agent is root on the host, and the job owns that directory: it may have planted
//! symbolic links (`ln -s /etc x`) or hard links anywhere in it, and a background step may
//! swap a directory for a link while this runs. So:
//! - every directory is opened from the mounted directory's own descriptor with `openat2`,
//!   `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_XDEV`: no link is followed, nothing
//!   outside is reached; the file operations that follow are relative to that descriptor
//!   (a directory moved meanwhile is still one inside the mounted directory: the container
//!   cannot move anything across its mounts);
//! - what is in the way is unlinked, never written through, and files are created with
//!   `O_CREAT | O_EXCL | O_NOFOLLOW`: a link planted between the two makes the creation fail;
//!   an existing directory in the way of a file is left alone (the archive API takes over);
//! - a hard link entry may only name a file this extraction created;
//! - everything is owned by the job's user (the banner's uid and gid), with the permission
//!   bits of the archive but no set-user-ID, set-group-ID or sticky bit;
//! - no entry may have a component named as the read-only shared objects' directory
//!   ([`SHARED_OBJECTS`](super::work_tree::SHARED_OBJECTS)): in the container it is a mount
//!   point, which cannot be renamed or removed, so whatever the job renamed around it, its
//!   name is still that; on the host it holds hard links to the mirror's packs.
//!
//! Anything else — an entry outside the working directory (`~/.npm`), a device, a link in
//! the way of a directory the archive does not create itself, a failure part-way — is
//! refused, and the caller hands the whole blob to the archive API instead, which does what
//! it always did (over what was written here: the same entries again).

use crate::store::archive::plain;
use nix::errno::Errno;
use nix::fcntl::{openat2, AtFlags, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{fchmod, fstatat, futimens, mkdirat, Mode, SFlag};
use nix::sys::time::TimeSpec;
use nix::unistd::{fchown, fchownat, linkat, symlinkat, unlinkat, Gid, Uid, UnlinkatFlags};
use std::collections::HashSet;
use std::ffi::OsStr;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

/// Why a blob was not written in place (the archive API does it).
#[derive(Debug, thiserror::Error)]
pub enum InPlaceError {
    /// Not for this path: nothing was written.
    #[error("{0}")]
    NotHere(String),
    /// Stopped part-way.
    #[error("{path}: {what}: {errno}")]
    Failed {
        path: String,
        what: &'static str,
        errno: Errno,
    },
    #[error("the blob: {0}")]
    Blob(#[from] std::io::Error),
}

/// The job's mounted working directory: `host` on this host is `workdir` in the container.
#[derive(Clone, Debug)]
pub struct Mounted {
    pub host: PathBuf,
    pub workdir: String,
    pub uid: u32,
    pub gid: u32,
}

/// The name of the shared objects' directory (the last component of `SHARED_OBJECTS`).
fn shared_name() -> &'static OsStr {
    Path::new(super::work_tree::SHARED_OBJECTS)
        .file_name()
        .unwrap_or_else(|| OsStr::new("bosun-shared-objects"))
}

/// Where an entry named `name` of a blob extracted at `prefix` (a container path) goes,
/// relative to the mounted directory; `None` if outside it or through the shared objects.
fn host_rel(m: &Mounted, prefix: &str, name: &Path) -> Option<PathBuf> {
    let full = plain(&Path::new(prefix.trim_start_matches('/')).join(name));
    let rel = full
        .strip_prefix(plain(Path::new(&m.workdir)))
        .ok()?
        .to_path_buf();
    if rel.components().any(|c| c.as_os_str() == shared_name()) {
        return None;
    }
    Some(rel)
}

fn failed<'a>(rel: &'a Path, what: &'static str) -> impl FnOnce(Errno) -> InPlaceError + 'a {
    move |errno| InPlaceError::Failed {
        path: rel.display().to_string(),
        what,
        errno,
    }
}

/// Whether every entry of the blob can go in place: inside the working directory (its
/// top itself only as a directory, which is left as it is), and only directories, regular
/// files, symbolic links and hard links.
fn check(m: &Mounted, blob: &Path, prefix: &str) -> Result<(), InPlaceError> {
    if plain(Path::new(&m.workdir)).as_os_str().is_empty() {
        return Err(InPlaceError::NotHere(
            "the working directory is /".to_owned(),
        ));
    }
    let mut a = tar::Archive::new(std::fs::File::open(blob)?);
    for entry in a.entries_with_seek()? {
        let entry = entry?;
        let name = entry.path()?;
        let kind = entry.header().entry_type();
        let Some(rel) = host_rel(m, prefix, &name) else {
            return Err(InPlaceError::NotHere(format!(
                "{} is not inside the working directory",
                name.display()
            )));
        };
        let ok = match kind {
            tar::EntryType::Directory => true,
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::Symlink => {
                !rel.as_os_str().is_empty()
            }
            tar::EntryType::Link => {
                let target = entry.link_name()?.unwrap_or_default();
                !rel.as_os_str().is_empty()
                    && host_rel(m, prefix, &target).is_some_and(|t| !t.as_os_str().is_empty())
            }
            _ => false,
        };
        if !ok {
            return Err(InPlaceError::NotHere(format!(
                "{}: a {kind:?} entry",
                name.display()
            )));
        }
    }
    Ok(())
}

/// How every directory is opened: beneath the mounted directory, no link followed.
fn dir_how() -> OpenHow {
    OpenHow::new()
        .flags(OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC)
        .resolve(
            ResolveFlag::RESOLVE_BENEATH
                | ResolveFlag::RESOLVE_NO_SYMLINKS
                | ResolveFlag::RESOLVE_NO_XDEV,
        )
}

struct Writer<'a> {
    m: &'a Mounted,
    root: OwnedFd,
    /// The directory entries were last written into: entries come grouped by directory.
    last: Option<(PathBuf, OwnedFd)>,
    /// (device, inode) of each file written: the only ones a hard link may name.
    created: HashSet<(u64, u64)>,
    /// A small file's bytes on their way.
    buf: Vec<u8>,
}

/// Files up to this size are read and written; larger ones copied in the kernel.
const SMALL: u64 = 256 * 1024;

impl Writer<'_> {
    fn owner(&self) -> (Option<Uid>, Option<Gid>) {
        (
            Some(Uid::from_raw(self.m.uid)),
            Some(Gid::from_raw(self.m.gid)),
        )
    }

    /// The directory `rel` (relative to the mounted one), made with its missing parents.
    fn dir(&mut self, rel: &Path) -> Result<OwnedFd, InPlaceError> {
        if let Some((p, fd)) = &self.last {
            if p == rel {
                return fd.try_clone().map_err(InPlaceError::Blob);
            }
        }
        let path = if rel.as_os_str().is_empty() {
            Path::new(".")
        } else {
            rel
        };
        let fd = match openat2(self.root.as_fd(), path, dir_how()) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) => {
                // One component at a time, each made if missing (0755, the job's user).
                let mut fd = self.root.try_clone().map_err(InPlaceError::Blob)?;
                for c in rel.components() {
                    let name = c.as_os_str();
                    let next = match openat2(fd.as_fd(), name, dir_how()) {
                        Err(Errno::ENOENT) => {
                            match mkdirat(fd.as_fd(), name, Mode::from_bits_truncate(0o700)) {
                                Ok(()) | Err(Errno::EEXIST) => {}
                                Err(e) => return Err(failed(rel, "mkdir")(e)),
                            }
                            let made = openat2(fd.as_fd(), name, dir_how())
                                .map_err(failed(rel, "open"))?;
                            let (u, g) = self.owner();
                            fchown(made.as_fd(), u, g).map_err(failed(rel, "chown"))?;
                            fchmod(made.as_fd(), Mode::from_bits_truncate(0o755))
                                .map_err(failed(rel, "chmod"))?;
                            made
                        }
                        r => r.map_err(failed(rel, "open"))?,
                    };
                    fd = next;
                }
                fd
            }
            Err(e) => return Err(failed(rel, "open")(e)),
        };
        self.last = Some((
            rel.to_path_buf(),
            fd.try_clone().map_err(InPlaceError::Blob)?,
        ));
        Ok(fd)
    }

    /// Make way for a new entry `name` in `dir`: what is there goes unless it is a directory
    /// (`Ok(true)`: a directory is there).
    fn clear(&self, dir: &OwnedFd, name: &OsStr, rel: &Path) -> Result<bool, InPlaceError> {
        match fstatat(dir.as_fd(), name, AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(st) if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR => {
                Ok(true)
            }
            Ok(_) => match unlinkat(dir.as_fd(), name, UnlinkatFlags::NoRemoveDir) {
                Ok(()) | Err(Errno::ENOENT) => Ok(false),
                Err(e) => Err(failed(rel, "unlink")(e)),
            },
            Err(Errno::ENOENT) => Ok(false),
            Err(e) => Err(failed(rel, "stat")(e)),
        }
    }

    fn entry<R: std::io::Read>(
        &mut self,
        rel: &Path,
        entry: &mut tar::Entry<'_, R>,
        prefix: &str,
        blob: &std::fs::File,
    ) -> Result<(), InPlaceError> {
        let kind = entry.header().entry_type();
        // Permission bits only: no set-user-ID, set-group-ID or sticky bit.
        let mode = Mode::from_bits_truncate((entry.header().mode()? & 0o777) as libc::mode_t);
        let mtime = entry.header().mtime().unwrap_or(0) as i64;
        let (u, g) = self.owner();
        let Some(name) = rel.file_name() else {
            // The working directory itself: it stays as it is.
            return Ok(());
        };
        let parent = rel.parent().unwrap_or(Path::new(""));
        let dir = self.dir(parent)?;
        match kind {
            tar::EntryType::Directory => {
                if !self.clear(&dir, name, rel)? {
                    match mkdirat(dir.as_fd(), name, Mode::from_bits_truncate(0o700)) {
                        Ok(()) | Err(Errno::EEXIST) => {}
                        Err(e) => return Err(failed(rel, "mkdir")(e)),
                    }
                }
                let fd = openat2(dir.as_fd(), name, dir_how()).map_err(failed(rel, "open"))?;
                fchown(fd.as_fd(), u, g).map_err(failed(rel, "chown"))?;
                fchmod(fd.as_fd(), mode).map_err(failed(rel, "chmod"))?;
                self.last = Some((rel.to_path_buf(), fd));
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                if self.clear(&dir, name, rel)? {
                    return Err(failed(rel, "replace a directory by a file")(Errno::EISDIR));
                }
                let how = OpenHow::new()
                    .flags(
                        OFlag::O_WRONLY
                            | OFlag::O_CREAT
                            | OFlag::O_EXCL
                            | OFlag::O_NOFOLLOW
                            | OFlag::O_CLOEXEC,
                    )
                    .mode(Mode::from_bits_truncate(0o600))
                    .resolve(
                        ResolveFlag::RESOLVE_BENEATH
                            | ResolveFlag::RESOLVE_NO_SYMLINKS
                            | ResolveFlag::RESOLVE_NO_XDEV,
                    );
                let fd = openat2(dir.as_fd(), name, how).map_err(failed(rel, "create"))?;
                let file = std::fs::File::from(fd);
                let len = entry.size();
                if len <= SMALL {
                    // Read and written: cheaper than setting up a copy in the kernel.
                    self.buf.clear();
                    std::io::Read::read_to_end(
                        &mut std::io::Read::take(&mut *entry, len),
                        &mut self.buf,
                    )?;
                    if self.buf.len() as u64 != len {
                        return Err(failed(rel, "copy: the blob ends early")(Errno::EIO));
                    }
                    std::io::Write::write_all(&mut &file, &self.buf)?;
                } else {
                    // Straight from the blob's file: std copies a file's range with
                    // `copy_file_range`, in the kernel.
                    use std::io::{Read, Seek};
                    let mut from = blob;
                    from.seek(std::io::SeekFrom::Start(entry.raw_file_position()))?;
                    if std::io::copy(&mut from.take(len), &mut &file)? != len {
                        return Err(failed(rel, "copy: the blob ends early")(Errno::EIO));
                    }
                }
                fchown(file.as_fd(), u, g).map_err(failed(rel, "chown"))?;
                fchmod(file.as_fd(), mode).map_err(failed(rel, "chmod"))?;
                let t = TimeSpec::new(mtime, 0);
                futimens(file.as_fd(), &t, &t).map_err(failed(rel, "utimes"))?;
                let st = file.metadata()?;
                use std::os::unix::fs::MetadataExt;
                self.created.insert((st.dev(), st.ino()));
            }
            tar::EntryType::Symlink => {
                if self.clear(&dir, name, rel)? {
                    return Err(failed(rel, "replace a directory by a link")(Errno::EISDIR));
                }
                let target = entry.link_name()?.unwrap_or_default().into_owned();
                symlinkat(target.as_path(), dir.as_fd(), name).map_err(failed(rel, "symlink"))?;
                fchownat(dir.as_fd(), name, u, g, AtFlags::AT_SYMLINK_NOFOLLOW)
                    .map_err(failed(rel, "chown"))?;
            }
            tar::EntryType::Link => {
                let target = entry.link_name()?.unwrap_or_default().into_owned();
                let t_rel = host_rel(self.m, prefix, &target)
                    .filter(|t| t.file_name().is_some())
                    .ok_or_else(|| InPlaceError::NotHere(format!("{}", target.display())))?;
                let t_dir = self.dir(t_rel.parent().unwrap_or(Path::new("")))?;
                let t_name = t_rel.file_name().unwrap_or_default();
                let ours = |d: &OwnedFd, n: &OsStr| {
                    fstatat(d.as_fd(), n, AtFlags::AT_SYMLINK_NOFOLLOW)
                        .ok()
                        .filter(|st| {
                            SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFREG
                        })
                        .is_some_and(|st| self.created.contains(&(st.st_dev, st.st_ino)))
                };
                if !ours(&t_dir, t_name) {
                    return Err(failed(rel, "link to a file not written here")(Errno::EPERM));
                }
                if self.clear(&dir, name, rel)? {
                    return Err(failed(rel, "replace a directory by a link")(Errno::EISDIR));
                }
                linkat(t_dir.as_fd(), t_name, dir.as_fd(), name, AtFlags::empty())
                    .map_err(failed(rel, "link"))?;
                // The target may have been swapped between the check and the link.
                if !ours(&dir, name) {
                    let _ = unlinkat(dir.as_fd(), name, UnlinkatFlags::NoRemoveDir);
                    return Err(failed(rel, "link to a file not written here")(Errno::EPERM));
                }
            }
            _ => return Err(failed(rel, "an entry of this kind")(Errno::EINVAL)),
        }
        Ok(())
    }
}

/// Extract the stored blob at `blob`, its entries named under `prefix` (a container path, as
/// `upload_blob` would extract them at `/`), into the mounted directory. How many entries.
pub fn extract(m: &Mounted, blob: &Path, prefix: &str) -> Result<usize, InPlaceError> {
    check(m, blob, prefix)?;
    use std::os::unix::fs::OpenOptionsExt;
    let root = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW)
        .open(&m.host)?;
    let mut w = Writer {
        m,
        root: root.into(),
        last: None,
        created: HashSet::new(),
        buf: Vec::new(),
    };
    let data = std::fs::File::open(blob)?;
    // Headers only: each file's bytes are copied from `data` at their offset.
    let mut a = tar::Archive::new(std::io::BufReader::new(std::fs::File::open(blob)?));
    let mut n = 0;
    for entry in a.entries_with_seek()? {
        let mut entry = entry?;
        let name = entry.path()?.into_owned();
        let rel = host_rel(m, prefix, &name)
            .ok_or_else(|| InPlaceError::NotHere(name.display().to_string()))?;
        w.entry(&rel, &mut entry, prefix, &data)?;
        n += 1;
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    struct Blob(tar::Builder<Vec<u8>>);

    impl Blob {
        fn new() -> Self {
            Blob(tar::Builder::new(Vec::new()))
        }
        fn add(
            mut self,
            kind: tar::EntryType,
            name: &str,
            mode: u32,
            data: &[u8],
            link: &str,
        ) -> Self {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(kind);
            h.set_mode(mode);
            h.set_size(data.len() as u64);
            h.set_uid(0);
            h.set_gid(0);
            if link.is_empty() {
                self.0.append_data(&mut h, name, data).expect("append");
            } else {
                self.0.append_link(&mut h, name, link).expect("link");
            }
            self
        }
        fn dir(self, name: &str) -> Self {
            self.add(tar::EntryType::Directory, name, 0o755, b"", "")
        }
        fn file(self, name: &str, data: &str) -> Self {
            self.add(tar::EntryType::Regular, name, 0o644, data.as_bytes(), "")
        }
        fn write(self, dir: &Path) -> PathBuf {
            let path = dir.join("blob.tar");
            std::fs::write(&path, self.0.into_inner().expect("finish")).expect("write");
            path
        }
    }

    /// `None` (the test is skipped) unless root: the agent writes in place only when it may
    /// give files to the job's user.
    fn setup() -> Option<(tempfile::TempDir, Mounted, PathBuf)> {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: not root");
            return None;
        }
        let t = tempfile::tempdir().expect("tempdir");
        let host = t.path().join("work");
        std::fs::create_dir(&host).expect("mkdir");
        let victim = t.path().join("victim");
        std::fs::create_dir(&victim).expect("mkdir");
        std::fs::write(victim.join("f"), "untouched").expect("write");
        let m = Mounted {
            host,
            workdir: "/home/circleci/project".to_owned(),
            uid: 3434,
            gid: 3435,
        };
        Some((t, m, victim))
    }

    fn untouched(victim: &Path) {
        let names: Vec<_> = std::fs::read_dir(victim)
            .expect("read")
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(names, vec![OsStr::new("f").to_owned()]);
        assert_eq!(
            std::fs::read_to_string(victim.join("f")).expect("read"),
            "untouched"
        );
    }

    #[test]
    fn a_cache_goes_in_owned_by_the_job_without_special_bits() {
        let Some((t, m, _)) = setup() else { return };
        let blob = Blob::new()
            .dir("home/circleci/project/nm")
            .add(
                tar::EntryType::Regular,
                "home/circleci/project/nm/suid",
                0o4755,
                b"x",
                "",
            )
            .file("home/circleci/project/nm/deep/a", "content")
            .add(
                tar::EntryType::Link,
                "home/circleci/project/nm/b",
                0o644,
                b"",
                "home/circleci/project/nm/deep/a",
            )
            .add(
                tar::EntryType::Symlink,
                "home/circleci/project/nm/s",
                0o777,
                b"",
                "/etc/passwd",
            )
            .write(t.path());
        assert_eq!(extract(&m, &blob, "").expect("extract"), 5);
        let nm = m.host.join("nm");
        assert_eq!(std::fs::read_to_string(nm.join("b")).expect("b"), "content");
        assert_eq!(std::fs::metadata(nm.join("b")).expect("b").nlink(), 2);
        assert_eq!(
            std::fs::read_link(nm.join("s")).expect("s"),
            Path::new("/etc/passwd")
        );
        let suid = std::fs::metadata(nm.join("suid")).expect("suid");
        assert_eq!(suid.permissions().mode() & 0o7777, 0o755);
        for p in ["nm", "nm/suid", "nm/deep", "nm/deep/a", "nm/s"] {
            let md = std::fs::symlink_metadata(m.host.join(p)).expect(p);
            assert_eq!((md.uid(), md.gid()), (3434, 3435), "{p}");
        }
    }

    #[test]
    fn a_planted_link_is_replaced_or_refused_never_followed() {
        let Some((t, m, victim)) = setup() else {
            return;
        };
        // A link in place of a directory the archive makes, of a file it writes, and of a
        // directory it only passes through.
        std::os::unix::fs::symlink(&victim, m.host.join("nm")).expect("ln");
        std::fs::create_dir(m.host.join("d")).expect("mkdir");
        std::os::unix::fs::symlink(victim.join("f"), m.host.join("d/f")).expect("ln");
        std::os::unix::fs::symlink(&victim, m.host.join("ws")).expect("ln");
        let blob = Blob::new()
            .dir("home/circleci/project/nm")
            .file("home/circleci/project/nm/f", "cache")
            .file("home/circleci/project/d/f", "cache")
            .write(t.path());
        extract(&m, &blob, "").expect("extract");
        assert!(m.host.join("nm").is_dir() && !m.host.join("nm").is_symlink());
        assert_eq!(
            std::fs::read_to_string(m.host.join("d/f")).expect("f"),
            "cache"
        );
        let layer = Blob::new().file("out/f", "layer").write(t.path());
        let e = extract(&m, &layer, "/home/circleci/project/ws").expect_err("through a link");
        assert!(
            matches!(
                e,
                InPlaceError::Failed {
                    errno: Errno::ELOOP,
                    ..
                }
            ),
            "{e}"
        );
        untouched(&victim);
    }

    #[test]
    fn outside_the_working_directory_the_shared_objects_and_foreign_links_are_refused() {
        let Some((t, m, _)) = setup() else { return };
        for blob in [
            Blob::new().file("home/circleci/.npm/x", "x"),
            Blob::new().file(
                "home/circleci/project/.git/bosun-shared-objects/pack/p",
                "x",
            ),
            Blob::new().file("home/circleci/project/g2/bosun-shared-objects/p", "x"),
            Blob::new().add(
                tar::EntryType::Char,
                "home/circleci/project/dev",
                0o666,
                b"",
                "",
            ),
        ] {
            let blob = blob.write(t.path());
            let e = extract(&m, &blob, "").expect_err("refused");
            assert!(matches!(e, InPlaceError::NotHere(_)), "{e}");
        }
        assert_eq!(std::fs::read_dir(&m.host).expect("read").count(), 0);
        // A hard link to a file the job has (not one this extraction wrote).
        std::fs::write(m.host.join("mine"), "job's").expect("write");
        let blob = Blob::new()
            .add(
                tar::EntryType::Link,
                "home/circleci/project/l",
                0o644,
                b"",
                "home/circleci/project/mine",
            )
            .write(t.path());
        let e = extract(&m, &blob, "").expect_err("refused");
        assert!(
            matches!(
                e,
                InPlaceError::Failed {
                    errno: Errno::EPERM,
                    ..
                }
            ),
            "{e}"
        );
        assert!(!m.host.join("l").exists());
    }
}

//! The checkout without a copy: on a local engine the job's working directory is a directory
//! the agent prepares on its own disk and the engine mounts into the primary container, so a
//! `checkout` step moves no bytes through the engine (a remote engine, `DOCKER_HOST=tcp://…`,
//! still gets the tree as a tar stream; see `step_sequence`).
//!
//! What is in it, and why it is safe to share:
//! - the tree and `.git` (but its objects) are the job's own copies, owned by the job's user
//!   (the agent's copy of a workflow's checkout serves several jobs: none may change another's);
//! - the objects fetched through the mirror are hard links to the mirror's packs (no copy),
//!   kept under [`SHARED_OBJECTS`], which the engine mounts **read-only** over itself, and
//!   named in `.git/objects/info/alternates`: git in the job reads them there, and writes its
//!   own new objects into `.git/objects` as usual. A hard link is the mirror's file itself,
//!   and the job may be root (or become root through `sudo`), which file modes do not stop;
//!   a read-only mount does (remounting needs `CAP_SYS_ADMIN`, which no job container has),
//!   and no other path in the container leads to those inodes (a hard link across mounts is
//!   refused). Any other file with more than one link (a submodule's objects) is copied.
//!
//! The directory lives under `$TMPDIR/bosun-work/<agent>/<job>` (the agent's `work_dir`), is
//! removed with the job's resources, and what a killed agent left is removed at its next
//! start ([`sweep`]).

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

/// Where the shared objects live inside the working directory (and inside the container,
/// under the same path below the working directory). Its `pack/` and loose-object
/// directories are hard links to the mirror's files.
pub use crate::executor::SHARED_OBJECTS;

/// The line written to `.git/objects/info/alternates`: relative to `.git/objects`, so it
/// holds on the host and in the container alike.
const ALTERNATE: &str = "../bosun-shared-objects";

/// The directory under which this agent's job directories live.
pub fn root(agent_id: &str) -> PathBuf {
    std::env::temp_dir()
        .join("bosun-work")
        .join(sanitize(agent_id))
}

fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect::<String>()
        .trim_start_matches('.')
        .to_owned()
}

/// A job's prepared working directory on the host. Removed by [`WorkTree::remove`] (the
/// job's resources call it) or, if never called, on drop.
#[derive(Debug)]
pub struct WorkTree {
    path: PathBuf,
    removed: std::sync::atomic::AtomicBool,
}

impl WorkTree {
    /// A fresh empty directory for job `job_id` of `agent_id`: 0755 (the engine mounts it and
    /// the container's user must enter it; its parents are the agent's private `work_dir`).
    pub fn create(agent_id: &str, job_id: &str) -> std::io::Result<WorkTree> {
        // The directory is named by the job id, which is how a sweep finds the job's
        // containers: an id that is no plain name gets the tar stream instead.
        if job_id.is_empty() || sanitize(job_id) != job_id {
            return Err(std::io::Error::other(format!(
                "job id `{job_id}` is not a plain file name"
            )));
        }
        let root = root(agent_id);
        let path = root.join(sanitize(job_id));
        // A leftover of an earlier run with the same job id: not ours to reuse.
        if path.exists() {
            remove_tree(&path)?;
        }
        // Another job's removal may take the (then empty) parents away between the two
        // calls: make them again.
        let mut attempts = 0;
        loop {
            std::fs::create_dir_all(&root)?;
            std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o700))?;
            match std::fs::create_dir(&path) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && attempts < 3 => attempts += 1,
                r => break r?,
            }
        }
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
        Ok(WorkTree {
            path,
            removed: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// [`WorkTree::create`] for a working directory to be mounted: its shared objects'
    /// directory made beside it ([`WorkTree::shared_objects`]), and in it the mount point
    /// the engine mounts them read-only at.
    pub fn create_mounted(agent_id: &str, name: &str) -> std::io::Result<WorkTree> {
        let tree = WorkTree::create(agent_id, name)?;
        let shared = tree.shared_objects();
        if shared.exists() {
            remove_tree(&shared)?;
        }
        std::fs::create_dir(&shared)?;
        let mount_point = tree.path.join(SHARED_OBJECTS);
        std::fs::create_dir_all(&mount_point)?;
        for d in [shared, tree.path.join(".git"), mount_point] {
            std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755))?;
        }
        Ok(tree)
    }

    /// Whether the directory still holds only what it was made with: `.git`, a directory
    /// and no link, holding only the shared objects' mount point, an empty directory (and
    /// `.ssh` with files only, when it is the home the job's setup wrote to). A job
    /// whose steps ran before the checkout may have planted links in it (`.git` → a host
    /// directory, which the agent, root on the host, would write through): then the checkout
    /// goes in through the engine, which sees the container's view. Nothing here follows a
    /// link.
    pub fn pristine(&self) -> bool {
        let only = |dir: &Path, name: Option<&str>| -> bool {
            let Ok(entries) = std::fs::read_dir(dir) else {
                return false;
            };
            let names: Vec<_> = entries.flatten().map(|e| e.file_name()).collect();
            match name {
                Some(n) => names.len() == 1 && names[0] == n,
                None => names.is_empty(),
            }
        };
        let is_dir = |p: &Path| std::fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_dir());
        // With the working directory at `~`, the job's setup put `~/.ssh` there: files, no
        // link, no directory.
        let ssh = self.path.join(".ssh");
        let ssh_ok = || {
            std::fs::read_dir(&ssh).is_ok_and(|d| {
                d.flatten().all(|e| {
                    std::fs::symlink_metadata(e.path()).is_ok_and(|m| m.file_type().is_file())
                })
            })
        };
        let top_ok = std::fs::read_dir(&self.path).is_ok_and(|d| {
            d.flatten().all(|e| {
                e.file_name() == ".git" || (e.file_name() == ".ssh" && is_dir(&ssh) && ssh_ok())
            })
        });
        let git = self.path.join(".git");
        let mount_point = self.path.join(SHARED_OBJECTS);
        top_ok
            && is_dir(&git)
            && only(
                &git,
                Path::new(SHARED_OBJECTS)
                    .file_name()
                    .and_then(|n| n.to_str()),
            )
            && is_dir(&mount_point)
            && only(&mount_point, None)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The host directory of the read-only shared objects: beside the working directory,
    /// not in it ([`crate::executor::shared_objects_source`] says why).
    pub fn shared_objects(&self) -> PathBuf {
        let mut p = self.path.clone().into_os_string();
        p.push(".objects");
        PathBuf::from(p)
    }

    /// Remove the directory and everything in it (until it is gone: a failed removal may be
    /// tried again).
    pub fn remove(&self) -> std::io::Result<()> {
        if self.removed.load(std::sync::atomic::Ordering::SeqCst) {
            return Ok(());
        }
        remove_tree(&self.path)?;
        remove_tree(&self.shared_objects())?;
        self.removed
            .store(true, std::sync::atomic::Ordering::SeqCst);
        // The agent's directory and `bosun-work` go too once no job is left in them, so a
        // job leaves nothing in $TMPDIR (`remove_dir` refuses a directory that is not empty).
        let mut parent = self.path.parent();
        for _ in 0..2 {
            match parent {
                Some(p) if std::fs::remove_dir(p).is_ok() => parent = p.parent(),
                _ => break,
            }
        }
        Ok(())
    }
}

impl Drop for WorkTree {
    fn drop(&mut self) {
        if let Err(e) = self.remove() {
            tracing::warn!(path = %self.path.display(), "could not remove a job's working directory: {e}");
        }
    }
}

/// What follows a job id in the name of the directory holding its copy of the in-job
/// executable ([`runtime_copy`]).
const RUNTIME_SUFFIX: &str = ".runtime";

/// The in-job `circleci` executable, copied into a directory of job `job_id`'s own beside its
/// working directory (`<job>.runtime/circleci`, 0555), for the engine to mount read-only as
/// the primary container's main process: nothing in the container can change it, and it
/// goes with the job's resources (the agent's start-up sweep takes what a killed agent left).
/// A copy per job, not one per agent, so that a job leaves nothing behind and no job's
/// mount names a file another job's end removes.
pub fn runtime_copy(agent_id: &str, job_id: &str) -> std::io::Result<(WorkTree, PathBuf)> {
    let dir = WorkTree::create(agent_id, &format!("{job_id}{RUNTIME_SUFFIX}"))?;
    let file = dir.path().join("circleci");
    std::fs::write(&file, crate::runtime::CIRCLECI_EXECUTABLE)?;
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o555))?;
    Ok((dir, file))
}

fn remove_tree(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_dir_all(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        r => r,
    }
}

/// Remove every job directory of `agent_id` (the agent starts: none of its jobs runs). How
/// many there were.
pub fn sweep(agent_id: &str) -> usize {
    let root = root(agent_id);
    let Ok(entries) = std::fs::read_dir(&root) else {
        return 0;
    };
    let mut n = 0;
    for e in entries.flatten() {
        match remove_tree(&e.path()) {
            Ok(()) => n += 1,
            Err(err) => {
                tracing::warn!(path = %e.path().display(), "could not remove a job directory an earlier run left: {err}")
            }
        }
    }
    n
}

/// Remove the job directories of `agent_id` older than `age` whose job has no container on
/// the engine any more: what a killed `bosun execute` left (its runs share one agent id, and
/// another run's job may be running now). How many were removed.
pub async fn sweep_stale(
    executor: &dyn crate::executor::Executor,
    agent_id: &str,
    age: std::time::Duration,
) -> usize {
    let root = root(agent_id);
    let Ok(entries) = std::fs::read_dir(&root) else {
        return 0;
    };
    let mut n = 0;
    for e in entries.flatten() {
        let old = e
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|d| d > age);
        if !old {
            continue;
        }
        let name = e.file_name().to_string_lossy().into_owned();
        let job = name
            .strip_suffix(RUNTIME_SUFFIX)
            .or_else(|| name.strip_suffix(".objects"))
            .unwrap_or(&name)
            .to_owned();
        let live = executor
            .list_by_label(
                crate::executor::ResourceKind::Container,
                crate::executor::LABEL_JOB,
                &job,
            )
            .await;
        if matches!(live, Ok(ids) if ids.is_empty()) && remove_tree(&e.path()).is_ok() {
            n += 1;
        }
    }
    n
}

/// Whether this process may give files to another user (root, or `CAP_CHOWN`): without it
/// the job's user could not write a tree the agent prepared, and the tar stream is used.
pub fn can_chown() -> bool {
    static CAN: OnceLock<bool> = OnceLock::new();
    *CAN.get_or_init(|| {
        if nix::unistd::geteuid().is_root() {
            return true;
        }
        let Ok(dir) = tempfile::tempdir() else {
            return false;
        };
        let probe = dir.path().join("probe");
        if std::fs::write(&probe, b"").is_err() {
            return false;
        }
        let other = nix::unistd::Uid::from_raw(nix::unistd::geteuid().as_raw().wrapping_add(1));
        std::os::unix::fs::chown(&probe, Some(other.as_raw()), None).is_ok()
    })
}

/// `$HOME` of `user` in `image` (the engine's image id where known) as earlier containers of
/// this process announced it: where `~` is before a container exists (the mount's place must
/// be named when it is created). Only homes the image gave are learned, never one a job's
/// `environment:` set.
static HOMES: OnceLock<Mutex<Vec<Home>>> = OnceLock::new();

/// `((image, user), home)`.
type Home = ((String, String), String);

fn homes() -> std::sync::MutexGuard<'static, Vec<Home>> {
    HOMES
        .get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner())
}

/// The home a container of `image` running as `user` will announce, when it can be known
/// before it starts: root's is `/root`; an image's `HOME=` is what the shell gets; otherwise
/// what an earlier container of the same image and user said.
pub fn predict_home(image: &str, user: Option<&str>, image_env: &[String]) -> Option<String> {
    let name = user.unwrap_or("").split(':').next().unwrap_or("");
    if let Some(h) = image_env.iter().find_map(|kv| kv.strip_prefix("HOME=")) {
        return Some(h.to_owned());
    }
    if name.is_empty() || name == "root" || name == "0" {
        return Some("/root".to_owned());
    }
    let key = (image.to_owned(), name.to_owned());
    homes()
        .iter()
        .find(|(k, _)| *k == key)
        .map(|(_, h)| h.clone())
}

/// `$HOME` of `user` in `image` read from the image's `/etc/passwd` through a container
/// that is created, never started, and removed (three engine calls: what a first job of an
/// image and user pays once per process to mount its working directory). Labelled like the
/// job's resources (`bosun.kind=probe`), so a sweep finds it if the agent dies meanwhile.
pub async fn probe_home(
    executor: &dyn crate::executor::Executor,
    image: &str,
    user: &str,
    labels: Vec<(String, String)>,
) -> Option<String> {
    use futures_util::StreamExt;
    let spec = crate::executor::ContainerSpec {
        image: image.to_owned(),
        labels,
        entrypoint: Some(vec!["/nonexistent".to_owned()]),
        cmd: Some(Vec::new()),
        ..Default::default()
    };
    let id = executor.create(&spec).await.ok()?;
    let read = async {
        let mut stream = executor.download_tar(&id, "/etc/passwd").await.ok()??;
        let mut bytes = Vec::new();
        while let Some(chunk) = stream.next().await {
            bytes.extend_from_slice(&chunk.ok()?);
            if bytes.len() > 4 << 20 {
                return None;
            }
        }
        Some(bytes)
    };
    let bytes = read.await;
    if let Err(e) = executor.remove(&id).await {
        tracing::debug!(%id, "could not remove the probe container: {e}");
    }
    let mut archive = tar::Archive::new(std::io::Cursor::new(bytes?));
    let mut text = String::new();
    for entry in archive.entries().ok()? {
        let mut entry = entry.ok()?;
        if entry.header().entry_type().is_file() {
            use std::io::Read;
            entry
                .by_ref()
                .take(4 << 20)
                .read_to_string(&mut text)
                .ok()?;
            break;
        }
    }
    home_in_passwd(&text, user)
}

/// The home directory of `user` (a name or a uid, `:group` ignored) in passwd text.
fn home_in_passwd(passwd: &str, user: &str) -> Option<String> {
    let name = user.split(':').next()?;
    passwd.lines().find_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        (f.len() >= 6 && (f[0] == name || f[2] == name) && f[5].starts_with('/'))
            .then(|| f[5].to_owned())
    })
}

/// Where the homes of earlier processes are kept (each `bosun execute` is a process of its
/// own, and the agent restarts): `<cache>/homes/<sha256 of image id and user>`, holding the
/// path. An image id names the image's content, so the home read from its `/etc/passwd`
/// once holds for every later container of it; a wrong one would only cost the mount (the
/// banner's home is checked against it, and the checkout then goes in as a tar stream).
fn home_file(dir: &Path, image_id: &str, user: &str) -> PathBuf {
    use sha2::Digest;
    let name = user.split(':').next().unwrap_or("");
    let mut h = sha2::Sha256::new();
    h.update(image_id.as_bytes());
    h.update([0]);
    h.update(name.as_bytes());
    dir.join(crate::stream::spool::hex(&h.finalize()))
}

/// The home an earlier process stored for `user` in the image `image_id` under `dir`.
pub fn stored_home(dir: &Path, image_id: &str, user: &str) -> Option<String> {
    let text = std::fs::read_to_string(home_file(dir, image_id, user)).ok()?;
    valid_home(&text).then_some(text)
}

fn valid_home(h: &str) -> bool {
    h.starts_with('/') && h.len() < 4096 && !h.contains(['\n', '\0'])
}

/// Keep `home` for `user` in the image `image_id` under `dir` for later processes (written
/// whole or not at all; what cannot be written is only a later probe).
pub fn store_home(dir: &Path, image_id: &str, user: &str, home: &str) {
    if !valid_home(home) || stored_home(dir, image_id, user).as_deref() == Some(home) {
        return;
    }
    let file = home_file(dir, image_id, user);
    let written = std::fs::create_dir_all(dir).and_then(|()| {
        let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
        std::io::Write::write_all(&mut tmp, home.as_bytes())?;
        tmp.persist(&file).map_err(|e| e.error)?;
        Ok(())
    });
    if let Err(e) = written {
        tracing::debug!(dir = %dir.display(), "could not keep an image's home: {e}");
    }
}

/// Remember the home a container announced (see [`predict_home`]).
pub fn learn_home(image: &str, user: Option<&str>, home: &str) {
    let name = user
        .unwrap_or("")
        .split(':')
        .next()
        .unwrap_or("")
        .to_owned();
    let key = (image.to_owned(), name);
    let mut h = homes();
    h.retain(|(k, _)| *k != key);
    // A handful of images per agent; bounded all the same.
    if h.len() >= 256 {
        h.remove(0);
    }
    h.push((key, home.to_owned()));
}

/// What [`fill`] did.
#[derive(Debug, Default, Clone, Copy)]
pub struct Filled {
    /// Bytes copied (the tree, `.git` but for its objects).
    pub copied: u64,
    /// Bytes moved into place without a copy ([`fill_by_move`]).
    pub moved: u64,
    /// Filled by [`fill_by_move`].
    pub by_move: bool,
    /// Bytes shared by hard link with the mirror (read-only in the container).
    pub shared: u64,
}

/// Give the top of the job's directory to the job's user (before its files go in, so that
/// the main process, running as that user, can set up the working directory).
pub fn own_top(dir: &Path, uid: u32, gid: u32) -> std::io::Result<()> {
    std::os::unix::fs::lchown(dir, Some(uid), Some(gid))
}

/// Put the checkout at `src` (a repository with its work tree) into the job's directory
/// `dest`, owned by `uid:gid`: the tree and `.git` copied, `.git/objects`' packs and loose
/// objects hard-linked under [`SHARED_OBJECTS`] (owned by the agent, read-only to the job)
/// and named as the repository's alternate. `dest` may already hold what the job wrote.
pub fn fill(src: &Path, dest: &Path, shared: &Path, uid: u32, gid: u32) -> std::io::Result<Filled> {
    let mut filled = Filled::default();
    std::fs::create_dir_all(shared)?;
    std::fs::set_permissions(shared, std::fs::Permissions::from_mode(0o755))?;
    copy_dir(src, dest, Path::new(""), shared, uid, gid, &mut filled)?;
    let info = dest.join(".git/objects/info");
    if dest.join(".git/objects").is_dir() {
        std::fs::create_dir_all(&info)?;
        let alternates = info.join("alternates");
        std::fs::write(&alternates, format!("{ALTERNATE}\n"))?;
        for p in [&info, &alternates] {
            std::os::unix::fs::lchown(p, Some(uid), Some(gid))?;
        }
    }
    Ok(filled)
}

/// [`fill`] without a copy, for a checkout at `src` that is the job's alone (no other job
/// reads it, no later step checks out from it): its entries are renamed into `dest` (the
/// same file system, so no file is written again) and given to `uid:gid`; the main
/// repository's object files go under [`SHARED_OBJECTS`] untouched (they are the mirror's
/// inodes: never chowned), and any other file with more than one link is replaced by a
/// copy of its own before it is chowned, as [`fill`] would copy it. `None` when it cannot
/// move (`dest` already holds something, another file system): the caller copies.
pub fn fill_by_move(
    src: &Path,
    dest: &Path,
    shared: &Path,
    uid: u32,
    gid: u32,
) -> std::io::Result<Option<Filled>> {
    // The engine made the shared objects' mount point (`.git/bosun-shared-objects`) when it
    // created the container: that, and nothing else, may be there.
    let (git, mount_point) = SHARED_OBJECTS
        .split_once('/')
        .ok_or_else(|| std::io::Error::other("SHARED_OBJECTS names no directory below .git"))?;
    let occupied = std::fs::read_dir(dest)?.flatten().any(|e| {
        e.file_name() != git
            || std::fs::read_dir(e.path())
                .map(|d| d.flatten().any(|c| c.file_name() != mount_point))
                .unwrap_or(true)
    });
    let same_fs = std::fs::metadata(src)?.dev() == std::fs::metadata(dest)?.dev();
    if occupied || !same_fs {
        return Ok(None);
    }
    let mut filled = Filled {
        by_move: true,
        ..Filled::default()
    };
    std::fs::create_dir_all(shared)?;
    std::fs::set_permissions(shared, std::fs::Permissions::from_mode(0o755))?;
    // The objects first, out of `src`, so that the walk below never meets a mirror inode.
    let objects = src.join(".git/objects");
    if let Ok(entries) = std::fs::read_dir(&objects) {
        for dir in entries.flatten() {
            if !dir.file_type()?.is_dir() {
                continue;
            }
            for file in std::fs::read_dir(dir.path())?.flatten() {
                let rel = Path::new(".git/objects")
                    .join(dir.file_name())
                    .join(file.file_name());
                if !file.file_type()?.is_file() || !is_object(&rel) {
                    continue;
                }
                let to = shared.join(dir.file_name()).join(file.file_name());
                if let Some(parent) = to.parent() {
                    if !parent.is_dir() {
                        std::fs::create_dir(parent)?;
                        std::fs::set_permissions(parent, std::fs::Permissions::from_mode(0o755))?;
                    }
                }
                filled.shared += file.metadata()?.len();
                std::fs::rename(file.path(), &to)?;
            }
        }
    }
    let mode = std::fs::metadata(src)?.mode() & 0o7777;
    for entry in std::fs::read_dir(src)? {
        let entry = entry?;
        let to = dest.join(entry.file_name());
        if entry.file_type()?.is_dir() && to.is_dir() {
            // `.git`, holding the mount point: its contents go in one by one.
            for child in std::fs::read_dir(entry.path())? {
                let child = child?;
                std::fs::rename(child.path(), to.join(child.file_name()))?;
            }
            let mode = entry.metadata()?.mode() & 0o7777;
            std::fs::set_permissions(&to, std::fs::Permissions::from_mode(mode))?;
        } else {
            std::fs::rename(entry.path(), to)?;
        }
    }
    std::fs::set_permissions(dest, std::fs::Permissions::from_mode(mode))?;
    // The mount point stays the agent's (the engine mounts over it).
    own_moved(dest, &dest.join(SHARED_OBJECTS), uid, gid, &mut filled)?;
    let info = dest.join(".git/objects/info");
    if dest.join(".git/objects").is_dir() {
        std::fs::create_dir_all(&info)?;
        let alternates = info.join("alternates");
        std::fs::write(&alternates, format!("{ALTERNATE}\n"))?;
        for p in [&info, &alternates] {
            std::os::unix::fs::lchown(p, Some(uid), Some(gid))?;
        }
    }
    Ok(Some(filled))
}

/// Give everything under `dir` but `shared` to `uid:gid`, a file with other links first
/// replaced by its own copy (chowning a link would change the other name's file too).
fn own_moved(
    dir: &Path,
    shared: &Path,
    uid: u32,
    gid: u32,
    filled: &mut Filled,
) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        if path == shared {
            continue;
        }
        let meta = std::fs::symlink_metadata(&path)?;
        let ft = meta.file_type();
        if ft.is_file() && meta.nlink() > 1 {
            let tmp = dir.join(format!(".bosun-unlink-{}", meta.ino()));
            std::fs::copy(&path, &tmp)?;
            std::fs::rename(&tmp, &path)?;
            filled.copied += meta.len();
        } else if ft.is_file() {
            filled.moved += meta.len();
        }
        std::os::unix::fs::lchown(&path, Some(uid), Some(gid))?;
        if ft.is_dir() {
            own_moved(&path, shared, uid, gid, filled)?;
        }
    }
    Ok(())
}

/// Whether `rel` (relative to the repository's top) is one of the main repository's
/// object files: a pack's file or a loose object.
fn is_object(rel: &Path) -> bool {
    let Ok(rest) = rel.strip_prefix(".git/objects") else {
        return false;
    };
    let parts: Vec<&str> = rest.iter().filter_map(|p| p.to_str()).collect();
    match parts.as_slice() {
        ["pack", name] => name.starts_with("pack-"),
        [dir, name] => {
            dir.len() == 2
                && dir.bytes().all(|b| b.is_ascii_hexdigit())
                && name.len() == 38
                && name.bytes().all(|b| b.is_ascii_hexdigit())
        }
        _ => false,
    }
}

fn copy_dir(
    src_top: &Path,
    dest_top: &Path,
    rel: &Path,
    shared: &Path,
    uid: u32,
    gid: u32,
    filled: &mut Filled,
) -> std::io::Result<()> {
    let dir = src_top.join(rel);
    let out = dest_top.join(rel);
    if !out.is_dir() {
        std::fs::create_dir(&out)?;
    }
    let mode = std::fs::symlink_metadata(&dir)?.mode() & 0o7777;
    std::fs::set_permissions(&out, std::fs::Permissions::from_mode(mode))?;
    if !rel.as_os_str().is_empty() {
        std::os::unix::fs::lchown(&out, Some(uid), Some(gid))?;
    }
    for entry in std::fs::read_dir(&dir)? {
        let entry = entry?;
        let rel = rel.join(entry.file_name());
        if rel == Path::new(SHARED_OBJECTS) {
            continue;
        }
        let from = src_top.join(&rel);
        let meta = std::fs::symlink_metadata(&from)?;
        let ft = meta.file_type();
        if ft.is_dir() {
            copy_dir(src_top, dest_top, &rel, shared, uid, gid, filled)?;
        } else if ft.is_symlink() {
            let to = dest_top.join(&rel);
            let _ = std::fs::remove_file(&to);
            std::os::unix::fs::symlink(std::fs::read_link(&from)?, &to)?;
            std::os::unix::fs::lchown(&to, Some(uid), Some(gid))?;
        } else if ft.is_file() && is_object(&rel) {
            // Under the shared directory, by the same relative name (`pack/…`, `ab/…`).
            let name = rel
                .strip_prefix(".git/objects")
                .map_err(|e| std::io::Error::other(e.to_string()))?;
            let to = shared.join(name);
            if let Some(parent) = to.parent() {
                if !parent.is_dir() {
                    std::fs::create_dir_all(parent)?;
                    std::fs::set_permissions(parent, std::fs::Permissions::from_mode(0o755))?;
                }
            }
            if !to.exists() && std::fs::hard_link(&from, &to).is_err() {
                // Another file system: a copy, as read-only as the link would be.
                std::fs::copy(&from, &to)?;
                std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o444))?;
            }
            filled.shared += meta.len();
        } else if ft.is_file() {
            let to = dest_top.join(&rel);
            // A copy, never a link: the job owns and may change what is here. `copy`
            // replaces the contents of an existing file, so a link in `dest` is removed
            // first rather than written through.
            let _ = std::fs::remove_file(&to);
            std::fs::copy(&from, &to)?;
            std::os::unix::fs::lchown(&to, Some(uid), Some(gid))?;
            filled.copied += meta.len();
        }
        // Sockets, fifos, devices: a checkout has none.
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn objects_are_linked_read_only_and_everything_else_is_copied() {
        let src = tempfile::tempdir().expect("src");
        let s = src.path();
        std::fs::create_dir_all(s.join(".git/objects/pack")).expect("pack");
        std::fs::create_dir_all(s.join(".git/objects/ab")).expect("loose");
        std::fs::create_dir_all(s.join(".git/modules/sub/objects/pack")).expect("sub");
        std::fs::create_dir_all(s.join("src")).expect("src dir");
        std::fs::write(s.join(".git/objects/pack/pack-1.pack"), b"PACK").expect("w");
        std::fs::write(s.join(".git/objects/ab").join("c".repeat(38)), b"obj").expect("w");
        std::fs::write(s.join(".git/modules/sub/objects/pack/pack-2.pack"), b"SUB").expect("w");
        std::fs::write(s.join(".git/HEAD"), b"ref: refs/heads/main\n").expect("w");
        std::fs::write(s.join("src/main.rs"), b"fn main() {}\n").expect("w");
        std::os::unix::fs::symlink("src/main.rs", s.join("link")).expect("symlink");
        // A submodule's pack linked from elsewhere (another mirror): must be copied.
        let elsewhere = tempfile::tempdir().expect("elsewhere");
        std::fs::hard_link(
            s.join(".git/modules/sub/objects/pack/pack-2.pack"),
            elsewhere.path().join("p"),
        )
        .expect("link");

        let dest = tempfile::tempdir().expect("dest");
        let d = dest.path();
        let uid = nix::unistd::geteuid().as_raw();
        let gid = nix::unistd::getegid().as_raw();
        let objects = tempfile::tempdir().expect("objects");
        let o = objects.path();
        let filled = fill(s, d, o, uid, gid).expect("fill");
        assert_eq!(filled.shared, 4 + 3);
        let shared_pack = o.join("pack/pack-1.pack");
        assert_eq!(
            std::fs::metadata(&shared_pack).expect("pack").ino(),
            std::fs::metadata(s.join(".git/objects/pack/pack-1.pack"))
                .expect("src pack")
                .ino(),
            "the pack is the same file (a link, no copy)"
        );
        assert!(o.join("ab").join("c".repeat(38)).exists());
        assert!(
            !d.join(".git/objects/pack/pack-1.pack").exists(),
            "no link to the mirror outside the read-only directory"
        );
        assert_eq!(
            std::fs::read_to_string(d.join(".git/objects/info/alternates")).expect("alt"),
            "../bosun-shared-objects\n"
        );
        let sub = d.join(".git/modules/sub/objects/pack/pack-2.pack");
        assert_eq!(std::fs::read(&sub).expect("sub"), b"SUB");
        assert_eq!(
            std::fs::metadata(&sub).expect("sub").nlink(),
            1,
            "a linked file outside the main objects is copied"
        );
        assert_eq!(
            std::fs::metadata(d.join("src/main.rs"))
                .expect("main")
                .nlink(),
            1
        );
        assert_eq!(
            std::fs::read_link(d.join("link")).expect("link"),
            Path::new("src/main.rs")
        );
        // Every file outside the shared directory has one link: nothing else reaches the
        // source's inodes.
        fn walk(p: &Path, out: &mut Vec<PathBuf>) {
            for e in std::fs::read_dir(p).expect("dir").flatten() {
                let ft = e.file_type().expect("type");
                if ft.is_dir() {
                    walk(&e.path(), out);
                } else if ft.is_file() {
                    out.push(e.path());
                }
            }
        }
        let mut files = Vec::new();
        walk(d, &mut files);
        for f in files {
            {
                assert_eq!(
                    std::fs::metadata(&f).expect("meta").nlink(),
                    1,
                    "{}",
                    f.display()
                );
            }
        }
    }

    #[test]
    fn a_moved_checkout_shares_only_the_mirror_objects_and_leaves_their_owner_alone() {
        let base = tempfile::tempdir().expect("base");
        let (mirror, src, dest) = (
            base.path().join("mirror"),
            base.path().join("src"),
            base.path().join("dest"),
        );
        for d in [
            mirror.join("pack"),
            src.join(".git/objects/pack"),
            src.join(".git/modules/sub/objects/pack"),
            src.join("src"),
            // What the engine made for the shared objects' mount.
            dest.join(SHARED_OBJECTS),
        ] {
            std::fs::create_dir_all(d).expect("mkdir");
        }
        std::fs::write(mirror.join("pack/pack-1.pack"), b"PACK").expect("w");
        std::fs::hard_link(
            mirror.join("pack/pack-1.pack"),
            src.join(".git/objects/pack/pack-1.pack"),
        )
        .expect("link");
        std::fs::write(mirror.join("sub.pack"), b"SUB").expect("w");
        std::fs::hard_link(
            mirror.join("sub.pack"),
            src.join(".git/modules/sub/objects/pack/pack-2.pack"),
        )
        .expect("link");
        std::fs::write(src.join("src/main.rs"), b"fn main() {}\n").expect("w");
        std::fs::write(src.join(".git/HEAD"), b"ref: refs/heads/main\n").expect("w");
        let mirror_owner = std::fs::metadata(mirror.join("pack/pack-1.pack"))
            .expect("meta")
            .uid();
        // Root in CI: the job's user is someone else, as on an agent.
        let (uid, gid) = if nix::unistd::geteuid().is_root() {
            (3434, 3434)
        } else {
            (
                nix::unistd::geteuid().as_raw(),
                nix::unistd::getegid().as_raw(),
            )
        };
        let objects = base.path().join("dest.objects");
        let filled = fill_by_move(&src, &dest, &objects, uid, gid)
            .expect("move")
            .expect("same file system, empty destination");
        assert_eq!(
            (filled.shared, filled.copied, filled.moved),
            (4, 3, 13 + 21)
        );
        let shared_pack = objects.join("pack/pack-1.pack");
        let meta = std::fs::metadata(&shared_pack).expect("shared pack");
        assert_eq!(
            meta.ino(),
            std::fs::metadata(mirror.join("pack/pack-1.pack"))
                .expect("mirror")
                .ino()
        );
        assert_eq!(meta.uid(), mirror_owner, "the mirror's file is not chowned");
        let sub = dest.join(".git/modules/sub/objects/pack/pack-2.pack");
        let sub_meta = std::fs::metadata(&sub).expect("sub");
        assert_eq!(
            (sub_meta.nlink(), sub_meta.uid()),
            (1, uid),
            "a linked file gets its own copy"
        );
        assert_eq!(std::fs::read(&sub).expect("sub"), b"SUB");
        let main = std::fs::metadata(dest.join("src/main.rs")).expect("main");
        assert_eq!((main.uid(), main.gid()), (uid, gid));
        assert_eq!(
            std::fs::read_to_string(dest.join(".git/objects/info/alternates")).expect("alt"),
            "../bosun-shared-objects\n"
        );
        assert!(!src.join("src").exists(), "moved, not copied");
        // A destination that already holds something is not moved into.
        let again = base.path().join("again");
        std::fs::create_dir_all(again.join(".git")).expect("mkdir");
        assert!(fill_by_move(&again, &dest, &objects, uid, gid)
            .expect("ok")
            .is_none());
    }

    #[test]
    fn homes_are_predicted_for_root_and_an_image_home_and_learned_otherwise() {
        assert_eq!(predict_home("img-a", None, &[]).as_deref(), Some("/root"));
        assert_eq!(
            predict_home("img-a", Some("0:0"), &[]).as_deref(),
            Some("/root")
        );
        assert_eq!(
            predict_home("img-a", Some("circleci"), &["HOME=/home/x".into()]).as_deref(),
            Some("/home/x")
        );
        assert_eq!(predict_home("img-learn", Some("circleci"), &[]), None);
        learn_home("img-learn", Some("circleci"), "/home/circleci");
        assert_eq!(
            predict_home("img-learn", Some("circleci"), &[]).as_deref(),
            Some("/home/circleci")
        );
    }

    #[test]
    fn a_stored_home_is_found_by_image_id_and_user_and_bad_files_are_ignored() {
        let dir = tempfile::tempdir().expect("dir");
        let d = dir.path().join("homes");
        assert_eq!(stored_home(&d, "sha256:aa", "circleci"), None);
        store_home(&d, "sha256:aa", "circleci", "/home/circleci");
        assert_eq!(
            stored_home(&d, "sha256:aa", "circleci:3434").as_deref(),
            Some("/home/circleci")
        );
        assert_eq!(stored_home(&d, "sha256:bb", "circleci"), None);
        assert_eq!(stored_home(&d, "sha256:aa", "root"), None);
        // Overwritten when it changes; never with a relative or multi-line path.
        store_home(&d, "sha256:aa", "circleci", "/srv/ci");
        store_home(&d, "sha256:aa", "circleci", "relative");
        assert_eq!(
            stored_home(&d, "sha256:aa", "circleci").as_deref(),
            Some("/srv/ci")
        );
        std::fs::write(home_file(&d, "sha256:aa", "circleci"), "/a\n/b").expect("w");
        assert_eq!(stored_home(&d, "sha256:aa", "circleci"), None);
    }

    #[test]
    fn a_home_is_found_by_name_or_uid() {
        let passwd = "root:x:0:0:root:/root:/bin/bash\ncircleci:x:3434:3434::/home/circleci:/bin/bash\nbad line\n";
        assert_eq!(
            home_in_passwd(passwd, "circleci").as_deref(),
            Some("/home/circleci")
        );
        assert_eq!(
            home_in_passwd(passwd, "3434:3434").as_deref(),
            Some("/home/circleci")
        );
        assert_eq!(home_in_passwd(passwd, "nobody"), None);
    }

    #[test]
    fn is_object_names_packs_and_loose_objects_only() {
        assert!(is_object(Path::new(".git/objects/pack/pack-abc.pack")));
        assert!(is_object(Path::new(".git/objects/pack/pack-abc.idx")));
        assert!(is_object(
            &Path::new(".git/objects/ab").join("0".repeat(38))
        ));
        assert!(!is_object(Path::new(".git/objects/info/alternates")));
        assert!(!is_object(Path::new(".git/objects/pack/other")));
        assert!(!is_object(Path::new(
            ".git/modules/s/objects/pack/pack-1.pack"
        )));
        assert!(!is_object(Path::new("src/.git/objects/pack/pack-1.pack")));
    }
}

//! The mirror cache: one bare mirror per repository address under the cache directory, so
//! that a job fetches only what is new instead of cloning from scratch.
//!
//! The mirror knows nothing of keys, on purpose. Its one door is [`Mirrors`]: the checkout
//! [`Mirrors::open`]s the mirror of an address (which locks it, checks it and repairs it),
//! fetches into [`Mirror::repo`] with the job's own keys and host-key checks, and only when
//! that fetch succeeded asks [`Mirror::materialize`] for a self-contained copy in the job's
//! repository. A fetch that fails (a key that cannot read the repository) therefore never
//! reaches the mirror's content. [`Mirrors::evict`] then keeps the cache within its budget.
//!
//! Layout under `<cache_dir>/mirrors/`: `<id>/` a bare repository (its address in
//! `<id>/bosun-url`, whose mtime is the last use), `<id>.lock` the lock file (kept when the
//! mirror goes, so a job waiting on it never holds a lock on a removed file).

mod health;
mod materialize;

use sha2::{Digest, Sha256};
use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// Default size budget of the cache: 10 GiB.
pub const DEFAULT_BUDGET_BYTES: u64 = 10 << 30;

/// The file in a mirror holding the address it mirrors (its mtime: the last use).
const URL_FILE: &str = "bosun-url";
const TRASH_PREFIX: &str = ".trash-";

#[derive(Debug, thiserror::Error)]
pub enum MirrorError {
    #[error("mirror cache {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("mirror {}: {context}: {source}", path.display())]
    Git {
        path: PathBuf,
        context: &'static str,
        #[source]
        source: git2::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> MirrorError + '_ {
    move |source| MirrorError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Where the mirrors live and how much room they may take.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mirrors {
    root: PathBuf,
    budget: u64,
}

/// One mirror as `bosun cache ls` shows it.
#[derive(Debug, Clone)]
pub struct MirrorInfo {
    pub id: String,
    pub url: String,
    pub bytes: u64,
    pub last_used: SystemTime,
}

/// A locked mirror: nobody else fetches into it, repairs or evicts it while this lives.
pub struct Mirror {
    dir: PathBuf,
    repo: git2::Repository,
    label: String,
    /// Exclusive `flock` on `<id>.lock`, released when the file closes.
    _lock: File,
}

impl Mirrors {
    /// Mirrors under `cache_dir/mirrors`, kept within `budget` bytes.
    pub fn new(cache_dir: &Path, budget: u64) -> Mirrors {
        Mirrors {
            root: cache_dir.join("mirrors"),
            budget,
        }
    }

    /// `bosun execute`'s and `bosun checkout`'s default cache directory:
    /// `$XDG_CACHE_HOME/bosun`, else `~/.cache/bosun`.
    pub fn default_cache_dir() -> Option<PathBuf> {
        let xdg = std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .filter(|p| p.is_absolute());
        xdg.or_else(|| {
            std::env::var_os("HOME")
                .map(PathBuf::from)
                .filter(|p| p.is_absolute())
                .map(|h| h.join(".cache"))
        })
        .map(|d| d.join("bosun"))
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn budget(&self) -> u64 {
        self.budget
    }

    /// Lock the mirror of `address` (waiting while another job fetches into it), clean what
    /// a killed fetch left, check it and, when it is damaged, remove it and start afresh
    /// (`report` tells the job why). `address` must name what is fetched exactly (the
    /// address dialled and the host whose key is checked): two repositories never share a
    /// mirror. `label` is what `bosun cache ls` shows.
    pub fn open(
        &self,
        address: &str,
        label: &str,
        report: &mut dyn FnMut(&str),
    ) -> Result<Mirror, MirrorError> {
        let (id, lock) = self.lock(address, libc::LOCK_EX)?;
        self.open_locked(id, lock, label, report)
    }

    /// As [`Mirrors::open`], but `None` at once when another job holds the mirror: for
    /// work done ahead (a submodule fetched beside its parent's fetch), which must never
    /// wait on a lock while it holds another.
    pub fn try_open(
        &self,
        address: &str,
        label: &str,
        report: &mut dyn FnMut(&str),
    ) -> Result<Option<Mirror>, MirrorError> {
        match self.lock(address, libc::LOCK_EX | libc::LOCK_NB) {
            Ok((id, lock)) => self.open_locked(id, lock, label, report).map(Some),
            Err(MirrorError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::WouldBlock =>
            {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    fn lock(&self, address: &str, op: libc::c_int) -> Result<(String, File), MirrorError> {
        make_private_dir(&self.root)?;
        let id = mirror_id(address);
        let lock_path = self.root.join(format!("{id}.lock"));
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io_err(&lock_path))?;
        flock(&lock, op).map_err(io_err(&lock_path))?;
        Ok((id, lock))
    }

    fn open_locked(
        &self,
        id: String,
        lock: File,
        label: &str,
        report: &mut dyn FnMut(&str),
    ) -> Result<Mirror, MirrorError> {
        let dir = self.root.join(&id);
        let repo = if dir.exists() {
            health::clean_leftovers(&dir);
            match health::check(&dir) {
                Ok(repo) => repo,
                Err(why) => {
                    let line = format!(
                        "The mirror of {label} is damaged ({why}); it was removed and is \
                         fetched afresh"
                    );
                    tracing::warn!(mirror = %dir.display(), "{line}");
                    report(&line);
                    self.remove_dir(&dir)?;
                    init(&dir)?
                }
            }
        } else {
            init(&dir)?
        };
        let url_file = dir.join(URL_FILE);
        std::fs::write(&url_file, label).map_err(io_err(&url_file))?;
        Ok(Mirror {
            dir,
            repo,
            label: label.to_string(),
            _lock: lock,
        })
    }

    /// Every mirror, least recently used first.
    pub fn list(&self) -> Result<Vec<MirrorInfo>, MirrorError> {
        let entries = match std::fs::read_dir(&self.root) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_err(&self.root)(e)),
        };
        let mut out = Vec::new();
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !is_id(&name) || !entry.path().is_dir() {
                continue;
            }
            let url_file = entry.path().join(URL_FILE);
            let (url, last_used) = match std::fs::metadata(&url_file) {
                Ok(m) => (
                    std::fs::read_to_string(&url_file).unwrap_or_default(),
                    m.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                ),
                // Being made, or left by a kill during init: oldest of all.
                Err(_) => (String::new(), SystemTime::UNIX_EPOCH),
            };
            out.push(MirrorInfo {
                id: name,
                url,
                bytes: dir_bytes(&entry.path()),
                last_used,
            });
        }
        out.sort_by_key(|m| m.last_used);
        Ok(out)
    }

    /// Remove least recently used mirrors until the cache fits its budget. A mirror in use
    /// (locked) is skipped, never waited for. Returns what was removed.
    pub fn evict(&self) -> Result<Vec<MirrorInfo>, MirrorError> {
        self.shrink_to(self.budget)
    }

    /// Remove least recently used mirrors until at most `bytes` are left (0: all that are
    /// not in use), and what removals killed midway left behind.
    pub fn shrink_to(&self, bytes: u64) -> Result<Vec<MirrorInfo>, MirrorError> {
        self.sweep_trash();
        let mirrors = self.list()?;
        let mut total: u64 = mirrors.iter().map(|m| m.bytes).sum();
        let mut removed = Vec::new();
        for m in mirrors {
            if total <= bytes {
                break;
            }
            let lock_path = self.root.join(format!("{}.lock", m.id));
            let Ok(lock) = OpenOptions::new().write(true).open(&lock_path) else {
                continue;
            };
            if flock(&lock, libc::LOCK_EX | libc::LOCK_NB).is_err() {
                continue;
            }
            self.remove_dir(&self.root.join(&m.id))?;
            drop(lock);
            tracing::info!(mirror = %m.id, url = %m.url, bytes = m.bytes, "mirror evicted");
            total = total.saturating_sub(m.bytes);
            removed.push(m);
        }
        Ok(removed)
    }

    /// Renamed away first, so that a kill during the removal never leaves a half mirror
    /// where the next job would look.
    fn remove_dir(&self, dir: &Path) -> Result<(), MirrorError> {
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let trash = self.root.join(format!(
            "{TRASH_PREFIX}{name}-{}-{}",
            std::process::id(),
            SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0)
        ));
        std::fs::rename(dir, &trash).map_err(io_err(dir))?;
        std::fs::remove_dir_all(&trash).map_err(io_err(&trash))
    }

    fn sweep_trash(&self) {
        let Ok(entries) = std::fs::read_dir(&self.root) else {
            return;
        };
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().starts_with(TRASH_PREFIX) {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
}

impl Mirror {
    /// The bare repository to fetch into (`refs/heads/*`, `refs/tags/*` as the remote has
    /// them).
    pub fn repo(&self) -> &git2::Repository {
        &self.repo
    }

    /// Nothing fetched yet (a new or just repaired mirror).
    pub fn is_empty(&self) -> bool {
        self.repo
            .references()
            .map(|mut r| r.next().is_none())
            .unwrap_or(true)
    }

    /// After a fetch failed for a reason other than access (a pack that does not read, a
    /// ref that cannot be written): start afresh, under the same lock.
    pub fn reset(&mut self, why: &str, report: &mut dyn FnMut(&str)) -> Result<(), MirrorError> {
        let line = format!(
            "The mirror of {} could not be updated ({why}); it was removed and is fetched afresh",
            self.label
        );
        tracing::warn!(mirror = %self.dir.display(), "{line}");
        report(&line);
        let root = self.dir.parent().map(Path::to_path_buf).unwrap_or_default();
        let mirrors = Mirrors { root, budget: 0 };
        mirrors.remove_dir(&self.dir)?;
        self.repo = init(&self.dir)?;
        std::fs::write(self.dir.join(URL_FILE), &self.label).map_err(io_err(&self.dir))
    }

    /// Give `dest` (a freshly made repository) every object of the mirror and its
    /// branches as `refs/remotes/origin/*` and its tags: the job's `.git` then stands on
    /// its own (no alternates, no path to the mirror).
    pub fn materialize(&self, dest: &git2::Repository) -> Result<(), MirrorError> {
        materialize::copy_into(&self.dir, &self.repo, dest)
    }
}

/// Fill `dest` from another repository of this machine as a job's repository is filled from
/// a mirror (objects hard-linked, branches as `origin/*`, tags): what a fetch from a local path
/// gives, without libgit2's local transport, which packs every object anew (seconds to
/// minutes for a long history, where `git clone` of a path only links). `git_dir` is `src`'s
/// `.git` (or itself when bare).
pub fn copy_local(
    git_dir: &Path,
    src: &git2::Repository,
    dest: &git2::Repository,
) -> Result<(), MirrorError> {
    materialize::copy_into(git_dir, src, dest)
}

fn init(dir: &Path) -> Result<git2::Repository, MirrorError> {
    git2::Repository::init_bare(dir).map_err(|source| MirrorError::Git {
        path: dir.to_path_buf(),
        context: "creating the mirror",
        source,
    })
}

/// The mirror's directory name: a digest of its address (addresses hold `/`, `:`, `@`).
fn mirror_id(address: &str) -> String {
    let digest = Sha256::digest(address.as_bytes());
    digest[..16].iter().map(|b| format!("{b:02x}")).collect()
}

fn is_id(name: &str) -> bool {
    name.len() == 32 && name.bytes().all(|b| b.is_ascii_hexdigit())
}

fn flock(file: &File, op: libc::c_int) -> std::io::Result<()> {
    loop {
        // SAFETY: flock on a descriptor this File owns; no memory is passed.
        let r = unsafe { libc::flock(file.as_raw_fd(), op) };
        if r == 0 {
            return Ok(());
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// 0700: mirrors of private repositories are as secret as their checkouts.
fn make_private_dir(dir: &Path) -> Result<(), MirrorError> {
    bosun_protocol::private::create_private_dir(dir).map_err(io_err(dir))
}

/// Bytes on disk (allocated blocks).
fn dir_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let Ok(m) = e.path().symlink_metadata() else {
                continue;
            };
            if m.is_dir() {
                stack.push(e.path());
            } else {
                total += m.blocks() * 512;
            }
        }
    }
    total
}

#[cfg(test)]
mod tests;

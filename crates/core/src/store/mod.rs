//! The local store for caches, workspaces and artifacts: a directory, content-addressed,
//! with everything but the blobs kept per project.
//!
//! ```text
//! STORE/                                   mode 0700
//!   blobs/sha256/<hex>                     tar archives, named by the SHA-256 of their bytes
//!   projects/<scope>/project.json          {identity}: which project this directory is
//!   projects/<scope>/caches/<sha256(key)>.json      {key, blob, size, created_ns}, immutable
//!   projects/<scope>/forks/pr-<n>/caches/…          caches saved by forked pull request #n
//!   projects/<scope>/workspaces/<run>/layers.jsonl  one {job, blob, size} per persist, in order
//!   projects/<scope>/artifacts/<job-id>/<destination>/  stored files, as plain files
//! ```
//!
//! `<scope>` is the first 128 bits of the SHA-256 of the project's identity (the Bitbucket
//! repository UUID for the agent's jobs, the repository URL or directory for `bosun
//! execute`), so one project's job can neither read nor plant another project's caches,
//! workspaces or artifacts: a [`LocalStore`] is always opened for one [`ProjectScope`]. A job
//! building a pull request from a fork reads the project's caches but writes its own
//! (`forks/pr-<n>`), which only later builds of that pull request read, as CircleCI keeps fork
//! caches apart.
//!
//! Blobs are shared: a blob is only reached through a project's entry, and its name is the
//! hash of its bytes as the store itself computed it, so sharing one cannot change what
//! another project restores. Blobs are written to a temporary file while hashed and renamed
//! into place, so a reader never sees half a blob and two writers of the same content agree.

pub mod archive;
pub mod artifacts;
pub mod junit;
pub mod remote;
pub mod template;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("store {path}: corrupt entry: {message}")]
    Corrupt { path: String, message: String },
    #[error("archive entry {name}: a hard link to {target}, which the archive does not hold")]
    DanglingHardLink { name: String, target: String },
    #[error("artifact destination {destination:?} leaves the job's artifact directory")]
    Escape { destination: String },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// A blob's name: the hex SHA-256 of its bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobId(pub String);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheEntry {
    pub key: String,
    pub blob: BlobId,
    pub size: u64,
    /// Nanoseconds since the epoch; "most recent" wins among prefix matches.
    pub created_ns: u128,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Layer {
    pub job: String,
    pub blob: BlobId,
    pub size: u64,
}

/// Which project a job builds, as far as the store is concerned: its caches, workspaces and
/// artifacts live apart from every other project's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProjectScope {
    /// What names the project: a Bitbucket repository UUID, a repository URL, a directory.
    identity: String,
    /// Hex, 32 digits: the directory name under `projects/`.
    key: String,
    /// Set for a build of a pull request from a fork: it reads the project's caches and
    /// writes its own.
    fork_pull_request: Option<u64>,
}

impl ProjectScope {
    /// The scope of the project named by `identity` (the agent passes the repository UUID,
    /// `bosun execute` the repository URL or directory).
    pub fn new(identity: &str) -> ProjectScope {
        let digest = hex(&Sha256::digest(identity.as_bytes()));
        ProjectScope {
            identity: identity.to_owned(),
            key: digest[..32].to_owned(),
            fork_pull_request: None,
        }
    }

    /// The same project, for a build of pull request `number` from a fork.
    pub fn fork_pull_request(mut self, number: u64) -> ProjectScope {
        self.fork_pull_request = Some(number);
        self
    }

    pub fn identity(&self) -> &str {
        &self.identity
    }

    pub fn is_fork(&self) -> bool {
        self.fork_pull_request.is_some()
    }
}

/// This machine's store of one project's caches, workspaces and artifacts (not the
/// coordinator's database, `bosun_coordinator::store::Store`).
#[derive(Clone)]
pub struct LocalStore {
    root: PathBuf,
    scope: ProjectScope,
    /// The coordinator's store behind this one (protocol v2), for a claimed job: the local
    /// store is then its cache ([`remote`]).
    remote: Option<std::sync::Arc<dyn remote::Remote>>,
}

impl std::fmt::Debug for LocalStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("root", &self.root)
            .field("scope", &self.scope)
            .field("remote", &self.remote.is_some())
            .finish()
    }
}

#[derive(Serialize)]
struct ProjectFile<'a> {
    identity: &'a str,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn now_ns() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

impl LocalStore {
    /// The store at `root` as `scope`'s jobs see it. `root` is created mode 0700 (it holds
    /// other projects' caches; a loose existing one is tightened).
    pub fn open(root: impl Into<PathBuf>, scope: ProjectScope) -> Result<LocalStore, StoreError> {
        use std::os::unix::fs::PermissionsExt;
        let root = root.into();
        crate::private::create_private_dir(&root).map_err(io(&root))?;
        let meta = std::fs::metadata(&root).map_err(io(&root))?;
        if crate::private::loose_mode(&meta).is_some() {
            let mode = meta.permissions().mode();
            std::fs::set_permissions(&root, std::fs::Permissions::from_mode(mode & 0o700))
                .map_err(io(&root))?;
        }
        let store = LocalStore {
            root,
            scope,
            remote: None,
        };
        let project = store.project_dir();
        for d in [
            store.root.join("blobs/sha256"),
            store.root.join("tmp"),
            store.cache_dir_for_writes(),
            project.join("workspaces"),
            project.join("artifacts"),
        ] {
            std::fs::create_dir_all(&d).map_err(io(&d))?;
        }
        let about = project.join("project.json");
        if !about.exists() {
            let json = serde_json::to_vec(&ProjectFile {
                identity: &store.scope.identity,
            })
            .map_err(|e| StoreError::Corrupt {
                path: about.display().to_string(),
                message: e.to_string(),
            })?;
            std::fs::write(&about, json).map_err(io(&about))?;
        }
        Ok(store)
    }

    pub fn scope(&self) -> &ProjectScope {
        &self.scope
    }

    /// This store in front of a coordinator's (a claimed job's workspace, caches, artifacts
    /// and test results go there too).
    pub fn with_remote(mut self, remote: std::sync::Arc<dyn remote::Remote>) -> LocalStore {
        self.remote = Some(remote);
        self
    }

    /// The coordinator's store behind this one, if any.
    pub fn remote(&self) -> Option<&dyn remote::Remote> {
        self.remote.as_deref()
    }

    /// `projects/<scope>`: everything of this project but the blobs.
    fn project_dir(&self) -> PathBuf {
        self.root.join("projects").join(&self.scope.key)
    }

    /// Where this job's `save_cache` writes: the project's caches, or a forked pull
    /// request's own.
    fn cache_dir_for_writes(&self) -> PathBuf {
        match self.scope.fork_pull_request {
            None => self.project_dir().join("caches"),
            Some(n) => self
                .project_dir()
                .join("forks")
                .join(format!("pr-{n}"))
                .join("caches"),
        }
    }

    /// Where this job's `restore_cache` looks: the project's caches, and a forked pull
    /// request's own too.
    fn cache_dirs_for_reads(&self) -> Vec<PathBuf> {
        let mut dirs = vec![self.project_dir().join("caches")];
        if self.scope.is_fork() {
            dirs.push(self.cache_dir_for_writes());
        }
        dirs
    }

    /// `$BOSUN_STORE`, else `$XDG_CACHE_HOME/bosun` or `~/.cache/bosun`.
    pub fn default_root() -> PathBuf {
        if let Some(p) = std::env::var_os("BOSUN_STORE") {
            return PathBuf::from(p);
        }
        let base = std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
            .unwrap_or_else(std::env::temp_dir);
        base.join("bosun")
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn blob_path(&self, id: &BlobId) -> PathBuf {
        self.root.join("blobs/sha256").join(&id.0)
    }

    /// Stream `reader` into a blob; returns its id and size.
    pub fn put_blob(&self, mut reader: impl Read) -> Result<(BlobId, u64), StoreError> {
        let tmp_dir = self.root.join("tmp");
        let mut tmp = tempfile::NamedTempFile::new_in(&tmp_dir).map_err(io(&tmp_dir))?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 256 * 1024];
        let mut size = 0u64;
        loop {
            let n = reader.read(&mut buf).map_err(io(tmp.path()))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            tmp.write_all(&buf[..n]).map_err(io(tmp.path()))?;
            size += n as u64;
        }
        let id = BlobId(hex(&hasher.finalize()));
        let dest = self.blob_path(&id);
        if !dest.exists() {
            tmp.persist(&dest).map_err(|e| StoreError::Io {
                path: dest.display().to_string(),
                source: e.error,
            })?;
        }
        Ok((id, size))
    }

    fn cache_path(&self, key: &str) -> PathBuf {
        self.cache_dir_for_writes()
            .join(format!("{}.json", hex(&Sha256::digest(key.as_bytes()))))
    }

    /// Record a cache under `key`. Caches are immutable: an existing key is kept and `false`
    /// returned.
    pub fn save_cache(&self, key: &str, blob: BlobId, size: u64) -> Result<bool, StoreError> {
        let path = self.cache_path(key);
        if path.exists() {
            return Ok(false);
        }
        let entry = CacheEntry {
            key: key.to_owned(),
            blob,
            size,
            created_ns: now_ns(),
        };
        let json = serde_json::to_vec_pretty(&entry).map_err(|e| StoreError::Corrupt {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        let tmp_dir = self.root.join("tmp");
        let mut tmp = tempfile::NamedTempFile::new_in(&tmp_dir).map_err(io(&tmp_dir))?;
        tmp.write_all(&json).map_err(io(tmp.path()))?;
        // persist_noclobber: of two jobs saving the same key at once, the first one wins.
        match tmp.persist_noclobber(&path) {
            Ok(_) => Ok(true),
            Err(e) if e.error.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(StoreError::Io {
                path: path.display().to_string(),
                source: e.error,
            }),
        }
    }

    pub fn cache_exists(&self, key: &str) -> bool {
        self.cache_path(key).exists()
    }

    /// The most recent cache whose key starts with `prefix` (CircleCI's rule: even an exact
    /// match loses to a newer prefix match).
    pub fn find_cache(&self, prefix: &str) -> Result<Option<CacheEntry>, StoreError> {
        let mut best: Option<CacheEntry> = None;
        for dir in self.cache_dirs_for_reads() {
            let entries = match std::fs::read_dir(&dir) {
                Ok(e) => e,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io(&dir)(e)),
            };
            for entry in entries {
                let path = entry.map_err(io(&dir))?.path();
                if path.extension().and_then(|e| e.to_str()) != Some("json") {
                    continue;
                }
                let text = std::fs::read(&path).map_err(io(&path))?;
                let Ok(c) = serde_json::from_slice::<CacheEntry>(&text) else {
                    continue;
                };
                if c.key.starts_with(prefix)
                    && best.as_ref().is_none_or(|b| c.created_ns > b.created_ns)
                    && self.blob_path(&c.blob).exists()
                {
                    best = Some(c);
                }
            }
        }
        Ok(best)
    }

    fn layers_path(&self, run: &str) -> PathBuf {
        self.project_dir()
            .join("workspaces")
            .join(sanitize(run))
            .join("layers.jsonl")
    }

    pub fn add_workspace_layer(&self, run: &str, layer: &Layer) -> Result<(), StoreError> {
        let path = self.layers_path(run);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(io(parent))?;
        }
        let mut line = serde_json::to_vec(layer).map_err(|e| StoreError::Corrupt {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        line.push(b'\n');
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io(&path))?;
        f.write_all(&line).map_err(io(&path))?;
        f.sync_all().map_err(io(&path))
    }

    /// Layers of a workflow run's workspace, oldest first (later layers win on extraction).
    pub fn workspace_layers(&self, run: &str) -> Result<Vec<Layer>, StoreError> {
        let path = self.layers_path(run);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io(&path)(e)),
        };
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                serde_json::from_str(l).map_err(|e| StoreError::Corrupt {
                    path: path.display().to_string(),
                    message: e.to_string(),
                })
            })
            .collect()
    }

    /// The test timings of the job named `job` (its earlier runs' stored JUnit results),
    /// which `circleci tests split --split-by=timings` reads.
    pub fn timings_path(&self, job: &str) -> PathBuf {
        self.project_dir()
            .join("timings")
            .join(format!("{}.tsv", sanitize(job)))
    }

    pub fn artifacts_dir(&self, job_id: &str) -> PathBuf {
        self.project_dir().join("artifacts").join(sanitize(job_id))
    }
}

/// A blob name as the store makes them: 64 lower-case hex digits (a name from elsewhere
/// becomes a path only after this check).
pub fn is_blob_name(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// One path segment from an id: no separators, no `..`.
fn sanitize(s: &str) -> String {
    let cleaned: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    if cleaned.is_empty() || cleaned.chars().all(|c| c == '.') {
        "_".to_owned()
    } else {
        cleaned
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blobs_are_content_addressed_and_caches_immutable() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = LocalStore::open(dir.path(), ProjectScope::new("{p}")).expect("open");
        let (a, size) = store.put_blob(&b"hello"[..]).expect("put");
        assert_eq!(size, 5);
        assert_eq!(
            a.0,
            "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
        );
        let (b, _) = store.put_blob(&b"hello"[..]).expect("put again");
        assert_eq!(a, b);
        assert!(store.save_cache("deps-v1-abc", a.clone(), 5).expect("save"));
        let (other, _) = store.put_blob(&b"other"[..]).expect("put");
        assert!(!store
            .save_cache("deps-v1-abc", other.clone(), 5)
            .expect("immutable"));
        assert_eq!(
            store
                .find_cache("deps-v1-abc")
                .expect("find")
                .map(|c| c.blob),
            Some(a)
        );
        std::thread::sleep(std::time::Duration::from_millis(2));
        assert!(store
            .save_cache("deps-v1-abd", other.clone(), 5)
            .expect("save"));
        // The newer prefix match wins over the older exact match.
        assert_eq!(
            store.find_cache("deps-v1-").expect("find").map(|c| c.blob),
            Some(other)
        );
        assert_eq!(store.find_cache("nope").expect("find"), None);
    }

    #[test]
    fn caches_are_per_project_and_forks_write_their_own() {
        let dir = tempfile::tempdir().expect("tempdir");
        let open = |scope: ProjectScope| LocalStore::open(dir.path(), scope).expect("open");
        let base = open(ProjectScope::new("{widget}"));
        let fork = open(ProjectScope::new("{widget}").fork_pull_request(5));
        let other = open(ProjectScope::new("{gadget}"));
        let (blob, size) = fork.put_blob(&b"poison"[..]).expect("put");
        assert!(fork.save_cache("deps", blob.clone(), size).expect("save"));
        assert_eq!(base.find_cache("deps").expect("find"), None);
        assert_eq!(
            fork.find_cache("deps").expect("find").map(|c| c.blob),
            Some(blob)
        );
        std::thread::sleep(std::time::Duration::from_millis(2));
        let (clean, size) = base.put_blob(&b"clean"[..]).expect("put");
        assert!(base.save_cache("deps", clean.clone(), size).expect("save"));
        // The fork reads the project's caches (the newest match wins).
        assert_eq!(
            fork.find_cache("deps").expect("find").map(|c| c.blob),
            Some(clean)
        );
        assert_eq!(other.find_cache("deps").expect("find"), None);
        assert_ne!(base.artifacts_dir("j"), other.artifacts_dir("j"));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path())
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700);
    }

    #[test]
    fn workspace_layers_keep_their_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = LocalStore::open(dir.path(), ProjectScope::new("{p}")).expect("open");
        assert!(store.workspace_layers("run/1").expect("empty").is_empty());
        for job in ["build", "test"] {
            let (blob, size) = store.put_blob(job.as_bytes()).expect("put");
            store
                .add_workspace_layer(
                    "run/1",
                    &Layer {
                        job: job.into(),
                        blob,
                        size,
                    },
                )
                .expect("add");
        }
        let jobs: Vec<String> = store
            .workspace_layers("run/1")
            .expect("layers")
            .into_iter()
            .map(|l| l.job)
            .collect();
        assert_eq!(jobs, ["build", "test"]);
        assert_eq!(sanitize("../x"), ".._x");
    }
}

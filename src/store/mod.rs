//! The local store for caches, workspaces and artifacts: a directory, content-addressed.
//!
//! ```text
//! STORE/
//!   blobs/sha256/<hex>                 tar archives, named by the SHA-256 of their bytes
//!   caches/<sha256(key)>.json          {key, blob, size, created_ns}: immutable once written
//!   workspaces/<run>/layers.jsonl      one {job, blob, size} per persist_to_workspace, in order
//!   artifacts/<job-id>/<destination>/  stored files, as plain files
//! ```
//!
//! Blobs are written to a temporary file while hashed and renamed into place, so a reader
//! never sees half a blob and two writers of the same content agree. The coordinator will
//! later serve the same layout over the protocol.

pub mod junit;
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

#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
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

impl Store {
    pub fn open(root: impl Into<PathBuf>) -> Result<Store, StoreError> {
        let root = root.into();
        for sub in ["blobs/sha256", "caches", "workspaces", "artifacts", "tmp"] {
            let d = root.join(sub);
            std::fs::create_dir_all(&d).map_err(io(&d))?;
        }
        Ok(Store { root })
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
        self.root
            .join("caches")
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
        let dir = self.root.join("caches");
        let mut best: Option<CacheEntry> = None;
        for entry in std::fs::read_dir(&dir).map_err(io(&dir))? {
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
        Ok(best)
    }

    fn layers_path(&self, run: &str) -> PathBuf {
        self.root
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

    pub fn artifacts_dir(&self, job_id: &str) -> PathBuf {
        self.root.join("artifacts").join(sanitize(job_id))
    }
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
        let store = Store::open(dir.path()).expect("open");
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
    fn workspace_layers_keep_their_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("open");
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

//! The coordinator's blobs: content-addressed, kept by the object store ([`crate::objects`]:
//! the data directory by default, or an S3 bucket).
//!
//! ```text
//! DATA/blobs/                          mode 0700
//!   sha256/<hex>                       whole blobs (the local object store's `blobs/sha256/<hex>`)
//!   uploads/<project id>/<hex>.part    uploads in progress, one per project and blob
//! ```
//!
//! A blob arrives in pieces (at most [`MAX_BLOB_PIECE`] each, streamed to its `.part` file,
//! never held whole in memory); an interrupted upload resumes from the file's length. Once
//! the last byte is in, the file's SHA-256 must equal the name the agent gave, or the upload
//! is thrown away (422). Only then does it move into the object store (a rename, or a
//! streamed multipart upload to S3 that is completed only when whole) and the project is
//! recorded as holding it (the index, with the quota: [`super::store::BlobIndex`], in
//! [`super::store::blobs`]). Uploads in progress stay on this coordinator's disk.
//!
//! Uploads are per project even when another project holds the same bytes: a project gets
//! a blob only by sending all of it, so knowing a hash never reaches another project's data.
//!
//! Blobs are not collected yet: a blob stays when nothing names it any more.

pub mod api;

use bosun_protocol::MAX_BLOB_PIECE;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::objects::{blob_key, Objects};

/// The default per-project quota: 10 GiB.
pub const DEFAULT_QUOTA: u64 = 10 * 1024 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Objects(#[from] crate::objects::ObjectError),
    #[error("the blob's bytes hash to {actual}, not {expected}: the upload was corrupted and is discarded; send it again from the start")]
    DigestMismatch { expected: String, actual: String },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> BlobError + '_ {
    move |source| BlobError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A blob name: 64 lower-case hex digits.
pub fn is_blob_name(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// An upload in progress: the running hash of the `.part` file's first `hashed` bytes, kept
/// while pieces arrive in order so the last piece need not read the whole file again.
#[derive(Default)]
pub struct Upload {
    hasher: Option<(Sha256, u64)>,
}

type UploadKey = (i64, String);

/// Uploads in progress whose running hash is kept (a few hundred bytes each).
const MAX_UPLOADS_TRACKED: usize = 4096;

pub struct BlobFiles {
    root: PathBuf,
    /// Where whole blobs live.
    pub objects: Arc<dyn Objects>,
    /// Bytes of blobs each project may hold.
    pub quota: u64,
    /// One lock per upload in progress: two jobs of a project sending the same blob at once
    /// take turns.
    uploads: Mutex<HashMap<UploadKey, Arc<tokio::sync::Mutex<Upload>>>>,
}

fn private_dir(dir: &Path) -> Result<(), BlobError> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io(dir))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(io(dir))
}

impl BlobFiles {
    /// The blob files of the data directory `data` (created 0700), whole blobs in `objects`.
    pub fn open(
        data: &Path,
        quota: u64,
        objects: Arc<dyn Objects>,
    ) -> Result<BlobFiles, BlobError> {
        let root = data.join("blobs");
        for d in [root.clone(), root.join("uploads")] {
            private_dir(&d)?;
        }
        Ok(BlobFiles {
            root,
            objects,
            quota,
            uploads: Mutex::new(HashMap::new()),
        })
    }

    /// Where project `project`'s upload of `hex` gathers.
    pub fn part_path(&self, project: i64, hex: &str) -> PathBuf {
        self.root
            .join("uploads")
            .join(project.to_string())
            .join(format!("{hex}.part"))
    }

    /// The lock of project `project`'s upload of `hex`.
    pub fn upload(&self, project: i64, hex: &str) -> Arc<tokio::sync::Mutex<Upload>> {
        let mut map = self.uploads.lock().unwrap_or_else(|p| p.into_inner());
        // An entry lives from an upload's first piece to its end (`forget`), so the running
        // hash carries over from one piece's request to the next. Abandoned uploads are
        // forgotten when too many pile up (their hash is then read from the file).
        if map.len() >= MAX_UPLOADS_TRACKED {
            map.retain(|_, u| Arc::strong_count(u) > 1);
        }
        Arc::clone(map.entry((project, hex.to_owned())).or_default())
    }

    /// The upload of `hex` by `project` is over (whole, or discarded).
    pub fn forget(&self, project: i64, hex: &str) {
        let mut map = self.uploads.lock().unwrap_or_else(|p| p.into_inner());
        map.remove(&(project, hex.to_owned()));
    }

    /// Bytes of project `project`'s upload of `hex` received so far.
    pub fn received(&self, project: i64, hex: &str) -> Result<u64, BlobError> {
        let p = self.part_path(project, hex);
        match std::fs::metadata(&p) {
            Ok(m) => Ok(m.len()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
            Err(e) => Err(io(&p)(e)),
        }
    }

    /// The `.part` file, opened for appending (created 0600 with its directory).
    pub fn open_part(&self, project: i64, hex: &str) -> Result<std::fs::File, BlobError> {
        use std::os::unix::fs::OpenOptionsExt;
        let p = self.part_path(project, hex);
        if let Some(dir) = p.parent() {
            private_dir(dir)?;
        }
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&p)
            .map_err(io(&p))
    }

    /// The upload is whole: check its digest (with the running hash when it covers the whole
    /// file, else by reading it). On a mismatch the upload is removed. Blocks (it may read
    /// the file).
    pub fn verify(
        &self,
        project: i64,
        hex: &str,
        upload: &mut Upload,
        size: u64,
    ) -> Result<(), BlobError> {
        let part = self.part_path(project, hex);
        let actual = match upload.hasher.take() {
            Some((h, n)) if n == size => crate::hex(&h.finalize()),
            _ => hash_file(&part)?,
        };
        if actual != hex {
            let _ = std::fs::remove_file(&part);
            return Err(BlobError::DigestMismatch {
                expected: hex.to_owned(),
                actual,
            });
        }
        Ok(())
    }

    /// Move a verified upload into the object store, streamed; it is visible there only
    /// once whole. When the store already holds the blob (another project sent the same
    /// bytes) the upload is dropped.
    pub async fn publish(&self, project: i64, hex: &str) -> Result<(), BlobError> {
        let part = self.part_path(project, hex);
        let key = blob_key(hex);
        if self.objects.size(&key).await?.is_some() {
            let _ = tokio::fs::remove_file(&part).await;
            return Ok(());
        }
        self.objects.put_file(&key, &part).await?;
        Ok(())
    }

    /// Stream bytes `start..end` of the whole blob `hex`.
    pub async fn read(
        &self,
        hex: &str,
        start: u64,
        end: u64,
    ) -> Result<crate::objects::ByteStream, BlobError> {
        Ok(self.objects.read(&blob_key(hex), start, end).await?)
    }

    /// Drop a partial upload (a corrupt one, or one that can never finish).
    pub fn discard(&self, project: i64, hex: &str, upload: &mut Upload) {
        upload.hasher = None;
        let _ = std::fs::remove_file(self.part_path(project, hex));
    }
}

impl Upload {
    /// Bytes `data` were appended at `at`: extend the running hash when it reaches `at`, else
    /// drop it (the file is read at the end instead).
    pub fn appended(&mut self, at: u64, data: &[u8]) {
        let h = self.hasher.get_or_insert_with(|| (Sha256::new(), 0));
        if h.1 == at {
            h.0.update(data);
            h.1 += data.len() as u64;
        } else {
            self.hasher = None;
        }
    }

    /// Forget the running hash (the file changed under it, e.g. a write failed half way).
    pub fn reset(&mut self) {
        self.hasher = None;
    }
}

fn hash_file(path: &Path) -> Result<String, BlobError> {
    let mut f = std::fs::File::open(path).map_err(io(path))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = f.read(&mut buf).map_err(io(path))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(crate::hex(&h.finalize()))
}

/// Largest body one upload request may carry.
pub const PIECE_LIMIT: u64 = MAX_BLOB_PIECE;

/// `Range: bytes=N-` or `bytes=N-M` (one range; the only forms an agent sends) →
/// `(start, end exclusive)` within `size`. `None`: not satisfiable.
pub fn parse_range(header: &str, size: u64) -> Option<(u64, u64)> {
    let spec = header.trim().strip_prefix("bytes=")?;
    if spec.contains(',') {
        return None;
    }
    let (a, b) = spec.split_once('-')?;
    let (a, b) = (a.trim(), b.trim());
    if a.is_empty() {
        // A suffix: the last N bytes.
        let n: u64 = b.parse().ok()?;
        if n == 0 {
            return None;
        }
        return Some((size.saturating_sub(n), size));
    }
    let start: u64 = a.parse().ok()?;
    let end = if b.is_empty() {
        size
    } else {
        b.parse::<u64>().ok()?.saturating_add(1).min(size)
    };
    (start < end).then_some((start, end))
}

/// `10GiB`, `500MiB`, `2G`, `1048576` → bytes (binary units; `KB`/`MB`/`GB`/`TB` decimal).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let digits = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(digits);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("`{text}`: expected a size such as 500MiB, 10GiB or 1048576"))?;
    let mult: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kib" => 1024.0,
        "m" | "mib" => 1024f64.powi(2),
        "g" | "gib" => 1024f64.powi(3),
        "t" | "tib" => 1024f64.powi(4),
        "kb" => 1e3,
        "mb" => 1e6,
        "gb" => 1e9,
        "tb" => 1e12,
        _ => {
            return Err(format!(
                "`{text}`: unknown unit `{unit}` (use B, KiB, MiB, GiB, TiB)"
            ))
        }
    };
    let v = n * mult;
    if !v.is_finite() || v < 1.0 || v > u64::MAX as f64 {
        return Err(format!("`{text}`: out of range"));
    }
    Ok(v as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_and_sizes() {
        assert_eq!(parse_range("bytes=10-", 100), Some((10, 100)));
        assert_eq!(parse_range("bytes=10-19", 100), Some((10, 20)));
        assert_eq!(parse_range("bytes=-5", 100), Some((95, 100)));
        assert_eq!(parse_range("bytes=100-", 100), None);
        assert_eq!(parse_range("bytes=1-2,5-6", 100), None);
        assert_eq!(parse_range("lines=1-", 100), None);
        assert_eq!(parse_size("10GiB"), Ok(10 * 1024 * 1024 * 1024));
        assert_eq!(parse_size("1.5MiB"), Ok(1_572_864));
        assert_eq!(parse_size("2MB"), Ok(2_000_000));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("lots").is_err());
        assert!(parse_size("5 parsecs").is_err());
        assert!(is_blob_name(&"a".repeat(64)));
        assert!(!is_blob_name(&"A".repeat(64)));
        assert!(!is_blob_name("../etc"));
    }

    #[tokio::test]
    async fn a_whole_upload_moves_into_place_and_a_corrupt_one_is_discarded() {
        let d = tempfile::tempdir().expect("tempdir");
        let objects =
            Arc::new(crate::objects::local::LocalObjects::open(d.path()).expect("objects"));
        let files = BlobFiles::open(d.path(), DEFAULT_QUOTA, objects).expect("open");
        let data = b"hello blob";
        let hex = crate::sha256_hex(data);
        let mut up = Upload::default();
        use std::io::Write;
        let mut f = files.open_part(1, &hex).expect("part");
        f.write_all(&data[..4]).expect("write");
        up.appended(0, &data[..4]);
        // A later piece after a restart: no running hash, the file is read instead.
        let mut fresh = Upload::default();
        f.write_all(&data[4..]).expect("write");
        fresh.appended(4, &data[4..]);
        files
            .verify(1, &hex, &mut fresh, data.len() as u64)
            .expect("verify");
        files.publish(1, &hex).await.expect("publish");
        assert_eq!(
            std::fs::read(d.path().join("blobs/sha256").join(&hex)).expect("blob"),
            data
        );
        assert_eq!(files.received(1, &hex).expect("received"), 0);

        let wrong = "0".repeat(64);
        let mut f = files.open_part(2, &wrong).expect("part");
        f.write_all(data).expect("write");
        let mut up = Upload::default();
        up.appended(0, data);
        let e = files
            .verify(2, &wrong, &mut up, data.len() as u64)
            .expect_err("mismatch");
        assert!(matches!(e, BlobError::DigestMismatch { .. }), "{e}");
        assert!(!d.path().join("blobs/sha256").join(&wrong).exists());
        assert_eq!(files.received(2, &wrong).expect("received"), 0);
    }
}

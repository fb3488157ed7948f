//! Where the coordinator keeps whole objects: blobs (caches, workspaces, artifacts) and
//! finished job logs. One seam, [`Objects`], two implementations:
//!
//! - [`local::LocalObjects`], the default: files under the data directory, a key being a
//!   relative path (`blobs/sha256/<hex>`, `logs/<id>.log`), exactly where they always lay;
//! - [`s3::S3Objects`] (`--blob-store s3://bucket/prefix`): an S3-compatible bucket through
//!   `object_store`, signed requests, multipart uploads.
//!
//! An object is put whole from a local file, streamed, and becomes visible only once whole
//! (a rename; an S3 multipart upload completed, aborted on any error), so a reader never sees
//! half of one. Reads are ranges, streamed. Uploads in progress stay local (the blob files'
//! `uploads/`), and live logs stay with the store (SQLite: files; PostgreSQL: the
//! database): only what is finished moves here. See `docs/object-storage.md`.

pub mod local;
pub mod logs;
pub mod s3;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum ObjectError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The store answered with an error, or could not be reached. `place` names the bucket
    /// and endpoint (never a credential).
    #[error("object store {place}: {what} `{key}`: {detail}")]
    Store {
        place: String,
        what: &'static str,
        key: String,
        detail: String,
    },
    #[error("{0}")]
    Config(String),
}

/// Bytes of an object as they arrive.
pub type ByteStream = BoxStream<'static, std::io::Result<Bytes>>;

/// The blob and log store's objects. Keys are `/`-separated relative names of plain
/// components (the callers make them: [`blob_key`], [`log_key`]).
pub trait Objects: Send + Sync + 'static {
    /// Where the objects live, for messages: a directory, or `s3://bucket/prefix at URL`.
    fn describe(&self) -> String;
    /// True when objects are files under the data directory (finished logs then stay where
    /// they were written).
    fn is_local(&self) -> bool;
    /// Move the whole local file `file` in as `key`, streamed; visible only once whole. The
    /// file is gone afterwards on success, and left where it was on failure.
    fn put_file<'a>(
        &'a self,
        key: &'a str,
        file: &'a Path,
    ) -> BoxFuture<'a, Result<(), ObjectError>>;
    /// The object's size, `None` when there is none.
    fn size<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<u64>, ObjectError>>;
    /// Bytes `start..end` of the object, streamed (`end` at most its size).
    fn read<'a>(
        &'a self,
        key: &'a str,
        start: u64,
        end: u64,
    ) -> BoxFuture<'a, Result<ByteStream, ObjectError>>;
    /// Remove the object (none: not an error).
    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), ObjectError>>;
    /// Is the store reachable, the bucket there and our credentials good? Start-up asks once,
    /// so a wrong setting stops the coordinator with a message rather than failing each job.
    fn check(&self) -> BoxFuture<'_, Result<(), ObjectError>>;
}

/// The key of the blob named `hex` (its SHA-256).
pub fn blob_key(hex: &str) -> String {
    format!("blobs/sha256/{hex}")
}

/// The key of job `id`'s finished log.
pub fn log_key(id: i64) -> String {
    format!("logs/{id}.log")
}

/// The key of job `id`'s finished log's line index (see [`logs`]).
pub fn log_lines_key(id: i64) -> String {
    format!("logs/{id}.lines")
}

/// `--blob-store` and the settings that go with it (`--s3-*`).
#[derive(Debug, Clone, Default)]
pub struct StoreSettings {
    /// `None`: the data directory. Else `s3://bucket[/prefix]`.
    pub location: Option<String>,
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub credentials_file: Option<PathBuf>,
}

/// The object store the settings name; the data directory's when none.
pub async fn open(settings: &StoreSettings, data: &Path) -> Result<Arc<dyn Objects>, ObjectError> {
    match settings.location.as_deref() {
        None | Some("") => Ok(Arc::new(local::LocalObjects::open(data)?)),
        Some(url) => {
            let s = s3::S3Objects::open(url, settings)?;
            s.check().await?;
            Ok(Arc::new(s))
        }
    }
}

/// May a coordinator start with these settings? On PostgreSQL (`database`) several
/// coordinators share the store, and each hands out blobs and finished logs that any other
/// may be asked for: they must be in a store every one of them reaches — a bucket, or a
/// data directory they share (`shared_data`, the operator's word: it cannot be seen from
/// here). SQLite is one coordinator: its data directory is enough.
pub fn check_placement(
    database: bool,
    blob_store: Option<&str>,
    shared_data: bool,
) -> Result<(), ObjectError> {
    if !database || shared_data || blob_store.is_some_and(|b| !b.is_empty()) {
        return Ok(());
    }
    Err(ObjectError::Config(
        "--database keeps the queue and running logs where every coordinator sees them, but \
         blobs and finished logs would stay in this data directory, which other coordinators \
         on the database do not see: give --blob-store s3://BUCKET[/PREFIX] (see \
         docs/object-storage.md), or --shared-data when every coordinator on this database \
         uses this same data directory (a shared mount) or this one runs alone"
            .into(),
    ))
}

/// `s3://bucket/some/prefix` → (`bucket`, `some/prefix`).
pub fn parse_s3_url(url: &str) -> Result<(String, String), ObjectError> {
    let rest = url.strip_prefix("s3://").ok_or_else(|| {
        ObjectError::Config(format!(
            "--blob-store `{}`: expected s3://BUCKET or s3://BUCKET/PREFIX (leave it out for \
             the data directory)",
            crate::printable(url)
        ))
    })?;
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    let bucket_ok = (3..=63).contains(&bucket.len())
        && bucket
            .bytes()
            .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.'));
    if !bucket_ok {
        return Err(ObjectError::Config(format!(
            "--blob-store `{}`: bucket `{}` is not an S3 bucket name (3 to 63 of a-z, 0-9, \
             `-`, `.`)",
            crate::printable(url),
            crate::printable(bucket)
        )));
    }
    let prefix = prefix.trim_matches('/');
    if prefix
        .split('/')
        .any(|c| c == "." || c == ".." || c.chars().any(crate::is_unsafe_char))
        || prefix.contains("//")
    {
        return Err(ObjectError::Config(format!(
            "--blob-store `{}`: the prefix must be plain names separated by `/`",
            crate::printable(url)
        )));
    }
    Ok((bucket.to_owned(), prefix.to_owned()))
}

#[cfg(test)]
mod tests;

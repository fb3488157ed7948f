//! Blobs and finished logs from the data directory into an object store (`--blobs-to`),
//! in the layout the coordinator reads them from (docs/object-storage.md): blobs as
//! `blobs/sha256/<hex>`, each finished job's log as `logs/<id>.log` with its line index.
//!
//! The source stays as it was: each file is hard-linked (copied where links are not
//! possible) into a scratch directory and that link is what moves in, so the data directory
//! keeps its files until the operator removes them. An object already there with the
//! file's size is not sent again, so a migration that stopped half-way resumes where it
//! was. Every object's size is read back and compared with its file's.

use super::MigrateError;
use crate::objects::{blob_key, log_key, log_lines_key, logs::LogArchive, Objects};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// What moved (or was there already) and its bytes.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Moved {
    pub files: u64,
    pub bytes: u64,
    /// Of those, already in the store with their size (a resumed migration).
    pub already: u64,
}

/// The scratch directory the links go into (inside the data directory: a hard link needs
/// the same filesystem).
const SCRATCH: &str = "migrate-scratch";

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> MigrateError + '_ {
    move |source| MigrateError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn objects_err(e: crate::objects::ObjectError) -> MigrateError {
    MigrateError::Objects(e.to_string())
}

/// Link (or copy) `from` to `to`.
fn link(from: &Path, to: &Path) -> Result<(), MigrateError> {
    let _ = std::fs::remove_file(to);
    if std::fs::hard_link(from, to).is_err() {
        std::fs::copy(from, to).map_err(io(from))?;
    }
    Ok(())
}

fn scratch(data: &Path) -> Result<PathBuf, MigrateError> {
    let dir = data.join(SCRATCH);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join(crate::store::LOGS_DIR)).map_err(io(&dir))?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).map_err(io(&dir))?;
    }
    Ok(dir)
}

async fn check_size(objects: &dyn Objects, key: &str, want: u64) -> Result<(), MigrateError> {
    match objects.size(key).await.map_err(objects_err)? {
        Some(n) if n == want => Ok(()),
        got => Err(MigrateError::Objects(format!(
            "{key} in {}: {} after the copy, the file has {want} bytes",
            objects.describe(),
            got.map(|n| format!("{n} bytes"))
                .unwrap_or_else(|| "absent".into())
        ))),
    }
}

/// Every whole blob of `data` (`blobs/sha256/<hex>`) into `objects`.
pub async fn blobs(data: &Path, objects: &Arc<dyn Objects>) -> Result<Moved, MigrateError> {
    let dir = data.join("blobs").join("sha256");
    let mut moved = Moved::default();
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(moved),
        Err(e) => return Err(io(&dir)(e)),
    };
    let scratch = scratch(data)?;
    for e in entries {
        let e = e.map_err(io(&dir))?;
        let name = e.file_name();
        let Some(hex) = name.to_str() else { continue };
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            continue;
        }
        let file = e.path();
        let size = std::fs::metadata(&file).map_err(io(&file))?.len();
        let key = blob_key(hex);
        moved.files += 1;
        moved.bytes += size;
        if objects.size(&key).await.map_err(objects_err)? == Some(size) {
            moved.already += 1;
            continue;
        }
        let tmp = scratch.join(hex);
        link(&file, &tmp)?;
        objects.put_file(&key, &tmp).await.map_err(objects_err)?;
        check_size(objects.as_ref(), &key, size).await?;
    }
    let _ = std::fs::remove_dir_all(&scratch);
    Ok(moved)
}

/// The logs of the finished jobs `jobs` still in `data/logs` into `objects`, each with its
/// line index (as the coordinator moves a log when its job ends). A job without a file
/// (its log already in a bucket) is skipped.
pub async fn logs(
    data: &Path,
    objects: &Arc<dyn Objects>,
    jobs: &[i64],
) -> Result<Moved, MigrateError> {
    let logs = data.join(crate::store::LOGS_DIR);
    let scratch = scratch(data)?;
    let archive = LogArchive::new(Arc::clone(objects), &scratch);
    let mut moved = Moved::default();
    for &id in jobs {
        let file = logs.join(format!("{id}.log"));
        let size = match std::fs::metadata(&file) {
            Ok(m) => m.len(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io(&file)(e)),
        };
        moved.files += 1;
        moved.bytes += size;
        let key = log_key(id);
        if objects.size(&key).await.map_err(objects_err)? == Some(size)
            && objects
                .size(&log_lines_key(id))
                .await
                .map_err(objects_err)?
                .is_some()
        {
            moved.already += 1;
            continue;
        }
        link(
            &file,
            &scratch
                .join(crate::store::LOGS_DIR)
                .join(format!("{id}.log")),
        )?;
        archive.archive_file(id).await.map_err(objects_err)?;
        check_size(objects.as_ref(), &key, size).await?;
    }
    let _ = std::fs::remove_dir_all(&scratch);
    Ok(moved)
}

/// The files of `dir` and their bytes (what stays in the data directory without
/// `--blobs-to`).
pub fn on_disk(dir: &Path, suffix: &str) -> Moved {
    let mut m = Moved::default();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let is_file = e.file_type().is_ok_and(|t| t.is_file());
            if is_file && e.file_name().to_string_lossy().ends_with(suffix) {
                m.files += 1;
                m.bytes += e.metadata().map(|m| m.len()).unwrap_or(0);
            }
        }
    }
    m
}

//! Finished logs as objects. A running job's log is kept by the store (offset-idempotent
//! appends): on SQLite a file under the data directory's `logs/`, on PostgreSQL chunks in
//! the database that every replica reads ([`crate::store::LogStore::live_logs_shared`]).
//! Once its job is final the log becomes one object of the blob store, `logs/<id>.log`:
//!
//! - a file moves whole into the object store and leaves the disk (with the data
//!   directory's store nothing moves: the file already is the object);
//! - chunks are copied into a file of this replica, which goes into the object store, and
//!   only then are the chunks deleted. A crash in between leaves both, equal (a finished
//!   log no longer changes): the sweep copies it again and deletes the chunks. A copy that
//!   finds fewer bytes than the job committed (another replica moved the log meanwhile) is
//!   not put, so an object is never shortened.
//!
//! Readers go through [`LogArchive`]: it asks the store first (the file, the chunks), and
//! reads from the object what the store no longer has. A file that moves while a reader
//! holds it open is still read whole (an open file outlives its name), a statement reads a
//! log's chunks all or none, and the object is whole before either goes, so a reader never
//! falls between the two.
//!
//! A log's page numbers its lines from the log's start, so it needs the count of newlines
//! before each part it shows. Over a local file that is a fast scan; over an object it
//! would fetch the whole log for every page view. So a log moves with a line index beside
//! it (`logs/<id>.lines`: the newlines before each [`LINE_BLOCK`] boundary, one decimal
//! number a line), and a count then reads at most one block per point.

use super::{log_key, log_lines_key, ObjectError, Objects};
use crate::error::{CoordError, Result};
use crate::store::{Backend, ServedStore};
use futures_util::TryStreamExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// How often finished logs still on disk (a job that ended through a lease's expiry, a
/// cancel, or before a restart) are looked for and moved.
pub const SWEEP_EVERY: Duration = Duration::from_secs(30);

/// How much of a log a copy into the object store reads from the store at a time.
const COPY_PIECE: u64 = 4 << 20;

/// A copy or index file untouched this long was left by a replica that died mid-move.
const COPY_STALE: Duration = Duration::from_secs(600);

/// Numbers this process's copies apart (see [`LogArchive::archive`]).
static COPIES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// The line index's step: a count reads at most this much of a finished log per point.
pub const LINE_BLOCK: u64 = 1 << 20;

/// The newlines before each multiple of [`LINE_BLOCK`] within a file of those bytes, from 0
/// (always 0) up to its last whole or partial block's start.
pub fn line_index(mut r: impl std::io::Read) -> std::io::Result<Vec<u64>> {
    let mut out = vec![0u64];
    let mut buf = vec![0u8; LINE_BLOCK as usize];
    let mut count = 0u64;
    loop {
        // A block whole (read may return less than asked).
        let mut n = 0;
        while n < buf.len() {
            match r.read(&mut buf[n..])? {
                0 => break,
                k => n += k,
            }
        }
        count += memchr::memchr_iter(b'\n', &buf[..n]).count() as u64;
        if n < buf.len() {
            return Ok(out);
        }
        out.push(count);
    }
}

/// A line index as written by [`LogArchive::archive`]; `None` when it is not one (then the
/// reader counts the slow way).
fn parse_line_index(text: &[u8]) -> Option<Vec<u64>> {
    let v: Option<Vec<u64>> = std::str::from_utf8(text)
        .ok()?
        .lines()
        .map(|l| l.parse().ok())
        .collect();
    v.filter(|v| v.first() == Some(&0) && v.windows(2).all(|w| w[0] <= w[1]))
}

pub struct LogArchive {
    objects: Arc<dyn Objects>,
    logs_dir: PathBuf,
    /// The runtime the store's reads (on blocking threads) wait for the object store on.
    runtime: tokio::runtime::Handle,
}

fn objects_err(e: ObjectError) -> CoordError {
    CoordError::Invalid(e.to_string())
}

impl LogArchive {
    /// Finished logs of the data directory `data` kept in `objects`. Call within the runtime.
    pub fn new(objects: Arc<dyn Objects>, data: &std::path::Path) -> LogArchive {
        LogArchive {
            objects,
            logs_dir: data.join(crate::store::LOGS_DIR),
            runtime: tokio::runtime::Handle::current(),
        }
    }

    fn file(&self, id: i64) -> PathBuf {
        self.logs_dir.join(format!("{id}.log"))
    }

    /// Move job `id`'s log (its job is final) into the object store. `false`: nothing to
    /// move (the local store with file logs, already moved, or not final).
    pub async fn archive(
        &self,
        store: &Arc<dyn ServedStore>,
        id: i64,
    ) -> std::result::Result<bool, ObjectError> {
        if store.backend().live_logs_shared() {
            return self.archive_chunks(store, id).await;
        }
        self.archive_file(id).await
    }

    /// Move job `id`'s log file of the data directory (SQLite's running logs, and what
    /// `migrate` moves) into the object store. `false`: nothing to move (the local store,
    /// or no file).
    pub async fn archive_file(&self, id: i64) -> std::result::Result<bool, ObjectError> {
        if self.objects.is_local() {
            return Ok(false);
        }
        let file = self.file(id);
        if tokio::fs::metadata(&file).await.is_err() {
            return Ok(false);
        }
        self.put_with_index(id, &file).await?;
        Ok(true)
    }

    /// Put the whole log in `file` as job `id`'s log object, its line index first: a log
    /// object is never there without its index (an index without its log, after a failed
    /// move, is written again with the next try). `file` is gone afterwards.
    async fn put_with_index(
        &self,
        id: i64,
        file: &std::path::Path,
    ) -> std::result::Result<(), ObjectError> {
        let index_file = file.with_extension("lines.tmp");
        let (f, out) = (file.to_path_buf(), index_file.clone());
        tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            let index = line_index(std::io::BufReader::new(std::fs::File::open(&f)?))?;
            let text: String = index.iter().map(|n| format!("{n}\n")).collect();
            std::fs::write(&out, text)
        })
        .await
        .map_err(|e| ObjectError::Config(format!("indexing job {id}'s log: {e}")))?
        .map_err(|source| ObjectError::Io {
            path: file.to_path_buf(),
            source,
        })?;
        self.objects
            .put_file(&log_lines_key(id), &index_file)
            .await?;
        self.objects.put_file(&log_key(id), file).await?;
        tracing::debug!(job = id, "log moved to {}", self.objects.describe());
        Ok(())
    }

    /// A finished job's log kept by the store (chunks every replica reads) into one object:
    /// copied to a file of this replica, put, then dropped from the store.
    async fn archive_chunks(
        &self,
        store: &Arc<dyn ServedStore>,
        id: i64,
    ) -> std::result::Result<bool, ObjectError> {
        let s = Arc::clone(store);
        let dir = self.logs_dir.clone();
        // A name of this process's own: replicas sharing a data directory never write one
        // file.
        let tmp = dir.join(format!(
            "{id}.{}.{}.copy",
            std::process::id(),
            COPIES.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let path = tmp.clone();
        let copied = tokio::task::spawn_blocking(move || -> std::result::Result<bool, String> {
            use std::io::Write;
            let b = s.backend();
            let Some(job) = b.job(id).map_err(|e| e.to_string())? else {
                return Ok(false);
            };
            if !job.is_final() {
                return Ok(false);
            }
            let end = job.log_bytes;
            std::fs::DirBuilder::new()
                .recursive(true)
                .create(&dir)
                .map_err(|e| format!("{}: {e}", dir.display()))?;
            let mut f = std::fs::OpenOptions::new()
                .create_new(true)
                .write(true)
                .mode(0o600)
                .open(&path)
                .map_err(|e| format!("{}: {e}", path.display()))?;
            let mut at = 0u64;
            while at < end {
                let piece = b
                    .read_log(id, at, end.min(at + COPY_PIECE))
                    .map_err(|e| e.to_string())?;
                if piece.is_empty() {
                    break;
                }
                f.write_all(&piece)
                    .map_err(|e| format!("{}: {e}", path.display()))?;
                at += piece.len() as u64;
            }
            if at < end {
                // Moved by another replica meanwhile (its chunks are gone): nothing to do,
                // and what was read is not the whole log.
                return Ok(false);
            }
            Ok(true)
        })
        .await
        .map_err(|e| ObjectError::Config(format!("copying job {id}'s log: {e}")))?
        .map_err(|e| ObjectError::Config(format!("copying job {id}'s log: {e}")));
        let copied = match copied {
            Ok(true) => self.put_with_index(id, &tmp).await.map(|()| true),
            other => other,
        };
        // Left over on a failure (put_file keeps its file then) or when nothing was put.
        let _ = tokio::fs::remove_file(&tmp).await;
        let _ = tokio::fs::remove_file(tmp.with_extension("lines.tmp")).await;
        if !copied? {
            return Ok(false);
        }
        let s = Arc::clone(store);
        tokio::task::spawn_blocking(move || s.backend().drop_finished_log(id))
            .await
            .map_err(|e| ObjectError::Config(format!("dropping job {id}'s chunks: {e}")))?
            .map_err(|e| ObjectError::Config(format!("dropping job {id}'s chunks: {e}")))?;
        Ok(true)
    }

    /// Remove copies a replica left behind when it died mid-move ([`COPY_STALE`] without a
    /// write: no copy in progress is that slow).
    fn clear_stale_copies(&self) {
        let Ok(dir) = std::fs::read_dir(&self.logs_dir) else {
            return;
        };
        for e in dir.filter_map(|e| e.ok()) {
            let name = e.file_name();
            let Some(name) = name.to_str() else { continue };
            if !(name.ends_with(".copy") || name.ends_with(".lines.tmp")) {
                continue;
            }
            let stale = e
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age >= COPY_STALE);
            if stale {
                if let Err(err) = std::fs::remove_file(e.path()) {
                    tracing::warn!("{}: {err}", e.path().display());
                }
            }
        }
    }

    /// Move every finished job's log the store still keeps; how many moved.
    pub async fn sweep(&self, store: Arc<dyn ServedStore>) -> usize {
        if self.objects.is_local() && !store.backend().live_logs_shared() {
            return 0;
        }
        self.clear_stale_copies();
        let s = Arc::clone(&store);
        let ids = match tokio::task::spawn_blocking(move || s.backend().finished_live_logs()).await
        {
            Ok(Ok(ids)) => ids,
            Ok(Err(e)) => {
                tracing::warn!("looking for finished logs to move: {e}");
                return 0;
            }
            Err(_) => return 0,
        };
        let mut moved = 0;
        for id in ids {
            match self.archive(&store, id).await {
                Ok(true) => moved += 1,
                Ok(false) => {}
                Err(e) => tracing::warn!(job = id, "moving the finished log: {e}"),
            }
        }
        moved
    }

    /// Sweep now and every [`SWEEP_EVERY`] until `stop`.
    pub fn spawn_sweeper(
        self: Arc<Self>,
        store: Arc<dyn ServedStore>,
        stop: tokio_util::sync::CancellationToken,
    ) {
        if self.objects.is_local() && !store.backend().live_logs_shared() {
            return;
        }
        tokio::spawn(async move {
            loop {
                let n = self.sweep(Arc::clone(&store)).await;
                if n > 0 {
                    tracing::info!("moved {n} finished logs to {}", self.objects.describe());
                }
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(SWEEP_EVERY) => {}
                }
            }
        });
    }

    /// Bytes `from..end` of the log's object (fewer if it is shorter); empty when none.
    /// Blocks: call from a blocking thread (the store's calls run on one).
    fn read_object(&self, id: i64, from: u64, end: u64) -> Result<Vec<u8>> {
        self.read_key(&log_key(id), from, end)
    }

    /// Bytes `from..end` of object `key` (fewer if it is shorter); empty when none.
    fn read_key(&self, key: &str, from: u64, end: u64) -> Result<Vec<u8>> {
        if from >= end {
            return Ok(Vec::new());
        }
        self.runtime.block_on(async {
            // `end` is at most the committed length, which is the object's size: one ranged
            // GET, no HEAD first. Only when it fails is the object looked for.
            let mut s = match self.objects.read(key, from, end).await {
                Ok(s) => s,
                Err(e) => {
                    return match self.objects.size(key).await.map_err(objects_err)? {
                        None => Ok(Vec::new()),
                        Some(_) => Err(objects_err(e)),
                    }
                }
            };
            let mut out = Vec::with_capacity((end - from) as usize);
            while let Some(piece) = s
                .try_next()
                .await
                .map_err(|e| CoordError::Invalid(format!("reading {key}: {e}")))?
            {
                out.extend_from_slice(&piece);
            }
            Ok(out)
        })
    }

    /// What the file lacked of `from..want`, from the object.
    fn fill(
        &self,
        s: &dyn Backend,
        id: i64,
        from: u64,
        want: u64,
        mut got: Vec<u8>,
    ) -> Result<Vec<u8>> {
        let have = from + got.len() as u64;
        if have >= want {
            return Ok(got);
        }
        // A file log is the object with the data directory's store, and while it exists.
        if !s.live_logs_shared() && (self.objects.is_local() || self.file(id).exists()) {
            return Ok(got);
        }
        got.extend(self.read_object(id, have, want)?);
        Ok(got)
    }

    /// [`crate::store::LogStore::log_piece`], finished logs included.
    pub fn log_piece(
        &self,
        s: &dyn Backend,
        id: i64,
        from: u64,
        max: u64,
    ) -> Result<Option<(Vec<u8>, u64)>> {
        let Some((bytes, end)) = s.log_piece(id, from, max)? else {
            return Ok(None);
        };
        let want = end.min(from.saturating_add(max));
        Ok(Some((self.fill(s, id, from, want, bytes)?, end)))
    }

    /// [`crate::store::LogStore::read_log`], finished logs included.
    pub fn read_log(&self, s: &dyn Backend, id: i64, from: u64, end: u64) -> Result<Vec<u8>> {
        let bytes = s.read_log(id, from, end)?;
        self.fill(s, id, from, end, bytes)
    }

    /// Counts through the log's line index, reading at most one block per point; `None`
    /// when the log has no usable index (moved before indexes were written).
    fn newlines_by_index(&self, id: i64, points: &[u64]) -> Result<Option<Vec<u64>>> {
        let key = log_lines_key(id);
        let Some(size) = self
            .runtime
            .block_on(self.objects.size(&key))
            .map_err(objects_err)?
        else {
            return Ok(None);
        };
        // An index is ~8 bytes a MiB of log; anything much larger is not one of ours.
        if size > 1 << 20 {
            return Ok(None);
        }
        let Some(index) = parse_line_index(&self.read_key(&key, 0, size)?) else {
            return Ok(None);
        };
        let Some(log_size) = self
            .runtime
            .block_on(self.objects.size(&log_key(id)))
            .map_err(objects_err)?
        else {
            return Ok(None);
        };
        let mut out = Vec::with_capacity(points.len());
        for &p in points {
            let p = p.min(log_size);
            let block = (p / LINE_BLOCK) as usize;
            let Some(&before) = index.get(block) else {
                return Ok(None);
            };
            let start = block as u64 * LINE_BLOCK;
            let part = self.read_object(id, start, p)?;
            out.push(before + memchr::memchr_iter(b'\n', &part).count() as u64);
        }
        Ok(Some(out))
    }

    /// [`crate::store::LogStore::newlines_before`], finished logs included: one pass over
    /// the object up to the largest point.
    pub fn newlines_before(&self, s: &dyn Backend, id: i64, points: &[u64]) -> Result<Vec<u64>> {
        if s.live_logs_shared() {
            // A running job's log is the store's; a finished one's is the object once there
            // (it is whole before the store drops its copy).
            if s.job(id)?.is_none_or(|j| !j.is_final()) {
                return s.newlines_before(id, points);
            }
        } else if self.objects.is_local() || self.file(id).exists() {
            return s.newlines_before(id, points);
        }
        if let Some(counts) = self.newlines_by_index(id, points)? {
            return Ok(counts);
        }
        let key = log_key(id);
        if s.live_logs_shared()
            && self
                .runtime
                .block_on(self.objects.size(&key))
                .map_err(objects_err)?
                .is_none()
        {
            return s.newlines_before(id, points);
        }
        let upto = points.iter().copied().max().unwrap_or(0);
        self.runtime.block_on(async {
            let Some(size) = self.objects.size(&key).await.map_err(objects_err)? else {
                return Ok(vec![0; points.len()]);
            };
            let mut stream = self
                .objects
                .read(&key, 0, upto.min(size))
                .await
                .map_err(objects_err)?;
            // Newline offsets would be as many as the lines; counts per sorted point instead.
            let mut order: Vec<usize> = (0..points.len()).collect();
            order.sort_by_key(|&i| points[i]);
            let mut out = vec![0u64; points.len()];
            let (mut pos, mut count, mut next) = (0u64, 0u64, 0usize);
            while let Some(piece) = stream
                .try_next()
                .await
                .map_err(|e| CoordError::Invalid(format!("reading job {id}'s log: {e}")))?
            {
                let mut at = 0usize;
                while next < order.len() && points[order[next]] <= pos + piece.len() as u64 {
                    let cut = (points[order[next]] - pos) as usize;
                    count += memchr::memchr_iter(b'\n', &piece[at..cut]).count() as u64;
                    at = cut;
                    out[order[next]] = count;
                    next += 1;
                }
                count += memchr::memchr_iter(b'\n', &piece[at..]).count() as u64;
                pos += piece.len() as u64;
            }
            for &i in &order[next..] {
                out[i] = count;
            }
            Ok(out)
        })
    }
}

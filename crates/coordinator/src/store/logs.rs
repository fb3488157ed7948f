//! Reading job logs and events (the pages, live streams and the CLI). Where a log's bytes
//! lie is each backend's own (SQLite: a file beside the database; PostgreSQL: chunks,
//! `pg/logs.rs`), read through [`LogStore::read_log`]; the committed length and the events
//! are rows, read once for both ([`SqlStore`]).

use super::db::{params, OptionalExtension, SqlStore};
use super::log_store::LogStore;
use super::*;

impl Store {
    /// Committed log bytes from `from` to the end, without the trait in scope (tests and
    /// benches read a store they opened so).
    pub fn log_from(&self, id: i64, from: u64) -> Result<Vec<u8>> {
        log_from(self, id, from)
    }

    /// Events from sequence number `from`, as [`Store::log_from`] is read.
    pub fn events_from(&self, id: i64, from: u64) -> Result<Vec<(u64, JobEvent)>> {
        events_from(self, id, from)
    }

    /// Bytes `from..end` of a job's log file (fewer if the file is shorter), `end` being at
    /// most the committed length the caller read. No database access.
    pub(super) fn read_log(&self, id: i64, from: u64, end: u64) -> Result<Vec<u8>> {
        use std::os::unix::fs::FileExt;
        let path = log_path(&self.logs, id);
        let f = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_err(&path)(e)),
        };
        let len = f.metadata().map_err(io_err(&path))?.len();
        let end = end.min(len);
        if from >= end {
            return Ok(Vec::new());
        }
        let mut buf = vec![0u8; (end - from) as usize];
        f.read_exact_at(&mut buf, from).map_err(io_err(&path))?;
        Ok(buf)
    }

    /// SHA-256 of bytes `0..end` of a job's log file, and how many bytes it covered.
    pub(super) fn log_digest(&self, id: i64, end: u64) -> Result<(String, u64)> {
        use sha2::{Digest, Sha256};
        use std::io::Read;
        let path = log_path(&self.logs, id);
        let mut sha = Sha256::new();
        let mut n = 0u64;
        match File::open(&path) {
            Ok(f) => {
                let mut r = f.take(end);
                let mut buf = vec![0u8; 1 << 20];
                loop {
                    let k = r.read(&mut buf).map_err(io_err(&path))?;
                    if k == 0 {
                        break;
                    }
                    sha.update(&buf[..k]);
                    n += k as u64;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(&path)(e)),
        }
        Ok((crate::text::hex(&sha.finalize()), n))
    }

    /// Make a job's log file durable (before its final status commits).
    pub(super) fn sync_log(&self, id: i64) -> Result<()> {
        let path = log_path(&self.logs, id);
        match File::open(&path) {
            Ok(f) => f.sync_all().map_err(io_err(&path))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(&path)(e)),
        }
        // The file's directory entry too: it was created without a sync.
        File::open(&self.logs)
            .and_then(|d| d.sync_all())
            .map_err(io_err(&self.logs))
    }

    /// Finished jobs whose log file is still in the data directory's `logs/` (with the
    /// data directory's object store, every finished log: the file is the object).
    pub(super) fn finished_live_logs(&self) -> Result<Vec<i64>> {
        let Ok(dir) = std::fs::read_dir(&self.logs) else {
            return Ok(Vec::new());
        };
        let ids: Vec<i64> = dir
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().to_str()?.strip_suffix(".log")?.parse().ok())
            .collect();
        let mut out = Vec::new();
        for id in ids {
            if self.job(id)?.is_some_and(|j| j.is_final()) {
                out.push(id);
            }
        }
        out.sort_unstable();
        Ok(out)
    }

    /// Forget a job's log (a re-queued attempt starts over).
    pub(super) fn drop_log(&self, id: i64) {
        self.drop_times(id);
        let path = log_path(&self.logs, id);
        if let Err(e) = std::fs::remove_file(&path) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!("{}: {e}", path.display());
            }
        }
    }
}

/// Committed log bytes from `from` to the end.
pub(super) fn log_from(s: &(impl SqlStore + LogStore), id: i64, from: u64) -> Result<Vec<u8>> {
    let Some(end) = log_bytes(s, id)? else {
        return Ok(Vec::new());
    };
    s.read_log(id, from, end)
}

/// At most `max` committed log bytes from `from`, and the committed length (`None`: no
/// such job). Pages and live streams read big logs this way, piece by piece.
pub(super) fn log_piece(
    s: &(impl SqlStore + LogStore),
    id: i64,
    from: u64,
    max: u64,
) -> Result<Option<(Vec<u8>, u64)>> {
    let Some(end) = log_bytes(s, id)? else {
        return Ok(None);
    };
    let upto = end.min(from.saturating_add(max));
    Ok(Some((s.read_log(id, from, upto)?, end)))
}

/// The committed length of job `id`'s log (`None`: no such job).
fn log_bytes(s: &impl SqlStore, id: i64) -> Result<Option<u64>> {
    s.read(|conn| {
        let end: Option<i64> = conn
            .query_row("SELECT log_bytes FROM jobs WHERE id = ?1", [id], |r| {
                r.get(0)
            })
            .optional()?;
        Ok(end.map(|n| n as u64))
    })
}

/// Events from sequence number `from`.
pub(super) fn events_from(s: &impl SqlStore, id: i64, from: u64) -> Result<Vec<(u64, JobEvent)>> {
    let rows = s.read(|conn| {
        Ok(conn.query_map(
            "SELECT seq, json FROM job_events WHERE job_id = ?1 AND seq >= ?2 ORDER BY seq",
            params![id, from as i64],
            |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)),
        )?)
    })?;
    let mut out = Vec::with_capacity(rows.len());
    for (seq, json) in rows {
        // Events were validated on the way in; one that no longer parses (an older
        // schema) is skipped rather than breaking the page.
        if let Ok(ev) = serde_json::from_str(&json) {
            out.push((seq as u64, ev));
        }
    }
    Ok(out)
}

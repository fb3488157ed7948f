//! When each part of a job's log arrived: a compact index beside the log
//! (`logs/<id>.times`), one 16-byte record (log offset, ms since the epoch; little-endian) per
//! second in which bytes arrived — not a row per line. A line's time is that of the last
//! record at or before its first byte, so it is exact to the second. The page shows it on
//! demand (per-line timestamps).
//!
//! Written after the append commits, without fsync: after a crash of the host a log may have
//! fewer times than bytes (its last lines show the last time known), never wrong ones.

use super::*;

const RECORD: u64 = 16;

fn times_path(logs: &Path, id: i64) -> PathBuf {
    logs.join(format!("{id}.times"))
}

/// A job's arrival times, ascending by offset: `(offset, ms)`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogTimes(pub Vec<(u64, i64)>);

impl LogTimes {
    /// The time the byte at `offset` arrived (`None`: before any record).
    pub fn at(&self, offset: u64) -> Option<i64> {
        let i = self.0.partition_point(|(o, _)| *o <= offset);
        i.checked_sub(1).map(|i| self.0[i].1)
    }
}

impl Store {
    /// Bytes from `offset` arrived at `ms`: recorded unless a record of the same second
    /// exists already.
    pub(super) fn note_arrival(&self, id: i64, offset: u64, ms: i64) {
        use std::os::unix::fs::FileExt;
        let path = times_path(&self.logs, id);
        let write = || -> std::io::Result<()> {
            let f = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .read(true)
                .write(true)
                .mode(0o600)
                .open(&path)?;
            // A torn record (a crash mid-write) is cut off.
            let len = f.metadata()?.len() / RECORD * RECORD;
            if len >= RECORD {
                let mut last = [0u8; RECORD as usize];
                f.read_exact_at(&mut last, len - RECORD)?;
                let (o, t) = decode(&last);
                if t.div_euclid(1000) == ms.div_euclid(1000) || o >= offset {
                    return Ok(());
                }
            }
            let mut rec = [0u8; RECORD as usize];
            rec[..8].copy_from_slice(&offset.to_le_bytes());
            rec[8..].copy_from_slice(&ms.to_le_bytes());
            f.write_all_at(&rec, len)
        };
        if let Err(e) = write() {
            // Times are a convenience: the log itself is already committed.
            tracing::warn!("{}: {e}", path.display());
        }
    }

    /// The arrival times of job `id`'s log (empty when none were recorded).
    pub(super) fn log_times(&self, id: i64) -> Result<LogTimes> {
        Ok(LogTimes(self.log_times_from(id, 0)?.0))
    }

    /// The records of job `id`'s times from the `skip`th on, and how many records there are
    /// in all (a live stream reads only new ones).
    pub(super) fn log_times_from(&self, id: i64, skip: usize) -> Result<(Vec<(u64, i64)>, usize)> {
        read_times(&self.logs, id, skip)
    }

    /// Forget a job's times (its log starts over).
    pub(super) fn drop_times(&self, id: i64) {
        let path = times_path(&self.logs, id);
        if let Err(e) = std::fs::remove_file(&path) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!("{}: {e}", path.display());
            }
        }
    }
}

/// The records of job `id`'s times file in the logs directory `logs` from the `skip`th on,
/// and how many records it holds in all (`migrate` reads them too).
pub fn read_times(logs: &Path, id: i64, skip: usize) -> Result<(Vec<(u64, i64)>, usize)> {
    use std::io::{Read, Seek};
    let path = times_path(logs, id);
    let mut f = match File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), 0)),
        Err(e) => return Err(io_err(&path)(e)),
    };
    let total = f.metadata().map_err(io_err(&path))?.len() / RECORD;
    let mut bytes = Vec::new();
    if (skip as u64) < total {
        f.seek(std::io::SeekFrom::Start(skip as u64 * RECORD))
            .and_then(|_| {
                f.take((total - skip as u64) * RECORD)
                    .read_to_end(&mut bytes)
            })
            .map_err(io_err(&path))?;
    }
    let mut out: Vec<(u64, i64)> = Vec::with_capacity(bytes.len() / RECORD as usize);
    for rec in bytes.chunks_exact(RECORD as usize) {
        let (o, t) = decode(rec);
        // Offsets only grow; anything else is damage, skipped.
        if out.last().is_none_or(|(lo, _)| o > *lo) {
            out.push((o, t));
        }
    }
    Ok((out, total as usize))
}

fn decode(rec: &[u8]) -> (u64, i64) {
    let mut o = [0u8; 8];
    let mut t = [0u8; 8];
    o.copy_from_slice(&rec[..8]);
    t.copy_from_slice(&rec[8..16]);
    (u64::from_le_bytes(o), i64::from_le_bytes(t))
}

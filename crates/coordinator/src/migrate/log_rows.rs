//! What PostgreSQL keeps of logs in rows where SQLite keeps files (docs/scale.md): every
//! job's arrival times (`logs/<id>.times` → `log_times`), and the committed bytes of the
//! logs of jobs not yet final (`logs/<id>.log` → `log_chunks`), so that a job queued or
//! running when its coordinator stopped goes on appending on PostgreSQL, and every page
//! shows its lines' times.

use super::MigrateError;
use std::io::Read;
use std::path::Path;

/// The tables only PostgreSQL has (SQLite keeps their rows as files): emptied by
/// `--replace`, refused when they hold rows otherwise.
pub const PG_ONLY: &[&str] = &["log_chunks", "log_times"];

/// The most bytes one chunk row holds (an agent's appends are far smaller; a log reads the
/// same whatever its chunks' sizes).
const PIECE: u64 = 1 << 20;

/// What was written.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Rows {
    /// Arrival time records, of every job.
    pub times: u64,
    /// Logs of jobs not yet final, and their bytes.
    pub live_logs: u64,
    pub live_bytes: u64,
}

/// Write the rows for the data directory `data` of the store `src` in `tx`.
pub fn copy(
    data: &Path,
    src: &rusqlite::Connection,
    tx: &mut postgres::Transaction<'_>,
) -> Result<Rows, MigrateError> {
    let logs = data.join(crate::store::LOGS_DIR);
    let jobs: Vec<(i64, String, i64)> = {
        let mut st = src.prepare("SELECT id, status, log_bytes FROM jobs ORDER BY id")?;
        let rows = st
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        rows
    };
    let time = tx.prepare("INSERT INTO log_times(job_id, start, ms) VALUES ($1, $2, $3)")?;
    let chunk = tx.prepare("INSERT INTO log_chunks(job_id, start, bytes) VALUES ($1, $2, $3)")?;
    let mut rows = Rows::default();
    for (id, status, committed) in jobs {
        let (times, _) = crate::store::read_times(&logs, id, 0)
            .map_err(|e| MigrateError::Schema(format!("job {id}'s log times: {e}")))?;
        for (offset, ms) in times {
            tx.execute(&time, &[&id, &(offset as i64), &ms])?;
            rows.times += 1;
        }
        let live = status == "queued" || status == "running";
        if !live || committed <= 0 {
            continue;
        }
        // The committed length, not the file's: bytes past it never committed (an append
        // that failed), and an agent sends them again.
        let path = logs.join(format!("{id}.log"));
        let io = |source| MigrateError::Io {
            path: path.clone(),
            source,
        };
        let mut f = std::fs::File::open(&path).map_err(io)?;
        let mut at = 0u64;
        while at < committed as u64 {
            let want = PIECE.min(committed as u64 - at);
            let mut piece = Vec::with_capacity(want as usize);
            (&mut f).take(want).read_to_end(&mut piece).map_err(io)?;
            if piece.len() as u64 != want {
                return Err(MigrateError::Schema(format!(
                    "{}: holds {} bytes, but job {id} committed {committed}: the data \
                     directory is not the store's, or was damaged",
                    path.display(),
                    at + piece.len() as u64
                )));
            }
            tx.execute(&chunk, &[&id, &(at as i64), &piece])?;
            at += want;
        }
        rows.live_logs += 1;
        rows.live_bytes += at;
    }
    Ok(rows)
}

//! When each part of a job's log arrived: rows of `log_times` (log offset, ms since the
//! epoch), one per second in which bytes arrived — not a row per line. A line's time is
//! that of the last record at or before its first byte, so it is exact to the second. The
//! page shows it on demand (per-line timestamps). Written in the append's transaction, so
//! every replica sees them; they stay when the log moves into the object store (a few
//! rows a minute of output).

use super::*;

/// Bytes from `offset` arrived at `ms`: recorded unless the last record is of the same
/// second (or not before `offset`).
pub(super) fn note_arrival(conn: &Connection, id: i64, offset: u64, ms: i64) -> Result<()> {
    conn.execute(
        "INSERT INTO log_times(job_id, start, ms) \
         SELECT ?1::bigint, ?2::bigint, ?3::bigint WHERE NOT EXISTS ( \
           SELECT 1 FROM (SELECT start, ms FROM log_times WHERE job_id = ?1::bigint \
                          ORDER BY start DESC LIMIT 1) l \
           WHERE l.ms / 1000 = ?3::bigint / 1000 OR l.start >= ?2::bigint)",
        params![id, offset as i64, ms],
    )?;
    Ok(())
}

impl PgStore {
    /// The arrival times of job `id`'s log (empty when none were recorded).
    pub(super) fn log_times(&self, id: i64) -> Result<LogTimes> {
        Ok(LogTimes(self.log_times_from(id, 0)?.0))
    }

    /// The records of job `id`'s times from the `skip`th on, and how many records there are
    /// in all (a live stream reads only new ones).
    pub(super) fn log_times_from(&self, id: i64, skip: usize) -> Result<(Vec<(u64, i64)>, usize)> {
        let conn = self.reader()?;
        let total: i64 = conn.query_row(
            "SELECT COUNT(*) FROM log_times WHERE job_id = ?1",
            [id],
            |r| r.get(0),
        )?;
        let mut st = conn.prepare_cached(
            "SELECT start, ms FROM log_times WHERE job_id = ?1 ORDER BY start OFFSET ?2",
        )?;
        let out = st
            .query_map(params![id, skip as i64], |r| {
                Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)?))
            })?
            .collect::<sql::Result<Vec<_>>>()?;
        let total = total as usize;
        Ok((out, total))
    }
}

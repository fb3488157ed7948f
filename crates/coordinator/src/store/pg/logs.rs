//! Job logs and events as the pages, live streams and the CLI read them. A running job's
//! log is rows of `log_chunks` (one per append, keyed by the offset of its first byte; see
//! `lease.rs`), so every replica reads what any replica received. Once the job is final
//! the chunks are copied into one object of the blob store and deleted
//! (`objects::logs::LogArchive`); reads then find no chunks and the archive reads the
//! object.

use super::*;

/// What a digest or a count reads of a log at a time.
const PIECE: u64 = 4 << 20;

impl PgStore {
    /// Bytes `from..end` of a job's running log (fewer if its chunks end sooner, or none
    /// once they moved into the object store), `end` being at most the committed length
    /// the caller read.
    pub(super) fn read_log(&self, id: i64, from: u64, end: u64) -> Result<Vec<u8>> {
        Self::read_chunks(&self.reader()?, id, from, end)
    }

    /// [`PgStore::read_log`] on a connection: one statement, so a reader sees a log's
    /// chunks all or (moved meanwhile) none.
    pub(super) fn read_chunks(conn: &Connection, id: i64, from: u64, end: u64) -> Result<Vec<u8>> {
        if from >= end {
            return Ok(Vec::new());
        }
        // From the chunk holding `from` (the last one starting at or before it).
        let mut st = conn.prepare_cached(
            "SELECT start, bytes FROM log_chunks WHERE job_id = ?1 AND start < ?3 \
             AND start >= COALESCE((SELECT MAX(start) FROM log_chunks \
                                    WHERE job_id = ?1 AND start <= ?2), 0) \
             ORDER BY start",
        )?;
        let chunks = st
            .query_map(params![id, from as i64, end as i64], |r| {
                Ok((r.get::<_, i64>(0)? as u64, r.get::<_, Vec<u8>>(1)?))
            })?
            .collect::<sql::Result<Vec<_>>>()?;
        let mut out = Vec::with_capacity((end - from).min(64 << 20) as usize);
        let mut at = from;
        for (start, bytes) in chunks {
            let stop = start + bytes.len() as u64;
            if start > at || stop <= at {
                // A hole (never written by this store) or a chunk before `from`: what is
                // contiguous from `from` is the answer.
                if start > at {
                    break;
                }
                continue;
            }
            let a = (at - start) as usize;
            let b = (stop.min(end) - start) as usize;
            out.extend_from_slice(&bytes[a..b]);
            at = start + b as u64;
            if at >= end {
                break;
            }
        }
        Ok(out)
    }

    /// SHA-256 of bytes `0..end` of a job's running log (read in pieces).
    pub(super) fn log_digest(conn: &Connection, id: i64, end: u64) -> Result<String> {
        use sha2::{Digest, Sha256};
        let mut sha = Sha256::new();
        let mut at = 0u64;
        while at < end {
            let piece = Self::read_chunks(conn, id, at, end.min(at + PIECE))?;
            if piece.is_empty() {
                break;
            }
            sha.update(&piece);
            at += piece.len() as u64;
        }
        Ok(crate::text::hex(&sha.finalize()))
    }

    /// Forget a job's running log and its times (a re-queued attempt starts over), in the
    /// caller's transaction.
    pub(super) fn drop_log(conn: &Connection, id: i64) -> Result<()> {
        conn.execute("DELETE FROM log_chunks WHERE job_id = ?1", [id])?;
        conn.execute("DELETE FROM log_times WHERE job_id = ?1", [id])?;
        Ok(())
    }

    /// Finished jobs whose log is still in chunks (not yet one object).
    pub(super) fn finished_live_logs(&self) -> Result<Vec<i64>> {
        let conn = self.reader()?;
        // The jobs with chunks, one index probe each (a skip scan of the primary key), not
        // a pass over every running log's chunks: the sweep asks this every 30 s.
        let mut st = conn.prepare(
            "WITH RECURSIVE ids(job_id) AS ( \
                (SELECT job_id FROM log_chunks ORDER BY job_id LIMIT 1) \
                UNION ALL \
                SELECT (SELECT c.job_id FROM log_chunks c WHERE c.job_id > ids.job_id \
                        ORDER BY c.job_id LIMIT 1) \
                FROM ids WHERE ids.job_id IS NOT NULL) \
             SELECT i.job_id FROM ids i JOIN jobs j ON j.id = i.job_id \
             WHERE j.status NOT IN ('queued', 'running') ORDER BY i.job_id",
        )?;
        let ids = st
            .query_map([], |r| r.get::<_, i64>(0))?
            .collect::<sql::Result<Vec<_>>>()?;
        Ok(ids)
    }

    /// Delete a finished job's chunks (its log is whole in the object store now). A job
    /// not final keeps them: only a finished log is immutable.
    pub(super) fn drop_finished_log(&self, id: i64) -> Result<()> {
        let mut conn = self.conn()?;
        let tx = conn.transaction_with_behavior(TransactionBehavior::RowLocks)?;
        let fin: Option<String> = tx
            .query_row(
                "SELECT status FROM jobs WHERE id = ?1 FOR UPDATE",
                [id],
                |r| r.get(0),
            )
            .optional()?;
        if fin.is_some_and(|s| s != "queued" && s != "running") {
            tx.execute("DELETE FROM log_chunks WHERE job_id = ?1", [id])?;
        }
        tx.commit()?;
        Ok(())
    }

    /// A live page follows job `id`'s log here: for `secs`, its appends through any
    /// replica notify the change feed.
    pub(super) fn follow_log(&self, id: i64, secs: u64) -> Result<()> {
        self.conn()?.execute(
            "UPDATE jobs SET log_followed_until = GREATEST(log_followed_until, ?2) \
             WHERE id = ?1 AND status = 'running'",
            params![id, now_ms() + secs as i64 * 1000],
        )?;
        Ok(())
    }

    /// How many `\n` the job's running log holds before each of `points`: one pass up to
    /// the largest, in pieces.
    pub(super) fn newlines_before(&self, id: i64, points: &[u64]) -> Result<Vec<u64>> {
        let conn = self.reader()?;
        let mut order: Vec<usize> = (0..points.len()).collect();
        order.sort_by_key(|&i| points[i]);
        let mut out = vec![0u64; points.len()];
        let upto = points.iter().copied().max().unwrap_or(0);
        let (mut pos, mut count, mut next) = (0u64, 0u64, 0usize);
        while pos < upto && next < order.len() {
            let piece = Self::read_chunks(&conn, id, pos, upto.min(pos + PIECE))?;
            if piece.is_empty() {
                break;
            }
            let mut at = 0usize;
            while next < order.len() && points[order[next]] <= pos + piece.len() as u64 {
                let cut = (points[order[next]].max(pos) - pos) as usize;
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
    }
}

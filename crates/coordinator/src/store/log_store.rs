//! Job logs and events as a trait: what the agent API writes and the pages and live streams
//! read, in types that say nothing of where the bytes lie. [`Store`] keeps a log as one file
//! beside the SQLite database, its committed length in the job's row (see the module doc of
//! [`super`]); another implementation keeps the same contract: appends are idempotent by
//! offset, a gap is answered with the committed length, reads never go past what committed.
//! A log is closed by [`super::QueueStore::finish`], which commits the job's final status
//! only when the whole log is in and its digest matches.

use super::{AppendOutcome, EventsOutcome, LogTimes, Result, Store};
use bosun_protocol::JobEvent;

pub trait LogStore: Send + Sync {
    /// Append log bytes the agent sent for `offset` (idempotent by offset; see
    /// `docs/protocol.md`).
    fn append_log(
        &self,
        id: i64,
        agent_id: &str,
        attempt: Option<u32>,
        offset: u64,
        bytes: &[u8],
    ) -> Result<AppendOutcome>;
    /// New log bytes appended through this store since it opened (resends not counted).
    fn appended_log_bytes(&self) -> u64;
    /// Append events numbered from `first_seq` (idempotent by sequence number).
    fn append_events(
        &self,
        id: i64,
        agent_id: &str,
        attempt: Option<u32>,
        first_seq: u64,
        events: &[JobEvent],
    ) -> Result<EventsOutcome>;
    /// Committed log bytes from `from` to the end.
    fn log_from(&self, id: i64, from: u64) -> Result<Vec<u8>>;
    /// At most `max` committed log bytes from `from`, and the committed length (`None`: no
    /// such job).
    fn log_piece(&self, id: i64, from: u64, max: u64) -> Result<Option<(Vec<u8>, u64)>>;
    /// Bytes `from..end` of a job's log, `end` being at most the committed length the caller
    /// read.
    fn read_log(&self, id: i64, from: u64, end: u64) -> Result<Vec<u8>>;
    /// How many `\n` the job's log holds before each of `points`.
    fn newlines_before(&self, id: i64, points: &[u64]) -> Result<Vec<u64>>;
    /// Events from sequence number `from`.
    fn events_from(&self, id: i64, from: u64) -> Result<Vec<(u64, JobEvent)>>;
    /// The arrival times of job `id`'s log.
    fn log_times(&self, id: i64) -> Result<LogTimes>;
    /// The records of job `id`'s times from the `skip`th on, and how many there are in all.
    fn log_times_from(&self, id: i64, skip: usize) -> Result<(Vec<(u64, i64)>, usize)>;
    /// Does every process on this store read running jobs' logs (they are in the database),
    /// rather than files of this data directory? Then a finished log is copied into the
    /// object store from the store's reads, and dropped here with
    /// [`LogStore::drop_finished_log`].
    fn live_logs_shared(&self) -> bool;
    /// Finished jobs whose log has not moved into the object store yet.
    fn finished_live_logs(&self) -> Result<Vec<i64>>;
    /// Forget the running copy of a finished job's log: it is whole in the object store.
    /// A job that is not final keeps its log.
    fn drop_finished_log(&self, id: i64) -> Result<()>;
    /// A live page follows job `id` in this process for the next `secs`: appends received by
    /// other processes on the store must reach the change feed meanwhile.
    fn follow_log(&self, id: i64, secs: u64) -> Result<()>;
}

impl LogStore for Store {
    fn append_log(
        &self,
        id: i64,
        agent_id: &str,
        attempt: Option<u32>,
        offset: u64,
        bytes: &[u8],
    ) -> Result<AppendOutcome> {
        Store::append_log(self, id, agent_id, attempt, offset, bytes)
    }
    fn appended_log_bytes(&self) -> u64 {
        Store::appended_log_bytes(self)
    }
    fn append_events(
        &self,
        id: i64,
        agent_id: &str,
        attempt: Option<u32>,
        first_seq: u64,
        events: &[JobEvent],
    ) -> Result<EventsOutcome> {
        Store::append_events(self, id, agent_id, attempt, first_seq, events)
    }
    fn log_from(&self, id: i64, from: u64) -> Result<Vec<u8>> {
        super::logs::log_from(self, id, from)
    }
    fn log_piece(&self, id: i64, from: u64, max: u64) -> Result<Option<(Vec<u8>, u64)>> {
        super::logs::log_piece(self, id, from, max)
    }
    fn read_log(&self, id: i64, from: u64, end: u64) -> Result<Vec<u8>> {
        Store::read_log(self, id, from, end)
    }
    fn newlines_before(&self, id: i64, points: &[u64]) -> Result<Vec<u64>> {
        Store::newlines_before(self, id, points)
    }
    fn events_from(&self, id: i64, from: u64) -> Result<Vec<(u64, JobEvent)>> {
        super::logs::events_from(self, id, from)
    }
    fn log_times(&self, id: i64) -> Result<LogTimes> {
        Store::log_times(self, id)
    }
    fn log_times_from(&self, id: i64, skip: usize) -> Result<(Vec<(u64, i64)>, usize)> {
        Store::log_times_from(self, id, skip)
    }
    /// Files of the data directory: one coordinator writes and reads them.
    fn live_logs_shared(&self) -> bool {
        false
    }
    fn finished_live_logs(&self) -> Result<Vec<i64>> {
        Store::finished_live_logs(self)
    }
    /// Nothing: the file itself moved into the object store (`Objects::put_file`), or is
    /// the object (the data directory's store).
    fn drop_finished_log(&self, _id: i64) -> Result<()> {
        Ok(())
    }
    /// Nothing: only this process appends, and its appends wake its pages directly.
    fn follow_log(&self, _id: i64, _secs: u64) -> Result<()> {
        Ok(())
    }
}

//! How a running server learns what other processes changed in the store — the CLI's
//! `enqueue` and `cancel`, or another coordinator on the same PostgreSQL database — so that
//! long-polling agents and live pages wake: one seam, [`ChangeFeed`], with SQLite's
//! implementation here (`PRAGMA data_version`, polled) and PostgreSQL's in `pg/watch.rs`
//! (`LISTEN/NOTIFY`, pushed). [`ServedStore`] is what `serve` holds: the areas
//! ([`Backend`]) and the feed.

use super::{Backend, ChangeWatch, Result, Store};
use std::time::{Duration, Instant};

/// A change another process committed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Job `id` changed (queued, claimed, finished, canceled, re-queued).
    Job(i64),
    /// Something changed; which is not known (wake every waiter).
    Some,
}

pub trait ChangeFeed: Send {
    /// Block up to `timeout` for changes others committed: the ones seen (empty: none in
    /// time). Errors are the feed's own (it reconnects by itself on the next call).
    fn wait(&mut self, timeout: Duration) -> Result<Vec<Change>>;
}

/// The store as `serve` holds it: its areas, and a feed of others' changes.
pub trait ServedStore: Send + Sync {
    /// The areas, as handlers are handed them.
    fn backend(&self) -> &dyn Backend;
    /// A feed of its own (a connection of its own), for the server's change watcher.
    fn change_feed(&self) -> Result<Box<dyn ChangeFeed>>;
}

/// SQLite has no cross-process notification: `PRAGMA data_version` changes when another
/// connection commits, and polling it is one cheap read.
pub struct SqliteChangeFeed {
    watch: ChangeWatch,
    last: Option<i64>,
}

/// How often SQLite's `data_version` is read.
const POLL: Duration = Duration::from_millis(50);

impl ChangeFeed for SqliteChangeFeed {
    fn wait(&mut self, timeout: Duration) -> Result<Vec<Change>> {
        let end = Instant::now() + timeout;
        loop {
            let v = self.watch.data_version()?;
            let changed = self.last.is_some_and(|l| l != v);
            self.last = Some(v);
            if changed {
                return Ok(vec![Change::Some]);
            }
            let now = Instant::now();
            if now >= end {
                return Ok(Vec::new());
            }
            std::thread::sleep(POLL.min(end - now));
        }
    }
}

impl ServedStore for Store {
    fn backend(&self) -> &dyn Backend {
        self
    }
    fn change_feed(&self) -> Result<Box<dyn ChangeFeed>> {
        Ok(Box::new(SqliteChangeFeed {
            watch: self.open_watch_connection()?,
            last: None,
        }))
    }
}

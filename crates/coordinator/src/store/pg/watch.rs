//! Other coordinators' changes, pushed: a connection of its own `LISTEN`s on
//! `bosun_changes`, which the schema's triggers notify as a job is queued, claimed,
//! finished, canceled or re-queued (payload: its id), or as agents, their projects or
//! pipelines change (no payload). A notification arrives when its transaction commits, on
//! every coordinator at once — an enqueue through one wakes the agents long-polling
//! another, a cancel through one reaches the agent through whichever it is connected to.
//!
//! A dropped connection (the database restarted) is made again on the next wait, and
//! answered with [`Change::Some`]: what was notified meanwhile is lost, so every waiter
//! looks again.

use super::super::change_feed::{Change, ChangeFeed, ServedStore};
use super::super::Backend;
use super::{PgStore, Result};
use postgres::fallible_iterator::FallibleIterator;
use std::time::{Duration, Instant};

/// The channel the triggers notify (schema migration 2).
const CHANNEL: &str = "bosun_changes";

pub struct PgChangeFeed {
    config: postgres::Config,
    tls: tokio_postgres_rustls::MakeRustlsConnect,
    client: Option<postgres::Client>,
    /// When the last connection attempt failed (a down database is retried once a second).
    failed_at: Option<Instant>,
}

impl PgChangeFeed {
    pub(super) fn new(
        config: postgres::Config,
        tls: tokio_postgres_rustls::MakeRustlsConnect,
    ) -> PgChangeFeed {
        PgChangeFeed {
            config,
            tls,
            client: None,
            failed_at: None,
        }
    }

    fn connect(&mut self) -> std::result::Result<postgres::Client, postgres::Error> {
        let mut c = self.config.connect(self.tls.clone())?;
        c.batch_execute(&format!("LISTEN {CHANNEL}"))?;
        Ok(c)
    }
}

impl ChangeFeed for PgChangeFeed {
    fn wait(&mut self, timeout: Duration) -> Result<Vec<Change>> {
        let mut out = Vec::new();
        if self.client.as_ref().is_none_or(|c| c.is_closed()) {
            self.client = None;
            if let Some(t) = self.failed_at {
                let pause = Duration::from_secs(1).saturating_sub(t.elapsed());
                std::thread::sleep(pause.min(timeout));
                if t.elapsed() < Duration::from_secs(1) {
                    return Ok(out);
                }
            }
            match self.connect() {
                Ok(c) => {
                    self.client = Some(c);
                    self.failed_at = None;
                    // What was notified while we were not listening is lost.
                    out.push(Change::Some);
                    return Ok(out);
                }
                Err(e) => {
                    self.failed_at = Some(Instant::now());
                    return Err(super::sql::SqlError::from(e).into());
                }
            }
        }
        let Some(client) = self.client.as_mut() else {
            return Ok(out);
        };
        let mut payloads = Vec::new();
        let got = {
            let mut n = client.notifications();
            let first = n.timeout_iter(timeout).next();
            if let Ok(Some(first)) = &first {
                payloads.push(first.payload().to_owned());
                // Whatever else has arrived comes along: one wake-up for a burst.
                let mut rest = n.iter();
                while let Ok(Some(more)) = rest.next() {
                    payloads.push(more.payload().to_owned());
                }
            }
            first.map(|_| ())
        };
        if let Err(e) = got {
            self.client = None;
            self.failed_at = Some(Instant::now());
            return Err(super::sql::SqlError::from(e).into());
        }
        for p in payloads {
            let c = p.parse().map(Change::Job).unwrap_or(Change::Some);
            if !out.contains(&c) {
                out.push(c);
            }
        }
        Ok(out)
    }
}

impl ServedStore for PgStore {
    fn backend(&self) -> &dyn Backend {
        self
    }
    fn change_feed(&self) -> Result<Box<dyn ChangeFeed>> {
        Ok(Box::new(PgStore::change_feed(self)?))
    }
}

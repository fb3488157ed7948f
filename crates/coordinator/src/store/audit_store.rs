//! The audit log behind one trait ([`AuditStore`]): rows appended, read newest first a page
//! at a time. Rows are written only through `crate::audit::record`, which scrubs them
//! (`model::audit`); the store only keeps them. One implementation for SQLite and
//! PostgreSQL ([`SqlStore`]).

use super::db::{params, SqlStore};
use super::Result;
use crate::model::audit::{AuditRow, Event};

pub trait AuditStore: Send + Sync {
    /// Append `e` as done at `at` (ms): its id.
    fn record_audit(&self, at: i64, e: &Event) -> Result<i64>;
    /// Rows older than row `before` (all when `None`), newest first, at most `limit`.
    fn audit_log(&self, before: Option<i64>, limit: u32) -> Result<Vec<AuditRow>>;
    /// Delete at most `batch` of the oldest rows written before `cut_off` (ms): how many
    /// went. A caller deletes again until fewer than `batch` go, so that no one statement
    /// holds the writer long (`model::audit::PRUNE_BATCH`).
    fn prune_audit(&self, cut_off: i64, batch: u32) -> Result<u64>;
}

const INSERT: &str = "INSERT INTO audit_log(at, actor, action, project, target, detail) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6) RETURNING id";
// By id, the order rows were written in, within the rows the `at` index finds.
const PRUNE: &str = "DELETE FROM audit_log WHERE id IN \
     (SELECT id FROM audit_log WHERE at < ?1 ORDER BY id LIMIT ?2)";
const PAGE: &str = "SELECT id, at, actor, action, project, target, detail \
     FROM audit_log WHERE id < ?1 ORDER BY id DESC LIMIT ?2";

impl<S: SqlStore> AuditStore for S {
    fn record_audit(&self, at: i64, e: &Event) -> Result<i64> {
        self.conn(|conn| {
            Ok(conn.query_row(
                INSERT,
                params![
                    at,
                    e.actor.label(),
                    e.action.as_str(),
                    e.project,
                    e.target,
                    e.detail
                ],
                |r| r.get(0),
            )?)
        })
    }

    fn audit_log(&self, before: Option<i64>, limit: u32) -> Result<Vec<AuditRow>> {
        self.read(|conn| {
            let mut st = conn.prepare(PAGE)?;
            let rows = st
                .query_map(params![before.unwrap_or(i64::MAX), i64::from(limit)], |r| {
                    Ok(AuditRow {
                        id: r.get(0)?,
                        at: r.get(1)?,
                        actor: r.get(2)?,
                        action: r.get(3)?,
                        project: r.get(4)?,
                        target: r.get(5)?,
                        detail: r.get(6)?,
                    })
                })?
                .collect::<super::db::Result<Vec<_>>>()?;
            Ok(rows)
        })
    }

    fn prune_audit(&self, cut_off: i64, batch: u32) -> Result<u64> {
        self.conn(|conn| Ok(conn.execute(PRUNE, params![cut_off, i64::from(batch)])? as u64))
    }
}

//! [`AuditStore`] on PostgreSQL: the SQLite store's `audit_store.rs`, its statements shared.

use super::sql::params;
use super::PgStore;
use crate::model::audit::{AuditRow, Event};
use crate::store::audit_store::{AuditStore, INSERT, PAGE};
use crate::store::Result;

impl AuditStore for PgStore {
    fn record_audit(&self, at: i64, e: &Event) -> Result<i64> {
        Ok(self.conn()?.query_row(
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
    }

    fn audit_log(&self, before: Option<i64>, limit: u32) -> Result<Vec<AuditRow>> {
        let conn = self.reader()?;
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
            .collect::<super::sql::Result<Vec<_>>>()?;
        Ok(rows)
    }
}

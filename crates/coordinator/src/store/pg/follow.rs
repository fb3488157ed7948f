//! What following a repository records, on PostgreSQL (the SQLite store's
//! `follow_store.rs`, in this dialect): the project (added when new, keyed by its
//! repository), its deploy key and webhook secret, sealed as every key and secret is; and
//! what unfollowing forgets.

use super::intake::webhook_place;
use super::pipelines::resolve_project;
use super::*;
use crate::store::follow_store::{FollowRecord, FollowStore, Followed};

impl FollowStore for PgStore {
    fn followed(&self, project: &str) -> Result<Option<Followed>> {
        let conn = self.reader()?;
        let pid = match resolve_project(&conn, project) {
            Ok(pid) => pid,
            Err(CoordError::NotFound(_)) => return Ok(None),
            Err(e) => return Err(e),
        };
        type Raw = (
            String,
            String,
            Option<String>,
            Option<String>,
            Option<String>,
        );
        let row: Option<Raw> = conn
            .query_row(
                "SELECT slug, uuid, deploy_key, user_key, webhook_secret FROM projects WHERE id = ?1",
                [pid],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
            )
            .optional()?;
        drop(conn);
        let Some((slug, key, deploy, user, secret)) = row else {
            return Ok(None);
        };
        let open_key = |col: &str, v: Option<String>| {
            v.map(|s| self.secrets.open(&secrets::key_place(pid, col), &s))
                .transpose()
        };
        Ok(Some(Followed {
            slug,
            key,
            deploy_key: open_key("deploy_key", deploy)?,
            user_key: open_key("user_key", user)?,
            webhook_secret: secret
                .map(|s| self.secrets.open(&webhook_place(pid), &s))
                .transpose()?,
        }))
    }

    fn record_follow(&self, r: &FollowRecord<'_>) -> Result<()> {
        let mut conn = self.conn()?;
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let pid: Option<i64> = tx
            .query_row("SELECT id FROM projects WHERE uuid = ?1", [r.key], |row| {
                row.get(0)
            })
            .optional()?;
        let pid = match pid {
            Some(pid) => pid,
            None => {
                let taken: bool = tx.query_row(
                    "SELECT EXISTS(SELECT 1 FROM projects WHERE slug = ?1)",
                    [r.slug],
                    |row| row.get(0),
                )?;
                if taken {
                    return Err(CoordError::Invalid(format!(
                        "project {} exists already for another repository (its key is not {}): \
                         rename or remove it first",
                        crate::text::printable(r.slug),
                        crate::text::printable(r.key)
                    )));
                }
                tx.query_row(
                    "INSERT INTO projects(uuid, slug, clone_url, known_hosts) VALUES (?1, ?2, ?3, ?4) \
                     RETURNING id",
                    params![r.key, r.slug, r.clone_url, r.known_hosts],
                    |row| row.get(0),
                )?
            }
        };
        if let Some(b) = r.main_branch.filter(|b| !b.is_empty()) {
            tx.execute(
                "UPDATE projects SET default_branch = ?2 WHERE id = ?1",
                params![pid, b],
            )?;
        }
        if let Some(k) = r.deploy_key {
            let sealed = self
                .secrets
                .seal(&secrets::key_place(pid, "deploy_key"), k)?;
            tx.execute(
                "UPDATE projects SET deploy_key = ?2 WHERE id = ?1",
                params![pid, sealed],
            )?;
        }
        if let Some(s) = r.webhook_secret {
            let sealed = self.secrets.seal(&webhook_place(pid), s)?;
            tx.execute(
                "UPDATE projects SET webhook_secret = ?2 WHERE id = ?1",
                params![pid, sealed],
            )?;
        }
        tx.commit()?;
        drop(conn);
        // A renamed repository: its project takes the new name, the old one keeps resolving.
        self.follow_repository(pid, r.slug, None)
    }

    fn forget_follow(&self, project: &str) -> Result<()> {
        let mut conn = self.conn()?;
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let pid = resolve_project(&tx, project)?;
        tx.execute(
            "UPDATE projects SET deploy_key = NULL, webhook_secret = NULL WHERE id = ?1",
            [pid],
        )?;
        tx.commit()?;
        Ok(())
    }
}

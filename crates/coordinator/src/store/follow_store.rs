//! What following a repository through Bitbucket's API records: the project (added when
//! new, keyed by its repository as `project add` keys it), its deploy key and its webhook
//! secret, sealed as every key and secret is; and what unfollowing forgets (the key and the
//! secret, never the project's pipelines, jobs or settings).

use super::db::{params, Db, Lock, OptionalExtension, SqlStore};
use super::intake::webhook_place;
use super::pipelines::resolve_project;
use super::{secrets, ProjectStore, Result};
use crate::error::CoordError;
use zeroize::Zeroizing;

/// A project as follow and user keys see it, its secrets opened.
#[derive(Debug)]
pub struct Followed {
    pub slug: String,
    /// The repository's key (`projects.uuid`).
    pub key: String,
    pub deploy_key: Option<Zeroizing<String>>,
    pub user_key: Option<Zeroizing<String>>,
    pub webhook_secret: Option<Zeroizing<String>>,
}

/// What a follow records, in one transaction.
pub struct FollowRecord<'a> {
    /// The repository's key: Cloud's UUID, or `bitbucket-dc:SERVER/ID`.
    pub key: &'a str,
    /// The repository's current name (a renamed one's project follows it).
    pub slug: &'a str,
    /// Used for a new project only: an existing one keeps its own.
    pub clone_url: &'a str,
    pub known_hosts: &'a str,
    pub main_branch: Option<&'a str>,
    /// A new deploy key (private, OpenSSH); `None` keeps the project's.
    pub deploy_key: Option<&'a str>,
    /// A new webhook secret; `None` keeps the project's.
    pub webhook_secret: Option<&'a str>,
}

pub trait FollowStore: Send + Sync {
    /// The project of a repository key, a slug (old ones too) or `None`.
    fn followed(&self, project: &str) -> Result<Option<Followed>>;
    /// Add the project if it is new, and record its deploy key and webhook secret.
    fn record_follow(&self, r: &FollowRecord<'_>) -> Result<()>;
    /// Forget the project's deploy key and webhook secret (its history stays).
    fn forget_follow(&self, project: &str) -> Result<()>;
}

impl<S: SqlStore + ProjectStore> FollowStore for S {
    fn followed(&self, project: &str) -> Result<Option<Followed>> {
        let read = |conn: &dyn Db| {
            let pid = match resolve_project(conn, project) {
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
            Ok(row.map(|row| (pid, row)))
        };
        let Some((pid, (slug, key, deploy, user, secret))) = self.read(read)? else {
            return Ok(None);
        };
        let open_key = |col: &str, v: Option<String>| {
            v.map(|s| self.secrets().open(&secrets::key_place(pid, col), &s))
                .transpose()
        };
        Ok(Some(Followed {
            slug,
            key,
            deploy_key: open_key("deploy_key", deploy)?,
            user_key: open_key("user_key", user)?,
            webhook_secret: secret
                .map(|s| self.secrets().open(&webhook_place(pid), &s))
                .transpose()?,
        }))
    }

    fn record_follow(&self, r: &FollowRecord<'_>) -> Result<()> {
        let pid = self.transaction(Lock::Writer, |tx| {
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
                .secrets()
                .seal(&secrets::key_place(pid, "deploy_key"), k)?;
            tx.execute(
                "UPDATE projects SET deploy_key = ?2 WHERE id = ?1",
                params![pid, sealed],
            )?;
        }
        if let Some(s) = r.webhook_secret {
            let sealed = self.secrets().seal(&webhook_place(pid), s)?;
            tx.execute(
                "UPDATE projects SET webhook_secret = ?2 WHERE id = ?1",
                params![pid, sealed],
            )?;
        }
        Ok(pid)
        })?;
        // A renamed repository: its project takes the new name, the old one keeps resolving.
        ProjectStore::follow_repository(self, pid, r.slug, None)
    }

    fn forget_follow(&self, project: &str) -> Result<()> {
        self.transaction(Lock::Writer, |tx| {
            let pid = resolve_project(tx, project)?;
            tx.execute(
                "UPDATE projects SET deploy_key = NULL, webhook_secret = NULL WHERE id = ?1",
                [pid],
            )?;
            Ok(())
        })
    }
}

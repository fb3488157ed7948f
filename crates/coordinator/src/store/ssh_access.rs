//! Who may SSH into a rerun, the stored part ([`SshAccessStore`]): each person's SSH public
//! keys (added on their page), whose a project's user key is and its `--ssh-policy`, and on
//! a rerun with SSH who asked and whether it holds the user key. What those allow is
//! `model::ssh_policy`'s. One implementation for SQLite and PostgreSQL ([`SqlStore`]).

use super::db::{params, Lock, OptionalExtension, Row, SqlStore};
use super::pipelines::resolve_project;
use super::ssh::{EnqueueWith, Queued};
use super::{now_ms, Result};
use crate::error::CoordError;
use crate::model::ssh_policy::{SshPolicy, UserKey, UserKeyFacts};

/// One of a person's SSH public keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PersonKey {
    pub id: i64,
    /// `type base64 comment`, as parsed.
    pub key: String,
    /// `SHA256:…`.
    pub fingerprint: String,
    /// Read from their Bitbucket account (else added on their page).
    pub from_bitbucket: bool,
    pub added: i64,
}

/// A person's keys at most: each is tried at every login to the job (as `MAX_KEYS` of
/// `bosun_git::keys` bounds one job's).
pub const MAX_PERSON_KEYS: usize = 32;

/// What a rerun with SSH recorded: who asked and what it got of the user key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshGrant {
    pub by: Option<String>,
    pub user_key: UserKey,
    /// The user key's owner as recorded on the project now.
    pub owner: Option<String>,
}

pub trait SshAccessStore: Send + Sync {
    /// `person`'s SSH public keys, oldest first.
    fn person_ssh_keys(&self, person: i64) -> Result<Vec<PersonKey>>;
    /// Add a key (checked by the caller); `Invalid` when they have it already or have
    /// [`MAX_PERSON_KEYS`].
    fn add_person_ssh_key(
        &self,
        person: i64,
        key: &str,
        fingerprint: &str,
        from_bitbucket: bool,
    ) -> Result<PersonKey>;
    /// Replace the keys read from `person`'s Bitbucket account by `keys` (`(key,
    /// fingerprint)`); keys added on the page stay, and one of those is not added twice.
    /// How many of `keys` are kept (at most [`MAX_PERSON_KEYS`] in all).
    fn replace_bitbucket_ssh_keys(&self, person: i64, keys: &[(String, String)]) -> Result<usize>;
    /// Remove one of `person`'s keys: whether it was theirs.
    fn remove_person_ssh_key(&self, person: i64, id: i64) -> Result<bool>;
    /// Record whose `project`'s user key is (`{UUID}` or nickname; `None`: not recorded).
    fn set_user_key_owner(&self, project: &str, owner: Option<&str>) -> Result<()>;
    /// Set what `project` does when someone else reruns with SSH.
    fn set_ssh_policy(&self, project: &str, policy: SshPolicy) -> Result<()>;
    /// What a rerun of job `id` would get of its project's user key; `None`: no such job.
    fn user_key_facts(&self, id: i64) -> Result<Option<UserKeyFacts>>;
    /// Queue job `id` again with `ssh_keys` let in, recording `by` and `user_key` (`Withheld`:
    /// the claim leaves the user key out). The new job's id.
    fn rerun_with_ssh(
        &self,
        id: i64,
        ssh_keys: &[String],
        by: &str,
        user_key: UserKey,
    ) -> Result<i64>;
    /// What a rerun with SSH recorded, for job `id` (`None`: not one).
    fn ssh_grant(&self, id: i64) -> Result<Option<SshGrant>>;
}

fn key_row(r: &dyn Row) -> super::db::Result<PersonKey> {
    Ok(PersonKey {
        id: r.get(0)?,
        key: r.get(1)?,
        fingerprint: r.get(2)?,
        from_bitbucket: r.get(3)?,
        added: r.get(4)?,
    })
}

/// A stored policy word; one this side does not know reads as the stricter `refuse`.
fn policy_of(word: &str) -> SshPolicy {
    word.parse().unwrap_or(SshPolicy::Refuse)
}

fn duplicate(fingerprint: &str) -> CoordError {
    CoordError::Invalid(format!("you have the key {fingerprint} already"))
}

fn too_many() -> CoordError {
    CoordError::Invalid(format!(
        "at most {MAX_PERSON_KEYS} SSH keys per person: remove one first"
    ))
}

impl<S: SqlStore + EnqueueWith> SshAccessStore for S {
    fn person_ssh_keys(&self, person: i64) -> Result<Vec<PersonKey>> {
        self.read(|conn| {
            let mut st = conn.prepare(
                "SELECT id, key, fingerprint, from_bitbucket, added FROM person_ssh_keys \
                 WHERE person_id = ?1 ORDER BY id",
            )?;
            let rows = st
                .query_map(params![person], key_row)?
                .collect::<super::db::Result<Vec<_>>>()?;
            Ok(rows)
        })
    }

    fn add_person_ssh_key(
        &self,
        person: i64,
        key: &str,
        fingerprint: &str,
        from_bitbucket: bool,
    ) -> Result<PersonKey> {
        let added = now_ms();
        let id = self.transaction(Lock::Writer, |tx| {
            let (count, has): (i64, bool) = tx.query_row(
                "SELECT COUNT(*), COALESCE(SUM(CASE WHEN fingerprint = ?2 THEN 1 ELSE 0 END), 0) > 0 \
                 FROM person_ssh_keys WHERE person_id = ?1",
                params![person, fingerprint],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?;
            if has {
                return Err(duplicate(fingerprint));
            }
            if count as usize >= MAX_PERSON_KEYS {
                return Err(too_many());
            }
            Ok(tx.query_row(
                "INSERT INTO person_ssh_keys(person_id, key, fingerprint, from_bitbucket, added) \
                 VALUES (?1, ?2, ?3, ?4, ?5) RETURNING id",
                params![person, key, fingerprint, from_bitbucket, added],
                |r| r.get::<_, i64>(0),
            )?)
        })?;
        Ok(PersonKey {
            id,
            key: key.to_owned(),
            fingerprint: fingerprint.to_owned(),
            from_bitbucket,
            added,
        })
    }

    fn replace_bitbucket_ssh_keys(&self, person: i64, keys: &[(String, String)]) -> Result<usize> {
        let added = now_ms();
        self.transaction(Lock::Writer, |tx| {
            tx.execute(
                "DELETE FROM person_ssh_keys WHERE person_id = ?1 AND from_bitbucket = 1",
                params![person],
            )?;
            let mut count: i64 = tx.query_row(
                "SELECT COUNT(*) FROM person_ssh_keys WHERE person_id = ?1",
                params![person],
                |r| r.get(0),
            )?;
            let mut kept = 0;
            for (key, fingerprint) in keys {
                if count as usize >= MAX_PERSON_KEYS {
                    break;
                }
                let n = tx.execute(
                    "INSERT INTO person_ssh_keys(person_id, key, fingerprint, from_bitbucket, added) \
                     VALUES (?1, ?2, ?3, 1, ?4) ON CONFLICT (person_id, fingerprint) DO NOTHING",
                    params![person, key, fingerprint, added],
                )?;
                count += n as i64;
                kept += n;
            }
            Ok(kept)
        })
    }

    fn remove_person_ssh_key(&self, person: i64, id: i64) -> Result<bool> {
        self.conn(|conn| {
            Ok(conn.execute(
                "DELETE FROM person_ssh_keys WHERE person_id = ?1 AND id = ?2",
                params![person, id],
            )? > 0)
        })
    }

    fn set_user_key_owner(&self, project: &str, owner: Option<&str>) -> Result<()> {
        self.conn(|conn| {
            let pid = resolve_project(conn, project)?;
            conn.execute(
                "UPDATE projects SET user_key_owner = ?2 WHERE id = ?1",
                params![pid, owner],
            )?;
            Ok(())
        })
    }

    fn set_ssh_policy(&self, project: &str, policy: SshPolicy) -> Result<()> {
        self.conn(|conn| {
            let pid = resolve_project(conn, project)?;
            conn.execute(
                "UPDATE projects SET ssh_policy = ?2 WHERE id = ?1",
                params![pid, policy.as_str()],
            )?;
            Ok(())
        })
    }

    fn user_key_facts(&self, id: i64) -> Result<Option<UserKeyFacts>> {
        self.read(|conn| {
            Ok(conn
                .query_row(
                    "SELECT p.user_key IS NOT NULL, p.user_key_owner, p.ssh_policy FROM jobs j \
                     JOIN projects p ON p.id = j.project_id WHERE j.id = ?1",
                    params![id],
                    |r| {
                        Ok(UserKeyFacts {
                            given: r.get(0)?,
                            owner: r.get(1)?,
                            policy: policy_of(&r.get::<_, String>(2)?),
                        })
                    },
                )
                .optional()?)
        })
    }

    fn rerun_with_ssh(
        &self,
        id: i64,
        ssh_keys: &[String],
        by: &str,
        user_key: UserKey,
    ) -> Result<i64> {
        super::ssh::rerun_queued(
            self,
            id,
            Queued {
                ssh_keys: ssh_keys.to_vec(),
                ssh_by: Some(by.to_owned()),
                ssh_user_key: Some(user_key.as_str()),
                ..Queued::default()
            },
        )
    }

    fn ssh_grant(&self, id: i64) -> Result<Option<SshGrant>> {
        self.read(|conn| {
            Ok(conn
                .query_row(
                    "SELECT j.ssh_by, j.ssh_user_key, p.user_key_owner FROM jobs j \
                     JOIN projects p ON p.id = j.project_id \
                     WHERE j.id = ?1 AND j.ssh_user_key IS NOT NULL",
                    params![id],
                    |r| {
                        Ok(SshGrant {
                            by: r.get(0)?,
                            user_key: UserKey::from_stored(&r.get::<_, String>(1)?),
                            owner: r.get(2)?,
                        })
                    },
                )
                .optional()?)
        })
    }
}

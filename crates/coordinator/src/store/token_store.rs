//! Personal API tokens behind one trait ([`TokenStore`]): a person's tokens by name, kept as
//! digests only (the value is shown once and never stored), when each was last used, and
//! the person a token's digest names. What a token may do is `model::tokens`'s.

use super::{Result, Store};
use crate::error::CoordError;
use crate::store::{PeopleStore, Person};
use rusqlite::{params, OptionalExtension};

/// A personal token as its person sees it listed: never its value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PersonalToken {
    pub id: i64,
    pub name: String,
    /// When it was made (ms).
    pub created: i64,
    /// When it was last used (ms), at most [`TOUCH_EVERY_MS`] stale.
    pub last_used: Option<i64>,
}

/// A token's last use is written at most this often (a script polling every second does not
/// write the store every second).
pub const TOUCH_EVERY_MS: i64 = 60_000;

pub trait TokenStore: Send + Sync {
    /// A new token for `person` named `name`, kept as `digest`; refused (`Invalid`) when they
    /// hold `max` live tokens already.
    fn create_personal_token(
        &self,
        person: i64,
        name: &str,
        digest: &str,
        max: usize,
    ) -> Result<PersonalToken>;
    /// `person`'s live tokens, newest first.
    fn personal_tokens(&self, person: i64) -> Result<Vec<PersonalToken>>;
    /// Revoke (delete) `person`'s token `id`: the token revoked, or `None` when they have
    /// no such token (another person's id revokes nothing).
    fn revoke_personal_token(&self, person: i64, id: i64) -> Result<Option<PersonalToken>>;
    /// The person a live token's `digest` names, with the token's id; its last use set to
    /// `now` (at most once per [`TOUCH_EVERY_MS`]).
    fn personal_token_person(&self, digest: &str, now: i64) -> Result<Option<(i64, Person)>>;
}

pub(super) const LIVE_COUNT: &str = "SELECT COUNT(*) FROM personal_tokens WHERE person_id = ?1";
pub(super) const INSERT: &str = "INSERT INTO personal_tokens(person_id, name, digest, created) \
     VALUES (?1, ?2, ?3, ?4) RETURNING id";
pub(super) const LIST: &str = "SELECT id, name, created, last_used FROM personal_tokens \
     WHERE person_id = ?1 ORDER BY id DESC";
pub(super) const ONE: &str = "SELECT id, name, created, last_used FROM personal_tokens \
     WHERE person_id = ?1 AND id = ?2";
pub(super) const DELETE: &str = "DELETE FROM personal_tokens WHERE person_id = ?1 AND id = ?2";
pub(super) const LOOKUP: &str = "SELECT t.id, p.bitbucket_uuid FROM personal_tokens t \
     JOIN people p ON p.id = t.person_id WHERE t.digest = ?1";
pub(super) const TOUCH: &str = "UPDATE personal_tokens SET last_used = ?2 \
     WHERE id = ?1 AND (last_used IS NULL OR last_used < ?3)";

/// The refusal past [`TokenStore::create_personal_token`]'s `max`.
pub(super) fn too_many(max: usize) -> CoordError {
    CoordError::Invalid(format!(
        "you hold {max} tokens already: revoke one you no longer use first"
    ))
}

impl TokenStore for Store {
    fn create_personal_token(
        &self,
        person: i64,
        name: &str,
        digest: &str,
        max: usize,
    ) -> Result<PersonalToken> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let held: i64 = tx.query_row(LIVE_COUNT, [person], |r| r.get(0))?;
        if usize::try_from(held).unwrap_or(usize::MAX) >= max {
            return Err(too_many(max));
        }
        let created = super::now_ms();
        let id: i64 = tx.query_row(INSERT, params![person, name, digest, created], |r| r.get(0))?;
        tx.commit()?;
        Ok(PersonalToken {
            id,
            name: name.to_owned(),
            created,
            last_used: None,
        })
    }

    fn personal_tokens(&self, person: i64) -> Result<Vec<PersonalToken>> {
        let conn = self.conn();
        let mut st = conn.prepare(LIST)?;
        let rows = st
            .query_map([person], |r| {
                Ok(PersonalToken {
                    id: r.get(0)?,
                    name: r.get(1)?,
                    created: r.get(2)?,
                    last_used: r.get(3)?,
                })
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }

    fn revoke_personal_token(&self, person: i64, id: i64) -> Result<Option<PersonalToken>> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let found = tx
            .query_row(ONE, params![person, id], |r| {
                Ok(PersonalToken {
                    id: r.get(0)?,
                    name: r.get(1)?,
                    created: r.get(2)?,
                    last_used: r.get(3)?,
                })
            })
            .optional()?;
        if found.is_some() {
            tx.execute(DELETE, params![person, id])?;
        }
        tx.commit()?;
        Ok(found)
    }

    fn personal_token_person(&self, digest: &str, now: i64) -> Result<Option<(i64, Person)>> {
        let found: Option<(i64, String)> = {
            let conn = self.conn();
            let found = conn
                .query_row(LOOKUP, [digest], |r| {
                    Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?))
                })
                .optional()?;
            if let Some((id, _)) = &found {
                conn.execute(TOUCH, params![id, now, now - TOUCH_EVERY_MS])?;
            }
            found
        };
        // The person as the people store reads them (by their unique account UUID).
        match found {
            Some((id, uuid)) => Ok(self.person_by_name(&uuid)?.map(|p| (id, p))),
            None => Ok(None),
        }
    }
}

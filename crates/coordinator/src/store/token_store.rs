//! Personal API tokens behind one trait ([`TokenStore`]): a person's tokens by name, kept as
//! digests only (the value is shown once and never stored), when each was last used, and
//! the person a token's digest names. What a token may do is `model::tokens`'s. One
//! implementation for SQLite and PostgreSQL ([`SqlStore`]).

use super::db::{params, Lock, OptionalExtension, Row, SqlStore};
use super::Result;
use crate::error::CoordError;
use crate::store::{PeopleStore, Person};

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

const LIVE_COUNT: &str = "SELECT COUNT(*) FROM personal_tokens WHERE person_id = ?1";
const INSERT: &str = "INSERT INTO personal_tokens(person_id, name, digest, created) \
     VALUES (?1, ?2, ?3, ?4) RETURNING id";
const LIST: &str = "SELECT id, name, created, last_used FROM personal_tokens \
     WHERE person_id = ?1 ORDER BY id DESC";
const ONE: &str = "SELECT id, name, created, last_used FROM personal_tokens \
     WHERE person_id = ?1 AND id = ?2";
const DELETE: &str = "DELETE FROM personal_tokens WHERE person_id = ?1 AND id = ?2";
const LOOKUP: &str = "SELECT t.id, p.bitbucket_uuid FROM personal_tokens t \
     JOIN people p ON p.id = t.person_id WHERE t.digest = ?1";
const TOUCH: &str = "UPDATE personal_tokens SET last_used = ?2 \
     WHERE id = ?1 AND (last_used IS NULL OR last_used < ?3)";

/// The refusal past [`TokenStore::create_personal_token`]'s `max`.
fn too_many(max: usize) -> CoordError {
    CoordError::Invalid(format!(
        "you hold {max} tokens already: revoke one you no longer use first"
    ))
}

fn token_row(r: &dyn Row) -> super::db::Result<PersonalToken> {
    Ok(PersonalToken {
        id: r.get(0)?,
        name: r.get(1)?,
        created: r.get(2)?,
        last_used: r.get(3)?,
    })
}

impl<S: SqlStore + PeopleStore> TokenStore for S {
    fn create_personal_token(
        &self,
        person: i64,
        name: &str,
        digest: &str,
        max: usize,
    ) -> Result<PersonalToken> {
        let created = super::now_ms();
        let id = self.transaction(Lock::Writer, |tx| {
            let held: i64 = tx.query_row(LIVE_COUNT, params![person], |r| r.get(0))?;
            if usize::try_from(held).unwrap_or(usize::MAX) >= max {
                return Err(too_many(max));
            }
            Ok(tx.query_row(INSERT, params![person, name, digest, created], |r| r.get(0))?)
        })?;
        Ok(PersonalToken {
            id,
            name: name.to_owned(),
            created,
            last_used: None,
        })
    }

    fn personal_tokens(&self, person: i64) -> Result<Vec<PersonalToken>> {
        self.read(|conn| {
            let mut st = conn.prepare(LIST)?;
            let rows = st
                .query_map(params![person], token_row)?
                .collect::<super::db::Result<Vec<_>>>()?;
            Ok(rows)
        })
    }

    fn revoke_personal_token(&self, person: i64, id: i64) -> Result<Option<PersonalToken>> {
        self.transaction(Lock::Writer, |tx| {
            let found = tx
                .query_row(ONE, params![person, id], token_row)
                .optional()?;
            if found.is_some() {
                tx.execute(DELETE, params![person, id])?;
            }
            Ok(found)
        })
    }

    fn personal_token_person(&self, digest: &str, now: i64) -> Result<Option<(i64, Person)>> {
        let found: Option<(i64, String)> = self.conn(|conn| {
            let found = conn
                .query_row(LOOKUP, params![digest], |r| {
                    Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?))
                })
                .optional()?;
            if let Some((id, _)) = &found {
                conn.execute(TOUCH, params![id, now, now - TOUCH_EVERY_MS])?;
            }
            Ok(found)
        })?;
        // The person as the people store reads them (by their unique account UUID).
        match found {
            Some((id, uuid)) => Ok(self.person_by_name(&uuid)?.map(|p| (id, p))),
            None => Ok(None),
        }
    }
}

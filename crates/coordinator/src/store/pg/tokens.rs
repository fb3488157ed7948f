//! [`TokenStore`] on PostgreSQL: the SQLite store's `token_store.rs`, its statements shared.

use super::sql::{params, OptionalExtension, TransactionBehavior};
use super::PgStore;
use crate::store::token_store::{
    too_many, PersonalToken, TokenStore, DELETE, INSERT, LIST, LIVE_COUNT, LOOKUP, ONE, TOUCH,
    TOUCH_EVERY_MS,
};
use crate::store::{now_ms, PeopleStore, Person, Result};

fn token_row(r: &super::sql::Row) -> super::sql::Result<PersonalToken> {
    Ok(PersonalToken {
        id: r.get(0)?,
        name: r.get(1)?,
        created: r.get(2)?,
        last_used: r.get(3)?,
    })
}

impl TokenStore for PgStore {
    fn create_personal_token(
        &self,
        person: i64,
        name: &str,
        digest: &str,
        max: usize,
    ) -> Result<PersonalToken> {
        let mut conn = self.conn()?;
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let held: i64 = tx.query_row(LIVE_COUNT, [person], |r| r.get(0))?;
        if usize::try_from(held).unwrap_or(usize::MAX) >= max {
            return Err(too_many(max));
        }
        let created = now_ms();
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
        let conn = self.conn()?;
        let mut st = conn.prepare(LIST)?;
        let rows = st
            .query_map([person], token_row)?
            .collect::<super::sql::Result<Vec<_>>>()?;
        Ok(rows)
    }

    fn revoke_personal_token(&self, person: i64, id: i64) -> Result<Option<PersonalToken>> {
        let mut conn = self.conn()?;
        let tx = conn.transaction_with_behavior(TransactionBehavior::RowLocks)?;
        let found = tx
            .query_row(ONE, params![person, id], token_row)
            .optional()?;
        if found.is_some() {
            tx.execute(DELETE, params![person, id])?;
        }
        tx.commit()?;
        Ok(found)
    }

    fn personal_token_person(&self, digest: &str, now: i64) -> Result<Option<(i64, Person)>> {
        let found: Option<(i64, String)> = {
            let conn = self.conn()?;
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
        match found {
            Some((id, uuid)) => Ok(self.person_by_name(&uuid)?.map(|p| (id, p))),
            None => Ok(None),
        }
    }
}

//! Personal API tokens: made by a logged-in person on their page ("You"), shown once, kept
//! as digests (as sessions are), listed by name, created and last use, revoked by their
//! person. A token acts on API v2 as its person: their repository permissions, read again
//! by the same rules as a session's ([`super::refresh_permissions`]: when older than
//! `--permissions-refresh`, and before every action), and their coordinator admin role.
//! What a token may do is `model::tokens`'s; every token made or revoked goes to the audit
//! log.

use super::Viewer;
use crate::audit::{self, Actor, AuditAction, Event};
use crate::error::CoordError;
use crate::model::people::{self as rules, Action, Asker};
use crate::model::tokens::{self, PERSONAL_PREFIX};
use crate::store::{Backend, Person, PersonalToken, Resource};
use crate::text::{random_hex, sha256_hex};
use crate::AppState;
use zeroize::Zeroizing;

/// What the store keeps of a personal token: a digest under its own label (a digest of a
/// session id or of another kind of token never matches one).
pub fn digest(token: &str) -> String {
    sha256_hex(format!("bosun personal token:{token}").as_bytes())
}

/// A token just made: its value (shown once, never kept) and its row.
pub struct Made {
    pub token: Zeroizing<String>,
    pub row: PersonalToken,
}

/// Make a token named `name` for the viewer; a bad name or too many tokens is `Invalid`.
pub async fn make(state: &AppState, viewer: &Viewer, name: &str) -> crate::Result<Made> {
    let name = tokens::token_name(name).map_err(|e| CoordError::Invalid(e.to_string()))?;
    let token = Zeroizing::new(format!("{PERSONAL_PREFIX}{}", random_hex(24)?));
    let d = digest(&token);
    let person = viewer.person.clone();
    let row = state
        .db(move |s: &dyn Backend| {
            let row = s.create_personal_token(person.id, &name, &d, tokens::MAX_PER_PERSON)?;
            audit::record(
                s,
                Event::new(
                    Actor::Person(person.nickname.clone()),
                    AuditAction::TokenMade,
                )
                .target(format!("personal token {name}"))
                .detail("on their page"),
            )?;
            Ok(row)
        })
        .await?;
    tracing::info!(person = %crate::printable(&viewer.person.nickname), token = row.id, "personal API token made");
    Ok(Made { token, row })
}

/// The viewer's tokens, newest first.
pub async fn list(state: &AppState, person: &Person) -> crate::Result<Vec<PersonalToken>> {
    let id = person.id;
    state.db(move |s: &dyn Backend| s.personal_tokens(id)).await
}

/// Revoke the viewer's token `id` (it stops working at once): the token, or `None` when it
/// is not theirs.
pub async fn revoke(
    state: &AppState,
    viewer: &Viewer,
    id: i64,
) -> crate::Result<Option<PersonalToken>> {
    let person = viewer.person.clone();
    state
        .db(move |s: &dyn Backend| {
            let gone = s.revoke_personal_token(person.id, id)?;
            if let Some(t) = &gone {
                audit::record(
                    s,
                    Event::new(
                        Actor::Person(person.nickname.clone()),
                        AuditAction::TokenRevoked,
                    )
                    .target(format!("personal token {}", t.name))
                    .detail("on their page"),
                )?;
            }
            Ok(gone)
        })
        .await
}

/// The person behind a personal token (unknown or revoked: `None`), their permissions read
/// again first when older than `--permissions-refresh`.
pub async fn person_of(state: &AppState, token: &str) -> crate::Result<Option<Person>> {
    if !tokens::is_personal(token) {
        return Ok(None);
    }
    let d = digest(token);
    let now = crate::store::now_ms();
    let Some((_, person)) = state
        .db(move |s: &dyn Backend| s.personal_token_person(&d, now))
        .await?
    else {
        return Ok(None);
    };
    super::refresh_permissions(state, &person, false).await?;
    Ok(Some(person))
}

/// May `person` (through their token, or asking for a rerun with SSH on a page) do `action`
/// with the project `of` names? `None` when
/// there is no such project. A sensitive action reads their permissions from Bitbucket
/// again first, whatever their age (a permission taken away stops it at once).
pub async fn may(
    state: &AppState,
    person: &Person,
    of: Resource,
    action: Action,
) -> crate::Result<Option<bool>> {
    if action.sensitive() {
        super::refresh_permissions(state, person, true).await?;
    }
    let id = person.id;
    let found = state
        .db(move |s: &dyn Backend| {
            let Some(project) = s.project_access(of)? else {
                return Ok(None);
            };
            Ok(Some((project, s.person_permissions(id)?)))
        })
        .await?;
    let Some((project, permissions)) = found else {
        return Ok(None);
    };
    Ok(Some(tokens::personal_token_allows(
        action,
        Asker {
            role: rules::role_on(&permissions, &project.slug, &project.uuid),
            // As read with the token, in this request: an admin role taken back counts at once.
            coordinator_admin: person.admin,
        },
        project.public,
    )))
}

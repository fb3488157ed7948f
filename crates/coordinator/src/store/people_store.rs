//! People behind one trait ([`PeopleStore`]): who logged in with Bitbucket (their account's
//! UUID and nickname), their sessions (only a digest of a session id crosses the trait and
//! is kept), whether they are a coordinator-wide admin, and the repository permissions
//! Bitbucket gave them when last asked. What those permissions allow is `model::people`'s.

use super::pipelines::resolve_project;
use super::{now_ms, Result, Store};
use crate::error::CoordError;
use crate::model::people::{Credential, CredentialKind, Role};
use rusqlite::{params, OptionalExtension};

/// A person as the rules need them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Person {
    pub id: i64,
    /// Their Bitbucket account's UUID (`{…}`): what identifies them (a nickname can change).
    pub uuid: String,
    pub nickname: String,
    pub display_name: String,
    /// Coordinator-wide admin (`bosun coordinator person grant NAME admin`).
    pub admin: bool,
    /// When their repository permissions were last read from Bitbucket (ms), if ever.
    pub permissions_fetched: Option<i64>,
}

pub trait PeopleStore: Send + Sync {
    /// Record a login of the Bitbucket account `uuid` (made on its first login; the
    /// nickname and display name as Bitbucket says them now).
    fn person_logged_in(&self, uuid: &str, nickname: &str, display_name: &str) -> Result<Person>;
    /// The person named `name` (nickname or account UUID).
    fn person_by_name(&self, name: &str) -> Result<Option<Person>>;
    /// Make `name` a coordinator-wide admin, or not; `NotFound` if nobody of that name ever
    /// logged in.
    fn set_coordinator_admin(&self, name: &str, admin: bool) -> Result<Person>;
    /// Everyone who ever logged in, by nickname.
    fn people(&self) -> Result<Vec<Person>>;
    /// A new session with digest `digest` for `person` until `expires` (ms); the session
    /// `replacing` (the browser's earlier one, if any) ends in the same transaction, and so do
    /// sessions past their expiry.
    fn open_session(
        &self,
        digest: &str,
        person: i64,
        expires: i64,
        replacing: Option<&str>,
    ) -> Result<()>;
    /// The person of an unexpired session.
    fn session_person(&self, digest: &str) -> Result<Option<Person>>;
    /// End a session (logout).
    fn close_session(&self, digest: &str) -> Result<()>;
    /// Replace a person's repository permissions by `permissions` (repository full names,
    /// lower case, or `{UUID}`s), read from Bitbucket at `at` (ms).
    fn store_permissions(&self, person: i64, permissions: &[(String, Role)], at: i64)
        -> Result<()>;
    /// Keep `person`'s Bitbucket credential (sealed, in a place that names its kind), or
    /// forget it (`None`).
    fn set_credential(&self, person: i64, credential: Option<&Credential>) -> Result<()>;
    /// `person`'s Bitbucket credential, if one is kept.
    fn credential(&self, person: i64) -> Result<Option<Credential>>;
    /// The repository permissions stored for `person`.
    fn person_permissions(&self, person: i64) -> Result<Vec<(String, Role)>>;
    /// The project a job, a pipeline or a name (slug, old slug, UUID) belongs to, with
    /// whether it is public; `None` when there is no such thing.
    fn project_access(&self, of: Resource) -> Result<Option<ProjectAccess>>;
    /// Every project, as read access needs it.
    fn projects_access(&self) -> Result<Vec<ProjectAccess>>;
    /// Make a project readable by anyone (`true`) or by those its repository lets read.
    fn set_project_public(&self, project: &str, public: bool) -> Result<()>;
}

/// What a request names, whose project's access decides.
#[derive(Debug, Clone)]
pub enum Resource {
    Job(i64),
    Pipeline(i64),
    Project(String),
}

/// A project as read access needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProjectAccess {
    pub slug: String,
    pub uuid: String,
    pub public: bool,
}

/// Where a person's credential is sealed: a sealed value opens only in its place, so a
/// credential whose kind was changed in the database does not open at all. A refresh
/// token's place is the one it had before there were other kinds.
pub(crate) fn credential_place(person: i64, kind: CredentialKind) -> String {
    match kind {
        CredentialKind::RefreshToken => format!("person{person}/refresh_token"),
        CredentialKind::HttpAccessToken => format!("person{person}/http_access_token"),
    }
}

const COLUMNS: &str =
    "id, bitbucket_uuid, nickname, display_name, admin, permissions_fetched FROM people";

fn person_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Person> {
    Ok(Person {
        id: r.get(0)?,
        uuid: r.get(1)?,
        nickname: r.get(2)?,
        display_name: r.get(3)?,
        admin: r.get(4)?,
        permissions_fetched: r.get(5)?,
    })
}

impl PeopleStore for Store {
    fn person_logged_in(&self, uuid: &str, nickname: &str, display_name: &str) -> Result<Person> {
        let conn = self.conn();
        let now = now_ms();
        conn.execute(
            "INSERT INTO people(bitbucket_uuid, nickname, display_name, created, last_login) \
             VALUES (?1, ?2, ?3, ?4, ?4) ON CONFLICT(bitbucket_uuid) DO UPDATE SET \
             nickname = excluded.nickname, display_name = excluded.display_name, \
             last_login = excluded.last_login",
            params![uuid, nickname, display_name, now],
        )?;
        Ok(conn.query_row(
            &format!("SELECT {COLUMNS} WHERE bitbucket_uuid = ?1"),
            [uuid],
            person_row,
        )?)
    }

    fn person_by_name(&self, name: &str) -> Result<Option<Person>> {
        let conn = self.conn();
        Ok(conn
            .query_row(
                &format!(
                    "SELECT {COLUMNS} WHERE bitbucket_uuid = ?1 OR nickname = ?1 \
                     ORDER BY last_login DESC LIMIT 1"
                ),
                [name],
                person_row,
            )
            .optional()?)
    }

    fn set_coordinator_admin(&self, name: &str, admin: bool) -> Result<Person> {
        let Some(p) = self.person_by_name(name)? else {
            return Err(CoordError::NotFound(format!(
                "nobody called {} has logged in (a person exists once they logged in with Bitbucket; \
                 `bosun coordinator person ls` lists them)",
                crate::printable(name)
            )));
        };
        self.conn().execute(
            "UPDATE people SET admin = ?2 WHERE id = ?1",
            params![p.id, admin],
        )?;
        Ok(Person { admin, ..p })
    }

    fn people(&self) -> Result<Vec<Person>> {
        let conn = self.conn();
        let mut st = conn.prepare(&format!("SELECT {COLUMNS} ORDER BY nickname, id"))?;
        let rows = st
            .query_map([], person_row)?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }

    fn open_session(
        &self,
        digest: &str,
        person: i64,
        expires: i64,
        replacing: Option<&str>,
    ) -> Result<()> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let now = now_ms();
        tx.execute("DELETE FROM sessions WHERE expires <= ?1", [now])?;
        if let Some(old) = replacing {
            tx.execute("DELETE FROM sessions WHERE digest = ?1", [old])?;
        }
        tx.execute(
            "INSERT INTO sessions(digest, person_id, created, expires) VALUES (?1, ?2, ?3, ?4)",
            params![digest, person, now, expires],
        )?;
        tx.commit()?;
        Ok(())
    }

    fn session_person(&self, digest: &str) -> Result<Option<Person>> {
        let conn = self.conn();
        Ok(conn
            .query_row(
                "SELECT p.id, p.bitbucket_uuid, p.nickname, p.display_name, p.admin, \
                 p.permissions_fetched FROM sessions s JOIN people p ON p.id = s.person_id \
                 WHERE s.digest = ?1 AND s.expires > ?2",
                params![digest, now_ms()],
                person_row,
            )
            .optional()?)
    }

    fn close_session(&self, digest: &str) -> Result<()> {
        self.conn()
            .execute("DELETE FROM sessions WHERE digest = ?1", [digest])?;
        Ok(())
    }

    fn store_permissions(
        &self,
        person: i64,
        permissions: &[(String, Role)],
        at: i64,
    ) -> Result<()> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        tx.execute(
            "DELETE FROM person_permissions WHERE person_id = ?1",
            [person],
        )?;
        for (repo, role) in permissions {
            tx.execute(
                "INSERT INTO person_permissions(person_id, repository, permission) \
                 VALUES (?1, ?2, ?3) ON CONFLICT(person_id, repository) DO UPDATE SET \
                 permission = excluded.permission",
                params![person, repo, role.as_str()],
            )?;
        }
        tx.execute(
            "UPDATE people SET permissions_fetched = ?2 WHERE id = ?1",
            params![person, at],
        )?;
        tx.commit()?;
        Ok(())
    }

    fn set_credential(&self, person: i64, credential: Option<&Credential>) -> Result<()> {
        let (kind, sealed) = match credential {
            Some(c) => (
                c.kind,
                Some(
                    self.secrets
                        .seal(&credential_place(person, c.kind), &c.secret)?,
                ),
            ),
            None => (CredentialKind::RefreshToken, None),
        };
        self.conn().execute(
            "UPDATE people SET refresh_token = ?2, credential_kind = ?3 WHERE id = ?1",
            params![person, sealed, kind.as_str()],
        )?;
        Ok(())
    }

    fn credential(&self, person: i64) -> Result<Option<Credential>> {
        let row: Option<(Option<String>, String)> = self
            .conn()
            .query_row(
                "SELECT refresh_token, credential_kind FROM people WHERE id = ?1",
                [person],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        let Some((Some(sealed), kind)) = row else {
            return Ok(None);
        };
        let kind: CredentialKind = kind
            .parse()
            .map_err(|e: crate::model::UnknownWord| CoordError::Invalid(e.to_string()))?;
        Ok(Some(Credential {
            kind,
            secret: self
                .secrets
                .open(&credential_place(person, kind), &sealed)?,
        }))
    }

    fn person_permissions(&self, person: i64) -> Result<Vec<(String, Role)>> {
        let conn = self.conn();
        let mut st = conn.prepare(
            "SELECT repository, permission FROM person_permissions WHERE person_id = ?1",
        )?;
        let rows = st
            .query_map([person], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        // A word this side does not know gives nothing.
        Ok(rows
            .into_iter()
            .filter_map(|(repo, w)| w.parse::<Role>().ok().map(|r| (repo, r)))
            .collect())
    }

    fn project_access(&self, of: Resource) -> Result<Option<ProjectAccess>> {
        let conn = self.conn();
        let row = |r: &rusqlite::Row<'_>| {
            Ok(ProjectAccess {
                slug: r.get(0)?,
                uuid: r.get(1)?,
                public: r.get(2)?,
            })
        };
        let found = match of {
            Resource::Job(id) => conn
                .query_row(
                    "SELECT p.slug, p.uuid, p.public FROM jobs j JOIN projects p \
                     ON p.id = j.project_id WHERE j.id = ?1",
                    [id],
                    row,
                )
                .optional()?,
            Resource::Pipeline(id) => conn
                .query_row(
                    "SELECT p.slug, p.uuid, p.public FROM pipelines l JOIN projects p \
                     ON p.id = l.project_id WHERE l.id = ?1",
                    [id],
                    row,
                )
                .optional()?,
            Resource::Project(name) => match resolve_project(&conn, &name) {
                Ok(pid) => Some(conn.query_row(
                    "SELECT slug, uuid, public FROM projects WHERE id = ?1",
                    [pid],
                    row,
                )?),
                Err(CoordError::NotFound(_)) => None,
                Err(e) => return Err(e),
            },
        };
        Ok(found)
    }

    fn projects_access(&self) -> Result<Vec<ProjectAccess>> {
        let conn = self.conn();
        let mut st = conn.prepare("SELECT slug, uuid, public FROM projects ORDER BY slug")?;
        let rows = st
            .query_map([], |r| {
                Ok(ProjectAccess {
                    slug: r.get(0)?,
                    uuid: r.get(1)?,
                    public: r.get(2)?,
                })
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }

    fn set_project_public(&self, project: &str, public: bool) -> Result<()> {
        let conn = self.conn();
        let pid = resolve_project(&conn, project)?;
        conn.execute(
            "UPDATE projects SET public = ?2 WHERE id = ?1",
            params![pid, public],
        )?;
        Ok(())
    }
}

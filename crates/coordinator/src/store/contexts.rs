//! Contexts as the store keeps them: the contexts, their variables (values sealed with the
//! store's key, place `c<uuid>/env/<name>`), their restrictions, and the groups operators
//! and people belong to. What they mean (who may use a context, in which order variables win) is
//! `model::contexts`; this file only reads and writes rows. Reached through
//! [`super::ContextStore`].

use super::db::{params, parse_col, Db, Lock, OptionalExtension, SqlStore};
use super::pipelines::uuid_v4;
use super::*;
use crate::model::contexts::{
    check_context_name, check_restriction, check_variable_name, ContextFacts, Member, Restriction,
    RestrictionKind,
};

/// A context as the CLI (and CircleCI's API) lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContextRow {
    /// Its UUID (what the API and the OIDC claim call its id).
    pub id: String,
    pub name: String,
    /// Whose it is (a Bitbucket workspace, as CircleCI's `owner-slug` names an
    /// organization); empty: the coordinator's.
    pub owner: String,
    /// Milliseconds since the epoch.
    pub created: i64,
}

/// A context variable as listed: its name and times, never its value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContextVarRow {
    pub name: String,
    pub created: i64,
    pub updated: i64,
}

/// A restriction as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestrictionRow {
    pub id: String,
    pub kind: RestrictionKind,
    pub value: String,
    pub created: i64,
}

/// A context's variables in the clear, for a job.
pub struct ContextValues {
    pub id: String,
    pub name: String,
    pub vars: Vec<(String, zeroize::Zeroizing<String>)>,
}

impl std::fmt::Debug for ContextValues {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ContextValues")
            .field("id", &self.id)
            .field("name", &self.name)
            .field(
                "vars",
                &self
                    .vars
                    .iter()
                    .map(|(n, _)| n.as_str())
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

fn context_row(r: &dyn super::db::Row) -> super::db::Result<ContextRow> {
    Ok(ContextRow {
        id: r.get(0)?,
        name: r.get(1)?,
        owner: r.get(2)?,
        created: r.get(3)?,
    })
}

/// (row id, row) of context `context` (its name or id).
fn find(conn: &dyn Db, context: &str) -> Result<(i64, ContextRow)> {
    conn.query_row(
        "SELECT uuid, name, owner, created, id FROM contexts WHERE name = ?1 OR uuid = ?1",
        [context],
        |r| Ok((r.get(4)?, context_row(r)?)),
    )
    .optional()?
    .ok_or_else(|| {
        CoordError::NotFound(format!(
            "no context {} (bosun coordinator context ls)",
            crate::text::printable(context)
        ))
    })
}

fn invalid(e: String) -> CoordError {
    CoordError::Invalid(e)
}

/// Contexts of the given names that exist, with their restrictions (for a job's
/// authorization), in transaction or connection `conn`.
pub(super) fn facts_by_name(conn: &dyn Db, names: &[String]) -> Result<Vec<ContextFacts>> {
    let mut out = Vec::new();
    for name in names {
        let row: Option<(i64, String)> = conn
            .query_row(
                "SELECT id, uuid FROM contexts WHERE name = ?1",
                [name],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        let Some((cid, uuid)) = row else { continue };
        let restrictions = restrictions_of(conn, cid)?
            .into_iter()
            .map(|r| Restriction {
                kind: r.kind,
                value: r.value,
            })
            .collect();
        out.push(ContextFacts {
            id: uuid,
            name: name.clone(),
            restrictions,
        });
    }
    Ok(out)
}

fn restrictions_of(conn: &dyn Db, cid: i64) -> Result<Vec<RestrictionRow>> {
    let mut st = conn.prepare(
        "SELECT uuid, kind, value, created FROM context_restrictions WHERE context_id = ?1 ORDER BY id",
    )?;
    let rows = st
        .query_map([cid], |r| {
            Ok(RestrictionRow {
                id: r.get(0)?,
                kind: parse_col(r.get(1)?)?,
                value: r.get(2)?,
                created: r.get(3)?,
            })
        })?
        .collect::<super::db::Result<Vec<_>>>()?;
    Ok(rows)
}

/// The groups of operator `name`.
pub(super) fn groups_of(conn: &dyn Db, name: &str) -> Result<Vec<String>> {
    let mut st =
        conn.prepare("SELECT grp FROM operator_groups WHERE operator = ?1 ORDER BY grp")?;
    let rows = st
        .query_map([name], |r| r.get(0))?
        .collect::<super::db::Result<Vec<_>>>()?;
    Ok(rows)
}

/// The person of Bitbucket account `account` as groups see them (their nickname and their
/// groups, read now); `None` when no person has that account (they never logged in).
fn person_member(conn: &dyn Db, account: &str) -> Result<Option<Member>> {
    let person: Option<(i64, String)> = conn
        .query_row(
            "SELECT id, nickname FROM people WHERE bitbucket_uuid = ?1",
            [account],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    let Some((id, nickname)) = person else {
        return Ok(None);
    };
    Ok(Some(Member {
        name: nickname,
        groups: person_groups_of(conn, id)?,
    }))
}

fn person_groups_of(conn: &dyn Db, person: i64) -> Result<Vec<String>> {
    let mut st = conn.prepare("SELECT grp FROM person_groups WHERE person_id = ?1 ORDER BY grp")?;
    let rows = st
        .query_map([person], |r| r.get(0))?
        .collect::<super::db::Result<Vec<_>>>()?;
    Ok(rows)
}

/// Who approved an approval job, as groups see them, from its row: the person of account
/// `person` when a person approved (a person who is gone is in no group), else operator
/// `name`.
pub(super) fn approver_member(conn: &dyn Db, name: &str, person: Option<&str>) -> Result<Member> {
    Ok(match person {
        Some(account) => person_member(conn, account)?.unwrap_or_else(|| Member {
            name: name.to_owned(),
            groups: Vec::new(),
        }),
        None => Member {
            name: name.to_owned(),
            groups: groups_of(conn, name)?,
        },
    })
}

/// Who triggered pipeline `pipeline` as groups see them: the Bosun person of the account
/// it records, if there is one.
pub(super) fn trigger_member(conn: &dyn Db, pipeline: i64) -> Result<Option<Member>> {
    let account: Option<String> = conn.query_row(
        "SELECT triggered_by FROM pipelines WHERE id = ?1",
        [pipeline],
        |r| r.get(0),
    )?;
    match account {
        Some(a) => person_member(conn, &a),
        None => Ok(None),
    }
}

fn check_group(group: &str) -> Result<()> {
    check_restriction(&Restriction {
        kind: RestrictionKind::Group,
        value: group.to_owned(),
    })
    .map_err(|_| {
        CoordError::Invalid(format!(
            "--group `{}`: expected a name of 1 to 200 printable characters",
            crate::text::printable(group)
        ))
    })
}

/// The variables of the contexts `ids` (UUIDs, in order), opened; a context deleted since
/// is left out.
pub(super) fn values_of(
    conn: &dyn Db,
    secrets: &SecretsKey,
    ids: &[String],
) -> Result<Vec<ContextValues>> {
    let mut out = Vec::new();
    for uuid in ids {
        let row: Option<(i64, String)> = conn
            .query_row(
                "SELECT id, name FROM contexts WHERE uuid = ?1",
                [uuid],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        let Some((cid, name)) = row else { continue };
        let mut st = conn
            .prepare("SELECT name, value FROM context_env WHERE context_id = ?1 ORDER BY name")?;
        let sealed = st
            .query_map([cid], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
            })?
            .collect::<super::db::Result<Vec<_>>>()?;
        let mut vars = Vec::with_capacity(sealed.len());
        for (var, value) in sealed {
            let open = secrets.open(&secrets::context_env_place(uuid, &var), &value)?;
            vars.push((var, open));
        }
        out.push(ContextValues {
            id: uuid.clone(),
            name,
            vars,
        });
    }
    Ok(out)
}

impl<S: SqlStore> ContextStore for S {
    fn create_context(&self, name: &str, owner: &str) -> Result<ContextRow> {
        check_context_name(name).map_err(invalid)?;
        self.conn(|conn| {
            let exists: bool = conn.query_row(
                "SELECT EXISTS(SELECT 1 FROM contexts WHERE name = ?1)",
                [name],
                |r| r.get(0),
            )?;
            if exists {
                return Err(CoordError::Invalid(format!(
                    "context {name} exists already"
                )));
            }
            let row = ContextRow {
                id: uuid_v4()?,
                name: name.to_owned(),
                owner: owner.to_owned(),
                created: now_ms(),
            };
            conn.execute(
                "INSERT INTO contexts(uuid, name, owner, created) VALUES (?1, ?2, ?3, ?4)",
                params![row.id, row.name, row.owner, row.created],
            )?;
            Ok(row)
        })
    }

    fn list_contexts(&self, owner: Option<&str>) -> Result<Vec<ContextRow>> {
        self.read(|conn| {
        let mut st = conn.prepare(
            "SELECT uuid, name, owner, created FROM contexts WHERE CAST(?1 AS TEXT) IS NULL OR owner = ?1 \
             ORDER BY name",
        )?;
        let rows = st
            .query_map([owner], context_row)?
            .collect::<super::db::Result<Vec<_>>>()?;
        Ok(rows)
        })
    }

    fn context(&self, context: &str) -> Result<Option<ContextRow>> {
        self.read(|conn| match find(conn, context) {
            Ok((_, row)) => Ok(Some(row)),
            Err(CoordError::NotFound(_)) => Ok(None),
            Err(e) => Err(e),
        })
    }

    fn delete_context(&self, context: &str) -> Result<()> {
        self.transaction(Lock::Writer, |tx| {
            let (cid, _) = find(tx, context)?;
            // Children first: the cascade needs foreign keys on, which an older connection's
            // settings may not promise.
            tx.execute("DELETE FROM context_env WHERE context_id = ?1", [cid])?;
            tx.execute(
                "DELETE FROM context_restrictions WHERE context_id = ?1",
                [cid],
            )?;
            tx.execute("DELETE FROM contexts WHERE id = ?1", [cid])?;
            Ok(())
        })
    }

    fn set_context_var(&self, context: &str, name: &str, value: &str) -> Result<ContextVarRow> {
        check_variable_name(name).map_err(invalid)?;
        self.transaction(Lock::Writer, |tx| {
            let (cid, row) = find(tx, context)?;
            let sealed = self
                .secrets()
                .seal(&secrets::context_env_place(&row.id, name), value)?;
            let now = now_ms();
            tx.execute(
                "INSERT INTO context_env(context_id, name, value, created, updated) \
             VALUES (?1, ?2, ?3, ?4, ?4) \
             ON CONFLICT(context_id, name) DO UPDATE SET value = ?3, updated = ?4",
                params![cid, name, sealed, now],
            )?;
            let out = tx.query_row(
            "SELECT name, created, updated FROM context_env WHERE context_id = ?1 AND name = ?2",
            params![cid, name],
            |r| {
                Ok(ContextVarRow {
                    name: r.get(0)?,
                    created: r.get(1)?,
                    updated: r.get(2)?,
                })
            },
        )?;
            Ok(out)
        })
    }

    fn remove_context_var(&self, context: &str, name: &str) -> Result<()> {
        self.conn(|conn| {
            let (cid, row) = find(conn, context)?;
            let n = conn.execute(
                "DELETE FROM context_env WHERE context_id = ?1 AND name = ?2",
                params![cid, name],
            )?;
            if n == 0 {
                return Err(CoordError::NotFound(format!(
                    "context {} has no variable {}",
                    row.name,
                    crate::text::printable(name)
                )));
            }
            Ok(())
        })
    }

    fn list_context_vars(&self, context: &str) -> Result<Vec<ContextVarRow>> {
        self.read(|conn| {
            let (cid, _) = find(conn, context)?;
            let mut st = conn.prepare(
            "SELECT name, created, updated FROM context_env WHERE context_id = ?1 ORDER BY name",
        )?;
            let rows = st
                .query_map([cid], |r| {
                    Ok(ContextVarRow {
                        name: r.get(0)?,
                        created: r.get(1)?,
                        updated: r.get(2)?,
                    })
                })?
                .collect::<super::db::Result<Vec<_>>>()?;
            Ok(rows)
        })
    }

    fn add_restriction(&self, context: &str, r: &Restriction) -> Result<RestrictionRow> {
        check_restriction(r).map_err(invalid)?;
        self.conn(|conn| {
            let (cid, row) = find(conn, context)?;
            // A project as CircleCI's slugs name it too (`bb/acme/widget`); kept as the
            // project's current slug, so a project that does not exist is refused now.
            let project;
            let r = if r.kind == RestrictionKind::Project {
                let given = ["bb/", "bitbucket/"]
                    .iter()
                    .find_map(|p| r.value.strip_prefix(p))
                    .unwrap_or(&r.value);
                let pid = super::pipelines::resolve_project(conn, given)?;
                let slug: String =
                    conn.query_row("SELECT slug FROM projects WHERE id = ?1", [pid], |x| {
                        x.get(0)
                    })?;
                project = Restriction {
                    kind: r.kind,
                    value: slug,
                };
                &project
            } else {
                r
            };
            let out = RestrictionRow {
                id: uuid_v4()?,
                kind: r.kind,
                value: r.value.clone(),
                created: now_ms(),
            };
            let n = conn.execute(
            "INSERT OR IGNORE INTO context_restrictions(uuid, context_id, kind, value, created) \
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![out.id, cid, out.kind.as_str(), out.value, out.created],
        )?;
            if n == 0 {
                return Err(CoordError::Invalid(format!(
                    "context {} has this {} restriction already",
                    row.name, r.kind
                )));
            }
            Ok(out)
        })
    }

    fn remove_restriction(&self, context: &str, id: &str) -> Result<()> {
        self.conn(|conn| {
            let (cid, row) = find(conn, context)?;
            let n = conn.execute(
                "DELETE FROM context_restrictions WHERE context_id = ?1 AND uuid = ?2",
                params![cid, id],
            )?;
            if n == 0 {
                return Err(CoordError::NotFound(format!(
                    "context {} has no restriction {}",
                    row.name,
                    crate::text::printable(id)
                )));
            }
            Ok(())
        })
    }

    fn list_restrictions(&self, context: &str) -> Result<Vec<RestrictionRow>> {
        self.read(|conn| {
            let (cid, _) = find(conn, context)?;
            restrictions_of(conn, cid)
        })
    }

    fn job_context_values(&self, job: i64) -> Result<Vec<ContextValues>> {
        self.read(|conn| {
            let ids: Option<String> = conn
                .query_row("SELECT contexts FROM jobs WHERE id = ?1", [job], |r| {
                    r.get(0)
                })
                .optional()?;
            let ids: Vec<String> = ids
                .as_deref()
                .and_then(|s| serde_json::from_str(s).ok())
                .unwrap_or_default();
            values_of(conn, self.secrets(), &ids)
        })
    }

    fn add_operator_group(&self, operator: &str, group: &str) -> Result<()> {
        check_group(group)?;
        self.conn(|conn| {
            conn.execute(
                "INSERT OR IGNORE INTO operator_groups(operator, grp) VALUES (?1, ?2)",
                params![operator, group],
            )?;
            Ok(())
        })
    }

    fn remove_operator_group(&self, operator: &str, group: &str) -> Result<bool> {
        self.conn(|conn| {
            Ok(conn.execute(
                "DELETE FROM operator_groups WHERE operator = ?1 AND grp = ?2",
                params![operator, group],
            )? > 0)
        })
    }

    fn operator_groups(&self, operator: &str) -> Result<Vec<String>> {
        self.read(|conn| groups_of(conn, operator))
    }

    fn add_person_group(&self, person: i64, group: &str) -> Result<bool> {
        check_group(group)?;
        self.conn(|conn| {
            Ok(conn.execute(
                "INSERT INTO person_groups(person_id, grp) VALUES (?1, ?2) ON CONFLICT DO NOTHING",
                params![person, group],
            )? > 0)
        })
    }

    fn remove_person_group(&self, person: i64, group: &str) -> Result<bool> {
        self.conn(|conn| {
            Ok(conn.execute(
                "DELETE FROM person_groups WHERE person_id = ?1 AND grp = ?2",
                params![person, group],
            )? > 0)
        })
    }

    fn person_groups(&self, person: i64) -> Result<Vec<String>> {
        self.read(|conn| person_groups_of(conn, person))
    }
}

/// The ids of the contexts named `names` that exist, in order.
pub(super) fn ids_by_name(conn: &dyn Db, names: &[String]) -> Result<Vec<String>> {
    let mut out = Vec::with_capacity(names.len());
    for name in names {
        let id: Option<String> = conn
            .query_row("SELECT uuid FROM contexts WHERE name = ?1", [name], |r| {
                r.get(0)
            })
            .optional()?;
        out.extend(id);
    }
    Ok(out)
}

/// Whether a job of pipeline `pipeline` naming contexts `wanted` may run with them, as
/// `model::contexts::authorize` decides from the rows: `Ok(Ok(ids))`, or `Ok(Err(reason))`
/// for an `unauthorized` job. `runs_for`: who the job runs for
/// (`model::advance::to_authorize`).
pub(super) fn authorize_job(
    conn: &dyn Db,
    pipeline: i64,
    wanted: &[String],
    runs_for: &crate::model::contexts::RunsFor,
) -> Result<std::result::Result<Vec<String>, String>> {
    use crate::model::contexts::authorize;
    use crate::model::expression::{Facts, Value, Var};
    type Row = (
        String,
        i64,
        Option<String>,
        Option<String>,
        Option<String>,
        Option<String>,
        String,
        String,
        String,
        String,
        String,
    );
    let row: Row = conn.query_row(
        "SELECT p.uuid, p.number, p.branch, p.tag, p.revision, p.base_revision, p.trigger_source, \
         p.event, p.event_action, pr.slug, pr.clone_url \
         FROM pipelines p JOIN projects pr ON pr.id = p.project_id WHERE p.id = ?1",
        [pipeline],
        |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
                r.get(6)?,
                r.get(7)?,
                r.get(8)?,
                r.get(9)?,
                r.get(10)?,
            ))
        },
    )?;
    let (uuid, number, branch, tag, revision, base, trigger, event, action, slug, url) = row;
    // The values as the config sees them (`pipelines::config::compile`): an absent branch
    // or tag is the empty string.
    let mut facts = Facts::default();
    let text = |v: &Option<String>| Some(v.clone().unwrap_or_default());
    facts
        .text(Var::PipelineId, Some(&uuid))
        .set(Var::PipelineNumber, Value::Number(number))
        .text(Var::ProjectGitUrl, Some(&url))
        .text(Var::ProjectType, Some("bitbucket"))
        .text(Var::ProjectSlug, Some(&format!("bitbucket/{slug}")))
        .text(Var::GitBranch, text(&branch).as_deref())
        .text(Var::GitTag, text(&tag).as_deref())
        .text(Var::GitRevision, text(&revision).as_deref())
        .text(Var::GitBaseRevision, text(&base).as_deref())
        .text(
            Var::TriggerType,
            Some(if trigger == "webhook" {
                "webhook"
            } else {
                "api"
            }),
        )
        .text(Var::TriggerSource, Some(&trigger))
        .text(Var::EventName, Some(&event))
        .text(Var::EventAction, Some(&action))
        .text(Var::ConfigSource, Some("vcs"))
        .text(Var::ScheduleName, Some(""))
        .text(Var::ScheduleId, Some(""))
        // A pipeline's jobs are queued without SSH; a rerun with SSH is a job of its own.
        .set(Var::JobSshEnabled, Value::Bool(false));
    let found = facts_by_name(conn, wanted)?;
    Ok(authorize(wanted, &found, &slug, &facts, runs_for)
        .map(|cs| cs.into_iter().map(|c| c.id).collect()))
}

/// Whether `by` may approve approval job `approval` (workflow job row `wjid`): the jobs
/// downstream of it that use a group-restricted context need a member of the group
/// (`model::contexts::may_approve`), their groups read now. `Forbidden` with the reason
/// otherwise.
pub(super) fn check_approver(
    conn: &dyn Db,
    wjid: i64,
    approval: &str,
    by: &crate::model::contexts::Principal,
) -> Result<()> {
    use crate::model::contexts::may_approve;
    let jobs: Vec<(String, String, String)> = {
        let mut st = conn.prepare(
            "SELECT name, requires, contexts FROM workflow_jobs \
             WHERE workflow_id = (SELECT workflow_id FROM workflow_jobs WHERE id = ?1) ORDER BY position",
        )?;
        st.query_map([wjid], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
            .collect::<super::db::Result<Vec<_>>>()?
    };
    let job_names: Vec<String> = jobs.iter().map(|(n, _, _)| n.clone()).collect();
    let requires: Vec<Vec<String>> = jobs
        .iter()
        .map(|(_, r, _)| {
            super::pipelines::requires_from_json(r)
                .into_iter()
                .map(|(n, _)| n)
                .collect()
        })
        .collect();
    let mut names: Vec<String> = Vec::new();
    for i in crate::model::advance::downstream(&job_names, &requires, approval) {
        let cs: Vec<String> = serde_json::from_str(&jobs[i].2).unwrap_or_default();
        for c in cs {
            if !names.contains(&c) {
                names.push(c);
            }
        }
    }
    if names.is_empty() {
        return Ok(());
    }
    let contexts = facts_by_name(conn, &names)?;
    let member = approver_member(conn, by.name(), by.account())?;
    may_approve(approval, &contexts, &member).map_err(CoordError::Forbidden)
}

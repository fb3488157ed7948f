//! A project's variables and switches as its settings page reads and changes them
//! ([`ProjectSettingsStore`]), one implementation for SQLite and PostgreSQL
//! ([`SqlStore`]). A secret value crosses the trait in the clear and is sealed here, in
//! its place (`secrets::env_place`), exactly as `project add --secret-env` seals it, so a
//! claim opens it the same way. What a value may be and how it is shown are
//! `model::project_settings`' rules.

use super::db::{params, OptionalExtension, SqlStore};
use super::pipelines::resolve_project;
use super::Result;
use crate::model::project_settings::Switches;
use crate::model::ssh_policy::SshPolicy;
use crate::secrets;
use zeroize::Zeroizing;

/// One of a project's variables, its value opened.
#[derive(Debug, Clone)]
pub struct ProjectVar {
    pub name: String,
    pub value: Zeroizing<String>,
    /// Masked in the job's log (and sealed at rest).
    pub secret: bool,
}

pub trait ProjectSettingsStore: Send + Sync {
    /// The project's current slug and switches; `None` when there is no such project.
    fn project_switches(&self, project: &str) -> Result<Option<(String, Switches)>>;
    /// The project's variables by name, their values opened.
    fn project_vars(&self, project: &str) -> Result<Vec<ProjectVar>>;
    /// Add variable `name`, or replace its value (checked by the caller); a `secret` one is
    /// sealed.
    fn set_project_var(&self, project: &str, name: &str, value: &str, secret: bool) -> Result<()>;
    /// Remove variable `name`: whether it was there.
    fn remove_project_var(&self, project: &str, name: &str) -> Result<bool>;
}

impl<S: SqlStore> ProjectSettingsStore for S {
    fn project_switches(&self, project: &str) -> Result<Option<(String, Switches)>> {
        self.read(|conn| {
            let pid = match resolve_project(conn, project) {
                Ok(pid) => pid,
                Err(crate::error::CoordError::NotFound(_)) => return Ok(None),
                Err(e) => return Err(e),
            };
            Ok(conn
                .query_row(
                    "SELECT p.slug, p.public, COALESCE(b.public, 0), p.ssh_policy \
                     FROM projects p LEFT JOIN project_badges b ON b.project_id = p.id \
                     WHERE p.id = ?1",
                    params![pid],
                    |r| {
                        let policy: String = r.get(3)?;
                        Ok((
                            r.get::<_, String>(0)?,
                            Switches {
                                public: r.get(1)?,
                                public_badges: r.get(2)?,
                                // A word this side does not know reads as the stricter one
                                // (as a rerun reads it).
                                ssh_policy: policy.parse().unwrap_or(SshPolicy::Refuse),
                            },
                        ))
                    },
                )
                .optional()?)
        })
    }

    fn project_vars(&self, project: &str) -> Result<Vec<ProjectVar>> {
        let rows = self.read(|conn| {
            let pid = resolve_project(conn, project)?;
            let mut st = conn.prepare(
                "SELECT name, value, secret FROM project_env WHERE project_id = ?1 ORDER BY name",
            )?;
            let rows = st
                .query_map(params![pid], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        Zeroizing::new(r.get::<_, String>(1)?),
                        r.get::<_, bool>(2)?,
                    ))
                })?
                .collect::<super::db::Result<Vec<_>>>()?;
            Ok((pid, rows))
        })?;
        let (pid, rows) = rows;
        rows.into_iter()
            .map(|(name, value, secret)| {
                let value = if secret {
                    self.secrets()
                        .open(&secrets::env_place(pid, &name), &value)?
                } else {
                    value
                };
                Ok(ProjectVar {
                    name,
                    value,
                    secret,
                })
            })
            .collect()
    }

    fn set_project_var(&self, project: &str, name: &str, value: &str, secret: bool) -> Result<()> {
        self.conn(|conn| {
            let pid = resolve_project(conn, project)?;
            let stored = if secret {
                Zeroizing::new(self.secrets().seal(&secrets::env_place(pid, name), value)?)
            } else {
                Zeroizing::new(value.to_owned())
            };
            conn.execute(
                "INSERT INTO project_env(project_id, name, value, secret) VALUES (?1, ?2, ?3, ?4) \
                 ON CONFLICT (project_id, name) DO UPDATE SET value = excluded.value, \
                 secret = excluded.secret",
                params![pid, name, stored.as_str(), secret],
            )?;
            Ok(())
        })
    }

    fn remove_project_var(&self, project: &str, name: &str) -> Result<bool> {
        self.conn(|conn| {
            let pid = resolve_project(conn, project)?;
            Ok(conn.execute(
                "DELETE FROM project_env WHERE project_id = ?1 AND name = ?2",
                params![pid, name],
            )? > 0)
        })
    }
}

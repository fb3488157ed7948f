//! Who may take jobs: registration tokens (kept as digests), agents, and the projects
//! restricted to some of them.

use super::*;

impl PgStore {
    /// A new registration token, valid for `ttl` (for ever without one); only its digest is
    /// kept, so this is the one time it can be read. Returns (token id, token).
    pub(super) fn create_registration_token(
        &self,
        ttl: Option<Duration>,
    ) -> Result<(String, String)> {
        let mut conn = self.conn()?;
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let created = Self::insert_registration_token(&tx, ttl)?;
        tx.commit()?;
        Ok(created)
    }

    /// Revoke every registration token and make a new one (agents registered already keep
    /// their own tokens). Returns (token id, token).
    pub(super) fn rotate_registration_token(
        &self,
        ttl: Option<Duration>,
    ) -> Result<(String, String)> {
        let mut conn = self.conn()?;
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute("UPDATE registration_tokens SET revoked = 1", [])?;
        let created = Self::insert_registration_token(&tx, ttl)?;
        tx.commit()?;
        Ok(created)
    }

    fn insert_registration_token(
        tx: &Transaction<'_>,
        ttl: Option<Duration>,
    ) -> Result<(String, String)> {
        let id = format!("reg-{}", random_hex(4)?);
        let token = format!("bosun-reg-{}", random_hex(24)?);
        let now = now_ms();
        let expires =
            ttl.map(|t| now.saturating_add(i64::try_from(t.as_millis()).unwrap_or(i64::MAX)));
        tx.execute(
            "INSERT INTO registration_tokens(id, token_sha256, created, expires) VALUES (?1, ?2, ?3, ?4)",
            params![id, sha256_hex(token.as_bytes()), now, expires],
        )?;
        Ok((id, token))
    }

    /// Is `token` a registration token that is neither revoked nor expired?
    pub(super) fn registration_token_valid(&self, token: &str) -> Result<bool> {
        Ok(self.conn()?.query_row(
            "SELECT EXISTS(SELECT 1 FROM registration_tokens WHERE token_sha256 = ?1 \
             AND revoked = 0 AND (expires IS NULL OR expires > ?2))",
            params![sha256_hex(token.as_bytes()), now_ms()],
            |r| r.get(0),
        )?)
    }

    pub(super) fn list_registration_tokens(&self) -> Result<Vec<RegistrationTokenRow>> {
        let conn = self.conn()?;
        let mut st = conn.prepare(
            "SELECT id, created, expires, revoked FROM registration_tokens ORDER BY created",
        )?;
        let rows = st
            .query_map([], |r| {
                Ok(RegistrationTokenRow {
                    id: r.get(0)?,
                    created: r.get(1)?,
                    expires: r.get(2)?,
                    revoked: r.get(3)?,
                })
            })?
            .collect::<sql::Result<Vec<_>>>()?;
        Ok(rows)
    }

    /// Register an agent; returns (agent id, agent token). Only the token's digest is kept.
    pub(super) fn register_agent(
        &self,
        name: &str,
        resource_class: &str,
        labels: &[String],
        version: &str,
    ) -> Result<(String, String)> {
        let id = format!("agent-{}", random_hex(8)?);
        let token = format!("bosun-agent-{}", random_hex(32)?);
        let now = now_ms();
        self.conn()?.execute(
            "INSERT INTO agents(id, name, token_sha256, resource_class, labels, version, created, last_seen) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7)",
            params![id, name, sha256_hex(token.as_bytes()), resource_class, json_labels(labels), version, now],
        )?;
        Ok((id, token))
    }

    /// The agent a bearer token belongs to (revoked ones included, so callers can say so).
    pub(super) fn agent_by_token(&self, token: &str) -> Result<Option<Agent>> {
        Ok(self
            .conn()?
            .query_row(
                "SELECT id, name, revoked FROM agents WHERE token_sha256 = ?1",
                [sha256_hex(token.as_bytes())],
                |r| {
                    Ok(Agent {
                        id: r.get(0)?,
                        name: r.get(1)?,
                        revoked: r.get(2)?,
                    })
                },
            )
            .optional()?)
    }

    /// Set an agent's resource class and labels (the operator's word; the agent's claims do
    /// not change them). Returns how many agents matched the id.
    pub(super) fn relabel_agent(
        &self,
        id: &str,
        resource_class: &str,
        labels: &[String],
    ) -> Result<usize> {
        Ok(self.conn()?.execute(
            "UPDATE agents SET resource_class = ?2, labels = ?3 WHERE id = ?1",
            params![id, resource_class, json_labels(labels)],
        )?)
    }

    /// Only these agents (ids) may run the project's jobs; an empty list lifts the
    /// restriction.
    pub(super) fn restrict_project(&self, slug: &str, agents: &[String]) -> Result<()> {
        let mut conn = self.conn()?;
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let pid: i64 = tx
            .query_row("SELECT id FROM projects WHERE slug = ?1", [slug], |r| {
                r.get(0)
            })
            .optional()?
            .ok_or_else(|| CoordError::NotFound(format!("no project {slug}")))?;
        for a in agents {
            let known: bool = tx.query_row(
                "SELECT EXISTS(SELECT 1 FROM agents WHERE id = ?1)",
                [a],
                |r| r.get(0),
            )?;
            if !known {
                return Err(CoordError::NotFound(format!(
                    "no agent with id {a} (`bosun coordinator agents` lists them)"
                )));
            }
        }
        tx.execute("DELETE FROM project_agents WHERE project_id = ?1", [pid])?;
        for a in agents {
            tx.execute(
                "INSERT OR IGNORE INTO project_agents(project_id, agent_id) VALUES (?1, ?2)",
                params![pid, a],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Revoke by id or name; returns how many agents were revoked.
    pub(super) fn revoke_agent(&self, who: &str) -> Result<usize> {
        Ok(self.conn()?.execute(
            "UPDATE agents SET revoked = 1 WHERE id = ?1 OR name = ?1",
            [who],
        )?)
    }

    /// Every agent, oldest first.
    pub fn list_agents(&self) -> Result<Vec<AgentRow>> {
        let conn = self.conn()?;
        let mut st = conn.prepare(
            "SELECT id, name, resource_class, last_seen, revoked FROM agents ORDER BY created",
        )?;
        let rows = st
            .query_map([], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
            })?
            .collect::<sql::Result<Vec<_>>>()?;
        Ok(rows)
    }
}

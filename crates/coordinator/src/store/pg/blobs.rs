//! The index of the store over the protocol: which project holds which blob (and how much
//! of its quota they take), and what names them — workspace layers by workflow run, caches
//! by key, a job's artifacts and test results. The bytes are files, kept above the store by
//! the coordinator's blob module (which calls this index once a blob is whole and checked);
//! this is the part that must commit with the rest.
//!
//! Everything an agent reaches goes through a [`JobScope`], made only for the agent that
//! holds the job's lease: a job reads and names only its own project's blobs.

use super::*;
use bosun_protocol::{
    WireCache, WireFailedTest, WireLayer, WireTestResults, MAX_FAILED_TESTS, MAX_TEST_MESSAGE,
};

use crate::store::blobs::{JobResults, JobScope, OverQuota};

pub(super) fn workspace_of(id: i64, stored: Option<String>) -> String {
    stored.unwrap_or_else(|| format!("job-{id}"))
}

/// A lapsed attempt's stored artifacts, test results and workspace layers go (inside the
/// transaction that re-queues the job).
pub(super) fn forget_attempt(tx: &Connection, id: i64) -> Result<()> {
    for table in [
        "artifacts",
        "test_results",
        "failed_tests",
        "workspace_layers",
    ] {
        tx.execute(&format!("DELETE FROM {table} WHERE job_id = ?1"), [id])?;
    }
    Ok(())
}

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

impl PgStore {
    /// The scope of job `id` for `agent_id` writing as `attempt`: only while it holds the
    /// lease; otherwise why not.
    pub(super) fn job_scope(
        &self,
        id: i64,
        agent_id: &str,
        attempt: Option<u32>,
    ) -> Result<std::result::Result<JobScope, Lease>> {
        let conn = self.conn()?;
        match Self::lease_state(&conn, id, agent_id, attempt)? {
            Lease::Held => {}
            other => return Ok(Err(other)),
        }
        let scope = conn.query_row(
            "SELECT j.project_id, p.slug, j.job_name, j.workspace, j.pr_fork \
             FROM jobs j JOIN projects p ON p.id = j.project_id WHERE j.id = ?1",
            [id],
            |r| {
                Ok(JobScope {
                    job_id: id,
                    project_id: r.get(0)?,
                    slug: r.get(1)?,
                    job_name: r.get(2)?,
                    workspace: workspace_of(id, r.get(3)?),
                    fork: r.get(4)?,
                })
            },
        )?;
        Ok(Ok(scope))
    }

    /// Bytes of blobs project `project_id` holds.
    pub(super) fn blob_usage(&self, project_id: i64) -> Result<u64> {
        let n: i64 = self.conn()?.query_row(
            "SELECT COALESCE(SUM(size), 0)::BIGINT FROM blob_refs WHERE project_id = ?1",
            [project_id],
            |r| r.get(0),
        )?;
        Ok(n.max(0) as u64)
    }

    /// The size of blob `sha256` when the project holds it (whole and checked).
    pub(super) fn project_blob(&self, project_id: i64, sha256: &str) -> Result<Option<u64>> {
        let size: Option<i64> = self
            .conn()?
            .query_row(
                "SELECT size FROM blob_refs WHERE project_id = ?1 AND sha256 = ?2",
                params![project_id, sha256],
                |r| r.get(0),
            )
            .optional()?;
        Ok(size.map(|s| s.max(0) as u64))
    }

    /// May the project take `size` more bytes (a blob it does not hold yet)?
    pub(super) fn check_quota(
        &self,
        scope: &JobScope,
        size: u64,
        quota: u64,
    ) -> Result<Option<OverQuota>> {
        let used = self.blob_usage(scope.project_id)?;
        Ok((used.saturating_add(size) > quota).then(|| OverQuota {
            slug: scope.slug.clone(),
            used,
            adding: size,
            quota,
        }))
    }

    /// Record that the project holds blob `sha256` (its file is in place and checked), within
    /// its quota; a blob it holds already is not counted twice.
    pub(super) fn add_blob_ref(
        &self,
        scope: &JobScope,
        sha256: &str,
        size: u64,
        quota: u64,
    ) -> Result<std::result::Result<(), OverQuota>> {
        let mut conn = self.conn()?;
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let held: bool = tx
            .query_row(
                "SELECT 1 FROM blob_refs WHERE project_id = ?1 AND sha256 = ?2",
                params![scope.project_id, sha256],
                |_| Ok(true),
            )
            .optional()?
            .unwrap_or(false);
        if held {
            return Ok(Ok(()));
        }
        let used: i64 = tx.query_row(
            "SELECT COALESCE(SUM(size), 0)::BIGINT FROM blob_refs WHERE project_id = ?1",
            [scope.project_id],
            |r| r.get(0),
        )?;
        let used = used.max(0) as u64;
        if used.saturating_add(size) > quota {
            return Ok(Err(OverQuota {
                slug: scope.slug.clone(),
                used,
                adding: size,
                quota,
            }));
        }
        tx.execute(
            "INSERT INTO blob_refs(project_id, sha256, size, created) VALUES (?1, ?2, ?3, ?4)",
            params![scope.project_id, sha256, to_i64(size), now_ms()],
        )?;
        tx.commit()?;
        Ok(Ok(()))
    }

    /// Add a layer (a blob the project holds) to the job's workspace. `false`: the project
    /// does not hold that blob.
    pub(super) fn add_layer(&self, scope: &JobScope, sha256: &str) -> Result<bool> {
        let Some(size) = self.project_blob(scope.project_id, sha256)? else {
            return Ok(false);
        };
        self.conn()?.execute(
            "INSERT INTO workspace_layers(project_id, workspace, job_id, job_name, sha256, size) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                scope.project_id,
                scope.workspace,
                scope.job_id,
                scope.job_name,
                sha256,
                to_i64(size)
            ],
        )?;
        Ok(true)
    }

    /// The job's workspace: its layers, oldest first.
    pub(super) fn layers(&self, scope: &JobScope) -> Result<Vec<WireLayer>> {
        let conn = self.conn()?;
        let mut st = conn.prepare(
            "SELECT job_name, sha256, size FROM workspace_layers \
             WHERE project_id = ?1 AND workspace = ?2 ORDER BY id",
        )?;
        Ok(st
            .query_map(params![scope.project_id, scope.workspace], |r| {
                Ok(WireLayer {
                    job: r.get(0)?,
                    blob: r.get(1)?,
                    size: r.get::<_, i64>(2)?.max(0) as u64,
                })
            })?
            .collect::<sql::Result<Vec<_>>>()?)
    }

    /// The project's newest cache whose key starts with `prefix` (CircleCI's rule: a newer
    /// prefix match beats an older exact one).
    pub(super) fn find_cache(&self, project_id: i64, prefix: &str) -> Result<Option<WireCache>> {
        let conn = self.conn()?;
        Ok(conn
            .query_row(
                "SELECT key, sha256, size, created FROM caches \
                 WHERE project_id = ?1 AND substr(key, 1, length(?2::text)) = ?2::text \
                 ORDER BY created DESC, seq DESC LIMIT 1",
                params![project_id, prefix],
                |r| {
                    Ok(WireCache {
                        key: r.get(0)?,
                        blob: r.get(1)?,
                        size: r.get::<_, i64>(2)?.max(0) as u64,
                        created_ms: r.get(3)?,
                    })
                },
            )
            .optional()?)
    }

    /// Save a cache under `key` (a blob the project holds). Caches are immutable: `Ok(false)`
    /// when the key exists. `None`: the project does not hold the blob.
    pub(super) fn save_cache(
        &self,
        scope: &JobScope,
        key: &str,
        sha256: &str,
    ) -> Result<Option<bool>> {
        let Some(size) = self.project_blob(scope.project_id, sha256)? else {
            return Ok(None);
        };
        let n = self.conn()?.execute(
            "INSERT OR IGNORE INTO caches(project_id, key, sha256, size, created, job_id) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                scope.project_id,
                key,
                sha256,
                to_i64(size),
                now_ms(),
                scope.job_id
            ],
        )?;
        Ok(Some(n == 1))
    }

    /// Name a blob the project holds as the job's artifact `path`. `false`: it does not hold
    /// the blob.
    pub(super) fn add_artifact(&self, scope: &JobScope, path: &str, sha256: &str) -> Result<bool> {
        let Some(size) = self.project_blob(scope.project_id, sha256)? else {
            return Ok(false);
        };
        self.conn()?.execute(
            "INSERT INTO artifacts(job_id, path, sha256, size) VALUES (?1, ?2, ?3, ?4) \
             ON CONFLICT (job_id, path) DO UPDATE SET sha256 = EXCLUDED.sha256, size = EXCLUDED.size",
            params![scope.job_id, path, sha256, to_i64(size)],
        )?;
        Ok(true)
    }

    /// Add one `store_test_results` step's results to the job's (counts add up; failed tests
    /// are kept up to [`MAX_FAILED_TESTS`] per job, messages cut at [`MAX_TEST_MESSAGE`]).
    pub(super) fn add_test_results(&self, scope: &JobScope, t: &WireTestResults) -> Result<()> {
        let mut conn = self.conn()?;
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        // The stored counts are named by their table: PostgreSQL refuses a bare `tests`
        // there as ambiguous (it could be `excluded`'s).
        tx.execute(
            "INSERT INTO test_results(job_id, tests, failures, errors, skipped) \
             VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT(job_id) DO UPDATE SET \
             tests = test_results.tests + excluded.tests, \
             failures = test_results.failures + excluded.failures, \
             errors = test_results.errors + excluded.errors, \
             skipped = test_results.skipped + excluded.skipped",
            params![
                scope.job_id,
                to_i64(t.tests),
                to_i64(t.failures),
                to_i64(t.errors),
                to_i64(t.skipped)
            ],
        )?;
        let have: i64 = tx.query_row(
            "SELECT COUNT(*) FROM failed_tests WHERE job_id = ?1",
            [scope.job_id],
            |r| r.get(0),
        )?;
        let room = MAX_FAILED_TESTS.saturating_sub(have.max(0) as usize);
        for (i, f) in t.failed.iter().take(room).enumerate() {
            tx.execute(
                "INSERT INTO failed_tests(job_id, seq, name, classname, message) \
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![
                    scope.job_id,
                    have + i as i64,
                    cut(&f.name, MAX_TEST_MESSAGE),
                    cut(&f.classname, MAX_TEST_MESSAGE),
                    cut(&f.message, MAX_TEST_MESSAGE)
                ],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    /// A job's artifacts (path, size) and test results, for its page.
    pub(super) fn job_results(&self, id: i64) -> Result<JobResults> {
        let conn = self.reader()?;
        let artifacts = {
            let mut st =
                conn.prepare("SELECT path, size FROM artifacts WHERE job_id = ?1 ORDER BY path")?;
            st.query_map([id], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?.max(0) as u64))
            })?
            .collect::<sql::Result<Vec<_>>>()?
        };
        let counts: Option<(i64, i64, i64, i64)> = conn
            .query_row(
                "SELECT tests, failures, errors, skipped FROM test_results WHERE job_id = ?1",
                [id],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .optional()?;
        let tests = match counts {
            None => None,
            Some((tests, failures, errors, skipped)) => {
                let mut st = conn.prepare(
                    "SELECT name, classname, message FROM failed_tests WHERE job_id = ?1 \
                     ORDER BY seq",
                )?;
                let failed = st
                    .query_map([id], |r| {
                        Ok(WireFailedTest {
                            name: r.get(0)?,
                            classname: r.get(1)?,
                            message: r.get(2)?,
                        })
                    })?
                    .collect::<sql::Result<Vec<_>>>()?;
                let n = |v: i64| v.max(0) as u64;
                Some(WireTestResults {
                    tests: n(tests),
                    failures: n(failures),
                    errors: n(errors),
                    skipped: n(skipped),
                    failed,
                })
            }
        };
        Ok(JobResults { artifacts, tests })
    }

    /// The blob and size of job `id`'s artifact `path`.
    pub(super) fn artifact(&self, id: i64, path: &str) -> Result<Option<(String, u64)>> {
        let conn = self.reader()?;
        Ok(conn
            .query_row(
                "SELECT sha256, size FROM artifacts WHERE job_id = ?1 AND path = ?2",
                params![id, path],
                |r| Ok((r.get(0)?, r.get::<_, i64>(1)?.max(0) as u64)),
            )
            .optional()?)
    }
}

/// `s` cut to at most `max` bytes, at a character boundary.
fn cut(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

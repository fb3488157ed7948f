//! The index of the store over the protocol: which project holds which blob (and how much
//! of its quota they take), and what names them — workspace layers by workflow run, caches
//! by key, a job's artifacts and test results. The bytes are files, kept above the store by
//! the coordinator's blob module (which calls this index once a blob is whole and checked);
//! this is the part that must commit with the rest.
//!
//! Everything an agent reaches goes through a [`JobScope`], made only for the agent that
//! holds the job's lease: a job reads and names only its own project's blobs.
//!
//! One implementation of [`BlobIndex`] for SQLite and PostgreSQL ([`SqlStore`]); only the
//! lease check is each backend's own ([`LeaseCheck`]).

use super::blob_index::BlobIndex;
use super::db::{params, Db, Lock, OptionalExtension, SqlStore};
use super::*;
use bosun_protocol::{
    WireCache, WireFailedTest, WireLayer, WireStore, WireTestResults, MAX_FAILED_TESTS,
    MAX_TEST_MESSAGE,
};

/// What a leased job may reach of the store.
#[derive(Debug, Clone)]
pub struct JobScope {
    pub job_id: i64,
    pub project_id: i64,
    pub slug: String,
    pub job_name: String,
    pub workspace: String,
    /// A build of a pull request from a fork: it reads caches, never writes them.
    pub fork: bool,
}

/// A blob would take a project past its quota.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverQuota {
    pub slug: String,
    pub used: u64,
    pub adding: u64,
    pub quota: u64,
}

impl std::fmt::Display for OverQuota {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "project {}'s stored blobs would take {} of its {} quota ({} held, {} more): \
             persist or cache less, or raise `--blob-quota` of `bosun coordinator serve`",
            self.slug,
            human_bytes(self.used.saturating_add(self.adding)),
            human_bytes(self.quota),
            human_bytes(self.used),
            human_bytes(self.adding)
        )
    }
}

/// `1.5 MiB`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// A job's artifacts and test results, for its page.
#[derive(Debug, Clone, Default)]
pub struct JobResults {
    pub artifacts: Vec<(String, u64)>,
    pub tests: Option<WireTestResults>,
}

pub(super) fn workspace_of(id: i64, stored: Option<String>) -> String {
    stored.unwrap_or_else(|| format!("job-{id}"))
}

/// What the claim tells the agent about the job's store.
pub(super) fn wire_store(conn: &dyn Db, id: i64) -> Result<WireStore> {
    let (workspace, fork): (Option<String>, bool) = conn.query_row(
        "SELECT workspace, pr_fork FROM jobs WHERE id = ?1",
        [id],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    Ok(WireStore {
        workspace: workspace_of(id, workspace),
        cache_writes: !fork,
    })
}

/// A lapsed attempt's stored artifacts, test results and workspace layers go (inside the
/// transaction that re-queues the job).
pub(super) fn forget_attempt(tx: &dyn Db, id: i64) -> Result<()> {
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

/// May `agent_id`, writing as `attempt`, write to job `id` now? Each backend's own check
/// (`Store::lease_state`, `PgStore::lease_state`), which lives with its queue's SQL
/// (`lease.rs`, `pg/lease.rs`: PostgreSQL's takes the job's row lock).
pub(in crate::store) trait LeaseCheck {
    fn lease_now(&self, id: i64, agent_id: &str, attempt: Option<u32>) -> Result<Lease>;
}

impl LeaseCheck for Store {
    fn lease_now(&self, id: i64, agent_id: &str, attempt: Option<u32>) -> Result<Lease> {
        Store::lease_state(&self.conn(), id, agent_id, attempt)
    }
}

/// Bytes of blobs project `project_id` holds. (PostgreSQL's `SUM` of a `BIGINT` is a
/// `NUMERIC`: cast back.)
fn usage(conn: &dyn Db, project_id: i64) -> Result<u64> {
    let n: i64 = conn.query_row(
        "SELECT CAST(COALESCE(SUM(size), 0) AS BIGINT) FROM blob_refs WHERE project_id = ?1",
        [project_id],
        |r| r.get(0),
    )?;
    Ok(n.max(0) as u64)
}

/// The blobs index, once for SQLite and PostgreSQL ([`SqlStore`]).
impl<S: SqlStore + LeaseCheck> BlobIndex for S {
    fn job_scope(
        &self,
        id: i64,
        agent_id: &str,
        attempt: Option<u32>,
    ) -> Result<std::result::Result<JobScope, Lease>> {
        match self.lease_now(id, agent_id, attempt)? {
            Lease::Held => {}
            other => return Ok(Err(other)),
        }
        let scope = self.conn(|conn| {
            Ok(conn.query_row(
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
            )?)
        })?;
        Ok(Ok(scope))
    }

    fn blob_usage(&self, project_id: i64) -> Result<u64> {
        self.conn(|conn| usage(conn, project_id))
    }

    /// The size of blob `sha256` when the project holds it (whole and checked).
    fn project_blob(&self, project_id: i64, sha256: &str) -> Result<Option<u64>> {
        let size: Option<i64> = self.conn(|conn| {
            Ok(conn
                .query_row(
                    "SELECT size FROM blob_refs WHERE project_id = ?1 AND sha256 = ?2",
                    params![project_id, sha256],
                    |r| r.get(0),
                )
                .optional()?)
        })?;
        Ok(size.map(|s| s.max(0) as u64))
    }

    /// May the project take `size` more bytes (a blob it does not hold yet)?
    fn check_quota(&self, scope: &JobScope, size: u64, quota: u64) -> Result<Option<OverQuota>> {
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
    fn add_blob_ref(
        &self,
        scope: &JobScope,
        sha256: &str,
        size: u64,
        quota: u64,
    ) -> Result<std::result::Result<(), OverQuota>> {
        self.transaction(Lock::Writer, |tx| {
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
            let used = usage(tx, scope.project_id)?;
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
            Ok(Ok(()))
        })
    }

    /// Add a layer (a blob the project holds) to the job's workspace. `false`: the project
    /// does not hold that blob.
    fn add_layer(&self, scope: &JobScope, sha256: &str) -> Result<bool> {
        let Some(size) = self.project_blob(scope.project_id, sha256)? else {
            return Ok(false);
        };
        self.conn(|conn| {
            conn.execute(
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
        })
    }

    /// The job's workspace: its layers, oldest first.
    fn layers(&self, scope: &JobScope) -> Result<Vec<WireLayer>> {
        self.conn(|conn| {
            Ok(conn.query_map(
                "SELECT job_name, sha256, size FROM workspace_layers \
                 WHERE project_id = ?1 AND workspace = ?2 ORDER BY id",
                params![scope.project_id, scope.workspace],
                |r| {
                    Ok(WireLayer {
                        job: r.get(0)?,
                        blob: r.get(1)?,
                        size: r.get::<_, i64>(2)?.max(0) as u64,
                    })
                },
            )?)
        })
    }

    /// The project's newest cache whose key starts with `prefix` (CircleCI's rule: a newer
    /// prefix match beats an older exact one).
    fn find_cache(&self, project_id: i64, prefix: &str) -> Result<Option<WireCache>> {
        self.conn(|conn| {
            // Caches saved in the same millisecond go by the order of saving: SQLite's rowid,
            // PostgreSQL's `seq` (its tables have no rowid).
            let sql = conn.pick(
                "SELECT key, sha256, size, created FROM caches \
                 WHERE project_id = ?1 AND substr(key, 1, length(CAST(?2 AS TEXT))) = ?2 \
                 ORDER BY created DESC, rowid DESC LIMIT 1",
                "SELECT key, sha256, size, created FROM caches \
                 WHERE project_id = ?1 AND substr(key, 1, length(CAST(?2 AS TEXT))) = ?2 \
                 ORDER BY created DESC, seq DESC LIMIT 1",
            );
            Ok(conn
                .query_row(sql, params![project_id, prefix], |r| {
                    Ok(WireCache {
                        key: r.get(0)?,
                        blob: r.get(1)?,
                        size: r.get::<_, i64>(2)?.max(0) as u64,
                        created_ms: r.get(3)?,
                    })
                })
                .optional()?)
        })
    }

    /// Save a cache under `key` (a blob the project holds). Caches are immutable: `Ok(false)`
    /// when the key exists. `None`: the project does not hold the blob.
    fn save_cache(&self, scope: &JobScope, key: &str, sha256: &str) -> Result<Option<bool>> {
        let Some(size) = self.project_blob(scope.project_id, sha256)? else {
            return Ok(None);
        };
        let n = self.conn(|conn| {
            Ok(conn.execute(
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
            )?)
        })?;
        Ok(Some(n == 1))
    }

    /// Name a blob the project holds as the job's artifact `path`. `false`: it does not hold
    /// the blob.
    fn add_artifact(&self, scope: &JobScope, path: &str, sha256: &str) -> Result<bool> {
        let Some(size) = self.project_blob(scope.project_id, sha256)? else {
            return Ok(false);
        };
        self.conn(|conn| {
            conn.execute(
                "INSERT INTO artifacts(job_id, path, sha256, size) VALUES (?1, ?2, ?3, ?4) \
                 ON CONFLICT (job_id, path) DO UPDATE SET sha256 = excluded.sha256, \
                 size = excluded.size",
                params![scope.job_id, path, sha256, to_i64(size)],
            )?;
            Ok(true)
        })
    }

    /// Add one `store_test_results` step's results to the job's (counts add up; failed tests
    /// are kept up to [`MAX_FAILED_TESTS`] per job, messages cut at [`MAX_TEST_MESSAGE`]).
    fn add_test_results(&self, scope: &JobScope, t: &WireTestResults) -> Result<()> {
        self.transaction(Lock::Writer, |tx| {
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
            Ok(())
        })
    }

    /// A job's artifacts (path, size) and test results, for its page.
    fn job_results(&self, id: i64) -> Result<JobResults> {
        self.read(|conn| {
            let artifacts = conn.query_map(
                "SELECT path, size FROM artifacts WHERE job_id = ?1 ORDER BY path",
                [id],
                |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?.max(0) as u64)),
            )?;
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
                    let failed = conn.query_map(
                        "SELECT name, classname, message FROM failed_tests WHERE job_id = ?1 \
                         ORDER BY seq",
                        [id],
                        |r| {
                            Ok(WireFailedTest {
                                name: r.get(0)?,
                                classname: r.get(1)?,
                                message: r.get(2)?,
                            })
                        },
                    )?;
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
        })
    }

    /// The blob and size of job `id`'s artifact `path`.
    fn artifact(&self, id: i64, path: &str) -> Result<Option<(String, u64)>> {
        self.read(|conn| {
            Ok(conn
                .query_row(
                    "SELECT sha256, size FROM artifacts WHERE job_id = ?1 AND path = ?2",
                    params![id, path],
                    |r| Ok((r.get(0)?, r.get::<_, i64>(1)?.max(0) as u64)),
                )
                .optional()?)
        })
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

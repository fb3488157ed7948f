//! `bosun coordinator migrate --from sqlite:DIR --to postgres://…`: an existing
//! coordinator's store moved into PostgreSQL (and with `--blobs-to s3://…` its blobs and
//! finished logs into a bucket), for the coordinator to run on PostgreSQL from then on
//! (docs/scale.md, *Moving from SQLite*).
//!
//! - Nothing runs on the source: the migration holds the data directory's lock
//!   ([`lock`]) exclusively, which every `serve` holds shared, and SQLite's write lock
//!   (`BEGIN IMMEDIATE`) for the whole copy, so the operator's CLI cannot write either.
//! - The secrets stay sealed: they are copied as they are, and both sides must know the same
//!   key file (the source checks its fingerprint as it opens, the target records or checks
//!   it, and the two recorded fingerprints are compared).
//! - The tables are copied in one PostgreSQL transaction, ids kept, the sequences moved past
//!   them, the rows of every table counted on both sides before it commits: the target gets
//!   everything or nothing, and a failed run is simply run again.
//! - A target that holds anything is refused unless `--replace` says to empty it first.
//! - The file copy ([`files`]) is idempotent and skips what is already there.

pub mod files;
pub mod lock;
pub mod log_rows;
pub mod tables;

use crate::error::{CoordError, Result};
use crate::objects::{self, StoreSettings};
use crate::store::{self, pg::redacted, PgStore, Store, DB_FILE};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

#[derive(clap::Args, Debug)]
pub struct MigrateArgs {
    /// The store to move: `sqlite:DIR`, DIR being the coordinator's data directory (the
    /// one holding coordinator.db). Stop every coordinator serving from it first.
    #[arg(long, value_name = "sqlite:DIR")]
    pub from: String,
    /// The PostgreSQL database to move it into (`postgres://USER@HOST/DB?sslmode=require`);
    /// it must hold nothing yet (see --replace). Give the password in the environment
    /// (BOSUN_DATABASE_URL), not on the command line.
    #[arg(
        long,
        env = "BOSUN_DATABASE_URL",
        value_name = "URL",
        hide_env_values = true
    )]
    pub to: crate::DatabaseUrl,
    /// The key file the source's secrets are sealed with (default: `<data dir>.key`); the
    /// PostgreSQL coordinators need the same file.
    #[arg(long, env = "BOSUN_COORDINATOR_SECRETS_KEY", value_name = "FILE")]
    pub secrets_key: Option<PathBuf>,
    /// Empty the target database's tables first (a target that holds anything is refused
    /// without it): to run a migration again after the source changed.
    #[arg(long)]
    pub replace: bool,
    /// Also move the blobs and finished logs of the data directory into this S3-compatible
    /// bucket (`s3://BUCKET/PREFIX`), what `serve --blob-store` then reads.
    #[arg(long, value_name = "s3://BUCKET/PREFIX")]
    pub blobs_to: Option<String>,
    /// The S3 server's URL (as `serve --s3-endpoint`).
    #[arg(
        long,
        env = "BOSUN_S3_ENDPOINT",
        value_name = "URL",
        requires = "blobs_to"
    )]
    pub s3_endpoint: Option<String>,
    /// The bucket's region (as `serve --s3-region`).
    #[arg(
        long,
        env = "BOSUN_S3_REGION",
        value_name = "REGION",
        requires = "blobs_to"
    )]
    pub s3_region: Option<String>,
    /// The S3 credentials file (as `serve --s3-credentials-file`).
    #[arg(long, value_name = "FILE", requires = "blobs_to")]
    pub s3_credentials_file: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error(
        "the SQLite store has tables the migration does not copy: {}; refusing rather than \
         leaving them behind (the copy list is `migrate::tables::TABLES`)",
        .0.join(", ")
    )]
    UnknownTables(Vec<String>),
    #[error("{0}")]
    Schema(String),
    #[error("SQLite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("PostgreSQL: {0}")]
    Postgres(String),
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the blob store: {0}")]
    Objects(String),
    #[error(
        "the target database is not empty (table {table} has {rows} rows): give --replace to \
         empty it first, or another database"
    )]
    TargetNotEmpty { table: String, rows: u64 },
    #[error(
        "the secrets were sealed with another key on each side (SQLite records {sqlite}, \
         PostgreSQL {postgres}): use the source's key file for both"
    )]
    KeyMismatch { sqlite: String, postgres: String },
    #[error("rows differ after the copy, nothing was committed: {}", .0.iter().map(|(t, s, p)| format!("{t}: {s} in SQLite, {p} in PostgreSQL")).collect::<Vec<_>>().join("; "))]
    Counts(Vec<(String, u64, u64)>),
    #[error("--from `{0}`: expected sqlite:DIR, DIR a coordinator's data directory holding coordinator.db")]
    Source(String),
}

impl From<postgres::Error> for MigrateError {
    fn from(e: postgres::Error) -> Self {
        MigrateError::Postgres(tables::pg_message(&e))
    }
}

impl From<MigrateError> for CoordError {
    fn from(e: MigrateError) -> Self {
        CoordError::Invalid(e.to_string())
    }
}

/// `sqlite:DIR` (or `sqlite:DIR/coordinator.db`) → DIR, which must hold a store.
pub fn source_dir(from: &str) -> std::result::Result<PathBuf, MigrateError> {
    let bad = || MigrateError::Source(crate::printable(from));
    let path = from
        .strip_prefix("sqlite://")
        .or_else(|| from.strip_prefix("sqlite:"))
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .ok_or_else(bad)?;
    let dir = if path.file_name().is_some_and(|n| n == DB_FILE) && path.is_file() {
        path.parent().map(Path::to_path_buf).ok_or_else(bad)?
    } else {
        path
    };
    if !dir.join(DB_FILE).is_file() {
        return Err(bad());
    }
    Ok(dir)
}

fn connect(url: &str) -> std::result::Result<postgres::Client, MigrateError> {
    let mut config: postgres::Config = url
        .parse()
        .map_err(|e| MigrateError::Postgres(format!("--to {}: {e}", redacted(url))))?;
    if config.get_application_name().is_none() {
        config.application_name("bosun-migrate");
    }
    config.connect_timeout(Duration::from_secs(10));
    let tls = store::pg::tls().map_err(|e| MigrateError::Postgres(e.to_string()))?;
    config.connect(tls).map_err(|e| {
        MigrateError::Postgres(format!(
            "cannot connect to {}: {}",
            redacted(url),
            tables::pg_message(&e)
        ))
    })
}

fn recorded_key_sqlite(src: &rusqlite::Connection) -> std::result::Result<String, MigrateError> {
    Ok(src.query_row(
        "SELECT value FROM meta WHERE key = ?1",
        [tables::SECRETS_KEY_META],
        |r| r.get(0),
    )?)
}

/// Refuse a target with rows (the key's fingerprint aside), or empty it with `replace`.
fn prepare_target(
    tx: &mut postgres::Transaction<'_>,
    replace: bool,
) -> std::result::Result<(), MigrateError> {
    for t in tables::TABLES.iter().chain(log_rows::PG_ONLY) {
        let filter = if *t == "meta" {
            format!(" WHERE key <> '{}'", tables::SECRETS_KEY_META)
        } else {
            String::new()
        };
        let rows: i64 = tx
            .query_one(
                format!("SELECT COUNT(*) FROM \"{t}\"{filter}").as_str(),
                &[],
            )?
            .get(0);
        if rows > 0 && !replace {
            return Err(MigrateError::TargetNotEmpty {
                table: t.to_string(),
                rows: rows as u64,
            });
        }
    }
    if replace {
        let all: Vec<String> = tables::TABLES
            .iter()
            .chain(log_rows::PG_ONLY)
            .filter(|t| **t != "meta")
            .map(|t| format!("\"{t}\""))
            .collect();
        tx.batch_execute(&format!(
            "TRUNCATE {} RESTART IDENTITY CASCADE; DELETE FROM meta WHERE key <> '{}'",
            all.join(", "),
            tables::SECRETS_KEY_META
        ))?;
    }
    Ok(())
}

/// What a migration moved, for the operator.
#[derive(Debug, Default)]
pub struct Report {
    /// (table, rows in SQLite, rows in PostgreSQL)
    pub tables: Vec<(String, u64, u64)>,
    pub logs: files::Moved,
    pub blobs: files::Moved,
    /// Logs' arrival times and the logs of jobs not yet final, as rows.
    pub log_rows: log_rows::Rows,
    /// Where the logs and blobs are now: the bucket, or the data directory (nothing moved).
    pub objects: String,
    pub moved_objects: bool,
    /// The source's data directory.
    pub data: PathBuf,
}

impl Report {
    pub fn lines(&self) -> Vec<String> {
        let mut out = vec![format!(
            "{:<24} {:>10} {:>10}",
            "TABLE", "SQLITE", "POSTGRESQL"
        )];
        for (t, s, p) in &self.tables {
            out.push(format!("{t:<24} {s:>10} {p:>10}"));
        }
        let verb = if self.moved_objects {
            "copied to"
        } else {
            "stay in"
        };
        out.push(format!(
            "logs: {} finished logs, {} bytes {verb} {} ({} there already)",
            self.logs.files, self.logs.bytes, self.objects, self.logs.already
        ));
        out.push(format!(
            "blobs: {} blobs, {} bytes {verb} {} ({} there already)",
            self.blobs.files, self.blobs.bytes, self.objects, self.blobs.already
        ));
        out.push(format!(
            "running logs: {} logs, {} bytes into log_chunks; {} arrival times into log_times",
            self.log_rows.live_logs, self.log_rows.live_bytes, self.log_rows.times
        ));
        out
    }
}

/// Run the migration; prints the counts.
pub fn run(a: MigrateArgs, print: &mut dyn FnMut(String)) -> Result<()> {
    let report = migrate(&a)?;
    for l in report.lines() {
        print(l);
    }
    print(format!(
        "done: run the coordinators with --database (BOSUN_DATABASE_URL){}, --data {} and the \
         same secrets key",
        if a.blobs_to.is_some() {
            " and the same --blob-store settings"
        } else {
            ""
        },
        report.data.display()
    ));
    Ok(())
}

pub fn migrate(a: &MigrateArgs) -> Result<Report> {
    let data = source_dir(&a.from)?;
    let _lock = lock::exclusive(&data)?;
    let key = a.secrets_key.as_deref();
    let url = a.to.0.expose();
    // Opened as their coordinators open them: the source's schema brought up to date and
    // its key file checked against the fingerprint it recorded; the target's schema made
    // and the key's fingerprint recorded (or checked, if it has one).
    drop(Store::open_with_key(&data, key)?);
    drop(PgStore::open(url, &data, key)?);

    let src = rusqlite::Connection::open(data.join(DB_FILE))?;
    src.busy_timeout(Duration::from_secs(10))?;
    // SQLite's write lock for the whole copy: no writer (the CLI) changes the source
    // meanwhile; they wait, then fail with SQLite's "database is locked".
    src.execute_batch("BEGIN IMMEDIATE")?;
    let result = copy(a, &data, &src, url);
    let _ = src.execute_batch("ROLLBACK");
    Ok(result?)
}

fn copy(
    a: &MigrateArgs,
    data: &Path,
    src: &rusqlite::Connection,
    url: &str,
) -> std::result::Result<Report, MigrateError> {
    tables::check_covered(&tables::sqlite_tables(src)?)?;
    let mut client = connect(url)?;
    let mut tx = client.transaction()?;
    let sqlite_key = recorded_key_sqlite(src)?;
    let pg_key: String = tx
        .query_one(
            "SELECT value FROM meta WHERE key = $1",
            &[&tables::SECRETS_KEY_META],
        )?
        .get(0);
    if sqlite_key != pg_key {
        return Err(MigrateError::KeyMismatch {
            sqlite: sqlite_key,
            postgres: pg_key,
        });
    }
    prepare_target(&mut tx, a.replace)?;

    let mut report = Report {
        data: data.to_path_buf(),
        ..Report::default()
    };
    let finished: Vec<i64> = {
        let mut st = src
            .prepare("SELECT id FROM jobs WHERE status NOT IN ('queued', 'running') ORDER BY id")?;
        let ids = st
            .query_map([], |r| r.get(0))?
            .collect::<rusqlite::Result<Vec<i64>>>()?;
        ids
    };
    match &a.blobs_to {
        Some(location) => {
            let settings = StoreSettings {
                location: Some(location.clone()),
                endpoint: a.s3_endpoint.clone(),
                region: a.s3_region.clone(),
                credentials_file: a.s3_credentials_file.clone(),
            };
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|source| MigrateError::Io {
                    path: PathBuf::from("tokio runtime"),
                    source,
                })?;
            let (logs, blobs, describe) = rt.block_on(async {
                let objects: Arc<dyn objects::Objects> = objects::open(&settings, data)
                    .await
                    .map_err(|e| MigrateError::Objects(e.to_string()))?;
                let blobs = files::blobs(data, &objects).await?;
                let logs = files::logs(data, &objects, &finished).await?;
                Ok::<_, MigrateError>((logs, blobs, objects.describe()))
            })?;
            report.logs = logs;
            report.blobs = blobs;
            report.objects = describe;
            report.moved_objects = true;
        }
        None => {
            let logs = data.join(store::LOGS_DIR);
            report.logs = files::on_disk(&logs, ".log");
            report.blobs = files::on_disk(&data.join("blobs").join("sha256"), "");
            report.objects = data.display().to_string();
        }
    }

    for t in tables::TABLES {
        tables::copy_table(src, &mut tx, t)?;
        tables::advance_sequences(src, &mut tx, t)?;
    }
    report.log_rows = log_rows::copy(data, src, &mut tx)?;
    let mut differ = Vec::new();
    for t in tables::TABLES {
        let (s, p) = tables::counts(src, &mut tx, t)?;
        if s != p {
            differ.push((t.to_string(), s, p));
        }
        report.tables.push((t.to_string(), s, p));
    }
    if !differ.is_empty() {
        return Err(MigrateError::Counts(differ));
    }
    tx.commit()?;
    Ok(report)
}

#[cfg(test)]
mod tests;

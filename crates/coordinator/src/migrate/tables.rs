//! The tables' copy: every table of the SQLite store, row for row and id for id, into the
//! PostgreSQL schema, inside one PostgreSQL transaction; then the sequences past the copied
//! ids, and the counts of both sides compared.
//!
//! The copy reads raw tables, not the store's areas: columns are taken by name from both
//! schemas (`PRAGMA table_info`, `information_schema.columns`), and each value is converted
//! explicitly to the PostgreSQL column's type ([`convert`]), so a value SQLite's dynamic
//! typing let in that PostgreSQL would read otherwise stops the copy with the table, the
//! column and the row named.

use super::MigrateError;
use rusqlite::types::ValueRef;

/// Every table of the SQLite store, parents before the tables that refer to them (the
/// foreign keys are checked row by row). [`check_covered`] refuses a store with a table not
/// listed here: a table added later is never skipped silently.
pub const TABLES: &[&str] = &[
    "meta",
    "agents",
    "projects",
    "project_env",
    "project_slugs",
    "registration_tokens",
    "project_agents",
    "operator_tokens",
    "pipelines",
    "jobs",
    "job_events",
    "blob_refs",
    "workspace_layers",
    "caches",
    "artifacts",
    "test_results",
    "failed_tests",
    "workflows",
    "workflow_jobs",
    "pull_requests",
    "webhook_deliveries",
    "commit_statuses",
    "contexts",
    "context_env",
    "context_restrictions",
    "operator_groups",
    "schedules",
    "workflow_schedules",
    "schedule_ticks",
    "project_tokens",
    "pipeline_configs",
    "continuations",
    "project_badges",
    "notify_targets",
    "notifications",
    "people",
    "sessions",
    "person_permissions",
    "person_groups",
    "person_ssh_keys",
    "personal_tokens",
    "audit_log",
];

/// PostgreSQL columns that hold SQLite's `rowid` (the order rows were written in), by
/// table: `caches.seq` orders caches saved in the same millisecond.
const ROWID_COLUMNS: &[(&str, &str)] = &[("caches", "seq")];

/// SQLite's own tables (`sqlite_sequence`, `sqlite_stat1`), not the store's.
fn is_internal(table: &str) -> bool {
    table.starts_with("sqlite_")
}

/// The store's tables as SQLite lists them must be [`TABLES`], no more and no fewer.
pub fn check_covered(sqlite_tables: &[String]) -> Result<(), MigrateError> {
    let unknown: Vec<String> = sqlite_tables
        .iter()
        .filter(|t| !is_internal(t) && !TABLES.contains(&t.as_str()))
        .cloned()
        .collect();
    if !unknown.is_empty() {
        return Err(MigrateError::UnknownTables(unknown));
    }
    let absent: Vec<String> = TABLES
        .iter()
        .filter(|t| !sqlite_tables.iter().any(|s| s == *t))
        .map(|t| t.to_string())
        .collect();
    if !absent.is_empty() {
        return Err(MigrateError::Schema(format!(
            "the SQLite store lacks the tables {}: open it once with this bosun (e.g. `bosun \
             coordinator jobs --data DIR`) so its schema is migrated",
            absent.join(", ")
        )));
    }
    Ok(())
}

/// The tables of the SQLite database.
pub fn sqlite_tables(src: &rusqlite::Connection) -> Result<Vec<String>, MigrateError> {
    let mut st =
        src.prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")?;
    let names = st
        .query_map([], |r| r.get::<_, String>(0))?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(names)
}

/// A PostgreSQL column's type, as far as the copy converts to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    BigInt,
    Text,
    Bool,
    Bytes,
}

impl Kind {
    /// `information_schema.columns.data_type` → the kind; `None`: a type the copy does not
    /// convert to (the schema changed under it: it must learn the type first).
    pub fn from_pg(data_type: &str) -> Option<Kind> {
        match data_type {
            "bigint" => Some(Kind::BigInt),
            "text" => Some(Kind::Text),
            "boolean" => Some(Kind::Bool),
            "bytea" => Some(Kind::Bytes),
            _ => None,
        }
    }
}

/// A value ready for PostgreSQL, typed even when NULL (a parameter's type must match its
/// column's).
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    BigInt(Option<i64>),
    Text(Option<String>),
    Bool(Option<bool>),
    Bytes(Option<Vec<u8>>),
}

impl Value {
    fn as_sql(&self) -> &(dyn postgres::types::ToSql + Sync) {
        match self {
            Value::BigInt(v) => v,
            Value::Text(v) => v,
            Value::Bool(v) => v,
            Value::Bytes(v) => v,
        }
    }
}

/// SQLite's value `v` as PostgreSQL's `kind`, or what is wrong with it. Only the obvious
/// conversions: an integer to BIGINT, text (UTF-8) to TEXT, 0 or 1 to BOOLEAN, a blob to
/// BYTEA, NULL to NULL; anything else is an error, never a guess.
pub fn convert(v: ValueRef<'_>, kind: Kind) -> Result<Value, String> {
    let what = |v: ValueRef<'_>| match v {
        ValueRef::Null => "NULL".to_string(),
        ValueRef::Integer(i) => format!("the integer {i}"),
        ValueRef::Real(f) => format!("the real number {f}"),
        ValueRef::Text(t) => format!("text of {} bytes", t.len()),
        ValueRef::Blob(b) => format!("a blob of {} bytes", b.len()),
    };
    let wrong = |want: &str| format!("{} where {want} belongs", what(v));
    Ok(match (kind, v) {
        (Kind::BigInt, ValueRef::Null) => Value::BigInt(None),
        (Kind::BigInt, ValueRef::Integer(i)) => Value::BigInt(Some(i)),
        (Kind::BigInt, _) => return Err(wrong("an integer")),
        (Kind::Text, ValueRef::Null) => Value::Text(None),
        (Kind::Text, ValueRef::Text(t)) => Value::Text(Some(
            String::from_utf8(t.to_vec()).map_err(|_| "text that is not UTF-8".to_string())?,
        )),
        (Kind::Text, _) => return Err(wrong("text")),
        (Kind::Bool, ValueRef::Null) => Value::Bool(None),
        (Kind::Bool, ValueRef::Integer(i @ (0 | 1))) => Value::Bool(Some(i == 1)),
        (Kind::Bool, _) => return Err(wrong("0 or 1")),
        (Kind::Bytes, ValueRef::Null) => Value::Bytes(None),
        (Kind::Bytes, ValueRef::Blob(b)) => Value::Bytes(Some(b.to_vec())),
        (Kind::Bytes, _) => return Err(wrong("a blob")),
    })
}

/// `"name"`: every identifier is quoted (`key`, `offset`, `position` are words of SQL).
fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

struct PgColumn {
    name: String,
    kind: Kind,
    /// NOT NULL without a default: a column the copy must fill.
    required: bool,
    serial: bool,
}

fn pg_columns(
    tx: &mut postgres::Transaction<'_>,
    table: &str,
) -> Result<Vec<PgColumn>, MigrateError> {
    let rows = tx.query(
        "SELECT column_name::text, data_type::text, is_nullable::text, column_default::text \
         FROM information_schema.columns \
         WHERE table_schema = current_schema() AND table_name = $1 ORDER BY ordinal_position",
        &[&table],
    )?;
    if rows.is_empty() {
        return Err(MigrateError::Schema(format!(
            "PostgreSQL has no table `{table}`: this bosun's PostgreSQL schema lacks it"
        )));
    }
    let mut out = Vec::new();
    for r in rows {
        let name: String = r.get(0);
        let data_type: String = r.get(1);
        let nullable: String = r.get(2);
        let default: Option<String> = r.get(3);
        let kind = Kind::from_pg(&data_type).ok_or_else(|| {
            MigrateError::Schema(format!(
                "PostgreSQL column {table}.{name} has type {data_type}, which the migration \
                 does not convert to"
            ))
        })?;
        out.push(PgColumn {
            kind,
            required: nullable == "NO" && default.is_none(),
            serial: default
                .as_deref()
                .is_some_and(|d| d.starts_with("nextval(")),
            name,
        });
    }
    Ok(out)
}

fn sqlite_columns(src: &rusqlite::Connection, table: &str) -> Result<Vec<String>, MigrateError> {
    let mut st = src.prepare(&format!("PRAGMA table_info({})", quote(table)))?;
    let names = st
        .query_map([], |r| r.get::<_, String>(1))?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(names)
}

/// Parameters per INSERT at most (PostgreSQL takes 65,535), and rows.
const MAX_PARAMS: usize = 30_000;
const MAX_ROWS: usize = 1_000;

/// The secrets key recorded in a `meta` table: the PostgreSQL store records the key file's
/// fingerprint when it opens, the copy checks it is the one SQLite recorded.
pub const SECRETS_KEY_META: &str = "secrets_key";

/// Copy table `table` whole; the rows copied.
pub fn copy_table(
    src: &rusqlite::Connection,
    tx: &mut postgres::Transaction<'_>,
    table: &str,
) -> Result<u64, MigrateError> {
    let scols = sqlite_columns(src, table)?;
    let pcols = pg_columns(tx, table)?;
    let rowid_col = ROWID_COLUMNS
        .iter()
        .find(|(t, _)| *t == table)
        .map(|(_, c)| *c);
    // (SQLite's expression, PostgreSQL's column, its kind)
    let mut cols: Vec<(String, &PgColumn)> = Vec::new();
    for s in &scols {
        let Some(p) = pcols.iter().find(|p| &p.name == s) else {
            return Err(MigrateError::Schema(format!(
                "SQLite column {table}.{s} has no place in PostgreSQL: this bosun's \
                 PostgreSQL schema lacks it"
            )));
        };
        cols.push((quote(s), p));
    }
    for p in &pcols {
        if scols.contains(&p.name) {
            continue;
        }
        if Some(p.name.as_str()) == rowid_col {
            cols.push(("rowid".to_string(), p));
        } else if p.required {
            return Err(MigrateError::Schema(format!(
                "PostgreSQL column {table}.{} must be given a value and SQLite has none",
                p.name
            )));
        }
    }
    let names: Vec<String> = cols.iter().map(|(_, p)| quote(&p.name)).collect();
    let select: Vec<&str> = cols.iter().map(|(e, _)| e.as_str()).collect();
    let mut conflict = String::new();
    let mut filter = String::new();
    if table == "meta" {
        // The key's fingerprint is there already (and checked): the rest comes from SQLite.
        filter = format!(" WHERE key <> '{SECRETS_KEY_META}'");
        conflict = " ON CONFLICT DO NOTHING".into();
    }
    let mut st = src.prepare(&format!(
        "SELECT {} FROM {}{filter} ORDER BY rowid",
        select.join(", "),
        quote(table)
    ))?;
    let per_batch = (MAX_PARAMS / cols.len().max(1)).clamp(1, MAX_ROWS);
    let insert = |n: usize| {
        let mut sql = format!(
            "INSERT INTO {} ({}) VALUES ",
            quote(table),
            names.join(", ")
        );
        let mut p = 0;
        for row in 0..n {
            if row > 0 {
                sql.push(',');
            }
            sql.push('(');
            for c in 0..cols.len() {
                if c > 0 {
                    sql.push(',');
                }
                p += 1;
                sql.push_str(&format!("${p}"));
            }
            sql.push(')');
        }
        sql.push_str(&conflict);
        sql
    };
    // The full batch's statement, prepared once when a table has that many rows.
    let mut full: Option<postgres::Statement> = None;
    let mut batch: Vec<Value> = Vec::with_capacity(per_batch * cols.len());
    let mut copied = 0u64;
    let mut in_batch = 0usize;
    let mut rows = st.query([])?;
    loop {
        let row = rows.next()?;
        if let Some(r) = row {
            for (i, (_, p)) in cols.iter().enumerate() {
                let v = convert(r.get_ref(i)?, p.kind).map_err(|e| {
                    MigrateError::Schema(format!(
                        "{table}.{} of row {}: {e}",
                        p.name,
                        copied + in_batch as u64 + 1
                    ))
                })?;
                batch.push(v);
            }
            in_batch += 1;
            if in_batch < per_batch {
                continue;
            }
        }
        if in_batch > 0 {
            let params: Vec<&(dyn postgres::types::ToSql + Sync)> =
                batch.iter().map(Value::as_sql).collect();
            let done = if in_batch == per_batch {
                let st = match &full {
                    Some(st) => st.clone(),
                    None => {
                        let st = tx.prepare(&insert(per_batch))?;
                        full = Some(st.clone());
                        st
                    }
                };
                tx.execute(&st, &params)
            } else {
                tx.execute(insert(in_batch).as_str(), &params)
            };
            done.map_err(|e| {
                MigrateError::Postgres(format!("copying {table}: {}", pg_message(&e)))
            })?;
            drop(params);
            batch.clear();
            copied += in_batch as u64;
            in_batch = 0;
        }
        if row.is_none() {
            break;
        }
    }
    Ok(copied)
}

/// Move every sequence of `table` past the ids copied (and past SQLite's own record of the
/// largest id ever handed out, `sqlite_sequence`, so an id of a deleted row is not reused).
pub fn advance_sequences(
    src: &rusqlite::Connection,
    tx: &mut postgres::Transaction<'_>,
    table: &str,
) -> Result<(), MigrateError> {
    use rusqlite::OptionalExtension;
    for c in pg_columns(tx, table)?.into_iter().filter(|c| c.serial) {
        let floor: i64 = if c.name == "id" {
            // sqlite_sequence exists once a table with AUTOINCREMENT has one.
            let has_seq: bool = src.query_row(
                "SELECT COUNT(*) > 0 FROM sqlite_master WHERE name = 'sqlite_sequence'",
                [],
                |r| r.get(0),
            )?;
            if has_seq {
                src.query_row(
                    "SELECT seq FROM sqlite_sequence WHERE name = ?1",
                    [table],
                    |r| r.get::<_, i64>(0),
                )
                .optional()?
                .unwrap_or(0)
            } else {
                0
            }
        } else {
            0
        };
        let row = tx.query_one(
            format!(
                "SELECT pg_get_serial_sequence($1, $2), COALESCE(MAX({}), 0) FROM {}",
                quote(&c.name),
                quote(table)
            )
            .as_str(),
            &[&table, &c.name],
        )?;
        let seq: Option<String> = row.get(0);
        let max: i64 = row.get(1);
        let Some(seq) = seq else { continue };
        let last = max.max(floor);
        if last > 0 {
            tx.execute(
                "SELECT setval($1::text::regclass, $2, true)",
                &[&seq, &last],
            )?;
        } else {
            tx.execute("SELECT setval($1::text::regclass, 1, false)", &[&seq])?;
        }
    }
    Ok(())
}

/// Rows of `table` on each side (`meta` without the key's fingerprint on PostgreSQL, where
/// the store wrote it, nor on SQLite).
pub fn counts(
    src: &rusqlite::Connection,
    tx: &mut postgres::Transaction<'_>,
    table: &str,
) -> Result<(u64, u64), MigrateError> {
    let filter = if table == "meta" {
        format!(" WHERE key <> '{SECRETS_KEY_META}'")
    } else {
        String::new()
    };
    let sql = format!("SELECT COUNT(*) FROM {}{filter}", quote(table));
    let s: i64 = src.query_row(&sql, [], |r| r.get(0))?;
    let p: i64 = tx.query_one(sql.as_str(), &[])?.get(0);
    Ok((s as u64, p as u64))
}

/// The server's own message (and detail) rather than `db error: ERROR: …`.
pub fn pg_message(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => match db.detail() {
            Some(d) => format!("{} ({d})", db.message()),
            None => db.message().to_string(),
        },
        None => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_copy_list_covers_every_table_of_the_current_schema() {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("data");
        let store = crate::store::Store::open(&data).expect("open");
        drop(store);
        let conn = rusqlite::Connection::open(data.join(crate::store::DB_FILE)).expect("open file");
        let tables = sqlite_tables(&conn).expect("tables");
        check_covered(&tables).expect("every table is in TABLES");
        // The list holds no table twice.
        let mut sorted: Vec<&str> = TABLES.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), TABLES.len());
        // A table the list does not know stops the migration, naming it.
        conn.execute_batch("CREATE TABLE later_feature (id INTEGER PRIMARY KEY)")
            .expect("create");
        let tables = sqlite_tables(&conn).expect("tables");
        match check_covered(&tables) {
            Err(MigrateError::UnknownTables(t)) => assert_eq!(t, vec!["later_feature"]),
            other => panic!("{other:?}"),
        }
        // SQLite's own tables are not the store's.
        assert!(is_internal("sqlite_sequence"));
        // A store older than this bosun lacks tables: refused with what to do.
        let e = check_covered(&["meta".to_string(), "jobs".to_string()]).expect_err("older");
        assert!(
            e.to_string().contains("open it once with this bosun"),
            "{e}"
        );
    }

    #[test]
    fn values_convert_explicitly_or_not_at_all() {
        assert_eq!(
            convert(ValueRef::Integer(7), Kind::BigInt),
            Ok(Value::BigInt(Some(7)))
        );
        assert_eq!(
            convert(ValueRef::Null, Kind::BigInt),
            Ok(Value::BigInt(None))
        );
        assert_eq!(
            convert(ValueRef::Text(b"caf\xc3\xa9"), Kind::Text),
            Ok(Value::Text(Some("café".into())))
        );
        assert_eq!(
            convert(ValueRef::Integer(1), Kind::Bool),
            Ok(Value::Bool(Some(true)))
        );
        assert_eq!(
            convert(ValueRef::Blob(b"\0\xff"), Kind::Bytes),
            Ok(Value::Bytes(Some(vec![0, 255])))
        );
        // What SQLite's dynamic typing lets in and PostgreSQL would read otherwise.
        let e = convert(ValueRef::Text(b"12"), Kind::BigInt).expect_err("text as integer");
        assert!(
            e.contains("text of 2 bytes where an integer belongs"),
            "{e}"
        );
        assert!(convert(ValueRef::Real(1.0), Kind::BigInt).is_err());
        assert!(convert(ValueRef::Integer(3), Kind::Text).is_err());
        assert!(convert(ValueRef::Integer(2), Kind::Bool).is_err());
        assert!(convert(ValueRef::Text(b"\xff"), Kind::Text)
            .expect_err("not UTF-8")
            .contains("not UTF-8"));
        assert_eq!(Kind::from_pg("timestamp with time zone"), None);
    }
}

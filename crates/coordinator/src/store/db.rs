//! What the store's SQL is run through, on SQLite and on PostgreSQL alike: [`Db`], a
//! connection (or a transaction: both deref to one) that runs a statement with parameters
//! and hands back its rows, and the values that cross it.
//!
//! Each area's logic is written once over `&dyn Db` (`store/pipelines.rs`, `badges.rs`, …)
//! in SQLite's dialect with `?N` placeholders; the PostgreSQL connection translates the few
//! spellings that differ (`pg::sql::translate`: placeholders, `IS ?`, `INSERT OR IGNORE`),
//! and what cannot be translated is chosen by [`Dialect`] where it is written. Values cross
//! as SQLite's five kinds ([`Val`]): a parameter is written in the type the column has, a
//! column is read whatever its integer width (PostgreSQL's `BOOLEAN` results read as `bool`
//! or `0`/`1`), so one row closure reads both.
//!
//! How a transaction keeps writers apart is the caller's, not this trait's: the backends'
//! [`SqlStore`] entry points open it (SQLite's `BEGIN IMMEDIATE`,
//! PostgreSQL's transaction-scoped advisory lock) and hand the code its `&dyn Db`.

/// What a store call fails with, on either database; becomes `CoordError::Db`.
#[derive(Debug, thiserror::Error)]
pub enum SqlError {
    #[error(transparent)]
    Sqlite(#[from] rusqlite::Error),
    #[error("{}", pg_message(.0))]
    Pg(#[from] postgres::Error),
    #[error("connection pool: {0}")]
    Pool(#[from] r2d2::Error),
    #[error("query returned no rows")]
    NoRows,
    #[error("column {0}: {1}")]
    Conversion(usize, String),
}

/// The server's own message (and detail) rather than `db error: ERROR: …`.
fn pg_message(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => match db.detail() {
            Some(d) => format!("{} ({d})", db.message()),
            None => db.message().to_string(),
        },
        None => e.to_string(),
    }
}

impl SqlError {
    /// The SQLSTATE of a database error (`40001` serialization failure, `40P01` deadlock).
    pub fn code(&self) -> Option<&str> {
        match self {
            SqlError::Pg(e) => e.code().map(|c| c.code()),
            _ => None,
        }
    }
}

impl From<SqlError> for crate::error::CoordError {
    fn from(e: SqlError) -> Self {
        use crate::error::StoreError;
        crate::error::CoordError::Db(match e {
            SqlError::Sqlite(e) => StoreError::Sqlite(e),
            // PostgreSQL's and its pool's: the message only (never the connection's password).
            SqlError::Pg(_) | SqlError::Pool(_) => StoreError::Postgres(e.to_string()),
            SqlError::NoRows | SqlError::Conversion(..) => StoreError::Row(e.to_string()),
        })
    }
}

pub type Result<T> = std::result::Result<T, SqlError>;

/// A value as SQLite knows them.
#[derive(Debug, Clone, PartialEq)]
pub enum Val {
    Null,
    Int(i64),
    Real(f64),
    Text(String),
    Blob(Vec<u8>),
}

/// A Rust value as a parameter.
pub trait Param {
    fn val(&self) -> Val;
}

macro_rules! int_param {
    ($($t:ty),*) => {$(
        impl Param for $t {
            fn val(&self) -> Val {
                Val::Int(*self as i64)
            }
        }
    )*};
}
int_param!(i64, i32, u32, u64, usize, u8);

impl Param for bool {
    fn val(&self) -> Val {
        Val::Int(i64::from(*self))
    }
}
impl Param for str {
    fn val(&self) -> Val {
        Val::Text(self.to_owned())
    }
}
impl Param for String {
    fn val(&self) -> Val {
        Val::Text(self.clone())
    }
}
impl Param for [u8] {
    fn val(&self) -> Val {
        Val::Blob(self.to_vec())
    }
}
impl Param for Vec<u8> {
    fn val(&self) -> Val {
        Val::Blob(self.clone())
    }
}
impl<T: Param> Param for Option<T> {
    fn val(&self) -> Val {
        self.as_ref().map_or(Val::Null, Param::val)
    }
}
impl<T: Param + ?Sized> Param for &T {
    fn val(&self) -> Val {
        (**self).val()
    }
}

/// The parameters of one statement.
pub trait Params {
    fn vals(&self) -> Vec<Val>;
}

impl Params for [&dyn Param; 0] {
    fn vals(&self) -> Vec<Val> {
        Vec::new()
    }
}
impl Params for &[&dyn Param] {
    fn vals(&self) -> Vec<Val> {
        self.iter().map(|p| p.val()).collect()
    }
}
macro_rules! array_params {
    ($($n:literal),*) => {$(
        impl<T: Param> Params for [T; $n] {
            fn vals(&self) -> Vec<Val> {
                self.iter().map(Param::val).collect()
            }
        }
    )*};
}
array_params!(1, 2, 3, 4, 5, 6, 7, 8);

/// `params![a, b, …]`, as rusqlite's.
macro_rules! params {
    () => {
        &[] as &[&dyn $crate::store::db::Param]
    };
    ($($p:expr),+ $(,)?) => {
        &[$(&$p as &dyn $crate::store::db::Param),+] as &[&dyn $crate::store::db::Param]
    };
}
pub(crate) use params;

/// A Rust value from a column.
pub trait FromVal: Sized {
    fn from_val(v: Val) -> std::result::Result<Self, String>;
}

macro_rules! int_from {
    ($($t:ty),*) => {$(
        impl FromVal for $t {
            fn from_val(v: Val) -> std::result::Result<Self, String> {
                match v {
                    Val::Int(n) => <$t>::try_from(n).map_err(|e| e.to_string()),
                    other => Err(format!("expected an integer, found {other:?}")),
                }
            }
        }
    )*};
}
int_from!(i64, i32, u32, u64, usize);

impl FromVal for bool {
    fn from_val(v: Val) -> std::result::Result<Self, String> {
        match v {
            Val::Int(n) => Ok(n != 0),
            other => Err(format!("expected a flag, found {other:?}")),
        }
    }
}
impl FromVal for f64 {
    fn from_val(v: Val) -> std::result::Result<Self, String> {
        match v {
            Val::Real(f) => Ok(f),
            Val::Int(n) => Ok(n as f64),
            other => Err(format!("expected a number, found {other:?}")),
        }
    }
}
impl FromVal for String {
    fn from_val(v: Val) -> std::result::Result<Self, String> {
        match v {
            Val::Text(t) => Ok(t),
            other => Err(format!("expected text, found {other:?}")),
        }
    }
}
impl FromVal for Vec<u8> {
    fn from_val(v: Val) -> std::result::Result<Self, String> {
        match v {
            Val::Blob(b) => Ok(b),
            Val::Text(t) => Ok(t.into_bytes()),
            other => Err(format!("expected bytes, found {other:?}")),
        }
    }
}
impl<T: FromVal> FromVal for Option<T> {
    fn from_val(v: Val) -> std::result::Result<Self, String> {
        match v {
            Val::Null => Ok(None),
            v => T::from_val(v).map(Some),
        }
    }
}

/// A column's position (by number only).
pub trait RowIndex {
    fn index(&self) -> usize;
}
impl RowIndex for usize {
    fn index(&self) -> usize {
        *self
    }
}

/// rusqlite's `optional()`: no row is `None`.
pub trait OptionalExtension<T> {
    fn optional(self) -> Result<Option<T>>;
}

impl<T> OptionalExtension<T> for Result<T> {
    fn optional(self) -> Result<Option<T>> {
        match self {
            Ok(v) => Ok(Some(v)),
            Err(SqlError::NoRows) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// A stored word (status, kind) as its enum; an unknown word fails the read.
pub fn parse_col<T>(v: String) -> Result<T>
where
    T: std::str::FromStr,
    T::Err: std::fmt::Display,
{
    v.parse()
        .map_err(|e: T::Err| SqlError::Conversion(0, e.to_string()))
}

/// Which SQL a statement is written in, where the two differ beyond what
/// `pg::sql::translate` rewrites.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

/// A connection or a transaction of either database. Object-safe on purpose: the areas'
/// code is compiled once and takes `&dyn Db`; the typed helpers are on `dyn Db` below.
pub trait Db {
    /// Run `sql` with `params`, handing each row to `each` in order until it says stop.
    fn each_row(
        &self,
        sql: &str,
        params: &[Val],
        each: &mut dyn FnMut(&dyn Row) -> Result<bool>,
    ) -> Result<()>;
    /// Run a statement that returns no rows: how many rows it changed.
    fn run(&self, sql: &str, params: &[Val]) -> Result<usize>;
    fn dialect(&self) -> Dialect;
}

impl dyn Db + '_ {
    pub fn execute<P: Params>(&self, sql: &str, p: P) -> Result<usize> {
        self.run(sql, &p.vals())
    }

    /// The first row, read by `f`; [`SqlError::NoRows`] without one (see
    /// [`OptionalExtension::optional`]).
    pub fn query_row<T, P: Params, F: FnOnce(&dyn Row) -> Result<T>>(
        &self,
        sql: &str,
        p: P,
        f: F,
    ) -> Result<T> {
        let mut f = Some(f);
        let mut out = None;
        self.each_row(sql, &p.vals(), &mut |r| {
            if let Some(f) = f.take() {
                out = Some(f(r));
            }
            Ok(false)
        })?;
        out.unwrap_or(Err(SqlError::NoRows))
    }

    /// Every row, each read by `f`.
    pub fn query_map<T, P: Params, F: FnMut(&dyn Row) -> Result<T>>(
        &self,
        sql: &str,
        p: P,
        mut f: F,
    ) -> Result<Vec<T>> {
        let mut out = Vec::new();
        self.each_row(sql, &p.vals(), &mut |r| {
            out.push(f(r)?);
            Ok(true)
        })?;
        Ok(out)
    }

    /// `sql` to run once or more (rusqlite's shape; each connection caches its statements).
    pub fn prepare(&self, sql: &str) -> Result<Statement<'_>> {
        Ok(Statement {
            db: self,
            sql: sql.to_string(),
        })
    }

    /// The statement of this connection's dialect.
    pub fn pick<'s>(&self, sqlite: &'s str, postgres: &'s str) -> &'s str {
        match self.dialect() {
            Dialect::Sqlite => sqlite,
            Dialect::Postgres => postgres,
        }
    }
}

/// A statement and the connection it runs on.
pub struct Statement<'a> {
    db: &'a dyn Db,
    sql: String,
}

impl Statement<'_> {
    pub fn query_map<T, P: Params, F: FnMut(&dyn Row) -> Result<T>>(
        &mut self,
        p: P,
        f: F,
    ) -> Result<std::vec::IntoIter<Result<T>>> {
        let mut f = f;
        let mut out = Vec::new();
        self.db.each_row(&self.sql, &p.vals(), &mut |r| {
            out.push(f(r));
            Ok(true)
        })?;
        Ok(out.into_iter())
    }

    pub fn query_row<T, P: Params, F: FnOnce(&dyn Row) -> Result<T>>(
        &mut self,
        p: P,
        f: F,
    ) -> Result<T> {
        self.db.query_row(&self.sql, p, f)
    }

    pub fn execute<P: Params>(&mut self, p: P) -> Result<usize> {
        self.db.execute(&self.sql, p)
    }
}

/// One result row of either database.
pub trait Row {
    /// Column `i` (from 0) as one of SQLite's kinds.
    fn val(&self, i: usize) -> Result<Val>;
}

impl dyn Row + '_ {
    pub fn get<I: RowIndex, T: FromVal>(&self, i: I) -> Result<T> {
        let i = i.index();
        T::from_val(self.val(i)?).map_err(|e| SqlError::Conversion(i, e))
    }
}

impl rusqlite::ToSql for Val {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        use rusqlite::types::{ToSqlOutput, ValueRef};
        Ok(ToSqlOutput::Borrowed(match self {
            Val::Null => ValueRef::Null,
            Val::Int(n) => ValueRef::Integer(*n),
            Val::Real(f) => ValueRef::Real(*f),
            Val::Text(t) => ValueRef::Text(t.as_bytes()),
            Val::Blob(b) => ValueRef::Blob(b),
        }))
    }
}

struct SqliteRow<'a, 'stmt>(&'a rusqlite::Row<'stmt>);

impl Row for SqliteRow<'_, '_> {
    fn val(&self, i: usize) -> Result<Val> {
        use rusqlite::types::ValueRef;
        Ok(match self.0.get_ref(i)? {
            ValueRef::Null => Val::Null,
            ValueRef::Integer(n) => Val::Int(n),
            ValueRef::Real(f) => Val::Real(f),
            ValueRef::Text(t) => Val::Text(
                String::from_utf8(t.to_vec())
                    .map_err(|e| SqlError::Conversion(i, e.to_string()))?,
            ),
            ValueRef::Blob(b) => Val::Blob(b.to_vec()),
        })
    }
}

type CoordResult<T> = crate::error::Result<T>;

impl Db for rusqlite::Connection {
    fn each_row(
        &self,
        sql: &str,
        params: &[Val],
        each: &mut dyn FnMut(&dyn Row) -> Result<bool>,
    ) -> Result<()> {
        let mut st = self.prepare_cached(sql)?;
        let mut rows = st.query(rusqlite::params_from_iter(params))?;
        while let Some(r) = rows.next()? {
            if !each(&SqliteRow(r))? {
                break;
            }
        }
        Ok(())
    }

    fn run(&self, sql: &str, params: &[Val]) -> Result<usize> {
        Ok(self
            .prepare_cached(sql)?
            .execute(rusqlite::params_from_iter(params))?)
    }

    fn dialect(&self) -> Dialect {
        Dialect::Sqlite
    }
}

/// A transaction (or a pooled connection's guard) derefs to its connection and runs
/// statements as the connection does.
macro_rules! db_by_deref {
    ($($t:ty),*) => {$(
        impl $crate::store::db::Db for $t {
            fn each_row(
                &self,
                sql: &str,
                params: &[$crate::store::db::Val],
                each: &mut dyn FnMut(&dyn $crate::store::db::Row) -> $crate::store::db::Result<bool>,
            ) -> $crate::store::db::Result<()> {
                (**self).each_row(sql, params, each)
            }
            fn run(
                &self,
                sql: &str,
                params: &[$crate::store::db::Val],
            ) -> $crate::store::db::Result<usize> {
                (**self).run(sql, params)
            }
            fn dialect(&self) -> $crate::store::db::Dialect {
                (**self).dialect()
            }
        }
    )*};
}
pub(crate) use db_by_deref;

/// A reference runs statements as what it refers to (`&tx` where `tx` is already a `&dyn Db`).
impl<T: Db + ?Sized> Db for &T {
    fn each_row(
        &self,
        sql: &str,
        params: &[Val],
        each: &mut dyn FnMut(&dyn Row) -> Result<bool>,
    ) -> Result<()> {
        (**self).each_row(sql, params, each)
    }
    fn run(&self, sql: &str, params: &[Val]) -> Result<usize> {
        (**self).run(sql, params)
    }
    fn dialect(&self) -> Dialect {
        (**self).dialect()
    }
}
db_by_deref!(
    rusqlite::Transaction<'_>,
    std::sync::MutexGuard<'_, rusqlite::Connection>,
    super::pg::sql::Transaction<'_>
);

/// How a transaction keeps writers apart ([`SqlStore::transaction`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lock {
    /// One writer at a time, across every coordinator (SQLite's `BEGIN IMMEDIATE`;
    /// PostgreSQL's transaction-scoped advisory lock), so read-then-write code stays correct
    /// as written. For the rare writes.
    Writer,
    /// Only the rows the statements lock themselves (PostgreSQL's `FOR UPDATE … SKIP
    /// LOCKED`, chosen with `pick`): hot paths run side by side. SQLite has one writer
    /// anyway, so this is `BEGIN IMMEDIATE` there too.
    Rows,
}

/// A store over SQL as the areas' code reaches it: the connection or transaction to run on,
/// and the key secrets are sealed with. The SQLite [`Store`](super::Store) and
/// [`PgStore`](super::PgStore) implement it; each area's trait is implemented once for
/// every `SqlStore`.
pub trait SqlStore: Send + Sync {
    /// A connection for reads that need no transaction (SQLite: a read-only one beside the
    /// writer, so pages never wait on it).
    fn read<T>(&self, f: impl FnOnce(&dyn Db) -> CoordResult<T>) -> CoordResult<T>;
    /// A connection for a write of one statement (SQLite: the writer's), no transaction.
    fn conn<T>(&self, f: impl FnOnce(&dyn Db) -> CoordResult<T>) -> CoordResult<T>;
    /// A transaction, committed when `f` returns `Ok`, rolled back otherwise.
    fn transaction<T>(
        &self,
        lock: Lock,
        f: impl FnOnce(&dyn Db) -> CoordResult<T>,
    ) -> CoordResult<T>;
    fn secrets(&self) -> &crate::secrets::SecretsKey;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db() -> rusqlite::Connection {
        let c = rusqlite::Connection::open_in_memory().expect("in-memory SQLite");
        c.execute_batch("CREATE TABLE t(a INTEGER, b TEXT, c BLOB)")
            .expect("table");
        c
    }

    #[test]
    fn values_cross_as_written_and_no_row_is_none() {
        let c = db();
        let db: &dyn Db = &c;
        let n = db
            .execute(
                "INSERT INTO t(a, b, c) VALUES (?1, ?2, ?3)",
                params![7_i64, "x", vec![0_u8, 1]],
            )
            .expect("insert");
        assert_eq!(n, 1);
        let (a, b, c, flag): (u32, String, Vec<u8>, bool) = db
            .query_row("SELECT a, b, c, a > 5 FROM t", [], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
            })
            .expect("row");
        assert_eq!((a, b.as_str(), c, flag), (7, "x", vec![0, 1], true));
        let none: Option<i64> = db
            .query_row("SELECT a FROM t WHERE a = ?1", [8_i64], |r| r.get(0))
            .optional()
            .expect("query");
        assert_eq!(none, None);
        let e = db
            .query_row("SELECT b FROM t", [], |r| r.get::<_, i64>(0))
            .expect_err("text is not an integer");
        assert!(matches!(e, SqlError::Conversion(0, _)), "{e}");
    }

    #[test]
    fn query_map_reads_every_row_in_order() {
        let c = db();
        let db: &dyn Db = &c;
        for i in [3_i64, 1, 2] {
            db.execute("INSERT INTO t(a) VALUES (?1)", [i])
                .expect("insert");
        }
        let all: Vec<i64> = db
            .query_map("SELECT a FROM t ORDER BY a", [], |r| r.get(0))
            .expect("rows");
        assert_eq!(all, [1, 2, 3]);
        assert_eq!(db.pick("sqlite", "pg"), "sqlite");
    }
}

//! A thin layer over the `postgres` client in the shape the SQLite store's code is written
//! in (`query_row`, `prepare` + `query_map`, `execute`, `optional()`, transactions that
//! deref to their connection), and the [`Db`] implementation the shared areas' code runs
//! on (`store/db.rs`).
//!
//! Values cross as SQLite's five kinds ([`Val`]): a parameter is written in the type the
//! server inferred for it (a Rust `bool` into a `BIGINT` flag, an `i64` into an `INTEGER`),
//! and a column is read whatever its integer width (`BOOLEAN` results of `EXISTS` or
//! `IS NOT NULL` read as `bool` or `0`/`1`). Statements are written with SQLite's `?N`
//! placeholders and translated once per connection ([`translate`]), prepared and cached
//! per connection.

use postgres::types::{FromSql, IsNull, ToSql, Type};
use std::cell::RefCell;
use std::collections::HashMap;

pub(crate) use crate::store::db::params;
pub use crate::store::db::{
    parse_col, FromVal, OptionalExtension, Params, Result, RowIndex, SqlError, Val,
};
use crate::store::db::{Db, Dialect};

impl ToSql for Val {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut bytes::BytesMut,
    ) -> std::result::Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        let int = |v: &Val| -> std::result::Result<i64, Box<dyn std::error::Error + Sync + Send>> {
            match v {
                Val::Int(n) => Ok(*n),
                Val::Real(f) => Ok(*f as i64),
                Val::Text(t) => Ok(t.parse()?),
                other => Err(format!("{other:?} is not an integer").into()),
            }
        };
        match self {
            Val::Null => Ok(IsNull::Yes),
            v if *ty == Type::INT8 => int(v)?.to_sql(ty, out),
            v if *ty == Type::INT4 => i32::try_from(int(v)?)?.to_sql(ty, out),
            v if *ty == Type::INT2 => i16::try_from(int(v)?)?.to_sql(ty, out),
            v if *ty == Type::BOOL => (int(v)? != 0).to_sql(ty, out),
            Val::Real(f) if *ty == Type::FLOAT8 => f.to_sql(ty, out),
            Val::Int(n) if *ty == Type::FLOAT8 => (*n as f64).to_sql(ty, out),
            Val::Blob(b) if *ty == Type::BYTEA => b.to_sql(ty, out),
            Val::Text(t) if *ty == Type::BYTEA => t.as_bytes().to_sql(ty, out),
            Val::Text(t) => t.to_sql(&Type::TEXT, out),
            Val::Int(n) => n.to_string().to_sql(&Type::TEXT, out),
            Val::Real(f) => f.to_string().to_sql(&Type::TEXT, out),
            Val::Blob(b) => std::str::from_utf8(b)?.to_sql(&Type::TEXT, out),
        }
    }

    fn accepts(ty: &Type) -> bool {
        [
            Type::INT8,
            Type::INT4,
            Type::INT2,
            Type::BOOL,
            Type::FLOAT8,
            Type::BYTEA,
            Type::TEXT,
            Type::VARCHAR,
            Type::BPCHAR,
            Type::NAME,
            Type::UNKNOWN,
        ]
        .contains(ty)
    }

    postgres::types::to_sql_checked!();
}

impl<'a> FromSql<'a> for Val {
    fn from_sql(
        ty: &Type,
        raw: &'a [u8],
    ) -> std::result::Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(match *ty {
            Type::INT8 => Val::Int(i64::from_sql(ty, raw)?),
            Type::INT4 => Val::Int(i32::from_sql(ty, raw)?.into()),
            Type::INT2 => Val::Int(i16::from_sql(ty, raw)?.into()),
            Type::BOOL => Val::Int(bool::from_sql(ty, raw)?.into()),
            Type::FLOAT8 => Val::Real(f64::from_sql(ty, raw)?),
            Type::FLOAT4 => Val::Real(f32::from_sql(ty, raw)?.into()),
            Type::BYTEA => Val::Blob(Vec::<u8>::from_sql(ty, raw)?),
            _ => Val::Text(String::from_sql(ty, raw)?),
        })
    }

    fn from_sql_null(
        _: &Type,
    ) -> std::result::Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(Val::Null)
    }

    fn accepts(ty: &Type) -> bool {
        <Val as ToSql>::accepts(ty)
            || *ty == Type::FLOAT4
            || *ty == Type::JSON
            || *ty == Type::JSONB
    }
}

/// One result row.
pub struct Row(postgres::Row);

impl Row {
    pub fn get<I: RowIndex, T: FromVal>(&self, i: I) -> Result<T> {
        let i = i.index();
        let v: Val = self
            .0
            .try_get(i)
            .map_err(|e| SqlError::Conversion(i, e.to_string()))?;
        T::from_val(v).map_err(|e| SqlError::Conversion(i, e))
    }
}

/// `?N` → `$N`, `IS ?N` → `IS NOT DISTINCT FROM $N` (SQLite's `IS` compares NULLs as
/// equal), `INSERT OR IGNORE` → `ON CONFLICT DO NOTHING`. Everything else that differs is
/// written for PostgreSQL where it is used.
pub fn translate(sql: &str) -> String {
    let mut s = sql.to_string();
    let ignore = s.contains("INSERT OR IGNORE INTO");
    if ignore {
        s = s.replace("INSERT OR IGNORE INTO", "INSERT INTO");
    }
    let s = s
        .replace(" IS NOT ?", " IS DISTINCT FROM ?")
        .replace(" IS ?", " IS NOT DISTINCT FROM ?");
    let mut out = String::with_capacity(s.len() + 8);
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '?' && chars.peek().is_some_and(|d| d.is_ascii_digit()) {
            out.push('$');
        } else {
            out.push(c);
        }
    }
    if ignore {
        let t = out.trim_end().trim_end_matches(';').to_string();
        out = format!("{t} ON CONFLICT DO NOTHING");
    }
    out
}

/// A pooled connection and its prepared statements.
pub struct PgConn {
    pub client: postgres::Client,
    statements: HashMap<String, postgres::Statement>,
    /// Set when a call failed without a database error (the socket closed, the server
    /// restarted): the pool drops the connection instead of handing it out again.
    pub broken: bool,
}

impl PgConn {
    pub fn new(client: postgres::Client) -> PgConn {
        PgConn {
            client,
            statements: HashMap::new(),
            broken: false,
        }
    }

    fn statement(&mut self, sql: &str) -> Result<postgres::Statement> {
        if let Some(st) = self.statements.get(sql) {
            return Ok(st.clone());
        }
        let st = self.client.prepare(&translate(sql))?;
        self.statements.insert(sql.to_string(), st.clone());
        Ok(st)
    }

    fn note<T>(&mut self, r: Result<T>) -> Result<T> {
        if let Err(SqlError::Pg(e)) = &r {
            if e.as_db_error().is_none() {
                self.broken = true;
            }
        }
        r
    }

    fn query(&mut self, sql: &str, vals: &[Val]) -> Result<Vec<postgres::Row>> {
        let r = (|| {
            let st = self.statement(sql)?;
            let refs: Vec<&(dyn ToSql + Sync)> = vals.iter().map(|v| v as _).collect();
            Ok(self.client.query(&st, &refs)?)
        })();
        self.note(r)
    }

    fn execute(&mut self, sql: &str, vals: &[Val]) -> Result<u64> {
        let r = (|| {
            let st = self.statement(sql)?;
            let refs: Vec<&(dyn ToSql + Sync)> = vals.iter().map(|v| v as _).collect();
            Ok(self.client.execute(&st, &refs)?)
        })();
        self.note(r)
    }

    fn batch(&mut self, sql: &str) -> Result<()> {
        let r = self.client.batch_execute(sql).map_err(SqlError::from);
        self.note(r)
    }
}

/// The pool's connection manager: connects with the URL's settings and TLS.
pub struct Manager {
    pub config: postgres::Config,
    pub tls: tokio_postgres_rustls::MakeRustlsConnect,
}

impl r2d2::ManageConnection for Manager {
    type Connection = PgConn;
    type Error = postgres::Error;

    fn connect(&self) -> std::result::Result<PgConn, postgres::Error> {
        let client = self.config.connect(self.tls.clone())?;
        Ok(PgConn::new(client))
    }

    fn is_valid(&self, conn: &mut PgConn) -> std::result::Result<(), postgres::Error> {
        conn.client.simple_query("").map(|_| ())
    }

    fn has_broken(&self, conn: &mut PgConn) -> bool {
        conn.broken || conn.client.is_closed()
    }
}

pub type Pool = r2d2::Pool<Manager>;

/// One connection from the pool, used as rusqlite's `Connection` is (every method takes
/// `&self`); back to the pool when dropped.
pub struct Connection {
    inner: RefCell<r2d2::PooledConnection<Manager>>,
}

/// How a transaction keeps writers apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransactionBehavior {
    /// As SQLite's `BEGIN IMMEDIATE`: one writer at a time across every coordinator (a
    /// transaction-scoped advisory lock), so read-then-write code written for SQLite stays
    /// correct. For the rare writes (projects, pipelines, tokens, cancels).
    Immediate,
    /// Row locks only (`SELECT … FOR UPDATE`, `SKIP LOCKED`) taken by the statements
    /// themselves: the hot paths (claims, heartbeats, appends, finishes) run side by side.
    RowLocks,
}

/// The advisory lock key of [`TransactionBehavior::Immediate`] ("bosun" in ASCII).
const WRITER_LOCK: i64 = 0x0062_6f73_756e;

impl Connection {
    pub fn new(c: r2d2::PooledConnection<Manager>) -> Connection {
        Connection {
            inner: RefCell::new(c),
        }
    }

    pub fn execute<P: Params>(&self, sql: &str, p: P) -> Result<usize> {
        let n = self.inner.borrow_mut().execute(sql, &p.vals())?;
        Ok(n as usize)
    }

    pub fn execute_batch(&self, sql: &str) -> Result<()> {
        self.inner.borrow_mut().batch(sql)
    }

    pub fn query_row<T, P: Params, F: FnOnce(&Row) -> Result<T>>(
        &self,
        sql: &str,
        p: P,
        f: F,
    ) -> Result<T> {
        let rows = self.inner.borrow_mut().query(sql, &p.vals())?;
        match rows.into_iter().next() {
            Some(r) => f(&Row(r)),
            None => Err(SqlError::NoRows),
        }
    }

    pub fn prepare(&self, sql: &str) -> Result<Statement<'_>> {
        Ok(Statement {
            conn: self,
            sql: sql.to_string(),
        })
    }

    pub fn prepare_cached(&self, sql: &str) -> Result<Statement<'_>> {
        self.prepare(sql)
    }

    /// The id the last `INSERT` into a table with a serial id gave (this session's).
    pub fn last_insert_rowid(&self) -> i64 {
        self.query_row("SELECT lastval()", [], |r| r.get(0))
            .unwrap_or(0)
    }

    pub fn transaction_with_behavior(
        &mut self,
        behavior: TransactionBehavior,
    ) -> Result<Transaction<'_>> {
        match behavior {
            TransactionBehavior::Immediate => self.execute_batch(&format!(
                "BEGIN; SELECT pg_advisory_xact_lock({WRITER_LOCK})"
            ))?,
            TransactionBehavior::RowLocks => self.execute_batch("BEGIN")?,
        }
        Ok(Transaction {
            conn: self,
            done: false,
        })
    }
}

pub struct Transaction<'a> {
    conn: &'a Connection,
    done: bool,
}

impl Transaction<'_> {
    pub fn commit(mut self) -> Result<()> {
        self.done = true;
        self.conn.execute_batch("COMMIT")
    }
}

impl std::ops::Deref for Transaction<'_> {
    type Target = Connection;
    fn deref(&self) -> &Connection {
        self.conn
    }
}

impl Drop for Transaction<'_> {
    fn drop(&mut self) {
        if !self.done {
            // An error ended it early: nothing of it stays.
            let _ = self.conn.execute_batch("ROLLBACK");
        }
    }
}

impl Db for Connection {
    fn each_row(
        &self,
        sql: &str,
        params: &[Val],
        each: &mut dyn FnMut(&dyn crate::store::db::Row) -> Result<bool>,
    ) -> Result<()> {
        let rows = self.inner.borrow_mut().query(sql, params)?;
        for r in rows {
            if !each(&Row(r))? {
                break;
            }
        }
        Ok(())
    }

    fn run(&self, sql: &str, params: &[Val]) -> Result<usize> {
        Ok(self.inner.borrow_mut().execute(sql, params)? as usize)
    }

    fn dialect(&self) -> Dialect {
        Dialect::Postgres
    }
}

impl crate::store::db::Row for Row {
    fn val(&self, i: usize) -> Result<Val> {
        self.0
            .try_get(i)
            .map_err(|e| SqlError::Conversion(i, e.to_string()))
    }
}

pub struct Statement<'a> {
    conn: &'a Connection,
    sql: String,
}

impl Statement<'_> {
    pub fn query_map<T, P: Params, F: FnMut(&Row) -> Result<T>>(
        &mut self,
        p: P,
        mut f: F,
    ) -> Result<std::vec::IntoIter<Result<T>>> {
        let rows = self.conn.inner.borrow_mut().query(&self.sql, &p.vals())?;
        Ok(rows
            .into_iter()
            .map(|r| f(&Row(r)))
            .collect::<Vec<_>>()
            .into_iter())
    }
}

#[cfg(test)]
mod tests {
    use super::translate;

    #[test]
    fn placeholders_null_safe_equality_and_insert_or_ignore_are_translated() {
        assert_eq!(
            translate("SELECT a FROM t WHERE b IS ?2 AND c = ?10 AND d IS NOT ?1"),
            "SELECT a FROM t WHERE b IS NOT DISTINCT FROM $2 AND c = $10 AND d IS DISTINCT FROM $1"
        );
        assert_eq!(
            translate("INSERT OR IGNORE INTO t(a) VALUES (?1)"),
            "INSERT INTO t(a) VALUES ($1) ON CONFLICT DO NOTHING"
        );
        assert_eq!(translate("SELECT '?' FROM t"), "SELECT '?' FROM t");
    }
}

//! The coordinator's errors. They sit below every other module of the crate, the store
//! included, so that the store takes them from here and imports nothing above it (the
//! crate root holds the CLI, which imports the store).

use std::path::PathBuf;

/// A failure of the database under the store, with the database's own message: callers
/// see this type, never SQLite's or PostgreSQL's, so the store can change what it stands on.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Sqlite(#[from] rusqlite::Error),
    /// PostgreSQL's (`--database postgres://…`), or its connection pool's: the message only
    /// (it never holds the connection's password).
    #[error("PostgreSQL: {0}")]
    Postgres(String),
    /// A row that was not there, or a column that did not read as its type (either
    /// database).
    #[error("{0}")]
    Row(String),
}

impl From<rusqlite::Error> for CoordError {
    fn from(e: rusqlite::Error) -> Self {
        CoordError::Db(StoreError::Sqlite(e))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CoordError {
    #[error("store: {0}")]
    Db(#[from] StoreError),
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Invalid(String),
    /// The caller may not do this (an approver outside a context's group): a 403.
    #[error("{0}")]
    Forbidden(String),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    SshKeys(#[from] bosun_git::keys::KeysError),
}

pub type Result<T> = std::result::Result<T, CoordError>;

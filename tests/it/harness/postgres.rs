//! PostgreSQL for the tests: a throwaway server (Debian's `initdb` and `pg_ctl` in a
//! temporary directory, on a free loopback port), the coordinator's own helper included as
//! it is, so the store's tests and these start it the same way.

#[path = "../../../crates/coordinator/src/store/pg/test_server.rs"]
mod server;
pub use server::{pg_bin, PgServer};

/// A server for one test, or `None` (after saying so) when the host has no PostgreSQL
/// server binaries (`scripts/test.sh --setup` installs them).
pub fn start() -> Option<PgServer> {
    if pg_bin().is_none() {
        eprintln!(
            "skipped: no PostgreSQL server binaries (/usr/lib/postgresql/N/bin; \
             `scripts/test.sh --setup` installs them)"
        );
        return None;
    }
    Some(PgServer::start().unwrap_or_else(|e| panic!("PostgreSQL: {e}")))
}

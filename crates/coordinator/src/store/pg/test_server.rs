//! A throwaway PostgreSQL server for tests and benches: Debian's `initdb` and `pg_ctl` in a
//! temporary directory, listening on a free loopback port, trusted local login, stopped
//! when dropped. Standard library only: the coordinator's store tests use it, and the
//! integration tests' harness includes this file as it is (`tests/it/harness/`).
//!
//! `initdb` refuses to run as root; as root the server runs as the `postgres` user the
//! Debian package creates (`scripts/test.sh --setup` installs it).

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The newest `bin` directory of Debian's PostgreSQL (`/usr/lib/postgresql/N/bin`) with
/// `initdb`, or `$BOSUN_PG_BIN`.
pub fn pg_bin() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("BOSUN_PG_BIN") {
        let p = PathBuf::from(p);
        return p.join("initdb").exists().then_some(p);
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let v: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((v, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, b)| b)
}

pub struct PgServer {
    bin: PathBuf,
    /// Holds the data directory; removed after the server stops.
    root: PathBuf,
    pub port: u16,
    /// `Some(uid)`: commands run as the `postgres` user (we are root).
    as_postgres: Option<(u32, u32)>,
    databases: AtomicUsize,
}

fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

impl PgServer {
    /// Start a server tuned for tests (no fsync: nothing here must survive the host).
    pub fn start() -> Result<PgServer, String> {
        Self::start_with(&[
            "fsync=off",
            "synchronous_commit=off",
            "full_page_writes=off",
        ])
    }

    /// Start a server with `settings` (`name=value`, passed as `-c`).
    pub fn start_with(settings: &[&str]) -> Result<PgServer, String> {
        let bin = pg_bin().ok_or("no PostgreSQL server binaries (apt-get install postgresql)")?;
        let root = std::env::temp_dir().join(format!(
            "bosun-pg-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0)
        ));
        std::fs::create_dir_all(&root).map_err(|e| format!("{}: {e}", root.display()))?;
        // SAFETY: geteuid has no preconditions.
        let as_postgres = if unsafe { libc::geteuid() } == 0 {
            let ids = postgres_ids()
                .ok_or("running as root and no `postgres` user to run the server as")?;
            chown(&root, ids)?;
            Some(ids)
        } else {
            None
        };
        let mut s = PgServer {
            bin,
            root,
            port: 0,
            as_postgres,
            databases: AtomicUsize::new(0),
        };
        let data = s.data_dir();
        s.run(
            "initdb",
            &[
                "-D",
                path_str(&data)?,
                "--auth=trust",
                "--username=bosun",
                "--encoding=UTF8",
                "--no-sync",
            ],
        )?;
        let mut conf = String::from(
            "listen_addresses = '127.0.0.1'\nunix_socket_directories = ''\nmax_connections = 300\nshared_buffers = 32MB\n",
        );
        for kv in settings {
            let (k, v) = kv.split_once('=').ok_or("settings are name=value")?;
            conf.push_str(&format!("{k} = '{v}'\n"));
        }
        let auto = data.join("postgresql.auto.conf");
        std::fs::write(&auto, conf).map_err(|e| format!("{}: {e}", auto.display()))?;
        if let Some(ids) = s.as_postgres {
            chown(&auto, ids)?;
        }
        // A port taken between our probe and the server's bind: try another.
        let mut last = String::new();
        for _ in 0..5 {
            s.port = free_port().map_err(|e| e.to_string())?;
            match s.pg_ctl_start() {
                Ok(()) => return Ok(s),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    fn data_dir(&self) -> PathBuf {
        self.root.join("data")
    }

    fn pg_ctl_start(&self) -> Result<(), String> {
        let data = self.data_dir();
        let log = self.root.join("server.log");
        self.run(
            "pg_ctl",
            &[
                "-D",
                path_str(&data)?,
                "-l",
                path_str(&log)?,
                "-o",
                &format!("-p {}", self.port),
                "-w",
                "-t",
                "30",
                "start",
            ],
        )
        .map_err(|e| {
            let tail = std::fs::read_to_string(&log).unwrap_or_default();
            format!("{e}\n{tail}")
        })
    }

    fn run(&self, tool: &str, args: &[&str]) -> Result<(), String> {
        let exe = self.bin.join(tool);
        let mut cmd = Command::new(&exe);
        cmd.args(args).current_dir(&self.root);
        if let Some((uid, gid)) = self.as_postgres {
            use std::os::unix::process::CommandExt;
            cmd.uid(uid).gid(gid);
            cmd.env("HOME", &self.root);
        }
        let out = cmd
            .output()
            .map_err(|e| format!("{}: {e}", exe.display()))?;
        if !out.status.success() {
            return Err(format!(
                "{tool} {}: {}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(())
    }

    /// A new empty database: its URL.
    pub fn new_database(&self) -> Result<String, String> {
        let n = self.databases.fetch_add(1, Ordering::SeqCst);
        let name = format!("t{n}");
        let port = self.port.to_string();
        self.run(
            "createdb",
            &["-h", "127.0.0.1", "-p", &port, "-U", "bosun", &name],
        )?;
        Ok(self.url(&name))
    }

    pub fn url(&self, db: &str) -> String {
        format!("postgres://bosun@127.0.0.1:{}/{db}", self.port)
    }

    /// Stop the server (`fast`: sessions are ended, as in a restart or a failover).
    pub fn stop(&self) -> Result<(), String> {
        let data = self.data_dir();
        self.run(
            "pg_ctl",
            &["-D", path_str(&data)?, "-m", "fast", "-w", "stop"],
        )
    }

    /// Start it again on the same port.
    pub fn start_again(&self) -> Result<(), String> {
        self.pg_ctl_start()
    }
}

impl PgServer {
    /// Stop the server at once and remove its files (also what dropping it does).
    pub fn shut_down(&self) {
        if let Ok(data) = path_str(&self.data_dir()) {
            let _ = self.run("pg_ctl", &["-D", data, "-m", "immediate", "-w", "stop"]);
        }
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        self.shut_down();
    }
}

fn path_str(p: &Path) -> Result<&str, String> {
    p.to_str()
        .ok_or_else(|| format!("{}: not UTF-8", p.display()))
}

fn chown(p: &Path, (uid, gid): (u32, u32)) -> Result<(), String> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(p.as_os_str().as_bytes()).map_err(|e| e.to_string())?;
    // SAFETY: a valid NUL-terminated path.
    if unsafe { libc::chown(c.as_ptr(), uid, gid) } != 0 {
        return Err(format!(
            "chown {}: {}",
            p.display(),
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

/// The uid and gid of the `postgres` user, from /etc/passwd.
fn postgres_ids() -> Option<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.first() == Some(&"postgres") && f.len() > 3)
            .then(|| Some((f[2].parse().ok()?, f[3].parse().ok()?)))
            .flatten()
    })
}

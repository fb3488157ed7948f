//! The project's own servers as real processes: `bosun coordinator serve` on loopback.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

/// Start `bosun coordinator serve --listen LISTEN --data DATA EXTRA…` and return it with the
/// `host:port` it printed (`listening on http://ADDR`; port 0 picks a free one).
pub fn spawn_coordinator(data: &Path, listen: &str, extra: &[&str]) -> (Child, String) {
    let mut child = Command::new(super::bosun_bin())
        .args(["coordinator", "serve", "--listen", listen])
        .args(extra)
        .arg("--data")
        .arg(data)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("coordinator");
    let stdout = child.stdout.take().expect("stdout");
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("listening line");
    let addr = line
        .trim()
        .rsplit("http://")
        .next()
        .unwrap_or("")
        .to_owned();
    assert!(addr.contains(':'), "unexpected first line: {line}");
    (child, addr)
}

/// `bosun coordinator ARGS… --data DATA`, panicking on failure; trimmed stdout.
pub fn coordinator_cli(data: &Path, args: &[&str]) -> String {
    let mut c = Command::new(super::bosun_bin());
    c.arg("coordinator").args(args).arg("--data").arg(data);
    super::run(&mut c).trim().to_owned()
}

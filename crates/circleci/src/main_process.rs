//! The job container's main process from its first instruction, on a local engine: the agent
//! mounts this executable read-only into the primary container and makes it the entrypoint
//! (under the engine's init), so no shell starts, no `id` runs and no copy of this executable
//! goes through the setup archive. It speaks what the shell main process speaks
//! (`crates/core/src/job/bootstrap.rs`), so the agent reads both the same way:
//!
//! 1. `bosun-ready UID GID bash|sh HOME`, the user it runs as;
//! 2. reads `LENGTH RUNNER` on a line, then LENGTH bytes of tar, which `tar -x -C /` unpacks
//!    (its complaints go to the attach stream), and says `bosun-installed` or
//!    `bosun-install-failed`;
//! 3. starts the step runner ([`super::step_runner`]) as its child on the same stdin and
//!    stdout, and once that ends (a step may kill it) says `bosun-runner-ended`; then, or when
//!    the files could not go in, idles until the container is removed: steps then arrive
//!    through the engine's exec. The runner is a child, not this process, so that the
//!    container outlives it.
//!
//! RUNNER is where the archive put the job's `circleci` command (`<runtime dir>/bin/circleci`,
//! a link to this file): it names the job's runtime directory, which this file's own place no
//! longer does; the runner gets it as its argument.

use std::io::{Read, Write};
use std::path::Path;

/// The argument that makes the in-job command the container's main process.
pub const ARG: &str = "__bosun-main";

/// Where the agent mounts this executable in the container (read-only).
pub const MOUNTED_PATH: &str = "/.bosun-runtime/circleci";

extern "C" {
    fn getuid() -> u32;
    fn getgid() -> u32;
    fn access(path: *const std::ffi::c_char, mode: i32) -> i32;
}

/// What `[ -x /bin/bash ]` says.
fn has_bash() -> bool {
    const X_OK: i32 = 1;
    // SAFETY: a NUL-terminated constant path; access only reads it.
    unsafe { access(c"/bin/bash".as_ptr(), X_OK) == 0 }
}

/// The banner line, as the shell's `printf` wrote it.
fn banner() -> String {
    // SAFETY: getuid and getgid cannot fail and touch nothing.
    let (uid, gid) = unsafe { (getuid(), getgid()) };
    let home = std::env::var("HOME")
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "/".to_owned());
    let shell = if has_bash() { "bash" } else { "sh" };
    format!("bosun-ready {uid} {gid} {shell} {home}\n")
}

/// Run as the main process; returns only if stdout is gone.
pub fn run() -> i32 {
    use std::os::fd::AsFd;
    let mut out = std::io::stdout();
    if out
        .write_all(banner().as_bytes())
        .and_then(|()| out.flush())
        .is_err()
    {
        return 1;
    }
    // Unbuffered: what follows the archive is the runner's to read, not left in a buffer here.
    let mut input = match std::io::stdin().as_fd().try_clone_to_owned() {
        Ok(fd) => std::fs::File::from(fd),
        Err(_) => return 1,
    };
    let installed = install(&mut input);
    drop(input);
    let line: &[u8] = if installed.is_ok() {
        b"bosun-installed\n"
    } else {
        b"bosun-install-failed\n"
    };
    if out.write_all(line).and_then(|()| out.flush()).is_err() {
        return 1;
    }
    if let Ok(runtime) = installed {
        let ran = std::env::current_exe().and_then(|me| {
            std::process::Command::new(me)
                .arg(super::step_runner::ARG)
                .arg(&runtime)
                .status()
        });
        if let Err(e) = ran {
            let _ = writeln!(out, "bosun-runner-failed {e}");
        }
        let _ = out
            .write_all(b"bosun-runner-ended\n")
            .and_then(|()| out.flush());
    }
    // stdin stays with the engine's attach; nothing more is read from it.
    idle()
}

/// `LENGTH RUNNER` then the archive, unpacked by the image's `tar`; the runtime directory
/// RUNNER names. Reads exactly the line and the archive.
fn install(input: &mut impl Read) -> Result<std::path::PathBuf, String> {
    let mut head = Vec::new();
    let mut byte = [0u8];
    loop {
        match input.read(&mut byte) {
            Ok(0) => return Err("stdin ended before the files".to_owned()),
            Ok(_) if byte[0] == b'\n' => break,
            Ok(_) if head.len() < 4096 => head.push(byte[0]),
            Ok(_) => return Err("the head line is too long".to_owned()),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("reading the files' length: {e}")),
        }
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let (len, runner) = head
        .split_once(' ')
        .ok_or_else(|| format!("a bad head line `{head}`"))?;
    let len: u64 = len.parse().map_err(|_| format!("a bad length `{len}`"))?;
    let runtime = Path::new(runner)
        .parent()
        .and_then(Path::parent)
        .filter(|d| d.is_absolute() && d != &Path::new("/"))
        .ok_or_else(|| format!("no runtime directory in `{runner}`"))?
        .to_path_buf();
    let tar = std::process::Command::new("tar")
        .args(["-x", "-f", "-", "-C", "/"])
        .stdin(std::process::Stdio::piped())
        .spawn();
    let mut tar = match tar {
        Ok(t) => t,
        Err(e) => {
            // Its bytes must still leave stdin, or they would be read as frames.
            let _ = std::io::copy(&mut input.by_ref().take(len), &mut std::io::sink());
            println!("tar: {e}");
            return Err(format!("tar: {e}"));
        }
    };
    let copied = match tar.stdin.take() {
        Some(mut stdin) => std::io::copy(&mut input.by_ref().take(len), &mut stdin).unwrap_or(0),
        None => 0,
    };
    // tar may stop early (a bad archive): what it left must still leave stdin.
    if copied < len {
        let _ = std::io::copy(&mut input.by_ref().take(len - copied), &mut std::io::sink());
    }
    let status = tar.wait().map_err(|e| format!("tar: {e}"))?;
    if status.success() && copied == len {
        Ok(runtime)
    } else {
        Err(format!("tar: {status}"))
    }
}

/// Stay until the container is removed: the engine's exec needs the container running.
fn idle() -> i32 {
    loop {
        std::thread::sleep(std::time::Duration::from_secs(3600));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_banner_reads_as_the_shells() {
        let b = banner();
        let rest = b.strip_prefix("bosun-ready ").expect("prefix");
        let parts: Vec<&str> = rest.trim_end().splitn(4, ' ').collect();
        assert_eq!(parts.len(), 4, "{b}");
        assert!(parts[0].parse::<u32>().is_ok() && parts[1].parse::<u32>().is_ok());
        assert!(parts[2] == "bash" || parts[2] == "sh");
        assert!(b.ends_with('\n'));
    }

    #[test]
    fn a_bad_head_line_is_refused_and_the_runtime_dir_comes_from_the_runner() {
        assert!(install(&mut std::io::Cursor::new(b"x y\n".to_vec())).is_err());
        assert!(install(&mut std::io::Cursor::new(b"12\n".to_vec())).is_err());
        assert!(install(&mut std::io::Cursor::new(b"0 /circleci\n".to_vec())).is_err());
    }
}

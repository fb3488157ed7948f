//! The SFTP server the SSH gateway starts for a session's `sftp` subsystem (`scp` speaks SFTP
//! since OpenSSH 9.0; `sftp`, file managers and IDEs do too), so that every job image has one,
//! whether or not it has an `sftp-server`, a shell or a libc.
//!
//! It runs in the job's container as the step user (the gateway execs it as it execs a shell),
//! and each request is a system call of this process: what the kernel lets that user do, it
//! does — a path outside the user's reach is refused by the kernel (`EACCES`), and a symlink
//! leads nowhere the user could not go anyway. Relative paths start at the user's home, as with
//! sshd. Reads and writes go straight between the file and the packet (one request's data at
//! a time, at most [`wire::MAX_DATA`]). The client is not trusted: a packet longer than
//! [`wire::MAX_PACKET`] ends the session; a malformed one gets `SSH_FX_BAD_MESSAGE`; and the
//! parser runs here, in a process of the job's user, not in the agent.
//!
//! Version 3 of the protocol (what OpenSSH speaks), with the extensions OpenSSH's clients use:
//! `posix-rename`, `hardlink`, `fsync`, `lsetstat`, `limits`, `expand-path`, `home-directory`.

mod names;
mod server;
pub mod wire;

use std::io::{BufRead, BufReader, BufWriter, Read, Write};

/// The argument that makes the in-job command an SFTP server on its stdin and stdout.
pub const ARG: &str = "__bosun-sftp";

/// Serve the session on stdin and stdout until the client goes; the exit status.
pub fn run() -> i32 {
    use std::os::fd::AsFd;
    let names = names::Names::load();
    let mut home = names.own_home();
    if !std::fs::metadata(&home).is_ok_and(|m| m.is_dir()) {
        // As sshd: it says so, and starts at `/`.
        eprintln!("Could not chdir to home directory {}", home.display());
        home = std::path::PathBuf::from("/");
    }
    // Plain files over the descriptors: our own buffers, no line buffering, no lock.
    let (input, output) = match (
        std::io::stdin().as_fd().try_clone_to_owned(),
        std::io::stdout().as_fd().try_clone_to_owned(),
    ) {
        (Ok(i), Ok(o)) => (std::fs::File::from(i), std::fs::File::from(o)),
        _ => {
            eprintln!("bosun sftp: cannot use stdin and stdout");
            return 1;
        }
    };
    match serve(input, output, server::Server::new(home, names)) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("bosun sftp: {e}");
            1
        }
    }
}

#[derive(Debug)]
pub enum SessionError {
    Io(std::io::Error),
    TooLong(u32),
    /// The input ended inside a packet.
    Cut,
    Empty,
    /// The stream broke the protocol's order: it cannot be answered.
    Protocol(&'static str),
}

impl std::fmt::Display for SessionError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SessionError::Io(e) => write!(f, "{e}"),
            SessionError::TooLong(n) => write!(
                f,
                "a packet of {n} bytes (at most {} are taken): closing the session",
                wire::MAX_PACKET
            ),
            SessionError::Cut => write!(f, "the stream ended inside a packet"),
            SessionError::Empty => write!(f, "an empty packet: closing the session"),
            SessionError::Protocol(what) => write!(f, "{what}: closing the session"),
        }
    }
}

impl From<std::io::Error> for SessionError {
    fn from(e: std::io::Error) -> Self {
        SessionError::Io(e)
    }
}

/// Answer each request on `input` on `output`, in order, until the input ends. Replies are
/// written out when no further whole request is waiting (a client keeps many in flight).
pub fn serve(
    input: impl Read,
    output: impl Write,
    mut server: server::Server,
) -> Result<(), SessionError> {
    let capacity = wire::MAX_PACKET as usize + 4;
    let mut input = BufReader::with_capacity(capacity, input);
    let mut output = BufWriter::with_capacity(capacity, output);
    let mut packet = Vec::new();
    loop {
        if !read_packet(&mut input, &mut packet)? {
            output.flush()?;
            return Ok(());
        }
        match server.handle(&packet) {
            server::Reply::Send(bytes) => output.write_all(&bytes)?,
            server::Reply::End(e) => {
                output.flush()?;
                return Err(e);
            }
        }
        if !whole_packet(input.buffer()) {
            output.flush()?;
        }
    }
}

/// The next packet's body (type and fields) into `buf`; false at the end of the input.
fn read_packet(input: &mut impl BufRead, buf: &mut Vec<u8>) -> Result<bool, SessionError> {
    if input.fill_buf()?.is_empty() {
        return Ok(false);
    }
    let mut len = [0u8; 4];
    input.read_exact(&mut len).map_err(|e| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => SessionError::Cut,
        _ => SessionError::Io(e),
    })?;
    let len = u32::from_be_bytes(len);
    if len > wire::MAX_PACKET {
        return Err(SessionError::TooLong(len));
    }
    if len == 0 {
        return Err(SessionError::Empty);
    }
    buf.clear();
    buf.resize(len as usize, 0);
    input.read_exact(buf).map_err(|e| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => SessionError::Cut,
        _ => SessionError::Io(e),
    })?;
    Ok(true)
}

fn whole_packet(buffered: &[u8]) -> bool {
    match buffered {
        [a, b, c, d, rest @ ..] => rest.len() >= u32::from_be_bytes([*a, *b, *c, *d]) as usize,
        _ => false,
    }
}

#[cfg(test)]
mod tests;

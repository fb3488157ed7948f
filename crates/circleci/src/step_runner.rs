//! The step runner: the job container's main process becomes this, and the agent runs the job's
//! `run` steps through it instead of one `docker exec` each. An exec costs the engine a runtime
//! process that enters the container's namespaces (tens of milliseconds a step); a fork here
//! costs under a millisecond (docs/benchmarks.md). The engine's exec stays for what must run as
//! another user (stopping a step as root) and for images where this cannot run.
//!
//! It speaks frames over its stdin and stdout, which are the container's attach stream:
//! `kind: u8, id: u32 BE, len: u32 BE, payload`. The agent asks `RUN`; the runner answers
//! `STARTED` or `FAILED`, then `STDOUT` / `STDERR` chunks, then `EXIT` (the exit code, and
//! whether the job's halt file exists by then). Before the first frame
//! it prints [`READY`] as a line, so the agent knows frames follow.
//!
//! The codec is here, std only, so the agent and the executable share one definition.

use std::io::{self, BufRead, Read, Write};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

/// The runner's first line: after it, frames.
pub const READY: &str = "bosun-runner 1";
/// The argument that makes the in-job command a runner.
pub const ARG: &str = "__bosun-runner";

pub const RUN: u8 = 1;
pub const STARTED: u8 = 2;
pub const FAILED: u8 = 3;
pub const STDOUT: u8 = 4;
pub const STDERR: u8 = 5;
pub const EXIT: u8 = 6;

/// Larger frames are refused: the other side is broken or hostile.
pub const MAX_FRAME: usize = 16 * 1024 * 1024;
/// After the step's process ends, how long its output may still come (a background child
/// holding the pipe): what the engine grants an exec's streams.
const DRAIN: Duration = Duration::from_secs(2);

/// One frame, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub kind: u8,
    pub id: u32,
    pub payload: Vec<u8>,
}

/// A `RUN` request: the command line, environment added to the container's, directory.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Run {
    pub argv: Vec<String>,
    pub env: Vec<String>,
    pub dir: Option<String>,
}

pub fn encode(kind: u8, id: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + payload.len());
    out.push(kind);
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// The kind, id and payload length of the frame at the front of `buf`, once all of it is
/// there (`Ok(None)` until then): the agent takes the payload without copying it.
pub fn whole_frame(buf: &[u8]) -> Result<Option<(u8, u32, usize)>, String> {
    if buf.len() < HEADER {
        return Ok(None);
    }
    let kind = buf[0];
    if !(RUN..=EXIT).contains(&kind) {
        return Err(format!("unknown frame kind {kind}"));
    }
    let id = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]);
    let len = u32::from_be_bytes([buf[5], buf[6], buf[7], buf[8]]) as usize;
    if len > MAX_FRAME {
        return Err(format!("a frame of {len} bytes (at most {MAX_FRAME})"));
    }
    Ok((buf.len() >= HEADER + len).then_some((kind, id, len)))
}

/// The bytes before a frame's payload.
pub const HEADER: usize = 9;

/// Take one whole frame off the front of `buf`; `Ok(None)` until one is there.
pub fn decode(buf: &mut Vec<u8>) -> Result<Option<Frame>, String> {
    let Some((kind, id, len)) = whole_frame(buf)? else {
        return Ok(None);
    };
    let payload = buf[HEADER..HEADER + len].to_vec();
    buf.drain(..HEADER + len);
    Ok(Some(Frame { kind, id, payload }))
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u32).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn put_list(out: &mut Vec<u8>, items: &[String]) {
    out.extend_from_slice(&(items.len() as u32).to_be_bytes());
    for s in items {
        put_str(out, s);
    }
}

struct Cursor<'a>(&'a [u8]);

impl Cursor<'_> {
    fn u32(&mut self) -> Result<u32, String> {
        if self.0.len() < 4 {
            return Err("a RUN frame ends early".to_owned());
        }
        let (n, rest) = self.0.split_at(4);
        self.0 = rest;
        Ok(u32::from_be_bytes([n[0], n[1], n[2], n[3]]))
    }
    fn string(&mut self) -> Result<String, String> {
        let n = self.u32()? as usize;
        if self.0.len() < n {
            return Err("a RUN frame ends early".to_owned());
        }
        let (s, rest) = self.0.split_at(n);
        self.0 = rest;
        String::from_utf8(s.to_vec()).map_err(|_| "a RUN frame holds bad UTF-8".to_owned())
    }
    fn list(&mut self) -> Result<Vec<String>, String> {
        let n = self.u32()? as usize;
        // Each string takes at least its 4-byte length: a count beyond that is a lie.
        if n > self.0.len() / 4 {
            return Err("a RUN frame's list is longer than the frame".to_owned());
        }
        (0..n).map(|_| self.string()).collect()
    }
}

impl Run {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        put_list(&mut out, &self.argv);
        put_list(&mut out, &self.env);
        put_str(&mut out, self.dir.as_deref().unwrap_or(""));
        out
    }

    pub fn decode(payload: &[u8]) -> Result<Run, String> {
        let mut c = Cursor(payload);
        let argv = c.list()?;
        let env = c.list()?;
        let dir = c.string()?;
        if argv.is_empty() {
            return Err("a RUN frame without a command".to_owned());
        }
        Ok(Run {
            argv,
            env,
            dir: (!dir.is_empty()).then_some(dir),
        })
    }
}

/// The exit code as the engine reports an exec's: the code, or 128 + the signal.
pub fn exit_code(status: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(255)
}

type Out = Arc<Mutex<Box<dyn Write + Send>>>;

fn send(out: &Out, kind: u8, id: u32, payload: &[u8]) {
    let frame = encode(kind, id, payload);
    let mut w = out.lock().unwrap_or_else(|p| p.into_inner());
    // The agent gone: nothing to tell anyone; the container goes with it.
    let _ = w.write_all(&frame).and_then(|()| w.flush());
}

/// Serve until `input` ends (the agent closed the attach stream). Steps run as children of
/// this process, each leading its own process group (the agent signals the group).
pub fn serve(input: impl Read, output: Box<dyn Write + Send>) -> i32 {
    let out: Out = Arc::new(Mutex::new(output));
    {
        let mut w = out.lock().unwrap_or_else(|p| p.into_inner());
        if writeln!(w, "{READY}").and_then(|()| w.flush()).is_err() {
            return 1;
        }
    }
    let mut input = io::BufReader::new(input);
    let mut buf = Vec::new();
    loop {
        match decode(&mut buf) {
            Ok(Some(frame)) => {
                if frame.kind == RUN {
                    start(&out, frame.id, &frame.payload);
                }
                continue;
            }
            Ok(None) => {}
            Err(e) => {
                eprintln!("bosun runner: {e}; stopping");
                return 1;
            }
        }
        let chunk = match input.fill_buf() {
            Ok([]) => return 0,
            Ok(chunk) => chunk.to_vec(),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return 1,
        };
        input.consume(chunk.len());
        buf.extend_from_slice(&chunk);
    }
}

/// Variables a shell between the engine and this process adds to the environment; a step
/// started by the engine's exec would not have them.
const SHELL_ADDED: [&str; 4] = ["PWD", "OLDPWD", "SHLVL", "_"];

fn start(out: &Out, id: u32, payload: &[u8]) {
    use std::os::unix::process::CommandExt;
    use std::process::{Command, Stdio};
    let run = match Run::decode(payload) {
        Ok(r) => r,
        Err(e) => return send(out, FAILED, id, e.as_bytes()),
    };
    let mut cmd = Command::new(&run.argv[0]);
    cmd.args(&run.argv[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    for k in SHELL_ADDED {
        cmd.env_remove(k);
    }
    for kv in &run.env {
        match kv.split_once('=') {
            Some((k, v)) => cmd.env(k, v),
            None => cmd.env_remove(kv),
        };
    }
    if let Some(dir) = &run.dir {
        // Said plainly: the spawn's own error would name the command, not the directory.
        if !std::path::Path::new(dir).is_dir() {
            let message = format!("the working directory {dir} does not exist");
            return send(out, FAILED, id, message.as_bytes());
        }
        cmd.current_dir(dir);
    }
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            let message = format!("{}: {e}", run.argv[0]);
            return send(out, FAILED, id, message.as_bytes());
        }
    };
    send(out, STARTED, id, &[]);
    let (done_tx, done_rx) = mpsc::channel();
    if let Some(p) = &child.stdout {
        widen(p);
    }
    if let Some(p) = &child.stderr {
        widen(p);
    }
    let pipes: [(u8, Option<Box<dyn Read + Send>>); 2] = [
        (STDOUT, child.stdout.take().map(|p| Box::new(p) as _)),
        (STDERR, child.stderr.take().map(|p| Box::new(p) as _)),
    ];
    let mut readers = 0;
    for (kind, pipe) in pipes {
        let Some(mut pipe) = pipe else { continue };
        readers += 1;
        let (out, done) = (Arc::clone(out), done_tx.clone());
        std::thread::spawn(move || {
            let mut chunk = vec![0u8; CHUNK];
            loop {
                match pipe.read(&mut chunk) {
                    Ok(0) => break,
                    Ok(n) => send(&out, kind, id, &chunk[..n]),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => break,
                }
            }
            let _ = done.send(());
        });
    }
    let out = Arc::clone(out);
    std::thread::spawn(move || {
        let code = match child.wait() {
            Ok(status) => exit_code(status),
            Err(_) => 255,
        };
        // The output first, then the exit: the agent ends the step's stream at EXIT.
        let deadline = Instant::now() + DRAIN;
        for _ in 0..readers {
            let left = deadline.saturating_duration_since(Instant::now());
            if done_rx.recv_timeout(left).is_err() {
                break;
            }
        }
        // Whether `circleci step halt` has been run by now: the agent would otherwise ask the
        // engine after each step.
        let halted = super::runtime_dir().is_ok_and(|d| d.join(super::HALT_FILE).exists());
        let mut payload = code.to_be_bytes().to_vec();
        payload.push(u8::from(halted));
        send(&out, EXIT, id, &payload);
    });
}

/// The most a step's output frame carries.
const CHUNK: usize = 256 * 1024;

/// A step's pipe holds [`CHUNK`] (Linux's default is 64 KiB): a flooding step then hands
/// over a quarter as many frames, each a write through the engine's attach stream.
fn widen(pipe: &impl std::os::fd::AsRawFd) {
    extern "C" {
        fn fcntl(fd: i32, cmd: i32, ...) -> i32;
    }
    const F_SETPIPE_SZ: i32 = 1031;
    // SAFETY: F_SETPIPE_SZ on a pipe this process owns; a refusal (a lower
    // /proc/sys/fs/pipe-max-size) leaves the default, which works too.
    unsafe {
        fcntl(pipe.as_raw_fd(), F_SETPIPE_SZ, CHUNK as i32);
    }
}

/// Make this process's `/proc/PID/fd` unreadable to the job's other processes of the same
/// user, so a step cannot write frames into the attach stream and pose as the runner. (A
/// step running as root still can; it could end its own job in other ways too.)
pub fn not_dumpable() {
    extern "C" {
        fn prctl(option: i32, arg2: u64, arg3: u64, arg4: u64, arg5: u64) -> i32;
    }
    const PR_SET_DUMPABLE: i32 = 4;
    // SAFETY: prctl(PR_SET_DUMPABLE, 0) touches only this process's flags.
    unsafe {
        prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_whole_or_in_pieces() {
        let run = Run {
            argv: vec!["/bin/sh".into(), "-c".into(), "echo hi".into()],
            env: vec!["A=1".into(), "B=two words".into()],
            dir: Some("/tmp".into()),
        };
        let mut wire = encode(RUN, 7, &run.encode());
        wire.extend(encode(EXIT, 7, &3i32.to_be_bytes()));
        // Fed one byte at a time, nothing decodes early and both frames come out.
        let mut buf = Vec::new();
        let mut frames = Vec::new();
        for b in wire {
            buf.push(b);
            while let Some(f) = decode(&mut buf).expect("valid") {
                frames.push(f);
            }
        }
        assert_eq!(frames.len(), 2);
        assert_eq!((frames[0].kind, frames[0].id), (RUN, 7));
        assert_eq!(Run::decode(&frames[0].payload).expect("run"), run);
        assert_eq!(frames[1].payload, 3i32.to_be_bytes());
        assert!(buf.is_empty());
    }

    #[test]
    fn garbage_is_refused_not_trusted() {
        let mut unknown = vec![0xff; 20];
        assert!(decode(&mut unknown).is_err());
        let mut huge = encode(STDOUT, 1, b"");
        huge[5..9].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(decode(&mut huge).is_err());
        // A list count larger than the frame could hold, an empty command, cut strings.
        let mut lying = Vec::new();
        lying.extend_from_slice(&u32::MAX.to_be_bytes());
        assert!(Run::decode(&lying).is_err());
        assert!(Run::decode(&Run::default().encode()).is_err());
        let good = Run {
            argv: vec!["true".into()],
            ..Default::default()
        }
        .encode();
        for cut in 0..good.len() {
            assert!(Run::decode(&good[..cut]).is_err(), "cut at {cut}");
        }
    }
}

//! The agent's on-disk spool: everything a job reports is written here before it is sent,
//! so that neither an agent restart nor a coordinator outage loses a byte.
//!
//! One directory per job under the spool directory:
//! - `log`: the masked log, append-only;
//! - `events.jsonl`: one `{"seq":N,"event":{…}}` per line, `seq` from 0;
//! - `state.json`: what the coordinator acknowledged (log offset, next event seq) and the
//!   final [`FinishRequest`] once known; replaced atomically (write, fsync, rename).
//!
//! The sender deletes the directory only when the coordinator acknowledged the finish. On
//! start the agent [`scan`]s the directory and resumes every job left in it.
//!
//! What is fsync'd, and why no more: a write lands in the page cache, which outlives the
//! agent's process, so a crash or restart of the agent loses nothing. Only a crash of the
//! host could, and that also kills the job's container, so the job is lost either way and
//! runs again (its lease lapses). So the log and events are fsync'd once, by
//! [`SpoolJob::finish`], before the finish record is written: a *finished* job's report
//! survives even a power cut, and is delivered after the reboot. Acknowledgements are
//! written without fsync: losing one only makes the sender resend bytes the coordinator
//! skips by offset. (fsync per send round cost the log stream half its throughput.)

use crate::protocol::{FinishRequest, JobEvent};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct SpoolState {
    pub job_id: String,
    /// The attempt this spool reports (0 in spools written before attempts were recorded).
    #[serde(default)]
    pub attempt: u32,
    /// The coordinator has the log up to here.
    pub acked_log: u64,
    /// The coordinator has events `0..acked_events`.
    pub acked_events: u64,
    #[serde(default)]
    pub finish: Option<FinishRequest>,
}

#[derive(Serialize, Deserialize)]
struct EventLine {
    seq: u64,
    event: JobEvent,
}

struct Inner {
    log: File,
    log_len: u64,
    /// SHA-256 of `log[..hashed]`. Hashing happens as the sender reads the log in order (and
    /// for the rest at the finish), not as the step writes it: the step's output path stays
    /// as short as it can be.
    sha: Sha256,
    hashed: u64,
    events: File,
    next_seq: u64,
    state: SpoolState,
}

pub struct SpoolJob {
    dir: PathBuf,
    inner: Mutex<Inner>,
    /// Woken when there is something new to send.
    pub notify: tokio::sync::Notify,
}

/// A job id as a directory name: safe characters kept, others hex-escaped.
fn dir_name(job_id: &str) -> String {
    job_id
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
                (b as char).to_string()
            } else {
                format!("%{b:02x}")
            }
        })
        .collect()
}

fn io_ctx(path: &Path, e: std::io::Error) -> std::io::Error {
    std::io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

impl SpoolJob {
    /// A new, empty spool for attempt `attempt` of `job_id` (an existing one is resumed
    /// instead). Each attempt has its own directory: a job re-queued after a lapsed lease and
    /// claimed again never mixes with what an earlier attempt left behind.
    pub fn create(spool_dir: &Path, job_id: &str, attempt: u32) -> std::io::Result<SpoolJob> {
        let dir = spool_dir.join(format!("{}.{attempt}", dir_name(job_id)));
        if dir.join("state.json").exists() {
            return SpoolJob::open(&dir);
        }
        std::fs::create_dir_all(&dir).map_err(|e| io_ctx(&dir, e))?;
        let state = SpoolState {
            job_id: job_id.to_owned(),
            attempt,
            ..SpoolState::default()
        };
        write_state(&dir, &state, true)?;
        if let Ok(d) = File::open(spool_dir) {
            let _ = d.sync_all();
        }
        SpoolJob::open(&dir)
    }

    /// Reopen a job's spool after a restart: the digest is recomputed from the log file, a
    /// torn last event line is dropped.
    pub fn open(dir: &Path) -> std::io::Result<SpoolJob> {
        let text = std::fs::read_to_string(dir.join("state.json"))
            .map_err(|e| io_ctx(&dir.join("state.json"), e))?;
        let state: SpoolState = serde_json::from_str(&text)
            .map_err(|e| std::io::Error::other(format!("{}: {e}", dir.display())))?;
        let log_path = dir.join("log");
        let mut log = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| io_ctx(&log_path, e))?;
        let mut sha = Sha256::new();
        let mut log_len = 0u64;
        log.seek(SeekFrom::Start(0))?;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = log.read(&mut buf)?;
            if n == 0 {
                break;
            }
            sha.update(&buf[..n]);
            log_len += n as u64;
        }
        let ev_path = dir.join("events.jsonl");
        let mut good = Vec::new();
        if let Ok(f) = File::open(&ev_path) {
            for line in BufReader::new(f).split(b'\n') {
                let line = line?;
                match serde_json::from_slice::<EventLine>(&line) {
                    Ok(e) if e.seq == good.len() as u64 => good.push(line),
                    _ => break,
                }
            }
        }
        // Rewrite the events file with only whole, well-numbered lines.
        let mut text = Vec::new();
        for l in &good {
            text.extend_from_slice(l);
            text.push(b'\n');
        }
        let tmp = dir.join("events.jsonl.tmp");
        std::fs::write(&tmp, &text).map_err(|e| io_ctx(&tmp, e))?;
        std::fs::rename(&tmp, &ev_path).map_err(|e| io_ctx(&ev_path, e))?;
        let events = OpenOptions::new()
            .append(true)
            .open(&ev_path)
            .map_err(|e| io_ctx(&ev_path, e))?;
        Ok(SpoolJob {
            dir: dir.to_owned(),
            inner: Mutex::new(Inner {
                log,
                log_len,
                sha,
                hashed: log_len,
                events,
                next_seq: good.len() as u64,
                state,
            }),
            notify: tokio::sync::Notify::new(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        match self.inner.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn job_id(&self) -> String {
        self.lock().state.job_id.clone()
    }

    /// Append masked log bytes; returns the log length after them.
    pub fn append_log(&self, data: &[u8]) -> std::io::Result<u64> {
        let mut g = self.lock();
        if !data.is_empty() {
            g.log.write_all(data)?;
            g.log_len += data.len() as u64;
        }
        let len = g.log_len;
        drop(g);
        self.notify.notify_one();
        Ok(len)
    }

    pub fn log_len(&self) -> u64 {
        self.lock().log_len
    }

    /// Append an event; returns its sequence number.
    pub fn append_event(&self, event: JobEvent) -> std::io::Result<u64> {
        let mut g = self.lock();
        let seq = g.next_seq;
        let mut line =
            serde_json::to_vec(&EventLine { seq, event }).map_err(std::io::Error::other)?;
        line.push(b'\n');
        g.events.write_all(&line)?;
        g.next_seq += 1;
        drop(g);
        self.notify.notify_one();
        Ok(seq)
    }

    pub fn next_seq(&self) -> u64 {
        self.lock().next_seq
    }

    /// Hex SHA-256 of the whole log so far.
    pub fn log_sha256(&self) -> std::io::Result<String> {
        let mut g = self.lock();
        hash_rest(&self.dir, &mut g)?;
        Ok(hex(&g.sha.clone().finalize()))
    }

    /// Record the job's end: `log_bytes` and `log_sha256` are filled in from the spool.
    pub fn finish(
        &self,
        status: crate::protocol::FinalStatus,
        error: Option<String>,
    ) -> std::io::Result<FinishRequest> {
        let mut g = self.lock();
        g.log.sync_data()?;
        g.events.sync_data()?;
        hash_rest(&self.dir, &mut g)?;
        let req = FinishRequest {
            status,
            log_bytes: g.log_len,
            log_sha256: hex(&g.sha.clone().finalize()),
            error,
        };
        g.state.finish = Some(req.clone());
        write_state(&self.dir, &g.state, true)?;
        drop(g);
        self.notify.notify_one();
        Ok(req)
    }

    pub fn finished(&self) -> Option<FinishRequest> {
        self.lock().state.finish.clone()
    }

    pub fn state(&self) -> SpoolState {
        self.lock().state.clone()
    }

    /// Log bytes written but not yet acknowledged by the coordinator.
    pub fn unsent_log(&self) -> u64 {
        let g = self.lock();
        g.log_len.saturating_sub(g.state.acked_log)
    }

    /// Up to `max` log bytes from `offset`.
    pub fn read_log(&self, offset: u64, max: usize) -> std::io::Result<Vec<u8>> {
        let len = self.log_len();
        let n = usize::try_from(len.saturating_sub(offset))
            .unwrap_or(max)
            .min(max);
        let mut f = File::open(self.dir.join("log"))?;
        f.seek(SeekFrom::Start(offset))?;
        let mut buf = vec![0u8; n];
        f.read_exact(&mut buf)?;
        let mut g = self.lock();
        let end = offset + n as u64;
        if offset <= g.hashed && g.hashed < end {
            let from = (g.hashed - offset) as usize;
            g.sha.update(&buf[from..]);
            g.hashed = end;
        }
        Ok(buf)
    }

    /// Events from `from_seq` on (at most `max`).
    pub fn read_events(&self, from_seq: u64, max: usize) -> std::io::Result<Vec<JobEvent>> {
        let f = File::open(self.dir.join("events.jsonl"))?;
        let mut out = Vec::new();
        for line in BufReader::new(f).split(b'\n') {
            let line = line?;
            if let Ok(e) = serde_json::from_slice::<EventLine>(&line) {
                if e.seq >= from_seq {
                    out.push(e.event);
                    if out.len() >= max {
                        break;
                    }
                }
            }
        }
        Ok(out)
    }

    pub fn ack_log(&self, offset: u64) -> std::io::Result<()> {
        let mut g = self.lock();
        if g.state.acked_log != offset {
            g.state.acked_log = offset;
            write_state(&self.dir, &g.state, false)?;
        }
        Ok(())
    }

    pub fn ack_events(&self, next_seq: u64) -> std::io::Result<()> {
        let mut g = self.lock();
        if g.state.acked_events != next_seq {
            g.state.acked_events = next_seq;
            write_state(&self.dir, &g.state, false)?;
        }
        Ok(())
    }

    /// The coordinator has everything: forget the job.
    pub fn remove(&self) -> std::io::Result<()> {
        std::fs::remove_dir_all(&self.dir)
    }
}

/// Replace `state.json` atomically (write, rename); `durable` fsyncs the new file first.
/// Hash `log[hashed..log_len]` from the file (what the sender has not read yet).
fn hash_rest(dir: &Path, g: &mut Inner) -> std::io::Result<()> {
    if g.hashed >= g.log_len {
        return Ok(());
    }
    let path = dir.join("log");
    let mut f = File::open(&path).map_err(|e| io_ctx(&path, e))?;
    f.seek(SeekFrom::Start(g.hashed))?;
    let mut r = f.take(g.log_len - g.hashed);
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let k = r.read(&mut buf)?;
        if k == 0 {
            break;
        }
        g.sha.update(&buf[..k]);
        g.hashed += k as u64;
    }
    if g.hashed != g.log_len {
        return Err(std::io::Error::other(format!(
            "{}: {} bytes, expected {}",
            path.display(),
            g.hashed,
            g.log_len
        )));
    }
    Ok(())
}

fn write_state(dir: &Path, state: &SpoolState, durable: bool) -> std::io::Result<()> {
    let tmp = dir.join("state.json.tmp");
    let text = serde_json::to_vec_pretty(state).map_err(std::io::Error::other)?;
    let mut f = File::create(&tmp).map_err(|e| io_ctx(&tmp, e))?;
    f.write_all(&text)?;
    if durable {
        f.sync_all()?;
    }
    std::fs::rename(&tmp, dir.join("state.json"))?;
    Ok(())
}

/// Every job directory in the spool (jobs whose finish the coordinator never acknowledged).
pub fn scan(spool_dir: &Path) -> std::io::Result<Vec<SpoolJob>> {
    let mut out = Vec::new();
    let rd = match std::fs::read_dir(spool_dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(io_ctx(spool_dir, e)),
    };
    for entry in rd {
        let path = entry?.path();
        if path.join("state.json").exists() {
            match SpoolJob::open(&path) {
                Ok(j) => out.push(j),
                Err(e) => tracing::error!("spool {}: {e}; skipped", path.display()),
            }
        }
    }
    Ok(out)
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::FinalStatus;

    fn ev(step: u32, off: u64) -> JobEvent {
        JobEvent::StepStarted {
            step,
            name: format!("s{step}"),
            log_offset: off,
            commit_sha: None,
        }
    }

    #[test]
    fn resumes_after_a_crash_and_resends_the_rest() {
        let root = tempfile::tempdir().expect("tmp");
        let mut sent = Vec::new();
        let whole: Vec<u8> = (0..5000u32)
            .flat_map(|i| format!("line {i}\n").into_bytes())
            .collect();
        {
            let j = SpoolJob::create(root.path(), "job/1", 1).expect("create");
            for (i, c) in whole.chunks(777).enumerate() {
                j.append_log(c).expect("log");
                j.append_event(ev(i as u32, j.log_len())).expect("event");
            }
            // "Send" and ack half, then crash (drop without finishing).
            let half = whole.len() as u64 / 2;
            sent.extend(j.read_log(0, half as usize).expect("read"));
            j.ack_log(half).expect("ack");
            j.ack_events(3).expect("ack");
            // A torn event line at the end, as a crash mid-write leaves it.
            let mut f = OpenOptions::new()
                .append(true)
                .open(j.dir().join("events.jsonl"))
                .expect("open");
            f.write_all(b"{\"seq\":99,\"ev").expect("write");
        }
        let jobs = scan(root.path()).expect("scan");
        assert_eq!(jobs.len(), 1);
        let j = &jobs[0];
        assert_eq!(j.job_id(), "job/1");
        let st = j.state();
        assert_eq!(st.acked_log, whole.len() as u64 / 2);
        assert_eq!(st.acked_events, 3);
        assert_eq!(j.next_seq(), whole.chunks(777).count() as u64);
        let rest = j.read_events(3, 1000).expect("events");
        assert_eq!(rest.len() as u64, j.next_seq() - 3);
        assert_eq!(rest[0], ev(3, 777 * 4));
        let mut off = st.acked_log;
        while off < j.log_len() {
            let c = j.read_log(off, 1000).expect("read");
            off += c.len() as u64;
            sent.extend(c);
        }
        assert_eq!(sent, whole);
        let fin = j.finish(FinalStatus::Success, None).expect("finish");
        assert_eq!(fin.log_bytes, whole.len() as u64);
        assert_eq!(fin.log_sha256, hex(&Sha256::digest(&whole)));
        // The finish survives another restart; removing forgets the job.
        drop(jobs);
        let jobs = scan(root.path()).expect("scan");
        assert_eq!(jobs[0].finished(), Some(fin));
        jobs[0].remove().expect("remove");
        assert!(scan(root.path()).expect("scan").is_empty());
    }

    #[test]
    fn the_digest_covers_every_byte_once_whatever_the_sender_read() {
        let root = tempfile::tempdir().expect("tmp");
        let j = SpoolJob::create(root.path(), "job/2", 1).expect("create");
        let whole: Vec<u8> = (0..3000u32).map(|i| (i % 251) as u8).collect();
        j.append_log(&whole[..1000]).expect("log");
        // In order, then a resend from a lower offset (a 409), then a gap the finish fills.
        assert_eq!(j.read_log(0, 600).expect("read"), &whole[..600]);
        assert_eq!(j.read_log(300, 700).expect("read"), &whole[300..1000]);
        j.append_log(&whole[1000..]).expect("log");
        assert_eq!(j.read_log(100, 50).expect("read"), &whole[100..150]);
        let fin = j.finish(FinalStatus::Success, None).expect("finish");
        assert_eq!(fin.log_bytes, 3000);
        assert_eq!(fin.log_sha256, hex(&Sha256::digest(&whole)));
        assert_eq!(j.log_sha256().expect("digest"), fin.log_sha256);
    }
}

//! The job's tar writer: every archive the agent builds (the setup files, a checkout, extra
//! keys) is written here, owned by the container user, with names relative to `/`.

use crate::executor::TarStream;
use bytes::Bytes;
use futures_util::StreamExt;
use std::path::{Path, PathBuf};

/// A small in-memory tar with fixed ownership (the container user's), absolute paths made
/// relative to `/`. Used for files that hold keys: wipe what `finish` returns.
pub struct TarBuilder {
    inner: tar::Builder<Vec<u8>>,
    uid: u64,
    gid: u64,
}

impl TarBuilder {
    pub fn new(uid: u64, gid: u64) -> Self {
        Self {
            inner: tar::Builder::new(Vec::new()),
            uid,
            gid,
        }
    }

    fn header(&self, kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_uid(self.uid);
        h.set_gid(self.gid);
        h.set_size(size);
        h.set_mtime(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
        );
        h
    }

    pub fn dir(&mut self, path: &str, mode: u32) {
        let h = self.header(tar::EntryType::Directory, mode, 0);
        let rel = path.trim_start_matches('/');
        let _ = self
            .inner
            .append_data(&mut h.clone(), rel, std::io::empty());
    }

    pub fn file(&mut self, path: &str, data: &[u8], mode: u32) {
        let h = self.header(tar::EntryType::Regular, mode, data.len() as u64);
        let rel = path.trim_start_matches('/');
        let _ = self.inner.append_data(&mut h.clone(), rel, data);
    }

    /// A symbolic link at `path` pointing at `target`.
    pub fn symlink(&mut self, path: &str, target: &str) {
        let mut h = self.header(tar::EntryType::Symlink, 0o777, 0);
        let rel = path.trim_start_matches('/');
        let _ = self.inner.append_link(&mut h, rel, target);
    }

    pub fn finish(self) -> std::io::Result<Vec<u8>> {
        self.inner.into_inner()
    }
}

/// A tar written on a blocking thread by `write`, streamed in 256 KiB pieces as it is made:
/// a large archive never sits in memory whole, and works against a remote engine. The
/// handle gives the bytes written, or `write`'s error.
pub(super) fn streamed<E, F>(write: F) -> (TarStream, tokio::task::JoinHandle<Result<u64, E>>)
where
    E: From<std::io::Error> + Send + 'static,
    F: FnOnce(&mut tar::Builder<ChannelWriter>) -> Result<(), E> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(8);
    let handle = tokio::task::spawn_blocking(move || {
        let mut b = tar::Builder::new(ChannelWriter::new(tx));
        write(&mut b)?;
        let mut w = b.into_inner()?;
        w.flush_chunk()?;
        Ok(w.total)
    });
    let stream =
        futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|b| (b, rx)) })
            .boxed();
    (stream, handle)
}

/// Stream a directory tree (a checkout, `.git` included) as a tar rooted at `dest` inside the
/// container, owned by the container user.
pub(super) fn tar_tree_stream(
    src: PathBuf,
    dest: String,
    uid: u64,
    gid: u64,
) -> (TarStream, tokio::task::JoinHandle<std::io::Result<u64>>) {
    streamed(move |b| {
        b.follow_symlinks(false);
        append_tree(b, &src, &src, dest.trim_start_matches('/'), uid, gid)
    })
}

const CHUNK: usize = 256 * 1024;

/// A `Write` (for blocking tar builders) that hands 256 KiB chunks to an async receiver.
pub(crate) struct ChannelWriter {
    tx: tokio::sync::mpsc::Sender<Bytes>,
    buf: Vec<u8>,
    total: u64,
}

impl ChannelWriter {
    pub(crate) fn new(tx: tokio::sync::mpsc::Sender<Bytes>) -> Self {
        Self {
            tx,
            buf: Vec::with_capacity(CHUNK),
            total: 0,
        }
    }

    pub(crate) fn flush_chunk(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        self.total += self.buf.len() as u64;
        let chunk = Bytes::from(std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK)));
        self.tx
            .blocking_send(chunk)
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "upload ended early"))
    }
}

impl std::io::Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK {
            self.flush_chunk()?;
        }
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn append_tree<W: std::io::Write>(
    b: &mut tar::Builder<W>,
    root: &Path,
    dir: &Path,
    dest: &str,
    uid: u64,
    gid: u64,
) -> std::io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let rel = dir.strip_prefix(root).unwrap_or(Path::new(""));
    let name = if rel.as_os_str().is_empty() {
        PathBuf::from(dest)
    } else {
        Path::new(dest).join(rel)
    };
    let meta = std::fs::symlink_metadata(dir)?;
    let mut h = tar::Header::new_gnu();
    h.set_metadata(&meta);
    h.set_uid(uid);
    h.set_gid(gid);
    h.set_mode(meta.mode() & 0o7777);
    b.append_data(&mut h, &name, std::io::empty())?;
    let mut entries: Vec<_> = std::fs::read_dir(dir)?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let path = entry.path();
        let meta = std::fs::symlink_metadata(&path)?;
        if meta.is_dir() {
            append_tree(b, root, &path, dest, uid, gid)?;
            continue;
        }
        let rel = path.strip_prefix(root).unwrap_or(&path);
        let name = Path::new(dest).join(rel);
        let mut h = tar::Header::new_gnu();
        h.set_metadata(&meta);
        h.set_uid(uid);
        h.set_gid(gid);
        if meta.file_type().is_symlink() {
            let target = std::fs::read_link(&path)?;
            h.set_size(0);
            b.append_link(&mut h, &name, &target)?;
        } else if meta.is_file() {
            let f = std::fs::File::open(&path)?;
            b.append_data(&mut h, &name, f)?;
        }
    }
    Ok(())
}

/// A finished in-memory archive as an upload stream.
pub(super) fn once_stream(bytes: &[u8]) -> TarStream {
    let bytes = Bytes::copy_from_slice(bytes);
    futures_util::stream::once(async move { bytes }).boxed()
}

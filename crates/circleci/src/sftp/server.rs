//! One request at a time: decode it, make the system call, encode the answer. Errors of the
//! call come back as the status OpenSSH's sftp-server gives for the same `errno`.

use super::names::{long_name, Names};
use super::wire::{self, Attrs, Fields, Malformed, Packet};
use super::SessionError;
use std::collections::HashMap;
use std::ffi::{c_char, c_int, c_long, CString, OsStr};
use std::fs::{self, File, OpenOptions, ReadDir};
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Files and directories a session may have open at once (OpenSSH's sftp-server: 512).
pub const MAX_HANDLES: usize = 512;
/// Entries per READDIR answer.
const READDIR_BATCH: usize = 100;

/// The extensions announced in VERSION, each with its version.
const EXTENSIONS: &[(&str, &str)] = &[
    ("posix-rename@openssh.com", "1"),
    ("hardlink@openssh.com", "1"),
    ("fsync@openssh.com", "1"),
    ("lsetstat@openssh.com", "1"),
    ("limits@openssh.com", "1"),
    ("expand-path@openssh.com", "1"),
    ("home-directory", "1"),
];

/// What to do after a packet.
#[derive(Debug)]
pub enum Reply {
    Send(Vec<u8>),
    /// The stream cannot go on (it did not begin with INIT, or began twice).
    End(SessionError),
}

enum Handle {
    File { file: File, append: bool },
    Dir { path: PathBuf, entries: ReadDir },
}

/// Why a request failed.
enum Fail {
    Malformed,
    Io(io::Error),
    Status(u32, &'static str),
}

impl From<Malformed> for Fail {
    fn from(_: Malformed) -> Self {
        Fail::Malformed
    }
}

impl From<io::Error> for Fail {
    fn from(e: io::Error) -> Self {
        Fail::Io(e)
    }
}

const NO_HANDLE: Fail = Fail::Status(wire::FX_FAILURE, "No such handle");
const UNSUPPORTED: Fail = Fail::Status(wire::FX_OP_UNSUPPORTED, "Operation unsupported");
const NO_SUCH_FILE: Fail = Fail::Status(wire::FX_NO_SUCH_FILE, "No such file");

/// One session's state: where relative paths start, and the open handles.
pub struct Server {
    home: PathBuf,
    names: Names,
    handles: HashMap<u32, Handle>,
    next_handle: u32,
    initialised: bool,
}

impl Server {
    /// `home`: where relative paths start (an absolute path).
    pub fn new(home: PathBuf, names: Names) -> Self {
        Server {
            home,
            names,
            handles: HashMap::new(),
            next_handle: 0,
            initialised: false,
        }
    }

    /// Answer one packet (its type byte and fields, without the length).
    pub fn handle(&mut self, packet: &[u8]) -> Reply {
        let mut f = Fields::new(packet);
        let Ok(kind) = f.u8() else {
            return Reply::End(SessionError::Empty);
        };
        if kind == wire::INIT {
            if self.initialised {
                return Reply::End(SessionError::Protocol("a second SSH_FXP_INIT"));
            }
            self.initialised = true;
            // Whatever version the client asks for, this server speaks 3 (so does OpenSSH).
            let mut p = Packet::new(wire::VERSION).u32(3);
            for (name, version) in EXTENSIONS {
                p = p.bytes(name.as_bytes()).bytes(version.as_bytes());
            }
            return Reply::Send(p.finish());
        }
        if !self.initialised {
            return Reply::End(SessionError::Protocol(
                "the session did not start with SSH_FXP_INIT",
            ));
        }
        let Ok(id) = f.u32() else {
            return Reply::Send(wire::status(0, wire::FX_BAD_MESSAGE, "Bad message"));
        };
        Reply::Send(match self.request(kind, id, &mut f) {
            Ok(reply) => reply,
            Err(Fail::Malformed) => wire::status(id, wire::FX_BAD_MESSAGE, "Bad message"),
            Err(Fail::Io(e)) => io_status(id, &e),
            Err(Fail::Status(code, message)) => wire::status(id, code, message),
        })
    }

    fn request(&mut self, kind: u8, id: u32, f: &mut Fields) -> Result<Vec<u8>, Fail> {
        match kind {
            wire::OPEN => {
                let path = self.path(f.bytes()?)?;
                let pflags = f.u32()?;
                let attrs = f.attrs()?;
                self.open(id, &path, pflags, attrs)
            }
            wire::CLOSE => {
                let h = handle_id(f.bytes()?)?;
                self.handles.remove(&h).ok_or(NO_HANDLE)?;
                Ok(ok(id))
            }
            wire::READ => {
                let h = handle_id(f.bytes()?)?;
                let offset = f.u64()?;
                let len = f.u32()?;
                self.read(id, h, offset, len)
            }
            wire::WRITE => {
                let h = handle_id(f.bytes()?)?;
                let offset = f.u64()?;
                let data = f.bytes()?;
                self.write(id, h, offset, data)
            }
            wire::LSTAT => {
                let path = self.path(f.bytes()?)?;
                Ok(attrs(id, &fs::symlink_metadata(path)?))
            }
            wire::STAT => {
                let path = self.path(f.bytes()?)?;
                Ok(attrs(id, &fs::metadata(path)?))
            }
            wire::FSTAT => {
                let h = handle_id(f.bytes()?)?;
                let m = match self.handles.get(&h).ok_or(NO_HANDLE)? {
                    Handle::File { file, .. } => file.metadata()?,
                    Handle::Dir { path, .. } => fs::metadata(path)?,
                };
                Ok(attrs(id, &m))
            }
            wire::SETSTAT => {
                let path = self.path(f.bytes()?)?;
                let a = f.attrs()?;
                set_path(&path, a, true)?;
                Ok(ok(id))
            }
            wire::FSETSTAT => {
                let h = handle_id(f.bytes()?)?;
                let a = f.attrs()?;
                match self.handles.get(&h).ok_or(NO_HANDLE)? {
                    Handle::File { file, .. } => set_file(file, a)?,
                    Handle::Dir { path, .. } => set_path(path, a, true)?,
                }
                Ok(ok(id))
            }
            wire::OPENDIR => {
                let path = self.path(f.bytes()?)?;
                let entries = fs::read_dir(&path)?;
                self.insert(id, Handle::Dir { path, entries })
            }
            wire::READDIR => {
                let h = handle_id(f.bytes()?)?;
                self.readdir(id, h)
            }
            wire::REMOVE => {
                fs::remove_file(self.path(f.bytes()?)?)?;
                Ok(ok(id))
            }
            wire::MKDIR => {
                let path = self.path(f.bytes()?)?;
                let a = f.attrs()?;
                fs::DirBuilder::new()
                    .mode(a.perm.map_or(0o777, |p| p & 0o7777))
                    .create(path)?;
                Ok(ok(id))
            }
            wire::RMDIR => {
                fs::remove_dir(self.path(f.bytes()?)?)?;
                Ok(ok(id))
            }
            wire::REALPATH => {
                let raw = f.bytes()?;
                let path = self.path(if raw.is_empty() { b"." } else { raw })?;
                Ok(name(id, &realpath(&path)?))
            }
            wire::RENAME => {
                let old = self.path(f.bytes()?)?;
                let new = self.path(f.bytes()?)?;
                rename_no_replace(&old, &new)?;
                Ok(ok(id))
            }
            wire::READLINK => {
                let target = fs::read_link(self.path(f.bytes()?)?)?;
                Ok(name(id, &target))
            }
            wire::SYMLINK => {
                // OpenSSH sends the target first and the link second (the draft says the
                // opposite; every client follows OpenSSH). The target is stored as given.
                let target = f.bytes()?;
                let link = self.path(f.bytes()?)?;
                if target.contains(&0) {
                    return Err(Fail::Malformed);
                }
                std::os::unix::fs::symlink(OsStr::from_bytes(target), link)?;
                Ok(ok(id))
            }
            wire::EXTENDED => {
                let name = f.bytes()?;
                self.extended(id, name, f)
            }
            _ => Err(UNSUPPORTED),
        }
    }

    fn extended(&mut self, id: u32, ext: &[u8], f: &mut Fields) -> Result<Vec<u8>, Fail> {
        match ext {
            b"posix-rename@openssh.com" => {
                let old = self.path(f.bytes()?)?;
                let new = self.path(f.bytes()?)?;
                fs::rename(old, new)?;
                Ok(ok(id))
            }
            b"hardlink@openssh.com" => {
                let old = self.path(f.bytes()?)?;
                let new = self.path(f.bytes()?)?;
                fs::hard_link(old, new)?;
                Ok(ok(id))
            }
            b"fsync@openssh.com" => {
                let h = handle_id(f.bytes()?)?;
                match self.handles.get(&h).ok_or(NO_HANDLE)? {
                    Handle::File { file, .. } => file.sync_all()?,
                    Handle::Dir { .. } => return Err(NO_HANDLE),
                }
                Ok(ok(id))
            }
            b"lsetstat@openssh.com" => {
                let path = self.path(f.bytes()?)?;
                let a = f.attrs()?;
                set_path(&path, a, false)?;
                Ok(ok(id))
            }
            b"limits@openssh.com" => Ok(Packet::new(wire::EXTENDED_REPLY)
                .u32(id)
                .u64(u64::from(wire::MAX_PACKET))
                .u64(u64::from(wire::MAX_DATA))
                .u64(u64::from(wire::MAX_DATA))
                .u64(MAX_HANDLES as u64)
                .finish()),
            b"expand-path@openssh.com" => {
                let path = self.expand(f.bytes()?)?;
                Ok(name(id, &realpath(&path)?))
            }
            b"home-directory" => {
                let user = f.bytes()?;
                let home = if user.is_empty() {
                    self.home.clone()
                } else {
                    self.names.home_of(user).ok_or(NO_SUCH_FILE)?
                };
                Ok(name(id, &home))
            }
            _ => Err(UNSUPPORTED),
        }
    }

    /// A path from the client: relative ones start at the home directory.
    fn path(&self, raw: &[u8]) -> Result<PathBuf, Fail> {
        if raw.is_empty() {
            return Err(NO_SUCH_FILE);
        }
        if raw.contains(&0) {
            return Err(Fail::Malformed);
        }
        let p = Path::new(OsStr::from_bytes(raw));
        Ok(if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.home.join(p)
        })
    }

    /// `~`, `~/x`, `~user/x` as a shell would expand them; anything else as [`Self::path`].
    fn expand(&self, raw: &[u8]) -> Result<PathBuf, Fail> {
        let Some(rest) = raw.strip_prefix(b"~") else {
            return self.path(if raw.is_empty() { b"." } else { raw });
        };
        let (user, rest) = match rest.iter().position(|b| *b == b'/') {
            Some(i) => (&rest[..i], &rest[i + 1..]),
            None => (rest, &b""[..]),
        };
        let home = if user.is_empty() {
            self.home.clone()
        } else {
            self.names.home_of(user).ok_or(NO_SUCH_FILE)?
        };
        if rest.contains(&0) {
            return Err(Fail::Malformed);
        }
        Ok(home.join(OsStr::from_bytes(rest)))
    }

    fn insert(&mut self, id: u32, handle: Handle) -> Result<Vec<u8>, Fail> {
        if self.handles.len() >= MAX_HANDLES {
            return Err(Fail::Status(wire::FX_FAILURE, "Too many open handles"));
        }
        while self.handles.contains_key(&self.next_handle) {
            self.next_handle = self.next_handle.wrapping_add(1);
        }
        let h = self.next_handle;
        self.next_handle = h.wrapping_add(1);
        self.handles.insert(h, handle);
        Ok(Packet::new(wire::HANDLE)
            .u32(id)
            .bytes(&h.to_be_bytes())
            .finish())
    }

    fn open(&mut self, id: u32, path: &Path, pflags: u32, a: Attrs) -> Result<Vec<u8>, Fail> {
        let write = pflags & wire::OPEN_WRITE != 0;
        let append = pflags & wire::OPEN_APPEND != 0;
        let mut o = OpenOptions::new();
        // Neither read nor write: read, as OpenSSH's sftp-server opens it.
        o.read(pflags & wire::OPEN_READ != 0 || !write && !append)
            .write(write)
            .append(append)
            .mode(a.perm.map_or(0o666, |p| p & 0o7777));
        if pflags & wire::OPEN_CREAT != 0 {
            if pflags & wire::OPEN_EXCL != 0 {
                o.create_new(true);
            } else {
                o.create(true);
            }
        }
        if pflags & wire::OPEN_TRUNC != 0 {
            o.truncate(true);
        }
        let file = o.open(path)?;
        self.insert(id, Handle::File { file, append })
    }

    fn read(&mut self, id: u32, h: u32, offset: u64, len: u32) -> Result<Vec<u8>, Fail> {
        let Some(Handle::File { file, .. }) = self.handles.get(&h) else {
            return Err(NO_HANDLE);
        };
        let max = len.min(wire::MAX_DATA) as usize;
        in_range(offset, max)?;
        let (p, n) = Packet::new(wire::DATA).u32(id).fill(max, |buf| loop {
            match file.read_at(buf, offset) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                r => return r,
            }
        })?;
        if n == 0 {
            return Ok(wire::status(id, wire::FX_EOF, "End of file"));
        }
        Ok(p.finish())
    }

    fn write(&mut self, id: u32, h: u32, offset: u64, data: &[u8]) -> Result<Vec<u8>, Fail> {
        let Some(Handle::File { file, append }) = self.handles.get(&h) else {
            return Err(NO_HANDLE);
        };
        if *append {
            (&*file).write_all(data)?;
        } else {
            in_range(offset, data.len())?;
            file.write_all_at(data, offset)?;
        }
        Ok(ok(id))
    }

    fn readdir(&mut self, id: u32, h: u32) -> Result<Vec<u8>, Fail> {
        let Server { handles, names, .. } = self;
        let Some(Handle::Dir { entries, .. }) = handles.get_mut(&h) else {
            return Err(NO_HANDLE);
        };
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        let mut found = Vec::new();
        while found.len() < READDIR_BATCH {
            match entries.next() {
                None => break,
                Some(Err(e)) if found.is_empty() => return Err(e.into()),
                Some(Err(_)) => break,
                Some(Ok(entry)) => {
                    // Gone since it was listed: left out, as `ls` would.
                    let Ok(m) = entry.metadata() else { continue };
                    let file_name = entry.file_name();
                    let long = long_name(names, file_name.as_bytes(), &m, now);
                    found.push((file_name, long, Attrs::of(&m)));
                }
            }
        }
        if found.is_empty() {
            return Ok(wire::status(id, wire::FX_EOF, "End of file"));
        }
        let mut p = Packet::new(wire::NAME).u32(id).u32(found.len() as u32);
        for (file_name, long, a) in &found {
            p = p.bytes(file_name.as_bytes()).bytes(long).attrs(a);
        }
        Ok(p.finish())
    }
}

fn handle_id(raw: &[u8]) -> Result<u32, Fail> {
    <[u8; 4]>::try_from(raw)
        .map(u32::from_be_bytes)
        .map_err(|_| NO_HANDLE)
}

/// Offsets the kernel takes (`off_t` is signed): past them, a clear failure rather than an
/// overflow.
fn in_range(offset: u64, len: usize) -> Result<(), Fail> {
    match offset.checked_add(len as u64) {
        Some(end) if end <= i64::MAX as u64 => Ok(()),
        _ => Err(Fail::Status(wire::FX_FAILURE, "Offset out of range")),
    }
}

fn ok(id: u32) -> Vec<u8> {
    wire::status(id, wire::FX_OK, "Success")
}

fn attrs(id: u32, m: &fs::Metadata) -> Vec<u8> {
    Packet::new(wire::ATTRS)
        .u32(id)
        .attrs(&Attrs::of(m))
        .finish()
}

/// A NAME answer with one path (REALPATH, READLINK and the like): no attributes.
fn name(id: u32, path: &Path) -> Vec<u8> {
    let b = path.as_os_str().as_bytes();
    Packet::new(wire::NAME)
        .u32(id)
        .u32(1)
        .bytes(b)
        .bytes(b)
        .attrs(&Attrs::default())
        .finish()
}

/// The status OpenSSH's sftp-server answers for the same `errno`.
fn io_status(id: u32, e: &io::Error) -> Vec<u8> {
    // Linux's numbers: ENOENT, EBADF, ENOTDIR, ELOOP; EPERM, EACCES, EFAULT; EINVAL,
    // ENAMETOOLONG; ENOSYS.
    let (code, message) = match e.raw_os_error() {
        Some(2 | 9 | 20 | 40) => (wire::FX_NO_SUCH_FILE, "No such file".to_owned()),
        Some(1 | 13 | 14) => (wire::FX_PERMISSION_DENIED, "Permission denied".to_owned()),
        Some(22 | 36) => (wire::FX_BAD_MESSAGE, "Bad message".to_owned()),
        Some(38) => (wire::FX_OP_UNSUPPORTED, "Operation unsupported".to_owned()),
        _ => {
            let text = e.to_string();
            let text = text.split(" (os error").next().unwrap_or_default();
            (wire::FX_FAILURE, text.to_owned())
        }
    };
    wire::status(id, code, &message)
}

/// As OpenSSH's realpath: every component must exist but the last.
fn realpath(p: &Path) -> io::Result<PathBuf> {
    match fs::canonicalize(p) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => match (p.parent(), p.file_name()) {
            (Some(parent), Some(last)) => Ok(fs::canonicalize(parent)?.join(last)),
            _ => Err(e),
        },
        r => r,
    }
}

/// SFTP's RENAME never replaces: a file is linked to its new name and unlinked from the old
/// (atomic where the file system has hard links); otherwise, or for a directory, renamed only
/// if nothing has the new name (as OpenSSH's sftp-server does).
fn rename_no_replace(old: &Path, new: &Path) -> io::Result<()> {
    if fs::symlink_metadata(old)?.is_file() {
        match fs::hard_link(old, new) {
            Ok(()) => {
                return fs::remove_file(old).inspect_err(|_| {
                    let _ = fs::remove_file(new);
                });
            }
            // EPERM (protected_hardlinks, a file of another user), EXDEV, EMLINK,
            // EOPNOTSUPP, ENOSYS: no link here; a rename may still be allowed.
            Err(e) if matches!(e.raw_os_error(), Some(1 | 18 | 31 | 95 | 38)) => {}
            Err(e) => return Err(e),
        }
    }
    if fs::symlink_metadata(new).is_ok() {
        return Err(io::Error::from_raw_os_error(17)); // EEXIST
    }
    fs::rename(old, new)
}

/// SETSTAT and `lsetstat` (`follow` false: the link itself): size, mode, times, owner, in
/// OpenSSH's order.
fn set_path(path: &Path, a: Attrs, follow: bool) -> Result<(), Fail> {
    if let Some(size) = a.size {
        if !follow {
            return Err(UNSUPPORTED);
        }
        OpenOptions::new().write(true).open(path)?.set_len(size)?;
    }
    if let Some(perm) = a.perm {
        if !follow && fs::symlink_metadata(path)?.file_type().is_symlink() {
            // Linux keeps no mode on a symlink.
            return Err(UNSUPPORTED);
        }
        fs::set_permissions(path, fs::Permissions::from_mode(perm & 0o7777))?;
    }
    if let Some((atime, mtime)) = a.times {
        utimens(path, atime, mtime, follow)?;
    }
    if let Some((uid, gid)) = a.uid_gid {
        if follow {
            std::os::unix::fs::chown(path, Some(uid), Some(gid))?;
        } else {
            std::os::unix::fs::lchown(path, Some(uid), Some(gid))?;
        }
    }
    Ok(())
}

/// FSETSTAT on an open file.
fn set_file(file: &File, a: Attrs) -> Result<(), Fail> {
    if let Some(size) = a.size {
        file.set_len(size)?;
    }
    if let Some(perm) = a.perm {
        file.set_permissions(fs::Permissions::from_mode(perm & 0o7777))?;
    }
    if let Some((atime, mtime)) = a.times {
        let at = UNIX_EPOCH + Duration::from_secs(u64::from(atime));
        let mt = UNIX_EPOCH + Duration::from_secs(u64::from(mtime));
        file.set_times(fs::FileTimes::new().set_accessed(at).set_modified(mt))?;
    }
    if let Some((uid, gid)) = a.uid_gid {
        std::os::unix::fs::fchown(file, Some(uid), Some(gid))?;
    }
    Ok(())
}

/// `utimensat(2)` on a path: std sets times only through an open file, and opening needs a
/// permission that setting times (the owner's right) does not.
fn utimens(path: &Path, atime: u32, mtime: u32, follow: bool) -> io::Result<()> {
    #[repr(C)]
    struct Timespec {
        sec: c_long,
        nsec: c_long,
    }
    extern "C" {
        fn utimensat(
            dirfd: c_int,
            path: *const c_char,
            times: *const Timespec,
            flags: c_int,
        ) -> c_int;
    }
    const AT_FDCWD: c_int = -100;
    const AT_SYMLINK_NOFOLLOW: c_int = 0x100;
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let times = [
        Timespec {
            sec: atime as c_long,
            nsec: 0,
        },
        Timespec {
            sec: mtime as c_long,
            nsec: 0,
        },
    ];
    let flags = if follow { 0 } else { AT_SYMLINK_NOFOLLOW };
    // SAFETY: a NUL-terminated path and two timespecs, both alive for the call.
    let rc = unsafe { utimensat(AT_FDCWD, c.as_ptr(), times.as_ptr(), flags) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

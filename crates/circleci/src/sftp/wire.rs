//! SFTP version 3's packets (draft-ietf-secsh-filexfer-02, with OpenSSH's extensions as its
//! `PROTOCOL` file describes them): every field read checks what is left, so a packet that
//! ends early or names a length past its end is [`Malformed`], never a panic or an allocation
//! of the size it claims.

pub const INIT: u8 = 1;
pub const VERSION: u8 = 2;
pub const OPEN: u8 = 3;
pub const CLOSE: u8 = 4;
pub const READ: u8 = 5;
pub const WRITE: u8 = 6;
pub const LSTAT: u8 = 7;
pub const FSTAT: u8 = 8;
pub const SETSTAT: u8 = 9;
pub const FSETSTAT: u8 = 10;
pub const OPENDIR: u8 = 11;
pub const READDIR: u8 = 12;
pub const REMOVE: u8 = 13;
pub const MKDIR: u8 = 14;
pub const RMDIR: u8 = 15;
pub const REALPATH: u8 = 16;
pub const STAT: u8 = 17;
pub const RENAME: u8 = 18;
pub const READLINK: u8 = 19;
pub const SYMLINK: u8 = 20;
pub const STATUS: u8 = 101;
pub const HANDLE: u8 = 102;
pub const DATA: u8 = 103;
pub const NAME: u8 = 104;
pub const ATTRS: u8 = 105;
pub const EXTENDED: u8 = 200;
pub const EXTENDED_REPLY: u8 = 201;

pub const FX_OK: u32 = 0;
pub const FX_EOF: u32 = 1;
pub const FX_NO_SUCH_FILE: u32 = 2;
pub const FX_PERMISSION_DENIED: u32 = 3;
pub const FX_FAILURE: u32 = 4;
pub const FX_BAD_MESSAGE: u32 = 5;
pub const FX_OP_UNSUPPORTED: u32 = 8;

/// `SSH_FXF_*`: how OPEN opens.
pub const OPEN_READ: u32 = 0x01;
pub const OPEN_WRITE: u32 = 0x02;
pub const OPEN_APPEND: u32 = 0x04;
pub const OPEN_CREAT: u32 = 0x08;
pub const OPEN_TRUNC: u32 = 0x10;
pub const OPEN_EXCL: u32 = 0x20;

const ATTR_SIZE: u32 = 0x01;
const ATTR_UIDGID: u32 = 0x02;
const ATTR_PERMISSIONS: u32 = 0x04;
const ATTR_ACMODTIME: u32 = 0x08;
const ATTR_EXTENDED: u32 = 0x8000_0000;

/// The longest packet taken (its length field's value; OpenSSH's sftp-server takes the same):
/// a longer one ends the session, as the stream can no longer be trusted.
pub const MAX_PACKET: u32 = 256 * 1024;
/// The most data a READ answers with or a WRITE should carry (what `limits@openssh.com`
/// announces), leaving room for the fields around it.
pub const MAX_DATA: u32 = MAX_PACKET - 1024;

/// A packet shorter than its fields say, or a field that makes no sense.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Malformed;

/// A file's attributes as SFTP carries them; `None`: not sent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Attrs {
    pub size: Option<u64>,
    pub uid_gid: Option<(u32, u32)>,
    /// Type and mode bits (`st_mode`).
    pub perm: Option<u32>,
    /// Access and modification times, seconds since the epoch.
    pub times: Option<(u32, u32)>,
}

impl Attrs {
    pub fn of(m: &std::fs::Metadata) -> Self {
        use std::os::unix::fs::MetadataExt;
        // SFTP v3 has 32-bit ids and times: larger values are cut as OpenSSH cuts them.
        Attrs {
            size: Some(m.size()),
            uid_gid: Some((m.uid(), m.gid())),
            perm: Some(m.mode()),
            times: Some((m.atime() as u32, m.mtime() as u32)),
        }
    }
}

/// Reads a packet's fields in order.
pub struct Fields<'a> {
    buf: &'a [u8],
}

impl<'a> Fields<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Fields { buf }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], Malformed> {
        if n > self.buf.len() {
            return Err(Malformed);
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    pub fn u8(&mut self) -> Result<u8, Malformed> {
        Ok(self.take(1)?[0])
    }

    pub fn u32(&mut self) -> Result<u32, Malformed> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub fn u64(&mut self) -> Result<u64, Malformed> {
        let hi = u64::from(self.u32()?);
        let lo = u64::from(self.u32()?);
        Ok(hi << 32 | lo)
    }

    /// A `string`: a length, then that many bytes.
    pub fn bytes(&mut self) -> Result<&'a [u8], Malformed> {
        let n = self.u32()?;
        self.take(usize::try_from(n).map_err(|_| Malformed)?)
    }

    pub fn attrs(&mut self) -> Result<Attrs, Malformed> {
        let flags = self.u32()?;
        let mut a = Attrs::default();
        if flags & ATTR_SIZE != 0 {
            a.size = Some(self.u64()?);
        }
        if flags & ATTR_UIDGID != 0 {
            a.uid_gid = Some((self.u32()?, self.u32()?));
        }
        if flags & ATTR_PERMISSIONS != 0 {
            a.perm = Some(self.u32()?);
        }
        if flags & ATTR_ACMODTIME != 0 {
            a.times = Some((self.u32()?, self.u32()?));
        }
        if flags & ATTR_EXTENDED != 0 {
            // Read past and ignored; each pair takes at least 8 bytes, so a huge count
            // runs out of packet at once.
            let count = self.u32()?;
            for _ in 0..count {
                self.bytes()?;
                self.bytes()?;
            }
        }
        Ok(a)
    }
}

/// A reply being written: its length is filled in by [`Packet::finish`].
pub struct Packet(Vec<u8>);

impl Packet {
    pub fn new(kind: u8) -> Self {
        Packet(vec![0, 0, 0, 0, kind])
    }

    pub fn u32(mut self, v: u32) -> Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }

    pub fn u64(mut self, v: u64) -> Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }

    pub fn bytes(self, b: &[u8]) -> Self {
        let mut p = self.u32(b.len() as u32);
        p.0.extend_from_slice(b);
        p
    }

    pub fn attrs(self, a: &Attrs) -> Self {
        let mut flags = 0;
        if a.size.is_some() {
            flags |= ATTR_SIZE;
        }
        if a.uid_gid.is_some() {
            flags |= ATTR_UIDGID;
        }
        if a.perm.is_some() {
            flags |= ATTR_PERMISSIONS;
        }
        if a.times.is_some() {
            flags |= ATTR_ACMODTIME;
        }
        let mut p = self.u32(flags);
        if let Some(s) = a.size {
            p = p.u64(s);
        }
        if let Some((u, g)) = a.uid_gid {
            p = p.u32(u).u32(g);
        }
        if let Some(m) = a.perm {
            p = p.u32(m);
        }
        if let Some((at, mt)) = a.times {
            p = p.u32(at).u32(mt);
        }
        p
    }

    /// A `string` of up to `max` bytes that `fill` writes in place (a READ's data, read
    /// straight into the reply); `fill` returns how many it wrote.
    pub fn fill<E>(
        mut self,
        max: usize,
        fill: impl FnOnce(&mut [u8]) -> Result<usize, E>,
    ) -> Result<(Self, usize), E> {
        let at = self.0.len();
        self.0.resize(at + 4 + max, 0);
        let n = fill(&mut self.0[at + 4..])?.min(max);
        self.0.truncate(at + 4 + n);
        self.0[at..at + 4].copy_from_slice(&(n as u32).to_be_bytes());
        Ok((self, n))
    }

    pub fn finish(mut self) -> Vec<u8> {
        let len = (self.0.len() - 4) as u32;
        self.0[..4].copy_from_slice(&len.to_be_bytes());
        self.0
    }
}

/// A STATUS reply.
pub fn status(id: u32, code: u32, message: &str) -> Vec<u8> {
    Packet::new(STATUS)
        .u32(id)
        .u32(code)
        .bytes(message.as_bytes())
        .bytes(b"en")
        .finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_past_the_end_are_malformed_and_nothing_is_allocated_for_them() {
        // A string claiming 4 GiB in an 8-byte packet.
        let mut f = Fields::new(&[0xff, 0xff, 0xff, 0xff, 1, 2, 3, 4]);
        assert_eq!(f.bytes(), Err(Malformed));
        let mut f = Fields::new(&[0, 0, 0]);
        assert_eq!(f.u32(), Err(Malformed));
        // Extended attributes counting 4 billion pairs.
        let mut f = Fields::new(&[0x80, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0]);
        assert_eq!(f.attrs(), Err(Malformed));
    }

    #[test]
    fn attrs_round_trip() {
        let a = Attrs {
            size: Some(1 << 40),
            uid_gid: Some((3434, 3434)),
            perm: Some(0o100644),
            times: Some((1, 2)),
        };
        let p = Packet::new(ATTRS).attrs(&a).finish();
        assert_eq!(p[..4], ((p.len() - 4) as u32).to_be_bytes());
        let mut f = Fields::new(&p[5..]);
        assert_eq!(f.attrs(), Ok(a));
        let none = Packet::new(ATTRS).attrs(&Attrs::default()).finish();
        assert_eq!(Fields::new(&none[5..]).attrs(), Ok(Attrs::default()));
    }
}

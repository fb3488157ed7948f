//! The server against packets written here, in a temporary home: what OpenSSH's clients send,
//! and what an attacker might.

use super::names::Names;
use super::server::{Server, MAX_HANDLES};
use super::wire::{self, Attrs, Fields, Packet};
use super::{serve, SessionError};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

fn init() -> Vec<u8> {
    Packet::new(wire::INIT).u32(3).finish()
}

fn req(kind: u8, id: u32, build: impl FnOnce(Packet) -> Packet) -> Vec<u8> {
    build(Packet::new(kind).u32(id)).finish()
}

fn path_req(kind: u8, id: u32, path: &str) -> Vec<u8> {
    req(kind, id, |p| p.bytes(path.as_bytes()))
}

/// A reply: its type and body (after the type byte).
#[derive(Debug)]
struct Reply {
    kind: u8,
    body: Vec<u8>,
}

impl Reply {
    fn fields(&self) -> Fields<'_> {
        Fields::new(&self.body)
    }

    fn id(&self) -> u32 {
        self.fields().u32().expect("id")
    }

    /// (code, message) of a STATUS.
    fn status(&self) -> (u32, String) {
        assert_eq!(self.kind, wire::STATUS, "{self:?}");
        let mut f = self.fields();
        f.u32().expect("id");
        let code = f.u32().expect("code");
        let message = String::from_utf8_lossy(f.bytes().expect("message")).into_owned();
        (code, message)
    }

    fn handle(&self) -> Vec<u8> {
        assert_eq!(self.kind, wire::HANDLE, "{self:?}");
        let mut f = self.fields();
        f.u32().expect("id");
        f.bytes().expect("handle").to_vec()
    }

    fn data(&self) -> Vec<u8> {
        assert_eq!(self.kind, wire::DATA, "{self:?}");
        let mut f = self.fields();
        f.u32().expect("id");
        f.bytes().expect("data").to_vec()
    }

    fn attrs(&self) -> Attrs {
        assert_eq!(self.kind, wire::ATTRS, "{self:?}");
        let mut f = self.fields();
        f.u32().expect("id");
        f.attrs().expect("attrs")
    }

    /// NAME's (name, long name) pairs.
    fn names(&self) -> Vec<(String, String)> {
        assert_eq!(self.kind, wire::NAME, "{self:?}");
        let mut f = self.fields();
        f.u32().expect("id");
        let n = f.u32().expect("count");
        (0..n)
            .map(|_| {
                let name = String::from_utf8_lossy(f.bytes().expect("name")).into_owned();
                let long = String::from_utf8_lossy(f.bytes().expect("long")).into_owned();
                f.attrs().expect("attrs");
                (name, long)
            })
            .collect()
    }
}

/// Serve `packets` (INIT first unless `raw`) with `home` as the home; the replies.
fn session(home: &Path, packets: &[Vec<u8>]) -> (Result<(), SessionError>, Vec<Reply>) {
    let input: Vec<u8> = packets.concat();
    let mut output = Vec::new();
    let server = Server::new(home.to_path_buf(), Names::default());
    let result = serve(&input[..], &mut output, server);
    let mut replies = Vec::new();
    let mut rest = &output[..];
    while !rest.is_empty() {
        let len = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        replies.push(Reply {
            kind: rest[4],
            body: rest[5..4 + len].to_vec(),
        });
        rest = &rest[4 + len..];
    }
    (result, replies)
}

/// One request after INIT; its reply.
fn one(home: &Path, packet: Vec<u8>) -> Reply {
    let (r, mut replies) = session(home, &[init(), packet]);
    r.expect("session");
    assert_eq!(replies.len(), 2);
    replies.remove(1)
}

fn open(path: &str, id: u32, pflags: u32, perm: Option<u32>) -> Vec<u8> {
    req(wire::OPEN, id, |p| {
        p.bytes(path.as_bytes()).u32(pflags).attrs(&Attrs {
            perm,
            ..Attrs::default()
        })
    })
}

const CREATE: u32 = wire::OPEN_WRITE | wire::OPEN_CREAT | wire::OPEN_TRUNC;

#[test]
fn version_three_with_the_extensions_openssh_clients_use() {
    let home = tempfile::tempdir().expect("tempdir");
    let (r, replies) = session(home.path(), &[Packet::new(wire::INIT).u32(6).finish()]);
    r.expect("session");
    assert_eq!(replies[0].kind, wire::VERSION);
    let mut f = replies[0].fields();
    assert_eq!(f.u32(), Ok(3));
    let mut names = Vec::new();
    while let Ok(name) = f.bytes() {
        names.push(String::from_utf8_lossy(name).into_owned());
        f.bytes().expect("version");
    }
    for ext in [
        "limits@openssh.com",
        "expand-path@openssh.com",
        "posix-rename@openssh.com",
        "fsync@openssh.com",
    ] {
        assert!(names.iter().any(|n| n == ext), "{ext} not in {names:?}");
    }
    let limits = one(
        home.path(),
        req(wire::EXTENDED, 9, |p| p.bytes(b"limits@openssh.com")),
    );
    assert_eq!(limits.kind, wire::EXTENDED_REPLY);
    let mut f = limits.fields();
    assert_eq!(f.u32(), Ok(9));
    assert_eq!(f.u64(), Ok(u64::from(wire::MAX_PACKET)));
    assert_eq!(f.u64(), Ok(u64::from(wire::MAX_DATA)));
}

#[test]
fn files_are_written_and_read_back_at_their_offsets_relative_to_home() {
    let home = tempfile::tempdir().expect("tempdir");
    let (r, replies) = session(
        home.path(),
        &[init(), open("a.txt", 1, CREATE, Some(0o640))],
    );
    r.expect("session");
    let h = replies[1].handle();
    // Handles are numbered on: the next open gets the next one.
    let h2 = 1u32.to_be_bytes();
    let write = |id, offset: u64, data: &[u8]| {
        req(wire::WRITE, id, |p| p.bytes(&h).u64(offset).bytes(data))
    };
    let (r, replies) = session(
        home.path(),
        &[
            init(),
            open("a.txt", 1, CREATE, Some(0o640)),
            write(2, 6, b"world"),
            write(3, 0, b"hello "),
            req(wire::CLOSE, 4, |p| p.bytes(&h)),
            open("a.txt", 5, wire::OPEN_READ, None),
            req(wire::READ, 6, |p| p.bytes(&h2).u64(0).u32(u32::MAX)),
            req(wire::READ, 7, |p| p.bytes(&h2).u64(6).u32(3)),
            req(wire::READ, 8, |p| p.bytes(&h2).u64(11).u32(10)),
            path_req(wire::STAT, 9, "a.txt"),
            req(wire::CLOSE, 10, |p| p.bytes(&h2)),
            req(wire::CLOSE, 11, |p| p.bytes(&h2)),
        ],
    );
    r.expect("session");
    assert_eq!(replies[2].status().0, wire::FX_OK);
    assert_eq!(replies[3].status().0, wire::FX_OK);
    assert_eq!(replies[5].handle(), h2);
    assert_eq!(replies[6].data(), b"hello world");
    assert_eq!(replies[6].id(), 6);
    assert_eq!(replies[7].data(), b"wor");
    assert_eq!(replies[8].status().0, wire::FX_EOF);
    let a = replies[9].attrs();
    assert_eq!(a.size, Some(11));
    assert_eq!(a.perm.map(|p| p & 0o7777), Some(0o640 & !umask()));
    assert_eq!(replies[11].status().0, wire::FX_FAILURE, "closed twice");
    assert_eq!(
        std::fs::read(home.path().join("a.txt")).expect("read"),
        b"hello world"
    );
}

/// This process's umask (the kernel applies it to new files' modes).
fn umask() -> u32 {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = dir.path().join("probe");
    std::fs::DirBuilder::new().create(&p).expect("mkdir");
    0o777 & !(std::fs::metadata(&p).expect("stat").mode() & 0o777)
}

#[test]
fn realpath_and_expand_path_start_at_home_and_allow_a_missing_last_part() {
    let home = tempfile::tempdir().expect("tempdir");
    let canon = std::fs::canonicalize(home.path()).expect("canonicalize");
    std::fs::create_dir(home.path().join("project")).expect("mkdir");
    let name = |r: Reply| r.names().remove(0).0;
    assert_eq!(
        name(one(home.path(), path_req(wire::REALPATH, 1, ""))),
        canon.to_str().expect("utf-8")
    );
    assert_eq!(
        name(one(
            home.path(),
            path_req(wire::REALPATH, 1, "project/../up.txt")
        )),
        canon.join("up.txt").to_str().expect("utf-8")
    );
    let missing = one(home.path(), path_req(wire::REALPATH, 1, "nowhere/up.txt"));
    assert_eq!(missing.status().0, wire::FX_NO_SUCH_FILE);
    for (given, expected) in [("~", canon.clone()), ("~/project", canon.join("project"))] {
        let r = one(
            home.path(),
            req(wire::EXTENDED, 2, |p| {
                p.bytes(b"expand-path@openssh.com").bytes(given.as_bytes())
            }),
        );
        assert_eq!(name(r), expected.to_str().expect("utf-8"), "{given}");
    }
    let r = one(
        home.path(),
        req(wire::EXTENDED, 2, |p| {
            p.bytes(b"expand-path@openssh.com").bytes(b"~nosuchuser/x")
        }),
    );
    assert_eq!(r.status().0, wire::FX_NO_SUCH_FILE);
}

#[test]
fn directories_are_listed_and_renames_never_replace_but_posix_rename_does() {
    let home = tempfile::tempdir().expect("tempdir");
    let d = home.path().join("d");
    let (r, replies) = session(
        home.path(),
        &[
            init(),
            req(wire::MKDIR, 1, |p| {
                p.bytes(b"d").attrs(&Attrs {
                    perm: Some(0o750),
                    ..Attrs::default()
                })
            }),
            open("d/one", 2, CREATE, None),
            open("d/two", 3, CREATE, None),
            req(wire::OPENDIR, 4, |p| p.bytes(b"d")),
        ],
    );
    r.expect("session");
    assert_eq!(replies[1].status().0, wire::FX_OK);
    assert_eq!(
        std::fs::metadata(&d).expect("d").mode() & 0o777,
        0o750 & !umask()
    );
    assert_eq!(replies[4].handle(), 2u32.to_be_bytes());
    // A new session: its first handle is 0.
    let dir = 0u32.to_be_bytes();
    let (r, replies) = session(
        home.path(),
        &[
            init(),
            req(wire::OPENDIR, 1, |p| p.bytes(b"d")),
            req(wire::READDIR, 2, |p| p.bytes(&dir)),
            req(wire::READDIR, 3, |p| p.bytes(&dir)),
            req(wire::RENAME, 4, |p| p.bytes(b"d/one").bytes(b"d/two")),
            req(wire::RENAME, 5, |p| p.bytes(b"d/one").bytes(b"d/three")),
            req(wire::EXTENDED, 6, |p| {
                p.bytes(b"posix-rename@openssh.com")
                    .bytes(b"d/three")
                    .bytes(b"d/two")
            }),
            // OpenSSH's order: the target, then the link.
            req(wire::SYMLINK, 7, |p| p.bytes(b"two").bytes(b"d/link")),
            path_req(wire::READLINK, 8, "d/link"),
            path_req(wire::LSTAT, 9, "d/link"),
            path_req(wire::RMDIR, 10, "d"),
            path_req(wire::REMOVE, 11, "d/two"),
            path_req(wire::REMOVE, 12, "d/link"),
            path_req(wire::RMDIR, 13, "d"),
            path_req(wire::STAT, 14, "d"),
        ],
    );
    r.expect("session");
    let mut listed: Vec<(String, String)> = replies[2].names();
    listed.sort();
    assert_eq!(
        listed.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
        ["one", "two"]
    );
    assert!(listed[0].1.starts_with("-rw"), "{:?}", listed[0]);
    assert!(listed[0].1.ends_with(" one"), "{:?}", listed[0]);
    assert_eq!(replies[3].status().0, wire::FX_EOF);
    let (code, message) = replies[4].status();
    assert_eq!((code, message.as_str()), (wire::FX_FAILURE, "File exists"));
    assert_eq!(replies[5].status().0, wire::FX_OK);
    assert_eq!(replies[6].status().0, wire::FX_OK);
    assert_eq!(replies[7].status().0, wire::FX_OK);
    assert_eq!(replies[8].names()[0].0, "two");
    assert_eq!(
        replies[9].attrs().perm.map(|p| p & 0o170000),
        Some(0o120000)
    );
    assert_eq!(replies[10].status().0, wire::FX_FAILURE, "not empty");
    for r in &replies[11..14] {
        assert_eq!(r.status().0, wire::FX_OK, "{r:?}");
    }
    assert_eq!(replies[14].status().0, wire::FX_NO_SUCH_FILE);
}

#[test]
fn setstat_and_fsetstat_set_modes_times_and_sizes() {
    let home = tempfile::tempdir().expect("tempdir");
    let f = home.path().join("f");
    std::fs::write(&f, b"0123456789").expect("write");
    let r = one(
        home.path(),
        req(wire::SETSTAT, 1, |p| {
            p.bytes(b"f").attrs(&Attrs {
                size: Some(4),
                perm: Some(0o100600),
                times: Some((1_000_000, 2_000_000)),
                ..Attrs::default()
            })
        }),
    );
    assert_eq!(r.status().0, wire::FX_OK);
    let m = std::fs::metadata(&f).expect("stat");
    assert_eq!(
        (m.len(), m.mode() & 0o7777, m.atime(), m.mtime()),
        (4, 0o600, 1_000_000, 2_000_000)
    );
    let (r, replies) = session(
        home.path(),
        &[
            init(),
            open("f", 1, wire::OPEN_WRITE, None),
            req(wire::FSETSTAT, 2, |p| {
                p.bytes(&0u32.to_be_bytes()).attrs(&Attrs {
                    perm: Some(0o751),
                    times: Some((3, 4_000_000)),
                    ..Attrs::default()
                })
            }),
            req(wire::EXTENDED, 3, |p| {
                p.bytes(b"fsync@openssh.com").bytes(&0u32.to_be_bytes())
            }),
        ],
    );
    r.expect("session");
    assert_eq!(replies[2].status().0, wire::FX_OK);
    assert_eq!(replies[3].status().0, wire::FX_OK);
    let m = std::fs::metadata(&f).expect("stat");
    assert_eq!((m.mode() & 0o7777, m.mtime()), (0o751, 4_000_000));
    assert_eq!(m.permissions().mode() & 0o777, 0o751);
}

#[test]
fn a_packet_longer_than_the_limit_ends_the_session_without_reading_it() {
    let home = tempfile::tempdir().expect("tempdir");
    let mut huge = init();
    huge.extend_from_slice(&u32::MAX.to_be_bytes());
    huge.push(wire::WRITE);
    let (r, replies) = session(home.path(), &[huge]);
    assert!(matches!(r, Err(SessionError::TooLong(u32::MAX))), "{r:?}");
    assert_eq!(replies.len(), 1, "INIT answered, nothing else");
    let (r, _) = session(home.path(), &[init(), vec![0, 0, 0, 0]]);
    assert!(matches!(r, Err(SessionError::Empty)), "{r:?}");
    // Requests before INIT, or a second INIT: the stream is not SFTP as it should be.
    let (r, replies) = session(home.path(), &[path_req(wire::STAT, 1, ".")]);
    assert!(matches!(r, Err(SessionError::Protocol(_))), "{r:?}");
    assert!(replies.is_empty());
    let (r, _) = session(home.path(), &[init(), init()]);
    assert!(matches!(r, Err(SessionError::Protocol(_))), "{r:?}");
    // A stream that ends inside a packet is an I/O error, not a hang or a panic.
    let mut cut = init();
    cut.extend_from_slice(&path_req(wire::STAT, 1, "x")[..7]);
    let (r, _) = session(home.path(), &[cut]);
    assert!(matches!(r, Err(SessionError::Cut)), "{r:?}");
}

#[test]
fn every_request_cut_short_or_with_lengths_past_its_end_is_a_bad_message_and_the_session_goes_on() {
    let home = tempfile::tempdir().expect("tempdir");
    std::fs::write(home.path().join("f"), b"data").expect("write");
    let h = 0u32.to_be_bytes();
    let attrs = Attrs {
        perm: Some(0o644),
        times: Some((1, 2)),
        ..Attrs::default()
    };
    let valid: Vec<Vec<u8>> = vec![
        open("g", 1, CREATE, Some(0o644)),
        req(wire::CLOSE, 1, |p| p.bytes(&h)),
        req(wire::READ, 1, |p| p.bytes(&h).u64(0).u32(10)),
        req(wire::WRITE, 1, |p| p.bytes(&h).u64(0).bytes(b"xy")),
        path_req(wire::LSTAT, 1, "f"),
        req(wire::FSTAT, 1, |p| p.bytes(&h)),
        req(wire::SETSTAT, 1, |p| p.bytes(b"f").attrs(&attrs)),
        req(wire::FSETSTAT, 1, |p| p.bytes(&h).attrs(&attrs)),
        path_req(wire::OPENDIR, 1, "."),
        req(wire::READDIR, 1, |p| p.bytes(&h)),
        path_req(wire::REMOVE, 1, "nothing"),
        req(wire::MKDIR, 1, |p| p.bytes(b"m").attrs(&attrs)),
        path_req(wire::RMDIR, 1, "m"),
        path_req(wire::REALPATH, 1, "f"),
        path_req(wire::STAT, 1, "f"),
        req(wire::RENAME, 1, |p| p.bytes(b"f2").bytes(b"f3")),
        path_req(wire::READLINK, 1, "f"),
        req(wire::SYMLINK, 1, |p| p.bytes(b"f").bytes(b"l")),
        req(wire::EXTENDED, 1, |p| {
            p.bytes(b"posix-rename@openssh.com")
                .bytes(b"f4")
                .bytes(b"f5")
        }),
        req(wire::EXTENDED, 1, |p| {
            p.bytes(b"lsetstat@openssh.com").bytes(b"f").attrs(&attrs)
        }),
        req(wire::EXTENDED, 1, |p| {
            p.bytes(b"expand-path@openssh.com").bytes(b"~/f")
        }),
    ];
    let mut packets = vec![init()];
    let mut expected_bad = 0;
    for v in &valid {
        // Cut after the type and id (5 + 4 bytes with the length), at every length short of
        // whole; each with its length field saying what is really there.
        for end in 9..v.len() {
            let mut p = v[..end].to_vec();
            p[..4].copy_from_slice(&((end - 4) as u32).to_be_bytes());
            packets.push(p);
            expected_bad += 1;
        }
        // Its first string's length claims 4 GiB.
        if v.len() >= 13 {
            let mut p = v.clone();
            p[9..13].copy_from_slice(&u32::MAX.to_be_bytes());
            packets.push(p);
            expected_bad += 1;
        }
    }
    // Unknown types, an id cut short, an unknown extension, a NUL in a path.
    packets.push(req(77, 5, |p| p.bytes(b"whatever")));
    packets.push(vec![0, 0, 0, 3, wire::STAT, 0, 0]);
    packets.push(req(wire::EXTENDED, 6, |p| p.bytes(b"nosuch@example.com")));
    packets.push(path_req(wire::STAT, 7, "f\0/etc/passwd"));
    packets.push(path_req(wire::STAT, 8, "f"));
    let (r, replies) = session(home.path(), &packets);
    r.expect("the session outlives its bad packets");
    assert_eq!(replies.len(), packets.len());
    let bad = replies[1..=expected_bad]
        .iter()
        .filter(|r| r.status().0 == wire::FX_BAD_MESSAGE)
        .count();
    assert_eq!(bad, expected_bad);
    let n = replies.len();
    assert_eq!(replies[n - 5].status().0, wire::FX_OP_UNSUPPORTED);
    assert_eq!(replies[n - 4].status().0, wire::FX_BAD_MESSAGE);
    assert_eq!(replies[n - 3].status().0, wire::FX_OP_UNSUPPORTED);
    assert_eq!(replies[n - 2].status().0, wire::FX_BAD_MESSAGE);
    assert_eq!(replies[n - 1].attrs().size, Some(4));
    // Nothing was made from a partial request.
    let mut left: Vec<String> = std::fs::read_dir(home.path())
        .expect("ls")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(left, ["f"]);
}

#[test]
fn handles_are_bounded_and_offsets_past_the_kernels_range_fail_cleanly() {
    let home = tempfile::tempdir().expect("tempdir");
    std::fs::write(home.path().join("f"), b"data").expect("write");
    let mut packets = vec![init()];
    for i in 0..MAX_HANDLES as u32 + 3 {
        packets.push(open("f", i, wire::OPEN_READ | wire::OPEN_WRITE, None));
    }
    let h = 0u32.to_be_bytes();
    packets.push(req(wire::WRITE, 1, |p| {
        p.bytes(&h).u64(u64::MAX).bytes(b"x")
    }));
    packets.push(req(wire::READ, 2, |p| p.bytes(&h).u64(u64::MAX - 1).u32(9)));
    packets.push(req(wire::READ, 3, |p| p.bytes(b"toolong").u64(0).u32(9)));
    packets.push(req(wire::READ, 4, |p| p.bytes(&h).u64(1).u32(2)));
    let (r, replies) = session(home.path(), &packets);
    r.expect("session");
    let handles = replies.iter().filter(|r| r.kind == wire::HANDLE).count();
    assert_eq!(handles, MAX_HANDLES);
    let n = replies.len();
    assert_eq!(
        replies[n - 5].status(),
        (wire::FX_FAILURE, "Too many open handles".to_owned())
    );
    assert_eq!(replies[n - 4].status().0, wire::FX_FAILURE);
    assert_eq!(replies[n - 3].status().0, wire::FX_FAILURE);
    assert_eq!(replies[n - 2].status().0, wire::FX_FAILURE);
    assert_eq!(replies[n - 1].data(), b"at");
    assert_eq!(std::fs::read(home.path().join("f")).expect("read"), b"data");
}

#[test]
fn a_big_file_moves_in_chunks_of_at_most_the_announced_size() {
    let home = tempfile::tempdir().expect("tempdir");
    let body: Vec<u8> = (0..3 * wire::MAX_DATA + 17)
        .map(|i| (i * 7 % 251) as u8)
        .collect();
    let chunk = wire::MAX_DATA as usize;
    let h = 0u32.to_be_bytes();
    let mut packets = vec![init(), open("big", 1, CREATE, None)];
    for (i, piece) in body.chunks(chunk).enumerate() {
        let off = (i * chunk) as u64;
        packets.push(req(wire::WRITE, 2 + i as u32, |p| {
            p.bytes(&h).u64(off).bytes(piece)
        }));
    }
    let (r, _) = session(home.path(), &packets);
    r.expect("session");
    let mut packets = vec![init(), open("big", 1, wire::OPEN_READ, None)];
    for i in 0..5u32 {
        let off = u64::from(i) * chunk as u64;
        packets.push(req(wire::READ, 10 + i, |p| {
            p.bytes(&h).u64(off).u32(1 << 30)
        }));
    }
    let (r, replies) = session(home.path(), &packets);
    r.expect("session");
    let mut got = Vec::new();
    for r in &replies[2..] {
        if r.kind == wire::DATA {
            let d = r.data();
            assert!(d.len() <= chunk);
            got.extend_from_slice(&d);
        } else {
            assert_eq!(r.status().0, wire::FX_EOF);
        }
    }
    assert_eq!(got, body);
}

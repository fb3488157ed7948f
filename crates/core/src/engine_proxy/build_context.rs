//! What a build asks the engine to fetch. The classic builder runs `ADD <url>` and pulls the
//! `FROM` images itself, from the host's network: `ADD http://127.0.0.1:PORT/...` would copy
//! whatever a service on the host's loopback answers into the job's image. The build context
//! streams through the proxy, so it is read as it passes: the Dockerfile is found in the tar
//! (gzip-compressed or not) and checked before the end of the archive is forwarded. The
//! engine builds only once it holds the whole context, so a refused one never builds.

use super::filter::{names_the_host, registry_host};
use std::io::Write;

/// The largest Dockerfile read to check (the engine's own limit is larger; no real one is).
const MAX_DOCKERFILE: usize = 1 << 20;
/// The largest tar metadata entry (long names, PAX records) read to follow names.
const MAX_META: usize = 64 << 10;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Refused(pub String);

/// Reads a build context as it streams by and refuses it once its Dockerfile asks the engine
/// for something a job may not have it fetch.
pub struct ContextScanner {
    inner: Inner,
}

enum Inner {
    /// Not yet known: the first bytes tell whether the context is compressed.
    Start(Vec<u8>, TarScanner),
    Plain(TarScanner),
    Gzip(Box<flate2::write::GzDecoder<TarScanner>>),
    Done,
}

impl ContextScanner {
    /// `dockerfile`: the build's `dockerfile` parameter (default `Dockerfile`).
    pub fn new(dockerfile: Option<&str>) -> Self {
        let name = normalize(dockerfile.filter(|d| !d.is_empty()).unwrap_or("Dockerfile"));
        ContextScanner {
            inner: Inner::Start(Vec::new(), TarScanner::new(name)),
        }
    }

    /// The next bytes of the context, as sent by the job.
    pub fn feed(&mut self, chunk: &[u8]) -> Result<(), Refused> {
        if let Inner::Start(head, _) = &mut self.inner {
            head.extend_from_slice(chunk);
            if head.len() < 6 {
                return Ok(());
            }
            return self.begin();
        }
        self.pass(chunk)
    }

    /// The context ended.
    pub fn finish(&mut self) -> Result<(), Refused> {
        if matches!(self.inner, Inner::Start(..)) {
            self.begin()?;
        }
        match &mut self.inner {
            Inner::Plain(tar) => tar.verdict(),
            Inner::Gzip(gz) => {
                let _ = gz.try_finish();
                gz.get_mut().verdict()
            }
            Inner::Start(..) | Inner::Done => Ok(()),
        }
    }

    /// The first bytes are in: decide how to read the rest.
    fn begin(&mut self) -> Result<(), Refused> {
        let Inner::Start(head, tar) = std::mem::replace(&mut self.inner, Inner::Done) else {
            return Ok(());
        };
        self.inner = match compression(&head) {
            Compression::None => Inner::Plain(tar),
            Compression::Gzip => Inner::Gzip(Box::new(flate2::write::GzDecoder::new(tar))),
            Compression::Other(what) => {
                return Err(Refused(format!(
                    "bosun: a {what}-compressed build context is not accepted by the job's engine: send it as a plain or gzip tar (docker build does by default)"
                )))
            }
        };
        self.pass(&head)
    }

    fn pass(&mut self, chunk: &[u8]) -> Result<(), Refused> {
        match &mut self.inner {
            Inner::Plain(tar) => tar.scan(chunk),
            Inner::Gzip(gz) => match gz.write_all(chunk) {
                Ok(()) => gz.get_mut().verdict(),
                Err(_) => gz.get_mut().verdict().and(Err(Refused(
                    "bosun: the build context is not a valid gzip stream".into(),
                ))),
            },
            Inner::Start(..) | Inner::Done => Ok(()),
        }
    }
}

enum Compression {
    None,
    Gzip,
    Other(&'static str),
}

/// The engine detects a compressed context by its magic bytes, as here.
fn compression(head: &[u8]) -> Compression {
    if head.starts_with(&[0x1f, 0x8b]) {
        Compression::Gzip
    } else if head.starts_with(b"BZh") {
        Compression::Other("bzip2")
    } else if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
        Compression::Other("xz")
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Compression::Other("zstd")
    } else {
        Compression::None
    }
}

/// A path in the context as the engine resolves it: no leading `/` or `./`, no `.` segments.
fn normalize(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for seg in path.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            s => parts.push(s),
        }
    }
    parts.join("/")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Capture {
    Skip,
    Dockerfile,
    LongName,
    Pax,
}

/// A streaming reader of tar headers: it follows entry names (GNU long names and PAX `path`
/// and `size` records too, as Go's `archive/tar` does) and keeps the Dockerfile's bytes.
struct TarScanner {
    dockerfile: String,
    header: Vec<u8>,
    /// Bytes left of the current entry's data, then of its padding to 512.
    remaining: u64,
    padding: u64,
    capture: Capture,
    data: Vec<u8>,
    long_name: Option<String>,
    pax_path: Option<String>,
    pax_size: Option<u64>,
    refused: Option<Refused>,
}

impl Write for TarScanner {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        // A refusal is kept and reported by `verdict`; the decompressor goes on.
        let _ = self.scan(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl TarScanner {
    fn new(dockerfile: String) -> Self {
        TarScanner {
            dockerfile,
            header: Vec::with_capacity(512),
            remaining: 0,
            padding: 0,
            capture: Capture::Skip,
            data: Vec::new(),
            long_name: None,
            pax_path: None,
            pax_size: None,
            refused: None,
        }
    }

    fn verdict(&self) -> Result<(), Refused> {
        match &self.refused {
            Some(r) => Err(r.clone()),
            None => Ok(()),
        }
    }

    fn refuse(&mut self, r: Refused) -> Result<(), Refused> {
        if self.refused.is_none() {
            self.refused = Some(r);
        }
        self.verdict()
    }

    fn scan(&mut self, mut buf: &[u8]) -> Result<(), Refused> {
        self.verdict()?;
        while !buf.is_empty() {
            if self.remaining > 0 {
                let n = usize::try_from(self.remaining)
                    .unwrap_or(usize::MAX)
                    .min(buf.len());
                if self.capture != Capture::Skip {
                    let limit = if self.capture == Capture::Dockerfile {
                        MAX_DOCKERFILE
                    } else {
                        MAX_META
                    };
                    if self.data.len() + n > limit {
                        return self.refuse(Refused(format!(
                            "bosun: the build's Dockerfile or a tar header in its context is larger than {} KiB",
                            limit >> 10
                        )));
                    }
                    self.data.extend_from_slice(&buf[..n]);
                }
                self.remaining -= n as u64;
                buf = &buf[n..];
                if self.remaining == 0 {
                    self.entry_done()?;
                }
                continue;
            }
            if self.padding > 0 {
                let n = usize::try_from(self.padding)
                    .unwrap_or(usize::MAX)
                    .min(buf.len());
                self.padding -= n as u64;
                buf = &buf[n..];
                continue;
            }
            let n = (512 - self.header.len()).min(buf.len());
            self.header.extend_from_slice(&buf[..n]);
            buf = &buf[n..];
            if self.header.len() == 512 {
                let header = std::mem::take(&mut self.header);
                self.start_entry(&header)?;
            }
        }
        Ok(())
    }

    fn start_entry(&mut self, h: &[u8]) -> Result<(), Refused> {
        if h.iter().all(|b| *b == 0) {
            return Ok(()); // the end-of-archive blocks
        }
        let header_size = parse_size(&h[124..136]);
        let size = self.pax_size.take().unwrap_or(header_size);
        let kind = h[156];
        let name = match (self.long_name.take(), self.pax_path.take()) {
            (_, Some(p)) => p,
            (Some(l), None) => l,
            (None, None) => {
                let name = cstr(&h[0..100]);
                let ustar = &h[257..262] == b"ustar";
                let prefix = if ustar {
                    cstr(&h[345..500])
                } else {
                    String::new()
                };
                if prefix.is_empty() {
                    name
                } else {
                    format!("{prefix}/{name}")
                }
            }
        };
        let is_dockerfile = normalize(&name).eq_ignore_ascii_case(&self.dockerfile);
        self.capture = match kind {
            b'L' => Capture::LongName,
            b'x' => Capture::Pax,
            b'0' | 0 | b'7' if is_dockerfile => Capture::Dockerfile,
            b'1' | b'2' if is_dockerfile => {
                return self.refuse(Refused(format!(
                    "bosun: the build's Dockerfile `{name}` is a link in the context: send it as a regular file"
                )))
            }
            _ => Capture::Skip,
        };
        self.data.clear();
        // Links and directories carry no data whatever their size field says.
        self.remaining = if matches!(kind, b'1' | b'2' | b'3' | b'4' | b'5' | b'6') {
            0
        } else {
            size
        };
        self.padding = (512 - self.remaining % 512) % 512;
        if self.remaining == 0 {
            self.entry_done()?;
        }
        Ok(())
    }

    fn entry_done(&mut self) -> Result<(), Refused> {
        let data = std::mem::take(&mut self.data);
        match std::mem::replace(&mut self.capture, Capture::Skip) {
            Capture::Skip => Ok(()),
            Capture::LongName => {
                self.long_name = Some(cstr(&data));
                Ok(())
            }
            Capture::Pax => {
                for (k, v) in pax_records(&data) {
                    match k.as_str() {
                        "path" => self.pax_path = Some(v),
                        "size" => self.pax_size = v.parse().ok(),
                        _ => {}
                    }
                }
                Ok(())
            }
            Capture::Dockerfile => match check_dockerfile(&String::from_utf8_lossy(&data)) {
                Ok(()) => Ok(()),
                Err(r) => self.refuse(r),
            },
        }
    }
}

fn cstr(b: &[u8]) -> String {
    let end = b.iter().position(|c| *c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

/// A tar size field: octal digits, or base-256 when the top bit is set.
fn parse_size(field: &[u8]) -> u64 {
    if field.first().is_some_and(|b| b & 0x80 != 0) {
        return field[1..].iter().fold(0u64, |acc, b| {
            acc.saturating_mul(256).saturating_add(u64::from(*b))
        });
    }
    let text = cstr(field);
    u64::from_str_radix(text.trim_matches(|c: char| c == ' ' || c == '\0'), 8).unwrap_or(0)
}

/// PAX records: `LEN key=value\n` each.
fn pax_records(data: &[u8]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = data;
    while let Some(space) = rest.iter().position(|b| *b == b' ') {
        let Some(len) = std::str::from_utf8(&rest[..space])
            .ok()
            .and_then(|l| l.parse::<usize>().ok())
        else {
            break;
        };
        if len <= space || len > rest.len() {
            break;
        }
        let record = String::from_utf8_lossy(&rest[space + 1..len]);
        if let Some((k, v)) = record.trim_end_matches('\n').split_once('=') {
            out.push((k.to_owned(), v.to_owned()));
        }
        rest = &rest[len..];
    }
    out
}

/// The Dockerfile's instructions as the classic builder reads them: parser directives
/// (`# escape=`), continuation lines, comment lines inside them skipped.
fn instructions(text: &str, escape: char) -> Vec<String> {
    let mut out = Vec::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        let trimmed = line.trim_start();
        if trimmed.starts_with('#') || (current.is_some() && trimmed.is_empty()) {
            continue;
        }
        let body = line.trim_end();
        let (part, continues) = match body.strip_suffix(escape) {
            Some(p) => (p, true),
            None => (body, false),
        };
        let joined = match current.take() {
            Some(mut c) => {
                c.push_str(part);
                c
            }
            None => part.to_owned(),
        };
        if continues {
            current = Some(joined);
        } else if !joined.trim().is_empty() {
            out.push(joined);
        }
    }
    if let Some(c) = current.filter(|c| !c.trim().is_empty()) {
        out.push(c);
    }
    out
}

/// Refuse what would have the engine fetch for the job from the host's network: `ADD` of a
/// URL (or of anything built from variables, quotes or escapes, which could spell one), and
/// `FROM` or `COPY --from` of an image on a registry at the host's own address.
pub fn check_dockerfile(text: &str) -> Result<(), Refused> {
    // Either escape character, whatever the directive says: a line split the other way must
    // not hide an instruction.
    for escape in ['\\', '`'] {
        for line in instructions(text, escape) {
            let mut words = line.split_whitespace();
            let mut word = words.next().unwrap_or("").to_ascii_uppercase();
            let mut rest = line.trim_start()[word.len().min(line.trim_start().len())..].to_owned();
            if word == "ONBUILD" {
                let inner = rest.trim_start().to_owned();
                word = inner
                    .split_whitespace()
                    .next()
                    .unwrap_or("")
                    .to_ascii_uppercase();
                rest = inner[word.len().min(inner.len())..].to_owned();
            }
            match word.as_str() {
                "ADD" => check_add(&rest)?,
                "FROM" => {
                    let image = rest
                        .split_whitespace()
                        .find(|w| !w.starts_with("--"))
                        .unwrap_or("");
                    check_image(image, "FROM")?;
                }
                "COPY" => {
                    for w in rest.split_whitespace() {
                        if let Some(from) = w.to_ascii_lowercase().strip_prefix("--from=") {
                            check_image(from, "COPY --from")?;
                        }
                    }
                }
                _ => {}
            }
        }
    }
    Ok(())
}

fn check_add(args: &str) -> Result<(), Refused> {
    let refuse = || {
        Refused(format!(
            "bosun: `ADD{args}` is not allowed in a job's build: the engine would fetch a URL itself, from the host's network. Download in a RUN step (RUN curl -fsSLo ...), which runs in the build's container, and COPY local files"
        ))
    };
    // What the builder's word processing could turn into a URL: quotes and escapes removed,
    // JSON's \u escapes and variables refused outright.
    let plain: String = args
        .chars()
        .filter(|c| !matches!(c, '\\' | '`' | '"' | '\''))
        .collect();
    if plain.contains("://") || args.contains('$') || args.contains("\\u") || args.contains("\\U") {
        return Err(refuse());
    }
    Ok(())
}

fn check_image(image: &str, what: &str) -> Result<(), Refused> {
    let image: String = image
        .chars()
        .filter(|c| !matches!(c, '\\' | '`' | '"' | '\''))
        .collect();
    if let Some(host) = registry_host(&image).filter(|h| names_the_host(h)) {
        return Err(Refused(format!(
            "bosun: `{what} {image}` is not allowed in a job's build: the engine would pull from `{host}`, the host's own address. Use an image on the engine or on a registry on the network"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_of(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, data) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            b.append_data(&mut h, name, *data).unwrap();
        }
        b.into_inner().unwrap()
    }

    fn scan(bytes: &[u8], dockerfile: Option<&str>, chunk: usize) -> Result<(), Refused> {
        let mut s = ContextScanner::new(dockerfile);
        for c in bytes.chunks(chunk) {
            s.feed(c)?;
        }
        s.finish()
    }

    const URL: &str = "FROM bosun/base\nADD http://127.0.0.1:8080/secret /s\n";

    #[test]
    fn an_add_of_a_url_is_found_in_any_chunking_and_any_spelling() {
        for text in [
            URL,
            "from bosun/base\nadd HTTP://127.0.0.1/x /s\n",
            "FROM bosun/base\nADD ht\\\n# a comment\ntp://127.0.0.1/x /s\n",
            "# escape=`\nFROM bosun/base\nADD ht`\ntp://127.0.0.1/x /s\n",
            "FROM bosun/base\nADD [\"http:\\/\\/127.0.0.1/x\", \"/s\"]\n",
            "FROM bosun/base\nADD [\"http\\u003a//127.0.0.1/x\", \"/s\"]\n",
            "FROM bosun/base\nADD \"http\":\"//127.0.0.1/x\" /s\n",
            "FROM bosun/base\nARG U=http://127.0.0.1/x\nADD $U /s\n",
            "FROM bosun/base\nONBUILD ADD http://127.0.0.1/x /s\n",
            "FROM bosun/base\n   ADD --chown=1:1 http://10.0.0.1/x /s\n",
        ] {
            let tar = tar_of(&[("ctx/a.txt", b"hello"), ("Dockerfile", text.as_bytes())]);
            for chunk in [1, 7, 512, 100_000] {
                let r = scan(&tar, None, chunk);
                assert!(r.is_err(), "{text:?} in chunks of {chunk}");
            }
        }
    }

    #[test]
    fn local_adds_copies_and_images_pass() {
        let text =
            "FROM bosun/base AS b\nADD app.tar.gz /opt/\nCOPY --from=b /x /y\nRUN echo http://x\n";
        let tar = tar_of(&[("Dockerfile", text.as_bytes()), ("app.tar.gz", b"x")]);
        assert_eq!(scan(&tar, None, 64), Ok(()));
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&tar).unwrap();
        assert_eq!(scan(&gz.finish().unwrap(), None, 64), Ok(()));
    }

    #[test]
    fn the_dockerfile_is_found_by_its_parameter_long_names_pax_and_compression() {
        let bad = URL.as_bytes();
        // Named by the parameter, in a subdirectory, written ./sub/x.
        let tar = tar_of(&[("./sub/Build.file", bad)]);
        assert!(scan(&tar, Some("sub/Build.file"), 33).is_err());
        assert!(scan(&tar, None, 33).is_ok(), "not the Dockerfile");
        // A long name (GNU 'L' entry, as the tar crate writes past 100 bytes).
        let long = format!("{}/Dockerfile", "d".repeat(150));
        let tar = tar_of(&[(long.as_str(), bad)]);
        assert!(scan(&tar, Some(&long), 512).is_err());
        // Gzip-compressed.
        let tar = tar_of(&[("Dockerfile", bad)]);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&tar).unwrap();
        assert!(scan(&gz.finish().unwrap(), None, 10).is_err());
        // The lower-case name the engine falls back to.
        assert!(scan(&tar_of(&[("dockerfile", bad)]), None, 512).is_err());
        // Other compressions are refused.
        assert!(scan(b"BZh91AY&SY....", None, 512).is_err());
    }

    #[test]
    fn a_dockerfile_that_is_a_link_is_refused() {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        b.append_link(&mut h, "Dockerfile", "evil").unwrap();
        let tar = b.into_inner().unwrap();
        assert!(scan(&tar, None, 512).is_err());
    }

    #[test]
    fn images_on_the_hosts_own_registry_are_refused() {
        for text in [
            "FROM 127.0.0.1:5000/app\n",
            "FROM --platform=linux/amd64 localhost:5000/app AS x\n",
            "FROM bosun/base\nCOPY --from=[::1]:5000/app /x /y\n",
        ] {
            assert!(check_dockerfile(text).is_err(), "{text}");
        }
        assert!(check_dockerfile("FROM registry.example.com/app\n").is_ok());
    }
}

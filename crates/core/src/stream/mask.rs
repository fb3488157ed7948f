//! Streaming secret masking: every occurrence of a secret value in a byte stream fed in
//! arbitrary chunks becomes `********`, also when a secret is split across chunks.
//!
//! - Values shorter than [`MIN_SECRET_LEN`] bytes are not masked (masking `1` or `yes` would
//!   wreck every log); [`Masker::new`] returns them so the caller can warn in the job log.
//!   GitLab uses 8; 4 masks more and leaks less.
//! - A multi-line value is also masked line by line (a TTY turns `\n` into `\r\n`).
//! - Overlapping occurrences are masked as their union: each maximal run of masked bytes
//!   becomes one `********` (so `abcd` + `cdef` in `abcdef` leaves nothing of either).
//! - At a chunk's end the longest tail that could still start a secret is held back, so at
//!   most `longest secret - 1` bytes wait for the next chunk; [`Masker::finish`] flushes them.
//! - Occurrences are found with one leftmost-longest Aho-Corasick automaton over all values,
//!   whose SIMD prefilter skips plain text; occurrences starting inside a found one are
//!   checked directly, and unmasked runs are copied whole. (A byte-at-a-time scan, and the
//!   automaton's overlapping search, which cannot use the prefilter, both cost the agent
//!   several times more CPU per byte of log with a deploy key to mask.)

pub const MASK: &[u8] = b"********";

use super::{Event, EventSink, StepSummary, Stream};
use bytes::Bytes;
use std::borrow::Cow;

/// What a scan made of its input.
enum Scanned {
    /// The input's first `n` bytes, unchanged.
    Plain(usize),
    Masked(Vec<u8>),
}

impl Scanned {
    fn into_vec(self, input: &[u8]) -> Vec<u8> {
        match self {
            Scanned::Plain(n) => input[..n].to_vec(),
            Scanned::Masked(v) => v,
        }
    }
}
pub const MIN_SECRET_LEN: usize = 4;

use aho_corasick::AhoCorasick;

#[derive(Debug, Clone, Default)]
pub struct Masker {
    secrets: Vec<Vec<u8>>,
    first: Vec<bool>,
    /// Every value of `secrets`; rebuilt by [`Masker::add`].
    automaton: Option<AhoCorasick>,
    longest: usize,
    /// Bytes not yet decided (a possible secret prefix at the end of the last chunk).
    pending: Vec<u8>,
    /// Masked coverage extends this many bytes into `pending`.
    covered: usize,
    /// The last byte written was part of a masked run (one `********` per run).
    in_mask: bool,
}

impl Masker {
    /// A masker for `values`; also returns the values too short to mask.
    pub fn new<I, S>(values: I) -> (Masker, Vec<String>)
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut m = Masker {
            first: vec![false; 256],
            ..Masker::default()
        };
        let mut short = Vec::new();
        for v in values {
            let v = v.as_ref();
            if !m.add(v) && !v.is_empty() {
                short.push(v.to_owned());
            }
        }
        (m, short)
    }

    /// Add a secret; false if it is too short to mask. Call before feeding data.
    pub fn add(&mut self, value: &str) -> bool {
        if self.first.is_empty() {
            self.first = vec![false; 256];
        }
        if value.len() < MIN_SECRET_LEN {
            return false;
        }
        let mut parts = vec![value.as_bytes().to_vec()];
        if value.contains('\n') {
            parts.extend(
                value
                    .lines()
                    .map(|l| l.trim_end_matches('\r'))
                    .filter(|l| l.len() >= MIN_SECRET_LEN)
                    .map(|l| l.as_bytes().to_vec()),
            );
        }
        for p in parts {
            if !self.secrets.contains(&p) {
                self.first[usize::from(p[0])] = true;
                self.longest = self.longest.max(p.len());
                self.secrets.push(p);
            }
        }
        // Only fails past its size limits (millions of pattern bytes); masking then falls
        // back to the byte-at-a-time scan rather than leaking.
        self.automaton = AhoCorasick::builder()
            .match_kind(aho_corasick::MatchKind::LeftmostLongest)
            .build(&self.secrets)
            .ok();
        true
    }

    pub fn is_empty(&self) -> bool {
        self.secrets.is_empty()
    }

    /// Feed a chunk; returns the bytes that can be written now: under a flood of plain
    /// output, a slice of the chunk itself (no copy).
    pub fn feed<'a>(&mut self, chunk: &'a [u8]) -> Cow<'a, [u8]> {
        if self.pending.is_empty() {
            return match self.process(chunk, false) {
                Scanned::Plain(n) => Cow::Borrowed(&chunk[..n]),
                Scanned::Masked(v) => Cow::Owned(v),
            };
        }
        let mut buf = std::mem::take(&mut self.pending);
        buf.extend_from_slice(chunk);
        Cow::Owned(self.process(&buf, false).into_vec(&buf))
    }

    /// End of stream: flush what was held back.
    pub fn finish(&mut self) -> Vec<u8> {
        let buf = std::mem::take(&mut self.pending);
        let out = self.process(&buf, true).into_vec(&buf);
        self.in_mask = false;
        self.covered = 0;
        out
    }

    /// Mask a complete text (a message of its own) without touching the stream's state.
    pub fn mask_all(&self, data: &[u8]) -> Vec<u8> {
        let mut m = Masker {
            secrets: self.secrets.clone(),
            first: self.first.clone(),
            automaton: self.automaton.clone(),
            longest: self.longest,
            ..Masker::default()
        };
        let mut out = m.feed(data).into_owned();
        out.extend(m.finish());
        out
    }

    /// The length of the longest secret that starts at `buf[at..]` (0 for none).
    fn longest_at(&self, buf: &[u8], at: usize) -> usize {
        let rest = &buf[at..];
        if !self.first[usize::from(rest[0])] {
            return 0;
        }
        self.secrets
            .iter()
            .filter(|s| rest.starts_with(s))
            .map(Vec::len)
            .max()
            .unwrap_or(0)
    }

    fn process(&mut self, buf: &[u8], last: bool) -> Scanned {
        if self.secrets.is_empty() {
            return Scanned::Plain(buf.len());
        }
        if self.automaton.is_none() {
            return Scanned::Masked(self.process_slow(buf.to_vec(), last));
        }
        // Hold back from the earliest position whose rest could still grow into a secret.
        let mut end = buf.len();
        if !last {
            for p in buf.len().saturating_sub(self.longest - 1)..buf.len() {
                let rest = &buf[p..];
                if self.first[usize::from(rest[0])]
                    && self
                        .secrets
                        .iter()
                        .any(|s| s.len() > rest.len() && s.starts_with(rest))
                {
                    end = p;
                    break;
                }
            }
        }
        let carried = self.covered.min(buf.len());
        if carried == 0 && self.find(buf, 0).is_none_or(|(start, _)| start >= end) {
            // Nothing to mask: what can go out is the input's own prefix.
            if end > 0 {
                self.in_mask = false;
            }
            self.covered = 0;
            self.pending = buf[end..].to_vec();
            return Scanned::Plain(end);
        }
        let mut out = Vec::with_capacity(end + MASK.len());
        let mut pos = 0; // buf[..pos] is decided: written plain or under a mask
        let mut in_mask = self.in_mask;
        // One `********` per masked run, however many occurrences make it up.
        let mask_to = |out: &mut Vec<u8>, pos: &mut usize, in_mask: &mut bool, stop: usize| {
            if stop > *pos {
                if !*in_mask {
                    out.extend_from_slice(MASK);
                }
                *in_mask = true;
                *pos = stop;
            }
        };
        // What the last chunk's matches cover of this one.
        if carried > 0 {
            let stop = self.widen(buf, 0, carried, end);
            mask_to(&mut out, &mut pos, &mut in_mask, stop);
        }
        // Leftmost-longest search: the automaton's prefilter skips plain text fast, and
        // `widen` adds occurrences starting inside a found one, so overlapping occurrences
        // still mask their union. Occurrences starting at or after `end` are found again when
        // the held-back tail is scanned with the next chunk.
        while pos < end {
            let Some((start, stop)) = self.find(buf, pos) else {
                break;
            };
            if start >= end {
                break;
            }
            let stop = self.widen(buf, start + 1, stop, end);
            if start > pos {
                out.extend_from_slice(&buf[pos..start]);
                in_mask = false;
                pos = start;
            }
            mask_to(&mut out, &mut pos, &mut in_mask, stop);
        }
        if pos < end {
            out.extend_from_slice(&buf[pos..end]);
            in_mask = false;
            pos = end;
        }
        self.in_mask = in_mask;
        // A mask may reach into the held-back tail.
        self.covered = pos - end;
        self.pending = buf[end..].to_vec();
        Scanned::Masked(out)
    }

    /// `stop`, pushed past every occurrence that starts in `from..stop` (and before `end`).
    fn widen(&self, buf: &[u8], from: usize, mut stop: usize, end: usize) -> usize {
        let mut q = from;
        while q < stop && q < end {
            stop = stop.max(q + self.longest_at(buf, q));
            q += 1;
        }
        stop
    }

    /// The leftmost-longest occurrence starting at or after `from`.
    fn find(&self, buf: &[u8], from: usize) -> Option<(usize, usize)> {
        let ac = self.automaton.as_ref()?;
        ac.find(aho_corasick::Input::new(buf).range(from..))
            .map(|m| (m.start(), m.end()))
    }

    /// The byte-at-a-time scan, for an automaton that could not be built.
    fn process_slow(&mut self, buf: Vec<u8>, last: bool) -> Vec<u8> {
        let mut out = Vec::with_capacity(buf.len());
        let mut covered = self.covered; // index into buf up to which bytes are masked
        let mut i = 0;
        while i < buf.len() {
            let rest = &buf[i..];
            if self.first[usize::from(rest[0])] {
                let mut longest = 0;
                let mut undecided = false;
                for s in &self.secrets {
                    if rest.len() >= s.len() {
                        if rest.starts_with(s) {
                            longest = longest.max(s.len());
                        }
                    } else if !last && s.starts_with(rest) {
                        undecided = true;
                    }
                }
                if undecided {
                    break;
                }
                covered = covered.max(i + longest);
            }
            if i < covered {
                if !self.in_mask {
                    out.extend_from_slice(MASK);
                    self.in_mask = true;
                }
            } else {
                out.push(buf[i]);
                self.in_mask = false;
            }
            i += 1;
        }
        self.pending = buf[i..].to_vec();
        self.covered = covered.saturating_sub(i);
        out
    }
}

/// A sink that masks every secret of a job before the events go on: step output through
/// one streaming [`Masker`] per (step, stream) — interleaved streams never split a secret
/// apart — flushed when the step ends; every text of the agent's own (step names, messages,
/// errors, service output) masked whole. The job core puts it in front of whatever sink the
/// front door chose, so `bosun execute` and the agent mask alike.
pub struct MaskingSink {
    inner: std::sync::Arc<dyn EventSink>,
    base: Masker,
    streams: std::sync::Mutex<std::collections::HashMap<(usize, Stream), Masker>>,
    /// Names of the secrets too short to mask.
    unmasked: Vec<String>,
}

impl MaskingSink {
    /// `secrets`: (what it is, for warnings; its value).
    pub fn new(inner: std::sync::Arc<dyn EventSink>, secrets: &[(String, String)]) -> Self {
        let (base, short) = Masker::new(secrets.iter().map(|(_, v)| v));
        let unmasked = secrets
            .iter()
            .filter(|(_, v)| short.contains(v))
            .map(|(n, _)| n.clone())
            .collect();
        Self {
            inner,
            base,
            streams: std::sync::Mutex::new(std::collections::HashMap::new()),
            unmasked,
        }
    }

    /// The secrets (by name) too short to be masked.
    pub fn unmasked(&self) -> &[String] {
        &self.unmasked
    }

    pub fn mask_text(&self, text: &str) -> String {
        String::from_utf8_lossy(&self.base.mask_all(text.as_bytes())).into_owned()
    }

    fn mask_bytes(&self, data: &Bytes) -> Bytes {
        Bytes::from(self.base.mask_all(data))
    }

    /// Emit what the maskers of `step` (all steps: `None`) still hold.
    fn flush(&self, step: Option<usize>) {
        let held: Vec<((usize, Stream), Vec<u8>)> = {
            let mut streams = self.streams.lock().unwrap_or_else(|p| p.into_inner());
            let mut out: Vec<_> = streams
                .iter_mut()
                .filter(|((s, _), _)| step.is_none_or(|want| *s == want))
                .map(|(k, m)| (*k, m.finish()))
                .filter(|(_, b)| !b.is_empty())
                .collect();
            out.sort_by_key(|(k, _)| (k.0, k.1 == Stream::Stderr));
            out
        };
        for ((step, stream), data) in held {
            self.inner.emit(&Event::Output {
                step,
                stream,
                data: Bytes::from(data),
            });
        }
    }
}

impl EventSink for MaskingSink {
    fn emit(&self, event: &Event) {
        let masked = match event {
            Event::Output { step, stream, data } => {
                let out = {
                    let mut streams = self.streams.lock().unwrap_or_else(|p| p.into_inner());
                    let m = streams
                        .entry((*step, *stream))
                        .or_insert_with(|| self.base.clone());
                    match m.feed(data) {
                        // Plain output: the same bytes, no copy.
                        Cow::Borrowed(b) if b.len() == data.len() => data.clone(),
                        Cow::Borrowed(b) => data.slice_ref(b),
                        Cow::Owned(v) => Bytes::from(v),
                    }
                };
                if out.is_empty() {
                    return;
                }
                Event::Output {
                    step: *step,
                    stream: *stream,
                    data: out,
                }
            }
            Event::StepStarted {
                step,
                name,
                background,
            } => Event::StepStarted {
                step: *step,
                name: self.mask_text(name),
                background: *background,
            },
            Event::StepFinished(s) => {
                self.flush(Some(s.step));
                let mut s = s.clone();
                s.name = self.mask_text(&s.name);
                Event::StepFinished(s)
            }
            Event::Info { message } => Event::Info {
                message: self.mask_text(message),
            },
            Event::ServiceExited {
                service,
                image,
                exit_code,
                output,
            } => Event::ServiceExited {
                service: service.clone(),
                image: image.clone(),
                exit_code: *exit_code,
                output: self.mask_bytes(output),
            },
            Event::ServiceOutput { service, data } => Event::ServiceOutput {
                service: service.clone(),
                data: self.mask_bytes(data),
            },
            Event::JobFinished {
                job,
                status,
                duration_ms,
                steps,
                error,
            } => {
                self.flush(None);
                Event::JobFinished {
                    job: job.clone(),
                    status: *status,
                    duration_ms: *duration_ms,
                    steps: steps
                        .iter()
                        .map(|s| StepSummary {
                            name: self.mask_text(&s.name),
                            ..s.clone()
                        })
                        .collect(),
                    error: error.as_deref().map(|e| self.mask_text(e)),
                }
            }
            other => other.clone(),
        };
        self.inner.emit(&masked);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn whole(secrets: &[&str], input: &str) -> String {
        let (mut m, _) = Masker::new(secrets);
        let mut out = m.feed(input.as_bytes()).into_owned();
        out.extend(m.finish());
        String::from_utf8(out).expect("utf8")
    }

    /// Every way of cutting `input` in two, and byte by byte, gives the unsplit answer.
    fn check(secrets: &[&str], input: &str, want: &str) {
        assert_eq!(whole(secrets, input), want, "whole");
        for cut in 0..=input.len() {
            let (mut m, _) = Masker::new(secrets);
            let mut out = m.feed(&input.as_bytes()[..cut]).into_owned();
            out.extend_from_slice(&m.feed(&input.as_bytes()[cut..]));
            out.extend(m.finish());
            assert_eq!(String::from_utf8_lossy(&out), want, "cut at {cut}");
        }
        let (mut m, _) = Masker::new(secrets);
        let mut out = Vec::new();
        for b in input.as_bytes() {
            out.extend_from_slice(&m.feed(std::slice::from_ref(b)));
        }
        out.extend(m.finish());
        assert_eq!(String::from_utf8_lossy(&out), want, "byte by byte");
    }

    #[test]
    fn masks_at_every_split_point() {
        check(&["hunter22"], "pw=hunter22!\n", "pw=********!\n");
        check(&["hunter22"], "hunter22hunter2", "********hunter2");
        check(&["hunter22"], "hunter2", "hunter2");
        check(&["hunter22"], "hhunter22", "h********");
    }

    #[test]
    fn overlapping_secrets_mask_their_union() {
        check(&["abcd", "cdef"], "xabcdefy", "x********y");
        check(&["abcd", "cdef"], "abcd cdef", "******** ********");
    }

    #[test]
    fn a_secret_that_prefixes_another_masks_the_longer() {
        check(&["abcd", "abcdefgh"], "abcdefgh.", "********.");
        check(&["abcd", "abcdefgh"], "abcdefg", "********efg");
        check(&["abcd", "abcdefgh"], "abcdabcdefgh", "********");
    }

    #[test]
    fn short_values_are_reported_not_masked() {
        let (m, short) = Masker::new(["abc", "", "abcd"]);
        assert_eq!(short, vec!["abc".to_owned()]);
        assert_eq!(m.mask_all(b"abc abcd"), b"abc ********");
    }

    #[test]
    fn multi_line_values_mask_each_line() {
        check(&["line-one\nline-two"], "a line-two\r\n", "a ********\r\n");
    }

    /// The definition, on a whole text: every byte inside any occurrence of any value is
    /// masked, each maximal masked run becomes one `********`.
    fn oracle(secrets: &[Vec<u8>], text: &[u8]) -> Vec<u8> {
        let mut masked = vec![false; text.len()];
        for s in secrets {
            for i in 0..text.len() {
                if text[i..].starts_with(s) {
                    masked[i..i + s.len()].iter_mut().for_each(|m| *m = true);
                }
            }
        }
        let mut out = Vec::new();
        for (i, b) in text.iter().enumerate() {
            if !masked[i] {
                out.push(*b);
            } else if i == 0 || !masked[i - 1] {
                out.extend_from_slice(MASK);
            }
        }
        out
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]
        /// Any values, any text, cut anywhere: the streaming masker (and its fallback scan)
        /// writes exactly what the definition says about the whole text.
        #[test]
        fn streaming_equals_the_definition(
            values in proptest::collection::vec("[abc]{4,7}", 1..4),
            text in "[abc\\n]{0,60}",
            cuts in proptest::collection::vec(0usize..61, 0..6),
        ) {
            let (m, _) = Masker::new(&values);
            let want = oracle(&m.secrets, text.as_bytes());
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(text.len())).collect();
            cuts.sort_unstable();
            for fast in [true, false] {
                let mut m = m.clone();
                if !fast {
                    m.automaton = None;
                }
                let mut out = Vec::new();
                let mut at = 0;
                for &c in &cuts {
                    out.extend_from_slice(&m.feed(&text.as_bytes()[at..c]));
                    at = c;
                }
                out.extend_from_slice(&m.feed(&text.as_bytes()[at..]));
                out.extend(m.finish());
                proptest::prop_assert_eq!(
                    String::from_utf8_lossy(&out),
                    String::from_utf8_lossy(&want),
                    "fast={} cuts={:?}", fast, cuts
                );
            }
        }
    }

    #[test]
    fn holds_back_at_most_a_secret_prefix() {
        let (mut m, _) = Masker::new(["secret-value"]);
        assert_eq!(&*m.feed(b"hello secret-va"), b"hello ");
        assert_eq!(&*m.feed(b"lue bye"), b"******** bye");
        assert_eq!(&*m.feed(b" secr"), b" ");
        assert_eq!(m.finish(), b"secr");
    }
}

//! Live log text (as it arrives, in pieces cut anywhere) to operations on a page's lines,
//! rendered by the same [`ansi`] renderer as the page, so a live page shows what a reload
//! would: colours, a colour or an escape cut across two pieces, progress lines collapsed.
//!
//! The open (unfinished) line is kept as raw text and rendered again whole with each piece,
//! so an escape or a carriage return in a later piece applies as it would to the whole line.
//! A long line is bounded: what a carriage return hid is dropped, and text before any
//! carriage return is committed (never rendered again).
//!
//! Operations (JSON arrays, applied in order by `assets/bosun.js`):
//! `["n", TIME]` start a line (TIME: `HH:MM:SS` when its first byte arrived, or ""),
//! `["c", HTML]` append to the open line's committed part and empty its tail,
//! `["t", HTML]` set the open line's tail, `["x"]` empty the open line (a carriage return
//! hid it), `["e"]` end the open line.

use super::ansi::{self, Style};
use serde::Serialize;

/// An open line is rendered again with each piece only up to this much raw text.
const OPEN_MAX: usize = 64 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum Op {
    Start(&'static str, String),
    Html(&'static str, String),
    Bare((&'static str,)),
}

impl Op {
    fn start(time: String) -> Op {
        Op::Start("n", time)
    }
    fn commit(html: String) -> Op {
        Op::Html("c", html)
    }
    fn tail(html: String) -> Op {
        Op::Html("t", html)
    }
    fn clear() -> Op {
        Op::Bare(("x",))
    }
    fn end() -> Op {
        Op::Bare(("e",))
    }
}

/// A live page's lines as the stream left them.
#[derive(Debug, Clone)]
pub struct LiveLines {
    /// The style after the open line's committed part (or at a new line).
    style: Style,
    /// The open line's raw text not committed yet.
    pending: String,
    /// Log offset where `pending` starts.
    at: u64,
    /// The page has an open line.
    open: bool,
}

impl LiveLines {
    /// Resume at log offset `at` (a line start, or where an open line's uncommitted text
    /// starts), in `style`, with or without an open line on the page.
    pub fn new(at: u64, style: Style, open: bool) -> Self {
        Self {
            style,
            pending: String::new(),
            at,
            open,
        }
    }

    /// The log offset the next text starts at (the open line's uncommitted text is read
    /// again from there).
    pub fn resume_offset(&self) -> u64 {
        self.at
    }

    /// Where the open line's uncommitted text (or the next line) starts.
    pub fn line_start(&self) -> u64 {
        self.at
    }

    /// Where a stream resumes: `OFFSET:SEQ:STYLE:OPEN` (an SSE event id).
    pub fn resume_id(&self, seq: u64) -> String {
        format!(
            "{}:{seq}:{}:{}",
            self.at,
            self.style.code(),
            u8::from(self.open)
        )
    }

    /// Parse [`LiveLines::resume_id`] (also the old `OFFSET:SEQ`: a line start, plain).
    pub fn parse_resume_id(id: &str) -> Option<(LiveLines, u64)> {
        let mut parts = id.split(':');
        let at = parts.next()?.parse().ok()?;
        let seq = parts.next()?.parse().ok()?;
        let style = parts.next().map_or(Some(0), |s| s.parse().ok())?;
        let open = parts.next().map_or(Some(false), |s| match s {
            "0" => Some(false),
            "1" => Some(true),
            _ => None,
        })?;
        Some((LiveLines::new(at, Style::from_code(style), open), seq))
    }

    /// A step's output starts here: its own section, its own lines, plain style (as the page
    /// renders each section).
    pub fn section(&mut self, at: u64) {
        *self = LiveLines::new(at, Style::default(), false);
    }

    /// The operations that show `text` (the log's next bytes, whole characters); `time` gives
    /// the `HH:MM:SS` a line starting at a log offset arrived at.
    pub fn push(&mut self, text: &str, time: &dyn Fn(u64) -> Option<String>) -> Vec<Op> {
        let mut ops = Vec::new();
        let mut rest = text;
        while !rest.is_empty() {
            if !self.open {
                ops.push(Op::start(time(self.at).unwrap_or_default()));
                self.open = true;
            }
            match rest.find('\n') {
                Some(i) => {
                    self.pending.push_str(&rest[..i]);
                    rest = &rest[i + 1..];
                    let (html, hides) = ansi::line_html_parts(&self.pending, &mut self.style);
                    if hides {
                        ops.push(Op::clear());
                    }
                    ops.push(Op::commit(html));
                    ops.push(Op::end());
                    self.at += self.pending.len() as u64 + 1;
                    self.pending.clear();
                    self.open = false;
                }
                None => {
                    self.pending.push_str(rest);
                    rest = "";
                    self.bound(&mut ops);
                    let mut style = self.style;
                    let (html, hides) = ansi::line_html_parts(&self.pending, &mut style);
                    if hides {
                        ops.push(Op::clear());
                    }
                    ops.push(Op::tail(html));
                }
            }
        }
        ops
    }

    /// Keep the open line's raw text under [`OPEN_MAX`]: drop what a carriage return hid
    /// for good, then commit what comes before any carriage return.
    fn bound(&mut self, ops: &mut Vec<Op>) {
        if self.pending.len() <= OPEN_MAX {
            return;
        }
        let hidden = ansi::hidden_before(&self.pending);
        if hidden > 0 {
            // Its escapes still set the style of what follows.
            ansi::line_html_parts(&self.pending[..hidden], &mut self.style);
            ops.push(Op::clear());
            self.pending.drain(..hidden);
            self.at += hidden as u64;
        }
        if self.pending.len() > OPEN_MAX {
            let upto = self.pending.find('\r').unwrap_or(self.pending.len());
            let upto = ansi::complete_prefix(&self.pending[..upto]);
            if upto > 0 {
                let (html, _) = ansi::line_html_parts(&self.pending[..upto], &mut self.style);
                ops.push(Op::commit(html));
                self.pending.drain(..upto);
                self.at += upto as u64;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a page shows after `ops`: its lines' text with class markup, the open one last.
    fn apply(ops: &[Op], lines: &mut Vec<(String, String, bool)>) {
        for op in ops {
            match op {
                Op::Start(_, _) => lines.push((String::new(), String::new(), false)),
                Op::Html("c", h) => {
                    let l = lines.last_mut().expect("open line");
                    l.0.push_str(h);
                    l.1.clear();
                }
                Op::Html(_, h) => lines.last_mut().expect("open line").1 = h.clone(),
                Op::Bare(("x",)) => {
                    let l = lines.last_mut().expect("open line");
                    l.0.clear();
                    l.1.clear();
                }
                Op::Bare(_) => lines.last_mut().expect("open line").2 = true,
            }
        }
    }

    fn shown(lines: &[(String, String, bool)]) -> Vec<String> {
        lines.iter().map(|(c, t, _)| format!("{c}{t}")).collect()
    }

    /// The page a reload renders for the whole text.
    fn reload(text: &str) -> Vec<String> {
        let mut st = Style::default();
        let body = text.strip_suffix('\n').unwrap_or(text);
        body.split('\n')
            .map(|l| ansi::line_html(l, &mut st))
            .collect()
    }

    fn live(pieces: &[&str]) -> Vec<String> {
        let mut l = LiveLines::new(0, Style::default(), false);
        let mut lines = Vec::new();
        for p in pieces {
            apply(&l.push(p, &|_| None), &mut lines);
        }
        shown(&lines)
    }

    #[test]
    fn pieces_cut_anywhere_render_as_the_whole_text_does() {
        let text = "plain \x1b[31mred\x1b[0m and \x1b[1;32mbold green\x1b[0m\n\
                    \x1b[33mstill yellow\nacross lines\x1b[0m\n  0%\r 50%\r100% done\n\
                    \x1b]8;;https://x\x1b\\link\x1b]8;;\x1b\\ tail";
        let whole = reload(text);
        assert!(
            whole[0].contains("<span class=\"f1\">red</span>"),
            "{whole:?}"
        );
        // Every cut, including inside each escape sequence and between CR and text.
        for cut in 1..text.len() {
            if !text.is_char_boundary(cut) {
                continue;
            }
            let got = live(&[&text[..cut], &text[cut..]]);
            assert_eq!(got, whole, "cut at {cut}: {:?}", &text[..cut]);
        }
        // And one byte at a time.
        let chars: Vec<String> = text.chars().map(String::from).collect();
        let refs: Vec<&str> = chars.iter().map(String::as_str).collect();
        assert_eq!(live(&refs), whole);
    }

    #[test]
    fn a_colour_cut_mid_escape_shows_no_escape_bytes_meanwhile() {
        let mut l = LiveLines::new(0, Style::default(), false);
        let ops = l.push("ok \x1b[3", &|_| Some("09:00:01".into()));
        assert_eq!(ops[0], Op::start("09:00:01".into()));
        assert_eq!(ops.last(), Some(&Op::tail("ok ".into())));
        let ops = l.push("1mred\n", &|_| None);
        assert_eq!(
            ops,
            vec![
                Op::commit("ok <span class=\"f1\">red</span>".into()),
                Op::end()
            ]
        );
    }

    #[test]
    fn a_long_progress_line_stays_bounded_and_shows_its_last_state() {
        let mut l = LiveLines::new(0, Style::default(), false);
        let mut lines = Vec::new();
        let mut all = String::from("\x1b[32m");
        apply(&l.push("\x1b[32m", &|_| None), &mut lines);
        for i in 0..400 {
            let p: String = (0..50)
                .map(|k| format!("\rprogress {}/20000", i * 50 + k))
                .collect();
            all.push_str(&p);
            apply(&l.push(&p, &|_| None), &mut lines);
            assert!(l.pending.len() <= OPEN_MAX + p.len());
        }
        apply(&l.push(" done\n", &|_| None), &mut lines);
        all.push_str(" done\n");
        assert_eq!(shown(&lines), reload(&all));
        // A long line without carriage returns is committed in parts, still one line.
        let long = "x".repeat(3 * OPEN_MAX);
        let mut l = LiveLines::new(0, Style::default(), false);
        let mut lines = Vec::new();
        for c in long.as_bytes().chunks(10_000) {
            apply(
                &l.push(std::str::from_utf8(c).expect("ascii"), &|_| None),
                &mut lines,
            );
        }
        apply(&l.push("\n", &|_| None), &mut lines);
        assert_eq!(shown(&lines), reload(&format!("{long}\n")));
        assert!(l.pending.is_empty());
    }

    #[test]
    fn resume_ids_round_trip() {
        let mut l = LiveLines::new(0, Style::default(), false);
        l.push("a\n\x1b[1;31mbo", &|_| None);
        let id = l.resume_id(7);
        let (r, seq) = LiveLines::parse_resume_id(&id).expect("parses");
        assert_eq!(seq, 7);
        assert_eq!((r.at, r.open, r.style), (2, true, Style::default()));
        assert_eq!(
            LiveLines::parse_resume_id("10:3").map(|(l, s)| (l.at, l.open, s)),
            Some((10, false, 3))
        );
        assert!(LiveLines::parse_resume_id("10:x").is_none());
    }
}

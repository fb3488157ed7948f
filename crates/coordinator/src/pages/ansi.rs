//! Job output (attacker-written bytes) to HTML lines: SGR colours and bold become classes,
//! carriage-return progress lines collapse to their last state, every other escape or control
//! sequence is dropped, and text is escaped. The output never contains markup the input chose:
//! the only tags are the `<span>`/`<a>` this module writes, with classes and ids it computes.
//!
//! Pure: no I/O, no allocation beyond the output; the style carried from one line to the next
//! is a [`Style`] the caller keeps (a piece of log rendered later continues with it).

use std::fmt::Write as _;

/// The SGR attributes this renderer keeps: 16 colours (256-colour and true-colour values map
/// to the nearest of them: a CSP forbids `style=`, so colours are classes) and four flags.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Style {
    pub fg: Option<u8>,
    pub bg: Option<u8>,
    pub bold: bool,
    pub dim: bool,
    pub italic: bool,
    pub underline: bool,
}

impl Style {
    /// The style as a number (a live page resumes from it: see `pages::live`).
    pub fn code(&self) -> u32 {
        let c = |c: Option<u8>| c.map_or(0, |c| u32::from(c.min(15)) + 1);
        c(self.fg)
            | c(self.bg) << 5
            | u32::from(self.bold) << 10
            | u32::from(self.dim) << 11
            | u32::from(self.italic) << 12
            | u32::from(self.underline) << 13
    }

    /// The style of [`Style::code`]; anything else is the plain style.
    pub fn from_code(code: u32) -> Style {
        if code >= 1 << 14 {
            return Style::default();
        }
        let c = |v: u32| match v & 31 {
            0 => None,
            n => Some((n - 1).min(15) as u8),
        };
        Style {
            fg: c(code),
            bg: c(code >> 5),
            bold: code & 1 << 10 != 0,
            dim: code & 1 << 11 != 0,
            italic: code & 1 << 12 != 0,
            underline: code & 1 << 13 != 0,
        }
    }

    fn is_plain(&self) -> bool {
        *self == Style::default()
    }

    fn classes(&self) -> String {
        let mut c = Vec::new();
        if let Some(f) = self.fg {
            c.push(format!("f{f}"));
        }
        if let Some(b) = self.bg {
            c.push(format!("g{b}"));
        }
        if self.bold {
            c.push("bo".to_owned());
        }
        if self.dim {
            c.push("di".to_owned());
        }
        if self.italic {
            c.push("it".to_owned());
        }
        if self.underline {
            c.push("un".to_owned());
        }
        c.join(" ")
    }

    /// Apply one SGR sequence's parameters (`ESC [ p;…;p m`).
    fn apply(&mut self, params: &[u32]) {
        if params.is_empty() {
            *self = Style::default();
            return;
        }
        let mut i = 0;
        while i < params.len() {
            let p = params[i];
            match p {
                0 => *self = Style::default(),
                1 => self.bold = true,
                2 => self.dim = true,
                3 => self.italic = true,
                4 => self.underline = true,
                22 => {
                    self.bold = false;
                    self.dim = false;
                }
                23 => self.italic = false,
                24 => self.underline = false,
                30..=37 => self.fg = Some((p - 30) as u8),
                39 => self.fg = None,
                40..=47 => self.bg = Some((p - 40) as u8),
                49 => self.bg = None,
                90..=97 => self.fg = Some((p - 90 + 8) as u8),
                100..=107 => self.bg = Some((p - 100 + 8) as u8),
                38 | 48 => {
                    let (colour, used) = extended_colour(&params[i + 1..]);
                    if p == 38 {
                        self.fg = colour.or(self.fg);
                    } else {
                        self.bg = colour.or(self.bg);
                    }
                    i += used;
                }
                _ => {}
            }
            i += 1;
        }
    }
}

/// `5;n` or `2;r;g;b` after a 38/48: the nearest of the 16 colours, and how many parameters
/// it used.
fn extended_colour(rest: &[u32]) -> (Option<u8>, usize) {
    match rest {
        [5, n, ..] => (Some(from_256(*n)), 2),
        [2, r, g, b, ..] => (Some(nearest16(*r, *g, *b)), 4),
        [5] | [2, ..] => (None, rest.len()),
        _ => (None, 0),
    }
}

/// The xterm palette of the 16 basic colours (what the CSS maps each class from).
const BASIC: [(u32, u32, u32); 16] = [
    (0, 0, 0),
    (205, 0, 0),
    (0, 205, 0),
    (205, 205, 0),
    (0, 0, 238),
    (205, 0, 205),
    (0, 205, 205),
    (229, 229, 229),
    (127, 127, 127),
    (255, 0, 0),
    (0, 255, 0),
    (255, 255, 0),
    (92, 92, 255),
    (255, 0, 255),
    (0, 255, 255),
    (255, 255, 255),
];

fn nearest16(r: u32, g: u32, b: u32) -> u8 {
    let (r, g, b) = (r.min(255), g.min(255), b.min(255));
    let mut best = (u32::MAX, 0u8);
    for (i, (pr, pg, pb)) in BASIC.iter().enumerate() {
        let d = r.abs_diff(*pr).pow(2) + g.abs_diff(*pg).pow(2) + b.abs_diff(*pb).pow(2);
        if d < best.0 {
            best = (d, i as u8);
        }
    }
    best.1
}

fn from_256(n: u32) -> u8 {
    match n {
        0..=15 => n as u8,
        16..=231 => {
            let n = n - 16;
            let level = |v: u32| if v == 0 { 0 } else { 55 + v * 40 };
            nearest16(level(n / 36), level((n / 6) % 6), level(n % 6))
        }
        232..=255 => {
            let v = 8 + (n - 232) * 10;
            nearest16(v, v, v)
        }
        _ => 7,
    }
}

/// One piece of a line: plain text in a style, or a carriage return (with the byte index
/// just after it).
enum Tok {
    Text(String),
    Cr(usize),
}

/// Split one line (no `\n`) into text runs and CRs, updating `style` at each SGR; every
/// other escape sequence and control character is dropped. Also returns where an escape
/// sequence the line ends inside (cut off: its rest is still to come) begins.
fn tokens(line: &str, style: &mut Style) -> (Vec<(Style, Tok)>, Option<usize>) {
    let mut out: Vec<(Style, Tok)> = Vec::new();
    let mut text = String::new();
    let mut chars = line.char_indices().peekable();
    let mut cut = None;
    let flush = |text: &mut String, out: &mut Vec<(Style, Tok)>, style: Style| {
        if !text.is_empty() {
            out.push((style, Tok::Text(std::mem::take(text))));
        }
    };
    while let Some((at, c)) = chars.next() {
        match c {
            '\x1b' | '\u{9b}' => {
                let csi = c == '\u{9b}' || chars.peek().map(|p| p.1) == Some('[');
                if c == '\x1b' && csi {
                    chars.next();
                }
                if csi {
                    // Parameters, intermediates, then one final byte.
                    let mut params = String::new();
                    let mut fin = None;
                    let mut stray = false;
                    for (_, d) in chars.by_ref() {
                        if ('\x40'..='\x7e').contains(&d) {
                            fin = Some(d);
                            break;
                        }
                        if !('\x20'..='\x3f').contains(&d) {
                            // Not a CSI after all: stop at the stray character (dropped).
                            stray = true;
                            break;
                        }
                        if params.len() < 64 {
                            params.push(d);
                        }
                    }
                    if fin.is_none() && !stray {
                        cut = Some(at);
                    }
                    if fin == Some('m') {
                        flush(&mut text, &mut out, *style);
                        let ps: Vec<u32> = if params.is_empty() {
                            Vec::new()
                        } else {
                            params
                                .split([';', ':'])
                                .map(|p| p.parse::<u32>().unwrap_or(0))
                                .collect()
                        };
                        style.apply(&ps);
                    }
                } else if c == '\x1b' && chars.peek().map(|p| p.1) == Some(']') {
                    // OSC (titles, hyperlinks): up to BEL or ESC \ — never shown, never a link.
                    chars.next();
                    let mut ended = false;
                    while let Some((_, d)) = chars.next() {
                        if d == '\x07' {
                            ended = true;
                            break;
                        }
                        if d == '\x1b' {
                            chars.next_if(|p| p.1 == '\\');
                            ended = true;
                            break;
                        }
                    }
                    if !ended {
                        cut = Some(at);
                    }
                } else if c == '\x1b' {
                    // A two-character escape (ESC 7, ESC =, …): drop its second character.
                    if chars.next().is_none() {
                        cut = Some(at);
                    }
                }
            }
            '\r' => {
                flush(&mut text, &mut out, *style);
                out.push((*style, Tok::Cr(at + 1)));
            }
            '\t' => text.push(c),
            c if c.is_control() => {}
            c => text.push(c),
        }
    }
    flush(&mut text, &mut out, *style);
    (out, cut)
}

/// Escape text for HTML content and quoted attributes.
pub fn escape_into(out: &mut String, s: &str) {
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
}

/// Where the visible part of a line's tokens starts: after the last carriage return that has
/// text after it (a progress bar's last state; `\r\n` line ends leave the line as it was).
fn visible_from(toks: &[(Style, Tok)]) -> Option<usize> {
    toks.iter()
        .enumerate()
        .filter(|(_, (_, t))| matches!(t, Tok::Cr(_)))
        .map(|(i, _)| i)
        .rfind(|i| {
            toks[i + 1..]
                .iter()
                .any(|(_, t)| matches!(t, Tok::Text(s) if !s.is_empty()))
        })
}

/// The HTML of one line's content (without the line element around it).
pub fn line_html(line: &str, style: &mut Style) -> String {
    line_html_parts(line, style).0
}

/// [`line_html`], and whether a carriage return in `line` hides what came before it — also
/// what an earlier part of the same line showed (a live page clears it).
pub fn line_html_parts(line: &str, style: &mut Style) -> (String, bool) {
    let (toks, _) = tokens(line, style);
    let from = visible_from(&toks);
    let mut out = String::new();
    for (s, t) in toks.into_iter().skip(from.map_or(0, |i| i + 1)) {
        let Tok::Text(text) = t else { continue };
        if s.is_plain() {
            escape_into(&mut out, &text);
        } else {
            let _ = write!(out, "<span class=\"{}\">", s.classes());
            escape_into(&mut out, &text);
            out.push_str("</span>");
        }
    }
    (out, from.is_some())
}

/// The byte index in `line` before which nothing can show any more: just after the last
/// carriage return with text after it (0: none).
pub fn hidden_before(line: &str) -> usize {
    let (toks, _) = tokens(line, &mut Style::default());
    match visible_from(&toks).map(|i| &toks[i].1) {
        Some(Tok::Cr(at)) => *at,
        _ => 0,
    }
}

/// How much of `line` ends outside any escape sequence: all of it unless it ends inside one
/// (cut off, its rest still to come), which then starts at the returned index.
pub fn complete_prefix(line: &str) -> usize {
    tokens(line, &mut Style::default()).1.unwrap_or(line.len())
}

/// Render `text` as line elements numbered from `first_line`:
/// `<span class="l" id="L7"><a href="#L7" data-n="7" tabindex="-1"></a>…\n</span>`.
/// The number shows through CSS (`data-n`), so copying the log copies no numbers. Returns the
/// HTML and the number of lines written. A last line without `\n` is written too.
pub fn render_lines(text: &str, first_line: u64, style: &mut Style) -> (String, u64) {
    render_lines_stamped(text, first_line, style, &mut |_| None)
}

/// [`render_lines`], each line stamped with `data-t="…"` where `stamp` (given the byte
/// index of the line's start in `text`) says (a time: plain text the caller made).
pub fn render_lines_stamped(
    text: &str,
    first_line: u64,
    style: &mut Style,
    stamp: &mut dyn FnMut(usize) -> Option<String>,
) -> (String, u64) {
    let mut out = String::with_capacity(text.len() + text.len() / 2);
    let mut count = 0;
    let body = text.strip_suffix('\n').unwrap_or(text);
    if text.is_empty() {
        return (out, 0);
    }
    let mut at = 0;
    for (n, line) in (first_line..).zip(body.split('\n')) {
        let t = stamp(at)
            .map(|t| {
                let mut a = String::from(" data-t=\"");
                escape_into(&mut a, &t);
                a.push('"');
                a
            })
            .unwrap_or_default();
        let _ = write!(
            out,
            "<span class=\"l\" id=\"L{n}\"{t}><a href=\"#L{n}\" data-n=\"{n}\" tabindex=\"-1\"></a>{}\n</span>",
            line_html(line, style)
        );
        at += line.len() + 1;
        count += 1;
    }
    (out, count)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(s: &str) -> String {
        line_html(s, &mut Style::default())
    }

    #[test]
    fn colours_and_bold_become_classes() {
        assert_eq!(
            one("\x1b[31merror\x1b[0m: x"),
            "<span class=\"f1\">error</span>: x"
        );
        assert_eq!(
            one("\x1b[1;32mok\x1b[22m still green\x1b[39m plain"),
            "<span class=\"f2 bo\">ok</span><span class=\"f2\"> still green</span> plain"
        );
        assert_eq!(one("\x1b[97;41mX\x1b[m"), "<span class=\"f15 g1\">X</span>");
        // 256-colour and true-colour map to the nearest of the 16.
        assert_eq!(one("\x1b[38;5;196mR"), "<span class=\"f9\">R</span>");
        assert_eq!(one("\x1b[38;2;0;200;0mG"), "<span class=\"f2\">G</span>");
        assert_eq!(one("\x1b[38;5;9;1mRB"), "<span class=\"f9 bo\">RB</span>");
    }

    #[test]
    fn style_carries_over_lines_until_reset() {
        let mut st = Style::default();
        let (html, n) = render_lines("\x1b[33mone\ntwo\x1b[0m\nthree\n", 5, &mut st);
        assert_eq!(n, 3);
        assert!(html.contains("id=\"L5\""), "{html}");
        assert!(html.contains("<span class=\"f3\">one</span>\n"), "{html}");
        assert!(html.contains("<span class=\"f3\">two</span>\n"), "{html}");
        assert!(html.contains("></a>three\n</span>"), "{html}");
        assert!(st.is_plain());
        // A piece rendered later continues with the style left open.
        let mut st = Style::default();
        render_lines("\x1b[1mbold", 1, &mut st);
        let (html, _) = render_lines("more\n", 2, &mut st);
        assert!(html.contains("<span class=\"bo\">more</span>"), "{html}");
    }

    #[test]
    fn carriage_returns_collapse_to_the_last_state() {
        assert_eq!(one("  0%\r 50%\r100% done"), "100% done");
        // A CRLF line end keeps the line.
        assert_eq!(one("downloaded\r"), "downloaded");
        assert_eq!(one("a\rb\r\r"), "b");
        // Colour set before the CR still applies after it.
        assert_eq!(
            one("\x1b[32m 1%\r100%\x1b[0m"),
            "<span class=\"f2\">100%</span>"
        );
        let (html, n) = render_lines("x 1/3\rx 2/3\rx 3/3\nnext\r\n", 1, &mut Style::default());
        assert_eq!(n, 2);
        assert!(!html.contains("1/3") && html.contains("x 3/3"), "{html}");
    }

    #[test]
    fn markup_is_escaped_and_never_injected() {
        assert_eq!(
            one("<script>alert('x')</script> & \"q\""),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;q&quot;"
        );
        // Escape sequences cannot smuggle markup: parameters are numbers or dropped.
        let hostile = [
            "\x1b[31;<img src=x onerror=alert(1)>m",
            "\x1b]8;;javascript:alert(1)\x1b\\click\x1b]8;;\x1b\\",
            "\x1b]0;<title>\x07after",
            "\x1b[38;5;999999999999mbig",
            "\x1b[\"><script>m",
            "\u{9b}31m<b>",
            "\x1b",
            "\x1b[",
            "\x1b[999999999999999999999999999999m",
        ];
        for h in hostile {
            let out = one(h);
            let stripped = out
                .replace("<span class=\"", "")
                .replace("\">", "")
                .replace("</span>", "");
            assert!(
                !stripped.contains('<') && !stripped.contains('>') && !out.contains('\x1b'),
                "{h:?} → {out:?}"
            );
            for class in out.split("class=\"").skip(1) {
                let class = class.split('"').next().unwrap_or("");
                assert!(
                    class
                        .split(' ')
                        .all(|c| c.chars().all(|x| x.is_ascii_alphanumeric())),
                    "{h:?} → {out:?}"
                );
            }
        }
        assert_eq!(one("\x1b]8;;https://e.x\x1b\\link\x1b]8;;\x1b\\"), "link");
        assert_eq!(one("\x1b]0;<title>\x07after"), "after");
        // Cursor movement and other controls vanish; tabs stay.
        assert_eq!(one("a\x1b[2Kb\x1b[1Ac\x08\x00d\te"), "abcd\te");
    }

    #[test]
    fn lines_are_numbered_linked_and_counted() {
        let (html, n) = render_lines("a\nb", 41, &mut Style::default());
        assert_eq!(n, 2);
        assert_eq!(
            html,
            "<span class=\"l\" id=\"L41\"><a href=\"#L41\" data-n=\"41\" tabindex=\"-1\"></a>a\n</span>\
             <span class=\"l\" id=\"L42\"><a href=\"#L42\" data-n=\"42\" tabindex=\"-1\"></a>b\n</span>"
        );
        assert_eq!(render_lines("", 1, &mut Style::default()).1, 0);
        assert_eq!(render_lines("\n", 1, &mut Style::default()).1, 1);
    }
}

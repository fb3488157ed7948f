//! A YAML tree that remembers where every node came from.
//!
//! The compiler walks this tree instead of deserializing straight into typed structs, so that
//! every error can point at `file:line:col` and name the key path, and so that the later
//! compiler stages (parameters, commands, matrices) can rewrite nodes without losing positions.

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_saphyr::Spanned;
use std::fmt;

/// Where a node starts in its file (1-based).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Pos {
    pub line: u64,
    pub col: u64,
    /// Which file: an index into the compiler's file table (0 = the config itself). Nodes from
    /// vendored orbs are inlined into the config's jobs, so each node must know its own file.
    pub file: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Seq(Vec<Node>),
    /// Keys keep their own positions; order is the file's order.
    Map(Vec<(Node, Node)>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub value: Value,
    pub pos: Pos,
}

impl Node {
    pub fn as_str(&self) -> Option<&str> {
        match &self.value {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    /// Scalars as CircleCI treats them in string contexts (`environment: {N: 1}` is "1").
    pub fn scalar_string(&self) -> Option<String> {
        match &self.value {
            Value::Str(s) => Some(s.clone()),
            Value::Bool(b) => Some(b.to_string()),
            Value::Int(i) => Some(i.to_string()),
            Value::Float(f) => Some(f.to_string()),
            Value::Null => Some(String::new()),
            _ => None,
        }
    }

    pub fn as_map(&self) -> Option<&[(Node, Node)]> {
        match &self.value {
            Value::Map(m) => Some(m),
            _ => None,
        }
    }

    pub fn as_seq(&self) -> Option<&[Node]> {
        match &self.value {
            Value::Seq(s) => Some(s),
            _ => None,
        }
    }

    pub fn get(&self, key: &str) -> Option<&Node> {
        self.as_map()?
            .iter()
            .find(|(k, _)| k.as_str() == Some(key))
            .map(|(_, v)| v)
    }

    /// A short description of what this node is, for "expected X, found Y" messages.
    pub fn kind(&self) -> &'static str {
        match &self.value {
            Value::Null => "null",
            Value::Bool(_) => "a boolean",
            Value::Int(_) => "an integer",
            Value::Float(_) => "a number",
            Value::Str(_) => "a string",
            Value::Seq(_) => "a list",
            Value::Map(_) => "a mapping",
        }
    }
}

/// Parse YAML text into a positioned tree. Anchors, aliases and `<<` merge keys are resolved by
/// the parser; alias expansion is budgeted by serde-saphyr, so an alias bomb is an error, not
/// an out-of-memory.
///
/// Booleans follow CircleCI's parser (SnakeYAML, YAML 1.1 without `y`/`n`): plain `true`,
/// `false`, `yes`, `no`, `on`, `off` (lower, Capitalised or UPPER case) are booleans; `y`, `n`,
/// `Y`, `N`, `yEs` and every quoted spelling are strings. Mapping *keys* are always strings, so
/// a matrix parameter or environment variable may be named `n` or `on`.
pub fn parse(text: &str) -> Result<Node, YamlError> {
    super::with_big_stack(|| parse_file(text, 0))
}

/// serde-saphyr's YAML 1.1 booleans include `y`/`n`, which CircleCI reads as strings, so the
/// parser runs with YAML 1.2 core booleans (`strict_booleans`: only `true`/`false`) and the
/// other SnakeYAML spellings are turned into booleans afterwards, when written plain.
fn options() -> serde_saphyr::Options {
    serde_saphyr::options! {
        strict_booleans: true,
        // `.nan` / `.inf` as text: nothing in a config needs them as numbers.
        non_finite_float_policy: serde_saphyr::options::NonFiniteFloatPolicy::AsString,
    }
}

/// SnakeYAML's boolean spellings beyond YAML 1.2's `true`/`false`.
fn yaml11_word_bool(s: &str) -> Option<bool> {
    match s {
        "yes" | "Yes" | "YES" | "on" | "On" | "ON" => Some(true),
        "no" | "No" | "NO" | "off" | "Off" | "OFF" => Some(false),
        _ => None,
    }
}

thread_local! {
    /// The text being parsed, so the visitor can tell plain `yes` from quoted `"yes"`.
    static SOURCE: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
}

/// Whether the scalar defined at byte `offset` is written plain (not quoted, not a block).
fn plain_at(offset: Option<u64>) -> bool {
    let Some(off) = offset.and_then(|o| usize::try_from(o).ok()) else {
        return false;
    };
    SOURCE.with(|s| {
        let s = s.borrow();
        let starts_plain = s
            .get(off..)
            .and_then(|rest| rest.chars().next())
            .is_some_and(|c| !matches!(c, '"' | '\'' | '|' | '>' | '!' | '&' | '*'));
        // A block scalar (`|-`, `>`) is located at its content: look at the header before it.
        let header = s.get(..off).unwrap_or("").trim_end();
        let last = header.rsplit('\n').next().unwrap_or("");
        let last = last.split(" #").next().unwrap_or(last).trim_end();
        let token = last.rsplit([' ', '\t']).next().unwrap_or("");
        let block = token.starts_with(['|', '>'])
            && token[1..]
                .chars()
                .all(|c| matches!(c, '-' | '+' | '1'..='9'));
        starts_plain && !block
    })
}

/// [`parse`], tagging every node with `file`.
pub fn parse_file(text: &str, file: u32) -> Result<Node, YamlError> {
    SOURCE.with(|s| {
        let mut s = s.borrow_mut();
        s.clear();
        s.push_str(text);
    });
    let parsed = serde_saphyr::from_str_with_options::<Spanned<Value>>(text, options());
    SOURCE.with(|s| {
        let mut s = s.borrow_mut();
        s.clear();
        s.shrink_to(64 * 1024);
    });
    let spanned = parsed.map_err(|e| YamlError::from_saphyr(&e))?;
    let mut node = from_spanned(spanned);
    if file != 0 {
        node.set_file(file);
    }
    Ok(node)
}

impl Node {
    pub fn new(value: Value, pos: Pos) -> Node {
        Node { value, pos }
    }

    pub fn str(s: impl Into<String>, pos: Pos) -> Node {
        Node::new(Value::Str(s.into()), pos)
    }

    fn set_file(&mut self, file: u32) {
        self.pos.file = file;
        match &mut self.value {
            Value::Seq(items) => items.iter_mut().for_each(|n| n.set_file(file)),
            Value::Map(m) => m.iter_mut().for_each(|(k, v)| {
                k.set_file(file);
                v.set_file(file);
            }),
            _ => {}
        }
    }
}

/// Emits the tree as plain YAML (positions dropped) for `config process`.
impl serde::Serialize for Node {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::{SerializeMap, SerializeSeq};
        match &self.value {
            Value::Null => s.serialize_unit(),
            Value::Bool(b) => s.serialize_bool(*b),
            Value::Int(i) => s.serialize_i64(*i),
            Value::Float(f) => s.serialize_f64(*f),
            Value::Str(v) => s.serialize_str(v),
            Value::Seq(items) => {
                let mut seq = s.serialize_seq(Some(items.len()))?;
                for i in items {
                    seq.serialize_element(i)?;
                }
                seq.end()
            }
            Value::Map(m) => {
                let mut map = s.serialize_map(Some(m.len()))?;
                for (k, v) in m {
                    map.serialize_entry(k, v)?;
                }
                map.end()
            }
        }
    }
}

/// A YAML syntax error: where, and what, without serde-saphyr's source snippet.
#[derive(Debug, Clone)]
pub struct YamlError {
    pub message: String,
    pub line: u64,
    pub col: u64,
}

impl YamlError {
    fn from_saphyr(e: &serde_saphyr::Error) -> YamlError {
        let (line, col) = e
            .location()
            .map(|l| (l.line().max(1), l.column().max(1)))
            .unwrap_or((1, 1));
        let full = e.without_snippet().to_string();
        let first = full.lines().next().unwrap_or("").trim();
        // "error: line 8 column 6: while parsing …" → "while parsing …".
        let mut message = first.strip_prefix("error:").unwrap_or(first).trim();
        if let Some(rest) = message.strip_prefix("line ") {
            if let Some((_, after)) = rest.split_once(": ") {
                message = after;
            }
        }
        let mut message = message
            .replace(", set DuplicateKeyPolicy in Options if acceptable", "")
            .trim()
            .to_owned();
        // The position is reported separately: drop a trailing " at line L, column C".
        if let Some(i) = message.rfind(" at line ") {
            if message[i + 9..]
                .chars()
                .all(|c| c.is_ascii_digit() || matches!(c, ',' | ' ') || c.is_alphabetic())
            {
                message.truncate(i);
            }
        }
        YamlError {
            message: if message.is_empty() {
                full.trim().to_owned()
            } else {
                message
            },
            line,
            col,
        }
    }
}

impl fmt::Display for YamlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

fn from_spanned(s: Spanned<Value>) -> Node {
    let offset = s.defined.span().byte_offset();
    let mut n = from_spanned_key(s);
    if let Value::Str(text) = &n.value {
        if let Some(b) = yaml11_word_bool(text) {
            if plain_at(offset) {
                n.value = Value::Bool(b);
            }
        }
    }
    n
}

/// A mapping key: never turned into a boolean.
fn from_spanned_key(s: Spanned<Value>) -> Node {
    Node {
        pos: Pos {
            line: s.referenced.line(),
            col: s.referenced.column(),
            file: 0,
        },
        value: s.value,
    }
}

impl<'de> Deserialize<'de> for Value {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ValueVisitor)
    }
}

struct ValueVisitor;

impl<'de> Visitor<'de> for ValueVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any YAML value")
    }
    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        Value::deserialize(d)
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Int(v))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
        Ok(i64::try_from(v)
            .map(Value::Int)
            .unwrap_or(Value::Float(v as f64)))
    }
    fn visit_i128<E: de::Error>(self, v: i128) -> Result<Value, E> {
        Ok(i64::try_from(v)
            .map(Value::Int)
            .unwrap_or(Value::Float(v as f64)))
    }
    fn visit_u128<E: de::Error>(self, v: u128) -> Result<Value, E> {
        Ok(i64::try_from(v)
            .map(Value::Int)
            .unwrap_or(Value::Float(v as f64)))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        Ok(Value::Float(v))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
        Ok(Value::Str(v.to_owned()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Value, E> {
        Ok(Value::Str(v))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::new();
        while let Some(item) = seq.next_element::<Spanned<Value>>()? {
            out.push(from_spanned(item));
        }
        Ok(Value::Seq(out))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out: Vec<(Node, Node)> = Vec::new();
        while let Some((k, v)) = map.next_entry::<Spanned<Value>, Spanned<Value>>()? {
            let (k, v) = (from_spanned_key(k), from_spanned(v));
            // A later key replaces an earlier one, which is what `<<` merges rely on.
            if let Some(slot) = out.iter_mut().find(|(ek, _)| ek.value == k.value) {
                slot.1 = v;
            } else {
                out.push((k, v));
            }
        }
        Ok(Value::Map(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_anchors_and_merge_keys() {
        let text = "base: &b\n  image: debian\n  user: root\njob:\n  <<: *b\n  user: circleci\n";
        let n = parse(text).expect("parses");
        let job = n.get("job").expect("job");
        assert_eq!(job.get("image").and_then(Node::as_str), Some("debian"));
        assert_eq!(job.get("user").and_then(Node::as_str), Some("circleci"));
        let user = job.get("user").expect("user");
        assert_eq!(user.pos.line, 6);
        assert_eq!(user.pos.col, 9);
    }

    #[test]
    fn syntax_error_is_reported_not_panicked() {
        assert!(parse("a: [1, 2\nb: :").is_err());
    }
}

//! CircleCI's expression language for context restrictions, pure: a tokenizer, a
//! recursive-descent parser into a typed tree ([`Expr`]), and its evaluation against a
//! pipeline's values ([`Facts`]). What the parser does not know (a variable, an operator, a
//! stray character) is refused with its column, so an operator's typo never becomes a
//! restriction that quietly allows or denies everything.
//!
//! The grammar, lowest precedence first (CircleCI's expressions reference):
//!
//! ```text
//! expr       := or
//! or         := and ("or" and)*
//! and        := not ("and" not)*
//! not        := "not" not | comparison
//! comparison := operand (("==" | "!=" | "=~" | "starts-with" | "<" | "<=" | ">" | ">=") operand)?
//! operand    := STRING | NUMBER | "true" | "false" | "null" | VARIABLE | "(" expr ")"
//! ```
//!
//! Strings are double-quoted with `\"` and `\\` escapes (CircleCI's); whitespace, tabs and
//! newlines separate tokens and mean nothing else. `=~` matches the whole value against the
//! regular expression on its right (anchored, as branch filters are: `=~ "main"` does not
//! match `not-main`), which must be a string literal, compiled when parsed.

use std::fmt;

/// A pipeline value the restrictions may read (CircleCI: pipeline values, not pipeline
/// parameters, plus `job.ssh.enabled`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Var {
    PipelineId,
    PipelineNumber,
    ProjectGitUrl,
    ProjectType,
    ProjectSlug,
    GitTag,
    GitBranch,
    GitRevision,
    GitBaseRevision,
    TriggerSource,
    TriggerType,
    EventName,
    EventAction,
    ConfigSource,
    ScheduleName,
    ScheduleId,
    JobSshEnabled,
}

impl Var {
    /// Every variable with its name, the one table both directions read.
    pub const ALL: &'static [(Var, &'static str)] = &[
        (Var::PipelineId, "pipeline.id"),
        (Var::PipelineNumber, "pipeline.number"),
        (Var::ProjectGitUrl, "pipeline.project.git_url"),
        (Var::ProjectType, "pipeline.project.type"),
        (Var::ProjectSlug, "pipeline.project.slug"),
        (Var::GitTag, "pipeline.git.tag"),
        (Var::GitBranch, "pipeline.git.branch"),
        (Var::GitRevision, "pipeline.git.revision"),
        (Var::GitBaseRevision, "pipeline.git.base_revision"),
        (Var::TriggerSource, "pipeline.trigger_source"),
        (Var::TriggerType, "pipeline.trigger.type"),
        (Var::EventName, "pipeline.event.name"),
        (Var::EventAction, "pipeline.event.action"),
        (Var::ConfigSource, "pipeline.config_source"),
        (Var::ScheduleName, "pipeline.schedule.name"),
        (Var::ScheduleId, "pipeline.schedule.id"),
        (Var::JobSshEnabled, "job.ssh.enabled"),
    ];

    pub fn name(self) -> &'static str {
        Var::ALL
            .iter()
            .find(|(v, _)| *v == self)
            .map(|(_, n)| *n)
            .unwrap_or("?")
    }

    fn from_name(s: &str) -> Option<Var> {
        Var::ALL.iter().find(|(_, n)| *n == s).map(|(v, _)| *v)
    }
}

/// A value an expression computes with.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Number(i64),
    Str(String),
}

impl Value {
    fn truthy(&self) -> bool {
        match self {
            Value::Null => false,
            Value::Bool(b) => *b,
            Value::Number(n) => *n != 0,
            Value::Str(s) => !s.is_empty(),
        }
    }
}

/// A comparison's operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmpOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    StartsWith,
}

impl CmpOp {
    fn as_str(self) -> &'static str {
        match self {
            CmpOp::Eq => "==",
            CmpOp::Ne => "!=",
            CmpOp::Lt => "<",
            CmpOp::Le => "<=",
            CmpOp::Gt => ">",
            CmpOp::Ge => ">=",
            CmpOp::StartsWith => "starts-with",
        }
    }
}

/// A parsed expression.
#[derive(Debug, Clone)]
pub enum Expr {
    Lit(Value),
    Var(Var),
    Not(Box<Expr>),
    And(Box<Expr>, Box<Expr>),
    Or(Box<Expr>, Box<Expr>),
    Cmp(CmpOp, Box<Expr>, Box<Expr>),
    /// `left =~ "pattern"`: the pattern as written and compiled (anchored).
    Matches(Box<Expr>, String, regex::Regex),
}

impl PartialEq for Expr {
    fn eq(&self, other: &Expr) -> bool {
        match (self, other) {
            (Expr::Lit(a), Expr::Lit(b)) => a == b,
            (Expr::Var(a), Expr::Var(b)) => a == b,
            (Expr::Not(a), Expr::Not(b)) => a == b,
            (Expr::And(a, b), Expr::And(c, d)) | (Expr::Or(a, b), Expr::Or(c, d)) => {
                a == c && b == d
            }
            (Expr::Cmp(o, a, b), Expr::Cmp(p, c, d)) => o == p && a == c && b == d,
            (Expr::Matches(a, p, _), Expr::Matches(b, q, _)) => a == b && p == q,
            _ => false,
        }
    }
}

/// Why an expression was refused: the column (1-based, in characters) and what was wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("column {column}: {message}")]
pub struct ParseError {
    pub column: usize,
    pub message: String,
}

/// Longest expression accepted: it is an operator's rule, not a program.
pub const MAX_LEN: usize = 4096;
/// Deepest nesting accepted (parentheses and `not`), so that hostile input cannot exhaust
/// the stack of the recursive parser.
pub const MAX_DEPTH: usize = 64;

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Str(String),
    Num(i64),
    Ident(String),
    LParen,
    RParen,
    Op(&'static str),
}

/// The tokens of `src`, each with its column.
fn tokenize(src: &str) -> Result<Vec<(Tok, usize)>, ParseError> {
    let chars: Vec<char> = src.chars().collect();
    let err = |column: usize, message: String| ParseError { column, message };
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let col = i + 1;
        if c.is_whitespace() {
            i += 1;
            continue;
        }
        match c {
            '(' => {
                out.push((Tok::LParen, col));
                i += 1;
            }
            ')' => {
                out.push((Tok::RParen, col));
                i += 1;
            }
            '"' => {
                let mut s = String::new();
                i += 1;
                loop {
                    match chars.get(i) {
                        None => return Err(err(col, "unterminated string".into())),
                        Some('"') => {
                            i += 1;
                            break;
                        }
                        Some('\\') => match chars.get(i + 1) {
                            Some(e @ ('"' | '\\')) => {
                                s.push(*e);
                                i += 2;
                            }
                            _ => {
                                return Err(err(
                                    i + 1,
                                    "unknown escape in a string: only \\\" and \\\\ are known"
                                        .into(),
                                ))
                            }
                        },
                        Some(ch) => {
                            s.push(*ch);
                            i += 1;
                        }
                    }
                }
                out.push((Tok::Str(s), col));
            }
            '=' | '!' | '<' | '>' => {
                let next = chars.get(i + 1).copied();
                let (op, len) = match (c, next) {
                    ('=', Some('=')) => ("==", 2),
                    ('=', Some('~')) => ("=~", 2),
                    ('!', Some('=')) => ("!=", 2),
                    ('<', Some('=')) => ("<=", 2),
                    ('>', Some('=')) => (">=", 2),
                    ('<', _) => ("<", 1),
                    ('>', _) => (">", 1),
                    _ => {
                        return Err(err(
                            col,
                            format!(
                                "unknown operator `{c}`: expected ==, !=, =~, <, <=, >, >=, \
                                 starts-with, and, or, not"
                            ),
                        ))
                    }
                };
                out.push((Tok::Op(op), col));
                i += len;
            }
            '0'..='9' | '-' => {
                let start = i;
                i += 1;
                while chars.get(i).is_some_and(|d| d.is_ascii_digit()) {
                    i += 1;
                }
                let text: String = chars[start..i].iter().collect();
                let n = text
                    .parse::<i64>()
                    .map_err(|_| err(col, format!("`{text}` is not a number")))?;
                out.push((Tok::Num(n), col));
            }
            c if c.is_ascii_alphabetic() || c == '_' => {
                let start = i;
                while chars
                    .get(i)
                    .is_some_and(|d| d.is_ascii_alphanumeric() || matches!(d, '_' | '.' | '-'))
                {
                    i += 1;
                }
                let word: String = chars[start..i].iter().collect();
                out.push((Tok::Ident(word), col));
            }
            other => {
                return Err(err(
                    col,
                    format!("unexpected character `{}`", other.escape_default()),
                ))
            }
        }
    }
    Ok(out)
}

struct Parser {
    toks: Vec<(Tok, usize)>,
    pos: usize,
    /// Column just past the end, for errors at the end.
    end: usize,
    depth: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos).map(|(t, _)| t)
    }

    fn column(&self) -> usize {
        self.toks.get(self.pos).map(|(_, c)| *c).unwrap_or(self.end)
    }

    fn err<T>(&self, message: impl Into<String>) -> Result<T, ParseError> {
        Err(ParseError {
            column: self.column(),
            message: message.into(),
        })
    }

    fn keyword(&self, word: &str) -> bool {
        matches!(self.peek(), Some(Tok::Ident(w)) if w == word)
    }

    fn deeper(&mut self) -> Result<(), ParseError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return self.err(format!("nested deeper than {MAX_DEPTH} levels"));
        }
        Ok(())
    }

    fn or(&mut self) -> Result<Expr, ParseError> {
        let mut left = self.and()?;
        while self.keyword("or") {
            self.pos += 1;
            let right = self.and()?;
            left = Expr::Or(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn and(&mut self) -> Result<Expr, ParseError> {
        let mut left = self.not()?;
        while self.keyword("and") {
            self.pos += 1;
            let right = self.not()?;
            left = Expr::And(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn not(&mut self) -> Result<Expr, ParseError> {
        if self.keyword("not") {
            self.pos += 1;
            self.deeper()?;
            let inner = self.not()?;
            self.depth -= 1;
            return Ok(Expr::Not(Box::new(inner)));
        }
        self.comparison()
    }

    fn comparison(&mut self) -> Result<Expr, ParseError> {
        let left = self.operand()?;
        let op = match self.peek() {
            Some(Tok::Op("==")) => CmpOp::Eq,
            Some(Tok::Op("!=")) => CmpOp::Ne,
            Some(Tok::Op("<")) => CmpOp::Lt,
            Some(Tok::Op("<=")) => CmpOp::Le,
            Some(Tok::Op(">")) => CmpOp::Gt,
            Some(Tok::Op(">=")) => CmpOp::Ge,
            Some(Tok::Ident(w)) if w == "starts-with" => CmpOp::StartsWith,
            Some(Tok::Op("=~")) => {
                self.pos += 1;
                let col = self.column();
                let Some(Tok::Str(pattern)) = self.peek().cloned() else {
                    return self.err("=~ takes a string literal (the regular expression)");
                };
                self.pos += 1;
                let re =
                    regex::Regex::new(&format!("^(?:{pattern})$")).map_err(|e| ParseError {
                        column: col,
                        message: format!("not a regular expression: {e}"),
                    })?;
                return Ok(Expr::Matches(Box::new(left), pattern, re));
            }
            _ => return Ok(left),
        };
        self.pos += 1;
        let right = self.operand()?;
        Ok(Expr::Cmp(op, Box::new(left), Box::new(right)))
    }

    fn operand(&mut self) -> Result<Expr, ParseError> {
        let Some(tok) = self.peek().cloned() else {
            return self.err("the expression ends where a value was expected");
        };
        let col = self.column();
        self.pos += 1;
        Ok(match tok {
            Tok::Str(s) => Expr::Lit(Value::Str(s)),
            Tok::Num(n) => Expr::Lit(Value::Number(n)),
            Tok::LParen => {
                self.deeper()?;
                let inner = self.or()?;
                self.depth -= 1;
                if self.peek() != Some(&Tok::RParen) {
                    return self.err("expected `)`");
                }
                self.pos += 1;
                inner
            }
            Tok::Ident(w) => match w.as_str() {
                "true" => Expr::Lit(Value::Bool(true)),
                "false" => Expr::Lit(Value::Bool(false)),
                "null" => Expr::Lit(Value::Null),
                "and" | "or" | "not" | "starts-with" => {
                    self.pos -= 1;
                    return self.err(format!("expected a value before `{w}`"));
                }
                name => match Var::from_name(name) {
                    Some(v) => Expr::Var(v),
                    None => {
                        return Err(ParseError {
                            column: col,
                            message: format!(
                                "unknown variable `{name}`; known: {}",
                                Var::ALL
                                    .iter()
                                    .map(|(_, n)| *n)
                                    .collect::<Vec<_>>()
                                    .join(", ")
                            ),
                        })
                    }
                },
            },
            Tok::RParen => {
                self.pos -= 1;
                return self.err("unexpected `)`");
            }
            Tok::Op(op) => {
                self.pos -= 1;
                return self.err(format!("expected a value before `{op}`"));
            }
        })
    }
}

/// Parse an expression restriction.
pub fn parse(src: &str) -> Result<Expr, ParseError> {
    if src.chars().count() > MAX_LEN {
        return Err(ParseError {
            column: MAX_LEN + 1,
            message: format!("longer than {MAX_LEN} characters"),
        });
    }
    let toks = tokenize(src)?;
    if toks.is_empty() {
        return Err(ParseError {
            column: 1,
            message: "the expression is empty".into(),
        });
    }
    let mut p = Parser {
        toks,
        pos: 0,
        end: src.chars().count() + 1,
        depth: 0,
    };
    let e = p.or()?;
    if p.pos < p.toks.len() {
        return p.err("expected `and`, `or` or the end of the expression");
    }
    Ok(e)
}

/// What a restriction is evaluated against: a pipeline's values (absent ones are `null`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Facts {
    pub values: Vec<(Var, Value)>,
}

impl Facts {
    pub fn set(&mut self, var: Var, value: Value) -> &mut Facts {
        self.values.retain(|(v, _)| *v != var);
        self.values.push((var, value));
        self
    }

    /// A string value, or `null` when absent.
    pub fn text(&mut self, var: Var, value: Option<&str>) -> &mut Facts {
        let v = value.map_or(Value::Null, |s| Value::Str(s.to_owned()));
        self.set(var, v)
    }

    fn get(&self, var: Var) -> Value {
        self.values
            .iter()
            .find(|(v, _)| *v == var)
            .map(|(_, x)| x.clone())
            .unwrap_or(Value::Null)
    }
}

fn value(e: &Expr, f: &Facts) -> Value {
    match e {
        Expr::Lit(v) => v.clone(),
        Expr::Var(v) => f.get(*v),
        other => Value::Bool(eval(other, f)),
    }
}

/// Whether the pipeline meets the expression. Comparisons of different kinds are false
/// (`==`) or true (`!=`), never an error: a value a pipeline lacks is `null`.
pub fn eval(e: &Expr, f: &Facts) -> bool {
    match e {
        Expr::Lit(v) => v.truthy(),
        Expr::Var(v) => f.get(*v).truthy(),
        Expr::Not(x) => !eval(x, f),
        Expr::And(a, b) => eval(a, f) && eval(b, f),
        Expr::Or(a, b) => eval(a, f) || eval(b, f),
        Expr::Matches(x, _, re) => match value(x, f) {
            Value::Str(s) => re.is_match(&s),
            _ => false,
        },
        Expr::Cmp(op, a, b) => {
            let (a, b) = (value(a, f), value(b, f));
            match op {
                CmpOp::Eq => a == b,
                CmpOp::Ne => a != b,
                CmpOp::StartsWith => match (a, b) {
                    (Value::Str(s), Value::Str(p)) => s.starts_with(&p),
                    _ => false,
                },
                CmpOp::Lt | CmpOp::Le | CmpOp::Gt | CmpOp::Ge => {
                    let ord = match (a, b) {
                        (Value::Number(x), Value::Number(y)) => x.cmp(&y),
                        (Value::Str(x), Value::Str(y)) => x.cmp(&y),
                        _ => return false,
                    };
                    match op {
                        CmpOp::Lt => ord.is_lt(),
                        CmpOp::Le => ord.is_le(),
                        CmpOp::Gt => ord.is_gt(),
                        _ => ord.is_ge(),
                    }
                }
            }
        }
    }
}

/// The expression written back in the language, fully parenthesised: what the property test
/// parses again.
impl fmt::Display for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let quote = |s: &str| format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""));
        match self {
            Expr::Lit(Value::Null) => f.write_str("null"),
            Expr::Lit(Value::Bool(b)) => write!(f, "{b}"),
            Expr::Lit(Value::Number(n)) => write!(f, "{n}"),
            Expr::Lit(Value::Str(s)) => f.write_str(&quote(s)),
            Expr::Var(v) => f.write_str(v.name()),
            Expr::Not(x) => write!(f, "not ({x})"),
            Expr::And(a, b) => write!(f, "({a}) and ({b})"),
            Expr::Or(a, b) => write!(f, "({a}) or ({b})"),
            Expr::Cmp(op, a, b) => write!(f, "({a}) {} ({b})", op.as_str()),
            Expr::Matches(a, p, _) => write!(f, "({a}) =~ {}", quote(p)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(branch: Option<&str>, tag: Option<&str>) -> Facts {
        let mut f = Facts::default();
        f.text(Var::GitBranch, branch)
            .text(Var::GitTag, tag)
            .text(Var::ProjectSlug, Some("bb/acme/widget"))
            .set(Var::PipelineNumber, Value::Number(12))
            .set(Var::JobSshEnabled, Value::Bool(false));
        f
    }

    fn check(src: &str, f: &Facts) -> bool {
        eval(&parse(src).unwrap_or_else(|e| panic!("{src}: {e}")), f)
    }

    #[test]
    fn circleci_examples_evaluate_as_documented() {
        let main = facts(Some("main"), None);
        let feature = facts(Some("feature/x"), None);
        let e = r#"pipeline.git.branch == "main" and not job.ssh.enabled
            and not (pipeline.config_source starts-with "api")"#;
        assert!(check(e, &main));
        assert!(!check(e, &feature));
        assert!(check(
            r#"pipeline.git.branch starts-with "feature/""#,
            &feature
        ));
        assert!(check(r#"pipeline.git.branch != "main""#, &feature));
        assert!(check(r#"pipeline.git.branch =~ "feat.*/x""#, &feature));
        // Anchored: a pattern matches the whole value.
        assert!(!check(
            r#"pipeline.git.branch =~ "main""#,
            &facts(Some("not-main"), None)
        ));
        assert!(check(
            r#"pipeline.number >= 10 and pipeline.number < 13"#,
            &main
        ));
        // `and` binds tighter than `or`; `not` tighter than both.
        assert!(check(r#"true or false and false"#, &main));
        assert!(!check(r#"(true or false) and false"#, &main));
        assert!(!check(r#"not true and true"#, &main));
        // A value the pipeline lacks is null.
        assert!(check(r#"pipeline.git.tag == null"#, &main));
        assert!(!check(r#"pipeline.git.tag starts-with "v""#, &main));
        assert!(!check(r#"pipeline.git.tag =~ "v.*""#, &main));
        assert!(check(
            r#"pipeline.git.tag =~ "v[0-9]+\\.[0-9]+""#,
            &facts(None, Some("v1.2"))
        ));
        assert!(check(r#""a \"q\" b" == "a \"q\" b""#, &main));
    }

    #[test]
    fn what_the_parser_does_not_know_is_refused_with_its_column() {
        for (src, column, needle) in [
            ("", 1, "empty"),
            (
                "pipeline.git.brnch == \"main\"",
                1,
                "unknown variable `pipeline.git.brnch`",
            ),
            ("pipeline.parameters.x == 1", 1, "unknown variable"),
            ("pipeline.git.branch = \"main\"", 21, "unknown operator"),
            ("pipeline.git.branch == \"main", 24, "unterminated"),
            ("pipeline.git.branch ==", 23, "ends where a value"),
            ("(pipeline.git.branch == \"x\"", 28, "expected `)`"),
            (
                "pipeline.git.branch == \"x\" && true",
                28,
                "unexpected character `&`",
            ),
            (
                "pipeline.git.branch == \"x\" true",
                28,
                "expected `and`, `or`",
            ),
            (
                "pipeline.git.branch =~ pipeline.git.tag",
                24,
                "string literal",
            ),
            (
                "pipeline.git.branch =~ \"(\"",
                24,
                "not a regular expression",
            ),
            ("and true", 1, "expected a value before `and`"),
            ("\"\\n\"", 2, "unknown escape"),
            (")", 1, "unexpected `)`"),
        ] {
            let e = parse(src).expect_err(src);
            assert_eq!(e.column, column, "{src}: {e}");
            assert!(e.message.contains(needle), "{src}: {e}");
        }
        let deep = format!("{}true{}", "(".repeat(100), ")".repeat(100));
        assert!(parse(&deep).expect_err("deep").message.contains("nested"));
        let nots = format!("{}true", "not ".repeat(100));
        assert!(parse(&nots).expect_err("nots").message.contains("nested"));
        assert!(parse(&"x".repeat(MAX_LEN + 1)).is_err());
    }

    mod prop {
        use super::*;
        use proptest::prelude::*;

        fn leaf() -> impl Strategy<Value = Expr> {
            prop_oneof![
                any::<bool>().prop_map(|b| Expr::Lit(Value::Bool(b))),
                (-1000i64..1000).prop_map(|n| Expr::Lit(Value::Number(n))),
                "[a-z\"\\\\/ .-]{0,8}".prop_map(|s| Expr::Lit(Value::Str(s))),
                Just(Expr::Lit(Value::Null)),
                proptest::sample::select(Var::ALL.to_vec()).prop_map(|(v, _)| Expr::Var(v)),
            ]
        }

        fn expr() -> impl Strategy<Value = Expr> {
            leaf().prop_recursive(6, 48, 2, |inner| {
                let ops = proptest::sample::select(vec![
                    CmpOp::Eq,
                    CmpOp::Ne,
                    CmpOp::Lt,
                    CmpOp::Le,
                    CmpOp::Gt,
                    CmpOp::Ge,
                    CmpOp::StartsWith,
                ]);
                prop_oneof![
                    inner.clone().prop_map(|x| Expr::Not(Box::new(x))),
                    (inner.clone(), inner.clone())
                        .prop_map(|(a, b)| Expr::And(Box::new(a), Box::new(b))),
                    (inner.clone(), inner.clone())
                        .prop_map(|(a, b)| Expr::Or(Box::new(a), Box::new(b))),
                    (ops, inner.clone(), inner.clone()).prop_map(|(o, a, b)| Expr::Cmp(
                        o,
                        Box::new(a),
                        Box::new(b)
                    )),
                    (inner, "[a-z]{1,4}\\*?").prop_map(|(a, p)| {
                        let re = regex::Regex::new(&format!("^(?:{p})$")).expect("pattern");
                        Expr::Matches(Box::new(a), p, re)
                    }),
                ]
            })
        }

        proptest! {
            /// Any tree written out parses back to the same tree, and evaluates the same.
            #[test]
            fn printed_trees_parse_back_to_themselves(e in expr(), branch in "[a-z]{0,4}") {
                let text = e.to_string();
                let back = parse(&text).map_err(|err| TestCaseError::fail(format!("{text}: {err}")))?;
                prop_assert_eq!(&back, &e, "{}", text);
                let f = facts(Some(&branch), None);
                prop_assert_eq!(eval(&back, &f), eval(&e, &f));
            }

            /// Hostile text never panics the parser: it parses or is refused with a column
            /// inside the text (or just past its end).
            #[test]
            fn any_text_is_parsed_or_refused_with_a_column(src in "\\PC{0,64}") {
                if let Err(e) = parse(&src) {
                    prop_assert!(e.column >= 1 && e.column <= src.chars().count() + 1, "{}: {}", src, e);
                }
            }
        }
    }
}

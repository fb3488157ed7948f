//! `<< … >>` substitution, parameter declarations and arguments, and logic statements.

use super::Engine;
use crate::yaml::{Node, Pos, Value};
use crate::{join, nearest, ConfigError};

/// What `<< … >>` can see at one place in the config.
#[derive(Clone, Copy)]
pub(crate) struct Scope<'a> {
    /// Bound arguments of the enclosing job/command/executor; `None` outside any.
    pub params: Option<&'a [(String, Node)]>,
    /// Pipeline *parameters* are invisible inside orbs (pipeline values are not).
    pub pipeline_params: bool,
    /// `None` leaves `<< matrix.x >>` in place for a later pass (workflow invocations are
    /// substituted once for pipeline values, then once per matrix combination).
    pub matrix: Option<&'a [(String, Node)]>,
}

enum Piece<'s> {
    Lit(std::borrow::Cow<'s, str>),
    Ref {
        inner: &'s str,
        raw: &'s str,
    },
    /// A mustache section: `<<# name >>body<</ name >>` emits `body` when `name` is truthy,
    /// `<<^ name >>…` when it is falsy. CircleCI's official orbs rely on these since 2019.
    Section {
        name: &'s str,
        inverted: bool,
        body: &'s str,
        raw: &'s str,
    },
}

/// Sections nest at most this deep inside one scalar (the renderer recurses per level).
const MAX_SECTION_DEPTH: usize = 32;

/// Split a scalar into literal text, `<< … >>` references and sections. `\<<` is a literal
/// `<<`.
fn scan(s: &str) -> Result<Vec<Piece<'_>>, String> {
    let mut out = Vec::new();
    let mut pos = 0;
    let mut lit = String::new();
    while let Some(rel) = s[pos..].find("<<") {
        let i = pos + rel;
        if s[pos..i].ends_with('\\') {
            lit.push_str(&s[pos..i - 1]);
            lit.push_str("<<");
            pos = i + 2;
            continue;
        }
        lit.push_str(&s[pos..i]);
        let (inner, tag_end) = tag(s, i)?;
        if !lit.is_empty() {
            out.push(Piece::Lit(std::mem::take(&mut lit).into()));
        }
        match inner.as_bytes().first() {
            Some(c @ (b'#' | b'^')) => {
                let name = inner[1..].trim();
                let (body_end, close_end) = find_close(s, tag_end, name)?;
                out.push(Piece::Section {
                    name,
                    inverted: *c == b'^',
                    body: &s[tag_end..body_end],
                    raw: &s[i..close_end],
                });
                pos = close_end;
            }
            Some(b'/') => {
                let name = inner[1..].trim();
                return Err(format!(
                    "`<</{name}>>` closes a section that was not opened: open it with `<<#{name}>>` or `<<^{name}>>`"
                ));
            }
            _ => {
                out.push(Piece::Ref {
                    inner,
                    raw: &s[i..tag_end],
                });
                pos = tag_end;
            }
        }
    }
    lit.push_str(&s[pos..]);
    if !lit.is_empty() {
        out.push(Piece::Lit(lit.into()));
    }
    Ok(out)
}

/// The trimmed inside of the tag opening at byte `i` (`<<`), and the byte after its `>>`.
fn tag(s: &str, i: usize) -> Result<(&str, usize), String> {
    let after = &s[i + 2..];
    let Some(end) = after.find(">>") else {
        return Err(
            "unclosed `<<` tag: `<<` starts a parameter reference and needs a closing `>>`"
                .to_owned(),
        );
    };
    Ok((after[..end].trim(), i + 2 + end + 2))
}

/// Where the section named `name`, whose body starts at `from`, closes: (body end, byte after
/// the closing tag). Sections of the same name nest.
fn find_close(s: &str, from: usize, name: &str) -> Result<(usize, usize), String> {
    let mut depth = 1;
    let mut pos = from;
    while let Some(rel) = s[pos..].find("<<") {
        let i = pos + rel;
        if s[pos..i].ends_with('\\') {
            pos = i + 2;
            continue;
        }
        let (inner, tag_end) = tag(s, i)?;
        match inner.as_bytes().first() {
            Some(b'#' | b'^') if inner[1..].trim() == name => depth += 1,
            Some(b'/') if inner[1..].trim() == name => {
                depth -= 1;
                if depth == 0 {
                    return Ok((i, tag_end));
                }
            }
            _ => {}
        }
        pos = tag_end;
    }
    Err(format!(
        "section `<<#{name}>>` is not closed: end it with `<</{name}>>`"
    ))
}

impl Engine {
    /// Substitute every `<< … >>` in `node`. Substituted values are not scanned again, so text
    /// passed down as an argument is interpreted once, in the scope that wrote it.
    pub(crate) fn subst(
        &self,
        node: &Node,
        path: &str,
        sc: Scope<'_>,
    ) -> Result<Node, ConfigError> {
        if !self.v21 {
            return Ok(node.clone());
        }
        // Subtrees without `<<` are copied as they are, without building their key paths.
        Ok(match &node.value {
            Value::Str(s) if s.contains("<<") => self.subst_str(node, s, path, sc)?,
            Value::Seq(items) => {
                let mut out = Vec::with_capacity(items.len());
                for (i, item) in items.iter().enumerate() {
                    out.push(if has_ref(item) {
                        self.subst(item, &format!("{path}[{i}]"), sc)?
                    } else {
                        item.clone()
                    });
                }
                Node::new(Value::Seq(out), node.pos)
            }
            Value::Map(m) => {
                let mut out = Vec::with_capacity(m.len());
                for (k, v) in m {
                    let v = if has_ref(v) {
                        let key = k.as_str().unwrap_or("?");
                        self.subst(v, &join(path, key), sc)?
                    } else {
                        v.clone()
                    };
                    out.push((k.clone(), v));
                }
                Node::new(Value::Map(out), node.pos)
            }
            _ => node.clone(),
        })
    }

    fn subst_str(
        &self,
        node: &Node,
        s: &str,
        path: &str,
        sc: Scope<'_>,
    ) -> Result<Node, ConfigError> {
        let pieces = scan(s).map_err(|m| {
            self.err_hint(
                node,
                path,
                m,
                "write a literal `<<` (a heredoc, a shift) as `\\<<`",
            )
        })?;
        // A scalar that is exactly one reference takes the value's type (integer, list, …).
        if let [Piece::Ref { inner, raw }] = pieces.as_slice() {
            return Ok(match self.lookup(node, inner, path, sc)? {
                Some(v) => Node::new(v.value, v.pos),
                None => Node::str(*raw, node.pos),
            });
        }
        let out = self.render(node, &pieces, path, sc, 0)?;
        Ok(Node::str(out, node.pos))
    }

    /// The text of a scalar's pieces (sections rendered, references embedded).
    fn render(
        &self,
        node: &Node,
        pieces: &[Piece<'_>],
        path: &str,
        sc: Scope<'_>,
        depth: usize,
    ) -> Result<String, ConfigError> {
        let mut out = String::new();
        for p in pieces {
            match p {
                Piece::Lit(l) => out.push_str(l),
                Piece::Ref { inner, raw } => match self.lookup(node, inner, path, sc)? {
                    None => out.push_str(raw),
                    Some(v) => match &v.value {
                        Value::Seq(_) | Value::Map(_) => match self.executor_name(&v) {
                            // An executor parameter holds the executor's definition; in text
                            // it reads as the executor's name.
                            Some(name) => out.push_str(&name),
                            None => {
                                return Err(self.err(
                                    node,
                                    path,
                                    format!(
                                        "`<< {inner} >>` is {} and cannot be embedded in a string",
                                        v.kind()
                                    ),
                                ))
                            }
                        },
                        Value::Null => {}
                        _ => out.push_str(&v.scalar_string().unwrap_or_default()),
                    },
                },
                Piece::Section {
                    name,
                    inverted,
                    body,
                    raw,
                } => {
                    if depth >= MAX_SECTION_DEPTH {
                        return Err(self.err(
                            node,
                            path,
                            format!("sections nest more than {MAX_SECTION_DEPTH} levels deep"),
                        ));
                    }
                    match self.lookup(node, name, path, sc)? {
                        None => out.push_str(raw),
                        Some(v) if truthy(&v) != *inverted => {
                            let inner = scan(body).map_err(|m| {
                                self.err_hint(
                                    node,
                                    path,
                                    m,
                                    "write a literal `<<` (a heredoc, a shift) as `\\<<`",
                                )
                            })?;
                            out.push_str(&self.render(node, &inner, path, sc, depth + 1)?);
                        }
                        Some(_) => {}
                    }
                }
            }
            self.check_scalar_size(node, path, out.len())?;
        }
        Ok(out)
    }

    /// The value of one reference; `Ok(None)` = leave it for a later pass.
    fn lookup(
        &self,
        at: &Node,
        inner: &str,
        path: &str,
        sc: Scope<'_>,
    ) -> Result<Option<Node>, ConfigError> {
        if let Some(name) = inner.strip_prefix("parameters.") {
            let found = sc
                .params
                .and_then(|p| p.iter().find(|(k, _)| k == name))
                .map(|(_, v)| v.clone());
            return match found {
                Some(v) => Ok(Some(v)),
                None => {
                    let declared: Vec<&str> = sc
                        .params
                        .map(|p| p.iter().map(|(k, _)| k.as_str()).collect())
                        .unwrap_or_default();
                    let msg = format!("Arguments referenced without declared parameters: {name}");
                    Err(match nearest(name, &declared) {
                        Some(s) => self.err_hint(at, path, msg, format!("did you mean `parameters.{s}`?")),
                        None if sc.params.is_none() => self.err_hint(
                            at,
                            path,
                            msg,
                            "`parameters.*` is only in scope inside a job, command or executor that declares it",
                        ),
                        None => self.err_hint(
                            at,
                            path,
                            msg,
                            format!("declare `{name}` under this element's `parameters:`"),
                        ),
                    })
                }
            };
        }
        if let Some(name) = inner.strip_prefix("pipeline.parameters.") {
            if !sc.pipeline_params {
                return Err(self.err_hint(
                    at,
                    path,
                    format!("pipeline parameters are not in scope inside an orb: `<< {inner} >>`"),
                    "pass the value to the orb element as a parameter",
                ));
            }
            return match self.pipeline_params.iter().find(|(k, _)| k == name) {
                Some((_, v)) => Ok(Some(v.clone())),
                None => {
                    let names: Vec<&str> = self
                        .pipeline_params
                        .iter()
                        .map(|(k, _)| k.as_str())
                        .collect();
                    let msg = format!(
                        "Referred to a variable \"pipeline.parameters.{name}\" that does not exist"
                    );
                    Err(match nearest(name, &names) {
                        Some(s) => self.err_hint(
                            at,
                            path,
                            msg,
                            format!("did you mean `pipeline.parameters.{s}`?"),
                        ),
                        None => self.err_hint(
                            at,
                            path,
                            msg,
                            format!("declare `{name}` under the top-level `parameters:`"),
                        ),
                    })
                }
            };
        }
        if let Some(rest) = inner.strip_prefix("pipeline.") {
            return match self.pipeline.value(rest) {
                Some(v) => Ok(Some(Node::new(v, at.pos))),
                None => Err(self.err_hint(
                    at,
                    path,
                    format!("Unknown variable(s): {inner}"),
                    match nearest(rest, crate::PipelineValues::NAMES) {
                        Some(s) => format!("did you mean `pipeline.{s}`?"),
                        None => format!(
                            "pipeline values known offline: {}",
                            crate::PipelineValues::NAMES.join(", ")
                        ),
                    },
                )),
            };
        }
        if let Some(name) = inner.strip_prefix("matrix.") {
            let Some(m) = sc.matrix else { return Ok(None) };
            return match m.iter().find(|(k, _)| k == name) {
                Some((_, v)) => Ok(Some(v.clone())),
                None => Err(self.err(at, path, format!("Unknown variable(s): {inner}"))),
            };
        }
        Err(self.err_hint(
            at,
            path,
            format!("Unknown variable(s): {inner}"),
            "references are `parameters.NAME`, `pipeline.parameters.NAME`, `pipeline.VALUE` or `matrix.NAME`; write a literal `<<` as `\\<<`",
        ))
    }

    /// Check `args` against the declarations in `decls` and fill in defaults.
    /// `call` is the invocation (for "missing" errors); `decls_path` names the declarations.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn bind(
        &self,
        decls: Option<&Node>,
        decls_path: &str,
        args: &[(Node, Node)],
        call: &Node,
        call_path: &str,
        pipeline_params: bool,
        scopes: BindScopes,
    ) -> Result<Vec<(String, Node)>, ConfigError> {
        let empty = Vec::new();
        let decl_list: &[(Node, Node)] = match decls {
            None => &empty,
            Some(d) if d.value == Value::Null => &empty,
            Some(d) => self.expect_map(d, decls_path)?,
        };
        let names: Vec<&str> = decl_list.iter().filter_map(|(k, _)| k.as_str()).collect();
        let unexpected: Vec<&Node> = args
            .iter()
            .map(|(k, _)| k)
            .filter(|k| !k.as_str().is_some_and(|n| names.contains(&n)))
            .collect();
        if let Some(first) = unexpected.first() {
            let list: Vec<String> = unexpected
                .iter()
                .map(|k| k.scalar_string().unwrap_or_else(|| k.kind().to_owned()))
                .collect();
            let msg = format!("Unexpected argument(s): {}", list.join(", "));
            let here = join(call_path, &list[0]);
            return Err(match nearest(&list[0], &names) {
                Some(s) => self.err_hint(first, &here, msg, format!("did you mean `{s}`?")),
                None if names.is_empty() => {
                    self.err_hint(first, &here, msg, "this element declares no parameters")
                }
                None => self.err_hint(
                    first,
                    &here,
                    msg,
                    format!("declared parameters: {}", names.join(", ")),
                ),
            });
        }
        let mut out = Vec::with_capacity(decl_list.len());
        let mut missing = Vec::new();
        for (k, decl) in decl_list {
            let name = self.expect_str(k, decls_path)?;
            let dpath = join(decls_path, name);
            let ty = self.param_decl(decl, &dpath)?;
            let given = args.iter().find(|(ak, _)| ak.as_str() == Some(name));
            let (value, is_default) = match (given, decl.get("default")) {
                (Some((_, v)), _) => (v.clone(), false),
                (None, Some(d)) => {
                    let sc = Scope {
                        params: None,
                        pipeline_params,
                        matrix: None,
                    };
                    (self.subst(d, &join(&dpath, "default"), sc)?, true)
                }
                (None, None) => {
                    missing.push(name.to_owned());
                    continue;
                }
            };
            if let Some(expected) = self.type_error(&ty, &value) {
                let found = describe(&value);
                return Err(if is_default {
                    self.err(
                        &value,
                        &join(&dpath, "default"),
                        format!("Parameter error: default value of parameter '{name}' is {found}: expected {expected}"),
                    )
                } else {
                    self.err(
                        &value,
                        &join(call_path, name),
                        format!("Type error for argument {name}: expected {expected}, actual value: {found}"),
                    )
                });
            }
            // A `steps` parameter left empty (`default:` with nothing) is an empty list.
            let value = match (&ty, &value.value) {
                (ParamType::Steps, Value::Null) => Node::new(Value::Seq(Vec::new()), value.pos),
                // An executor parameter's value is the executor it names, as CircleCI
                // resolves it: `equal: [*anchor_of_that_executor, << parameters.e >>]` holds,
                // and `executor: << parameters.e >>` still finds it. A name that resolves to
                // nothing stays a name, so `executor:` reports it where it is used.
                (ParamType::Executor, Value::Str(name)) => {
                    let from = if is_default {
                        scopes.declared
                    } else {
                        scopes.caller
                    };
                    self.executor_def(from, name).unwrap_or(value)
                }
                // `{name: e, arg: …}` names an executor where it is written, which may be
                // another scope than where it is used (the config passing its own executor to
                // an orb job): expand it now, and let `executor:` find it by its node.
                (ParamType::Executor, Value::Map(_)) => {
                    let from = if is_default {
                        scopes.declared
                    } else {
                        scopes.caller
                    };
                    let vpath = join(call_path, name);
                    let expanded = self.expand_executor(from, &value, &vpath)?;
                    self.pre_expanded
                        .borrow_mut()
                        .push((value.clone(), expanded));
                    value
                }
                _ => value,
            };
            out.push((name.to_owned(), value));
        }
        if !missing.is_empty() {
            missing.sort();
            return Err(self.err(
                call,
                call_path,
                format!("Missing required argument(s): {}", missing.join(", ")),
            ));
        }
        Ok(out)
    }

    fn param_decl(&self, decl: &Node, path: &str) -> Result<ParamType, ConfigError> {
        let m = self.expect_map(decl, path)?;
        self.check_keys(m, &["type", "default", "description", "enum"], path)?;
        let t = decl
            .get("type")
            .ok_or_else(|| self.err(decl, path, "required key [type] not found"))?;
        let tname = self.expect_str(t, &join(path, "type"))?;
        Ok(match tname {
            "string" => ParamType::String,
            "boolean" => ParamType::Boolean,
            "integer" => ParamType::Integer,
            "executor" => ParamType::Executor,
            "steps" => ParamType::Steps,
            "env_var_name" => ParamType::EnvVarName,
            "enum" => {
                let list = decl.get("enum").ok_or_else(|| {
                    self.err(
                        decl,
                        path,
                        "an `enum` parameter needs an `enum:` list of values",
                    )
                })?;
                let items = list.as_seq().ok_or_else(|| {
                    self.err(
                        list,
                        &join(path, "enum"),
                        format!("expected a list of values, found {}", list.kind()),
                    )
                })?;
                ParamType::Enum(items.iter().filter_map(Node::scalar_string).collect())
            }
            other => {
                const TYPES: &[&str] = &[
                    "string",
                    "boolean",
                    "integer",
                    "enum",
                    "executor",
                    "steps",
                    "env_var_name",
                ];
                let msg = format!("unknown parameter type `{other}`");
                return Err(match nearest(other, TYPES) {
                    Some(s) => {
                        self.err_hint(t, &join(path, "type"), msg, format!("did you mean `{s}`?"))
                    }
                    None => self.err_hint(
                        t,
                        &join(path, "type"),
                        msg,
                        format!("types: {}", TYPES.join(", ")),
                    ),
                });
            }
        })
    }

    /// `Some(expected)` when `v` does not fit `ty`.
    fn type_error(&self, ty: &ParamType, v: &Node) -> Option<String> {
        let ok = match (ty, &v.value) {
            // Numbers are accepted for strings (`python: 3.11` in a matrix); booleans are not,
            // because `on`/`yes` turning into `true` is almost always a mistake.
            (ParamType::String, Value::Str(_) | Value::Int(_) | Value::Float(_)) => true,
            (ParamType::Boolean, Value::Bool(_)) => true,
            (ParamType::Integer, Value::Int(_)) => true,
            (ParamType::Enum(list), _) => {
                v.scalar_string().is_some_and(|s| list.contains(&s)) && v.value != Value::Null
            }
            (ParamType::Executor, Value::Str(_) | Value::Map(_)) => true,
            (ParamType::Steps, Value::Seq(_) | Value::Null) => true,
            (ParamType::EnvVarName, Value::Str(s)) => crate::valid_env_name(s),
            _ => false,
        };
        if ok {
            return None;
        }
        Some(match ty {
            ParamType::String => "type: string".to_owned(),
            ParamType::Boolean => "type: boolean".to_owned(),
            ParamType::Integer => "type: integer".to_owned(),
            ParamType::Enum(l) => format!("type: enum, one of [{}]", l.join(", ")),
            ParamType::Executor => "type: executor (a name or a mapping with `name`)".to_owned(),
            ParamType::Steps => "type: steps (a list of steps)".to_owned(),
            ParamType::EnvVarName => {
                "type: env_var_name (letters, digits, `_`, not starting with a digit)".to_owned()
            }
        })
    }

    /// Evaluate a logic statement (already substituted).
    pub(crate) fn logic(&self, node: &Node, path: &str, depth: usize) -> Result<bool, ConfigError> {
        if depth > 100 {
            return Err(self.err(
                node,
                path,
                "logic statements nest more than 100 levels deep",
            ));
        }
        let Value::Map(m) = &node.value else {
            return Ok(truthy(node));
        };
        let [(k, v)] = m.as_slice() else {
            return Ok(truthy(node));
        };
        let op = k.as_str().unwrap_or("");
        let here = join(path, op);
        let list = |v: &'_ Node| -> Result<Vec<Node>, ConfigError> {
            match v.as_seq() {
                Some([]) => Err(self.err(
                    v,
                    &here,
                    format!("`{op}` needs at least one statement; an empty list is not valid"),
                )),
                Some(items) => Ok(items.to_vec()),
                None => Err(self.err(v, &here, format!("`{op}` takes a list, found {}", v.kind()))),
            }
        };
        match op {
            "and" | "or" => {
                let items = list(v)?;
                for (i, item) in items.iter().enumerate() {
                    let b = self.logic(item, &format!("{here}[{i}]"), depth + 1)?;
                    if b != (op == "and") {
                        return Ok(b);
                    }
                }
                Ok(op == "and")
            }
            "not" => Ok(!self.logic(v, &here, depth + 1)?),
            "equal" => {
                let items = list(v)?;
                Ok(items.windows(2).all(|w| same_value(&w[0], &w[1])))
            }
            "matches" => {
                let m = self.expect_map(v, &here)?;
                self.check_keys(m, &["pattern", "value"], &here)?;
                let pat = v
                    .get("pattern")
                    .ok_or_else(|| self.err(v, &here, "required key [pattern] not found"))?;
                let val = v
                    .get("value")
                    .ok_or_else(|| self.err(v, &here, "required key [value] not found"))?;
                let pattern = self.expect_str(pat, &join(&here, "pattern"))?;
                let re = self.regex(pattern, pat, &join(&here, "pattern"))?;
                Ok(re.is_match(&val.scalar_string().unwrap_or_default()))
            }
            // Any other single-key map is a literal, as CircleCI treats `equals:` typos.
            _ => Ok(true),
        }
    }

    /// A Java-style pattern that must match the whole value.
    pub(crate) fn regex(
        &self,
        pattern: &str,
        at: &Node,
        path: &str,
    ) -> Result<regex::Regex, ConfigError> {
        if let Some(re) = self.regexes.borrow().get(pattern) {
            return Ok(re.clone());
        }
        let re = regex::Regex::new(&format!("^(?:{pattern})$")).map_err(|e| {
            let first = e
                .to_string()
                .lines()
                .last()
                .unwrap_or("invalid")
                .trim()
                .to_owned();
            self.err(
                at,
                path,
                format!("invalid regular expression `{pattern}`: {first}"),
            )
        })?;
        self.regexes
            .borrow_mut()
            .insert(pattern.to_owned(), re.clone());
        Ok(re)
    }
}

/// Where the names in arguments resolve: `caller` for values given at the call, `declared` for
/// defaults (written beside the declaration).
#[derive(Debug, Clone, Copy)]
pub(crate) struct BindScopes {
    pub caller: usize,
    pub declared: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum ParamType {
    String,
    Boolean,
    Integer,
    Enum(Vec<String>),
    Executor,
    Steps,
    EnvVarName,
}

/// `"true" (type string)` / `'on' (type string)`, as CircleCI's messages show values.
fn describe(v: &Node) -> String {
    match &v.value {
        Value::Str(s) => format!("\"{s}\" (type string)"),
        Value::Bool(b) => format!("{b} (type boolean)"),
        Value::Int(i) => format!("{i} (type integer)"),
        Value::Float(f) => format!("{f} (type number)"),
        Value::Null => "null".to_owned(),
        Value::Seq(_) => "a list (type sequence)".to_owned(),
        Value::Map(_) => "a mapping (type map)".to_owned(),
    }
}

/// Whether any string under `n` contains `<<`.
fn has_ref(n: &Node) -> bool {
    match &n.value {
        Value::Str(s) => s.contains("<<"),
        Value::Seq(items) => items.iter().any(has_ref),
        Value::Map(m) => m.iter().any(|(_, v)| has_ref(v)),
        _ => false,
    }
}

pub(crate) fn truthy(n: &Node) -> bool {
    match &n.value {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Int(i) => *i != 0,
        Value::Float(f) => *f != 0.0 && !f.is_nan(),
        Value::Str(s) => !s.is_empty(),
        Value::Seq(s) => !s.is_empty(),
        Value::Map(m) => !m.is_empty(),
    }
}

fn same_value(a: &Node, b: &Node) -> bool {
    match (&a.value, &b.value) {
        (Value::Int(x), Value::Float(y)) | (Value::Float(y), Value::Int(x)) => (*x as f64) == *y,
        (Value::Seq(x), Value::Seq(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| same_value(p, q))
        }
        (Value::Map(x), Value::Map(y)) => {
            x.len() == y.len()
                && x.iter().all(|(k, v)| {
                    y.iter()
                        .any(|(k2, v2)| k.value == k2.value && same_value(v, v2))
                })
        }
        (x, y) => x == y,
    }
}

#[allow(dead_code)]
pub(crate) fn null_at(pos: Pos) -> Node {
    Node::new(Value::Null, pos)
}

//! The 2.1 compiler proper: orbs → scopes, jobs with executors, commands and conditional steps
//! expanded, workflows with matrices, filters and requires; output both as plans and as the
//! processed (2.0-shaped) YAML tree.

use super::graph::{
    Filter, Filters, Pattern, RequiredStatus, Workflow, WorkflowJob, WorkflowJobKind,
};
use super::interp::{BindScopes, Scope as Sc};
use super::plan::CompiledJob;
use super::yaml::{self, Node, Pos, Value};
use super::*;

/// One namespace of elements: the config itself or an orb.
pub(crate) struct Scope {
    /// The config root or the orb's map.
    pub root: Node,
    /// Orb aliases this scope imports → scope index.
    pub imports: Vec<(String, usize)>,
    pub is_orb: bool,
    /// Key-path prefix of this scope's definitions (`orbs.tools.` for an inline orb).
    pub path: String,
    /// `alias/` for elements of an orb as seen from the config (names in the output).
    pub display: String,
    /// How the orb was imported, for errors naming the chain of imports: the scope that
    /// imported it, the alias there, and the exact reference (`circleci/docker@2.1.4`).
    pub imported: Option<(usize, String, String)>,
}

/// A `requires` entry as written: the name, where it is, and its statuses when written with
/// them.
type Requirement = (String, Node, Option<Vec<RequiredStatus>>);

pub(crate) struct Engine {
    pub files: Vec<String>,
    pub scopes: Vec<Scope>,
    pub pipeline: PipelineValues,
    pub pipeline_params: Vec<(String, Node)>,
    pub v21: bool,
    pub errors: Vec<ConfigError>,
    /// Compiled filter and `matches` patterns: a matrix repeats the same filters per job.
    pub regexes: std::cell::RefCell<std::collections::HashMap<String, regex::Regex>>,
    /// What the expansion has produced so far, against [`MAX_STEPS`] and [`MAX_STEP_BYTES`].
    pub spent: std::cell::Cell<Spent>,
    /// Keys CircleCI accepts and ignores, and other things worth saying that are not errors.
    pub warnings: std::cell::RefCell<Vec<ConfigError>>,
    /// Registry orb references and what each resolved to.
    pub resolved: Vec<ResolvedOrb>,
    /// Executor parameters given as `{name, args…}`, expanded where they were written:
    /// (the argument's node, the expanded executor).
    pub pre_expanded: std::cell::RefCell<Vec<(Node, Node)>>,
    /// (workflow, name, base name) of every workflow job invoked without `name:`.
    pub auto_names: Vec<(String, String, String)>,
}

/// Expansion budgets. Commands calling commands multiply: ten lines that each call the next
/// command ten times make 10^k steps, so a config of a few dozen lines could otherwise expand
/// to millions of steps and gigabytes (it took the agent down). The largest real configs
/// known expand to a few thousand steps and a few MB, so the limits leave room and still stop
/// a runaway expansion in well under a second.
pub(crate) const MAX_STEPS: usize = 100_000;
/// Bytes of text in expanded steps, over the whole config.
pub(crate) const MAX_STEP_BYTES: usize = 64 << 20;
/// Bytes of one substituted scalar (a parameter pasted into itself level after level doubles).
pub(crate) const MAX_SCALAR_BYTES: usize = 8 << 20;

#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Spent {
    pub steps: usize,
    pub bytes: usize,
}

/// Bytes of text in a node (keys and scalars).
fn text_size(n: &Node) -> usize {
    match &n.value {
        Value::Str(s) => s.len(),
        Value::Seq(items) => items.iter().map(text_size).sum(),
        Value::Map(m) => m.iter().map(|(k, v)| text_size(k) + text_size(v)).sum(),
        _ => 8,
    }
}

/// A job after expansion: 2.0-shaped, with its steps still carrying the key paths they were
/// written at (so lowering errors point into commands and orbs, not into the expansion).
pub(crate) struct Expanded {
    pub node: Node,
    pub steps: Vec<(Node, String)>,
    pub path: String,
}

pub(crate) const BUILTIN_STEPS: &[&str] = &[
    "checkout",
    "run",
    "save_cache",
    "restore_cache",
    "persist_to_workspace",
    "attach_workspace",
    "store_artifacts",
    "store_test_results",
    "add_ssh_keys",
    "setup_remote_docker",
    "deploy",
    "when",
    "unless",
];
const INVOCATION_KEYS: &[&str] = &[
    "requires",
    "name",
    "context",
    "type",
    "filters",
    "matrix",
    "pre-steps",
    "post-steps",
    "serial-group",
    "override-with",
];

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Job,
    Command,
    Executor,
}

impl Kind {
    fn section(self) -> &'static str {
        match self {
            Kind::Job => "jobs",
            Kind::Command => "commands",
            Kind::Executor => "executors",
        }
    }
    fn word(self) -> &'static str {
        match self {
            Kind::Job => "job",
            Kind::Command => "command",
            Kind::Executor => "executor",
        }
    }
}

impl Engine {
    pub(crate) fn err(&self, node: &Node, path: &str, message: impl Into<String>) -> ConfigError {
        ConfigError {
            file: self
                .files
                .get(node.pos.file as usize)
                .cloned()
                .unwrap_or_default(),
            pos: node.pos,
            path: path.to_owned(),
            message: message.into(),
            hint: None,
        }
    }

    pub(crate) fn err_hint(
        &self,
        node: &Node,
        path: &str,
        message: impl Into<String>,
        hint: impl Into<String>,
    ) -> ConfigError {
        ConfigError {
            hint: Some(hint.into()),
            ..self.err(node, path, message)
        }
    }

    pub(crate) fn expect_map<'n>(
        &self,
        node: &'n Node,
        path: &str,
    ) -> Result<&'n [(Node, Node)], ConfigError> {
        node.as_map().ok_or_else(|| {
            self.err(
                node,
                path,
                format!("expected a mapping, found {}", node.kind()),
            )
        })
    }

    pub(crate) fn expect_str<'n>(
        &self,
        node: &'n Node,
        path: &str,
    ) -> Result<&'n str, ConfigError> {
        node.as_str().ok_or_else(|| {
            self.err(
                node,
                path,
                format!("expected a string, found {}", node.kind()),
            )
        })
    }

    /// Every key of `map` must be one of `allowed`; a typo gets the nearest valid key.
    pub(crate) fn check_keys(
        &self,
        map: &[(Node, Node)],
        allowed: &[&str],
        path: &str,
    ) -> Result<(), ConfigError> {
        for (k, _) in map {
            let Some(name) = k.as_str() else {
                return Err(self.err(k, path, format!("keys must be strings, found {}", k.kind())));
            };
            if !allowed.contains(&name) {
                let here = join(path, name);
                let msg = format!("extraneous key [{name}] is not permitted");
                return Err(match nearest(name, allowed) {
                    Some(s) => self.err_hint(k, &here, msg, format!("did you mean `{s}`?")),
                    None => self.err_hint(
                        k,
                        &here,
                        msg,
                        format!("permitted keys: {}", allowed.join(", ")),
                    ),
                });
            }
        }
        Ok(())
    }

    /// Count one expanded step against the budgets; `calls` is the chain of commands being
    /// expanded, named in the error.
    fn charge_step(&self, step: &Node, path: &str, calls: &[String]) -> Result<(), ConfigError> {
        let mut spent = self.spent.get();
        spent.steps += 1;
        spent.bytes += text_size(step);
        self.spent.set(spent);
        if spent.steps <= MAX_STEPS && spent.bytes <= MAX_STEP_BYTES {
            return Ok(());
        }
        let what = if spent.steps > MAX_STEPS {
            format!("more than {MAX_STEPS} steps")
        } else {
            format!("more than {} MiB of steps", MAX_STEP_BYTES >> 20)
        };
        let chain = match calls {
            [] => "outside any command".to_owned(),
            [only] => format!("in command `{}`", command_label(only)),
            _ => format!(
                "in command `{}` (called through {})",
                command_label(&calls[calls.len() - 1]),
                calls
                    .iter()
                    .map(|c| command_label(c))
                    .collect::<Vec<_>>()
                    .join(" → ")
            ),
        };
        Err(self.err_hint(
            step,
            path,
            format!("the config expands to {what} {chain}"),
            "commands that invoke other commands several times multiply their steps; bosun stops the expansion there (a runaway config must not take the machine down): call the command fewer times, or loop inside one `run` step",
        ))
    }

    /// A substituted scalar must stay under [`MAX_SCALAR_BYTES`].
    pub(crate) fn check_scalar_size(
        &self,
        at: &Node,
        path: &str,
        len: usize,
    ) -> Result<(), ConfigError> {
        if len <= MAX_SCALAR_BYTES {
            return Ok(());
        }
        Err(self.err_hint(
            at,
            path,
            format!(
                "the value expands to more than {} MiB of text",
                MAX_SCALAR_BYTES >> 20
            ),
            "a parameter pasted into itself at every level doubles each time; pass it on once",
        ))
    }

    pub(crate) fn warn(&self, w: ConfigError) {
        let mut ws = self.warnings.borrow_mut();
        if !ws.contains(&w) {
            ws.push(w);
        }
    }

    fn push(&mut self, r: Result<(), ConfigError>) {
        if let Err(e) = r {
            if !self.errors.contains(&e) {
                self.errors.push(e);
            }
        }
    }

    // ---------------------------------------------------------------- top level and orbs

    pub(crate) fn top_level(&mut self, root: &Node) -> Result<(), ConfigError> {
        let top = self.expect_map(root, "")?;
        for (k, _) in top {
            if let Some(name) = k.as_str() {
                if !TOP_LEVEL_KEYS.contains(&name) {
                    // Unknown top-level keys hold anchors (`aliases:`, `defaults:`) and are
                    // ignored, as CircleCI does; only a near-miss of a real key is an error.
                    if let Some(s) = nearest(name, TOP_LEVEL_KEYS).filter(|_| name.len() > 3) {
                        return Err(self.err_hint(
                            k,
                            name,
                            format!("unknown top-level key `{name}` would be ignored"),
                            format!("did you mean `{s}`?"),
                        ));
                    }
                }
            }
        }
        let Some(v) = root.get("version") else {
            return Err(self.err_hint(
                root,
                "version",
                "Unsupported or missing workflows config version",
                "add `version: 2.1` at the top of the file",
            ));
        };
        let (ok, v21) = match &v.value {
            Value::Int(2) => (true, false),
            Value::Float(f) if (*f - 2.1).abs() < 1e-9 => (true, true),
            Value::Float(f) if (*f - 2.0).abs() < 1e-9 => (true, false),
            Value::Str(s) => (matches!(s.as_str(), "2" | "2.0" | "2.1"), s == "2.1"),
            _ => (false, false),
        };
        if !ok {
            return Err(self.err_hint(
                v,
                "version",
                format!(
                    "Unsupported or missing workflows config version: expected 2, 2.0 or 2.1, found {}",
                    match v.scalar_string() {
                        Some(s) if !matches!(v.value, Value::Seq(_) | Value::Map(_)) => format!("`{s}`"),
                        _ => v.kind().to_owned(),
                    }
                ),
                "bosun reads version 2 and 2.1 configs",
            ));
        }
        self.v21 = v21;
        if !v21 {
            for key in ["orbs", "commands", "executors", "parameters"] {
                if let Some((k, _)) = top.iter().find(|(k, _)| k.as_str() == Some(key)) {
                    return Err(self.err_hint(
                        k,
                        key,
                        format!("`{key}` needs `version: 2.1`"),
                        "change the top-level `version` to 2.1",
                    ));
                }
            }
        }
        Ok(())
    }

    /// Declared pipeline parameters with the caller's values applied (strings from the command
    /// line are read as the declared type).
    pub(crate) fn pipeline_parameters(&mut self, root: &Node) -> Result<(), ConfigError> {
        let decls = root.get("parameters");
        let mut given = Vec::new();
        for (k, v) in &self.pipeline.parameters {
            let ty = decls
                .and_then(|d| d.get(k))
                .and_then(|d| d.get("type"))
                .and_then(Node::as_str);
            let value = match ty {
                Some("boolean") => match v.as_str() {
                    "true" | "yes" | "on" => Value::Bool(true),
                    "false" | "no" | "off" => Value::Bool(false),
                    _ => Value::Str(v.clone()),
                },
                Some("integer") => v.parse().map_or_else(|_| Value::Str(v.clone()), Value::Int),
                _ => Value::Str(v.clone()),
            };
            let pos = Pos::default();
            given.push((Node::str(k.clone(), pos), Node::new(value, pos)));
        }
        if let Some(d) = decls {
            for (k, decl) in self.expect_map(d, "parameters")? {
                let name = k.as_str().unwrap_or("");
                let path = join("parameters", name);
                let m = self.expect_map(decl, &path)?;
                self.check_keys(m, &["type", "default", "description", "enum"], &path)?;
                if decl.get("default").is_none() {
                    return Err(self.err(
                        decl,
                        &path,
                        "required key [default] not found: pipeline parameters need a default",
                    ));
                }
                if let Some(t) = decl.get("type").and_then(Node::as_str) {
                    if !matches!(t, "string" | "boolean" | "integer" | "enum") {
                        return Err(self.err(
                            decl,
                            &join(&path, "type"),
                            format!(
                                "pipeline parameters are string, boolean, integer or enum, not {t}"
                            ),
                        ));
                    }
                }
            }
        }
        let cli = Node::new(Value::Null, Pos::default());
        let scopes = BindScopes {
            caller: 0,
            declared: 0,
        };
        self.pipeline_params = self.bind(
            decls,
            "parameters",
            &given,
            &cli,
            "--pipeline-param",
            true,
            scopes,
        )?;
        Ok(())
    }

    /// Build scope 0 (the config) and one scope per orb, loading vendored orbs through `loader`.
    pub(crate) fn load_orbs(
        &mut self,
        root: &Node,
        loader: Option<&dyn OrbLoader>,
        orb_dir: Option<&str>,
    ) {
        self.scopes.push(Scope {
            root: root.clone(),
            imports: Vec::new(),
            is_orb: false,
            path: String::new(),
            display: String::new(),
            imported: None,
        });
        let mut loaded: Vec<(String, usize)> = Vec::new();
        let imports = self.orb_imports(0, loader, orb_dir, &mut loaded, 0);
        self.scopes[0].imports = imports;
    }

    fn orb_imports(
        &mut self,
        scope: usize,
        loader: Option<&dyn OrbLoader>,
        orb_dir: Option<&str>,
        loaded: &mut Vec<(String, usize)>,
        depth: usize,
    ) -> Vec<(String, usize)> {
        let Some(orbs) = self.scopes[scope].root.get("orbs").cloned() else {
            return Vec::new();
        };
        let base = format!("{}orbs", self.scopes[scope].path);
        let Some(entries) = orbs.as_map() else {
            let e = self.err(
                &orbs,
                &base,
                format!("expected a mapping of orbs, found {}", orbs.kind()),
            );
            self.push(Err(e));
            return Vec::new();
        };
        let mut out = Vec::new();
        for (k, v) in entries {
            let alias = k.as_str().unwrap_or("?").to_owned();
            let path = join(&base, &alias);
            if depth > 8 {
                let e = self.err(v, &path, "orbs import each other more than 8 levels deep");
                self.push(Err(e));
                continue;
            }
            match &v.value {
                Value::Map(_) => {
                    let idx = self.scopes.len();
                    self.scopes.push(Scope {
                        root: v.clone(),
                        imports: Vec::new(),
                        is_orb: true,
                        path: format!("{path}."),
                        display: format!("{alias}/"),
                        imported: Some((scope, alias.clone(), format!("inline orb `{alias}`"))),
                    });
                    let imp = self.orb_imports(idx, loader, orb_dir, loaded, depth + 1);
                    self.scopes[idx].imports = imp;
                    out.push((alias, idx));
                }
                Value::Str(_) => {
                    let sc = Sc {
                        params: None,
                        pipeline_params: !self.scopes[scope].is_orb,
                        matrix: None,
                    };
                    let r = self.subst(v, &path, sc).and_then(|n| {
                        let s = n.as_str().unwrap_or("").to_owned();
                        self.registry_orb(scope, &s, v, &path, loader, orb_dir)
                            .map(|found| (s, found))
                    });
                    match r {
                        Ok((written, (reference, text, file))) => {
                            let note = ResolvedOrb {
                                reference: written,
                                resolved: reference.clone(),
                                file: file.clone(),
                            };
                            if !self.resolved.contains(&note) {
                                self.resolved.push(note);
                            }
                            if let Some((_, idx)) = loaded.iter().find(|(r, _)| *r == reference) {
                                out.push((alias, *idx));
                                continue;
                            }
                            let fid = self.files.len() as u32;
                            self.files.push(file);
                            match yaml::parse_file(&text, fid) {
                                Ok(orb_root) => {
                                    let idx = self.scopes.len();
                                    self.scopes.push(Scope {
                                        root: orb_root,
                                        imports: Vec::new(),
                                        is_orb: true,
                                        path: String::new(),
                                        display: format!("{alias}/"),
                                        imported: Some((scope, alias.clone(), reference.clone())),
                                    });
                                    loaded.push((reference, idx));
                                    let imp =
                                        self.orb_imports(idx, loader, orb_dir, loaded, depth + 1);
                                    self.scopes[idx].imports = imp;
                                    out.push((alias, idx));
                                }
                                Err(e) => {
                                    let err = ConfigError {
                                        file: self.files[fid as usize].clone(),
                                        pos: Pos {
                                            line: e.line,
                                            col: e.col,
                                            file: fid,
                                        },
                                        path: String::new(),
                                        message: format!(
                                            "invalid YAML in orb `{alias}`: {}",
                                            e.message
                                        ),
                                        hint: None,
                                    };
                                    self.push(Err(err));
                                }
                            }
                        }
                        Err(e) => self.push(Err(e)),
                    }
                }
                _ => {
                    let e = self.err(v, &path, format!("expected an orb reference (`namespace/name@version`) or an inline orb, found {}", v.kind()));
                    self.push(Err(e));
                }
            }
        }
        out
    }

    /// `, needed by circleci/docker@2.1.4 (imported as `docker` by the config)` for an orb
    /// imported by an orb; empty for the config's own imports.
    fn import_chain(&self, scope: usize) -> String {
        let mut links = Vec::new();
        let mut at = scope;
        while let Some((parent, alias, reference)) = &self.scopes[at].imported {
            links.push((reference.clone(), alias.clone()));
            at = *parent;
        }
        let Some((first, _)) = links.first() else {
            return String::new();
        };
        let mut out = format!(", needed by {first}");
        for (i, (_, alias)) in links.iter().enumerate() {
            let by = match links.get(i + 1) {
                Some((r, _)) => r.clone(),
                None => "the config".to_owned(),
            };
            out.push_str(&format!(" (imported as `{alias}` by {by}"));
        }
        out.push_str(&")".repeat(links.len()));
        out
    }

    fn registry_orb(
        &self,
        scope: usize,
        reference: &str,
        at: &Node,
        path: &str,
        loader: Option<&dyn OrbLoader>,
        orb_dir: Option<&str>,
    ) -> Result<(String, String, String), ConfigError> {
        let parsed = reference.split_once('@').and_then(|(nn, version)| {
            let (ns, name) = nn.split_once('/')?;
            let ok = |s: &str| !s.is_empty() && !s.contains(['/', '@', ' ', '\\']) && s != "..";
            (ok(ns) && ok(name) && ok(version)).then(|| OrbRef {
                namespace: ns.to_owned(),
                name: name.to_owned(),
                version: version.to_owned(),
            })
        });
        let Some(orb) = parsed else {
            return Err(self.err_hint(
                at,
                path,
                format!("Invalid orb reference: '{reference}'"),
                "write `namespace/name@version`, e.g. `circleci/node@5.1.0`",
            ));
        };
        let file_name = format!("{}/{}@{}.yml", orb.namespace, orb.name, orb.version);
        let dir = orb_dir.unwrap_or("DIR");
        let mut how = format!(
            "registry orbs cannot be fetched offline: vendor it as `{dir}/{file_name}` (e.g. `circleci orb source {reference} > {dir}/{file_name}`, or `bosun orb pack` of its source), or its source tree as `{dir}/{}/{}@VERSION/src/`, and pass `--orb-dir {dir}`",
            orb.namespace, orb.name
        );
        // A pin (`@2.2`, `@2`, `@volatile`) means the newest vendored version it matches.
        let available = loader
            .map(|l| l.versions(&orb.namespace, &orb.name))
            .unwrap_or_default();
        let exact = match resolve_pin(&orb.version, &available) {
            Some(v) => OrbRef {
                version: v,
                ..orb.clone()
            },
            None => orb.clone(),
        };
        if !available.is_empty() && resolve_pin(&orb.version, &available).is_none() {
            how.push_str(&format!(
                "; vendored versions of {}/{}: {}",
                orb.namespace,
                orb.name,
                available.join(", ")
            ));
        }
        let exact_ref = format!("{}/{}@{}", exact.namespace, exact.name, exact.version);
        let chain = self.import_chain(scope);
        match loader.map(|l| l.load(&exact)) {
            Some(OrbSource::Found { file, text }) => Ok((exact_ref, text, file)),
            Some(OrbSource::Failed(why)) => Err(self.err(
                at,
                path,
                format!("cannot read the vendored orb {reference}{chain}: {why}"),
            )),
            Some(OrbSource::Missing) | None => Err(self.err_hint(
                at,
                path,
                format!(
                    "Cannot find {reference}: orb `{orb_alias}` is not inline and not vendored{chain}",
                    orb_alias = path.rsplit('.').next().unwrap_or(reference)
                ),
                how,
            )),
        }
    }

    /// Find a job/command/executor as seen from `scope`: `name` in the scope itself, `alias/name`
    /// through its imports.
    fn resolve(&self, scope: usize, kind: Kind, name: &str) -> Option<(usize, &Node, String)> {
        let s = &self.scopes[scope];
        if let Some((alias, rest)) = name.split_once('/') {
            let (_, idx) = s.imports.iter().find(|(a, _)| a == alias)?;
            return self.resolve(*idx, kind, rest);
        }
        let def = s.root.get(kind.section())?.get(name)?;
        Some((scope, def, format!("{}{}.{}", s.path, kind.section(), name)))
    }

    /// The definition of executor `name` as seen from `scope`, positioned where it is written.
    pub(crate) fn executor_def(&self, scope: usize, name: &str) -> Option<Node> {
        self.resolve(scope, Kind::Executor, name)
            .map(|(_, def, _)| def.clone())
    }

    /// If `node` is an executor definition itself (an executor parameter's value), its scope
    /// and name. Definitions are told apart by where they are written.
    pub(crate) fn find_executor_def(&self, node: &Node) -> Option<(usize, String)> {
        node.as_map()?;
        self.scopes.iter().enumerate().find_map(|(i, s)| {
            s.root
                .get("executors")?
                .as_map()?
                .iter()
                .find(|(_, v)| v.pos == node.pos && v.value == node.value)
                .and_then(|(k, _)| k.as_str().map(|k| (i, k.to_owned())))
        })
    }

    /// The name an executor parameter's value reads as in text.
    pub(crate) fn executor_name(&self, node: &Node) -> Option<String> {
        self.find_executor_def(node).map(|(_, n)| n)
    }

    fn not_found(
        &self,
        scope: usize,
        kind: Kind,
        name: &str,
        at: &Node,
        path: &str,
    ) -> ConfigError {
        if let Some((alias, _)) = name.split_once('/') {
            if !self.scopes[scope].imports.iter().any(|(a, _)| a == alias) {
                return self.err_hint(
                    at,
                    path,
                    format!(
                        "Cannot find orb '{alias}' looking for {} named '{name}'",
                        kind.word()
                    ),
                    "declare the orb under `orbs:`",
                );
            }
        }
        let msg = format!("Cannot find a definition for {} named {name}", kind.word());
        let mut known: Vec<String> = Vec::new();
        if kind == Kind::Command {
            known.extend(BUILTIN_STEPS.iter().map(|s| s.to_string()));
        }
        let s = &self.scopes[scope];
        if let Some(m) = s.root.get(kind.section()).and_then(Node::as_map) {
            known.extend(m.iter().filter_map(|(k, _)| k.as_str().map(str::to_owned)));
        }
        for (alias, idx) in &s.imports {
            if let Some(m) = self.scopes[*idx]
                .root
                .get(kind.section())
                .and_then(Node::as_map)
            {
                known.extend(
                    m.iter()
                        .filter_map(|(k, _)| k.as_str().map(|k| format!("{alias}/{k}"))),
                );
            }
        }
        let refs: Vec<&str> = known.iter().map(String::as_str).collect();
        match nearest(name, &refs) {
            Some(s) => self.err_hint(at, path, msg, format!("did you mean `{s}`?")),
            None if kind != Kind::Command && !refs.is_empty() => self.err_hint(
                at,
                path,
                msg,
                format!("{}s in scope: {}", kind.word(), refs.join(", ")),
            ),
            None if kind == Kind::Job => self.err_hint(
                at,
                path,
                msg,
                "define it under the top-level `jobs:`, or add `type: approval` for a manual hold",
            ),
            None => self.err(at, path, msg),
        }
    }

    // ---------------------------------------------------------------- jobs

    /// Expand job `job_ref` (as seen from `scope`) with invocation `args`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn expand_job(
        &self,
        scope: usize,
        job_ref: &str,
        args: &[(Node, Node)],
        call: &Node,
        call_path: &str,
        pre: Option<&Node>,
        post: Option<&Node>,
    ) -> Result<Expanded, ConfigError> {
        let Some((js, def, def_path)) = self.resolve(scope, Kind::Job, job_ref) else {
            return Err(self.not_found(scope, Kind::Job, job_ref, call, call_path));
        };
        let m = self.expect_map(def, &def_path)?;
        self.check_keys(m, JOB_KEYS, &def_path)?;
        let pp = !self.scopes[js].is_orb;
        if let Some(decls) = def.get("parameters").and_then(Node::as_map) {
            for (k, _) in decls {
                let n = k.as_str().unwrap_or("");
                if INVOCATION_KEYS.contains(&n) {
                    return Err(self.err(k, &join(&def_path, "parameters"), format!("`{n}` is reserved for workflow job invocations and cannot be a job parameter")));
                }
            }
        }
        let bound = self.bind(
            def.get("parameters"),
            &join(&def_path, "parameters"),
            args,
            call,
            call_path,
            pp,
            BindScopes {
                caller: scope,
                declared: js,
            },
        )?;
        let sc = Sc {
            params: Some(&bound),
            pipeline_params: pp,
            matrix: None,
        };
        let mut body: Vec<(Node, Node)> = Vec::new();
        for (k, v) in m {
            let key = k.as_str().unwrap_or("");
            if key == "parameters" {
                continue;
            }
            body.push((k.clone(), self.subst(v, &join(&def_path, key), sc)?));
        }
        let body = Node::new(Value::Map(body), def.pos);

        // The executor first; keys the job sets replace the executor's (environment merges).
        let mut out: Vec<(Node, Node)> = Vec::new();
        if let Some(e) = body.get("executor") {
            let exec = self.expand_executor(js, e, &join(&def_path, "executor"))?;
            if let Some(em) = exec.as_map() {
                let job_has_kind = ["docker", "machine", "macos"]
                    .iter()
                    .any(|k| body.get(k).is_some());
                for (k, v) in em {
                    let key = k.as_str().unwrap_or("");
                    if job_has_kind && matches!(key, "docker" | "machine" | "macos") {
                        continue;
                    }
                    out.push((k.clone(), v.clone()));
                }
            }
        } else if !["docker", "machine", "macos"]
            .iter()
            .any(|k| body.get(k).is_some())
            && !matches!(
                body.get("type").and_then(Node::as_str),
                Some("approval" | "no-op" | "release")
            )
        {
            return Err(self.err_hint(
                def,
                &def_path,
                "the job has no executor: exactly one of `docker`, `machine`, `macos` or `executor` is required",
                "add e.g. `docker: [{image: cimg/base:current}]`",
            ));
        }
        if body.get("executor").is_some() && body.get("docker").is_some() {
            // Allowed by CircleCI (the job's images replace the executor's); nothing to do.
        }
        for (k, v) in body.as_map().unwrap_or(&[]) {
            let key = k.as_str().unwrap_or("");
            match key {
                "executor" | "steps" | "description" => {}
                "environment" => {
                    let merged = match out
                        .iter()
                        .position(|(ok, _)| ok.as_str() == Some("environment"))
                    {
                        Some(i) => {
                            let prev = out.remove(i).1;
                            merge_env_nodes(&prev, v)
                        }
                        None => v.clone(),
                    };
                    out.push((k.clone(), merged));
                }
                _ => {
                    out.retain(|(ok, _)| ok.as_str() != Some(key));
                    out.push((k.clone(), v.clone()));
                }
            }
        }

        let mut steps = Vec::new();
        let mut calls = Vec::new();
        if let Some(p) = pre {
            self.expand_steps(
                &mut vec![0],
                p,
                &join(call_path, "pre-steps"),
                &mut steps,
                &mut calls,
            )?;
        }
        match body.get("steps") {
            Some(s) => self.expand_steps(
                &mut vec![js],
                s,
                &join(&def_path, "steps"),
                &mut steps,
                &mut calls,
            )?,
            None if body.get("type").is_none() => {
                return Err(self.err(def, &def_path, "required key [steps] not found"))
            }
            None => {}
        }
        if let Some(p) = post {
            self.expand_steps(
                &mut vec![0],
                p,
                &join(call_path, "post-steps"),
                &mut steps,
                &mut calls,
            )?;
        }
        if body.get("steps").is_some() || pre.is_some() || post.is_some() {
            let list: Vec<Node> = steps.iter().map(|(n, _)| n.clone()).collect();
            out.push((
                Node::str("steps", def.pos),
                Node::new(Value::Seq(list), def.pos),
            ));
        }
        Ok(Expanded {
            node: Node::new(Value::Map(out), def.pos),
            steps,
            path: def_path,
        })
    }

    /// `executor: name` / `{name, args…}` → the executor's keys, substituted.
    pub(crate) fn expand_executor(
        &self,
        scope: usize,
        node: &Node,
        path: &str,
    ) -> Result<Node, ConfigError> {
        if let Some((_, x)) = self
            .pre_expanded
            .borrow()
            .iter()
            .find(|(n, _)| n.pos == node.pos && n.value == node.value)
        {
            return Ok(x.clone());
        }
        // An executor parameter already resolved to its definition: expand that one, with
        // its own parameters' defaults.
        let resolved = self.find_executor_def(node);
        let (scope, node) = match &resolved {
            Some((es, name)) => (*es, Node::str(name.clone(), node.pos)),
            None => (scope, node.clone()),
        };
        let node = &node;
        let (name, args): (&str, Vec<(Node, Node)>) = match &node.value {
            Value::Str(s) => (s.as_str(), Vec::new()),
            Value::Map(m) => {
                let n = node
                    .get("name")
                    .ok_or_else(|| self.err(node, path, "required key [name] not found"))?;
                let args = m
                    .iter()
                    .filter(|(k, _)| k.as_str() != Some("name"))
                    .cloned()
                    .collect();
                (self.expect_str(n, &join(path, "name"))?, args)
            }
            _ => {
                return Err(self.err(
                    node,
                    path,
                    format!(
                        "expected an executor name or mapping, found {}",
                        node.kind()
                    ),
                ))
            }
        };
        let Some((es, def, def_path)) = self.resolve(scope, Kind::Executor, name) else {
            return Err(self.not_found(scope, Kind::Executor, name, node, path));
        };
        let m = self.expect_map(def, &def_path)?;
        self.check_keys(m, EXECUTOR_KEYS, &def_path)?;
        let pp = !self.scopes[es].is_orb;
        let bound = self.bind(
            def.get("parameters"),
            &join(&def_path, "parameters"),
            &args,
            node,
            path,
            pp,
            BindScopes {
                caller: scope,
                declared: es,
            },
        )?;
        let sc = Sc {
            params: Some(&bound),
            pipeline_params: pp,
            matrix: None,
        };
        let mut out = Vec::new();
        for (k, v) in m {
            let key = k.as_str().unwrap_or("");
            if key == "parameters" || key == "description" {
                continue;
            }
            out.push((k.clone(), self.subst(v, &join(&def_path, key), sc)?));
        }
        let kinds = out
            .iter()
            .filter(|(k, _)| matches!(k.as_str(), Some("docker" | "machine" | "macos")))
            .count();
        if kinds != 1 {
            return Err(self.err(
                def,
                &def_path,
                "an executor needs exactly one of `docker`, `machine` or `macos`",
            ));
        }
        Ok(Node::new(Value::Map(out), def.pos))
    }

    /// Expand a list of steps: commands inlined, `when`/`unless` decided, `steps:` spliced.
    /// `stack` holds the scopes of the commands being expanded, innermost last: step names
    /// resolve there first, then outwards (steps passed as arguments were written further out).
    fn expand_steps(
        &self,
        stack: &mut Vec<usize>,
        node: &Node,
        path: &str,
        out: &mut Vec<(Node, String)>,
        calls: &mut Vec<String>,
    ) -> Result<(), ConfigError> {
        if stack.len() > 64 {
            return Err(self.err(node, path, "steps nest more than 64 levels deep"));
        }
        let list = match &node.value {
            Value::Seq(items) => items.as_slice(),
            Value::Null => &[],
            _ => {
                return Err(self.err(
                    node,
                    path,
                    format!("expected a list of steps, found {}", node.kind()),
                ))
            }
        };
        for (i, item) in list.iter().enumerate() {
            let sp = format!("{path}[{i}]");
            let legacy;
            let item = match self.legacy_step(item, &sp)? {
                Some(n) => {
                    legacy = n;
                    &legacy
                }
                None => item,
            };
            let (name, args) = match &item.value {
                Value::Str(s) => (s.as_str(), None),
                Value::Map(m) if m.len() == 1 => {
                    let (k, v) = &m[0];
                    (self.expect_str(k, &sp)?, Some(v))
                }
                Value::Map(_) => {
                    return Err(self.err(
                        item,
                        &sp,
                        "a step is a mapping with exactly one key (its type, e.g. `run:`); check the indentation of its arguments",
                    ))
                }
                _ => {
                    return Err(self.err(
                        item,
                        &sp,
                        format!("expected a step (a string or a mapping), found {}", item.kind()),
                    ))
                }
            };
            // CircleCI also accepts the 2.0-era hyphenated spellings (`restore-cache`).
            let builtin_alias = name.replace('-', "_");
            let name = match BUILTIN_STEPS.contains(&builtin_alias.as_str()) && name.contains('-') {
                true => BUILTIN_STEPS
                    .iter()
                    .copied()
                    .find(|b| *b == builtin_alias)
                    .unwrap_or(name),
                false => name,
            };
            let here = join(&sp, name);
            // A command may shadow a built-in step name.
            let command = stack
                .iter()
                .rev()
                .find_map(|&s| self.resolve(s, Kind::Command, name));
            if let Some((cs, def, def_path)) = command {
                let qualified = format!("{}{}", self.scopes[cs].display, def_path);
                if calls.contains(&qualified) {
                    calls.push(qualified);
                    return Err(self.err(
                        item,
                        &sp,
                        format!("command `{name}` invokes itself: {}", calls.join(" → ")),
                    ));
                }
                let m = self.expect_map(def, &def_path)?;
                self.check_keys(m, &["description", "parameters", "steps"], &def_path)?;
                let args: Vec<(Node, Node)> = match args.map(|a| &a.value) {
                    None | Some(Value::Null) => Vec::new(),
                    Some(Value::Map(m)) => m.clone(),
                    Some(_) => {
                        let a = args.unwrap_or(item);
                        return Err(self.err(
                            a,
                            &here,
                            format!("expected a mapping of arguments, found {}", a.kind()),
                        ));
                    }
                };
                let pp = !self.scopes[cs].is_orb;
                let bound = self.bind(
                    def.get("parameters"),
                    &join(&def_path, "parameters"),
                    &args,
                    item,
                    &here,
                    pp,
                    BindScopes {
                        caller: stack.last().copied().unwrap_or(0),
                        declared: cs,
                    },
                )?;
                let steps = def
                    .get("steps")
                    .ok_or_else(|| self.err(def, &def_path, "required key [steps] not found"))?;
                let sc = Sc {
                    params: Some(&bound),
                    pipeline_params: pp,
                    matrix: None,
                };
                let steps = self.subst(steps, &join(&def_path, "steps"), sc)?;
                calls.push(qualified);
                stack.push(cs);
                let r = self.expand_steps(stack, &steps, &join(&def_path, "steps"), out, calls);
                stack.pop();
                calls.pop();
                r?;
                continue;
            }
            match name {
                "steps" => {
                    // What `- steps: << parameters.x >>` became: splice the list in place.
                    let list = args.unwrap_or(item);
                    self.expand_steps(stack, list, &here, out, calls)?;
                }
                "when" | "unless" => {
                    let a = args.unwrap_or(item);
                    let m = self.expect_map(a, &here)?;
                    self.check_keys(m, &["condition", "steps"], &here)?;
                    let cond = a
                        .get("condition")
                        .ok_or_else(|| self.err(a, &here, "required key [condition] not found"))?;
                    let steps = a
                        .get("steps")
                        .ok_or_else(|| self.err(a, &here, "required key [steps] not found"))?;
                    let holds = self.logic(cond, &join(&here, "condition"), 0)?;
                    if holds == (name == "when") {
                        self.expand_steps(stack, steps, &join(&here, "steps"), out, calls)?;
                    }
                }
                "run" | "deploy" => {
                    let Some(a) = args.filter(|a| a.value != Value::Null) else {
                        return Err(self.err(item, &here, format!("`{name}` needs a command")));
                    };
                    // Processed output shows `run` in map form.
                    let a = match &a.value {
                        Value::Map(_) => a.clone(),
                        _ => Node::new(
                            Value::Map(vec![(Node::str("command", a.pos), a.clone())]),
                            a.pos,
                        ),
                    };
                    let step =
                        Node::new(Value::Map(vec![(Node::str(name, item.pos), a)]), item.pos);
                    self.charge_step(&step, &here, calls)?;
                    out.push((step, here));
                }
                _ if BUILTIN_STEPS.contains(&name) => {
                    self.charge_step(item, &here, calls)?;
                    out.push((item.clone(), here))
                }
                _ => {
                    let innermost = stack.last().copied().unwrap_or(0);
                    return Err(self.not_found(innermost, Kind::Command, name, item, &sp));
                }
            }
        }
        Ok(())
    }

    /// The 2.0-preview step form, `{type: shell, name, command, pwd, …}`, still found in real
    /// configs through anchors merged into a step (`- <<: *init`), which CircleCI runs: as the
    /// modern step it stands for. `None` when `item` is not of that form.
    fn legacy_step(&self, item: &Node, path: &str) -> Result<Option<Node>, ConfigError> {
        let Value::Map(m) = &item.value else {
            return Ok(None);
        };
        if m.len() < 2 {
            return Ok(None);
        }
        let Some(ty) = item.get("type") else {
            return Ok(None);
        };
        let tp = join(path, "type");
        let ty_name = self.expect_str(ty, &tp)?;
        match ty_name {
            "shell" | "run" => {
                self.check_keys(
                    m,
                    &[
                        "type",
                        "name",
                        "command",
                        "pwd",
                        "shell",
                        "environment",
                        "background",
                        "no_output_timeout",
                        "when",
                    ],
                    path,
                )?;
                let args: Vec<(Node, Node)> = m
                    .iter()
                    .filter(|(k, _)| k.as_str() != Some("type"))
                    .map(|(k, v)| {
                        if k.as_str() == Some("pwd") {
                            (Node::str("working_directory", k.pos), v.clone())
                        } else {
                            (k.clone(), v.clone())
                        }
                    })
                    .collect();
                Ok(Some(Node::new(
                    Value::Map(vec![(
                        Node::str("run", ty.pos),
                        Node::new(Value::Map(args), item.pos),
                    )]),
                    item.pos,
                )))
            }
            "checkout" => {
                self.check_keys(m, &["type", "name", "path"], path)?;
                let args: Vec<(Node, Node)> = m
                    .iter()
                    .filter(|(k, _)| k.as_str() != Some("type"))
                    .cloned()
                    .collect();
                Ok(Some(Node::new(
                    Value::Map(vec![(
                        Node::str("checkout", ty.pos),
                        Node::new(Value::Map(args), item.pos),
                    )]),
                    item.pos,
                )))
            }
            other => Err(self.err_hint(
                ty,
                &tp,
                format!("the old step form `type: {other}` is not supported"),
                "write the step as a mapping with one key, its type (e.g. `- run: {name: …, command: …}`)",
            )),
        }
    }

    // ---------------------------------------------------------------- workflows

    /// Compile every workflow (and the implicit one of a config with a single `build` job).
    pub(crate) fn workflows(&mut self, root: &Node) -> Vec<(Workflow, Vec<(String, Node)>)> {
        let mut out = Vec::new();
        let Some(wfs) = root.get("workflows") else {
            if root.get("jobs").and_then(|j| j.get("build")).is_some() {
                let call = Node::str("build", Pos::default());
                let r = self.expand_job(0, "build", &[], &call, "jobs.build", None, None);
                match r.and_then(|x| Ok((self.lower_kind(&x)?, x))) {
                    Ok((kind, x)) => out.push((
                        Workflow {
                            name: "workflow".to_owned(),
                            jobs: vec![WorkflowJob {
                                name: "build".to_owned(),
                                job: "build".to_owned(),
                                kind,
                                requires: Vec::new(),
                                requires_status: Vec::new(),
                                context: Vec::new(),
                                filters: Filters::default(),
                                serial_group: None,
                            }],
                        },
                        vec![("build".to_owned(), x.node)],
                    )),
                    Err(e) => self.push(Err(e)),
                }
            }
            return out;
        };
        let Some(map) = wfs.as_map() else {
            let e = self.err(
                wfs,
                "workflows",
                format!("expected a mapping of workflows, found {}", wfs.kind()),
            );
            self.push(Err(e));
            return out;
        };
        let (mut total, mut filtered) = (0, Vec::new());
        for (k, wf) in map {
            let name = k.as_str().unwrap_or("?");
            if name == "version" {
                continue;
            }
            total += 1;
            let path = join("workflows", name);
            let r = self.workflow(name, wf, &path);
            match r {
                Ok(Some(w)) => out.push(w),
                Ok(None) => filtered.push(wf),
                Err(e) => self.push(Err(e)),
            }
        }
        self.number_across_workflows(&mut out);
        if total > 0 && filtered.len() == total {
            // CircleCI refuses such a pipeline rather than running nothing.
            let mut params: Vec<String> = Vec::new();
            for wf in &filtered {
                for key in ["when", "unless"] {
                    if let Some(c) = wf.get(key) {
                        pipeline_parameter_refs(c, &mut params);
                    }
                }
            }
            let hint = if params.is_empty() {
                "every workflow's `when`/`unless` is false for these pipeline values; pass the values they test (`--pipeline-param NAME=VALUE`) or add a workflow without `when`".to_owned()
            } else {
                format!(
                    "every workflow's `when`/`unless` is false for these pipeline values; they test {}: pass e.g. `--pipeline-param {}=VALUE`",
                    params.iter().map(|p| format!("`pipeline.parameters.{p}`")).collect::<Vec<_>>().join(", "),
                    params[0]
                )
            };
            let e = self.err_hint(
                wfs,
                "workflows",
                "All Workflows have been filtered from this Pipeline. No Jobs have been run.",
                hint,
            );
            self.push(Err(e));
        }
        out
    }

    /// A job invoked without `name:` more than once across workflows is numbered across
    /// them (`build-1` in one workflow, `build-2` in the next), as CircleCI names them: the
    /// processed config has one `jobs:` map for all workflows. Within its workflow each entry
    /// keeps what it required (renamed alike).
    #[allow(clippy::type_complexity)]
    fn number_across_workflows(&mut self, out: &mut [(Workflow, Vec<(String, Node)>)]) {
        let auto = std::mem::take(&mut self.auto_names);
        let mut total: std::collections::HashMap<&str, usize> = Default::default();
        for (_, _, base) in &auto {
            *total.entry(base.as_str()).or_default() += 1;
        }
        let mut seen: std::collections::HashMap<&str, usize> = Default::default();
        for (wf, jobs) in out.iter_mut() {
            let mut renames: Vec<(String, String)> = Vec::new();
            for (w, old, base) in &auto {
                if *w != wf.name || total.get(base.as_str()).copied().unwrap_or(0) < 2 {
                    continue;
                }
                let n = seen.entry(base.as_str()).or_default();
                *n += 1;
                let new = format!("{base}-{n}");
                if new != *old {
                    renames.push((old.clone(), new));
                }
            }
            if renames.is_empty() {
                continue;
            }
            let rename = |s: &mut String| {
                if let Some((_, new)) = renames.iter().find(|(o, _)| o == s) {
                    *s = new.clone();
                }
            };
            for j in &mut wf.jobs {
                rename(&mut j.name);
                j.requires.iter_mut().for_each(rename);
                j.requires_status.iter_mut().for_each(|(n, _)| rename(n));
            }
            for (n, _) in jobs.iter_mut() {
                rename(n);
            }
        }
    }

    #[allow(clippy::type_complexity)]
    fn workflow(
        &mut self,
        name: &str,
        wf: &Node,
        path: &str,
    ) -> Result<Option<(Workflow, Vec<(String, Node)>)>, ConfigError> {
        let m = self.expect_map(wf, path)?;
        self.check_keys(
            m,
            &["jobs", "when", "unless", "triggers", "max_auto_reruns"],
            path,
        )?;
        let sc = Sc {
            params: None,
            pipeline_params: true,
            matrix: None,
        };
        let wf = self.subst(wf, path, sc)?;
        for (key, want) in [("when", true), ("unless", false)] {
            if let Some(c) = wf.get(key) {
                if self.logic(c, &join(path, key), 0)? != want {
                    return Ok(None);
                }
            }
        }
        let jobs = wf
            .get("jobs")
            .ok_or_else(|| self.err(&wf, path, "required key [jobs] not found"))?;
        let jp = join(path, "jobs");
        let list = jobs.as_seq().ok_or_else(|| {
            self.err(
                jobs,
                &jp,
                format!("expected a list of jobs, found {}", jobs.kind()),
            )
        })?;
        // (entry, explicit name?, matrix alias, requires as written)
        struct Entry {
            job: WorkflowJob,
            explicit: bool,
            alias: Option<String>,
            requires: Vec<Requirement>,
            node: Option<Node>,
            at: Node,
            path: String,
        }
        let mut entries: Vec<Entry> = Vec::new();
        for (i, item) in list.iter().enumerate() {
            let ip = format!("{jp}[{i}]");
            let (job_ref, inv) = match &item.value {
                Value::Str(s) => (s.clone(), None),
                Value::Map(mm) if mm.len() == 1 => {
                    (self.expect_str(&mm[0].0, &ip)?.to_owned(), Some(&mm[0].1))
                }
                _ => {
                    self.push(Err(self.err(item, &ip, "a workflow job is a job name or a mapping with exactly one key (the job name); check the indentation of its arguments")));
                    continue;
                }
            };
            let here = join(&ip, &job_ref);
            let inv_map: Vec<(Node, Node)> = match inv.map(|n| &n.value) {
                None | Some(Value::Null) => Vec::new(),
                Some(Value::Map(m)) => m.clone(),
                Some(_) => {
                    let n = inv.unwrap_or(item);
                    self.push(Err(self.err(
                        n,
                        &here,
                        format!("expected a mapping of job arguments, found {}", n.kind()),
                    )));
                    continue;
                }
            };
            let combos = match self.matrix(&inv_map, &here) {
                Ok(c) => c,
                Err(e) => {
                    self.push(Err(e));
                    continue;
                }
            };
            let alias = inv_map
                .iter()
                .find(|(k, _)| k.as_str() == Some("matrix"))
                .map(|(_, m)| {
                    m.get("alias")
                        .and_then(Node::as_str)
                        .unwrap_or(&job_ref)
                        .to_owned()
                });
            for combo in combos {
                let r = self.invocation(&job_ref, &inv_map, combo.as_deref(), item, &here);
                match r {
                    Ok((job, explicit, requires, node, deferred)) => {
                        if let Some(e) = deferred {
                            self.push(Err(e));
                        }
                        entries.push(Entry {
                            job,
                            explicit,
                            alias: alias.clone(),
                            requires,
                            node,
                            at: item.clone(),
                            path: here.clone(),
                        })
                    }
                    Err(e) => self.push(Err(e)),
                }
            }
        }
        // Unnamed repeats of one job become job-1, job-2, … as CircleCI names them.
        let mut counts: std::collections::HashMap<String, usize> = Default::default();
        for e in entries.iter().filter(|e| !e.explicit) {
            *counts.entry(e.job.name.clone()).or_default() += 1;
        }
        let mut seen: std::collections::HashMap<String, usize> = Default::default();
        for e in entries.iter_mut().filter(|e| !e.explicit) {
            let base = e.job.name.clone();
            if counts.get(&e.job.name).copied().unwrap_or(0) > 1 {
                let n = seen.entry(e.job.name.clone()).or_default();
                *n += 1;
                e.job.name = format!("{}-{n}", e.job.name);
            }
            if !e.job.is_approval() {
                self.auto_names
                    .push((name.to_owned(), e.job.name.clone(), base));
            }
        }
        let names: Vec<String> = entries.iter().map(|e| e.job.name.clone()).collect();
        for (i, e) in entries.iter().enumerate() {
            if names[..i].contains(&e.job.name) {
                let err = self.err_hint(
                    &e.at,
                    &e.path,
                    format!(
                        "job name `{}` is used twice in workflow '{name}'",
                        e.job.name
                    ),
                    "give one of them a distinct `name:`",
                );
                self.push(Err(err));
            }
        }
        let mut resolved_requires: Vec<Vec<String>> = Vec::new();
        let mut resolved_status: Vec<Vec<(String, Vec<RequiredStatus>)>> = Vec::new();
        for e in &entries {
            let mut reqs = Vec::new();
            let mut with_status = Vec::new();
            for (r, at, statuses) in &e.requires {
                let targets: Vec<&str> = if names.contains(r) {
                    vec![r.as_str()]
                } else {
                    entries
                        .iter()
                        .filter(|o| o.alias.as_deref() == Some(r.as_str()))
                        .map(|o| o.job.name.as_str())
                        .collect()
                };
                if targets.is_empty() {
                    let n = entries
                        .iter()
                        .filter(|o| !o.explicit && o.job.job == *r)
                        .count();
                    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
                    let msg = format!("Job '{}' requires '{r}', which is the name of {n} other jobs in workflow '{name}'", e.job.name);
                    let err = match nearest(r, &refs) {
                        Some(s) => self.err_hint(
                            at,
                            &join(&e.path, "requires"),
                            msg,
                            format!("did you mean `{s}`?"),
                        ),
                        None if n > 1 => self.err_hint(
                            at,
                            &join(&e.path, "requires"),
                            msg,
                            "name each invocation (`name:`) and require those names",
                        ),
                        None => self.err(at, &join(&e.path, "requires"), msg),
                    };
                    self.push(Err(err));
                }
                for t in targets {
                    if !reqs.iter().any(|x: &String| x == t) {
                        reqs.push(t.to_owned());
                    }
                    if let Some(st) = statuses {
                        with_status.push((t.to_owned(), st.clone()));
                    }
                }
            }
            resolved_requires.push(reqs);
            resolved_status.push(with_status);
        }
        // Every job must be reachable from a job without requirements (no cycles).
        let mut done = vec![false; entries.len()];
        loop {
            let mut progress = false;
            for i in 0..entries.len() {
                if !done[i]
                    && resolved_requires[i]
                        .iter()
                        .all(|r| names.iter().position(|n| n == r).is_none_or(|j| done[j]))
                {
                    done[i] = true;
                    progress = true;
                }
            }
            if !progress {
                break;
            }
        }
        if !entries.is_empty() && done.iter().any(|d| !d) {
            let stuck: Vec<&str> = entries
                .iter()
                .zip(&done)
                .filter(|(_, d)| !**d)
                .map(|(e, _)| e.job.name.as_str())
                .collect();
            let msg = if resolved_requires.iter().all(|r| !r.is_empty()) {
                format!("At least one job in the workflow must have no dependencies. The following jobs are unreachable: {}", stuck.join(", "))
            } else {
                format!("The following jobs are unreachable: {}", stuck.join(", "))
            };
            // Point at the `requires:` of the first job that can never start.
            let first = entries
                .iter()
                .zip(&done)
                .find(|(_, d)| !**d)
                .map(|(e, _)| e);
            let (at, at_path) = match first {
                Some(e) => match e.at.as_map().and_then(|m| m.first()).and_then(|(_, inv)| {
                    inv.as_map()?
                        .iter()
                        .find(|(k, _)| k.as_str() == Some("requires"))
                        .map(|(_, v)| v.clone())
                }) {
                    Some(r) => (r, join(&e.path, "requires")),
                    None => (e.at.clone(), e.path.clone()),
                },
                None => (jobs.clone(), jp.clone()),
            };
            self.push(Err(self.err_hint(
                &at,
                &at_path,
                msg,
                "the jobs' `requires` form a cycle",
            )));
        }
        let mut out_jobs = Vec::new();
        let mut nodes = Vec::new();
        for ((e, reqs), with_status) in entries
            .into_iter()
            .zip(resolved_requires)
            .zip(resolved_status)
        {
            let mut job = e.job;
            job.requires = reqs;
            job.requires_status = with_status;
            if let Some(n) = e.node {
                nodes.push((job.name.clone(), n));
            }
            out_jobs.push(job);
        }
        Ok(Some((
            Workflow {
                name: name.to_owned(),
                jobs: out_jobs,
            },
            nodes,
        )))
    }

    /// The combinations of a `matrix:` (each a list of (param, value)), or `[None]` without one.
    #[allow(clippy::type_complexity)]
    fn matrix(
        &self,
        inv: &[(Node, Node)],
        path: &str,
    ) -> Result<Vec<Option<Vec<(String, Node)>>>, ConfigError> {
        let Some((_, m)) = inv.iter().find(|(k, _)| k.as_str() == Some("matrix")) else {
            return Ok(vec![None]);
        };
        let mp = join(path, "matrix");
        let mm = self.expect_map(m, &mp)?;
        self.check_keys(mm, &["parameters", "exclude", "alias"], &mp)?;
        let params = m
            .get("parameters")
            .ok_or_else(|| self.err(m, &mp, "required key [parameters] not found"))?;
        let mut combos: Vec<Vec<(String, Node)>> = vec![Vec::new()];
        for (k, vals) in self.expect_map(params, &join(&mp, "parameters"))? {
            let pname = self.expect_str(k, &join(&mp, "parameters"))?;
            let items = vals.as_seq().ok_or_else(|| {
                self.err(
                    vals,
                    &join(&join(&mp, "parameters"), pname),
                    format!("expected a list of values, found {}", vals.kind()),
                )
            })?;
            let mut next = Vec::with_capacity(combos.len() * items.len());
            for c in &combos {
                for v in items {
                    let mut c2 = c.clone();
                    c2.push((pname.to_owned(), v.clone()));
                    next.push(c2);
                }
            }
            combos = next;
            if combos.len() > 10_000 {
                return Err(self.err(m, &mp, "the matrix expands to more than 10,000 jobs"));
            }
        }
        if let Some(ex) = m.get("exclude") {
            let items = ex.as_seq().ok_or_else(|| {
                self.err(
                    ex,
                    &join(&mp, "exclude"),
                    format!("expected a list of parameter maps, found {}", ex.kind()),
                )
            })?;
            for (i, item) in items.iter().enumerate() {
                let em = self.expect_map(item, &format!("{mp}.exclude[{i}]"))?;
                // An exclusion that matches nothing is accepted, as CircleCI does (a commented-out
                // matrix value leaves its exclusions behind).
                combos.retain(|c| {
                    !em.iter().all(|(k, v)| {
                        c.iter().any(|(ck, cv)| {
                            Some(ck.as_str()) == k.as_str()
                                && cv.scalar_string() == v.scalar_string()
                        })
                    })
                });
            }
        }
        Ok(combos.into_iter().map(Some).collect())
    }

    /// The statuses of a `requires` entry written as `job: status` or `job: [statuses]`.
    fn required_statuses(&self, v: &Node, path: &str) -> Result<Vec<RequiredStatus>, ConfigError> {
        let words: Vec<&Node> = match &v.value {
            Value::Seq(items) => items.iter().collect(),
            _ => vec![v],
        };
        let mut out: Vec<RequiredStatus> = Vec::new();
        for w in words {
            let text = w.as_str().unwrap_or("");
            let Some(st) = RequiredStatus::parse(text) else {
                return Err(self.err_hint(
                    w,
                    path,
                    format!(
                        "`{}` is not a status a requirement can ask for",
                        w.scalar_string().unwrap_or_default()
                    ),
                    "use success, failed, canceled, unauthorized, not_run or terminal",
                ));
            };
            for s in st {
                if !out.contains(s) {
                    out.push(*s);
                }
            }
        }
        if out.is_empty() {
            return Err(self.err(v, path, "expected a status or a list of statuses"));
        }
        Ok(out)
    }

    /// One workflow job entry (one matrix combination): its name, requires and compiled job.
    #[allow(clippy::type_complexity)]
    fn invocation(
        &self,
        job_ref: &str,
        inv: &[(Node, Node)],
        combo: Option<&[(String, Node)]>,
        at: &Node,
        path: &str,
    ) -> Result<
        (
            WorkflowJob,
            bool,
            Vec<Requirement>,
            Option<Node>,
            Option<ConfigError>,
        ),
        ConfigError,
    > {
        let sc = Sc {
            params: None,
            pipeline_params: true,
            matrix: Some(combo.unwrap_or(&[])),
        };
        let mut args = Vec::new();
        let get = |k: &str| {
            inv.iter()
                .find(|(n, _)| n.as_str() == Some(k))
                .map(|(_, v)| v)
        };
        let keyed = |k: &str| -> Result<Option<Node>, ConfigError> {
            get(k)
                .map(|v| self.subst(v, &join(path, k), sc))
                .transpose()
        };
        let name_node = keyed("name")?;
        let requires = keyed("requires")?;
        let context = keyed("context")?;
        let filters = keyed("filters")?;
        let pre = keyed("pre-steps")?;
        let post = keyed("post-steps")?;
        let ty = keyed("type")?;
        let serial_group = keyed("serial-group")?;
        let override_with = keyed("override-with")?;
        let is_approval = ty.as_ref().and_then(Node::as_str) == Some("approval");
        if !is_approval {
            self.check_invocation_args(job_ref, inv, path)?;
        }
        for (k, v) in inv {
            let key = k.as_str().unwrap_or("");
            if !INVOCATION_KEYS.contains(&key) {
                args.push((k.clone(), self.subst(v, &join(path, key), sc)?));
            }
        }
        if let Some(c) = combo {
            for (k, v) in c {
                args.push((Node::str(k.clone(), v.pos), v.clone()));
            }
        }
        let explicit = name_node.is_some();
        let name = match &name_node {
            Some(n) => n.scalar_string().filter(|s| !s.is_empty()).ok_or_else(|| {
                self.err(
                    n,
                    &join(path, "name"),
                    format!("expected a job name, found {}", n.kind()),
                )
            })?,
            None => match combo {
                Some(c) => {
                    // Values ordered by parameter name, as CircleCI forms matrix job names.
                    let mut sorted: Vec<&(String, Node)> = c.iter().collect();
                    sorted.sort_by(|a, b| a.0.cmp(&b.0));
                    let mut s = job_ref.to_owned();
                    for (_, v) in sorted {
                        s.push('-');
                        s.push_str(&v.scalar_string().unwrap_or_default());
                    }
                    s
                }
                None => job_ref.to_owned(),
            },
        };
        let mut reqs = Vec::new();
        if let Some(r) = &requires {
            let rp = join(path, "requires");
            let items = r.as_seq().ok_or_else(|| {
                self.err(
                    r,
                    &rp,
                    format!("expected a list of job names, found {}", r.kind()),
                )
            })?;
            for item in items {
                match &item.value {
                    Value::Map(m) => {
                        for (k, v) in m {
                            let name = self.expect_str(k, &rp)?.to_owned();
                            let statuses = self.required_statuses(v, &join(&rp, &name))?;
                            reqs.push((name, k.clone(), Some(statuses)));
                        }
                    }
                    _ => reqs.push((item.scalar_string().unwrap_or_default(), item.clone(), None)),
                }
            }
        }
        let context = match &context {
            None => Vec::new(),
            Some(c) => match &c.value {
                Value::Seq(items) => items.iter().filter_map(Node::scalar_string).collect(),
                _ => vec![c.scalar_string().unwrap_or_default()],
            },
        };
        let filters_parsed = match &filters {
            None => Filters::default(),
            Some(f) => self.filters(f, &join(path, "filters"))?,
        };
        let serial = match &serial_group {
            None => None,
            Some(g) => Some(self.serial_group(g, &join(path, "serial-group"))?),
        };
        // `override-with: orb/job` replaces the local job by the orb's when the orb has it.
        let job_ref = match &override_with {
            None => job_ref,
            Some(o) => {
                let op = join(path, "override-with");
                let name = self.expect_str(o, &op)?;
                if !name.contains('/') {
                    return Err(self.err_hint(
                        o,
                        &op,
                        format!("`override-with: {name}` must name an orb job (`orb/job`)"),
                        "declare the orb under `orbs:` and write `alias/job`",
                    ));
                }
                if self.resolve(0, Kind::Job, name).is_some() {
                    name
                } else {
                    job_ref
                }
            }
        };
        let approval = match &ty {
            None => false,
            Some(t) if t.as_str() == Some("approval") => true,
            Some(t) => {
                return Err(self.err_hint(
                    t,
                    &join(path, "type"),
                    format!(
                        "`type: {}` is not valid in a workflow",
                        t.scalar_string().unwrap_or_default()
                    ),
                    "only `type: approval` may be set on a workflow job",
                ))
            }
        };
        // A job that does not compile still takes its place in the workflow, so the
        // workflow's own checks (requires, cycles) run and report too.
        let mut deferred = None;
        let (kind, node) = if approval {
            (WorkflowJobKind::Approval, None)
        } else {
            let r = self
                .expand_job(0, job_ref, &args, at, path, pre.as_ref(), post.as_ref())
                .and_then(|x| Ok((self.lower_kind(&x)?, x.node)));
            match r {
                Ok((kind, node)) => (kind, Some(node)),
                Err(e) => {
                    deferred = Some(e);
                    (
                        WorkflowJobKind::NotRunnable {
                            reason: "the job does not compile".to_owned(),
                        },
                        None,
                    )
                }
            }
        };
        let wj = WorkflowJob {
            name,
            job: job_ref.to_owned(),
            kind,
            requires: Vec::new(),
            requires_status: Vec::new(),
            context,
            filters: filters_parsed,
            serial_group: serial.clone(),
        };
        let mut out_entry = Vec::new();
        if let Some(t) = &ty {
            out_entry.push((Node::str("type", t.pos), t.clone()));
        }
        if let Some(c) = get_node(inv, "context") {
            out_entry.push((Node::str("context", c.pos), self.subst(c, path, sc)?));
        }

        if let Some(f) = &filters {
            out_entry.push((Node::str("filters", f.pos), f.clone()));
        }
        // Kept in the processed output, as CircleCI keeps them (the scheduler reads them).
        if let (Some(g), Some(text)) = (&serial_group, serial) {
            out_entry.push((Node::str("serial-group", g.pos), Node::str(text, g.pos)));
        }
        if let Some(o) = &override_with {
            out_entry.push((Node::str("override-with", o.pos), o.clone()));
        }
        let wf_entry = Node::new(Value::Map(out_entry), at.pos);
        Ok((
            wj,
            explicit,
            reqs,
            node.map(|n| pack(n, wf_entry)),
            deferred,
        ))
    }

    /// Arguments of a workflow job invocation and its matrix parameters must be parameters
    /// the job declares. Checked here, before expansion, so a typo'd invocation key
    /// (`filter:`) is compared with the invocation keys too, and an undeclared matrix
    /// parameter is reported once, at its key under `matrix.parameters`.
    fn check_invocation_args(
        &self,
        job_ref: &str,
        inv: &[(Node, Node)],
        path: &str,
    ) -> Result<(), ConfigError> {
        let Some((_, def, _)) = self.resolve(0, Kind::Job, job_ref) else {
            return Ok(()); // expand_job reports the missing definition
        };
        let declared: Vec<&str> = def
            .get("parameters")
            .and_then(Node::as_map)
            .map(|m| m.iter().filter_map(|(k, _)| k.as_str()).collect())
            .unwrap_or_default();
        let describe_declared = || {
            if declared.is_empty() {
                format!("job `{job_ref}` declares no parameters")
            } else {
                format!("parameters of job `{job_ref}`: {}", declared.join(", "))
            }
        };
        for (k, _) in inv {
            let Some(key) = k.as_str() else { continue };
            if INVOCATION_KEYS.contains(&key) || declared.contains(&key) {
                continue;
            }
            let msg = format!("Unexpected argument(s): {key}");
            let mut candidates: Vec<&str> = declared.clone();
            candidates.extend(INVOCATION_KEYS);
            let hint = match nearest(key, &candidates) {
                Some(s) if INVOCATION_KEYS.contains(&s) => {
                    format!(
                        "did you mean `{s}`? (a workflow job key; any other key is a job argument)"
                    )
                }
                Some(s) => format!("did you mean `{s}`?"),
                None => describe_declared(),
            };
            return Err(self.err_hint(k, &join(path, key), msg, hint));
        }
        let params = inv
            .iter()
            .find(|(k, _)| k.as_str() == Some("matrix"))
            .and_then(|(_, m)| m.get("parameters"))
            .and_then(Node::as_map)
            .unwrap_or(&[]);
        for (k, _) in params {
            let Some(key) = k.as_str() else { continue };
            if declared.contains(&key) {
                continue;
            }
            let msg = format!(
                "Unexpected argument(s): {key}: the matrix parameter is not a parameter of job `{job_ref}`"
            );
            let hint = match nearest(key, &declared) {
                Some(s) => format!("did you mean `{s}`?"),
                None => describe_declared(),
            };
            return Err(self.err_hint(k, &format!("{path}.matrix.parameters.{key}"), msg, hint));
        }
        Ok(())
    }

    /// `serial-group`: after substitution, non-blank, at most 512 characters of
    /// `[A-Za-z0-9./_-]` (CircleCI's rule).
    fn serial_group(&self, g: &Node, path: &str) -> Result<String, ConfigError> {
        let text = g
            .scalar_string()
            .filter(|_| matches!(g.value, Value::Str(_) | Value::Int(_)))
            .ok_or_else(|| {
                self.err(
                    g,
                    path,
                    format!("expected a group name, found {}", g.kind()),
                )
            })?;
        let bad = text
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '/' | '_' | '-')));
        if text.trim().is_empty() || text.len() > 512 || bad.is_some() {
            return Err(self.err_hint(
                g,
                path,
                match bad {
                    Some(c) => format!("serial-group `{text}` contains `{c}`"),
                    None if text.len() > 512 => "serial-group is longer than 512 characters".to_owned(),
                    None => "serial-group is blank".to_owned(),
                },
                "a serial group is 1 to 512 characters of letters, digits, `.`, `/`, `_` and `-` (pipeline values allowed, e.g. `<< pipeline.project.slug >>/deploy`)",
            ));
        }
        Ok(text)
    }

    fn filters(&self, f: &Node, path: &str) -> Result<Filters, ConfigError> {
        if f.as_str().is_some() {
            return Err(self.err_hint(f, path, "expression filters (`filters: pipeline.git.branch == \"main\"`) are not supported by bosun", "use `filters: {branches: {only: main}}`"));
        }
        let m = self.expect_map(f, path)?;
        self.check_keys(m, &["branches", "tags"], path)?;
        let one = |key: &str| -> Result<Option<Filter>, ConfigError> {
            let Some(n) = f.get(key) else { return Ok(None) };
            let p = join(path, key);
            let m = self.expect_map(n, &p)?;
            self.check_keys(m, &["only", "ignore"], &p)?;
            let pats = |k: &str| -> Result<Vec<Pattern>, ConfigError> {
                let Some(v) = n.get(k) else {
                    return Ok(Vec::new());
                };
                let kp = join(&p, k);
                let items: Vec<&Node> = match &v.value {
                    Value::Seq(items) => items.iter().collect(),
                    _ => vec![v],
                };
                items
                    .into_iter()
                    .map(|it| {
                        let s = it
                            .scalar_string()
                            .filter(|_| !matches!(it.value, Value::Seq(_) | Value::Map(_)))
                            .ok_or_else(|| {
                                self.err(
                                    it,
                                    &kp,
                                    format!("expected a name or /regex/, found {}", it.kind()),
                                )
                            })?;
                        if s.len() >= 2 && s.starts_with('/') && s.ends_with('/') {
                            Ok(Pattern::Regex(self.regex(&s[1..s.len() - 1], it, &kp)?))
                        } else {
                            Ok(Pattern::Exact(s))
                        }
                    })
                    .collect()
            };
            Ok(Some(Filter {
                only: pats("only")?,
                ignore: pats("ignore")?,
            }))
        };
        Ok(Filters {
            branches: one("branches")?,
            tags: one("tags")?,
        })
    }
}

fn get_node<'a>(inv: &'a [(Node, Node)], k: &str) -> Option<&'a Node> {
    inv.iter()
        .find(|(n, _)| n.as_str() == Some(k))
        .map(|(_, v)| v)
}

/// A compiled job node and its workflow entry, carried together until output.
fn pack(job: Node, entry: Node) -> Node {
    Node::new(Value::Seq(vec![job, entry]), Pos::default())
}

/// `environment` of an executor merged with the job's (job wins); either may be a map or
/// CircleCI's list of single-key maps.
fn merge_env_nodes(under: &Node, over: &Node) -> Node {
    let mut out: Vec<(Node, Node)> = Vec::new();
    for n in [under, over] {
        let pairs: Vec<(Node, Node)> = match &n.value {
            Value::Map(m) => m.clone(),
            Value::Seq(items) => items
                .iter()
                .filter_map(|i| i.as_map())
                .flat_map(|m| m.to_vec())
                .collect(),
            _ => Vec::new(),
        };
        for (k, v) in pairs {
            if let Some(slot) = out.iter_mut().find(|(ek, _)| ek.value == k.value) {
                slot.1 = v;
            } else {
                out.push((k, v));
            }
        }
    }
    Node::new(Value::Map(out), over.pos)
}

impl Engine {
    pub(crate) fn lower_kind(&self, x: &Expanded) -> Result<WorkflowJobKind, ConfigError> {
        match x.node.get("type").and_then(Node::as_str) {
            Some("approval") => return Ok(WorkflowJobKind::Approval),
            Some(t @ ("no-op" | "release")) => {
                return Ok(WorkflowJobKind::NotRunnable {
                    reason: format!("a `{t}` job has no steps to execute"),
                })
            }
            Some("build") | None => {}
            Some(t) => {
                return Err(self.err_hint(
                    &x.node,
                    &join(&x.path, "type"),
                    format!("unknown job type `{t}`"),
                    "job types are build, approval, no-op, release",
                ))
            }
        }
        if x.node.get("macos").is_some() {
            // Still compile the steps, so their errors are reported.
            self.lower_steps(x)?;
            return Ok(WorkflowJobKind::NotRunnable {
                reason: "`macos` jobs are not supported by this agent (it runs Linux containers)"
                    .to_owned(),
            });
        }
        Ok(WorkflowJobKind::Build(Box::new(self.lower(x)?)))
    }

    pub(crate) fn lower(&self, x: &Expanded) -> Result<CompiledJob, ConfigError> {
        lower::lower(self, x)
    }

    pub(crate) fn lower_steps(&self, x: &Expanded) -> Result<Vec<Step>, ConfigError> {
        lower::steps(self, x)
    }
}

/// Names of the pipeline parameters a logic statement refers to, in order of appearance.
fn pipeline_parameter_refs(n: &Node, out: &mut Vec<String>) {
    match &n.value {
        Value::Str(s) => {
            let mut rest = s.as_str();
            while let Some(i) = rest.find("pipeline.parameters.") {
                rest = &rest[i + "pipeline.parameters.".len()..];
                let name: String = rest
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-'))
                    .collect();
                if !name.is_empty() && !out.contains(&name) {
                    out.push(name);
                }
            }
        }
        Value::Seq(items) => items.iter().for_each(|i| pipeline_parameter_refs(i, out)),
        Value::Map(m) => m.iter().for_each(|(_, v)| pipeline_parameter_refs(v, out)),
        _ => {}
    }
}

/// `commands.c3` (or `orb/commands.c3`) as the user wrote the name: `c3`, `orb/c3`.
fn command_label(qualified: &str) -> String {
    let alias = qualified.split_once('/').map_or("", |(a, _)| a);
    let name = qualified
        .rsplit_once("commands.")
        .map_or(qualified, |(_, n)| n);
    if alias.is_empty() {
        name.to_owned()
    } else {
        format!("{alias}/{name}")
    }
}

/// Split a packed job node back into (job, workflow entry).
pub(crate) fn unpack(n: &Node) -> (Node, Node) {
    match n.as_seq() {
        Some([a, b]) => (a.clone(), b.clone()),
        _ => (n.clone(), Node::new(Value::Map(Vec::new()), n.pos)),
    }
}

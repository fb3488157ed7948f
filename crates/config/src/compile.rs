//! The 2.1 compiler proper: orbs → scopes, jobs with executors, commands and conditional steps
//! expanded, workflows with matrices, filters and requires; output both as plans and as the
//! processed (2.0-shaped) YAML tree.

use super::graph::{
    Filter, Filters, Pattern, RequiredStatus, Schedule, Workflow, WorkflowJob, WorkflowJobKind,
};
use super::plan::CompiledJob;
use super::yaml::{self, Node, Pos, Value};
use super::*;
use interp::{BindScopes, Scope as Sc};

mod interp;
mod jobs;
mod orbs;
mod workflows;

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

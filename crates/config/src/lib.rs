//! `.circleci/config.yml` → [`JobPlan`]. Pure: text in, plan out, errors with positions.
//!
//! The CircleCI 2.1 compiler, offline: the document becomes a positioned tree ([`yaml`]);
//! orbs (inline or vendored through an [`OrbLoader`]), parameters, executors, commands,
//! conditional steps and matrices are expanded; the result is a workflow graph ([`graph`])
//! whose build jobs carry the plan the executor runs, and the processed YAML.
//! Every error names the file, line, column and key path.

mod compile;
pub mod cron;
pub mod graph;
mod lower;
pub mod orb_pack;
mod orbdir;
pub mod plan;
pub mod resource_class;
pub mod yaml;

pub use graph::{
    filters_allow, readiness, Filter, Filters, GitRef, Pattern, Readiness, RequiredStatus,
    Schedule, Workflow, WorkflowJob, WorkflowJobKind,
};
pub use orbdir::OrbDir;
pub use plan::{
    CompiledJob, DockerImage, ExecutorKind, JobPlan, RunStep, Step, StepKind, When,
    DEFAULT_NO_OUTPUT_TIMEOUT,
};

use std::fmt;
use std::time::Duration;
use yaml::{Node, Pos, Value};

/// A config problem, located.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigError {
    pub file: String,
    pub pos: Pos,
    /// Key path such as `jobs.build.steps[3].run.command`.
    pub path: String,
    pub message: String,
    /// What to do about it (e.g. the nearest valid key).
    pub hint: Option<String>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: ", self.file, self.pos.line, self.pos.col)?;
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        f.write_str(&self.message)?;
        if let Some(h) = &self.hint {
            write!(f, "\n  help: {h}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// Values of `<< pipeline.* >>`, filled by the caller (from the checkout and the command line).
/// The defaults are the ones `circleci config process` fabricates locally.
#[derive(Debug, Clone, PartialEq)]
pub struct PipelineValues {
    pub id: String,
    pub number: i64,
    pub project_git_url: String,
    /// `github`, `bitbucket`, …
    pub project_type: String,
    /// `pipeline.project.slug` (`bitbucket/acme/widget`); empty = derived from the project's
    /// type and git URL, as CircleCI forms it.
    pub project_slug: String,
    pub git_branch: String,
    pub git_tag: String,
    pub git_revision: String,
    pub git_base_revision: String,
    pub trigger_source: String,
    /// `pipeline.schedule.*`: empty unless a schedule started the pipeline.
    pub schedule_name: String,
    pub schedule_id: String,
    /// Every other value by its name after `pipeline.` (`event.name`,
    /// `trigger_parameters.webhook.body`, `git.commit.subject`, …), as an integration gives
    /// them; a known name not given here is the empty string.
    pub extra: Vec<(String, String)>,
    /// `--pipeline-param k=v`: read as the declared type (boolean, integer) when compiling.
    pub parameters: Vec<(String, String)>,
}

impl Default for PipelineValues {
    fn default() -> Self {
        PipelineValues {
            id: "00000000-0000-0000-0000-000000000001".to_owned(),
            number: 1,
            project_git_url: String::new(),
            project_type: "github".to_owned(),
            project_slug: String::new(),
            git_branch: String::new(),
            git_tag: String::new(),
            git_revision: String::new(),
            git_base_revision: String::new(),
            trigger_source: "webhook".to_owned(),
            schedule_name: String::new(),
            schedule_id: String::new(),
            extra: Vec::new(),
            parameters: Vec::new(),
        }
    }
}

impl PipelineValues {
    /// The `pipeline.` names CircleCI documents (reference: `circleci-executors-ssh-pipelines.md`
    /// §6 and `circleci-config-semantics.md` §2.4). `trigger_parameters.<integration>.*` is a
    /// family, see [`Self::TRIGGER_PARAMETER_FAMILIES`].
    pub const NAMES: &'static [&'static str] = &[
        "id",
        "number",
        "name",
        "definition.id",
        "project.git_url",
        "project.type",
        "project.slug",
        "integration_source",
        "git.branch",
        "git.tag",
        "git.revision",
        "git.base_revision",
        "git.branch.is_default",
        "git.repo_url",
        "git.repo_owner",
        "git.repo_name",
        "git.repo_id",
        "git.commit.url",
        "git.commit.subject",
        "git.commit.body",
        "git.commit.author_login",
        "trigger_source",
        "trigger.type",
        "trigger.received_at",
        "trigger.id",
        "schedule.name",
        "schedule.id",
        "event.name",
        "event.action",
        "in_setup",
    ];

    /// `pipeline.trigger_parameters.<family>.<field>`: fields depend on the integration
    /// (GitLab, custom webhooks, CircleCI's own triggers, GitHub App), so any field of these
    /// families is known; one the trigger did not give is empty.
    pub const TRIGGER_PARAMETER_FAMILIES: &'static [&'static str] =
        &["circleci", "gitlab", "github_app", "webhook"];

    /// `pipeline.project.slug` as CircleCI forms it: `<vcs>/<owner>/<repo>` from the git URL
    /// (`git@bitbucket.org:acme/widget.git`, `https://github.com/acme/widget`).
    pub fn derived_slug(&self) -> String {
        let url = self.project_git_url.trim_end_matches('/');
        let url = url.strip_suffix(".git").unwrap_or(url);
        // The last two path segments, whichever of `host:owner/repo` or `scheme://host/owner/repo`.
        let path = match url.split_once("://") {
            Some((_, rest)) => rest.split_once('/').map_or("", |(_, p)| p),
            None => url.split_once(':').map_or(url, |(_, p)| p),
        };
        let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        match segs.as_slice() {
            [.., owner, repo] => format!("{}/{owner}/{repo}", self.project_type),
            _ => String::new(),
        }
    }

    fn value(&self, name: &str) -> Option<Value> {
        let s = |v: &str| Some(Value::Str(v.to_owned()));
        if let Some((_, v)) = self.extra.iter().find(|(k, _)| k == name) {
            return s(v);
        }
        match name {
            "id" => s(&self.id),
            "number" => Some(Value::Int(self.number)),
            "project.git_url" => s(&self.project_git_url),
            "project.type" => s(&self.project_type),
            "project.slug" if self.project_slug.is_empty() => Some(Value::Str(self.derived_slug())),
            "project.slug" => s(&self.project_slug),
            "integration_source" => s(&self.project_type),
            "git.branch" => s(&self.git_branch),
            "git.tag" => s(&self.git_tag),
            "git.revision" => s(&self.git_revision),
            "git.base_revision" => s(&self.git_base_revision),
            "git.branch.is_default" => Some(Value::Bool(matches!(
                self.git_branch.as_str(),
                "main" | "master"
            ))),
            "git.repo_url" => s(&self.project_git_url),
            "git.repo_owner" | "git.repo_name" => {
                let slug = self.value("project.slug")?;
                let slug = slug_parts(&slug);
                s(if name == "git.repo_owner" {
                    slug.0
                } else {
                    slug.1
                })
            }
            "trigger_source" => s(&self.trigger_source),
            "trigger.type" => s(match self.trigger_source.as_str() {
                "webhook" => "webhook",
                "schedule" | "scheduled_pipeline" => "schedule",
                _ if !self.schedule_name.is_empty() => "schedule",
                _ => "api",
            }),
            "schedule.name" => s(&self.schedule_name),
            "schedule.id" => s(&self.schedule_id),
            "in_setup" => Some(Value::Bool(false)),
            _ if Self::NAMES.contains(&name) => s(""),
            _ => {
                let rest = name.strip_prefix("trigger_parameters.")?;
                let (family, field) = rest.split_once('.')?;
                (Self::TRIGGER_PARAMETER_FAMILIES.contains(&family) && !field.is_empty())
                    .then(|| Value::Str(String::new()))
            }
        }
    }
}

/// (owner, repo) of a `vcs/owner/repo` slug value.
fn slug_parts(v: &Value) -> (&str, &str) {
    let Value::Str(s) = v else { return ("", "") };
    let mut it = s.splitn(3, '/').skip(1);
    (it.next().unwrap_or(""), it.next().unwrap_or(""))
}

/// A registry orb reference, `namespace/name@version`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrbRef {
    pub namespace: String,
    pub name: String,
    pub version: String,
}

impl OrbRef {
    /// Where a vendored copy lives inside an orb dir: `<namespace>/<name>@<version>.yml`.
    pub fn vendored_path(&self) -> String {
        format!("{}/{}@{}.yml", self.namespace, self.name, self.version)
    }
}

pub enum OrbSource {
    /// `file` names the source in errors (e.g. the path read).
    Found {
        file: String,
        text: String,
    },
    Missing,
    Failed(String),
}

/// Supplies vendored orbs. The compiler does no I/O itself; the CLI reads an orb dir.
pub trait OrbLoader: Sync {
    /// The orb at exactly `orb.version`.
    fn load(&self, orb: &OrbRef) -> OrbSource;
    /// The versions vendored for `namespace/name`, for pins (`@2.2`, `@2`, `@volatile`).
    /// A loader that cannot list serves exact versions only.
    fn versions(&self, _namespace: &str, _name: &str) -> Vec<String> {
        Vec::new()
    }
}

/// Which vendored version a CircleCI version pin means: `1.2.3` exactly; `1.2` the newest
/// `1.2.x`; `1` the newest `1.x.y`; `volatile` the newest of all. `None` when nothing matches
/// (or `pin` is not a pin, e.g. `dev:alpha`, which only an exact file can serve).
pub fn resolve_pin(pin: &str, available: &[String]) -> Option<String> {
    fn semver(v: &str) -> Option<(u64, u64, u64)> {
        let mut it = v.split('.').map(|p| p.parse::<u64>().ok());
        let t = (it.next()??, it.next()??, it.next()??);
        it.next().is_none().then_some(t)
    }
    let wanted: Vec<u64> = if pin == "volatile" {
        Vec::new()
    } else {
        let parts: Option<Vec<u64>> = pin.split('.').map(|p| p.parse().ok()).collect();
        parts.filter(|p| (1..=3).contains(&p.len()))?
    };
    available
        .iter()
        .filter_map(|v| semver(v).map(|s| (s, v)))
        .filter(|((a, b, c), _)| {
            [*a, *b, *c]
                .iter()
                .zip(&wanted)
                .all(|(have, want)| have == want)
        })
        .max_by_key(|(s, _)| *s)
        .map(|(_, v)| v.clone())
}

#[derive(Default)]
pub struct CompileOptions<'a> {
    pub pipeline: PipelineValues,
    pub orbs: Option<&'a dyn OrbLoader>,
    /// The orb dir as the user named it, for "vendor it as DIR/…" hints.
    pub orb_dir: Option<String>,
}

/// A compiled config: the workflow graph plus the processed (2.0-shaped) document.
#[derive(Debug, Clone)]
pub struct CompiledConfig {
    /// `setup: true`: a dynamic-config setup file. It compiles like any other, but its jobs
    /// only make sense followed by a continuation (a second config compiled separately).
    pub setup: bool,
    pub workflows: Vec<Workflow>,
    /// Keys accepted but ignored (as CircleCI ignores them), and similar notes: not errors.
    pub warnings: Vec<ConfigError>,
    /// How each registry orb reference resolved (`circleci/jq@2.2` → the vendored file),
    /// in the order loaded.
    pub orbs: Vec<ResolvedOrb>,
    processed: Node,
}

/// A registry orb reference and the vendored orb it resolved to.
#[derive(Debug, Clone, PartialEq)]
pub struct ResolvedOrb {
    /// As written: `circleci/jq@2.2`.
    pub reference: String,
    /// The exact version chosen: `circleci/jq@2.2.0`.
    pub resolved: String,
    /// Where it was read from.
    pub file: String,
}

impl CompiledConfig {
    /// The processed config as YAML, shaped like `circleci config process` output.
    pub fn to_yaml(&self) -> String {
        // As `circleci config process` starts: one comment per orb, saying what it became.
        let mut out = String::new();
        for o in &self.orbs {
            out.push_str(&format!(
                "# Orb '{}' resolved to '{}' ({})\n",
                o.reference, o.resolved, o.file
            ));
        }
        out.push_str(
            &serde_saphyr::to_string(&self.processed)
                .unwrap_or_else(|e| format!("# cannot render: {e}\n")),
        );
        out
    }

    /// Every workflow job that runs something, by name (first workflow wins on duplicates).
    pub fn find_job(&self, name: &str) -> Option<&WorkflowJob> {
        self.workflows
            .iter()
            .flat_map(|w| &w.jobs)
            .find(|j| j.name == name)
    }
}

/// Compile a whole config. All errors that can be found independently are returned, in file
/// order.
pub fn compile(
    text: &str,
    file: &str,
    opts: &CompileOptions,
) -> Result<CompiledConfig, Vec<ConfigError>> {
    with_big_stack(|| compile_inner(text, file, opts))
}

/// The parser and the compiler recurse once per nesting level (YAML depth is capped at 64 by
/// serde-saphyr's budget, command nesting at 64, logic at 100). An unoptimised build uses tens
/// of kilobytes per level, more than a 2 MiB test thread has; so every entry point runs on a
/// thread with a stack sized for the worst case the limits allow.
pub(crate) fn with_big_stack<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    const STACK: usize = 64 * 1024 * 1024;
    std::thread::scope(|s| {
        let h = std::thread::Builder::new()
            .name("bosun-config".to_owned())
            .stack_size(STACK)
            .spawn_scoped(s, f)
            // Only fails when the OS refuses a thread, which nothing here can work around.
            .expect("start the config compiler thread");
        h.join().unwrap_or_else(|p| std::panic::resume_unwind(p))
    })
}

fn compile_inner(
    text: &str,
    file: &str,
    opts: &CompileOptions,
) -> Result<CompiledConfig, Vec<ConfigError>> {
    let (engine, compiled) = compile_engine(text, file, opts)?;
    match compiled {
        Some(c) if engine.errors.is_empty() => Ok(c),
        _ => {
            let mut errs = engine.errors;
            errs.sort_by(|a, b| {
                (a.pos.file, a.pos.line, a.pos.col).cmp(&(b.pos.file, b.pos.line, b.pos.col))
            });
            Err(errs)
        }
    }
}

fn parse_error(file: &str, e: &yaml::YamlError) -> ConfigError {
    ConfigError {
        file: file.to_owned(),
        pos: Pos {
            line: e.line,
            col: e.col,
            file: 0,
        },
        path: String::new(),
        message: format!("invalid YAML: {}", e.message),
        hint: None,
    }
}

fn compile_engine(
    text: &str,
    file: &str,
    opts: &CompileOptions,
) -> Result<(compile::Engine, Option<CompiledConfig>), Vec<ConfigError>> {
    let root = yaml::parse_file(text, 0).map_err(|e| vec![parse_error(file, &e)])?;
    let mut engine = compile::Engine {
        files: vec![file.to_owned()],
        scopes: Vec::new(),
        pipeline: opts.pipeline.clone(),
        pipeline_params: Vec::new(),
        v21: false,
        errors: Vec::new(),
        regexes: Default::default(),
        spent: Default::default(),
        warnings: Default::default(),
        resolved: Vec::new(),
        auto_names: Vec::new(),
        pre_expanded: Default::default(),
    };
    if let Err(e) = engine.top_level(&root) {
        return Err(vec![e]);
    }
    if let Err(e) = engine.pipeline_parameters(&root) {
        engine.errors.push(e);
    }
    engine.load_orbs(&root, opts.orbs, opts.orb_dir.as_deref());
    if !engine.errors.is_empty() {
        // Without its orbs or parameters the rest would only repeat the same problem.
        return Ok((engine, None));
    }
    let setup = root
        .get("setup")
        .is_some_and(|s| s.value == Value::Bool(true));
    let wfs = engine.workflows(&root);
    // Jobs no workflow invokes are still checked, when they can stand alone (no required
    // parameters), so a typo in an unused job does not wait until someone uses it.
    if let Some(jobs) = root.get("jobs").and_then(Node::as_map) {
        for (k, def) in jobs {
            let Some(name) = k.as_str() else { continue };
            let invoked = wfs.iter().flat_map(|(w, _)| &w.jobs).any(|j| j.job == name);
            let needs_args = def
                .get("parameters")
                .and_then(Node::as_map)
                .is_some_and(|m| m.iter().any(|(_, d)| d.get("default").is_none()));
            if !invoked && !needs_args {
                let r = engine
                    .expand_job(0, name, &[], k, &format!("jobs.{name}"), None, None)
                    .and_then(|x| engine.lower_kind(&x).map(|_| ()));
                if let Err(e) = r {
                    if !engine.errors.contains(&e) {
                        engine.errors.push(e);
                    }
                }
            }
        }
    }
    let processed = processed(&root, setup, &wfs);
    let compiled = CompiledConfig {
        setup,
        workflows: wfs.into_iter().map(|(w, _)| w).collect(),
        warnings: engine.warnings.borrow().clone(),
        orbs: engine.resolved.clone(),
        processed,
    };
    Ok((engine, Some(compiled)))
}

/// The 2.0-shaped document: `version: 2`, every invoked job expanded under its workflow name,
/// workflows listing them with their resolved `requires`.
fn processed(root: &Node, setup: bool, wfs: &[(Workflow, Vec<(String, Node)>)]) -> Node {
    let p = Pos::default();
    let key = |k: &str| Node::str(k, p);
    let map = |m: Vec<(Node, Node)>| Node::new(Value::Map(m), p);
    let mut jobs: Vec<(Node, Node)> = Vec::new();
    let mut workflows: Vec<(Node, Node)> = vec![(key("version"), Node::new(Value::Int(2), p))];
    for (wf, nodes) in wfs {
        let mut entries = Vec::new();
        for j in &wf.jobs {
            let packed = nodes
                .iter()
                .find(|(n, _)| *n == j.name)
                .map(|(_, n)| compile::unpack(n));
            let mut entry: Vec<(Node, Node)> = Vec::new();
            if !j.requires.is_empty() {
                let reqs = j.requires.iter().map(|r| Node::str(r.clone(), p)).collect();
                entry.push((key("requires"), Node::new(Value::Seq(reqs), p)));
            }
            match packed {
                Some((job, wentry)) => {
                    if !jobs
                        .iter()
                        .any(|(k, _)| k.as_str() == Some(j.name.as_str()))
                    {
                        jobs.push((key(&j.name), env_as_list(job)));
                    }
                    entry.extend(wentry.as_map().unwrap_or(&[]).iter().cloned());
                }
                None if j.is_approval() => entry.push((key("type"), key("approval"))),
                None => {}
            }
            entries.push(if entry.is_empty() {
                key(&j.name)
            } else {
                map(vec![(key(&j.name), map(entry))])
            });
        }
        let mut w = Vec::new();
        if let Some(t) = root
            .get("workflows")
            .and_then(|x| x.get(&wf.name))
            .and_then(|x| x.get("triggers"))
        {
            w.push((key("triggers"), t.clone()));
        }
        w.push((key("jobs"), Node::new(Value::Seq(entries), p)));
        workflows.push((key(&wf.name), map(w)));
    }
    let mut top = vec![(key("version"), Node::new(Value::Int(2), p))];
    if setup {
        top.push((key("setup"), Node::new(Value::Bool(true), p)));
    }
    top.push((key("jobs"), map(jobs)));
    top.push((key("workflows"), map(workflows)));
    map(top)
}

/// CircleCI's processed output writes `environment` as a list of single-key maps.
fn env_as_list(job: Node) -> Node {
    let pos = job.pos;
    let Value::Map(m) = job.value else { return job };
    let m = m
        .into_iter()
        .map(|(k, v)| {
            if k.as_str() == Some("environment") {
                if let Value::Map(pairs) = &v.value {
                    let list = pairs
                        .iter()
                        .map(|(ek, ev)| {
                            Node::new(Value::Map(vec![(ek.clone(), ev.clone())]), ev.pos)
                        })
                        .collect();
                    return (k, Node::new(Value::Seq(list), v.pos));
                }
            }
            (k, v)
        })
        .collect();
    Node::new(Value::Map(m), pos)
}

/// `bosun config process`: the processed YAML, or every error found.
pub fn process(text: &str, file: &str, opts: &CompileOptions) -> Result<String, Vec<ConfigError>> {
    compile(text, file, opts).map(|c| c.to_yaml())
}

/// Compile one job of a config file, with default pipeline values and no vendored orbs.
pub fn compile_job(text: &str, file: &str, job: &str) -> Result<JobPlan, ConfigError> {
    compile_job_with(text, file, job, &CompileOptions::default())
}

/// Compile the config and return the plan of `job`: a workflow job name (matrix and `name:`
/// included) or a job definition that needs no arguments. The first error is returned.
pub fn compile_job_with(
    text: &str,
    file: &str,
    job: &str,
    opts: &CompileOptions,
) -> Result<JobPlan, ConfigError> {
    with_big_stack(|| compile_job_inner(text, file, job, opts))
}

/// Compile the config and return the plan of job `job` of workflow `workflow` (as a
/// coordinator's pipeline named it: matrix and `name:` included).
pub fn compile_workflow_job(
    text: &str,
    file: &str,
    workflow: &str,
    job: &str,
    opts: &CompileOptions,
) -> Result<JobPlan, ConfigError> {
    let not_found = |message: String| ConfigError {
        file: file.to_owned(),
        pos: Pos::default(),
        path: format!("workflows.{workflow}"),
        message,
        hint: None,
    };
    let compiled = compile(text, file, opts).map_err(|mut e| e.remove(0))?;
    let wf = compiled
        .workflows
        .iter()
        .find(|w| w.name == workflow)
        .ok_or_else(|| not_found(format!("no workflow `{workflow}` at this commit")))?;
    let wj = wf
        .jobs
        .iter()
        .find(|j| j.name == job)
        .ok_or_else(|| not_found(format!("workflow `{workflow}` has no job `{job}`")))?;
    match &wj.kind {
        WorkflowJobKind::Build(c) => {
            let mut plan = c.plan.clone();
            plan.name = wj.name.clone();
            Ok(plan)
        }
        _ => Err(not_found(format!("`{job}` has nothing to run"))),
    }
}

fn compile_job_inner(
    text: &str,
    file: &str,
    job: &str,
    opts: &CompileOptions,
) -> Result<JobPlan, ConfigError> {
    let first = |mut errs: Vec<ConfigError>| errs.remove(0);
    let root = yaml::parse_file(text, 0).map_err(|e| parse_error(file, &e))?;
    if let Some(setup) = root.get("setup").filter(|s| s.value == Value::Bool(true)) {
        return Err(ConfigError {
            file: file.to_owned(),
            pos: setup.pos,
            path: "setup".to_owned(),
            message: "this is a setup (dynamic) config: its job generates the real config and hands it to a continuation".to_owned(),
            hint: Some("run the generated config instead, e.g. `bosun execute --config generated.yml`".to_owned()),
        });
    }
    let (engine, compiled) = compile_engine(text, file, opts).map_err(first)?;
    if !engine.errors.is_empty() {
        let mut errs = engine.errors;
        errs.sort_by(|a, b| {
            (a.pos.file, a.pos.line, a.pos.col).cmp(&(b.pos.file, b.pos.line, b.pos.col))
        });
        return Err(first(errs));
    }
    let compiled = compiled.ok_or_else(|| ConfigError {
        file: file.to_owned(),
        pos: Pos::default(),
        path: String::new(),
        message: "the config did not compile".to_owned(),
        hint: None,
    })?;
    if let Some(wj) = compiled.find_job(job) {
        return match &wj.kind {
            WorkflowJobKind::Build(c) => {
                let mut plan = c.plan.clone();
                plan.name = wj.name.clone();
                Ok(plan)
            }
            WorkflowJobKind::Approval => Err(ConfigError {
                file: file.to_owned(),
                pos: Pos::default(),
                path: format!("workflows.{job}"),
                message: format!("`{job}` is an approval job: there is nothing to run"),
                hint: None,
            }),
            WorkflowJobKind::NotRunnable { reason } => Err(ConfigError {
                file: file.to_owned(),
                pos: Pos::default(),
                path: format!("jobs.{}", wj.job),
                message: format!("`{job}` cannot run here: {reason}"),
                hint: Some("use a `docker:` image".to_owned()),
            }),
        };
    }
    // Not in any workflow: the definition itself, with its parameters' defaults.
    let jobs = root
        .get("jobs")
        .ok_or_else(|| engine.err(&root, "", "required key [jobs] not found"))?;
    let names: Vec<&str> = jobs
        .as_map()
        .map(|m| m.iter().filter_map(|(k, _)| k.as_str()).collect())
        .unwrap_or_default();
    let Some((k, _)) = jobs
        .as_map()
        .and_then(|m| m.iter().find(|(k, _)| k.as_str() == Some(job)))
    else {
        let mut all: Vec<&str> = names.clone();
        all.extend(
            compiled
                .workflows
                .iter()
                .flat_map(|w| &w.jobs)
                .map(|j| j.name.as_str()),
        );
        let msg = format!("Cannot find a definition for job named {job}");
        return Err(match nearest(job, &all) {
            Some(s) => engine.err_hint(jobs, "jobs", msg, format!("did you mean `{s}`?")),
            None => engine.err_hint(
                jobs,
                "jobs",
                msg,
                format!("jobs in this config: {}", all.join(", ")),
            ),
        });
    };
    let x = engine.expand_job(0, job, &[], k, &format!("jobs.{job}"), None, None)?;
    match engine.lower_kind(&x)? {
        WorkflowJobKind::Build(c) => Ok(c.plan),
        WorkflowJobKind::Approval => Err(engine.err(
            &x.node,
            &x.path,
            format!("`{job}` is an approval job: there is nothing to run"),
        )),
        WorkflowJobKind::NotRunnable { reason } => {
            Err(engine.err_hint(&x.node, &x.path, reason, "use a `docker:` image"))
        }
    }
}

/// Names of the jobs a config defines, in file order (for `--job` errors and listings).
pub fn job_names(text: &str) -> Vec<String> {
    yaml::parse(text)
        .ok()
        .and_then(|root| {
            root.get("jobs").and_then(Node::as_map).map(|m| {
                m.iter()
                    .filter_map(|(k, _)| k.as_str().map(str::to_owned))
                    .collect()
            })
        })
        .unwrap_or_default()
}

pub(crate) const TOP_LEVEL_KEYS: &[&str] = &[
    "version",
    "jobs",
    "workflows",
    "executors",
    "commands",
    "orbs",
    "parameters",
    "setup",
];
pub(crate) const JOB_KEYS: &[&str] = &[
    "description",
    "parallelism",
    "macos",
    "resource_class",
    "docker",
    "steps",
    "retention",
    "working_directory",
    "circleci_ip_ranges",
    "machine",
    "environment",
    "executor",
    "shell",
    "parameters",
    "type",
];
pub(crate) const EXECUTOR_KEYS: &[&str] = &[
    "description",
    "docker",
    "machine",
    "macos",
    "resource_class",
    "working_directory",
    "shell",
    "environment",
    "parameters",
];
pub(crate) const DOCKER_KEYS: &[&str] = &[
    "image",
    "ports",
    "name",
    "entrypoint",
    "command",
    "user",
    "environment",
    "auth",
    "aws_auth",
    "gcp_auth",
];
pub(crate) const RUN_KEYS: &[&str] = &[
    "name",
    "command",
    "shell",
    "environment",
    "background",
    "working_directory",
    "no_output_timeout",
    "when",
    "max_auto_reruns",
    "auto_rerun_delay",
];
pub(crate) const CHECKOUT_KEYS: &[&str] = &["path", "method", "name", "directory"];

pub(crate) fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

/// Later values win; order of first appearance is kept (stable output for `env` dumps).
pub fn merge_env(into: &mut Vec<(String, String)>, from: Vec<(String, String)>) {
    for (k, v) in from {
        if let Some(slot) = into.iter_mut().find(|(ek, _)| *ek == k) {
            slot.1 = v;
        } else {
            into.push((k, v));
        }
    }
}

pub fn valid_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c == '_' || c.is_ascii_alphabetic())
        && chars.all(|c| c == '_' || c.is_ascii_alphanumeric())
}

/// `20m`, `1.25h`, `5s`, `500ms`, `2d`.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let t = text.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
    let (num, unit) = t.split_at(split);
    let n: f64 = num.parse().ok()?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        "d" => n * 86400.0,
        _ => return None,
    };
    // `try_`: a number too large for a Duration (`99999999999999999999h`) is an error, not a
    // panic.
    Duration::try_from_secs_f64(secs)
        .ok()
        .filter(|_| secs > 0.0)
}

/// The closest candidate by edit distance, if it is close enough to be a typo.
pub(crate) fn nearest<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    candidates
        .iter()
        .map(|c| (levenshtein(word, c), *c))
        .filter(|(d, c)| *d <= 2.max(c.len() / 3))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur.push((prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests;

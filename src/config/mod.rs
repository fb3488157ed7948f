//! `.circleci/config.yml` → [`JobPlan`]. Pure: text in, plan out, errors with positions.
//!
//! This is the start of the full 2.1 compiler: it reads the document into a positioned tree
//! ([`yaml`]), resolves the job (and its executor and commands), and lowers its steps to the
//! plan the executor runs. Every error names the file, line, column and key path.

pub mod plan;
pub mod yaml;

pub use plan::{JobPlan, RunStep, Step, StepKind, When, DEFAULT_NO_OUTPUT_TIMEOUT};

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

/// Compile one job of a config file.
pub fn compile_job(text: &str, file: &str, job: &str) -> Result<JobPlan, ConfigError> {
    let root = yaml::parse(text).map_err(|e| {
        // serde-saphyr's message carries "line L column C"; keep it whole and add the file.
        let (line, col) = line_col_from_message(&e.0);
        ConfigError {
            file: file.to_owned(),
            pos: Pos { line, col },
            path: String::new(),
            message: format!("invalid YAML: {}", e.0),
            hint: None,
        }
    })?;
    Compiler { file }.job(&root, job)
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

fn line_col_from_message(msg: &str) -> (u64, u64) {
    let num_after = |word: &str| -> Option<u64> {
        let idx = msg.find(word)? + word.len();
        let digits: String = msg[idx..]
            .trim_start()
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        digits.parse().ok()
    };
    (
        num_after("line").unwrap_or(1),
        num_after("column").unwrap_or(1),
    )
}

const TOP_LEVEL_KEYS: &[&str] = &[
    "version",
    "jobs",
    "workflows",
    "executors",
    "commands",
    "orbs",
    "parameters",
    "setup",
];
const JOB_KEYS: &[&str] = &[
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
const EXECUTOR_KEYS: &[&str] = &[
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
const DOCKER_KEYS: &[&str] = &[
    "image",
    "name",
    "entrypoint",
    "command",
    "user",
    "environment",
    "auth",
    "aws_auth",
    "gcp_auth",
];
const RUN_KEYS: &[&str] = &[
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
const CHECKOUT_KEYS: &[&str] = &["path", "method", "name"];
/// Built-in steps this version does not execute yet: named so the error says so plainly
/// instead of "cannot find a command".
const NOT_YET_STEPS: &[&str] = &[
    "save_cache",
    "restore_cache",
    "persist_to_workspace",
    "attach_workspace",
    "store_artifacts",
    "store_test_results",
    "add_ssh_keys",
    "setup_remote_docker",
    "when",
    "unless",
    "deploy",
];
const BUILTIN_STEPS: &[&str] = &["checkout", "run"];

struct Compiler<'a> {
    file: &'a str,
}

impl Compiler<'_> {
    fn err(&self, node: &Node, path: &str, message: impl Into<String>) -> ConfigError {
        ConfigError {
            file: self.file.to_owned(),
            pos: node.pos,
            path: path.to_owned(),
            message: message.into(),
            hint: None,
        }
    }

    fn err_hint(
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

    fn expect_map<'n>(
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

    fn expect_str<'n>(&self, node: &'n Node, path: &str) -> Result<&'n str, ConfigError> {
        node.as_str().ok_or_else(|| {
            self.err(
                node,
                path,
                format!("expected a string, found {}", node.kind()),
            )
        })
    }

    /// Every key of `map` must be one of `allowed`; a typo gets the nearest valid key.
    fn check_keys(
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
                let msg = format!("unknown key `{name}`");
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

    fn job(&self, root: &Node, name: &str) -> Result<JobPlan, ConfigError> {
        // Unknown top-level keys are accepted, as CircleCI does: they hold anchors
        // (`aliases:`, `defaults:`). Only a near-miss of a real key is worth an error.
        let top = self.expect_map(root, "")?;
        for (k, _) in top {
            if let Some(name) = k.as_str() {
                if !TOP_LEVEL_KEYS.contains(&name) {
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
        self.version(root)?;
        if let Some(setup) = root.get("setup") {
            if setup.value == Value::Bool(true) {
                return Err(self.err_hint(
                    setup,
                    "setup",
                    "this is a setup (dynamic) config: its job generates the real config and hands it to a continuation",
                    "run the generated config instead, e.g. `bosun execute --config generated.yml`",
                ));
            }
        }
        let jobs = root
            .get("jobs")
            .ok_or_else(|| self.err(root, "", "required key `jobs` not found"))?;
        let jobs_map = self.expect_map(jobs, "jobs")?;
        let names: Vec<&str> = jobs_map.iter().filter_map(|(k, _)| k.as_str()).collect();
        let Some(job) = jobs.get(name) else {
            let msg = format!("Cannot find a definition for job named {name}");
            return Err(match nearest(name, &names) {
                Some(s) => self.err_hint(jobs, "jobs", msg, format!("did you mean `{s}`?")),
                None => self.err_hint(
                    jobs,
                    "jobs",
                    msg,
                    format!("jobs in this config: {}", names.join(", ")),
                ),
            });
        };
        let path = format!("jobs.{name}");
        let job_map = self.expect_map(job, &path)?;
        self.check_keys(job_map, JOB_KEYS, &path)?;
        if job.get("parameters").is_some() {
            return Err(self.err_hint(
                job,
                &path,
                "job parameters are not supported by this version of bosun yet",
                "inline the parameter values, or wait for the full 2.1 compiler",
            ));
        }
        if let Some(t) = job.get("type") {
            let t = self.expect_str(t, &join(&path, "type"))?;
            if t != "build" {
                return Err(self.err(
                    job,
                    &join(&path, "type"),
                    format!(
                        "a `{t}` job has no steps to execute; only build jobs run in a container"
                    ),
                ));
            }
        }

        // Executor first, then the job's own keys replace it wholesale (environment merges).
        let mut exec = ExecutorParts::default();
        if let Some(e) = job.get("executor") {
            exec = self.executor_ref(root, e, &join(&path, "executor"))?;
        }
        let own = self.executor_parts(job, &path, true)?;
        let docker_given = own.docker.is_some();
        if docker_given && job.get("executor").is_some() {
            // CircleCI allows job keys to override an executor; `docker` replaces its images.
        }
        let docker = own.docker.or(exec.docker).ok_or_else(|| {
            self.err_hint(
                job,
                &path,
                "the job has no executor: exactly one of `docker`, `machine`, `macos` or `executor` is required",
                "add e.g. `docker: [{image: cimg/base:current}]`",
            )
        })?;
        let mut environment = exec.environment;
        merge_env(&mut environment, own.environment);

        let steps_node = job
            .get("steps")
            .ok_or_else(|| self.err(job, &path, "required key `steps` not found"))?;
        let mut steps = Vec::new();
        self.steps(root, steps_node, &join(&path, "steps"), &mut steps, 0)?;

        let parallelism = match job.get("parallelism") {
            None => 1,
            Some(p) => match p.value {
                Value::Int(n) if (1..=1000).contains(&n) => n as u32,
                _ => {
                    return Err(self.err(
                        p,
                        &join(&path, "parallelism"),
                        format!("expected an integer from 1 to 1000, found {}", p.kind()),
                    ))
                }
            },
        };

        Ok(JobPlan {
            name: name.to_owned(),
            image: docker.image,
            user: docker.user,
            image_environment: docker.environment,
            environment,
            working_directory: own
                .working_directory
                .or(exec.working_directory)
                .unwrap_or_else(|| "~/project".to_owned()),
            shell: own.shell.or(exec.shell),
            parallelism,
            steps,
        })
    }

    fn version(&self, root: &Node) -> Result<(), ConfigError> {
        let Some(v) = root.get("version") else {
            return Err(self.err_hint(
                root,
                "version",
                "Unsupported or missing workflows config version",
                "add `version: 2.1` at the top of the file",
            ));
        };
        let ok = match &v.value {
            Value::Int(2) => true,
            Value::Float(f) => (*f - 2.1).abs() < 1e-9 || (*f - 2.0).abs() < 1e-9,
            Value::Str(s) => s == "2" || s == "2.1" || s == "2.0",
            _ => false,
        };
        if ok {
            Ok(())
        } else {
            Err(self.err_hint(
                v,
                "version",
                format!(
                    "unsupported config version {}",
                    v.scalar_string().unwrap_or_else(|| v.kind().to_owned())
                ),
                "bosun reads version 2 and 2.1 configs",
            ))
        }
    }

    fn executor_ref(
        &self,
        root: &Node,
        node: &Node,
        path: &str,
    ) -> Result<ExecutorParts, ConfigError> {
        let name = match &node.value {
            Value::Str(s) => s.as_str(),
            Value::Map(_) => {
                let n = node
                    .get("name")
                    .ok_or_else(|| self.err(node, path, "required key `name` not found"))?;
                if node.as_map().is_some_and(|m| m.len() > 1) {
                    return Err(self.err(
                        node,
                        path,
                        "executor parameters are not supported by this version of bosun yet",
                    ));
                }
                self.expect_str(n, &join(path, "name"))?
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
        if name.contains('/') {
            return Err(self.err_hint(
                node,
                path,
                format!("executor `{name}` comes from an orb, and orbs are not supported by this version of bosun yet"),
                "define the executor under `executors:` in this file",
            ));
        }
        let defs = root.get("executors");
        let Some(def) = defs.and_then(|d| d.get(name)) else {
            let known: Vec<&str> = defs
                .and_then(Node::as_map)
                .map(|m| m.iter().filter_map(|(k, _)| k.as_str()).collect())
                .unwrap_or_default();
            let msg = format!("Cannot find a definition for executor named {name}");
            return Err(match nearest(name, &known) {
                Some(s) => self.err_hint(node, path, msg, format!("did you mean `{s}`?")),
                None => self.err(node, path, msg),
            });
        };
        let def_path = format!("executors.{name}");
        self.check_keys(self.expect_map(def, &def_path)?, EXECUTOR_KEYS, &def_path)?;
        self.executor_parts(def, &def_path, false)
    }

    /// The executor-shaped keys of a job or an executor definition.
    fn executor_parts(
        &self,
        node: &Node,
        path: &str,
        is_job: bool,
    ) -> Result<ExecutorParts, ConfigError> {
        for other in ["machine", "macos"] {
            if let Some(n) = node.get(other) {
                return Err(self.err_hint(
                    n,
                    &join(path, other),
                    format!("`{other}` executors are not supported by bosun's Docker executor"),
                    "use a `docker:` image",
                ));
            }
        }
        if is_job && node.get("docker").is_some() && node.get("executor").is_some() {
            return Err(self.err(
                node,
                path,
                "both `docker` and `executor` are set: a job uses exactly one executor",
            ));
        }
        let docker = match node.get("docker") {
            None => None,
            Some(d) => Some(self.docker(d, &join(path, "docker"))?),
        };
        let environment = match node.get("environment") {
            None => Vec::new(),
            Some(e) => self.env_map(e, &join(path, "environment"))?,
        };
        let string_key = |k: &str| -> Result<Option<String>, ConfigError> {
            node.get(k)
                .map(|n| self.expect_str(n, &join(path, k)).map(str::to_owned))
                .transpose()
        };
        Ok(ExecutorParts {
            docker,
            environment,
            working_directory: string_key("working_directory")?,
            shell: string_key("shell")?,
        })
    }

    fn docker(&self, node: &Node, path: &str) -> Result<DockerImage, ConfigError> {
        let list = node.as_seq().ok_or_else(|| {
            self.err(
                node,
                path,
                format!("expected a list of images, found {}", node.kind()),
            )
        })?;
        let first = list.first().ok_or_else(|| {
            self.err(
                node,
                path,
                "the image list is empty; the first image is where steps run",
            )
        })?;
        let p0 = format!("{path}[0]");
        let m = self.expect_map(first, &p0)?;
        self.check_keys(m, DOCKER_KEYS, &p0)?;
        let image = first
            .get("image")
            .ok_or_else(|| self.err(first, &p0, "required key `image` not found"))?;
        let image = self.expect_str(image, &join(&p0, "image"))?.to_owned();
        if image.trim().is_empty() {
            return Err(self.err(first, &join(&p0, "image"), "the image name is empty"));
        }
        let user = first
            .get("user")
            .map(|u| self.expect_str(u, &join(&p0, "user")).map(str::to_owned))
            .transpose()?;
        let environment = match first.get("environment") {
            None => Vec::new(),
            Some(e) => self.env_map(e, &join(&p0, "environment"))?,
        };
        Ok(DockerImage {
            image,
            user,
            environment,
        })
    }

    /// `environment:` as a mapping (or CircleCI's list of single-key maps / `K=V` strings).
    fn env_map(&self, node: &Node, path: &str) -> Result<Vec<(String, String)>, ConfigError> {
        let mut out = Vec::new();
        let push =
            |k: &Node, v: &Node, out: &mut Vec<(String, String)>| -> Result<(), ConfigError> {
                let key = self.expect_str(k, path)?;
                if !valid_env_name(key) {
                    return Err(self.err_hint(
                        k,
                        &join(path, key),
                        format!("`{key}` is not a valid environment variable name"),
                        "use letters, digits and underscores, not starting with a digit",
                    ));
                }
                let val = v.scalar_string().ok_or_else(|| {
                    self.err(
                        v,
                        &join(path, key),
                        format!("expected a string value, found {}", v.kind()),
                    )
                })?;
                merge_env(out, vec![(key.to_owned(), val)]);
                Ok(())
            };
        match &node.value {
            Value::Map(m) => {
                for (k, v) in m {
                    push(k, v, &mut out)?;
                }
            }
            Value::Seq(items) => {
                for (i, item) in items.iter().enumerate() {
                    let ip = format!("{path}[{i}]");
                    match &item.value {
                        Value::Map(m) => {
                            for (k, v) in m {
                                push(k, v, &mut out)?;
                            }
                        }
                        Value::Str(s) => {
                            let (k, v) = s
                                .split_once('=')
                                .ok_or_else(|| self.err(item, &ip, "expected `NAME=value`"))?;
                            merge_env(&mut out, vec![(k.to_owned(), v.to_owned())]);
                        }
                        _ => {
                            return Err(self.err(
                                item,
                                &ip,
                                format!("expected a mapping, found {}", item.kind()),
                            ))
                        }
                    }
                }
            }
            Value::Null => {}
            _ => {
                return Err(self.err(
                    node,
                    path,
                    format!("expected a mapping of variables, found {}", node.kind()),
                ))
            }
        }
        Ok(out)
    }

    fn steps(
        &self,
        root: &Node,
        node: &Node,
        path: &str,
        out: &mut Vec<Step>,
        depth: usize,
    ) -> Result<(), ConfigError> {
        if depth > 32 {
            return Err(self.err(
                node,
                path,
                "commands nest more than 32 levels deep (is a command calling itself?)",
            ));
        }
        let list = node.as_seq().ok_or_else(|| {
            self.err(
                node,
                path,
                format!("expected a list of steps, found {}", node.kind()),
            )
        })?;
        for (i, item) in list.iter().enumerate() {
            let sp = format!("{path}[{i}]");
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
            let here = join(&sp, name);
            match name {
                "checkout" => out.push(self.checkout_step(args, item, &here)?),
                "run" => {
                    let Some(args) = args else {
                        return Err(self.err(item, &here, "`run` needs a command"));
                    };
                    out.push(self.run_step(args, &here)?);
                }
                _ if NOT_YET_STEPS.contains(&name) => {
                    return Err(self.err_hint(
                        item,
                        &here,
                        format!("the `{name}` step is not supported by this version of bosun yet"),
                        "remove it to run the job locally, or use a `run` step",
                    ))
                }
                _ => {
                    let cmd = root.get("commands").and_then(|c| c.get(name));
                    let Some(cmd) = cmd else {
                        let mut known: Vec<&str> = BUILTIN_STEPS.to_vec();
                        known.extend(NOT_YET_STEPS);
                        if let Some(m) = root.get("commands").and_then(Node::as_map) {
                            known.extend(m.iter().filter_map(|(k, _)| k.as_str()));
                        }
                        let msg = format!("Cannot find a definition for command named {name}");
                        return Err(match nearest(name, &known) {
                            Some(s) => {
                                self.err_hint(item, &sp, msg, format!("did you mean `{s}`?"))
                            }
                            None => self.err(item, &sp, msg),
                        });
                    };
                    if cmd.get("parameters").is_some()
                        || args.is_some_and(|a| a.value != Value::Null)
                    {
                        return Err(self.err(
                            item,
                            &here,
                            "command parameters are not supported by this version of bosun yet",
                        ));
                    }
                    let steps = cmd.get("steps").ok_or_else(|| {
                        self.err(
                            cmd,
                            &format!("commands.{name}"),
                            "required key `steps` not found",
                        )
                    })?;
                    self.steps(
                        root,
                        steps,
                        &format!("commands.{name}.steps"),
                        out,
                        depth + 1,
                    )?;
                }
            }
        }
        Ok(())
    }

    fn checkout_step(
        &self,
        args: Option<&Node>,
        item: &Node,
        path: &str,
    ) -> Result<Step, ConfigError> {
        let mut checkout_path = None;
        let mut display = "Checkout code".to_owned();
        if let Some(a) = args.filter(|a| a.value != Value::Null) {
            let m = self.expect_map(a, path)?;
            self.check_keys(m, CHECKOUT_KEYS, path)?;
            if let Some(p) = a.get("path") {
                checkout_path = Some(self.expect_str(p, &join(path, "path"))?.to_owned());
            }
            if let Some(n) = a.get("name") {
                display = self.expect_str(n, &join(path, "name"))?.to_owned();
            }
        }
        let _ = item;
        Ok(Step {
            name: display,
            kind: StepKind::Checkout {
                path: checkout_path,
            },
            when: When::OnSuccess,
        })
    }

    fn run_step(&self, args: &Node, path: &str) -> Result<Step, ConfigError> {
        if let Some(cmd) = args.as_str() {
            return Ok(Step {
                name: cmd.to_owned(),
                kind: StepKind::Run(RunStep {
                    command: cmd.to_owned(),
                    shell: None,
                    environment: Vec::new(),
                    working_directory: None,
                    background: false,
                    no_output_timeout: DEFAULT_NO_OUTPUT_TIMEOUT,
                }),
                when: When::OnSuccess,
            });
        }
        let m = self.expect_map(args, path)?;
        self.check_keys(m, RUN_KEYS, path)?;
        let command = args
            .get("command")
            .ok_or_else(|| self.err(args, path, "required key `command` not found"))?;
        let command = command
            .scalar_string()
            .filter(|_| !matches!(command.value, Value::Null))
            .ok_or_else(|| {
                self.err(
                    command,
                    &join(path, "command"),
                    format!("expected a string, found {}", command.kind()),
                )
            })?;
        let string_key = |k: &str| -> Result<Option<String>, ConfigError> {
            args.get(k)
                .map(|n| self.expect_str(n, &join(path, k)).map(str::to_owned))
                .transpose()
        };
        let name = string_key("name")?.unwrap_or_else(|| command.clone());
        let background = match args.get("background") {
            None => false,
            Some(b) => match b.value {
                Value::Bool(v) => v,
                _ => {
                    return Err(self.err(
                        b,
                        &join(path, "background"),
                        format!("expected true or false, found {}", b.kind()),
                    ))
                }
            },
        };
        let no_output_timeout = match args.get("no_output_timeout") {
            None => DEFAULT_NO_OUTPUT_TIMEOUT,
            Some(n) => {
                let text = n.scalar_string().unwrap_or_default();
                parse_duration(&text).ok_or_else(|| {
                    self.err_hint(
                        n,
                        &join(path, "no_output_timeout"),
                        format!("`{text}` is not a duration"),
                        "write a number with a unit: `90s`, `20m`, `1.5h`",
                    )
                })?
            }
        };
        let when = match args.get("when") {
            None => When::OnSuccess,
            Some(w) => match w.as_str() {
                Some("on_success") => When::OnSuccess,
                Some("on_fail") => When::OnFail,
                Some("always") => When::Always,
                _ => {
                    let found = w.scalar_string().unwrap_or_else(|| w.kind().to_owned());
                    return Err(self.err_hint(
                        w,
                        &join(path, "when"),
                        format!("`{found}` is not a valid `when`"),
                        "use one of on_success, on_fail, always",
                    ));
                }
            },
        };
        let environment = match args.get("environment") {
            None => Vec::new(),
            Some(e) => self.env_map(e, &join(path, "environment"))?,
        };
        Ok(Step {
            name,
            kind: StepKind::Run(RunStep {
                command,
                shell: string_key("shell")?,
                environment,
                working_directory: string_key("working_directory")?,
                background,
                no_output_timeout,
            }),
            when,
        })
    }
}

#[derive(Default)]
struct ExecutorParts {
    docker: Option<DockerImage>,
    environment: Vec<(String, String)>,
    working_directory: Option<String>,
    shell: Option<String>,
}

struct DockerImage {
    image: String,
    user: Option<String>,
    environment: Vec<(String, String)>,
}

fn join(path: &str, key: &str) -> String {
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
    (secs.is_finite() && secs > 0.0).then(|| Duration::from_secs_f64(secs))
}

/// The closest candidate by edit distance, if it is close enough to be a typo.
fn nearest<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
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

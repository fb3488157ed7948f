//! An expanded (2.0-shaped) job → the plan the executor runs, checking every key on the way.

use super::compile::{Engine, Expanded};
use super::plan::{CompiledJob, DockerImage, ExecutorKind};
use super::yaml::{Node, Value};
use super::*;

pub(crate) fn lower(e: &Engine, x: &Expanded) -> Result<CompiledJob, ConfigError> {
    let job = &x.node;
    let path = x.path.as_str();
    let (docker, executor) = match (job.get("docker"), job.get("machine")) {
        (Some(docker_node), _) => (
            images(e, docker_node, &join(path, "docker"))?,
            ExecutorKind::Docker,
        ),
        (None, Some(m)) => (
            vec![DockerImage {
                image: machine_image(e, m, &join(path, "machine"))?,
                ..DockerImage::default()
            }],
            ExecutorKind::Machine,
        ),
        (None, None) => {
            return Err(e.err_hint(
                job,
                path,
                "the job has no executor: exactly one of `docker`, `machine`, `macos` or `executor` is required",
                "add e.g. `docker: [{image: cimg/base:current}]`",
            ))
        }
    };
    let environment = match job.get("environment") {
        None => Vec::new(),
        Some(n) => env_map(e, n, &join(path, "environment"))?,
    };
    let string_key = |k: &str| -> Result<Option<String>, ConfigError> {
        job.get(k)
            .filter(|n| n.value != Value::Null)
            .map(|n| {
                n.scalar_string()
                    .filter(|_| n.as_map().is_none() && n.as_seq().is_none())
                    .ok_or_else(|| {
                        e.err(
                            n,
                            &join(path, k),
                            format!("expected a string, found {}", n.kind()),
                        )
                    })
            })
            .transpose()
    };
    let parallelism = match job.get("parallelism") {
        None => 1,
        Some(p) => match p.value {
            Value::Int(n) if (1..=1000).contains(&n) => n as u32,
            _ => {
                return Err(e.err(
                    p,
                    &join(path, "parallelism"),
                    format!(
                        "expected an integer from 1 to 1000, found {}",
                        p.scalar_string()
                            .map_or_else(|| p.kind().to_owned(), |s| format!("{} `{s}`", p.kind()))
                    ),
                ))
            }
        },
    };
    let steps = steps(e, x)?;
    let resource_class = string_key("resource_class")?;
    let sized_class = match (&executor, &resource_class, job.get("resource_class")) {
        (ExecutorKind::Docker, Some(name), Some(node)) => {
            super::resource_class::docker_class(name.trim()).map_err(|known| {
                e.err_hint(
                    node,
                    &join(path, "resource_class"),
                    format!("`{name}` is not a resource class of the docker executor"),
                    format!("use one of {known}, or `namespace/name` for a self-hosted runner"),
                )
            })?
        }
        _ => None,
    };
    let primary = docker.first().cloned().unwrap_or_default();
    Ok(CompiledJob {
        plan: JobPlan {
            name: path.rsplit('.').next().unwrap_or(path).to_owned(),
            image: primary.image,
            user: primary.user,
            image_auth: primary.auth,
            image_environment: primary.environment,
            environment,
            working_directory: string_key("working_directory")?
                .unwrap_or_else(|| "~/project".to_owned()),
            shell: string_key("shell")?,
            parallelism,
            steps,
            services: docker.iter().skip(1).cloned().collect(),
            executor,
            resource_class: sized_class,
            unsupported: docker.iter().find_map(|d| d.unsupported_auth.clone()),
        },
        docker,
        resource_class,
    })
}

/// `machine: true`, `machine: {image: NAME, …}` or `machine: NAME`: the image name the agent
/// maps to a local image (`default` when none is named).
fn machine_image(e: &Engine, node: &Node, path: &str) -> Result<String, ConfigError> {
    match &node.value {
        Value::Bool(true) => Ok("default".to_owned()),
        Value::Str(s) if !s.trim().is_empty() => Ok(s.trim().to_owned()),
        Value::Map(_) => match node.get("image") {
            None => Ok("default".to_owned()),
            Some(i) => Ok(e.expect_str(i, &join(path, "image"))?.trim().to_owned()),
        },
        _ => Err(e.err_hint(
            node,
            path,
            format!(
                "expected `true` or a map with `image`, found {}",
                node.kind()
            ),
            "e.g. `machine: {image: ubuntu-2204:current}`",
        )),
    }
}

/// A name other containers can resolve: RFC 1123 labels (letters, digits, `-`, not at an end),
/// dot-separated, at most 253 characters.
fn valid_host_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

fn images(e: &Engine, node: &Node, path: &str) -> Result<Vec<DockerImage>, ConfigError> {
    let list = node.as_seq().ok_or_else(|| {
        e.err(
            node,
            path,
            format!("expected a list of images, found {}", node.kind()),
        )
    })?;
    if list.is_empty() {
        return Err(e.err(
            node,
            path,
            "the image list is empty; the first image is where steps run",
        ));
    }
    let mut out = Vec::new();
    for (i, item) in list.iter().enumerate() {
        let p = format!("{path}[{i}]");
        let m = e.expect_map(item, &p)?;
        e.check_keys(m, DOCKER_KEYS, &p)?;
        if let Some(ports) = item.get("ports") {
            // Real configs carry docker-compose's `ports:` over; CircleCI runs them.
            e.warn(e.err_hint(
                ports,
                &join(&p, "ports"),
                "`ports` is ignored, as CircleCI ignores it",
                "every port a service container listens on is reachable from the primary container on localhost; remove the key",
            ));
        }
        let image = item
            .get("image")
            .ok_or_else(|| e.err(item, &p, "required key [image] not found"))?;
        let image = e.expect_str(image, &join(&p, "image"))?.to_owned();
        if image.trim().is_empty() {
            return Err(e.err(item, &join(&p, "image"), "the image name is empty"));
        }
        let opt_str = |k: &str| -> Result<Option<String>, ConfigError> {
            item.get(k)
                .map(|n| e.expect_str(n, &join(&p, k)).map(str::to_owned))
                .transpose()
        };
        let words = |k: &str| -> Result<Option<Vec<String>>, ConfigError> {
            let Some(n) = item.get(k) else {
                return Ok(None);
            };
            match &n.value {
                Value::Str(s) => Ok(Some(vec![s.clone()])),
                Value::Seq(items) => items
                    .iter()
                    .map(|it| {
                        it.scalar_string()
                            .filter(|_| it.as_seq().is_none() && it.as_map().is_none())
                            .ok_or_else(|| {
                                e.err(
                                    it,
                                    &join(&p, k),
                                    format!("expected a string, found {}", it.kind()),
                                )
                            })
                    })
                    .collect::<Result<Vec<_>, _>>()
                    .map(Some),
                _ => Err(e.err(
                    n,
                    &join(&p, k),
                    format!("expected a string or a list of strings, found {}", n.kind()),
                )),
            }
        };
        let auth = match item.get("auth") {
            None => None,
            Some(a) => {
                let ap = join(&p, "auth");
                e.check_keys(e.expect_map(a, &ap)?, &["username", "password"], &ap)?;
                let get = |k: &str| -> Result<String, ConfigError> {
                    let n = a
                        .get(k)
                        .ok_or_else(|| e.err(a, &ap, format!("required key [{k}] not found")))?;
                    Ok(n.scalar_string().unwrap_or_default())
                };
                Some((get("username")?, get("password")?))
            }
        };
        // Cloud registry credentials: valid config, but this agent has no AWS or GCP client.
        let unsupported_auth = ["aws_auth", "gcp_auth"].iter().find_map(|k| {
            item.get(k).map(|n| {
                e.err_hint(
                    n,
                    &join(&p, k),
                    format!("`{k}` (pulling `{image}` with cloud credentials) is not supported by this agent"),
                    "use `auth: {username, password}` instead (e.g. a registry token in a project secret), or load the image on the agent's engine and drop the key",
                )
                .to_string()
            })
        });
        let name = opt_str("name")?;
        if let (Some(n), Some(node)) = (&name, item.get("name")) {
            if !valid_host_name(n) {
                return Err(e.err_hint(
                    node,
                    &join(&p, "name"),
                    format!("`{n}` is not a valid host name"),
                    "use letters, digits and `-` (e.g. `postgres-main`): the primary container reaches the service by this name",
                ));
            }
            if let Some(prev) = out
                .iter()
                .position(|d: &DockerImage| d.name.as_deref() == Some(n))
            {
                return Err(e.err_hint(
                    node,
                    &join(&p, "name"),
                    format!("two images are named `{n}` (also {path}[{prev}])"),
                    "give each service its own `name:`",
                ));
            }
        }
        out.push(DockerImage {
            image,
            name,
            entrypoint: words("entrypoint")?,
            command: words("command")?,
            user: opt_str("user")?,
            environment: match item.get("environment") {
                None => Vec::new(),
                Some(n) => env_map(e, n, &join(&p, "environment"))?,
            },
            auth,
            unsupported_auth,
        });
    }
    Ok(out)
}

/// `environment:` as a mapping (or CircleCI's list of single-key maps / `K=V` strings).
pub(crate) fn env_map(
    e: &Engine,
    node: &Node,
    path: &str,
) -> Result<Vec<(String, String)>, ConfigError> {
    let mut out = Vec::new();
    let push = |k: &Node, v: &Node, out: &mut Vec<(String, String)>| -> Result<(), ConfigError> {
        let key = e.expect_str(k, path)?;
        if !valid_env_name(key) {
            return Err(e.err_hint(
                k,
                &join(path, key),
                format!("`{key}` is not a valid environment variable name"),
                "use letters, digits and underscores, not starting with a digit",
            ));
        }
        let val = v
            .scalar_string()
            .filter(|_| v.as_seq().is_none() && v.as_map().is_none())
            .ok_or_else(|| {
                e.err(
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
                            .ok_or_else(|| e.err(item, &ip, "expected `NAME=value`"))?;
                        if !valid_env_name(k) {
                            return Err(e.err_hint(
                                item,
                                &ip,
                                format!("`{k}` is not a valid environment variable name"),
                                "use letters, digits and underscores, not starting with a digit",
                            ));
                        }
                        merge_env(&mut out, vec![(k.to_owned(), v.to_owned())]);
                    }
                    _ => {
                        return Err(e.err(
                            item,
                            &ip,
                            format!("expected a mapping, found {}", item.kind()),
                        ))
                    }
                }
            }
        }
        Value::Null => {}
        // `environment: NAME=value` (one variable), which CircleCI accepts.
        Value::Str(s) => {
            let (k, v) = s.split_once('=').ok_or_else(|| {
                e.err_hint(
                    node,
                    path,
                    format!("expected a mapping of variables, found the string `{s}`"),
                    "write `NAME: value` under `environment:` (or `NAME=value`)",
                )
            })?;
            let k = k.trim();
            if !valid_env_name(k) {
                return Err(e.err_hint(
                    node,
                    path,
                    format!("`{k}` is not a valid environment variable name"),
                    "use letters, digits and underscores, not starting with a digit",
                ));
            }
            merge_env(
                &mut out,
                vec![(k.to_owned(), v.trim_end_matches('\n').to_owned())],
            );
        }
        _ => {
            return Err(e.err(
                node,
                path,
                format!("expected a mapping of variables, found {}", node.kind()),
            ))
        }
    }
    Ok(out)
}

pub(crate) fn steps(e: &Engine, x: &Expanded) -> Result<Vec<Step>, ConfigError> {
    let mut out = Vec::with_capacity(x.steps.len());
    for (node, path) in &x.steps {
        out.push(step(e, node, path)?);
    }
    Ok(out)
}

fn step(e: &Engine, item: &Node, path: &str) -> Result<Step, ConfigError> {
    let (name, args) = match &item.value {
        Value::Str(s) => (s.as_str(), None),
        Value::Map(m) => match m.first() {
            Some((k, v)) => (
                k.as_str().unwrap_or(""),
                Some(v).filter(|v| v.value != Value::Null),
            ),
            None => return Err(e.err(item, path, "empty step")),
        },
        _ => {
            return Err(e.err(
                item,
                path,
                format!("expected a step, found {}", item.kind()),
            ))
        }
    };
    let a = |keys: &[&str]| -> Result<Option<&Node>, ConfigError> {
        if let Some(a) = args {
            e.check_keys(e.expect_map(a, path)?, keys, path)?;
        }
        Ok(args)
    };
    let req_str = |a: Option<&Node>, k: &str| -> Result<String, ConfigError> {
        let n = a.and_then(|a| a.get(k)).ok_or_else(|| {
            e.err(
                a.unwrap_or(item),
                path,
                format!("required key [{k}] not found"),
            )
        })?;
        n.scalar_string()
            .filter(|_| n.as_seq().is_none() && n.as_map().is_none() && n.value != Value::Null)
            .ok_or_else(|| {
                e.err(
                    n,
                    &join(path, k),
                    format!("expected a string, found {}", n.kind()),
                )
            })
    };
    let opt_str = |a: Option<&Node>, k: &str| -> Result<Option<String>, ConfigError> {
        match a.and_then(|a| a.get(k)) {
            None => Ok(None),
            Some(n) => n
                .scalar_string()
                .filter(|_| n.as_seq().is_none() && n.as_map().is_none())
                .map(Some)
                .ok_or_else(|| {
                    e.err(
                        n,
                        &join(path, k),
                        format!("expected a string, found {}", n.kind()),
                    )
                }),
        }
    };
    let str_list =
        |a: Option<&Node>, k: &str, required: bool| -> Result<Vec<String>, ConfigError> {
            let Some(n) = a.and_then(|a| a.get(k)) else {
                return if required {
                    Err(e.err(
                        a.unwrap_or(item),
                        path,
                        format!("required key [{k}] not found"),
                    ))
                } else {
                    Ok(Vec::new())
                };
            };
            match &n.value {
                Value::Seq(items) => items
                    .iter()
                    .map(|it| {
                        it.scalar_string()
                            .filter(|_| it.as_seq().is_none() && it.as_map().is_none())
                            .ok_or_else(|| {
                                e.err(
                                    it,
                                    &join(path, k),
                                    format!("expected a string, found {}", it.kind()),
                                )
                            })
                    })
                    .collect(),
                Value::Str(s) => Ok(vec![s.clone()]),
                _ => Err(e.err(
                    n,
                    &join(path, k),
                    format!("expected a list of strings, found {}", n.kind()),
                )),
            }
        };
    let when = |a: Option<&Node>| -> Result<When, ConfigError> {
        match a.and_then(|a| a.get("when")) {
            None => Ok(When::OnSuccess),
            Some(w) => match w.as_str() {
                Some("on_success") => Ok(When::OnSuccess),
                Some("on_fail") => Ok(When::OnFail),
                Some("always") => Ok(When::Always),
                _ => Err(e.err_hint(
                    w,
                    &join(path, "when"),
                    format!(
                        "expected one of on_success, on_fail, always, found `{}`",
                        w.scalar_string().unwrap_or_else(|| w.kind().to_owned())
                    ),
                    "use one of on_success, on_fail, always",
                )),
            },
        }
    };
    let named = |a: Option<&Node>, default: &str| -> Result<String, ConfigError> {
        Ok(opt_str(a, "name")?.unwrap_or_else(|| default.to_owned()))
    };
    let plain = |kind: StepKind, display: String| Step {
        name: display,
        kind,
        when: When::OnSuccess,
    };
    let name = name.replace('-', "_");
    Ok(match name.as_str() {
        "checkout" => {
            let a = a(CHECKOUT_KEYS)?;
            if let Some(d) = a.and_then(|a| a.get("directory")) {
                e.warn(e.err_hint(
                    d,
                    &join(path, "directory"),
                    "`directory` is ignored, as CircleCI ignores it: the code is checked out into the working directory",
                    "to check out elsewhere, use `path:`",
                ));
            }
            plain(
                StepKind::Checkout {
                    path: opt_str(a, "path")?,
                },
                named(a, "Checkout code")?,
            )
        }
        "run" | "deploy" => return run_step(e, args.unwrap_or(item), path),
        "save_cache" => {
            let a = a(&["paths", "key", "name", "when"])?;
            let w = when(a)?;
            let n = opt_str(a, "name")?;
            Step {
                name: n.clone().unwrap_or_else(|| "Saving Cache".to_owned()),
                kind: StepKind::SaveCache {
                    key: req_str(a, "key")?,
                    paths: str_list(a, "paths", true)?,
                    name: n,
                    when: w,
                },
                when: w,
            }
        }
        "restore_cache" => {
            let a = a(&["key", "keys", "name", "paths"])?;
            if let Some(p) = a.and_then(|a| a.get("paths")) {
                e.warn(e.err_hint(
                    p,
                    &join(path, "paths"),
                    "`paths` is ignored, as CircleCI ignores it: a cache restores the paths it was saved with",
                    "remove the key (it belongs to `save_cache`)",
                ));
            }
            let mut keys: Vec<String> = opt_str(a, "key")?.into_iter().collect();
            keys.extend(str_list(a, "keys", false)?);
            if keys.is_empty() {
                return Err(e.err(
                    a.unwrap_or(item),
                    path,
                    "required key [key] or [keys] not found",
                ));
            }
            plain(
                StepKind::RestoreCache { keys },
                named(a, "Restoring Cache")?,
            )
        }
        "persist_to_workspace" => {
            let a = a(&["root", "paths", "name"])?;
            plain(
                StepKind::PersistToWorkspace {
                    root: req_str(a, "root")?,
                    paths: str_list(a, "paths", true)?,
                },
                named(a, "Persisting to Workspace")?,
            )
        }
        "attach_workspace" => {
            let a = a(&["at", "name"])?;
            plain(
                StepKind::AttachWorkspace {
                    at: req_str(a, "at")?,
                },
                named(a, "Attaching Workspace")?,
            )
        }
        "store_artifacts" => {
            let a = a(&["path", "destination", "name", "when"])?;
            // Without `when`, artifacts are stored after a failed step too (the runner's
            // rule); `when: on_fail` stores them only for a red build, as the author asks.
            Step {
                when: when(a)?,
                ..plain(
                    StepKind::StoreArtifacts {
                        path: req_str(a, "path")?,
                        destination: opt_str(a, "destination")?,
                    },
                    named(a, "Uploading artifacts")?,
                )
            }
        }
        "store_test_results" => {
            let a = a(&["path", "name"])?;
            plain(
                StepKind::StoreTestResults {
                    path: req_str(a, "path")?,
                },
                named(a, "Uploading test results")?,
            )
        }
        "add_ssh_keys" => {
            let a = a(&["fingerprints", "name"])?;
            plain(
                StepKind::AddSshKeys {
                    fingerprints: str_list(a, "fingerprints", false)?,
                },
                named(a, "Install additional SSH keys")?,
            )
        }
        "setup_remote_docker" => {
            let a = a(&[
                "version",
                "docker_layer_caching",
                "prefer_same_region",
                "name",
            ])?;
            let docker_layer_caching = match a.and_then(|a| a.get("docker_layer_caching")) {
                None => false,
                Some(n) => match (&n.value, n.as_str()) {
                    (Value::Bool(v), _) => *v,
                    (_, Some("true")) => true,
                    (_, Some("false")) => false,
                    _ => {
                        return Err(e.err(
                            n,
                            &join(path, "docker_layer_caching"),
                            format!("expected true or false, found {}", n.kind()),
                        ))
                    }
                },
            };
            plain(
                StepKind::SetupRemoteDocker {
                    docker_layer_caching,
                    version: opt_str(a, "version")?,
                },
                named(a, "Setup a remote Docker engine")?,
            )
        }
        other => {
            return Err(e.err(
                item,
                path,
                format!("the `{other}` step is not supported by this version of bosun"),
            ))
        }
    })
}

fn run_step(e: &Engine, args: &Node, path: &str) -> Result<Step, ConfigError> {
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
    let m = e.expect_map(args, path)?;
    e.check_keys(m, RUN_KEYS, path)?;
    let command = args
        .get("command")
        .ok_or_else(|| e.err(args, path, "required key [command] not found"))?;
    let command = command
        .scalar_string()
        .filter(|_| !matches!(command.value, Value::Null | Value::Seq(_) | Value::Map(_)))
        .ok_or_else(|| {
            e.err(
                command,
                &join(path, "command"),
                format!("expected a string, found {}", command.kind()),
            )
        })?;
    let string_key = |k: &str| -> Result<Option<String>, ConfigError> {
        args.get(k)
            .map(|n| e.expect_str(n, &join(path, k)).map(str::to_owned))
            .transpose()
    };
    let name = string_key("name")?.unwrap_or_else(|| command.clone());
    let background = match args.get("background") {
        None => false,
        Some(b) => match b.value {
            Value::Bool(v) => v,
            _ => {
                return Err(e.err(
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
            parse_duration(&text)
                .filter(|_| !matches!(n.value, Value::Seq(_) | Value::Map(_) | Value::Bool(_)))
                .ok_or_else(|| {
                    let found = match &n.value {
                        Value::Str(_) | Value::Int(_) | Value::Float(_) => format!("`{text}`"),
                        _ => n.kind().to_owned(),
                    };
                    e.err_hint(
                        n,
                        &join(path, "no_output_timeout"),
                        format!(
                            "expected a duration (a number with a unit s, m or h), found {found}"
                        ),
                        "write e.g. `90s`, `20m` or `1.5h`",
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
                return Err(e.err_hint(
                    w,
                    &join(path, "when"),
                    format!("expected one of on_success, on_fail, always, found `{found}`"),
                    "use one of on_success, on_fail, always",
                ));
            }
        },
    };
    let environment = match args.get("environment") {
        None => Vec::new(),
        Some(n) => env_map(e, n, &join(path, "environment"))?,
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

//! Jobs: executors, commands and conditional steps expanded into plans.

use super::*;

impl Engine {
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
    pub(super) fn expand_steps(
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
    pub(super) fn legacy_step(&self, item: &Node, path: &str) -> Result<Option<Node>, ConfigError> {
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
}

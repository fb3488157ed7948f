//! Workflows: jobs, requires, matrices, filters, serial groups and the names CircleCI gives
//! them.

use super::*;

impl Engine {
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
                            triggers: Vec::new(),
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
    pub(super) fn number_across_workflows(&mut self, out: &mut [(Workflow, Vec<(String, Node)>)]) {
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
    pub(super) fn workflow(
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
        let triggers = match wf.get("triggers") {
            Some(t) => self.triggers(t, &join(path, "triggers"))?,
            None => Vec::new(),
        };
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
                triggers,
            },
            nodes,
        )))
    }

    /// The combinations of a `matrix:` (each a list of (param, value)), or `[None]` without one.
    #[allow(clippy::type_complexity)]
    pub(super) fn matrix(
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
    pub(super) fn invocation(
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
    pub(super) fn check_invocation_args(
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
    pub(super) fn serial_group(&self, g: &Node, path: &str) -> Result<String, ConfigError> {
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

    pub(super) fn filters(&self, f: &Node, path: &str) -> Result<Filters, ConfigError> {
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

    /// `triggers:` of a workflow: a list of `- schedule: {cron, filters: {branches}}`.
    pub(super) fn triggers(&self, t: &Node, path: &str) -> Result<Vec<Schedule>, ConfigError> {
        let items = t.as_seq().ok_or_else(|| {
            self.err(
                t,
                path,
                format!("expected a list of triggers, found {}", t.kind()),
            )
        })?;
        let mut out = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let ip = format!("{path}[{i}]");
            let m = self.expect_map(item, &ip)?;
            self.check_keys(m, &["schedule"], &ip)?;
            let s = item
                .get("schedule")
                .ok_or_else(|| self.err(item, &ip, "required key [schedule] not found"))?;
            let sp = join(&ip, "schedule");
            let sm = self.expect_map(s, &sp)?;
            self.check_keys(sm, &["cron", "filters"], &sp)?;
            let cp = join(&sp, "cron");
            let c = s
                .get("cron")
                .ok_or_else(|| self.err(s, &sp, "required key [cron] not found"))?;
            let text = c
                .scalar_string()
                .filter(|_| !matches!(c.value, Value::Seq(_) | Value::Map(_)))
                .ok_or_else(|| {
                    self.err(
                        c,
                        &cp,
                        format!("expected a cron expression, found {}", c.kind()),
                    )
                })?;
            let cron = crate::cron::Cron::parse(&text).map_err(|e| {
                self.err_hint(
                    c,
                    &cp,
                    format!("invalid cron expression `{text}`: {e}"),
                    crate::cron::CRON_HINT,
                )
            })?;
            let branches = match s.get("filters") {
                Some(f) => {
                    let fp = join(&sp, "filters");
                    if f.get("tags").is_some() {
                        return Err(self.err_hint(
                            f,
                            &fp,
                            "a schedule's filters take `branches` only",
                            "a schedule runs on branches; remove `tags`",
                        ));
                    }
                    self.filters(f, &fp)?.branches
                }
                None => None,
            };
            out.push(Schedule { cron, branches });
        }
        Ok(out)
    }
}

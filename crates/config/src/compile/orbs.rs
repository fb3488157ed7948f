//! The top level, pipeline parameters and orbs: scopes, imports, registry pins, and name
//! resolution across them.

use super::*;

impl Engine {
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

    pub(super) fn orb_imports(
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
    pub(super) fn import_chain(&self, scope: usize) -> String {
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

    pub(super) fn registry_orb(
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
    pub(super) fn resolve(
        &self,
        scope: usize,
        kind: Kind,
        name: &str,
    ) -> Option<(usize, &Node, String)> {
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

    pub(super) fn not_found(
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
}

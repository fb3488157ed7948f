//! Real official orbs (`../shared/orbs`, packed from their public repositories; see its
//! MANIFEST.tsv): each loads through `--orb-dir`, a config that invokes every command and
//! every job of the orb compiles, and so does every `examples:` usage of the orb. The only
//! failures allowed are orbs the directory really does not hold (an import of an import), and
//! the error must name the chain.

use crate::harness::{orbs_dir, vendored};
use bosun::config::yaml::{self, Node, Value};
use bosun::config::{compile, CompileOptions, OrbDir};
use std::fmt::Write;

/// Every vendored orb: (namespace, name, version).
fn vendored_orbs() -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    let Ok(namespaces) = std::fs::read_dir(orbs_dir()) else {
        return out;
    };
    for ns in namespaces.flatten().filter(|e| e.path().is_dir()) {
        let nsname = ns.file_name().to_string_lossy().into_owned();
        for f in std::fs::read_dir(ns.path())
            .expect("read namespace")
            .flatten()
        {
            let file = f.file_name().to_string_lossy().into_owned();
            if let Some((name, version)) = file.strip_suffix(".yml").and_then(|s| s.split_once('@'))
            {
                out.push((nsname.clone(), name.to_owned(), version.to_owned()));
            }
        }
    }
    out.sort();
    out
}

/// A value of the declared type, for required parameters.
fn sample(decl: &Node, executor: &str) -> String {
    match decl.get("type").and_then(Node::as_str) {
        Some("boolean") => "true".to_owned(),
        Some("integer") => "1".to_owned(),
        Some("enum") => decl
            .get("enum")
            .and_then(Node::as_seq)
            .and_then(|l| l.first())
            .and_then(Node::scalar_string)
            .map(|s| format!("\"{s}\""))
            .unwrap_or_default(),
        Some("executor") => executor.to_owned(),
        Some("steps") => "[]".to_owned(),
        Some("env_var_name") => "SOME_VAR".to_owned(),
        _ => "\"x\"".to_owned(),
    }
}

/// `{a: 1, b: x}` with every required parameter of `def`.
fn required_args(def: &Node, executor: &str) -> String {
    let args: Vec<String> = def
        .get("parameters")
        .and_then(Node::as_map)
        .unwrap_or(&[])
        .iter()
        .filter(|(_, d)| d.get("default").is_none())
        .filter_map(|(k, d)| Some(format!("{}: {}", k.as_str()?, sample(d, executor))))
        .collect();
    format!("{{{}}}", args.join(", "))
}

fn names(root: &Node, section: &str) -> Vec<(String, Node)> {
    root.get(section)
        .and_then(Node::as_map)
        .unwrap_or(&[])
        .iter()
        .filter_map(|(k, v)| Some((k.as_str()?.to_owned(), v.clone())))
        .collect()
}

/// A config invoking every command (one job each) and every job of the orb.
fn usage_config(reference: &str, root: &Node) -> String {
    let executor = "local";
    let mut s = format!(
        "version: 2.1\norbs:\n  o: {reference}\nexecutors:\n  {executor}:\n    docker: [{{image: cimg/base:current}}]\njobs:\n"
    );
    let commands = names(root, "commands");
    for (name, def) in &commands {
        let _ = write!(
            s,
            "  use-{name}:\n    executor: {executor}\n    steps:\n      - o/{name}: {}\n",
            required_args(def, executor)
        );
    }
    s.push_str("workflows:\n  main:\n    jobs:\n");
    for (name, _) in &commands {
        let _ = writeln!(s, "      - use-{name}");
    }
    for (name, def) in names(root, "jobs") {
        let _ = writeln!(s, "      - o/{name}: {}", required_args(&def, executor));
    }
    s
}

/// Errors that are only "this orb is not in the directory", for orbs really absent from it.
fn only_missing_orbs(loader: &OrbDir, errs: &[bosun::config::ConfigError]) -> Option<Vec<String>> {
    let mut missing = Vec::new();
    for e in errs {
        let m = e
            .message
            .strip_prefix("Cannot find ")
            .filter(|m| m.contains("is not inline and not vendored"))?;
        let reference = m.split(':').next()?;
        if vendored(loader, reference) {
            return None;
        }
        missing.push(e.to_string());
    }
    Some(missing)
}

/// Examples that are wrong in the orb itself, checked by reading them: CircleCI would refuse
/// them as well. (orb, example, what the error must say.)
const BROKEN_EXAMPLES: &[(&str, &str, &str)] = &[
    // browser-tools@2.3.1 defines no executors; the example uses `browser-tools/default`.
    (
        "circleci/browser-tools@2.3.1",
        "install_versioned_browsers",
        "Cannot find a definition for executor named browser-tools/default",
    ),
    // `jobs:` is indented under `orbs:` (an inline orb named `jobs`), so the workflow's
    // `pull` job is defined nowhere.
    (
        "circleci/docker@4.0.1",
        "custom_pull",
        "Cannot find a definition for job named pull",
    ),
];

#[test]
fn every_vendored_orb_loads_and_its_commands_jobs_and_examples_compile() {
    let orbs = vendored_orbs();
    if orbs.is_empty() {
        eprintln!("skipping: no orbs at {}", orbs_dir().display());
        return;
    }
    let loader = OrbDir(orbs_dir());
    let opts = CompileOptions {
        orbs: Some(&loader),
        orb_dir: Some("../shared/orbs".to_owned()),
        ..CompileOptions::default()
    };
    let mut failures = Vec::new();
    let (mut compiled, mut examples_ok, mut examples) = (0, 0, 0);
    let mut missing_report = Vec::new();
    for (ns, name, version) in &orbs {
        let reference = format!("{ns}/{name}@{version}");
        let path = orbs_dir().join(ns).join(format!("{name}@{version}.yml"));
        let text = std::fs::read_to_string(&path).expect("read orb");
        let root = yaml::parse(&text).unwrap_or_else(|e| panic!("{reference}: {}", e.message));
        let config = usage_config(&reference, &root);
        match compile(&config, &format!("use-{name}.yml"), &opts) {
            Ok(c) => {
                compiled += 1;
                let expected = names(&root, "commands").len() + names(&root, "jobs").len();
                let got: usize = c.workflows.iter().map(|w| w.jobs.len()).sum();
                if got != expected {
                    failures.push(format!(
                        "{reference}: {got} workflow jobs, expected {expected}"
                    ));
                }
            }
            Err(errs) => match only_missing_orbs(&loader, &errs) {
                Some(m) => missing_report.push(format!("{reference}: {}", m.join("; "))),
                None => failures.push(format!(
                    "{reference}:\n{}\n--- config:\n{config}",
                    errs.iter()
                        .map(|e| e.to_string())
                        .collect::<Vec<_>>()
                        .join("\n")
                )),
            },
        }
        // Examples are real usage: their config, with this orb pinned to the vendored version.
        for (ex, def) in names(&root, "examples") {
            let Some(usage) = def.get("usage") else {
                continue;
            };
            examples += 1;
            let usage = pin_orb(usage, ns, name, version);
            let usage_text = serde_saphyr::to_string(&usage).expect("render usage");
            let file = format!("{reference}#examples.{ex}");
            let broken = BROKEN_EXAMPLES
                .iter()
                .find(|(o, e, _)| *o == reference && *e == ex);
            match (compile(&usage_text, &file, &opts), broken) {
                (Ok(_), None) => examples_ok += 1,
                (Ok(_), Some(_)) => {
                    failures.push(format!("{file}: compiles, but is listed as broken"))
                }
                (Err(errs), Some((_, _, want))) => {
                    if !errs.iter().any(|e| e.message.contains(want)) {
                        failures.push(format!("{file}: expected `{want}`, got {errs:?}"));
                    }
                }
                (Err(errs), None) => match only_missing_orbs(&loader, &errs) {
                    Some(m) => missing_report.push(format!("{file}: {}", m.join("; "))),
                    None => failures.push(format!(
                        "{file}:\n{}\n--- usage:\n{usage_text}",
                        errs.iter()
                            .map(|e| e.to_string())
                            .collect::<Vec<_>>()
                            .join("\n")
                    )),
                },
            }
        }
    }
    eprintln!(
        "orbs: {compiled} of {} vendored orbs compile with every command and job; {examples_ok} of {examples} examples compile",
        orbs.len()
    );
    for m in &missing_report {
        eprintln!("  not vendored: {m}");
    }
    // docker@2.1.4 imports circleci/build-tools@3.0, which has no public source to vendor
    // (see ../shared/orbs/README.md): the one orb that cannot load, and it must say why.
    assert!(
        missing_report
            .iter()
            .all(|m| m.contains("not inline and not vendored")),
        "{missing_report:#?}"
    );
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// The example's `orbs:` entry for this orb, whatever version it names, set to `version`.
fn pin_orb(usage: &Node, ns: &str, name: &str, version: &str) -> Node {
    let mut usage = usage.clone();
    if let Value::Map(top) = &mut usage.value {
        for (k, v) in top.iter_mut() {
            if k.as_str() != Some("orbs") {
                continue;
            }
            if let Value::Map(orbs) = &mut v.value {
                for (_, r) in orbs.iter_mut() {
                    let Some(s) = r.as_str() else { continue };
                    if s.split('@').next() == Some(&format!("{ns}/{name}")) {
                        r.value = Value::Str(format!("{ns}/{name}@{version}"));
                    }
                }
            }
        }
    }
    usage
}

#[test]
fn docker_2_1_4_names_its_missing_import_chain() {
    let path = orbs_dir().join("circleci/docker@2.1.4.yml");
    if !path.exists() {
        eprintln!("skipping: no {}", path.display());
        return;
    }
    let loader = OrbDir(orbs_dir());
    let opts = CompileOptions {
        orbs: Some(&loader),
        orb_dir: Some("../shared/orbs".to_owned()),
        ..CompileOptions::default()
    };
    let config = "version: 2.1\norbs:\n  docker: circleci/docker@2.1\njobs:\n  build:\n    docker: [{image: x}]\n    steps: [docker/install-docker-tools]\n";
    let errs = compile(config, "config.yml", &opts).expect_err("build-tools missing");
    let e = errs[0].to_string();
    assert!(
        e.contains("Cannot find circleci/build-tools@3.0: orb `bt` is not inline and not vendored, needed by circleci/docker@2.1.4 (imported as `docker` by the config)"),
        "{e}"
    );
    assert!(
        e.contains("vendored versions") || e.contains("--orb-dir"),
        "{e}"
    );
}

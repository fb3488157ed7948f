//! Real-world configs (`../shared/corpus`, see its MANIFEST.tsv): those without registry orbs
//! compile and match a reviewed snapshot of their workflow graph; those with registry orbs fail
//! with the "not vendored" error naming an orb, and with `--orb-dir ../shared/orbs` either
//! compile (snapshot `<name>.orbs.txt`) or fail naming an orb that really is not vendored
//! there. `BLESS=1` rewrites the snapshots.

use crate::harness::{corpus_dir, orbs_dir, vendored};
use bosun::config::{compile, CompileOptions, OrbDir, StepKind, WorkflowJobKind};
use std::fmt::Write;
use std::path::PathBuf;

fn summary(c: &bosun::config::CompiledConfig) -> String {
    let mut s = String::new();
    for wf in &c.workflows {
        let _ = writeln!(s, "workflow {}", wf.name);
        for j in &wf.jobs {
            let _ = write!(s, "  job {} ({})", j.name, j.job);
            if !j.requires.is_empty() {
                let _ = write!(s, " requires [{}]", j.requires.join(", "));
            }
            if let Some(b) = &j.filters.branches {
                let only: Vec<String> = b.only.iter().map(|p| p.source()).collect();
                let ignore: Vec<String> = b.ignore.iter().map(|p| p.source()).collect();
                let _ = write!(
                    s,
                    " branches(only [{}] ignore [{}])",
                    only.join(", "),
                    ignore.join(", ")
                );
            }
            if let Some(t) = &j.filters.tags {
                let only: Vec<String> = t.only.iter().map(|p| p.source()).collect();
                let ignore: Vec<String> = t.ignore.iter().map(|p| p.source()).collect();
                let _ = write!(
                    s,
                    " tags(only [{}] ignore [{}])",
                    only.join(", "),
                    ignore.join(", ")
                );
            }
            let _ = writeln!(s);
            match &j.kind {
                WorkflowJobKind::Approval => {
                    let _ = writeln!(s, "    approval");
                }
                WorkflowJobKind::NotRunnable { reason } => {
                    let _ = writeln!(s, "    not runnable: {reason}");
                }
                WorkflowJobKind::Build(b) => {
                    let images: Vec<&str> = b.docker.iter().map(|d| d.image.as_str()).collect();
                    let kind = match b.plan.executor {
                        bosun::config::ExecutorKind::Docker => "images",
                        bosun::config::ExecutorKind::Machine => "machine",
                    };
                    let _ = writeln!(
                        s,
                        "    {kind} [{}] workdir {} parallelism {}",
                        images.join(", "),
                        b.plan.working_directory,
                        b.plan.parallelism
                    );
                    for st in &b.plan.steps {
                        let first = st.name.lines().next().unwrap_or("");
                        let detail = match &st.kind {
                            StepKind::Run(r) if r.command.lines().count() > 1 => {
                                format!(" ({} lines)", r.command.lines().count())
                            }
                            _ => String::new(),
                        };
                        let _ = writeln!(s, "    - {}: {first}{detail}", st.kind.type_name());
                    }
                }
            }
        }
    }
    s
}

#[test]
fn corpus_configs_compile_or_name_their_orb() {
    let dir = corpus_dir();
    let Ok(manifest) = std::fs::read_to_string(dir.join("MANIFEST.tsv")) else {
        eprintln!("skipping: no corpus at {}", dir.display());
        return;
    };
    let bless = std::env::var_os("BLESS").is_some();
    let snapshots = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/snapshots");
    let mut failures = Vec::new();
    let (mut plain, mut plain_ok, mut with_orbs, mut vendored_ok) = (0, 0, 0, 0);
    for line in manifest.lines().skip(1) {
        let cols: Vec<&str> = line.split('\t').collect();
        let (file, orbs) = (cols[0], cols.get(5).copied().unwrap_or("no"));
        let text = std::fs::read_to_string(dir.join(file)).expect("corpus file");
        let result = compile(&text, file, &CompileOptions::default());
        if orbs == "yes" {
            with_orbs += 1;
        } else {
            plain += 1;
        }
        if orbs == "yes" {
            match result {
                Ok(_) => failures.push(format!("{file}: compiled, but has registry orbs")),
                Err(errs) => {
                    if !errs.iter().any(|e| {
                        e.message.contains("is not inline and not vendored")
                            && e.hint.as_deref().unwrap_or("").contains("--orb-dir")
                    }) {
                        failures.push(format!("{file}: expected the orb error, got {errs:?}"));
                    }
                }
            }
            let loader = OrbDir(orbs_dir());
            let with = CompileOptions {
                orbs: Some(&loader),
                orb_dir: Some("../shared/orbs".to_owned()),
                ..CompileOptions::default()
            };
            match compile(&text, file, &with) {
                Ok(c) => {
                    vendored_ok += 1;
                    check_snapshot(
                        &snapshots,
                        &file.replace(".yml", ".orbs.txt"),
                        &summary(&c),
                        bless,
                        &mut failures,
                    );
                }
                Err(errs) => {
                    let missing: Vec<&str> = errs
                        .iter()
                        .filter(|e| e.message.contains("is not inline and not vendored"))
                        .filter_map(|e| e.message.strip_prefix("Cannot find "))
                        .filter_map(|m| m.split(':').next())
                        .collect();
                    if missing.is_empty() {
                        failures.push(format!(
                            "{file}: with --orb-dir, expected to compile or to name a missing orb: {}",
                            errs.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("\n")
                        ));
                    }
                    for m in missing {
                        if vendored(&loader, m) {
                            failures.push(format!("{file}: says {m} is not vendored, but it is"));
                        }
                    }
                }
            }
            continue;
        }
        match result {
            Err(errs) => failures.push(format!(
                "{file}: {}",
                errs.iter()
                    .map(|e| e.to_string())
                    .collect::<Vec<_>>()
                    .join("\n")
            )),
            Ok(c) => {
                plain_ok += 1;
                check_snapshot(
                    &snapshots,
                    &file.replace(".yml", ".txt"),
                    &summary(&c),
                    bless,
                    &mut failures,
                );
            }
        }
    }
    eprintln!(
        "corpus: {plain_ok} of {plain} orb-free configs compile; {vendored_ok} of {with_orbs} configs with registry orbs compile with --orb-dir ../shared/orbs"
    );
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

fn check_snapshot(
    dir: &std::path::Path,
    name: &str,
    got: &str,
    bless: bool,
    failures: &mut Vec<String>,
) {
    let snap = dir.join(name);
    if bless {
        std::fs::write(&snap, got).expect("write snapshot");
    } else {
        let want = std::fs::read_to_string(&snap).unwrap_or_default();
        if want != got {
            failures.push(format!(
                "{name}: snapshot differs (BLESS=1 to rewrite)\n{got}"
            ));
        }
    }
}

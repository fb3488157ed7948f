//! Real-world configs (`../shared/corpus`, see its MANIFEST.tsv): those without registry orbs
//! compile and match a reviewed snapshot of their workflow graph; those with registry orbs fail
//! with the "not vendored" error naming an orb. `BLESS=1` rewrites the snapshots.

use bosun::config::{compile, CompileOptions, StepKind, WorkflowJobKind};
use std::fmt::Write;
use std::path::PathBuf;

fn corpus() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/corpus")
}

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
                    let _ = writeln!(
                        s,
                        "    images [{}] workdir {} parallelism {}",
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
    let dir = corpus();
    let Ok(manifest) = std::fs::read_to_string(dir.join("MANIFEST.tsv")) else {
        eprintln!("skipping: no corpus at {}", dir.display());
        return;
    };
    let bless = std::env::var_os("BLESS").is_some();
    let snapshots = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/snapshots");
    let mut failures = Vec::new();
    for line in manifest.lines().skip(1) {
        let cols: Vec<&str> = line.split('\t').collect();
        let (file, orbs) = (cols[0], cols.get(5).copied().unwrap_or("no"));
        let text = std::fs::read_to_string(dir.join(file)).expect("corpus file");
        let result = compile(&text, file, &CompileOptions::default());
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
                let got = summary(&c);
                let snap = snapshots.join(file.replace(".yml", ".txt"));
                if bless {
                    std::fs::write(&snap, &got).expect("write snapshot");
                } else {
                    let want = std::fs::read_to_string(&snap).unwrap_or_default();
                    if want != got {
                        failures.push(format!(
                            "{file}: snapshot differs (BLESS=1 to rewrite)\n{got}"
                        ));
                    }
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

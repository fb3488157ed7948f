//! `bosun orb pack SRC_DIR`: an orb's source tree → the single-file orb, by the rules of
//! `circleci orb pack`. `SRC_DIR/@orb.yml` is the root; each `SRC_DIR/<section>/<name>.yml`
//! (sections `commands`, `jobs`, `executors`, `examples`) becomes `<section>: <name>:`; a
//! value that is exactly `<<include(path)>>` inside a command, job or executor is replaced by
//! the text of `SRC_DIR/path`, with every `<<` escaped as `\<<` (the included file is a
//! script, not config: its heredocs must not read as parameters).

use super::yaml::{self, Node, Pos, Value};
use std::path::{Path, PathBuf};

/// The sections whose files are keyed by name.
pub const SECTIONS: &[&str] = &["commands", "jobs", "executors", "examples"];

#[derive(Debug, thiserror::Error)]
pub enum PackError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: no @orb.yml: an orb source directory has `@orb.yml` at its root (e.g. `my-orb/src/@orb.yml`)")]
    NoRoot { path: String },
    #[error("{file}:{line}:{col}: {message}")]
    Yaml {
        file: String,
        line: u64,
        col: u64,
        message: String,
    },
    #[error("{file}:{line}:{col}: {key}: {message}")]
    Include {
        file: String,
        line: u64,
        col: u64,
        key: String,
        message: String,
    },
    #[error("{file}: `{section}.{name}` is defined both in @orb.yml and in {file}")]
    Duplicate {
        file: String,
        section: String,
        name: String,
    },
    #[error("cannot render the packed orb: {0}")]
    Render(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> PackError + '_ {
    move |source| PackError::Io {
        path: path.display().to_string(),
        source,
    }
}

fn parse(path: &Path) -> Result<Node, PackError> {
    let text = std::fs::read_to_string(path).map_err(io(path))?;
    yaml::parse_file(&text, 0).map_err(|e| PackError::Yaml {
        file: path.display().to_string(),
        line: e.line,
        col: e.col,
        message: format!("invalid YAML: {}", e.message),
    })
}

/// Pack the orb whose source is `src` (the directory holding `@orb.yml`) into one YAML text.
pub fn pack(src: &Path) -> Result<String, PackError> {
    // Parsing and rendering recurse per nesting level: same stack as the compiler.
    super::with_big_stack(|| pack_inner(src))
}

fn pack_inner(src: &Path) -> Result<String, PackError> {
    let root_file = src.join("@orb.yml");
    if !root_file.is_file() {
        return Err(PackError::NoRoot {
            path: src.display().to_string(),
        });
    }
    let root = parse(&root_file)?;
    let mut top: Vec<(Node, Node)> = match root.value {
        Value::Map(m) => m,
        Value::Null => Vec::new(),
        _ => {
            return Err(PackError::Yaml {
                file: root_file.display().to_string(),
                line: root.pos.line,
                col: root.pos.col,
                message: format!("expected a mapping, found {}", root.kind()),
            })
        }
    };
    let p = Pos::default();
    for section in SECTIONS {
        let dir = src.join(section);
        if !dir.is_dir() {
            continue;
        }
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .map_err(io(&dir))?
            .map(|e| e.map(|e| e.path()).map_err(io(&dir)))
            .collect::<Result<_, _>>()?;
        // Directory order is the file system's; sorted, the output is the same everywhere.
        files.sort();
        let mut entries: Vec<(Node, Node)> = Vec::new();
        for f in files {
            let is_yaml = matches!(f.extension().and_then(|e| e.to_str()), Some("yml" | "yaml"));
            if !f.is_file() || !is_yaml {
                continue;
            }
            let Some(name) = f.file_stem().and_then(|s| s.to_str()) else {
                continue;
            };
            let mut def = parse(&f)?;
            if *section != "examples" {
                inline_includes(&mut def, src, &f, &format!("{section}.{name}"))?;
            }
            entries.push((Node::str(name, p), def));
        }
        if entries.is_empty() {
            continue;
        }
        match top.iter_mut().find(|(k, _)| k.as_str() == Some(section)) {
            Some((_, existing)) => {
                let mut m = match std::mem::replace(&mut existing.value, Value::Null) {
                    Value::Map(m) => m,
                    _ => Vec::new(),
                };
                for (k, v) in entries {
                    if m.iter().any(|(ek, _)| ek.value == k.value) {
                        return Err(PackError::Duplicate {
                            file: dir.display().to_string(),
                            section: section.to_string(),
                            name: k.as_str().unwrap_or("").to_owned(),
                        });
                    }
                    m.push((k, v));
                }
                existing.value = Value::Map(m);
            }
            None => top.push((Node::str(*section, p), Node::new(Value::Map(entries), p))),
        }
    }
    // Also inline includes written directly in @orb.yml's own sections.
    for (k, v) in top.iter_mut() {
        if let Some(section @ ("commands" | "jobs" | "executors")) = k.as_str() {
            let section = section.to_owned();
            inline_includes(v, src, &root_file, &section)?;
        }
    }
    serde_saphyr::to_string(&Node::new(Value::Map(top), p))
        .map_err(|e| PackError::Render(e.to_string()))
}

/// Replace every string that is exactly `<<include(path)>>` under `node` by the file's text.
fn inline_includes(node: &mut Node, src: &Path, file: &Path, key: &str) -> Result<(), PackError> {
    match &mut node.value {
        Value::Str(s) => {
            let Some(start) = s.find("<<include(") else {
                return Ok(());
            };
            let err = |message: String| PackError::Include {
                file: file.display().to_string(),
                line: node.pos.line,
                col: node.pos.col,
                key: key.to_owned(),
                message,
            };
            let t = s.trim();
            let whole = t.starts_with("<<include(") && t.ends_with(")>>");
            if !whole || start != s.len() - s.trim_start().len() {
                return Err(err(
                    "an `<<include(file)>>` must be the whole value (circleci orb pack's rule)"
                        .to_owned(),
                ));
            }
            let rel = t["<<include(".len()..t.len() - ")>>".len()].trim();
            let target = safe_join(src, rel).ok_or_else(|| {
                err(format!(
                    "`<<include({rel})>>`: the path must be relative and stay inside the orb's source directory"
                ))
            })?;
            let text = std::fs::read_to_string(&target)
                .map_err(|e| err(format!("`<<include({rel})>>`: {}: {e}", target.display())))?;
            *s = text.replace("<<", "\\<<");
            Ok(())
        }
        Value::Seq(items) => {
            for (i, it) in items.iter_mut().enumerate() {
                inline_includes(it, src, file, &format!("{key}[{i}]"))?;
            }
            Ok(())
        }
        Value::Map(m) => {
            for (k, v) in m.iter_mut() {
                let sub = format!("{key}.{}", k.as_str().unwrap_or("?"));
                inline_includes(v, src, file, &sub)?;
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// `src/rel` if `rel` is relative and has no `..`: an orb's includes are its own files.
fn safe_join(src: &Path, rel: &str) -> Option<PathBuf> {
    let p = Path::new(rel);
    let ok = !rel.is_empty()
        && p.components().all(|c| {
            matches!(
                c,
                std::path::Component::Normal(_) | std::path::Component::CurDir
            )
        });
    ok.then(|| src.join(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        for (path, text) in files {
            let p = dir.path().join(path);
            std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
            std::fs::write(p, text).expect("write");
        }
        dir
    }

    #[test]
    fn sections_are_keyed_by_file_name_and_includes_escaped() {
        let d = tree(&[
            ("src/@orb.yml", "version: 2.1\ndescription: demo\n"),
            (
                "src/commands/greet.yml",
                "steps:\n  - run:\n      name: hi\n      command: <<include(scripts/greet.sh)>>\n",
            ),
            (
                "src/scripts/greet.sh",
                "cat <<EOF\n<< not a param >>\nEOF\n",
            ),
            (
                "src/jobs/test.yml",
                "docker: [{image: cimg/base:current}]\nsteps: [greet]\n",
            ),
            (
                "src/examples/use.yml",
                "description: x\nusage:\n  version: 2.1\n",
            ),
            ("src/commands/README.md", "not yaml"),
        ]);
        let text = pack(&d.path().join("src")).expect("packs");
        let n = yaml::parse(&text).expect("valid YAML");
        let cmd = n
            .get("commands")
            .and_then(|c| c.get("greet"))
            .and_then(|c| c.get("steps"))
            .and_then(|s| s.as_seq())
            .and_then(|s| s[0].get("run"))
            .and_then(|r| r.get("command"))
            .and_then(Node::as_str)
            .expect("command");
        assert_eq!(cmd, "cat \\<<EOF\n\\<< not a param >>\nEOF\n");
        assert!(n.get("jobs").and_then(|j| j.get("test")).is_some());
        assert!(n.get("examples").and_then(|j| j.get("use")).is_some());
        assert_eq!(n.get("description").and_then(Node::as_str), Some("demo"));
        assert_eq!(
            n.get("commands").and_then(Node::as_map).map(|m| m.len()),
            Some(1)
        );
    }

    #[test]
    fn include_must_be_whole_value_and_stay_inside() {
        let d = tree(&[
            ("src/@orb.yml", "version: 2.1\n"),
            (
                "src/commands/a.yml",
                "steps:\n  - run: echo <<include(scripts/a.sh)>>\n",
            ),
        ]);
        let e = pack(&d.path().join("src")).expect_err("refused");
        assert!(e.to_string().contains("must be the whole value"), "{e}");
        let d = tree(&[
            ("src/@orb.yml", "version: 2.1\n"),
            (
                "src/commands/a.yml",
                "steps:\n  - run: <<include(../../etc/passwd)>>\n",
            ),
        ]);
        let e = pack(&d.path().join("src")).expect_err("refused");
        assert!(e.to_string().contains("stay inside"), "{e}");
        assert!(e.to_string().contains("a.yml:2:"), "{e}");
    }

    #[test]
    fn missing_root_is_named() {
        let d = tree(&[("src/commands/a.yml", "steps: []\n")]);
        let e = pack(&d.path().join("src")).expect_err("no root");
        assert!(e.to_string().contains("no @orb.yml"), "{e}");
    }
}

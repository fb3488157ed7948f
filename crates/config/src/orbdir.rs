//! Vendored orbs on disk, for `--orb-dir DIR` (the compiler itself does no I/O).
//!
//! `DIR/<namespace>/<name>@<version>.yml` is a packed orb (`circleci orb source` output, or
//! `bosun orb pack`); `DIR/<namespace>/<name>@<version>/src/@orb.yml` is an orb's source tree
//! as its repository holds it, packed when loaded. Orbs that import other orbs find them in
//! the same directory.

use super::orb_pack;
use super::{OrbLoader, OrbRef, OrbSource};
use std::path::PathBuf;

/// Reads vendored orbs from a directory.
pub struct OrbDir(pub PathBuf);

impl OrbDir {
    fn source_tree(&self, orb: &OrbRef) -> PathBuf {
        self.0
            .join(&orb.namespace)
            .join(format!("{}@{}", orb.name, orb.version))
            .join("src")
    }
}

impl OrbLoader for OrbDir {
    fn load(&self, orb: &OrbRef) -> OrbSource {
        let path = self.0.join(orb.vendored_path());
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                return OrbSource::Found {
                    file: path.display().to_string(),
                    text,
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return OrbSource::Failed(format!("{}: {e}", path.display())),
        }
        let src = self.source_tree(orb);
        if !src.join("@orb.yml").is_file() {
            return OrbSource::Missing;
        }
        match orb_pack::pack(&src) {
            Ok(text) => OrbSource::Found {
                // Positions in errors are those of the packed text.
                file: format!("{} (packed)", src.display()),
                text,
            },
            Err(e) => OrbSource::Failed(format!("packing {}: {e}", src.display())),
        }
    }

    /// Versions vendored for `namespace/name`: packed files and source trees.
    fn versions(&self, namespace: &str, name: &str) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(self.0.join(namespace)) else {
            return Vec::new();
        };
        let prefix = format!("{name}@");
        let mut out: Vec<String> = entries
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let file = e.file_name().into_string().ok()?;
                let rest = file.strip_prefix(&prefix)?;
                match rest.strip_suffix(".yml") {
                    Some(v) if e.path().is_file() => Some(v.to_owned()),
                    _ if e.path().join("src/@orb.yml").is_file() => Some(rest.to_owned()),
                    _ => None,
                }
            })
            .collect();
        out.sort();
        out.dedup();
        out
    }
}

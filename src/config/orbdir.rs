//! Vendored registry orbs read from a directory (the compiler itself does no I/O).

use super::{OrbLoader, OrbRef, OrbSource};
use std::path::PathBuf;

/// `DIR/<namespace>/<name>@<version>.yml`.
pub struct OrbDir(pub PathBuf);

impl OrbLoader for OrbDir {
    fn load(&self, orb: &OrbRef) -> OrbSource {
        let path = self.0.join(orb.vendored_path());
        match std::fs::read_to_string(&path) {
            Ok(text) => OrbSource::Found {
                file: path.display().to_string(),
                text,
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => OrbSource::Missing,
            Err(e) => OrbSource::Failed(format!("{}: {e}", path.display())),
        }
    }
}

//! The real-world configs and the vendored orbs the config tests compile, kept outside the
//! repository in `../shared` (a test skips, saying so, when they are absent).

use bosun::config::{resolve_pin, OrbDir, OrbLoader, OrbRef, OrbSource};
use std::path::PathBuf;

/// `../shared/corpus`: real configs and their `MANIFEST.tsv`.
pub fn corpus_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/corpus")
}

/// `../shared/orbs`: the vendored orbs, `namespace/name/version.yml`.
pub fn orbs_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/orbs")
}

/// Whether `ns/name@pin` can be served by `loader` (exactly or through a pin).
pub fn vendored(loader: &OrbDir, reference: &str) -> bool {
    let Some((nn, version)) = reference.split_once('@') else {
        return false;
    };
    let Some((ns, name)) = nn.split_once('/') else {
        return false;
    };
    let version = resolve_pin(version, &loader.versions(ns, name)).unwrap_or(version.to_owned());
    let r = OrbRef {
        namespace: ns.to_owned(),
        name: name.to_owned(),
        version,
    };
    matches!(loader.load(&r), OrbSource::Found { .. })
}

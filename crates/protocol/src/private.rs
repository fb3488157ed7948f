//! What must stay private, in one place: a value that must never reach a log ([`Secret`]),
//! the check that a file is its owner's only ([`loose_mode`]), and directories only their
//! owner may enter ([`create_private_dir`], [`private_dir`]).

use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::Path;

/// A value that must never reach a log: its `Debug` prints `"<redacted>"`, never the value.
/// The value is read with [`Secret::expose`], so every place that reads it says so.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret<T>(T);

impl<T> Secret<T> {
    pub fn new(value: T) -> Secret<T> {
        Secret(value)
    }

    /// The value itself.
    pub fn expose(&self) -> &T {
        &self.0
    }

    pub fn into_inner(self) -> T {
        self.0
    }
}

impl<T> From<T> for Secret<T> {
    fn from(value: T) -> Secret<T> {
        Secret(value)
    }
}

impl<T> std::fmt::Debug for Secret<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt("<redacted>", f)
    }
}

/// Stored and sent as the value itself: only `Debug` hides it.
impl<T: serde::Serialize> serde::Serialize for Secret<T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

impl<'de, T: serde::Deserialize<'de>> serde::Deserialize<'de> for Secret<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        T::deserialize(d).map(Secret)
    }
}

/// The permission bits (`0o777` part) of a file or directory whose group or others may use
/// it; `None` when only its owner may.
pub fn loose_mode(meta: &std::fs::Metadata) -> Option<u32> {
    let mode = meta.permissions().mode();
    (mode & 0o077 != 0).then_some(mode & 0o777)
}

/// Create `dir` and its missing parents mode 0700; an existing one is left as it is.
pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// Create `dir` (and its parents) 0700, or tighten an existing one others could enter when
/// it is ours: then the mode it had (the caller says so in its log). One shared with others
/// (sticky, or someone else's: /tmp) is refused, as it is not ours to close.
pub fn private_dir(dir: &Path) -> std::io::Result<Option<u32>> {
    create_private_dir(dir)?;
    let meta = std::fs::metadata(dir)?;
    if loose_mode(&meta).is_none() {
        return Ok(None);
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o1000 != 0 || meta.uid() != euid() {
        return Err(std::io::Error::other(format!(
            "mode {mode:o}, owner uid {}: a directory shared with others; give the agent \
             a directory of its own",
            meta.uid()
        )));
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    Ok(Some(mode))
}

/// The effective user id of this process.
fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_debugs_as_a_redaction_and_serializes_as_its_value() {
        let s = Secret::new("hunter22".to_owned());
        assert_eq!(format!("{s:?}"), "\"<redacted>\"");
        assert_eq!(serde_json::to_string(&s).expect("json"), "\"hunter22\"");
        let back: Secret<String> = serde_json::from_str("\"hunter22\"").expect("json");
        assert_eq!(back.expose(), "hunter22");
    }

    #[test]
    fn private_dirs_are_created_0700_and_loose_ones_of_ours_tightened() {
        let t = tempfile::tempdir().expect("tempdir");
        let d = t.path().join("a/b");
        assert_eq!(private_dir(&d).expect("created"), None);
        let meta = std::fs::metadata(&d).expect("meta");
        assert_eq!(meta.permissions().mode() & 0o777, 0o700);
        assert_eq!(loose_mode(&meta), None);
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        assert_eq!(
            loose_mode(&std::fs::metadata(&d).expect("meta")),
            Some(0o755)
        );
        assert_eq!(private_dir(&d).expect("tightened"), Some(0o755));
        let mode = std::fs::metadata(&d).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
    }
}

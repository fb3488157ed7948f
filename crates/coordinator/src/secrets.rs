//! Secrets at rest: project private keys and secret env values are stored in `coordinator.db`
//! sealed with ChaCha20-Poly1305 under a 256-bit key kept in a file *outside* the data
//! directory (by default `<data dir>.key` beside it, created mode 0600; `--secrets-key`
//! names another). A copy of the database (a backup, a stolen disk image of the data
//! directory) then holds no usable key or secret without the key file.
//!
//! A sealed value is the text `enc:v1:` + base64(nonce ‖ ciphertext ‖ tag), with a random
//! 96-bit nonce per value, and the value's place (`p<project id>/user_key`, …) as associated
//! data, so a sealed value copied into another row or column does not open.

use crate::error::{CoordError, Result};
use base64::Engine as _;
use bosun_protocol::private::Secret;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use zeroize::Zeroizing;

/// The prefix of a sealed value (anything else in a secret column is plaintext of an older
/// store, sealed when the store is opened).
pub const SEALED_PREFIX: &str = "enc:v1:";
const KEY_LEN: usize = 32;

/// The default key file of a data directory: `<dir>.key` beside it (not inside it).
pub fn default_key_path(data_dir: &Path) -> PathBuf {
    let mut name = data_dir
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_else(|| "coordinator".into());
    name.push(".key");
    match data_dir.parent() {
        Some(p) => p.join(name),
        None => PathBuf::from(name),
    }
}

/// The key that seals and opens secret columns.
#[derive(Debug)]
pub struct SecretsKey {
    key: Secret<LessSafeKey>,
    /// First 16 hex digits of SHA-256("bosun secrets key" ‖ key): recorded in the store so
    /// opening it with another key file fails with a clear error.
    pub fingerprint: String,
    pub path: PathBuf,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CoordError + '_ {
    move |source| CoordError::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl SecretsKey {
    /// Read the key file at `path`, or create it (0600, 32 random bytes, base64) when it does
    /// not exist and `create` is true. A key file others can read is refused.
    pub fn load_or_create(path: &Path, create: bool) -> Result<SecretsKey> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => Zeroizing::new(t),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && create => {
                let mut raw = Zeroizing::new([0u8; KEY_LEN]);
                SystemRandom::new()
                    .fill(raw.as_mut())
                    .map_err(|_| CoordError::Invalid("no randomness for a new key".into()))?;
                let text =
                    Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(raw.as_ref()));
                let mut f = std::fs::OpenOptions::new()
                    .create_new(true)
                    .write(true)
                    .mode(0o600)
                    .open(path)
                    .map_err(io(path))?;
                f.write_all(text.as_bytes())
                    .and_then(|_| f.write_all(b"\n"))
                    .and_then(|_| f.sync_all())
                    .map_err(io(path))?;
                tracing::info!("created the secrets key file {}", path.display());
                text
            }
            Err(e) => return Err(io(path)(e)),
        };
        let meta = std::fs::metadata(path).map_err(io(path))?;
        if let Some(mode) = bosun_protocol::private::loose_mode(&meta) {
            return Err(CoordError::Invalid(format!(
                "{}: the secrets key file has mode {mode:o}; it must be readable by its owner only \
                 (chmod 600)",
                path.display(),
            )));
        }
        let raw = Zeroizing::new(
            base64::engine::general_purpose::STANDARD
                .decode(text.trim())
                .ok()
                .filter(|k| k.len() == KEY_LEN)
                .ok_or_else(|| {
                    CoordError::Invalid(format!(
                        "{}: not a secrets key (expected {KEY_LEN} bytes in base64)",
                        path.display()
                    ))
                })?,
        );
        let fingerprint = {
            let mut input = Zeroizing::new(b"bosun secrets key".to_vec());
            input.extend_from_slice(&raw);
            crate::text::sha256_hex(&input)[..16].to_owned()
        };
        let key = UnboundKey::new(&CHACHA20_POLY1305, &raw)
            .map_err(|_| CoordError::Invalid("bad secrets key".into()))?;
        Ok(SecretsKey {
            key: Secret::new(LessSafeKey::new(key)),
            fingerprint,
            path: path.to_path_buf(),
        })
    }

    /// `plain` sealed for the place `aad`.
    pub fn seal(&self, aad: &str, plain: &str) -> Result<String> {
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| CoordError::Invalid("no randomness for a nonce".into()))?;
        let mut buf = Zeroizing::new(plain.as_bytes().to_vec());
        self.key
            .expose()
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad.as_bytes()),
                &mut *buf,
            )
            .map_err(|_| CoordError::Invalid("sealing a secret failed".into()))?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&buf);
        Ok(format!(
            "{SEALED_PREFIX}{}",
            base64::engine::general_purpose::STANDARD.encode(out)
        ))
    }

    /// Open a value sealed for `aad`. The error names the place, never the value.
    pub fn open(&self, aad: &str, sealed: &str) -> Result<Zeroizing<String>> {
        let bad = || {
            CoordError::Invalid(format!(
                "the secret {aad} does not open with the key {} (another key file, or a \
                 damaged value)",
                self.path.display()
            ))
        };
        let body = sealed.strip_prefix(SEALED_PREFIX).ok_or_else(bad)?;
        let mut raw = Zeroizing::new(
            base64::engine::general_purpose::STANDARD
                .decode(body)
                .map_err(|_| bad())?,
        );
        if raw.len() < NONCE_LEN {
            return Err(bad());
        }
        let (nonce, rest) = raw.split_at_mut(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| bad())?;
        let plain = self
            .key
            .expose()
            .open_in_place(nonce, Aad::from(aad.as_bytes()), rest)
            .map_err(|_| bad())?;
        let text = std::str::from_utf8(plain).map_err(|_| bad())?;
        Ok(Zeroizing::new(text.to_owned()))
    }
}

/// The associated data of a project's key column (`user_key`, `deploy_key`).
pub fn key_place(project_id: i64, column: &str) -> String {
    format!("p{project_id}/{column}")
}

/// The associated data of a project's secret env value.
pub fn env_place(project_id: i64, name: &str) -> String {
    format!("p{project_id}/env/{name}")
}

/// The associated data of a context's variable (the context's UUID: stable across renames).
pub fn context_env_place(context_uuid: &str, name: &str) -> String {
    format!("c{context_uuid}/env/{name}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn sealed_values_open_only_in_their_place_and_with_their_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let k = SecretsKey::load_or_create(&dir.path().join("k"), true).expect("key");
        let s = k.seal("p1/user_key", "hunter22").expect("seal");
        assert!(s.starts_with(SEALED_PREFIX) && !s.contains("hunter22"));
        assert_eq!(
            k.open("p1/user_key", &s).expect("open").as_str(),
            "hunter22"
        );
        assert!(k.open("p2/user_key", &s).is_err());
        let other = SecretsKey::load_or_create(&dir.path().join("k2"), true).expect("key");
        let e = other.open("p1/user_key", &s).expect_err("other key");
        assert!(!e.to_string().contains("hunter22"));
        // Read back from the file: the same key.
        let again = SecretsKey::load_or_create(&dir.path().join("k"), false).expect("key");
        assert_eq!(again.fingerprint, k.fingerprint);
        assert_eq!(
            again.open("p1/user_key", &s).expect("open").as_str(),
            "hunter22"
        );
    }

    #[test]
    fn the_key_never_shows_in_debug() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("k");
        let k = SecretsKey::load_or_create(&p, true).expect("key");
        let text = std::fs::read_to_string(&p).expect("read");
        let shown = format!("{k:?}");
        assert!(!shown.contains(text.trim()), "{shown}");
        assert!(shown.contains(&k.fingerprint), "the rest is shown: {shown}");
    }

    #[test]
    fn a_key_file_others_can_read_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("k");
        SecretsKey::load_or_create(&p, true).expect("key");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let e = SecretsKey::load_or_create(&p, false).expect_err("loose");
        assert!(e.to_string().contains("chmod 600"), "{e}");
    }

    #[test]
    fn the_default_key_file_is_beside_the_data_dir() {
        assert_eq!(
            default_key_path(Path::new("/var/lib/bosun-coordinator")),
            PathBuf::from("/var/lib/bosun-coordinator.key")
        );
    }
}

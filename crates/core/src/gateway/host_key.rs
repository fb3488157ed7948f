//! The gateway's own host key: ed25519, made on first start and kept (mode 0600) in the
//! agent's state directory, so a user's `known_hosts` entry stays valid across restarts.

use super::GatewayError;
use russh::keys::ssh_key::private::Ed25519Keypair;
use russh::keys::ssh_key::LineEnding;
use russh::keys::{HashAlg, PrivateKey};
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Read the key at `path`, or make one there (mode 0600; the directory is created 0700).
pub fn load_or_create(path: &Path) -> Result<PrivateKey, GatewayError> {
    let err = |what: &'static str| {
        let path = path.display().to_string();
        move |source: std::io::Error| GatewayError::HostKey { path, what, source }
    };
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let meta = std::fs::metadata(path).map_err(err("inspect"))?;
            if let Some(mode) = crate::private::loose_mode(&meta) {
                return Err(GatewayError::HostKeyMode {
                    path: path.display().to_string(),
                    mode,
                });
            }
            PrivateKey::from_openssh(text.as_bytes()).map_err(|e| GatewayError::HostKeyParse {
                path: path.display().to_string(),
                reason: e.to_string(),
            })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                crate::private::create_private_dir(dir).map_err(err("create the directory of"))?;
            }
            let mut seed = zeroize::Zeroizing::new([0u8; 32]);
            std::fs::File::open("/dev/urandom")
                .and_then(|mut f| f.read_exact(seed.as_mut()))
                .map_err(err("read randomness for"))?;
            let key = PrivateKey::from(Ed25519Keypair::from_seed(&seed));
            let text = key
                .to_openssh(LineEnding::LF)
                .map_err(|e| GatewayError::HostKeyParse {
                    path: path.display().to_string(),
                    reason: e.to_string(),
                })?;
            // Written under a temporary name and renamed: a crash never leaves half a key.
            let tmp = path.with_extension("tmp");
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)
                .map_err(err("create"))?;
            f.write_all(text.as_bytes())
                .and_then(|()| f.sync_all())
                .map_err(err("write"))?;
            std::fs::rename(&tmp, path).map_err(err("rename into"))?;
            Ok(key)
        }
        Err(e) => Err(err("read")(e)),
    }
}

/// `SHA256:…`, as `ssh-keygen -lf` and `ssh` print it.
pub fn fingerprint(key: &PrivateKey) -> String {
    key.public_key().fingerprint(HashAlg::Sha256).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn the_key_is_made_once_with_mode_0600_and_read_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("state/ssh_host_ed25519_key");
        let made = load_or_create(&path).expect("made");
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let again = load_or_create(&path).expect("read");
        assert_eq!(fingerprint(&made), fingerprint(&again));
        assert!(fingerprint(&made).starts_with("SHA256:"));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        assert!(matches!(
            load_or_create(&path),
            Err(GatewayError::HostKeyMode { .. })
        ));
    }
}

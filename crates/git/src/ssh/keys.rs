//! Checkout private keys, held in memory only (zeroized on drop) and never printed.

use super::{fingerprint_sha256, read_ssh_string, SshError};
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use bosun_protocol::private::Secret;
use std::fmt;
use std::path::Path;
use zeroize::Zeroizing;

/// Which kind of Bitbucket key this is; decides the order keys are offered in and what an
/// access failure means (a deploy key opens exactly one repository).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyRole {
    User,
    Deploy,
    /// A project's "additional SSH key": installed only by an `add_ssh_keys` step.
    Additional,
}

impl fmt::Display for KeyRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KeyRole::User => "user key",
            KeyRole::Deploy => "deploy key",
            KeyRole::Additional => "additional key",
        })
    }
}

#[derive(Debug, Clone)]
pub struct SshKey {
    pub role: KeyRole,
    pub private: Secret<Zeroizing<String>>,
    /// Known for OpenSSH-format keys (the public half is stored unencrypted in them); PEM keys
    /// would need the key maths to derive it, so they have none.
    pub public_fingerprint: Option<String>,
}

const OPENSSH_BEGIN: &str = "-----BEGIN OPENSSH PRIVATE KEY-----";
const OPENSSH_END: &str = "-----END OPENSSH PRIVATE KEY-----";
const PEM_BEGINS: [&str; 3] = [
    "-----BEGIN RSA PRIVATE KEY-----",
    "-----BEGIN EC PRIVATE KEY-----",
    "-----BEGIN PRIVATE KEY-----",
];

impl SshKey {
    /// Reads and validates a private key file.
    ///
    /// A group- or world-readable file is accepted with a warning rather than refused (OpenSSH
    /// refuses): keys often arrive through secret mounts whose mode the operator cannot set,
    /// and the agent never hands this file to `ssh` itself — containers get their own 0600 copy.
    pub fn from_file(path: &Path, role: KeyRole) -> Result<SshKey, SshError> {
        let bytes = Zeroizing::new(std::fs::read(path).map_err(|source| SshError::KeyFileIo {
            path: path.to_path_buf(),
            source,
        })?);
        warn_if_readable_by_others(path);
        let text = match std::str::from_utf8(&bytes) {
            Ok(t) => Zeroizing::new(t.to_string()),
            Err(_) => {
                return Err(SshError::KeyFile {
                    path: path.to_path_buf(),
                    message: "not a text file; expected an OpenSSH or PEM private key".into(),
                })
            }
        };
        SshKey::from_text(text, role).map_err(|message| SshError::KeyFile {
            path: path.to_path_buf(),
            message,
        })
    }

    /// Validates key text held in memory (e.g. from an API or environment). The error is the
    /// reason only; callers add where the text came from.
    pub fn from_text(text: Zeroizing<String>, role: KeyRole) -> Result<SshKey, String> {
        let trimmed = text.trim();
        if trimmed.is_empty() {
            return Err("the file is empty; expected a private key".into());
        }
        if trimmed.starts_with("ssh-") || trimmed.starts_with("ecdsa-sha2-") {
            return Err(
                "this is a PUBLIC key (one line starting with its type); give the \
                        private key file instead (the one without .pub)"
                    .into(),
            );
        }
        let public_fingerprint = if trimmed.starts_with(OPENSSH_BEGIN) {
            Some(inspect_openssh(trimmed)?)
        } else if PEM_BEGINS.iter().any(|b| trimmed.starts_with(b)) {
            if trimmed.contains("ENCRYPTED") {
                return Err(encrypted_message());
            }
            None
        } else if trimmed.starts_with("-----BEGIN ENCRYPTED PRIVATE KEY-----") {
            return Err(encrypted_message());
        } else {
            return Err(
                "not a private key: expected a line `-----BEGIN OPENSSH PRIVATE KEY-----` \
                        (or an RSA/EC/PKCS#8 PEM header) at the start"
                    .into(),
            );
        };
        let mut private = Zeroizing::new(String::with_capacity(trimmed.len() + 1));
        private.push_str(trimmed);
        private.push('\n');
        Ok(SshKey {
            role,
            private: Secret::new(private),
            public_fingerprint,
        })
    }

    /// Its file name under the container's `~/.ssh`.
    pub fn file_name(&self) -> &'static str {
        match self.role {
            KeyRole::User => "id_bosun_user",
            KeyRole::Deploy => "id_bosun_deploy",
            KeyRole::Additional => "id_bosun_additional",
        }
    }

    /// "user key SHA256:..." — safe to print.
    pub fn describe(&self) -> String {
        match &self.public_fingerprint {
            Some(fp) => format!("{} {fp}", self.role),
            None => format!("{} (PEM, fingerprint unknown)", self.role),
        }
    }
}

fn encrypted_message() -> String {
    "the key is protected by a passphrase, which bosun cannot enter; give an unencrypted key \
     (e.g. a copy made with `ssh-keygen -p -N '' -f COPY`)"
        .into()
}

/// Checks the OpenSSH container format and returns the public key's fingerprint.
fn inspect_openssh(text: &str) -> Result<String, String> {
    let body: String = text
        .lines()
        .skip(1)
        .take_while(|l| !l.starts_with(OPENSSH_END))
        .map(str::trim)
        .collect();
    if !text.contains(OPENSSH_END) {
        return Err(format!(
            "the key is cut short: no `{OPENSSH_END}` line; copy the whole file"
        ));
    }
    let raw = Zeroizing::new(
        STANDARD
            .decode(body.as_bytes())
            .map_err(|e| format!("the key body is not valid base64 ({e}); copy the whole file"))?,
    );
    const MAGIC: &[u8] = b"openssh-key-v1\0";
    let garbled = || "the key data is garbled (not an openssh-key-v1 structure)".to_string();
    if !raw.starts_with(MAGIC) {
        return Err(garbled());
    }
    let (cipher, pos) = read_ssh_string(&raw, MAGIC.len()).ok_or_else(garbled)?;
    if cipher != b"none" {
        return Err(encrypted_message());
    }
    let (_kdf, pos) = read_ssh_string(&raw, pos).ok_or_else(garbled)?;
    let (_kdf_opts, pos) = read_ssh_string(&raw, pos).ok_or_else(garbled)?;
    let nkeys = raw.get(pos..pos + 4).ok_or_else(garbled)?;
    if nkeys != [0, 0, 0, 1] {
        return Err("the file holds more than one key; give one key per file".into());
    }
    let (public, _) = read_ssh_string(&raw, pos + 4).ok_or_else(garbled)?;
    Ok(fingerprint_sha256(public))
}

#[cfg(unix)]
fn warn_if_readable_by_others(path: &Path) {
    if let Ok(meta) = std::fs::metadata(path) {
        if let Some(mode) = bosun_protocol::private::loose_mode(&meta) {
            tracing::warn!(
                path = %path.display(),
                mode = format!("{mode:o}"),
                "SSH private key file is readable by other users; consider chmod 600"
            );
        }
    }
}

#[cfg(not(unix))]
fn warn_if_readable_by_others(_path: &Path) {}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A throwaway ed25519 key generated for tests (no passphrase); never used anywhere else.
    pub(crate) const TEST_KEY: &str = "-----BEGIN OPENSSH PRIVATE KEY-----
b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZW
QyNTUxOQAAACDrhlscmrfICCZLbHAS4SgXqc99h1MErWnGY/k3PrWfYwAAAJAEDD5KBAw+
SgAAAAtzc2gtZWQyNTUxOQAAACDrhlscmrfICCZLbHAS4SgXqc99h1MErWnGY/k3PrWfYw
AAAEADRLFKuA4PtZ9K/QuRfCwdUmWF2oswOlg/poUZREQ09OuGWxyat8gIJktscBLhKBep
z32HUwStacZj+Tc+tZ9jAAAAB3Jvb3RAdm0BAgMEBQY=
-----END OPENSSH PRIVATE KEY-----
";
    pub(crate) const TEST_KEY_PUB: &str =
        "AAAAC3NzaC1lZDI1NTE5AAAAIOuGWxyat8gIJktscBLhKBepz32HUwStacZj+Tc+tZ9j";

    fn write(dir: &Path, name: &str, text: &[u8]) -> std::path::PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).expect("write test file");
        p
    }

    #[test]
    fn reads_openssh_key_and_fingerprints_public_half() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = write(dir.path(), "k", TEST_KEY.as_bytes());
        let key = SshKey::from_file(&p, KeyRole::Deploy).expect("valid key");
        let blob = STANDARD.decode(TEST_KEY_PUB).expect("b64");
        assert_eq!(key.public_fingerprint, Some(fingerprint_sha256(&blob)));
        assert!(key.private.expose().ends_with("-----\n"));
        assert_eq!(key.file_name(), "id_bosun_deploy");
        assert_eq!(key.role.to_string(), "deploy key");
    }

    #[test]
    fn debug_is_redacted() {
        let key =
            SshKey::from_text(Zeroizing::new(TEST_KEY.to_string()), KeyRole::User).expect("valid");
        let dbg = format!("{key:?}");
        assert!(dbg.contains("<redacted>"), "{dbg}");
        assert!(!dbg.contains("b3BlbnNzaC1rZXktdjE"), "{dbg}");
        assert!(!dbg.contains("PRIVATE KEY"), "{dbg}");
    }

    #[test]
    fn refuses_bad_files_with_reasons_naming_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cases: Vec<(&str, Vec<u8>, &str)> = vec![
            ("empty", b"  \n".to_vec(), "empty"),
            ("pub", format!("ssh-ed25519 {TEST_KEY_PUB} me").into_bytes(), "PUBLIC key"),
            ("garbage", b"hello world\n".to_vec(), "not a private key"),
            ("binary", vec![0xff, 0xfe, 0x00], "not a text file"),
            (
                "cut",
                TEST_KEY.lines().take(3).collect::<Vec<_>>().join("\n").into_bytes(),
                "cut short",
            ),
            (
                "pem-enc",
                b"-----BEGIN RSA PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\nDEK-Info: AES-128-CBC,00\n\nAAAA\n-----END RSA PRIVATE KEY-----\n".to_vec(),
                "passphrase",
            ),
            (
                "pkcs8-enc",
                b"-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n".to_vec(),
                "passphrase",
            ),
        ];
        for (name, content, why) in cases {
            let p = write(dir.path(), name, &content);
            let err = SshKey::from_file(&p, KeyRole::User).expect_err(name);
            let msg = err.to_string();
            assert!(msg.contains(&p.display().to_string()), "{msg}");
            assert!(msg.contains(why), "{name}: {msg}");
        }
        let err = SshKey::from_file(&dir.path().join("missing"), KeyRole::User).expect_err("io");
        assert!(err.to_string().contains("missing"));
    }

    #[test]
    fn refuses_encrypted_openssh_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("enc");
        let _spawning = crate::spawning();
        let status = std::process::Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "secret-pass", "-f"])
            .arg(&p)
            .status();
        let Ok(status) = status else {
            eprintln!("ssh-keygen not available; skipping");
            return;
        };
        assert!(status.success());
        let err = SshKey::from_file(&p, KeyRole::User).expect_err("encrypted");
        assert!(err.to_string().contains("passphrase"), "{err}");
    }
}

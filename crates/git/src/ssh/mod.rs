//! SSH material for checkouts: private keys, known_hosts (pinned Bitbucket keys plus the
//! operator's), host-key fingerprints, VCS host aliases and mappings, the `~/.ssh` files a job
//! container gets, and keyscan.
//!
//! Nothing here uses git2: `checkout` builds its callbacks on these pure pieces, and the job
//! code writes [`container_ssh_files`] into the container so that `git` inside it behaves the
//! same way as the agent's own checkout.

mod container;
mod keys;
mod keyscan;
mod known_hosts;
mod url;

use base64::engine::general_purpose::STANDARD_NO_PAD;
use base64::Engine as _;
use sha2::{Digest, Sha256};
use std::fmt;
use std::path::PathBuf;

pub use container::{container_ssh_files, ContainerSshFiles};
pub use keys::{KeyRole, SshKey};
pub use keyscan::{keyscan, ScannedKey};
pub use known_hosts::{verify_host_key, HostKeyError, HostKeyVerdict, KnownHosts};
pub use url::{parse_ssh_url, resolve_relative_url, SshUrl, VcsHosts};

/// Errors from reading keys, known_hosts files and host mappings, and from keyscan.
#[derive(Debug, thiserror::Error)]
pub enum SshError {
    #[error("{origin}:{line}: {message}")]
    KnownHostsSyntax {
        origin: String,
        line: usize,
        message: String,
    },
    #[error("SSH key file {}: {message}", path.display())]
    KeyFile { path: PathBuf, message: String },
    #[error("cannot read SSH key file {}: {source}", path.display())]
    KeyFileIo {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("bad host mapping {spec:?}: {message} (expected NAME=HOST[:PORT], e.g. ssh.bitbucket.org=127.0.0.1:2222)")]
    Mapping { spec: String, message: String },
    #[error("keyscan of {host}:{port} failed: {message}")]
    Keyscan {
        host: String,
        port: u16,
        message: String,
    },
}

/// An SSH public key algorithm as named in known_hosts files and key blobs.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum HostKeyType {
    Ed25519,
    EcdsaP256,
    EcdsaP384,
    EcdsaP521,
    Rsa,
    Other(String),
}

impl HostKeyType {
    pub fn name(&self) -> &str {
        match self {
            HostKeyType::Ed25519 => "ssh-ed25519",
            HostKeyType::EcdsaP256 => "ecdsa-sha2-nistp256",
            HostKeyType::EcdsaP384 => "ecdsa-sha2-nistp384",
            HostKeyType::EcdsaP521 => "ecdsa-sha2-nistp521",
            HostKeyType::Rsa => "ssh-rsa",
            HostKeyType::Other(name) => name,
        }
    }

    pub fn from_name(name: &str) -> HostKeyType {
        match name {
            "ssh-ed25519" => HostKeyType::Ed25519,
            "ecdsa-sha2-nistp256" => HostKeyType::EcdsaP256,
            "ecdsa-sha2-nistp384" => HostKeyType::EcdsaP384,
            "ecdsa-sha2-nistp521" => HostKeyType::EcdsaP521,
            // The rsa-sha2-* names are signature algorithms over the same ssh-rsa key blob.
            "ssh-rsa" | "rsa-sha2-256" | "rsa-sha2-512" => HostKeyType::Rsa,
            other => HostKeyType::Other(other.to_string()),
        }
    }

    /// The type recorded inside a public key blob (its first SSH string). This is what the key
    /// really is, whatever a caller or a known_hosts line claims.
    pub fn from_blob(blob: &[u8]) -> Option<HostKeyType> {
        let name = read_ssh_string(blob, 0)?.0;
        std::str::from_utf8(name).ok().map(HostKeyType::from_name)
    }
}

impl fmt::Display for HostKeyType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// OpenSSH-style fingerprint of a public key blob: `SHA256:<base64 without padding>`.
pub fn fingerprint_sha256(key_blob: &[u8]) -> String {
    format!(
        "SHA256:{}",
        STANDARD_NO_PAD.encode(Sha256::digest(key_blob))
    )
}

/// Reads one length-prefixed SSH wire string at `pos`; returns it and the position after it.
fn read_ssh_string(buf: &[u8], pos: usize) -> Option<(&[u8], usize)> {
    let len_bytes: [u8; 4] = buf.get(pos..pos.checked_add(4)?)?.try_into().ok()?;
    let len = u32::from_be_bytes(len_bytes) as usize;
    let start = pos + 4;
    let end = start.checked_add(len)?;
    Some((buf.get(start..end)?, end))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_type_from_blob_reads_embedded_name() {
        let mut blob = Vec::new();
        blob.extend_from_slice(&11u32.to_be_bytes());
        blob.extend_from_slice(b"ssh-ed25519");
        blob.extend_from_slice(&[0, 0, 0, 1, 7]);
        assert_eq!(HostKeyType::from_blob(&blob), Some(HostKeyType::Ed25519));
        assert_eq!(HostKeyType::from_blob(&[0, 0, 0, 99, 1]), None);
        assert_eq!(HostKeyType::from_blob(&[]), None);
    }

    #[test]
    fn rsa_signature_names_map_to_rsa_key() {
        assert_eq!(HostKeyType::from_name("rsa-sha2-512"), HostKeyType::Rsa);
        assert_eq!(HostKeyType::Rsa.name(), "ssh-rsa");
        assert_eq!(
            HostKeyType::from_name("ssh-dss"),
            HostKeyType::Other("ssh-dss".into())
        );
    }

    #[test]
    fn fingerprint_format() {
        // sha256("") in base64 without padding.
        assert_eq!(
            fingerprint_sha256(b""),
            "SHA256:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU"
        );
    }
}

//! `ssh-keyscan` in-process: shows an operator what a server presents, to compare with the
//! provider's published fingerprints before pinning anything (never trust-on-first-use).

use super::{fingerprint_sha256, HostKeyType, SshError};
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

/// One host key a server presented.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScannedKey {
    pub key_type: HostKeyType,
    pub blob: Vec<u8>,
    pub fingerprint: String,
}

impl ScannedKey {
    /// A known_hosts line for `name` (the logical name, not the address that was dialled).
    pub fn known_hosts_line(&self, name: &str, port: u16) -> String {
        let host = if port == 22 {
            name.to_string()
        } else {
            format!("[{name}]:{port}")
        };
        format!(
            "{host} {} {}",
            self.key_type.name(),
            STANDARD.encode(&self.blob)
        )
    }
}

/// The server picks one host key per handshake, so each algorithm gets its own connection.
/// rsa-sha2-512 and ssh-rsa share one key; both are tried because old servers know only
/// the latter and new ones may refuse it.
const ALGORITHMS: &[&str] = &[
    "ssh-ed25519",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "rsa-sha2-512",
    "ssh-rsa",
];

/// Connects to `host:port` once per host-key algorithm and returns the distinct keys seen.
/// `display_name` is used in errors only (e.g. "ssh.bitbucket.org" when dialling a mapping).
pub fn keyscan(
    host: &str,
    port: u16,
    display_name: &str,
    timeout: Duration,
) -> Result<Vec<ScannedKey>, SshError> {
    let fail = |message: String| SshError::Keyscan {
        host: display_name.to_string(),
        port,
        message,
    };
    let addrs: Vec<SocketAddr> = (host, port)
        .to_socket_addrs()
        .map_err(|e| fail(format!("cannot resolve {host}: {e}")))?
        .collect();
    let addr = *addrs
        .first()
        .ok_or_else(|| fail(format!("{host} resolves to no address")))?;
    let mut keys: Vec<ScannedKey> = Vec::new();
    let mut failures: Vec<String> = Vec::new();
    for alg in ALGORITHMS {
        match scan_one(addr, alg, timeout) {
            Ok((blob, reported)) => {
                let key_type = HostKeyType::from_blob(&blob).unwrap_or(reported);
                if !keys.iter().any(|k| k.blob == blob) {
                    keys.push(ScannedKey {
                        fingerprint: fingerprint_sha256(&blob),
                        key_type,
                        blob,
                    });
                }
            }
            Err(e) => failures.push(format!("{alg}: {e}")),
        }
    }
    if keys.is_empty() {
        return Err(fail(format!(
            "no host key obtained ({})",
            failures.join("; ")
        )));
    }
    Ok(keys)
}

/// Why one algorithm's scan got no key (collected into the keyscan's error).
#[derive(Debug, thiserror::Error)]
enum ScanError {
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Ssh(#[from] ssh2::Error),
    #[error("not supported by this build: {0}")]
    Unsupported(#[source] ssh2::Error),
    #[error("server sent no host key")]
    NoHostKey,
}

fn scan_one(
    addr: SocketAddr,
    alg: &str,
    timeout: Duration,
) -> Result<(Vec<u8>, HostKeyType), ScanError> {
    let tcp = TcpStream::connect_timeout(&addr, timeout)?;
    tcp.set_read_timeout(Some(timeout))?;
    tcp.set_write_timeout(Some(timeout))?;
    let mut session = ssh2::Session::new()?;
    // A libssh2 built without this algorithm refuses the preference: skip it.
    session
        .method_pref(ssh2::MethodType::HostKey, alg)
        .map_err(ScanError::Unsupported)?;
    session.set_timeout(u32::try_from(timeout.as_millis()).unwrap_or(u32::MAX));
    session.set_tcp_stream(tcp);
    session.handshake()?;
    let (blob, kind) = session.host_key().ok_or(ScanError::NoHostKey)?;
    let reported = match kind {
        ssh2::HostKeyType::Rsa => HostKeyType::Rsa,
        ssh2::HostKeyType::Ecdsa256 => HostKeyType::EcdsaP256,
        ssh2::HostKeyType::Ecdsa384 => HostKeyType::EcdsaP384,
        ssh2::HostKeyType::Ecdsa521 => HostKeyType::EcdsaP521,
        ssh2::HostKeyType::Ed25519 => HostKeyType::Ed25519,
        other => HostKeyType::Other(format!("{other:?}")),
    };
    let blob = blob.to_vec();
    let _ = session.disconnect(None, "bosun keyscan", None);
    Ok((blob, reported))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_hosts_line_uses_bracket_form_for_other_ports() {
        let blob = STANDARD
            .decode("AAAAC3NzaC1lZDI1NTE5AAAAIOuGWxyat8gIJktscBLhKBepz32HUwStacZj+Tc+tZ9j")
            .expect("b64");
        let k = ScannedKey {
            key_type: HostKeyType::Ed25519,
            fingerprint: fingerprint_sha256(&blob),
            blob,
        };
        assert_eq!(
            k.known_hosts_line("ssh.bitbucket.org", 22),
            "ssh.bitbucket.org ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOuGWxyat8gIJktscBLhKBepz32HUwStacZj+Tc+tZ9j"
        );
        assert!(k
            .known_hosts_line("git.corp", 7999)
            .starts_with("[git.corp]:7999 ssh-ed25519 "));
    }

    #[test]
    fn unreachable_port_is_an_error_naming_the_host() {
        // Bind then drop to get a port that is very likely closed.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("free port");
        let err = keyscan(
            "127.0.0.1",
            port,
            "ssh.bitbucket.org",
            Duration::from_secs(2),
        )
        .expect_err("closed port");
        assert!(err.to_string().contains("ssh.bitbucket.org"), "{err}");
    }
}

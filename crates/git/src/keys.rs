//! Public keys allowed to SSH into a job, as `authorized_keys` lines: read from the files a
//! user names (`--ssh-key`), checked once where they enter (so a typo fails at the command,
//! not at login), and matched at login by the gateway.

use russh::keys::PublicKey;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum KeysError {
    #[error("{path}: cannot read it: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    // The line itself is never shown: a private key pasted by mistake must not be echoed.
    #[error("{path}:{line}: not an OpenSSH public key (`ssh-ed25519 AAAA… comment`)")]
    NotAKey { path: String, line: usize },
    #[error("{path} holds a private key\n  help: give its public half ({path}.pub); only public keys are sent to the agent")]
    PrivateKey { path: String },
    #[error("{path}: no public key in it")]
    Empty { path: String },
    #[error("no public key to let in\n  help: pass --ssh-key FILE (e.g. ~/.ssh/id_ed25519.pub), or make one with ssh-keygen")]
    NoneFound,
    #[error("{count} public keys; at most {max} may be let into one job")]
    TooMany { count: usize, max: usize },
}

/// Keys one job may list: more is a mistake (a whole `authorized_keys` of a team), and each
/// is tried at every login.
pub const MAX_KEYS: usize = 64;

/// The public key of one `authorized_keys` line (options before the key type allowed:
/// `no-pty,from="…" ssh-ed25519 AAAA…`); `None` for anything else.
pub fn parse_line(line: &str) -> Option<PublicKey> {
    let line = line.trim();
    PublicKey::from_openssh(line).ok().or_else(|| {
        line.match_indices(' ')
            .find_map(|(i, _)| PublicKey::from_openssh(line[i + 1..].trim_start()).ok())
    })
}

/// The key lines of `text` (blank lines and comments dropped), each checked to be a public
/// key; `path` names the source in errors.
pub fn parse(text: &str, path: &str) -> Result<Vec<String>, KeysError> {
    if text.contains("PRIVATE KEY-----") {
        return Err(KeysError::PrivateKey { path: path.into() });
    }
    let mut keys = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if parse_line(line).is_none() {
            return Err(KeysError::NotAKey {
                path: path.into(),
                line: i + 1,
            });
        }
        keys.push(line.to_owned());
    }
    if keys.is_empty() {
        return Err(KeysError::Empty { path: path.into() });
    }
    Ok(keys)
}

/// The keys of `files` in order, or of the caller's `~/.ssh/*.pub` when none is named.
pub fn read_files(files: &[PathBuf]) -> Result<Vec<String>, KeysError> {
    let files = if files.is_empty() {
        default_files()
    } else {
        files.to_vec()
    };
    let mut keys: Vec<String> = Vec::new();
    for f in &files {
        let text = read(f)?;
        for k in parse(&text, &f.display().to_string())? {
            if !keys.contains(&k) {
                keys.push(k);
            }
        }
    }
    if keys.is_empty() {
        return Err(KeysError::NoneFound);
    }
    if keys.len() > MAX_KEYS {
        return Err(KeysError::TooMany {
            count: keys.len(),
            max: MAX_KEYS,
        });
    }
    Ok(keys)
}

fn read(path: &Path) -> Result<String, KeysError> {
    std::fs::read_to_string(path).map_err(|source| KeysError::Read {
        path: path.display().to_string(),
        source,
    })
}

/// `~/.ssh/*.pub`, sorted.
pub fn default_files() -> Vec<PathBuf> {
    let dir = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_default()
        .join(".ssh");
    let mut found: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "pub"))
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBCnKQfAzuVF6iHrcQjDuDR8KDeNCpCxjF4+Hc1JFOQe a@x";

    #[test]
    fn public_keys_pass_and_anything_else_names_its_line_without_showing_it() {
        let text = format!("# team\n\n{A}\nno-pty {A}\n");
        assert_eq!(parse(&text, "k").expect("keys").len(), 2);
        let e = parse(&format!("{A}\nssh-ed25519 secretgarbage\n"), "keys.pub")
            .expect_err("bad line")
            .to_string();
        assert!(e.starts_with("keys.pub:2:"), "{e}");
        assert!(!e.contains("secretgarbage"), "{e}");
        let e = parse(
            "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n-----END OPENSSH PRIVATE KEY-----\n",
            "id_ed25519",
        )
        .expect_err("private")
        .to_string();
        assert!(
            e.contains("private key") && e.contains("id_ed25519.pub"),
            "{e}"
        );
        assert!(!e.contains("b3BlbnNz"), "{e}");
        assert!(matches!(
            parse("# only\n", "k"),
            Err(KeysError::Empty { .. })
        ));
    }
}

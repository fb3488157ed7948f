//! The `~/.ssh` a job container gets, so that `git` run by the job's own steps authenticates
//! and checks host keys the same way the agent's checkout did.

use super::url::BUILTIN_ALIASES;
use super::{KeyRole, KnownHosts, SshKey};

/// Files to create under the container user's `~/.ssh` (which the caller creates 0700).
#[derive(Clone, PartialEq, Eq)]
pub struct ContainerSshFiles {
    /// (path relative to `~/.ssh`, content, mode)
    pub files: Vec<(String, Vec<u8>, u32)>,
}

/// Holds private keys, so Debug shows names and modes only.
impl std::fmt::Debug for ContainerSshFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(
                self.files
                    .iter()
                    .map(|(n, c, m)| format!("{n} ({} bytes, {m:o})", c.len())),
            )
            .finish()
    }
}

struct KeyFileNames(Vec<String>);

/// Builds `config`, `known_hosts` and one file per key.
///
/// Keys are listed user key first: OpenSSH tries IdentityFiles in order, and CircleCI marks
/// the user key "preferred" because it can open submodules and other repositories that a
/// deploy key cannot. `IdentitiesOnly` stops an agent-forwarded or default key from being
/// offered first and using up the server's authentication attempts.
pub fn container_ssh_files(
    keys: &[SshKey],
    known_hosts: &KnownHosts,
    vcs_hosts: &[String],
) -> ContainerSshFiles {
    let mut ordered: Vec<&SshKey> = keys.iter().collect();
    ordered.sort_by_key(|k| match k.role {
        KeyRole::User => 0,
        KeyRole::Deploy => 1,
        KeyRole::Additional => 2,
    });
    let mut files = Vec::new();
    let mut names = KeyFileNames(Vec::new());
    for key in ordered {
        let base = key.file_name();
        let mut name = base.to_string();
        let mut n = 2;
        while names.0.contains(&name) {
            name = format!("{base}_{n}");
            n += 1;
        }
        let mut content = key.private.expose().as_bytes().to_vec();
        if !content.ends_with(b"\n") {
            content.push(b'\n');
        }
        files.push((name.clone(), content, 0o600));
        names.0.push(name);
    }

    let mut config =
        String::from("# Written by bosun for this job: checkout keys and pinned host keys.\n");
    let mut done: Vec<String> = Vec::new();
    for host in vcs_hosts {
        let host = host.to_ascii_lowercase();
        if done.contains(&host) {
            continue;
        }
        let alias_group = BUILTIN_ALIASES
            .iter()
            .find(|(from, to)| *from == host || *to == host);
        let (patterns, hostname) = match alias_group {
            Some((from, to)) => (vec![from.to_string(), to.to_string()], Some(*to)),
            None => (vec![host.clone()], None),
        };
        done.extend(patterns.iter().cloned());
        config.push_str(&format!("\nHost {}\n", patterns.join(" ")));
        if let Some(h) = hostname {
            config.push_str(&format!("  HostName {h}\n"));
        }
        config.push_str("  User git\n");
        for name in &names.0 {
            config.push_str(&format!("  IdentityFile ~/.ssh/{name}\n"));
        }
        config.push_str(
            "  IdentitiesOnly yes\n  StrictHostKeyChecking yes\n  UserKnownHostsFile ~/.ssh/known_hosts\n",
        );
    }
    files.push(("config".to_string(), config.into_bytes(), 0o644));
    files.push((
        "known_hosts".to_string(),
        known_hosts.render().into_bytes(),
        0o644,
    ));
    ContainerSshFiles { files }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ssh::keys::tests::TEST_KEY;
    use zeroize::Zeroizing;

    fn key(role: KeyRole) -> SshKey {
        // Strip the trailing newline to check that the file gets one back.
        let text = TEST_KEY.trim_end().to_string();
        let mut k = SshKey::from_text(Zeroizing::new(text), role).expect("valid");
        k.private = Zeroizing::new(k.private.expose().trim_end().to_string()).into();
        k
    }

    #[test]
    fn renders_config_keys_and_known_hosts() {
        let keys = [key(KeyRole::Deploy), key(KeyRole::User)];
        let out = container_ssh_files(
            &keys,
            &KnownHosts::pinned(),
            &[
                "bitbucket.org".into(),
                "ssh.bitbucket.org".into(),
                "git.corp.example".into(),
            ],
        );
        let names: Vec<(&str, u32)> = out.files.iter().map(|(n, _, m)| (n.as_str(), *m)).collect();
        assert_eq!(
            names,
            vec![
                ("id_bosun_user", 0o600),
                ("id_bosun_deploy", 0o600),
                ("config", 0o644),
                ("known_hosts", 0o644)
            ]
        );
        for (_, content, mode) in &out.files {
            if *mode == 0o600 {
                assert!(content.ends_with(b"-----END OPENSSH PRIVATE KEY-----\n"));
            }
        }
        let config = String::from_utf8(out.files[2].1.clone()).expect("utf8");
        let want = "\nHost bitbucket.org ssh.bitbucket.org\n  HostName ssh.bitbucket.org\n  User git\n  IdentityFile ~/.ssh/id_bosun_user\n  IdentityFile ~/.ssh/id_bosun_deploy\n  IdentitiesOnly yes\n  StrictHostKeyChecking yes\n  UserKnownHostsFile ~/.ssh/known_hosts\n\nHost git.corp.example\n  User git\n  IdentityFile ~/.ssh/id_bosun_user\n";
        assert!(config.contains(want), "{config}");
        assert_eq!(config.matches("\nHost ").count(), 2, "{config}");
        let kh = String::from_utf8(out.files[3].1.clone()).expect("utf8");
        assert!(kh.contains("bitbucket.org,ssh.bitbucket.org ssh-ed25519 "));
        assert!(kh.contains("@revoked "));
    }

    #[test]
    fn duplicate_roles_get_distinct_files() {
        let keys = [key(KeyRole::Deploy), key(KeyRole::Deploy)];
        let out = container_ssh_files(&keys, &KnownHosts::pinned(), &["bitbucket.org".into()]);
        let names: Vec<&str> = out.files.iter().map(|(n, _, _)| n.as_str()).collect();
        assert_eq!(names[..2], ["id_bosun_deploy", "id_bosun_deploy_2"]);
    }
}

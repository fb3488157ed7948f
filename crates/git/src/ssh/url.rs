//! SSH remote URLs, the logical-host aliases (bitbucket.org → ssh.bitbucket.org) and the
//! connection mappings (logical name → host:port actually dialled).
//!
//! Two names matter for every connection: the LOGICAL host (what host keys are checked
//! under, and what the user and the container see) and the CONNECT target (where the TCP
//! connection goes; differs only in tests and behind proxies/mirrors).

use super::SshError;
pub use bosun_protocol::clone_url::{parse_ssh_url, SshUrl};

/// SSH Git host aliases built into bosun: Atlassian moved Git over SSH from bitbucket.org to
/// ssh.bitbucket.org on 2026-11-12, while configs and `.gitmodules` in the wild keep the old name.
pub(crate) const BUILTIN_ALIASES: &[(&str, &str)] = &[("bitbucket.org", "ssh.bitbucket.org")];

/// Resolves a submodule URL that starts with `./` or `../` against the superproject's remote
/// URL the way `git submodule` does: the superproject URL is treated as a directory, each
/// `../` removes one trailing component. Absolute URLs are returned unchanged. `None` when
/// the `../` climb past the start of the path.
pub fn resolve_relative_url(base: &str, rel: &str) -> Option<String> {
    if !(rel.starts_with("./") || rel.starts_with("../")) {
        return Some(rel.to_string());
    }
    let base = base.trim_end_matches('/');
    // Split off the part `../` must never eat: scheme+authority, scp `host:`, leading `/`.
    let mut cut = if let Some(i) = base.find("://") {
        let after = &base[i + 3..];
        after.find('/').map_or(base.len(), |j| i + 3 + j)
    } else if let Some(ssh) = parse_ssh_url(base) {
        base.len() - ssh.path.len()
    } else {
        0
    };
    while base[cut..].starts_with('/') {
        cut += 1;
    }
    let prefix = &base[..cut];
    let mut path = base[cut..].to_string();
    let mut rest = rel;
    loop {
        if let Some(r) = rest.strip_prefix("./") {
            rest = r;
        } else if let Some(r) = rest.strip_prefix("../") {
            let trimmed = path.trim_end_matches('/');
            match trimmed.rfind('/') {
                Some(i) => path = trimmed[..i].to_string(),
                None if !trimmed.is_empty() => path = String::new(),
                None => return None,
            }
            rest = r;
        } else {
            break;
        }
    }
    let joined = if path.is_empty() {
        rest.to_string()
    } else {
        format!("{path}/{rest}")
    };
    Some(format!("{prefix}{joined}"))
}

/// Host aliases and connection mappings for SSH Git hosts.
#[derive(Debug, Clone)]
pub struct VcsHosts {
    aliases: Vec<(String, String)>,
    mappings: Vec<(String, String, u16)>,
}

impl Default for VcsHosts {
    fn default() -> Self {
        VcsHosts::new()
    }
}

impl VcsHosts {
    pub fn new() -> VcsHosts {
        VcsHosts {
            aliases: BUILTIN_ALIASES
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect(),
            mappings: Vec::new(),
        }
    }

    /// `NAME=HOST[:PORT]`: connect to HOST:PORT whenever NAME is the logical host, but keep
    /// checking host keys under NAME. A NAME that is an alias (bitbucket.org) maps its target
    /// (ssh.bitbucket.org), since SSH URLs are rewritten before they are connected.
    pub fn add_mapping(&mut self, spec: &str) -> Result<(), SshError> {
        let bad = |message: &str| SshError::Mapping {
            spec: spec.to_string(),
            message: message.to_string(),
        };
        let (name, target) = spec.split_once('=').ok_or_else(|| bad("no '='"))?;
        let name = name.trim().to_ascii_lowercase();
        let target = target.trim();
        if name.is_empty() || name.contains([':', '/', '@', ' ']) {
            return Err(bad("NAME must be a bare host name"));
        }
        let (host, port) = if let Some(inner) = target.strip_prefix('[') {
            let (h, after) = inner.split_once(']').ok_or_else(|| bad("unclosed '['"))?;
            match after.strip_prefix(':') {
                Some(p) => (h, p),
                None if after.is_empty() => (h, "22"),
                None => return Err(bad("junk after ']'")),
            }
        } else {
            match target.rsplit_once(':') {
                Some((h, p)) if !h.contains(':') => (h, p),
                Some(_) => return Err(bad("write IPv6 addresses as [ADDR]:PORT")),
                None => (target, "22"),
            }
        };
        if host.is_empty() {
            return Err(bad("HOST is empty"));
        }
        let port: u16 = port
            .parse()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| bad("PORT must be a number from 1 to 65535"))?;
        let name = self.logical_host(&name);
        self.mappings.retain(|(n, _, _)| *n != name);
        self.mappings.push((name, host.to_string(), port));
        Ok(())
    }

    /// The host name SSH Git traffic for `host` really goes to (alias applied).
    pub fn logical_host(&self, host: &str) -> String {
        let lower = host.to_ascii_lowercase();
        self.aliases
            .iter()
            .find(|(from, _)| *from == lower)
            .map(|(_, to)| to.clone())
            .unwrap_or(lower)
    }

    /// Rewrites SSH URLs whose host is an alias; keeps the URL's form. Other URLs unchanged.
    pub fn logical_ssh_url(&self, url: &str) -> String {
        match parse_ssh_url(url) {
            Some(mut u) => {
                let logical = self.logical_host(&u.host);
                if logical == u.host.to_ascii_lowercase() {
                    return url.to_string();
                }
                u.host = logical;
                u.to_url_string()
            }
            None => url.to_string(),
        }
    }

    /// Where to dial for a logical host; `(host, 22)` when unmapped.
    pub fn connect_target(&self, host: &str) -> (String, u16) {
        self.mapping(host)
            .unwrap_or_else(|| (self.logical_host(host), 22))
    }

    /// The mapping for a logical host, if one was configured.
    pub fn mapping(&self, host: &str) -> Option<(String, u16)> {
        let name = self.logical_host(host);
        self.mappings
            .iter()
            .find(|(n, _, _)| *n == name)
            .map(|(_, h, p)| (h.clone(), *p))
    }

    /// Logical names that are aliases of, or equal to, `host` (for ssh config `Host` lines).
    pub fn names_for(&self, host: &str) -> Vec<String> {
        let logical = self.logical_host(host);
        let mut names: Vec<String> = self
            .aliases
            .iter()
            .filter(|(_, to)| *to == logical)
            .map(|(from, _)| from.clone())
            .collect();
        names.push(logical);
        names
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rewrites_bitbucket_to_ssh_host_keeping_form() {
        let h = VcsHosts::new();
        assert_eq!(
            h.logical_ssh_url("git@bitbucket.org:acme/widget.git"),
            "git@ssh.bitbucket.org:acme/widget.git"
        );
        assert_eq!(
            h.logical_ssh_url("ssh://git@bitbucket.org/acme/widget.git"),
            "ssh://git@ssh.bitbucket.org/acme/widget.git"
        );
        assert_eq!(
            h.logical_ssh_url("git@ssh.bitbucket.org:acme/widget.git"),
            "git@ssh.bitbucket.org:acme/widget.git"
        );
        for same in [
            "git@github.com:a/b.git",
            "https://bitbucket.org/acme/widget.git",
            "/srv/x.git",
        ] {
            assert_eq!(h.logical_ssh_url(same), same);
        }
    }

    #[test]
    fn mappings() {
        let mut h = VcsHosts::new();
        assert_eq!(
            h.connect_target("ssh.bitbucket.org"),
            ("ssh.bitbucket.org".into(), 22)
        );
        assert_eq!(
            h.connect_target("bitbucket.org"),
            ("ssh.bitbucket.org".into(), 22)
        );
        h.add_mapping("ssh.bitbucket.org=127.0.0.1:2222")
            .expect("ok");
        h.add_mapping("bitbucket.example.com=10.0.0.5:7999")
            .expect("ok");
        h.add_mapping("v6.example.com=[::1]:2200").expect("ok");
        h.add_mapping("noport.example.com=10.1.1.1").expect("ok");
        assert_eq!(
            h.connect_target("ssh.bitbucket.org"),
            ("127.0.0.1".into(), 2222)
        );
        assert_eq!(
            h.connect_target("bitbucket.org"),
            ("127.0.0.1".into(), 2222)
        );
        assert_eq!(
            h.connect_target("bitbucket.example.com"),
            ("10.0.0.5".into(), 7999)
        );
        assert_eq!(h.connect_target("v6.example.com"), ("::1".into(), 2200));
        assert_eq!(
            h.connect_target("noport.example.com"),
            ("10.1.1.1".into(), 22)
        );
        // An alias name maps its target.
        let mut h2 = VcsHosts::new();
        h2.add_mapping("bitbucket.org=127.0.0.1:1").expect("ok");
        assert_eq!(
            h2.mapping("ssh.bitbucket.org"),
            Some(("127.0.0.1".into(), 1))
        );
        for bad in [
            "nohost",
            "=1.2.3.4:1",
            "a=",
            "a=h:0",
            "a=h:99999",
            "a=::1:22",
            "a:1=h",
        ] {
            let err = h.add_mapping(bad).expect_err(bad);
            assert!(err.to_string().contains("NAME=HOST[:PORT]"), "{err}");
        }
    }

    #[test]
    fn relative_submodule_urls() {
        let cases = [
            (
                "git@bitbucket.org:acme/widget.git",
                "../lib.git",
                "git@bitbucket.org:acme/lib.git",
            ),
            (
                "git@bitbucket.org:acme/widget.git",
                "./lib.git",
                "git@bitbucket.org:acme/widget.git/lib.git",
            ),
            (
                "git@bitbucket.org:acme/widget.git",
                "../../other/lib.git",
                "git@bitbucket.org:other/lib.git",
            ),
            (
                "git@bitbucket.org:acme/widget.git/",
                "../lib.git",
                "git@bitbucket.org:acme/lib.git",
            ),
            (
                "ssh://git@bitbucket.org/acme/widget.git",
                "../lib.git",
                "ssh://git@bitbucket.org/acme/lib.git",
            ),
            (
                "ssh://git@h:2222/acme/widget",
                "../../x/lib",
                "ssh://git@h:2222/x/lib",
            ),
            (
                "/srv/repos/acme/widget.git",
                "../lib.git",
                "/srv/repos/acme/lib.git",
            ),
            (
                "file:///srv/acme/widget.git",
                "../lib.git",
                "file:///srv/acme/lib.git",
            ),
            (
                "git@bitbucket.org:acme/widget.git",
                "git@bitbucket.org:acme/lib2.git",
                "git@bitbucket.org:acme/lib2.git",
            ),
        ];
        for (base, rel, want) in cases {
            assert_eq!(
                resolve_relative_url(base, rel).as_deref(),
                Some(want),
                "{base} + {rel}"
            );
        }
        assert_eq!(resolve_relative_url("git@h:w.git", "../../x.git"), None);
    }
}

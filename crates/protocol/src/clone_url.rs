//! Clone URLs as both sides read them: the SSH forms Git accepts (`ssh://`, scp-like) and the
//! owner and repository names in a URL's path. The ids both sides derive ([`crate::identity`])
//! are made from these, so they live here rather than with the agent's SSH code.

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshUrl {
    pub user: Option<String>,
    pub host: String,
    pub port: Option<u16>,
    /// As written: `acme/widget.git` for scp form, `/acme/widget.git` for `ssh://`.
    pub path: String,
    /// `user@host:path` rather than `ssh://`; kept so a rewrite preserves the user's form.
    pub scp_form: bool,
}

impl SshUrl {
    pub fn to_url_string(&self) -> String {
        let user = self
            .user
            .as_deref()
            .map(|u| format!("{u}@"))
            .unwrap_or_default();
        let host = bracket_ipv6(&self.host);
        if self.scp_form && self.port.is_none() {
            format!("{user}{host}:{}", self.path)
        } else {
            let port = self.port.map(|p| format!(":{p}")).unwrap_or_default();
            let slash = if self.path.starts_with('/') { "" } else { "/" };
            format!("ssh://{user}{host}{port}{slash}{}", self.path)
        }
    }

    /// The path as an `ssh://` URL needs it. An scp path is relative to the login's home;
    /// Bitbucket (and most Git hosts) treat both the same, so a leading `/` is added.
    pub fn absolute_path(&self) -> String {
        if self.path.starts_with('/') {
            self.path.clone()
        } else {
            format!("/{}", self.path)
        }
    }
}

fn bracket_ipv6(host: &str) -> String {
    if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_string()
    }
}

/// Parses `ssh://[user@]host[:port]/path` (also `git+ssh://`, `ssh+git://`) and scp-like
/// `[user@]host:path`. Anything else (https, file://, local paths) is `None`.
pub fn parse_ssh_url(url: &str) -> Option<SshUrl> {
    let url = url.trim();
    for scheme in ["ssh://", "git+ssh://", "ssh+git://"] {
        if let Some(rest) = url.strip_prefix(scheme) {
            let (authority, path) = match rest.find('/') {
                Some(i) => (&rest[..i], &rest[i..]),
                None => return None,
            };
            let (user, hostport) = split_user(authority);
            let (host, port) = if let Some(inner) = hostport.strip_prefix('[') {
                let close = inner.find(']')?;
                let host = &inner[..close];
                let after = &inner[close + 1..];
                let port = match after.strip_prefix(':') {
                    Some(p) => Some(p.parse().ok()?),
                    None if after.is_empty() => None,
                    None => return None,
                };
                (host, port)
            } else {
                match hostport.rsplit_once(':') {
                    Some((h, p)) => (h, Some(p.parse().ok()?)),
                    None => (hostport, None),
                }
            };
            if host.is_empty() || path.len() <= 1 {
                return None;
            }
            return Some(SshUrl {
                user,
                host: host.to_string(),
                port,
                path: path.to_string(),
                scp_form: false,
            });
        }
    }
    if url.contains("://") {
        return None;
    }
    // Git's rule: scp-like when a ':' comes before any '/'.
    let colon = url.find(':')?;
    if url[..colon].contains('/') {
        return None;
    }
    let (user, host) = split_user(&url[..colon]);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let path = &url[colon + 1..];
    // A one-letter "host" is a Windows drive (C:\...), not an SSH host.
    if host.is_empty() || path.is_empty() || (host.len() == 1 && user.is_none()) {
        return None;
    }
    Some(SshUrl {
        user,
        host: host.to_string(),
        port: None,
        path: path.to_string(),
        scp_form: true,
    })
}

fn split_user(authority: &str) -> (Option<String>, &str) {
    match authority.rsplit_once('@') {
        Some((u, h)) => (Some(u.to_string()), h),
        None => (None, authority),
    }
}

/// `acme/widget` out of `git@host:acme/widget.git`, `ssh://git@host/acme/widget.git` or a path.
pub fn project_names(url: &str) -> Option<(String, String)> {
    let path = match parse_ssh_url(url) {
        Some(u) => u.path,
        None => url.to_owned(),
    };
    let path = path.trim_end_matches('/').trim_end_matches(".git");
    let mut parts = path.rsplit('/').filter(|p| !p.is_empty());
    let repo = parts.next()?.to_owned();
    let owner = parts.next().unwrap_or("").to_owned();
    Some((owner, repo))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_scp_and_ssh_forms() {
        let u = parse_ssh_url("git@bitbucket.org:acme/widget.git").expect("scp");
        assert_eq!(u.user.as_deref(), Some("git"));
        assert_eq!(u.host, "bitbucket.org");
        assert_eq!(u.port, None);
        assert_eq!(u.path, "acme/widget.git");
        assert!(u.scp_form);

        let u = parse_ssh_url("ssh://git@ssh.bitbucket.org:2222/acme/widget.git").expect("ssh");
        assert_eq!(u.host, "ssh.bitbucket.org");
        assert_eq!(u.port, Some(2222));
        assert_eq!(u.path, "/acme/widget.git");
        assert!(!u.scp_form);

        let u = parse_ssh_url("ssh://git@[::1]:22/x.git").expect("v6");
        assert_eq!((u.host.as_str(), u.port), ("::1", Some(22)));
        assert_eq!(u.to_url_string(), "ssh://git@[::1]:22/x.git");

        let u = parse_ssh_url("git+ssh://bitbucket.org/acme/w.git").expect("git+ssh");
        assert_eq!(u.user, None);

        for not_ssh in [
            "https://bitbucket.org/acme/w.git",
            "file:///srv/repo.git",
            "/srv/repo.git",
            "./repo",
            "C:\\repos\\x",
            "ssh://host",
            "ssh://host:notaport/x",
            "repo/with:colon",
        ] {
            assert_eq!(parse_ssh_url(not_ssh), None, "{not_ssh}");
        }
    }

    #[test]
    fn project_names_are_the_last_two_path_parts() {
        assert_eq!(
            project_names("/srv/repos/acme/widget.git"),
            Some(("acme".into(), "widget".into()))
        );
        assert_eq!(
            project_names("git@bitbucket.org:acme/widget.git"),
            Some(("acme".into(), "widget".into()))
        );
        assert_eq!(project_names("widget"), Some(("".into(), "widget".into())));
    }
}

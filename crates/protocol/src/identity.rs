//! Who and what a job is beyond its config: the ids, names and links CircleCI puts in the
//! `CIRCLE_*` variables. The coordinator (through the agent) gives what it knows; ids nobody
//! gave are derived, stable for what they name (a project keeps its `CIRCLE_PROJECT_ID`), in
//! CircleCI's format (a lower-case UUID).

use sha2::{Digest, Sha256};

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JobIdentity {
    /// The job's page (`CIRCLE_BUILD_URL`): on the coordinator; none for `bosun execute`.
    pub build_url: Option<String>,
    pub pipeline_id: Option<String>,
    pub workflow_id: Option<String>,
    /// The user who started the pipeline (`CIRCLE_USERNAME`).
    pub username: Option<String>,
    /// The largest earlier job number of the branch (`CIRCLE_PREVIOUS_BUILD_NUM`).
    pub previous_build_num: Option<u64>,
    pub project_id: Option<String>,
    pub organization_id: Option<String>,
}

/// `CIRCLE_PROJECT_ID` of a project nobody gave an id: derived from its clone URL. The
/// coordinator's OIDC tokens claim the same value.
pub fn project_id(clone_url: &str) -> String {
    uuid_from(&format!("project/{clone_url}"))
}

/// `CIRCLE_ORGANIZATION_ID` derived from the clone URL's owner (workspace).
pub fn organization_id(clone_url: &str) -> String {
    let owner = crate::clone_url::project_names(clone_url)
        .map(|(owner, _)| owner)
        .unwrap_or_default();
    uuid_from(&format!("organization/{owner}"))
}

/// CircleCI's `vcs-origin` of a clone URL: host and repository path, without scheme, user,
/// port or `.git` (`bitbucket.org/acme/widget`).
pub fn vcs_origin(clone_url: &str) -> String {
    match crate::clone_url::parse_ssh_url(clone_url) {
        Some(u) => format!(
            "{}/{}",
            u.host,
            u.path.trim_matches('/').trim_end_matches(".git")
        ),
        None => {
            let rest = clone_url
                .split_once("://")
                .map_or(clone_url, |(_, r)| r)
                .trim_end_matches('/')
                .trim_end_matches(".git");
            // https://user@host/path: drop the user.
            rest.split_once('@')
                .filter(|(u, _)| !u.contains('/'))
                .map_or(rest, |(_, r)| r)
                .to_owned()
        }
    }
}

/// A UUID (version 4 layout, variant 1) made from `seed` by SHA-256: the same seed gives the
/// same id, different seeds different ids.
pub fn uuid_from(seed: &str) -> String {
    let d = Sha256::digest(seed.as_bytes());
    let mut b = [0u8; 16];
    b.copy_from_slice(&d[..16]);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vcs_origin_is_host_and_path() {
        for (url, want) in [
            (
                "git@bitbucket.org:acme/widget.git",
                "bitbucket.org/acme/widget",
            ),
            (
                "ssh://git@bitbucket.org:2222/acme/widget.git",
                "bitbucket.org/acme/widget",
            ),
            ("https://me@github.com/o/r.git", "github.com/o/r"),
            ("https://github.com/o/r", "github.com/o/r"),
        ] {
            assert_eq!(vcs_origin(url), want, "{url}");
        }
        assert_eq!(
            organization_id("git@bitbucket.org:acme/widget.git"),
            organization_id("git@bitbucket.org:acme/other.git")
        );
    }

    #[test]
    fn derived_ids_are_stable_uuids() {
        let a = uuid_from("project/x");
        assert_eq!(a, uuid_from("project/x"));
        assert_ne!(a, uuid_from("project/y"));
        let re = regex::Regex::new(
            "^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$",
        )
        .expect("regex");
        assert!(re.is_match(&a), "{a}");
    }
}

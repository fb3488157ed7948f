//! Bitbucket Data Center (and Server) webhook payloads, the fields Bosun reads (Atlassian's
//! "Event payload" page of Bitbucket Data Center: `repo:refs_changed`, `pr:opened`,
//! `pr:from_ref_updated`, `pr:merged`, `pr:declined`, `pr:deleted`, and the test connection's
//! `diagnostics:ping`), turned into the same [`Intake`] as Cloud's so one set of rules decides.
//!
//! Data Center names a repository by a number unique on its server only (`repository.id`),
//! with its project's key and its slug; there is no UUID. Bosun keys such a project by the
//! server and that number ([`key`]): a renamed repository or project keeps its id, so it
//! keeps its project and settings as a Cloud one does by its UUID.
//!
//! Hostile input, as for Cloud: every field Bitbucket may leave out is optional, and nothing
//! here is trusted before the signature is checked.

use super::payload::{Intake, PullRequestAction, PullRequestIntake, PushIntake, RefChange};
use serde::Deserialize;

/// The events Bosun acts on (others are answered and ignored).
pub const PUSH: &str = "repo:refs_changed";
pub const PING: &str = "diagnostics:ping";

/// The prefix of a Data Center project's key in the store (`projects.uuid`).
pub use crate::model::DATA_CENTER_KEY_PREFIX as KEY_PREFIX;

/// The key of repository `id` on Bitbucket Data Center server `server` (`host` or
/// `host:port`, as its base URL names it).
pub fn key(server: &str, id: u64) -> String {
    format!("{KEY_PREFIX}{}/{id}", server.to_ascii_lowercase())
}

/// The server of a Data Center key, for links Bosun makes itself.
pub fn server_of_key(key: &str) -> Option<&str> {
    key.strip_prefix(KEY_PREFIX)?
        .rsplit_once('/')
        .map(|(s, _)| s)
}

/// Whether an event key is one of Data Center's (its names differ from Cloud's).
pub fn is_data_center_event(event: &str) -> bool {
    event == PUSH || event == PING || event.starts_with("pr:")
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct Repository {
    #[serde(default)]
    pub id: Option<u64>,
    #[serde(default)]
    pub slug: String,
    #[serde(default)]
    pub project: Project,
    #[serde(default)]
    pub links: Links,
}

#[derive(Debug, Clone, Deserialize, Default)]
pub struct Project {
    #[serde(default)]
    pub key: String,
}

/// `links` of a repository or pull request: lists of `{href}` (`self`, `clone`).
#[derive(Debug, Clone, Deserialize, Default)]
pub struct Links {
    #[serde(default, rename = "self")]
    pub self_: Vec<Option<Href>>,
    #[serde(default)]
    pub clone: Vec<Option<Href>>,
}

#[derive(Debug, Clone, Deserialize, Default)]
pub struct Href {
    #[serde(default)]
    pub href: String,
}

impl Repository {
    /// `PROJECT/slug`, as Bosun names a Data Center project.
    pub fn full_name(&self) -> String {
        if self.project.key.is_empty() || self.slug.is_empty() {
            return String::new();
        }
        format!("{}/{}", self.project.key, self.slug)
    }

    /// The server's host (and port) as the payload's web links name it, if they do: older
    /// servers send no links, so this only narrows the projects to check.
    pub fn server(&self) -> Option<String> {
        self.links
            .self_
            .iter()
            .chain(&self.links.clone)
            .flatten()
            .filter_map(|h| web_host(&h.href))
            .next()
    }
}

/// `host[:port]` of an `http(s)://` address.
fn web_host(href: &str) -> Option<String> {
    let rest = href
        .strip_prefix("https://")
        .or_else(|| href.strip_prefix("http://"))?;
    let host = rest.split(['/', '?', '#']).next()?;
    let host = host.rsplit_once('@').map_or(host, |(_, h)| h);
    (!host.is_empty()).then(|| host.to_ascii_lowercase())
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct User {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub display_name: String,
    /// The user's number on its server (a renamed user keeps it).
    #[serde(default)]
    pub id: Option<u64>,
}

impl User {
    fn login(&self) -> Option<String> {
        [&self.name, &self.display_name]
            .into_iter()
            .find(|s| !s.is_empty())
            .cloned()
    }

    /// The user as Bosun's people are kept (`model::people::data_center_person`), on the
    /// server of the project the delivery was verified for.
    fn account(&self, server: Option<&str>) -> Option<String> {
        Some(crate::model::people::data_center_person(server?, self.id?))
    }
}

/// Just the repository, to find the project before the signature is checked: at the top
/// for pushes, in the pull request's target for pull request events.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct Envelope {
    #[serde(default)]
    pub repository: Option<Repository>,
    #[serde(default)]
    pub pull_request: Option<EnvelopePullRequest>,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct EnvelopePullRequest {
    #[serde(default)]
    pub to_ref: Option<EnvelopeRef>,
}

#[derive(Debug, Clone, Deserialize, Default)]
pub struct EnvelopeRef {
    #[serde(default)]
    pub repository: Option<Repository>,
}

impl Envelope {
    pub fn repository(self) -> Option<Repository> {
        self.repository
            .or_else(|| self.pull_request?.to_ref?.repository)
    }
}

/// `repo:refs_changed`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RefsChanged {
    #[serde(default)]
    pub actor: User,
    pub repository: Repository,
    #[serde(default)]
    pub changes: Vec<Change>,
    /// The pushed commits (newer servers; at most a few, newest first).
    #[serde(default)]
    pub commits: Vec<Commit>,
    /// The head commit of the push (newer servers).
    #[serde(default)]
    pub to_commit: Option<Commit>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Change {
    pub r#ref: Ref,
    #[serde(default)]
    pub to_hash: String,
    /// `ADD`, `UPDATE` or `DELETE`.
    #[serde(default, rename = "type")]
    pub kind: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Ref {
    /// `refs/heads/main`.
    #[serde(default)]
    pub id: String,
    /// `main`.
    #[serde(default)]
    pub display_id: String,
    /// `BRANCH` or `TAG`.
    #[serde(default, rename = "type")]
    pub kind: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Commit {
    #[serde(default)]
    pub id: String,
    #[serde(default)]
    pub message: String,
}

/// `pr:*`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PullRequestEvent {
    #[serde(default)]
    pub actor: User,
    pub pull_request: PullRequest,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PullRequest {
    pub id: u64,
    #[serde(default)]
    pub title: String,
    pub from_ref: PullRequestRef,
    pub to_ref: PullRequestRef,
    #[serde(default)]
    pub links: Links,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PullRequestRef {
    /// `refs/heads/feature`.
    #[serde(default)]
    pub id: String,
    #[serde(default)]
    pub display_id: String,
    /// The full hash of the ref's head.
    #[serde(default)]
    pub latest_commit: String,
    #[serde(default)]
    pub repository: Repository,
}

impl PullRequestRef {
    fn branch(&self) -> String {
        match self.id.strip_prefix("refs/heads/") {
            Some(b) => b.to_owned(),
            None => self.display_id.clone(),
        }
    }
}

/// Why a Data Center delivery could not be read.
#[derive(Debug, thiserror::Error)]
pub enum DataCenterPayloadError {
    #[error("{event} payload: {source}")]
    Json {
        event: String,
        #[source]
        source: serde_json::Error,
    },
}

/// A delivery of `event` (one Bosun builds) as the rules read it; `Ok(None)`: an event Bosun
/// does not act on. `server` is the project's, for the pull request's link when the payload
/// has none.
pub fn intake(
    event: &str,
    body: &[u8],
    server: Option<&str>,
) -> Result<Option<Intake>, DataCenterPayloadError> {
    let json = |source| DataCenterPayloadError::Json {
        event: event.to_owned(),
        source,
    };
    if event == PUSH {
        let p: RefsChanged = serde_json::from_slice(body).map_err(json)?;
        return Ok(Some(Intake::Push(push(p, server))));
    }
    let action = match event {
        "pr:opened" => PullRequestAction::Opened,
        "pr:from_ref_updated" => PullRequestAction::Updated,
        "pr:merged" => PullRequestAction::Merged,
        // A deleted pull request is closed as a declined one is.
        "pr:declined" | "pr:deleted" => PullRequestAction::Declined,
        _ => return Ok(None),
    };
    let p: PullRequestEvent = serde_json::from_slice(body).map_err(json)?;
    Ok(Some(Intake::PullRequest(pull_request(p, action, server))))
}

fn push(p: RefsChanged, server: Option<&str>) -> PushIntake {
    // The head commit's message, where the server sends it (`toCommit`, `commits`); without
    // it `[ci skip]` cannot be seen in the payload.
    let message = |hash: &str| {
        p.to_commit
            .iter()
            .chain(&p.commits)
            .find(|c| !hash.is_empty() && c.id == hash)
            .map(|c| c.message.clone())
    };
    let changes = p
        .changes
        .iter()
        .map(|c| {
            let deleted = c.kind.eq_ignore_ascii_case("DELETE")
                || c.to_hash.is_empty()
                || c.to_hash.bytes().all(|b| b == b'0');
            if deleted {
                return None;
            }
            let tag =
                c.r#ref.kind.eq_ignore_ascii_case("TAG") || c.r#ref.id.starts_with("refs/tags/");
            let name = c
                .r#ref
                .id
                .strip_prefix(if tag { "refs/tags/" } else { "refs/heads/" })
                .map(str::to_owned)
                .unwrap_or_else(|| c.r#ref.display_id.clone());
            Some(RefChange {
                tag,
                name,
                hash: c.to_hash.clone(),
                message: message(&c.to_hash),
            })
        })
        .collect();
    PushIntake {
        actor: p.actor.login(),
        account: p.actor.account(server),
        changes,
    }
}

fn pull_request(
    p: PullRequestEvent,
    action: PullRequestAction,
    server: Option<&str>,
) -> PullRequestIntake {
    let pr = p.pull_request;
    let (from, to) = (&pr.from_ref.repository, &pr.to_ref.repository);
    // From another repository than the one it merges into: a fork.
    let fork = match (from.id, to.id) {
        (Some(a), Some(b)) => a != b,
        _ => !from.full_name().is_empty() && from.full_name() != to.full_name(),
    };
    let url = pr
        .links
        .self_
        .iter()
        .flatten()
        .map(|h| h.href.clone())
        .find(|h| h.starts_with("https://") || h.starts_with("http://"))
        .or_else(|| {
            let server = server?;
            (!to.project.key.is_empty() && !to.slug.is_empty()).then(|| {
                format!(
                    "https://{server}/projects/{}/repos/{}/pull-requests/{}",
                    to.project.key, to.slug, pr.id
                )
            })
        });
    PullRequestIntake {
        id: pr.id,
        title: pr.title.clone(),
        source_branch: pr.from_ref.branch(),
        source_hash: pr.from_ref.latest_commit.clone(),
        fork,
        url,
        action,
        actor: p.actor.login(),
        account: p.actor.account(server),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `repo:refs_changed` as a Data Center 8.x server sends it (Atlassian's "Event payload"
    /// example, with the `commits`/`toCommit` of newer servers and the links they carry).
    pub const REFS_CHANGED: &str = r#"{
      "eventKey": "repo:refs_changed",
      "date": "2017-09-19T09:45:32+1000",
      "actor": {"name": "admin", "emailAddress": "admin@example.com", "id": 1,
                "displayName": "Administrator", "active": true, "slug": "admin", "type": "NORMAL"},
      "repository": {"slug": "repository", "id": 84, "name": "repository", "scmId": "git",
                     "state": "AVAILABLE", "statusMessage": "Available", "forkable": true,
                     "project": {"key": "PROJ", "id": 84, "name": "project", "public": false, "type": "NORMAL"},
                     "public": false,
                     "links": {"clone": [{"href": "ssh://git@bitbucket.example.com:7999/proj/repository.git", "name": "ssh"},
                                         {"href": "https://bitbucket.example.com/scm/proj/repository.git", "name": "http"}],
                               "self": [{"href": "https://bitbucket.example.com/projects/PROJ/repos/repository/browse"}]}},
      "changes": [
        {"ref": {"id": "refs/heads/master", "displayId": "master", "type": "BRANCH"},
         "refId": "refs/heads/master", "fromHash": "ecddabb624f6f5ba43816f5926e580a5f680a932",
         "toHash": "178864a7d521b6f5e720b386b2c2b0ef8563e0dc", "type": "UPDATE"},
        {"ref": {"id": "refs/tags/v1.0", "displayId": "v1.0", "type": "TAG"},
         "refId": "refs/tags/v1.0", "fromHash": "0000000000000000000000000000000000000000",
         "toHash": "178864a7d521b6f5e720b386b2c2b0ef8563e0dc", "type": "ADD"},
        {"ref": {"id": "refs/heads/old", "displayId": "old", "type": "BRANCH"},
         "refId": "refs/heads/old", "fromHash": "178864a7d521b6f5e720b386b2c2b0ef8563e0dc",
         "toHash": "0000000000000000000000000000000000000000", "type": "DELETE"}
      ],
      "commits": [{"id": "178864a7d521b6f5e720b386b2c2b0ef8563e0dc", "displayId": "178864a7d52",
                   "author": {"name": "admin", "emailAddress": "admin@example.com"},
                   "authorTimestamp": 1505778332000, "message": "docs only [ci skip]",
                   "parents": [{"id": "ecddabb624f6f5ba43816f5926e580a5f680a932", "displayId": "ecddabb624f"}]}],
      "toCommit": {"id": "178864a7d521b6f5e720b386b2c2b0ef8563e0dc", "displayId": "178864a7d52",
                   "message": "docs only [ci skip]",
                   "parents": [{"id": "ecddabb624f6f5ba43816f5926e580a5f680a932", "displayId": "ecddabb624f"}]}
    }"#;

    #[test]
    fn a_real_shaped_refs_changed_reads_as_pushes_with_a_deleted_ref() {
        let env: Envelope = serde_json::from_str(REFS_CHANGED).expect("envelope");
        let repo = env.repository().expect("repository");
        assert_eq!(
            (repo.id, repo.full_name()),
            (Some(84), "PROJ/repository".to_owned())
        );
        assert_eq!(repo.server().as_deref(), Some("bitbucket.example.com"));
        let Some(Intake::Push(p)) = intake(PUSH, REFS_CHANGED.as_bytes(), None).expect("parses")
        else {
            panic!("not a push")
        };
        assert_eq!(p.actor.as_deref(), Some("admin"));
        // Without the project's server the user's id names nobody; with it, the person as
        // a Data Center login keeps them.
        assert_eq!(p.account, None);
        let Some(Intake::Push(p)) = intake(
            PUSH,
            REFS_CHANGED.as_bytes(),
            Some("bitbucket.example.com:7990"),
        )
        .expect("parses") else {
            panic!("not a push")
        };
        assert_eq!(
            p.account.as_deref(),
            Some("dc:bitbucket.example.com:7990/1")
        );
        assert_eq!(p.changes.len(), 3);
        let master = p.changes[0].as_ref().expect("master");
        assert_eq!(
            (master.tag, master.name.as_str(), master.hash.as_str()),
            (false, "master", "178864a7d521b6f5e720b386b2c2b0ef8563e0dc")
        );
        assert_eq!(master.message.as_deref(), Some("docs only [ci skip]"));
        let tag = p.changes[1].as_ref().expect("tag");
        assert_eq!((tag.tag, tag.name.as_str()), (true, "v1.0"));
        assert!(p.changes[2].is_none(), "a deleted branch");
    }

    #[test]
    fn pull_request_events_read_with_their_fork_and_link() {
        let repo = |id: u64, key: &str| {
            serde_json::json!({"slug": "repository", "id": id, "name": "repository", "scmId": "git",
                "state": "AVAILABLE", "forkable": true, "public": false,
                "project": {"key": key, "id": 1, "name": "p", "public": false, "type": "NORMAL"}})
        };
        let body = |from: serde_json::Value, links: serde_json::Value| {
            serde_json::json!({
                "eventKey": "pr:opened", "date": "2017-09-19T09:58:11+1000",
                "actor": {"name": "admin", "displayName": "Administrator", "id": 1, "type": "NORMAL"},
                "pullRequest": {
                    "id": 1, "version": 0, "title": "a new file added", "state": "OPEN",
                    "open": true, "closed": false, "createdDate": 1505779091796u64,
                    "fromRef": {"id": "refs/heads/a-branch", "displayId": "a-branch",
                                "latestCommit": "ef8755f06ee4b28c96a847a95cb8ec8ed6ddd1ca",
                                "repository": from},
                    "toRef": {"id": "refs/heads/master", "displayId": "master",
                              "latestCommit": "178864a7d521b6f5e720b386b2c2b0ef8563e0dc",
                              "repository": repo(84, "PROJ")},
                    "locked": false,
                    "author": {"user": {"name": "admin"}, "role": "AUTHOR", "approved": false, "status": "UNAPPROVED"},
                    "reviewers": [], "participants": [],
                    "links": links
                }
            })
            .to_string()
        };
        // The example's `"self": [null]`: the link is made from the server.
        let own = body(repo(84, "PROJ"), serde_json::json!({"self": [null]}));
        let env: Envelope = serde_json::from_str(&own).expect("envelope");
        assert_eq!(env.repository().and_then(|r| r.id), Some(84));
        let Some(Intake::PullRequest(pr)) =
            intake("pr:opened", own.as_bytes(), Some("bitbucket.example.com")).expect("parses")
        else {
            panic!("not a pull request")
        };
        assert_eq!(
            (pr.id, pr.source_branch.as_str(), pr.fork, pr.action),
            (1, "a-branch", false, PullRequestAction::Opened)
        );
        assert_eq!(pr.source_hash, "ef8755f06ee4b28c96a847a95cb8ec8ed6ddd1ca");
        assert_eq!(
            pr.url.as_deref(),
            Some("https://bitbucket.example.com/projects/PROJ/repos/repository/pull-requests/1")
        );
        let fork = body(
            repo(99, "~EVE"),
            serde_json::json!({"self": [{"href": "https://bb.example.com/projects/PROJ/repos/repository/pull-requests/1"}]}),
        );
        let Some(Intake::PullRequest(pr)) =
            intake("pr:from_ref_updated", fork.as_bytes(), None).expect("parses")
        else {
            panic!("not a pull request")
        };
        assert!(pr.fork);
        assert_eq!(pr.action, PullRequestAction::Updated);
        assert_eq!(
            pr.url.as_deref(),
            Some("https://bb.example.com/projects/PROJ/repos/repository/pull-requests/1")
        );
        for (event, action) in [
            ("pr:merged", PullRequestAction::Merged),
            ("pr:declined", PullRequestAction::Declined),
            ("pr:deleted", PullRequestAction::Declined),
        ] {
            let Some(Intake::PullRequest(pr)) =
                intake(event, own.as_bytes(), None).expect("parses")
            else {
                panic!("{event}: not a pull request")
            };
            assert_eq!(pr.action, action, "{event}");
        }
        assert!(intake("pr:reviewer:approved", own.as_bytes(), None)
            .expect("parses")
            .is_none());
    }

    #[test]
    fn hostile_bodies_are_errors_not_panics() {
        for body in [
            &b""[..],
            b"null",
            b"[]",
            b"{\"changes\": 5}",
            b"{\"repository\": {\"id\": -1}}",
            b"{\"pullRequest\": {\"id\": \"x\"}}",
            b"\xff\xfe",
        ] {
            assert!(intake(PUSH, body, None).is_err(), "{body:?}");
            assert!(intake("pr:opened", body, None).is_err(), "{body:?}");
        }
        // Refs without hashes or names build nothing rather than something wrong.
        let odd = br#"{"repository": {"id": 1}, "changes": [{"ref": {}, "type": "UPDATE"}]}"#;
        let Some(Intake::Push(p)) = intake(PUSH, odd, None).expect("parses") else {
            panic!("not a push")
        };
        assert!(p.changes[0].is_none());
        assert_eq!(
            key("BitBucket.Example.com:7990", 84),
            "bitbucket-dc:bitbucket.example.com:7990/84"
        );
        assert_eq!(
            server_of_key("bitbucket-dc:bb.example.com:7990/84"),
            Some("bb.example.com:7990")
        );
        assert_eq!(
            web_host("https://u@bb.example.com:8443/x"),
            Some("bb.example.com:8443".to_owned())
        );
    }
}

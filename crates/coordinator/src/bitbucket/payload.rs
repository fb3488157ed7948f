//! Bitbucket Cloud webhook payloads, the fields Bosun reads (Atlassian's "Event payloads"
//! page; every other field is ignored), and [`Intake`], what the build rules read of a
//! delivery from Cloud or Data Center. Hostile input: every field optional where Bitbucket
//! may leave it out, and nothing here is trusted before the signature is checked.

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize, Default)]
pub struct Repository {
    #[serde(default)]
    pub uuid: String,
    /// `workspace/repo_slug`.
    #[serde(default)]
    pub full_name: String,
    #[serde(default)]
    pub mainbranch: Option<Named>,
}

#[derive(Debug, Clone, Deserialize, Default)]
pub struct Named {
    #[serde(default)]
    pub name: String,
}

#[derive(Debug, Clone, Deserialize, Default)]
pub struct Actor {
    #[serde(default)]
    pub display_name: String,
    #[serde(default)]
    pub nickname: Option<String>,
    /// The account's UUID (`{…}`): who the person is among Bosun's people.
    #[serde(default)]
    pub uuid: Option<String>,
}

impl Actor {
    pub fn login(&self) -> Option<String> {
        self.nickname
            .clone()
            .or_else(|| Some(self.display_name.clone()))
            .filter(|s| !s.is_empty())
    }

    /// The account as people are kept by it (`people.bitbucket_uuid`): a braced word only,
    /// so that no other kind of identity (a Data Center person's) can be named here.
    pub fn account(&self) -> Option<String> {
        self.uuid.clone().filter(|u| is_account_uuid(u))
    }
}

/// A braced word, as Bitbucket Cloud writes an account's UUID (`{…}`): never a Data Center
/// person's `dc:SERVER/ID`, nor a word with spaces, braces or control characters inside.
fn is_account_uuid(u: &str) -> bool {
    u.len() <= 100
        && u.strip_prefix('{')
            .and_then(|r| r.strip_suffix('}'))
            .is_some_and(|inner| {
                !inner.is_empty()
                    && !inner
                        .chars()
                        .any(|c| c.is_whitespace() || c.is_control() || c == '{' || c == '}')
            })
}

/// `repo:push`.
#[derive(Debug, Clone, Deserialize)]
pub struct PushEvent {
    pub repository: Repository,
    #[serde(default)]
    pub actor: Actor,
    pub push: Push,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Push {
    #[serde(default)]
    pub changes: Vec<Change>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Change {
    /// `null` when the ref was deleted.
    #[serde(default)]
    pub new: Option<RefState>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct RefState {
    /// `branch`, `tag` (also `named_branch`, `bookmark` from Mercurial days).
    #[serde(rename = "type")]
    pub kind: String,
    pub name: String,
    pub target: Target,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Target {
    pub hash: String,
    #[serde(default)]
    pub message: String,
}

/// `pullrequest:created|updated|fulfilled|rejected`.
#[derive(Debug, Clone, Deserialize)]
pub struct PullRequestEvent {
    pub repository: Repository,
    #[serde(default)]
    pub actor: Actor,
    pub pullrequest: PullRequest,
}

#[derive(Debug, Clone, Deserialize)]
pub struct PullRequest {
    pub id: u64,
    #[serde(default)]
    pub title: String,
    /// `OPEN`, `MERGED`, `DECLINED`, `SUPERSEDED`.
    #[serde(default)]
    pub state: String,
    pub source: Endpoint,
    pub destination: Endpoint,
    #[serde(default)]
    pub links: Links,
}

#[derive(Debug, Clone, Deserialize, Default)]
pub struct Links {
    #[serde(default)]
    pub html: Option<Href>,
}

#[derive(Debug, Clone, Deserialize, Default)]
pub struct Href {
    #[serde(default)]
    pub href: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Endpoint {
    pub branch: Named,
    /// Bitbucket sends a 12-character abbreviation here.
    pub commit: Commit,
    #[serde(default)]
    pub repository: Repository,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Commit {
    pub hash: String,
}

impl PullRequest {
    /// From another repository than the one it merges into.
    pub fn is_fork(&self) -> bool {
        let (s, d) = (&self.source.repository, &self.destination.repository);
        if !s.uuid.is_empty() && !d.uuid.is_empty() {
            return s.uuid != d.uuid;
        }
        !s.full_name.is_empty() && s.full_name != d.full_name
    }
}

/// A delivery as the build rules read it, whichever Bitbucket sent it (Cloud's payloads here,
/// Data Center's in [`super::data_center`]).
#[derive(Debug, Clone)]
pub enum Intake {
    Push(PushIntake),
    PullRequest(PullRequestIntake),
}

#[derive(Debug, Clone)]
pub struct PushIntake {
    pub actor: Option<String>,
    /// Who pushed, as Bosun's people are kept (Cloud's `actor.uuid`; Data Center's
    /// `dc:SERVER/ID` from `actor.id`), when the payload says it.
    pub account: Option<String>,
    /// One per pushed ref; `None`: the ref was deleted.
    pub changes: Vec<Option<RefChange>>,
}

#[derive(Debug, Clone)]
pub struct RefChange {
    pub tag: bool,
    /// The branch or tag name (no `refs/…` prefix).
    pub name: String,
    pub hash: String,
    /// The head commit's message, when the payload carries it (`[ci skip]` is read there).
    pub message: Option<String>,
}

/// What happened to a pull request, in Cloud's words (`pipeline.event.action` is the same
/// for both Bitbucket flavours, so a config reads one set of values).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PullRequestAction {
    Opened,
    Updated,
    Merged,
    Declined,
}

impl PullRequestAction {
    pub fn as_str(self) -> &'static str {
        match self {
            PullRequestAction::Opened => "created",
            PullRequestAction::Updated => "updated",
            PullRequestAction::Merged => "fulfilled",
            PullRequestAction::Declined => "rejected",
        }
    }

    /// The pull request's state after it, as recorded.
    pub fn state(self) -> &'static str {
        match self {
            PullRequestAction::Merged => "MERGED",
            PullRequestAction::Declined => "DECLINED",
            _ => "OPEN",
        }
    }
}

#[derive(Debug, Clone)]
pub struct PullRequestIntake {
    pub id: u64,
    pub title: String,
    pub source_branch: String,
    /// The source's head (Cloud: a 12-character abbreviation; Data Center: the full hash).
    pub source_hash: String,
    pub fork: bool,
    /// The pull request's web page, when the payload has an `http(s)` one.
    pub url: Option<String>,
    pub action: PullRequestAction,
    pub actor: Option<String>,
    /// Who did it, as [`PushIntake::account`].
    pub account: Option<String>,
}

impl PushEvent {
    pub fn intake(self) -> PushIntake {
        PushIntake {
            actor: self.actor.login(),
            account: self.actor.account(),
            changes: self
                .push
                .changes
                .into_iter()
                .map(|c| {
                    c.new.map(|n| RefChange {
                        tag: n.kind == "tag",
                        name: n.name,
                        hash: n.target.hash,
                        message: Some(n.target.message),
                    })
                })
                .collect(),
        }
    }
}

impl PullRequestEvent {
    /// `action`: from the event key (`pullrequest:created` …).
    pub fn intake(self, action: PullRequestAction) -> PullRequestIntake {
        let pr = self.pullrequest;
        PullRequestIntake {
            id: pr.id,
            fork: pr.is_fork(),
            url: pr
                .links
                .html
                .as_ref()
                .map(|h| h.href.clone())
                .filter(|h| h.starts_with("https://") || h.starts_with("http://")),
            title: pr.title,
            source_branch: pr.source.branch.name,
            source_hash: pr.source.commit.hash,
            action,
            actor: self.actor.login(),
            account: self.actor.account(),
        }
    }
}

/// `[ci skip]` or `[skip ci]` in the first 250 characters of the commit's title or body, as
/// CircleCI reads them.
pub fn skips_ci(message: &str) -> bool {
    let (title, body) = message.split_once('\n').unwrap_or((message, ""));
    [title, body.trim_start()].iter().any(|part| {
        let head: String = part.chars().take(250).collect::<String>().to_lowercase();
        head.contains("[ci skip]") || head.contains("[skip ci]")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skip_markers_in_title_or_body_start() {
        assert!(skips_ci("fix [ci skip]"));
        assert!(skips_ci("fix\n\n[skip ci] docs only"));
        assert!(!skips_ci("fix\n\nsee [ci-skip]"));
        let late = format!("fix\n\n{}[skip ci]", "x".repeat(260));
        assert!(!skips_ci(&late));
    }

    #[test]
    fn an_actor_is_an_account_only_by_a_braced_word() {
        let actor = |uuid: Option<&str>| Actor {
            uuid: uuid.map(str::to_owned),
            ..Actor::default()
        };
        assert_eq!(
            actor(Some("{5c1c7b2e-4a8f-4f7e-9b1d-2d6c0d9e7a11}"))
                .account()
                .as_deref(),
            Some("{5c1c7b2e-4a8f-4f7e-9b1d-2d6c0d9e7a11}")
        );
        for bad in [
            None,
            Some(""),
            Some("{}"),
            Some("ann"),
            Some("dc:bb/1"),
            Some("{a} "),
        ] {
            assert_eq!(actor(bad).account(), None, "{bad:?}");
        }
    }

    #[test]
    fn a_real_shaped_push_parses() {
        let body = r#"{"actor":{"display_name":"A","nickname":"a","uuid":"{0a1b}","type":"user"},
          "repository":{"uuid":"{1}","full_name":"acme/widget","name":"widget","mainbranch":{"name":"main"}},
          "push":{"changes":[{"new":{"type":"branch","name":"main","target":{"type":"commit","hash":"abc","message":"m"}},
                             "old":null,"created":true,"closed":false,"forced":false,"truncated":false,"commits":[]},
                            {"new":null,"closed":true}]}}"#;
        let p: PushEvent = serde_json::from_str(body).expect("parses");
        assert_eq!(p.actor.account().as_deref(), Some("{0a1b}"));
        assert_eq!(p.push.changes.len(), 2);
        assert!(p.push.changes[1].new.is_none());
        assert_eq!(
            p.repository.mainbranch.map(|m| m.name).as_deref(),
            Some("main")
        );
    }
}

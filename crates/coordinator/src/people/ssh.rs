//! A person's SSH keys and their reruns with SSH (docs/ssh.md, "Who may rerun with SSH"):
//! a key pasted on their page is checked to be one OpenSSH public key; a rerun with SSH
//! lets in exactly their stored keys, and holds the project's user key only as
//! `model::ssh_policy::decide` says.

use super::Viewer;
use crate::audit::{Actor, AuditAction, Event};
use crate::error::CoordError;
use crate::model::people::Action;
use crate::model::ssh_policy::{self as policy, SshAsker, UserKey};
use crate::store::{Backend, Person, PersonKey, Resource};
use crate::AppState;

/// A pasted key at most this long (an RSA 16384 key is under 3 KiB as one line).
const MAX_KEY_TEXT: usize = 16 * 1024;

/// Why a pasted key is refused (the text itself is never repeated: a private key pasted by
/// mistake must not be echoed onto a page).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("that is a private key: paste its public half (the `.pub` file, e.g. ~/.ssh/id_ed25519.pub); nothing was kept")]
    Private,
    #[error("the key field is empty: paste one line of your `.pub` file")]
    Empty,
    #[error("not an OpenSSH public key: expected one line such as `ssh-ed25519 AAAA… you@laptop` (from ~/.ssh/id_ed25519.pub)")]
    NotAKey,
    #[error("one key at a time: the field holds {0} lines")]
    Several(usize),
    #[error("too long for a public key ({0} bytes)")]
    TooLong(usize),
}

/// One OpenSSH public key line, as stored (`type base64 comment`, options dropped), and its
/// SHA256 fingerprint.
pub fn parse_key(text: &str) -> Result<(String, String), KeyError> {
    if text.len() > MAX_KEY_TEXT {
        return Err(KeyError::TooLong(text.len()));
    }
    if text.contains("PRIVATE KEY") {
        return Err(KeyError::Private);
    }
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    let line = match lines.as_slice() {
        [] => return Err(KeyError::Empty),
        [one] => *one,
        more => return Err(KeyError::Several(more.len())),
    };
    let key = bosun_git::keys::parse_line(line).ok_or(KeyError::NotAKey)?;
    let stored = key.to_openssh().map_err(|_| KeyError::NotAKey)?;
    // The comment is shown on the page: printable text only.
    let stored: String = stored.chars().filter(|c| !c.is_control()).collect();
    Ok((stored, key.fingerprint(Default::default()).to_string()))
}

/// Why a rerun with SSH did not happen.
#[derive(Debug, thiserror::Error)]
pub enum RerunError {
    #[error("no job {0}")]
    NotFound(i64),
    #[error("{0}")]
    Refused(String),
    #[error("you have no SSH key to let in: add your public key on your page (/me) first")]
    NoKeys,
    #[error("{0}")]
    Coord(#[from] CoordError),
}

/// A rerun with SSH queued: the new job, and what it got of the user key, in words.
#[derive(Debug, Clone)]
pub struct Rerun {
    pub job: i64,
    pub user_key: UserKey,
    pub said: String,
}

/// Where a rerun with SSH was asked for, as the audit log says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// The job page's button (a session).
    JobPage,
    /// API v2's `POST /workflow/{id}/rerun` with `enable_ssh` (a personal token).
    ApiV2,
}

impl Via {
    fn as_str(self) -> &'static str {
        match self {
            Via::JobPage => "from the job page",
            Via::ApiV2 => "API v2",
        }
    }
}

/// `person` reruns job `id` with SSH: their permission read again from Bitbucket now, the
/// project's rule applied, their stored keys let in. The one door for a person's rerun with
/// SSH, whether asked from the job page or with their personal token.
pub async fn rerun_with_ssh(
    state: &AppState,
    person: &Person,
    id: i64,
    via: Via,
) -> Result<Rerun, RerunError> {
    // A sensitive action: `may` reads their permissions from Bitbucket again first.
    let may = super::tokens::may(state, person, Resource::Job(id), Action::RerunWithSsh)
        .await?
        .ok_or(RerunError::NotFound(id))?;
    let person = person.clone();
    let pid = person.id;
    let (facts, keys) = state
        .db(move |s: &dyn Backend| Ok((s.user_key_facts(id)?, s.person_ssh_keys(pid)?)))
        .await?;
    let facts = facts.ok_or(RerunError::NotFound(id))?;
    let asker = SshAsker {
        may_rerun_with_ssh: may,
        coordinator_wide: person.admin,
        account: Some((&person.uuid, &person.nickname)),
    };
    let user_key =
        policy::decide(asker, &facts).map_err(|r| RerunError::Refused(policy::refusal_text(&r)))?;
    if keys.is_empty() {
        return Err(RerunError::NoKeys);
    }
    let lines: Vec<String> = keys.into_iter().map(|k: PersonKey| k.key).collect();
    let by = person.nickname.clone();
    let job = state
        .db(move |s: &dyn Backend| {
            let job = s.rerun_with_ssh(id, &lines, &by, user_key)?;
            let mut e = Event::new(Actor::Person(by), AuditAction::RerunWithSsh)
                .target(format!("job {id}"))
                .detail(format!(
                    "{}: job {job}, user key {}",
                    via.as_str(),
                    user_key.as_str()
                ));
            e.project = s.job(id)?.map(|j| j.project);
            crate::audit::record(s, e)?;
            Ok(job)
        })
        .await?;
    state.bump();
    tracing::info!(
        person = %crate::printable(&person.nickname),
        job = id,
        rerun = job,
        user_key = user_key.as_str(),
        "rerun with SSH"
    );
    Ok(Rerun {
        job,
        user_key,
        said: policy::explain(user_key, facts.owner.as_deref()),
    })
}

/// The label Bosun gives the user keys it adds to an account (`user key add`): their
/// private halves are in jobs, so they must never let anyone into a job.
const BOSUN_USER_KEY_LABEL: &str = "bosun user key for ";

/// Why the keys of a Bitbucket account were not read.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("logging in with Bitbucket is not set up on this coordinator")]
    NotConfigured,
    #[error("Bitbucket cannot be asked for you now: log out and in again ({0})")]
    Bitbucket(String),
    #[error("{0}")]
    Coord(#[from] CoordError),
}

/// Read `viewer`'s SSH keys from their Bitbucket account (Cloud's `GET /2.0/users/{uuid}/
/// ssh-keys`, Data Center's `GET /rest/ssh/latest/keys`, with an access token from their
/// kept credential) and keep them in place of the
/// ones read before; keys added on the page stay. Bosun's own user keys on the account are
/// left out, and so is anything that is not one public key. How many are kept.
pub async fn import_from_bitbucket(
    state: &AppState,
    viewer: &Viewer,
) -> Result<usize, ImportError> {
    let consumer = state
        .people
        .settings
        .consumer
        .clone()
        .ok_or(ImportError::NotConfigured)?;
    let pid = viewer.person.id;
    let (kind, access) = super::bitbucket_access(state, &consumer, pid)
        .await?
        .map_err(ImportError::Bitbucket)?;
    let listed = match consumer.ssh_keys(&access, &viewer.person.uuid).await {
        Ok(l) => l,
        Err(e) => {
            super::forget_refused(state, pid, kind, &e).await?;
            return Err(ImportError::Bitbucket(e.to_string()));
        }
    };
    let mut keys: Vec<(String, String)> = Vec::new();
    for (text, label) in listed {
        if label.starts_with(BOSUN_USER_KEY_LABEL) {
            continue;
        }
        if let Ok((key, fp)) = parse_key(&text) {
            if !keys.iter().any(|(_, f)| *f == fp) {
                keys.push((key, fp));
            }
        }
    }
    let kept = state
        .db(move |s: &dyn Backend| s.replace_bitbucket_ssh_keys(pid, &keys))
        .await?;
    Ok(kept)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ED: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKqP3Cr632C2dNhhgKVcon4ldUSAeKiku2yP9O9/bDtY";

    #[test]
    fn one_public_key_line_is_kept_without_options() {
        let (k, fp) = parse_key(&format!("  no-pty {ED} me@laptop\n")).expect("key");
        assert_eq!(k, format!("{ED} me@laptop"));
        assert!(fp.starts_with("SHA256:"), "{fp}");
        let (k2, fp2) = parse_key(ED).expect("key");
        assert_eq!((k2.as_str(), fp2), (ED, fp));
    }

    #[test]
    fn anything_else_is_refused_without_echoing_it() {
        let private =
            "-----BEGIN OPENSSH PRIVATE KEY-----\nb3Blbn\n-----END OPENSSH PRIVATE KEY-----";
        assert_eq!(parse_key(private), Err(KeyError::Private));
        assert_eq!(parse_key(" \n"), Err(KeyError::Empty));
        assert_eq!(parse_key("ssh-ed25519 garbage"), Err(KeyError::NotAKey));
        assert_eq!(parse_key(&format!("{ED}\n{ED}")), Err(KeyError::Several(2)));
        assert!(matches!(
            parse_key(&"a".repeat(20_000)),
            Err(KeyError::TooLong(_))
        ));
        let e = KeyError::NotAKey.to_string();
        assert!(!e.contains("garbage"));
    }
}

//! Who may SSH into a rerun that would hold its project's user key, decided without I/O
//! (docs/ssh.md, "Who may rerun with SSH").
//!
//! A user key acts as its owner on every repository the owner can read: whoever has a shell
//! in a job that holds it can read all of that. So a rerun with SSH carries the user key
//! only when its owner (the Bitbucket account the key was registered for) or someone with
//! the whole coordinator (an operator, a coordinator admin) asks. Anyone else with write
//! permission gets the rerun without it (deploy key only), or a refusal when the project
//! says `--ssh-policy refuse`.

use super::UnknownWord;
use std::fmt;
use std::str::FromStr;

/// What a project does when someone other than its user key's owner reruns a job with SSH
/// (`project set --ssh-policy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SshPolicy {
    /// The rerun runs with the deploy key only.
    #[default]
    WithoutUserKey,
    /// The rerun with SSH is refused.
    Refuse,
}

impl SshPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            SshPolicy::WithoutUserKey => "without-user-key",
            SshPolicy::Refuse => "refuse",
        }
    }
}

impl fmt::Display for SshPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for SshPolicy {
    type Err = UnknownWord;
    fn from_str(s: &str) -> Result<SshPolicy, UnknownWord> {
        match s {
            "without-user-key" => Ok(SshPolicy::WithoutUserKey),
            "refuse" => Ok(SshPolicy::Refuse),
            _ => Err(UnknownWord {
                what: "SSH policy (without-user-key or refuse)",
                word: s.to_owned(),
            }),
        }
    }
}

/// What the rerun would be given of its project's user key, and whose it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserKeyFacts {
    /// The project has a user key and the rerun would get it (a restricted fork build's
    /// rerun would not).
    pub given: bool,
    /// The Bitbucket account it was registered for (`{UUID}` or nickname), if recorded.
    pub owner: Option<String>,
    pub policy: SshPolicy,
}

/// Who asks for the rerun with SSH.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SshAsker<'a> {
    /// Their repository permission allows a rerun with SSH (`people::allowed`).
    pub may_rerun_with_ssh: bool,
    /// An operator (the host's CLI, an operator token) or a coordinator admin.
    pub coordinator_wide: bool,
    /// Their Bitbucket account's UUID and nickname (a person), `None` for an operator.
    pub account: Option<(&'a str, &'a str)>,
}

/// What the rerun gets of the user key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserKey {
    /// The project has none (or the rerun would not get it anyway): nothing to decide.
    NotInvolved,
    /// It holds the user key: the owner, or someone coordinator-wide, asked.
    Given,
    /// It runs without the user key (deploy key only): someone else asked.
    Withheld,
}

impl UserKey {
    pub fn as_str(self) -> &'static str {
        match self {
            UserKey::NotInvolved => "none",
            UserKey::Given => "with",
            UserKey::Withheld => "without",
        }
    }

    /// The word as stored; anything unknown reads as withheld (the safe side).
    pub fn from_stored(s: &str) -> UserKey {
        match s {
            "none" => UserKey::NotInvolved,
            "with" => UserKey::Given,
            _ => UserKey::Withheld,
        }
    }
}

/// Why a rerun with SSH is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SshRefusal {
    /// Their repository permission does not allow it (write is needed).
    NoPermission,
    /// The job would hold a user key that is not theirs and the project refuses a rerun
    /// without it.
    PolicyRefuses { owner: Option<String> },
}

/// Whether the account `(uuid, nickname)` is the key's `owner` as recorded: by UUID (what
/// cannot change hands), or by nickname when the owner was recorded by name.
pub fn owns(owner: &str, account: (&str, &str)) -> bool {
    let (uuid, nickname) = account;
    if owner.starts_with('{') {
        owner.eq_ignore_ascii_case(uuid)
    } else {
        owner == nickname || owner.eq_ignore_ascii_case(uuid)
    }
}

/// The rule: may `asker` rerun with SSH, and does the rerun hold the user key?
pub fn decide(asker: SshAsker<'_>, facts: &UserKeyFacts) -> Result<UserKey, SshRefusal> {
    if !asker.may_rerun_with_ssh && !asker.coordinator_wide {
        return Err(SshRefusal::NoPermission);
    }
    if !facts.given {
        return Ok(UserKey::NotInvolved);
    }
    let owner = facts.owner.as_deref();
    let is_owner = match (owner, asker.account) {
        (Some(o), Some(a)) => owns(o, a),
        _ => false,
    };
    if asker.coordinator_wide || is_owner {
        return Ok(UserKey::Given);
    }
    match facts.policy {
        SshPolicy::WithoutUserKey => Ok(UserKey::Withheld),
        SshPolicy::Refuse => Err(SshRefusal::PolicyRefuses {
            owner: facts.owner.clone(),
        }),
    }
}

/// What to tell whoever asked (the page, the CLI, the API), in words.
pub fn explain(user_key: UserKey, owner: Option<&str>) -> String {
    let whose = owner.map_or_else(
        || "an account not recorded".to_owned(),
        |o| format!("the Bitbucket account {o}"),
    );
    match user_key {
        UserKey::NotInvolved => {
            "no user key involved: the job has the keys its project gives it".to_owned()
        }
        UserKey::Given => format!("with the project's user key (it belongs to {whose})"),
        UserKey::Withheld => format!(
            "without the project's user key: it belongs to {whose}, and only its owner or a \
             coordinator admin may SSH into a job holding it; this job has the deploy key only, \
             so a step that reads another private repository fails"
        ),
    }
}

/// A refusal in words.
pub fn refusal_text(r: &SshRefusal) -> String {
    match r {
        SshRefusal::NoPermission => {
            "a rerun with SSH needs write permission on the project's repository".to_owned()
        }
        SshRefusal::PolicyRefuses { owner } => format!(
            "refused: this job would hold the project's user key, which belongs to {}; only \
             its owner or a coordinator admin may rerun it with SSH, and the project refuses a \
             rerun without it (project set --ssh-policy refuse)",
            owner.as_deref().unwrap_or("an account not recorded")
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(given: bool, owner: Option<&str>, policy: SshPolicy) -> UserKeyFacts {
        UserKeyFacts {
            given,
            owner: owner.map(str::to_owned),
            policy,
        }
    }

    fn person<'a>(write: bool, admin: bool, account: (&'a str, &'a str)) -> SshAsker<'a> {
        SshAsker {
            may_rerun_with_ssh: write,
            coordinator_wide: admin,
            account: Some(account),
        }
    }

    const OWNER: (&str, &str) = ("{u-owner}", "owner");
    const OTHER: (&str, &str) = ("{u-other}", "other");

    #[test]
    fn the_owner_gets_the_user_key_and_another_writer_does_not() {
        for policy in [SshPolicy::WithoutUserKey, SshPolicy::Refuse] {
            let f = facts(true, Some("{u-owner}"), policy);
            assert_eq!(decide(person(true, false, OWNER), &f), Ok(UserKey::Given));
            let other = decide(person(true, false, OTHER), &f);
            match policy {
                SshPolicy::WithoutUserKey => assert_eq!(other, Ok(UserKey::Withheld)),
                SshPolicy::Refuse => assert_eq!(
                    other,
                    Err(SshRefusal::PolicyRefuses {
                        owner: Some("{u-owner}".into())
                    })
                ),
            }
        }
    }

    #[test]
    fn admins_and_operators_get_it_readers_get_nothing() {
        let f = facts(true, Some("{u-owner}"), SshPolicy::Refuse);
        assert_eq!(decide(person(false, true, OTHER), &f), Ok(UserKey::Given));
        let operator = SshAsker {
            may_rerun_with_ssh: true,
            coordinator_wide: true,
            account: None,
        };
        assert_eq!(decide(operator, &f), Ok(UserKey::Given));
        // A reader, even the key's owner, may not rerun at all.
        assert_eq!(
            decide(person(false, false, OWNER), &f),
            Err(SshRefusal::NoPermission)
        );
        assert_eq!(
            decide(
                person(false, false, OTHER),
                &facts(false, None, SshPolicy::Refuse)
            ),
            Err(SshRefusal::NoPermission)
        );
    }

    #[test]
    fn without_a_user_key_in_the_job_there_is_nothing_to_withhold() {
        let f = facts(false, Some("{u-owner}"), SshPolicy::Refuse);
        assert_eq!(
            decide(person(true, false, OTHER), &f),
            Ok(UserKey::NotInvolved)
        );
    }

    #[test]
    fn an_owner_not_recorded_is_nobody_and_a_uuid_owner_is_not_matched_by_name() {
        let f = facts(true, None, SshPolicy::WithoutUserKey);
        assert_eq!(
            decide(person(true, false, OWNER), &f),
            Ok(UserKey::Withheld)
        );
        assert!(owns("{U-OWNER}", OWNER));
        assert!(owns("owner", OWNER));
        // A nickname that looks like the owner's UUID is not the owner.
        assert!(!owns("{u-owner}", ("{u-x}", "{u-owner}")));
        assert!(!owns("owner", OTHER));
    }

    #[test]
    fn words_read_back() {
        for p in [SshPolicy::WithoutUserKey, SshPolicy::Refuse] {
            assert_eq!(p.as_str().parse::<SshPolicy>(), Ok(p));
        }
        assert!("allow".parse::<SshPolicy>().is_err());
        assert_eq!(SshPolicy::default(), SshPolicy::WithoutUserKey);
        for k in [UserKey::NotInvolved, UserKey::Given, UserKey::Withheld] {
            assert_eq!(UserKey::from_stored(k.as_str()), k);
        }
        assert_eq!(UserKey::from_stored("??"), UserKey::Withheld);
        assert!(explain(UserKey::Withheld, Some("{u}")).contains("deploy key only"));
    }
}

//! API tokens, decided without I/O: what a project token of each scope may do on API v2,
//! what a personal token may do (its person's permissions, `model::people`'s table), which
//! names a person may give a token, and how a personal token is told from the other kinds.

use super::people::{self as rules, Action, Asker};
use super::UnknownWord;
use std::fmt;
use std::str::FromStr;

/// The prefix of a personal API token (`bosun-pat-` and 48 hex digits): one a log scanner
/// or a person can recognise; the other kinds are `bosun-op-` and `bosun-prj-`.
pub const PERSONAL_PREFIX: &str = "bosun-pat-";
/// Longest token name taken.
pub const MAX_NAME: usize = 64;
/// Live personal tokens a person may hold at most (a form cannot fill the store).
pub const MAX_PER_PERSON: usize = 50;

/// What a project token (`bosun coordinator api-token new --scope …`) is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProjectScope {
    /// Reads its project: pipelines, workflows, jobs, artifacts, tests (badges, dashboards).
    Read,
    /// Starts pipelines of its project and reads nothing (a script that only triggers).
    Trigger,
}

impl ProjectScope {
    pub fn as_str(self) -> &'static str {
        match self {
            ProjectScope::Read => "read",
            ProjectScope::Trigger => "trigger",
        }
    }
}

impl fmt::Display for ProjectScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ProjectScope {
    type Err = UnknownWord;
    fn from_str(s: &str) -> Result<ProjectScope, UnknownWord> {
        match s {
            "read" => Ok(ProjectScope::Read),
            "trigger" => Ok(ProjectScope::Trigger),
            _ => Err(UnknownWord {
                what: "project token scope",
                word: s.to_owned(),
            }),
        }
    }
}

/// May a project token of `scope` do `action` on its own project? (On any other project it
/// may do nothing, and that project is not found.) Read-only tokens read; trigger-only
/// tokens trigger; neither reruns, cancels, approves or changes settings.
pub fn project_token_allows(scope: ProjectScope, action: Action) -> bool {
    matches!(
        (scope, action),
        (ProjectScope::Read, Action::Read) | (ProjectScope::Trigger, Action::Trigger)
    )
}

/// May a personal token of a person who is `asker` on a project (`public` or not) do
/// `action`? Exactly what the person may do from the pages: the token adds nothing and
/// takes nothing away.
pub fn personal_token_allows(action: Action, asker: Asker, public: bool) -> bool {
    rules::allowed(action, asker, public)
}

/// Whether `token` has the shape of a personal token (checked before any lookup).
pub fn is_personal(token: &str) -> bool {
    token
        .strip_prefix(PERSONAL_PREFIX)
        .is_some_and(|h| h.len() == 48 && h.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Why a token name is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("a token needs a name (what it is for, e.g. `deploy script`)")]
    Empty,
    #[error("a token name is at most {MAX_NAME} characters")]
    TooLong,
    #[error("a token name may not hold control characters")]
    Control,
}

/// The name a person gives a token, trimmed: 1 to [`MAX_NAME`] characters, no control or
/// bidirectional characters (it is shown on pages and in the audit log).
pub fn token_name(raw: &str) -> Result<String, NameError> {
    let name = raw.trim();
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.chars().count() > MAX_NAME {
        return Err(NameError::TooLong);
    }
    if name.chars().any(crate::text::is_unsafe_char) {
        return Err(NameError::Control);
    }
    Ok(name.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::people::Role;

    /// Each scope's row of the table, spelled out.
    #[test]
    fn project_token_scopes_allow_one_thing_each() {
        for action in Action::ALL {
            assert_eq!(
                project_token_allows(ProjectScope::Read, *action),
                *action == Action::Read,
                "read scope, {action:?}"
            );
            assert_eq!(
                project_token_allows(ProjectScope::Trigger, *action),
                *action == Action::Trigger,
                "trigger scope, {action:?}"
            );
        }
    }

    #[test]
    fn scopes_read_as_the_cli_and_store_write_them() {
        for s in [ProjectScope::Read, ProjectScope::Trigger] {
            assert_eq!(s.as_str().parse::<ProjectScope>(), Ok(s));
        }
        assert!("write".parse::<ProjectScope>().is_err());
        assert!("".parse::<ProjectScope>().is_err());
    }

    #[test]
    fn a_personal_token_does_what_its_person_may() {
        let person = |role| Asker {
            role,
            coordinator_admin: false,
        };
        for action in Action::ALL {
            for role in [Role::None, Role::Read, Role::Write, Role::Admin] {
                for public in [false, true] {
                    assert_eq!(
                        personal_token_allows(*action, person(role), public),
                        rules::allowed(*action, person(role), public),
                        "{action:?} {role} public={public}"
                    );
                }
            }
        }
        assert!(personal_token_allows(
            Action::Read,
            person(Role::Read),
            false
        ));
        assert!(!personal_token_allows(
            Action::Trigger,
            person(Role::Read),
            false
        ));
        assert!(personal_token_allows(
            Action::Trigger,
            person(Role::Write),
            false
        ));
        assert!(!personal_token_allows(
            Action::Settings,
            person(Role::Write),
            false
        ));
    }

    #[test]
    fn personal_tokens_are_told_apart_by_shape() {
        assert!(is_personal(&format!("bosun-pat-{}", "a1".repeat(24))));
        for bad in [
            "bosun-pat-".to_owned(),
            format!("bosun-pat-{}", "a1".repeat(23)),
            format!("bosun-pat-{}", "zz".repeat(24)),
            format!("bosun-prj-{}", "a1".repeat(24)),
            format!("bosun-op-{}", "a1".repeat(24)),
        ] {
            assert!(!is_personal(&bad), "{bad}");
        }
    }

    #[test]
    fn token_names_are_short_printable_and_trimmed() {
        assert_eq!(
            token_name("  deploy script ").as_deref(),
            Ok("deploy script")
        );
        assert_eq!(token_name("   "), Err(NameError::Empty));
        assert_eq!(token_name(&"x".repeat(65)), Err(NameError::TooLong));
        assert!(token_name(&"é".repeat(64)).is_ok());
        assert_eq!(token_name("a\u{1b}[31mb"), Err(NameError::Control));
        assert_eq!(token_name("a\u{202e}b"), Err(NameError::Control));
    }
}

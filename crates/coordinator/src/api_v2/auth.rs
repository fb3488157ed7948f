//! Who calls the API: the token in the `Circle-Token` header, or as the user name of HTTP
//! Basic (clients send either; `pycircleci` sends both). An operator token may do everything;
//! a project token reads its own project (`read`) or triggers its pipelines (`trigger`); a
//! personal token does what its person may ([`allows`]; the rules are `model::tokens`).

use super::V2Error;
use crate::audit::Actor;
use crate::model::contexts::Principal;
use crate::model::people::Action;
use crate::model::tokens::{project_token_allows, ProjectScope};
use crate::store::api_v2::ProjectToken;
use crate::store::{Person, Resource};
use crate::AppState;
use axum::http::{header, HeaderMap};
use base64::Engine;

/// The caller behind a request's token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// `bosun coordinator operator new NAME`: every project, reads and actions.
    Operator(String),
    /// `bosun coordinator api-token new --project SLUG [--scope read|trigger] NAME`.
    Project(ProjectToken),
    /// A person's token, made on their page: what the person may do.
    Person(Person),
}

/// What a caller may do with a project, as a handler answers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Allowed {
    Yes,
    /// It may not even read the project: not found, as for an unknown one (CircleCI's).
    Hidden,
    /// It sees the project but may not do this: 403 with the reason.
    Refused(String),
}

impl Caller {
    /// The name recorded for what it does (an approval's `approved_by`, a trigger's actor).
    pub fn name(&self) -> String {
        match self {
            Caller::Operator(n) => n.clone(),
            Caller::Project(t) => format!("project-token:{}", t.name),
            Caller::Person(p) => p.nickname.clone(),
        }
    }

    /// Who it approves as, for security groups (`Forbidden` for a project token, which never
    /// approves).
    pub fn principal(&self) -> Result<Principal, V2Error> {
        match self {
            Caller::Operator(n) => Ok(Principal::Operator(n.clone())),
            Caller::Person(p) => Ok(Principal::Person {
                account: p.uuid.clone(),
                nickname: p.nickname.clone(),
            }),
            Caller::Project(_) => Err(V2Error::forbidden(
                "Permission denied: a project token may not approve",
            )),
        }
    }

    /// The Bitbucket account of a person's token, whom what it triggers or reruns runs for.
    pub fn person_account(&self) -> Option<String> {
        match self {
            Caller::Person(p) => Some(p.uuid.clone()),
            _ => None,
        }
    }

    /// Who it is in the audit log.
    pub fn actor(&self) -> Actor {
        match self {
            Caller::Operator(n) => Actor::Operator(n.clone()),
            Caller::Project(t) => Actor::ProjectToken(t.name.clone()),
            Caller::Person(p) => Actor::Person(p.nickname.clone()),
        }
    }

    /// What only operators do here (contexts): the operator's name, or 403.
    pub fn operator(&self) -> Result<&str, V2Error> {
        match self {
            Caller::Operator(n) => Ok(n),
            Caller::Project(_) => Err(V2Error::forbidden(
                "Permission denied: a project token may not do this; use an operator token",
            )),
            Caller::Person(_) => Err(V2Error::forbidden(
                "Permission denied: contexts are managed with an operator token",
            )),
        }
    }
}

/// What a project token may not do, said as its scope puts it.
fn scope_refusal(scope: ProjectScope, action: Action) -> String {
    match scope {
        ProjectScope::Read => format!(
            "Permission denied: a project token is read-only (it may not {}); use an operator \
             or personal token",
            action.as_str()
        ),
        ProjectScope::Trigger => format!(
            "Permission denied: a trigger-only project token may not {}",
            action.as_str()
        ),
    }
}

/// May `who` do `action` with the project whose current slug is `slug`?
pub async fn allows(
    state: &AppState,
    who: &Caller,
    slug: &str,
    action: Action,
) -> Result<Allowed, V2Error> {
    match who {
        Caller::Operator(_) => Ok(Allowed::Yes),
        Caller::Project(t) if t.slug != slug => Ok(Allowed::Hidden),
        Caller::Project(t) => Ok(if project_token_allows(t.scope, action) {
            Allowed::Yes
        } else {
            Allowed::Refused(scope_refusal(t.scope, action))
        }),
        Caller::Person(p) => {
            let of = || Resource::Project(slug.to_owned());
            let reads = crate::people::tokens::may(state, p, of(), Action::Read).await?;
            if reads != Some(true) {
                return Ok(Allowed::Hidden);
            }
            if action == Action::Read {
                return Ok(Allowed::Yes);
            }
            Ok(
                match crate::people::tokens::may(state, p, of(), action).await? {
                    Some(true) => Allowed::Yes,
                    Some(false) => Allowed::Refused(format!(
                        "Permission denied: {} may not {} on {slug}: that needs {} permission \
                         on its repository",
                        p.nickname,
                        action.as_str(),
                        action.needs()
                    )),
                    None => Allowed::Hidden,
                },
            )
        }
    }
}

/// The token a request carries: `Circle-Token`, else Basic's user name (the password, if
/// any, is ignored, as CircleCI does). `None`: neither, or not readable.
pub fn token(headers: &HeaderMap) -> Option<String> {
    if let Some(t) = headers.get("circle-token").and_then(|v| v.to_str().ok()) {
        let t = t.trim();
        if !t.is_empty() {
            return Some(t.to_owned());
        }
    }
    let basic = headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .trim()
        .strip_prefix("Basic ")?;
    let raw = base64::engine::general_purpose::STANDARD
        .decode(basic.trim())
        .ok()?;
    let text = String::from_utf8(raw).ok()?;
    let user = text.split(':').next().unwrap_or("").trim();
    (!user.is_empty()).then(|| user.to_owned())
}

/// The caller of a request, or CircleCI's 401.
pub async fn caller(state: &AppState, headers: &HeaderMap) -> Result<Caller, V2Error> {
    let token = token(headers).ok_or_else(V2Error::unauthorized)?;
    // Bounded before it reaches the store: a token is never this long.
    if token.len() > 512 {
        return Err(V2Error::unauthorized());
    }
    if crate::model::tokens::is_personal(&token) {
        return crate::people::tokens::person_of(state, &token)
            .await?
            .map(Caller::Person)
            .ok_or_else(V2Error::unauthorized);
    }
    let found = state
        .db(move |s| {
            if let Some(name) = s.operator(&token)? {
                return Ok(Some(Caller::Operator(name)));
            }
            Ok(s.project_token(&token)?.map(Caller::Project))
        })
        .await?;
    found.ok_or_else(V2Error::unauthorized)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(
                axum::http::HeaderName::from_bytes(k.as_bytes()).expect("name"),
                v.parse().expect("value"),
            );
        }
        h
    }

    #[test]
    fn the_token_comes_from_circle_token_or_basic_user_name() {
        assert_eq!(
            token(&headers(&[("Circle-Token", " tok ")])).as_deref(),
            Some("tok")
        );
        // `curl -u TOKEN:` and Basic without the colon.
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let with_colon = format!("Basic {}", b64("tok:"));
        let bare = format!("Basic {}", b64("tok"));
        assert_eq!(
            token(&headers(&[("authorization", &with_colon)])).as_deref(),
            Some("tok")
        );
        assert_eq!(
            token(&headers(&[("authorization", &bare)])).as_deref(),
            Some("tok")
        );
        // Circle-Token wins over Basic.
        assert_eq!(
            token(&headers(&[("circle-token", "a"), ("authorization", &bare)])).as_deref(),
            Some("a")
        );
        assert_eq!(token(&headers(&[])), None);
        assert_eq!(token(&headers(&[("authorization", "Bearer tok")])), None);
        assert_eq!(
            token(&headers(&[("authorization", "Basic !!notbase64")])),
            None
        );
        let empty_user = format!("Basic {}", b64(":pw"));
        assert_eq!(token(&headers(&[("authorization", &empty_user)])), None);
    }

    #[test]
    fn refusals_name_the_scope() {
        assert!(scope_refusal(ProjectScope::Read, Action::Trigger).contains("read-only"));
        assert!(scope_refusal(ProjectScope::Trigger, Action::Read).contains("trigger-only"));
        let p = Caller::Project(ProjectToken {
            slug: "acme/widget".into(),
            name: "ro".into(),
            scope: ProjectScope::Read,
        });
        assert!(p.operator().is_err());
        assert_eq!(p.actor(), Actor::ProjectToken("ro".into()));
        let o = Caller::Operator("ann".into());
        assert_eq!(o.operator().ok(), Some("ann"));
    }
}

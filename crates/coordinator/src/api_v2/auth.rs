//! Who calls the API: the token in the `Circle-Token` header, or as the user name of HTTP
//! Basic (clients send either; `pycircleci` sends both). An operator token may do everything;
//! a project token only reads its own project.

use super::V2Error;
use crate::AppState;
use axum::http::{header, HeaderMap};
use base64::Engine;

/// The caller behind a request's token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// `bosun coordinator operator new NAME`: every project, reads and actions.
    Operator(String),
    /// `bosun coordinator api-token new --project SLUG NAME`: reads of that project only.
    Project { slug: String, name: String },
}

impl Caller {
    /// The name recorded for what it does (an approval's `approved_by`).
    pub fn name(&self) -> &str {
        match self {
            Caller::Operator(n) | Caller::Project { name: n, .. } => n,
        }
    }

    /// May it read project `slug` (its current slug)?
    pub fn reads(&self, slug: &str) -> bool {
        match self {
            Caller::Operator(_) => true,
            Caller::Project { slug: s, .. } => s == slug,
        }
    }

    /// An action (trigger, approve, cancel, rerun): operators only.
    pub fn operator(&self) -> Result<&str, V2Error> {
        match self {
            Caller::Operator(n) => Ok(n),
            Caller::Project { .. } => Err(V2Error::forbidden(
                "Permission denied: a project token is read-only; use an operator token",
            )),
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
    let found = state
        .db(move |s| {
            if let Some(name) = s.operator(&token)? {
                return Ok(Some(Caller::Operator(name)));
            }
            Ok(s.project_token(&token)?.map(|slug| Caller::Project {
                name: format!("project-token:{slug}"),
                slug,
            }))
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
    fn project_tokens_read_their_project_only_and_act_on_nothing() {
        let p = Caller::Project {
            slug: "acme/widget".into(),
            name: "ro".into(),
        };
        assert!(p.reads("acme/widget") && !p.reads("acme/other"));
        assert!(p.operator().is_err());
        let o = Caller::Operator("ann".into());
        assert!(o.reads("acme/other"));
        assert_eq!(o.operator().ok(), Some("ann"));
    }
}

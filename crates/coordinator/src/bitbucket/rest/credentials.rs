//! How Bosun signs in to Bitbucket's REST API, one format for every file that holds it (the
//! commit statuses' `--status-credentials-file`, follow's `--api-credentials-file`):
//!
//! - `EMAIL:TOKEN`: a Bitbucket Cloud API token, sent as HTTP Basic with the Atlassian
//!   account's e-mail (the same form carried the app passwords Cloud has removed);
//! - `bearer:TOKEN`: an access token (Cloud repository, project or workspace access token,
//!   an OAuth 2.0 token) or a Data Center HTTP access token, sent as `Authorization: Bearer`.
//!
//! The value never reaches a log: `Debug` names the kind only.

use zeroize::Zeroizing;

/// Credentials for Bitbucket's REST API.
#[derive(Clone)]
pub enum Credentials {
    /// HTTP Basic: (user or e-mail, token or password).
    Basic(String, Zeroizing<String>),
    /// `Authorization: Bearer TOKEN`.
    Bearer(Zeroizing<String>),
    /// None given: requests go unauthenticated.
    None,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Credentials::Basic(..) => "Credentials::Basic(<redacted>)",
            Credentials::Bearer(_) => "Credentials::Bearer(<redacted>)",
            Credentials::None => "Credentials::None",
        })
    }
}

/// What is wrong with a credentials text (it names the form, never the value).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("expected `EMAIL:API-TOKEN` (HTTP Basic) or `bearer:TOKEN` on one line")]
pub struct BadCredentials;

impl Credentials {
    /// Read `bearer:TOKEN` or `USER:SECRET` (surrounding whitespace ignored; empty: none).
    pub fn parse(text: &str) -> Result<Credentials, BadCredentials> {
        let text = text.trim();
        if text.is_empty() {
            return Ok(Credentials::None);
        }
        if text.contains(['\n', '\r']) {
            return Err(BadCredentials);
        }
        if let Some(token) = text.strip_prefix("bearer:") {
            if token.is_empty() {
                return Err(BadCredentials);
            }
            return Ok(Credentials::Bearer(Zeroizing::new(token.to_owned())));
        }
        match text.split_once(':') {
            Some((user, secret)) if !user.is_empty() && !secret.is_empty() => Ok(
                Credentials::Basic(user.to_owned(), Zeroizing::new(secret.to_owned())),
            ),
            _ => Err(BadCredentials),
        }
    }

    /// `req` signed with these credentials.
    pub fn sign(&self, req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match self {
            Credentials::Basic(user, secret) => req.basic_auth(user, Some(secret.as_str())),
            Credentials::Bearer(token) => req.bearer_auth(token.as_str()),
            Credentials::None => req,
        }
    }

    /// The secret part, so that a caller can check an output never holds it.
    pub fn secret(&self) -> Option<&str> {
        match self {
            Credentials::Basic(_, s) | Credentials::Bearer(s) => Some(s.as_str()),
            Credentials::None => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_and_bearer_are_told_apart_and_never_shown() {
        let c = Credentials::parse("ada@example.com:ATATT3xFfGF0-token\n").expect("basic");
        assert!(
            matches!(&c, Credentials::Basic(u, s) if u == "ada@example.com" && s.as_str() == "ATATT3xFfGF0-token")
        );
        assert!(!format!("{c:?}").contains("ATATT"));
        let c = Credentials::parse("bearer:abc:def").expect("bearer");
        assert!(matches!(&c, Credentials::Bearer(t) if t.as_str() == "abc:def"));
        assert!(!format!("{c:?}").contains("abc"));
        assert!(matches!(Credentials::parse(" \n"), Ok(Credentials::None)));
        for bad in ["token-only", ":secret", "user:", "bearer:", "a:b\nc:d"] {
            let e = Credentials::parse(bad).expect_err(bad);
            assert!(!e.to_string().contains("secret"), "{e}");
        }
    }
}

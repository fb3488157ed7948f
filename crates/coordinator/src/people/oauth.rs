//! Bitbucket Cloud's OAuth 2.0 authorization-code flow, as its documentation describes it:
//! the browser is sent to `{site}/site/oauth2/authorize?client_id=…&response_type=code` (with
//! `state` and a PKCE challenge), comes back to the consumer's callback URL with `code`, and
//! the server swaps the code for an access token at `{site}/site/oauth2/access_token` (HTTP
//! Basic with the consumer's key and secret). The token then reads `GET /2.0/user` and
//! `GET /2.0/user/permissions/repositories`; it is used for that and dropped, never stored.

use crate::bitbucket::rest::client::Paging;
use crate::bitbucket::rest::{Client, Credentials, RestError};
use crate::model::people::Role;
use base64::Engine as _;
use sha2::{Digest, Sha256};
use std::time::Duration;
use zeroize::Zeroizing;

/// Bitbucket Cloud's site (the OAuth endpoints live under `/site/oauth2/`).
pub const CLOUD_SITE: &str = "https://bitbucket.org";

/// An OAuth consumer of Bitbucket Cloud and where Bitbucket is.
#[derive(Clone)]
pub struct Consumer {
    pub key: String,
    pub secret: Zeroizing<String>,
    /// `https://bitbucket.org` (tests: their recorder).
    pub site: String,
    /// `https://api.bitbucket.org/2.0`.
    pub api: String,
}

impl std::fmt::Debug for Consumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consumer")
            .field("key", &self.key)
            .field("site", &self.site)
            .field("api", &self.api)
            .finish_non_exhaustive()
    }
}

/// What went wrong logging in (never quoting a code, a token or the secret).
#[derive(Debug, thiserror::Error)]
pub enum OAuthError {
    #[error("exchanging the authorization code: {0}")]
    Exchange(String),
    #[error("{0}")]
    Rest(#[from] RestError),
    #[error("Bitbucket's answer to {call} lacks {what}")]
    Shape {
        call: &'static str,
        what: &'static str,
    },
}

/// The consumer file: `KEY:SECRET` on one line.
pub fn parse_consumer_file(text: &str) -> Option<(String, Zeroizing<String>)> {
    let text = text.trim();
    if text.contains(['\n', '\r']) {
        return None;
    }
    let (k, s) = text.split_once(':')?;
    (!k.is_empty() && !s.is_empty()).then(|| (k.to_owned(), Zeroizing::new(s.to_owned())))
}

/// PKCE (RFC 7636): the challenge of a verifier, `S256`.
pub fn pkce_challenge(verifier: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

fn form_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// What the token endpoint hands out.
pub struct Tokens {
    pub access: Zeroizing<String>,
    pub refresh: Option<Zeroizing<String>>,
}

/// Bitbucket's account, as `GET /2.0/user` says it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub uuid: String,
    pub nickname: String,
    pub display_name: String,
}

impl Consumer {
    /// Where the browser goes to log in.
    pub fn authorize_url(&self, state: &str, verifier: &str, redirect_uri: &str) -> String {
        format!(
            "{}/site/oauth2/authorize?client_id={}&response_type=code&state={}\
             &code_challenge={}&code_challenge_method=S256&redirect_uri={}",
            self.site.trim_end_matches('/'),
            form_encode(&self.key),
            form_encode(state),
            pkce_challenge(verifier),
            form_encode(redirect_uri),
        )
    }

    /// Swap `code` for an access token and a refresh token (server side; the consumer's
    /// secret never leaves it).
    pub async fn exchange(
        &self,
        code: &str,
        verifier: &str,
        redirect_uri: &str,
    ) -> Result<Tokens, OAuthError> {
        self.token(&format!(
            "grant_type=authorization_code&code={}&code_verifier={}&redirect_uri={}",
            form_encode(code),
            form_encode(verifier),
            form_encode(redirect_uri)
        ))
        .await
    }

    /// A new access token (and refresh token) for a refresh token: how the permissions are
    /// read again without the person.
    pub async fn refresh(&self, refresh_token: &str) -> Result<Tokens, OAuthError> {
        self.token(&format!(
            "grant_type=refresh_token&refresh_token={}",
            form_encode(refresh_token)
        ))
        .await
    }

    async fn token(&self, body: &str) -> Result<Tokens, OAuthError> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("bosun/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| OAuthError::Exchange(e.without_url().to_string()))?;
        let body = Zeroizing::new(body.to_owned());
        let resp = http
            .post(format!(
                "{}/site/oauth2/access_token",
                self.site.trim_end_matches('/')
            ))
            .basic_auth(&self.key, Some(self.secret.as_str()))
            .header("content-type", "application/x-www-form-urlencoded")
            .header("accept", "application/json")
            .body(body.as_str().to_owned())
            .send()
            .await
            .map_err(|e| OAuthError::Exchange(e.without_url().to_string()))?;
        let status = resp.status();
        let text = Zeroizing::new(
            resp.text()
                .await
                .map_err(|e| OAuthError::Exchange(e.without_url().to_string()))?,
        );
        let json: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
        if !status.is_success() {
            // OAuth's error words (`invalid_grant`, …) and description; never the body whole.
            let word = json["error"].as_str().unwrap_or("");
            let desc = json["error_description"].as_str().unwrap_or("");
            return Err(OAuthError::Exchange(crate::printable(&format!(
                "Bitbucket answered {}: {word} {desc}",
                status.as_u16()
            ))));
        }
        match json["access_token"].as_str() {
            Some(t) if !t.is_empty() => Ok(Tokens {
                access: Zeroizing::new(t.to_owned()),
                refresh: json["refresh_token"]
                    .as_str()
                    .filter(|r| !r.is_empty())
                    .map(|r| Zeroizing::new(r.to_owned())),
            }),
            _ => Err(OAuthError::Shape {
                call: "POST /site/oauth2/access_token",
                what: "`access_token`",
            }),
        }
    }

    fn client(&self, token: &Zeroizing<String>) -> Result<Client, OAuthError> {
        Ok(Client::new(
            Credentials::Bearer(token.clone()),
            Duration::from_secs(30),
        )?)
    }

    /// The account the token belongs to.
    pub async fn account(&self, token: &Zeroizing<String>) -> Result<Account, OAuthError> {
        let v = self
            .client(token)?
            .get(&format!("{}/user", self.api.trim_end_matches('/')))
            .await?;
        let s = |k: &str| v[k].as_str().map(str::to_owned);
        let uuid = s("uuid").ok_or(OAuthError::Shape {
            call: "GET /2.0/user",
            what: "`uuid`",
        })?;
        let nickname = s("nickname")
            .or_else(|| s("username"))
            .ok_or(OAuthError::Shape {
                call: "GET /2.0/user",
                what: "`nickname`",
            })?;
        Ok(Account {
            uuid,
            display_name: s("display_name").unwrap_or_else(|| nickname.clone()),
            nickname,
        })
    }

    /// Every repository the token's account has a permission on: (full name in lower case,
    /// role) and ({UUID}, role) for each, all pages read.
    pub async fn permissions(
        &self,
        token: &Zeroizing<String>,
    ) -> Result<Vec<(String, Role)>, OAuthError> {
        let values = self
            .client(token)?
            .list(
                &format!(
                    "{}/user/permissions/repositories",
                    self.api.trim_end_matches('/')
                ),
                Paging::Cloud,
            )
            .await?;
        Ok(permissions_of(&values))
    }
}

impl Consumer {
    /// The SSH public keys on the account `uuid` (`GET /2.0/users/{uuid}/ssh-keys`, every
    /// page; scope `account`): each `ssh_account_key`'s `key` and `label`.
    pub async fn ssh_keys(
        &self,
        token: &Zeroizing<String>,
        uuid: &str,
    ) -> Result<Vec<(String, String)>, OAuthError> {
        let values = self
            .client(token)?
            .list(
                &format!(
                    "{}/users/{}/ssh-keys",
                    self.api.trim_end_matches('/'),
                    form_encode(uuid)
                ),
                Paging::Cloud,
            )
            .await?;
        Ok(values
            .iter()
            .filter_map(|v| {
                let key = v["key"].as_str()?;
                Some((key.to_owned(), v["label"].as_str().unwrap_or("").to_owned()))
            })
            .collect())
    }
}

/// The permissions in a list of Cloud's `repository_permission` entries; an entry without a
/// repository or with a permission word we do not know gives nothing.
pub fn permissions_of(values: &[serde_json::Value]) -> Vec<(String, Role)> {
    let mut out = Vec::new();
    for v in values {
        let Some(role) = v["permission"]
            .as_str()
            .and_then(|w| w.parse::<Role>().ok())
        else {
            continue;
        };
        if let Some(name) = v["repository"]["full_name"].as_str() {
            out.push((name.to_ascii_lowercase(), role));
        }
        if let Some(uuid) = v["repository"]["uuid"].as_str() {
            out.push((uuid.to_owned(), role));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pkce_matches_rfc_7636s_example() {
        // RFC 7636, appendix B.
        assert_eq!(
            pkce_challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
    }

    #[test]
    fn the_consumer_file_is_key_colon_secret() {
        let (k, s) = parse_consumer_file("abc:def\n").expect("parsed");
        assert_eq!((k.as_str(), s.as_str()), ("abc", "def"));
        assert!(parse_consumer_file("abc").is_none());
        assert!(parse_consumer_file(":def").is_none());
        assert!(parse_consumer_file("a:b\nc:d").is_none());
    }

    #[test]
    fn permissions_read_as_cloud_writes_them() {
        let v: Vec<serde_json::Value> = serde_json::from_str(
            r#"[{"type":"repository_permission","permission":"write",
                 "repository":{"full_name":"Acme/Widget","uuid":"{u1}"}},
                {"permission":"owner","repository":{"full_name":"acme/x"}},
                {"permission":"read"}]"#,
        )
        .expect("json");
        assert_eq!(
            permissions_of(&v),
            [
                ("acme/widget".to_owned(), Role::Write),
                ("{u1}".to_owned(), Role::Write)
            ]
        );
    }

    #[test]
    fn the_authorize_url_carries_state_and_challenge_never_the_secret() {
        let c = Consumer {
            key: "k".into(),
            secret: Zeroizing::new("s3cret".into()),
            site: "https://bitbucket.org/".into(),
            api: "https://api.bitbucket.org/2.0".into(),
        };
        let u = c.authorize_url(
            "st",
            "verifier",
            "https://ci.example/login/bitbucket/callback",
        );
        assert!(u.starts_with("https://bitbucket.org/site/oauth2/authorize?client_id=k&response_type=code&state=st&code_challenge="), "{u}");
        assert!(u.contains("code_challenge_method=S256"));
        assert!(u.contains("redirect_uri=https%3A%2F%2Fci.example%2Flogin%2Fbitbucket%2Fcallback"));
        assert!(!u.contains("s3cret") && !u.contains("verifier"));
        assert!(!format!("{c:?}").contains("s3cret"));
    }
}

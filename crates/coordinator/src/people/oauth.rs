//! Bitbucket Cloud's OAuth 2.0 authorization-code flow, as its documentation describes it:
//! the browser is sent to `{site}/site/oauth2/authorize?client_id=…&response_type=code` (with
//! `state` and a PKCE challenge), comes back to the consumer's callback URL with `code`, and
//! the server swaps the code for an access token at `{site}/site/oauth2/access_token` (HTTP
//! Basic with the consumer's key and secret). The token then reads `GET /2.0/user` and
//! `GET /2.0/user/permissions/repositories`; it is used for that and dropped, never stored.
//!
//! Bitbucket Data Center's OAuth 2.0 provider (an incoming application link) is the same
//! flow at `{server}/rest/oauth2/latest/authorize` and `…/token` (the client's id and secret
//! in the form body, never in a URL); the person is `GET /plugins/servlet/applinks/whoami`
//! (their user name) then `GET /rest/api/latest/users?filter=NAME`, their permissions
//! `GET /rest/api/latest/repos?permission=REPO_READ|REPO_WRITE|REPO_ADMIN`, every page. A
//! Data Center HTTP access token pasted at login names its user in the `X-AUSERNAME`
//! header of a REST answer ([`Consumer::access_token_account`]) and is then used as the
//! access token is.

use crate::bitbucket::rest::client::Paging;
use crate::bitbucket::rest::{Client, Credentials, RestError};
use crate::model::people::Role;
use base64::Engine as _;
use sha2::{Digest, Sha256};
use std::time::Duration;
use zeroize::Zeroizing;

/// Bitbucket Cloud's site (the OAuth endpoints live under `/site/oauth2/`).
pub const CLOUD_SITE: &str = "https://bitbucket.org";

/// The scope a Data Center login asks for: reading the repositories the person may read.
pub const DATA_CENTER_SCOPE: &str = "REPO_READ";

/// Which Bitbucket people log in with (one per coordinator).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Provider {
    /// Bitbucket Cloud: OAuth under `site`, the REST API 2.0 at `api`.
    Cloud,
    /// Bitbucket Data Center at `site` (OAuth and REST under it); `server` is its
    /// `host[:port]` as its projects' keys name it (`bitbucket-dc:SERVER/ID`).
    DataCenter { server: String },
}

/// The OAuth client's credentials (`--bitbucket-oauth-file`): Cloud's consumer, or Data
/// Center's incoming application link.
#[derive(Clone)]
pub struct OAuthClient {
    pub key: String,
    pub secret: Zeroizing<String>,
}

/// How Bosun reaches Bitbucket for people: where it is, and the OAuth client if there is
/// one. A Data Center coordinator may have none: its people then log in with HTTP access
/// tokens only.
#[derive(Clone)]
pub struct Consumer {
    pub client: Option<OAuthClient>,
    /// `https://bitbucket.org`, or the Data Center's base URL (tests: their recorder).
    pub site: String,
    /// `https://api.bitbucket.org/2.0` (Cloud only).
    pub api: String,
    pub provider: Provider,
}

impl std::fmt::Debug for Consumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consumer")
            .field("key", &self.client.as_ref().map(|c| c.key.as_str()))
            .field("site", &self.site)
            .field("api", &self.api)
            .field("provider", &self.provider)
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

impl OAuthError {
    /// The HTTP status Bitbucket refused a REST call with (401: the token is not, or no
    /// longer, accepted).
    pub fn status(&self) -> Option<u16> {
        match self {
            OAuthError::Rest(e) => e.status(),
            _ => None,
        }
    }
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

/// Bitbucket's account, as `GET /2.0/user` says it (Data Center: `dc:SERVER/ID` for the
/// uuid, so it never meets a Cloud account's, and the user's slug for the nickname).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub uuid: String,
    pub nickname: String,
    pub display_name: String,
}

impl Consumer {
    fn site(&self) -> &str {
        self.site.trim_end_matches('/')
    }

    /// Where the browser goes to log in (`None` without an OAuth client).
    pub fn authorize_url(&self, state: &str, verifier: &str, redirect_uri: &str) -> Option<String> {
        let client = self.client.as_ref()?;
        let (path, scope) = match self.provider {
            Provider::Cloud => ("/site/oauth2/authorize", String::new()),
            Provider::DataCenter { .. } => (
                "/rest/oauth2/latest/authorize",
                format!("&scope={DATA_CENTER_SCOPE}"),
            ),
        };
        Some(format!(
            "{}{path}?client_id={}&response_type=code&state={}\
             &code_challenge={}&code_challenge_method=S256&redirect_uri={}{scope}",
            self.site(),
            form_encode(&client.key),
            form_encode(state),
            pkce_challenge(verifier),
            form_encode(redirect_uri),
        ))
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
        let Some(client) = self.client.as_ref() else {
            return Err(OAuthError::Exchange(
                "no OAuth client is set up on this coordinator (serve --bitbucket-oauth-file)"
                    .to_owned(),
            ));
        };
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("bosun/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| OAuthError::Exchange(e.without_url().to_string()))?;
        // Cloud takes the consumer in HTTP Basic; Data Center in the form (RFC 6749 2.3.1).
        let (req, body) = match self.provider {
            Provider::Cloud => (
                http.post(format!("{}/site/oauth2/access_token", self.site()))
                    .basic_auth(&client.key, Some(client.secret.as_str())),
                Zeroizing::new(body.to_owned()),
            ),
            Provider::DataCenter { .. } => (
                http.post(format!("{}/rest/oauth2/latest/token", self.site())),
                Zeroizing::new(format!(
                    "{body}&client_id={}&client_secret={}",
                    form_encode(&client.key),
                    form_encode(&client.secret)
                )),
            ),
        };
        let resp = req
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
                call: "the token endpoint",
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
        if let Provider::DataCenter { server } = &self.provider {
            return self.data_center_account(server, token).await;
        }
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
        if let Provider::DataCenter { server } = &self.provider {
            return self.data_center_permissions(server, token).await;
        }
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
        if let Provider::DataCenter { .. } = self.provider {
            // The token's own user's keys (Data Center's SSH REST API, `text` and `label`).
            let values = self
                .client(token)?
                .list(
                    &format!("{}/rest/ssh/latest/keys", self.site()),
                    Paging::DataCenter,
                )
                .await?;
            return Ok(values
                .iter()
                .filter_map(|v| {
                    let key = v["text"].as_str()?;
                    Some((key.to_owned(), v["label"].as_str().unwrap_or("").to_owned()))
                })
                .collect());
        }
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

impl Consumer {
    async fn data_center_account(
        &self,
        server: &str,
        token: &Zeroizing<String>,
    ) -> Result<Account, OAuthError> {
        let name = self.whoami(token).await?;
        self.data_center_user(server, token, &name).await
    }

    /// The Data Center user a pasted HTTP access token acts as: its name from the
    /// `X-AUSERNAME` header Data Center puts on an authenticated REST answer (here the
    /// small `GET /rest/api/latest/application-properties`), then the user as the OAuth
    /// login reads it. Not `whoami`: since Data Center 8.9.22, 8.19.12 and 9.3.2 an access
    /// token is taken only under `/rest` and `/scm`, elsewhere it is sent to the login page.
    /// A token Data Center does not accept is a 401 refusal ([`OAuthError::status`]).
    pub async fn access_token_account(
        &self,
        token: &Zeroizing<String>,
    ) -> Result<Account, OAuthError> {
        let Provider::DataCenter { server } = &self.provider else {
            return Err(OAuthError::Exchange(
                "HTTP access tokens are Bitbucket Data Center's (serve --bitbucket-dc-url)"
                    .to_owned(),
            ));
        };
        let name = self.token_user_name(token).await?;
        self.data_center_user(server, token, &name).await
    }

    async fn token_user_name(&self, token: &Zeroizing<String>) -> Result<String, OAuthError> {
        let call = "GET /rest/api/latest/application-properties";
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("bosun/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| OAuthError::Exchange(e.without_url().to_string()))?;
        let resp = http
            .get(format!(
                "{}/rest/api/latest/application-properties",
                self.site()
            ))
            .bearer_auth(token.as_str())
            .header("accept", "application/json")
            .send()
            .await
            .map_err(|e| OAuthError::Exchange(format!("{call}: {}", e.without_url())))?;
        let status = resp.status().as_u16();
        let name = resp
            .headers()
            .get("x-ausername")
            .and_then(|v| v.to_str().ok())
            .map(|v| v.trim().to_owned());
        let refused = |message: &str| {
            OAuthError::Rest(RestError::Refused {
                call: call.to_owned(),
                status,
                message: message.to_owned(),
            })
        };
        if status == 401 || status == 403 {
            return Err(refused(
                "the token is not accepted (wrong, revoked or expired)",
            ));
        }
        if !(200..300).contains(&status) {
            return Err(refused("no answer about the token"));
        }
        match name {
            Some(n) if !n.is_empty() && n.len() <= 255 && !n.contains(['\n', '\r']) => Ok(n),
            // Answered, but to nobody: an anonymous request (the token was not taken).
            _ => Err(OAuthError::Rest(RestError::Refused {
                call: call.to_owned(),
                status: 401,
                message: "Data Center names no user for the token (no X-AUSERNAME)".to_owned(),
            })),
        }
    }

    async fn data_center_user(
        &self,
        server: &str,
        token: &Zeroizing<String>,
        name: &str,
    ) -> Result<Account, OAuthError> {
        let values = self
            .client(token)?
            .list(
                &format!(
                    "{}/rest/api/latest/users?filter={}",
                    self.site(),
                    form_encode(name)
                ),
                Paging::DataCenter,
            )
            .await?;
        let shape = |what| OAuthError::Shape {
            call: "GET /rest/api/latest/users",
            what,
        };
        // The filter matches names, display names and addresses by prefix: the exact name.
        let user = values
            .iter()
            .find(|u| {
                u["name"]
                    .as_str()
                    .is_some_and(|n| n.eq_ignore_ascii_case(name))
            })
            .ok_or(shape("the user `whoami` names"))?;
        let id = user["id"].as_u64().ok_or(shape("`id`"))?;
        let slug = user["slug"]
            .as_str()
            .filter(|s| !s.is_empty())
            .ok_or(shape("`slug`"))?;
        Ok(Account {
            uuid: crate::model::people::data_center_person(server, id),
            nickname: slug.to_owned(),
            display_name: user["displayName"].as_str().unwrap_or(slug).to_owned(),
        })
    }

    /// The user name the token acts as (`text/plain`; empty when the token is not accepted).
    async fn whoami(&self, token: &Zeroizing<String>) -> Result<String, OAuthError> {
        let call = "GET /plugins/servlet/applinks/whoami";
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("bosun/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| OAuthError::Exchange(e.without_url().to_string()))?;
        let resp = http
            .get(format!("{}/plugins/servlet/applinks/whoami", self.site()))
            .bearer_auth(token.as_str())
            .send()
            .await
            .map_err(|e| OAuthError::Exchange(format!("{call}: {}", e.without_url())))?;
        let status = resp.status();
        let text = resp
            .text()
            .await
            .map_err(|e| OAuthError::Exchange(format!("{call}: {}", e.without_url())))?;
        let name = text.trim();
        if !status.is_success()
            || name.is_empty()
            || name.len() > 255
            || name.contains(['\n', '\r'])
        {
            return Err(OAuthError::Exchange(format!(
                "{call}: Bitbucket answered {} without a user name",
                status.as_u16()
            )));
        }
        Ok(name.to_owned())
    }

    async fn data_center_permissions(
        &self,
        server: &str,
        token: &Zeroizing<String>,
    ) -> Result<Vec<(String, Role)>, OAuthError> {
        let client = self.client(token)?;
        let mut out = Vec::new();
        for word in crate::model::people::DATA_CENTER_PERMISSIONS {
            let values = client
                .list(
                    &format!("{}/rest/api/latest/repos?permission={word}", self.site()),
                    Paging::DataCenter,
                )
                .await?;
            if let Some(role) = crate::model::people::data_center_role(word) {
                out.extend(data_center_permissions_of(server, role, &values));
            }
        }
        Ok(out)
    }
}

/// The repositories of one of Data Center's `GET /rest/api/latest/repos?permission=…` lists,
/// each as its project's slug (`PROJECT/repo` in lower case) and its key
/// (`bitbucket-dc:SERVER/ID`), with `role`; an entry lacking them gives nothing.
pub fn data_center_permissions_of(
    server: &str,
    role: Role,
    values: &[serde_json::Value],
) -> Vec<(String, Role)> {
    let mut out = Vec::new();
    for v in values {
        if let (Some(project), Some(slug)) = (v["project"]["key"].as_str(), v["slug"].as_str()) {
            out.push((format!("{project}/{slug}").to_ascii_lowercase(), role));
        }
        if let Some(id) = v["id"].as_u64() {
            out.push((crate::bitbucket::data_center::key(server, id), role));
        }
    }
    out
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
            client: Some(OAuthClient {
                key: "k".into(),
                secret: Zeroizing::new("s3cret".into()),
            }),
            site: "https://bitbucket.org/".into(),
            api: "https://api.bitbucket.org/2.0".into(),
            provider: Provider::Cloud,
        };
        let u = c
            .authorize_url(
                "st",
                "verifier",
                "https://ci.example/login/bitbucket/callback",
            )
            .expect("a client");
        assert!(u.starts_with("https://bitbucket.org/site/oauth2/authorize?client_id=k&response_type=code&state=st&code_challenge="), "{u}");
        assert!(u.contains("code_challenge_method=S256"));
        assert!(u.contains("redirect_uri=https%3A%2F%2Fci.example%2Flogin%2Fbitbucket%2Fcallback"));
        assert!(!u.contains("s3cret") && !u.contains("verifier"));
        assert!(!format!("{c:?}").contains("s3cret"));
    }

    #[test]
    fn data_center_logins_go_to_its_oauth_provider_with_a_scope() {
        let c = Consumer {
            client: Some(OAuthClient {
                key: "k".into(),
                secret: Zeroizing::new("s3cret".into()),
            }),
            site: "https://bb.example.com/".into(),
            api: String::new(),
            provider: Provider::DataCenter {
                server: "bb.example.com".into(),
            },
        };
        let u = c
            .authorize_url("st", "verifier", "https://ci.example/cb")
            .expect("a client");
        assert!(
            u.starts_with("https://bb.example.com/rest/oauth2/latest/authorize?client_id=k&response_type=code&state=st&code_challenge="),
            "{u}"
        );
        assert!(u.ends_with("&scope=REPO_READ"), "{u}");
        assert!(!u.contains("s3cret") && !u.contains("verifier"));
    }

    #[test]
    fn without_an_oauth_client_there_is_no_authorize_url() {
        let c = Consumer {
            client: None,
            site: "https://bb.example.com".into(),
            api: String::new(),
            provider: Provider::DataCenter {
                server: "bb.example.com".into(),
            },
        };
        assert_eq!(
            c.authorize_url("st", "verifier", "https://ci.example/cb"),
            None
        );
    }

    #[test]
    fn data_center_repositories_read_as_slug_and_key() {
        let v: Vec<serde_json::Value> = serde_json::from_str(
            r#"[{"slug":"widget","id":84,"name":"Widget","project":{"key":"ACME","id":1}},
                {"slug":"x"},
                {"name":"no slug nor id"}]"#,
        )
        .expect("json");
        assert_eq!(
            data_center_permissions_of("bb.example.com:7990", Role::Write, &v),
            [
                ("acme/widget".to_owned(), Role::Write),
                (
                    "bitbucket-dc:bb.example.com:7990/84".to_owned(),
                    Role::Write
                )
            ]
        );
    }
}

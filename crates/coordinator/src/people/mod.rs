//! People: logging in with Bitbucket, sessions, CSRF tokens, and who may do what on a
//! project (docs/people.md).
//!
//! - **Login** ([`People::begin`], [`finish_login`]): the OAuth 2.0 authorization-code flow of
//!   Bitbucket Cloud or Data Center ([`oauth`], one per coordinator) with a random `state` and a PKCE verifier, both kept here in
//!   memory for ten minutes and bound to the browser by a short-lived cookie holding the
//!   state; the code is exchanged on the server, the account and its repository permissions
//!   read with the token, the token dropped. On Data Center also [`token_login`]: an HTTP
//!   access token pasted in a form bound to the browser by its own cookie (login CSRF),
//!   failed tries limited per client address; the same `open_login` after either.
//! - **The kept credential** (an OAuth refresh token, or the pasted HTTP access token,
//!   sealed by the store) reads the permissions again without the person
//!   ([`refresh_permissions`]); a pasted token Data Center refuses is forgotten.
//! - **Sessions**: a random 256-bit id in an `HttpOnly`, `SameSite=Lax` cookie (`Secure`
//!   behind TLS); the store keeps only its SHA-256 with an expiry. Every login makes a new
//!   id and ends the session the browser came with (no fixation); logout ends it on the
//!   server.
//! - **CSRF**: a state-changing request carried by the session cookie must also carry the
//!   session's CSRF token (a form field or the `X-Bosun-CSRF` header): a digest of the
//!   session id under its own label, which a page of another site cannot read.
//! - **What a person may do** is `model::people`'s table, with the role their repository
//!   permissions give them ([`role_on`]).

pub mod oauth;
pub mod ssh;
pub mod tokens;

use crate::error::CoordError;
use crate::model::people::{self as rules, Action, Asker, Credential, CredentialKind, Role};
use crate::store::{Backend, Person, ProjectAccess, Resource};
use crate::text::{random_hex, sha256_hex};
use crate::AppState;
use axum::http::HeaderMap;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use zeroize::Zeroizing;

/// The session cookie.
pub const SESSION_COOKIE: &str = "bosun_session";
/// The cookie binding a login under way to the browser that started it (holds its `state`).
pub const LOGIN_COOKIE: &str = "bosun_login";
/// The cookie binding the token login form to the browser that was shown it (login CSRF:
/// there is no session yet whose token could guard it).
pub const LOGIN_FORM_COOKIE: &str = "bosun_login_form";
/// Addresses whose failed token logins are remembered at most (the oldest windows go
/// first): a flood from many addresses cannot grow the server's memory without bound.
const MAX_FAILING_ADDRESSES: usize = 10_000;
/// The header a script sends the CSRF token in (forms send the field `csrf`).
pub const CSRF_HEADER: &str = "x-bosun-csrf";
/// A login must come back from Bitbucket within this.
const LOGIN_WITHIN: Duration = Duration::from_secs(600);
/// Logins under way at most (older ones are dropped first): a flood of started logins
/// cannot grow the server's memory without bound.
const MAX_PENDING: usize = 10_000;

/// How people log in, from `serve`'s settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Bitbucket's OAuth consumer (`--bitbucket-oauth-file`, Data Center's with
    /// `--bitbucket-dc-url`); `None`: nobody can log in.
    pub consumer: Option<oauth::Consumer>,
    /// How long a session lasts (`--session-lifetime`).
    pub session_lifetime: Duration,
    /// Cookies are `Secure` (the server is reached over TLS).
    pub secure_cookies: bool,
    /// Where browsers reach this server (the OAuth callback is under it).
    pub public_url: String,
    /// Stored repository permissions older than this are read again from Bitbucket
    /// (`--permissions-refresh`); a sensitive action reads them again whatever their age.
    pub permissions_refresh: Duration,
}

/// Why a login did not complete (shown to the person; never quoting a code or token).
#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    #[error("logging in with Bitbucket is not set up on this coordinator (serve --bitbucket-oauth-file)")]
    NotConfigured,
    #[error("this login was not started from this browser, or took longer than 10 minutes: log in again")]
    BadState,
    #[error("Bitbucket refused the login: {0}")]
    Refused(String),
    #[error("logging in with an HTTP access token is Bitbucket Data Center's, and this coordinator logs in with Bitbucket Cloud")]
    NotDataCenter,
    #[error("this coordinator takes Bitbucket Data Center HTTP access tokens only (no OAuth client is set up: serve --bitbucket-oauth-file): paste one on the login page")]
    TokensOnly,
    #[error("this form did not come from this browser, or is older than 10 minutes: reload the page and paste the token again")]
    FormExpired,
    #[error("Bitbucket Data Center did not accept this HTTP access token: check that it was copied whole, has not expired or been revoked, and is your own (Manage account → HTTP access tokens, with Repository read permission)")]
    TokenRefused,
    #[error("too many failed logins from your address: try again in {minutes} minute(s)")]
    TooManyAttempts { minutes: i64 },
    #[error("Bitbucket: {0}")]
    OAuth(#[from] oauth::OAuthError),
    #[error("{0}")]
    Coord(#[from] CoordError),
}

struct Pending {
    verifier: Zeroizing<String>,
    return_to: String,
    made: Instant,
}

/// Logins under way, and the settings.
pub struct People {
    pub settings: Settings,
    pending: Mutex<HashMap<String, Pending>>,
    /// People whose permissions are being read again now (one reader per person).
    refreshing: Mutex<std::collections::HashSet<i64>>,
    /// Signs the token login form's CSRF field for its cookie (made at start; a restart
    /// only asks a form shown before it to be reloaded).
    form_key: Option<ring::hmac::Key>,
    /// Failed token logins per client address (IPv6 by its /64).
    failures: Mutex<HashMap<IpAddr, rules::Failures>>,
}

/// The token login form's cookie (to set) and the CSRF field that goes with it.
pub struct LoginForm {
    pub set_cookie: String,
    pub csrf: String,
}

/// A started login: where to send the browser and the cookie to set.
pub struct Begun {
    pub location: String,
    pub set_cookie: String,
}

/// A finished login: the new session's cookie (and the login cookie's removal), and where
/// to go.
pub struct LoggedIn {
    pub person: Person,
    pub set_cookies: Vec<String>,
    pub return_to: String,
}

/// Who a browser request comes from.
#[derive(Debug, Clone)]
pub struct Viewer {
    pub person: Person,
    /// The session's CSRF token, for the page's forms and scripts.
    pub csrf: String,
    session_digest: String,
}

fn session_digest(id: &str) -> String {
    sha256_hex(format!("bosun session:{id}").as_bytes())
}

fn csrf_of(id: &str) -> String {
    sha256_hex(format!("bosun csrf:{id}").as_bytes())
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn cookie_header(headers: &HeaderMap) -> String {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect::<Vec<_>>()
        .join("; ")
}

impl People {
    pub fn new(settings: Settings) -> People {
        let rng = ring::rand::SystemRandom::new();
        // Without randomness no form key (a fixed one would be known to everyone): the
        // token form is then neither shown nor taken.
        let form_key = ring::hmac::Key::generate(ring::hmac::HMAC_SHA256, &rng).ok();
        People {
            settings,
            pending: Mutex::new(HashMap::new()),
            refreshing: Mutex::new(std::collections::HashSet::new()),
            form_key,
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// Whether people may log in with a Data Center HTTP access token (a Data Center
    /// coordinator).
    pub fn offers_access_tokens(&self) -> bool {
        self.settings
            .consumer
            .as_ref()
            .is_some_and(|c| matches!(c.provider, oauth::Provider::DataCenter { .. }))
    }

    fn form_csrf(&self, cookie: &str) -> Option<String> {
        let key = self.form_key.as_ref()?;
        Some(crate::text::hex(
            ring::hmac::sign(key, format!("bosun login form:{cookie}").as_bytes()).as_ref(),
        ))
    }

    /// A new token login form: its cookie (when it was made, and 128 random bits, in hex)
    /// and its CSRF field, the cookie signed with the server's key. A page of another site
    /// can neither read the field nor set the cookie, so it cannot log a browser in as
    /// someone else.
    pub fn login_form(&self) -> Result<LoginForm, LoginError> {
        let made = u64::try_from(crate::store::now_ms()).unwrap_or(0);
        let cookie = format!("{made:016x}{}", random_hex(16)?);
        let csrf = self.form_csrf(&cookie).ok_or_else(|| {
            CoordError::Invalid("no randomness for the login form's key at start".to_owned())
        })?;
        Ok(LoginForm {
            csrf,
            set_cookie: rules::cookie(
                LOGIN_FORM_COOKIE,
                &cookie,
                LOGIN_WITHIN.as_secs(),
                self.settings.secure_cookies,
            ),
        })
    }

    /// Whether `csrf` is the field of the form whose cookie this browser sent, made within
    /// [`LOGIN_WITHIN`].
    fn login_form_ok(&self, headers: &HeaderMap, csrf: Option<&str>) -> bool {
        let cookies = cookie_header(headers);
        let Some(cookie) = rules::cookie_value(&cookies, LOGIN_FORM_COOKIE) else {
            return false;
        };
        let made = cookie
            .get(..16)
            .and_then(|h| i64::from_str_radix(h, 16).ok())
            .unwrap_or(0);
        let age = crate::store::now_ms().saturating_sub(made);
        let fresh = (0..i64::try_from(LOGIN_WITHIN.as_millis()).unwrap_or(i64::MAX)).contains(&age);
        match (csrf, self.form_csrf(cookie)) {
            (Some(given), Some(want)) => {
                fresh && constant_time_eq(given.as_bytes(), want.as_bytes())
            }
            _ => false,
        }
    }

    fn failures(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, rules::Failures>> {
        self.failures.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `Err` when `addr` failed too often lately ([`rules::may_try_login`]).
    fn may_try(&self, addr: IpAddr, now: i64) -> Result<(), LoginError> {
        let key = crate::per_address::key(addr);
        match rules::may_try_login(self.failures().get(&key).copied(), now) {
            None => Ok(()),
            Some(until) => Err(LoginError::TooManyAttempts {
                minutes: (until.saturating_sub(now) + 59_999) / 60_000,
            }),
        }
    }

    fn failed(&self, addr: IpAddr, now: i64) {
        let key = crate::per_address::key(addr);
        let mut f = self.failures();
        if f.len() >= MAX_FAILING_ADDRESSES && !f.contains_key(&key) {
            f.retain(|_, v| now < v.since.saturating_add(rules::FAILED_LOGIN_WINDOW_MS));
            if f.len() >= MAX_FAILING_ADDRESSES {
                if let Some(oldest) = f.iter().min_by_key(|(_, v)| v.since).map(|(k, _)| *k) {
                    f.remove(&oldest);
                }
            }
        }
        let next = rules::one_more_failure(f.get(&key).copied(), now);
        f.insert(key, next);
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, HashMap<String, Pending>> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The OAuth callback, as Bitbucket's consumer must be set up with.
    pub fn redirect_uri(&self) -> String {
        format!(
            "{}/login/bitbucket/callback",
            self.settings.public_url.trim_end_matches('/')
        )
    }

    /// Whether logging in is set up.
    pub fn enabled(&self) -> bool {
        self.settings.consumer.is_some()
    }

    /// Whether people log in through Bitbucket's OAuth (an OAuth client is set up).
    pub fn offers_oauth(&self) -> bool {
        self.settings
            .consumer
            .as_ref()
            .is_some_and(|c| c.client.is_some())
    }

    /// Start a login: a new `state` and PKCE verifier, remembered for [`LOGIN_WITHIN`].
    pub fn begin(&self, return_to: Option<&str>) -> Result<Begun, LoginError> {
        let consumer = self
            .settings
            .consumer
            .as_ref()
            .ok_or(LoginError::NotConfigured)?;
        let state = random_hex(32)?;
        let verifier = Zeroizing::new(random_hex(48)?);
        let location = consumer
            .authorize_url(&state, &verifier, &self.redirect_uri())
            .ok_or(LoginError::TokensOnly)?;
        {
            let mut p = self.pending();
            p.retain(|_, v| v.made.elapsed() < LOGIN_WITHIN);
            if p.len() >= MAX_PENDING {
                if let Some(oldest) = p.iter().min_by_key(|(_, v)| v.made).map(|(k, _)| k.clone()) {
                    p.remove(&oldest);
                }
            }
            p.insert(
                state.clone(),
                Pending {
                    verifier,
                    return_to: rules::safe_return_to(return_to),
                    made: Instant::now(),
                },
            );
        }
        Ok(Begun {
            location,
            set_cookie: rules::cookie(
                LOGIN_COOKIE,
                &state,
                LOGIN_WITHIN.as_secs(),
                self.settings.secure_cookies,
            ),
        })
    }

    fn session_cookie(&self, id: &str) -> String {
        rules::cookie(
            SESSION_COOKIE,
            id,
            self.settings.session_lifetime.as_secs(),
            self.settings.secure_cookies,
        )
    }

    /// The `Set-Cookie` that removes the session cookie.
    pub fn clear_session_cookie(&self) -> String {
        rules::cookie(SESSION_COOKIE, "", 0, self.settings.secure_cookies)
    }
}

/// Finish a login: `state` must be the one this browser's login cookie holds and still
/// pending (one use); the code is exchanged, the account and its permissions read, the
/// person recorded, a new session opened (the browser's earlier one ended).
pub async fn finish_login(
    state: &AppState,
    headers: &HeaderMap,
    code: &str,
    returned_state: &str,
) -> Result<LoggedIn, LoginError> {
    let people = &state.people;
    let consumer = people
        .settings
        .consumer
        .clone()
        .ok_or(LoginError::NotConfigured)?;
    let cookies = cookie_header(headers);
    let bound = rules::cookie_value(&cookies, LOGIN_COOKIE);
    if bound.is_none_or(|b| !constant_time_eq(b.as_bytes(), returned_state.as_bytes())) {
        return Err(LoginError::BadState);
    }
    let pending = people
        .pending()
        .remove(returned_state)
        .filter(|p| p.made.elapsed() < LOGIN_WITHIN)
        .ok_or(LoginError::BadState)?;
    let tokens = consumer
        .exchange(code, &pending.verifier, &people.redirect_uri())
        .await?;
    let account = consumer.account(&tokens.access).await?;
    let permissions = consumer.permissions(&tokens.access).await?;
    let credential = tokens.refresh.map(|secret| Credential {
        kind: CredentialKind::RefreshToken,
        secret,
    });
    let mut done = open_login(
        state,
        headers,
        account,
        permissions,
        credential,
        "with Bitbucket",
    )
    .await?;
    done.set_cookies.push(rules::cookie(
        LOGIN_COOKIE,
        "",
        0,
        people.settings.secure_cookies,
    ));
    done.return_to = pending.return_to;
    Ok(done)
}

/// Log in with a Bitbucket Data Center HTTP access token pasted in the login form: the
/// form must be the one this browser was shown ([`People::login_form`]), the address must
/// not have failed too often lately, and Data Center must name the token's user; then the
/// login goes on as the OAuth one does, the token kept sealed to read the permissions again.
/// The token never reaches a log, an error, a page or the audit log.
pub async fn token_login(
    state: &AppState,
    headers: &HeaderMap,
    addr: IpAddr,
    token: Zeroizing<String>,
    csrf: Option<&str>,
    return_to: Option<&str>,
) -> Result<LoggedIn, LoginError> {
    let people = &state.people;
    let consumer = people
        .settings
        .consumer
        .clone()
        .ok_or(LoginError::NotConfigured)?;
    if !people.offers_access_tokens() {
        return Err(LoginError::NotDataCenter);
    }
    // A forged form is refused before anything else, and is not an attempt at a token.
    if !people.login_form_ok(headers, csrf) {
        return Err(LoginError::FormExpired);
    }
    let now = crate::store::now_ms();
    people.may_try(addr, now)?;
    let token = Zeroizing::new(token.trim().to_owned());
    let read = if rules::access_token_shape_ok(&token) {
        match consumer.access_token_account(&token).await {
            Ok(account) => consumer
                .permissions(&token)
                .await
                .map(|permissions| (account, permissions)),
            Err(e) => Err(e),
        }
    } else {
        Err(oauth::OAuthError::Rest(
            crate::bitbucket::rest::RestError::Refused {
                call: "the login form".to_owned(),
                status: 401,
                message: "not an HTTP access token".to_owned(),
            },
        ))
    };
    let (account, permissions) = match read {
        Ok(r) => r,
        Err(e) if e.status().is_some_and(|s| s == 401 || s == 403) => {
            people.failed(addr, now);
            return Err(LoginError::TokenRefused);
        }
        Err(e) => return Err(e.into()),
    };
    people.failures().remove(&crate::per_address::key(addr));
    let credential = Some(Credential {
        kind: CredentialKind::HttpAccessToken,
        secret: token,
    });
    let mut done = open_login(
        state,
        headers,
        account,
        permissions,
        credential,
        "with a Bitbucket HTTP access token",
    )
    .await?;
    done.set_cookies.push(rules::cookie(
        LOGIN_FORM_COOKIE,
        "",
        0,
        people.settings.secure_cookies,
    ));
    done.return_to = rules::safe_return_to(return_to);
    Ok(done)
}

/// The one way a login ends, whatever Bitbucket credential it came with: the person
/// recorded, their permissions and credential kept, a new session opened in the same
/// transaction that ends the browser's earlier one (no fixation), and the login audited.
async fn open_login(
    state: &AppState,
    headers: &HeaderMap,
    account: oauth::Account,
    permissions: Vec<(String, Role)>,
    credential: Option<Credential>,
    how: &'static str,
) -> Result<LoggedIn, LoginError> {
    let people = &state.people;
    let cookies = cookie_header(headers);
    let earlier = rules::cookie_value(&cookies, SESSION_COOKIE).map(session_digest);
    let id = random_hex(32)?;
    let digest = session_digest(&id);
    let expires = crate::store::now_ms().saturating_add(
        i64::try_from(people.settings.session_lifetime.as_millis()).unwrap_or(i64::MAX),
    );
    let person = state
        .db(move |s: &dyn Backend| {
            let p = s.person_logged_in(&account.uuid, &account.nickname, &account.display_name)?;
            s.store_permissions(p.id, &permissions, crate::store::now_ms())?;
            s.set_credential(p.id, credential.as_ref())?;
            s.open_session(&digest, p.id, expires, earlier.as_deref())?;
            crate::audit::record(
                s,
                crate::audit::Event::new(
                    crate::audit::Actor::Person(p.nickname.clone()),
                    crate::audit::AuditAction::Login,
                )
                .detail(how),
            )?;
            Ok(p)
        })
        .await?;
    tracing::info!(person = %crate::printable(&person.nickname), "logged in {how}");
    Ok(LoggedIn {
        person,
        set_cookies: vec![people.session_cookie(&id)],
        return_to: "/".to_owned(),
    })
}

/// The person whose unexpired session the request's cookie names, if any.
pub async fn viewer(state: &AppState, headers: &HeaderMap) -> crate::Result<Option<Viewer>> {
    let cookies = cookie_header(headers);
    let Some(id) = rules::cookie_value(&cookies, SESSION_COOKIE).map(str::to_owned) else {
        return Ok(None);
    };
    let digest = session_digest(&id);
    let d = digest.clone();
    let person = state
        .db(move |s: &dyn Backend| s.session_person(&d))
        .await?;
    Ok(person.map(|person| Viewer {
        person,
        csrf: csrf_of(&id),
        session_digest: digest,
    }))
}

/// Whether `given` is the viewer's CSRF token.
pub fn csrf_ok(viewer: &Viewer, given: Option<&str>) -> bool {
    given.is_some_and(|g| constant_time_eq(g.as_bytes(), viewer.csrf.as_bytes()))
}

/// The CSRF token a script sent in [`CSRF_HEADER`].
pub fn csrf_header(headers: &HeaderMap) -> Option<&str> {
    headers.get(CSRF_HEADER).and_then(|v| v.to_str().ok())
}

/// End the viewer's session.
pub async fn logout(state: &AppState, viewer: &Viewer) -> crate::Result<()> {
    let d = viewer.session_digest.clone();
    let actor = crate::audit::Actor::Person(viewer.person.nickname.clone());
    state
        .db(move |s: &dyn Backend| {
            s.close_session(&d)?;
            crate::audit::record(
                s,
                crate::audit::Event::new(actor, crate::audit::AuditAction::Logout),
            )
        })
        .await?;
    tracing::info!(person = %crate::printable(&viewer.person.nickname), "logged out");
    Ok(())
}

/// What a request may do, whoever it comes from: a coordinator-wide operator (an operator
/// token), a person (their session), or nobody logged in.
#[derive(Debug, Clone)]
pub enum Asking {
    Operator(String),
    Person(Viewer),
    Anonymous,
}

impl Asking {
    /// The person's id, if a person asks.
    fn person(&self) -> Option<&Person> {
        match self {
            Asking::Person(v) => Some(&v.person),
            _ => None,
        }
    }

    fn everything(&self) -> bool {
        match self {
            Asking::Operator(_) => true,
            Asking::Person(v) => v.person.admin,
            Asking::Anonymous => false,
        }
    }
}

/// Read `person`'s repository permissions again from Bitbucket (with their refresh token)
/// when the stored ones are older than `--permissions-refresh`, or now (`force`: before a
/// sensitive action). Fails closed: when Bitbucket cannot be asked or refuses (the person
/// revoked Bosun's access, the account is gone, no refresh token), the stored permissions
/// are dropped, so they give nothing until the next successful read or login.
pub async fn refresh_permissions(
    state: &AppState,
    person: &Person,
    force: bool,
) -> crate::Result<()> {
    let people = &state.people;
    let Some(consumer) = people.settings.consumer.clone() else {
        return Ok(());
    };
    let now = crate::store::now_ms();
    let every = i64::try_from(people.settings.permissions_refresh.as_millis()).unwrap_or(i64::MAX);
    let due = force
        || person
            .permissions_fetched
            .is_none_or(|t| now.saturating_sub(t) >= every);
    if !due {
        return Ok(());
    }
    let id = person.id;
    {
        let mut busy = people.refreshing.lock().unwrap_or_else(|p| p.into_inner());
        // Someone else reads them now: a request that need not wait uses what is stored.
        if !busy.insert(id) && !force {
            return Ok(());
        }
    }
    let result = async {
        let read = match bitbucket_access(state, &consumer, id).await? {
            Err(why) => Err(why),
            Ok((kind, access)) => match consumer.permissions(&access).await {
                Ok(p) => Ok(p),
                Err(e) => {
                    forget_refused(state, id, kind, &e).await?;
                    Err(e.to_string())
                }
            },
        };
        let at = crate::store::now_ms();
        match read {
            Ok(permissions) => {
                state
                    .db(move |s: &dyn Backend| s.store_permissions(id, &permissions, at))
                    .await
            }
            Err(why) => {
                tracing::warn!(
                    person = %crate::printable(&person.nickname),
                    "repository permissions could not be read again, so none are kept: {why}"
                );
                state
                    .db(move |s: &dyn Backend| s.store_permissions(id, &[], at))
                    .await
            }
        }
    }
    .await;
    people
        .refreshing
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(&id);
    result
}

/// An access token for `person`'s Bitbucket account from their kept credential: a refresh
/// token is swapped for one (and the new refresh token kept), a Data Center HTTP access
/// token is one. `Ok(Err(why))` when there is none to be had (nothing kept, Bitbucket
/// refused the refresh); `why` never holds a token.
pub(crate) async fn bitbucket_access(
    state: &AppState,
    consumer: &oauth::Consumer,
    person: i64,
) -> crate::Result<Result<(CredentialKind, Zeroizing<String>), String>> {
    let Some(credential) = state
        .db(move |s: &dyn Backend| s.credential(person))
        .await?
    else {
        return Ok(Err("no Bitbucket credential kept (log in again)".to_owned()));
    };
    match credential.kind {
        CredentialKind::HttpAccessToken => Ok(Ok((credential.kind, credential.secret))),
        CredentialKind::RefreshToken => match consumer.refresh(&credential.secret).await {
            Err(e) => Ok(Err(e.to_string())),
            Ok(t) => {
                if let Some(r) = t.refresh {
                    let kept = Credential {
                        kind: CredentialKind::RefreshToken,
                        secret: r,
                    };
                    state
                        .db(move |s: &dyn Backend| s.set_credential(person, Some(&kept)))
                        .await?;
                }
                Ok(Ok((credential.kind, t.access)))
            }
        },
    }
}

/// A pasted HTTP access token Data Center refuses (401: revoked, expired) is forgotten: it
/// will not be accepted again, and sending it on would count against the account's failed
/// logins on Data Center. The person pastes a new one by logging in again.
pub(crate) async fn forget_refused(
    state: &AppState,
    person: i64,
    kind: CredentialKind,
    e: &oauth::OAuthError,
) -> crate::Result<()> {
    if kind == CredentialKind::HttpAccessToken && e.status() == Some(401) {
        state
            .db(move |s: &dyn Backend| s.set_credential(person, None))
            .await?;
    }
    Ok(())
}

/// Who a request comes from: an operator's bearer token (unknown or revoked: `None`, the
/// request is refused), else the session cookie's person, else nobody.
pub async fn asking(state: &AppState, headers: &HeaderMap) -> crate::Result<Option<Asking>> {
    let bearer = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|t| t.trim().to_owned());
    if let Some(token) = bearer {
        return Ok(state
            .db(move |s: &dyn Backend| s.operator(&token))
            .await?
            .map(Asking::Operator));
    }
    Ok(Some(match viewer(state, headers).await? {
        Some(v) => {
            refresh_permissions(state, &v.person, false).await?;
            Asking::Person(v)
        }
        None => Asking::Anonymous,
    }))
}

/// The rules' view of who asks about a project.
fn asker(permissions: &[(String, Role)], who: &Asking, project: &ProjectAccess) -> Asker {
    Asker {
        role: if who.person().is_some() {
            rules::role_on(permissions, &project.slug, &project.uuid)
        } else {
            Role::None
        },
        coordinator_admin: who.everything(),
    }
}

async fn permissions_of(state: &AppState, who: &Asking) -> crate::Result<Vec<(String, Role)>> {
    match who.person() {
        Some(p) => {
            let id = p.id;
            state
                .db(move |s: &dyn Backend| s.person_permissions(id))
                .await
        }
        None => Ok(Vec::new()),
    }
}

/// May `who` do `action` with the project `of` names? `None` when there is no such project
/// (or job, or pipeline).
pub async fn may_on(
    state: &AppState,
    who: &Asking,
    of: Resource,
    action: Action,
) -> crate::Result<Option<bool>> {
    let Some(project) = state
        .db(move |s: &dyn Backend| s.project_access(of))
        .await?
    else {
        return Ok(None);
    };
    let permissions = permissions_of(state, who).await?;
    Ok(Some(rules::allowed(
        action,
        asker(&permissions, who, &project),
        project.public,
    )))
}

/// May the viewer do `action` on `project` (slug or UUID)?
pub async fn may(
    state: &AppState,
    viewer: &Viewer,
    project: &str,
    action: Action,
) -> crate::Result<bool> {
    let p = project.to_owned();
    let found = state
        .db(move |s: &dyn Backend| s.project_access(Resource::Project(p)))
        .await?;
    let Some(project) = found else {
        return Ok(false);
    };
    let who = Asking::Person(viewer.clone());
    let permissions = permissions_of(state, &who).await?;
    Ok(rules::allowed(
        action,
        asker(&permissions, &who, &project),
        project.public,
    ))
}

/// The projects a list shows `who`: `None` for every project (an operator, an admin), else
/// the slugs they may read (public ones included).
#[derive(Debug, Clone)]
pub struct Readable(pub Option<Vec<String>>);

impl Readable {
    pub fn allows(&self, slug: &str) -> bool {
        self.0.as_ref().is_none_or(|v| v.iter().any(|s| s == slug))
    }
}

pub async fn readable(state: &AppState, who: &Asking) -> crate::Result<Readable> {
    if who.everything() {
        return Ok(Readable(None));
    }
    let projects = state.db(|s: &dyn Backend| s.projects_access()).await?;
    let permissions = permissions_of(state, who).await?;
    Ok(Readable(Some(
        projects
            .into_iter()
            .filter(|p| rules::allowed(Action::Read, asker(&permissions, who, p), p.public))
            .map(|p| p.slug)
            .collect(),
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_ids_and_their_digests_and_csrf_tokens_differ() {
        let id = "00ff";
        assert_ne!(session_digest(id), csrf_of(id));
        assert_ne!(session_digest(id), sha256_hex(id.as_bytes()));
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }

    fn people() -> People {
        People::new(Settings {
            consumer: None,
            session_lifetime: Duration::from_secs(3600),
            secure_cookies: false,
            public_url: "http://ci.example".into(),
            permissions_refresh: Duration::from_secs(300),
        })
    }

    fn with_cookie(pair: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            axum::http::header::COOKIE,
            axum::http::HeaderValue::from_str(pair).expect("header"),
        );
        h
    }

    #[test]
    fn the_token_form_is_taken_only_with_its_own_fresh_cookie() {
        let p = people();
        let form = p.login_form().expect("form");
        let pair = form.set_cookie.split(';').next().expect("pair").to_owned();
        assert!(pair.starts_with("bosun_login_form="));
        assert!(form.set_cookie.contains("HttpOnly") && form.set_cookie.contains("SameSite=Lax"));
        assert!(p.login_form_ok(&with_cookie(&pair), Some(&form.csrf)));
        // No cookie, another form's cookie, no field, a field for another cookie.
        assert!(!p.login_form_ok(&HeaderMap::new(), Some(&form.csrf)));
        let other = p.login_form().expect("form");
        let other_pair = other.set_cookie.split(';').next().expect("pair").to_owned();
        assert!(!p.login_form_ok(&with_cookie(&other_pair), Some(&form.csrf)));
        assert!(!p.login_form_ok(&with_cookie(&pair), None));
        // Two cookies of the name (one planted by a sibling site): neither counts.
        assert!(!p.login_form_ok(
            &with_cookie(&format!("{pair}; {other_pair}")),
            Some(&form.csrf)
        ));
        // Another server's key (a restart): refused.
        assert!(!people().login_form_ok(&with_cookie(&pair), Some(&form.csrf)));
        // Signed, but made longer ago than a login may take: refused.
        let made = u64::try_from(crate::store::now_ms()).expect("now")
            - u64::try_from(LOGIN_WITHIN.as_millis()).expect("ms")
            - 1_000;
        let old = format!("{made:016x}{}", "ab".repeat(16));
        let field = p.form_csrf(&old).expect("key");
        assert!(!p.login_form_ok(
            &with_cookie(&format!("{LOGIN_FORM_COOKIE}={old}")),
            Some(&field)
        ));
        let now = format!(
            "{:016x}{}",
            u64::try_from(crate::store::now_ms()).expect("now"),
            "ab".repeat(16)
        );
        let field = p.form_csrf(&now).expect("key");
        assert!(p.login_form_ok(
            &with_cookie(&format!("{LOGIN_FORM_COOKIE}={now}")),
            Some(&field)
        ));
    }
}

//! What a person may do, decided without I/O: the role a repository gives them (Bitbucket's
//! `read`, `write`, `admin`), the coordinator-wide `admin` given on the host, and the table
//! of actions × roles. Also the small rules of logging in that must not be got wrong: where a
//! login may send the browser back to, and the session cookie's attributes.

use super::UnknownWord;
use std::fmt;
use std::str::FromStr;

/// What a repository lets a person do, as Bitbucket says it (`permission` of
/// `GET /2.0/user/permissions/repositories`). Ordered: each includes the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// No permission on the repository (or a project that is public: anonymous reads).
    None,
    Read,
    Write,
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::None => "none",
            Role::Read => "read",
            Role::Write => "write",
            Role::Admin => "admin",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = UnknownWord;
    fn from_str(s: &str) -> Result<Role, UnknownWord> {
        match s {
            "none" => Ok(Role::None),
            "read" => Ok(Role::Read),
            "write" => Ok(Role::Write),
            "admin" => Ok(Role::Admin),
            _ => Err(UnknownWord {
                what: "repository permission",
                word: s.to_owned(),
            }),
        }
    }
}

/// The repository permissions Data Center lists repositories by
/// (`GET /rest/api/latest/repos?permission=…`), each including the ones before it.
pub const DATA_CENTER_PERMISSIONS: [&str; 3] = ["REPO_READ", "REPO_WRITE", "REPO_ADMIN"];

/// The role a Data Center repository permission gives; `None` for any other word (project
/// and global permissions such as `PROJECT_ADMIN` are not asked for, and give nothing here).
pub fn data_center_role(word: &str) -> Option<Role> {
    match word {
        "REPO_READ" => Some(Role::Read),
        "REPO_WRITE" => Some(Role::Write),
        "REPO_ADMIN" => Some(Role::Admin),
        _ => None,
    }
}

/// How a Data Center user is kept among people: by the server and their numeric id (which
/// a renamed user keeps), prefixed so it can never equal a Cloud account's `{UUID}`.
pub fn data_center_person(server: &str, id: u64) -> String {
    format!("dc:{}/{id}", server.to_ascii_lowercase())
}

/// What Bosun keeps of a person's login to read their permissions again without them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CredentialKind {
    /// The OAuth refresh token Bitbucket gave at login (Cloud, or Data Center's provider):
    /// swapped for a short-lived access token at each read.
    RefreshToken,
    /// A Data Center HTTP access token the person pasted at login: used as it is, until
    /// Data Center refuses it (revoked, expired).
    HttpAccessToken,
}

impl CredentialKind {
    pub fn as_str(self) -> &'static str {
        match self {
            CredentialKind::RefreshToken => "refresh-token",
            CredentialKind::HttpAccessToken => "http-access-token",
        }
    }
}

impl FromStr for CredentialKind {
    type Err = UnknownWord;
    fn from_str(s: &str) -> Result<CredentialKind, UnknownWord> {
        match s {
            "refresh-token" => Ok(CredentialKind::RefreshToken),
            "http-access-token" => Ok(CredentialKind::HttpAccessToken),
            _ => Err(UnknownWord {
                what: "Bitbucket credential",
                word: s.to_owned(),
            }),
        }
    }
}

/// A person's kept credential (the store keeps it sealed; it never reaches a log).
#[derive(Clone, PartialEq, Eq)]
pub struct Credential {
    pub kind: CredentialKind,
    pub secret: zeroize::Zeroizing<String>,
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credential")
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

/// The longest HTTP access token a login form takes (Data Center's are 44 characters).
pub const MAX_ACCESS_TOKEN: usize = 256;

/// Whether a pasted HTTP access token is worth sending to Data Center: 20 to
/// [`MAX_ACCESS_TOKEN`] visible ASCII characters, none that a header could not carry. What
/// is not is refused without asking (and counts as a failed attempt).
pub fn access_token_shape_ok(token: &str) -> bool {
    (20..=MAX_ACCESS_TOKEN).contains(&token.len()) && token.bytes().all(|b| b.is_ascii_graphic())
}

/// Failed token logins one client address may make in [`FAILED_LOGIN_WINDOW_MS`].
pub const FAILED_LOGINS: u32 = 10;
/// The window failed token logins are counted in.
pub const FAILED_LOGIN_WINDOW_MS: i64 = 10 * 60 * 1000;

/// An address's failed token logins: how many since `since` (ms).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Failures {
    pub count: u32,
    pub since: i64,
}

/// When an address that failed so may try again: `None` (now), or the instant (ms) its
/// window ends. A window that ended counts nothing.
pub fn may_try_login(f: Option<Failures>, now: i64) -> Option<i64> {
    let f = f?;
    let ends = f.since.saturating_add(FAILED_LOGIN_WINDOW_MS);
    (now < ends && f.count >= FAILED_LOGINS).then_some(ends)
}

/// The count after one more failure at `now` (a window that ended starts again).
pub fn one_more_failure(f: Option<Failures>, now: i64) -> Failures {
    match f {
        Some(f) if now < f.since.saturating_add(FAILED_LOGIN_WINDOW_MS) => Failures {
            count: f.count.saturating_add(1),
            since: f.since,
        },
        _ => Failures {
            count: 1,
            since: now,
        },
    }
}

/// Something a person asks to do with a project.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// See its pages, logs, artifacts, test results and API reads.
    Read,
    /// Start a pipeline.
    Trigger,
    /// Rerun a pipeline or a job.
    Rerun,
    /// Cancel a pipeline or a job.
    Cancel,
    /// Approve an approval job.
    Approve,
    /// Rerun a job with SSH.
    RerunWithSsh,
    /// Change the project's settings, keys, webhooks, variables.
    Settings,
}

impl Action {
    pub const ALL: &'static [Action] = &[
        Action::Read,
        Action::Trigger,
        Action::Rerun,
        Action::Cancel,
        Action::Approve,
        Action::RerunWithSsh,
        Action::Settings,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Action::Read => "read",
            Action::Trigger => "trigger",
            Action::Rerun => "rerun",
            Action::Cancel => "cancel",
            Action::Approve => "approve",
            Action::RerunWithSsh => "rerun with SSH",
            Action::Settings => "settings",
        }
    }

    /// The least repository role that allows it.
    pub fn needs(self) -> Role {
        match self {
            Action::Read => Role::Read,
            Action::Trigger
            | Action::Rerun
            | Action::Cancel
            | Action::Approve
            | Action::RerunWithSsh => Role::Write,
            Action::Settings => Role::Admin,
        }
    }

    /// Whether it changes something (re-checked against Bitbucket before it is done).
    pub fn sensitive(self) -> bool {
        self != Action::Read
    }
}

/// Who asks, as far as the rules care.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Asker {
    /// Their role on the project's repository (`None` for nobody logged in).
    pub role: Role,
    /// A coordinator-wide admin (`person grant NAME admin`): every action on every project.
    pub coordinator_admin: bool,
}

/// May `asker` do `action` with a project that is `public` (or not)? A public project is
/// readable by anyone, nobody logged in included; nothing else is given away by it.
pub fn allowed(action: Action, asker: Asker, public: bool) -> bool {
    if asker.coordinator_admin {
        return true;
    }
    if action == Action::Read && public {
        return true;
    }
    asker.role >= action.needs()
}

/// The role stored permissions give on a project: the highest of the entries naming its
/// repository by full name (lower case) or by UUID.
pub fn role_on(permissions: &[(String, Role)], slug: &str, uuid: &str) -> Role {
    let slug = slug.to_ascii_lowercase();
    permissions
        .iter()
        .filter(|(repo, _)| *repo == slug || repo == uuid)
        .map(|(_, role)| *role)
        .max()
        .unwrap_or(Role::None)
}

/// Where a login may send the browser back to: a path of this site only (`/jobs/7`), never
/// another origin (`//evil.example`, `https://…`, `/\evil`), else `/`.
pub fn safe_return_to(asked: Option<&str>) -> String {
    let Some(p) = asked else {
        return "/".to_owned();
    };
    let ok = p.starts_with('/')
        && !p.starts_with("//")
        && !p.starts_with("/\\")
        && p.len() <= 2048
        && p.bytes().all(|b| (0x21..0x7f).contains(&b) && b != b'\\');
    if ok {
        p.to_owned()
    } else {
        "/".to_owned()
    }
}

/// A `Set-Cookie` value: `HttpOnly`, `SameSite=Lax`, `Path=/`, `Secure` when the site is
/// reached over TLS; `max_age` seconds (0: delete it).
pub fn cookie(name: &str, value: &str, max_age: u64, secure: bool) -> String {
    format!(
        "{name}={value}; Path=/; Max-Age={max_age}; HttpOnly; SameSite=Lax{}",
        if secure { "; Secure" } else { "" }
    )
}

/// The value of cookie `name` in a `Cookie` header, if it is there once and looks like one
/// of ours (hex); a second cookie of the same name (a sibling domain planting one) wins
/// nothing: both are refused.
pub fn cookie_value<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    let mut found = None;
    for part in header.split(';') {
        let Some((k, v)) = part.trim().split_once('=') else {
            continue;
        };
        if k == name {
            if found.is_some() {
                return None;
            }
            found = Some(v);
        }
    }
    found.filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_hexdigit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_center_permission_words_map_to_roles() {
        assert_eq!(data_center_role("REPO_READ"), Some(Role::Read));
        assert_eq!(data_center_role("REPO_WRITE"), Some(Role::Write));
        assert_eq!(data_center_role("REPO_ADMIN"), Some(Role::Admin));
        for other in ["PROJECT_ADMIN", "repo_read", "read", ""] {
            assert_eq!(data_center_role(other), None, "{other}");
        }
        // Asked in order, each word gives a higher role than the one before.
        let roles: Vec<_> = DATA_CENTER_PERMISSIONS
            .iter()
            .filter_map(|w| data_center_role(w))
            .collect();
        assert_eq!(roles, [Role::Read, Role::Write, Role::Admin]);
        // A repository listed under several words counts at its highest.
        let held = [
            ("acme/widget".to_owned(), Role::Read),
            ("acme/widget".to_owned(), Role::Write),
        ];
        assert_eq!(role_on(&held, "ACME/widget", "-"), Role::Write);
    }

    #[test]
    fn data_center_people_never_share_a_cloud_accounts_key() {
        assert_eq!(
            data_center_person("BB.example.com:7990", 12),
            "dc:bb.example.com:7990/12"
        );
        assert!(!data_center_person("bb", 1).starts_with('{'));
    }

    fn asker(role: Role) -> Asker {
        Asker {
            role,
            coordinator_admin: false,
        }
    }

    /// The whole table, spelled out: a change to the rules changes this test.
    #[test]
    fn the_table_of_actions_and_roles() {
        use Action::*;
        let table: &[(Action, [bool; 4])] = &[
            //             none   read   write  admin
            (Read, [false, true, true, true]),
            (Trigger, [false, false, true, true]),
            (Rerun, [false, false, true, true]),
            (Cancel, [false, false, true, true]),
            (Approve, [false, false, true, true]),
            (RerunWithSsh, [false, false, true, true]),
            (Settings, [false, false, false, true]),
        ];
        assert_eq!(table.len(), Action::ALL.len());
        for (action, row) in table {
            for (role, want) in [Role::None, Role::Read, Role::Write, Role::Admin]
                .into_iter()
                .zip(row)
            {
                assert_eq!(
                    allowed(*action, asker(role), false),
                    *want,
                    "{action:?} with {role}"
                );
                // A coordinator admin may do everything, with or without a role.
                assert!(allowed(
                    *action,
                    Asker {
                        role,
                        coordinator_admin: true
                    },
                    false
                ));
            }
        }
    }

    #[test]
    fn a_public_project_gives_reads_away_and_nothing_else() {
        assert!(allowed(Action::Read, asker(Role::None), true));
        for a in Action::ALL.iter().filter(|a| **a != Action::Read) {
            assert!(!allowed(*a, asker(Role::None), true), "{a:?}");
            assert!(!allowed(*a, asker(Role::Read), true), "{a:?}");
            assert!(a.sensitive());
        }
        assert!(!Action::Read.sensitive());
    }

    #[test]
    fn a_project_takes_the_highest_role_naming_its_repository() {
        let perms = [
            ("acme/widget".to_owned(), Role::Read),
            ("{u1}".to_owned(), Role::Write),
            ("acme/other".to_owned(), Role::Admin),
        ];
        assert_eq!(role_on(&perms, "Acme/Widget", "{u1}"), Role::Write);
        assert_eq!(role_on(&perms, "acme/widget", "{u2}"), Role::Read);
        assert_eq!(role_on(&perms, "acme/none", "{u3}"), Role::None);
    }

    #[test]
    fn roles_read_as_bitbucket_writes_them() {
        for r in [Role::None, Role::Read, Role::Write, Role::Admin] {
            assert_eq!(r.as_str().parse::<Role>(), Ok(r));
        }
        assert!("owner".parse::<Role>().is_err());
        assert!(Role::Admin > Role::Write && Role::Write > Role::Read && Role::Read > Role::None);
    }

    #[test]
    fn a_login_returns_to_this_site_only() {
        assert_eq!(safe_return_to(Some("/jobs/7?x=1")), "/jobs/7?x=1");
        assert_eq!(safe_return_to(None), "/");
        for bad in [
            "//evil.example/",
            "https://evil.example/",
            "/\\evil.example",
            "evil",
            "/a b",
            "/\r\nSet-Cookie: x=1",
            "",
        ] {
            assert_eq!(safe_return_to(Some(bad)), "/", "{bad:?}");
        }
    }

    #[test]
    fn cookies_are_http_only_lax_and_secure_behind_tls() {
        assert_eq!(
            cookie("s", "ab", 60, true),
            "s=ab; Path=/; Max-Age=60; HttpOnly; SameSite=Lax; Secure"
        );
        assert!(!cookie("s", "ab", 60, false).contains("Secure"));
        assert_eq!(cookie_value("a=1; s=abc0; b=2", "s"), Some("abc0"));
        assert_eq!(cookie_value("s=abc0; s=def1", "s"), None);
        assert_eq!(cookie_value("s=<script>", "s"), None);
        assert_eq!(cookie_value("ss=ab", "s"), None);
    }

    #[test]
    fn credential_kinds_read_as_they_are_written_and_never_print_their_secret() {
        for k in [
            CredentialKind::RefreshToken,
            CredentialKind::HttpAccessToken,
        ] {
            assert_eq!(k.as_str().parse::<CredentialKind>(), Ok(k));
        }
        assert!("password".parse::<CredentialKind>().is_err());
        let c = Credential {
            kind: CredentialKind::HttpAccessToken,
            secret: zeroize::Zeroizing::new("NjQ2MDk0NzE3MzY0OkSECRET".into()),
        };
        assert!(!format!("{c:?}").contains("SECRET"));
    }

    #[test]
    fn a_pasted_token_is_sent_only_when_it_looks_like_one() {
        assert!(access_token_shape_ok(
            "NjQ2MDk0NzE3MzY0OuPQHk2vEEsW+qaDfrLBQbHUtvHX"
        ));
        for bad in [
            "",
            "short",
            "has a space in the middle of it ok",
            "line\nbreak-0123456789abcdef",
            "caf\u{e9}-0123456789abcdefghij",
        ] {
            assert!(!access_token_shape_ok(bad), "{bad:?}");
        }
        assert!(!access_token_shape_ok(&"x".repeat(MAX_ACCESS_TOKEN + 1)));
        assert!(access_token_shape_ok(&"x".repeat(MAX_ACCESS_TOKEN)));
    }

    #[test]
    fn failed_token_logins_are_limited_per_window() {
        let t0 = 1_000_000;
        let mut f = None;
        for i in 0..FAILED_LOGINS {
            assert_eq!(may_try_login(f, t0 + i64::from(i)), None, "try {i}");
            f = Some(one_more_failure(f, t0 + i64::from(i)));
        }
        let ends = t0 + FAILED_LOGIN_WINDOW_MS;
        assert_eq!(may_try_login(f, t0 + 100), Some(ends));
        assert_eq!(may_try_login(f, ends - 1), Some(ends));
        // The window over: tries again, and the next failure starts a new window.
        assert_eq!(may_try_login(f, ends), None);
        let again = one_more_failure(f, ends + 5);
        assert_eq!(
            again,
            Failures {
                count: 1,
                since: ends + 5
            }
        );
        assert_eq!(may_try_login(None, t0), None);
        // Counts never wrap.
        let many = Failures {
            count: u32::MAX,
            since: t0,
        };
        assert_eq!(one_more_failure(Some(many), t0).count, u32::MAX);
    }
}

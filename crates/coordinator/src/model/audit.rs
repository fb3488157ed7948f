//! The audit log's rules, without I/O: what can be recorded (who, which action, on what),
//! how a row reads as one JSON line, and the last wall against a secret in a row — any word
//! with the shape of one of Bosun's tokens is replaced before the row is written.

use super::UnknownWord;
use std::fmt;
use std::str::FromStr;

/// Something done that the audit log keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AuditAction {
    Login,
    Logout,
    Trigger,
    Rerun,
    RerunWithSsh,
    Approve,
    Cancel,
    /// A project's settings, keys, webhooks, notifications, badge token, agents.
    Settings,
    TokenMade,
    TokenRevoked,
    GrantAdmin,
    RevokeAdmin,
    /// Rows older than a cut-off removed on the host (`audit prune`).
    Pruned,
    /// Someone put in security groups or taken out of them (a person's or an operator's).
    Groups,
}

impl AuditAction {
    pub const ALL: &'static [AuditAction] = &[
        AuditAction::Login,
        AuditAction::Logout,
        AuditAction::Trigger,
        AuditAction::Rerun,
        AuditAction::RerunWithSsh,
        AuditAction::Approve,
        AuditAction::Cancel,
        AuditAction::Settings,
        AuditAction::TokenMade,
        AuditAction::TokenRevoked,
        AuditAction::GrantAdmin,
        AuditAction::RevokeAdmin,
        AuditAction::Pruned,
        AuditAction::Groups,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            AuditAction::Login => "login",
            AuditAction::Logout => "logout",
            AuditAction::Trigger => "trigger",
            AuditAction::Rerun => "rerun",
            AuditAction::RerunWithSsh => "rerun-ssh",
            AuditAction::Approve => "approve",
            AuditAction::Cancel => "cancel",
            AuditAction::Settings => "settings",
            AuditAction::TokenMade => "token-made",
            AuditAction::TokenRevoked => "token-revoked",
            AuditAction::GrantAdmin => "grant-admin",
            AuditAction::RevokeAdmin => "revoke-admin",
            AuditAction::Pruned => "audit-pruned",
            AuditAction::Groups => "groups",
        }
    }
}

impl fmt::Display for AuditAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for AuditAction {
    type Err = UnknownWord;
    fn from_str(s: &str) -> Result<AuditAction, UnknownWord> {
        AuditAction::ALL
            .iter()
            .copied()
            .find(|a| a.as_str() == s)
            .ok_or_else(|| UnknownWord {
                what: "audit action",
                word: s.to_owned(),
            })
    }
}

/// Who did it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Actor {
    /// A person logged in with Bitbucket (their nickname), from the pages or with their
    /// personal token.
    Person(String),
    /// An operator token's name.
    Operator(String),
    /// A project token's name.
    ProjectToken(String),
    /// The CLI on the coordinator's host (the user running it, as its environment says).
    Host(String),
}

impl Actor {
    /// The name alone (a nickname, a token's name, a host user).
    pub fn name(&self) -> &str {
        match self {
            Actor::Person(n) | Actor::Operator(n) | Actor::ProjectToken(n) | Actor::Host(n) => n,
        }
    }

    /// `kind:name`, as a row keeps it.
    pub fn label(&self) -> String {
        let (kind, name) = match self {
            Actor::Person(n) => ("person", n),
            Actor::Operator(n) => ("operator", n),
            Actor::ProjectToken(n) => ("project-token", n),
            Actor::Host(n) => ("host", n),
        };
        format!("{kind}:{name}")
    }
}

/// One thing done, as a code path reports it to `crate::audit::record`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub actor: Actor,
    pub action: AuditAction,
    /// The project it was done on, if any (its slug).
    pub project: Option<String>,
    /// What it was done to: `pipeline 12`, `job 40`, a token's name, a person.
    pub target: Option<String>,
    /// A few words more (how, through what).
    pub detail: String,
}

impl Event {
    pub fn new(actor: Actor, action: AuditAction) -> Event {
        Event {
            actor,
            action,
            project: None,
            target: None,
            detail: String::new(),
        }
    }
    pub fn project(mut self, p: impl Into<String>) -> Event {
        self.project = Some(p.into());
        self
    }
    pub fn target(mut self, t: impl Into<String>) -> Event {
        self.target = Some(t.into());
        self
    }
    pub fn detail(mut self, d: impl Into<String>) -> Event {
        self.detail = d.into();
        self
    }
}

/// A row as the store keeps it (every text already [`scrub`]bed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRow {
    pub id: i64,
    /// When (ms since the epoch).
    pub at: i64,
    /// [`Actor::label`].
    pub actor: String,
    pub action: String,
    pub project: Option<String>,
    pub target: Option<String>,
    pub detail: String,
}

/// Longest text a field of a row keeps.
pub const MAX_FIELD: usize = 512;

/// Tokens this coordinator hands out start so (operator, project, personal, registration,
/// agent): a word starting with one of them never reaches a row.
const TOKEN_PREFIXES: &[&str] = &[
    "bosun-op-",
    "bosun-prj-",
    "bosun-pat-",
    "bosun-reg-",
    "bosun-agent-",
];

/// `text` fit for a row: control characters escaped, at most [`MAX_FIELD`] characters, and
/// every word that looks like a token or a long secret (a token's prefix, or 32 and more hex
/// digits in a row) replaced by `[redacted]`. Code paths never pass a secret; this holds if
/// one ever slips in.
pub fn scrub(text: &str) -> String {
    let printable = crate::text::printable(text);
    let words: Vec<String> = printable
        .split(' ')
        .map(|w| {
            let secret = TOKEN_PREFIXES.iter().any(|p| w.contains(p)) || long_hex_run(w);
            if secret {
                "[redacted]".to_owned()
            } else {
                w.to_owned()
            }
        })
        .collect();
    let joined = words.join(" ");
    if joined.chars().count() > MAX_FIELD {
        joined.chars().take(MAX_FIELD).collect::<String>() + "…"
    } else {
        joined
    }
}

fn long_hex_run(w: &str) -> bool {
    let mut run = 0;
    for b in w.bytes() {
        if b.is_ascii_hexdigit() {
            run += 1;
            if run >= 32 {
                return true;
            }
        } else {
            run = 0;
        }
    }
    false
}

/// The event with every text field scrubbed: what is written.
pub fn scrubbed(e: &Event) -> Event {
    Event {
        actor: match &e.actor {
            Actor::Person(n) => Actor::Person(scrub(n)),
            Actor::Operator(n) => Actor::Operator(scrub(n)),
            Actor::ProjectToken(n) => Actor::ProjectToken(scrub(n)),
            Actor::Host(n) => Actor::Host(scrub(n)),
        },
        action: e.action,
        project: e.project.as_deref().map(scrub),
        target: e.target.as_deref().map(scrub),
        detail: scrub(&e.detail),
    }
}

/// A row as one JSON line (no newline inside, whatever the texts hold): `id`, `at` (ISO 8601
/// UTC), `at_ms`, `actor`, `action`, `project`, `target`, `detail`.
pub fn json_line(r: &AuditRow) -> String {
    serde_json::json!({
        "id": r.id,
        "at": bosun_protocol::time::iso_utc(r.at),
        "at_ms": r.at,
        "actor": r.actor,
        "action": r.action,
        "project": r.project,
        "target": r.target,
        "detail": r.detail,
    })
    .to_string()
}

/// How long rows are kept: `serve --audit-retention` and `audit prune --older-than`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retention {
    /// Every row, for ever (`0` or `forever`).
    Forever,
    /// Rows younger than this.
    For(std::time::Duration),
}

/// The server's retention when none is given: a year, long enough for a yearly access
/// review, short enough that the log does not grow without end.
pub const DEFAULT_RETENTION: &str = "365d";

impl FromStr for Retention {
    type Err = String;
    fn from_str(s: &str) -> Result<Retention, String> {
        match s.trim() {
            "0" | "forever" => Ok(Retention::Forever),
            t => bosun_config::parse_duration(t)
                .filter(|d| !d.is_zero())
                .map(Retention::For)
                .ok_or_else(|| {
                    format!(
                        "`{}`: expected a duration such as 90d, 12h or 30m, or `forever` (or 0) \
                         to keep every row",
                        crate::text::printable(s)
                    )
                }),
        }
    }
}

/// Rows written before this instant (ms) go: `now` less the retention, or `None` (nothing
/// goes) when rows are kept for ever or the retention reaches back before the epoch.
pub fn cut_off(now_ms: i64, retention: Retention) -> Option<i64> {
    let Retention::For(d) = retention else {
        return None;
    };
    let keep = i64::try_from(d.as_millis()).ok()?;
    let at = now_ms.checked_sub(keep)?;
    (at > 0).then_some(at)
}

/// Rows deleted per statement when pruning: small enough that one delete holds the
/// writer only briefly, so logins and triggers recording rows meanwhile are not held up.
pub const PRUNE_BATCH: u32 = 1_000;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actions_read_as_they_are_written() {
        for a in AuditAction::ALL {
            assert_eq!(a.as_str().parse::<AuditAction>(), Ok(*a));
        }
        assert!("delete-everything".parse::<AuditAction>().is_err());
    }

    #[test]
    fn actors_are_labelled_by_kind() {
        assert_eq!(Actor::Person("ann".into()).label(), "person:ann");
        assert_eq!(Actor::Operator("ops".into()).label(), "operator:ops");
        assert_eq!(Actor::ProjectToken("ci".into()).label(), "project-token:ci");
        assert_eq!(Actor::Host("root".into()).label(), "host:root");
    }

    #[test]
    fn tokens_and_long_secrets_never_reach_a_row() {
        let pat = format!("bosun-pat-{}", "ab".repeat(24));
        let op = format!("bosun-op-{}", "12".repeat(24));
        let hex = "0123456789abcdef".repeat(4);
        let e = Event::new(Actor::Person(format!("ann {pat}")), AuditAction::TokenMade)
            .target(format!("token={op}"))
            .detail(format!("sha {hex} and short deadbeef"));
        let s = scrubbed(&e);
        for field in [
            s.actor.label(),
            s.target.clone().unwrap_or_default(),
            s.detail.clone(),
        ] {
            assert!(!field.contains(&pat) && !field.contains(&op) && !field.contains(&hex));
        }
        assert_eq!(s.actor, Actor::Person("ann [redacted]".into()));
        assert_eq!(s.target.as_deref(), Some("[redacted]"));
        assert_eq!(s.detail, "sha [redacted] and short deadbeef");
        // A git commit id (40 hex digits) is dropped too: rows name pipelines, not commits.
        assert_eq!(scrub(&"a".repeat(40)), "[redacted]");
        assert_eq!(scrub("pipeline 12"), "pipeline 12");
    }

    #[test]
    fn fields_are_printable_and_bounded() {
        assert_eq!(scrub("a\nb\u{1b}"), "a\\u{a}b\\u{1b}");
        let long = "x ".repeat(600);
        assert_eq!(scrub(&long).chars().count(), MAX_FIELD + 1);
    }

    #[test]
    fn a_row_is_one_json_line_that_parses_back() {
        let r = AuditRow {
            id: 7,
            at: 1_796_601_600_000,
            actor: "person:ann".into(),
            action: "rerun".into(),
            project: Some("acme/widget".into()),
            target: Some("pipeline 3\nx".into()),
            detail: "from the page".into(),
        };
        let line = json_line(&r);
        assert!(!line.contains('\n'));
        let v: serde_json::Value = serde_json::from_str(&line).expect("json");
        assert_eq!(v["id"], 7);
        assert_eq!(v["actor"], "person:ann");
        assert_eq!(v["target"], "pipeline 3\nx");
        assert_eq!(v["at_ms"], 1_796_601_600_000i64);
        assert!(v["at"].as_str().is_some_and(|t| t.ends_with('Z')), "{v}");
    }

    #[test]
    fn retention_reads_durations_and_forever() {
        use std::time::Duration;
        assert_eq!(
            "365d".parse::<Retention>(),
            Ok(Retention::For(Duration::from_secs(365 * 86_400)))
        );
        assert_eq!(
            "12h".parse::<Retention>(),
            Ok(Retention::For(Duration::from_secs(12 * 3_600)))
        );
        assert_eq!("forever".parse::<Retention>(), Ok(Retention::Forever));
        assert_eq!("0".parse::<Retention>(), Ok(Retention::Forever));
        for bad in ["", "-5d", "1y", "0s", "soon\n"] {
            let e = bad.parse::<Retention>().expect_err(bad);
            assert!(e.contains("forever") && !e.contains('\n'), "{e}");
        }
        assert!(DEFAULT_RETENTION.parse::<Retention>().is_ok());
    }

    #[test]
    fn the_cut_off_is_now_less_the_retention_and_never_before_the_epoch() {
        use std::time::Duration;
        let day = 86_400_000i64;
        let now = 1_796_601_600_000;
        let year = Retention::For(Duration::from_secs(365 * 86_400));
        assert_eq!(cut_off(now, year), Some(now - 365 * day));
        assert_eq!(
            cut_off(now, Retention::For(Duration::from_millis(1))),
            Some(now - 1)
        );
        assert_eq!(cut_off(now, Retention::Forever), None);
        // A retention longer than the clock has run keeps everything.
        assert_eq!(
            cut_off(now, Retention::For(Duration::from_secs(100 * 365 * 86_400))),
            None
        );
        assert_eq!(cut_off(i64::MIN, year), None);
        assert_eq!(
            cut_off(now, Retention::For(Duration::from_secs(u64::MAX))),
            None
        );
    }
}

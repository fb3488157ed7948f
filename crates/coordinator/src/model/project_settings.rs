//! A project's settings as its settings page (`/projects/{workspace}/{repo}/settings`)
//! shows and changes them, decided without I/O: what a variable may be, how its value is
//! shown (masked, as CircleCI's `xxxx1234`), what a form's switches say, and which of them
//! changed (one audit row each).

use super::ssh_policy::SshPolicy;
use std::fmt;

/// A variable's value at most, in bytes: as a context's (`context env set`, API v2).
pub const MAX_VALUE: usize = 32 * 1024;

/// What a masked value starts with (CircleCI's).
pub const MASK: &str = "xxxx";

/// A value shows its last four characters only when it has at least this many: of a short
/// value (a PIN, a port) four characters would be most of it.
pub const SHOWN_FROM: usize = 12;

/// Whether `name` and `value` may be a project variable: the name as a context variable's
/// (`[A-Za-z_][A-Za-z0-9_]*`, the one check of `model::contexts`), the value not empty, at
/// most [`MAX_VALUE`] bytes and without NUL (no process environment can hold one). The
/// error names the variable, never the value.
pub fn check_variable(name: &str, value: &str) -> Result<(), String> {
    super::contexts::check_variable_name(name)?;
    if value.is_empty() {
        return Err(format!("variable {name}: the value is empty"));
    }
    if value.len() > MAX_VALUE {
        return Err(format!(
            "variable {name}: a value is at most {MAX_VALUE} bytes"
        ));
    }
    if value.contains('\0') {
        return Err(format!(
            "variable {name}: a value cannot hold a NUL character"
        ));
    }
    Ok(())
}

/// A value as the page shows it: [`MASK`] and, for a value of at least [`SHOWN_FROM`]
/// characters, its last four (a character that does not print shows as `?`).
pub fn masked(value: &str) -> String {
    let n = value.chars().count();
    if n < SHOWN_FROM {
        return MASK.to_owned();
    }
    let tail: String = value
        .chars()
        .skip(n - 4)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect();
    format!("{MASK}{tail}")
}

/// The switches of a project its page sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Switches {
    /// Readable by anyone without logging in (`project set --public`).
    pub public: bool,
    /// Badges served without the badge token (`--public-badges`).
    pub public_badges: bool,
    /// What a rerun with SSH by someone else than the user key's owner gets (`--ssh-policy`).
    pub ssh_policy: SshPolicy,
}

/// One switch changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Public(bool),
    PublicBadges(bool),
    SshPolicy(SshPolicy),
}

impl fmt::Display for Change {
    /// As `project set` writes it (`public true`, `public-badges false`, `ssh-policy refuse`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Change::Public(b) => write!(f, "public {b}"),
            Change::PublicBadges(b) => write!(f, "public-badges {b}"),
            Change::SshPolicy(p) => write!(f, "ssh-policy {p}"),
        }
    }
}

/// What differs from `now` in `wanted`, in the page's order.
pub fn changes(now: Switches, wanted: Switches) -> Vec<Change> {
    let mut out = Vec::new();
    if now.public != wanted.public {
        out.push(Change::Public(wanted.public));
    }
    if now.public_badges != wanted.public_badges {
        out.push(Change::PublicBadges(wanted.public_badges));
    }
    if now.ssh_policy != wanted.ssh_policy {
        out.push(Change::SshPolicy(wanted.ssh_policy));
    }
    out
}

/// A checkbox of the form: absent is off, `true` (or a browser's default `on`) is on;
/// anything else is refused, naming the field.
pub fn checkbox(field: &str, given: Option<&str>) -> Result<bool, String> {
    match given {
        None => Ok(false),
        Some("true" | "on") => Ok(true),
        Some(other) => Err(format!(
            "{field}: expected true or nothing, not `{}`",
            other.escape_default()
        )),
    }
}

/// The switches a form asks for (fields `public`, `public_badges`, `ssh_policy`).
pub fn wanted(
    public: Option<&str>,
    public_badges: Option<&str>,
    ssh_policy: Option<&str>,
) -> Result<Switches, String> {
    Ok(Switches {
        public: checkbox("public", public)?,
        public_badges: checkbox("public_badges", public_badges)?,
        ssh_policy: ssh_policy
            .ok_or_else(|| "ssh_policy: missing (without-user-key or refuse)".to_owned())?
            .parse()
            .map_err(|e: super::UnknownWord| format!("ssh_policy: {e}"))?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_shows_its_last_four_characters_only_when_long() {
        assert_eq!(masked(""), "xxxx");
        assert_eq!(masked("1234"), "xxxx");
        assert_eq!(masked("hunter22-abc"), "xxxx-abc");
        assert_eq!(masked("s3cr3t-value-9f2a"), "xxxx9f2a");
        // Eleven characters: too short to show any.
        assert_eq!(masked("abcdefghijk"), "xxxx");
        // Characters, not bytes: a multi-byte tail is never cut in half.
        assert_eq!(masked("ééééééééééééü€"), "xxxxééü€");
        // What does not print is not shown as itself.
        assert_eq!(masked("abcdefghij\n\x1b[1m"), "xxxx?[1m");
    }

    #[test]
    fn variables_are_named_as_the_cli_names_them_and_values_are_bounded() {
        assert_eq!(check_variable("AWS_KEY", "v"), Ok(()));
        assert_eq!(check_variable("_x9", "v"), Ok(()));
        for bad in ["", "9LIVES", "A-B", "A B", "A=B", "É", "A\n"] {
            let e = check_variable(bad, "v").expect_err(bad);
            assert!(e.contains("variable name"), "{e}");
        }
        let e = check_variable("K", "").expect_err("empty");
        assert!(e.contains("K") && e.contains("empty"), "{e}");
        let big = "a".repeat(MAX_VALUE + 1);
        let e = check_variable("K", &big).expect_err("big");
        assert!(e.contains("at most") && !e.contains("aaaa"), "{e}");
        assert_eq!(check_variable("K", &"a".repeat(MAX_VALUE)), Ok(()));
        let e = check_variable("K", "sec\0ret").expect_err("nul");
        assert!(!e.contains("sec"), "the value is never in an error: {e}");
    }

    #[test]
    fn a_form_says_its_switches_and_only_changes_count() {
        let now = Switches {
            public: false,
            public_badges: true,
            ssh_policy: SshPolicy::WithoutUserKey,
        };
        let w = wanted(Some("true"), None, Some("refuse")).expect("wanted");
        assert_eq!(
            w,
            Switches {
                public: true,
                public_badges: false,
                ssh_policy: SshPolicy::Refuse
            }
        );
        let c = changes(now, w);
        assert_eq!(
            c.iter().map(|c| c.to_string()).collect::<Vec<_>>(),
            ["public true", "public-badges false", "ssh-policy refuse"]
        );
        assert_eq!(changes(now, now), []);
        assert_eq!(
            wanted(Some("on"), Some("true"), Some("without-user-key")).expect("on"),
            Switches {
                public: true,
                public_badges: true,
                ssh_policy: SshPolicy::WithoutUserKey
            }
        );
        let e = wanted(Some("false"), None, Some("refuse")).expect_err("false");
        assert!(e.starts_with("public:"), "{e}");
        let e = wanted(None, None, Some("open")).expect_err("policy");
        assert!(e.starts_with("ssh_policy:") && e.contains("open"), "{e}");
        assert!(wanted(None, None, None).is_err());
    }
}

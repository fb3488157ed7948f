//! Contexts, pure: what a restriction is, whether a job may use its contexts (CircleCI's
//! three kinds: a project, a security group, an expression over the pipeline's values),
//! whether someone may approve the jobs behind an approval, and how a job's variables
//! are layered (a later context over an earlier one, every context over the project's
//! variables). Who a job runs for is `model::advance::to_authorize`'s. The store loads the
//! rows and applies what these say.

use super::expression::{self, Facts};
use std::fmt;
use std::str::FromStr;

/// The kind of a context restriction, as stored (`context_restrictions.kind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RestrictionKind {
    /// Only jobs of one project (the value is its slug, as `project add` named it).
    Project,
    /// Only jobs run for a member of the group (a person or an operator): who triggered the
    /// pipeline, or who approved the approval jobs upstream of the job.
    Group,
    /// Only pipelines the expression holds for.
    Expression,
}

impl RestrictionKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RestrictionKind::Project => "project",
            RestrictionKind::Group => "group",
            RestrictionKind::Expression => "expression",
        }
    }
}

impl fmt::Display for RestrictionKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for RestrictionKind {
    type Err = super::UnknownWord;
    fn from_str(s: &str) -> Result<Self, super::UnknownWord> {
        Ok(match s {
            "project" => RestrictionKind::Project,
            "group" => RestrictionKind::Group,
            "expression" => RestrictionKind::Expression,
            _ => {
                return Err(super::UnknownWord {
                    what: "context restriction kind",
                    word: s.to_owned(),
                })
            }
        })
    }
}

/// One restriction of a context.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Restriction {
    pub kind: RestrictionKind,
    pub value: String,
}

/// A restriction as an operator gives it, checked before it is stored: an expression must
/// parse; a group or project name must be a plain name.
pub fn check_restriction(r: &Restriction) -> Result<(), String> {
    match r.kind {
        RestrictionKind::Expression => expression::parse(&r.value)
            .map(|_| ())
            .map_err(|e| format!("--expression: {e}")),
        RestrictionKind::Group | RestrictionKind::Project => {
            if r.value.is_empty() || r.value.len() > 200 || r.value.chars().any(char::is_control) {
                Err(format!(
                    "--{}: expected a name of 1 to 200 printable characters",
                    r.kind
                ))
            } else {
                Ok(())
            }
        }
    }
}

/// A context name or environment variable name is kept to what CircleCI accepts: a context
/// name of printable characters; a variable name `[A-Za-z_][A-Za-z0-9_]*`.
pub fn check_context_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 200 || name.chars().any(|c| c.is_control()) {
        return Err(format!(
            "context name `{}`: expected 1 to 200 printable characters",
            name.escape_default()
        ));
    }
    Ok(())
}

pub fn check_variable_name(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && name.len() <= 256;
    if ok {
        Ok(())
    } else {
        Err(format!(
            "variable name `{}`: expected letters, digits and _ (not first a digit)",
            name.escape_default()
        ))
    }
}

/// A context as a job's authorization sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContextFacts {
    pub id: String,
    pub name: String,
    pub restrictions: Vec<Restriction>,
}

/// Who approves an approval job or triggers a pipeline, as groups know them: an operator by
/// name (`operator groups`), or a person by their Bitbucket account (`people.bitbucket_uuid`:
/// Cloud's `{UUID}`, Data Center's `dc:SERVER/ID`) with the nickname shown for them. Kept
/// apart so that a person whose nickname is an operator's name never gets that operator's
/// groups.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    Operator(String),
    Person { account: String, nickname: String },
}

impl Principal {
    /// The name shown for them (`approved_by`, reasons).
    pub fn name(&self) -> &str {
        match self {
            Principal::Operator(n) => n,
            Principal::Person { nickname, .. } => nickname,
        }
    }

    /// The Bitbucket account of a person; `None` for an operator.
    pub fn account(&self) -> Option<&str> {
        match self {
            Principal::Operator(_) => None,
            Principal::Person { account, .. } => Some(account),
        }
    }
}

/// Someone a job can run for, as group restrictions see them: the name said in reasons and
/// the groups they are in, read when the job is authorized (so taking someone out of a
/// group counts for every job authorized after it).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Member {
    pub name: String,
    pub groups: Vec<String>,
}

impl Member {
    fn in_any(&self, groups: &[&str]) -> bool {
        self.groups.iter().any(|g| groups.contains(&g.as_str()))
    }
}

/// Who a job runs for, as CircleCI decides it: whoever approved the approval jobs upstream
/// of it, else whoever triggered its pipeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunsFor {
    /// The approvers of the approval jobs upstream of it: each must be a member.
    Approvers(Vec<Member>),
    /// The person who triggered the pipeline (a push or pull request of a Bosun person, a
    /// trigger with their personal token) or reran it.
    Trigger(Member),
    /// Nobody a group can hold: a push by someone who never logged in, a trigger on the
    /// host or with an operator or project token, a schedule.
    Nobody,
}

impl RunsFor {
    /// Whether the job runs for members of one of `groups`; `Err`: who does not.
    fn member_of(&self, groups: &[&str]) -> Result<(), String> {
        match self {
            RunsFor::Approvers(ms) => match ms.iter().find(|m| !m.in_any(groups)) {
                None if !ms.is_empty() => Ok(()),
                None => Err(NOBODY.to_owned()),
                Some(m) => Err(format!("{}, who approved the job, is not a member", m.name)),
            },
            RunsFor::Trigger(m) if m.in_any(groups) => Ok(()),
            RunsFor::Trigger(m) => Err(format!(
                "{}, who triggered the pipeline, is not a member (or put an approval job in \
                 front of it, approved by a member)",
                m.name
            )),
            RunsFor::Nobody => Err(NOBODY.to_owned()),
        }
    }
}

const NOBODY: &str = "nobody of it triggered the pipeline or approved the job (a Bosun person \
                      of the group pushes or triggers it, or put an approval job in front of it)";

/// Whether a job naming `wanted` (in the config's order) may run with them: `Ok` with the
/// contexts in that order, or the reason it is `unauthorized`. `found` are the contexts that
/// exist among those names; `project` the job's project slug; `facts` the pipeline's values.
pub fn authorize(
    wanted: &[String],
    found: &[ContextFacts],
    project: &str,
    facts: &Facts,
    runs_for: &RunsFor,
) -> Result<Vec<ContextFacts>, String> {
    let mut out = Vec::with_capacity(wanted.len());
    for name in wanted {
        let Some(c) = found.iter().find(|c| &c.name == name) else {
            return Err(format!(
                "context {name} does not exist (bosun coordinator context create {name})"
            ));
        };
        // A job must meet every kind of restriction the context has (a group and an
        // expression: both); within a kind, one of its projects or groups is enough, but every
        // expression must hold (each is a rule of its own).
        for kind in [
            RestrictionKind::Project,
            RestrictionKind::Group,
            RestrictionKind::Expression,
        ] {
            let of_kind: Vec<&Restriction> =
                c.restrictions.iter().filter(|r| r.kind == kind).collect();
            if of_kind.is_empty() {
                continue;
            }
            // Stored expressions were parsed when set; one that no longer parses (a damaged
            // row) allows nothing.
            let holds = |r: &&Restriction| {
                expression::parse(&r.value).is_ok_and(|e| expression::eval(&e, facts))
            };
            let mut who = String::new();
            let unmet: Vec<&Restriction> = match kind {
                RestrictionKind::Expression => {
                    of_kind.iter().copied().filter(|r| !holds(r)).collect()
                }
                RestrictionKind::Project => {
                    if of_kind.iter().any(|r| r.value == project) {
                        Vec::new()
                    } else {
                        of_kind.clone()
                    }
                }
                RestrictionKind::Group => {
                    let groups: Vec<&str> = of_kind.iter().map(|r| r.value.as_str()).collect();
                    match runs_for.member_of(&groups) {
                        Ok(()) => Vec::new(),
                        Err(w) => {
                            who = w;
                            of_kind.clone()
                        }
                    }
                }
            };
            if !unmet.is_empty() {
                let values: Vec<&str> = unmet.iter().map(|r| r.value.as_str()).collect();
                return Err(match kind {
                    RestrictionKind::Project => format!(
                        "context {name} is restricted to project {}; this is {project}",
                        values.join(" or ")
                    ),
                    RestrictionKind::Group => format!(
                        "context {name} is restricted to group {}; {who}",
                        values.join(" or ")
                    ),
                    RestrictionKind::Expression => format!(
                        "context {name}: the pipeline does not meet its restriction {}",
                        values.join(" and ")
                    ),
                });
            }
        }
        out.push(c.clone());
    }
    Ok(out)
}

/// Whether `approver` may approve an approval job whose dependants (every job downstream of
/// it) use `contexts` (CircleCI: an approval in front of a job with a group-restricted
/// context may be approved only by a member of the group). `Err`: the reason for the 403.
pub fn may_approve(
    approval: &str,
    contexts: &[ContextFacts],
    approver: &Member,
) -> Result<(), String> {
    for c in contexts {
        let groups: Vec<&str> = c
            .restrictions
            .iter()
            .filter(|r| r.kind == RestrictionKind::Group)
            .map(|r| r.value.as_str())
            .collect();
        if groups.is_empty() || approver.in_any(&groups) {
            continue;
        }
        return Err(format!(
            "{who} may not approve {approval}: a job behind it uses context {}, restricted to \
             group {}, and {who} is not a member",
            c.name,
            groups.join(" or "),
            who = approver.name,
        ));
    }
    Ok(())
}

/// A job's variables from its project and its contexts: each context's over the project's,
/// a later context's over an earlier one's (CircleCI's order); `(name, value, secret)`,
/// sorted by name. Context values are always secret.
pub fn layer(
    project: Vec<(String, String, bool)>,
    contexts: Vec<Vec<(String, String)>>,
) -> Vec<(String, String, bool)> {
    let mut by_name: std::collections::BTreeMap<String, (String, bool)> =
        project.into_iter().map(|(n, v, s)| (n, (v, s))).collect();
    for vars in contexts {
        for (n, v) in vars {
            by_name.insert(n, (v, true));
        }
    }
    by_name.into_iter().map(|(n, (v, s))| (n, v, s)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::expression::{Value, Var};

    fn ctx(name: &str, r: &[(RestrictionKind, &str)]) -> ContextFacts {
        ContextFacts {
            id: format!("id-{name}"),
            name: name.into(),
            restrictions: r
                .iter()
                .map(|(k, v)| Restriction {
                    kind: *k,
                    value: v.to_string(),
                })
                .collect(),
        }
    }

    fn on(branch: &str) -> Facts {
        let mut f = Facts::default();
        f.text(Var::GitBranch, Some(branch))
            .set(Var::JobSshEnabled, Value::Bool(false));
        f
    }

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_job_gets_its_contexts_when_every_kind_of_restriction_is_met() {
        use RestrictionKind::*;
        let deploy = ctx(
            "deploy",
            &[
                (Project, "acme/widget"),
                (Project, "acme/other"),
                (Expression, r#"pipeline.git.branch == "main""#),
            ],
        );
        let found = vec![deploy.clone(), ctx("plain", &[])];
        let none = RunsFor::Nobody;
        let ok = authorize(
            &names(&["plain", "deploy"]),
            &found,
            "acme/widget",
            &on("main"),
            &none,
        )
        .expect("authorized");
        assert_eq!(
            ok.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(),
            ["plain", "deploy"],
            "in the config's order"
        );
        let e = authorize(
            &names(&["deploy"]),
            &found,
            "acme/widget",
            &on("dev"),
            &none,
        )
        .expect_err("branch");
        assert!(e.contains("does not meet its restriction"), "{e}");
        let e = authorize(
            &names(&["deploy"]),
            &found,
            "acme/gadget",
            &on("main"),
            &none,
        )
        .expect_err("project");
        assert!(
            e.contains("restricted to project acme/widget or acme/other"),
            "{e}"
        );
        let e = authorize(&names(&["nope"]), &found, "acme/widget", &on("main"), &none)
            .expect_err("missing");
        assert!(e.contains("context nope does not exist"), "{e}");
    }

    fn member(name: &str, groups: &[&str]) -> Member {
        Member {
            name: name.into(),
            groups: names(groups),
        }
    }

    #[test]
    fn a_group_restriction_needs_the_job_to_run_for_members_only() {
        let found = vec![ctx(
            "prod",
            &[
                (RestrictionKind::Group, "release"),
                (RestrictionKind::Group, "ops"),
            ],
        )];
        let f = on("main");
        let ann = member("ann", &["dev", "release"]);
        let bob = member("bob", &["dev"]);
        let ops = member("olga", &["ops"]);
        let prod = names(&["prod"]);
        let run = |who: RunsFor| authorize(&prod, &found, "a/b", &f, &who);
        // An approver of the group, or a member who triggered it: given. One of the
        // context's groups is enough.
        assert!(run(RunsFor::Approvers(vec![ann.clone()])).is_ok());
        assert!(run(RunsFor::Trigger(ann.clone())).is_ok());
        assert!(run(RunsFor::Trigger(ops.clone())).is_ok());
        // Every approver upstream must be a member.
        assert!(run(RunsFor::Approvers(vec![ann.clone(), ops.clone()])).is_ok());
        let e = run(RunsFor::Approvers(vec![ann.clone(), bob.clone()])).expect_err("bob");
        assert!(
            e.contains(
                "restricted to group release or ops; bob, who approved the job, is not a member"
            ),
            "{e}"
        );
        let e = run(RunsFor::Trigger(bob.clone())).expect_err("bob pushed");
        assert!(
            e.contains("bob, who triggered the pipeline, is not a member"),
            "{e}"
        );
        // Nobody of it: neither a trigger by a person nor an approval.
        for nobody in [RunsFor::Nobody, RunsFor::Approvers(Vec::new())] {
            let e = run(nobody).expect_err("nobody");
            assert!(
                e.contains("nobody of it") && e.contains("approval job"),
                "{e}"
            );
        }
        // A group name is matched whole, not as a prefix or ignoring case.
        assert!(run(RunsFor::Trigger(member("eve", &["releases", "Release"]))).is_err());
        // A context without a group restriction is given whoever the job runs for.
        let open = vec![ctx("open", &[])];
        assert!(authorize(&names(&["open"]), &open, "a/b", &f, &RunsFor::Nobody).is_ok());
        // Approving: only a member may approve in front of a group-restricted context.
        assert!(may_approve("hold", &found, &ann).is_ok());
        assert!(may_approve("hold", &found, &ops).is_ok());
        let e = may_approve("hold", &found, &bob).expect_err("bob");
        assert!(
            e.contains("bob may not approve hold") && e.contains("group release or ops"),
            "{e}"
        );
        assert!(may_approve("hold", &open, &bob).is_ok());
    }

    #[test]
    fn a_person_and_an_operator_of_the_same_name_are_told_apart() {
        let op = Principal::Operator("ann".into());
        let person = Principal::Person {
            account: "{acct-ann}".into(),
            nickname: "ann".into(),
        };
        assert_eq!((op.name(), person.name()), ("ann", "ann"));
        assert_ne!(op, person);
        assert_eq!((op.account(), person.account()), (None, Some("{acct-ann}")));
    }

    #[test]
    fn later_contexts_win_over_earlier_ones_and_all_over_the_project() {
        let s = |a: &str, b: &str| (a.to_owned(), b.to_owned());
        let out = layer(
            vec![
                ("A".into(), "project".into(), false),
                ("P".into(), "project".into(), false),
            ],
            vec![
                vec![s("A", "first"), s("B", "first")],
                vec![s("B", "second")],
            ],
        );
        assert_eq!(
            out,
            vec![
                ("A".into(), "first".into(), true),
                ("B".into(), "second".into(), true),
                ("P".into(), "project".into(), false),
            ]
        );
    }

    #[test]
    fn restrictions_and_names_are_checked_before_they_are_stored() {
        let r = |kind, v: &str| Restriction {
            kind,
            value: v.into(),
        };
        assert!(check_restriction(&r(
            RestrictionKind::Expression,
            "pipeline.git.branch == \"main\""
        ))
        .is_ok());
        let e = check_restriction(&r(RestrictionKind::Expression, "branch == 1")).expect_err("x");
        assert!(
            e.starts_with("--expression: column 1: unknown variable"),
            "{e}"
        );
        assert!(check_restriction(&r(RestrictionKind::Group, "")).is_err());
        assert!(check_variable_name("AWS_KEY_1").is_ok());
        for bad in ["", "1A", "A-B", "A B", "A=B"] {
            assert!(check_variable_name(bad).is_err(), "{bad}");
        }
        assert!(check_context_name("org-global").is_ok());
        assert!(check_context_name("a\nb").is_err());
        for k in [
            RestrictionKind::Project,
            RestrictionKind::Group,
            RestrictionKind::Expression,
        ] {
            assert_eq!(k.as_str().parse::<RestrictionKind>(), Ok(k));
        }
    }
}

//! Contexts, pure: what a restriction is, whether a job may use its contexts (CircleCI's
//! three kinds: a project, a security group, an expression over the pipeline's values),
//! whether an operator may approve the jobs behind an approval, and how a job's variables
//! are layered (a later context over an earlier one, every context over the project's
//! variables). The store loads the rows and applies what these say.

use super::expression::{self, Facts};
use std::fmt;
use std::str::FromStr;

/// The kind of a context restriction, as stored (`context_restrictions.kind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RestrictionKind {
    /// Only jobs of one project (the value is its slug, as `project add` named it).
    Project,
    /// Only jobs an operator of the group runs (approves).
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

/// Who a job runs for, as far as group restrictions go: the operator who approved the
/// approval job in front of it, and the groups that operator belongs to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Actor {
    pub name: Option<String>,
    pub groups: Vec<String>,
}

/// Whether a job naming `wanted` (in the config's order) may run with them: `Ok` with the
/// contexts in that order, or the reason it is `unauthorized`. `found` are the contexts that
/// exist among those names; `project` the job's project slug; `facts` the pipeline's values.
pub fn authorize(
    wanted: &[String],
    found: &[ContextFacts],
    project: &str,
    facts: &Facts,
    actor: &Actor,
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
            let unmet: Vec<&Restriction> = match kind {
                RestrictionKind::Expression => {
                    of_kind.iter().copied().filter(|r| !holds(r)).collect()
                }
                _ => {
                    let met = of_kind.iter().any(|r| match kind {
                        RestrictionKind::Project => r.value == project,
                        _ => actor.groups.contains(&r.value),
                    });
                    if met {
                        Vec::new()
                    } else {
                        of_kind.clone()
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
                    RestrictionKind::Group => match &actor.name {
                        Some(who) => format!(
                            "context {name} is restricted to group {}; {who} is not a member",
                            values.join(" or ")
                        ),
                        None => format!(
                            "context {name} is restricted to group {}; nobody of it approved \
                             the job (put an approval job in front of it)",
                            values.join(" or ")
                        ),
                    },
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

/// Whether operator `actor` may approve an approval job whose dependants use `contexts`
/// (CircleCI: an approval in front of a job with a group-restricted context may be approved
/// only by a member of the group). `Err`: the reason for the 403.
pub fn may_approve(approval: &str, contexts: &[ContextFacts], actor: &Actor) -> Result<(), String> {
    for c in contexts {
        let groups: Vec<&str> = c
            .restrictions
            .iter()
            .filter(|r| r.kind == RestrictionKind::Group)
            .map(|r| r.value.as_str())
            .collect();
        if groups.is_empty() || groups.iter().any(|g| actor.groups.iter().any(|a| a == g)) {
            continue;
        }
        return Err(format!(
            "{who} may not approve {approval}: a job behind it uses context {}, restricted to \
             group {}, and {who} is not a member",
            c.name,
            groups.join(" or "),
            who = actor.name.as_deref().unwrap_or("this operator"),
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
        let none = Actor::default();
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

    #[test]
    fn a_group_restriction_needs_an_approver_of_the_group() {
        let found = vec![ctx("prod", &[(RestrictionKind::Group, "release")])];
        let f = on("main");
        let ann = Actor {
            name: Some("ann".into()),
            groups: names(&["release"]),
        };
        let bob = Actor {
            name: Some("bob".into()),
            groups: names(&["dev"]),
        };
        assert!(authorize(&names(&["prod"]), &found, "a/b", &f, &ann).is_ok());
        let e = authorize(&names(&["prod"]), &found, "a/b", &f, &bob).expect_err("bob");
        assert!(e.contains("bob is not a member"), "{e}");
        let e =
            authorize(&names(&["prod"]), &found, "a/b", &f, &Actor::default()).expect_err("nobody");
        assert!(e.contains("approval job"), "{e}");
        assert!(may_approve("hold", &found, &ann).is_ok());
        let e = may_approve("hold", &found, &bob).expect_err("bob");
        assert!(e.contains("bob may not approve hold"), "{e}");
        assert!(may_approve("hold", &[ctx("open", &[])], &bob).is_ok());
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

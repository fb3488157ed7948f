//! `bosun coordinator audit`: the audit log on the host (newest first; `--json`: JSON lines),
//! and what each host command that changes something records in it ([`event_of`]: the CLI's
//! side of `crate::audit`'s door).

use super::audit::{host, AuditAction, Event};
use super::Result;
use super::{cli_api, cli_notify, cli_people, cli_pipelines, Command, DataArg, ProjectCommand};
use crate::model::audit::Retention;

#[derive(clap::Args, Debug)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct AuditArgs {
    #[command(subcommand)]
    pub command: Option<AuditCommand>,
    /// Needed unless a subcommand is given (which takes its own).
    #[command(flatten)]
    pub data: Option<DataArg>,
    /// One JSON object a line (`id`, `at`, `at_ms`, `actor`, `action`, `project`,
    /// `target`, `detail`), for a log shipper or `jq`.
    #[arg(long)]
    pub json: bool,
    /// The newest N rows only (default: every row).
    #[arg(long, value_name = "N")]
    pub limit: Option<u32>,
}

#[derive(clap::Subcommand, Debug)]
pub enum AuditCommand {
    /// Remove the rows older than DURATION now (`serve --audit-retention` does it every
    /// hour); the removal is itself recorded, with how many rows went.
    Prune {
        #[command(flatten)]
        data: DataArg,
        /// Rows written longer ago than this go (90d, 12h, 30m).
        #[arg(long, value_name = "DURATION", value_parser = parse_older_than)]
        older_than: Retention,
    },
}

/// `--older-than`: a duration (`forever` would remove nothing, so it is refused).
fn parse_older_than(s: &str) -> std::result::Result<Retention, String> {
    match s.parse::<Retention>()? {
        Retention::Forever => Err(format!(
            "`{}`: prune takes a duration such as 90d; rows are never removed by `forever`",
            crate::printable(s)
        )),
        r => Ok(r),
    }
}

/// `audit prune`: delete the rows older than `older_than`, then record that it was done
/// (after, so the new row is not among those removed).
pub fn prune(data: &DataArg, older_than: Retention, print: &mut dyn FnMut(String)) -> Result<()> {
    let store = data.open()?;
    let cut_off = crate::model::audit::cut_off(crate::store::now_ms(), older_than);
    let removed = match cut_off {
        Some(at) => crate::audit::prune(&*store, at)?,
        None => 0,
    };
    let before = cut_off
        .map(bosun_protocol::time::iso_utc)
        .unwrap_or_else(|| "the epoch".to_owned());
    crate::audit::record(
        &*store,
        Event::new(host(), AuditAction::Pruned)
            .target(format!("rows before {before}"))
            .detail(format!("{removed} removed, on the host")),
    )?;
    print(format!(
        "removed {removed} audit log rows written before {before}"
    ));
    Ok(())
}

/// Rows read from the store at a time.
const PAGE: u32 = 500;

pub fn audit(a: AuditArgs, print: &mut dyn FnMut(String)) -> Result<()> {
    if let Some(AuditCommand::Prune { data, older_than }) = &a.command {
        return prune(data, *older_than, print);
    }
    let Some(data) = &a.data else {
        return Err(crate::CoordError::Invalid(
            "audit: --data DIR is needed (or BOSUN_COORDINATOR_DATA)".to_owned(),
        ));
    };
    let store = data.open()?;
    let mut left = a.limit.unwrap_or(u32::MAX);
    let mut before = None;
    while left > 0 {
        let rows = store.audit_log(before, left.min(PAGE))?;
        let Some(last) = rows.last() else { break };
        before = Some(last.id);
        left = left.saturating_sub(rows.len() as u32);
        for r in &rows {
            print(if a.json {
                crate::model::audit::json_line(r)
            } else {
                format!(
                    "{}  {:<24} {:<14} {:<20} {}{}",
                    bosun_protocol::time::iso_utc(r.at),
                    r.actor,
                    r.action,
                    r.project.as_deref().unwrap_or("-"),
                    r.target.as_deref().unwrap_or("-"),
                    if r.detail.is_empty() {
                        String::new()
                    } else {
                        format!("  ({})", r.detail)
                    }
                )
            });
        }
    }
    Ok(())
}

/// What a host command records once it succeeded, and the store to record it in; `None`
/// for a command that only reads (or is not audited: agents, schedules, contexts), and
/// for `audit prune`, which records itself with the number of rows it removed.
pub fn event_of(cmd: &Command) -> Option<(DataArg, Event)> {
    use AuditAction::*;
    let ev = |a| Event::new(host(), a).detail("on the host");
    let settings = |data: &DataArg, slug: &str, what: &str| {
        Some((
            data.clone(),
            ev(Settings)
                .project(slug)
                .detail(format!("{what}, on the host")),
        ))
    };
    match cmd {
        Command::Rerun(a) => Some((
            a.data.clone(),
            ev(if a.ssh { RerunWithSsh } else { Rerun }).target(format!("job {}", a.job)),
        )),
        Command::Cancel { data, job } => {
            Some((data.clone(), ev(Cancel).target(format!("job {job}"))))
        }
        Command::Trigger(a) => Some((
            a.data.clone(),
            ev(Trigger).project(&a.project).target(a.git_ref.clone()),
        )),
        Command::Approve(a) => Some((
            a.data.clone(),
            ev(Approve).target(format!("pipeline {} job {}", a.pipeline, a.job)),
        )),
        Command::CancelPipeline(a) => Some((
            a.data.clone(),
            ev(Cancel).target(format!("pipeline {}", a.pipeline)),
        )),
        Command::RerunPipeline(a) => Some((
            a.data.clone(),
            ev(Rerun).target(format!("pipeline {}", a.pipeline)),
        )),
        Command::Operator(cli_pipelines::OperatorCommand::New { data, name, .. }) => Some((
            data.clone(),
            ev(TokenMade).target(format!("operator token {name}")),
        )),
        Command::Operator(cli_pipelines::OperatorCommand::Revoke { data, name }) => Some((
            data.clone(),
            ev(TokenRevoked).target(format!("operator token {name}")),
        )),
        Command::ApiToken(cli_api::ApiTokenCommand::New {
            data,
            project,
            name,
            scope,
        }) => Some((
            data.clone(),
            ev(TokenMade)
                .project(project)
                .target(format!("project token {name}"))
                .detail(format!("{scope}, on the host")),
        )),
        Command::ApiToken(cli_api::ApiTokenCommand::Revoke { data, name }) => Some((
            data.clone(),
            ev(TokenRevoked).target(format!("project token {name}")),
        )),
        Command::Person(cli_people::PersonCommand::Grant { data, name, .. }) => {
            Some((data.clone(), ev(GrantAdmin).target(name.clone())))
        }
        Command::Person(cli_people::PersonCommand::Revoke { data, name, .. }) => {
            Some((data.clone(), ev(RevokeAdmin).target(name.clone())))
        }
        Command::Person(cli_people::PersonCommand::Groups {
            data,
            name,
            add,
            remove,
        }) => groups(data, format!("person {name}"), add, remove),
        Command::Operator(cli_pipelines::OperatorCommand::Groups {
            data,
            name,
            add,
            remove,
        }) => groups(data, format!("operator {name}"), add, remove),
        Command::Project(p) => match p {
            ProjectCommand::Set(a) => settings(&a.data, &a.slug, "project set"),
            ProjectCommand::Keygen(a) => settings(&a.data, &a.slug, "deploy key made"),
            ProjectCommand::Keys(cli_pipelines::KeysCommand::Rotate(a)) => {
                settings(&a.data, &a.slug, "deploy key rotated")
            }
            ProjectCommand::Keys(cli_pipelines::KeysCommand::Revoke {
                data, slug, user, ..
            }) => settings(
                data,
                slug,
                if *user {
                    "user key revoked"
                } else {
                    "deploy key revoked"
                },
            ),
            ProjectCommand::BadgeToken(a) => settings(&a.data, &a.slug, "badge token made"),
            ProjectCommand::Notify(cli_notify::NotifyCommand::Add { data, slug, .. }) => {
                settings(data, slug, "notification address added")
            }
            ProjectCommand::Notify(cli_notify::NotifyCommand::Rm { data, slug, .. }) => {
                settings(data, slug, "notification address removed")
            }
            ProjectCommand::Webhook(cli_notify::WebhookCommand::Add { data, slug, .. }) => {
                settings(data, slug, "webhook added")
            }
            ProjectCommand::Webhook(cli_notify::WebhookCommand::Rm { data, slug, .. }) => {
                settings(data, slug, "webhook removed")
            }
            ProjectCommand::Restrict { data, slug, .. } => {
                settings(data, slug, "agents restricted")
            }
            ProjectCommand::Add(a) => settings(&a.data, &a.slug, "project added"),
            _ => None,
        },
        _ => None,
    }
}

/// A change of someone's security groups (nothing when only listed): what was added and
/// removed, in the detail.
fn groups(
    data: &DataArg,
    target: String,
    add: &[String],
    remove: &[String],
) -> Option<(DataArg, Event)> {
    if add.is_empty() && remove.is_empty() {
        return None;
    }
    let mut what: Vec<String> = add.iter().map(|g| format!("+{g}")).collect();
    what.extend(remove.iter().map(|g| format!("-{g}")));
    Some((
        data.clone(),
        Event::new(host(), AuditAction::Groups)
            .target(target)
            .detail(format!("{}, on the host", what.join(" "))),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser, Debug)]
    struct Cli {
        #[command(subcommand)]
        command: Command,
    }

    fn event(args: &[&str]) -> Option<Event> {
        let mut argv = vec!["coordinator"];
        argv.extend_from_slice(args);
        argv.extend_from_slice(&["--data", "/nonexistent"]);
        let cli = Cli::try_parse_from(argv).expect("parses");
        event_of(&cli.command).map(|(_, e)| e)
    }

    #[test]
    fn host_commands_that_change_something_are_audited() {
        let e = event(&["rerun", "12", "--ssh"]).expect("audited");
        assert_eq!(
            (e.action, e.target.as_deref()),
            (AuditAction::RerunWithSsh, Some("job 12"))
        );
        assert!(matches!(e.actor, crate::audit::Actor::Host(_)));
        let e = event(&["person", "grant", "ann", "admin"]).expect("audited");
        assert_eq!(
            (e.action, e.target.as_deref()),
            (AuditAction::GrantAdmin, Some("ann"))
        );
        let e = event(&[
            "api-token",
            "new",
            "--project",
            "acme/w",
            "--scope",
            "trigger",
            "n",
        ])
        .expect("audited");
        assert_eq!(e.action, AuditAction::TokenMade);
        assert_eq!(e.project.as_deref(), Some("acme/w"));
        assert!(e.detail.contains("trigger"), "{}", e.detail);
        let e =
            event(&["project", "set", "--slug", "acme/w", "--public", "true"]).expect("audited");
        assert_eq!(
            (e.action, e.project.as_deref()),
            (AuditAction::Settings, Some("acme/w"))
        );
        let e = event(&["operator", "revoke", "ops"]).expect("audited");
        assert_eq!(e.action, AuditAction::TokenRevoked);
        let e = event(&[
            "person", "groups", "ann", "--add", "release", "--remove", "dev",
        ])
        .expect("audited");
        assert_eq!(
            (e.action, e.target.as_deref(), e.detail.as_str()),
            (
                AuditAction::Groups,
                Some("person ann"),
                "+release -dev, on the host"
            )
        );
        let e = event(&["operator", "groups", "ops", "--remove", "release"]).expect("audited");
        assert_eq!(
            (e.action, e.target.as_deref()),
            (AuditAction::Groups, Some("operator ops"))
        );
        // Reads are not.
        assert_eq!(event(&["person", "groups", "ann"]), None);
        assert_eq!(event(&["jobs"]), None);
        assert_eq!(event(&["person", "ls"]), None);
        assert_eq!(event(&["audit", "--json"]), None);
        assert_eq!(event(&["audit", "prune", "--older-than", "30d"]), None);
    }

    #[test]
    fn audit_prune_takes_a_duration_and_its_own_data_dir() {
        let cli = Cli::try_parse_from([
            "coordinator",
            "audit",
            "prune",
            "--older-than",
            "90d",
            "--data",
            "/d",
        ])
        .expect("parses");
        let Command::Audit(a) = cli.command else {
            panic!("audit")
        };
        match a.command {
            Some(AuditCommand::Prune { data, older_than }) => {
                assert_eq!(data.data, std::path::PathBuf::from("/d"));
                assert_eq!(
                    older_than,
                    Retention::For(std::time::Duration::from_secs(90 * 86_400))
                );
            }
            None => panic!("no prune"),
        }
        for bad in ["forever", "0", "soon"] {
            let e = Cli::try_parse_from([
                "coordinator",
                "audit",
                "prune",
                "--older-than",
                bad,
                "--data",
                "/d",
            ])
            .expect_err(bad)
            .to_string();
            assert!(e.contains("--older-than"), "{e}");
        }
        // The log itself still reads as before.
        let cli = Cli::try_parse_from(["coordinator", "audit", "--json", "--data", "/d"])
            .expect("parses");
        let Command::Audit(a) = cli.command else {
            panic!("audit")
        };
        assert!(a.json && a.command.is_none());
        assert!(a.data.is_some());
    }
}

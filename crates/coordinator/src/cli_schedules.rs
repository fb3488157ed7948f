//! The CLI's scheduled pipelines: `schedule add|ls|rm|pause|resume`. Each is one store call;
//! a running server's scheduler reads the schedules on its next pass (every second).

use super::cli_pipelines::kv;
use super::store::schedules::NewSchedule;
use super::{CoordError, DataArg, Result};
use bosun_config::cron::{format_utc, Cron, CRON_HINT};

#[derive(clap::Subcommand, Debug)]
pub enum ScheduleCommand {
    /// Add a scheduled pipeline: a pipeline on BRANCH at each CRON time (five fields, UTC),
    /// with `pipeline.trigger_source` `scheduled_pipeline` and `pipeline.schedule.name|id`.
    Add(AddArgs),
    /// List scheduled pipelines, then the scheduled workflows of the default branches'
    /// configs (with their next and last tick).
    Ls {
        #[command(flatten)]
        data: DataArg,
        /// Only this project's.
        #[arg(long)]
        project: Option<String>,
    },
    /// Remove a scheduled pipeline.
    Rm(NameArgs),
    /// Pause a scheduled pipeline: its ticks do not fire until it is resumed.
    Pause(NameArgs),
    /// Resume a paused scheduled pipeline; the ticks it was paused over do not fire.
    #[command(alias = "unpause")]
    Resume(NameArgs),
}

#[derive(clap::Args, Debug)]
pub struct AddArgs {
    #[command(flatten)]
    pub data: DataArg,
    /// Project slug (an old slug works too) or repository UUID.
    #[arg(long)]
    pub project: String,
    /// The schedule's name, unique in its project (`pipeline.schedule.name`).
    #[arg(long)]
    pub name: String,
    /// Five cron fields in UTC, e.g. "0 4 * * *".
    #[arg(long)]
    pub cron: String,
    /// The branch each pipeline builds (its head at the tick).
    #[arg(long)]
    pub branch: String,
    /// Pipeline parameter `K=V` (repeatable), read as the type the config declares.
    #[arg(long = "param", value_name = "K=V")]
    pub params: Vec<String>,
    /// Who the pipelines are attributed to; default: `system` (CircleCI's scheduling system).
    #[arg(long)]
    pub actor: Option<String>,
}

#[derive(clap::Args, Debug)]
pub struct NameArgs {
    #[command(flatten)]
    pub data: DataArg,
    #[arg(long)]
    pub project: String,
    #[arg(long)]
    pub name: String,
}

/// A name, branch or actor: printable, no surrounding spaces, no control characters.
fn word(what: &str, s: &str, spaces: bool) -> Result<()> {
    let bad = s.is_empty()
        || s.trim() != s
        || s.len() > 255
        || s.chars()
            .any(|c| c.is_control() || (!spaces && c.is_whitespace()));
    if bad {
        return Err(CoordError::Invalid(format!(
            "--{what} {:?}: give 1 to 255 printable characters{}",
            crate::text::printable(s),
            if spaces { "" } else { " without spaces" }
        )));
    }
    Ok(())
}

pub fn run(c: ScheduleCommand, print: &mut dyn FnMut(String)) -> Result<()> {
    match c {
        ScheduleCommand::Add(a) => {
            word("name", &a.name, true)?;
            word("branch", a.branch.trim_start_matches("refs/heads/"), false)?;
            if let Some(actor) = &a.actor {
                word("actor", actor, true)?;
            }
            let cron = Cron::parse(&a.cron).map_err(|e| {
                CoordError::Invalid(format!(
                    "--cron {:?}: {e}; {CRON_HINT}",
                    crate::text::printable(&a.cron)
                ))
            })?;
            let params = a.params.iter().map(|p| kv(p)).collect::<Result<Vec<_>>>()?;
            let store = a.data.open()?;
            let row = store.add_schedule(&NewSchedule {
                project: a.project,
                name: a.name,
                cron: cron.as_str().to_owned(),
                branch: a.branch.trim_start_matches("refs/heads/").to_owned(),
                params,
                actor: a.actor,
            })?;
            let next = cron
                .next_after(row.since - 1)
                .map(format_utc)
                .unwrap_or_else(|| "never".into());
            print(format!(
                "schedule {} ({}) on {} of {}: next {next}",
                row.name, row.uuid, row.branch, row.project
            ));
            Ok(())
        }
        ScheduleCommand::Ls { data, project } => {
            let store = data.open()?;
            let now = crate::store::now_ms();
            for s in store.list_schedules(project.as_deref())? {
                let next = match Cron::parse(&s.cron) {
                    _ if s.paused => "paused".to_owned(),
                    Ok(c) => c
                        .next_after(now.max(s.since - 1))
                        .map(|t| format!("next {}", format_utc(t)))
                        .unwrap_or_else(|| "never".into()),
                    Err(e) => format!("bad cron: {e}"),
                };
                let last = s
                    .last_tick
                    .map(|t| format!("last {}", format_utc(t)))
                    .unwrap_or_else(|| "never fired".into());
                let params: Vec<String> =
                    s.params.iter().map(|(k, v)| format!("{k}={v}")).collect();
                print(
                    format!(
                        "{}  {}  \"{}\"  {}  {}  {}  actor {}  {}  {}",
                        s.project,
                        s.name,
                        s.cron,
                        s.branch,
                        next,
                        last,
                        s.actor
                            .as_deref()
                            .unwrap_or(crate::model::schedule::SYSTEM_ACTOR),
                        s.uuid,
                        params.join(" ")
                    )
                    .trim_end()
                    .to_owned(),
                );
            }
            // The scheduled workflows the default branches' configs declare (read-only here:
            // they change with the config).
            for w in store.workflow_schedules()? {
                if project.as_deref().is_some_and(|p| p != w.project) {
                    continue;
                }
                let next = Cron::parse(&w.trigger.cron)
                    .ok()
                    .and_then(|c| c.next_after(now.max(w.since - 1)))
                    .map(|t| format!("next {}", format_utc(t)))
                    .unwrap_or_else(|| "never".into());
                let last = w
                    .last_tick
                    .map(|t| format!("last {}", format_utc(t)))
                    .unwrap_or_else(|| "never fired".into());
                let branches = match (&w.trigger.only, w.trigger.ignore.is_empty()) {
                    (None, true) => "every branch".to_owned(),
                    (only, _) => format!(
                        "branches only [{}] ignore [{}]",
                        only.as_deref().unwrap_or(&[]).join(", "),
                        w.trigger.ignore.join(", ")
                    ),
                };
                print(format!(
                    "{}  workflow {}  \"{}\"  {branches}  {next}  {last}  (config at {})",
                    w.project,
                    w.trigger.workflow,
                    w.trigger.cron,
                    &w.revision[..w.revision.len().min(12)]
                ));
            }
            Ok(())
        }
        ScheduleCommand::Rm(a) => {
            a.data.open()?.remove_schedule(&a.project, &a.name)?;
            print(format!("removed schedule {} of {}", a.name, a.project));
            Ok(())
        }
        ScheduleCommand::Pause(a) => {
            a.data.open()?.pause_schedule(&a.project, &a.name, true)?;
            print(format!("paused schedule {} of {}", a.name, a.project));
            Ok(())
        }
        ScheduleCommand::Resume(a) => {
            a.data.open()?.pause_schedule(&a.project, &a.name, false)?;
            print(format!("resumed schedule {} of {}", a.name, a.project));
            Ok(())
        }
    }
}

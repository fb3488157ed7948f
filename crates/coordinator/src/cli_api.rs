//! `bosun coordinator api-token`: API v2 tokens for one project (CircleCI's project tokens),
//! read-only or trigger-only (`--scope`). Operator tokens (`operator new`) do everything
//! else.

use super::{DataArg, Result};
use crate::model::tokens::ProjectScope;

#[derive(clap::Subcommand, Debug)]
pub enum ApiTokenCommand {
    /// An API v2 token for one project: prints it once (kept as a digest).
    New {
        #[command(flatten)]
        data: DataArg,
        /// The project it is for (a slug, an old slug, or the repository UUID).
        #[arg(long)]
        project: String,
        /// `read`: reads the project's pipelines, jobs, artifacts and tests; `trigger`:
        /// starts its pipelines and reads nothing.
        #[arg(long, value_enum, default_value_t = Scope::Read)]
        scope: Scope,
        /// A name to revoke it by.
        name: String,
    },
    /// Revoke every project token named NAME (or with that id).
    Revoke {
        #[command(flatten)]
        data: DataArg,
        name: String,
    },
}

/// `--scope`, as the CLI spells it.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    Read,
    Trigger,
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(ProjectScope::from(*self).as_str())
    }
}

impl From<Scope> for ProjectScope {
    fn from(s: Scope) -> ProjectScope {
        match s {
            Scope::Read => ProjectScope::Read,
            Scope::Trigger => ProjectScope::Trigger,
        }
    }
}

pub fn api_token(c: ApiTokenCommand, print: &mut dyn FnMut(String)) -> Result<()> {
    match c {
        ApiTokenCommand::New {
            data,
            project,
            name,
            scope,
        } => print(
            data.open()?
                .create_project_token(&project, &name, scope.into())?,
        ),
        ApiTokenCommand::Revoke { data, name } => {
            let n = data.open()?.revoke_project_tokens(&name)?;
            print(format!("revoked {n} project token(s) named {name}"));
        }
    }
    Ok(())
}

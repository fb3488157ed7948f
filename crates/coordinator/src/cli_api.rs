//! `bosun coordinator api-token`: read-only API v2 tokens for one project (CircleCI's
//! project tokens). Operator tokens (`operator new`) do everything else.

use super::{DataArg, Result};

#[derive(clap::Subcommand, Debug)]
pub enum ApiTokenCommand {
    /// A read-only API v2 token for one project: prints it once (kept as a digest).
    New {
        #[command(flatten)]
        data: DataArg,
        /// The project it reads (a slug, an old slug, or the repository UUID).
        #[arg(long)]
        project: String,
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

pub fn api_token(c: ApiTokenCommand, print: &mut dyn FnMut(String)) -> Result<()> {
    match c {
        ApiTokenCommand::New {
            data,
            project,
            name,
        } => print(data.open()?.create_project_token(&project, &name)?),
        ApiTokenCommand::Revoke { data, name } => {
            let n = data.open()?.revoke_project_tokens(&name)?;
            print(format!("revoked {n} project token(s) named {name}"));
        }
    }
    Ok(())
}

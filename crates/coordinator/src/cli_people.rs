//! `bosun coordinator person`: the people who logged in with Bitbucket, and the
//! coordinator-wide `admin` role given on the host (what no repository grants).

use super::{DataArg, Result};

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum CoordinatorRole {
    /// Every action on every project, whatever Bitbucket says.
    Admin,
}

#[derive(clap::Subcommand, Debug)]
pub enum PersonCommand {
    /// Give a person (their Bitbucket nickname or account UUID) a coordinator-wide role.
    Grant {
        #[command(flatten)]
        data: DataArg,
        name: String,
        #[arg(value_enum)]
        role: CoordinatorRole,
    },
    /// Take a coordinator-wide role back.
    Revoke {
        #[command(flatten)]
        data: DataArg,
        name: String,
        #[arg(value_enum)]
        role: CoordinatorRole,
    },
    /// Everyone who logged in: nickname, account UUID, role.
    Ls {
        #[command(flatten)]
        data: DataArg,
    },
}

pub fn person(c: PersonCommand, print: &mut dyn FnMut(String)) -> Result<()> {
    match c {
        PersonCommand::Grant {
            data,
            name,
            role: CoordinatorRole::Admin,
        } => {
            let p = data.open()?.set_coordinator_admin(&name, true)?;
            print(format!(
                "{} ({}) is a coordinator admin",
                p.nickname, p.uuid
            ));
        }
        PersonCommand::Revoke {
            data,
            name,
            role: CoordinatorRole::Admin,
        } => {
            let p = data.open()?.set_coordinator_admin(&name, false)?;
            print(format!(
                "{} ({}) is no longer a coordinator admin",
                p.nickname, p.uuid
            ));
        }
        PersonCommand::Ls { data } => {
            for p in data.open()?.people()? {
                print(format!(
                    "{}  {}  {}",
                    crate::printable(&p.nickname),
                    crate::printable(&p.uuid),
                    if p.admin { "admin" } else { "-" }
                ));
            }
        }
    }
    Ok(())
}

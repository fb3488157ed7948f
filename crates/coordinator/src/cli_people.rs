//! `bosun coordinator person`: the people who logged in with Bitbucket, the
//! coordinator-wide `admin` role given on the host (what no repository grants), and the
//! security groups people are in (a context restricted to a group is given to jobs run for
//! its members: docs/contexts.md).

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
    /// Everyone who logged in: nickname, account UUID, role, groups.
    Ls {
        #[command(flatten)]
        data: DataArg,
    },
    /// Put a person (Bitbucket nickname or account UUID) in security groups or take them
    /// out; prints the groups they are in.
    Groups {
        #[command(flatten)]
        data: DataArg,
        name: String,
        /// A group to put them in (repeatable).
        #[arg(long, value_name = "GROUP")]
        add: Vec<String>,
        /// A group to take them out of (repeatable).
        #[arg(long, value_name = "GROUP")]
        remove: Vec<String>,
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
            let store = data.open()?;
            for p in store.people()? {
                let groups = store.person_groups(p.id)?;
                print(format!(
                    "{}  {}  {}  {}",
                    crate::printable(&p.nickname),
                    crate::printable(&p.uuid),
                    if p.admin { "admin" } else { "-" },
                    if groups.is_empty() {
                        "-".to_owned()
                    } else {
                        crate::printable(&groups.join(","))
                    }
                ));
            }
        }
        PersonCommand::Groups {
            data,
            name,
            add,
            remove,
        } => {
            let store = data.open()?;
            let Some(p) = store.person_by_name(&name)? else {
                return Err(crate::CoordError::NotFound(format!(
                    "nobody called {} has logged in (a person exists once they logged in with \
                     Bitbucket; `bosun coordinator person ls` lists them)",
                    crate::printable(&name)
                )));
            };
            for g in &add {
                store.add_person_group(p.id, g)?;
            }
            for g in &remove {
                store.remove_person_group(p.id, g)?;
            }
            print(format!(
                "{} ({}): {}",
                crate::printable(&p.nickname),
                crate::printable(&p.uuid),
                crate::printable(&store.person_groups(p.id)?.join(" "))
            ));
        }
    }
    Ok(())
}

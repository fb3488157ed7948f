//! `bosun coordinator rerun JOB [--ssh] [--ssh-key FILE]…`: queue a job again, optionally
//! with SSH (CircleCI's "Rerun job with SSH": the same job, and the keys of whoever asked).

use super::{store, CoordError, DataArg, Result};
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct RerunArgs {
    #[command(flatten)]
    pub data: DataArg,
    /// The job to run again.
    pub job: String,
    /// Let your public keys SSH into the new job: those of --ssh-key, else ~/.ssh/*.pub.
    #[arg(long)]
    pub ssh: bool,
    /// A `.pub` or `authorized_keys` file whose keys may SSH in (repeatable; implies --ssh).
    #[arg(long = "ssh-key", value_name = "FILE")]
    pub ssh_keys: Vec<PathBuf>,
}

/// Queue the rerun; returns the new job's id, and with SSH what it holds of the project's
/// user key, in words. The host's CLI acts for the whole coordinator, as an operator: the
/// rule (`model::ssh_policy`) gives it the user key.
pub fn run(a: &RerunArgs) -> Result<(i64, Option<String>)> {
    use crate::model::ssh_policy::{self as policy, SshAsker};
    let id = store::parse_job_id(&a.job)
        .ok_or_else(|| CoordError::Invalid(format!("`{}` is not a job id", a.job)))?;
    if !a.ssh && a.ssh_keys.is_empty() {
        return Ok((a.data.open()?.rerun(id, &[])?, None));
    }
    let keys = bosun_git::keys::read_files(&a.ssh_keys)?;
    let store = a.data.open()?;
    let facts = store
        .user_key_facts(id)?
        .ok_or_else(|| CoordError::NotFound(format!("no job {id}")))?;
    let operator = SshAsker {
        may_rerun_with_ssh: true,
        coordinator_wide: true,
        account: None,
    };
    let user_key = policy::decide(operator, &facts)
        .map_err(|r| CoordError::Forbidden(policy::refusal_text(&r)))?;
    let by = format!(
        "the host's CLI ({})",
        crate::printable(&std::env::var("USER").unwrap_or_else(|_| "operator".to_owned()))
    );
    let new = store.rerun_with_ssh(id, &keys, &by, user_key)?;
    Ok((new, Some(policy::explain(user_key, facts.owner.as_deref()))))
}

/// The command a finished job's page offers to copy.
pub fn command(job: i64) -> String {
    format!("bosun coordinator rerun {job} --ssh --ssh-key ~/.ssh/id_ed25519.pub --data DATA")
}

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

/// Queue the rerun; returns the new job's id.
pub fn run(a: &RerunArgs) -> Result<i64> {
    let id = store::parse_job_id(&a.job)
        .ok_or_else(|| CoordError::Invalid(format!("`{}` is not a job id", a.job)))?;
    let keys = if a.ssh || !a.ssh_keys.is_empty() {
        bosun_git::keys::read_files(&a.ssh_keys)?
    } else {
        Vec::new()
    };
    a.data.open()?.rerun(id, &keys)
}

/// The command a finished job's page offers to copy.
pub fn command(job: i64) -> String {
    format!("bosun coordinator rerun {job} --ssh --ssh-key ~/.ssh/id_ed25519.pub --data DATA")
}

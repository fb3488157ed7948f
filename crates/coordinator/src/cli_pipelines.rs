//! The CLI's pipeline and Bitbucket commands: `trigger`, `approve`, `pipelines`,
//! `cancel-pipeline`, `rerun-pipeline`, `operator`, `project set|keygen|keys`. Each is one store call;
//! the server's runner notices the change (`PRAGMA data_version`) and acts on it.

use super::bitbucket::status::statuses;
use super::model::StatusApi;
use super::store::pipelines::NewPipeline;
use super::store::{KeyColumn, ProjectSettings};
use super::{read_file, CoordError, DataArg, Result};
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct TriggerArgs {
    #[command(flatten)]
    pub data: DataArg,
    /// Project slug (an old slug works too) or repository UUID.
    #[arg(long)]
    pub project: String,
    /// Branch (`main`, `refs/heads/main`) or tag (`refs/tags/v1`).
    #[arg(long = "ref")]
    pub git_ref: String,
    /// Commit to build; default: the ref's head when the server fetches the config.
    #[arg(long)]
    pub commit: Option<String>,
    /// Pipeline parameter `K=V` (repeatable), read as the type the config declares.
    #[arg(long = "param", value_name = "K=V")]
    pub params: Vec<String>,
}

#[derive(clap::Args, Debug)]
pub struct ApproveArgs {
    #[command(flatten)]
    pub data: DataArg,
    /// The pipeline: its id, or `PROJECT#NUMBER`.
    pub pipeline: String,
    /// The approval job's name in its workflow.
    pub job: String,
    /// Who approves (recorded); default: $USER.
    #[arg(long)]
    pub by: Option<String>,
}

#[derive(clap::Args, Debug)]
pub struct PipelinesArgs {
    #[command(flatten)]
    pub data: DataArg,
    #[arg(long)]
    pub project: Option<String>,
    #[arg(long, default_value_t = 20)]
    pub limit: u32,
}

#[derive(clap::Args, Debug)]
pub struct PipelineRefArgs {
    #[command(flatten)]
    pub data: DataArg,
    /// The pipeline: its id, or `PROJECT#NUMBER`.
    pub pipeline: String,
}

#[derive(clap::Subcommand, Debug)]
pub enum OperatorCommand {
    New {
        #[command(flatten)]
        data: DataArg,
        name: String,
        /// A security group the operator belongs to (repeatable; contexts restricted to a
        /// group are approved by its members only).
        #[arg(long = "group", value_name = "G")]
        groups: Vec<String>,
    },
    /// Add an operator to groups or take it out of them; prints its groups.
    Groups {
        #[command(flatten)]
        data: DataArg,
        name: String,
        #[arg(long = "add", value_name = "G")]
        add: Vec<String>,
        #[arg(long = "remove", value_name = "G")]
        remove: Vec<String>,
    },
    Revoke {
        #[command(flatten)]
        data: DataArg,
        name: String,
    },
}

#[derive(clap::Args, Debug)]
pub struct ProjectSetArgs {
    #[command(flatten)]
    pub data: DataArg,
    #[arg(long)]
    pub slug: String,
    /// A file holding the webhook's secret (as entered in Bitbucket's webhook settings).
    #[arg(long, value_name = "FILE")]
    pub webhook_secret_file: Option<PathBuf>,
    #[arg(long)]
    pub default_branch: Option<String>,
    /// Build other branches only while they have an open pull request.
    #[arg(long)]
    pub build_pull_requests_only: Option<bool>,
    /// Build pull requests from forks.
    #[arg(long)]
    pub build_fork_pull_requests: Option<bool>,
    /// Give forked pull requests' builds the secret env values and the user key.
    #[arg(long)]
    pub fork_secrets: Option<bool>,
    /// Bitbucket's REST API base for commit statuses: https://api.bitbucket.org/2.0 (Cloud),
    /// or `data-center:https://HOST` (Data Center's build-status API); empty: statuses off.
    #[arg(long, value_name = "URL")]
    pub status_api: Option<String>,
    /// A file holding `EMAIL:API-TOKEN` (HTTP Basic) or `bearer:TOKEN` for the status API.
    #[arg(long, value_name = "FILE")]
    pub status_credentials_file: Option<PathBuf>,
    /// Serve the project's status badges without a token (`/badge/...svg`); `false`: only
    /// with the one `project badge-token` made (the default).
    #[arg(long)]
    pub public_badges: Option<bool>,
    /// Let anyone read the project's pages, logs, artifacts and test results without
    /// logging in (read-only, as CircleCI's open-source projects); `false`: only people its
    /// repository lets read (the default; docs/people.md).
    #[arg(long)]
    pub public: Option<bool>,
    /// When someone other than the user key's owner (or a coordinator admin) reruns a job
    /// with SSH: `without-user-key` (the default: the rerun gets the deploy key only) or
    /// `refuse` (docs/ssh.md).
    #[arg(long, value_name = "POLICY")]
    pub ssh_policy: Option<crate::model::ssh_policy::SshPolicy>,
    /// The Bitbucket account the project's user key belongs to (`{UUID}`, or a nickname):
    /// who may rerun with SSH holding it. `user key add --user` records it; a key given with
    /// `project add --user-key` needs it said here. Empty: not recorded (nobody but admins).
    #[arg(long, value_name = "ACCOUNT")]
    pub user_key_owner: Option<String>,
}

#[derive(clap::Args, Debug)]
pub struct KeygenArgs {
    #[command(flatten)]
    pub data: DataArg,
    #[arg(long)]
    pub slug: String,
}

#[derive(clap::Subcommand, Debug)]
pub enum KeysCommand {
    /// A new deploy key replaces the current one; prints its public line.
    Rotate(KeygenArgs),
    /// Forget the user key (`--user`) or the deploy key (`--deploy`).
    Revoke {
        #[command(flatten)]
        data: DataArg,
        #[arg(long)]
        slug: String,
        #[arg(long, conflicts_with = "deploy", required_unless_present = "deploy")]
        user: bool,
        #[arg(long)]
        deploy: bool,
    },
}

pub(crate) fn kv(s: &str) -> Result<(String, String)> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(CoordError::Invalid(format!("`{s}`: expected K=V"))),
    }
}

pub fn trigger(a: TriggerArgs, print: &mut dyn FnMut(String)) -> Result<()> {
    let store = a.data.open()?;
    let params = a.params.iter().map(|p| kv(p)).collect::<Result<Vec<_>>>()?;
    let (id, number) = store.create_pipeline(&NewPipeline {
        project: a.project.clone(),
        git_ref: a.git_ref,
        commit_sha: a.commit,
        params,
        trigger_source: "api".into(),
        event: "api".into(),
        event_action: "api".into(),
        username: std::env::var("USER").ok(),
        ..Default::default()
    })?;
    print(format!("pipeline {id} ({}#{number})", a.project));
    Ok(())
}

/// Where commit statuses link from the CLI's side: the server's own setting is not known
/// here, so the pipeline's page is linked relatively by the server when it sends them.
const CLI_PUBLIC_URL: &str = "";

pub fn approve(a: ApproveArgs, print: &mut dyn FnMut(String)) -> Result<()> {
    let store = a.data.open()?;
    let id = store.pipeline_id(&a.pipeline)?;
    let by =
        a.by.or_else(|| std::env::var("USER").ok())
            .unwrap_or_else(|| "cli".into());
    let by = crate::model::contexts::Principal::Operator(by);
    let wf = store.approve(id, &a.job, &by, &statuses(CLI_PUBLIC_URL))?;
    print(format!(
        "approved {} in workflow {wf} of pipeline {id}",
        a.job
    ));
    Ok(())
}

pub fn list(a: PipelinesArgs, print: &mut dyn FnMut(String)) -> Result<()> {
    let store = a.data.open()?;
    for p in store.list_pipelines(a.project.as_deref(), a.limit)? {
        print(format!(
            "{:>5}  {}#{}  {}  {}{}",
            p.id,
            p.project,
            p.number,
            p.git_ref,
            p.status,
            p.error
                .as_deref()
                .map(|e| format!("  {}", e.lines().next().unwrap_or("")))
                .unwrap_or_default()
        ));
        for w in &p.workflows {
            print(format!("       {} {}", w.name, w.status));
            for j in &w.jobs {
                // The reason as the page shows it: why a job waits, is blocked or not run.
                print(
                    format!(
                        "         {:<24} {:<12} {:<10} {}",
                        j.name,
                        j.status.as_str(),
                        j.job_id.map(|i| format!("job {i}")).unwrap_or_default(),
                        j.reason.as_deref().unwrap_or("")
                    )
                    .trim_end()
                    .to_owned(),
                );
            }
        }
    }
    Ok(())
}

pub fn cancel(a: PipelineRefArgs, print: &mut dyn FnMut(String)) -> Result<()> {
    let store = a.data.open()?;
    let id = store.pipeline_id(&a.pipeline)?;
    store.cancel_pipeline(id, &statuses(CLI_PUBLIC_URL))?;
    print(format!("pipeline {id}: cancel requested"));
    Ok(())
}

pub fn rerun(a: PipelineRefArgs, print: &mut dyn FnMut(String)) -> Result<()> {
    let store = a.data.open()?;
    let id = store.pipeline_id(&a.pipeline)?;
    let n = store.rerun_failed(id, None, &statuses(CLI_PUBLIC_URL))?;
    print(format!("pipeline {id}: {n} job(s) run again"));
    Ok(())
}

pub fn operator(c: OperatorCommand, print: &mut dyn FnMut(String)) -> Result<()> {
    match c {
        OperatorCommand::New { data, name, groups } => {
            let store = data.open()?;
            for g in &groups {
                store.add_operator_group(&name, g)?;
            }
            print(store.create_operator_token(&name)?)
        }
        OperatorCommand::Groups {
            data,
            name,
            add,
            remove,
        } => {
            let store = data.open()?;
            for g in &add {
                store.add_operator_group(&name, g)?;
            }
            for g in &remove {
                store.remove_operator_group(&name, g)?;
            }
            print(format!(
                "{name}: {}",
                store.operator_groups(&name)?.join(" ")
            ));
        }
        OperatorCommand::Revoke { data, name } => {
            let n = data.open()?.revoke_operator_tokens(&name)?;
            print(format!("revoked {n} token(s) of {name}"));
        }
    }
    Ok(())
}

pub fn project_set(a: ProjectSetArgs) -> Result<()> {
    let store = a.data.open()?;
    let secret = |p: &Option<PathBuf>| -> Result<Option<String>> {
        p.as_deref()
            .map(|f| read_file(f).map(|t| t.trim().to_owned()))
            .transpose()
    };
    store.set_project_settings(
        &a.slug,
        &ProjectSettings {
            webhook_secret: secret(&a.webhook_secret_file)?,
            default_branch: a.default_branch,
            build_pull_requests_only: a.build_pull_requests_only,
            build_fork_pull_requests: a.build_fork_pull_requests,
            fork_secrets: a.fork_secrets,
            status_api: a
                .status_api
                .as_deref()
                .map(StatusApi::parse_setting)
                .transpose()
                .map_err(|e| CoordError::Invalid(e.to_string()))?,
            status_credentials: secret(&a.status_credentials_file)?,
        },
    )?;
    if let Some(public) = a.public_badges {
        store.set_public_badges(&a.slug, public)?;
    }
    if let Some(public) = a.public {
        store.set_project_public(&a.slug, public)?;
    }
    if let Some(policy) = a.ssh_policy {
        store.set_ssh_policy(&a.slug, policy)?;
    }
    if let Some(owner) = &a.user_key_owner {
        let owner = owner.trim();
        if owner.len() > 128 || owner.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err(CoordError::Invalid(
                "--user-key-owner: expected a Bitbucket account's {UUID} or nickname".to_owned(),
            ));
        }
        store.set_user_key_owner(&a.slug, (!owner.is_empty()).then_some(owner))?;
    }
    Ok(())
}

/// A new ed25519 key pair: (OpenSSH private key text, public line).
pub(crate) fn new_key(comment: &str) -> Result<(zeroize::Zeroizing<String>, String)> {
    use russh::keys::ssh_key::private::Ed25519Keypair;
    use russh::keys::ssh_key::LineEnding;
    use russh::keys::PrivateKey;
    use std::io::Read;
    let mut seed = zeroize::Zeroizing::new([0u8; 32]);
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(seed.as_mut()))
        .map_err(|source| CoordError::Io {
            path: "/dev/urandom".into(),
            source,
        })?;
    let mut key = PrivateKey::from(Ed25519Keypair::from_seed(&seed));
    key.set_comment(comment);
    let private = key
        .to_openssh(LineEnding::LF)
        .map_err(|e| CoordError::Invalid(format!("cannot encode the new key: {e}")))?;
    let public = key
        .public_key()
        .to_openssh()
        .map_err(|e| CoordError::Invalid(format!("cannot encode the new key: {e}")))?;
    Ok((zeroize::Zeroizing::new(private.to_string()), public))
}

pub fn keygen(a: KeygenArgs, print: &mut dyn FnMut(String)) -> Result<()> {
    let store = a.data.open()?;
    let (private, public) = new_key(&format!("bosun deploy key for {}", a.slug))?;
    store.set_project_key(&a.slug, KeyColumn::Deploy, Some(&private))?;
    print(public);
    Ok(())
}

pub fn keys(c: KeysCommand, print: &mut dyn FnMut(String)) -> Result<()> {
    match c {
        KeysCommand::Rotate(a) => keygen(a, print),
        KeysCommand::Revoke {
            data,
            slug,
            user,
            deploy: _,
        } => {
            let column = if user {
                KeyColumn::User
            } else {
                KeyColumn::Deploy
            };
            let store = data.open()?;
            store.set_project_key(&slug, column, None)?;
            if user {
                store.set_user_key_owner(&slug, None)?;
            }
            print(format!("{slug}: {column:?} key removed"));
            Ok(())
        }
    }
}

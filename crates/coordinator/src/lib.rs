//! `bosun coordinator`: the reference coordinator. It queues jobs, leases them to agents over
//! the protocol in [`bosun_protocol`] (described for other implementers in
//! `docs/protocol.md`), stores their logs and events durably, and shows them on a small web
//! page that follows running jobs live. A crate of its own on the wire, the config compiler and
//! git (never on the job core), and the only one that compiles SQLite and axum (the agent builds without it: docs/architecture.md).
//!
//! Layout: [`store`] (SQLite or PostgreSQL: the state) and [`objects`] (blobs and finished
//! logs) ← [`api`] (agent endpoints) and [`web`] (web routes, server-sent events; the HTML of
//! the pages in [`pages`]) ← [`serve`] (settings in `serve_args.rs`) and the CLI commands here.

pub mod api;
pub mod api_v2;
pub mod audit;
pub mod bitbucket;
pub mod blobs;
mod cli_api;
mod cli_audit;
mod cli_badges;
mod cli_contexts;
mod cli_follow;
mod cli_notify;
mod cli_people;
mod cli_pipelines;
mod cli_schedules;
mod error;
pub mod metrics;
pub mod migrate;
pub mod model;
pub mod notify;
pub mod objects;
pub mod oidc;
pub mod pages;
pub mod people;
pub mod per_address;
pub mod pipelines;
pub mod rerun;
pub mod schedules;
pub mod secrets;
mod serve;
mod serve_args;
pub mod server;
pub use serve::{serve, AppState, JobProgress, JobWatch};
pub use serve_args::ServeArgs;
pub mod store;
mod text;
pub mod web;

pub use error::{CoordError, Result};
pub use oidc::{OidcAction, OidcKeysArg};
pub use text::{fmt_duration, is_unsafe_char, printable};
pub(crate) use text::{hex, sha256_hex};

use bosun_protocol::WireEnv;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use store::{Backend, NewJob, NewProject, Store, DEFAULT_MAX_ATTEMPTS};

#[derive(clap::Subcommand, Debug)]
pub enum Command {
    /// Serve the agent API (under /api/v1) and the web pages.
    Serve(Box<ServeArgs>),
    /// Manage projects.
    #[command(subcommand)]
    Project(ProjectCommand),
    /// Queue a job; prints its id.
    Enqueue(EnqueueArgs),
    /// Queue a job again (the same commit, job and pipeline); `--ssh` lets you SSH into it,
    /// as CircleCI's "Rerun job with SSH". Prints the new job's id.
    Rerun(rerun::RerunArgs),
    /// List jobs, newest first.
    Jobs {
        #[command(flatten)]
        data: DataArg,
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// Cancel a job: queued ones at once, running ones at their agent's next heartbeat.
    Cancel {
        #[command(flatten)]
        data: DataArg,
        job: String,
    },
    /// Registration tokens agents present to register, kept as digests only: `token` prints
    /// a new one, `token rotate` revokes every earlier one and prints a new one, `token list`
    /// lists them (ids and expiry, never the tokens).
    Token {
        #[command(flatten)]
        data: DataArg,
        #[arg(value_enum, default_value_t = TokenAction::New)]
        action: TokenAction,
        /// The new token stops working after this long (e.g. 1h, 7d); default: never.
        #[arg(long, value_name = "DURATION", value_parser = parse_ttl)]
        expires: Option<Duration>,
    },
    /// Fix an agent's resource class and labels (agents cannot change their own).
    Relabel {
        #[command(flatten)]
        data: DataArg,
        /// The agent's id (`agents` lists them).
        agent: String,
        #[arg(long)]
        resource_class: String,
        /// Repeatable; none: no labels.
        #[arg(long = "label")]
        labels: Vec<String>,
    },
    /// Revoke an agent (by id or name): its next call gets 401 and it stops.
    Revoke {
        #[command(flatten)]
        data: DataArg,
        agent: String,
    },
    /// List registered agents.
    Agents {
        #[command(flatten)]
        data: DataArg,
    },
    /// The OIDC signing keys: `rotate` makes a new signing key (the old one stays in the JWKS
    /// until the tokens it signed have expired; a running server picks the change up at
    /// once), `keys` lists them (ids and state, never the keys).
    Oidc {
        #[command(flatten)]
        data: DataArg,
        #[arg(value_enum)]
        action: OidcAction,
        #[command(flatten)]
        keys: OidcKeysArg,
    },
    /// Start a pipeline: the config at the commit is fetched and compiled by the server,
    /// and its workflows run. Prints `pipeline ID (PROJECT#NUMBER)`.
    Trigger(cli_pipelines::TriggerArgs),
    /// Approve an approval job that holds a pipeline's workflow.
    Approve(cli_pipelines::ApproveArgs),
    /// List pipelines with their workflows and jobs, newest first.
    Pipelines(cli_pipelines::PipelinesArgs),
    /// Cancel a pipeline (its queued jobs at once, running ones at the next heartbeat).
    CancelPipeline(cli_pipelines::PipelineRefArgs),
    /// Rerun a failed or canceled pipeline's workflows from their failed jobs.
    RerunPipeline(cli_pipelines::PipelineRefArgs),
    /// Operator tokens for the web page's approve/cancel/rerun buttons: `new NAME` prints
    /// one (kept as a digest), `revoke NAME` revokes every token of NAME.
    #[command(subcommand)]
    Operator(cli_pipelines::OperatorCommand),
    /// API v2 tokens for one project (docs/api-v2.md): `new --project SLUG [--scope
    /// read|trigger] NAME` prints one, `revoke NAME` revokes them.
    #[command(subcommand)]
    ApiToken(cli_api::ApiTokenCommand),
    /// Contexts: named sets of secret variables a workflow job's `context:` gives it, and
    /// their restrictions (docs/contexts.md).
    #[command(subcommand)]
    Context(cli_contexts::ContextCommand),
    /// Users' keys on Bitbucket: `user key add|rm` ("Authorize with Bitbucket").
    #[command(subcommand)]
    User(cli_follow::UserCommand),
    /// Scheduled pipelines: `add --project P --name N --cron EXPR --branch B [--param K=V]…
    /// [--actor NAME]`, `ls`, `rm`, `pause`, `resume` (docs/schedules.md).
    #[command(subcommand)]
    Schedule(cli_schedules::ScheduleCommand),
    /// People who log in with Bitbucket: `person ls`, `person grant NAME admin`, `person
    /// revoke NAME admin` (docs/people.md).
    #[command(subcommand)]
    Person(cli_people::PersonCommand),
    /// The audit log, newest first: who logged in or out, triggered, reran, approved,
    /// canceled, changed settings, made or revoked a token, granted or revoked admin
    /// (`--json`: JSON lines; docs/people.md); `audit prune --older-than DURATION` removes
    /// older rows.
    Audit(cli_audit::AuditArgs),
    /// Move this coordinator's store from SQLite into PostgreSQL (`--from sqlite:DIR --to
    /// postgres://…`), and with `--blobs-to s3://…` its blobs and finished logs into a
    /// bucket; stop the coordinator first. Prints the rows of every table on both sides
    /// (docs/scale.md).
    Migrate(Box<migrate::MigrateArgs>),
}

#[derive(clap::Args, Debug, Clone)]
pub struct DataArg {
    /// The coordinator's data directory (holds coordinator.db).
    #[arg(long, env = "BOSUN_COORDINATOR_DATA")]
    pub data: PathBuf,
    /// The key file sealing private keys and secret values in coordinator.db (default:
    /// `<data dir>.key` beside the data directory, created 0600 on first use). Keep it out
    /// of the data directory's backups.
    #[arg(long, env = "BOSUN_COORDINATOR_SECRETS_KEY", value_name = "FILE")]
    pub secrets_key: Option<PathBuf>,
    /// Keep the store in PostgreSQL instead of the data directory's SQLite file
    /// (`postgres://USER@HOST:PORT/DB?sslmode=require`; docs/scale.md). Running jobs' logs
    /// go into the database too; `serve` then wants --blob-store (or --shared-data). Give a
    /// password in the environment, not on the command line.
    #[arg(
        long,
        env = "BOSUN_DATABASE_URL",
        value_name = "URL",
        hide_env_values = true
    )]
    pub database: Option<DatabaseUrl>,
}

/// `--database`: a PostgreSQL URL, which may hold a password, so never printed whole.
#[derive(Clone)]
pub struct DatabaseUrl(bosun_protocol::private::Secret<String>);

impl std::fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", store::pg::redacted(self.0.expose()))
    }
}

impl std::str::FromStr for DatabaseUrl {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        if store::pg::is_postgres_url(s) {
            Ok(DatabaseUrl(bosun_protocol::private::Secret::new(
                s.to_string(),
            )))
        } else {
            Err("expected a postgres:// or postgresql:// URL".into())
        }
    }
}

impl DataArg {
    /// The SQLite store in the data directory, opened and migrated: what `serve` keeps (its
    /// change watcher reads SQLite's `PRAGMA data_version`).
    pub fn open_sqlite(&self) -> Result<Store> {
        Store::open_with_key(&self.data, self.secrets_key.as_deref())
    }

    /// The store as the CLI commands see it, through its traits only: opening is the one
    /// SQLite-specific step, and where a second backend would be chosen.
    pub fn open(&self) -> Result<Box<dyn Backend>> {
        match &self.database {
            Some(url) => Ok(Box::new(self.open_postgres(url)?)),
            None => Ok(Box::new(self.open_sqlite()?)),
        }
    }

    /// The PostgreSQL store at `url`.
    pub fn open_postgres(&self, url: &DatabaseUrl) -> Result<store::PgStore> {
        store::PgStore::open(url.0.expose(), &self.data, self.secrets_key.as_deref())
    }

    /// The store as `serve` holds it: its areas and the feed of other processes' changes.
    pub fn open_served(&self) -> Result<std::sync::Arc<dyn store::ServedStore>> {
        match &self.database {
            Some(url) => Ok(std::sync::Arc::new(self.open_postgres(url)?)),
            None => Ok(std::sync::Arc::new(self.open_sqlite()?)),
        }
    }
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenAction {
    New,
    Rotate,
    List,
}

fn parse_ttl(text: &str) -> std::result::Result<Duration, String> {
    bosun_config::parse_duration(text)
        .filter(|d| !d.is_zero())
        .ok_or_else(|| "expected a duration such as 90s, 30m, 12h or 7d".to_owned())
}

#[derive(clap::Subcommand, Debug)]
pub enum ProjectCommand {
    /// Add a project (a Bitbucket repository) jobs can be queued for.
    Add(ProjectAddArgs),
    /// Follow a Bitbucket repository through its REST API: the project is added (or found),
    /// a new deploy key is added to the repository and a webhook to this coordinator created.
    /// Following again adds nothing twice.
    Follow(cli_follow::FollowArgs),
    /// Remove Bosun's webhook and deploy key from the repository (only Bosun's); the
    /// project's pipelines and settings stay.
    Unfollow(cli_follow::UnfollowArgs),
    /// Bitbucket settings: webhook secret, build rules, commit status API and credentials.
    Set(cli_pipelines::ProjectSetArgs),
    /// Make an ed25519 deploy key for the project (replacing its deploy key) and print the
    /// public line to paste into Bitbucket (Repository settings → Access keys).
    Keygen(cli_pipelines::KeygenArgs),
    /// `rotate`: a new deploy key (the public line is printed; remove the old one from
    /// Bitbucket); `revoke --user|--deploy`: forget a key.
    #[command(subcommand)]
    Keys(cli_pipelines::KeysCommand),
    /// Make a new badge token for the project's status badges (the old one stops working)
    /// and print it with the README's Markdown.
    BadgeToken(cli_badges::BadgeTokenArgs),
    /// E-mail addresses told of the project's pipelines: `add --email ADDR [--on
    /// failed,fixed,default-branch]`, `ls`, `rm --email ADDR`.
    #[command(subcommand)]
    Notify(cli_notify::NotifyCommand),
    /// Outgoing webhooks (CircleCI's shape, signed): `add URL [--events
    /// workflow-completed,job-completed]`, `ls`, `rm URL|ID`.
    #[command(subcommand)]
    Webhook(cli_notify::WebhookCommand),
    /// Let only these agents run the project's jobs (its keys go to them only); without
    /// `--agent`, any agent may again.
    Restrict {
        #[command(flatten)]
        data: DataArg,
        #[arg(long)]
        slug: String,
        /// Agent id (repeatable; `agents` lists them).
        #[arg(long = "agent")]
        agents: Vec<String>,
    },
}

#[derive(clap::Args, Debug)]
pub struct ProjectAddArgs {
    #[command(flatten)]
    pub data: DataArg,
    /// `workspace/repo`.
    #[arg(long)]
    pub slug: String,
    #[arg(long)]
    pub clone_url: String,
    /// Bitbucket repository UUID (`{…}`); a random one if not given.
    #[arg(long, conflicts_with = "data_center")]
    pub uuid: Option<String>,
    /// A Bitbucket Data Center repository instead of a Cloud one: the server's base URL
    /// (`https://bitbucket.example.com`). Data Center has no repository UUIDs: the project is
    /// keyed by this server and `--repository-id`, which a rename keeps.
    #[arg(long, value_name = "URL", requires = "repository_id")]
    pub data_center: Option<String>,
    /// The Data Center repository's id (the `id` of
    /// `GET /rest/api/1.0/projects/KEY/repos/SLUG`, and of `repository` in its webhooks).
    #[arg(long, value_name = "ID", requires = "data_center")]
    pub repository_id: Option<u64>,
    /// Private key file of the user key (offered first). Stored in coordinator.db (mode 0600).
    #[arg(long)]
    pub user_key: Option<PathBuf>,
    /// Private key file of the deploy key. Stored in coordinator.db (mode 0600).
    #[arg(long)]
    pub deploy_key: Option<PathBuf>,
    /// known_hosts lines trusted for this project's checkouts.
    #[arg(long)]
    pub known_hosts: Option<PathBuf>,
    /// Environment variable K=V for the project's jobs.
    #[arg(long = "env", value_name = "K=V")]
    pub env: Vec<String>,
    /// Secret environment variable K=V: agents mask its value in logs.
    #[arg(long = "secret-env", value_name = "K=V")]
    pub secret_env: Vec<String>,
}

#[derive(clap::Args, Debug)]
pub struct EnqueueArgs {
    #[command(flatten)]
    pub data: DataArg,
    /// Project slug.
    #[arg(long)]
    pub project: String,
    /// Branch (`main`, `refs/heads/main`) or tag (`refs/tags/v1`).
    #[arg(long = "ref")]
    pub git_ref: String,
    /// Job name in .circleci/config.yml.
    #[arg(long)]
    pub job: String,
    /// Commit to build; without it agents get the ref name as `commit_sha`.
    #[arg(long)]
    pub commit: Option<String>,
    /// Only agents of this resource class may run it (default: any).
    #[arg(long)]
    pub resource_class: Option<String>,
    /// Only agents with this label may run it (repeatable).
    #[arg(long = "label")]
    pub labels: Vec<String>,
    /// Attempts before a lapsed lease marks the job infrastructure_fail.
    #[arg(long, default_value_t = DEFAULT_MAX_ATTEMPTS)]
    pub max_attempts: u32,
    /// Number of the pull request this job builds; the job gets CIRCLE_PULL_REQUEST and
    /// CIRCLE_PULL_REQUESTS (and CIRCLE_PR_NUMBER with --pull-request-fork).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub pull_request: Option<u64>,
    /// The pull request's web address (needs --pull-request). Without it the Bitbucket Cloud
    /// address is derived from the project slug: https://bitbucket.org/<slug>/pull-requests/<N>
    /// (give it for self-hosted Bitbucket).
    #[arg(long, value_name = "URL", requires = "pull_request")]
    pub pull_request_url: Option<String>,
    /// The pull request comes from a fork (needs --pull-request): the job also gets
    /// CIRCLE_PR_NUMBER, which CircleCI sets for forked pull requests only.
    #[arg(long, requires = "pull_request")]
    pub pull_request_fork: bool,
    /// Time limit for the whole job, e.g. 90s, 30m, 2h (at most 24h; default 3h). The agent
    /// stops the job when it runs out and reports it `timedout`.
    #[arg(long, value_name = "DURATION", value_parser = parse_timeout)]
    pub timeout: Option<u64>,
    /// Let the public keys in FILE (a `.pub` or an `authorized_keys` file; repeatable) SSH
    /// into the job while it runs and after its last step (`ssh -p PORT JOB@HOST`).
    #[arg(long = "ssh-key", value_name = "FILE")]
    pub ssh_keys: Vec<PathBuf>,
    /// The workspace the job attaches (`attach_workspace`) and persists to: give the jobs of
    /// one workflow run the same name (A-Z a-z 0-9 . _ -). Default: the job's own.
    #[arg(long, value_name = "NAME")]
    pub workspace: Option<String>,
}

/// `--timeout`: a duration written as for `run.no_output_timeout`, in whole seconds (a
/// fraction rounds up: the protocol counts seconds), within the store's limits.
fn parse_timeout(text: &str) -> std::result::Result<u64, String> {
    let out_of_range = || {
        format!(
            "a job timeout must be between 1s and {}h",
            store::MAX_JOB_TIMEOUT_SECS / 3600
        )
    };
    let Some(d) = bosun_config::parse_duration(text) else {
        // `0s` or a number too large for a Duration is well formed, just out of range: say
        // that rather than "bad format".
        let t = text.trim();
        let number = t.trim_end_matches(|c: char| c.is_ascii_alphabetic());
        let unit = &t[number.len()..];
        if number.parse::<f64>().is_ok() && ["ms", "s", "m", "h", "d"].contains(&unit) {
            return Err(out_of_range());
        }
        return Err(
            "expected a number with a unit s, m or h (e.g. 90s, 30m, 2h; also ms and d)".into(),
        );
    };
    let secs = d.as_secs().saturating_add(u64::from(d.subsec_nanos() > 0));
    store::check_timeout_secs(secs).map_err(|_| out_of_range())?;
    Ok(secs)
}

fn read_file(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|source| CoordError::Io {
        path: path.to_path_buf(),
        source,
    })
}

fn parse_env(kv: &str, secret: bool) -> Result<WireEnv> {
    match kv.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok(WireEnv {
            name: k.to_string(),
            value: v.to_string(),
            secret,
        }),
        _ => Err(CoordError::Invalid(format!(
            "`{}`: expected NAME=VALUE",
            // Never echo a secret value back.
            if secret {
                kv.split('=').next().unwrap_or("")
            } else {
                kv
            }
        ))),
    }
}

/// Run one `bosun coordinator …` command; returns the process exit code.
pub fn run(cmd: Command) -> u8 {
    match run_inner(cmd) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("error: {e}");
            2
        }
    }
}

/// Run the command, then record what it did in the audit log (`cli_audit::event_of`).
fn run_inner(cmd: Command) -> Result<()> {
    let audited = cli_audit::event_of(&cmd);
    run_command(cmd)?;
    if let Some((data, e)) = audited {
        audit::record(&*data.open()?, e)?;
    }
    Ok(())
}

fn run_command(cmd: Command) -> Result<()> {
    let mut out = std::io::stdout().lock();
    let print = |out: &mut std::io::StdoutLock<'_>, s: String| {
        // Names and labels come from agents: never let them drive the operator's terminal.
        // A closed stdout (`| head`) is not an error worth reporting.
        let _ = writeln!(out, "{}", printable(&s));
    };
    match cmd {
        Command::Serve(args) => {
            drop(out);
            let rt = tokio::runtime::Runtime::new().map_err(|source| CoordError::Io {
                path: PathBuf::from("tokio runtime"),
                source,
            })?;
            rt.block_on(serve(*args))
        }
        Command::Project(ProjectCommand::Add(a)) => {
            let store = a.data.open()?;
            let mut env = Vec::new();
            for kv in &a.env {
                env.push(parse_env(kv, false)?);
            }
            for kv in &a.secret_env {
                env.push(parse_env(kv, true)?);
            }
            let uuid = match (&a.data_center, a.repository_id) {
                (Some(url), Some(id)) => {
                    Some(bitbucket::data_center::key(&data_center_server(url)?, id))
                }
                _ => a.uuid,
            };
            let p = NewProject {
                slug: a.slug.clone(),
                uuid,
                clone_url: a.clone_url,
                user_key: a.user_key.as_deref().map(read_file).transpose()?,
                deploy_key: a.deploy_key.as_deref().map(read_file).transpose()?,
                known_hosts: a
                    .known_hosts
                    .as_deref()
                    .map(read_file)
                    .transpose()?
                    .unwrap_or_default(),
                env,
            };
            let uuid = store.add_project(&p)?;
            print(&mut out, format!("{} {uuid}", a.slug));
            Ok(())
        }
        Command::Rerun(a) => {
            let (id, said) = rerun::run(&a)?;
            // stdout is the new job's id (scripts read it); what it holds goes beside it.
            if let Some(said) = said {
                eprintln!("job {id}: rerun with SSH {said}");
            }
            print(&mut out, id.to_string());
            Ok(())
        }
        Command::Enqueue(a) => {
            // Checked before anything is queued: a bad key fails here, not at login.
            let ssh_keys = if a.ssh_keys.is_empty() {
                Vec::new()
            } else {
                bosun_git::keys::read_files(&a.ssh_keys)?
            };
            let store = a.data.open()?;
            let id = store.enqueue_ssh(
                &NewJob {
                    project_slug: a.project,
                    git_ref: a.git_ref,
                    commit_sha: a.commit,
                    job_name: a.job,
                    resource_class: a.resource_class,
                    labels: a.labels,
                    max_attempts: a.max_attempts,
                    pr_number: a.pull_request,
                    pr_url: a.pull_request_url,
                    pr_fork: a.pull_request_fork,
                    timeout_secs: a.timeout,
                    workspace: a.workspace,
                },
                &ssh_keys,
            )?;
            print(&mut out, id.to_string());
            Ok(())
        }
        Command::Jobs { data, limit } => {
            let store = data.open()?;
            print(
                &mut out,
                format!(
                    "{:>6}  {:<20} {:<16} {:<16} {:>6}  {:<20} {:>7}  {:>8}  AGENT",
                    "ID", "PROJECT", "REF", "JOB", "PR", "STATUS", "ATTEMPT", "DURATION"
                ),
            );
            let jobs = store.list_jobs(limit)?;
            let queued: Vec<i64> = jobs
                .iter()
                .filter(|j| j.status == bosun_protocol::JobState::Queued)
                .map(|j| j.id)
                .collect();
            let reasons = store.wait_reasons(&queued)?;
            for j in jobs {
                print(
                    &mut out,
                    format!(
                        "{:>6}  {:<20} {:<16} {:<16} {:>6}  {:<20} {:>3}/{:<3}  {:>8}  {}{}",
                        j.id,
                        j.project,
                        j.git_ref,
                        j.job_name,
                        j.pr_number
                            .map(|n| format!("#{n}"))
                            .unwrap_or_else(|| "-".into()),
                        j.status,
                        j.attempts,
                        j.max_attempts,
                        j.duration().map(fmt_duration).unwrap_or_default(),
                        j.agent_id.as_deref().unwrap_or("-"),
                        // A queued job says why it waits (no agent of its class, all busy…).
                        reasons
                            .get(&j.id)
                            .map(|r| format!("  {r}"))
                            .unwrap_or_default()
                    ),
                );
            }
            Ok(())
        }
        Command::Cancel { data, job } => {
            let id = store::parse_job_id(&job)
                .ok_or_else(|| CoordError::Invalid(format!("`{job}` is not a job id")))?;
            let store = data.open()?;
            let after = store.cancel(id)?;
            print(&mut out, format!("job {id}: {after}"));
            Ok(())
        }
        Command::Token {
            data,
            action,
            expires,
        } => {
            let store = data.open()?;
            match action {
                TokenAction::New => print(&mut out, store.create_registration_token(expires)?.1),
                TokenAction::Rotate => print(&mut out, store.rotate_registration_token(expires)?.1),
                TokenAction::List => {
                    let now = store::now_ms();
                    for t in store.list_registration_tokens()? {
                        let state = match t.expires {
                            _ if t.revoked => "revoked".to_owned(),
                            Some(e) if e <= now => "expired".to_owned(),
                            Some(e) => format!(
                                "expires in {}",
                                fmt_duration(Duration::from_millis((e - now) as u64))
                            ),
                            None => "valid".to_owned(),
                        };
                        print(&mut out, format!("{}  {state}", t.id));
                    }
                }
            }
            Ok(())
        }
        Command::Relabel {
            data,
            agent,
            resource_class,
            labels,
        } => {
            let store = data.open()?;
            match store.relabel_agent(&agent, &resource_class, &labels)? {
                0 => Err(CoordError::NotFound(format!("no agent with id {agent}"))),
                _ => Ok(()),
            }
        }
        Command::Project(ProjectCommand::Restrict { data, slug, agents }) => {
            let store = data.open()?;
            store.restrict_project(&slug, &agents)?;
            Ok(())
        }
        Command::Revoke { data, agent } => {
            let store = data.open()?;
            match store.revoke_agent(&agent)? {
                0 => Err(CoordError::NotFound(format!("no agent {agent}"))),
                n => {
                    print(&mut out, format!("revoked {n} agent(s) matching {agent}"));
                    Ok(())
                }
            }
        }
        Command::Oidc { data, action, keys } => {
            for line in oidc::cli(action, &keys.path(&data))? {
                print(&mut out, line);
            }
            Ok(())
        }
        Command::Trigger(a) => cli_pipelines::trigger(a, &mut |s| print(&mut out, s)),
        Command::Approve(a) => cli_pipelines::approve(a, &mut |s| print(&mut out, s)),
        Command::Pipelines(a) => cli_pipelines::list(a, &mut |s| print(&mut out, s)),
        Command::CancelPipeline(a) => cli_pipelines::cancel(a, &mut |s| print(&mut out, s)),
        Command::RerunPipeline(a) => cli_pipelines::rerun(a, &mut |s| print(&mut out, s)),
        Command::Operator(c) => cli_pipelines::operator(c, &mut |s| print(&mut out, s)),
        Command::ApiToken(c) => cli_api::api_token(c, &mut |s| print(&mut out, s)),
        Command::Context(c) => cli_contexts::run(c, &mut |s| print(&mut out, s)),
        Command::Schedule(c) => cli_schedules::run(c, &mut |s| print(&mut out, s)),
        Command::Project(ProjectCommand::Set(a)) => cli_pipelines::project_set(a),
        Command::Project(ProjectCommand::Follow(a)) => {
            cli_follow::follow_repo(a, &mut |s| print(&mut out, s))
        }
        Command::Project(ProjectCommand::Unfollow(a)) => {
            cli_follow::unfollow_repo(a, &mut |s| print(&mut out, s))
        }
        Command::User(c) => cli_follow::user(c, &mut |s| print(&mut out, s)),
        Command::Project(ProjectCommand::Notify(c)) => {
            cli_notify::notify(c, &mut |s| print(&mut out, s))
        }
        Command::Project(ProjectCommand::Webhook(c)) => {
            cli_notify::webhook(c, &mut |s| print(&mut out, s))
        }
        Command::Person(c) => cli_people::person(c, &mut |s| print(&mut out, s)),
        Command::Audit(a) => cli_audit::audit(a, &mut |s| print(&mut out, s)),
        Command::Migrate(a) => migrate::run(*a, &mut |s| print(&mut out, s)),
        Command::Project(ProjectCommand::BadgeToken(a)) => {
            cli_badges::badge_token(a, &mut |s| print(&mut out, s))
        }
        Command::Project(ProjectCommand::Keygen(a)) => {
            cli_pipelines::keygen(a, &mut |s| print(&mut out, s))
        }
        Command::Project(ProjectCommand::Keys(c)) => {
            cli_pipelines::keys(c, &mut |s| print(&mut out, s))
        }
        Command::Agents { data } => {
            let store = data.open()?;
            for (id, name, rc, seen, revoked) in store.list_agents()? {
                let ago = Duration::from_millis((store::now_ms() - seen).max(0) as u64);
                print(
                    &mut out,
                    format!(
                        "{id}  {name}  {rc}  seen {} ago{}",
                        fmt_duration(ago),
                        if revoked { "  REVOKED" } else { "" }
                    ),
                );
            }
            Ok(())
        }
    }
}

/// The `host[:port]` of a Data Center base URL (`https://bitbucket.example.com/`).
pub(crate) fn data_center_server(url: &str) -> Result<String> {
    let bad = || {
        CoordError::Invalid(format!(
            "--data-center `{}`: expected the server's base URL, such as https://bitbucket.example.com",
            printable(url)
        ))
    };
    let rest = url
        .trim()
        .strip_prefix("https://")
        .or_else(|| url.trim().strip_prefix("http://"))
        .ok_or_else(bad)?;
    let host = rest.split('/').next().unwrap_or("");
    if host.is_empty() || host.contains(['@', '?', '#', ' ']) {
        return Err(bad());
    }
    Ok(host.to_ascii_lowercase())
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

    fn enqueue(extra: &[&str]) -> std::result::Result<EnqueueArgs, clap::Error> {
        let mut argv = vec![
            "bosun",
            "enqueue",
            "--data",
            "/d",
            "--project",
            "acme/w",
            "--ref",
            "main",
            "--job",
            "build",
        ];
        argv.extend_from_slice(extra);
        match Cli::try_parse_from(argv)?.command {
            Command::Enqueue(a) => Ok(a),
            other => panic!("parsed as {other:?}"),
        }
    }

    fn error(extra: &[&str]) -> String {
        match enqueue(extra) {
            Err(e) => e.to_string(),
            Ok(a) => panic!("{extra:?} was accepted: {a:?}"),
        }
    }

    #[test]
    fn a_data_center_project_is_keyed_by_its_server_and_repository_id() {
        let add = |extra: &[&str]| {
            let mut argv = vec![
                "bosun",
                "project",
                "add",
                "--data",
                "/d",
                "--slug",
                "ACME/widget",
                "--clone-url",
                "ssh://git@bb.example.com:7999/acme/widget.git",
            ];
            argv.extend_from_slice(extra);
            Cli::try_parse_from(argv)
        };
        let parsed = add(&[
            "--data-center",
            "https://BB.example.com:8443/",
            "--repository-id",
            "84",
        ])
        .expect("parses");
        let Command::Project(ProjectCommand::Add(a)) = parsed.command else {
            panic!("parsed as {:?}", parsed.command)
        };
        let server = data_center_server(a.data_center.as_deref().expect("url")).expect("server");
        assert_eq!(
            bitbucket::data_center::key(&server, a.repository_id.expect("id")),
            "bitbucket-dc:bb.example.com:8443/84"
        );
        // Both or neither, and not with a Cloud UUID.
        assert!(add(&["--data-center", "https://bb.example.com"]).is_err());
        assert!(add(&["--repository-id", "84"]).is_err());
        assert!(add(&[
            "--uuid",
            "{u}",
            "--data-center",
            "https://bb",
            "--repository-id",
            "1"
        ])
        .is_err());
        for bad in [
            "bb.example.com",
            "ftp://bb",
            "https://",
            "https://u@bb",
            "https://bb?x",
        ] {
            assert!(data_center_server(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn printable_shows_escapes_instead_of_sending_them() {
        assert_eq!(
            printable("a\x1b]0;x\x07\nb\r\u{9b}c\u{202e}d é"),
            "a\\u{1b}]0;x\\u{7}\\u{a}b\\u{d}\\u{9b}c\\u{202e}d é"
        );
    }

    #[test]
    fn enqueue_takes_a_pull_request_and_a_timeout() {
        let a = enqueue(&["--pull-request", "7", "--timeout", "90s"]).expect("parses");
        assert_eq!(
            (a.pull_request, a.pull_request_url, a.timeout),
            (Some(7), None, Some(90))
        );
        let a = enqueue(&[
            "--pull-request",
            "7",
            "--pull-request-url",
            "https://git.example.com/pr/7",
            "--timeout",
            "1.5h",
        ])
        .expect("parses");
        assert_eq!(
            a.pull_request_url.as_deref(),
            Some("https://git.example.com/pr/7")
        );
        assert_eq!(a.timeout, Some(5400));
        assert_eq!(
            enqueue(&["--timeout", "2h"]).expect("parses").timeout,
            Some(7200)
        );
        assert_eq!(
            enqueue(&["--timeout", "30m"]).expect("parses").timeout,
            Some(1800)
        );
        // Whole seconds on the wire: a fraction rounds up rather than to a zero limit.
        assert_eq!(
            enqueue(&["--timeout", "500ms"]).expect("parses").timeout,
            Some(1)
        );
        let a = enqueue(&[]).expect("parses");
        assert_eq!((a.pull_request, a.timeout), (None, None));
    }

    #[test]
    fn a_bad_timeout_or_pull_request_is_a_parse_error_naming_the_flag() {
        for bad in ["90", "0", "soon", "5 m", "2x", ""] {
            let e = error(&[&format!("--timeout={bad}")]);
            assert!(e.contains("--timeout"), "{bad}: {e}");
            assert!(e.contains("90s, 30m, 2h"), "{bad}: {e}");
        }
        for out_of_range in ["0s", "0.0m", "-1s", "25h", "2d", "99999999999999999999h"] {
            let e = error(&[&format!("--timeout={out_of_range}")]);
            assert!(e.contains("--timeout"), "{out_of_range}: {e}");
            assert!(e.contains("between 1s and 24h"), "{out_of_range}: {e}");
        }
        let e = error(&[
            "--pull-request-url",
            "https://bitbucket.org/acme/w/pull-requests/1",
        ]);
        assert!(e.contains("--pull-request"), "{e}");
        let e = error(&["--pull-request", "0"]);
        assert!(e.contains("--pull-request"), "{e}");
        assert!(error(&["--pull-request", "seven"]).contains("--pull-request"));
    }
}

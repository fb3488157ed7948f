//! `project follow`, `project unfollow` and `user key add|rm`: what an operator did by hand in
//! Bitbucket's settings, done through its REST API ([`crate::bitbucket::rest`]). Bitbucket is
//! changed first and the store last; a failure on either side takes back what was done on
//! Bitbucket, so nothing is left behind half way.

use super::bitbucket::rest::follow::{self, Held, Inputs, Step};
use super::bitbucket::rest::repo::{key_material, RemoteKey, UserKeys};
use super::bitbucket::rest::{Client, Credentials, Remote};
use super::store::{Backend, FollowRecord, KeyColumn};
use super::{cli_pipelines::new_key, read_file, CoordError, DataArg, Result};
use std::path::PathBuf;
use std::time::Duration;

/// Bitbucket Cloud's API, as for commit statuses.
pub const CLOUD_API: &str = "https://api.bitbucket.org/2.0";

/// The longest a command waits in total for Bitbucket's 429s to pass.
const MAX_RATE_LIMIT_WAIT: Duration = Duration::from_secs(60);

#[derive(clap::Args, Debug)]
pub struct RepoArgs {
    /// A Bitbucket Cloud repository: `WORKSPACE/REPO`.
    #[arg(
        long,
        value_name = "WORKSPACE/REPO",
        required_unless_present = "data_center",
        conflicts_with = "data_center"
    )]
    pub bitbucket: Option<String>,
    /// A Bitbucket Data Center repository instead: the server's base URL (with --project
    /// and --repo).
    #[arg(long, value_name = "URL", requires_all = ["project", "repo"])]
    pub data_center: Option<String>,
    /// The Data Center project's key.
    #[arg(long, value_name = "KEY", requires = "data_center")]
    pub project: Option<String>,
    /// The Data Center repository's slug.
    #[arg(long, value_name = "SLUG", requires = "data_center")]
    pub repo: Option<String>,
    /// Bitbucket Cloud's REST API base.
    #[arg(long, value_name = "URL", default_value = CLOUD_API)]
    pub api: String,
    /// A file holding `EMAIL:API-TOKEN` (a Cloud API token, HTTP Basic) or `bearer:TOKEN`
    /// (an access token; Data Center's HTTP access tokens). They need admin rights on the
    /// repository (Cloud scopes: repository:admin, webhook; account:write for user keys).
    #[arg(long, value_name = "FILE")]
    pub api_credentials_file: PathBuf,
}

#[derive(clap::Args, Debug)]
pub struct FollowArgs {
    #[command(flatten)]
    pub data: DataArg,
    #[command(flatten)]
    pub repo: RepoArgs,
    /// Where Bitbucket reaches this coordinator (the webhook goes to URL/webhooks/bitbucket;
    /// Bosun's deploy key is labelled with it).
    #[arg(long, value_name = "URL")]
    pub public_url: String,
    /// known_hosts lines trusted for a new project's checkouts (self-hosted servers).
    #[arg(long, value_name = "FILE")]
    pub known_hosts: Option<PathBuf>,
}

#[derive(clap::Args, Debug)]
pub struct UnfollowArgs {
    #[command(flatten)]
    pub data: DataArg,
    #[command(flatten)]
    pub repo: RepoArgs,
    /// The URL the repository was followed with.
    #[arg(long, value_name = "URL")]
    pub public_url: String,
}

#[derive(clap::Subcommand, Debug)]
pub enum UserCommand {
    /// A user's SSH key for a project's jobs ("Authorize with Bitbucket").
    #[command(subcommand)]
    Key(UserKeyCommand),
}

#[derive(clap::Subcommand, Debug)]
pub enum UserKeyCommand {
    /// Make a key pair, add its public key to the Bitbucket user's account and use the
    /// private key as the project's user key (offered first in its jobs' checkouts).
    Add(UserKeyArgs),
    /// Remove the project's user key from the Bitbucket user's account and from Bosun.
    Rm(UserKeyArgs),
}

#[derive(clap::Args, Debug)]
pub struct UserKeyArgs {
    #[command(flatten)]
    pub data: DataArg,
    /// The project's repository, as for `project follow` (credentials: Cloud scopes account,
    /// account:write; on Data Center the user's own token, or an admin's).
    #[command(flatten)]
    pub repo: RepoArgs,
    /// The Bitbucket account whose key it is: on Cloud its name or `{UUID}`, on Data Center
    /// the user's slug.
    #[arg(long, value_name = "NAME")]
    pub user: String,
}

fn invalid(msg: String) -> CoordError {
    CoordError::Invalid(msg)
}

/// A slug part: what Bitbucket allows in workspace, project key and repository names.
fn check_name(flag: &str, what: &str, s: &str) -> Result<()> {
    if s.is_empty()
        || s.len() > 128
        || !s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.~".contains(&b))
        || s == "."
        || s == ".."
    {
        return Err(invalid(format!(
            "{flag} `{}`: expected a {what} of A-Z a-z 0-9 - _ . ~",
            crate::printable(s)
        )));
    }
    Ok(())
}

fn cloud_slug(flag: &str, slug: &str) -> Result<(String, String)> {
    let (ws, repo) = slug.split_once('/').ok_or_else(|| {
        invalid(format!(
            "{flag} `{}`: expected WORKSPACE/REPO",
            crate::printable(slug)
        ))
    })?;
    check_name(flag, "workspace", ws)?;
    check_name(flag, "repository slug", repo)?;
    Ok((ws.to_owned(), repo.to_owned()))
}

fn http_url(flag: &str, url: &str) -> Result<String> {
    let u = url.trim().trim_end_matches('/');
    let rest = u
        .strip_prefix("https://")
        .or_else(|| u.strip_prefix("http://"));
    match rest {
        Some(r) if !r.is_empty() && !r.contains(['@', '?', '#', ' ', '\n']) => Ok(u.to_owned()),
        _ => Err(invalid(format!(
            "{flag} `{}`: expected an http(s) URL such as https://ci.example.com",
            crate::printable(url)
        ))),
    }
}

impl RepoArgs {
    fn remote(&self) -> Result<Remote> {
        match (
            &self.bitbucket,
            &self.data_center,
            &self.project,
            &self.repo,
        ) {
            (Some(slug), None, _, _) => {
                let (workspace, repo) = cloud_slug("--bitbucket", slug)?;
                Ok(Remote::Cloud {
                    api: http_url("--api", &self.api)?,
                    workspace,
                    repo,
                })
            }
            (None, Some(url), Some(project), Some(slug)) => {
                check_name("--project", "project key", project)?;
                check_name("--repo", "repository slug", slug)?;
                Ok(Remote::DataCenter {
                    base: http_url("--data-center", url)?,
                    server: super::data_center_server(url)?,
                    project: project.clone(),
                    slug: slug.clone(),
                })
            }
            _ => Err(invalid(
                "give --bitbucket WORKSPACE/REPO, or --data-center URL --project KEY --repo SLUG"
                    .to_owned(),
            )),
        }
    }
}

fn credentials(file: &std::path::Path) -> Result<Credentials> {
    let text = zeroize::Zeroizing::new(read_file(file)?);
    Credentials::parse(&text).map_err(|e| invalid(format!("{}: {e}", file.display())))
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|source| CoordError::Io {
            path: PathBuf::from("tokio runtime"),
            source,
        })
}

fn client(file: &std::path::Path) -> Result<Client> {
    Client::new(credentials(file)?, MAX_RATE_LIMIT_WAIT).map_err(|e| invalid(e.to_string()))
}

/// Bosun's deploy key label and webhook URL for a coordinator at `public_url`.
fn ours(public_url: &str) -> Result<(String, String)> {
    let url = http_url("--public-url", public_url)?;
    Ok((format!("bosun {url}"), format!("{url}/webhooks/bitbucket")))
}

/// `SHA256:…` of a public key line.
fn fingerprint(public: &str) -> String {
    use russh::keys::{HashAlg, PublicKey};
    PublicKey::from_openssh(public)
        .map(|k| k.fingerprint(HashAlg::Sha256).to_string())
        .unwrap_or_else(|_| "(unreadable key)".to_owned())
}

/// The public line of a private key text.
fn public_of(private: &str) -> Option<String> {
    russh::keys::PrivateKey::from_openssh(private)
        .ok()?
        .public_key()
        .to_openssh()
        .ok()
}

fn held(store: &dyn Backend, key: &str) -> Result<(Held, Option<zeroize::Zeroizing<String>>)> {
    let f = store.followed(key)?;
    let deploy_key = f
        .as_ref()
        .and_then(|f| f.deploy_key.as_deref())
        .and_then(|k| public_of(k));
    let secret = f.and_then(|f| f.webhook_secret);
    Ok((
        Held {
            deploy_key,
            webhook_secret: secret.is_some(),
        },
        secret,
    ))
}

fn step_words(step: &Step) -> &'static str {
    match step {
        Step::AddKey => "added deploy key",
        Step::AddHook => "created webhook",
        Step::UpdateHook(_) => "updated webhook",
        Step::DeleteKey(_) => "removed a stray deploy key",
        Step::DeleteHook(_) => "removed a second webhook",
    }
}

pub fn follow_repo(a: FollowArgs, print: &mut dyn FnMut(String)) -> Result<()> {
    let remote = a.repo.remote()?;
    let (label, hook_url) = ours(&a.public_url)?;
    let client = client(&a.repo.api_credentials_file)?;
    let known_hosts = a
        .known_hosts
        .as_deref()
        .map(read_file)
        .transpose()?
        .unwrap_or_default();
    let store = a.data.open()?;
    let fail = |e: super::bitbucket::rest::RestError| invalid(format!("follow: {e}"));
    runtime()?.block_on(async {
        let repo = remote.repository(&client).await.map_err(fail)?;
        let keys = remote.deploy_keys(&client).await.map_err(fail)?;
        let hooks = remote.hooks(&client).await.map_err(fail)?;
        let (held, secret) = held(store.as_ref(), &repo.key)?;
        let plan = follow::plan(&keys, &hooks, &held, &label, &hook_url, remote.events());
        let new_key = if plan.steps.contains(&Step::AddKey) {
            Some(new_key(&format!("bosun deploy key for {}", repo.slug))?)
        } else {
            None
        };
        let fresh = if plan.fresh_secret {
            Some(zeroize::Zeroizing::new(crate::text::random_hex(32)?))
        } else {
            None
        };
        let use_secret = fresh
            .as_deref()
            .or(secret.as_deref())
            .map(String::as_str)
            .unwrap_or("");
        let public = new_key
            .as_ref()
            .map(|(_, p)| p.clone())
            .or_else(|| held.deploy_key.clone())
            .unwrap_or_default();
        let inputs = Inputs {
            public_key: &public,
            label: &label,
            hook_url: &hook_url,
            secret: use_secret,
        };
        let done = follow::apply(&remote, &client, &plan.steps, &inputs)
            .await
            .map_err(|e| invalid(format!("follow {}: {e}; nothing was changed", repo.slug)))?;
        let recorded = store.record_follow(&FollowRecord {
            key: &repo.key,
            slug: &repo.slug,
            clone_url: &repo.clone_url,
            known_hosts: &known_hosts,
            main_branch: repo.main_branch.as_deref(),
            deploy_key: new_key.as_ref().map(|(k, _)| k.as_str()),
            webhook_secret: fresh.as_deref().map(String::as_str),
        });
        if let Err(e) = recorded {
            let left = follow::undo_all(&remote, &client, &done).await;
            return Err(invalid(format!(
                "follow {}: recording it failed ({e}); what was added to Bitbucket was taken back{}",
                repo.slug,
                if left.is_empty() {
                    String::new()
                } else {
                    format!(", but not all: {}", left.join("; "))
                }
            )));
        }
        print(format!("followed {} {}", repo.slug, repo.key));
        let key_id = done
            .iter()
            .find(|d| d.step == Step::AddKey)
            .map(|d| d.id.clone())
            .or(plan.kept_key.clone())
            .unwrap_or_default();
        print(format!(
            "deploy key {} \"{label}\" (id {key_id}): {}",
            fingerprint(&public),
            if plan.kept_key.is_some() { "kept" } else { "added" }
        ));
        let hook = done
            .iter()
            .find(|d| matches!(d.step, Step::AddHook | Step::UpdateHook(_)));
        match (hook, &plan.kept_hook) {
            (Some(d), _) => print(format!(
                "webhook {} -> {hook_url}: {}",
                d.id,
                if d.step == Step::AddHook { "created" } else { "updated" }
            )),
            (None, Some(id)) => print(format!("webhook {id} -> {hook_url}: kept")),
            (None, None) => {}
        }
        for d in &done {
            if matches!(d.step, Step::DeleteKey(_) | Step::DeleteHook(_)) {
                print(format!("{} {}", step_words(&d.step), d.id));
            }
        }
        Ok(())
    })
}

pub fn unfollow_repo(a: UnfollowArgs, print: &mut dyn FnMut(String)) -> Result<()> {
    let remote = a.repo.remote()?;
    let (label, hook_url) = ours(&a.public_url)?;
    let client = client(&a.repo.api_credentials_file)?;
    let store = a.data.open()?;
    let fail = |e: super::bitbucket::rest::RestError| invalid(format!("unfollow: {e}"));
    runtime()?.block_on(async {
        let repo = remote.repository(&client).await.map_err(fail)?;
        let keys = remote.deploy_keys(&client).await.map_err(fail)?;
        let hooks = remote.hooks(&client).await.map_err(fail)?;
        let (held, _) = held(store.as_ref(), &repo.key)?;
        let steps = follow::unfollow_plan(&keys, &hooks, &held, &label, &hook_url);
        for step in &steps {
            let r = match step {
                Step::DeleteHook(id) => remote.delete_hook(&client, id).await,
                Step::DeleteKey(id) => remote.delete_deploy_key(&client, id).await,
                _ => Ok(()),
            };
            r.map_err(fail)?;
            let id = match step {
                Step::DeleteHook(id) | Step::DeleteKey(id) => id.as_str(),
                _ => "",
            };
            print(format!(
                "removed {} {id}",
                if matches!(step, Step::DeleteHook(_)) {
                    "webhook"
                } else {
                    "deploy key"
                }
            ));
        }
        if store.followed(&repo.key)?.is_some() {
            store.forget_follow(&repo.key)?;
        }
        print(format!(
            "unfollowed {} (its pipelines and settings are kept)",
            repo.slug
        ));
        Ok(())
    })
}

fn user_label(slug: &str) -> String {
    format!("bosun user key for {slug}")
}

pub fn user(c: UserCommand, print: &mut dyn FnMut(String)) -> Result<()> {
    let UserCommand::Key(c) = c;
    let (a, add) = match c {
        UserKeyCommand::Add(a) => (a, true),
        UserKeyCommand::Rm(a) => (a, false),
    };
    let remote = a.repo.remote()?;
    if a.user.is_empty() || a.user.len() > 128 || a.user.chars().any(char::is_control) {
        return Err(invalid(
            "--user: expected a Bitbucket account name, {UUID} or user slug".to_owned(),
        ));
    }
    // The project as the store names it: Cloud's `workspace/repo`, Data Center's `KEY/slug`.
    let slug = match &remote {
        Remote::Cloud {
            workspace, repo, ..
        } => format!("{workspace}/{repo}"),
        Remote::DataCenter { project, slug, .. } => format!("{project}/{slug}"),
    };
    let keys = UserKeys {
        remote,
        user: a.user.clone(),
    };
    let client = client(&a.repo.api_credentials_file)?;
    let store = a.data.open()?;
    let project = store.followed(&slug)?.ok_or_else(|| {
        CoordError::NotFound(format!(
            "no project {} (follow or add it first)",
            crate::printable(&slug)
        ))
    })?;
    let label = user_label(&project.slug);
    let mine = project.user_key.as_deref().and_then(|k| public_of(k));
    let fail = |e: super::bitbucket::rest::RestError| invalid(format!("user key: {e}"));
    runtime()?.block_on(async {
        let on_account: Vec<RemoteKey> = keys.list(&client).await.map_err(fail)?;
        let is_mine = |k: &RemoteKey| {
            mine.as_deref()
                .is_some_and(|m| key_material(m) == key_material(&k.key))
        };
        if add {
            if let Some(k) = on_account.iter().find(|k| is_mine(k)) {
                print(format!(
                    "user key {} of {} (id {}): kept",
                    fingerprint(mine.as_deref().unwrap_or("")),
                    a.user,
                    k.id
                ));
                return Ok(());
            }
            let (private, public) = new_key(&label)?;
            let id = keys.add(&client, &public, &label).await.map_err(fail)?;
            let recorded = store
                .set_project_key(&project.key, KeyColumn::User, Some(&private))
                // Whose it is: who may rerun with SSH holding it (`model::ssh_policy`).
                .and_then(|()| store.set_user_key_owner(&project.slug, Some(&a.user)));
            if let Err(e) = recorded {
                let undo = keys.delete(&client, &id).await;
                return Err(invalid(format!(
                    "user key: recording it failed ({e}); the key {} taken back from {}'s account",
                    if undo.is_ok() { "was" } else { "could NOT be" },
                    a.user
                )));
            }
            // Bosun's earlier keys for this project on the account: the new one replaces them.
            for k in on_account.iter().filter(|k| k.label == label) {
                keys.delete(&client, &k.id).await.map_err(fail)?;
                print(format!("removed an earlier user key {}", k.id));
            }
            print(format!(
                "user key {} \"{label}\" added to {} (id {id}); {}'s jobs use it",
                fingerprint(&public),
                a.user,
                project.slug
            ));
        } else {
            for k in on_account.iter().filter(|k| is_mine(k) || k.label == label) {
                keys.delete(&client, &k.id).await.map_err(fail)?;
                print(format!("removed user key {} from {}", k.id, a.user));
            }
            store.set_project_key(&project.key, KeyColumn::User, None)?;
            store.set_user_key_owner(&project.slug, None)?;
            print(format!("{}: user key removed", project.slug));
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo(bitbucket: Option<&str>, dc: Option<(&str, &str, &str)>) -> RepoArgs {
        RepoArgs {
            bitbucket: bitbucket.map(str::to_owned),
            data_center: dc.map(|d| d.0.to_owned()),
            project: dc.map(|d| d.1.to_owned()),
            repo: dc.map(|d| d.2.to_owned()),
            api: CLOUD_API.to_owned(),
            api_credentials_file: PathBuf::from("/nonexistent"),
        }
    }

    #[test]
    fn repositories_are_named_as_bitbucket_names_them_or_refused() {
        assert_eq!(
            repo(Some("acme/widget"), None).remote().expect("cloud"),
            Remote::Cloud {
                api: CLOUD_API.to_owned(),
                workspace: "acme".into(),
                repo: "widget".into()
            }
        );
        assert_eq!(
            repo(
                None,
                Some(("https://BB.example.com:8443/", "ACME", "widget"))
            )
            .remote()
            .expect("dc"),
            Remote::DataCenter {
                base: "https://BB.example.com:8443".into(),
                server: "bb.example.com:8443".into(),
                project: "ACME".into(),
                slug: "widget".into()
            }
        );
        for bad in [
            "acme",
            "acme/",
            "/w",
            "acme/wid get",
            "acme/../x",
            "a/b/c",
            "acme/w%2f",
        ] {
            let e = repo(Some(bad), None).remote().expect_err(bad).to_string();
            assert!(e.contains("--bitbucket"), "{bad}: {e}");
        }
        for bad in ["bb.example.com", "ftp://bb", "https://u@bb", "https://"] {
            assert!(repo(None, Some((bad, "A", "b"))).remote().is_err(), "{bad}");
        }
        assert!(repo(None, Some(("https://bb", "A/B", "b")))
            .remote()
            .is_err());
    }

    #[test]
    fn bosuns_own_are_named_after_its_public_url() {
        assert_eq!(
            ours("https://ci.example.com/").expect("ours"),
            (
                "bosun https://ci.example.com".to_owned(),
                "https://ci.example.com/webhooks/bitbucket".to_owned()
            )
        );
        assert!(ours("ci.example.com").is_err());
        assert!(ours("https://ci.example.com/?x=1").is_err());
    }
}

//! Projects and who may act on them, as two traits in types that say nothing of the
//! database: [`ProjectStore`] (a project's repository, keys, secrets and build rules, and what
//! the Bitbucket intake remembers of it) and [`AccessStore`] (registration tokens, agents,
//! operator tokens). [`Store`] (SQLite) implements both; another database goes beside it.
//!
//! Keys, webhook secrets, status credentials and secret env values cross these traits in
//! the clear and are sealed inside the implementation (with the key of [`crate::secrets`]),
//! so a second backend seals them the same way and the CLI never sees a sealed value.

use super::{
    Agent, AgentRow, KeyColumn, NewProject, ProjectSettings, RegistrationTokenRow, Result, Store,
    WebhookProject,
};
use std::time::Duration;

pub trait ProjectStore: Send + Sync {
    /// Add a project (keys and secret env values sealed): its repository UUID.
    fn add_project(&self, p: &NewProject) -> Result<String>;
    /// Change what `s` sets of project `project` (a slug, old or current, or its UUID).
    fn set_project_settings(&self, project: &str, s: &ProjectSettings) -> Result<()>;
    /// Replace (`Some`) or remove (`None`) one of the project's private keys.
    fn set_project_key(&self, project: &str, column: KeyColumn, key: Option<&str>) -> Result<()>;
    /// Only these agents (ids) may run the project's jobs; an empty list lifts the
    /// restriction.
    fn restrict_project(&self, slug: &str, agents: &[String]) -> Result<()>;
    /// Project slugs, sorted.
    fn project_slugs(&self) -> Result<Vec<String>>;
    /// The project of Bitbucket Cloud repository `uuid`.
    fn project_for_webhook(&self, uuid: &str) -> Result<Option<WebhookProject>>;
    /// The projects of Bitbucket Data Center repository `id`, on whichever server.
    fn projects_for_data_center(&self, id: u64) -> Result<Vec<WebhookProject>>;
    /// The repository was renamed or moved: the project follows, its old slug keeps
    /// resolving.
    fn follow_repository(&self, pid: i64, slug: &str, default_branch: Option<&str>) -> Result<()>;
    /// Remember webhook delivery `uuid`; `false` when it was seen already.
    fn first_delivery(&self, uuid: &str, outcome: &str) -> Result<bool>;
    /// Record a pull request's state as its webhook said.
    fn record_pull_request(
        &self,
        pid: i64,
        number: u64,
        branch: &str,
        state: &str,
        fork: bool,
        url: &str,
    ) -> Result<()>;
    /// The open pull request (number, URL) from `branch` of the project's own repository.
    fn open_pull_request(&self, pid: i64, branch: &str) -> Result<Option<(u64, String)>>;
}

pub trait AccessStore: Send + Sync {
    /// A new registration token valid for `ttl` (for ever without one), kept as a digest:
    /// (token id, token).
    fn create_registration_token(&self, ttl: Option<Duration>) -> Result<(String, String)>;
    /// Revoke every registration token and make a new one: (token id, token).
    fn rotate_registration_token(&self, ttl: Option<Duration>) -> Result<(String, String)>;
    /// Is `token` a registration token neither revoked nor expired?
    fn registration_token_valid(&self, token: &str) -> Result<bool>;
    fn list_registration_tokens(&self) -> Result<Vec<RegistrationTokenRow>>;
    /// Register an agent: (agent id, agent token), the token kept as a digest.
    fn register_agent(
        &self,
        name: &str,
        resource_class: &str,
        labels: &[String],
        version: &str,
    ) -> Result<(String, String)>;
    /// The agent a bearer token belongs to (revoked ones included).
    fn agent_by_token(&self, token: &str) -> Result<Option<Agent>>;
    /// Set an agent's resource class and labels: how many agents matched the id.
    fn relabel_agent(&self, id: &str, resource_class: &str, labels: &[String]) -> Result<usize>;
    /// Revoke by id or name: how many agents were revoked.
    fn revoke_agent(&self, who: &str) -> Result<usize>;
    /// Every agent, oldest first.
    fn list_agents(&self) -> Result<Vec<AgentRow>>;
    /// A new operator token named `name`, kept as a digest.
    fn create_operator_token(&self, name: &str) -> Result<String>;
    /// The operator a token belongs to, unless unknown or revoked.
    fn operator(&self, token: &str) -> Result<Option<String>>;
    /// Revoke every token of operator `name`: how many.
    fn revoke_operator_tokens(&self, name: &str) -> Result<usize>;
}

impl ProjectStore for Store {
    fn add_project(&self, p: &NewProject) -> Result<String> {
        Store::add_project(self, p)
    }
    fn set_project_settings(&self, project: &str, s: &ProjectSettings) -> Result<()> {
        Store::set_project_settings(self, project, s)
    }
    fn set_project_key(&self, project: &str, column: KeyColumn, key: Option<&str>) -> Result<()> {
        Store::set_project_key(self, project, column, key)
    }
    fn restrict_project(&self, slug: &str, agents: &[String]) -> Result<()> {
        Store::restrict_project(self, slug, agents)
    }
    fn project_slugs(&self) -> Result<Vec<String>> {
        Store::project_slugs(self)
    }
    fn project_for_webhook(&self, uuid: &str) -> Result<Option<WebhookProject>> {
        Store::project_for_webhook(self, uuid)
    }
    fn projects_for_data_center(&self, id: u64) -> Result<Vec<WebhookProject>> {
        Store::projects_for_data_center(self, id)
    }
    fn follow_repository(&self, pid: i64, slug: &str, default_branch: Option<&str>) -> Result<()> {
        Store::follow_repository(self, pid, slug, default_branch)
    }
    fn first_delivery(&self, uuid: &str, outcome: &str) -> Result<bool> {
        Store::first_delivery(self, uuid, outcome)
    }
    fn record_pull_request(
        &self,
        pid: i64,
        number: u64,
        branch: &str,
        state: &str,
        fork: bool,
        url: &str,
    ) -> Result<()> {
        Store::record_pull_request(self, pid, number, branch, state, fork, url)
    }
    fn open_pull_request(&self, pid: i64, branch: &str) -> Result<Option<(u64, String)>> {
        Store::open_pull_request(self, pid, branch)
    }
}

impl AccessStore for Store {
    fn create_registration_token(&self, ttl: Option<Duration>) -> Result<(String, String)> {
        Store::create_registration_token(self, ttl)
    }
    fn rotate_registration_token(&self, ttl: Option<Duration>) -> Result<(String, String)> {
        Store::rotate_registration_token(self, ttl)
    }
    fn registration_token_valid(&self, token: &str) -> Result<bool> {
        Store::registration_token_valid(self, token)
    }
    fn list_registration_tokens(&self) -> Result<Vec<RegistrationTokenRow>> {
        Store::list_registration_tokens(self)
    }
    fn register_agent(
        &self,
        name: &str,
        resource_class: &str,
        labels: &[String],
        version: &str,
    ) -> Result<(String, String)> {
        Store::register_agent(self, name, resource_class, labels, version)
    }
    fn agent_by_token(&self, token: &str) -> Result<Option<Agent>> {
        Store::agent_by_token(self, token)
    }
    fn relabel_agent(&self, id: &str, resource_class: &str, labels: &[String]) -> Result<usize> {
        Store::relabel_agent(self, id, resource_class, labels)
    }
    fn revoke_agent(&self, who: &str) -> Result<usize> {
        Store::revoke_agent(self, who)
    }
    fn list_agents(&self) -> Result<Vec<AgentRow>> {
        Store::list_agents(self)
    }
    fn create_operator_token(&self, name: &str) -> Result<String> {
        Store::create_operator_token(self, name)
    }
    fn operator(&self, token: &str) -> Result<Option<String>> {
        Store::operator(self, token)
    }
    fn revoke_operator_tokens(&self, name: &str) -> Result<usize> {
        Store::revoke_operator_tokens(self, name)
    }
}

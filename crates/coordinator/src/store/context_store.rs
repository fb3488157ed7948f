//! Contexts and the security groups of operators and people behind one trait, in types that say nothing of the database:
//! what the CLI's `context` commands, the approvals and (later) CircleCI's `/api/v2/context`
//! endpoints call. Variable values cross it in the clear one way only (set); they are sealed
//! inside the implementation and never listed. A context is named by its name or its id
//! wherever one is taken.

use super::contexts::{ContextRow, ContextValues, ContextVarRow, RestrictionRow};
use super::Result;
use crate::model::contexts::Restriction;

pub trait ContextStore: Send + Sync {
    /// A new context `name` (unique) owned by `owner` (a workspace; empty: the
    /// coordinator's). `Invalid` when the name is taken or not a name.
    fn create_context(&self, name: &str, owner: &str) -> Result<ContextRow>;
    /// Contexts, by name; only `owner`'s when given.
    fn list_contexts(&self, owner: Option<&str>) -> Result<Vec<ContextRow>>;
    /// One context by name or id.
    fn context(&self, context: &str) -> Result<Option<ContextRow>>;
    /// Delete a context with its variables and restrictions (`NotFound` when absent).
    fn delete_context(&self, context: &str) -> Result<()>;
    /// Set (add or replace) variable `name` of a context; the value is sealed.
    fn set_context_var(&self, context: &str, name: &str, value: &str) -> Result<ContextVarRow>;
    /// Remove a variable (`NotFound` when absent).
    fn remove_context_var(&self, context: &str, name: &str) -> Result<()>;
    /// A context's variables: names and times, never values.
    fn list_context_vars(&self, context: &str) -> Result<Vec<ContextVarRow>>;
    /// Add a restriction (checked: an expression must parse).
    fn add_restriction(&self, context: &str, r: &Restriction) -> Result<RestrictionRow>;
    /// Remove restriction `id` of a context.
    fn remove_restriction(&self, context: &str, id: &str) -> Result<()>;
    fn list_restrictions(&self, context: &str) -> Result<Vec<RestrictionRow>>;
    /// The contexts job `job` was given when it was queued, with their values, in order.
    fn job_context_values(&self, job: i64) -> Result<Vec<ContextValues>>;
    /// Put operator `operator` in group `group` (idempotent).
    fn add_operator_group(&self, operator: &str, group: &str) -> Result<()>;
    /// Take an operator out of a group: whether it was in it.
    fn remove_operator_group(&self, operator: &str, group: &str) -> Result<bool>;
    /// The groups of an operator, sorted.
    fn operator_groups(&self, operator: &str) -> Result<Vec<String>>;
    /// Put person `person` (their id) in group `group`: whether they were not in it yet.
    /// `Invalid` for a group that is not a name.
    fn add_person_group(&self, person: i64, group: &str) -> Result<bool>;
    /// Take a person out of a group: whether they were in it.
    fn remove_person_group(&self, person: i64, group: &str) -> Result<bool>;
    /// The groups of a person (their id), sorted.
    fn person_groups(&self, person: i64) -> Result<Vec<String>>;
}

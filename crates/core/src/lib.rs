//! Bosun's core: everything the agent and `bosun execute` need to run
//! `.circleci/config.yml` jobs in clean Docker containers, and what the coordinator shares
//! with them (the wire [`protocol`], the config compiler, git and SSH keys). Data flows one
//! way: job spec → plan → container → events → sink. Layers (each uses only those below it):
//! `agent` → `execute` → `job` → `executor` / `checkout` / `stream` → `mirror` / `config` /
//! `ssh`. The coordinator (`bosun-coordinator`) sits on top of this crate; nothing here
//! depends on it, on axum or on SQLite (docs/architecture.md).

pub mod agent;
pub mod checkout;
pub mod config;
pub mod engine_proxy;
pub mod execute;
pub mod executor;
pub mod gateway;
pub mod job;
pub mod mirror;
pub mod private;
pub mod protocol;
pub mod runtime;
pub mod ssh;
pub mod store;
pub mod stream;
pub mod time;
pub mod workflow;

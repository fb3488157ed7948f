//! Bosun: a build-executor agent that runs `.circleci/config.yml` jobs in clean Docker
//! containers, and the reference coordinator that hands it jobs. This crate is the thin
//! `bosun` binary's library: it re-exports the workspace's crates under one name, so that
//! `bosun::job`, `bosun::protocol` and the rest name what they always did. The agent and the
//! job runtime are `bosun-core`; the coordinator is `bosun-coordinator` (the default feature
//! `coordinator`: without it the binary is the agent and the local commands, with neither
//! SQLite nor axum compiled in). The crates and why they are cut so: docs/architecture.md.

pub use bosun_core::*;

/// `bosun agent`; `bosun execute` is `bosun_agent::execute`.
pub use bosun_agent as agent;
pub use bosun_agent::execute;
pub use bosun_protocol::time;

#[cfg(feature = "coordinator")]
pub use bosun_coordinator as coordinator;

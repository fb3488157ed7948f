//! Bosun: a build-executor agent that runs `.circleci/config.yml` jobs in clean Docker
//! containers. Data flows one way: job spec → plan → container → events → sink.
//!
//! Layers (each uses only those below it):
//! `execute` → `job` → `executor` / `checkout` / `stream` → `mirror` / `config` / `ssh`.

pub mod agent;
pub mod checkout;
pub mod config;
pub mod coordinator;
pub mod engine_proxy;
pub mod execute;
pub mod executor;
pub mod gateway;
pub mod job;
pub mod mirror;
pub mod protocol;
pub mod runtime;
pub mod ssh;
pub mod store;
pub mod stream;
pub mod workflow;

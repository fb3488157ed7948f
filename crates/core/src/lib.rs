//! Bosun's job core: one job from its request to its final status, for both front doors
//! (`bosun execute` and the agent, in `bosun-agent`). Data flows one way: job request →
//! plan → resources (containers, networks, an engine proxy, SSH sessions) → events → sinks.
//! Its rooms: `workflow` and `job` (a job's order and final status) over `executor`,
//! `engine_proxy`, `gateway`, `stream`, `store` and `runtime`, over the crates below this one:
//! the wire ([`protocol`]), the config compiler ([`config`]) and git and SSH ([`checkout`], [`mirror`],
//! [`ssh`]). Nothing here depends on the agent, the coordinator, axum or SQLite
//! (docs/architecture.md).

pub mod engine_proxy;
pub mod executor;
pub mod gateway;
pub mod job;
pub mod run;
pub mod runtime;
pub mod store;
pub mod stream;
pub mod workflow;

/// The config compiler, its own crate: pure, and the coordinator compiles pipelines with it.
pub use bosun_config as config;
/// Keys, known_hosts, checkout and mirrors, their own crate: the coordinator reads configs
/// with them and starts no container.
pub use bosun_git::{checkout, mirror, ssh};
/// The wire to the coordinator, its own crate since both sides build on it.
pub use bosun_protocol as protocol;
/// Secrets, owner-only files and private directories, in the bottom crate so every member
/// uses the same ones.
pub use bosun_protocol::private;

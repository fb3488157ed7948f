//! Bosun's integration tests, one binary (`cargo test --test it`): one module per area, over
//! the shared rigs below. One binary links the library and the harness once, instead of once
//! per test file. A test's name is `<module>::<test>` (`cargo test --test it steps::` runs one
//! module). All modules share one process: no test may change its environment, working
//! directory or signal handlers.
//! What each rig offers: `tests/README.md`.

// The shared rigs.
mod agent_rig;
mod coordinator_rig;
mod harness;

// The tests.
mod agent;
mod agent_hardening;
mod agent_ops;
mod api_v2;
mod badges;
mod blobs;
mod checkout;
mod checkout_sshd;
mod checkout_transports;
mod config_booleans;
mod config_broken;
mod config_compat;
mod config_corpus;
mod config_orbs;
mod config_props;
mod context_groups;
mod contexts;
mod coordinator;
mod coordinator_connections;
mod coordinator_pages;
mod e2e;
mod engine_escapes;
mod engine_proxy;
mod execute;
mod follow;
mod host_escapes;
mod in_place;
mod migrate;
mod mirror;
mod notify;
mod object_storage;
mod oidc;
mod people;
mod people_data_center;
mod people_streams;
mod pipelines;
mod pipelines_config_api;
mod pipelines_data_center;
mod registry;
mod resource_class;
mod rig;
mod runtime;
mod scale_live;
mod scale_pg;
mod schedules;
mod service_containers;
mod settings_web;
mod setup_workflows;
mod sftp;
mod ssh_coordinator;
mod ssh_gateway;
mod ssh_policy;
mod steps;
mod systemd;
mod tokens;
mod warm;
mod work_dirs;

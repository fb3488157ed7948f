//! checkout (temporary interface stub; replaced by the real module on merge)
#![allow(dead_code, unused_variables)]
use crate::ssh::{KnownHosts, SshKey, VcsHosts};
use std::path::PathBuf;
pub struct CheckoutSpec {
    pub url: String,
    pub reference: Option<String>,
    pub dest: PathBuf,
}
pub struct Credentials {
    pub keys: Vec<SshKey>,
    pub known_hosts: KnownHosts,
    pub hosts: VcsHosts,
}
pub struct CheckoutOutcome {
    pub sha: String,
    pub branch: Option<String>,
    pub tag: Option<String>,
    pub submodules: Vec<(String, String)>,
}
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct CheckoutError(pub String);
pub fn checkout(
    spec: &CheckoutSpec,
    creds: &Credentials,
    progress: &mut dyn FnMut(&str),
) -> Result<CheckoutOutcome, CheckoutError> {
    Err(CheckoutError("stub".into()))
}

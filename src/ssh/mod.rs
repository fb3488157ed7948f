//! ssh (temporary interface stub; replaced by the real module on merge)
#![allow(dead_code, unused_variables)]
use std::path::Path;
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SshError(pub String);
#[derive(Clone, Default)]
pub struct KnownHosts;
impl KnownHosts {
    pub fn pinned() -> KnownHosts {
        KnownHosts
    }
    pub fn parse(text: &str, origin: &str) -> Result<KnownHosts, SshError> {
        Ok(KnownHosts)
    }
    pub fn extend(&mut self, other: KnownHosts) {}
    pub fn render(&self) -> String {
        String::new()
    }
}
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyRole {
    User,
    Deploy,
}
pub struct SshKey {
    pub role: KeyRole,
    pub private: zeroize::Zeroizing<String>,
    pub public_fingerprint: Option<String>,
}
impl SshKey {
    pub fn from_file(path: &Path, role: KeyRole) -> Result<SshKey, SshError> {
        Err(SshError("stub".into()))
    }
    pub fn file_name(&self) -> &'static str {
        "id_bosun_user"
    }
}
#[derive(Clone, Default)]
pub struct VcsHosts;
impl VcsHosts {
    pub fn new() -> VcsHosts {
        VcsHosts
    }
    pub fn add_mapping(&mut self, spec: &str) -> Result<(), SshError> {
        Ok(())
    }
    pub fn logical_ssh_url(&self, url: &str) -> String {
        url.to_owned()
    }
}
pub struct SshUrl {
    pub user: Option<String>,
    pub host: String,
    pub port: Option<u16>,
    pub path: String,
}
pub fn parse_ssh_url(url: &str) -> Option<SshUrl> {
    None
}
pub struct ContainerSshFiles {
    pub files: Vec<(String, Vec<u8>, u32)>,
}
pub fn container_ssh_files(
    keys: &[SshKey],
    known_hosts: &KnownHosts,
    vcs_hosts: &[String],
) -> ContainerSshFiles {
    ContainerSshFiles { files: vec![] }
}

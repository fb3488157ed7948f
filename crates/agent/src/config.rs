//! The agent's configuration: a TOML file (`/etc/bosun/agent.toml` by default), each key
//! overridable by the environment variable `BOSUN_<KEY in upper case>` (lists: comma
//! separated). `systemd/agent.toml` documents every key.

use serde::Deserialize;
use std::path::{Path, PathBuf};

pub const DEFAULT_CONFIG: &str = "/etc/bosun/agent.toml";

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    pub coordinator_url: String,
    /// Allow `http://` to a coordinator that is not on loopback (claims carry private keys
    /// and secrets in the clear then). Off by default.
    #[serde(default)]
    pub allow_insecure_http: bool,
    /// A PEM file of CA certificates trusted for the coordinator's HTTPS besides the
    /// system's (a private CA, a self-signed coordinator).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    #[serde(default = "d_reg_token_file")]
    pub registration_token_file: PathBuf,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default = "d_state_dir")]
    pub state_dir: PathBuf,
    #[serde(default = "d_resource_class")]
    pub resource_class: String,
    #[serde(default)]
    pub labels: Vec<String>,
    #[serde(default = "d_concurrency")]
    pub concurrency: u32,
    #[serde(default = "d_work_dir")]
    pub work_dir: PathBuf,
    #[serde(default = "d_spool_dir")]
    pub spool_dir: PathBuf,
    #[serde(default = "d_store_dir")]
    pub store_dir: PathBuf,
    /// Repository mirrors are kept in its `mirrors/` (checkouts fetch only what is new).
    #[serde(default = "d_cache_dir")]
    pub cache_dir: PathBuf,
    /// Size budget of the mirrors in MiB; the least recently used go first beyond it.
    #[serde(default = "d_cache_budget_mb")]
    pub cache_budget_mb: u64,
    #[serde(default)]
    pub docker_host: Option<String>,
    #[serde(default)]
    pub network: Option<String>,
    #[serde(default)]
    pub vcs_hosts: Vec<String>,
    #[serde(default)]
    pub known_hosts_file: Option<PathBuf>,
    #[serde(default = "d_kill_grace")]
    pub kill_grace_secs: u64,
    #[serde(default = "d_heartbeat")]
    pub heartbeat_secs: u64,
    #[serde(default = "d_claim_wait")]
    pub claim_wait_secs: u64,
    #[serde(default = "d_flush")]
    pub drain_flush_secs: u64,
    /// `machine:` image names → local images (`machine: true` runs `default`, which is
    /// bosun/machine unless mapped here).
    #[serde(default)]
    pub machine_images: std::collections::BTreeMap<String, String>,
    /// Registry orbs a pipeline's config may import (DIR/NAMESPACE/NAME@VERSION.yml): the
    /// coordinator's `--orb-dir` orbs, so that both compile the config alike.
    #[serde(default)]
    pub orb_dir: Option<PathBuf>,
    /// What a docker job's `resource_class` does: `apply` CircleCI's CPUs and memory for the
    /// class as container limits, `scale:FACTOR` them (e.g. `scale:0.5` on a smaller host),
    /// or `off`.
    #[serde(default)]
    pub resource_class_limits: bosun_core::job::LimitPolicy,
    /// Serve `/metrics`, `/healthz` and `/readyz` here (e.g. `127.0.0.1:9464`); none: off.
    #[serde(default)]
    pub metrics_listen: Option<String>,
    /// The SSH gateway's address (`off`: no gateway; jobs asking for SSH run without it).
    #[serde(default = "d_ssh_listen")]
    pub ssh_gateway_listen: String,
    /// The host (or `HOST:PORT`) users are told to connect to; default: the listen address,
    /// or this machine's name.
    #[serde(default)]
    pub ssh_gateway_address: Option<String>,
    /// After the last step, a job with SSH waits this long for a first session.
    #[serde(default = "d_ssh_wait")]
    pub ssh_wait_secs: u64,
    /// A session keeps its job at most this long.
    #[serde(default = "d_ssh_max")]
    pub ssh_max_secs: u64,
    /// A job is held this much longer after its last session ends.
    #[serde(default = "d_ssh_grace")]
    pub ssh_grace_secs: u64,
    /// Where each job's engine socket directory is made (default `state_dir/engine`); the
    /// Docker engine must see the same path (it is bind-mounted into the job).
    #[serde(default)]
    pub engine_socket_dir: Option<PathBuf>,
    /// Per container of a job's engine: CPUs in thousandths, memory in MiB; containers per
    /// job. Unset: no limit.
    #[serde(default)]
    pub engine_millicpus: Option<u64>,
    #[serde(default)]
    pub engine_memory_mb: Option<u64>,
    #[serde(default)]
    pub engine_max_containers: Option<u64>,
    /// Address pools (CIDR) a job's networks may take explicit subnets from
    /// (`docker network create --subnet`); empty: the engine picks every subnet itself.
    #[serde(default)]
    pub engine_subnet_pools: Vec<String>,
    /// Keep the images built by jobs that ask for `docker_layer_caching` (layer reuse by later
    /// jobs) instead of removing them. Kept images are readable by every later job of this
    /// agent, whatever its project: only for agents serving one trust domain.
    #[serde(default)]
    pub engine_keep_images: bool,
    /// While idle, keep a container created and started for the images (and users) of this
    /// many of the last jobs, so the next one starts at once; 0: off.
    #[serde(default = "d_ready_containers")]
    pub ready_containers: usize,
    /// A ready container nobody took for this long is removed.
    #[serde(default = "d_ready_idle")]
    pub ready_idle_secs: u64,
}

impl AgentConfig {
    /// The settings of the jobs' engines (`setup_remote_docker`, `machine`).
    pub fn engine_settings(
        &self,
    ) -> Result<bosun_core::engine_proxy::EngineSettings, bosun_core::engine_proxy::ProxyError>
    {
        let mut s = bosun_core::engine_proxy::EngineSettings::from_env(
            self.engine_socket_dir
                .clone()
                .unwrap_or_else(|| self.state_dir.join("engine")),
        )?;
        let clamp = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        s.limits = bosun_core::engine_proxy::Limits {
            nano_cpus: self
                .engine_millicpus
                .map(|m| clamp(m).saturating_mul(1_000_000)),
            memory: self
                .engine_memory_mb
                .map(|m| clamp(m).saturating_mul(1 << 20)),
            max_containers: self
                .engine_max_containers
                .map(|n| usize::try_from(n).unwrap_or(usize::MAX)),
            pids: None,
            subnet_pools: self
                .engine_subnet_pools
                .iter()
                .map(|p| {
                    bosun_core::engine_proxy::filter::Subnet::parse(p).ok_or_else(|| {
                        bosun_core::engine_proxy::ProxyError::Setting(format!(
                            "engine_subnet_pools: `{p}` is not a network in CIDR notation (as 10.200.0.0/16)"
                        ))
                    })
                })
                .collect::<Result<_, _>>()?,
        };
        s.keep_images = self.engine_keep_images;
        Ok(s)
    }
}

fn d_reg_token_file() -> PathBuf {
    "/etc/bosun/registration-token".into()
}
fn d_state_dir() -> PathBuf {
    "/var/lib/bosun".into()
}
fn d_resource_class() -> String {
    "default".into()
}
fn d_concurrency() -> u32 {
    1
}
fn d_work_dir() -> PathBuf {
    "/var/cache/bosun/work".into()
}
fn d_spool_dir() -> PathBuf {
    "/var/lib/bosun/spool".into()
}
fn d_store_dir() -> PathBuf {
    "/var/cache/bosun/store".into()
}
fn d_cache_dir() -> PathBuf {
    "/var/cache/bosun".into()
}
fn d_cache_budget_mb() -> u64 {
    bosun_core::mirror::DEFAULT_BUDGET_BYTES >> 20
}
fn d_kill_grace() -> u64 {
    3
}
fn d_heartbeat() -> u64 {
    5
}
fn d_claim_wait() -> u64 {
    bosun_core::protocol::DEFAULT_CLAIM_WAIT_SECS
}
fn d_flush() -> u64 {
    30
}
/// Most ready containers an agent keeps.
const MAX_READY: usize = 32;

fn d_ready_containers() -> usize {
    1
}
fn d_ready_idle() -> u64 {
    600
}
fn d_ssh_listen() -> String {
    format!("0.0.0.0:{}", bosun_core::gateway::DEFAULT_PORT)
}
fn d_ssh_wait() -> u64 {
    600
}
fn d_ssh_max() -> u64 {
    7200
}
fn d_ssh_grace() -> u64 {
    30
}

#[derive(Clone, Copy)]
enum Kind {
    Str,
    Int,
    Bool,
    List,
}

/// Every key, and how its environment override is read.
const KEYS: &[(&str, Kind)] = &[
    ("coordinator_url", Kind::Str),
    ("allow_insecure_http", Kind::Bool),
    ("ca_file", Kind::Str),
    ("registration_token_file", Kind::Str),
    ("name", Kind::Str),
    ("state_dir", Kind::Str),
    ("resource_class", Kind::Str),
    ("labels", Kind::List),
    ("concurrency", Kind::Int),
    ("work_dir", Kind::Str),
    ("spool_dir", Kind::Str),
    ("store_dir", Kind::Str),
    ("cache_dir", Kind::Str),
    ("cache_budget_mb", Kind::Int),
    ("docker_host", Kind::Str),
    ("network", Kind::Str),
    ("vcs_hosts", Kind::List),
    ("known_hosts_file", Kind::Str),
    ("kill_grace_secs", Kind::Int),
    ("heartbeat_secs", Kind::Int),
    ("claim_wait_secs", Kind::Int),
    ("drain_flush_secs", Kind::Int),
    ("ready_containers", Kind::Int),
    ("ready_idle_secs", Kind::Int),
    ("metrics_listen", Kind::Str),
    ("ssh_gateway_listen", Kind::Str),
    ("ssh_gateway_address", Kind::Str),
    ("ssh_wait_secs", Kind::Int),
    ("ssh_max_secs", Kind::Int),
    ("ssh_grace_secs", Kind::Int),
    ("engine_socket_dir", Kind::Str),
    ("engine_millicpus", Kind::Int),
    ("engine_memory_mb", Kind::Int),
    ("engine_max_containers", Kind::Int),
    ("engine_subnet_pools", Kind::List),
    ("engine_keep_images", Kind::Bool),
    ("resource_class_limits", Kind::Str),
    ("orb_dir", Kind::Str),
];

impl AgentConfig {
    /// Read `path` (missing is fine when `required` is false) and apply `BOSUN_*` overrides.
    pub fn load(path: &Path, required: bool) -> Result<AgentConfig, String> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => String::new(),
            Err(e) => return Err(format!("{}: {e}", path.display())),
        };
        Self::parse(&text, &path.display().to_string(), |k| {
            std::env::var(k).ok()
        })
    }

    pub fn parse(
        text: &str,
        name: &str,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<AgentConfig, String> {
        let mut table: toml::Table = toml::from_str(text).map_err(|e| format!("{name}: {e}"))?;
        for (key, kind) in KEYS {
            let var = format!("BOSUN_{}", key.to_ascii_uppercase());
            let Some(v) = env(&var) else { continue };
            let value = match kind {
                Kind::Str => toml::Value::String(v),
                Kind::Int => toml::Value::Integer(
                    v.trim()
                        .parse()
                        .map_err(|_| format!("{var}={v}: expected a whole number"))?,
                ),
                Kind::Bool => toml::Value::Boolean(match v.trim() {
                    "1" | "true" | "yes" => true,
                    "0" | "false" | "no" | "" => false,
                    _ => return Err(format!("{var}={v}: expected true or false")),
                }),
                Kind::List => toml::Value::Array(
                    v.split(',')
                        .map(str::trim)
                        .filter(|s| !s.is_empty())
                        .map(|s| toml::Value::String(s.to_owned()))
                        .collect(),
                ),
            };
            table.insert((*key).to_owned(), value);
        }
        let cfg: AgentConfig = table
            .try_into()
            .map_err(|e: toml::de::Error| format!("{name}: {e}"))?;
        if cfg.concurrency == 0 {
            return Err(format!("{name}: concurrency must be at least 1"));
        }
        if cfg.ready_containers > MAX_READY {
            return Err(format!(
                "{name}: ready_containers = {} keeps that many idle containers running; at most {MAX_READY} (0 turns them off)",
                cfg.ready_containers
            ));
        }
        let url = reqwest::Url::parse(&cfg.coordinator_url)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
            .ok_or_else(|| {
                format!(
                    "{name}: coordinator_url `{}` must be an http:// or https:// address",
                    cfg.coordinator_url
                )
            })?;
        if url.scheme() == "http" && !is_loopback(&url) && !cfg.allow_insecure_http {
            return Err(format!(
                "{name}: coordinator_url `{}` is plain HTTP to another host: claims carry \
                 private keys and secrets, so use https:// (or set allow_insecure_http = true \
                 on a network you trust)",
                cfg.coordinator_url
            ));
        }
        Ok(cfg)
    }

    /// The HTTP client's extra trusted CA certificates (`ca_file`), PEM.
    pub fn ca_certificates(&self) -> Result<Vec<reqwest::Certificate>, String> {
        let Some(path) = &self.ca_file else {
            return Ok(Vec::new());
        };
        let pem = std::fs::read(path).map_err(|e| format!("ca_file {}: {e}", path.display()))?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| format!("ca_file {}: {e}", path.display()))?;
        if certs.is_empty() {
            return Err(format!("ca_file {}: no PEM certificate", path.display()));
        }
        Ok(certs)
    }

    /// The gateway's settings, `None` when `ssh_gateway_listen = "off"`.
    pub fn gateway(&self) -> Result<Option<bosun_core::gateway::GatewayConfig>, String> {
        let listen = self.ssh_gateway_listen.trim();
        if listen.eq_ignore_ascii_case("off") || listen.is_empty() {
            return Ok(None);
        }
        let addr = listen.parse().map_err(|_| {
            format!(
                "ssh_gateway_listen `{listen}`: expected ADDRESS:PORT (e.g. 0.0.0.0:54782) or off"
            )
        })?;
        let mut c = bosun_core::gateway::GatewayConfig::new(
            addr,
            self.state_dir.join("ssh_host_ed25519_key"),
        );
        c.address = self.ssh_gateway_address.clone();
        c.wait = std::time::Duration::from_secs(self.ssh_wait_secs);
        c.max = std::time::Duration::from_secs(self.ssh_max_secs);
        c.grace = std::time::Duration::from_secs(self.ssh_grace_secs);
        Ok(Some(c))
    }

    pub fn agent_name(&self) -> String {
        self.name.clone().unwrap_or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .map(|s| s.trim().to_owned())
                .ok()
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "bosun-agent".to_owned())
        })
    }
}

/// `localhost`, 127.0.0.0/8 or ::1.
fn is_loopback(url: &reqwest::Url) -> bool {
    let Some(host) = url.host_str() else {
        return false;
    };
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    match bare.parse::<std::net::IpAddr>() {
        Ok(ip) => ip.is_loopback(),
        Err(_) => host.eq_ignore_ascii_case("localhost"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_overrides_file() {
        let text = "coordinator_url = \"https://c:8443\"\nlabels = [\"a\"]\nconcurrency = 2\n";
        let c = AgentConfig::parse(text, "t", |k| match k {
            "BOSUN_LABELS" => Some("x, y".into()),
            "BOSUN_CONCURRENCY" => Some("4".into()),
            _ => None,
        })
        .expect("parse");
        assert_eq!(c.labels, vec!["x", "y"]);
        assert_eq!(c.concurrency, 4);
        assert_eq!(c.kill_grace_secs, 3);
        assert!(AgentConfig::parse("coordinator_url = \"x\"", "t", |_| None).is_err());
        assert!(
            AgentConfig::parse("coordinator_url = \"http://x\"\nbogus = 1", "t", |_| None).is_err()
        );
    }

    #[test]
    fn engine_subnet_pools_are_networks_in_cidr_notation() {
        let parse = |pools: &str| {
            AgentConfig::parse(
                &format!("coordinator_url = \"https://c:8443\"\nengine_subnet_pools = {pools}\n"),
                "t",
                |_| None,
            )
            .expect("parse")
        };
        let s = parse(r#"["10.200.0.0/16", "fd00:b05::/48"]"#)
            .engine_settings()
            .expect("settings");
        assert_eq!(s.limits.subnet_pools.len(), 2);
        assert_eq!(s.limits.subnet_pools[0].to_string(), "10.200.0.0/16");
        let e = parse(r#"["10.200.0.0"]"#).engine_settings().unwrap_err();
        assert!(
            e.to_string().contains("engine_subnet_pools: `10.200.0.0`"),
            "{e}"
        );
    }

    #[test]
    fn plain_http_is_refused_to_another_host_unless_allowed() {
        let parse = |url: &str, extra: &str| {
            AgentConfig::parse(
                &format!("coordinator_url = \"{url}\"\n{extra}"),
                "t",
                |_| None,
            )
        };
        for ok in [
            "https://ci.example.com",
            "https://10.0.0.5:8443",
            "http://127.0.0.1:8080",
            "http://127.1.2.3:8080",
            "http://localhost:8080",
            "http://[::1]:8080",
        ] {
            assert!(parse(ok, "").is_ok(), "{ok}");
        }
        for bad in [
            "http://ci.example.com:8080",
            "http://10.0.0.5",
            "http://[fe80::1]:80",
            "http://localhost.evil.com",
        ] {
            let e = parse(bad, "").expect_err(bad);
            assert!(e.contains("allow_insecure_http"), "{e}");
            assert!(parse(bad, "allow_insecure_http = true").is_ok(), "{bad}");
        }
        let c = AgentConfig::parse("coordinator_url = \"http://c:80\"", "t", |k| {
            (k == "BOSUN_ALLOW_INSECURE_HTTP").then(|| "true".to_owned())
        })
        .expect("env allows");
        assert!(c.allow_insecure_http);
        assert!(parse("ftp://c", "").is_err());
    }

    #[test]
    fn the_example_config_parses() {
        let text = include_str!("../../../systemd/agent.toml");
        let c = AgentConfig::parse(text, "agent.toml", |_| None).expect("example parses");
        assert_eq!(c.state_dir, PathBuf::from("/var/lib/bosun"));
    }
}

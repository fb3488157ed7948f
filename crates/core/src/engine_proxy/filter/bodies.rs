//! The checks on each request body, over the typed [`super::model`]: container create (host
//! access, namespaces, storage, networks, logging, limits), exec, networks and volumes, and
//! the build query. Each takes the decoded value and returns the one to send, so the engine
//! receives exactly what was checked.

use super::model::{
    ContainerCreate, Dict, EndpointSettings, HostConfig, NetworkConnect, NetworkCreate,
    VolumeCreate,
};
use super::*;

fn labelled(labels: Option<Dict<String>>, scope: &Scope) -> Option<Dict<String>> {
    let mut l = labels.unwrap_or_default();
    for (k, v) in scope.labels() {
        l.0.insert(k, v);
    }
    Some(l)
}

fn set<T>(v: &Option<T>) -> bool
where
    T: Default + PartialEq,
{
    v.as_ref().is_some_and(|x| *x != T::default())
}

/// `container:<id>` modes must name one of the job's containers; `host` is refused.
fn namespace_mode(
    mode: Option<&str>,
    field: &str,
    allowed: &[&str],
    checks: &mut Vec<Check>,
    what: &str,
) -> Result<(), Refusal> {
    let mode = mode.unwrap_or("");
    if let Some(other) = mode.strip_prefix("container:") {
        checks.push(Check::Referenced {
            kind: Kind::Container,
            name: other.to_owned(),
            field: format!("HostConfig.{field}"),
        });
        return Ok(());
    }
    if mode.is_empty() || allowed.contains(&mode) {
        return Ok(());
    }
    Err(forbid(format!(
        "HostConfig.{field}={mode} is not allowed: {what}. Drop the option (or use container:<one of this job's containers>)"
    )))
}

/// The engine's built-in networks a job's containers may join by name.
const BUILTIN_NETWORKS: &[&str] = &["", "default", "bridge", "none"];

/// Log drivers that write on the engine's host only: every other one (syslog, gelf, fluentd,
/// splunk, …) makes the engine connect where the job says, the host's loopback included.
pub(super) const LOG_DRIVERS: &[&str] = &["json-file", "local", "none"];

pub(super) fn container_create(
    mut v: ContainerCreate,
    scope: &Scope,
    checks: &mut Vec<Check>,
    ensure_volumes: &mut Vec<String>,
) -> Result<ContainerCreate, Refusal> {
    v.Labels = labelled(v.Labels.take(), scope);
    let mut host = v.HostConfig.take().unwrap_or_default();
    host_access(&host)?;
    namespaces(&host, checks)?;
    let net = host.NetworkMode.clone().unwrap_or_default();
    storage(&host, checks, ensure_volumes)?;
    logging(&host)?;
    for (field, list) in [
        ("HostConfig.VolumesFrom", &host.VolumesFrom),
        ("HostConfig.Links", &host.Links),
    ] {
        for item in list.iter().flatten() {
            let c = item.split(':').next().unwrap_or("");
            checks.push(Check::Referenced {
                kind: Kind::Container,
                name: c.trim_start_matches('/').to_owned(),
                field: field.to_owned(),
            });
        }
    }
    if let Some(eps) = v
        .NetworkingConfig
        .as_ref()
        .and_then(|n| n.EndpointsConfig.as_ref())
    {
        for (name, ep) in &eps.0 {
            match name.as_str() {
                "host" => {
                    return Err(forbid(
                        "NetworkingConfig.EndpointsConfig.host is not allowed: the host's network belongs to the agent and other jobs",
                    ))
                }
                n if BUILTIN_NETWORKS.contains(&n) || n == net => {}
                n => checks.push(Check::Referenced {
                    kind: Kind::Network,
                    name: n.to_owned(),
                    field: "NetworkingConfig.EndpointsConfig".to_owned(),
                }),
            }
            endpoint(
                ep,
                &format!("NetworkingConfig.EndpointsConfig.{name}"),
                checks,
            )?;
        }
    }
    apply_limits(&mut host, &scope.limits);
    v.HostConfig = Some(host);
    Ok(v)
}

/// A container's settings on a network: the engine joins the network `NetworkID` names
/// whatever the key or path said, so it must be the job's too; driver options are the
/// network driver's, not a job's.
fn endpoint(ep: &EndpointSettings, at: &str, checks: &mut Vec<Check>) -> Result<(), Refusal> {
    if let Some(id) = ep.NetworkID.as_deref().filter(|id| !id.is_empty()) {
        checks.push(Check::Referenced {
            kind: Kind::Network,
            name: id.to_owned(),
            field: format!("{at}.NetworkID"),
        });
    }
    if set(&ep.DriverOpts.as_ref().map(|d| !d.is_empty())) {
        return Err(forbid(format!(
            "{at}.DriverOpts is not allowed: endpoint driver options are the network driver's. Drop them"
        )));
    }
    Ok(())
}

fn host_access(host: &HostConfig) -> Result<(), Refusal> {
    if host.Privileged == Some(true) {
        return Err(forbid(
            "HostConfig.Privileged is not allowed: a privileged container is root on the host. Drop --privileged (the job's engine runs containers unprivileged)",
        ));
    }
    let refused: [(&str, bool, &str); 12] = [
        ("CapAdd", host.CapAdd.as_ref().is_some_and(|c| !c.0.is_empty()), "added capabilities loosen the container's confinement; drop --cap-add"),
        ("Devices", host.Devices.as_ref().is_some_and(|d| !d.is_empty()), "host devices are not available to a job; drop --device"),
        ("DeviceRequests", host.DeviceRequests.as_ref().is_some_and(|d| !d.is_empty()), "host devices (GPUs) are not available to a job; drop --gpus"),
        ("DeviceCgroupRules", host.DeviceCgroupRules.as_ref().is_some_and(|d| !d.is_empty()), "device access is not available to a job; drop --device-cgroup-rule"),
        ("Sysctls", host.Sysctls.as_ref().is_some_and(|d| !d.is_empty()), "kernel parameters are not a job's to set; drop --sysctl"),
        ("CgroupParent", set(&host.CgroupParent), "the cgroup parent is the agent's; drop --cgroup-parent"),
        ("VolumeDriver", set(&host.VolumeDriver), "only local volumes are available; drop --volume-driver"),
        ("StorageOpt", host.StorageOpt.as_ref().is_some_and(|d| !d.is_empty()), "storage options are the agent's; drop --storage-opt"),
        ("OomKillDisable", host.OomKillDisable == Some(true), "the out-of-memory killer protects the host; drop --oom-kill-disable"),
        ("KernelMemory", set(&host.KernelMemory), "kernel memory limits are the agent's; drop --kernel-memory"),
        ("OomScoreAdj", host.OomScoreAdj.is_some_and(|s| s < 0), "a negative score makes the kernel kill the host's processes first; drop --oom-score-adj"),
        ("Isolation", host.Isolation.as_deref().is_some_and(|i| !matches!(i, "" | "default")), "isolation technologies are the agent's; drop --isolation"),
    ];
    if let Some((field, _, what)) = refused.iter().find(|(_, bad, _)| *bad) {
        return Err(forbid(format!("HostConfig.{field} is not allowed: {what}")));
    }
    if host.Annotations.as_ref().is_some_and(|a| !a.is_empty()) {
        return Err(forbid(
            "HostConfig.Annotations are not allowed: they are read by the host's container runtime. Drop --annotation",
        ));
    }
    for (field, paths) in [
        ("MaskedPaths", &host.MaskedPaths),
        ("ReadonlyPaths", &host.ReadonlyPaths),
    ] {
        if paths.is_some() {
            return Err(forbid(format!(
                "HostConfig.{field} is not allowed: the /proc paths the engine masks stay masked; drop --security-opt systempaths=unconfined"
            )));
        }
    }
    for s in host.SecurityOpt.iter().flatten() {
        if !matches!(
            s.as_str(),
            "no-new-privileges" | "no-new-privileges:true" | "no-new-privileges=true"
        ) {
            return Err(forbid(format!(
                "HostConfig.SecurityOpt `{s}` is not allowed: only no-new-privileges may be set (seccomp, AppArmor and SELinux profiles stay the engine's defaults). Drop --security-opt"
            )));
        }
    }
    let runtime = host.Runtime.as_deref().unwrap_or("");
    if !matches!(runtime, "" | "runc") {
        return Err(forbid(format!(
            "HostConfig.Runtime `{runtime}` is not allowed; drop --runtime"
        )));
    }
    Ok(())
}

fn namespaces(host: &HostConfig, checks: &mut Vec<Check>) -> Result<(), Refusal> {
    match host.NetworkMode.as_deref().unwrap_or("") {
        n if BUILTIN_NETWORKS.contains(&n) => {}
        "host" => {
            return Err(forbid(
                "HostConfig.NetworkMode=host is not allowed: the host's network belongs to the agent and other jobs. Publish ports with -p (reached at the engine's address) or use a network of this job (docker network create)",
            ))
        }
        other => match other.strip_prefix("container:") {
            Some(c) => checks.push(Check::Referenced {
                kind: Kind::Container,
                name: c.to_owned(),
                field: "HostConfig.NetworkMode".to_owned(),
            }),
            None => checks.push(Check::Referenced {
                kind: Kind::Network,
                name: other.to_owned(),
                field: "HostConfig.NetworkMode".to_owned(),
            }),
        },
    }
    namespace_mode(
        host.PidMode.as_deref(),
        "PidMode",
        &[],
        checks,
        "the host's processes are not a job's to see",
    )?;
    namespace_mode(
        host.IpcMode.as_deref(),
        "IpcMode",
        &["private", "shareable", "none"],
        checks,
        "the host's IPC namespace is not a job's",
    )?;
    for (field, mode, allowed) in [
        ("UsernsMode", &host.UsernsMode, &[""][..]),
        ("UTSMode", &host.UTSMode, &[""][..]),
        ("CgroupnsMode", &host.CgroupnsMode, &["", "private"][..]),
        ("Cgroup", &host.Cgroup, &[""][..]),
    ] {
        let mode = mode.as_deref().unwrap_or("");
        if !allowed.contains(&mode) {
            return Err(forbid(format!(
                "HostConfig.{field}={mode} is not allowed: host namespaces are not a job's. Drop the option"
            )));
        }
    }
    Ok(())
}

/// Named volumes of the job only: no host paths, no volume driver options (a local volume
/// with `type=none,o=bind,device=PATH` is a bind mount of any host path, as root).
fn storage(
    host: &HostConfig,
    checks: &mut Vec<Check>,
    ensure_volumes: &mut Vec<String>,
) -> Result<(), Refusal> {
    for s in host.Binds.iter().flatten() {
        let src = s.split(':').next().unwrap_or("");
        if src.is_empty() || !s.contains(':') {
            continue; // an anonymous volume (`-v /data`)
        }
        if src.starts_with('/') || src.starts_with('.') || src.starts_with('~') {
            return Err(forbid(bind_message("HostConfig.Binds", src)));
        }
        volume_source(src, "HostConfig.Binds", checks, ensure_volumes);
    }
    for m in host.Mounts.iter().flatten() {
        let src = m.Source.as_deref().unwrap_or("");
        match m.Type.as_deref().unwrap_or("") {
            "tmpfs" => {}
            "volume" => {
                if m.BindOptions.is_some() {
                    return Err(forbid(
                        "HostConfig.Mounts[].BindOptions is not allowed on a volume mount",
                    ));
                }
                if m.VolumeOptions
                    .as_ref()
                    .is_some_and(|o| o.Subpath.as_deref().is_some_and(|p| !p.is_empty()))
                {
                    return Err(forbid(
                        "HostConfig.Mounts[].VolumeOptions.Subpath is not allowed: mount the whole volume",
                    ));
                }
                if m.VolumeOptions
                    .as_ref()
                    .is_some_and(|o| o.DriverConfig.is_some())
                {
                    return Err(forbid(
                        "HostConfig.Mounts[].VolumeOptions.DriverConfig is not allowed: volume driver options could mount host paths. Drop the volume-driver and volume-opt options",
                    ));
                }
                if !src.is_empty() {
                    volume_source(src, "HostConfig.Mounts[].Source", checks, ensure_volumes);
                }
            }
            "bind" => return Err(forbid(bind_message("HostConfig.Mounts[].Type=bind", src))),
            other => {
                return Err(forbid(format!(
                    "HostConfig.Mounts[].Type={other} is not allowed: use volume or tmpfs mounts"
                )))
            }
        }
    }
    Ok(())
}

/// Containers log where the engine's host keeps them: a driver that ships logs elsewhere
/// would have the engine connect, from the host, to wherever the job says.
fn logging(host: &HostConfig) -> Result<(), Refusal> {
    let Some(log) = &host.LogConfig else {
        return Ok(());
    };
    let driver = log.Type.as_deref().unwrap_or("");
    let has_options = log.Config.as_ref().is_some_and(|c| !c.is_empty());
    if driver.is_empty() {
        if has_options {
            return Err(forbid(
                "HostConfig.LogConfig.Config needs HostConfig.LogConfig.Type: options for the engine's default log driver are not a job's to set. Name --log-driver json-file, local or none",
            ));
        }
        return Ok(());
    }
    if !LOG_DRIVERS.contains(&driver) {
        return Err(forbid(format!(
            "HostConfig.LogConfig.Type `{driver}` is not allowed: only {} (which write on the engine's host) are; a driver that ships logs makes the engine connect where the job says. Drop --log-driver",
            LOG_DRIVERS.join(", ")
        )));
    }
    Ok(())
}

pub(super) fn network_create(
    mut v: NetworkCreate,
    scope: &Scope,
    checks: &mut Vec<Check>,
) -> Result<NetworkCreate, Refusal> {
    let driver = v.Driver.as_deref().unwrap_or("");
    if !matches!(driver, "" | "bridge") {
        return Err(forbid(format!(
            "Driver `{driver}` is not allowed for a network: only bridge networks (the default) are. Drop --driver"
        )));
    }
    if !matches!(v.Scope.as_deref().unwrap_or(""), "" | "local") {
        return Err(forbid(
            "Scope is not allowed for a job's network: only local networks are",
        ));
    }
    for (field, on) in [
        ("ConfigFrom", v.ConfigFrom.is_some()),
        ("Ingress", v.Ingress == Some(true)),
        ("ConfigOnly", v.ConfigOnly == Some(true)),
    ] {
        if on {
            return Err(forbid(format!(
                "{field} is not allowed for a job's network"
            )));
        }
    }
    if let Some(opts) = &v.Options {
        if let Some(k) = opts.0.keys().find(|k| k.starts_with("com.docker.network.")) {
            return Err(forbid(format!(
                "Options {k} is not allowed: com.docker.network.* options change the host's network interfaces. Drop the -o options"
            )));
        }
    }
    if let Some(ipam) = &v.IPAM {
        ipam_pool(ipam, &scope.limits.subnet_pools)?;
    }
    if let Some(name) = &v.Name {
        checks.push(Check::FreeOrOwned {
            kind: Kind::Network,
            name: name.clone(),
            field: "Name".to_owned(),
        });
    }
    v.Labels = labelled(v.Labels.take(), scope);
    Ok(v)
}

/// A job's network takes its addresses from the engine's pool, or from a pool the operator
/// configured: a subnet of the job's choosing could cover the host's own networks, and the
/// host would route that traffic into the job's bridge for as long as it lives.
fn ipam_pool(ipam: &model::Ipam, pools: &[Subnet]) -> Result<(), Refusal> {
    if !matches!(ipam.Driver.as_deref().unwrap_or(""), "" | "default") {
        return Err(forbid(
            "IPAM.Driver is not allowed: a job's networks use the engine's default address management. Drop --ipam-driver",
        ));
    }
    if ipam.Options.as_ref().is_some_and(|o| !o.is_empty()) {
        return Err(forbid("IPAM.Options are not allowed. Drop --ipam-opt"));
    }
    for c in ipam.Config.iter().flatten() {
        let pools_text = if pools.is_empty() {
            "this agent configures none (engine_subnet_pools), so the engine picks the subnet: drop --subnet, --ip-range, --gateway and --aux-address".to_owned()
        } else {
            let list: Vec<String> = pools.iter().map(Subnet::to_string).collect();
            format!("this agent allows subnets inside {}", list.join(", "))
        };
        for (field, value) in [
            ("Subnet", &c.Subnet),
            ("IPRange", &c.IPRange),
            ("Gateway", &c.Gateway),
        ] {
            let Some(value) = value.as_deref().filter(|s| !s.is_empty()) else {
                continue;
            };
            let inside = Subnet::parse(value)
                .or_else(|| Subnet::parse(&format!("{value}/32")))
                .or_else(|| Subnet::parse(&format!("{value}/128")))
                .is_some_and(|s| pools.iter().any(|p| p.contains(&s)));
            if !inside {
                return Err(forbid(format!(
                    "IPAM.Config[].{field} `{value}` is not allowed: {pools_text}"
                )));
            }
        }
        if c.Subnet.as_deref().unwrap_or("").is_empty() && (set(&c.IPRange) || set(&c.Gateway)) {
            return Err(forbid(format!(
                "IPAM.Config[] needs a Subnet with its IPRange or Gateway: {pools_text}"
            )));
        }
        if c.AuxiliaryAddresses.as_ref().is_some_and(|a| !a.is_empty()) {
            return Err(forbid(
                "IPAM.Config[].AuxiliaryAddresses are not allowed: drop --aux-address",
            ));
        }
    }
    Ok(())
}

pub(super) fn network_connect(v: &NetworkConnect, checks: &mut Vec<Check>) -> Result<(), Refusal> {
    match v.Container.as_deref() {
        Some(c) if !c.is_empty() => checks.push(Check::Referenced {
            kind: Kind::Container,
            name: c.to_owned(),
            field: "Container".to_owned(),
        }),
        _ => return Err(Refusal::BadRequest("bosun: Container is missing".into())),
    }
    if let Some(ep) = &v.EndpointConfig {
        endpoint(ep, "EndpointConfig", checks)?;
    }
    Ok(())
}

pub(super) fn volume_create(
    mut v: VolumeCreate,
    scope: &Scope,
    checks: &mut Vec<Check>,
) -> Result<VolumeCreate, Refusal> {
    let driver = v.Driver.as_deref().unwrap_or("");
    if !matches!(driver, "" | "local") {
        return Err(forbid(format!(
            "Driver `{driver}` is not allowed for a volume: only local volumes are. Drop --driver"
        )));
    }
    if v.DriverOpts.as_ref().is_some_and(|o| !o.is_empty()) {
        return Err(forbid(
            "DriverOpts are not allowed for a volume: `-o type=none,o=bind,device=PATH` would mount a host path. Create the volume without options and fill it with `docker cp`",
        ));
    }
    if let Some(name) = v.Name.as_deref().filter(|n| !n.is_empty()) {
        checks.push(Check::FreeOrOwned {
            kind: Kind::Volume,
            name: name.to_owned(),
            field: "Name".to_owned(),
        });
    }
    v.Labels = labelled(v.Labels.take(), scope);
    Ok(v)
}

pub(super) fn bind_message(field: &str, src: &str) -> String {
    let sock = if src.contains("docker.sock") {
        " (the engine's socket would give the container root on the host)"
    } else {
        ""
    };
    format!(
        "{field} `{src}` is not allowed: the job's engine is remote, so the job's own files and host paths cannot be bind-mounted{sock}. Use a named volume (docker volume create, then docker cp into a container using it) or docker cp"
    )
}

pub(super) fn volume_source(
    src: &str,
    field: &str,
    checks: &mut Vec<Check>,
    ensure: &mut Vec<String>,
) {
    checks.push(Check::FreeOrOwned {
        kind: Kind::Volume,
        name: src.to_owned(),
        field: field.to_owned(),
    });
    if !ensure.iter().any(|e| e == src) {
        ensure.push(src.to_owned());
    }
}

/// Cap the container's resources at the job's limits.
pub(super) fn apply_limits(host: &mut HostConfig, limits: &Limits) {
    let cap = |asked: Option<i64>, max: i64| {
        let asked = asked.unwrap_or(0);
        Some(if asked > 0 { asked.min(max) } else { max })
    };
    if let Some(max) = limits.memory {
        host.Memory = cap(host.Memory, max);
        host.MemorySwap = host.Memory;
    }
    if let Some(max) = limits.nano_cpus {
        // Quota/period and NanoCpus cannot both be set: fold a quota into NanoCpus.
        let quota = host.CpuQuota.take().unwrap_or(0);
        let period = host.CpuPeriod.take().unwrap_or(0);
        if quota > 0 {
            let p = if period > 0 { period } else { 100_000 };
            host.NanoCpus = Some(quota.saturating_mul(1_000_000_000) / p);
        }
        host.NanoCpus = cap(host.NanoCpus, max);
    }
    if let Some(max) = limits.pids {
        host.PidsLimit = cap(host.PidsLimit, max);
    }
}

/// `/build`: labels on the image, the classic builder only, no host network, tags that are
/// free or the job's own, the job's limits on the build's containers.
pub(super) fn build_query(
    pairs: &mut Vec<(String, String)>,
    scope: &Scope,
    checks: &mut Vec<Check>,
) -> Result<(), Refusal> {
    for (k, v) in pairs.iter() {
        match k.as_str() {
            "networkmode" if !BUILTIN_NETWORKS.contains(&v.as_str()) => {
                return Err(forbid(format!(
                    "networkmode={v} is not allowed for a build: the host's network belongs to the agent and other jobs. Drop --network"
                )))
            }
            "securityopt" if !v.is_empty() => {
                return Err(forbid(
                    "securityopt is not allowed for a build: the build's containers keep the engine's seccomp and AppArmor profiles. Drop --security-opt",
                ))
            }
            "cgroupparent" if !v.is_empty() => {
                return Err(forbid("cgroupparent is not allowed for a build; drop --cgroup-parent"))
            }
            "remote" if !v.is_empty() => {
                return Err(forbid(
                    "remote is not allowed for a build: the engine would fetch the context itself. Send the context from the job (docker build DIR)",
                ))
            }
            "version" if v == "2" => {
                return Err(forbid(
                    "version=2 (BuildKit) is not available through the job's engine; build with the classic builder (DOCKER_BUILDKIT=0)",
                ))
            }
            "session" | "outputs" if !v.is_empty() => {
                return Err(forbid(format!(
                    "{k} is BuildKit's and not available through the job's engine; build with the classic builder (DOCKER_BUILDKIT=0)"
                )))
            }
            "isolation" if !v.is_empty() && v != "default" => {
                return Err(forbid("isolation is not allowed for a build"))
            }
            "t" => checks.push(Check::FreeOrOwned {
                kind: Kind::Image,
                name: image_ref(v, ""),
                field: "t (the build's tag)".to_owned(),
            }),
            _ => {}
        }
    }
    let mut labels: Dict<String> = match single(pairs, "labels")? {
        Some(text) if !text.is_empty() => model::decode(text.as_bytes())
            .map_err(|e| Refusal::BadRequest(format!("bosun: labels: {e}")))?,
        _ => Dict::default(),
    };
    for (k, v) in scope.labels() {
        labels.0.insert(k, v);
    }
    let limited = scope.limits.memory.is_some() || scope.limits.nano_cpus.is_some();
    pairs.retain(|(k, _)| {
        k != "labels"
            && !(limited
                && matches!(
                    k.as_str(),
                    "memory" | "memswap" | "cpuquota" | "cpuperiod" | "cpusetcpus"
                ))
    });
    pairs.push((
        "labels".to_owned(),
        String::from_utf8(model::encode(&labels)).unwrap_or_default(),
    ));
    if let Some(mem) = scope.limits.memory {
        pairs.push(("memory".to_owned(), mem.to_string()));
        pairs.push(("memswap".to_owned(), mem.to_string()));
    }
    if let Some(n) = scope.limits.nano_cpus {
        pairs.push(("cpuperiod".to_owned(), "100000".to_owned()));
        pairs.push(("cpuquota".to_owned(), (n / 10_000).to_string()));
    }
    Ok(())
}

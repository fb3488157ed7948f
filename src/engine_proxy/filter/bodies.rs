//! The request bodies and queries the filter rewrites: container create (host access,
//! namespaces, binds, limits), exec, network and volume create, and build queries.

use super::*;

pub(super) const EXEC_KEYS: &[&str] = &[
    "AttachStdin",
    "AttachStdout",
    "AttachStderr",
    "DetachKeys",
    "Tty",
    "Env",
    "Cmd",
    "Privileged",
    "User",
    "WorkingDir",
    "ConsoleSize",
];
pub(super) const NETWORK_KEYS: &[&str] = &[
    "Name",
    "CheckDuplicate",
    "Driver",
    "Internal",
    "Attachable",
    "Ingress",
    "IPAM",
    "EnableIPv6",
    "Options",
    "Labels",
    "Scope",
    "ConfigOnly",
    "ConfigFrom",
];
pub(super) const VOLUME_KEYS: &[&str] = &[
    "Name",
    "Driver",
    "DriverOpts",
    "Labels",
    "ClusterVolumeSpec",
];
pub(super) const CREATE_KEYS: &[&str] = &[
    "Hostname",
    "Domainname",
    "User",
    "AttachStdin",
    "AttachStdout",
    "AttachStderr",
    "ExposedPorts",
    "Tty",
    "OpenStdin",
    "StdinOnce",
    "Env",
    "Cmd",
    "Healthcheck",
    "ArgsEscaped",
    "Image",
    "Volumes",
    "WorkingDir",
    "Entrypoint",
    "NetworkDisabled",
    "MacAddress",
    "OnBuild",
    "Labels",
    "StopSignal",
    "StopTimeout",
    "Shell",
    "HostConfig",
    "NetworkingConfig",
];
/// Host config fields a job may set as it likes (resource fields are capped after).
pub(super) const HOST_SAFE: &[&str] = &[
    "Binds",
    "ContainerIDFile",
    "LogConfig",
    "NetworkMode",
    "PortBindings",
    "RestartPolicy",
    "AutoRemove",
    "VolumeDriver",
    "VolumesFrom",
    "Mounts",
    "CapAdd",
    "CapDrop",
    "CgroupnsMode",
    "Dns",
    "DnsOptions",
    "DnsSearch",
    "ExtraHosts",
    "GroupAdd",
    "IpcMode",
    "Cgroup",
    "Links",
    "OomScoreAdj",
    "PidMode",
    "Privileged",
    "PublishAllPorts",
    "ReadonlyRootfs",
    "SecurityOpt",
    "StorageOpt",
    "Tmpfs",
    "UTSMode",
    "UsernsMode",
    "ShmSize",
    "Sysctls",
    "Runtime",
    "ConsoleSize",
    "Isolation",
    "CpuShares",
    "Memory",
    "NanoCpus",
    "CgroupParent",
    "BlkioWeight",
    "BlkioWeightDevice",
    "BlkioDeviceReadBps",
    "BlkioDeviceWriteBps",
    "BlkioDeviceReadIOps",
    "BlkioDeviceWriteIOps",
    "CpuPeriod",
    "CpuQuota",
    "CpuRealtimePeriod",
    "CpuRealtimeRuntime",
    "CpusetCpus",
    "CpusetMems",
    "Devices",
    "DeviceCgroupRules",
    "DeviceRequests",
    "KernelMemory",
    "KernelMemoryTCP",
    "MemoryReservation",
    "MemorySwap",
    "MemorySwappiness",
    "OomKillDisable",
    "Init",
    "PidsLimit",
    "Ulimits",
    "CpuCount",
    "CpuPercent",
    "IOMaximumIOps",
    "IOMaximumBandwidth",
    "MaskedPaths",
    "ReadonlyPaths",
];

/// Go's JSON decoder matches field names case-insensitively (and folds a few non-ASCII
/// letters): a key that is a known field in another spelling, or not ASCII, could slip past
/// a check on the exact name. Refuse those; unknown ASCII keys are ignored by the engine.
pub(super) fn check_keys(m: &Map<String, Value>, known: &[&str], at: &str) -> Result<(), Refusal> {
    for k in m.keys() {
        if !k.is_ascii() {
            return Err(Refusal::BadRequest(format!(
                "bosun: field name {at}{k:?} is not ASCII"
            )));
        }
        if let Some(exact) = known
            .iter()
            .find(|f| f.eq_ignore_ascii_case(k) && **f != k.as_str())
        {
            return Err(Refusal::BadRequest(format!(
                "bosun: field {at}{k} must be spelled {at}{exact}"
            )));
        }
    }
    Ok(())
}

/// Keep only the fields the filter knows (and so has checked): the engine sees nothing else.
pub(super) fn retain_known(m: &mut Map<String, Value>, known: &[&str]) {
    m.retain(|k, _| known.contains(&k.as_str()));
}

pub(super) fn inject_labels(
    m: &mut Map<String, Value>,
    key: &str,
    scope: &Scope,
) -> Result<(), Refusal> {
    let labels = m
        .entry(key.to_owned())
        .or_insert_with(|| Value::Object(Map::new()));
    if labels.is_null() {
        *labels = Value::Object(Map::new());
    }
    let Value::Object(l) = labels else {
        return Err(Refusal::BadRequest(format!(
            "bosun: {key} must be an object"
        )));
    };
    for (k, v) in scope.labels() {
        l.insert(k, Value::String(v));
    }
    Ok(())
}

pub(super) fn str_of<'a>(m: &'a Map<String, Value>, key: &str) -> &'a str {
    m.get(key).and_then(Value::as_str).unwrap_or("")
}

/// `container:<id>` modes must name one of the job's containers; `host` is refused.
pub(super) fn namespace_mode(
    host: &Map<String, Value>,
    field: &str,
    allowed: &[&str],
    checks: &mut Vec<Check>,
    what: &str,
) -> Result<(), Refusal> {
    let mode = str_of(host, field);
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

pub(super) fn container_create(
    mut v: Map<String, Value>,
    scope: &Scope,
    checks: &mut Vec<Check>,
    ensure_volumes: &mut Vec<String>,
) -> Result<Map<String, Value>, Refusal> {
    check_keys(&v, CREATE_KEYS, "")?;
    inject_labels(&mut v, "Labels", scope)?;
    let mut host = match v.remove("HostConfig") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(h)) => h,
        Some(_) => {
            return Err(Refusal::BadRequest(
                "bosun: HostConfig must be an object".into(),
            ))
        }
    };
    check_keys(&host, HOST_SAFE, "HostConfig.")?;

    if truthy(host.get("Privileged")) {
        return Err(forbid(
            "HostConfig.Privileged is not allowed: a privileged container is root on the host. Drop --privileged (the job's engine runs containers unprivileged)",
        ));
    }
    for (field, what) in [
        (
            "CapAdd",
            "added capabilities loosen the container's confinement; drop --cap-add",
        ),
        (
            "Devices",
            "host devices are not available to a job; drop --device",
        ),
        (
            "DeviceRequests",
            "host devices (GPUs) are not available to a job; drop --gpus",
        ),
        (
            "DeviceCgroupRules",
            "device access is not available to a job; drop --device-cgroup-rule",
        ),
        (
            "Sysctls",
            "kernel parameters are not a job's to set; drop --sysctl",
        ),
        (
            "CgroupParent",
            "the cgroup parent is the agent's; drop --cgroup-parent",
        ),
        (
            "VolumeDriver",
            "only local volumes are available; drop --volume-driver",
        ),
        (
            "StorageOpt",
            "storage options are the agent's; drop --storage-opt",
        ),
        (
            "OomKillDisable",
            "the out-of-memory killer protects the host; drop --oom-kill-disable",
        ),
        (
            "KernelMemory",
            "kernel memory limits are the agent's; drop --kernel-memory",
        ),
    ] {
        if truthy(host.get(field)) {
            return Err(forbid(format!("HostConfig.{field} is not allowed: {what}")));
        }
    }
    for field in ["MaskedPaths", "ReadonlyPaths"] {
        if host.get(field).is_some_and(|v| !v.is_null()) {
            return Err(forbid(format!(
                "HostConfig.{field} is not allowed: the /proc paths the engine masks stay masked; drop --security-opt systempaths=unconfined"
            )));
        }
    }
    if let Some(opts) = host.get("SecurityOpt").and_then(Value::as_array) {
        for o in opts {
            let s = o.as_str().unwrap_or("");
            let ok = matches!(
                s,
                "no-new-privileges" | "no-new-privileges:true" | "no-new-privileges=true"
            );
            if !ok {
                return Err(forbid(format!(
                    "HostConfig.SecurityOpt `{s}` is not allowed: only no-new-privileges may be set (seccomp, AppArmor and SELinux profiles stay the engine's defaults). Drop --security-opt"
                )));
            }
        }
    }
    let runtime = str_of(&host, "Runtime");
    if !matches!(runtime, "" | "runc") {
        return Err(forbid(format!(
            "HostConfig.Runtime `{runtime}` is not allowed; drop --runtime"
        )));
    }

    // Namespaces.
    let net = str_of(&host, "NetworkMode").to_owned();
    match net.as_str() {
        "" | "default" | "bridge" | "none" => {}
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
        &host,
        "PidMode",
        &[],
        checks,
        "the host's processes are not a job's to see",
    )?;
    namespace_mode(
        &host,
        "IpcMode",
        &["private", "shareable", "none"],
        checks,
        "the host's IPC namespace is not a job's",
    )?;
    for field in ["UsernsMode", "UTSMode", "CgroupnsMode", "Cgroup"] {
        let mode = str_of(&host, field);
        let ok = match field {
            "CgroupnsMode" => matches!(mode, "" | "private"),
            _ => mode.is_empty(),
        };
        if !ok {
            return Err(forbid(format!(
                "HostConfig.{field}={mode} is not allowed: host namespaces are not a job's. Drop the option"
            )));
        }
    }

    // Storage: named volumes of the job only.
    if let Some(binds) = host.get("Binds").and_then(Value::as_array) {
        for b in binds {
            let s = b.as_str().unwrap_or("");
            let src = s.split(':').next().unwrap_or("");
            if src.is_empty() || !s.contains(':') {
                continue; // an anonymous volume (`-v /data`)
            }
            if src.starts_with('/') || src.starts_with('.') || src.starts_with('~') {
                return Err(forbid(bind_message("HostConfig.Binds", src)));
            }
            volume_source(src, "HostConfig.Binds", checks, ensure_volumes);
        }
    }
    if let Some(mounts) = host.get("Mounts").and_then(Value::as_array) {
        for m in mounts {
            let Some(m) = m.as_object() else {
                return Err(Refusal::BadRequest(
                    "bosun: HostConfig.Mounts entries must be objects".into(),
                ));
            };
            check_keys(
                m,
                &[
                    "Target",
                    "Source",
                    "Type",
                    "ReadOnly",
                    "Consistency",
                    "BindOptions",
                    "VolumeOptions",
                    "TmpfsOptions",
                ],
                "HostConfig.Mounts[].",
            )?;
            let src = str_of(m, "Source");
            match str_of(m, "Type") {
                "tmpfs" => {}
                "volume" => {
                    if m.get("VolumeOptions")
                        .and_then(|o| o.get("DriverConfig"))
                        .is_some_and(|d| !d.is_null())
                    {
                        return Err(forbid(
                            "HostConfig.Mounts[].VolumeOptions.DriverConfig is not allowed: volume driver options could mount host paths",
                        ));
                    }
                    if !src.is_empty() {
                        volume_source(src, "HostConfig.Mounts[].Source", checks, ensure_volumes);
                    }
                }
                other => {
                    return Err(forbid(if other == "bind" {
                        bind_message("HostConfig.Mounts[].Type=bind", src)
                    } else {
                        format!("HostConfig.Mounts[].Type={other} is not allowed: use volume or tmpfs mounts")
                    }))
                }
            }
        }
    }
    if let Some(from) = host.get("VolumesFrom").and_then(Value::as_array) {
        for f in from {
            let c = f.as_str().unwrap_or("").split(':').next().unwrap_or("");
            checks.push(Check::Referenced {
                kind: Kind::Container,
                name: c.to_owned(),
                field: "HostConfig.VolumesFrom".to_owned(),
            });
        }
    }
    if let Some(links) = host.get("Links").and_then(Value::as_array) {
        for l in links {
            let c = l.as_str().unwrap_or("").split(':').next().unwrap_or("");
            checks.push(Check::Referenced {
                kind: Kind::Container,
                name: c.trim_start_matches('/').to_owned(),
                field: "HostConfig.Links".to_owned(),
            });
        }
    }
    if let Some(nc) = v.get("NetworkingConfig") {
        if let Some(eps) = nc.get("EndpointsConfig").and_then(Value::as_object) {
            for name in eps.keys() {
                match name.as_str() {
                    "bridge" | "default" | "none" => {}
                    "host" => {
                        return Err(forbid(
                            "NetworkingConfig.EndpointsConfig.host is not allowed: the host's network belongs to the agent and other jobs",
                        ))
                    }
                    n if n == net => {}
                    n => checks.push(Check::Referenced {
                        kind: Kind::Network,
                        name: n.to_owned(),
                        field: "NetworkingConfig.EndpointsConfig".to_owned(),
                    }),
                }
            }
        }
    }

    apply_limits(&mut host, &scope.limits);
    retain_known(&mut host, HOST_SAFE);
    retain_known(&mut v, CREATE_KEYS);
    v.insert("HostConfig".to_owned(), Value::Object(host));
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
pub(super) fn apply_limits(host: &mut Map<String, Value>, limits: &Limits) {
    let cap = |host: &mut Map<String, Value>, key: &str, max: i64| {
        let asked = host.get(key).and_then(Value::as_i64).unwrap_or(0);
        let v = if asked > 0 { asked.min(max) } else { max };
        host.insert(key.to_owned(), Value::from(v));
    };
    if let Some(max) = limits.memory {
        cap(host, "Memory", max);
        let mem = host.get("Memory").and_then(Value::as_i64).unwrap_or(max);
        host.insert("MemorySwap".to_owned(), Value::from(mem));
    }
    if let Some(max) = limits.nano_cpus {
        // Quota/period and NanoCpus cannot both be set: fold a quota into NanoCpus.
        let quota = host.get("CpuQuota").and_then(Value::as_i64).unwrap_or(0);
        let period = host.get("CpuPeriod").and_then(Value::as_i64).unwrap_or(0);
        if quota > 0 {
            let p = if period > 0 { period } else { 100_000 };
            let n = quota.saturating_mul(1_000_000_000) / p;
            host.insert("NanoCpus".to_owned(), Value::from(n));
        }
        host.remove("CpuQuota");
        host.remove("CpuPeriod");
        cap(host, "NanoCpus", max);
    }
    if let Some(max) = limits.pids {
        cap(host, "PidsLimit", max);
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
            "networkmode" if !matches!(v.as_str(), "" | "default" | "bridge" | "none") => {
                return Err(forbid(format!(
                    "networkmode={v} is not allowed for a build: the host's network belongs to the agent and other jobs. Drop --network"
                )))
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
    let mut labels: Map<String, Value> = match single(pairs, "labels")? {
        Some(text) if !text.is_empty() => match serde_json::from_str(&text) {
            Ok(Value::Object(m)) => m,
            _ => {
                return Err(Refusal::BadRequest(
                    "bosun: labels must be a JSON object".into(),
                ))
            }
        },
        _ => Map::new(),
    };
    for (k, v) in scope.labels() {
        labels.insert(k, Value::String(v));
    }
    pairs.retain(|(k, _)| {
        !matches!(
            k.as_str(),
            "labels" | "memory" | "memswap" | "cpuquota" | "cpuperiod" | "cpusetcpus"
        ) || (k != "labels" && scope.limits.memory.is_none() && scope.limits.nano_cpus.is_none())
    });
    pairs.push((
        "labels".to_owned(),
        serde_json::to_string(&labels).unwrap_or_default(),
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

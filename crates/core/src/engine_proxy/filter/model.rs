//! The request bodies a job may send its engine, as typed values: every field the filter
//! allows, at every depth, in the exact spelling the engine's API documents.
//!
//! The engine decodes bodies with Go's `encoding/json`, which matches a key to a struct field
//! case-insensitively (and folds `ſ` to `s`, `K` to `k`), lets the last of two equal keys win
//! and ignores keys it does not know. A filter that reads a body one way while the engine
//! reads it another is a filter in name only, so these types are stricter than both: a key
//! that is not exactly a field's name is refused (whatever its case), a key given twice is
//! refused (in structs and in maps), and the body the engine receives is the re-encoding of
//! the value decoded here, never the client's bytes.
//!
//! The fields are API 1.41's and those that newer docker clients send whatever version they
//! speak (`GwPriority`, `DNSNames`, …): an engine of 1.41 ignores them, a newer one reads them.

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// The shape of a model type, as the property test generates and decodes it the way Go would.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Shape {
    Str,
    Bool,
    Int,
    /// A list of the inner shape.
    List(Box<Shape>),
    /// A JSON object read as a map: keys are exact, any key allowed.
    Map(Box<Shape>),
    /// A Go struct: its fields, by their exact names.
    Struct(Vec<(&'static str, Shape)>),
    /// A string or a list of strings (Go's `strslice.StrSlice`).
    StrOrList,
}

/// Types that say their [`Shape`].
pub trait Shaped {
    fn shape() -> Shape;
}

impl Shaped for String {
    fn shape() -> Shape {
        Shape::Str
    }
}
impl Shaped for bool {
    fn shape() -> Shape {
        Shape::Bool
    }
}
macro_rules! int_shape {
    ($($t:ty),*) => {$(impl Shaped for $t { fn shape() -> Shape { Shape::Int } })*};
}
int_shape!(i64, u64, u32, u16);
impl<T: Shaped> Shaped for Vec<T> {
    fn shape() -> Shape {
        Shape::List(Box::new(T::shape()))
    }
}
impl Shaped for [u64; 2] {
    fn shape() -> Shape {
        Shape::List(Box::new(Shape::Int))
    }
}

/// A JSON object read as a map with exact keys (as Go reads a `map[string]T`); a key given
/// twice is refused rather than resolved in favour of one of them.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
#[serde(transparent)]
pub struct Dict<V>(pub BTreeMap<String, V>);

impl<V> Dict<V> {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl<V: Shaped> Shaped for Dict<V> {
    fn shape() -> Shape {
        Shape::Map(Box::new(V::shape()))
    }
}

impl<'de, V: Deserialize<'de>> Deserialize<'de> for Dict<V> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V_<V>(std::marker::PhantomData<V>);
        impl<'de, V: Deserialize<'de>> Visitor<'de> for V_<V> {
            type Value = Dict<V>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Self::Value, A::Error> {
                let mut out = BTreeMap::new();
                while let Some(k) = m.next_key::<String>()? {
                    if out.contains_key(&k) {
                        return Err(de::Error::custom(format!("key `{k}` is given twice")));
                    }
                    let v = m.next_value()?;
                    out.insert(k, v);
                }
                Ok(Dict(out))
            }
        }
        d.deserialize_map(V_(std::marker::PhantomData))
    }
}

/// Go's `strslice.StrSlice`: a string or a list of strings, sent on as a list.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
#[serde(transparent)]
pub struct StrSlice(pub Vec<String>);

impl Shaped for StrSlice {
    fn shape() -> Shape {
        Shape::StrOrList
    }
}

impl<'de> Deserialize<'de> for StrSlice {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V_;
        impl<'de> Visitor<'de> for V_ {
            type Value = StrSlice;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string or a list of strings")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<StrSlice, E> {
                Ok(StrSlice(vec![s.to_owned()]))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<StrSlice, A::Error> {
                let mut out = Vec::new();
                while let Some(s) = a.next_element::<String>()? {
                    out.push(s);
                }
                Ok(StrSlice(out))
            }
        }
        d.deserialize_any(V_)
    }
}

/// Go's `struct{}` (the values of `ExposedPorts` and `Volumes`): only `{}`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Empty {}

impl Shaped for Empty {
    fn shape() -> Shape {
        Shape::Struct(Vec::new())
    }
}

/// A struct of the engine's API: each field optional (absent and `null` are the same to the
/// engine), unknown fields refused, the field names exactly the API's.
macro_rules! model {
    ($(#[$m:meta])* $name:ident { $($field:ident : $ty:ty),* $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
        #[serde(deny_unknown_fields)]
        #[allow(non_snake_case)]
        pub struct $name {
            $(
                #[serde(default, skip_serializing_if = "Option::is_none")]
                pub $field: Option<$ty>,
            )*
        }
        impl Shaped for $name {
            fn shape() -> Shape {
                Shape::Struct(vec![$((stringify!($field), <$ty as Shaped>::shape())),*])
            }
        }
    };
}

model!(
    /// `POST /containers/create`: Go's `ContainerConfigWrapper` (the container's `Config`
    /// inline, then its `HostConfig` and `NetworkingConfig`).
    ContainerCreate {
        Hostname: String,
        Domainname: String,
        User: String,
        AttachStdin: bool,
        AttachStdout: bool,
        AttachStderr: bool,
        ExposedPorts: Dict<Empty>,
        Tty: bool,
        OpenStdin: bool,
        StdinOnce: bool,
        Env: Vec<String>,
        Cmd: StrSlice,
        Healthcheck: HealthConfig,
        ArgsEscaped: bool,
        Image: String,
        Volumes: Dict<Empty>,
        WorkingDir: String,
        Entrypoint: StrSlice,
        NetworkDisabled: bool,
        MacAddress: String,
        OnBuild: Vec<String>,
        Labels: Dict<String>,
        StopSignal: String,
        StopTimeout: i64,
        Shell: StrSlice,
        HostConfig: HostConfig,
        NetworkingConfig: NetworkingConfig,
    }
);

model!(HealthConfig {
    Test: Vec<String>,
    Interval: i64,
    Timeout: i64,
    StartPeriod: i64,
    StartInterval: i64,
    Retries: i64,
});

model!(
    /// Go's `HostConfig` with its `Resources` inline.
    HostConfig {
        Binds: Vec<String>,
        ContainerIDFile: String,
        LogConfig: LogConfig,
        NetworkMode: String,
        PortBindings: Dict<Vec<PortBinding>>,
        RestartPolicy: RestartPolicy,
        AutoRemove: bool,
        VolumeDriver: String,
        VolumesFrom: Vec<String>,
        CapAdd: StrSlice,
        CapDrop: StrSlice,
        CgroupnsMode: String,
        Dns: Vec<String>,
        DnsOptions: Vec<String>,
        DnsSearch: Vec<String>,
        ExtraHosts: Vec<String>,
        GroupAdd: Vec<String>,
        IpcMode: String,
        Cgroup: String,
        Links: Vec<String>,
        OomScoreAdj: i64,
        PidMode: String,
        Privileged: bool,
        PublishAllPorts: bool,
        ReadonlyRootfs: bool,
        SecurityOpt: Vec<String>,
        StorageOpt: Dict<String>,
        Tmpfs: Dict<String>,
        UTSMode: String,
        UsernsMode: String,
        ShmSize: i64,
        Sysctls: Dict<String>,
        Runtime: String,
        ConsoleSize: [u64; 2],
        Isolation: String,
        CpuShares: i64,
        Memory: i64,
        NanoCpus: i64,
        CgroupParent: String,
        BlkioWeight: u16,
        BlkioWeightDevice: Vec<WeightDevice>,
        BlkioDeviceReadBps: Vec<ThrottleDevice>,
        BlkioDeviceWriteBps: Vec<ThrottleDevice>,
        BlkioDeviceReadIOps: Vec<ThrottleDevice>,
        BlkioDeviceWriteIOps: Vec<ThrottleDevice>,
        CpuPeriod: i64,
        CpuQuota: i64,
        CpuRealtimePeriod: i64,
        CpuRealtimeRuntime: i64,
        CpusetCpus: String,
        CpusetMems: String,
        Devices: Vec<DeviceMapping>,
        DeviceCgroupRules: Vec<String>,
        DeviceRequests: Vec<DeviceRequest>,
        KernelMemory: i64,
        KernelMemoryTCP: i64,
        MemoryReservation: i64,
        MemorySwap: i64,
        MemorySwappiness: i64,
        OomKillDisable: bool,
        PidsLimit: i64,
        Ulimits: Vec<Ulimit>,
        CpuCount: i64,
        CpuPercent: i64,
        IOMaximumIOps: u64,
        IOMaximumBandwidth: u64,
        Mounts: Vec<Mount>,
        MaskedPaths: Vec<String>,
        ReadonlyPaths: Vec<String>,
        Init: bool,
        Annotations: Dict<String>,
    }
);

model!(LogConfig {
    Type: String,
    Config: Dict<String>,
});

model!(PortBinding {
    HostIp: String,
    HostPort: String,
});

model!(RestartPolicy {
    Name: String,
    MaximumRetryCount: i64,
});

model!(WeightDevice {
    Path: String,
    Weight: u16,
});

model!(ThrottleDevice {
    Path: String,
    Rate: u64,
});

model!(DeviceMapping {
    PathOnHost: String,
    PathInContainer: String,
    CgroupPermissions: String,
});

model!(DeviceRequest {
    Driver: String,
    Count: i64,
    DeviceIDs: Vec<String>,
    Capabilities: Vec<Vec<String>>,
    Options: Dict<String>,
});

model!(Ulimit {
    Name: String,
    Hard: i64,
    Soft: i64,
});

model!(Mount {
    Type: String,
    Source: String,
    Target: String,
    ReadOnly: bool,
    Consistency: String,
    BindOptions: BindOptions,
    VolumeOptions: VolumeOptions,
    TmpfsOptions: TmpfsOptions,
});

model!(BindOptions {
    Propagation: String,
    NonRecursive: bool,
    CreateMountpoint: bool,
    ReadOnlyNonRecursive: bool,
    ReadOnlyForceRecursive: bool,
});

model!(VolumeOptions {
    NoCopy: bool,
    Labels: Dict<String>,
    Subpath: String,
    DriverConfig: VolumeDriver,
});

model!(VolumeDriver {
    Name: String,
    Options: Dict<String>,
});

model!(TmpfsOptions {
    SizeBytes: i64,
    Mode: u32,
    Options: Vec<Vec<String>>,
});

model!(NetworkingConfig {
    EndpointsConfig: Dict<EndpointSettings>,
});

model!(
    /// A container's settings on one network (create's `EndpointsConfig` values, connect's
    /// `EndpointConfig`).
    EndpointSettings {
        IPAMConfig: EndpointIpam,
        Links: Vec<String>,
        Aliases: Vec<String>,
        NetworkID: String,
        EndpointID: String,
        Gateway: String,
        IPAddress: String,
        IPPrefixLen: i64,
        IPv6Gateway: String,
        GlobalIPv6Address: String,
        GlobalIPv6PrefixLen: i64,
        MacAddress: String,
        DriverOpts: Dict<String>,
        GwPriority: i64,
        DNSNames: Vec<String>,
    }
);

model!(EndpointIpam {
    IPv4Address: String,
    IPv6Address: String,
    LinkLocalIPs: Vec<String>,
});

model!(
    /// `POST /containers/{id}/exec`.
    ExecCreate {
        User: String,
        Privileged: bool,
        Tty: bool,
        ConsoleSize: [u64; 2],
        AttachStdin: bool,
        AttachStderr: bool,
        AttachStdout: bool,
        Detach: bool,
        DetachKeys: String,
        Env: Vec<String>,
        WorkingDir: String,
        Cmd: StrSlice,
    }
);

model!(
    /// `POST /exec/{id}/start`.
    ExecStart {
        Detach: bool,
        Tty: bool,
        ConsoleSize: [u64; 2],
    }
);

model!(
    /// `POST /networks/create`.
    NetworkCreate {
        Name: String,
        CheckDuplicate: bool,
        Driver: String,
        Scope: String,
        EnableIPv4: bool,
        EnableIPv6: bool,
        IPAM: Ipam,
        Internal: bool,
        Attachable: bool,
        Ingress: bool,
        ConfigOnly: bool,
        ConfigFrom: ConfigReference,
        Options: Dict<String>,
        Labels: Dict<String>,
    }
);

model!(Ipam {
    Driver: String,
    Options: Dict<String>,
    Config: Vec<IpamConfig>,
});

model!(IpamConfig {
    Subnet: String,
    IPRange: String,
    Gateway: String,
    AuxiliaryAddresses: Dict<String>,
});

model!(ConfigReference { Network: String });

model!(
    /// `POST /networks/{id}/connect`.
    NetworkConnect {
        Container: String,
        EndpointConfig: EndpointSettings,
    }
);

model!(
    /// `POST /networks/{id}/disconnect`.
    NetworkDisconnect {
        Container: String,
        Force: bool,
    }
);

model!(
    /// `POST /volumes/create`.
    VolumeCreate {
        Name: String,
        Driver: String,
        DriverOpts: Dict<String>,
        Labels: Dict<String>,
    }
);

/// Why a body was not accepted: where in it, and what.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct DecodeError {
    pub message: String,
}

/// Decode a body into `T`, refusing anything the type does not name exactly. An empty body is
/// `T::default()`. The error names the path to the offending key (`HostConfig.Mounts[0]…`) and,
/// for a key that is a field in another spelling, the spelling to use.
pub fn decode<T>(body: &[u8]) -> Result<T, DecodeError>
where
    T: for<'de> Deserialize<'de> + Default,
{
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    let value: Option<T> = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let at = e.path().to_string();
        let inner = e.into_inner().to_string();
        let hint = misspelt_hint(&inner);
        let at = if at == "." {
            String::new()
        } else {
            format!("{at}: ")
        };
        DecodeError {
            message: format!("{at}{inner}{hint}"),
        }
    })?;
    de.end().map_err(|e| DecodeError {
        message: format!("{e} (after the body's JSON value)"),
    })?;
    Ok(value.unwrap_or_default())
}

/// serde says "unknown field `hostconfig`, expected one of `Hostname`, …": when one of the
/// expected names is the unknown one in another case, say so plainly.
fn misspelt_hint(message: &str) -> String {
    let Some(rest) = message.strip_prefix("unknown field `") else {
        return String::new();
    };
    let Some((key, expected)) = rest.split_once('`') else {
        return String::new();
    };
    let folded: String = key
        .chars()
        .map(|c| match c {
            '\u{17F}' => 's',
            '\u{212A}' => 'k',
            c => c,
        })
        .collect();
    expected
        .split('`')
        .skip(1)
        .step_by(2)
        .find(|name| name.eq_ignore_ascii_case(&folded))
        .map(|name| format!(" (the engine's API spells it `{name}`, exactly)"))
        .unwrap_or_default()
}

/// The bytes sent to the engine for a checked value.
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_in_another_case_or_folded_is_refused_with_its_spelling() {
        let e = decode::<ContainerCreate>(br#"{"hostconfig":{}}"#).unwrap_err();
        assert!(e.message.contains("spells it `HostConfig`"), "{e}");
        let e = decode::<ContainerCreate>(
            br#"{"HostConfig":{"Mounts":[{"Type":"volume","VolumeOptions":{"driverconfig":{}}}]}}"#,
        )
        .unwrap_err();
        assert!(
            e.message.starts_with("HostConfig.Mounts[0].VolumeOptions"),
            "{e}"
        );
        assert!(e.message.contains("`DriverConfig`"), "{e}");
        // Go folds the long s to s: "Mountſ" would be Mounts to the engine.
        let e = decode::<HostConfig>("{\"Mount\u{17F}\":[]}".as_bytes()).unwrap_err();
        assert!(e.message.contains("spells it `Mounts`"), "{e}");
    }

    #[test]
    fn a_key_given_twice_is_refused_in_structs_and_maps() {
        let e = decode::<HostConfig>(br#"{"Privileged":false,"Privileged":true}"#).unwrap_err();
        assert!(e.message.contains("duplicate field `Privileged`"), "{e}");
        let e = decode::<ContainerCreate>(br#"{"Labels":{"a":"1","a":"2"}}"#).unwrap_err();
        assert!(e.message.contains("key `a` is given twice"), "{e}");
    }

    #[test]
    fn unknown_fields_and_trailing_bytes_are_refused_and_null_is_absent() {
        let e = decode::<VolumeCreate>(br#"{"Name":"x","ClusterVolumeSpec":{}}"#).unwrap_err();
        assert!(
            e.message.contains("unknown field `ClusterVolumeSpec`"),
            "{e}"
        );
        assert!(decode::<VolumeCreate>(br#"{"Name":"x"} {"Name":"y"}"#).is_err());
        let v: HostConfig = decode(br#"{"Binds":null,"Privileged":null}"#).unwrap();
        assert_eq!(v, HostConfig::default());
        assert_eq!(encode(&v), b"{}");
    }

    #[test]
    fn a_command_as_a_string_is_sent_on_as_a_list() {
        let v: ContainerCreate = decode(br#"{"Cmd":"echo hi","Entrypoint":["sh","-c"]}"#).unwrap();
        assert_eq!(
            String::from_utf8(encode(&v)).unwrap(),
            r#"{"Cmd":["echo hi"],"Entrypoint":["sh","-c"]}"#
        );
    }
}

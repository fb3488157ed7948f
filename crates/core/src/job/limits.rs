//! A docker job's `resource_class` as container limits: CircleCI's vCPUs and memory for the
//! class (`config::resource_class`), scaled or switched off by the runner's setting
//! (`resource_class_limits` in agent.toml, `--resource-class-limits` for `bosun execute`).
//!
//! CircleCI runs a docker job's containers on one machine of the class's size, so the
//! primary and its services share it. Docker caps containers one by one: each container of
//! the job (primary and services) gets the class's caps, so one container never exceeds the
//! class, while all of them together may (docs/config-compatibility.md, `resource_class`).

use crate::config::JobPlan;
use crate::executor::Limits;

/// What the runner does with a job's `resource_class`.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum LimitPolicy {
    /// The class's CPUs and memory as they are.
    #[default]
    Apply,
    /// The class's CPUs and memory times this factor (a smaller or larger machine).
    Scale(f64),
    /// No limits.
    Off,
}

/// Largest factor `scale:` takes.
const MAX_SCALE: f64 = 64.0;
/// Docker's smallest memory limit is 6 MiB; below a few CPUs' hundredths nothing runs.
const MIN_MEMORY: i64 = 6 * 1024 * 1024;
const MIN_NANO_CPUS: i64 = 10_000_000;

impl std::str::FromStr for LimitPolicy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || {
            format!(
                "`{s}`: expected `apply`, `off` or `scale:FACTOR` (e.g. scale:0.5, a factor above \
                 0 and at most {MAX_SCALE})"
            )
        };
        match s.trim() {
            "apply" => Ok(LimitPolicy::Apply),
            "off" => Ok(LimitPolicy::Off),
            other => {
                let f: f64 = other
                    .strip_prefix("scale:")
                    .and_then(|f| f.trim().parse().ok())
                    .ok_or_else(bad)?;
                if f.is_finite() && f > 0.0 && f <= MAX_SCALE {
                    Ok(LimitPolicy::Scale(f))
                } else {
                    Err(bad())
                }
            }
        }
    }
}

impl std::fmt::Display for LimitPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LimitPolicy::Apply => f.write_str("apply"),
            LimitPolicy::Scale(x) => write!(f, "scale:{x}"),
            LimitPolicy::Off => f.write_str("off"),
        }
    }
}

impl<'de> serde::Deserialize<'de> for LimitPolicy {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// The caps of each container of the job, and a line saying so; `None` without a sized
/// class or with the policy off.
pub(super) fn for_plan(plan: &JobPlan, policy: LimitPolicy) -> Option<(Limits, String)> {
    let class = plan.resource_class.as_ref()?;
    let factor = match policy {
        LimitPolicy::Off => return None,
        LimitPolicy::Apply => 1.0,
        LimitPolicy::Scale(f) => f,
    };
    let nano_cpus =
        ((f64::from(class.size.millicpus) * 1e6 * factor).round() as i64).max(MIN_NANO_CPUS);
    let memory_bytes =
        ((class.size.memory_mib as f64 * 1024.0 * 1024.0 * factor).round() as i64).max(MIN_MEMORY);
    let scaled = match policy {
        LimitPolicy::Scale(f) => format!(" (scaled by {f})"),
        _ => String::new(),
    };
    let line = format!(
        "resource_class {}: each container limited to {} CPUs and {} MiB of memory{scaled}",
        class.name,
        nano_cpus as f64 / 1e9,
        memory_bytes / (1024 * 1024)
    );
    Some((
        Limits {
            nano_cpus,
            memory_bytes,
        },
        line,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies_parse_and_scale() {
        assert_eq!("apply".parse(), Ok(LimitPolicy::Apply));
        assert_eq!(" off ".parse(), Ok(LimitPolicy::Off));
        assert_eq!("scale:0.5".parse(), Ok(LimitPolicy::Scale(0.5)));
        for bad in [
            "scale:0",
            "scale:-1",
            "scale:x",
            "scale:NaN",
            "scale:100",
            "on",
            "",
        ] {
            let e = bad.parse::<LimitPolicy>().expect_err(bad);
            assert!(e.contains("scale:FACTOR"), "{bad}: {e}");
        }
        let mut plan = super::super::tests::plan(vec![]);
        assert_eq!(for_plan(&plan, LimitPolicy::Apply), None);
        plan.resource_class = crate::config::resource_class::docker_class("small").expect("known");
        let (l, line) = for_plan(&plan, LimitPolicy::Apply).expect("limits");
        assert_eq!(
            l,
            Limits {
                nano_cpus: 1_000_000_000,
                memory_bytes: 2 << 30
            }
        );
        assert!(
            line.contains("small") && line.contains("1 CPUs and 2048 MiB"),
            "{line}"
        );
        let (l, _) = for_plan(&plan, LimitPolicy::Scale(0.5)).expect("limits");
        assert_eq!((l.nano_cpus, l.memory_bytes), (500_000_000, 1 << 30));
        assert_eq!(for_plan(&plan, LimitPolicy::Off), None);
    }
}

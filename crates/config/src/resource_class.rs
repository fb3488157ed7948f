//! `resource_class:` of a docker job: CircleCI's documented vCPUs and memory for each class
//! (configuration reference, Docker execution environment), which the job core turns into
//! container limits. Self-hosted runner classes (`namespace/name`) select agents and carry no
//! size; any other name is an error, as on CircleCI.

/// The size a class promises.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClassSize {
    /// Thousandths of a vCPU.
    pub millicpus: u32,
    pub memory_mib: u64,
}

/// The job's class and what it promises.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceClass {
    pub name: String,
    pub size: ClassSize,
}

const GIB: u64 = 1024;

/// CircleCI's Docker classes, x86 and Arm (vCPUs, GB of memory).
pub const DOCKER_CLASSES: &[(&str, u32, u64)] = &[
    ("small", 1, 2),
    ("medium", 2, 4),
    ("medium+", 3, 6),
    ("large", 4, 8),
    ("xlarge", 8, 16),
    ("2xlarge", 16, 32),
    ("2xlarge+", 20, 40),
    ("arm.medium", 2, 8),
    ("arm.large", 4, 16),
    ("arm.xlarge", 8, 32),
    ("arm.2xlarge", 16, 64),
];

/// What `resource_class: NAME` means for a docker job: `Ok(Some)` a sized class, `Ok(None)` a
/// self-hosted runner class (`namespace/name`), `Err` the list of known classes.
pub fn docker_class(name: &str) -> Result<Option<ResourceClass>, String> {
    if let Some((ns, class)) = name.split_once('/') {
        if !ns.is_empty() && !class.is_empty() && !class.contains('/') {
            return Ok(None);
        }
    }
    DOCKER_CLASSES
        .iter()
        .find(|(n, _, _)| *n == name)
        .map(|&(n, cpus, gb)| {
            Some(ResourceClass {
                name: n.to_owned(),
                size: ClassSize {
                    millicpus: cpus * 1000,
                    memory_mib: gb * GIB,
                },
            })
        })
        .ok_or_else(|| {
            DOCKER_CLASSES
                .iter()
                .map(|(n, _, _)| *n)
                .collect::<Vec<_>>()
                .join(", ")
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_have_circleci_sizes_and_runner_classes_none() {
        let c = docker_class("medium+").expect("known").expect("sized");
        assert_eq!(
            c.size,
            ClassSize {
                millicpus: 3000,
                memory_mib: 6 * 1024
            }
        );
        assert_eq!(
            docker_class("2xlarge+")
                .expect("known")
                .expect("sized")
                .size,
            ClassSize {
                millicpus: 20_000,
                memory_mib: 40 * 1024
            }
        );
        assert_eq!(docker_class("acme/big-runner"), Ok(None));
        let e = docker_class("huge").expect_err("unknown");
        assert!(e.starts_with("small, medium, medium+"), "{e}");
        assert!(docker_class("/x").is_err() && docker_class("a/b/c").is_err());
    }
}

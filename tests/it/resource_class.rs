//! A docker job's `resource_class` as container limits, in real containers with `bosun
//! execute`: the class's CPUs and memory seen from inside the primary (its cgroup) and on the
//! service containers (`docker inspect`), scaled or switched off by `--resource-class-limits`;
//! an unknown class fails at its line; `aws_auth` / `gcp_auth` fail as unsupported, naming
//! the image and the key, before anything is created.

use crate::harness;

use crate::harness::{containers_labelled, ensure_images, image, Project};
use std::time::Duration;

/// Prints `cpu=QUOTA PERIOD` and `mem=BYTES` from the container's own cgroup (v1 or v2).
const SHOW_LIMITS: &str = r#"if [ -f /sys/fs/cgroup/cpu.max ]; then
            echo "cpu=$(cat /sys/fs/cgroup/cpu.max)"; echo "mem=$(cat /sys/fs/cgroup/memory.max)"
          else
            echo "cpu=$(cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us) $(cat /sys/fs/cgroup/cpu/cpu.cfs_period_us)"
            echo "mem=$(cat /sys/fs/cgroup/memory/memory.limit_in_bytes)"
          fi"#;

fn config(class: &str, extra_steps: &str, services: &str) -> String {
    format!(
        r#"version: 2.1
jobs:
  build:
    docker:
      - image: {img}
{services}    resource_class: {class}
    steps:
      - run: |
          {SHOW_LIMITS}
{extra_steps}"#,
        img = image("base")
    )
}

fn line<'a>(output: &'a str, key: &str) -> &'a str {
    output
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .unwrap_or_else(|| panic!("no {key} in:\n{output}"))
        .trim()
}

/// CPU quota as a fraction of a CPU (`max` / -1: unlimited → None) and memory bytes
/// (unlimited → None).
fn limits(output: &str) -> (Option<f64>, Option<u64>) {
    let cpu = line(output, "cpu=");
    let mut parts = cpu.split_whitespace();
    let (quota, period) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let cpu = match (quota.parse::<f64>(), period.parse::<f64>()) {
        (Ok(q), Ok(p)) if q > 0.0 => Some(q / p),
        _ => None,
    };
    // v1 shows "no limit" as a huge number near i64::MAX.
    let mem = line(output, "mem=")
        .parse::<u64>()
        .ok()
        .filter(|&m| m < 1 << 50);
    (cpu, mem)
}

#[test]
fn a_class_limits_the_primary_and_services_and_the_setting_scales_or_drops_it() {
    ensure_images();
    let p = Project::new(&config(
        "small",
        "      - run: echo inspect-now && sleep 6\n",
        &format!("      - image: {}\n", image("redis")),
    ));
    let running = p.spawn(&["--json"]);
    running.wait_for_output("inspect-now", Duration::from_secs(120));
    // Every container of the job (primary and the Redis service) carries the class's caps.
    let ids = containers_labelled("bosun.job", &p.job_id);
    assert_eq!(ids.len(), 2, "primary and service: {ids:?}");
    for id in &ids {
        let out = harness::docker(&[
            "inspect",
            "-f",
            "{{.HostConfig.NanoCpus}} {{.HostConfig.Memory}} {{.HostConfig.MemorySwap}}",
            id,
        ]);
        assert_eq!(out, "1000000000 2147483648 2147483648", "{id}");
    }
    let out = running.finish(Duration::from_secs(120));
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    let text = out.output();
    assert_eq!(limits(&text), (Some(1.0), Some(2 << 30)), "{text}");
    let said: Vec<&str> = out
        .events
        .iter()
        .filter(|e| e["event"] == "info")
        .filter_map(|e| e["message"].as_str())
        .collect();
    assert!(
        said.iter()
            .any(|m| m.contains("resource_class small") && m.contains("1 CPUs and 2048 MiB")),
        "{said:?}"
    );

    let p = Project::new(&config("small", "", ""));
    let out = p.execute(&["--json", "--resource-class-limits", "scale:0.5"]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert_eq!(limits(&out.output()), (Some(0.5), Some(1 << 30)));

    let out = p.execute(&["--json", "--resource-class-limits", "off"]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert_eq!(limits(&out.output()), (None, None));

    // A runner class (`namespace/name`) selects agents and sets no limits.
    let p = Project::new(&config("acme/big-box", "", ""));
    let out = p.execute(&["--json"]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert_eq!(limits(&out.output()), (None, None));

    let out = p.execute(&["--resource-class-limits", "scale:zero"]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stderr.contains("scale:FACTOR"), "{}", out.stderr);
}

#[test]
fn an_unknown_class_is_an_error_at_its_line() {
    ensure_images();
    let p = Project::new(&config("huge", "", ""));
    let out = p.execute(&[]);
    let all = format!("{}{}", out.stdout, out.stderr);
    assert_eq!(out.code, 2, "{all}");
    assert!(all.contains(".circleci/config.yml:6:"), "{all}");
    assert!(
        all.contains(
            "jobs.build.resource_class: `huge` is not a resource class of the docker executor"
        ),
        "{all}"
    );
    assert!(all.contains("small, medium, medium+"), "{all}");
    p.assert_no_container_left();
}

#[test]
fn cloud_registry_auth_is_refused_naming_the_image_and_key() {
    ensure_images();
    for (key, body) in [
        (
            "aws_auth",
            "{aws_access_key_id: AKIAEXAMPLE, aws_secret_access_key: s3cr3t-aws-key}",
        ),
        ("gcp_auth", "{oidc_role_arn: x}"),
    ] {
        let img = image("base");
        let p = Project::new(&format!(
            "version: 2.1\njobs:\n  build:\n    docker:\n      - image: {img}\n        {key}: {body}\n    steps:\n      - run: {{name: work, command: echo never}}\n"
        ));
        let out = p.execute(&[]);
        let all = format!("{}{}", out.stdout, out.stderr);
        assert_ne!(out.code, 0, "{all}");
        assert!(
            all.contains(&format!(
                "jobs.build.docker[0].{key}: `{key}` (pulling `{img}` with cloud credentials) is not supported by this agent"
            )),
            "{all}"
        );
        assert!(all.contains(".circleci/config.yml:6:"), "{all}");
        assert!(!all.contains("never"), "{all}");
        assert!(!all.contains("s3cr3t-aws-key"), "{all}");
        p.assert_no_container_left();
    }
}

//! Service containers (`docker:` images after the first) and `machine` jobs against the real
//! engine: real PostgreSQL, Redis and systemd built by `images/` from Debian packages.

use crate::harness::{ensure_images, image, Project};

/// A step reaches PostgreSQL on `localhost` and Redis by its `name:`, after a wait loop (the
/// services are not waited for); then nothing of the job is left on the engine.
#[test]
fn a_step_reaches_postgres_on_localhost_and_redis_by_name() {
    ensure_images();
    let p = Project::new(&format!(
        r#"version: 2.1
jobs:
  build:
    docker:
      - image: {base}
        user: circleci
      - image: {pg}
        environment:
          POSTGRES_USER: app
          POSTGRES_DB: appdb
      - image: {redis}
        name: cache
    steps:
      - run:
          name: wait for postgres
          command: for i in $(seq 100); do pg_isready -h localhost -q && exit 0; sleep 0.1; done; exit 1
      - run:
          name: query
          command: psql -h localhost -U app appdb -tAc 'select 40 + 2'
      - run:
          name: redis by name
          command: for i in $(seq 100); do redis-cli -h cache ping 2>/dev/null | grep -q PONG && break; sleep 0.1; done; redis-cli -h cache set k v && redis-cli -h cache get k
"#,
        base = image("base"),
        pg = image("postgres"),
        redis = image("redis"),
    ));
    let out = p.execute(&["--json"]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    assert_eq!(out.step_status("query"), "success");
    let text = out.output();
    assert!(text.contains("42\n"), "{text}");
    assert!(text.contains("OK\nv\n"), "{text}");
    let started: Vec<&str> = out
        .events
        .iter()
        .filter(|e| e["event"] == "container_started" && e["role"] == "service")
        .filter_map(|e| e["name"].as_str())
        .collect();
    assert_eq!(started.len(), 2, "{started:?}");
    assert!(started.contains(&"cache"));
    p.assert_no_container_left();
}

/// A service that exits at once is reported by name with its exit code and last lines; the
/// job is not failed by that alone, and nothing is left behind.
#[test]
fn a_service_that_exits_at_once_is_reported_and_does_not_fail_the_job() {
    ensure_images();
    let p = Project::new(&format!(
        r#"version: 2.1
jobs:
  build:
    docker:
      - image: {base}
      - image: {base}
        name: broken
        entrypoint: ["/bin/sh", "-c", "echo 'fatal: no such database' >&2; exit 3"]
    steps:
      - run: sleep 2
      - run: echo done
"#,
        base = image("base"),
    ));
    let out = p.execute(&["--json"]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    let exited = out
        .event("service_exited")
        .unwrap_or_else(|| panic!("no service_exited in {}", out.stdout));
    assert_eq!(exited["service"], "broken");
    assert_eq!(exited["exit_code"], 3);
    assert!(exited["output"]
        .as_str()
        .unwrap_or("")
        .contains("fatal: no such database"));
    p.assert_no_container_left();
}

/// A failed job shows what its services printed (the terminal view).
#[test]
fn a_failed_job_shows_its_services_output() {
    ensure_images();
    let p = Project::new(&format!(
        r#"version: 2.1
jobs:
  build:
    docker:
      - image: {base}
      - image: {base}
        name: talker
        command: ["/bin/sh", "-c", "echo service-says-hello; sleep 600"]
    steps:
      - run: sleep 1; exit 1
"#,
        base = image("base"),
    ));
    let out = p.execute(&[]);
    assert_eq!(out.code, 1, "{}\n{}", out.stdout, out.stderr);
    assert!(
        out.stdout
            .contains("Output of service talker:\n      | service-says-hello"),
        "{}",
        out.stdout
    );
    p.assert_no_container_left();
}

/// A missing service image, a bad `name:` and a duplicate `name:` are clear errors (exit 2)
/// and leave nothing running.
#[test]
fn bad_services_are_clear_errors_and_nothing_runs() {
    ensure_images();
    let base = image("base");
    let cases = [
        (
            "      - image: bosun/no-such-service:1\n        name: db\n".to_owned(),
            "service container `db` (bosun/no-such-service:1)",
        ),
        (
            format!("      - image: {base}\n        name: not_a_host!\n"),
            "is not a valid host name",
        ),
        (
            format!(
                "      - image: {base}\n        name: db\n      - image: {base}\n        name: db\n"
            ),
            "two images are named `db`",
        ),
    ];
    for (services, want) in cases {
        let p = Project::new(&format!(
            "version: 2.1\njobs:\n  build:\n    docker:\n      - image: {base}\n{services}    steps:\n      - run: echo hi\n"
        ));
        let out = p.execute(&[]);
        assert_eq!(out.code, 2, "{want}: {}\n{}", out.stdout, out.stderr);
        let all = format!("{}{}", out.stdout, out.stderr);
        assert!(all.contains(want), "{want}: {all}");
        p.assert_no_container_left();
    }
}

/// A `machine` job: systemd boots, steps run as `circleci` in `~/project`, `sudo` works
/// without a password, a unit shipped in the image starts and answers, `/etc` is writable
/// with sudo; the machine is removed at the end.
#[test]
fn a_machine_job_runs_as_circleci_with_sudo_and_systemd() {
    ensure_images();
    let p = Project::new(
        r#"version: 2.1
jobs:
  build:
    machine: true
    steps:
      - run:
          name: who
          command: echo "user=$(id -un) pwd=$PWD shell=$0 home=$HOME"
      - run:
          name: systemd service
          command: |
            sudo systemctl start bosun-echo
            systemctl is-active bosun-echo
            # A simple unit is "active" once started, maybe before it listens.
            for i in $(seq 50); do printf 'ping\n' | socat -t1 - TCP:127.0.0.1:7777 2>/dev/null && break; sleep 0.1; done
      - run:
          name: etc
          command: echo hello | sudo tee /etc/bosun-test >/dev/null && cat /etc/bosun-test
      - run:
          name: docker cli
          command: docker --version
"#,
    );
    let machine = image("machine");
    let out = p.execute(&["--json", "--machine-image", &format!("default={machine}")]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    let text = out.output();
    assert!(
        text.contains("user=circleci pwd=/home/circleci/project"),
        "{text}"
    );
    assert!(text.contains("active\nping\n"), "{text}");
    assert!(text.contains("hello\n"), "{text}");
    assert!(text.contains("Docker version"), "{text}");
    p.assert_no_container_left();
}

/// A `machine:` image name nobody mapped is a clear error naming the setting (exit 2).
#[test]
fn an_unmapped_machine_image_names_the_setting() {
    ensure_images();
    let p = Project::new(
        "version: 2.1\njobs:\n  build:\n    machine:\n      image: ubuntu-2204:current\n    steps:\n      - run: true\n",
    );
    let out = p.execute(&[]);
    assert_eq!(out.code, 2, "{}\n{}", out.stdout, out.stderr);
    assert!(
        out.stdout
            .contains("--machine-image ubuntu-2204:current=IMAGE"),
        "{}",
        out.stdout
    );
    p.assert_no_container_left();
}

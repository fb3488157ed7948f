//! `bosun execute` against the real Docker engine: steps, environment, `when`, background
//! steps, no-output timeouts, exit codes, the bash-less fallback and cleanup after Ctrl-C.

use crate::harness;

use crate::harness::{ensure_images, image, step_output, Project};
use serde_json::Value;
use std::time::{Duration, Instant};

fn step_statuses(events: &[Value]) -> Vec<(String, String)> {
    let mut v: Vec<(u64, String, String)> = events
        .iter()
        .filter(|e| e["event"] == "step_finished")
        .map(|e| {
            (
                e["step"].as_u64().unwrap_or(0),
                e["name"].as_str().unwrap_or("").to_owned(),
                e["status"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    v.sort();
    v.into_iter().map(|(_, n, s)| (n, s)).collect()
}

#[test]
fn steps_environment_precedence_and_when_conditions() {
    ensure_images();
    let p = Project::new(&format!(
        r#"version: 2.1
executors:
  deb:
    docker:
      - image: {img}
        user: circleci
        environment:
          FROM_IMAGE: image
          LEVEL: image
    environment:
      LEVEL: executor
jobs:
  build:
    executor: deb
    environment:
      LEVEL: job
      JOB_ONLY: job
    steps:
      - run:
          name: env
          environment:
            LEVEL: step
            STEP_ONLY: step
          command: |
            echo "LEVEL=$LEVEL FROM_IMAGE=$FROM_IMAGE JOB_ONLY=$JOB_ONLY STEP_ONLY=$STEP_ONLY CLI=$CLI"
            echo "CI=$CI CIRCLECI=$CIRCLECI CIRCLE_JOB=$CIRCLE_JOB CIRCLE_BUILD_NUM=$CIRCLE_BUILD_NUM"
            echo "NODE=$CIRCLE_NODE_INDEX/$CIRCLE_NODE_TOTAL HOME=$HOME PWD=$PWD WD=$CIRCLE_WORKING_DIRECTORY"
            echo "USER=$(id -un)"
      - run:
          name: step-level wins over job
          command: test "$LEVEL" = job
      - run:
          name: breaks
          command: echo about to fail >&2; exit 7
      - run:
          name: skipped after failure
          command: echo should not run
      - run:
          name: runs on fail
          when: on_fail
          command: echo cleaning up
      - run:
          name: always runs
          when: always
          command: echo always
"#,
        img = image("base")
    ));
    let out = p.execute(&["--json", "--env", "CLI=cli", "--build-num", "42"]);
    assert_eq!(out.code, 1, "a failed step exits 1\n{}", out.stderr);
    let env_line = step_output(&out.events, None, 0);
    assert!(
        env_line.contains("LEVEL=step FROM_IMAGE=image JOB_ONLY=job STEP_ONLY=step CLI=cli"),
        "{env_line}"
    );
    assert!(
        env_line.contains("CI=true CIRCLECI=true CIRCLE_JOB=build CIRCLE_BUILD_NUM=42"),
        "{env_line}"
    );
    assert!(
        env_line.contains(
            "NODE=0/1 HOME=/home/circleci PWD=/home/circleci/project WD=/home/circleci/project"
        ),
        "{env_line}"
    );
    assert!(env_line.contains("USER=circleci"), "{env_line}");
    assert_eq!(
        step_statuses(&out.events),
        vec![
            ("env".into(), "success".into()),
            ("step-level wins over job".into(), "success".into()),
            ("breaks".into(), "failed".into()),
            ("skipped after failure".into(), "skipped".into()),
            ("runs on fail".into(), "success".into()),
            ("always runs".into(), "success".into()),
        ]
    );
    let breaks = out
        .events
        .iter()
        .find(|e| e["event"] == "step_finished" && e["name"] == "breaks")
        .expect("breaks finished");
    assert_eq!(breaks["exit_code"], 7);
    assert!(step_output(&out.events, None, 2).contains("about to fail"));
    let last = out.events.last().expect("events");
    assert_eq!(last["event"], "job_finished");
    assert_eq!(last["status"], "failed");
    p.assert_no_container_left();
}

#[test]
fn human_output_has_headers_and_a_summary_table() {
    ensure_images();
    let p = Project::new(&format!(
        "version: 2.1\njobs:\n  build:\n    docker: [{{image: {}}}]\n    steps:\n      - run: {{name: Greet, command: echo hello world}}\n",
        image("base")
    ));
    let out = p.execute(&[]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    assert!(
        out.stdout
            .contains("==> Step 1: Greet\nhello world\n<== Step 1: success"),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("STEP"), "{}", out.stdout);
    assert!(out.stdout.contains("Job build: success"), "{}", out.stdout);
    p.assert_no_container_left();
}

#[test]
fn image_without_bash_falls_back_to_sh_with_pipefail() {
    ensure_images();
    let p = Project::new(&format!(
        r#"version: 2.1
jobs:
  build:
    docker: [{{image: {img}}}]
    steps:
      - run:
          name: no bash here
          command: test ! -e /bin/bash && echo "shell is $(readlink /proc/$$/exe)"
      - run:
          name: pipefail is on
          command: false | true
"#,
        img = image("nobash")
    ));
    let out = p.execute(&["--json"]);
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(
        step_output(&out.events, None, 0).contains("shell is /bin/busybox"),
        "{:?}",
        out.events
    );
    assert_eq!(
        step_statuses(&out.events),
        vec![
            ("no bash here".into(), "success".into()),
            ("pipefail is on".into(), "failed".into()),
        ]
    );
    p.assert_no_container_left();
}

#[test]
fn background_step_runs_beside_the_next_and_ends_with_the_job() {
    ensure_images();
    let p = Project::new(&format!(
        r#"version: 2.1
jobs:
  build:
    docker: [{{image: {img}}}]
    steps:
      - run:
          name: server
          background: true
          command: while true; do date +%s%N > /tmp/beat; sleep 0.1; done
      - run:
          name: sees the server
          command: for i in $(seq 50); do [ -s /tmp/beat ] && exit 0; sleep 0.1; done; exit 1
"#,
        img = image("base")
    ));
    let started = Instant::now();
    let out = p.execute(&["--json"]);
    assert_eq!(out.code, 0, "{}\n{:?}", out.stderr, out.events);
    assert_eq!(
        step_statuses(&out.events),
        vec![
            ("server".into(), "stopped".into()),
            ("sees the server".into(), "success".into()),
        ]
    );
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "the background step held the job"
    );
    p.assert_no_container_left();
}

#[test]
fn silent_step_is_stopped_after_no_output_timeout() {
    ensure_images();
    let p = Project::new(&format!(
        r#"version: 2.1
jobs:
  build:
    docker: [{{image: {img}}}]
    steps:
      - run:
          name: hangs
          no_output_timeout: 2s
          command: echo starting; sleep 600
      - run:
          name: after timeout
          when: on_fail
          command: echo reported
"#,
        img = image("base")
    ));
    let started = Instant::now();
    let out = p.execute(&["--json", "--kill-grace", "1"]);
    let took = started.elapsed();
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert_eq!(
        step_statuses(&out.events),
        vec![
            ("hangs".into(), "timedout".into()),
            ("after timeout".into(), "success".into()),
        ]
    );
    assert!(step_output(&out.events, None, 0).contains("no_output_timeout"));
    let last = out.events.last().expect("events");
    assert_eq!(last["status"], "timedout");
    assert!(took < Duration::from_secs(20), "took {took:?}");
    p.assert_no_container_left();
}

#[test]
fn exit_code_2_for_problems_before_the_job_runs() {
    ensure_images();
    // A config error names file, line, column and key path.
    let p = Project::new(&format!(
        "version: 2.1\njobs:\n  build:\n    docker: [{{image: {}}}]\n    steps:\n      - run:\n          comand: make\n",
        image("base")
    ));
    let out = p.execute(&[]);
    assert_eq!(out.code, 2);
    assert!(
        out.stdout.contains(
            ".circleci/config.yml:7:11: jobs.build.steps[0].run.comand: extraneous key [comand] is not permitted"
        ),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("did you mean `command`?"),
        "{}",
        out.stdout
    );

    // An engine that is not there.
    let p = Project::new(&format!(
        "version: 2.1\njobs:\n  build:\n    docker: [{{image: {}}}]\n    steps: [{{run: 'true'}}]\n",
        image("base")
    ));
    let out = p.execute_env(&[], &[("DOCKER_HOST", "unix:///nonexistent/docker.sock")]);
    assert_eq!(out.code, 2, "{}", out.stdout);
    assert!(
        out.stdout.contains("cannot reach the Docker engine"),
        "{}",
        out.stdout
    );

    // An image the engine does not have and cannot pull.
    let p = Project::new(
        "version: 2.1\njobs:\n  build:\n    docker: [{image: bosun/does-not-exist:1}]\n    steps: [{run: 'true'}]\n",
    );
    let out = p.execute(&[]);
    assert_eq!(out.code, 2, "{}", out.stdout);
    assert!(
        out.stdout.contains("bosun/does-not-exist:1"),
        "{}",
        out.stdout
    );

    // An unknown job lists the nearest.
    let p = Project::new(&format!(
        "version: 2.1\njobs:\n  build:\n    docker: [{{image: {}}}]\n    steps: [{{run: 'true'}}]\n",
        image("base")
    ));
    let out = p.execute(&["--job", "biuld"]);
    assert_eq!(out.code, 2);
    assert!(
        out.stdout.contains("did you mean `build`?"),
        "{}",
        out.stdout
    );
}

#[test]
fn ctrl_c_and_sigterm_cancel_the_step_and_remove_the_container() {
    ensure_images();
    for signal in ["INT", "TERM"] {
        let p = Project::new(&format!(
            r#"version: 2.1
jobs:
  build:
    docker: [{{image: {img}}}]
    steps:
      - run:
          name: long
          command: echo started; sleep 600
      - run:
          name: never
          command: echo nope
"#,
            img = image("base")
        ));
        let run = p.spawn(&["--json", "--kill-grace", "1"]);
        // The step's own output, not the `job_started` event.
        run.wait_for_output("started\\n", Duration::from_secs(60));
        assert!(
            !p.containers().is_empty(),
            "the job's container exists while it runs"
        );
        let t0 = Instant::now();
        run.signal(signal);
        let out = run.finish(Duration::from_secs(30));
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "SIG{signal} took {:?}",
            t0.elapsed()
        );
        assert_eq!(out.code, 130, "SIG{signal}: {}", out.stderr);
        let statuses = step_statuses(&out.events);
        assert_eq!(
            statuses[0],
            ("long".into(), "canceled".into()),
            "SIG{signal}"
        );
        assert_eq!(
            statuses[1],
            ("never".into(), "skipped".into()),
            "SIG{signal}"
        );
        assert_eq!(out.events.last().expect("events")["status"], "canceled");
        p.assert_no_container_left();
    }
}

/// A TCP front for the engine's unix socket: the agent then talks to "a remote engine" and
/// nothing can travel through a shared filesystem. Counts the bytes sent to the engine.
fn tcp_engine_proxy() -> (u16, std::sync::Arc<std::sync::atomic::AtomicU64>) {
    use std::sync::atomic::{AtomicU64, Ordering};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let sent = std::sync::Arc::new(AtomicU64::new(0));
    let counter = std::sync::Arc::clone(&sent);
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(tcp) = conn else { break };
            let Ok(unix) = std::os::unix::net::UnixStream::connect("/var/run/docker.sock") else {
                continue;
            };
            let (mut tcp_r, mut tcp_w) = (tcp.try_clone().expect("clone"), tcp);
            let (mut unix_r, mut unix_w) = (unix.try_clone().expect("clone"), unix);
            let counter = std::sync::Arc::clone(&counter);
            std::thread::spawn(move || {
                let n = std::io::copy(&mut tcp_r, &mut unix_w).unwrap_or(0);
                counter.fetch_add(n, Ordering::Relaxed);
                let _ = unix_w.shutdown(std::net::Shutdown::Write);
            });
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut unix_r, &mut tcp_w);
                let _ = tcp_w.shutdown(std::net::Shutdown::Write);
            });
        }
    });
    (port, sent)
}

#[test]
fn tcp_docker_host_and_checkout_by_archive_upload() {
    ensure_images();
    let p = Project::new(&format!(
        r#"version: 2.1
jobs:
  build:
    docker: [{{image: {img}, user: circleci}}]
    steps:
      - checkout
      - run: test "$(git rev-parse HEAD)" = "$CIRCLE_SHA1" && test -z "$(git status --porcelain)" && wc -c < big.bin
"#,
        img = image("base")
    ));
    // 3 MB of incompressible-ish data in the repository: it can only reach the container
    // through the engine API.
    let data: Vec<u8> = (0u32..3_000_000)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(p.path().join("big.bin"), &data).expect("write");
    harness::run(harness::git_in(p.path()).args(["add", "big.bin"]));
    harness::run(harness::git_in(p.path()).args(["commit", "-q", "-m", "big"]));
    let (port, sent) = tcp_engine_proxy();
    let host = format!("tcp://127.0.0.1:{port}");
    let out = p.execute_env(&["--json"], &[("DOCKER_HOST", host.as_str())]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    assert!(
        step_output(&out.events, None, 1).contains("3000000"),
        "{:?}",
        out.events
    );
    let sent = sent.load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        sent > 3_000_000,
        "only {sent} bytes went to the engine over TCP"
    );
    p.assert_no_container_left();
}

#[test]
fn image_user_and_home_are_honoured() {
    ensure_images();
    // An image whose USER is circleci (as CircleCI's cimg images are), made from the base.
    let tag = format!("bosun/test-user:{}", harness::new_run_id());
    let c = harness::docker(&[
        "create",
        "--label",
        "bosun.test=image-user",
        &image("base"),
        "true",
    ]);
    harness::docker(&["commit", "--change", "USER circleci", &c, &tag]);
    harness::docker(&["rm", "-f", &c]);
    let p = Project::new(&format!(
        "version: 2.1\njobs:\n  build:\n    docker: [{{image: {tag}}}]\n    steps:\n      - run: echo \"$(id -un) $HOME $PWD\" && stat -c '%U %a' ~/.ssh\n"
    ));
    let out = p.execute(&["--json"]);
    harness::docker(&["rmi", "-f", &tag]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let text = step_output(&out.events, None, 0);
    assert!(
        text.contains("circleci /home/circleci /home/circleci/project"),
        "{text}"
    );
    assert!(text.contains("circleci 700"), "{text}");
    p.assert_no_container_left();
}

#[test]
fn working_directory_the_user_may_not_create_is_made_by_the_engine() {
    ensure_images();
    // circleci cannot mkdir /opt/app: the in-container tar fails and the engine's archive
    // upload (as root) creates it, owned by the job's user.
    let p = Project::new(&format!(
        "version: 2.1\njobs:\n  build:\n    docker: [{{image: {}, user: circleci}}]\n    working_directory: /opt/app\n    steps:\n      - run: echo \"$(pwd) $(stat -c %U .) $(stat -c '%U %a' ~/.ssh)\"\n",
        image("base")
    ));
    let out = p.execute(&["--json"]);
    assert_eq!(out.code, 0, "{}\n{:?}", out.stderr, out.events);
    let text = step_output(&out.events, None, 0);
    assert!(text.contains("/opt/app circleci circleci 700"), "{text}");
    p.assert_no_container_left();
}

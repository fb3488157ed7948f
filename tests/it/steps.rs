//! Every step type and whole workflows, locally, against the real Docker engine and a real
//! store directory: caches, workspaces along `requires`, artifacts, JUnit test results,
//! add_ssh_keys, setup_remote_docker, approvals, filters and failure propagation.

use crate::harness;

use crate::harness::{ensure_images, image, step_output, Project};
use serde_json::Value;

fn workflow_table(events: &[Value]) -> Vec<(String, String)> {
    events
        .iter()
        .find(|e| e["event"] == "workflow_finished")
        .and_then(|e| e["jobs"].as_array())
        .map(|jobs| {
            jobs.iter()
                .map(|j| {
                    (
                        j["job"].as_str().unwrap_or("").to_owned(),
                        j["status"].as_str().unwrap_or("").to_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn caches_are_saved_once_and_restored_by_prefix_in_a_fresh_container() {
    ensure_images();
    let p = Project::new(&format!(
        r#"version: 2.1
jobs:
  build:
    docker: [{{image: {img}, user: circleci}}]
    steps:
      - checkout
      - restore_cache:
          keys:
            - deps-v1-{{{{ checksum "lock.txt" }}}}
            - deps-v1-
      - run: |
          if [ -f ~/deps/installed ]; then echo "deps from cache: $(cat ~/deps/installed)"
          else mkdir -p ~/deps && echo "fresh $RANDOM" > ~/deps/installed && echo "deps installed"; fi
      - save_cache:
          key: deps-v1-{{{{ checksum "lock.txt" }}}}
          paths: [~/deps]
"#,
        img = image("base")
    ));
    std::fs::write(p.path().join("lock.txt"), "left-pad 1.0\n").expect("write");
    harness::run(harness::git_in(p.path()).args(["add", "lock.txt"]));
    harness::run(harness::git_in(p.path()).args(["commit", "-q", "-m", "lock"]));

    let first = p.execute(&["--json"]);
    assert_eq!(first.code, 0, "{}\n{}", first.stdout, first.stderr);
    assert!(
        step_output(&first.events, None, 1).contains("No cache is found"),
        "{}",
        first.stdout
    );
    assert!(step_output(&first.events, None, 2).contains("deps installed"));
    assert!(
        step_output(&first.events, None, 3).contains("Stored cache deps-v1-"),
        "{}",
        first.stdout
    );

    let second = p.execute(&["--json"]);
    assert_eq!(second.code, 0, "{}", second.stderr);
    assert!(
        step_output(&second.events, None, 1).contains("Found a cache"),
        "{}",
        second.stdout
    );
    let restored = step_output(&second.events, None, 2);
    assert!(restored.contains("deps from cache: fresh"), "{restored}");
    // Immutable: the same key is not written again.
    assert!(
        step_output(&second.events, None, 3)
            .contains("Skipping cache generation, cache already exists"),
        "{}",
        second.stdout
    );
    // A changed lock file misses the exact key and falls back to the `deps-v1-` prefix.
    std::fs::write(p.path().join("lock.txt"), "left-pad 2.0\n").expect("write");
    harness::run(harness::git_in(p.path()).args(["commit", "-qam", "bump"]));
    let third = p.execute(&["--json"]);
    assert_eq!(third.code, 0, "{}", third.stderr);
    assert!(
        step_output(&third.events, None, 2).contains("deps from cache"),
        "{}",
        third.stdout
    );
    p.assert_no_container_left();
}

#[test]
fn artifacts_test_results_and_remote_docker() {
    ensure_images();
    let p = Project::new(&format!(
        r#"version: 2.1
jobs:
  build:
    docker: [{{image: {img}}}]
    steps:
      - run: |
          mkdir -p out/sub results
          echo report > out/report.txt
          echo nested > out/sub/deep.txt
          cat > results/junit.xml \<<'XML'
          <testsuites><testsuite name="unit">
            <testcase classname="calc" name="adds"/>
            <testcase classname="calc" name="divides"><failure message="by zero"/></testcase>
          </testsuite></testsuites>
          XML
      - run: exit 1
      - store_artifacts:
          path: out
          destination: reports
      - store_test_results:
          path: results
      - setup_remote_docker
"#,
        img = image("base")
    ));
    let out = p.execute(&["--json"]);
    assert_eq!(out.code, 1, "{}\n{}", out.stdout, out.stderr);
    // Both store steps ran after the failed step, as CircleCI does.
    assert!(
        step_output(&out.events, None, 2).contains("Uploaded 2 file(s)"),
        "{}",
        out.stdout
    );
    let results = step_output(&out.events, None, 3);
    assert!(results.contains("2 tests, 1 failures"), "{results}");
    assert!(results.contains("failed: calc.divides"), "{results}");
    let dir = p.artifacts_dir();
    assert_eq!(
        std::fs::read_to_string(dir.join("reports/report.txt")).expect("artifact"),
        "report\n"
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("reports/sub/deep.txt")).expect("artifact"),
        "nested\n"
    );
    let summary: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("test-results.json")).expect("summary"),
    )
    .expect("json");
    assert_eq!(summary["tests"], 2);
    // setup_remote_docker is skipped here (the job already failed); run it alone: it now
    // gives the job its own scoped engine (tests/it/engine_proxy.rs covers what that engine
    // allows).
    let p2 = Project::new(&format!(
        "version: 2.1\njobs:\n  build:\n    docker: [{{image: {}}}]\n    steps:\n      - setup_remote_docker\n      - setup_remote_docker: {{version: 20.10.18, docker_layer_caching: true}}\n",
        image("base")
    ));
    let out = p2.execute(&["--json"]);
    assert_eq!(out.code, 0, "{}", out.stdout);
    // The bare step says nothing of a layer cache; the second asks for one and a version,
    // and is told what it gets (`bosun execute` keeps no images).
    let first = step_output(&out.events, None, 0);
    let second = step_output(&out.events, None, 1);
    assert!(first.contains("DOCKER_HOST=unix://"), "{first}");
    assert!(!first.contains("layer cache"), "{first}");
    assert!(
        second.contains("version: 20.10.18 was asked for"),
        "{second}"
    );
    assert!(
        second.contains("the images this job builds are removed at its end"),
        "{second}"
    );
    p2.assert_no_container_left();
    p.assert_no_container_left();
}

#[test]
fn add_ssh_keys_installs_the_chosen_additional_key() {
    ensure_images();
    let keys = tempfile::tempdir().expect("tempdir");
    let key = keys.path().join("extra");
    harness::run(
        std::process::Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(&key),
    );
    let fp_line = harness::run(
        std::process::Command::new("ssh-keygen")
            .arg("-lf")
            .arg(&key),
    );
    let fp = fp_line
        .split_whitespace()
        .nth(1)
        .expect("fingerprint")
        .to_owned();
    let p = Project::new(&format!(
        r#"version: 2.1
jobs:
  build:
    docker: [{{image: {img}, user: circleci}}]
    steps:
      - add_ssh_keys:
          fingerprints: ["{fp}"]
      - run: stat -c '%a %U' ~/.ssh/id_rsa_* && grep -c IdentityFile ~/.ssh/config
"#,
        img = image("base")
    ));
    let out = p.execute(&["--json", "--ssh-key", key.to_str().expect("utf8")]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    assert!(
        step_output(&out.events, None, 0).contains(&fp),
        "{}",
        out.stdout
    );
    assert!(
        step_output(&out.events, None, 1).contains("600 circleci"),
        "{}",
        out.stdout
    );
    let private = std::fs::read_to_string(&key).expect("key");
    let body = private.lines().nth(1).expect("key body");
    assert!(
        !out.stdout.contains(body) && !out.stderr.contains(body),
        "key bytes leaked"
    );
    // An unknown fingerprint fails the step, naming what was asked for.
    let p = Project::new(&format!(
        "version: 2.1\njobs:\n  build:\n    docker: [{{image: {}}}]\n    steps: [{{add_ssh_keys: {{fingerprints: [\"SHA256:nope\"]}}}}]\n",
        image("base")
    ));
    let out = p.execute(&["--json"]);
    assert_eq!(out.code, 1);
    assert!(
        step_output(&out.events, None, 0).contains("no key with fingerprint SHA256:nope"),
        "{}",
        out.stdout
    );
}

const WORKFLOW: &str = r#"version: 2.1
executors:
  deb:
    docker: [{image: IMG}]
jobs:
  build:
    executor: deb
    steps:
      - run: mkdir -p /tmp/ws && echo built-by-build > /tmp/ws/artifact.txt
      - persist_to_workspace: {root: /tmp/ws, paths: [artifact.txt]}
  test:
    executor: deb
    parameters:
      shard: {type: integer}
    steps:
      - attach_workspace: {at: /tmp/attached}
      - run: echo "shard << parameters.shard >> sees $(cat /tmp/attached/artifact.txt)"
  lint:
    executor: deb
    steps:
      - run: echo lint fails; exit 1
  after-lint:
    executor: deb
    steps: [{run: echo never}]
  deploy:
    executor: deb
    steps: [{run: echo deployed}]
  release:
    executor: deb
    steps: [{run: echo released}]
workflows:
  main:
    jobs:
      - build
      - test:
          requires: [build]
          matrix:
            parameters:
              shard: [1, 2]
      - lint
      - after-lint:
          requires: [lint]
      - hold:
          type: approval
          requires: [test]
      - deploy:
          requires: [hold]
      - release:
          filters:
            branches: {ignore: main}
"#;

#[test]
fn a_workflow_runs_in_dependency_order_with_workspaces_and_failure_stops_only_dependants() {
    ensure_images();
    let p = Project::new(&WORKFLOW.replace("IMG", &image("base")));
    let out = p.execute(&["--json", "--workflow", "main", "--jobs", "3"]);
    assert_eq!(out.code, 1, "lint failed\n{}\n{}", out.stdout, out.stderr);
    let table = workflow_table(&out.events);
    let status = |name: &str| {
        table
            .iter()
            .find(|(j, _)| j == name)
            .map(|(_, s)| s.clone())
            .unwrap_or_else(|| panic!("{name} missing from {table:?}"))
    };
    assert_eq!(status("build"), "success");
    assert_eq!(status("test-1"), "success");
    assert_eq!(status("test-2"), "success");
    assert_eq!(status("lint"), "failed");
    assert_eq!(
        status("after-lint"),
        "blocked",
        "a failed job stops its dependants"
    );
    assert_eq!(status("hold"), "on_hold");
    assert_eq!(status("deploy"), "blocked");
    assert_eq!(status("release"), "not_run", "filters ignore main");
    for shard in ["test-1", "test-2"] {
        let text = step_output(&out.events, Some(shard), 1);
        assert!(text.contains("sees built-by-build"), "{shard}: {text}");
    }
    p.assert_no_container_left();

    // Approved: the hold passes and deploy runs (lint still fails).
    let out = p.execute(&["--json", "--workflow", "main", "--approve"]);
    let table = workflow_table(&out.events);
    assert!(
        table.contains(&("deploy".to_owned(), "success".to_owned())),
        "{table:?}"
    );
    p.assert_no_container_left();
}

#[test]
fn parallelism_runs_one_container_per_node_with_its_index() {
    ensure_images();
    let p = Project::new(&format!(
        "version: 2.1\njobs:\n  build:\n    docker: [{{image: {}}}]\n    parallelism: 3\n    steps:\n      - run: echo \"node $CIRCLE_NODE_INDEX of $CIRCLE_NODE_TOTAL on $(hostname)\"\n",
        image("base")
    ));
    let out = p.execute(&["--json"]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    let mut hosts = std::collections::HashSet::new();
    for i in 0..3 {
        let text = step_output(&out.events, Some(&format!("build.{i}")), 0);
        assert!(
            text.contains(&format!("node {i} of 3 on ")),
            "node {i}: {text}"
        );
        hosts.insert(text.trim().rsplit(' ').next().unwrap_or("").to_owned());
    }
    assert_eq!(hosts.len(), 3, "three containers: {hosts:?}");
    p.assert_no_container_left();
}

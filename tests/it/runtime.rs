//! The job's runtime as CircleCI provides it, in real containers with `bosun execute`:
//! `$BASH_ENV` across steps (bash images, and by hand in the bash-less one), the in-job
//! `circleci` / `circleci-agent` command (`step halt`, `tests glob` / `split` with stored
//! timings over 4 nodes, `env subst`) in glibc and busybox-only images, and the built-in
//! variables.

use crate::harness;

use crate::harness::{ensure_images, image, step_output, Project};
use serde_json::Value;
use std::collections::BTreeMap;

fn step_statuses(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .find(|e| e["event"] == "job_finished")
        .and_then(|e| e["steps"].as_array())
        .map(|s| {
            s.iter()
                .map(|s| s["status"].as_str().unwrap_or("").to_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn bash_env_carries_exports_to_the_later_steps() {
    ensure_images();
    let p = Project::new(&format!(
        r#"version: 2.1
jobs:
  build:
    docker: [{{image: {img}, user: circleci}}]
    steps:
      - run: |
          echo 'export GREETING="hello from step 1"' >> "$BASH_ENV"
          echo 'export PATH="$HOME/tools:$PATH"' >> "$BASH_ENV"
          mkdir -p ~/tools && printf '#!/bin/sh\necho tool ran\n' > ~/tools/mytool && chmod +x ~/tools/mytool
      - run: |
          echo "greeting=$GREETING"
          mytool
          [ "$CIRCLE_SHELL_ENV" = "$BASH_ENV" ] && echo "shell env is bash env"
          ls -l "$BASH_ENV" | awk '{{print "owner=" $3}}'
"#,
        img = image("base")
    ));
    let out = p.execute(&["--json"]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    let second = step_output(&out.events, None, 1);
    assert!(second.contains("greeting=hello from step 1"), "{second}");
    assert!(second.contains("tool ran"), "{second}");
    assert!(second.contains("shell env is bash env"), "{second}");
    assert!(second.contains("owner=circleci"), "{second}");
    p.assert_no_container_left();
}

#[test]
fn the_bash_less_image_has_the_file_and_the_command() {
    ensure_images();
    let p = Project::new(&format!(
        r#"version: 2.1
jobs:
  build:
    docker: [{{image: {img}}}]
    steps:
      - run: echo 'export FROM_ONE=yes' >> "$BASH_ENV"
      - run:
          name: sh reads it when told to, as CircleCI documents
          command: . "$BASH_ENV"; echo "from one=$FROM_ONE"
      - run:
          name: the in-job command without libc or bash
          command: |
            mkdir -p /tmp/t/a/b && touch /tmp/t/a/x_test.sh /tmp/t/a/b/y_test.sh /tmp/t/a/b/z.txt
            cd /tmp/t && circleci tests glob "**/*_test.{{sh,py}}"
            echo 'name=$CIRCLE_JOB' | circleci-agent env subst
"#,
        img = image("nobash")
    ));
    let out = p.execute(&["--json"]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    assert!(step_output(&out.events, None, 1).contains("from one=yes"));
    let cmd = step_output(&out.events, None, 2);
    assert!(
        cmd.contains("a/b/y_test.sh\na/x_test.sh\nname=build"),
        "{cmd}"
    );
    p.assert_no_container_left();
}

#[test]
fn step_halt_ends_the_job_successfully_after_the_current_step() {
    ensure_images();
    let p = Project::new(&format!(
        r#"version: 2.1
jobs:
  build:
    docker: [{{image: {img}}}]
    steps:
      - run: echo first
      - run: |
          if [ -n "$CIRCLE_JOB" ]; then circleci-agent step halt; fi
          echo "the halting step goes on to its end"
      - run: echo must not run; exit 1
      - store_artifacts: {{path: /etc/hostname}}
      - run:
          name: cleanup
          when: always
          command: echo always ran
"#,
        img = image("base")
    ));
    let out = p.execute(&["--json"]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    assert_eq!(
        step_statuses(&out.events),
        ["success", "success", "skipped", "skipped", "success"]
    );
    assert!(step_output(&out.events, None, 1).contains("goes on to its end"));
    assert!(step_output(&out.events, None, 4).contains("always ran"));
    assert_eq!(
        step_output(&out.events, None, 2),
        "",
        "the step after the halt printed nothing"
    );
    p.assert_no_container_left();
}

/// Test `i` takes `i + 1` seconds (as its JUnit result says); 16 tests over 4 nodes.
const SPLIT_CONFIG: &str = r#"version: 2.1
jobs:
  test:
    docker: [{image: IMG}]
    parallelism: 4
    steps:
      - checkout
      - run:
          name: split
          command: |
            circleci tests glob "tests/**/test_*.py" | circleci tests split --split-by=timings > /tmp/mine
            echo "MINE $(cat /tmp/mine | tr '\n' ' ')"
            mkdir -p results
            {
              echo '<testsuites><testsuite name="t">'
              while read -r f; do
                echo "<testcase classname=\"t\" name=\"$f\" file=\"$f\" time=\"$(cat "$f")\"/>"
              done < /tmp/mine
              echo '</testsuite></testsuites>'
            } > results/junit.xml
      - store_test_results: {path: results}
"#;

/// Each node's tests, from its `MINE …` line.
fn shares(events: &[Value]) -> BTreeMap<u32, Vec<String>> {
    (0..4)
        .map(|n| {
            let text = step_output(events, Some(&format!("test.{n}")), 1);
            let line = text
                .lines()
                .find_map(|l| l.strip_prefix("MINE "))
                .unwrap_or_else(|| panic!("node {n} printed no share: {text}"))
                .to_owned();
            (n, line.split_whitespace().map(str::to_owned).collect())
        })
        .collect()
}

fn weight(test: &str) -> u64 {
    // tests/test_07.py → 8 seconds
    test.trim_start_matches("tests/test_")
        .trim_end_matches(".py")
        .parse::<u64>()
        .map(|i| i + 1)
        .unwrap_or_else(|_| panic!("not a test name: {test}"))
}

#[test]
fn tests_split_over_four_nodes_by_name_then_by_stored_timings() {
    ensure_images();
    let p = Project::new(&SPLIT_CONFIG.replace("IMG", &image("base")));
    std::fs::create_dir_all(p.path().join("tests")).expect("mkdir");
    for i in 0..16 {
        std::fs::write(
            p.path().join(format!("tests/test_{i:02}.py")),
            format!("{}\n", i + 1),
        )
        .expect("write");
    }
    harness::run(harness::git_in(p.path()).args(["add", "-A"]));
    harness::run(harness::git_in(p.path()).args(["commit", "-q", "-m", "tests"]));
    let all: Vec<String> = (0..16).map(|i| format!("tests/test_{i:02}.py")).collect();
    let check_once = |s: &BTreeMap<u32, Vec<String>>| {
        let mut got: Vec<String> = s.values().flatten().cloned().collect();
        got.sort();
        assert_eq!(got, all, "every test exactly once: {s:?}");
    };
    let loads = |s: &BTreeMap<u32, Vec<String>>| -> Vec<u64> {
        s.values()
            .map(|v| v.iter().map(|t| weight(t)).sum())
            .collect()
    };

    // No earlier run: by name, with a notice.
    let first = p.execute(&["--json", "--job", "test"]);
    assert_eq!(first.code, 0, "{}\n{}", first.stdout, first.stderr);
    let by_name = shares(&first.events);
    check_once(&by_name);
    assert!(
        step_output(&first.events, Some("test.0"), 1).contains("No timing found"),
        "{}",
        first.stdout
    );

    // The second run has the first run's timings (all four nodes' results).
    let second = p.execute(&["--json", "--job", "test"]);
    assert_eq!(second.code, 0, "{}\n{}", second.stdout, second.stderr);
    let by_time = shares(&second.events);
    check_once(&by_time);
    assert!(!step_output(&second.events, Some("test.0"), 1).contains("No timing found"));
    let (name_loads, time_loads) = (loads(&by_name), loads(&by_time));
    let total: u64 = time_loads.iter().sum();
    let max = |v: &[u64]| v.iter().copied().max().unwrap_or(0);
    // The bound of greedy list scheduling: the mean plus the longest test.
    assert!(
        max(&time_loads) as f64 <= total as f64 / 4.0 + 16.0,
        "{time_loads:?}"
    );
    // And better balanced than dealing names out in turn.
    assert!(
        max(&time_loads) < max(&name_loads),
        "by timings {time_loads:?}, by name {name_loads:?}"
    );
    p.assert_no_container_left();
}

#[test]
fn built_in_variables_are_set_in_circlecis_formats() {
    ensure_images();
    let p = Project::new(&format!(
        r#"version: 2.1
jobs:
  build:
    docker: [{{image: {img}}}]
    steps:
      - checkout
      - run: env | grep -E '^(CIRCLE|BASH_ENV|CI=)' | sort
"#,
        img = image("base")
    ));
    let vars = |out: &harness::Outcome| -> BTreeMap<String, String> {
        step_output(&out.events, None, 1)
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    };
    let first = p.execute(&["--json", "--build-num", "7"]);
    assert_eq!(first.code, 0, "{}\n{}", first.stdout, first.stderr);
    let v = vars(&first);
    let uuid = regex::Regex::new("^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
        .expect("regex");
    for k in [
        "CIRCLE_WORKFLOW_ID",
        "CIRCLE_WORKFLOW_JOB_ID",
        "CIRCLE_WORKFLOW_WORKSPACE_ID",
        "CIRCLE_PIPELINE_ID",
        "CIRCLE_PROJECT_ID",
        "CIRCLE_ORGANIZATION_ID",
    ] {
        assert!(
            uuid.is_match(v.get(k).map_or("", String::as_str)),
            "{k}: {v:?}"
        );
    }
    assert_eq!(v.get("CI").map(String::as_str), Some("true"));
    assert_eq!(v.get("CIRCLE_BUILD_NUM").map(String::as_str), Some("7"));
    assert_eq!(v.get("CIRCLE_JOB").map(String::as_str), Some("build"));
    assert_eq!(v.get("CIRCLE_BRANCH").map(String::as_str), Some("main"));
    assert!(v.get("CIRCLE_SHA1").is_some_and(|s| s.len() == 40));
    assert!(v.get("CIRCLE_USERNAME").is_some_and(|u| !u.is_empty()));
    assert_eq!(v.get("BASH_ENV"), v.get("CIRCLE_SHELL_ENV"));
    assert!(v.contains_key("CIRCLE_INTERNAL_TASK_DATA"));
    assert_ne!(v.get("CIRCLE_WORKFLOW_ID"), v.get("CIRCLE_WORKFLOW_JOB_ID"));
    // No page and no earlier build known to `bosun execute`: unset, not made up.
    assert!(!v.contains_key("CIRCLE_BUILD_URL"), "{v:?}");
    assert!(!v.contains_key("CIRCLE_PREVIOUS_BUILD_NUM"), "{v:?}");

    // A second run: the same project and organization, a new workflow.
    let second = p.execute(&["--json"]);
    let w = vars(&second);
    assert_eq!(v.get("CIRCLE_PROJECT_ID"), w.get("CIRCLE_PROJECT_ID"));
    assert_eq!(
        v.get("CIRCLE_ORGANIZATION_ID"),
        w.get("CIRCLE_ORGANIZATION_ID")
    );
    p.assert_no_container_left();
}

/// The parent of a step's shell, as the step sees it: the runner when the main process runs
/// the steps; under the engine's exec, a process outside the container (`$PPID` is 0).
const PARENT: &str = r#"if [ "$PPID" != 0 ]; then tr '\0' ' ' < /proc/$PPID/cmdline; echo; else echo "parent outside the container"; fi"#;

#[test]
fn steps_run_under_the_main_process_in_glibc_and_busybox_images_alike() {
    ensure_images();
    for (img, user) in [(image("base"), "circleci"), (image("nobash"), "root")] {
        let p = Project::new(&format!(
            r#"version: 2.1
jobs:
  build:
    docker: [{{image: {img}, user: {user}}}]
    steps:
      - run: {PARENT:?}
      - run:
          name: env, directory and exit code as an exec had them
          working_directory: /tmp
          environment: {{ONLY_HERE: "yes it is"}}
          command: |
            echo "only=$ONLY_HERE pwd=$(pwd) home=$HOME user=$(id -un)"
            exit 3
"#
        ));
        let r = p.execute(&["--json"]);
        assert_eq!(r.code, 1, "{img}: {}\n{}", r.stdout, r.stderr);
        let parent = step_output(&r.events, None, 0);
        assert!(
            parent.contains("__bosun-runner"),
            "{img}: the step's parent is `{parent}`"
        );
        let second = step_output(&r.events, None, 1);
        let home = if user == "root" {
            "/root"
        } else {
            "/home/circleci"
        };
        assert!(
            second.contains(&format!("only=yes it is pwd=/tmp home={home} user={user}")),
            "{img}: {second}"
        );
        assert_eq!(step_statuses(&r.events), ["success", "failed"], "{img}");
        let finished = r
            .events
            .iter()
            .find(|e| e["event"] == "step_finished" && e["step"] == 1)
            .expect("step 1 finished");
        assert_eq!(finished["exit_code"], 3, "{img}");
    }
}

#[test]
fn a_step_that_kills_the_runner_fails_alone_and_the_job_goes_on_through_exec() {
    ensure_images();
    // A step may kill whatever runs as its user (`pkill`, `kill -9 -1` in a cleanup script):
    // the runner too. The step that did it fails with the reason, the agent carries on, and
    // the next steps run through the engine's exec.
    let p = Project::new(&format!(
        r#"version: 2.1
jobs:
  build:
    docker: [{{image: {img}}}]
    steps:
      - run: kill -9 $PPID; sleep 1; echo after
      - run:
          when: always
          command: {PARENT:?}
"#,
        img = image("base")
    ));
    let r = p.execute(&["--json"]);
    assert_eq!(r.code, 1, "{}\n{}", r.stdout, r.stderr);
    assert_eq!(step_statuses(&r.events), ["failed", "success"]);
    let first = step_output(&r.events, None, 0);
    assert!(
        first.contains("lost the step's output") && first.contains("the step runner ended"),
        "{first}"
    );
    let parent = step_output(&r.events, None, 1);
    assert!(parent.contains("parent outside the container"), "{parent}");
}

#[test]
fn a_step_cannot_write_into_the_runners_stream_as_its_user_or_as_root() {
    ensure_images();
    // The runner is not dumpable: its /proc/PID/fd is closed to the job's processes, root
    // included (the engine grants no CAP_SYS_PTRACE), so no step can write frames and pose as
    // the runner. Without it the same write succeeds for a step of the runner's own user.
    for user in ["circleci", "root"] {
        let p = Project::new(&format!(
            r#"version: 2.1
jobs:
  build:
    docker: [{{image: {img}, user: {user}}}]
    steps:
      - run: |
          if printf '\377\377\377\377' > /proc/$PPID/fd/1; then echo wrote; else echo refused; fi
      - run: {PARENT:?}
"#,
            img = image("base")
        ));
        let r = p.execute(&["--json"]);
        assert_eq!(r.code, 0, "{user}: {}\n{}", r.stdout, r.stderr);
        let first = step_output(&r.events, None, 0);
        assert!(first.contains("refused"), "{user}: {first}");
        assert!(
            step_output(&r.events, None, 1).contains("__bosun-runner"),
            "{user}"
        );
    }
}

#[test]
fn on_a_local_engine_the_main_process_is_the_mounted_executable_which_no_step_can_change() {
    ensure_images();
    // No shell starts the container and no copy of the in-job executable goes through the
    // setup archive: the engine's init runs the job's own copy, mounted read-only, and
    // `circleci` in the job links to it and still finds the job's runtime directory.
    let p = Project::new(&format!(
        r#"version: 2.1
jobs:
  build:
    docker: [{{image: {img}, user: root}}]
    steps:
      - run: tr '\0' ' ' < /proc/1/cmdline; echo
      - run: |
          if chmod 777 /.bosun-runtime/circleci; then echo writable; else echo read-only; fi
          if rm -f /.bosun-runtime/circleci; then echo removable; fi
          readlink "$CIRCLE_INTERNAL_TASK_DATA/bin/circleci"
      - run: circleci step halt
      - run: echo must-not-run
"#,
        img = image("base")
    ));
    let r = p.execute(&["--json"]);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    let init = step_output(&r.events, None, 0);
    assert!(
        init.contains("/.bosun-runtime/circleci __bosun-main"),
        "the main process: {init}"
    );
    let second = step_output(&r.events, None, 1);
    // Root may chmod any file; a read-only mount refuses (EROFS).
    assert!(
        second.contains("read-only") && second.contains("Read-only file system"),
        "{second}"
    );
    assert!(!second.contains("writable"), "{second}");
    assert!(!second.contains("removable"), "{second}");
    assert!(second.contains("/.bosun-runtime/circleci\n"), "{second}");
    assert_eq!(
        step_output(&r.events, None, 3),
        "",
        "the step after the halt"
    );
    assert_eq!(
        step_statuses(&r.events),
        ["success", "success", "success", "skipped"]
    );
    p.assert_no_container_left();
}

//! Caches and workspace layers written in place into a job's mounted working directory on
//! the host (`job::in_place`), with the real `bosun` binary and the Docker engine: what the
//! container sees is byte for byte and owner for owner what was saved, and a job that plants
//! links to a host directory in its working directory (the agent is root on the host) gets
//! its cache and workspace without anything written there.

use crate::harness::{self, ensure_images, image, Project};
use std::path::{Path, PathBuf};

/// What a job prints of `node_modules` and `ws/out`: every entry's type, mode, owner, link
/// count and link target, and every file's checksum, between `BEGIN-<tag>` and `END-<tag>`.
fn listing(tag: &str, ws: &str) -> String {
    format!(
        r#"      - run:
          name: list {tag}
          command: |
            echo BEGIN-{tag}
            for d in node_modules {ws}/out; do
              (cd $d && find . -printf '%p %y %m %u:%g %n %l\n' | sort && find . -type f | sort | xargs md5sum)
            done
            echo END-{tag}
"#
    )
}

/// Every job's step output of a workflow run with `--json`, in order.
fn workflow_output(events: &[serde_json::Value]) -> String {
    events
        .iter()
        .filter(|e| e["event"] == "job" && e["inner"]["event"] == "output")
        .filter_map(|e| e["inner"]["data"].as_str())
        .collect()
}

fn between(text: &str, tag: &str) -> String {
    let begin = format!("BEGIN-{tag}\n");
    let start = text
        .find(&begin)
        .map(|i| i + begin.len())
        .unwrap_or_else(|| panic!("no {begin:?} in\n{text}"));
    let end = text[start..]
        .find(&format!("END-{tag}"))
        .unwrap_or_else(|| panic!("no END-{tag} in\n{text}"));
    text[start..start + end].to_owned()
}

/// A job `make` that makes `node_modules` and `out` (files of several sizes and modes, a
/// symbolic link, a hard link), saves the one as a cache and persists the other, and a job
/// `use` (after `setup`, its steps) that restores and attaches them in its working
/// directory, `ws` the workspace's place; both list what they have.
fn config(setup: &str, ws: &str) -> String {
    format!(
        r#"version: 2.1
jobs:
  make:
    docker: [{{image: {img}, user: circleci}}]
    steps:
      - checkout
      - run: |
          mkdir -p node_modules/a/lib node_modules/b out/sub
          head -c 300000 /dev/urandom > node_modules/a/lib/big.js && chmod 755 node_modules/a/lib/big.js
          printf '{{"name": "a"}}' > node_modules/a/package.json
          ln node_modules/a/package.json node_modules/b/same.json
          ln -s ../a/lib/big.js node_modules/b/cmd
          : > node_modules/b/empty
          printf 'layer' > out/sub/f && chmod 600 out/sub/f
      - save_cache: {{key: nm-v1, paths: [node_modules]}}
      - persist_to_workspace: {{root: ., paths: [out]}}
{list_make}
  use:
    docker: [{{image: {img}, user: circleci}}]
    steps:
      - checkout
{setup}
      - restore_cache: {{keys: [nm-v1]}}
      - attach_workspace: {{at: {ws}}}
{list_use}
workflows:
  main:
    jobs: [make, {{use: {{requires: [make]}}}}]
"#,
        img = image("base"),
        list_make = listing("make", "."),
        list_use = listing("use", ws),
        setup = setup
            .lines()
            .map(|l| format!("      {l}\n"))
            .collect::<String>(),
    )
}

/// A directory on the host with one file, `keep` ("untouched"), for a job to aim links at.
fn victim() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("bosun-victim-{}", harness::new_run_id()));
    std::fs::create_dir(&dir).expect("victim dir");
    std::fs::write(dir.join("keep"), "untouched").expect("victim file");
    dir
}

fn assert_untouched(victim: &Path, out: &str) {
    let names: Vec<String> = std::fs::read_dir(victim)
        .expect("victim dir")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    let keep = std::fs::read_to_string(victim.join("keep")).unwrap_or_default();
    let _ = std::fs::remove_dir_all(victim);
    assert_eq!(
        (names, keep.as_str()),
        (vec!["keep".to_owned()], "untouched"),
        "the job wrote into {} on the host:\n{out}",
        victim.display()
    );
}

#[test]
fn a_cache_and_a_workspace_come_back_in_place_byte_for_byte_and_owned_by_the_job() {
    ensure_images();
    let p = Project::new(&config("- run: ':'", "ws"));
    let out = p.execute(&["--workflow", "main", "--json"]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    let text = workflow_output(&out.events);
    let (made, got) = (between(&text, "make"), between(&text, "use"));
    assert_eq!(made, got, "what `use` got differs from what `make` saved");
    // The owner is the job's user (3434 in the image), the hard link a link.
    assert!(
        made.contains("./b/same.json f 644 circleci:circleci 2"),
        "{made}"
    );
    assert!(
        made.contains("./b/cmd l 777 circleci:circleci 1 ../a/lib/big.js"),
        "{made}"
    );
    assert!(made.contains("./sub/f f 600 circleci:circleci 1"), "{made}");
    assert!(
        out.stdout.contains("restored nm-v1") && out.stdout.contains(", in place"),
        "the cache did not go in place:\n{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("(from make), in place"),
        "the workspace did not go in place:\n{}",
        out.stdout
    );
    p.assert_no_container_left();
}

/// The job plants links to a host directory where the cache writes a file and where the
/// workspace goes through: the cache replaces its link (as the archive API would), the
/// workspace goes through the engine (which follows the link inside the container), and
/// the host directory is never written.
#[test]
fn links_a_job_plants_to_a_host_directory_are_never_followed_on_the_host() {
    ensure_images();
    let victim = victim();
    let v = victim.display();
    let p = Project::new(&config(
        &format!(
            "- run: |\n    mkdir -p node_modules/a {v}\n    ln -s {v}/keep node_modules/a/package.json\n    ln -s {v} ws"
        ),
        "ws",
    ));
    let out = p.execute(&["--workflow", "main", "--json"]);
    assert_untouched(&victim, &out.stdout);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    let text = workflow_output(&out.events);
    assert_eq!(between(&text, "make"), between(&text, "use"));
    assert!(
        out.stdout.contains("restored nm-v1") && out.stdout.contains("MB), in place"),
        "the cache did not go in place:\n{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("(from make)") && !out.stdout.contains("(from make), in place"),
        "the workspace through a link went in place:\n{}",
        out.stdout
    );
    p.assert_no_container_left();
}

/// A background step swaps the cache's directories for links to a host directory, over and
/// over, while the cache and the workspace are restored: whatever the job ends up with, the
/// host directory is never written.
#[test]
fn a_background_step_swapping_directories_for_links_gets_nothing_written_on_the_host() {
    ensure_images();
    let victim = victim();
    let v = victim.display();
    let p = Project::new(&config(
        &format!(
            r#"- run: mkdir -p node_modules/a/lib ws
- run:
    background: true
    command: |
      end=$((SECONDS + 20))
      while [ $SECONDS -lt $end ]; do
        for d in node_modules/a/lib node_modules/a node_modules ws/out ws; do
          if mv -T $d $d.x 2>/dev/null; then ln -sfn {v} $d; rm -f $d; mv -T $d.x $d; fi
        done
      done
- run: sleep 0.5"#
        ),
        "ws",
    ));
    let out = p.execute(&["--workflow", "main", "--json"]);
    assert_untouched(&victim, &out.stdout);
    p.assert_no_container_left();
}

/// The read-only shared objects (hard links to the mirror's packs on the host) are never
/// written in place, wherever the job moved them: a cache holding `g/bosun-shared-objects/…`
/// restored after the job renamed `.git` to `g` goes to the engine. (The engine itself then
/// writes there: it mounts the read-only directory again at its configured path for the
/// archive API, where the renamed one no longer is: entries the job sees in its read-only
/// directory. Read, not tested: the engine unlinks a file in the way rather than writing
/// through it, and a hard link in a stored cache names an entry of the same cache, so the
/// mirror's files themselves should not be reached that way.)
#[test]
fn the_shared_objects_are_never_written_in_place_even_after_the_job_renames_git() {
    ensure_images();
    let p = Project::new(&format!(
        r#"version: 2.1
jobs:
  plant:
    docker: [{{image: {img}, user: circleci}}]
    working_directory: /home/circleci/elsewhere
    steps:
      - run: |
          mkdir -p /home/circleci/project/g/bosun-shared-objects
          echo evil > /home/circleci/project/g/bosun-shared-objects/planted
      - save_cache: {{key: g-v1, paths: [/home/circleci/project/g]}}
  use:
    docker: [{{image: {img}, user: circleci}}]
    steps:
      - checkout
      - run: mv .git g && ls g/bosun-shared-objects
      - restore_cache: {{keys: [g-v1]}}
      - run:
          when: always
          command: |
            ls -la g/bosun-shared-objects
workflows:
  main:
    jobs: [plant, {{use: {{requires: [plant]}}}}]
"#,
        img = image("base")
    ));
    let out = p.execute(&["--workflow", "main", "--json"]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    assert!(
        out.stdout.contains("restored g-v1") && !out.stdout.contains(", in place"),
        "the cache went in place:\n{}",
        out.stdout
    );
    p.assert_no_container_left();
}

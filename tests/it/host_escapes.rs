//! What a job's config can do to the agent's host through the local store (issue 12, items
//! 1–3), tried through `bosun execute` against the real engine: an artifact destination that
//! climbs out of the store, one project's cache planted for another, hard links in caches,
//! workspaces and artifacts.

use crate::harness;

use crate::harness::{ensure_images, image, Project};
use std::path::{Path, PathBuf};

/// Every file under `dir` whose name is `name`.
fn find_files(dir: &Path, name: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() && !p.is_symlink() {
                todo.push(p);
            } else if p.file_name().is_some_and(|n| n == name) {
                found.push(p);
            }
        }
    }
    found
}

#[test]
fn an_artifact_destination_climbing_out_of_the_store_stays_inside_it() {
    ensure_images();
    let escape = std::env::temp_dir().join(format!("bosun-escape-{}", harness::new_run_id()));
    let p = Project::new(&format!(
        r#"version: 2.1
jobs:
  build:
    docker: [{{image: {img}}}]
    steps:
      - run: mkdir -p out && echo planted > out/escaped.txt
      - store_artifacts:
          path: out
          destination: ../../../../../../../../../../..{escape}
"#,
        img = image("base"),
        escape = escape.display()
    ));
    let out = p.execute(&["--json"]);
    let planted = escape.join("escaped.txt").exists();
    let _ = std::fs::remove_dir_all(&escape);
    assert!(!planted, "store_artifacts wrote {}", escape.display());
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    let inside = find_files(p.store.path(), "escaped.txt");
    assert_eq!(inside.len(), 1, "{inside:?}\n{}", out.stdout);
    p.assert_no_container_left();
}

/// A job of project `p` that saves `~/deps/who` (= `$WHO`) as cache `shared-v1` or restores
/// it and prints `who=…`.
fn cache_config() -> String {
    format!(
        r#"version: 2.1
jobs:
  save:
    docker: [{{image: {img}, user: circleci}}]
    steps:
      - run: mkdir -p ~/deps && echo "$WHO" > ~/deps/who
      - save_cache: {{key: shared-v1, paths: [~/deps]}}
  check:
    docker: [{{image: {img}, user: circleci}}]
    steps:
      - restore_cache: {{keys: [shared-v1]}}
      - run: echo "who=$(cat ~/deps/who 2>/dev/null || echo none)"
"#,
        img = image("base")
    )
}

#[test]
fn one_projects_cache_is_not_restored_by_another_project_sharing_the_store() {
    ensure_images();
    let attacker = Project::new(&cache_config());
    let victim = Project::new(&cache_config());
    let store = attacker.store.path().to_str().expect("utf8");
    let saved = attacker.execute_env(
        &["--job", "save", "--env", "WHO=attacker"],
        &[("BOSUN_STORE", store)],
    );
    assert_eq!(saved.code, 0, "{}\n{}", saved.stdout, saved.stderr);
    assert!(
        saved.stdout.contains("Stored cache shared-v1"),
        "{}",
        saved.stdout
    );
    let checked = victim.execute_env(&["--job", "check"], &[("BOSUN_STORE", store)]);
    assert_eq!(checked.code, 0, "{}\n{}", checked.stdout, checked.stderr);
    assert!(
        checked.stdout.contains("who=none"),
        "another project's cache was restored:\n{}",
        checked.stdout
    );
    // The project's own cache still comes back.
    let own = attacker.execute_env(&["--job", "check"], &[("BOSUN_STORE", store)]);
    assert!(own.stdout.contains("who=attacker"), "{}", own.stdout);
}

#[test]
fn hard_links_survive_caches_workspaces_and_artifacts() {
    ensure_images();
    let p = Project::new(&format!(
        r#"version: 2.1
jobs:
  build:
    docker: [{{image: {img}, user: circleci}}]
    steps:
      - run: |
          mkdir -p ~/deps /tmp/ws
          echo cached > ~/deps/a && ln ~/deps/a ~/deps/b
          echo shared > /tmp/ws/a && ln /tmp/ws/a /tmp/ws/b && ln /tmp/ws/a /tmp/ws/c
      - save_cache: {{key: links-v1, paths: [~/deps]}}
      - persist_to_workspace: {{root: /tmp/ws, paths: [a, b]}}
      # Only the link: its target stays out of this layer.
      - persist_to_workspace: {{root: /tmp/ws, paths: [c]}}
      - store_artifacts: {{path: ~/deps, destination: deps}}
  use:
    docker: [{{image: {img}, user: circleci}}]
    steps:
      - restore_cache: {{keys: [links-v1]}}
      - attach_workspace: {{at: /tmp/attached}}
      - run: echo "got $(cat ~/deps/a) $(cat ~/deps/b) $(cat /tmp/attached/b) $(cat /tmp/attached/c)"
workflows:
  main:
    jobs: [build, {{use: {{requires: [build]}}}}]
"#,
        img = image("base")
    ));
    let out = p.execute(&["--workflow", "main"]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    assert!(
        out.stdout.contains("got cached cached shared shared"),
        "{}",
        out.stdout
    );
    // Both names of the hard-linked file are artifacts.
    let arts: Vec<PathBuf> = ["a", "b"]
        .iter()
        .flat_map(|n| find_files(p.store.path(), n))
        .filter(|f| f.parent().is_some_and(|d| d.ends_with("deps")))
        .collect();
    assert_eq!(arts.len(), 2, "{arts:?}\n{}", out.stdout);
    for a in arts {
        assert_eq!(std::fs::read_to_string(&a).expect("artifact"), "cached\n");
    }
    p.assert_no_container_left();
}

//! Compatibility with what real configs and real orbs write (issue 13), and the expansion
//! budgets (issue 12, item 5). Each test failed on the compiler before its fix.

use bosun::config::{
    compile, compile_job_with, process, resolve_pin, CompileOptions, JobPlan, OrbDir,
    PipelineValues, StepKind, When,
};
use std::time::{Duration, Instant};

fn opts() -> CompileOptions<'static> {
    CompileOptions::default()
}

fn job(text: &str, name: &str) -> JobPlan {
    compile_job_with(text, "config.yml", name, &opts()).unwrap_or_else(|e| panic!("{e}"))
}

fn commands(plan: &JobPlan) -> Vec<String> {
    plan.steps
        .iter()
        .filter_map(|s| match &s.kind {
            StepKind::Run(r) => Some(r.command.clone()),
            _ => None,
        })
        .collect()
}

// ------------------------------------------------------------------ mustache sections

const SECTIONS: &str = r#"version: 2.1
commands:
  ls:
    parameters:
      all: {type: boolean, default: false}
      short: {type: boolean, default: true}
      flags: {type: string, default: ""}
      count: {type: integer, default: 0}
    steps:
      - run: ls<<# parameters.all >> -a<</ parameters.all >><<^parameters.short>> -l<</parameters.short>><<#parameters.flags>> -F << parameters.flags >><</parameters.flags>>
      - run: echo <<#parameters.count>>count=<<parameters.count>><</parameters.count>><<^parameters.count>>none<</parameters.count>>
jobs:
  build:
    docker: [{image: cimg/base:current}]
    steps:
      - ls
      - ls: {all: true, short: false, flags: "x y", count: 3}
      - run: git diff <<#pipeline.git.base_revision>><<pipeline.git.base_revision>>..<</pipeline.git.base_revision>>HEAD
"#;

#[test]
fn sections_render_by_truthiness_with_or_without_spaces() {
    let plan = job(SECTIONS, "build");
    assert_eq!(
        commands(&plan),
        vec![
            "ls".to_owned(),
            "echo none".to_owned(),
            "ls -a -l -F x y".to_owned(),
            "echo count=3".to_owned(),
            "git diff HEAD".to_owned(),
        ]
    );
    // A pipeline value in a section: a base revision turns the section on.
    let pipeline = PipelineValues {
        git_base_revision: "abc123".to_owned(),
        ..PipelineValues::default()
    };
    let o = CompileOptions {
        pipeline,
        ..CompileOptions::default()
    };
    let plan = compile_job_with(SECTIONS, "config.yml", "build", &o).expect("compiles");
    assert_eq!(commands(&plan)[4], "git diff abc123..HEAD");
}

#[test]
fn nested_and_escaped_sections() {
    let text = r#"version: 2.1
jobs:
  build:
    parameters:
      a: {type: boolean, default: true}
      b: {type: string, default: ""}
    docker: [{image: cimg/base:current}]
    steps:
      - run: x<<#parameters.a>>[a<<^parameters.b>>(no b)<</parameters.b>>]<</parameters.a>> \<<#not>>
"#;
    assert_eq!(commands(&job(text, "build")), vec!["x[a(no b)] <<#not>>"]);
}

#[test]
fn unclosed_or_unopened_sections_are_errors_at_the_scalar() {
    for (body, want) in [
        (
            "<<#parameters.a>>x",
            "section `<<#parameters.a>>` is not closed",
        ),
        ("x<</parameters.a>>", "closes a section that was not opened"),
    ] {
        let text = format!(
            "version: 2.1\njobs:\n  build:\n    parameters:\n      a: {{type: boolean, default: true}}\n    docker: [{{image: cimg/base:current}}]\n    steps:\n      - run: {body}\n"
        );
        let errs = compile(&text, "config.yml", &opts()).expect_err("refused");
        let e = errs[0].to_string();
        assert!(e.starts_with("config.yml:8:14: "), "{e}");
        assert!(e.contains(want), "{e}");
    }
}

// ------------------------------------------------------------------ executor parameters

const EXECUTOR_LOGIC: &str = r#"version: 2.1
executors:
  linux_build: &linux_build_executor
    docker: [{image: cimg/rust:1.80}]
  mac_build: &mac_build_executor
    docker: [{image: cimg/base:current}]
    resource_class: large
commands:
  package:
    parameters:
      platform: {type: executor}
    steps:
      - when:
          condition:
            equal: [*linux_build_executor, << parameters.platform >>]
          steps:
            - run: make package-linux
      - unless:
          condition:
            equal: [*linux_build_executor, << parameters.platform >>]
          steps:
            - run: make package-other
      - run: echo built on << parameters.platform >>
jobs:
  build:
    parameters:
      platform: {type: executor}
    executor: << parameters.platform >>
    steps:
      - package: {platform: << parameters.platform >>}
workflows:
  main:
    jobs:
      - build:
          matrix:
            parameters:
              platform: [linux_build, mac_build]
"#;

#[test]
fn executor_parameter_compares_as_the_executor_definition() {
    let linux = job(EXECUTOR_LOGIC, "build-linux_build");
    assert_eq!(linux.image, "cimg/rust:1.80");
    assert_eq!(
        commands(&linux),
        vec!["make package-linux", "echo built on linux_build"]
    );
    let mac = job(EXECUTOR_LOGIC, "build-mac_build");
    assert_eq!(mac.image, "cimg/base:current");
    assert_eq!(
        commands(&mac),
        vec!["make package-other", "echo built on mac_build"]
    );
}

// ------------------------------------------------------------------ pipeline values

#[test]
fn every_documented_pipeline_value_resolves() {
    let text = r#"version: 2.1
jobs:
  build:
    docker: [{image: cimg/base:current}]
    steps:
      - run: echo "<< pipeline.project.slug >>|<< pipeline.id >>|<< pipeline.number >>|<< pipeline.schedule.name >>|<< pipeline.trigger_parameters.gitlab.branch >>|<< pipeline.git.repo_name >>|<< pipeline.event.name >>"
"#;
    let pipeline = PipelineValues {
        project_git_url: "git@bitbucket.org:acme/widget.git".to_owned(),
        project_type: "bitbucket".to_owned(),
        number: 7,
        schedule_name: "nightly".to_owned(),
        extra: vec![("event.name".to_owned(), "push".to_owned())],
        ..PipelineValues::default()
    };
    let o = CompileOptions {
        pipeline,
        ..CompileOptions::default()
    };
    let plan = compile_job_with(text, "config.yml", "build", &o).expect("compiles");
    assert_eq!(
        commands(&plan),
        vec![
            "echo \"bitbucket/acme/widget|00000000-0000-0000-0000-000000000001|7|nightly||widget|push\""
        ]
    );
    let https = PipelineValues {
        project_git_url: "https://github.com/acme/widget".to_owned(),
        ..PipelineValues::default()
    };
    assert_eq!(https.derived_slug(), "github/acme/widget");
    for name in PipelineValues::NAMES {
        let t = format!(
            "version: 2.1\njobs:\n  build:\n    docker: [{{image: x}}]\n    steps:\n      - run: echo << pipeline.{name} >>\n"
        );
        compile(&t, "config.yml", &opts()).unwrap_or_else(|e| panic!("{name}: {e:?}"));
    }
    let t = "version: 2.1\njobs:\n  build:\n    docker: [{image: x}]\n    steps:\n      - run: echo << pipeline.trigger_parameters.nope.x >>\n";
    let e = compile(t, "config.yml", &opts()).expect_err("unknown");
    assert!(e[0].message.contains("Unknown variable(s)"), "{e:?}");
}

// ------------------------------------------------------------------ serial-group, override-with

#[test]
fn serial_group_and_override_with_are_kept_in_process_output() {
    let text = r#"version: 2.1
orbs:
  tools:
    jobs:
      deploy:
        docker: [{image: cimg/base:current}]
        steps: [{run: echo orb deploy}]
jobs:
  deploy:
    docker: [{image: cimg/base:current}]
    steps: [{run: echo local deploy}]
workflows:
  main:
    jobs:
      - deploy:
          serial-group: << pipeline.project.slug >>/deploy
          override-with: tools/deploy
"#;
    let pipeline = PipelineValues {
        project_git_url: "git@bitbucket.org:acme/widget.git".to_owned(),
        project_type: "bitbucket".to_owned(),
        ..PipelineValues::default()
    };
    let o = CompileOptions {
        pipeline,
        ..CompileOptions::default()
    };
    let c = compile(text, "config.yml", &o).expect("compiles");
    let y = c.to_yaml();
    assert!(
        y.contains("serial-group: bitbucket/acme/widget/deploy"),
        "{y}"
    );
    assert!(y.contains("override-with: tools/deploy"), "{y}");
    let j = &c.workflows[0].jobs[0];
    assert_eq!(
        j.serial_group.as_deref(),
        Some("bitbucket/acme/widget/deploy")
    );
    assert!(
        y.contains("echo orb deploy"),
        "the orb's job replaces it: {y}"
    );

    let bad = text.replace("<< pipeline.project.slug >>/deploy", "\"deploy now\"");
    let e = compile(&bad, "config.yml", &o).expect_err("blank in group");
    assert!(
        e[0].to_string()
            .contains("main.jobs[0].deploy.serial-group: serial-group `deploy now` contains ` `"),
        "{e:?}"
    );
}

// ------------------------------------------------------------------ filtered workflows

#[test]
fn all_workflows_filtered_is_circleci_s_error() {
    let text = r#"version: 2.1
parameters:
  run-nightly: {type: boolean, default: false}
jobs:
  build:
    docker: [{image: cimg/base:current}]
    steps: [{run: make}]
workflows:
  nightly:
    when: << pipeline.parameters.run-nightly >>
    jobs: [build]
"#;
    let errs = compile(text, "config.yml", &opts()).expect_err("nothing runs");
    let e = errs[0].to_string();
    assert!(
        e.starts_with(
            "config.yml:9:3: workflows: All Workflows have been filtered from this Pipeline."
        ),
        "{e}"
    );
    assert!(e.contains("--pipeline-param run-nightly=VALUE"), "{e}");
    // `bosun execute` goes through the same compile.
    let e = compile_job_with(text, "config.yml", "build", &opts()).expect_err("nothing runs");
    assert!(
        e.message.contains("All Workflows have been filtered"),
        "{e}"
    );
    let o = CompileOptions {
        pipeline: PipelineValues {
            parameters: vec![("run-nightly".to_owned(), "true".to_owned())],
            ..PipelineValues::default()
        },
        ..CompileOptions::default()
    };
    assert!(compile(text, "config.yml", &o).is_ok());
}

// ------------------------------------------------------------------ forms real configs use

#[test]
fn forms_real_configs_use_compile() {
    let text = r#"version: 2.1
shell_step: &shell_step
  type: shell
  name: Initialize
  pwd: /
  command: mkdir -p ~/go
jobs:
  build:
    docker:
      - image: cimg/base:current
      - image: redis:7
        ports: ["6379:6379"]
    environment: TOXENV=py312
    steps:
      - <<: *shell_step
      - checkout:
          directory: src
      - restore_cache:
          key: deps
          paths: [~/.cache]
      - run:
          command: make
          environment:
            - A=1
            - B=two=2
      - store_artifacts:
          path: logs
          when: on_fail
"#;
    let c = compile(text, "config.yml", &opts()).expect("compiles");
    let plan = job(text, "build");
    assert_eq!(plan.environment, vec![("TOXENV".into(), "py312".into())]);
    let first = &plan.steps[0];
    assert_eq!(first.name, "Initialize");
    match &first.kind {
        StepKind::Run(r) => {
            assert_eq!(r.command, "mkdir -p ~/go");
            assert_eq!(r.working_directory.as_deref(), Some("/"));
        }
        k => panic!("{k:?}"),
    }
    match &plan.steps[3].kind {
        StepKind::Run(r) => assert_eq!(
            r.environment,
            vec![("A".into(), "1".into()), ("B".into(), "two=2".into())]
        ),
        k => panic!("{k:?}"),
    }
    assert_eq!(plan.steps[4].when, When::OnFail);
    let warned: Vec<String> = c.warnings.iter().map(|w| w.to_string()).collect();
    for want in [
        "config.yml:12:16: jobs.build.docker[1].ports: `ports` is ignored",
        "config.yml:17:22: jobs.build.steps[1].checkout.directory: `directory` is ignored",
        "config.yml:20:18: jobs.build.steps[2].restore_cache.paths: `paths` is ignored",
    ] {
        assert!(
            warned.iter().any(|w| w.starts_with(want)),
            "{want}\n{warned:#?}"
        );
    }
    let bad = text.replace("type: shell", "type: cache-save");
    let e = compile(&bad, "config.yml", &opts()).expect_err("unknown old form");
    assert!(
        e[0].to_string()
            .contains("the old step form `type: cache-save`"),
        "{e:?}"
    );
}

// ------------------------------------------------------------------ generated names

#[test]
fn unnamed_repeats_are_numbered_across_workflows() {
    let text = r#"version: 2.1
jobs:
  build:
    docker: [{image: cimg/base:current}]
    steps: [{run: make}]
  test:
    docker: [{image: cimg/base:current}]
    steps: [{run: make test}]
workflows:
  commit:
    jobs:
      - build
      - test: {requires: [build]}
  nightly:
    jobs:
      - build
      - test: {requires: [build]}
"#;
    let c = compile(text, "config.yml", &opts()).expect("compiles");
    let names: Vec<(String, Vec<String>)> = c
        .workflows
        .iter()
        .flat_map(|w| &w.jobs)
        .map(|j| (j.name.clone(), j.requires.clone()))
        .collect();
    assert_eq!(
        names,
        vec![
            ("build-1".to_owned(), vec![]),
            ("test-1".to_owned(), vec!["build-1".to_owned()]),
            ("build-2".to_owned(), vec![]),
            ("test-2".to_owned(), vec!["build-2".to_owned()]),
        ]
    );
    let y = c.to_yaml();
    for n in ["build-1:", "build-2:", "test-1:", "test-2:"] {
        assert!(y.contains(n), "{n}\n{y}");
    }
}

// ------------------------------------------------------------------ expansion budgets

/// Forty lines: seven levels of commands each calling the next ten times make 10^7 steps.
fn bomb() -> String {
    let mut s =
        String::from("version: 2.1\ncommands:\n  c7:\n    steps:\n      - run: echo leaf\n");
    for level in (0..7).rev() {
        s.push_str(&format!("  c{level}:\n    steps:\n"));
        for _ in 0..10 {
            s.push_str(&format!("      - c{}\n", level + 1));
        }
    }
    s.push_str("jobs:\n  build:\n    docker: [{image: cimg/base:current}]\n    steps: [c0]\n");
    s
}

#[test]
fn a_command_bomb_stops_at_the_step_budget_with_its_chain() {
    let text = bomb();
    assert!(text.lines().count() <= 100, "a small config");
    let t = Instant::now();
    let errs = compile(&text, "bomb.yml", &opts()).expect_err("over budget");
    assert!(t.elapsed() < Duration::from_secs(20), "{:?}", t.elapsed());
    let e = errs[0].to_string();
    assert!(
        e.contains("the config expands to more than 100000 steps in command `c7` (called through c0 → c1 → c2 → c3 → c4 → c5 → c6 → c7)"),
        "{e}"
    );
    // The position is the step inside the innermost command.
    assert!(
        e.starts_with("bomb.yml:5:9: commands.c7.steps[0].run"),
        "{e}"
    );
    // `bosun execute` compiles the same way.
    let e = compile_job_with(&text, "bomb.yml", "build", &opts()).expect_err("over budget");
    assert!(e.message.contains("more than 100000 steps"), "{e}");
}

#[test]
fn a_parameter_doubled_at_every_level_stops_at_the_size_budget() {
    // Each level passes `<<p>><<p>>` on: 2^30 bytes at the bottom.
    let mut s = String::from("version: 2.1\ncommands:\n");
    for level in 0..30 {
        s.push_str(&format!(
            "  d{level}:\n    parameters:\n      p: {{type: string}}\n    steps:\n      - d{}: {{p: \"<<parameters.p>><<parameters.p>>\"}}\n",
            level + 1
        ));
    }
    s.push_str("  d30:\n    parameters:\n      p: {type: string}\n    steps:\n      - run: echo << parameters.p >>\n");
    s.push_str(
        "jobs:\n  build:\n    docker: [{image: x}]\n    steps:\n      - d0: {p: abcdefgh}\n",
    );
    let t = Instant::now();
    let errs = compile(&s, "double.yml", &opts()).expect_err("over budget");
    assert!(t.elapsed() < Duration::from_secs(20), "{:?}", t.elapsed());
    assert!(
        errs[0]
            .message
            .contains("expands to more than 8 MiB of text"),
        "{errs:?}"
    );
}

// ------------------------------------------------------------------ orb pins and trees

#[test]
fn version_pins_pick_the_newest_match() {
    let v: Vec<String> = ["2.1.9", "2.2.0", "2.2.10", "2.10.1", "3.0.0", "dev:x"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(resolve_pin("2.2", &v).as_deref(), Some("2.2.10"));
    assert_eq!(resolve_pin("2", &v).as_deref(), Some("2.10.1"));
    assert_eq!(resolve_pin("volatile", &v).as_deref(), Some("3.0.0"));
    assert_eq!(resolve_pin("2.1.9", &v).as_deref(), Some("2.1.9"));
    assert_eq!(resolve_pin("4", &v), None);
    assert_eq!(resolve_pin("dev:x", &v), None);
}

#[test]
fn orb_dir_serves_source_trees_and_pins_and_names_import_chains() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tree = dir.path().join("acme/tools@1.4.2/src");
    std::fs::create_dir_all(tree.join("commands")).expect("mkdir");
    std::fs::create_dir_all(tree.join("scripts")).expect("mkdir");
    std::fs::write(
        tree.join("@orb.yml"),
        "version: 2.1\norbs:\n  helper: acme/helper@1\n",
    )
    .expect("write");
    std::fs::write(
        tree.join("commands/greet.yml"),
        "steps:\n  - helper/hello\n  - run:\n      name: greet\n      command: <<include(scripts/greet.sh)>>\n",
    )
    .expect("write");
    std::fs::write(tree.join("scripts/greet.sh"), "cat <<EOF\nhi\nEOF\n").expect("write");
    let config = "version: 2.1\norbs:\n  tools: acme/tools@1.4\njobs:\n  build:\n    docker: [{image: x}]\n    steps: [tools/greet]\n";
    let loader = OrbDir(dir.path().to_path_buf());
    let o = CompileOptions {
        orbs: Some(&loader),
        orb_dir: Some("vendor".to_owned()),
        ..CompileOptions::default()
    };
    // The helper orb is missing: the error names who needs it.
    let e = compile(config, "config.yml", &o).expect_err("helper missing");
    let msg = e[0].to_string();
    assert!(
        msg.contains("Cannot find acme/helper@1: orb `helper` is not inline and not vendored, needed by acme/tools@1.4.2 (imported as `tools` by the config)"),
        "{msg}"
    );
    std::fs::create_dir_all(dir.path().join("acme")).expect("mkdir");
    for v in ["1.0.0", "1.3.0", "0.9.0"] {
        std::fs::write(
            dir.path().join(format!("acme/helper@{v}.yml")),
            format!(
                "version: 2.1\ncommands:\n  hello:\n    steps:\n      - run: echo helper {v}\n"
            ),
        )
        .expect("write");
    }
    let c = compile(config, "config.yml", &o).unwrap_or_else(|e| panic!("{e:?}"));
    let y = c.to_yaml();
    assert!(
        y.contains("# Orb 'acme/tools@1.4' resolved to 'acme/tools@1.4.2'"),
        "{y}"
    );
    assert!(
        y.contains("# Orb 'acme/helper@1' resolved to 'acme/helper@1.3.0'"),
        "{y}"
    );
    let plan = compile_job_with(config, "config.yml", "build", &o).expect("compiles");
    assert_eq!(
        commands(&plan),
        vec!["echo helper 1.3.0", "cat <<EOF\nhi\nEOF\n"]
    );
    let p = process(config, "config.yml", &o).expect("process");
    assert!(p.contains("acme/helper@1.3.0.yml"), "{p}");
}

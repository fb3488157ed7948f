use super::*;
use std::time::Duration;

fn compile(text: &str, job: &str) -> Result<JobPlan, ConfigError> {
    compile_job(text, ".circleci/config.yml", job)
}

const FULL: &str = r#"version: 2.1
executors:
  deb:
    docker:
      - image: bosun/base:latest
        user: circleci
        environment:
          IMAGE_LEVEL: image
    environment:
      LEVEL: executor
      EXEC_ONLY: yes
    working_directory: ~/src
jobs:
  build:
    executor: deb
    environment:
      LEVEL: job
    steps:
      - checkout
      - run: echo hi
      - run:
          name: Tests
          command: make test
          environment:
            LEVEL: step
          working_directory: sub
          no_output_timeout: 1.5m
          when: always
      - run:
          command: ./server
          background: true
      - setup
commands:
  setup:
    steps:
      - run: echo setting up
"#;

#[test]
fn compiles_executor_job_steps_and_commands() {
    let plan = compile(FULL, "build").expect("compiles");
    assert_eq!(plan.image, "bosun/base:latest");
    assert_eq!(plan.user.as_deref(), Some("circleci"));
    assert_eq!(plan.working_directory, "~/src");
    assert_eq!(
        plan.environment,
        vec![
            ("LEVEL".to_owned(), "job".to_owned()),
            ("EXEC_ONLY".to_owned(), "true".to_owned())
        ]
    );
    assert_eq!(
        plan.image_environment,
        vec![("IMAGE_LEVEL".into(), "image".into())]
    );
    assert_eq!(plan.steps.len(), 5);
    assert_eq!(plan.steps[0].kind, StepKind::Checkout { path: None });
    assert_eq!(plan.steps[1].name, "echo hi");
    let StepKind::Run(r) = &plan.steps[2].kind else {
        panic!("run step expected")
    };
    assert_eq!(plan.steps[2].name, "Tests");
    assert_eq!(plan.steps[2].when, When::Always);
    assert_eq!(r.no_output_timeout, Duration::from_secs(90));
    assert_eq!(r.working_directory.as_deref(), Some("sub"));
    let StepKind::Run(bg) = &plan.steps[3].kind else {
        panic!("run step expected")
    };
    assert!(bg.background);
    assert_eq!(bg.no_output_timeout, DEFAULT_NO_OUTPUT_TIMEOUT);
    assert_eq!(plan.steps[4].name, "echo setting up");
}

#[test]
fn typo_in_run_key_names_position_path_and_suggestion() {
    let text = "version: 2.1\njobs:\n  build:\n    docker: [{image: x}]\n    steps:\n      - run:\n          comand: make\n";
    let e = compile(text, "build").expect_err("must fail");
    assert_eq!((e.pos.line, e.pos.col), (7, 11));
    assert_eq!(e.path, "jobs.build.steps[0].run.comand");
    assert_eq!(e.hint.as_deref(), Some("did you mean `command`?"));
    let shown = e.to_string();
    assert!(
        shown.starts_with(
            ".circleci/config.yml:7:11: jobs.build.steps[0].run.comand: unknown key `comand`"
        ),
        "{shown}"
    );
}

#[test]
fn misspelled_step_is_a_missing_command_with_suggestion() {
    let text =
        "version: 2.1\njobs:\n  build:\n    docker: [{image: x}]\n    steps:\n      - chekout\n";
    let e = compile(text, "build").expect_err("must fail");
    assert_eq!(
        e.message,
        "Cannot find a definition for command named chekout"
    );
    assert_eq!(e.hint.as_deref(), Some("did you mean `checkout`?"));
    assert_eq!(e.pos.line, 6);
}

#[test]
fn unknown_job_lists_the_nearest() {
    let e = compile(FULL, "biuld").expect_err("must fail");
    assert_eq!(e.message, "Cannot find a definition for job named biuld");
    assert_eq!(e.hint.as_deref(), Some("did you mean `build`?"));
}

#[test]
fn missing_version_and_bad_types() {
    let e = compile("jobs: {}\n", "build").expect_err("no version");
    assert!(e.message.contains("missing workflows config version"));
    let text = "version: 2.1\njobs:\n  build:\n    docker: [{image: x}]\n    steps:\n      - run:\n          command: x\n          background: maybe\n";
    let e = compile(text, "build").expect_err("bad bool");
    assert_eq!(e.path, "jobs.build.steps[0].run.background");
    assert_eq!(e.pos.line, 8);
    let text = "version: 2.1\njobs:\n  build:\n    docker: [{image: x}]\n    steps:\n      - run:\n          command: x\n          no_output_timeout: soon\n";
    let e = compile(text, "build").expect_err("bad duration");
    assert!(e.message.contains("not a duration"), "{e}");
    let text = "version: 2.1\njobs:\n  build:\n    steps: [checkout]\n";
    let e = compile(text, "build").expect_err("no executor");
    assert!(e.message.contains("has no executor"), "{e}");
}

#[test]
fn yaml_syntax_errors_carry_a_position() {
    let text = "version: 2.1\njobs:\n  build:\n    docker: [{image: x}\n    steps: []\n";
    let e = compile(text, "build").expect_err("bad yaml");
    assert!(e.message.starts_with("invalid YAML"), "{e}");
    assert!(e.pos.line >= 4, "{e}");
}

#[test]
fn unsupported_steps_say_so_plainly() {
    let text = "version: 2.1\njobs:\n  build:\n    docker: [{image: x}]\n    steps:\n      - save_cache: {key: k, paths: [a]}\n";
    let e = compile(text, "build").expect_err("not yet");
    assert!(
        e.message.contains("`save_cache` step is not supported"),
        "{e}"
    );
}

#[test]
fn anchors_and_merge_keys_resolve() {
    let text = r#"version: 2.1
defaults: &defaults
  docker: [{image: bosun/base:latest}]
  working_directory: /tmp/w
jobs:
  build:
    <<: *defaults
    steps: [checkout]
"#;
    // Unknown top-level keys hold anchors and are accepted, as CircleCI does...
    let plan = compile(text, "build").expect("anchor holder accepted");
    assert_eq!(plan.working_directory, "/tmp/w");
    // ...but a near-miss of a real key would be silently ignored, so it is an error.
    let e = compile(&text.replace("jobs:", "jbos:"), "build").expect_err("typo");
    assert_eq!(e.hint.as_deref(), Some("did you mean `jobs`?"));
    let ok = "version: 2.1\njobs:\n  base: &b\n    docker: [{image: i}]\n    steps: [checkout]\n  build:\n    <<: *b\n    working_directory: /w\n";
    let plan = compile(ok, "build").expect("merge key works");
    assert_eq!(plan.image, "i");
    assert_eq!(plan.working_directory, "/w");
}

#[test]
fn durations() {
    assert_eq!(parse_duration("20m"), Some(Duration::from_secs(1200)));
    assert_eq!(parse_duration("1.25h"), Some(Duration::from_secs(4500)));
    assert_eq!(parse_duration("5s"), Some(Duration::from_secs(5)));
    assert_eq!(parse_duration("5"), None);
    assert_eq!(parse_duration("m"), None);
}

#[test]
fn when_semantics() {
    assert!(When::OnSuccess.should_run(false));
    assert!(!When::OnSuccess.should_run(true));
    assert!(When::OnFail.should_run(true));
    assert!(!When::OnFail.should_run(false));
    assert!(When::Always.should_run(true));
}

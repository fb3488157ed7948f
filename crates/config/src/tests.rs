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
            ".circleci/config.yml:7:11: jobs.build.steps[0].run.comand: extraneous key [comand] is not permitted"
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
    assert!(e.message.contains("expected a duration"), "{e}");
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
fn data_only_steps_compile_into_the_plan() {
    let text = "version: 2.1\njobs:\n  build:\n    docker: [{image: x}]\n    steps:\n      - save_cache: {key: k, paths: [a]}\n      - restore_cache: {keys: [k1, k2]}\n      - setup_remote_docker\n";
    let plan = compile(text, "build").expect("compiles");
    assert_eq!(plan.steps[0].kind.type_name(), "save_cache");
    assert_eq!(
        plan.steps[1].kind,
        StepKind::RestoreCache {
            keys: vec!["k1".into(), "k2".into()]
        }
    );
    assert_eq!(
        plan.steps[2].kind,
        StepKind::SetupRemoteDocker {
            docker_layer_caching: false,
            version: None
        }
    );
}

#[test]
fn setup_remote_docker_keeps_its_layer_caching_and_version() {
    let text = "version: 2.1\ncommands:\n  rd:\n    parameters: {dlc: {type: boolean, default: true}}\n    steps:\n      - setup_remote_docker: {docker_layer_caching: << parameters.dlc >>, version: 20.10.18}\njobs:\n  build:\n    docker: [{image: x}]\n    steps: [rd]\n";
    let plan = compile(text, "build").expect("compiles");
    assert_eq!(
        plan.steps[0].kind,
        StepKind::SetupRemoteDocker {
            docker_layer_caching: true,
            version: Some("20.10.18".into())
        }
    );
    let bad = "version: 2.1\njobs:\n  build:\n    docker: [{image: x}]\n    steps:\n      - setup_remote_docker: {docker_layer_caching: [yes]}\n";
    let e = compile(bad, "build").expect_err("a list is no boolean");
    assert!(e.to_string().contains("docker_layer_caching"), "{e}");
    assert!(e.to_string().contains("expected true or false"), "{e}");
    assert_eq!(e.pos.line, 6, "{e}");
}

const PARAMS: &str = r#"version: 2.1
parameters:
  deploy: {type: boolean, default: false}
executors:
  py:
    parameters:
      tag: {type: string, default: "3.11"}
    docker: [{image: "cimg/python:<< parameters.tag >>"}]
commands:
  greet:
    parameters:
      who: {type: string}
      extra: {type: steps, default: []}
    steps:
      - run: echo hello << parameters.who >>
      - steps: << parameters.extra >>
jobs:
  test:
    parameters:
      par: {type: integer, default: 1}
      v: {type: string}
    executor: {name: py, tag: << parameters.v >>}
    parallelism: << parameters.par >>
    steps:
      - greet:
          who: world
          extra:
            - run: echo extra
      - when:
          condition: << pipeline.parameters.deploy >>
          steps: [{run: deploy}]
      - unless:
          condition: {equal: [main, << pipeline.git.branch >>]}
          steps: [{run: not-main}]
workflows:
  main:
    jobs:
      - test:
          matrix:
            parameters:
              v: ["3.10", "3.11"]
              par: [2]
      - hold:
          type: approval
          requires: [test]
"#;

#[test]
fn parameters_commands_executors_matrix_and_when() {
    let opts = CompileOptions::default();
    let c = compile_all(PARAMS, &opts).expect("compiles");
    let wf = &c.workflows[0];
    let names: Vec<&str> = wf.jobs.iter().map(|j| j.name.as_str()).collect();
    assert_eq!(names, ["test-2-3.10", "test-2-3.11", "hold"]);
    assert_eq!(wf.jobs[2].requires, ["test-2-3.10", "test-2-3.11"]);
    assert!(wf.jobs[2].is_approval());
    let WorkflowJobKind::Build(j) = &wf.jobs[0].kind else {
        panic!("build")
    };
    assert_eq!(j.plan.image, "cimg/python:3.10");
    assert_eq!(j.plan.parallelism, 2);
    let steps: Vec<&str> = j.plan.steps.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(steps, ["echo hello world", "echo extra", "not-main"]);
    let mut opts = CompileOptions::default();
    opts.pipeline
        .parameters
        .push(("deploy".into(), "true".into()));
    opts.pipeline.git_branch = "main".into();
    let c = compile_all(PARAMS, &opts).expect("compiles");
    let WorkflowJobKind::Build(j) = &c.workflows[0].jobs[0].kind else {
        panic!("build")
    };
    let steps: Vec<&str> = j.plan.steps.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(steps, ["echo hello world", "echo extra", "deploy"]);
    let yaml = c.to_yaml();
    assert!(yaml.contains("test-2-3.10"), "{yaml}");
}

fn compile_all(text: &str, opts: &CompileOptions) -> Result<CompiledConfig, Vec<ConfigError>> {
    super::compile(text, ".circleci/config.yml", opts)
}

#[test]
fn argument_errors_use_circleci_wording() {
    let missing = PARAMS.replace("      - test:\n          matrix:\n            parameters:\n              v: [\"3.10\", \"3.11\"]\n              par: [2]\n", "      - test\n");
    let errs = compile_all(&missing, &CompileOptions::default()).expect_err("missing v");
    assert!(
        errs.iter()
            .any(|e| e.message == "Missing required argument(s): v"),
        "{errs:?}"
    );
    let bad = PARAMS.replace("who: world", "who: world\n          whom: x");
    let errs = compile_all(&bad, &CompileOptions::default()).expect_err("unexpected");
    assert!(
        errs.iter()
            .any(|e| e.message == "Unexpected argument(s): whom"),
        "{errs:?}"
    );
    let typed = PARAMS.replace("par: [2]", "par: [\"2\"]");
    let errs = compile_all(&typed, &CompileOptions::default()).expect_err("type");
    assert!(
        errs.iter().any(|e| {
            e.message.starts_with(
            "Type error for argument par: expected type: integer, actual value: \"2\" (type string)"
        )
        }),
        "{errs:?}"
    );
}

#[test]
fn filters_and_tags() {
    let text = "version: 2.1\njobs:\n  a: {docker: [{image: x}], steps: [checkout]}\nworkflows:\n  w:\n    jobs:\n      - a:\n          filters:\n            branches: {ignore: /wip-.*/}\n            tags: {only: /^v.*/}\n      - a:\n          name: b\n          requires: [a]\n";
    let c = compile_all(text, &CompileOptions::default()).expect("compiles");
    let wf = &c.workflows[0];
    assert!(filters_allow(&wf.jobs[0].filters, GitRef::Branch("main")));
    assert!(!filters_allow(&wf.jobs[0].filters, GitRef::Branch("wip-1")));
    assert!(filters_allow(&wf.jobs[0].filters, GitRef::Tag("v1.0")));
    let run: Vec<&str> = wf
        .jobs_to_run(GitRef::Tag("v1.0"))
        .iter()
        .map(|j| j.name.as_str())
        .collect();
    assert_eq!(run, ["a"]);
    assert_eq!(wf.jobs_to_run(GitRef::Branch("main")).len(), 2);
}

struct OneOrb;
impl OrbLoader for OneOrb {
    fn load(&self, orb: &OrbRef) -> OrbSource {
        if orb.vendored_path() == "acme/tools@1.0.0.yml" {
            OrbSource::Found {
                file: "orbs/acme/tools@1.0.0.yml".into(),
                text: "version: 2.1\ncommands:\n  hi:\n    steps: [{run: echo orb}]\n".into(),
            }
        } else {
            OrbSource::Missing
        }
    }
}

#[test]
fn vendored_and_missing_orbs() {
    let text = "version: 2.1\norbs:\n  tools: acme/tools@1.0.0\njobs:\n  build:\n    docker: [{image: x}]\n    steps: [tools/hi]\n";
    let e = compile(text, "build").expect_err("not vendored");
    assert!(e.message.contains("acme/tools@1.0.0"), "{e}");
    assert!(e.hint.as_deref().unwrap_or("").contains("--orb-dir"), "{e}");
    let opts = CompileOptions {
        orbs: Some(&OneOrb),
        ..Default::default()
    };
    let plan = compile_job_with(text, "c.yml", "build", &opts).expect("vendored");
    assert_eq!(plan.steps[0].name, "echo orb");
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
    assert_eq!(parse_duration("99999999999999999999h"), None);
}

#[test]
fn when_semantics() {
    assert!(When::OnSuccess.should_run(false));
    assert!(!When::OnSuccess.should_run(true));
    assert!(When::OnFail.should_run(true));
    assert!(!When::OnFail.should_run(false));
    assert!(When::Always.should_run(true));
}

#[test]
fn requires_with_statuses_are_kept_and_a_bad_status_is_located() {
    let text = "version: 2.1\njobs:\n  a: {docker: [{image: x}], steps: [checkout]}\nworkflows:\n  w:\n    jobs:\n      - a\n      - a:\n          name: b\n          requires: [{a: [failed, canceled]}]\n      - a:\n          name: c\n          requires: [{b: terminal}, a]\n";
    let c = super::compile(text, "c.yml", &CompileOptions::default()).expect("compiles");
    let wf = &c.workflows[0];
    assert_eq!(
        wf.jobs[1].accepted("a"),
        [RequiredStatus::Failed, RequiredStatus::Canceled]
    );
    assert_eq!(wf.jobs[2].accepted("b"), RequiredStatus::TERMINAL);
    assert_eq!(wf.jobs[2].accepted("a"), [RequiredStatus::Success]);
    use bosun_protocol::WorkflowJobStatus as W;
    let status = |s: Option<W>| move |_: &str| s;
    assert_eq!(wf.jobs[1].readiness(status(None)), Readiness::Wait);
    assert_eq!(
        wf.jobs[1].readiness(status(Some(W::Failed))),
        Readiness::Ready
    );
    assert!(matches!(
        wf.jobs[1].readiness(status(Some(W::Success))),
        Readiness::Blocked { .. }
    ));
    let bad = text.replace("terminal", "done");
    let errs = super::compile(&bad, "c.yml", &CompileOptions::default()).expect_err("refused");
    let e = errs[0].to_string();
    assert!(e.starts_with("c.yml:13:"), "{e}");
    assert!(e.contains("`done` is not a status"), "{e}");
}

#[test]
fn schedule_triggers_are_compiled_and_a_bad_one_is_located() {
    let text = r#"version: 2.1
jobs:
  t: {docker: [{image: x}], steps: [{run: "true"}]}
workflows:
  push:
    jobs: [t]
  nightly:
    triggers:
      - schedule:
          cron: "21 4 * * *"
          filters: &f
            branches:
              only: [main, /release\/.*/]
      - schedule: {cron: "0 * * * 1-5"}
    jobs: [t]
"#;
    let c = compile_all(text, &CompileOptions::default()).expect("compiles");
    let wf = |n: &str| c.workflows.iter().find(|w| w.name == n).expect(n);
    assert!(wf("push").triggers.is_empty());
    let t = &wf("nightly").triggers;
    assert_eq!(t.len(), 2);
    assert_eq!(t[0].cron.as_str(), "21 4 * * *");
    let b = t[0].branches.as_ref().expect("branch filter");
    assert!(b.allows("main") && b.allows("release/1.2") && !b.allows("feature"));
    assert_eq!(b.only[1].source(), "/release\\/.*/");
    assert_eq!(
        Pattern::parse(&b.only[1].source()).expect("parse"),
        b.only[1]
    );
    assert!(t[1].branches.is_none());

    for (bad, at, want) in [
        (
            "cron: \"0 0 * * * *\"",
            "workflows.nightly.triggers[0].schedule.cron",
            "6 fields",
        ),
        (
            "cron: \"99 * * * *\"",
            "workflows.nightly.triggers[0].schedule.cron",
            "invalid cron",
        ),
        (
            "{filters: {branches: {only: main}}}",
            "workflows.nightly.triggers[0].schedule",
            "[cron]",
        ),
        (
            "{cron: \"* * * * *\", filters: {tags: {only: v1}}}",
            "workflows.nightly.triggers[0].schedule.filters",
            "`branches` only",
        ),
        (
            "{cron: \"* * * * *\", when: x}",
            "workflows.nightly.triggers[0].schedule",
            "when",
        ),
    ] {
        let text = format!(
            "version: 2.1\njobs:\n  t: {{docker: [{{image: x}}], steps: [{{run: \"true\"}}]}}\nworkflows:\n  nightly:\n    triggers:\n      - schedule: {bad}\n    jobs: [t]\n"
        );
        let text = text.replace("schedule: cron:", "schedule:\n          cron:");
        let errs = compile_all(&text, &CompileOptions::default()).expect_err(bad);
        let e = &errs[0];
        assert!(
            e.path.starts_with(at) && e.to_string().contains(want),
            "{bad}: {e}"
        );
        assert!(e.pos.line >= 6, "{bad}: located at {e}");
    }
}

/// CircleCI's escape: `\<<` in a 2.1 config is a literal `<<` in what runs (a heredoc, a
/// shift), in a job with parameters, in one without, and in a command's steps.
#[test]
fn an_escaped_heredoc_reaches_the_shell_without_its_backslash() {
    let text = "version: 2.1\ncommands:\n  say:\n    parameters: {w: {type: string, default: x}}\n    steps:\n      - run: \"cat \\\\<<EOF\\n<< parameters.w >>\\nEOF\"\njobs:\n  plain:\n    docker: [{image: x}]\n    steps:\n      - run: \"cat \\\\<<EOF\\nhi\\nEOF\"\n      - run: echo $((1 \\<< 3))\n      - say\n  with:\n    parameters: {n: {type: integer, default: 3}}\n    docker: [{image: x}]\n    steps:\n      - run: echo $((1 \\<< << parameters.n >>))\n";
    let commands = |job: &str| -> Vec<String> {
        compile(text, job)
            .expect("compiles")
            .steps
            .iter()
            .filter_map(|s| match &s.kind {
                StepKind::Run(r) => Some(r.command.clone()),
                _ => None,
            })
            .collect()
    };
    assert_eq!(
        commands("plain"),
        vec![
            "cat <<EOF\nhi\nEOF",
            "echo $((1 << 3))",
            "cat <<EOF\nx\nEOF"
        ]
    );
    assert_eq!(commands("with"), vec!["echo $((1 << 3))"]);
}

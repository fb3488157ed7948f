//! Broken configs (`tests/broken/*.yml`) and the first line of what the compiler says about
//! each: `FILE:LINE:COL: key.path: message`. Every position was checked by hand against the
//! file: it points at the offending node (the typo'd key, the bad value, the invocation that
//! lacks an argument, the `requires:` that closes a cycle).

use bosun::config::{compile, process, CompileOptions};
use std::path::{Path, PathBuf};
use std::process::Command;

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/broken")
}

/// (file, number of errors, first line of the first error).
const EXPECTED: &[(&str, usize, &str)] = &[
    ("yaml-syntax.yml", 1, "tests/broken/yaml-syntax.yml:10:11: invalid YAML: unclosed bracket '['"),
    ("bad-yaml-indent.yml", 1, "tests/broken/bad-yaml-indent.yml:8:6: invalid YAML: while parsing a block mapping, did not find expected key"),
    ("duplicate-key.yml", 1, "tests/broken/duplicate-key.yml:8:3: invalid YAML: duplicate mapping key: build"),
    ("missing-version.yml", 1, "tests/broken/missing-version.yml:1:1: version: Unsupported or missing workflows config version"),
    ("bad-version.yml", 1, "tests/broken/bad-version.yml:1:10: version: Unsupported or missing workflows config version: expected 2, 2.0 or 2.1, found `3`"),
    ("job-key-typo.yml", 1, "tests/broken/job-key-typo.yml:6:5: jobs.build.stpes: extraneous key [stpes] is not permitted"),
    ("run-key-typo.yml", 1, "tests/broken/run-key-typo.yml:10:11: jobs.build.steps[1].run.comand: extraneous key [comand] is not permitted"),
    ("docker-key-typo.yml", 1, "tests/broken/docker-key-typo.yml:6:9: jobs.build.docker[0].enviroment: extraneous key [enviroment] is not permitted"),
    ("workflow-job-key-typo.yml", 1, "tests/broken/workflow-job-key-typo.yml:12:11: workflows.main.jobs[0].build.filter: Unexpected argument(s): filter"),
    ("unknown-command.yml", 1, "tests/broken/unknown-command.yml:12:9: jobs.build.steps[1]: Cannot find a definition for command named install-dep"),
    ("unknown-executor.yml", 1, "tests/broken/unknown-executor.yml:8:15: jobs.build.executor: Cannot find a definition for executor named nodee"),
    ("unknown-workflow-job.yml", 1, "tests/broken/unknown-workflow-job.yml:12:9: workflows.main.jobs[1].tset: Cannot find a definition for job named tset"),
    ("requires-unknown.yml", 1, "tests/broken/requires-unknown.yml:19:15: workflows.main.jobs[1].test.requires: Job 'test' requires 'biuld', which is the name of 0 other jobs in workflow 'main'"),
    ("requires-cycle.yml", 1, "tests/broken/requires-cycle.yml:17:21: workflows.main.jobs[0].a.requires: At least one job in the workflow must have no dependencies. The following jobs are unreachable: a, b"),
    ("missing-parameter.yml", 1, "tests/broken/missing-parameter.yml:16:9: workflows.main.jobs[0].deploy: Missing required argument(s): region, target"),
    ("unexpected-argument.yml", 1, "tests/broken/unexpected-argument.yml:16:11: jobs.build.steps[0].greet.whom: Unexpected argument(s): whom"),
    ("parameter-type.yml", 1, "tests/broken/parameter-type.yml:17:19: workflows.main.jobs[0].test.shards: Type error for argument shards: expected type: integer, actual value: \"four\" (type string)"),
    ("bad-enum.yml", 1, "tests/broken/bad-enum.yml:18:17: workflows.main.jobs[0].build.size: Type error for argument size: expected type: enum, one of [small, medium, large], actual value: \"huge\" (type string)"),
    ("undeclared-parameter.yml", 1, "tests/broken/undeclared-parameter.yml:9:14: commands.greet.steps[0].run: Arguments referenced without declared parameters: whom"),
    ("unknown-pipeline-value.yml", 1, "tests/broken/unknown-pipeline-value.yml:7:14: jobs.build.steps[0].run: Unknown variable(s): pipeline.git.brnach"),
    ("bad-no-output-timeout.yml", 1, "tests/broken/bad-no-output-timeout.yml:9:30: jobs.build.steps[0].run.no_output_timeout: expected a duration (a number with a unit s, m or h), found `20 minutes`"),
    ("bad-when.yml", 1, "tests/broken/bad-when.yml:9:17: jobs.build.steps[0].run.when: expected one of on_success, on_fail, always, found `on_failure`"),
    ("bad-logic.yml", 1, "tests/broken/bad-logic.yml:11:12: workflows.main.when.and: `and` needs at least one statement; an empty list is not valid"),
    ("matrix-undeclared.yml", 1, "tests/broken/matrix-undeclared.yml:18:15: workflows.main.jobs[0].test.matrix.parameters.os: Unexpected argument(s): os: the matrix parameter is not a parameter of job `test`"),
    ("orb-not-vendored.yml", 1, "tests/broken/orb-not-vendored.yml:3:9: orbs.node: Cannot find circleci/node@5.1.0: orb `node` is not inline and not vendored"),
    ("several-errors.yml", 3, "tests/broken/several-errors.yml:7:9: jobs.build.steps[0]: Cannot find a definition for command named chekout"),
];

/// Hints (`help:` lines) that must appear, for the suggestions.
const HINTS: &[(&str, &str)] = &[
    ("job-key-typo.yml", "did you mean `steps`?"),
    ("run-key-typo.yml", "did you mean `command`?"),
    ("docker-key-typo.yml", "did you mean `environment`?"),
    ("workflow-job-key-typo.yml", "did you mean `filters`?"),
    ("unknown-command.yml", "did you mean `install-deps`?"),
    ("unknown-executor.yml", "did you mean `node`?"),
    ("unknown-workflow-job.yml", "jobs in scope: build"),
    ("requires-unknown.yml", "did you mean `build`?"),
    ("unexpected-argument.yml", "did you mean `who`?"),
    ("undeclared-parameter.yml", "did you mean `parameters.who`?"),
    (
        "unknown-pipeline-value.yml",
        "did you mean `pipeline.git.branch`?",
    ),
    ("matrix-undeclared.yml", "parameters of job `test`: python"),
    ("orb-not-vendored.yml", "--orb-dir"),
];

fn errors(file: &str) -> Vec<bosun::config::ConfigError> {
    let text = std::fs::read_to_string(dir().join(file)).expect("read broken config");
    let name = format!("tests/broken/{file}");
    let errs = compile(&text, &name, &CompileOptions::default()).expect_err(file);
    // `process` goes through the same compiler and must fail identically.
    assert_eq!(
        process(&text, &name, &CompileOptions::default()).expect_err(file),
        errs,
        "{file}: process and compile disagree"
    );
    errs
}

#[test]
fn every_broken_config_has_its_expected_first_line() {
    let mut failures = Vec::new();
    for (file, count, first) in EXPECTED {
        let errs = errors(file);
        let got = errs[0].to_string();
        let got_first = got.lines().next().unwrap_or("");
        if got_first != *first || errs.len() != *count {
            failures.push(format!(
                "{file}:\n  expected ({count}): {first}\n  got ({}):      {}",
                errs.len(),
                errs.iter()
                    .map(|e| e.to_string())
                    .collect::<Vec<_>>()
                    .join("\n                  ")
            ));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

#[test]
fn suggestions_are_given() {
    for (file, hint) in HINTS {
        let errs = errors(file);
        let h = errs[0].hint.clone().unwrap_or_default();
        assert!(h.contains(hint), "{file}: hint `{h}` lacks `{hint}`");
    }
}

#[test]
fn every_file_in_tests_broken_is_in_the_table() {
    let mut files: Vec<String> = std::fs::read_dir(dir())
        .expect("tests/broken")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|f| f.ends_with(".yml"))
        .collect();
    files.sort();
    for f in &files {
        assert!(
            EXPECTED.iter().any(|(e, _, _)| e == f),
            "tests/broken/{f} has no expected line in tests/it/config_broken.rs"
        );
    }
    assert!(files.len() >= 15);
}

#[test]
fn errors_come_in_file_order() {
    let errs = errors("several-errors.yml");
    let lines: Vec<u64> = errs.iter().map(|e| e.pos.line).collect();
    assert_eq!(lines, vec![7, 14, 20]);
    assert!(errs[1].message.contains("found `sometimes`"));
    assert!(errs[2].message.contains("requires 'biuld'"));
}

fn bosun_validate(file: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_bosun"))
        .args(["config", "validate"])
        .arg(file)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run bosun")
}

#[test]
fn validate_binary_prints_every_error_and_exits_2() {
    let out = bosun_validate(Path::new("tests/broken/several-errors.yml"));
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let expected = [
        "tests/broken/several-errors.yml:7:9: jobs.build.steps[0]: Cannot find a definition for command named chekout",
        "tests/broken/several-errors.yml:14:17: jobs.test.steps[0].run.when: expected one of on_success, on_fail, always, found `sometimes`",
        "tests/broken/several-errors.yml:20:22: workflows.main.jobs[1].test.requires: Job 'test' requires 'biuld', which is the name of 0 other jobs in workflow 'main'",
        "error: Config file \"tests/broken/several-errors.yml\" contains 3 error(s).",
    ];
    for line in expected {
        assert!(
            stderr.lines().any(|l| l == line),
            "missing line {line:?} in:\n{stderr}"
        );
    }
    assert!(out.stdout.is_empty());
}

#[test]
fn validate_binary_on_every_broken_file() {
    for (file, _, first) in EXPECTED {
        let out = bosun_validate(&Path::new("tests/broken").join(file));
        assert_eq!(out.status.code(), Some(2), "{file}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(stderr.lines().next(), Some(*first), "{file}");
    }
}

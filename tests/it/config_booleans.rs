//! YAML booleans as CircleCI reads them. CircleCI parses with SnakeYAML (YAML 1.1 booleans
//! minus `y`/`n`): plain `yes/no/on/off/true/false` (lower, Capitalised, UPPER) are booleans;
//! `y`, `n` and every quoted spelling are strings. serde-saphyr's YAML 1.1 mode would also make
//! `y`/`n` booleans, so the compiler parses with `strict_booleans` and restores the SnakeYAML
//! words itself. Mapping keys always stay strings.

use bosun::config::yaml::{parse, Value};
use bosun::config::{compile, compile_job, CompileOptions, WorkflowJobKind};

fn scalar(text: &str) -> Value {
    let root = parse(&format!("k: {text}\n")).expect("parses");
    root.get("k").expect("k").value.clone()
}

#[test]
fn only_snakeyaml_spellings_are_booleans() {
    for t in [
        "true", "True", "TRUE", "yes", "Yes", "YES", "on", "On", "ON",
    ] {
        assert_eq!(scalar(t), Value::Bool(true), "{t}");
    }
    for f in [
        "false", "False", "FALSE", "no", "No", "NO", "off", "Off", "OFF",
    ] {
        assert_eq!(scalar(f), Value::Bool(false), "{f}");
    }
    for s in [
        "y",
        "n",
        "Y",
        "N",
        "yEs",
        "oN",
        "\"yes\"",
        "'on'",
        "\"true\"",
        "|-\n  yes",
        ">-\n  off",
    ] {
        assert!(matches!(scalar(s), Value::Str(_)), "{s}: {:?}", scalar(s));
    }
    assert_eq!(scalar("2.1"), Value::Float(2.1));
    assert_eq!(scalar("\"2.1\""), Value::Str("2.1".into()));
}

#[test]
fn aliases_keep_the_quoting_of_their_anchor() {
    let root = parse("a: &p yes\nb: *p\nc: &q \"yes\"\nd: *q\n").expect("parses");
    assert_eq!(root.get("b").map(|n| &n.value), Some(&Value::Bool(true)));
    assert_eq!(
        root.get("d").map(|n| &n.value),
        Some(&Value::Str("yes".into()))
    );
}

#[test]
fn keys_are_strings() {
    let root = parse("y: 1\nn: 2\non: 3\nyes: 4\n").expect("parses");
    let keys: Vec<Value> = root
        .as_map()
        .expect("map")
        .iter()
        .map(|(k, _)| k.value.clone())
        .collect();
    let want: Vec<Value> = ["y", "n", "on", "yes"]
        .iter()
        .map(|s| Value::Str((*s).into()))
        .collect();
    assert_eq!(keys, want);
}

const MATRIX_N: &str = r#"version: 2.1
jobs:
  test:
    parameters:
      n:
        type: string
      "on":
        type: boolean
        default: off
    docker:
      - image: cimg/base:current
    environment:
      PLAIN_Y: y
      QUOTED_YES: "yes"
      PLAIN_YES: yes
      N: << parameters.n >>
    steps:
      - run: echo << parameters.n >> << parameters.on >>
workflows:
  main:
    jobs:
      - test:
          matrix:
            parameters:
              n: [y, n]
              on: [on, no]
"#;

#[test]
fn matrix_parameter_named_n_with_values_y_and_n() {
    let c = compile(MATRIX_N, "config.yml", &CompileOptions::default()).expect("compiles");
    let names: Vec<&str> = c.workflows[0]
        .jobs
        .iter()
        .map(|j| j.name.as_str())
        .collect();
    assert_eq!(
        names,
        ["test-y-true", "test-y-false", "test-n-true", "test-n-false"]
    );
    let WorkflowJobKind::Build(b) = &c.workflows[0].jobs[0].kind else {
        panic!("build job")
    };
    let env = &b.plan.environment;
    let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    assert_eq!(get("PLAIN_Y"), Some("y"));
    assert_eq!(get("QUOTED_YES"), Some("yes"));
    // As in CircleCI: an unquoted `yes` is a YAML boolean; quote it to keep the word.
    assert_eq!(get("PLAIN_YES"), Some("true"));
    assert_eq!(get("N"), Some("y"));
    let bosun::config::StepKind::Run(r) = &b.plan.steps[0].kind else {
        panic!("run step")
    };
    assert_eq!(r.command, "echo y true");
}

#[test]
fn quoted_on_is_not_a_boolean_parameter() {
    let text = r#"version: 2.1
jobs:
  build:
    parameters:
      killswitch:
        type: boolean
        default: "on"
    docker:
      - image: cimg/base:current
    steps:
      - run: echo << parameters.killswitch >>
"#;
    let err = compile_job(text, "config.yml", "build").expect_err("type error");
    assert_eq!(
        err.message,
        "Parameter error: default value of parameter 'killswitch' is \"on\" (type string): expected type: boolean"
    );
    let ok = text.replace("\"on\"", "on");
    compile_job(&ok, "config.yml", "build").expect("plain on is a boolean");
}

#[test]
fn version_forms() {
    for v in ["2.1", "\"2.1\"", "'2.1'"] {
        let text = format!(
            "version: {v}\njobs:\n  build:\n    docker: [{{image: x}}]\n    steps: [checkout]\n"
        );
        compile(&text, "c.yml", &CompileOptions::default())
            .unwrap_or_else(|e| panic!("{v}: {e:?}"));
    }
}

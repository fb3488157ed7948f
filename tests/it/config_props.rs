//! Property tests: YAML text → `bosun::config::compile` never panics (nor overflows its stack).
//!
//! Three generators: arbitrary text, structured configs built from a small grammar of valid and
//! invalid pieces (real key sets, typos, parameters and `<< >>` references, matrices, anchors,
//! aliases and merge keys, random nesting), and the real corpus with byte-level mutations.
//! The normal run uses 64 cases per property; `PROPTEST_CASES` raises it
//! (`scripts/fuzz-config.sh` runs a large budget). Inputs that once failed are kept as plain
//! regression tests at the end.

use crate::harness::corpus_dir;
use bosun::config::{compile, process, CompileOptions, OrbLoader, OrbRef, OrbSource};
use proptest::prelude::*;
use proptest::test_runner::{Config, FileFailurePersistence};
use std::path::PathBuf;

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64)
}

fn config() -> Config {
    Config {
        cases: cases(),
        failure_persistence: Some(Box::new(FileFailurePersistence::Off)),
        max_shrink_iters: 2000,
        ..Config::default()
    }
}

/// Every vendored orb lookup finds the same small orb, so orb paths are exercised too.
struct FakeOrbs;

impl OrbLoader for FakeOrbs {
    fn load(&self, orb: &OrbRef) -> OrbSource {
        if orb.name == "missing" {
            return OrbSource::Missing;
        }
        OrbSource::Found {
            file: format!("orbs/{}", orb.vendored_path()),
            text: "version: 2.1\nexecutors:\n  default:\n    docker: [{image: cimg/base:current}]\ncommands:\n  greet:\n    parameters:\n      who: {type: string, default: orb}\n    steps:\n      - run: echo << parameters.who >>\njobs:\n  test:\n    executor: default\n    steps: [greet]\n".to_owned(),
        }
    }
}

/// Compile with and without an orb loader; only a panic (or abort) fails the property.
fn exercise(text: &str) {
    let opts = CompileOptions::default();
    let _ = compile(text, "config.yml", &opts);
    let with_orbs = CompileOptions {
        orbs: Some(&FakeOrbs),
        orb_dir: Some("orbs".to_owned()),
        ..CompileOptions::default()
    };
    if let Ok(c) = compile(text, "config.yml", &with_orbs) {
        let _ = c.to_yaml();
    }
    let _ = process(text, "config.yml", &with_orbs);
    let _ = bosun::config::compile_job(text, "config.yml", "build");
}

// ------------------------------------------------------------------------ a small YAML grammar

#[derive(Debug, Clone)]
enum Y {
    Scalar(String),
    Seq(Vec<Y>),
    Map(Vec<(String, Y)>),
    /// `&name value`
    Anchor(String, Box<Y>),
    /// `*name`
    Alias(String),
}

fn quote_if_needed(s: &str, quoted: bool) -> String {
    if quoted
        || s.is_empty()
        || s.contains([
            '#', ':', '{', '}', '[', ']', ',', '&', '*', '!', '|', '>', '\'', '"', '%', '@', '`',
            '\n',
        ])
        || s.starts_with(['-', '?', ' '])
        || s.ends_with(' ')
    {
        format!("{s:?}")
    } else {
        s.to_owned()
    }
}

fn render(y: &Y, indent: usize, out: &mut String) {
    // Called with the cursor after `key:` or `- `; writes the value and a newline.
    let pad = " ".repeat(indent);
    match y {
        Y::Scalar(s) => {
            out.push(' ');
            out.push_str(&quote_if_needed(s, false));
            out.push('\n');
        }
        Y::Alias(a) => {
            out.push_str(" *");
            out.push_str(a);
            out.push('\n');
        }
        Y::Anchor(a, v) => {
            out.push_str(" &");
            out.push_str(a);
            match &**v {
                Y::Scalar(_) | Y::Alias(_) => render(v, indent, out),
                Y::Anchor(_, inner) => render(inner, indent, out),
                _ => {
                    out.push('\n');
                    render_block(v, indent, out);
                }
            }
        }
        Y::Seq(items) if items.is_empty() => out.push_str(" []\n"),
        Y::Map(m) if m.is_empty() => out.push_str(" {}\n"),
        _ => {
            out.push('\n');
            let _ = pad;
            render_block(y, indent, out);
        }
    }
}

fn render_block(y: &Y, indent: usize, out: &mut String) {
    let pad = " ".repeat(indent);
    match y {
        Y::Seq(items) => {
            for it in items {
                out.push_str(&pad);
                out.push('-');
                render(it, indent + 2, out);
            }
        }
        Y::Map(m) => {
            for (k, v) in m {
                out.push_str(&pad);
                if k == "<<" {
                    out.push_str("<<:");
                } else {
                    out.push_str(&quote_if_needed(k, false));
                    out.push(':');
                }
                render(v, indent + 2, out);
            }
        }
        other => {
            out.push_str(&pad);
            out.push_str("x:");
            render(other, indent + 2, out);
        }
    }
}

const KEYS: &[&str] = &[
    "version",
    "jobs",
    "workflows",
    "executors",
    "commands",
    "orbs",
    "parameters",
    "setup",
    "description",
    "parallelism",
    "docker",
    "steps",
    "working_directory",
    "machine",
    "macos",
    "environment",
    "executor",
    "shell",
    "type",
    "resource_class",
    "image",
    "name",
    "entrypoint",
    "command",
    "user",
    "auth",
    "run",
    "checkout",
    "when",
    "unless",
    "condition",
    "background",
    "no_output_timeout",
    "default",
    "enum",
    "requires",
    "context",
    "filters",
    "branches",
    "tags",
    "only",
    "ignore",
    "matrix",
    "alias",
    "exclude",
    "pre-steps",
    "post-steps",
    "and",
    "or",
    "not",
    "equal",
    "matches",
    "pattern",
    "value",
    "save_cache",
    "restore_cache",
    "key",
    "keys",
    "paths",
    "persist_to_workspace",
    "attach_workspace",
    "root",
    "at",
    "store_artifacts",
    "path",
    "store_test_results",
    "setup_remote_docker",
    "add_ssh_keys",
    "stpes",
    "comand",
    "dockr",
    "a",
    "b",
    "n",
    "y",
    "on",
    "build",
    "test",
    "deploy",
    "c0",
    "c1",
    "e0",
];

const WORDS: &[&str] = &[
    "build",
    "test",
    "deploy",
    "c0",
    "c1",
    "c2",
    "e0",
    "checkout",
    "run",
    "true",
    "false",
    "yes",
    "no",
    "y",
    "n",
    "on",
    "off",
    "null",
    "~",
    "0",
    "1",
    "-3",
    "2.1",
    "1e3",
    ".nan",
    "0x1F",
    "main",
    "/ma.*/",
    "/(/",
    "10m",
    "5s",
    "1.5h",
    "soon",
    "always",
    "on_fail",
    "string",
    "boolean",
    "integer",
    "enum",
    "steps",
    "executor",
    "env_var_name",
    "cimg/base:current",
    "echo hi",
    "<< parameters.a >>",
    "<< parameters.b >>",
    "<< parameters.steps >>",
    "<< pipeline.git.branch >>",
    "<< pipeline.parameters.p >>",
    "<< pipeline.nope >>",
    "<< matrix.a >>",
    "<< matrix.zz >>",
    "x-<< parameters.a >>-y",
    "<<",
    "\\<< x",
    "<< >>",
    "<< parameters.a",
    "tools/greet",
    "tools/test",
    "tools/default",
    "t/x",
    "circleci/node@5.1.0",
    "ns/missing@1.0.0",
    "bad-ref",
    "",
];

fn word() -> impl Strategy<Value = String> {
    prop_oneof![
        8 => proptest::sample::select(WORDS).prop_map(str::to_owned),
        1 => "[a-z<>{}. $-]{0,12}",
    ]
}

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        9 => proptest::sample::select(KEYS).prop_map(str::to_owned),
        1 => "[a-z_-]{1,8}",
    ]
}

fn anchor_name() -> impl Strategy<Value = String> {
    proptest::sample::select(&["a1", "a2", "a3"][..]).prop_map(str::to_owned)
}

/// Any value: scalars, aliases, nested lists and maps with real keys, anchors, merge keys.
fn value() -> impl Strategy<Value = Y> {
    let leaf = prop_oneof![
        6 => word().prop_map(Y::Scalar),
        1 => anchor_name().prop_map(Y::Alias),
    ];
    leaf.prop_recursive(6, 48, 6, |inner| {
        prop_oneof![
            3 => proptest::collection::vec(inner.clone(), 0..5).prop_map(Y::Seq),
            4 => proptest::collection::vec((key(), inner.clone()), 0..6).prop_map(Y::Map),
            1 => (anchor_name(), inner.clone()).prop_map(|(a, v)| Y::Anchor(a, Box::new(v))),
            1 => proptest::collection::vec((key(), inner), 0..3).prop_map(|mut m| {
                m.insert(0, ("<<".to_owned(), Y::Alias("a2".to_owned())));
                Y::Map(m)
            }),
        ]
    })
}

fn s(v: &str) -> Y {
    Y::Scalar(v.to_owned())
}

fn map(pairs: Vec<(&str, Y)>) -> Y {
    Y::Map(pairs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
}

/// A parameter declaration, sometimes wrong.
fn param_decl() -> impl Strategy<Value = Y> {
    let ty = proptest::sample::select(
        &[
            "string",
            "boolean",
            "integer",
            "enum",
            "steps",
            "executor",
            "env_var_name",
            "strnig",
        ][..],
    );
    (ty, proptest::option::of(word()), any::<bool>()).prop_map(|(t, d, en)| {
        let mut m = vec![("type", s(t))];
        if t == "enum" || en {
            m.push(("enum", Y::Seq(vec![s("a"), s("b"), s("on")])));
        }
        if let Some(d) = d {
            m.push(("default", if t == "steps" { Y::Seq(vec![]) } else { s(&d) }));
        }
        map(m)
    })
}

fn params() -> impl Strategy<Value = Y> {
    proptest::collection::vec(
        (
            proptest::sample::select(&["a", "b", "steps", "n", "on", "name"][..]),
            param_decl(),
        ),
        0..3,
    )
    .prop_map(|v| Y::Map(v.into_iter().map(|(k, d)| (k.to_owned(), d)).collect()))
}

fn step() -> impl Strategy<Value = Y> {
    let call = (
        proptest::sample::select(&["c0", "c1", "c2", "tools/greet", "nope"][..]),
        proptest::collection::vec(
            (
                proptest::sample::select(&["a", "b", "who", "x"][..]),
                word(),
            ),
            0..3,
        ),
    )
        .prop_map(|(c, args)| {
            if args.is_empty() {
                s(c)
            } else {
                map(vec![(
                    c,
                    Y::Map(
                        args.into_iter()
                            .map(|(k, v)| (k.to_owned(), s(&v)))
                            .collect(),
                    ),
                )])
            }
        });
    prop_oneof![
        3 => word().prop_map(|w| map(vec![("run", s(&w))])),
        2 => (word(), word(), word()).prop_map(|(c, t, w)| map(vec![("run", map(vec![("command", s(&c)), ("no_output_timeout", s(&t)), ("when", s(&w))]))])),
        1 => Just(s("checkout")),
        3 => call,
        1 => Just(map(vec![("steps", s("<< parameters.steps >>"))])),
        1 => (value(), word()).prop_map(|(c, w)| map(vec![("when", map(vec![("condition", c), ("steps", Y::Seq(vec![map(vec![("run", s(&w))])]))]))])),
        1 => value(),
    ]
}

fn steps() -> impl Strategy<Value = Y> {
    proptest::collection::vec(step(), 0..5).prop_map(Y::Seq)
}

fn command() -> impl Strategy<Value = Y> {
    (params(), steps()).prop_map(|(p, st)| map(vec![("parameters", p), ("steps", st)]))
}

fn job() -> impl Strategy<Value = Y> {
    let exec = prop_oneof![
        Just((
            "docker",
            Y::Seq(vec![map(vec![("image", s("cimg/base:current"))])])
        )),
        Just(("executor", s("e0"))),
        Just(("executor", map(vec![("name", s("e0")), ("a", s("1"))]))),
        Just(("executor", s("tools/default"))),
        Just(("machine", map(vec![("image", s("ubuntu"))]))),
        value().prop_map(|v| ("docker", v)),
    ];
    (
        params(),
        exec,
        steps(),
        proptest::option::of((key(), value())),
        any::<bool>(),
    )
        .prop_map(|(p, (ek, ev), st, extra, merge)| {
            let mut m: Vec<(String, Y)> = vec![
                ("parameters".into(), p),
                (ek.into(), ev),
                ("steps".into(), st),
            ];
            if let Some((k, v)) = extra {
                m.push((k, v));
            }
            if merge {
                m.insert(0, ("<<".into(), Y::Alias("defaults".into())));
            }
            Y::Map(m)
        })
}

fn invocation() -> impl Strategy<Value = Y> {
    let name =
        proptest::sample::select(&["build", "test", "deploy", "tools/test", "hold", "nope"][..]);
    let arg = prop_oneof![
        proptest::collection::vec(
            proptest::sample::select(&["build", "test", "deploy", "hold", "x", "test-1"][..])
                .prop_map(s),
            0..3
        )
        .prop_map(|r| ("requires".to_owned(), Y::Seq(r))),
        Just(("type".to_owned(), s("approval"))),
        word().prop_map(|w| ("name".to_owned(), s(&w))),
        (
            proptest::collection::vec(word(), 0..3),
            proptest::collection::vec(word(), 0..3)
        )
            .prop_map(|(a, b)| {
                (
                    "matrix".to_owned(),
                    map(vec![(
                        "parameters",
                        map(vec![
                            ("a", Y::Seq(a.iter().map(|w| s(w)).collect())),
                            ("b", Y::Seq(b.iter().map(|w| s(w)).collect())),
                        ]),
                    )]),
                )
            }),
        word().prop_map(|w| (
            "filters".to_owned(),
            map(vec![("branches", map(vec![("only", s(&w))]))])
        )),
        (key(), value()),
        steps().prop_map(|st| ("pre-steps".to_owned(), st)),
    ];
    (name, proptest::collection::vec(arg, 0..4)).prop_map(|(n, args)| {
        if args.is_empty() {
            s(n)
        } else {
            Y::Map(vec![(n.to_owned(), Y::Map(args))])
        }
    })
}

/// A whole config from the grammar, rendered as block YAML.
fn structured() -> impl Strategy<Value = String> {
    let version = proptest::sample::select(&["2.1", "2.1", "2.1", "2", "\"2.1\"", "3", ""][..]);
    (
        version,
        proptest::collection::vec(command(), 0..4),
        proptest::collection::vec(job(), 1..4),
        proptest::collection::vec(invocation(), 0..6),
        proptest::option::of(value()),
        proptest::option::of(value()),
        any::<bool>(),
        value(),
    )
        .prop_map(
            |(version, cmds, jobs, inv, when, wild, inline_orb, defaults)| {
                let mut out = String::new();
                if !version.is_empty() {
                    out.push_str(&format!("version: {version}\n"));
                }
                // Anchors first, so aliases below can refer to them.
                let mut top: Vec<(String, Y)> = vec![
                    (
                        "x-a".into(),
                        Y::Seq(vec![
                            Y::Anchor("a1".into(), Box::new(s("echo anchored"))),
                            Y::Anchor("a2".into(), Box::new(map(vec![("run", s("echo a2"))]))),
                            Y::Anchor("a3".into(), Box::new(Y::Seq(vec![s("build")]))),
                        ]),
                    ),
                    (
                        "x-defaults".into(),
                        Y::Anchor(
                            "defaults".into(),
                            Box::new(match defaults {
                                m @ Y::Map(_) => m,
                                _ => map(vec![("resource_class", s("small"))]),
                            }),
                        ),
                    ),
                    (
                        "parameters".into(),
                        map(vec![(
                            "p",
                            map(vec![("type", s("string")), ("default", s("x"))]),
                        )]),
                    ),
                ];
                top.push((
                    "orbs".into(),
                    if inline_orb {
                        map(vec![(
                            "tools",
                            map(vec![
                                (
                                    "executors",
                                    map(vec![(
                                        "default",
                                        map(vec![(
                                            "docker",
                                            Y::Seq(vec![map(vec![("image", s("x"))])]),
                                        )]),
                                    )]),
                                ),
                                (
                                    "commands",
                                    map(vec![(
                                        "greet",
                                        map(vec![(
                                            "steps",
                                            Y::Seq(vec![map(vec![("run", s("hi"))])]),
                                        )]),
                                    )]),
                                ),
                                (
                                    "jobs",
                                    map(vec![(
                                        "test",
                                        map(vec![
                                            ("executor", s("default")),
                                            ("steps", Y::Seq(vec![s("greet")])),
                                        ]),
                                    )]),
                                ),
                            ]),
                        )])
                    } else {
                        map(vec![
                            ("tools", s("ns/tools@1.0.0")),
                            ("t", s("ns/missing@1.0.0")),
                        ])
                    },
                ));
                top.push((
                    "executors".into(),
                    map(vec![(
                        "e0",
                        map(vec![
                            (
                                "parameters",
                                map(vec![(
                                    "a",
                                    map(vec![("type", s("string")), ("default", s("x"))]),
                                )]),
                            ),
                            (
                                "docker",
                                Y::Seq(vec![map(vec![("image", s("img:<< parameters.a >>"))])]),
                            ),
                        ]),
                    )]),
                ));
                top.push((
                    "commands".into(),
                    Y::Map(
                        cmds.into_iter()
                            .enumerate()
                            .map(|(i, c)| (format!("c{i}"), c))
                            .collect(),
                    ),
                ));
                let names = ["build", "test", "deploy"];
                top.push((
                    "jobs".into(),
                    Y::Map(
                        jobs.into_iter()
                            .enumerate()
                            .map(|(i, j)| (names[i].to_owned(), j))
                            .collect(),
                    ),
                ));
                let mut wf = vec![("jobs".to_owned(), Y::Seq(inv))];
                if let Some(w) = when {
                    wf.insert(0, ("when".to_owned(), w));
                }
                top.push(("workflows".into(), map(vec![("main", Y::Map(wf))])));
                if let Some(w) = wild {
                    top.push(("wild".into(), w));
                }
                render_block(&Y::Map(top), 0, &mut out);
                out
            },
        )
}

// ------------------------------------------------------------------------ corpus mutations

fn corpus() -> Vec<Vec<u8>> {
    let dir = corpus_dir();
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path()).collect())
        .unwrap_or_default();
    files.retain(|p| p.extension().is_some_and(|e| e == "yml"));
    files.sort();
    let mut out: Vec<Vec<u8>> = files.iter().filter_map(|p| std::fs::read(p).ok()).collect();
    // Always something to mutate, even without the shared corpus.
    out.push(include_bytes!("../broken/several-errors.yml").to_vec());
    out.push(include_bytes!("../broken/matrix-undeclared.yml").to_vec());
    out
}

#[derive(Debug, Clone)]
enum Mutation {
    Delete(f64, usize),
    Duplicate(f64, usize),
    Indent(f64, usize),
    Dedent(f64),
    SwapLines(f64, f64),
    Insert(f64, &'static str),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let at = 0.0..1.0f64;
    prop_oneof![
        (at.clone(), 1..40usize).prop_map(|(a, n)| Mutation::Delete(a, n)),
        (at.clone(), 1..200usize).prop_map(|(a, n)| Mutation::Duplicate(a, n)),
        (at.clone(), 1..5usize).prop_map(|(a, n)| Mutation::Indent(a, n)),
        at.clone().prop_map(Mutation::Dedent),
        (at.clone(), at.clone()).prop_map(|(a, b)| Mutation::SwapLines(a, b)),
        (
            at,
            proptest::sample::select(
                &[
                    "<<",
                    ">>",
                    "<< parameters.x >>",
                    "&a ",
                    "*a",
                    "<<: *a",
                    ":",
                    "- ",
                    "\t",
                    "\"",
                    "[",
                    "{",
                    "\n",
                    "matrix:\n",
                    "requires: [x]"
                ][..]
            )
        )
            .prop_map(|(a, s)| Mutation::Insert(a, s)),
    ]
}

fn apply(mut b: Vec<u8>, muts: &[Mutation]) -> Vec<u8> {
    let idx = |b: &[u8], f: f64| ((b.len() as f64) * f) as usize;
    let line_start = |b: &[u8], i: usize| {
        b[..i.min(b.len())]
            .iter()
            .rposition(|&c| c == b'\n')
            .map_or(0, |p| p + 1)
    };
    for m in muts {
        if b.is_empty() {
            break;
        }
        match *m {
            Mutation::Delete(a, n) => {
                let i = idx(&b, a).min(b.len());
                let j = (i + n).min(b.len());
                b.drain(i..j);
            }
            Mutation::Duplicate(a, n) => {
                let i = idx(&b, a).min(b.len());
                let j = (i + n).min(b.len());
                let chunk = b[i..j].to_vec();
                b.splice(j..j, chunk);
            }
            Mutation::Indent(a, n) => {
                let i = line_start(&b, idx(&b, a));
                b.splice(i..i, std::iter::repeat_n(b' ', n));
            }
            Mutation::Dedent(a) => {
                let i = line_start(&b, idx(&b, a));
                let n = b[i..].iter().take_while(|&&c| c == b' ').count().min(2);
                b.drain(i..i + n);
            }
            Mutation::SwapLines(x, y) => {
                let text = String::from_utf8_lossy(&b).into_owned();
                let mut lines: Vec<&str> = text.split('\n').collect();
                let (p, q) = (
                    ((lines.len() as f64) * x) as usize,
                    ((lines.len() as f64) * y) as usize,
                );
                let (p, q) = (p.min(lines.len() - 1), q.min(lines.len() - 1));
                lines.swap(p, q);
                b = lines.join("\n").into_bytes();
            }
            Mutation::Insert(a, s) => {
                let i = idx(&b, a).min(b.len());
                b.splice(i..i, s.bytes());
            }
        }
    }
    b
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn arbitrary_text_never_panics(text in "(?s).{0,400}") {
        exercise(&text);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        exercise(&String::from_utf8_lossy(&bytes));
    }

    #[test]
    fn structured_configs_never_panic(text in structured()) {
        exercise(&text);
    }

    #[test]
    fn mutated_corpus_never_panics(
        pick in any::<proptest::sample::Index>(),
        muts in proptest::collection::vec(mutation(), 1..8),
    ) {
        let files = corpus();
        let original = &files[pick.index(files.len())];
        let text = String::from_utf8_lossy(&apply(original.clone(), &muts)).into_owned();
        exercise(&text);
    }
}

/// The grammar produces configs that compile, too, not only errors.
#[test]
fn the_grammar_reaches_valid_configs() {
    use proptest::strategy::ValueTree;
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let strat = structured();
    let mut ok = 0;
    let mut seen = 0;
    for _ in 0..300 {
        let text = strat.new_tree(&mut runner).expect("tree").current();
        seen += 1;
        match compile(&text, "c.yml", &CompileOptions::default()) {
            Ok(_) => ok += 1,
            Err(e) if seen < 4 && std::env::var("SHOW").is_ok() => {
                eprintln!("{text}\n=> {}\n", e[0])
            }
            Err(_) => {}
        }
    }
    assert!(ok > 0, "none of {seen} generated configs compiled");
}

// ------------------------------------------------------------------------ regressions

#[test]
fn alias_bomb_is_an_error() {
    let mut text = String::from("version: 2.1\na0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
    for i in 1..12 {
        let p = i - 1;
        text.push_str(&format!(
            "a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"
        ));
    }
    text.push_str("jobs:\n  build:\n    docker: [{image: x}]\n    steps: *a11\n");
    let errs = compile(&text, "c.yml", &CompileOptions::default()).expect_err("bomb");
    assert!(errs[0].message.starts_with("invalid YAML"), "{}", errs[0]);
}

#[test]
fn deep_nesting_is_an_error_not_a_stack_overflow() {
    for (open, close) in [("[", "]"), ("{a: ", "}")] {
        let text = format!(
            "version: 2.1\nx: {}1{}\n",
            open.repeat(100_000),
            close.repeat(100_000)
        );
        let errs = compile(&text, "c.yml", &CompileOptions::default()).expect_err("deep");
        assert!(errs[0].message.starts_with("invalid YAML"), "{}", errs[0]);
    }
    let mut block = String::from("version: 2.1\nx:\n");
    for i in 0..5000 {
        block.push_str(&" ".repeat(i + 1));
        block.push_str("- \n");
    }
    let _ = compile(&block, "c.yml", &CompileOptions::default());
}

#[test]
fn deep_logic_is_fine() {
    let mut cond = String::from("true");
    for _ in 0..60 {
        cond = format!("{{not: {cond}}}");
    }
    let text = format!("version: 2.1\njobs:\n  build:\n    docker: [{{image: x}}]\n    steps:\n      - when:\n          condition: {cond}\n          steps: [checkout]\n");
    let _ = compile(&text, "c.yml", &CompileOptions::default());
}

#[test]
fn deep_command_chains_are_errors() {
    let mut text = String::from("version: 2.1\ncommands:\n");
    for i in 0..200 {
        text.push_str(&format!("  c{i}:\n    steps: [c{}]\n", i + 1));
    }
    text.push_str("  c200:\n    steps: [checkout]\njobs:\n  build:\n    docker: [{image: x}]\n    steps: [c0]\n");
    let errs = compile(&text, "c.yml", &CompileOptions::default()).expect_err("too deep");
    assert!(errs[0].message.contains("nest more than"), "{}", errs[0]);
}

#[test]
fn big_matrix_is_capped() {
    let vals: Vec<String> = (0..30).map(|i| i.to_string()).collect();
    let list = vals.join(", ");
    let text = format!("version: 2.1\njobs:\n  build:\n    parameters:\n      a: {{type: string}}\n      b: {{type: string}}\n      c: {{type: string}}\n    docker: [{{image: x}}]\n    steps: [checkout]\nworkflows:\n  w:\n    jobs:\n      - build:\n          matrix:\n            parameters:\n              a: [{list}]\n              b: [{list}]\n              c: [{list}]\n");
    let errs = compile(&text, "c.yml", &CompileOptions::default()).expect_err("cap");
    assert!(errs[0].message.contains("more than 10,000"), "{}", errs[0]);
}

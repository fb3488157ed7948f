//! Setup workflows (dynamic config, `setup: true`) with the official orbs as real configs use
//! them (`../shared/orbs`): the setup job gets `CIRCLE_CONTINUATION_KEY` and the continuation
//! orb's script posts the config it made to `https://${circleci_domain}/api/v2/pipeline/continue`
//! (the orb forces https: the coordinator serves TLS with a test CA, which the job trusts
//! through `CURL_CA_BUNDLE`); the continued workflows run in the same pipeline. A config that
//! does not compile, a replayed key and a wrong key are refused with CircleCI's errors.

use crate::harness::{self, Rig, TestCa};
use bosun::coordinator::store::PipelineStore as _;
use bosun::coordinator::store::Store;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// `bosun coordinator serve` in a container on the rig's network, reachable there as
/// `https://coordinator:8080` (what jobs' `circleci_domain` names) and from the host on a
/// published loopback port (where the host's agent and the test reach it), with the vendored
/// orbs as its `--orb-dir`. Returns (container, host URL).
fn coordinator(rig: &Rig, data: &Path, ca: &TestCa, orbs: &Path) -> (String, String) {
    use std::os::unix::fs::MetadataExt;
    std::fs::create_dir_all(data).expect("data dir");
    let meta = std::fs::metadata(data).expect("data dir");
    let parent = data.parent().expect("parent");
    let inside = |p: &Path| format!("/srv/{}", p.strip_prefix(parent).expect("under").display());
    let bin = format!("{}:/usr/local/bin/bosun:ro", harness::bosun_bin().display());
    let vol = format!("{}:/srv", parent.display());
    let orb_vol = format!("{}:/orbs:ro", orbs.display());
    let label = format!("{}={}", harness::LABEL, rig.run_id);
    let user = format!("{}:{}", meta.uid(), meta.gid());
    let (data_in, cert, key) = (inside(data), inside(&ca.cert), inside(&ca.key));
    let image = harness::image("base");
    let container = harness::docker(&[
        "run",
        "-d",
        "--label",
        &label,
        "--network",
        &rig.network,
        "--network-alias",
        "coordinator",
        "--user",
        &user,
        "-p",
        "127.0.0.1::8080",
        "-v",
        &bin,
        "-v",
        &vol,
        "-v",
        &orb_vol,
        &image,
        "/usr/local/bin/bosun",
        "coordinator",
        "serve",
        "--listen",
        "0.0.0.0:8080",
        "--data",
        &data_in,
        "--tls-cert",
        &cert,
        "--tls-key",
        &key,
        "--orb-dir",
        "/orbs",
    ]);
    let t0 = Instant::now();
    loop {
        let out = harness::output(Command::new("docker").args(["logs", &container]));
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if text.contains("listening on https") {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(30), "{text}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let port = harness::docker(&["port", &container, "8080/tcp"]);
    let addr = port.lines().next().unwrap_or("").trim().to_owned();
    (container, format!("https://{addr}"))
}

/// The vendored orbs (`harness::orbs_dir()`, or `BOSUN_ORB_DIR` where the checkout has no
/// `../shared` beside it, as in a work tree); `None`: skip, and say so.
fn orbs() -> Option<PathBuf> {
    let dir = std::env::var_os("BOSUN_ORB_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(harness::orbs_dir);
    match dir.join("circleci/continuation@2.0.1.yml").is_file() {
        true => Some(dir.canonicalize().expect("orb dir")),
        false => {
            eprintln!(
                "skipped: no vendored orbs at {} (set BOSUN_ORB_DIR)",
                dir.display()
            );
            None
        }
    }
}

/// The setup config: its job tries a config that does not compile, continues with the orb,
/// then replays the key; each answer goes to the log.
fn setup_config(cimg: &str, ca_pem: &str) -> String {
    let pem: String = ca_pem.lines().map(|l| format!("          {l}\n")).collect();
    format!(
        r#"version: 2.1
setup: true
orbs:
  continuation: circleci/continuation@2.0.1
jobs:
  generate:
    docker: [{{image: {cimg}}}]
    environment:
      CURL_CA_BUNDLE: /tmp/coordinator-ca.pem
      CA_PEM: |
{pem}    steps:
      - checkout
      - run: printf '%s\n' "$CA_PEM" > /tmp/coordinator-ca.pem
      - run: echo "key length ${{#CIRCLE_CONTINUATION_KEY}}" && echo "key=$CIRCLE_CONTINUATION_KEY"
      - run: |
          jq -n --arg k "$CIRCLE_CONTINUATION_KEY" '{{"continuation-key": $k, "configuration": "version: 2.1\njobs: {{nope: {{steps: [{{run: {{comand: true}}}}]}}}}"}}' > /tmp/bad.json
          code=$(curl -s -o /tmp/bad.out -w '%{{http_code}}' -XPOST -H 'Content-Type: application/json' --data @/tmp/bad.json https://coordinator:8080/api/v2/pipeline/continue)
          echo "broken=$code $(cat /tmp/bad.out)"
      - continuation/continue:
          configuration_path: .circleci/continue.yml
          parameters: '{{"target": "from-setup"}}'
          circleci_domain: coordinator:8080
      - run: |
          jq -n --arg k "$CIRCLE_CONTINUATION_KEY" '{{"continuation-key": $k, "configuration": "version: 2.1"}}' > /tmp/again.json
          code=$(curl -s -o /tmp/again.out -w '%{{http_code}}' -XPOST -H 'Content-Type: application/json' --data @/tmp/again.json https://coordinator:8080/api/v2/pipeline/continue)
          echo "replay=$code $(cat /tmp/again.out)"
workflows:
  setup:
    jobs: [generate]
"#
    )
}

fn continued_config(base: &str) -> String {
    format!(
        r#"version: 2.1
parameters:
  target: {{type: string, default: none}}
jobs:
  deploy:
    docker: [{{image: {base}}}]
    steps:
      - run: echo "continued for << pipeline.parameters.target >> on << pipeline.git.branch >>"
workflows:
  after:
    jobs: [deploy]
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_setup_workflow_continues_its_pipeline_with_the_continuation_orb_once() {
    let Some(orbs) = orbs() else { return };
    harness::ensure_images();
    let rig = Rig::start();
    rig.create_repo("acme/widget");
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("coordinator");
    let ca = TestCa::new(&dir.path().join("tls"), &["coordinator", "127.0.0.1"]);
    let ca_pem = std::fs::read_to_string(&ca.ca_cert).expect("CA");
    let repo = rig.work_repo("acme/widget");
    repo.write(
        ".circleci/config.yml",
        &setup_config(&harness::image("cimg"), &ca_pem),
    );
    repo.write(
        ".circleci/continue.yml",
        &continued_config(&harness::image("base")),
    );
    repo.commit("dynamic config");
    repo.push("HEAD:refs/heads/main");

    let (_container, url) = coordinator(&rig, &data, &ca, &orbs);
    let token = harness::add_stand_in_project(&data, &rig, "acme/widget", &[]);
    let op = harness::coordinator_cli(&data, &["operator", "new", "ann"])
        .trim()
        .to_owned();
    let root = dir.path().join("agent");
    std::fs::create_dir_all(&root).expect("agent dir");
    let token_file = root.join("registration-token");
    std::fs::write(&token_file, token.trim()).expect("token");
    let mut toml = harness::agent_toml(&url, &token_file, "one", &root, &rig);
    toml.push_str(&format!(
        "ca_file = {:?}\norb_dir = {:?}\nheartbeat_secs = 1\n",
        ca.ca_cert, orbs
    ));
    let config = root.join("agent.toml");
    std::fs::write(&config, toml).expect("agent.toml");
    let log = root.join("agent.log");
    let _agent = harness::KillOnDrop(harness::spawn_agent(&config, &log, &[]));

    let http = reqwest::Client::builder()
        .add_root_certificate(
            reqwest::Certificate::from_pem(ca_pem.as_bytes()).expect("CA certificate"),
        )
        .build()
        .expect("client");
    let trigger: serde_json::Value = http
        .post(format!("{url}/api/v2/project/bb/acme/widget/pipeline"))
        .header("Circle-Token", &op)
        .json(&serde_json::json!({"branch": "main"}))
        .send()
        .await
        .expect("trigger")
        .json()
        .await
        .expect("json");
    let number = trigger["number"].as_i64().expect("number");

    let store = Store::open(&data).expect("store");
    let t0 = Instant::now();
    let p = loop {
        let id = store
            .list_pipelines(Some("acme/widget"), 5)
            .expect("pipelines")
            .into_iter()
            .find(|p| p.number == number);
        if let Some(p) = id.filter(|p| {
            matches!(
                p.status.as_str(),
                "success" | "failed" | "errored" | "canceled"
            )
        }) {
            break p;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(240),
            "agent log:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    let job_of = |name: &str| {
        p.workflows
            .iter()
            .flat_map(|w| &w.jobs)
            .find(|j| j.name == name)
            .and_then(|j| j.job_id)
            .unwrap_or_else(|| panic!("no job {name}: {p:#?}"))
    };
    let setup_log = harness::job_log(&data, &job_of("generate").to_string());
    assert_eq!(p.status.as_str(), "success", "{p:#?}\n{setup_log}");
    let names: Vec<(&str, &str)> = p
        .workflows
        .iter()
        .map(|w| (w.name.as_str(), w.status.as_str()))
        .collect();
    assert_eq!(names, [("setup", "success"), ("after", "success")]);

    // The key reached the setup job, masked in its log.
    assert!(setup_log.contains("key length 64"), "{setup_log}");
    let leaked = regex::Regex::new("key=[0-9a-f]{64}").expect("regex");
    assert!(!leaked.is_match(&setup_log), "{setup_log}");
    // A config that does not compile is refused (and the key stays good), the orb's
    // continuation is taken, a replay is refused.
    assert!(
        setup_log.contains(r#"broken=400 {"message":"Config errors: "#),
        "{setup_log}"
    );
    assert!(
        setup_log.contains("comand"),
        "the compiler's error names the key: {setup_log}"
    );
    assert!(
        setup_log.contains(r#"replay=400 {"message":"Pipeline has already been continued"}"#),
        "{setup_log}"
    );
    // The continued job compiled the config the setup job sent, with its parameters and the
    // pipeline's own values.
    let deploy_log = harness::job_log(&data, &job_of("deploy").to_string());
    assert!(
        deploy_log.contains("continued for from-setup on main"),
        "{deploy_log}"
    );

    // API v2 shows both configs; a wrong key is refused.
    let cfg: serde_json::Value = http
        .get(format!("{url}/api/v2/pipeline/{}/config", p.uuid))
        .header("Circle-Token", &op)
        .send()
        .await
        .expect("config")
        .json()
        .await
        .expect("json");
    assert!(
        cfg["source"]
            .as_str()
            .is_some_and(|s| s.contains("continued for")),
        "{cfg:#}"
    );
    assert!(
        cfg["setup-config"]
            .as_str()
            .is_some_and(|s| s.contains("setup: true")),
        "{cfg:#}"
    );
    for key in ["0".repeat(64), "not a key".to_owned()] {
        let r = http
            .post(format!("{url}/api/v2/pipeline/continue"))
            .json(&serde_json::json!({"continuation-key": key, "configuration": "version: 2.1"}))
            .send()
            .await
            .expect("continue");
        assert_eq!(r.status().as_u16(), 400);
        let v: serde_json::Value = r.json().await.expect("json");
        assert_eq!(
            v,
            serde_json::json!({"message": "Invalid continuation key"})
        );
    }
}

/// The path-filtering orb (with `circleci/jq`) as monorepos use it: its `filter` job compiles
/// as the pipeline's setup workflow, pointed at the coordinator by `circleci_domain`, and ends
/// in the continuation orb's `continue` with that domain. (Running it needs mikefarah's `yq`,
/// which the orb downloads from GitHub when missing and Debian does not package: not here.)
#[test]
fn the_path_filtering_orb_compiles_as_a_setup_workflow_pointed_at_the_coordinator() {
    let Some(orbs) = orbs() else { return };
    use bosun::coordinator::pipelines::config::compile;
    use bosun::coordinator::store::pipelines::PipelineToFetch;
    let config = r#"version: 2.1
setup: true
orbs:
  path-filtering: circleci/path-filtering@2.1.0
workflows:
  setup:
    jobs:
      - path-filtering/filter:
          base-revision: main
          config-path: .circleci/continue.yml
          circleci_domain: ci.example.com:8443
          mapping: |
            service-a/.* build-a true
            service-b/.* build-b true
"#;
    let p = PipelineToFetch {
        id: 1,
        uuid: "5034460f-c7c4-4c43-9457-de07e2029e7b".into(),
        number: 1,
        project_slug: "acme/widget".into(),
        project_uuid: "{p}".into(),
        clone_url: "git@bitbucket.org:acme/widget.git".into(),
        keys: Vec::new(),
        known_hosts: String::new(),
        reference: "main".into(),
        branch: Some("main".into()),
        tag: None,
        params: Vec::new(),
        trigger_source: "webhook".into(),
        event: "push".into(),
        event_action: String::new(),
        base_revision: None,
        default_branch: "main".into(),
        api: None,
        schedule_name: String::new(),
        schedule_id: String::new(),
        scheduled_workflow: None,
    };
    let sha = "a".repeat(40);
    // Without the orbs the coordinator cannot compile it, and says which orb it lacks.
    let e = compile(&p, &sha, config, None).err().expect("no orbs");
    assert!(e.contains("path-filtering"), "{e}");
    let c = compile(&p, &sha, config, Some(&orbs)).unwrap_or_else(|e| panic!("{e}"));
    assert!(c.setup);
    let jobs: Vec<&str> = c
        .workflows
        .iter()
        .flat_map(|w| w.jobs.iter().map(|j| j.name.as_str()))
        .collect();
    assert_eq!(jobs, ["path-filtering/filter"]);
    assert!(
        c.processed
            .contains("https://${CIRCLECI_DOMAIN}/api/v2/pipeline/continue"),
        "{}",
        c.processed
    );
    assert!(
        c.processed.contains("ci.example.com:8443"),
        "{}",
        c.processed
    );
}

//! The lifecycle against the recording executor double: every exit path removes what the job
//! made, in the right order, without an engine.

use super::bootstrap::ContainerUser;
use super::environment::builtin_env;
use super::shell_step::step_command;
use super::*;
use crate::config::{DockerImage, ExecutorKind, JobPlan, RunStep, Step, StepKind, When};
use crate::executor::double::{Call, Op, Recording, Reply, Script};
use crate::executor::NetworkMode;
use crate::stream::{Event, MemorySink, StepStatus};
use std::path::Path;
use tokio_util::sync::CancellationToken;

#[path = "ready_tests.rs"]
mod ready_tests;

pub(super) fn plan(steps: Vec<Step>) -> JobPlan {
    JobPlan {
        name: "build".into(),
        image: "img".into(),
        user: None,
        image_auth: None,
        image_environment: vec![],
        environment: vec![],
        working_directory: "~/project".into(),
        shell: None,
        parallelism: 1,
        steps,
        services: vec![],
        executor: ExecutorKind::Docker,
        resource_class: None,
        unsupported: None,
    }
}

fn run(name: &str, command: &str, when: When) -> Step {
    Step {
        name: name.into(),
        kind: StepKind::Run(RunStep {
            command: command.into(),
            shell: None,
            environment: vec![],
            working_directory: None,
            background: false,
            no_output_timeout: Duration::from_secs(5),
        }),
        when,
    }
}

fn background(name: &str, command: &str) -> Step {
    let mut s = run(name, command, When::OnSuccess);
    if let StepKind::Run(r) = &mut s.kind {
        r.background = true;
    }
    s
}

fn spec(store_dir: &Path, plan: JobPlan) -> JobSpec {
    let context = Arc::new(JobContext {
        workspace: "j".into(),
        agent_id: "a".into(),
        source: None,
        access: Access {
            keys: vec![],
            known_hosts: KnownHosts::pinned(),
            vcs_hosts: VcsHosts::new(),
            mirrors: None,
        },
        additional_keys: vec![],
        env: vec![],
        project_env: vec![],
        contexts: vec![],
        secrets: Secrets::default(),
        time_limit: None,
        network: None,
        build_num: 1,
        kill_grace: Duration::from_millis(100),
        prefetched: None,
        store: crate::store::LocalStore::open(store_dir, crate::store::ProjectScope::new("test"))
            .expect("store"),
        pull_request: None,
        git_ref: (None, None),
        machine_images: std::collections::BTreeMap::new(),
        registry: Registry::new(),
        engine: None,
        identity: Default::default(),
        limits: Default::default(),
        ready: None,
    });
    JobSpec::new(&context, "j".into(), plan)
}

/// The context of a spec no other holds, to change before the job runs.
pub(super) fn context_mut(s: &mut JobSpec) -> &mut JobContext {
    Arc::get_mut(&mut s.context).expect("a spec's context is its own in tests")
}

fn reply(pattern: &str, stdout: &str, exit: i64) -> Reply {
    Reply {
        pattern: pattern.into(),
        stdout: stdout.as_bytes().to_vec(),
        stderr: Vec::new(),
        exit,
        delay: Duration::ZERO,
        hang: false,
    }
}

fn hang(pattern: &str) -> Reply {
    Reply {
        hang: true,
        ..reply(pattern, "", 0)
    }
}

fn removed(calls: &[Call]) -> Vec<String> {
    calls
        .iter()
        .filter_map(|c| match c {
            Call::Remove(id) => Some(id.clone()),
            _ => None,
        })
        .collect()
}

struct Run {
    outcome: JobOutcome,
    double: Arc<Recording>,
    events: Vec<Event>,
}

async fn run_with(script: Script, make: impl FnOnce(&Path) -> JobSpec) -> Run {
    run_cancelled(script, make, None).await
}

async fn run_cancelled(
    script: Script,
    make: impl FnOnce(&Path) -> JobSpec,
    cancel_after: Option<Duration>,
) -> Run {
    let double = Recording::new(script);
    let store = tempfile::tempdir().expect("tempdir");
    let spec = make(store.path());
    let sink = Arc::new(MemorySink::default());
    let cancel = CancellationToken::new();
    if let Some(after) = cancel_after {
        let c = cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            c.cancel();
        });
    }
    let outcome = run_job(double.clone(), spec, sink.clone(), cancel).await;
    let events = sink.events.lock().map(|e| e.clone()).unwrap_or_default();
    Run {
        outcome,
        double,
        events,
    }
}

#[tokio::test]
async fn a_panicking_step_task_fails_the_job_and_the_container_is_still_removed() {
    let r = run_with(
        Script {
            panic_on_exec: Some("step-0.sh".into()),
            ..Script::default()
        },
        |d| {
            spec(
                d,
                plan(vec![
                    run("explodes", "true", When::OnSuccess),
                    run("cleanup", "true", When::Always),
                ]),
            )
        },
    )
    .await;
    assert_eq!(r.outcome.status, JobStatus::Failed);
    assert_eq!(r.outcome.steps[0].status, StepStatus::Failed);
    assert_eq!(
        r.outcome.steps[1].status,
        StepStatus::Success,
        "when: always still runs"
    );
    assert_eq!(r.double.live(), Vec::<String>::new());
    assert_eq!(removed(&r.double.calls()), ["c1"]);
}

#[tokio::test]
async fn files_go_through_the_main_process_stdin_and_fall_back_to_the_archive_upload() {
    let r = run_with(Script::default(), |d| {
        spec(d, plan(vec![run("a", "true", When::OnSuccess)]))
    })
    .await;
    assert_eq!(r.outcome.status, JobStatus::Success);
    assert!(
        !r.double
            .calls()
            .iter()
            .any(|c| matches!(c, Call::Upload { .. })),
        "files went through stdin: {:?}",
        r.double.calls()
    );
    // The primary's main process carries the steps' output (the step runner): the engine
    // keeps none of it in its log files; a service's own output is still logged.
    let primary = r.double.spec_of("c1").expect("the primary's spec");
    assert!(primary.stdin && primary.unlogged);
    let r = run_with(
        Script {
            refuse_stdin_files: true,
            ..Script::default()
        },
        |d| spec(d, plan(vec![run("a", "true", When::OnSuccess)])),
    )
    .await;
    assert_eq!(r.outcome.status, JobStatus::Success);
    assert!(
        r.double
            .calls()
            .iter()
            .any(|c| matches!(c, Call::Upload { dest, .. } if dest == "/")),
        "the archive upload took over: {:?}",
        r.double.calls()
    );
}

#[tokio::test]
async fn background_steps_are_stopped_when_the_job_ends() {
    let r = run_with(
        Script {
            replies: vec![hang("step-0.sh")],
            ..Script::default()
        },
        |d| {
            spec(
                d,
                plan(vec![
                    background("server", "serve"),
                    run("client", "true", When::OnSuccess),
                ]),
            )
        },
    )
    .await;
    assert_eq!(r.outcome.status, JobStatus::Success);
    assert_eq!(r.outcome.steps[0].status, StepStatus::Stopped);
    assert_eq!(r.outcome.steps[1].status, StepStatus::Success);
    let calls = r.double.calls();
    let kill = calls
        .iter()
        .position(|c| matches!(c, Call::Exec { cmd, .. } if cmd.contains("step-0.pid") && cmd.contains("TERM")))
        .expect("the background step got TERM");
    let remove = calls
        .iter()
        .position(|c| matches!(c, Call::Remove(_)))
        .expect("removed");
    assert!(
        kill < remove,
        "stopped before the container went: {calls:?}"
    );
}

#[tokio::test]
async fn the_time_limit_stops_the_job_timedout_and_removes_everything() {
    let r = run_with(
        Script {
            replies: vec![hang("step-0.sh")],
            ..Script::default()
        },
        |d| {
            let mut s = spec(d, plan(vec![run("sleeps", "sleep 1000", When::OnSuccess)]));
            context_mut(&mut s).time_limit = Some(Duration::from_millis(300));
            s
        },
    )
    .await;
    assert_eq!(r.outcome.status, JobStatus::TimedOut);
    assert_eq!(r.double.live(), Vec::<String>::new());
}

#[tokio::test]
async fn cancel_during_checkout_cancels_the_job_and_removes_the_container() {
    // A "VCS host" that accepts and never answers: the fetch hangs in the SSH handshake.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let hold = std::thread::spawn(move || {
        let _conn = listener.accept();
        std::thread::sleep(Duration::from_secs(20));
    });
    let r = run_cancelled(
        Script::default(),
        |d| {
            let mut s = spec(
                d,
                plan(vec![Step {
                    name: "checkout".into(),
                    kind: StepKind::Checkout { path: None },
                    when: When::OnSuccess,
                }]),
            );
            context_mut(&mut s).source = Some(Source {
                url: format!("ssh://git@127.0.0.1:{port}/acme/widget.git"),
                reference: None,
            });
            s
        },
        Some(Duration::from_millis(400)),
    )
    .await;
    drop(hold);
    assert_eq!(
        r.outcome.status,
        JobStatus::Canceled,
        "{:?}",
        r.outcome.error
    );
    assert_eq!(r.double.live(), Vec::<String>::new());
    assert_eq!(removed(&r.double.calls()), ["c1"]);
}

fn with_services(d: &Path, services: Vec<DockerImage>) -> JobSpec {
    let mut p = plan(vec![run("a", "true", When::OnSuccess)]);
    p.services = services;
    spec(d, p)
}

fn service(image: &str, name: Option<&str>) -> DockerImage {
    DockerImage {
        image: image.into(),
        name: name.map(str::to_owned),
        ..DockerImage::default()
    }
}

#[tokio::test]
async fn services_join_the_primarys_namespace_and_go_before_it() {
    let r = run_with(Script::default(), |d| {
        with_services(d, vec![service("pg", Some("db")), service("redis", None)])
    })
    .await;
    assert_eq!(r.outcome.status, JobStatus::Success);
    let primary = r.double.spec_of("c1").expect("primary");
    assert_eq!(primary.extra_hosts, ["db:127.0.0.1"]);
    for svc in ["c2", "c3"] {
        let s = r.double.spec_of(svc).expect("service");
        assert_eq!(s.network, NetworkMode::ContainerOf("c1".into()));
        assert!(s
            .labels
            .contains(&("bosun.kind".to_owned(), "service".to_owned())));
    }
    // Services first (they live in the primary's namespace), newest first.
    assert_eq!(removed(&r.double.calls()), ["c3", "c2", "c1"]);
    assert!(r
        .events
        .iter()
        .any(|e| matches!(e, Event::ContainerStarted { name, container, .. } if name == "db" && container == "c2")));
}

#[tokio::test]
async fn a_missing_service_image_fails_before_anything_is_created() {
    let r = run_with(
        Script {
            missing_images: ["pg".to_owned()].into(),
            ..Script::default()
        },
        |d| with_services(d, vec![service("pg", Some("db"))]),
    )
    .await;
    assert_eq!(r.outcome.status, JobStatus::InfrastructureFail);
    let error = r.outcome.error.unwrap_or_default();
    assert!(error.contains("service container `db` (pg)"), "{error}");
    assert!(
        !r.double
            .calls()
            .iter()
            .any(|c| matches!(c, Call::Create { .. })),
        "{:?}",
        r.double.calls()
    );
}

#[tokio::test]
async fn a_service_that_cannot_start_fails_the_job_and_everything_is_removed() {
    let r = run_with(
        Script {
            fail: vec![(Op::Start, 1)],
            ..Script::default()
        },
        |d| with_services(d, vec![service("pg", Some("db"))]),
    )
    .await;
    assert_eq!(r.outcome.status, JobStatus::InfrastructureFail);
    assert!(r.outcome.error.unwrap_or_default().contains("`db`"));
    assert_eq!(r.double.live(), Vec::<String>::new());
    assert_eq!(removed(&r.double.calls()), ["c2", "c1"]);
}

#[tokio::test]
async fn a_service_that_exits_early_is_reported_without_failing_the_job() {
    let r = run_with(
        Script {
            exiting_services: [("pg".to_owned(), (1, b"FATAL: no config\n".to_vec()))].into(),
            replies: vec![Reply {
                delay: Duration::from_millis(300),
                ..reply("step-0.sh", "", 0)
            }],
            ..Script::default()
        },
        |d| with_services(d, vec![service("pg", Some("db"))]),
    )
    .await;
    assert_eq!(r.outcome.status, JobStatus::Success);
    let exited = r
        .events
        .iter()
        .find_map(|e| match e {
            Event::ServiceExited {
                service,
                exit_code,
                output,
                ..
            } => Some((service.clone(), *exit_code, output.clone())),
            _ => None,
        })
        .expect("reported");
    assert_eq!(exited.0, "db");
    assert_eq!(exited.1, Some(1));
    assert_eq!(&exited.2[..], b"FATAL: no config\n");
}

#[tokio::test]
async fn a_hold_keeps_the_containers_after_the_last_step() {
    let registry = Registry::new();
    let double = Recording::new(Script {
        replies: vec![Reply {
            delay: Duration::from_millis(300),
            ..reply("step-0.sh", "", 0)
        }],
        ..Script::default()
    });
    let store = tempfile::tempdir().expect("tempdir");
    let mut s = spec(store.path(), plan(vec![run("a", "true", When::OnSuccess)]));
    context_mut(&mut s).registry = registry.clone();
    let job = tokio::spawn(run_job(
        double.clone(),
        s,
        Arc::new(MemorySink::default()),
        CancellationToken::new(),
    ));
    let attachment = loop {
        if let Some(a) = registry.get("j") {
            break a;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let hold = attachment.hold(std::time::Instant::now() + Duration::from_secs(30));
    assert_eq!(attachment.container, "c1");
    assert_eq!(attachment.workdir, "/root/project");
    attachment.steps_done.cancelled().await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(double.live(), ["c1"], "held after the last step");
    drop(hold);
    let outcome = job.await.expect("job");
    assert_eq!(outcome.status, JobStatus::Success);
    assert_eq!(double.live(), Vec::<String>::new());
    assert!(registry.get("j").is_none());
}

/// A step's last frames arrive together (stderr, then stdout) just before its output ends:
/// the stdout frame, read ahead while joining stderr frames, must still be emitted. (The
/// step loop once chose at random between that read-ahead frame and the stream's end, and
/// lost the frame about half the time.)
#[tokio::test]
async fn the_last_frames_of_a_step_are_never_lost() {
    for _ in 0..20 {
        let r = run_with(
            Script {
                replies: vec![Reply {
                    stderr: b"notice\n".to_vec(),
                    ..reply("step-0.sh", "MINE a b\n", 0)
                }],
                ..Script::default()
            },
            |d| spec(d, plan(vec![run("split", "split", When::OnSuccess)])),
        )
        .await;
        let (out, err): (String, String) =
            r.events
                .iter()
                .fold((String::new(), String::new()), |(mut o, mut e), ev| {
                    if let Event::Output { stream, data, .. } = ev {
                        let text = String::from_utf8_lossy(data);
                        match stream {
                            crate::stream::Stream::Stdout => o.push_str(&text),
                            crate::stream::Stream::Stderr => e.push_str(&text),
                        }
                    }
                    (o, e)
                });
        assert_eq!(err, "notice\n");
        assert_eq!(out, "MINE a b\n");
    }
}

#[tokio::test]
async fn secrets_are_masked_in_step_output_and_messages() {
    let r = run_with(
        Script {
            replies: vec![reply("step-0.sh", "token=hunter22-secret\n", 0)],
            ..Script::default()
        },
        |d| {
            let mut s = spec(d, plan(vec![run("print", "env", When::OnSuccess)]));
            context_mut(&mut s).secrets = vec![("TOKEN".into(), "hunter22-secret".into())].into();
            s
        },
    )
    .await;
    let text: String = r
        .events
        .iter()
        .filter_map(|e| match e {
            Event::Output { data, .. } => Some(String::from_utf8_lossy(data).into_owned()),
            _ => None,
        })
        .collect();
    assert_eq!(text, "token=********\n");
}

#[tokio::test]
async fn an_unmapped_machine_image_is_a_clear_error_and_nothing_is_created() {
    let r = run_with(Script::default(), |d| {
        let mut p = plan(vec![run("a", "true", When::OnSuccess)]);
        p.executor = ExecutorKind::Machine;
        p.image = "ubuntu-2204:current".into();
        spec(d, p)
    })
    .await;
    assert_eq!(r.outcome.status, JobStatus::InfrastructureFail);
    let error = r.outcome.error.unwrap_or_default();
    assert!(error.contains("`ubuntu-2204:current`"), "{error}");
    assert!(
        error.contains("--machine-image ubuntu-2204:current=IMAGE"),
        "{error}"
    );
    assert!(!r
        .double
        .calls()
        .iter()
        .any(|c| matches!(c, Call::Create { .. })));
}

#[test]
fn a_pull_request_build_gets_circleci_pull_request_variables() {
    let store_dir = tempfile::tempdir().expect("tempdir");
    let user = ContainerUser {
        home: "/root".into(),
        uid: 0,
        gid: 0,
        has_bash: true,
    };
    const NAMES: [&str; 3] = [
        "CIRCLE_PULL_REQUEST",
        "CIRCLE_PULL_REQUESTS",
        "CIRCLE_PR_NUMBER",
    ];
    let mut spec = spec(store_dir.path(), plan(vec![]));
    let env = builtin_env(&spec, &user, "/root/project", None);
    for name in NAMES {
        assert!(
            !env.iter().any(|(k, _)| k == name),
            "{name} set for a build that is no pull request: {env:?}"
        );
    }
    let url = "https://bitbucket.org/acme/widget/pull-requests/7";
    context_mut(&mut spec).pull_request = Some(PullRequest {
        number: 7,
        url: url.into(),
        fork: false,
    });
    let env = builtin_env(&spec, &user, "/root/project", None);
    let get = |name: &str| env.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
    assert_eq!(get("CIRCLE_PULL_REQUEST"), Some(url));
    assert_eq!(get("CIRCLE_PULL_REQUESTS"), Some(url));
    assert_eq!(get("CIRCLE_PR_NUMBER"), None, "not a fork");
    assert_eq!(get("CIRCLE_JOB"), Some("build"), "the others stay");
    if let Some(pr) = context_mut(&mut spec).pull_request.as_mut() {
        pr.fork = true;
    }
    let env = builtin_env(&spec, &user, "/root/project", None);
    let get = |name: &str| env.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
    assert_eq!(get("CIRCLE_PR_NUMBER"), Some("7"), "a fork");
}

#[test]
fn a_checkout_of_a_bare_commit_takes_its_branch_or_tag_from_the_pipeline() {
    let store_dir = tempfile::tempdir().expect("tempdir");
    let user = ContainerUser {
        home: "/root".into(),
        uid: 0,
        gid: 0,
        has_bash: true,
    };
    // What an agent's checkout of a coordinator's pipeline reports: the commit, no ref.
    let bare = bosun_git::checkout::CheckoutOutcome {
        sha: "a".repeat(40),
        branch: None,
        tag: None,
        submodules: vec![],
    };
    let mut spec = spec(store_dir.path(), plan(vec![]));
    let get = |env: &[(String, String)], name: &str| {
        env.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
    };
    let env = builtin_env(&spec, &user, "/root/project", Some(&bare));
    assert_eq!(get(&env, "CIRCLE_BRANCH"), None, "nobody said a branch");
    context_mut(&mut spec).git_ref = (Some("main".into()), None);
    let env = builtin_env(&spec, &user, "/root/project", Some(&bare));
    assert_eq!(get(&env, "CIRCLE_BRANCH").as_deref(), Some("main"));
    assert_eq!(get(&env, "CIRCLE_TAG"), None);
    // A checkout that knows its branch keeps it.
    let named = bosun_git::checkout::CheckoutOutcome {
        branch: Some("feature".into()),
        ..bare.clone()
    };
    let env = builtin_env(&spec, &user, "/root/project", Some(&named));
    assert_eq!(get(&env, "CIRCLE_BRANCH").as_deref(), Some("feature"));
    context_mut(&mut spec).git_ref = (None, Some("v1.2.0".into()));
    let env = builtin_env(&spec, &user, "/root/project", Some(&bare));
    assert_eq!(get(&env, "CIRCLE_TAG").as_deref(), Some("v1.2.0"));
    assert_eq!(get(&env, "CIRCLE_BRANCH"), None);
}

#[test]
fn home_expansion_and_project_names() {
    assert_eq!(
        expand_home("~/project", "/home/circleci"),
        "/home/circleci/project"
    );
    assert_eq!(expand_home("~", "/root/"), "/root");
    assert_eq!(expand_home("/abs", "/root"), "/abs");
    assert_eq!(
        project_names("/srv/repos/acme/widget.git"),
        Some(("acme".into(), "widget".into()))
    );
}

#[test]
fn step_command_records_its_group_and_falls_back_to_sh() {
    let run = RunStep {
        command: "make".into(),
        shell: None,
        environment: vec![],
        working_directory: None,
        background: false,
        no_output_timeout: Duration::from_secs(1),
    };
    let cmd = step_command("j1", 2, &run, false, None);
    assert_eq!(cmd[0], "/bin/sh");
    assert!(cmd[2].contains("/tmp/.bosun-j1/step-2.pid"));
    assert_eq!(
        &cmd[4..],
        ["/bin/sh", "-eo", "pipefail", "/tmp/.bosun-j1/step-2.sh"]
    );
    let cmd = step_command("j1", 2, &run, true, Some("/bin/zsh -e"));
    assert_eq!(&cmd[4..6], ["/bin/zsh", "-e"]);
}

#[tokio::test]
async fn registry_credentials_are_interpolated_reach_the_pull_and_are_masked() {
    let r = run_with(
        Script {
            replies: vec![reply("step-0.sh", "pw=s3cret-registry-pass\n", 0)],
            ..Script::default()
        },
        |d| {
            let mut p = plan(vec![run("print", "env", When::OnSuccess)]);
            p.image_auth = Some(("bot".into(), "${REG_PASSWORD}".into()));
            let mut s = spec(d, p);
            context_mut(&mut s).env = vec![("REG_PASSWORD".into(), "s3cret-registry-pass".into())];
            s
        },
    )
    .await;
    assert_eq!(r.outcome.status, JobStatus::Success);
    let pulls = r.double.pull_auth();
    assert_eq!(pulls.len(), 1);
    assert_eq!(pulls[0].0, "img");
    assert_eq!(
        (
            pulls[0].1.username.as_str(),
            pulls[0].1.password.expose().as_str()
        ),
        ("bot", "s3cret-registry-pass")
    );
    let text: String = r.events.iter().map(|e| format!("{e:?}")).collect();
    assert!(!text.contains("s3cret-registry-pass"), "{text}");
    assert!(text.contains("pw=********"), "{text}");
}

#[test]
fn a_job_gets_the_contexts_it_names_in_order_and_a_lone_job_gets_every_one_given() {
    let store_dir = tempfile::tempdir().expect("tempdir");
    let mut spec = spec(store_dir.path(), plan(vec![]));
    let kv = |k: &str, v: &str| (k.to_owned(), v.to_owned());
    context_mut(&mut spec).contexts = vec![
        ("a".into(), vec![kv("KEY", "from-a"), kv("A", "a")]),
        ("b".into(), vec![kv("KEY", "from-b"), kv("B", "b")]),
    ];
    let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    // A later context over an earlier one, whatever order they were given in.
    let env = super::context_env(&spec.context, Some(&names(&["b", "a"])));
    assert_eq!(env, vec![kv("KEY", "from-a"), kv("B", "b"), kv("A", "a")]);
    // One not given is left out.
    let env = super::context_env(&spec.context, Some(&names(&["missing", "b"])));
    assert_eq!(env, vec![kv("KEY", "from-b"), kv("B", "b")]);
    // A job run alone: every context, in the order given.
    let env = super::context_env(&spec.context, None);
    assert_eq!(env, vec![kv("KEY", "from-b"), kv("A", "a"), kv("B", "b")]);
}

//! `bosun agent` against a fake coordinator written here (std TcpListener, HTTP/1.1, one
//! request per connection) that speaks protocol v1 from `bosun-protocol`: the log arrives
//! byte for byte and masked, step events carry offsets, the final status arrives — also
//! across a coordinator outage; a cancel in a heartbeat ends the job; SIGTERM drains.

use crate::harness;

use crate::agent_rig::*;

use crate::harness::{ensure_images, image, sha256, Project};
use bosun::protocol::*;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

#[test]
fn log_events_and_status_arrive_masked_and_complete_across_a_coordinator_outage() {
    ensure_images();
    let p = Project::new(&format!(
        r#"version: 2.1
jobs:
  build:
    docker:
      - image: {img}
    steps:
      - run:
          name: secret
          command: |
            echo "token=$API_TOKEN greeting=$GREETING"
            printf 's3cr3t-'; sleep 0.3; printf 'value-42 split\n'
      - run:
          name: long output
          command: for i in $(seq 1 40); do echo "line $i of the long step xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"; sleep 0.2; done
      - run: echo done-marker
"#,
        img = image("base")
    ));
    let agent_id = format!("agent-{}", p.job_id);
    let fake = Fake::start(&agent_id);
    fake.st().queue.push(wire_job(
        &p,
        vec![
            WireEnv {
                name: "API_TOKEN".into(),
                value: SECRET.into(),
                secret: true,
            },
            WireEnv {
                name: "GREETING".into(),
                value: "hello".into(),
                secret: false,
            },
        ],
    ));
    let agent = AgentProc::start(&fake, &agent_id);
    let id = p.job_id.clone();

    // Take the coordinator down while the long step runs.
    fake.wait_for_output(&id, "line 3 of", 120);
    fake.down.store(true, Ordering::SeqCst);
    let went_down = Instant::now();
    std::thread::sleep(Duration::from_secs(4));
    let before_up = fake.st().logs.get(&id).map_or(0, Vec::len);
    fake.down.store(false, Ordering::SeqCst);

    let fin = fake.wait_for("the finish", 120, |s| {
        s.finish.get(&id).map(|f| f.0.clone())
    });
    let s = fake.st();
    let log = s.logs.get(&id).cloned().unwrap_or_default();
    let text = String::from_utf8_lossy(&log).into_owned();
    assert!(went_down.elapsed() > Duration::from_secs(4));
    assert!(log.len() > before_up, "the log grew after the outage");
    assert_eq!(fin.status, FinalStatus::Success, "{text}");
    assert_eq!(fin.log_bytes, log.len() as u64);
    assert_eq!(fin.log_sha256, sha256(&log), "byte for byte");
    assert!(text.contains("token=******** greeting=hello"), "{text}");
    assert!(text.contains("******** split"), "{text}");
    assert!(
        !text.contains("s3cr3t") && !text.contains("value-42"),
        "{text}"
    );
    let mut last = 0;
    for i in 1..=40 {
        let at = text
            .find(&format!("line {i} of the long step"))
            .unwrap_or_else(|| panic!("line {i} missing:\n{text}"));
        assert!(at > last, "line {i} out of order");
        last = at;
    }
    assert!(text.contains("done-marker"));

    let events = s.events.get(&id).cloned().unwrap_or_default();
    let starts: Vec<(u32, u64)> = events
        .iter()
        .filter_map(|e| match e {
            JobEvent::StepStarted {
                step, log_offset, ..
            } => Some((*step, *log_offset)),
            _ => None,
        })
        .collect();
    let ends: Vec<(u32, bosun::protocol::StepStatus, u64)> = events
        .iter()
        .filter_map(|e| match e {
            JobEvent::StepFinished {
                step,
                status,
                log_offset,
                ..
            } => Some((*step, *status, *log_offset)),
            _ => None,
        })
        .collect();
    assert_eq!(starts.len(), 3, "{events:?}");
    assert_eq!(ends.len(), 3, "{events:?}");
    // The commit the agent checked out rides on the first step start, once.
    let shas: Vec<Option<String>> = events
        .iter()
        .filter_map(|e| match e {
            JobEvent::StepStarted { commit_sha, .. } => Some(commit_sha.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(shas, [Some(head(&p)), None, None], "{events:?}");
    for (i, ((step, start), (estep, status, end))) in starts.iter().zip(&ends).enumerate() {
        assert_eq!((*step as usize, *estep as usize), (i, i));
        assert_eq!(*status, bosun::protocol::StepStatus::Success);
        let at = usize::try_from(*start).expect("offset");
        assert!(
            log[at..].starts_with(format!("\n==> Step {}", i + 1).as_bytes()),
            "step {i} offset {at}: {:?}",
            String::from_utf8_lossy(&log[at..(at + 40).min(log.len())])
        );
        assert!(end > start);
    }
    let secret_end = usize::try_from(ends[0].2).expect("offset");
    assert!(String::from_utf8_lossy(&log[..secret_end]).contains("******** split"));
    assert!(s
        .heartbeats
        .iter()
        .any(|h| h.running.iter().any(|r| r.job_id == id)));
    assert_eq!(s.registrations, 1);
    drop(s);
    // The spool is gone once the coordinator acknowledged the finish.
    let until = Instant::now() + Duration::from_secs(10);
    while std::fs::read_dir(agent.spool()).map_or(0, |d| d.count()) > 0 {
        assert!(Instant::now() < until, "spool not cleaned");
        std::thread::sleep(Duration::from_millis(100));
    }
    let alog = agent.log();
    assert!(alog.contains("registered"), "{alog}");
    // The outage was seen (connection refused) and ridden out with retries.
    assert!(alog.contains("retrying in"), "{alog}");
    p.assert_no_container_left();
}

#[test]
fn a_cancel_in_a_heartbeat_ends_the_job_canceled_within_5s() {
    let p = one_step("wait forever", "echo sleeping; sleep 300");
    let (fake, agent_id) = Fake::with_job(&p);
    let _agent = AgentProc::start(&fake, &agent_id);
    let id = p.job_id.clone();
    fake.wait_for("the step to run", 120, |s| {
        s.heartbeats
            .iter()
            .any(|h| {
                h.running
                    .iter()
                    .any(|r| r.job_id == id && r.state.starts_with("step 1/1"))
            })
            .then_some(())
    });
    fake.st().cancel.insert(id.clone());
    let (fin, at) = fake.wait_for_finish(&id, 60);
    let sent = fake
        .st()
        .cancel_sent
        .get(&id)
        .copied()
        .expect("cancel sent");
    assert_eq!(fin.status, FinalStatus::Canceled);
    let took = at.duration_since(sent);
    eprintln!("cancel → finish: {took:?}");
    assert!(took <= Duration::from_secs(5), "took {took:?}");
    p.assert_no_container_left();
}

#[test]
fn sigterm_drains_the_running_job_then_exits_0() {
    let p = one_step("slow", "echo started; sleep 4; echo drained-ok");
    let (fake, agent_id) = Fake::with_job(&p);
    let mut agent = AgentProc::start(&fake, &agent_id);
    let id = p.job_id.clone();
    fake.wait_for_output(&id, "started", 120);
    agent.signal(libc::SIGTERM);
    let claims_at_term = fake.st().claims;
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        agent.child.try_wait().expect("wait").is_none(),
        "the agent exited before its job finished"
    );
    let status = agent.wait_exit(60);
    assert_eq!(status.code(), Some(0), "{}", agent.log());
    let s = fake.st();
    let (fin, _) = s
        .finish
        .get(&id)
        .cloned()
        .expect("finish delivered before exit");
    assert_eq!(fin.status, FinalStatus::Success);
    let text = String::from_utf8_lossy(&s.logs[&id]).into_owned();
    assert!(text.contains("drained-ok"), "{text}");
    assert!(s.claims <= claims_at_term + 1, "claimed after SIGTERM");
    assert!(
        s.heartbeats.iter().any(|h| h.draining),
        "a heartbeat said draining"
    );
    drop(s);
    assert_eq!(std::fs::read_dir(agent.spool()).map_or(0, |d| d.count()), 0);
    p.assert_no_container_left();
}

#[test]
fn after_a_crash_the_restarted_agent_removes_the_orphan_and_reports_the_job() {
    let p = one_step("long", "echo before-crash; sleep 300");
    let (fake, agent_id) = Fake::with_job(&p);
    let mut agent = AgentProc::start(&fake, &agent_id);
    let id = p.job_id.clone();
    fake.wait_for_output(&id, "before-crash", 120);
    agent.crash_and_restart();
    assert_eq!(p.containers().len(), 1, "the crash left the container");
    let (fin, _) = fake.wait_for_finish(&id, 60);
    let s = fake.st();
    let log = s.logs[&id].clone();
    let text = String::from_utf8_lossy(&log).into_owned();
    assert_eq!(fin.status, FinalStatus::InfrastructureFail, "{text}");
    assert!(text.contains("before-crash"), "{text}");
    assert!(
        text.contains("the agent stopped while this job ran"),
        "{text}"
    );
    assert_eq!(fin.log_sha256, sha256(&log));
    assert_eq!(s.registrations, 1, "the stored agent token was reused");
    drop(s);
    p.assert_no_container_left();
    let mode = std::fs::metadata(agent.dir.path().join("state/agent.json"))
        .expect("agent.json")
        .permissions();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(mode.mode() & 0o777, 0o600);
}

/// A job's engine objects (a running container, a volume, a network, a built image) made
/// through its `setup_remote_docker` engine: an agent SIGKILLed while the job runs leaves them,
/// and the restarted agent's sweep removes every one.
#[test]
fn after_a_crash_the_restarted_agent_removes_the_jobs_engine_objects() {
    ensure_images();
    let base = image("base");
    let p = Project::new(&format!(
        r#"version: 2.1
jobs:
  build:
    docker:
      - image: {img}
        user: circleci
    steps:
      - setup_remote_docker
      - run:
          name: make things, then wait
          command: |
            docker volume create vol1 && docker network create net1
            printf 'FROM {base}\nRUN true\n' | docker build -q -t made-by-job -
            docker run -d -v vol1:/v --network net1 made-by-job sleep 300
            echo engine-objects-made
            sleep 300
"#,
        img = image("docker")
    ));
    let agent_id = format!("agent-{}", p.job_id);
    let fake = Fake::start(&agent_id);
    fake.st().queue.push(wire_job(&p, Vec::new()));
    let mut agent = AgentProc::start(&fake, &agent_id);
    let id = p.job_id.clone();
    let made = fake.wait_for("the objects made, or the job's end", 180, |s| {
        let log = String::from_utf8_lossy(s.logs.get(&id)?).into_owned();
        (log.contains("engine-objects-made") || s.finish.contains_key(&id))
            .then(|| (log.contains("engine-objects-made"), log))
    });
    assert!(
        made.0,
        "the job ended before making its objects:\n{}",
        made.1
    );
    let labelled = || {
        let f = format!("label=bosun.job={id}");
        let mut all = Vec::new();
        for args in [
            ["ps", "-aq"],
            ["volume", "ls"],
            ["network", "ls"],
            ["images", "-aq"],
        ] {
            let mut a: Vec<&str> = args.to_vec();
            if args[0] == "volume" || args[0] == "network" {
                a.push("-q");
            }
            a.extend(["--filter", &f]);
            all.extend(
                harness::docker(&a)
                    .split_whitespace()
                    .map(|s| format!("{} {s}", args[0])),
            );
        }
        all
    };
    let before = labelled();
    for kind in ["ps", "volume", "network", "images"] {
        assert!(
            before.iter().any(|o| o.starts_with(kind)),
            "the job made a {kind} object through its engine: {before:?}"
        );
    }
    agent.crash_and_restart();
    let (fin, _) = fake.wait_for_finish(&id, 60);
    assert_eq!(fin.status, FinalStatus::InfrastructureFail);
    // The sweep runs at start-up, before the restarted agent reports the lost job.
    assert!(
        labelled().is_empty(),
        "left after the sweep: {:?}",
        labelled()
    );
    p.assert_no_container_left();
}

#[test]
fn bad_config_and_unreachable_repository_finish_as_infrastructure_fail() {
    let p = Project::new(
        "version: 2.1\njobs:\n  build:\n    docker:\n      - image: nope\n    steps: [checkout]\n",
    );
    let agent_id = format!("agent-{}", p.job_id);
    let fake = Fake::start(&agent_id);
    let mut no_job = wire_job(&p, Vec::new());
    no_job.id = format!("{}-nojob", p.job_id);
    no_job.job_name = "deploy".into();
    let mut no_repo = wire_job(&p, Vec::new());
    no_repo.id = format!("{}-norepo", p.job_id);
    no_repo.project.clone_url = "/nonexistent/bosun/repo".into();
    fake.st().queue.extend([no_job.clone(), no_repo.clone()]);
    let _agent = AgentProc::start(&fake, &agent_id);
    for (job, words) in [(&no_job, "deploy"), (&no_repo, "/nonexistent/bosun/repo")] {
        let (fin, _) = fake.wait_for_finish(&job.id, 60);
        let text = String::from_utf8_lossy(&fake.st().logs[&job.id]).into_owned();
        assert_eq!(fin.status, FinalStatus::InfrastructureFail, "{text}");
        let err = fin.error.clone().unwrap_or_default();
        assert!(err.contains(words), "{err}");
        assert!(text.contains(words), "{text}");
    }
}

#[test]
fn a_revoked_token_stops_the_agent_with_a_clear_message() {
    let agent_id = format!("agent-{}", harness::new_run_id());
    let fake = Fake::start(&agent_id);
    let mut agent = AgentProc::start(&fake, &agent_id);
    fake.wait_for("a claim", 30, |s| (s.claims > 0).then_some(()));
    fake.st().revoked = true;
    let status = agent.wait_exit(30);
    assert_eq!(status.code(), Some(78));
    assert!(
        agent.log().contains("agent token revoked"),
        "{}",
        agent.log()
    );
}

/// Issue 12 item 2: caches are the project's own (by repository UUID), and a build of a
/// pull request from a fork reads the project's caches but never writes them.
#[test]
fn caches_are_per_project_and_a_forked_pull_request_never_writes_the_projects_caches() {
    ensure_images();
    let p = Project::new(&format!(
        r#"version: 2.1
jobs:
  save:
    docker: [{{image: {img}, user: circleci}}]
    steps:
      - run: mkdir -p ~/deps && echo "$WHO" > ~/deps/who
      - save_cache: {{key: deps-v1, paths: [~/deps]}}
  check:
    docker: [{{image: {img}, user: circleci}}]
    steps:
      - restore_cache: {{keys: [deps-v1]}}
      - run: echo "who=$(cat ~/deps/who 2>/dev/null || echo none)"
"#,
        img = image("base")
    ));
    let agent_id = format!("agent-{}", p.job_id);
    let fake = Fake::start(&agent_id);
    let job = |n: u32, name: &str, uuid: &str, fork_pr: Option<u64>, who: &str| {
        let mut j = wire_job(
            &p,
            vec![WireEnv {
                name: "WHO".into(),
                value: who.into(),
                secret: false,
            }],
        );
        j.id = format!("{}-{n}", p.job_id);
        j.job_name = name.into();
        j.project.uuid = uuid.into();
        j.pull_request = fork_pr.map(|number| WirePullRequest {
            number,
            url: format!("https://bitbucket.org/acme/widget/pull-requests/{number}"),
            fork: true,
        });
        j
    };
    let widget = "{00000000-0000-0000-0000-00000000000a}";
    let other = "{00000000-0000-0000-0000-00000000000b}";
    let jobs = [
        job(1, "save", widget, Some(5), "fork"),
        job(2, "check", widget, None, ""),
        job(3, "save", widget, None, "base"),
        job(4, "check", widget, Some(5), ""),
        job(5, "check", other, None, ""),
    ];
    let ids: Vec<String> = jobs.iter().map(|j| j.id.clone()).collect();
    fake.st().queue.extend(jobs);
    let _agent = AgentProc::start(&fake, &agent_id);
    let logs: Vec<String> = ids
        .iter()
        .map(|id| {
            fake.wait_for(id, 120, |s| {
                s.finish
                    .get(id)
                    .map(|_| String::from_utf8_lossy(&s.logs[id]).into_owned())
            })
        })
        .collect();
    // The fork's save did not reach the project's caches…
    assert!(logs[1].contains("who=none"), "{}", logs[1]);
    // …the fork reads the project's cache (the newest match)…
    assert!(logs[3].contains("who=base"), "{}", logs[3]);
    // …and another project sees neither.
    assert!(logs[4].contains("who=none"), "{}", logs[4]);
}

//! The job's directories on the agent's host (the mounted working directory and the in-job
//! executable's copy) and where `~` is before a container exists, with the real `bosun`
//! binary and the Docker engine: the home of an image's user is read from the image once and
//! then taken from the cache directory, a job cannot misplace the next job's mount through
//! the home it sets itself, the directories go while the job's containers are removed
//! (success, failure, cancel), and what a killed run left is swept by the next start.

use crate::agent_rig::*;
use crate::harness::{self, ensure_images, image, Project};
use bosun::protocol::FinalStatus;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs_f64()
}

fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_nanos()
}

/// The engine's events between `since` and now for containers labelled `bosun.job=job`
/// (and `extra` filters), as `(id, action, time in ns)`.
fn job_events(job: &str, since: f64, extra: &[&str]) -> Vec<(String, String, u128)> {
    let mut args = vec![
        "events".to_owned(),
        "--since".to_owned(),
        format!("{since:.3}"),
        "--until".to_owned(),
        format!("{:.3}", now() + 0.5),
        "--filter".to_owned(),
        "type=container".to_owned(),
        "--filter".to_owned(),
        format!("label=bosun.job={job}"),
        "--format".to_owned(),
        "{{.ID}} {{.Action}} {{.TimeNano}}".to_owned(),
    ];
    for f in extra {
        args.extend(["--filter".to_owned(), (*f).to_owned()]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    harness::docker(&args)
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            Some((
                f.next()?.to_owned(),
                f.next()?.to_owned(),
                f.next()?.parse().ok()?,
            ))
        })
        .collect()
}

/// The files in `<cache>/homes/` and what each holds.
fn stored_homes(cache: &Path) -> Vec<String> {
    std::fs::read_dir(cache.join("homes"))
        .map(|d| {
            d.flatten()
                .filter_map(|e| std::fs::read_to_string(e.path()).ok())
                .collect()
        })
        .unwrap_or_default()
}

fn job_with_checkout(job: &str, user_and_env: &str, workdir: &str, command: &str) -> String {
    format!(
        r#"  {job}:
    docker:
      - image: {img}
{user_and_env}
{workdir}
    steps:
      - checkout
      - run:
          name: look
          command: |
{command}
"#,
        img = image("base"),
        command = command
            .lines()
            .map(|l| format!("            {l}\n"))
            .collect::<String>()
    )
}

/// A job of an image whose user's home the image does not say (no `HOME=`, not root) needs
/// it before its container exists: the first run reads it from the image through a probe
/// container, and keeps it in the cache directory by image id; the next run (another
/// process) takes it from there and starts no probe.
#[test]
fn a_second_run_takes_the_image_users_home_from_the_cache_and_starts_no_probe() {
    ensure_images();
    let p = Project::new(&format!(
        "version: 2.1\njobs:\n{}",
        job_with_checkout(
            "build",
            "        user: circleci",
            "",
            "echo \"home=$HOME pwd=$PWD\"\ntest -f .circleci/config.yml && echo checked-out"
        )
    ));
    let cache = p.store.path().join("cache");
    let mut probes = Vec::new();
    for run in 0..2 {
        let since = now();
        let out = p.execute(&["--json"]);
        assert_eq!(out.code, 0, "run {run}: {}\n{}", out.stdout, out.stderr);
        let text = out.output();
        assert!(
            text.contains("home=/home/circleci pwd=/home/circleci/project"),
            "{text}"
        );
        assert!(text.contains("checked-out"), "{text}");
        assert!(
            out.stdout.contains("into /home/circleci/project: in place"),
            "run {run}: the checkout went in without a copy: {}",
            out.stdout
        );
        let created: Vec<_> = job_events(
            &p.job_id,
            since,
            &["label=bosun.kind=probe", "event=create"],
        );
        probes.push(created.len());
        assert_eq!(
            stored_homes(&cache),
            vec!["/home/circleci".to_owned()],
            "run {run}: the home kept in {cache:?}"
        );
    }
    assert_eq!(
        probes,
        vec![1, 0],
        "probe containers created by the first and the second run"
    );
    p.assert_no_container_left();
}

const VICTIM_LOOK: &str = r#"echo "home=$HOME pwd=$PWD"
test -x /usr/bin/env && echo usr-bin-intact
test -e /home/circleci/poison-marker && echo SAW-POISON
test -f .circleci/config.yml && echo checked-out"#;

/// A job whose image `environment:` sets `HOME` gets that home, but it is the job's own: the
/// next job of the same image and user (here another project, sharing the cache directory,
/// in another process) still gets its working directory where its own `~` is, not over the
/// first job's `HOME=/usr/bin`, and sees nothing the first job wrote into its home.
#[test]
fn a_home_a_job_sets_itself_is_not_kept_for_the_next_jobs_mount() {
    ensure_images();
    // Its own checkout (into /tmp/w) has it mount a directory, as the victim's does.
    let hostile = Project::new(&format!(
        "version: 2.1\njobs:\n{}",
        job_with_checkout(
            "build",
            "        user: circleci\n        environment:\n          HOME: /usr/bin",
            "    working_directory: /tmp/w",
            "echo \"hostile-home=$HOME\"\ntouch /home/circleci/poison-marker && echo wrote-marker"
        )
    ));
    let victim = Project::new(&format!(
        "version: 2.1\njobs:\n{}",
        job_with_checkout(
            "build",
            "        user: circleci",
            "    working_directory: \"~\"",
            VICTIM_LOOK
        )
    ));
    let cache = tempfile::tempdir().expect("cache");
    let cache_dir = cache.path().display().to_string();
    let out = hostile.execute_env(&["--json"], &[("BOSUN_CACHE_DIR", &cache_dir)]);
    assert!(
        out.output().contains("hostile-home=/usr/bin"),
        "{}\n{}",
        out.stdout,
        out.stderr
    );
    assert!(out.output().contains("wrote-marker"), "{}", out.stdout);
    let out = victim.execute_env(&["--json"], &[("BOSUN_CACHE_DIR", &cache_dir)]);
    let text = out.output();
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    assert!(
        text.contains("home=/home/circleci pwd=/home/circleci"),
        "{text}"
    );
    assert!(text.contains("usr-bin-intact"), "{text}");
    assert!(text.contains("checked-out"), "{text}");
    assert!(!text.contains("SAW-POISON"), "{text}");
    assert!(
        out.stdout.contains("into /home/circleci: in place"),
        "the checkout went in without a copy: {}",
        out.stdout
    );
    for home in stored_homes(cache.path()) {
        assert_eq!(home, "/home/circleci", "kept in {:?}", cache.path());
    }
}

/// The same within one process (a workflow's jobs share the agent's memory of homes), with
/// no cache directory at all: the second job is not mounted over the first job's `HOME`.
#[test]
fn a_home_a_workflow_job_sets_itself_is_not_learned_for_the_next_job() {
    ensure_images();
    let p = Project::new(&format!(
        r#"version: 2.1
jobs:
  hostile:
    docker:
      - image: {img}
        user: circleci
        environment:
          HOME: /usr/bin
    steps:
      - run: echo "hostile-home=$HOME"
{victim}
workflows:
  w:
    jobs:
      - hostile
      - victim:
          requires: [hostile]
"#,
        img = image("base"),
        victim = job_with_checkout(
            "victim",
            "        user: circleci",
            "    working_directory: \"~\"",
            VICTIM_LOOK
        )
    ));
    let out = p.execute(&["--json", "--workflow", "w", "--no-mirror"]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    assert!(
        out.stdout.contains("hostile-home=/usr/bin"),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("usr-bin-intact"), "{}", out.stdout);
    assert!(out.stdout.contains("checked-out"), "{}", out.stdout);
    p.assert_no_container_left();
}

/// Polls `dir` every millisecond and keeps, for each entry seen, when it was last seen and
/// when it was first missed (ns since the epoch).
struct Watch {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<BTreeMap<String, Option<u128>>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Watch {
    fn start(dir: PathBuf) -> Watch {
        let stop = Arc::new(AtomicBool::new(false));
        let seen: Arc<Mutex<BTreeMap<String, Option<u128>>>> = Arc::default();
        let (s, m) = (Arc::clone(&stop), Arc::clone(&seen));
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                let names: Vec<String> = std::fs::read_dir(&dir)
                    .map(|d| {
                        d.flatten()
                            .map(|e| e.file_name().to_string_lossy().into_owned())
                            .collect()
                    })
                    .unwrap_or_default();
                let t = now_ns();
                if let Ok(mut seen) = m.lock() {
                    for n in &names {
                        seen.insert(n.clone(), None);
                    }
                    for (n, gone) in seen.iter_mut() {
                        if gone.is_none() && !names.contains(n) {
                            *gone = Some(t);
                        }
                    }
                }
                std::thread::sleep(Duration::from_millis(1));
            }
        });
        Watch {
            stop,
            seen,
            thread: Some(thread),
        }
    }

    fn finish(mut self) -> BTreeMap<String, Option<u128>> {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.seen.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

/// A job's directories go while the engine removes its containers, on every way a job ends:
/// each is gone before the engine destroys the primary container (its removal is not left
/// until after the containers'), and nothing stays.
#[test]
fn the_jobs_directories_go_while_its_containers_are_removed() {
    ensure_images();
    for (how, command) in [
        ("success", "echo working; true"),
        ("failure", "echo working; exit 3"),
        ("cancel", "echo working; sleep 600"),
    ] {
        let p = Project::new(&format!(
            "version: 2.1\njobs:\n{}",
            job_with_checkout("build", "        user: circleci", "", command)
        ));
        let tmp = tempfile::tempdir().expect("tmp");
        let tmpdir = tmp.path().display().to_string();
        let work = tmp.path().join("bosun-work/execute");
        let watch = Watch::start(work.clone());
        let since = now();
        let mut c = p.command(&["--json", "--kill-grace", "1"]);
        c.env("TMPDIR", &tmpdir);
        let run = harness::spawn_running(c);
        run.wait_for_output("working\\n", Duration::from_secs(120));
        if how == "cancel" {
            assert!(
                !harness::dir_entries(&work).is_empty(),
                "the job's directories exist while it runs"
            );
            run.signal("TERM");
        }
        let out = run.finish(Duration::from_secs(60));
        let expected = match how {
            "success" => 0,
            "failure" => 1,
            _ => 130,
        };
        assert_eq!(out.code, expected, "{how}: {}\n{}", out.stdout, out.stderr);
        assert!(
            out.stdout.contains("into /home/circleci/project: in place"),
            "{how}: {}",
            out.stdout
        );
        let seen = watch.finish();
        let primary = out
            .events
            .iter()
            .find(|e| e["event"] == "container_started" && e["role"] == "primary")
            .and_then(|e| e["container"].as_str())
            .unwrap_or_else(|| panic!("{how}: no primary container: {}", out.stdout))
            .to_owned();
        let destroyed = job_events(&p.job_id, since, &["event=destroy"])
            .into_iter()
            .find(|(id, _, _)| primary.starts_with(id.as_str()) || id.starts_with(&primary))
            .map(|(_, _, t)| t)
            .unwrap_or_else(|| panic!("{how}: the primary {primary} was never destroyed"));
        let names: Vec<&String> = seen.keys().collect();
        assert!(
            seen.contains_key(&p.job_id) && seen.contains_key(&format!("{}.runtime", p.job_id)),
            "{how}: the working directory and the executable's copy: {names:?}"
        );
        for (name, gone) in &seen {
            let gone = gone.unwrap_or_else(|| panic!("{how}: {name} was never removed"));
            eprintln!(
                "{how}: {name} gone {:.1} ms before the primary was destroyed",
                (destroyed as f64 - gone as f64) / 1e6
            );
            assert!(
                gone < destroyed,
                "{how}: {name} went {} ms after the primary was destroyed",
                (gone - destroyed) / 1_000_000
            );
        }
        assert!(
            !tmp.path().join("bosun-work").exists(),
            "{how}: nothing left in TMPDIR: {:?}",
            harness::dir_entries(&work)
        );
        p.assert_no_container_left();
    }
}

/// An agent SIGKILLed while its job runs leaves the job's directories (and its containers);
/// the restarted agent removes them before it takes work.
#[test]
fn a_killed_agents_job_directories_are_swept_at_its_next_start() {
    ensure_images();
    let p = Project::new(&format!(
        "version: 2.1\njobs:\n{}",
        job_with_checkout(
            "build",
            "        user: circleci",
            "",
            "echo dirs-made\nsleep 300"
        )
    ));
    let agent_id = format!("agent-{}", p.job_id);
    let fake = Fake::start(&agent_id);
    fake.st().queue.push(wire_job(&p, Vec::new()));
    let mut agent = AgentProc::start(&fake, &agent_id);
    fake.wait_for_output(&p.job_id, "dirs-made", 180);
    let root = agent.dir.path().join("work/bosun-work").join(&agent_id);
    let before = harness::dir_entries(&root);
    assert!(
        before.contains(&p.job_id) && before.contains(&format!("{}.runtime", p.job_id)),
        "the job's directories under {root:?}: {before:?}\n{}",
        String::from_utf8_lossy(fake.st().logs.get(&p.job_id).map_or(&[][..], Vec::as_slice))
    );
    agent.crash_and_restart();
    let (fin, _) = fake.wait_for_finish(&p.job_id, 60);
    assert_eq!(fin.status, FinalStatus::InfrastructureFail);
    // The sweep runs at start-up, before the restarted agent reports the lost job.
    assert_eq!(
        harness::dir_entries(&root),
        Vec::<String>::new(),
        "left after the restart's sweep under {root:?}"
    );
    p.assert_no_container_left();
}

/// A `bosun execute` killed mid-job leaves its directories; a later run removes those older
/// than ten minutes whose job has no container left, and keeps one whose containers still
/// exist (runs share the agent id `execute`: that may be another run's job).
#[test]
fn a_killed_runs_directories_are_swept_by_a_later_run_once_its_containers_are_gone() {
    ensure_images();
    let killed = Project::new(&format!(
        "version: 2.1\njobs:\n{}",
        job_with_checkout(
            "build",
            "        user: circleci",
            "",
            "echo dirs-made\nsleep 300"
        )
    ));
    let later = Project::new(&format!(
        "version: 2.1\njobs:\n  build:\n    docker: [{{image: {img}}}]\n    steps:\n      - run: true\n",
        img = image("base")
    ));
    let tmp = tempfile::tempdir().expect("tmp");
    let tmpdir = tmp.path().display().to_string();
    let work = tmp.path().join("bosun-work/execute");
    let mut c = killed.command(&["--json"]);
    c.env("TMPDIR", &tmpdir);
    let run = harness::spawn_running(c);
    run.wait_for_output("dirs-made", Duration::from_secs(120));
    run.signal("KILL");
    let _ = run.finish(Duration::from_secs(30));
    let left = harness::dir_entries(&work);
    assert!(
        left.contains(&killed.job_id),
        "the killed run's directories: {left:?}"
    );
    assert!(!killed.containers().is_empty(), "its container stays");
    // Eleven minutes old.
    for name in &left {
        harness::run(
            Command::new("touch")
                .args(["-d", "-11 minutes"])
                .arg(work.join(name)),
        );
    }
    let again = || {
        let out = later.execute_env(&["--json"], &[("TMPDIR", &tmpdir)]);
        assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    };
    again();
    assert_eq!(
        harness::dir_entries(&work),
        left,
        "kept while the job's container exists"
    );
    harness::cleanup_label("bosun.job", &killed.job_id);
    again();
    assert_eq!(
        harness::dir_entries(&work),
        Vec::<String>::new(),
        "removed once the job's containers are gone"
    );
}

/// A job with steps before its `checkout`, with `steps` (YAML list items) and `look` after it.
fn job_with_steps_before_checkout(before: &str, look: &str) -> String {
    let indent = |text: &str| {
        text.lines()
            .map(|l| format!("            {l}\n"))
            .collect::<String>()
    };
    format!(
        "version: 2.1\njobs:\n  build:\n    docker:\n      - image: {img}\n        user: root\n    steps:\n      - run:\n          name: plant\n          command: |\n{before}      - checkout\n      - run:\n          name: look\n          command: |\n{look}",
        img = image("base"),
        before = indent(before),
        look = indent(look),
    )
}

/// The checkout is written into the mounted working directory on the host by the agent, as
/// root. A step before it may have planted a link there (`.git` → a host directory: the
/// link is read on the host) or moved `.git` away and made a writable
/// `.git/bosun-shared-objects` of its own (the mirror's packs would be hard-linked into it):
/// then the checkout goes in through the engine, which sees the container's view. Nothing
/// reaches the host directory, no pack is shared where the job can write, and the job still
/// gets its checkout.
#[test]
fn steps_before_the_checkout_cannot_redirect_its_writes_on_the_host() {
    ensure_images();
    let host = tempfile::tempdir().expect("a host directory");
    let victim = host.path().display().to_string();
    let look = "test -f .circleci/config.yml && echo checked-out\necho \"shared $(find .git/bosun-shared-objects -type f 2>/dev/null | wc -l)\"";
    for (what, plant) in [
        (
            "a link to a host directory",
            format!("mv .git .git-away\nln -s {victim} .git\nln -s {victim} .circleci"),
        ),
        (
            "a writable shared objects directory",
            "mv .git .git-away\nmkdir -p .git/bosun-shared-objects\nchmod 777 .git/bosun-shared-objects".to_owned(),
        ),
    ] {
        let p = Project::new(&job_with_steps_before_checkout(&plant, look));
        let out = p.execute(&["--json"]);
        let text = out.output();
        assert_eq!(out.code, 0, "{what}: {}\n{}", out.stdout, out.stderr);
        assert!(text.contains("checked-out"), "{what}: {text}");
        assert!(
            !out.stdout.contains(": in place ("),
            "{what}: the checkout was written on the host: {}",
            out.stdout
        );
        assert!(text.contains("shared 0"), "{what}: {text}");
        let left: Vec<_> = std::fs::read_dir(host.path())
            .expect("host dir")
            .flatten()
            .map(|e| e.path())
            .collect();
        assert!(left.is_empty(), "{what}: written on the host: {left:?}");
        p.assert_no_container_left();
    }
}

/// When people may SSH into the job, a command of theirs could run beside the agent writing
/// the checkout on the host (and plant a link in its way): the container is paused while
/// the directory is checked and written, and runs again after.
#[test]
fn the_container_is_paused_while_the_checkout_is_written_when_ssh_is_open() {
    ensure_images();
    let p = Project::new(&format!(
        "version: 2.1\njobs:\n{}",
        job_with_checkout(
            "build",
            "        user: circleci",
            "",
            "test -f .circleci/config.yml && echo checked-out"
        )
    ));
    let since = now();
    // No session: the job is held no longer than `--ssh-wait` after its last step.
    let crate::ssh_gateway::Gateway { run, .. } =
        crate::ssh_gateway::start(&p, &["--ssh-wait", "1s"]);
    let out = run.finish(Duration::from_secs(120));
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    assert!(out.stdout.contains(": in place ("), "{}", out.stdout);
    assert!(out.stdout.contains("checked-out"), "{}", out.stdout);
    let events = job_events(&p.job_id, since, &["event=pause", "event=unpause"]);
    let actions: Vec<&str> = events.iter().map(|(_, a, _)| a.as_str()).collect();
    assert_eq!(actions, ["pause", "unpause"], "{events:?}");
    p.assert_no_container_left();
}

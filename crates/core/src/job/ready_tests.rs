//! Ready containers against the recording double: a job takes one over exactly where it
//! would have created its own, the take-over looks the same to the job, and a job with
//! services or an engine never asks. The agent's pool is tested in `bosun-agent`.

use super::*;
use crate::executor::ContainerSpec;
use crate::job::ready::{prepare, ReadyContainer, ReadySource};
use std::sync::Mutex;

/// A source holding at most one container (with the spec it was made from), recording what
/// it was asked.
#[derive(Default)]
struct One {
    held: Mutex<Option<(ContainerSpec, ReadyContainer)>>,
    asked: Mutex<Vec<ContainerSpec>>,
    used: Mutex<Vec<ContainerSpec>>,
}

impl ReadySource for One {
    fn take(&self, spec: &ContainerSpec) -> Option<ReadyContainer> {
        self.asked.lock().unwrap().push(spec.clone());
        let mut held = self.held.lock().unwrap();
        match held.as_ref() {
            Some((key, _)) if *key == crate::job::ready::pool_key(spec) => {
                held.take().map(|(_, r)| r)
            }
            _ => None,
        }
    }
    fn used(&self, spec: &ContainerSpec) {
        self.used.lock().unwrap().push(spec.clone());
    }
}

fn step_execs(calls: &[Call]) -> Vec<String> {
    calls
        .iter()
        .filter_map(|c| match c {
            Call::Exec { container, cmd } if cmd.contains("step-0.sh") => Some(container.clone()),
            _ => None,
        })
        .collect()
}

fn creates(calls: &[Call]) -> usize {
    calls
        .iter()
        .filter(|c| matches!(c, Call::Create { .. }))
        .count()
}

#[tokio::test(flavor = "current_thread")]
async fn a_job_takes_a_ready_container_over_exactly_where_it_would_create_one() {
    // First a fresh job: what it creates is what the pool will make.
    let source = Arc::new(One::default());
    let double = Recording::new(Script::default());
    let dir = tempfile::tempdir().expect("tempdir");
    let mut fresh = spec(dir.path(), plan(vec![run("a", "env", When::OnSuccess)]));
    super::context_mut(&mut fresh).ready = Some(source.clone());
    let sink = Arc::new(MemorySink::default());
    let o = run_job(double.clone(), fresh, sink, CancellationToken::new()).await;
    assert_eq!(o.status, JobStatus::Success);
    let used = source.used.lock().unwrap().clone();
    assert_eq!(used.len(), 1, "the fresh job reports its spec");
    let fresh_spec = double.spec_of("c1").expect("created c1");
    assert_eq!(used[0], fresh_spec, "used() names what was created");
    let fresh_execs = double.calls();

    // The pool makes one from that spec (its own labels), the next job takes it.
    let mut pool_spec = crate::job::ready::pool_key(&fresh_spec);
    pool_spec.labels = vec![("bosun.kind".into(), "pool".into())];
    let double = Recording::new(Script::default());
    let ready = prepare(double.as_ref(), &pool_spec, "agent-1")
        .await
        .expect("ready");
    let ready_id = ready.id.clone();
    let source = Arc::new(One::default());
    *source.held.lock().unwrap() = Some((crate::job::ready::pool_key(&pool_spec), ready));
    let before = double.calls().len();
    let mut next = spec(dir.path(), plan(vec![run("a", "env", When::OnSuccess)]));
    super::context_mut(&mut next).ready = Some(source.clone());
    let sink = Arc::new(MemorySink::default());
    let o = run_job(double.clone(), next, sink.clone(), CancellationToken::new()).await;
    assert_eq!(o.status, JobStatus::Success, "{:?}", o.error);
    let calls = double.calls()[before..].to_vec();
    assert_eq!(creates(&calls), 0, "no container of its own: {calls:?}");
    assert_eq!(
        step_execs(&calls),
        std::slice::from_ref(&ready_id),
        "the step ran in it"
    );
    assert_eq!(
        removed(&calls),
        std::slice::from_ref(&ready_id),
        "and it went with the job"
    );
    assert!(source.held.lock().unwrap().is_none());
    // The same step environment, working directory and user as the fresh job's exec.
    let exec_of = |calls: &[Call]| {
        calls
            .iter()
            .find_map(|c| match c {
                Call::Exec { cmd, .. } if cmd.contains("step-0.sh") => Some(cmd.clone()),
                _ => None,
            })
            .expect("the step's exec")
    };
    assert_eq!(exec_of(&calls), exec_of(&fresh_execs));
    let events = sink.events.lock().unwrap().clone();
    assert!(events.iter().any(|e| matches!(e,
        Event::ContainerStarted { container, .. } if *container == ready_id)));
}

#[tokio::test(flavor = "current_thread")]
async fn a_job_with_services_never_asks_for_a_ready_container() {
    let source = Arc::new(One::default());
    let double = Recording::new(Script::default());
    let dir = tempfile::tempdir().expect("tempdir");
    let mut s = with_services(dir.path(), vec![service("pg", None)]);
    super::context_mut(&mut s).ready = Some(source.clone());
    let o = run_job(
        double.clone(),
        s,
        Arc::new(MemorySink::default()),
        CancellationToken::new(),
    )
    .await;
    assert_eq!(o.status, JobStatus::Success);
    assert!(source.asked.lock().unwrap().is_empty());
    assert!(source.used.lock().unwrap().is_empty());
}

#[tokio::test(flavor = "current_thread")]
async fn a_ready_container_for_a_mounted_checkout_comes_with_directories_of_its_own() {
    use crate::executor::double::Op;
    let agent = format!("ready-dirs-{}", std::process::id());
    let key = ContainerSpec {
        image: "img".into(),
        work_tree: Some((String::new(), "/home/circleci/project".into())),
        runtime: Some(String::new()),
        stdin: true,
        ..Default::default()
    };
    let double = Recording::new(Script::default());
    let ready = prepare(double.as_ref(), &key, &agent).await.expect("ready");
    let made = double.spec_of(&ready.id).expect("created");
    let (host, target) = made.work_tree.clone().expect("a working directory");
    assert_eq!(target, "/home/circleci/project");
    let root = crate::job::work_tree::root(&agent);
    let tree = ready.work_tree.as_ref().expect("handed over");
    assert_eq!(std::path::Path::new(&host), tree.path());
    assert!(tree.path().starts_with(&root) && tree.path().is_dir());
    assert!(tree.pristine(), "nothing but its shared objects' directory");
    let runtime = std::path::PathBuf::from(made.runtime.clone().expect("a runtime copy"));
    assert!(runtime.starts_with(&root) && runtime.is_file());
    // Matched by where things are mounted, not by the host paths.
    assert_eq!(crate::job::ready::pool_key(&made), key);
    // A second one has directories of its own.
    let other = prepare(double.as_ref(), &key, &agent).await.expect("ready");
    let other_spec = double.spec_of(&other.id).expect("created");
    assert_ne!(other_spec.work_tree, made.work_tree);
    assert_ne!(other_spec.runtime, made.runtime);
    // Dropped (the pool removed it unused): the directories go too.
    let tree_path = tree.path().to_owned();
    drop(ready);
    assert!(!tree_path.exists() && !runtime.exists());
    drop(other);

    // A create that fails leaves no directory behind.
    let failing = Recording::new(Script {
        fail: vec![(Op::Create, 0)],
        ..Script::default()
    });
    assert!(prepare(failing.as_ref(), &key, &agent).await.is_err());
    let left: Vec<_> = std::fs::read_dir(&root)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "left behind: {left:?}");
}

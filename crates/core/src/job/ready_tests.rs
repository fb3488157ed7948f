//! Ready containers against the recording double: a job takes one over exactly where it
//! would have created its own, the take-over looks the same to the job, a job with services
//! or an engine never asks, and the agent's pool never hands out a used or dead container and
//! lets idle ones go.

use super::*;
use crate::agent::pool::Pool;
use crate::executor::{ContainerSpec, Executor};
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
    let ready = prepare(double.as_ref(), &pool_spec).await.expect("ready");
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

async fn until(what: &str, f: impl Fn() -> bool) {
    for _ in 0..400 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("timed out waiting: {what}");
}

fn key() -> ContainerSpec {
    ContainerSpec {
        image: "img".into(),
        entrypoint: Some(super::bootstrap::main_process()),
        stdin: true,
        init: true,
        ..Default::default()
    }
}

#[tokio::test(flavor = "current_thread")]
async fn the_pool_hands_a_container_out_once_and_makes_a_new_one() {
    let double = Recording::new(Script::default());
    let pool = Arc::new(Pool::new(
        double.clone(),
        "agent-1",
        1,
        Duration::from_secs(60),
    ));
    pool.used(&key());
    pool.tend().await;
    until("a ready container", || pool.ready_ids().len() == 1).await;
    let first = pool.ready_ids()[0].clone();
    let spec = double.spec_of(&first).expect("spec");
    assert!(spec
        .labels
        .contains(&("bosun.agent".into(), "agent-1".into())));
    assert!(spec.labels.contains(&("bosun.kind".into(), "pool".into())));
    assert!(
        pool.take(&ContainerSpec {
            image: "other".into(),
            ..key()
        })
        .is_none(),
        "another image does not match"
    );
    let taken = pool.take(&key()).expect("taken");
    assert_eq!(taken.id, first);
    assert!(pool.take(&key()).is_none(), "handed out once");
    pool.tend().await;
    until("a second ready container", || pool.ready_ids().len() == 1).await;
    assert_ne!(
        pool.ready_ids()[0],
        first,
        "a new container, never the used one"
    );
    pool.clear().await;
    assert_eq!(
        double.live(),
        vec![first],
        "clear removed the pool's; the taken one is the job's"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn a_dead_ready_container_is_not_handed_out_and_idle_ones_expire() {
    let double = Recording::new(Script::default());
    let pool = Arc::new(Pool::new(
        double.clone(),
        "agent-1",
        1,
        Duration::from_secs(60),
    ));
    pool.used(&key());
    pool.tend().await;
    until("a ready container", || pool.ready_ids().len() == 1).await;
    let id = pool.ready_ids()[0].clone();
    // Killed from outside: its main process's output ends.
    double.remove(&id).await.expect("remove");
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(pool.take(&key()).is_none());
    assert!(pool.ready_ids().is_empty());

    let pool = Arc::new(Pool::new(
        double.clone(),
        "agent-1",
        1,
        Duration::from_millis(50),
    ));
    pool.used(&key());
    pool.tend().await;
    until("a ready container", || pool.ready_ids().len() == 1).await;
    let id = pool.ready_ids()[0].clone();
    let expiry = pool.next_expiry().expect("an expiry");
    tokio::time::sleep_until((expiry + Duration::from_millis(5)).into()).await;
    // Expired: removed, and not made again until a job uses the spec again.
    pool.tend().await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(pool.ready_ids().is_empty());
    assert!(
        !double.live().contains(&id),
        "the expired container was removed"
    );
    pool.used(&key());
    pool.tend().await;
    until("made again after a job used it", || {
        pool.ready_ids().len() == 1
    })
    .await;
    pool.clear().await;
}

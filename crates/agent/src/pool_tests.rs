//! The agent's pool of ready containers against the recording double: it never hands out a
//! used or dead container, and lets idle ones go.

use crate::pool::Pool;
use bosun_core::executor::double::{Recording, Script};
use bosun_core::executor::{ContainerSpec, Executor};
use bosun_core::job::ready::ReadySource;
use std::sync::Arc;
use std::time::Duration;

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
        // Any entrypoint: the pool matches a job by the whole spec.
        entrypoint: Some(vec!["/bin/sleep".into(), "infinity".into()]),
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

/// The agent stops (SIGTERM) while the pool is making a container for the job that just
/// ended: the stop returns only once that container is made and removed. Before, `clear`
/// returned at once, the agent exited, and the engine kept a running container labelled
/// `bosun.kind=pool` until the same agent id started again.
#[tokio::test(flavor = "current_thread")]
async fn a_stop_waits_for_the_container_being_made_and_removes_it() {
    let double = Recording::new(Script {
        start_delay: Duration::from_millis(300),
        ..Script::default()
    });
    let pool = Arc::new(Pool::new(
        double.clone(),
        "agent-1",
        1,
        Duration::from_secs(60),
    ));
    pool.used(&key());
    pool.tend().await;
    // Created, not yet started: the engine has it, the pool has not got it back yet.
    until("the container created", || double.live().len() == 1).await;
    assert!(pool.ready_ids().is_empty(), "still being made");
    pool.clear().await;
    assert_eq!(
        double.live(),
        Vec::<String>::new(),
        "the stop waited for the create it started and removed what it made"
    );
    assert!(pool.ready_ids().is_empty());
    // Nothing is made after the stop.
    pool.used(&key());
    pool.tend().await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(double.live().is_empty(), "a closed pool makes nothing");
}

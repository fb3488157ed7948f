//! Ready containers: while the agent is idle it keeps, for the container specs of the last
//! jobs it ran (at most `ready_containers` of them), one container created and started in
//! advance, so the next job using the same image and user starts without waiting for the
//! engine ([`bosun_core::job::ready`] is the job's side of the seam).
//!
//! A job whose checkout is mounted (a local engine) gets a ready container too: the pool
//! makes it with an empty working directory of its own, mounted where the job's would be
//! ([`bosun_core::job::ready::prepare`]), and the directory goes with the container.
//!
//! A ready container belongs to the pool (labels `bosun.agent=<agent>`, `bosun.kind=pool`:
//! the start-up sweep removes those a killed agent left) until a job takes it; from then on it
//! is the job's and its resource guard removes it at the end. The pool never sees it again: a
//! container serves one job only. One left unused for `ready_idle_secs` is removed, and so
//! is everything the pool holds when the agent stops — those still being made too: a stop
//! waits for every create the pool started and removes what it made, so an agent that
//! exits leaves nothing for the next start's sweep.

use bosun_core::executor::{ContainerSpec, Executor, LABEL_AGENT, LABEL_KIND};
use bosun_core::job::ready::{self, ReadyContainer, ReadySource};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The `bosun.kind` of a container the pool holds.
pub const KIND_POOL: &str = "pool";

pub struct Pool {
    executor: Arc<dyn Executor>,
    agent_id: String,
    state: Mutex<State>,
    /// Woken when a container is ready (its expiry is known from then on).
    pub made: tokio::sync::Notify,
    /// Woken when a making ends (its container kept, removed, or never made).
    settled: tokio::sync::Notify,
}

#[derive(Default)]
struct State {
    /// How many specs to keep ready, and for how long unused.
    size: usize,
    idle: Duration,
    /// Specs (labels cleared) of the last jobs, newest first, at most `size`.
    recent: Vec<ContainerSpec>,
    /// Containers ready to be taken.
    ready: Vec<Slot>,
    /// Specs whose container is being made now: from the moment [`Pool::tend`] decides to
    /// make one until it is ready, or (the pool closed, or the making failed) removed.
    making: Vec<ContainerSpec>,
    /// The agent stops: what is being made now is removed when it is ready.
    closed: bool,
}

struct Slot {
    key: ContainerSpec,
    container: ReadyContainer,
    made: Instant,
}

impl Pool {
    pub fn new(executor: Arc<dyn Executor>, agent_id: &str, size: usize, idle: Duration) -> Self {
        Pool {
            executor,
            agent_id: agent_id.to_owned(),
            state: Mutex::new(State {
                size,
                idle,
                ..State::default()
            }),
            made: tokio::sync::Notify::new(),
            settled: tokio::sync::Notify::new(),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// New settings (a reload): what no longer fits goes at the next [`Pool::tend`].
    pub fn configure(&self, size: usize, idle: Duration) {
        let mut st = self.state();
        st.size = size;
        st.idle = idle;
        st.recent.truncate(size);
    }

    /// Ids of the containers waiting now (for tests and the log).
    pub fn ready_ids(&self) -> Vec<String> {
        self.state()
            .ready
            .iter()
            .map(|s| s.container.id.clone())
            .collect()
    }

    /// Bring the pool to what it should hold: remove what expired or is no longer wanted,
    /// then make one container for each recent spec without one. Called while the agent is
    /// idle; the making runs on, a job claimed meanwhile simply creates its own.
    pub async fn tend(self: &Arc<Self>) {
        let (gone, wanted) = {
            let mut st = self.state();
            if st.closed {
                return;
            }
            let now = Instant::now();
            let (idle, recent) = (st.idle, st.recent.clone());
            let (keep, gone): (Vec<Slot>, Vec<Slot>) = std::mem::take(&mut st.ready)
                .into_iter()
                .partition(|s| recent.contains(&s.key) && now.duration_since(s.made) < idle);
            st.ready = keep;
            // An expired spec is not made again until a job uses it again.
            st.recent.retain(|k| !gone.iter().any(|s| &s.key == k));
            let recent = st.recent.clone();
            let wanted: Vec<ContainerSpec> = recent
                .iter()
                .filter(|k| !st.ready.iter().any(|s| &s.key == *k) && !st.making.contains(k))
                .cloned()
                .collect();
            st.making.extend(wanted.iter().cloned());
            (gone, wanted)
        };
        for slot in gone {
            tracing::debug!(id = %slot.container.id, "ready container expired or unwanted: removing it");
            self.remove(&slot.container.id).await;
        }
        for key in wanted {
            let pool = Arc::clone(self);
            tokio::spawn(async move {
                let mut spec = key.clone();
                spec.labels = vec![
                    (LABEL_AGENT.to_owned(), pool.agent_id.clone()),
                    (LABEL_KIND.to_owned(), KIND_POOL.to_owned()),
                ];
                let made = ready::prepare(pool.executor.as_ref(), &spec, &pool.agent_id).await;
                // Decided under the lock, done after it; the spec stays in `making` until
                // a container the pool will not keep is gone, so that a stop waits for it.
                let leftover = {
                    let mut st = pool.state();
                    match made {
                        Ok(container) if st.closed => Some(container),
                        Ok(container) => {
                            tracing::debug!(id = %container.id, image = %key.image, "a container is ready for the next job");
                            st.making.retain(|k| k != &key);
                            st.ready.push(Slot {
                                key: key.clone(),
                                container,
                                made: Instant::now(),
                            });
                            None
                        }
                        Err(e) => {
                            // Dropped from the recent list: a spec that cannot start is not
                            // retried until a job uses it again.
                            tracing::warn!(image = %key.image, "could not make a ready container: {e}");
                            st.recent.retain(|k| k != &key);
                            st.making.retain(|k| k != &key);
                            None
                        }
                    }
                };
                if let Some(container) = leftover {
                    tracing::debug!(id = %container.id, "the pool closed while this container was made: removing it");
                    pool.remove(&container.id).await;
                    // Its working directory (if any) goes after the container that mounts it.
                    drop(container);
                    pool.state().making.retain(|k| k != &key);
                }
                pool.settled.notify_waiters();
                pool.made.notify_waiters();
            });
        }
    }

    /// When the next ready container expires (to tend the pool then).
    pub fn next_expiry(&self) -> Option<Instant> {
        let st = self.state();
        st.ready.iter().map(|s| s.made + st.idle).min()
    }

    /// Remove every container the pool holds, and from now on every one it finishes making
    /// (the agent stops). Returns once every making has ended and what it made is removed:
    /// a create still under way when the agent exits would leave a container nobody owns.
    pub async fn clear(&self) {
        let slots = {
            let mut st = self.state();
            st.closed = true;
            st.recent.clear();
            std::mem::take(&mut st.ready)
        };
        for slot in slots {
            self.remove(&slot.container.id).await;
        }
        loop {
            let settled = self.settled.notified();
            tokio::pin!(settled);
            // Registered before the check, so a making that ends in between wakes us.
            settled.as_mut().enable();
            let left = self.state().making.len();
            if left == 0 {
                break;
            }
            tracing::debug!(
                left,
                "waiting for the ready containers being made, to remove them"
            );
            settled.await;
        }
    }

    async fn remove(&self, id: &str) {
        if let Err(e) = self.executor.remove(id).await {
            tracing::warn!(%id, "could not remove a ready container: {e}");
        }
    }
}

impl ReadySource for Pool {
    fn take(&self, spec: &ContainerSpec) -> Option<ReadyContainer> {
        let key = ready::pool_key(spec);
        let mut st = self.state();
        while let Some(i) = st.ready.iter().position(|s| s.key == key) {
            let mut slot = st.ready.swap_remove(i);
            if ready::alive(&mut slot.container) {
                return Some(slot.container);
            }
            // Its main process is gone (killed from outside): remove it, try another.
            tracing::warn!(id = %slot.container.id, "a ready container died while waiting; removing it");
            let executor = Arc::clone(&self.executor);
            tokio::spawn(async move {
                let _ = executor.remove(&slot.container.id).await;
                // Its working directory (if any) goes after the container that mounts it.
                drop(slot);
            });
        }
        None
    }

    fn used(&self, spec: &ContainerSpec) {
        let key = ready::pool_key(spec);
        let mut st = self.state();
        if st.size == 0 {
            return;
        }
        st.recent.retain(|k| k != &key);
        st.recent.insert(0, key);
        let size = st.size;
        st.recent.truncate(size);
    }
}

//! Service containers: the `docker:` images after the first. They run beside the primary and
//! share its network namespace (a step reaches them on `localhost`, and by each one's `name:`,
//! which the primary's `/etc/hosts` maps to 127.0.0.1), as the containers of one pod would.
//! As on CircleCI they start before the first step and are not waited for. Each one's output
//! is kept (the last [`KEEP_BYTES`]); a service that ends while the job runs is reported with
//! its exit code and last lines, without failing the job by itself; when the job fails, what
//! every service printed is shown.

use super::resources::{Resources, Role};
use super::SetupError;
use crate::config::DockerImage;
use crate::executor::{ContainerSpec, Executor, NetworkMode, Output};
use crate::stream::{ContainerRole, Event, EventSink};
use bytes::Bytes;
use futures_util::StreamExt;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use tokio_util::sync::CancellationToken;

/// How much of a service's output is kept for reports.
pub(super) const KEEP_BYTES: usize = 16 * 1024;

/// The host name a service answers to: its `name:`, else none (only `localhost`).
pub(super) fn host_entries(services: &[DockerImage]) -> Vec<String> {
    services
        .iter()
        .filter_map(|s| s.name.as_ref())
        .map(|n| format!("{n}:127.0.0.1"))
        .collect()
}

/// How a service is called in messages: its `name:`, else its image.
fn display_name(s: &DockerImage) -> String {
    s.name.clone().unwrap_or_else(|| s.image.clone())
}

/// The running services of a job.
pub(super) struct Services {
    running: Vec<Running>,
}

struct Running {
    name: String,
    kept: Arc<Mutex<Kept>>,
}

#[derive(Default)]
struct Kept {
    tail: VecDeque<u8>,
    /// Reported already (it exited while the job ran).
    reported: bool,
}

impl Kept {
    fn push(&mut self, data: &[u8]) {
        self.tail.extend(data);
        let excess = self.tail.len().saturating_sub(KEEP_BYTES);
        self.tail.drain(..excess);
    }
    fn bytes(&self) -> Bytes {
        Bytes::from(self.tail.iter().copied().collect::<Vec<u8>>())
    }
}

/// Create and start every service in the primary's network namespace, in list order. Each
/// one's output is collected and its end watched until `steps_done`.
pub(super) async fn start_all(
    executor: &Arc<dyn Executor>,
    resources: &Resources,
    primary: &str,
    services: &[DockerImage],
    sink: &Arc<dyn EventSink>,
    steps_done: &CancellationToken,
    limits: Option<crate::executor::Limits>,
) -> Result<Services, SetupError> {
    let mut running = Vec::new();
    for svc in services {
        let name = display_name(svc);
        let fail = |reason: String| SetupError::Service {
            service: name.clone(),
            image: svc.image.clone(),
            reason,
        };
        let role = Role::Service(name.clone());
        let id = executor
            .create(&ContainerSpec {
                image: svc.image.clone(),
                user: svc.user.clone(),
                env: svc
                    .environment
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect(),
                labels: resources.labels(&role),
                network: NetworkMode::ContainerOf(primary.to_owned()),
                entrypoint: svc.entrypoint.clone(),
                cmd: svc.command.clone(),
                init: true,
                limits,
                ..Default::default()
            })
            .await
            .map_err(|e| fail(e.to_string()))?;
        resources.track(role, &id);
        let attached = executor.start(&id).await.map_err(|e| fail(e.to_string()))?;
        sink.emit(&Event::ContainerStarted {
            role: ContainerRole::Service,
            name: name.clone(),
            image: svc.image.clone(),
            container: id.clone(),
        });
        let kept = Arc::new(Mutex::new(Kept::default()));
        {
            let (executor, kept, sink, done) = (
                Arc::clone(executor),
                Arc::clone(&kept),
                Arc::clone(sink),
                steps_done.clone(),
            );
            let (name, image) = (name.clone(), svc.image.clone());
            let mut output = attached.output;
            tokio::spawn(async move {
                while let Some(Ok(Output::Stdout(b) | Output::Stderr(b))) = output.next().await {
                    if let Ok(mut k) = kept.lock() {
                        k.push(&b);
                    }
                }
                // The output ended: the service has ended (or is being removed at the end).
                let code = executor.wait(&id).await.ok();
                if done.is_cancelled() {
                    return;
                }
                let tail = match kept.lock() {
                    Ok(mut k) => {
                        k.reported = true;
                        k.bytes()
                    }
                    Err(_) => Bytes::new(),
                };
                sink.emit(&Event::ServiceExited {
                    service: name,
                    image,
                    exit_code: code,
                    output: tail,
                });
            });
        }
        running.push(Running { name, kept });
    }
    Ok(Services { running })
}

impl Services {
    /// After a failed job: what each service printed (those not reported already).
    pub(super) fn report_output(&self, sink: &dyn EventSink) {
        for r in &self.running {
            let data = match r.kept.lock() {
                Ok(k) if !k.reported => k.bytes(),
                _ => continue,
            };
            sink.emit(&Event::ServiceOutput {
                service: r.name.clone(),
                data,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kept_output_is_the_tail() {
        let mut k = Kept::default();
        k.push(&vec![b'a'; KEEP_BYTES]);
        k.push(b"end");
        let b = k.bytes();
        assert_eq!(b.len(), KEEP_BYTES);
        assert!(b.ends_with(b"aend"));
    }
}

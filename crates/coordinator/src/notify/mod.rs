//! The notification sender: delivers the outbox the store fills when pipelines, workflows
//! and jobs end ([`crate::store::NotifyOutbox`]) — mail through SMTP ([`mail`]) and
//! outgoing webhooks ([`webhook`]) — on its own task, at most `max_in_flight` at a time,
//! each with a time limit. A slow or dead SMTP server or webhook receiver holds up nothing
//! else: the pipeline runner and the request handlers only ever write rows. A failed
//! delivery is tried again after `model::notify::retry_in` (doubling, at most
//! `max_backoff`), and given up after `model::notify::MAX_ATTEMPTS`; the target keeps the
//! last error, which the project's page shows. Rows stay in the store until delivered or
//! given up, so a restart loses none; one is claimed for a lease before it is sent, so no
//! two deliveries of it run at once.

pub mod mail;
pub mod webhook;

use crate::model::notify::{give_up, retry_in, TargetKind};
use crate::store::{Backend, Due};
use crate::AppState;
use bosun_protocol::{JobEvent, StepStatus, WorkflowJobStatus};
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error("e-mail address `{address}`: {why}")]
    Address { address: String, why: String },
    #[error("{0}")]
    Setting(String),
    #[error("the mail could not be made: {0}")]
    Message(String),
    #[error("SMTP: {0}")]
    Smtp(String),
    #[error("no SMTP server: serve was started without --smtp-url and --mail-from")]
    NoSmtp,
    #[error("webhook: {0}")]
    Webhook(String),
    #[error("webhook: the receiver answered {status}: {body}")]
    Refused { status: u16, body: String },
    #[error("the store: {0}")]
    Store(String),
}

/// How the sender works (`serve`'s settings).
pub struct Settings {
    /// `None`: no `--smtp-url`; mail waits (and its error says why).
    pub mailer: Option<mail::Mailer>,
    pub max_in_flight: usize,
    /// Each webhook delivery's time limit (and the SMTP transport's).
    pub timeout: Duration,
    pub max_backoff: Duration,
}

/// Start the sender.
pub fn spawn(state: Arc<AppState>, settings: Settings) {
    tokio::spawn(async move {
        let client = match reqwest::Client::builder()
            .timeout(settings.timeout)
            .connect_timeout(settings.timeout)
            // A receiver's redirect is not followed: the signed body goes where it was told.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!(
                "CircleCI-Webhook/1.0 (bosun/",
                env!("CARGO_PKG_VERSION"),
                ")"
            ))
            .build()
        {
            Ok(c) => c,
            Err(e) => {
                tracing::error!("notifications are off: no HTTP client: {e}");
                return;
            }
        };
        let settings = Arc::new(settings);
        let slots = Arc::new(tokio::sync::Semaphore::new(settings.max_in_flight.max(1)));
        // A claim outlives any delivery's time limit: a row comes back only when its
        // delivery cannot still be running (a coordinator that stopped mid-way).
        let lease = settings.timeout * 3 + Duration::from_secs(30);
        let mut changed = state.changed.subscribe();
        loop {
            changed.borrow_and_update();
            let free = slots.available_permits() as u32;
            if free > 0 {
                match state.db(move |s| s.claim_notifications(free, lease)).await {
                    Ok(due) => {
                        for d in due {
                            let Ok(permit) = slots.clone().acquire_owned().await else {
                                return;
                            };
                            let (state, client, settings) =
                                (state.clone(), client.clone(), settings.clone());
                            tokio::spawn(async move {
                                deliver(&state, &client, &settings, d).await;
                                drop(permit);
                            });
                        }
                    }
                    Err(e) => tracing::warn!("notifications: {e}"),
                }
            }
            tokio::select! {
                _ = changed.changed() => {}
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                _ = state.shutdown.cancelled() => return,
            }
        }
    });
}

async fn deliver(state: &Arc<AppState>, client: &reqwest::Client, settings: &Settings, d: Due) {
    let id = d.id;
    let attempts = d.attempts;
    let age = Duration::from_millis((crate::store::now_ms() - d.happened_at).max(0) as u64);
    let what = format!(
        "{} to {} target {}",
        d.event,
        d.kind.as_str(),
        d.target_uuid
    );
    let sent =
        match tokio::time::timeout(settings.timeout * 2, send(state, client, settings, d)).await {
            Ok(r) => r,
            Err(_) => Err(NotifyError::Webhook(format!(
                "no answer within {:?}",
                settings.timeout * 2
            ))),
        };
    let recorded = match sent {
        Ok(()) => state.db(move |s| s.notification_delivered(id)).await,
        Err(e) => {
            let last = give_up(attempts + 1, age);
            let wait = retry_in(attempts + 1, settings.max_backoff);
            tracing::warn!(
                "notification {what} failed (attempt {}): {e}{}",
                attempts + 1,
                if last { "; giving up" } else { "" }
            );
            let msg = e.to_string();
            state
                .db(move |s| s.notification_failed(id, &msg, wait, last))
                .await
        }
    };
    if let Err(e) = recorded {
        tracing::warn!("notification {id}: {e}");
    }
}

async fn send(
    state: &Arc<AppState>,
    client: &reqwest::Client,
    settings: &Settings,
    d: Due,
) -> Result<(), NotifyError> {
    match d.kind {
        TargetKind::Webhook => {
            let pid = d.pipeline_id;
            let p = state
                .db(move |s| s.pipeline(pid))
                .await
                .map_err(|e| NotifyError::Store(e.to_string()))?
                .ok_or_else(|| NotifyError::Store(format!("pipeline {pid} is gone")))?;
            let body = webhook::body(&d, &p, &state.public_url).to_string();
            let secret = d.secret.as_ref().map(|s| s.as_bytes()).unwrap_or_default();
            webhook::send(client, &d.address, &d.event, body.into_bytes(), secret).await
        }
        TargetKind::Email => {
            let mailer = settings.mailer.as_ref().ok_or(NotifyError::NoSmtp)?;
            let to = mail::parse_address(&d.address)?;
            let public_url = state.public_url.clone();
            let facts = state
                .db(move |s| Ok(mail_facts(s, &d, &public_url)))
                .await
                .map_err(|e| NotifyError::Store(e.to_string()))??;
            mailer.send(mail::message(&mailer.from, &to, &facts)?).await
        }
    }
}

/// What the mail of notification `d` says, read from the store (blocking).
fn mail_facts(s: &dyn Backend, d: &Due, public_url: &str) -> Result<mail::MailFacts, NotifyError> {
    let store = |e: crate::CoordError| NotifyError::Store(e.to_string());
    let p = s
        .pipeline(d.pipeline_id)
        .map_err(store)?
        .ok_or_else(|| NotifyError::Store(format!("pipeline {} is gone", d.pipeline_id)))?;
    let base = public_url.trim_end_matches('/');
    let mut failed = Vec::new();
    for w in &p.workflows {
        for j in &w.jobs {
            use WorkflowJobStatus as W;
            if !matches!(
                j.status,
                W::Failed | W::TimedOut | W::InfrastructureFail | W::Unauthorized
            ) {
                continue;
            }
            let step = match j.job_id {
                Some(id) => first_failing_step(&s.events_from(id, 0).map_err(store)?),
                None => None,
            };
            failed.push(mail::FailedJob {
                workflow: w.name.clone(),
                name: j.name.clone(),
                status: j.status.as_str().to_owned(),
                step,
                url: j.job_id.map(|id| format!("{base}/jobs/{id}")),
            });
        }
    }
    Ok(mail::MailFacts {
        event: d.event.clone(),
        status: d.status.clone(),
        project: d.project_slug.clone(),
        number: p.number,
        branch: p.branch.clone(),
        tag: p.tag.clone(),
        revision: p.revision.clone(),
        commit_subject: d.commit_subject.clone(),
        error: p.error.clone(),
        url: format!("{base}/pipelines/{}", p.id),
        failed,
    })
}

/// The first step of a job's events that ended other than successfully (or skipped): its
/// name and exit code.
pub fn first_failing_step(events: &[(u64, JobEvent)]) -> Option<(String, Option<i64>)> {
    events.iter().find_map(|(_, e)| match e {
        JobEvent::StepFinished {
            name,
            status,
            exit_code,
            ..
        } if !matches!(status, StepStatus::Success | StepStatus::Skipped) => {
            Some((name.clone(), *exit_code))
        }
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_step_that_did_not_succeed_is_named() {
        let fin =
            |step: u32, name: &str, status: StepStatus, code: Option<i64>| JobEvent::StepFinished {
                step,
                name: name.into(),
                status,
                exit_code: code,
                duration_ms: 1,
                log_offset: 0,
            };
        let events = vec![
            (
                0,
                JobEvent::StepStarted {
                    step: 0,
                    name: "checkout".into(),
                    log_offset: 0,
                    commit_sha: None,
                },
            ),
            (1, fin(0, "checkout", StepStatus::Success, Some(0))),
            (2, fin(1, "optional", StepStatus::Skipped, None)),
            (3, fin(2, "make check", StepStatus::Failed, Some(2))),
            (4, fin(3, "upload", StepStatus::Failed, Some(1))),
        ];
        assert_eq!(
            first_failing_step(&events),
            Some(("make check".into(), Some(2)))
        );
        assert_eq!(first_failing_step(&events[..3]), None);
    }
}

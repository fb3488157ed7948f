//! Notifications' rules, no I/O: which e-mail a finished pipeline triggers for an address,
//! by the events it asked for (`project notify add --on failed,fixed,default-branch`,
//! CircleCI's choices); which outgoing webhook events a workflow or job completion makes
//! (`project webhook add --events workflow-completed,job-completed`); what a target may be
//! (an http(s) URL); and how long a failed delivery waits. The store asks [`mail`] when it
//! records a pipeline's end, in the same transaction; the sender (`crate::notify`) asks
//! [`retry_in`].

use bosun_protocol::{PipelineState, WorkflowJobStatus, WorkflowState};
use std::fmt;
use std::time::Duration;

/// What an address asked to hear about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct On {
    /// A pipeline failed (or errored: its config did not compile).
    pub failed: bool,
    /// The first success after a failure on the same branch.
    pub fixed: bool,
    /// Every finished pipeline on the project's default branch.
    pub default_branch: bool,
}

/// A word of `--on` or `--events` this side does not know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what}: unknown event `{word}`; expected {expected}")]
pub struct UnknownEvent {
    pub what: &'static str,
    pub word: String,
    pub expected: &'static str,
}

/// Comma-separated words, trimmed, empty ones dropped.
fn words(s: &str) -> impl Iterator<Item = &str> {
    s.split(',').map(str::trim).filter(|w| !w.is_empty())
}

impl On {
    /// CircleCI's default for a new address: failed and fixed.
    pub const DEFAULT: On = On {
        failed: true,
        fixed: true,
        default_branch: false,
    };

    /// `failed,fixed,default-branch` (any of them); empty: [`On::DEFAULT`].
    pub fn parse(s: &str) -> Result<On, UnknownEvent> {
        let mut on = On::default();
        let mut any = false;
        for w in words(s) {
            any = true;
            match w {
                "failed" => on.failed = true,
                "fixed" => on.fixed = true,
                "default-branch" => on.default_branch = true,
                _ => {
                    return Err(UnknownEvent {
                        what: "--on",
                        word: w.escape_debug().to_string(),
                        expected: "failed, fixed, default-branch",
                    })
                }
            }
        }
        Ok(if any { on } else { On::DEFAULT })
    }
}

/// As stored and listed: the words [`On::parse`] reads.
impl fmt::Display for On {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let w: Vec<&str> = [
            (self.failed, "failed"),
            (self.fixed, "fixed"),
            (self.default_branch, "default-branch"),
        ]
        .into_iter()
        .filter_map(|(on, w)| on.then_some(w))
        .collect();
        f.write_str(&w.join(","))
    }
}

/// The events an outgoing webhook asked for (CircleCI's two).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Events {
    pub workflow_completed: bool,
    pub job_completed: bool,
}

pub const WORKFLOW_COMPLETED: &str = "workflow-completed";
pub const JOB_COMPLETED: &str = "job-completed";

impl Events {
    /// `workflow-completed,job-completed` (any of them); empty: both.
    pub fn parse(s: &str) -> Result<Events, UnknownEvent> {
        let mut e = Events {
            workflow_completed: false,
            job_completed: false,
        };
        let mut any = false;
        for w in words(s) {
            any = true;
            match w {
                WORKFLOW_COMPLETED => e.workflow_completed = true,
                JOB_COMPLETED => e.job_completed = true,
                _ => {
                    return Err(UnknownEvent {
                        what: "--events",
                        word: w.escape_debug().to_string(),
                        expected: "workflow-completed, job-completed",
                    })
                }
            }
        }
        if !any {
            e.workflow_completed = true;
            e.job_completed = true;
        }
        Ok(e)
    }
}

impl fmt::Display for Events {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let w: Vec<&str> = [
            (self.workflow_completed, WORKFLOW_COMPLETED),
            (self.job_completed, JOB_COMPLETED),
        ]
        .into_iter()
        .filter_map(|(on, w)| on.then_some(w))
        .collect();
        f.write_str(&w.join(","))
    }
}

/// What a notification target is, as the store keeps it (`notify_targets.kind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetKind {
    Email,
    Webhook,
}

impl TargetKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TargetKind::Email => "email",
            TargetKind::Webhook => "webhook",
        }
    }
}

impl std::str::FromStr for TargetKind {
    type Err = super::UnknownWord;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "email" => Ok(TargetKind::Email),
            "webhook" => Ok(TargetKind::Webhook),
            _ => Err(super::UnknownWord {
                what: "notification target kind",
                word: s.to_owned(),
            }),
        }
    }
}

/// A workflow's end as a `workflow-completed` webhook says it (CircleCI's words: `success`,
/// `failed`, `error`, `canceled`, `unauthorized`); `None` while it has not ended.
pub fn workflow_completed(s: WorkflowState) -> Option<&'static str> {
    Some(match s {
        WorkflowState::Success => "success",
        WorkflowState::Failed => "failed",
        WorkflowState::Canceled => "canceled",
        WorkflowState::NotRun => "not_run",
        WorkflowState::Running | WorkflowState::Failing | WorkflowState::OnHold => return None,
    })
}

/// A build job's end as a `job-completed` webhook says it; `None`: not an end a webhook
/// tells (still to run, or never ran: blocked, not run, held).
pub fn job_completed(s: WorkflowJobStatus) -> Option<&'static str> {
    use WorkflowJobStatus as W;
    Some(match s {
        W::Success => "success",
        W::Failed | W::TimedOut => "failed",
        W::InfrastructureFail => "infrastructure_fail",
        W::Canceled => "canceled",
        W::Unauthorized => "unauthorized",
        W::Blocked
        | W::OnHold
        | W::NotRun
        | W::NotRunnable
        | W::Waiting
        | W::Queued
        | W::Running => return None,
    })
}

/// An outgoing webhook's URL: http or https, with a host, no user or password in it (the
/// signing secret is how a receiver knows us), no spaces or control characters.
pub fn check_webhook_url(url: &str) -> Result<(), String> {
    let bad = |why: &str| Err(format!("webhook URL `{}`: {why}", url.escape_debug()));
    let rest = match url.split_once("://") {
        Some((scheme, rest))
            if scheme.eq_ignore_ascii_case("https") || scheme.eq_ignore_ascii_case("http") =>
        {
            rest
        }
        _ => return bad("expected an http:// or https:// URL"),
    };
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return bad("spaces and control characters are not allowed");
    }
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    if authority.contains('@') {
        return bad("no user or password in the URL (receivers check the signature instead)");
    }
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => authority.split(':').next().unwrap_or(""),
    };
    if host.is_empty() {
        return bad("no host");
    }
    Ok(())
}

/// The URL as shown on a page: scheme, host and path; the query and fragment (which may
/// carry a receiver's token) are left out.
pub fn shown_url(url: &str) -> String {
    let cut = url.find(['?', '#']).unwrap_or(url.len());
    let mut s = url[..cut].to_owned();
    if cut < url.len() {
        s.push_str("?…");
    }
    s
}

/// Attempts before a delivery may be given up.
pub const MAX_ATTEMPTS: u32 = 16;
/// How old a notification must be before it may be given up: a receiver that is down for
/// an afternoon still gets what happened meanwhile, however short the backoff was set.
pub const MIN_AGE_TO_GIVE_UP: Duration = Duration::from_secs(6 * 3600);

/// Whether a delivery that has now failed `attempts` times, for an event `age` old, is
/// given up (dropped, its error kept on its target).
pub fn give_up(attempts: u32, age: Duration) -> bool {
    attempts >= MAX_ATTEMPTS && age >= MIN_AGE_TO_GIVE_UP
}

/// How long a delivery that failed `attempts` times (1 for the first failure) waits: 1 s
/// doubling, at most `max`.
pub fn retry_in(attempts: u32, max: Duration) -> Duration {
    Duration::from_secs(1u64 << attempts.saturating_sub(1).min(20)).min(max)
}

/// The mail one address gets for a pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mail {
    Failed,
    Fixed,
    /// A pipeline of the default branch ended in `state` (none of the above applied).
    Finished(PipelineState),
}

fn failed(s: PipelineState) -> bool {
    matches!(s, PipelineState::Failed | PipelineState::Errored)
}

/// The mail for a pipeline that ended in `state`, the branch's previous ended pipeline having
/// ended in `previous`; `None` while it has not ended or nothing was asked for. At most one
/// mail per address and pipeline: failed/fixed say more than the default branch's.
pub fn mail(
    on: On,
    state: PipelineState,
    previous: Option<PipelineState>,
    default_branch: bool,
) -> Option<Mail> {
    if !crate::model::advance::pipeline_final(state) || state == PipelineState::Created {
        return None;
    }
    if on.failed && failed(state) {
        return Some(Mail::Failed);
    }
    if on.fixed && state == PipelineState::Success && previous.is_some_and(failed) {
        return Some(Mail::Fixed);
    }
    (on.default_branch && default_branch).then_some(Mail::Finished(state))
}

impl Mail {
    /// As the outbox keeps it.
    pub fn as_str(self) -> &'static str {
        match self {
            Mail::Failed => "failed",
            Mail::Fixed => "fixed",
            Mail::Finished(_) => "finished",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use PipelineState as S;

    #[test]
    fn event_words_parse_and_print_back() {
        assert_eq!(On::parse("").expect("empty"), On::DEFAULT);
        let all = On::parse("failed, fixed,default-branch").expect("all");
        assert_eq!(all, ALL);
        assert_eq!(On::parse(&all.to_string()), Ok(all));
        let e = On::parse("failed,bro\x1bken").expect_err("unknown");
        assert!(e.to_string().contains("`bro\\u{1b}ken`"), "{e}");
        let ev = Events::parse("job-completed").expect("job");
        assert!(ev.job_completed && !ev.workflow_completed);
        assert_eq!(ev.to_string(), "job-completed");
        let both = Events::parse("").expect("both");
        assert_eq!(both.to_string(), "workflow-completed,job-completed");
        assert!(Events::parse("push").is_err());
    }

    #[test]
    fn webhook_urls_are_http_or_https_with_a_host_and_no_credentials() {
        for ok in [
            "https://hooks.example.com/x?token=1",
            "http://127.0.0.1:8080/hook",
            "HTTPS://example.com",
            "http://[::1]:9/x",
        ] {
            assert_eq!(check_webhook_url(ok), Ok(()), "{ok}");
        }
        for bad in [
            "ftp://example.com/x",
            "file:///etc/passwd",
            "javascript:alert(1)",
            "example.com/hook",
            "https://",
            "https://user:pw@example.com/",
            "https://example.com/a b",
            "https://example.com/\r\nX: y",
        ] {
            assert!(check_webhook_url(bad).is_err(), "{bad}");
        }
        assert_eq!(shown_url("https://h/x?token=abc"), "https://h/x?…");
        assert_eq!(shown_url("https://h/x"), "https://h/x");
    }

    #[test]
    fn retries_back_off_doubling_up_to_the_most() {
        let max = Duration::from_secs(600);
        assert_eq!(retry_in(1, max), Duration::from_secs(1));
        assert_eq!(retry_in(2, max), Duration::from_secs(2));
        assert_eq!(retry_in(5, max), Duration::from_secs(16));
        assert_eq!(retry_in(30, max), max);
        assert_eq!(retry_in(3, Duration::from_secs(3)), Duration::from_secs(3));
        let day = Duration::from_secs(86_400);
        assert!(give_up(MAX_ATTEMPTS, day));
        assert!(!give_up(MAX_ATTEMPTS - 1, day), "not yet tried enough");
        assert!(
            !give_up(100, Duration::from_secs(60)),
            "a short backoff does not drop a young event"
        );
    }

    #[test]
    fn completions_in_circlecis_words() {
        assert_eq!(workflow_completed(WorkflowState::Failed), Some("failed"));
        assert_eq!(workflow_completed(WorkflowState::Failing), None);
        assert_eq!(job_completed(WorkflowJobStatus::TimedOut), Some("failed"));
        assert_eq!(job_completed(WorkflowJobStatus::Blocked), None);
        assert_eq!(job_completed(WorkflowJobStatus::Running), None);
    }

    const ALL: On = On {
        failed: true,
        fixed: true,
        default_branch: true,
    };

    #[test]
    fn failed_fixed_and_the_default_branch() {
        let f = On {
            failed: true,
            fixed: true,
            default_branch: false,
        };
        assert_eq!(mail(f, S::Failed, None, false), Some(Mail::Failed));
        assert_eq!(
            mail(f, S::Errored, Some(S::Success), true),
            Some(Mail::Failed)
        );
        assert_eq!(
            mail(f, S::Success, Some(S::Failed), false),
            Some(Mail::Fixed)
        );
        assert_eq!(
            mail(f, S::Success, Some(S::Errored), false),
            Some(Mail::Fixed)
        );
        assert_eq!(
            mail(f, S::Success, Some(S::Success), true),
            None,
            "still fine"
        );
        assert_eq!(mail(f, S::Success, None, true), None, "first build");
        assert_eq!(mail(f, S::Canceled, Some(S::Failed), false), None);
        assert_eq!(
            mail(ALL, S::Success, Some(S::Success), true),
            Some(Mail::Finished(S::Success))
        );
        assert_eq!(mail(ALL, S::Success, Some(S::Success), false), None);
        assert_eq!(
            mail(ALL, S::Success, Some(S::Failed), true),
            Some(Mail::Fixed)
        );
    }

    #[test]
    fn nothing_before_the_end_or_when_nothing_was_asked() {
        for s in [S::Created, S::Running, S::OnHold] {
            assert_eq!(mail(ALL, s, Some(S::Failed), true), None, "{s:?}");
        }
        assert_eq!(mail(On::default(), S::Failed, None, true), None);
    }
}

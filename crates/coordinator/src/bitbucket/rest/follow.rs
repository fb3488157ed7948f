//! Following a repository: Bosun's deploy key on it and Bosun's webhook to this coordinator.
//!
//! [`plan`] is pure: from what Bitbucket has (its deploy keys and webhooks) and what Bosun
//! holds (the project's deploy key and webhook secret), the [`Step`]s that make the
//! repository followed, adding nothing twice: Bosun's key is the one whose key material is
//! the project's deploy key, Bosun's webhook the one whose URL is this coordinator's
//! webhook URL; other keys with Bosun's label (left by a follow that died before it
//! recorded its key) and second webhooks to the same URL are removed. [`undo`] says what
//! takes a done step back. [`apply`] carries the steps out in order and, when one fails,
//! takes back what was done, newest first, so that a failure half way leaves Bitbucket as it
//! was; the caller records the outcome in the store last, and undoes it all the same way
//! ([`undo_all`]) if that fails.

use super::client::{Client, RestError};
use super::repo::{key_material, Hook, Remote, RemoteKey};

/// What Bosun holds of a followed project.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Held {
    /// The key material (`ssh-ed25519 AAAA…`) of the project's deploy key.
    pub deploy_key: Option<String>,
    /// Whether the project has a webhook secret.
    pub webhook_secret: bool,
}

/// One call that changes the repository.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Add the new deploy key.
    AddKey,
    /// Create the webhook, with a fresh secret.
    AddHook,
    /// Make webhook `id` Bosun's again (URL, events, active; the secret Bosun holds, or a
    /// fresh one).
    UpdateHook(String),
    DeleteKey(String),
    DeleteHook(String),
}

/// A step carried out, with the id of what it added.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Done {
    pub step: Step,
    pub id: String,
}

/// What following the repository takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub steps: Vec<Step>,
    /// The deploy key already on the repository (none: a new one is added).
    pub kept_key: Option<String>,
    /// The webhook already right (none: one is added or updated).
    pub kept_hook: Option<String>,
    /// A new webhook secret is needed (the webhook is added, or updated without a secret
    /// Bosun holds).
    pub fresh_secret: bool,
}

/// Is `hook` Bosun's webhook as it should be?
fn hook_is_right(hook: &Hook, events: &[&str]) -> bool {
    hook.active && events.iter().all(|e| hook.events.iter().any(|h| h == e))
}

/// The steps that make the repository followed (adds first, removals of strays after: a
/// removal cannot be undone, so it comes once every add succeeded).
pub fn plan(
    keys: &[RemoteKey],
    hooks: &[Hook],
    held: &Held,
    label: &str,
    hook_url: &str,
    events: &[&str],
) -> Plan {
    let mut steps = Vec::new();
    let kept_key = held.deploy_key.as_deref().and_then(|mine| {
        keys.iter()
            .find(|k| key_material(&k.key) == key_material(mine))
            .map(|k| k.id.clone())
    });
    if kept_key.is_none() {
        steps.push(Step::AddKey);
    }
    let ours: Vec<&Hook> = hooks.iter().filter(|h| h.url == hook_url).collect();
    let (kept_hook, fresh_secret) = match ours.first() {
        Some(h) if held.webhook_secret && hook_is_right(h, events) => (Some(h.id.clone()), false),
        Some(h) => {
            steps.push(Step::UpdateHook(h.id.clone()));
            (None, !held.webhook_secret)
        }
        None => {
            steps.push(Step::AddHook);
            (None, true)
        }
    };
    for k in keys {
        if k.label == label && Some(&k.id) != kept_key.as_ref() {
            steps.push(Step::DeleteKey(k.id.clone()));
        }
    }
    for h in ours.iter().skip(1) {
        steps.push(Step::DeleteHook(h.id.clone()));
    }
    Plan {
        steps,
        kept_key,
        kept_hook,
        fresh_secret,
    }
}

/// What takes a done step back: the removal of what it added. An update or a removal has
/// none (an updated webhook keeps the secret Bosun holds, or had one Bosun never knew).
pub fn undo(done: &Done) -> Option<Step> {
    match done.step {
        Step::AddKey => Some(Step::DeleteKey(done.id.clone())),
        Step::AddHook => Some(Step::DeleteHook(done.id.clone())),
        Step::UpdateHook(_) | Step::DeleteKey(_) | Step::DeleteHook(_) => None,
    }
}

/// The steps that stop following: Bosun's webhooks (by URL) and Bosun's deploy keys (the
/// project's key, or Bosun's label), nothing else.
pub fn unfollow_plan(
    keys: &[RemoteKey],
    hooks: &[Hook],
    held: &Held,
    label: &str,
    hook_url: &str,
) -> Vec<Step> {
    let mine = held.deploy_key.as_deref().map(key_material);
    let mut steps: Vec<Step> = hooks
        .iter()
        .filter(|h| h.url == hook_url)
        .map(|h| Step::DeleteHook(h.id.clone()))
        .collect();
    steps.extend(
        keys.iter()
            .filter(|k| k.label == label || Some(key_material(&k.key)) == mine)
            .map(|k| Step::DeleteKey(k.id.clone())),
    );
    steps
}

/// What a step needs that the plan does not hold.
pub struct Inputs<'a> {
    pub public_key: &'a str,
    pub label: &'a str,
    pub hook_url: &'a str,
    pub secret: &'a str,
}

/// A failure while following, after everything done was taken back (or said otherwise).
#[derive(Debug, thiserror::Error)]
#[error("{failed}{}", if undo_failed.is_empty() { String::new() } else { format!("; and could not take back: {}", undo_failed.join("; ")) })]
pub struct FollowFailed {
    pub failed: RestError,
    /// Undo calls that failed too (what is left on Bitbucket).
    pub undo_failed: Vec<String>,
}

async fn run(
    remote: &Remote,
    c: &Client,
    step: &Step,
    inputs: &Inputs<'_>,
) -> Result<String, RestError> {
    match step {
        Step::AddKey => {
            remote
                .add_deploy_key(c, inputs.public_key, inputs.label)
                .await
        }
        Step::AddHook => remote.add_hook(c, inputs.hook_url, inputs.secret).await,
        Step::UpdateHook(id) => remote
            .update_hook(c, id, inputs.hook_url, inputs.secret)
            .await
            .map(|()| id.clone()),
        Step::DeleteKey(id) => remote.delete_deploy_key(c, id).await.map(|()| id.clone()),
        Step::DeleteHook(id) => remote.delete_hook(c, id).await.map(|()| id.clone()),
    }
}

/// Carry `steps` out in order; on a failure, take back what was done and say both.
pub async fn apply(
    remote: &Remote,
    c: &Client,
    steps: &[Step],
    inputs: &Inputs<'_>,
) -> Result<Vec<Done>, FollowFailed> {
    let mut done = Vec::new();
    for step in steps {
        match run(remote, c, step, inputs).await {
            Ok(id) => done.push(Done {
                step: step.clone(),
                id,
            }),
            Err(failed) => {
                let undo_failed = undo_all(remote, c, &done).await;
                return Err(FollowFailed {
                    failed,
                    undo_failed,
                });
            }
        }
    }
    Ok(done)
}

/// Take back what `done` added, newest first: the undo calls that failed, as messages.
pub async fn undo_all(remote: &Remote, c: &Client, done: &[Done]) -> Vec<String> {
    let mut failed = Vec::new();
    for d in done.iter().rev() {
        if let Some(step) = undo(d) {
            let nothing = Inputs {
                public_key: "",
                label: "",
                hook_url: "",
                secret: "",
            };
            if let Err(e) = run(remote, c, &step, &nothing).await {
                failed.push(e.to_string());
            }
        }
    }
    failed
}

#[cfg(test)]
mod tests {
    use super::*;

    const LABEL: &str = "bosun https://ci.example.com";
    const URL: &str = "https://ci.example.com/webhooks/bitbucket";
    const EVENTS: &[&str] = &["repo:push", "pullrequest:created"];

    fn key(id: &str, label: &str, material: &str) -> RemoteKey {
        RemoteKey {
            id: id.into(),
            label: label.into(),
            key: format!("ssh-ed25519 {material} some comment"),
        }
    }

    fn hook(id: &str, url: &str, active: bool) -> Hook {
        Hook {
            id: id.into(),
            url: url.into(),
            active,
            events: EVENTS.iter().map(|e| e.to_string()).collect(),
        }
    }

    #[test]
    fn a_first_follow_adds_a_key_and_a_webhook_and_leaves_others_alone() {
        let keys = [key("1", "someone's", "AAAA1")];
        let hooks = [hook("{h1}", "https://elsewhere/hook", true)];
        let p = plan(&keys, &hooks, &Held::default(), LABEL, URL, EVENTS);
        assert_eq!(p.steps, vec![Step::AddKey, Step::AddHook]);
        assert!(p.fresh_secret);
        assert_eq!((p.kept_key, p.kept_hook), (None, None));
    }

    #[test]
    fn following_again_adds_nothing() {
        let keys = [key("7", LABEL, "AAAAmine")];
        let hooks = [hook("{h}", URL, true)];
        let held = Held {
            deploy_key: Some("ssh-ed25519 AAAAmine bosun deploy key".into()),
            webhook_secret: true,
        };
        let p = plan(&keys, &hooks, &held, LABEL, URL, EVENTS);
        assert_eq!(p.steps, vec![]);
        assert_eq!(p.kept_key.as_deref(), Some("7"));
        assert_eq!(p.kept_hook.as_deref(), Some("{h}"));
        assert!(!p.fresh_secret);
    }

    #[test]
    fn strays_of_a_follow_that_died_are_replaced_not_doubled() {
        // A key with Bosun's label whose private half Bosun never recorded, two webhooks to
        // this coordinator (one disabled), and no secret held.
        let keys = [key("3", LABEL, "AAAAlost"), key("4", "other", "AAAAx")];
        let hooks = [hook("{a}", URL, false), hook("{b}", URL, true)];
        let p = plan(&keys, &hooks, &Held::default(), LABEL, URL, EVENTS);
        assert_eq!(
            p.steps,
            vec![
                Step::AddKey,
                Step::UpdateHook("{a}".into()),
                Step::DeleteKey("3".into()),
                Step::DeleteHook("{b}".into()),
            ]
        );
        assert!(
            p.fresh_secret,
            "the updated webhook's secret was never Bosun's"
        );
        // A webhook missing an event is set right with the secret Bosun holds.
        let mut h = hook("{c}", URL, true);
        h.events.pop();
        let held = Held {
            deploy_key: None,
            webhook_secret: true,
        };
        let p = plan(&[], &[h], &held, LABEL, URL, EVENTS);
        assert_eq!(p.steps, vec![Step::AddKey, Step::UpdateHook("{c}".into())]);
        assert!(!p.fresh_secret);
    }

    #[test]
    fn only_additions_are_taken_back() {
        let added = |step| Done {
            step,
            id: "9".into(),
        };
        assert_eq!(
            undo(&added(Step::AddKey)),
            Some(Step::DeleteKey("9".into()))
        );
        assert_eq!(
            undo(&added(Step::AddHook)),
            Some(Step::DeleteHook("9".into()))
        );
        assert_eq!(undo(&added(Step::UpdateHook("9".into()))), None);
        assert_eq!(undo(&added(Step::DeleteKey("9".into()))), None);
    }

    #[test]
    fn unfollowing_removes_only_bosuns_own() {
        let keys = [
            key("1", LABEL, "AAAAold"),
            key("2", "a person's key", "AAAAp"),
            key("3", "renamed by hand", "AAAAmine"),
        ];
        let hooks = [hook("{x}", "https://other/", true), hook("{y}", URL, true)];
        let held = Held {
            deploy_key: Some("ssh-ed25519 AAAAmine".into()),
            webhook_secret: true,
        };
        assert_eq!(
            unfollow_plan(&keys, &hooks, &held, LABEL, URL),
            vec![
                Step::DeleteHook("{y}".into()),
                Step::DeleteKey("1".into()),
                Step::DeleteKey("3".into()),
            ]
        );
    }
}

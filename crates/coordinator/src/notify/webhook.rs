//! Outgoing webhooks in CircleCI's outbound-webhook shape: a JSON body per workflow or job
//! completion (`type`, `id`, `happened_at`, `webhook`, `project`, `organization`,
//! `pipeline`, `workflow`, and `job` for a job), POSTed with `circleci-signature:
//! v1=<hex HMAC-SHA256 of the body under the webhook's secret>` and `circleci-event-type`.
//! The body and the signature are pure functions ([`body`], [`signature`]); [`send`] posts.

use super::NotifyError;
use crate::store::pipelines::PipelineRow;
use crate::store::Due;
use bosun_protocol::identity;
use bosun_protocol::time::iso_utc;
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;

/// `v1=` and the hex HMAC-SHA256 of `body` under `secret`, as CircleCI signs.
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    // HMAC takes a key of any length: `new_from_slice` cannot fail for it.
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret) {
        Ok(m) => m,
        Err(_) => unreachable!("HMAC accepts any key length"),
    };
    mac.update(body);
    format!("v1={}", crate::hex(&mac.finalize().into_bytes()))
}

/// The `workflow-completed` or `job-completed` body of notification `d` of pipeline `p`;
/// `public_url` is where the pages are (the workflow's `url`).
pub fn body(d: &Due, p: &PipelineRow, public_url: &str) -> Value {
    let base = public_url.trim_end_matches('/');
    let (org, repo) = d
        .project_slug
        .split_once('/')
        .unwrap_or(("", d.project_slug.as_str()));
    let mut vcs = json!({
        "provider_name": "Bitbucket",
        "origin_repository_url": format!("https://{}", identity::vcs_origin(&d.clone_url)),
        "target_repository_url": format!("https://{}", identity::vcs_origin(&d.clone_url)),
        "revision": p.revision,
    });
    if let Some(b) = &p.branch {
        vcs["branch"] = json!(b);
    }
    if let Some(t) = &p.tag {
        vcs["tag"] = json!(t);
    }
    if let Some(subject) = &d.commit_subject {
        vcs["commit"] = json!({
            "subject": subject,
            "body": "",
            "author": {"name": d.username},
        });
    }
    let mut out = json!({
        "type": d.event,
        "id": d.uuid,
        "happened_at": iso_utc(d.happened_at),
        "webhook": {"id": d.target_uuid, "name": d.name},
        "project": {
            "id": identity::project_id(&d.clone_url),
            "name": repo,
            "slug": format!("bb/{}", d.project_slug),
        },
        "organization": {
            "id": identity::organization_id(&d.clone_url),
            "name": org,
        },
        "pipeline": {
            "id": p.uuid,
            "number": p.number,
            "created_at": iso_utc(p.created),
            "trigger": {"type": trigger_type(&p.trigger_source)},
            "vcs": vcs,
        },
    });
    if let Some(w) = &d.workflow {
        let status = if d.event == crate::model::notify::WORKFLOW_COMPLETED {
            Value::String(d.status.clone())
        } else {
            // A job's event: the workflow as it stands (it may still run).
            p.workflows
                .iter()
                .find(|row| row.uuid == w.uuid)
                .map_or(Value::Null, |row| json!(row.status.as_str()))
        };
        out["workflow"] = json!({
            "id": w.uuid,
            "name": w.name,
            "created_at": iso_utc(w.created),
            "stopped_at": w.finished.map(iso_utc),
            "url": format!("{base}/pipelines/{}", p.id),
            "status": status,
        });
    }
    if let Some(j) = &d.job {
        out["job"] = json!({
            "id": j.job_id.map(|id| identity::uuid_from(&format!("job/{}/{id}", d.project_uuid))),
            "number": j.job_id,
            "name": j.name,
            "status": d.status,
            "started_at": j.started.map(iso_utc),
            "stopped_at": j.finished.map(iso_utc),
        });
    }
    out
}

/// CircleCI's trigger types: `webhook`, `api`, `schedule`.
fn trigger_type(source: &str) -> &str {
    match source {
        "webhook" | "api" => source,
        "schedule" | "scheduled_pipeline" => "schedule",
        _ => "api",
    }
}

/// POST `body` to `url`, signed with `secret`; a 2xx answer is delivered.
pub async fn send(
    client: &reqwest::Client,
    url: &str,
    event: &str,
    body: Vec<u8>,
    secret: &[u8],
) -> Result<(), NotifyError> {
    let r = client
        .post(url)
        .header("content-type", "application/json")
        .header("circleci-event-type", event)
        .header("circleci-signature", signature(secret, &body))
        .body(body)
        .send()
        .await
        .map_err(|e| NotifyError::Webhook(without_url(&e)))?;
    let status = r.status();
    if status.is_success() {
        return Ok(());
    }
    let text = r.text().await.unwrap_or_default();
    let text: String = crate::printable(text.trim()).chars().take(200).collect();
    Err(NotifyError::Refused {
        status: status.as_u16(),
        body: text,
    })
}

/// reqwest's error without the URL it names (a receiver's query may carry its token).
fn without_url(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "could not connect"
    } else {
        "the request failed"
    };
    let mut source = std::error::Error::source(e);
    let mut why = String::new();
    while let Some(s) = source {
        why = s.to_string();
        source = s.source();
    }
    if why.is_empty() {
        kind.to_owned()
    } else {
        format!("{kind}: {why}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::notify::TargetKind;
    use crate::store::{DueJob, DueWorkflow};
    use bosun_protocol::{PipelineState, WorkflowState};

    #[test]
    fn the_signature_is_circlecis_v1_hmac_sha256() {
        // RFC 4231 test case 2: key "Jefe", data "what do ya want for nothing?".
        assert_eq!(
            signature(b"Jefe", b"what do ya want for nothing?"),
            "v1=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        assert_ne!(signature(b"a", b"x"), signature(b"b", b"x"));
    }

    fn due(event: &str, job: bool) -> Due {
        Due {
            id: 1,
            uuid: "e-uuid".into(),
            event: event.into(),
            status: "failed".into(),
            happened_at: 1_764_580_000_000,
            attempts: 0,
            target_uuid: "w-uuid".into(),
            kind: TargetKind::Webhook,
            address: "https://hooks.example.com/x".into(),
            name: "ci hook".into(),
            secret: None,
            pipeline_id: 7,
            project_slug: "acme/widget".into(),
            project_uuid: "{u}".into(),
            clone_url: "git@bitbucket.org:acme/widget.git".into(),
            commit_subject: Some("fix: \"quotes\"\nand lines".into()),
            username: Some("ada".into()),
            workflow: Some(DueWorkflow {
                uuid: "wf-uuid".into(),
                name: "main".into(),
                created: 1_764_579_000_000,
                finished: Some(1_764_580_000_000),
            }),
            job: job.then(|| DueJob {
                name: "build".into(),
                job_id: Some(42),
                started: Some(1_764_579_100_000),
                finished: Some(1_764_579_900_000),
            }),
        }
    }

    fn pipeline() -> PipelineRow {
        PipelineRow {
            id: 7,
            number: 3,
            uuid: "p-uuid".into(),
            project: "acme/widget".into(),
            git_ref: "refs/heads/main".into(),
            branch: Some("main".into()),
            tag: None,
            revision: Some("a".repeat(40)),
            trigger_source: "webhook".into(),
            event: "push".into(),
            status: PipelineState::Failed,
            error: None,
            pr_number: None,
            pr_fork: false,
            restricted: false,
            triggered_by: None,
            created: 1_764_578_000_000,
            workflows: vec![crate::store::pipelines::WorkflowRow {
                id: 1,
                uuid: "wf-uuid".into(),
                name: "main".into(),
                status: WorkflowState::Failed,
                jobs: vec![],
            }],
        }
    }

    #[test]
    fn a_workflow_completed_body_has_circlecis_fields() {
        let b = body(
            &due("workflow-completed", false),
            &pipeline(),
            "https://ci.example.com/",
        );
        assert_eq!(b["type"], "workflow-completed");
        assert_eq!(b["id"], "e-uuid");
        assert_eq!(b["happened_at"], iso_utc(1_764_580_000_000));
        assert_eq!(b["webhook"], json!({"id": "w-uuid", "name": "ci hook"}));
        assert_eq!(b["project"]["slug"], "bb/acme/widget");
        assert_eq!(b["project"]["name"], "widget");
        assert_eq!(b["organization"]["name"], "acme");
        assert_eq!(
            b["project"]["id"],
            identity::project_id("git@bitbucket.org:acme/widget.git")
        );
        assert_eq!(b["pipeline"]["id"], "p-uuid");
        assert_eq!(b["pipeline"]["number"], 3);
        assert_eq!(b["pipeline"]["trigger"]["type"], "webhook");
        assert_eq!(b["pipeline"]["vcs"]["branch"], "main");
        assert_eq!(b["pipeline"]["vcs"]["revision"], "a".repeat(40));
        assert_eq!(
            b["pipeline"]["vcs"]["origin_repository_url"],
            "https://bitbucket.org/acme/widget"
        );
        assert_eq!(
            b["pipeline"]["vcs"]["commit"]["subject"],
            "fix: \"quotes\"\nand lines"
        );
        assert_eq!(b["workflow"]["id"], "wf-uuid");
        assert_eq!(b["workflow"]["status"], "failed");
        assert_eq!(b["workflow"]["url"], "https://ci.example.com/pipelines/7");
        assert!(b.get("job").is_none());
        // It is JSON a receiver parses back to the same value (quotes and newlines escaped).
        let text = b.to_string();
        assert_eq!(serde_json::from_str::<Value>(&text).expect("json"), b);
    }

    #[test]
    fn a_job_completed_body_adds_the_job() {
        let b = body(&due("job-completed", true), &pipeline(), "http://x");
        assert_eq!(b["type"], "job-completed");
        assert_eq!(b["job"]["name"], "build");
        assert_eq!(b["job"]["number"], 42);
        assert_eq!(b["job"]["status"], "failed");
        assert_eq!(b["job"]["started_at"], iso_utc(1_764_579_100_000));
        assert_eq!(
            b["workflow"]["status"], "failed",
            "the workflow as it stands"
        );
    }
}

//! CircleCI's API v2 shapes, made from the store's rows: pure functions (no I/O), so what a
//! client reads can be checked without a server. The words are CircleCI's (statuses, pipeline
//! states, trigger types); where Bosun's vocabulary is wider or narrower, the mapping is here
//! and in `docs/api-v2.md`.

use crate::model::JobKind;
use crate::store::api_v2::{ApiProject, PipelineDetails};
use crate::store::pipelines::{PipelineRow, WorkflowJobRow, WorkflowRow};
use crate::store::JobRow;
use bosun_protocol::time::iso_utc;
use bosun_protocol::{JobState, PipelineState, WorkflowJobStatus};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

/// A stable UUID for a Bosun record that has none of its own (a workflow job, a job, an
/// operator): the store keeps its integer keys, and the API shows the same UUID for the same
/// record every time (name-based, version 5's layout over SHA-256).
pub fn derived_uuid(kind: &str, key: &str) -> String {
    let d = Sha256::digest(format!("bosun api-v2 {kind} {key}").as_bytes());
    let mut b = [0u8; 16];
    b.copy_from_slice(&d[..16]);
    b[6] = (b[6] & 0x0f) | 0x50;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// A workflow job's UUID (`id` in a workflow's job list, and an approval's
/// `approval_request_id`): by its row, so it stays across reruns of the job.
pub fn workflow_job_uuid(row_id: i64) -> String {
    derived_uuid("workflow-job", &row_id.to_string())
}

pub fn operator_uuid(name: &str) -> String {
    derived_uuid("operator", name)
}

/// Which version-control system a slug names: CircleCI writes Bitbucket as `bb` or
/// `bitbucket`; any other (`gh`, `github`, `circleci`) names no project here.
pub fn is_bitbucket(vcs: &str) -> bool {
    matches!(vcs, "bb" | "bitbucket")
}

/// A workspace or repository name as Bitbucket allows it (letters, digits, `-`, `_`, `.`):
/// anything else in a slug names no project, and is never handed to the store.
pub fn valid_slug_part(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s != "."
        && s != ".."
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// The project's slug as CircleCI's responses write it for Bitbucket.
pub fn project_slug(slug: &str) -> String {
    format!("bb/{slug}")
}

/// CircleCI's pipeline `state`: `pending` until the config is compiled, `errored` when it
/// did not, `created` once its workflows exist (their statuses say how they go).
pub fn pipeline_state(s: PipelineState) -> &'static str {
    match s {
        PipelineState::Created => "pending",
        PipelineState::Errored => "errored",
        _ => "created",
    }
}

/// CircleCI's job status for a workflow job: a job waiting for the jobs it requires is
/// `blocked` there, as is one whose requirement failed; a job no agent can run is `not_run`.
pub fn job_status(s: WorkflowJobStatus) -> &'static str {
    match s {
        WorkflowJobStatus::Waiting | WorkflowJobStatus::Blocked => "blocked",
        WorkflowJobStatus::NotRunnable => "not_run",
        other => other.as_str(),
    }
}

fn time(ms: Option<i64>) -> Value {
    ms.map_or(Value::Null, |t| Value::String(iso_utc(t)))
}

/// Parameters as JSON: what was given as text goes back as the JSON value it reads as
/// (`true`, `3`), else as a string.
fn parameters(params: &[(String, String)]) -> Value {
    let mut m = serde_json::Map::new();
    for (k, v) in params {
        let val = match v.as_str() {
            "true" => Value::Bool(true),
            "false" => Value::Bool(false),
            _ => v
                .parse::<i64>()
                .map(Value::from)
                .unwrap_or_else(|_| Value::String(v.clone())),
        };
        m.insert(k.clone(), val);
    }
    Value::Object(m)
}

pub fn pipeline(p: &PipelineRow, d: &PipelineDetails) -> Value {
    let errors: Vec<Value> = p
        .error
        .iter()
        .map(|e| json!({"type": "config", "message": e}))
        .collect();
    let url = crate::text::printable(&d.clone_url);
    json!({
        "id": p.uuid,
        "errors": errors,
        "project_slug": project_slug(&p.project),
        "updated_at": iso_utc(d.finished.unwrap_or(p.created)),
        "number": p.number,
        "trigger_parameters": parameters(&d.params),
        "state": pipeline_state(p.status),
        "created_at": iso_utc(p.created),
        "trigger": {
            "type": p.trigger_source,
            "received_at": iso_utc(p.created),
            "actor": {"login": d.username.clone().unwrap_or_default(), "avatar_url": Value::Null},
        },
        "vcs": {
            "provider_name": "Bitbucket",
            "origin_repository_url": url,
            "target_repository_url": url,
            "revision": p.revision,
            "branch": p.branch,
            "tag": p.tag,
            "commit": d.commit_subject.as_ref().map(|s| json!({"subject": s, "body": ""})),
        },
    })
}

pub fn workflow(p: &PipelineRow, d: &PipelineDetails, w: &WorkflowRow) -> Value {
    let (created, finished) = d
        .workflow_times
        .iter()
        .find(|(id, _, _)| *id == w.id)
        .map(|(_, c, f)| (*c, *f))
        .unwrap_or((p.created, None));
    json!({
        "pipeline_id": p.uuid,
        "canceled_by": Value::Null,
        "id": w.uuid,
        "name": w.name,
        "project_slug": project_slug(&p.project),
        "errored_by": Value::Null,
        "tag": Value::Null,
        "status": w.status.as_str(),
        "started_by": operator_uuid(d.username.as_deref().unwrap_or("")),
        "pipeline_number": p.number,
        "created_at": iso_utc(created),
        "stopped_at": time(finished),
    })
}

/// One job of a workflow's job list; `job` is its queued job's row, once it has one.
pub fn workflow_job(
    project: &str,
    w: &WorkflowRow,
    j: &WorkflowJobRow,
    job: Option<&JobRow>,
) -> Value {
    let deps: Vec<String> = j
        .requires
        .iter()
        .filter_map(|(name, _)| w.jobs.iter().find(|o| &o.name == name))
        .map(|o| workflow_job_uuid(o.id))
        .collect();
    let id = workflow_job_uuid(j.id);
    let mut v = json!({
        "dependencies": deps,
        "job_number": j.job_id,
        "id": id,
        "started_at": time(job.and_then(|r| r.started)),
        "name": j.name,
        "project_slug": project_slug(project),
        "status": job_status(j.status),
        "type": if j.kind == JobKind::Approval { "approval" } else { "build" },
        "stopped_at": time(job.and_then(|r| r.finished)),
    });
    if j.kind == JobKind::Approval {
        v["approval_request_id"] = Value::String(id);
        v["approved_by"] = j
            .approved_by
            .as_deref()
            .map_or(Value::Null, |a| Value::String(operator_uuid(a)));
    }
    v
}

/// A job's details (`GET /project/{slug}/job/{number}`); `workflow` is the workflow it ran
/// in (id, name) and `pipeline` its pipeline's id, when it was a pipeline's.
pub fn job_details(
    public_url: &str,
    project: &ApiProject,
    j: &JobRow,
    workflow: Option<(&str, &str)>,
    pipeline: Option<&str>,
) -> Value {
    let status = j.status.as_str();
    let duration = match (j.started, j.finished) {
        (Some(s), Some(f)) => Value::from((f - s).max(0)),
        _ => Value::Null,
    };
    let org = project.slug.split('/').next().unwrap_or("");
    let queued = (j.status != JobState::Queued).then_some(j.created);
    json!({
        "web_url": format!("{}/jobs/{}", public_url.trim_end_matches('/'), j.id),
        "project": {
            "slug": project_slug(&project.slug),
            "name": project.slug.rsplit('/').next().unwrap_or(""),
            "external_url": format!("https://bitbucket.org/{}", project.slug),
        },
        "parallel_runs": [{"index": 0, "status": status}],
        "started_at": time(j.started),
        "latest_workflow": workflow.map(|(id, name)| json!({"id": id, "name": name})),
        "name": j.job_name,
        "executor": {"type": "docker", "resource_class": Value::Null},
        "parallelism": 1,
        "status": status,
        "number": j.id,
        "pipeline": pipeline.map(|id| json!({"id": id})),
        "duration": duration,
        "created_at": iso_utc(j.created),
        "messages": [],
        "contexts": [],
        "organization": {"name": org},
        "queued_at": time(queued.or(Some(j.created))),
        "stopped_at": time(j.finished),
    })
}

/// An artifact's path as a URL path: each segment percent-encoded but for RFC 3986's
/// unreserved characters, the `/` between them kept.
pub fn url_path(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for b in path.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A list page: `items` and the token of the next page (`null` on the last).
pub fn page(items: Vec<Value>, next: Option<String>) -> Value {
    json!({"items": items, "next_page_token": next})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_uuids_are_stable_well_formed_and_distinct() {
        let a = workflow_job_uuid(7);
        assert_eq!(a, workflow_job_uuid(7));
        assert_ne!(a, workflow_job_uuid(8));
        assert_ne!(a, derived_uuid("job", "7"));
        let parts: Vec<&str> = a.split('-').collect();
        assert_eq!(
            parts.iter().map(|p| p.len()).collect::<Vec<_>>(),
            [8, 4, 4, 4, 12]
        );
        assert!(parts[2].starts_with('5'), "{a}");
        assert!(matches!(&parts[3][..1], "8" | "9" | "a" | "b"), "{a}");
    }

    #[test]
    fn slugs_take_bitbucket_names_only() {
        assert!(is_bitbucket("bb") && is_bitbucket("bitbucket"));
        assert!(!is_bitbucket("gh") && !is_bitbucket("BB"));
        assert!(valid_slug_part("acme") && valid_slug_part("my.repo-2_x"));
        for bad in ["", ".", "..", "a b", "a%2Fb", "é", "a\0", &"x".repeat(129)] {
            assert!(!valid_slug_part(bad), "{bad:?}");
        }
    }

    #[test]
    fn statuses_use_circleci_words() {
        assert_eq!(job_status(WorkflowJobStatus::Waiting), "blocked");
        assert_eq!(job_status(WorkflowJobStatus::OnHold), "on_hold");
        assert_eq!(job_status(WorkflowJobStatus::TimedOut), "timedout");
        assert_eq!(pipeline_state(PipelineState::Created), "pending");
        assert_eq!(pipeline_state(PipelineState::Failed), "created");
        assert_eq!(pipeline_state(PipelineState::Errored), "errored");
    }

    #[test]
    fn parameters_go_back_as_the_json_they_read_as() {
        let p = parameters(&[
            ("a".into(), "true".into()),
            ("b".into(), "3".into()),
            ("c".into(), "x y".into()),
        ]);
        assert_eq!(p, json!({"a": true, "b": 3, "c": "x y"}));
    }

    #[test]
    fn artifact_paths_are_percent_encoded_but_for_slashes() {
        assert_eq!(url_path("out/a b?.txt"), "out/a%20b%3F.txt");
        assert_eq!(url_path("é"), "%C3%A9");
    }
}

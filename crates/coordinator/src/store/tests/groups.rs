//! Security groups of people through the store, on both stores: membership kept and listed,
//! and a pipeline's jobs with a group-restricted context authorized for who they run for —
//! the person who triggered the pipeline, or the one who approved the approval upstream —
//! with membership read again at each job.

use super::*;
use crate::model::contexts::{Principal, Restriction, RestrictionKind};
use crate::model::JobKind;
use crate::store::pipelines::{
    NewPipeline, NewWorkflow, NewWorkflowJob, PipelineRow, StatusBody, StatusChange, Statuses,
};
use bosun_config::RequiredStatus;
use bosun_protocol::WorkflowJobStatus;

fn no_status(_: &StatusChange<'_>) -> Option<StatusBody> {
    None
}
const STATUSES: Statuses<'static> = Statuses {
    public_url: "",
    write: no_status,
};

fn wj(name: &str, kind: JobKind, requires: &[&str], contexts: &[&str]) -> NewWorkflowJob {
    NewWorkflowJob {
        name: name.into(),
        kind,
        requires: requires
            .iter()
            .map(|r| (r.to_string(), vec![RequiredStatus::Success]))
            .collect(),
        serial_group: None,
        resource_class: None,
        status: WorkflowJobStatus::Waiting,
        reason: None,
        contexts: contexts.iter().map(|c| c.to_string()).collect(),
    }
}

/// A pipeline triggered by `by` (an account): `ship` uses context `prod` with no approval
/// in front; `release` uses it behind the approval `hold`.
fn run(s: &dyn Backend, by: Option<&str>) -> i64 {
    let (id, _) = s
        .create_pipeline(&NewPipeline {
            project: "acme/widget".into(),
            git_ref: "refs/heads/main".into(),
            trigger_source: "webhook".into(),
            event: "push".into(),
            event_action: "push".into(),
            triggered_by: by.map(str::to_owned),
            ..Default::default()
        })
        .expect("pipeline");
    s.pipeline_compiled(
        id,
        &"a".repeat(40),
        &[NewWorkflow {
            name: "main".into(),
            jobs: vec![
                wj("ship", JobKind::Build, &[], &["prod"]),
                wj("hold", JobKind::Approval, &[], &[]),
                wj("release", JobKind::Build, &["hold"], &["prod"]),
            ],
        }],
    )
    .expect("compiled");
    s.advance(id, &STATUSES).expect("advance");
    id
}

fn status(p: &PipelineRow, job: &str) -> (String, String) {
    let j = p.workflows[0]
        .jobs
        .iter()
        .find(|j| j.name == job)
        .expect("job");
    (
        j.status.as_str().to_owned(),
        j.reason.clone().unwrap_or_default(),
    )
}

both!(
    a_group_restricted_context_follows_who_triggered_or_approved,
    |_d, s| {
        let ann = s.person_logged_in("{acct-ann}", "ann", "Ann").expect("ann");
        // A person whose nickname is an operator's name: never that operator's groups.
        let bob = s.person_logged_in("{acct-bob}", "bob", "Bob").expect("bob");
        s.add_operator_group("bob", "release")
            .expect("operator bob");
        assert!(s.add_person_group(ann.id, "release").expect("add"));
        assert!(!s.add_person_group(ann.id, "release").expect("again"));
        s.add_person_group(ann.id, "dev").expect("add");
        assert_eq!(s.person_groups(ann.id).expect("groups"), ["dev", "release"]);
        assert!(s.person_groups(bob.id).expect("groups").is_empty());
        assert!(matches!(
            s.add_person_group(ann.id, ""),
            Err(CoordError::Invalid(_))
        ));
        assert!(s.remove_person_group(ann.id, "dev").expect("rm"));
        assert!(!s.remove_person_group(ann.id, "dev").expect("rm again"));
        s.create_context("prod", "").expect("context");
        s.add_restriction(
            "prod",
            &Restriction {
                kind: RestrictionKind::Group,
                value: "release".into(),
            },
        )
        .expect("restrict");
        let person = |p: &crate::store::Person| Principal::Person {
            account: p.uuid.clone(),
            nickname: p.nickname.clone(),
        };

        // Pushed by ann (a member): `ship` runs without an approval; the pipeline says
        // whom for.
        let id = run(s, Some("{acct-ann}"));
        let p = s.pipeline(id).expect("read").expect("pipeline");
        assert_eq!(p.triggered_by.as_deref(), Some("{acct-ann}"));
        assert_eq!(status(&p, "ship").0, "queued", "{p:#?}");
        assert_eq!(status(&p, "hold").0, "on_hold");
        // bob the person may not approve in front of it, though operator bob is in the
        // group; ann may.
        let e = s
            .approve(id, "hold", &person(&bob), &STATUSES)
            .expect_err("bob");
        assert!(
            matches!(&e, CoordError::Forbidden(m) if m.contains("bob may not approve hold")),
            "{e}"
        );
        s.approve(id, "hold", &person(&ann), &STATUSES)
            .expect("ann approves");
        let p = s.pipeline(id).expect("read").expect("pipeline");
        assert_eq!(status(&p, "release").0, "queued", "{p:#?}");
        let hold = p.workflows[0].jobs.iter().find(|j| j.name == "hold");
        assert_eq!(hold.and_then(|j| j.approved_by.as_deref()), Some("ann"));
        s.cancel_pipeline(id, &STATUSES).expect("cancel");

        // Operator bob still approves as a member of the group.
        let id = run(s, None);
        s.approve(id, "hold", &Principal::Operator("bob".into()), &STATUSES)
            .expect("operator bob approves");
        let p = s.pipeline(id).expect("read").expect("pipeline");
        assert_eq!(status(&p, "release").0, "queued", "{p:#?}");
        // Nobody of it pushed: `ship` is unauthorized.
        let (st, why) = status(&p, "ship");
        assert_eq!(st, "unauthorized");
        assert!(why.contains("nobody of it"), "{why}");
        s.cancel_pipeline(id, &STATUSES).expect("cancel");

        // Pushed by bob, or by someone who never logged in: not given.
        for (by, said) in [
            (
                "{acct-bob}",
                "bob, who triggered the pipeline, is not a member",
            ),
            ("{acct-nobody}", "nobody of it"),
        ] {
            let id = run(s, Some(by));
            let p = s.pipeline(id).expect("read").expect("pipeline");
            let (st, why) = status(&p, "ship");
            assert_eq!(st, "unauthorized", "{p:#?}");
            assert!(why.contains(said), "{why}");
            s.cancel_pipeline(id, &STATUSES).expect("cancel");
        }

        // Ann taken out of the group: her next push is not given the context, and the
        // approval she could make before is refused.
        let id = run(s, Some("{acct-ann}"));
        assert!(s.remove_person_group(ann.id, "release").expect("rm"));
        let e = s
            .approve(id, "hold", &person(&ann), &STATUSES)
            .expect_err("no longer a member");
        assert!(matches!(e, CoordError::Forbidden(_)), "{e}");
        s.cancel_pipeline(id, &STATUSES).expect("cancel");
        let id = run(s, Some("{acct-ann}"));
        let p = s.pipeline(id).expect("read").expect("pipeline");
        let (st, why) = status(&p, "ship");
        assert_eq!(st, "unauthorized", "{p:#?}");
        assert!(why.contains("ann, who triggered the pipeline"), "{why}");

        // A rerun runs for the person who reruns it; an operator's rerun leaves that as it
        // was.
        s.cancel_pipeline(id, &STATUSES).expect("cancel");
        s.rerun_failed(id, None, &STATUSES).expect("operator rerun");
        let p = s.pipeline(id).expect("read").expect("pipeline");
        assert_eq!(p.triggered_by.as_deref(), Some("{acct-ann}"));
        assert_eq!(status(&p, "ship").0, "unauthorized", "{p:#?}");
        s.cancel_pipeline(id, &STATUSES).expect("cancel");
        s.add_person_group(bob.id, "release").expect("bob joins");
        s.rerun_failed(id, Some("{acct-bob}"), &STATUSES)
            .expect("bob reruns");
        let p = s.pipeline(id).expect("read").expect("pipeline");
        assert_eq!(p.triggered_by.as_deref(), Some("{acct-bob}"));
        assert_eq!(status(&p, "ship").0, "queued", "{p:#?}");
    }
);

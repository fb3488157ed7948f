//! Schedules, API v2, follow and badges through their traits, on both stores.

use super::*;
use crate::model::JobKind;
use crate::store::api_v2::{Continuation, ContinueRefusal};
use crate::store::pipelines::{
    NewPipeline, NewWorkflow, NewWorkflowJob, StatusBody, StatusChange, Statuses,
};
use crate::store::schedules::{NewSchedule, ScheduleRow, WorkflowTrigger};
use bosun_protocol::{PipelineState, WorkflowJobStatus};

fn no_status(_: &StatusChange<'_>) -> Option<StatusBody> {
    None
}
const STATUSES: Statuses<'static> = Statuses {
    public_url: "",
    write: no_status,
};

fn nightly() -> NewSchedule {
    NewSchedule {
        project: "acme/widget".into(),
        name: "nightly".into(),
        cron: "0 4 * * *".into(),
        branch: "main".into(),
        params: vec![("deploy".into(), "true".into())],
        actor: None,
    }
}

fn scheduled(s: &ScheduleRow) -> NewPipeline {
    NewPipeline {
        project: s.project.clone(),
        git_ref: format!("refs/heads/{}", s.branch),
        trigger_source: "scheduled_pipeline".into(),
        event: "schedule".into(),
        event_action: "schedule".into(),
        schedule_name: s.name.clone(),
        schedule_id: s.uuid.clone(),
        ..Default::default()
    }
}

/// (trigger source, ref, schedule name) of the pipelines schedule `id` made, as the
/// config fetcher reads them.
fn made_by(s: &dyn Backend, id: &str) -> Vec<(String, String, String)> {
    s.pipelines_to_fetch()
        .expect("to fetch")
        .into_iter()
        .filter(|p| p.schedule_id == id)
        .map(|p| (p.trigger_source, p.reference, p.schedule_name))
        .collect()
}

both!(
    a_tick_fires_once_and_not_while_paused_or_removed,
    |_d, s| {
        let row = s.add_schedule(&nightly()).expect("add");
        assert_eq!((row.paused, row.last_tick), (false, None));
        let dup = s.add_schedule(&nightly()).expect_err("a second `nightly`");
        assert!(dup.to_string().contains("already has a schedule"), "{dup}");
        let tick = 1_796_616_000_000;
        let first = s
            .fire_tick(&row.uuid, tick, &[scheduled(&row)])
            .expect("fire");
        assert_eq!(first.as_ref().map(Vec::len), Some(1));
        assert_eq!(
            s.fire_tick(&row.uuid, tick, &[scheduled(&row)])
                .expect("again"),
            None
        );
        assert_eq!(
            made_by(s, &row.uuid),
            [(
                "scheduled_pipeline".to_owned(),
                "refs/heads/main".to_owned(),
                "nightly".to_owned()
            )]
        );
        let listed = s.list_schedules(Some("acme/widget")).expect("ls");
        assert_eq!(listed[0].last_tick, Some(tick));
        assert_eq!(listed[0].params, [("deploy".to_owned(), "true".to_owned())]);
        // Paused: the next tick is not taken; resumed: `since` moves on, and it fires.
        s.pause_schedule("acme/widget", "nightly", true)
            .expect("pause");
        assert!(s.list_schedules(None).expect("ls")[0].paused);
        let next = tick + 86_400_000;
        assert_eq!(
            s.fire_tick(&row.uuid, next, &[scheduled(&row)])
                .expect("paused"),
            None
        );
        std::thread::sleep(Duration::from_millis(5));
        s.pause_schedule("acme/widget", "nightly", false)
            .expect("resume");
        let resumed = &s.list_schedules(None).expect("ls")[0];
        assert!(!resumed.paused);
        assert!(resumed.since > row.since, "{resumed:?}");
        assert!(s
            .fire_tick(&row.uuid, next, &[scheduled(&row)])
            .expect("fire")
            .is_some());
        s.remove_schedule("acme/widget", "nightly").expect("rm");
        assert!(s.list_schedules(None).expect("ls").is_empty());
        assert_eq!(
            s.fire_tick(&row.uuid, next + 86_400_000, &[scheduled(&row)])
                .expect("removed"),
            None
        );
        let e = s
            .remove_schedule("acme/widget", "nightly")
            .expect_err("gone");
        assert!(e.to_string().contains("no schedule named"), "{e}");
        assert_eq!(made_by(s, &row.uuid).len(), 2);
    }
);

both!(a_config_read_again_keeps_unchanged_triggers, |_d, s| {
    let t = |w: &str, cron: &str| WorkflowTrigger {
        workflow: w.into(),
        cron: cron.into(),
        only: Some(vec!["main".into(), "/release\\/.*/".into()]),
        ignore: Vec::new(),
    };
    assert!(s
        .set_workflow_schedules(
            "acme/widget",
            "c1",
            &[t("nightly", "0 4 * * *"), t("hourly", "0 * * * *")]
        )
        .expect("set"));
    let before = s.workflow_schedules().expect("read");
    assert_eq!(before.len(), 2);
    assert_eq!(before[0].trigger, t("hourly", "0 * * * *"));
    std::thread::sleep(Duration::from_millis(5));
    // The same triggers change nothing (and keep their `since`); a trigger's new
    // branches are a change; one the config drops goes; a new cron is a new schedule.
    assert!(!s
        .set_workflow_schedules(
            "acme/widget",
            "c2",
            &[t("nightly", "0 4 * * *"), t("hourly", "0 * * * *")]
        )
        .expect("set"));
    let again = s.workflow_schedules().expect("read");
    assert_eq!(
        again.iter().map(|w| w.since).collect::<Vec<_>>(),
        before.iter().map(|w| w.since).collect::<Vec<_>>()
    );
    assert!(again.iter().all(|w| w.revision == "c2"));
    let mut ignoring = t("hourly", "0 * * * *");
    ignoring.ignore = vec!["wip".into()];
    assert!(s
        .set_workflow_schedules(
            "acme/widget",
            "c2",
            &[t("nightly", "0 4 * * *"), ignoring.clone()]
        )
        .expect("set"));
    assert_eq!(s.workflow_schedules().expect("read")[0].trigger, ignoring);
    assert!(s
        .set_workflow_schedules("acme/widget", "c3", &[t("nightly", "0 5 * * *")])
        .expect("set"));
    let after = s.workflow_schedules().expect("read");
    assert_eq!(after.len(), 1);
    assert_eq!(
        (after[0].trigger.cron.as_str(), after[0].revision.as_str()),
        ("0 5 * * *", "c3")
    );
    // A workflow schedule's tick is claimed by its key, once.
    let p = NewPipeline {
        project: "acme/widget".into(),
        git_ref: "refs/heads/main".into(),
        trigger_source: "scheduled_pipeline".into(),
        scheduled_workflow: Some("nightly".into()),
        ..Default::default()
    };
    assert!(s
        .fire_tick(&after[0].key, 60_000, std::slice::from_ref(&p))
        .expect("fire")
        .is_some());
    assert!(s
        .fire_tick(&after[0].key, 60_000, &[p])
        .expect("again")
        .is_none());
    assert_eq!(
        s.workflow_schedules().expect("read")[0].last_tick,
        Some(60_000)
    );
    let fetched = s.pipelines_to_fetch().expect("to fetch");
    assert_eq!(
        fetched.last().and_then(|p| p.scheduled_workflow.as_deref()),
        Some("nightly")
    );
    let r = s.repo_access(after[0].project_id).expect("access");
    assert_eq!(
        (r.clone_url.as_str(), r.default_branch.as_str()),
        ("git@bitbucket.org:acme/widget.git", "main")
    );
    assert_eq!(r.keys.len(), 1, "the widget's user key");
    assert_eq!(r.keys[0].1.as_str(), "KEY");
});

fn workflow(name: &str, job: &str) -> NewWorkflow {
    NewWorkflow {
        name: name.into(),
        jobs: vec![NewWorkflowJob {
            name: job.into(),
            kind: JobKind::Build,
            requires: vec![],
            serial_group: None,
            resource_class: None,
            status: WorkflowJobStatus::Waiting,
            reason: None,
            contexts: vec![],
        }],
    }
}

both!(project_tokens_pages_and_lookups_of_api_v2, |_d, s| {
    use crate::model::tokens::ProjectScope;
    let token = s
        .create_project_token("acme/widget", "ci-reader", ProjectScope::Read)
        .expect("token");
    let trigger = s
        .create_project_token("acme/widget", "ci-trigger", ProjectScope::Trigger)
        .expect("token");
    assert!(token.starts_with("bosun-prj-"));
    let found = s.project_token(&token).expect("lookup").expect("live");
    assert_eq!(
        (found.slug.as_str(), found.name.as_str(), found.scope),
        ("acme/widget", "ci-reader", ProjectScope::Read)
    );
    let found = s.project_token(&trigger).expect("lookup").expect("live");
    assert_eq!(
        (found.name.as_str(), found.scope),
        ("ci-trigger", ProjectScope::Trigger)
    );
    assert_eq!(s.project_token("bosun-prj-nope").expect("lookup"), None);
    assert!(s
        .create_project_token("acme/nope", "x", ProjectScope::Read)
        .is_err());
    assert_eq!(s.revoke_project_tokens("ci-reader").expect("revoke"), 1);
    assert_eq!(s.project_token(&token).expect("lookup"), None);
    assert!(s.project_token(&trigger).expect("lookup").is_some());
    let p = s.api_project("acme/widget").expect("project").expect("one");
    assert_eq!(
        (p.slug.as_str(), p.default_branch.as_str()),
        ("acme/widget", "main")
    );
    assert!(s.api_project("acme/nope").expect("project").is_none());

    let make = |git_ref: &str| {
        s.create_pipeline(&NewPipeline {
            project: "acme/widget".into(),
            git_ref: git_ref.into(),
            trigger_source: "api".into(),
            params: vec![("x".into(), "1".into())],
            username: Some("ann".into()),
            ..Default::default()
        })
        .expect("pipeline")
        .0
    };
    let a = make("refs/heads/main");
    let b = make("refs/heads/dev");
    let c = make("refs/heads/main");
    let page = |branch: Option<&str>, before: Option<i64>, limit: u32| {
        s.pipeline_page("acme/widget", branch, before, limit)
            .expect("page")
    };
    assert_eq!(page(None, None, 10), [c, b, a]);
    assert_eq!(page(Some("main"), None, 10), [c, a]);
    assert_eq!(page(None, Some(c), 1), [b]);
    assert_eq!(page(Some("main"), Some(c), 10), [a]);
    let row = s.pipeline(a).expect("pipeline").expect("row");
    assert_eq!(s.pipeline_by_uuid(&row.uuid).expect("uuid"), Some(a));
    assert_eq!(s.pipeline_by_uuid("nope").expect("uuid"), None);
    let d = s.pipeline_details(a).expect("details").expect("row");
    assert_eq!(d.params, [("x".to_owned(), "1".to_owned())]);
    assert_eq!(d.username.as_deref(), Some("ann"));
    assert!(s.pipeline_details(9_999).expect("details").is_none());
    assert!(s.pipeline_config(a).expect("config").is_none());
    s.record_pipeline_config(a, "source", "compiled")
        .expect("config");
    let cfg = s.pipeline_config(a).expect("config").expect("kept");
    assert_eq!(
        (cfg.source.as_str(), cfg.setup_source.as_deref()),
        ("source", None)
    );
    let id = job(s);
    assert_eq!(s.job_pipeline(id).expect("job"), None);
});

// A setup workflow's job gets the continuation key; the key continues its pipeline once,
// adding workflows whose jobs carry the continued config and parameters.
both!(a_continuation_key_continues_its_pipeline_once, |_d, s| {
    let (id, _) = s
        .create_pipeline(&NewPipeline {
            project: "acme/widget".into(),
            git_ref: "refs/heads/main".into(),
            trigger_source: "api".into(),
            ..Default::default()
        })
        .expect("pipeline");
    let sha = "a".repeat(40);
    s.record_pipeline_config(id, "setup: true", "setup processed")
        .expect("config");
    s.pipeline_compiled(id, &sha, &[workflow("setup", "generate")])
        .expect("compiled");
    s.create_continuation(id).expect("continuation");
    s.advance(id, &STATUSES).expect("advance");
    let setup = claim_next(s);
    assert_eq!(setup.job_name, "generate");
    let setup_id = parse_job_id(&setup.id).expect("id");
    assert_eq!(s.job_pipeline(setup_id).expect("job"), Some(id));
    let row = s.pipeline(id).expect("pipeline").expect("row");
    assert_eq!(
        s.workflow_pipeline(&row.workflows[0].uuid)
            .expect("workflow"),
        Some(id)
    );
    let key = setup
        .env
        .iter()
        .find(|e| e.name == "CIRCLE_CONTINUATION_KEY")
        .expect("the key")
        .clone();
    assert!(key.secret, "the key is a secret value");
    assert_eq!(key.value.len(), 64);

    let unknown = "0".repeat(64);
    assert!(matches!(
        s.continuation(&unknown).expect("lookup"),
        Err(ContinueRefusal::UnknownKey)
    ));
    let target = s
        .continuation(&key.value)
        .expect("lookup")
        .expect("a target");
    assert_eq!(target.revision, sha);
    assert_eq!(target.pipeline.branch.as_deref(), Some("main"));

    let params = vec![("target".to_owned(), "x".to_owned())];
    let mut after = [workflow("after", "deploy")];
    after[0].jobs[0].contexts = vec!["deploy-creds".into()];
    let notify = workflow("after", "notify").jobs.remove(0);
    after[0].jobs.push(notify);
    let c = Continuation {
        source: "continued",
        compiled: "continued processed",
        params: &params,
        workflows: &after,
    };
    assert_eq!(
        s.continue_pipeline(&key.value, &c).expect("continue"),
        Ok(id)
    );
    assert_eq!(
        s.continue_pipeline(&key.value, &c).expect("again"),
        Err(ContinueRefusal::AlreadyContinued)
    );
    assert!(matches!(
        s.continuation(&key.value).expect("lookup"),
        Err(ContinueRefusal::AlreadyContinued)
    ));
    // `deploy` names a context that does not exist and ends unauthorized; `notify` runs.
    s.advance(id, &STATUSES).expect("advance");
    let row = s.pipeline(id).expect("pipeline").expect("row");
    let statuses: Vec<_> = row.workflows[1].jobs.iter().map(|j| j.status).collect();
    assert_eq!(
        statuses,
        [WorkflowJobStatus::Unauthorized, WorkflowJobStatus::Queued],
        "{row:#?}"
    );
    let notify = claim_next(s);
    assert_eq!(notify.job_name, "notify");
    let p = notify.pipeline.expect("pipeline");
    assert_eq!(p.config.as_deref(), Some("continued"));
    assert_eq!(p.parameters, params);
    assert_eq!(p.workflow, "after");
    assert!(notify
        .env
        .iter()
        .all(|e| e.name != "CIRCLE_CONTINUATION_KEY"));
    let cfg = s.pipeline_config(id).expect("config").expect("kept");
    assert_eq!(
        (cfg.source.as_str(), cfg.setup_source.as_deref()),
        ("continued", Some("setup: true"))
    );
});

both!(a_follow_records_and_forgets_keys_and_secrets, |_d, s| {
    let rec = |slug: &'static str, key: Option<&'static str>| FollowRecord {
        key: "{repo-uuid}",
        slug,
        clone_url: "git@bitbucket.org:acme/gadget.git",
        known_hosts: "",
        main_branch: Some("trunk"),
        deploy_key: key,
        webhook_secret: key.map(|_| "hook-secret"),
    };
    assert!(s.followed("{repo-uuid}").expect("followed").is_none());
    s.record_follow(&rec("acme/gadget", Some("DEPLOY")))
        .expect("follow");
    let f = s.followed("{repo-uuid}").expect("followed").expect("one");
    assert_eq!(
        (f.slug.as_str(), f.key.as_str()),
        ("acme/gadget", "{repo-uuid}")
    );
    assert_eq!(f.deploy_key.as_deref().map(String::as_str), Some("DEPLOY"));
    assert_eq!(
        f.webhook_secret.as_deref().map(String::as_str),
        Some("hook-secret")
    );
    assert!(f.user_key.is_none());
    assert_eq!(
        s.api_project("acme/gadget")
            .expect("project")
            .expect("one")
            .default_branch,
        "trunk"
    );
    // Followed again under a new name: the project follows, its keys stay.
    s.record_follow(&rec("acme/gizmo", None)).expect("again");
    let f = s.followed("acme/gadget").expect("old slug").expect("one");
    assert_eq!(f.slug, "acme/gizmo");
    assert_eq!(f.deploy_key.as_deref().map(String::as_str), Some("DEPLOY"));
    // Another repository cannot take a slug a project holds.
    let e = s
        .record_follow(&FollowRecord {
            key: "{other}",
            ..rec("acme/widget", None)
        })
        .expect_err("taken");
    assert!(e.to_string().contains("exists already"), "{e}");
    s.forget_follow("acme/gizmo").expect("unfollow");
    let f = s.followed("acme/gizmo").expect("followed").expect("kept");
    assert!(f.deploy_key.is_none() && f.webhook_secret.is_none());
});

both!(
    badges_keep_a_digest_and_find_the_newest_pipeline,
    |_d, s| {
        let b = s.badge_project("acme/widget").expect("badge").expect("one");
        assert_eq!((b.public, b.token_digest.as_deref()), (false, None));
        assert!(s.badge_project("acme/nope").expect("badge").is_none());
        s.set_badge_token_digest("acme/widget", "d1")
            .expect("digest");
        s.set_badge_token_digest("acme/widget", "d2")
            .expect("digest");
        s.set_public_badges("acme/widget", true).expect("public");
        let b = s.badge_project("acme/widget").expect("badge").expect("one");
        assert_eq!((b.public, b.token_digest.as_deref()), (true, Some("d2")));
        s.set_public_badges("acme/widget", false).expect("private");
        let b = s.badge_project("acme/widget").expect("badge").expect("one");
        assert_eq!((b.public, b.token_digest.as_deref()), (false, Some("d2")));

        let make = |git_ref: &str| {
            s.create_pipeline(&NewPipeline {
                project: "acme/widget".into(),
                git_ref: git_ref.into(),
                trigger_source: "api".into(),
                ..Default::default()
            })
            .expect("pipeline")
            .0
        };
        let old = make("refs/heads/main");
        s.pipeline_errored(old, None, "no config").expect("errored");
        make("refs/heads/main");
        make("refs/heads/dev");
        let newest = |states: &[PipelineState]| {
            s.newest_pipeline_state(b.id, "main", states)
                .expect("newest")
        };
        assert_eq!(
            newest(&[PipelineState::Created, PipelineState::Errored]),
            Some(PipelineState::Created)
        );
        assert_eq!(
            newest(&[PipelineState::Errored, PipelineState::Success]),
            Some(PipelineState::Errored)
        );
        assert_eq!(newest(&[PipelineState::Success]), None);
        assert_eq!(newest(&[]), None);
        assert_eq!(s.recorded_public_url().expect("url"), None);
        s.record_public_url("https://ci.example.com")
            .expect("record");
        assert_eq!(
            s.recorded_public_url().expect("url").as_deref(),
            Some("https://ci.example.com")
        );
    }
);

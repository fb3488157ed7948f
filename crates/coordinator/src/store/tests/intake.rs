//! The Bitbucket intake's records and the commit status outbox, on both stores.

use super::*;
use crate::model::{JobKind, StatusApi};
use crate::store::pipelines::{
    NewPipeline, NewWorkflow, NewWorkflowJob, StatusBody, StatusChange, Statuses,
};
use bosun_protocol::{WireKeyRole, WorkflowJobStatus};

fn project(s: &dyn Backend, slug: &str, uuid: &str) -> i64 {
    s.add_project(&NewProject {
        slug: slug.into(),
        uuid: Some(uuid.into()),
        clone_url: format!("git@bitbucket.org:{slug}.git"),
        user_key: None,
        deploy_key: None,
        known_hosts: String::new(),
        env: vec![],
    })
    .expect("project");
    s.project_for_webhook(uuid)
        .expect("lookup")
        .expect("the project")
        .id
}

both!(
    a_projects_settings_renames_pull_requests_and_deliveries_are_kept,
    |_d, s| {
        let pid = project(s, "acme/gadget", "{0b5e}");
        s.set_project_settings(
            "acme/gadget",
            &ProjectSettings {
                webhook_secret: Some("hush".into()),
                default_branch: Some("trunk".into()),
                build_pull_requests_only: Some(true),
                fork_secrets: Some(true),
                ..ProjectSettings::default()
            },
        )
        .expect("settings");
        let p = s
            .project_for_webhook("{0b5e}")
            .expect("lookup")
            .expect("row");
        assert_eq!(
            (
                p.id,
                p.key.as_str(),
                p.slug.as_str(),
                p.default_branch.as_str()
            ),
            (pid, "{0b5e}", "acme/gadget", "trunk")
        );
        assert_eq!(
            (
                p.build_pull_requests_only,
                p.build_fork_pull_requests,
                p.fork_secrets
            ),
            (true, false, true)
        );
        assert_eq!(p.secret.as_ref().map(|s| s.as_str()), Some("hush"));
        // An empty secret removes it; an unknown project or repository is no project.
        s.set_project_settings(
            "acme/gadget",
            &ProjectSettings {
                webhook_secret: Some(String::new()),
                ..ProjectSettings::default()
            },
        )
        .expect("settings");
        let p = s
            .project_for_webhook("{0b5e}")
            .expect("lookup")
            .expect("row");
        assert!(p.secret.is_none());
        assert!(s.project_for_webhook("{nope}").expect("lookup").is_none());
        let e = s
            .set_project_settings("acme/none", &ProjectSettings::default())
            .expect_err("no such project");
        assert!(matches!(e, CoordError::NotFound(_)), "{e}");

        // Data Center repository 42 on two servers, and 142 that only ends alike.
        let a = project(s, "dc/a", "bitbucket-dc:Git.Example.com/42");
        let b = project(s, "dc/b", "bitbucket-dc:other.example/42");
        project(s, "dc/c", "bitbucket-dc:git.example.com/142");
        let found: Vec<i64> = s
            .projects_for_data_center(42)
            .expect("lookup")
            .iter()
            .map(|p| p.id)
            .collect();
        assert_eq!(found, [a, b]);

        // The repository was renamed: the project follows and its old slug resolves; a slug
        // another project holds stays that project's.
        s.follow_repository(pid, "acme/gizmo", Some("main"))
            .expect("follow");
        let now = s.api_project("acme/gadget").expect("lookup").expect("row");
        assert_eq!(
            (now.slug.as_str(), now.default_branch.as_str()),
            ("acme/gizmo", "main")
        );
        s.follow_repository(pid, "acme/widget", None)
            .expect("follow");
        let still = s.api_project("acme/gizmo").expect("lookup").expect("row");
        assert_eq!(still.slug, "acme/gizmo");
        s.follow_repository(pid, "acme/gadget", None).expect("back");
        assert_eq!(
            s.api_project("acme/gizmo")
                .expect("lookup")
                .expect("row")
                .slug,
            "acme/gadget"
        );

        assert!(s.first_delivery("d-1", "built").expect("first"));
        assert!(!s.first_delivery("d-1", "built").expect("again"));

        // A pull request recorded again takes its new state; forks are not the project's own.
        let url = |n: u64| format!("https://bitbucket.org/acme/gadget/pull-requests/{n}");
        s.record_pull_request(pid, 7, "feature", "OPEN", false, &url(7))
            .expect("pr");
        assert_eq!(
            s.open_pull_request(pid, "feature").expect("open"),
            Some((7, url(7)))
        );
        s.record_pull_request(pid, 7, "feature", "MERGED", false, &url(7))
            .expect("pr");
        s.record_pull_request(pid, 8, "feature", "OPEN", true, &url(8))
            .expect("fork");
        assert_eq!(s.open_pull_request(pid, "feature").expect("open"), None);
        s.record_pull_request(pid, 9, "feature", "OPEN", false, &url(9))
            .expect("pr");
        assert_eq!(
            s.open_pull_request(pid, "feature").expect("open"),
            Some((9, url(9)))
        );

        let token = s.create_operator_token("ops").expect("token");
        assert_eq!(
            s.operator(&token).expect("operator").as_deref(),
            Some("ops")
        );
        assert_eq!(s.operator("bosun-op-nope").expect("operator"), None);
        assert_eq!(s.revoke_operator_tokens("ops").expect("revoke"), 1);
        assert_eq!(s.operator(&token).expect("operator"), None);
    }
);

both!(a_projects_keys_are_replaced_and_removed, |_d, s| {
    s.set_project_key("acme/widget", KeyColumn::Deploy, Some("DEPLOY"))
        .expect("deploy key");
    s.set_project_key("acme/widget", KeyColumn::User, None)
        .expect("no user key");
    job(s);
    let w = claim_next(s);
    let keys: Vec<_> = w
        .keys
        .iter()
        .map(|k| (k.role, k.private_key.as_str()))
        .collect();
    assert_eq!(keys, [(WireKeyRole::Deploy, "DEPLOY")]);
    assert!(s
        .set_project_key("acme/none", KeyColumn::User, Some("K"))
        .is_err());
});

fn a_status(c: &StatusChange<'_>) -> Option<StatusBody> {
    Some(StatusBody {
        key: c.job.to_owned(),
        body: format!("{} {:?}", c.job, c.status),
    })
}
const STATUSES: Statuses<'static> = Statuses {
    public_url: "https://ci.example.com",
    write: a_status,
};

both!(
    commit_statuses_go_oldest_first_with_their_credentials_until_sent,
    |_d, s| {
        s.set_project_settings(
            "acme/widget",
            &ProjectSettings {
                status_api: Some(Some(StatusApi::Cloud(
                    "https://api.bitbucket.example/2.0".into(),
                ))),
                status_credentials: Some("me:secret".into()),
                ..ProjectSettings::default()
            },
        )
        .expect("settings");
        let (id, _) = s
            .create_pipeline(&NewPipeline {
                project: "acme/widget".into(),
                git_ref: "refs/heads/main".into(),
                trigger_source: "webhook".into(),
                ..Default::default()
            })
            .expect("pipeline");
        let sha = "c".repeat(40);
        s.pipeline_compiled(
            id,
            &sha,
            &[NewWorkflow {
                name: "build".into(),
                jobs: vec![NewWorkflowJob {
                    name: "test".into(),
                    kind: JobKind::Build,
                    requires: vec![],
                    serial_group: None,
                    resource_class: None,
                    status: WorkflowJobStatus::Waiting,
                    reason: None,
                    contexts: vec![],
                }],
            }],
        )
        .expect("compiled");
        s.advance(id, &STATUSES).expect("advance");
        let due = s.due_statuses(10).expect("due");
        let first = due.first().expect("a status");
        assert_eq!(
            (
                first.workspace_repo.as_str(),
                first.commit_sha.as_str(),
                first.credentials.as_str(),
                first.attempts
            ),
            ("acme/widget", sha.as_str(), "me:secret", 0)
        );
        assert_eq!(
            first.api,
            StatusApi::Cloud("https://api.bitbucket.example/2.0".into())
        );
        let first = first.id;
        // Retried later: neither it nor a later status of its job goes before it.
        s.status_failed(first, "503", Duration::from_secs(3600), false)
            .expect("failed");
        assert!(s.due_statuses(10).expect("due").is_empty());
        s.status_failed(first, "503", Duration::ZERO, false)
            .expect("failed");
        let again = s.due_statuses(10).expect("due");
        assert_eq!(
            again.iter().map(|d| (d.id, d.attempts)).next(),
            Some((first, 2))
        );
        s.status_sent(first).expect("sent");
        assert!(s
            .due_statuses(10)
            .expect("due")
            .iter()
            .all(|d| d.id != first));
        // Given up: marked sent, so the next of its job can go.
        for d in s.due_statuses(10).expect("due") {
            s.status_failed(d.id, "gone", Duration::ZERO, true)
                .expect("give up");
        }
        assert!(s.due_statuses(10).expect("due").is_empty());
    }
);

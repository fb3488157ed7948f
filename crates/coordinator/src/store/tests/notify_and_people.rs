//! The notification outbox written by a pipeline's run, and people, on both stores.

use super::*;
use crate::model::notify::TargetKind;
use crate::model::people::{Credential, CredentialKind, Role};
use crate::model::JobKind;
use crate::store::pipelines::{
    NewPipeline, NewWorkflow, NewWorkflowJob, StatusBody, StatusChange, Statuses,
};
use bosun_protocol::WorkflowJobStatus;

/// Each store with a way to open its database again (a coordinator restarted) and to read a
/// text column as the database holds it (what is sealed at rest).
struct Reopenable {
    label: &'static str,
    _d: tempfile::TempDir,
    open: Box<dyn Fn() -> Box<dyn Backend>>,
    raw: RawQuery,
}

/// A query's first column, read straight from the database.
type RawQuery = Box<dyn Fn(&str) -> Vec<String>>;

fn reopenable() -> Vec<Reopenable> {
    let d = tempfile::tempdir().expect("tempdir");
    let dir = d.path().join("data");
    let db = dir.join(DB_FILE);
    let mut out = vec![Reopenable {
        label: "sqlite",
        _d: d,
        open: Box::new(move || Box::new(Store::open(&dir).expect("open"))),
        raw: Box::new(move |q| {
            let c = rusqlite::Connection::open(&db).expect("open the file");
            let mut st = c.prepare(q).expect(q);
            let rows = st
                .query_map([], |r| r.get::<_, Option<String>>(0))
                .expect(q)
                .collect::<rusqlite::Result<Vec<_>>>()
                .expect(q);
            rows.into_iter().flatten().collect()
        }),
    }];
    match pg::testing::server() {
        Some(server) => {
            let url = server.new_database().unwrap_or_else(|e| panic!("{e}"));
            let d = tempfile::tempdir().expect("tempdir");
            let dir = d.path().join("data");
            let raw_url = url.clone();
            out.push(Reopenable {
                label: "postgres",
                _d: d,
                open: Box::new(move || {
                    Box::new(PgStore::open(&url, &dir, None).expect("open PostgreSQL store"))
                }),
                raw: Box::new(move |q| {
                    let mut c =
                        postgres::Client::connect(&raw_url, postgres::NoTls).expect("connect");
                    c.query(q, &[])
                        .expect(q)
                        .iter()
                        .filter_map(|r| r.get::<_, Option<String>>(0))
                        .collect()
                }),
            });
        }
        None => eprintln!("{}", pg::testing::SKIPPED),
    }
    out
}

#[test]
fn the_notification_outbox_is_written_with_the_end_claimed_once_and_survives_a_restart() {
    use crate::model::notify::TargetKind;
    for b in reopenable() {
        eprintln!("{}", b.label);
        let s = (b.open)();
        add_widget(&*s);
        fn target<'a>(
            kind: TargetKind,
            address: &'a str,
            events: &'a str,
            secret: Option<&'a str>,
        ) -> NewTarget<'a> {
            NewTarget {
                project: "acme/widget",
                kind,
                address,
                events,
                name: "",
                secret,
            }
        }
        s.add_notify_target(&target(
            TargetKind::Email,
            "team@example.com",
            "failed,fixed",
            None,
        ))
        .expect("email");
        let hook = s
            .add_notify_target(&target(
                TargetKind::Webhook,
                "https://h.example.com/x",
                "workflow-completed",
                Some("s3cret-signing"),
            ))
            .expect("webhook");
        assert!(
            s.add_notify_target(&target(
                TargetKind::Email,
                "team@example.com",
                "failed",
                None
            ))
            .is_err(),
            "the same address twice"
        );
        // The secret is sealed at rest.
        let raw = (b.raw)(&format!(
            "SELECT secret FROM notify_targets WHERE id = {}",
            hook.id
        ));
        assert_eq!(raw.len(), 1, "{raw:?}");
        assert!(!raw[0].contains("s3cret"), "{raw:?}");

        let new = |r: &str| pipelines::NewPipeline {
            project: "acme/widget".into(),
            git_ref: r.into(),
            trigger_source: "api".into(),
            event: "api".into(),
            ..Default::default()
        };
        let (p1, _) = s.create_pipeline(&new("main")).expect("pipeline");
        let lease = Duration::from_millis(300);
        assert!(s.claim_notifications(10, lease).expect("claim").is_empty());
        s.pipeline_errored(p1, None, "bad config").expect("errored");
        let due = s.claim_notifications(10, lease).expect("claim");
        assert_eq!(due.len(), 1, "{due:?}");
        assert_eq!(
            (due[0].event.as_str(), due[0].status.as_str()),
            ("failed", "errored")
        );
        assert_eq!(due[0].kind, TargetKind::Email);
        assert!(
            s.claim_notifications(10, lease).expect("again").is_empty(),
            "claimed: not handed out twice"
        );
        // A restart mid-delivery: the row is still there, and comes back after the lease.
        drop(s);
        let s = (b.open)();
        std::thread::sleep(lease + Duration::from_millis(50));
        let again = s.claim_notifications(10, lease).expect("after the lease");
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].uuid, due[0].uuid, "the same event, the same id");
        s.notification_failed(again[0].id, "SMTP: refused", Duration::ZERO, false)
            .expect("failed");
        let t = s.notify_targets("acme/widget").expect("targets");
        assert_eq!(t[0].pending, 1);
        assert_eq!(t[0].last_error.as_deref(), Some("SMTP: refused"));
        assert!(t[0].last_error_at.is_some());
        let retry = s.claim_notifications(10, lease).expect("retry");
        assert_eq!(retry[0].attempts, 1);
        s.notification_delivered(retry[0].id).expect("delivered");
        let t = s.notify_targets("acme/widget").expect("targets");
        assert_eq!(t[0].pending, 0);
        assert!(t[0].last_delivered_at.is_some());
        std::thread::sleep(lease + Duration::from_millis(50));
        assert!(
            s.claim_notifications(10, lease).expect("none").is_empty(),
            "delivered once"
        );
        // Removing a target drops what it had pending.
        let (p2, _) = s.create_pipeline(&new("main")).expect("pipeline");
        s.pipeline_errored(p2, None, "bad again").expect("errored");
        assert_eq!(s.notify_targets("acme/widget").expect("t")[0].pending, 1);
        assert!(s
            .remove_notify_target("acme/widget", TargetKind::Email, "team@example.com")
            .expect("rm"));
        assert!(s.claim_notifications(10, lease).expect("none").is_empty());
        assert!(!s
            .remove_notify_target("acme/widget", TargetKind::Email, "team@example.com")
            .expect("rm again"));
    }
}

fn no_status(_: &StatusChange<'_>) -> Option<StatusBody> {
    None
}
const STATUSES: Statuses<'static> = Statuses {
    public_url: "",
    write: no_status,
};

// A job's end, its workflow's and its pipeline's each write the outbox rows their targets
// asked for in the transaction that records them: `job-completed` and
// `workflow-completed` for the webhook, a `failed` mail, then a `fixed` one when the
// branch is green again; a canceled pipeline mails nothing a `failed,fixed` address did
// not ask for.
both!(
    a_runs_ends_write_the_outbox_rows_their_targets_asked_for,
    |_d, s| {
        let target = |kind, address, events| NewTarget {
            project: "acme/widget",
            kind,
            address,
            events,
            name: "",
            secret: None,
        };
        s.add_notify_target(&target(
            TargetKind::Webhook,
            "https://h.example.com/x",
            "workflow-completed,job-completed",
        ))
        .expect("webhook");
        s.add_notify_target(&target(
            TargetKind::Email,
            "team@example.com",
            "failed,fixed",
        ))
        .expect("email");
        let run = |status: JobStatus| {
            let (id, _) = s
                .create_pipeline(&NewPipeline {
                    project: "acme/widget".into(),
                    git_ref: "refs/heads/main".into(),
                    trigger_source: "api".into(),
                    event: "api".into(),
                    ..Default::default()
                })
                .expect("pipeline");
            s.pipeline_compiled(
                id,
                &"a".repeat(40),
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
            let j = claim_next(s);
            let jid = parse_job_id(&j.id).expect("id");
            s.finish(jid, "a1", None, &fin(status, 0, &sha256_hex(b"")))
                .expect("finish");
            s.advance(id, &STATUSES).expect("advance");
            let mut due: Vec<(String, String, TargetKind, bool, Option<String>)> = s
                .claim_notifications(10, Duration::from_secs(60))
                .expect("claim")
                .into_iter()
                .map(|d| {
                    assert_eq!(d.pipeline_id, id);
                    assert_eq!(d.project_slug, "acme/widget");
                    (
                        d.event,
                        d.status,
                        d.kind,
                        d.workflow.is_some_and(|w| w.name == "build"),
                        d.job.map(|j| {
                            assert_eq!(j.job_id, Some(jid));
                            j.name
                        }),
                    )
                })
                .collect();
            due.sort_by(|a, b| a.0.cmp(&b.0));
            due
        };
        assert_eq!(
            run(JobStatus::Failed),
            [
                (
                    "failed".into(),
                    "failed".into(),
                    TargetKind::Email,
                    false,
                    None
                ),
                (
                    "job-completed".into(),
                    "failed".into(),
                    TargetKind::Webhook,
                    true,
                    Some("test".into())
                ),
                (
                    "workflow-completed".into(),
                    "failed".into(),
                    TargetKind::Webhook,
                    true,
                    None
                ),
            ]
        );
        let green = run(JobStatus::Success);
        assert_eq!(
            green
                .iter()
                .map(|d| (d.0.as_str(), d.1.as_str()))
                .collect::<Vec<_>>(),
            [
                ("fixed", "success"),
                ("job-completed", "success"),
                ("workflow-completed", "success")
            ]
        );
        let (p, _) = s
            .create_pipeline(&NewPipeline {
                project: "acme/widget".into(),
                git_ref: "refs/heads/main".into(),
                trigger_source: "api".into(),
                event: "api".into(),
                ..Default::default()
            })
            .expect("pipeline");
        s.cancel_pipeline(p, &STATUSES).expect("cancel");
        assert!(s
            .claim_notifications(10, Duration::from_secs(60))
            .expect("claim")
            .is_empty());
    }
);

// Two claimers at once never get the same row (PostgreSQL: `FOR UPDATE SKIP LOCKED`;
// SQLite: one writer).
both!(
    concurrent_claims_share_the_outbox_without_overlap,
    |_d, s| {
        s.add_notify_target(&NewTarget {
            project: "acme/widget",
            kind: TargetKind::Email,
            address: "team@example.com",
            events: "failed",
            name: "",
            secret: None,
        })
        .expect("email");
        for _ in 0..20 {
            let (p, _) = s
                .create_pipeline(&NewPipeline {
                    project: "acme/widget".into(),
                    git_ref: "refs/heads/main".into(),
                    trigger_source: "api".into(),
                    event: "api".into(),
                    ..Default::default()
                })
                .expect("pipeline");
            s.pipeline_errored(p, None, "bad config").expect("errored");
        }
        let lease = Duration::from_secs(60);
        let got: Vec<i64> = std::thread::scope(|t| {
            let hands: Vec<_> = (0..4)
                .map(|_| {
                    t.spawn(|| {
                        let mut mine = vec![];
                        loop {
                            let d = s.claim_notifications(3, lease).expect("claim");
                            if d.is_empty() {
                                break mine;
                            }
                            mine.extend(d.into_iter().map(|d| d.id));
                        }
                    })
                })
                .collect();
            hands
                .into_iter()
                .flat_map(|h| h.join().expect("claimer"))
                .collect()
        });
        let mut unique = got.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!((got.len(), unique.len()), (20, 20), "{got:?}");
    }
);

both!(people_sessions_permissions_and_public_projects, |_d, s| {
    let ann = s
        .person_logged_in("{ann-uuid}", "ann", "Ann")
        .expect("login");
    assert!(!ann.admin);
    assert_eq!(ann.permissions_fetched, None);
    // A second login keeps the person, with the nickname Bitbucket says now.
    let again = s
        .person_logged_in("{ann-uuid}", "ann2", "Ann B")
        .expect("login");
    assert_eq!(again.id, ann.id);
    assert_eq!(again.nickname, "ann2");
    let bob = s.person_logged_in("{bob-uuid}", "bob", "").expect("login");
    assert_eq!(
        s.people()
            .expect("people")
            .iter()
            .map(|p| p.nickname.as_str())
            .collect::<Vec<_>>(),
        ["ann2", "bob"]
    );
    assert_eq!(
        s.person_by_name("{bob-uuid}").expect("by uuid"),
        Some(bob.clone())
    );
    assert_eq!(s.person_by_name("nobody").expect("by name"), None);
    assert!(s.set_coordinator_admin("ann2", true).expect("grant").admin);
    assert!(s.person_by_name("ann2").expect("p").expect("ann").admin);
    assert!(s.set_coordinator_admin("nobody", true).is_err());

    // Sessions: one replaces another, an expired one is nobody, logout ends one.
    let far = now_ms() + 3_600_000;
    s.open_session("d1", ann.id, far, None).expect("open");
    assert_eq!(
        s.session_person("d1").expect("s").map(|p| p.id),
        Some(ann.id)
    );
    s.open_session("d2", ann.id, far, Some("d1")).expect("open");
    assert_eq!(s.session_person("d1").expect("s"), None);
    assert_eq!(
        s.session_person("d2").expect("s").map(|p| p.id),
        Some(ann.id)
    );
    s.open_session("old", bob.id, now_ms() - 1, None)
        .expect("open");
    assert_eq!(s.session_person("old").expect("s"), None);
    s.close_session("d2").expect("close");
    assert_eq!(s.session_person("d2").expect("s"), None);

    // Permissions replace the last ones; the refresh token is sealed at rest.
    s.store_permissions(
        bob.id,
        &[
            ("acme/widget".into(), Role::Write),
            ("acme/other".into(), Role::Read),
        ],
        1_000,
    )
    .expect("permissions");
    s.store_permissions(bob.id, &[("acme/widget".into(), Role::Read)], 2_000)
        .expect("permissions");
    assert_eq!(
        s.person_permissions(bob.id).expect("permissions"),
        [("acme/widget".to_owned(), Role::Read)]
    );
    assert_eq!(
        s.person_by_name("bob")
            .expect("p")
            .expect("bob")
            .permissions_fetched,
        Some(2_000)
    );
    // The kept credential: sealed in a place naming its kind, read back with it.
    assert_eq!(s.credential(bob.id).expect("credential"), None);
    for (kind, secret) in [
        (CredentialKind::RefreshToken, "rt-secret"),
        (CredentialKind::HttpAccessToken, "NjQ2MDk0NzE3MzY0Ok-dc-pat"),
    ] {
        let c = Credential {
            kind,
            secret: zeroize::Zeroizing::new(secret.into()),
        };
        s.set_credential(bob.id, Some(&c)).expect("credential");
        assert_eq!(s.credential(bob.id).expect("credential"), Some(c));
    }
    s.set_credential(bob.id, None).expect("forget");
    assert_eq!(s.credential(bob.id).expect("credential"), None);

    // A project's access by job, pipeline and name; public or not.
    let id = job(s);
    let (p, _) = s
        .create_pipeline(&NewPipeline {
            project: "acme/widget".into(),
            git_ref: "refs/heads/main".into(),
            trigger_source: "api".into(),
            ..Default::default()
        })
        .expect("pipeline");
    let access = |of| {
        s.project_access(of)
            .expect("access")
            .map(|a| (a.slug, a.public))
    };
    assert_eq!(
        access(Resource::Job(id)),
        Some(("acme/widget".into(), false))
    );
    s.set_project_public("acme/widget", true).expect("public");
    assert_eq!(
        access(Resource::Pipeline(p)),
        Some(("acme/widget".into(), true))
    );
    assert_eq!(
        access(Resource::Project("acme/widget".into())),
        Some(("acme/widget".into(), true))
    );
    assert_eq!(access(Resource::Job(9_999)), None);
    assert_eq!(access(Resource::Project("acme/none".into())), None);
    assert_eq!(
        s.projects_access()
            .expect("all")
            .iter()
            .map(|a| (a.slug.as_str(), a.public))
            .collect::<Vec<_>>(),
        [("acme/widget", true)]
    );
});

// The job list's `projects`: only the projects a person may read (none: an empty list).
both!(the_job_list_keeps_to_the_projects_it_is_given, |_d, s| {
    s.add_project(&NewProject {
        slug: "acme/other".into(),
        uuid: None,
        clone_url: "git@bitbucket.org:acme/other.git".into(),
        user_key: None,
        deploy_key: None,
        known_hosts: String::new(),
        env: vec![],
    })
    .expect("project");
    let w = job(s);
    let o = s
        .enqueue(&NewJob {
            project_slug: "acme/other".into(),
            ..new_job()
        })
        .expect("enqueue");
    let list = |projects: Option<&[&str]>| {
        s.list_jobs_filtered(
            &JobFilter {
                projects: projects.map(|p| p.iter().map(|s| s.to_string()).collect()),
                ..Default::default()
            },
            10,
        )
        .expect("list")
        .into_iter()
        .map(|j| j.id)
        .collect::<Vec<_>>()
    };
    assert_eq!(list(None), [o, w]);
    assert_eq!(list(Some(&["acme/widget"])), [w]);
    assert_eq!(list(Some(&["acme/widget", "acme/other"])), [o, w]);
    assert_eq!(list(Some(&[])), Vec::<i64>::new());
});

//! Personal API tokens and the audit log, on every store of the suite.

use super::*;
use crate::model::audit::{Actor, AuditAction, Event};

both!(
    personal_tokens_are_digests_listed_touched_and_revoked,
    |_d, s| {
        let ann = s.person_logged_in("{u-ann}", "ann", "Ann").expect("ann");
        let bob = s.person_logged_in("{u-bob}", "bob", "Bob").expect("bob");
        let t1 = s
            .create_personal_token(ann.id, "deploy", "digest-1", 2)
            .expect("token");
        let t2 = s
            .create_personal_token(ann.id, "laptop", "digest-2", 2)
            .expect("token");
        assert_eq!(t1.last_used, None);
        // At most `max` live tokens; a digest is one token only.
        assert!(s
            .create_personal_token(ann.id, "third", "digest-3", 2)
            .is_err());
        assert!(s
            .create_personal_token(bob.id, "dup", "digest-1", 2)
            .is_err());
        let listed = s.personal_tokens(ann.id).expect("list");
        assert_eq!(
            listed.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(),
            ["laptop", "deploy"]
        );
        assert!(s.personal_tokens(bob.id).expect("list").is_empty());

        // A lookup names the person and marks the use, at most once a minute.
        let (id, who) = s
            .personal_token_person("digest-1", 1_000_000)
            .expect("lookup")
            .expect("live");
        assert_eq!((id, who.id, who.nickname.as_str()), (t1.id, ann.id, "ann"));
        s.personal_token_person("digest-1", 1_030_000)
            .expect("lookup");
        let used = |s: &dyn Backend| {
            s.personal_tokens(ann.id)
                .expect("list")
                .into_iter()
                .find(|t| t.id == t1.id)
                .and_then(|t| t.last_used)
        };
        assert_eq!(used(s), Some(1_000_000));
        s.personal_token_person("digest-1", 1_070_000)
            .expect("lookup");
        assert_eq!(used(s), Some(1_070_000));
        assert_eq!(s.personal_token_person("nope", 1).expect("lookup"), None);

        // Someone else's id revokes nothing; the owner's does, at once.
        assert_eq!(
            s.revoke_personal_token(bob.id, t1.id).expect("revoke"),
            None
        );
        let gone = s
            .revoke_personal_token(ann.id, t1.id)
            .expect("revoke")
            .expect("theirs");
        assert_eq!(gone.name, "deploy");
        assert_eq!(
            s.personal_token_person("digest-1", 2).expect("lookup"),
            None
        );
        assert_eq!(s.revoke_personal_token(ann.id, t1.id).expect("again"), None);
        assert!(s
            .personal_token_person("digest-2", 2)
            .expect("lookup")
            .is_some());
        assert_eq!(t2.name, "laptop");
        // Room again for a new one.
        s.create_personal_token(ann.id, "third", "digest-3", 2)
            .expect("room after a revoke");
    }
);

both!(the_audit_log_appends_and_pages_newest_first, |_d, s| {
    assert!(s.audit_log(None, 10).expect("empty").is_empty());
    let mut ids = Vec::new();
    for (i, action) in [
        AuditAction::Login,
        AuditAction::Rerun,
        AuditAction::TokenMade,
    ]
    .into_iter()
    .enumerate()
    {
        let e = Event::new(Actor::Person("ann".into()), action)
            .project("acme/widget")
            .target(format!("pipeline {i}"))
            .detail("from the page");
        ids.push(s.record_audit(1_000 + i as i64, &e).expect("record"));
    }
    s.record_audit(
        5_000,
        &Event::new(Actor::Host("root".into()), AuditAction::GrantAdmin).target("ann"),
    )
    .expect("record");
    let all = s.audit_log(None, 10).expect("all");
    assert_eq!(all.len(), 4);
    assert_eq!(all[0].actor, "host:root");
    assert_eq!(all[0].action, "grant-admin");
    assert_eq!(all[0].project, None);
    assert_eq!(all[3].action, "login");
    assert_eq!(all[3].at, 1_000);
    assert_eq!(all[3].target.as_deref(), Some("pipeline 0"));
    assert_eq!(all[3].detail, "from the page");
    let page = s.audit_log(Some(ids[2]), 1).expect("page");
    assert_eq!(page.len(), 1);
    assert_eq!(page[0].id, ids[1]);
    assert_eq!(page[0].action, "rerun");
    assert!(s
        .audit_log(Some(ids[0]), 10)
        .expect("before the first")
        .is_empty());
});

both!(
    the_audit_log_is_pruned_by_age_in_bounded_batches,
    |_d, s| {
        let row = |i: i64| {
            Event::new(Actor::Person("ann".into()), AuditAction::Login).target(format!("row {i}"))
        };
        // Written out of time order (a clock stepped back): age decides, not the id.
        for at in [1_000, 2_000, 3_000, 500, 4_000, 5_000] {
            s.record_audit(at, &row(at)).expect("record");
        }
        // At most `batch` rows a statement, the oldest first.
        assert_eq!(s.prune_audit(3_500, 2).expect("prune"), 2);
        let left: Vec<i64> = s
            .audit_log(None, 10)
            .expect("rows")
            .iter()
            .map(|r| r.at)
            .collect();
        assert_eq!(left, [5_000, 4_000, 500, 3_000]);
        assert_eq!(s.prune_audit(3_500, 2).expect("prune"), 2);
        assert_eq!(s.prune_audit(3_500, 2).expect("prune"), 0);
        let left: Vec<i64> = s
            .audit_log(None, 10)
            .expect("rows")
            .iter()
            .map(|r| r.at)
            .collect();
        assert_eq!(left, [5_000, 4_000]);
        // The cut-off itself stays: only rows written before it go.
        assert_eq!(s.prune_audit(4_000, 10).expect("prune"), 0);
        // Many rows: batch after batch until a batch comes back short (as `audit::prune`
        // goes), each statement bounded.
        for i in 0..2_500 {
            s.record_audit(10 + i, &row(i)).expect("record");
        }
        let mut batches = Vec::new();
        loop {
            let n = s.prune_audit(4_000, 1_000).expect("prune");
            batches.push(n);
            if n < 1_000 {
                break;
            }
        }
        assert_eq!(batches, [1_000, 1_000, 500]);
        assert_eq!(s.audit_log(None, 10_000).expect("rows").len(), 2);
    }
);

//! The blobs index on both stores: a leased job's scope, the quota, workspace layers, caches,
//! artifacts and test results.

use super::*;
use bosun_protocol::{WireFailedTest, WireTestResults, MAX_TEST_MESSAGE};

both!(
    the_blob_index_keeps_quotas_layers_caches_artifacts_and_test_results,
    |_d, s| {
        let id = claimed(s);
        assert!(matches!(
            s.job_scope(id, "a2", None).expect("scope"),
            Err(Lease::NotYours)
        ));
        assert!(matches!(
            s.job_scope(id, "a1", Some(9)).expect("scope"),
            Err(Lease::Superseded { current: 1 })
        ));
        assert!(matches!(
            s.job_scope(9_999, "a1", None).expect("scope"),
            Err(Lease::NotFound)
        ));
        let Ok(scope) = s.job_scope(id, "a1", Some(1)).expect("scope") else {
            panic!("a1 holds job {id}")
        };
        assert_eq!(
            (
                scope.slug.as_str(),
                scope.job_name.as_str(),
                scope.workspace.clone(),
                scope.fork
            ),
            ("acme/widget", "build", format!("job-{id}"), false)
        );
        let pid = scope.project_id;
        let (a, b, c) = ("a".repeat(64), "b".repeat(64), "c".repeat(64));

        // The quota: a blob held already is not counted twice.
        assert_eq!(s.add_blob_ref(&scope, &a, 600, 1000).expect("ref"), Ok(()));
        assert_eq!(
            s.add_blob_ref(&scope, &a, 600, 1000).expect("again"),
            Ok(())
        );
        assert_eq!(s.blob_usage(pid).expect("usage"), 600);
        let over = s
            .add_blob_ref(&scope, &b, 500, 1000)
            .expect("ref")
            .expect_err("over quota");
        assert_eq!(
            (over.slug.as_str(), over.used, over.adding, over.quota),
            ("acme/widget", 600, 500, 1000)
        );
        assert_eq!(s.check_quota(&scope, 500, 1000).expect("check"), Some(over));
        assert_eq!(s.check_quota(&scope, 400, 1000).expect("check"), None);
        assert_eq!(s.project_blob(pid, &a).expect("blob"), Some(600));
        assert_eq!(s.project_blob(pid, &b).expect("blob"), None);
        assert_eq!(s.add_blob_ref(&scope, &c, 100, 1000).expect("ref"), Ok(()));

        assert!(!s.add_layer(&scope, &b).expect("a blob not held"));
        assert!(s.add_layer(&scope, &a).expect("layer"));
        assert!(s.add_layer(&scope, &c).expect("layer"));
        let layers: Vec<_> = s
            .layers(&scope)
            .expect("layers")
            .into_iter()
            .map(|l| (l.job, l.blob, l.size))
            .collect();
        assert_eq!(
            layers,
            [
                ("build".to_owned(), a.clone(), 600),
                ("build".to_owned(), c.clone(), 100)
            ]
        );

        // Caches are immutable; the newest whose key starts with the prefix is found, and
        // the prefix is text, not a pattern.
        assert_eq!(
            s.save_cache(&scope, "deps-v1-abc", &a).expect("save"),
            Some(true)
        );
        assert_eq!(
            s.save_cache(&scope, "deps-v1-abc", &c).expect("again"),
            Some(false)
        );
        assert_eq!(
            s.save_cache(&scope, "deps-v1-x", &b).expect("not held"),
            None
        );
        assert_eq!(
            s.save_cache(&scope, "deps-v1-def", &c).expect("save"),
            Some(true)
        );
        let hit = s
            .find_cache(pid, "deps-v1-")
            .expect("find")
            .expect("a cache");
        assert_eq!(
            (hit.key.as_str(), hit.blob.as_str(), hit.size),
            ("deps-v1-def", c.as_str(), 100)
        );
        let exact = s
            .find_cache(pid, "deps-v1-abc")
            .expect("find")
            .expect("a cache");
        assert_eq!((exact.blob.as_str(), exact.size), (a.as_str(), 600));
        assert!(s.find_cache(pid, "deps%").expect("find").is_none());
        assert!(s.find_cache(pid, "other").expect("find").is_none());

        // An artifact named again names the new blob.
        assert!(!s.add_artifact(&scope, "out/x", &b).expect("not held"));
        assert!(s
            .add_artifact(&scope, "out/report.html", &a)
            .expect("artifact"));
        assert!(s
            .add_artifact(&scope, "out/report.html", &c)
            .expect("again"));
        assert_eq!(
            s.artifact(id, "out/report.html").expect("artifact"),
            Some((c.clone(), 100))
        );
        assert_eq!(s.artifact(id, "out/none").expect("artifact"), None);

        // Test results add up; a long message is cut at a character boundary.
        let failed = |name: &str| WireFailedTest {
            name: name.into(),
            classname: "suite".into(),
            message: format!("x{}", "é".repeat(MAX_TEST_MESSAGE)),
        };
        s.add_test_results(
            &scope,
            &WireTestResults {
                tests: 3,
                failures: 1,
                errors: 0,
                skipped: 1,
                failed: vec![failed("one")],
            },
        )
        .expect("results");
        s.add_test_results(
            &scope,
            &WireTestResults {
                tests: 2,
                failures: 1,
                errors: 1,
                skipped: 0,
                failed: vec![failed("two")],
            },
        )
        .expect("results");
        let r = s.job_results(id).expect("results");
        assert_eq!(r.artifacts, [("out/report.html".to_owned(), 100)]);
        let t = r.tests.expect("test results");
        assert_eq!((t.tests, t.failures, t.errors, t.skipped), (5, 2, 1, 1));
        let names: Vec<&str> = t.failed.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["one", "two"]);
        let cut = t.failed[0].message.len();
        assert!(
            (MAX_TEST_MESSAGE - 1..=MAX_TEST_MESSAGE).contains(&cut),
            "{cut}"
        );
        let none = s.job_results(9_999).expect("results");
        assert!(none.artifacts.is_empty() && none.tests.is_none());
    }
);

use super::schema::MIGRATIONS;
use super::*;
use bosun_protocol::JobStatus;

fn store() -> (tempfile::TempDir, Store) {
    let d = tempfile::tempdir().expect("tempdir");
    let s = Store::open(&d.path().join("data")).expect("open");
    add_widget(&s);
    (d, s)
}

fn add_widget(s: &dyn Backend) {
    s.add_project(&NewProject {
        slug: "acme/widget".into(),
        uuid: None,
        clone_url: "git@bitbucket.org:acme/widget.git".into(),
        user_key: Some("KEY".into()),
        deploy_key: None,
        known_hosts: String::new(),
        env: vec![],
    })
    .expect("project");
}

/// The stores the suite runs against: SQLite always; PostgreSQL when its server binaries are
/// here (a database of its own on one server per test process), else skipped with a word.
fn backends() -> Vec<(&'static str, tempfile::TempDir, Box<dyn Backend>)> {
    let (d, s) = store();
    let mut out: Vec<(&'static str, tempfile::TempDir, Box<dyn Backend>)> =
        vec![("sqlite", d, Box::new(s))];
    match pg::testing::store() {
        Some((d, s)) => {
            add_widget(&s);
            out.push(("postgres", d, Box::new(s)));
        }
        None => eprintln!("{}", pg::testing::SKIPPED),
    }
    out
}

/// A test body run against every store of [`backends`], as `s: &dyn Backend`, its data
/// directory's temporary parent as `d`.
macro_rules! both {
    ($name:ident, |$d:ident, $s:ident| $body:block) => {
        #[test]
        fn $name() {
            for (label, $d, store) in backends() {
                eprintln!("{}: {label}", stringify!($name));
                let $s: &dyn Backend = &*store;
                $body
            }
        }
    };
}

fn new_job() -> NewJob {
    NewJob {
        project_slug: "acme/widget".into(),
        git_ref: "main".into(),
        commit_sha: None,
        job_name: "build".into(),
        resource_class: None,
        labels: vec![],
        max_attempts: 3,
        pr_number: None,
        pr_url: None,
        pr_fork: false,
        timeout_secs: None,
        workspace: None,
    }
}

fn job(s: &dyn Backend) -> i64 {
    s.enqueue(&new_job()).expect("enqueue")
}

fn claim_next(s: &dyn Backend) -> WireJob {
    s.claim("a1", Duration::from_secs(30))
        .expect("claim")
        .expect("a job")
}

both!(
    a_jobs_pull_request_and_timeout_reach_the_agent_in_its_claim,
    |_d, s| {
        let plain = job(s);
        let with_url = s
            .enqueue(&NewJob {
                pr_number: Some(7),
                pr_url: Some(
                    "https://bitbucket.example.com/projects/A/repos/w/pull-requests/7".into(),
                ),
                timeout_secs: Some(90),
                ..new_job()
            })
            .expect("enqueue");
        let derived = s
            .enqueue(&NewJob {
                pr_number: Some(12),
                pr_fork: true,
                ..new_job()
            })
            .expect("enqueue");

        let j = claim_next(s);
        assert_eq!(j.id, plain.to_string());
        assert_eq!(j.pull_request, None);
        assert_eq!(j.timeouts, WireTimeouts::default());
        assert_eq!(j.timeouts.job_secs, 3 * 3600);

        let j = claim_next(s);
        assert_eq!(j.id, with_url.to_string());
        assert_eq!(
            j.pull_request,
            Some(WirePullRequest {
                number: 7,
                url: "https://bitbucket.example.com/projects/A/repos/w/pull-requests/7".into(),
                fork: false,
            })
        );
        assert_eq!(j.timeouts.job_secs, 90);

        let j = claim_next(s);
        assert_eq!(j.id, derived.to_string());
        assert_eq!(
            j.pull_request.map(|p| (p.number, p.url, p.fork)),
            Some((
                12,
                "https://bitbucket.org/acme/widget/pull-requests/12".into(),
                true
            ))
        );
        assert_eq!(j.timeouts, WireTimeouts::default());

        let row = s.job(with_url).expect("job").expect("row");
        assert_eq!((row.pr_number, row.timeout_secs), (Some(7), Some(90)));
        assert_eq!(s.job(plain).expect("job").expect("row").pr_number, None);
    }
);

both!(
    bad_pull_requests_and_timeouts_are_refused_at_enqueue,
    |_d, s| {
        let refused = |j: NewJob| match s.enqueue(&j) {
            Err(CoordError::Invalid(m)) => m,
            other => panic!("expected a refusal, got {other:?}"),
        };
        assert!(refused(NewJob {
            timeout_secs: Some(0),
            ..new_job()
        })
        .contains("between 1s and 24h"));
        assert!(refused(NewJob {
            timeout_secs: Some(MAX_JOB_TIMEOUT_SECS + 1),
            ..new_job()
        })
        .contains("between 1s and 24h"));
        assert!(refused(NewJob {
            pr_url: Some("https://bitbucket.org/acme/widget/pull-requests/3".into()),
            ..new_job()
        })
        .contains("needs the pull request's number"));
        assert!(refused(NewJob {
            pr_number: Some(3),
            pr_url: Some("javascript:alert(1)".into()),
            ..new_job()
        })
        .contains("http(s)"));
        assert!(refused(NewJob {
            pr_number: Some(0),
            ..new_job()
        })
        .contains("start at 1"));
        assert!(refused(NewJob {
            pr_number: Some(u64::MAX),
            ..new_job()
        })
        .contains("too large"));
        assert!(s.list_jobs(10).expect("list").is_empty());
        s.enqueue(&NewJob {
            timeout_secs: Some(MAX_JOB_TIMEOUT_SECS),
            ..new_job()
        })
        .expect("the maximum itself is allowed");
    }
);

both!(log_appends_are_idempotent_by_offset, |_d, s| {
    let id = job(s);
    let j = s
        .claim("a1", Duration::from_secs(30))
        .expect("claim")
        .expect("a job");
    assert_eq!(j.id, id.to_string());
    assert!(matches!(
        s.append_log(id, "a1", None, 0, b"hello ").expect("append"),
        AppendOutcome::Ack(6)
    ));
    assert!(matches!(
        s.append_log(id, "a1", None, 0, b"hello ").expect("append"),
        AppendOutcome::Ack(6)
    ));
    assert!(matches!(
        s.append_log(id, "a1", None, 3, b"lo world")
            .expect("append"),
        AppendOutcome::Ack(11)
    ));
    assert!(matches!(
        s.append_log(id, "a1", None, 20, b"x").expect("append"),
        AppendOutcome::Gap(11)
    ));
    assert!(matches!(
        s.append_log(id, "a2", None, 11, b"x").expect("append"),
        AppendOutcome::Refused(Lease::NotYours)
    ));
    assert_eq!(s.log_from(id, 0).expect("log"), b"hello world");
    assert_eq!(s.log_from(id, 8).expect("log"), b"rld");
});

fn fin(status: JobStatus, log_bytes: u64, digest: &str) -> FinishRequest {
    FinishRequest {
        status,
        log_bytes,
        log_sha256: digest.to_owned(),
        error: None,
    }
}

fn claimed(s: &dyn Backend) -> i64 {
    let id = job(s);
    s.claim("a1", Duration::from_secs(30))
        .expect("claim")
        .expect("a job");
    id
}

both!(
    the_checked_out_commit_is_recorded_and_lines_are_counted,
    |_d, s| {
        let id = claimed(s);
        let sha = "ABCDEF0123456789abcdef0123456789abcdef01";
        let ev = |sha: &str| JobEvent::StepStarted {
            step: 1,
            name: "s".into(),
            log_offset: 0,
            commit_sha: Some(sha.into()),
        };
        // Not a commit id: ignored (agent-written text is shown and linked as a commit).
        s.append_events(id, "a1", None, 0, &[ev("main\"><x")])
            .expect("events");
        assert_eq!(s.job(id).expect("job").expect("row").resolved_sha, None);
        s.append_events(id, "a1", None, 1, &[ev(sha)])
            .expect("events");
        assert_eq!(
            s.job(id)
                .expect("job")
                .expect("row")
                .resolved_sha
                .as_deref(),
            Some(sha.to_ascii_lowercase().as_str())
        );
        s.append_log(id, "a1", None, 0, b"a\nbb\n\nccc\n")
            .expect("log");
        assert_eq!(
            s.newlines_before(id, &[11, 0, 2, 5, 99]).expect("count"),
            [4, 0, 1, 2, 4]
        );
    }
);

fn log_file(d: &tempfile::TempDir, id: i64) -> PathBuf {
    d.path()
        .join("data")
        .join(LOGS_DIR)
        .join(format!("{id}.log"))
}

/// SQLite's log is a file written before its length commits (PostgreSQL's chunks commit
/// with the length, in one transaction: neither failure below can happen there).
#[test]
fn a_log_cut_short_by_a_host_crash_is_asked_for_again() {
    let (d, st) = store();
    let s: &dyn Backend = &st;
    {
        let id = claimed(s);
        assert!(matches!(
            s.append_log(id, "a1", None, 0, b"hello world")
                .expect("append"),
            AppendOutcome::Ack(11)
        ));
        // The host went down before the unsynced tail reached the disk.
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(log_file(&d, id))
            .expect("open");
        f.set_len(5).expect("truncate");
        assert!(matches!(
            s.append_log(id, "a1", None, 11, b"!").expect("append"),
            AppendOutcome::Gap(5)
        ));
        assert_eq!(s.job(id).expect("job").expect("row").log_bytes, 5);
        assert!(matches!(
            s.append_log(id, "a1", None, 5, b" world!").expect("append"),
            AppendOutcome::Ack(12)
        ));
        assert_eq!(s.log_from(id, 0).expect("log"), b"hello world!");
        // The same at the finish: a short file is not finished but asked for again.
        f.set_len(7).expect("truncate");
        let digest = sha256_hex(b"hello world!");
        assert!(matches!(
            s.finish(id, "a1", None, &fin(JobStatus::Success, 12, &digest))
                .expect("finish"),
            FinishOutcome::Incomplete(7)
        ));
        assert!(matches!(
            s.append_log(id, "a1", None, 7, b"orld!").expect("append"),
            AppendOutcome::Ack(12)
        ));
        assert!(matches!(
            s.finish(id, "a1", None, &fin(JobStatus::Success, 12, &digest))
                .expect("finish"),
            FinishOutcome::Done
        ));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(log_file(&d, id))
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}

both!(
    writes_of_a_lapsed_attempt_never_reach_the_next_one,
    |_d, s| {
        let id = job(s);
        let first = s
            .claim("a1", Duration::ZERO)
            .expect("claim")
            .expect("a job");
        assert_eq!(first.attempt, 1);
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(s.expire_leases().expect("expire"), 1);
        // The same agent claims the re-queued job while attempt 1's sender still has data.
        let second = s
            .claim("a1", Duration::from_secs(30))
            .expect("claim")
            .expect("a job");
        assert_eq!(second.attempt, 2);
        assert!(matches!(
            s.append_log(id, "a1", Some(1), 0, b"late bytes of attempt 1")
                .expect("append"),
            AppendOutcome::Refused(Lease::Superseded { current: 2 })
        ));
        assert!(matches!(
            s.append_events(id, "a1", Some(1), 0, &[]).expect("events"),
            EventsOutcome::Refused(Lease::Superseded { current: 2 })
        ));
        assert!(matches!(
            s.append_log(id, "a1", Some(2), 0, b"attempt 2")
                .expect("append"),
            AppendOutcome::Ack(9)
        ));
        let digest = sha256_hex(b"attempt 2");
        assert!(matches!(
            s.finish(id, "a1", Some(1), &fin(JobStatus::Failed, 9, &digest))
                .expect("finish"),
            FinishOutcome::Refused(Lease::Superseded { current: 2 })
        ));
        assert!(matches!(
            s.finish(id, "a1", Some(2), &fin(JobStatus::Success, 9, &digest))
                .expect("finish"),
            FinishOutcome::Done
        ));
        assert_eq!(s.log_from(id, 0).expect("log"), b"attempt 2");
    }
);

#[test]
fn bytes_of_an_append_that_never_committed_are_not_log() {
    let (d, st) = store();
    let s: &dyn Backend = &st;
    {
        let id = claimed(s);
        assert!(matches!(
            s.append_log(id, "a1", None, 0, b"hello").expect("append"),
            AppendOutcome::Ack(5)
        ));
        // A write that reached the file before the coordinator died, uncommitted.
        use std::io::Write;
        std::fs::OpenOptions::new()
            .append(true)
            .open(log_file(&d, id))
            .expect("open")
            .write_all(b"GARBAGE")
            .expect("write");
        assert_eq!(s.log_from(id, 0).expect("log"), b"hello");
        assert!(matches!(
            s.append_log(id, "a1", None, 5, b" world").expect("append"),
            AppendOutcome::Ack(11)
        ));
        assert_eq!(
            std::fs::read(log_file(&d, id)).expect("file"),
            b"hello world"
        );
        let digest = sha256_hex(b"hello world");
        assert!(matches!(
            s.finish(id, "a1", None, &fin(JobStatus::Success, 11, &digest))
                .expect("finish"),
            FinishOutcome::Done
        ));
    }
}

// Issue 31: a running log is read by range, listed once its job is final until it moved
// into the object store, and forgotten with a re-queued attempt; on PostgreSQL the chunks
// are every replica's, and dropping a finished log's chunks leaves nothing in the store.
both!(
    a_finished_log_waits_to_move_and_a_requeued_attempt_starts_over,
    |_d, s| {
        let id = claimed(s);
        assert!(matches!(
            s.append_log(id, "a1", None, 0, b"hello\n").expect("append"),
            AppendOutcome::Ack(6)
        ));
        assert!(matches!(
            s.append_log(id, "a1", None, 2, b"llo\nworld\n")
                .expect("append"),
            AppendOutcome::Ack(12)
        ));
        assert_eq!(s.read_log(id, 3, 9).expect("read"), b"lo\nwor");
        assert_eq!(s.read_log(id, 0, 99).expect("read"), b"hello\nworld\n");
        assert_eq!(
            s.log_piece(id, 4, 4).expect("piece"),
            Some((b"o\nwo".to_vec(), 12))
        );
        assert!(s.log_times(id).expect("times").at(0).is_some());
        assert!(s.finished_live_logs().expect("list").is_empty());
        // Not final: nothing is dropped.
        s.drop_finished_log(id).expect("drop");
        assert_eq!(s.log_from(id, 0).expect("log"), b"hello\nworld\n");
        let digest = sha256_hex(b"hello\nworld\n");
        assert!(matches!(
            s.finish(id, "a1", None, &fin(JobStatus::Success, 12, &digest))
                .expect("finish"),
            FinishOutcome::Done
        ));
        assert_eq!(s.finished_live_logs().expect("list"), [id]);
        s.drop_finished_log(id).expect("drop");
        if s.live_logs_shared() {
            assert!(s.finished_live_logs().expect("list").is_empty());
            assert!(s.read_log(id, 0, 12).expect("read").is_empty());
            // The committed length stays: readers fetch the rest from the object.
            assert_eq!(s.job(id).expect("job").expect("row").log_bytes, 12);
        }

        // A lapsed attempt's log goes with it; the next starts from zero.
        let next = job(s);
        s.claim("a1", Duration::ZERO)
            .expect("claim")
            .expect("a job");
        assert!(matches!(
            s.append_log(next, "a1", None, 0, b"lost attempt")
                .expect("append"),
            AppendOutcome::Ack(12)
        ));
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(s.expire_leases().expect("expire"), 1);
        assert!(s.log_from(next, 0).expect("log").is_empty());
        assert!(s.log_times(next).expect("times").0.is_empty());
        s.claim("a1", Duration::from_secs(30))
            .expect("claim")
            .expect("again");
        assert!(matches!(
            s.append_log(next, "a1", None, 0, b"second")
                .expect("append"),
            AppendOutcome::Ack(6)
        ));
        assert_eq!(s.log_from(next, 0).expect("log"), b"second");
    }
);

mod opening;

// Issue 15: keys queued with a job reach its agent in the claim; a rerun repeats the job's
// commit, pipeline and placement with its own keys; heartbeats record SSH access only for
// SSH jobs and only when it is printable.
both!(
    ssh_keys_travel_in_the_claim_and_a_rerun_repeats_the_job,
    |_d, s| {
        let key =
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBCnKQfAzuVF6iHrcQjDuDR8KDeNCpCxjF4+Hc1JFOQe a@x";
        let mut j = new_job();
        j.pr_number = Some(7);
        j.timeout_secs = Some(600);
        let plain = s.enqueue(&j).expect("enqueue");
        let w = claim_next(s);
        assert_eq!(w.id, plain.to_string());
        assert!(w.ssh_keys.is_empty());
        let again = s.rerun(plain, &[key.to_owned()]).expect("rerun");
        let row = s.job(again).expect("row").expect("job");
        assert_eq!((row.rerun_of, row.ssh), (Some(plain), true));
        assert_eq!(
            row.pipeline_number, 1,
            "a rerun stays in its job's pipeline"
        );
        let old = s.job(plain).expect("row").expect("job");
        assert!(old.rerun_of.is_none() && !old.ssh);
        let w = claim_next(s);
        assert_eq!(w.id, again.to_string());
        assert_eq!(w.ssh_keys, vec![key.to_owned()]);
        assert_eq!(w.timeouts.job_secs, 600);
        assert_eq!(w.pull_request.map(|p| p.number), Some(7));
        let state = |host: &str| bosun_protocol::WireSshState {
            host: host.into(),
            port: 54782,
            fingerprint: "SHA256:abc".into(),
            sessions: 2,
            held_until_ms: Some(1_800_000_000_000),
        };
        let running = |id: i64, host: &str| RunningJob {
            job_id: id.to_string(),
            state: "step 1/1".into(),
            ssh: Some(state(host)),
        };
        s.heartbeat(
            "a1",
            &[running(again, "ci.example.com")],
            Duration::from_secs(30),
        )
        .expect("heartbeat");
        let row = s.job(again).expect("row").expect("job");
        assert_eq!(row.ssh_state, Some(state("ci.example.com")));
        // Terminal escapes from an agent are not stored (the row keeps the last good state).
        s.heartbeat(
            "a1",
            &[running(again, "x\u{1b}[2J")],
            Duration::from_secs(30),
        )
        .expect("heartbeat");
        assert_eq!(
            s.job(again).expect("row").expect("job").ssh_state,
            None,
            "an unprintable host clears the state"
        );
        // The job without keys records nothing, whatever its agent says.
        let third = s.enqueue(&j).expect("enqueue");
        let w = claim_next(s);
        assert_eq!(w.id, third.to_string());
        s.heartbeat(
            "a1",
            &[running(third, "ci.example.com")],
            Duration::from_secs(30),
        )
        .expect("heartbeat");
        assert_eq!(s.job(third).expect("row").expect("job").ssh_state, None);
        assert!(s.rerun(9999, &[]).is_err());
    }
);

/// Issue 18: arrival times, one record per second, looked up by offset.
#[test]
fn log_arrival_times_are_recorded_per_second_and_dropped_with_the_log() {
    let (d, s) = store();
    let id = job(&s);
    claim_next(&s);
    s.note_arrival(id, 0, 10_000);
    s.note_arrival(id, 5, 10_900); // same second: no record
    s.note_arrival(id, 9, 11_200);
    s.note_arrival(id, 3, 12_000); // an offset going back (a cut log): ignored
    let t = s.log_times(id).expect("times");
    assert_eq!(t.0, vec![(0, 10_000), (9, 11_200)]);
    assert_eq!(t.at(0), Some(10_000));
    assert_eq!(t.at(8), Some(10_000));
    assert_eq!(t.at(9), Some(11_200));
    assert_eq!(s.log_times_from(id, 1).expect("from").0, vec![(9, 11_200)]);
    // A torn last record (a crash mid-write) is ignored.
    let path = d
        .path()
        .join("data")
        .join(LOGS_DIR)
        .join(format!("{id}.times"));
    let mut bytes = std::fs::read(&path).expect("file");
    bytes.extend_from_slice(&[1, 2, 3]);
    std::fs::write(&path, bytes).expect("write");
    assert_eq!(s.log_times(id).expect("times").0.len(), 2);
    s.drop_log(id);
    assert!(s.log_times(id).expect("times").0.is_empty());
}

// Issue 15: a job held for SSH after its last step is finished for the coordinator at once;
// its agent's heartbeats keep its SSH state showing (not "unknown", which would stop it), a
// cancel ends the hold without changing the status, and the state clears once the agent no
// longer lists the job.
both!(
    a_job_held_for_ssh_after_its_end_keeps_its_state_and_takes_a_cancel,
    |_d, s| {
        let key =
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBCnKQfAzuVF6iHrcQjDuDR8KDeNCpCxjF4+Hc1JFOQe a@x";
        let id = s
            .enqueue_ssh(&new_job(), &[key.to_owned()])
            .expect("enqueue");
        let w = claim_next(s);
        assert_eq!(w.id, id.to_string());
        let digest = sha256_hex(b"");
        assert!(matches!(
            s.finish(id, "a1", None, &fin(JobStatus::Success, 0, &digest))
                .expect("finish"),
            FinishOutcome::Done
        ));
        let held = |sessions: u32, until: Option<i64>| RunningJob {
            job_id: id.to_string(),
            state: "finished: success".into(),
            ssh: Some(bosun_protocol::WireSshState {
                host: "ci.example.com".into(),
                port: 54782,
                fingerprint: String::new(),
                sessions,
                held_until_ms: until,
            }),
        };
        let lease = Duration::from_secs(30);
        let hb = s
            .heartbeat("a1", &[held(1, Some(1_800_000_000_000))], lease)
            .expect("heartbeat");
        assert!(hb.unknown.is_empty() && hb.cancel.is_empty(), "{hb:?}");
        let row = s.job(id).expect("row").expect("job");
        assert_eq!(row.status, JobStatus::Success.into());
        assert_eq!(row.ssh_state.as_ref().map(|st| st.sessions), Some(1));
        // Another agent cannot claim the hold, and an agent that is not holding is told to stop.
        let hb = s
            .heartbeat("a2", &[held(1, Some(1_800_000_000_000))], lease)
            .expect("heartbeat");
        assert_eq!(hb.unknown, [id.to_string()]);
        let hb = s
            .heartbeat("a1", &[held(0, None)], lease)
            .expect("heartbeat");
        assert_eq!(hb.unknown, [id.to_string()]);
        s.heartbeat("a1", &[held(1, Some(1_800_000_000_000))], lease)
            .expect("heartbeat");

        // The cancel ends the hold: the control channel and the heartbeat carry it.
        assert_eq!(s.cancel(id).expect("cancel"), "success (its SSH hold ends)");
        assert_eq!(s.pending_cancels("a1").expect("pending"), [id.to_string()]);
        let hb = s
            .heartbeat("a1", &[held(1, Some(1_800_000_000_000))], lease)
            .expect("heartbeat");
        assert_eq!(hb.cancel, [id.to_string()]);
        assert_eq!(
            s.job(id).expect("row").expect("job").status,
            JobStatus::Success.into()
        );

        // Released: the agent no longer lists it, and the page stops saying "held until".
        s.heartbeat("a1", &[], lease).expect("heartbeat");
        let row = s.job(id).expect("row").expect("job");
        let state = row.ssh_state.expect("the last state stays");
        assert_eq!((state.sessions, state.held_until_ms), (0, None));
        assert!(s.pending_cancels("a1").expect("pending").is_empty());
        assert_eq!(s.cancel(id).expect("cancel"), "success");
    }
);

// Contexts through their trait: values sealed, never listed; restrictions and groups kept;
// a delete takes the variables and restrictions with it.
both!(
    contexts_keep_their_variables_sealed_and_go_whole,
    |_d, s| {
        use crate::model::contexts::{Restriction, RestrictionKind};
        let c = s.create_context("deploy", "").expect("create");
        assert!(matches!(
            s.create_context("deploy", ""),
            Err(CoordError::Invalid(_))
        ));
        let v = s
            .set_context_var("deploy", "AWS_KEY", "s3cr3t-value")
            .expect("set");
        assert_eq!(v.name, "AWS_KEY");
        s.set_context_var(&c.id, "AWS_KEY", "rotated")
            .expect("set again");
        let vars = s.list_context_vars("deploy").expect("vars");
        assert_eq!(vars.len(), 1);
        assert!(!format!("{vars:?}").contains("rotated"));
        let r = s
            .add_restriction(
                "deploy",
                &Restriction {
                    kind: RestrictionKind::Group,
                    value: "release".into(),
                },
            )
            .expect("restrict");
        assert_eq!(s.list_restrictions("deploy").expect("list").len(), 1);
        s.add_operator_group("ann", "release").expect("group");
        s.add_operator_group("ann", "release")
            .expect("again: idempotent");
        assert_eq!(s.operator_groups("ann").expect("groups"), ["release"]);
        assert!(s.remove_operator_group("ann", "release").expect("ungroup"));
        assert!(!s.remove_operator_group("ann", "release").expect("ungroup"));
        s.remove_restriction("deploy", &r.id).expect("unrestrict");
        assert!(s.list_restrictions("deploy").expect("list").is_empty());
        assert_eq!(
            s.list_contexts(None).expect("list"),
            std::slice::from_ref(&c),
            "listed as created"
        );
        assert!(s.list_contexts(Some("acme")).expect("list").is_empty());
        let id = job(s);
        assert!(s.job_context_values(id).expect("values").is_empty());
        s.delete_context("deploy").expect("delete");
        assert!(s.context(&c.id).expect("context").is_none());
        assert!(matches!(
            s.list_context_vars("deploy"),
            Err(CoordError::NotFound(_))
        ));
    }
);

// The job list's filters and paging, the pipeline list, the counts and a wait reason: the
// reads the pages make.
both!(lists_filter_and_page_as_the_pages_ask, |_d, s| {
    let a = job(s);
    let b = s
        .enqueue(&NewJob {
            git_ref: "refs/tags/v1".into(),
            ..new_job()
        })
        .expect("enqueue");
    let c = job(s);
    s.cancel(c).expect("cancel");
    let ids = |f: JobFilter| -> Vec<i64> {
        s.list_jobs_filtered(&f, 10)
            .expect("list")
            .iter()
            .map(|j| j.id)
            .collect()
    };
    assert_eq!(ids(JobFilter::default()), [c, b, a]);
    assert_eq!(
        ids(JobFilter {
            project: Some("acme/widget".into()),
            branch: Some("v1".into()),
            ..JobFilter::default()
        }),
        [b]
    );
    assert_eq!(
        ids(JobFilter {
            status: Some(JobState::Canceled),
            ..JobFilter::default()
        }),
        [c]
    );
    assert_eq!(
        ids(JobFilter {
            before: Some(c),
            ..JobFilter::default()
        }),
        [b, a]
    );
    assert!(ids(JobFilter {
        project: Some("other/repo".into()),
        ..JobFilter::default()
    })
    .is_empty());
    assert_eq!(s.counts(0).expect("counts"), (2, 0, 0));
    assert!(s
        .wait_reason(a)
        .expect("reason")
        .expect("queued")
        .contains("no agent has registered"));
    assert!(s
        .list_pipelines(Some("acme/widget"), 10)
        .expect("pipelines")
        .is_empty());
    assert!(s.list_pipelines(None, 10).expect("pipelines").is_empty());
});

#[test]
fn contexts_keep_their_values_sealed_list_names_only_and_go_with_their_restrictions() {
    use crate::model::contexts::{Restriction, RestrictionKind};
    let (d, s) = store();
    let c = s.create_context("deploy", "acme").expect("create");
    assert!(s.create_context("deploy", "").is_err(), "names are unique");
    s.create_context("other", "elsewhere").expect("create");
    assert_eq!(
        s.list_contexts(Some("acme"))
            .expect("list")
            .iter()
            .map(|c| c.name.as_str())
            .collect::<Vec<_>>(),
        ["deploy"]
    );
    s.set_context_var("deploy", "AWS_KEY", "first-value-123")
        .expect("set");
    let v = s
        .set_context_var(&c.id, "AWS_KEY", "second-value-456")
        .expect("set by id");
    assert!(v.updated >= v.created);
    assert!(s.set_context_var("deploy", "1BAD", "x").is_err());
    let names: Vec<String> = s
        .list_context_vars("deploy")
        .expect("vars")
        .into_iter()
        .map(|v| v.name)
        .collect();
    assert_eq!(names, ["AWS_KEY"]);
    // Sealed at rest.
    let db = std::fs::read(d.path().join("data").join(DB_FILE)).expect("db");
    assert!(!db.windows(16).any(|w| w == b"second-value-456"));
    // An expression that does not parse, or a project that does not exist, is refused.
    let r = |kind, v: &str| Restriction {
        kind,
        value: v.into(),
    };
    let e = s
        .add_restriction("deploy", &r(RestrictionKind::Expression, "branch == 1"))
        .expect_err("bad expression")
        .to_string();
    assert!(e.contains("column 1"), "{e}");
    assert!(s
        .add_restriction("deploy", &r(RestrictionKind::Project, "acme/nope"))
        .is_err());
    let p = s
        .add_restriction("deploy", &r(RestrictionKind::Project, "bb/acme/widget"))
        .expect("project");
    assert_eq!(p.value, "acme/widget");
    assert!(s
        .add_restriction("deploy", &r(RestrictionKind::Project, "acme/widget"))
        .is_err());
    s.add_restriction("deploy", &r(RestrictionKind::Group, "release"))
        .expect("group");
    assert_eq!(s.list_restrictions("deploy").expect("list").len(), 2);
    s.remove_restriction("deploy", &p.id).expect("remove");
    assert_eq!(s.list_restrictions("deploy").expect("list").len(), 1);
    // Groups of operators.
    s.add_operator_group("ann", "release").expect("group");
    s.add_operator_group("ann", "release").expect("idempotent");
    assert_eq!(s.operator_groups("ann").expect("groups"), ["release"]);
    assert!(s.remove_operator_group("ann", "release").expect("rm"));
    assert!(s.operator_groups("ann").expect("groups").is_empty());
    // Deleting a context takes its variables and restrictions.
    s.remove_context_var("deploy", "AWS_KEY").expect("rm var");
    assert!(s.remove_context_var("deploy", "AWS_KEY").is_err());
    s.delete_context("deploy").expect("delete");
    assert!(s.context("deploy").expect("read").is_none());
    assert!(matches!(
        s.list_context_vars("deploy"),
        Err(CoordError::NotFound(_))
    ));
    let conn = s.conn();
    let left: i64 = conn
        .query_row(
            "SELECT (SELECT COUNT(*) FROM context_env) + (SELECT COUNT(*) FROM context_restrictions)",
            [],
            |r| r.get(0),
        )
        .expect("count");
    assert_eq!(left, 0);
}

mod areas;

// The claim's fitting rule (the job's resource class unset or the agent's, its labels a
// subset of the agent's), a project restricted to some agents, and what the claim carries:
// the project's variables (secret ones opened, in name order), its keys, the previous build
// of the branch.
both!(
    a_claim_takes_the_oldest_job_the_agent_fits_with_its_project_data,
    |_d, s| {
        s.add_project(&NewProject {
            slug: "acme/env".into(),
            uuid: None,
            clone_url: "git@bitbucket.org:acme/env.git".into(),
            user_key: None,
            deploy_key: Some("DEPLOY-KEY".into()),
            known_hosts: "# comment\nbitbucket.org ssh-ed25519 AAAA\n".into(),
            env: vec![
                WireEnv {
                    name: "ZED".into(),
                    value: "plain".into(),
                    secret: false,
                },
                WireEnv {
                    name: "API_TOKEN".into(),
                    value: "s3cr3t".into(),
                    secret: true,
                },
            ],
        })
        .expect("project");
        let (small, _) = s
            .register_agent("small", "docker", &[], "test")
            .expect("agent");
        let (gpu, _) = s
            .register_agent("gpu", "large", &["gpu".into(), "linux".into()], "test")
            .expect("agent");
        let queue = |project: &str, class: Option<&str>, labels: &[&str]| {
            s.enqueue(&NewJob {
                project_slug: project.into(),
                resource_class: class.map(String::from),
                labels: labels.iter().map(|l| l.to_string()).collect(),
                ..new_job()
            })
            .expect("enqueue")
        };
        let needs_gpu = queue("acme/widget", Some("large"), &["gpu"]);
        let needs_more = queue("acme/widget", None, &["gpu", "arm"]);
        let any = queue("acme/env", None, &[]);
        let lease = Duration::from_secs(30);
        let claim = |agent: &str| {
            s.claim(agent, lease)
                .expect("claim")
                .map(|j| parse_job_id(&j.id).expect("id"))
        };
        // The small agent fits only the job that asks for nothing; the gpu one the oldest it has
        // every label of; nobody has `arm`.
        assert_eq!(claim(&small), Some(any));
        assert_eq!(claim(&gpu), Some(needs_gpu));
        assert_eq!(claim(&gpu), None);
        assert_eq!(claim("an-agent-nobody-registered"), None);
        s.cancel(needs_more).expect("cancel");
        // A project restricted to the gpu agent is offered to it only.
        s.restrict_project("acme/env", std::slice::from_ref(&gpu))
            .expect("restrict");
        let first = queue("acme/env", None, &[]);
        assert_eq!(claim(&small), None);
        let w = s.claim(&gpu, lease).expect("claim").expect("a job");
        assert_eq!(parse_job_id(&w.id), Some(first));
        assert_eq!(w.attempt, 1);
        assert_eq!(w.project.slug, "acme/env");
        assert_eq!(
            w.env
                .iter()
                .map(|e| (e.name.as_str(), e.value.as_str(), e.secret))
                .collect::<Vec<_>>(),
            [("API_TOKEN", "s3cr3t", true), ("ZED", "plain", false)]
        );
        assert_eq!(w.keys.len(), 1);
        assert_eq!(w.keys[0].private_key, "DEPLOY-KEY");
        assert_eq!(w.known_hosts, ["bitbucket.org ssh-ed25519 AAAA"]);
        assert_eq!(w.previous_build_num, Some(1), "the `any` job's number");
        assert!(w.pipeline.is_none() && w.context_ids.is_empty());
        let store = w.store.expect("store");
        assert_eq!(store.workspace, format!("job-{first}"));
        assert!(store.cache_writes);
    }
);

mod blob_index;
mod groups;
mod intake;
mod notify_and_people;
mod project_settings;
mod ssh_access;
mod tokens_and_audit;

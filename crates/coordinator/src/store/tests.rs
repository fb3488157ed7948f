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

both!(
    a_log_cut_short_by_a_host_crash_is_asked_for_again,
    |d, s| {
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
);

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

both!(
    bytes_of_an_append_that_never_committed_are_not_log,
    |d, s| {
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
);

#[test]
fn a_version_1_store_keeps_its_blob_logs_as_files() {
    let d = tempfile::tempdir().expect("tempdir");
    let dir = d.path().join("data");
    std::fs::create_dir_all(&dir).expect("mkdir");
    {
        let conn = Connection::open(dir.join(DB_FILE)).expect("open");
        conn.execute_batch(&format!(
            "BEGIN; {}; PRAGMA user_version = 1; COMMIT;",
            MIGRATIONS[0]
        ))
        .expect("v1 schema");
        conn.execute_batch(
            "INSERT INTO projects(id, uuid, slug, clone_url) VALUES (1, 'u', 'acme/w', 'git@x:a/w.git');
             INSERT INTO jobs(id, project_id, commit_sha, git_ref, job_name, pipeline_number, status, max_attempts, log_bytes, created)
               VALUES (7, 1, 'abc', 'main', 'build', 1, 'success', 3, 11, 0);
             INSERT INTO job_logs(job_id, offset, bytes) VALUES (7, 0, CAST('hello ' AS BLOB));
             INSERT INTO job_logs(job_id, offset, bytes) VALUES (7, 6, CAST('world' AS BLOB));",
        )
        .expect("v1 rows");
    }
    let s = Store::open(&dir).expect("migrate");
    assert_eq!(s.log_from(7, 0).expect("log"), b"hello world");
    assert_eq!(s.log_from(7, 6).expect("log"), b"world");
    let gone: i64 = s
        .conn()
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE name = 'job_logs'",
            [],
            |r| r.get(0),
        )
        .expect("query");
    assert_eq!(gone, 0);
}

#[test]
fn a_version_2_store_gains_pull_requests_and_timeouts_and_keeps_its_jobs() {
    let d = tempfile::tempdir().expect("tempdir");
    let dir = d.path().join("data");
    std::fs::create_dir_all(dir.join(LOGS_DIR)).expect("mkdir");
    {
        let conn = Connection::open(dir.join(DB_FILE)).expect("open");
        conn.execute_batch(&format!(
            "BEGIN; {}; {}; PRAGMA user_version = 2; COMMIT;",
            MIGRATIONS[0], MIGRATIONS[1]
        ))
        .expect("v2 schema");
        conn.execute_batch(
            "INSERT INTO projects(id, uuid, slug, clone_url) VALUES (1, 'u', 'acme/widget', 'git@x:acme/widget.git');
             INSERT INTO jobs(id, project_id, commit_sha, git_ref, branch, job_name, pipeline_number, status, max_attempts, created)
               VALUES (4, 1, 'main', 'main', 'main', 'build', 1, 'queued', 3, 0);
             INSERT INTO meta(key, value) VALUES ('registration_token', 'bosun-reg-old');",
        )
        .expect("v2 rows");
    }
    let s = Store::open(&dir).expect("migrate");
    let v: i64 = s
        .conn()
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .expect("pragma");
    assert_eq!(v, MIGRATIONS.len() as i64);
    // The plaintext registration token of version 3 and before is now a digest.
    assert!(s.registration_token_valid("bosun-reg-old").expect("valid"));
    let plain: i64 = s
        .conn()
        .query_row(
            "SELECT count(*) FROM meta WHERE key = 'registration_token'",
            [],
            |r| r.get(0),
        )
        .expect("query");
    assert_eq!(plain, 0);
    // The job queued before the upgrade: no pull request, the default limit.
    let old = claim_next(&s);
    assert_eq!(old.id, "4");
    assert_eq!(old.pull_request, None);
    assert_eq!(old.timeouts, WireTimeouts::default());
    // A new one carries both.
    let id = s
        .enqueue(&NewJob {
            pr_number: Some(5),
            timeout_secs: Some(600),
            ..new_job()
        })
        .expect("enqueue");
    let new = claim_next(&s);
    assert_eq!(new.id, id.to_string());
    assert_eq!(new.pull_request.map(|p| p.number), Some(5));
    assert_eq!(new.timeouts.job_secs, 600);
}

#[test]
fn schema_version_is_recorded_and_reopen_keeps_data() {
    let (d, s) = store();
    let id = job(&s);
    drop(s);
    let s = Store::open(&d.path().join("data")).expect("reopen");
    assert_eq!(
        s.job(id).expect("job").expect("exists").status,
        JobState::Queued
    );
    let v: i64 = s
        .conn()
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .expect("pragma");
    assert_eq!(v as usize, MIGRATIONS.len());
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(s.path())
        .expect("meta")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[test]
fn a_loose_data_directory_is_tightened() {
    use std::os::unix::fs::PermissionsExt;
    let d = tempfile::tempdir().expect("tempdir");
    let data = d.path().join("data");
    std::fs::create_dir_all(data.join(LOGS_DIR)).expect("mkdir");
    for p in [&data, &data.join(LOGS_DIR)] {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    drop(Store::open(&data).expect("open"));
    for p in [&data, &data.join(LOGS_DIR)] {
        let mode = std::fs::metadata(p).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o700, "{}", p.display());
    }
}

/// Every byte of the database and its WAL, to look for plaintext in.
fn db_bytes(d: &tempfile::TempDir) -> Vec<u8> {
    let mut all = Vec::new();
    for f in [DB_FILE, "coordinator.db-wal"] {
        all.extend(std::fs::read(d.path().join("data").join(f)).unwrap_or_default());
    }
    all
}

fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

#[test]
fn plaintext_secrets_of_an_older_store_are_sealed_when_it_opens() {
    let (d, s) = store();
    let id = job(&s);
    // As a store written before secrets were sealed holds them.
    s.conn()
        .execute_batch(
            "UPDATE projects SET user_key = 'PLAIN-PRIVATE-KEY'; \
             INSERT INTO project_env(project_id, name, value, secret) \
                 SELECT id, 'TOKEN', 'hunter22-plain', 1 FROM projects; \
             INSERT INTO project_env(project_id, name, value, secret) \
                 SELECT id, 'PUBLIC', 'visible-value', 0 FROM projects; \
             DELETE FROM meta WHERE key = 'secrets_key'; \
             PRAGMA wal_checkpoint(TRUNCATE);",
        )
        .expect("downgrade");
    drop(s);
    assert!(contains(&db_bytes(&d), "PLAIN-PRIVATE-KEY"));
    let s = Store::open(&d.path().join("data")).expect("reopen");
    let bytes = db_bytes(&d);
    assert!(!contains(&bytes, "PLAIN-PRIVATE-KEY"));
    assert!(!contains(&bytes, "hunter22-plain"));
    assert!(contains(&bytes, "visible-value"), "plain env stays plain");
    let w = claim_next(&s);
    assert_eq!(w.id, id.to_string());
    assert_eq!(w.keys[0].private_key, "PLAIN-PRIVATE-KEY");
    let env: Vec<(&str, &str)> = w
        .env
        .iter()
        .map(|e| (e.name.as_str(), e.value.as_str()))
        .collect();
    assert_eq!(
        env,
        [("PUBLIC", "visible-value"), ("TOKEN", "hunter22-plain")]
    );
}

#[test]
fn a_store_does_not_open_with_another_or_a_missing_key_file() {
    let (d, s) = store();
    drop(s);
    let key = secrets::default_key_path(&d.path().join("data"));
    assert!(key.exists() && !key.starts_with(d.path().join("data")));
    let other = d.path().join("other.key");
    SecretsKey::load_or_create(&other, true).expect("other key");
    let Err(e) = Store::open_with_key(&d.path().join("data"), Some(&other)) else {
        panic!("opened with another key");
    };
    assert!(e.to_string().contains("sealed with another key"), "{e}");
    std::fs::remove_file(&key).expect("rm");
    let Err(e) = Store::open(&d.path().join("data")) else {
        panic!("opened without its key file");
    };
    assert!(e.to_string().contains("is missing"), "{e}");
}

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

mod areas {
    //! The stores main gained after the PostgreSQL store began — schedules, API v2, follow,
    //! badges — through their traits, on both stores.

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
        let token = s
            .create_project_token("acme/widget", "ci-reader")
            .expect("token");
        assert!(token.starts_with("bosun-prj-"));
        assert_eq!(
            s.project_token(&token).expect("lookup").as_deref(),
            Some("acme/widget")
        );
        assert_eq!(s.project_token("bosun-prj-nope").expect("lookup"), None);
        assert!(s.create_project_token("acme/nope", "x").is_err());
        assert_eq!(s.revoke_project_tokens("ci-reader").expect("revoke"), 1);
        assert_eq!(s.project_token(&token).expect("lookup"), None);
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
}

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

mod notify_and_people {
    //! The notification outbox written by a pipeline's run, and people, on both stores.

    use super::*;
    use crate::model::notify::TargetKind;
    use crate::model::people::Role;
    use crate::model::JobKind;
    use crate::store::pipelines::{
        NewPipeline, NewWorkflow, NewWorkflowJob, StatusBody, StatusChange, Statuses,
    };
    use bosun_protocol::WorkflowJobStatus;

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
        assert_eq!(s.refresh_token(bob.id).expect("token"), None);
        s.set_refresh_token(bob.id, Some("rt-secret"))
            .expect("token");
        assert_eq!(
            s.refresh_token(bob.id)
                .expect("token")
                .as_deref()
                .map(String::as_str),
            Some("rt-secret")
        );
        s.set_refresh_token(bob.id, None).expect("forget");
        assert_eq!(s.refresh_token(bob.id).expect("token"), None);

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
}

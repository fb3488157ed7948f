//! Opening a store: older schema versions migrated with their data, the version recorded,
//! a loose data directory tightened, secrets of an older store sealed, the key file checked.

use super::*;

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

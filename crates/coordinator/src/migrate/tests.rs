//! The migration against a real PostgreSQL (the store suite's throwaway server): what it
//! refuses, and what it keeps that the integration test (`tests/it/migrate.rs`) does not
//! reach.

use super::*;
use crate::store::pg::testing;
use crate::store::{NewJob, NewProject, ProjectStore, QueueStore};

fn args(data: &Path, url: &str) -> MigrateArgs {
    MigrateArgs {
        from: format!("sqlite:{}", data.display()),
        to: url.parse().expect("url"),
        secrets_key: None,
        replace: false,
        blobs_to: None,
        s3_endpoint: None,
        s3_region: None,
        s3_credentials_file: None,
    }
}

fn source(data: &Path) -> Store {
    let s = Store::open(data).expect("store");
    s.add_project(&NewProject {
        slug: "acme/widget".into(),
        uuid: None,
        clone_url: "git@bitbucket.org:acme/widget.git".into(),
        user_key: Some("-----BEGIN OPENSSH PRIVATE KEY-----\nK\n".into()),
        deploy_key: None,
        known_hosts: String::new(),
        env: vec![],
    })
    .expect("project");
    s
}

fn job() -> NewJob {
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

fn rows(url: &str, table: &str) -> i64 {
    let mut c = connect(url).expect("connect");
    c.query_one(format!("SELECT COUNT(*) FROM {table}").as_str(), &[])
        .expect("count")
        .get(0)
}

#[test]
fn a_value_postgres_would_read_otherwise_stops_the_copy_and_nothing_is_committed() {
    let Some(server) = testing::server() else {
        eprintln!("{}", testing::SKIPPED);
        return;
    };
    let url = server.new_database().expect("database");
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let s = source(&data);
    s.enqueue(&job()).expect("enqueue");
    drop(s);
    // SQLite keeps text in an INTEGER column when it does not read as a number.
    rusqlite::Connection::open(data.join(DB_FILE))
        .expect("open")
        .execute_batch("UPDATE jobs SET attempts = 'two'")
        .expect("update");
    let e = migrate(&args(&data, &url)).expect_err("refused");
    assert!(
        e.to_string()
            .contains("jobs.attempts of row 1: text of 3 bytes where an integer belongs"),
        "{e}"
    );
    // Everything or nothing: the projects copied before it are not there either.
    assert_eq!(rows(&url, "projects"), 0);
}

#[test]
fn ids_of_deleted_rows_are_not_handed_out_again() {
    let Some(server) = testing::server() else {
        eprintln!("{}", testing::SKIPPED);
        return;
    };
    let url = server.new_database().expect("database");
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let s = source(&data);
    for _ in 0..3 {
        s.enqueue(&job()).expect("enqueue");
    }
    drop(s);
    rusqlite::Connection::open(data.join(DB_FILE))
        .expect("open")
        .execute_batch("DELETE FROM jobs WHERE id = 3")
        .expect("delete");
    let report = migrate(&args(&data, &url)).expect("migrate");
    assert!(report.tables.contains(&("jobs".into(), 2, 2)), "{report:?}");
    let pg = PgStore::open(&url, &data, None).expect("open");
    // SQLite handed out 3 (sqlite_sequence): PostgreSQL goes on from there.
    assert_eq!(pg.enqueue(&job()).expect("enqueue"), 4);
}

#[test]
fn a_target_sealed_with_another_key_is_refused() {
    let Some(server) = testing::server() else {
        eprintln!("{}", testing::SKIPPED);
        return;
    };
    let url = server.new_database().expect("database");
    let dir = tempfile::tempdir().expect("tempdir");
    // A coordinator on the target already, with a key of its own.
    drop(PgStore::open(&url, &dir.path().join("other"), None).expect("other"));
    let data = dir.path().join("data");
    drop(source(&data));
    let e = migrate(&args(&data, &url)).expect_err("refused");
    assert!(e.to_string().contains("another key"), "{e}");
    assert_eq!(rows(&url, "projects"), 0);
}

#[test]
fn the_source_is_a_data_directory_with_a_store() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    drop(Store::open(&data).expect("store"));
    let d = data.display();
    assert_eq!(source_dir(&format!("sqlite:{d}")).expect("dir"), data);
    assert_eq!(
        source_dir(&format!("sqlite:{d}/coordinator.db")).expect("file"),
        data
    );
    for bad in [
        format!("{d}"),
        "sqlite:".to_string(),
        format!("sqlite:{}", dir.path().join("nothing").display()),
        format!("postgres:{d}"),
    ] {
        let e = source_dir(&bad).expect_err(&bad);
        assert!(e.to_string().contains("expected sqlite:DIR"), "{e}");
    }
}

//! The seam's contract, against the data directory and against a real S3 server (s3s-fs,
//! installed by `scripts/test.sh --setup`, started here on loopback with its own directory
//! and credentials).

use super::local::LocalObjects;
use super::s3::PART;
use super::*;
use futures_util::TryStreamExt;
use std::process::{Child, Command, Stdio};

const KEY_ID: &str = "bosun-test-key";
const SECRET: &str = "bosun-test-secret-0123456789";
const BUCKET: &str = "bosun-blobs";

/// The s3s-fs binary: `BOSUN_S3S_FS`, `s3s-fs` on PATH, or where test.sh installs it.
fn s3s_fs() -> PathBuf {
    if let Some(p) = std::env::var_os("BOSUN_S3S_FS") {
        return PathBuf::from(p);
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let p = dir.join("s3s-fs");
            if p.is_file() {
                return p;
            }
        }
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_default();
    let p = home.join(".cache/bosun/s3s-fs/bin/s3s-fs");
    assert!(
        p.is_file(),
        "s3s-fs is not installed: run scripts/test.sh --setup (or set BOSUN_S3S_FS)"
    );
    p
}

/// A real S3 server on loopback over a temporary directory; killed on drop.
struct S3Server {
    child: Child,
    dir: tempfile::TempDir,
    endpoint: String,
}

impl S3Server {
    fn start() -> S3Server {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join(BUCKET)).expect("bucket dir");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let child = Command::new(s3s_fs())
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--access-key", KEY_ID, "--secret-key", SECRET])
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start s3s-fs");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "s3s-fs did not listen"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        S3Server {
            child,
            dir,
            endpoint: format!("http://127.0.0.1:{port}"),
        }
    }

    fn settings(&self, secret: &str) -> (StoreSettings, tempfile::TempDir) {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().expect("tempdir");
        let f = d.path().join("s3.credentials");
        std::fs::write(
            &f,
            format!("[default]\naws_access_key_id = {KEY_ID}\naws_secret_access_key = {secret}\n"),
        )
        .expect("write credentials");
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        (
            StoreSettings {
                location: Some(format!("s3://{BUCKET}/ci")),
                endpoint: Some(self.endpoint.clone()),
                region: Some("us-east-1".into()),
                credentials_file: Some(f),
            },
            d,
        )
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn read_all(o: &dyn Objects, key: &str, start: u64, end: u64) -> Vec<u8> {
    let s = o.read(key, start, end).await.expect("read");
    let pieces: Vec<bytes::Bytes> = s.try_collect().await.expect("stream");
    pieces.concat()
}

fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 7 % 251) as u8).collect()
}

/// The contract every implementation keeps.
async fn contract(o: &dyn Objects, scratch: &Path) {
    let key = blob_key(&"ab".repeat(32));
    assert_eq!(o.size(&key).await.expect("size"), None);

    // Small: whole, then ranges; the source file is gone once put.
    let small = pattern(1000);
    let f = scratch.join("small");
    std::fs::write(&f, &small).expect("write");
    o.put_file(&key, &f).await.expect("put small");
    assert!(!f.exists(), "the file moved in");
    assert_eq!(o.size(&key).await.expect("size"), Some(1000));
    assert_eq!(read_all(o, &key, 0, 1000).await, small);
    assert_eq!(read_all(o, &key, 10, 20).await, &small[10..20]);
    assert_eq!(read_all(o, &key, 999, 1000).await, &small[999..]);

    // Bigger than a part: the S3 store uploads it in parts, and reads come back exact.
    let n = PART * 2 + 12345;
    let big = pattern(n);
    let f = scratch.join("big");
    std::fs::write(&f, &big).expect("write");
    let bkey = log_key(42);
    o.put_file(&bkey, &f).await.expect("put big");
    assert_eq!(o.size(&bkey).await.expect("size"), Some(n as u64));
    let got = read_all(o, &bkey, 0, n as u64).await;
    assert!(got == big, "the big object reads back byte for byte");
    let (a, b) = (PART as u64 - 3, PART as u64 + 5);
    assert_eq!(read_all(o, &bkey, a, b).await, &big[a as usize..b as usize]);

    // A file that is not there: an error naming it, and nothing stored.
    let missing = scratch.join("missing");
    let e = o
        .put_file("logs/7.log", &missing)
        .await
        .expect_err("no file");
    assert!(e.to_string().contains("missing"), "{e}");
    assert_eq!(o.size("logs/7.log").await.expect("size"), None);

    o.delete(&key).await.expect("delete");
    o.delete(&key).await.expect("delete twice");
    assert_eq!(o.size(&key).await.expect("size"), None);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_data_directory_keeps_the_contract() {
    let d = tempfile::tempdir().expect("tempdir");
    let scratch = tempfile::tempdir().expect("tempdir");
    let o = LocalObjects::open(d.path()).expect("open");
    contract(&o, scratch.path()).await;
    // Keys are where the files always lay.
    assert!(d.path().join("logs/42.log").is_file());
    assert!(o.put_file("../x", &scratch.path().join("y")).await.is_err());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_real_s3_server_keeps_the_contract() {
    let server = S3Server::start();
    let scratch = tempfile::tempdir().expect("tempdir");
    let (settings, _creds) = server.settings(SECRET);
    let o = open(&settings, scratch.path()).await.expect("open s3");
    assert_eq!(
        o.describe(),
        format!("s3://{BUCKET}/ci at {}", server.endpoint)
    );
    contract(&*o, scratch.path()).await;
    // The objects are files in the server's directory, under the prefix.
    let on_disk = server.dir.path().join(BUCKET).join("ci/logs/42.log");
    assert_eq!(
        std::fs::metadata(&on_disk).expect("object file").len(),
        (PART * 2 + 12345) as u64
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_settings_say_which_bucket_and_never_the_secret() {
    let server = S3Server::start();
    let scratch = tempfile::tempdir().expect("tempdir");

    // A wrong secret: refused at start-up, naming bucket and endpoint, not the secret.
    let wrong = "not-the-secret-value-42";
    let (settings, _creds) = server.settings(wrong);
    let e = open(&settings, scratch.path())
        .await
        .err()
        .expect("a wrong secret is refused")
        .to_string();
    assert!(e.contains(BUCKET) && e.contains(&server.endpoint), "{e}");
    assert!(e.contains("credentials were refused"), "{e}");
    assert!(!e.contains(wrong) && !e.contains(SECRET), "{e}");

    // A bucket that does not exist.
    let (mut settings, _creds) = server.settings(SECRET);
    settings.location = Some("s3://no-such-bucket/x".into());
    let e = open(&settings, scratch.path())
        .await
        .err()
        .expect("a missing bucket is refused")
        .to_string();
    assert!(e.contains("no-such-bucket"), "{e}");
    assert!(e.contains("does not exist"), "{e}");

    // Nobody listening.
    let (mut settings, _creds) = server.settings(SECRET);
    settings.endpoint = Some("http://127.0.0.1:9".into());
    let e = open(&settings, scratch.path())
        .await
        .err()
        .expect("an unreachable endpoint is refused")
        .to_string();
    assert!(e.contains("127.0.0.1:9"), "{e}");

    // A credentials file others can read is refused before any request.
    let (settings, _creds) = server.settings(SECRET);
    let f = settings.credentials_file.clone().expect("file");
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    }
    let e = open(&settings, scratch.path())
        .await
        .err()
        .expect("a loose credentials file is refused")
        .to_string();
    assert!(e.contains("chmod 600"), "{e}");
}

/// PostgreSQL without a bucket starts only when the operator says the data directory is
/// shared; SQLite always; a bucket always.
#[test]
fn blobs_with_postgresql_must_be_where_every_replica_sees_them() {
    let err = check_placement(true, None, false).expect_err("refused");
    let msg = err.to_string();
    assert!(
        msg.contains("--blob-store s3://") && msg.contains("--shared-data"),
        "{msg}"
    );
    assert!(check_placement(true, Some(""), false).is_err());
    assert!(check_placement(true, None, true).is_ok());
    assert!(check_placement(true, Some("s3://ci-blobs/x"), false).is_ok());
    assert!(check_placement(false, None, false).is_ok());
}

#[test]
fn s3_urls() {
    assert_eq!(
        parse_s3_url("s3://bucket/a/b/").expect("url"),
        ("bucket".into(), "a/b".into())
    );
    assert_eq!(
        parse_s3_url("s3://my.bucket").expect("url"),
        ("my.bucket".into(), String::new())
    );
    for bad in [
        "http://x/y",
        "s3://B/x",
        "s3://ab",
        "s3://bucket/../x",
        "/tmp/x",
    ] {
        assert!(parse_s3_url(bad).is_err(), "{bad}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_multipart_upload_is_invisible_until_whole() {
    let server = S3Server::start();
    let scratch = tempfile::tempdir().expect("tempdir");
    let (settings, _creds) = server.settings(SECRET);
    let o = open(&settings, scratch.path()).await.expect("open s3");
    let n = PART * 3 + 1;
    let f = scratch.path().join("layer");
    std::fs::write(&f, pattern(n)).expect("write");
    let key = blob_key(&"cd".repeat(32));
    let put = {
        let (o, key, f) = (Arc::clone(&o), key.clone(), f.clone());
        tokio::spawn(async move { o.put_file(&key, &f).await })
    };
    // Every look while the parts go up sees no object, or the whole one.
    let mut looks = 0;
    while !put.is_finished() {
        let seen = o.size(&key).await.expect("size");
        assert!(seen.is_none() || seen == Some(n as u64), "{seen:?}");
        looks += 1;
    }
    put.await.expect("join").expect("put");
    assert!(looks > 0);
    assert_eq!(o.size(&key).await.expect("size"), Some(n as u64));
    // No half file in the server's directory either.
    let objects = server.dir.path().join(BUCKET).join("ci/blobs/sha256");
    let names: Vec<_> = std::fs::read_dir(&objects)
        .expect("objects")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name())
        .collect();
    assert_eq!(names.len(), 1, "{names:?}");
}

/// The real store, with every read's key and length recorded.
struct Recording {
    inner: Arc<dyn Objects>,
    reads: std::sync::Mutex<Vec<(String, u64)>>,
}

impl Objects for Recording {
    fn describe(&self) -> String {
        self.inner.describe()
    }
    fn is_local(&self) -> bool {
        self.inner.is_local()
    }
    fn put_file<'a>(
        &'a self,
        key: &'a str,
        file: &'a Path,
    ) -> BoxFuture<'a, Result<(), ObjectError>> {
        self.inner.put_file(key, file)
    }
    fn size<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<u64>, ObjectError>> {
        self.inner.size(key)
    }
    fn read<'a>(
        &'a self,
        key: &'a str,
        start: u64,
        end: u64,
    ) -> BoxFuture<'a, Result<ByteStream, ObjectError>> {
        self.reads
            .lock()
            .expect("reads")
            .push((key.to_owned(), end - start));
        self.inner.read(key, start, end)
    }
    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), ObjectError>> {
        self.inner.delete(key)
    }
    fn check(&self) -> BoxFuture<'_, Result<(), ObjectError>> {
        self.inner.check()
    }
}

/// A finished log moves with its line index, and a page's line numbers then read at most
/// one block of the log per point instead of the whole log; the counts equal a scan's, and
/// an index that is not one of ours falls back to the scan.
#[tokio::test(flavor = "multi_thread")]
async fn a_finished_logs_line_numbers_read_one_block_per_point_through_its_index() {
    use super::logs::{line_index, LogArchive, LINE_BLOCK};
    let server = S3Server::start();
    let data = tempfile::tempdir().expect("tempdir");
    let (settings, _creds) = server.settings(SECRET);
    let o = Arc::new(Recording {
        inner: open(&settings, data.path()).await.expect("open s3"),
        reads: std::sync::Mutex::new(Vec::new()),
    });
    let sqlite = Arc::new(crate::store::Store::open(data.path()).expect("store"));
    let store: Arc<dyn crate::store::Backend> = sqlite.clone();
    let served: Arc<dyn crate::store::ServedStore> = sqlite;
    // Lines of every length up to 300 bytes, over five and a half blocks.
    let mut log = Vec::new();
    let mut i = 0usize;
    while log.len() < (5 * LINE_BLOCK + LINE_BLOCK / 2) as usize {
        log.extend(std::iter::repeat_n(b'x', i % 300));
        log.push(b'\n');
        i += 1;
    }
    let len = log.len() as u64;
    assert_eq!(
        line_index(&log[..]).expect("index"),
        (0..=5)
            .map(|k| memchr::memchr_iter(b'\n', &log[..(k * LINE_BLOCK) as usize]).count() as u64)
            .collect::<Vec<_>>()
    );
    let logs = data.path().join(crate::store::LOGS_DIR);
    std::fs::create_dir_all(&logs).expect("logs dir");
    std::fs::write(logs.join("7.log"), &log).expect("log");
    let archive = Arc::new(LogArchive::new(o.clone() as Arc<dyn Objects>, data.path()));
    assert!(archive.archive(&served, 7).await.expect("archive"));
    assert!(!logs.join("7.log").exists());
    assert!(o.size(&log_lines_key(7)).await.expect("size").is_some());

    let points = vec![
        0,
        1,
        LINE_BLOCK - 1,
        LINE_BLOCK,
        3 * LINE_BLOCK + 77,
        len - 1,
        len,
        len + 100,
    ];
    let want: Vec<u64> = points
        .iter()
        .map(|&p| memchr::memchr_iter(b'\n', &log[..p.min(len) as usize]).count() as u64)
        .collect();
    let count =
        |archive: Arc<LogArchive>, store: Arc<dyn crate::store::Backend>, points: Vec<u64>| {
            tokio::task::spawn_blocking(move || archive.newlines_before(&*store, 7, &points))
        };
    o.reads.lock().expect("reads").clear();
    let got = count(archive.clone(), store.clone(), points.clone())
        .await
        .expect("join")
        .expect("count");
    assert_eq!(got, want);
    let reads = o.reads.lock().expect("reads").clone();
    assert!(
        reads
            .iter()
            .all(|(k, n)| k != &log_key(7) || *n < LINE_BLOCK),
        "{reads:?}"
    );

    // Not an index of ours: counted by the scan, and still right.
    let junk = data.path().join("junk");
    std::fs::write(&junk, "12\nnot a number\n").expect("junk");
    o.put_file(&log_lines_key(7), &junk).await.expect("put");
    let got = count(archive, store, points)
        .await
        .expect("join")
        .expect("count");
    assert_eq!(got, want);
}

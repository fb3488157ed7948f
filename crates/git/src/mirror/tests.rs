//! The mirror's own rules, with real git and real files (no network: the fetches here are
//! local; the SSH path is tested end to end in tests/it/mirror.rs).

use super::*;
use std::process::Command;
use std::sync::mpsc;
use std::time::Duration;

fn git(dir: &Path, args: &[&str]) -> String {
    let _spawning = crate::spawning();
    let out = Command::new("git")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .args(["-c", "user.name=t", "-c", "user.email=t@e"])
        .args(["-c", "init.defaultBranch=main"])
        .args(args)
        .current_dir(dir)
        .output()
        .expect("git runs");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A work repository with `n` commits and an annotated tag on the first.
fn upstream(root: &Path, n: usize) -> PathBuf {
    let work = root.join("up");
    std::fs::create_dir_all(&work).unwrap();
    git(&work, &["init", "-q"]);
    for i in 0..n {
        std::fs::write(work.join(format!("f{i}.txt")), format!("{i}\n")).unwrap();
        git(&work, &["add", "-A"]);
        git(&work, &["commit", "-q", "-m", &format!("c{i}")]);
        if i == 0 {
            git(&work, &["tag", "-a", "-m", "first", "v0"]);
        }
    }
    work
}

/// Fetch `from` into the mirror as the checkout does (mirror refspecs, local transport).
fn fetch(m: &Mirror, from: &Path) {
    let mut remote = m
        .repo()
        .remote_anonymous(from.to_str().unwrap())
        .expect("remote");
    remote
        .fetch(
            &["+refs/heads/*:refs/heads/*", "+refs/tags/*:refs/tags/*"],
            None,
            None,
        )
        .expect("fetch");
}

fn silent() -> impl FnMut(&str) {
    |_: &str| {}
}

fn only_pack(dir: &Path) -> PathBuf {
    let packs: Vec<PathBuf> = std::fs::read_dir(dir.join("objects/pack"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "pack"))
        .collect();
    assert_eq!(packs.len(), 1, "{packs:?}");
    packs[0].clone()
}

#[test]
fn materialized_repository_stands_on_its_own() {
    let tmp = tempfile::tempdir().unwrap();
    let up = upstream(tmp.path(), 3);
    let mirrors = Mirrors::new(&tmp.path().join("cache"), DEFAULT_BUDGET_BYTES);
    let m = mirrors.open("addr", "label", &mut silent()).unwrap();
    fetch(&m, &up);
    let dest_dir = tmp.path().join("dest");
    let dest = git2::Repository::init(&dest_dir).unwrap();
    m.materialize(&dest).unwrap();
    drop(m);
    // The mirror goes; the job's repository does not notice.
    let removed = {
        let _quiet = crate::no_spawning();
        mirrors.shrink_to(0).unwrap().len()
    };
    assert_eq!(removed, 1);
    assert!(!dest_dir.join(".git/objects/info/alternates").exists());
    let head = git(&up, &["rev-parse", "HEAD"]);
    assert_eq!(git(&dest_dir, &["rev-parse", "origin/main"]), head);
    assert_eq!(
        git(&dest_dir, &["describe", "--tags", "origin/main"])
            .split('-')
            .next(),
        Some("v0")
    );
    assert_eq!(git(&dest_dir, &["rev-list", "--count", "origin/main"]), "3");
    git(&dest_dir, &["fsck", "--strict", "--no-dangling"]);
    let cache = tmp.path().join("cache").display().to_string();
    let _spawning = crate::spawning();
    let grep = Command::new("grep")
        .args(["-r", "-l", "-F", &cache])
        .arg(dest_dir.join(".git"))
        .output()
        .unwrap();
    assert!(
        grep.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&grep.stdout)
    );
}

#[test]
fn truncated_pack_is_found_removed_and_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let up = upstream(tmp.path(), 2);
    let mirrors = Mirrors::new(&tmp.path().join("cache"), DEFAULT_BUDGET_BYTES);
    let m = mirrors
        .open("addr", "git@x:a/b.git", &mut silent())
        .unwrap();
    fetch(&m, &up);
    let dir = m.dir.clone();
    drop(m);
    let pack = only_pack(&dir);
    let len = std::fs::metadata(&pack).unwrap().len();
    let mut perms = std::fs::metadata(&pack).unwrap().permissions();
    #[allow(clippy::permissions_set_readonly_false)]
    perms.set_readonly(false);
    std::fs::set_permissions(&pack, perms).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&pack)
        .unwrap()
        .set_len(len - 7)
        .unwrap();

    let mut lines = Vec::new();
    let m = mirrors
        .open("addr", "git@x:a/b.git", &mut |l: &str| {
            lines.push(l.to_string())
        })
        .unwrap();
    assert!(m.is_empty(), "a damaged mirror starts afresh");
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0].contains("git@x:a/b.git is damaged") && lines[0].contains("checksum"),
        "{lines:?}"
    );
    fetch(&m, &up);
    assert!(!m.is_empty());
}

#[test]
fn ref_to_a_missing_object_is_damage() {
    let tmp = tempfile::tempdir().unwrap();
    let up = upstream(tmp.path(), 1);
    let mirrors = Mirrors::new(&tmp.path().join("cache"), DEFAULT_BUDGET_BYTES);
    let m = mirrors.open("addr", "l", &mut silent()).unwrap();
    fetch(&m, &up);
    let dir = m.dir.clone();
    drop(m);
    std::fs::write(
        dir.join("refs/heads/ghost"),
        "0123456789012345678901234567890123456789\n",
    )
    .unwrap();
    let mut lines = Vec::new();
    let m = mirrors
        .open("addr", "l", &mut |l: &str| lines.push(l.to_string()))
        .unwrap();
    assert!(m.is_empty());
    assert!(lines[0].contains("refs/heads/ghost"), "{lines:?}");
}

#[test]
fn leftovers_of_a_killed_fetch_are_cleaned_without_losing_the_mirror() {
    let tmp = tempfile::tempdir().unwrap();
    let up = upstream(tmp.path(), 2);
    let mirrors = Mirrors::new(&tmp.path().join("cache"), DEFAULT_BUDGET_BYTES);
    let m = mirrors.open("addr", "l", &mut silent()).unwrap();
    fetch(&m, &up);
    let dir = m.dir.clone();
    drop(m);
    let pack_dir = dir.join("objects/pack");
    std::fs::write(pack_dir.join("pack_git2_a1b2c3"), b"half a pack").unwrap();
    let orphan = format!("pack-{}.idx", "ab".repeat(20));
    std::fs::write(pack_dir.join(&orphan), b"idx without pack").unwrap();
    std::fs::write(dir.join("refs/heads/main.lock"), b"").unwrap();
    std::fs::write(dir.join("packed-refs.lock"), b"").unwrap();

    let mut lines = Vec::new();
    let m = mirrors
        .open("addr", "l", &mut |l: &str| lines.push(l.to_string()))
        .unwrap();
    assert!(lines.is_empty(), "leftovers are not damage: {lines:?}");
    assert!(!m.is_empty(), "the mirror is kept");
    assert!(!pack_dir.join("pack_git2_a1b2c3").exists());
    assert!(!pack_dir.join(&orphan).exists());
    assert!(!dir.join("refs/heads/main.lock").exists());
    assert!(!dir.join("packed-refs.lock").exists());
    // And a fetch works again (the ref lock would have failed it).
    std::fs::write(up.join("more.txt"), "more\n").unwrap();
    git(&up, &["add", "-A"]);
    git(&up, &["commit", "-q", "-m", "more"]);
    fetch(&m, &up);
}

#[test]
fn one_fetch_at_a_time_per_mirror() {
    let tmp = tempfile::tempdir().unwrap();
    let mirrors = Mirrors::new(&tmp.path().join("cache"), DEFAULT_BUDGET_BYTES);
    let first = mirrors.open("addr", "l", &mut silent()).unwrap();
    let (tx, rx) = mpsc::channel();
    let m2 = mirrors.clone();
    let waiter = std::thread::spawn(move || {
        let m = m2.open("addr", "l", &mut silent()).unwrap();
        tx.send(()).unwrap();
        drop(m);
    });
    // Another address is not held up.
    drop(mirrors.open("other", "l", &mut silent()).unwrap());
    assert!(
        rx.recv_timeout(Duration::from_millis(300)).is_err(),
        "the second job waited for the first"
    );
    drop(first);
    rx.recv_timeout(Duration::from_secs(10))
        .expect("the second job goes on once the first is done");
    waiter.join().unwrap();
}

#[test]
fn eviction_removes_least_recently_used_and_skips_mirrors_in_use() {
    let tmp = tempfile::tempdir().unwrap();
    let up = upstream(tmp.path(), 2);
    let cache = tmp.path().join("cache");
    let all = Mirrors::new(&cache, DEFAULT_BUDGET_BYTES);
    for addr in ["a", "b", "c"] {
        let m = all
            .open(addr, &format!("repo-{addr}"), &mut silent())
            .unwrap();
        fetch(&m, &up);
        drop(m);
        // mtimes of one second apart order the uses even on coarse file systems.
        let t = SystemTime::now()
            - Duration::from_secs(match addr {
                "a" => 30,
                "b" => 10,
                _ => 20,
            });
        File::options()
            .write(true)
            .open(cache.join("mirrors").join(mirror_id(addr)).join(URL_FILE))
            .unwrap()
            .set_modified(t)
            .unwrap();
    }
    let listed: Vec<String> = all.list().unwrap().into_iter().map(|m| m.url).collect();
    assert_eq!(
        listed,
        ["repo-a", "repo-c", "repo-b"],
        "least recently used first"
    );
    let one = all.list().unwrap()[0].bytes;
    assert!(one > 0);

    // Room for two: the oldest (a) goes.
    let two = Mirrors::new(&cache, one * 2 + one / 2);
    let removed: Vec<String> = {
        let _quiet = crate::no_spawning();
        two.evict().unwrap().into_iter().map(|m| m.url).collect()
    };
    assert_eq!(removed, ["repo-a"]);

    // c is in use: prune --all takes b only.
    let held = all.open("c", "repo-c", &mut silent()).unwrap();
    let removed: Vec<String> = {
        let _quiet = crate::no_spawning();
        all.shrink_to(0)
            .unwrap()
            .into_iter()
            .map(|m| m.url)
            .collect()
    };
    assert_eq!(removed, ["repo-b"]);
    assert!(!held.is_empty(), "the mirror in use is whole");
    drop(held);
    let removed = {
        let _quiet = crate::no_spawning();
        all.shrink_to(0).unwrap().len()
    };
    assert_eq!(removed, 1);
    assert!(all.list().unwrap().is_empty());
}

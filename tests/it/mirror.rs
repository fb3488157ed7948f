//! The mirror cache end to end: real git, the real `bosun` binary and the Bitbucket
//! stand-in (a real sshd with per-key access). Warm checkouts are self-contained in the
//! container, a key never reads through the mirror what it could not fetch, and two jobs
//! at once, a fetch killed midway and a damaged mirror all end in a good checkout.

use crate::harness;

use crate::harness::{image, Key, Project, Rig};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// `bosun checkout URL DEST` with `keys`, the rig's host keys and addresses, and `cache`.
fn checkout_cmd(rig: &Rig, url: &str, dest: &Path, keys: &[(&str, &Key)], cache: &Path) -> Command {
    let mut c = Command::new(harness::bosun_bin());
    c.args(["checkout", url])
        .arg(dest)
        .arg("--known-hosts")
        .arg(rig.known_hosts_file())
        .arg("--cache-dir")
        .arg(cache)
        .stdin(Stdio::null());
    for (flag, key) in keys {
        c.arg(flag).arg(&key.private_path);
    }
    for m in rig.vcs_host_mapping() {
        c.args(["--vcs-host", &m]);
    }
    c
}

fn checkout(rig: &Rig, url: &str, dest: &Path, keys: &[(&str, &Key)], cache: &Path) -> Output {
    harness::output(&mut checkout_cmd(rig, url, dest, keys, cache))
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn ok(out: Output) -> String {
    assert!(out.status.success(), "{}", text(&out));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The one mirror under `cache` (its directory).
fn mirror_dirs(cache: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(cache.join("mirrors"))
        .map(|d| {
            d.flatten()
                .map(|e| e.path())
                .filter(|p| {
                    p.is_dir() && !p.file_name().unwrap().to_string_lossy().starts_with('.')
                })
                .collect()
        })
        .unwrap_or_default()
}

fn packs(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir.join("objects/pack"))
        .map(|d| {
            d.flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "pack"))
                .collect()
        })
        .unwrap_or_default()
}

/// A generated repository (benches/gen-repo.sh) served as `acme/big`: large enough that a
/// cold fetch takes a while.
fn serve_big_repo(rig: &Rig, files: u32, commits: u32) -> tempfile::TempDir {
    let data = tempfile::tempdir().expect("tempdir");
    harness::run(
        Command::new("bash")
            .arg(harness::repo_root().join("benches/gen-repo.sh"))
            .arg(data.path())
            .arg(files.to_string())
            .arg(commits.to_string()),
    );
    let ws = rig.srv_dir().join("repos/acme");
    std::fs::create_dir_all(&ws).expect("mkdir");
    harness::run(
        Command::new("cp")
            .arg("-a")
            .arg(data.path().join("bench.git"))
            .arg(ws.join("big.git")),
    );
    harness::run(
        Command::new("cp")
            .arg("-a")
            .arg(data.path().join("lib.git"))
            .arg(&ws),
    );
    harness::run(Command::new("chmod").args(["-R", "a+rwX"]).arg(&ws));
    data
}

#[test]
fn warm_checkout_fetches_only_what_is_new_and_the_jobs_git_stands_on_its_own() {
    let rig = Rig::start();
    let user = rig.user_key(&["acme"]);
    let widget = rig.work_repo("acme/widget");
    widget.write(
        ".circleci/config.yml",
        &format!(
            r#"version: 2.1
jobs:
  build:
    docker:
      - image: {img}
        user: circleci
    steps:
      - checkout
      - run:
          name: a complete repository
          command: |
            set -e
            echo "count=$(git rev-list --count HEAD)"
            echo "describe=$(git describe --tags)"
            # On a local engine the mirror's objects are shared read-only inside the job's
            # own .git (an alternate relative to it); never a path outside the repository.
            if [ -e .git/objects/info/alternates ]; then test "$(cat .git/objects/info/alternates)" = ../bosun-shared-objects; fi
            git fsck --strict --no-dangling >/dev/null 2>&1 && echo fsck=ok
            if grep -r -l -F "$MIRROR_ROOT" .git; then echo mirror-path-leaked; fi
            git config user.email ci@bosun.invalid && git config user.name ci
            git commit -q --allow-empty -m "from the job" && git push -q origin "HEAD:refs/heads/from-job-$(git rev-parse --short HEAD)" && echo pushed
"#,
            img = image("base")
        ),
    );
    widget.write("README.md", "one\n");
    widget.commit("one");
    widget.tag_annotated("v1", "first release");
    widget.push("HEAD:refs/heads/main");
    widget.git(&["push", "-q", "origin", "v1"]);

    let scratch = Project::new("");
    let cache = scratch.store.path().join("cache");
    let kh = rig.known_hosts_file();
    let mut args: Vec<String> = vec![
        "--json".into(),
        "--repo".into(),
        "git@bitbucket.org:acme/widget.git".into(),
        "--ref".into(),
        "main".into(),
        "--network".into(),
        rig.network.clone(),
        "--user-key".into(),
        user.private_path.display().to_string(),
        "--known-hosts".into(),
        kh.display().to_string(),
        "--env".into(),
        format!("MIRROR_ROOT={}", cache.join("mirrors").display()),
    ];
    for m in rig.vcs_host_mapping() {
        args.extend(["--vcs-host".into(), m]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();

    let first = scratch.execute(&args);
    assert_eq!(first.code, 0, "{}\n{}", first.stdout, first.stderr);
    let out = first.output();
    assert!(
        out.contains("count=1") && out.contains("describe=v1"),
        "{out}"
    );
    let mirrors = mirror_dirs(&cache);
    assert_eq!(mirrors.len(), 1, "one mirror for the repository");
    assert_eq!(packs(&mirrors[0]).len(), 1);

    // Five new commits (and the job's own push): the second job fetches only those.
    for i in 0..5 {
        widget.write("README.md", &format!("more {i}\n"));
        widget.commit(&format!("more {i}"));
    }
    widget.push("HEAD:refs/heads/main");
    let second = scratch.execute(&args);
    assert_eq!(second.code, 0, "{}\n{}", second.stdout, second.stderr);
    let out = second.output();
    assert!(out.contains("count=6"), "{out}");
    assert!(out.contains("describe=v1-5-g"), "{out}");
    assert!(out.contains("fsck=ok"), "{out}");
    assert!(!out.contains("mirror-path-leaked"), "{out}");
    assert!(
        out.contains("pushed"),
        "git push with the user key works: {out}"
    );
    let mirror_packs = packs(&mirrors[0]);
    assert_eq!(
        mirror_packs.len(),
        2,
        "the cold pack and one of what was new"
    );
    let newest = mirror_packs
        .iter()
        .map(|p| std::fs::metadata(p).unwrap().len())
        .min()
        .unwrap();
    assert!(
        newest < 8 * 1024,
        "the warm fetch brought only what was new ({newest} bytes)"
    );
    let pushed = harness::run(
        rig.git(None)
            .arg("--git-dir")
            .arg(rig.repo_path("acme/widget"))
            .args(["for-each-ref", "refs/heads/from-job-*"]),
    );
    assert_eq!(
        pushed.lines().count(),
        2,
        "both jobs' pushes reached the server: {pushed}"
    );
}

#[test]
fn a_key_that_cannot_read_the_repository_gets_nothing_from_the_mirror() {
    let rig = Rig::start();
    let secret = rig.work_repo("acme/secret");
    secret.write("SECRET.txt", "only for acme\n");
    secret.commit("secret");
    secret.push("HEAD:refs/heads/main");
    let acme = rig.user_key(&["acme"]);
    let outsider = rig.user_key(&["elsewhere"]);
    let other_deploy = rig.deploy_key("elsewhere/thing");
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let url = "git@bitbucket.org:acme/secret.git";

    ok(checkout(
        &rig,
        url,
        &tmp.path().join("ok"),
        &[("--user-key", &acme)],
        &cache,
    ));
    assert_eq!(mirror_dirs(&cache).len(), 1, "the mirror holds acme/secret");

    for (name, keys) in [
        ("outsider", vec![("--user-key", &outsider)]),
        (
            "deploy key of another repository",
            vec![("--deploy-key", &other_deploy)],
        ),
        (
            "both",
            vec![("--user-key", &outsider), ("--deploy-key", &other_deploy)],
        ),
    ] {
        let dest = tmp.path().join(name.replace(' ', "-"));
        let out = harness::output(
            checkout_cmd(&rig, url, &dest, &keys, &cache).env("BOSUN_LOG", "bosun=debug"),
        );
        assert!(!out.status.success(), "{name}: {}", text(&out));
        // The mirror's tree was written while the refused fetch ran: what follows checks
        // that the refusal took all of it away again.
        assert!(
            text(&out).contains("head start: the mirror's tree is written"),
            "{name}: {}",
            text(&out)
        );
        assert!(
            text(&out).contains("does not exist or is not accessible"),
            "{name}: {}",
            text(&out)
        );
        assert!(!dest.join("SECRET.txt").exists(), "{name}");
        // Not a single object of the mirror reached the job's repository.
        let objects = dest.join(".git/objects");
        let held: Vec<_> = walk(&objects).into_iter().filter(|p| !p.is_dir()).collect();
        assert!(held.is_empty(), "{name}: {held:?}");
        assert!(!dest.join(".git/packed-refs").exists(), "{name}");
    }
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            out.push(e.path());
            if e.path().is_dir() {
                stack.push(e.path());
            }
        }
    }
    out
}

/// A warm checkout starts from the tree the mirror had (written while the fetch runs);
/// after commits that delete, rename, add and edit files and move the submodule on, the
/// result is exactly a fresh `git clone --recurse-submodules` of the new commit.
#[test]
fn a_warm_checkout_over_the_old_tree_equals_a_fresh_clone() {
    let rig = Rig::start();
    let key = rig.user_key(&["acme"]);
    let lib = rig.work_repo("acme/lib");
    lib.write("lib.txt", "lib one\n");
    lib.commit("lib one");
    lib.push("HEAD:refs/heads/main");
    let app = rig.work_repo("acme/app");
    for (p, body) in [
        ("keep.txt", "keep\n"),
        ("gone.txt", "gone\n"),
        ("edit.txt", "old\n"),
        ("deep/er/moved.txt", "moves\n"),
    ] {
        app.write(p, body);
    }
    app.add_submodule("../lib.git", "lib");
    app.commit("old");
    app.push("HEAD:refs/heads/main");
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let url = "git@bitbucket.org:acme/app.git";
    ok(checkout(
        &rig,
        url,
        &tmp.path().join("prime"),
        &[("--user-key", &key)],
        &cache,
    ));

    lib.write("lib.txt", "lib two\n");
    let lib_two = lib.commit("lib two");
    lib.push("HEAD:refs/heads/main");
    app.git(&["rm", "-q", "gone.txt"]);
    app.git(&["mv", "deep/er/moved.txt", "moved.txt"]);
    app.write("edit.txt", "new\n");
    app.write("added.txt", "added\n");
    app.add_submodule_at("../lib.git", "lib", &lib_two);
    app.commit("new");
    app.push("HEAD:refs/heads/main");

    let warm = tmp.path().join("warm");
    let out = harness::output(
        checkout_cmd(&rig, url, &warm, &[("--user-key", &key)], &cache)
            .env("BOSUN_LOG", "bosun=debug"),
    );
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("head start: the mirror's tree is written"),
        "{}",
        text(&out)
    );
    // The submodule named by the old tree was fetched beside the parent's fetch, and that
    // fetch (with the same key) is the one its checkout used.
    assert!(
        text(&out).contains("submodule mirror fetched ahead"),
        "{}",
        text(&out)
    );
    let fresh = tmp.path().join("fresh");
    harness::run(
        rig.git(None)
            .args([
                "-c",
                "protocol.file.allow=always",
                "clone",
                "-q",
                "--recurse-submodules",
            ])
            .arg(rig.repo_path("acme/app"))
            .arg(&fresh),
    );
    let files = |dir: &Path| {
        let mut v: Vec<(String, Vec<u8>)> = walk(dir)
            .into_iter()
            .filter(|p| p.is_file() && !p.components().any(|c| c.as_os_str() == ".git"))
            .map(|p| {
                let rel = p.strip_prefix(dir).unwrap().display().to_string();
                (rel, std::fs::read(&p).unwrap())
            })
            .collect();
        v.sort();
        v
    };
    assert_eq!(files(&warm), files(&fresh));
    assert!(!warm.join("deep").exists(), "the emptied directory is gone");
    let status = harness::run(rig.git(None).current_dir(&warm).args([
        "status",
        "--porcelain",
        "--ignore-submodules=none",
    ]));
    assert_eq!(status.trim(), "", "a clean working tree");

    // A deploy key opens the project but not its submodule: fetching ahead with it fails,
    // so the submodule's mirror (full from the runs above) gives it nothing.
    let deploy = rig.deploy_key("acme/app");
    let denied = tmp.path().join("denied");
    let out = harness::output(
        checkout_cmd(&rig, url, &denied, &[("--deploy-key", &deploy)], &cache)
            .env("BOSUN_LOG", "bosun=debug"),
    );
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("acme/lib.git does not exist or is not accessible"),
        "{}",
        text(&out)
    );
    assert!(
        !text(&out).contains("submodule mirror fetched ahead"),
        "{}",
        text(&out)
    );
    assert!(!denied.join("lib/lib.txt").exists());
}

#[test]
fn two_checkouts_of_one_repository_at_once() {
    let rig = Rig::start();
    let _data = serve_big_repo(&rig, 2000, 600);
    let key = rig.user_key(&["acme"]);
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let url = "git@bitbucket.org:acme/big.git";
    let spawn = |name: &str| {
        checkout_cmd(
            &rig,
            url,
            &tmp.path().join(name),
            &[("--user-key", &key)],
            &cache,
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn")
    };
    let (a, b) = (spawn("a"), spawn("b"));
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    let (sa, sb) = (ok(a), ok(b));
    let head = rig
        .git(None)
        .arg("--git-dir")
        .arg(rig.repo_path("acme/big"))
        .args(["rev-parse", "main"])
        .output()
        .unwrap();
    let head = String::from_utf8_lossy(&head.stdout).trim().to_string();
    assert_eq!(sa, head);
    assert_eq!(sb, head);
    let mirrors = mirror_dirs(&cache);
    assert_eq!(
        mirrors.len(),
        2,
        "one for acme/big, one for its submodule acme/lib"
    );
    let big = mirrors
        .iter()
        .find(|m| {
            std::fs::read_to_string(m.join("bosun-url"))
                .unwrap()
                .contains("big")
        })
        .unwrap();
    assert_eq!(
        packs(big).len(),
        1,
        "the second checkout waited for the first and found nothing new to fetch"
    );
    for name in ["a", "b"] {
        let files = harness::run(harness::git_in(&tmp.path().join(name)).args(["ls-files"]));
        assert!(files.lines().count() > 2000, "{name}");
        harness::run(harness::git_in(&tmp.path().join(name)).args(["status", "--porcelain"]));
    }
}

#[test]
fn a_fetch_killed_midway_leaves_a_mirror_the_next_job_recovers() {
    let rig = Rig::start();
    let _data = serve_big_repo(&rig, 4000, 3000);
    let key = rig.user_key(&["acme"]);
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let url = "git@bitbucket.org:acme/big.git";
    let mut child = checkout_cmd(
        &rig,
        url,
        &tmp.path().join("killed"),
        &[("--user-key", &key)],
        &cache,
    )
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .spawn()
    .expect("spawn");
    // Killed while libgit2 writes the incoming pack (its temporary file exists).
    let deadline = Instant::now() + Duration::from_secs(60);
    let leftover = loop {
        let found = mirror_dirs(&cache).into_iter().find_map(|m| {
            std::fs::read_dir(m.join("objects/pack"))
                .ok()?
                .flatten()
                .map(|e| e.path())
                .find(|p| {
                    !p.file_name()
                        .unwrap()
                        .to_string_lossy()
                        .starts_with("pack-")
                })
        });
        if let Some(p) = found {
            child.kill().unwrap();
            break p;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "the checkout ended before a pack was being written"
        );
        assert!(Instant::now() < deadline, "no fetch in progress seen");
        std::thread::sleep(Duration::from_millis(2));
    };
    child.wait().unwrap();
    assert!(leftover.exists(), "the kill left the half-written pack");

    let dest = tmp.path().join("next");
    let sha = ok(checkout(&rig, url, &dest, &[("--user-key", &key)], &cache));
    assert_eq!(sha.len(), 40);
    assert!(
        !leftover.exists(),
        "the next job cleaned what the kill left"
    );
    harness::run(harness::git_in(&dest).args(["fsck", "--no-dangling"]));
    assert!(dest.join("README").exists());
}

#[test]
fn a_damaged_mirror_is_found_removed_refetched_and_reported() {
    let rig = Rig::start();
    let w = rig.work_repo("acme/widget");
    w.write("A.txt", "a\n");
    w.commit("a");
    w.push("HEAD:refs/heads/main");
    let key = rig.user_key(&["acme"]);
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let url = "git@bitbucket.org:acme/widget.git";
    ok(checkout(
        &rig,
        url,
        &tmp.path().join("one"),
        &[("--user-key", &key)],
        &cache,
    ));

    let mirror = mirror_dirs(&cache).remove(0);
    let pack = packs(&mirror).remove(0);
    harness::run(Command::new("chmod").arg("u+w").arg(&pack));
    let len = std::fs::metadata(&pack).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&pack)
        .unwrap()
        .set_len(len / 2)
        .unwrap();

    let dest = tmp.path().join("two");
    let out = checkout(&rig, url, &dest, &[("--user-key", &key)], &cache);
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    assert!(
        all.contains("The mirror of git@bitbucket.org:acme/widget.git is damaged"),
        "reported: {all}"
    );
    assert_eq!(std::fs::read_to_string(dest.join("A.txt")).unwrap(), "a\n");
    harness::run(harness::git_in(&dest).args(["fsck", "--no-dangling"]));
}

#[test]
fn cache_ls_and_prune() {
    let rig = Rig::start();
    for slug in ["acme/one", "acme/two"] {
        let w = rig.work_repo(slug);
        w.write("F", slug);
        w.commit(slug);
        w.push("HEAD:refs/heads/main");
    }
    let key = rig.user_key(&["acme"]);
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    for name in ["one", "two"] {
        let url = format!("git@bitbucket.org:acme/{name}.git");
        ok(checkout(
            &rig,
            &url,
            &tmp.path().join(name),
            &[("--user-key", &key)],
            &cache,
        ));
    }
    let cache_cli = |args: &[&str]| {
        let out = harness::output(
            Command::new(harness::bosun_bin())
                .arg("cache")
                .arg("--cache-dir")
                .arg(&cache)
                .args(args),
        );
        ok(out)
    };
    let ls = cache_cli(&["ls"]);
    let one = ls.find("acme/one.git").expect(&ls);
    let two = ls.find("acme/two.git").expect(&ls);
    assert!(one < two, "least recently used first:\n{ls}");
    assert!(ls.contains("2 mirror(s)"), "{ls}");

    // Within the budget: nothing goes.
    assert!(cache_cli(&["prune"]).contains("0 mirror(s) removed"));
    let pruned = cache_cli(&["prune", "--all"]);
    assert!(pruned.contains("2 mirror(s) removed"), "{pruned}");
    assert!(cache_cli(&["ls"]).contains("0 mirror(s)"));
    // The checkouts made from them are untouched.
    assert_eq!(
        std::fs::read_to_string(tmp.path().join("one/F")).unwrap(),
        "acme/one"
    );
}

/// Every regular file under `dir`, with the SHA-256 of its bytes.
fn hashes(dir: &Path) -> Vec<(PathBuf, String)> {
    use sha2::Digest;
    let mut out: Vec<(PathBuf, String)> = walk(dir)
        .into_iter()
        .filter(|p| p.is_file())
        .map(|p| {
            let bytes = std::fs::read(&p).expect("read");
            (p, format!("{:x}", sha2::Sha256::digest(&bytes)))
        })
        .collect();
    out.sort();
    out
}

/// On a local engine the checkout is a directory the agent prepared, mounted at the job's
/// working directory: no copy through the engine, the tree owned by the job's user, and the
/// objects it shares with the mirror (hard links, no copy) read-only even to root in the job.
/// A root job that tries to rewrite, truncate, remove, relink or remount them changes
/// nothing of the mirror, and the directory is gone with the job.
#[test]
fn a_job_that_rewrites_its_git_objects_cannot_change_the_mirror() {
    let rig = Rig::start();
    let user = rig.user_key(&["acme"]);
    let widget = rig.work_repo("acme/widget");
    let config_text = format!(
        r#"version: 2.1
jobs:
  own:
    docker:
      - image: {img}
        user: circleci
    steps:
      - checkout
      - run:
          name: the job's own tree
          command: |
            set -e
            echo "owner=$(stat -c %u:%g . README.md .git .git/HEAD .git/objects .git/objects/pack | sort -u | tr '\n' ' ')"
            echo "shared-owner=$(stat -c %u .git/bosun-shared-objects/pack/*.pack | sort -u | tr '\n' ' ')"
            touch new-file && git status --porcelain
            git fsck --strict --no-dangling >/dev/null 2>&1 && echo fsck=ok
            git fetch -q origin && echo fetched
            grep -q " $PWD rw," /proc/self/mountinfo && echo mounted-rw
            grep -q " $PWD/.git/bosun-shared-objects ro," /proc/self/mountinfo && echo shared-ro
  hostile:
    docker:
      - image: {img}
    steps:
      - checkout
      - run:
          name: rewrite every object
          command: |
            set +e
            echo "whoami=$(id -u)"
            for f in $(find .git -type f); do chmod u+w "$f" 2>/dev/null; printf garbage >> "$f" 2>/dev/null && echo "wrote $f"; done
            for f in .git/bosun-shared-objects/pack/*; do
              : > "$f" 2>/dev/null && echo "TRUNCATED $f"
              chmod 666 "$f" 2>/dev/null && echo "CHMODDED $f"
              ln "$f" /tmp/linked 2>/dev/null && echo "LINKED $f"
              ln "$f" .git/objects/pack/linked 2>/dev/null && echo "LINKED-INSIDE $f"
              rm -f "$f" 2>/dev/null && echo "REMOVED $f"
            done
            mount -o remount,rw "$PWD/.git/bosun-shared-objects" 2>/dev/null && echo REMOUNTED
            umount "$PWD/.git/bosun-shared-objects" 2>/dev/null && echo UNMOUNTED
            git gc --prune=now -q 2>/dev/null; git repack -a -d -q 2>/dev/null
            echo done-hostile
"#,
        img = image("base")
    );
    widget.write(".circleci/config.yml", &config_text);
    widget.write("README.md", "one\n");
    widget.commit("one");
    widget.push("HEAD:refs/heads/main");

    let scratch = Project::new("");
    let tmp = tempfile::tempdir().expect("tmp");
    let tmpdir = tmp.path().display().to_string();
    let kh = rig.known_hosts_file();
    let run = |job: &str, extra: &[&str]| {
        let mut args: Vec<String> = vec![
            "--json".into(),
            "--repo".into(),
            "git@bitbucket.org:acme/widget.git".into(),
            "--ref".into(),
            "main".into(),
            "--job".into(),
            job.into(),
            "--network".into(),
            rig.network.clone(),
            "--user-key".into(),
            user.private_path.display().to_string(),
            "--known-hosts".into(),
            kh.display().to_string(),
        ];
        for m in rig.vcs_host_mapping() {
            args.extend(["--vcs-host".into(), m]);
        }
        args.extend(extra.iter().map(|a| a.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let o = scratch.execute_env(&args, &[("TMPDIR", &tmpdir)]);
        assert_eq!(o.code, 0, "{job}: {}\n{}", o.stdout, o.stderr);
        let work = tmp.path().join("bosun-work/execute");
        let left: Vec<_> = std::fs::read_dir(&work)
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        assert!(left.is_empty(), "{job}: job directories left: {left:?}");
        o.output()
    };

    let check_own = |out: &str| {
        assert!(
            out.contains("into /home/circleci/project: in place"),
            "the checkout went in without a copy: {out}"
        );
        assert!(out.contains("owner=3434:3434 \n"), "{out}");
        assert!(!out.contains("shared-owner=3434"), "{out}");
        assert!(out.contains("?? new-file"), "{out}");
        for word in ["fsck=ok", "fetched", "mounted-rw", "shared-ro"] {
            assert!(out.contains(word), "{word}: {out}");
        }
    };
    let check_hostile = |out: &str| {
        assert!(out.contains("whoami=0"), "{out}");
        assert!(out.contains("done-hostile"), "{out}");
        assert!(
            out.contains("wrote .git/HEAD"),
            "the job's own files are its own: {out}"
        );
        for word in [
            "wrote .git/bosun-shared-objects",
            "TRUNCATED",
            "CHMODDED",
            "LINKED",
            "REMOVED",
            "REMOUNTED",
            "UNMOUNTED",
        ] {
            assert!(!out.contains(word), "{word}: {out}");
        }
    };
    // The config read from the checked-out commit: the fetched tree is the preparation's
    // too, so the job gets a copy.
    let out = run("own", &[]);
    assert!(out.contains("MB written"), "{out}");
    check_own(&out);
    let cache = scratch.store.path().join("cache");
    let mirrors = mirror_dirs(&cache);
    assert_eq!(mirrors.len(), 1, "one mirror: {cache:?}");
    let before = hashes(&mirrors[0].join("objects"));
    assert!(
        before
            .iter()
            .any(|(p, _)| p.extension().is_some_and(|x| x == "pack")),
        "the mirror holds a pack"
    );

    let out = run("hostile", &[]);
    check_hostile(&out);
    assert_eq!(
        hashes(&mirrors[0].join("objects")),
        before,
        "the mirror's objects are unchanged"
    );
    // The config given beside the repository: the job fetched its tree itself and it is
    // moved into place (no copy); the same guarantees hold.
    let config = tmp.path().join("config.yml");
    std::fs::write(&config, &config_text).expect("config");
    let config = config.display().to_string();
    let out = run("own", &["--config", &config]);
    assert!(out.contains(": in place (moved"), "{out}");
    check_own(&out);
    let out = run("hostile", &["--config", &config]);
    assert!(out.contains(": in place (moved"), "{out}");
    check_hostile(&out);
    assert_eq!(
        hashes(&mirrors[0].join("objects")),
        before,
        "the mirror's objects are unchanged"
    );
    let out = run("own", &[]);
    assert!(out.contains("fsck=ok"), "{out}");
}

//! Tests of the test rig itself: the Bitbucket stand-in must behave like
//! Bitbucket for real git and ssh clients, from the host and from job
//! containers, before any Bosun test relies on it.

use crate::harness;

use crate::harness::{exec, image, Key, Rig, CIRCLECI_UID};
use std::process::{Command, Output};

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A repo `slug` with one commit on main; returns its SHA.
fn seed(rig: &Rig, slug: &str, file: &str) -> String {
    let work = rig.work_repo(slug);
    work.write(file, slug);
    let sha = work.commit(&format!("seed {slug}"));
    work.push("main");
    sha
}

fn clone(rig: &Rig, key: &Key, slug: &str) -> (tempfile::TempDir, Output) {
    let dest = tempfile::tempdir().unwrap();
    let out = harness::output(
        rig.git(Some(key))
            .args(["clone", "-q", &rig.ssh_url(slug)])
            .arg(dest.path().join("c")),
    );
    (dest, out)
}

fn ls_remote(rig: &Rig, key: &Key, slug: &str) -> Output {
    harness::output(rig.git(Some(key)).args(["ls-remote", &rig.ssh_url(slug)]))
}

#[test]
fn deploy_key_clones_its_repo() {
    let rig = Rig::start();
    let sha = seed(&rig, "acme/widget", "README.md");
    let key = rig.deploy_key("acme/widget");
    let (dest, out) = clone(&rig, &key, "acme/widget");
    assert!(out.status.success(), "clone failed: {}", text(&out));
    let c = dest.path().join("c");
    assert_eq!(
        std::fs::read_to_string(c.join("README.md")).unwrap(),
        "acme/widget"
    );
    let head = harness::run(rig.git(None).current_dir(&c).args(["rev-parse", "HEAD"]));
    assert_eq!(head.trim(), sha);
}

#[test]
fn deploy_key_sees_no_other_repo() {
    let rig = Rig::start();
    seed(&rig, "acme/widget", "a");
    seed(&rig, "acme/other", "b");
    let key = rig.deploy_key("acme/widget");
    for slug in ["acme/other", "acme/missing", "other/widget"] {
        let out = ls_remote(&rig, &key, slug);
        assert!(!out.status.success(), "{slug} readable with a deploy key");
        assert!(
            text(&out).contains("conq: repository does not exist."),
            "{slug}: {}",
            text(&out)
        );
    }
}

#[test]
fn deploy_key_cannot_push() {
    let rig = Rig::start();
    seed(&rig, "acme/widget", "a");
    let key = rig.deploy_key("acme/widget");
    let (dest, out) = clone(&rig, &key, "acme/widget");
    assert!(out.status.success(), "clone failed: {}", text(&out));
    let c = dest.path().join("c");
    std::fs::write(c.join("new"), "x").unwrap();
    harness::run(rig.git(None).current_dir(&c).args(["add", "new"]));
    harness::run(rig.git(None).current_dir(&c).args(["commit", "-qm", "new"]));
    let out = harness::output(
        rig.git(Some(&key))
            .current_dir(&c)
            .args(["push", "origin", "main"]),
    );
    assert!(!out.status.success(), "deploy key pushed");
    assert!(
        text(&out).contains("access via a deployment key is read-only"),
        "{}",
        text(&out)
    );
}

#[test]
fn user_key_reads_its_workspaces_and_pushes() {
    let rig = Rig::start();
    let widget = seed(&rig, "acme/widget", "a");
    seed(&rig, "acme/lib", "b");
    seed(&rig, "tools/ci", "c");
    seed(&rig, "secret/vault", "d");
    let key = rig.user_key(&["acme", "tools"]);

    for slug in ["acme/widget", "acme/lib", "tools/ci"] {
        let out = ls_remote(&rig, &key, slug);
        assert!(out.status.success(), "{slug}: {}", text(&out));
    }
    let out = ls_remote(&rig, &key, "secret/vault");
    assert!(!out.status.success());
    assert!(text(&out).contains("conq: repository does not exist."));

    let (dest, out) = clone(&rig, &key, "acme/widget");
    assert!(out.status.success(), "clone failed: {}", text(&out));
    let c = dest.path().join("c");
    std::fs::write(c.join("new"), "x").unwrap();
    harness::run(rig.git(None).current_dir(&c).args(["add", "new"]));
    harness::run(rig.git(None).current_dir(&c).args(["commit", "-qm", "new"]));
    let pushed = harness::run(rig.git(None).current_dir(&c).args(["rev-parse", "HEAD"]));
    let out = harness::output(rig.git(Some(&key)).current_dir(&c).args([
        "push",
        "-q",
        "origin",
        "main",
        "main:refs/heads/feature",
    ]));
    assert!(out.status.success(), "push failed: {}", text(&out));

    // The container's git user wrote it; the host sees it by path.
    let bare = rig.repo_path("acme/widget");
    for branch in ["main", "feature"] {
        let tip = harness::run(
            rig.git(None)
                .arg("--git-dir")
                .arg(&bare)
                .args(["rev-parse", branch]),
        );
        assert_eq!(tip.trim(), pushed.trim());
    }
    assert_ne!(pushed.trim(), widget);

    // And the host can still push into what the container wrote.
    let work = rig.work_repo("acme/widget");
    work.git(&["fetch", "-q", "origin"]);
    work.git(&["reset", "-q", "--hard", "origin/main"]);
    work.write("more", "y");
    work.commit("more");
    work.push("main");
}

#[test]
fn unknown_key_is_denied() {
    let rig = Rig::start();
    seed(&rig, "acme/widget", "a");
    let key = rig.unknown_key();
    let out = ls_remote(&rig, &key, "acme/widget");
    assert!(!out.status.success());
    assert!(
        text(&out).contains("Permission denied (publickey)"),
        "{}",
        text(&out)
    );
}

#[test]
fn shell_access_is_refused_like_bitbucket() {
    let rig = Rig::start();
    let key = rig.user_key(&["acme"]);
    let ssh = |cmd: Option<&str>| {
        let mut c = Command::new("sh");
        let line = format!(
            "{} git@127.0.0.1 {}",
            rig.ssh_command(&key),
            cmd.unwrap_or("")
        );
        harness::output(c.args(["-c", &line]))
    };
    let out = ssh(None);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("authenticated via ssh key."));
    assert!(text(&out).contains("Shell access is disabled."));

    let out = ssh(Some("ls /"));
    assert!(!out.status.success());
    assert!(
        text(&out).contains("conq: invalid command syntax."),
        "{}",
        text(&out)
    );

    // Path spellings git clients use: quotes, leading slash, no .git.
    seed(&rig, "acme/widget", "a");
    for spelling in [
        "git-upload-pack 'acme/widget.git'",
        "git-upload-pack '/acme/widget.git'",
        "git-upload-pack acme/widget",
        "git upload-pack 'acme/widget.git'",
    ] {
        let out = ssh(Some(&format!("\"{spelling}\" </dev/null")));
        assert!(
            text(&out).contains("refs/heads/main"),
            "{spelling}: {}",
            text(&out)
        );
    }
    let out = ssh(Some("\"git-upload-pack '../../etc.git'\""));
    assert!(text(&out).contains("conq: repository does not exist."));
}

#[test]
fn any_commit_can_be_fetched_by_sha() {
    let rig = Rig::start();
    let work = rig.work_repo("acme/widget");
    work.write("f", "1");
    let first = work.commit("one");
    work.write("f", "2");
    work.commit("two");
    work.push("main");
    let key = rig.deploy_key("acme/widget");
    for version in ["0", "2"] {
        let dir = tempfile::tempdir().unwrap();
        harness::run(rig.git(None).args(["init", "-q"]).arg(dir.path()));
        let out = harness::output(
            rig.git(Some(&key))
                .current_dir(dir.path())
                .args(["-c", &format!("protocol.version={version}")])
                .args([
                    "fetch",
                    "-q",
                    "--depth",
                    "1",
                    &rig.ssh_url("acme/widget"),
                    &first,
                ]),
        );
        assert!(out.status.success(), "v{version}: {}", text(&out));
        let got = harness::run(
            rig.git(None)
                .current_dir(dir.path())
                .args(["rev-parse", "FETCH_HEAD"]),
        );
        assert_eq!(got.trim(), first);
    }
}

#[test]
fn job_container_reaches_the_stand_in_by_its_real_names() {
    let rig = Rig::start();
    let sha = seed(&rig, "acme/widget", "a");
    let key = rig.deploy_key("acme/widget");
    let c = rig.job_container(&image("base"));

    // As CircleCI images do: the job runs as circleci, keys in ~/.ssh.
    let out = exec(&c, Some("circleci"), "mkdir -p -m 700 ~/.ssh");
    assert!(out.status.success(), "{}", text(&out));
    let (uid, gid) = (CIRCLECI_UID, CIRCLECI_UID);
    harness::copy_into(
        &c,
        "/home/circleci/.ssh",
        "id_deploy",
        key.private_text.as_bytes(),
        uid,
        gid,
        0o600,
    );
    harness::copy_into(
        &c,
        "/home/circleci/.ssh",
        "known_hosts",
        rig.host_key_lines().as_bytes(),
        uid,
        gid,
        0o644,
    );
    let out = exec(&c, None, "stat -c '%u:%g %a' /home/circleci/.ssh/id_deploy");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "3434:3434 600");

    for host in ["bitbucket.org", "ssh.bitbucket.org"] {
        let script = format!(
            "GIT_SSH_COMMAND='ssh -i ~/.ssh/id_deploy -o IdentitiesOnly=yes -o StrictHostKeyChecking=yes -o BatchMode=yes' \
             git ls-remote git@{host}:acme/widget.git refs/heads/main"
        );
        let out = exec(&c, Some("circleci"), &script);
        assert!(out.status.success(), "{host}: {}", text(&out));
        assert!(
            String::from_utf8_lossy(&out.stdout).starts_with(&sha),
            "{host}: {}",
            text(&out)
        );
    }

    // Without the pinned host key the client refuses: the known_hosts is what
    // makes the real name trustworthy.
    let out = exec(
        &c,
        Some("circleci"),
        "rm ~/.ssh/known_hosts; GIT_SSH_COMMAND='ssh -i ~/.ssh/id_deploy -o StrictHostKeyChecking=yes -o BatchMode=yes' \
         git ls-remote git@bitbucket.org:acme/widget.git",
    );
    assert!(!out.status.success());
    assert!(
        text(&out).contains("Host key verification failed"),
        "{}",
        text(&out)
    );
}

#[test]
fn submodules_keep_their_urls() {
    let rig = Rig::start();
    let lib_sha = seed(&rig, "acme/lib", "lib.txt");
    let work = rig.work_repo("acme/widget");
    work.write("main.txt", "main");
    work.add_submodule("../lib.git", "lib");
    work.add_submodule("git@bitbucket.org:acme/lib.git", "vendor/lib");
    work.commit("with submodules");
    // A later `add -A` must not drop the gitlinks.
    work.write("other.txt", "x");
    work.commit("more");
    work.push("main");

    let key = rig.user_key(&["acme"]);
    let (dest, out) = clone(&rig, &key, "acme/widget");
    assert!(out.status.success(), "{}", text(&out));
    let c = dest.path().join("c");
    let gitmodules = std::fs::read_to_string(c.join(".gitmodules")).unwrap();
    assert!(gitmodules.contains("url = ../lib.git"), "{gitmodules}");
    assert!(
        gitmodules.contains("url = git@bitbucket.org:acme/lib.git"),
        "{gitmodules}"
    );
    let tree =
        harness::run(
            rig.git(None)
                .current_dir(&c)
                .args(["ls-tree", "HEAD", "lib", "vendor/lib"]),
        );
    assert_eq!(
        tree.matches(&format!("160000 commit {lib_sha}")).count(),
        2,
        "{tree}"
    );

    // The relative one resolves against the ssh origin, i.e. the rig.
    let out = harness::output(rig.git(Some(&key)).current_dir(&c).args([
        "submodule",
        "update",
        "--init",
        "lib",
    ]));
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        std::fs::read_to_string(c.join("lib/lib.txt")).unwrap(),
        "acme/lib"
    );
}

#[test]
fn nobash_image_has_sh_but_no_bash() {
    harness::ensure_images();
    let out = harness::output(Command::new("docker").args([
        "run",
        "--rm",
        &image("nobash"),
        "sh",
        "-c",
        "echo ok; test ! -e /bin/bash && test ! -e /usr/bin/bash && echo nobash",
    ]));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "ok\nnobash\n",
        "{}",
        text(&out)
    );
}

#[test]
fn dropping_the_rig_removes_its_containers_and_network() {
    let rig = Rig::start();
    let c = rig.job_container(&image("base"));
    let filter = format!("label={}={}", harness::LABEL, rig.run_id);
    let network = rig.network.clone();
    drop(rig);
    assert_eq!(harness::docker(&["ps", "-aq", "--filter", &filter]), "");
    assert_eq!(
        harness::docker(&["network", "ls", "-q", "--filter", &filter]),
        ""
    );
    let out = harness::output(Command::new("docker").args(["inspect", &c]));
    assert!(!out.status.success());
    let out = harness::output(Command::new("docker").args(["network", "inspect", &network]));
    assert!(!out.status.success());
}

#[test]
fn slugs_resolve_like_git_resolves_submodule_urls() {
    use crate::harness::resolve_slug;
    assert_eq!(resolve_slug("acme/widget", "../lib.git"), "acme/lib");
    assert_eq!(
        resolve_slug("acme/widget", "../../other/lib.git"),
        "other/lib"
    );
    assert_eq!(
        resolve_slug("acme/widget", "git@bitbucket.org:acme/lib.git"),
        "acme/lib"
    );
    assert_eq!(
        resolve_slug("acme/widget", "ssh://git@bitbucket.org/acme/lib"),
        "acme/lib"
    );
    assert_eq!(
        resolve_slug("acme/widget", "https://bitbucket.org/acme/lib.git"),
        "acme/lib"
    );
}

use super::submodules::check_submodule_url;
use super::*;
use std::process::Command;

fn creds() -> Credentials {
    let mut hosts = VcsHosts::new();
    hosts
        .add_mapping("ssh.bitbucket.org=127.0.0.1:2222")
        .expect("mapping");
    Credentials {
        keys: Vec::new(),
        known_hosts: KnownHosts::pinned(),
        hosts,
    }
}

#[test]
fn plans_logical_and_physical_urls() {
    let c = creds();
    let p = plan_remote("git@bitbucket.org:acme/widget.git", &c.hosts);
    assert_eq!(p.physical, "ssh://git@127.0.0.1:2222/acme/widget.git");
    assert_eq!(p.host_check, Some(("ssh.bitbucket.org".to_string(), 22)));
    assert_eq!(
        p.describe,
        "git@bitbucket.org:acme/widget.git (ssh.bitbucket.org via 127.0.0.1:2222)"
    );
    assert_eq!(p.written, "git@bitbucket.org:acme/widget.git");

    let p = plan_remote("ssh://git@git.corp:7999/team/r.git", &c.hosts);
    assert_eq!(p.physical, "ssh://git@git.corp:7999/team/r.git");
    assert_eq!(p.host_check, Some(("git.corp".to_string(), 7999)));

    let p = plan_remote("/srv/repos/x.git", &c.hosts);
    assert_eq!(p.physical, "/srv/repos/x.git");
    assert_eq!(p.host_check, None);
}

pub(super) fn git(dir: &Path, args: &[&str]) -> String {
    let _spawning = crate::spawning();
    let out = Command::new("git")
        .args([
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@e",
            "-c",
            "init.defaultBranch=main",
        ])
        .args(["-c", "protocol.file.allow=always"])
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

/// A bare upstream at `root/name.git` with one commit per file name on main.
fn bare_repo(root: &Path, name: &str, files: &[&str]) -> PathBuf {
    let work = root.join(format!("{name}-work"));
    std::fs::create_dir_all(&work).expect("mkdir");
    git(&work, &["init", "-q"]);
    for f in files {
        std::fs::write(work.join(f), f.as_bytes()).expect("write");
        git(&work, &["add", f]);
        git(&work, &["commit", "-qm", f]);
    }
    let bare = root.join(format!("{name}.git"));
    git(
        root,
        &[
            "clone",
            "-q",
            "--bare",
            work.to_str().expect("utf8"),
            bare.to_str().expect("utf8"),
        ],
    );
    bare
}

#[test]
fn local_checkout_branch_tag_sha_and_missing_ref() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path();
    let bare = bare_repo(root, "widget", &["a", "b"]);
    let work = root.join("widget-work");
    git(&work, &["checkout", "-q", "-b", "feature"]);
    std::fs::write(work.join("f"), "f").expect("write");
    git(&work, &["add", "f"]);
    git(&work, &["commit", "-qm", "f"]);
    git(&work, &["tag", "-a", "v1", "-m", "v1"]);
    git(
        &work,
        &[
            "push",
            "-q",
            "--tags",
            bare.to_str().expect("utf8"),
            "feature",
        ],
    );
    let feature_sha = git(&work, &["rev-parse", "HEAD"]);
    let main_sha = git(&work, &["rev-parse", "main"]);
    let url = bare.to_str().expect("utf8").to_string();
    let c = creds();
    let mut lines = Vec::new();

    let dest = root.join("co-head");
    let out = checkout(
        &CheckoutSpec {
            url: url.clone(),
            reference: None,
            dest: dest.clone(),
            mirrors: None,
        },
        &c,
        &mut |l| lines.push(l.to_string()),
    )
    .expect("checkout HEAD");
    assert_eq!(out.sha, main_sha);
    assert_eq!(out.branch.as_deref(), Some("main"));
    assert_eq!(git(&dest, &["rev-parse", "HEAD"]), main_sha);
    assert_eq!(git(&dest, &["status", "--porcelain"]), "");
    assert_eq!(
        git(&dest, &["rev-parse", "--abbrev-ref", "main@{upstream}"]),
        "origin/main"
    );
    assert_eq!(git(&dest, &["remote", "get-url", "origin"]), url);
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("Checked out ") && l.contains("(branch main)")),
        "{lines:?}"
    );

    let dest = root.join("co-tag");
    let out = checkout(
        &CheckoutSpec {
            url: url.clone(),
            reference: Some("v1".into()),
            dest: dest.clone(),
            mirrors: None,
        },
        &c,
        &mut |_| {},
    )
    .expect("checkout tag");
    assert_eq!(
        (out.sha.as_str(), out.tag.as_deref(), out.branch.as_deref()),
        (feature_sha.as_str(), Some("v1"), None)
    );
    assert_eq!(git(&dest, &["rev-parse", "HEAD"]), feature_sha);

    let dest = root.join("co-sha");
    let out = checkout(
        &CheckoutSpec {
            url: url.clone(),
            reference: Some(main_sha[..9].to_string()),
            dest: dest.clone(),
            mirrors: None,
        },
        &c,
        &mut |_| {},
    )
    .expect("checkout sha");
    assert_eq!(out.sha, main_sha);
    assert_eq!(git(&dest, &["status", "--porcelain"]), "");

    // Re-running into the same directory works and moves the branch.
    let dest = root.join("co-head");
    let out = checkout(
        &CheckoutSpec {
            url: url.clone(),
            reference: Some("feature".into()),
            dest: dest.clone(),
            mirrors: None,
        },
        &c,
        &mut |_| {},
    )
    .expect("re-checkout");
    assert_eq!(out.sha, feature_sha);
    assert_eq!(git(&dest, &["symbolic-ref", "HEAD"]), "refs/heads/feature");

    let err = checkout(
        &CheckoutSpec {
            url: url.clone(),
            reference: Some("nope".into()),
            dest: root.join("co-x"),
            mirrors: None,
        },
        &c,
        &mut |_| {},
    )
    .expect_err("missing ref");
    let msg = err.to_string();
    assert!(
        msg.contains("\"nope\" is not a branch, tag or commit"),
        "{msg}"
    );
    assert!(msg.contains("Branches: feature, main"), "{msg}");
    assert!(msg.contains("Tags: v1"), "{msg}");
}

#[test]
fn local_submodules_relative_and_nested() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path();
    let nested = bare_repo(root, "nested", &["n"]);
    let lib = bare_repo(root, "lib", &["l"]);
    let lib_work = root.join("lib-work");
    git(
        &lib_work,
        &[
            "submodule",
            "add",
            "-q",
            nested.to_str().expect("utf8"),
            "deps/nested",
        ],
    );
    // Recorded as relative (../nested.git beside lib.git): an absolute path is a directory on
    // the agent's host, which submodules may not name.
    git(
        &lib_work,
        &[
            "config",
            "-f",
            ".gitmodules",
            "submodule.deps/nested.url",
            "../nested.git",
        ],
    );
    git(&lib_work, &["add", ".gitmodules"]);
    git(&lib_work, &["commit", "-qm", "sub"]);
    git(
        &lib_work,
        &["push", "-q", lib.to_str().expect("utf8"), "main"],
    );
    let lib_sha = git(&lib_work, &["rev-parse", "HEAD"]);
    let widget = bare_repo(root, "widget", &["w"]);
    let w_work = root.join("widget-work");
    git(&w_work, &["submodule", "add", "-q", "../lib.git", "lib"]);
    // .gitmodules says ../lib.git, resolved against the origin of widget-work; point the
    // work repo's origin at the bare one so git resolves the same way we do.
    git(&w_work, &["commit", "-qm", "sub"]);
    git(
        &w_work,
        &["push", "-q", widget.to_str().expect("utf8"), "main"],
    );
    let dest = root.join("co");
    let mut lines = Vec::new();
    let out = checkout(
        &CheckoutSpec {
            url: widget.to_str().expect("utf8").into(),
            reference: None,
            dest: dest.clone(),
            mirrors: None,
        },
        &creds(),
        &mut |l| lines.push(l.to_string()),
    )
    .expect("checkout with submodules");
    assert_eq!(out.submodules.len(), 2, "{:?}", out.submodules);
    assert_eq!(out.submodules[0], ("lib".to_string(), lib_sha));
    assert_eq!(out.submodules[1].0, "lib/deps/nested");
    assert!(dest.join("lib/l").exists());
    assert!(dest.join("lib/deps/nested/n").exists());
    assert_eq!(git(&dest, &["status", "--porcelain"]), "");
    let status = git(&dest, &["submodule", "status", "--recursive"]);
    assert!(!status.contains('-') && !status.contains('+'), "{status}");
    assert_eq!(
        git(&dest, &["config", "submodule.lib.url"]),
        format!("{}/lib.git", root.display())
    );
    assert!(
        lines.iter().any(|l| l.starts_with("Submodule lib → ")),
        "{lines:?}"
    );
}

#[test]
fn submodule_urls_are_ssh_or_relative() {
    for ok in [
        "../lib.git",
        "./lib.git",
        "git@bitbucket.org:acme/lib.git",
        "ssh://git@ssh.bitbucket.org/acme/lib.git",
        "ssh://git@git.corp:7999/team/r.git",
    ] {
        assert_eq!(check_submodule_url(ok), Ok(()), "{ok}");
    }
    for bad in [
        "/srv/secret.git",
        "secret",
        "file:///srv/secret.git",
        "ext::sh -c touch% /tmp/pwned",
        "fd::17",
        "https://bitbucket.org/acme/lib.git",
        "git://example.com/x.git",
        "ssh://-oProxyCommand=x/acme/lib.git",
    ] {
        let e = check_submodule_url(bad).expect_err(bad);
        assert!(e.contains("transport"), "{bad}: {e}");
    }
}

/// A repository on this machine is copied the way a mirror is (its packs hard-linked into the
/// job's `.git`), not fetched through libgit2's local transport, which packed every object
/// anew (slow for a long history): the checkout's pack is the source's very file, and the copy
/// is a whole repository (`git fsck`, history, tags, the upstream branch).
#[test]
fn a_local_repository_is_linked_not_repacked() {
    use std::os::unix::fs::MetadataExt;
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path();
    let bare = bare_repo(root, "big", &["a", "b", "c"]);
    git(&bare, &["tag", "v1"]);
    git(&bare, &["repack", "-adq"]);
    let packs = |git_dir: &Path| -> Vec<(String, u64)> {
        let mut v: Vec<(String, u64)> = std::fs::read_dir(git_dir.join("objects/pack"))
            .expect("pack dir")
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(".pack"))
            .map(|e| {
                let ino = e.metadata().expect("stat").ino();
                (e.file_name().to_string_lossy().into_owned(), ino)
            })
            .collect();
        v.sort();
        v
    };
    let source = packs(&bare);
    assert_eq!(source.len(), 1, "{source:?}");
    let dest = root.join("co");
    let out = checkout(
        &CheckoutSpec {
            url: bare.to_str().expect("utf8").to_string(),
            reference: None,
            dest: dest.clone(),
            mirrors: None,
        },
        &creds(),
        &mut |_| {},
    )
    .expect("checkout");
    assert_eq!(out.branch.as_deref(), Some("main"));
    assert_eq!(packs(&dest.join(".git")), source, "the pack was not linked");
    assert_eq!(git(&dest, &["rev-list", "--count", "HEAD"]), "3");
    assert_eq!(git(&dest, &["tag"]), "v1");
    assert_eq!(
        git(&dest, &["rev-parse", "--abbrev-ref", "main@{upstream}"]),
        "origin/main"
    );
    git(&dest, &["fsck", "--strict"]);
}

/// What a head start fetches ahead comes from a `.gitmodules` anyone who can push writes:
/// the same rules as the checkout's own submodule step hold, so a helper transport, a local
/// path, a non-SSH URL or a relative URL climbing out of the host makes no fetch and no
/// mirror, and runs nothing.
#[test]
fn a_hostile_gitmodules_is_not_fetched_ahead() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let work = tmp.path().join("work");
    std::fs::create_dir(&work).expect("mkdir");
    git(&work, &["init", "-q"]);
    let pwned = tmp.path().join("pwned");
    let hostile = [
        format!("ext::sh -c touch% {}", pwned.display()),
        "file:///etc".to_owned(),
        "/srv/secret.git".to_owned(),
        "https://bitbucket.org/acme/lib.git".to_owned(),
        "ssh://-oProxyCommand=x/acme/lib.git".to_owned(),
        "../../../../../../etc.git".to_owned(),
    ];
    let sha = "1111111111111111111111111111111111111111";
    for (i, url) in hostile.iter().enumerate() {
        let path = format!("sub{i}");
        git(
            &work,
            &[
                "config",
                "-f",
                ".gitmodules",
                &format!("submodule.{path}.path"),
                &path,
            ],
        );
        git(
            &work,
            &[
                "config",
                "-f",
                ".gitmodules",
                &format!("submodule.{path}.url"),
                url,
            ],
        );
        git(
            &work,
            &[
                "update-index",
                "--add",
                "--cacheinfo",
                &format!("160000,{sha},{path}"),
            ],
        );
    }
    git(&work, &["add", ".gitmodules"]);
    git(&work, &["commit", "-q", "-m", "hostile"]);
    let mirrors = Mirrors::new(&tmp.path().join("cache"), 1 << 30);
    let got = submodules::prefetch(
        &work.join(".git"),
        "git@bitbucket.org:acme/app.git",
        &creds(),
        &mirrors,
    );
    assert!(got.is_empty());
    assert!(!pwned.exists(), "a helper transport ran");
    let made: Vec<_> = std::fs::read_dir(mirrors.root())
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(made.is_empty(), "no mirror for any of them: {made:?}");

    // The control: an allowed URL is tried (its mirror opened; the fetch itself fails, as
    // nothing serves 127.0.0.1:2222 here, so nothing is handed on).
    git(
        &work,
        &[
            "config",
            "-f",
            ".gitmodules",
            "submodule.sub0.url",
            "../lib.git",
        ],
    );
    git(&work, &["add", ".gitmodules"]);
    git(&work, &["commit", "-q", "-m", "allowed"]);
    let got = submodules::prefetch(
        &work.join(".git"),
        "git@bitbucket.org:acme/app.git",
        &creds(),
        &mirrors,
    );
    assert!(got.is_empty());
    let made = std::fs::read_dir(mirrors.root()).expect("mirrors").count();
    assert!(made > 0, "the allowed submodule's mirror was opened");
}

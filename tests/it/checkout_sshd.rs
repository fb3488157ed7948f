//! Checkout against a REAL OpenSSH server on a loopback port, standing in for Bitbucket:
//! a forced command serves `git-upload-pack` for the repositories each key may read and
//! prints Bitbucket's `conq: repository does not exist.` otherwise.
//!
//! sshd runs as root (it must, to switch users) and only root can log in, so URLs use
//! `root@bitbucket.org:...` instead of `git@`; everything else is Bitbucket's real naming,
//! reached through the mapping `ssh.bitbucket.org=127.0.0.1:PORT`. Skipped (with a message)
//! when `/usr/sbin/sshd` is missing or we are not root.

use crate::harness::free_port;
use bosun::checkout::{checkout, CheckoutError, CheckoutSpec, Credentials};
use bosun::ssh::{keyscan, KeyRole, KnownHosts, SshKey, VcsHosts};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const SSHD: &str = "/usr/sbin/sshd";

struct Server {
    dir: tempfile::TempDir,
    port: u16,
    child: Child,
    host_key_line: String,
    shas: Shas,
}

#[derive(Default)]
struct Shas {
    main: String,
    feature: String,
    lib: String,
    lib2: String,
    nested: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn run(dir: &Path, cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd)
        .args(args)
        .current_dir(dir)
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@example.com")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@example.com")
        .output()
        .unwrap_or_else(|e| panic!("{cmd} {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn git(dir: &Path, args: &[&str]) -> String {
    let mut all = vec!["-c", "init.defaultBranch=main"];
    all.extend_from_slice(args);
    run(dir, "git", &all)
}

/// Makes `repos/acme/NAME.git` from a work tree with `files` and optional gitlinks
/// (path, url, sha) recorded without cloning anything.
fn make_repo(root: &Path, name: &str, files: &[&str], links: &[(&str, &str, &str)]) -> String {
    let work = root.join("work").join(name);
    std::fs::create_dir_all(&work).expect("mkdir");
    git(&work, &["init", "-q"]);
    for f in files {
        std::fs::write(work.join(f), format!("{name}/{f}\n")).expect("write");
        git(&work, &["add", f]);
    }
    if !links.is_empty() {
        let mut gm = String::new();
        for (path, url, sha) in links {
            gm.push_str(&format!(
                "[submodule \"{path}\"]\n\tpath = {path}\n\turl = {url}\n"
            ));
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
        std::fs::write(work.join(".gitmodules"), gm).expect("write");
        git(&work, &["add", ".gitmodules"]);
    }
    git(&work, &["commit", "-qm", "initial"]);
    let bare = root.join("repos/acme").join(format!("{name}.git"));
    std::fs::create_dir_all(bare.parent().expect("parent")).expect("mkdir");
    run(
        root,
        "git",
        &[
            "clone",
            "-q",
            "--bare",
            work.to_str().expect("utf8"),
            bare.to_str().expect("utf8"),
        ],
    );
    git(&work, &["rev-parse", "HEAD"])
}

fn keygen(path: &Path) -> String {
    run(
        Path::new("/"),
        "ssh-keygen",
        &[
            "-q",
            "-t",
            "ed25519",
            "-N",
            "",
            "-C",
            "",
            "-f",
            path.to_str().expect("utf8"),
        ],
    );
    std::fs::read_to_string(path.with_extension("pub"))
        .expect("pub")
        .trim()
        .to_string()
}

/// Keys: `user` reads every repo; `deploy` reads widget only; `lib_user` reads everything
/// but widget (a user account that cannot see the main repository); `stranger` is unknown.
fn start() -> Option<Server> {
    if !Path::new(SSHD).exists() || !nix_is_root() {
        eprintln!("SKIPPED: needs {SSHD} and root (apt-get install -y openssh-server)");
        return None;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    let _ = std::fs::create_dir_all("/run/sshd");

    let mut shas = Shas {
        nested: make_repo(root, "nested", &["n.txt"], &[]),
        ..Shas::default()
    };
    shas.lib = make_repo(
        root,
        "lib",
        &["l.txt"],
        &[("deps/nested", "../nested.git", &shas.nested)],
    );
    shas.lib2 = make_repo(root, "lib2", &["l2.txt"], &[]);
    shas.main = make_repo(
        root,
        "widget",
        &["w.txt"],
        &[
            ("lib", "../lib.git", &shas.lib),
            (
                "vendor/lib2",
                "root@bitbucket.org:acme/lib2.git",
                &shas.lib2,
            ),
        ],
    );
    let work = root.join("work/widget");
    git(&work, &["checkout", "-q", "-b", "feature"]);
    std::fs::write(work.join("f.txt"), "f\n").expect("write");
    git(&work, &["add", "f.txt"]);
    git(&work, &["commit", "-qm", "feature"]);
    git(&work, &["tag", "-a", "v1.0", "-m", "release"]);
    shas.feature = git(&work, &["rev-parse", "HEAD"]);
    let bare = root.join("repos/acme/widget.git");
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

    let serve = root.join("serve.sh");
    std::fs::write(
        &serve,
        format!(
            r#"#!/bin/sh
# Forced command, like Bitbucket's: only git-upload-pack of an allowed repository.
allowed="$1"
case "$SSH_ORIGINAL_COMMAND" in
  "git-upload-pack "*) path="${{SSH_ORIGINAL_COMMAND#git-upload-pack }}" ;;
  *) echo "conq: invalid command." >&2; exit 1 ;;
esac
path=$(printf '%s' "$path" | tr -d "'" | sed 's#^/*##')
for ok in $allowed; do
  if [ "$ok" = "$path" ]; then exec git-upload-pack "{root}/repos/$path"; fi
done
echo "conq: repository does not exist." >&2
exit 1
"#,
            root = root.display()
        ),
    )
    .expect("write");
    run(root, "chmod", &["755", serve.to_str().expect("utf8")]);
    let all = "acme/widget.git acme/lib.git acme/lib2.git acme/nested.git";
    let mut auth = String::new();
    for (name, allowed) in [
        ("user", all),
        ("deploy", "acme/widget.git"),
        ("lib_user", "acme/lib.git acme/lib2.git acme/nested.git"),
    ] {
        let public = keygen(&root.join(format!("key_{name}")));
        auth.push_str(&format!(
            "command=\"{} '{allowed}'\",no-pty,no-port-forwarding,no-agent-forwarding {public}\n",
            serve.display()
        ));
    }
    keygen(&root.join("key_stranger"));
    std::fs::write(root.join("authorized_keys"), auth).expect("write");

    let host_pub = keygen(&root.join("host_ed25519"));
    let port = free_port();
    let config = format!(
        "Port {port}\nListenAddress 127.0.0.1\nHostKey {r}/host_ed25519\nPidFile {r}/sshd.pid\n\
         AuthorizedKeysFile {r}/authorized_keys\nStrictModes no\nUsePAM no\n\
         PasswordAuthentication no\nKbdInteractiveAuthentication no\nPubkeyAuthentication yes\n\
         AllowUsers root\nPermitRootLogin prohibit-password\nLogLevel VERBOSE\n",
        r = root.display()
    );
    std::fs::write(root.join("sshd_config"), config).expect("write");
    let log = std::fs::File::create(root.join("sshd.log")).expect("log");
    let child = Command::new(SSHD)
        .args(["-D", "-e", "-f"])
        .arg(root.join("sshd_config"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start sshd");
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "sshd did not start: {}",
            sshd_log(root)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let key_b64 = host_pub.split_whitespace().nth(1).expect("b64").to_string();
    Some(Server {
        host_key_line: format!("ssh.bitbucket.org ssh-ed25519 {key_b64}"),
        dir,
        port,
        child,
        shas,
    })
}

fn nix_is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

fn sshd_log(root: &Path) -> String {
    std::fs::read_to_string(root.join("sshd.log")).unwrap_or_default()
}

impl Server {
    fn key(&self, name: &str, role: KeyRole) -> SshKey {
        SshKey::from_file(&self.dir.path().join(format!("key_{name}")), role).expect("key")
    }

    fn creds(&self, keys: &[(&str, KeyRole)]) -> Credentials {
        let mut known_hosts = KnownHosts::pinned();
        known_hosts.extend(KnownHosts::parse(&self.host_key_line, "test host key").expect("kh"));
        let mut hosts = VcsHosts::new();
        hosts
            .add_mapping(&format!("ssh.bitbucket.org=127.0.0.1:{}", self.port))
            .expect("mapping");
        Credentials {
            keys: keys.iter().map(|(n, r)| self.key(n, *r)).collect(),
            known_hosts,
            hosts,
        }
    }

    fn dest(&self, name: &str) -> PathBuf {
        self.dir.path().join("checkouts").join(name)
    }
}

const WIDGET: &str = "root@bitbucket.org:acme/widget.git";

fn spec(url: &str, reference: Option<&str>, dest: PathBuf) -> CheckoutSpec {
    CheckoutSpec {
        url: url.to_string(),
        reference: reference.map(str::to_string),
        dest,
        mirrors: None,
    }
}

#[test]
fn clones_with_submodules_by_branch_tag_and_sha() {
    let Some(s) = start() else { return };
    let creds = s.creds(&[("user", KeyRole::User), ("deploy", KeyRole::Deploy)]);
    let mut lines = Vec::new();
    let dest = s.dest("head");
    let out = checkout(&spec(WIDGET, None, dest.clone()), &creds, &mut |l| {
        lines.push(l.to_string())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", sshd_log(s.dir.path())));
    assert_eq!(out.sha, s.shas.main);
    assert_eq!(out.branch.as_deref(), Some("main"));
    assert_eq!(
        out.submodules,
        vec![
            ("lib".to_string(), s.shas.lib.clone()),
            ("lib/deps/nested".to_string(), s.shas.nested.clone()),
            ("vendor/lib2".to_string(), s.shas.lib2.clone()),
        ]
    );
    assert_eq!(git(&dest, &["rev-parse", "HEAD"]), s.shas.main);
    assert_eq!(git(&dest, &["status", "--porcelain"]), "");
    assert_eq!(git(&dest, &["remote", "get-url", "origin"]), WIDGET);
    assert_eq!(
        git(&dest, &["config", "submodule.lib.url"]),
        "root@bitbucket.org:acme/lib.git"
    );
    assert_eq!(
        git(&dest.join("lib"), &["remote", "get-url", "origin"]),
        "root@bitbucket.org:acme/lib.git"
    );
    assert_eq!(
        git(
            &dest.join("lib/deps/nested"),
            &["remote", "get-url", "origin"]
        ),
        "root@bitbucket.org:acme/nested.git"
    );
    assert!(dest.join("vendor/lib2/l2.txt").exists());
    assert!(dest.join("lib/deps/nested/n.txt").exists());
    let text = lines.join("\n");
    assert!(
        text.contains(&format!(
            "Cloning {WIDGET} (ssh.bitbucket.org via 127.0.0.1:{})",
            s.port
        )),
        "{text}"
    );
    assert!(
        text.contains("Submodule lib → root@bitbucket.org:acme/lib.git"),
        "{text}"
    );
    assert!(
        text.contains(&format!("Checked out {} (branch main)", s.shas.main)),
        "{text}"
    );
    assert!(!text.contains("PRIVATE"), "{text}");

    let out = checkout(
        &spec(WIDGET, Some("feature"), s.dest("branch")),
        &creds,
        &mut |_| {},
    )
    .expect("branch");
    assert_eq!(
        (out.sha.as_str(), out.branch.as_deref()),
        (s.shas.feature.as_str(), Some("feature"))
    );
    assert_eq!(
        git(&s.dest("branch"), &["symbolic-ref", "HEAD"]),
        "refs/heads/feature"
    );
    assert_eq!(git(&s.dest("branch"), &["status", "--porcelain"]), "");

    let out = checkout(
        &spec(WIDGET, Some("v1.0"), s.dest("tag")),
        &creds,
        &mut |_| {},
    )
    .expect("tag");
    assert_eq!(
        (out.sha.as_str(), out.tag.as_deref()),
        (s.shas.feature.as_str(), Some("v1.0"))
    );

    let out = checkout(
        &spec(WIDGET, Some(&s.shas.main[..8]), s.dest("sha")),
        &creds,
        &mut |_| {},
    )
    .expect("sha");
    assert_eq!(out.sha, s.shas.main);
    assert_eq!(git(&s.dest("sha"), &["rev-parse", "HEAD"]), s.shas.main);

    let err = checkout(
        &spec(WIDGET, Some("no-such"), s.dest("missing")),
        &creds,
        &mut |_| {},
    )
    .expect_err("missing ref");
    assert!(err.to_string().contains("Branches: feature, main"), "{err}");
}

#[test]
fn changed_and_unknown_host_keys_are_refused_with_fingerprint() {
    let Some(s) = start() else { return };
    let fp = run(
        s.dir.path(),
        "ssh-keygen",
        &[
            "-lf",
            s.dir
                .path()
                .join("host_ed25519.pub")
                .to_str()
                .expect("utf8"),
        ],
    );
    let fp = fp.split_whitespace().nth(1).expect("fp").to_string();

    // Only the pinned keys: ssh.bitbucket.org is known, with other keys → CHANGED.
    let mut creds = s.creds(&[("user", KeyRole::User)]);
    creds.known_hosts = KnownHosts::pinned();
    let err =
        checkout(&spec(WIDGET, None, s.dest("changed")), &creds, &mut |_| {}).expect_err("changed");
    assert!(matches!(err, CheckoutError::HostKey { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("host key for ssh.bitbucket.org has CHANGED"),
        "{msg}"
    );
    assert!(msg.contains(&fp), "{msg}");

    // A host nobody pinned → unknown, with the line to add.
    creds
        .hosts
        .add_mapping(&format!("git.corp.example=127.0.0.1:{}", s.port))
        .expect("mapping");
    let err = checkout(
        &spec(
            "ssh://root@git.corp.example/acme/widget.git",
            None,
            s.dest("unknown"),
        ),
        &creds,
        &mut |_| {},
    )
    .expect_err("unknown");
    let msg = err.to_string();
    assert!(msg.contains(&fp), "{msg}");
    assert!(
        msg.contains(
            "add this line to the file given with --known-hosts: git.corp.example ssh-ed25519 AAAA"
        ),
        "{msg}"
    );
}

#[test]
fn deploy_key_alone_fails_on_submodule_with_user_key_advice() {
    let Some(s) = start() else { return };
    let creds = s.creds(&[("deploy", KeyRole::Deploy)]);
    let err = checkout(&spec(WIDGET, None, s.dest("deploy")), &creds, &mut |_| {})
        .expect_err("submodule");
    let msg = err.to_string();
    eprintln!("deploy-only error: {msg}\n{err:?}");
    assert!(matches!(err, CheckoutError::NoAccess { .. }), "{err:?}");
    assert!(msg.contains("root@bitbucket.org:acme/lib.git"), "{msg}");
    assert!(msg.contains("deploy key SHA256:"), "{msg}");
    assert!(msg.contains("need a user key"), "{msg}");
}

#[test]
fn unknown_key_is_refused_naming_keys_offered() {
    let Some(s) = start() else { return };
    let creds = s.creds(&[("stranger", KeyRole::User), ("stranger", KeyRole::Deploy)]);
    let err = checkout(&spec(WIDGET, None, s.dest("stranger")), &creds, &mut |_| {})
        .expect_err("refused");
    let msg = err.to_string();
    assert!(matches!(err, CheckoutError::AuthRefused { .. }), "{err:?}");
    assert!(
        msg.contains("user key SHA256:") && msg.contains("deploy key SHA256:"),
        "{msg}"
    );
    assert!(msg.contains(WIDGET), "{msg}");
}

#[test]
fn user_key_without_main_repo_falls_back_to_deploy_key() {
    let Some(s) = start() else { return };
    let creds = s.creds(&[("lib_user", KeyRole::User), ("deploy", KeyRole::Deploy)]);
    let out = checkout(&spec(WIDGET, None, s.dest("fallback")), &creds, &mut |_| {})
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(out.sha, s.shas.main);
    assert_eq!(out.submodules.len(), 3);
}

#[test]
fn missing_repository_is_reported_as_no_access() {
    let Some(s) = start() else { return };
    let creds = s.creds(&[("user", KeyRole::User)]);
    let url = "root@bitbucket.org:acme/ghost.git";
    let err = checkout(&spec(url, None, s.dest("ghost")), &creds, &mut |_| {}).expect_err("ghost");
    eprintln!("missing-repo error: {err}\n{err:?}");
    assert!(matches!(err, CheckoutError::NoAccess { .. }), "{err:?}");
    assert!(err.to_string().contains(url), "{err}");
    assert!(
        err.to_string()
            .contains("the server said: conq: repository does not exist."),
        "{err}"
    );
}

#[test]
fn keyscan_sees_the_server_key() {
    let Some(s) = start() else { return };
    let keys = keyscan(
        "127.0.0.1",
        s.port,
        "ssh.bitbucket.org",
        Duration::from_secs(5),
    )
    .expect("scan");
    assert_eq!(keys.len(), 1, "{keys:?}");
    assert_eq!(
        keys[0].known_hosts_line("ssh.bitbucket.org", 22),
        s.host_key_line
    );
}

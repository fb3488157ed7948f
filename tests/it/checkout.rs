//! End to end against the Bitbucket stand-in (a real sshd serving bare repositories with
//! per-key access): checkout with git2 over SSH, submodules, keys and host keys in the
//! container, private dependencies cloned by a step, and the errors people hit.

use crate::harness;

use crate::harness::{image, step_output, Key, Outcome, Project, Rig, WorkRepo};
use std::time::Duration;

/// The job every repository here carries: it checks the checkout from inside the container
/// as the non-root `circleci` user, and clones a private dependency with the installed key.
fn job_config() -> String {
    format!(
        r#"version: 2.1
jobs:
  build:
    docker:
      - image: {img}
        user: circleci
    steps:
      - checkout
      - run:
          name: checkout is a real repository
          command: |
            test "$(git rev-parse HEAD)" = "$CIRCLE_SHA1"
            test -z "$(git status --porcelain)"
            echo "origin=$(git remote get-url origin)"
            echo "branch=${{CIRCLE_BRANCH:-}} tag=${{CIRCLE_TAG:-}} head=$(git symbolic-ref -q --short HEAD || echo detached)"
            echo "tags=$(git tag | tr '\n' ' ')"
            cat lib/LIB.txt lib/deps/nested/NESTED.txt
            echo "repo=$CIRCLE_PROJECT_USERNAME/$CIRCLE_PROJECT_REPONAME url=$CIRCLE_REPOSITORY_URL"
      - run:
          name: ssh files
          command: |
            stat -c '%n %a %U' ~/.ssh ~/.ssh/id_bosun_* ~/.ssh/known_hosts ~/.ssh/config
            ssh -G bitbucket.org | grep -E '^(identityfile|hostname|stricthostkeychecking|identitiesonly) '
      - run:
          name: private dependency
          command: |
            git clone -q git@bitbucket.org:acme/other.git /tmp/other && cat /tmp/other/OTHER.txt
"#,
        img = image("base")
    )
}

/// acme/widget with submodule `lib` (relative URL ../lib.git) which has its own submodule
/// `deps/nested` (absolute git@bitbucket.org URL), plus acme/other as a private dependency.
/// Returns the widget work repo and the SHA of its `main` branch.
fn setup_repos(rig: &Rig) -> (WorkRepo, String) {
    for slug in ["acme/widget", "acme/lib", "acme/nested", "acme/other"] {
        rig.create_repo(slug);
    }
    let nested = rig.work_repo("acme/nested");
    nested.write("NESTED.txt", "nested submodule content\n");
    nested.commit("nested");
    nested.push("HEAD:refs/heads/main");

    let lib = rig.work_repo("acme/lib");
    lib.write("LIB.txt", "lib submodule content\n");
    lib.add_submodule("git@bitbucket.org:acme/nested.git", "deps/nested");
    lib.commit("lib with nested");
    lib.push("HEAD:refs/heads/main");

    let other = rig.work_repo("acme/other");
    other.write("OTHER.txt", "private dependency content\n");
    other.commit("other");
    other.push("HEAD:refs/heads/main");

    let widget = rig.work_repo("acme/widget");
    widget.write(".circleci/config.yml", &job_config());
    widget.write("README.md", "widget v1\n");
    widget.add_submodule("../lib.git", "lib");
    widget.commit("v1");
    widget.tag("v1.0");
    widget.push("HEAD:refs/heads/main");
    widget.git(&["push", "-q", "origin", "v1.0"]);
    widget.write("README.md", "widget v2\n");
    let main_sha = widget.commit("v2");
    widget.push("HEAD:refs/heads/main");
    (widget, main_sha)
}

fn run(
    rig: &Rig,
    scratch: &Project,
    reference: &str,
    keys: &[(&str, &Key)],
    extra: &[&str],
) -> Outcome {
    let mut args: Vec<String> = vec![
        "--json".into(),
        "--repo".into(),
        "git@bitbucket.org:acme/widget.git".into(),
        "--ref".into(),
        reference.into(),
        "--network".into(),
        rig.network.clone(),
    ];
    for (flag, key) in keys {
        args.push((*flag).into());
        args.push(key.private_path.display().to_string());
    }
    for m in rig.vcs_host_mapping() {
        args.push("--vcs-host".into());
        args.push(m);
    }
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let tmp = scratch.path().join("tmp");
    std::fs::create_dir_all(&tmp).expect("tmp");
    let out = scratch.execute_env(&args, &[("TMPDIR", tmp.to_str().expect("utf8"))]);
    // The agent's own temporary copies (the checkout) are gone when the job ends.
    let left: Vec<_> = std::fs::read_dir(&tmp).expect("tmp").collect();
    assert!(left.is_empty(), "temporary files left behind: {left:?}");
    out
}

fn everything(out: &Outcome) -> String {
    format!("{}\n{}", out.stdout, out.stderr)
}

fn assert_no_key_material(out: &Outcome, keys: &[&Key]) {
    let all = everything(out);
    for k in keys {
        for line in k.private_text.lines().filter(|l| !l.starts_with("-----")) {
            assert!(
                !all.contains(line),
                "private key material appeared in the output"
            );
        }
    }
}

#[test]
fn checks_out_branch_tag_and_sha_with_nested_submodules_and_installs_keys() {
    let rig = Rig::start();
    let (widget, main_sha) = setup_repos(&rig);
    let user = rig.user_key(&["acme"]);
    let scratch = Project::new("");
    let kh = rig.known_hosts_file();
    let kh = kh.to_str().expect("utf8");

    // Branch.
    let out = run(
        &rig,
        &scratch,
        "main",
        &[("--user-key", &user)],
        &["--known-hosts", kh],
    );
    assert_eq!(out.code, 0, "{}", everything(&out));
    let checked = step_output(&out.events, None, 1);
    assert!(
        checked.contains("origin=git@bitbucket.org:acme/widget.git"),
        "{checked}"
    );
    assert!(checked.contains("branch=main tag= head=main"), "{checked}");
    assert!(checked.contains("tags=v1.0"), "{checked}");
    assert!(checked.contains("lib submodule content"), "{checked}");
    assert!(checked.contains("nested submodule content"), "{checked}");
    assert!(
        checked.contains("repo=acme/widget url=git@bitbucket.org:acme/widget.git"),
        "{checked}"
    );
    let files = step_output(&out.events, None, 2);
    assert!(
        files.contains("/home/circleci/.ssh 700 circleci"),
        "{files}"
    );
    assert!(
        files.contains("/home/circleci/.ssh/id_bosun_user 600 circleci"),
        "{files}"
    );
    assert!(files.contains("hostname ssh.bitbucket.org"), "{files}");
    assert!(files.contains("stricthostkeychecking true"), "{files}");
    assert!(files.contains("identitiesonly yes"), "{files}");
    assert!(
        step_output(&out.events, None, 3).contains("private dependency content"),
        "{}",
        step_output(&out.events, None, 3)
    );
    assert_no_key_material(&out, &[&user]);
    let sha_event = out
        .events
        .iter()
        .find(|e| {
            e["event"] == "output" && e["data"].as_str().unwrap_or("").contains("Checked out")
        })
        .expect("checkout output");
    assert!(
        sha_event["data"].as_str().unwrap_or("").contains(&main_sha),
        "{sha_event}"
    );

    // Tag: detached at the tag, CIRCLE_TAG set.
    let out = run(
        &rig,
        &scratch,
        "v1.0",
        &[("--user-key", &user)],
        &["--known-hosts", kh],
    );
    assert_eq!(out.code, 0, "{}", everything(&out));
    assert!(
        step_output(&out.events, None, 1).contains("tag=v1.0 head=detached"),
        "{}",
        step_output(&out.events, None, 1)
    );

    // Exact SHA (the older commit).
    let v1 = widget.git(&["rev-parse", "v1.0^{commit}"]);
    let out = run(
        &rig,
        &scratch,
        &v1,
        &[("--user-key", &user)],
        &["--known-hosts", kh],
    );
    assert_eq!(out.code, 0, "{}", everything(&out));
    assert!(
        step_output(&out.events, None, 1).contains("head=detached"),
        "{}",
        step_output(&out.events, None, 1)
    );
}

#[test]
fn user_key_is_offered_first_and_the_deploy_key_opens_the_project() {
    let rig = Rig::start();
    setup_repos(&rig);
    // The user's key opens another workspace only: the deploy key must be used for widget.
    // Its own submodules are then out of reach, so give widget a submodule-free commit.
    let plain = rig.work_repo("acme/widget");
    plain.write(".circleci/config.yml", &format!(
        "version: 2.1\njobs:\n  build:\n    docker: [{{image: {}, user: circleci}}]\n    steps:\n      - checkout\n      - run: ssh -G bitbucket.org | grep '^identityfile'\n",
        image("base")
    ));
    plain.commit("no submodules");
    plain.push("HEAD:refs/heads/plain");
    let user = rig.user_key(&["elsewhere"]);
    let deploy = rig.deploy_key("acme/widget");
    let scratch = Project::new("");
    let kh = rig.known_hosts_file();
    let out = run(
        &rig,
        &scratch,
        "plain",
        &[("--user-key", &user), ("--deploy-key", &deploy)],
        &["--known-hosts", kh.to_str().expect("utf8")],
    );
    assert_eq!(out.code, 0, "{}", everything(&out));
    let order = step_output(&out.events, None, 1);
    let u = order.find("id_bosun_user").expect("user key in ssh config");
    let d = order
        .find("id_bosun_deploy")
        .expect("deploy key in ssh config");
    assert!(u < d, "the user key must be offered first:\n{order}");
    assert_no_key_material(&out, &[&user, &deploy]);
}

#[test]
fn deploy_key_alone_cannot_open_the_submodule_and_says_a_user_key_is_needed() {
    let rig = Rig::start();
    setup_repos(&rig);
    let deploy = rig.deploy_key("acme/widget");
    let scratch = Project::new("");
    let kh = rig.known_hosts_file();
    let out = run(
        &rig,
        &scratch,
        "main",
        &[("--deploy-key", &deploy)],
        &["--known-hosts", kh.to_str().expect("utf8")],
    );
    assert_eq!(out.code, 2, "{}", everything(&out));
    let text = everything(&out);
    assert!(
        text.contains("acme/lib"),
        "names the repository that failed:\n{text}"
    );
    assert!(
        text.contains("user key"),
        "explains that a user key is needed:\n{text}"
    );
    assert!(text.contains("deploy key"), "{text}");
    assert_no_key_material(&out, &[&deploy]);
}

#[test]
fn private_dependency_with_a_deploy_key_fails_with_the_servers_message() {
    let rig = Rig::start();
    setup_repos(&rig);
    let plain = rig.work_repo("acme/widget");
    plain.write(".circleci/config.yml", &format!(
        "version: 2.1\njobs:\n  build:\n    docker: [{{image: {}}}]\n    steps:\n      - checkout\n      - run: git clone -q git@bitbucket.org:acme/other.git /tmp/other\n",
        image("base")
    ));
    plain.commit("clone a dependency");
    plain.push("HEAD:refs/heads/dep");
    let deploy = rig.deploy_key("acme/widget");
    let scratch = Project::new("");
    let kh = rig.known_hosts_file();
    let out = run(
        &rig,
        &scratch,
        "dep",
        &[("--deploy-key", &deploy)],
        &["--known-hosts", kh.to_str().expect("utf8")],
    );
    assert_eq!(
        out.code,
        1,
        "the checkout works, the step fails:\n{}",
        everything(&out)
    );
    assert!(
        step_output(&out.events, None, 1).contains("repository does not exist"),
        "{}",
        step_output(&out.events, None, 1)
    );
}

#[test]
fn unknown_host_key_stops_the_job_with_its_fingerprint() {
    let rig = Rig::start();
    setup_repos(&rig);
    let user = rig.user_key(&["acme"]);
    let scratch = Project::new("");
    // Only the pinned Bitbucket keys: the stand-in's key is not one of them.
    let out = run(&rig, &scratch, "main", &[("--user-key", &user)], &[]);
    assert_eq!(out.code, 2, "{}", everything(&out));
    let text = everything(&out);
    assert!(text.contains("ssh.bitbucket.org"), "{text}");
    assert!(text.contains("SHA256:"), "{text}");
    assert!(text.to_lowercase().contains("changed"), "{text}");
    assert!(harness::containers_labelled("bosun.job", &scratch.job_id).is_empty());
}

#[test]
fn keyscan_prints_the_stand_ins_keys_as_known_hosts_lines() {
    let rig = Rig::start();
    let out = std::process::Command::new(harness::bosun_bin())
        .args([
            "keyscan",
            &format!("127.0.0.1:{}", rig.port),
            "--name",
            "ssh.bitbucket.org",
        ])
        .output()
        .expect("keyscan");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let ed = rig
        .host_key_lines_for(&["ssh.bitbucket.org"])
        .lines()
        .find(|l| l.contains("ssh-ed25519"))
        .map(str::to_owned)
        .expect("stand-in ed25519 key");
    assert!(text.lines().any(|l| l == ed), "expected `{ed}` in:\n{text}");
    assert!(text.contains("# ssh-ed25519 SHA256:"), "{text}");
    let _ = Duration::from_secs(0);
}

//! Issue 12 item 4: a submodule URL in `.gitmodules` is written by whoever can push, so it
//! must not reach the agent's own disk. A repository on the stand-in whose submodule URL is a
//! directory on the agent's host (a plain path, `file://`) or another transport (`ext::`) is
//! refused with an error naming the submodule, and nothing of that directory reaches the job.

use crate::harness;

use crate::harness::{image, Project, Rig};

#[test]
fn submodules_over_local_paths_file_urls_and_other_transports_are_refused() {
    let rig = Rig::start();
    // A repository on the agent's host, as a job must never see it.
    let host_dir = tempfile::tempdir().expect("tempdir");
    let host_repo = host_dir.path().join("host-secret.git");
    let git = |args: &[&str]| harness::run(harness::git_in(host_dir.path()).args(args));
    git(&[
        "init",
        "-q",
        "-b",
        "main",
        host_repo.to_str().expect("utf8"),
    ]);
    std::fs::write(host_repo.join("HOST.txt"), "HOST-ONLY-CONTENT\n").expect("write");
    harness::run(harness::git_in(&host_repo).args(["add", "HOST.txt"]));
    harness::run(harness::git_in(&host_repo).args(["commit", "-q", "-m", "host"]));
    let sha = harness::run(harness::git_in(&host_repo).args(["rev-parse", "HEAD"]))
        .trim()
        .to_owned();

    let user = rig.user_key(&["acme"]);
    let widget = rig.work_repo("acme/widget");
    widget.write(
        ".circleci/config.yml",
        &format!(
            "version: 2.1\njobs:\n  build:\n    docker: [{{image: {}}}]\n    steps:\n      - checkout\n      - run: cat secret/HOST.txt\n",
            image("base")
        ),
    );
    widget.commit("config");
    let path = host_repo.display().to_string();
    let transports = [
        ("local", path.clone()),
        ("file", format!("file://{path}")),
        ("ext", format!("ext::sh -c cat% {path}/HOST.txt")),
    ];
    for (branch, url) in &transports {
        widget.checkout("main");
        widget.branch(branch);
        widget.add_submodule_at(url, "secret", &sha);
        widget.commit(branch);
        widget.push(&format!("HEAD:refs/heads/{branch}"));
    }
    let kh = rig.known_hosts_file();
    for (branch, url) in &transports {
        let scratch = Project::new("");
        let mut args = vec![
            "--repo".to_owned(),
            "git@bitbucket.org:acme/widget.git".to_owned(),
            "--ref".to_owned(),
            (*branch).to_owned(),
            "--user-key".to_owned(),
            user.private_path.display().to_string(),
            "--known-hosts".to_owned(),
            kh.display().to_string(),
            "--network".to_owned(),
            rig.network.clone(),
        ];
        for m in rig.vcs_host_mapping() {
            args.push("--vcs-host".into());
            args.push(m);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = scratch.execute(&args);
        let text = format!("{}\n{}", out.stdout, out.stderr);
        assert!(
            !text.contains("HOST-ONLY-CONTENT"),
            "{branch}: the host's repository reached the job:\n{text}"
        );
        assert_eq!(out.code, 2, "{branch} ({url}):\n{text}");
        assert!(
            text.contains("submodule secret") && text.contains("transport"),
            "{branch}: the error names the submodule and why:\n{text}"
        );
    }
}

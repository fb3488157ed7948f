//! The variables CircleCI sets in every job (`CI`, `CIRCLE_*`), and `~` against the
//! container's home.

use super::bootstrap::ContainerUser;
use super::JobSpec;
use crate::checkout::CheckoutOutcome;
pub use bosun_protocol::clone_url::project_names;

pub fn expand_home(path: &str, home: &str) -> String {
    let home = home.trim_end_matches('/');
    if path == "~" {
        home.to_owned()
    } else if let Some(rest) = path.strip_prefix("~/") {
        format!("{home}/{rest}")
    } else {
        path.to_owned()
    }
}

pub(super) fn builtin_env(
    spec: &JobSpec,
    user: &ContainerUser,
    workdir: &str,
    checkout: Option<&CheckoutOutcome>,
) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = Vec::new();
    let mut set = |k: &str, v: String| env.push((k.to_owned(), v));
    set("CI", "true".into());
    set("CIRCLECI", "true".into());
    set("HOME", user.home.clone());
    set("CIRCLE_JOB", spec.plan.name.clone());
    set("CIRCLE_BUILD_NUM", spec.context.build_num.to_string());
    set("CIRCLE_NODE_INDEX", spec.node_index.to_string());
    set("CIRCLE_NODE_TOTAL", spec.node_total.max(1).to_string());
    set("CIRCLE_WORKING_DIRECTORY", workdir.to_owned());
    // bash sources this file before every step (a non-interactive bash reads `$BASH_ENV`);
    // CircleCI names it in both variables.
    let bash_env = super::bootstrap::bash_env_path(&spec.id);
    set("BASH_ENV", bash_env.clone());
    set("CIRCLE_SHELL_ENV", bash_env);
    // Where the job's task data (test timings) is: the runtime directory.
    set(
        "CIRCLE_INTERNAL_TASK_DATA",
        super::bootstrap::scratch_dir(&spec.id),
    );
    let id = &spec.context.identity;
    if let Some(url) = &id.build_url {
        set("CIRCLE_BUILD_URL", url.clone());
    }
    if let Some(w) = &id.workflow_id {
        set("CIRCLE_WORKFLOW_ID", w.clone());
        // The same as the workflow's id unless a rerun reuses an earlier run's workspace.
        set("CIRCLE_WORKFLOW_WORKSPACE_ID", w.clone());
        // One id per job of the workflow (its parallel nodes share it, as on CircleCI).
        set(
            "CIRCLE_WORKFLOW_JOB_ID",
            super::identity::uuid_from(&format!("job/{w}/{}", spec.plan.name)),
        );
    }
    for (k, v) in [
        ("CIRCLE_PIPELINE_ID", &id.pipeline_id),
        ("CIRCLE_PROJECT_ID", &id.project_id),
        ("CIRCLE_ORGANIZATION_ID", &id.organization_id),
        ("CIRCLE_USERNAME", &id.username),
    ] {
        if let Some(v) = v {
            set(k, v.clone());
        }
    }
    if let Some(n) = id.previous_build_num {
        set("CIRCLE_PREVIOUS_BUILD_NUM", n.to_string());
    }
    if let Some(pr) = &spec.context.pull_request {
        // CircleCI lists every pull request of the branch in CIRCLE_PULL_REQUESTS (comma-
        // separated) and picks one for CIRCLE_PULL_REQUEST; a job here builds exactly one.
        set("CIRCLE_PULL_REQUEST", pr.url.clone());
        set("CIRCLE_PULL_REQUESTS", pr.url.clone());
        // Only for a fork, as CircleCI does: scripts test it to skip what a fork's build must
        // not do (deploys, secrets).
        if pr.fork {
            set("CIRCLE_PR_NUMBER", pr.number.to_string());
        }
    }
    if let Some(src) = &spec.context.source {
        set("CIRCLE_REPOSITORY_URL", src.url.clone());
        if let Some((owner, repo)) = project_names(&src.url) {
            set("CIRCLE_PROJECT_USERNAME", owner);
            set("CIRCLE_PROJECT_REPONAME", repo);
        }
    }
    match checkout {
        Some(c) => {
            set("CIRCLE_SHA1", c.sha.clone());
            // An agent checks out the pipeline's commit, which names no branch: the branch
            // (or tag) is then the one the pipeline builds.
            let (branch, tag) = &spec.context.git_ref;
            if let Some(b) = c.branch.as_ref().or(branch.as_ref()) {
                set("CIRCLE_BRANCH", b.clone());
            }
            if let Some(t) = c.tag.as_ref().or(tag.as_ref()) {
                set("CIRCLE_TAG", t.clone());
            }
        }
        None => {
            // No checkout step: still tell the job what was asked for.
            if let Some(r) = spec
                .context
                .source
                .as_ref()
                .and_then(|s| s.reference.clone())
            {
                if r.len() == 40 && r.chars().all(|c| c.is_ascii_hexdigit()) {
                    set("CIRCLE_SHA1", r);
                } else {
                    set("CIRCLE_BRANCH", r);
                }
            }
        }
    }
    env
}

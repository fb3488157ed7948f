//! A project's variables and switches as its settings page changes them, on both stores:
//! a value set there is sealed as `project add --secret-env` seals it, so a claim opens it
//! to the same bytes.

use super::*;
use crate::model::project_settings::Switches;
use crate::model::ssh_policy::SshPolicy;

both!(
    variables_set_on_the_page_reach_the_claim_as_given,
    |_d, s| {
        let value = "s3cr3t value é\u{1f511} with = and spaces";
        s.set_project_var("acme/widget", "DEPLOY_TOKEN", value, true)
            .expect("set");
        s.set_project_var("acme/widget", "REGION", "eu-west-1", false)
            .expect("set");
        let vars = s.project_vars("acme/widget").expect("vars");
        assert_eq!(
            vars.iter()
                .map(|v| (v.name.as_str(), v.value.as_str(), v.secret))
                .collect::<Vec<_>>(),
            [
                ("DEPLOY_TOKEN", value, true),
                ("REGION", "eu-west-1", false)
            ]
        );
        job(s);
        let claimed = claim_next(s);
        let token = claimed
            .env
            .iter()
            .find(|e| e.name == "DEPLOY_TOKEN")
            .expect("in the claim");
        assert_eq!(
            (token.value.as_bytes(), token.secret),
            (value.as_bytes(), true)
        );
        // Replaced: the new value, once; a variable of `project add --env` may become secret.
        s.set_project_var("acme/widget", "DEPLOY_TOKEN", "second", true)
            .expect("replace");
        s.set_project_var("acme/widget", "REGION", "us-east-1", true)
            .expect("replace");
        let vars = s.project_vars("acme/widget").expect("vars");
        assert_eq!(
            vars.iter()
                .map(|v| (v.name.as_str(), v.value.as_str(), v.secret))
                .collect::<Vec<_>>(),
            [
                ("DEPLOY_TOKEN", "second", true),
                ("REGION", "us-east-1", true)
            ]
        );
        assert!(s.remove_project_var("acme/widget", "REGION").expect("rm"));
        assert!(!s
            .remove_project_var("acme/widget", "REGION")
            .expect("rm again"));
        assert_eq!(s.project_vars("acme/widget").expect("vars").len(), 1);
        assert!(s.set_project_var("acme/none", "K", "v", true).is_err());
        assert!(s.project_vars("acme/none").is_err());
    }
);

both!(
    a_projects_switches_read_as_project_set_left_them,
    |_d, s| {
        assert_eq!(s.project_switches("acme/none").expect("none"), None);
        let (slug, sw) = s
            .project_switches("acme/widget")
            .expect("read")
            .expect("project");
        assert_eq!(slug, "acme/widget");
        assert_eq!(
            sw,
            Switches {
                public: false,
                public_badges: false,
                ssh_policy: SshPolicy::WithoutUserKey
            }
        );
        s.set_project_public("acme/widget", true).expect("public");
        s.set_public_badges("acme/widget", true).expect("badges");
        s.set_ssh_policy("acme/widget", SshPolicy::Refuse)
            .expect("policy");
        let (_, sw) = s
            .project_switches("acme/widget")
            .expect("read")
            .expect("project");
        assert_eq!(
            sw,
            Switches {
                public: true,
                public_badges: true,
                ssh_policy: SshPolicy::Refuse
            }
        );
    }
);

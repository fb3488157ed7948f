//! Who may SSH into a rerun, the stored part, on both stores: a person's keys, a project's
//! user key owner and SSH policy, and a rerun with SSH that runs without the user key.

use super::*;
use crate::model::ssh_policy::{SshPolicy, UserKey, UserKeyFacts};
use bosun_protocol::WireKeyRole;

both!(a_persons_ssh_keys_are_theirs_alone, |_d, s| {
    let ann = s.person_logged_in("{ann}", "ann", "Ann").expect("login");
    let bob = s.person_logged_in("{bob}", "bob", "Bob").expect("login");
    assert!(s.person_ssh_keys(ann.id).expect("keys").is_empty());
    let k = s
        .add_person_ssh_key(ann.id, "ssh-ed25519 AAAA ann@laptop", "SHA256:a", false)
        .expect("add");
    s.add_person_ssh_key(ann.id, "ssh-ed25519 BBBB", "SHA256:b", true)
        .expect("add");
    // The same key twice is refused; another person may hold it too.
    let e = s
        .add_person_ssh_key(ann.id, "ssh-ed25519 AAAA", "SHA256:a", false)
        .expect_err("twice");
    assert!(e.to_string().contains("already"), "{e}");
    s.add_person_ssh_key(bob.id, "ssh-ed25519 AAAA", "SHA256:a", false)
        .expect("bob's");
    let keys = s.person_ssh_keys(ann.id).expect("keys");
    assert_eq!(
        keys.iter()
            .map(|k| (k.fingerprint.as_str(), k.from_bitbucket))
            .collect::<Vec<_>>(),
        [("SHA256:a", false), ("SHA256:b", true)]
    );
    assert_eq!(keys[0], k);
    // Bob cannot remove Ann's key by its id.
    assert!(!s.remove_person_ssh_key(bob.id, k.id).expect("rm"));
    assert!(s.remove_person_ssh_key(ann.id, k.id).expect("rm"));
    assert!(!s.remove_person_ssh_key(ann.id, k.id).expect("rm again"));
    assert_eq!(s.person_ssh_keys(ann.id).expect("keys").len(), 1);
    assert_eq!(s.person_ssh_keys(bob.id).expect("keys").len(), 1);
    // Keys read from Bitbucket replace those read before; a key added on the page stays
    // and is not added twice.
    let read = |keys: &[(&str, &str)]| {
        let keys: Vec<(String, String)> = keys
            .iter()
            .map(|(k, f)| (k.to_string(), f.to_string()))
            .collect();
        s.replace_bitbucket_ssh_keys(bob.id, &keys)
            .expect("replace")
    };
    assert_eq!(
        read(&[
            ("ssh-ed25519 AAAA", "SHA256:a"),
            ("ssh-ed25519 EEEE", "SHA256:e")
        ]),
        1
    );
    assert_eq!(read(&[("ssh-ed25519 FFFF", "SHA256:f")]), 1);
    let fps: Vec<(String, bool)> = s
        .person_ssh_keys(bob.id)
        .expect("keys")
        .into_iter()
        .map(|k| (k.fingerprint, k.from_bitbucket))
        .collect();
    assert_eq!(
        fps,
        [
            ("SHA256:a".to_owned(), false),
            ("SHA256:f".to_owned(), true)
        ]
    );
    for i in 1..MAX_PERSON_KEYS {
        s.add_person_ssh_key(ann.id, "ssh-ed25519 CCCC", &format!("SHA256:c{i}"), false)
            .expect("add");
    }
    let e = s
        .add_person_ssh_key(ann.id, "ssh-ed25519 DDDD", "SHA256:d", false)
        .expect_err("too many");
    assert!(e.to_string().contains("at most"), "{e}");
});

both!(
    a_rerun_with_ssh_without_the_user_key_is_claimed_without_it,
    |_d, s| {
        let first = job(s);
        // The widget has a user key; its owner and policy start unrecorded and the default.
        assert_eq!(
            s.user_key_facts(first).expect("facts"),
            Some(UserKeyFacts {
                given: true,
                owner: None,
                policy: SshPolicy::WithoutUserKey
            })
        );
        s.set_user_key_owner("acme/widget", Some("{ann}"))
            .expect("owner");
        s.set_ssh_policy("acme/widget", SshPolicy::Refuse)
            .expect("policy");
        let facts = s.user_key_facts(first).expect("facts").expect("job");
        assert_eq!(facts.owner.as_deref(), Some("{ann}"));
        assert_eq!(facts.policy, SshPolicy::Refuse);
        assert!(s.set_ssh_policy("acme/none", SshPolicy::Refuse).is_err());
        assert_eq!(s.user_key_facts(999_999).expect("facts"), None);
        assert_eq!(s.ssh_grant(first).expect("grant"), None);

        // The first run is claimed with both of the project's keys... the user key here.
        let claimed = claim_next(s);
        assert!(claimed.keys.iter().any(|k| k.role == WireKeyRole::User));
        let keys = vec!["ssh-ed25519 AAAA bob".to_owned()];
        let without = s
            .rerun_with_ssh(first, &keys, "bob", UserKey::Withheld)
            .expect("rerun");
        let with = s
            .rerun_with_ssh(first, &keys, "ann", UserKey::Given)
            .expect("rerun");
        let g = s.ssh_grant(without).expect("grant").expect("a grant");
        assert_eq!(
            (g.by.as_deref(), g.user_key, g.owner.as_deref()),
            (Some("bob"), UserKey::Withheld, Some("{ann}"))
        );
        let w = claim_next(s);
        assert_eq!(w.id, without.to_string());
        assert_eq!(w.ssh_keys, keys);
        assert!(
            w.keys.iter().all(|k| k.role != WireKeyRole::User),
            "the user key was withheld"
        );
        let w = claim_next(s);
        assert_eq!(w.id, with.to_string());
        assert!(w.keys.iter().any(|k| k.role == WireKeyRole::User));
        assert_eq!(
            s.ssh_grant(with).expect("grant").map(|g| g.user_key),
            Some(UserKey::Given)
        );
        s.set_user_key_owner("acme/widget", None).expect("forget");
        assert_eq!(
            s.user_key_facts(first).expect("facts").expect("job").owner,
            None
        );
    }
);

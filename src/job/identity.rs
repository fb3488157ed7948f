//! Who and what a job is beyond its config: the ids, names and links CircleCI puts in the
//! `CIRCLE_*` variables. The coordinator (through the agent) gives what it knows; ids nobody
//! gave are derived, stable for what they name (a project keeps its `CIRCLE_PROJECT_ID`), in
//! CircleCI's format (a lower-case UUID).

use sha2::{Digest, Sha256};

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JobIdentity {
    /// The job's page (`CIRCLE_BUILD_URL`): on the coordinator; none for `bosun execute`.
    pub build_url: Option<String>,
    pub pipeline_id: Option<String>,
    pub workflow_id: Option<String>,
    /// The user who started the pipeline (`CIRCLE_USERNAME`).
    pub username: Option<String>,
    /// The largest earlier job number of the branch (`CIRCLE_PREVIOUS_BUILD_NUM`).
    pub previous_build_num: Option<u64>,
    pub project_id: Option<String>,
    pub organization_id: Option<String>,
}

/// A UUID (version 4 layout, variant 1) made from `seed` by SHA-256: the same seed gives the
/// same id, different seeds different ids.
pub fn uuid_from(seed: &str) -> String {
    let d = Sha256::digest(seed.as_bytes());
    let mut b = [0u8; 16];
    b.copy_from_slice(&d[..16]);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_ids_are_stable_uuids() {
        let a = uuid_from("project/x");
        assert_eq!(a, uuid_from("project/x"));
        assert_ne!(a, uuid_from("project/y"));
        let re = regex::Regex::new(
            "^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$",
        )
        .expect("regex");
        assert!(re.is_match(&a), "{a}");
    }
}

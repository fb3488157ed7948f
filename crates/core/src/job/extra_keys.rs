//! `add_ssh_keys`: the job's additional keys, installed on demand.

use super::archive::{once_stream, TarBuilder};
use super::bootstrap::vcs_host_names;
use super::step_sequence::StepContext;
use crate::ssh::{self, SshKey};

/// Install the chosen additional keys (all when no fingerprint is given) as
/// `~/.ssh/id_rsa_<fingerprint>`, offered for every host after the job's own keys.
pub(super) async fn add_ssh_keys(
    ctx: &StepContext,
    fingerprints: &[String],
    say: &(dyn Fn(String) + Send + Sync),
) -> Result<(), String> {
    let (executor, spec) = (ctx.executor.as_ref(), &ctx.spec);
    let candidates: Vec<&SshKey> = spec
        .context
        .additional_keys
        .iter()
        .chain(spec.context.access.keys.iter())
        .collect();
    let normalize = |f: &str| {
        f.trim()
            .trim_start_matches("MD5:")
            .replace(':', "")
            .to_lowercase()
    };
    let mut chosen: Vec<&SshKey> = Vec::new();
    if fingerprints.is_empty() {
        chosen.extend(spec.context.additional_keys.iter());
    } else {
        for fp in fingerprints {
            let found = candidates.iter().find(|k| {
                k.public_fingerprint
                    .as_deref()
                    .is_some_and(|kf| kf == fp.trim() || normalize(kf) == normalize(fp))
            });
            match found {
                Some(k) => chosen.push(k),
                None => {
                    let known: Vec<String> = candidates.iter().map(|k| k.describe()).collect();
                    return Err(format!(
                        "no key with fingerprint {fp} was given to this job (keys: {}); add it with --ssh-key FILE",
                        if known.is_empty() { "none".to_owned() } else { known.join(", ") }
                    ));
                }
            }
        }
    }
    if chosen.is_empty() {
        say("No additional SSH keys to add".to_owned());
        return Ok(());
    }
    let home = ctx.user.home.trim_end_matches('/');
    let mut tar = TarBuilder::new(ctx.user.uid, ctx.user.gid);
    let mut config = String::from("\n# add_ssh_keys\nHost *\n");
    let mut names = Vec::new();
    for (n, key) in chosen.iter().enumerate() {
        let tag: String = key
            .public_fingerprint
            .as_deref()
            .unwrap_or("key")
            .chars()
            .filter(|c| c.is_ascii_alphanumeric())
            .take(16)
            .collect();
        let name = format!("id_rsa_{tag}_{n}");
        let mut body = key.private.expose().as_str().to_owned();
        if !body.ends_with('\n') {
            body.push('\n');
        }
        tar.file(&format!("{home}/.ssh/{name}"), body.as_bytes(), 0o600);
        config.push_str(&format!("  IdentityFile ~/.ssh/{name}\n"));
        names.push(format!("{} as ~/.ssh/{name}", key.describe()));
    }
    // The job's own ssh config first (its Host blocks win), then the new keys for any host.
    let vcs_hosts = vcs_host_names(spec);
    let files = ssh::container_ssh_files(
        &spec.context.access.keys,
        &spec.context.access.known_hosts,
        &vcs_hosts,
    );
    let base = files
        .files
        .iter()
        .find(|(n, _, _)| n == "config")
        .map(|(_, b, _)| String::from_utf8_lossy(b).into_owned())
        .unwrap_or_default();
    tar.file(
        &format!("{home}/.ssh/config"),
        format!("{base}{config}").as_bytes(),
        0o644,
    );
    let bytes = zeroize::Zeroizing::new(tar.finish().map_err(|e| e.to_string())?);
    executor
        .upload_tar(&ctx.container, "/", once_stream(&bytes))
        .await
        .map_err(|e| e.to_string())?;
    for n in names {
        say(format!("Added {n}"));
    }
    Ok(())
}

//! `bosun coordinator project notify` (e-mail addresses) and `project webhook` (outgoing
//! webhooks): a project's notification targets. The sender is `serve`'s (`crate::notify`);
//! what each event means is `model::notify`.

use super::{read_file, CoordError, DataArg, Result};
use crate::model::notify::{check_webhook_url, shown_url, Events, On, TargetKind};
use crate::store::{NewTarget, TargetRow};
use std::path::PathBuf;

#[derive(clap::Subcommand, Debug)]
pub enum NotifyCommand {
    /// Mail ADDR when a pipeline fails (`failed`), on the first success after a failure
    /// (`fixed`), and/or on every pipeline of the default branch (`default-branch`);
    /// default `failed,fixed`.
    Add {
        #[command(flatten)]
        data: DataArg,
        #[arg(long)]
        slug: String,
        #[arg(long, value_name = "ADDR")]
        email: String,
        #[arg(long, value_name = "EVENTS", default_value = "failed,fixed")]
        on: String,
    },
    /// The project's addresses, their events, pending mail and last error.
    Ls {
        #[command(flatten)]
        data: DataArg,
        #[arg(long)]
        slug: String,
    },
    /// Stop mailing ADDR (its undelivered mail is dropped).
    Rm {
        #[command(flatten)]
        data: DataArg,
        #[arg(long)]
        slug: String,
        #[arg(long, value_name = "ADDR")]
        email: String,
    },
}

#[derive(clap::Subcommand, Debug)]
pub enum WebhookCommand {
    /// Call URL (http or https) when a workflow or job completes, with a JSON body in
    /// CircleCI's outbound-webhook shape signed with `circleci-signature: v1=<HMAC-SHA256>`.
    /// The signing secret is made and printed once, or read from `--secret-file`.
    Add {
        #[command(flatten)]
        data: DataArg,
        #[arg(long)]
        slug: String,
        url: String,
        #[arg(
            long,
            value_name = "EVENTS",
            default_value = "workflow-completed,job-completed"
        )]
        events: String,
        /// The webhook's name (its `webhook.name` in each body).
        #[arg(long, default_value = "")]
        name: String,
        /// A file holding the signing secret (one line) instead of a new one.
        #[arg(long, value_name = "FILE")]
        secret_file: Option<PathBuf>,
    },
    /// The project's webhooks (no secrets), their events, pending calls and last error.
    Ls {
        #[command(flatten)]
        data: DataArg,
        #[arg(long)]
        slug: String,
    },
    /// Remove a webhook by its URL or id (its undelivered calls are dropped).
    Rm {
        #[command(flatten)]
        data: DataArg,
        #[arg(long)]
        slug: String,
        which: String,
    },
}

fn line(t: &TargetRow) -> String {
    let shown = match t.kind {
        TargetKind::Email => t.address.clone(),
        TargetKind::Webhook => shown_url(&t.address),
    };
    let mut s = format!(
        "{}  {}  {}  pending {}",
        t.uuid,
        crate::printable(&shown),
        t.events,
        t.pending
    );
    if !t.name.is_empty() {
        s.push_str(&format!("  name {}", crate::printable(&t.name)));
    }
    if let (Some(e), Some(at)) = (&t.last_error, t.last_error_at) {
        s.push_str(&format!(
            "  last error {}: {}",
            bosun_protocol::time::iso_utc(at),
            crate::printable(e)
        ));
    }
    s
}

pub fn notify(c: NotifyCommand, print: &mut dyn FnMut(String)) -> Result<()> {
    match c {
        NotifyCommand::Add {
            data,
            slug,
            email,
            on,
        } => {
            let address = crate::notify::mail::parse_address(&email)
                .map_err(|e| CoordError::Invalid(e.to_string()))?;
            let on = On::parse(&on).map_err(|e| CoordError::Invalid(e.to_string()))?;
            let store = data.open()?;
            let t = store.add_notify_target(&NewTarget {
                project: &slug,
                kind: TargetKind::Email,
                address: address.as_ref(),
                events: &on.to_string(),
                name: "",
                secret: None,
            })?;
            print(line(&t));
            Ok(())
        }
        NotifyCommand::Ls { data, slug } => {
            let store = data.open()?;
            for t in store.notify_targets(&slug)? {
                if t.kind == TargetKind::Email {
                    print(line(&t));
                }
            }
            Ok(())
        }
        NotifyCommand::Rm { data, slug, email } => {
            let store = data.open()?;
            if store.remove_notify_target(&slug, TargetKind::Email, email.trim())? {
                Ok(())
            } else {
                Err(CoordError::NotFound(format!(
                    "{slug} mails no {}",
                    crate::printable(&email)
                )))
            }
        }
    }
}

pub fn webhook(c: WebhookCommand, print: &mut dyn FnMut(String)) -> Result<()> {
    match c {
        WebhookCommand::Add {
            data,
            slug,
            url,
            events,
            name,
            secret_file,
        } => {
            check_webhook_url(&url).map_err(CoordError::Invalid)?;
            let events = Events::parse(&events).map_err(|e| CoordError::Invalid(e.to_string()))?;
            if name.chars().any(crate::is_unsafe_char) || name.len() > 200 {
                return Err(CoordError::Invalid(
                    "--name: at most 200 characters, no control characters".into(),
                ));
            }
            let (secret, made) = match &secret_file {
                Some(f) => {
                    let text = zeroize::Zeroizing::new(read_file(f)?);
                    let s = text.lines().next().unwrap_or("").trim().to_owned();
                    if s.is_empty() {
                        return Err(CoordError::Invalid(format!(
                            "{}: the secret file is empty",
                            f.display()
                        )));
                    }
                    (zeroize::Zeroizing::new(s), false)
                }
                None => (zeroize::Zeroizing::new(crate::text::random_hex(32)?), true),
            };
            let store = data.open()?;
            let t = store.add_notify_target(&NewTarget {
                project: &slug,
                kind: TargetKind::Webhook,
                address: &url,
                events: &events.to_string(),
                name: &name,
                secret: Some(&secret),
            })?;
            print(line(&t));
            if made {
                // Shown once: the store keeps it sealed and never prints it again.
                print(format!("signing secret: {}", secret.as_str()));
            }
            Ok(())
        }
        WebhookCommand::Ls { data, slug } => {
            let store = data.open()?;
            for t in store.notify_targets(&slug)? {
                if t.kind == TargetKind::Webhook {
                    print(line(&t));
                }
            }
            Ok(())
        }
        WebhookCommand::Rm { data, slug, which } => {
            let store = data.open()?;
            if store.remove_notify_target(&slug, TargetKind::Webhook, which.trim())? {
                Ok(())
            } else {
                Err(CoordError::NotFound(format!(
                    "{slug} has no webhook {}",
                    crate::printable(&shown_url(&which))
                )))
            }
        }
    }
}

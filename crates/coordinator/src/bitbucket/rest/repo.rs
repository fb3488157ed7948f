//! The calls follow, unfollow and user keys make, in Bitbucket Cloud's and Data Center's
//! shapes:
//!
//! | what | Cloud (`{api}` = `https://api.bitbucket.org/2.0`) | Data Center (`{base}` = the server) |
//! |---|---|---|
//! | repository | `GET {api}/repositories/{ws}/{repo}` | `GET {base}/rest/api/1.0/projects/{KEY}/repos/{slug}` (+ `…/branches/default`) |
//! | deploy keys | `GET`/`POST {api}/repositories/{ws}/{repo}/deploy-keys` `{key, label}`, `DELETE …/{id}` | `GET`/`POST {base}/rest/keys/1.0/projects/{KEY}/repos/{slug}/ssh` `{key: {text}, permission: REPO_READ}`, `DELETE …/{id}` |
//! | webhooks | `GET`/`POST {api}/repositories/{ws}/{repo}/hooks` `{description, url, active, events, secret}`, `PUT`/`DELETE …/{uuid}` | `GET`/`POST {base}/rest/api/1.0/projects/{KEY}/repos/{slug}/webhooks` `{name, url, active, events, configuration: {secret}}`, `PUT`/`DELETE …/{id}` |
//! | user keys | `GET`/`POST {api}/users/{user}/ssh-keys` `{key, label}`, `DELETE …/{uuid}` | `GET`/`POST {base}/rest/ssh/1.0/keys?user={user}` `{text, label}`, `DELETE {base}/rest/ssh/1.0/keys/{id}` |
//!
//! Answers are read field by field; a field missing where Bosun needs it is an error that
//! names the call, never a panic.

use super::client::{Client, Paging, RestError};
use serde_json::{json, Value};

/// The events a Cloud webhook sends Bosun: what the intake builds.
pub const CLOUD_EVENTS: &[&str] = &[
    "repo:push",
    "pullrequest:created",
    "pullrequest:updated",
    "pullrequest:fulfilled",
    "pullrequest:rejected",
];

/// The events a Data Center webhook sends Bosun (`bitbucket::data_center` reads them).
pub const DATA_CENTER_EVENTS: &[&str] = &[
    "repo:refs_changed",
    "pr:opened",
    "pr:from_ref_updated",
    "pr:merged",
    "pr:declined",
    "pr:deleted",
];

/// A repository on Bitbucket, and where its API is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Remote {
    Cloud {
        api: String,
        workspace: String,
        repo: String,
    },
    DataCenter {
        /// The server's base URL (`https://bitbucket.example.com`).
        base: String,
        /// `host[:port]` of the base URL, as a Data Center project's key names it.
        server: String,
        project: String,
        slug: String,
    },
}

/// What follow reads of the repository.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Repository {
    /// The project's stable key: Cloud's UUID, or `bitbucket-dc:SERVER/ID`.
    pub key: String,
    /// `workspace/repo` (Cloud) or `PROJECT/slug` (Data Center).
    pub slug: String,
    pub main_branch: Option<String>,
    /// The SSH clone URL.
    pub clone_url: String,
}

/// An SSH key on Bitbucket (a repository's deploy key, or a user's key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteKey {
    pub id: String,
    pub label: String,
    /// `ssh-ed25519 AAAA… [comment]`.
    pub key: String,
}

/// A repository's webhook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hook {
    pub id: String,
    pub url: String,
    pub active: bool,
    pub events: Vec<String>,
}

/// A path segment, percent-encoded but for RFC 3986's unreserved characters.
pub fn segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn shape(call: &str, what: &str) -> RestError {
    RestError::Shape {
        call: call.to_owned(),
        what: what.to_owned(),
    }
}

fn text(v: &Value, path: &[&str]) -> Option<String> {
    let mut cur = v;
    for p in path {
        cur = cur.get(p)?;
    }
    match cur {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// The `ssh` entry of `links.clone`.
fn ssh_clone(v: &Value) -> Option<String> {
    v.get("links")?
        .get("clone")?
        .as_array()?
        .iter()
        .find(|c| c.get("name").and_then(|n| n.as_str()) == Some("ssh"))
        .and_then(|c| c.get("href")?.as_str().map(str::to_owned))
}

impl Remote {
    /// The API root of the repository.
    fn repo_url(&self) -> String {
        match self {
            Remote::Cloud {
                api,
                workspace,
                repo,
            } => format!(
                "{}/repositories/{}/{}",
                api.trim_end_matches('/'),
                segment(workspace),
                segment(repo)
            ),
            Remote::DataCenter {
                base,
                project,
                slug,
                ..
            } => format!(
                "{}/rest/api/1.0/projects/{}/repos/{}",
                base.trim_end_matches('/'),
                segment(project),
                segment(slug)
            ),
        }
    }

    fn keys_url(&self) -> String {
        match self {
            Remote::Cloud { .. } => format!("{}/deploy-keys", self.repo_url()),
            Remote::DataCenter {
                base,
                project,
                slug,
                ..
            } => format!(
                "{}/rest/keys/1.0/projects/{}/repos/{}/ssh",
                base.trim_end_matches('/'),
                segment(project),
                segment(slug)
            ),
        }
    }

    fn hooks_url(&self) -> String {
        match self {
            Remote::Cloud { .. } => format!("{}/hooks", self.repo_url()),
            Remote::DataCenter { .. } => format!("{}/webhooks", self.repo_url()),
        }
    }

    fn paging(&self) -> Paging {
        match self {
            Remote::Cloud { .. } => Paging::Cloud,
            Remote::DataCenter { .. } => Paging::DataCenter,
        }
    }

    /// The events Bosun's webhook asks for.
    pub fn events(&self) -> &'static [&'static str] {
        match self {
            Remote::Cloud { .. } => CLOUD_EVENTS,
            Remote::DataCenter { .. } => DATA_CENTER_EVENTS,
        }
    }

    pub async fn repository(&self, c: &Client) -> Result<Repository, RestError> {
        let url = self.repo_url();
        let v = c.get(&url).await?;
        let call = format!("GET {url}");
        match self {
            Remote::Cloud { .. } => Ok(Repository {
                key: text(&v, &["uuid"]).ok_or_else(|| shape(&call, "no `uuid`"))?,
                slug: text(&v, &["full_name"]).ok_or_else(|| shape(&call, "no `full_name`"))?,
                main_branch: text(&v, &["mainbranch", "name"]),
                clone_url: ssh_clone(&v).ok_or_else(|| shape(&call, "no ssh clone link"))?,
            }),
            Remote::DataCenter { server, .. } => {
                let id = v
                    .get("id")
                    .and_then(|i| i.as_u64())
                    .ok_or_else(|| shape(&call, "no numeric `id`"))?;
                let project = text(&v, &["project", "key"])
                    .ok_or_else(|| shape(&call, "no `project.key`"))?;
                let slug = text(&v, &["slug"]).ok_or_else(|| shape(&call, "no `slug`"))?;
                // An empty repository has no default branch yet: the project's setting
                // (`main` unless set) stands until a push names it.
                let main_branch = match c.get(&format!("{url}/branches/default")).await {
                    Ok(b) => text(&b, &["displayId"]),
                    Err(e) if e.status() == Some(404) || e.status() == Some(204) => None,
                    Err(e) => return Err(e),
                };
                Ok(Repository {
                    key: crate::bitbucket::data_center::key(server, id),
                    slug: format!("{project}/{slug}"),
                    main_branch,
                    clone_url: ssh_clone(&v).ok_or_else(|| shape(&call, "no ssh clone link"))?,
                })
            }
        }
    }

    pub async fn deploy_keys(&self, c: &Client) -> Result<Vec<RemoteKey>, RestError> {
        let url = self.keys_url();
        let values = c.list(&url, self.paging()).await?;
        Ok(values
            .iter()
            .filter_map(|v| match self {
                Remote::Cloud { .. } => Some(RemoteKey {
                    id: text(v, &["id"])?,
                    label: text(v, &["label"]).unwrap_or_default(),
                    key: text(v, &["key"])?,
                }),
                Remote::DataCenter { .. } => Some(RemoteKey {
                    id: text(v, &["key", "id"])?,
                    label: text(v, &["key", "label"]).unwrap_or_default(),
                    key: text(v, &["key", "text"])?,
                }),
            })
            .collect())
    }

    /// Add a read-only deploy key: its id.
    pub async fn add_deploy_key(
        &self,
        c: &Client,
        public: &str,
        label: &str,
    ) -> Result<String, RestError> {
        let url = self.keys_url();
        let (body, id_at): (Value, &[&str]) = match self {
            Remote::Cloud { .. } => (json!({"key": public, "label": label}), &["id"]),
            // Data Center takes the label from the key's comment.
            Remote::DataCenter { .. } => (
                json!({"key": {"text": format!("{} {label}", key_material(public))}, "permission": "REPO_READ"}),
                &["key", "id"],
            ),
        };
        let v = c.post(&url, &body).await?;
        text(&v, id_at).ok_or_else(|| shape(&format!("POST {url}"), "no key id"))
    }

    pub async fn delete_deploy_key(&self, c: &Client, id: &str) -> Result<(), RestError> {
        c.delete(&format!("{}/{}", self.keys_url(), segment(id)))
            .await
    }

    pub async fn hooks(&self, c: &Client) -> Result<Vec<Hook>, RestError> {
        let url = self.hooks_url();
        let values = c.list(&url, self.paging()).await?;
        let id_field = match self {
            Remote::Cloud { .. } => "uuid",
            Remote::DataCenter { .. } => "id",
        };
        Ok(values
            .iter()
            .filter_map(|v| {
                Some(Hook {
                    id: text(v, &[id_field])?,
                    url: text(v, &["url"]).unwrap_or_default(),
                    active: v.get("active").and_then(|a| a.as_bool()).unwrap_or(false),
                    events: v
                        .get("events")
                        .and_then(|e| e.as_array())
                        .map(|a| {
                            a.iter()
                                .filter_map(|e| e.as_str().map(str::to_owned))
                                .collect()
                        })
                        .unwrap_or_default(),
                })
            })
            .collect())
    }

    fn hook_body(&self, url: &str, secret: &str) -> Value {
        match self {
            Remote::Cloud { .. } => json!({
                "description": "Bosun", "url": url, "active": true,
                "events": CLOUD_EVENTS, "secret": secret,
            }),
            Remote::DataCenter { .. } => json!({
                "name": "Bosun", "url": url, "active": true,
                "events": DATA_CENTER_EVENTS, "configuration": {"secret": secret},
            }),
        }
    }

    /// Create Bosun's webhook: its id.
    pub async fn add_hook(&self, c: &Client, url: &str, secret: &str) -> Result<String, RestError> {
        let hooks = self.hooks_url();
        let v = c.post(&hooks, &self.hook_body(url, secret)).await?;
        let id_field = match self {
            Remote::Cloud { .. } => "uuid",
            Remote::DataCenter { .. } => "id",
        };
        text(&v, &[id_field]).ok_or_else(|| shape(&format!("POST {hooks}"), "no webhook id"))
    }

    /// Make webhook `id` Bosun's again: its URL, events, active, and this secret.
    pub async fn update_hook(
        &self,
        c: &Client,
        id: &str,
        url: &str,
        secret: &str,
    ) -> Result<(), RestError> {
        c.put(
            &format!("{}/{}", self.hooks_url(), segment(id)),
            &self.hook_body(url, secret),
        )
        .await
        .map(drop)
    }

    pub async fn delete_hook(&self, c: &Client, id: &str) -> Result<(), RestError> {
        c.delete(&format!("{}/{}", self.hooks_url(), segment(id)))
            .await
    }
}

/// A Bitbucket account's SSH keys: on Cloud `{api}/users/{user}/ssh-keys` (`user` is the
/// account's name or `{uuid}`), on Data Center `{base}/rest/ssh/1.0/keys?user={user}` (the
/// user's slug; an admin's token may manage another user's keys).
pub struct UserKeys {
    /// The repository's remote: where its server's API is.
    pub remote: Remote,
    pub user: String,
}

impl UserKeys {
    fn url(&self) -> String {
        match &self.remote {
            Remote::Cloud { api, .. } => format!(
                "{}/users/{}/ssh-keys",
                api.trim_end_matches('/'),
                segment(&self.user)
            ),
            Remote::DataCenter { base, .. } => format!(
                "{}/rest/ssh/1.0/keys?user={}",
                base.trim_end_matches('/'),
                segment(&self.user)
            ),
        }
    }

    fn key_url(&self, id: &str) -> String {
        match &self.remote {
            Remote::Cloud { .. } => format!("{}/{}", self.url(), segment(id)),
            Remote::DataCenter { base, .. } => format!(
                "{}/rest/ssh/1.0/keys/{}",
                base.trim_end_matches('/'),
                segment(id)
            ),
        }
    }

    /// Where a key's id is in an answer: Cloud's `uuid`, Data Center's numeric `id`.
    fn id_field(&self) -> &'static str {
        match self.remote {
            Remote::Cloud { .. } => "uuid",
            Remote::DataCenter { .. } => "id",
        }
    }

    pub async fn list(&self, c: &Client) -> Result<Vec<RemoteKey>, RestError> {
        let values = c.list(&self.url(), self.remote.paging()).await?;
        let key_field = match self.remote {
            Remote::Cloud { .. } => "key",
            Remote::DataCenter { .. } => "text",
        };
        Ok(values
            .iter()
            .filter_map(|v| {
                let key = text(v, &[key_field])?;
                // Data Center versions without labels keep the key's comment.
                let label = text(v, &["label"])
                    .filter(|l| !l.is_empty())
                    .or_else(|| key.splitn(3, ' ').nth(2).map(str::to_owned))
                    .unwrap_or_default();
                Some(RemoteKey {
                    id: text(v, &[self.id_field()])?,
                    label,
                    key,
                })
            })
            .collect())
    }

    /// Add a key to the account: its id.
    pub async fn add(&self, c: &Client, public: &str, label: &str) -> Result<String, RestError> {
        let url = self.url();
        let body = match self.remote {
            Remote::Cloud { .. } => json!({"key": public, "label": label}),
            Remote::DataCenter { .. } => {
                json!({"text": format!("{} {label}", key_material(public)), "label": label})
            }
        };
        let v = c.post(&url, &body).await?;
        text(&v, &[self.id_field()]).ok_or_else(|| shape(&format!("POST {url}"), "no key id"))
    }

    pub async fn delete(&self, c: &Client, id: &str) -> Result<(), RestError> {
        c.delete(&self.key_url(id)).await
    }
}

/// The algorithm and base64 of an OpenSSH public key line, without its comment: what tells
/// two keys apart (Bitbucket may keep or drop the comment).
pub fn key_material(line: &str) -> String {
    let mut parts = line.split_whitespace();
    match (parts.next(), parts.next()) {
        (Some(alg), Some(b64)) => format!("{alg} {b64}"),
        _ => line.trim().to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_built_from_encoded_segments() {
        assert_eq!(segment("{5c1c-7b}"), "%7B5c1c-7b%7D");
        assert_eq!(segment("acme/../x"), "acme%2F..%2Fx");
        let cloud = Remote::Cloud {
            api: "https://api.bitbucket.org/2.0/".into(),
            workspace: "acme".into(),
            repo: "widget".into(),
        };
        assert_eq!(
            cloud.keys_url(),
            "https://api.bitbucket.org/2.0/repositories/acme/widget/deploy-keys"
        );
        assert_eq!(
            cloud.hooks_url(),
            "https://api.bitbucket.org/2.0/repositories/acme/widget/hooks"
        );
        let dc = Remote::DataCenter {
            base: "https://bb.example.com".into(),
            server: "bb.example.com".into(),
            project: "ACME".into(),
            slug: "widget".into(),
        };
        assert_eq!(
            dc.keys_url(),
            "https://bb.example.com/rest/keys/1.0/projects/ACME/repos/widget/ssh"
        );
        assert_eq!(
            dc.hooks_url(),
            "https://bb.example.com/rest/api/1.0/projects/ACME/repos/widget/webhooks"
        );
        assert_eq!(
            key_material("ssh-ed25519  AAAAC3Nz bosun https://ci"),
            "ssh-ed25519 AAAAC3Nz"
        );
    }

    #[test]
    fn webhook_bodies_carry_the_events_the_intake_reads() {
        let cloud = Remote::Cloud {
            api: "a".into(),
            workspace: "w".into(),
            repo: "r".into(),
        };
        let b = cloud.hook_body("https://ci/webhooks/bitbucket", "s3");
        assert_eq!(b["secret"], "s3");
        assert_eq!(b["active"], true);
        assert_eq!(b["events"].as_array().map(Vec::len), Some(5));
        let dc = Remote::DataCenter {
            base: "b".into(),
            server: "b".into(),
            project: "P".into(),
            slug: "s".into(),
        };
        let b = dc.hook_body("https://ci/webhooks/bitbucket", "s3");
        assert_eq!(b["configuration"]["secret"], "s3");
        for e in DATA_CENTER_EVENTS {
            assert!(
                crate::bitbucket::data_center::is_data_center_event(e),
                "{e} is not one the intake reads"
            );
        }
    }
}

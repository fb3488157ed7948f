//! Bitbucket's REST API for following repositories and user keys, played by an HTTP server in
//! the test (Bitbucket's API cannot exist here): one repository in Cloud's shapes under
//! `/2.0` and in Data Center's under `/rest`, its deploy keys, webhooks and a user's SSH
//! keys kept as Bitbucket would keep them, lists paged small (Cloud's `next` links, Data
//! Center's `isLastPage`/`nextPageStart`) so that paging is exercised, every request recorded
//! (method, path, headers, body), and faults on demand (a status, with a `Retry-After` for
//! 429). A callback sees each key added (`"deploy"` or `"user"`, and its public line), so a
//! test can grant it on the Bitbucket stand-in (`Rig`) as Bitbucket would.

use std::io::{BufRead, BufReader, Read, Write};

/// The Data Center user whose SSH keys the server keeps.
pub const DC_USER: &str = "ada";
use std::sync::{Arc, Mutex};

/// One request as received.
#[derive(Clone, Debug)]
pub struct Request {
    pub method: String,
    /// Path and query, as sent (percent-encoding kept).
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or(serde_json::Value::Null)
    }
    /// `METHOD path-without-query`.
    pub fn call(&self) -> String {
        format!(
            "{} {}",
            self.method,
            self.path.split('?').next().unwrap_or("")
        )
    }
}

/// A fault: the `nth` (from 0) request matching `method` and a path containing `path` is
/// answered `status` with Bitbucket's error body saying `message`.
#[derive(Clone, Debug)]
pub struct Fault {
    pub method: &'static str,
    pub path: &'static str,
    pub nth: usize,
    pub status: u16,
    pub message: &'static str,
    pub retry_after: Option<u64>,
    seen: usize,
}

impl Fault {
    pub fn new(
        method: &'static str,
        path: &'static str,
        status: u16,
        message: &'static str,
    ) -> Fault {
        Fault {
            method,
            path,
            nth: 0,
            status,
            message,
            retry_after: None,
            seen: 0,
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Key {
    pub id: String,
    pub label: String,
    pub key: String,
}

/// A Bitbucket account for the OAuth endpoints: who logs in, the access token Bitbucket
/// issues them, and their repository permissions (`(full name, uuid, permission)`).
#[derive(Clone, Debug)]
pub struct Account {
    pub uuid: String,
    pub nickname: String,
    pub token: String,
    pub permissions: Vec<(String, String, String)>,
}

/// Bitbucket Cloud's OAuth 2.0 consumer and accounts: `/site/oauth2/authorize` sends the
/// browser back with a code for the account `signed_in` (who is logged in at Bitbucket in
/// that browser); `/site/oauth2/access_token` swaps a code (once, with its PKCE verifier and
/// the consumer's key and secret) for the account's token; `/2.0/user` and
/// `/2.0/user/permissions/repositories` answer for that token.
#[derive(Default)]
pub struct OAuth {
    pub key: String,
    pub secret: String,
    pub accounts: Vec<Account>,
    pub signed_in: Option<usize>,
    /// code → (account index, PKCE challenge)
    codes: std::collections::HashMap<String, (usize, String)>,
    /// Each account's SSH keys (by nickname): `(key, label)`, as `GET /2.0/users/{uuid}/
    /// ssh-keys` answers them to the account's own token.
    pub ssh_keys: std::collections::HashMap<String, Vec<(String, String)>>,
    /// Data Center HTTP access tokens (personal: token → the nickname it acts as), taken as
    /// `Authorization: Bearer` on `/rest` only, as Data Center takes them.
    pub http_tokens: std::collections::HashMap<String, String>,
}

#[derive(Default)]
pub struct State {
    pub oauth: OAuth,
    pub requests: Vec<Request>,
    pub deploy_keys: Vec<Key>,
    /// Webhooks as Bitbucket keeps them (the secret too, which reads never show).
    pub hooks: Vec<serde_json::Value>,
    pub user_keys: Vec<Key>,
    pub faults: Vec<Fault>,
    next_id: u64,
}

/// Called with (`"deploy"` or `"user"`, the public line) for each key added.
pub type OnKey = Arc<dyn Fn(&str, &str) + Send + Sync>;

#[derive(Clone)]
pub struct BitbucketApi {
    pub state: Arc<Mutex<State>>,
    /// `http://127.0.0.1:PORT`; Cloud's API is at `{base}/2.0`, Data Center's at `{base}`.
    pub base: String,
    /// The `Authorization` header every request must carry (else 401).
    auth: String,
    on_key: Option<OnKey>,
}

pub const UUID: &str = "{5c1c7b2e-4a8f-4f7e-9b1d-2d6c0d9e7a11}";
pub const DC_ID: u64 = 84;
/// Entries per page, whatever the client asks: small, so lists take several pages.
const PAGE: usize = 2;

impl BitbucketApi {
    /// Serve on loopback; `auth` is the `Authorization` header expected; `clone_ssh` the
    /// repository's SSH clone URL.
    pub fn start(auth: &str, on_key: Option<OnKey>) -> BitbucketApi {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        let api = BitbucketApi {
            state: Arc::default(),
            base,
            auth: auth.to_owned(),
            on_key,
        };
        let a = api.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let a = a.clone();
                std::thread::spawn(move || a.serve(conn));
            }
        });
        api
    }

    /// Set up the OAuth consumer (its key and secret) and the accounts that may log in.
    pub fn oauth(&self, key: &str, secret: &str, accounts: Vec<Account>) {
        let mut s = self.state.lock().expect("lock");
        s.oauth.key = key.into();
        s.oauth.secret = secret.into();
        s.oauth.accounts = accounts;
    }

    /// Who is logged in at Bitbucket in the browser (by nickname; `None`: nobody).
    pub fn sign_in(&self, nickname: Option<&str>) {
        let mut s = self.state.lock().expect("lock");
        s.oauth.signed_in =
            nickname.and_then(|n| s.oauth.accounts.iter().position(|a| a.nickname == n));
    }

    /// Change an account's permission on a repository upstream (`None`: take it away).
    pub fn set_permission(&self, nickname: &str, full_name: &str, permission: Option<&str>) {
        let mut s = self.state.lock().expect("lock");
        if let Some(a) = s.oauth.accounts.iter_mut().find(|a| a.nickname == nickname) {
            let uuid = a
                .permissions
                .iter()
                .find(|p| p.0 == full_name)
                .map(|p| p.1.clone())
                .unwrap_or_else(|| format!("{{repo-{full_name}}}"));
            a.permissions.retain(|p| p.0 != full_name);
            if let Some(p) = permission {
                a.permissions.push((full_name.into(), uuid, p.into()));
            }
        }
    }

    /// A Data Center HTTP access token `token` made by `nickname` (Manage account → HTTP
    /// access tokens).
    pub fn http_access_token(&self, nickname: &str, token: &str) {
        let mut s = self.state.lock().expect("lock");
        s.oauth.http_tokens.insert(token.into(), nickname.into());
    }

    /// Revoke an HTTP access token (it is refused with 401 from then on).
    pub fn revoke_http_access_token(&self, token: &str) {
        self.state
            .lock()
            .expect("lock")
            .oauth
            .http_tokens
            .remove(token);
    }

    /// The SSH keys on an account's Bitbucket profile, `(public line, label)`.
    pub fn set_account_ssh_keys(&self, nickname: &str, keys: &[(&str, &str)]) {
        let mut s = self.state.lock().expect("lock");
        s.oauth.ssh_keys.insert(
            nickname.into(),
            keys.iter()
                .map(|(k, l)| (k.to_string(), l.to_string()))
                .collect(),
        );
    }

    pub fn cloud_api(&self) -> String {
        format!("{}/2.0", self.base)
    }

    pub fn fault(&self, f: Fault) {
        self.state.lock().expect("lock").faults.push(f);
    }

    pub fn requests(&self) -> Vec<Request> {
        self.state.lock().expect("lock").requests.clone()
    }

    pub fn deploy_keys(&self) -> Vec<Key> {
        self.state.lock().expect("lock").deploy_keys.clone()
    }

    pub fn hooks(&self) -> Vec<serde_json::Value> {
        self.state.lock().expect("lock").hooks.clone()
    }

    pub fn user_keys(&self) -> Vec<Key> {
        self.state.lock().expect("lock").user_keys.clone()
    }

    /// A key someone else put on the repository.
    pub fn add_foreign_deploy_key(&self, label: &str, key: &str) {
        let mut s = self.state.lock().expect("lock");
        s.next_id += 1;
        let id = s.next_id.to_string();
        s.deploy_keys.push(Key {
            id,
            label: label.into(),
            key: key.into(),
        });
    }

    /// A webhook someone else made.
    pub fn add_foreign_hook(&self, url: &str) {
        let mut s = self.state.lock().expect("lock");
        s.next_id += 1;
        let id = s.next_id;
        s.hooks.push(serde_json::json!({
            "uuid": format!("{{0000-{id}}}"), "id": id, "url": url, "active": true,
            "events": ["repo:push"], "secret": "theirs",
        }));
    }

    fn serve(&self, mut conn: std::net::TcpStream) {
        let mut reader = BufReader::new(conn.try_clone().expect("clone"));
        let mut first = String::new();
        if reader.read_line(&mut first).unwrap_or(0) == 0 {
            return;
        }
        let mut headers = Vec::new();
        let mut len = 0usize;
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).is_err() || line.trim().is_empty() {
                break;
            }
            if let Some((n, v)) = line.split_once(':') {
                if n.eq_ignore_ascii_case("content-length") {
                    len = v.trim().parse().unwrap_or(0);
                }
                headers.push((n.trim().to_owned(), v.trim().to_owned()));
            }
        }
        let mut body = vec![0u8; len];
        let _ = reader.read_exact(&mut body);
        let mut parts = first.split_whitespace();
        let req = Request {
            method: parts.next().unwrap_or("").to_owned(),
            path: parts.next().unwrap_or("").to_owned(),
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        };
        let (status, extra, body) = self.answer(&req);
        let reason = match status {
            200 => "OK",
            302 => "Found",
            400 => "Bad Request",
            201 => "Created",
            204 => "No Content",
            401 => "Unauthorized",
            403 => "Forbidden",
            404 => "Not Found",
            429 => "Too Many Requests",
            _ => "Whatever",
        };
        let _ = conn.write_all(
            format!(
                "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{extra}Connection: close\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        );
    }

    fn answer(&self, req: &Request) -> (u16, String, String) {
        let mut s = self.state.lock().expect("lock");
        s.requests.push(req.clone());
        let (path, query) = req.path.split_once('?').unwrap_or((&req.path, ""));
        let path = decode(path);
        let dc = path.starts_with("/rest/");
        let error = |status: u16, message: &str, dc: bool| {
            let body = if dc {
                serde_json::json!({"errors": [{"context": null, "message": message, "exceptionName": null}]})
            } else {
                serde_json::json!({"type": "error", "error": {"message": message}})
            };
            (status, String::new(), body.to_string())
        };
        for f in s.faults.iter_mut() {
            if f.method == req.method && path.contains(f.path) {
                f.seen += 1;
                if f.seen - 1 == f.nth {
                    let (st, _, body) = error(f.status, f.message, dc);
                    let extra = f
                        .retry_after
                        .map(|r| format!("Retry-After: {r}\r\n"))
                        .unwrap_or_default();
                    return (st, extra, body);
                }
            }
        }
        if let Some(answer) = oauth_answer(&mut s, req, &path, query, &self.base) {
            return answer;
        }
        if req.header("authorization") != Some(self.auth.as_str()) {
            return error(401, "Unauthorized", dc);
        }
        let q = |name: &str| -> Option<usize> {
            query.split('&').find_map(|kv| {
                let (k, v) = kv.split_once('=')?;
                (k == name).then(|| v.parse().ok())?
            })
        };
        let body = req.json();
        let m = req.method.as_str();
        let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
        let ok = |v: serde_json::Value| (200, String::new(), v.to_string());
        let created = |v: serde_json::Value| (201, String::new(), v.to_string());
        let gone = (204, String::new(), String::new());
        let not_found = error(404, "There is no such thing", dc);
        match segs.as_slice() {
            // ---- Bitbucket Cloud ----
            ["2.0", "repositories", "acme", "widget"] if m == "GET" => ok(serde_json::json!({
                "type": "repository", "uuid": UUID, "full_name": "acme/widget",
                "name": "widget", "slug": "widget", "mainbranch": {"type": "branch", "name": "main"},
                "links": {"clone": [
                    {"name": "https", "href": "https://bitbucket.org/acme/widget.git"},
                    {"name": "ssh", "href": "git@bitbucket.org:acme/widget.git"}]},
            })),
            ["2.0", "repositories", "acme", "widget", "deploy-keys"] => match m {
                "GET" => {
                    let values: Vec<_> = s
                        .deploy_keys
                        .iter()
                        .map(|k| {
                            serde_json::json!({
                        "id": k.id.parse::<u64>().unwrap_or(0), "key": k.key, "label": k.label,
                        "type": "deploy_key"})
                        })
                        .collect();
                    ok(self.cloud_page(&req.path, values, q("page").unwrap_or(1)))
                }
                "POST" => {
                    let key = body["key"].as_str().unwrap_or("").to_owned();
                    let label = body["label"].as_str().unwrap_or("").to_owned();
                    s.next_id += 1;
                    let id = s.next_id;
                    s.deploy_keys.push(Key {
                        id: id.to_string(),
                        label: label.clone(),
                        key: key.clone(),
                    });
                    if let Some(cb) = &self.on_key {
                        cb("deploy", &key);
                    }
                    created(
                        serde_json::json!({"id": id, "key": key, "label": label, "type": "deploy_key"}),
                    )
                }
                _ => not_found,
            },
            ["2.0", "repositories", "acme", "widget", "deploy-keys", id] if m == "DELETE" => {
                let before = s.deploy_keys.len();
                s.deploy_keys.retain(|k| k.id != *id);
                if s.deploy_keys.len() < before {
                    gone
                } else {
                    not_found
                }
            }
            ["2.0", "repositories", "acme", "widget", "hooks"] => match m {
                "GET" => {
                    let values: Vec<_> = s.hooks.iter().map(cloud_hook_view).collect();
                    ok(self.cloud_page(&req.path, values, q("page").unwrap_or(1)))
                }
                "POST" => {
                    s.next_id += 1;
                    let mut h = body.clone();
                    h["uuid"] = format!("{{hook-{}}}", s.next_id).into();
                    s.hooks.push(h.clone());
                    created(cloud_hook_view(&h))
                }
                _ => not_found,
            },
            ["2.0", "repositories", "acme", "widget", "hooks", id] => {
                let Some(i) = s.hooks.iter().position(|h| h["uuid"] == *id) else {
                    return not_found;
                };
                match m {
                    "PUT" => {
                        let uuid = s.hooks[i]["uuid"].clone();
                        let mut h = body.clone();
                        h["uuid"] = uuid;
                        s.hooks[i] = h.clone();
                        ok(cloud_hook_view(&h))
                    }
                    "DELETE" => {
                        s.hooks.remove(i);
                        gone
                    }
                    _ => not_found,
                }
            }
            ["2.0", "users", user, "ssh-keys"] => match m {
                "GET" => {
                    let values: Vec<_> = s
                        .user_keys
                        .iter()
                        .map(|k| {
                            serde_json::json!({
                        "uuid": k.id, "key": k.key, "label": k.label, "comment": "",
                        "owner": {"nickname": user}})
                        })
                        .collect();
                    ok(self.cloud_page(&req.path, values, q("page").unwrap_or(1)))
                }
                "POST" => {
                    s.next_id += 1;
                    let k = Key {
                        id: format!("{{ukey-{}}}", s.next_id),
                        label: body["label"].as_str().unwrap_or("").into(),
                        key: body["key"].as_str().unwrap_or("").into(),
                    };
                    s.user_keys.push(k.clone());
                    if let Some(cb) = &self.on_key {
                        cb("user", &k.key);
                    }
                    created(serde_json::json!({"uuid": k.id, "key": k.key, "label": k.label}))
                }
                _ => not_found,
            },
            ["2.0", "users", _, "ssh-keys", id] if m == "DELETE" => {
                let before = s.user_keys.len();
                s.user_keys.retain(|k| k.id != *id);
                if s.user_keys.len() < before {
                    gone
                } else {
                    not_found
                }
            }
            // ---- Bitbucket Data Center ----
            ["rest", "api", "1.0", "projects", "ACME", "repos", "widget"] if m == "GET" => {
                ok(serde_json::json!({
                    "slug": "widget", "id": DC_ID, "name": "widget", "scmId": "git",
                    "project": {"key": "ACME", "id": 1, "name": "Acme"},
                    "links": {"clone": [
                        {"href": "ssh://git@bitbucket.org/acme/widget.git", "name": "ssh"},
                        {"href": "https://bitbucket.example.com/scm/acme/widget.git", "name": "http"}]},
                }))
            }
            ["rest", "api", "1.0", "projects", "ACME", "repos", "widget", "branches", "default"]
                if m == "GET" =>
            {
                ok(
                    serde_json::json!({"id": "refs/heads/main", "displayId": "main", "type": "BRANCH"}),
                )
            }
            ["rest", "keys", "1.0", "projects", "ACME", "repos", "widget", "ssh"] => match m {
                "GET" => {
                    let values: Vec<_> = s.deploy_keys.iter().map(|k| serde_json::json!({
                        "key": {"id": k.id.parse::<u64>().unwrap_or(0), "text": k.key, "label": k.label},
                        "permission": "REPO_READ"})).collect();
                    ok(dc_page(values, q("start").unwrap_or(0)))
                }
                "POST" => {
                    if body["permission"] != "REPO_READ" {
                        return error(400, "permission must be given", true);
                    }
                    let text = body["key"]["text"].as_str().unwrap_or("").to_owned();
                    // Data Center labels a key with its comment.
                    let label = text.splitn(3, ' ').nth(2).unwrap_or("").to_owned();
                    s.next_id += 1;
                    let id = s.next_id;
                    s.deploy_keys.push(Key {
                        id: id.to_string(),
                        label: label.clone(),
                        key: text.clone(),
                    });
                    if let Some(cb) = &self.on_key {
                        cb("deploy", &text);
                    }
                    created(
                        serde_json::json!({"key": {"id": id, "text": text, "label": label}, "permission": "REPO_READ"}),
                    )
                }
                _ => not_found,
            },
            ["rest", "keys", "1.0", "projects", "ACME", "repos", "widget", "ssh", id]
                if m == "DELETE" =>
            {
                let before = s.deploy_keys.len();
                s.deploy_keys.retain(|k| k.id != *id);
                if s.deploy_keys.len() < before {
                    gone
                } else {
                    not_found
                }
            }
            ["rest", "api", "1.0", "projects", "ACME", "repos", "widget", "webhooks"] => match m {
                "GET" => {
                    let values: Vec<_> = s.hooks.iter().map(dc_hook_view).collect();
                    ok(dc_page(values, q("start").unwrap_or(0)))
                }
                "POST" => {
                    s.next_id += 1;
                    let mut h = body.clone();
                    h["id"] = s.next_id.into();
                    s.hooks.push(h.clone());
                    created(dc_hook_view(&h))
                }
                _ => not_found,
            },
            ["rest", "api", "1.0", "projects", "ACME", "repos", "widget", "webhooks", id] => {
                let Some(i) = s
                    .hooks
                    .iter()
                    .position(|h| h["id"].as_u64().is_some_and(|n| Some(n) == id.parse().ok()))
                else {
                    return not_found;
                };
                match m {
                    "PUT" => {
                        let keep = s.hooks[i]["id"].clone();
                        let mut h = body.clone();
                        h["id"] = keep;
                        s.hooks[i] = h.clone();
                        ok(dc_hook_view(&h))
                    }
                    "DELETE" => {
                        s.hooks.remove(i);
                        gone
                    }
                    _ => not_found,
                }
            }
            // A user's keys: `?user=` names whose (an admin's token may name another user).
            ["rest", "ssh", "1.0", "keys"] => {
                let user = query.split('&').find_map(|kv| kv.strip_prefix("user="));
                if user != Some(DC_USER) {
                    return error(404, "No such user", true);
                }
                match m {
                    "GET" => {
                        let values: Vec<_> = s
                            .user_keys
                            .iter()
                            .map(|k| {
                                serde_json::json!({
                                "id": k.id.parse::<u64>().unwrap_or(0), "text": k.key,
                                "label": k.label, "algorithmType": "ED25519"})
                            })
                            .collect();
                        ok(dc_page(values, q("start").unwrap_or(0)))
                    }
                    "POST" => {
                        let Some(text) = body["text"].as_str().map(str::to_owned) else {
                            return error(400, "text is required", true);
                        };
                        s.next_id += 1;
                        let k = Key {
                            id: s.next_id.to_string(),
                            label: body["label"].as_str().unwrap_or("").into(),
                            key: text,
                        };
                        s.user_keys.push(k.clone());
                        if let Some(cb) = &self.on_key {
                            cb("user", &k.key);
                        }
                        created(serde_json::json!({
                            "id": s.next_id, "text": k.key, "label": k.label}))
                    }
                    _ => not_found,
                }
            }
            ["rest", "ssh", "1.0", "keys", id] if m == "DELETE" => {
                let before = s.user_keys.len();
                s.user_keys.retain(|k| k.id != *id);
                if s.user_keys.len() < before {
                    gone
                } else {
                    not_found
                }
            }
            _ => not_found,
        }
    }

    /// One page of a Cloud list, `next` pointing at the following page when there is one.
    fn cloud_page(
        &self,
        path: &str,
        values: Vec<serde_json::Value>,
        page: usize,
    ) -> serde_json::Value {
        let page = page.max(1);
        let chunk: Vec<_> = values
            .iter()
            .skip((page - 1) * PAGE)
            .take(PAGE)
            .cloned()
            .collect();
        let mut v = serde_json::json!({"pagelen": PAGE, "size": values.len(), "page": page, "values": chunk});
        if page * PAGE < values.len() {
            let (p, q) = path.split_once('?').unwrap_or((path, ""));
            let q: Vec<&str> = q
                .split('&')
                .filter(|kv| !kv.starts_with("page=") && !kv.is_empty())
                .collect();
            v["next"] = format!(
                "{}{p}?{}{}page={}",
                self.base,
                q.join("&"),
                if q.is_empty() { "" } else { "&" },
                page + 1
            )
            .into();
        }
        v
    }
}

/// A Cloud webhook as reads show it: never its secret.
fn cloud_hook_view(h: &serde_json::Value) -> serde_json::Value {
    let mut v = h.clone();
    if let Some(o) = v.as_object_mut() {
        let set = o.remove("secret").is_some_and(|s| !s.is_null());
        o.insert("secret_set".into(), set.into());
    }
    v
}

fn dc_hook_view(h: &serde_json::Value) -> serde_json::Value {
    let mut v = h.clone();
    if let Some(c) = v.get_mut("configuration").and_then(|c| c.as_object_mut()) {
        c.remove("secret");
    }
    v
}

fn dc_page(values: Vec<serde_json::Value>, start: usize) -> serde_json::Value {
    let chunk: Vec<_> = values.iter().skip(start).take(PAGE).cloned().collect();
    let last = start + PAGE >= values.len();
    let mut v = serde_json::json!({"size": chunk.len(), "limit": PAGE, "start": start,
        "isLastPage": last, "values": chunk});
    if !last {
        v["nextPageStart"] = (start + PAGE).into();
    }
    v
}

fn decode(p: &str) -> String {
    let b = p.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(&p[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn query_param(query: &str, name: &str) -> Option<String> {
    form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

/// Bitbucket Cloud's OAuth 2.0 endpoints and the two reads a login makes, in the shapes its
/// documentation gives; `None` for every other request.
fn oauth_answer(
    s: &mut State,
    req: &Request,
    path: &str,
    query: &str,
    base: &str,
) -> Option<(u16, String, String)> {
    use base64::Engine as _;
    use sha2::Digest as _;
    let json = |status: u16, v: serde_json::Value| (status, String::new(), v.to_string());
    let o = &mut s.oauth;
    let bearer = req
        .header("authorization")
        .and_then(|h| h.strip_prefix("Bearer "))
        .unwrap_or("");
    // An HTTP access token acts as its user on `/rest` (and `/scm`) only; elsewhere Data
    // Center (8.9.22, 8.19.12, 9.3.2 and later) sends it to the login page.
    let http_token_of = o.http_tokens.get(bearer).cloned();
    let account = o
        .accounts
        .iter()
        .find(|a| {
            !bearer.is_empty()
                && (a.token == bearer
                    || (path.starts_with("/rest/")
                        && http_token_of.as_deref() == Some(a.nickname.as_str())))
        })
        .cloned();
    let unauthorized = json(
        401,
        serde_json::json!({"type": "error", "error": {"message": "Access token expired or invalid"}}),
    );
    match (req.method.as_str(), path) {
        ("GET", "/site/oauth2/authorize" | "/rest/oauth2/latest/authorize") => {
            let client = query_param(query, "client_id").unwrap_or_default();
            if client != o.key || query_param(query, "response_type").as_deref() != Some("code") {
                return Some(json(400, serde_json::json!({"error": "invalid_request"})));
            }
            let Some(who) = o.signed_in else {
                return Some((200, String::new(), "\"log in to Bitbucket first\"".into()));
            };
            let challenge = query_param(query, "code_challenge").unwrap_or_default();
            let code = format!("code{}", o.codes.len() + 1000);
            o.codes.insert(code.clone(), (who, challenge));
            let back = query_param(query, "redirect_uri").unwrap_or_default();
            let state = query_param(query, "state").unwrap_or_default();
            let location = format!(
                "{back}?code={code}&state={}",
                form_urlencoded::byte_serialize(state.as_bytes()).collect::<String>()
            );
            Some((302, format!("Location: {location}\r\n"), String::new()))
        }
        ("POST", "/site/oauth2/access_token" | "/rest/oauth2/latest/token") => {
            let want = format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", o.key, o.secret))
            );
            // Cloud: the consumer in HTTP Basic; Data Center: `client_id` and
            // `client_secret` in the form.
            let client_ok = if path.starts_with("/rest/") {
                query_param(&req.body, "client_id").as_deref() == Some(o.key.as_str())
                    && query_param(&req.body, "client_secret").as_deref() == Some(o.secret.as_str())
            } else {
                req.header("authorization") == Some(want.as_str())
            };
            if !client_ok {
                return Some(json(
                    401,
                    serde_json::json!({"error": "invalid_client", "error_description": "Invalid OAuth client credentials"}),
                ));
            }
            let form = req.body.as_str();
            let token_of = |a: &Account| {
                serde_json::json!({"access_token": a.token, "scopes": "account repository",
                    "expires_in": 7200, "refresh_token": format!("refresh-{}", a.nickname),
                    "token_type": "bearer"})
            };
            if query_param(form, "grant_type").as_deref() == Some("refresh_token") {
                let given = query_param(form, "refresh_token").unwrap_or_default();
                return Some(
                    match o
                        .accounts
                        .iter()
                        .find(|a| format!("refresh-{}", a.nickname) == given)
                    {
                        Some(a) => json(200, token_of(a)),
                        None => json(400, serde_json::json!({"error": "invalid_grant"})),
                    },
                );
            }
            if query_param(form, "grant_type").as_deref() != Some("authorization_code") {
                return Some(json(
                    400,
                    serde_json::json!({"error": "unsupported_grant_type"}),
                ));
            }
            let code = query_param(form, "code").unwrap_or_default();
            let verifier = query_param(form, "code_verifier").unwrap_or_default();
            let Some((who, challenge)) = o.codes.remove(&code) else {
                return Some(json(
                    400,
                    serde_json::json!({"error": "invalid_grant", "error_description": "The code is invalid or expired"}),
                ));
            };
            let got = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .encode(sha2::Sha256::digest(verifier.as_bytes()));
            if got != challenge {
                return Some(json(
                    400,
                    serde_json::json!({"error": "invalid_grant", "error_description": "code_verifier does not match"}),
                ));
            }
            Some(json(200, token_of(&o.accounts[who])))
        }
        // ---- Data Center: who the token is, the user, the repositories by permission ----
        ("GET", "/plugins/servlet/applinks/whoami") if http_token_of.is_some() => {
            Some((302, format!("Location: {base}/login\r\n"), String::new()))
        }
        // Every authenticated REST answer names its user in `X-AUSERNAME`; a bearer token
        // Data Center does not take is a 401, no credentials an anonymous answer.
        ("GET", "/rest/api/latest/application-properties") => {
            let props = serde_json::json!({"version": "8.19.12", "buildNumber": "8019012",
                "buildDate": "1733000000000", "displayName": "Bitbucket"});
            Some(match (&account, req.header("authorization")) {
                (Some(a), _) => (
                    200,
                    format!("X-AUSERNAME: {}\r\nX-AUSERID: {}\r\n", a.nickname, a.uuid),
                    props.to_string(),
                ),
                (None, Some(_)) => json(
                    401,
                    serde_json::json!({"errors": [{"context": null, "exceptionName":
                        "com.atlassian.bitbucket.auth.IncorrectPasswordAuthenticationException",
                        "message": "Authentication failed. Please check your credentials and try again."}]}),
                ),
                (None, None) => (200, String::new(), props.to_string()),
            })
        }
        ("GET", "/plugins/servlet/applinks/whoami") => Some(match account {
            Some(a) => (200, String::new(), a.nickname),
            None => (401, String::new(), String::new()),
        }),
        ("GET", "/rest/api/latest/users") if account.is_some() => {
            let filter = query_param(query, "filter").unwrap_or_default();
            let values: Vec<_> = o
                .accounts
                .iter()
                .filter(|a| a.nickname.starts_with(&filter))
                .map(|a| {
                    serde_json::json!({"name": a.nickname, "emailAddress": format!("{}@example.com", a.nickname),
                        "id": a.uuid.parse::<u64>().unwrap_or(0), "displayName": format!("{} (display)", a.nickname),
                        "active": true, "slug": a.nickname, "type": "NORMAL"})
                })
                .collect();
            let start = query_param(query, "start")
                .and_then(|p| p.parse().ok())
                .unwrap_or(0);
            Some(json(200, dc_page(values, start)))
        }
        ("GET", "/rest/api/latest/repos") if account.is_some() => {
            let a = account.expect("checked");
            let rank = |w: &str| ["read", "write", "admin"].iter().position(|r| *r == w);
            let Some(least) = query_param(query, "permission").and_then(|p| match p.as_str() {
                "REPO_READ" => rank("read"),
                "REPO_WRITE" => rank("write"),
                "REPO_ADMIN" => rank("admin"),
                _ => None,
            }) else {
                return Some(json(
                    400,
                    serde_json::json!({"errors": [{"message": "permission"}]}),
                ));
            };
            // (PROJECT/slug, repository id, read|write|admin)
            let values: Vec<_> = a
                .permissions
                .iter()
                .filter(|(_, _, p)| rank(p).is_some_and(|r| r >= least))
                .map(|(name, id, _)| {
                    let (project, slug) = name.split_once('/').unwrap_or(("", name));
                    serde_json::json!({"slug": slug, "id": id.parse::<u64>().unwrap_or(0),
                        "name": slug, "scmId": "git", "state": "AVAILABLE", "public": false,
                        "project": {"key": project, "id": 1, "name": project, "type": "NORMAL"}})
                })
                .collect();
            let start = query_param(query, "start")
                .and_then(|p| p.parse().ok())
                .unwrap_or(0);
            Some(json(200, dc_page(values, start)))
        }
        // The token's own user's SSH keys (Data Center's SSH REST API, without `?user=`).
        ("GET", "/rest/ssh/latest/keys") if account.is_some() => {
            let a = account.expect("checked");
            let values: Vec<_> = o
                .ssh_keys
                .get(&a.nickname)
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .enumerate()
                .map(|(i, (key, label))| {
                    serde_json::json!({"id": i + 1, "text": key, "label": label,
                        "algorithmType": "ED25519"})
                })
                .collect();
            let start = query_param(query, "start")
                .and_then(|p| p.parse().ok())
                .unwrap_or(0);
            Some(json(200, dc_page(values, start)))
        }
        ("GET", "/2.0/user") => Some(match account {
            Some(a) => json(
                200,
                serde_json::json!({"type": "user", "uuid": a.uuid, "nickname": a.nickname,
                    "display_name": format!("{} (display)", a.nickname),
                    "account_id": format!("5f-{}", a.nickname), "links": {}}),
            ),
            None => unauthorized,
        }),
        ("GET", "/2.0/user/permissions/repositories") => Some(match account {
            Some(a) => {
                let values: Vec<_> = a
                    .permissions
                    .iter()
                    .map(|(name, uuid, perm)| {
                        serde_json::json!({"type": "repository_permission", "permission": perm,
                            "user": {"type": "user", "uuid": a.uuid, "nickname": a.nickname},
                            "repository": {"type": "repository", "full_name": name, "uuid": uuid,
                                "name": name.split('/').nth(1).unwrap_or("")}})
                    })
                    .collect();
                let page = query_param(query, "page")
                    .and_then(|p| p.parse().ok())
                    .unwrap_or(1usize)
                    .max(1);
                let chunk: Vec<_> = values
                    .iter()
                    .skip((page - 1) * PAGE)
                    .take(PAGE)
                    .cloned()
                    .collect();
                let mut v = serde_json::json!({"pagelen": PAGE, "size": values.len(), "page": page, "values": chunk});
                if page * PAGE < values.len() {
                    v["next"] = format!("{base}{path}?pagelen={PAGE}&page={}", page + 1).into();
                }
                json(200, v)
            }
            None => unauthorized,
        }),
        // An account's own keys, to its own token (Cloud's `paginated_ssh_user_keys` of
        // `ssh_account_key`s); other callers go on to the user-key routes below.
        ("GET", p)
            if account.is_some() && p.starts_with("/2.0/users/") && p.ends_with("/ssh-keys") =>
        {
            let a = account.expect("checked");
            let user = &p["/2.0/users/".len()..p.len() - "/ssh-keys".len()];
            if user != a.uuid && user != a.nickname {
                return Some(json(
                    403,
                    serde_json::json!({"type": "error", "error": {"message": "Forbidden"}}),
                ));
            }
            let values: Vec<_> = o
                .ssh_keys
                .get(&a.nickname)
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .enumerate()
                .map(|(i, (key, label))| {
                    serde_json::json!({"type": "ssh_key", "uuid": format!("{{k{i}}}"), "key": key,
                        "label": label, "comment": "", "created_on": "2026-01-01T00:00:00+00:00",
                        "owner": {"type": "user", "uuid": a.uuid, "nickname": a.nickname}})
                })
                .collect();
            Some(json(
                200,
                serde_json::json!({"pagelen": 10, "size": values.len(), "page": 1, "values": values}),
            ))
        }
        _ => None,
    }
}

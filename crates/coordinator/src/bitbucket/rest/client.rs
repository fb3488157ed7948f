//! One HTTP client for Bitbucket's REST API calls that change a repository or an account:
//! JSON in and out, the credentials on every request (never in a log or an error), no
//! redirects followed (they would carry the credentials elsewhere), `429 Too Many Requests`
//! waited out as `Retry-After` says within a bounded total, and every list read to its end
//! (Cloud's `next` links, Data Center's `start`/`isLastPage`).

use super::credentials::Credentials;
use std::time::Duration;

/// Entries asked for per page: Cloud's largest `pagelen` (some of its lists stop at 50 and
/// say so in `next`), and a Data Center `limit` its servers accept.
pub const PAGE_LEN: u32 = 100;

/// Pages read of one list at most: a server that never says "last page" cannot loop us.
const MAX_PAGES: usize = 200;

/// The longest a Bitbucket error message is quoted.
const MESSAGE_CHARS: usize = 300;

/// A call that failed, named by its method and path (never its credentials).
#[derive(Debug, thiserror::Error)]
pub enum RestError {
    #[error("{call}: Bitbucket answered {status}: {message}")]
    Refused {
        call: String,
        status: u16,
        message: String,
    },
    #[error("{call}: {source}")]
    Http {
        call: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("{call}: still 429 Too Many Requests after waiting {waited:?} (the most Bosun waits); try again later")]
    RateLimited { call: String, waited: Duration },
    #[error("{call}: unexpected answer: {what}")]
    Shape { call: String, what: String },
}

impl RestError {
    /// The HTTP status Bitbucket answered, when it answered with a refusal.
    pub fn status(&self) -> Option<u16> {
        match self {
            RestError::Refused { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// How lists are paged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Paging {
    /// Bitbucket Cloud: `pagelen`, then the answer's `next` URL.
    Cloud,
    /// Bitbucket Data Center: `start` and `limit`, until `isLastPage`.
    DataCenter,
}

pub struct Client {
    http: reqwest::Client,
    credentials: Credentials,
    /// The most a call waits in total for 429s to pass.
    max_wait: Duration,
}

impl Client {
    pub fn new(credentials: Credentials, max_wait: Duration) -> Result<Client, RestError> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("bosun/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|source| RestError::Http {
                call: "HTTP client".to_owned(),
                source,
            })?;
        Ok(Client {
            http,
            credentials,
            max_wait,
        })
    }

    /// One call: its JSON answer (`Null` for an empty one, as DELETE's 204).
    pub async fn call(
        &self,
        method: reqwest::Method,
        url: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<serde_json::Value, RestError> {
        let call = format!("{method} {}", shown_path(url));
        let mut waited = Duration::ZERO;
        let mut attempt = 0u32;
        loop {
            let mut req = self
                .credentials
                .sign(self.http.request(method.clone(), url))
                .header("accept", "application/json");
            if let Some(b) = body {
                req = req
                    .header("content-type", "application/json")
                    .body(b.to_string());
            }
            let resp = req.send().await.map_err(|e| RestError::Http {
                call: call.clone(),
                // The URL is ours and holds no credentials, but the error need not repeat it.
                source: e.without_url(),
            })?;
            let status = resp.status();
            if status.as_u16() == 429 {
                let wait = retry_after(resp.headers(), attempt);
                if waited + wait > self.max_wait {
                    return Err(RestError::RateLimited { call, waited });
                }
                tracing::info!("{call}: 429 Too Many Requests, waiting {wait:?}");
                tokio::time::sleep(wait).await;
                waited += wait;
                attempt += 1;
                continue;
            }
            let text = resp.text().await.map_err(|e| RestError::Http {
                call: call.clone(),
                source: e.without_url(),
            })?;
            if !status.is_success() {
                return Err(RestError::Refused {
                    call,
                    status: status.as_u16(),
                    message: message_of(&text, status),
                });
            }
            if text.trim().is_empty() {
                return Ok(serde_json::Value::Null);
            }
            return serde_json::from_str(&text).map_err(|e| RestError::Shape {
                call,
                what: format!("not JSON ({e})"),
            });
        }
    }

    pub async fn get(&self, url: &str) -> Result<serde_json::Value, RestError> {
        self.call(reqwest::Method::GET, url, None).await
    }

    pub async fn post(
        &self,
        url: &str,
        body: &serde_json::Value,
    ) -> Result<serde_json::Value, RestError> {
        self.call(reqwest::Method::POST, url, Some(body)).await
    }

    pub async fn put(
        &self,
        url: &str,
        body: &serde_json::Value,
    ) -> Result<serde_json::Value, RestError> {
        self.call(reqwest::Method::PUT, url, Some(body)).await
    }

    pub async fn delete(&self, url: &str) -> Result<(), RestError> {
        self.call(reqwest::Method::DELETE, url, None)
            .await
            .map(drop)
    }

    /// Every entry of a list, page after page.
    pub async fn list(
        &self,
        url: &str,
        paging: Paging,
    ) -> Result<Vec<serde_json::Value>, RestError> {
        let mut out = Vec::new();
        let sep = if url.contains('?') { '&' } else { '?' };
        let mut next = Some(match paging {
            Paging::Cloud => format!("{url}{sep}pagelen={PAGE_LEN}"),
            Paging::DataCenter => format!("{url}{sep}start=0&limit={PAGE_LEN}"),
        });
        let origin = origin_of(url);
        let mut pages = 0;
        while let Some(page_url) = next.take() {
            pages += 1;
            let call = format!("GET {}", shown_path(&page_url));
            if pages > MAX_PAGES {
                return Err(RestError::Shape {
                    call,
                    what: format!("more than {MAX_PAGES} pages"),
                });
            }
            let page = self.get(&page_url).await?;
            let values = page
                .get("values")
                .and_then(|v| v.as_array())
                .ok_or_else(|| RestError::Shape {
                    call: call.clone(),
                    what: "no `values` list".to_owned(),
                })?;
            out.extend(values.iter().cloned());
            next = match paging {
                Paging::Cloud => match page.get("next").and_then(|n| n.as_str()) {
                    // The next page is on the same server, or the credentials would go
                    // wherever an answer points.
                    Some(n) if origin_of(n) == origin => Some(n.to_owned()),
                    Some(n) => {
                        return Err(RestError::Shape {
                            call,
                            what: format!(
                                "`next` leads to another server ({})",
                                crate::printable(&origin_of(n))
                            ),
                        })
                    }
                    None => None,
                },
                Paging::DataCenter => {
                    let last = page
                        .get("isLastPage")
                        .and_then(|v| v.as_bool())
                        .unwrap_or(true);
                    match page.get("nextPageStart").and_then(|v| v.as_u64()) {
                        Some(start) if !last => {
                            Some(format!("{url}{sep}start={start}&limit={PAGE_LEN}"))
                        }
                        _ => None,
                    }
                }
            };
        }
        Ok(out)
    }
}

/// How long a 429 asks to wait: `Retry-After` in seconds (capped at 5 minutes), else 1 s
/// doubling with each attempt.
fn retry_after(headers: &reqwest::header::HeaderMap, attempt: u32) -> Duration {
    headers
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(|s| Duration::from_secs(s.min(300)))
        .unwrap_or_else(|| Duration::from_secs(1u64 << attempt.min(6)))
}

/// `scheme://host[:port]` of a URL.
fn origin_of(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let host = rest.split(['/', '?', '#']).next().unwrap_or("");
    format!(
        "{}://{}",
        scheme.to_ascii_lowercase(),
        host.to_ascii_lowercase()
    )
}

/// A URL's path and query as an error names the call (terminal-safe).
fn shown_path(url: &str) -> String {
    let rest = url.split_once("://").map(|(_, r)| r).unwrap_or(url);
    let path = rest.find('/').map(|i| &rest[i..]).unwrap_or("/");
    crate::printable(path)
}

/// Bitbucket's own words from an error answer: Cloud's `error.message` (and `detail`),
/// Data Center's `errors[].message`; else the start of the body, else the status.
fn message_of(body: &str, status: reqwest::StatusCode) -> String {
    let json: Option<serde_json::Value> = serde_json::from_str(body).ok();
    let from_json = json.and_then(|j| {
        if let Some(e) = j.get("error") {
            let msg = e.get("message").and_then(|m| m.as_str()).unwrap_or("");
            let detail = e.get("detail").and_then(|m| m.as_str()).unwrap_or("");
            let both = [msg, detail]
                .into_iter()
                .filter(|s| !s.is_empty())
                .collect::<Vec<_>>()
                .join(": ");
            return (!both.is_empty()).then_some(both);
        }
        let list = j.get("errors")?.as_array()?;
        let msgs: Vec<&str> = list
            .iter()
            .filter_map(|e| e.get("message").and_then(|m| m.as_str()))
            .collect();
        (!msgs.is_empty()).then(|| msgs.join("; "))
    });
    let text = from_json.unwrap_or_else(|| {
        let t = body.trim();
        if t.is_empty() {
            status.canonical_reason().unwrap_or("no message").to_owned()
        } else {
            t.to_owned()
        }
    });
    crate::printable(&text.chars().take(MESSAGE_CHARS).collect::<String>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bitbucket_error_messages_are_quoted_from_either_shape() {
        let s = reqwest::StatusCode::FORBIDDEN;
        assert_eq!(
            message_of(
                r#"{"type":"error","error":{"message":"Your credentials lack one or more required privilege scopes.","detail":{"required":["webhook"]}}}"#,
                s
            ),
            "Your credentials lack one or more required privilege scopes."
        );
        assert_eq!(
            message_of(
                r#"{"errors":[{"context":null,"message":"You are not permitted to access this resource","exceptionName":"x"}]}"#,
                s
            ),
            "You are not permitted to access this resource"
        );
        assert_eq!(message_of("", s), "Forbidden");
        assert_eq!(message_of("nope\x1b[31m", s), "nope\\u{1b}[31m");
        assert_eq!(message_of(&"x".repeat(1000), s).len(), MESSAGE_CHARS);
    }

    #[test]
    fn calls_are_named_by_method_and_path_only() {
        assert_eq!(
            shown_path("https://api.bitbucket.org/2.0/repositories/a/b/hooks?pagelen=100"),
            "/2.0/repositories/a/b/hooks?pagelen=100"
        );
        assert_eq!(
            origin_of("HTTPS://Api.Bitbucket.org/2.0/x"),
            "https://api.bitbucket.org"
        );
        assert_eq!(origin_of("http://127.0.0.1:9/x?y"), "http://127.0.0.1:9");
    }

    /// A server answering each connection with the next of `answers` (one request each).
    fn serve(answers: Vec<String>) -> String {
        use std::io::{BufRead, BufReader, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        std::thread::spawn(move || {
            for (conn, body) in listener.incoming().zip(answers) {
                let Ok(mut conn) = conn else { return };
                let mut reader = BufReader::new(conn.try_clone().expect("clone"));
                let mut line = String::new();
                while reader.read_line(&mut line).unwrap_or(0) > 2 {
                    line.clear();
                }
                let _ = conn.write_all(
                    format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    )
                    .as_bytes(),
                );
            }
        });
        format!("http://{addr}")
    }

    #[tokio::test]
    async fn a_next_link_to_another_server_is_not_followed_with_the_credentials() {
        let base = serve(vec![
            r#"{"values": [1], "next": "http://198.51.100.7/2.0/x?page=2"}"#.to_owned(),
        ]);
        let c = Client::new(
            Credentials::Bearer(zeroize::Zeroizing::new("t0ken".into())),
            Duration::from_secs(1),
        )
        .expect("client");
        let e = c
            .list(&format!("{base}/2.0/x"), Paging::Cloud)
            .await
            .expect_err("refused");
        assert!(
            e.to_string()
                .contains("`next` leads to another server (http://198.51.100.7)"),
            "{e}"
        );
        assert!(!e.to_string().contains("t0ken"));
    }

    #[test]
    fn retry_after_is_obeyed_within_reason() {
        let mut h = reqwest::header::HeaderMap::new();
        assert_eq!(retry_after(&h, 0), Duration::from_secs(1));
        assert_eq!(retry_after(&h, 3), Duration::from_secs(8));
        h.insert(reqwest::header::RETRY_AFTER, "7".parse().expect("value"));
        assert_eq!(retry_after(&h, 0), Duration::from_secs(7));
        h.insert(
            reqwest::header::RETRY_AFTER,
            "99999".parse().expect("value"),
        );
        assert_eq!(retry_after(&h, 0), Duration::from_secs(300));
    }
}

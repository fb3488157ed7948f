//! Notification mail: the SMTP transport `serve` is given (`--smtp-url`, lettre over rustls),
//! and the message, made by pure functions ([`subject`], [`text`], [`html`], [`message`]):
//! a subject as CircleCI writes it (`Failed: acme/widget#12 (main - 1a2b3c4)`), plain-text
//! and HTML parts, a link to the pipeline's page, the failed jobs and their first failing
//! step. Every name that comes from a repository (branch, job, step, commit subject) is
//! outside input: control characters are taken out of the subject (no header can be
//! injected through it), and the HTML part escapes everything.

use super::NotifyError;
use lettre::message::{header::ContentType, Mailbox, MultiPart, SinglePart};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{Address, AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use std::path::Path;
use std::time::Duration;

/// An e-mail address as `project notify add --email` and `serve --mail-from` take it: one
/// address (`name@domain`), checked by lettre's parser; no display name, no spaces, no
/// control characters.
pub fn parse_address(s: &str) -> Result<Address, NotifyError> {
    let bad = |why: String| NotifyError::Address {
        address: crate::printable(s),
        why,
    };
    if s.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(bad("spaces and control characters are not allowed".into()));
    }
    s.parse::<Address>().map_err(|e| bad(e.to_string()))
}

/// A failed job of the pipeline, as the mail lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailedJob {
    pub workflow: String,
    pub name: String,
    /// Its status word (`failed`, `timedout`, `infrastructure_fail`, `unauthorized`).
    pub status: String,
    /// The first step that did not succeed: its name and exit code.
    pub step: Option<(String, Option<i64>)>,
    /// The job's page.
    pub url: Option<String>,
}

/// What a notification mail says.
#[derive(Debug, Clone)]
pub struct MailFacts {
    /// `failed`, `fixed` or `finished`.
    pub event: String,
    /// The pipeline's end (`success`, `failed`, `errored`, `canceled`).
    pub status: String,
    pub project: String,
    pub number: i64,
    pub branch: Option<String>,
    pub tag: Option<String>,
    pub revision: Option<String>,
    pub commit_subject: Option<String>,
    /// The config's error, for an errored pipeline.
    pub error: Option<String>,
    /// The pipeline's page.
    pub url: String,
    pub failed: Vec<FailedJob>,
}

/// A line of outside text for a header or a list: control characters (CR, LF, escapes)
/// become spaces, and it is cut to `max` characters.
fn one_line(s: &str, max: usize) -> String {
    let mut out: String = s
        .chars()
        .map(|c| if crate::is_unsafe_char(c) { ' ' } else { c })
        .take(max)
        .collect();
    if s.chars().count() > max {
        out.push('…');
    }
    out
}

fn headline(f: &MailFacts) -> &'static str {
    match (f.event.as_str(), f.status.as_str()) {
        ("fixed", _) => "Fixed",
        (_, "success") => "Success",
        (_, "canceled") => "Canceled",
        (_, "errored") => "Errored",
        _ => "Failed",
    }
}

/// `Failed: acme/widget#12 (main - 1a2b3c4)`, as CircleCI's subjects go.
pub fn subject(f: &MailFacts) -> String {
    let place = f
        .branch
        .as_deref()
        .or(f.tag.as_deref())
        .map(|b| one_line(b, 80));
    let sha = f
        .revision
        .as_deref()
        .map(|r| r.chars().take(7).collect::<String>());
    let detail = match (place, sha) {
        (Some(p), Some(s)) => format!(" ({p} - {s})"),
        (Some(p), None) => format!(" ({p})"),
        (None, Some(s)) => format!(" ({s})"),
        (None, None) => String::new(),
    };
    format!(
        "{}: {}#{}{detail}",
        headline(f),
        one_line(&f.project, 120),
        f.number
    )
}

fn step_line(j: &FailedJob) -> String {
    match &j.step {
        Some((name, Some(code))) => format!(
            "first failing step: {} (exit code {code})",
            one_line(name, 200)
        ),
        Some((name, None)) => format!("first failing step: {}", one_line(name, 200)),
        None => "no step failed (it did not run, or ended before its steps)".to_owned(),
    }
}

/// The plain-text part.
pub fn text(f: &MailFacts) -> String {
    let mut out = format!("{}\n\n", subject(f));
    if let Some(s) = &f.commit_subject {
        out.push_str(&format!("Commit: {}\n", one_line(s, 200)));
    }
    out.push_str(&format!("Pipeline: {}\n", f.url));
    if let Some(e) = &f.error {
        out.push_str(&format!(
            "\nThe config did not compile: {}\n",
            one_line(e, 500)
        ));
    }
    if !f.failed.is_empty() {
        out.push_str("\nFailed jobs:\n");
        for j in &f.failed {
            out.push_str(&format!(
                "- {}/{} ({}): {}\n",
                one_line(&j.workflow, 100),
                one_line(&j.name, 100),
                j.status,
                step_line(j)
            ));
            if let Some(u) = &j.url {
                out.push_str(&format!("  {u}\n"));
            }
        }
    }
    out.push_str("\n-- \nBosun: you get this mail because `bosun coordinator project notify add` named this address.\n");
    out
}

fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c if crate::is_unsafe_char(c) => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

/// The HTML part: the same as [`text`], everything escaped.
pub fn html(f: &MailFacts) -> String {
    let mut out = format!("<!DOCTYPE html><html><body><h2>{}</h2>", esc(&subject(f)));
    if let Some(s) = &f.commit_subject {
        out.push_str(&format!("<p>Commit: {}</p>", esc(&one_line(s, 200))));
    }
    out.push_str(&format!(
        "<p><a href=\"{}\">Open the pipeline</a></p>",
        esc(&f.url)
    ));
    if let Some(e) = &f.error {
        out.push_str(&format!(
            "<p>The config did not compile: <code>{}</code></p>",
            esc(&one_line(e, 500))
        ));
    }
    if !f.failed.is_empty() {
        out.push_str("<h3>Failed jobs</h3><ul>");
        for j in &f.failed {
            let name = esc(&format!("{}/{}", j.workflow, j.name));
            let name = match &j.url {
                Some(u) => format!("<a href=\"{}\">{name}</a>", esc(u)),
                None => name,
            };
            out.push_str(&format!(
                "<li>{name} ({}): {}</li>",
                esc(&j.status),
                esc(&step_line(j))
            ));
        }
        out.push_str("</ul>");
    }
    out.push_str("</body></html>");
    out
}

/// The message from `from` to `to`: plain text and HTML as alternatives.
pub fn message(from: &Mailbox, to: &Address, f: &MailFacts) -> Result<Message, NotifyError> {
    Message::builder()
        .from(from.clone())
        .to(Mailbox::new(None, to.clone()))
        .subject(subject(f))
        .multipart(
            MultiPart::alternative()
                .singlepart(
                    SinglePart::builder()
                        .header(ContentType::TEXT_PLAIN)
                        .body(text(f)),
                )
                .singlepart(
                    SinglePart::builder()
                        .header(ContentType::TEXT_HTML)
                        .body(html(f)),
                ),
        )
        .map_err(|e| NotifyError::Message(e.to_string()))
}

/// How `serve` reaches its SMTP server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SmtpUrl {
    pub host: String,
    pub port: u16,
    pub tls: TlsMode,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsMode {
    /// `smtp://`: STARTTLS when the server offers it.
    Opportunistic,
    /// `smtp://…?tls=required`: STARTTLS or nothing is sent.
    Required,
    /// `smtps://`: TLS from the first byte.
    Wrapper,
}

/// `smtp://host[:port][?tls=required|opportunistic]` or `smtps://host[:port]`; no user or
/// password in it (they come from `--smtp-credentials-file`, never the command line).
pub fn parse_smtp_url(url: &str) -> Result<SmtpUrl, NotifyError> {
    let bad =
        |why: &str| NotifyError::Setting(format!("--smtp-url `{}`: {why}", crate::printable(url)));
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| bad("expected smtp://HOST:PORT or smtps://HOST:PORT"))?;
    let (authority, query) = match rest.split_once('?') {
        Some((a, q)) => (a, Some(q)),
        None => (rest, None),
    };
    let authority = authority.trim_end_matches('/');
    if authority.contains('@') {
        return Err(bad(
            "no user or password in the URL: put them in --smtp-credentials-file",
        ));
    }
    let (mut tls, default_port) = match scheme {
        "smtp" => (TlsMode::Opportunistic, 587),
        "smtps" => (TlsMode::Wrapper, 465),
        _ => return Err(bad("expected smtp:// or smtps://")),
    };
    if let Some(q) = query {
        for pair in q.split('&') {
            match (scheme, pair) {
                ("smtp", "tls=required") => tls = TlsMode::Required,
                ("smtp", "tls=opportunistic") => tls = TlsMode::Opportunistic,
                _ => {
                    return Err(bad(
                        "the only setting is tls=required (or tls=opportunistic) on smtp://",
                    ))
                }
            }
        }
    }
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || authority.starts_with('[') => {
            let port = p
                .parse::<u16>()
                .map_err(|_| bad("the port is not a number"))?;
            (h, port)
        }
        _ => (authority, default_port),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() || host.contains(['/', ' ']) {
        return Err(bad("no host"));
    }
    Ok(SmtpUrl {
        host: host.to_owned(),
        port,
        tls,
    })
}

/// The SMTP side of `serve`: where, as whom, from which address.
pub struct Mailer {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    pub from: Mailbox,
}

/// `--smtp-credentials-file`: one line, `USER:PASSWORD`.
fn read_credentials(path: &Path) -> Result<Credentials, NotifyError> {
    let text = zeroize::Zeroizing::new(std::fs::read_to_string(path).map_err(|e| {
        NotifyError::Setting(format!("--smtp-credentials-file {}: {e}", path.display()))
    })?);
    let line = text.lines().next().unwrap_or("").trim_end();
    match line.split_once(':') {
        Some((user, password)) if !user.is_empty() && !password.is_empty() => {
            Ok(Credentials::new(user.to_owned(), password.to_owned()))
        }
        _ => Err(NotifyError::Setting(format!(
            "--smtp-credentials-file {}: expected one line USER:PASSWORD",
            path.display()
        ))),
    }
}

impl Mailer {
    /// The transport for `url`, signing in with the credentials file's when given, trusting
    /// the system's roots and `ca_file`'s certificates (PEM) for TLS.
    pub fn new(
        url: &str,
        credentials: Option<&Path>,
        ca_file: Option<&Path>,
        from: &str,
        timeout: Duration,
    ) -> Result<Mailer, NotifyError> {
        let u = parse_smtp_url(url)?;
        let from = Mailbox::new(Some("Bosun".to_owned()), parse_address(from)?);
        let mut params = TlsParameters::builder(u.host.clone());
        if let Some(ca) = ca_file {
            let pem = std::fs::read(ca).map_err(|e| {
                NotifyError::Setting(format!("--smtp-ca-file {}: {e}", ca.display()))
            })?;
            let cert = Certificate::from_pem(&pem).map_err(|e| {
                NotifyError::Setting(format!("--smtp-ca-file {}: {e}", ca.display()))
            })?;
            params = params.add_root_certificate(cert);
        }
        let params = params
            .build_rustls()
            .map_err(|e| NotifyError::Setting(format!("SMTP TLS: {e}")))?;
        let tls = match u.tls {
            TlsMode::Opportunistic => Tls::Opportunistic(params),
            TlsMode::Required => Tls::Required(params),
            TlsMode::Wrapper => Tls::Wrapper(params),
        };
        let mut b = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(u.host)
            .port(u.port)
            .tls(tls)
            .timeout(Some(timeout));
        if let Some(path) = credentials {
            b = b.credentials(read_credentials(path)?);
        }
        Ok(Mailer {
            transport: b.build(),
            from,
        })
    }

    /// Send `m`; the server's refusal or the connection's failure is the error.
    pub async fn send(&self, m: Message) -> Result<(), NotifyError> {
        self.transport
            .send(m)
            .await
            .map(|_| ())
            .map_err(|e| NotifyError::Smtp(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> MailFacts {
        MailFacts {
            event: "failed".into(),
            status: "failed".into(),
            project: "acme/widget".into(),
            number: 12,
            branch: Some("feat\r\nBcc: victim@example.com".into()),
            tag: None,
            revision: Some("1a2b3c4d5e6f".into()),
            commit_subject: Some("<script>alert(1)</script>".into()),
            error: None,
            url: "https://ci.example.com/pipelines/7".into(),
            failed: vec![FailedJob {
                workflow: "main".into(),
                name: "test".into(),
                status: "failed".into(),
                step: Some(("Run \"make <check>\"".into(), Some(2))),
                url: Some("https://ci.example.com/jobs/9".into()),
            }],
        }
    }

    #[test]
    fn the_subject_is_circlecis_and_one_line() {
        let mut f = facts();
        f.branch = Some("main".into());
        assert_eq!(subject(&f), "Failed: acme/widget#12 (main - 1a2b3c4)");
        f.event = "fixed".into();
        f.status = "success".into();
        assert_eq!(subject(&f), "Fixed: acme/widget#12 (main - 1a2b3c4)");
        f.event = "finished".into();
        assert!(subject(&f).starts_with("Success: "));
        let s = subject(&facts());
        assert!(!s.contains(['\r', '\n']), "{s:?}");
    }

    #[test]
    fn a_branch_with_cr_lf_injects_no_header() {
        let from = Mailbox::new(
            Some("Bosun".into()),
            parse_address("ci@example.com").expect("from"),
        );
        let to = parse_address("team@example.com").expect("to");
        let m = message(&from, &to, &facts()).expect("message");
        let raw = String::from_utf8(m.formatted()).expect("utf8");
        let headers = raw.split("\r\n\r\n").next().expect("headers");
        assert!(
            !headers
                .lines()
                .any(|l| l.to_ascii_lowercase().starts_with("bcc:")),
            "{headers}"
        );
        assert_eq!(
            headers
                .lines()
                .filter(|l| l.starts_with("Subject:"))
                .count(),
            1,
            "{headers}"
        );
        assert!(
            raw.contains("text/plain") && raw.contains("text/html"),
            "{raw}"
        );
    }

    #[test]
    fn the_parts_list_the_failed_jobs_and_escape_html() {
        let f = facts();
        let t = text(&f);
        assert!(t.contains("https://ci.example.com/pipelines/7"), "{t}");
        assert!(
            t.contains(
                "main/test (failed): first failing step: Run \"make <check>\" (exit code 2)"
            ),
            "{t}"
        );
        let h = html(&f);
        assert!(!h.contains("<script>"), "{h}");
        assert!(h.contains("&lt;script&gt;"), "{h}");
        assert!(h.contains("make &lt;check&gt;"), "{h}");
        assert!(
            h.contains("<a href=\"https://ci.example.com/jobs/9\">main/test</a>"),
            "{h}"
        );
    }

    #[test]
    fn addresses_are_checked() {
        assert!(parse_address("team@example.com").is_ok());
        for bad in [
            "team",
            "team@",
            "a@b\r\nBcc: x@y",
            "Team <team@example.com>",
            "a b@example.com",
            "",
        ] {
            assert!(parse_address(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn smtp_urls_say_where_and_how() {
        let u = parse_smtp_url("smtp://mail.example.com:2525").expect("smtp");
        assert_eq!(
            u,
            SmtpUrl {
                host: "mail.example.com".into(),
                port: 2525,
                tls: TlsMode::Opportunistic
            }
        );
        assert_eq!(
            parse_smtp_url("smtp://m?tls=required").expect("req").tls,
            TlsMode::Required
        );
        assert_eq!(parse_smtp_url("smtp://m").expect("587").port, 587);
        let s = parse_smtp_url("smtps://m").expect("smtps");
        assert_eq!((s.port, s.tls), (465, TlsMode::Wrapper));
        assert_eq!(parse_smtp_url("smtp://[::1]:25").expect("v6").host, "::1");
        for bad in [
            "mail.example.com",
            "http://m",
            "smtp://u:p@m:25",
            "smtp://m:x",
            "smtps://m?tls=required",
            "smtp://",
        ] {
            assert!(parse_smtp_url(bad).is_err(), "{bad}");
        }
    }
}

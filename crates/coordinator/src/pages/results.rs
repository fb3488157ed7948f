//! The job page's tests and artifacts tabs, and the artifact downloads
//! (`GET /jobs/{id}/artifacts/{path}`), from what agents stored over the protocol (v2).
//!
//! Artifacts are whatever a job wrote, so they are never served as a page of ours: HTML,
//! SVG, XML and anything not known to be harmless go out as `application/octet-stream`
//! attachments; only plain text and raster images are shown inline. Every answer carries
//! `X-Content-Type-Options: nosniff` and a `Content-Security-Policy` with `sandbox` (set by
//! the web router's middleware and here), so even a browser that rendered one would give it
//! no script and no access to this origin.

use super::esc;
use crate::store::blobs::{human_bytes, JobResults};
use crate::store::JobRow;
use crate::AppState;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use std::fmt::Write as _;
use std::sync::Arc;

/// Failed tests listed on the page (the stored ones are at most 1,000 per job).
const FAILED_SHOWN: usize = 200;

/// The tests tab's content: the counts, then the failed tests with their messages.
pub fn tests_section(job: &JobRow, r: &JobResults) -> String {
    let Some(t) = &r.tests else {
        return if job.is_final() {
            "<p id=\"tests-none\">No test results: the job has no <code>store_test_results</code> \
             step (or its agent speaks protocol v1 and kept them).</p>"
                .to_owned()
        } else {
            "<p id=\"tests-none\">No test results yet.</p>".to_owned()
        };
    };
    let failed = t.failures + t.errors;
    let passed = t.tests.saturating_sub(failed + t.skipped);
    let mut m = format!(
        "<p id=\"tests-summary\" data-tests=\"{}\" data-failed=\"{failed}\">{} tests: \
         <span class=\"badge st-success\">✓ {passed} passed</span> \
         <span class=\"badge st-failed\">✗ {failed} failed</span> \
         <span class=\"badge st-skipped\">↷ {} skipped</span></p>",
        t.tests, t.tests, t.skipped
    );
    if !t.failed.is_empty() {
        m.push_str(
            "<table id=\"failed-tests\"><caption>Failed tests</caption><thead><tr>\
             <th scope=\"col\">Test</th><th scope=\"col\">Class</th><th scope=\"col\">Message</th>\
             </tr></thead><tbody>",
        );
        for f in t.failed.iter().take(FAILED_SHOWN) {
            let _ = write!(
                m,
                "<tr class=\"failed-test\"><td class=\"name\">{}</td><td class=\"class\">{}</td>\
                 <td class=\"message\"><pre>{}</pre></td></tr>",
                esc(&f.name),
                esc(&f.classname),
                esc(&f.message)
            );
        }
        m.push_str("</tbody></table>");
        if t.failed.len() > FAILED_SHOWN {
            let _ = write!(
                m,
                "<p>… and {} more failed tests.</p>",
                t.failed.len() - FAILED_SHOWN
            );
        }
    }
    m
}

/// Percent-encode a path for a URL, keeping `/` between its components.
fn url_path(p: &str) -> String {
    let mut out = String::with_capacity(p.len());
    for b in p.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// The artifacts tab's content: a link per file.
pub fn artifacts_section(job: &JobRow, r: &JobResults) -> String {
    if r.artifacts.is_empty() {
        return if job.is_final() {
            "<p id=\"artifacts-none\">No artifacts: the job has no <code>store_artifacts</code> \
             step (or its agent speaks protocol v1 and kept them).</p>"
                .to_owned()
        } else {
            "<p id=\"artifacts-none\">No artifacts yet.</p>".to_owned()
        };
    }
    let mut m = String::from("<ul id=\"artifact-list\">");
    for (path, size) in &r.artifacts {
        let _ = write!(
            m,
            "<li><a class=\"artifact\" href=\"/jobs/{}/artifacts/{}\">{}</a> <span class=\"size\">({})</span></li>",
            job.id,
            url_path(path),
            esc(path),
            esc(&human_bytes(*size))
        );
    }
    m.push_str("</ul>");
    m
}

/// How an artifact is served: (content type, shown inline).
fn served_as(path: &str) -> (&'static str, bool) {
    let ext = path
        .rsplit('/')
        .next()
        .and_then(|name| name.rsplit_once('.'))
        .map(|(_, e)| e.to_ascii_lowercase())
        .unwrap_or_default();
    match ext.as_str() {
        "txt" | "log" | "md" | "csv" | "tsv" | "json" | "yml" | "yaml" | "out" => {
            ("text/plain; charset=utf-8", true)
        }
        "png" => ("image/png", true),
        "jpg" | "jpeg" => ("image/jpeg", true),
        "gif" => ("image/gif", true),
        "webp" => ("image/webp", true),
        // HTML, SVG, XML, PDF, scripts, archives, anything else: a download.
        _ => ("application/octet-stream", false),
    }
}

/// `Content-Disposition` for `path`'s base name (quoted ASCII, and RFC 5987 UTF-8).
fn disposition(path: &str, inline: bool) -> String {
    let name = path.rsplit('/').next().unwrap_or("artifact");
    let ascii: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() && c != '"' && c != '\\' || c == ' ' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let mut encoded = String::new();
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            encoded.push(b as char);
        } else {
            let _ = write!(encoded, "%{b:02X}");
        }
    }
    format!(
        "{}; filename=\"{ascii}\"; filename*=UTF-8''{encoded}",
        if inline { "inline" } else { "attachment" }
    )
}

fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        axum::Json(bosun_protocol::ApiError {
            error: "no such artifact".into(),
        }),
    )
        .into_response()
}

/// `GET /jobs/{id}/artifacts/{*path}`: an artifact's bytes, streamed from its blob.
pub async fn artifact(
    State(state): State<Arc<AppState>>,
    Path((raw, path)): Path<(String, String)>,
) -> Response {
    let Some(id) = crate::store::parse_job_id(&raw) else {
        return not_found();
    };
    let p = path.clone();
    let (sha, size) = match state.db(move |s| s.artifact(id, &p)).await {
        Ok(Some(a)) => a,
        Ok(None) => return not_found(),
        Err(e) => {
            tracing::error!("artifact: {e}");
            return StatusCode::INTERNAL_SERVER_ERROR.into_response();
        }
    };
    if !crate::blobs::is_blob_name(&sha) {
        return not_found();
    }
    let pieces = match state.blobs.read(&sha, 0, size).await {
        Ok(p) => p,
        Err(e) => {
            tracing::error!("artifact blob {sha}: {e}");
            return not_found();
        }
    };
    let (ctype, inline) = served_as(&path);
    let mut resp = Response::new(Body::from_stream(pieces));
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(ctype));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(size));
    if let Ok(v) = HeaderValue::from_str(&disposition(&path, inline)) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(ARTIFACT_CSP),
    );
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, max-age=300"),
    );
    resp
}

/// The policy of an artifact answer: nothing loads, nothing runs, no origin.
pub const ARTIFACT_CSP: &str = "default-src 'none'; img-src 'self'; style-src 'none'; sandbox";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn artifacts_are_never_html_and_names_stay_in_their_quotes() {
        assert_eq!(served_as("report/index.html").0, "application/octet-stream");
        assert_eq!(served_as("x.svg").0, "application/octet-stream");
        assert!(!served_as("x.XHTML").1);
        assert_eq!(
            served_as("logs/out.txt"),
            ("text/plain; charset=utf-8", true)
        );
        assert_eq!(served_as("noext"), ("application/octet-stream", false));
        let d = disposition("a/evil\"; x=1\r\n.html", false);
        assert!(
            d.starts_with("attachment; filename=\"evil_; x=1__.html\""),
            "{d}"
        );
        assert!(!d.contains('\r') && !d.contains('\n'));
        assert_eq!(url_path("a b/c#d.txt"), "a%20b/c%23d.txt");
    }
}

//! A project's settings page (`GET /projects/{workspace}/{repo}/settings`), for a person
//! with admin permission on its repository or a coordinator admin (the web router's
//! `Settings` guard): its environment variables (names and masked values, never a value;
//! add or replace, delete) and its switches (public, public badges, the SSH policy). Every
//! form carries the session's CSRF token; before each change the person's permissions are
//! read again from Bitbucket, and the change is recorded in the audit log (`settings`,
//! "from the settings page"; names, never values). The rules are
//! `model::project_settings`'; the store's part is `ProjectSettingsStore`.

use super::{error_page, esc, internal, shell, url_encode};
use crate::audit::{Actor, AuditAction, Event};
use crate::model::people::Action;
use crate::model::project_settings::{self as rules, Switches};
use crate::model::ssh_policy::SshPolicy;
use crate::people::{self, Viewer};
use crate::store::{Backend, ProjectVar};
use crate::AppState;
use axum::extract::{Form, Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use std::fmt::Write as _;
use std::sync::Arc;

/// How the audit log says a change was made.
const FROM_THE_PAGE: &str = "from the settings page";

/// The page's address for project `slug`.
pub fn href(slug: &str) -> String {
    format!("/projects/{}/settings", url_encode(slug))
}

/// A variable's name as one segment of a path.
fn segment(name: &str) -> String {
    url_encode(name).replace('/', "%2F")
}

fn no_store(mut r: Response) -> Response {
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// The page's body: the variables (masked) and the switches, with their forms when a
/// person (`csrf`) looks at it; an operator's token sees them without forms.
fn render(slug: &str, vars: &[ProjectVar], switches: Switches, csrf: Option<&str>) -> String {
    let base = href(slug);
    let hidden = |csrf: &str| {
        format!(
            "<input type=\"hidden\" name=\"csrf\" value=\"{}\">",
            esc(csrf)
        )
    };
    let mut m = format!(
        "<h1>{} <small>project settings</small></h1>\
         <p><a href=\"/projects/{}\">The project's page</a></p>\
         <section id=\"env-vars\"><h2>Environment variables</h2>\
         <p>Every job of the project gets these; a secret one is masked in its log. A value \
         is never shown again: only <code>{}</code> and, for a value of at least {} \
         characters, its last four.</p>",
        esc(slug),
        url_encode(slug),
        rules::MASK,
        rules::SHOWN_FROM,
    );
    if vars.is_empty() {
        m.push_str("<p id=\"no-vars\">No variables.</p>");
    } else {
        m.push_str(
            "<table id=\"env-list\"><thead><tr><th>Name</th><th>Value</th><th>In the log</th>\
             <th></th></tr></thead><tbody>",
        );
        for v in vars {
            let delete = match csrf {
                Some(c) => format!(
                    "<form method=\"post\" action=\"{base}/env/{}/delete\" class=\"delete-var\">\
                     {}<button type=\"submit\">Delete</button></form>",
                    segment(&v.name),
                    hidden(c)
                ),
                None => String::new(),
            };
            let _ = write!(
                m,
                "<tr data-var=\"{name}\"><td class=\"name\"><code>{name}</code></td>\
                 <td class=\"value\"><code>{}</code></td><td>{}</td><td>{delete}</td></tr>",
                esc(&rules::masked(&v.value)),
                if v.secret { "masked" } else { "shown" },
                name = esc(&v.name),
            );
        }
        m.push_str("</tbody></table>");
    }
    if let Some(c) = csrf {
        let _ = write!(
            m,
            "<form method=\"post\" action=\"{base}/env\" id=\"add-var\">{}\
             <label>Name <input type=\"text\" name=\"name\" id=\"var-name\" maxlength=\"256\" \
             pattern=\"[A-Za-z_][A-Za-z0-9_]*\" autocomplete=\"off\" required></label> \
             <label>Value <input type=\"password\" name=\"value\" id=\"var-value\" \
             autocomplete=\"new-password\" required></label> \
             <button type=\"submit\">Add or replace</button></form>",
            hidden(c)
        );
    }
    m.push_str("</section><section id=\"switches\"><h2>Settings</h2>");
    let checked = |on: bool| if on { " checked" } else { "" };
    let selected = |p: SshPolicy| {
        if switches.ssh_policy == p {
            " selected"
        } else {
            ""
        }
    };
    let disabled = if csrf.is_some() { "" } else { " disabled" };
    let _ = write!(
        m,
        "<form method=\"post\" action=\"{base}\" id=\"switches-form\">{}\
         <p><label><input type=\"checkbox\" name=\"public\" value=\"true\" id=\"public\"{}{disabled}> \
         Public: anyone reads its pages, logs, artifacts and test results without logging in</label></p>\
         <p><label><input type=\"checkbox\" name=\"public_badges\" value=\"true\" id=\"public-badges\"{}{disabled}> \
         Public badges: its status badges are served without the badge token</label></p>\
         <p><label>A rerun with SSH by someone other than the user key's owner \
         <select name=\"ssh_policy\" id=\"ssh-policy\"{disabled}>\
         <option value=\"without-user-key\"{}>runs without the user key (deploy key only)</option>\
         <option value=\"refuse\"{}>is refused</option></select></label></p>{}</form></section>",
        csrf.map(hidden).unwrap_or_default(),
        checked(switches.public),
        checked(switches.public_badges),
        selected(SshPolicy::WithoutUserKey),
        selected(SshPolicy::Refuse),
        if csrf.is_some() {
            "<p><button type=\"submit\">Save</button></p>"
        } else {
            "<p>Log in with Bitbucket to change them here, or use <code>bosun coordinator \
             project set</code> on the host.</p>"
        },
    );
    m
}

/// `GET /projects/{workspace}/{repo}/settings`.
pub(crate) async fn page(
    State(state): State<Arc<AppState>>,
    Path((workspace, repo)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let name = format!("{workspace}/{repo}");
    let read = state
        .db(move |s: &dyn Backend| {
            let Some((slug, switches)) = s.project_switches(&name)? else {
                return Ok(None);
            };
            let vars = s.project_vars(&slug)?;
            Ok(Some((slug, switches, vars)))
        })
        .await;
    let (slug, switches, vars) = match read {
        Ok(Some(x)) => x,
        Ok(None) => return super::not_found(),
        Err(e) => return internal(e),
    };
    let viewer = match people::viewer(&state, &headers).await {
        Ok(v) => v,
        Err(e) => return internal(e),
    };
    let main = render(
        &slug,
        &vars,
        switches,
        viewer.as_ref().map(|v| v.csrf.as_str()),
    );
    no_store(shell(&format!("{slug} settings · bosun"), "", &main).into_response())
}

/// The person behind a form on project `workspace/repo`'s page, its CSRF token theirs and
/// their permission read again from Bitbucket now (a permission taken away there stops the
/// change at once): the person and the project's current slug; else the answer to give.
async fn acting(
    state: &AppState,
    headers: &HeaderMap,
    workspace: &str,
    repo: &str,
    csrf: Option<&str>,
) -> Result<(Viewer, String), Response> {
    let viewer = super::form_viewer(state, headers, csrf).await?;
    let name = format!("{workspace}/{repo}");
    let n = name.clone();
    let slug = match state
        .db(move |s: &dyn Backend| s.project_switches(&n))
        .await
    {
        Ok(Some((slug, _))) => slug,
        Ok(None) => return Err(super::not_found()),
        Err(e) => return Err(internal(e)),
    };
    if let Err(e) = people::refresh_permissions(state, &viewer.person, true).await {
        return Err(internal(e));
    }
    match people::may(state, &viewer, &slug, Action::Settings).await {
        Ok(true) => Ok((viewer, slug)),
        Ok(false) => Err(
            match people::may(state, &viewer, &slug, Action::Read).await {
                Ok(true) => error_page(StatusCode::FORBIDDEN, &needs_admin(&viewer, &slug)),
                Ok(false) => super::not_found(),
                Err(e) => internal(e),
            },
        ),
        Err(e) => Err(internal(e)),
    }
}

/// What a reader or writer is told.
pub fn needs_admin(viewer: &Viewer, slug: &str) -> String {
    format!(
        "{} may not change the settings of {slug}: that needs {} permission on its repository \
         (or a coordinator admin).",
        viewer.person.nickname,
        Action::Settings.needs()
    )
}

/// The change is done: its audit row, its log line (names only), back to the page.
fn changed(s: &dyn Backend, viewer: &Viewer, slug: &str, what: &str) -> crate::Result<()> {
    let mut e = Event::new(
        Actor::Person(viewer.person.nickname.clone()),
        AuditAction::Settings,
    )
    .target(what.to_owned())
    .detail(FROM_THE_PAGE);
    e.project = Some(slug.to_owned());
    crate::audit::record(s, e)?;
    tracing::info!(
        person = %crate::printable(&viewer.person.nickname),
        project = %crate::printable(slug),
        "project settings changed from the settings page: {}",
        crate::printable(what)
    );
    Ok(())
}

fn back(slug: &str, anchor: &str) -> Response {
    super::people::see_other(&format!("{}#{anchor}", href(slug)), &[])
}

/// What a store call's error answers on a form.
fn failed(e: crate::CoordError) -> Response {
    match e {
        crate::CoordError::NotFound(_) => super::not_found(),
        crate::CoordError::Invalid(m) => error_page(StatusCode::BAD_REQUEST, &m),
        e => internal(e),
    }
}

#[derive(Deserialize)]
pub struct SwitchesForm {
    #[serde(default)]
    csrf: Option<String>,
    #[serde(default)]
    public: Option<String>,
    #[serde(default)]
    public_badges: Option<String>,
    #[serde(default)]
    ssh_policy: Option<String>,
}

/// `POST /projects/{workspace}/{repo}/settings` (fields `csrf`, `public`, `public_badges`,
/// `ssh_policy`): each switch that changed, one audit row each.
pub(crate) async fn switches(
    State(state): State<Arc<AppState>>,
    Path((workspace, repo)): Path<(String, String)>,
    headers: HeaderMap,
    Form(f): Form<SwitchesForm>,
) -> Response {
    let (viewer, slug) = match acting(&state, &headers, &workspace, &repo, f.csrf.as_deref()).await
    {
        Ok(x) => x,
        Err(r) => return r,
    };
    let wanted = match rules::wanted(
        f.public.as_deref(),
        f.public_badges.as_deref(),
        f.ssh_policy.as_deref(),
    ) {
        Ok(w) => w,
        Err(m) => return error_page(StatusCode::BAD_REQUEST, &m),
    };
    let s2 = slug.clone();
    let done = state
        .db(move |s: &dyn Backend| {
            let Some((_, now)) = s.project_switches(&s2)? else {
                return Err(crate::CoordError::NotFound(s2));
            };
            for c in rules::changes(now, wanted) {
                match c {
                    rules::Change::Public(b) => s.set_project_public(&s2, b)?,
                    rules::Change::PublicBadges(b) => s.set_public_badges(&s2, b)?,
                    rules::Change::SshPolicy(p) => s.set_ssh_policy(&s2, p)?,
                }
                changed(s, &viewer, &s2, &c.to_string())?;
            }
            Ok(())
        })
        .await;
    match done {
        Ok(()) => back(&slug, "switches"),
        Err(e) => failed(e),
    }
}

/// The add-or-replace form. No `Debug`: it holds a value.
#[derive(Deserialize)]
pub struct VarForm {
    #[serde(default)]
    csrf: Option<String>,
    #[serde(default)]
    name: String,
    #[serde(default)]
    value: String,
}

/// `POST /projects/{workspace}/{repo}/settings/env` (fields `csrf`, `name`, `value`): the
/// variable is added, or its value replaced, sealed as a secret (masked in the log).
pub(crate) async fn set_var(
    State(state): State<Arc<AppState>>,
    Path((workspace, repo)): Path<(String, String)>,
    headers: HeaderMap,
    Form(f): Form<VarForm>,
) -> Response {
    let value = zeroize::Zeroizing::new(f.value);
    let (viewer, slug) = match acting(&state, &headers, &workspace, &repo, f.csrf.as_deref()).await
    {
        Ok(x) => x,
        Err(r) => return r,
    };
    let name = f.name.trim().to_owned();
    if let Err(m) = rules::check_variable(&name, &value) {
        return error_page(StatusCode::BAD_REQUEST, &format!("Not saved: {m}"));
    }
    let s2 = slug.clone();
    let done = state
        .db(move |s: &dyn Backend| {
            s.set_project_var(&s2, &name, &value, true)?;
            changed(s, &viewer, &s2, &format!("variable {name} set"))
        })
        .await;
    match done {
        Ok(()) => back(&slug, "env-vars"),
        Err(e) => failed(e),
    }
}

/// `POST /projects/{workspace}/{repo}/settings/env/{name}/delete` (field `csrf`).
pub(crate) async fn delete_var(
    State(state): State<Arc<AppState>>,
    Path((workspace, repo, name)): Path<(String, String, String)>,
    headers: HeaderMap,
    Form(f): Form<super::CsrfForm>,
) -> Response {
    let (viewer, slug) = match acting(&state, &headers, &workspace, &repo, f.csrf.as_deref()).await
    {
        Ok(x) => x,
        Err(r) => return r,
    };
    let s2 = slug.clone();
    let done = state
        .db(move |s: &dyn Backend| {
            if !s.remove_project_var(&s2, &name)? {
                return Ok(false);
            }
            changed(s, &viewer, &s2, &format!("variable {name} deleted"))?;
            Ok(true)
        })
        .await;
    match done {
        Ok(true) => back(&slug, "env-vars"),
        Ok(false) => error_page(StatusCode::NOT_FOUND, "No such variable."),
        Err(e) => failed(e),
    }
}

/// The link to the page, for a viewer who may change the project's settings (nothing for
/// anyone else).
pub async fn link_for(state: &AppState, viewer: Option<&Viewer>, slug: &str) -> String {
    let Some(v) = viewer else {
        return String::new();
    };
    match people::may(state, v, slug, Action::Settings).await {
        Ok(true) => format!(
            "<p><a id=\"settings-link\" href=\"{}\">Project settings</a></p>",
            esc(&href(slug))
        ),
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn var(name: &str, value: &str, secret: bool) -> ProjectVar {
        ProjectVar {
            name: name.into(),
            value: zeroize::Zeroizing::new(value.into()),
            secret,
        }
    }

    #[test]
    fn the_page_shows_names_and_masks_never_a_value() {
        let vars = [
            var("DEPLOY_TOKEN", "hunter22-very-secret-9f2a", true),
            var("A\"<b>", "short", false),
        ];
        let sw = Switches {
            public: true,
            public_badges: false,
            ssh_policy: SshPolicy::Refuse,
        };
        let html = render("acme/widget", &vars, sw, Some("c5rf"));
        assert!(
            !html.contains("hunter22") && !html.contains("short"),
            "{html}"
        );
        assert!(html.contains("<code>xxxx9f2a</code>"), "{html}");
        assert!(
            html.contains("A&quot;&lt;b&gt;"),
            "names are escaped: {html}"
        );
        assert!(!html.contains("<b>"), "{html}");
        assert!(html.contains("/settings/env/A%22%3Cb%3E/delete"), "{html}");
        assert!(html.contains("name=\"public\" value=\"true\" id=\"public\" checked"));
        assert!(html.contains("<option value=\"refuse\" selected>"));
        assert_eq!(
            html.matches("value=\"c5rf\"").count(),
            4,
            "every form: {html}"
        );
        // An operator's token: no forms, nothing to send.
        let html = render("acme/widget", &vars, sw, None);
        assert!(
            !html.contains("<button") && !html.contains("name=\"csrf\""),
            "{html}"
        );
    }
}

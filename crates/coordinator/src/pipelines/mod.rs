//! Pipelines on the coordinator: a trigger (`bosun coordinator trigger`) or a Bitbucket
//! webhook records a pipeline; the runner here fetches and compiles its config
//! ([`config`]), records its workflows, and moves them forward whenever something changed
//! ([`PipelineStore::advance`]: jobs queued as their `requires` allow, approvals held,
//! serial groups one at a time). Agents claim the queued jobs as any other; their finishes
//! wake the runner.
//!
//! The config is read through Bitbucket's REST API when the project has API credentials and
//! the pipeline names a full commit ([`api`]), else (or when that fails) from the project's
//! config mirror over SSH ([`config`]).
//!
//! One door: [`spawn`] starts the runner inside `serve`; everything else goes through the
//! store, so the CLI (another process) and the web handlers change pipelines the same way.
//!
//! [`PipelineStore::advance`]: crate::store::PipelineStore::advance

pub mod api;
pub mod config;

use super::AppState;
use crate::bitbucket::status::statuses;
use crate::store::PipelineStore;
use std::sync::Arc;
use std::time::Duration;

/// What the runner needs beside the store.
#[derive(Debug, Clone)]
pub struct RunnerSettings {
    /// `HOST=ADDR:PORT` mappings for fetching configs (as the agent's `vcs_hosts`).
    pub vcs_hosts: Vec<String>,
    /// The coordinator's data directory: the projects' config mirrors live under it.
    pub data_dir: std::path::PathBuf,
    /// Bytes the config mirrors may take together (`--config-mirror-budget`).
    pub mirror_budget: u64,
    /// Registry orbs a config may import (`--orb-dir`: DIR/NAMESPACE/NAME@VERSION.yml).
    pub orb_dir: Option<std::path::PathBuf>,
}

/// How long fetching and compiling one pipeline's config may take.
const CONFIG_LIMIT: Duration = Duration::from_secs(60);

/// Start the runner: it wakes on every store change (our own writes, the CLI's, agents'
/// finishes) and at least once a second.
pub fn spawn(state: Arc<AppState>, settings: RunnerSettings) {
    tokio::spawn(async move {
        // One client for every config read through the API, so its connections (TLS
        // included) are kept alive from one pipeline to the next.
        let client = match api::client() {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::warn!("configs are read over SSH only: no HTTP client: {e}");
                None
            }
        };
        let mut refusals = api::Refusals::default();
        let mut changed = state.changed.subscribe();
        loop {
            changed.borrow_and_update();
            if let Err(e) = pass(&state, &settings, client.as_ref(), &mut refusals).await {
                tracing::warn!("pipelines: {e}");
            }
            tokio::select! {
                _ = changed.changed() => {}
                _ = state.pipelines_wake.notified() => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = state.shutdown.cancelled() => return,
            }
        }
    });
}

/// The config of `p` through Bitbucket's API, when it can be had there; `None`: read it from
/// the mirror (no credentials, no full commit, credentials refused lately, or the API
/// failed: said in the log).
async fn from_api(
    client: Option<&reqwest::Client>,
    p: &crate::store::pipelines::PipelineToFetch,
    refusals: &mut api::Refusals,
) -> Option<String> {
    let (client, src) = (client?, p.api.as_ref()?);
    if !api::full_commit(&p.reference) {
        return None;
    }
    if refusals.holds(&p.project_uuid, src) {
        tracing::debug!(
            pipeline = p.id,
            "the project's API credentials were refused lately; reading the config from the mirror"
        );
        return None;
    }
    match api::read(client, src, &p.reference).await {
        Ok(text) => Some(text),
        Err(e) => {
            let later = if refusals.note(&p.project_uuid, src, &e) {
                format!(
                    " (not asked again for {} min unless the credentials change)",
                    api::REFUSAL_MEMORY.as_secs() / 60
                )
            } else {
                String::new()
            };
            tracing::info!(
                pipeline = p.id,
                "the config through Bitbucket's API: {e}; reading it from the mirror{later}"
            );
            None
        }
    }
}

async fn pass(
    state: &Arc<AppState>,
    settings: &RunnerSettings,
    client: Option<&reqwest::Client>,
    refusals: &mut api::Refusals,
) -> super::Result<()> {
    let created = state.db(|s| s.pipelines_to_fetch()).await?;
    for p in created {
        let t0 = std::time::Instant::now();
        let through_api = from_api(client, &p, refusals).await;
        // Each config on its own blocking task, so a slow fetch does not hold up the others'
        // jobs: the pass waits for it, but `advance` below runs for them on the next wake.
        let hosts = settings.vcs_hosts.clone();
        let orbs = settings.orb_dir.clone();
        let mirrors = config::mirrors(&settings.data_dir, settings.mirror_budget);
        let id = p.id;
        let work = tokio::task::spawn_blocking(move || {
            let (source, fetched) = match through_api {
                Some(text) => (
                    "api",
                    config::Fetched {
                        revision: p.reference.to_ascii_lowercase(),
                        text,
                    },
                ),
                None => (
                    "mirror",
                    config::fetch(&p, &hosts, &mirrors).map_err(|e| (None, e.to_string()))?,
                ),
            };
            let t1 = std::time::Instant::now();
            let mut compiled =
                config::compile(&p, &fetched.revision, &fetched.text, orbs.as_deref())
                    .map_err(|e| (Some(fetched.revision.clone()), e))?;
            // What a webhook's first job waits for, in parts (issue 16's < 100 ms budget).
            tracing::debug!(
                pipeline = id,
                source,
                fetch_ms = (t1 - t0).as_secs_f64() * 1000.0,
                compile_ms = t1.elapsed().as_secs_f64() * 1000.0,
                "config read"
            );
            // The default branch's config says which workflows are scheduled: read again
            // whenever a pipeline of the default branch compiles (a push to it, above all).
            let on_default = p.tag.is_none() && p.branch.as_deref() == Some(&p.default_branch);
            let triggers = std::mem::take(&mut compiled.triggers);
            let schedules = on_default.then(|| (p.project_uuid.clone(), triggers));
            Ok::<_, (Option<String>, String)>((fetched, compiled, schedules))
        });
        let outcome = match tokio::time::timeout(CONFIG_LIMIT, work).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => Err((None, format!("the config task failed: {e}"))),
            Err(_) => Err((
                None,
                format!(
                    "fetching and compiling the config took longer than {}s",
                    CONFIG_LIMIT.as_secs()
                ),
            )),
        };
        match outcome {
            Ok((fetched, compiled, schedules)) => {
                if let Some((project, triggers)) = schedules {
                    let at = fetched.revision.clone();
                    let changed = state
                        .db(move |s| s.set_workflow_schedules(&project, &at, &triggers))
                        .await?;
                    if changed {
                        tracing::info!(pipeline = id, revision = %fetched.revision, "scheduled workflows read again");
                    }
                }
                state
                    .db(move |s| {
                        // The config first: API v2 reads it once the pipeline runs.
                        s.record_pipeline_config(id, &fetched.text, &compiled.processed)?;
                        s.pipeline_compiled(id, &fetched.revision, &compiled.workflows)?;
                        if compiled.setup {
                            // Before `advance` queues the setup jobs, which are given it.
                            s.create_continuation(id)?;
                        }
                        Ok(())
                    })
                    .await?
            }
            Err((revision, error)) => {
                tracing::info!(pipeline = id, "pipeline errored: {error}");
                state
                    .db(move |s| s.pipeline_errored(id, revision.as_deref(), &error))
                    .await?
            }
        }
    }
    let mut ids = state.db(|s| s.active_pipelines()).await?;
    for id in state.db(|s| s.pipelines_waiting_in_serial_groups()).await? {
        if !ids.contains(&id) {
            ids.push(id);
        }
    }
    let url = state.public_url.clone();
    let changed = state.db(move |s| advance_all(s, &ids, &url)).await?;
    if changed {
        // Claims waiting for a job, live pages and the status sender look again.
        state.bump();
        state.jobs.bump_all();
    }
    Ok(())
}

/// Move pipelines `ids` forward, each in its own transaction: whether any changed. Generic
/// rather than `&dyn PipelineStore`: the caller holds a `&dyn Backend`, and turning that into
/// another trait object (upcasting) needs a newer compiler than our rust-version.
fn advance_all<S: PipelineStore + ?Sized>(
    s: &S,
    ids: &[i64],
    public_url: &str,
) -> crate::Result<bool> {
    let mut any = false;
    for id in ids {
        any |= s.advance(*id, &statuses(public_url))?;
    }
    Ok(any)
}

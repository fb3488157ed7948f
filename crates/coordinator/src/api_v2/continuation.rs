//! `POST /pipeline/continue`: a setup workflow's job hands its pipeline the config it made
//! (dynamic config, `setup: true`). The continuation key (`CIRCLE_CONTINUATION_KEY`, given to
//! the setup workflow's jobs only) is the credential: one use, bound to its pipeline. The
//! config is compiled with the pipeline's own values and the parameters sent, and its
//! workflows run in the same pipeline.

use super::{db, V2Error, V2Result};
use crate::pipelines::config::{self, MAX_CONFIG_BYTES};
use crate::store::api_v2::{Continuation, ContinueRefusal};
use crate::AppState;
use axum::body::Bytes;
use axum::extract::State;
use axum::response::IntoResponse;
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::sync::Arc;

/// The registry orbs a continued config may import (`serve --orb-dir`).
#[derive(Clone, Default)]
pub struct Orbs(pub Option<PathBuf>);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Body {
    #[serde(rename = "continuation-key")]
    key: String,
    configuration: String,
    #[serde(default)]
    parameters: serde_json::Map<String, Value>,
}

fn refused(r: ContinueRefusal) -> V2Error {
    V2Error::bad(match r {
        ContinueRefusal::UnknownKey => "Invalid continuation key",
        ContinueRefusal::AlreadyContinued => "Pipeline has already been continued",
        ContinueRefusal::NotRunning => "Pipeline is no longer running: it cannot be continued",
    })
}

pub async fn continue_pipeline(
    State(state): State<Arc<AppState>>,
    Extension(orbs): Extension<Orbs>,
    body: Bytes,
) -> V2Result {
    let b: Body = serde_json::from_slice(&body)
        .map_err(|e| V2Error::bad(format!("Invalid JSON body: {e}")))?;
    // A key is 64 hex digits: anything else is no key, and never reaches the store.
    if b.key.len() != 64 || !b.key.bytes().all(|c| c.is_ascii_hexdigit()) {
        return Err(refused(ContinueRefusal::UnknownKey));
    }
    if b.configuration.len() > MAX_CONFIG_BYTES {
        return Err(V2Error::bad(format!(
            "Config errors: the configuration is {} bytes; the limit is {MAX_CONFIG_BYTES}",
            b.configuration.len()
        )));
    }
    let params = super::pipelines::params(b.parameters)?;
    let key = b.key.clone();
    let target = db(&state, move |s| s.continuation(&key))
        .await?
        .map_err(refused)?;
    let mut p = target.pipeline;
    p.params = params.clone();
    let text = b.configuration;
    let compiled = tokio::task::spawn_blocking(move || {
        config::compile(&p, &target.revision, &text, orbs.0.as_deref()).map(|c| (c, text))
    })
    .await
    .map_err(|e| V2Error::bad(format!("Config errors: the compile task failed: {e}")))?;
    let (compiled, text) = compiled.map_err(|e| V2Error::bad(format!("Config errors: {e}")))?;
    if compiled.setup {
        return Err(V2Error::bad(
            "Config errors: a continued config cannot be a setup config (`setup: true`)",
        ));
    }
    let key = b.key;
    let id = db(&state, move |s| {
        s.continue_pipeline(
            &key,
            &Continuation {
                source: &text,
                compiled: &compiled.processed,
                params: &params,
                workflows: &compiled.workflows,
            },
        )
    })
    .await?
    .map_err(refused)?;
    tracing::info!(pipeline = id, "pipeline continued");
    super::changed(&state);
    Ok(Json(json!({"message": "Success"})).into_response())
}

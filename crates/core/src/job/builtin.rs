//! The built-in steps that move files between the container and the local store: caches,
//! workspaces, artifacts, test results. Each reports what it did through `say` and returns
//! `Err(message)` when the step fails.

use crate::executor::Executor;
use crate::store::{junit, template, BlobId, Layer, LocalStore};
use futures_util::StreamExt;
use std::io::{Read, Write};
use std::path::Path;

/// What the built-in steps need to know about the running job.
pub struct Ctx<'a> {
    pub executor: &'a dyn Executor,
    pub container: &'a str,
    pub home: &'a str,
    pub workdir: &'a str,
    /// The environment steps see (for `{{ .Environment.X }}`).
    pub env: &'a [(String, String)],
    pub branch: &'a str,
    pub revision: &'a str,
    pub build_num: u64,
    pub store: &'a LocalStore,
    /// Workspace identity: the workflow run (or the job, when run alone).
    pub workspace: &'a str,
    pub job_id: &'a str,
    pub job_name: &'a str,
    pub say: &'a (dyn Fn(String) + Send + Sync),
    /// The working directory mounted from the host (a local engine): caches and workspace
    /// layers that go inside it are written there, not through the engine.
    pub mounted: Option<super::in_place::Mounted>,
}

impl Ctx<'_> {
    /// `~/x` and relative paths (against the working directory) → absolute.
    pub fn abs(&self, p: &str) -> String {
        let p = super::environment::expand_home(p.trim(), self.home);
        if p.starts_with('/') {
            p
        } else {
            let rel = p.trim_start_matches("./");
            if rel.is_empty() || rel == "." {
                self.workdir.to_owned()
            } else {
                format!("{}/{}", self.workdir.trim_end_matches('/'), rel)
            }
        }
    }

    /// The whole tar of `path` from the container, in a temporary file.
    async fn download(&self, path: &str) -> Result<Option<tempfile::NamedTempFile>, String> {
        let Some(mut stream) = self
            .executor
            .download_tar(self.container, path)
            .await
            .map_err(|e| e.to_string())?
        else {
            return Ok(None);
        };
        let tmp_dir = self.store.root().join("tmp");
        let mut file = tempfile::NamedTempFile::new_in(&tmp_dir).map_err(|e| e.to_string())?;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| e.to_string())?;
            file.write_all(&chunk).map_err(|e| e.to_string())?;
        }
        file.flush().map_err(|e| e.to_string())?;
        Ok(Some(file))
    }

    async fn read_file(&self, path: &str) -> Result<Option<Vec<u8>>, String> {
        let Some(tar) = self.download(path).await? else {
            return Ok(None);
        };
        let mut archive = tar::Archive::new(tar.reopen().map_err(|e| e.to_string())?);
        for entry in archive.entries().map_err(|e| e.to_string())? {
            let mut entry = entry.map_err(|e| e.to_string())?;
            if entry.header().entry_type().is_file() {
                let mut out = Vec::new();
                entry.read_to_end(&mut out).map_err(|e| e.to_string())?;
                return Ok(Some(out));
            }
        }
        Ok(None)
    }

    /// Extract a stored blob with its entries under `prefix` (relative to `/`): in place when
    /// they all go inside the mounted working directory (`Ok(true)`), else, or if that stops
    /// part-way, through the engine's archive API.
    async fn upload_blob(&self, blob: &BlobId, prefix: &str) -> Result<bool, String> {
        let path = self.store.blob_path(blob);
        if let Some(m) = self.mounted.clone() {
            let (blob_path, at) = (path.clone(), prefix.to_owned());
            let t = std::time::Instant::now();
            match tokio::task::spawn_blocking(move || super::in_place::extract(&m, &blob_path, &at))
                .await
            {
                Ok(Ok(entries)) => {
                    tracing::debug!(
                        entries,
                        ms = t.elapsed().as_millis() as u64,
                        "blob written in place"
                    );
                    return Ok(true);
                }
                Ok(Err(e)) => {
                    tracing::debug!("blob through the archive API, not in place: {e}")
                }
                Err(e) => tracing::warn!("blob through the archive API, not in place: {e}"),
            }
        }
        // Rewrite entry names under `prefix` (relative to `/`) while streaming.
        let prefix = prefix.trim_matches('/').to_owned();
        let (stream, producer) = super::archive::streamed(move |out| {
            crate::store::archive::under_prefix(out, &path, &prefix)
                .map(|_| ())
                .map_err(std::io::Error::other)
        });
        let uploaded = self.executor.upload_tar(self.container, "/", stream).await;
        let produced = producer.await.map_err(|e| e.to_string())?;
        uploaded.map_err(|e| e.to_string())?;
        produced.map(|_| false).map_err(|e| e.to_string())
    }

    fn render_key(&self, tpl: &str, checksums: &[(String, String)]) -> Result<String, String> {
        let ctx = template::KeyContext {
            branch: self.branch,
            revision: self.revision,
            build_num: self.build_num,
            env: self.env,
            epoch: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            arch: &template::arch(),
        };
        let mut lookup = |f: &str| {
            checksums
                .iter()
                .find(|(name, _)| name == f)
                .map(|(_, sum)| sum.clone())
                .ok_or_else(|| format!("cannot checksum `{f}`: no such file in the container"))
        };
        template::render(tpl, &ctx, &mut lookup)
    }

    /// Checksums of the files a template names, read from the container first (the renderer
    /// itself is pure).
    async fn checksums_for(&self, tpl: &str) -> Result<Vec<(String, String)>, String> {
        let mut out = Vec::new();
        let mut rest = tpl;
        while let Some(i) = rest.find("checksum") {
            rest = &rest[i + "checksum".len()..];
            let Some(open) = rest.find('"') else { break };
            let after = &rest[open + 1..];
            let Some(close) = after.find('"') else { break };
            let file = &after[..close];
            if let Some(content) = self.read_file(&self.abs(file)).await? {
                out.push((file.to_owned(), template::checksum(&content)));
            }
            rest = &after[close + 1..];
        }
        Ok(out)
    }

    pub async fn save_cache(&self, key_tpl: &str, paths: &[String]) -> Result<(), String> {
        let key = self.render_key(key_tpl, &self.checksums_for(key_tpl).await?)?;
        let remote = self.store.remote();
        if remote.is_some_and(|r| !r.cache_writes()) {
            (self.say)(format!(
                "Skipping cache save for key {key}: a build of a pull request from a fork reads \
                 the project's caches but never writes them"
            ));
            return Ok(());
        }
        let exists = match remote {
            // The coordinator's caches are the project's: ask it, not this agent's copy.
            Some(r) => r
                .find_cache(&key)
                .await
                .map_err(|e| e.to_string())?
                .is_some_and(|c| c.key == key),
            None => self.store.cache_exists(&key),
        };
        if exists {
            (self.say)(format!(
                "Skipping cache generation, cache already exists for key: {key}"
            ));
            return Ok(());
        }
        let tmp_dir = self.store.root().join("tmp");
        let combined = tempfile::NamedTempFile::new_in(&tmp_dir).map_err(|e| e.to_string())?;
        let mut builder = tar::Builder::new(combined.reopen().map_err(|e| e.to_string())?);
        let mut found = 0;
        for p in paths {
            let abs = self.abs(p);
            let Some(tar) = self.download(&abs).await? else {
                (self.say)(format!("Warning: could not find {abs}; skipping it"));
                continue;
            };
            found += 1;
            // Entries are named from the path's base name: re-root them at its parent.
            let parent = Path::new(&abs)
                .parent()
                .map(|p| p.to_path_buf())
                .unwrap_or_default();
            append_rerooted(&mut builder, tar.path(), &parent, None)?;
        }
        if found == 0 {
            (self.say)("Warning: none of the paths exist; no cache saved".to_owned());
            return Ok(());
        }
        builder
            .into_inner()
            .and_then(|mut f| f.flush())
            .map_err(|e| e.to_string())?;
        let file = std::fs::File::open(combined.path()).map_err(|e| e.to_string())?;
        let (blob, size) = self.store.put_blob(file).map_err(|e| e.to_string())?;
        let mut saved = self
            .store
            .save_cache(&key, blob.clone(), size)
            .map_err(|e| e.to_string())?;
        if let Some(r) = remote {
            r.upload(&self.store.blob_path(&blob), &blob, size)
                .await
                .map_err(|e| format!("cache {key}: {e}"))?;
            saved = r
                .save_cache(&key, &blob, size)
                .await
                .map_err(|e| format!("cache {key}: {e}"))?;
        }
        if saved {
            (self.say)(format!("Stored cache {key} ({:.1} MB)", size as f64 / 1e6));
            if remote.is_none() && self.store.scope().is_fork() {
                (self.say)(
                    "(a forked pull request's cache: only this pull request's builds see it)"
                        .to_owned(),
                );
            }
        } else {
            (self.say)(format!(
                "Skipping cache generation, cache already exists for key: {key}"
            ));
        }
        Ok(())
    }

    /// The cache `key` finds: the coordinator's when there is one (this agent's own caches
    /// when it cannot be reached), in the local store when it returns.
    async fn lookup_cache(&self, key: &str) -> Result<Option<crate::store::CacheEntry>, String> {
        let Some(r) = self.store.remote() else {
            return self.store.find_cache(key).map_err(|e| e.to_string());
        };
        let entry = match r.find_cache(key).await {
            Ok(e) => e,
            Err(e) => {
                (self.say)(format!(
                    "Warning: the coordinator's caches: {e}; looking in this agent's own"
                ));
                return self.store.find_cache(key).map_err(|e| e.to_string());
            }
        };
        let Some(entry) = entry else {
            return Ok(None);
        };
        match self.store.fetch_blob(r, &entry.blob, entry.size).await {
            Ok(true) => (self.say)(format!(
                "Downloaded cache {} from the coordinator ({:.1} MB)",
                entry.key,
                entry.size as f64 / 1e6
            )),
            Ok(false) => {}
            Err(e) => {
                (self.say)(format!("Warning: cache {}: {e}", entry.key));
                return Ok(None);
            }
        }
        Ok(Some(entry))
    }

    pub async fn restore_cache(&self, key_tpls: &[String]) -> Result<(), String> {
        for tpl in key_tpls {
            let key = self.render_key(tpl, &self.checksums_for(tpl).await?)?;
            if let Some(entry) = self.lookup_cache(&key).await? {
                let in_place = self.upload_blob(&entry.blob, "").await?;
                (self.say)(format!(
                    "Found a cache for key {key}: restored {} ({:.1} MB){}",
                    entry.key,
                    entry.size as f64 / 1e6,
                    if in_place { ", in place" } else { "" }
                ));
                return Ok(());
            }
            (self.say)(format!("No cache is found for key: {key}"));
        }
        (self.say)("Warning: no cache was restored".to_owned());
        Ok(())
    }

    pub async fn persist_to_workspace(&self, root: &str, paths: &[String]) -> Result<(), String> {
        let root_abs = self.abs(root);
        let Some(tar) = self.download(&root_abs).await? else {
            return Err(format!(
                "The specified root directory {root_abs} does not exist"
            ));
        };
        let patterns: Vec<glob::Pattern> = paths
            .iter()
            .map(|p| {
                glob::Pattern::new(p.trim_start_matches("./")).map_err(|e| format!("`{p}`: {e}"))
            })
            .collect::<Result<_, _>>()?;
        let tmp_dir = self.store.root().join("tmp");
        let layer = tempfile::NamedTempFile::new_in(&tmp_dir).map_err(|e| e.to_string())?;
        let mut builder = tar::Builder::new(layer.reopen().map_err(|e| e.to_string())?);
        // Entries come as `<root base name>/rel/path`: keep those under a matching pattern,
        // named relative to the root.
        let count = append_rerooted(&mut builder, tar.path(), Path::new(""), Some(&patterns))?;
        if count == 0 {
            return Err(format!("no files in {root_abs} match {}", paths.join(", ")));
        }
        builder
            .into_inner()
            .and_then(|mut f| f.flush())
            .map_err(|e| e.to_string())?;
        let file = std::fs::File::open(layer.path()).map_err(|e| e.to_string())?;
        let (blob, size) = self.store.put_blob(file).map_err(|e| e.to_string())?;
        self.store
            .add_workspace_layer(
                self.workspace,
                &Layer {
                    job: self.job_name.to_owned(),
                    blob: blob.clone(),
                    size,
                },
            )
            .map_err(|e| e.to_string())?;
        let mut whom = "";
        if let Some(r) = self.store.remote() {
            r.upload(&self.store.blob_path(&blob), &blob, size)
                .await
                .map_err(|e| format!("the workspace layer: {e}"))?;
            r.add_layer(&blob, size)
                .await
                .map_err(|e| format!("the workspace layer: {e}"))?;
            whom = " on the coordinator";
        }
        (self.say)(format!(
            "Persisted {count} entries from {root_abs} to the workspace{whom} ({:.1} MB)",
            size as f64 / 1e6
        ));
        Ok(())
    }

    pub async fn attach_workspace(&self, at: &str) -> Result<(), String> {
        let at_abs = self.abs(at);
        let remote = self.store.remote();
        let layers = match remote {
            Some(r) => r
                .layers()
                .await
                .map_err(|e| format!("the workspace: {e}"))?,
            None => self
                .store
                .workspace_layers(self.workspace)
                .map_err(|e| e.to_string())?,
        };
        if layers.is_empty() {
            return Err("there is no workspace to attach: no earlier job persisted one".to_owned());
        }
        let mut fetched = 0u64;
        let mut in_place = true;
        for layer in &layers {
            if let Some(r) = remote {
                // A layer this agent has (it persisted it, or attached it before) is not
                // downloaded again.
                if self
                    .store
                    .fetch_blob(r, &layer.blob, layer.size)
                    .await
                    .map_err(|e| format!("workspace layer from {}: {e}", layer.job))?
                {
                    fetched += layer.size;
                }
            }
            in_place &= self.upload_blob(&layer.blob, &at_abs).await?;
        }
        if fetched > 0 {
            (self.say)(format!(
                "Downloaded {:.1} MB of workspace from the coordinator",
                fetched as f64 / 1e6
            ));
        }
        (self.say)(format!(
            "Attached {} workspace layer(s) at {at_abs} (from {}){}",
            layers.len(),
            layers
                .iter()
                .map(|l| l.job.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            if in_place { ", in place" } else { "" }
        ));
        Ok(())
    }

    pub async fn store_artifacts(
        &self,
        path: &str,
        destination: Option<&str>,
    ) -> Result<(), String> {
        let abs = self.abs(path);
        let Some(tar) = self.download(&abs).await? else {
            return Err(format!("{abs} does not exist"));
        };
        let base = Path::new(&abs)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let stored = self
            .store
            .store_artifacts(self.job_id, tar.path(), &base, destination)
            .map_err(|e| e.to_string())?;
        for s in &stored.skipped {
            (self.say)(format!("Warning: not stored: {s}"));
        }
        if let Some(r) = self.store.remote() {
            for (rel, file) in &stored.written {
                let hashed = file.clone();
                let (blob, size) =
                    tokio::task::spawn_blocking(move || crate::store::remote::hash_file(&hashed))
                        .await
                        .map_err(|e| e.to_string())?
                        .map_err(|e| e.to_string())?;
                r.upload(file, &blob, size)
                    .await
                    .map_err(|e| format!("artifact {rel}: {e}"))?;
                r.add_artifact(rel, &blob, size)
                    .await
                    .map_err(|e| format!("artifact {rel}: {e}"))?;
            }
        }
        (self.say)(format!(
            "Uploaded {} file(s) from {abs} to artifacts/{} ({})",
            stored.files,
            stored.dest_rel,
            stored.dest.display()
        ));
        Ok(())
    }

    pub async fn store_test_results(&self, path: &str) -> Result<(), String> {
        let abs = self.abs(path);
        let Some(tar) = self.download(&abs).await? else {
            return Err(format!("{abs} does not exist"));
        };
        let file = std::fs::File::open(tar.path()).map_err(|e| e.to_string())?;
        let mut archive = tar::Archive::new(file);
        let mut total = junit::TestSummary::default();
        let mut files = 0;
        let mut times = Vec::new();
        for entry in archive.entries().map_err(|e| e.to_string())? {
            let mut entry = entry.map_err(|e| e.to_string())?;
            let name = entry.path().map_err(|e| e.to_string())?.into_owned();
            if !entry.header().entry_type().is_file()
                || name.extension().and_then(|e| e.to_str()) != Some("xml")
            {
                continue;
            }
            let mut text = String::new();
            if entry.read_to_string(&mut text).is_err() {
                continue;
            }
            match junit::parse(&text) {
                Ok(s) => {
                    files += 1;
                    total.merge(s);
                    times.extend(
                        junit::case_times(&text)
                            .unwrap_or_default()
                            .into_iter()
                            .map(|(file, classname, name, seconds)| {
                                crate::runtime::cmd::split::Timing {
                                    file,
                                    classname,
                                    name,
                                    seconds,
                                }
                            }),
                    );
                }
                Err(e) => (self.say)(format!(
                    "Warning: {} is not valid JUnit XML: {e}",
                    name.display()
                )),
            }
        }
        (self.say)(format!(
            "Test results from {files} file(s): {} tests, {} failures, {} errors, {} skipped",
            total.tests, total.failures, total.errors, total.skipped
        ));
        for f in &total.failed {
            (self.say)(format!("  failed: {f}"));
        }
        if let Some(r) = self.store.remote() {
            let wire = crate::protocol::WireTestResults {
                tests: total.tests,
                failures: total.failures,
                errors: total.errors,
                skipped: total.skipped,
                failed: total
                    .failed
                    .iter()
                    .take(crate::protocol::MAX_FAILED_TESTS)
                    .map(|f| crate::protocol::WireFailedTest {
                        name: f.name.clone(),
                        classname: f.classname.clone(),
                        message: f.message.clone(),
                    })
                    .collect(),
            };
            r.test_results(&wire)
                .await
                .map_err(|e| format!("the test results: {e}"))?;
        }
        // Timings for `circleci tests split --split-by=timings` in this job's later runs.
        if let Err(e) = super::timings::record(self.store, self.job_name, times) {
            (self.say)(format!("Warning: could not keep the test timings: {e}"));
        }
        let dir = self.store.artifacts_dir(self.job_id);
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let json = serde_json::to_vec_pretty(&total).map_err(|e| e.to_string())?;
        std::fs::write(dir.join("test-results.json"), json).map_err(|e| e.to_string())?;
        Ok(())
    }
}

/// Copy entries of the tar at `src` into `out`, re-rooted (see `store::archive::reroot`).
fn append_rerooted<W: Write>(
    out: &mut tar::Builder<W>,
    src: &Path,
    parent: &Path,
    patterns: Option<&[glob::Pattern]>,
) -> Result<usize, String> {
    crate::store::archive::reroot(out, src, parent, patterns).map_err(|e| e.to_string())
}

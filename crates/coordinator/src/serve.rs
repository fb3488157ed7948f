//! The server: its shared state, the change watcher and the lease reaper, and `serve`, which
//! wires the routes together.

use super::*;
use crate::store::{Backend, Change, ServedStore};

/// What a job's notifier carries: how far its committed log and events reach (appends say
/// so; a follower then reads the new bytes without a query), and a generation bumped by
/// every other change (status, lease), after which followers read the job's row again.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JobProgress {
    pub log_bytes: u64,
    pub event_count: u64,
    pub gen: u64,
}

type Notifiers = std::collections::HashMap<i64, tokio::sync::watch::Sender<JobProgress>>;

/// One change notifier per job that someone follows live: an append wakes that job's
/// followers only (a global notifier woke every follower of every job, and each re-queried
/// the job through the writer's connection).
#[derive(Default)]
pub struct JobWatch {
    senders: std::sync::Mutex<Notifiers>,
}

impl JobWatch {
    fn map(&self) -> std::sync::MutexGuard<'_, Notifiers> {
        self.senders.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Follow job `id`: the receiver changes whenever the server changes the job.
    pub fn subscribe(&self, id: i64) -> tokio::sync::watch::Receiver<JobProgress> {
        self.map()
            .entry(id)
            .or_insert_with(|| tokio::sync::watch::channel(JobProgress::default()).0)
            .subscribe()
    }

    fn update(&self, id: i64, f: impl FnOnce(&mut JobProgress)) {
        let mut map = self.map();
        if let Some(tx) = map.get(&id) {
            if tx.receiver_count() == 0 {
                map.remove(&id);
            } else {
                tx.send_modify(f);
            }
        }
    }

    /// Job `id`'s committed log now reaches `log_bytes`.
    pub fn logged(&self, id: i64, log_bytes: u64) {
        self.update(id, |p| p.log_bytes = p.log_bytes.max(log_bytes));
    }

    /// Job `id` now has `event_count` committed events.
    pub fn evented(&self, id: i64, event_count: u64) {
        self.update(id, |p| p.event_count = p.event_count.max(event_count));
    }

    /// Job `id` changed otherwise (status, lease): followers read its row again.
    pub fn bump(&self, id: i64) {
        self.update(id, |p| p.gen = p.gen.wrapping_add(1));
    }

    /// Some jobs changed (which is not known, e.g. leases lapsed): wake every follower.
    pub fn bump_all(&self) {
        let mut map = self.map();
        map.retain(|_, tx| tx.receiver_count() > 0);
        for tx in map.values() {
            tx.send_modify(|p| p.gen = p.gen.wrapping_add(1));
        }
    }

    /// Jobs followed now.
    pub fn followed(&self) -> usize {
        self.map().len()
    }
}

/// Shared by the API and web handlers.
pub struct AppState {
    /// SQLite's or PostgreSQL's store: its areas (through [`AppState::db`]) and the feed of
    /// other processes' changes.
    pub store: Arc<dyn ServedStore>,
    /// Bumped whenever the database may have changed (our writes, or another process's,
    /// noticed through the store's change feed); long polls and live pages wait on it.
    pub changed: tokio::sync::watch::Sender<u64>,
    /// Per-job notifiers for live pages (log appends and events go there only).
    pub jobs: JobWatch,
    pub metrics: metrics::CoordMetrics,
    /// Digests of the tokens from `--registration-token-file` (the stored ones are looked
    /// up at each registration, so `token` and `token rotate` apply at once).
    pub registration_token_file_digests: Vec<String>,
    pub lease: Duration,
    /// The OIDC issuer (`--oidc-issuer`); `None`: jobs get no tokens.
    pub oidc: Option<Arc<oidc::Oidc>>,
    /// Cancelled when the server shuts down: live streams end, long polls answer.
    pub shutdown: tokio_util::sync::CancellationToken,
    /// The store's blob files: uploads in progress beside the database, whole blobs in the
    /// object store (protocol v2).
    pub blobs: Arc<blobs::BlobFiles>,
    /// Finished logs in the object store, and the readers that find them there.
    pub logs: Arc<objects::logs::LogArchive>,
    /// Wakes the pipeline runner at once (a webhook made a pipeline).
    pub pipelines_wake: tokio::sync::Notify,
    /// Where the pages are reached from outside (commit status links).
    pub public_url: String,
    /// Logging in, sessions and logins under way.
    pub people: people::People,
}

impl AppState {
    pub fn bump(&self) {
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Run a store call off the async workers: SQLite commits fsync (synchronous=FULL).
    /// The call sees the store through its traits only ([`Backend`]).
    pub async fn db<T, F>(&self, f: F) -> Result<T>
    where
        F: FnOnce(&dyn Backend) -> Result<T> + Send + 'static,
        T: Send + 'static,
    {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || f(store.backend()))
            .await
            .map_err(|e| CoordError::Invalid(format!("store task failed: {e}")))?
    }
}

/// Serve until SIGINT/SIGTERM. Prints `listening on http://ADDR` (the real port when 0 was
/// asked for) on stdout once the socket is bound.
pub async fn serve(args: ServeArgs) -> Result<()> {
    // Opening and start-up's calls block (PostgreSQL's client included): off the async
    // workers.
    let data = args.data.clone();
    let store = tokio::task::spawn_blocking(move || data.open_served())
        .await
        .map_err(|e| CoordError::Invalid(format!("opening the store failed: {e}")))??;
    // Held until the server stops: `migrate` refuses a data directory a server runs on.
    let _serving = crate::migrate::lock::serving(&args.data.data)?;
    // Start-up's own calls go through the traits, as the handlers' do.
    let db: &dyn Backend = store.backend();
    let mut tokens = Vec::new();
    if let Some(f) = &args.registration_token_file {
        let t = read_file(f)?.trim().to_string();
        if t.is_empty() {
            return Err(CoordError::Invalid(format!(
                "{}: the registration token file is empty",
                f.display()
            )));
        }
        tokens.push(sha256_hex(t.as_bytes()));
    }
    if tokens.is_empty()
        && tokio::task::block_in_place(|| db.list_registration_tokens())?.is_empty()
    {
        tracing::warn!(
            "no registration token yet: agents cannot register until one is made with \
             `bosun coordinator token`"
        );
    }
    let oidc = match &args.oidc_issuer {
        Some(issuer) => {
            let o = oidc::Oidc::new(
                issuer,
                args.oidc_token_lifetime,
                &args.oidc_keys.path(&args.data),
            )?;
            tracing::info!("OIDC issuer {}", o.issuer());
            Some(Arc::new(o))
        }
        None => None,
    };
    // Checked before anything listens: a wrong SMTP setting stops the start, it does not
    // turn into errors on every mail later.
    let mailer = match (&args.smtp_url, &args.mail_from) {
        (Some(url), Some(from)) => Some(
            crate::notify::mail::Mailer::new(
                url,
                args.smtp_credentials_file.as_deref(),
                args.smtp_ca_file.as_deref(),
                from,
                args.notify_timeout,
            )
            .map_err(|e| CoordError::Invalid(e.to_string()))?,
        ),
        _ => None,
    };
    let object_settings = objects::StoreSettings {
        location: args.blob_store.clone(),
        endpoint: args.s3_endpoint.clone(),
        region: args.s3_region.clone(),
        credentials_file: args.s3_credentials_file.clone(),
    };
    objects::check_placement(
        args.data.database.is_some(),
        args.blob_store.as_deref(),
        args.shared_data,
    )
    .map_err(|e| CoordError::Invalid(e.to_string()))?;
    let objects = objects::open(&object_settings, &args.data.data)
        .await
        .map_err(|e| CoordError::Invalid(format!("the blob store: {e}")))?;
    tracing::info!("blobs and finished logs in {}", objects.describe());
    let (changed, _) = tokio::sync::watch::channel(0u64);
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .map_err(|source| CoordError::Listen {
            addr: args.listen.clone(),
            source,
        })?;
    let addr: SocketAddr = listener.local_addr().map_err(|source| CoordError::Listen {
        addr: args.listen.clone(),
        source,
    })?;
    let scheme = if args.tls_cert.is_some() {
        "https"
    } else {
        "http"
    };
    let public_url = args
        .public_url
        .clone()
        .unwrap_or_else(|| format!("{scheme}://{addr}"));
    // An agent counts as online for a queued job's wait reason within two leases (as the
    // `agents_online` metric); the CLI reads the window from the store.
    tokio::task::block_in_place(|| {
        db.record_public_url(&public_url)?;
        db.record_online_window(Duration::from_secs(args.lease_secs.max(1)) * 2)
    })?;
    let consumer = match (&args.bitbucket_oauth_file, &args.bitbucket_dc_url) {
        (Some(f), _) => Some(oauth_consumer(Some(oauth_client(f)?), &args)?),
        // Data Center without an application link: people paste HTTP access tokens.
        (None, Some(_)) => Some(oauth_consumer(None, &args)?),
        (None, None) => None,
    };
    let people = people::People::new(people::Settings {
        consumer,
        session_lifetime: args.session_lifetime,
        secure_cookies: args.tls_cert.is_some() || public_url.starts_with("https://"),
        public_url: public_url.clone(),
        permissions_refresh: args.permissions_refresh,
    });
    let state = Arc::new(AppState {
        store: store.clone(),
        changed,
        jobs: JobWatch::default(),
        metrics: metrics::CoordMetrics::new(args.metrics_public),
        registration_token_file_digests: tokens,
        lease: Duration::from_secs(args.lease_secs.max(1)),
        shutdown: tokio_util::sync::CancellationToken::new(),
        pipelines_wake: tokio::sync::Notify::new(),
        public_url,
        people,
        oidc,
        blobs: Arc::new(
            blobs::BlobFiles::open(&args.data.data, args.blob_quota, objects.clone())
                .map_err(|e| CoordError::Invalid(format!("the blob store: {e}")))?,
        ),
        logs: Arc::new(objects::logs::LogArchive::new(objects, &args.data.data)),
    });
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(server::tls_acceptor(cert, key)?),
        _ => {
            if !addr.ip().is_loopback() {
                tracing::warn!(
                    "serving plain HTTP on {addr}: claims carry private keys; use --tls-cert \
                     and --tls-key"
                );
            }
            None
        }
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    println!("listening on {scheme}://{addr}");
    let _ = std::io::stdout().flush();

    tokio::spawn(watch_changes(state.clone()));
    state
        .logs
        .clone()
        .spawn_sweeper(store.clone(), state.shutdown.clone());
    tokio::spawn(reap_leases(state.clone()));
    crate::audit::spawn_sweeper(state.clone(), args.audit_retention);
    pipelines::spawn(
        state.clone(),
        pipelines::RunnerSettings {
            vcs_hosts: args.vcs_hosts.clone(),
            data_dir: args.data.data.clone(),
            mirror_budget: args.config_mirror_budget,
            orb_dir: args.orb_dir.clone(),
        },
    );
    bitbucket::status::spawn(state.clone());
    crate::notify::spawn(
        state.clone(),
        crate::notify::Settings {
            mailer,
            max_in_flight: args.notify_max_in_flight,
            timeout: args.notify_timeout,
            max_backoff: args.notify_max_backoff,
        },
    );
    crate::schedules::spawn(
        state.clone(),
        crate::schedules::SchedulerSettings::new(
            args.schedule_clock_file.clone(),
            args.vcs_hosts.clone(),
            args.data.data.clone(),
            args.config_mirror_budget,
        ),
    );

    let app = api::router(state.clone(), blobs::api::router(state.clone()))
        .merge(web::router(state.clone()))
        .merge(metrics::router(state.clone()))
        .merge(oidc::router(state.clone()))
        .merge(bitbucket::router(state.clone()))
        .merge(api_v2::router(state.clone(), args.orb_dir.clone()))
        .fallback(api::not_found)
        .layer(axum::middleware::map_response(api::json_errors));
    let stop = state.shutdown.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("shutting down: closing live streams and connections");
        stop.cancel();
    });
    let limits = server::Limits {
        header_timeout: args.header_timeout,
        max_connections: args.max_connections,
        max_waiting_per_address: args.max_waiting_per_address,
    };
    server::serve(listener, app, limits, tls, state.shutdown.clone()).await
}

/// The OAuth client of `--bitbucket-oauth-file`: `KEY:SECRET`, in a file only its owner
/// may read (the error never quotes it).
fn oauth_client(file: &Path) -> Result<people::oauth::OAuthClient> {
    let meta = std::fs::metadata(file).map_err(|source| CoordError::Io {
        path: file.to_path_buf(),
        source,
    })?;
    if let Some(mode) = bosun_protocol::private::loose_mode(&meta) {
        return Err(CoordError::Invalid(format!(
            "{}: mode {mode:o} lets others read the OAuth consumer's secret: chmod 600 it",
            file.display()
        )));
    }
    let text = zeroize::Zeroizing::new(read_file(file)?);
    let (key, secret) = people::oauth::parse_consumer_file(&text).ok_or_else(|| {
        CoordError::Invalid(format!(
            "{}: expected the OAuth consumer's `KEY:SECRET` on one line",
            file.display()
        ))
    })?;
    Ok(people::oauth::OAuthClient { key, secret })
}

/// Where people log in: Bitbucket Cloud, or the Data Center of `--bitbucket-dc-url`, with
/// the OAuth client if there is one.
fn oauth_consumer(
    client: Option<people::oauth::OAuthClient>,
    args: &ServeArgs,
) -> Result<people::oauth::Consumer> {
    Ok(match &args.bitbucket_dc_url {
        Some(url) => people::oauth::Consumer {
            client,
            site: url.trim().trim_end_matches('/').to_owned(),
            api: String::new(),
            provider: people::oauth::Provider::DataCenter {
                server: crate::data_center_server(url).map_err(|_| {
                    CoordError::Invalid(format!(
                        "--bitbucket-dc-url `{}`: expected the Data Center's base URL, such as \
                         https://bitbucket.example.com",
                        crate::printable(url)
                    ))
                })?,
            },
        },
        None => people::oauth::Consumer {
            client,
            site: args.bitbucket_oauth_url.trim_end_matches('/').to_owned(),
            api: args.bitbucket_api.trim_end_matches('/').to_owned(),
            provider: people::oauth::Provider::Cloud,
        },
    })
}

pub(super) async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut term) = signal(SignalKind::terminate()) else {
        // Without a SIGTERM handler, Ctrl-C still stops us.
        let _ = tokio::signal::ctrl_c().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

/// Notice commits by other processes (the CLI's `enqueue`, `cancel`, another coordinator on
/// the same database) through the store's change feed ([`crate::store::ChangeFeed`]:
/// SQLite's `PRAGMA data_version` polled, PostgreSQL's `LISTEN/NOTIFY` pushed), on a thread
/// of its own: long polls, live pages and the pipeline runner wake.
pub(super) async fn watch_changes(state: Arc<AppState>) {
    let mut feed = match state.store.change_feed() {
        Ok(f) => f,
        Err(e) => {
            tracing::error!("cannot watch the store for changes: {e}; other processes' changes are seen only on the next agent call");
            return;
        }
    };
    let spawned = std::thread::Builder::new()
        .name("bosun-changes".into())
        .spawn(move || {
            let mut failing = false;
            while !state.shutdown.is_cancelled() {
                match feed.wait(Duration::from_secs(1)) {
                    Ok(changes) => {
                        if failing {
                            tracing::info!("watching the store for changes again");
                            failing = false;
                        }
                        if changes.is_empty() {
                            continue;
                        }
                        state.bump();
                        for c in changes {
                            match c {
                                Change::Job(id) => state.jobs.bump(id),
                                Change::Some => state.jobs.bump_all(),
                            }
                        }
                    }
                    Err(e) => {
                        if !failing {
                            tracing::warn!("watching the store for changes: {e}");
                        }
                        failing = true;
                        std::thread::sleep(Duration::from_millis(200));
                    }
                }
            }
        });
    if let Err(e) = spawned {
        tracing::error!("cannot start the change watcher: {e}");
    }
}

/// Every second: lapsed leases go back to the queue (or fail); see
/// [`QueueStore::expire_leases`](crate::store::QueueStore::expire_leases).
pub(super) async fn reap_leases(state: Arc<AppState>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        match state.db(|s| s.expire_leases()).await {
            Ok(0) => {}
            Ok(_) => {
                state.bump();
                state.jobs.bump_all();
            }
            Err(e) => tracing::warn!("expiring leases: {e}"),
        }
    }
}

//! Checkout of a job's repository (and its submodules) with git2, blocking: run it in
//! `spawn_blocking`.
//!
//! Three URLs exist for every repository:
//! - WRITTEN: as the user (or `.gitmodules`) wrote it; it becomes `origin`, so `git remote -v`
//!   in the container shows what the user expects and works there through the container's
//!   ssh config;
//! - LOGICAL: aliases applied (bitbucket.org → ssh.bitbucket.org); host keys are checked under
//!   its host name;
//! - PHYSICAL: what libgit2 dials, after the host mapping (e.g. 127.0.0.1:2222 in tests).

mod head_start;
mod local;
mod submodules;

use crate::mirror::{Mirror, MirrorError, Mirrors};
use crate::ssh::{
    parse_ssh_url, verify_host_key, HostKeyError, HostKeyType, KnownHosts, SshKey, VcsHosts,
};
use git2::build::CheckoutBuilder;
use git2::{
    AutotagOption, CertificateCheckStatus, Cred, CredentialType, ErrorClass, ErrorCode,
    FetchOptions, Oid, RemoteCallbacks, Repository,
};
use std::cell::{Cell, RefCell};
use std::path::{Path, PathBuf};

pub struct CheckoutSpec {
    /// As the user wrote it: `git@bitbucket.org:acme/widget.git`, `ssh://...`, or a local
    /// path / `file://` URL.
    pub url: String,
    /// Branch, tag, or full/abbreviated (≥ 7) commit SHA; `None` = the remote's HEAD branch.
    pub reference: Option<String>,
    pub dest: PathBuf,
    /// Fetch through these mirrors (SSH remotes; a new `dest`); `None`: straight into `dest`.
    pub mirrors: Option<Mirrors>,
}

pub struct Credentials {
    /// Offered in this order: user key first, then deploy key.
    pub keys: Vec<SshKey>,
    pub known_hosts: KnownHosts,
    pub hosts: VcsHosts,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckoutOutcome {
    pub sha: String,
    pub branch: Option<String>,
    pub tag: Option<String>,
    /// (path relative to the checkout root, commit), nested submodules included.
    pub submodules: Vec<(String, String)>,
}

const FETCH_REFSPECS: [&str; 2] = [
    "+refs/heads/*:refs/remotes/origin/*",
    "+refs/tags/*:refs/tags/*",
];
/// A mirror keeps the remote's own names (and drops what the remote deleted).
const MIRROR_REFSPECS: [&str; 2] = ["+refs/heads/*:refs/heads/*", "+refs/tags/*:refs/tags/*"];
const DEPLOY_KEY_NOTE: &str = "A deploy key opens only the one repository it was added to; \
     submodules and other private repositories need a user key (Project Settings → SSH Keys → \
     Add User Key), which is offered first.";

#[derive(Debug, thiserror::Error)]
pub enum CheckoutError {
    #[error(
        "authentication to {url} was refused for every key offered ({}). {DEPLOY_KEY_NOTE}",
        offered_list(offered)
    )]
    AuthRefused { url: String, offered: Vec<String> },
    #[error(
        "repository {url} does not exist or is not accessible with the keys offered \
         ({}){}{}. {DEPLOY_KEY_NOTE}",
        offered_list(accepted),
        if refused.is_empty() { String::new() } else { format!("; refused at login: {}", refused.join(", ")) },
        if detail.trim().is_empty() { String::new() } else { format!("; the server said: {}", detail.trim().trim_end_matches('.')) }
    )]
    NoAccess {
        url: String,
        /// Keys the server accepted at login that still could not read the repository.
        accepted: Vec<String>,
        refused: Vec<String>,
        /// What libgit2 said, for debugging (it only sees the connection end).
        detail: String,
    },
    #[error("{source} (while fetching {url})")]
    HostKey {
        url: String,
        #[source]
        source: Box<HostKeyError>,
    },
    #[error(
        "{reference:?} is not a branch, tag or commit of {url}. Branches: {}. Tags: {}",
        sample(branches),
        sample(tags)
    )]
    RefNotFound {
        reference: String,
        url: String,
        branches: Vec<String>,
        tags: Vec<String>,
    },
    #[error("submodule {path}: {message}")]
    Submodule { path: String, message: String },
    #[error("checkout destination {}: {message}", path.display())]
    Dest { path: PathBuf, message: String },
    #[error(transparent)]
    Mirror(#[from] MirrorError),
    #[error("{context}: {source}")]
    Git {
        context: String,
        #[source]
        source: git2::Error,
    },
}

fn offered_list(keys: &[String]) -> String {
    if keys.is_empty() {
        "no keys were configured".to_string()
    } else {
        keys.join(", ")
    }
}

fn sample(names: &[String]) -> String {
    if names.is_empty() {
        return "(none)".to_string();
    }
    let mut s = names
        .iter()
        .take(10)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if names.len() > 10 {
        s.push_str(&format!(", … ({} in all)", names.len()));
    }
    s
}

fn git_err(context: impl Into<String>) -> impl FnOnce(git2::Error) -> CheckoutError {
    let context = context.into();
    move |source| CheckoutError::Git { context, source }
}

/// Where one repository is fetched from, in its three forms (see the module docs).
#[derive(Debug, Clone)]
struct RemotePlan {
    written: String,
    physical: String,
    /// Logical (host, port) to check host keys under; `None` for non-SSH transports.
    host_check: Option<(String, u16)>,
    describe: String,
}

impl RemotePlan {
    /// What names a mirror: the address dialled and the host whose key is checked there.
    fn mirror_address(&self) -> Option<String> {
        let (host, port) = self.host_check.as_ref()?;
        Some(format!("{} {host}:{port}", self.physical))
    }
}

fn plan_remote(written: &str, hosts: &VcsHosts) -> RemotePlan {
    let logical = hosts.logical_ssh_url(written);
    let Some(url) = parse_ssh_url(&logical) else {
        return RemotePlan {
            written: written.to_string(),
            physical: written.to_string(),
            host_check: None,
            describe: written.to_string(),
        };
    };
    let check_port = url.port.unwrap_or(22);
    let (connect_host, connect_port) = hosts
        .mapping(&url.host)
        .unwrap_or_else(|| (url.host.clone(), check_port));
    let user = url.user.as_deref().unwrap_or("git");
    let host_fmt = if connect_host.contains(':') {
        format!("[{connect_host}]")
    } else {
        connect_host.clone()
    };
    let physical = format!(
        "ssh://{user}@{host_fmt}:{connect_port}{}",
        url.absolute_path()
    );
    let logical_name = if check_port == 22 {
        url.host.clone()
    } else {
        format!("{}:{check_port}", url.host)
    };
    let describe = if connect_host == url.host && connect_port == check_port {
        format!("{written} ({logical_name})")
    } else {
        format!("{written} ({logical_name} via {host_fmt}:{connect_port})")
    };
    RemotePlan {
        written: written.to_string(),
        physical,
        host_check: Some((url.host, check_port)),
        describe,
    }
}

/// How one fetch attempt ended when it did not succeed.
enum FetchFailure {
    HostKey(HostKeyError),
    /// Every key from the starting one on was refused at login (indices into the keys).
    AuthExhausted(Vec<usize>),
    /// Failed after login succeeded with this key (`None`: no key was needed/asked).
    AfterAuth(Option<usize>, git2::Error),
    Other(git2::Error),
}

/// One fetch over one connection, offering `keys[first..]` in order.
fn fetch_once(
    repo: &Repository,
    plan: &RemotePlan,
    refspecs: &[&str],
    creds: &Credentials,
    first: usize,
    prune: bool,
) -> Result<Option<String>, FetchFailure> {
    let next_key = Cell::new(first);
    let offered: RefCell<Vec<usize>> = RefCell::new(Vec::new());
    let exhausted = Cell::new(false);
    let host_error: RefCell<Option<HostKeyError>> = RefCell::new(None);
    let default_branch;
    let result = {
        let mut callbacks = RemoteCallbacks::new();
        // libgit2 calls this again after each refused key; without a limit it would loop
        // forever offering the same key.
        callbacks.credentials(|_url, username, allowed| {
            let user = username.unwrap_or("git");
            if allowed.contains(CredentialType::USERNAME) {
                return Cred::username(user);
            }
            if !allowed.contains(CredentialType::SSH_KEY)
                && !allowed.contains(CredentialType::SSH_MEMORY)
            {
                return Err(git2::Error::from_str(
                    "the server asked for a credential type other than an SSH key",
                ));
            }
            let idx = next_key.get();
            let Some(key) = creds.keys.get(idx) else {
                exhausted.set(true);
                return Err(git2::Error::new(
                    ErrorCode::Auth,
                    ErrorClass::Ssh,
                    "all configured SSH keys were refused",
                ));
            };
            next_key.set(idx + 1);
            offered.borrow_mut().push(idx);
            Cred::ssh_key_from_memory(user, None, key.private.expose(), None)
        });
        callbacks.certificate_check(|cert, _hostname| {
            let Some((host, port)) = &plan.host_check else {
                return Ok(CertificateCheckStatus::CertificatePassthrough);
            };
            let verdict = match cert.as_hostkey().and_then(|hk| hk.hostkey()) {
                Some(blob) => {
                    let key_type = HostKeyType::from_blob(blob)
                        .unwrap_or_else(|| HostKeyType::Other("unknown".into()));
                    verify_host_key(&creds.known_hosts, host, *port, &key_type, blob)
                }
                None => Err(HostKeyError::NoHostKey {
                    host: host.clone(),
                    port: *port,
                }),
            };
            match verdict {
                Ok(()) => Ok(CertificateCheckStatus::CertificateOk),
                Err(e) => {
                    let err =
                        git2::Error::new(ErrorCode::Certificate, ErrorClass::Ssh, e.to_string());
                    *host_error.borrow_mut() = Some(e);
                    Err(err)
                }
            }
        });
        let mut fo = FetchOptions::new();
        fo.remote_callbacks(callbacks);
        fo.download_tags(AutotagOption::None);
        if prune {
            fo.prune(git2::FetchPrune::On);
        }
        let mut remote = match repo.remote_anonymous(&plan.physical) {
            Ok(r) => r,
            Err(e) => return Err(FetchFailure::Other(e)),
        };
        let r = remote.fetch(refspecs, Some(&mut fo), None);
        default_branch = remote
            .default_branch()
            .ok()
            .and_then(|b| b.as_str().ok().map(str::to_string));
        r
    };
    match result {
        Ok(()) => Ok(default_branch),
        Err(e) => {
            if let Some(hk) = host_error.borrow_mut().take() {
                return Err(FetchFailure::HostKey(hk));
            }
            if exhausted.get() {
                return Err(FetchFailure::AuthExhausted(offered.into_inner()));
            }
            tracing::debug!(url = %plan.physical, class = ?e.class(), code = ?e.code(), "fetch failed: {e}");
            if e.code() == ErrorCode::Auth {
                return Err(FetchFailure::AuthExhausted(offered.into_inner()));
            }
            let offered = offered.into_inner();
            if plan.host_check.is_some() && !offered.is_empty() && looks_like_remote_hangup(&e) {
                Err(FetchFailure::AfterAuth(offered.last().copied(), e))
            } else {
                Err(FetchFailure::Other(e))
            }
        }
    }
}

/// After a successful login, Bitbucket's forced command prints `conq: repository does not
/// exist.` on the channel's stderr and exits 1. libgit2 1.9 (libssh2 transport), finding
/// stdout empty, reads stderr and fails with class `Ssh`, code `Eof` and that text as the
/// message. A server that closes without a word gives an "early EOF" instead. Both mean
/// "this key may not read this repository" (or it does not exist: Bitbucket does not say).
fn looks_like_remote_hangup(e: &git2::Error) -> bool {
    let msg = e.message().to_ascii_lowercase();
    e.code() == ErrorCode::Eof
        || msg.contains("early eof")
        || msg.contains("repository not found")
        || msg.contains("does not exist")
}

/// Fetches with the keys in order; if a key logs in but the repository is not served to it,
/// the whole fetch is retried from the next key (a deploy key may open the main repository
/// that the user key's account cannot see).
fn fetch_with_keys(
    repo: &Repository,
    plan: &RemotePlan,
    refspecs: &[&str],
    creds: &Credentials,
    prune: bool,
) -> Result<Option<String>, CheckoutError> {
    let describe = |i: &usize| {
        creds
            .keys
            .get(*i)
            .map(SshKey::describe)
            .unwrap_or_else(|| "?".to_string())
    };
    let mut accepted_denied: Vec<usize> = Vec::new();
    let mut refused: Vec<usize> = Vec::new();
    let mut first = 0;
    loop {
        match fetch_once(repo, plan, refspecs, creds, first, prune) {
            Ok(head) => return Ok(head),
            Err(FetchFailure::HostKey(source)) => {
                return Err(CheckoutError::HostKey {
                    url: plan.written.clone(),
                    source: Box::new(source),
                })
            }
            Err(FetchFailure::AuthExhausted(offered)) => {
                refused.extend(offered);
                if accepted_denied.is_empty() {
                    return Err(CheckoutError::AuthRefused {
                        url: plan.written.clone(),
                        offered: refused.iter().map(describe).collect(),
                    });
                }
                return Err(no_access(plan, creds, &accepted_denied, &refused, None));
            }
            Err(FetchFailure::AfterAuth(Some(idx), e)) => {
                // Keys before `idx` in this attempt were refused at login.
                refused.extend(first..idx);
                accepted_denied.push(idx);
                if idx + 1 >= creds.keys.len() {
                    return Err(no_access(plan, creds, &accepted_denied, &refused, Some(e)));
                }
                first = idx + 1;
            }
            Err(FetchFailure::AfterAuth(None, e)) => {
                return Err(no_access(plan, creds, &accepted_denied, &refused, Some(e)))
            }
            Err(FetchFailure::Other(e)) => {
                return Err(git_err(format!("fetching {}", plan.describe))(e))
            }
        }
    }
}

fn no_access(
    plan: &RemotePlan,
    creds: &Credentials,
    accepted: &[usize],
    refused: &[usize],
    err: Option<git2::Error>,
) -> CheckoutError {
    let describe = |i: &usize| {
        creds
            .keys
            .get(*i)
            .map(SshKey::describe)
            .unwrap_or_else(|| "?".to_string())
    };
    CheckoutError::NoAccess {
        url: plan.written.clone(),
        accepted: accepted.iter().map(describe).collect(),
        refused: refused.iter().map(describe).collect(),
        detail: err.map(|e| e.message().to_string()).unwrap_or_default(),
    }
}

/// libgit2 maps pack files in 1 GiB windows with an 8 GiB limit on 64-bit, and every page it
/// touches stays resident while mapped: a cold clone touched the whole pack twice (indexing,
/// then writing the tree) and kept it all in RSS, on top of an object cache of 256 MiB. Small
/// windows under a low mapped limit (unmapped least recently used first) and no object
/// cache (a checkout reads each tree and blob once) bound what a checkout holds. Process-wide
/// settings: set once, before the first repository is opened.
fn tune_libgit2() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // SAFETY: libgit2 reads these globals when it maps a pack; the Once sets them before
        // any checkout opens a repository, and nothing else in bosun changes them.
        let results = unsafe {
            [
                git2::opts::set_mwindow_size(MWINDOW_SIZE),
                git2::opts::set_mwindow_mapped_limit(MWINDOW_MAPPED_LIMIT),
            ]
        };
        git2::opts::enable_caching(false);
        for r in results {
            if let Err(e) = r {
                tracing::warn!("libgit2 settings: {e}");
            }
        }
    });
}

const MWINDOW_SIZE: usize = 1 << 20;
const MWINDOW_MAPPED_LIMIT: usize = 4 << 20;

/// Clones (or updates) `spec.dest` and checks out the requested reference and all submodules.
pub fn checkout(
    spec: &CheckoutSpec,
    creds: &Credentials,
    progress: &mut dyn FnMut(&str),
) -> Result<CheckoutOutcome, CheckoutError> {
    tune_libgit2();
    let (repo, fresh) = open_or_init(&spec.dest)?;
    let plan = plan_remote(&spec.url, &creds.hosts);
    progress(&format!("Cloning {}", plan.describe));
    match repo.find_remote("origin") {
        Ok(_) => repo
            .remote_set_url("origin", &spec.url)
            .map_err(git_err("setting the origin remote"))?,
        Err(_) => {
            repo.remote("origin", &spec.url)
                .map_err(git_err("adding the origin remote"))?;
        }
    }
    let mirrors = spec.mirrors.as_ref().filter(|_| fresh);
    let mut fetched = fetch_repo(
        &repo,
        &plan,
        creds,
        mirrors,
        spec.reference.as_deref(),
        progress,
    )?;
    let target = resolve_reference(
        &repo,
        spec.reference.as_deref(),
        fetched.remote_head,
        &plan,
        creds,
    )?;
    let commit = repo
        .find_commit(target.commit)
        .map_err(git_err("reading the commit to check out"))?;
    let t = std::time::Instant::now();
    // HEAD ends detached at the commit before any branch is (re)created, so that never
    // touches the current HEAD branch.
    check_out(&repo, &commit, fetched.head_start).map_err(git_err("checking out the tree"))?;
    tracing::debug!(
        ms = t.elapsed().as_millis() as u64,
        head_start = fetched.head_start.map(|o| o.to_string()),
        "tree checked out"
    );
    if let Some(branch) = &target.branch {
        let mut local = repo
            .branch(branch, &commit, true)
            .map_err(git_err(format!("creating branch {branch}")))?;
        local
            .set_upstream(Some(&format!("origin/{branch}")))
            .map_err(git_err(format!("setting the upstream of {branch}")))?;
        repo.set_head(&format!("refs/heads/{branch}"))
            .map_err(git_err(format!("pointing HEAD at {branch}")))?;
    }
    let mut submodules = Vec::new();
    submodules::update(
        &repo,
        &spec.url,
        creds,
        progress,
        Path::new(""),
        &mut submodules,
        0,
        spec.mirrors.as_ref(),
        &mut fetched.prefetched,
    )?;
    if let Some(m) = &spec.mirrors {
        // Over budget: the least recently used mirrors go (never one in use).
        if let Err(e) = m.evict() {
            tracing::warn!("mirror cache: {e}");
        }
    }
    let sha = commit.id().to_string();
    let what = match (&target.branch, &target.tag) {
        (Some(b), _) => format!(" (branch {b})"),
        (None, Some(t)) => format!(" (tag {t})"),
        _ => String::new(),
    };
    progress(&format!("Checked out {sha}{what}"));
    Ok(CheckoutOutcome {
        sha,
        branch: target.branch,
        tag: target.tag,
        submodules,
    })
}

/// A commit fetched into a bare mirror, to read objects from without a working tree. The
/// mirror stays locked while this lives, so no other fetch, repair or eviction changes what
/// is read.
pub struct FetchedCommit {
    mirror: Mirror,
    commit: Oid,
}

impl FetchedCommit {
    /// The bare repository holding the commit.
    pub fn repo(&self) -> &Repository {
        self.mirror.repo()
    }

    pub fn commit(&self) -> Oid {
        self.commit
    }
}

/// Fetch `url` into the mirror of `scope` + its address under `mirrors` with `creds` (the
/// keys in order, the host-key check) and resolve `reference` (a branch, a tag, `refs/heads/…`,
/// `refs/tags/…` or a commit SHA) there. Nothing is checked out: the caller reads objects
/// from [`FetchedCommit::repo`]. As with a job's checkout, the fetch with these credentials
/// comes first even when the mirror is up to date (then it is one login and one ref
/// advertisement), so credentials that cannot read the repository get nothing of the mirror.
/// `scope` keeps mirrors of different owners apart (e.g. one per project) even for one URL.
pub fn fetch_commit(
    url: &str,
    reference: &str,
    scope: &str,
    mirrors: &Mirrors,
    creds: &Credentials,
) -> Result<FetchedCommit, CheckoutError> {
    tune_libgit2();
    let plan = plan_remote(url, &creds.hosts);
    // Not SSH (a local path or file:// an operator configured): no host to check, the
    // address alone names it.
    let address = plan
        .mirror_address()
        .unwrap_or_else(|| plan.physical.clone());
    let mut quiet = |_: &str| {};
    let t0 = std::time::Instant::now();
    let mut mirror = mirrors.open(&format!("{scope} {address}"), &plan.written, &mut quiet)?;
    let t1 = std::time::Instant::now();
    match fetch_with_keys(mirror.repo(), &plan, &MIRROR_REFSPECS, creds, true) {
        Ok(_) => {}
        Err(CheckoutError::Git { source, .. })
            if is_local_damage(&source) && !mirror.is_empty() =>
        {
            mirror.reset(source.message(), &mut quiet)?;
            fetch_with_keys(mirror.repo(), &plan, &MIRROR_REFSPECS, creds, true)?;
        }
        Err(e) => return Err(e),
    }
    let t2 = std::time::Instant::now();
    let commit = resolve_in_mirror(mirror.repo(), reference, &plan, creds)?;
    tracing::debug!(
        url = %plan.written,
        open_ms = (t1 - t0).as_secs_f64() * 1000.0,
        fetch_ms = (t2 - t1).as_secs_f64() * 1000.0,
        resolve_ms = t2.elapsed().as_secs_f64() * 1000.0,
        "fetched into the mirror"
    );
    Ok(FetchedCommit { mirror, commit })
}

/// `reference` in a mirror, whose branches are `refs/heads/*` (not `refs/remotes/origin/*`).
fn resolve_in_mirror(
    repo: &Repository,
    reference: &str,
    plan: &RemotePlan,
    creds: &Credentials,
) -> Result<Oid, CheckoutError> {
    let peel = |name: &str| -> Option<Oid> {
        Some(repo.find_reference(name).ok()?.peel_to_commit().ok()?.id())
    };
    let named = if reference.starts_with("refs/heads/") || reference.starts_with("refs/tags/") {
        peel(reference)
    } else {
        peel(&format!("refs/heads/{reference}")).or_else(|| peel(&format!("refs/tags/{reference}")))
    };
    if let Some(oid) = named {
        return Ok(oid);
    }
    let is_hex =
        (7..=40).contains(&reference.len()) && reference.chars().all(|c| c.is_ascii_hexdigit());
    if is_hex {
        if let Ok(c) = repo
            .revparse_single(reference)
            .and_then(|o| o.peel_to_commit())
        {
            return Ok(c.id());
        }
        if reference.len() == 40 {
            // Not reachable from any branch or tag: ask for the object itself, with the same
            // credentials (servers allow this only with uploadpack.allowAnySHA1InWant or
            // protocol v2).
            if fetch_with_keys(repo, plan, &[reference], creds, false).is_ok() {
                if let Ok(c) = Oid::from_str(reference).and_then(|o| repo.find_commit(o)) {
                    return Ok(c.id());
                }
            }
        }
    }
    let names = |glob: &str, prefix: &str| ref_names(repo, glob, prefix);
    Err(CheckoutError::RefNotFound {
        reference: reference.to_owned(),
        url: plan.written.clone(),
        branches: names("refs/heads/*", "refs/heads/"),
        tags: names("refs/tags/*", "refs/tags/"),
    })
}

/// The repository at `dest`, and whether it was made now.
fn open_or_init(dest: &Path) -> Result<(Repository, bool), CheckoutError> {
    if dest.join(".git").exists() {
        return Repository::open(dest)
            .map(|r| (r, false))
            .map_err(git_err(format!(
                "opening the existing repository in {}",
                dest.display()
            )));
    }
    if let Ok(mut entries) = std::fs::read_dir(dest) {
        if entries.next().is_some() {
            return Err(CheckoutError::Dest {
                path: dest.to_path_buf(),
                message: "exists, is not empty and is not a git repository".into(),
            });
        }
    }
    Repository::init(dest)
        .map(|r| (r, true))
        .map_err(git_err(format!(
            "creating a repository in {}",
            dest.display()
        )))
}

/// What [`fetch_repo`] brought.
#[derive(Default)]
struct Fetched {
    /// The remote's `HEAD` branch, when it said.
    remote_head: Option<String>,
    /// The commit whose tree a head start wrote into the working directory (`HEAD` is
    /// detached there): the final checkout goes from it with [`head_start::finish`].
    head_start: Option<Oid>,
    /// Submodule mirrors fetched beside this fetch, for [`submodules::update`].
    prefetched: submodules::Prefetched,
}

/// Fetch what `plan` names into `repo`: through the mirror when there is one, else
/// directly. The mirror is fetched into with the job's own keys and host-key check before
/// anything of it reaches the job, even when it is up to date (then the fetch is one ref
/// advertisement): a key that cannot read the repository fails here, whatever the mirror
/// holds. While that fetch waits on the server, the tree the mirror already has for
/// `reference` is written into `repo`'s working directory ([`head_start`]); a failed
/// fetch wipes it.
fn fetch_repo(
    repo: &Repository,
    plan: &RemotePlan,
    creds: &Credentials,
    mirrors: Option<&Mirrors>,
    reference: Option<&str>,
    progress: &mut dyn FnMut(&str),
) -> Result<Fetched, CheckoutError> {
    let (Some(mirrors), Some(address)) = (mirrors, plan.mirror_address()) else {
        let remote_head = match local::copy_from_local_path(repo, plan) {
            Some(head) => head,
            None => fetch_with_keys(repo, plan, &FETCH_REFSPECS, creds, false)?,
        };
        return Ok(Fetched {
            remote_head,
            ..Fetched::default()
        });
    };
    let t = std::time::Instant::now();
    let mut mirror = mirrors.open(&address, &plan.written, progress)?;
    tracing::debug!(ms = t.elapsed().as_millis() as u64, %address, "mirror opened and checked");
    let git_dir = repo.path().to_path_buf();
    let workdir = repo.workdir().map(Path::to_path_buf);
    // What the mirror had before this fetch, linked in now for the head start (and kept:
    // the materialize after the fetch adds only the new packs).
    let guess = workdir
        .as_ref()
        .and_then(|_| head_start::guess(mirror.repo(), reference))
        .filter(|_| mirror.materialize(repo).is_ok());
    if let Some(oid) = guess {
        tracing::debug!(%oid, "head start: the mirror's tree is written while the fetch runs");
    }
    // Three at once: the fetch (mostly waiting on the server), the head start's tree and,
    // as soon as its `.gitmodules` is written, the submodules' fetches.
    let (fetched, started, prefetched) = std::thread::scope(|s| {
        let ahead = guess.map(|oid| {
            let (tell, told) = std::sync::mpsc::channel::<bool>();
            let (git_dir, plan_url) = (&git_dir, &plan.written);
            let tree = s.spawn(move || {
                head_start::write_tree(git_dir, oid, move |written| {
                    let _ = tell.send(written);
                })
            });
            let subs = s.spawn(move || match told.recv() {
                Ok(true) => submodules::prefetch(git_dir, plan_url, creds, mirrors),
                _ => submodules::Prefetched::new(),
            });
            (tree, subs)
        });
        let t_fetch = std::time::Instant::now();
        let fetched = fetch_with_keys(mirror.repo(), plan, &MIRROR_REFSPECS, creds, true);
        tracing::debug!(
            ms = t_fetch.elapsed().as_millis() as u64,
            "the fetch itself"
        );
        let Some((tree, subs)) = ahead else {
            return (fetched, None, submodules::Prefetched::new());
        };
        let joined = tree.join();
        tracing::debug!(
            ms = t.elapsed().as_millis() as u64,
            "head start: its tree written"
        );
        let started = match joined {
            Ok(Ok(oid)) => Some(oid),
            Ok(Err(e)) => {
                tracing::debug!("head start failed, checking out in full: {e}");
                None
            }
            Err(_) => None,
        };
        let prefetched = subs.join().unwrap_or_default();
        (fetched, started, prefetched)
    });
    let wipe = |why: &str| -> Result<(), CheckoutError> {
        let Some(workdir) = &workdir else {
            return Ok(());
        };
        head_start::wipe(&git_dir, workdir).map_err(|e| CheckoutError::Dest {
            path: workdir.clone(),
            message: format!("cannot remove the head start ({why}): {e}"),
        })
    };
    let mut head_start = started;
    let remote_head = match fetched {
        Ok(head) => head,
        Err(CheckoutError::Git { source, .. })
            if is_local_damage(&source) && !mirror.is_empty() =>
        {
            if guess.is_some() {
                wipe("the mirror was damaged")?;
                head_start = None;
            }
            mirror.reset(source.message(), progress)?;
            fetch_with_keys(mirror.repo(), plan, &MIRROR_REFSPECS, creds, true)?
        }
        Err(e) => {
            if guess.is_some() {
                wipe("the fetch failed")?;
            }
            return Err(e);
        }
    };
    if guess.is_some() && head_start.is_none() {
        // A head start that failed midway leaves a partial tree: start from nothing.
        wipe("it failed")?;
    }
    tracing::debug!(
        ms = t.elapsed().as_millis() as u64,
        head_start = head_start.is_some(),
        "mirror fetched"
    );
    mirror.materialize(repo)?;
    tracing::debug!(
        ms = t.elapsed().as_millis() as u64,
        "job repository made from the mirror"
    );
    Ok(Fetched {
        remote_head,
        head_start,
        prefetched,
    })
}

/// Check out `commit` (its tree, `HEAD` detached at it): over a head start's tree when
/// there was one, else in full.
fn check_out(
    repo: &Repository,
    commit: &git2::Commit<'_>,
    head_start: Option<Oid>,
) -> Result<(), git2::Error> {
    if head_start.is_some() {
        return head_start::finish(repo, commit);
    }
    repo.set_head_detached(commit.id())?;
    repo.checkout_tree(commit.as_object(), Some(CheckoutBuilder::new().force()))
}

/// A fetch that failed on the mirror's own files (not the network, not access): starting
/// afresh mends it.
fn is_local_damage(e: &git2::Error) -> bool {
    matches!(
        e.class(),
        ErrorClass::Odb
            | ErrorClass::Zlib
            | ErrorClass::Indexer
            | ErrorClass::Reference
            | ErrorClass::Object
            | ErrorClass::Repository
            | ErrorClass::Filesystem
    )
}

struct Target {
    commit: Oid,
    branch: Option<String>,
    tag: Option<String>,
}

fn resolve_reference(
    repo: &Repository,
    reference: Option<&str>,
    remote_head: Option<String>,
    plan: &RemotePlan,
    creds: &Credentials,
) -> Result<Target, CheckoutError> {
    let branch_target = |name: &str| -> Option<Target> {
        let r = repo
            .find_reference(&format!("refs/remotes/origin/{name}"))
            .ok()?;
        Some(Target {
            commit: r.peel_to_commit().ok()?.id(),
            branch: Some(name.to_string()),
            tag: None,
        })
    };
    let tag_target = |name: &str| -> Option<Target> {
        let r = repo.find_reference(&format!("refs/tags/{name}")).ok()?;
        Some(Target {
            commit: r.peel_to_commit().ok()?.id(),
            branch: None,
            tag: Some(name.to_string()),
        })
    };
    let Some(reference) = reference else {
        let head = remote_head
            .as_deref()
            .and_then(|h| h.strip_prefix("refs/heads/"))
            .map(str::to_string);
        let candidates = head
            .into_iter()
            .chain(["main".to_string(), "master".to_string()]);
        for name in candidates {
            if let Some(t) = branch_target(&name) {
                return Ok(t);
            }
        }
        return Err(ref_not_found(repo, "(remote HEAD)", plan));
    };
    if let Some(b) = reference.strip_prefix("refs/heads/") {
        return branch_target(b).ok_or_else(|| ref_not_found(repo, reference, plan));
    }
    if let Some(t) = reference.strip_prefix("refs/tags/") {
        return tag_target(t).ok_or_else(|| ref_not_found(repo, reference, plan));
    }
    if let Some(t) = branch_target(reference).or_else(|| tag_target(reference)) {
        return Ok(t);
    }
    let is_hex = reference.len() >= 7
        && reference.len() <= 40
        && reference.chars().all(|c| c.is_ascii_hexdigit());
    if is_hex {
        if let Ok(c) = repo
            .revparse_single(reference)
            .and_then(|o| o.peel_to_commit())
        {
            return Ok(Target {
                commit: c.id(),
                branch: None,
                tag: None,
            });
        }
        if reference.len() == 40 {
            // Not reachable from any branch or tag: ask for the object itself (servers allow
            // this only with uploadpack.allowAnySHA1InWant or protocol v2).
            if fetch_with_keys(repo, plan, &[reference], creds, false).is_ok() {
                if let Ok(c) = Oid::from_str(reference).and_then(|o| repo.find_commit(o)) {
                    return Ok(Target {
                        commit: c.id(),
                        branch: None,
                        tag: None,
                    });
                }
            }
        }
    }
    Err(ref_not_found(repo, reference, plan))
}

/// The names of `repo`'s refs matching `glob`, without `prefix`, sorted (for errors that list
/// what there is).
fn ref_names(repo: &Repository, glob: &str, prefix: &str) -> Vec<String> {
    let mut v: Vec<String> = repo
        .references_glob(glob)
        .map(|refs| {
            refs.filter_map(|r| r.ok())
                .filter_map(|r| {
                    r.name()
                        .ok()
                        .map(|n| n.trim_start_matches(prefix).to_owned())
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn ref_not_found(repo: &Repository, reference: &str, plan: &RemotePlan) -> CheckoutError {
    let names = |glob: &str, prefix: &str| ref_names(repo, glob, prefix);
    CheckoutError::RefNotFound {
        reference: reference.to_string(),
        url: plan.written.clone(),
        branches: names("refs/remotes/origin/*", "refs/remotes/origin/"),
        tags: names("refs/tags/*", "refs/tags/"),
    }
}

#[cfg(test)]
mod tests;

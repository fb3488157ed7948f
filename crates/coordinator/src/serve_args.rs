//! `bosun coordinator serve`'s settings: where it listens, its store, TLS, Bitbucket, OIDC,
//! object storage, notifications and people.

use super::{blobs, cli_follow, parse_ttl, people, DataArg, OidcKeysArg};
use bosun_protocol::DEFAULT_LEASE_SECS;
use std::path::PathBuf;
use std::time::Duration;

#[derive(clap::Args, Debug)]
pub struct ServeArgs {
    #[command(flatten)]
    pub data: DataArg,
    /// Address to listen on; port 0 picks a free one (the chosen address is printed).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: String,
    /// A file holding a registration token accepted besides the stored one (`token`).
    #[arg(long)]
    pub registration_token_file: Option<PathBuf>,
    /// Lease length handed to agents; a lease not renewed by a heartbeat in time lapses.
    #[arg(long, default_value_t = DEFAULT_LEASE_SECS)]
    pub lease_secs: u64,
    /// A request's headers must arrive within this; an idle keep-alive connection closes
    /// after it.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_ttl)]
    pub header_timeout: Duration,
    /// Open connections at most (also kept under the process's file descriptor limit); more
    /// wait in the listen backlog.
    #[arg(long, default_value_t = 1024)]
    pub max_connections: usize,
    /// Connections one client address (an IPv6 /64) may have waiting for request headers,
    /// new or idle between keep-alive requests. Past it a new connection is closed at once
    /// (over plain HTTP, one that came with its whole request headers is answered, then
    /// closed), and a request ending there closes its connection instead of keeping it
    /// alive. Without it one address could fill --max-connections with stalled
    /// connections. An agent or a browser keeps a few; behind a reverse proxy or a NAT
    /// shared by many agents, raise it (0: no cap).
    #[arg(long, default_value_t = 32)]
    pub max_waiting_per_address: usize,
    /// Serve HTTPS with this certificate chain (PEM; needs --tls-key). Claims carry the
    /// projects' private keys: anything but loopback should be HTTPS.
    #[arg(long, value_name = "PEM", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The certificate's private key (PEM: PKCS#8, PKCS#1 or SEC1).
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Be an OpenID Connect issuer at this URL: every claimed job gets CIRCLE_OIDC_TOKEN and
    /// CIRCLE_OIDC_TOKEN_V2, and discovery and keys are served under
    /// /.well-known/. The URL must lead to this server's root and be reachable by whoever
    /// verifies the tokens (a cloud provider: public HTTPS). Without it jobs get no tokens.
    #[arg(long, env = "BOSUN_OIDC_ISSUER", value_name = "URL")]
    pub oidc_issuer: Option<String>,
    /// How long a job's OIDC token is valid after the claim (CircleCI: 1h).
    #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = parse_ttl)]
    pub oidc_token_lifetime: Duration,
    #[command(flatten)]
    pub oidc_keys: OidcKeysArg,
    /// Bytes of blobs (workspaces, caches, artifacts) each project may keep, e.g. 500MiB,
    /// 10GiB; an upload past it is refused with an error naming the project.
    #[arg(long, value_name = "SIZE", default_value = "10GiB", value_parser = blobs::parse_size)]
    pub blob_quota: u64,
    /// Keep blobs (caches, workspaces, artifacts) and finished logs in an S3-compatible
    /// bucket, `s3://BUCKET` or `s3://BUCKET/PREFIX`, instead of the data directory (the
    /// default). Credentials: --s3-credentials-file, else AWS_ACCESS_KEY_ID and
    /// AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN) from the environment.
    #[arg(long, env = "BOSUN_BLOB_STORE", value_name = "s3://BUCKET/PREFIX")]
    pub blob_store: Option<String>,
    /// With --database and no --blob-store: every coordinator on this database uses this
    /// same data directory (one host, or a shared mount), or this one runs alone, so blobs
    /// and finished logs kept there are seen by all (docs/scale.md). Without it such a start
    /// is refused.
    #[arg(long, env = "BOSUN_SHARED_DATA")]
    pub shared_data: bool,
    /// The S3 server's URL, e.g. https://minio.example:9000 (default: AWS, from the region).
    #[arg(
        long,
        env = "BOSUN_S3_ENDPOINT",
        value_name = "URL",
        requires = "blob_store"
    )]
    pub s3_endpoint: Option<String>,
    /// The bucket's region (default: AWS_REGION, else us-east-1).
    #[arg(
        long,
        env = "BOSUN_S3_REGION",
        value_name = "REGION",
        requires = "blob_store"
    )]
    pub s3_region: Option<String>,
    /// A file (owner-only) with `aws_access_key_id = …` and `aws_secret_access_key = …`
    /// lines (AWS's credentials form); never pass keys on the command line.
    #[arg(long, value_name = "FILE", requires = "blob_store")]
    pub s3_credentials_file: Option<PathBuf>,
    /// The address people and Bitbucket reach this coordinator's pages at (commit statuses
    /// link job pages there); default: the listening address.
    #[arg(long, value_name = "URL")]
    pub public_url: Option<String>,
    /// Where a VCS host really is when fetching pipeline configs: `HOST=ADDR:PORT`
    /// (repeatable), as the agent's `vcs_hosts`.
    #[arg(long = "vcs-host", value_name = "HOST=ADDR:PORT")]
    pub vcs_hosts: Vec<String>,
    /// Bytes the projects' config mirrors (DATA/config-mirrors, where pipeline configs are
    /// fetched) may take together, e.g. 2GiB; the least recently used are removed after each
    /// fetch (never one being fetched into); a budget smaller than one mirror keeps only the
    /// mirror just used.
    #[arg(long, value_name = "SIZE", default_value = "10GiB", value_parser = blobs::parse_size)]
    pub config_mirror_budget: u64,
    /// Tests only: the scheduler reads "now" (milliseconds since the epoch) from this file
    /// instead of the system clock, so a test moves schedules through their ticks.
    #[arg(long, value_name = "FILE", hide = true)]
    pub schedule_clock_file: Option<PathBuf>,
    /// Registry orbs pipeline configs may import (`circleci/continuation@2.0.1`):
    /// DIR/NAMESPACE/NAME@VERSION.yml, as `bosun execute --orb-dir`; agents need the same
    /// orbs (their `orb_dir`).
    #[arg(long, value_name = "DIR")]
    pub orb_dir: Option<PathBuf>,
    /// The SMTP server notification mail goes through: `smtp://HOST:PORT` (STARTTLS when the
    /// server offers it; `?tls=required`: only with STARTTLS) or `smtps://HOST:PORT` (TLS
    /// from the start). Without it, mail waits in the outbox (docs/notifications.md).
    #[arg(long, value_name = "URL", requires = "mail_from")]
    pub smtp_url: Option<String>,
    /// A file with one line `USER:PASSWORD` to sign in to the SMTP server with.
    #[arg(long, value_name = "FILE", requires = "smtp_url")]
    pub smtp_credentials_file: Option<PathBuf>,
    /// Certificates (PEM) to trust for the SMTP server's TLS besides the system's.
    #[arg(long, value_name = "PEM", requires = "smtp_url")]
    pub smtp_ca_file: Option<PathBuf>,
    /// The address notification mail comes from.
    #[arg(long, value_name = "ADDRESS", requires = "smtp_url")]
    pub mail_from: Option<String>,
    /// Notifications (mails and webhook calls) delivered at once, at most.
    #[arg(long, value_name = "N", default_value_t = 8)]
    pub notify_max_in_flight: usize,
    /// Each delivery's time limit (a webhook receiver's answer, an SMTP exchange's steps).
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_ttl)]
    pub notify_timeout: Duration,
    /// The longest wait between two tries of a failed delivery (waits double from 1s).
    #[arg(long, value_name = "DURATION", default_value = "10m", value_parser = parse_ttl)]
    pub notify_max_backoff: Duration,
    /// People log in with Bitbucket Cloud through this OAuth consumer: a file holding
    /// `KEY:SECRET` (owner-only). The consumer's callback URL is
    /// PUBLIC_URL/login/bitbucket/callback; it needs the `account` and `repository` scopes
    /// (docs/people.md). With `--bitbucket-dc-url` it is a Data Center incoming application
    /// link's `CLIENT_ID:CLIENT_SECRET` instead.
    #[arg(long, value_name = "FILE")]
    pub bitbucket_oauth_file: Option<PathBuf>,
    /// People log in with this Bitbucket Data Center (its base URL, such as
    /// https://bitbucket.example.com) instead of Bitbucket Cloud: its OAuth 2.0 provider
    /// (with `--bitbucket-oauth-file`) and HTTP access tokens pasted on the login page
    /// (with or without it), and its REST API (`--bitbucket-oauth-url` and
    /// `--bitbucket-api` are then unused).
    #[arg(long, value_name = "URL")]
    pub bitbucket_dc_url: Option<String>,
    /// Bitbucket Cloud's site, where its OAuth endpoints are (`/site/oauth2/…`).
    #[arg(long, value_name = "URL", default_value = people::oauth::CLOUD_SITE)]
    pub bitbucket_oauth_url: String,
    /// Bitbucket Cloud's REST API base, for the account and its permissions at login.
    #[arg(long, value_name = "URL", default_value = cli_follow::CLOUD_API)]
    pub bitbucket_api: String,
    /// How long a login lasts (the session then ends on the server).
    #[arg(long, value_name = "DURATION", default_value = "12h", value_parser = parse_ttl)]
    pub session_lifetime: Duration,
    /// A person's repository permissions are read again from Bitbucket when older than
    /// this (at their next request); approve, cancel and rerun read them again first
    /// whatever their age. A permission taken away on Bitbucket applies within this.
    #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = parse_ttl)]
    pub permissions_refresh: Duration,
    /// How long the audit log keeps a row: older rows are removed at start and every hour
    /// (`forever` or `0`: every row is kept). `bosun coordinator audit prune --older-than`
    /// removes older rows at once.
    #[arg(long, value_name = "DURATION", default_value = crate::model::audit::DEFAULT_RETENTION)]
    pub audit_retention: crate::model::audit::Retention,
    /// Serve `/metrics` to anyone who reaches it (a scraper without a token). Without it,
    /// `/metrics` needs an operator token (`Authorization: Bearer`) or a coordinator
    /// admin's session. The metrics are counts only, naming no project.
    #[arg(long)]
    pub metrics_public: bool,
}

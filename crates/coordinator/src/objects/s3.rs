//! Objects in an S3-compatible bucket, through `object_store` (AWS SigV4-signed requests).
//!
//! A file goes in as one `PUT` when it fits in one part, else as a multipart upload of
//! [`PART`]-byte parts read from the file one at a time (at most [`PARTS_IN_FLIGHT`] in the
//! air), completed only once every part is in and aborted on any error: the object is whole
//! or absent. Credentials come from `--s3-credentials-file` or the standard `AWS_*`
//! variables; they never appear in a message (messages name the bucket and the endpoint).

use super::{ByteStream, ObjectError, Objects, StoreSettings};
use futures_util::future::BoxFuture;
use futures_util::{FutureExt, StreamExt, TryStreamExt};
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as ObjectPath;
use object_store::{GetOptions, GetRange, ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart};
use std::path::Path;
use std::time::Duration;
use tokio::io::AsyncReadExt;

/// Bytes of one part of a multipart upload (S3 asks at least 5 MiB of every part but the
/// last). A file this size or smaller goes in one `PUT`.
pub const PART: usize = 8 * 1024 * 1024;
/// Parts uploading at once: memory stays below `PART × (PARTS_IN_FLIGHT + 1)`.
const PARTS_IN_FLIGHT: usize = 2;

pub struct S3Objects {
    store: AmazonS3,
    bucket: String,
    prefix: String,
    endpoint: String,
}

/// Access key and secret from a credentials file: the AWS shared-credentials form
/// (`aws_access_key_id = …`, `aws_secret_access_key = …`, optional `aws_session_token`, in
/// the file's first section or before any). The file must be readable by its owner only.
struct Credentials {
    key_id: String,
    secret: zeroize::Zeroizing<String>,
    token: Option<zeroize::Zeroizing<String>>,
}

fn read_credentials(path: &Path) -> Result<Credentials, ObjectError> {
    let shown = path.display();
    let meta = std::fs::metadata(path).map_err(|source| ObjectError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    if let Some(mode) = bosun_protocol::private::loose_mode(&meta) {
        return Err(ObjectError::Config(format!(
            "{shown}: the S3 credentials file has mode {mode:o}; make it readable by its owner \
             only (chmod 600)"
        )));
    }
    let text = zeroize::Zeroizing::new(std::fs::read_to_string(path).map_err(|source| {
        ObjectError::Io {
            path: path.to_path_buf(),
            source,
        }
    })?);
    let (mut key_id, mut secret, mut token) = (None, None, None);
    let mut sections = 0;
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if line.starts_with('[') {
            sections += 1;
            if sections > 1 {
                break;
            }
            continue;
        }
        let Some((k, v)) = line.split_once('=') else {
            return Err(ObjectError::Config(format!(
                "{shown}:{}: expected `name = value` (aws_access_key_id, aws_secret_access_key, \
                 aws_session_token)",
                n + 1
            )));
        };
        let v = v.trim().to_owned();
        match k.trim() {
            "aws_access_key_id" => key_id = Some(v),
            "aws_secret_access_key" => secret = Some(zeroize::Zeroizing::new(v)),
            "aws_session_token" => token = Some(zeroize::Zeroizing::new(v)),
            other => {
                return Err(ObjectError::Config(format!(
                    "{shown}:{}: unknown key `{}` (expected aws_access_key_id, \
                     aws_secret_access_key, aws_session_token)",
                    n + 1,
                    crate::printable(other)
                )))
            }
        }
    }
    match (key_id, secret) {
        (Some(key_id), Some(secret)) if !key_id.is_empty() && !secret.is_empty() => {
            Ok(Credentials {
                key_id,
                secret,
                token,
            })
        }
        _ => Err(ObjectError::Config(format!(
            "{shown}: needs both aws_access_key_id and aws_secret_access_key"
        ))),
    }
}

impl S3Objects {
    /// The bucket and prefix of `url` (`s3://bucket/prefix`) with `settings`' endpoint,
    /// region and credentials. Makes no request (see [`Objects::check`]).
    pub fn open(url: &str, settings: &StoreSettings) -> Result<S3Objects, ObjectError> {
        let (bucket, prefix) = super::parse_s3_url(url)?;
        let mut b = match &settings.credentials_file {
            // A file: the environment's AWS_* settings are not mixed in.
            Some(f) => {
                let c = read_credentials(f)?;
                let mut b = AmazonS3Builder::new()
                    .with_access_key_id(c.key_id)
                    .with_secret_access_key(c.secret.as_str());
                if let Some(t) = &c.token {
                    b = b.with_token(t.as_str());
                }
                b
            }
            None => AmazonS3Builder::from_env(),
        };
        b = b.with_bucket_name(&bucket);
        if let Some(r) = &settings.region {
            b = b.with_region(r);
        }
        let endpoint = match &settings.endpoint {
            Some(e) => {
                let u = reqwest::Url::parse(e).map_err(|err| {
                    ObjectError::Config(format!(
                        "--s3-endpoint `{}`: {err} (expected http(s)://host[:port])",
                        crate::printable(e)
                    ))
                })?;
                if !matches!(u.scheme(), "http" | "https") || !u.username().is_empty() {
                    return Err(ObjectError::Config(format!(
                        "--s3-endpoint `{}`: expected http(s)://host[:port], without \
                         credentials in it",
                        crate::printable(e)
                    )));
                }
                // Path-style requests (`endpoint/bucket/key`): what self-hosted S3 servers
                // answer; plain HTTP only when asked for by the endpoint itself.
                b = b
                    .with_endpoint(e.trim_end_matches('/'))
                    .with_virtual_hosted_style_request(false);
                e.trim_end_matches('/').to_owned()
            }
            None => "AWS S3".to_owned(),
        };
        // The client options carry `allow_http` too: set once, here (a later
        // `with_client_options` would reset it).
        let plain_http = settings
            .endpoint
            .as_deref()
            .is_some_and(|e| e.starts_with("http://"));
        b = b
            .with_retry(object_store::RetryConfig {
                max_retries: 3,
                retry_timeout: Duration::from_secs(30),
                ..Default::default()
            })
            .with_client_options(
                object_store::ClientOptions::new()
                    .with_allow_http(plain_http)
                    .with_connect_timeout(Duration::from_secs(5))
                    .with_timeout(Duration::from_secs(300)),
            );
        let store = b
            .build()
            .map_err(|e| ObjectError::Config(format!("S3 bucket `{bucket}` at {endpoint}: {e}")))?;
        Ok(S3Objects {
            store,
            bucket,
            prefix,
            endpoint,
        })
    }

    fn location(&self, key: &str) -> ObjectPath {
        if self.prefix.is_empty() {
            ObjectPath::from(key)
        } else {
            ObjectPath::from(format!("{}/{key}", self.prefix))
        }
    }

    fn fail(&self, what: &'static str, key: &str, e: object_store::Error) -> ObjectError {
        ObjectError::Store {
            place: self.describe(),
            what,
            key: key.to_owned(),
            detail: explain(&e),
        }
    }

    async fn put_multipart(&self, key: &str, file: &Path) -> Result<(), ObjectError> {
        let loc = self.location(key);
        let upload = self
            .store
            .put_multipart(&loc)
            .await
            .map_err(|e| self.fail("starting the upload of", key, e))?;
        let mut w = WriteMultipart::new_with_chunk_size(upload, PART);
        let io = |source| ObjectError::Io {
            path: file.to_path_buf(),
            source,
        };
        let mut f = match tokio::fs::File::open(file).await {
            Ok(f) => f,
            Err(e) => {
                let _ = w.abort().await;
                return Err(io(e));
            }
        };
        let mut buf = vec![0u8; 1024 * 1024];
        loop {
            if let Err(e) = w.wait_for_capacity(PARTS_IN_FLIGHT).await {
                return Err(self.fail("uploading", key, e));
            }
            let n = match f.read(&mut buf).await {
                Ok(n) => n,
                Err(e) => {
                    let _ = w.abort().await;
                    return Err(io(e));
                }
            };
            if n == 0 {
                break;
            }
            w.write(&buf[..n]);
        }
        w.finish()
            .await
            .map_err(|e| self.fail("completing the upload of", key, e))?;
        Ok(())
    }
}

/// The store's error without the request's internals, and with what to check.
fn explain(e: &object_store::Error) -> String {
    let mut text = e.to_string();
    // The causes too: "builder error" or "error sending request" say nothing alone.
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        let c_text = c.to_string();
        if !text.contains(&c_text) {
            text.push_str(": ");
            text.push_str(&c_text);
        }
        cause = c.source();
    }
    let hint = if text.contains("NoSuchBucket") {
        " (the bucket does not exist: create it, or fix --blob-store)"
    } else if text.contains("InvalidAccessKeyId")
        || text.contains("SignatureDoesNotMatch")
        || text.contains("AccessDenied")
        || text.contains("403")
    {
        " (the credentials were refused: check --s3-credentials-file or AWS_ACCESS_KEY_ID / \
         AWS_SECRET_ACCESS_KEY)"
    } else if text.contains("error sending request") || text.contains("connect") {
        " (the endpoint could not be reached: check --s3-endpoint and that the server runs)"
    } else {
        ""
    };
    format!("{text}{hint}")
}

impl Objects for S3Objects {
    fn describe(&self) -> String {
        let p = if self.prefix.is_empty() {
            String::new()
        } else {
            format!("/{}", self.prefix)
        };
        format!("s3://{}{p} at {}", self.bucket, self.endpoint)
    }

    fn is_local(&self) -> bool {
        false
    }

    fn put_file<'a>(
        &'a self,
        key: &'a str,
        file: &'a Path,
    ) -> BoxFuture<'a, Result<(), ObjectError>> {
        async move {
            let len = tokio::fs::metadata(file)
                .await
                .map_err(|source| ObjectError::Io {
                    path: file.to_path_buf(),
                    source,
                })?
                .len();
            if len <= PART as u64 {
                // One part's worth: one signed PUT, as much memory as a part would take.
                let bytes = tokio::fs::read(file)
                    .await
                    .map_err(|source| ObjectError::Io {
                        path: file.to_path_buf(),
                        source,
                    })?;
                self.store
                    .put(&self.location(key), PutPayload::from(bytes))
                    .await
                    .map_err(|e| self.fail("uploading", key, e))?;
            } else {
                self.put_multipart(key, file).await?;
            }
            match tokio::fs::remove_file(file).await {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(source) => Err(ObjectError::Io {
                    path: file.to_path_buf(),
                    source,
                }),
            }
        }
        .boxed()
    }

    fn size<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<u64>, ObjectError>> {
        async move {
            match self.store.head(&self.location(key)).await {
                Ok(m) => Ok(Some(m.size)),
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(self.fail("looking up", key, e)),
            }
        }
        .boxed()
    }

    fn read<'a>(
        &'a self,
        key: &'a str,
        start: u64,
        end: u64,
    ) -> BoxFuture<'a, Result<ByteStream, ObjectError>> {
        async move {
            if start >= end {
                return Ok(Box::pin(futures_util::stream::empty()) as ByteStream);
            }
            let opts = GetOptions {
                range: Some(GetRange::Bounded(start..end)),
                ..Default::default()
            };
            let got = self
                .store
                .get_opts(&self.location(key), opts)
                .await
                .map_err(|e| self.fail("reading", key, e))?;
            let place = self.describe();
            let stream = got
                .into_stream()
                .map_err(move |e| std::io::Error::other(format!("object store {place}: {e}")))
                .boxed();
            Ok(stream as ByteStream)
        }
        .boxed()
    }

    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), ObjectError>> {
        async move {
            match self.store.delete(&self.location(key)).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                Err(e) => Err(self.fail("deleting", key, e)),
            }
        }
        .boxed()
    }

    fn check(&self) -> BoxFuture<'_, Result<(), ObjectError>> {
        async move {
            // A listing, not a HEAD: a missing bucket then says NoSuchBucket in its body.
            let prefix = (!self.prefix.is_empty()).then(|| ObjectPath::from(self.prefix.as_str()));
            self.store
                .list_with_delimiter(prefix.as_ref())
                .await
                .map(|_| ())
                .map_err(|e| self.fail("listing", &self.prefix, e))
        }
        .boxed()
    }
}

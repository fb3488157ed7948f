//! The coordinator's OIDC signing keys: ES256 (ECDSA P-256, SHA-256) key pairs made and used
//! with ring, kept in one JSON file *outside* the data directory (by default
//! `<data dir>.oidc-keys` beside it, mode 0600, like the secrets key), so a copy of the data
//! directory cannot mint tokens.
//!
//! The file holds every key still published: the current one (no `retired` time) signs; a
//! rotated one keeps its place in the JWKS until tokens it signed have expired. `rotate`
//! writes a new file and renames it over the old one, so a running server (which looks at
//! the file's identity before each use) never reads half a file.

use super::super::{CoordError, Result};
use base64::Engine as _;
use bosun_protocol::private::Secret;
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, KeyPair as _, ECDSA_P256_SHA256_FIXED_SIGNING};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use zeroize::Zeroizing;

/// Rotated keys retired longer ago than this are dropped from the file at the next rotation
/// (the JWKS stops showing them much earlier: see [`KeyRing::published`]).
pub const FORGET_AFTER_SECS: i64 = 7 * 24 * 3600;

/// The default key file of a data directory: `<dir>.oidc-keys` beside it (not inside it).
pub fn default_path(data_dir: &Path) -> PathBuf {
    let mut name = data_dir
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_else(|| "coordinator".into());
    name.push(".oidc-keys");
    match data_dir.parent() {
        Some(p) => p.join(name),
        None => PathBuf::from(name),
    }
}

fn b64url(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CoordError + '_ {
    move |source| CoordError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// One key as stored.
#[derive(Serialize, Deserialize, Clone)]
struct StoredKey {
    kid: String,
    /// Unix seconds.
    created: i64,
    /// When a rotation replaced it (Unix seconds); `None`: the signing key.
    #[serde(default)]
    retired: Option<i64>,
    /// PKCS#8 document, base64.
    pkcs8: String,
}

#[derive(Serialize, Deserialize, Default)]
struct KeyFile {
    keys: Vec<StoredKey>,
}

/// A key pair ready to sign, and its public half as a JWK.
#[derive(Debug)]
pub struct SigningKey {
    pub kid: String,
    pub retired: Option<i64>,
    pair: Secret<EcdsaKeyPair>,
}

impl SigningKey {
    /// The public key as a JWK (RFC 7517/7518: kty EC, crv P-256, x, y).
    pub fn jwk(&self) -> serde_json::Value {
        let (x, y) = xy(self.pair.expose().public_key().as_ref());
        serde_json::json!({
            "kty": "EC",
            "crv": "P-256",
            "x": x,
            "y": y,
            "kid": self.kid,
            "use": "sig",
            "alg": "ES256",
        })
    }

    /// A compact JWS (RFC 7515) of `claims`: header `{alg: ES256, typ: JWT, kid}`.
    pub fn sign(&self, claims: &serde_json::Value) -> Result<String> {
        let header = serde_json::json!({"alg": "ES256", "typ": "JWT", "kid": self.kid});
        let input = format!(
            "{}.{}",
            b64url(header.to_string().as_bytes()),
            b64url(claims.to_string().as_bytes())
        );
        let sig = self
            .pair
            .expose()
            .sign(&SystemRandom::new(), input.as_bytes())
            .map_err(|_| CoordError::Invalid("signing an OIDC token failed".into()))?;
        // ECDSA_P256_SHA256_FIXED_SIGNING gives r ‖ s, exactly the JWS ES256 form.
        Ok(format!("{input}.{}", b64url(sig.as_ref())))
    }
}

/// x and y (base64url) of an uncompressed P-256 point (`04 ‖ x ‖ y`).
fn xy(point: &[u8]) -> (String, String) {
    let body = point.get(1..).unwrap_or_default();
    let (x, y) = body.split_at(body.len() / 2);
    (b64url(x), b64url(y))
}

/// RFC 7638 thumbprint of a P-256 public key: the key's id, the same wherever it is computed.
fn thumbprint(point: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    let (x, y) = xy(point);
    // Members in lexicographic order, no whitespace (RFC 7638 §3.2).
    let canonical = format!(r#"{{"crv":"P-256","kty":"EC","x":"{x}","y":"{y}"}}"#);
    b64url(&Sha256::digest(canonical.as_bytes()))
}

fn parse(path: &Path, key: &StoredKey) -> Result<SigningKey> {
    let bad = || {
        CoordError::Invalid(format!(
            "{}: the OIDC key {} is not a P-256 PKCS#8 key",
            path.display(),
            key.kid
        ))
    };
    let der = Zeroizing::new(
        base64::engine::general_purpose::STANDARD
            .decode(key.pkcs8.trim())
            .map_err(|_| bad())?,
    );
    let pair =
        EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &der, &SystemRandom::new())
            .map_err(|_| bad())?;
    Ok(SigningKey {
        kid: key.kid.clone(),
        retired: key.retired,
        pair: Secret::new(pair),
    })
}

fn new_key(now: i64) -> Result<StoredKey> {
    let rng = SystemRandom::new();
    let doc = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
        .map_err(|_| CoordError::Invalid("no randomness for a new OIDC key".into()))?;
    let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, doc.as_ref(), &rng)
        .map_err(|_| CoordError::Invalid("a new OIDC key did not load".into()))?;
    Ok(StoredKey {
        kid: thumbprint(pair.public_key().as_ref()),
        created: now,
        retired: None,
        pkcs8: base64::engine::general_purpose::STANDARD.encode(doc.as_ref()),
    })
}

fn read(path: &Path) -> Result<Option<KeyFile>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => Zeroizing::new(t),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(path)(e)),
    };
    let meta = std::fs::metadata(path).map_err(io(path))?;
    if let Some(mode) = bosun_protocol::private::loose_mode(&meta) {
        return Err(CoordError::Invalid(format!(
            "{}: the OIDC key file has mode {mode:o}; it must be readable by its owner only \
             (chmod 600)",
            path.display(),
        )));
    }
    // The parse error names the place, never the content.
    serde_json::from_str(&text).map(Some).map_err(|e| {
        CoordError::Invalid(format!(
            "{}: not an OIDC key file (line {}, column {})",
            path.display(),
            e.line(),
            e.column()
        ))
    })
}

/// Write `file` to `path` atomically: a 0600 temporary file in the same directory, synced,
/// renamed over it.
fn write(path: &Path, file: &KeyFile) -> Result<()> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
    let dir = dir.unwrap_or(Path::new("."));
    let text = Zeroizing::new(
        serde_json::to_string_pretty(file)
            .map_err(|e| CoordError::Invalid(format!("encoding the OIDC key file: {e}")))?,
    );
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".tmp-{}", std::process::id()));
    let tmp = dir.join(name);
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io(&tmp))?;
    f.write_all(text.as_bytes())
        .and_then(|_| f.write_all(b"\n"))
        .and_then(|_| f.sync_all())
        .map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))
}

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// The file's identity: a rename (rotation) changes the inode, an edit the mtime or size.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct Stamp {
    ino: u64,
    mtime_ns: i128,
    len: u64,
}

fn stamp(path: &Path) -> Option<Stamp> {
    let m = std::fs::metadata(path).ok()?;
    Some(Stamp {
        ino: m.ino(),
        mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
        len: m.len(),
    })
}

/// The keys of one key file, reloaded when the file changes (a `rotate` by another process).
#[derive(Debug)]
pub struct KeyRing {
    path: PathBuf,
    loaded: std::sync::Mutex<(Option<Stamp>, std::sync::Arc<Vec<SigningKey>>)>,
}

fn load_keys(path: &Path, file: &KeyFile) -> Result<Vec<SigningKey>> {
    let keys = file
        .keys
        .iter()
        .map(|k| parse(path, k))
        .collect::<Result<Vec<_>>>()?;
    if !keys.iter().any(|k| k.retired.is_none()) {
        return Err(CoordError::Invalid(format!(
            "{}: the OIDC key file has no current key (run `bosun coordinator oidc rotate`)",
            path.display()
        )));
    }
    Ok(keys)
}

impl KeyRing {
    /// Open the key file at `path`, making it with one new key when it does not exist.
    pub fn open_or_create(path: &Path) -> Result<KeyRing> {
        let file = match read(path)? {
            Some(f) => f,
            None => {
                let f = KeyFile {
                    keys: vec![new_key(now_secs())?],
                };
                write(path, &f)?;
                tracing::info!("created the OIDC signing key file {}", path.display());
                f
            }
        };
        let keys = load_keys(path, &file)?;
        Ok(KeyRing {
            path: path.to_path_buf(),
            loaded: std::sync::Mutex::new((stamp(path), std::sync::Arc::new(keys))),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The keys as the file has them now. A file that changed and no longer loads is
    /// reported, and the keys loaded before stay in use (tokens keep working).
    pub fn keys(&self) -> std::sync::Arc<Vec<SigningKey>> {
        let mut loaded = self.loaded.lock().unwrap_or_else(|p| p.into_inner());
        let now = stamp(&self.path);
        if now.is_some() && now != loaded.0 {
            match read(&self.path).and_then(|f| match f {
                Some(f) => load_keys(&self.path, &f),
                None => Err(CoordError::NotFound(format!(
                    "{}: the OIDC key file is gone",
                    self.path.display()
                ))),
            }) {
                Ok(keys) => {
                    tracing::info!("reloaded the OIDC keys from {}", self.path.display());
                    *loaded = (now, std::sync::Arc::new(keys));
                }
                Err(e) => {
                    tracing::error!("{e}; signing with the keys loaded before");
                    loaded.0 = now;
                }
            }
        }
        loaded.1.clone()
    }

    /// The keys a verifier may meet: the current one and those retired less than `keep_secs`
    /// ago (a token's lifetime plus leeway), so tokens signed just before a rotation still
    /// verify.
    pub fn published(&self, keep_secs: i64) -> Vec<serde_json::Value> {
        let now = now_secs();
        self.keys()
            .iter()
            .filter(|k| k.retired.is_none_or(|r| now - r < keep_secs))
            .map(SigningKey::jwk)
            .collect()
    }

    /// Sign `claims` with the current key.
    pub fn sign(&self, claims: &serde_json::Value) -> Result<String> {
        let keys = self.keys();
        let key = keys
            .iter()
            .rev()
            .find(|k| k.retired.is_none())
            .ok_or_else(|| CoordError::Invalid("no current OIDC key".into()))?;
        key.sign(claims)
    }
}

/// `bosun coordinator oidc rotate`: a new signing key; the old current key is marked retired
/// now (it stays published for a token lifetime), keys retired more than
/// [`FORGET_AFTER_SECS`] ago are dropped. Returns the new key's id.
pub fn rotate(path: &Path) -> Result<String> {
    let now = now_secs();
    let mut file = read(path)?.unwrap_or_default();
    for k in &mut file.keys {
        k.retired.get_or_insert(now);
    }
    file.keys
        .retain(|k| k.retired.is_none_or(|r| now - r < FORGET_AFTER_SECS));
    let key = new_key(now)?;
    let kid = key.kid.clone();
    file.keys.push(key);
    write(path, &file)?;
    Ok(kid)
}

/// The ids of the keys in the file with their state, for `oidc keys`.
pub fn list(path: &Path) -> Result<Vec<(String, i64, Option<i64>)>> {
    Ok(read(path)?
        .unwrap_or_default()
        .keys
        .into_iter()
        .map(|k| (k.kid, k.created, k.retired))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_rotation_keeps_the_old_key_published_and_signs_with_the_new() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("k");
        let ring = KeyRing::open_or_create(&path).expect("ring");
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let first = ring.published(3600);
        assert_eq!(first.len(), 1);
        let old_kid = first[0]["kid"].as_str().expect("kid").to_owned();
        let new_kid = rotate(&path).expect("rotate");
        assert_ne!(old_kid, new_kid);
        // The running ring sees the new file.
        let kids: Vec<String> = ring
            .published(3600)
            .iter()
            .map(|k| k["kid"].as_str().unwrap_or_default().to_owned())
            .collect();
        assert_eq!(kids, vec![old_kid.clone(), new_kid.clone()]);
        let token = ring.sign(&serde_json::json!({"a": 1})).expect("sign");
        let header = token.split('.').next().expect("header");
        let header: serde_json::Value = serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(header)
                .expect("b64"),
        )
        .expect("json");
        assert_eq!(header["kid"], new_kid.as_str());
        assert_eq!(header["alg"], "ES256");
        // Once the keep period is over, only the current key is published.
        assert_eq!(ring.published(0).len(), 1);
    }

    #[test]
    fn a_key_file_others_can_read_is_refused_and_a_broken_one_keeps_the_old_keys() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("k");
        let ring = KeyRing::open_or_create(&path).expect("ring");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let e = KeyRing::open_or_create(&path).expect_err("loose");
        assert!(e.to_string().contains("chmod 600"), "{e}");
        // The running ring keeps signing with what it had.
        assert!(ring.sign(&serde_json::json!({})).is_ok());
        std::fs::write(&path, "{not json").expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        assert_eq!(ring.published(3600).len(), 1);
        let e = KeyRing::open_or_create(&path).expect_err("broken");
        assert!(e.to_string().contains("not an OIDC key file"), "{e}");
    }

    #[test]
    fn the_key_id_is_the_rfc_7638_thumbprint() {
        // RFC 7638 has no EC example; RFC 8037's style: recompute from the JWK members.
        let dir = tempfile::tempdir().expect("tempdir");
        let ring = KeyRing::open_or_create(&dir.path().join("k")).expect("ring");
        let jwk = &ring.published(1)[0];
        let canonical = format!(
            r#"{{"crv":"P-256","kty":"EC","x":"{}","y":"{}"}}"#,
            jwk["x"].as_str().expect("x"),
            jwk["y"].as_str().expect("y")
        );
        use sha2::{Digest, Sha256};
        assert_eq!(
            jwk["kid"].as_str().expect("kid"),
            b64url(&Sha256::digest(canonical.as_bytes()))
        );
        assert_eq!(
            default_path(Path::new("/var/lib/bosun-coordinator")),
            PathBuf::from("/var/lib/bosun-coordinator.oidc-keys")
        );
    }
}

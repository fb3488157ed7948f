//! `X-Hub-Signature: sha256=<hex HMAC-SHA256(secret, raw body)>`, checked in constant time.

use hmac::{Hmac, Mac};
use sha2::Sha256;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error(
        "the delivery is not signed (no X-Hub-Signature): give the webhook the project's secret"
    )]
    Missing,
    #[error("X-Hub-Signature is not `sha256=<hex>`")]
    Malformed,
    #[error("X-Hub-Signature does not match the body and the project's secret")]
    Mismatch,
}

/// Check `header` against `body` signed with `secret`.
pub fn verify(secret: &[u8], body: &[u8], header: Option<&str>) -> Result<(), SignatureError> {
    let header = header.ok_or(SignatureError::Missing)?;
    let hex = header
        .trim()
        .strip_prefix("sha256=")
        .ok_or(SignatureError::Malformed)?;
    let given = decode_hex(hex).ok_or(SignatureError::Malformed)?;
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).map_err(|_| SignatureError::Mismatch)?;
    mac.update(body);
    // `verify_slice` compares in constant time.
    mac.verify_slice(&given)
        .map_err(|_| SignatureError::Mismatch)
}

/// The header value for `body` signed with `secret` (tests, benches, and documentation).
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(body);
    let out = mac.finalize().into_bytes();
    format!(
        "sha256={}",
        out.iter().map(|b| format!("{b:02x}")).collect::<String>()
    )
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if s.len() != 64 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signed_bodies_verify_and_anything_else_does_not() {
        let h = sign(b"s3cret", b"{}");
        assert_eq!(verify(b"s3cret", b"{}", Some(&h)), Ok(()));
        assert_eq!(
            verify(b"other", b"{}", Some(&h)),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify(b"s3cret", b"{ }", Some(&h)),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(verify(b"s3cret", b"{}", None), Err(SignatureError::Missing));
        let sha1 = "sha1=0123456789abcdef0123456789abcdef01234567";
        assert_eq!(
            verify(b"s3cret", b"{}", Some(sha1)),
            Err(SignatureError::Malformed)
        );
        assert_eq!(
            verify(b"s3cret", b"{}", Some("sha256=zz")),
            Err(SignatureError::Malformed)
        );
    }
}

//! Standard Webhooks signatures (<https://www.standardwebhooks.com>): `webhook-signature` is
//! `v1,` + base64 HMAC-SHA256 over `{webhook-id}.{webhook-timestamp}.{body}`, keyed with the secret's
//! bytes (`whsec_` + base64). Signing is the reference `standardwebhooks` crate's; [`verify`] adds what a
//! receiver needs beyond it: several secrets (rotation) and an explicit clock.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use http::HeaderMap;
use standardwebhooks::Webhook;

/// How far a signed timestamp may be from the receiver's clock.
pub const TOLERANCE_SECS: i64 = 5 * 60;

const PREFIX: &str = "whsec_";

/// The active signing secrets: one, or two during a rotation (every delivery then carries a signature
/// by each, so receivers holding either verify it).
pub struct Secrets {
    keys: Vec<Webhook>,
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Secrets({} keys)", self.keys.len())
    }
}

/// A secret that is not `whsec_` + base64 (the prefix is optional).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    #[error("no webhook secret given")]
    Empty,
    #[error("webhook secret #{0} is not base64 (whsec_ followed by base64)")]
    NotBase64(usize),
    #[error("webhook secret #{0} is shorter than 16 bytes")]
    TooShort(usize),
}

impl Secrets {
    /// Parses whitespace-separated secrets, each `whsec_` + base64 (or the base64 alone, as Secrets
    /// Manager generates it): `"whsec_new whsec_old"` during a rotation.
    pub fn parse(raw: &str) -> Result<Self, SecretError> {
        let keys = raw
            .split_whitespace()
            .enumerate()
            .map(|(i, s)| {
                let bytes = STANDARD
                    .decode(s.strip_prefix(PREFIX).unwrap_or(s))
                    .map_err(|_| SecretError::NotBase64(i + 1))?;
                if bytes.len() < 16 {
                    return Err(SecretError::TooShort(i + 1));
                }
                Ok(Webhook::from_bytes(bytes).expect("from_bytes never fails"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if keys.is_empty() {
            return Err(SecretError::Empty);
        }
        Ok(Self { keys })
    }

    /// A fresh random secret in its shareable form (`whsec_` + base64 of 32 bytes).
    pub fn generate() -> String {
        format!("{PREFIX}{}", STANDARD.encode(rand::random::<[u8; 32]>()))
    }

    /// The `webhook-signature` header value: one `v1,…` per active secret, space-separated.
    pub fn sign(&self, id: &str, timestamp: i64, body: &str) -> String {
        self.keys
            .iter()
            .map(|k| {
                k.sign(id, timestamp, body.as_bytes())
                    .expect("a str body is always valid UTF-8")
            })
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// Why a delivery was not accepted by [`verify`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("missing or unreadable header {0}")]
    Header(&'static str),
    #[error("webhook-timestamp is not a number")]
    Timestamp,
    #[error("webhook-timestamp is more than 5 minutes from now")]
    OutsideTolerance,
    #[error("no signature matches")]
    Signature,
}

/// Checks a delivery as a receiver: the headers' `webhook-id` / `webhook-timestamp` /
/// `webhook-signature`, the raw `body` as received, the receiver's `secrets` (any may match: rotation)
/// and its clock `now` (unix seconds). Signatures are compared in constant time.
pub fn verify(
    headers: &HeaderMap,
    body: &[u8],
    secrets: &Secrets,
    now: i64,
) -> Result<(), VerifyError> {
    let header = |name: &'static str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .ok_or(VerifyError::Header(name))
    };
    let id = header("webhook-id")?;
    let timestamp: i64 = header("webhook-timestamp")?
        .trim()
        .parse()
        .map_err(|_| VerifyError::Timestamp)?;
    let signatures = header("webhook-signature")?;
    if (now - timestamp).abs() > TOLERANCE_SECS {
        return Err(VerifyError::OutsideTolerance);
    }
    let body = std::str::from_utf8(body).map_err(|_| VerifyError::Signature)?;
    let expected: Vec<String> = secrets
        .sign(id, timestamp, body)
        .split(' ')
        .map(str::to_owned)
        .collect();
    let matched = signatures
        .split(' ')
        .filter(|s| s.starts_with("v1,"))
        .any(|given| expected.iter().any(|e| constant_time_eq(e, given)));
    if matched {
        Ok(())
    } else {
        Err(VerifyError::Signature)
    }
}

fn constant_time_eq(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    // The Standard Webhooks specification's published test vector (also in the reference libraries'
    // test suites).
    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const TS: i64 = 1614265330;
    const BODY: &str = r#"{"test": 2432232314}"#;
    const SIGNATURE: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    fn headers(id: &str, ts: i64, sig: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("webhook-id", id.parse().unwrap());
        h.insert("webhook-timestamp", ts.to_string().parse().unwrap());
        h.insert("webhook-signature", sig.parse().unwrap());
        h
    }

    #[test]
    fn signs_the_published_test_vector() {
        let secrets = Secrets::parse(SECRET).unwrap();
        assert_eq!(secrets.sign(ID, TS, BODY), SIGNATURE);
        assert_eq!(
            verify(&headers(ID, TS, SIGNATURE), BODY.as_bytes(), &secrets, TS),
            Ok(())
        );
    }

    #[test]
    fn during_a_rotation_both_secrets_sign_and_either_verifies() {
        let new = Secrets::generate();
        let both = Secrets::parse(&format!("{new} {SECRET}")).unwrap();
        let header = both.sign(ID, TS, BODY);
        let parts: Vec<&str> = header.split(' ').collect();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[1], SIGNATURE);
        for one in [new.as_str(), SECRET] {
            let receiver = Secrets::parse(one).unwrap();
            assert_eq!(
                verify(&headers(ID, TS, &header), BODY.as_bytes(), &receiver, TS),
                Ok(())
            );
        }
    }

    #[test]
    fn tampering_a_stale_timestamp_or_another_secret_is_refused() {
        let secrets = Secrets::parse(SECRET).unwrap();
        let h = headers(ID, TS, SIGNATURE);
        assert_eq!(
            verify(&h, br#"{"test": 2432232315}"#, &secrets, TS),
            Err(VerifyError::Signature)
        );
        assert_eq!(
            verify(
                &headers("msg_other", TS, SIGNATURE),
                BODY.as_bytes(),
                &secrets,
                TS
            ),
            Err(VerifyError::Signature)
        );
        assert_eq!(
            verify(&h, BODY.as_bytes(), &secrets, TS + TOLERANCE_SECS + 1),
            Err(VerifyError::OutsideTolerance)
        );
        assert_eq!(
            verify(&h, BODY.as_bytes(), &secrets, TS - TOLERANCE_SECS - 1),
            Err(VerifyError::OutsideTolerance)
        );
        let other = Secrets::parse(&Secrets::generate()).unwrap();
        assert_eq!(
            verify(&h, BODY.as_bytes(), &other, TS),
            Err(VerifyError::Signature)
        );
        assert_eq!(
            verify(&HeaderMap::new(), BODY.as_bytes(), &secrets, TS),
            Err(VerifyError::Header("webhook-id"))
        );
    }

    #[test]
    fn secrets_must_be_base64_and_long_enough() {
        assert_eq!(Secrets::parse("  ").unwrap_err(), SecretError::Empty);
        assert_eq!(
            Secrets::parse("whsec_not*base64").unwrap_err(),
            SecretError::NotBase64(1)
        );
        assert_eq!(
            Secrets::parse(&format!("{SECRET} whsec_AAAA")).unwrap_err(),
            SecretError::TooShort(2)
        );
        // Secrets Manager's generated form: 32 alphanumerics, no prefix.
        assert!(Secrets::parse("Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXy4z").is_ok());
    }
}

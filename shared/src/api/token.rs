//! Signed, expiring tokens: the one signer behind every URL that carries its own authority
//! (`events_url`, a waitpoint's `complete_url`). A token says "the stack's signing secret vouched for
//! these fields until this time", and nothing else: `<expires>.<tag>`, the tag an HMAC-SHA256 over the
//! token's [`Purpose`], its fields and the expiry (unix seconds). The fields are not in the token; a
//! caller either knows them from the request (the job id in a stream's path) or carries them beside the
//! token (a `complete_url` names its job and waitpoint: see [`crate::api::WaitpointLink`]).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// What a token is for. Part of what is signed, so a token of one purpose is never valid for another
/// (nor are the page cursors signed with the same secret, which have their own prefix).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// A job's event stream: fields (job id, owner).
    Events,
    /// Completing one waitpoint: fields (job id, waitpoint name).
    Waitpoint,
}

impl Purpose {
    fn as_str(self) -> &'static str {
        match self {
            Self::Events => "events",
            Self::Waitpoint => "waitpoint",
        }
    }
}

/// Signs and checks tokens with the stack's signing secret.
#[derive(Clone)]
pub struct TokenKey(Vec<u8>);

impl std::fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenKey(..)")
    }
}

impl TokenKey {
    pub fn new(secret: &[u8]) -> Self {
        Self(secret.to_vec())
    }

    /// The purpose, then each field with its length before it, then the expiry: no two field lists
    /// sign the same bytes, whatever a field holds (a waitpoint's name is the handler's choice).
    fn mac(&self, purpose: Purpose, fields: &[&str], expires: i64) -> Hmac<Sha256> {
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&self.0)
            .expect("HMAC takes a key of any length");
        mac.update(purpose.as_str().as_bytes());
        for field in fields {
            mac.update(&(field.len() as u64).to_be_bytes());
            mac.update(field.as_bytes());
        }
        mac.update(&expires.to_be_bytes());
        mac
    }

    /// A token for `fields`, valid until `expires` (unix seconds): `<expires>.<tag>`, of URL-safe
    /// characters only.
    pub fn sign(&self, purpose: Purpose, fields: &[&str], expires: i64) -> String {
        let tag = self.mac(purpose, fields, expires).finalize().into_bytes();
        format!("{expires}.{}", URL_SAFE_NO_PAD.encode(tag))
    }

    /// Whether `token` is this key's, for `purpose` and `fields`, unexpired at `now` (unix seconds).
    /// The tag is compared in constant time.
    pub fn verify(&self, purpose: Purpose, token: &str, fields: &[&str], now: i64) -> bool {
        let Some((expires, tag)) = token.split_once('.') else {
            return false;
        };
        let (Ok(expires), Ok(tag)) = (expires.parse::<i64>(), URL_SAFE_NO_PAD.decode(tag)) else {
            return false;
        };
        expires >= now
            && self
                .mac(purpose, fields, expires)
                .verify_slice(&tag)
                .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const JOB: &str = "01JF0000000000000000000000";

    #[test]
    fn a_token_holds_for_its_fields_and_purpose_until_it_expires() {
        let key = TokenKey::new(b"secret");
        let t = key.sign(Purpose::Events, &[JOB, "ann"], 1_000);
        assert!(key.verify(Purpose::Events, &t, &[JOB, "ann"], 999));
        assert!(key.verify(Purpose::Events, &t, &[JOB, "ann"], 1_000));
        assert!(
            !key.verify(Purpose::Events, &t, &[JOB, "ann"], 1_001),
            "expired"
        );
        assert!(
            !key.verify(Purpose::Events, &t, &[JOB, "bob"], 999),
            "other fields"
        );
        assert!(
            !key.verify(Purpose::Waitpoint, &t, &[JOB, "ann"], 999),
            "another purpose"
        );
        assert!(
            !TokenKey::new(b"other").verify(Purpose::Events, &t, &[JOB, "ann"], 999),
            "forged"
        );
        let (exp, tag) = t.split_once('.').unwrap();
        let extended = format!("{}.{tag}", exp.parse::<i64>().unwrap() + 60);
        assert!(
            !key.verify(Purpose::Events, &extended, &[JOB, "ann"], 999),
            "extended"
        );
        for bad in ["", "1000", "x.y", "1000.!!!"] {
            assert!(
                !key.verify(Purpose::Events, bad, &[JOB, "ann"], 0),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn fields_cannot_be_shifted_into_one_another() {
        let key = TokenKey::new(b"secret");
        let t = key.sign(Purpose::Waitpoint, &[JOB, "a\0b"], 1_000);
        assert!(!key.verify(Purpose::Waitpoint, &t, &[JOB, "a", "b"], 0));
        assert!(!key.verify(Purpose::Waitpoint, &t, &[&format!("{JOB}\0a"), "b"], 0));
        assert!(key.verify(Purpose::Waitpoint, &t, &[JOB, "a\0b"], 0));
    }
}

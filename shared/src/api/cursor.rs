//! Page cursors: opaque, tamper-evident, and bound to the query that produced them.
//!
//! A cursor names the last job of a page (its submit time and id). It carries an HMAC-SHA256 tag over
//! that position, the caller and the query's filter, keyed with the stack's signing secret: a cursor the
//! API never issued, one edited by hand, or one from another filter (or another user) is a `400`, never a
//! page of something else.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use super::ApiError;
use crate::job::{JobId, Millis};

/// Bytes of the tag kept in a cursor: 128 bits, far beyond guessing.
const TAG_BYTES: usize = 16;

/// The key cursors are signed with: the stack's signing secret (see [`crate::config`]).
#[derive(Clone)]
pub struct CursorKey(Vec<u8>);

impl std::fmt::Debug for CursorKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CursorKey(..)")
    }
}

impl PartialEq for CursorKey {
    fn eq(&self, other: &Self) -> bool {
        self.0 == other.0
    }
}

impl CursorKey {
    pub fn new(secret: &[u8]) -> Self {
        Self(secret.to_vec())
    }

    fn tag(&self, position: &str, binding: &[&str]) -> Hmac<Sha256> {
        let mut mac =
            <Hmac<Sha256> as KeyInit>::new_from_slice(&self.0).expect("HMAC takes any key");
        mac.update(b"jobkit-cursor-v1\0");
        for part in binding {
            mac.update(part.as_bytes());
            mac.update(b"\0");
        }
        mac.update(position.as_bytes());
        mac
    }

    /// The cursor for the page after (`submitted_at`, `id`), for the query named by `binding`.
    pub fn encode(&self, submitted_at: Millis, id: &JobId, binding: &[&str]) -> String {
        self.encode_text(&format!("{submitted_at}.{id}"), binding)
    }

    /// The position a cursor names, if this key issued it for this query.
    pub fn decode(&self, cursor: &str, binding: &[&str]) -> Result<(Millis, JobId), ApiError> {
        let position = self.decode_text(cursor, binding)?;
        let (t, id) = position.split_once('.').ok_or(ApiError::InvalidCursor)?;
        let t = t.parse().map_err(|_| ApiError::InvalidCursor)?;
        let id = JobId::parse(id).map_err(|_| ApiError::InvalidCursor)?;
        Ok((t, id))
    }

    /// The cursor for a position of any listing, written as text (a job's steps: see
    /// [`crate::steps::StepPosition`]), for the query named by `binding`.
    pub fn encode_text(&self, position: &str, binding: &[&str]) -> String {
        let tag = self.tag(position, binding).finalize().into_bytes();
        let mut raw = position.as_bytes().to_vec();
        raw.extend_from_slice(&tag[..TAG_BYTES]);
        URL_SAFE_NO_PAD.encode(raw)
    }

    /// The position text [`Self::encode_text`] put in a cursor, if this key issued it for this query.
    pub fn decode_text(&self, cursor: &str, binding: &[&str]) -> Result<String, ApiError> {
        let raw = URL_SAFE_NO_PAD
            .decode(cursor)
            .map_err(|_| ApiError::InvalidCursor)?;
        let split = raw
            .len()
            .checked_sub(TAG_BYTES)
            .ok_or(ApiError::InvalidCursor)?;
        let (position, tag) = raw.split_at(split);
        let position = std::str::from_utf8(position).map_err(|_| ApiError::InvalidCursor)?;
        // Constant-time comparison of the tag.
        self.tag(position, binding)
            .verify_truncated_left(tag)
            .map_err(|_| ApiError::InvalidCursor)?;
        Ok(position.to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_only_for_the_query_and_key_that_made_them() {
        let key = CursorKey::new(b"stack secret");
        let id = JobId::generate(1_700_000_000_000);
        let c = key.encode(1_700_000_000_000, &id, &["alice", "running"]);
        assert_eq!(
            key.decode(&c, &["alice", "running"]).unwrap(),
            (1_700_000_000_000, id.clone())
        );
        for (cursor, binding, what) in [
            (c.as_str(), ["alice", "completed"], "another filter"),
            (c.as_str(), ["bob", "running"], "another user"),
        ] {
            assert!(
                matches!(key.decode(cursor, &binding), Err(ApiError::InvalidCursor)),
                "{what}"
            );
        }
        let other_key = CursorKey::new(b"another stack");
        assert!(other_key.decode(&c, &["alice", "running"]).is_err());
    }

    #[test]
    fn forged_and_garbage_cursors_are_rejected() {
        let key = CursorKey::new(b"k");
        let forged = URL_SAFE_NO_PAD.encode("9999999999999.ZZZZZZZZZZZZZZZZZZZZZZZZZZ");
        let mut tampered = URL_SAFE_NO_PAD
            .decode(key.encode(5, &JobId::generate(5), &["u", ""]))
            .unwrap();
        tampered[0] ^= 1;
        let tampered = URL_SAFE_NO_PAD.encode(tampered);
        for bad in [
            "",
            "!!",
            "bm90LWEtY3Vyc29y",
            forged.as_str(),
            tampered.as_str(),
        ] {
            assert!(
                matches!(key.decode(bad, &["u", ""]), Err(ApiError::InvalidCursor)),
                "{bad}"
            );
        }
    }
}

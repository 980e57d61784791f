//! Server nonces (RFC 9449 §8, §9) without shared state.
//!
//! A nonce is 29 bytes, base64url-encoded without padding (39 characters):
//!
//! | bytes | field |
//! |---|---|
//! | 1 | version, `2` |
//! | 4 | key id: `HMAC-SHA256(secret, "dpop-nonce-kid")[..4]` |
//! | 8 | step: the issue time divided by the step width, big-endian |
//! | 16 | tag: `HMAC-SHA256(secret, "dpop-nonce-v2" \|\| version \|\| kid \|\| step)[..16]` |
//!
//! Every instance holding the same secret issues the same nonce within a step and
//! accepts the others' nonces, so a fleet needs no shared store. The step gives the
//! nonce's issue time, which can serve as the proof's freshness source (§11.1) for
//! clients whose clocks cannot be trusted. Nonces are unpredictable to anyone without the
//! secret (§8) and the tag is compared in constant time.
//!
//! The key id lets operators rotate the secret: the new secret issues, the previous one
//! still verifies until its nonces age out. The id is derived from the secret, never
//! assigned, so it names that secret for its whole life: an instance that has moved a
//! secret from current to previous still finds the nonces that instances not yet
//! rotated issue with it. Four bytes make two secrets sharing an id a one-in-four-billion
//! accident, which [`StatelessNonces::with_previous`] refuses anyway. An unknown version
//! (including the 26-byte version 1, which numbered keys by position) is refused, and the
//! client gets a current nonce with the refusal.

use core::fmt;
use std::sync::Arc;

use aws_lc_rs::hmac;
use subtle::ConstantTimeEq;

use crate::b64;
use crate::error::{Error, NonceError};
use crate::time::UnixTime;

const VERSION: u8 = 2;
const KID_LEN: usize = 4;
const STEP_LEN: usize = 8;
const TAG_LEN: usize = 16;
/// version (1) + kid (4) + step (8) + tag (16).
const RAW_LEN: usize = 1 + KID_LEN + STEP_LEN + TAG_LEN;
/// The HMAC input a secret's key id is derived from.
const KID_LABEL: &[u8] = b"dpop-nonce-kid";
/// The first HMAC input of every tag, so that tags are usable as nothing else.
const TAG_LABEL: &[u8] = b"dpop-nonce-v2";
/// Shortest secret accepted: 256 bits.
pub const MIN_SECRET_LEN: usize = 32;

/// What a nonce check learned about a valid nonce.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct NonceStatus {
    /// When the nonce was issued, if the scheme knows (the freshness source of §11.1).
    pub issued_at: Option<UnixTime>,
    /// Until when the nonce is accepted, if the scheme knows.
    pub expires_at: Option<UnixTime>,
    /// The client should be given a newer nonce (send `DPoP-Nonce` on the response).
    pub renew: bool,
}

impl NonceStatus {
    /// A status for custom validators.
    #[must_use]
    pub const fn new(
        issued_at: Option<UnixTime>,
        expires_at: Option<UnixTime>,
        renew: bool,
    ) -> Self {
        Self {
            issued_at,
            expires_at,
            renew,
        }
    }
}

/// A server nonce scheme. The verifier calls [`NonceValidator::validate`] with the
/// proof's `nonce` claim (or `None`); adapters call [`NonceValidator::issue`] to fill
/// the `DPoP-Nonce` header.
pub trait NonceValidator: Send + Sync {
    /// Checks the proof's nonce. A missing nonce must be refused with
    /// [`NonceError::Required`] (no downgrade, §11.3).
    ///
    /// # Errors
    /// [`NonceError`] when the nonce is missing, stale or not ours.
    fn validate(&self, nonce: Option<&str>, now: UnixTime) -> Result<NonceStatus, NonceError>;

    /// A nonce to hand to the client now.
    ///
    /// # Errors
    /// When no nonce can be produced (a server-side fault).
    fn issue(&self, now: UnixTime) -> Result<String, Error>;
}

impl<T: NonceValidator + ?Sized> NonceValidator for Arc<T> {
    fn validate(&self, nonce: Option<&str>, now: UnixTime) -> Result<NonceStatus, NonceError> {
        (**self).validate(nonce, now)
    }
    fn issue(&self, now: UnixTime) -> Result<String, Error> {
        (**self).issue(now)
    }
}

/// One nonce secret and its key id. The secret is held only inside the HMAC key (which
/// the crypto library keeps and wipes); `Debug` shows the key id alone.
pub struct NonceSecret {
    kid: [u8; KID_LEN],
    key: hmac::Key,
}

impl fmt::Debug for NonceSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NonceSecret")
            .field("kid", &format_args!("{:08x}", self.kid()))
            .finish_non_exhaustive()
    }
}

impl NonceSecret {
    /// A secret of at least [`MIN_SECRET_LEN`] bytes. Its key id is derived from it (see
    /// the module docs), so every holder of the secret computes the same id, and the id
    /// does not change when the secret moves from current to previous.
    ///
    /// # Errors
    /// [`Error::ApiMisuse`] when the secret is too short.
    pub fn new(secret: &[u8]) -> Result<Self, Error> {
        if secret.len() < MIN_SECRET_LEN {
            return Err(Error::ApiMisuse("nonce secrets must be at least 32 bytes"));
        }
        let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
        let mut kid = [0u8; KID_LEN];
        let derived = hmac::sign(&key, KID_LABEL);
        let derived = derived
            .as_ref()
            .get(..KID_LEN)
            .ok_or(Error::Unreachable("HMAC-SHA256 is shorter than a key id"))?;
        kid.copy_from_slice(derived);
        Ok(Self { kid, key })
    }

    /// The key id: the first four bytes of `HMAC-SHA256(secret, "dpop-nonce-kid")`,
    /// big-endian. Safe to log: like every nonce's tag, it is a MAC under the secret and
    /// gives nothing away about it.
    #[must_use]
    pub fn kid(&self) -> u32 {
        u32::from_be_bytes(self.kid)
    }

    fn tag(&self, step: u64) -> hmac::Tag {
        let mut ctx = hmac::Context::with_key(&self.key);
        ctx.update(TAG_LABEL);
        ctx.update(&[VERSION]);
        ctx.update(&self.kid);
        ctx.update(&step.to_be_bytes());
        ctx.sign()
    }
}

/// Stateless HMAC nonces over time steps (see the module docs).
#[derive(Debug)]
pub struct StatelessNonces {
    current: NonceSecret,
    previous: Option<NonceSecret>,
    step_secs: u64,
    max_age_secs: u64,
}

impl StatelessNonces {
    /// Nonces from `current`, with 60 s steps accepted for 180 s.
    #[must_use]
    pub fn new(current: NonceSecret) -> Self {
        Self {
            current,
            previous: None,
            step_secs: 60,
            max_age_secs: 180,
        }
    }

    /// Also accept nonces made with `previous` (secret rotation).
    ///
    /// # Errors
    /// [`Error::ApiMisuse`] when both secrets have the same key id: almost surely the
    /// same secret given twice; otherwise one of the two must be replaced.
    pub fn with_previous(mut self, previous: NonceSecret) -> Result<Self, Error> {
        if previous.kid == self.current.kid {
            return Err(Error::ApiMisuse(
                "the current and previous nonce secrets have the same key id (the same secret twice?)",
            ));
        }
        self.previous = Some(previous);
        Ok(self)
    }

    /// Sets the step width and the oldest accepted age, in seconds. A new nonce is
    /// offered once per step; a nonce is refused as stale once older than `max_age`.
    ///
    /// # Errors
    /// [`Error::ApiMisuse`] when `step` is 0 or `max_age` is shorter than `step`.
    pub fn with_timing(mut self, step_secs: u64, max_age_secs: u64) -> Result<Self, Error> {
        if step_secs == 0 || max_age_secs < step_secs {
            return Err(Error::ApiMisuse(
                "nonce step must be > 0 and max age at least one step",
            ));
        }
        self.step_secs = step_secs;
        self.max_age_secs = max_age_secs;
        Ok(self)
    }

    /// The oldest accepted age of a nonce, in seconds.
    #[must_use]
    pub fn max_age_secs(&self) -> u64 {
        self.max_age_secs
    }

    fn encode(&self, step: u64) -> String {
        let tag = self.current.tag(step);
        let mut raw = [0u8; RAW_LEN];
        let (version, rest) = raw.split_at_mut(1);
        version.copy_from_slice(&[VERSION]);
        let (kid, rest) = rest.split_at_mut(KID_LEN);
        kid.copy_from_slice(&self.current.kid);
        let (step_bytes, tag_bytes) = rest.split_at_mut(STEP_LEN);
        step_bytes.copy_from_slice(&step.to_be_bytes());
        if let Some(t) = tag.as_ref().get(..TAG_LEN) {
            tag_bytes.copy_from_slice(t);
        }
        b64::encode(&raw)
    }
}

impl NonceValidator for StatelessNonces {
    fn validate(&self, nonce: Option<&str>, now: UnixTime) -> Result<NonceStatus, NonceError> {
        let nonce = nonce.ok_or(NonceError::Required)?;
        let mut raw = [0u8; RAW_LEN];
        if nonce.len() != (RAW_LEN * 4).div_ceil(3)
            || b64::decode_exact(nonce.as_bytes(), &mut raw).is_none()
        {
            return Err(NonceError::Invalid("not a nonce of this server's format"));
        }
        let (version, rest) = raw.split_at(1);
        let (kid, rest) = rest.split_at(KID_LEN);
        let (step_bytes, tag) = rest.split_at(STEP_LEN);
        if version != [VERSION] {
            return Err(NonceError::Invalid("unknown nonce version"));
        }
        let secret = if kid == self.current.kid {
            &self.current
        } else {
            self.previous
                .as_ref()
                .filter(|p| p.kid == kid)
                .ok_or(NonceError::Invalid("unknown key id"))?
        };
        let step = u64::from_be_bytes(
            <[u8; STEP_LEN]>::try_from(step_bytes).map_err(|_| NonceError::Invalid("format"))?,
        );
        let expected = secret.tag(step);
        let expected = expected
            .as_ref()
            .get(..TAG_LEN)
            .ok_or(NonceError::Invalid("format"))?;
        if !bool::from(expected.ct_eq(tag)) {
            return Err(NonceError::Invalid("bad MAC"));
        }
        let issued = UnixTime::from_secs(step.saturating_mul(self.step_secs));
        let current_step = now.as_secs() / self.step_secs;
        // One step of lead tolerates instances whose clocks differ slightly.
        if step > current_step.saturating_add(1) {
            return Err(NonceError::Invalid("issued in the future"));
        }
        if now.as_secs().saturating_sub(issued.as_secs()) > self.max_age_secs {
            return Err(NonceError::Stale {
                issued,
                now,
                max_age: self.max_age_secs,
            });
        }
        Ok(NonceStatus {
            issued_at: Some(issued),
            expires_at: Some(UnixTime::from_secs(
                issued.as_secs().saturating_add(self.max_age_secs),
            )),
            renew: step < current_step || kid != self.current.kid,
        })
    }

    fn issue(&self, now: UnixTime) -> Result<String, Error> {
        Ok(self.encode(now.as_secs() / self.step_secs))
    }
}

/// Accepts exactly one nonce value: for servers that keep their own nonce state (and
/// for `dpop inspect --nonce`). Comparison is constant-time.
#[derive(Clone, Debug)]
pub struct ExpectedNonce(String);

impl ExpectedNonce {
    /// Expects `nonce`, which must satisfy RFC 9449 §8.1 `1*NQCHAR`.
    ///
    /// # Errors
    /// [`Error::ApiMisuse`] for an empty or ill-formed nonce.
    pub fn new(nonce: &str) -> Result<Self, Error> {
        if !crate::syntax::is_nonce(nonce.as_bytes()) {
            return Err(Error::ApiMisuse("a nonce must be 1*NQCHAR (RFC 9449 §8.1)"));
        }
        Ok(Self(nonce.to_owned()))
    }
}

impl NonceValidator for ExpectedNonce {
    fn validate(&self, nonce: Option<&str>, _now: UnixTime) -> Result<NonceStatus, NonceError> {
        let nonce = nonce.ok_or(NonceError::Required)?;
        if bool::from(nonce.as_bytes().ct_eq(self.0.as_bytes())) {
            Ok(NonceStatus::new(None, None, false))
        } else {
            Err(NonceError::Invalid("not the expected nonce"))
        }
    }

    fn issue(&self, _now: UnixTime) -> Result<String, Error> {
        Ok(self.0.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(byte: u8) -> NonceSecret {
        NonceSecret::new(&[byte; 32]).unwrap()
    }

    fn t(s: u64) -> UnixTime {
        UnixTime::from_secs(s)
    }

    #[test]
    fn issue_and_validate() {
        let n = StatelessNonces::new(secret(7));
        let nonce = n.issue(t(1_000_000)).unwrap();
        assert!(
            crate::syntax::is_nonce(nonce.as_bytes()),
            "{nonce} must be 1*NQCHAR"
        );
        assert_eq!(
            nonce,
            n.issue(t(1_000_019)).unwrap(),
            "same step, same nonce"
        );
        let st = n.validate(Some(&nonce), t(1_000_010)).unwrap();
        assert_eq!(
            st.issued_at,
            Some(t(999_960)),
            "issue time is the step start"
        );
        assert!(!st.renew);
        let later = n.validate(Some(&nonce), t(1_000_100)).unwrap();
        assert!(later.renew, "a newer step hands out a new nonce");
    }

    #[test]
    fn instances_sharing_a_secret_accept_each_other() {
        let a = StatelessNonces::new(secret(9));
        let b = StatelessNonces::new(secret(9));
        let nonce = a.issue(t(5_000)).unwrap();
        assert!(b.validate(Some(&nonce), t(5_001)).is_ok());
        // An instance whose clock is a little behind still accepts it.
        assert!(b.validate(Some(&nonce), t(4_990)).is_ok());
    }

    #[test]
    fn rejections() {
        let n = StatelessNonces::new(secret(7));
        assert_eq!(n.validate(None, t(0)), Err(NonceError::Required));
        let nonce = n.issue(t(1_000_000)).unwrap();
        assert!(matches!(
            n.validate(Some(&nonce), t(1_000_300)),
            Err(NonceError::Stale { .. })
        ));
        assert_eq!(
            n.validate(Some(&nonce), t(999_800)),
            Err(NonceError::Invalid("issued in the future"))
        );
        let unknown_kid = StatelessNonces::new(secret(6)).issue(t(1_000_000)).unwrap();
        assert_eq!(
            n.validate(Some(&unknown_kid), t(1_000_000)),
            Err(NonceError::Invalid("unknown key id"))
        );
        // Another secret's nonce relabelled with our key id.
        let mut forged = b64::decode(unknown_kid.as_bytes()).unwrap();
        forged[1..5].copy_from_slice(&secret(7).kid().to_be_bytes());
        assert_eq!(
            n.validate(Some(&b64::encode(&forged)), t(1_000_000)),
            Err(NonceError::Invalid("bad MAC"))
        );
        let mut other_version = b64::decode(nonce.as_bytes()).unwrap();
        other_version[0] = 3;
        assert_eq!(
            n.validate(Some(&b64::encode(&other_version)), t(1_000_000)),
            Err(NonceError::Invalid("unknown nonce version"))
        );
        for junk in [
            "",
            "x",
            "eyJ7S_zG.eyJH0-Z.HX4w-7v",
            &"A".repeat(35),
            &"A".repeat(39),
            &format!("{nonce}A"),
            // The 26-byte layout of version 1, with a one-byte key id.
            "AQEAAAAAAcjR2IXj6oaond8EPD4-mGZxT34",
        ] {
            assert!(
                matches!(
                    n.validate(Some(junk), t(1_000_000)),
                    Err(NonceError::Invalid(_))
                ),
                "{junk}"
            );
        }
        // Flipping any character of a valid nonce invalidates it.
        for i in 0..nonce.len() {
            let mut bytes = nonce.clone().into_bytes();
            bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
            let tampered = String::from_utf8(bytes).unwrap();
            assert!(
                n.validate(Some(&tampered), t(1_000_000)).is_err(),
                "position {i}"
            );
        }
    }

    #[test]
    fn rotation_keeps_previous_nonces_valid() {
        let old = StatelessNonces::new(secret(1));
        let old_nonce = old.issue(t(10_000)).unwrap();
        let rotated = StatelessNonces::new(secret(2))
            .with_previous(secret(1))
            .unwrap();
        let st = rotated.validate(Some(&old_nonce), t(10_010)).unwrap();
        assert!(st.renew, "clients on the old secret get a new nonce");
        let fresh = rotated.issue(t(10_010)).unwrap();
        assert_ne!(fresh, old_nonce);
        assert!(!rotated.validate(Some(&fresh), t(10_010)).unwrap().renew);
        assert_eq!(
            StatelessNonces::new(secret(2))
                .with_previous(secret(2))
                .unwrap_err(),
            Error::ApiMisuse(
                "the current and previous nonce secrets have the same key id (the same secret twice?)"
            )
        );
    }

    /// A rolling rotation across instances: A still on `[S1]`, B on `[S2, S1]`, C done
    /// with `[S2]`. Each accepts the nonces of the instance one step behind it, because
    /// S1 has the same key id as B's previous secret as it had as A's current one.
    #[test]
    fn a_secret_keeps_its_key_id_from_current_to_previous() {
        let a = StatelessNonces::new(secret(1));
        let b = StatelessNonces::new(secret(2))
            .with_previous(secret(1))
            .unwrap();
        let c = StatelessNonces::new(secret(2));
        assert_eq!(secret(1).kid(), secret(1).kid(), "derived, so stable");
        assert_ne!(secret(1).kid(), secret(2).kid());

        let from_a = a.issue(t(20_000)).unwrap();
        let at_b = b.validate(Some(&from_a), t(20_001)).unwrap();
        assert!(at_b.renew, "B moves the client to S2");
        let from_b = b.issue(t(20_001)).unwrap();
        let at_c = c.validate(Some(&from_b), t(20_002)).unwrap();
        assert!(!at_c.renew);
        assert_eq!(
            c.validate(Some(&from_a), t(20_002)),
            Err(NonceError::Invalid("unknown key id")),
            "C retired S1"
        );
        assert_eq!(
            a.validate(Some(&from_b), t(20_002)),
            Err(NonceError::Invalid("unknown key id"))
        );
    }

    #[test]
    fn format_is_version_2_with_a_four_byte_key_id() {
        let s = secret(4);
        let nonce = StatelessNonces::new(secret(4)).issue(t(120)).unwrap();
        assert_eq!(nonce.len(), 39);
        let raw = b64::decode(nonce.as_bytes()).unwrap();
        assert_eq!(raw.len(), RAW_LEN);
        assert_eq!(raw[0], 2, "version");
        assert_eq!(raw[1..5], s.kid().to_be_bytes(), "key id");
        assert_eq!(raw[5..13], 2u64.to_be_bytes(), "step 120 / 60");
        let expected_kid = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, &[4; 32]), KID_LABEL);
        assert_eq!(s.kid().to_be_bytes(), expected_kid.as_ref()[..4]);
        // Pinned: a changed derivation would split a fleet running two releases.
        assert_eq!(s.kid(), 0x5598_b79a);
        assert_eq!(nonce, "AlWYt5oAAAAAAAAAAvVrQifLMVgm10PoVYX0q1I");
    }

    #[test]
    fn configuration_is_checked() {
        assert!(NonceSecret::new(&[0; 31]).is_err());
        assert!(StatelessNonces::new(secret(1)).with_timing(0, 10).is_err());
        assert!(StatelessNonces::new(secret(1)).with_timing(30, 10).is_err());
        let dbg = format!("{:?}", secret(0xAB));
        let kid = format!("kid: {:08x}", secret(0xAB).kid());
        assert!(
            dbg.contains(&kid) && !dbg.to_lowercase().contains("ab, "),
            "{dbg}"
        );
    }

    #[test]
    fn expected_nonce() {
        let e = ExpectedNonce::new("eyJ7S_zG.eyJH0-Z.HX4w-7v").unwrap();
        assert!(e.validate(Some("eyJ7S_zG.eyJH0-Z.HX4w-7v"), t(0)).is_ok());
        assert_eq!(
            e.validate(Some("other"), t(0)),
            Err(NonceError::Invalid("not the expected nonce"))
        );
        assert_eq!(e.validate(None, t(0)), Err(NonceError::Required));
        assert!(ExpectedNonce::new("has space").is_err());
        assert!(ExpectedNonce::new("").is_err());
    }
}

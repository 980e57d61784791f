//! Server nonces (RFC 9449 §8, §9) without shared state.
//!
//! A nonce is `base64url(version || kid || step || HMAC-SHA256(secret, ...)[..16])`,
//! where `step` counts fixed-width time steps. Every instance holding the same secret
//! issues the same nonce within a step and accepts the others' nonces, so a fleet needs
//! no shared store. The step gives the nonce's issue time, which can serve as the proof's
//! freshness source (§11.1) for clients whose clocks cannot be trusted. Nonces are
//! unpredictable to anyone without the secret (§8) and the MAC is compared in constant
//! time. A key id lets operators rotate the secret: the new secret issues, the previous
//! one still verifies until its nonces age out.

use core::fmt;
use std::sync::Arc;

use aws_lc_rs::hmac;
use subtle::ConstantTimeEq;

use crate::b64;
use crate::error::{Error, NonceError};
use crate::time::UnixTime;

const VERSION: u8 = 1;
const TAG_LEN: usize = 16;
/// version (1) + kid (1) + step (8) + tag (16).
const RAW_LEN: usize = 2 + 8 + TAG_LEN;
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
    kid: u8,
    key: hmac::Key,
}

impl fmt::Debug for NonceSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NonceSecret")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl NonceSecret {
    /// A secret of at least [`MIN_SECRET_LEN`] bytes with key id `kid`.
    ///
    /// # Errors
    /// [`Error::ApiMisuse`] when the secret is too short.
    pub fn new(kid: u8, secret: &[u8]) -> Result<Self, Error> {
        if secret.len() < MIN_SECRET_LEN {
            return Err(Error::ApiMisuse("nonce secrets must be at least 32 bytes"));
        }
        Ok(Self {
            kid,
            key: hmac::Key::new(hmac::HMAC_SHA256, secret),
        })
    }

    /// The key id.
    #[must_use]
    pub fn kid(&self) -> u8 {
        self.kid
    }

    fn tag(&self, step: u64) -> hmac::Tag {
        let mut ctx = hmac::Context::with_key(&self.key);
        // Domain separation: these MACs must not be reusable as anything else.
        ctx.update(b"dpop-nonce-v1");
        ctx.update(&[VERSION, self.kid]);
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
    /// [`Error::ApiMisuse`] when both secrets have the same key id.
    pub fn with_previous(mut self, previous: NonceSecret) -> Result<Self, Error> {
        if previous.kid == self.current.kid {
            return Err(Error::ApiMisuse(
                "the previous nonce secret needs a different key id",
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

    fn encode(&self, step: u64) -> String {
        let tag = self.current.tag(step);
        let mut raw = [0u8; RAW_LEN];
        let (head, rest) = raw.split_at_mut(2);
        head.copy_from_slice(&[VERSION, self.current.kid]);
        let (step_bytes, tag_bytes) = rest.split_at_mut(8);
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
        let (head, rest) = raw.split_at(2);
        let (step_bytes, tag) = rest.split_at(8);
        let [version, kid] =
            <[u8; 2]>::try_from(head).map_err(|_| NonceError::Invalid("format"))?;
        if version != VERSION {
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
            <[u8; 8]>::try_from(step_bytes).map_err(|_| NonceError::Invalid("format"))?,
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

    fn secret(kid: u8, byte: u8) -> NonceSecret {
        NonceSecret::new(kid, &[byte; 32]).unwrap()
    }

    fn t(s: u64) -> UnixTime {
        UnixTime::from_secs(s)
    }

    #[test]
    fn issue_and_validate() {
        let n = StatelessNonces::new(secret(1, 7));
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
        let a = StatelessNonces::new(secret(1, 9));
        let b = StatelessNonces::new(secret(1, 9));
        let nonce = a.issue(t(5_000)).unwrap();
        assert!(b.validate(Some(&nonce), t(5_001)).is_ok());
        // An instance whose clock is a little behind still accepts it.
        assert!(b.validate(Some(&nonce), t(4_990)).is_ok());
    }

    #[test]
    fn rejections() {
        let n = StatelessNonces::new(secret(1, 7));
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
        let other = StatelessNonces::new(secret(1, 8))
            .issue(t(1_000_000))
            .unwrap();
        assert_eq!(
            n.validate(Some(&other), t(1_000_000)),
            Err(NonceError::Invalid("bad MAC"))
        );
        let unknown_kid = StatelessNonces::new(secret(2, 7))
            .issue(t(1_000_000))
            .unwrap();
        assert_eq!(
            n.validate(Some(&unknown_kid), t(1_000_000)),
            Err(NonceError::Invalid("unknown key id"))
        );
        for junk in [
            "",
            "x",
            "eyJ7S_zG.eyJH0-Z.HX4w-7v",
            &"A".repeat(35),
            &format!("{nonce}A"),
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
        let old = StatelessNonces::new(secret(1, 1));
        let old_nonce = old.issue(t(10_000)).unwrap();
        let rotated = StatelessNonces::new(secret(2, 2))
            .with_previous(secret(1, 1))
            .unwrap();
        let st = rotated.validate(Some(&old_nonce), t(10_010)).unwrap();
        assert!(st.renew, "clients on the old secret get a new nonce");
        let fresh = rotated.issue(t(10_010)).unwrap();
        assert_ne!(fresh, old_nonce);
        assert!(!rotated.validate(Some(&fresh), t(10_010)).unwrap().renew);
        assert!(
            StatelessNonces::new(secret(2, 2))
                .with_previous(secret(2, 3))
                .is_err()
        );
    }

    #[test]
    fn configuration_is_checked() {
        assert!(NonceSecret::new(1, &[0; 31]).is_err());
        assert!(
            StatelessNonces::new(secret(1, 1))
                .with_timing(0, 10)
                .is_err()
        );
        assert!(
            StatelessNonces::new(secret(1, 1))
                .with_timing(30, 10)
                .is_err()
        );
        let dbg = format!("{:?}", secret(3, 0xAB));
        assert!(
            dbg.contains("kid: 3") && !dbg.to_lowercase().contains("ab, "),
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

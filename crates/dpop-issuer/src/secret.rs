//! Client secrets: stored only as Argon2id hashes (PHC strings), checked in constant time.
//!
//! Argon2 is deliberately slow (tens of milliseconds), which would cap a busy client's
//! token rate. After a secret has verified once, a keyed hash of it (HMAC-SHA256 under a
//! key that exists only in this process's memory) is remembered per client, so later
//! requests with the same secret cost one HMAC and a constant-time compare. A wrong
//! secret always pays for the full Argon2 check.
//!
//! A secret presented for a client id that does not exist, or for a client that has no
//! secret, is checked against a stand-in hash made at start with the parameters of the
//! configured hashes, so it costs what a wrong secret costs: the response time does not
//! tell which client ids exist. That holds for hashes that share one parameter set (as
//! `dpop issuer hash-secret` makes them). When the configured hashes use several, the
//! stand-in takes the most expensive, so no client is slower to refuse than an unknown
//! id; clients whose hashes are cheaper are faster to refuse, and so can be told apart:
//! the issuer names them in a warning at start, to be hashed again.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Argon2, Params, Version};
use aws_lc_rs::hmac;
use aws_lc_rs::rand::SystemRandom;
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::environment::Environment;
use crate::random::random_bytes;

/// A random 128-bit salt.
fn new_salt() -> Result<SaltString, String> {
    SaltString::encode_b64(&random_bytes::<16>()?).map_err(|e| e.to_string())
}

/// Longest secret accepted, so a client cannot make the server hash megabytes.
pub const MAX_SECRET_BYTES: usize = 512;

/// A client's secret, as a verified Argon2 PHC hash string.
#[derive(Clone)]
pub struct ClientSecret {
    phc: Arc<str>,
}

impl fmt::Debug for ClientSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClientSecret(<hash>)")
    }
}

impl ClientSecret {
    /// From a configuration value: an Argon2 PHC hash (`$argon2id$…`), or `env:VAR`, whose
    /// value is such a hash or the secret itself (hashed here, at load, and then dropped).
    ///
    /// # Errors
    /// A message saying what is wrong with the value (never the value itself).
    pub fn from_config(value: &str, env: &dyn Environment) -> Result<Self, String> {
        if let Some(var) = value.strip_prefix("env:") {
            let v = Zeroizing::new(
                env.var(var)
                    .ok_or_else(|| format!("secret: environment variable {var} is not set"))?,
            );
            if v.starts_with("$argon2") {
                return Self::from_hash(&v);
            }
            if v.len() < 16 {
                return Err(format!(
                    "secret: the secret in {var} is shorter than 16 characters; use a long random value"
                ));
            }
            return Ok(Self {
                phc: hash_secret(&v)?.into(),
            });
        }
        if value.starts_with("$argon2") {
            return Self::from_hash(value);
        }
        Err(
            "secret must be an Argon2 hash (make one with `dpop issuer hash-secret`) or env:VAR; \
             plaintext secrets are not accepted in the file"
                .to_owned(),
        )
    }

    fn from_hash(phc: &str) -> Result<Self, String> {
        let parsed =
            PasswordHash::new(phc).map_err(|e| format!("secret: not a valid PHC hash: {e}"))?;
        if !parsed.algorithm.as_str().starts_with("argon2") {
            return Err("secret: only Argon2 hashes are accepted".to_owned());
        }
        // `$argon2id$garbage` parses (as a salt without a hash) but verifies nothing.
        if parsed.salt.is_none() || parsed.hash.is_none() {
            return Err("secret: the Argon2 hash has no salt or no hash value".to_owned());
        }
        Ok(Self { phc: phc.into() })
    }

    /// A hash of a random secret nobody knows, with the most expensive Argon2 variant,
    /// version and parameters among `configured` (the defaults of [`hash_secret`] when
    /// there are none), so that checking a secret against it costs at least what
    /// checking one against any configured hash costs.
    ///
    /// # Errors
    /// When the system has no randomness or a parameter set is unusable.
    pub fn stand_in<'a>(
        configured: impl IntoIterator<Item = &'a ClientSecret>,
    ) -> Result<Self, String> {
        // The cost of Argon2 grows with memory times passes; among equals, the first
        // configured.
        let mut costliest: Option<(argon2::Algorithm, Version, Params)> = None;
        for secret in configured {
            let Some(cost) = secret.parameters() else {
                continue;
            };
            if costliest
                .as_ref()
                .is_none_or(|c| work(&cost.2) > work(&c.2))
            {
                costliest = Some(cost);
            }
        }
        let (algorithm, version, params) = costliest.unwrap_or_else(|| {
            (
                argon2::Algorithm::default(),
                Version::default(),
                Params::default(),
            )
        });
        let unknown = Zeroizing::new(random_bytes::<32>()?);
        let salt = new_salt()?;
        let phc = Argon2::new(algorithm, version, params)
            .hash_password(unknown.as_slice(), &salt)
            .map_err(|e| format!("cannot make the stand-in hash: {e}"))?
            .to_string();
        Ok(Self { phc: phc.into() })
    }

    /// Whether this hash was made with the Argon2 variant, version and parameters of
    /// `other` (so checking a secret against either costs the same).
    #[must_use]
    pub fn same_parameters(&self, other: &ClientSecret) -> bool {
        self.parameters()
            .is_some_and(|mine| other.parameters().is_some_and(|theirs| mine == theirs))
    }

    /// The Argon2 variant, version and parameters of the hash.
    fn parameters(&self) -> Option<(argon2::Algorithm, Version, Params)> {
        PasswordHash::new(&self.phc).ok().and_then(|h| cost_of(&h))
    }

    /// The parameters, as the PHC string spells them (`m=…,t=…,p=…`), for messages.
    #[must_use]
    pub fn parameters_text(&self) -> String {
        self.parameters()
            .map(|(algorithm, version, p)| {
                format!(
                    "{algorithm} v={} m={},t={},p={}",
                    u32::from(version),
                    p.m_cost(),
                    p.t_cost(),
                    p.p_cost()
                )
            })
            .unwrap_or_default()
    }

    /// Checks `presented` against the hash (slow, constant-time inside Argon2).
    #[must_use]
    pub fn verify_slow(&self, presented: &str) -> bool {
        if presented.len() > MAX_SECRET_BYTES {
            return false;
        }
        PasswordHash::new(&self.phc).is_ok_and(|h| {
            Argon2::default()
                .verify_password(presented.as_bytes(), &h)
                .is_ok()
        })
    }
}

/// The Argon2 variant, version and parameters of a PHC hash.
fn cost_of(hash: &PasswordHash<'_>) -> Option<(argon2::Algorithm, Version, Params)> {
    let algorithm = argon2::Algorithm::try_from(hash.algorithm).ok()?;
    let version = hash
        .version
        .map_or(Ok(Version::default()), Version::try_from)
        .ok()?;
    let params = Params::try_from(hash).ok()?;
    Some((algorithm, version, params))
}

/// The work one Argon2 check does with `params`: memory (KiB) times passes.
fn work(params: &Params) -> u64 {
    u64::from(params.m_cost()).saturating_mul(u64::from(params.t_cost()))
}

/// Hashes a secret with Argon2id and a random salt, as a PHC string.
///
/// # Errors
/// When the secret is too long or the system has no randomness.
pub fn hash_secret(secret: &str) -> Result<String, String> {
    if secret.len() > MAX_SECRET_BYTES {
        return Err(format!(
            "the secret is longer than {MAX_SECRET_BYTES} bytes"
        ));
    }
    let salt = new_salt()?;
    Argon2::default()
        .hash_password(secret.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| format!("cannot hash the secret: {e}"))
}

/// Remembers which secrets verified, keyed by client (see the module docs).
pub(crate) struct SecretCache {
    key: hmac::Key,
    /// Checked in place of a hash the presented client does not have.
    stand_in: ClientSecret,
    verified: Mutex<HashMap<String, hmac::Tag>>,
    /// Argon2 runs at most this many at once: each takes 19 MiB and a core for tens of
    /// milliseconds, so a flood of wrong secrets must queue, not exhaust memory.
    hashing: tokio::sync::Semaphore,
}

impl fmt::Debug for SecretCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretCache")
    }
}

impl SecretCache {
    /// A cache whose stand-in hash has the parameters of `stand_in` (see
    /// [`ClientSecret::stand_in`]).
    pub(crate) fn new(stand_in: ClientSecret) -> Result<Self, String> {
        let key = hmac::Key::generate(hmac::HMAC_SHA256, &SystemRandom::new())
            .map_err(|_| "no system randomness".to_owned())?;
        let cores = std::thread::available_parallelism().map_or(2, usize::from);
        Ok(Self {
            key,
            stand_in,
            verified: Mutex::new(HashMap::new()),
            hashing: tokio::sync::Semaphore::new(cores * 2),
        })
    }

    /// Checks the secret presented for `client_id`, whose hash is `secret` (`None`: no
    /// such client, or a client without a secret): the cached keyed hash when it
    /// matches, else Argon2 on a blocking thread, against the stand-in hash when there
    /// is no real one (never true then).
    pub(crate) async fn verify(
        &self,
        client_id: &str,
        secret: Option<&ClientSecret>,
        presented: &str,
    ) -> bool {
        if presented.is_empty() || presented.len() > MAX_SECRET_BYTES {
            return false;
        }
        let tag = hmac::sign(&self.key, presented.as_bytes());
        let cached = self.verified.lock().ok().and_then(|m| {
            m.get(client_id)
                .map(|t| bool::from(t.as_ref().ct_eq(tag.as_ref())))
        });
        if cached == Some(true) && secret.is_some() {
            return true;
        }
        let Ok(_permit) = self.hashing.acquire().await else {
            return false;
        };
        let hash = secret.unwrap_or(&self.stand_in).clone();
        let presented = Zeroizing::new(presented.to_owned());
        let matched = tokio::task::spawn_blocking(move || hash.verify_slow(&presented))
            .await
            .unwrap_or(false);
        // The stand-in's secret is 32 random bytes nobody has; refuse even so.
        let ok = matched && secret.is_some();
        if ok && let Ok(mut m) = self.verified.lock() {
            m.insert(client_id.to_owned(), tag);
        }
        ok
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    #[test]
    fn hash_and_verify() {
        let h = hash_secret("correct horse battery staple").unwrap();
        assert!(h.starts_with("$argon2id$"));
        let s = ClientSecret::from_config(&h, &BTreeMap::new()).unwrap();
        assert!(s.verify_slow("correct horse battery staple"));
        assert!(!s.verify_slow("correct horse battery stapl"));
        assert!(!s.verify_slow(""));
        assert_eq!(format!("{s:?}"), "ClientSecret(<hash>)");
    }

    #[test]
    fn config_values() {
        let env: BTreeMap<String, String> = [
            ("PLAIN".to_owned(), "a-long-random-secret-value".to_owned()),
            ("SHORT".to_owned(), "short".to_owned()),
        ]
        .into();
        let s = ClientSecret::from_config("env:PLAIN", &env).unwrap();
        assert!(s.verify_slow("a-long-random-secret-value"));
        assert!(
            ClientSecret::from_config("env:SHORT", &env)
                .unwrap_err()
                .contains("16")
        );
        assert!(
            ClientSecret::from_config("env:MISSING", &env)
                .unwrap_err()
                .contains("not set")
        );
        assert!(
            ClientSecret::from_config("hunter2", &env)
                .unwrap_err()
                .contains("plaintext")
        );
        assert!(ClientSecret::from_config("$argon2id$garbage", &env).is_err());
    }

    #[tokio::test]
    async fn cache_only_remembers_verified_secrets() {
        let s = ClientSecret::from_config(
            &hash_secret("the-right-secret-123").unwrap(),
            &BTreeMap::new(),
        )
        .unwrap();
        let cache = SecretCache::new(ClientSecret::stand_in([&s]).unwrap()).unwrap();
        assert!(!cache.verify("c", Some(&s), "wrong-secret-value").await);
        assert!(cache.verify("c", Some(&s), "the-right-secret-123").await);
        assert!(cache.verify("c", Some(&s), "the-right-secret-123").await);
        assert!(!cache.verify("c", Some(&s), "wrong-secret-value").await);
        // The cached tag is per client.
        assert!(!cache.verify("other", Some(&s), "wrong-secret-value").await);
        // A client that no longer has a secret (or never had one) is refused, even with
        // the secret that once verified under its id.
        assert!(!cache.verify("c", None, "the-right-secret-123").await);
    }

    #[test]
    fn the_stand_in_has_the_costliest_configured_parameters() {
        let env = BTreeMap::new();
        let with = |params: Params| {
            let argon = Argon2::new(argon2::Algorithm::Argon2id, Version::V0x13, params);
            let salt = SaltString::encode_b64(&[7_u8; 16]).unwrap();
            move |secret: &str| {
                argon
                    .hash_password(secret.as_bytes(), &salt)
                    .unwrap()
                    .to_string()
            }
        };
        let light = with(Params::new(8 * 1024, 3, 1, None).unwrap());
        let heavy = with(Params::new(4 * 19 * 1024, 2, 1, None).unwrap());
        let a = ClientSecret::from_config(&light("first-secret-value"), &env).unwrap();
        let b = ClientSecret::from_config(&light("second-secret-value"), &env).unwrap();
        let c =
            ClientSecret::from_config(&hash_secret("third-secret-value").unwrap(), &env).unwrap();
        let d = ClientSecret::from_config(&heavy("fourth-secret-value"), &env).unwrap();
        // The most common set is the light one; the stand-in takes the heaviest.
        let stand_in = ClientSecret::stand_in([&c, &a, &b, &d]).unwrap();
        assert!(stand_in.same_parameters(&d));
        assert!(!stand_in.same_parameters(&a));
        assert!(!stand_in.same_parameters(&c));
        assert_eq!(stand_in.parameters_text(), "argon2id v=19 m=77824,t=2,p=1");
        assert_ne!(
            PasswordHash::new(&stand_in.phc).unwrap().salt,
            PasswordHash::new(&d.phc).unwrap().salt
        );
        assert!(!stand_in.verify_slow("fourth-secret-value"));
        // One set for all: that one.
        let stand_in = ClientSecret::stand_in([&a, &b]).unwrap();
        assert!(stand_in.same_parameters(&a) && stand_in.same_parameters(&b));
        // Without configured secrets: the parameters `hash_secret` uses.
        let default = ClientSecret::stand_in([]).unwrap();
        assert!(default.same_parameters(&c));
    }
}

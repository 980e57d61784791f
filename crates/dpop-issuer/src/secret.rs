//! Client secrets: stored only as Argon2id hashes (PHC strings), checked in constant time.
//!
//! Argon2 is deliberately slow (tens of milliseconds), which would cap a busy client's
//! token rate. After a secret has verified once, a keyed hash of it (HMAC-SHA256 under a
//! key that exists only in this process's memory) is remembered per client, so later
//! requests with the same secret cost one HMAC and a constant-time compare. A wrong
//! secret always pays for the full Argon2 check.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use aws_lc_rs::hmac;
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::config::Environment;

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
    let mut salt = [0_u8; 16];
    SystemRandom::new()
        .fill(&mut salt)
        .map_err(|_| "no system randomness".to_owned())?;
    let salt = SaltString::encode_b64(&salt).map_err(|e| e.to_string())?;
    Argon2::default()
        .hash_password(secret.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| format!("cannot hash the secret: {e}"))
}

/// Remembers which secrets verified, keyed by client (see the module docs).
pub(crate) struct SecretCache {
    key: hmac::Key,
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
    pub(crate) fn new() -> Result<Self, String> {
        let key = hmac::Key::generate(hmac::HMAC_SHA256, &SystemRandom::new())
            .map_err(|_| "no system randomness".to_owned())?;
        let cores = std::thread::available_parallelism().map_or(2, usize::from);
        Ok(Self {
            key,
            verified: Mutex::new(HashMap::new()),
            hashing: tokio::sync::Semaphore::new(cores * 2),
        })
    }

    /// Checks a client's presented secret: the cached keyed hash when it matches, else
    /// Argon2 on a blocking thread.
    pub(crate) async fn verify(
        &self,
        client_id: &str,
        secret: &ClientSecret,
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
        if cached == Some(true) {
            return true;
        }
        let Ok(_permit) = self.hashing.acquire().await else {
            return false;
        };
        let secret = secret.clone();
        let presented = Zeroizing::new(presented.to_owned());
        let ok = tokio::task::spawn_blocking(move || secret.verify_slow(&presented))
            .await
            .unwrap_or(false);
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
        let cache = SecretCache::new().unwrap();
        assert!(!cache.verify("c", &s, "wrong-secret-value").await);
        assert!(cache.verify("c", &s, "the-right-secret-123").await);
        assert!(cache.verify("c", &s, "the-right-secret-123").await);
        assert!(!cache.verify("c", &s, "wrong-secret-value").await);
        // The cached tag is per client.
        assert!(!cache.verify("other", &s, "wrong-secret-value").await);
    }
}

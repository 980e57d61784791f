//! Settings of a [`RedisReplayStore`](crate::RedisReplayStore), their validation, and how a
//! Redis URL is shown without its password.

use core::fmt;
use core::time::Duration;

use crate::error::RedisStoreError;

/// Settings of a [`RedisReplayStore`](crate::RedisReplayStore).
///
/// Start from [`RedisStoreConfig::new`] and change the public fields;
/// [`RedisReplayStore::connect`](crate::RedisReplayStore::connect) validates them. `Debug`
/// shows the URL with its password replaced by `***`.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RedisStoreConfig {
    /// The server, as `redis://[[user]:password@]host[:port][/db]`, or `rediss://` for TLS
    /// (certificates checked against the system's trusted roots).
    ///
    /// Nothing else is accepted: no other scheme (`unix://`, `valkey://`, ...) and no URL
    /// fragment, so `#insecure`, which would turn certificate checks off, cannot be slipped
    /// in. No default: [`Default`] leaves it empty, which `connect` refuses.
    pub url: String,
    /// Put before the 64 hexadecimal digits of each replay key to make the Redis key, so that
    /// replay entries are recognisable and cannot collide with other data in the same
    /// database. Every instance that must see the others' proofs needs the same prefix.
    /// Defaults to `"dpop:jti:"`.
    pub key_prefix: String,
    /// The longest wait for one command's reply, after which the command fails with
    /// [`ReplayStoreError::Timeout`](dpop_core::ReplayStoreError::Timeout) and the proof is
    /// refused. It is on every request's path, so keep it short. Defaults to 250 ms.
    pub command_timeout: Duration,
    /// The longest wait for [`connect`](crate::RedisReplayStore::connect) (and for each
    /// attempt when the store reconnects later). Defaults to 2 s.
    ///
    /// On Linux it is also the socket's `TCP_USER_TIMEOUT` (at least 1 s): a connection whose
    /// data has gone unacknowledged that long is dropped and replaced, so a server that
    /// vanished without closing the connection does not leave every command timing out.
    pub connect_timeout: Duration,
}

impl RedisStoreConfig {
    /// The default settings with this server URL.
    #[must_use]
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            ..Self::default()
        }
    }

    /// Checks the settings; answers whether the URL asks for TLS.
    pub(crate) fn validate(&self) -> Result<bool, RedisStoreError> {
        let invalid = |reason: &str| Err(RedisStoreError::InvalidConfig(reason.to_owned()));
        if self.url.is_empty() {
            return invalid("the URL is empty");
        }
        let scheme = self
            .url
            .split_once("://")
            .map(|(s, _)| s.to_ascii_lowercase());
        let tls = match scheme.as_deref() {
            Some("redis") => false,
            Some("rediss") => true,
            _ => return invalid("the URL must start with redis:// or rediss://"),
        };
        if self.url.contains('#') {
            return invalid(
                "the URL must not have a fragment (#insecure would turn off TLS certificate checks)",
            );
        }
        if self.command_timeout.is_zero() {
            return invalid("command_timeout must be more than zero");
        }
        if self.connect_timeout.is_zero() {
            return invalid("connect_timeout must be more than zero");
        }
        Ok(tls)
    }
}

impl Default for RedisStoreConfig {
    fn default() -> Self {
        Self {
            url: String::new(),
            key_prefix: "dpop:jti:".to_owned(),
            command_timeout: Duration::from_millis(250),
            connect_timeout: Duration::from_secs(2),
        }
    }
}

impl fmt::Debug for RedisStoreConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStoreConfig")
            .field("url", &redact_url(&self.url))
            .field("key_prefix", &self.key_prefix)
            .field("command_timeout", &self.command_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .finish()
    }
}

/// The URL with any password replaced by `***`: `redis://user:secret@host` becomes
/// `redis://user:***@host`.
///
/// Errs on the side of hiding too much: the user information ends at the *last* `@`, as URL
/// parsers read it, so a password holding unescaped `/`, `?`, `#` or `@` is still hidden
/// whole (along with whatever else came before that `@`).
pub(crate) fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        // Not a URL `connect` would accept; show none of it, in case it holds a secret.
        return if url.is_empty() {
            String::new()
        } else {
            "<not a URL>".to_owned()
        };
    };
    match rest.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _password)) => format!("{scheme}://{user}:***@{host}"),
            // A user name alone, as Redis ACL users without a password have.
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_passwords() {
        for (url, shown) in [
            ("redis://:secret@host", "redis://:***@host"),
            ("redis://:secret@host:6380/2", "redis://:***@host:6380/2"),
            ("rediss://alice:secret@host", "rediss://alice:***@host"),
            ("redis://:se/cr?et#x@host", "redis://:***@host"),
            ("redis://:p@ss:w@rd@host", "redis://:***@host"),
            ("redis://alice@host", "redis://alice@host"),
            ("redis://127.0.0.1:6379", "redis://127.0.0.1:6379"),
            ("redis:secret@host", "<not a URL>"),
            ("", ""),
        ] {
            assert_eq!(redact_url(url), shown, "{url}");
        }
    }

    #[test]
    fn defaults() {
        let c = RedisStoreConfig::new("redis://127.0.0.1");
        assert_eq!(c.url, "redis://127.0.0.1");
        assert_eq!(c.key_prefix, "dpop:jti:");
        assert_eq!(c.command_timeout, Duration::from_millis(250));
        assert_eq!(c.connect_timeout, Duration::from_secs(2));
        assert_eq!(RedisStoreConfig::default().url, "");
    }

    #[test]
    fn validation() {
        let ok = |url: &str| RedisStoreConfig::new(url).validate();
        assert_eq!(ok("redis://127.0.0.1:6379"), Ok(false));
        assert_eq!(ok("REDIS://127.0.0.1:6379"), Ok(false));
        assert_eq!(ok("rediss://:pw@redis.example:6380/1"), Ok(true));
        for bad in [
            "",
            "127.0.0.1:6379",
            "http://127.0.0.1",
            "unix:///tmp/redis.sock",
            "valkey://127.0.0.1",
            "rediss://127.0.0.1/#insecure",
        ] {
            assert!(
                matches!(ok(bad), Err(RedisStoreError::InvalidConfig(_))),
                "{bad}"
            );
        }
        let mut c = RedisStoreConfig::new("redis://127.0.0.1");
        c.command_timeout = Duration::ZERO;
        assert!(c.validate().is_err());
        let mut c = RedisStoreConfig::new("redis://127.0.0.1");
        c.connect_timeout = Duration::ZERO;
        assert!(c.validate().is_err());
    }

    #[test]
    fn debug_hides_the_password() {
        let c = RedisStoreConfig::new("redis://:hunter2@127.0.0.1:6379");
        let text = format!("{c:?}");
        assert!(!text.contains("hunter2"), "{text}");
        assert!(text.contains("redis://:***@127.0.0.1:6379"), "{text}");
    }
}

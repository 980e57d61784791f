//! Settings of a [`RedisReplayStore`](crate::RedisReplayStore), their validation, and how a
//! Redis URL is shown without its password.

use core::fmt;
use core::time::Duration;

use redis::{ConnectionAddr, ConnectionInfo, IntoConnectionInfo, RedisConnectionInfo};

use crate::error::{RedisStoreError, describe};

/// Settings of a [`RedisReplayStore`](crate::RedisReplayStore).
///
/// Start from [`RedisStoreConfig::new`] and change the public fields;
/// [`RedisReplayStore::connect`](crate::RedisReplayStore::connect) validates them. `Debug`
/// shows the URL with its password replaced by `***`.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RedisStoreConfig {
    /// Where Redis is, in one of three forms (with `rediss` instead of `redis` for TLS,
    /// certificates checked against the system's trusted roots):
    ///
    /// - one server: `redis://[[user]:password@]host[:port][/db]`;
    /// - a Redis Cluster: `redis+cluster://[[user]:password@]host1[:port1],host2[:port2],.../`,
    ///   any nodes of the cluster (the others are found from them; port 6379 by default);
    /// - a primary found through Sentinel:
    ///   `redis+sentinel://[[user]:password@]sentinel1[:port1],.../service[/db]`, the
    ///   sentinels (port 26379 by default) and the name they monitor the primary under. The
    ///   user and password are for the primary; the sentinels are asked with
    ///   [`sentinel_username`](Self::sentinel_username) and
    ///   [`sentinel_password`](Self::sentinel_password), without any by default.
    ///
    /// Nothing else is accepted: no other scheme (`unix://`, `valkey://`, ...), no query and
    /// no URL fragment, so `#insecure`, which would turn certificate checks off, cannot be
    /// slipped in. No default: [`Default`] leaves it empty, which `connect` refuses.
    pub url: String,
    /// The ACL user name, instead of one in the URL (giving both is refused). `None` by
    /// default.
    pub username: Option<String>,
    /// The password, instead of one in the URL (giving both is refused), so that it can come
    /// from a file or the environment and the URL can be logged whole. `Debug` shows `***`.
    /// `None` by default.
    pub password: Option<String>,
    /// The ACL user to log in to the sentinels as (a `redis+sentinel://` URL only; the URL's
    /// user is for the primary). `None` by default.
    pub sentinel_username: Option<String>,
    /// The password the sentinels ask for (`requirepass` or an ACL user's password in the
    /// sentinels' configuration), a `redis+sentinel://` URL only. It is never sent to the
    /// primary, nor the primary's password to the sentinels. `Debug` shows `***`. `None` by
    /// default.
    pub sentinel_password: Option<String>,
    /// Put before the 64 hexadecimal digits of each replay key to make the Redis key, so that
    /// replay entries are recognisable and cannot collide with other data in the same
    /// database. Every instance that must see the others' proofs needs the same prefix.
    /// Defaults to `"dpop:jti:"`.
    pub key_prefix: String,
    /// The longest wait for one command's reply, after which the command fails with
    /// [`ReplayStoreError::Timeout`](dpop_core::ReplayStoreError::Timeout) and the proof is
    /// refused. It bounds the whole wait of an insert (the queue and the round trip). It is
    /// on every request's path, so keep it short. Defaults to 250 ms; at most an hour.
    pub command_timeout: Duration,
    /// The longest wait for [`connect`](crate::RedisReplayStore::connect) (and for each
    /// attempt when the store reconnects later). Defaults to 2 s; at most an hour.
    ///
    /// On Linux it is also the socket's `TCP_USER_TIMEOUT` (at least 1 s): a connection whose
    /// data has gone unacknowledged that long is dropped and replaced, so a server that
    /// vanished without closing the connection does not leave every command timing out.
    pub connect_timeout: Duration,
    /// When more than zero, each batch of inserts is followed by `WAIT wait_replicas
    /// wait_timeout`, and a proof counts as recorded only once that many replicas
    /// acknowledged it; otherwise the insert fails (the proof is refused, the key stays on
    /// the primary). This narrows, but does not close, the window in which a failover can
    /// forget a proof (see the [crate documentation](crate#topologies-and-failover)). It
    /// costs the replicas' round trip on every request. On a Redis Cluster the `WAIT` goes
    /// with each `SET`, to the primary of the key's slot, so it counts that primary's
    /// replicas. Defaults to 0 (off).
    pub wait_replicas: u32,
    /// How long `WAIT` waits for the replicas; at most half of
    /// [`command_timeout`](Self::command_timeout), which also bounds the `SET`s and `WAIT`
    /// together. Defaults to 100 ms.
    pub wait_timeout: Duration,
}

impl RedisStoreConfig {
    /// The longest [`command_timeout`](Self::command_timeout) and
    /// [`connect_timeout`](Self::connect_timeout) (an hour): far above any sensible setting,
    /// and low enough that a deadline computed from either can never overflow.
    pub const MAX_TIMEOUT: Duration = Duration::from_secs(3_600);

    /// The default settings with this server URL.
    #[must_use]
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            ..Self::default()
        }
    }

    /// Checks the settings and reads the URL: which servers, which topology, TLS or not.
    /// The credentials are applied to every connection info returned.
    pub(crate) fn validate(&self) -> Result<Topology, RedisStoreError> {
        if self.url.is_empty() {
            return Err(invalid("the URL is empty"));
        }
        let Some((scheme, rest)) = self.url.split_once("://") else {
            return Err(invalid(SCHEMES));
        };
        let (kind, tls) = match scheme.to_ascii_lowercase().as_str() {
            "redis" => (Kind::Single, false),
            "rediss" => (Kind::Single, true),
            "redis+cluster" => (Kind::Cluster, false),
            "rediss+cluster" => (Kind::Cluster, true),
            "redis+sentinel" => (Kind::Sentinel, false),
            "rediss+sentinel" => (Kind::Sentinel, true),
            _ => return Err(invalid(SCHEMES)),
        };
        if self.url.contains('#') {
            return Err(invalid(
                "the URL must not have a fragment (#insecure would turn off TLS certificate checks)",
            ));
        }
        if self.command_timeout.is_zero() || self.command_timeout > Self::MAX_TIMEOUT {
            return Err(invalid(
                "command_timeout must be more than zero and at most an hour",
            ));
        }
        if self.connect_timeout.is_zero() || self.connect_timeout > Self::MAX_TIMEOUT {
            return Err(invalid(
                "connect_timeout must be more than zero and at most an hour",
            ));
        }
        if kind != Kind::Sentinel
            && (self.sentinel_username.is_some() || self.sentinel_password.is_some())
        {
            return Err(invalid(
                "sentinel_username and sentinel_password are for a redis+sentinel:// URL",
            ));
        }
        if self.wait_replicas > 0
            && (self.wait_timeout.is_zero() || self.wait_timeout > self.command_timeout / 2)
        {
            return Err(invalid(
                "wait_timeout must be more than zero and at most half of command_timeout",
            ));
        }
        let data_scheme = if tls { "rediss" } else { "redis" };
        // The user information ends at the last `@`, as in `redact_url`.
        let (userinfo, hosts_and_path) = match rest.rsplit_once('@') {
            Some((userinfo, after)) => (Some(userinfo), after),
            None => (None, rest),
        };
        let (hosts, path) = match hosts_and_path.split_once('/') {
            Some((hosts, path)) => (hosts, path),
            None => (hosts_and_path, ""),
        };
        if kind != Kind::Single && (hosts_and_path.contains('?') || hosts.is_empty()) {
            return Err(invalid(
                "a cluster or sentinel URL needs host[:port] entries separated by commas, and no query",
            ));
        }
        let info_for = |host: &str| -> Result<ConnectionInfo, RedisStoreError> {
            let url = match userinfo {
                Some(u) => format!("{data_scheme}://{u}@{host}"),
                None => format!("{data_scheme}://{host}"),
            };
            let info = url
                .as_str()
                .into_connection_info()
                .map_err(|err| invalid(&describe(&err)))?;
            self.with_credentials(info)
        };
        match kind {
            Kind::Single => {
                let info = self
                    .url
                    .as_str()
                    .into_connection_info()
                    .map_err(|err| invalid(&describe(&err)))?;
                Ok(Topology::Single {
                    info: self.with_credentials(info)?,
                    tls,
                })
            }
            Kind::Cluster => {
                if !path.is_empty() {
                    return Err(invalid(
                        "a cluster URL has no database or path (a cluster has database 0 only)",
                    ));
                }
                let nodes = split_hosts(hosts, 6379)?
                    .iter()
                    .map(|h| info_for(h))
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(Topology::Cluster { nodes, tls })
            }
            Kind::Sentinel => {
                let (service, db) = match path.split_once('/') {
                    Some((service, db)) => (service, Some(db)),
                    None => (path, None),
                };
                if service.is_empty()
                    || !service
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
                {
                    return Err(invalid(
                        "a sentinel URL ends with /service (the name the sentinels monitor the primary under, letters, digits, - _ .) and optionally /db",
                    ));
                }
                let db = match db {
                    None | Some("") => 0,
                    Some(db) => db.parse::<i64>().ok().filter(|d| *d >= 0).ok_or_else(|| {
                        invalid("the database after the service name must be a number")
                    })?,
                };
                let hosts = split_hosts(hosts, 26379)?;
                let sentinels = hosts
                    .iter()
                    .map(|h| {
                        format!("{data_scheme}://{h}")
                            .as_str()
                            .into_connection_info()
                            .map(|info| info.addr().clone())
                            .map_err(|err| invalid(&describe(&err)))
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                // The credentials and database for the primary, read as in any Redis URL.
                let first = hosts.first().map_or("", String::as_str);
                let primary = info_for(first)?.redis_settings().clone().set_db(db);
                let mut sentinel_login = RedisConnectionInfo::default();
                if let Some(username) = &self.sentinel_username {
                    sentinel_login = sentinel_login.set_username(username);
                }
                if let Some(password) = &self.sentinel_password {
                    sentinel_login = sentinel_login.set_password(password);
                }
                Ok(Topology::Sentinel {
                    sentinels,
                    service: service.to_owned(),
                    primary,
                    sentinel_login,
                    tls,
                })
            }
        }
    }

    /// `info` with [`username`](Self::username) and [`password`](Self::password) applied,
    /// refusing a password or user given both here and in the URL.
    fn with_credentials(&self, info: ConnectionInfo) -> Result<ConnectionInfo, RedisStoreError> {
        let mut redis = info.redis_settings().clone();
        if let Some(username) = &self.username {
            if info.redis_settings().username().is_some() {
                return Err(invalid(
                    "the user name is given twice, in the URL and in the settings",
                ));
            }
            redis = redis.set_username(username);
        }
        if let Some(password) = &self.password {
            if info.redis_settings().password().is_some() {
                return Err(invalid(
                    "the password is given twice, in the URL and in the settings",
                ));
            }
            redis = redis.set_password(password);
        }
        Ok(info.set_redis_settings(redis))
    }
}

const SCHEMES: &str = "the URL must start with redis://, rediss://, redis+cluster://, rediss+cluster://, redis+sentinel:// or rediss+sentinel://";

fn invalid(reason: &str) -> RedisStoreError {
    RedisStoreError::InvalidConfig(reason.to_owned())
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Single,
    Cluster,
    Sentinel,
}

/// What [`RedisStoreConfig::validate`] read from the URL.
pub(crate) enum Topology {
    /// One server (or one endpoint in front of several).
    Single { info: ConnectionInfo, tls: bool },
    /// Any nodes of a Redis Cluster.
    Cluster {
        nodes: Vec<ConnectionInfo>,
        tls: bool,
    },
    /// Sentinels, the service name they know the primary by, how to log in to it and how
    /// to log in to the sentinels.
    Sentinel {
        sentinels: Vec<ConnectionAddr>,
        service: String,
        primary: RedisConnectionInfo,
        sentinel_login: RedisConnectionInfo,
        tls: bool,
    },
}

/// `a:1,b,[::1]:2` → `a:1`, `b:DEFAULT`, `[::1]:2`; refuses empty entries and anything
/// that is not a host and port.
fn split_hosts(hosts: &str, default_port: u16) -> Result<Vec<String>, RedisStoreError> {
    hosts
        .split(',')
        .map(|h| {
            let h = h.trim();
            let bad = h.is_empty()
                || h.bytes()
                    .any(|b| b.is_ascii_whitespace() || b"/?@\\".contains(&b));
            if bad {
                return Err(invalid(
                    "each server in a cluster or sentinel URL must be host[:port]",
                ));
            }
            // `[v6]:port`, `[v6]`, `host:port` or `host`.
            let has_port = if h.starts_with('[') {
                h.contains("]:")
            } else {
                h.contains(':')
            };
            Ok(if has_port {
                h.to_owned()
            } else {
                format!("{h}:{default_port}")
            })
        })
        .collect()
}

impl Default for RedisStoreConfig {
    fn default() -> Self {
        Self {
            url: String::new(),
            username: None,
            password: None,
            sentinel_username: None,
            sentinel_password: None,
            key_prefix: "dpop:jti:".to_owned(),
            command_timeout: Duration::from_millis(250),
            connect_timeout: Duration::from_secs(2),
            wait_replicas: 0,
            wait_timeout: Duration::from_millis(100),
        }
    }
}

impl fmt::Debug for RedisStoreConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStoreConfig")
            .field("url", &redact_url(&self.url))
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("sentinel_username", &self.sentinel_username)
            .field(
                "sentinel_password",
                &self.sentinel_password.as_ref().map(|_| "***"),
            )
            .field("key_prefix", &self.key_prefix)
            .field("command_timeout", &self.command_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("wait_replicas", &self.wait_replicas)
            .field("wait_timeout", &self.wait_timeout)
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

    /// What a URL was read as, in a comparable form (passwords included: tests only).
    fn shape(config: &RedisStoreConfig) -> Result<String, RedisStoreError> {
        let creds = |r: &RedisConnectionInfo| {
            format!(
                "{}:{}/{}",
                r.username().unwrap_or("-"),
                r.password().unwrap_or("-"),
                r.db()
            )
        };
        Ok(match config.validate()? {
            Topology::Single { info, tls } => {
                format!(
                    "single tls={tls} {} {}",
                    info.addr(),
                    creds(info.redis_settings())
                )
            }
            Topology::Cluster { nodes, tls } => {
                let nodes: Vec<String> = nodes
                    .iter()
                    .map(|n| format!("{} {}", n.addr(), creds(n.redis_settings())))
                    .collect();
                format!("cluster tls={tls} {}", nodes.join(", "))
            }
            Topology::Sentinel {
                sentinels,
                service,
                primary,
                sentinel_login,
                tls,
            } => {
                let sentinels: Vec<String> = sentinels.iter().map(ToString::to_string).collect();
                format!(
                    "sentinel tls={tls} {} service={service} {} sentinels {}",
                    sentinels.join(", "),
                    creds(&primary),
                    creds(&sentinel_login)
                )
            }
        })
    }

    #[test]
    fn topologies() {
        let read = |url: &str| shape(&RedisStoreConfig::new(url)).unwrap();
        assert_eq!(
            read("redis+cluster://a:7000,b,[::1]:7002,[::2]/"),
            "cluster tls=false a:7000 -:-/0, b:6379 -:-/0, ::1:7002 -:-/0, ::2:6379 -:-/0"
        );
        assert_eq!(
            read("REDISS+CLUSTER://alice:p%40ss@a:7000,b:7001"),
            "cluster tls=true a:7000 alice:p@ss/0, b:7001 alice:p@ss/0"
        );
        assert_eq!(
            read("redis+sentinel://:pw@s1,s2:26380/mymaster"),
            "sentinel tls=false s1:26379, s2:26380 service=mymaster -:pw/0 sentinels -:-/0"
        );
        assert_eq!(
            read("rediss+sentinel://s1/my-master.1/3"),
            "sentinel tls=true s1:26379 service=my-master.1 -:-/3 sentinels -:-/0"
        );
        // The sentinels' login apart from the primary's.
        let mut c = RedisStoreConfig::new("redis+sentinel://:primary-pw@s1/m/2");
        c.sentinel_username = Some("watcher".to_owned());
        c.sentinel_password = Some("sentinel-pw".to_owned());
        assert_eq!(
            shape(&c).unwrap(),
            "sentinel tls=false s1:26379 service=m -:primary-pw/2 sentinels watcher:sentinel-pw/0"
        );
        let mut c = RedisStoreConfig::new("redis+sentinel://s1/m");
        c.sentinel_password = Some("sentinel-pw".to_owned());
        assert_eq!(
            shape(&c).unwrap(),
            "sentinel tls=false s1:26379 service=m -:-/0 sentinels -:sentinel-pw/0"
        );
        // Only with a sentinel URL.
        for url in ["redis://127.0.0.1", "redis+cluster://a:1/"] {
            let mut c = RedisStoreConfig::new(url);
            c.sentinel_password = Some("sentinel-pw".to_owned());
            assert!(
                matches!(c.validate(), Err(RedisStoreError::InvalidConfig(_))),
                "{url}"
            );
            let mut c = RedisStoreConfig::new(url);
            c.sentinel_username = Some("watcher".to_owned());
            assert!(
                matches!(c.validate(), Err(RedisStoreError::InvalidConfig(_))),
                "{url}"
            );
        }
        // Credentials from the settings instead of the URL.
        let mut c = RedisStoreConfig::new("redis+cluster://a:1,b:2/");
        c.username = Some("dpop".to_owned());
        c.password = Some("from-a-file".to_owned());
        assert_eq!(
            shape(&c).unwrap(),
            "cluster tls=false a:1 dpop:from-a-file/0, b:2 dpop:from-a-file/0"
        );
        let mut c = RedisStoreConfig::new("redis://127.0.0.1/2");
        c.password = Some("pw".to_owned());
        assert_eq!(shape(&c).unwrap(), "single tls=false 127.0.0.1:6379 -:pw/2");
        // Given twice: refused.
        let mut c = RedisStoreConfig::new("redis://:inurl@127.0.0.1");
        c.password = Some("pw".to_owned());
        assert!(matches!(
            c.validate(),
            Err(RedisStoreError::InvalidConfig(_))
        ));
        let mut c = RedisStoreConfig::new("redis+sentinel://bob@s1/m");
        c.username = Some("alice".to_owned());
        assert!(matches!(
            c.validate(),
            Err(RedisStoreError::InvalidConfig(_))
        ));
    }

    #[test]
    fn validation() {
        let ok = |url: &str| shape(&RedisStoreConfig::new(url)).map(|s| s.contains("tls=true"));
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
        for hour in [
            Duration::from_secs(3_600),
            Duration::from_secs(3_601),
            Duration::MAX,
        ] {
            let ok = hour <= Duration::from_secs(3_600);
            let mut c = RedisStoreConfig::new("redis://127.0.0.1");
            c.command_timeout = hour;
            assert_eq!(c.validate().is_ok(), ok, "command_timeout {hour:?}");
            let mut c = RedisStoreConfig::new("redis://127.0.0.1");
            c.connect_timeout = hour;
            assert_eq!(c.validate().is_ok(), ok, "connect_timeout {hour:?}");
        }
        let mut c = RedisStoreConfig::new("redis://127.0.0.1");
        c.wait_replicas = 1;
        assert!(c.validate().is_ok());
        c.wait_timeout = Duration::ZERO;
        assert!(c.validate().is_err());
        c.wait_timeout = c.command_timeout / 2;
        assert!(c.validate().is_ok());
        c.wait_timeout += Duration::from_millis(1);
        assert!(c.validate().is_err());
        let mut c = RedisStoreConfig::new("redis+cluster://a:1/");
        c.wait_replicas = 1;
        assert!(c.validate().is_ok());
        c.wait_timeout = c.command_timeout;
        assert!(c.validate().is_err());
    }

    #[test]
    fn debug_hides_the_password() {
        let c = RedisStoreConfig::new("redis://:hunter2@127.0.0.1:6379");
        let text = format!("{c:?}");
        assert!(!text.contains("hunter2"), "{text}");
        assert!(text.contains("redis://:***@127.0.0.1:6379"), "{text}");
        let mut c = RedisStoreConfig::new("redis+cluster://:hunter2@a:1,b:2/");
        c.password = Some("correct-horse".to_owned());
        c.username = Some("dpop".to_owned());
        let text = format!("{c:?}");
        assert!(
            !text.contains("hunter2") && !text.contains("correct-horse"),
            "{text}"
        );
        assert!(text.contains("redis+cluster://:***@a:1,b:2/"), "{text}");
        assert!(text.contains("password: Some(\"***\")"), "{text}");
        let mut c = RedisStoreConfig::new("redis+sentinel://s1/m");
        c.sentinel_username = Some("watcher".to_owned());
        c.sentinel_password = Some("sentinel-secret".to_owned());
        let text = format!("{c:?}");
        assert!(!text.contains("sentinel-secret"), "{text}");
        assert!(text.contains("sentinel_password: Some(\"***\")"), "{text}");
        assert!(text.contains("watcher"), "{text}");
    }
}

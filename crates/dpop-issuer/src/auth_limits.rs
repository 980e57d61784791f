//! Limits on failed client-secret checks (`[auth_limits]`, [`AuthLimits`]), per client id
//! and per client address, bounded in memory.
//!
//! Known and unknown ids are counted alike, so the limit tells nothing about which
//! exist. Each check is counted as a failure when it starts, under the lock that compares
//! the count with the limit, and given back when the secret turns out right: requests
//! sent all at once, faster than Argon2 checks them, cannot get more checks than the
//! limit.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::{Mutex, MutexGuard, PoisonError};

use axum::http::HeaderMap;

use crate::config::AuthLimits;

tokio::task_local! {
    /// The address of the client a request comes from (see [`with_client_address`]).
    static CLIENT_ADDRESS: Option<IpAddr>;
}

/// Runs `request` knowing the client's address, for the attempt limits. A task-local
/// rather than a parameter, so that every endpoint that authenticates clients is
/// covered without threading the address through each of them.
pub(crate) async fn with_client_address<F: Future>(
    address: Option<IpAddr>,
    request: F,
) -> F::Output {
    CLIENT_ADDRESS.scope(address, request).await
}

/// The address of the client the current request comes from, when known.
pub(crate) fn client_address() -> Option<IpAddr> {
    CLIENT_ADDRESS.try_with(|a| *a).ok().flatten()
}

/// The address to count a request against: the peer, or, when the peer is a trusted
/// proxy, the nearest address in `X-Forwarded-For` that is not one (every field line,
/// right to left: entries further left were written by whoever sent the request and
/// can be anything).
pub(crate) fn client_address_of(limits: &AuthLimits, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
    let mut address = peer.to_canonical();
    if !limits.is_trusted_proxy(address) {
        return address;
    }
    let hops: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .collect();
    for hop in hops.iter().rev() {
        let hop = hop.trim();
        let Some(ip) = hop
            .parse::<IpAddr>()
            .ok()
            .or_else(|| hop.parse::<std::net::SocketAddr>().ok().map(|a| a.ip()))
        else {
            break;
        };
        address = ip.to_canonical();
        if !limits.is_trusted_proxy(address) {
            break;
        }
    }
    address
}

/// Failed attempts allowed per key: a generic cell rate: each failure moves the key's
/// "allowance exhausted until" time forward by `window / limit`; the key is refused
/// while that time is more than `window - window / limit` ahead, so at most `limit`
/// failures fit in a window, then one per `window / limit`.
#[derive(Debug)]
struct Allowances<K> {
    limit: u32,
    window_ms: u64,
    capacity: usize,
    until: HashMap<K, u64>,
}

impl<K: Hash + Eq + Copy> Allowances<K> {
    fn new(limit: u32, window: std::time::Duration, capacity: usize) -> Self {
        Self {
            limit,
            window_ms: u64::try_from(window.as_millis()).unwrap_or(u64::MAX),
            capacity,
            until: HashMap::new(),
        }
    }

    fn interval(&self) -> u64 {
        (self.window_ms / u64::from(self.limit.max(1))).max(1)
    }

    /// Milliseconds `key` must wait before its next attempt (0: none).
    fn wait(&self, key: &K, now_ms: u64) -> u64 {
        if self.limit == 0 {
            return 0;
        }
        let Some(&until) = self.until.get(key) else {
            return 0;
        };
        let ahead = self.window_ms.saturating_sub(self.interval());
        until.saturating_sub(now_ms).saturating_sub(ahead)
    }

    fn failed(&mut self, key: K, now_ms: u64) {
        if self.limit == 0 {
            return;
        }
        if !self.until.contains_key(&key) && self.until.len() >= self.capacity {
            // Full: forget the keys back at their full allowance, then, if that is not
            // enough, the one closest to it. The table never grows past `capacity`.
            self.until.retain(|_, until| *until > now_ms);
            if self.until.len() >= self.capacity
                && let Some(oldest) = self
                    .until
                    .iter()
                    .min_by_key(|(_, until)| **until)
                    .map(|(k, _)| *k)
            {
                self.until.remove(&oldest);
            }
        }
        let interval = self.interval();
        let until = self.until.entry(key).or_insert(now_ms);
        *until = (*until).max(now_ms).saturating_add(interval);
    }

    /// Takes back one [`Allowances::failed`] of `key` (the attempt succeeded).
    fn refund(&mut self, key: &K) {
        if self.limit == 0 {
            return;
        }
        let interval = self.interval();
        if let Some(until) = self.until.get_mut(key) {
            *until = until.saturating_sub(interval);
        }
    }
}

/// The key an address is counted under: IPv6 clients usually hold a whole /64.
fn address_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => IpAddr::V6(std::net::Ipv6Addr::from(u128::from(v6) & (u128::MAX << 64))),
        v4 => v4,
    }
}

/// Failed client-secret checks per client id and per address, bounded in memory
/// (`[auth_limits]`, see [`AuthLimits`]).
#[derive(Debug)]
pub(crate) struct AttemptLimiter {
    /// By SHA-256 of the client id: fixed-size keys, whatever ids are presented.
    by_client: Mutex<Allowances<[u8; 32]>>,
    by_address: Mutex<Allowances<IpAddr>>,
}

impl AttemptLimiter {
    pub(crate) fn new(limits: &AuthLimits) -> Self {
        Self {
            by_client: Mutex::new(Allowances::new(
                limits.failures_per_client,
                limits.window,
                limits.max_tracked,
            )),
            by_address: Mutex::new(Allowances::new(
                limits.failures_per_address,
                limits.window,
                limits.max_tracked,
            )),
        }
    }

    fn client_key(id: &str) -> [u8; 32] {
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, id.as_bytes());
        let mut key = [0_u8; 32];
        key.copy_from_slice(digest.as_ref());
        key
    }

    /// Starts a secret check for `id` from `address`: counted as a failure at once, in
    /// the same critical section that compares the counts with the limits, so
    /// concurrent checks cannot exceed them. `Err`: whole seconds to wait, over a limit
    /// (nothing counted).
    pub(crate) fn begin(
        &self,
        id: &str,
        address: Option<IpAddr>,
        now: dpop_core::UnixTime,
    ) -> Result<Attempt, u64> {
        let now_ms = now.as_secs().saturating_mul(1000);
        let client = Self::client_key(id);
        let address = address.map(address_key);
        let (mut by_client, mut by_address) = self.lock_both();
        let wait = by_client
            .wait(&client, now_ms)
            .max(address.map_or(0, |a| by_address.wait(&a, now_ms)));
        if wait > 0 {
            return Err(wait.div_ceil(1000));
        }
        by_client.failed(client, now_ms);
        if let Some(a) = address {
            by_address.failed(a, now_ms);
        }
        Ok(Attempt { client, address })
    }

    /// Both tables, always client then address (one lock order). A poisoned lock's data
    /// is still used, so the limits keep applying.
    fn lock_both(
        &self,
    ) -> (
        MutexGuard<'_, Allowances<[u8; 32]>>,
        MutexGuard<'_, Allowances<IpAddr>>,
    ) {
        let by_client = self
            .by_client
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let by_address = self
            .by_address
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        (by_client, by_address)
    }

    /// The check begun as `attempt` succeeded: it does not count as a failure.
    pub(crate) fn succeeded(&self, attempt: Attempt) {
        let (mut by_client, mut by_address) = self.lock_both();
        by_client.refund(&attempt.client);
        if let Some(a) = attempt.address {
            by_address.refund(&a);
        }
    }
}

/// A secret check counted as a failure until [`AttemptLimiter::succeeded`] says
/// otherwise (a check that never finishes stays counted).
#[derive(Debug)]
#[must_use]
pub(crate) struct Attempt {
    client: [u8; 32],
    address: Option<IpAddr>,
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn allowances_refuse_past_the_limit_and_recover() {
        let mut a = Allowances::<u8>::new(4, Duration::from_secs(60), 100);
        for _ in 0..4 {
            assert_eq!(a.wait(&1, 0), 0);
            a.failed(1, 0);
        }
        assert_eq!(a.wait(&1, 0), 15_000);
        assert_eq!(a.wait(&2, 0), 0);
        assert_eq!(a.wait(&1, 14_999), 1);
        assert_eq!(a.wait(&1, 15_000), 0);
        a.failed(1, 15_000);
        assert_eq!(a.wait(&1, 15_000), 15_000);
        // A full window later everything is forgotten.
        assert_eq!(a.wait(&1, 90_000), 0);
        // 0: no limit.
        let mut off = Allowances::<u8>::new(0, Duration::from_secs(60), 100);
        for _ in 0..1000 {
            off.failed(1, 0);
        }
        assert_eq!(off.wait(&1, 0), 0);
    }

    #[test]
    fn attempts_are_counted_when_they_begin_and_given_back_on_success() {
        let limits = AuthLimits {
            failures_per_client: 3,
            ..AuthLimits::default()
        };
        let limiter = AttemptLimiter::new(&limits);
        let now = dpop_core::UnixTime::from_secs(1_000);
        let address: Option<IpAddr> = Some("192.0.2.1".parse().unwrap());
        // Three checks in flight at once use up the allowance; a fourth waits.
        let attempts: Vec<Attempt> = (0..3)
            .map(|_| limiter.begin("c", address, now).unwrap())
            .collect();
        assert_eq!(limiter.begin("c", address, now).unwrap_err(), 20);
        // One of them succeeds: its place comes back.
        let mut attempts = attempts.into_iter();
        limiter.succeeded(attempts.next().unwrap());
        let again = limiter.begin("c", address, now).unwrap();
        assert!(limiter.begin("c", address, now).is_err());
        limiter.succeeded(again);
        // Another id from another address is not concerned.
        assert!(limiter.begin("d", None, now).is_ok());
    }

    #[test]
    fn allowances_stay_within_their_capacity() {
        let mut a = Allowances::<u32>::new(2, Duration::from_secs(60), 100);
        for k in 0..10_000 {
            a.failed(k, 0);
            assert!(a.until.len() <= 100);
        }
        // Two failures of one key make it the last to be forgotten.
        a.failed(5_000_000, 0);
        a.failed(5_000_000, 0);
        for k in 20_000..20_500 {
            a.failed(k, 0);
        }
        assert!(a.until.len() <= 100);
        assert!(a.wait(&5_000_000, 0) > 0);
    }

    #[test]
    fn ipv6_addresses_count_per_64() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::2".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(address_key(a), address_key(b));
        assert_ne!(address_key(a), address_key(c));
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        assert_eq!(address_key(mapped), "192.0.2.1".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn forwarded_addresses_only_from_trusted_proxies() {
        let mut limits = AuthLimits::default();
        let peer: IpAddr = "10.0.0.5".parse().unwrap();
        let mut headers = HeaderMap::new();
        headers.append(
            "x-forwarded-for",
            "198.51.100.1, 203.0.113.9".parse().unwrap(),
        );
        headers.append("x-forwarded-for", "10.0.0.7".parse().unwrap());
        // Not trusted: the peer.
        assert_eq!(client_address_of(&limits, peer, &headers), peer);
        limits.trusted_proxies = vec!["10.0.0.0/8".parse().unwrap()];
        // Trusted: right to left past the trusted hops, never the client-written part.
        assert_eq!(
            client_address_of(&limits, peer, &headers),
            "203.0.113.9".parse::<IpAddr>().unwrap()
        );
        // A hop that is not an address ends the walk at the last trusted one.
        let mut odd = HeaderMap::new();
        odd.append("x-forwarded-for", "203.0.113.9, unknown".parse().unwrap());
        assert_eq!(client_address_of(&limits, peer, &odd), peer);
        // Without the header: the proxy itself.
        assert_eq!(client_address_of(&limits, peer, &HeaderMap::new()), peer);
    }
}

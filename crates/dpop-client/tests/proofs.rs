//! Every request gets a fresh proof for its method and the URL actually sent, with `ath`
//! and `Authorization: DPoP` when a token source is set; a refused token is replaced once.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use dpop_client::{ClientError, DpopMiddleware, StaticToken, TokenSource};
use dpop_core::Ath;

use crate::support::{Api, ApiOptions, client_key, http_client, now_secs};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_gets_a_fresh_proof_for_its_method_and_url() {
    let api = Api::start(ApiOptions::default()).await;
    let (key, jkt) = client_key();
    let client = http_client(DpopMiddleware::new(key));

    let before = now_secs();
    let get = |url: String| client.get(url).send();
    // The query and fragment are not part of htu; dot segments are resolved before the
    // request is sent, and the proof names the URL sent.
    let r = get(api.at("/v1/items?page=2#top")).await.unwrap();
    assert_eq!(r.status(), 200);
    let r = get(api.at("/v1/./other/../items")).await.unwrap();
    assert_eq!(r.status(), 200);
    let r = client
        .post(api.at("/v1/items"))
        .body("{\"name\":\"x\"}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = client.delete(api.at("/v1/items/7")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let after = now_secs();

    let seen = api.seen();
    let expected = [
        ("GET", "/v1/items?page=2", "/v1/items"),
        ("GET", "/v1/items", "/v1/items"),
        ("POST", "/v1/items", "/v1/items"),
        ("DELETE", "/v1/items/7", "/v1/items/7"),
    ];
    assert_eq!(seen.len(), expected.len(), "{seen:#?}");
    let mut jtis = HashSet::new();
    for (s, (method, uri, path)) in seen.iter().zip(expected) {
        assert_eq!(
            (s.method.as_str(), s.uri.as_str(), s.status),
            (method, uri, 200),
            "{s:?}"
        );
        assert_eq!(s.claim("htm"), Some(method), "{s:?}");
        assert_eq!(s.claim("htu"), Some(api.at(path).as_str()), "{s:?}");
        assert!((before..=after).contains(&s.iat()), "{s:?}");
        assert_eq!(s.claim("ath"), None, "no token, no ath: {s:?}");
        assert_eq!(s.claim("nonce"), None, "no server nonce yet: {s:?}");
        assert_eq!(s.header("authorization"), None, "{s:?}");
        assert!(
            jtis.insert(s.claim("jti").unwrap().to_owned()),
            "a jti repeated: {s:?}"
        );
        let decoded = dpop_core::jwt::UnverifiedJwt::parse(s.header("dpop").unwrap()).unwrap();
        let header = decoded.dangerous_header();
        assert_eq!(header["typ"], "dpop+jwt");
        assert_eq!(header["alg"], "ES256");
        let jwk = dpop_core::PublicJwk::from_json(&header["jwk"].to_string()).unwrap();
        assert_eq!(jwk.thumbprint().as_str(), jkt);
    }
    assert_eq!(seen[2].body, b"{\"name\":\"x\"}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_goes_in_authorization_and_its_hash_in_ath() {
    let (key, jkt) = client_key();
    let token = "opaque-token.Kz~8mXK1EalYznwH-LC-1fBAo";
    let api = Api::start(ApiOptions {
        token: Some(token.to_owned()),
        jkt: Some(jkt),
        ..ApiOptions::default()
    })
    .await;
    let dpop = DpopMiddleware::new(key).with_tokens(Arc::new(StaticToken::new(token)));
    let client = http_client(dpop);
    for _ in 0..2 {
        let r = client.get(api.at("/v1/me")).send().await.unwrap();
        assert_eq!(r.status(), 200);
    }
    let seen = api.seen();
    assert_eq!(seen.len(), 2, "{seen:#?}");
    let ath = Ath::of_token(token);
    for s in &seen {
        assert_eq!(
            s.header("authorization"),
            Some(format!("DPoP {token}").as_str())
        );
        assert_eq!(s.claim("ath"), Some(ath.as_str()), "{s:?}");
        assert_eq!(s.status, 200, "{s:?}");
    }
    assert_ne!(seen[0].claim("jti"), seen[1].claim("jti"));
}

/// Hands out `old` until told it was refused, then `new`.
#[derive(Debug)]
struct Rotating {
    current: Mutex<&'static str>,
    invalidated: AtomicUsize,
}

#[async_trait::async_trait]
impl TokenSource for Rotating {
    async fn token(&self) -> Result<Arc<str>, ClientError> {
        Ok((*self.current.lock().unwrap()).into())
    }

    fn invalidate(&self, token: &str) {
        self.invalidated.fetch_add(1, Ordering::SeqCst);
        let mut current = self.current.lock().unwrap();
        if *current == token {
            *current = "new";
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_token_is_replaced_once() {
    let (key, jkt) = client_key();
    let api = Api::start(ApiOptions {
        token: Some("new".to_owned()),
        jkt: Some(jkt),
        ..ApiOptions::default()
    })
    .await;
    let source = Arc::new(Rotating {
        current: Mutex::new("old"),
        invalidated: AtomicUsize::new(0),
    });
    let client = http_client(DpopMiddleware::new(key).with_tokens(Arc::clone(&source) as _));
    let r = client.get(api.at("/v1/me")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let seen = api.seen();
    assert_eq!(seen.len(), 2, "{seen:#?}");
    assert_eq!(
        (seen[0].status, seen[0].error.as_deref()),
        (401, Some("invalid_token"))
    );
    assert_eq!(seen[0].header("authorization"), Some("DPoP old"));
    assert_eq!(seen[1].header("authorization"), Some("DPoP new"));
    assert_eq!(seen[1].claim("ath"), Some(Ath::of_token("new").as_str()));
    assert_eq!(source.invalidated.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_static_token_is_given_back_without_a_retry() {
    let (key, jkt) = client_key();
    let api = Api::start(ApiOptions {
        token: Some("the-only-good-token".to_owned()),
        jkt: Some(jkt),
        ..ApiOptions::default()
    })
    .await;
    let client = http_client(
        DpopMiddleware::new(key).with_tokens(Arc::new(StaticToken::new("a-bad-token"))),
    );
    let r = client.get(api.at("/v1/me")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let challenge = r.headers()["www-authenticate"].to_str().unwrap();
    assert!(challenge.contains("invalid_token"), "{challenge}");
    // No retry: a static source has no other token to give.
    assert_eq!(api.log.len(), 1, "{:#?}", api.seen());
}

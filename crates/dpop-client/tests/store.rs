//! The [`TokenStore`] hook against the real issuer: a token stored by one source is used
//! by the next (one token request), a refused token leaves the store, an expired one is
//! replaced, a failing store is an error, and a token is only found by a source that
//! would have asked for the same thing with the same key.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use dpop_client::{
    ClientError, DpopMiddleware, Grant, OAuthTokens, StoredToken, SubjectToken, TokenKey,
    TokenSource as _, TokenStore,
};

use crate::support::{Issuer, client_key};

/// A store in memory, counting what is asked of it; `fail` makes every call fail.
#[derive(Debug, Default)]
struct MemoryStore {
    tokens: Mutex<HashMap<String, StoredToken>>,
    fail: bool,
}

impl MemoryStore {
    fn get(&self, key: &TokenKey) -> Option<StoredToken> {
        self.tokens.lock().unwrap().get(key.as_str()).cloned()
    }
}

impl TokenStore for MemoryStore {
    fn load(&self, key: &TokenKey) -> Result<Option<StoredToken>, ClientError> {
        if self.fail {
            return Err(ClientError::TokenStore("the store is down".into()));
        }
        Ok(self.get(key))
    }

    fn save(&self, key: &TokenKey, token: &StoredToken) -> Result<(), ClientError> {
        self.tokens
            .lock()
            .unwrap()
            .insert(key.as_str().to_owned(), token.clone());
        Ok(())
    }

    fn remove(&self, key: &TokenKey, access_token: &str) -> Result<(), ClientError> {
        let mut tokens = self.tokens.lock().unwrap();
        if tokens
            .get(key.as_str())
            .is_some_and(|t| &*t.access_token == access_token)
        {
            tokens.remove(key.as_str());
        }
        Ok(())
    }
}

fn svc_tokens(issuer: &Issuer, dpop: &DpopMiddleware, store: &Arc<MemoryStore>) -> OAuthTokens {
    let mut request = issuer.secret_request("svc", Grant::ClientCredentials);
    request.scope = Some("read".to_owned());
    OAuthTokens::new(request, dpop)
        .unwrap()
        .with_store(Arc::clone(store) as Arc<dyn TokenStore>)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stored_token_is_used_by_the_next_source_until_refused() {
    let issuer = Issuer::start("").await;
    let (key, _) = client_key();
    let dpop = DpopMiddleware::new(key);
    let store = Arc::new(MemoryStore::default());

    let first = svc_tokens(&issuer, &dpop, &store);
    let token = first.token().await.unwrap();
    assert_eq!(first.fetches(), 1);
    let key = first.store_key();
    assert_eq!(store.get(&key).unwrap().access_token, token);

    // A new source (as in the next run) with the same request and key: no request.
    let second = svc_tokens(&issuer, &dpop, &store);
    assert_eq!(second.token().await.unwrap(), token);
    assert_eq!(second.fetches(), 0);
    assert_eq!(second.current().unwrap().access_token, token);

    // Refused: gone from the store; the next token is a new one, stored.
    second.invalidate(&token);
    assert!(store.get(&key).is_none());
    let renewed = second.token().await.unwrap();
    assert_ne!(renewed, token);
    assert_eq!(second.fetches(), 1);
    assert_eq!(store.get(&key).unwrap().access_token, renewed);
    // Invalidating a token that is no longer the stored one leaves the stored one.
    second.invalidate(&token);
    assert_eq!(store.get(&key).unwrap().access_token, renewed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_stored_token_is_replaced_and_others_are_not_shared() {
    let issuer = Issuer::start("").await;
    let (key, _) = client_key();
    let dpop = DpopMiddleware::new(key);
    let store = Arc::new(MemoryStore::default());
    let tokens = svc_tokens(&issuer, &dpop, &store);
    let key = tokens.store_key();
    store
        .save(
            &key,
            &StoredToken::new("expired-token".into(), 1000, 1300, None, None),
        )
        .unwrap();
    let token = tokens.token().await.unwrap();
    assert_ne!(&*token, "expired-token");
    assert_eq!(tokens.fetches(), 1);
    assert_eq!(store.get(&key).unwrap().access_token, token);

    // Another key, another scope: other store keys, so the token is not handed out.
    let (other_key, _) = client_key();
    let other = svc_tokens(&issuer, &DpopMiddleware::new(other_key), &store);
    assert_ne!(other.store_key(), key);
    let mut request = issuer.secret_request("svc", Grant::ClientCredentials);
    request.scope = Some("write".to_owned());
    let write = OAuthTokens::new(request, &dpop).unwrap();
    assert_ne!(write.store_key(), key);
    assert_ne!(other.token().await.unwrap(), token);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_for_other_subjects_or_refresh_tokens_are_not_shared() {
    let issuer = Issuer::start("").await;
    let (key, _) = client_key();
    let dpop = DpopMiddleware::new(key);
    let exchange = |subject: &str| {
        let grant = Grant::TokenExchange {
            subject: SubjectToken::Value(Arc::new(zeroize::Zeroizing::new(subject.to_owned()))),
            subject_type: "urn:ietf:params:oauth:token-type:jwt".to_owned(),
        };
        OAuthTokens::new(issuer.secret_request("svc", grant), &dpop)
            .unwrap()
            .store_key()
    };
    // Same client, same key, same scopes: the subject decides.
    assert_eq!(exchange("job-a"), exchange("job-a"));
    assert_ne!(exchange("job-a"), exchange("job-b"));
    assert!(
        !exchange("job-a").as_str().contains("job-a"),
        "no secret in the key"
    );
    let refresh = |token: &str| {
        let grant = Grant::RefreshToken(SubjectToken::Value(Arc::new(zeroize::Zeroizing::new(
            token.to_owned(),
        ))));
        OAuthTokens::new(issuer.secret_request("svc", grant), &dpop)
            .unwrap()
            .store_key()
    };
    assert_ne!(refresh("r1"), refresh("r2"));
    // A subject token that cannot be read shares its key with nothing, not even itself.
    let unreadable = || {
        let grant = Grant::TokenExchange {
            subject: SubjectToken::Env("DPOP_TEST_NO_SUCH_VARIABLE_AT_ALL".to_owned()),
            subject_type: "urn:ietf:params:oauth:token-type:jwt".to_owned(),
        };
        OAuthTokens::new(issuer.secret_request("svc", grant), &dpop)
            .unwrap()
            .store_key()
    };
    assert_ne!(unreadable(), unreadable());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_store_is_an_error() {
    let issuer = Issuer::start("").await;
    let (key, _) = client_key();
    let dpop = DpopMiddleware::new(key);
    let store = Arc::new(MemoryStore {
        fail: true,
        ..MemoryStore::default()
    });
    let tokens = svc_tokens(&issuer, &dpop, &store);
    let e = tokens.token().await.unwrap_err();
    assert!(matches!(e, ClientError::TokenStore(_)), "{e}");
    assert_eq!(e.to_string(), "token store: the store is down");
    assert_eq!(tokens.fetches(), 0);
}

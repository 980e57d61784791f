//! Keys held by a device or a KMS ([`Signer::blocks`]): their signatures are made on a
//! thread that may block, so a slow device never stalls the executor, and a device that
//! fails fails the request, with nothing signed by another key.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use dpop_client::{ClientAuth, ClientKey, DpopMiddleware, Grant, OAuthTokens, TokenRequest};
use dpop_core::{Algorithm, KeyError, PrivateKey, PublicJwk, Signer};

use crate::support::{Api, ApiOptions, Issuer, client_key, http_client};

/// A software key that answers slowly, like an HSM or a KMS round trip, and can be told
/// to fail.
struct SlowDevice {
    key: PrivateKey,
    delay: Duration,
    broken: AtomicBool,
    signed: AtomicUsize,
}

impl SlowDevice {
    fn new(key: PrivateKey, delay: Duration) -> Arc<Self> {
        Arc::new(Self {
            key,
            delay,
            broken: AtomicBool::new(false),
            signed: AtomicUsize::new(0),
        })
    }
}

impl Signer for SlowDevice {
    fn algorithm(&self) -> Algorithm {
        self.key.algorithm()
    }
    fn public_jwk(&self) -> &PublicJwk {
        self.key.public_jwk()
    }
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, KeyError> {
        // Blocks the thread, as a device call does.
        std::thread::sleep(self.delay);
        if self.broken.load(Ordering::SeqCst) {
            return Err(KeyError::Device(
                "pkcs11 key pkcs11:object=k: the token was removed (CKR_DEVICE_REMOVED)".into(),
            ));
        }
        self.signed.fetch_add(1, Ordering::SeqCst);
        self.key.sign(message)
    }
    fn blocks(&self) -> bool {
        true
    }
}

/// On a single-threaded runtime a signer that blocks on the executor would stop every
/// other task for as long as it signs: here a ticker keeps ticking meanwhile.
#[tokio::test(flavor = "current_thread")]
async fn a_blocking_signer_runs_off_the_executor() {
    let api = Api::start(ApiOptions::default()).await;
    let device = SlowDevice::new(
        PrivateKey::generate(Algorithm::Es256).unwrap(),
        Duration::from_millis(400),
    );
    let key = ClientKey::from_signer(Arc::clone(&device) as Arc<dyn Signer>);
    let jkt = key.thumbprint().as_str().to_owned();
    let client = http_client(DpopMiddleware::new(key));

    let ticks = Arc::new(AtomicUsize::new(0));
    let ticker = {
        let ticks = Arc::clone(&ticks);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(10)).await;
                ticks.fetch_add(1, Ordering::SeqCst);
            }
        })
    };
    let r = client.get(api.at("/v1/items")).send().await.unwrap();
    ticker.abort();
    assert_eq!(r.status(), 200);
    assert_eq!(device.signed.load(Ordering::SeqCst), 1);
    let ticked = ticks.load(Ordering::SeqCst);
    assert!(
        ticked >= 10,
        "the executor stalled while the device signed: {ticked} ticks in 400 ms"
    );
    let seen = api.seen();
    let header = dpop_core::jwt::UnverifiedJwt::parse(seen[0].header("dpop").unwrap()).unwrap();
    let jwk = PublicJwk::from_json(&header.dangerous_header()["jwk"].to_string()).unwrap();
    assert_eq!(jwk.thumbprint().as_str(), jkt);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_device_fails_the_request_and_nothing_is_sent() {
    let api = Api::start(ApiOptions::default()).await;
    let device = SlowDevice::new(
        PrivateKey::generate(Algorithm::Es256).unwrap(),
        Duration::ZERO,
    );
    device.broken.store(true, Ordering::SeqCst);
    let client = http_client(DpopMiddleware::new(ClientKey::from_signer(
        Arc::clone(&device) as Arc<dyn Signer>,
    )));
    let e = client.get(api.at("/v1/items")).send().await.unwrap_err();
    let shown = format!("{e:#}");
    assert!(shown.contains("CKR_DEVICE_REMOVED"), "{shown}");
    assert!(api.seen().is_empty(), "a request went out unsigned");
}

/// The client assertion of `private_key_jwt` is signed by a device key the same way, a
/// new one for each attempt.
#[tokio::test(flavor = "current_thread")]
async fn a_device_key_signs_the_client_assertion() {
    let issuer = Issuer::start("").await;
    let (dpop_key, jkt) = client_key();
    let device = SlowDevice::new(
        PrivateKey::from_pkcs8_pem(&issuer.client_key_pem, None).unwrap(),
        Duration::from_millis(20),
    );
    let auth = ClientAuth::PrivateKeyJwt {
        client_id: "keyed".to_owned(),
        key: ClientKey::from_signer(Arc::clone(&device) as Arc<dyn Signer>),
    };
    let dpop = DpopMiddleware::new(dpop_key);
    let tokens = OAuthTokens::new(
        TokenRequest::new(&issuer.url, auth, Grant::ClientCredentials),
        &dpop,
    )
    .unwrap();
    let response = tokens.fetch().await.unwrap();
    let claims = crate::support::jws_claims(&response.access_token);
    assert_eq!(claims["cnf"]["jkt"], jkt.as_str());
    assert_eq!(claims["client_id"], "keyed");
    // The nonce challenge and the retry: one assertion each.
    assert_eq!(device.signed.load(Ordering::SeqCst), 2);
}

//! The observer sees each signed attempt, response, retry and clock correction, at a
//! resource server and at a token endpoint, in the order they happen.

use std::sync::{Arc, Mutex};

use dpop_client::{DpopMiddleware, Event, Grant, OAuthTokens, Observer, Retry};

use crate::support::{Api, ApiOptions, Issuer, client_key, http_client};

/// Writes each event down as one line.
#[derive(Debug, Default)]
struct Recorder(Mutex<Vec<String>>);

impl Observer for Recorder {
    fn event(&self, event: &Event<'_>) {
        let line = match event {
            Event::Sending { endpoint, request } => format!(
                "send {endpoint:?} {} {} proof={}",
                request.method(),
                request.url().path(),
                request.headers().contains_key("dpop")
            ),
            Event::Received { endpoint, response } => {
                format!("got {endpoint:?} {}", response.status().as_u16())
            }
            Event::Retrying { reason, .. } => format!("retry {reason:?}"),
            Event::ClockCorrected { offset_secs, .. } => {
                format!("clock {}", (offset_secs + 2) / 5 * 5)
            }
            Event::Metadata { result, .. } => match result {
                Ok((document, endpoint)) => format!(
                    "metadata {} -> {}",
                    url::Url::parse(document).unwrap().path(),
                    url::Url::parse(endpoint).unwrap().path()
                ),
                Err(e) => format!("metadata failed: {e}"),
            },
            other => format!("{other:?}"),
        };
        self.0.lock().unwrap().push(line);
    }
}

impl Recorder {
    fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nonce_challenges_and_clock_corrections_are_reported_in_order() {
    let recorder = Arc::new(Recorder::default());
    let (key, _) = client_key();
    let client = http_client(DpopMiddleware::new(key).with_observer(recorder.clone()));

    let nonces = Api::start(ApiOptions {
        nonces: true,
        ..ApiOptions::default()
    })
    .await;
    let r = client.get(nonces.at("/v1/items")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        recorder.take(),
        [
            "send Resource GET /v1/items proof=true",
            "got Resource 401",
            "retry Nonce",
            "send Resource GET /v1/items proof=true",
            "got Resource 200",
        ]
    );
    assert_eq!(
        Retry::Nonce.to_string(),
        "the server asked for a DPoP nonce"
    );

    let ahead = Api::start(ApiOptions {
        clock_offset: 120,
        ..ApiOptions::default()
    })
    .await;
    let r = client.get(ahead.at("/x")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        recorder.take(),
        [
            "send Resource GET /x proof=true",
            "got Resource 401",
            "clock 120",
            "retry ClockSkew",
            "send Resource GET /x proof=true",
            "got Resource 200",
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_requests_are_reported_as_token_endpoint_exchanges() {
    let issuer = Issuer::start("").await;
    let recorder = Arc::new(Recorder::default());
    let (key, _) = client_key();
    let dpop = DpopMiddleware::new(key);
    // The observer is the key's: set after the token source exists, it still sees it.
    let tokens = OAuthTokens::new(
        issuer.secret_request("svc", Grant::ClientCredentials),
        &dpop,
    )
    .unwrap();
    let _dpop = dpop.with_observer(recorder.clone());
    tokens.fetch().await.unwrap();
    let events = recorder.take();
    assert_eq!(
        events,
        [
            "metadata /.well-known/oauth-authorization-server -> /token",
            "send Token POST /token proof=true",
            "got Token 400",
            "retry Nonce",
            "send Token POST /token proof=true",
            "got Token 200",
        ],
        "the issuer asks for a nonce first"
    );
}

//! Server nonces (RFC 9449 §8, §9): every `DPoP-Nonce` is remembered for its origin; a
//! challenge is answered with exactly one retry; a server that keeps asking gets its
//! answer back; a body that cannot be sent twice is an error, not a silent failure.

use dpop_client::{ClientError, DpopMiddleware, Grant, OAuthTokens};
use serde_json::Value;

use crate::support::{
    Api, ApiOptions, Issuer, Misbehaviour, Seen, client_error, client_key, http_client, jws_claims,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resource_nonce_challenge_is_answered_with_one_retry() {
    let api = Api::start(ApiOptions {
        nonces: true,
        ..ApiOptions::default()
    })
    .await;
    let (key, _) = client_key();
    let client = http_client(DpopMiddleware::new(key));

    let r = client.get(api.at("/v1/items")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let seen = api.seen();
    assert_eq!(seen.len(), 2, "exactly one retry: {seen:#?}");
    let challenge = &seen[0];
    assert_eq!(challenge.claim("nonce"), None);
    assert_eq!(
        (
            challenge.status,
            challenge.error.as_deref(),
            challenge.reason.as_deref()
        ),
        (401, Some("use_dpop_nonce"), Some("nonce_required"))
    );
    let nonce = challenge.nonce_sent.as_deref().expect("a DPoP-Nonce");
    assert_eq!(seen[1].claim("nonce"), Some(nonce));
    assert_eq!(seen[1].status, 200);
    assert_ne!(seen[0].claim("jti"), seen[1].claim("jti"));

    // The nonce is kept: the next request succeeds the first time.
    api.log.clear();
    let r = client
        .post(api.at("/v1/items"))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let seen = api.seen();
    assert_eq!(seen.len(), 1, "{seen:#?}");
    assert!(seen[0].claim("nonce").is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dpop_nonce_header_feeds_the_origins_cache() {
    // A and B are two origins (two ports); A hands out a nonce on a success without
    // demanding one.
    let a = Api::start(ApiOptions {
        advertise_nonce: Some("nonce-from-a".to_owned()),
        ..ApiOptions::default()
    })
    .await;
    let b = Api::start(ApiOptions::default()).await;
    let (key, _) = client_key();
    let client = http_client(DpopMiddleware::new(key));

    for url in [a.at("/1"), b.at("/1"), a.at("/2"), b.at("/2")] {
        let r = client.get(url).send().await.unwrap();
        assert_eq!(r.status(), 200);
    }
    let (a, b) = (a.seen(), b.seen());
    assert_eq!((a.len(), b.len()), (2, 2));
    assert_eq!(a[0].claim("nonce"), None, "nothing learned yet");
    assert_eq!(a[1].claim("nonce"), Some("nonce-from-a"), "{a:#?}");
    assert_eq!(b[0].claim("nonce"), None, "A's nonce is not B's: {b:#?}");
    assert_eq!(b[1].claim("nonce"), None, "{b:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_always_wants_a_new_nonce_gets_two_requests_and_its_401_back() {
    let api = Api::start(ApiOptions {
        misbehave: Some(Misbehaviour::AlwaysNonce401),
        ..ApiOptions::default()
    })
    .await;
    let (key, _) = client_key();
    let client = http_client(DpopMiddleware::new(key));
    let r = client.get(api.at("/v1/items")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["dpop-nonce"], "nonce-1");
    let challenge = r.headers()["www-authenticate"].to_str().unwrap();
    assert!(challenge.contains("use_dpop_nonce"), "{challenge}");
    let seen = api.seen();
    assert_eq!(seen.len(), 2, "the client stops after one retry: {seen:#?}");
    assert_eq!(seen[0].claim("nonce"), None);
    assert_eq!(seen[1].claim("nonce"), Some("nonce-0"));

    // The latest nonce is still remembered for the next request (one retry again).
    api.log.clear();
    let r = client.get(api.at("/v1/items")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let seen = api.seen();
    assert_eq!(seen.len(), 2, "{seen:#?}");
    assert_eq!(seen[0].claim("nonce"), Some("nonce-1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_endpoint_nonce_loop_is_a_clear_error_after_two_requests() {
    // A stand-in issuer: metadata, and a token endpoint that always wants a new nonce.
    let issuer = Api::start(ApiOptions {
        metadata: true,
        misbehave: Some(Misbehaviour::AlwaysNonce400),
        ..ApiOptions::default()
    })
    .await;
    let (key, _) = client_key();
    let dpop = DpopMiddleware::new(key);
    let request = dpop_client::TokenRequest::new(
        &issuer.url,
        dpop_client::ClientAuth::Public {
            client_id: "cli".to_owned(),
        },
        Grant::ClientCredentials,
    );
    let tokens = OAuthTokens::new(request, &dpop).unwrap();
    let err = tokens.fetch().await.unwrap_err();
    match &err {
        ClientError::TokenEndpoint { status, error, .. } => {
            assert_eq!((*status, error.as_str()), (400, "use_dpop_nonce"));
        }
        other => panic!("expected TokenEndpoint, got {other:?}"),
    }
    assert!(err.to_string().contains("use_dpop_nonce"), "{err}");
    let posts: Vec<_> = issuer
        .seen()
        .into_iter()
        .filter(|s| s.method == "POST")
        .collect();
    assert_eq!(posts.len(), 2, "{posts:#?}");
    assert_eq!(posts[1].claim("nonce"), Some("nonce-0"));
    assert_eq!(tokens.fetches(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_issuers_nonce_challenge_costs_one_retry_then_none() {
    let issuer = Issuer::start("").await;
    let (key, jkt) = client_key();
    let dpop = DpopMiddleware::new(key);
    let tokens = OAuthTokens::new(
        issuer.secret_request("svc", Grant::ClientCredentials),
        &dpop,
    )
    .unwrap();

    let first = tokens.fetch().await.unwrap();
    assert_eq!(jws_claims(&first.access_token)["cnf"]["jkt"], jkt.as_str());
    let calls = issuer.token_calls();
    assert_eq!(calls.len(), 2, "{calls:#?}");
    assert_eq!(
        (
            calls[0].status,
            calls[0].error.as_deref(),
            calls[0].claim("nonce")
        ),
        (400, Some("use_dpop_nonce"), None)
    );
    assert_eq!(calls[1].claim("nonce"), calls[0].nonce_sent.as_deref());
    assert_eq!(calls[1].status, 200);
    assert_eq!(
        calls[1].claim("htu"),
        Some(format!("{}/token", issuer.url).as_str())
    );
    assert_eq!(calls[1].claim("htm"), Some("POST"));
    assert_eq!(
        calls[1].claim("ath"),
        None,
        "no access token at the token endpoint"
    );

    // The issuer's nonce is remembered: the next token request succeeds at once.
    let second = tokens.fetch().await.unwrap();
    assert_ne!(first.access_token, second.access_token);
    let calls = issuer.token_calls();
    assert_eq!(calls.len(), 3, "{calls:#?}");
    assert_eq!(calls[2].status, 200);
    assert_eq!(tokens.fetches(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_cannot_be_sent_twice_is_a_clear_error() {
    let api = Api::start(ApiOptions {
        nonces: true,
        ..ApiOptions::default()
    })
    .await;
    let (key, _) = client_key();
    let client = http_client(DpopMiddleware::new(key));

    // A one-shot body (like `Body::wrap_stream`): reqwest cannot clone it for a retry.
    let body = reqwest::Body::wrap(http_body_util::Full::new(bytes::Bytes::from_static(
        b"streamed",
    )));
    let err = client
        .post(api.at("/v1/upload"))
        .body(body)
        .send()
        .await
        .unwrap_err();
    let err = client_error(err);
    assert!(
        matches!(err, ClientError::BodyNotReplayable(_)),
        "expected BodyNotReplayable, got {err:?}"
    );
    let message = err.to_string();
    assert!(
        message.contains("nonce") && message.contains("cannot be sent again"),
        "{message}"
    );
    assert_eq!(api.log.len(), 1, "{:#?}", api.seen());

    // Now that the nonce is known, the same kind of body goes through in one request;
    // and a body built from bytes survives a retry.
    let body = reqwest::Body::wrap(http_body_util::Full::new(bytes::Bytes::from_static(
        b"streamed",
    )));
    let r = client
        .post(api.at("/v1/upload"))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(api.log.len(), 2);
    assert_eq!(api.seen()[1].body, b"streamed");
}

/// A response as the caller got it: read whole before the case's checks.
struct Reply {
    status: u16,
    url: String,
    headers: reqwest::header::HeaderMap,
    body: bytes::Bytes,
}

impl Reply {
    fn header(&self, name: &str) -> &str {
        self.headers[name].to_str().unwrap()
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }
}

/// One request through the middleware to an API with `options`: the status the caller
/// gets, how many requests the API saw (so how many retries), the nonce the retry
/// carried, and the case's own checks of the reply and what the API saw.
struct Case {
    name: &'static str,
    options: ApiOptions,
    method: &'static str,
    path: &'static str,
    content_type: Option<&'static str>,
    body: Option<&'static str>,
    status: u16,
    requests: usize,
    /// The `nonce` claim of the second request, when there is one.
    retry_nonce: Option<&'static str>,
    check: fn(&str, &Reply, &[Seen]),
}

impl Default for Case {
    fn default() -> Self {
        Self {
            name: "",
            options: ApiOptions::default(),
            method: "GET",
            path: "/v1/items",
            content_type: None,
            body: None,
            status: 200,
            requests: 1,
            retry_nonce: None,
            check: |_, _, _| {},
        }
    }
}

/// Runs every case against an API of its own; a failure names the case.
async fn run_cases(cases: Vec<Case>) {
    for c in cases {
        let name = c.name;
        let api = Api::start(c.options).await;
        let (key, _) = client_key();
        let client = http_client(DpopMiddleware::new(key));
        let url = api.at(c.path);
        let method = reqwest::Method::from_bytes(c.method.as_bytes()).unwrap();
        let mut request = client.request(method, &url);
        if let Some(content_type) = c.content_type {
            request = request.header("content-type", content_type);
        }
        if let Some(body) = c.body {
            request = request.body(body);
        }
        let r = request.send().await.unwrap();
        let reply = Reply {
            status: r.status().as_u16(),
            url: r.url().to_string(),
            headers: r.headers().clone(),
            body: r.bytes().await.unwrap(),
        };
        let seen = api.seen();
        assert_eq!(reply.status, c.status, "{name}: {seen:#?}");
        assert_eq!(
            reply.url, url,
            "{name}: the caller gets the response of its URL"
        );
        assert_eq!(seen.len(), c.requests, "{name}: {seen:#?}");
        if let Some(nonce) = c.retry_nonce {
            assert_eq!(seen[1].claim("nonce"), Some(nonce), "{name}: {seen:#?}");
        }
        (c.check)(name, &reply, &seen);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nonce_challenges_and_retries() {
    run_cases(vec![
        Case {
            name: "a lower-case challenge scheme is understood",
            options: ApiOptions {
                nonces: true,
                lowercase_scheme: true,
                ..ApiOptions::default()
            },
            requests: 2,
            check: |name, _, seen| {
                assert!(
                    seen[0].status == 401
                        && seen[1].claim("nonce") == seen[0].nonce_sent.as_deref(),
                    "{name}: {seen:#?}"
                );
            },
            ..Case::default()
        },
        Case {
            name: "a byte body is sent again on retry",
            options: ApiOptions {
                nonces: true,
                ..ApiOptions::default()
            },
            method: "PUT",
            path: "/v1/items/1",
            content_type: Some("application/json"),
            body: Some("{\"a\":1}"),
            requests: 2,
            check: |name, _, seen| {
                for s in seen {
                    assert_eq!(s.body, b"{\"a\":1}", "{name}");
                    assert_eq!(s.header("content-type"), Some("application/json"), "{name}");
                    assert_eq!(s.claim("htm"), Some("PUT"), "{name}");
                }
            },
            ..Case::default()
        },
        Case {
            name: "a 400 nonce loop gives the caller the 400 and its body",
            options: ApiOptions {
                misbehave: Some(Misbehaviour::AlwaysNonce400),
                ..ApiOptions::default()
            },
            method: "POST",
            path: "/token?x=1",
            body: Some("grant_type=client_credentials"),
            status: 400,
            requests: 2,
            retry_nonce: Some("nonce-0"),
            check: |name, reply, seen| {
                assert_eq!(reply.header("dpop-nonce"), "nonce-1", "{name}");
                // The body was read to find the error code; the caller gets the same
                // response: URL, headers and body.
                assert!(reply.header("content-type").contains("json"), "{name}");
                assert_eq!(reply.json()["error"], "use_dpop_nonce", "{name}");
                assert_eq!(
                    seen[1].body, b"grant_type=client_credentials",
                    "{name}: the body is sent again"
                );
            },
            ..Case::default()
        },
        Case {
            // Servers that stream their error bodies send no Content-Length.
            name: "a chunked 400 nonce challenge is answered",
            options: ApiOptions {
                misbehave: Some(Misbehaviour::ChunkedNonce400Once),
                ..ApiOptions::default()
            },
            method: "POST",
            body: Some("a=b"),
            requests: 2,
            retry_nonce: Some("nonce-0"),
            ..Case::default()
        },
        Case {
            name: "a large chunked 400 reaches the caller whole and is not retried",
            options: ApiOptions {
                misbehave: Some(Misbehaviour::LargeChunked400),
                ..ApiOptions::default()
            },
            method: "POST",
            path: "/token",
            body: Some("a=b"),
            status: 400,
            requests: 1,
            // Past the inspection limit the client does not read the error, so no retry;
            // every byte still reaches the caller.
            check: |name, reply, _| {
                let body = reply.json();
                assert_eq!(body["error"], "use_dpop_nonce", "{name}");
                assert_eq!(body["pad"].as_str().unwrap().len(), 20 * 1024, "{name}");
            },
            ..Case::default()
        },
    ])
    .await;
}

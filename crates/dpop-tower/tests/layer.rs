//! The layer in-process, with a static token source and a fixed clock: every rejection
//! path, each asserting status, `WWW-Authenticate` and `DPoP-Nonce` exactly.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dpop_core::jwt::{AccessToken, TokenError};
use dpop_core::{
    Algorithm, Error, FixedClock, Insert, MemoryReplayStore, NonceSecret, PrivateKey, ProofBuilder,
    Reason, ReplayKey, ReplayStore, ReplayStoreError, StatelessNonces, SystemRandomSource,
    UnixTime,
};
use dpop_tower::{
    BoxFuture, DpopEvents, DpopIdentity, DpopLayer, DpopMode, DpopSettings, HtuSource, Outcome,
    ResourceMetadata, Route, RoutePolicy, Routes, Scheme, TokenVerifier,
};
use http::{Request, Response};
use tower::{Layer, Service, ServiceExt};

pub(crate) const NOW: u64 = 1_700_000_000;
const ORIGIN: &str = "https://api.example.com";
const ALGS: &str = r#"algs="ES256 ES384 EdDSA Ed25519 PS256 RS256""#;

/// Tokens the test knows, with a call counter (to see the cache work).
#[derive(Default)]
struct StaticTokens {
    tokens: HashMap<String, AccessToken>,
    calls: AtomicUsize,
    down: bool,
}

impl TokenVerifier for StaticTokens {
    fn verify<'a>(
        &'a self,
        token: &'a str,
        _now: UnixTime,
    ) -> BoxFuture<'a, Result<AccessToken, Error>> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let r = if self.down {
            Err(Error::TokenSourceUnavailable("test: issuer down"))
        } else {
            self.tokens
                .get(token)
                .cloned()
                .ok_or(Error::Token(TokenError::SignatureInvalid))
        };
        Box::pin(async move { r })
    }
}

#[derive(Default)]
struct Events(Mutex<Vec<Outcome>>, AtomicUsize, Mutex<Vec<i64>>);

impl DpopEvents for Events {
    fn outcome(&self, outcome: Outcome, _elapsed: Duration) {
        self.0.lock().unwrap().push(outcome);
    }
    fn nonce_challenge(&self) {
        self.1.fetch_add(1, Ordering::SeqCst);
    }
    fn proof_accepted(&self, iat_offset_secs: i64) {
        self.2.lock().unwrap().push(iat_offset_secs);
    }
}

struct Down;
impl ReplayStore for Down {
    fn insert_if_absent(
        &self,
        _: &ReplayKey,
        _: UnixTime,
        _: UnixTime,
    ) -> Result<Insert, ReplayStoreError> {
        Err(ReplayStoreError::Timeout)
    }
}

struct Fixture {
    key: PrivateKey,
    other_key: PrivateKey,
    tokens: Arc<StaticTokens>,
    events: Arc<Events>,
    nonces: Arc<StatelessNonces>,
}

const BOUND: &str = "bound-token";
const UNBOUND: &str = "bearer-token";
const ADMIN: &str = "admin-token";

fn fixture_with(down: bool) -> Fixture {
    let key = PrivateKey::generate(Algorithm::Es256).unwrap();
    let other_key = PrivateKey::generate(Algorithm::Es256).unwrap();
    let exp = UnixTime::from_secs(NOW + 600);
    let mut tokens = HashMap::new();
    let jkt = Some(key.thumbprint().clone());
    tokens.insert(
        BOUND.to_owned(),
        AccessToken::new(
            Some("svc-a".into()),
            Some("ci".into()),
            vec!["read".into()],
            jkt.clone(),
            exp,
        ),
    );
    tokens.insert(
        ADMIN.to_owned(),
        AccessToken::new(
            Some("svc-a".into()),
            Some("ci".into()),
            vec!["read".into(), "admin".into()],
            jkt,
            exp,
        ),
    );
    tokens.insert(
        UNBOUND.to_owned(),
        AccessToken::new(Some("legacy".into()), None, vec!["read".into()], None, exp),
    );
    let nonces = Arc::new(StatelessNonces::new(NonceSecret::new(&[9; 32]).unwrap()));
    Fixture {
        key,
        other_key,
        tokens: Arc::new(StaticTokens {
            tokens,
            calls: AtomicUsize::new(0),
            down,
        }),
        events: Arc::default(),
        nonces,
    }
}

fn fixture() -> Fixture {
    fixture_with(false)
}

fn routes() -> Routes {
    Routes::new(RoutePolicy::new(DpopMode::Required))
        .route(Route::new(
            "/nonce",
            RoutePolicy::new(DpopMode::Required).with_nonce(true),
        ))
        .route(Route::new(
            "/legacy",
            RoutePolicy::new(DpopMode::AllowBearer),
        ))
        .route(Route::new(
            "/admin",
            RoutePolicy::new(DpopMode::Required).with_scopes(["admin"]),
        ))
        .route(Route::new(
            "/shadow",
            RoutePolicy::new(DpopMode::ReportOnly),
        ))
        .route(Route::new("/public", RoutePolicy::new(DpopMode::Off)))
}

fn settings(f: &Fixture) -> DpopSettings {
    let mut s = DpopSettings::new(HtuSource::PublicUrl(ORIGIN.into()));
    s.routes = routes();
    s.nonces = Some(f.nonces.clone());
    s.clock = Arc::new(FixedClock(UnixTime::from_secs(NOW)));
    s.events = f.events.clone();
    s
}

/// The inner service: answers 200 with the identity's subject and scheme.
async fn app(req: Request<String>) -> Result<Response<String>, Infallible> {
    let body = match req.extensions().get::<DpopIdentity>() {
        Some(id) => format!("{}:{:?}", id.subject.clone().unwrap_or_default(), id.scheme),
        None => "anonymous".into(),
    };
    Ok(Response::new(body))
}

/// Lets one fixture pick memory or a failing store.
trait ErasedStore: Send + Sync {
    fn insert(
        &self,
        key: &ReplayKey,
        exp: UnixTime,
        now: UnixTime,
    ) -> Result<Insert, ReplayStoreError>;
}
impl<T: ReplayStore> ErasedStore for T {
    fn insert(
        &self,
        key: &ReplayKey,
        exp: UnixTime,
        now: UnixTime,
    ) -> Result<Insert, ReplayStoreError> {
        self.insert_if_absent(key, exp, now)
    }
}
struct Store(Arc<dyn ErasedStore>);
impl ReplayStore for Store {
    fn insert_if_absent(
        &self,
        key: &ReplayKey,
        exp: UnixTime,
        now: UnixTime,
    ) -> Result<Insert, ReplayStoreError> {
        self.0.insert(key, exp, now)
    }
}

type AppFuture = Pin<Box<dyn Future<Output = Result<Response<String>, Infallible>> + Send>>;
type AppFn = fn(Request<String>) -> AppFuture;

fn boxed_app(req: Request<String>) -> AppFuture {
    Box::pin(app(req))
}

struct Harness {
    svc: dpop_tower::DpopService<tower::util::ServiceFn<AppFn>, Store>,
}

fn harness_with(f: &Fixture, s: DpopSettings, store: Arc<dyn ErasedStore>) -> Harness {
    let layer = DpopLayer::new(s, f.tokens.clone(), Store(store)).unwrap();
    Harness {
        svc: layer.layer(tower::service_fn(boxed_app as AppFn)),
    }
}

fn harness(f: &Fixture) -> Harness {
    harness_with(
        f,
        settings(f),
        Arc::new(MemoryReplayStore::with_capacity(10_000)),
    )
}

impl Harness {
    async fn send(&mut self, req: Request<String>) -> Response<String> {
        self.svc.ready().await.unwrap().call(req).await.unwrap()
    }
}

fn proof(method: &str, path: &str, token: Option<&str>) -> ProofBuilder {
    let b = ProofBuilder::new(method, &format!("{ORIGIN}{path}")).unwrap();
    match token {
        Some(t) => b.access_token(t),
        None => b,
    }
}

fn sign(b: &ProofBuilder, key: &PrivateKey) -> String {
    b.sign(key, &SystemRandomSource, UnixTime::from_secs(NOW))
        .unwrap()
}

fn request(method: &str, path: &str) -> http::request::Builder {
    Request::builder()
        .method(method)
        .uri(path)
        .header("host", "internal:8080")
}

/// A correct DPoP request for `path` with `token`, signed by `key`.
fn dpop_request(key: &PrivateKey, method: &str, path: &str, token: &str) -> Request<String> {
    let p = sign(&proof(method, path, Some(token)), key);
    request(method, path)
        .header("authorization", format!("DPoP {token}"))
        .header("dpop", p)
        .body(String::new())
        .unwrap()
}

fn www(r: &Response<String>) -> String {
    r.headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default()
}

fn nonce(r: &Response<String>) -> Option<String> {
    r.headers()
        .get("dpop-nonce")
        .map(|v| v.to_str().unwrap().to_owned())
}

fn last_outcome(f: &Fixture) -> Outcome {
    *f.events.0.lock().unwrap().last().unwrap()
}

#[tokio::test]
async fn valid_request_passes_with_identity() {
    let f = fixture();
    let mut h = harness(&f);
    let r = h
        .send(dpop_request(&f.key, "GET", "/v1/items?page=2", BOUND))
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.body(), "svc-a:Dpop");
    assert!(www(&r).is_empty() && nonce(&r).is_none());
    assert_eq!(last_outcome(&f), Outcome::Accepted);
    assert_eq!(
        f.events.2.lock().unwrap().as_slice(),
        &[0],
        "iat offset is recorded"
    );
    // Lower-case scheme, extra spaces after it.
    let p = sign(&proof("GET", "/v1/items", Some(BOUND)), &f.key);
    let req = request("GET", "/v1/items")
        .header("authorization", format!("dpop   {BOUND}"))
        .header("dpop", p)
        .body(String::new())
        .unwrap();
    assert_eq!(h.send(req).await.status(), 200);
}

#[tokio::test]
async fn the_service_sees_the_identity_as_an_extension() {
    let f = fixture();
    let layer = DpopLayer::new(
        settings(&f),
        f.tokens.clone(),
        MemoryReplayStore::with_capacity(100),
    )
    .unwrap();
    let seen = Arc::new(Mutex::new(None));
    let seen2 = seen.clone();
    let inner = tower::service_fn(move |req: Request<String>| {
        let seen = seen2.clone();
        async move {
            *seen.lock().unwrap() = req.extensions().get::<DpopIdentity>().cloned();
            Ok::<_, Infallible>(Response::new(String::new()))
        }
    });
    let mut svc = layer.layer(inner);
    let r = svc
        .ready()
        .await
        .unwrap()
        .call(dpop_request(&f.key, "POST", "/v1/items", BOUND))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let id = seen.lock().unwrap().clone().unwrap();
    assert_eq!(id.subject.as_deref(), Some("svc-a"));
    assert_eq!(id.client_id.as_deref(), Some("ci"));
    assert_eq!(id.jkt.as_ref(), Some(f.key.thumbprint()));
    assert_eq!(id.scopes, vec!["read"]);
    assert_eq!(id.scheme, Scheme::Dpop);
}

// ---- rejections, as tables of cases ----

/// What a case's response must show; `None` is not checked by that case.
#[derive(Default)]
struct Expect {
    status: Option<u16>,
    www: Option<Www>,
    body: Option<&'static str>,
    outcome: Option<Outcome>,
}

/// A check of the `WWW-Authenticate` value.
enum Www {
    Is(String),
    StartsWith(&'static str),
    Contains(&'static str),
}

/// Builds a case's request.
type MakeRequest = fn(&Fixture) -> Request<String>;

/// One request and what its response must show. `why` is said when it does not.
struct Case {
    name: &'static str,
    why: &'static str,
    request: MakeRequest,
    expect: Expect,
}

impl Case {
    fn new(name: &'static str, request: MakeRequest, expect: Expect) -> Self {
        Self {
            name,
            why: "",
            request,
            expect,
        }
    }

    fn because(mut self, why: &'static str) -> Self {
        self.why = why;
        self
    }
}

/// Sends every case, in order, through `h`; a failure names the case.
async fn run_cases(f: &Fixture, h: &mut Harness, cases: Vec<Case>) {
    for c in cases {
        let r = h.send((c.request)(f)).await;
        let (name, why, e) = (c.name, c.why, c.expect);
        let got = www(&r);
        if let Some(status) = e.status {
            assert_eq!(r.status().as_u16(), status, "{name}: {why} ({got})");
        }
        match e.www {
            Some(Www::Is(want)) => assert_eq!(got, want, "{name}: {why}"),
            Some(Www::StartsWith(want)) => assert!(got.starts_with(want), "{name}: {got}"),
            Some(Www::Contains(want)) => assert!(got.contains(want), "{name}: {got}"),
            None => {}
        }
        if let Some(body) = e.body {
            assert_eq!(r.body(), body, "{name}: {why}");
        }
        if let Some(outcome) = e.outcome {
            assert_eq!(last_outcome(f), outcome, "{name}: {why}");
        }
    }
}

/// `method path` with `headers` and an empty body.
fn with_headers(method: &str, path: &str, headers: &[(&str, String)]) -> Request<String> {
    let mut b = request(method, path);
    for (name, value) in headers {
        b = b.header(*name, value);
    }
    b.body(String::new()).unwrap()
}

fn bearer(path: &str, token: &str) -> Request<String> {
    with_headers("GET", path, &[("authorization", format!("Bearer {token}"))])
}

/// `GET /v1/items` with the DPoP scheme for [`BOUND`] and `proof`.
fn items_with_proof(proof: String) -> Request<String> {
    with_headers(
        "GET",
        "/v1/items",
        &[("authorization", format!("DPoP {BOUND}")), ("dpop", proof)],
    )
}

fn dpop_challenge(code: &str, desc: &str) -> String {
    format!(r#"DPoP error="{code}", error_description="{desc}", {ALGS}"#)
}

#[tokio::test]
async fn no_credentials() {
    let f = fixture();
    let mut h = harness(&f);
    run_cases(
        &f,
        &mut h,
        vec![
            Case::new(
                "nothing",
                |_| with_headers("GET", "/v1/items", &[]),
                Expect {
                    status: Some(401),
                    www: Some(Www::Is(format!("DPoP {ALGS}"))),
                    body: Some(""),
                    ..Expect::default()
                },
            )
            .because("no error info without credentials (Fig. 15)"),
            // A route that allows Bearer also offers a Bearer challenge (Fig. 17).
            Case::new(
                "nothing, Bearer allowed",
                |_| with_headers("GET", "/legacy/x", &[]),
                Expect {
                    www: Some(Www::Is(format!("Bearer, DPoP {ALGS}"))),
                    ..Expect::default()
                },
            ),
            // An unsupported scheme counts as no credentials.
            Case::new(
                "Basic scheme",
                |_| {
                    with_headers(
                        "GET",
                        "/v1/items",
                        &[("authorization", "Basic dXNlcjpwdw==".to_owned())],
                    )
                },
                Expect {
                    status: Some(401),
                    www: Some(Www::Is(format!("DPoP {ALGS}"))),
                    outcome: Some(Outcome::Rejected(Reason::CredentialsMissing)),
                    ..Expect::default()
                },
            ),
        ],
    )
    .await;
}

#[tokio::test]
async fn malformed_and_multiple_authorization() {
    let f = fixture();
    let mut h = harness(&f);
    let multiple = "Multiple methods used to include access token";
    let mut cases = vec![
        Case::new(
            "two Authorization headers",
            |f| {
                let p = sign(&proof("GET", "/v1/items", Some(BOUND)), &f.key);
                with_headers(
                    "GET",
                    "/v1/items",
                    &[
                        ("authorization", format!("DPoP {BOUND}")),
                        ("authorization", format!("Bearer {BOUND}")),
                        ("dpop", p),
                    ],
                )
            },
            Expect {
                status: Some(400),
                www: Some(Www::Is(dpop_challenge("invalid_request", multiple))),
                ..Expect::default()
            },
        ),
        // On a route allowing Bearer the error goes into both challenges (Fig. 19).
        Case::new(
            "two Authorization headers, Bearer allowed",
            |_| {
                with_headers(
                    "GET",
                    "/legacy/x",
                    &[
                        ("authorization", format!("DPoP {BOUND}")),
                        ("authorization", format!("Bearer {BOUND}")),
                    ],
                )
            },
            Expect {
                www: Some(Www::Is(format!(
                    r#"Bearer error="invalid_request", error_description="{multiple}", DPoP error="invalid_request", error_description="{multiple}", {ALGS}"#
                ))),
                ..Expect::default()
            },
        ),
    ];
    let malformed: [(&'static str, MakeRequest); 3] = [
        ("DPoP", |_| {
            with_headers("GET", "/v1/items", &[("authorization", "DPoP".to_owned())])
        }),
        ("DPoP a b", |_| {
            with_headers(
                "GET",
                "/v1/items",
                &[("authorization", "DPoP a b".to_owned())],
            )
        }),
        ("DPoP a\"b", |_| {
            with_headers(
                "GET",
                "/v1/items",
                &[("authorization", "DPoP a\"b".to_owned())],
            )
        }),
    ];
    for (name, request) in malformed {
        cases.push(Case::new(
            name,
            request,
            Expect {
                status: Some(400),
                www: Some(Www::Contains(r#"error="invalid_request""#)),
                ..Expect::default()
            },
        ));
    }
    run_cases(&f, &mut h, cases).await;
}

#[tokio::test]
async fn bearer_tokens() {
    let f = fixture();
    let mut h = harness(&f);
    let downgrade = "DPoP-bound access token presented as a Bearer token";
    run_cases(
        &f,
        &mut h,
        vec![
            // A DPoP-bound token as Bearer: refused everywhere (RFC 9449 §7.2).
            Case::new(
                "bound token as Bearer",
                |_| bearer("/v1/items", BOUND),
                Expect {
                    status: Some(401),
                    www: Some(Www::Is(dpop_challenge("invalid_token", downgrade))),
                    outcome: Some(Outcome::Rejected(Reason::BearerDowngrade)),
                    ..Expect::default()
                },
            ),
            Case::new(
                "bound token as Bearer, Bearer allowed",
                |_| bearer("/legacy/x", BOUND),
                Expect {
                    status: Some(401),
                    www: Some(Www::Is(format!(
                        r#"Bearer error="invalid_token", error_description="{downgrade}", DPoP {ALGS}"#
                    ))),
                    ..Expect::default()
                },
            )
            .because("the error goes in the Bearer challenge (Fig. 18)"),
            // An unbound token: refused where DPoP is required, accepted where Bearer is
            // allowed.
            Case::new(
                "unbound token as Bearer",
                |_| bearer("/v1/items", UNBOUND),
                Expect {
                    status: Some(401),
                    outcome: Some(Outcome::Rejected(Reason::BearerNotAllowed)),
                    ..Expect::default()
                },
            ),
            Case::new(
                "unbound token as Bearer, Bearer allowed",
                |_| bearer("/legacy/x", UNBOUND),
                Expect {
                    status: Some(200),
                    body: Some("legacy:Bearer"),
                    outcome: Some(Outcome::AcceptedBearer),
                    ..Expect::default()
                },
            ),
            Case::new(
                "unknown token as Bearer",
                |_| bearer("/legacy/x", "nope"),
                Expect {
                    www: Some(Www::Is(format!(
                        r#"Bearer error="invalid_token", error_description="Invalid access token", DPoP {ALGS}"#
                    ))),
                    ..Expect::default()
                },
            ),
        ],
    )
    .await;
}

#[tokio::test]
async fn token_problems() {
    let f = fixture();
    let mut h = harness(&f);
    run_cases(
        &f,
        &mut h,
        vec![
            // DPoP scheme with a token that is not bound to a key.
            Case::new(
                "unbound token with a proof",
                |f| dpop_request(&f.key, "GET", "/v1/items", UNBOUND),
                Expect {
                    status: Some(401),
                    www: Some(Www::Is(dpop_challenge(
                        "invalid_token",
                        "A DPoP-bound access token is required",
                    ))),
                    ..Expect::default()
                },
            ),
            Case::new(
                "unknown token",
                |f| dpop_request(&f.key, "GET", "/v1/items", "forged"),
                Expect {
                    www: Some(Www::Is(dpop_challenge(
                        "invalid_token",
                        "Invalid access token",
                    ))),
                    outcome: Some(Outcome::Rejected(Reason::TokenSignatureInvalid)),
                    ..Expect::default()
                },
            ),
            // Proof signed by another key: the binding fails (Fig. 16).
            Case::new(
                "proof by another key",
                |f| dpop_request(&f.other_key, "GET", "/v1/items", BOUND),
                Expect {
                    status: Some(401),
                    www: Some(Www::Is(dpop_challenge(
                        "invalid_token",
                        "Invalid DPoP key binding",
                    ))),
                    ..Expect::default()
                },
            ),
        ],
    )
    .await;
}

#[tokio::test]
async fn proof_problems() {
    let f = fixture();
    let mut h = harness(&f);
    let invalid = |desc: &str| dpop_challenge("invalid_dpop_proof", desc);
    run_cases(
        &f,
        &mut h,
        vec![
            Case::new(
                "no DPoP header",
                |_| {
                    with_headers(
                        "GET",
                        "/v1/items",
                        &[("authorization", format!("DPoP {BOUND}"))],
                    )
                },
                Expect {
                    status: Some(401),
                    www: Some(Www::Is(invalid("DPoP proof required"))),
                    ..Expect::default()
                },
            ),
            // Two DPoP headers: invalid_request, 400.
            Case::new(
                "two DPoP headers",
                |f| {
                    let p = sign(&proof("GET", "/v1/items", Some(BOUND)), &f.key);
                    with_headers(
                        "GET",
                        "/v1/items",
                        &[
                            ("authorization", format!("DPoP {BOUND}")),
                            ("dpop", p.clone()),
                            ("dpop", p),
                        ],
                    )
                },
                Expect {
                    status: Some(400),
                    www: Some(Www::StartsWith(r#"DPoP error="invalid_request""#)),
                    ..Expect::default()
                },
            ),
            // Proof for another URL, another method, another token.
            Case::new(
                "proof for another URL",
                |f| items_with_proof(sign(&proof("GET", "/v1/other", Some(BOUND)), &f.key)),
                Expect {
                    status: Some(401),
                    www: Some(Www::Is(invalid(
                        "DPoP proof does not match the request method and URI",
                    ))),
                    outcome: Some(Outcome::Rejected(Reason::HtuMismatch)),
                    ..Expect::default()
                },
            ),
            Case::new(
                "proof for another method",
                |f| dpop_request_with_proof(f, "DELETE", "/v1/items", BOUND, "GET"),
                Expect {
                    status: Some(401),
                    outcome: Some(Outcome::Rejected(Reason::HtmMismatch)),
                    ..Expect::default()
                },
            ),
            Case::new(
                "proof for another token",
                |f| items_with_proof(sign(&proof("GET", "/v1/items", Some(ADMIN)), &f.key)),
                Expect {
                    www: Some(Www::Is(invalid(
                        "DPoP proof ath does not match the access token",
                    ))),
                    ..Expect::default()
                },
            ),
            Case::new(
                "garbage proof",
                |_| items_with_proof("not.a.proof".to_owned()),
                Expect {
                    www: Some(Www::Is(invalid("Invalid DPoP proof"))),
                    ..Expect::default()
                },
            ),
            Case::new(
                "old proof",
                |f| {
                    items_with_proof(
                        proof("GET", "/v1/items", Some(BOUND))
                            .sign(&f.key, &SystemRandomSource, UnixTime::from_secs(NOW - 61))
                            .unwrap(),
                    )
                },
                Expect {
                    www: Some(Www::Is(invalid(
                        "DPoP proof iat is outside the acceptance window",
                    ))),
                    ..Expect::default()
                },
            ),
        ],
    )
    .await;
    // Replay.
    let req = dpop_request(&f.key, "GET", "/v1/items", BOUND);
    let copy = clone_request(&req);
    assert_eq!(h.send(req).await.status(), 200);
    let r = h.send(copy).await;
    assert_eq!(
        (r.status().as_u16(), www(&r)),
        (401, invalid("DPoP proof was already used"))
    );
    assert_eq!(last_outcome(&f), Outcome::Rejected(Reason::Replay));
}

fn dpop_request_with_proof(
    f: &Fixture,
    method: &str,
    path: &str,
    token: &str,
    proof_method: &str,
) -> Request<String> {
    let p = sign(&proof(proof_method, path, Some(token)), &f.key);
    request(method, path)
        .header("authorization", format!("DPoP {token}"))
        .header("dpop", p)
        .body(String::new())
        .unwrap()
}

fn clone_request(r: &Request<String>) -> Request<String> {
    let mut b = Request::builder().method(r.method()).uri(r.uri());
    for (k, v) in r.headers() {
        b = b.header(k, v);
    }
    b.body(String::new()).unwrap()
}

#[tokio::test]
async fn nonces() {
    let f = fixture();
    let mut h = harness(&f);
    let r = h.send(dpop_request(&f.key, "GET", "/nonce/x", BOUND)).await;
    assert_eq!(r.status(), 401);
    assert_eq!(
        www(&r),
        format!(
            r#"DPoP error="use_dpop_nonce", error_description="Server requires nonce in DPoP proof", {ALGS}"#
        )
    );
    let issued = nonce(&r).expect("DPoP-Nonce on use_dpop_nonce");
    assert_eq!(r.headers().get("cache-control").unwrap(), "no-store");
    assert_eq!(f.events.1.load(Ordering::SeqCst), 1);
    // Retry with the nonce: accepted, no new nonce needed.
    let with_nonce = |n: &str| {
        let p = sign(
            &proof("GET", "/nonce/x", Some(BOUND)).nonce(n).unwrap(),
            &f.key,
        );
        request("GET", "/nonce/x")
            .header("authorization", format!("DPoP {BOUND}"))
            .header("dpop", p)
            .body(String::new())
            .unwrap()
    };
    let r = h.send(with_nonce(&issued)).await;
    assert_eq!(r.status(), 200);
    assert!(nonce(&r).is_none());
    // A nonce from the previous step still works and the response hands out the next one.
    let previous =
        dpop_core::NonceValidator::issue(f.nonces.as_ref(), UnixTime::from_secs(NOW - 60)).unwrap();
    let r = h.send(with_nonce(&previous)).await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        nonce(&r).as_deref(),
        Some(issued.as_str()),
        "next nonce on success (RFC 9449 §8.2)"
    );
    // A nonce that is not ours.
    let r = h.send(with_nonce("not-our-nonce")).await;
    assert_eq!(r.status(), 401);
    assert!(www(&r).starts_with(r#"DPoP error="use_dpop_nonce""#));
    assert_eq!(nonce(&r).as_deref(), Some(issued.as_str()));
    // Routes without nonces ignore them.
    assert_eq!(
        h.send(dpop_request(&f.key, "GET", "/v1/items", BOUND))
            .await
            .status(),
        200
    );
}

#[tokio::test]
async fn scopes() {
    let f = fixture();
    let mut h = harness(&f);
    let r = h
        .send(dpop_request(&f.key, "GET", "/admin/users", BOUND))
        .await;
    assert_eq!(r.status(), 403);
    assert_eq!(
        www(&r),
        format!(
            r#"DPoP error="insufficient_scope", error_description="The access token lacks a required scope", {ALGS}, scope="admin""#
        )
    );
    // The refused proof was not recorded: the same proof with the right token would pass
    // (it cannot, since ath differs), and the admin token passes.
    assert_eq!(
        h.send(dpop_request(&f.key, "GET", "/admin/users", ADMIN))
            .await
            .status(),
        200
    );
}

#[tokio::test]
async fn report_only_and_off_routes_forward() {
    let f = fixture();
    let mut h = harness(&f);
    let r = h
        .send(request("GET", "/shadow/x").body(String::new()).unwrap())
        .await;
    assert_eq!((r.status().as_u16(), r.body().as_str()), (200, "anonymous"));
    assert_eq!(
        last_outcome(&f),
        Outcome::WouldReject(Reason::CredentialsMissing)
    );
    let r = h
        .send(dpop_request(&f.key, "GET", "/shadow/x", BOUND))
        .await;
    assert_eq!(
        r.body(),
        "svc-a:Dpop",
        "valid requests still get an identity"
    );
    let before = f.events.0.lock().unwrap().len();
    let r = h
        .send(request("GET", "/public/x").body(String::new()).unwrap())
        .await;
    assert_eq!((r.status().as_u16(), r.body().as_str()), (200, "anonymous"));
    assert_eq!(
        f.events.0.lock().unwrap().len(),
        before,
        "off routes are not even counted"
    );
}

#[tokio::test]
async fn failures_of_dependencies_are_503() {
    // Replay store down: refused, not accepted.
    let f = fixture();
    let mut h = harness_with(&f, settings(&f), Arc::new(Down));
    let r = h
        .send(dpop_request(&f.key, "GET", "/v1/items", BOUND))
        .await;
    assert_eq!(r.status(), 503);
    assert!(www(&r).is_empty());
    assert_eq!(r.headers().get("retry-after").unwrap(), "1");
    assert_eq!(
        last_outcome(&f),
        Outcome::Rejected(Reason::ReplayStoreUnavailable)
    );
    // With the explicit, dangerous fail-open setting, it passes and is counted as such.
    let mut s = settings(&f);
    s.dangerous_fail_open_on_replay_store_errors();
    let mut h = harness_with(&f, s, Arc::new(Down));
    let r = h
        .send(dpop_request(&f.key, "GET", "/v1/items", BOUND))
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        last_outcome(&f),
        Outcome::FailedOpen(Reason::ReplayStoreUnavailable)
    );
    // Token source down.
    let f = fixture_with(true);
    let mut h = harness(&f);
    let r = h
        .send(dpop_request(&f.key, "GET", "/v1/items", BOUND))
        .await;
    assert_eq!(r.status(), 503);
    assert_eq!(
        last_outcome(&f),
        Outcome::Rejected(Reason::TokenSourceUnavailable)
    );
    // No clock.
    struct NoClock;
    impl dpop_core::Clock for NoClock {
        fn now(&self) -> Option<UnixTime> {
            None
        }
    }
    let f = fixture();
    let mut s = settings(&f);
    s.clock = Arc::new(NoClock);
    let mut h = harness_with(&f, s, Arc::new(MemoryReplayStore::with_capacity(10)));
    assert_eq!(
        h.send(dpop_request(&f.key, "GET", "/v1/items", BOUND))
            .await
            .status(),
        503
    );
}

#[tokio::test]
async fn verified_tokens_are_cached() {
    let f = fixture();
    let mut h = harness(&f);
    for _ in 0..5 {
        assert_eq!(
            h.send(dpop_request(&f.key, "GET", "/v1/items", BOUND))
                .await
                .status(),
            200
        );
    }
    assert_eq!(
        f.tokens.calls.load(Ordering::SeqCst),
        1,
        "one token check for five requests"
    );
    // With the cache off, every request checks the token.
    let f = fixture();
    let mut s = settings(&f);
    s.token_cache_ttl = Duration::ZERO;
    let mut h = harness_with(&f, s, Arc::new(MemoryReplayStore::with_capacity(100)));
    for _ in 0..3 {
        assert_eq!(
            h.send(dpop_request(&f.key, "GET", "/v1/items", BOUND))
                .await
                .status(),
            200
        );
    }
    assert_eq!(f.tokens.calls.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn configuration_is_checked_at_start() {
    let f = fixture();
    let mut s = settings(&f);
    s.nonces = None;
    assert!(matches!(
        DpopLayer::new(s, f.tokens.clone(), MemoryReplayStore::with_capacity(1)),
        Err(dpop_tower::ConfigError::NoncesNotConfigured)
    ));
    let mut s = settings(&f);
    s.htu = HtuSource::PublicUrl("ftp://x".into());
    assert!(matches!(
        DpopLayer::new(s, f.tokens, MemoryReplayStore::with_capacity(1)),
        Err(dpop_tower::ConfigError::BadPublicUrl(_))
    ));
}

// ---- one canonical request target ----

/// The hostile-target table of dpop-core, for axum users behind the layer.
const TARGETS: &str = include_str!("../../dpop-core/tests/vectors/hostile-targets.txt");

fn target_routes() -> Routes {
    Routes::new(RoutePolicy::new(DpopMode::Required))
        .route(Route::new("/healthcheck", RoutePolicy::new(DpopMode::Off)))
        .route(Route::new(
            "/v1",
            RoutePolicy::new(DpopMode::Required).with_scopes(["read"]),
        ))
        .route(Route::new(
            "/v1/admin",
            RoutePolicy::new(DpopMode::Required).with_scopes(["admin"]),
        ))
        .route(
            Route::new(
                "/v1/write",
                RoutePolicy::new(DpopMode::Required).with_scopes(["write"]),
            )
            .with_methods(vec![http::Method::POST]),
        )
        .route(Route::new(
            "/shadow",
            RoutePolicy::new(DpopMode::ReportOnly),
        ))
        .route(Route::new(
            "/legacy",
            RoutePolicy::new(DpopMode::AllowBearer),
        ))
        .route(Route::new(
            "/files",
            RoutePolicy::new(DpopMode::Required).dangerous_forward_encoded_slashes(),
        ))
        .route(Route::new(
            "/files/private",
            RoutePolicy::new(DpopMode::Required).with_scopes(["admin"]),
        ))
        .route(Route::new(
            "/caf%C3%A9",
            RoutePolicy::new(DpopMode::Required).with_scopes(["admin"]),
        ))
        .route(Route::new(
            "/keys",
            RoutePolicy::new(DpopMode::Required).with_scopes(["admin"]),
        ))
        .route(
            Route::new(
                "/reports",
                RoutePolicy::new(DpopMode::Required).with_scopes(["admin"]),
            )
            .with_methods(vec![http::Method::GET]),
        )
}

/// `(URI, AuthorizedTarget)` of each request the inner service saw.
type Seen = Arc<Mutex<Vec<(String, String)>>>;

/// A layer over an inner service that records the URI and the authorised target it saw.
fn recording_service(
    f: &Fixture,
    s: DpopSettings,
) -> (
    impl Service<Request<String>, Response = Response<String>, Error = Infallible>,
    Seen,
) {
    let layer =
        DpopLayer::new(s, f.tokens.clone(), MemoryReplayStore::with_capacity(1000)).unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let seen2 = seen.clone();
    let inner = tower::service_fn(move |req: Request<String>| {
        let seen = seen2.clone();
        async move {
            let target = req
                .extensions()
                .get::<dpop_tower::AuthorizedTarget>()
                .map(|t| t.as_str().to_owned())
                .unwrap_or_default();
            seen.lock().unwrap().push((req.uri().to_string(), target));
            Ok::<_, Infallible>(Response::new(String::new()))
        }
    });
    (layer.layer(inner), seen)
}

/// One request through `svc`.
async fn call<S>(svc: &mut S, req: Request<String>) -> Response<String>
where
    S: Service<Request<String>, Response = Response<String>, Error = Infallible>,
{
    svc.ready().await.unwrap().call(req).await.unwrap()
}

fn target_settings(f: &Fixture) -> DpopSettings {
    let mut s = settings(f);
    s.routes = target_routes();
    s
}

#[tokio::test]
async fn hostile_targets_never_reach_the_service() {
    let f = fixture();
    let (mut svc, seen) = recording_service(&f, target_settings(&f));
    let mut checked = 0;
    for line in TARGETS
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let (expected, target) = line.split_once(' ').unwrap();
        if expected == "ok" || target.contains('{') {
            continue;
        }
        // Targets `http` cannot even represent are refused by the HTTP parser first.
        let Ok(uri) = target.parse::<http::Uri>() else {
            continue;
        };
        let req = Request::builder()
            .method("GET")
            .uri(uri)
            .header("host", "internal:8080")
            .body(String::new())
            .unwrap();
        let r = call(&mut svc, req).await;
        assert_eq!(r.status(), 400, "{target}");
        assert!(www(&r).contains(r#"error="invalid_request""#), "{target}");
        assert_eq!(
            last_outcome(&f),
            Outcome::Rejected(Reason::NonCanonicalTarget),
            "{target}"
        );
        checked += 1;
    }
    assert!(checked >= 40, "{checked} targets checked");
    assert!(
        seen.lock().unwrap().is_empty(),
        "{:?}",
        seen.lock().unwrap()
    );
}

#[tokio::test]
async fn the_service_sees_exactly_the_authorised_target() {
    let f = fixture();
    let (mut svc, seen) = recording_service(&f, target_settings(&f));
    for target in ["/v1/items?x=%2e%2e", "/v1/caf%C3%A9", "/healthcheck", "/"] {
        let r = call(&mut svc, dpop_request(&f.key, "GET", target, BOUND)).await;
        assert_eq!(r.status(), 200, "{target}");
        let last = seen.lock().unwrap().last().cloned().unwrap();
        assert_eq!(last, (target.to_owned(), target.to_owned()));
    }
}

#[tokio::test]
async fn lower_case_methods_are_refused_not_rerouted() {
    let f = fixture();
    let (mut svc, seen) = recording_service(&f, target_settings(&f));
    // A token with `read` but not `write`: `post` must not fall through to the /v1 rule.
    let r = call(&mut svc, dpop_request(&f.key, "post", "/v1/write/x", BOUND)).await;
    assert_eq!(r.status(), 400);
    assert_eq!(
        last_outcome(&f),
        Outcome::Rejected(Reason::NonCanonicalTarget)
    );
    let r = call(&mut svc, dpop_request(&f.key, "POST", "/v1/write/x", BOUND)).await;
    assert_eq!(r.status(), 403);
    assert!(seen.lock().unwrap().is_empty());
}

#[tokio::test]
async fn a_dangerous_route_forwards_only_what_stays_on_it() {
    let f = fixture();
    let (mut svc, seen) = recording_service(&f, target_settings(&f));
    let r = call(&mut svc, dpop_request(&f.key, "GET", "/files/a%2Fb", BOUND)).await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        seen.lock().unwrap().last().unwrap().1,
        "/files/a%2Fb",
        "forwarded as sent"
    );
    // Nothing but `%2F` is waived, and `%2F` must not lead onto another route when it is
    // read as `/`; elsewhere it is refused as always.
    for escape in [
        "/files/../v1/admin",
        "/files/%2e%2e/v1/admin",
        "/v1/../files/x",
        "/files/private;x/x",
        "/files//private/x",
        "/files/x/..;/private/x",
        "/files/private%2Fx",
        "/files/a%2F..%2Fprivate",
        "/files/a%2fb",
        "/v1/a%2Fb",
    ] {
        let req = request("GET", escape).body(String::new()).unwrap();
        let r = call(&mut svc, req).await;
        assert_eq!(r.status(), 400, "{escape}");
    }
    assert_eq!(seen.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn paths_whose_route_depends_on_case_are_refused() {
    let f = fixture();
    let (mut svc, seen) = recording_service(&f, target_settings(&f));
    // `/Healthcheck` is no route, `/healthcheck` is `off`: an upstream that routes without
    // case would serve the `off` route's resource under the default policy, or the other
    // way round.
    for path in [
        "/V1/admin/x",
        "/v1/Admin/x",
        "/HEALTHCHECK",
        "/Healthcheck/x",
        // Unicode case folding, and letters that fold to ASCII.
        "/caf%C3%89",
        "/CAF%C3%A9",
        "/%E2%84%AAeys",
        "/%E2%84%AAEYS",
        // Format suffixes, trailing dots and spaces, NTFS stream names.
        "/keys.json",
        "/v1/admin.json",
        "/keys.",
        "/keys%20/x",
        "/keys::$INDEX_ALLOCATION/x",
        "/healthcheck.json",
    ] {
        let r = call(&mut svc, dpop_request(&f.key, "GET", path, ADMIN)).await;
        assert_eq!(r.status(), 400, "{path}");
        assert_eq!(
            last_outcome(&f),
            Outcome::Rejected(Reason::NonCanonicalTarget)
        );
    }
    assert!(seen.lock().unwrap().is_empty());
    // Case that decides no route is fine.
    let r = call(&mut svc, dpop_request(&f.key, "GET", "/v1/Items", BOUND)).await;
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn head_is_judged_by_the_get_rule() {
    let f = fixture();
    let (mut svc, seen) = recording_service(&f, target_settings(&f));
    // Frameworks run the GET handler for HEAD: a token without the GET rule's scope is
    // refused for HEAD as for GET.
    for method in ["GET", "HEAD"] {
        let r = call(&mut svc, dpop_request(&f.key, method, "/reports", BOUND)).await;
        assert_eq!(r.status(), 403, "{method}");
    }
    assert!(seen.lock().unwrap().is_empty());
}

#[tokio::test]
async fn hosts_not_served_are_refused_before_the_proof() {
    let f = fixture();
    let mut s = settings(&f);
    s.htu = HtuSource::FromRequest {
        scheme: "https".into(),
        trusted_proxies: Vec::new(),
        allowed_hosts: vec!["api.example.com".into()],
    };
    let (mut svc, seen) = recording_service(&f, s);
    // A proof made for another service, with that service's Host.
    let p = sign(
        &ProofBuilder::new("GET", "https://other.example/v1/items")
            .unwrap()
            .access_token(BOUND),
        &f.key,
    );
    let req = Request::builder()
        .uri("/v1/items")
        .header("host", "other.example")
        .header("authorization", format!("DPoP {BOUND}"))
        .header("dpop", p)
        .body(String::new())
        .unwrap();
    let r = call(&mut svc, req).await;
    assert_eq!(r.status(), 400);
    assert_eq!(last_outcome(&f), Outcome::Rejected(Reason::HostNotAllowed));
    assert_eq!(
        f.tokens.calls.load(Ordering::SeqCst),
        0,
        "refused before the token is looked at"
    );
    // The host it does serve.
    let p = sign(&proof("GET", "/v1/items", Some(BOUND)), &f.key);
    let req = Request::builder()
        .uri("/v1/items")
        .header("host", "API.example.com:443")
        .header("authorization", format!("DPoP {BOUND}"))
        .header("dpop", p)
        .body(String::new())
        .unwrap();
    let r = call(&mut svc, req).await;
    assert_eq!(r.status(), 200);
    assert_eq!(seen.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn host_rules_and_routes_are_checked_at_start() {
    let f = fixture();
    let mut s = settings(&f);
    s.htu = HtuSource::FromRequest {
        scheme: "http".into(),
        trusted_proxies: Vec::new(),
        allowed_hosts: Vec::new(),
    };
    assert!(matches!(
        DpopLayer::new(s, f.tokens.clone(), MemoryReplayStore::with_capacity(1)),
        Err(dpop_tower::ConfigError::NoHostRule)
    ));
    for prefix in ["/v1/../admin", "/v1//x", "/%61", "v1"] {
        let mut s = settings(&f);
        s.routes = Routes::default().route(Route::new(prefix, RoutePolicy::new(DpopMode::Off)));
        assert!(
            matches!(
                DpopLayer::new(s, f.tokens.clone(), MemoryReplayStore::with_capacity(1)),
                Err(dpop_tower::ConfigError::BadRoute(..))
            ),
            "{prefix}"
        );
    }
    // Two routes for one prefix would shadow each other.
    for (a, b) in [("/v1", "/v1/"), ("/v1", "/V1")] {
        let mut s = settings(&f);
        s.routes = Routes::default()
            .route(Route::new(a, RoutePolicy::new(DpopMode::Off)))
            .route(Route::new(b, RoutePolicy::new(DpopMode::Required)));
        assert!(
            matches!(
                DpopLayer::new(s, f.tokens.clone(), MemoryReplayStore::with_capacity(1)),
                Err(dpop_tower::ConfigError::DuplicateRoute(_))
            ),
            "{a} {b}"
        );
    }
    // Different methods on one prefix are fine.
    let mut s = settings(&f);
    s.routes = Routes::default()
        .route(
            Route::new("/v1", RoutePolicy::new(DpopMode::Off))
                .with_methods(vec![http::Method::GET]),
        )
        .route(
            Route::new("/v1", RoutePolicy::new(DpopMode::Required))
                .with_methods(vec![http::Method::POST]),
        );
    assert!(DpopLayer::new(s, f.tokens.clone(), MemoryReplayStore::with_capacity(1)).is_ok());
    let mut s = settings(&f);
    s.routes = Routes::default().route(
        Route::new("/v1", RoutePolicy::new(DpopMode::Off))
            .with_methods(vec![http::Method::from_bytes(b"post").unwrap()]),
    );
    assert!(matches!(
        DpopLayer::new(s, f.tokens, MemoryReplayStore::with_capacity(1)),
        Err(dpop_tower::ConfigError::BadRoute(..))
    ));
}

// RFC 9728 protected resource metadata.

const METADATA_URL: &str = "https://api.example.com/.well-known/oauth-protected-resource";

fn metadata_settings(f: &Fixture) -> DpopSettings {
    let mut s = settings(f);
    let mut meta = ResourceMetadata::new("https://as.example.com");
    meta.resource_name = Some("Items \"API\"".into());
    meta.resource_documentation = Some("https://docs.example.com/items".into());
    s.resource_metadata = Some(meta);
    s
}

fn metadata_layer(f: &Fixture, s: DpopSettings) -> DpopLayer<Store> {
    DpopLayer::new(
        s,
        f.tokens.clone(),
        Store(Arc::new(MemoryReplayStore::with_capacity(100))),
    )
    .unwrap()
}

fn metadata_get(method: &str, path: &str, host: &str) -> Request<()> {
    Request::builder()
        .method(method)
        .uri(path)
        .header("host", host)
        .body(())
        .unwrap()
}

#[tokio::test]
async fn the_metadata_document_is_built_from_the_settings() {
    let f = fixture();
    let layer = metadata_layer(&f, metadata_settings(&f));
    let r = layer
        .metadata_response(&metadata_get(
            "GET",
            "/.well-known/oauth-protected-resource",
            "internal:8080",
        ))
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/json");
    assert_eq!(r.headers()["cache-control"], "max-age=3600");
    // Scopes: the union of the routes'; DPoP-bound tokens required (the default policy);
    // the algorithms are the accepted ones; strings are JSON-escaped.
    assert_eq!(
        std::str::from_utf8(r.body()).unwrap(),
        concat!(
            r#"{"resource":"https://api.example.com","#,
            r#""authorization_servers":["https://as.example.com"],"#,
            r#""scopes_supported":["admin"],"bearer_methods_supported":["header"],"#,
            r#""dpop_signing_alg_values_supported":["ES256","ES384","EdDSA","Ed25519","PS256","RS256"],"#,
            r#""dpop_bound_access_tokens_required":true,"resource_name":"Items \"API\"","#,
            r#""resource_documentation":"https://docs.example.com/items"}"#
        )
    );
    assert_eq!(r.headers()["content-length"], r.body().len().to_string());

    // HEAD: the same headers, no body.
    let head = layer
        .metadata_response(&metadata_get(
            "HEAD",
            "/.well-known/oauth-protected-resource",
            "x",
        ))
        .unwrap();
    assert_eq!(head.status(), 200);
    assert!(head.body().is_empty());
    assert_eq!(head.headers()["content-length"], r.body().len().to_string());
    // Other methods: 405.
    let post = layer
        .metadata_response(&metadata_get(
            "POST",
            "/.well-known/oauth-protected-resource",
            "x",
        ))
        .unwrap();
    assert_eq!(post.status(), 405);
    assert_eq!(post.headers()["allow"], "GET, HEAD");
    // Other paths are not the layer's to answer.
    for path in [
        "/v1/items",
        "/.well-known/oauth-protected-resource/other",
        "/.well-known/oauth-protected-resourcex",
    ] {
        assert!(
            layer
                .metadata_response(&metadata_get("GET", path, "x"))
                .is_none(),
            "{path}"
        );
    }
    // Without configured metadata there is no document.
    let plain = metadata_layer(&f, settings(&f));
    assert!(
        plain
            .metadata_response(&metadata_get(
                "GET",
                "/.well-known/oauth-protected-resource",
                "x"
            ))
            .is_none()
    );

    // Configured scopes win; a default policy accepting Bearer makes binding optional.
    let mut s = metadata_settings(&f);
    let meta = s.resource_metadata.as_mut().unwrap();
    meta.scopes_supported = Some(vec!["read".into(), "write".into()]);
    meta.resource_name = None;
    meta.resource_documentation = None;
    meta.max_age = Duration::from_secs(60);
    s.routes = Routes::new(RoutePolicy::new(DpopMode::AllowBearer));
    s.algorithms = vec![Algorithm::Es256];
    let r = metadata_layer(&f, s)
        .metadata_response(&metadata_get(
            "GET",
            "/.well-known/oauth-protected-resource",
            "x",
        ))
        .unwrap();
    assert_eq!(r.headers()["cache-control"], "max-age=60");
    assert_eq!(
        std::str::from_utf8(r.body()).unwrap(),
        concat!(
            r#"{"resource":"https://api.example.com","#,
            r#""authorization_servers":["https://as.example.com"],"#,
            r#""scopes_supported":["read","write"],"bearer_methods_supported":["header"],"#,
            r#""dpop_signing_alg_values_supported":["ES256"],"#,
            r#""dpop_bound_access_tokens_required":false}"#
        )
    );
}

#[tokio::test]
async fn the_metadata_resource_is_the_url_the_client_used_and_never_another_host() {
    let f = fixture();
    let body = |layer: &DpopLayer<Store>, path: &str, host: &str| {
        let r = layer
            .metadata_response(&metadata_get("GET", path, host))
            .unwrap();
        let doc: serde_json::Value = serde_json::from_slice(r.body()).unwrap_or_default();
        (
            r.status().as_u16(),
            doc["resource"].as_str().map(str::to_owned),
        )
    };
    // A public URL with a path: the document is at the path-suffixed well-known URL,
    // received as is or with the prefix stripped by the proxy in front.
    let mut s = metadata_settings(&f);
    s.htu = HtuSource::PublicUrl("https://API.example.com:443/orders/".into());
    let layer = metadata_layer(&f, s);
    for path in [
        "/.well-known/oauth-protected-resource",
        "/.well-known/oauth-protected-resource/orders",
    ] {
        assert_eq!(
            body(&layer, path, "internal"),
            (200, Some("https://api.example.com/orders".into())),
            "{path}"
        );
    }
    // Several public URLs: the one the request's host names.
    let mut s = metadata_settings(&f);
    s.htu = HtuSource::PublicUrls {
        urls: vec!["https://a.example".into(), "https://b.example/api".into()],
        trusted_proxies: Vec::new(),
    };
    let layer = metadata_layer(&f, s);
    let well_known = "/.well-known/oauth-protected-resource";
    assert_eq!(
        body(&layer, well_known, "a.example"),
        (200, Some("https://a.example".into()))
    );
    assert_eq!(
        body(
            &layer,
            "/.well-known/oauth-protected-resource/api",
            "B.example:443"
        ),
        (200, Some("https://b.example/api".into()))
    );
    assert_eq!(body(&layer, well_known, "evil.example"), (400, None));
    // Allowed hosts: the host used, in normal form; any other is refused.
    let layer = metadata_layer(&f, metadata_settings_by_request_host(&f));
    assert_eq!(
        body(&layer, well_known, "API.internal:8080"),
        (200, Some("http://api.internal:8080".into()))
    );
    assert_eq!(body(&layer, well_known, "api.internal:9090"), (400, None));
    // The challenge names the same host, and an unknown host is never reflected.
    let mut h = harness_with(
        &f,
        metadata_settings_by_request_host(&f),
        Arc::new(MemoryReplayStore::with_capacity(100)),
    );
    let mut req = with_headers("GET", "/v1/items", &[]);
    req.headers_mut()
        .insert("host", "API.internal:8080".parse().unwrap());
    let r = h.send(req).await;
    assert_eq!(
        www(&r),
        format!(
            r#"DPoP {ALGS}, resource_metadata="http://api.internal:8080/.well-known/oauth-protected-resource""#
        )
    );
}

fn metadata_settings_by_request_host(f: &Fixture) -> DpopSettings {
    let mut s = metadata_settings(f);
    s.htu = HtuSource::FromRequest {
        scheme: "http".into(),
        trusted_proxies: Vec::new(),
        allowed_hosts: vec!["api.internal:8080".into()],
    };
    s
}

#[tokio::test]
async fn every_challenge_carries_resource_metadata() {
    let f = fixture();
    let mut h = harness_with(
        &f,
        metadata_settings(&f),
        Arc::new(MemoryReplayStore::with_capacity(10_000)),
    );
    let meta = format!(r#"resource_metadata="{METADATA_URL}""#);
    let missing_proof = "DPoP proof required";
    let cases: Vec<(&str, Request<String>, u16, String)> = vec![
        (
            "no credentials",
            with_headers("GET", "/v1/items", &[]),
            401,
            format!("DPoP {ALGS}, {meta}"),
        ),
        (
            "no credentials, Bearer allowed",
            with_headers("GET", "/legacy/x", &[]),
            401,
            format!("Bearer {meta}, DPoP {ALGS}, {meta}"),
        ),
        (
            "bad token",
            dpop_request(&f.key, "GET", "/v1/items", "unknown-token"),
            401,
            format!(
                r#"DPoP error="invalid_token", error_description="Invalid access token", {ALGS}, {meta}"#
            ),
        ),
        (
            "bad proof",
            with_headers(
                "GET",
                "/v1/items",
                &[("authorization", format!("DPoP {BOUND}"))],
            ),
            401,
            format!(
                r#"DPoP error="invalid_dpop_proof", error_description="{missing_proof}", {ALGS}, {meta}"#
            ),
        ),
        (
            "nonce",
            dpop_request(&f.key, "GET", "/nonce/x", BOUND),
            401,
            format!(
                r#"DPoP error="use_dpop_nonce", error_description="Server requires nonce in DPoP proof", {ALGS}, {meta}"#
            ),
        ),
        (
            "insufficient scope",
            dpop_request(&f.key, "GET", "/admin/x", BOUND),
            403,
            format!(
                r#"DPoP error="insufficient_scope", error_description="The access token lacks a required scope", {ALGS}, scope="admin", {meta}"#
            ),
        ),
        (
            "Bearer-allowed route, bad Bearer token",
            bearer("/legacy/x", "unknown-token"),
            401,
            format!(
                r#"Bearer error="invalid_token", error_description="Invalid access token", {meta}, DPoP {ALGS}, {meta}"#
            ),
        ),
        (
            "Bearer-allowed route, bad proof",
            with_headers(
                "GET",
                "/legacy/x",
                &[("authorization", format!("DPoP {BOUND}"))],
            ),
            401,
            format!(
                r#"Bearer {meta}, DPoP error="invalid_dpop_proof", error_description="{missing_proof}", {ALGS}, {meta}"#
            ),
        ),
    ];
    for (name, req, status, expected) in cases {
        let r = h.send(req).await;
        assert_eq!(r.status(), status, "{name}");
        assert_eq!(www(&r), expected, "{name}");
        // Every challenge in the header parses and names the document.
        let challenges = dpop_core::challenge::parse(&www(&r)).unwrap();
        assert!(
            challenges
                .iter()
                .all(|c| c.param("resource_metadata") == Some(METADATA_URL)),
            "{name}"
        );
    }
    // The well-known path is never behind DPoP: the layer lets it through untouched.
    let r = h
        .send(with_headers(
            "GET",
            "/.well-known/oauth-protected-resource",
            &[],
        ))
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.body(), "anonymous");
    // Only reading it is public: other methods on that path meet the route's policy.
    for method in ["POST", "PUT", "DELETE", "PATCH"] {
        let r = h
            .send(with_headers(
                method,
                "/.well-known/oauth-protected-resource",
                &[],
            ))
            .await;
        assert_eq!(r.status(), 401, "{method}");
        assert_ne!(r.body(), "anonymous", "{method}");
    }
}

#[tokio::test]
async fn insufficient_scope_names_only_the_missing_scopes() {
    let f = fixture();
    let mut s = metadata_settings(&f);
    s.routes = Routes::new(RoutePolicy::new(DpopMode::AllowBearer).with_scopes(["read", "write"]));
    let mut h = harness_with(&f, s, Arc::new(MemoryReplayStore::with_capacity(100)));
    let meta = format!(r#"resource_metadata="{METADATA_URL}""#);
    let desc = "The access token lacks a required scope";
    let r = h
        .send(dpop_request(&f.key, "GET", "/v1/items", BOUND))
        .await;
    assert_eq!(r.status(), 403);
    assert_eq!(
        www(&r),
        format!(
            r#"Bearer {meta}, DPoP error="insufficient_scope", error_description="{desc}", {ALGS}, scope="write", {meta}"#
        )
    );
    let r = h.send(bearer("/v1/items", UNBOUND)).await;
    assert_eq!(r.status(), 403);
    assert_eq!(
        www(&r),
        format!(
            r#"Bearer error="insufficient_scope", error_description="{desc}", scope="write", {meta}, DPoP {ALGS}, {meta}"#
        )
    );
}

#[tokio::test]
async fn a_route_of_its_own_has_its_own_document_and_challenges() {
    let f = fixture();
    let mut s = metadata_settings(&f);
    s.htu = HtuSource::PublicUrl("https://api.example.com/base".into());
    s.routes = routes().route(
        Route::new(
            "/mcp/",
            RoutePolicy::new(DpopMode::AllowBearer).with_scopes(["mcp:tools"]),
        )
        .with_own_resource(),
    );
    let layer = metadata_layer(&f, s.clone());
    let expected = concat!(
        r#"{"resource":"https://api.example.com/base/mcp","#,
        r#""authorization_servers":["https://as.example.com"],"#,
        r#""scopes_supported":["mcp:tools"],"bearer_methods_supported":["header"],"#,
        r#""dpop_signing_alg_values_supported":["ES256","ES384","EdDSA","Ed25519","PS256","RS256"],"#,
        r#""dpop_bound_access_tokens_required":false,"resource_name":"Items \"API\"","#,
        r#""resource_documentation":"https://docs.example.com/items"}"#
    );
    for path in [
        "/.well-known/oauth-protected-resource/base/mcp",
        "/.well-known/oauth-protected-resource/mcp",
    ] {
        let r = layer
            .metadata_response(&metadata_get("GET", path, "x"))
            .unwrap();
        assert_eq!(r.status(), 200, "{path}");
        assert_eq!(std::str::from_utf8(r.body()).unwrap(), expected, "{path}");
    }
    // The public URL's own document lists every route's scopes.
    let r = layer
        .metadata_response(&metadata_get(
            "GET",
            "/.well-known/oauth-protected-resource/base",
            "x",
        ))
        .unwrap();
    let doc: serde_json::Value = serde_json::from_slice(r.body()).unwrap();
    assert_eq!(doc["resource"], "https://api.example.com/base");
    assert_eq!(
        doc["scopes_supported"],
        serde_json::json!(["admin", "mcp:tools"])
    );
    assert_eq!(doc["dpop_bound_access_tokens_required"], true);
    // Routes that are not resources of their own have no document.
    assert!(
        layer
            .metadata_response(&metadata_get(
                "GET",
                "/.well-known/oauth-protected-resource/admin",
                "x"
            ))
            .is_none()
    );
    // The route's challenges point to its document; other routes' to the public URL's.
    let mut h = harness_with(&f, s, Arc::new(MemoryReplayStore::with_capacity(100)));
    let r = h.send(with_headers("GET", "/mcp/tools", &[])).await;
    assert_eq!(
        www(&r),
        r#"Bearer resource_metadata="https://api.example.com/.well-known/oauth-protected-resource/base/mcp", DPoP algs="ES256 ES384 EdDSA Ed25519 PS256 RS256", resource_metadata="https://api.example.com/.well-known/oauth-protected-resource/base/mcp""#
    );
    let r = h.send(with_headers("GET", "/v1/items", &[])).await;
    assert_eq!(
        www(&r),
        format!(
            r#"DPoP {ALGS}, resource_metadata="https://api.example.com/.well-known/oauth-protected-resource/base""#
        )
    );
    // Its well-known path passes the layer without DPoP.
    let r = h
        .send(with_headers(
            "GET",
            "/.well-known/oauth-protected-resource/mcp",
            &[],
        ))
        .await;
    assert_eq!((r.status().as_u16(), r.body().as_str()), (200, "anonymous"));
}

#[tokio::test]
async fn the_service_learns_which_route_matched() {
    let f = fixture();
    let mut s = settings(&f);
    s.routes = Routes::new(RoutePolicy::default())
        .route(Route::new("/a", RoutePolicy::default()).with_id(7))
        .route(Route::new("/a/b", RoutePolicy::default()).with_id(3))
        .route(Route::new("/c", RoutePolicy::default()));
    let layer =
        DpopLayer::new(s, f.tokens.clone(), MemoryReplayStore::with_capacity(1000)).unwrap();
    let inner = tower::service_fn(|req: Request<String>| async move {
        let id = req
            .extensions()
            .get::<dpop_tower::AuthorizedTarget>()
            .map(|t| format!("{:?}", t.route_id()))
            .unwrap_or_default();
        Ok::<_, Infallible>(Response::new(id))
    });
    let mut svc = layer.layer(inner);
    for (target, expected) in [
        ("/a/x", "Some(7)"),
        ("/a/b/x", "Some(3)"),
        ("/a/bc", "Some(7)"),
        ("/c", "None"),
        ("/d", "None"),
    ] {
        let r = call(&mut svc, dpop_request(&f.key, "GET", target, BOUND)).await;
        assert_eq!(r.status(), 200, "{target}");
        assert_eq!(r.body(), expected, "{target}");
    }
}

/// RFC 8705: tokens bound to a client certificate (`cnf.x5t#S256`) pass only with that
/// certificate on the connection, refused ones leave no replay record; a route that
/// requires a certificate refuses requests without one in every mode.
#[tokio::test]
async fn client_certificates() {
    use dpop_core::jwt::CertThumbprint;
    use dpop_tower::ClientCertificate;

    let f = fixture();
    let exp = UnixTime::from_secs(NOW + 600);
    let cert = CertThumbprint::of_der(b"certificate a");
    let other = CertThumbprint::of_der(b"certificate b");
    let jkt = Some(f.key.thumbprint().clone());
    let mut tokens = HashMap::new();
    tokens.insert(
        "cert-and-key".to_owned(),
        AccessToken::new(Some("svc-a".into()), None, vec![], jkt, exp)
            .with_certificate_binding(Some(cert.clone())),
    );
    tokens.insert(
        "cert-only".to_owned(),
        AccessToken::new(Some("svc-b".into()), None, vec![], None, exp)
            .with_certificate_binding(Some(cert.clone())),
    );
    tokens.insert(
        BOUND.to_owned(),
        AccessToken::new(
            Some("svc-c".into()),
            None,
            vec![],
            Some(f.key.thumbprint().clone()),
            exp,
        ),
    );
    let tokens = Arc::new(StaticTokens {
        tokens,
        calls: AtomicUsize::new(0),
        down: false,
    });
    let mut s = settings(&f);
    s.routes = routes()
        .route(Route::new(
            "/mtls",
            RoutePolicy::new(DpopMode::Off).with_client_cert_required(),
        ))
        .route(Route::new(
            "/mtls-shadow",
            RoutePolicy::new(DpopMode::ReportOnly).with_client_cert_required(),
        ));
    let layer = DpopLayer::new(
        s,
        tokens,
        Store(Arc::new(MemoryReplayStore::with_capacity(100))),
    )
    .unwrap();
    let mut h = Harness {
        svc: layer.layer(tower::service_fn(boxed_app as AppFn)),
    };
    let with_cert = |mut r: Request<String>, t: Option<&CertThumbprint>| {
        if let Some(t) = t {
            r.extensions_mut()
                .insert(ClientCertificate::new(t.clone(), Some("CN=a".into())));
        }
        r
    };
    let mismatch = dpop_challenge(
        "invalid_token",
        "The access token is bound to a client certificate this request did not present",
    );

    // Another certificate, then none: 401 invalid_token; the proof is not recorded, so
    // the same request with the right certificate passes.
    let req = dpop_request(&f.key, "GET", "/v1/items", "cert-and-key");
    for presented in [Some(&other), None] {
        let r = h.send(with_cert(clone_request(&req), presented)).await;
        assert_eq!(r.status(), 401, "{presented:?}");
        assert_eq!(www(&r), mismatch);
        assert_eq!(
            last_outcome(&f),
            Outcome::Rejected(Reason::CertificateMismatch)
        );
    }
    let r = h.send(with_cert(req, Some(&cert))).await;
    assert_eq!(
        (r.status().as_u16(), r.body().as_str()),
        (200, "svc-a:Dpop")
    );

    // A certificate-bound Bearer token where Bearer is allowed.
    let r = h
        .send(with_cert(bearer("/legacy/x", "cert-only"), Some(&cert)))
        .await;
    assert_eq!(
        (r.status().as_u16(), r.body().as_str()),
        (200, "svc-b:Bearer")
    );
    let r = h.send(bearer("/legacy/x", "cert-only")).await;
    assert_eq!(r.status(), 401);
    assert!(
        www(&r).starts_with(r#"Bearer error="invalid_token""#),
        "{}",
        www(&r)
    );

    // A token without a certificate binding does not care.
    let r = h
        .send(with_cert(
            dpop_request(&f.key, "GET", "/v1/items", BOUND),
            Some(&other),
        ))
        .await;
    assert_eq!(r.status(), 200);

    // Routes that require a certificate, whatever their DPoP mode.
    for path in ["/mtls/x", "/mtls-shadow/x"] {
        let r = h
            .send(request("GET", path).body(String::new()).unwrap())
            .await;
        assert_eq!(r.status(), 400, "{path}");
        assert!(
            www(&r).contains(r#"error="invalid_request""#),
            "{}",
            www(&r)
        );
        assert_eq!(
            last_outcome(&f),
            Outcome::Rejected(Reason::ClientCertificateRequired)
        );
        let r = h
            .send(with_cert(
                request("GET", path).body(String::new()).unwrap(),
                Some(&other),
            ))
            .await;
        assert_eq!(
            (r.status().as_u16(), r.body().as_str()),
            (200, "anonymous"),
            "{path}"
        );
    }
}

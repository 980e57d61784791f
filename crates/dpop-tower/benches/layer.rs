//! One DPoP request through the layer (token cache hit, proof verification, replay
//! record, identity) beside the bare ES256 signature verification it contains, so the
//! layer's own cost is visible as a ratio; and a refusal, whose `WWW-Authenticate` is
//! prepared when the layer is built.
#![allow(
    missing_docs,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::disallowed_methods
)]

use std::convert::Infallible;
use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED, UnparsedPublicKey};
use base64::Engine as _;
use criterion::{Criterion, criterion_group, criterion_main};
use dpop_core::jwt::AccessToken;
use dpop_core::{
    Algorithm, Error, FixedClock, MemoryReplayStore, PrivateKey, ProofBuilder, SystemRandomSource,
    UnixTime,
};
use dpop_tower::{BoxFuture, DpopLayer, DpopSettings, HtuSource, TokenVerifier};
use http::{Request, Response};
use tower::{Layer, Service, ServiceExt};

const NOW: u64 = 1_700_000_000;
const TOKEN: &str = "bench-token-0123456789abcdefghijklmnopqrstuvwxyz";

struct OneToken(AccessToken);
impl TokenVerifier for OneToken {
    fn verify<'a>(
        &'a self,
        _token: &'a str,
        _now: UnixTime,
    ) -> BoxFuture<'a, Result<AccessToken, Error>> {
        let t = self.0.clone();
        Box::pin(async move { Ok(t) })
    }
}

fn requests(key: &PrivateKey, n: u64) -> Vec<Request<String>> {
    (0..n)
        .map(|_| {
            let proof = ProofBuilder::new("GET", "https://api.example.com/v1/items")
                .unwrap()
                .access_token(TOKEN)
                .sign(key, &SystemRandomSource, UnixTime::from_secs(NOW))
                .unwrap();
            Request::builder()
                .uri("/v1/items?page=2")
                .header("host", "internal")
                .header("authorization", format!("DPoP {TOKEN}"))
                .header("dpop", proof)
                .body(String::new())
                .unwrap()
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let key = PrivateKey::generate(Algorithm::Es256).unwrap();
    let token = AccessToken::new(
        Some("svc".into()),
        None,
        vec!["read".into()],
        Some(key.thumbprint().clone()),
        UnixTime::from_secs(NOW + 3600),
    );
    let mut settings = DpopSettings::new(HtuSource::PublicUrl("https://api.example.com".into()));
    settings.clock = Arc::new(FixedClock(UnixTime::from_secs(NOW)));
    let layer = DpopLayer::new(
        settings,
        Arc::new(OneToken(token)),
        MemoryReplayStore::with_capacity(50_000_000),
    )
    .unwrap();
    let svc = layer.layer(tower::service_fn(|_req: Request<String>| async {
        Ok::<_, Infallible>(Response::new(String::new()))
    }));

    let sample = requests(&key, 1).remove(0);
    let proof = sample.headers()["dpop"].to_str().unwrap().to_owned();
    let (input, sig) = proof.rsplit_once('.').unwrap();
    let sig = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(sig)
        .unwrap();
    let point = key.public_jwk().raw_public_key().unwrap();

    let mut g = c.benchmark_group("layer/ES256");
    g.bench_function("bare_signature", |b| {
        b.iter(|| {
            UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, &point)
                .verify(black_box(input.as_bytes()), black_box(&sig))
                .unwrap()
        });
    });
    g.bench_function("dpop_request", |b| {
        b.iter_custom(|iters| {
            let reqs = requests(&key, iters);
            let mut svc = svc.clone();
            rt.block_on(async {
                let start = Instant::now();
                for req in reqs {
                    let r = svc.ready().await.unwrap().call(req).await.unwrap();
                    assert_eq!(r.status(), 200);
                }
                start.elapsed()
            })
        });
    });
    // A refusal answers with the challenge prepared when the layer was built.
    g.bench_function("refused_without_credentials", |b| {
        let mut svc = svc.clone();
        b.iter(|| {
            let req = Request::builder()
                .uri("/v1/items")
                .header("host", "internal")
                .body(String::new())
                .unwrap();
            let r = rt.block_on(async { svc.ready().await.unwrap().call(req).await.unwrap() });
            assert_eq!(r.status(), 401);
        });
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(4)).sample_size(20);
    targets = bench
}
criterion_main!(benches);

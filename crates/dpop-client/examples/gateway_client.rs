//! Calls an API behind `dpop gateway` with a DPoP-bound token from `dpop issuer`: the
//! middleware gets the token (client credentials), signs the request, and answers the
//! nonce and clock-skew challenges on the way. Prints the status and the body.
//!
//! ```text
//! gateway_client [KEY_FILE [API_URL]]
//!   ISSUER, CLIENT_ID, CLIENT_SECRET   the issuer and the client (environment)
//!   KEY_FILE or DPOP_KEY_FILE          the DPoP key (mode 0600); an ephemeral key if none
//!   API_URL                            the URL to GET (argument or environment)
//! ```
//!
//! Against the example configurations, from the repository root (four shells, or `&`):
//!
//! ```text
//! export BILLING_CLIENT_SECRET=billing-secret-0123456789 GATEWAY_CLIENT_SECRET=gw-secret-0123456789
//! dpop issuer --config examples/issuer.toml            # http://127.0.0.1:8081, client `billing`
//! python3 -m http.server 3000                          # any upstream on 127.0.0.1:3000
//! dpop gateway --config examples/gateway.toml --listen 127.0.0.1:8080 \
//!     --issuer http://127.0.0.1:8081 --public-url http://127.0.0.1:8080
//! dpop keygen --out client.pem
//! ISSUER=http://127.0.0.1:8081 CLIENT_ID=billing CLIENT_SECRET=$BILLING_CLIENT_SECRET \
//!     cargo run -p dpop-client --example gateway_client -- client.pem http://127.0.0.1:8080/
//! ```
//!
//! `--public-url` makes the gateway compare proofs with the URL the client uses (the file
//! says `https://api.example.com`); `/` matches none of the file's routes, so it gets the
//! default: DPoP required, no scope needed (`/v1` would need the scope `api`, which
//! `billing` does not have: 403 `insufficient_scope`).

use std::error::Error;
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::Arc;

use dpop_client::{ClientAuth, ClientKey, DpopMiddleware, Grant, OAuthTokens, TokenRequest};

fn env(name: &str) -> Result<String, Box<dyn Error>> {
    std::env::var(name)
        .map_err(|_| format!("set {name} (see the top of examples/gateway_client.rs)").into())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let mut args = std::env::args().skip(1);
    let key = match args.next().or_else(|| std::env::var("DPOP_KEY_FILE").ok()) {
        Some(path) => ClientKey::from_file(&PathBuf::from(path))?,
        None => ClientKey::ephemeral(dpop_core::Algorithm::Es256)?,
    };
    let api_url = match args.next() {
        Some(url) => url,
        None => env("API_URL")?,
    };

    let dpop = DpopMiddleware::new(key);
    let auth = ClientAuth::Secret {
        client_id: env("CLIENT_ID")?,
        secret: Arc::new(env("CLIENT_SECRET")?.into()),
    };
    let request = TokenRequest::new(&env("ISSUER")?, auth, Grant::ClientCredentials);
    let tokens = OAuthTokens::new(request, &dpop)?;
    // A proof names one URL: redirects are not followed (the middleware's docs).
    let inner = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let client = reqwest_middleware::ClientBuilder::new(inner)
        .with(dpop.with_tokens(Arc::new(tokens)))
        .build();

    let response = client.get(&api_url).send().await?;
    let status = response.status();
    let body = response.text().await?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{status}")?;
    writeln!(out, "{body}")?;
    Ok(())
}

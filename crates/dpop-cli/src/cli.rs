//! The command line as clap sees it: syntax only. Loading files, parsing URLs and
//! checking that values fit each other happens in the commands, which turn these raw
//! arguments into validated values before doing any work.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use dpop_core::Algorithm;

mod curl;
pub(crate) use self::curl::CurlArgs;

const AFTER_HELP: &str = "\
Exit status:
  0  success (inspect: the proof is valid; jwt verify: the token is valid)
  1  inspect: the proof is invalid; jwt verify: the token is invalid;
     demo: a step did not behave as expected;
     any command: an operation failed (e.g. output could not be written)
  2  usage error: bad arguments or flag values, a missing, unreadable or
     unusable file, an existing file that --force was not given for
  curl: also curl's own codes (22, 6, 7, 28, 35, 60...; see dpop curl --help)";

/// Create, inspect and verify DPoP proofs (RFC 9449, OAuth 2.0 Demonstrating Proof of
/// Possession).
#[derive(Debug, Parser)]
#[command(
    name = "dpop",
    version,
    after_help = AFTER_HELP,
    after_long_help = AFTER_HELP,
    propagate_version = true
)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Command,
    #[command(flatten)]
    pub(crate) passphrase: PassphraseArgs,
    #[command(flatten)]
    pub(crate) device: DeviceArgs,
}

/// How keys in a device (`pkcs11:`, `tpm2:`, `awskms:` references) are opened.
#[derive(Debug, Default, Args)]
pub(crate) struct DeviceArgs {
    /// Accept a PIN written into a key URI (pkcs11: pin-value, tpm2: auth-value). Shell
    /// history, process listings and scripts keep it: for throwaway test tokens only;
    /// otherwise use pin-source=file:PATH or env:NAME
    #[arg(long, global = true)]
    pub(crate) dangerous_allow_pin_value: bool,
}

/// Where the passphrase of an encrypted key file comes from, for every command that
/// reads or writes one. Without either flag it is asked for on the terminal (and an
/// encrypted key cannot be read without a terminal). Never a flag value: command lines
/// are visible to other users.
#[derive(Debug, Default, Args)]
pub(crate) struct PassphraseArgs {
    /// Read the passphrase of encrypted key files from this file (its first line; - for
    /// stdin). For keygen, jwk, thumbprint, proof, token and curl only
    #[arg(
        long,
        value_name = "FILE",
        global = true,
        conflicts_with = "passphrase_env"
    )]
    pub(crate) passphrase_file: Option<PathBuf>,
    /// Read the passphrase of encrypted key files from this environment variable. For
    /// keygen, jwk, thumbprint, proof, token and curl only
    #[arg(long, value_name = "VAR", global = true)]
    pub(crate) passphrase_env: Option<String>,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Generate a private key, write it to a file only you can read, print its thumbprint
    ///
    /// The key is written as PKCS#8 PEM (or as a private JWK with --jwk) to a new file
    /// with mode 0600. The JWK thumbprint (jkt, RFC 7638) is printed on stdout: it is
    /// the value an authorization server puts in an access token's cnf.jkt.
    Keygen(KeygenArgs),
    /// Print the public JWK of a key file, as one line of JSON
    ///
    /// FILE may hold a private key (PKCS#8 PEM, encrypted or not, or private JWK) or a
    /// public JWK; the format is detected from the content. Only public members are
    /// printed, with kid (the thumbprint), alg and use on request; --set prints a JWK Set
    /// of several key files, as an issuer's jwks_file holds.
    Jwk(JwkArgs),
    /// Print the JWK thumbprint (jkt, RFC 7638) of a key file
    ///
    /// FILE may hold a private key (PKCS#8 PEM or private JWK) or a public JWK.
    Thumbprint(KeyFileArgs),
    /// Create a DPoP proof for one HTTP request and print it (one line)
    ///
    /// Send the output as the DPoP request header. With --access-token the proof carries
    /// ath, the hash of the token, as a resource server requires.
    Proof(ProofArgs),
    /// Decode or verify a JWT access token: "why was my token refused?"
    ///
    /// `decode` shows the header and the claims (times also in UTC) without checking
    /// anything; `verify` checks the token as the gateway does, with the issuer's keys
    /// from its metadata, and prints the verdict with the gateway's reason code. verify
    /// exits 0 when the token is valid, 1 when it is not, 2 on a usage or configuration
    /// error (e.g. the issuer's keys cannot be fetched).
    Jwt(JwtArgs),
    /// Decode a DPoP proof and verify it as a server would, check by check
    ///
    /// Every algorithm is allowed and no replay store is used (inspecting the same proof
    /// twice is fine). Checks whose reference value is not given (--method, --url,
    /// --access-token, --jkt, --nonce) are reported as skipped.
    /// Exits 0 when the proof is valid, 1 when it is not.
    Inspect(InspectArgs),
    /// Run the DPoP gateway: a reverse proxy that enforces DPoP in front of an API
    ///
    /// The simple case needs only --listen, --upstream, --issuer and --audience; use
    /// --config FILE (TOML, see examples/gateway.toml) for routes, trusted proxies,
    /// introspection, limits and more. Flags override the file. Runs until SIGTERM or
    /// Ctrl-C, then drains in-flight requests. Exits 2 on a configuration error, 1 when
    /// it cannot start (listener, Redis).
    Gateway(GatewayArgs),
    /// Run the DPoP authorizer: the gateway's checks for a proxy you already run
    ///
    /// Envoy and Istio (ext_authz over gRPC with --grpc-listen, over HTTP with --listen),
    /// nginx auth_request, Traefik ForwardAuth and Caddy forward_auth (--listen) ask it
    /// before forwarding a request; it answers allow, with the identity headers for the
    /// upstream, or the refusal the client gets. Forward-auth checks are believed only
    /// from --trusted-proxy addresses. Same checks, settings and TOML file as the gateway
    /// (see examples/authz/ for the file and each proxy's snippet); flags override the
    /// file. SIGHUP reloads the file (docs/gateway-reload.md). Runs until SIGTERM or
    /// Ctrl-C, then drains in-flight checks. Exits 2 on a configuration error, 1 when it
    /// cannot start (listener, Redis).
    Authz(AuthzArgs),
    /// Run the authorization server that issues short-lived DPoP-bound tokens to workloads
    ///
    /// `dpop issuer --config FILE` serves the token, introspection, revocation, JWKS and
    /// metadata endpoints (TOML, see examples/issuer.toml) until SIGTERM or Ctrl-C. The
    /// subcommands manage its state: rotate-key, disable-client, enable-client, and
    /// hash-secret to make the secret hash a client table holds. Exits 2 on a
    /// configuration error, 1 when it cannot start (database, listener, keys).
    Issuer(IssuerArgs),
    /// Get a DPoP-bound access token from an issuer and print the token response
    ///
    /// Client credentials (with --client-secret-env or --client-key), or token exchange
    /// with --subject-token-file (e.g. a CI job's OIDC token). The token is bound to
    /// --key. Nonce challenges are answered. Prints the JSON response, or only the
    /// access token with --raw.
    Token(TokenArgs),
    /// Send an HTTP request with DPoP, like curl
    ///
    /// Every request carries a fresh proof for its method and URL (with the token's hash);
    /// nonce challenges and clock skew are handled. The token comes from --token,
    /// --token-file, or the token flags (as for `dpop token`). curl's options keep their
    /// letters and meanings; -k and -u are refused. A status of 400 or more is named on
    /// stderr with the server's challenge and what it usually means. Each flag can also
    /// be set in the environment as DPOP_CURL_ and its name (e.g. DPOP_CURL_MAX_TIME).
    ///
    /// Exit status as curl's: 0 a response (whatever its status), 22 a status of 400 or
    /// more with --fail, 6 the host cannot be resolved, 7 no connection, 28 timeout,
    /// 35 TLS handshake failure, 60 the server's certificate is not trusted, 47 too many
    /// redirects, 23 the output cannot be written (also a reader that went away: a
    /// broken pipe, as curl; 22 all the same for a status of 400 or more with --fail or
    /// --fail-with-body); 1 another failure, 2 a usage error.
    // Boxed: curl's many flags would make every other variant as large.
    Curl(Box<CurlArgs>),
    /// See the whole system work: issuer, gateway, API, client, and the attacks refused
    ///
    /// Starts on loopback, in this process, an issuer (SQLite in a temporary directory),
    /// a gateway (nonces, memory replay store, introspection) in front of a sample API,
    /// and a stand-in CI system; runs a client through them and tries the attacks DPoP
    /// stops, one table row each. Exits 0 only if every scenario behaves as it should.
    /// --keep-running leaves the services up and prints commands to try. --offline
    /// instead walks through the protocol step by step without any network.
    Demo(DemoArgs),
    /// Print a shell completion script for bash, zsh, fish or PowerShell
    ///
    /// e.g. `dpop completions bash > /etc/bash_completion.d/dpop`, or
    /// `dpop completions zsh > "${fpath[1]}/_dpop"`.
    Completions(CompletionsArgs),
    /// Print the manual page (roff), e.g. `dpop man | man -l -`
    Man,
}

#[derive(Debug, Args)]
pub(crate) struct CompletionsArgs {
    /// The shell
    #[arg(value_enum)]
    pub(crate) shell: clap_complete::Shell,
}

#[derive(Debug, Args)]
pub(crate) struct JwtArgs {
    #[command(subcommand)]
    pub(crate) action: JwtAction,
}

#[derive(Debug, Subcommand)]
pub(crate) enum JwtAction {
    /// Show a JWT's header and claims, without checking them
    ///
    /// Times (exp, iat, nbf, auth_time) are also shown in UTC, with how long ago or from
    /// now. Nothing is verified: use `dpop jwt verify` for that.
    Decode {
        /// The token, or - to read it from stdin
        #[arg(value_name = "TOKEN|-")]
        token: String,
        /// Print one JSON object instead of the human-readable report
        #[arg(long)]
        json: bool,
    },
    /// Verify an access token as the gateway does, and say why it is refused
    ///
    /// The issuer's keys come from its metadata (RFC 8414 or OpenID discovery). The
    /// checks: size and structure, typ (at+jwt or JWT), alg, signature, iss, aud (equal
    /// to --audience), exp, nbf/iat (30 s leeway), cnf.jkt present (a token without it
    /// is not DPoP-bound: token_not_bound) and equal to --jkt when given. Exits 0 when
    /// valid, 1 when not (with the reason code the gateway logs). --audience is
    /// required; --dangerous-no-audience instead skips the comparison (aud must still be
    /// present) and the verdict says so.
    Verify {
        /// The token, or - to read it from stdin
        #[arg(value_name = "TOKEN|-")]
        token: String,
        /// The issuer the token must come from; its keys are discovered from it
        #[arg(long, value_name = "URL")]
        issuer: String,
        /// The audience the token must be for (the API's identifier); required unless
        /// --dangerous-no-audience
        #[arg(long, value_name = "A")]
        audience: Option<String>,
        /// Do not compare aud with an audience (aud must still be present): a token for
        /// any API of the issuer then passes. Printed in the verdict.
        #[arg(long, conflicts_with = "audience")]
        dangerous_no_audience: bool,
        /// The DPoP key thumbprint the token must be bound to (cnf.jkt)
        #[arg(long, value_name = "JKT", allow_hyphen_values = true)]
        jkt: Option<String>,
        /// Verify as of this time, in seconds since the Unix epoch [default: now]
        #[arg(long, value_name = "UNIX_SECONDS")]
        now: Option<u64>,
        /// Print one JSON object instead of the human-readable report
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Args)]
pub(crate) struct DemoArgs {
    /// Leave the services running (until Ctrl-C) and print commands to try
    #[arg(long, conflicts_with = "offline")]
    pub(crate) keep_running: bool,
    /// The step-by-step protocol walk-through instead: no files, no network
    #[arg(long)]
    pub(crate) offline: bool,
}

/// The simple case by flags; `--config FILE` for everything else (flags override the file).
// The field docs are also the `--help` text, where link markup would show as-is.
#[allow(rustdoc::bare_urls)]
#[derive(Clone, Debug, Default, Args)]
pub(crate) struct GatewayArgs {
    /// Address to listen on, e.g. 0.0.0.0:8080.
    #[arg(long, value_name = "ADDR")]
    pub(crate) listen: Option<SocketAddr>,
    /// The API to protect, e.g. http://127.0.0.1:3000 or https://api.internal (TLS
    /// settings and HTTP/2: an `upstream` table in --config).
    #[arg(long, value_name = "URL")]
    pub(crate) upstream: Option<String>,
    #[command(flatten)]
    pub(crate) enforcement: EnforcementArgs,
    /// Serve TLS with this certificate chain (PEM, leaf first); needs --tls-key. The files
    /// are re-read when they change and on SIGHUP.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub(crate) tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM: PKCS#8, SEC1 or PKCS#1).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub(crate) tls_key: Option<PathBuf>,
    /// Also speak HTTP/2 with prior knowledge (h2c) on a plain listener.
    #[arg(long)]
    pub(crate) h2c: bool,
}

/// The authorizer's listeners; `--config FILE` for everything else (flags override the
/// file).
#[derive(Clone, Debug, Default, Args)]
pub(crate) struct AuthzArgs {
    /// HTTP listener, e.g. 127.0.0.1:8081: forward-auth (nginx auth_request, Traefik
    /// ForwardAuth, Caddy forward_auth) and Envoy's HTTP ext_authz.
    #[arg(long, value_name = "ADDR")]
    pub(crate) listen: Option<SocketAddr>,
    /// gRPC listener, e.g. 127.0.0.1:8082: Envoy's ext_authz
    /// (envoy.service.auth.v3.Authorization).
    #[arg(long, value_name = "ADDR")]
    pub(crate) grpc_listen: Option<SocketAddr>,
    /// What Envoy's HTTP ext_authz puts before the original path (its path_prefix, e.g.
    /// /check); removed before the path is judged.
    #[arg(long, value_name = "PATH")]
    pub(crate) path_prefix: Option<String>,
    #[command(flatten)]
    pub(crate) enforcement: EnforcementArgs,
}

/// What `gateway` and `authz` check, and how they run: the flags that mean the same for
/// both.
// The field docs are also the `--help` text, where link markup would show as-is.
#[allow(rustdoc::bare_urls)]
#[derive(Clone, Debug, Default, Args)]
pub(crate) struct EnforcementArgs {
    /// The authorization server (token issuer) URL; its keys are discovered from it.
    #[arg(long, value_name = "ISSUER_URL")]
    pub(crate) issuer: Option<String>,
    /// The audience access tokens must be issued for (this API's identifier).
    #[arg(long, value_name = "AUD")]
    pub(crate) audience: Option<String>,
    /// The external origin and path prefix clients use, e.g. https://api.example.com/orders
    /// (repeat for several names; the request's Host then picks one). Proofs are checked
    /// against it. Either this or --allowed-host is required.
    #[arg(long, value_name = "URL")]
    pub(crate) public_url: Vec<String>,
    /// A host (name or name:port) clients reach this service by, when the htu is built
    /// from the request's Host (repeatable); requests for other hosts are refused.
    #[arg(long = "allowed-host", value_name = "HOST")]
    pub(crate) allowed_hosts: Vec<String>,
    /// A proxy (IP address or CIDR range) whose X-Forwarded-* headers are believed
    /// (repeatable; replaces the file's trusted_proxies).
    #[arg(long = "trusted-proxy", value_name = "IP|CIDR")]
    pub(crate) trusted_proxies: Vec<String>,
    /// Require a server nonce in every proof (set DPOP_NONCE_SECRET, base64url of 32+
    /// bytes, to share nonces between instances).
    #[arg(long)]
    pub(crate) require_nonce: bool,
    /// Replay store shared by instances, e.g. redis://127.0.0.1:6379,
    /// redis+cluster://h1:7000,h2:7001/ or redis+sentinel://s1:26379,s2:26379/mymaster
    /// (rediss... for TLS; default: in memory).
    #[arg(long, value_name = "redis://HOST:PORT")]
    pub(crate) replay_store: Option<String>,
    /// Address of the admin listener (/healthz, /readyz, /metrics).
    #[arg(long, value_name = "ADDR")]
    pub(crate) admin_listen: Option<SocketAddr>,
    /// TOML configuration file (see examples/gateway.toml, examples/authz/authz.toml).
    #[arg(long, value_name = "FILE")]
    pub(crate) config: Option<PathBuf>,
    /// Log as JSON lines.
    #[arg(long)]
    pub(crate) log_json: bool,
}

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub(crate) struct IssuerArgs {
    #[command(subcommand)]
    pub(crate) action: Option<IssuerAction>,
    /// The issuer configuration (TOML, see examples/issuer.toml)
    #[arg(long, value_name = "FILE")]
    pub(crate) config: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub(crate) enum IssuerAction {
    /// Create a new signing key and retire the current ones
    ///
    /// The new key is published in the JWKS at once and signs from --activate-in
    /// seconds later, when the current keys retire: they sign nothing more, and their
    /// public keys stay in the JWKS until the tokens they signed have expired. Prints the
    /// new key id.
    RotateKey {
        /// The issuer configuration
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// Seconds between publishing the key and signing with it, so that every issuer
        /// instance and resource server knows it first
        #[arg(long, value_name = "SECS", default_value_t = 60)]
        activate_in: u64,
        /// The next key, one the operator manages: a PEM or JWK file (`file:PATH`, mode
        /// 0600) or a device key (`pkcs11:...`, `tpm2:...`, `awskms:...`). Required when the
        /// configuration sets `[keys] signing_key`; without it a software key is made
        #[arg(long, value_name = "REF")]
        key: Option<String>,
    },
    /// Disable a client: refuse it, revoke its refresh tokens, make its access tokens
    /// inactive at introspection
    DisableClient {
        /// The client id
        client_id: String,
        /// The issuer configuration
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Enable a disabled client again (tokens revoked on disabling stay revoked)
    EnableClient {
        /// The client id
        client_id: String,
        /// The issuer configuration
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Read a client secret from standard input and print its Argon2id hash
    ///
    /// Put the hash in the client's `secret` field; the secret itself never goes in the file.
    HashSecret,
}

/// How to get a token from an issuer (shared by `token` and `curl`).
#[derive(Debug, Args)]
pub(crate) struct IssuerTokenArgs {
    /// The issuer identifier (its metadata gives the token endpoint)
    #[arg(long, value_name = "URL")]
    pub(crate) issuer: Option<String>,
    /// The client id
    #[arg(long, value_name = "ID")]
    pub(crate) client_id: Option<String>,
    /// Authenticate with the secret in this environment variable (client_secret_basic)
    #[arg(long, value_name = "VAR", conflicts_with = "client_key")]
    pub(crate) client_secret_env: Option<String>,
    /// Authenticate with private_key_jwt signed by this key: a file or a key in a device
    /// (pkcs11:..., tpm2:..., awskms:...)
    #[arg(long, value_name = "KEY")]
    pub(crate) client_key: Option<PathBuf>,
    /// Scopes to ask for (space-separated)
    #[arg(long, value_name = "S")]
    pub(crate) scope: Option<String>,
    /// An RFC 8693 audience to ask for (repeatable)
    #[arg(long, value_name = "A")]
    pub(crate) audience: Vec<String>,
    /// An RFC 8707 resource to ask for (repeatable)
    #[arg(long, value_name = "URI")]
    pub(crate) resource: Vec<String>,
    /// Token exchange: the file holding the subject token (e.g. a CI OIDC job token; -
    /// for stdin)
    #[arg(long, value_name = "FILE", conflicts_with = "refresh_token_file")]
    pub(crate) subject_token_file: Option<PathBuf>,
    /// Redeem the refresh token in this file (- for stdin) instead of the client's grant.
    /// Issuers that rotate refresh tokens return a new one: the one in the file is spent
    #[arg(long, value_name = "FILE")]
    pub(crate) refresh_token_file: Option<PathBuf>,
    /// Keep tokens in this file between runs (mode 0600; its directory is created 0700),
    /// keyed by issuer, client, key thumbprint, grant, scopes, audiences and resources:
    /// a token still valid there is used instead of asking the issuer, an expired one is
    /// replaced (with its refresh token when it has one), and one the server refuses is
    /// dropped and replaced once
    #[arg(long, value_name = "FILE")]
    pub(crate) token_cache: Option<PathBuf>,
    /// Token exchange: the subject token's type
    #[arg(
        long,
        value_name = "T",
        default_value = "urn:ietf:params:oauth:token-type:jwt",
        requires = "subject_token_file"
    )]
    pub(crate) subject_token_type: String,
}

#[derive(Debug, Args)]
pub(crate) struct TokenArgs {
    /// The DPoP key the token is bound to: a file (PKCS#8 PEM or private JWK, mode 0600;
    /// - for stdin) or a key in a device (pkcs11:..., tpm2:..., awskms:...; see docs/keys.md)
    #[arg(long, value_name = "KEY")]
    pub(crate) key: PathBuf,
    #[command(flatten)]
    pub(crate) issuer: IssuerTokenArgs,
    /// Print only the access token
    #[arg(long)]
    pub(crate) raw: bool,
}

#[derive(Debug, Args)]
pub(crate) struct KeygenArgs {
    /// Signature algorithm the key is for (EdDSA and Ed25519 both make an Ed25519 key)
    #[arg(long, value_enum, ignore_case = true, default_value_t = AlgArg::Es256)]
    pub(crate) alg: AlgArg,
    /// RSA modulus size in bits; only for RS*/PS* algorithms [default: 2048]
    #[arg(long, value_enum)]
    pub(crate) bits: Option<RsaBits>,
    /// File to write the private key to (- for stdout); it must not exist yet (see
    /// --force)
    #[arg(long, value_name = "FILE", required_unless_present = "key")]
    pub(crate) out: Option<PathBuf>,
    /// Generate the key inside a device instead, where it cannot be exported: a
    /// pkcs11:..., tpm2:... or awskms:... reference naming the new key (see docs/keys.md).
    /// Prints its thumbprint; nothing is written to a file
    #[arg(long, value_name = "KEY", conflicts_with_all = ["out", "force", "jwk", "encrypt", "bits"])]
    pub(crate) key: Option<String>,
    /// Replace FILE if it exists (atomically: written beside it, then renamed)
    #[arg(long)]
    pub(crate) force: bool,
    /// Write the key as a private JWK (JSON, records the algorithm) instead of PKCS#8 PEM
    #[arg(long, conflicts_with = "encrypt")]
    pub(crate) jwk: bool,
    /// Encrypt the key with a passphrase (PKCS#8 PBES2: PBKDF2-SHA256, AES-256-CBC), from
    /// --passphrase-file, --passphrase-env or a prompt (asked twice)
    #[arg(long)]
    pub(crate) encrypt: bool,
}

#[derive(Debug, Args)]
pub(crate) struct JwkArgs {
    /// Key file(s): PKCS#8 PEM private key, private JWK, or public JWK (- for stdin), or
    /// keys in a device (pkcs11:..., tpm2:..., awskms:...); several only with --set
    #[arg(value_name = "FILE", required = true)]
    pub(crate) files: Vec<PathBuf>,
    /// Add "kid": the key's thumbprint (RFC 7638)
    #[arg(long)]
    pub(crate) kid: bool,
    /// Add "alg" (the key's algorithm, or this one, which must fit the key) and
    /// "use": "sig"
    #[arg(long, value_enum, ignore_case = true, num_args = 0..=1, value_name = "ALG")]
    pub(crate) alg: Option<Option<AlgArg>>,
    /// Print a JWK Set ({"keys": [...]}) of every FILE, pretty-printed, with kid, alg and
    /// use (as an issuer's jwks_file holds)
    #[arg(long)]
    pub(crate) set: bool,
}

#[derive(Debug, Args)]
pub(crate) struct KeyFileArgs {
    /// Key file: PKCS#8 PEM private key, private JWK, or public JWK (- for stdin), or a
    /// key in a device (pkcs11:..., tpm2:..., awskms:...)
    #[arg(value_name = "FILE")]
    pub(crate) file: PathBuf,
}

#[derive(Debug, Args)]
pub(crate) struct ProofArgs {
    /// Private key to sign with: a file (PKCS#8 PEM or private JWK; - for stdin) or a key
    /// in a device (pkcs11:..., tpm2:..., awskms:...)
    #[arg(long, value_name = "KEY")]
    pub(crate) key: PathBuf,
    /// HTTP method of the request the proof is for (htm), e.g. GET or POST
    #[arg(long, value_name = "METHOD")]
    pub(crate) method: String,
    /// URL of the request (htu); query and fragment are dropped, as RFC 9449 requires
    #[arg(long, value_name = "URL")]
    pub(crate) url: String,
    /// Access token sent with the request: adds ath = base64url(SHA-256(token))
    #[arg(long, value_name = "TOKEN", allow_hyphen_values = true)]
    pub(crate) access_token: Option<String>,
    /// Server nonce from the DPoP-Nonce response header
    #[arg(long, value_name = "NONCE", allow_hyphen_values = true)]
    pub(crate) nonce: Option<String>,
    /// Signature algorithm; must fit the key. Only needed for RSA keys in PEM files,
    /// which do not record it [default: the key's: RS256 for RSA PEM, the JWK's alg]
    #[arg(long, value_enum, ignore_case = true)]
    pub(crate) alg: Option<AlgArg>,
    /// Creation time (iat) in seconds since the Unix epoch [default: now]
    #[arg(long, value_name = "UNIX_SECONDS")]
    pub(crate) iat: Option<u64>,
}

#[derive(Debug, Args)]
pub(crate) struct InspectArgs {
    /// The proof (the DPoP header value), or - to read it from stdin
    #[arg(value_name = "PROOF|-")]
    pub(crate) proof: String,
    /// Method of the request the proof came with; checks htm
    #[arg(long, value_name = "METHOD")]
    pub(crate) method: Option<String>,
    /// URL of the request the proof came with; checks htu (after normalisation)
    #[arg(long, value_name = "URL")]
    pub(crate) url: Option<String>,
    /// Access token presented with the proof; checks ath (and, with --jkt, the binding)
    #[arg(long, value_name = "TOKEN", allow_hyphen_values = true)]
    pub(crate) access_token: Option<String>,
    /// Thumbprint the proof key must have (the token's cnf.jkt, or dpop_jkt)
    #[arg(long, value_name = "JKT", allow_hyphen_values = true)]
    pub(crate) jkt: Option<String>,
    /// Nonce the server issued; the proof must carry exactly this nonce
    #[arg(long, value_name = "NONCE", allow_hyphen_values = true)]
    pub(crate) nonce: Option<String>,
    /// Verify as of this time, in seconds since the Unix epoch [default: now]
    #[arg(long, value_name = "UNIX_SECONDS")]
    pub(crate) now: Option<u64>,
    /// Print one JSON object instead of the human-readable report
    #[arg(long)]
    pub(crate) json: bool,
}

/// JWS algorithm names as they appear on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum AlgArg {
    /// ECDSA P-256 with SHA-256 (the default; the most widely supported)
    #[value(name = "ES256")]
    Es256,
    /// ECDSA P-384 with SHA-384
    #[value(name = "ES384")]
    Es384,
    /// ECDSA P-521 with SHA-512
    #[value(name = "ES512")]
    Es512,
    /// Ed25519 signatures, under the RFC 8037 name
    #[value(name = "EdDSA")]
    EdDsa,
    /// Ed25519 signatures, under the RFC 9864 name
    #[value(name = "Ed25519")]
    Ed25519,
    /// RSA PKCS#1 v1.5 with SHA-256
    #[value(name = "RS256")]
    Rs256,
    /// RSA PKCS#1 v1.5 with SHA-384
    #[value(name = "RS384")]
    Rs384,
    /// RSA PKCS#1 v1.5 with SHA-512
    #[value(name = "RS512")]
    Rs512,
    /// RSA-PSS with SHA-256
    #[value(name = "PS256")]
    Ps256,
    /// RSA-PSS with SHA-384
    #[value(name = "PS384")]
    Ps384,
    /// RSA-PSS with SHA-512
    #[value(name = "PS512")]
    Ps512,
    /// ML-DSA-44, post-quantum (RFC 9964; proofs of about 6 KB; servers must opt in)
    #[value(name = "ML-DSA-44")]
    MlDsa44,
    /// ML-DSA-65, post-quantum (proofs of about 8.3 KB)
    #[value(name = "ML-DSA-65")]
    MlDsa65,
    /// ML-DSA-87, post-quantum (proofs of about 11.2 KB)
    #[value(name = "ML-DSA-87")]
    MlDsa87,
}

impl From<AlgArg> for Algorithm {
    fn from(a: AlgArg) -> Self {
        match a {
            AlgArg::Es256 => Self::Es256,
            AlgArg::Es384 => Self::Es384,
            AlgArg::Es512 => Self::Es512,
            AlgArg::EdDsa => Self::EdDsa,
            AlgArg::Ed25519 => Self::Ed25519,
            AlgArg::Rs256 => Self::Rs256,
            AlgArg::Rs384 => Self::Rs384,
            AlgArg::Rs512 => Self::Rs512,
            AlgArg::Ps256 => Self::Ps256,
            AlgArg::Ps384 => Self::Ps384,
            AlgArg::Ps512 => Self::Ps512,
            AlgArg::MlDsa44 => Self::MlDsa44,
            AlgArg::MlDsa65 => Self::MlDsa65,
            AlgArg::MlDsa87 => Self::MlDsa87,
        }
    }
}

/// RSA key sizes offered by `keygen`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum RsaBits {
    /// 2048 bits (the default)
    #[value(name = "2048")]
    B2048,
    /// 3072 bits
    #[value(name = "3072")]
    B3072,
    /// 4096 bits (slow to generate)
    #[value(name = "4096")]
    B4096,
}

impl RsaBits {
    pub(crate) fn bits(self) -> usize {
        match self {
            Self::B2048 => 2048,
            Self::B3072 => 3072,
            Self::B4096 => 4096,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clap_definition_is_consistent() {
        use clap::CommandFactory as _;
        Cli::command().debug_assert();
    }

    #[test]
    fn every_algorithm_has_a_flag_value() {
        for alg in dpop_core::ALL_ALGORITHMS {
            let arg = AlgArg::from_str(alg.name(), false).unwrap();
            assert_eq!(Algorithm::from(arg), alg);
        }
    }
}

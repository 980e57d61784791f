//! The transfer: clients, redirects (a fresh proof per hop; none, and no token, for
//! another origin unless trusted), retries of failed connections, the time limit, and
//! the response written out.

use std::io::Write;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dpop_client::{DpopMiddleware, StaticToken, SubjectToken, TokenSource};
use reqwest::header::{
    AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, COOKIE, HOST, HeaderMap, LOCATION,
    PROXY_AUTHORIZATION,
};
use reqwest::{Method, StatusCode};

use super::exit::{self, CannotResolve, Failure};
use super::output::{self, Sink, Summary, Written};
use super::request::{self, Plan, has_userinfo};
use super::verbose::{self, Verbose};
use super::{diagnose, issuer_tokens, key, runtime};
use crate::cli::CurlArgs;
use crate::error::CliError;

/// Longest wait between two retries.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(600);

/// How the command reports: -s hides error messages and the status line, -S shows them
/// again.
#[derive(Clone, Copy, Debug)]
struct Report {
    errors: bool,
    verbose: bool,
}

/// Resolves host names with the system resolver, saying which name failed in a type of
/// its own (exit code 6 then does not depend on an error message's wording).
#[derive(Debug)]
struct Resolver;

impl reqwest::dns::Resolve for Resolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let failed = |cause| -> Box<dyn std::error::Error + Send + Sync> {
                Box::new(CannotResolve {
                    host: host.clone(),
                    cause,
                })
            };
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await
                .map_err(|e| failed(Some(e)))?
                .collect();
            if addrs.is_empty() {
                return Err(failed(None));
            }
            let addrs: reqwest::dns::Addrs = Box::new(addrs.into_iter());
            Ok(addrs)
        })
    }
}

/// A duration flag: seconds, fractions allowed; 0 means none.
fn seconds(flag: &str, value: &str) -> Result<Option<Duration>, CliError> {
    let secs: f64 = value
        .trim()
        .parse()
        .map_err(|_| CliError::usage(format!("{flag} {value:?} is not a number of seconds")))?;
    if secs == 0.0 {
        return Ok(None);
    }
    Duration::try_from_secs_f64(secs)
        .map(Some)
        .map_err(|_| CliError::usage(format!("{flag} {value:?} is not a number of seconds")))
}

/// Refuses the curl options that would weaken or bypass DPoP.
fn refuse(args: &CurlArgs) -> Result<(), CliError> {
    if args.insecure {
        return Err(CliError::usage(
            "-k/--insecure is refused: the access token and proofs sent over an unverified \
             connection belong to whoever sits in the middle; trust a private CA with \
             --cacert FILE",
        ));
    }
    if args.user.is_some() {
        return Err(CliError::usage(
            "-u/--user is refused: dpop curl sends a DPoP-bound access token, from --token, \
             --token-file or the token flags (--issuer, --client-id, ...)",
        ));
    }
    Ok(())
}

/// The HTTP client under the middleware: no redirects of its own (each hop needs its own
/// proof), the connect timeout, the CA of --cacert, the resolver above.
fn http_client(args: &CurlArgs) -> Result<reqwest::Client, CliError> {
    let mut builder = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .dns_resolver(Arc::new(Resolver));
    if let Some(t) = seconds("--connect-timeout", &args.connect_timeout)? {
        builder = builder.connect_timeout(t);
    }
    if let Some(path) = &args.cacert {
        let pem = std::fs::read(path)
            .map_err(|e| CliError::usage(format!("cannot read {}: {e}", path.display())))?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
            CliError::usage(format!("{}: not PEM certificates: {e}", path.display()))
        })?;
        if certs.is_empty() {
            return Err(CliError::usage(format!(
                "{} holds no PEM certificate",
                path.display()
            )));
        }
        builder = builder.tls_certs_only(certs);
    }
    builder
        .build()
        .map_err(|e| CliError::failed(format!("cannot build the HTTP client: {e}")))
}

/// Methods RFC 9110 §9.2.2 calls idempotent: only these are sent again by --retry.
fn idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::PUT | Method::DELETE | Method::OPTIONS | Method::TRACE
    )
}

/// The two ways a hop is sent: signed (the origin of the URL given, or any with
/// --location-trusted), or plain (another origin).
struct Clients {
    /// Through the DPoP middleware (proof, token, nonce and skew retries, `-v`).
    signed: reqwest_middleware::ClientWithMiddleware,
    /// The same HTTP client without it.
    plain: reqwest::Client,
    /// Whether signed requests carry an access token (for the hints of a refusal).
    token: bool,
    /// The token of --token or --token-file (its claims explain an `invalid_token`).
    static_token: Option<String>,
}

/// One request, as built for a hop.
struct Hop {
    url: reqwest::Url,
    method: Method,
    headers: HeaderMap,
    body: Option<Vec<u8>>,
    signed: bool,
}

impl Hop {
    fn request(&self, clients: &Clients) -> Result<reqwest::Request, Failure> {
        // Built without the middleware either way: `send` decides who sends it.
        let mut builder = clients
            .plain
            .request(self.method.clone(), self.url.clone())
            .headers(self.headers.clone());
        if let Some(b) = &self.body {
            builder = builder.body(b.clone());
        }
        builder
            .build()
            .map_err(|e| Failure::new(exit::USAGE, format!("cannot build the request: {e}")))
    }
}

/// Sends `hop`, again after a failed connection as --retry allows.
async fn send(
    hop: &Hop,
    clients: &Clients,
    args: &CurlArgs,
    report: Report,
) -> Result<reqwest::Response, Failure> {
    let mut attempt = 0;
    let mut delay = args
        .retry_delay
        .map_or(Duration::from_secs(1), Duration::from_secs);
    loop {
        let request = hop.request(clients)?;
        let result = if hop.signed {
            clients.signed.execute(request).await
        } else {
            if report.verbose {
                verbose::print_request(&request);
            }
            let r = clients.plain.execute(request).await;
            if report.verbose
                && let Ok(response) = &r
            {
                verbose::print_response(response);
            }
            r.map_err(reqwest_middleware::Error::Reqwest)
        };
        match result {
            Ok(r) => return Ok(r),
            Err(e)
                if attempt < args.retry
                    && idempotent(&hop.method)
                    && exit::is_connect_failure(&e) =>
            {
                attempt += 1;
                if report.errors {
                    eprintln!(
                        "warning: {}; retrying in {} s ({attempt} of {}){}",
                        exit::middleware(e, &hop.url).message,
                        delay.as_secs(),
                        args.retry,
                        if hop.signed {
                            ", with a fresh proof"
                        } else {
                            ""
                        }
                    );
                }
                tokio::time::sleep(delay).await;
                if args.retry_delay.is_none() {
                    delay = (delay * 2).min(MAX_RETRY_DELAY);
                }
            }
            Err(e) => return Err(exit::middleware(e, &hop.url)),
        }
    }
}

/// Where a redirect leads, and the next hop: 303 (and 301/302 after a POST) become a GET
/// without body, as curl and browsers do; 307 and 308 keep method and body.
fn next_hop(
    hop: &Hop,
    status: StatusCode,
    location: &str,
    first: &reqwest::Url,
    args: &CurlArgs,
) -> Result<Hop, Failure> {
    let url = hop.url.join(location).map_err(|e| {
        Failure::new(
            exit::OTHER,
            format!("the redirect to {location:?} is not a URL: {e}"),
        )
    })?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(Failure::new(
            exit::USAGE,
            format!("the redirect to {url} is not http(s): not followed"),
        ));
    }
    if has_userinfo(&url) {
        return Err(Failure::new(
            exit::USAGE,
            "a redirect to a URL with a user name or password: not followed".to_owned(),
        ));
    }
    let to_get = status == StatusCode::SEE_OTHER && hop.method != Method::HEAD
        || matches!(status, StatusCode::MOVED_PERMANENTLY | StatusCode::FOUND)
            && hop.method == Method::POST;
    let mut headers = hop.headers.clone();
    let (method, body) = if to_get {
        headers.remove(CONTENT_TYPE);
        headers.remove(CONTENT_LENGTH);
        (Method::GET, None)
    } else {
        (hop.method.clone(), hop.body.clone())
    };
    let same_origin = url.origin() == first.origin();
    // Even trusted, credentials never go from https to plain http. Once a hop was not
    // signed (another origin), no later one is: that origin could send the chain back
    // to any path of the first and have it signed there with this request's method.
    let signed = hop.signed && (same_origin || (args.location_trusted && !downgrade(first, &url)));
    if !signed {
        // As curl: credentials and the host set by hand do not follow to another host.
        for name in [AUTHORIZATION, COOKIE, PROXY_AUTHORIZATION, HOST] {
            headers.remove(name);
        }
    }
    Ok(Hop {
        url,
        method,
        headers,
        body,
        signed,
    })
}

/// Whether `to` is plain http where the transfer started over https.
fn downgrade(first: &reqwest::Url, to: &reqwest::Url) -> bool {
    first.scheme() == "https" && to.scheme() == "http"
}

/// What the transfer ended with.
struct Outcome {
    response: reqwest::Response,
    url: reqwest::Url,
    method: Method,
    redirects: u32,
    signed: bool,
}

/// Sends the request and follows redirects as -L says; with -i, each hop's head is
/// printed as it arrives.
async fn exchange<W: Write>(
    plan: Plan,
    clients: &Clients,
    args: &CurlArgs,
    report: Report,
    sink: &mut Sink<'_, W>,
) -> Result<Option<Outcome>, Failure> {
    let first = plan.url.clone();
    let mut hop = Hop {
        url: plan.url,
        method: plan.method,
        headers: plan.headers,
        body: plan.body,
        signed: true,
    };
    let follow = args.location || args.location_trusted;
    let mut redirects = 0_u32;
    loop {
        let response = send(&hop, clients, args, report).await?;
        let location = response
            .headers()
            .get(LOCATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let status = response.status();
        let location = match location {
            Some(l) if follow && status.is_redirection() => l,
            _ => {
                return Ok(Some(Outcome {
                    response,
                    url: hop.url,
                    method: hop.method,
                    redirects,
                    signed: hop.signed,
                }));
            }
        };
        if args.max_redirs >= 0 && i64::from(redirects) >= args.max_redirs {
            return Err(Failure::new(
                exit::TOO_MANY_REDIRECTS,
                format!(
                    "{} redirects followed, the most --max-redirs allows",
                    args.max_redirs
                ),
            ));
        }
        if (args.include || args.head) && sink.head(&response)? == Written::ReaderGone {
            return Ok(None);
        }
        let next = next_hop(&hop, status, &location, &first, args)?;
        if report.verbose {
            verbose::info(&format!("following the redirect to {}", next.url));
            if !next.signed && downgrade(&first, &next.url) {
                verbose::info(&format!(
                    "{} is plain http: no token and no proof go there",
                    next.url.origin().ascii_serialization()
                ));
            } else if !next.signed {
                verbose::info(&format!(
                    "{} is another origin than {}: no token and no proof go there \
                     (--location-trusted sends them)",
                    next.url.origin().ascii_serialization(),
                    first.origin().ascii_serialization()
                ));
            }
        }
        redirects += 1;
        hop = next;
    }
}

/// Runs the command; failures of the transfer are reported here (as curl, `-s` hides
/// them) and become curl's exit codes, usage errors go back to `main`.
pub(crate) fn run(args: &CurlArgs, out: &mut impl Write) -> Result<ExitCode, CliError> {
    refuse(args)?;
    let report = Report {
        errors: !args.silent || args.show_error,
        verbose: args.verbose,
    };
    if args.verbose {
        for f in crate::env::from_env() {
            verbose::info(&f.to_string());
        }
    }
    let mut dpop = DpopMiddleware::new(key(&args.key)?);
    if args.verbose {
        dpop = dpop.with_observer(Arc::new(Verbose));
    }
    let inner = http_client(args)?;
    let static_token = match (&args.token, &args.token_file) {
        (Some(t), _) => Some(t.clone()),
        // Checked as every token file: owner-only, bounded, not empty.
        (None, Some(path)) => Some(
            SubjectToken::File(path.clone())
                .read()
                .map_err(|e| CliError::usage(format!("--token-file: {e}")))?
                .to_string(),
        ),
        (None, None) => None,
    };
    let tokens: Option<Arc<dyn TokenSource>> = match &static_token {
        Some(t) => Some(Arc::new(StaticToken::new(t))),
        // The issuer is reached as the API is: the same CA, resolver and connect timeout.
        None => issuer_tokens(&args.issuer, &dpop, Some(inner.clone()))?,
    };
    let has_token = tokens.is_some();
    let plan = request::plan(args, has_token)?;
    let target = output::target(args, &plan.url)?;
    if let Some(format) = &args.write_out {
        // Checked before anything is sent.
        output::write_out(
            format,
            &Summary {
                status: 0,
                url: &plan.url,
                method: "GET",
                elapsed: Duration::ZERO,
                redirects: 0,
                size: 0,
                content_type: None,
            },
        )?;
    }
    let max_time = seconds("-m/--max-time", &args.max_time)?;
    let dpop = match tokens {
        Some(t) => dpop.with_tokens(t),
        None => dpop,
    };
    let clients = Clients {
        signed: reqwest_middleware::ClientBuilder::new(inner.clone())
            .with(dpop)
            .build(),
        plain: inner,
        token: has_token,
        static_token: static_token.map(|t| t.trim().to_owned()),
    };
    let started = Instant::now();
    let mut sink = Sink::new(out, target);
    let runtime = runtime()?;
    let result = runtime.block_on(async {
        let work = transfer(plan, &clients, args, report, &mut sink, started);
        match max_time {
            Some(limit) => tokio::time::timeout(limit, work)
                .await
                .unwrap_or_else(|_| Err(Failure::timeout(limit))),
            None => work.await,
        }
    });
    match result {
        Ok(code) => Ok(code),
        Err(failure) => {
            if report.errors {
                eprintln!("error: {failure}");
            }
            Ok(ExitCode::from(failure.code))
        }
    }
}

/// The exchange, the output, the status line and -w.
async fn transfer<W: Write>(
    plan: Plan,
    clients: &Clients,
    args: &CurlArgs,
    report: Report,
    sink: &mut Sink<'_, W>,
    started: Instant,
) -> Result<ExitCode, Failure> {
    // The reader went away while a redirect's head was printed (-i).
    let Some(outcome) = exchange(plan, clients, args, report, sink).await? else {
        return Err(output::reader_gone());
    };
    let Outcome {
        mut response,
        url,
        method,
        redirects,
        signed,
    } = outcome;
    let status = response.status();
    let failed = status.as_u16() >= 400;
    let content_type = response
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let headers = response.headers().clone();
    // -f: curl prints nothing of a failed response; --fail-with-body prints it all.
    let print = !(args.fail && failed);
    let http_error = failed && (args.fail || args.fail_with_body);
    // As curl: standard output closed early is a write error (23), unless the status
    // already makes it 22 with -f.
    let gone = || {
        if http_error {
            Ok(ExitCode::from(exit::HTTP_ERROR))
        } else {
            Err(output::reader_gone())
        }
    };
    if print && (args.include || args.head) && sink.head(&response)? == Written::ReaderGone {
        return gone();
    }
    if print && method != Method::HEAD {
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| exit::transport(&e, &url))?
        {
            if sink.body(&chunk)? == Written::ReaderGone {
                return gone();
            }
        }
    }
    if sink.finish()? == Written::ReaderGone {
        return gone();
    }
    if failed && report.errors {
        let token = clients.static_token.as_deref().filter(|_| signed);
        let line = diagnose::line(status, &url, &headers, clients.token && signed, token);
        let prefix = if args.fail || args.fail_with_body {
            "error"
        } else {
            "warning"
        };
        eprintln!("{prefix}: {line}");
    }
    if let Some(format) = &args.write_out {
        let text = output::write_out(
            format,
            &Summary {
                status: status.as_u16(),
                url: &url,
                method: method.as_str(),
                elapsed: started.elapsed(),
                redirects,
                size: sink.body_bytes,
                content_type: content_type.as_deref(),
            },
        )
        .map_err(|e| Failure::new(exit::USAGE, e.to_string()))?;
        if sink.write_out(&text)? == Written::ReaderGone {
            return gone();
        }
        if sink.finish()? == Written::ReaderGone {
            return gone();
        }
    }
    Ok(if http_error {
        ExitCode::from(exit::HTTP_ERROR)
    } else {
        ExitCode::SUCCESS
    })
}

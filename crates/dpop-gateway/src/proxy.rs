//! Forwarding to the upstream: pooled connections, streamed bodies, hop-by-hop headers
//! removed, forwarding and identity headers set, failures turned into 502/504 without
//! internal detail.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use dpop_core::Jkt;
use dpop_server::http::method_label;
use dpop_tower::{AuthorizedTarget, ClientCertificate, DpopIdentity, PeerAddr};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Uri};
use http_body_util::BodyExt as _;
use http_body_util::combinators::BoxBody;
use hyper::body::{Body as HttpBody, Frame, Incoming, SizeHint};

use crate::access_log::{Caller, Forwarded};
use crate::config::{GatewayConfig, IdentityHeaders, UpstreamConfig};
use crate::error::GatewayError;
use crate::h1;
use crate::metrics::Metrics;
use crate::metrics::RouteLabels;
use crate::pool::{self, PoolError, UpstreamClient};
use crate::stream::{self, ConnectionSlot};
use crate::upstream::{self, SystemRoots, UpstreamConnector};

/// The response body type of the gateway. Its error ends the response abruptly (a
/// stream whose lifetime ran out, an upstream that failed mid-body), so the client sees
/// it incomplete.
pub type Body = BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

/// RFC 9110 §7.6.1: connection-specific fields a proxy must not forward. `Trailer` is
/// not one (RFC 9110 §6.6.2: it announces end-to-end trailer fields, and HTTP/1.1
/// servers send only the trailers it names).
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    // RFC 7540 §3.2.1: the h2c upgrade's settings, meaningful on one connection only.
    HeaderName::from_static("http2-settings"),
];

pub(crate) fn empty(status: StatusCode) -> Response<Body> {
    let mut r = Response::new(Body::default());
    *r.status_mut() = status;
    r
}

/// The fields named in `Connection`: hop-by-hop too.
fn connection_named(headers: &HeaderMap) -> Vec<HeaderName> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect()
}

/// Removes the hop-by-hop fields, and those `Connection` names, from a response head: one
/// pass over the names the response carries (a handful), rather than one hashed lookup per
/// name that could be there.
fn remove_hop_by_hop(headers: &mut HeaderMap) {
    let named = connection_named(headers);
    let doomed: smallvec::SmallVec<[HeaderName; 4]> = headers
        .keys()
        .filter(|k| HOP_BY_HOP.contains(k) || named.contains(k))
        .cloned()
        .collect();
    for name in doomed {
        headers.remove(name);
    }
}

/// What is removed from a request head before it goes upstream, decided in one pass
/// over the names the request carries (a few) rather than one lookup per name the gateway
/// knows (about fifty).
pub(crate) struct RequestStrip {
    /// The names removed from every request (hop-by-hop fields, method and URL overrides,
    /// `Host`, whose upstream value is set, the identity headers) and those removed
    /// unless the peer is a trusted proxy (where the request came from and what it
    /// addressed): one hashed lookup per name the request carries.
    listed: HashMap<HeaderName, Listed>,
    /// Lower-case names (`-` form) of every header the gateway manages, whose `_`
    /// spellings are removed too.
    managed: Vec<String>,
    strip_authorization: bool,
    strip_dpop: bool,
}

/// When a name in [`RequestStrip::listed`] is removed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Listed {
    Always,
    UnlessTrusted,
}

impl RequestStrip {
    pub(crate) fn new(
        identity_names: &[HeaderName],
        strip_authorization: bool,
        strip_dpop: bool,
    ) -> Self {
        let identity = identity_names.iter().map(|n| n.as_str().to_owned());
        let named = |names: &[&'static str]| {
            names
                .iter()
                .map(|n| HeaderName::from_static(n))
                .collect::<Vec<_>>()
        };
        // The claims first: a name in both lists is removed always.
        let listed = named(&CLAIMS)
            .into_iter()
            .chain([X_FORWARDED_FOR, X_FORWARDED_PROTO])
            .map(|n| (n, Listed::UnlessTrusted))
            .chain(
                HOP_BY_HOP
                    .into_iter()
                    .chain(named(&OVERRIDES))
                    .chain([header::HOST])
                    .chain(identity_names.iter().cloned())
                    .map(|n| (n, Listed::Always)),
            )
            .collect();
        let managed = identity
            .chain(
                MANAGED
                    .iter()
                    .chain(&OVERRIDES)
                    .chain(&CLAIMS)
                    .map(|n| (*n).to_owned()),
            )
            .collect();
        Self {
            listed,
            managed,
            strip_authorization,
            strip_dpop,
        }
    }

    /// Removes from `headers` what must not reach the upstream: hop-by-hop fields (also
    /// those named in `Connection`), keeping `TE: trailers` (gRPC servers require it; it
    /// is forwarded as exactly that, as Envoy does, nothing else of `TE`) and the
    /// upgrade of a WebSocket handshake (any other upgrade is removed); method and URL
    /// overrides; `Host`; client-sent identity headers; forwarding claims unless
    /// `trusted`; `Authorization` and `DPoP` when the gateway `vouched` for the request
    /// (and is set to strip them); and every `_` spelling of a managed header.
    pub(crate) fn apply(
        &self,
        headers: &mut HeaderMap,
        trusted: bool,
        vouched: bool,
        websocket: bool,
    ) {
        let te_trailers =
            headers.contains_key(header::TE) && stream::has_token(headers, &header::TE, "trailers");
        let named = connection_named(headers);
        // Without an allocation for the usual few (`Host`, the credentials).
        let doomed: smallvec::SmallVec<[HeaderName; 8]> = headers
            .keys()
            .filter(|k| {
                let name = k.as_str();
                let listed = match self.listed.get(*k) {
                    Some(Listed::Always) => true,
                    Some(Listed::UnlessTrusted) => !trusted,
                    None => false,
                };
                listed
                    || (vouched
                        && ((self.strip_authorization && *k == header::AUTHORIZATION)
                            || (self.strip_dpop && name == "dpop")))
                    || (name.bytes().any(|b| b == b'_')
                        && self.managed.contains(&name.replace('_', "-")))
                    || named.contains(k)
            })
            .cloned()
            .collect();
        for name in doomed {
            headers.remove(name);
        }
        if te_trailers {
            headers.insert(header::TE, HeaderValue::from_static("trailers"));
        }
        if websocket {
            stream::set_websocket_upgrade(headers);
        }
    }
}

/// Headers the gateway sets or vouches for. A client-sent header whose name equals one
/// of these once `_` is read as `-` is removed too: CGI, Rack, WSGI and PHP turn both
/// `X-DPoP-Subject` and `X_DPoP_Subject` into `HTTP_X_DPOP_SUBJECT`.
const MANAGED: [&str; 5] = [
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "authorization",
    "dpop",
];

/// Headers that make common frameworks run another method or route another path than the
/// request line says (Rack, Symfony, Laravel, IIS URL Rewrite), or that an application
/// could read as the request's method or URI: the gateway and the authorizer judged the
/// request line, so these never reach the upstream, whoever sends them.
pub(crate) const OVERRIDES: [&str; 11] = [
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
    "x-original-url",
    "x-rewrite-url",
    "x-original-uri",
    "x-forwarded-uri",
    "x-original-method",
    "x-forwarded-method",
    "x-envoy-original-path",
    // The gateway never reads RFC 7239 `Forwarded`; passed on, it could name another
    // host or scheme than the one the proof was checked against.
    "forwarded",
];

/// Headers that claim where the request came from or was addressed to. Believed only
/// from a trusted proxy, as for the `htu`; from anyone else they are removed.
const CLAIMS: [&str; 19] = [
    "x-forwarded-host",
    "x-forwarded-prefix",
    "x-forwarded-port",
    "x-forwarded-server",
    "x-forwarded-ssl",
    "x-forwarded-scheme",
    "x-forwarded-protocol",
    "x-forwarded",
    "x-url-scheme",
    "front-end-https",
    "forwarded-for",
    "x-real-ip",
    "true-client-ip",
    "client-ip",
    "x-client-ip",
    "x-cluster-client-ip",
    "x-original-host",
    "x-host",
    "x-original-forwarded-for",
];

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// `X-Forwarded-For` for the upstream: the list the request carries (only a trusted
/// proxy's is left by then) followed by `peer`. RFC 9110 §5.3: repeated field lines are
/// one list, in order; all are kept. With no list, the value is the peer's address
/// alone, which each serving thread keeps for the last peer it saw: a connection's
/// requests all come from one address.
fn forwarded_for(headers: &HeaderMap, peer: IpAddr) -> Option<HeaderValue> {
    use std::fmt::Write as _;
    thread_local! {
        static LAST_PEER: std::cell::RefCell<Option<(IpAddr, HeaderValue)>> =
            const { std::cell::RefCell::new(None) };
    }
    let mut hops = headers
        .get_all(&X_FORWARDED_FOR)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .peekable();
    if hops.peek().is_none() {
        return LAST_PEER.with_borrow_mut(|last| match last {
            Some((ip, value)) if *ip == peer => Some(value.clone()),
            _ => {
                let value = HeaderValue::from_maybe_shared(Bytes::from(peer.to_string())).ok()?;
                *last = Some((peer, value.clone()));
                Some(value)
            }
        });
    }
    let mut value = String::new();
    for hop in hops {
        value.push_str(hop);
        value.push_str(", ");
    }
    let _ = write!(value, "{peer}");
    HeaderValue::from_maybe_shared(Bytes::from(value)).ok()
}

/// The `Host` field of an HTTP/1.1 request to `url`: its host, and its port unless it
/// is the scheme's default (what hyper's client would send).
fn host_header(url: &Uri) -> Option<HeaderValue> {
    let host = url.host()?;
    let default = match url.scheme_str() {
        Some("https") => 443,
        _ => 80,
    };
    match url.port_u16().filter(|p| *p != default) {
        Some(port) => HeaderValue::from_str(&format!("{host}:{port}")).ok(),
        None => HeaderValue::from_str(host).ok(),
    }
}

/// The first element of the comma-separated list in the field lines of `name`.
fn first_value(headers: &HeaderMap, name: &str) -> Option<HeaderValue> {
    let first = headers.get(name)?.to_str().ok()?.split(',').next()?.trim();
    HeaderValue::from_str(first)
        .ok()
        .filter(|_| !first.is_empty())
}

/// Removes every header whose name has a `_` and reads as one of `names` with `_` as `-`.
fn remove_underscore_aliases(headers: &mut HeaderMap, names: &[String]) {
    let aliases: Vec<HeaderName> = headers
        .keys()
        .filter(|k| k.as_str().contains('_'))
        .filter(|k| {
            let dashed = k.as_str().replace('_', "-");
            names.contains(&dashed)
        })
        .cloned()
        .collect();
    for name in aliases {
        headers.remove(name);
    }
}

/// RFC 9113 §8.2.3: the `Cookie` fields an HTTP/2 client may split are joined with `; `
/// before an HTTP/1.1 hop, where one line is expected (a server reading only the first,
/// or joining with `,`, would see other cookies than were sent).
fn join_cookies(headers: &mut HeaderMap) {
    let mut values = headers.get_all(header::COOKIE).iter();
    if values.nth(1).is_none() {
        return;
    }
    let joined: Vec<&[u8]> = headers
        .get_all(header::COOKIE)
        .iter()
        .map(HeaderValue::as_bytes)
        .collect();
    if let Ok(v) = HeaderValue::from_bytes(&joined.join(&b"; "[..])) {
        headers.insert(header::COOKIE, v);
    }
}

/// A client's request body on its way to the upstream. Its trailers are a second header
/// section the client writes: the fields the gateway manages are removed from them as
/// from the head (in every `_` spelling too), or an upstream that reads trailers beside
/// the headers could be handed another identity or forwarding claim than the gateway's.
pub(crate) struct RequestBody {
    inner: Incoming,
    settings: Arc<Settings>,
}

impl HttpBody for RequestBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        polled.map(|frame| {
            frame.map(|frame| {
                frame.map(|frame| match frame.into_trailers() {
                    Ok(mut trailers) => {
                        let names = &self.settings.strip.managed;
                        for name in names {
                            trailers.remove(name.as_str());
                        }
                        remove_underscore_aliases(&mut trailers, names);
                        Frame::trailers(trailers)
                    }
                    Err(data) => data,
                })
            })
        })
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// One upstream and the pooled client of its connection setting.
struct Upstream {
    config: UpstreamConfig,
    /// The name in the access log: the configuration's text, made once.
    name: Arc<str>,
    /// The `Host` of an HTTP/1.1 request to it, made once (see [`host_header`]).
    host: HeaderValue,
    client: UpstreamClient<RequestBody>,
    /// To probe the upstream at start-up without going through the pool.
    connector: UpstreamConnector,
    /// Which client of [`Upstreams::new`] this is: upstreams sharing one share it again
    /// in [`Upstreams::with_own_pools`].
    pool: usize,
}

/// The default upstream and the routes' own, by route id.
struct Upstreams {
    default: Arc<Upstream>,
    routes: BTreeMap<usize, Arc<Upstream>>,
}

impl Upstreams {
    /// One client per distinct connection setting (TLS settings and HTTP version): the
    /// upstreams sharing one share its pool, whose connections are per host anyway.
    fn new(config: &GatewayConfig) -> Result<Self, GatewayError> {
        let mut roots = SystemRoots::default();
        let mut clients: Vec<(
            UpstreamConfig,
            UpstreamClient<RequestBody>,
            UpstreamConnector,
        )> = Vec::new();
        let mut make = |u: &UpstreamConfig| -> Result<Arc<Upstream>, GatewayError> {
            let same = clients
                .iter()
                .enumerate()
                .find(|(_, (c, _, _))| c.tls == u.tls && c.http2 == u.http2);
            let (client, connector, pool) = match same {
                Some((pool, (_, client, connector))) => (client.clone(), connector.clone(), pool),
                None => {
                    let connector = upstream::connector(u, &mut roots)?;
                    let client = pool::client(connector.clone());
                    clients.push((u.clone(), client.clone(), connector.clone()));
                    (client, connector, clients.len() - 1)
                }
            };
            Ok(Arc::new(Upstream {
                config: u.clone(),
                name: Arc::from(u.to_string()),
                host: host_header(&u.url).ok_or_else(|| {
                    GatewayError::Config(format!("upstream {}: the URL names no host", u.url))
                })?,
                client,
                connector,
                pool,
            }))
        };
        let default = make(&config.upstream)?;
        let routes = config
            .route_upstreams
            .iter()
            .map(|(id, u)| Ok((*id, make(u)?)))
            .collect::<Result<_, GatewayError>>()?;
        Ok(Self { default, routes })
    }

    /// The same upstreams with connection pools of their own (the same connectors: TLS
    /// settings read once), shared as in [`Upstreams::new`]: new, empty ones, except that
    /// a plain-HTTP pool of `previous` (the same thread's upstreams before a
    /// configuration reload) is kept with its open connections, as nothing a
    /// configuration sets is part of them.
    fn with_own_pools(&self, previous: Option<&Self>) -> Self {
        let mut pools: BTreeMap<usize, UpstreamClient<RequestBody>> = BTreeMap::new();
        let mut renew = |u: &Arc<Upstream>| {
            let client = pools
                .entry(u.pool)
                .or_insert_with(|| {
                    previous
                        .and_then(|p| p.plain_pool(&u.config))
                        .unwrap_or_else(|| pool::client(u.connector.clone()))
                })
                .clone();
            Arc::new(Upstream {
                config: u.config.clone(),
                name: Arc::clone(&u.name),
                host: u.host.clone(),
                client,
                connector: u.connector.clone(),
                pool: u.pool,
            })
        };
        Self {
            default: renew(&self.default),
            routes: self.routes.iter().map(|(id, u)| (*id, renew(u))).collect(),
        }
    }

    /// The pool of a plain-HTTP upstream speaking the HTTP version `config` does, when
    /// `config` is plain HTTP too (an https pool's connections were made with TLS
    /// settings a reload may have changed, a CA file's content among them).
    fn plain_pool(&self, config: &UpstreamConfig) -> Option<UpstreamClient<RequestBody>> {
        if config.tls.is_some() {
            return None;
        }
        std::iter::once(&self.default)
            .chain(self.routes.values())
            .find(|u| u.config.tls.is_none() && u.config.http2 == config.http2)
            .map(|u| u.client.clone())
    }

    /// The upstream of the route the layer matched (the default for none, or a route
    /// without its own).
    fn for_target(&self, target: &AuthorizedTarget) -> &Arc<Upstream> {
        target
            .route_id()
            .and_then(|id| self.routes.get(&id))
            .unwrap_or(&self.default)
    }
}

impl std::fmt::Debug for Upstreams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut d = f.debug_struct("Upstreams");
        d.field("default", &self.default.config.to_string());
        let routes: BTreeMap<usize, String> = self
            .routes
            .iter()
            .map(|(id, u)| (*id, u.config.to_string()))
            .collect();
        d.field("routes", &routes).finish()
    }
}

struct Settings {
    /// The `http_route` label of each of this configuration's routes.
    routes: RouteLabels,
    identity: IdentityNames,
    /// What goes from every request head.
    strip: RequestStrip,
    client_scheme: HeaderValue,
    timeout: Duration,
    trusted_proxies: Vec<ipnet::IpNet>,
    /// `max_stream_secs` of each configured route, by route id (its config index).
    route_max_stream: Vec<Duration>,
    /// `[limits] max_stream_secs`, where no route matched.
    max_stream: Duration,
    /// Whether the access log is written (`log_requests`): the caller is copied for it.
    log_requests: bool,
}

/// The upstream-facing service at the bottom of the gateway stack.
#[derive(Clone)]
pub struct Proxy {
    upstreams: Arc<Upstreams>,
    settings: Arc<Settings>,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy")
            .field("upstreams", &self.upstreams)
            .finish_non_exhaustive()
    }
}

/// The identity header names of a configuration, parsed once when it is loaded (the
/// loader has checked each is a valid field name; one configured empty is `None` and is
/// never sent).
#[derive(Debug)]
pub(crate) struct IdentityNames {
    subject: Option<HeaderName>,
    client_id: Option<HeaderName>,
    jkt: Option<HeaderName>,
    scopes: Option<HeaderName>,
    client_cert_subject: Option<HeaderName>,
    client_cert_thumbprint: Option<HeaderName>,
}

impl IdentityNames {
    pub(crate) fn new(config: &IdentityHeaders) -> Self {
        let parse = |name: &str| HeaderName::from_bytes(name.as_bytes()).ok();
        Self {
            subject: parse(&config.subject),
            client_id: parse(&config.client_id),
            jkt: parse(&config.jkt),
            scopes: parse(&config.scopes),
            client_cert_subject: parse(&config.client_cert_subject),
            client_cert_thumbprint: parse(&config.client_cert_thumbprint),
        }
    }

    /// Every configured name.
    pub(crate) fn all(&self) -> impl Iterator<Item = &HeaderName> {
        [
            &self.subject,
            &self.client_id,
            &self.jkt,
            &self.scopes,
            &self.client_cert_subject,
            &self.client_cert_thumbprint,
        ]
        .into_iter()
        .flatten()
    }

    /// The identity headers for these claims: a name configured empty is not sent, and
    /// neither is a value that cannot be a header value (the header is then absent, never
    /// the client's own: the strip removed every client-sent spelling).
    fn values(
        &self,
        subject: Option<String>,
        client_id: Option<String>,
        jkt: Option<&str>,
        scopes: &[String],
    ) -> Vec<(HeaderName, HeaderValue)> {
        // Owned strings become header values without a copy.
        let owned = |v: Option<String>| v.and_then(|v| HeaderValue::try_from(v).ok());
        let scopes = Some(scopes.join(" ")).filter(|s| !s.is_empty());
        [
            (&self.subject, owned(subject)),
            (&self.client_id, owned(client_id)),
            (&self.jkt, jkt.and_then(|j| HeaderValue::from_str(j).ok())),
            (&self.scopes, owned(scopes)),
        ]
        .into_iter()
        .filter_map(|(name, value)| Some((name.clone()?, value?)))
        .collect()
    }
}

/// The identity headers for a verified caller, as the upstream receives them (from the
/// gateway, or from the proxy in front of `dpop authz`).
pub(crate) fn identity_values(
    names: &IdentityNames,
    id: DpopIdentity,
) -> Vec<(HeaderName, HeaderValue)> {
    names.values(
        id.subject,
        id.client_id,
        id.jkt.as_ref().map(Jkt::as_str),
        &id.scopes,
    )
}

/// The client-certificate headers for a certificate the TLS handshake verified.
fn certificate_values(
    names: &IdentityNames,
    cert: ClientCertificate,
) -> impl Iterator<Item = (HeaderName, HeaderValue)> {
    let thumbprint = HeaderValue::from_str(cert.thumbprint.as_str()).ok();
    let subject = cert.subject.and_then(|v| HeaderValue::try_from(v).ok());
    [
        (&names.client_cert_thumbprint, thumbprint),
        (&names.client_cert_subject, subject),
    ]
    .into_iter()
    .filter_map(|(name, value)| Some((name.clone()?, value?)))
}

impl Proxy {
    /// A proxy to `config.upstream` and the routes' own upstreams.
    ///
    /// # Errors
    /// [`GatewayError::Config`] naming the file and the reason when a CA, certificate or
    /// key file cannot be read or parsed, or a client key does not match its
    /// certificate; also when an https upstream without `ca_file` finds no trusted roots
    /// on the system.
    pub fn new(config: &GatewayConfig, metrics: Arc<Metrics>) -> Result<Self, GatewayError> {
        let upstreams = Arc::new(Upstreams::new(config)?);
        let identity = IdentityNames::new(&config.enforcement.identity_headers);
        let identity_names: Vec<HeaderName> = identity.all().cloned().collect();
        let client_scheme = match config.enforcement.public_urls.first() {
            Some(u) if u.starts_with("https://") => HeaderValue::from_static("https"),
            _ if config.tls.is_some() => HeaderValue::from_static("https"),
            _ => HeaderValue::from_static("http"),
        };
        let settings = Settings {
            identity,
            strip: RequestStrip::new(
                &identity_names,
                config.enforcement.strip_authorization,
                config.enforcement.strip_dpop,
            ),
            client_scheme,
            timeout: config.upstream_timeout,
            trusted_proxies: config.enforcement.trusted_proxies.clone(),
            route_max_stream: config.route_max_stream.clone(),
            max_stream: config.max_stream,
            log_requests: config.enforcement.log_requests,
            routes: RouteLabels::new(&config.enforcement.route_names),
        };
        Ok(Self {
            upstreams,
            settings: Arc::new(settings),
            metrics,
        })
    }

    /// The same proxy with connection pools of its own, for one serving thread: its
    /// upstream connections are then driven by the thread that uses them.
    #[must_use]
    pub fn with_own_pools(&self) -> Self {
        self.with_pools_after(None)
    }

    /// The `http_route` labels of this configuration's routes.
    pub(crate) fn routes(&self) -> &RouteLabels {
        &self.settings.routes
    }

    /// Whether this configuration writes the access log.
    pub(crate) fn log_requests(&self) -> bool {
        self.settings.log_requests
    }

    /// As [`Self::with_own_pools`], for the thread that used `previous` until a
    /// configuration reload: its plain-HTTP pools, and their open connections, are kept.
    pub(crate) fn with_pools_after(&self, previous: Option<&Self>) -> Self {
        Self {
            upstreams: Arc::new(
                self.upstreams
                    .with_own_pools(previous.map(|p| &*p.upstreams)),
            ),
            settings: Arc::clone(&self.settings),
            metrics: Arc::clone(&self.metrics),
        }
    }

    /// Connects once to every https or HTTP/2 upstream (bounded by a few seconds each).
    ///
    /// # Errors
    /// [`GatewayError::Upstream`] naming the upstream when its certificate does not
    /// verify, it refuses the handshake, or it does not speak HTTP/2 where `http2` is
    /// set. An unreachable upstream is only logged: it may start after the gateway.
    pub async fn check_upstreams(&self) -> Result<(), GatewayError> {
        let u = &self.upstreams;
        for upstream in std::iter::once(&u.default).chain(u.routes.values()) {
            upstream::probe(&upstream.config, &upstream.connector).await?;
        }
        Ok(())
    }

    /// The origin-form target sent upstream for `target`, the exact target the layer
    /// authorised: the upstream's path prefix, then the target (the client puts the
    /// upstream's scheme and authority where the protocol wants them).
    fn upstream_target(upstream: &UpstreamConfig, target: &AuthorizedTarget) -> Option<Uri> {
        let (prefix, target) = (upstream.path_prefix(), target.as_str());
        let mut path = String::with_capacity(prefix.len() + target.len());
        path.push_str(prefix);
        path.push_str(target);
        Uri::from_maybe_shared(Bytes::from(path)).ok()
    }

    /// Readies `req` for its upstream; returns that upstream, the stream lifetime of
    /// the request's route and what the access log will say of it.
    fn prepare(
        &self,
        req: &mut Request<Incoming>,
        websocket: bool,
    ) -> Option<(Arc<Upstream>, Duration, Forwarded)> {
        let s = &self.settings;
        let peer: Option<IpAddr> = req.extensions().get::<PeerAddr>().map(|p| p.0.ip());
        let identity = req.extensions_mut().remove::<DpopIdentity>();
        let client_cert = req.extensions_mut().remove::<ClientCertificate>();
        // Forward exactly what the layer judged; without its verdict nothing is forwarded.
        let target = req.extensions_mut().remove::<AuthorizedTarget>()?;
        let upstream = Arc::clone(self.upstreams.for_target(&target));
        let path = target.path();
        dpop_server::telemetry::record_path(&tracing::Span::current(), path);
        *req.uri_mut() = Self::upstream_target(&upstream.config, &target)?;
        let caller = if s.log_requests {
            identity.as_ref().map(Caller::of)
        } else {
            None
        };
        // The upstream's version, whatever the client spoke: hyper's client refuses an
        // HTTP/2 request on an HTTP/1.1 connection.
        *req.version_mut() = if upstream.config.http2 {
            http::Version::HTTP_2
        } else {
            http::Version::HTTP_11
        };
        // The route the layer matched chooses the lifetime.
        let lifetime = target
            .route_id()
            .and_then(|id| s.route_max_stream.get(id).copied())
            .unwrap_or(s.max_stream);
        // Where the request came from and what it addressed is only believed from a
        // trusted proxy (as for the htu); from anyone else it would reach the upstream as
        // if the gateway vouched for it.
        let trusted = peer.is_some_and(|ip| {
            s.trusted_proxies
                .iter()
                .any(|n| n.contains(&ip.to_canonical()))
        });
        // Credentials the gateway checked are replaced by the identity. Where it did not
        // vouch for the request (an `off` route, a report-only failure) they pass through,
        // so an upstream that still authenticates on its own keeps working during roll-out.
        let vouched = identity.is_some();
        let headers = req.headers_mut();
        s.strip.apply(headers, trusted, vouched, websocket);
        if trusted {
            // The first value is the one the layer used; forward that one only.
            for name in ["x-forwarded-host", "x-forwarded-proto"] {
                if let Some(first) = first_value(headers, name) {
                    headers.insert(HeaderName::from_static(name), first);
                } else {
                    headers.remove(name);
                }
            }
        }
        if !upstream.config.http2 {
            join_cookies(headers);
        }
        if let Some(ip) = peer
            && let Some(v) = forwarded_for(headers, ip.to_canonical())
        {
            headers.insert(X_FORWARDED_FOR, v);
        }
        if !headers.contains_key(&X_FORWARDED_PROTO) {
            headers.insert(X_FORWARDED_PROTO, s.client_scheme.clone());
        }
        // The upstream's own `Host` (the client's was removed above), made once per
        // upstream: the HTTP/1.1 pool sends the head as given, so this is the only `Host`
        // an HTTP/1.1 upstream sees. HTTP/2 carries the authority in `:authority`.
        if !upstream.config.http2 {
            headers.insert(header::HOST, upstream.host.clone());
        }
        // Set only from the certificate the TLS handshake verified.
        if let Some(cert) = client_cert {
            for (name, value) in certificate_values(&s.identity, cert) {
                headers.insert(name, value);
            }
        }
        // The upstream's traceparent names the gateway's span, never the client's.
        dpop_server::telemetry::propagate(headers);
        if let Some(id) = identity {
            dpop_server::telemetry::record_identity(
                id.jkt.as_ref().map(|j| j.as_str()),
                id.subject.as_deref(),
                id.client_id.as_deref(),
            );
            for (name, value) in identity_values(&s.identity, id) {
                headers.insert(name, value);
            }
        }
        let forwarded = Forwarded {
            target,
            caller,
            upstream: Arc::clone(&upstream.name),
            upstream_elapsed: None,
        };
        Some((upstream, lifetime, forwarded))
    }

    async fn forward(self, mut req: Request<Incoming>) -> Response<Body> {
        // The status line goes back in the client's protocol, whatever the upstream's.
        let version = req.version();
        let websocket = stream::is_websocket_upgrade(&req);
        let verified = req.extensions().get::<DpopIdentity>().is_some();
        let Some((upstream, lifetime, mut forwarded)) = self.prepare(&mut req, websocket) else {
            return empty(StatusCode::BAD_REQUEST);
        };
        if verified {
            // The request's proof was just verified: most of its CPU. Its upstream write
            // waits until the other requests ready on this thread have had their turn
            // (their verifications included), so that the writes of one turn of the
            // runtime go out together and the upstream and the clients are woken once
            // for them rather than once per request. Peers sharing the gateway's cores
            // then take them in the middle of a verification less often: 0.96x the CPU
            // per DPoP request (docs/benchmarks.md).
            tokio::task::yield_now().await;
        }
        let mut response = self
            .send(req, version, websocket, &upstream, lifetime, &mut forwarded)
            .await;
        response.extensions_mut().insert(forwarded);
        response
    }

    /// Sends the prepared request and relays the answer; the upstream's time goes into
    /// `forwarded` and `http_client_request_duration_seconds`.
    async fn send(
        &self,
        mut req: Request<Incoming>,
        version: http::Version,
        websocket: bool,
        upstream: &Upstream,
        lifetime: Duration,
        forwarded: &mut Forwarded,
    ) -> Response<Body> {
        if websocket && upstream.config.http2 {
            // An HTTP/1.1 upgrade cannot cross an HTTP/2 connection.
            self.metrics.upstream("error");
            tracing::warn!(target: "dpop::proxy", upstream = %upstream.config, "WebSocket upgrade refused: the route's upstream is HTTP/2 only");
            return empty(StatusCode::BAD_GATEWAY);
        }
        let client_upgrade = websocket.then(|| {
            let slot = req.extensions_mut().remove::<ConnectionSlot>();
            (hyper::upgrade::on(&mut req), slot)
        });
        // The timeout covers the response head only: a body or tunnel then streams for
        // as long as its lifetime allows.
        let settings = Arc::clone(&self.settings);
        let method = req.method().clone();
        let req = req.map(|inner| RequestBody { inner, settings });
        let sent = Instant::now();
        let at = crate::deadline::after(self.settings.timeout);
        // Boxed: the exchange's future (about 1 KB) would otherwise be part of this
        // future, and this one of the request's.
        let result = Box::pin(upstream.client.request(&upstream.config.url, req, at)).await;
        let elapsed = sent.elapsed();
        forwarded.upstream_elapsed = Some(elapsed);
        match result {
            Ok(mut resp) => {
                // The direct path has checked this already, in `h1::framing`.
                if resp.status() != StatusCode::SWITCHING_PROTOCOLS
                    && let Err(e) = h1::relayed_framing(resp.headers_mut())
                {
                    self.metrics.upstream("error");
                    tracing::warn!(target: "dpop::proxy", upstream = %upstream.config, error = %e, "upstream answer refused");
                    return empty(StatusCode::BAD_GATEWAY);
                }
                self.metrics.upstream("ok");
                let route = self.settings.routes.get(forwarded.target.route_id());
                self.metrics.http().client(
                    method_label(&method),
                    resp.status().as_u16(),
                    route,
                    elapsed,
                );
                *resp.version_mut() = version;
                if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
                    return self.switch_protocols(resp, client_upgrade, lifetime);
                }
                remove_hop_by_hop(resp.headers_mut());
                if stream::is_stream(resp.headers(), resp.body()) {
                    let (parts, body) = resp.into_parts();
                    let body = stream::Limited::new(body, &parts.headers, lifetime);
                    return Response::from_parts(parts, body.boxed());
                }
                resp.map(|b| b.map_err(Into::into).boxed())
            }
            Err(PoolError::Timeout) => {
                self.metrics.upstream("timeout");
                tracing::warn!(target: "dpop::proxy", upstream = %upstream.config, "upstream did not answer in time");
                empty(StatusCode::GATEWAY_TIMEOUT)
            }
            Err(e) => {
                self.metrics.upstream("error");
                // The cause (connect, handshake, ALPN) goes to the log, never to the client.
                tracing::warn!(target: "dpop::proxy", upstream = %upstream.config, error = %dpop_core::failure::error_chain(&e), "upstream request failed");
                empty(StatusCode::BAD_GATEWAY)
            }
        }
    }
}

impl Proxy {
    /// An upstream's 101: for a WebSocket handshake, relayed to the client with the
    /// tunnel started behind it; anything else is a protocol the client did not ask the
    /// gateway for, and a 502.
    fn switch_protocols<B>(
        &self,
        mut resp: Response<B>,
        client_upgrade: Option<(hyper::upgrade::OnUpgrade, Option<ConnectionSlot>)>,
        lifetime: Duration,
    ) -> Response<Body> {
        let Some((client, slot)) =
            client_upgrade.filter(|_| stream::upgraded_to_websocket(resp.headers()))
        else {
            self.metrics.upstream("error");
            tracing::warn!(target: "dpop::proxy", "upstream switched protocols unasked");
            return empty(StatusCode::BAD_GATEWAY);
        };
        let upstream = hyper::upgrade::on(&mut resp);
        remove_hop_by_hop(resp.headers_mut());
        stream::set_websocket_upgrade(resp.headers_mut());
        tokio::spawn(stream::tunnel(client, upstream, lifetime, slot));
        resp.map(|_| Body::default())
    }
}

impl tower::Service<Request<Incoming>> for Proxy {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Incoming>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move { Ok(this.forward(req).await) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A request head with these names (as a client may spell them), each with value `1`.
    fn head_of(names: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for name in names {
            h.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_static("1"),
            );
        }
        h
    }

    /// The names left in `h`, sorted.
    fn names_left(h: &HeaderMap) -> Vec<&str> {
        let mut left: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        left.sort_unstable();
        left
    }

    #[test]
    fn underscore_spellings_of_managed_headers_go() {
        let mut h = head_of(&[
            "x_dpop_subject",
            "X_DPoP_Client_Id",
            "x-dpop_jkt",
            "x_forwarded_for",
            "dpop_",
            "x_other",
            "authorization",
        ]);
        let names: Vec<String> = [
            "x-dpop-subject",
            "x-dpop-client-id",
            "x-dpop-jkt",
            "x-forwarded-for",
            "dpop",
        ]
        .map(str::to_owned)
        .to_vec();
        remove_underscore_aliases(&mut h, &names);
        assert_eq!(names_left(&h), ["authorization", "dpop_", "x_other"]);
    }

    #[test]
    fn debug_names_the_upstreams_and_no_files() {
        let mut settings = crate::GatewaySettings::from_toml(
            "[upstream]\nurl = \"http://127.0.0.1:3000/api\"\nhttp2 = true\n\
             [[routes]]\npath_prefix = \"/a\"\n\
             [[routes]]\npath_prefix = \"/b\"\nupstream = \"http://127.0.0.1:4000/v2\"\n",
        )
        .unwrap();
        settings
            .set_listen("127.0.0.1:8080".parse().unwrap())
            .set_issuer("https://as.example.com")
            .set_audience("https://api.example.com")
            .set_allowed_hosts(vec!["127.0.0.1:8080".into()]);
        let config = settings.validate().unwrap();
        let proxy = Proxy::new(&config, Arc::new(Metrics::new())).unwrap();
        let shown = format!("{proxy:?}");
        assert!(
            shown.contains(r#"default: "http://127.0.0.1:3000/api (HTTP/2)""#),
            "{shown}"
        );
        assert!(
            shown.contains(r#"1: "http://127.0.0.1:4000/v2""#),
            "{shown}"
        );
    }

    #[test]
    fn hop_by_hop_and_connection_listed_headers_go() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, "close, x-secret".parse().unwrap());
        h.insert("x-secret", "1".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert(header::TE, "trailers".parse().unwrap());
        h.insert("x-kept", "1".parse().unwrap());
        h.append("x-secret", "2".parse().unwrap());
        h.insert(header::TRANSFER_ENCODING, "chunked".parse().unwrap());
        h.insert("Http2-Settings", "AAMAAABkAAQAAP__".parse().unwrap());
        h.insert(header::UPGRADE, "h2c".parse().unwrap());
        h.insert(header::PROXY_AUTHENTICATE, "Basic".parse().unwrap());
        remove_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key("x-kept"));
        // Nothing to remove: the head is left as it was.
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_LENGTH, "2".parse().unwrap());
        h.append(header::SET_COOKIE, "a=1".parse().unwrap());
        h.append(header::SET_COOKIE, "b=2".parse().unwrap());
        let before = h.clone();
        remove_hop_by_hop(&mut h);
        assert_eq!(h, before);
    }

    fn identity_config(subject: &str, cert_subject: &str) -> IdentityHeaders {
        IdentityHeaders {
            subject: subject.into(),
            client_id: "x-dpop-client-id".into(),
            jkt: "x-dpop-jkt".into(),
            scopes: "x-dpop-scopes".into(),
            client_cert_subject: cert_subject.into(),
            client_cert_thumbprint: "x-dpop-client-cert-sha256".into(),
        }
    }

    fn shown(values: &[(HeaderName, HeaderValue)]) -> Vec<(&str, &str)> {
        values
            .iter()
            .map(|(n, v)| (n.as_str(), v.to_str().unwrap()))
            .collect()
    }

    #[test]
    fn identity_headers_carry_the_claims_and_nothing_else() {
        let names = IdentityNames::new(&identity_config("X-DPoP-Subject", ""));
        let scopes = ["read".to_owned(), "write".to_owned()];
        let values = names.values(
            Some("alice".into()),
            Some("ci".into()),
            Some("jkt-1"),
            &scopes,
        );
        assert_eq!(
            shown(&values),
            [
                ("x-dpop-subject", "alice"),
                ("x-dpop-client-id", "ci"),
                ("x-dpop-jkt", "jkt-1"),
                ("x-dpop-scopes", "read write"),
            ]
        );
        // Claims a header value cannot hold are left out, not cut or escaped; absent claims
        // and no scopes send nothing.
        let values = names.values(Some("a\nb".into()), Some("c\rd".into()), None, &[]);
        assert!(values.is_empty(), "{values:?}");
        // A name configured empty is never sent.
        let names = IdentityNames::new(&identity_config("", ""));
        let values = names.values(Some("alice".into()), None, None, &[]);
        assert!(values.is_empty(), "{values:?}");
        assert_eq!(
            names.all().map(HeaderName::as_str).collect::<Vec<_>>(),
            [
                "x-dpop-client-id",
                "x-dpop-jkt",
                "x-dpop-scopes",
                "x-dpop-client-cert-sha256"
            ]
        );
    }

    #[test]
    fn certificate_headers_carry_the_verified_certificate_only() {
        let thumbprint =
            dpop_core::jwt::CertThumbprint::parse("A4DtL2JmUMhAsvJj5tKyn64SqzmuXbMrJa0n761y5v0")
                .unwrap();
        let names = IdentityNames::new(&identity_config(
            "x-dpop-subject",
            "x-dpop-client-cert-subject",
        ));
        let cert = ClientCertificate::new(thumbprint.clone(), Some("CN=svc,O=Example".into()));
        assert_eq!(
            shown(&certificate_values(&names, cert).collect::<Vec<_>>()),
            [
                (
                    "x-dpop-client-cert-sha256",
                    "A4DtL2JmUMhAsvJj5tKyn64SqzmuXbMrJa0n761y5v0"
                ),
                ("x-dpop-client-cert-subject", "CN=svc,O=Example"),
            ]
        );
        // No readable subject, or one a header cannot hold: only the thumbprint.
        for subject in [None, Some("CN=a\nb".to_owned())] {
            let cert = ClientCertificate::new(thumbprint.clone(), subject);
            let values: Vec<_> = certificate_values(&names, cert).collect();
            assert_eq!(
                shown(&values),
                [(
                    "x-dpop-client-cert-sha256",
                    "A4DtL2JmUMhAsvJj5tKyn64SqzmuXbMrJa0n761y5v0"
                )]
            );
        }
        // Names configured empty: nothing.
        let mut config = identity_config("x-dpop-subject", "");
        config.client_cert_thumbprint = String::new();
        let names = IdentityNames::new(&config);
        let cert = ClientCertificate::new(thumbprint, Some("CN=svc".into()));
        assert_eq!(certificate_values(&names, cert).count(), 0);
    }

    /// An identity header name that is also a forwarding claim goes even from a trusted
    /// proxy (it is the gateway's to set), and names from the wire match the lists
    /// whatever their case.
    #[test]
    fn identity_names_go_even_from_a_trusted_proxy() {
        let strip = RequestStrip::new(&[HeaderName::from_static("x-real-ip")], true, true);
        let mut h = head_of(&[
            "X-Real-IP",
            "Forwarded",
            "X-Forwarded-Host",
            "Host",
            "DPoP",
            "x-kept",
        ]);
        let mut trusted = h.clone();
        strip.apply(&mut trusted, true, true, false);
        assert_eq!(names_left(&trusted), ["x-forwarded-host", "x-kept"]);
        // From anyone else the claim goes too; without the gateway's word the credentials stay.
        strip.apply(&mut h, false, false, false);
        assert_eq!(names_left(&h), ["dpop", "x-kept"]);
    }

    #[test]
    fn requests_keep_te_trailers_and_websocket_upgrades_only() {
        let headers = |pairs: &[(&str, &str)]| {
            let mut h = HeaderMap::new();
            for (n, v) in pairs {
                h.append(
                    HeaderName::from_bytes(n.as_bytes()).unwrap(),
                    v.parse().unwrap(),
                );
            }
            h
        };
        let mut h = headers(&[
            ("te", "gzip;q=0.5, Trailers"),
            ("connection", "upgrade, http2-settings"),
            ("upgrade", "websocket"),
        ]);
        let strip = RequestStrip::new(&[], true, true);
        strip.apply(&mut h, false, true, true);
        assert_eq!(h.get("te").unwrap(), "trailers");
        assert_eq!(h.get("upgrade").unwrap(), "websocket");
        assert_eq!(h.get("connection").unwrap(), "upgrade");
        let mut h = headers(&[
            ("te", "gzip"),
            ("connection", "Upgrade, HTTP2-Settings"),
            ("upgrade", "h2c"),
            ("http2-settings", "AAMAAABkAARAAAAAAAIAAAAA"),
        ]);
        strip.apply(&mut h, false, true, false);
        assert!(h.is_empty(), "{h:?}");
    }

    #[test]
    fn the_upstream_host_field_names_a_port_only_when_it_is_not_the_default() {
        let host =
            |url: &str| host_header(&url.parse().unwrap()).map(|v| v.to_str().unwrap().to_owned());
        assert_eq!(host("http://api.internal").as_deref(), Some("api.internal"));
        assert_eq!(
            host("http://api.internal:80/v1").as_deref(),
            Some("api.internal")
        );
        assert_eq!(
            host("https://api.internal:443").as_deref(),
            Some("api.internal")
        );
        assert_eq!(
            host("http://api.internal:443").as_deref(),
            Some("api.internal:443")
        );
        assert_eq!(
            host("https://api.internal:80").as_deref(),
            Some("api.internal:80")
        );
        assert_eq!(
            host("http://127.0.0.1:3000").as_deref(),
            Some("127.0.0.1:3000")
        );
        assert_eq!(host("http://[::1]:3000").as_deref(), Some("[::1]:3000"));
    }

    #[test]
    fn forwarded_for_appends_the_peer_to_the_list_and_never_reuses_another_peers_value() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let value = |h: &HeaderMap, peer: &str| {
            forwarded_for(h, ip(peer)).map(|v| v.to_str().unwrap().to_owned())
        };
        let none = HeaderMap::new();
        // The same thread, peers one after the other: each gets its own address.
        for peer in [
            "192.0.2.1",
            "192.0.2.1",
            "192.0.2.2",
            "2001:db8::7",
            "192.0.2.1",
        ] {
            assert_eq!(value(&none, peer).as_deref(), Some(peer));
        }
        let mut listed = HeaderMap::new();
        listed.append(X_FORWARDED_FOR, HeaderValue::from_static("203.0.113.9"));
        listed.append(
            X_FORWARDED_FOR,
            HeaderValue::from_static("10.0.0.1, 10.0.0.2"),
        );
        assert_eq!(
            value(&listed, "192.0.2.1").as_deref(),
            Some("203.0.113.9, 10.0.0.1, 10.0.0.2, 192.0.2.1")
        );
        // A value that is not text is left out of the list, as before.
        let mut odd = HeaderMap::new();
        odd.append(X_FORWARDED_FOR, HeaderValue::from_bytes(b"\xff").unwrap());
        assert_eq!(value(&odd, "192.0.2.3").as_deref(), Some("192.0.2.3"));
    }

    #[test]
    fn one_pass_removes_what_the_upstream_must_not_see() {
        let identity = [HeaderName::from_static("x-dpop-subject")];
        let strip = RequestStrip::new(&identity, true, true);
        let head = || {
            let mut h = HeaderMap::new();
            for (n, v) in [
                ("host", "evil.example"),
                ("x-dpop-subject", "admin"),
                ("x_dpop_subject", "admin"),
                ("x-http-method-override", "DELETE"),
                ("forwarded", "host=evil.example"),
                ("x-forwarded-host", "evil.example"),
                ("x-forwarded-for", "10.9.9.9"),
                ("x-real-ip", "10.9.9.9"),
                ("authorization", "DPoP t"),
                ("dpop", "p"),
                ("connection", "x-named"),
                ("x-named", "1"),
                ("accept", "*/*"),
            ] {
                h.append(HeaderName::from_static(n), HeaderValue::from_static(v));
            }
            h
        };
        let names = |h: &HeaderMap| {
            let mut v: Vec<String> = h.keys().map(|k| k.as_str().to_owned()).collect();
            v.sort_unstable();
            v
        };
        // An untrusted peer, a request the gateway vouched for: only `accept` is left.
        let mut h = head();
        strip.apply(&mut h, false, true, false);
        assert_eq!(names(&h), ["accept"]);
        // A trusted proxy's forwarding claims stay; credentials pass where the gateway
        // did not vouch (an `off` route).
        let mut h = head();
        strip.apply(&mut h, true, false, false);
        assert_eq!(
            names(&h),
            [
                "accept",
                "authorization",
                "dpop",
                "x-forwarded-for",
                "x-forwarded-host",
                "x-real-ip"
            ]
        );
    }
}

//! A gRPC echo server and client over h2c (HTTP/2 without TLS), built with tonic without
//! protoc: the messages are hand-written prost structs and the service is what generated
//! code would be, a `tower::Service` dispatching on the path to `tonic::server::Grpc`
//! with the prost codec.
//!
//! Service `dpop.test.Echo`:
//! - `Unary`: the request's message back;
//! - `ServerStream`: `repeat` replies numbered from 0, 20 ms apart, then trailers with the
//!   custom metadata `x-echo-count` (how many replies were sent) beside `grpc-status`;
//! - `Collect` (client streaming): the messages received, joined with spaces;
//! - `Chat` (bidirectional): each message back as it arrives.
//!
//! Anything else is answered `UNIMPLEMENTED`.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{Stream, StreamExt as _};
use http::HeaderValue;
use http::uri::PathAndQuery;
use hyper::body::{Body as HttpBody, Frame, SizeHint};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};
use tonic::{Request, Response, Status, Streaming};
use tonic_prost::ProstCodec;

/// The request message.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct EchoRequest {
    /// Text to echo.
    #[prost(string, tag = "1")]
    pub message: String,
    /// `ServerStream`: how many replies.
    #[prost(uint32, tag = "2")]
    pub repeat: u32,
}

/// The reply message.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct EchoReply {
    /// The echoed text.
    #[prost(string, tag = "1")]
    pub message: String,
    /// The reply's place in a stream.
    #[prost(uint32, tag = "2")]
    pub index: u32,
}

/// The trailing metadata `ServerStream` adds.
pub const ECHO_COUNT_TRAILER: &str = "x-echo-count";

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;
type BoxFuture<T> = Pin<Box<dyn Future<Output = Result<T, Status>> + Send + 'static>>;

struct Unary;

impl tonic::server::UnaryService<EchoRequest> for Unary {
    type Response = EchoReply;
    type Future = BoxFuture<Response<EchoReply>>;

    fn call(&mut self, request: Request<EchoRequest>) -> Self::Future {
        let message = request.into_inner().message;
        Box::pin(async move { Ok(Response::new(EchoReply { message, index: 0 })) })
    }
}

struct ServerStream;

impl tonic::server::ServerStreamingService<EchoRequest> for ServerStream {
    type Response = EchoReply;
    type ResponseStream = BoxStream<EchoReply>;
    type Future = BoxFuture<Response<Self::ResponseStream>>;

    fn call(&mut self, request: Request<EchoRequest>) -> Self::Future {
        let r = request.into_inner();
        let replies = futures_util::stream::iter(0..r.repeat).then(move |index| {
            let message = r.message.clone();
            async move {
                tokio::time::sleep(Duration::from_millis(20)).await;
                Ok(EchoReply { message, index })
            }
        });
        Box::pin(async move { Ok(Response::new(Box::pin(replies) as BoxStream<EchoReply>)) })
    }
}

struct Collect;

impl tonic::server::ClientStreamingService<EchoRequest> for Collect {
    type Response = EchoReply;
    type Future = BoxFuture<Response<EchoReply>>;

    fn call(&mut self, request: Request<Streaming<EchoRequest>>) -> Self::Future {
        let mut stream = request.into_inner();
        Box::pin(async move {
            let mut all = Vec::new();
            while let Some(m) = stream.message().await? {
                all.push(m.message);
            }
            let index = u32::try_from(all.len()).unwrap_or(u32::MAX);
            Ok(Response::new(EchoReply {
                message: all.join(" "),
                index,
            }))
        })
    }
}

struct Chat;

impl tonic::server::StreamingService<EchoRequest> for Chat {
    type Response = EchoReply;
    type ResponseStream = BoxStream<EchoReply>;
    type Future = BoxFuture<Response<Self::ResponseStream>>;

    fn call(&mut self, request: Request<Streaming<EchoRequest>>) -> Self::Future {
        let replies = request.into_inner().enumerate().map(|(i, m)| {
            m.map(|m| EchoReply {
                message: m.message,
                index: u32::try_from(i).unwrap_or(u32::MAX),
            })
        });
        Box::pin(async move { Ok(Response::new(Box::pin(replies) as BoxStream<EchoReply>)) })
    }
}

/// A response body with `x-echo-count` added to its trailers: the number of data frames
/// before them (each reply is one frame here).
struct CountTrailer<B> {
    inner: B,
    frames: u32,
}

impl<B> HttpBody for CountTrailer<B>
where
    B: HttpBody<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        let Poll::Ready(Some(Ok(frame))) = polled else {
            return polled;
        };
        let frame = match frame.into_trailers() {
            Ok(mut trailers) => {
                trailers.insert(ECHO_COUNT_TRAILER, HeaderValue::from(self.frames));
                Frame::trailers(trailers)
            }
            Err(data) => {
                self.frames += 1;
                data
            }
        };
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The echo service: what tonic's generated server code is, by hand.
#[derive(Clone, Debug, Default)]
pub struct EchoService {
    seen: Arc<Mutex<Vec<http::HeaderMap>>>,
}

impl<B> tower::Service<http::Request<B>> for EchoService
where
    B: HttpBody<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        if let Ok(mut seen) = self.seen.lock() {
            seen.push(req.headers().clone());
        }
        Box::pin(async move {
            let codec = ProstCodec::<EchoReply, EchoRequest>::default();
            let mut grpc = tonic::server::Grpc::new(codec);
            Ok(match req.uri().path() {
                "/dpop.test.Echo/Unary" => grpc.unary(Unary, req).await,
                "/dpop.test.Echo/ServerStream" => {
                    let resp = grpc.server_streaming(ServerStream, req).await;
                    resp.map(|b| {
                        tonic::body::Body::new(CountTrailer {
                            inner: b,
                            frames: 0,
                        })
                    })
                }
                "/dpop.test.Echo/Collect" => grpc.client_streaming(Collect, req).await,
                "/dpop.test.Echo/Chat" => grpc.streaming(Chat, req).await,
                _ => Status::unimplemented("no such method").into_http(),
            })
        })
    }
}

/// [`EchoService`] served over h2c on a free loopback port; stopped when dropped.
#[derive(Debug)]
pub struct GrpcEchoUpstream {
    addr: SocketAddr,
    service: EchoService,
    task: JoinHandle<()>,
}

impl Drop for GrpcEchoUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl GrpcEchoUpstream {
    /// Starts the server.
    ///
    /// # Errors
    /// When no port can be bound.
    pub async fn start() -> io::Result<Self> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let service = EchoService::default();
        let svc = service.clone();
        let task = tokio::spawn(async move {
            let mut conns = JoinSet::new();
            while let Ok((stream, _)) = listener.accept().await {
                let _ = stream.set_nodelay(true);
                let svc = TowerToHyperService::new(svc.clone());
                conns.spawn(async move {
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Ok(Self {
            addr,
            service,
            task,
        })
    }

    /// `http://ADDR`.
    #[must_use]
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The headers of every request received, in order.
    #[must_use]
    pub fn requests(&self) -> Vec<http::HeaderMap> {
        self.service
            .seen
            .lock()
            .map(|s| s.clone())
            .unwrap_or_default()
    }
}

/// A client of `dpop.test.Echo` over h2c: what tonic's generated client code is, by
/// hand, on a hyper-util client speaking HTTP/2 only.
#[derive(Debug, Clone)]
pub struct GrpcEchoClient {
    grpc: tonic::client::Grpc<Client<HttpConnector, tonic::body::Body>>,
}

fn path(method: &'static str) -> PathAndQuery {
    PathAndQuery::from_static(method)
}

fn codec() -> ProstCodec<EchoRequest, EchoReply> {
    ProstCodec::default()
}

impl GrpcEchoClient {
    /// A client of the server at `url` (`http://ADDR`).
    ///
    /// # Panics
    /// When `url` is not a URI.
    #[must_use]
    pub fn new(url: &str) -> Self {
        let client = Client::builder(TokioExecutor::new())
            .http2_only(true)
            .build_http();
        let origin: http::Uri = url.parse().expect("a URI");
        Self {
            grpc: tonic::client::Grpc::with_origin(client, origin),
        }
    }

    async fn ready(&mut self) -> Result<(), Status> {
        self.grpc
            .ready()
            .await
            .map_err(|e| Status::unavailable(e.to_string()))
    }

    /// `Unary`.
    ///
    /// # Errors
    /// The call's status.
    pub async fn unary(
        &mut self,
        request: Request<EchoRequest>,
    ) -> Result<Response<EchoReply>, Status> {
        self.ready().await?;
        self.grpc
            .unary(request, path("/dpop.test.Echo/Unary"), codec())
            .await
    }

    /// `ServerStream`.
    ///
    /// # Errors
    /// The call's status.
    pub async fn server_stream(
        &mut self,
        request: Request<EchoRequest>,
    ) -> Result<Response<Streaming<EchoReply>>, Status> {
        self.ready().await?;
        self.grpc
            .server_streaming(request, path("/dpop.test.Echo/ServerStream"), codec())
            .await
    }

    /// `Collect`.
    ///
    /// # Errors
    /// The call's status.
    pub async fn collect<S>(&mut self, request: Request<S>) -> Result<Response<EchoReply>, Status>
    where
        S: Stream<Item = EchoRequest> + Send + 'static,
    {
        self.ready().await?;
        self.grpc
            .client_streaming(request, path("/dpop.test.Echo/Collect"), codec())
            .await
    }

    /// `Chat`.
    ///
    /// # Errors
    /// The call's status.
    pub async fn chat<S>(
        &mut self,
        request: Request<S>,
    ) -> Result<Response<Streaming<EchoReply>>, Status>
    where
        S: Stream<Item = EchoRequest> + Send + 'static,
    {
        self.ready().await?;
        self.grpc
            .streaming(request, path("/dpop.test.Echo/Chat"), codec())
            .await
    }
}

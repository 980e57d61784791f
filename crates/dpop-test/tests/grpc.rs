//! The gRPC echo server and client together over h2c, with no gateway between them: the
//! four kinds of call, and custom trailing metadata after a stream.

use dpop_test::tonic::Request;
use dpop_test::{ECHO_COUNT_TRAILER, EchoRequest, GrpcEchoClient, GrpcEchoUpstream};

fn echo(message: &str, repeat: u32) -> EchoRequest {
    EchoRequest {
        message: message.into(),
        repeat,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_echo_client_and_server_speak_grpc_over_h2c() {
    let server = GrpcEchoUpstream::start().await.unwrap();
    let mut client = GrpcEchoClient::new(&server.url());

    let reply = client.unary(Request::new(echo("hi", 0))).await.unwrap();
    assert_eq!(reply.get_ref().message, "hi");

    let mut stream = client
        .server_stream(Request::new(echo("tick", 3)))
        .await
        .unwrap()
        .into_inner();
    let mut got = Vec::new();
    while let Some(m) = stream.message().await.unwrap() {
        got.push((m.message, m.index));
    }
    assert_eq!(
        got,
        [("tick".into(), 0), ("tick".into(), 1), ("tick".into(), 2)]
    );
    let trailers = stream.trailers().await.unwrap().expect("trailers");
    assert_eq!(
        trailers.get(ECHO_COUNT_TRAILER).unwrap().to_str().unwrap(),
        "3"
    );

    let words = futures_util::stream::iter(["a", "b", "c"].map(|w| echo(w, 0)));
    let reply = client.collect(Request::new(words)).await.unwrap();
    assert_eq!(
        (reply.get_ref().message.as_str(), reply.get_ref().index),
        ("a b c", 3)
    );

    // Bidirectional: each reply comes back before the next message is sent.
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let outgoing =
        futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|m| (m, rx)) });
    let mut replies = client
        .chat(Request::new(outgoing))
        .await
        .unwrap()
        .into_inner();
    for word in ["one", "two"] {
        tx.send(echo(word, 0)).await.unwrap();
        let m = replies.message().await.unwrap().unwrap();
        assert_eq!(m.message, word);
    }
    drop(tx);
    assert!(replies.message().await.unwrap().is_none());

    let requests = server.requests();
    assert_eq!(requests.len(), 4);
    assert!(
        requests
            .iter()
            .all(|h| h.get("te").is_some_and(|v| v == "trailers")),
        "tonic sends te: trailers"
    );
}

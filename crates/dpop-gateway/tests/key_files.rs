//! Private key files that others can read are refused at start-up, naming the file: the
//! listener's TLS key and an upstream's client key, as every other key the workspace
//! reads.

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;

use dpop_gateway::{Gateway, GatewayConfig, GatewayError};
use dpop_test::{TestCa, free_port};

fn loosen(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// `Gateway::bind`'s error for a configuration ending with `rest`.
async fn bind_error(upstream: &str, rest: &str) -> String {
    let port = free_port();
    let text = format!(
        "listen = \"127.0.0.1:{port}\"\nissuer = \"http://127.0.0.1:1\"\n\
         audience = \"https://api.example.com\"\nallowed_hosts = [\"127.0.0.1:{port}\"]\n\
         {upstream}\n{rest}"
    );
    let config = GatewayConfig::from_toml(&text).unwrap();
    match Gateway::bind(config).await {
        Err(GatewayError::Config(why)) => why,
        Err(other) => panic!("not a configuration error: {other}"),
        Ok(_) => panic!("a key others can read was accepted"),
    }
}

#[tokio::test]
async fn a_tls_key_others_can_read_is_refused() {
    let ca = TestCa::new("key files");
    let server = ca.server(&["127.0.0.1"]);
    for mode in [0o644, 0o640, 0o604] {
        loosen(&server.key_file, mode);
        let why = bind_error(
            "upstream = \"http://127.0.0.1:1\"",
            &format!(
                "[tls]\ncert_file = {:?}\nkey_file = {:?}\n",
                server.cert_file, server.key_file
            ),
        )
        .await;
        assert!(
            why.contains(&server.key_file.display().to_string())
                && why.contains(&format!("{mode:04o}"))
                && why.contains("chmod 600"),
            "{why}"
        );
    }
}

#[tokio::test]
async fn an_upstream_client_key_others_can_read_is_refused() {
    let ca = TestCa::new("key files");
    let client = ca.client("gateway");
    loosen(&client.key_file, 0o644);
    let why = bind_error(
        &format!(
            "[upstream]\nurl = \"https://127.0.0.1:1\"\nca_file = {:?}\n\
             client_cert_file = {:?}\nclient_key_file = {:?}\n",
            ca.ca_file(),
            client.cert_file,
            client.key_file
        ),
        "",
    )
    .await;
    assert!(
        why.starts_with("client_key_file ")
            && why.contains(&client.key_file.display().to_string())
            && why.contains("chmod 600"),
        "{why}"
    );
}

//! The deployment files (`Dockerfile`, `deploy/compose/`, `deploy/systemd/`,
//! `deploy/kubernetes/`) checked against what they claim, without a container engine:
//! the binary they run is the one this package builds, the ports they expose, publish and
//! probe are those of the configuration files they ship (and the issuer's default), the
//! probed paths are those the admin listener serves, every configuration file they name
//! exists and passes the gateway's or the issuer's validation, and every secret file they
//! mount exists as an example.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use dpop_server::admin::{HEALTHZ_PATH, READYZ_PATH};

use crate::common::{DPOP, TempDir};

/// The workspace root.
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

fn toml_file(rel: &str) -> toml::Table {
    read(rel).parse().unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// The `dpop-cli` package name and its binary's name, from its Cargo.toml.
fn package_and_binary() -> (String, String) {
    let manifest = toml_file("crates/dpop-cli/Cargo.toml");
    let package = manifest["package"]["name"].as_str().unwrap().to_owned();
    let bins = manifest["bin"].as_array().unwrap();
    assert_eq!(bins.len(), 1, "one binary");
    let bin = bins[0]["name"].as_str().unwrap().to_owned();
    // The binary the tests run is that one.
    assert_eq!(
        Path::new(DPOP).file_stem().unwrap().to_str().unwrap(),
        bin,
        "{DPOP}"
    );
    (package, bin)
}

/// A TOML configuration's address setting, as a port.
fn port_of(config: &toml::Table, key: &str) -> u16 {
    let text = config
        .get(key)
        .and_then(toml::Value::as_str)
        .unwrap_or_else(|| panic!("{key} is set"));
    text.parse::<SocketAddr>()
        .unwrap_or_else(|e| panic!("{key} {text:?}: {e}"))
        .port()
}

/// The issuer's listening port when its configuration says none: from the code.
fn issuer_default_port() -> u16 {
    dpop_issuer::DEFAULT_LISTEN
        .parse::<SocketAddr>()
        .unwrap()
        .port()
}

/// Secret paths as the deployment files mount them, mapped to the example files.
const SECRET_DIRS: [&str; 3] = [
    "/run/secrets/",
    "/etc/dpop/secrets/",
    "/run/credentials/dpop-gateway.service/",
];

/// The secret that is generated, never shipped: each installation makes its own.
const GENERATED_SECRET: &str = "nonce-secrets";

/// `text` with the mounted secret paths replaced by a directory holding the example
/// secrets as an operator installs them (owner-only modes, git keeps 0644) and a
/// generated nonce secret (see `GENERATED_SECRET`). The directory lives as long as the
/// returned guard.
fn with_example_secrets(text: &str) -> (String, TempDir) {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = TempDir::new("deploy-secrets");
    let examples = root().join("deploy/compose/secrets");
    for entry in std::fs::read_dir(&examples).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap();
        if name != "README.md" {
            let text = std::fs::read_to_string(&path).unwrap();
            dir.write(name, &text, 0o600);
        }
    }
    // 32 bytes, base64url (a fresh key's thumbprint: a SHA-256 of random key material).
    let secret = dpop_core::PrivateKey::generate(dpop_core::Algorithm::Ed25519)
        .unwrap()
        .public_jwk()
        .thumbprint()
        .as_str()
        .to_owned();
    let generated = dir.write(GENERATED_SECRET, &format!("{secret}\n"), 0o600);
    assert_eq!(
        std::fs::metadata(&generated).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let mounted = format!("{}/", dir.file("x").parent().unwrap().display());
    let text = SECRET_DIRS
        .iter()
        .fold(text.to_owned(), |t, secrets| t.replace(secrets, &mounted));
    (text, dir)
}

/// The gateway's own validation accepts `text` (a gateway TOML).
fn assert_gateway_config_valid(what: &str, text: &str) {
    let (text, _secrets) = with_example_secrets(text);
    if let Err(e) = dpop_gateway::GatewayConfig::from_toml(&text) {
        panic!("{what} is refused by the gateway: {e}");
    }
}

/// The issuer's own validation accepts `text` (an issuer TOML).
fn assert_issuer_config_valid(what: &str, text: &str) {
    let env = BTreeMap::<String, String>::new();
    if let Err(e) = dpop_issuer::IssuerConfig::from_toml(text, &root(), &env) {
        panic!("{what} is refused by the issuer: {e}");
    }
}

// ---- Dockerfile --------------------------------------------------------------------

/// The Dockerfile's instructions, one per entry, continuation lines joined.
fn dockerfile() -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in read("Dockerfile").lines() {
        let line = line.trim();
        if line.starts_with('#') || (line.is_empty() && current.is_empty()) {
            continue;
        }
        if let Some(part) = line.strip_suffix('\\') {
            current.push_str(part);
            current.push(' ');
            continue;
        }
        current.push_str(line);
        let (op, args) = current.split_once(' ').unwrap_or((&current, ""));
        out.push((op.to_uppercase(), args.trim().to_owned()));
        current.clear();
    }
    out
}

fn instructions<'a>(all: &'a [(String, String)], op: &str) -> Vec<&'a str> {
    all.iter()
        .filter(|(o, _)| o == op)
        .map(|(_, a)| a.as_str())
        .collect()
}

/// Where the compose files keep the example configurations.
const COMPOSE: &str = "deploy/compose";

#[test]
fn the_dockerfile_builds_this_binary_locked_and_runs_it_unprivileged() {
    let (package, bin) = package_and_binary();
    let d = dockerfile();
    let from = instructions(&d, "FROM");
    assert_eq!(
        from.len(),
        2,
        "a builder stage and a runtime stage: {from:?}"
    );
    // The builder's Rust is the workspace's rust-version or newer.
    let rust_version = toml_file("Cargo.toml")["workspace"]["package"]["rust-version"]
        .as_str()
        .unwrap()
        .to_owned();
    let tag = from[0]
        .strip_prefix("rust:")
        .and_then(|t| t.split(['-', ' ']).next())
        .unwrap_or_else(|| panic!("the builder is a rust image: {}", from[0]));
    let version = |v: &str| -> Vec<u32> { v.split('.').map(|n| n.parse().unwrap()).collect() };
    assert!(
        version(tag) >= version(&rust_version),
        "rust:{tag} is older than rust-version {rust_version}"
    );
    let run = instructions(&d, "RUN").join("\n");
    assert!(
        run.contains(&format!("cargo build --release --locked -p {package}")),
        "{run}"
    );
    let installed = format!("/usr/local/bin/{bin}");
    assert!(
        run.contains(&format!("target/release/{bin} /out{installed}")),
        "{run}"
    );
    assert!(
        instructions(&d, "COPY")
            .iter()
            .any(|c| *c == format!("--from=build /out{installed} {installed}")),
        "{d:?}"
    );
    assert_eq!(instructions(&d, "ENTRYPOINT"), [format!("[\"{bin}\"]")]);
    // A numeric user that is not root, so runAsNonRoot can check it.
    let user = instructions(&d, "USER");
    let uid: u32 = user
        .last()
        .unwrap()
        .split(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert_ne!(uid, 0);
    assert_eq!(
        uid,
        k8s_uid(),
        "the Kubernetes pods run as the image's user"
    );
    // The ports: the gateway's and the issuer's, and their admin listeners.
    let gateway = toml_file(&format!("{COMPOSE}/gateway-1.toml"));
    let issuer = toml_file(&format!("{COMPOSE}/issuer.toml"));
    assert_eq!(port_of(&issuer, "listen"), issuer_default_port());
    let expected: BTreeSet<u16> = [
        port_of(&gateway, "listen"),
        port_of(&gateway, "admin_listen"),
        port_of(&issuer, "listen"),
        port_of(&issuer, "admin_listen"),
    ]
    .into();
    let exposed: BTreeSet<u16> = instructions(&d, "EXPOSE")
        .iter()
        .flat_map(|e| e.split_whitespace())
        .map(|p| p.parse().unwrap())
        .collect();
    assert_eq!(exposed, expected);
    // The only volume is the issuer's data directory.
    let data_dir = issuer["data_dir"].as_str().unwrap();
    assert_eq!(instructions(&d, "VOLUME"), [format!("[\"{data_dir}\"]")]);
    // .dockerignore keeps the build context small but keeps what the build reads.
    let ignore = read(".dockerignore");
    assert!(ignore.lines().any(|l| l == "target"), "{ignore}");
    for needed in ["Cargo.toml", "Cargo.lock", "crates"] {
        assert!(!ignore.lines().any(|l| l == needed), "{needed} is ignored");
    }
}

// ---- compose -----------------------------------------------------------------------

/// compose.yaml's services, each as its indented block of lines.
fn compose_services() -> BTreeMap<String, Vec<String>> {
    let text = read(&format!("{COMPOSE}/compose.yaml"));
    let mut services = BTreeMap::new();
    let mut current: Option<String> = None;
    let mut in_services = false;
    for line in text.lines() {
        if !line.starts_with(' ') && !line.trim().is_empty() && !line.starts_with('#') {
            in_services = line == "services:";
            current = None;
            continue;
        }
        if !in_services {
            continue;
        }
        if let Some(name) = line
            .strip_prefix("  ")
            .filter(|l| !l.starts_with(' ') && !l.starts_with('#'))
            .and_then(|l| l.strip_suffix(':'))
        {
            current = Some(name.to_owned());
            services.insert(name.to_owned(), Vec::new());
        } else if let Some(name) = &current {
            services.get_mut(name).unwrap().push(line.trim().to_owned());
        }
    }
    services
}

/// The items of a block list (`key:` then `- item` lines) in `block`.
fn list_after(block: &[String], key: &str) -> Vec<String> {
    block
        .iter()
        .skip_while(|l| *l != key)
        .skip(1)
        .map_while(|l| l.strip_prefix("- "))
        .map(|l| l.trim_matches('"').to_owned())
        .collect()
}

/// The value of `key: value` in `block`.
fn value_of<'a>(block: &'a [String], key: &str) -> Option<&'a str> {
    block
        .iter()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(": "))
}

/// A flow list `["a", "b"]` as its items.
fn flow_list(text: &str) -> Vec<String> {
    text.trim()
        .strip_prefix('[')
        .and_then(|t| t.strip_suffix(']'))
        .unwrap_or_else(|| panic!("a flow list: {text}"))
        .split("\", \"")
        .map(|s| s.trim_matches('"').to_owned())
        .collect()
}

/// The probe command of a healthcheck that asks `path` of `127.0.0.1:port`.
fn probes(block: &[String], port: u16, path: &str) -> bool {
    value_of(block, "test").is_some_and(|t| {
        t.contains(&format!("/dev/tcp/127.0.0.1/{port} "))
            && t.contains(&format!("GET {path} HTTP/1.0"))
            && t.contains("' 200 '")
    })
}

#[test]
fn compose_runs_the_configured_ports_and_probes_the_admin_paths() {
    let services = compose_services();
    for needed in [
        "postgres",
        "redis",
        "echo",
        "issuer",
        "gateway-1",
        "gateway-2",
    ] {
        assert!(services.contains_key(needed), "{needed}: {services:?}");
    }
    // The secrets compose declares exist as example files.
    let text = read(&format!("{COMPOSE}/compose.yaml"));
    let declared: Vec<&str> = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("file: ./secrets/"))
        .collect();
    assert_eq!(declared.len(), 3, "{text}");
    for name in &declared {
        let path = root().join(COMPOSE).join("secrets").join(name);
        if *name == GENERATED_SECRET {
            // Never shipped (every installation would share it): ignored by git and
            // generated as the secrets' README says.
            assert!(read(".gitignore").contains(&format!("deploy/compose/secrets/{name}")));
            assert!(
                read(&format!("{COMPOSE}/secrets/README.md"))
                    .contains(&format!("> secrets/{name}"))
            );
        } else {
            assert!(path.is_file(), "{name}");
        }
    }
    let issuer_block = &services["issuer"];
    let published: BTreeSet<u16> = list_after(issuer_block, "ports:")
        .iter()
        .map(|p| {
            let parts: Vec<&str> = p.split(':').collect();
            assert_eq!(
                parts.len(),
                3,
                "host address, host port, container port: {p}"
            );
            assert_eq!(parts[0], "127.0.0.1", "published on loopback only: {p}");
            assert_eq!(parts[1], parts[2], "{p}");
            parts[2].parse().unwrap()
        })
        .collect();
    let mut listening = BTreeSet::new();
    for (service, role) in [
        ("issuer", "issuer"),
        ("gateway-1", "gateway"),
        ("gateway-2", "gateway"),
    ] {
        let block = &services[service];
        // The image of this repository, run as the binary's subcommand with a config file
        // that is mounted from here, read-only, on a read-only root file system.
        assert_eq!(value_of(block, "<<"), Some("*dpop"), "{service}");
        let command = flow_list(value_of(block, "command").unwrap());
        assert_eq!(command.len(), 3, "{command:?}");
        assert_eq!(command[0], role);
        assert_eq!(command[1], "--config");
        let volumes = list_after(block, "volumes:");
        let mount = volumes
            .iter()
            .find(|v| v.ends_with(&format!(":{}:ro", command[2])))
            .unwrap_or_else(|| panic!("{service} mounts {}: {volumes:?}", command[2]));
        let local = mount.split(':').next().unwrap();
        let rel = format!("{COMPOSE}/{}", local.trim_start_matches("./"));
        let config_text = read(&rel);
        let config = toml_file(&rel);
        match role {
            "gateway" => {
                assert_gateway_config_valid(&rel, &config_text);
                assert_eq!(value_of(block, "network_mode"), Some("\"service:issuer\""));
            }
            _ => assert_issuer_config_valid(&rel, &config_text),
        }
        listening.insert(port_of(&config, "listen"));
        // The health check asks the admin listener of this very configuration.
        let admin = port_of(&config, "admin_listen");
        assert!(probes(block, admin, READYZ_PATH), "{service}: {block:?}");
        // Its secrets are declared ones.
        for s in list_after(block, "secrets:")
            .iter()
            .chain(value_of(block, "secrets").map(flow_list).iter().flatten())
        {
            assert!(declared.contains(&s.as_str()), "{service}: {s}");
        }
    }
    assert_eq!(
        published, listening,
        "the published ports are the listening ones"
    );
    // The shared settings: the image's entrypoint, read-only, no capabilities.
    assert!(text.contains("  read_only: true"), "{text}");
    assert!(text.contains("  cap_drop: [ALL]"), "{text}");
    assert!(text.contains("context: ../.."), "{text}");
}

// ---- systemd -----------------------------------------------------------------------

/// A unit file's `Key=value` settings, in order.
fn unit(name: &str) -> Vec<(String, String)> {
    read(&format!("deploy/systemd/{name}"))
        .lines()
        .filter(|l| !l.starts_with('#') && !l.starts_with('['))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

fn setting<'a>(unit: &'a [(String, String)], key: &str) -> Vec<&'a str> {
    unit.iter()
        .filter(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
        .collect()
}

#[test]
fn the_systemd_units_run_this_binary_hardened_with_credentials() {
    let (_, bin) = package_and_binary();
    for role in ["gateway", "issuer"] {
        let name = format!("dpop-{role}.service");
        let u = unit(&name);
        let exec = setting(&u, "ExecStart");
        assert_eq!(
            exec,
            [format!(
                "/usr/local/bin/{bin} {role} --config /etc/dpop/{role}.toml"
            )],
            "{name}"
        );
        // Only the gateway reloads on SIGHUP; the issuer would log and ignore it.
        let reload: &[&str] = if role == "gateway" {
            &["/bin/kill -HUP $MAINPID"]
        } else {
            &[]
        };
        assert_eq!(setting(&u, "ExecReload"), reload, "{name}");
        for (key, value) in [
            ("DynamicUser", "yes"),
            ("ProtectSystem", "strict"),
            ("ProtectHome", "yes"),
            ("PrivateTmp", "yes"),
            ("NoNewPrivileges", "yes"),
            ("CapabilityBoundingSet", ""),
            ("RestrictAddressFamilies", "AF_INET AF_INET6 AF_UNIX"),
            ("SystemCallFilter", "@system-service"),
            ("UMask", "0077"),
        ] {
            assert_eq!(setting(&u, key), [value], "{name} {key}");
        }
        // Each credential comes from a 0600 file under /etc/dpop/credentials, and the
        // process finds it in this unit's credentials directory.
        let text = read(&format!("deploy/systemd/{name}"));
        for credential in setting(&u, "LoadCredential") {
            let (id, source) = credential.split_once(':').unwrap();
            assert_eq!(source, format!("/etc/dpop/credentials/{id}"), "{name}");
            assert!(
                text.contains(&format!("install -D -m 0600 {id} {source}")),
                "{name} says how to install {id}"
            );
            let in_dir = format!("/run/credentials/{name}/{id}");
            assert!(
                text.contains(&in_dir)
                    || setting(&u, "Environment").contains(&"PGPASSFILE=%d/pgpass"),
                "{name}: {id} is read from the credentials directory"
            );
        }
    }
    let issuer = unit("dpop-issuer.service");
    assert_eq!(setting(&issuer, "StateDirectory"), ["dpop-issuer"]);
    // The gateway's configuration can name the credential: the example nonce secrets
    // file at that path is accepted.
    let gateway_text = read("deploy/systemd/dpop-gateway.service");
    let nonce_line = gateway_text
        .lines()
        .find_map(|l| l.strip_prefix("#   [nonce] "))
        .unwrap();
    assert_gateway_config_valid(
        "the unit's [nonce] example",
        &format!(
            "listen = \"127.0.0.1:8080\"\nupstream = \"http://127.0.0.1:3000\"\n\
             issuer = \"https://as.example.com\"\naudience = \"a\"\n\
             public_url = \"https://api.example.com\"\n[nonce]\nrequire = true\n{nonce_line}\n"
        ),
    );
}

// ---- Kubernetes --------------------------------------------------------------------

/// The YAML documents of a manifest file.
fn documents(rel: &str) -> Vec<String> {
    read(rel).split("\n---\n").map(str::to_owned).collect()
}

fn kind<'a>(docs: &'a [String], kind: &str) -> &'a str {
    docs.iter()
        .find(|d| d.lines().any(|l| l == format!("kind: {kind}")))
        .unwrap_or_else(|| panic!("a {kind}"))
}

/// The user the Deployments run as.
fn k8s_uid() -> u32 {
    let d = documents("deploy/kubernetes/gateway.yaml");
    let deployment = kind(&d, "Deployment");
    deployment
        .lines()
        .find_map(|l| l.trim().strip_prefix("runAsUser: "))
        .unwrap()
        .parse()
        .unwrap()
}

/// The TOML of `key` in the ConfigMap named `name` of config.yaml.
fn configmap_toml(name: &str, key: &str) -> String {
    let docs = documents("deploy/kubernetes/config.yaml");
    let doc = docs
        .iter()
        .find(|d| d.lines().any(|l| l == format!("  name: {name}")))
        .unwrap_or_else(|| panic!("ConfigMap {name}"));
    let mut lines = doc.lines().skip_while(|l| *l != format!("  {key}: |"));
    assert!(lines.next().is_some(), "{name} has {key}");
    lines
        .map(|l| l.strip_prefix("    ").unwrap_or(l.trim()))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn the_kubernetes_manifests_match_their_configuration_and_the_admin_paths() {
    let (_, bin) = package_and_binary();
    let kustomization = read("deploy/kubernetes/kustomization.yaml");
    for role in ["gateway", "issuer"] {
        let rel = format!("deploy/kubernetes/{role}.yaml");
        assert!(kustomization.contains(&format!("  - {role}.yaml")), "{rel}");
        let docs = documents(&rel);
        let deployment = kind(&docs, "Deployment");
        let lines: Vec<&str> = deployment.lines().map(str::trim).collect();
        let args = flow_list(lines.iter().find_map(|l| l.strip_prefix("args: ")).unwrap());
        assert_eq!(args[0], role);
        assert_eq!(args[1], "--config");
        let config_path = Path::new(&args[2]);
        let key = config_path.file_name().unwrap().to_str().unwrap();
        let dir = config_path.parent().unwrap().to_str().unwrap();
        assert!(
            lines.contains(
                &format!("- {{name: config, mountPath: {dir}, readOnly: true}}").as_str()
            ),
            "{rel}: the ConfigMap is mounted at {dir}"
        );
        let text = configmap_toml(&format!("dpop-{role}"), key);
        let config: toml::Table = text.parse().unwrap_or_else(|e| panic!("{rel}: {e}"));
        match role {
            "gateway" => assert_gateway_config_valid(&rel, &text),
            _ => assert_issuer_config_valid(&rel, &text),
        }
        let (listen, admin) = (port_of(&config, "listen"), port_of(&config, "admin_listen"));
        if role == "issuer" {
            assert_eq!(listen, issuer_default_port());
        }
        for needed in [
            format!("- {{name: http, containerPort: {listen}}}"),
            format!("- {{name: admin, containerPort: {admin}}}"),
            format!("httpGet: {{path: {HEALTHZ_PATH}, port: admin}}"),
            format!("httpGet: {{path: {READYZ_PATH}, port: admin}}"),
            "runAsNonRoot: true".to_owned(),
            "readOnlyRootFilesystem: true".to_owned(),
            "allowPrivilegeEscalation: false".to_owned(),
            "capabilities: {drop: [ALL]}".to_owned(),
            "seccompProfile: {type: RuntimeDefault}".to_owned(),
        ] {
            assert!(lines.contains(&needed.as_str()), "{rel}: {needed}");
        }
        let image = lines
            .iter()
            .find_map(|l| l.strip_prefix("image: "))
            .unwrap();
        assert!(image.contains(&format!("/{bin}:")), "{image}");
        // The gateway's nonce secret comes from the Secret through the environment
        // variable the binary reads (a Secret volume's files are group-readable, which
        // the secret file check refuses), and the example Secret has that key.
        if role == "gateway" {
            assert!(lines.contains(&"- name: DPOP_NONCE_SECRET"), "{rel}");
            assert!(
                lines.contains(
                    &"valueFrom: {secretKeyRef: {name: dpop-gateway, key: nonce-secret}}"
                ),
                "{rel}"
            );
            assert!(config["nonce"].get("secrets_file").is_none(), "{rel}");
            let example = read("deploy/kubernetes/secrets.example.yaml");
            assert!(example.contains("  nonce-secret: "), "the example Secret");
            assert!(
                !deployment.contains("defaultMode"),
                "{rel}: no secret volume"
            );
        }
        // Service, PodDisruptionBudget and NetworkPolicy agree on the ports.
        let service = kind(&docs, "Service");
        assert!(
            service.contains(&format!(
                "- {{name: http, port: {listen}, targetPort: http}}"
            )),
            "{service}"
        );
        assert!(kind(&docs, "PodDisruptionBudget").contains("minAvailable: 1"));
        let policy = kind(&docs, "NetworkPolicy");
        for port in [listen, admin] {
            assert!(
                policy.contains(&format!("{{port: {port}, protocol: TCP}}")),
                "{rel}: NetworkPolicy lets {port} in"
            );
        }
    }
}

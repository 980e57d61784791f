# syntax=docker/dockerfile:1
# The `dpop` binary (gateway, authorizer, issuer and client tools) in a small image.
#
#   docker build -t dpop .
#   docker run --rm --read-only -p 8080:8080 -v "$PWD/gateway.toml:/etc/dpop/gateway.toml:ro" \
#       dpop gateway --config /etc/dpop/gateway.toml
#
# See deploy/compose/ for the whole system and docs/deploying.md for the rest.

# ---- build: the workspace's rust-version (Cargo.toml) or newer ----------------------
FROM rust:1.88-bookworm AS build
WORKDIR /src
COPY . .
# aws-lc-sys compiles AWS-LC (and libsqlite3-sys SQLite) with the image's C compiler;
# no cmake or nasm is needed on x86_64 Linux.
RUN cargo build --release --locked -p dpop-cli \
 && install -D -m 0755 target/release/dpop /out/usr/local/bin/dpop \
 && install -d -m 0700 /out/var/lib/dpop

# ---- run ------------------------------------------------------------------------------
FROM debian:bookworm-slim
# CA certificates: issuers' metadata, JWKS and upstreams over https.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/usr/local/bin/dpop /usr/local/bin/dpop
# The issuer's data directory (signing keys; SQLite when not on PostgreSQL): the only
# place the image writes, so the root file system can be read-only.
COPY --from=build --chown=65532:65532 /out/var/lib/dpop /var/lib/dpop
VOLUME ["/var/lib/dpop"]
# Not root, by number, so that runAsNonRoot can check it without /etc/passwd.
USER 65532:65532
# The gateway (8080), the issuer (8081, its default listen port) and their admin
# listeners (9090, 9091), as in deploy/compose/ and deploy/kubernetes/.
EXPOSE 8080 8081 9090 9091
# No HEALTHCHECK here: one image runs several roles whose admin ports differ, and an image
# health check cannot tell which one runs. deploy/compose/compose.yaml probes each
# service's admin listener (/healthz, /readyz) with bash alone (no curl in the image), and
# Kubernetes uses httpGet probes.
ENTRYPOINT ["dpop"]
CMD ["--help"]

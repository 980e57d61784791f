//! End-to-end tests of the `dpop` binary, run as a user would: the command-line tool
//! (`cli`), the gateway between a mock issuer and an echo upstream (`gateway`), the
//! issuer with the gateway (`issuer`), `dpop authz` behind real nginx and Caddy
//! (`proxies`), the client commands `dpop token` and `dpop curl` against the issuer and
//! the gateway (`client`), `dpop curl` as curl's users expect it (`curl`), the whole
//! system of issuer, gateway instances, Redis, PostgreSQL and clients in operational
//! scenarios (`system`), OpenTelemetry traces (`telemetry`), tokens kept between runs
//! (`tokens`), `dpop jwt` (`jwt`), key files (`keys`), keys in devices (`device_keys`), environment variables, completions
//! and the manual page (`shell`), and the deployment files against the code and their
//! configurations (`deploy`). What they share is in `common`.

mod common;

mod cli;
mod client;
mod curl;
mod deploy;
mod device_keys;
mod gateway;
mod issuer;
mod jwt;
mod keys;
mod proxies;
mod shell;
mod system;
mod telemetry;
mod tokens;

//! End-to-end tests of the `dpop` binary, run as a user would: the command-line tool
//! (`cli`) and the gateway between a mock issuer and an echo upstream (`gateway`).

mod cli;
mod gateway;

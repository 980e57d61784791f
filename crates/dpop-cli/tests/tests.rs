//! End-to-end tests of the `dpop` binary, run as a user would: the command-line tool
//! (`cli`), the gateway between a mock issuer and an echo upstream (`gateway`), and the
//! issuer with the gateway (`issuer`).

mod cli;
mod gateway;
mod issuer;

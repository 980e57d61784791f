//! `dpop demo`: the whole system on loopback, in this process ([`system`]), or with
//! `--offline` the protocol walked through step by step without files or network
//! ([`offline`]).

pub(crate) mod offline;
pub(crate) mod system;

//! Tests of the DPoP client against in-process servers.

//! Where `env:VAR` values of the configuration (client secrets) are looked up: the
//! process environment in production, a map in tests. Public as
//! `config::{Environment, ProcessEnvironment}`.

use std::collections::BTreeMap;

/// Where an `env:VAR` value is looked up (the process environment in production; a map
/// in tests).
pub trait Environment {
    /// The variable's value, if set.
    fn var(&self, name: &str) -> Option<String>;
}

/// The process environment.
#[derive(Clone, Copy, Debug, Default)]
pub struct ProcessEnvironment;

impl Environment for ProcessEnvironment {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

impl Environment for BTreeMap<String, String> {
    fn var(&self, name: &str) -> Option<String> {
        self.get(name).cloned()
    }
}

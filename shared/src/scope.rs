//! API key scopes. Each domain declares the scopes its routes check; the gateway collects the
//! declarations of every registered domain, and the auth domain accepts exactly those.

use std::sync::Arc;

/// A permission an API key can carry, declared by the domain that checks it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScopeDef {
    /// The scope as it appears in a key's `scopes`, e.g. `inference` or `billing:read`.
    pub name: &'static str,
    pub description: &'static str,
    /// Whether a key created without `scopes` gets this one.
    pub default: bool,
}

/// The scopes of every registered domain.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scopes(Arc<[ScopeDef]>);

impl Scopes {
    pub fn new(mut defs: Vec<ScopeDef>) -> Self {
        defs.sort_by_key(|d| d.name);
        defs.dedup_by_key(|d| d.name);
        Self(defs.into())
    }

    pub fn contains(&self, name: &str) -> bool {
        self.0.iter().any(|d| d.name == name)
    }

    /// The scopes of a key created without `scopes`.
    pub fn defaults(&self) -> Vec<String> {
        self.0.iter().filter(|d| d.default).map(|d| d.name.to_owned()).collect()
    }

    pub fn all(&self) -> &[ScopeDef] {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_are_sorted_deduplicated_and_defaulted() {
        let a = ScopeDef { name: "b", description: "", default: true };
        let b = ScopeDef { name: "a", description: "", default: false };
        let scopes = Scopes::new(vec![a, b, a]);
        assert_eq!(scopes.all().iter().map(|d| d.name).collect::<Vec<_>>(), ["a", "b"]);
        assert!(scopes.contains("a") && !scopes.contains("c"));
        assert_eq!(scopes.defaults(), ["b"]);
    }
}

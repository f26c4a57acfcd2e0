//! Session tokens and API keys: random secrets from the OS, stored only as SHA-256 digests.
//!
//! A session token is `keel_st_<64 hex>` (256 random bits), looked up by its digest.
//! An API key is `keel_sk_<lookup>_<secret>`: the 16-hex lookup part is stored in clear to find
//! the row (and is the visible prefix), the 64-hex secret only as a digest, compared in
//! constant time. A database dump therefore holds nothing that authenticates.

use crate::error::AuthError;
use sha2::{Digest, Sha256};
use shared::Secret;
use subtle::ConstantTimeEq;

pub(crate) const SESSION_PREFIX: &str = "keel_st_";
pub(crate) const API_KEY_PREFIX: &str = "keel_sk_";
const LOOKUP_BYTES: usize = 8;
const SECRET_BYTES: usize = 32;

fn random_hex<const N: usize>() -> Result<String, AuthError> {
    let mut bytes = [0u8; N];
    getrandom::fill(&mut bytes).map_err(|e| AuthError::Internal(format!("OS random generator failed: {e}")))?;
    Ok(hex::encode(bytes))
}

/// The hex SHA-256 digest of a secret.
pub(crate) fn digest(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// Compares two digests without leaking where they differ.
pub(crate) fn digests_match(a: &str, b: &str) -> bool {
    a.as_bytes().ct_eq(b.as_bytes()).into()
}

/// A new session token and the digest to store.
pub(crate) fn new_session_token() -> Result<(Secret, String), AuthError> {
    let token = format!("{SESSION_PREFIX}{}", random_hex::<SECRET_BYTES>()?);
    let digest = digest(&token);
    Ok((Secret::new(token), digest))
}

/// A new API key.
pub(crate) struct NewApiKey {
    pub key: Secret,
    pub lookup: String,
    pub prefix: String,
    pub secret_digest: String,
}

pub(crate) fn new_api_key() -> Result<NewApiKey, AuthError> {
    let lookup = random_hex::<LOOKUP_BYTES>()?;
    let secret = random_hex::<SECRET_BYTES>()?;
    Ok(NewApiKey {
        key: Secret::new(format!("{API_KEY_PREFIX}{lookup}_{secret}")),
        prefix: prefix_of(&lookup),
        secret_digest: digest(&secret),
        lookup,
    })
}

/// The visible prefix of a key with this lookup part.
pub(crate) fn prefix_of(lookup: &str) -> String {
    format!("{API_KEY_PREFIX}{lookup}")
}

/// Splits an API key into its lookup part and its secret, if it has the right shape.
pub(crate) fn parse_api_key(key: &str) -> Option<(&str, &str)> {
    let rest = key.strip_prefix(API_KEY_PREFIX)?;
    let (lookup, secret) = rest.split_once('_')?;
    let is_hex = |s: &str, len: usize| s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit());
    (is_hex(lookup, 2 * LOOKUP_BYTES) && is_hex(secret, 2 * SECRET_BYTES)).then_some((lookup, secret))
}

/// Whether a session token has the right shape (saves a query for garbage).
pub(crate) fn is_session_token(token: &str) -> bool {
    token
        .strip_prefix(SESSION_PREFIX)
        .is_some_and(|rest| rest.len() == 2 * SECRET_BYTES && rest.bytes().all(|b| b.is_ascii_hexdigit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_tokens_are_random_and_well_formed() {
        let (a, da) = new_session_token().unwrap();
        let (b, _) = new_session_token().unwrap();
        assert_ne!(a, b);
        assert!(is_session_token(a.expose()));
        assert_eq!(da, digest(a.expose()));
        assert!(!da.contains(&a.expose()[SESSION_PREFIX.len()..]));
        assert!(!is_session_token("keel_st_short"));
    }

    #[test]
    fn api_keys_parse_back_and_digest_only_the_secret() {
        let key = new_api_key().unwrap();
        let (lookup, secret) = parse_api_key(key.key.expose()).unwrap();
        assert_eq!(lookup, key.lookup);
        assert_eq!(digest(secret), key.secret_digest);
        assert!(key.key.expose().starts_with(&key.prefix));
        assert!(parse_api_key("keel_sk_abc_def").is_none());
        assert!(parse_api_key(&key.key.expose().replace("keel_sk_", "keel_st_")).is_none());
    }

    #[test]
    fn digest_comparison() {
        assert!(digests_match(&digest("x"), &digest("x")));
        assert!(!digests_match(&digest("x"), &digest("y")));
        assert!(!digests_match("ab", "abc"));
    }
}

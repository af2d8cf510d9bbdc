//! Long-term credential authentication, RFC 8489 §9.2, with static users
//! and TURN REST shared secrets (draft-uberti-behave-turn-rest-00 §2.2).
//!
//! Nonces are stateless: an HMAC over the client's transport address and
//! the issue time under a per-process key, so a 401 costs the server no
//! memory. Derived keys are cached per username once a request has
//! authenticated, so later requests cost one HMAC.

use std::borrow::Cow;
use std::collections::HashMap;
use std::net::SocketAddr;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use super::ClientAddr;
use super::allocation::KeyBytes;
use crate::wire::{IntegrityKey, Message, PasswordAlgorithm, long_term_key, userhash};

/// RFC 8489 §9.2: the nonce cookie announcing the security features
/// ("obMatJos2"), then the feature set: bit 0 password algorithms, bit 1
/// username anonymity (both supported), base64 of the 24 bits 0xC00000
/// ("wAAA"). A nonce without it (a compact 401, see
/// `Server::reject_unsigned`) is just as valid: the client then uses MD5.
pub const NONCE_SECURITY_PREFIX: &str = "obMatJos2wAAA";
/// PASSWORD-ALGORITHMS we offer, strongest first (RFC 8489 §14.11).
pub const OFFERED_ALGORITHMS: [u16; 2] = [0x0002, 0x0001];
/// Bytes of HMAC-SHA256 kept in a nonce: 64 bits. The nonce only proves
/// that the client received our 401 at its address lately (a forgery buys
/// no key); four bytes of issue time and these eight are 16 base64
/// characters, which keeps the 401 small (amplification).
const NONCE_TAG: usize = 8;
/// Largest key cache before it is cleared (bounds memory under churn).
const KEY_CACHE_MAX: usize = 16_384;

/// How a static user is configured: a password, or only the MD5 long-term
/// key (RFC 8489 §9.2.2, `MD5(username ":" realm ":" password)`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StaticCredential {
    Password(String),
    Md5Key([u8; 16]),
}

/// A static user's keys.
#[derive(Clone, Debug)]
struct StaticUser {
    md5: IntegrityKey,
    /// `None` for users configured with a precomputed MD5 key only.
    sha256: Option<IntegrityKey>,
}

/// Credentials resolved from `[auth]`; replaced as a whole on reload.
#[derive(Clone, Debug)]
pub struct Credentials {
    realm: String,
    secrets: Vec<String>,
    users: HashMap<String, StaticUser>,
    userhashes: HashMap<[u8; 32], String>,
    nonce_lifetime: u64,
}

impl Credentials {
    /// `secrets` are the shared secrets already read (config values and
    /// secret files).
    pub fn new(
        realm: &str,
        secrets: Vec<String>,
        users: &std::collections::BTreeMap<String, StaticCredential>,
        nonce_lifetime: u64,
    ) -> Self {
        let mut map = HashMap::new();
        let mut hashes = HashMap::new();
        for (name, cred) in users {
            let u = match cred {
                StaticCredential::Password(p) => StaticUser {
                    md5: long_term_key(PasswordAlgorithm::Md5, name, realm, p),
                    sha256: Some(long_term_key(PasswordAlgorithm::Sha256, name, realm, p)),
                },
                StaticCredential::Md5Key(key) => StaticUser {
                    md5: IntegrityKey::new(key),
                    sha256: None,
                },
            };
            map.insert(name.clone(), u);
            hashes.insert(userhash(name, realm), name.clone());
        }
        Credentials {
            realm: realm.to_string(),
            secrets,
            users: map,
            userhashes: hashes,
            nonce_lifetime,
        }
    }

    pub fn realm(&self) -> &str {
        &self.realm
    }

    pub fn secrets(&self) -> &[String] {
        &self.secrets
    }

    pub fn nonce_lifetime(&self) -> u64 {
        self.nonce_lifetime
    }

    /// Whether `name` is a configured static user.
    pub fn has_user(&self, name: &str) -> bool {
        self.users.contains_key(name)
    }

    /// Whether every key `old` verifies, these verify too: the same realm,
    /// each old secret still here, each old static user here with the same
    /// keys. Then a reload from `old` to these revokes nothing.
    #[allow(
        clippy::disallowed_methods,
        reason = "`all` over the users: the answer does not depend on the order"
    )]
    pub fn covers(&self, old: &Credentials) -> bool {
        let same = |a: &IntegrityKey, b: &IntegrityKey| a.as_bytes() == b.as_bytes();
        self.realm == old.realm
            && old.secrets.iter().all(|s| self.secrets.contains(s))
            && old.users.iter().all(|(name, u)| {
                self.users.get(name).is_some_and(|n| {
                    same(&n.md5, &u.md5)
                        && match (&n.sha256, &u.sha256) {
                            (Some(a), Some(b)) => same(a, b),
                            (None, None) => true,
                            _ => false,
                        }
                })
            })
    }
}

pub use crate::rest::{parse_rest_username, rest_password};

/// Why a request did not authenticate; each maps to one response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthFailure {
    /// No MESSAGE-INTEGRITY: 401 with REALM and NONCE (the normal first
    /// round trip, not an attack).
    Challenge,
    /// Integrity present but USERNAME/REALM/NONCE missing, or a password
    /// algorithm mismatch: 400.
    BadRequest(&'static str),
    /// Nonce not ours or expired: 438 with a fresh one.
    StaleNonce,
    /// 401: user not configured and not a REST username.
    UnknownUser,
    /// 401: REST username past its expiry.
    ExpiredUsername,
    /// 401: integrity did not verify with the user's key.
    BadIntegrity,
    /// 401: the credential verified but is revoked (issue 14), answered
    /// as an expired one is.
    Revoked,
}

impl AuthFailure {
    pub fn code(self) -> u16 {
        match self {
            AuthFailure::BadRequest(_) => 400,
            AuthFailure::StaleNonce => 438,
            _ => 401,
        }
    }

    pub fn reason(self) -> &'static str {
        match self {
            AuthFailure::BadRequest(r) => r,
            AuthFailure::StaleNonce => "Stale Nonce",
            _ => "Unauthorized",
        }
    }
}

/// The integrity attribute of a request, and of its response (RFC 8489
/// §14.5, §14.6).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Integrity {
    /// MESSAGE-INTEGRITY (HMAC-SHA1).
    Sha1,
    /// MESSAGE-INTEGRITY-SHA256.
    Sha256,
}

/// A request that authenticated.
#[derive(Clone, Debug)]
pub struct Authed<'m> {
    /// The long-term username (from USERNAME, or resolved from USERHASH).
    pub username: Cow<'m, str>,
    pub key: IntegrityKey,
    /// Which integrity attribute the request carried (the response is
    /// signed the same way).
    pub integrity: Integrity,
    pub password_algorithm: PasswordAlgorithm,
    /// The Unix time a REST username expires at (`None` for a static
    /// user): no lifetime granted runs past it.
    pub rest_expiry: Option<u64>,
}

impl Authed<'_> {
    /// The identity quotas count: the user part of a REST username, else
    /// the username.
    pub fn quota_user(&self) -> &str {
        parse_rest_username(&self.username).map_or(&self.username, |(_, u)| u)
    }
}

/// Verifies requests; owns the nonce key and the key cache.
pub struct Authenticator {
    creds: std::sync::Arc<Credentials>,
    nonce_key: Hmac<Sha256>,
    /// Derived keys by username, as bytes (the HMAC states are rebuilt per
    /// use: a few compression rounds, against a key derivation — HMAC of
    /// the secret plus MD5/SHA-256 — saved; and a tenth of the memory).
    /// Keyed by the username's SHA-256, not the name: an entry is a fixed
    /// size inside the table, with no allocation of its own. Entries made
    /// while an attack grows the heap would otherwise stay scattered over
    /// it after the attack is freed, and keep its pages resident.
    cache: HashMap<CacheKey, KeyBytes>,
}

/// The key cache's key: SHA-256 of the username, and the algorithm.
type CacheKey = ([u8; 32], PasswordAlgorithm);

fn cache_key(username: &str, alg: PasswordAlgorithm) -> CacheKey {
    use sha2::Digest;
    (Sha256::digest(username.as_bytes()).into(), alg)
}

impl Authenticator {
    pub fn new(creds: std::sync::Arc<Credentials>, nonce_key: &[u8; 32]) -> Self {
        Authenticator {
            creds,
            nonce_key: <Hmac<Sha256> as Mac>::new_from_slice(nonce_key).expect("any key length"),
            // Grown as names arrive (sized for KEY_CACHE_MAX up front, its
            // buckets are touched all over by a few thousand names: 2 MiB
            // a shard, more than the grown table holds).
            cache: HashMap::new(),
        }
    }

    pub fn credentials(&self) -> &Credentials {
        &self.creds
    }

    /// Swap in new credentials (reload). Cached keys go with the old ones.
    pub fn set_credentials(&mut self, creds: std::sync::Arc<Credentials>) {
        self.creds = creds;
        self.cache.clear();
    }

    pub fn cached_keys(&self) -> usize {
        self.cache.len()
    }

    fn nonce_tag(&self, ClientAddr(client): ClientAddr, issued: u32) -> [u8; NONCE_TAG] {
        let mut mac = self.nonce_key.clone();
        match client {
            SocketAddr::V4(a) => mac.update(&a.ip().octets()),
            SocketAddr::V6(a) => mac.update(&a.ip().octets()),
        }
        mac.update(&client.port().to_be_bytes());
        mac.update(&issued.to_be_bytes());
        let full = mac.finalize().into_bytes();
        let mut t = [0u8; NONCE_TAG];
        t.copy_from_slice(&full[..NONCE_TAG]);
        t
    }

    /// A fresh nonce for `client` (RFC 8489 §9.2: cookie, feature set,
    /// then our opaque part: issue time and tag, 16 characters). Without
    /// its first [`NONCE_SECURITY_PREFIX`]`.len()` characters it is the
    /// compact nonce of a 401 without the security features.
    pub fn nonce(&self, client: ClientAddr, wall: u64) -> String {
        let issued = wall as u32;
        let mut raw = [0u8; 4 + NONCE_TAG];
        raw[..4].copy_from_slice(&issued.to_be_bytes());
        raw[4..].copy_from_slice(&self.nonce_tag(client, issued));
        let mut s = String::with_capacity(NONCE_SECURITY_PREFIX.len() + 16);
        s.push_str(NONCE_SECURITY_PREFIX);
        URL_SAFE_NO_PAD.encode_string(raw, &mut s);
        s
    }

    /// Whether `nonce` was issued by us to `client` and is not older than
    /// the nonce lifetime (RFC 8489 §9.2.4 → 438 otherwise).
    pub fn nonce_valid(&self, nonce: &str, client: ClientAddr, wall: u64) -> bool {
        let rest = nonce.strip_prefix(NONCE_SECURITY_PREFIX).unwrap_or(nonce);
        let mut raw = [0u8; 4 + NONCE_TAG + 2];
        match URL_SAFE_NO_PAD.decode_slice(rest, &mut raw) {
            Ok(n) if n == 4 + NONCE_TAG => {}
            _ => return false,
        }
        let issued = u32::from_be_bytes([raw[0], raw[1], raw[2], raw[3]]);
        let tag = self.nonce_tag(client, issued);
        if !bool::from(tag.ct_eq(&raw[4..4 + NONCE_TAG])) {
            return false;
        }
        let now = wall as u32;
        // Valid from issue until issue + lifetime; a nonce "from the
        // future" (clock stepped back) is accepted for a minute.
        now.wrapping_sub(issued) < self.creds.nonce_lifetime as u32 || issued.wrapping_sub(now) < 60
    }

    /// RFC 8489 §9.2.4, the server side of the long-term mechanism, in the
    /// RFC's order. `existing` is the username and key of the allocation
    /// the request is for, if any: its key is used directly.
    pub fn authenticate<'m>(
        &mut self,
        msg: &Message<'m>,
        client: ClientAddr,
        wall: u64,
        existing: Option<(&str, &IntegrityKey, PasswordAlgorithm)>,
    ) -> Result<Authed<'m>, AuthFailure> {
        if !msg.has_integrity() {
            return Err(AuthFailure::Challenge);
        }
        check_lengths(msg)?;
        let username = match (msg.username(), msg.userhash()) {
            (Ok(Some(u)), _) => Cow::Borrowed(u),
            (_, Ok(Some(h))) => match self.creds.userhashes.get(h) {
                Some(u) => Cow::Owned(u.clone()),
                None => return Err(AuthFailure::UnknownUser),
            },
            (Err(_), _) | (_, Err(_)) => return Err(AuthFailure::BadRequest("Bad USERNAME")),
            (Ok(None), Ok(None)) => return Err(AuthFailure::BadRequest("Missing USERNAME")),
        };
        if !matches!(msg.realm(), Ok(Some(_))) {
            return Err(AuthFailure::BadRequest("Missing REALM"));
        }
        let Ok(Some(nonce)) = msg.nonce() else {
            return Err(AuthFailure::BadRequest("Missing NONCE"));
        };
        if !self.nonce_valid(nonce, client, wall) {
            return Err(AuthFailure::StaleNonce);
        }
        let alg = password_algorithm(msg)?;
        let integrity = if msg.has_integrity_sha256() {
            Integrity::Sha256
        } else {
            Integrity::Sha1
        };
        let verify = |key: &IntegrityKey| msg.verify_integrity(key).is_ok();

        let rest_expiry = self.rest_expiry(&username);
        if let Some((u, key, a)) = existing {
            if u == username && a == alg {
                if !verify(key) {
                    return Err(AuthFailure::BadIntegrity);
                }
                // The allocation's own key: its REST expiry still holds
                // (issue 12: an expired credential neither refreshes nor
                // adds permissions or channels).
                if rest_expiry.is_some_and(|e| e <= wall) {
                    return Err(AuthFailure::ExpiredUsername);
                }
                return Ok(Authed {
                    username,
                    key: key.clone(),
                    integrity,
                    password_algorithm: alg,
                    rest_expiry,
                });
            }
        }
        let cache_key = cache_key(&username, alg);
        if let Some(key) = self.cache.get(&cache_key).map(KeyBytes::key) {
            if verify(&key) {
                // REST usernames expire even when their key is cached.
                if rest_expiry.is_some_and(|e| e <= wall) {
                    return Err(AuthFailure::ExpiredUsername);
                }
                return Ok(Authed {
                    username,
                    key,
                    integrity,
                    password_algorithm: alg,
                    rest_expiry,
                });
            }
        }
        let key = self.find_key(&username, alg, wall, &verify)?;
        if self.cache.len() >= KEY_CACHE_MAX {
            self.cache.clear();
        }
        self.cache.insert(cache_key, KeyBytes::of(&key));
        Ok(Authed {
            username,
            key,
            integrity,
            password_algorithm: alg,
            rest_expiry,
        })
    }

    /// The expiry of a REST username: `None` for a static user (whose name
    /// may look like one) and for a name that is not `expiry:user`. A
    /// credential is expired once the wall clock reaches its expiry: a
    /// lifetime of zero seconds is left then.
    pub fn rest_expiry(&self, username: &str) -> Option<u64> {
        if self.creds.users.contains_key(username) {
            return None;
        }
        parse_rest_username(username).map(|(e, _)| e)
    }

    /// Whether the allocation key `key` of `username` (for `alg`) still
    /// verifies with the credentials in force: the static user's key, or
    /// the key one of the secrets derives for the REST username. After a
    /// reload that removed the user or the last secret that verified it,
    /// it does not.
    pub fn still_verifies(&self, username: &str, alg: PasswordAlgorithm, key: &[u8]) -> bool {
        let same = |k: &IntegrityKey| bool::from(k.as_bytes().ct_eq(key));
        if let Some(u) = self.creds.users.get(username) {
            return match alg {
                PasswordAlgorithm::Md5 => same(&u.md5),
                PasswordAlgorithm::Sha256 => u.sha256.as_ref().is_some_and(same),
            };
        }
        if parse_rest_username(username).is_none() {
            return false;
        }
        self.creds.secrets.iter().any(|secret| {
            let password = rest_password(secret, username);
            same(&long_term_key(alg, username, &self.creds.realm, &password))
        })
    }

    /// Derive candidate keys (static user, then each REST secret) until one
    /// verifies.
    fn find_key(
        &self,
        username: &str,
        alg: PasswordAlgorithm,
        wall: u64,
        verify: &dyn Fn(&IntegrityKey) -> bool,
    ) -> Result<IntegrityKey, AuthFailure> {
        let realm = &self.creds.realm;
        if let Some(u) = self.creds.users.get(username) {
            let key = match alg {
                PasswordAlgorithm::Md5 => Some(&u.md5),
                PasswordAlgorithm::Sha256 => u.sha256.as_ref(),
            };
            return match key {
                Some(k) if verify(k) => Ok(k.clone()),
                _ => Err(AuthFailure::BadIntegrity),
            };
        }
        let Some((expiry, _)) = parse_rest_username(username) else {
            return Err(AuthFailure::UnknownUser);
        };
        if self.creds.secrets.is_empty() {
            return Err(AuthFailure::UnknownUser);
        }
        if expiry <= wall {
            return Err(AuthFailure::ExpiredUsername);
        }
        for secret in &self.creds.secrets {
            let password = rest_password(secret, username);
            let key = long_term_key(alg, username, realm, &password);
            if verify(&key) {
                return Ok(key);
            }
        }
        Err(AuthFailure::BadIntegrity)
    }
}

/// RFC 8489 §14.3: USERNAME is less than 509 bytes.
pub const MAX_USERNAME: usize = 508;
/// RFC 8489 §14.9, §14.10: REALM and NONCE are at most 763 bytes (and
/// fewer than 128 characters; turnpike enforces the byte bound, which
/// every value of more than 763 characters exceeds too).
pub const MAX_REALM_OR_NONCE: usize = 763;

/// USERNAME, REALM and NONCE within RFC 8489's bounds, checked before any
/// HMAC (the nonce's included) is computed over them: a 30 KB username is
/// a 400, never a key derivation or a log line.
fn check_lengths(msg: &Message<'_>) -> Result<(), AuthFailure> {
    let len = |typ| msg.get(typ).map_or(0, |a| a.value.len());
    if len(crate::wire::attr::USERNAME) > MAX_USERNAME {
        return Err(AuthFailure::BadRequest("USERNAME too long"));
    }
    if len(crate::wire::attr::REALM) > MAX_REALM_OR_NONCE {
        return Err(AuthFailure::BadRequest("REALM too long"));
    }
    if len(crate::wire::attr::NONCE) > MAX_REALM_OR_NONCE {
        return Err(AuthFailure::BadRequest("NONCE too long"));
    }
    Ok(())
}

/// RFC 8489 §9.2.4: which password algorithm the request uses. Neither
/// PASSWORD-ALGORITHMS nor PASSWORD-ALGORITHM: MD5 (legacy clients). Both:
/// the list must be the one we offered and the choice one of ours.
/// Anything else: 400.
fn password_algorithm(msg: &Message<'_>) -> Result<PasswordAlgorithm, AuthFailure> {
    let list = msg.password_algorithms();
    let chosen = msg
        .password_algorithm()
        .map_err(|_| AuthFailure::BadRequest("Bad PASSWORD-ALGORITHM"))?;
    match (list, chosen) {
        (None, None) => Ok(PasswordAlgorithm::Md5),
        (Some(list), Some((alg, _))) => {
            let mut offered = OFFERED_ALGORITHMS.iter();
            let mut n = 0;
            for (a, _) in list.clone() {
                if offered.next() != Some(&a) {
                    return Err(AuthFailure::BadRequest("PASSWORD-ALGORITHMS mismatch"));
                }
                n += 1;
            }
            if n != OFFERED_ALGORITHMS.len() || list.malformed() {
                return Err(AuthFailure::BadRequest("PASSWORD-ALGORITHMS mismatch"));
            }
            PasswordAlgorithm::from_code(alg)
                .ok_or(AuthFailure::BadRequest("Unsupported PASSWORD-ALGORITHM"))
        }
        _ => Err(AuthFailure::BadRequest(
            "PASSWORD-ALGORITHM without PASSWORD-ALGORITHMS",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::STANDARD;
    use sha1::Sha1;

    #[test]
    fn rest_password_matches_coturn_formula() {
        // base64(HMAC-SHA1("secret", "1700000000:alice")), computed with
        // `printf %s 1700000000:alice | openssl dgst -sha1 -hmac secret -binary | base64`.
        assert_eq!(
            rest_password("secret", "1700000000:alice"),
            STANDARD.encode(
                <Hmac<Sha1> as Mac>::new_from_slice(b"secret")
                    .unwrap()
                    .chain_update(b"1700000000:alice")
                    .finalize()
                    .into_bytes()
            )
        );
        assert_eq!(
            parse_rest_username("1700000000:alice"),
            Some((1_700_000_000, "alice"))
        );
        assert_eq!(parse_rest_username("alice"), None);
        assert_eq!(parse_rest_username("x1:alice"), None);
        assert_eq!(parse_rest_username("12:a:b"), Some((12, "a:b")));
    }

    #[test]
    fn nonces_bind_address_and_expire() {
        let creds = std::sync::Arc::new(Credentials::new("r", vec![], &Default::default(), 3600));
        let a = Authenticator::new(creds, &[7; 32]);
        let c1 = ClientAddr("192.0.2.1:1000".parse().unwrap());
        let c2 = ClientAddr("192.0.2.1:1001".parse().unwrap());
        let n = a.nonce(c1, 1_000_000);
        assert!(n.starts_with("obMatJos2wAAA"));
        assert!(a.nonce_valid(&n, c1, 1_000_000));
        assert!(a.nonce_valid(&n, c1, 1_003_599));
        assert!(
            !a.nonce_valid(&n, c1, 1_003_600),
            "expired after the lifetime"
        );
        assert!(
            !a.nonce_valid(&n, c2, 1_000_000),
            "bound to the client address"
        );
        let other = Authenticator::new(
            std::sync::Arc::new(Credentials::new("r", vec![], &Default::default(), 3600)),
            &[8; 32],
        );
        assert!(
            !other.nonce_valid(&n, c1, 1_000_000),
            "bound to the server key"
        );
        assert_eq!(n.len(), NONCE_SECURITY_PREFIX.len() + 16);
        let compact = &n[NONCE_SECURITY_PREFIX.len()..];
        assert!(a.nonce_valid(compact, c1, 1_000_000), "the compact form");
        assert!(!a.nonce_valid(compact, c1, 1_003_600), "expires too");
        assert!(!a.nonce_valid(compact, c2, 1_000_000));
        let mut forged = compact.to_string().into_bytes();
        forged[15] = if forged[15] == b'A' { b'B' } else { b'A' };
        assert!(!a.nonce_valid(std::str::from_utf8(&forged).unwrap(), c1, 1_000_000));
        assert!(!a.nonce_valid("obMatJos2wAAAgarbage", c1, 1_000_000));
        assert!(!a.nonce_valid("", c1, 1_000_000));
    }
}

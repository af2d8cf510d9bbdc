//! Keys, HMACs and the fingerprint.
//!
//! RFC 8489 §9.2.2 (long-term key), §14.5 (MESSAGE-INTEGRITY, HMAC-SHA1),
//! §14.6 (MESSAGE-INTEGRITY-SHA256), §14.4 (USERHASH), §14.7 (FINGERPRINT).

use hmac::{Hmac, Mac};
use md5::Md5;
use sha1::Sha1;
use sha2::{Digest, Sha256};

/// Password algorithms of RFC 8489 §18.5.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PasswordAlgorithm {
    /// 0x0001: key = MD5(username ":" realm ":" password).
    Md5,
    /// 0x0002: key = SHA-256(username ":" realm ":" password).
    Sha256,
}

impl PasswordAlgorithm {
    pub fn code(self) -> u16 {
        match self {
            PasswordAlgorithm::Md5 => 0x0001,
            PasswordAlgorithm::Sha256 => 0x0002,
        }
    }

    pub fn from_code(code: u16) -> Option<Self> {
        match code {
            0x0001 => Some(PasswordAlgorithm::Md5),
            0x0002 => Some(PasswordAlgorithm::Sha256),
            _ => None,
        }
    }
}

/// The long-term credential key, RFC 8489 §9.2.2:
/// `H(username ":" OpaqueString(realm) ":" OpaqueString(password))` with
/// H = MD5 (16 bytes) or SHA-256 (32 bytes). OpaqueString (RFC 8265)
/// preparation is the identity for the ASCII credentials TURN deployments
/// use; non-ASCII input is hashed as given.
pub fn long_term_key(
    alg: PasswordAlgorithm,
    username: &str,
    realm: &str,
    password: &str,
) -> IntegrityKey {
    match alg {
        PasswordAlgorithm::Md5 => {
            let mut h = Md5::new();
            h.update(username.as_bytes());
            h.update(b":");
            h.update(realm.as_bytes());
            h.update(b":");
            h.update(password.as_bytes());
            IntegrityKey::new(&h.finalize())
        }
        PasswordAlgorithm::Sha256 => {
            let mut h = Sha256::new();
            h.update(username.as_bytes());
            h.update(b":");
            h.update(realm.as_bytes());
            h.update(b":");
            h.update(password.as_bytes());
            IntegrityKey::new(&h.finalize())
        }
    }
}

/// USERHASH, RFC 8489 §14.4: SHA-256(username ":" realm).
pub fn userhash(username: &str, realm: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(username.as_bytes());
    h.update(b":");
    h.update(realm.as_bytes());
    h.finalize().into()
}

/// An HMAC key with both HMAC states precomputed, so checking a message
/// costs the message's compression rounds only (no per-request key setup).
/// Cloning it is a plain copy of the two states.
#[derive(Clone)]
pub struct IntegrityKey {
    len: u8,
    key: [u8; 64],
    sha1: Hmac<Sha1>,
    sha256: Hmac<Sha256>,
}

impl IntegrityKey {
    /// Any key up to 64 bytes (long-term keys are 16 or 32, short-term ICE
    /// passwords are typically 22-32). Longer keys are hashed per RFC 2104,
    /// which the HMAC implementation does for us; only the first 64 bytes
    /// are kept for [`IntegrityKey::as_bytes`].
    pub fn new(key: &[u8]) -> Self {
        let mut k = [0u8; 64];
        let n = key.len().min(64);
        k[..n].copy_from_slice(&key[..n]);
        IntegrityKey {
            len: n as u8,
            key: k,
            sha1: <Hmac<Sha1> as Mac>::new_from_slice(key).expect("HMAC takes any key length"),
            sha256: <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes any key length"),
        }
    }

    /// Short-term credential key, RFC 8489 §9.1.1: the password itself.
    pub fn short_term(password: &str) -> Self {
        Self::new(password.as_bytes())
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.key[..usize::from(self.len)]
    }

    pub(crate) fn sha1(&self) -> Hmac<Sha1> {
        self.sha1.clone()
    }

    pub(crate) fn sha256(&self) -> Hmac<Sha256> {
        self.sha256.clone()
    }
}

impl std::fmt::Debug for IntegrityKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("IntegrityKey(..)")
    }
}

impl PartialEq for IntegrityKey {
    fn eq(&self, other: &Self) -> bool {
        use subtle::ConstantTimeEq;
        self.as_bytes().ct_eq(other.as_bytes()).into()
    }
}

/// FINGERPRINT value, RFC 8489 §14.7: CRC-32 of the message up to the
/// attribute, XOR 0x5354554e.
pub fn fingerprint_of(bytes: &[u8]) -> u32 {
    crc32fast::hash(bytes) ^ 0x5354_554e
}

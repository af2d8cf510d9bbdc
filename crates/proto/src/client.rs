//! The message side of a TURN client (RFC 8656 §6-§12 client rules):
//! building requests and indications, and keeping the long-term
//! credential state (realm, nonce, key) a client learns from a 401. No
//! I/O: the ICE checker, the load generator and the tests send the bytes.

use std::net::SocketAddr;

use crate::wire::{
    Class, IntegrityKey, Message, MessageBuilder, MessageType, Method, PasswordAlgorithm,
    TransactionId, attr, long_term_key,
};

/// A username and password (static, or a TURN REST credential).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl Credentials {
    pub fn new(username: impl Into<String>, password: impl Into<String>) -> Self {
        Credentials {
            username: username.into(),
            password: password.into(),
        }
    }

    /// A TURN REST credential valid until `expiry` (Unix seconds) for
    /// `user`, minted from a shared secret.
    pub fn rest(secret: &str, user: &str, expiry: u64) -> Self {
        let username = format!("{expiry}:{user}");
        let password = crate::core::auth::rest_password(secret, &username);
        Credentials { username, password }
    }
}

/// How a client signs: which password algorithm and which integrity
/// attribute.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SignOptions {
    /// Use the SHA-256 password algorithm when the server offers it (RFC
    /// 8489 §9.2.4); otherwise MD5.
    pub prefer_sha256_key: bool,
    /// Sign with MESSAGE-INTEGRITY-SHA256 instead of MESSAGE-INTEGRITY.
    pub integrity_sha256: bool,
}

/// Long-term credential state learnt from a 401 (RFC 8489 §9.2.3).
#[derive(Clone, Debug)]
pub struct Session {
    pub creds: Credentials,
    pub realm: String,
    pub nonce: String,
    pub key: IntegrityKey,
    /// The PASSWORD-ALGORITHMS list the server sent, echoed when a
    /// non-default algorithm is chosen.
    offered: Vec<u16>,
    algorithm: PasswordAlgorithm,
    opts: SignOptions,
}

impl Session {
    /// Build the session from a 401 (or 438) response carrying REALM and
    /// NONCE. `None` if they are missing.
    pub fn from_challenge(
        resp: &Message<'_>,
        creds: Credentials,
        opts: SignOptions,
    ) -> Option<Self> {
        let realm = resp.realm().ok()??.to_string();
        let nonce = resp.nonce().ok()??.to_string();
        let offered: Vec<u16> = resp
            .password_algorithms()
            .map(|it| it.map(|(a, _)| a).collect())
            .unwrap_or_default();
        let algorithm =
            if opts.prefer_sha256_key && offered.contains(&PasswordAlgorithm::Sha256.code()) {
                PasswordAlgorithm::Sha256
            } else {
                PasswordAlgorithm::Md5
            };
        let key = long_term_key(algorithm, &creds.username, &realm, &creds.password);
        Some(Session {
            creds,
            realm,
            nonce,
            key,
            offered,
            algorithm,
            opts,
        })
    }

    /// Take a new nonce from a 438 Stale Nonce (RFC 8489 §9.2.5).
    pub fn update_nonce(&mut self, resp: &Message<'_>) -> bool {
        match resp.nonce() {
            Ok(Some(n)) => {
                self.nonce = n.to_string();
                true
            }
            _ => false,
        }
    }

    /// Add USERNAME, REALM, NONCE, the password algorithm attributes when
    /// not MD5, and the integrity attribute.
    pub fn sign(&self, b: &mut MessageBuilder<'_>) {
        b.text(attr::USERNAME, &self.creds.username)
            .text(attr::REALM, &self.realm)
            .text(attr::NONCE, &self.nonce);
        if self.algorithm != PasswordAlgorithm::Md5 {
            b.password_algorithms(&self.offered)
                .password_algorithm(self.algorithm.code());
        }
        if self.opts.integrity_sha256 {
            b.integrity_sha256(&self.key);
        } else {
            b.integrity(&self.key);
        }
    }

    /// Check a response's integrity with the session key.
    pub fn verify(&self, resp: &Message<'_>) -> bool {
        resp.verify_integrity(&self.key).is_ok()
    }
}

/// Options of an Allocate request (RFC 8656 §7.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AllocateOptions {
    /// REQUESTED-TRANSPORT protocol number (17 = UDP).
    pub transport: u8,
    pub family: Option<u8>,
    pub additional_family: Option<u8>,
    /// EVEN-PORT with the given R bit.
    pub even_port: Option<bool>,
    pub reservation_token: Option<[u8; 8]>,
    pub lifetime: Option<u32>,
    pub dont_fragment: bool,
    pub fingerprint: bool,
}

impl Default for AllocateOptions {
    fn default() -> Self {
        AllocateOptions {
            transport: attr::TRANSPORT_UDP,
            family: None,
            additional_family: None,
            even_port: None,
            reservation_token: None,
            lifetime: None,
            dont_fragment: false,
            fingerprint: true,
        }
    }
}

fn request(buf: &mut Vec<u8>, method: Method, tid: TransactionId) -> MessageBuilder<'_> {
    MessageBuilder::new(buf, MessageType::new(method, Class::Request), tid)
}

fn finish(mut b: MessageBuilder<'_>, session: Option<&Session>, fingerprint: bool) {
    if let Some(s) = session {
        s.sign(&mut b);
    }
    if fingerprint {
        b.fingerprint();
    }
}

/// A Binding request (RFC 8489 §6.1).
pub fn binding(buf: &mut Vec<u8>, tid: TransactionId, fingerprint: bool) {
    let b = request(buf, Method::BINDING, tid);
    finish(b, None, fingerprint);
}

/// An Allocate request; unsigned (to get the 401) when `session` is None.
pub fn allocate(
    buf: &mut Vec<u8>,
    tid: TransactionId,
    o: &AllocateOptions,
    session: Option<&Session>,
) {
    let mut b = request(buf, Method::ALLOCATE, tid);
    b.requested_transport(o.transport);
    if let Some(f) = o.family {
        b.family(attr::REQUESTED_ADDRESS_FAMILY, f);
    }
    if let Some(f) = o.additional_family {
        b.family(attr::ADDITIONAL_ADDRESS_FAMILY, f);
    }
    if let Some(r) = o.even_port {
        b.even_port(r);
    }
    if let Some(t) = o.reservation_token {
        b.attr(attr::RESERVATION_TOKEN, &t);
    }
    if let Some(l) = o.lifetime {
        b.lifetime(l);
    }
    if o.dont_fragment {
        b.attr(attr::DONT_FRAGMENT, &[]);
    }
    finish(b, session, o.fingerprint);
}

/// A Refresh request (RFC 8656 §8.1); `lifetime` 0 deletes.
pub fn refresh(buf: &mut Vec<u8>, tid: TransactionId, lifetime: Option<u32>, session: &Session) {
    let mut b = request(buf, Method::REFRESH, tid);
    if let Some(l) = lifetime {
        b.lifetime(l);
    }
    finish(b, Some(session), true);
}

/// A CreatePermission request for one or more peers (RFC 8656 §9.1).
pub fn create_permission(
    buf: &mut Vec<u8>,
    tid: TransactionId,
    peers: &[SocketAddr],
    session: &Session,
) {
    let mut b = request(buf, Method::CREATE_PERMISSION, tid);
    for p in peers {
        b.xor_address(attr::XOR_PEER_ADDRESS, *p);
    }
    finish(b, Some(session), true);
}

/// A ChannelBind request (RFC 8656 §11.1).
pub fn channel_bind(
    buf: &mut Vec<u8>,
    tid: TransactionId,
    channel: u16,
    peer: SocketAddr,
    session: &Session,
) {
    let mut b = request(buf, Method::CHANNEL_BIND, tid);
    b.channel_number(channel)
        .xor_address(attr::XOR_PEER_ADDRESS, peer);
    finish(b, Some(session), true);
}

/// A Send indication (RFC 8656 §10.1).
pub fn send_indication(buf: &mut Vec<u8>, tid: TransactionId, peer: SocketAddr, data: &[u8]) {
    let mut b = MessageBuilder::new(buf, MessageType::new(Method::SEND, Class::Indication), tid);
    b.xor_address(attr::XOR_PEER_ADDRESS, peer)
        .attr(attr::DATA, data);
}

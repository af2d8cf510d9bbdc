//! The TURN REST credential scheme (draft-uberti-behave-turn-rest-00
//! §2.2, as coturn implements it): username `<unix-expiry>:<user>`,
//! password `base64(HMAC-SHA1(secret, username))`. Used by the server's
//! authenticator, the TURN client and the credentials API.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use sha1::Sha1;

/// TURN REST password for a username: base64(HMAC-SHA1(secret, username)).
pub fn rest_password(secret: &str, username: &str) -> String {
    let mut mac = <Hmac<Sha1> as Mac>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(username.as_bytes());
    STANDARD.encode(mac.finalize().into_bytes())
}

/// A TURN REST username `<unix-expiry>:<user>` split into its parts.
pub fn parse_rest_username(username: &str) -> Option<(u64, &str)> {
    let (ts, user) = username.split_once(':')?;
    if ts.is_empty() || ts.len() > 20 || !ts.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((ts.parse().ok()?, user))
}

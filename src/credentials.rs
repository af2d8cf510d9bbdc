//! Minting TURN REST credentials and the `iceServers` JSON a WebRTC client
//! takes (draft-uberti-behave-turn-rest-00 §2.2): `username =
//! "<unix-expiry>:<user>"`, `password = base64(HMAC-SHA1(secret,
//! username))`. Used by the HTTP API and by `turnpike credentials`.

use std::net::{IpAddr, SocketAddr};

use serde::Serialize;

use crate::config::{Config, Transport};
use turnpike_proto::core::auth::rest_password;

/// The JSON both the API and the CLI print.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Minted {
    pub username: String,
    pub password: String,
    pub ttl: u64,
    pub uris: Vec<String>,
    #[serde(rename = "iceServers")]
    pub ice_servers: Vec<IceServer>,
}

/// One RTCIceServer entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct IceServer {
    pub urls: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
}

/// Why a user name cannot be put in a credential.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UserError {
    #[error("must be 1 to 128 characters")]
    Length,
    #[error("must not contain control characters")]
    Control,
}

/// Check a user name for a REST credential (it becomes part of the
/// USERNAME attribute, which is at most 509 bytes).
pub fn check_user(user: &str) -> Result<(), UserError> {
    if user.is_empty() || user.chars().count() > 128 {
        return Err(UserError::Length);
    }
    if user.chars().any(char::is_control) {
        return Err(UserError::Control);
    }
    Ok(())
}

/// A credential for `user` valid `ttl` seconds from `now_unix`, with the
/// given URIs.
pub fn mint(
    secret: &str,
    user: &str,
    ttl: u64,
    now_unix: u64,
    stun: Option<String>,
    uris: Vec<String>,
) -> Minted {
    let username = format!("{}:{user}", now_unix + ttl);
    let password = rest_password(secret, &username);
    let mut ice_servers = Vec::new();
    if let Some(s) = stun {
        ice_servers.push(IceServer {
            urls: vec![s],
            username: None,
            credential: None,
        });
    }
    ice_servers.push(IceServer {
        urls: uris.clone(),
        username: Some(username.clone()),
        credential: Some(password.clone()),
    });
    Minted {
        username,
        password,
        ttl,
        uris,
        ice_servers,
    }
}

/// The host part of a URI for a listener: the configured public host, else
/// the listener's own address (or, for a wildcard, this host's primary
/// address of that family).
fn host_for(cfg: &Config, addr: SocketAddr) -> String {
    if let Some(h) = &cfg.server.public_host {
        return h.clone();
    }
    let ip: IpAddr = if addr.ip().is_unspecified() {
        crate::io::primary_address(addr.is_ipv6())
    } else {
        addr.ip()
    };
    match ip {
        IpAddr::V6(v6) => format!("[{v6}]"),
        IpAddr::V4(v4) => v4.to_string(),
    }
}

/// `turn:`/`turns:` URIs for the listeners actually enabled (`listeners`:
/// transport and bound address), deduplicated, UDP first, and the `stun:`
/// URI of the first UDP listener.
pub fn uris(cfg: &Config, listeners: &[(Transport, SocketAddr)]) -> (Option<String>, Vec<String>) {
    let mut out: Vec<String> = Vec::new();
    let mut stun = None;
    for want in [Transport::Udp, Transport::Tcp, Transport::Tls] {
        for &(t, addr) in listeners.iter().filter(|(t, _)| *t == want) {
            let host = host_for(cfg, addr);
            let port = addr.port();
            let uri = match t {
                Transport::Udp => format!("turn:{host}:{port}?transport=udp"),
                Transport::Tcp => format!("turn:{host}:{port}?transport=tcp"),
                Transport::Tls => format!("turns:{host}:{port}?transport=tcp"),
            };
            if t == Transport::Udp && stun.is_none() {
                stun = Some(format!("stun:{host}:{port}"));
            }
            if !out.contains(&uri) {
                out.push(uri);
            }
        }
    }
    (stun, out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minted_json_has_the_documented_shape() {
        let mut cfg = Config::embedded();
        cfg.server.public_host = Some("turn.example.org".into());
        let listeners = [
            (Transport::Udp, "0.0.0.0:3478".parse().unwrap()),
            (Transport::Udp, "[::]:3478".parse().unwrap()),
            (Transport::Tcp, "0.0.0.0:3478".parse().unwrap()),
            (Transport::Tls, "0.0.0.0:5349".parse().unwrap()),
        ];
        let (stun, uris) = uris(&cfg, &listeners);
        assert_eq!(stun.as_deref(), Some("stun:turn.example.org:3478"));
        assert_eq!(
            uris,
            [
                "turn:turn.example.org:3478?transport=udp",
                "turn:turn.example.org:3478?transport=tcp",
                "turns:turn.example.org:5349?transport=tcp"
            ]
        );
        let m = mint("secret", "alice", 86400, 1_763_913_600, stun, uris);
        assert_eq!(m.username, "1764000000:alice");
        assert_eq!(m.password, rest_password("secret", "1764000000:alice"));
        let j: serde_json::Value = serde_json::to_value(&m).unwrap();
        assert_eq!(j["ttl"], 86400);
        assert_eq!(j["iceServers"][0]["urls"][0], "stun:turn.example.org:3478");
        assert!(j["iceServers"][0].get("username").is_none());
        assert_eq!(j["iceServers"][1]["username"], "1764000000:alice");
        assert_eq!(j["iceServers"][1]["credential"], m.password.as_str());
        assert_eq!(j["iceServers"][1]["urls"].as_array().unwrap().len(), 3);
    }

    #[test]
    fn user_names_are_checked() {
        assert!(check_user("alice").is_ok());
        assert_eq!(check_user(""), Err(UserError::Length));
        assert_eq!(check_user(&"x".repeat(129)), Err(UserError::Length));
        assert_eq!(check_user("a\nb"), Err(UserError::Control));
    }
}

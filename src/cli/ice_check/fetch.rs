//! `--credentials-url`: a TURN credential (and the server's `turn:` URIs)
//! from turnpike's HTTP API, with the project's HTTP client.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Result, anyhow, bail};

use super::args::split_host_port;
use turnpike_proto::client::Credentials;

/// What `--credentials-url` answered.
#[derive(Clone, Debug)]
pub(super) struct Fetched {
    pub(super) creds: Credentials,
    pub(super) uris: Vec<String>,
}

pub(super) fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// GET the credentials API (plain HTTP, or HTTPS with the run's TLS
/// settings) with [`turnpike::http_client`]: one request, bounded in time
/// and size.
pub(super) fn fetch_credentials(
    url: &str,
    key: &str,
    user: &str,
    tls: &dyn Fn() -> Result<Arc<rustls::ClientConfig>>,
) -> Result<Fetched> {
    let (scheme, rest) = if let Some(r) = url.strip_prefix("http://") {
        ("http", r)
    } else if let Some(r) = url.strip_prefix("https://") {
        ("https", r)
    } else {
        bail!("--credentials-url `{url}`: expected http://HOST[:PORT]/PATH or https://…");
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/api/v1/credentials"),
    };
    split_host_port(authority, if scheme == "https" { 443 } else { 80 })
        .map_err(|e| anyhow!("--credentials-url `{url}`: {e}"))?;
    let sep = if path.contains('?') { '&' } else { '?' };
    let target = format!(
        "{scheme}://{authority}{path}{sep}username={}",
        percent_encode(user)
    );
    let client = turnpike::http_client::HttpClient::new(
        if scheme == "https" {
            Some(tls()?)
        } else {
            None
        },
        Duration::from_secs(10),
    );
    let bearer = format!("Bearer {key}");
    let response = client
        .get(
            &target,
            &[
                ("Authorization", &bearer),
                ("Accept", "application/json"),
                ("User-Agent", "turnpike-ice-check"),
            ],
        )
        .map_err(|e| anyhow!("--credentials-url: {authority}: {e}"))?;
    let status = response.status;
    let v: serde_json::Value = match serde_json::from_slice(&response.body) {
        Ok(v) => v,
        Err(_) if status != 200 => {
            bail!("--credentials-url: HTTP {status}")
        }
        Err(e) => bail!("--credentials-url: the answer is not JSON: {e}"),
    };
    if status != 200 {
        let msg = v["message"].as_str().unwrap_or("");
        bail!("--credentials-url: HTTP {status}: {msg}");
    }
    let field = |k: &str| {
        v[k].as_str()
            .map(str::to_string)
            .ok_or_else(|| anyhow!("--credentials-url: the answer has no `{k}`"))
    };
    let creds = Credentials::new(field("username")?, field("password")?);
    let uris = v["uris"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|u| u.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    Ok(Fetched { creds, uris })
}

//! Route handlers.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use subtle::ConstantTimeEq;
use tokio::sync::oneshot;
use tower_http::cors::{AllowOrigin, CorsLayer};

use super::{AppState, Op};
use crate::credentials;

type Params = Query<HashMap<String, String>>;

fn error(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    (
        status,
        Json(json!({"error": code, "message": message.into()})),
    )
        .into_response()
}

fn bad_param(parameter: &str, message: impl Into<String>) -> Response {
    let message = message.into();
    (
        StatusCode::BAD_REQUEST,
        Json(json!({"error": "bad_request", "parameter": parameter, "message": message})),
    )
        .into_response()
}

/// The key of `Authorization: Bearer KEY`.
fn bearer_key(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
}

/// The key a caller of the credentials route presented: `Authorization:
/// Bearer KEY`, else `key=` (the TURN REST draft's form; only this route
/// takes it, as only this route is called from pages and scripts that may
/// not set headers).
fn presented_key<'a>(
    headers: &'a HeaderMap,
    params: &'a HashMap<String, String>,
) -> Option<&'a str> {
    bearer_key(headers).or_else(|| params.get("key").map(String::as_str))
}

/// Constant-time membership (every key is compared, so timing does not
/// tell which one nearly matched).
fn key_ok(presented: Option<&str>, keys: &[String]) -> bool {
    let Some(p) = presented else { return false };
    let mut ok = subtle::Choice::from(0);
    for k in keys {
        ok |= k.as_bytes().ct_eq(p.as_bytes());
    }
    !keys.is_empty() && bool::from(ok)
}

fn unauthorized() -> Response {
    error(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "missing or wrong API key",
    )
}

/// The gate of every admin route: `http.admin_keys` only, and only as
/// `Authorization: Bearer KEY` (a key in a URL ends up in proxy and
/// browser logs). With no admin key configured the admin routes are off:
/// 404, whatever the caller presents; an API key never opens them.
///
/// `None` lets the caller in; `Some` is the answer that turns it away.
/// Proof that a request carries an admin key. As an extractor it answers
/// before the admin handler runs: 404 while no `http.admin_keys` are set
/// (never falling back to API keys), 401 for a wrong or missing key, and
/// 401 with the reason for a key in the URL (admin keys are taken only as
/// `Authorization: Bearer KEY`).
pub(super) struct Admin;

impl FromRequestParts<Arc<AppState>> for Admin {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, Response> {
        let cfg = state.config();
        if cfg.http.admin_keys.is_empty() {
            return Err(error(
                StatusCode::NOT_FOUND,
                "admin_disabled",
                "the admin routes are off: set http.admin_keys to turn them on",
            ));
        }
        let bearer = bearer_key(&parts.headers);
        if key_ok(bearer, &cfg.http.admin_keys) {
            return Ok(Admin);
        }
        let key_in_url = Params::try_from_uri(&parts.uri).is_ok_and(|q| q.contains_key("key"));
        if bearer.is_none() && key_in_url {
            return Err(error(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "admin routes take their key only as `Authorization: Bearer KEY`, never in the URL",
            ));
        }
        Err(unauthorized())
    }
}

/// `GET /api/v1/credentials?username=NAME[&ttl=SECONDS]`, and the TURN REST
/// draft form `?service=turn&username=NAME&key=KEY`.
pub(super) async fn credentials(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(p): Params,
) -> Response {
    let cfg = state.config();
    if !key_ok(presented_key(&headers, &p), &cfg.http.api_keys) {
        return unauthorized();
    }
    if let Some(s) = p.get("service") {
        if s != "turn" {
            return bad_param("service", "only service=turn is offered");
        }
    }
    let Some(user) = p.get("username") else {
        return bad_param("username", "missing; pass username=NAME");
    };
    if let Err(e) = credentials::check_user(user) {
        return bad_param("username", e.to_string());
    }
    let max = cfg.http.credential_ttl.0.as_secs();
    let ttl = match p.get("ttl") {
        None => max,
        Some(t) => match t.parse::<u64>() {
            Ok(n) if n > 0 => n.min(max),
            _ => return bad_param("ttl", "must be a positive number of seconds"),
        },
    };
    // Sign with the secret the TURN side verifies with now (secret files
    // are read at start and reload, not here).
    let creds = state.handle.current_credentials();
    let Some(secret) = creds.secrets().first() else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "no_secret",
            "no [auth] secrets configured: credentials cannot be minted",
        );
    };
    let listeners: Vec<_> = state
        .handle
        .listeners()
        .iter()
        .map(|l| (l.transport, l.addr))
        .collect();
    let (stun, uris) = credentials::uris(&cfg, &listeners);
    let now = crate::clock::now().unix;
    let minted = credentials::mint(secret, user, ttl, now, stun, uris);
    let mut r = Json(minted).into_response();
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

pub(super) async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    if let Some(c) = state.handle.cluster() {
        state.metrics.cluster(c);
    }
    let body = state.metrics.render(
        state.handle.counters(),
        &state.http_stats,
        state.handle.connection_stats(),
        state.start_unix,
        state.handle.is_draining(),
        state.handle.revocation_count(crate::clock::now().unix),
        state.handle.fastpath_totals(),
    );
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

pub(super) async fn healthz() -> Response {
    Json(json!({"status": "ok"})).into_response()
}

pub(super) async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    if state.is_ready() {
        Json(json!({"status": "ready"})).into_response()
    } else {
        let why = if state.handle.is_draining() {
            "draining"
        } else {
            "starting"
        };
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": why})),
        )
            .into_response()
    }
}

/// One allocation as `/api/v1/sessions` shows it (and the cluster's
/// registry stores it): `node` is the node that owns it, `created` and
/// `expires` are Unix seconds at `unix_now`.
pub(crate) fn session_json(
    node: &str,
    unix_now: u64,
    s: &turnpike_proto::core::SessionInfo,
) -> serde_json::Value {
    json!({
        "id": s.id.to_string(),
        "node": node,
        "transport": s.ft.transport.as_str(),
        "client": s.ft.client.to_string(),
        "server": s.ft.server.to_string(),
        "user": s.username,
        "relay": s.relay.to_string(),
        "relayed_address": s.advertised.to_string(),
        "age_s": s.age.as_secs(),
        "expires_in_s": s.expires_in.as_secs(),
        "created": unix_now.saturating_sub(s.age.as_secs()),
        "expires": unix_now + s.expires_in.as_secs(),
        "permissions": s.permissions.iter().map(|p| p.to_string()).collect::<Vec<_>>(),
        "channels": s.channels.iter().map(|(n, p)| json!({"number": n.0, "peer": p.to_string()})).collect::<Vec<_>>(),
        "bytes_to_peer": s.traffic.bytes_out,
        "bytes_from_peer": s.traffic.bytes_in,
        "packets_to_peer": s.traffic.packets_out,
        "packets_from_peer": s.traffic.packets_in,
    })
}

fn cluster_unavailable(why: String) -> Response {
    error(StatusCode::SERVICE_UNAVAILABLE, "cluster_unavailable", why)
}

/// `GET /api/v1/sessions`: this node's allocations; with `?scope=cluster`
/// every node's, from the cluster's registry (refreshed every
/// `cluster.refresh_interval`; 503 while Redis is unreachable, 400
/// without a cluster).
pub(super) async fn sessions(
    State(state): State<Arc<AppState>>,
    _: Admin,
    Query(p): Params,
) -> Response {
    match p.get("scope").map(String::as_str) {
        None | Some("node") => {}
        Some("cluster") => {
            let Some(c) = state.handle.cluster() else {
                return bad_param("scope", "no [cluster] redis_url is configured");
            };
            let node = state.handle.node_id();
            return match c.sessions().await {
                Ok(mut list) => {
                    // This node's own entries as they are now, not as of
                    // its last registry refresh.
                    list.retain(|s| s["node"] != node);
                    let now = crate::clock::now().unix;
                    let own = state.handle.sessions().await;
                    list.extend(own.iter().map(|s| session_json(node, now, s)));
                    Json(json!({"sessions": list})).into_response()
                }
                Err(why) => cluster_unavailable(why),
            };
        }
        Some(_) => return bad_param("scope", "node (the default) or cluster"),
    }
    let node = state.handle.node_id();
    let now = crate::clock::now().unix;
    let list: Vec<_> = state
        .handle
        .sessions()
        .await
        .iter()
        .map(|s| session_json(node, now, s))
        .collect();
    Json(json!({"sessions": list})).into_response()
}

/// `DELETE /api/v1/sessions/{id}`: end one of this node's allocations; with
/// `?node=NODE` (a cluster), one of that node's, which its owner ends.
pub(super) async fn delete_session(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    _: Admin,
    Query(p): Params,
) -> Response {
    let Ok(id) = id.parse::<u64>() else {
        return bad_param("id", "not a session id");
    };
    let found = match p.get("node") {
        Some(node) if node != state.handle.node_id() => {
            let Some(c) = state.handle.cluster() else {
                return bad_param("node", "no [cluster] redis_url is configured");
            };
            match c.delete(node, id).await {
                Ok(found) => found,
                Err(why) => return cluster_unavailable(why),
            }
        }
        _ => state.handle.delete_session(id).await,
    };
    if found {
        Json(json!({"deleted": id.to_string()})).into_response()
    } else {
        error(StatusCode::NOT_FOUND, "not_found", "no such session")
    }
}

pub(super) async fn drain(State(state): State<Arc<AppState>>, _: Admin) -> Response {
    let _ = state.ops.send(Op::Drain);
    (
        StatusCode::ACCEPTED,
        Json(json!({"draining": true, "allocations": state.handle.allocations()})),
    )
        .into_response()
}

pub(super) async fn reload(State(state): State<Arc<AppState>>, _: Admin) -> Response {
    let (tx, rx) = oneshot::channel();
    if state.ops.send(Op::Reload(tx)).is_err() {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting_down",
            "the server is stopping",
        );
    }
    match rx.await {
        Ok(Ok(notes)) => Json(json!({"reloaded": true, "notes": notes})).into_response(),
        Ok(Err(why)) => (
            StatusCode::UNPROCESSABLE_ENTITY,
            Json(json!({"reloaded": false, "error": "bad_config", "message": why})),
        )
            .into_response(),
        Err(_) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting_down",
            "the server is stopping",
        ),
    }
}

/// The body of `POST /api/v1/revocations`.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RevokeBody {
    username: String,
    #[serde(default)]
    until: Option<u64>,
}

/// `POST /api/v1/revocations` (issue 14), with a JSON body `{"username":
/// NAME, "until": UNIX_SECONDS}` (`until` optional) or the query
/// `?username=NAME&until=UNIX_SECONDS`. 201 with the stored revocation, 200
/// when it replaced one; 400 for bad input; 507 when the store is full.
pub(super) async fn revoke(
    State(state): State<Arc<AppState>>,
    _: Admin,
    Query(p): Params,
    body: axum::body::Bytes,
) -> Response {
    let (username, until) = if body.iter().all(u8::is_ascii_whitespace) {
        let Some(user) = p.get("username") else {
            return bad_param(
                "username",
                "missing; send {\"username\": NAME} or ?username=NAME",
            );
        };
        let until = match p.get("until").map(|t| t.parse::<u64>()) {
            None => None,
            Some(Ok(t)) => Some(t),
            Some(Err(_)) => return bad_param("until", "must be Unix seconds"),
        };
        (user.clone(), until)
    } else if p.contains_key("username") || p.contains_key("until") {
        return bad_param(
            "body",
            "give the revocation either as a JSON body or as the query, not both",
        );
    } else {
        match serde_json::from_slice::<RevokeBody>(&body) {
            Ok(b) => (b.username, b.until),
            Err(e) => return bad_param("body", format!("not a revocation: {e}")),
        }
    };
    let now = crate::clock::now().unix;
    match state.handle.revoke(&username, until, now).await {
        Ok((r, new, _)) => {
            let status = if new {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            (status, Json(r)).into_response()
        }
        Err(e) => match e.parameter() {
            Some(param) => bad_param(param, e.to_string()),
            None => error(
                StatusCode::INSUFFICIENT_STORAGE,
                "too_many_revocations",
                e.to_string(),
            ),
        },
    }
}

/// `GET /api/v1/revocations`: those in force, by name.
pub(super) async fn revocations(State(state): State<Arc<AppState>>, _: Admin) -> Response {
    let now = crate::clock::now().unix;
    Json(json!({"revocations": state.handle.revocations(now)})).into_response()
}

/// `DELETE /api/v1/revocations/{username}`: lift one; 404 if none.
pub(super) async fn lift_revocation(
    State(state): State<Arc<AppState>>,
    Path(username): Path<String>,
    _: Admin,
) -> Response {
    let now = crate::clock::now().unix;
    if state.handle.lift_revocation(&username, now).await {
        Json(json!({"lifted": username})).into_response()
    } else {
        error(
            StatusCode::NOT_FOUND,
            "not_found",
            "no revocation of this username is in force",
        )
    }
}

/// CORS for the origins configured now ("*" for any; none configured
/// means no CORS headers at all), for the credentials route only: no page
/// of any origin may call the admin routes. The list is read from the current
/// configuration on every request, so a reload changes it like the keys
/// and the TTL; an allowed origin is echoed back (for "*" too, which
/// browsers treat the same).
pub(super) fn cors(state: Arc<AppState>) -> CorsLayer {
    CorsLayer::new()
        .allow_methods([Method::GET, Method::POST, Method::DELETE])
        .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE])
        .allow_origin(AllowOrigin::predicate(move |origin, _| {
            origin_allowed(&state.config().http.cors_origins, origin)
        }))
}

fn origin_allowed(origins: &[String], origin: &HeaderValue) -> bool {
    origins
        .iter()
        .any(|o| o == "*" || o.as_bytes() == origin.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_compare_exactly() {
        let keys = vec!["alpha".to_string(), "beta".to_string()];
        assert!(key_ok(Some("beta"), &keys));
        assert!(!key_ok(Some("bet"), &keys));
        assert!(!key_ok(Some("betaa"), &keys));
        assert!(!key_ok(None, &keys));
        assert!(!key_ok(Some(""), &[]), "no keys configured: nobody gets in");
    }

    #[test]
    fn origins_match_exactly_or_by_wildcard() {
        let app = HeaderValue::from_static("https://app.example.org");
        let list = vec!["https://app.example.org".to_string()];
        assert!(origin_allowed(&list, &app));
        assert!(!origin_allowed(
            &list,
            &HeaderValue::from_static("https://app.example.org.evil")
        ));
        assert!(!origin_allowed(&[], &app));
        assert!(origin_allowed(&["*".to_string()], &app));
    }
}

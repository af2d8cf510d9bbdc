//! The HTTP listener: credentials API, `/metrics`, health, admin.
//!
//! | route | auth | what |
//! |---|---|---|
//! | `GET /api/v1/credentials?username=NAME[&ttl=S]` | API key | mint a TURN REST credential |
//! | `GET /metrics` | none | Prometheus text |
//! | `GET /healthz` | none | process alive |
//! | `GET /readyz` | none | listeners bound and not draining |
//! | `GET /api/v1/sessions` | admin key | allocations |
//! | `DELETE /api/v1/sessions/{id}` | admin key | end one allocation |
//! | `POST /api/v1/drain` | admin key | start draining |
//! | `POST /api/v1/reload` | admin key | re-read the config file |
//! | `POST /api/v1/revocations` | admin key | revoke a credential or a user |
//! | `GET /api/v1/revocations` | admin key | revocations in force |
//! | `DELETE /api/v1/revocations/{username}` | admin key | lift one |
//!
//! API keys (`http.api_keys`) come as `Authorization: Bearer KEY` or
//! `key=KEY`; admin keys (`http.admin_keys`) only as `Authorization:
//! Bearer KEY`, and without any the admin routes answer 404. An API key is
//! never an admin key. Keys are compared in constant time and never
//! logged. CORS (`http.cors_origins`) covers the credentials route only.

mod api;
pub mod metrics;
mod serve;

pub(crate) use api::session_json;
pub use serve::HttpStats;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use axum::Router;
use axum::routing::{delete, get, post};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};

use crate::config::Config;
use crate::io::ServerHandle;

/// What the HTTP API asks of the process (the main loop owns reload and
/// drain, as signals ask for the same things).
pub enum Op {
    Reload(oneshot::Sender<Result<Vec<String>, String>>),
    Drain,
}

/// State shared by the handlers.
pub struct AppState {
    pub handle: Arc<ServerHandle>,
    pub cfg: RwLock<Arc<Config>>,
    pub ready: AtomicBool,
    pub metrics: metrics::Metrics,
    /// The HTTP listener's connection counters.
    pub http_stats: HttpStats,
    pub start_unix: u64,
    pub ops: mpsc::UnboundedSender<Op>,
}

impl AppState {
    pub fn new(
        handle: Arc<ServerHandle>,
        cfg: Arc<Config>,
        start_unix: u64,
        ops: mpsc::UnboundedSender<Op>,
    ) -> Self {
        AppState {
            handle,
            cfg: RwLock::new(cfg),
            ready: AtomicBool::new(false),
            metrics: metrics::Metrics::default(),
            http_stats: HttpStats::default(),
            start_unix,
            ops,
        }
    }

    pub fn config(&self) -> Arc<Config> {
        self.cfg.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn set_config(&self, cfg: Arc<Config>) {
        *self.cfg.write().unwrap_or_else(|e| e.into_inner()) = cfg;
    }

    pub fn set_ready(&self, on: bool) {
        self.ready.store(on, Ordering::SeqCst);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst) && !self.handle.is_draining()
    }
}

/// The routes. CORS for the configured origins (as configured at each
/// request: reload changes them) wraps the credentials route alone.
pub fn router(state: Arc<AppState>) -> Router {
    let cors = api::cors(state.clone());
    let credentials = Router::new()
        .route("/api/v1/credentials", get(api::credentials))
        .layer(cors);
    Router::new()
        .merge(credentials)
        .route("/metrics", get(api::metrics))
        .route("/healthz", get(api::healthz))
        .route("/readyz", get(api::readyz))
        .route("/api/v1/sessions", get(api::sessions))
        .route("/api/v1/sessions/{id}", delete(api::delete_session))
        .route("/api/v1/drain", post(api::drain))
        .route("/api/v1/reload", post(api::reload))
        .route(
            "/api/v1/revocations",
            get(api::revocations).post(api::revoke),
        )
        .route(
            "/api/v1/revocations/{username}",
            delete(api::lift_revocation),
        )
        .with_state(state)
}

/// Why the HTTP listener could not start.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error(
        "http.addr ({addr}): cannot bind: {error}. Fix: choose a free address, or set addr = \"\" to run no HTTP listener"
    )]
    Bind {
        addr: SocketAddr,
        error: std::io::Error,
    },
    #[error("http.cert/http.key: {0}. Fix: point them at a PEM certificate chain and its key")]
    Tls(#[from] crate::tls::TlsError),
}

/// Bind the HTTP listener (so errors surface at start) and return its
/// address and the future that serves it until `shutdown` resolves.
pub async fn bind(
    state: Arc<AppState>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<Option<(SocketAddr, tokio::task::JoinHandle<()>)>, HttpError> {
    let cfg = state.config();
    let Some(addr) = cfg.http.addr else {
        return Ok(None);
    };
    let tcp = TcpListener::bind(addr)
        .await
        .map_err(|error| HttpError::Bind { addr, error })?;
    let local = tcp
        .local_addr()
        .map_err(|error| HttpError::Bind { addr, error })?;
    let app = router(state.clone());
    let tls = match (&cfg.http.cert, &cfg.http.key) {
        (Some(c), Some(k)) => {
            let cert = Arc::new(crate::tls::ReloadableCert::load(c, k)?);
            Some(tokio_rustls::TlsAcceptor::from(crate::tls::server_config(
                cert,
            )))
        }
        _ => None,
    };
    let task = tokio::spawn(serve::run(tcp, tls, app, state, shutdown));
    Ok(Some((local, task)))
}

//! http: the router and what every handler shares: state, the JSON error shape
//! (`{"message": "..."}`, as OVH answers) and the admin-token check.

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};

use crate::config::ServeConfig;
use crate::metrics::Metrics;
use crate::store::{Store, StoreError};
use crate::{agent_api, api, auth, boot, files, ovh};

pub struct AppState {
    pub store: Store,
    pub admin_token: String,
    pub cfg: ServeConfig,
    pub metrics: Metrics,
}

pub type Shared = Arc<AppState>;

/// An error answer: status and a message that says what was wrong and what to do.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
        }
    }
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(serde_json::json!({ "message": self.message })),
        )
            .into_response()
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict(m) => ApiError::new(StatusCode::CONFLICT, m),
            StoreError::NotFound(m) => ApiError::not_found(m),
            StoreError::Internal(e) => {
                tracing::error!(error = %format!("{e:#}"), "store failure");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal error in the server's store: see the server log",
                )
            }
        }
    }
}

impl From<byol_spec::SpecError> for ApiError {
    fn from(e: byol_spec::SpecError) -> Self {
        ApiError::bad_request(e.to_string())
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

/// Runs a store call on tokio's blocking pool: SQLite's fsyncs never hold an async worker.
pub async fn blocking<T, F>(f: F) -> ApiResult<T>
where
    F: FnOnce() -> crate::store::Result<T> + Send + 'static,
    T: Send + 'static,
{
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r.map_err(ApiError::from),
        Err(e) => {
            tracing::error!(error = %e, "store task failed");
            Err(ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal error in the server's store: see the server log",
            ))
        }
    }
}

/// Text from a machine, safe for one log line (see [`byol_spec::escape_control`]).
pub fn escape(s: &str) -> std::borrow::Cow<'_, str> {
    byol_spec::escape_control(s)
}

/// Operators' routes need `Authorization: Bearer <admin token>`.
async fn require_admin(State(st): State<Shared>, req: Request, next: Next) -> Response {
    match auth::bearer(req.headers()) {
        Some(t) if auth::same(t.as_bytes(), st.admin_token.as_bytes()) => next.run(req).await,
        Some(_) => {
            tracing::warn!(path = %req.uri().path(), "wrong admin token (token not logged)");
            ApiError::new(StatusCode::UNAUTHORIZED, "wrong admin token").into_response()
        }
        None => ApiError::new(
            StatusCode::UNAUTHORIZED,
            "missing admin token: send `Authorization: Bearer <token>` (the token is in <data-dir>/admin-token)",
        )
        .into_response(),
    }
}

/// Counts requests for /metrics.
async fn count(State(st): State<Shared>, req: Request, next: Next) -> Response {
    let res = next.run(req).await;
    st.metrics.http_response(res.status());
    res
}

pub fn router(st: Shared) -> Router {
    let admin = Router::new()
        .route(
            "/dedicated/server/{service}/install/start",
            post(ovh::install_start),
        )
        .route(
            "/dedicated/server/{service}/install/status",
            get(ovh::install_status),
        )
        .route(
            "/api/v1/machines",
            get(api::list_machines).post(api::add_machine),
        )
        .route(
            "/api/v1/machines/{name}",
            get(api::get_machine).delete(api::delete_machine),
        )
        .route("/api/v1/machines/{name}/disk", put(api::set_disk_hints))
        .route(
            "/api/v1/machines/{name}/hook-timeout",
            put(api::set_hook_timeout),
        )
        .route(
            "/api/v1/machines/{name}/installs",
            post(api::start_install).get(api::machine_installs),
        )
        .route("/api/v1/installs/{id}", get(api::get_install))
        .route("/api/v1/installs/{id}/cancel", post(api::cancel_install))
        .route("/api/v1/installs/{id}/events", get(api::install_events))
        .route_layer(middleware::from_fn_with_state(st.clone(), require_admin));

    let open = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/metrics", get(crate::metrics::render))
        .route("/boot.ipxe", get(boot::entry))
        .route("/ipxe/{mac}", get(boot::per_mac))
        .route("/agent/v1/config", get(agent_api::config))
        .route("/agent/v1/events", post(agent_api::events))
        .route_service("/assets/vmlinuz", {
            let f = st.cfg.kernel.clone();
            tower::service_fn(move |req| {
                let f = f.clone();
                async move { Ok::<_, std::convert::Infallible>(files::serve_file(f, req).await) }
            })
        })
        .route_service("/assets/initramfs", {
            let f = st.cfg.initramfs.clone();
            tower::service_fn(move |req| {
                let f = f.clone();
                async move { Ok::<_, std::convert::Infallible>(files::serve_file(f, req).await) }
            })
        })
        .nest_service("/assets", {
            let dir = st.cfg.assets_dir.clone();
            tower::service_fn(move |req| {
                let dir = dir.clone();
                async move { Ok::<_, std::convert::Infallible>(files::serve(dir, false, req).await) }
            })
        })
        .nest_service("/images", {
            let dir = st.cfg.images_dir.clone();
            tower::service_fn(move |req| {
                let dir = dir.clone();
                async move { Ok::<_, std::convert::Infallible>(files::serve(dir, true, req).await) }
            })
        });

    admin
        .merge(open)
        .fallback(|| async { ApiError::not_found("no such endpoint") })
        .layer(middleware::from_fn_with_state(st.clone(), count))
        .layer(
            tower_http::trace::TraceLayer::new_for_http()
                .make_span_with(|req: &Request| {
                    tracing::info_span!("http", method = %req.method(), path = %req.uri().path())
                })
                .on_response(
                    tower_http::trace::DefaultOnResponse::new().level(tracing::Level::INFO),
                ),
        )
        .with_state(st)
}

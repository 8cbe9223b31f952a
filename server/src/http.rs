//! http: the router and what every handler shares: state, the JSON error shape
//! (`{"message": "..."}`, as OVH answers) and the admin-token check.

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};

use crate::config::ServeConfig;
use crate::metrics::Metrics;
use crate::store::{Store, StoreError};
use crate::{agent_api, api, auth, boot, files, ovh};

pub struct AppState {
    pub store: Store,
    pub admin_token: String,
    pub cfg: ServeConfig,
    pub metrics: Metrics,
    pub limiter: crate::ratelimit::Limiter,
    /// Seals the secrets the server reads back (application secrets, BMC passwords).
    pub seal: crate::seal::SealKey,
}

pub type Shared = Arc<AppState>;

/// The largest request body on the operators' API (install requests with user data).
pub const MAX_API_BODY: usize = 1 << 20;
/// The largest events body from an agent: one event at its limits (500 lines of 4 KiB) fits;
/// the agent sends batches of at most 1 MiB.
pub const MAX_EVENTS_BODY: usize = 4 << 20;

/// An error answer: status and a message that says what was wrong and what to do, with OVH's
/// error class where OVH's API has one (`{"class": …, "message": …}`).
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub class: Option<&'static str>,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
            class: None,
        }
    }
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = match self.class {
            Some(class) => serde_json::json!({ "class": class, "message": self.message }),
            None => serde_json::json!({ "message": self.message }),
        };
        (self.status, Json(body)).into_response()
    }
}

impl From<byol_spec::storage::OvhError> for ApiError {
    fn from(e: byol_spec::storage::OvhError) -> Self {
        ApiError {
            status: StatusCode::from_u16(e.status()).unwrap_or(StatusCode::BAD_REQUEST),
            message: e.message,
            class: Some(e.class),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict(m) => ApiError::new(StatusCode::CONFLICT, m),
            StoreError::NotFound(m) => ApiError::not_found(m),
            e @ StoreError::Busy { .. } => ApiError::new(StatusCode::CONFLICT, e.to_string()),
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

/// A quick store call from a handler: the worker thread hands its other tasks over to the rest
/// of the runtime while SQLite works (and fsyncs), so no request waits behind it.
pub fn db<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

/// Text from a machine, safe for one log line (see [`byol_spec::escape_control`]).
pub fn escape(s: &str) -> std::borrow::Cow<'_, str> {
    byol_spec::escape_control(s)
}

/// Operators' routes need `Authorization: Bearer <admin token>`, or an OVH-signed request
/// (`X-Ovh-Application` …, see [`crate::ovhauth`]).
async fn require_admin(State(st): State<Shared>, req: Request, next: Next) -> Response {
    match auth::bearer(req.headers()) {
        Some(t) if auth::same(t.as_bytes(), st.admin_token.as_bytes()) => next.run(req).await,
        Some(_) => {
            tracing::warn!(path = %req.uri().path(), "wrong admin token (token not logged)");
            ApiError::new(StatusCode::UNAUTHORIZED, "wrong admin token").into_response()
        }
        None if req.headers().contains_key("x-ovh-application") => signed(st, req, next).await,
        None => ApiError::new(
            StatusCode::UNAUTHORIZED,
            "missing credentials: send `Authorization: Bearer <token>` (the token is in \
             <data-dir>/admin-token), or sign the request as OVH's clients do (byol api-key create NAME)",
        )
        .into_response(),
    }
}

/// An OVH-signed request: its body read (the signature covers it), checked, then handed on.
async fn signed(st: Shared, req: Request, next: Next) -> Response {
    let (parts, body) = req.into_parts();
    let bytes = match axum::body::to_bytes(body, MAX_API_BODY).await {
        Ok(b) => b,
        Err(_) => {
            return ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("request body too large or cut short: at most {MAX_API_BODY} bytes"),
            )
            .into_response();
        }
    };
    // the URL as the client sent it (`/1.0/…` included: routers nested under it strip it)
    let sent = parts
        .extensions
        .get::<axum::extract::OriginalUri>()
        .map(|o| o.0.clone())
        .unwrap_or_else(|| parts.uri.clone());
    let pq = sent.path_and_query().map_or("/", |p| p.as_str());
    let route_path = parts.uri.path();
    let checked = crate::ovhauth::verify(
        &st,
        &crate::ovhauth::Signed {
            method: &parts.method,
            path_and_query: pq,
            route_path,
            headers: &parts.headers,
            body: &bytes,
        },
    );
    match checked {
        Ok(caller) => {
            tracing::debug!(app = %caller.app_name, credential = caller.credential_id, "signed request");
            next.run(Request::from_parts(parts, axum::body::Body::from(bytes)))
                .await
        }
        Err(refused) => refused.into_response(),
    }
}

/// A body announced larger than its route takes is refused at once, before it is read (the
/// limits also hold while bodies without a length are read: [`DefaultBodyLimit`]).
async fn announced_length(req: Request, next: Next) -> Response {
    let limit = if req.uri().path() == "/agent/v1/events" {
        MAX_EVENTS_BODY
    } else {
        MAX_API_BODY
    };
    let announced = req
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if announced.is_some_and(|n| n > limit as u64) {
        return ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body too large: this endpoint takes at most {limit} bytes"),
        )
        .into_response();
    }
    next.run(req).await
}

/// Counts requests for /metrics.
async fn count(State(st): State<Shared>, req: Request, next: Next) -> Response {
    let res = next.run(req).await;
    st.metrics.http_response(res.status());
    res
}

/// The routers of the listeners: `main` serves the machines (boot scripts, agent API,
/// assets, images) and, unless it has its own listener, the operators' API and /metrics.
pub struct Routers {
    pub main: Router,
    pub admin: Option<Router>,
    pub metrics: Option<Router>,
}

/// Every route on one router (the listeners' split is [`routers`]).
pub fn router(st: Shared) -> Router {
    let (admin, open, metrics) = parts(&st);
    finish(&st, admin.merge(open).merge(metrics))
}

/// The routers for `--admin-http` and `--metrics-http` (each None: on the main listener).
pub fn routers(st: Shared) -> Routers {
    let (admin, open, metrics) = parts(&st);
    let (separate_admin, separate_metrics) =
        (st.cfg.admin_http.is_some(), st.cfg.metrics_http.is_some());
    let mut main = open;
    let healthz = || Router::new().route("/healthz", get(|| async { "ok\n" }));
    let admin = if separate_admin {
        Some(finish(&st, admin.merge(healthz())))
    } else {
        main = main.merge(admin);
        None
    };
    let metrics = if separate_metrics {
        Some(finish(&st, metrics.merge(healthz())))
    } else {
        main = main.merge(metrics);
        None
    };
    Routers {
        main: finish(&st, main),
        admin,
        metrics,
    }
}

/// How long a request may take to get its answer started (a file's body may stream for
/// longer).
pub const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// (operators' API, machines' routes, /metrics).
fn parts(st: &Shared) -> (Router<Shared>, Router<Shared>, Router<Shared>) {
    let admin = Router::new()
        .route(
            "/dedicated/server/{service}/install/start",
            post(ovh::install_start),
        )
        .route(
            "/dedicated/server/{service}/reinstall",
            post(ovh::reinstall),
        )
        .route(
            "/dedicated/server/{service}/install/status",
            get(ovh::install_status),
        )
        .route("/dedicated/server", get(ovh::servers))
        .route(
            "/dedicated/server/{service}/specifications/hardware",
            get(ovh::hardware),
        )
        .route(
            "/dedicated/server/{service}/install/compatibleTemplates",
            get(ovh::compatible_templates),
        )
        .route(
            "/dedicated/installationTemplate/{name}",
            get(ovh::installation_template),
        )
        .route("/dedicated/server/{service}", get(ovh::server))
        .route("/dedicated/server/{service}/boot", get(ovh::boots))
        .route("/dedicated/server/{service}/boot/{boot}", get(ovh::boot))
        .route("/dedicated/server/{service}/task", get(ovh::tasks))
        .route("/dedicated/server/{service}/task/{task}", get(ovh::task))
        .route(
            "/dedicated/server/{service}/task/{task}/cancel",
            post(ovh::cancel_task),
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
            "/api/v1/machines/{name}/bmc",
            get(crate::power::get_bmc)
                .put(crate::power::set_bmc)
                .delete(crate::power::clear_bmc),
        )
        .route("/api/v1/machines/{name}/power", post(crate::power::power))
        .route(
            "/api/v1/machines/{name}/scheme",
            put(crate::schemes::set_machine_scheme),
        )
        .route("/api/v1/schemes", get(crate::schemes::list_schemes))
        .route(
            "/api/v1/schemes/{name}",
            get(crate::schemes::get_scheme)
                .put(crate::schemes::put_scheme)
                .delete(crate::schemes::delete_scheme),
        )
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
        .route(
            "/api/v1/api-keys",
            get(crate::apikeys::list).post(crate::apikeys::create),
        )
        .route("/api/v1/api-keys/{name}", delete(crate::apikeys::revoke))
        .route(
            "/api/v1/credentials/{id}/validate",
            post(crate::apikeys::validate),
        )
        .route_layer(middleware::from_fn_with_state(st.clone(), require_admin))
        // OVH's open auth endpoints (no signature, as at OVH)
        .route("/auth/time", get(crate::apikeys::time))
        .route("/auth/credential", post(crate::apikeys::request_credential))
        .route("/auth/validate/{id}", get(crate::apikeys::validation_page));
    // OVH's clients call `<endpoint>/1.0/…`: the same routes under it
    let admin = admin.clone().nest("/1.0", admin);

    let metrics = Router::new().route("/metrics", get(crate::metrics::render));
    let open = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/boot.ipxe", get(boot::entry))
        .route("/ipxe/{mac}", get(boot::per_mac))
        .route("/agent/v1/config", get(agent_api::config))
        .route(
            "/agent/v1/events",
            post(agent_api::events).layer(DefaultBodyLimit::max(MAX_EVENTS_BODY)),
        )
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

    (admin, open, metrics)
}

/// What every listener's router has around its routes.
fn finish(st: &Shared, routes: Router<Shared>) -> Router {
    routes
        .fallback(|| async { ApiError::not_found("no such endpoint") })
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            REQUEST_TIMEOUT,
        ))
        .layer(DefaultBodyLimit::max(MAX_API_BODY))
        .layer(middleware::from_fn(announced_length))
        .layer(middleware::from_fn_with_state(
            st.clone(),
            crate::ratelimit::limit,
        ))
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
        .with_state(st.clone())
}

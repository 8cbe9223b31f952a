//! agent_api: what the installer on the machine talks to, with the agent token of its boot:
//! `GET /agent/v1/config` (the validated install) and `POST /agent/v1/events` (progress,
//! which drives pending → installing → done | failed).
//!
//! The token rules ([`crate::store::Store::claim_config`]): a token opens the config once,
//! from the address that fetched its boot script, within `--token-window` of it; the boot that
//! fetched it holds the install, and another boot of the machine takes over only once that one
//! was silent for `--takeover-after` (a machine that lost power mid-install). Afterwards the
//! token is good for its boot's events only. Events carry a per-boot number: a batch sent
//! again is recorded once. A `done` sent again after the install ended is answered `done`; a
//! cancelled or failed install answers 409 with its state, and the agent stops. Tokens are
//! never logged.

use std::net::SocketAddr;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use byol_spec::{AgentConfig, AgentEvent, FailureAction, InstallState, format_duration};
use serde_json::json;

use crate::auth;
use crate::http::{ApiError, ApiResult, Shared};
use crate::store::{Claim, Refusal, TokenRules};

fn token_hash(st: &Shared, headers: &HeaderMap) -> ApiResult<String> {
    match auth::bearer(headers) {
        Some(t) => Ok(auth::hash_token(t)),
        None => {
            st.metrics.agent_auth_failure();
            tracing::warn!("agent request without a token");
            Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "missing agent token",
            ))
        }
    }
}

/// The peer's address as the token rules compare it (IPv4-mapped IPv6 as IPv4).
pub fn peer_ip(peer: &SocketAddr) -> String {
    peer.ip().to_canonical().to_string()
}

/// A refusal that carries the install's state, for the agent to act on.
fn stop(status: StatusCode, state: &str, message: String) -> Response {
    (status, Json(json!({ "message": message, "state": state }))).into_response()
}

fn secs(ms: i64) -> String {
    format_duration((ms.max(0) / 1000) as u64)
}

pub async fn config(
    State(st): State<Shared>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    let hash = match token_hash(&st, &headers) {
        Ok(h) => h,
        Err(e) => return e.into_response(),
    };
    let rules = TokenRules {
        window_ms: st.cfg.token_window_seconds as i64 * 1000,
        takeover_after_ms: st.cfg.takeover_after_seconds as i64 * 1000,
    };
    let ip = peer_ip(&peer);
    let store = st.clone();
    let claim =
        match crate::http::blocking(move || store.store.claim_config(&hash, Some(&ip), &rules))
            .await
        {
            Ok(c) => c,
            Err(e) => return e.into_response(),
        };
    let (install, boot, took_over_from) = match claim {
        Claim::Granted {
            install,
            boot,
            took_over_from,
        } => (*install, boot, took_over_from),
        Claim::Refused(r) => return refused(&st, &peer, r),
    };
    let m = match crate::http::db(|| st.store.machine(&install.machine)) {
        Ok(m) => m,
        Err(e) => return ApiError::from(e).into_response(),
    };
    let hook_timeout_seconds = install
        .spec
        .hook_timeout_seconds
        .or(m.hook_timeout_seconds)
        .unwrap_or(st.cfg.hook_timeout_seconds);
    match took_over_from {
        Some(n) => tracing::warn!(install = %install.id, machine = %install.machine, boot = boot.n,
            from = %peer.ip(), "agent fetched its config, taking the install over from boot {n}"),
        None => tracing::info!(install = %install.id, machine = %install.machine, boot = boot.n,
            from = %peer.ip(), "agent fetched its config"),
    }
    Json(AgentConfig {
        install_id: install.id,
        machine: install.machine,
        macs: m.macs,
        install: install.spec,
        on_failure: FailureAction::default(),
        disk_hints: m.disk_hints,
        hook_timeout_seconds,
    })
    .into_response()
}

fn refused(st: &Shared, peer: &SocketAddr, r: Refusal) -> Response {
    st.metrics.agent_auth_failure();
    let ip = peer.ip();
    match r {
        Refusal::UnknownToken => {
            tracing::warn!(from = %ip, "agent token rejected: unknown (token not logged)");
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "agent token not valid: it is unknown, or its install was deleted",
            )
            .into_response()
        }
        Refusal::Ended(s) => {
            tracing::warn!(from = %ip, state = s.as_str(), "agent token rejected: its install has ended");
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                format!(
                    "agent token not valid: its install has ended ({}); start a new install to reinstall the machine",
                    s.as_str()
                ),
            )
            .into_response()
        }
        Refusal::Superseded => {
            tracing::warn!(from = %ip, "config refused: another boot of the machine holds the install");
            stop(
                StatusCode::CONFLICT,
                "superseded",
                "another boot of this machine took the install over: this boot stops".into(),
            )
        }
        Refusal::AlreadyFetched { at_ms } => {
            tracing::warn!(from = %ip, "config refused: the token already fetched it");
            ApiError::new(
                StatusCode::FORBIDDEN,
                format!(
                    "this boot's token already fetched the config {} ago: a token opens it once; boot the machine again for a new one",
                    secs(crate::store::now_ms() - at_ms)
                ),
            )
            .into_response()
        }
        Refusal::WrongAddress { issued_to, from } => {
            tracing::warn!(%issued_to, %from, "config refused: token used from another address than its boot script's");
            ApiError::new(
                StatusCode::FORBIDDEN,
                format!(
                    "this token was issued to {issued_to}, not {from}: it opens the config only from the address that fetched the boot script"
                ),
            )
            .into_response()
        }
        Refusal::Expired { window_ms } => {
            tracing::warn!(from = %ip, "config refused: the token's window has passed");
            ApiError::new(
                StatusCode::FORBIDDEN,
                format!(
                    "this token has expired: it opens the config within {} of the boot script (--token-window); boot the machine again for a new one",
                    secs(window_ms)
                ),
            )
            .into_response()
        }
        Refusal::Busy {
            holder,
            silent_ms,
            takeover_after_ms,
        } => {
            tracing::warn!(from = %ip, holder, "config refused: another boot of the machine is installing");
            let wait = ((takeover_after_ms - silent_ms) / 1000).max(1);
            let mut r = stop(
                StatusCode::CONFLICT,
                "busy",
                format!(
                    "boot {holder} of this machine is running this install (heard from {} ago): this boot may take over once it has been silent for {} (--takeover-after)",
                    secs(silent_ms),
                    secs(takeover_after_ms)
                ),
            );
            if let Ok(v) = wait.to_string().parse() {
                r.headers_mut().insert(header::RETRY_AFTER, v);
            }
            r
        }
    }
}

/// Body: one event object, or an array of them.
pub async fn events(State(st): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    match record(&st, &headers, &body).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn record(st: &Shared, headers: &HeaderMap, body: &[u8]) -> ApiResult<Response> {
    let hash = token_hash(st, headers)?;
    let value: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("event body is not JSON: {e}")))?;
    let list: Vec<AgentEvent> = match value {
        serde_json::Value::Array(_) => serde_json::from_value(value),
        _ => serde_json::from_value(value).map(|e| vec![e]),
    }
    .map_err(|e| ApiError::bad_request(format!("not an agent event: {e}")))?;
    for e in &list {
        e.check()
            .map_err(|m| ApiError::bad_request(format!("event refused: {m}")))?;
    }
    let store = st.clone();
    let batch = list.clone();
    let r = match crate::http::blocking(move || store.store.record_events(&hash, &batch)).await {
        Err(ApiError {
            status: StatusCode::NOT_FOUND,
            ..
        }) => {
            st.metrics.agent_auth_failure();
            tracing::warn!("agent token rejected: unknown (token not logged)");
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "agent token not valid: it is unknown, or its install was deleted",
            ));
        }
        other => other?,
    };
    if r.superseded {
        tracing::warn!(install = %r.install, boot = r.boot, "events refused: another boot took the install over");
        return Ok(stop(
            StatusCode::CONFLICT,
            "superseded",
            "another boot of this machine took the install over: this boot stops".into(),
        ));
    }
    for e in list.iter().take(r.recorded) {
        st.metrics.agent_event();
        tracing::info!(install = %r.install, boot = r.boot, phase = %crate::http::escape(&e.phase),
            status = ?e.status, message = %crate::http::escape(&e.message), "agent event");
    }
    if r.duplicates > 0 {
        tracing::info!(install = %r.install, boot = r.boot, duplicates = r.duplicates,
            "agent events already recorded (sent again): skipped");
    }
    if r.ended && r.recorded == 0 && r.state != InstallState::Done {
        let why = r.error.clone().unwrap_or_default();
        tracing::info!(install = %r.install, boot = r.boot, state = r.state.as_str(),
            "agent told its install has ended");
        return Ok(stop(
            StatusCode::CONFLICT,
            r.state.as_str(),
            format!(
                "install {} is {}{}: the agent stops",
                r.install,
                r.state.as_str(),
                if why.is_empty() {
                    String::new()
                } else {
                    format!(" ({why})")
                }
            ),
        ));
    }
    Ok(Json(json!({ "state": r.state.as_str() })).into_response())
}

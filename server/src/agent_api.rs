//! agent_api: what the installer on the machine talks to, with its one-time token:
//! `GET /agent/v1/config` (the validated install) and `POST /agent/v1/events` (progress,
//! which drives pending → installing → done | failed). A wrong or expired token is 401 and
//! logged without the token.

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use byol_spec::{AgentConfig, AgentEvent, FailureAction};
use serde_json::{Value, json};

use crate::auth;
use crate::http::{ApiError, ApiResult, Shared};
use crate::store::Install;

fn authenticate(st: &Shared, headers: &HeaderMap) -> ApiResult<Install> {
    let Some(token) = auth::bearer(headers) else {
        st.metrics.agent_auth_failure();
        tracing::warn!("agent request without a token");
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "missing agent token",
        ));
    };
    match st.store.install_by_token_hash(&auth::hash_token(token))? {
        Some(i) => Ok(i),
        None => {
            st.metrics.agent_auth_failure();
            tracing::warn!(
                "agent token rejected: unknown, replaced or its install has ended (token not logged)"
            );
            Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "agent token not valid: it was replaced by a newer boot, or its install has ended",
            ))
        }
    }
}

pub async fn config(State(st): State<Shared>, headers: HeaderMap) -> ApiResult<Json<AgentConfig>> {
    let i = authenticate(&st, &headers)?;
    let m = st.store.machine(&i.machine)?;
    let hook_timeout_seconds = i
        .spec
        .hook_timeout_seconds
        .or(m.hook_timeout_seconds)
        .unwrap_or(st.cfg.hook_timeout_seconds);
    tracing::info!(install = %i.id, machine = %i.machine, "agent fetched its config");
    Ok(Json(AgentConfig {
        install_id: i.id,
        machine: i.machine,
        macs: m.macs,
        install: i.spec,
        on_failure: FailureAction::default(),
        disk_hints: m.disk_hints,
        hook_timeout_seconds,
    }))
}

/// Body: one event object, or an array of them.
pub async fn events(
    State(st): State<Shared>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    let i = authenticate(&st, &headers)?;
    let value: Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("event body is not JSON: {e}")))?;
    let list: Vec<AgentEvent> = match value {
        Value::Array(_) => serde_json::from_value(value),
        _ => serde_json::from_value(value).map(|e| vec![e]),
    }
    .map_err(|e| ApiError::bad_request(format!("not an agent event: {e}")))?;
    for e in &list {
        e.check()
            .map_err(|m| ApiError::bad_request(format!("event refused: {m}")))?;
    }
    let mut state = i.state;
    for e in &list {
        state = st.store.record_event(&i.id, e)?;
        st.metrics.agent_event();
        tracing::info!(install = %i.id, machine = %i.machine, phase = %e.phase, status = ?e.status,
            message = %e.message, "agent event");
    }
    Ok(Json(json!({ "state": state.as_str() })))
}
